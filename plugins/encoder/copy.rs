//! The one copy of the encoder: a frame as upstream lays it out (any strides,
//! from its `VideoMeta` or caps) into the contract's layout
//! ([`Format::raw`](crate::m2m::Format::raw)): vicodec's strides, plus the
//! padding rows and columns up to the coded size, which the codec reads and
//! which must hold zeros to match the kernel's stream (FWHT-FACTS item 7).

use gst_video::prelude::*;

use crate::m2m::Format;

/// Why a frame could not be copied.
#[derive(Debug, thiserror::Error)]
pub(super) enum CopyError {
    #[error("the frame has {found} planes, the {format} layout {expected}")]
    PlaneCount {
        format: crate::m2m::PixelFormat,
        expected: usize,
        found: usize,
    },
    #[error("plane {plane}: {reason}")]
    Plane { plane: usize, reason: String },
    #[error("the destination holds {found} bytes, the layout needs {expected}")]
    TooSmall { expected: usize, found: usize },
}

/// Visible bytes per row and rows of each plane of a `width` x `height`
/// frame of `finfo`.
fn plane_extents(
    finfo: &gst_video::VideoFormatInfo,
    width: u32,
    height: u32,
) -> Vec<(usize, usize)> {
    let mut extents = vec![(0usize, 0usize); finfo.n_planes() as usize];
    for c in 0..finfo.n_components() as u8 {
        let plane = finfo.plane()[c as usize] as usize;
        let bytes =
            finfo.scale_width(c, width) as usize * finfo.pixel_stride()[c as usize].max(0) as usize;
        let rows = finfo.scale_height(c, height) as usize;
        if let Some(e) = extents.get_mut(plane) {
            e.0 = e.0.max(bytes);
            e.1 = e.1.max(rows);
        }
    }
    extents
}

/// Copies `frame` into `dst` laid out per `raw`, zeroing every byte of the
/// layout outside the visible picture. Returns the bytes copied from the frame.
pub(super) fn copy_frame(
    frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
    raw: &Format,
    dst: &mut [u8],
) -> Result<usize, CopyError> {
    if dst.len() < raw.size {
        return Err(CopyError::TooSmall {
            expected: raw.size,
            found: dst.len(),
        });
    }
    let extents = plane_extents(&frame.format_info(), frame.width(), frame.height());
    if extents.len() != raw.planes.len() {
        return Err(CopyError::PlaneCount {
            format: raw.pixelformat,
            expected: raw.planes.len(),
            found: extents.len(),
        });
    }
    let mut copied = 0;
    for (plane, (layout, &(row_bytes, rows))) in raw.planes.iter().zip(&extents).enumerate() {
        let bad = |reason: String| CopyError::Plane { plane, reason };
        let src = frame
            .plane_data(plane as u32)
            .map_err(|e| bad(e.to_string()))?;
        let src_stride = usize::try_from(frame.plane_stride()[plane])
            .map_err(|_| bad("negative stride".into()))?;
        if row_bytes > layout.stride || rows > layout.rows {
            return Err(bad(format!(
                "{row_bytes} bytes x {rows} rows do not fit the layout's {} x {}",
                layout.stride, layout.rows
            )));
        }
        let end = layout.offset + layout.stride * layout.rows;
        let dst_plane = dst
            .get_mut(layout.offset..end)
            .ok_or_else(|| bad(format!("ends at byte {end}, past the buffer")))?;
        for (row, dst_row) in dst_plane.chunks_exact_mut(layout.stride).enumerate() {
            if row < rows {
                let start = row * src_stride;
                let src_row = src.get(start..start + row_bytes).ok_or_else(|| {
                    bad(format!(
                        "row {row} needs bytes {start}..{} but the plane holds {}",
                        start + row_bytes,
                        src.len()
                    ))
                })?;
                dst_row[..row_bytes].copy_from_slice(src_row);
                dst_row[row_bytes..].fill(0);
                copied += row_bytes;
            } else {
                dst_row.fill(0);
            }
        }
    }
    Ok(copied)
}
