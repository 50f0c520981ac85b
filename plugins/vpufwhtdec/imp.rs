//! The `vpufwhtdec` subclass: FWHT's codec descriptor, pad templates and
//! metadata; everything else is the shared decoder's.

use std::sync::LazyLock;

use gst::glib;
use gst::subclass::prelude::*;
use gst_video::subclass::prelude::*;

use crate::common::formats;
use crate::decoder::{Codec, Framing, VpuDecImpl};
use crate::m2m::PixelFormat;
use crate::vpu::codec::fwht;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpufwhtdec",
        gst::DebugColorFlags::empty(),
        Some("FWHT video decoder on a VPU"),
    )
});

pub(super) static CODEC: Codec = Codec {
    element: "vpufwhtdec",
    name: "FWHT",
    pixel_format: PixelFormat::Fwht,
    framing: Framing::Fwht,
    reorders: false,
    held_frames: 0,
    // The FWHT header, not the caps, says what the stream is.
    check_caps: |_| Ok(()),
    cat: &CAT,
};

/// Raw formats an FWHT stream can decode to on the VPU.
fn capture_formats() -> Vec<PixelFormat> {
    PixelFormat::ALL
        .iter()
        .copied()
        .filter(|&p| !p.is_coded() && fwht::supports(p))
        .collect()
}

#[derive(Default)]
pub struct VpuFwhtDec;

#[glib::object_subclass]
impl ObjectSubclass for VpuFwhtDec {
    const NAME: &'static str = "GstVpuFwhtDec";
    type Type = super::VpuFwhtDec;
    type ParentType = crate::decoder::VpuDec;
}

impl ObjectImpl for VpuFwhtDec {}
impl GstObjectImpl for VpuFwhtDec {}

impl ElementImpl for VpuFwhtDec {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "VPU FWHT video decoder",
                "Codec/Decoder/Video/Hardware",
                "Decodes FWHT (the Linux vicodec format) on a VPU through the V4L2 stateful \
                 codec model: a kernel codec node or the in-crate emulated VPU. Takes unframed \
                 streams (a plain .fwht file) and outputs the VPU's own frame memory, without \
                 copying, with a GstVideoMeta",
                "gst-vpu developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            crate::decoder::pad_templates(&formats::fwht_caps(None), &capture_formats())
        });
        TEMPLATES.as_ref()
    }
}

impl VideoDecoderImpl for VpuFwhtDec {
    fn handle_frame(
        &self,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        crate::decoder::handle_frame(self, frame)
    }
}
impl VpuDecImpl for VpuFwhtDec {}
