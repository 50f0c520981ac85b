//! Bare FWHT codec throughput: encode and decode frames per second at 640x480
//! and 1920x1080, I420, on `fwht::test_pattern` content (a white disc moving
//! over black plus a scrolling colour-bar strip, like videotestsrc ball),
//! default controls (GOP 10, QP 20/20), one thread, codec calls only.
//! Compare with the kernel's C codec figures in /work/shared/FWHT-FACTS.md.
//!
//! Run: `cargo bench --bench fwht_codec` (FWHT_BENCH_FRAMES=n to change the
//! number of frames per run; median of 5 runs is printed).

use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::vpu::codec::fwht::{EncoderParams, FwhtDecoder, FwhtEncoder, test_pattern};
use std::time::Instant;

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(fmt: &Format, frames: u32) -> (f64, f64, usize) {
    let inputs: Vec<Vec<u8>> = (0..frames)
        .map(|i| {
            let mut b = vec![0u8; fmt.size];
            test_pattern(fmt, i, &mut b);
            b
        })
        .collect();
    let max = FwhtEncoder::max_frame_size(fmt);
    let mut coded: Vec<Vec<u8>> = Vec::new();
    let mut enc_fps = Vec::new();
    for _ in 0..RUNS {
        let mut enc = FwhtEncoder::new(fmt, EncoderParams::default()).expect("valid format");
        let mut out = Vec::with_capacity(inputs.len());
        let mut dst = vec![0u8; max];
        let t = Instant::now();
        for src in &inputs {
            let e = enc.encode(src, &mut dst).expect("encode");
            out.push(dst[..e.bytes].to_vec());
        }
        enc_fps.push(f64::from(frames) / t.elapsed().as_secs_f64());
        coded = out;
    }
    let mut dec_fps = Vec::new();
    let mut dst = vec![0u8; fmt.size];
    for _ in 0..RUNS {
        let mut dec = FwhtDecoder::new();
        let t = Instant::now();
        for f in &coded {
            dec.decode(f, fmt, &mut dst).expect("decode");
        }
        dec_fps.push(f64::from(frames) / t.elapsed().as_secs_f64());
    }
    let bytes = coded.iter().map(Vec::len).sum::<usize>() / coded.len().max(1);
    (median(enc_fps), median(dec_fps), bytes)
}

fn main() {
    let frames: u32 = std::env::var("FWHT_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!(
        "FWHT bare codec, I420, fwht::test_pattern (moving disc + scrolling bars), GOP 10, QP 20/20"
    );
    println!("{frames} frames per run, median of {RUNS} runs, one thread\n");
    println!(
        "| size      | encode fps | kernel C enc | decode fps | kernel C dec | avg frame bytes |"
    );
    println!(
        "|-----------|-----------:|-------------:|-----------:|-------------:|----------------:|"
    );
    for (w, h, kenc, kdec) in [(640, 480, "~530", "~3100"), (1920, 1080, "~80", "~510")] {
        let fmt = Format::raw(PixelFormat::I420, w, h).expect("raw format");
        let (e, d, bytes) = bench(&fmt, frames);
        println!(
            "| {:<9} | {e:>10.0} | {kenc:>12} | {d:>10.0} | {kdec:>12} | {bytes:>15} |",
            format!("{w}x{h}")
        );
    }
    println!("\nkernel C figures: FWHT-FACTS.md, videotestsrc pattern=ball (similar content).");
}
