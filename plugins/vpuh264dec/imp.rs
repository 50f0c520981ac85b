//! The `vpuh264dec` subclass: H.264's codec descriptor (caps, profiles,
//! reordering), pad templates and metadata; everything else is the shared
//! decoder's.

use std::sync::LazyLock;

use gst::glib;
use gst::subclass::prelude::*;
use gst_video::subclass::prelude::*;

use crate::decoder::{Codec, Framing, VpuDecImpl};
use crate::m2m::PixelFormat;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpuh264dec",
        gst::DebugColorFlags::empty(),
        Some("H.264 video decoder on a VPU"),
    )
});

/// Profiles decoded exactly (8-bit 4:2:0), as h264parse names them.
pub(super) const PROFILES: [&str; 6] = [
    "constrained-baseline",
    "baseline",
    "main",
    "high",
    "progressive-high",
    "constrained-high",
];

/// Raw formats the VPU writes H.264 pictures in.
const CAPTURE_FORMATS: [PixelFormat; 4] = [
    PixelFormat::I420,
    PixelFormat::Nv12,
    PixelFormat::Yv12,
    PixelFormat::Nv21,
];

fn check_caps(s: &gst::StructureRef) -> Result<(), String> {
    if let Ok(profile) = s.get::<&str>("profile")
        && !PROFILES.contains(&profile)
    {
        return Err(format!(
            "H.264 profile \"{profile}\": this VPU decodes 8-bit 4:2:0 only ({})",
            PROFILES.join(", ")
        ));
    }
    for (field, want) in [("stream-format", "byte-stream"), ("alignment", "au")] {
        if let Ok(v) = s.get::<&str>(field)
            && v != want
        {
            return Err(format!("{field}={v}, this decoder takes {field}={want}"));
        }
    }
    Ok(())
}

pub(super) static CODEC: Codec = Codec {
    element: "vpuh264dec",
    name: "H.264",
    pixel_format: PixelFormat::H264,
    framing: Framing::AccessUnits,
    reorders: true,
    // x264's default reordering (2 B-frames) plus libavcodec's frame-thread
    // delay; a stream that reorders deeper adds its own latency.
    held_frames: 3,
    check_caps,
    cat: &CAT,
};

fn sink_caps() -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "byte-stream")
        .field("alignment", "au")
        .field("profile", gst::List::new(PROFILES))
        .build()
}

#[derive(Default)]
pub struct VpuH264Dec;

#[glib::object_subclass]
impl ObjectSubclass for VpuH264Dec {
    const NAME: &'static str = "GstVpuH264Dec";
    type Type = super::VpuH264Dec;
    type ParentType = crate::decoder::VpuDec;
}

impl ObjectImpl for VpuH264Dec {}
impl GstObjectImpl for VpuH264Dec {}

impl ElementImpl for VpuH264Dec {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "VPU H.264 video decoder",
                "Codec/Decoder/Video/Hardware",
                "Decodes H.264 (Annex-B access units; 8-bit 4:2:0 profiles) on a VPU through \
                 the V4L2 stateful codec model: a kernel codec node or the in-crate emulated \
                 VPU. Outputs the VPU's own frame memory, without copying, with a GstVideoMeta",
                "gst-vpu developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(|| crate::decoder::pad_templates(&sink_caps(), &CAPTURE_FORMATS));
        TEMPLATES.as_ref()
    }
}

impl VideoDecoderImpl for VpuH264Dec {
    fn handle_frame(
        &self,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        crate::decoder::handle_frame(self, frame)
    }
}
impl VpuDecImpl for VpuH264Dec {}
