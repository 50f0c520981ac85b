//! The 8x8 Walsh-Hadamard transform in sequency order, quantisation, and the
//! block-level arithmetic shared by encoder and decoder.
//!
//! vicodec keeps intermediate rows in 16-bit storage between the two passes
//! and stores the result in 16 bits. Both passes are additions and
//! subtractions only, so the whole 2-D transform is a linear map modulo
//! 2^16: computing every step in wrapping `i16` arithmetic gives exactly the
//! kernel's 16-bit results, including for corrupt coefficients that wrap, and
//! the order of the two passes does not matter. That lets both passes be the
//! same "vertical" butterfly over whole rows (eight `i16` lanes, which the
//! compiler turns into SSE2 `paddw`/`psubw`), with one transpose between them.
//!
//! Orientation: [`wht_t`] computes `W X^T W^T`. Fed pixels `B` it yields the
//! *transposed* coefficients `(W B W^T)^T`; fed transposed coefficients `D^T`
//! it yields `W D W^T`, the pixels in normal orientation. Coefficient blocks
//! are therefore kept transposed everywhere (`[x][y]`), and the quantisation
//! tables and the zigzag scan are transposed to match ([`ZIGZAG_T`]).

#![allow(clippy::needless_range_loop)]

/// Eight samples or coefficients: one row of a block, one SSE2 register.
pub(crate) type Row = [i16; 8];
/// One 8x8 block as rows.
pub(crate) type Block = [Row; 8];
/// One 8x8 block of 8-bit pixels as rows.
pub(crate) type Pixels = [[u8; 8]; 8];

/// The zigzag scan: `ZIGZAG[i]` is the raster position of the i-th coefficient.
const ZIGZAG: [u8; 64] = [
    0, 1, 8, 2, 9, 16, 3, 10, 17, 24, 4, 11, 18, 25, 32, 5, 12, 19, 26, 33, 40, 6, 13, 20, 27, 34,
    41, 48, 7, 14, 21, 28, 35, 42, 49, 56, 15, 22, 29, 36, 43, 50, 57, 23, 30, 37, 44, 51, 58, 31,
    38, 45, 52, 59, 39, 46, 53, 60, 47, 54, 61, 55, 62, 63,
];

/// Transposes a raster position (`y * 8 + x` becomes `x * 8 + y`).
const fn tpos(p: u8) -> u8 {
    (p % 8) * 8 + p / 8
}

/// The zigzag scan over a transposed coefficient block: `ZIGZAG_T[i]` is the
/// position, in a block stored `[x][y]`, of the i-th coefficient.
pub(crate) const ZIGZAG_T: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = tpos(ZIGZAG[i]);
        i += 1;
    }
    t
};

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

/// Per-coefficient multipliers of a quantisation table, transposed: `shr`
/// holds `2^(16-q)` so that the high half of `c * shr` is `c >> q` (exact
/// for every `i16` when `2 <= q <= 15`, and every table entry is), and `shl`
/// holds `2^q` so that a wrapping `c * shl` is the kernel's `(s16)(c << q)`.
/// Multiplies, unlike per-lane shifts, exist in SSE2 (`pmulhw`, `pmullw`).
struct QuantMul {
    shr: Block,
    shl: Block,
}

const fn quant_mul(table: &[u8; 64]) -> QuantMul {
    let mut shr = [[0i16; 8]; 8];
    let mut shl = [[0i16; 8]; 8];
    let mut p = 0;
    while p < 64 {
        let q = table[p];
        assert!(q >= 2 && q <= 14);
        let t = tpos(p as u8) as usize;
        shr[t / 8][t % 8] = 1 << (16 - q);
        shl[t / 8][t % 8] = 1 << q;
        p += 1;
    }
    QuantMul { shr, shl }
}

const MUL_INTRA: QuantMul = quant_mul(&QUANT_INTRA);
const MUL_INTER: QuantMul = quant_mul(&QUANT_INTER);

#[inline(always)]
fn quant_mul_of(intra: bool) -> &'static QuantMul {
    if intra { &MUL_INTRA } else { &MUL_INTER }
}

// The lane-wise helpers below are written as plain index loops (hence the
// allowed clippy::needless_range_loop): LLVM's SLP
// vectoriser turns those into single SSE2 instructions, whereas
// `array::from_fn` closures stayed scalar.

#[inline(always)]
fn add(a: Row, b: Row) -> Row {
    let mut r = [0; 8];
    for i in 0..8 {
        r[i] = a[i].wrapping_add(b[i]);
    }
    r
}

#[inline(always)]
fn sub(a: Row, b: Row) -> Row {
    let mut r = [0; 8];
    for i in 0..8 {
        r[i] = a[i].wrapping_sub(b[i]);
    }
    r
}

/// `W v`: the sequency-ordered butterfly applied down every column at once
/// (24 `paddw`/`psubw`).
#[inline(always)]
fn butterfly_rows(v: &Block) -> Block {
    let a = [
        add(v[0], v[1]),
        sub(v[0], v[1]),
        add(v[2], v[3]),
        sub(v[2], v[3]),
        add(v[4], v[5]),
        sub(v[4], v[5]),
        add(v[6], v[7]),
        sub(v[6], v[7]),
    ];
    let b = [
        add(a[0], a[2]),
        sub(a[0], a[2]),
        sub(a[1], a[3]),
        add(a[1], a[3]),
        add(a[4], a[6]),
        sub(a[4], a[6]),
        sub(a[5], a[7]),
        add(a[5], a[7]),
    ];
    [
        add(b[0], b[4]),
        sub(b[0], b[4]),
        sub(b[1], b[5]),
        add(b[1], b[5]),
        add(b[2], b[6]),
        sub(b[2], b[6]),
        sub(b[3], b[7]),
        add(b[3], b[7]),
    ]
}

/// One butterfly pass, kept out of line (see [`wht_t`]).
#[inline(never)]
fn pass(v: &Block) -> Block {
    butterfly_rows(v)
}

/// Interleaves 16-bit lanes of the low halves (`punpcklwd`).
#[inline(always)]
fn lo16(a: &Row, b: &Row) -> Row {
    let mut r = [0; 8];
    for i in 0..4 {
        r[2 * i] = a[i];
        r[2 * i + 1] = b[i];
    }
    r
}

/// Interleaves 16-bit lanes of the high halves (`punpckhwd`).
#[inline(always)]
fn hi16(a: &Row, b: &Row) -> Row {
    let mut r = [0; 8];
    for i in 0..4 {
        r[2 * i] = a[4 + i];
        r[2 * i + 1] = b[4 + i];
    }
    r
}

/// Interleaves 32-bit units of the low halves (`punpckldq`).
#[inline(always)]
fn lo32(a: &Row, b: &Row) -> Row {
    let mut r = [0; 8];
    for i in 0..2 {
        r[4 * i] = a[2 * i];
        r[4 * i + 1] = a[2 * i + 1];
        r[4 * i + 2] = b[2 * i];
        r[4 * i + 3] = b[2 * i + 1];
    }
    r
}

/// Interleaves 32-bit units of the high halves (`punpckhdq`).
#[inline(always)]
fn hi32(a: &Row, b: &Row) -> Row {
    let mut r = [0; 8];
    for i in 0..2 {
        r[4 * i] = a[4 + 2 * i];
        r[4 * i + 1] = a[4 + 2 * i + 1];
        r[4 * i + 2] = b[4 + 2 * i];
        r[4 * i + 3] = b[4 + 2 * i + 1];
    }
    r
}

/// Low halves of `a` and `b` (`punpcklqdq`).
#[inline(always)]
fn lo64(a: &Row, b: &Row) -> Row {
    let mut r = [0; 8];
    r[..4].copy_from_slice(&a[..4]);
    r[4..].copy_from_slice(&b[..4]);
    r
}

/// High halves of `a` and `b` (`punpckhqdq`).
#[inline(always)]
fn hi64(a: &Row, b: &Row) -> Row {
    let mut r = [0; 8];
    r[..4].copy_from_slice(&a[4..]);
    r[4..].copy_from_slice(&b[4..]);
    r
}

/// 8x8 transpose as three rounds of interleaves. `black_box` between the
/// rounds only stops LLVM from fusing them into one 64-element permutation,
/// which it lowers to scalar code (about twice the instructions).
#[inline(never)]
fn transpose(m: &Block) -> Block {
    let a = std::hint::black_box([
        lo16(&m[0], &m[1]),
        hi16(&m[0], &m[1]),
        lo16(&m[2], &m[3]),
        hi16(&m[2], &m[3]),
        lo16(&m[4], &m[5]),
        hi16(&m[4], &m[5]),
        lo16(&m[6], &m[7]),
        hi16(&m[6], &m[7]),
    ]);
    // a[0] = m00 m10 m01 m11 m02 m12 m03 m13, a[1] = m04 m14 .. m07 m17, ...
    let b = std::hint::black_box([
        lo32(&a[0], &a[2]),
        lo32(&a[1], &a[3]),
        hi32(&a[0], &a[2]),
        hi32(&a[1], &a[3]),
        lo32(&a[4], &a[6]),
        lo32(&a[5], &a[7]),
        hi32(&a[4], &a[6]),
        hi32(&a[5], &a[7]),
    ]);
    // b[0] = m00 m10 m20 m30 m01 m11 m21 m31, b[1] = columns 4, 5 of rows 0-3,
    // b[2] = columns 2, 3, b[3] = columns 6, 7; b[4..8] the same for rows 4-7.
    [
        lo64(&b[0], &b[4]),
        hi64(&b[0], &b[4]),
        lo64(&b[2], &b[6]),
        hi64(&b[2], &b[6]),
        lo64(&b[1], &b[5]),
        hi64(&b[1], &b[5]),
        lo64(&b[3], &b[7]),
        hi64(&b[3], &b[7]),
    ]
}

/// `W X^T W^T` in wrapping 16-bit arithmetic (see the module documentation).
///
/// The passes are separate, non-inlined functions: compiled on their own,
/// LLVM vectorises each fully; inlined together it turned one of the two
/// butterfly passes into scalar code (about 3x the instructions).
#[inline]
pub(crate) fn wht_t(x: &Block) -> Block {
    pass(&transpose(&pass(x)))
}

/// The kernel's 2-D transform in its own orientation: rows, then columns.
#[cfg(test)]
pub(crate) fn wht8x8(b: &Block) -> Block {
    transpose(&wht_t(b))
}

/// Quantises transposed coefficients in place and returns the dequantised
/// copy the encoder reconstructs its reference from. Coefficients within
/// `±qp` after the shift become zero.
#[inline]
pub(crate) fn quantize(coeffs: &mut Block, intra: bool, qp: u16) -> Block {
    // Flat 64-element loops: LLVM's loop vectoriser recognises the
    // multiply-high (`pmulhw`) and the selects; its SLP vectoriser, which
    // fully unrolled 8-element loops go through, does not.
    let m = quant_mul_of(intra);
    let qp = qp as i16;
    let mut de = [[0i16; 8]; 8];
    let (c, d) = (coeffs.as_flattened_mut(), de.as_flattened_mut());
    let (shr, shl) = (m.shr.as_flattened(), m.shl.as_flattened());
    for (((c, d), &shr), &shl) in c.iter_mut().zip(d).zip(shr).zip(shl) {
        let v = ((i32::from(*c) * i32::from(shr)) >> 16) as i16;
        let keep = -i16::from((v > qp) | (v < -qp));
        *c = v & keep;
        *d = v.wrapping_mul(shl) & keep;
    }
    de
}

/// Undoes the quantisation shift of transposed coefficients (16-bit,
/// wrapping like the kernel).
#[inline]
pub(crate) fn dequantize(coeffs: &mut Block, intra: bool) {
    let m = quant_mul_of(intra);
    for (c, s) in coeffs.iter_mut().zip(&m.shl) {
        for x in 0..8 {
            c[x] = c[x].wrapping_mul(s[x]);
        }
    }
}

/// Dequantised DC coefficient of a block whose other coefficients are zero.
#[inline]
pub(crate) fn dequantize_dc(dc: i16, intra: bool) -> i16 {
    dc.wrapping_mul(quant_mul_of(intra).shl[0][0])
}

/// The final step of the inverse transform: pixel values for intra blocks
/// (offset 128 added back), deltas for predicted ones. Not clamped.
#[inline(always)]
fn descale(v: i16, add: i16) -> i16 {
    (v >> 6).wrapping_add(add)
}

/// Inverse transform of transposed dequantised coefficients, in normal
/// orientation. Not clamped.
#[inline]
pub(crate) fn inverse(coeffs_t: &Block, intra: bool) -> Block {
    let add = if intra { 128 } else { 0 };
    let mut b = wht_t(coeffs_t);
    for r in &mut b {
        for x in 0..8 {
            r[x] = descale(r[x], add);
        }
    }
    b
}

/// [`inverse`] of a block with only a (dequantised) DC coefficient: every
/// sample of the transform is that coefficient.
#[inline]
pub(crate) fn inverse_dc(dc: i16, intra: bool) -> Block {
    [[descale(dc, if intra { 128 } else { 0 }); 8]; 8]
}

/// Saturates eight samples to 0..=255 (SSE2 `packuswb`).
#[inline(always)]
pub(crate) fn clamp_row(r: Row) -> [u8; 8] {
    let mut o = [0; 8];
    for x in 0..8 {
        o[x] = r[x].clamp(0, 255) as u8;
    }
    o
}

/// Adds eight reference pixels to eight deltas (16-bit, wrapping like the
/// kernel's `s16 +=`) and saturates the result to 0..=255.
#[inline(always)]
pub(crate) fn add_clamp_row(d: Row, r: &[u8; 8]) -> [u8; 8] {
    let mut s = [0i16; 8];
    for x in 0..8 {
        s[x] = d[x].wrapping_add(i16::from(r[x]));
    }
    clamp_row(s)
}

/// Pixels widened to 16 bits, minus `offset` (128 for intra blocks).
#[inline(always)]
pub(crate) fn widen_sub_const(p: &Pixels, offset: i16) -> Block {
    let mut b = [[0; 8]; 8];
    for (o, r) in b.iter_mut().zip(p) {
        for x in 0..8 {
            o[x] = i16::from(r[x]) - offset;
        }
    }
    b
}

/// Pixels minus reference pixels (predicted blocks), widened to 16 bits.
#[inline(always)]
pub(crate) fn widen_sub(p: &Pixels, r: &Pixels) -> Block {
    let mut b = [[0; 8]; 8];
    for ((o, a), c) in b.iter_mut().zip(p).zip(r) {
        for x in 0..8 {
            o[x] = i16::from(a[x]) - i16::from(c[x]);
        }
    }
    b
}

/// The encoder's mode decision: intra when the block's spread around its
/// mean is no larger than its distance to the reference block.
#[inline]
pub(crate) fn prefer_intra(cur: &Pixels, reference: &Pixels) -> bool {
    let (cur, reference) = (cur.as_flattened(), reference.as_flattened());
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

/// True when every coefficient but the DC one is zero.
#[inline]
pub(crate) fn dc_only(c: &Block) -> bool {
    let mut acc = c[0];
    acc[0] = 0;
    for r in &c[1..] {
        for x in 0..8 {
            acc[x] |= r[x];
        }
    }
    acc == [0; 8]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(mut f: impl FnMut(usize) -> i16) -> Block {
        std::array::from_fn(|y| std::array::from_fn(|x| f(y * 8 + x)))
    }

    /// The kernel's transform, transcribed: i32 butterflies, s16 storage.
    fn reference_wht(b: &Block) -> Block {
        fn bf(v: [i32; 8]) -> [i32; 8] {
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
        let mut o = *b;
        for row in &mut o {
            let v = bf(std::array::from_fn(|i| i32::from(row[i])));
            *row = std::array::from_fn(|i| v[i] as i16);
        }
        for x in 0..8 {
            let v = bf(std::array::from_fn(|y| i32::from(o[y][x])));
            for (y, s) in v.into_iter().enumerate() {
                o[y][x] = s as i16;
            }
        }
        o
    }

    #[test]
    fn transpose_transposes() {
        let b = block(|i| i as i16);
        let t = transpose(&b);
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(t[x][y], b[y][x]);
            }
        }
    }

    #[test]
    fn matches_kernel_transform_including_wrap() {
        let mut seed = 0x1234_5678u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 8) as i16
        };
        for _ in 0..200 {
            let b = block(|_| rnd());
            assert_eq!(transpose(&transpose(&b)), b);
            assert_eq!(wht8x8(&b), reference_wht(&b));
            // fed transposed input, wht_t is the kernel transform
            assert_eq!(wht_t(&transpose(&b)), reference_wht(&b));
        }
    }

    #[test]
    fn transform_of_flat_block_is_dc_only() {
        let b = wht8x8(&[[3i16; 8]; 8]);
        assert_eq!(b[0][0], 3 * 64);
        assert!(dc_only(&b));
        assert!(!dc_only(&wht8x8(&block(|i| i as i16))));
    }

    #[test]
    fn transform_is_self_inverse_times_64() {
        let orig = block(|i| ((i * 37 + 11) % 255) as i16 - 128);
        let b = wht8x8(&wht8x8(&orig));
        for (x, o) in b.as_flattened().iter().zip(orig.as_flattened()) {
            assert_eq!(*x, o * 64);
        }
    }

    #[test]
    fn quantize_matches_shifts() {
        for intra in [true, false] {
            let table = if intra { &QUANT_INTRA } else { &QUANT_INTER };
            for v in (i16::MIN..=i16::MAX).step_by(7) {
                let mut c = [[v; 8]; 8];
                let de = quantize(&mut c, intra, 20);
                let mut dq = c;
                dequantize(&mut dq, intra);
                for p in 0..64 {
                    let t = tpos(p as u8) as usize;
                    let s = v >> table[p];
                    let expect = if (-20..=20).contains(&s) { 0 } else { s };
                    assert_eq!(c[t / 8][t % 8], expect);
                    let ed = (i32::from(expect) << table[p]) as i16;
                    assert_eq!(de[t / 8][t % 8], ed);
                    assert_eq!(dq[t / 8][t % 8], ed);
                }
            }
        }
    }

    #[test]
    fn intra_round_trip_is_close() {
        let pixels: Pixels =
            std::array::from_fn(|y| std::array::from_fn(|x| ((y * 8 + x) * 3 % 200 + 20) as u8));
        let mut c = wht_t(&widen_sub_const(&pixels, 128));
        let de = quantize(&mut c, true, 1);
        let r = inverse(&de, true);
        for (a, b) in r.as_flattened().iter().zip(pixels.as_flattened()) {
            assert!((a - i16::from(*b)).abs() <= 8, "{a} vs {b}");
        }
    }

    #[test]
    fn dc_fast_path_matches_full_inverse() {
        for dc in [i16::MIN, -2048, -5, 0, 7, 2047, i16::MAX] {
            for intra in [true, false] {
                let mut c = [[0i16; 8]; 8];
                c[0][0] = dc;
                dequantize(&mut c, intra);
                assert_eq!(c[0][0], dequantize_dc(dc, intra));
                assert_eq!(inverse(&c, intra), inverse_dc(c[0][0], intra));
                assert!(dc_only(&c));
            }
        }
    }

    #[test]
    fn decision() {
        let flat = [[100u8; 8]; 8];
        assert!(prefer_intra(&flat, &[[0; 8]; 8]));
        let noisy: Pixels = std::array::from_fn(|y| {
            std::array::from_fn(|x| if (y * 8 + x) % 2 == 0 { 0 } else { 200 })
        });
        assert!(!prefer_intra(&noisy, &noisy));
    }
}
