//! `vpuh264dec` on the emulated VPU against real peers: x264enc streams
//! (Constrained Baseline, Main and High with B-frames, and an odd size that
//! needs cropping) decode to exactly `avdec_h264`'s pictures with the same
//! timestamps; mp4 through qtdemux/h264parse; decodebin and playbin pick it;
//! refused profiles; corrupt and truncated input; EOS after 0, 1 and 2
//! frames; a mid-stream resolution change; a flushing seek.

use std::path::{Path, PathBuf};

use gst::glib;
use gst::glib::translate::IntoGlib;
use gst::prelude::*;
use gst_video::prelude::*;

#[path = "vpufwhtdec_support/mod.rs"]
mod vpufwhtdec_support;
use vpufwhtdec_support::{assert_eos, assert_no_error, init, launch, stat, stats, try_pull_sample};

/// A coded stream kept in memory: its caps and access units (with their
/// timestamps), as x264enc made them.
struct Coded {
    caps: gst::Caps,
    units: Vec<gst::Buffer>,
}

fn push(src: &gst::Element, buffer: gst::Buffer) {
    let ret = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
    assert_eq!(ret, gst::FlowReturn::Ok);
}

fn end_of_stream(src: &gst::Element) {
    let ret = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    assert_eq!(ret, gst::FlowReturn::Ok);
}

/// Encodes `frames` frames of a moving pattern with x264enc.
fn encode(profile: &str, width: u32, height: u32, frames: u32, extra: &str) -> Coded {
    encode_format("I420", profile, width, height, frames, extra)
}

fn encode_format(
    format: &str,
    profile: &str,
    width: u32,
    height: u32,
    frames: u32,
    extra: &str,
) -> Coded {
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball animation-mode=frames ! \
         video/x-raw,format={format},width={width},height={height},framerate=30/1 ! \
         x264enc {extra} ! video/x-h264,profile={profile},stream-format=byte-stream,alignment=au ! \
         appsink name=sink sync=false"
    ));
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut caps = None;
    let mut units = Vec::new();
    while let Some(s) = try_pull_sample(&sink) {
        caps.get_or_insert_with(|| s.caps().unwrap().to_owned());
        units.push(s.buffer().unwrap().copy());
    }
    assert_no_error(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    let caps = caps.unwrap_or_else(|| {
        gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build()
    });
    Coded { caps, units }
}

/// One decoded picture: timestamp and the visible planes, row by row.
#[derive(PartialEq, Eq)]
struct Picture {
    pts: Option<gst::ClockTime>,
    width: u32,
    height: u32,
    planes: Vec<u8>,
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{} at {:?} ({} bytes)",
            self.width,
            self.height,
            self.pts,
            self.planes.len()
        )
    }
}

fn picture(sample: &gst::Sample) -> Picture {
    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    assert_eq!(info.format(), gst_video::VideoFormat::I420);
    let buffer = sample.buffer().unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).unwrap();
    let mut planes = Vec::new();
    for p in 0..3 {
        let (w, h) = if p == 0 {
            (info.width() as usize, info.height() as usize)
        } else {
            (
                info.width().div_ceil(2) as usize,
                info.height().div_ceil(2) as usize,
            )
        };
        let stride = frame.plane_stride()[p as usize] as usize;
        let data = frame.plane_data(p).unwrap();
        for r in 0..h {
            planes.extend_from_slice(&data[r * stride..r * stride + w]);
        }
    }
    Picture {
        pts: buffer.pts(),
        width: info.width(),
        height: info.height(),
        planes,
    }
}

/// Runs `chain` fed by an appsrc holding `coded` until EOS or an error;
/// returns the pictures and the pipeline (for its bus and elements).
fn try_decode(coded: &Coded, chain: &str) -> (Vec<Picture>, gst::Pipeline) {
    let pipeline = launch(&format!(
        "appsrc name=src format=time ! {chain} ! video/x-raw,format=I420 ! \
         appsink name=sink sync=false"
    ));
    let src = pipeline.by_name("src").unwrap();
    src.set_property("caps", &coded.caps);
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for b in &coded.units {
        // Refused once the pipeline failed: what it did is checked below.
        let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[b]);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let mut pictures = Vec::new();
    while let Some(s) = try_pull_sample(&sink) {
        pictures.push(picture(&s));
    }
    (pictures, pipeline)
}

/// [`try_decode`], which must reach EOS.
fn decode_with(coded: &Coded, chain: &str) -> (Vec<Picture>, gst::Pipeline) {
    let (pictures, pipeline) = try_decode(coded, chain);
    let sink = pipeline.by_name("sink").unwrap();
    assert_no_error(&pipeline);
    assert!(
        sink.property::<bool>("eos"),
        "{chain}: the pipeline must reach EOS"
    );
    (pictures, pipeline)
}

fn assert_same_as_avdec(coded: &Coded, what: &str) -> gst::Pipeline {
    let (reference, p) = decode_with(coded, "h264parse ! avdec_h264");
    assert_no_error(&p);
    p.set_state(gst::State::Null).unwrap();
    let (ours, pipeline) = decode_with(coded, "h264parse ! vpuh264dec name=dec");
    assert_no_error(&pipeline);
    assert_eq!(
        reference.len(),
        coded.units.len(),
        "{what}: avdec_h264 decodes every frame"
    );
    assert_eq!(ours.len(), reference.len(), "{what}: frame count");
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(a.pts, b.pts, "{what}: timestamp of frame {i}");
        assert!(
            a == b,
            "{what}: frame {i} differs from avdec_h264's: {a:?} vs {b:?}"
        );
    }
    // Presentation order: timestamps strictly increase.
    assert!(ours.windows(2).all(|w| w[0].pts < w[1].pts), "{what}");
    pipeline
}

#[test]
fn x264_profiles_decode_exactly_as_avdec_h264() {
    init();
    for (profile, w, h, extra) in [
        ("constrained-baseline", 320, 240, ""),
        ("main", 320, 240, "bframes=2 key-int-max=12"),
        ("high", 320, 240, "bframes=3 b-adapt=false key-int-max=15"),
        // Not a multiple of 16: the SPS crops 336x256 to 330x250.
        ("high", 330, 250, "bframes=2"),
    ] {
        let coded = encode(profile, w, h, 30, extra);
        assert_eq!(coded.units.len(), 30);
        let what = format!("{profile} {w}x{h}");
        let pipeline = assert_same_as_avdec(&coded, &what);
        let st = stats(&pipeline.by_name("dec").unwrap());
        assert_eq!(stat(&st, "frames-in"), 30, "{what}: {st}");
        assert_eq!(stat(&st, "frames-out"), 30, "{what}: {st}");
        assert_eq!(stat(&st, "decode-errors"), 0, "{what}: {st}");
        if w % 16 == 0 && h % 16 == 0 {
            // GStreamer's default layout: the VPU's memory goes out as is
            // even to this appsink, which takes no GstVideoMeta. (At the
            // odd size the VPU's padded strides need the meta or a copy.)
            assert_eq!(stat(&st, "frame-copies"), 0, "{what}: zero-copy: {st}");
        }
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

/// The decoder's CAPTURE buffers are persistent (plugins/decoder/pool.rs):
/// over a reordered High stream longer than the CAPTURE allocation, the
/// frames come in as the same few memories again, at most one per CAPTURE
/// buffer, and still decode exactly as avdec_h264 (checked by
/// [`assert_same_as_avdec`] on the same stream).
#[test]
fn capture_buffers_are_reused_frame_after_frame() {
    init();
    let coded = encode("high", 320, 240, 60, "bframes=2 key-int-max=30");
    assert_same_as_avdec(&coded, "high 320x240, 60 frames")
        .set_state(gst::State::Null)
        .unwrap();
    let pipeline = launch(
        "appsrc name=src format=time ! h264parse ! vpuh264dec name=dec device=emu \
         ! video/x-raw,format=I420 ! appsink name=sink sync=false",
    );
    let src = pipeline.by_name("src").unwrap();
    src.set_property("caps", &coded.caps);
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for b in &coded.units {
        assert_eq!(
            src.emit_by_name::<gst::FlowReturn>("push-buffer", &[b]),
            gst::FlowReturn::Ok
        );
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    // A per-memory cache, as kmssink keeps its framebuffers: qdata on the
    // GstMemory, which a memory made anew for each frame never carries.
    let seen = glib::Quark::from_str("vpuh264dec-test-seen");
    let (mut frames, mut fresh) = (0, 0);
    while let Some(sample) = try_pull_sample(&sink) {
        let memory = sample.buffer().unwrap().peek_memory(0).as_mut_ptr();
        // SAFETY: the sample holds the buffer and its memory; qdata is set
        // and read with GStreamer's own mini-object calls.
        unsafe {
            let object = memory as *mut gst::ffi::GstMiniObject;
            if gst::ffi::gst_mini_object_get_qdata(object, seen.into_glib()).is_null() {
                fresh += 1;
                gst::ffi::gst_mini_object_set_qdata(
                    object,
                    seen.into_glib(),
                    1usize as glib::ffi::gpointer,
                    None,
                );
            }
        }
        frames += 1;
    }
    assert_no_error(&pipeline);
    let st = stats(&pipeline.by_name("dec").unwrap());
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(frames, 60, "{st}");
    let capture = stat(&st, "capture-buffers");
    assert!(
        fresh <= capture && fresh < 60,
        "{fresh} memories seen for the first time in 60 frames, {capture} CAPTURE buffers: {st}"
    );
    assert_eq!(stat(&st, "frame-copies"), 0, "{st}");
}

fn temp_file(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("vpuh264dec-{}-{name}", std::process::id()))
}

/// An mp4 (x264enc ! mp4mux) of `frames` frames.
fn mp4(name: &str, frames: u32) -> PathBuf {
    let path = temp_file(name);
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! \
         video/x-raw,width=320,height=240,framerate=30/1 ! x264enc bframes=2 ! \
         video/x-h264,profile=high ! h264parse ! mp4mux ! filesink location={}",
        path.display()
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    assert_eos(&pipeline, 60, "x264enc ! mp4mux");
    pipeline.set_state(gst::State::Null).unwrap();
    path
}

/// Decodes a file with `decoder` (an element chain ending in raw video).
fn decode_file(path: &Path, decoder: &str) -> (Vec<Picture>, gst::Pipeline) {
    let pipeline = launch(&format!(
        "filesrc location={} ! {decoder} ! videoconvert ! video/x-raw,format=I420 ! \
         appsink name=sink sync=false",
        path.display()
    ));
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut pictures = Vec::new();
    while let Some(s) = try_pull_sample(&sink) {
        pictures.push(picture(&s));
    }
    assert!(sink.property::<bool>("eos"), "{decoder}: EOS");
    assert_no_error(&pipeline);
    (pictures, pipeline)
}

fn contains_factory(bin: &gst::Bin, factory: &str) -> bool {
    bin.iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .any(|e| e.factory().is_some_and(|f| f.name() == factory))
}

#[test]
fn mp4_through_qtdemux_and_decodebin_picks_vpuh264dec() {
    init();
    let path = mp4("clip.mp4", 30);
    let (reference, p) = decode_file(&path, "qtdemux ! h264parse ! avdec_h264");
    p.set_state(gst::State::Null).unwrap();
    let (ours, p) = decode_file(&path, "qtdemux ! h264parse ! vpuh264dec");
    p.set_state(gst::State::Null).unwrap();
    assert_eq!(reference.len(), 30);
    assert_eq!(ours, reference, "qtdemux ! h264parse ! vpuh264dec");

    let (auto, p) = decode_file(&path, "decodebin");
    assert!(
        contains_factory(p.upcast_ref(), "vpuh264dec"),
        "decodebin must pick vpuh264dec (rank PRIMARY + 2)"
    );
    assert!(!contains_factory(p.upcast_ref(), "avdec_h264"));
    assert_eq!(auto, reference, "decodebin");
    p.set_state(gst::State::Null).unwrap();

    let playbin = gst::ElementFactory::make("playbin")
        .property("uri", format!("file://{}", path.display()))
        .property(
            "video-sink",
            gst::ElementFactory::make("fakesink").build().unwrap(),
        )
        .property(
            "audio-sink",
            gst::ElementFactory::make("fakesink").build().unwrap(),
        )
        .build()
        .unwrap();
    playbin.set_state(gst::State::Playing).unwrap();
    assert_eos(&playbin, 60, "playbin");
    assert!(
        contains_factory(playbin.downcast_ref::<gst::Bin>().unwrap(), "vpuh264dec"),
        "playbin must pick vpuh264dec"
    );
    playbin.set_state(gst::State::Null).unwrap();
    let _ = std::fs::remove_file(path);
}

#[test]
fn profiles_it_cannot_decode_exactly_are_refused_at_caps_time() {
    init();
    let dec = gst::ElementFactory::make("vpuh264dec").build().unwrap();
    let sink = dec.static_pad("sink").unwrap();
    let caps = |profile: &str| {
        gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .field("profile", profile)
            .build()
    };
    for ok in ["constrained-baseline", "baseline", "main", "high"] {
        assert!(sink.query_accept_caps(&caps(ok)), "{ok}");
    }
    for refused in ["high-10", "high-4:2:2", "high-4:4:4", "extended"] {
        assert!(!sink.query_accept_caps(&caps(refused)), "{refused}");
    }
    assert!(
        !sink.query_accept_caps(
            &gst::Caps::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .build()
        )
    );

    // Real 4:2:2 and 10-bit streams: negotiation fails with a message, and
    // decodebin falls through to avdec_h264.
    for (format, profile) in [("Y42B", "high-4:2:2"), ("I420_10LE", "high-10")] {
        let coded = encode_format(format, profile, 320, 240, 5, "");
        let (pictures, pipeline) = try_decode(&coded, "h264parse ! vpuh264dec");
        assert!(pictures.is_empty(), "{profile}: nothing decoded");
        let msg = pipeline
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error])
            .unwrap_or_else(|| panic!("{profile}: an error"));
        let gst::MessageView::Error(e) = msg.view() else {
            unreachable!()
        };
        let text = format!("{} {:?}", e.error(), e.debug());
        assert!(text.contains("negotiat"), "{profile}: {text}");
        pipeline.set_state(gst::State::Null).unwrap();

        let pipeline = launch("appsrc name=src format=time ! decodebin ! fakesink name=sink");
        let src = pipeline.by_name("src").unwrap();
        src.set_property("caps", &coded.caps);
        pipeline.set_state(gst::State::Playing).unwrap();
        for b in &coded.units {
            push(&src, b.clone());
        }
        end_of_stream(&src);
        assert_eos(&pipeline, 30, &format!("{profile} through decodebin"));
        assert!(
            contains_factory(pipeline.upcast_ref(), "avdec_h264"),
            "{profile}"
        );
        assert!(
            !contains_factory(pipeline.upcast_ref(), "vpuh264dec"),
            "{profile}"
        );
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

#[test]
fn corrupt_and_truncated_access_units_are_counted_and_the_stream_goes_on() {
    init();
    let coded = encode("main", 320, 240, 40, "bframes=2 key-int-max=10");
    let mut damaged = Coded {
        caps: coded.caps.clone(),
        units: Vec::new(),
    };
    for (i, b) in coded.units.iter().enumerate() {
        let map = b.map_readable().unwrap();
        let mut data = map.as_slice().to_vec();
        match i {
            // Garbage over the slice data of a P/B picture.
            5 => {
                let n = data.len();
                for (k, byte) in data[n / 3..].iter_mut().enumerate() {
                    *byte = (k as u8).wrapping_mul(37) ^ 0x5a;
                }
            }
            // Truncated to its first third.
            14 => data.truncate(data.len() / 3),
            // Nothing but random bytes.
            23 => data = (0..200u32).map(|k| (k * 7919 % 251) as u8).collect(),
            _ => {}
        }
        let mut nb = gst::Buffer::from_mut_slice(data);
        {
            let nb = nb.get_mut().unwrap();
            nb.set_pts(b.pts());
            nb.set_dts(b.dts());
            nb.set_duration(b.duration());
            nb.set_flags(b.flags());
        }
        damaged.units.push(nb);
    }
    let pipeline = launch(
        "appsrc name=src format=time ! vpuh264dec name=dec max-errors=-1 ! \
         video/x-raw,format=I420 ! appsink name=sink sync=false",
    );
    let src = pipeline.by_name("src").unwrap();
    src.set_property("caps", &damaged.caps);
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for b in &damaged.units {
        push(&src, b.clone());
    }
    end_of_stream(&src);
    let mut out = 0;
    while try_pull_sample(&sink).is_some() {
        out += 1;
    }
    assert!(sink.property::<bool>("eos"), "EOS after damaged input");
    assert_no_error(&pipeline);
    let st = stats(&pipeline.by_name("dec").unwrap());
    assert_eq!(stat(&st, "frames-in"), 40, "{st}");
    // The access unit of random bytes yields no picture: an error, counted.
    // Damaged slices are concealed by libavcodec and their pictures kept,
    // as avdec_h264 does (its default `output-corrupt=true`).
    let errors = stat(&st, "decode-errors");
    assert!(errors >= 1, "decode errors are counted: {st}");
    assert_eq!(
        out as u64 + errors,
        40,
        "every frame is a picture or an error: {st}"
    );
    // The last GOP is intact: decoding resumed.
    assert_eq!(stat(&st, "frames-out"), out as u64);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn eos_after_zero_one_and_two_frames() {
    init();
    for n in [0u32, 1, 2] {
        let pipeline = launch(&format!(
            "videotestsrc num-buffers={n} ! video/x-raw,width=320,height=240,framerate=30/1 ! \
             x264enc bframes=2 ! video/x-h264,profile=high ! h264parse ! vpuh264dec ! \
             appsink name=sink sync=false"
        ));
        let sink = pipeline.by_name("sink").unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let mut out = 0;
        while try_pull_sample(&sink).is_some() {
            out += 1;
        }
        assert!(sink.property::<bool>("eos"), "{n} frames: EOS");
        assert_no_error(&pipeline);
        assert_eq!(out, n, "{n} frames in, {n} out");
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

#[test]
fn resolution_change_mid_stream() {
    init();
    let a = encode("high", 320, 240, 12, "bframes=2");
    let b = encode("high", 176, 144, 12, "bframes=2");
    let pipeline = launch(
        "appsrc name=src format=time ! h264parse ! vpuh264dec ! video/x-raw,format=I420 ! \
         appsink name=sink sync=false",
    );
    let src = pipeline.by_name("src").unwrap();
    src.set_property("caps", &a.caps);
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for u in &a.units {
        push(&src, u.clone());
    }
    let offset = gst::ClockTime::from_mseconds(400);
    src.set_property("caps", &b.caps);
    for u in &b.units {
        let mut u = u.copy();
        {
            let u = u.get_mut().unwrap();
            u.set_pts(u.pts().map(|t| t + offset));
            u.set_dts(u.dts().map(|t| t + offset));
        }
        push(&src, u);
    }
    end_of_stream(&src);
    let mut sizes = Vec::new();
    while let Some(s) = try_pull_sample(&sink) {
        let p = picture(&s);
        sizes.push((p.width, p.height));
    }
    assert!(sink.property::<bool>("eos"));
    assert_no_error(&pipeline);
    let expect: Vec<(u32, u32)> = [(320, 240); 12]
        .into_iter()
        .chain([(176, 144); 12])
        .collect();
    assert_eq!(sizes, expect);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn flushing_seek_restarts_cleanly() {
    init();
    let path = mp4("seek.mp4", 60);
    let (all, p) = decode_file(&path, "qtdemux ! h264parse ! vpuh264dec");
    p.set_state(gst::State::Null).unwrap();
    assert_eq!(all.len(), 60);
    let pipeline = launch(&format!(
        "filesrc location={} ! qtdemux ! h264parse ! vpuh264dec ! appsink name=sink sync=false",
        path.display()
    ));
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    pipeline.state(gst::ClockTime::from_seconds(30)).0.unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for _ in 0..10 {
        assert!(try_pull_sample(&sink).is_some());
    }
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
            gst::ClockTime::from_seconds(1),
        )
        .unwrap();
    let mut after = Vec::new();
    while let Some(s) = try_pull_sample(&sink) {
        after.push(s.buffer().unwrap().pts().unwrap());
    }
    assert!(sink.property::<bool>("eos"), "EOS after the seek");
    assert_no_error(&pipeline);
    assert!(!after.is_empty(), "frames after the seek");
    // From the key frame at or before 1 s to the end, every frame once.
    let first = all
        .iter()
        .position(|p| p.pts == Some(after[0]))
        .unwrap_or_else(|| panic!("{:?} is no frame of the stream", after[0]));
    assert!(
        after[0] <= gst::ClockTime::from_seconds(1) + all[2].pts.unwrap(),
        "{after:?}"
    );
    let expect: Vec<gst::ClockTime> = all[first..].iter().filter_map(|p| p.pts).collect();
    assert_eq!(
        after, expect,
        "the stream decodes to its end after the seek"
    );
    pipeline.set_state(gst::State::Null).unwrap();
    let _ = std::fs::remove_file(path);
}

#[test]
fn h264_and_fwht_sessions_share_the_vpu_core() {
    init();
    // One emulated VPU core per process: an H.264 session (B-frames, 720p)
    // and an FWHT encode + decode run on it at the same time, and both
    // finish with every frame.
    let coded = encode("high", 1280, 720, 60, "bframes=2");
    let fwht = launch(
        "videotestsrc num-buffers=60 pattern=ball ! \
         video/x-raw,format=I420,width=640,height=480,framerate=30/1 ! \
         vpufwhtenc ! vpufwhtdec ! appsink name=sink sync=false",
    );
    let fwht_sink = fwht.by_name("sink").unwrap();
    fwht.set_state(gst::State::Playing).unwrap();
    let fwht_frames = std::thread::spawn(move || {
        let mut n = 0;
        while try_pull_sample(&fwht_sink).is_some() {
            n += 1;
        }
        assert!(fwht_sink.property::<bool>("eos"), "FWHT pipeline: EOS");
        n
    });
    let (pictures, h264) = decode_with(&coded, "h264parse ! vpuh264dec");
    assert_eq!(pictures.len(), 60, "H.264 frames");
    assert_eq!(fwht_frames.join().unwrap(), 60, "FWHT frames");
    assert_no_error(&fwht);
    fwht.set_state(gst::State::Null).unwrap();
    h264.set_state(gst::State::Null).unwrap();
}
