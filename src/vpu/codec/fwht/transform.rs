//! The 8x8 Walsh-Hadamard transform in sequency order, quantisation, and the
//! block-level arithmetic shared by encoder and decoder.
//!
//! vicodec keeps intermediate rows in 16-bit storage between the two passes;
//! [`wht8x8`] does the same (wrapping), so corrupt coefficients give the same
//! pixels as in the kernel rather than a panic or a different result.

/// One 8x8 block of samples or coefficients, row-major.
pub(crate) type Block = [i16; 64];

/// The zigzag scan: `ZIGZAG[i]` is the raster position of the i-th coefficient.
pub(crate) const ZIGZAG: [u8; 64] = [
    0, 1, 8, 2, 9, 16, 3, 10, 17, 24, 4, 11, 18, 25, 32, 5, 12, 19, 26, 33, 40, 6, 13, 20, 27, 34,
    41, 48, 7, 14, 21, 28, 35, 42, 49, 56, 15, 22, 29, 36, 43, 50, 57, 23, 30, 37, 44, 51, 58, 31,
    38, 45, 52, 59, 39, 46, 53, 60, 47, 54, 61, 55, 62, 63,
];

/// Right-shift per coefficient for intra blocks.
const QUANT_INTRA: [u8; 64] = [
    2, 2, 2, 2, 2, 2, 2, 2, //
    2, 2, 2, 2, 2, 2, 2, 2, //
    2, 2, 2, 2, 2, 2, 2, 3, //
    2, 2, 2, 2, 2, 2, 3, 6, //
    2, 2, 2, 2, 2, 3, 6, 6, //
    2, 2, 2, 2, 3, 6, 6, 6, //
    2, 2, 2, 3, 6, 6, 6, 6, //
    2, 2, 3, 6, 6, 6, 6, 8, //
];

/// Right-shift per coefficient for predicted blocks.
const QUANT_INTER: [u8; 64] = [
    3, 3, 3, 3, 3, 3, 3, 3, //
    3, 3, 3, 3, 3, 3, 3, 3, //
    3, 3, 3, 3, 3, 3, 3, 3, //
    3, 3, 3, 3, 3, 3, 3, 6, //
    3, 3, 3, 3, 3, 3, 6, 6, //
    3, 3, 3, 3, 3, 6, 6, 9, //
    3, 3, 3, 3, 6, 6, 9, 9, //
    3, 3, 3, 6, 6, 9, 9, 10, //
];

#[inline(always)]
fn butterfly(v: [i32; 8]) -> [i32; 8] {
    let a = [
        v[0] + v[1],
        v[0] - v[1],
        v[2] + v[3],
        v[2] - v[3],
        v[4] + v[5],
        v[4] - v[5],
        v[6] + v[7],
        v[6] - v[7],
    ];
    let b = [
        a[0] + a[2],
        a[0] - a[2],
        a[1] - a[3],
        a[1] + a[3],
        a[4] + a[6],
        a[4] - a[6],
        a[5] - a[7],
        a[5] + a[7],
    ];
    [
        b[0] + b[4],
        b[0] - b[4],
        b[1] - b[5],
        b[1] + b[5],
        b[2] + b[6],
        b[2] - b[6],
        b[3] - b[7],
        b[3] + b[7],
    ]
}

/// In-place 2D transform: rows, then columns, 16-bit storage between passes.
/// The transform is its own inverse up to a factor of 64.
#[inline]
pub(crate) fn wht8x8(b: &mut Block) {
    for row in b.chunks_exact_mut(8) {
        let v = butterfly(std::array::from_fn(|i| i32::from(row[i])));
        for (d, s) in row.iter_mut().zip(v) {
            *d = s as i16;
        }
    }
    for x in 0..8 {
        let v = butterfly(std::array::from_fn(|y| i32::from(b[y * 8 + x])));
        for (y, s) in v.into_iter().enumerate() {
            b[y * 8 + x] = s as i16;
        }
    }
}

/// Quantises `coeffs` in place and returns the dequantised copy the encoder
/// reconstructs its reference from. Coefficients within `±qp` after the shift
/// become zero.
#[inline]
pub(crate) fn quantize(coeffs: &mut Block, intra: bool, qp: u16) -> Block {
    let table = if intra { &QUANT_INTRA } else { &QUANT_INTER };
    let qp = i32::from(qp);
    let mut de = [0i16; 64];
    for ((c, d), &q) in coeffs.iter_mut().zip(de.iter_mut()).zip(table) {
        let v = *c >> q;
        if (-qp..=qp).contains(&i32::from(v)) {
            *c = 0;
        } else {
            *c = v;
            *d = (i32::from(v) << q) as i16;
        }
    }
    de
}

/// Undoes the quantisation shift (16-bit, wrapping like the kernel).
#[inline]
pub(crate) fn dequantize(coeffs: &mut Block, intra: bool) {
    let table = if intra { &QUANT_INTRA } else { &QUANT_INTER };
    for (c, &q) in coeffs.iter_mut().zip(table) {
        *c = (i32::from(*c) << q) as i16;
    }
}

/// Inverse transform of dequantised coefficients: pixel values for intra
/// blocks (offset 128 added back), deltas for predicted ones. Not clamped.
#[inline]
pub(crate) fn inverse(coeffs: &mut Block, intra: bool) {
    wht8x8(coeffs);
    let add = if intra { 128 } else { 0 };
    for c in coeffs.iter_mut() {
        *c = (*c >> 6) + add;
    }
}

#[inline(always)]
pub(crate) fn clamp_u8(v: i16) -> u8 {
    v.clamp(0, 255) as u8
}

/// The encoder's mode decision: intra when the block's spread around its
/// mean is no larger than its distance to the reference block.
#[inline]
pub(crate) fn prefer_intra(cur: &Block, reference: &[u8; 64]) -> bool {
    let sum: i32 = cur.iter().map(|&v| i32::from(v)).sum();
    let mean = sum / 64;
    let vari: i32 = cur.iter().map(|&v| (i32::from(v) - mean).abs()).sum();
    let vard: i32 = cur
        .iter()
        .zip(reference)
        .map(|(&v, &r)| (i32::from(v) - i32::from(r)).abs())
        .sum();
    vari <= vard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_of_flat_block_is_dc_only() {
        let mut b = [3i16; 64];
        wht8x8(&mut b);
        assert_eq!(b[0], 3 * 64);
        assert!(b[1..].iter().all(|&v| v == 0));
    }

    #[test]
    fn transform_is_self_inverse_times_64() {
        let orig: Block = std::array::from_fn(|i| ((i * 37 + 11) % 255) as i16 - 128);
        let mut b = orig;
        wht8x8(&mut b);
        wht8x8(&mut b);
        for (x, o) in b.iter().zip(orig) {
            assert_eq!(*x, o * 64);
        }
    }

    #[test]
    fn quantize_zeroes_small_and_dequantizes_large() {
        let mut c = [0i16; 64];
        c[0] = 400; // >> 2 = 100
        c[1] = 40; // >> 2 = 10, within qp
        c[63] = -2560; // >> 8 = -10, within qp
        let de = quantize(&mut c, true, 20);
        assert_eq!((c[0], c[1], c[63]), (100, 0, 0));
        assert_eq!((de[0], de[1]), (400, 0));
        dequantize(&mut c, true);
        assert_eq!(c[0], 400);
    }

    #[test]
    fn intra_round_trip_is_close() {
        let pixels: Block = std::array::from_fn(|i| (i as i16 * 3) % 200 + 20);
        let mut c: Block = std::array::from_fn(|i| pixels[i] - 128);
        wht8x8(&mut c);
        let mut de = quantize(&mut c, true, 1);
        inverse(&mut de, true);
        for (a, b) in de.iter().zip(pixels) {
            assert!((a - b).abs() <= 8, "{a} vs {b}");
        }
    }

    #[test]
    fn decision() {
        let flat = [100i16; 64];
        assert!(prefer_intra(&flat, &[0; 64]));
        let noisy: Block = std::array::from_fn(|i| if i % 2 == 0 { 0 } else { 200 });
        let same: [u8; 64] = std::array::from_fn(|i| noisy[i] as u8);
        assert!(!prefer_intra(&noisy, &same));
    }
}
