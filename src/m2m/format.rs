//! Formats as the V4L2 stateful codec interface sees them: a pixel format
//! (FourCC), a visible size, and for raw formats the memory layout of the planes
//! inside one buffer (`bytesperline`/`sizeimage` in V4L2 terms).

use std::fmt;

/// Pixel formats understood by the contract. The discriminants are the V4L2
/// FourCC codes, so the kernel backend can pass them straight through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PixelFormat {
    /// Coded: the kernel vicodec FWHT bitstream (`FWHT`).
    Fwht = fourcc(b"FWHT"),
    /// Coded: H.264 Annex-B byte stream (`H264`).
    H264 = fourcc(b"H264"),
    /// Coded: H.265/HEVC Annex-B byte stream (`HEVC`). Kernel nodes only.
    Hevc = fourcc(b"HEVC"),
    /// Coded: VP8 frames (`VP80`). Kernel nodes only.
    Vp8 = fourcc(b"VP80"),
    /// Coded: VP9 frames (`VP90`). Kernel nodes only.
    Vp9 = fourcc(b"VP90"),
    /// 4:2:0 planar Y, U, V (`YU12`).
    I420 = fourcc(b"YU12"),
    /// 4:2:0 planar Y, V, U (`YV12`).
    Yv12 = fourcc(b"YV12"),
    /// 4:2:0 Y plane + interleaved UV plane (`NV12`).
    Nv12 = fourcc(b"NV12"),
    /// 4:2:0 Y plane + interleaved VU plane (`NV21`).
    Nv21 = fourcc(b"NV21"),
    /// 4:2:2 planar (`422P`).
    Yuv422p = fourcc(b"422P"),
    /// 4:2:2 Y plane + interleaved UV (`NV16`).
    Nv16 = fourcc(b"NV16"),
    /// 4:2:2 packed Y0 U Y1 V (`YUYV`).
    Yuyv = fourcc(b"YUYV"),
    /// 4:2:2 packed U Y0 V Y1 (`UYVY`).
    Uyvy = fourcc(b"UYVY"),
    /// 8-bit greyscale (`GREY`).
    Grey = fourcc(b"GREY"),
    /// 24-bit R, G, B in memory order (`RGB3`).
    Rgb24 = fourcc(b"RGB3"),
    /// 24-bit B, G, R in memory order (`BGR3`).
    Bgr24 = fourcc(b"BGR3"),
    /// V4L2 XBGR32 (`XR24`): 32-bit B, G, R, X in memory order (GStreamer BGRx).
    Xbgr32 = fourcc(b"XR24"),
    /// V4L2 XRGB32 (`BX24`): 32-bit X, R, G, B in memory order (GStreamer xRGB).
    Xrgb32 = fourcc(b"BX24"),
    /// V4L2 RGBX32 (`XB24`): 32-bit R, G, B, X in memory order (GStreamer RGBx).
    Rgbx32 = fourcc(b"XB24"),
    /// V4L2 BGRX32 (`RX24`): 32-bit X, B, G, R in memory order (GStreamer xBGR).
    Bgrx32 = fourcc(b"RX24"),
}

/// Packs four ASCII bytes into a little-endian FourCC, as `v4l2_fourcc()` does.
pub const fn fourcc(c: &[u8; 4]) -> u32 {
    (c[0] as u32) | ((c[1] as u32) << 8) | ((c[2] as u32) << 16) | ((c[3] as u32) << 24)
}

impl PixelFormat {
    /// Every format of the contract, coded ones first.
    pub const ALL: &'static [PixelFormat] = &[
        PixelFormat::Fwht,
        PixelFormat::H264,
        PixelFormat::Hevc,
        PixelFormat::Vp8,
        PixelFormat::Vp9,
        PixelFormat::I420,
        PixelFormat::Yv12,
        PixelFormat::Nv12,
        PixelFormat::Nv21,
        PixelFormat::Yuv422p,
        PixelFormat::Nv16,
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Grey,
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Xbgr32,
        PixelFormat::Xrgb32,
        PixelFormat::Rgbx32,
        PixelFormat::Bgrx32,
    ];

    /// The V4L2 FourCC code.
    pub const fn fourcc(self) -> u32 {
        self as u32
    }

    /// Looks a FourCC up; `None` for codes the contract does not know.
    pub fn from_fourcc(code: u32) -> Option<PixelFormat> {
        Self::ALL.iter().copied().find(|f| f.fourcc() == code)
    }

    /// True for compressed (bitstream) formats.
    pub const fn is_coded(self) -> bool {
        matches!(
            self,
            PixelFormat::Fwht
                | PixelFormat::H264
                | PixelFormat::Hevc
                | PixelFormat::Vp8
                | PixelFormat::Vp9
        )
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.fourcc().to_le_bytes();
        write!(f, "{}", String::from_utf8_lossy(&b))
    }
}

/// Colour description carried through from the OUTPUT format to the CAPTURE
/// format (V4L2 `colorspace`, `xfer_func`, `ycbcr_enc`, `quantization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Colorimetry {
    pub colorspace: u32,
    pub xfer_func: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
}

/// One plane of a raw frame inside a single buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlaneLayout {
    /// Byte offset of the plane's first row from the start of the buffer.
    pub offset: usize,
    /// Bytes from one row to the next (`bytesperline`).
    pub stride: usize,
    /// Number of rows stored (coded height of this plane, padding rows included).
    pub rows: usize,
}

/// A format on one queue: pixel format, visible size, buffer layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Format {
    pub pixelformat: PixelFormat,
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
    /// Raw formats: every plane, in order, within one buffer. Empty for coded formats.
    pub planes: Vec<PlaneLayout>,
    /// Bytes one buffer must hold (`sizeimage`).
    pub size: usize,
    pub colorimetry: Colorimetry,
}
