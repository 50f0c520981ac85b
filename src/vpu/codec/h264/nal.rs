//! Annex-B byte stream: NAL units between start codes, emulation prevention
//! removed, and an Exp-Golomb bit reader over the RBSP. Every read is
//! bounds-checked: a truncated or corrupt unit yields [`BitstreamError`].

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BitstreamError {
    #[error("{what}: the NAL unit ends after {bits} bits")]
    Truncated { what: &'static str, bits: usize },
    #[error("{what}: {value} is out of range ({expected})")]
    Range {
        what: &'static str,
        value: u64,
        expected: &'static str,
    },
}

/// NAL unit types this module cares about (H.264 table 7-1).
pub mod nal_type {
    pub const SLICE: u8 = 1;
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
}

/// The NAL units of an Annex-B chunk (start codes of 3 or 4 bytes), each
/// without its start code. Bytes before the first start code are skipped.
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The next start code, with the zero byte of a 4-byte one and
            // any trailing_zero_8bits before it.
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .map(move |(s, e)| &data[s..e.max(s)])
        .filter(|n| !n.is_empty())
}

/// The NAL unit's payload with emulation prevention bytes removed.
pub fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// MSB-first bit reader with Exp-Golomb codes.
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> BitReader<'a> {
        BitReader { data, pos: 0 }
    }

    pub fn bit(&mut self, what: &'static str) -> Result<bool, BitstreamError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(BitstreamError::Truncated {
                what,
                bits: self.pos,
            })?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(b == 1)
    }

    pub fn bits(&mut self, n: u32, what: &'static str) -> Result<u32, BitstreamError> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | u32::from(self.bit(what)?);
        }
        Ok(v)
    }

    /// ue(v), at most 32 leading zeros.
    pub fn ue(&mut self, what: &'static str) -> Result<u32, BitstreamError> {
        let mut zeros = 0;
        while !self.bit(what)? {
            zeros += 1;
            if zeros > 31 {
                return Err(BitstreamError::Range {
                    what,
                    value: u64::from(zeros),
                    expected: "an Exp-Golomb code of at most 32 bits",
                });
            }
        }
        let rest = self.bits(zeros, what)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)) as u32)
    }

    /// se(v).
    pub fn se(&mut self, what: &'static str) -> Result<i32, BitstreamError> {
        let k = i64::from(self.ue(what)?);
        Ok(if k % 2 == 1 {
            ((k + 1) / 2) as i32
        } else {
            (-(k / 2)) as i32
        })
    }

    /// ue(v) that must not exceed `max`.
    pub fn ue_max(
        &mut self,
        max: u32,
        what: &'static str,
        expected: &'static str,
    ) -> Result<u32, BitstreamError> {
        let v = self.ue(what)?;
        if v > max {
            return Err(BitstreamError::Range {
                what,
                value: u64::from(v),
                expected,
            });
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = [
            9, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4,
        ];
        let units: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(units, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4]]);
    }

    #[test]
    fn removes_emulation_prevention() {
        assert_eq!(rbsp(&[0, 0, 3, 1, 0, 0, 3, 0]), vec![0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 | 00101 -> ue 0, 1, 2, 3; se of 4 = -2
        let data = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&data);
        assert_eq!(r.ue("a").unwrap(), 0);
        assert_eq!(r.ue("b").unwrap(), 1);
        assert_eq!(r.ue("c").unwrap(), 2);
        assert_eq!(r.ue("d").unwrap(), 3);
        assert_eq!(r.se("e").unwrap(), -2);
        assert!(matches!(
            r.ue("f"),
            Err(BitstreamError::Truncated { what: "f", .. })
        ));
    }
}
