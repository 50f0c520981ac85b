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
        if src_stride == layout.stride && row_bytes == layout.stride {
            // Both sides tightly packed with the same rows: one copy of the
            // whole plane instead of one per row.
            let n = rows * row_bytes;
            let src_rows = src.get(..n).ok_or_else(|| {
                bad(format!(
                    "{rows} rows need {n} bytes but the plane holds {}",
                    src.len()
                ))
            })?;
            dst_plane[..n].copy_from_slice(src_rows);
            dst_plane[n..].fill(0);
            copied += n;
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m2m::PixelFormat;

    /// `info`'s frame with byte `(plane, row, col)` = a pattern of the three,
    /// and padding bytes 0xee (never to reach the copy).
    fn frame(info: &gst_video::VideoInfo) -> gst::Buffer {
        let mut data = vec![0xee; info.size()];
        let finfo = info.format_info();
        for plane in 0..info.n_planes() as usize {
            let (bytes, rows) = plane_extents(&finfo, info.width(), info.height())[plane];
            for row in 0..rows {
                let at = info.offset()[plane] + row * info.stride()[plane] as usize;
                for col in 0..bytes {
                    data[at + col] = (plane * 89 + row * 7 + col * 3) as u8;
                }
            }
        }
        gst::Buffer::from_mut_slice(data)
    }

    /// Whole-plane copies (tightly packed on both sides) and row copies
    /// (strides that differ) write the same layout: every visible byte in
    /// place, zeros elsewhere.
    #[test]
    fn packed_and_strided_frames_land_in_the_layout() {
        gst::init().unwrap();
        for (format, pixfmt, w, h) in [
            (gst_video::VideoFormat::I420, PixelFormat::I420, 320, 240),
            (gst_video::VideoFormat::I420, PixelFormat::I420, 322, 242),
            (gst_video::VideoFormat::Nv12, PixelFormat::Nv12, 1920, 1080),
            (gst_video::VideoFormat::Yuy2, PixelFormat::Yuyv, 66, 48),
        ] {
            let info = gst_video::VideoInfo::builder(format, w, h).build().unwrap();
            let raw = Format::raw(pixfmt, w, h).unwrap();
            let buffer = frame(&info);
            let vframe =
                gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).unwrap();
            let mut dst = vec![0x55; raw.size];
            let copied = copy_frame(&vframe, &raw, &mut dst).unwrap();
            let mut expected = vec![0; raw.size];
            let mut visible = 0;
            let extents = plane_extents(&info.format_info(), w, h);
            for (plane, layout) in raw.planes.iter().enumerate() {
                let (bytes, rows) = extents[plane];
                for row in 0..rows {
                    for col in 0..bytes {
                        expected[layout.offset + row * layout.stride + col] =
                            (plane * 89 + row * 7 + col * 3) as u8;
                    }
                }
                visible += bytes * rows;
            }
            assert_eq!(copied, visible, "{format:?} {w}x{h}");
            assert!(dst == expected, "{format:?} {w}x{h}: the layout differs");
        }
    }
}
