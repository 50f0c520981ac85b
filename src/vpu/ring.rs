//! Single-producer single-consumer message rings in shared memory.
//!
//! A ring is a [`RingHeader`] (producer's `head`, consumer's `tail`, free
//! running `u32`s) followed by `slots` [`Message`]s. Each side keeps its own
//! index in private memory and only *publishes* it to the shared header; the
//! other side's index is read back and checked, never trusted: a `head` or
//! `tail` that puts more than `slots` messages in flight is a corrupt ring.
//!
//! Ordering: the producer copies the slot, then stores `head` with Release; the
//! consumer loads `head` with Acquire, copies the slot out, then stores `tail`
//! with Release. Slots are copied, never borrowed, so no reference into memory
//! the other side writes ever exists.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytemuck::Zeroable;

use super::protocol::{Message, RING_HEAD_OFFSET, RING_TAIL_OFFSET, RingHeader, SLOT_SIZE};
use crate::mem::{MemError, Region};

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring is full ({0} messages in flight)")]
    Full(u32),
    #[error(
        "ring corrupt: the other side's index {other} is {distance} slots from ours ({ours}), ring holds {slots}"
    )]
    Corrupt {
        ours: u32,
        other: u32,
        distance: u32,
        slots: u32,
    },
    #[error("ring of {slots} slots at offset {offset} does not fit the {size}-byte control region")]
    Layout {
        offset: usize,
        slots: u32,
        size: usize,
    },
    #[error("ring memory: {0}")]
    Memory(#[from] MemError),
}

/// Where a ring lives inside a coherent region.
#[derive(Debug, Clone)]
struct RingMemory {
    region: Arc<Region>,
    offset: usize,
    slots: u32,
}

impl RingMemory {
    fn new(region: Arc<Region>, offset: usize, slots: u32) -> Result<RingMemory, RingError> {
        let need = std::mem::size_of::<RingHeader>() + slots as usize * SLOT_SIZE;
        if slots == 0
            || offset
                .checked_add(need)
                .is_none_or(|end| end > region.size())
        {
            return Err(RingError::Layout {
                offset,
                slots,
                size: region.size(),
            });
        }
        region.shared()?;
        Ok(RingMemory {
            region,
            offset,
            slots,
        })
    }

    fn index(&self, field: usize) -> Result<&AtomicU32, RingError> {
        let map = self.region.shared()?;
        map.atomic_u32(self.offset + field)
            .ok_or(RingError::Layout {
                offset: self.offset,
                slots: self.slots,
                size: map.len(),
            })
    }

    fn slot_offset(&self, index: u32) -> usize {
        self.offset + std::mem::size_of::<RingHeader>() + (index % self.slots) as usize * SLOT_SIZE
    }

    /// Checks the other side's index against ours.
    fn in_flight(&self, head: u32, tail: u32, ours: u32, other: u32) -> Result<u32, RingError> {
        let distance = head.wrapping_sub(tail);
        if distance > self.slots {
            return Err(RingError::Corrupt {
                ours,
                other,
                distance,
                slots: self.slots,
            });
        }
        Ok(distance)
    }
}

/// The writing end of a ring.
#[derive(Debug)]
pub struct Producer {
    mem: RingMemory,
    head: u32,
}

impl Producer {
    /// Takes over the writing end; `head` restarts from what the header says
    /// (zero for a fresh region).
    pub fn new(region: Arc<Region>, offset: usize, slots: u32) -> Result<Producer, RingError> {
        let mem = RingMemory::new(region, offset, slots)?;
        let head = mem.index(RING_HEAD_OFFSET)?.load(Ordering::Acquire);
        Ok(Producer { mem, head })
    }

    /// Messages the consumer has not taken yet.
    pub fn pending(&self) -> Result<u32, RingError> {
        let tail = self.mem.index(RING_TAIL_OFFSET)?.load(Ordering::Acquire);
        self.mem.in_flight(self.head, tail, self.head, tail)
    }

    pub fn push(&mut self, msg: &Message) -> Result<(), RingError> {
        let pending = self.pending()?;
        if pending == self.mem.slots {
            return Err(RingError::Full(pending));
        }
        let map = self.mem.region.shared()?;
        map.write_at(self.mem.slot_offset(self.head), bytemuck::bytes_of(msg))
            .map_err(MemError::from)?;
        self.head = self.head.wrapping_add(1);
        self.mem
            .index(RING_HEAD_OFFSET)?
            .store(self.head, Ordering::Release);
        Ok(())
    }
}

/// The reading end of a ring.
#[derive(Debug)]
pub struct Consumer {
    mem: RingMemory,
    tail: u32,
}

impl Consumer {
    pub fn new(region: Arc<Region>, offset: usize, slots: u32) -> Result<Consumer, RingError> {
        let mem = RingMemory::new(region, offset, slots)?;
        let tail = mem.index(RING_TAIL_OFFSET)?.load(Ordering::Acquire);
        Ok(Consumer { mem, tail })
    }

    /// The next message, if any.
    pub fn pop(&mut self) -> Result<Option<Message>, RingError> {
        let head = self.mem.index(RING_HEAD_OFFSET)?.load(Ordering::Acquire);
        if self.mem.in_flight(head, self.tail, self.tail, head)? == 0 {
            return Ok(None);
        }
        let mut msg = Message::zeroed();
        let map = self.mem.region.shared()?;
        map.read_at(
            self.mem.slot_offset(self.tail),
            bytemuck::bytes_of_mut(&mut msg),
        )
        .map_err(MemError::from)?;
        self.tail = self.tail.wrapping_add(1);
        self.mem
            .index(RING_TAIL_OFFSET)?
            .store(self.tail, Ordering::Release);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{Checker, CheckerConfig, Coherency};
    use crate::sys::DmaBackend;

    fn region(size: usize) -> Arc<Region> {
        let checker = Checker::new(CheckerConfig::default());
        Region::allocate(
            "ring-test",
            size,
            Coherency::Coherent,
            DmaBackend::Memfd,
            &checker,
        )
        .unwrap()
    }

    fn msg(n: u32) -> Message {
        let mut m = Message::zeroed();
        m.opcode = n;
        m.args[11] = !n;
        m
    }

    #[test]
    fn wraps_around_many_times() {
        let r = region(4096);
        let mut p = Producer::new(r.clone(), 64, 4).unwrap();
        let mut c = Consumer::new(r, 64, 4).unwrap();
        for round in 0..100u32 {
            for i in 0..(round % 4 + 1) {
                p.push(&msg(round * 10 + i)).unwrap();
            }
            for i in 0..(round % 4 + 1) {
                let m = c.pop().unwrap().unwrap();
                assert_eq!((m.opcode, m.args[11]), (round * 10 + i, !(round * 10 + i)));
            }
            assert!(c.pop().unwrap().is_none());
        }
    }

    #[test]
    fn full_ring_refuses() {
        let r = region(4096);
        let mut p = Producer::new(r.clone(), 0, 2).unwrap();
        p.push(&msg(1)).unwrap();
        p.push(&msg(2)).unwrap();
        assert!(matches!(p.push(&msg(3)), Err(RingError::Full(2))));
        let mut c = Consumer::new(r, 0, 2).unwrap();
        assert_eq!(c.pop().unwrap().unwrap().opcode, 1);
        p.push(&msg(3)).unwrap();
    }

    #[test]
    fn index_wraps_at_u32_max() {
        let r = region(4096);
        let map = r.shared().unwrap();
        map.atomic_u32(RING_HEAD_OFFSET)
            .unwrap()
            .store(u32::MAX - 1, Ordering::Relaxed);
        map.atomic_u32(RING_TAIL_OFFSET)
            .unwrap()
            .store(u32::MAX - 1, Ordering::Relaxed);
        let mut p = Producer::new(r.clone(), 0, 3).unwrap();
        let mut c = Consumer::new(r, 0, 3).unwrap();
        for i in 0..10 {
            p.push(&msg(i)).unwrap();
            assert_eq!(c.pop().unwrap().unwrap().opcode, i);
        }
    }

    #[test]
    fn untrusted_indices_are_caught() {
        let r = region(4096);
        let mut p = Producer::new(r.clone(), 0, 4).unwrap();
        let mut c = Consumer::new(r.clone(), 0, 4).unwrap();
        p.push(&msg(1)).unwrap();
        // The producer's side scribbles a head far ahead of the consumer.
        let map = r.shared().unwrap();
        map.atomic_u32(RING_HEAD_OFFSET)
            .unwrap()
            .store(1000, Ordering::Release);
        assert!(matches!(
            c.pop(),
            Err(RingError::Corrupt { distance: 1000, .. })
        ));
        // A tail beyond the head is caught by the producer.
        map.atomic_u32(RING_TAIL_OFFSET)
            .unwrap()
            .store(5, Ordering::Release);
        assert!(matches!(p.push(&msg(2)), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn layout_outside_region_is_refused() {
        let r = region(4096);
        assert!(matches!(
            Producer::new(r.clone(), 4000, 4),
            Err(RingError::Layout { .. })
        ));
        assert!(matches!(
            Consumer::new(r, 0, 0),
            Err(RingError::Layout { .. })
        ));
    }
}
