//! The stream lifecycle every engine of a session shares: running, waiting
//! for CAPTURE after a source change, drained; the drain (`Stop`) and its
//! LAST buffer; the CAPTURE sequence numbers (dev-decoder.rst and
//! dev-encoder.rst, "Drain").
//!
//! A drain counts the OUTPUT buffers queued when it is requested; the engine
//! takes OUTPUT buffers only through [`Drain::take_output`], so exactly those
//! are consumed. Once the engine has also returned everything they produced,
//! [`Drain::finish`] returns one empty CAPTURE buffer flagged LAST and the
//! engine stops until `Start`, a CAPTURE stream-on or an OUTPUT stream-off.
//! A decoder whose stream changes format mid-stream owes one empty LAST
//! buffer that ends the old format ([`Drain::owe_last`]) and waits for the
//! host to stream CAPTURE on again ([`Drain::await_capture`]). The codec
//! work itself stays in the engines.

use super::session::{FwQueue, QueuedBuffer, Sink};
use crate::m2m::{BufferFlags, QueueKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Running,
    /// A source change was posted; waiting for CAPTURE to be streamed on.
    AwaitCapture,
    /// Drained (LAST returned), or halted; waiting for `Start` or a queue
    /// restart.
    Stopped,
}

#[derive(Debug, Default)]
pub(super) struct Drain {
    phase: Phase,
    /// OUTPUT buffers still to consume before a requested drain completes.
    remaining: Option<usize>,
    /// An empty LAST buffer is owed (end of the old format at a source change).
    pending_last: bool,
    /// The sequence number of the next CAPTURE buffer.
    sequence: u32,
}

impl Drain {
    /// Whether the engine may work (not drained, not awaiting CAPTURE).
    pub(super) fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// A source change was posted: nothing more until CAPTURE streams on.
    pub(super) fn await_capture(&mut self) {
        self.phase = Phase::AwaitCapture;
    }

    /// The stream cannot go on (the error was posted): stop as if drained.
    pub(super) fn halt(&mut self) {
        self.phase = Phase::Stopped;
    }

    /// The format changes mid-stream: the next CAPTURE buffer, if CAPTURE
    /// is streaming, comes back empty and flagged LAST.
    pub(super) fn owe_last(&mut self, capture: &FwQueue) {
        if capture.streaming {
            self.pending_last = true;
        }
    }

    pub(super) fn stream_on(&mut self, queue: QueueKind) {
        if queue != QueueKind::Capture {
            return;
        }
        match self.phase {
            // The client set up CAPTURE for the announced format; a drain
            // requested meanwhile carries on (dev-decoder.rst: the source
            // change is handled "before continuing with the drain sequence").
            Phase::AwaitCapture => self.phase = Phase::Running,
            // A restarted CAPTURE queue ends a completed drain.
            Phase::Stopped => {
                self.phase = Phase::Running;
                self.remaining = None;
            }
            Phase::Running => {}
        }
    }

    /// OUTPUT off (a flush) cancels a drain and ends a completed one;
    /// CAPTURE off takes back an owed LAST buffer.
    pub(super) fn stream_off(&mut self, queue: QueueKind) {
        match queue {
            QueueKind::Output => {
                self.remaining = None;
                if self.phase == Phase::Stopped {
                    self.phase = Phase::Running;
                }
            }
            QueueKind::Capture => self.pending_last = false,
        }
    }

    /// `Stop`: drain the OUTPUT buffers queued now. False (and nothing
    /// changes) when already drained.
    pub(super) fn stop(&mut self, output: &FwQueue) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        self.remaining = Some(output.buffers.len());
        true
    }

    /// `Start`: resume after a drain, or cancel one in progress.
    pub(super) fn start(&mut self) {
        if self.phase == Phase::Stopped {
            self.phase = Phase::Running;
        }
        self.remaining = None;
    }

    /// The sequence number for the next CAPTURE buffer the engine fills.
    pub(super) fn next_sequence(&mut self) -> u32 {
        let seq = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        seq
    }

    /// Returns the owed LAST buffer: `None` when none is owed, else whether
    /// the step made progress (false: no CAPTURE buffer to carry it yet).
    pub(super) fn send_owed_last(
        &mut self,
        capture: &mut FwQueue,
        sink: &mut Sink<'_>,
    ) -> Option<bool> {
        if !self.pending_last {
            return None;
        }
        if capture.streaming {
            let Some(buf) = capture.buffers.pop_front() else {
                return Some(false);
            };
            self.send_last(&buf, sink);
        }
        self.pending_last = false;
        Some(true)
    }

    /// Whether an OUTPUT buffer can be taken now (running, streaming,
    /// queued, and not past the buffers a drain counted).
    pub(super) fn may_take_output(&self, output: &FwQueue) -> bool {
        self.is_running()
            && output.streaming
            && self.remaining.is_none_or(|n| n > 0)
            && !output.buffers.is_empty()
    }

    /// The next OUTPUT buffer to consume, counted against a drain.
    pub(super) fn take_output(&mut self, output: &mut FwQueue) -> Option<QueuedBuffer> {
        if !self.may_take_output(output) {
            return None;
        }
        let buf = output.buffers.pop_front()?;
        if let Some(n) = self.remaining.as_mut() {
            *n -= 1;
        }
        Some(buf)
    }

    /// Every OUTPUT buffer the drain counted has been taken.
    pub(super) fn drained(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Completes the drain: one empty CAPTURE buffer flagged LAST (none if
    /// CAPTURE is not streaming), then stopped. False when no CAPTURE
    /// buffer is queued to carry it yet.
    pub(super) fn finish(&mut self, capture: &mut FwQueue, sink: &mut Sink<'_>) -> bool {
        if capture.streaming {
            let Some(buf) = capture.buffers.pop_front() else {
                return false;
            };
            self.send_last(&buf, sink);
        }
        self.phase = Phase::Stopped;
        self.remaining = None;
        true
    }

    fn send_last(&self, buf: &QueuedBuffer, sink: &mut Sink<'_>) {
        sink.done(
            QueueKind::Capture,
            buf,
            0,
            BufferFlags::LAST,
            self.sequence,
            "",
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mem::{Checker, CheckerConfig, Coherency, Region};
    use crate::sys::DmaBackend;
    use crate::vpu::firmware::Outbox;
    use crate::vpu::protocol::Response;

    fn queue(kind: &str, n: u32) -> FwQueue {
        let checker = Checker::new(CheckerConfig::default());
        let mut q = FwQueue {
            streaming: true,
            ..FwQueue::default()
        };
        for index in 0..n {
            let region =
                Region::allocate(kind, 64, Coherency::Coherent, DmaBackend::Memfd, &checker)
                    .expect("a memfd region");
            q.buffers.push_back(QueuedBuffer {
                index,
                region: Arc::clone(&region),
                bytesused: 0,
                timestamp: 0,
                flags: BufferFlags::NONE,
            });
        }
        q
    }

    /// (index, flags, sequence) of the CAPTURE buffers returned.
    fn captures(outbox: &Outbox) -> Vec<(u32, BufferFlags, u32)> {
        outbox
            .messages
            .iter()
            .filter_map(|(_, _, r)| match r {
                Response::BufferDone {
                    queue: QueueKind::Capture,
                    index,
                    flags,
                    sequence,
                    ..
                } => Some((*index, *flags, *sequence)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_drain_takes_the_buffers_queued_at_stop_then_returns_last() {
        let (mut output, mut capture) = (queue("out", 3), queue("cap", 2));
        let mut outbox = Outbox::default();
        let mut d = Drain::default();
        assert_eq!(d.next_sequence(), 0);
        assert!(d.stop(&output));
        // A buffer queued after `Stop` is not part of the drain.
        output.buffers.extend(queue("late", 1).buffers);
        let mut taken = 0;
        while let Some(_buf) = d.take_output(&mut output) {
            taken += 1;
        }
        assert_eq!(taken, 3);
        assert_eq!(output.buffers.len(), 1, "the late buffer stays queued");
        assert!(d.drained());
        let mut sink = Sink {
            id: 1,
            outbox: &mut outbox,
        };
        assert!(d.finish(&mut capture, &mut sink));
        assert_eq!(captures(&outbox), vec![(0, BufferFlags::LAST, 1)]);
        assert!(!d.is_running() && !d.drained());
        assert!(!d.stop(&output), "a second Stop while drained is a no-op");
        assert!(
            d.take_output(&mut output).is_none(),
            "stopped takes nothing"
        );
        d.start();
        assert!(d.is_running());
        assert!(d.take_output(&mut output).is_some());
    }

    #[test]
    fn finish_waits_for_a_capture_buffer_and_skips_last_when_capture_is_off() {
        let mut capture = queue("cap", 0);
        let mut outbox = Outbox::default();
        let mut d = Drain::default();
        d.stop(&queue("out", 0));
        assert!(d.drained());
        let mut sink = Sink {
            id: 1,
            outbox: &mut outbox,
        };
        assert!(!d.finish(&mut capture, &mut sink), "no buffer for LAST yet");
        assert!(d.is_running());
        capture.streaming = false;
        assert!(d.finish(&mut capture, &mut sink));
        assert!(captures(&outbox).is_empty());
        assert!(!d.is_running());
        d.stream_on(QueueKind::Capture);
        assert!(d.is_running() && !d.drained(), "CAPTURE on ends the drain");
    }

    #[test]
    fn an_owed_last_goes_on_the_next_capture_buffer_unless_capture_stops() {
        let mut capture = queue("cap", 1);
        let mut outbox = Outbox::default();
        let mut d = Drain::default();
        let mut sink = Sink {
            id: 1,
            outbox: &mut outbox,
        };
        assert_eq!(d.send_owed_last(&mut capture, &mut sink), None);
        d.owe_last(&capture);
        d.await_capture();
        assert!(!d.is_running());
        assert_eq!(d.send_owed_last(&mut capture, &mut sink), Some(true));
        assert_eq!(d.send_owed_last(&mut capture, &mut sink), None);
        assert_eq!(d.send_owed_last(&mut capture, &mut sink), None);
        d.owe_last(&capture);
        assert_eq!(
            d.send_owed_last(&mut capture, &mut sink),
            Some(false),
            "no CAPTURE buffer queued"
        );
        d.stream_off(QueueKind::Capture);
        assert_eq!(d.send_owed_last(&mut capture, &mut sink), None);
        d.stream_on(QueueKind::Capture);
        assert!(d.is_running(), "CAPTURE on after a source change resumes");
        assert_eq!(captures(&outbox), vec![(0, BufferFlags::LAST, 0)]);
    }

    #[test]
    fn output_stream_off_cancels_a_drain_and_ends_a_completed_one() {
        let mut output = queue("out", 2);
        let mut d = Drain::default();
        d.stop(&output);
        assert!(d.take_output(&mut output).is_some());
        d.stream_off(QueueKind::Output);
        assert!(!d.drained());
        assert!(d.take_output(&mut output).is_some());
        d.halt();
        d.stream_off(QueueKind::Output);
        assert!(d.is_running());
    }
}
