//! `videotestsrc ! vpufwhtenc ! vpufwhtdec` round trips in every raw format
//! the elements take, at an even and an odd size: frame count, timestamps and
//! pixel content against the source (FWHT is lossy: a PSNR floor per format
//! family), with the coherency checker on and no violation.

use std::sync::{Arc, Mutex, OnceLock};

use gst::prelude::*;
use gst_video::prelude::*;

fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().expect("GStreamer initialises");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
        for e in ["vpufwhtenc", "vpufwhtdec"] {
            assert!(gst::ElementFactory::find(e).is_some(), "{e} is registered");
        }
    });
}

/// The visible pixels of one frame, plane by plane, without padding.
fn visible(buffer: &gst::Buffer, caps: &gst::Caps) -> Vec<Vec<u8>> {
    let info = gst_video::VideoInfo::from_caps(caps).expect("raw caps");
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info)
        .expect("mappable frame");
    let finfo = info.format_info();
    (0..info.n_planes())
        .map(|p| {
            let data = frame.plane_data(p).expect("plane");
            let stride = frame.plane_stride()[p as usize] as usize;
            // Bytes per row of the visible area of this plane.
            let comp = (0..finfo.n_components())
                .find(|&c| finfo.plane()[c as usize] == p)
                .expect("a component in every plane");
            let rows = finfo.scale_height(comp as u8, info.height()) as usize;
            let width = finfo.scale_width(comp as u8, info.width()) as usize;
            let bytes = match info.format() {
                gst_video::VideoFormat::Yuy2 | gst_video::VideoFormat::Uyvy => {
                    info.width().div_ceil(2) as usize * 4
                }
                _ => width * finfo.pixel_stride()[comp as usize] as usize,
            };
            (0..rows)
                .flat_map(|r| data[r * stride..r * stride + bytes].iter().copied())
                .collect()
        })
        .collect()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    gstrsvpu::vpu::codec::fwht::psnr(a, b)
}

/// What a sink received: per frame, its timestamp and visible planes. The
/// buffers themselves are released at once, as a display would.
struct Taken {
    frames: Vec<(Option<gst::ClockTime>, Vec<Vec<u8>>)>,
}

fn tap(pipeline: &gst::Pipeline, name: &str) -> Arc<Mutex<Taken>> {
    let taken = Arc::new(Mutex::new(Taken { frames: Vec::new() }));
    let sink = pipeline.by_name(name).expect("sink");
    sink.set_property("sync", false);
    sink.set_property("signal-handoffs", true);
    let t = taken.clone();
    sink.connect("handoff", false, move |args| {
        let buffer = args[1].get::<gst::Buffer>().expect("buffer");
        let pad = args[2].get::<gst::Pad>().expect("pad");
        let caps = pad.current_caps().expect("negotiated");
        let planes = visible(&buffer, &caps);
        t.lock().expect("lock").frames.push((buffer.pts(), planes));
        None
    });
    taken
}

/// Runs the round trip; returns (source frames, decoded frames, decoder stats).
fn round_trip(
    format: &str,
    width: u32,
    height: u32,
    frames: u32,
    qp: u32,
) -> (Taken, Taken, gst::Structure) {
    init();
    let desc = format!(
        "videotestsrc num-buffers={frames} pattern=ball \
         ! video/x-raw,format={format},width={width},height={height},framerate=30/1 \
         ! tee name=t \
         t. ! queue ! fakesink name=src \
         t. ! queue ! vpufwhtenc gop-size=4 i-frame-qp={qp} p-frame-qp={qp} \
            ! vpufwhtdec name=dec ! video/x-raw,format={format} ! fakesink name=out"
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let src = tap(&pipeline, "src");
    let out = tap(&pipeline, "out");
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let bus = pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap_or_else(|| panic!("{desc}: no EOS within 30 s"));
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{format} {width}x{height}: {} ({:?})", e.error(), e.debug());
    }
    let stats = pipeline
        .by_name("dec")
        .expect("dec")
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).expect("NULL");
    let take = |t: Arc<Mutex<Taken>>| {
        std::mem::replace(&mut *t.lock().expect("lock"), Taken { frames: Vec::new() })
    };
    (take(src), take(out), stats)
}

/// Worst PSNR over all frames and planes; checks count and timestamps.
fn check(format: &str, width: u32, height: u32, qp: u32) -> f64 {
    let n = 6;
    let (src, out, stats) = round_trip(format, width, height, n, qp);
    let what = format!("{format} {width}x{height} qp {qp}");
    assert_eq!(src.frames.len(), n as usize, "{what}: source frames");
    assert_eq!(
        out.frames.len(),
        n as usize,
        "{what}: N frames in, N frames out"
    );
    let mut worst = f64::INFINITY;
    for (i, ((sp, a), (op, b))) in src.frames.iter().zip(&out.frames).enumerate() {
        assert_eq!(op, sp, "{what}: frame {i} keeps its timestamp");
        assert_eq!(a.len(), b.len(), "{what}: plane count");
        for (pa, pb) in a.iter().zip(b) {
            assert_eq!(pa.len(), pb.len(), "{what}: plane size");
            worst = worst.min(psnr(pa, pb));
        }
    }
    assert_eq!(
        stats.get::<u64>("coherency-violations").ok(),
        Some(0),
        "{what}: {stats}"
    );
    worst
}

/// Every format both elements take, with its PSNR floor at the default
/// quantiser (20) on videotestsrc's ball. Measured worst cases: 47.9 dB
/// (planar and semi-planar YUV, GRAY8), 50.9 dB (packed 4:2:2), 48.7 dB
/// (24-bit RGB), 49.9 dB (32-bit RGB).
const FORMATS: &[(&str, f64)] = &[
    ("I420", 45.0),
    ("YV12", 45.0),
    ("NV12", 45.0),
    ("NV21", 45.0),
    ("Y42B", 45.0),
    ("NV16", 45.0),
    ("YUY2", 45.0),
    ("UYVY", 45.0),
    ("GRAY8", 45.0),
    ("RGB", 45.0),
    ("BGR", 45.0),
    ("BGRx", 45.0),
    ("xRGB", 45.0),
    ("RGBx", 45.0),
    ("xBGR", 45.0),
];

#[test]
fn every_format_round_trips_above_its_psnr_floor() {
    for &(format, floor) in FORMATS {
        for (w, h) in [(320, 240), (322, 242)] {
            let p = check(format, w, h, 20);
            assert!(
                p >= floor,
                "{format} {w}x{h}: worst PSNR {p:.1} dB below {floor} dB"
            );
        }
    }
}

#[test]
fn the_finest_quantiser_is_near_lossless() {
    // QP 1 keeps every coefficient at full precision: what remains is the
    // transform's rounding, far below visible error (measured: 55.4 dB YUV
    // and GRAY8, 56.7 dB RGB). FWHT has no lossless mode, so there is no
    // exact-match case to assert.
    for format in ["I420", "RGB", "GRAY8"] {
        let p = check(format, 320, 240, 1);
        assert!(p >= 52.0, "{format}: worst PSNR {p:.1} dB at QP 1");
    }
}

#[test]
fn each_element_reports_one_frame_of_latency_in_live_pipelines() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
         ! vpufwhtenc ! vpufwhtdec ! fakesink name=sink",
    )
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    res.expect("reaches PLAYING");
    // Let a few frames through so both elements know their frame rate.
    std::thread::sleep(std::time::Duration::from_millis(300));
    if let Some(msg) = pipeline
        .bus()
        .expect("bus")
        .pop_filtered(&[gst::MessageType::Error])
    {
        panic!("{msg:?}");
    }
    // The query the sink sends upstream to learn the pipeline's latency.
    let sink_pad = pipeline
        .by_name("sink")
        .expect("sink")
        .static_pad("sink")
        .expect("pad");
    let mut q = gst::query::Latency::new();
    assert!(sink_pad.peer_query(&mut q), "latency query answered");
    let (live, min, _max) = q.result();
    pipeline.set_state(gst::State::Null).expect("NULL");
    assert!(live, "a live source");
    // One 1/30 s frame for the live source, one for the encoder and one for
    // the decoder (measured: 99.99 ms; 66.67 ms if the decoder reports none).
    let frame = gst::ClockTime::SECOND
        .mul_div_floor(1, 30)
        .expect("frame duration");
    assert!(
        min >= frame * 3,
        "pipeline latency {min} covers the source and both elements"
    );
}
