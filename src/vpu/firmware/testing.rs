//! Helpers for the engines' unit tests: queued buffers and what came back.

use std::sync::Arc;

use super::engine::CodecEngine;
use super::session::{FwQueue, QueuedBuffer, Sink};
use super::{Faults, Outbox};
use crate::m2m::{BufferFlags, Colorimetry, PixelFormat, QueueKind};
use crate::mem::{Checker, CheckerConfig, Coherency, Region};
use crate::sys::DmaBackend;
use crate::vpu::protocol::Response;

/// A queued buffer of `size` bytes (memfd, coherent) holding `data`, its
/// timestamp its index.
pub(crate) fn buffer(checker: &Arc<Checker>, index: u32, data: &[u8], size: usize) -> QueuedBuffer {
    let region = Region::allocate("t", size, Coherency::Coherent, DmaBackend::Memfd, checker)
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

/// (queue, index) of every buffer returned, in order; drains the outbox.
pub(crate) fn dones(outbox: &mut Outbox) -> Vec<(QueueKind, u32)> {
    outbox
        .messages
        .drain(..)
        .filter_map(|(_, _, r)| match r {
            Response::BufferDone { queue, index, .. } => Some((queue, index)),
            _ => None,
        })
        .collect()
}

/// An engine's two queues and what it sends back, to step it by hand as
/// the core would.
pub(crate) struct Rig {
    pub(crate) checker: Arc<Checker>,
    pub(crate) output: FwQueue,
    pub(crate) capture: FwQueue,
    outbox: Outbox,
    faults: Faults,
}

impl Rig {
    /// OUTPUT streaming (a decoder's starts without a format), CAPTURE not
    /// set up.
    pub(crate) fn new() -> Rig {
        Rig {
            checker: Checker::new(CheckerConfig::default()),
            output: FwQueue {
                streaming: true,
                ..FwQueue::default()
            },
            capture: FwQueue::default(),
            outbox: Outbox::default(),
            faults: Faults::default(),
        }
    }

    /// Queues OUTPUT buffer `index` (`size` bytes) holding `data`.
    pub(crate) fn queue_output(&mut self, index: u32, data: &[u8], size: usize) {
        let b = buffer(&self.checker, index, data, size);
        self.output.buffers.push_back(b);
    }

    /// Queues an empty CAPTURE buffer `index` of `size` bytes.
    pub(crate) fn queue_capture(&mut self, index: u32, size: usize) {
        let b = buffer(&self.checker, index, &[], size);
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

    /// One step of `engine`: whether it made progress, and the buffers it
    /// returned.
    pub(crate) fn step(&mut self, engine: &mut impl CodecEngine) -> (bool, Vec<(QueueKind, u32)>) {
        let mut sink = Sink {
            id: 1,
            outbox: &mut self.outbox,
        };
        let progress = engine.step(&mut self.output, &mut self.capture, &self.faults, &mut sink);
        (progress, dones(sink.outbox))
    }
}
