//! FWHT codec, bit-exact with the Linux kernel's `vicodec` test driver.
//!
//! # The format
//!
//! A stream is a sequence of frames, each a 44-byte header ([`FwhtHeader`]:
//! magic `4f4f4f4f ffffffff`, version 3, visible size, flags, colorimetry,
//! payload size; all big-endian) followed by the payload. The payload holds
//! the components in order luma (G for RGB), Cb (B), Cr (R), alpha, each at
//! its visible size divided by the chroma subsampling and rounded up to a
//! multiple of 8. A component is either stored raw (its flag set; every 0xff
//! byte written as 0xfe so the magic cannot occur) or as 8x8 blocks in raster
//! order: each block is transformed with an 8x8 Walsh-Hadamard transform,
//! quantised by a fixed table shifted by the I- or P-frame QP, scanned in
//! zigzag order and run-length coded ([`rle`]). A block is intra-coded or
//! predicted from the same block of the previous frame's reconstruction;
//! identical consecutive coded blocks collapse into one with a repeat count.
//!
//! # Bit-exactness
//!
//! The places where a casual port diverges from vicodec, all reproduced here
//! (see `/work/shared/FWHT-FACTS.md`): the I-frame flag means "no block was
//! predicted" and restarts the GOP, so the GOP size is a maximum distance; the
//! encoder does not update its reference when the next frame is planned
//! intra, even if that plan later changes; a component whose coded size
//! reaches `visible area / 2 - 256` halfwords is stored raw while its
//! reference keeps the blocks reconstructed before; 16-bit wrapping between
//! transform passes; and the decoder's reference, like vicodec's, holds zeros
//! below the visible rows, which shows in the padding rows of P-frames.
//!
//! # Design
//!
//! [`FwhtEncoder`] and [`FwhtDecoder`] own their reference frames and work on
//! caller-provided buffers laid out per a [`Format`](crate::m2m::Format) (see
//! [`Format::raw`](crate::m2m::Format::raw) for vicodec's layout). The
//! decoder also writes layouts without vicodec's padding rows and columns
//! ([`check_output_layout`]), e.g. GStreamer's default one, with the same
//! pictures: it decodes into internal planes and copies out what fits. Component
//! geometry comes from one table ([`pixfmt`]); the encoder specialises its
//! inner loop per sample step at compile time; all input-dependent indexing is
//! checked, so corrupt input yields an [`FwhtError`], never a panic. The
//! [`FrameScanner`] turns an arbitrarily cut byte stream into frames, as
//! the stateful decoder's OUTPUT queue needs.

mod decoder;
mod encoder;
mod header;
mod pixfmt;
mod rle;
mod scanner;
mod testing;
mod transform;

pub use decoder::{Decoded, FwhtDecoder};
pub use encoder::{Encoded, FwhtEncoder};
pub use header::{FWHT_VERSION, FwhtHeader, HEADER_SIZE, PixelEncoding, flags, parse_header};
pub use scanner::FrameScanner;
pub use testing::{psnr, test_pattern};

use crate::m2m::PixelFormat;

/// Encoder controls, with vicodec's ranges and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderParams {
    /// Maximum distance between I-frames (`V4L2_CID_MPEG_VIDEO_GOP_SIZE`), 1..=16.
    pub gop_size: u32,
    /// Quantiser of intra blocks (`V4L2_CID_FWHT_I_FRAME_QP`), 1..=31.
    pub i_frame_qp: u32,
    /// Quantiser of predicted blocks (`V4L2_CID_FWHT_P_FRAME_QP`), 1..=31.
    pub p_frame_qp: u32,
}

impl EncoderParams {
    pub const GOP_SIZE_RANGE: (u32, u32) = (1, 16);
    pub const QP_RANGE: (u32, u32) = (1, 31);

    fn validate(&self) -> Result<(), FwhtError> {
        let check = |name, value, (min, max): (u32, u32)| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(FwhtError::InvalidParam {
                    name,
                    value,
                    min,
                    max,
                })
            }
        };
        check("gop_size", self.gop_size, Self::GOP_SIZE_RANGE)?;
        check("i_frame_qp", self.i_frame_qp, Self::QP_RANGE)?;
        check("p_frame_qp", self.p_frame_qp, Self::QP_RANGE)
    }
}

impl Default for EncoderParams {
    fn default() -> Self {
        EncoderParams {
            gop_size: 10,
            i_frame_qp: 20,
            p_frame_qp: 20,
        }
    }
}

/// Everything that can go wrong encoding or decoding FWHT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwhtError {
    #[error("{0} is not a raw format the FWHT codec supports")]
    UnsupportedFormat(PixelFormat),
    #[error("{name} = {value} is out of range: expected {min}..={max}")]
    InvalidParam {
        name: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("{format} layout cannot hold the frame: {reason}")]
    BadLayout { format: PixelFormat, reason: String },
    #[error("{what} too small: expected at least {expected} bytes, found {found}")]
    BufferTooSmall {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("FWHT header truncated: expected {HEADER_SIZE} bytes, found {found}")]
    TruncatedHeader { found: usize },
    #[error("bad FWHT magic: expected 4f4f4f4f ffffffff, found {:08x} {:08x}", found[0], found[1])]
    BadMagic { found: [u32; 2] },
    #[error("unsupported FWHT version {version}: expected 1..={FWHT_VERSION}")]
    UnsupportedVersion { version: u32 },
    #[error("FWHT size {width}x{height} is invalid: expected 1..=16384 in each direction")]
    BadDimensions { width: u32, height: u32 },
    #[error("invalid FWHT flags {flags:#x}: {reason}")]
    BadFlags { flags: u32, reason: &'static str },
    #[error(
        "FWHT header says {width}x{height} with a {size}-byte payload but the buffer holds {found} payload bytes"
    )]
    TruncatedPayload {
        width: u32,
        height: u32,
        size: u32,
        found: usize,
    },
    #[error(
        "FWHT header says a {size}-byte payload, more than the {max} bytes a raw {width}x{height} frame takes"
    )]
    PayloadTooLarge {
        size: u32,
        max: usize,
        width: u32,
        height: u32,
    },
    #[error("FWHT stream is {stream} but the CAPTURE format is {format}")]
    FormatMismatch { stream: String, format: String },
    #[error("predicted FWHT frame without a reference frame: decoding must start at an I-frame")]
    NoReference,
    #[error("corrupt FWHT payload in the {plane} plane: {reason}")]
    CorruptPayload {
        plane: &'static str,
        reason: &'static str,
    },
}

/// CAPTURE formats a stream with header `h` decodes to, preferred first, in
/// vicodec's order (YU12 for 4:2:0, 422P for 4:2:2, BGR3 for RGB, ...).
/// Empty for streams no [`PixelFormat`] can hold (HSV, 4:4:4 YUV).
pub fn capture_formats(h: &FwhtHeader) -> Vec<PixelFormat> {
    pixfmt::PIX_INFOS
        .iter()
        .filter(|i| {
            i.width_div == h.chroma_width_div()
                && i.height_div == h.chroma_height_div()
                && i.components_num() == h.components
                && h.pixel_encoding.is_none_or(|e| e == i.encoding)
        })
        .map(|i| i.format)
        .collect()
}

/// Checks that the decoder can write frames of `raw` in its layout: every
/// component's visible rows and columns inside the planes and the buffer.
/// Padding rows and columns may be missing ([`FwhtDecoder::decode`] writes
/// what the layout holds); the encoder still needs vicodec's layout.
pub fn check_output_layout(raw: &crate::m2m::Format) -> Result<(), FwhtError> {
    pixfmt::output_plane_geoms(raw).map(|_| ())
}

/// True when `raw` is a format the codec can encode from and decode to.
pub fn supports(raw: PixelFormat) -> bool {
    pixfmt::PixInfo::of(raw).is_some()
}

#[cfg(test)]
mod tests;
