//! The stateful encoder engine of a session (dev-encoder.rst, emulated).
//!
//! One raw OUTPUT buffer and one CAPTURE buffer make one coded frame; the
//! CAPTURE buffer takes the OUTPUT buffer's timestamp. A drain (`Stop`) codes
//! everything queued before it and returns one CAPTURE buffer flagged LAST.
//! A key frame is forced by the `FORCE_KEY_FRAME` control (for the next OUTPUT
//! buffer queued) or by an OUTPUT buffer queued with the KEYFRAME flag.

use super::Faults;
use super::drain::Drain;
use super::encode::{capture_done, output_done, raw_frame, set_capture_format};
use super::engine::CodecEngine;
use super::session::{FwQueue, QueuedBuffer, Sink, control_name};
use crate::m2m::{BufferFlags, Colorimetry, Format, PixelFormat, QueueKind};
use crate::vpu::codec::fwht::{EncoderParams, FwhtEncoder};
use crate::vpu::protocol::ctrl;

#[derive(Default)]
pub(crate) struct Encoder {
    codec: Option<FwhtEncoder>,
    params: EncoderParams,
    drain: Drain,
    force_next: bool,
}

impl CodecEngine for Encoder {
    fn drain(&mut self) -> &mut Drain {
        &mut self.drain
    }

    fn set_format(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        queue: QueueKind,
        pixfmt: PixelFormat,
        (width, height): (u32, u32),
        colorimetry: Colorimetry,
    ) -> Result<(), String> {
        match queue {
            QueueKind::Output => {
                if pixfmt.is_coded() {
                    return Err(format!("encoder OUTPUT takes a raw format, not {pixfmt}"));
                }
                if width == 0 || height == 0 {
                    return Err(format!(
                        "encoder OUTPUT needs a frame size, got {width}x{height}"
                    ));
                }
                let mut raw = Format::raw(pixfmt, width, height)
                    .ok_or_else(|| format!("the FWHT encoder cannot take {pixfmt}"))?;
                raw.colorimetry = colorimetry;
                let codec = FwhtEncoder::new(&raw, self.params).map_err(|e| e.to_string())?;
                let mut coded = Format::coded(PixelFormat::Fwht, width, height);
                coded.colorimetry = colorimetry;
                self.codec = Some(codec);
                output.format = Some(raw);
                capture.format = Some(coded);
            }
            QueueKind::Capture => {
                set_capture_format(capture, PixelFormat::Fwht, pixfmt, width, height)?;
            }
        }
        Ok(())
    }

    fn set_control(&mut self, id: u32, value: u32) -> Result<(), String> {
        let mut params = self.params;
        match id {
            ctrl::GOP_SIZE => params.gop_size = value,
            ctrl::I_FRAME_QP => params.i_frame_qp = value,
            ctrl::P_FRAME_QP => params.p_frame_qp = value,
            ctrl::FORCE_KEY_FRAME => {
                self.force_next = true;
                return Ok(());
            }
            // Every V4L2 encoder takes a frame rate (S_PARM); FWHT has no
            // rate control, so it does not use it.
            ctrl::FRAME_RATE_MHZ => return Ok(()),
            _ => {
                return Err(format!(
                    "the FWHT encoder has no {} control ({id})",
                    control_name(id)
                ));
            }
        }
        // Without a format there is no codec yet: the values are checked when
        // the OUTPUT format creates it.
        if let Some(codec) = self.codec.as_mut() {
            codec.set_params(params).map_err(|e| e.to_string())?;
        }
        self.params = params;
        Ok(())
    }

    fn on_output_queued(&mut self, buf: &mut QueuedBuffer) {
        if std::mem::take(&mut self.force_next) {
            buf.flags.insert(BufferFlags::KEYFRAME);
        }
    }

    fn flush(&mut self, queue: QueueKind) {
        if queue == QueueKind::Output
            && let Some(codec) = self.codec.as_mut()
        {
            // After a flush the stream restarts with a key frame.
            codec.force_keyframe();
        }
    }

    /// One unit of work (a frame coded, or the drain finished); false when
    /// nothing more can happen now.
    fn step(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) -> bool {
        if !self.drain.is_running() || !capture.streaming {
            return false;
        }
        if self.drain.may_take_output(output)
            && let Some(dst) = capture.buffers.pop_front()
            && let Some(src) = self.drain.take_output(output)
        {
            self.encode(src, dst, output.format.as_ref(), faults, sink);
            return true;
        }
        self.drain.drained() && self.drain.finish(capture, sink)
    }
}

impl Encoder {
    fn encode(
        &mut self,
        src: QueuedBuffer,
        dst: QueuedBuffer,
        raw: Option<&Format>,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) {
        let seq = self.drain.next_sequence();
        let dst = QueuedBuffer {
            timestamp: src.timestamp,
            ..dst
        };
        let result = raw_frame(&src, raw).and_then(|raw| {
            let codec = self
                .codec
                .as_mut()
                .ok_or_else(|| "OUTPUT has no format".to_owned())?;
            if src.flags.contains(BufferFlags::KEYFRAME) {
                codec.force_keyframe();
            }
            let input = src.region.device_read();
            let mut output = dst.region.device_write();
            codec
                .encode(&input[..raw.size], &mut output)
                .map(|enc| (enc.bytes, enc.keyframe))
                .map_err(|e| e.to_string())
        });
        output_done(&src, faults, sink);
        capture_done(&dst, seq, result, sink);
    }
}
