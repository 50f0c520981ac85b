//! The 44-byte FWHT frame header: eleven big-endian u32 (two magic words,
//! version, visible width and height, flags, the four colorimetry fields,
//! payload size).

use super::FwhtError;
use super::pixfmt::VICODEC_SIGNATURES;
use crate::m2m::Colorimetry;
use crate::m2m::layout::{FWHT_HEADER_SIZE, MAX_DIM, vic_round_dim};

pub(crate) const MAGIC1: u32 = 0x4f4f_4f4f;
pub(crate) const MAGIC2: u32 = 0xffff_ffff;
/// The magic as it appears in the byte stream.
pub(crate) const MAGIC: [u8; 8] = [0x4f, 0x4f, 0x4f, 0x4f, 0xff, 0xff, 0xff, 0xff];
/// The version vicodec writes (`V4L2_FWHT_VERSION`).
pub const FWHT_VERSION: u32 = 3;
/// Bytes of the header.
pub const HEADER_SIZE: usize = FWHT_HEADER_SIZE;

/// Header flag bits (`V4L2_FWHT_FL_*`).
pub mod flags {
    pub const LUMA_IS_UNCOMPRESSED: u32 = 1 << 4;
    pub const CB_IS_UNCOMPRESSED: u32 = 1 << 5;
    pub const CR_IS_UNCOMPRESSED: u32 = 1 << 6;
    pub const CHROMA_FULL_HEIGHT: u32 = 1 << 7;
    pub const CHROMA_FULL_WIDTH: u32 = 1 << 8;
    pub const ALPHA_IS_UNCOMPRESSED: u32 = 1 << 9;
    pub const I_FRAME: u32 = 1 << 10;
    pub const COMPONENTS_NUM_MASK: u32 = 0x7 << 16;
    pub const COMPONENTS_NUM_OFFSET: u32 = 16;
    pub const PIXENC_MASK: u32 = 0x3 << 19;
    pub const PIXENC_OFFSET: u32 = 19;
}

/// How the components of a stream are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelEncoding {
    Yuv,
    Rgb,
    Hsv,
}

impl PixelEncoding {
    pub(crate) const fn bits(self) -> u32 {
        let v = match self {
            PixelEncoding::Yuv => 1,
            PixelEncoding::Rgb => 2,
            PixelEncoding::Hsv => 3,
        };
        v << flags::PIXENC_OFFSET
    }
}

/// A parsed, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FwhtHeader {
    /// 1..=3; version 1 carries no component count or pixel encoding.
    pub version: u32,
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
    /// Raw `V4L2_FWHT_FL_*` flags.
    pub flags: u32,
    pub colorimetry: Colorimetry,
    /// Payload bytes after the header.
    pub payload_size: u32,
    /// Number of coded components (1 grey, 3 colour, 4 colour + alpha).
    pub components: u32,
    /// `None` for version-1 headers (any encoding matches).
    pub pixel_encoding: Option<PixelEncoding>,
}

fn be32(buf: &[u8], word: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = buf.get(word * 4..word * 4 + 4) {
        b.copy_from_slice(s);
    }
    u32::from_be_bytes(b)
}

/// Parses and validates the header at the start of `buf` (payload not needed).
pub fn parse_header(buf: &[u8]) -> Result<FwhtHeader, FwhtError> {
    if buf.len() < HEADER_SIZE {
        return Err(FwhtError::TruncatedHeader { found: buf.len() });
    }
    let (m1, m2) = (be32(buf, 0), be32(buf, 1));
    if m1 != MAGIC1 || m2 != MAGIC2 {
        return Err(FwhtError::BadMagic { found: [m1, m2] });
    }
    let version = be32(buf, 2);
    if version == 0 || version > FWHT_VERSION {
        return Err(FwhtError::UnsupportedVersion { version });
    }
    let (width, height, flags_word) = (be32(buf, 3), be32(buf, 4), be32(buf, 5));
    if width == 0 || height == 0 || width > MAX_DIM || height > MAX_DIM {
        return Err(FwhtError::BadDimensions { width, height });
    }
    let (components, pixel_encoding) = if version >= 2 {
        let n = 1 + ((flags_word & flags::COMPONENTS_NUM_MASK) >> flags::COMPONENTS_NUM_OFFSET);
        let enc = match (flags_word & flags::PIXENC_MASK) >> flags::PIXENC_OFFSET {
            1 => PixelEncoding::Yuv,
            2 => PixelEncoding::Rgb,
            3 => PixelEncoding::Hsv,
            _ => {
                return Err(FwhtError::BadFlags {
                    flags: flags_word,
                    reason: "pixel encoding is 0",
                });
            }
        };
        (n, Some(enc))
    } else {
        (3, None)
    };
    let h = FwhtHeader {
        version,
        width,
        height,
        flags: flags_word,
        colorimetry: Colorimetry {
            colorspace: be32(buf, 6),
            xfer_func: be32(buf, 7),
            ycbcr_enc: be32(buf, 8),
            quantization: be32(buf, 9),
        },
        payload_size: be32(buf, 10),
        components,
        pixel_encoding,
    };
    let (wd, hd) = (h.chroma_width_div(), h.chroma_height_div());
    let known = VICODEC_SIGNATURES.iter().any(|&(w, hh, n, e)| {
        w == wd && hh == hd && n == components && pixel_encoding.is_none_or(|p| p == e)
    });
    if !known {
        return Err(FwhtError::BadFlags {
            flags: flags_word,
            reason: "no raw format has this component count, encoding and subsampling",
        });
    }
    Ok(h)
}

impl FwhtHeader {
    /// True when no block of the frame is predicted (`V4L2_FWHT_FL_I_FRAME`).
    pub fn is_keyframe(&self) -> bool {
        self.flags & flags::I_FRAME != 0
    }

    /// Horizontal chroma subsampling divisor (1 or 2).
    pub fn chroma_width_div(&self) -> u32 {
        if self.flags & flags::CHROMA_FULL_WIDTH != 0 {
            1
        } else {
            2
        }
    }

    /// Vertical chroma subsampling divisor (1 or 2).
    pub fn chroma_height_div(&self) -> u32 {
        if self.flags & flags::CHROMA_FULL_HEIGHT != 0 {
            1
        } else {
            2
        }
    }

    /// Largest payload a frame of this geometry may carry: the raw size of all
    /// its planes at coded size, as vicodec's decoder allows (`comp_max_size`).
    pub fn max_payload_size(&self) -> usize {
        let (wd, hd) = (self.chroma_width_div(), self.chroma_height_div());
        let size = vic_round_dim(self.width, wd) as usize * vic_round_dim(self.height, hd) as usize;
        let chroma = size / (wd * hd) as usize;
        match self.components {
            1 => size,
            4 => 2 * size + 2 * chroma,
            _ => size + 2 * chroma,
        }
    }

    /// Total frame length: header plus payload.
    pub fn frame_size(&self) -> usize {
        HEADER_SIZE + self.payload_size as usize
    }

    /// The 44 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let words = [
            MAGIC1,
            MAGIC2,
            self.version,
            self.width,
            self.height,
            self.flags,
            self.colorimetry.colorspace,
            self.colorimetry.xfer_func,
            self.colorimetry.ycbcr_enc,
            self.colorimetry.quantization,
            self.payload_size,
        ];
        let mut out = [0u8; HEADER_SIZE];
        for (dst, w) in out.chunks_exact_mut(4).zip(words) {
            dst.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i420_header() -> FwhtHeader {
        FwhtHeader {
            version: 3,
            width: 640,
            height: 480,
            flags: 0xa0000 | flags::I_FRAME,
            colorimetry: Colorimetry {
                colorspace: 3,
                ..Default::default()
            },
            payload_size: 1234,
            components: 3,
            pixel_encoding: Some(PixelEncoding::Yuv),
        }
    }

    #[test]
    fn round_trip() {
        let h = i420_header();
        let b = h.to_bytes();
        assert_eq!(&b[..8], &MAGIC);
        assert_eq!(parse_header(&b).unwrap(), h);
        assert!(h.is_keyframe());
        assert_eq!((h.chroma_width_div(), h.chroma_height_div()), (2, 2));
        assert_eq!(h.max_payload_size(), 640 * 480 * 3 / 2);
    }

    #[test]
    fn rejects_bad_headers() {
        let good = i420_header().to_bytes();
        assert!(matches!(
            parse_header(&good[..43]),
            Err(FwhtError::TruncatedHeader { found: 43 })
        ));
        let mut b = good;
        b[4] = 0;
        assert!(matches!(parse_header(&b), Err(FwhtError::BadMagic { .. })));
        let mut b = good;
        b[11] = 4;
        assert!(matches!(
            parse_header(&b),
            Err(FwhtError::UnsupportedVersion { version: 4 })
        ));
        let mut b = good;
        b[12..16].fill(0);
        assert!(matches!(
            parse_header(&b),
            Err(FwhtError::BadDimensions { width: 0, .. })
        ));
        // Five components.
        let mut h = i420_header();
        h.flags = (4 << 16) | PixelEncoding::Yuv.bits();
        assert!(matches!(
            parse_header(&h.to_bytes()),
            Err(FwhtError::BadFlags { .. })
        ));
        // No pixel encoding.
        h.flags = 2 << 16;
        assert!(matches!(
            parse_header(&h.to_bytes()),
            Err(FwhtError::BadFlags { .. })
        ));
    }

    #[test]
    fn version_1_defaults_to_three_components() {
        let mut h = i420_header();
        h.version = 1;
        h.flags = flags::I_FRAME;
        let p = parse_header(&h.to_bytes()).unwrap();
        assert_eq!((p.components, p.pixel_encoding), (3, None));
    }
}
