//! `vpufwhtdec`: FWHT video decoder on a VPU (V4L2 stateful M2M model).
//!
//! A subclass of the shared VPU decoder ([`crate::decoder`]) in parse mode:
//! unframed FWHT input (a plain `.fwht` file) is cut at frame boundaries
//! from the FWHT header, each frame goes to the VPU in one OUTPUT buffer,
//! and decoded frames leave as the VPU's own CAPTURE memory (fd or dma-buf,
//! with a GstVideoMeta), which returns to the VPU when downstream drops it.

mod imp;

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    pub struct VpuFwhtDec(ObjectSubclass<imp::VpuFwhtDec>)
        @extends crate::decoder::VpuDec, gst_video::VideoDecoder, gst::Element, gst::Object;
}

/// Registers `vpufwhtdec`.
///
/// Rank `PRIMARY + 2`: decodebin/playbin must pick it over GStreamer's own
/// `v4l2fwhtdec`, which registers at `PRIMARY + 1` (as every v4l2 decoder
/// does) but needs a vicodec kernel node; this element drives the same kind
/// of node when one exists (`device=auto`) and otherwise the in-crate VPU, so
/// it is the only FWHT decoder that always works. No software FWHT decoder
/// exists to compete with.
pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    crate::decoder::register_api();
    crate::decoder::register_codec(VpuFwhtDec::static_type(), &imp::CODEC);
    gst::Element::register(
        Some(plugin),
        "vpufwhtdec",
        gst::Rank::PRIMARY + 2,
        VpuFwhtDec::static_type(),
    )
}
