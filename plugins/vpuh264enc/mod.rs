//! `vpuh264enc`: H.264 encoder on a VPU, driven through the V4L2 stateful
//! M2M encoder model ([`crate::m2m`]). The element is the shared VPU encoder
//! ([`crate::encoder`]) with the H.264 descriptor of `imp.rs`: byte-stream
//! caps with the profile (and level) negotiated from downstream, and the
//! rate-control properties (`bitrate`, `rate-control`, `gop-size`, `qp-min`,
//! `qp-max`, `quantizer`) and `low-latency` (one in, one out, or a throughput
//! mode whose codec holds frames; see `imp.rs`). On the emulated VPU it codes with libx264 (see
//! `src/vpu/codec/h264enc.rs` for why, with figures).

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct VpuH264Enc(ObjectSubclass<imp::VpuH264Enc>)
        @extends gst_video::VideoEncoder, gst::Element, gst::Object;
}

/// Rank `SECONDARY`: on the emulated VPU this is a software encoder (libx264
/// on the CPU), so autoplugging (`encodebin`, `camerabin`) should keep
/// preferring `x264enc` (`PRIMARY`), which wraps the same library without
/// the VPU hand-off, and any real hardware encoder (the v4l2 plugin's
/// `v4l2h264enc` is `PRIMARY + 1`). Above `openh264enc` (`MARGINAL`): at equal
/// bitrate its quality is lower and it overshoots the bitrate (see the
/// README). Pipelines that name `vpuh264enc` get it, on whichever VPU.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "vpuh264enc",
        gst::Rank::SECONDARY,
        VpuH264Enc::static_type(),
    )
}
