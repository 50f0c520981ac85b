//! The decoder: header checks against the CAPTURE format, per-plane block
//! decoding into an internal frame, write-out to the caller's layout, and the
//! reference kept for the next P-frame.
//!
//! vicodec's stateful decoder keeps a copy of the visible rows of each decoded
//! CAPTURE buffer as its reference; the padding rows of that copy stay zero.
//! Predicted blocks of the last, partial block row therefore add their deltas
//! to zero below the visible area. We keep the same reference so the padding
//! rows of our output match the kernel's byte for byte.

use super::header::{FwhtHeader, HEADER_SIZE, flags, parse_header};
use super::pixfmt::{PixInfo, PlaneGeom, Slot, output_plane_geoms};
use super::rle::{BlockError, DUPS_MASK, HalfwordReader, PFRAME_BIT};
use super::transform::{
    Block, add_clamp_row, clamp_row, dequantize, dequantize_dc, inverse, inverse_dc,
};
use super::{FwhtError, PixelEncoding};
use crate::m2m::{Format, PixelFormat};

/// Result of decoding one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The header's I-frame flag (V4L2_BUF_FLAG_KEYFRAME on the CAPTURE buffer).
    pub keyframe: bool,
}

/// Decoded planes, each `width * height` bytes at the component's coded size.
/// They depend on the pixel format and the visible size only, not on the
/// layout the frames are written out in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planes {
    format: (PixelFormat, u32, u32),
    planes: Vec<Vec<u8>>,
}

/// A stateful FWHT decoder.
#[derive(Debug, Default)]
pub struct FwhtDecoder {
    reference: Option<Planes>,
    /// Scratch frame reused between calls.
    spare: Option<Planes>,
}

impl FwhtDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops the reference: the next frame must be an I-frame.
    pub fn reset(&mut self) {
        if let Some(r) = self.reference.take() {
            self.spare = Some(r);
        }
    }

    /// Decodes `frame` (header + payload) into `dst`, laid out per `raw`.
    pub fn decode(
        &mut self,
        frame: &[u8],
        raw: &Format,
        dst: &mut [u8],
    ) -> Result<Decoded, FwhtError> {
        let h = parse_header(frame)?;
        let (info, geoms) = output_plane_geoms(raw)?;
        check_match(&h, info, raw)?;
        if dst.len() < raw.size {
            return Err(FwhtError::BufferTooSmall {
                what: "CAPTURE buffer",
                expected: raw.size,
                found: dst.len(),
            });
        }
        let max = h.max_payload_size();
        if h.payload_size as usize > max {
            return Err(FwhtError::PayloadTooLarge {
                size: h.payload_size,
                max,
                width: h.width,
                height: h.height,
            });
        }
        let payload =
            frame
                .get(HEADER_SIZE..h.frame_size())
                .ok_or(FwhtError::TruncatedPayload {
                    width: h.width,
                    height: h.height,
                    size: h.payload_size,
                    found: frame.len().saturating_sub(HEADER_SIZE),
                })?;
        let key = (raw.pixelformat, raw.width, raw.height);
        let reference = match &self.reference {
            Some(r) if r.format == key => Some(r),
            Some(_) | None if !h.is_keyframe() => return Err(FwhtError::NoReference),
            _ => None,
        };

        let mut cur = match self.spare.take() {
            Some(p) if p.format == key => p,
            _ => Planes {
                format: key,
                planes: geoms
                    .iter()
                    .map(|g| vec![0u8; g.width * g.height])
                    .collect(),
            },
        };
        let mut reader = HalfwordReader::new(payload);
        for (i, g) in geoms.iter().enumerate() {
            let stored_raw = h.flags & raw_flag(g.slot) != 0;
            let ref_plane = reference.and_then(|r| r.planes.get(i)).map(Vec::as_slice);
            let Some(plane) = cur.planes.get_mut(i) else {
                break;
            };
            if let Err(e) = decode_plane(&mut reader, g, stored_raw, ref_plane, plane) {
                self.spare = Some(cur);
                return Err(e);
            }
        }

        for (g, plane) in geoms.iter().zip(&cur.planes) {
            write_out(g, plane, dst);
        }
        // The kernel's reference holds only the visible rows.
        for (g, plane) in geoms.iter().zip(cur.planes.iter_mut()) {
            if let Some(pad) = plane.get_mut(g.visible_rows * g.width..) {
                pad.fill(0);
            }
        }
        self.spare = self.reference.take();
        self.reference = Some(cur);
        Ok(Decoded {
            keyframe: h.is_keyframe(),
        })
    }
}

/// vicodec's checks of a header against the chosen CAPTURE format.
fn check_match(h: &FwhtHeader, info: &PixInfo, raw: &Format) -> Result<(), FwhtError> {
    let enc_ok = h.pixel_encoding.is_none_or(|e| e == info.encoding);
    if h.width != raw.width
        || h.height != raw.height
        || !enc_ok
        || h.components != info.components_num()
        || h.chroma_width_div() != info.width_div
        || h.chroma_height_div() != info.height_div
    {
        return Err(FwhtError::FormatMismatch {
            stream: describe_stream(h),
            format: format!(
                "{} {}x{} ({} components, {:?}, chroma /{}x/{})",
                raw.pixelformat,
                raw.width,
                raw.height,
                info.components_num(),
                info.encoding,
                info.width_div,
                info.height_div
            ),
        });
    }
    Ok(())
}

pub(crate) fn describe_stream(h: &FwhtHeader) -> String {
    let enc = match h.pixel_encoding {
        Some(PixelEncoding::Yuv) => "YUV",
        Some(PixelEncoding::Rgb) => "RGB",
        Some(PixelEncoding::Hsv) => "HSV",
        None => "any encoding",
    };
    format!(
        "{}x{} ({} components, {}, chroma /{}x/{})",
        h.width,
        h.height,
        h.components,
        enc,
        h.chroma_width_div(),
        h.chroma_height_div()
    )
}

fn raw_flag(slot: Slot) -> u32 {
    match slot {
        Slot::Luma => flags::LUMA_IS_UNCOMPRESSED,
        Slot::Cb => flags::CB_IS_UNCOMPRESSED,
        Slot::Cr => flags::CR_IS_UNCOMPRESSED,
        Slot::Alpha => flags::ALPHA_IS_UNCOMPRESSED,
    }
}

fn corrupt(g: &PlaneGeom, reason: &'static str) -> FwhtError {
    FwhtError::CorruptPayload {
        plane: g.slot.name(),
        reason,
    }
}

/// Decodes one component into `plane` (`g.width` x `g.height`, tightly packed).
fn decode_plane(
    reader: &mut HalfwordReader<'_>,
    g: &PlaneGeom,
    stored_raw: bool,
    reference: Option<&[u8]>,
    plane: &mut [u8],
) -> Result<(), FwhtError> {
    let w = g.width;
    if stored_raw {
        let bytes = reader
            .take_bytes(w * g.height)
            .ok_or_else(|| corrupt(g, "stored-raw plane is longer than the payload"))?;
        plane.copy_from_slice(bytes);
        return Ok(());
    }

    let mut coeffs: Block = [[0; 8]; 8];
    let mut pixels: Block = [[0; 8]; 8];
    let mut predicted = false;
    let mut copies = 0usize;
    let blocks_w = w / 8;
    for by in 0..g.height / 8 {
        // This block row of the plane (and of the reference), whole.
        let rows = by * 8 * w..(by + 1) * 8 * w;
        let Some(dst_rows) = plane.get_mut(rows.clone()) else {
            return Err(corrupt(g, "plane is smaller than its blocks"));
        };
        let ref_rows = match reference {
            Some(r) => Some(
                r.get(rows)
                    .ok_or_else(|| corrupt(g, "reference is smaller than the plane"))?,
            ),
            None => None,
        };
        for bx in 0..blocks_w {
            if copies > 0 {
                copies -= 1;
            } else {
                let (stat, ac) = reader.decode_block(&mut coeffs).map_err(|e| match e {
                    BlockError::Truncated => corrupt(g, "payload ends inside a block"),
                    BlockError::BadHeader => corrupt(g, "block header has bit 14 set"),
                })?;
                predicted = stat & PFRAME_BIT != 0;
                if predicted && reference.is_none() {
                    return Err(FwhtError::NoReference);
                }
                pixels = if ac {
                    dequantize(&mut coeffs, !predicted);
                    inverse(&coeffs, !predicted)
                } else {
                    inverse_dc(dequantize_dc(coeffs[0][0], !predicted), !predicted)
                };
                copies = usize::from((stat & DUPS_MASK) >> 1);
            }
            let x0 = bx * 8;
            match (predicted, ref_rows) {
                (true, Some(r)) => {
                    for (y, p) in pixels.iter().enumerate() {
                        let o = y * w + x0;
                        let (Some(d), Some(rr)) = (
                            dst_rows
                                .get_mut(o..o + 8)
                                .and_then(|d| <&mut [u8; 8]>::try_from(d).ok()),
                            r.get(o..o + 8).and_then(|r| <&[u8; 8]>::try_from(r).ok()),
                        ) else {
                            return Err(corrupt(g, "reference is smaller than the plane"));
                        };
                        *d = add_clamp_row(*p, rr);
                    }
                }
                _ => {
                    for (y, p) in pixels.iter().enumerate() {
                        let o = y * w + x0;
                        let Some(d) = dst_rows.get_mut(o..o + 8) else {
                            return Err(corrupt(g, "plane is smaller than its blocks"));
                        };
                        d.copy_from_slice(&clamp_row(*p));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Copies a decoded component into the caller's buffer layout: every row
/// and column the layout holds (all of them, padding included, in vicodec's).
fn write_out(g: &PlaneGeom, plane: &[u8], dst: &mut [u8]) {
    let cols = g.layout_cols;
    for (y, row) in plane.chunks_exact(g.width).enumerate().take(g.layout_rows) {
        let start = g.offset + y * g.stride;
        let row = &row[..cols];
        if g.step == 1 {
            if let Some(d) = dst.get_mut(start..start + cols) {
                d.copy_from_slice(row);
            }
        } else if let Some(d) = dst.get_mut(start..start + (cols - 1) * g.step + 1) {
            for (d, &s) in d.iter_mut().step_by(g.step).zip(row) {
                *d = s;
            }
        }
    }
}
