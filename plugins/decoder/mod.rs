//! `GstVpuDec`: the one implementation behind every VPU decoder element.
//!
//! An abstract GstVideoDecoder subclass (`imp.rs`: properties, negotiation,
//! zero-copy hand-off, stats; `engine.rs`: the VPU session and its
//! `vpu-capture` thread). Each codec element (`vpufwhtdec`, `vpuh264dec`)
//! is a thin subclass that contributes its pad templates and metadata and
//! registers a [`Codec`] descriptor for its type: what the VPU is opened
//! for, how input is framed, whether pictures come out reordered, which
//! raw formats it outputs and which streams it refuses at caps time.

mod engine;
mod imp;
mod pool;

use std::sync::{LazyLock, Mutex, PoisonError};

use gst::glib;
use gst::prelude::*;
use gst_video::subclass::prelude::*;

use crate::m2m::PixelFormat;

pub(crate) use imp::{CaptureIoMode, MemoryPolicy};

glib::wrapper! {
    pub struct VpuDec(ObjectSubclass<imp::VpuDec>)
        @extends gst_video::VideoDecoder, gst::Element, gst::Object;
}

/// Marks a subclass of [`VpuDec`]; all behaviour comes from the base.
pub(crate) trait VpuDecImpl: VideoDecoderImpl {}

// SAFETY: `VpuDec` adds no class struct fields or virtual methods of its own;
// the default `class_init` chains to GstVideoDecoder's, which installs the
// subclass's trampolines, and those chain up to `imp::VpuDec`.
#[allow(unsafe_code)]
unsafe impl<T: VpuDecImpl> IsSubclassable<T> for VpuDec {}

/// How the element receives coded frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Unframed FWHT bytes, cut at frame headers by `parse`.
    Fwht,
    /// One access unit per input buffer (`alignment=au`).
    AccessUnits,
}

/// What a codec element tells the shared decoder.
pub(crate) struct Codec {
    /// Element name (`vpuh264dec`), also the stats structure's prefix.
    pub element: &'static str,
    /// Human name in messages (`H.264`).
    pub name: &'static str,
    /// The OUTPUT format the VPU session is opened for.
    pub pixel_format: PixelFormat,
    pub framing: Framing,
    /// Pictures come out in presentation order, not decode order.
    pub reorders: bool,
    /// Frames the codec may hold beyond the one being decoded (latency).
    pub held_frames: u64,
    /// Why the sink caps structure describes a stream this VPU cannot
    /// decode exactly, if it does.
    pub check_caps: fn(&gst::StructureRef) -> Result<(), String>,
    pub cat: &'static LazyLock<gst::DebugCategory>,
}

static NO_CODEC_CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpudec",
        gst::DebugColorFlags::empty(),
        Some("VPU video decoder base class"),
    )
});

/// Stands in for the codec of an instance whose type registered none (not
/// reachable through `register`; keeps the base free of panics).
pub(crate) static NO_CODEC: Codec = Codec {
    element: "vpudec",
    name: "unregistered",
    pixel_format: PixelFormat::Fwht,
    framing: Framing::Fwht,
    reorders: false,
    held_frames: 0,
    check_caps: |_| Err("no codec registered for this element type".into()),
    cat: &NO_CODEC_CAT,
};

static CODECS: Mutex<Vec<(glib::Type, &'static Codec)>> = Mutex::new(Vec::new());

/// Registers `codec` for the element type `type_` (a subclass of VpuDec).
pub(crate) fn register_codec(type_: glib::Type, codec: &'static Codec) {
    let mut codecs = CODECS.lock().unwrap_or_else(PoisonError::into_inner);
    if !codecs.iter().any(|(t, _)| *t == type_) {
        codecs.push((type_, codec));
    }
}

/// The codec registered for `type_` or its nearest registered ancestor.
pub(crate) fn codec_of(type_: glib::Type) -> &'static Codec {
    let codecs = CODECS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut t = Some(type_);
    while let Some(ty) = t {
        if let Some((_, c)) = codecs.iter().find(|(r, _)| *r == ty) {
            return c;
        }
        t = ty.parent();
    }
    &NO_CODEC
}

/// Registers the base type's plugin API (its enum and the abstract class).
pub(crate) fn register_api() {
    MemoryPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    CaptureIoMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    VpuDec::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
}

/// A decoder's pad templates: `sink` from the codec's caps, `src` with the
/// raw formats in system memory first (any consumer), then the same as
/// dma-bufs for importers; which one is used is decided at negotiation by
/// what the VPU's memory is.
pub(crate) fn pad_templates(sink: &gst::Caps, raw: &[PixelFormat]) -> Vec<gst::PadTemplate> {
    let mut src = crate::common::formats::raw_caps(raw);
    src.make_mut()
        .append(crate::common::formats::raw_dmabuf_caps(raw));
    [
        ("sink", gst::PadDirection::Sink, sink),
        ("src", gst::PadDirection::Src, &src),
    ]
    .into_iter()
    .filter_map(|(name, dir, caps)| {
        gst::PadTemplate::new(name, dir, gst::PadPresence::Always, caps).ok()
    })
    .collect()
}

/// `handle_frame` of a subclass: the base's, called directly.
///
/// gstreamer-video 0.25's `parent_handle_frame` hands the frame to the
/// parent's C vfunc without transferring it and then unrefs it, while the
/// vfunc (ours too) takes ownership: one unref too many per frame. So
/// subclasses do not chain up through the vfunc but give the owned frame to
/// the base implementation.
pub(crate) fn handle_frame<T>(
    imp: &T,
    frame: gst_video::VideoCodecFrame,
) -> Result<gst::FlowSuccess, gst::FlowError>
where
    T: VpuDecImpl,
    T::Type: IsA<VpuDec>,
{
    let obj = imp.obj();
    obj.upcast_ref::<VpuDec>().imp().handle_frame(frame)
}
