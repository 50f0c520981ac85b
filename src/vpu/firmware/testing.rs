//! Helpers for the engines' unit tests: queued buffers and what came back.

use std::sync::Arc;

use super::Outbox;
use super::session::QueuedBuffer;
use crate::m2m::{BufferFlags, QueueKind};
use crate::mem::{Checker, Coherency, Region};
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
