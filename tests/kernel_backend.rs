//! The m2m contract on a real kernel driver: vicodec's stateful FWHT encoder
//! and decoder, through the kernel backend (`gstrsvpu::v4l2`).
//!
//! These tests need the nodes, i.e. the VM (see README, "Kernel backend"):
//!
//! ```sh
//! cargo test --test kernel_backend --no-run
//! VMBED_RW=$PWD/target ../shared/vm/run-in-vm.sh target/debug/deps/kernel_backend-<hash>
//! VMBED_APPEND="vicodec.multiplanar=1" VMBED_RW=$PWD/target ../shared/vm/run-in-vm.sh ...
//! ```
//!
//! Where the node is missing (the host) each test prints a loud
//! `*** SKIPPED ***` line and returns. `VPU_KERNEL_ENCODER` /
//! `VPU_KERNEL_DECODER` name other nodes than /dev/video0 and /dev/video1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gstrsvpu::m2m::blocking::{BlockingDecoder, BlockingEncoder};
use gstrsvpu::m2m::{
    Buffer, BufferFlags, Control, Device, Event, Format, M2mError, Memory, PixelFormat, QueueKind,
    Role, Session,
};
use gstrsvpu::mem::{Checker, CheckerConfig, Coherency, MemoryKind, Region};
use gstrsvpu::sys::DmaBackend;
use gstrsvpu::v4l2::{KernelDevice, KernelSession};
use gstrsvpu::vpu::codec::fwht::{EncoderParams, FwhtDecoder, FwhtEncoder};

mod m2m_support;
use m2m_support::{Coded, encode_frames, frames, start_capture, start_decoder};

const W: u32 = 640;
const H: u32 = 480;

fn node(env: &str, default: &str, test: &str) -> Option<KernelDevice> {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.into()));
    if !path.exists() {
        eprintln!(
            "*** SKIPPED {test}: {} does not exist (run the kernel_* tests in the VM, \
             see README \"Kernel backend\") ***",
            path.display()
        );
        return None;
    }
    let checker = Checker::new(CheckerConfig {
        panic_on_violation: false,
        ..CheckerConfig::default()
    });
    match KernelDevice::with_checker(&path, checker) {
        Ok(d) if d.driver() == "vicodec" => {
            eprintln!(
                "{test}: {} ({}-planar)",
                path.display(),
                if d.is_mplane() { "multi" } else { "single" }
            );
            Some(d)
        }
        Ok(d) => {
            eprintln!(
                "*** SKIPPED {test}: {} is driver {}, not vicodec ***",
                path.display(),
                d.driver()
            );
            None
        }
        Err(e) => panic!("{} exists but does not open: {e}", path.display()),
    }
}

fn encoder_node(test: &str) -> Option<KernelDevice> {
    node("VPU_KERNEL_ENCODER", "/dev/video0", test)
}

fn decoder_node(test: &str) -> Option<KernelDevice> {
    node("VPU_KERNEL_DECODER", "/dev/video1", test)
}

fn raw() -> Format {
    Format::raw(PixelFormat::I420, W, H).unwrap()
}

fn encode_on(dev: &KernelDevice, input: &[Vec<u8>], gop: u32) -> Vec<Coded> {
    let session = dev.open(Role::Encoder, PixelFormat::Fwht).unwrap();
    let mut enc = BlockingEncoder::new(session, &raw(), &[Control::GopSize(gop)], 3).unwrap();
    let f = enc.format();
    assert_eq!(
        f,
        &Format {
            colorimetry: f.colorimetry,
            ..raw()
        },
        "vicodec lays 640x480 I420 out as we do"
    );
    assert_eq!(f.colorimetry.colorspace, 3, "vicodec's default: REC709");
    encode_frames(&mut enc, input, 1_000_000_007, None, |b| {
        assert_eq!(b.region.kind(), MemoryKind::DmaBuf, "CAPTURE is exported");
    })
}

fn bare_encode(input: &[Vec<u8>], gop: u32) -> Vec<Vec<u8>> {
    let raw = raw();
    let params = EncoderParams {
        gop_size: gop,
        ..EncoderParams::default()
    };
    let mut bare = FwhtEncoder::new(&raw, params).unwrap();
    input
        .iter()
        .map(|f| {
            let mut dst = vec![0; FwhtEncoder::max_frame_size(&raw)];
            let e = bare.encode(f, &mut dst).unwrap();
            dst.truncate(e.bytes);
            dst
        })
        .collect()
}

fn bare_decode(stream: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let raw = raw();
    let mut dec = FwhtDecoder::new();
    stream
        .iter()
        .map(|c| {
            let mut out = vec![0; raw.size];
            dec.decode(c, &raw, &mut out).unwrap();
            out
        })
        .collect()
}

struct Decoded {
    data: Vec<u8>,
    timestamp: u64,
    error: Option<String>,
}

fn decode_on(dev: &KernelDevice, chunks: &[(u64, &[u8])]) -> (Vec<Decoded>, Format) {
    let session = dev.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Cacheable, 2, 1).unwrap();
    let mut out = Vec::new();
    {
        let mut take = |b: &Buffer| {
            assert_eq!(b.region.kind(), MemoryKind::DmaBuf, "CAPTURE is exported");
            b.region.sync_for_cpu()?;
            out.push(Decoded {
                data: b.region.cpu_read()[..b.bytesused].to_vec(),
                timestamp: b.timestamp,
                error: b.error.clone(),
            });
            Ok(())
        };
        for (ts, c) in chunks {
            dec.decode(c, *ts, &mut take).unwrap();
        }
        dec.finish(&mut take).unwrap();
    }
    let format = dec.format().cloned().expect("a source change came");
    (out, format)
}

#[test]
fn encoder_is_bit_exact_with_the_bare_codec() {
    let Some(dev) = encoder_node("encoder_is_bit_exact_with_the_bare_codec") else {
        return;
    };
    let input = frames(&raw(), 8);
    let coded = encode_on(&dev, &input, 4);
    assert_eq!(coded.len(), 8, "every frame encoded");
    for (i, c) in coded.iter().enumerate() {
        assert_eq!(c.timestamp, 1_000_000_007 * i as u64, "timestamp {i}");
    }
    assert!(coded[0].keyframe && !coded[1].keyframe);
    let bare = bare_encode(&input, 4);
    for (i, (k, b)) in coded.iter().zip(&bare).enumerate() {
        assert_eq!(
            &k.data, b,
            "frame {i}: vicodec and our codec write the same bytes"
        );
    }
    assert_eq!(dev.checker().violation_count(), 0);
}

#[test]
fn decoder_is_bit_exact_and_reads_the_drivers_format_back() {
    let Some(dev) = decoder_node("decoder_is_bit_exact_and_reads_the_drivers_format_back") else {
        return;
    };
    let input = frames(&raw(), 6);
    let stream = bare_encode(&input, 3);
    let chunks: Vec<(u64, &[u8])> = stream
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64 * 40_000_000, &c[..]))
        .collect();
    let (decoded, format) = decode_on(&dev, &chunks);
    assert_eq!(decoded.len(), 6, "N frames in, N frames out");
    assert_eq!(
        format,
        Format {
            colorimetry: format.colorimetry,
            ..raw()
        }
    );
    let reference = bare_decode(&stream);
    for (i, d) in decoded.iter().enumerate() {
        assert!(d.error.is_none(), "frame {i}: {:?}", d.error);
        assert_eq!(d.timestamp, i as u64 * 40_000_000);
        assert_eq!(d.data, reference[i], "frame {i} equals the bare decoder's");
    }
    assert_eq!(dev.checker().violation_count(), 0);
}

/// A decoder set up by hand up to streaming, first frame queued.
fn manual_decoder(dev: &KernelDevice, first: &[u8]) -> (Box<dyn Session>, Vec<Buffer>) {
    let s = dev.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let (sc, outs) = start_decoder(&*s, first, (W, H), 4, Duration::from_secs(10));
    assert_eq!(sc.formats.first(), Some(&PixelFormat::I420));
    assert!(
        !sc.formats.contains(&PixelFormat::Yuyv) && !sc.formats.contains(&PixelFormat::Rgb24),
        "only formats the 4:2:0 stream can be written in: {:?}",
        sc.formats
    );
    assert_eq!(s.enum_formats(QueueKind::Capture), sc.formats);
    start_capture(&*s, &sc.format, sc.min_capture_buffers + 3);
    (s, outs)
}

/// Queues `frames` (timestamp, bytes) on `s`, taking OUTPUT buffers as they
/// come back; returns the CAPTURE timestamps up to the `LAST` buffer of a drain.
fn feed_and_drain(s: &dyn Session, outs: &mut Vec<Buffer>, frames: &[(u64, &[u8])]) -> Vec<u64> {
    let mut got = Vec::new();
    let handle = |ev: Event, outs: &mut Vec<Buffer>, got: &mut Vec<u64>| -> bool {
        match ev {
            Event::BufferDone(b) if b.queue == QueueKind::Output => outs.push(b),
            Event::BufferDone(b) => {
                let last = b.flags.contains(BufferFlags::LAST);
                if b.bytesused > 0 {
                    got.push(b.timestamp);
                }
                if last {
                    return true;
                }
                s.queue(Buffer::new(QueueKind::Capture, b.index, b.region))
                    .unwrap();
            }
            Event::SourceChange(sc) => panic!("unexpected source change {sc:?}"),
        }
        false
    };
    for (ts, data) in frames {
        let mut b = loop {
            if let Some(b) = outs.pop() {
                break b;
            }
            let ev = s.wait_event(Duration::from_secs(10)).unwrap().unwrap();
            assert!(!handle(ev, outs, &mut got), "LAST before the drain");
        };
        b.region.cpu_write()[..data.len()].copy_from_slice(data);
        b.bytesused = data.len();
        b.timestamp = *ts;
        s.queue(b).unwrap();
    }
    s.drain().unwrap();
    loop {
        let ev = s
            .wait_event(Duration::from_secs(10))
            .unwrap()
            .expect("the drain must end with LAST");
        if handle(ev, outs, &mut got) {
            return got;
        }
    }
}

#[test]
fn drain_returns_every_frame_then_last_and_the_decoder_restarts() {
    let Some(dev) = decoder_node("drain_returns_every_frame_then_last_and_the_decoder_restarts")
    else {
        return;
    };
    let stream = bare_encode(&frames(&raw(), 6), 3);
    let (s, mut outs) = manual_decoder(&dev, &stream[0]);
    let first: Vec<(u64, &[u8])> = (1..3).map(|i| (i as u64, &stream[i][..])).collect();
    let got = feed_and_drain(s.as_ref(), &mut outs, &first);
    assert_eq!(
        got,
        vec![0, 1, 2],
        "every frame before the drain, then LAST"
    );
    // Restart after the drain (DEC_CMD_START) and decode the rest.
    // (The LAST buffer stays with us; the others are still queued.)
    s.start().unwrap();
    let rest: Vec<(u64, &[u8])> = (3..6).map(|i| (i as u64, &stream[i][..])).collect();
    let got = feed_and_drain(s.as_ref(), &mut outs, &rest);
    assert_eq!(
        got,
        vec![3, 4, 5],
        "the session decodes again after a drain"
    );
}

#[test]
fn flush_discards_and_restarts_at_a_key_frame() {
    let Some(dev) = decoder_node("flush_discards_and_restarts_at_a_key_frame") else {
        return;
    };
    let stream = bare_encode(&frames(&raw(), 8), 4);
    let session = dev.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Coherent, 4, 1).unwrap();
    let mut got: Vec<(u64, bool)> = Vec::new();
    let mut take = |b: &Buffer| {
        got.push((b.timestamp, b.flags.contains(BufferFlags::ERROR)));
        Ok(())
    };
    for (i, c) in stream.iter().enumerate().take(2) {
        dec.decode(c, i as u64, &mut take).unwrap();
    }
    dec.flush().unwrap();
    for (i, c) in stream.iter().enumerate().skip(4) {
        dec.decode(c, i as u64, &mut take).unwrap();
    }
    dec.finish(&mut take).unwrap();
    let after: Vec<_> = got.iter().filter(|(ts, _)| *ts >= 4).collect();
    assert_eq!(after.len(), 4, "every frame after the flush: {got:?}");
    assert!(after.iter().all(|(_, e)| !e), "{got:?}");
    assert!(got.iter().all(|(ts, _)| *ts < 2 || *ts >= 4), "{got:?}");
}

#[test]
fn garbage_is_an_error_buffer_and_decoding_continues() {
    let Some(dev) = decoder_node("garbage_is_an_error_buffer_and_decoding_continues") else {
        return;
    };
    let mut stream = bare_encode(&frames(&raw(), 6), 3);
    // Frame 1: a valid header over a payload of 0xff halfwords (runs past
    // the end of a block).
    for b in stream[1][44..].iter_mut() {
        *b = 0xff;
    }
    let chunks: Vec<(u64, &[u8])> = stream
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64, &c[..]))
        .collect();
    let (decoded, _) = decode_on(&dev, &chunks);
    let errors: Vec<(u64, &str)> = decoded
        .iter()
        .filter_map(|d| d.error.as_deref().map(|e| (d.timestamp, e)))
        .collect();
    eprintln!("errors: {errors:?}");
    assert!(
        errors
            .iter()
            .any(|(ts, e)| *ts == 1 && e.contains("V4L2_BUF_FLAG_ERROR")),
        "the corrupt frame is an ERROR buffer with a message: {errors:?}"
    );
    let good: Vec<u64> = decoded
        .iter()
        .filter(|d| d.error.is_none())
        .map(|d| d.timestamp)
        .collect();
    assert!(good.contains(&0) && good.ends_with(&[3, 4, 5]), "{good:?}");
}

#[test]
fn controls_by_name_and_clear_errors() {
    let Some(dev) = encoder_node("controls_by_name_and_clear_errors") else {
        return;
    };
    let s: KernelSession = dev.open_session(Role::Encoder, PixelFormat::Fwht).unwrap();
    let keys: Vec<String> = s.controls().into_iter().map(|c| c.key).collect();
    for k in [
        "video_gop_size",
        "fwht_i_frame_qp_value",
        "fwht_p_frame_qp_value",
    ] {
        assert!(keys.iter().any(|c| c == k), "{k} in {keys:?}");
    }
    s.set_named_control("video_gop_size", 7).unwrap();
    s.set_named_control("FWHT P-Frame QP Value", 12).unwrap();
    let e = s
        .set_named_control("fwht_i_frame_qp_value", 99)
        .unwrap_err();
    assert!(e.to_string().contains("1..=31"), "{e}");
    let e = s.set_named_control("no_such_control", 1).unwrap_err();
    assert!(
        e.to_string().contains("no_such_control") && e.to_string().contains("video_gop_size"),
        "{e}"
    );
    let e = s.set_control(Control::Bitrate(1_000_000)).unwrap_err();
    assert!(
        matches!(e, M2mError::InvalidControl { .. }) && e.to_string().contains("bitrate"),
        "{e}"
    );
    let e = s.set_control(Control::GopSize(100)).unwrap_err();
    assert!(e.to_string().contains("1..=16"), "{e}");
    assert_eq!(s.min_buffers(QueueKind::Output), 1);

    let e = s
        .set_format(
            QueueKind::Output,
            &Format::raw(PixelFormat::I420, 320, 240).unwrap(),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("640..4096"),
        "names the driver's range: {e}"
    );
    let e = s
        .set_format(QueueKind::Output, &Format::coded(PixelFormat::Fwht, W, H))
        .unwrap_err();
    assert!(e.to_string().contains("raw"), "{e}");
    let e = s
        .allocate_buffers(QueueKind::Output, 2, Memory::Allocate(Coherency::Coherent))
        .unwrap_err();
    assert!(e.to_string().contains("format"), "{e}");
    s.set_format(QueueKind::Output, &raw()).unwrap();
    let outs = s
        .allocate_buffers(QueueKind::Output, 1, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    let mut wrong = outs.into_iter().next().unwrap();
    wrong.index = 9;
    let e = s.queue(wrong).unwrap_err();
    assert_eq!(e.buffer.index, 9, "a failed queue hands the buffer back");
    assert!(e.to_string().contains("index 9"), "{e}");

    let e = dev.open(Role::Decoder, PixelFormat::Fwht).err().unwrap();
    assert!(
        e.to_string().contains(&dev.path().display().to_string()),
        "names the node: {e}"
    );
}

#[test]
fn encoder_imports_dma_bufs_on_output_with_the_same_result() {
    let Some(dev) = encoder_node("encoder_imports_dma_bufs_on_output_with_the_same_result") else {
        return;
    };
    let backend = DmaBackend::probe();
    if backend == DmaBackend::Memfd {
        eprintln!("*** SKIPPED encoder_imports_dma_bufs_on_output: no dma-heap or udmabuf ***");
        return;
    }
    let raw = raw();
    let input = frames(&raw, 4);
    let s = dev.open(Role::Encoder, PixelFormat::Fwht).unwrap();
    s.set_format(QueueKind::Output, &raw).unwrap();
    s.set_control(Control::GopSize(4)).unwrap();
    assert!(
        s.allocate_buffers(QueueKind::Output, 2, Memory::Import)
            .unwrap()
            .is_empty()
    );
    let regions: Vec<Arc<Region>> = (0..2)
        .map(|i| {
            Region::allocate(
                &format!("import-{i}"),
                raw.size,
                Coherency::Cacheable,
                backend,
                dev.checker(),
            )
            .unwrap()
        })
        .collect();
    let caps = s
        .allocate_buffers(QueueKind::Capture, 2, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    s.stream_on(QueueKind::Output).unwrap();
    s.stream_on(QueueKind::Capture).unwrap();
    for c in caps {
        s.queue(c).unwrap();
    }
    let mut free: Vec<u32> = vec![1, 0];
    let mut coded = Vec::new();
    let mut next = 0;
    while coded.len() < input.len() {
        if next < input.len()
            && let Some(slot) = free.pop()
        {
            let region = &regions[slot as usize];
            if region.owner() == gstrsvpu::mem::Owner::Device {
                region.sync_for_cpu().unwrap();
            }
            region.cpu_write()[..raw.size].copy_from_slice(&input[next]);
            let mut b = Buffer::new(QueueKind::Output, slot, Arc::clone(region));
            b.bytesused = raw.size;
            b.timestamp = next as u64;
            s.queue(b).unwrap();
            next += 1;
            continue;
        }
        match s.wait_event(Duration::from_secs(10)).unwrap().unwrap() {
            Event::BufferDone(b) if b.queue == QueueKind::Output => {
                assert!(Arc::ptr_eq(&b.region, &regions[b.index as usize]));
                free.push(b.index);
            }
            Event::BufferDone(b) => {
                coded.push(b.region.cpu_read()[..b.bytesused].to_vec());
                s.queue(Buffer::new(QueueKind::Capture, b.index, b.region))
                    .unwrap();
            }
            Event::SourceChange(_) => panic!("an encoder has no source change"),
        }
    }
    assert_eq!(
        coded,
        bare_encode(&input, 4),
        "imported frames encode alike"
    );
}

#[test]
fn eos_without_any_frame_does_not_hang() {
    let Some(dev) = decoder_node("eos_without_any_frame_does_not_hang") else {
        return;
    };
    let session = dev.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Coherent, 2, 1).unwrap();
    let start = std::time::Instant::now();
    let mut n = 0;
    dec.finish(&mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 0);
    assert!(start.elapsed() < Duration::from_secs(5));
    // An idle session waits its whole timeout without spinning and reports nothing.
    let t = std::time::Instant::now();
    assert!(
        dec.session()
            .wait_event(Duration::from_millis(300))
            .unwrap()
            .is_none()
    );
    assert!(t.elapsed() >= Duration::from_millis(290));
}
