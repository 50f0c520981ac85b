//! The engines' unit-test rig: an engine's two queues and what it sends
//! back, to step it by hand as the core would.

use std::sync::Arc;

use super::engine::CodecEngine;
use super::session::{FwQueue, QueuedBuffer, Sink};
use super::{Faults, Outbox};
use crate::m2m::{BufferFlags, Colorimetry, PixelFormat, QueueKind};
use crate::mem::{Checker, CheckerConfig, Coherency, Region};
use crate::sys::DmaBackend;
use crate::vpu::protocol::Response;

pub(crate) struct Rig {
    pub(crate) checker: Arc<Checker>,
    pub(crate) output: FwQueue,
    pub(crate) capture: FwQueue,
    /// Everything the engine sent, in order.
    outbox: Outbox,
    /// How much of `outbox` [`Rig::step`] has reported.
    seen: usize,
    faults: Faults,
}

impl Rig {
    /// OUTPUT streaming (a decoder's starts without a format), CAPTURE not
    /// set up, the checker in its default mode.
    pub(crate) fn new() -> Rig {
        Rig::with_checker(Checker::new(CheckerConfig::default()))
    }

    /// As [`Rig::new`], memory watched by `checker`.
    pub(crate) fn with_checker(checker: Arc<Checker>) -> Rig {
        Rig {
            checker,
            output: FwQueue {
                streaming: true,
                ..FwQueue::default()
            },
            capture: FwQueue::default(),
            outbox: Outbox::default(),
            seen: 0,
            faults: Faults::default(),
        }
    }

    /// A coherent memfd buffer `index` of `size` bytes holding `data`, its
    /// timestamp its index.
    fn buffer(&self, index: u32, data: &[u8], size: usize) -> QueuedBuffer {
        let region = Region::allocate(
            "t",
            size,
            Coherency::Coherent,
            DmaBackend::Memfd,
            &self.checker,
        )
        .expect("a memfd region");
        region.cpu_write()[..data.len()].copy_from_slice(data);
        QueuedBuffer {
            index,
            region,
            bytesused: data.len(),
            timestamp: u64::from(index),
            flags: BufferFlags::NONE,
        }
    }

    /// Queues OUTPUT buffer `index` (`size` bytes) holding `data`.
    pub(crate) fn queue_output(&mut self, index: u32, data: &[u8], size: usize) {
        let b = self.buffer(index, data, size);
        self.output.buffers.push_back(b);
    }

    /// Queues an empty CAPTURE buffer `index` of `size` bytes.
    pub(crate) fn queue_capture(&mut self, index: u32, size: usize) {
        let b = self.buffer(index, &[], size);
        self.capture.buffers.push_back(b);
    }

    /// Sets CAPTURE to `pixfmt` at `size`, streams it and queues `count`
    /// buffers of `bytes` each, as a client answers a source change.
    pub(crate) fn start_capture(
        &mut self,
        engine: &mut impl CodecEngine,
        pixfmt: PixelFormat,
        size: (u32, u32),
        count: u32,
        bytes: usize,
    ) {
        engine
            .set_format(
                &mut self.output,
                &mut self.capture,
                QueueKind::Capture,
                pixfmt,
                size,
                Colorimetry::default(),
            )
            .expect("the CAPTURE format");
        self.capture.streaming = true;
        engine.stream_on(QueueKind::Capture);
        for i in 0..count {
            self.queue_capture(i, bytes);
        }
    }

    /// One step of `engine`: whether it made progress, and (queue, index)
    /// of the buffers it returned, in order.
    pub(crate) fn step(&mut self, engine: &mut impl CodecEngine) -> (bool, Vec<(QueueKind, u32)>) {
        let mut sink = Sink {
            id: 1,
            outbox: &mut self.outbox,
        };
        let progress = engine.step(&mut self.output, &mut self.capture, &self.faults, &mut sink);
        let done = self.outbox.messages[self.seen..]
            .iter()
            .filter_map(|(_, _, r)| match r {
                Response::BufferDone { queue, index, .. } => Some((*queue, *index)),
                _ => None,
            })
            .collect();
        self.seen = self.outbox.messages.len();
        (progress, done)
    }

    /// Steps `engine` until it makes no more progress.
    pub(crate) fn step_all(&mut self, engine: &mut impl CodecEngine) {
        while self.step(engine).0 {}
    }

    /// Every response the engine sent so far.
    pub(crate) fn responses(&self) -> impl Iterator<Item = &Response> {
        self.outbox.messages.iter().map(|(_, _, r)| r)
    }
}
