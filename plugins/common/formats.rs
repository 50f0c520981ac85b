//! Translation between the driver contract's formats ([`crate::m2m`]) and
//! GStreamer's: pixel formats, caps, [`gst_video::VideoInfo`] /
//! [`gst_video::VideoMeta`] layouts, and colorimetry.
//!
//! # Pixel formats
//!
//! [`video_format`] and [`pixel_format`] map every raw [`PixelFormat`] to one
//! [`gst_video::VideoFormat`] and back. Both sides name formats by memory
//! byte order except V4L2's 32-bit RGB FourCCs, whose names describe a
//! little-endian word: `XR24` (V4L2 XBGR32) is B,G,R,X in memory, GStreamer's
//! `BGRx`. Coded formats have no `VideoFormat` (`None`).
//!
//! # Layouts
//!
//! A contract [`Format`] is one buffer holding every plane at the offsets and
//! strides of [`Format::planes`] (vicodec's layout: coded size rounded up to 8
//! or 16, padding rows included). [`video_info`] describes exactly that buffer
//! to GStreamer, [`MetaLayout`] is the same as offsets/strides for a
//! [`gst_video::VideoMeta`], and [`layout_matches`] / [`buffer_layout_matches`]
//! answer the reverse question: does a frame upstream describes with its own
//! `VideoInfo` (or `VideoMeta`) already have the contract's layout, so that it
//! can be queued without a copy?
//!
//! # Colorimetry
//!
//! V4L2 describes colour with four enums (`colorspace`, `xfer_func`,
//! `ycbcr_enc`, `quantization`; values from `linux/videodev2.h`), each of the
//! last three `DEFAULT` (0) meaning "what the colorspace implies".
//! [`colorimetry_to_gst`] resolves the defaults the way the kernel's
//! `V4L2_MAP_*_DEFAULT` macros do and then maps each field, as GStreamer's own
//! v4l2 plugin does (`gst_v4l2_object_get_colorspace`), with one difference:
//! it is total. GStreamer's version fails on `V4L2_COLORSPACE_DEFAULT`, the
//! deprecated `BT878`, `DCI_P3` and any unknown value, and a failed mapping
//! leaves the v4l2 elements without colorimetry for the format; here every
//! input maps to something sensible (unknown fields count as `DEFAULT`, an
//! unknown colorspace is guessed from the format and size like an unset one,
//! a transfer GStreamer cannot express becomes `Unknown`).
//!
//! [`colorimetry_from_gst`] goes the other way (GStreamer's
//! `gst_v4l2_object_set_format_full`), again total, and writes `DEFAULT` for
//! every field that equals what the chosen colorspace implies: `bt709` YUV
//! caps become `REC709, 0, 0, 0`, exactly what vicodec writes in its FWHT
//! headers, and `sRGB` RGB caps become `SRGB, 0, 0, 0`.
//!
//! sRGB: V4L2 `SRGB` is BT.709 primaries with the sRGB transfer; on an RGB
//! format it is GStreamer's `sRGB` (`1:1:7:1`), on a YUV format it means BT.601
//! limited-range YCbCr of sRGB content (`2:4:7:1`); the full-range variant is
//! V4L2 `JPEG` (`1:4:7:1`). All three map both ways.

use gst::glib;
use gst_video::{
    VideoColorMatrix, VideoColorPrimaries, VideoColorRange, VideoColorimetry, VideoFormat,
    VideoTransferFunction,
};

use crate::m2m::{Colorimetry, Format, PixelFormat, PlaneLayout};

/// Largest width and height the raw caps built here allow.
pub(crate) const MAX_CAPS_DIM: i32 = 8192;

/// The GStreamer video format of a raw contract format; `None` for coded ones.
pub(crate) fn video_format(pixelformat: PixelFormat) -> Option<VideoFormat> {
    use PixelFormat as P;
    Some(match pixelformat {
        P::I420 => VideoFormat::I420,
        P::Yv12 => VideoFormat::Yv12,
        P::Nv12 => VideoFormat::Nv12,
        P::Nv21 => VideoFormat::Nv21,
        P::Yuv422p => VideoFormat::Y42b,
        P::Nv16 => VideoFormat::Nv16,
        P::Yuyv => VideoFormat::Yuy2,
        P::Uyvy => VideoFormat::Uyvy,
        P::Grey => VideoFormat::Gray8,
        P::Rgb24 => VideoFormat::Rgb,
        P::Bgr24 => VideoFormat::Bgr,
        P::Xbgr32 => VideoFormat::Bgrx,
        P::Xrgb32 => VideoFormat::Xrgb,
        P::Rgbx32 => VideoFormat::Rgbx,
        P::Bgrx32 => VideoFormat::Xbgr,
        P::Fwht | P::H264 | P::Hevc | P::Vp8 | P::Vp9 => return None,
    })
}

/// The contract format of a GStreamer video format; `None` when the contract
/// has no such format.
pub(crate) fn pixel_format(format: VideoFormat) -> Option<PixelFormat> {
    PixelFormat::ALL
        .iter()
        .copied()
        .find(|&p| video_format(p) == Some(format))
}

/// True for the contract's RGB formats (their colorimetry has no YCbCr matrix
/// and defaults to full range).
pub(crate) fn is_rgb(pixelformat: PixelFormat) -> bool {
    use PixelFormat as P;
    matches!(
        pixelformat,
        P::Rgb24 | P::Bgr24 | P::Xbgr32 | P::Xrgb32 | P::Rgbx32 | P::Bgrx32
    )
}

/// `video/x-raw` caps for the raw formats among `formats`, in that order
/// (order is preference), any size from 1x1 to [`MAX_CAPS_DIM`] and any
/// framerate. Coded formats in the list are left out; empty caps when no raw
/// format is left.
pub(crate) fn raw_caps(formats: &[PixelFormat]) -> gst::Caps {
    let mut video_formats: Vec<VideoFormat> = Vec::new();
    for f in formats.iter().filter_map(|&p| video_format(p)) {
        if !video_formats.contains(&f) {
            video_formats.push(f);
        }
    }
    if video_formats.is_empty() {
        return gst::Caps::new_empty();
    }
    gst_video::VideoCapsBuilder::new()
        .format_list(video_formats)
        .width_range(1..=MAX_CAPS_DIM)
        .height_range(1..=MAX_CAPS_DIM)
        .framerate_range(gst::Fraction::new(0, 1)..=gst::Fraction::new(i32::MAX, 1))
        .build()
}

/// [`raw_caps`] with the `memory:DMABuf` caps feature: frames whose memory
/// is a real dma-buf (GstDmaBufMemory), for consumers that import it.
pub(crate) fn raw_dmabuf_caps(formats: &[PixelFormat]) -> gst::Caps {
    let mut caps = raw_caps(formats);
    if let Some(caps) = caps.get_mut() {
        caps.set_features_simple(Some(gst::CapsFeatures::new([
            gst_allocators::CAPS_FEATURE_MEMORY_DMABUF,
        ])));
    }
    caps
}

/// Name of the FWHT bitstream media type (as GStreamer's v4l2 plugin names
/// `V4L2_PIX_FMT_FWHT`).
pub(crate) const FWHT_MEDIA_TYPE: &str = "video/x-fwht";

/// `video/x-fwht` caps, with `width` and `height` when the size is known.
pub(crate) fn fwht_caps(size: Option<(u32, u32)>) -> gst::Caps {
    let mut builder = gst::Caps::builder(FWHT_MEDIA_TYPE);
    if let Some((w, h)) = size {
        // FWHT sizes are at most 16384 (`m2m::layout::MAX_DIM`); saturate
        // anyway rather than wrap.
        let clamp = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        builder = builder.field("width", clamp(w)).field("height", clamp(h));
    }
    builder.build()
}

/// Why a contract [`Format`] cannot be described to GStreamer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("{0} is a coded format: it has no raw video layout")]
    NotRaw(PixelFormat),
    #[error("{format} has {expected} planes in GStreamer but the contract format has {found}")]
    PlaneCount {
        format: PixelFormat,
        expected: usize,
        found: usize,
    },
    #[error("plane {plane} stride {stride} does not fit a GStreamer stride (i32)")]
    StrideTooLarge { plane: usize, stride: usize },
    #[error("plane {plane} ends at byte {end} but the buffer holds {size} bytes")]
    PlaneOutOfBuffer {
        plane: usize,
        end: usize,
        size: usize,
    },
    #[error("GStreamer refused a {width}x{height} {format} video info: {reason}")]
    VideoInfo {
        format: PixelFormat,
        width: u32,
        height: u32,
        reason: String,
    },
}

/// Per-plane offsets and strides of a contract [`Format`], ready for
/// [`gst_video::VideoMeta::add_full`] (one entry per plane, same order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaLayout {
    pub video_format: VideoFormat,
    pub width: u32,
    pub height: u32,
    pub offsets: Vec<usize>,
    pub strides: Vec<i32>,
}

impl MetaLayout {
    /// The layout of `format`, checked: a raw format, as many planes as
    /// GStreamer's format has, strides that fit an `i32`, and every plane
    /// (`offset + stride * rows`) inside `format.size`.
    pub(crate) fn of(format: &Format) -> Result<MetaLayout, FormatError> {
        let pf = format.pixelformat;
        let video_format = video_format(pf).ok_or(FormatError::NotRaw(pf))?;
        let expected = gst_video::VideoFormatInfo::from_format(video_format).n_planes() as usize;
        if format.planes.len() != expected {
            return Err(FormatError::PlaneCount {
                format: pf,
                expected,
                found: format.planes.len(),
            });
        }
        let mut offsets = Vec::with_capacity(expected);
        let mut strides = Vec::with_capacity(expected);
        for (plane, p) in format.planes.iter().enumerate() {
            let stride = i32::try_from(p.stride).map_err(|_| FormatError::StrideTooLarge {
                plane,
                stride: p.stride,
            })?;
            let end = p
                .stride
                .checked_mul(p.rows)
                .and_then(|n| n.checked_add(p.offset))
                .unwrap_or(usize::MAX);
            if end > format.size {
                return Err(FormatError::PlaneOutOfBuffer {
                    plane,
                    end,
                    size: format.size,
                });
            }
            offsets.push(p.offset);
            strides.push(stride);
        }
        Ok(MetaLayout {
            video_format,
            width: format.width,
            height: format.height,
            offsets,
            strides,
        })
    }

    /// Adds a [`gst_video::VideoMeta`] with this layout to `buffer`.
    pub(crate) fn add_to<'a>(
        &self,
        buffer: &'a mut gst::BufferRef,
    ) -> Result<gst::MetaRefMut<'a, gst_video::VideoMeta, gst::meta::Standalone>, glib::BoolError>
    {
        gst_video::VideoMeta::add_full(
            buffer,
            gst_video::VideoFrameFlags::empty(),
            self.video_format,
            self.width,
            self.height,
            &self.offsets,
            &self.strides,
        )
    }
}

/// A [`gst_video::VideoInfo`] describing a buffer of `format`: its visible
/// size, the contract's offsets and strides, `size` = `format.size` (padding
/// rows included) and the colorimetry of [`colorimetry_to_gst`]. Framerate and
/// pixel aspect ratio are left at their defaults; set them with
/// `VideoInfo::builder_from_info`.
pub(crate) fn video_info(format: &Format) -> Result<gst_video::VideoInfo, FormatError> {
    let layout = MetaLayout::of(format)?;
    let colorimetry = colorimetry_to_gst(
        format.colorimetry,
        format.pixelformat,
        format.width,
        format.height,
    );
    gst_video::VideoInfo::builder(layout.video_format, format.width, format.height)
        .offset(&layout.offsets)
        .stride(&layout.strides)
        .size(format.size)
        .colorimetry(&colorimetry)
        .build()
        .map_err(|e| FormatError::VideoInfo {
            format: format.pixelformat,
            width: format.width,
            height: format.height,
            reason: e.to_string(),
        })
}

/// `format` (pixel format, visible size, colorimetry) in GStreamer's default
/// layout for it (`gst_video_info_set_format`: no padding rows, strides
/// rounded as GStreamer rounds them): what a consumer without GstVideoMeta
/// reads. Each plane holds the rows of its components at the visible height.
pub(crate) fn default_layout(format: &Format) -> Result<Format, FormatError> {
    let pf = format.pixelformat;
    let video_format = video_format(pf).ok_or(FormatError::NotRaw(pf))?;
    let info = gst_video::VideoInfo::builder(video_format, format.width, format.height)
        .build()
        .map_err(|e| FormatError::VideoInfo {
            format: pf,
            width: format.width,
            height: format.height,
            reason: e.to_string(),
        })?;
    let finfo = info.format_info();
    let planes = (0..finfo.n_planes() as usize)
        .map(|p| {
            // The first component stored in this plane decides its rows.
            let rows = finfo
                .plane()
                .iter()
                .take(finfo.n_components() as usize)
                .position(|&cp| cp as usize == p)
                .map_or(format.height, |c| {
                    finfo.scale_height(c as u8, format.height)
                });
            PlaneLayout {
                offset: info.offset()[p],
                stride: info.stride()[p].unsigned_abs() as usize,
                rows: rows as usize,
            }
        })
        .collect();
    Ok(Format {
        planes,
        size: info.size(),
        ..format.clone()
    })
}

/// How a GStreamer frame description differs from the contract's layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LayoutMismatch {
    #[error("format: expected {expected:?} (V4L2 {pixelformat}), found {found:?}")]
    Format {
        pixelformat: PixelFormat,
        expected: Option<VideoFormat>,
        found: VideoFormat,
    },
    #[error("visible size: expected {expected:?}, found {found:?}")]
    Size {
        expected: (u32, u32),
        found: (u32, u32),
    },
    #[error("plane count: expected {expected}, found {found}")]
    PlaneCount { expected: usize, found: usize },
    #[error(
        "plane {plane}: expected offset {expected_offset} stride {expected_stride}, \
         found offset {found_offset} stride {found_stride}"
    )]
    Plane {
        plane: usize,
        expected_offset: usize,
        expected_stride: usize,
        found_offset: usize,
        found_stride: i32,
    },
    #[error(
        "buffer size: expected at least {expected} bytes (padding rows included), found {found}"
    )]
    TooSmall { expected: usize, found: usize },
}

fn check_layout(
    format: &Format,
    video_format: VideoFormat,
    size: (u32, u32),
    offsets: &[usize],
    strides: &[i32],
    bytes: usize,
) -> Result<(), LayoutMismatch> {
    let expected = self::video_format(format.pixelformat);
    if expected != Some(video_format) {
        return Err(LayoutMismatch::Format {
            pixelformat: format.pixelformat,
            expected,
            found: video_format,
        });
    }
    if size != (format.width, format.height) {
        return Err(LayoutMismatch::Size {
            expected: (format.width, format.height),
            found: size,
        });
    }
    if offsets.len() != format.planes.len() || strides.len() != format.planes.len() {
        return Err(LayoutMismatch::PlaneCount {
            expected: format.planes.len(),
            found: offsets.len().min(strides.len()),
        });
    }
    for (plane, ((p, &offset), &stride)) in
        format.planes.iter().zip(offsets).zip(strides).enumerate()
    {
        if p.offset != offset || usize::try_from(stride).ok() != Some(p.stride) {
            return Err(LayoutMismatch::Plane {
                plane,
                expected_offset: p.offset,
                expected_stride: p.stride,
                found_offset: offset,
                found_stride: stride,
            });
        }
    }
    if bytes < format.size {
        return Err(LayoutMismatch::TooSmall {
            expected: format.size,
            found: bytes,
        });
    }
    Ok(())
}

/// Whether frames described by `info` (typically from upstream caps) have
/// exactly the layout of `format`: same format and visible size, same offset
/// and stride for every plane, and at least `format.size` bytes (the contract
/// counts the padding rows the codec reads).
pub(crate) fn layout_matches(
    info: &gst_video::VideoInfo,
    format: &Format,
) -> Result<(), LayoutMismatch> {
    check_layout(
        format,
        info.format(),
        (info.width(), info.height()),
        info.offset(),
        info.stride(),
        info.size(),
    )
}

/// Whether `buffer`, a frame of `info`, can be queued as a buffer of `format`
/// without a copy: its [`gst_video::VideoMeta`] (when it has one, else `info`)
/// gives the contract's offsets and strides, and the buffer holds at least
/// `format.size` bytes. Offsets count from the start of the whole buffer;
/// whether its memory can be handed to the device (one fd-backed memory, say)
/// is for the caller to check.
pub(crate) fn buffer_layout_matches(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    format: &Format,
) -> Result<(), LayoutMismatch> {
    match buffer.meta::<gst_video::VideoMeta>() {
        Some(meta) => check_layout(
            format,
            meta.format(),
            (meta.width(), meta.height()),
            meta.offset(),
            meta.stride(),
            buffer.size(),
        ),
        None => check_layout(
            format,
            info.format(),
            (info.width(), info.height()),
            info.offset(),
            info.stride(),
            buffer.size(),
        ),
    }
}

/// V4L2 colorimetry values (`linux/videodev2.h`).
pub(crate) mod v4l2 {
    pub const COLORSPACE_DEFAULT: u32 = 0;
    pub const COLORSPACE_SMPTE170M: u32 = 1;
    pub const COLORSPACE_SMPTE240M: u32 = 2;
    pub const COLORSPACE_REC709: u32 = 3;
    pub const COLORSPACE_BT878: u32 = 4;
    pub const COLORSPACE_470_SYSTEM_M: u32 = 5;
    pub const COLORSPACE_470_SYSTEM_BG: u32 = 6;
    pub const COLORSPACE_JPEG: u32 = 7;
    pub const COLORSPACE_SRGB: u32 = 8;
    pub const COLORSPACE_OPRGB: u32 = 9;
    pub const COLORSPACE_BT2020: u32 = 10;
    pub const COLORSPACE_RAW: u32 = 11;
    pub const COLORSPACE_DCI_P3: u32 = 12;

    pub const XFER_FUNC_DEFAULT: u32 = 0;
    pub const XFER_FUNC_709: u32 = 1;
    pub const XFER_FUNC_SRGB: u32 = 2;
    pub const XFER_FUNC_OPRGB: u32 = 3;
    pub const XFER_FUNC_SMPTE240M: u32 = 4;
    pub const XFER_FUNC_NONE: u32 = 5;
    pub const XFER_FUNC_DCI_P3: u32 = 6;
    pub const XFER_FUNC_SMPTE2084: u32 = 7;

    pub const YCBCR_ENC_DEFAULT: u32 = 0;
    pub const YCBCR_ENC_601: u32 = 1;
    pub const YCBCR_ENC_709: u32 = 2;
    pub const YCBCR_ENC_XV601: u32 = 3;
    pub const YCBCR_ENC_XV709: u32 = 4;
    pub const YCBCR_ENC_SYCC: u32 = 5;
    pub const YCBCR_ENC_BT2020: u32 = 6;
    pub const YCBCR_ENC_BT2020_CONST_LUM: u32 = 7;
    pub const YCBCR_ENC_SMPTE240M: u32 = 8;

    pub const QUANTIZATION_DEFAULT: u32 = 0;
    pub const QUANTIZATION_FULL_RANGE: u32 = 1;
    pub const QUANTIZATION_LIM_RANGE: u32 = 2;
}

/// The colorspace an unset (or unknown) one stands for: sRGB for RGB formats,
/// SMPTE 170M for standard-definition YUV, Rec. 709 above (GStreamer's guess,
/// the kernel's `V4L2_MAP_COLORSPACE_DEFAULT`).
fn guess_colorspace(rgb: bool, width: u32, height: u32) -> u32 {
    if rgb {
        v4l2::COLORSPACE_SRGB
    } else if width <= 720 && height <= 576 {
        v4l2::COLORSPACE_SMPTE170M
    } else {
        v4l2::COLORSPACE_REC709
    }
}

/// A known, non-default, non-deprecated colorspace (BT878 is SMPTE 170M).
fn resolve_colorspace(colorspace: u32, rgb: bool, width: u32, height: u32) -> u32 {
    match colorspace {
        v4l2::COLORSPACE_BT878 => v4l2::COLORSPACE_SMPTE170M,
        v4l2::COLORSPACE_SMPTE170M..=v4l2::COLORSPACE_DCI_P3 => colorspace,
        v4l2::COLORSPACE_DEFAULT => guess_colorspace(rgb, width, height),
        // A value newer than this table: as if unset.
        _ => guess_colorspace(rgb, width, height),
    }
}

/// `V4L2_MAP_XFER_FUNC_DEFAULT`.
fn default_xfer_func(colorspace: u32) -> u32 {
    match colorspace {
        v4l2::COLORSPACE_OPRGB => v4l2::XFER_FUNC_OPRGB,
        v4l2::COLORSPACE_SMPTE240M => v4l2::XFER_FUNC_SMPTE240M,
        v4l2::COLORSPACE_DCI_P3 => v4l2::XFER_FUNC_DCI_P3,
        v4l2::COLORSPACE_RAW => v4l2::XFER_FUNC_NONE,
        v4l2::COLORSPACE_SRGB | v4l2::COLORSPACE_JPEG => v4l2::XFER_FUNC_SRGB,
        _ => v4l2::XFER_FUNC_709,
    }
}

/// `V4L2_MAP_YCBCR_ENC_DEFAULT`.
fn default_ycbcr_enc(colorspace: u32) -> u32 {
    match colorspace {
        v4l2::COLORSPACE_REC709 | v4l2::COLORSPACE_DCI_P3 => v4l2::YCBCR_ENC_709,
        v4l2::COLORSPACE_BT2020 => v4l2::YCBCR_ENC_BT2020,
        v4l2::COLORSPACE_SMPTE240M => v4l2::YCBCR_ENC_SMPTE240M,
        _ => v4l2::YCBCR_ENC_601,
    }
}

/// `V4L2_MAP_QUANTIZATION_DEFAULT` (the kernel's current rule: full range for
/// RGB and JPEG, limited otherwise).
fn default_quantization(rgb: bool, colorspace: u32) -> u32 {
    if rgb || colorspace == v4l2::COLORSPACE_JPEG {
        v4l2::QUANTIZATION_FULL_RANGE
    } else {
        v4l2::QUANTIZATION_LIM_RANGE
    }
}

/// GStreamer colorimetry of frames of `pixelformat` (`width` x `height`)
/// whose V4L2 format carries `c`. Total: see the module documentation. For a
/// coded `pixelformat` the defaults of YUV content apply.
pub(crate) fn colorimetry_to_gst(
    c: Colorimetry,
    pixelformat: PixelFormat,
    width: u32,
    height: u32,
) -> VideoColorimetry {
    let rgb = is_rgb(pixelformat);
    let cs = resolve_colorspace(c.colorspace, rgb, width, height);

    let quantization = match c.quantization {
        q @ (v4l2::QUANTIZATION_FULL_RANGE | v4l2::QUANTIZATION_LIM_RANGE) => q,
        _ => default_quantization(rgb, cs),
    };
    let range = if quantization == v4l2::QUANTIZATION_FULL_RANGE {
        VideoColorRange::Range0_255
    } else {
        VideoColorRange::Range16_235
    };

    let matrix = if rgb {
        // R'G'B' has no YCbCr matrix; GStreamer wants RGB here.
        VideoColorMatrix::Rgb
    } else {
        let enc = match c.ycbcr_enc {
            e @ v4l2::YCBCR_ENC_601..=v4l2::YCBCR_ENC_SMPTE240M => e,
            _ => default_ycbcr_enc(cs),
        };
        match enc {
            // xvYCC and sYCC use the BT.601 / BT.709 matrices (extended gamut,
            // which GStreamer cannot express).
            v4l2::YCBCR_ENC_709 | v4l2::YCBCR_ENC_XV709 => VideoColorMatrix::Bt709,
            v4l2::YCBCR_ENC_BT2020 | v4l2::YCBCR_ENC_BT2020_CONST_LUM => VideoColorMatrix::Bt2020,
            v4l2::YCBCR_ENC_SMPTE240M => VideoColorMatrix::Smpte240m,
            v4l2::YCBCR_ENC_601 | v4l2::YCBCR_ENC_XV601 | v4l2::YCBCR_ENC_SYCC => {
                VideoColorMatrix::Bt601
            }
            // Not reached: `enc` was resolved to a known value above.
            _ => VideoColorMatrix::Bt601,
        }
    };

    let xfer = match c.xfer_func {
        x @ v4l2::XFER_FUNC_709..=v4l2::XFER_FUNC_SMPTE2084 => x,
        _ => default_xfer_func(cs),
    };
    let transfer = match xfer {
        // The BT.709 curve under the name of each standard using it, so that
        // the result is one of GStreamer's named colorimetries.
        v4l2::XFER_FUNC_709 => match cs {
            v4l2::COLORSPACE_SMPTE170M => VideoTransferFunction::Bt601,
            v4l2::COLORSPACE_BT2020 => VideoTransferFunction::Bt202012,
            _ => VideoTransferFunction::Bt709,
        },
        v4l2::XFER_FUNC_SRGB => VideoTransferFunction::Srgb,
        v4l2::XFER_FUNC_OPRGB => VideoTransferFunction::Adobergb,
        v4l2::XFER_FUNC_SMPTE240M => VideoTransferFunction::Smpte240m,
        v4l2::XFER_FUNC_NONE => VideoTransferFunction::Gamma10,
        v4l2::XFER_FUNC_SMPTE2084 => VideoTransferFunction::Smpte2084,
        // DCI-P3's gamma 2.6 has no GStreamer name.
        _ => VideoTransferFunction::Unknown,
    };

    let primaries = match cs {
        v4l2::COLORSPACE_SMPTE170M => VideoColorPrimaries::Smpte170m,
        v4l2::COLORSPACE_SMPTE240M => VideoColorPrimaries::Smpte240m,
        v4l2::COLORSPACE_470_SYSTEM_M => VideoColorPrimaries::Bt470m,
        v4l2::COLORSPACE_470_SYSTEM_BG => VideoColorPrimaries::Bt470bg,
        v4l2::COLORSPACE_OPRGB => VideoColorPrimaries::Adobergb,
        v4l2::COLORSPACE_BT2020 => VideoColorPrimaries::Bt2020,
        v4l2::COLORSPACE_DCI_P3 => VideoColorPrimaries::Smpterp431,
        // Raw sensor data: explicitly no primaries.
        v4l2::COLORSPACE_RAW => VideoColorPrimaries::Unknown,
        // REC709, SRGB, JPEG.
        _ => VideoColorPrimaries::Bt709,
    };

    VideoColorimetry::new(range, matrix, transfer, primaries)
}

/// V4L2 colorimetry for frames of `pixelformat` (`width` x `height`) that
/// GStreamer describes with `c`. Total: unknown GStreamer fields become
/// `DEFAULT`, unknown primaries are guessed from the format and size; every
/// field equal to the chosen colorspace's default is written as `DEFAULT`.
pub(crate) fn colorimetry_from_gst(
    c: &VideoColorimetry,
    pixelformat: PixelFormat,
    width: u32,
    height: u32,
) -> Colorimetry {
    let rgb = is_rgb(pixelformat);

    let xfer = match c.transfer() {
        VideoTransferFunction::Bt709
        | VideoTransferFunction::Bt601
        | VideoTransferFunction::Bt202010
        | VideoTransferFunction::Bt202012 => v4l2::XFER_FUNC_709,
        VideoTransferFunction::Srgb => v4l2::XFER_FUNC_SRGB,
        VideoTransferFunction::Adobergb => v4l2::XFER_FUNC_OPRGB,
        VideoTransferFunction::Smpte240m => v4l2::XFER_FUNC_SMPTE240M,
        VideoTransferFunction::Gamma10 => v4l2::XFER_FUNC_NONE,
        VideoTransferFunction::Smpte2084 => v4l2::XFER_FUNC_SMPTE2084,
        // Pure gammas other than 1.0, log curves, HLG: V4L2 has no name for
        // them; leave it to the colorspace.
        _ => v4l2::XFER_FUNC_DEFAULT,
    };
    let quantization = match c.range() {
        VideoColorRange::Range0_255 => v4l2::QUANTIZATION_FULL_RANGE,
        VideoColorRange::Range16_235 => v4l2::QUANTIZATION_LIM_RANGE,
        _ => v4l2::QUANTIZATION_DEFAULT,
    };
    let ycbcr_enc = if rgb {
        v4l2::YCBCR_ENC_DEFAULT
    } else {
        match c.matrix() {
            VideoColorMatrix::Bt601 | VideoColorMatrix::Fcc => v4l2::YCBCR_ENC_601,
            VideoColorMatrix::Bt709 => v4l2::YCBCR_ENC_709,
            VideoColorMatrix::Smpte240m => v4l2::YCBCR_ENC_SMPTE240M,
            VideoColorMatrix::Bt2020 => v4l2::YCBCR_ENC_BT2020,
            _ => v4l2::YCBCR_ENC_DEFAULT,
        }
    };

    // The V4L2 colorspaces with BT.709 primaries differ by curve (and, as
    // YUV, by matrix and range): pick the one whose defaults fit best.
    let bt709_colorspace = || {
        if xfer == v4l2::XFER_FUNC_SRGB {
            // sRGB content; as YUV, full-range BT.601 is JPEG's colorspace.
            if !rgb
                && quantization == v4l2::QUANTIZATION_FULL_RANGE
                && ycbcr_enc == v4l2::YCBCR_ENC_601
            {
                v4l2::COLORSPACE_JPEG
            } else {
                v4l2::COLORSPACE_SRGB
            }
        } else if xfer == v4l2::XFER_FUNC_709 || !rgb {
            v4l2::COLORSPACE_REC709
        } else {
            // RGB with another curve: sRGB, as for an unset colorspace.
            v4l2::COLORSPACE_SRGB
        }
    };
    let colorspace = match c.primaries() {
        VideoColorPrimaries::Bt709 => bt709_colorspace(),
        VideoColorPrimaries::Smpte170m => v4l2::COLORSPACE_SMPTE170M,
        VideoColorPrimaries::Smpte240m => v4l2::COLORSPACE_SMPTE240M,
        VideoColorPrimaries::Bt470m => v4l2::COLORSPACE_470_SYSTEM_M,
        VideoColorPrimaries::Bt470bg => v4l2::COLORSPACE_470_SYSTEM_BG,
        VideoColorPrimaries::Adobergb => v4l2::COLORSPACE_OPRGB,
        VideoColorPrimaries::Bt2020 => v4l2::COLORSPACE_BT2020,
        VideoColorPrimaries::Smpterp431 => v4l2::COLORSPACE_DCI_P3,
        // Unknown, film, P3-D65, EBU 3213, XYZ: V4L2 has no colorspace with
        // these primaries; guess as for an unset one.
        _ => match guess_colorspace(rgb, width, height) {
            v4l2::COLORSPACE_SMPTE170M => v4l2::COLORSPACE_SMPTE170M,
            _ => bt709_colorspace(),
        },
    };

    let or_default = |value: u32, default: u32| if value == default { 0 } else { value };
    Colorimetry {
        colorspace,
        xfer_func: or_default(xfer, default_xfer_func(colorspace)),
        ycbcr_enc: or_default(ycbcr_enc, default_ycbcr_enc(colorspace)),
        quantization: or_default(quantization, default_quantization(rgb, colorspace)),
    }
}

#[cfg(test)]
mod tests;
