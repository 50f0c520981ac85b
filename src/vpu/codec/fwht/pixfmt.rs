//! Raw pixel formats as the FWHT codec sees them: which components a format
//! carries, where each component's samples sit in the buffer, and how the
//! stream header describes them (component count, pixel encoding, chroma
//! subsampling). Mirrors vicodec's pixel-format table, in its order (the order
//! decides which CAPTURE format a stream decodes to by default).

use super::FwhtError;
use super::header::PixelEncoding;
use crate::m2m::layout::RawLayoutInfo;
use crate::m2m::{Format, PixelFormat};

/// Which slot of the FWHT stream a component is coded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Y, or G for RGB, or the only component of GREY.
    Luma,
    /// Cb, or B for RGB.
    Cb,
    /// Cr, or R for RGB.
    Cr,
    /// Alpha (the X byte of the 32-bit RGB formats).
    Alpha,
}

impl Slot {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Slot::Luma => "luma",
            Slot::Cb => "cb",
            Slot::Cr => "cr",
            Slot::Alpha => "alpha",
        }
    }
}

/// Where one component lives: memory plane, byte offset of its first sample in
/// a row, and bytes between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Component {
    pub slot: Slot,
    pub plane: usize,
    pub offset: usize,
    pub step: usize,
}

/// Codec facts of one raw format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PixInfo {
    pub format: PixelFormat,
    pub width_div: u32,
    pub height_div: u32,
    pub encoding: PixelEncoding,
    /// Components in coding order (luma, cb, cr, alpha); length 1, 3 or 4.
    pub components: &'static [Component],
}

const fn c(slot: Slot, plane: usize, offset: usize, step: usize) -> Component {
    Component {
        slot,
        plane,
        offset,
        step,
    }
}

use Slot::{Alpha as A, Cb, Cr, Luma as Y};

const PLANAR_UV: &[Component] = &[c(Y, 0, 0, 1), c(Cb, 1, 0, 1), c(Cr, 2, 0, 1)];
const PLANAR_VU: &[Component] = &[c(Y, 0, 0, 1), c(Cb, 2, 0, 1), c(Cr, 1, 0, 1)];
const SEMI_UV: &[Component] = &[c(Y, 0, 0, 1), c(Cb, 1, 0, 2), c(Cr, 1, 1, 2)];
const SEMI_VU: &[Component] = &[c(Y, 0, 0, 1), c(Cb, 1, 1, 2), c(Cr, 1, 0, 2)];
const YUYV: &[Component] = &[c(Y, 0, 0, 2), c(Cb, 0, 1, 4), c(Cr, 0, 3, 4)];
const UYVY: &[Component] = &[c(Y, 0, 1, 2), c(Cb, 0, 0, 4), c(Cr, 0, 2, 4)];
const RGB24: &[Component] = &[c(Y, 0, 1, 3), c(Cb, 0, 2, 3), c(Cr, 0, 0, 3)];
const BGR24: &[Component] = &[c(Y, 0, 1, 3), c(Cb, 0, 0, 3), c(Cr, 0, 2, 3)];
/// B G R X in memory (V4L2 XBGR32, `XR24`).
const BGRX: &[Component] = &[c(Y, 0, 1, 4), c(Cb, 0, 0, 4), c(Cr, 0, 2, 4), c(A, 0, 3, 4)];
/// X R G B in memory (V4L2 XRGB32, `BX24`).
const XRGB: &[Component] = &[c(Y, 0, 2, 4), c(Cb, 0, 3, 4), c(Cr, 0, 1, 4), c(A, 0, 0, 4)];
/// R G B X in memory (V4L2 RGBX32, `XB24`).
const RGBX: &[Component] = &[c(Y, 0, 1, 4), c(Cb, 0, 2, 4), c(Cr, 0, 0, 4), c(A, 0, 3, 4)];
/// X B G R in memory (V4L2 BGRX32, `RX24`).
const XBGR: &[Component] = &[c(Y, 0, 2, 4), c(Cb, 0, 1, 4), c(Cr, 0, 3, 4), c(A, 0, 0, 4)];
const GREY: &[Component] = &[c(Y, 0, 0, 1)];

const fn info(
    format: PixelFormat,
    width_div: u32,
    height_div: u32,
    encoding: PixelEncoding,
    components: &'static [Component],
) -> PixInfo {
    PixInfo {
        format,
        width_div,
        height_div,
        encoding,
        components,
    }
}

use PixelEncoding::{Rgb, Yuv};
use PixelFormat as P;

/// vicodec's table order, restricted to the formats [`PixelFormat`] has.
pub(crate) const PIX_INFOS: &[PixInfo] = &[
    info(P::I420, 2, 2, Yuv, PLANAR_UV),
    info(P::Yv12, 2, 2, Yuv, PLANAR_VU),
    info(P::Yuv422p, 2, 1, Yuv, PLANAR_UV),
    info(P::Nv12, 2, 2, Yuv, SEMI_UV),
    info(P::Nv21, 2, 2, Yuv, SEMI_VU),
    info(P::Nv16, 2, 1, Yuv, SEMI_UV),
    info(P::Yuyv, 2, 1, Yuv, YUYV),
    info(P::Uyvy, 2, 1, Yuv, UYVY),
    info(P::Bgr24, 1, 1, Rgb, BGR24),
    info(P::Rgb24, 1, 1, Rgb, RGB24),
    info(P::Xbgr32, 1, 1, Rgb, BGRX),
    info(P::Xrgb32, 1, 1, Rgb, XRGB),
    info(P::Rgbx32, 1, 1, Rgb, RGBX),
    info(P::Bgrx32, 1, 1, Rgb, XBGR),
    info(P::Grey, 1, 1, Rgb, GREY),
];

/// The stream signatures (width div, height div, components, encoding) of
/// every format in vicodec's table, including those [`PixelFormat`] lacks
/// (HSV, NV24, alpha variants): a header is valid when it matches one.
pub(crate) const VICODEC_SIGNATURES: &[(u32, u32, u32, PixelEncoding)] = &[
    (2, 2, 3, Yuv),
    (2, 1, 3, Yuv),
    (1, 1, 3, Yuv),
    (1, 1, 3, Rgb),
    (1, 1, 3, PixelEncoding::Hsv),
    (1, 1, 4, Rgb),
    (1, 1, 4, PixelEncoding::Hsv),
    (1, 1, 1, Rgb),
];

impl PixInfo {
    pub(crate) fn of(format: PixelFormat) -> Option<&'static PixInfo> {
        PIX_INFOS.iter().find(|i| i.format == format)
    }

    pub(crate) fn components_num(&self) -> u32 {
        self.components.len() as u32
    }

    /// Subsampling divisors of a component.
    pub(crate) fn divs(&self, slot: Slot) -> (u32, u32) {
        match slot {
            Slot::Cb | Slot::Cr => (self.width_div, self.height_div),
            Slot::Luma | Slot::Alpha => (1, 1),
        }
    }
}

/// One component of a concrete frame: where its samples are and how many
/// the codec touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlaneGeom {
    pub slot: Slot,
    /// Byte offset of sample (0, 0) in the buffer.
    pub offset: usize,
    pub stride: usize,
    pub step: usize,
    /// Coded size of this component: visible size / subsampling, rounded up to 8.
    pub width: usize,
    pub height: usize,
    /// Visible rows of this component as vicodec counts them (`height / div`).
    pub visible_rows: usize,
    /// `visible width * visible height / divs`: decides the stored-raw limit.
    pub visible_area: usize,
    /// Rows and samples per row of this component that the buffer layout
    /// holds: `height` and `width` in vicodec's layout; fewer (down to the
    /// visible ones) in a decoder output layout without the padding, see
    /// [`output_plane_geoms`].
    pub layout_rows: usize,
    pub layout_cols: usize,
}

impl PlaneGeom {
    /// Smallest buffer length that holds every sample of this component the
    /// layout has.
    pub(crate) fn end(&self) -> usize {
        self.offset + (self.layout_rows - 1) * self.stride + (self.layout_cols - 1) * self.step + 1
    }
}

/// Resolves the component geometry of `fmt` and checks that its layout holds
/// every sample the codec reads or writes: all coded rows and columns, padding
/// included (vicodec's layout; the encoder reads the padding).
pub(crate) fn plane_geoms(fmt: &Format) -> Result<(&'static PixInfo, Vec<PlaneGeom>), FwhtError> {
    geoms(fmt, false)
}

/// As [`plane_geoms`], for a layout the decoder only writes: each component
/// needs its visible rows and columns (rounded up, as GStreamer rounds
/// subsampled planes), not the padding up to a multiple of 8. The padding
/// rows and columns the layout lacks are simply not written out; the
/// decoder's reference keeps them, so the decoded pictures are the same as
/// in vicodec's layout.
pub(crate) fn output_plane_geoms(
    fmt: &Format,
) -> Result<(&'static PixInfo, Vec<PlaneGeom>), FwhtError> {
    geoms(fmt, true)
}

fn geoms(fmt: &Format, output: bool) -> Result<(&'static PixInfo, Vec<PlaneGeom>), FwhtError> {
    let info = PixInfo::of(fmt.pixelformat).ok_or(FwhtError::UnsupportedFormat(fmt.pixelformat))?;
    if RawLayoutInfo::of(fmt.pixelformat).is_none() {
        return Err(FwhtError::UnsupportedFormat(fmt.pixelformat));
    }
    if fmt.width == 0
        || fmt.height == 0
        || fmt.width > crate::m2m::layout::MAX_DIM
        || fmt.height > crate::m2m::layout::MAX_DIM
    {
        return Err(FwhtError::BadDimensions {
            width: fmt.width,
            height: fmt.height,
        });
    }
    let mut geoms = Vec::with_capacity(info.components.len());
    for comp in info.components {
        let (wd, hd) = info.divs(comp.slot);
        let plane = fmt.planes.get(comp.plane).ok_or(FwhtError::BadLayout {
            format: fmt.pixelformat,
            reason: format!(
                "needs plane {} but the format has {}",
                comp.plane,
                fmt.planes.len()
            ),
        })?;
        let vis_w = (fmt.width / wd) as usize;
        let vis_h = (fmt.height / hd) as usize;
        let width = vis_w.div_ceil(8) * 8;
        let height = vis_h.div_ceil(8) * 8;
        if width == 0 || height == 0 {
            return Err(FwhtError::BadDimensions {
                width: fmt.width,
                height: fmt.height,
            });
        }
        // Samples a row of the layout holds for this component.
        let fit_cols = plane
            .stride
            .checked_sub(comp.offset + 1)
            .map_or(0, |room| room / comp.step + 1);
        // An output layout needs the visible samples (GStreamer rounds
        // subsampled sizes up), as far as the coded component has them.
        let (need_rows, need_cols) = if output {
            (
                (fmt.height.div_ceil(hd) as usize).min(height),
                (fmt.width.div_ceil(wd) as usize).min(width),
            )
        } else {
            (height, width)
        };
        if fit_cols < need_cols || plane.rows < need_rows {
            return Err(FwhtError::BadLayout {
                format: fmt.pixelformat,
                reason: format!(
                    "{} plane needs {} rows of {} bytes, the layout has {} rows of {}",
                    comp.slot.name(),
                    need_rows,
                    comp.offset + (need_cols - 1) * comp.step + 1,
                    plane.rows,
                    plane.stride
                ),
            });
        }
        let g = PlaneGeom {
            slot: comp.slot,
            offset: plane.offset + comp.offset,
            stride: plane.stride,
            step: comp.step,
            width,
            height,
            visible_rows: vis_h,
            visible_area: vis_w * vis_h,
            layout_rows: plane.rows.min(height),
            layout_cols: fit_cols.min(width),
        };
        if g.end() > fmt.size {
            return Err(FwhtError::BadLayout {
                format: fmt.pixelformat,
                reason: format!(
                    "{} plane ends at byte {} but the frame size is {}",
                    comp.slot.name(),
                    g.end(),
                    fmt.size
                ),
            });
        }
        geoms.push(g);
    }
    Ok((info, geoms))
}
