//! `vpufwhtenc`: FWHT (the kernel vicodec codec) encoder on a VPU, driven
//! through the V4L2 stateful M2M encoder model ([`crate::m2m`]).
//!
//! Files: `imp.rs` is the GstVideoEncoder subclass (properties, caps,
//! negotiation, the frame flow); `engine.rs` is the VPU side (queues, buffers,
//! the `vpu-capture` event thread); `pool.rs` is the buffer pool of VPU memory
//! the element proposes upstream, so producers write where the VPU reads;
//! `copy.rs` lays a GStreamer frame out in the contract's layout when upstream
//! memory cannot be queued as is.
//!
//! Controls (`gop-size`, the QPs, `extra-controls`) set while streaming apply
//! from the next frame `handle_frame` receives: the streaming thread lets the
//! VPU finish the frames before and then sets them (see `imp.rs`).
//!
//! Threading: the streaming thread queues raw frames and is the only caller of
//! `finish_frame`; `vpu-capture` waits on the session's events, returns done
//! OUTPUT buffers, copies coded frames out of their CAPTURE buffers and
//! requeues those at once. See `imp.rs` for why `finish_frame` stays on the
//! streaming thread.

use gst::glib;
use gst::prelude::*;

mod copy;
mod engine;
mod imp;
mod pool;

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
