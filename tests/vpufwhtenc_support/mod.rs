//! Helpers shared by the `vpufwhtenc` test binaries (`tests/vpufwhtenc.rs`
//! and `tests/vpufwhtenc_simulate.rs`, which also declare
//! `mod pipeline_support;`): running a pipeline to EOS, the
//! contract layout and the bare encoder as references, and the check of an
//! encoded clip against them.

// Each binary uses a part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use gst::prelude::*;
use gst_video::prelude::*;

use crate::pipeline_support::{collect, launch, play_to_eos, stats};
use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::vpu::codec::fwht::{EncoderParams, FwhtEncoder, parse_header};

pub fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().expect("GStreamer initialises");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
        assert!(
            gst::ElementFactory::find("vpufwhtenc").is_some(),
            "vpufwhtenc is registered"
        );
    });
}

/// What the sink received.
pub struct Out {
    pub buffers: Vec<gst::Buffer>,
    pub caps: Option<gst::Caps>,
    pub stats: Option<gst::Structure>,
    /// Distinct VPU regions among the buffers the encoder (`enc`) received.
    pub input_regions: usize,
}

/// Runs `desc` (ending in a `fakesink name=sink`) to EOS and collects what
/// the sink received (no appsink: gstreamer-app is not a dependency).
pub fn run(desc: &str) -> Out {
    init();
    let pipeline = launch(desc);
    let got = collect(&pipeline.by_name("sink").unwrap());
    let regions: Arc<Mutex<HashSet<u64>>> = Arc::default();
    if let Some(enc) = pipeline.by_name("enc") {
        let regions = Arc::clone(&regions);
        enc.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(b) = info.buffer()
                    && b.n_memory() == 1
                    && let Some(r) = gstrsvpu::allocator::region(b.peek_memory(0))
                {
                    regions.lock().unwrap().insert(r.id());
                }
                gst::PadProbeReturn::Ok
            });
    }
    play_to_eos(&pipeline, desc, 30);
    let stats = pipeline.by_name("enc").map(|_| stats(&pipeline, "enc"));
    pipeline.set_state(gst::State::Null).unwrap();
    let (buffers, caps) = std::mem::take(&mut *got.lock().unwrap());
    let input_regions = regions.lock().unwrap().len();
    Out {
        buffers,
        caps,
        stats,
        input_regions,
    }
}

pub fn stat(s: &gst::Structure, name: &str) -> u64 {
    s.get::<u64>(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Lays a raw GStreamer frame out per `raw` with zero padding (independently
/// of the element's own copy).
pub fn contract_layout(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    raw: &Format,
) -> Vec<u8> {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).unwrap();
    let finfo = info.format_info();
    let mut out = vec![0u8; raw.size];
    for (p, layout) in raw.planes.iter().enumerate() {
        let (mut bytes, mut rows) = (0usize, 0usize);
        for c in 0..finfo.n_components() as u8 {
            if finfo.plane()[c as usize] as usize == p {
                bytes = bytes.max(
                    finfo.scale_width(c, info.width()) as usize
                        * finfo.pixel_stride()[c as usize] as usize,
                );
                rows = rows.max(finfo.scale_height(c, info.height()) as usize);
            }
        }
        let src = frame.plane_data(p as u32).unwrap();
        let stride = frame.plane_stride()[p] as usize;
        for r in 0..rows {
            let d = layout.offset + r * layout.stride;
            out[d..d + bytes].copy_from_slice(&src[r * stride..r * stride + bytes]);
        }
    }
    out
}

/// The bare codec on `frames`: (coded bytes, keyframe) per frame.
pub fn bare_encode(
    raw: &Format,
    params: EncoderParams,
    frames: &[Vec<u8>],
) -> Vec<(Vec<u8>, bool)> {
    let mut enc = FwhtEncoder::new(raw, params).unwrap();
    frames
        .iter()
        .map(|f| {
            let mut dst = vec![0; FwhtEncoder::max_frame_size(raw)];
            let e = enc.encode(f, &mut dst).unwrap();
            dst.truncate(e.bytes);
            (dst, e.keyframe)
        })
        .collect()
}

pub fn is_key(b: &gst::BufferRef) -> bool {
    !b.flags().contains(gst::BufferFlags::DELTA_UNIT)
}

pub const CASES: &[(&str, PixelFormat)] = &[
    ("I420", PixelFormat::I420),
    ("NV12", PixelFormat::Nv12),
    ("YUY2", PixelFormat::Yuyv),
    ("GRAY8", PixelFormat::Grey),
    ("RGB", PixelFormat::Rgb24),
    ("BGRx", PixelFormat::Xbgr32),
];

/// How frames reach the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// videotestsrc writes into the pool the encoder proposes: no copy.
    Pool,
    /// `identity drop-allocation=true` hides the pool: videotestsrc writes
    /// system memory and the encoder copies each frame once.
    Copy,
}

impl Route {
    pub fn between(self) -> &'static str {
        match self {
            Route::Pool => "",
            Route::Copy => "identity drop-allocation=true ! ",
        }
    }
}

/// Encodes `n` frames of the ball in `format` at `w`x`h` with gop-size=4 by
/// `route`, and checks the stream byte for byte against the bare encoder on
/// the source's frames, the caps, timestamps and the stats. Returns the stats.
pub fn check_against_bare_encoder(
    (name, pf): (&str, PixelFormat),
    (w, h): (u32, u32),
    n: usize,
    route: Route,
) -> gst::Structure {
    let src = format!(
        "videotestsrc num-buffers={n} pattern=ball ! video/x-raw,format={name},width={w},height={h},framerate=30/1"
    );
    let raw_out = run(&format!("{src} ! fakesink name=sink"));
    let coded = run(&format!(
        "{src} ! {}vpufwhtenc name=enc gop-size=4 ! fakesink name=sink",
        route.between()
    ));
    let what = format!("{name} {w}x{h} {route:?}");
    assert_eq!(raw_out.buffers.len(), n, "{what}: source frames");
    assert_eq!(coded.buffers.len(), n, "{what}: N frames in, N out");

    let caps = coded.caps.unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!(s.name(), "video/x-fwht", "{what}");
    assert_eq!(s.get::<i32>("width").unwrap(), w as i32, "{what}");
    assert_eq!(s.get::<i32>("height").unwrap(), h as i32, "{what}");
    assert_eq!(
        s.get::<gst::Fraction>("framerate").unwrap(),
        gst::Fraction::new(30, 1),
        "{what}"
    );

    let info = gst_video::VideoInfo::from_caps(raw_out.caps.as_ref().unwrap()).unwrap();
    let mut raw = Format::raw(pf, w, h).unwrap();
    // The colorimetry mapping is tested with the format tables; here
    // the header's colour fields come from the element's stream.
    let first = parse_header(&coded.buffers[0].map_readable().unwrap()).unwrap();
    assert_eq!((first.width, first.height), (w, h), "{what}");
    assert_ne!(first.colorimetry.colorspace, 0, "{what}: colorspace is set");
    raw.colorimetry = first.colorimetry;
    let frames: Vec<Vec<u8>> = raw_out
        .buffers
        .iter()
        .map(|b| contract_layout(b, &info, &raw))
        .collect();
    let params = EncoderParams {
        gop_size: 4,
        ..EncoderParams::default()
    };
    let expected = bare_encode(&raw, params, &frames);
    for (i, (b, (data, key))) in coded.buffers.iter().zip(&expected).enumerate() {
        assert_eq!(b.pts(), raw_out.buffers[i].pts(), "{what}: frame {i} pts");
        assert_eq!(
            &b.map_readable().unwrap()[..],
            &data[..],
            "{what}: frame {i} equals the bare encoder"
        );
        assert_eq!(is_key(b), *key, "{what}: frame {i} key flag");
    }
    assert!(is_key(&coded.buffers[0]), "{what}: starts with a key frame");
    assert!(
        expected.iter().any(|(_, k)| !k),
        "{what}: the clip has P frames"
    );

    let stats = coded.stats.unwrap();
    assert_eq!(stat(&stats, "frames-in"), n as u64, "{what}");
    assert_eq!(stat(&stats, "frames-out"), n as u64, "{what}");
    assert_eq!(stat(&stats, "coherency-violations"), 0, "{what}: {stats}");
    match route {
        Route::Pool => {
            assert_eq!(stat(&stats, "frame-copies"), 0, "{what}: {stats}");
            assert_eq!(stat(&stats, "bytes-copied"), 0, "{what}: {stats}");
            assert_eq!(stat(&stats, "imported-frames"), n as u64, "{what}: {stats}");
            // Each pool buffer is mapped into the VPU once: a handful of
            // buffers circulate, far fewer than the frames.
            let maps = stat(&stats, "import-maps");
            assert_eq!(
                maps, coded.input_regions as u64,
                "{what}: one VPU mapping per pool buffer: {stats}"
            );
            assert!(
                (1..=IMPORT_SLOTS).contains(&maps),
                "{what}: {maps} maps for {n} frames: {stats}"
            );
        }
        Route::Copy => {
            assert_eq!(
                stat(&stats, "frame-copies"),
                n as u64,
                "{what}: one copy each"
            );
            assert!(stat(&stats, "bytes-copied") > 0, "{what}");
            assert_eq!(stat(&stats, "imported-frames"), 0, "{what}");
            assert_eq!(stat(&stats, "import-maps"), 0, "{what}");
        }
    }
    stats
}

/// The encoder's import slots (engine.rs): at most this many VPU mappings
/// when the pool's buffers are reused.
pub const IMPORT_SLOTS: u64 = 16;
