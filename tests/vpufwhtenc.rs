//! The `vpufwhtenc` element: videotestsrc pipelines in six raw formats at an
//! even and an odd size, byte for byte against the bare FWHT encoder; GOP,
//! QP and force-key-unit; EOS on 0, 1 and 2 frames; a caps change mid-stream;
//! zero-copy import of VPU memory and the proposed pool; controls changed
//! while PLAYING and extra-controls; several encoders at once; state cycles;
//! the stats; gst-inspect; and the pipelines/encode-fwht.sh example.
//!
//! The element runs on the emulated VPU with its coherency checker on; every
//! test that encodes asserts that the checker saw no violation. The same
//! pool checks under a simulated write-back cache are in
//! `vpufwhtenc_simulate.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gstrsvpu::allocator::VpuAllocator;
use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::mem::{Checker, CheckerConfig, Coherency, Region};
use gstrsvpu::sys::DmaBackend;
use gstrsvpu::vpu::codec::fwht::{self, EncoderParams, parse_header};

mod pipeline_support;
mod vpufwhtenc_support;
use pipeline_support::{assert_blurbs, start_errors};
use vpufwhtenc_support::*;

#[test]
fn every_format_and_size_matches_the_bare_encoder() {
    for &case in CASES {
        for size in [(320u32, 240u32), (322, 242)] {
            check_against_bare_encoder(case, size, 8, Route::Copy);
        }
    }
}

#[test]
fn the_proposed_pool_makes_input_zero_copy_in_every_format() {
    for &case in CASES {
        for size in [(320u32, 240u32), (322, 242)] {
            check_against_bare_encoder(case, size, 8, Route::Pool);
        }
    }
}

#[test]
fn the_proposed_pool_is_reused_over_a_long_run() {
    for (case, size) in [
        (("I420", PixelFormat::I420), (320, 240)),
        (("NV12", PixelFormat::Nv12), (322, 242)),
    ] {
        let stats = check_against_bare_encoder(case, size, 60, Route::Pool);
        assert!(
            stat(&stats, "cache-syncs") > 0,
            "cacheable frames are cleaned: {stats}"
        );
    }
}

fn encode_ball(props: &str, n: usize) -> Out {
    run(&format!(
        "videotestsrc num-buffers={n} pattern=ball ! video/x-raw,format=I420,width=320,height=240 \
         ! vpufwhtenc name=enc {props} ! fakesink name=sink"
    ))
}

fn total_size(out: &Out) -> usize {
    out.buffers.iter().map(|b| b.size()).sum()
}

#[test]
fn gop_and_qp_properties_take_effect() {
    let all_key = encode_ball("gop-size=1", 6);
    assert_eq!(all_key.buffers.len(), 6);
    assert!(
        all_key.buffers.iter().all(|b| is_key(b)),
        "gop-size=1: all key"
    );

    let default = encode_ball("", 6);
    assert!(is_key(&default.buffers[0]));
    assert!(
        default.buffers[1..].iter().any(|b| !is_key(b)),
        "default GOP: P frames follow"
    );

    let fine = encode_ball("i-frame-qp=1 p-frame-qp=1", 6);
    let coarse = encode_ball("i-frame-qp=31 p-frame-qp=31", 6);
    assert!(
        total_size(&fine) > total_size(&coarse),
        "QP 1 ({}) codes larger than QP 31 ({})",
        total_size(&fine),
        total_size(&coarse)
    );
}

/// Frames in the contract layout of `raw` (test pattern), as GStreamer
/// buffers in system memory with a VideoMeta describing that layout.
fn pattern_buffer(raw: &Format, i: u32, info: &gst_video::VideoInfo) -> gst::Buffer {
    let mut data = vec![0; raw.size];
    fwht::test_pattern(raw, i, &mut data);
    let mut b = gst::Buffer::from_mut_slice(data);
    add_meta(b.get_mut().unwrap(), raw, info, i);
    b
}

fn add_meta(b: &mut gst::BufferRef, raw: &Format, info: &gst_video::VideoInfo, i: u32) {
    let offsets: Vec<usize> = raw.planes.iter().map(|p| p.offset).collect();
    let strides: Vec<i32> = raw.planes.iter().map(|p| p.stride as i32).collect();
    gst_video::VideoMeta::add_full(
        b,
        gst_video::VideoFrameFlags::empty(),
        info.format(),
        info.width(),
        info.height(),
        &offsets,
        &strides,
    )
    .unwrap();
    b.set_pts(gst::ClockTime::from_mseconds(40 * u64::from(i)));
    b.set_duration(gst::ClockTime::from_mseconds(40));
}

fn harness(raw: &Format, props: &[(&str, u32)]) -> (gst_check::Harness, gst_video::VideoInfo) {
    init();
    let mut h = gst_check::Harness::new("vpufwhtenc");
    for (k, v) in props {
        h.element().unwrap().set_property(k, *v);
    }
    let info = gst_video::VideoInfo::builder(
        gstrsvpu_video_format(raw.pixelformat),
        raw.width,
        raw.height,
    )
    .fps(gst::Fraction::new(25, 1))
    .build()
    .unwrap();
    h.set_src_caps(info.to_caps().unwrap());
    (h, info)
}

fn gstrsvpu_video_format(pf: PixelFormat) -> gst_video::VideoFormat {
    match pf {
        PixelFormat::I420 => gst_video::VideoFormat::I420,
        PixelFormat::Nv12 => gst_video::VideoFormat::Nv12,
        other => panic!("no test mapping for {other}"),
    }
}

fn pull_all(h: &mut gst_check::Harness) -> Vec<gst::Buffer> {
    let mut out = Vec::new();
    while let Some(b) = h.try_pull() {
        out.push(b);
    }
    out
}

#[test]
fn force_key_unit_makes_the_next_frame_a_key_frame() {
    let raw = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let (mut h, info) = harness(&raw, &[("gop-size", 16)]);
    for i in 0..4 {
        h.push(pattern_buffer(&raw, i, &info)).unwrap();
    }
    assert!(
        h.push_upstream_event(
            gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build()
        )
    );
    for i in 4..8 {
        h.push(pattern_buffer(&raw, i, &info)).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 8);
    let keys: Vec<bool> = out.iter().map(|b| is_key(b)).collect();
    assert!(keys[0], "first frame is a key frame");
    assert!(
        !keys[1..4].iter().any(|&k| k),
        "no key frame before the event: {keys:?}"
    );
    assert!(
        keys[4],
        "the frame after the event is a key frame: {keys:?}"
    );
    for (i, b) in out.iter().enumerate() {
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(40 * i as u64)));
    }
}

#[test]
fn eos_on_zero_one_and_two_frames() {
    for n in 0..=2 {
        let out = encode_ball("", n);
        assert_eq!(out.buffers.len(), n, "{n} frames in, {n} out");
        assert_eq!(stat(out.stats.as_ref().unwrap(), "frames-out"), n as u64);
    }
}

#[test]
fn caps_change_mid_stream_loses_no_frame() {
    let small = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let big = Format::raw(PixelFormat::I420, 328, 248).unwrap();
    let (mut h, info) = harness(&small, &[]);
    for i in 0..3 {
        h.push(pattern_buffer(&small, i, &info)).unwrap();
    }
    let big_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 328, 248)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .unwrap();
    h.set_src_caps(big_info.to_caps().unwrap());
    for i in 3..7 {
        h.push(pattern_buffer(&big, i, &big_info)).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 7, "no frame lost across the change");
    let sizes: Vec<(u32, u32)> = out
        .iter()
        .map(|b| {
            let hd = parse_header(&b.map_readable().unwrap()).unwrap();
            (hd.width, hd.height)
        })
        .collect();
    assert!(sizes[..3].iter().all(|&s| s == (160, 120)), "{sizes:?}");
    assert!(sizes[3..].iter().all(|&s| s == (328, 248)), "{sizes:?}");
    assert!(is_key(&out[3]), "the new format starts with a key frame");
    for (i, b) in out.iter().enumerate() {
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(40 * i as u64)));
    }
}

/// A memfd region named `name` holding test pattern `i` in `raw`, and the
/// pattern's bytes.
fn pattern_region(
    name: &str,
    raw: &Format,
    i: u32,
    coherency: Coherency,
    checker: &Arc<Checker>,
) -> (Arc<Region>, Vec<u8>) {
    let region = Region::allocate(name, raw.size, coherency, DmaBackend::Memfd, checker).unwrap();
    let mut data = vec![0; raw.size];
    fwht::test_pattern(raw, i, &mut data);
    region.cpu_write().copy_from_slice(&data);
    (region, data)
}

/// `out` is what the bare encoder makes of `frames` in `raw` (with the
/// colorimetry the stream says) at `gop_size`, frame for frame, key frames
/// included.
fn assert_codes_as_bare(out: &[gst::Buffer], raw: &Format, frames: &[Vec<u8>], gop_size: u32) {
    let mut raw_c = raw.clone();
    raw_c.colorimetry = parse_header(&out[0].map_readable().unwrap())
        .unwrap()
        .colorimetry;
    let expected = bare_encode(
        &raw_c,
        EncoderParams {
            gop_size,
            ..EncoderParams::default()
        },
        frames,
    );
    for (i, (b, (data, key))) in out.iter().zip(&expected).enumerate() {
        assert_eq!(&b.map_readable().unwrap()[..], &data[..], "frame {i}");
        assert_eq!(is_key(b), *key, "frame {i}");
    }
}

#[test]
fn vpu_memory_is_imported_without_a_copy() {
    let raw = Format::raw(PixelFormat::Nv12, 322, 242).unwrap();
    let (mut h, info) = harness(&raw, &[("gop-size", 4)]);
    let checker = Checker::new(CheckerConfig::default());
    let alloc = VpuAllocator::new();
    let mut frames = Vec::new();
    for i in 0..6 {
        let (region, data) = pattern_region(
            &format!("test-frame-{i}"),
            &raw,
            i,
            Coherency::Cacheable,
            &checker,
        );
        frames.push(data);
        let mut b = gst::Buffer::new();
        {
            let b = b.get_mut().unwrap();
            b.append_memory(alloc.wrap(Arc::clone(&region)).unwrap());
            add_meta(b, &raw, &info, i);
        }
        h.push(b).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 6);
    assert_codes_as_bare(&out, &raw, &frames, 4);
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stat(&stats, "imported-frames"), 6, "{stats}");
    assert_eq!(stat(&stats, "frame-copies"), 0, "{stats}");
    assert_eq!(stat(&stats, "bytes-copied"), 0, "{stats}");
    assert_eq!(checker.violation_count(), 0, "{:?}", checker.violations());
    assert_eq!(stat(&stats, "coherency-violations"), 0, "{stats}");
}

/// A foreign dma-buf producer's pool (GstDmaBufMemory from GStreamer's own
/// allocator, not ours; memfds stand in for dma-bufs on a host without
/// them): every frame is imported, none copied, and each of the producer's
/// buffers is mapped into the VPU once, however often it comes round.
#[test]
fn a_foreign_dma_buf_pool_is_mapped_once_per_buffer() {
    use gst_allocators::prelude::*;
    init();
    let producer = gst_allocators::DmaBufAllocator::new();
    // SAFETY: the fd is a fresh duplicate, handed over to GStreamer, which
    // closes it with the memory.
    foreign_pool_is_mapped_once_per_buffer("dmabuf", |fd, size| unsafe {
        producer.alloc_dmabuf(fd, size).unwrap()
    });
}

/// The same with plain fd memory (GstFdMemory over memfds, as a shm
/// producer makes): imported as well, not copied.
#[test]
fn a_foreign_fd_memory_pool_is_mapped_once_per_buffer() {
    use gst_allocators::prelude::*;
    use std::os::fd::IntoRawFd;
    init();
    let producer = gst_allocators::FdAllocator::new();
    // SAFETY: as above; without DONT_CLOSE GStreamer closes the fd.
    foreign_pool_is_mapped_once_per_buffer("fd", |fd, size| unsafe {
        producer
            .alloc_fd(fd.into_raw_fd(), size, gst_allocators::FdMemoryFlags::NONE)
            .unwrap()
    });
}

fn foreign_pool_is_mapped_once_per_buffer(
    name: &str,
    mut wrap: impl FnMut(std::os::fd::OwnedFd, usize) -> gst::Memory,
) {
    const POOL: u32 = 3;
    const FRAMES: u32 = 12;
    let raw = Format::raw(PixelFormat::I420, 320, 240).unwrap();
    let (mut h, info) = harness(&raw, &[("gop-size", 4)]);
    let checker = Checker::new(CheckerConfig::default());
    let pool: Vec<(gst::Memory, Vec<u8>)> = (0..POOL)
        .map(|i| {
            let (region, data) = pattern_region(
                &format!("producer-{name}-{i}"),
                &raw,
                i,
                Coherency::Coherent,
                &checker,
            );
            (
                wrap(region.fd().try_clone_to_owned().unwrap(), raw.size),
                data,
            )
        })
        .collect();
    let mut frames = Vec::new();
    for i in 0..FRAMES {
        let (mem, data) = &pool[(i % POOL) as usize];
        // As a pool does: a buffer goes out again once it came back (the
        // encoder's buffer holding it freed).
        let waited = std::time::Instant::now();
        while !mem.is_writable() {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "frame {i}: the encoder still holds producer buffer {}",
                i % POOL
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        frames.push(data.clone());
        let mut b = gst::Buffer::new();
        {
            let b = b.get_mut().unwrap();
            b.append_memory(mem.clone());
            add_meta(b, &raw, &info, i);
        }
        h.push(b).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let out = pull_all(&mut h);
    assert_eq!(out.len(), FRAMES as usize);
    assert_codes_as_bare(&out, &raw, &frames, 4);
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(
        stat(&stats, "imported-frames"),
        u64::from(FRAMES),
        "{stats}"
    );
    assert_eq!(stat(&stats, "frame-copies"), 0, "{stats}");
    assert_eq!(
        stat(&stats, "import-maps"),
        u64::from(POOL),
        "one VPU mapping per producer buffer: {stats}"
    );
    assert_eq!(stat(&stats, "coherency-violations"), 0, "{stats}");
    // The VPU's mappings are kept with the producer's memories, and go with
    // them.
    let mapped = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("memfd:producer-{name}-")))
            .count()
    };
    assert_eq!(mapped(), POOL as usize, "one mapping per producer buffer");
    drop(h);
    drop(pool);
    assert_eq!(mapped(), 0, "the mappings went with the memories");
}

#[test]
fn several_encoders_run_side_by_side() {
    init();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let out = encode_ball(&format!("gop-size={}", i + 2), 20);
                assert_eq!(out.buffers.len(), 20, "encoder {i}");
                out.buffers.iter().map(|b| b.size()).sum::<usize>()
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().expect("no encoder thread panicked") > 0);
    }
}

#[test]
fn playing_null_cycles_keep_working() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=false pattern=ball ! video/x-raw,format=I420,width=160,height=120 \
         ! vpufwhtenc name=enc ! fakesink name=sink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = pipeline.bus().unwrap();
    for cycle in 0..60 {
        pipeline.set_state(gst::State::Playing).unwrap();
        let (res, state, _) = pipeline.state(gst::ClockTime::from_seconds(10));
        assert!(res.is_ok() && state == gst::State::Playing, "cycle {cycle}");
        std::thread::sleep(Duration::from_millis(2));
        pipeline.set_state(gst::State::Null).unwrap();
        assert!(
            bus.pop_filtered(&[gst::MessageType::Error]).is_none(),
            "cycle {cycle}: no error"
        );
    }
    let enc = pipeline.by_name("enc").unwrap();
    // Stats survive NULL and restart at READY->PAUSED; the checker's are global.
    let stats = enc.property::<gst::Structure>("stats");
    assert_eq!(stat(&stats, "coherency-violations"), 0);
}

#[test]
fn properties_read_like_a_manual() {
    init();
    let factory = gst::ElementFactory::find("vpufwhtenc").unwrap();
    assert_eq!(
        factory.metadata("klass"),
        Some("Codec/Encoder/Video/Hardware")
    );
    assert!(factory.metadata("description").unwrap().len() > 100);
    let enc = factory.create().build().unwrap();
    assert_blurbs(
        &enc,
        &[
            "gop-size",
            "i-frame-qp",
            "p-frame-qp",
            "device",
            "memory-policy",
            "output-io-mode",
            "stats",
        ],
    );
    assert_eq!(enc.property::<u32>("gop-size"), 10);
    assert_eq!(enc.property::<u32>("i-frame-qp"), 20);
    assert_eq!(enc.property::<u32>("p-frame-qp"), 20);
    assert_eq!(enc.property::<String>("device"), "auto");
    enc.set_property("device", "emu");
    assert_eq!(enc.property::<String>("device"), "emu");
    let io_mode = |e: &gst::Element| {
        let v = e.property_value("output-io-mode");
        glib::EnumValue::from_value(&v).unwrap().1.nick().to_owned()
    };
    assert_eq!(io_mode(&enc), "auto");
    for nick in ["mmap", "dmabuf-import", "auto"] {
        enc.set_property_from_str("output-io-mode", nick);
        assert_eq!(io_mode(&enc), nick);
    }

    let out = std::process::Command::new("gst-inspect-1.0")
        .arg("vpufwhtenc")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .output()
        .expect("gst-inspect-1.0 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "Codec/Encoder/Video/Hardware",
        "video/x-fwht",
        "gop-size",
        "memory-policy",
        "output-io-mode",
        "dmabuf-import",
    ] {
        assert!(text.contains(needle), "gst-inspect shows {needle}:\n{text}");
    }
}

/// target/<profile>, where cargo put libgstrsvpu.so.
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn pipeline_example_encode_fwht_runs() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/encode-fwht.sh");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .env("GST_PLUGIN_PATH", plugin_dir())
        .output()
        .expect("the script runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flush_restarts_with_a_key_frame() {
    let raw = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let (mut h, info) = harness(&raw, &[("gop-size", 16)]);
    for i in 0..3 {
        h.push(pattern_buffer(&raw, i, &info)).unwrap();
    }
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
        gst::ClockTime,
    >::new()));
    // Whatever was coded before the flush may or may not have gone out.
    let before = pull_all(&mut h).len();
    assert!(before <= 3);
    for i in 3..6 {
        h.push(pattern_buffer(&raw, i, &info)).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let after = pull_all(&mut h);
    assert_eq!(after.len(), 3, "every frame after the flush comes out");
    assert!(is_key(&after[0]), "the stream restarts with a key frame");
    assert_eq!(after[0].pts(), Some(gst::ClockTime::from_mseconds(120)));
}

#[test]
fn a_device_that_cannot_open_is_a_clear_error() {
    init();
    let errors =
        start_errors("videotestsrc num-buffers=2 ! vpufwhtenc device=/dev/video99 ! fakesink");
    // Ours first, naming the device; GstVideoEncoder then adds its generic
    // "Failed to open encoder" (LIBRARY/INIT), as for every encoder whose
    // open fails.
    assert!(!errors.is_empty() && errors.len() <= 2, "{errors:?}");
    assert!(errors[0].contains("/dev/video99"), "{errors:?}");
}

/// Pushes `n` test-pattern frames of `raw` through a harness encoder,
/// calling `change` on the element just before frame `at` is pushed (the
/// element is PLAYING then), and returns the coded frames and the stream's
/// colorimetry.
fn encode_with_change(
    raw: &Format,
    n: u32,
    at: u32,
    change: impl Fn(&gst::Element),
) -> (Vec<gst::Buffer>, Vec<Vec<u8>>, Format) {
    let (mut h, info) = harness(raw, &[]);
    let mut frames = Vec::new();
    for i in 0..n {
        if i == at {
            change(&h.element().unwrap());
        }
        let b = pattern_buffer(raw, i, &info);
        frames.push(b.map_readable().unwrap().to_vec());
        h.push(b).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let out = pull_all(&mut h);
    assert_eq!(out.len(), n as usize, "N frames in, N out");
    let mut raw_c = raw.clone();
    raw_c.colorimetry = parse_header(&out[0].map_readable().unwrap())
        .unwrap()
        .colorimetry;
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stat(&stats, "coherency-violations"), 0, "{stats}");
    (out, frames, raw_c)
}

/// The bare encoder with `before` for frames `..at` and `after` from `at`.
fn bare_encode_switched(
    raw: &Format,
    frames: &[Vec<u8>],
    at: usize,
    before: EncoderParams,
    after: EncoderParams,
) -> Vec<(Vec<u8>, bool)> {
    let mut enc = gstrsvpu::vpu::codec::fwht::FwhtEncoder::new(raw, before).unwrap();
    let max = gstrsvpu::vpu::codec::fwht::FwhtEncoder::max_frame_size(raw);
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == at {
                enc.set_params(after).unwrap();
            }
            let mut dst = vec![0; max];
            let e = enc.encode(f, &mut dst).unwrap();
            dst.truncate(e.bytes);
            (dst, e.keyframe)
        })
        .collect()
}

fn assert_stream_eq(out: &[gst::Buffer], expected: &[(Vec<u8>, bool)], what: &str) {
    assert_eq!(out.len(), expected.len(), "{what}");
    for (i, (b, (data, key))) in out.iter().zip(expected).enumerate() {
        assert_eq!(
            &b.map_readable().unwrap()[..],
            &data[..],
            "{what}: frame {i} equals the bare encoder"
        );
        assert_eq!(is_key(b), *key, "{what}: frame {i} key flag");
    }
}

const DEFAULT_PARAMS: EncoderParams = EncoderParams {
    gop_size: 10,
    i_frame_qp: 20,
    p_frame_qp: 20,
};

#[test]
fn controls_changed_while_playing_apply_from_the_next_frame() {
    let raw = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let after = EncoderParams {
        gop_size: 3,
        i_frame_qp: 8,
        p_frame_qp: 30,
    };
    for at in [1u32, 5] {
        let (out, frames, raw_c) = encode_with_change(&raw, 14, at, |e| {
            assert_eq!(e.current_state(), gst::State::Playing);
            e.set_property("gop-size", after.gop_size);
            e.set_property("i-frame-qp", after.i_frame_qp);
            e.set_property("p-frame-qp", after.p_frame_qp);
        });
        let expected = bare_encode_switched(&raw_c, &frames, at as usize, DEFAULT_PARAMS, after);
        assert_stream_eq(
            &out,
            &expected,
            &format!("properties set before frame {at}"),
        );
        let keys: Vec<bool> = out.iter().map(|b| is_key(b)).collect();
        assert!(
            keys.iter().filter(|&&k| k).count() >= 3,
            "gop-size=3 took effect: {keys:?}"
        );
    }
}

fn extra_controls(s: &str) -> gst::Structure {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn extra_controls_set_the_vicodec_controls_by_name() {
    let raw = Format::raw(PixelFormat::Nv12, 162, 122).unwrap();
    let after = EncoderParams {
        gop_size: 5,
        i_frame_qp: 10,
        p_frame_qp: 30,
    };
    let (out, frames, raw_c) = encode_with_change(&raw, 12, 4, |e| {
        e.set_property(
            "extra-controls",
            extra_controls(
                "controls,video_gop_size=5,fwht_i_frame_qp_value=10,fwht_p_frame_qp_value=30",
            ),
        );
        // They are the properties' values now.
        assert_eq!(e.property::<u32>("gop-size"), 5);
        assert_eq!(e.property::<u32>("i-frame-qp"), 10);
        assert_eq!(e.property::<u32>("p-frame-qp"), 30);
    });
    let expected = bare_encode_switched(&raw_c, &frames, 4, DEFAULT_PARAMS, after);
    assert_stream_eq(&out, &expected, "extra-controls in PLAYING");
}

#[test]
fn extra_controls_in_a_launch_line_and_unknown_names_warn() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=6 pattern=ball ! video/x-raw,format=I420,width=160,height=120 \
         ! vpufwhtenc name=enc extra-controls=\"controls,video_gop_size=1\" ! fakesink name=sink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let enc = pipeline.by_name("enc").unwrap();
    assert_eq!(enc.property::<u32>("gop-size"), 1, "from the launch line");
    let s = enc
        .property::<Option<gst::Structure>>("extra-controls")
        .unwrap();
    assert_eq!(
        s.get::<i32>("video_gop_size").unwrap(),
        1,
        "reads back: {s}"
    );

    // In the pipeline, a bad field is a warning on the bus naming it; the
    // good ones still apply.
    let bus = pipeline.bus().unwrap();
    enc.set_property(
        "extra-controls",
        extra_controls(
            "controls,video_bitrate_mode=1,fwht_p_frame_qp_value=99,video_gop_size=1,fwht_i_frame_qp_value=3",
        ),
    );
    let mut warnings = Vec::new();
    while let Some(m) = bus.pop_filtered(&[gst::MessageType::Warning]) {
        if let gst::MessageView::Warning(w) = m.view() {
            warnings.push(w.error().to_string());
        }
    }
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("'video_bitrate_mode' does not exist"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("'fwht_p_frame_qp_value' takes 1..=31, got 99"),
        "{warnings:?}"
    );
    assert_eq!(enc.property::<u32>("i-frame-qp"), 3);
    assert_eq!(
        enc.property::<u32>("p-frame-qp"),
        20,
        "the bad value is ignored"
    );

    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within 30 s");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// `output-io-mode` on the emulated VPU: the same stream in every mode;
/// `mmap` copies every frame into buffers the VPU allocated, the others
/// queue videotestsrc's frames (written into the proposed pool) as they are.
#[test]
fn output_io_modes_code_the_same_stream() {
    let n = 8;
    let modes = ["auto", "mmap", "dmabuf-import"];
    let outs: Vec<Out> = modes
        .iter()
        .map(|m| encode_ball(&format!("device=emu gop-size=4 output-io-mode={m}"), n))
        .collect();
    for (m, out) in modes.iter().zip(&outs) {
        assert_eq!(out.buffers.len(), n, "{m}: every frame");
        for (i, (a, b)) in out.buffers.iter().zip(&outs[0].buffers).enumerate() {
            assert_eq!(
                &a.map_readable().unwrap()[..],
                &b.map_readable().unwrap()[..],
                "{m}: coded frame {i} as with auto"
            );
        }
        let stats = out.stats.as_ref().unwrap();
        let copies = stat(stats, "frame-copies");
        let imported = stat(stats, "imported-frames");
        let io = stats.get::<String>("output-io").unwrap();
        match *m {
            "mmap" => {
                assert_eq!((copies, imported), (n as u64, 0), "{m}: {stats}");
                assert!(stat(stats, "bytes-copied") >= (n * 320 * 240) as u64);
                assert_eq!(io, "mmap", "{stats}");
            }
            _ => {
                assert_eq!((copies, imported), (0, n as u64), "{m}: {stats}");
                assert_eq!(io, "dmabuf-import", "{stats}");
            }
        }
    }
}

/// `output-io-mode=dmabuf-import` with frames in plain system memory: one
/// clear element error saying why the frame cannot be imported, no copy.
#[test]
fn dmabuf_import_refuses_system_memory_with_a_clear_error() {
    init();
    let raw = Format::raw(PixelFormat::I420, 320, 240).unwrap();
    let desc = "appsrc name=src format=time \
                caps=video/x-raw,format=I420,width=320,height=240,framerate=25/1 \
                ! vpufwhtenc name=enc device=emu output-io-mode=dmabuf-import \
                ! fakesink name=sink";
    let pipeline = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let src = pipeline.by_name("src").unwrap();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 320, 240)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .unwrap();
    for i in 0..3 {
        let b = pattern_buffer(&raw, i, &info);
        let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&b]);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("an error within 30 s");
    let gst::MessageView::Error(e) = msg.view() else {
        panic!("EOS: system memory was taken in dmabuf-import mode");
    };
    let text = e.error().to_string();
    assert!(
        text.contains("dmabuf-import") && text.contains("neither VPU memory nor fd memory"),
        "{text}"
    );
    let stats = pipeline
        .by_name("enc")
        .unwrap()
        .property::<gst::Structure>("stats");
    assert_eq!(stat(&stats, "frame-copies"), 0, "{stats}");
    assert_eq!(stat(&stats, "frames-out"), 0, "{stats}");
    pipeline.set_state(gst::State::Null).unwrap();
}
