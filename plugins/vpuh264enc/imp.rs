//! The `vpuh264enc` element: the shared VPU encoder
//! ([`crate::encoder::EncoderBase`]) with the H.264 descriptor.
//!
//! Negotiation: the output is always `video/x-h264, stream-format=byte-stream,
//! alignment=au` (Annex-B, one access unit per buffer; `h264parse` converts to
//! `avc`). The profile is the first of constrained-baseline, baseline, main,
//! high that downstream accepts (constrained-baseline when it does not care:
//! every decoder takes it); the level is the lowest of those downstream lists
//! that the size and frame rate fit, or, when downstream names none, the
//! lowest that fits (the VPU picks it). What cannot be satisfied is refused in
//! `set_format` with an element error naming what downstream asked and why
//! it does not fit.
//!
//! `low-latency` (default true) chooses between the VPU-like one frame in,
//! one unit out (x264 `tune=zerolatency`, sliced threads) and a throughput
//! mode (`false`: x264 frame threads, as `x264enc`'s default), in which the
//! codec holds a few frames and codes them in parallel. A bool named as the
//! other GStreamer encoders name theirs (the Quick Sync and Media Foundation
//! encoders' `low-latency`, which maps to Media Foundation's
//! `CODECAPI_AVLowLatencyMode`, "one input sample shall produce one output
//! sample"; `nvh264enc` calls it `zerolatency`), rather than x264enc's `tune`
//! flags or thread counts: on a VPU the choice is "hold frames or not", how
//! the codec threads is the VPU's business. Their default is `false`; ours is
//! `true`, the behaviour of a hardware VPU and of this element before the
//! property existed. It is the V4L2-style
//! control [`Control::LowLatency`]; the frames held come back as the
//! session's minimum OUTPUT buffers, which is what the element reports as
//! latency. V4L2 has no such control, so on a kernel node `false` is not
//! applied (a warning says so) and the node codes as its driver does.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::subclass::prelude::*;

use crate::encoder::{Codec, EncoderBase, ExtraControl, encoder_element};
use crate::m2m::{BitrateMode, Control, H264Level, H264Profile, PixelFormat};
use crate::vpu::codec::h264enc::{self, GOP_RANGE, QP_RANGE};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpuh264enc",
        gst::DebugColorFlags::empty(),
        Some("VPU H.264 encoder"),
    )
});

const DEFAULT_BITRATE_KBPS: u32 = 2048;
const DEFAULT_GOP_SIZE: u32 = 30;
const DEFAULT_QP_MIN: u32 = 0;
const DEFAULT_QP_MAX: u32 = 51;
const DEFAULT_QUANTIZER: u32 = 23;
const DEFAULT_LOW_LATENCY: bool = true;
/// Highest `bitrate`, kbit/s (the control carries bit/s in 32 bits).
const MAX_BITRATE_KBPS: u32 = u32::MAX / 1000;

/// The H.264 caps template and output media type.
const MEDIA_TYPE: &str = "video/x-h264";

/// Profiles in the order the element prefers them.
const PROFILE_PREFERENCE: [H264Profile; 4] = [
    H264Profile::ConstrainedBaseline,
    H264Profile::Baseline,
    H264Profile::Main,
    H264Profile::High,
];

/// `rate-control` (V4L2 `BITRATE_MODE`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVpuH264EncRateControl")]
pub enum RateControl {
    #[enum_value(
        name = "Constant bitrate: bitrate with a one-second buffer, padded to it",
        nick = "cbr"
    )]
    Cbr,
    #[default]
    #[enum_value(
        name = "Variable bitrate: bitrate is the average (x264 ABR)",
        nick = "vbr"
    )]
    Vbr,
    #[enum_value(
        name = "Constant QP: every frame at the quantizer property, no rate control",
        nick = "constant-qp"
    )]
    ConstantQp,
}

impl From<RateControl> for BitrateMode {
    fn from(r: RateControl) -> BitrateMode {
        match r {
            RateControl::Cbr => BitrateMode::Cbr,
            RateControl::Vbr => BitrateMode::Vbr,
            RateControl::ConstantQp => BitrateMode::ConstantQp,
        }
    }
}

impl From<BitrateMode> for RateControl {
    fn from(m: BitrateMode) -> RateControl {
        match m {
            BitrateMode::Cbr => RateControl::Cbr,
            BitrateMode::Vbr => RateControl::Vbr,
            BitrateMode::ConstantQp => RateControl::ConstantQp,
        }
    }
}

#[derive(Debug, Clone)]
pub struct H264Settings {
    bitrate_kbps: u32,
    rate_control: RateControl,
    gop_size: u32,
    qp_min: u32,
    qp_max: u32,
    quantizer: u32,
    low_latency: bool,
}

impl Default for H264Settings {
    fn default() -> Self {
        H264Settings {
            bitrate_kbps: DEFAULT_BITRATE_KBPS,
            rate_control: RateControl::default(),
            gop_size: DEFAULT_GOP_SIZE,
            qp_min: DEFAULT_QP_MIN,
            qp_max: DEFAULT_QP_MAX,
            quantizer: DEFAULT_QUANTIZER,
            low_latency: DEFAULT_LOW_LATENCY,
        }
    }
}

/// The H.264 descriptor of the shared encoder.
pub struct H264;

/// Strings of a caps field that is a string or a list of strings; `None`
/// when the field is absent (anything goes).
fn strings(s: &gst::StructureRef, field: &str) -> Option<Vec<String>> {
    let v = s.value(field).ok()?;
    if let Ok(one) = v.get::<String>() {
        return Some(vec![one]);
    }
    if let Ok(list) = v.get::<gst::List>() {
        return Some(list.iter().filter_map(|v| v.get::<String>().ok()).collect());
    }
    Some(Vec::new())
}

/// The profile and level for a `width` x `height` stream at `fps` that one
/// structure of downstream's caps accepts, or why none fits.
fn choose(
    s: &gst::StructureRef,
    width: u32,
    height: u32,
    fps: (u32, u32),
) -> Result<(H264Profile, Option<H264Level>), String> {
    let profile = match strings(s, "profile") {
        None => H264Profile::ConstrainedBaseline,
        Some(asked) => PROFILE_PREFERENCE
            .into_iter()
            .find(|p| asked.iter().any(|a| a == p.caps_name()))
            .ok_or_else(|| {
                format!(
                    "downstream accepts the H.264 profile(s) {asked:?}; vpuh264enc \
                     encodes constrained-baseline, baseline, main and high"
                )
            })?,
    };
    let level = match strings(s, "level") {
        None => None,
        Some(asked) => {
            let mut levels: Vec<H264Level> = asked
                .iter()
                .filter_map(|a| H264Level::from_caps_name(a))
                .collect();
            levels.sort_by_key(|l| l.max_mbps);
            let fits = levels
                .iter()
                .find(|l| l.check(width, height, fps).is_none());
            match fits {
                Some(l) => Some(*l),
                None => {
                    let why = levels
                        .last()
                        .and_then(|l| l.check(width, height, fps))
                        .unwrap_or_else(|| "none of them is a level vpuh264enc knows".into());
                    return Err(format!(
                        "downstream accepts H.264 level(s) {asked:?}, which {width}x{height} \
                         at {}/{} fps does not fit: {why}",
                        fps.0, fps.1
                    ));
                }
            }
        }
    };
    Ok((profile, level))
}

impl Codec for H264 {
    type Settings = H264Settings;
    const ELEMENT: &'static str = "vpuh264enc";
    const CODEC_NAME: &'static str = "H.264";
    const CODEC: PixelFormat = PixelFormat::H264;
    /// By the names `v4l2-ctl -l` prints for a V4L2 H.264 encoder.
    const EXTRA_CONTROLS: &'static [ExtraControl] = &[
        ("video_bitrate", Control::Bitrate, (1000, u32::MAX)),
        (
            "video_bitrate_mode",
            |v| Control::BitrateMode(BitrateMode::from_v4l2(v).unwrap_or_default()),
            (0, 2),
        ),
        ("video_gop_size", Control::GopSize, GOP_RANGE),
        ("h264_minimum_qp_value", Control::MinQp, QP_RANGE),
        ("h264_maximum_qp_value", Control::MaxQp, QP_RANGE),
        ("h264_i_frame_qp_value", Control::IFrameQp, QP_RANGE),
        ("h264_p_frame_qp_value", Control::PFrameQp, QP_RANGE),
    ];

    fn cat() -> gst::DebugCategory {
        *CAT
    }

    fn takes(raw: PixelFormat) -> bool {
        h264enc::supports(raw)
    }

    fn src_template_caps() -> gst::Caps {
        let profiles = gst::List::new(PROFILE_PREFERENCE.iter().map(|p| p.caps_name()));
        gst::Caps::builder(MEDIA_TYPE)
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .field("profile", profiles)
            .field(
                "width",
                gst::IntRange::new(2, crate::common::formats::MAX_CAPS_DIM),
            )
            .field(
                "height",
                gst::IntRange::new(2, crate::common::formats::MAX_CAPS_DIM),
            )
            .field(
                "framerate",
                gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(i32::MAX, 1)),
            )
            .build()
    }

    fn properties() -> Vec<glib::ParamSpec> {
        let (qp_lo, qp_hi) = QP_RANGE;
        vec![
            glib::ParamSpecUInt::builder("bitrate")
                .nick("Bitrate")
                .blurb(
                    "Target bitrate in kbit/s (V4L2 VIDEO_BITRATE) for rate-control \
                     vbr (the average; peaks up to twice it) and cbr (the constant \
                     rate); a change in PLAYING applies from the next frame the \
                     encoder receives, which starts a new GOP with an IDR",
                )
                .minimum(1)
                .maximum(MAX_BITRATE_KBPS)
                .default_value(DEFAULT_BITRATE_KBPS)
                .mutable_playing()
                .build(),
            glib::ParamSpecEnum::builder::<RateControl>("rate-control")
                .nick("Rate control")
                .blurb(
                    "cbr, vbr or constant-qp (V4L2 VIDEO_BITRATE_MODE); a change in \
                     PLAYING restarts the stream with a key frame",
                )
                .default_value(RateControl::default())
                .mutable_playing()
                .build(),
            glib::ParamSpecUInt::builder("gop-size")
                .nick("GOP size")
                .blurb(
                    "Distance between IDR frames, in frames (V4L2 VIDEO_GOP_SIZE; \
                     1 = every frame an IDR); a change in PLAYING restarts the \
                     stream with a key frame",
                )
                .minimum(GOP_RANGE.0)
                .maximum(GOP_RANGE.1)
                .default_value(DEFAULT_GOP_SIZE)
                .mutable_playing()
                .build(),
            glib::ParamSpecUInt::builder("qp-min")
                .nick("Minimum QP")
                .blurb(
                    "Lowest quantiser rate control may use (V4L2 H264_MIN_QP), \
                     0 = finest .. 51 = coarsest",
                )
                .minimum(qp_lo)
                .maximum(qp_hi)
                .default_value(DEFAULT_QP_MIN)
                .mutable_playing()
                .build(),
            glib::ParamSpecUInt::builder("qp-max")
                .nick("Maximum QP")
                .blurb(
                    "Highest quantiser rate control may use (V4L2 H264_MAX_QP), \
                     0 = finest .. 51 = coarsest",
                )
                .minimum(qp_lo)
                .maximum(qp_hi)
                .default_value(DEFAULT_QP_MAX)
                .mutable_playing()
                .build(),
            glib::ParamSpecUInt::builder("quantizer")
                .nick("Quantizer")
                .blurb(
                    "QP of every frame with rate-control=constant-qp (V4L2 \
                     H264_I_FRAME_QP and H264_P_FRAME_QP), 0 = finest .. 51 = coarsest",
                )
                .minimum(qp_lo)
                .maximum(qp_hi)
                .default_value(DEFAULT_QUANTIZER)
                .mutable_playing()
                .build(),
            glib::ParamSpecBoolean::builder("low-latency")
                .nick("Low latency")
                .blurb(
                    "true: every frame is coded as it comes and its unit leaves \
                     when the next frame arrives (one frame of latency, like a \
                     hardware encoder; x264 tune=zerolatency, sliced threads); \
                     false: throughput, the VPU codes several frames at once and \
                     holds as many back (x264 frame threads, as x264enc's default; \
                     latency 1 + the held frames, 4 on 2 CPUs, reported to the \
                     pipeline). Every frame \
                     still comes out, in order, at EOS and before a parameter \
                     change. A kernel V4L2 node has no such control: there false \
                     is ignored with a warning. Read when the caps are set",
                )
                .default_value(DEFAULT_LOW_LATENCY)
                .mutable_ready()
                .build(),
        ]
    }

    fn property_controls(name: &str, value: &glib::Value) -> Option<Vec<Control>> {
        let v = || value.get::<u32>().expect("type checked upstream");
        Some(match name {
            "bitrate" => vec![Control::Bitrate(v().saturating_mul(1000))],
            "rate-control" => {
                let r: RateControl = value.get().expect("type checked upstream");
                vec![Control::BitrateMode(r.into())]
            }
            "gop-size" => vec![Control::GopSize(v())],
            "qp-min" => vec![Control::MinQp(v())],
            "qp-max" => vec![Control::MaxQp(v())],
            "quantizer" => vec![Control::IFrameQp(v()), Control::PFrameQp(v())],
            "low-latency" => vec![Control::LowLatency(
                value.get::<bool>().expect("type checked upstream"),
            )],
            _ => return None,
        })
    }

    fn property_value(s: &H264Settings, name: &str) -> Option<glib::Value> {
        Some(match name {
            "bitrate" => s.bitrate_kbps.to_value(),
            "rate-control" => s.rate_control.to_value(),
            "gop-size" => s.gop_size.to_value(),
            "qp-min" => s.qp_min.to_value(),
            "qp-max" => s.qp_max.to_value(),
            "quantizer" => s.quantizer.to_value(),
            "low-latency" => s.low_latency.to_value(),
            _ => return None,
        })
    }

    fn record(s: &mut H264Settings, control: Control) {
        match control {
            Control::Bitrate(bps) => s.bitrate_kbps = (bps / 1000).max(1),
            Control::BitrateMode(m) => s.rate_control = m.into(),
            Control::GopSize(v) => s.gop_size = v,
            Control::MinQp(v) => s.qp_min = v,
            Control::MaxQp(v) => s.qp_max = v,
            Control::PFrameQp(v) => s.quantizer = v,
            Control::LowLatency(v) => s.low_latency = v,
            _ => {}
        }
    }

    fn controls(s: &H264Settings) -> Vec<Control> {
        vec![
            Control::Bitrate(s.bitrate_kbps.saturating_mul(1000)),
            Control::BitrateMode(s.rate_control.into()),
            Control::GopSize(s.gop_size),
            Control::MinQp(s.qp_min),
            Control::MaxQp(s.qp_max),
            Control::IFrameQp(s.quantizer),
            Control::PFrameQp(s.quantizer),
            Control::LowLatency(s.low_latency),
        ]
    }

    fn output_caps(
        info: &gst_video::VideoInfo,
        allowed: Option<&gst::Caps>,
    ) -> Result<(gst::Caps, Vec<Control>), String> {
        let (w, h) = (info.width(), info.height());
        if !w.is_multiple_of(2) || !h.is_multiple_of(2) {
            return Err(format!("H.264 4:2:0 needs an even frame size, got {w}x{h}"));
        }
        let fps = info.fps();
        let fps = if fps.numer() > 0 && fps.denom() > 0 {
            (fps.numer() as u32, fps.denom() as u32)
        } else {
            (0, 1)
        };
        let (profile, level) = match allowed {
            None => (H264Profile::ConstrainedBaseline, None),
            Some(caps) => {
                // Downstream's structures that take our byte-stream/au output,
                // whatever their profile and level.
                let ours = gst::Structure::builder(MEDIA_TYPE)
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build();
                let usable: Vec<&gst::StructureRef> =
                    caps.iter().filter(|s| s.can_intersect(&ours)).collect();
                if usable.is_empty() {
                    return Err(format!(
                        "downstream accepts no {MEDIA_TYPE}, stream-format=byte-stream, \
                         alignment=au (it takes {caps}; for stream-format=avc put \
                         h264parse after the encoder)"
                    ));
                }
                let mut why = Vec::new();
                let mut chosen = None;
                for s in usable {
                    match choose(s, w, h, fps) {
                        Ok(c) => {
                            chosen = Some(c);
                            break;
                        }
                        Err(e) => why.push(e),
                    }
                }
                chosen.ok_or_else(|| why.join("; "))?
            }
        };
        if level.is_none() && H264Level::lowest_fitting(w, h, fps).is_none() {
            return Err(format!(
                "{w}x{h} at {}/{} fps exceeds every H.264 level up to 5.2",
                fps.0, fps.1
            ));
        }
        let mut caps = gst::Caps::builder(MEDIA_TYPE)
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .field("profile", profile.caps_name());
        if let Some(l) = level {
            caps = caps.field("level", l.name);
        }
        Ok((
            caps.build(),
            vec![Control::H264Profile(profile), Control::H264Level(level)],
        ))
    }
}

#[derive(Default)]
pub struct VpuH264Enc {
    base: EncoderBase<H264>,
}

#[glib::object_subclass]
impl ObjectSubclass for VpuH264Enc {
    const NAME: &'static str = "GstVpuH264Enc";
    type Type = super::VpuH264Enc;
    type ParentType = gst_video::VideoEncoder;
}

encoder_element!(
    VpuH264Enc,
    H264,
    "VPU H.264 encoder",
    "Encodes raw video to H.264 (Annex-B byte-stream, one access unit per \
     buffer, SPS/PPS before every IDR) on a VPU through the V4L2 stateful \
     memory-to-memory encoder model; profile and level follow downstream caps. \
     The encoder proposes a pool of VPU memory upstream, so producers write \
     frames where the VPU reads them. Runs on a kernel V4L2 codec node or on \
     the in-process emulated VPU (device property; it codes with libx264)"
);
