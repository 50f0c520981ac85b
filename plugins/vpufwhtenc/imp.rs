//! The `vpufwhtenc` element: the shared VPU encoder
//! ([`crate::encoder::EncoderBase`]) with the FWHT descriptor: FWHT caps, the
//! GOP size and the I/P-frame quantisers of vicodec.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::subclass::prelude::*;

use crate::common::formats;
use crate::encoder::{Codec, EncoderBase, ExtraControl, encoder_element};
use crate::m2m::{Control, PixelFormat};
use crate::vpu::codec::fwht::{self, EncoderParams};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpufwhtenc",
        gst::DebugColorFlags::empty(),
        Some("VPU FWHT encoder"),
    )
});

const DEFAULT_GOP_SIZE: u32 = 10;
const DEFAULT_I_FRAME_QP: u32 = 20;
const DEFAULT_P_FRAME_QP: u32 = 20;

/// The FWHT settings: vicodec's controls.
#[derive(Debug, Clone)]
pub struct FwhtSettings {
    gop_size: u32,
    i_frame_qp: u32,
    p_frame_qp: u32,
}

impl Default for FwhtSettings {
    fn default() -> Self {
        FwhtSettings {
            gop_size: DEFAULT_GOP_SIZE,
            i_frame_qp: DEFAULT_I_FRAME_QP,
            p_frame_qp: DEFAULT_P_FRAME_QP,
        }
    }
}

/// The FWHT descriptor of the shared encoder.
pub struct Fwht;

impl Codec for Fwht {
    type Settings = FwhtSettings;
    const ELEMENT: &'static str = "vpufwhtenc";
    const CODEC_NAME: &'static str = "FWHT";
    const CODEC: PixelFormat = PixelFormat::Fwht;
    /// By the names `v4l2-ctl -l` prints for vicodec's encoder.
    const EXTRA_CONTROLS: &'static [ExtraControl] = &[
        (
            "video_gop_size",
            Control::GopSize,
            EncoderParams::GOP_SIZE_RANGE,
        ),
        (
            "fwht_i_frame_qp_value",
            Control::IFrameQp,
            EncoderParams::QP_RANGE,
        ),
        (
            "fwht_p_frame_qp_value",
            Control::PFrameQp,
            EncoderParams::QP_RANGE,
        ),
    ];

    fn cat() -> gst::DebugCategory {
        *CAT
    }

    fn takes(raw: PixelFormat) -> bool {
        fwht::supports(raw)
    }

    fn src_template_caps() -> gst::Caps {
        gst::Caps::builder(formats::FWHT_MEDIA_TYPE)
            .field("width", gst::IntRange::new(1, formats::MAX_CAPS_DIM))
            .field("height", gst::IntRange::new(1, formats::MAX_CAPS_DIM))
            .field(
                "framerate",
                gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(i32::MAX, 1)),
            )
            .build()
    }

    fn properties() -> Vec<glib::ParamSpec> {
        let (gop_min, gop_max) = EncoderParams::GOP_SIZE_RANGE;
        let (qp_min, qp_max) = EncoderParams::QP_RANGE;
        vec![
            glib::ParamSpecUInt::builder("gop-size")
                .nick("GOP size")
                .blurb(
                    "Maximum distance between key frames, in frames (V4L2 \
                     GOP_SIZE; 1 = every frame a key frame). The FWHT encoder \
                     restarts the GOP early when a frame codes no predicted block. \
                     A change in PLAYING applies from the next frame the encoder \
                     receives (it lets the VPU finish the frames before)",
                )
                .minimum(gop_min)
                .maximum(gop_max)
                .default_value(DEFAULT_GOP_SIZE)
                .mutable_playing()
                .build(),
            glib::ParamSpecUInt::builder("i-frame-qp")
                .nick("I-frame QP")
                .blurb(
                    "Quantiser of key frames (V4L2 FWHT_I_FRAME_QP), 1 = finest \
                     and largest .. 31 = coarsest and smallest; changes in PLAYING \
                     apply from the next frame the encoder receives",
                )
                .minimum(qp_min)
                .maximum(qp_max)
                .default_value(DEFAULT_I_FRAME_QP)
                .mutable_playing()
                .build(),
            glib::ParamSpecUInt::builder("p-frame-qp")
                .nick("P-frame QP")
                .blurb(
                    "Quantiser of predicted frames (V4L2 FWHT_P_FRAME_QP), \
                     1 = finest and largest .. 31 = coarsest and smallest; changes \
                     in PLAYING apply from the next frame the encoder receives",
                )
                .minimum(qp_min)
                .maximum(qp_max)
                .default_value(DEFAULT_P_FRAME_QP)
                .mutable_playing()
                .build(),
        ]
    }

    fn property_controls(name: &str, value: &glib::Value) -> Option<Vec<Control>> {
        let v = || value.get::<u32>().expect("type checked upstream");
        Some(vec![match name {
            "gop-size" => Control::GopSize(v()),
            "i-frame-qp" => Control::IFrameQp(v()),
            "p-frame-qp" => Control::PFrameQp(v()),
            _ => return None,
        }])
    }

    fn property_value(s: &FwhtSettings, name: &str) -> Option<glib::Value> {
        Some(match name {
            "gop-size" => s.gop_size.to_value(),
            "i-frame-qp" => s.i_frame_qp.to_value(),
            "p-frame-qp" => s.p_frame_qp.to_value(),
            _ => return None,
        })
    }

    fn record(s: &mut FwhtSettings, control: Control) {
        match control {
            Control::GopSize(v) => s.gop_size = v,
            Control::IFrameQp(v) => s.i_frame_qp = v,
            Control::PFrameQp(v) => s.p_frame_qp = v,
            _ => {}
        }
    }

    fn controls(s: &FwhtSettings) -> Vec<Control> {
        vec![
            Control::GopSize(s.gop_size),
            Control::IFrameQp(s.i_frame_qp),
            Control::PFrameQp(s.p_frame_qp),
        ]
    }

    fn output_caps(
        info: &gst_video::VideoInfo,
        _allowed: Option<&gst::Caps>,
    ) -> Result<(gst::Caps, Vec<Control>), String> {
        Ok((
            formats::fwht_caps(Some((info.width(), info.height()))),
            Vec::new(),
        ))
    }
}

#[derive(Default)]
pub struct VpuFwhtEnc {
    base: EncoderBase<Fwht>,
}

#[glib::object_subclass]
impl ObjectSubclass for VpuFwhtEnc {
    const NAME: &'static str = "GstVpuFwhtEnc";
    type Type = super::VpuFwhtEnc;
    type ParentType = gst_video::VideoEncoder;
}

encoder_element!(
    VpuFwhtEnc,
    Fwht,
    "VPU FWHT encoder",
    "Encodes raw video to FWHT (the Linux vicodec codec, video/x-fwht) on a \
     VPU through the V4L2 stateful memory-to-memory encoder model; the \
     stream is bit-exact with the kernel's vicodec. The encoder proposes \
     a pool of VPU memory upstream, so producers write frames where the \
     VPU reads them; input already in VPU memory is queued without a \
     copy, other input is copied once (counted in the stats property). \
     Runs on a kernel V4L2 codec node or \
     on the in-process emulated VPU (device property)"
);
