//! `vpufwhtdec` on the emulated VPU: vicodec's vectors decode bit-exactly
//! through pipelines (and through decodebin/playbin), timestamps and frame
//! counts survive, frames leave as the VPU's own memory, EOS/flush/corrupt
//! and truncated input, state cycling, several decoders at once, and the
//! `pipelines/decode-fwht.sh` example. The firmware-hang test is in
//! `vpufwhtdec_hang.rs` (the emulated VPU is process-wide).

use std::path::Path;

use gst::prelude::*;
use gst_check::Harness;
use gstrsvpu::m2m::Format;

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

/// The vectors and their frame counts.
const VECTORS: &[(&str, usize)] = &[
    ("i420_640x480_gop4.fwht", 6),
    ("rgb24_800x600_qp.fwht", 4),
    ("xr24_640x360.fwht", 3),
    ("grey_noise_640x360.fwht", 2),
    ("i420_1920x1080.fwht", 3),
    ("nv12_650x370.fwht", 4),
    ("yuyv_648x362.fwht", 3),
];

/// Runs `pipeline` (with an appsink named `sink`) to EOS, handing every
/// sample to `each` and dropping it right after: the decoder's frames are
/// its CAPTURE buffers, and a consumer that keeps them all stalls it.
/// Returns the number of samples.
fn run_to_eos(pipeline: &gst::Pipeline, mut each: impl FnMut(usize, &gst::Sample)) -> usize {
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut samples = 0;
    while let Some(s) = try_pull_sample(&sink) {
        each(samples, &s);
        samples += 1;
    }
    assert!(
        sink.property::<bool>("eos"),
        "the pipeline must reach EOS, not stall"
    );
    assert_no_error(pipeline);
    samples
}

#[test]
fn vicodec_vectors_decode_bit_exact_through_a_pipeline() {
    init();
    for &(name, count) in VECTORS {
        let path = data(name);
        let stream = std::fs::read(&path).unwrap();
        // Decoded by the bare codec once the element's format is known.
        let mut bare: Option<(Format, Vec<Vec<u8>>)> = None;
        let pipeline = launch(&format!(
            "filesrc location={} ! vpufwhtdec name=dec ! appsink name=sink sync=false",
            path.display()
        ));
        // appsink takes no GstVideoMeta: the VPU writes GStreamer's default
        // layout (no padding rows) and the frames still go out uncopied.
        let samples = run_to_eos(&pipeline, |i, s| {
            let info = gst_video::VideoInfo::from_caps(s.caps().unwrap()).unwrap();
            let buffer = s.buffer().unwrap();
            assert!(
                gstrsvpu::allocator::region(buffer.peek_memory(0)).is_some(),
                "{name} frame {i}: the VPU's own memory"
            );
            assert!(buffer.size() >= info.size(), "{name} frame {i}");
            let (raw, frames) =
                bare.get_or_insert_with(|| bare_decode(&stream, pixel_format(info.format())));
            assert_eq!(frames.len(), count);
            assert_same_picture(
                s.buffer().unwrap(),
                &info,
                raw,
                &frames[i],
                &format!("{name} frame {i}"),
            );
        });
        assert_eq!(samples, count, "{name}: N frames in, N out");
        let dec = pipeline.by_name("dec").unwrap();
        let st = stats(&dec);
        assert_eq!(stat(&st, "frames-in"), count as u64, "{name}: {st}");
        assert_eq!(stat(&st, "frames-out"), count as u64, "{name}: {st}");
        assert_eq!(
            stat(&st, "bytes-copied"),
            stream.len() as u64,
            "{name}: {st}"
        );
        assert_eq!(stat(&st, "frame-copies"), 0, "{name}: {st}");
        assert_eq!(stat(&st, "coherency-violations"), 0, "{name}: {st}");
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

/// A harness around `vpufwhtdec` whose sink takes GstVideoMeta (as any
/// zero-copy consumer does).
fn harness() -> Harness {
    init();
    let mut h = Harness::new("vpufwhtdec");
    h.add_propose_allocation_meta(gst_video::VideoMeta::meta_api(), None);
    h.set_src_caps(gst::Caps::builder("video/x-fwht").build());
    h.play();
    h
}

const FRAME_NS: u64 = 33_333_333;

/// What the tests look at in an output buffer (kept instead of the buffer:
/// it is a CAPTURE buffer the decoder needs back).
#[derive(Debug)]
struct Out {
    /// Frame index from the PTS; `u64::MAX` without one.
    pts: u64,
    ours: bool,
    meta: bool,
    memories: usize,
}

/// Takes every buffer the harness holds.
fn collect(h: &mut Harness, out: &mut Vec<Out>) {
    while let Some(b) = h.try_pull() {
        out.push(Out {
            pts: b.pts().map_or(u64::MAX, |t| t.nseconds() / FRAME_NS),
            ours: gstrsvpu::allocator::region(b.peek_memory(0)).is_some(),
            meta: b.meta::<gst_video::VideoMeta>().is_some(),
            memories: b.n_memory(),
        });
    }
}

fn push_frame(h: &mut Harness, data: &[u8], i: u64) {
    let mut b = gst::Buffer::from_slice(data.to_vec());
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(i * FRAME_NS));
        b.set_duration(gst::ClockTime::from_nseconds(FRAME_NS));
    }
    assert_eq!(h.push(b), Ok(gst::FlowSuccess::Ok));
}

/// Pushes `frames` (numbered from `first`), taking the output as it comes.
fn push_frames(h: &mut Harness, frames: &[Vec<u8>], first: u64, out: &mut Vec<Out>) {
    for (i, f) in frames.iter().enumerate() {
        push_frame(h, f, first + i as u64);
        collect(h, out);
    }
}

fn eos(h: &mut Harness, out: &mut Vec<Out>) {
    assert!(h.push_event(gst::event::Eos::new()));
    collect(h, out);
}

fn pts(out: &[Out]) -> Vec<u64> {
    out.iter().map(|o| o.pts).collect()
}

#[test]
fn timestamps_survive_and_frames_are_the_vpus_own_memory() {
    for name in ["i420_640x480_gop4.fwht", "nv12_650x370.fwht"] {
        let stream = std::fs::read(data(name)).unwrap();
        let coded = frames(&stream);
        let mut h = harness();
        let mut out = Vec::new();
        push_frames(&mut h, &coded, 0, &mut out);
        eos(&mut h, &mut out);
        assert_eq!(
            pts(&out),
            (0..coded.len() as u64).collect::<Vec<_>>(),
            "{name}"
        );
        for o in &out {
            assert_eq!(o.memories, 1);
            assert!(o.ours, "{name}: downstream gets the VPU's own memory");
            assert!(o.meta);
        }
        let st = stats(&h.element().unwrap());
        assert_eq!(stat(&st, "frame-copies"), 0, "{st}");
        assert_eq!(stat(&st, "coherency-violations"), 0, "{st}");
        assert_eq!(stat(&st, "frames-out"), coded.len() as u64, "{st}");
    }
}

#[test]
fn decodebin_and_playbin_pick_vpufwhtdec() {
    init();
    let path = data("i420_640x480_gop4.fwht");
    let pipeline = launch(&format!(
        "filesrc location={} ! decodebin name=db ! appsink name=sink sync=false",
        path.display()
    ));
    // gst-launch syntax links decodebin's pad to the sink once it exists.
    let db = pipeline.by_name("db").unwrap();
    let samples = run_to_eos(&pipeline, |_, _| {});
    assert_eq!(samples, 6);
    let bin = db.downcast::<gst::Bin>().unwrap();
    let found = bin.iterate_recurse().into_iter().any(|e| {
        e.unwrap()
            .factory()
            .is_some_and(|f| f.name() == "vpufwhtdec")
    });
    assert!(found, "decodebin chose vpufwhtdec");
    pipeline.set_state(gst::State::Null).unwrap();

    let uri = format!("file://{}", path.display());
    let playbin = gst::ElementFactory::make("playbin").build().unwrap();
    let appsink = gst::ElementFactory::make("appsink")
        .property("sync", false)
        .build()
        .unwrap();
    playbin.set_property("uri", &uri);
    playbin.set_property("video-sink", &appsink);
    let pipeline = playbin.downcast::<gst::Pipeline>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut n = 0;
    while try_pull_sample(&appsink).is_some() {
        n += 1;
    }
    assert!(appsink.property::<bool>("eos"));
    assert_eq!(n, 6, "playbin plays every frame");
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn eos_after_zero_one_and_two_frames() {
    let stream = std::fs::read(data("i420_640x480_gop4.fwht")).unwrap();
    let coded = frames(&stream);
    for n in 0..=2 {
        let mut h = harness();
        let mut out = Vec::new();
        push_frames(&mut h, &coded[..n], 0, &mut out);
        eos(&mut h, &mut out);
        assert_eq!(pts(&out), (0..n as u64).collect::<Vec<_>>(), "{n} frames");
        assert!(h.pull_event().is_ok());
    }
}

#[test]
fn a_corrupt_frame_is_dropped_and_decoding_resumes_at_the_next_key_frame() {
    let stream = std::fs::read(data("i420_640x480_gop4.fwht")).unwrap();
    let mut coded = frames(&stream);
    for b in coded[1][44..].iter_mut() {
        *b = 0xff;
    }
    let mut h = harness();
    let mut out = Vec::new();
    push_frames(&mut h, &coded, 0, &mut out);
    eos(&mut h, &mut out);
    // Frame 1 is corrupt; 2 and 3 predict from it; 4 is the next key frame.
    assert_eq!(pts(&out), vec![0, 4, 5]);
    let st = stats(&h.element().unwrap());
    assert_eq!(stat(&st, "frames-in"), 6, "{st}");
    assert_eq!(stat(&st, "frames-out"), 3, "{st}");
}

#[test]
fn unframed_input_with_garbage_and_a_truncated_last_frame() {
    let stream = std::fs::read(data("i420_640x480_gop4.fwht")).unwrap();
    let coded = frames(&stream);
    // Garbage before the first header, arbitrary chunks, last frame cut.
    let mut bytes = vec![0x11u8; 1000];
    bytes.extend_from_slice(&stream[..stream.len() - coded[5].len() / 2]);
    let mut h = harness();
    let mut out = Vec::new();
    for (i, chunk) in bytes.chunks(4096).enumerate() {
        let mut b = gst::Buffer::from_slice(chunk.to_vec());
        if i == 0 {
            b.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
        }
        assert_eq!(h.push(b), Ok(gst::FlowSuccess::Ok));
        collect(&mut h, &mut out);
    }
    eos(&mut h, &mut out);
    assert_eq!(
        out.len(),
        5,
        "every whole frame decodes; the cut one is dropped"
    );
    let st = stats(&h.element().unwrap());
    assert_eq!(stat(&st, "frames-in"), 6, "{st}");
    assert_eq!(stat(&st, "frames-out"), 5, "{st}");
}

#[test]
fn flush_seek_in_the_middle_restarts_at_a_key_frame() {
    let stream = std::fs::read(data("i420_640x480_gop4.fwht")).unwrap();
    let coded = frames(&stream);
    let mut h = harness();
    let mut before = Vec::new();
    push_frames(&mut h, &coded[..3], 0, &mut before);
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(false)));
    collect(&mut h, &mut before);
    assert!(pts(&before).iter().all(|&t| t < 3), "{before:?}");
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    // A P-frame first (rejected quietly), then the key frame at 4.
    let mut after = Vec::new();
    push_frames(&mut h, &coded[3..], 3, &mut after);
    eos(&mut h, &mut after);
    assert_eq!(pts(&after), vec![4, 5]);
}

#[test]
fn several_decoders_run_at_once() {
    init();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (name, count) = VECTORS[i % VECTORS.len()];
            std::thread::spawn(move || {
                let pipeline = launch(&format!(
                    "filesrc location={} ! vpufwhtdec ! appsink name=sink sync=false",
                    data(name).display()
                ));
                let n = run_to_eos(&pipeline, |_, _| {});
                pipeline.set_state(gst::State::Null).unwrap();
                assert_eq!(n, count, "{name}");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("decoder thread");
    }
}

#[test]
fn a_bad_device_fails_to_start_with_a_clear_error() {
    init();
    let pipeline = launch(&format!(
        "filesrc location={} ! vpufwhtdec device=/dev/video99 ! fakesink",
        data("i420_640x480_gop4.fwht").display()
    ));
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error message");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    pipeline.set_state(gst::State::Null).unwrap();
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(text.contains("/dev/video99"), "{text}");
}

#[test]
fn the_decode_fwht_example_runs() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/decode-fwht.sh");
    let plugin_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug");
    assert!(
        plugin_dir.join("libgstrsvpu.so").exists(),
        "run `cargo build` first: the example loads target/debug/libgstrsvpu.so"
    );
    let out = std::process::Command::new("sh")
        .arg(&script)
        .env("GST_PLUGIN_PATH", &plugin_dir)
        .output()
        .expect("run the example");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
