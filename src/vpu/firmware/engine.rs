//! What a session asks of its codec engine (FWHT and H.264, decoder and
//! encoder: `decoder.rs`, `h264dec.rs`, `encoder.rs`, `h264enc.rs`). The
//! session checks and stores what the host sends (`session.rs`); the engine
//! decides what a format, a control or a stream change means for its codec
//! and does the coding in [`CodecEngine::step`]. The stream lifecycle every
//! engine shares (drain, LAST, restart) is [`Drain`], reached through
//! [`CodecEngine::drain`]; the provided methods forward to it, and an engine
//! adds its own part through [`CodecEngine::flush`].

use super::Faults;
use super::drain::Drain;
use super::session::{FwQueue, QueuedBuffer, Sink};
use crate::m2m::{Colorimetry, Format, PixelFormat, QueueKind};

pub(crate) trait CodecEngine: Send {
    /// The engine's stream lifecycle.
    fn drain(&mut self) -> &mut Drain;

    /// Whether OUTPUT needs a format before it streams. A decoder's does
    /// not: the bitstream's header tells the format (dev-decoder.rst).
    fn output_needs_format(&self) -> bool {
        true
    }

    /// `S_FMT` on `queue`.
    fn set_format(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        queue: QueueKind,
        pixfmt: PixelFormat,
        size: (u32, u32),
        colorimetry: Colorimetry,
    ) -> Result<(), String>;

    /// The host's own plane layout for `queue` (`format`); `None` when this
    /// engine keeps its own layout (the host is told so).
    fn set_layout(
        &mut self,
        _capture: &mut FwQueue,
        _queue: QueueKind,
        _format: Format,
    ) -> Option<Result<(), String>> {
        None
    }

    /// `S_CTRL`; a decoder has no controls.
    fn set_control(&mut self, id: u32, _value: u32) -> Result<(), String> {
        Err(format!("control {id} does not apply to a decoder"))
    }

    /// `V4L2_CID_MIN_BUFFERS_FOR_OUTPUT`: 1, plus the frames the codec
    /// holds back.
    fn min_output_buffers(&self) -> u32 {
        1
    }

    /// An OUTPUT buffer just queued (an encoder marks the one to code as a
    /// key frame).
    fn on_output_queued(&mut self, _buf: &mut QueuedBuffer) {}

    /// The engine's own part of a stream-off of `queue` (an OUTPUT
    /// stream-off is a flush), before the lifecycle's.
    fn flush(&mut self, _queue: QueueKind) {}

    fn stream_on(&mut self, queue: QueueKind) {
        self.drain().stream_on(queue);
    }

    fn stream_off(&mut self, queue: QueueKind) {
        self.flush(queue);
        self.drain().stream_off(queue);
    }

    /// `CMD_STOP`: true when a drain started.
    fn stop(&mut self, output: &FwQueue) -> bool {
        self.drain().stop(output)
    }

    /// `CMD_START`.
    fn start(&mut self) {
        self.drain().start();
    }

    /// One unit of work; false when nothing more can happen now.
    fn step(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) -> bool;
}
