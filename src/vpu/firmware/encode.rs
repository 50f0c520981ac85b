//! What the encoder engines (FWHT in `encoder.rs`, H.264 in `h264enc.rs`)
//! share around their codecs: the coded CAPTURE format, the check that an
//! OUTPUT buffer holds a whole raw frame, handing that buffer back once the
//! codec has read it, and returning a CAPTURE buffer with the coded frame
//! or the reason it has none. The drain and stream lifecycle are in
//! [`super::drain`].

use super::Faults;
use super::session::{FwQueue, QueuedBuffer, Sink};
use crate::m2m::{BufferFlags, Format, PixelFormat, QueueKind};

/// CAPTURE `S_FMT` on an encoder: only `coded` is accepted; until OUTPUT's
/// format sets the real one, the coded format takes the requested size.
pub(super) fn set_capture_format(
    capture: &mut FwQueue,
    coded: PixelFormat,
    pixfmt: PixelFormat,
    width: u32,
    height: u32,
) -> Result<(), String> {
    if pixfmt != coded {
        return Err(format!("encoder CAPTURE gives {coded}, not {pixfmt}"));
    }
    if capture.format.is_none() {
        capture.format = Some(Format::coded(coded, width.max(1), height.max(1)));
    }
    Ok(())
}

/// The raw frame `src` must hold: OUTPUT's format `raw`, all of it.
pub(super) fn raw_frame<'f>(
    src: &QueuedBuffer,
    raw: Option<&'f Format>,
) -> Result<&'f Format, String> {
    let raw = raw.ok_or_else(|| "OUTPUT has no format".to_owned())?;
    if src.bytesused < raw.size {
        return Err(format!(
            "OUTPUT buffer {} holds {} bytes, a {}x{} {} frame needs {}",
            src.index, src.bytesused, raw.width, raw.height, raw.pixelformat, raw.size
        ));
    }
    Ok(raw)
}

/// The codec has read `src`: after the simulated frame time, it goes back.
pub(super) fn output_done(src: &QueuedBuffer, faults: &Faults, sink: &mut Sink<'_>) {
    let delay = faults.frame_delay();
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    sink.done(
        QueueKind::Output,
        src,
        src.bytesused,
        BufferFlags::NONE,
        0,
        "",
    );
}

/// Returns `dst` with a coded frame (bytes, key frame or not), or empty and
/// flagged ERROR with the reason.
pub(super) fn capture_done(
    dst: &QueuedBuffer,
    sequence: u32,
    coded: Result<(usize, bool), String>,
    sink: &mut Sink<'_>,
) {
    match coded {
        Ok((bytes, keyframe)) => {
            let kind = if keyframe {
                BufferFlags::KEYFRAME
            } else {
                BufferFlags::PFRAME
            };
            sink.done(QueueKind::Capture, dst, bytes, kind, sequence, "");
        }
        Err(reason) => sink.done(
            QueueKind::Capture,
            dst,
            0,
            BufferFlags::ERROR,
            sequence,
            &reason,
        ),
    }
}
