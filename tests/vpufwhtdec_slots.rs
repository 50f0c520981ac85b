//! `vpufwhtdec`'s CAPTURE buffers are persistent: each CAPTURE slot has one
//! GstBuffer (one GstMemory, one GstVideoMeta) that goes downstream every
//! time the VPU decodes into the slot and comes back to the decoder when
//! downstream drops it (`plugins/decoder/pool.rs`).
//!
//! * over more frames than CAPTURE buffers, each region is always the same
//!   memory in the same buffer, the pictures are still exactly the bare
//!   codec's, and what downstream did to a buffer (a flag, a meta, an
//!   offset, a new size) is undone when the buffer comes back;
//! * a downstream that keeps our memory alive beyond the buffer (a shallow
//!   copy) never sees it overwritten: the slot waits for that memory, and
//!   every VPU region is still freed at NULL.
//!
//! Alone in its test binary, the tests serialised: the last one counts the
//! regions of the process-wide emulated VPU.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gstrsvpu::m2m::Format;

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

/// The 6-frame vicodec clip four times over: 24 frames, each copy starting
/// at a key frame, so frame `i` is the bare codec's picture `i` of the
/// whole stream.
fn clip_file(tag: &str) -> (std::path::PathBuf, Vec<u8>) {
    let clip = std::fs::read(data("i420_640x480_gop4.fwht")).expect("test vector");
    let stream = clip.repeat(4);
    let file = std::env::temp_dir().join(format!(
        "vpufwhtdec-slots-{tag}-{}.fwht",
        std::process::id()
    ));
    std::fs::write(&file, &stream).expect("write clip");
    (file, stream)
}

/// The bare codec's pictures of the stream, in the element's format (made
/// at the first frame, once the format is known).
type Bare = Arc<Mutex<Option<(Format, Vec<Vec<u8>>)>>>;

/// Each frame's picture check: on arrival and, for kept frames, when let go.
type Results = Arc<Mutex<Vec<(usize, Result<(), String>)>>>;

/// What the sink saw of one frame, as it arrived.
#[derive(Debug, Clone)]
struct Seen {
    buffer: usize,
    memory: usize,
    region: usize,
    /// The buffer's size and the region's.
    size: usize,
    region_size: usize,
    /// Left on it by downstream at an earlier use of the buffer.
    marker: bool,
    reference_meta: bool,
    offset_end: u64,
    video_metas: usize,
    pts: Option<gst::ClockTime>,
    writable: bool,
    /// `Err` names the first difference from the bare codec's picture.
    picture: Result<(), String>,
}

/// Compares `buffer` with the bare codec's picture `i` (panics caught).
fn check_picture(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    bare: &(Format, Vec<Vec<u8>>),
    i: usize,
) -> Result<(), String> {
    let Some(picture) = bare.1.get(i) else {
        return Err(format!("frame {i}: more frames than the stream has"));
    };
    catch_unwind(AssertUnwindSafe(|| {
        assert_same_picture(buffer, info, &bare.0, picture, &format!("frame {i}"))
    }))
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| format!("frame {i}: differs"))
    })
}

#[test]
fn each_capture_slot_sends_the_same_buffer_and_nothing_downstream_added_comes_back() {
    let _serial = serial();
    init();
    let (file, stream) = clip_file("same");
    // A frame rate, so that every frame gets a timestamp of its own.
    let pipeline = launch_with_video_meta(&format!(
        "filesrc location={} ! video/x-fwht,width=640,height=480,framerate=30/1 ! vpufwhtdec name=dec \
         ! fakesink name=sink sync=false",
        file.display()
    ));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let bare: Bare = Arc::default();
    {
        let seen = Arc::clone(&seen);
        let pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let caps = pad.current_caps().expect("caps before buffers");
            let vinfo = gst_video::VideoInfo::from_caps(&caps).expect("raw video caps");
            let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data else {
                return gst::PadProbeReturn::Ok;
            };
            let mut seen = seen.lock().unwrap();
            let i = seen.len();
            let mut bare = bare.lock().unwrap();
            let bare =
                bare.get_or_insert_with(|| bare_decode(&stream, pixel_format(vinfo.format())));
            let mem = buffer.peek_memory(0);
            let region = gstrsvpu::allocator::region(mem);
            seen.push(Seen {
                buffer: buffer.as_ptr() as usize,
                memory: mem.as_ptr() as usize,
                region: region.as_ref().map_or(0, |r| Arc::as_ptr(r) as usize),
                size: buffer.size(),
                region_size: region.as_ref().map_or(0, |r| r.size()),
                marker: buffer.flags().contains(gst::BufferFlags::MARKER),
                reference_meta: buffer.meta::<gst::meta::ReferenceTimestampMeta>().is_some(),
                offset_end: buffer.offset_end(),
                video_metas: buffer.iter_meta::<gst_video::VideoMeta>().count(),
                pts: buffer.pts(),
                writable: buffer.is_writable(),
                picture: check_picture(buffer, &vinfo, bare, i),
            });
            // What a downstream element may do to a buffer it owns.
            if buffer.is_writable() {
                let b = buffer.make_mut();
                b.set_flags(gst::BufferFlags::MARKER);
                b.set_offset_end(12345);
                let half = b.size() / 2;
                b.set_size(half);
                gst::meta::ReferenceTimestampMeta::add(
                    b,
                    &gst::Caps::new_empty_simple("timestamp/x-test"),
                    gst::ClockTime::from_seconds(1),
                    None,
                );
            }
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    assert_eos(&pipeline, 30, "24 frames to fakesink");
    let st = stats(&pipeline.by_name("dec").unwrap());
    pipeline.set_state(gst::State::Null).unwrap();
    let _ = std::fs::remove_file(&file);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 24, "N frames in, N out: {st}");
    assert_eq!(stat(&st, "frame-copies"), 0, "{st}");
    assert_eq!(stat(&st, "coherency-violations"), 0, "{st}");
    let capture_buffers = stat(&st, "capture-buffers") as usize;
    assert!(capture_buffers > 0 && capture_buffers < 24, "{st}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.picture, Ok(()), "frame {i}: the bare codec's picture");
        assert_ne!(s.region, 0, "frame {i}: the VPU's own memory");
        assert!(
            !s.marker && !s.reference_meta && s.offset_end != 12345,
            "frame {i}: what downstream added to the buffer before is gone: {s:?}"
        );
        assert_eq!(s.video_metas, 1, "frame {i}: one GstVideoMeta: {s:?}");
        assert_eq!(s.size, s.region_size, "frame {i}: the whole region: {s:?}");
        assert!(s.pts.is_some(), "frame {i}: a timestamp of its own");
    }
    // A buffer usually reaches the sink as its only reference, and the probe
    // then writes to it. Not always: this stream is unframed, and while the
    // decoder parses a frame, gstreamer-rs's `parse` trampoline holds a
    // reference to that frame; when the VPU finishes it before `parse`
    // returns, the frame (and so its output buffer) is still referenced as
    // the buffer is pushed. So count the resets this run really exercised:
    // a buffer written to at one use and seen again later.
    let mut written = HashSet::new();
    let mut resets = 0;
    for s in &seen {
        if written.contains(&s.buffer) {
            resets += 1;
        }
        if s.writable {
            written.insert(s.buffer);
        }
    }
    assert!(
        seen.iter().filter(|s| s.writable).count() >= seen.len() / 2,
        "the sink owns most buffers alone: {seen:?}"
    );
    assert!(
        resets > 0,
        "no buffer came back after downstream wrote to it"
    );
    let pts: Vec<_> = seen.iter().map(|s| s.pts).collect();
    assert!(
        pts.windows(2).all(|w| w[0] < w[1]),
        "timestamps per frame: {pts:?}"
    );
    // One memory and one buffer per region, for the whole allocation.
    let mut by_region: HashMap<usize, HashSet<(usize, usize)>> = HashMap::new();
    for s in &seen {
        by_region
            .entry(s.region)
            .or_default()
            .insert((s.buffer, s.memory));
    }
    for (region, used) in &by_region {
        assert_eq!(
            used.len(),
            1,
            "region {region:#x}: one buffer and memory: {used:?}"
        );
    }
    let memories: HashSet<usize> = seen.iter().map(|s| s.memory).collect();
    assert!(
        memories.len() <= capture_buffers,
        "{} memories for {capture_buffers} CAPTURE buffers",
        memories.len()
    );
    let reused = seen.len() - memories.len();
    assert!(
        reused >= 24 - capture_buffers,
        "{reused} frames in a buffer seen before"
    );
}

#[test]
fn memory_downstream_keeps_beyond_its_buffer_is_never_overwritten() {
    let _serial = serial();
    init();
    let vpu = gstrsvpu::emulated_vpu().expect("the emulated VPU");
    let baseline = vpu.mapped_regions();
    let (file, stream) = clip_file("kept");
    // The sink keeps a shallow copy (sharing the memory) of each of the last
    // KEPT frames after dropping the buffer itself.
    const KEPT: usize = 6;
    let pipeline = launch_with_video_meta(&format!(
        "filesrc location={} ! vpufwhtdec name=dec ! fakesink name=sink sync=false",
        file.display()
    ));
    let kept: Arc<Mutex<VecDeque<(usize, gst::Buffer)>>> = Arc::default();
    let results: Results = Arc::default();
    let count = Arc::new(Mutex::new(0usize));
    let info: Arc<Mutex<Option<gst_video::VideoInfo>>> = Arc::default();
    let bare: Bare = Arc::default();
    {
        let (kept, results, info, bare) = (
            Arc::clone(&kept),
            Arc::clone(&results),
            Arc::clone(&info),
            Arc::clone(&bare),
        );
        let pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, probe| {
            let Some(buffer) = probe.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let caps = pad.current_caps().expect("caps before buffers");
            let vinfo = gst_video::VideoInfo::from_caps(&caps).expect("raw video caps");
            let mut bare = bare.lock().unwrap();
            let bare =
                bare.get_or_insert_with(|| bare_decode(&stream, pixel_format(vinfo.format())));
            let mut n = count.lock().unwrap();
            let i = *n;
            *n += 1;
            let mut results = results.lock().unwrap();
            results.push((i, check_picture(buffer, &vinfo, bare, i)));
            let mut kept = kept.lock().unwrap();
            kept.push_back((i, buffer.copy()));
            if kept.len() > KEPT
                && let Some((j, old)) = kept.pop_front()
            {
                // Frames later, still the picture it was.
                results.push((j, check_picture(&old, &vinfo, bare, j)));
            }
            *info.lock().unwrap() = Some(vinfo);
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    assert_eos(&pipeline, 30, "24 frames, 6 kept");
    let st = stats(&pipeline.by_name("dec").unwrap());
    {
        let vinfo = info.lock().unwrap().clone().expect("frames came");
        let bare = bare.lock().unwrap();
        let bare = bare.as_ref().expect("frames came");
        let mut results = results.lock().unwrap();
        for (j, old) in kept.lock().unwrap().drain(..) {
            results.push((j, check_picture(&old, &vinfo, bare, j)));
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let _ = std::fs::remove_file(&file);

    let results = results.lock().unwrap().clone();
    assert_eq!(
        results.len(),
        48,
        "every frame checked on arrival and when let go"
    );
    for (i, r) in &results {
        assert_eq!(r, &Ok(()), "frame {i}");
    }
    assert_eq!(stat(&st, "frames-out"), 24, "{st}");
    assert_eq!(stat(&st, "frame-copies"), 0, "{st}");
    assert_eq!(stat(&st, "coherency-violations"), 0, "{st}");
    assert_regions_freed(baseline);
}
