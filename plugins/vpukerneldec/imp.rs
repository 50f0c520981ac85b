//! The codec descriptors of `vpuh265dec`, `vpuvp8dec` and `vpuvp9dec`, and
//! their subclasses of the shared decoder (pad templates from what plugin
//! init planned, metadata; everything else is the base's).

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

use crate::decoder::{Codec, Framing};
use crate::m2m::PixelFormat;

fn check_h265_caps(s: &gst::StructureRef) -> Result<(), String> {
    for (field, want) in [("stream-format", "byte-stream"), ("alignment", "au")] {
        if let Ok(v) = s.get::<&str>(field)
            && v != want
        {
            return Err(format!("{field}={v}, this decoder takes {field}={want}"));
        }
    }
    Ok(())
}

macro_rules! kernel_decoder {
    (
        $module:ident, $wrapper:ident, $type_name:literal, $codec:ident,
        $longname:literal, $description:literal
    ) => {
        mod $module {
            use gst::glib;
            use gst::subclass::prelude::*;
            use gst_video::subclass::prelude::*;

            use crate::decoder::VpuDecImpl;

            #[derive(Default)]
            pub struct Imp;

            #[glib::object_subclass]
            impl ObjectSubclass for Imp {
                const NAME: &'static str = $type_name;
                type Type = $wrapper;
                type ParentType = crate::decoder::VpuDec;
            }

            impl ObjectImpl for Imp {}
            impl GstObjectImpl for Imp {}

            impl ElementImpl for Imp {
                fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
                    static METADATA: std::sync::LazyLock<gst::subclass::ElementMetadata> =
                        std::sync::LazyLock::new(|| {
                            gst::subclass::ElementMetadata::new(
                                $longname,
                                "Codec/Decoder/Video/Hardware",
                                $description,
                                "gst-vpu developers",
                            )
                        });
                    Some(&*METADATA)
                }

                fn pad_templates() -> &'static [gst::PadTemplate] {
                    static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                        std::sync::LazyLock::new(|| {
                            // Registered only once planned; an unplanned
                            // type gets empty caps (and is never a factory).
                            let (sink, raw) = super::super::planned(super::$codec.element)
                                .map(|p| (p.sink.clone(), p.raw.clone()))
                                .unwrap_or_else(|| (gst::Caps::new_empty(), Vec::new()));
                            crate::decoder::pad_templates(&sink, &raw)
                        });
                    TEMPLATES.as_ref()
                }
            }

            impl VideoDecoderImpl for Imp {
                fn handle_frame(
                    &self,
                    frame: gst_video::VideoCodecFrame,
                ) -> Result<gst::FlowSuccess, gst::FlowError> {
                    crate::decoder::handle_frame(self, frame)
                }
            }
            impl VpuDecImpl for Imp {}

            glib::wrapper! {
                pub struct $wrapper(ObjectSubclass<Imp>)
                    @extends crate::decoder::VpuDec, gst_video::VideoDecoder, gst::Element, gst::Object;
            }
        }
    };
}

static H265_CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpuh265dec",
        gst::DebugColorFlags::empty(),
        Some("H.265 video decoder on a kernel VPU node"),
    )
});
static VP8_CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpuvp8dec",
        gst::DebugColorFlags::empty(),
        Some("VP8 video decoder on a kernel VPU node"),
    )
});
static VP9_CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpuvp9dec",
        gst::DebugColorFlags::empty(),
        Some("VP9 video decoder on a kernel VPU node"),
    )
});

static H265: Codec = Codec {
    element: "vpuh265dec",
    name: "H.265",
    pixel_format: PixelFormat::Hevc,
    framing: Framing::AccessUnits,
    // B-frames: pictures come out in presentation order.
    reorders: true,
    held_frames: 3,
    check_caps: check_h265_caps,
    cat: &H265_CAT,
};

static VP8: Codec = Codec {
    element: "vpuvp8dec",
    name: "VP8",
    pixel_format: PixelFormat::Vp8,
    framing: Framing::AccessUnits,
    // Decode order is display order; a frame without a picture (an
    // alt-ref) gets none, which a later picture then tells.
    reorders: false,
    held_frames: 0,
    check_caps: |_| Ok(()),
    cat: &VP8_CAT,
};

static VP9: Codec = Codec {
    element: "vpuvp9dec",
    name: "VP9",
    pixel_format: PixelFormat::Vp9,
    framing: Framing::AccessUnits,
    reorders: false,
    // A hidden frame is shown later (show_existing_frame).
    held_frames: 1,
    check_caps: |_| Ok(()),
    cat: &VP9_CAT,
};

/// Every codec of this module, in registration order.
pub(super) static CODECS: [&Codec; 3] = [&H265, &VP8, &VP9];

kernel_decoder!(
    h265,
    VpuH265Dec,
    "GstVpuH265Dec",
    H265,
    "VPU H.265 video decoder",
    "Decodes H.265/HEVC (Annex-B access units) on a kernel V4L2 stateful decoder node \
     that offers it (registered only where one exists). Outputs the VPU's own frame \
     memory, without copying, with a GstVideoMeta"
);
kernel_decoder!(
    vp8,
    VpuVp8Dec,
    "GstVpuVp8Dec",
    VP8,
    "VPU VP8 video decoder",
    "Decodes VP8 on a kernel V4L2 stateful decoder node that offers it (registered only \
     where one exists). Outputs the VPU's own frame memory, without copying, with a \
     GstVideoMeta"
);
kernel_decoder!(
    vp9,
    VpuVp9Dec,
    "GstVpuVp9Dec",
    VP9,
    "VPU VP9 video decoder",
    "Decodes VP9 on a kernel V4L2 stateful decoder node that offers it (registered only \
     where one exists). Outputs the VPU's own frame memory, without copying, with a \
     GstVideoMeta"
);

/// The element type decoding `pf`.
pub(super) fn element_type(pf: PixelFormat) -> Option<glib::Type> {
    Some(match pf {
        PixelFormat::Hevc => h265::VpuH265Dec::static_type(),
        PixelFormat::Vp8 => vp8::VpuVp8Dec::static_type(),
        PixelFormat::Vp9 => vp9::VpuVp9Dec::static_type(),
        _ => return None,
    })
}
