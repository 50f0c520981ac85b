//! Buffer layouts of raw and coded formats, computed exactly as the kernel's
//! vicodec driver computes them (`vidioc_try_fmt` and `total_frame_size`).
//!
//! A raw frame is one buffer (V4L2 single-planar API): the coded width and
//! height are the visible size rounded up so that every plane is a multiple of
//! 8 pixels in both directions (`round_up(dim, 8 * chroma_div)`); the luma
//! `bytesperline` is `coded_width * bytes per luma pixel`; planar chroma planes
//! follow the luma plane, each with half the luma stride; semi-planar chroma
//! (NV12, NV16, ...) has the luma stride. Padding rows and columns are part of
//! the buffer and the FWHT encoder reads them.
//!
//! Unlike vicodec, the size is not clamped to 640..4096 x 360..2160.

use super::format::{Colorimetry, Format, PixelFormat, PlaneLayout};

/// Size of the FWHT frame header that precedes every compressed frame.
pub const FWHT_HEADER_SIZE: usize = 44;

/// Memory-layout facts of one raw format, as in vicodec's pixel-format table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawLayoutInfo {
    /// `bytesperline = coded_width * bytesperline_mult` (luma plane).
    pub bytesperline_mult: usize,
    /// `sizeimage = coded_width * coded_height * mult / div`.
    pub sizeimage_mult: usize,
    pub sizeimage_div: usize,
    /// Chroma subsampling: horizontal and vertical divisors.
    pub width_div: u32,
    pub height_div: u32,
    /// Memory planes inside the buffer (1 packed, 2 semi-planar, 3 planar).
    pub planes: usize,
}

impl RawLayoutInfo {
    /// The layout facts of `pixelformat`, `None` for coded formats.
    pub(crate) const fn of(pixelformat: PixelFormat) -> Option<RawLayoutInfo> {
        use PixelFormat as P;
        let (bytesperline_mult, sizeimage_mult, sizeimage_div, width_div, height_div, planes) =
            match pixelformat {
                P::I420 | P::Yv12 => (1, 3, 2, 2, 2, 3),
                P::Yuv422p => (1, 2, 1, 2, 1, 3),
                P::Nv12 | P::Nv21 => (1, 3, 2, 2, 2, 2),
                P::Nv16 => (1, 2, 1, 2, 1, 2),
                P::Yuyv | P::Uyvy => (2, 2, 1, 2, 1, 1),
                P::Rgb24 | P::Bgr24 => (3, 3, 1, 1, 1, 1),
                P::Xbgr32 | P::Xrgb32 | P::Rgbx32 | P::Bgrx32 => (4, 4, 1, 1, 1, 1),
                P::Grey => (1, 1, 1, 1, 1, 1),
                P::Fwht | P::H264 | P::Hevc | P::Vp8 | P::Vp9 => return None,
            };
        Some(RawLayoutInfo {
            bytesperline_mult,
            sizeimage_mult,
            sizeimage_div,
            width_div,
            height_div,
            planes,
        })
    }
}

/// `round_up(dim, 8 * div)` as vicodec's `vic_round_dim`.
pub(crate) const fn vic_round_dim(dim: u32, div: u32) -> u32 {
    let m = 8 * div;
    dim.div_ceil(m) * m
}

/// The planes of one buffer: luma (`stride` x `rows`) first, then the chroma
/// planes right after it: one semi-planar plane at the luma stride, or two
/// planar ones at half of it, each `chroma_rows` high.
fn plane_layouts(
    nplanes: usize,
    stride: usize,
    rows: usize,
    chroma_rows: usize,
) -> Vec<PlaneLayout> {
    let luma_size = stride * rows;
    let mut planes = vec![PlaneLayout {
        offset: 0,
        stride,
        rows,
    }];
    match nplanes {
        2 => planes.push(PlaneLayout {
            offset: luma_size,
            stride,
            rows: chroma_rows,
        }),
        3 => {
            let cstride = stride / 2;
            planes.push(PlaneLayout {
                offset: luma_size,
                stride: cstride,
                rows: chroma_rows,
            });
            planes.push(PlaneLayout {
                offset: luma_size + cstride * chroma_rows,
                stride: cstride,
                rows: chroma_rows,
            });
        }
        _ => {}
    }
    planes
}

impl Format {
    /// The layout of a raw frame of `width` x `height` visible pixels, exactly as
    /// vicodec lays it out: coded size rounded up to 8 (16 in subsampled
    /// directions), `bytesperline`, `sizeimage` and the plane offsets.
    ///
    /// `None` for coded formats, a zero size, or a size whose buffer would not
    /// fit in memory. Colorimetry is left at its default (all zero).
    pub fn raw(pixelformat: PixelFormat, width: u32, height: u32) -> Option<Format> {
        let info = RawLayoutInfo::of(pixelformat)?;
        if width == 0 || height == 0 || width > MAX_DIM || height > MAX_DIM {
            return None;
        }
        let coded_w = vic_round_dim(width, info.width_div) as usize;
        let coded_h = vic_round_dim(height, info.height_div) as usize;
        let stride = coded_w * info.bytesperline_mult;
        let chroma_rows = coded_h / info.height_div as usize;
        let planes = plane_layouts(info.planes, stride, coded_h, chroma_rows);
        Some(Format {
            pixelformat,
            width,
            height,
            planes,
            size: coded_w * coded_h * info.sizeimage_mult / info.sizeimage_div,
            colorimetry: Colorimetry::default(),
        })
    }

    /// The layout of a raw frame as a driver reports it in one buffer: the
    /// luma `bytesperline`, the stored (coded) luma height and `sizeimage`.
    /// The chroma planes follow the luma plane as in [`Format::raw`] (planar
    /// chroma at half the luma stride, semi-planar at the luma stride).
    ///
    /// `None` for coded formats, or when the numbers cannot hold a
    /// `width` x `height` frame (stride narrower than a row, fewer stored
    /// rows than visible ones, planes past `sizeimage`).
    pub fn raw_with_layout(
        pixelformat: PixelFormat,
        width: u32,
        height: u32,
        stride: usize,
        coded_height: u32,
        sizeimage: usize,
    ) -> Option<Format> {
        let info = RawLayoutInfo::of(pixelformat)?;
        if width == 0 || height == 0 || width > MAX_DIM || coded_height > MAX_DIM {
            return None;
        }
        if stride < width as usize * info.bytesperline_mult || coded_height < height {
            return None;
        }
        let rows = coded_height as usize;
        // The luma plane's size must not overflow (the chroma planes are smaller).
        stride.checked_mul(rows)?;
        let chroma_rows = rows / info.height_div as usize;
        let planes = plane_layouts(info.planes, stride, rows, chroma_rows);
        let end = planes
            .iter()
            .map(|p| p.offset + p.stride * p.rows)
            .max()
            .unwrap_or(0);
        if end > sizeimage {
            return None;
        }
        Some(Format {
            pixelformat,
            width,
            height,
            planes,
            size: sizeimage,
            colorimetry: Colorimetry::default(),
        })
    }

    /// The format of a bitstream queue for frames of `width` x `height`: no
    /// planes, and `size` = what vicodec's TRY_FMT gives a FWHT queue, i.e.
    /// `round_up(w, 8) * round_up(h, 8) * 4 + 44` bytes, far above the largest
    /// frame the encoder can produce. Other coded formats get the same budget.
    pub fn coded(pixelformat: PixelFormat, width: u32, height: u32) -> Format {
        let w = vic_round_dim(width.min(MAX_DIM), 1) as usize;
        let h = vic_round_dim(height.min(MAX_DIM), 1) as usize;
        Format {
            pixelformat,
            width,
            height,
            planes: Vec::new(),
            size: w * h * 4 + FWHT_HEADER_SIZE,
            colorimetry: Colorimetry::default(),
        }
    }
}

/// Largest width or height a layout is computed for (keeps every size
/// computation far from overflow on 32-bit targets too).
pub const MAX_DIM: u32 = 16384;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i420_1080p_is_coded_1088() {
        let f = Format::raw(PixelFormat::I420, 1920, 1080).unwrap();
        assert_eq!(f.planes[0].stride, 1920);
        assert_eq!(f.planes[0].rows, 1088);
        assert_eq!(f.planes[1].offset, 1920 * 1088);
        assert_eq!(f.planes[1].stride, 960);
        assert_eq!(f.planes[2].offset, 1920 * 1088 + 960 * 544);
        assert_eq!(f.size, 1920 * 1088 * 3 / 2);
    }

    #[test]
    fn odd_sizes_round_per_subsampling() {
        let f = Format::raw(PixelFormat::Rgb24, 645, 361).unwrap();
        assert_eq!((f.planes[0].stride, f.planes[0].rows), (648 * 3, 368));
        let f = Format::raw(PixelFormat::Yuyv, 645, 361).unwrap();
        assert_eq!((f.planes[0].stride, f.planes[0].rows), (656 * 2, 368));
        let f = Format::raw(PixelFormat::Nv12, 645, 361).unwrap();
        assert_eq!(f.planes[1].offset, 656 * 368);
        assert_eq!((f.planes[1].stride, f.planes[1].rows), (656, 184));
        assert_eq!(f.size, 656 * 368 * 3 / 2);
    }

    #[test]
    fn a_driver_layout_equal_to_vicodec_s_is_the_same_format() {
        for (p, w, h) in [
            (PixelFormat::I420, 1920, 1080),
            (PixelFormat::Nv12, 645, 361),
            (PixelFormat::Rgb24, 640, 480),
        ] {
            let f = Format::raw(p, w, h).unwrap();
            let d = Format::raw_with_layout(
                p,
                w,
                h,
                f.planes[0].stride,
                f.planes[0].rows as u32,
                f.size,
            );
            assert_eq!(d.as_ref(), Some(&f), "{p}");
        }
        // A wider stride moves the chroma planes; a short buffer is refused.
        let d = Format::raw_with_layout(PixelFormat::I420, 640, 480, 704, 480, 704 * 480 * 3 / 2)
            .unwrap();
        assert_eq!((d.planes[1].offset, d.planes[1].stride), (704 * 480, 352));
        assert!(Format::raw_with_layout(PixelFormat::I420, 640, 480, 640, 480, 1000).is_none());
        assert!(Format::raw_with_layout(PixelFormat::I420, 640, 480, 600, 480, 1 << 20).is_none());
    }

    #[test]
    fn coded_and_invalid() {
        assert!(Format::raw(PixelFormat::Fwht, 640, 480).is_none());
        assert!(Format::raw(PixelFormat::I420, 0, 480).is_none());
        assert_eq!(
            Format::coded(PixelFormat::Fwht, 640, 480).size,
            640 * 480 * 4 + 44
        );
    }
}
