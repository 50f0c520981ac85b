//! Helpers shared by the `vpufwhtdec` test binaries (`tests/vpufwhtdec.rs`,
//! `tests/vpufwhtdec_resize.rs`, `tests/vpufwhtdec_dmabuf.rs`,
//! `tests/vpufwhtdec_policy.rs`, `tests/vpufwhtdec_cycles.rs`,
//! `tests/vpufwhtdec_hang.rs`, `tests/vpufwhtdec_pool.rs`): plugin set-up,
//! the test vectors, launching and running pipelines, the bare decoder as the
//! reference and the check of a decoded picture against it.
//!
//! Each test file stays its own binary (several count or fault the
//! process-wide emulated VPU); this module is compiled into each of them.
//! Items that not every binary uses carry `#[allow(dead_code)]`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

use gst::prelude::*;
use gst_video::prelude::*;
use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::vpu::codec::fwht::{FwhtDecoder, parse_header};

/// `gst::init` and the rsvpu plugin, once per process.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    });
}

/// One test at a time, for the binaries whose tests share VPU-wide state
/// (region counts, sync counters, an injected hang).
#[allow(dead_code)] // Only the binaries with such shared state use it.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A file of `tests/data/fwht` (vicodec's vectors).
#[allow(dead_code)] // `vpufwhtdec_resize` makes its own streams.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fwht")
        .join(name)
}

/// Parses `desc` into a pipeline.
pub fn launch(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// [`launch`], with the element named `sink` advertising GstVideoMeta in the
/// ALLOCATION query (as any zero-copy consumer or importer does), so frames
/// arrive as the VPU's own memory whatever its layout.
#[allow(dead_code)] // Only the binaries that check frame layouts use it.
pub fn launch_with_video_meta(desc: &str) -> gst::Pipeline {
    let pipeline = launch(desc);
    pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, |_, info| {
            if let Some(gst::QueryViewMut::Allocation(q)) = info.query_mut().map(|q| q.view_mut()) {
                q.add_allocation_meta::<gst_video::VideoMeta>(None);
            }
            gst::PadProbeReturn::Ok
        });
    pipeline
}

/// appsink's `try-pull-sample` action signal, 10 s timeout.
#[allow(dead_code)] // Only the binaries with an appsink use it.
pub fn try_pull_sample(appsink: &gst::Element) -> Option<gst::Sample> {
    appsink.emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&10_000_000_000u64])
}

/// Panics if `pipeline` posted an error.
#[allow(dead_code)] // Only the binaries with an appsink use it.
pub fn assert_no_error(pipeline: &gst::Pipeline) {
    if let Some(msg) = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Error])
    {
        panic!("pipeline error: {msg:?}");
    }
}

/// Waits up to `seconds` for `pipeline`'s EOS or error message.
#[allow(dead_code)] // Only the binaries that run to a bus message use it.
pub fn eos_or_error(pipeline: &gst::Pipeline, seconds: u64) -> Option<gst::Message> {
    pipeline.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(seconds),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    )
}

/// Waits up to `seconds` for `element`'s (a pipeline's) EOS; an error or
/// no message panics, prefixed with `what`.
#[allow(dead_code)] // Only the binaries that run to EOS use it.
pub fn assert_eos(element: &impl IsA<gst::Element>, seconds: u64, what: &str) {
    let msg = element.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(seconds),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    assert!(
        matches!(
            msg.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{what}: {msg:?}"
    );
}

/// The element's `stats` structure.
#[allow(dead_code)] // Not every binary reads the stats.
pub fn stats(dec: &gst::Element) -> gst::Structure {
    dec.property::<gst::Structure>("stats")
}

/// One `u64` field of the stats.
#[allow(dead_code)] // Not every binary reads the stats.
pub fn stat(s: &gst::Structure, field: &str) -> u64 {
    s.get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats field {field}: {e}"))
}

/// The contract format of a GStreamer raw format the decoder outputs (the
/// elements' table is crate-private; this is the same mapping).
#[allow(dead_code)] // Only the binaries that compare pictures use it.
pub fn pixel_format(f: gst_video::VideoFormat) -> PixelFormat {
    use gst_video::VideoFormat as V;
    match f {
        V::I420 => PixelFormat::I420,
        V::Yv12 => PixelFormat::Yv12,
        V::Nv12 => PixelFormat::Nv12,
        V::Nv21 => PixelFormat::Nv21,
        V::Y42b => PixelFormat::Yuv422p,
        V::Nv16 => PixelFormat::Nv16,
        V::Yuy2 => PixelFormat::Yuyv,
        V::Uyvy => PixelFormat::Uyvy,
        V::Gray8 => PixelFormat::Grey,
        V::Rgb => PixelFormat::Rgb24,
        V::Bgr => PixelFormat::Bgr24,
        V::Bgrx => PixelFormat::Xbgr32,
        V::Xrgb => PixelFormat::Xrgb32,
        V::Rgbx => PixelFormat::Rgbx32,
        V::Xbgr => PixelFormat::Bgrx32,
        other => panic!("the decoder never outputs {other:?}"),
    }
}

/// The stream's frames, cut with the header's size.
#[allow(dead_code)] // Only the binaries that compare pictures use it.
pub fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let size = parse_header(rest).expect("a valid frame").frame_size();
        out.push(rest[..size].to_vec());
        rest = &rest[size..];
    }
    out
}

/// What the bare codec makes of the coded `frames` (in order, one decoder),
/// in the contract layout of `pixfmt` at the first frame's size.
#[allow(dead_code)] // Only the binaries that compare pictures use it.
pub fn bare_frames(frames: &[Vec<u8>], pixfmt: PixelFormat) -> (Format, Vec<Vec<u8>>) {
    let h = parse_header(&frames[0]).unwrap();
    let raw = Format::raw(pixfmt, h.width, h.height).unwrap();
    let mut dec = FwhtDecoder::new();
    let pictures = frames
        .iter()
        .map(|f| {
            let mut dst = vec![0; raw.size];
            dec.decode(f, &raw, &mut dst).unwrap();
            dst
        })
        .collect();
    (raw, pictures)
}

/// What the bare codec makes of the whole `stream`, in the contract layout.
#[allow(dead_code)] // Only the binaries that compare pictures use it.
pub fn bare_decode(stream: &[u8], pixfmt: PixelFormat) -> (Format, Vec<Vec<u8>>) {
    bare_frames(&frames(stream), pixfmt)
}

/// Compares the visible area of `buffer` (laid out per its VideoMeta, or the
/// caps' default) with the bare decoder's picture, plane by plane: every
/// visible row of every plane, each row as wide as the plane's first
/// component times its pixel stride (so a packed plane such as YUY2's is
/// compared whole).
#[allow(dead_code)] // Only the binaries that compare pictures use it.
pub fn assert_same_picture(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    raw: &Format,
    bare: &[u8],
    what: &str,
) {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .unwrap_or_else(|_| panic!("{what}: the buffer does not map as {info:?}"));
    let finfo = info.format_info();
    for plane in 0..info.n_planes() {
        let comp = (0..finfo.n_components())
            .find(|&c| finfo.plane()[c as usize] == plane)
            .unwrap();
        let rows = frame.comp_height(comp) as usize;
        let row_bytes = frame.comp_width(comp) as usize * frame.comp_pstride(comp) as usize;
        let stride = frame.plane_stride()[plane as usize] as usize;
        let data = frame.plane_data(plane).unwrap();
        let p = &raw.planes[plane as usize];
        for y in 0..rows {
            let got = &data[y * stride..y * stride + row_bytes];
            let want = &bare[p.offset + y * p.stride..p.offset + y * p.stride + row_bytes];
            assert!(got == want, "{what}: plane {plane} row {y} differs");
        }
    }
}

/// Waits (bounded, 5 s) for the emulated VPU's mapped-region count to come
/// back to `baseline`, then asserts it did: every region of a stopped
/// pipeline is freed, even while a sink still holds its last frame.
#[allow(dead_code)] // Only the binaries that count regions use it.
pub fn assert_regions_freed(baseline: usize) {
    let vpu = gstrsvpu::emulated_vpu().expect("the emulated VPU");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while vpu.mapped_regions() != baseline && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        vpu.mapped_regions(),
        baseline,
        "every VPU region is freed at NULL"
    );
}
