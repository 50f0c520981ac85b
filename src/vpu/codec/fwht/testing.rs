//! Synthetic moving test frames for benchmarks and tests, in any raw format
//! the codec supports, so later benchmarks (the VPU path, the elements) can
//! feed the same content.
//!
//! The picture is modelled on GStreamer's `videotestsrc pattern=ball`: a black
//! background with a white disc (radius 1/10 of the smaller side) moving on a
//! Lissajous path, plus a strip of eight colour bars along the bottom eighth
//! of the frame that scrolls by 4 pixels per frame, so both still and moving
//! areas and both luma and chroma carry content. Padding rows and columns
//! are zero, as in vicodec's freshly allocated buffers.

use super::pixfmt::{PixInfo, Slot, plane_geoms};
use crate::m2m::Format;

/// 75% colour bars as (R, G, B).
const BARS: [(u8, u8, u8); 8] = [
    (191, 191, 191),
    (191, 191, 0),
    (0, 191, 191),
    (0, 191, 0),
    (191, 0, 191),
    (191, 0, 0),
    (0, 0, 191),
    (0, 0, 0),
];

/// RGB of the picture at visible pixel (x, y) of frame `n`.
fn rgb_at(width: u32, height: u32, n: u32, x: u32, y: u32) -> (u8, u8, u8) {
    let (w, h) = (f64::from(width), f64::from(height));
    let t = f64::from(n);
    let r = w.min(h) / 10.0;
    let cx = w / 2.0 + (w / 2.0 - r) * (t * 0.071).sin();
    let cy = h * 7.0 / 16.0 + (h * 7.0 / 16.0 - r) * (t * 0.053).cos();
    let (fx, fy) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
    if y >= height - height / 8 {
        let bar_w = (width / 8).max(1);
        let idx = ((x + 4 * n) / bar_w) % 8;
        return BARS[idx as usize];
    }
    let d2 = (fx - cx).powi(2) + (fy - cy).powi(2);
    if d2 <= r * r {
        (255, 255, 255)
    } else {
        (0, 0, 0)
    }
}

/// BT.601 limited-range Y, Cb, Cr of an RGB triple.
fn yuv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
    let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
    let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
    (
        y.clamp(0, 255) as u8,
        u.clamp(0, 255) as u8,
        v.clamp(0, 255) as u8,
    )
}

/// Fills `dst` (laid out per `raw`) with frame `frame_index` of the moving
/// test picture described in the module documentation. Formats the FWHT
/// codec does not support, or a `dst` shorter than `raw.size`, leave `dst`
/// zeroed as far as it reaches.
pub fn test_pattern(raw: &Format, frame_index: u32, dst: &mut [u8]) {
    dst.fill(0);
    let Ok((info, geoms)) = plane_geoms(raw) else {
        return;
    };
    if dst.len() < raw.size {
        return;
    }
    let is_yuv = matches!(info.encoding, super::PixelEncoding::Yuv);
    for g in &geoms {
        let (wd, hd) = PixInfo::divs(info, g.slot);
        let vis_w = raw.width.div_ceil(wd) as usize;
        let vis_h = raw.height.div_ceil(hd) as usize;
        for py in 0..vis_h.min(g.height) {
            let row = g.offset + py * g.stride;
            for px in 0..vis_w.min(g.width) {
                let (x, y) = (px as u32 * wd, py as u32 * hd);
                let (r, gr, b) = rgb_at(raw.width, raw.height, frame_index, x, y);
                let v = match (is_yuv, g.slot) {
                    (_, Slot::Alpha) => 255,
                    (true, Slot::Luma) => yuv(r, gr, b).0,
                    (true, Slot::Cb) => yuv(r, gr, b).1,
                    (true, Slot::Cr) => yuv(r, gr, b).2,
                    (false, Slot::Luma) => gr,
                    (false, Slot::Cb) => b,
                    (false, Slot::Cr) => r,
                };
                if let Some(d) = dst.get_mut(row + px * g.step) {
                    *d = v;
                }
            }
        }
    }
}

/// Peak signal-to-noise ratio of `a` against `b` in dB over their common
/// length (8-bit samples); infinite when they are equal.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    let sse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    if sse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 * n as f64 / sse).log10()
    }
}
