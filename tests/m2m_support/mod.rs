//! Helpers shared by the tests of the m2m contract without GStreamer
//! (`tests/m2m_contract.rs`, `tests/m2m_h264enc.rs` on the emulated VPU,
//! `tests/kernel_backend.rs` on vicodec): the emulated VPU, test frames,
//! encoding through the blocking client, and a decoder session set up by
//! hand up to its source change.

// Each binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use gstrsvpu::m2m::blocking::BlockingEncoder;
use gstrsvpu::m2m::{
    Buffer, BufferFlags, Event, Format, Memory, PixelFormat, QueueKind, Session, SourceChange,
};
use gstrsvpu::mem::{Checker, CheckerConfig, Coherency};
use gstrsvpu::sys::DmaBackend;
use gstrsvpu::vpu::codec::fwht;
use gstrsvpu::vpu::{EmuConfig, EmuVpu};

/// An emulated VPU whose coherency checker panics on a violation.
pub fn vpu_with(watchdog: Duration, simulate_cache: bool) -> EmuVpu {
    let checker = Checker::new(CheckerConfig {
        simulate_cache,
        ..CheckerConfig::default()
    });
    // Real dma-bufs (dma-heap, udmabuf) where the kernel offers them, as in
    // the VM; sealed memfds otherwise. GST_VPU_DMA_BACKEND forces one.
    EmuVpu::new(EmuConfig {
        checker,
        backend: DmaBackend::probe(),
        watchdog,
        ring_slots: 64,
    })
    .unwrap()
}

/// The emulated VPU with a 5 s watchdog and simulated CPU caches.
pub fn vpu() -> EmuVpu {
    vpu_with(Duration::from_secs(5), true)
}

/// `n` frames of the FWHT test pattern, laid out as `raw`.
pub fn frames(raw: &Format, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut f = vec![0; raw.size];
            fwht::test_pattern(raw, i, &mut f);
            f
        })
        .collect()
}

/// One coded frame as the encoder returned it.
#[derive(Debug, Clone)]
pub struct Coded {
    pub data: Vec<u8>,
    pub timestamp: u64,
    pub keyframe: bool,
}

/// Encodes `input`, frame `i` at timestamp `i * ts_step`, a key frame
/// forced on frame `force_key_at`; every CAPTURE buffer goes through
/// `check` first and must not carry ERROR.
pub fn encode_frames(
    enc: &mut BlockingEncoder,
    input: &[Vec<u8>],
    ts_step: u64,
    force_key_at: Option<usize>,
    mut check: impl FnMut(&Buffer),
) -> Vec<Coded> {
    let mut out = Vec::new();
    let mut take = |b: &Buffer| {
        check(b);
        assert!(
            !b.flags.contains(BufferFlags::ERROR),
            "encode error: {:?}",
            b.error
        );
        out.push(Coded {
            data: b.region.cpu_read()[..b.bytesused].to_vec(),
            timestamp: b.timestamp,
            keyframe: b.flags.contains(BufferFlags::KEYFRAME),
        });
        Ok(())
    };
    for (i, f) in input.iter().enumerate() {
        enc.encode(f, i as u64 * ts_step, force_key_at == Some(i), &mut take)
            .unwrap();
    }
    enc.finish(&mut take).unwrap();
    out
}

/// Sets up FWHT decoding on `s` by hand (no blocking helper): OUTPUT at
/// `width`x`height` with `outputs` buffers, streaming, `first` queued;
/// returns the source change and the OUTPUT buffers the client holds.
pub fn start_decoder(
    s: &dyn Session,
    first: &[u8],
    (width, height): (u32, u32),
    outputs: u32,
    timeout: Duration,
) -> (SourceChange, Vec<Buffer>) {
    s.set_format(
        QueueKind::Output,
        &Format::coded(PixelFormat::Fwht, width, height),
    )
    .unwrap();
    let mut outs = s
        .allocate_buffers(
            QueueKind::Output,
            outputs,
            Memory::Allocate(Coherency::Coherent),
        )
        .unwrap();
    s.stream_on(QueueKind::Output).unwrap();
    let mut b = outs.remove(0);
    b.region.cpu_write()[..first.len()].copy_from_slice(first);
    b.bytesused = first.len();
    s.queue(b).unwrap();
    let sc = loop {
        match s.wait_event(timeout).unwrap() {
            Some(Event::SourceChange(sc)) => break sc,
            Some(Event::BufferDone(b)) => outs.push(b),
            None => panic!("no source change"),
        }
    };
    assert_eq!((sc.format.width, sc.format.height), (width, height));
    (sc, outs)
}

/// Sets CAPTURE to `format`, allocates `count` coherent buffers, streams
/// CAPTURE on and queues them all.
pub fn start_capture(s: &dyn Session, format: &Format, count: u32) {
    s.set_format(QueueKind::Capture, format).unwrap();
    let caps = s
        .allocate_buffers(
            QueueKind::Capture,
            count,
            Memory::Allocate(Coherency::Coherent),
        )
        .unwrap();
    s.stream_on(QueueKind::Capture).unwrap();
    for c in caps {
        s.queue(c).unwrap();
    }
}
