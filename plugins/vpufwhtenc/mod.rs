//! `vpufwhtenc`: FWHT (the kernel vicodec codec) encoder on a VPU, driven
//! through the V4L2 stateful M2M encoder model ([`crate::m2m`]).
//!
//! The element is the shared VPU encoder ([`crate::encoder`]: the frame flow,
//! the VPU engine, the input pool) with the FWHT descriptor of `imp.rs`
//! (caps, `gop-size`, `i-frame-qp`, `p-frame-qp`, `extra-controls` names).

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct VpuFwhtEnc(ObjectSubclass<imp::VpuFwhtEnc>)
        @extends gst_video::VideoEncoder, gst::Element, gst::Object;
}

/// Rank `PRIMARY`: it is a hardware encoder for a format no other GStreamer
/// element encodes (the v4l2 plugin only exposes vicodec's encoder when that
/// kernel module is loaded, as `v4l2fwhtenc` at rank `PRIMARY + 1`, which then
/// wins: the kernel's own codec is the reference). Encoders are rarely
/// autoplugged (`encodebin` with a `video/x-fwht` profile is the one case);
/// when they are, this is the element to pick.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "vpufwhtenc",
        gst::Rank::PRIMARY,
        VpuFwhtEnc::static_type(),
    )
}
