//! Encodes a moving test pattern to FWHT on the emulated VPU, decodes it back
//! on a second session, and reports sizes, PSNR, speed and what the coherency
//! checker saw.
//!
//!     cargo run --release --example fwht_roundtrip -- [WIDTHxHEIGHT] [FRAMES] [OUT.fwht]
//!
//! Expected: every frame comes back (N in, N out), PSNR well above 30 dB,
//! zero coherency violations. With OUT.fwht, the stream is written there (it
//! plays with the kernel's vicodec decoder).

use std::time::Instant;

use gstrsvpu::m2m::blocking::{BlockingDecoder, BlockingEncoder};
use gstrsvpu::m2m::{Buffer, Control, Device, Format, M2mError, PixelFormat, Role};
use gstrsvpu::mem::{Checker, CheckerConfig, Coherency};
use gstrsvpu::sys::DmaBackend;
use gstrsvpu::vpu::codec::fwht;
use gstrsvpu::vpu::{EmuConfig, EmuVpu};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (width, height) = match args.first() {
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or("size must look like 640x480")?;
            (w.parse()?, h.parse()?)
        }
        None => (640, 480),
    };
    let count: u32 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let out_path = args.get(2);

    let checker = Checker::new(CheckerConfig::default());
    let backend = DmaBackend::probe();
    let vpu = EmuVpu::new(EmuConfig {
        checker: checker.clone(),
        backend,
        ..EmuConfig::default()
    })?;
    let raw =
        Format::raw(PixelFormat::I420, width, height).ok_or("no I420 layout for that size")?;
    println!("emulated VPU, {backend} memory, {width}x{height} I420, {count} frames");

    let mut input = vec![0u8; raw.size];
    let mut stream = Vec::new();
    let mut keyframes = 0;
    let t = Instant::now();
    {
        let session = vpu.open(Role::Encoder, PixelFormat::Fwht)?;
        let mut enc = BlockingEncoder::new(session, &raw, &[Control::GopSize(10)], 3)?;
        let mut take = |b: &Buffer| -> Result<(), M2mError> {
            stream.extend_from_slice(&b.region.cpu_read()[..b.bytesused]);
            keyframes += usize::from(b.flags.contains(gstrsvpu::m2m::BufferFlags::KEYFRAME));
            Ok(())
        };
        for i in 0..count {
            fwht::test_pattern(&raw, i, &mut input);
            enc.encode(&input, u64::from(i) * 33_333_333, false, &mut take)?;
        }
        enc.finish(&mut take)?;
    }
    let enc_time = t.elapsed();
    println!(
        "encoded: {} bytes ({:.1}:1), {keyframes} key frames, {:.0} frames/s",
        stream.len(),
        (raw.size as f64 * f64::from(count)) / stream.len().max(1) as f64,
        f64::from(count) / enc_time.as_secs_f64()
    );
    if let Some(path) = out_path {
        std::fs::write(path, &stream)?;
        println!("wrote {path}");
    }

    let mut decoded = 0u32;
    let mut worst_psnr = f64::INFINITY;
    let mut reference = vec![0u8; raw.size];
    let t = Instant::now();
    {
        let session = vpu.open(Role::Decoder, PixelFormat::Fwht)?;
        let mut dec = BlockingDecoder::new(session, Coherency::Cacheable, 2, 2)?;
        let mut take = |b: &Buffer| -> Result<(), M2mError> {
            if let Some(e) = &b.error {
                eprintln!("frame {decoded}: {e}");
                return Ok(());
            }
            b.region.sync_for_cpu()?;
            fwht::test_pattern(&raw, decoded, &mut reference);
            let frame = b.region.cpu_read();
            worst_psnr = worst_psnr.min(fwht::psnr(&frame[..raw.size], &reference));
            decoded += 1;
            Ok(())
        };
        // Feed the stream unframed, as a file source would.
        for chunk in stream.chunks(64 * 1024) {
            dec.decode(chunk, 0, &mut take)?;
        }
        dec.finish(&mut take)?;
    }
    let dec_time = t.elapsed();
    println!(
        "decoded: {decoded}/{count} frames, worst PSNR {worst_psnr:.1} dB, {:.0} frames/s",
        f64::from(decoded) / dec_time.as_secs_f64()
    );
    let stats = checker.stats();
    println!(
        "memory: {} coherency violations, {} cache cleans, {} invalidates",
        checker.violation_count(),
        stats.syncs_for_device,
        stats.syncs_for_cpu
    );
    if decoded != count || checker.violation_count() != 0 {
        return Err("round trip incomplete or coherency violated".into());
    }
    Ok(())
}
