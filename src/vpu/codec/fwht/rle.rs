//! Run-length coding of one quantised block.
//!
//! A coded block is a header halfword (bit 15: predicted block; bits 1-12: how
//! many following blocks repeat this one; bit 0 always 0) and coefficient
//! halfwords in zigzag order: the signed value in the top 12 bits, and in the
//! low 4 bits the number of zeros (0-14) that precede it, or 15 for "the rest
//! of the block is zero". Halfwords are big-endian in the stream.

use super::transform::{Block, ZIGZAG_T};

pub(crate) const PFRAME_BIT: u16 = 1 << 15;
/// A header with this bit is not something an encoder writes; the kernel
/// decoder uses it as its overflow marker and rejects it.
pub(crate) const OVERFLOW_BIT: u16 = 1 << 14;
pub(crate) const DUPS_MASK: u16 = 0x1ffe;
const ALL_ZEROS: u16 = 15;

/// One run-length coded block: at most a header plus 64 coefficients.
#[derive(Clone, Copy)]
pub(crate) struct Coded {
    pub words: [u16; 65],
    pub len: usize,
}

impl Coded {
    pub(crate) fn as_slice(&self) -> &[u16] {
        &self.words[..self.len]
    }
}

/// Codes `coeffs` (transposed, see [`super::transform`]) exactly as
/// vicodec's `rlc()`.
pub(crate) fn encode_block(coeffs: &Block, predicted: bool) -> Coded {
    let mut words = [0u16; 65];
    words[0] = if predicted { PFRAME_BIT } else { 0 };
    let flat = coeffs.as_flattened();
    let zz: [i16; 64] = std::array::from_fn(|i| flat[usize::from(ZIGZAG_T[i])]);

    // Number of coefficients up to and including the last non-zero one.
    let used = zz.iter().rposition(|&v| v != 0).map_or(0, |p| p + 1);
    let trailing = 64 - used;
    let to_encode = if trailing > 14 { used } else { 64 };

    let mut len = 1;
    let mut i = 0;
    while i < to_encode {
        let mut run = 0u16;
        let mut value = zz[i];
        while value == 0 && run < 14 {
            run += 1;
            i += 1;
            if i == to_encode {
                // The block ends in a short zero run: the last zero is coded
                // as the value of the final halfword.
                run -= 1;
                break;
            }
            value = zz[i];
        }
        words[len] = ((i32::from(value) << 4) as u16) | run;
        len += 1;
        i += 1;
    }
    if trailing > 14 {
        words[len] = ALL_ZEROS;
        len += 1;
    }
    Coded { words, len }
}

/// Why a block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockError {
    /// The payload ended inside the block.
    Truncated,
    /// The header has the kernel's overflow bit set.
    BadHeader,
}

/// Reads big-endian halfwords from a payload whose odd trailing byte, if
/// any, is ignored (as the kernel does).
pub(crate) struct HalfwordReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> HalfwordReader<'a> {
    pub(crate) fn new(payload: &'a [u8]) -> Self {
        let even = payload.len() & !1;
        HalfwordReader {
            bytes: payload.get(..even).unwrap_or_default(),
            pos: 0,
        }
    }

    #[inline(always)]
    fn next(&mut self) -> Option<u16> {
        let b = self.bytes.get(self.pos..self.pos + 2)?;
        self.pos += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Takes `n` raw bytes (a stored-raw plane).
    pub(crate) fn take_bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    /// Decodes one block into `out` (transposed, see [`super::transform`]);
    /// returns its header and whether any coefficient other than the DC one
    /// is non-zero.
    #[inline]
    pub(crate) fn decode_block(&mut self, out: &mut Block) -> Result<(u16, bool), BlockError> {
        let stat = self.next().ok_or(BlockError::Truncated)?;
        if stat & OVERFLOW_BIT != 0 {
            return Err(BlockError::BadHeader);
        }
        *out = [[0; 8]; 8];
        let flat = out.as_flattened_mut();
        let mut ac = 0i16;
        let mut n = 0usize;
        while n < 64 {
            let w = self.next().ok_or(BlockError::Truncated)?;
            let run = usize::from(w & 0xf);
            if run == usize::from(ALL_ZEROS) {
                break;
            }
            n += run;
            if n < 64 {
                let v = (w as i16) >> 4;
                flat[usize::from(ZIGZAG_T[n])] = v;
                if n > 0 {
                    ac |= v;
                }
            }
            n += 1;
        }
        Ok((stat, ac != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(coeffs: &Block, predicted: bool) -> usize {
        let coded = encode_block(coeffs, predicted);
        let bytes: Vec<u8> = coded
            .as_slice()
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        let mut r = HalfwordReader::new(&bytes);
        let mut out = [[1i16; 8]; 8];
        let (stat, ac) = r.decode_block(&mut out).unwrap();
        assert_eq!(stat & PFRAME_BIT != 0, predicted);
        assert_eq!(&out, coeffs);
        assert_eq!(ac, coeffs.as_flattened()[1..].iter().any(|&v| v != 0));
        coded.len
    }

    /// Sets the i-th coefficient in zigzag order.
    fn set(b: &mut Block, i: usize, v: i16) {
        b.as_flattened_mut()[usize::from(ZIGZAG_T[i])] = v;
    }

    #[test]
    fn zero_block_is_two_halfwords() {
        let z = [[0i16; 8]; 8];
        let c = encode_block(&z, false);
        assert_eq!(c.as_slice(), &[0, 15]);
        round_trip(&z, true);
    }

    #[test]
    fn various_blocks_round_trip() {
        let mut b = [[0i16; 8]; 8];
        set(&mut b, 0, -2048);
        set(&mut b, 63, 2047);
        round_trip(&b, false);
        let mut b = [[0i16; 8]; 8];
        set(&mut b, 50, 5); // 14 trailing zeros: no ALL_ZEROS marker
        assert_eq!(round_trip(&b, false), 1 + 4 + 1);
        let b: Block =
            std::array::from_fn(|y| std::array::from_fn(|x| ((y * 8 + x) as i16 % 5) - 2));
        round_trip(&b, true);
        let mut b = [[0i16; 8]; 8];
        set(&mut b, 62, 1); // one trailing zero
        round_trip(&b, false);
        let mut b = [[0i16; 8]; 8];
        set(&mut b, 0, 9); // DC only
        assert_eq!(encode_block(&b, false).as_slice(), &[0, 9 << 4, 15]);
        round_trip(&b, false);
    }

    #[test]
    fn truncated_and_bad_header() {
        let mut out = [[0i16; 8]; 8];
        assert_eq!(
            HalfwordReader::new(&[0, 0, 0]).decode_block(&mut out),
            Err(BlockError::Truncated)
        );
        assert_eq!(
            HalfwordReader::new(&[0x40, 0, 0, 15]).decode_block(&mut out),
            Err(BlockError::BadHeader)
        );
    }
}
