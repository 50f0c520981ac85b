//! What the decoder engines (FWHT in `decoder.rs`, H.264 in `h264dec.rs`)
//! share around their codecs: the coded OUTPUT format, the raw CAPTURE
//! format the host asks for, and the source change that announces the
//! stream's own CAPTURE format (dev-decoder.rst, "Initialization" and
//! "Dynamic resolution change"). The drain and stream lifecycle are in
//! [`super::drain`].

use super::session::{FwQueue, Sink};
use crate::m2m::{Colorimetry, Format, PixelFormat};
use crate::vpu::protocol::{DEFAULT_CODED_SIZE, MAX_FORMATS, Response};

/// OUTPUT `S_FMT` on a decoder: only `coded` is accepted; a size of 0 (the
/// client does not know it before the stream's header) takes the default
/// coded size, which only sizes the bitstream buffers.
pub(super) fn set_output_format(
    output: &mut FwQueue,
    coded: PixelFormat,
    pixfmt: PixelFormat,
    (width, height): (u32, u32),
    colorimetry: Colorimetry,
) -> Result<(), String> {
    if pixfmt != coded {
        return Err(format!("decoder OUTPUT takes {coded}, not {pixfmt}"));
    }
    let (w, h) = if width == 0 || height == 0 {
        DEFAULT_CODED_SIZE
    } else {
        (width, height)
    };
    let mut f = Format::coded(coded, w, h);
    f.colorimetry = colorimetry;
    output.format = Some(f);
    Ok(())
}

/// The raw format `pixfmt` at `width`x`height` (at least 1x1) with
/// `colorimetry`, or why this VPU has no layout for it.
pub(super) fn raw_format(
    pixfmt: PixelFormat,
    (width, height): (u32, u32),
    colorimetry: Colorimetry,
) -> Result<Format, String> {
    let (w, h) = (width.max(1), height.max(1));
    let mut f = Format::raw(pixfmt, w, h)
        .ok_or_else(|| format!("{pixfmt} at {w}x{h} has no raw layout"))?;
    f.colorimetry = colorimetry;
    Ok(f)
}

/// Posts the source change that announces `format` as the stream's CAPTURE
/// format, with `min_buffers`, and every raw format the stream can decode
/// to (`allowed`), `format`'s first; then `format` is CAPTURE's format.
pub(super) fn announce_capture_format(
    capture: &mut FwQueue,
    sink: &mut Sink<'_>,
    format: Format,
    allowed: &[PixelFormat],
    min_buffers: u32,
) {
    let chosen = format.pixelformat.fourcc();
    let mut formats = vec![chosen];
    formats.extend(allowed.iter().map(|p| p.fourcc()).filter(|&c| c != chosen));
    formats.truncate(MAX_FORMATS);
    sink.post(Response::SourceChange {
        fourcc: chosen,
        width: format.width,
        height: format.height,
        colorimetry: format.colorimetry,
        min_buffers,
        formats,
    });
    capture.format = Some(format);
}
