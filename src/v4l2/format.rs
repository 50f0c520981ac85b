//! Formats between the contract and V4L2: FourCCs, `struct v4l2_format`
//! through `sys::PixFormat`, the visible rectangle, and which raw formats a
//! decoded stream allows.

use v4l2r::QueueType;
use v4l2r::bindings;

use crate::m2m::layout::RawLayoutInfo;
use crate::m2m::{Colorimetry, Format, M2mError, PixelFormat, QueueKind};
use crate::sys::{PixFormat, PlanePixFormat};

/// The V4L2 buffer type of `queue`.
pub(super) fn queue_type(queue: QueueKind, mplane: bool) -> QueueType {
    match (queue, mplane) {
        (QueueKind::Output, false) => QueueType::VideoOutput,
        (QueueKind::Output, true) => QueueType::VideoOutputMplane,
        (QueueKind::Capture, false) => QueueType::VideoCapture,
        (QueueKind::Capture, true) => QueueType::VideoCaptureMplane,
    }
}

/// A FourCC as text, for messages.
pub(super) fn fourcc_name(code: u32) -> String {
    code.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// The contract's format for a driver FourCC, including the deprecated
/// 32-bit RGB codes some drivers still pick first (vicodec decodes a 4-byte
/// RGB stream to `BGR4` unless told otherwise): `BGR4` is laid out as
/// `XR24` (B, G, R, X) and `RGB4` as `BX24` (X, R, G, B).
pub(super) fn known_format(code: u32) -> Option<PixelFormat> {
    use crate::m2m::format::fourcc;
    PixelFormat::from_fourcc(code).or(if code == fourcc(b"BGR4") {
        Some(PixelFormat::Xbgr32)
    } else if code == fourcc(b"RGB4") {
        Some(PixelFormat::Xrgb32)
    } else {
        None
    })
}

/// The `PixFormat` to ask the driver for `format`.
pub(super) fn to_pix(format: &Format) -> PixFormat {
    let bytesperline = format.planes.first().map_or(0, |p| p.stride) as u32;
    PixFormat {
        width: format.width,
        height: format.height,
        pixelformat: format.pixelformat.fourcc(),
        field: bindings::v4l2_field_V4L2_FIELD_NONE,
        colorspace: format.colorimetry.colorspace,
        ycbcr_enc: format.colorimetry.ycbcr_enc,
        quantization: format.colorimetry.quantization,
        xfer_func: format.colorimetry.xfer_func,
        planes: vec![PlanePixFormat {
            bytesperline,
            sizeimage: u32::try_from(format.size).unwrap_or(u32::MAX),
        }],
    }
}

/// The contract's format for what the driver reports on `queue`: `pix` (the
/// coded size and layout) and the visible size (`visible`, from the
/// selection API, or the coded size where the driver has none).
pub(super) fn from_pix(
    queue: QueueKind,
    pix: &PixFormat,
    visible: Option<(u32, u32)>,
) -> Result<Format, M2mError> {
    let invalid = |reason: String| M2mError::InvalidFormat { queue, reason };
    let Some(pixelformat) = known_format(pix.pixelformat) else {
        return Err(invalid(format!(
            "the driver uses {}, a format this plugin does not know",
            fourcc_name(pix.pixelformat)
        )));
    };
    let plane = match pix.planes.as_slice() {
        [p] => *p,
        [] => {
            return Err(invalid("the driver reports no memory plane".into()));
        }
        more => {
            return Err(invalid(format!(
                "{pixelformat} in {} memory planes; only formats in one buffer are supported",
                more.len()
            )));
        }
    };
    let colorimetry = Colorimetry {
        colorspace: pix.colorspace,
        xfer_func: pix.xfer_func,
        ycbcr_enc: pix.ycbcr_enc,
        quantization: pix.quantization,
    };
    let (width, height) = visible
        .filter(|&(w, h)| w > 0 && h > 0 && w <= pix.width && h <= pix.height)
        .unwrap_or((pix.width, pix.height));
    let mut format = if pixelformat.is_coded() {
        Format {
            pixelformat,
            width,
            height,
            planes: Vec::new(),
            size: plane.sizeimage as usize,
            colorimetry,
        }
    } else {
        Format::raw_with_layout(
            pixelformat,
            width,
            height,
            plane.bytesperline as usize,
            pix.height,
            plane.sizeimage as usize,
        )
        .ok_or_else(|| {
            invalid(format!(
                "the driver's {pixelformat} layout (bytesperline {}, {} rows, sizeimage {}) \
                 cannot hold {width}x{height}",
                plane.bytesperline, pix.height, plane.sizeimage
            ))
        })?
    };
    format.colorimetry = colorimetry;
    Ok(format)
}

/// Colour families: a decoder converts within one, never across.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Yuv,
    Rgb,
    Grey,
}

fn family(p: PixelFormat) -> Option<Family> {
    use PixelFormat as P;
    match p {
        P::I420 | P::Yv12 | P::Nv12 | P::Nv21 | P::Yuv422p | P::Nv16 | P::Yuyv | P::Uyvy => {
            Some(Family::Yuv)
        }
        P::Rgb24 | P::Bgr24 | P::Xbgr32 | P::Xrgb32 | P::Rgbx32 | P::Bgrx32 => Some(Family::Rgb),
        P::Grey => Some(Family::Grey),
        P::Fwht | P::H264 | P::Hevc | P::Vp8 | P::Vp9 => None,
    }
}

/// The raw formats of `offered` a stream decoded to `chosen` (the driver's
/// own pick at the source change) can be written in: the same colour family
/// and chroma subsampling, `chosen` first. Some drivers (vicodec) list every
/// format they know on CAPTURE until it streams, including ones that would
/// make them raise the source change again, so the list is filtered here.
pub(super) fn compatible_formats(chosen: PixelFormat, offered: &[PixelFormat]) -> Vec<PixelFormat> {
    // Chroma subsampling, and for RGB the bytes per pixel (3 and 4 bytes
    // are streams of 3 and 4 components, which a decoder does not mix).
    let subsampling = |p: PixelFormat| {
        RawLayoutInfo::of(p).map(|i| {
            let bpp = if family(p) == Some(Family::Rgb) {
                i.bytesperline_mult
            } else {
                0
            };
            (i.width_div, i.height_div, bpp)
        })
    };
    let mut out = vec![chosen];
    for &p in offered {
        if p != chosen
            && family(p).is_some()
            && family(p) == family(chosen)
            && subsampling(p) == subsampling(chosen)
        {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_formats_become_contract_formats() {
        let raw = Format::raw(PixelFormat::I420, 1920, 1080).unwrap();
        let pix = to_pix(&raw);
        assert_eq!(pix.planes[0].bytesperline, 1920);
        // The driver reports the coded size; the visible one comes from the selection.
        let mut coded = pix.clone();
        coded.height = 1088;
        let f = from_pix(QueueKind::Capture, &coded, Some((1920, 1080))).unwrap();
        assert_eq!(f, raw);
        let f = from_pix(QueueKind::Capture, &coded, None).unwrap();
        assert_eq!((f.width, f.height), (1920, 1088));

        let mut two = coded.clone();
        two.planes.push(two.planes[0]);
        let e = from_pix(QueueKind::Capture, &two, None).unwrap_err();
        assert!(e.to_string().contains("2 memory planes"), "{e}");
        let mut unknown = coded;
        unknown.pixelformat = u32::from_le_bytes(*b"SFWH");
        let e = from_pix(QueueKind::Output, &unknown, None).unwrap_err();
        assert!(e.to_string().contains("SFWH"), "{e}");
    }

    #[test]
    fn a_4_2_0_stream_is_not_offered_as_4_2_2_or_rgb() {
        use PixelFormat as P;
        let all = [
            P::Yuyv,
            P::I420,
            P::Yv12,
            P::Nv12,
            P::Nv16,
            P::Rgb24,
            P::Grey,
        ];
        assert_eq!(
            compatible_formats(P::I420, &all),
            vec![P::I420, P::Yv12, P::Nv12]
        );
        assert_eq!(compatible_formats(P::Bgr24, &all), vec![P::Bgr24, P::Rgb24]);
        let rgb = [P::Rgb24, P::Xrgb32, P::Xbgr32, P::Bgr24, P::Bgrx32];
        assert_eq!(
            compatible_formats(P::Xbgr32, &rgb),
            vec![P::Xbgr32, P::Xrgb32, P::Bgrx32]
        );
        assert_eq!(known_format(u32::from_le_bytes(*b"BGR4")), Some(P::Xbgr32));
    }
}
