//! The encoder: GOP logic, per-plane block coding with duplicate-block runs,
//! the stored-raw fallback, and the reconstructed reference, all as vicodec.

use super::header::{FWHT_VERSION, FwhtHeader, HEADER_SIZE, flags};
use super::pixfmt::{PixInfo, PlaneGeom, Slot, plane_geoms};
use super::rle::{Coded, DUPS_MASK, PFRAME_BIT, encode_block};
use super::transform::{
    Pixels, add_clamp_row, clamp_row, dc_only, inverse, inverse_dc, prefer_intra, quantize, wht_t,
    widen_sub, widen_sub_const,
};
use super::{EncoderParams, FwhtError};
use crate::m2m::{Colorimetry, Format};

/// V4L2_COLORSPACE_REC709: what vicodec's OUTPUT queue substitutes for 0.
const COLORSPACE_REC709: u32 = 3;

/// Result of encoding one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes written to `dst` (header + payload).
    pub bytes: usize,
    /// No block of the frame is predicted.
    pub keyframe: bool,
}

/// A stateful FWHT encoder for one raw format.
#[derive(Debug)]
pub struct FwhtEncoder {
    info: &'static PixInfo,
    geoms: Vec<PlaneGeom>,
    width: u32,
    height: u32,
    frame_size: usize,
    colorimetry: Colorimetry,
    params: EncoderParams,
    gop_cnt: u32,
    /// Reconstructed reference per component, block after block.
    reference: Vec<Vec<Pixels>>,
    /// Payload halfwords of the frame being coded.
    out: Vec<u16>,
}

/// What coding one plane produced.
struct PlaneResult {
    predicted: bool,
    raw: bool,
}

impl FwhtEncoder {
    /// An encoder for frames laid out as `raw` (the OUTPUT format).
    pub fn new(raw: &Format, params: EncoderParams) -> Result<Self, FwhtError> {
        params.validate()?;
        let (info, geoms) = plane_geoms(raw)?;
        let reference = geoms
            .iter()
            .map(|g| vec![[[0u8; 8]; 8]; g.width * g.height / 64])
            .collect();
        let mut colorimetry = raw.colorimetry;
        if colorimetry.colorspace == 0 {
            colorimetry.colorspace = COLORSPACE_REC709;
        }
        Ok(FwhtEncoder {
            info,
            geoms,
            width: raw.width,
            height: raw.height,
            frame_size: raw.size,
            colorimetry,
            params,
            gop_cnt: 0,
            reference,
            out: Vec::new(),
        })
    }

    /// Changes GOP size and quantisers from the next frame on (like setting
    /// vicodec's controls mid-stream).
    pub fn set_params(&mut self, params: EncoderParams) -> Result<(), FwhtError> {
        params.validate()?;
        self.params = params;
        Ok(())
    }

    /// Makes the next frame an I-frame and restarts the GOP there.
    pub fn force_keyframe(&mut self) {
        self.gop_cnt = 0;
    }

    /// Upper bound of `encode`'s output for frames of `raw`: the header plus,
    /// per plane, its raw size (a plane never codes to more than that).
    pub fn max_frame_size(raw: &Format) -> usize {
        match plane_geoms(raw) {
            Ok((_, geoms)) => HEADER_SIZE + geoms.iter().map(|g| g.width * g.height).sum::<usize>(),
            Err(_) => HEADER_SIZE,
        }
    }

    /// Encodes one frame from `src` (laid out per the raw format, padding
    /// included) into `dst` (header + payload).
    pub fn encode(&mut self, src: &[u8], dst: &mut [u8]) -> Result<Encoded, FwhtError> {
        if src.len() < self.frame_size {
            return Err(FwhtError::BufferTooSmall {
                what: "raw frame",
                expected: self.frame_size,
                found: src.len(),
            });
        }
        let is_intra = self.gop_cnt == 0;
        let next_is_intra = self.gop_cnt == self.params.gop_size.saturating_sub(1);
        let qp = (self.params.i_frame_qp as u16, self.params.p_frame_qp as u16);

        self.out.clear();
        let mut predicted = false;
        let mut fl = 0u32;
        for (g, reference) in self.geoms.iter().zip(self.reference.iter_mut()) {
            let r = encode_plane(
                src,
                g,
                reference,
                &mut self.out,
                is_intra,
                next_is_intra,
                qp,
            );
            predicted |= r.predicted;
            if r.raw {
                fl |= match g.slot {
                    Slot::Luma => flags::LUMA_IS_UNCOMPRESSED,
                    Slot::Cb => flags::CB_IS_UNCOMPRESSED,
                    Slot::Cr => flags::CR_IS_UNCOMPRESSED,
                    Slot::Alpha => flags::ALPHA_IS_UNCOMPRESSED,
                };
            }
        }
        if !predicted {
            self.gop_cnt = 0;
        }
        self.gop_cnt += 1;
        if self.gop_cnt >= self.params.gop_size {
            self.gop_cnt = 0;
        }

        fl |= (self.info.components_num() - 1) << flags::COMPONENTS_NUM_OFFSET;
        fl |= self.info.encoding.bits();
        if !predicted {
            fl |= flags::I_FRAME;
        }
        if self.info.height_div == 1 {
            fl |= flags::CHROMA_FULL_HEIGHT;
        }
        if self.info.width_div == 1 {
            fl |= flags::CHROMA_FULL_WIDTH;
        }
        let payload = self.out.len() * 2;
        let total = HEADER_SIZE + payload;
        if dst.len() < total {
            return Err(FwhtError::BufferTooSmall {
                what: "coded frame",
                expected: total,
                found: dst.len(),
            });
        }
        let header = FwhtHeader {
            version: FWHT_VERSION,
            width: self.width,
            height: self.height,
            flags: fl,
            colorimetry: self.colorimetry,
            payload_size: payload as u32,
            components: self.info.components_num(),
            pixel_encoding: Some(self.info.encoding),
        };
        let (head, body) = dst.split_at_mut(HEADER_SIZE);
        head.copy_from_slice(&header.to_bytes());
        for (d, w) in body.chunks_exact_mut(2).zip(&self.out) {
            d.copy_from_slice(&w.to_be_bytes());
        }
        Ok(Encoded {
            bytes: total,
            keyframe: !predicted,
        })
    }
}

/// Codes one component plane, appending to `out`.
fn encode_plane(
    src: &[u8],
    g: &PlaneGeom,
    reference: &mut [Pixels],
    out: &mut Vec<u16>,
    is_intra: bool,
    next_is_intra: bool,
    qp: (u16, u16),
) -> PlaneResult {
    match g.step {
        1 => encode_plane_step::<1>(src, g, reference, out, is_intra, next_is_intra, qp),
        2 => encode_plane_step::<2>(src, g, reference, out, is_intra, next_is_intra, qp),
        3 => encode_plane_step::<3>(src, g, reference, out, is_intra, next_is_intra, qp),
        _ => encode_plane_step::<4>(src, g, reference, out, is_intra, next_is_intra, qp),
    }
}

/// Reads the 8x8 block whose top-left sample is at `base`.
#[inline(always)]
fn gather<const STEP: usize>(src: &[u8], base: usize, stride: usize) -> Pixels {
    std::array::from_fn(|y| {
        let start = base + y * stride;
        match src.get(start..start + 7 * STEP + 1) {
            Some(s) => std::array::from_fn(|x| s[x * STEP]),
            None => [0; 8],
        }
    })
}

/// The last block coded: its inputs and everything coding it produced. A
/// block with the same pixels (and, unless the frame is intra, the same
/// reference block) codes to the same words and reconstructs to the same
/// pixels, so it skips the mode decision, transforms and run-length coding.
struct LastBlock {
    pixels: Pixels,
    reference: Pixels,
    intra: bool,
    coded: Coded,
    /// The reconstruction (only valid when the reference is updated).
    recon: Pixels,
}

fn encode_plane_step<const STEP: usize>(
    src: &[u8],
    g: &PlaneGeom,
    reference: &mut [Pixels],
    out: &mut Vec<u16>,
    is_intra: bool,
    next_is_intra: bool,
    (i_qp, p_qp): (u16, u16),
) -> PlaneResult {
    let start = out.len();
    // Stored raw once the coded plane reaches this many halfwords; may be
    // negative for tiny planes, which then always go raw.
    let limit = (g.visible_area / 2) as isize - 256;
    let mut predicted = false;
    let mut overflow = false;
    let mut last: Option<(usize, usize)> = None; // (start, len) of the last coded block
    let mut lb: Option<LastBlock> = None;

    let positions = (0..g.height / 8).flat_map(|by| (0..g.width / 8).map(move |bx| (bx, by)));
    for ((bx, by), refp) in positions.zip(reference.iter_mut()) {
        let base = g.offset + by * 8 * g.stride + bx * 8 * STEP;
        let cur = gather::<STEP>(src, base, g.stride);
        let old = *refp;
        let repeat = lb
            .as_ref()
            .is_some_and(|b| b.pixels == cur && (is_intra || b.reference == old));
        if !repeat {
            let intra = is_intra || prefer_intra(&cur, &old);
            let mut coeffs = if intra {
                wht_t(&widen_sub_const(&cur, 128))
            } else {
                wht_t(&widen_sub(&cur, &old))
            };
            let de = quantize(&mut coeffs, intra, if intra { i_qp } else { p_qp });
            let mut recon = [[0u8; 8]; 8];
            if !next_is_intra {
                let d = if dc_only(&de) {
                    inverse_dc(de[0][0], intra)
                } else {
                    inverse(&de, intra)
                };
                recon = if intra {
                    std::array::from_fn(|y| clamp_row(d[y]))
                } else {
                    std::array::from_fn(|y| add_clamp_row(d[y], &old[y]))
                };
            }
            lb = Some(LastBlock {
                pixels: cur,
                reference: old,
                intra,
                coded: encode_block(&coeffs, !intra),
                recon,
            });
        }
        let Some(b) = lb.as_ref() else {
            break;
        };
        predicted |= !b.intra;
        if !next_is_intra {
            *refp = b.recon;
        }

        let words = b.coded.as_slice();
        let merged = match last {
            Some((ls, ll)) if ll == words.len() && out.get(ls + 1..ls + ll) == words.get(1..) => {
                let hdr = out[ls];
                if (hdr ^ words[0]) & PFRAME_BIT == 0 && (hdr & DUPS_MASK) < DUPS_MASK {
                    out[ls] = hdr + 2;
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        if !merged {
            last = Some((out.len(), words.len()));
            out.extend_from_slice(words);
        }
        if (out.len() - start) as isize >= limit {
            overflow = true;
            break;
        }
    }

    if overflow {
        out.truncate(start);
        out.reserve(g.width * g.height / 2);
        for y in 0..g.height {
            let row = g.offset + y * g.stride;
            let Some(s) = src.get(row..row + (g.width - 1) * STEP + 1) else {
                break;
            };
            // 0xff would let the stream contain the frame magic.
            let px = |x: usize| {
                let v = s[x * STEP];
                u16::from(if v == 0xff { 0xfe } else { v })
            };
            out.extend((0..g.width / 2).map(|x| (px(2 * x) << 8) | px(2 * x + 1)));
        }
        return PlaneResult {
            predicted: false,
            raw: true,
        };
    }
    PlaneResult {
        predicted,
        raw: false,
    }
}
