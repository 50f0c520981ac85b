//! FWHT through the whole emulated-VPU path next to the bare codec: the same
//! frames, encoded and decoded once by calling the codec directly and once
//! through the m2m contract (command ring, firmware thread, shared-memory
//! buffers, coherency checker on, response ring, interrupt). The ratio
//! path/bare is the path's cost; above 1.0 the firmware thread coding while
//! the host thread feeds pays for more than the path costs.
//!
//! Run: `cargo bench --bench vpu_path` (VPU_BENCH_FRAMES=n frames per run;
//! the median of 3 runs is printed). Under `cargo test --all-targets` (no
//! `--bench` argument) it runs once on a few small frames, as a smoke test. Content: `fwht::test_pattern` (moving
//! disc and colour bars), I420, GOP 10, QP 20/20. The path's encoder copies
//! each input frame into its OUTPUT buffer (a producer writing straight into
//! VPU memory would not); its decoder feeds the stream in 64 KiB chunks.

use std::time::Instant;

use gstrsvpu::m2m::blocking::{BlockingDecoder, BlockingEncoder};
use gstrsvpu::m2m::{Buffer, Device, Format, M2mError, PixelFormat, Role};
use gstrsvpu::mem::{Checker, CheckerConfig, Coherency};
use gstrsvpu::sys::DmaBackend;
use gstrsvpu::vpu::codec::fwht::{EncoderParams, FwhtDecoder, FwhtEncoder, test_pattern};
use gstrsvpu::vpu::{EmuConfig, EmuVpu};

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fps(frames: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    frames as f64 / t.elapsed().as_secs_f64()
}

struct Figures {
    bare_enc: f64,
    path_enc: f64,
    bare_dec: f64,
    path_dec: f64,
}

fn measure(vpu: &EmuVpu, raw: &Format, frames: u32) -> Figures {
    let inputs: Vec<Vec<u8>> = (0..frames)
        .map(|i| {
            let mut b = vec![0u8; raw.size];
            test_pattern(raw, i, &mut b);
            b
        })
        .collect();
    let n = inputs.len();

    let mut coded: Vec<Vec<u8>> = Vec::new();
    let bare_enc = median(
        (0..RUNS)
            .map(|_| {
                let mut enc = FwhtEncoder::new(raw, EncoderParams::default()).expect("format");
                let mut dst = vec![0u8; FwhtEncoder::max_frame_size(raw)];
                coded.clear();
                fps(n, || {
                    for src in &inputs {
                        let e = enc.encode(src, &mut dst).expect("encode");
                        coded.push(dst[..e.bytes].to_vec());
                    }
                })
            })
            .collect(),
    );
    let stream: Vec<u8> = coded.concat();

    let path_enc = median(
        (0..RUNS)
            .map(|_| {
                let session = vpu.open(Role::Encoder, PixelFormat::Fwht).expect("session");
                let mut enc = BlockingEncoder::new(session, raw, &[], 4).expect("encoder");
                let mut out = 0usize;
                let mut take = |b: &Buffer| -> Result<(), M2mError> {
                    out += usize::from(b.bytesused > 0);
                    Ok(())
                };
                let f = fps(n, || {
                    for (i, src) in inputs.iter().enumerate() {
                        enc.encode(src, i as u64, false, &mut take).expect("encode");
                    }
                    enc.finish(&mut take).expect("drain");
                });
                assert_eq!(out, n, "every frame encoded");
                f
            })
            .collect(),
    );

    let bare_dec = median(
        (0..RUNS)
            .map(|_| {
                let mut dec = FwhtDecoder::new();
                let mut dst = vec![0u8; raw.size];
                fps(n, || {
                    for c in &coded {
                        dec.decode(c, raw, &mut dst).expect("decode");
                    }
                })
            })
            .collect(),
    );

    let path_dec = median(
        (0..RUNS)
            .map(|_| {
                let session = vpu.open(Role::Decoder, PixelFormat::Fwht).expect("session");
                let mut dec =
                    BlockingDecoder::new(session, Coherency::Cacheable, 4, 2).expect("decoder");
                let mut out = 0usize;
                let mut take = |b: &Buffer| -> Result<(), M2mError> {
                    out += usize::from(b.bytesused > 0);
                    Ok(())
                };
                let f = fps(n, || {
                    for chunk in stream.chunks(64 * 1024) {
                        dec.decode(chunk, 0, &mut take).expect("decode");
                    }
                    dec.finish(&mut take).expect("drain");
                });
                assert_eq!(out, n, "every frame decoded");
                f
            })
            .collect(),
    );
    Figures {
        bare_enc,
        path_enc,
        bare_dec,
        path_dec,
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let frames: Option<u32> = std::env::var("VPU_BENCH_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok());
    let sizes: &[(u32, u32, u32)] = if benching {
        &[(640, 480, 120), (1920, 1080, 30)]
    } else {
        &[(64, 48, 3)]
    };
    let checker = Checker::new(CheckerConfig::default());
    let vpu = EmuVpu::new(EmuConfig {
        checker: checker.clone(),
        backend: DmaBackend::Memfd,
        ..EmuConfig::default()
    })
    .expect("emulated VPU");
    println!("FWHT, I420, fwht::test_pattern content, median of {RUNS} runs, frames/s");
    println!(
        "{:<10} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "size", "enc bare", "enc path", "ratio", "dec bare", "dec path", "ratio"
    );
    for &(w, h, default_frames) in sizes {
        let raw = Format::raw(PixelFormat::I420, w, h).expect("I420 layout");
        let f = measure(&vpu, &raw, frames.unwrap_or(default_frames));
        println!(
            "{:<10} {:>10.0} {:>10.0} {:>7.2}   {:>10.0} {:>10.0} {:>7.2}",
            format!("{w}x{h}"),
            f.bare_enc,
            f.path_enc,
            f.path_enc / f.bare_enc,
            f.bare_dec,
            f.path_dec,
            f.path_dec / f.bare_dec
        );
    }
    println!("coherency violations: {}", checker.violation_count());
}
