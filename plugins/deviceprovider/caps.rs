//! Caps of a VPU's coded and raw formats, for its devices.

use crate::common::formats;
use crate::m2m::PixelFormat;
use crate::m2m::format::fourcc;
use crate::v4l2::discovery::{NodeFormat, SizeRange};

/// The short codec name of a coded format, as our element names spell it
/// (`vpu<name>dec`), for the FourCCs of `linux/videodev2.h` we know.
pub(super) fn codec_name(format: NodeFormat) -> Option<&'static str> {
    Some(match &format.fourcc().to_le_bytes() {
        b"FWHT" => "fwht",
        b"H264" => "h264",
        b"HEVC" => "h265",
        b"VP80" => "vp8",
        b"VP90" => "vp9",
        b"AV01" => "av1",
        b"MPG2" => "mpeg2",
        b"MPG4" => "mpeg4",
        b"JPEG" | b"MJPG" => "jpeg",
        _ => return None,
    })
}

/// The caps of a coded format, with `sizes` as width and height ranges;
/// `None` for a FourCC with no GStreamer media type we know.
pub(crate) fn coded_caps(format: NodeFormat, sizes: Option<SizeRange>) -> Option<gst::Caps> {
    let mut caps = match format.fourcc() {
        c if c == PixelFormat::Fwht.fourcc() => formats::fwht_caps(None),
        c if c == PixelFormat::H264.fourcc() => gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build(),
        c if c == PixelFormat::Hevc.fourcc() => gst::Caps::builder("video/x-h265")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build(),
        c if c == PixelFormat::Vp8.fourcc() => gst::Caps::new_empty_simple("video/x-vp8"),
        c if c == PixelFormat::Vp9.fourcc() => gst::Caps::new_empty_simple("video/x-vp9"),
        c if c == fourcc(b"AV01") => gst::Caps::new_empty_simple("video/x-av1"),
        c if c == fourcc(b"MPG2") => gst::Caps::builder("video/mpeg")
            .field("mpegversion", 2i32)
            .field("systemstream", false)
            .build(),
        c if c == fourcc(b"MPG4") => gst::Caps::builder("video/mpeg")
            .field("mpegversion", 4i32)
            .field("systemstream", false)
            .build(),
        c if c == fourcc(b"JPEG") || c == fourcc(b"MJPG") => {
            gst::Caps::new_empty_simple("image/jpeg")
        }
        _ => return None,
    };
    if let (Some(s), Some(caps)) = (sizes, caps.get_mut()) {
        let dim = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        caps.set(
            "width",
            gst::IntRange::new(dim(s.min_width), dim(s.max_width)),
        );
        caps.set(
            "height",
            gst::IntRange::new(dim(s.min_height), dim(s.max_height)),
        );
    }
    Some(caps)
}

/// The device's caps: its coded format, then its raw formats (those
/// GStreamer names; others are left out).
pub(super) fn device_caps(
    coded: NodeFormat,
    sizes: Option<SizeRange>,
    raw: &[NodeFormat],
) -> gst::Caps {
    let mut caps = coded_caps(coded, sizes).unwrap_or_else(gst::Caps::new_empty);
    let raw: Vec<PixelFormat> = raw.iter().filter_map(|f| f.known()).collect();
    caps.merge(formats::raw_caps(&raw));
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coded_caps_carry_the_node_sizes() {
        gst::init().unwrap();
        let sizes = SizeRange {
            min_width: 640,
            max_width: 4096,
            step_width: 8,
            min_height: 360,
            max_height: 2160,
            step_height: 8,
        };
        let caps = coded_caps(NodeFormat::Known(PixelFormat::Fwht), Some(sizes)).unwrap();
        let s = caps.structure(0).unwrap();
        assert_eq!(s.name(), "video/x-fwht");
        let w = s.get::<gst::IntRange<i32>>("width").unwrap();
        assert_eq!((w.min(), w.max()), (640, 4096));
        let vp9 = coded_caps(NodeFormat::Other(fourcc(b"VP90")), None).unwrap();
        assert_eq!(vp9.structure(0).unwrap().name(), "video/x-vp9");
        assert!(coded_caps(NodeFormat::Other(fourcc(b"XXXX")), None).is_none());
    }

    #[test]
    fn device_caps_list_coded_then_the_raw_formats_gstreamer_names() {
        gst::init().unwrap();
        let caps = device_caps(
            NodeFormat::Known(PixelFormat::Fwht),
            None,
            &[
                NodeFormat::Known(PixelFormat::I420),
                NodeFormat::Other(fourcc(b"HSV3")),
                NodeFormat::Known(PixelFormat::Nv12),
            ],
        );
        assert_eq!(caps.size(), 2, "{caps}");
        assert_eq!(caps.structure(0).unwrap().name(), "video/x-fwht");
        let raw = caps.structure(1).unwrap();
        assert_eq!(raw.name(), "video/x-raw");
        let formats: Vec<String> = raw
            .get::<gst::List>("format")
            .unwrap()
            .iter()
            .map(|v| v.get::<String>().unwrap())
            .collect();
        assert_eq!(formats, ["I420", "NV12"]);
    }

    #[test]
    fn codec_names_follow_the_element_names() {
        assert_eq!(
            codec_name(NodeFormat::Known(PixelFormat::Fwht)),
            Some("fwht")
        );
        assert_eq!(codec_name(NodeFormat::Other(fourcc(b"HEVC"))), Some("h265"));
        assert_eq!(codec_name(NodeFormat::Known(PixelFormat::I420)), None);
        assert_eq!(codec_name(NodeFormat::Other(fourcc(b"ABCD"))), None);
    }
}
