//! `vpuh264dec`: H.264 video decoder on a VPU (V4L2 stateful M2M model).
//!
//! A subclass of the shared VPU decoder ([`crate::decoder`]) taking one
//! access unit per buffer (`stream-format=byte-stream, alignment=au`;
//! h264parse converts `avc` upstream). The VPU (a kernel node offering
//! `H264`, or the emulated VPU's libavcodec engine) announces the stream
//! from its SPS, decodes, reorders, and hands back its own CAPTURE memory,
//! which leaves without a copy as for FWHT.
//!
//! Profiles: only those the emulated VPU decodes exactly as `avdec_h264`
//! does (8-bit 4:2:0: constrained-baseline, baseline, main, high,
//! progressive-high, constrained-high) are in the sink template; a stream
//! whose caps name another (high-10, high-4:2:2, ...) fails negotiation with
//! a message, and the VPU itself rejects such an SPS, so nothing is ever
//! decoded wrongly.

mod imp;

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    pub struct VpuH264Dec(ObjectSubclass<imp::VpuH264Dec>)
        @extends crate::decoder::VpuDec, gst_video::VideoDecoder, gst::Element, gst::Object;
}

/// Registers `vpuh264dec`.
///
/// Rank `PRIMARY + 2`, above every software H.264 decoder (`avdec_h264` and
/// `openh264dec` are `PRIMARY`) and above GStreamer's `v4l2h264dec`
/// (`PRIMARY + 1`): decodebin/playbin should pick this element, because it
/// decodes on a kernel VPU node when there is one and otherwise gives
/// exactly `avdec_h264`'s pictures (the same library, checked frame by
/// frame in tests/vpuh264dec.rs) with zero-copy frame memory and decoding
/// pipelined off the streaming thread. Streams it cannot decode exactly are
/// outside its sink template, so decodebin falls through to the next
/// decoder for them.
pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    crate::decoder::register_api();
    crate::decoder::register_codec(VpuH264Dec::static_type(), &imp::CODEC);
    gst::Element::register(
        Some(plugin),
        "vpuh264dec",
        gst::Rank::PRIMARY + 2,
        VpuH264Dec::static_type(),
    )
}
