//! `CapturePool`: the GstBufferPool of a decoder's CAPTURE buffers. Each
//! CAPTURE slot (one V4L2 buffer index of one allocation) has ONE GstBuffer,
//! with one GstMemory over the slot's region and one GstVideoMeta, made the
//! first time the VPU fills the slot. The same buffer goes downstream every
//! time the slot is decoded into; when downstream drops it, GStreamer hands
//! it back to the pool (`release_buffer`), which keeps it and queues the slot
//! to the VPU again.
//!
//! # Why a GstBufferPool, and this one
//!
//! Before, every decoded frame got a new GstMemory (allocator wrap, registry
//! entry), a new GstBuffer and a new GstVideoMeta, and the slot was re-queued
//! from the memory's free callback. That cost CPU on every frame, and a sink
//! that caches per GstMemory (kmssink keeps its PRIME import and framebuffer
//! as qdata on the memory) could never hit its cache: a new framebuffer per
//! frame. GStreamer's v4l2 decoders keep one GstBuffer per V4L2 buffer
//! (GstV4l2BufferPool) for this reason; this pool does the same:
//!
//! - **Release**: a GstBuffer's last unref returns it to the pool it was
//!   acquired from (`buffer->pool`, set only by `gst_buffer_pool_acquire_buffer`),
//!   after the pool's `reset_buffer`. The base class's `reset_buffer` does
//!   the work: it clears flags, timestamps and offsets and removes every meta
//!   that was not on the buffer when the pool made it, so nothing downstream
//!   added leaks into the next frame; the slot's own GstVideoMeta (marked
//!   pooled when the buffer was made) stays. Ours only gives the buffer its
//!   whole memory back (downstream may have resized it). `release_buffer` is overridden: instead of the
//!   base class's free list, the buffer waits in its slot and the slot goes
//!   back to the VPU queue, as GstV4l2BufferPool queues a capture buffer in
//!   its `release_buffer`.
//! - **Acquire**: the VPU, not the pool, decides which buffer is next (the
//!   one it dequeued), so `acquire_buffer` takes "which slot" from
//!   [`CapturePool::frame`] (the decoder's streaming thread, one acquire at a
//!   time) and returns that slot's buffer. A slot without a buffer yet goes
//!   through the base class's acquire, which calls `alloc_buffer` and marks
//!   the metas pooled. The base class's own queue is never used.
//! - **Lifetime**: one pool per CAPTURE allocation (generation). Buffers
//!   downstream hold the pool (GStreamer's `buffer->pool` ref), the pool
//!   holds the engine weakly: a frame downstream keeps its region (through
//!   its memory) but not the session. [`CapturePool::retire`] (the decoder's
//!   output for this generation is replaced, or the element stops) frees the
//!   buffers of the slots the VPU holds; buffers still downstream are freed,
//!   not queued, when they come back.
//!
//! # A buffer that is no longer intact
//!
//! Downstream may keep our memory alive beyond the buffer (a shallow
//! `gst_buffer_copy` shares it, an element may move it to another buffer):
//! the VPU must then not write the region while that memory can still be
//! read. So a buffer comes back to its slot only if it still holds exactly
//! the slot's memory, untagged (`GST_BUFFER_FLAG_TAG_MEMORY`) and exclusively
//! (`gst_buffer_is_all_memory_writable`), as the base class's
//! `default_release_buffer` checks. Otherwise the buffer is freed and the
//! slot is "orphaned": the memory's free callback (the allocator's
//! `wrap_with_release`, or the plain memory's drop) queues the slot once the
//! last user is gone, and the slot gets a new buffer and memory the next
//! time it is decoded into. That is the behaviour of the old per-frame
//! memories, kept for this case only.
//!
//! # Locks
//!
//! `slots` is held only to read or update the table: never while a
//! GstBuffer is dropped (its memory's free callback takes it) nor while the
//! engine is called. The engine never calls the pool.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::engine::Engine;
use crate::allocator::{VpuAllocator, VpuDmaBufAllocator};
use crate::common::formats::MetaLayout;
use crate::mem::{MemoryKind, Region};
use crate::sys::Mapping;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpudecpool",
        gst::DebugColorFlags::empty(),
        Some("VPU decoder CAPTURE buffer pool"),
    )
});

/// What the pool's buffers are, fixed at construction.
struct Setup {
    engine: Weak<Engine>,
    generation: u64,
    layout: MetaLayout,
    /// `capture-io-mode=mmap`: plain memory over a mapping of the region,
    /// not fd memory.
    plain: bool,
    memfd: VpuAllocator,
    dmabuf: VpuDmaBufAllocator,
}

/// One CAPTURE slot (buffer index) of the allocation.
struct Slot {
    region: Arc<Region>,
    /// The slot's buffer while the VPU holds the slot.
    idle: Option<gst::Buffer>,
    /// Address of the slot's buffer (0: none), to recognise it at release.
    buffer: usize,
    /// Address of the slot's memory in that buffer.
    memory_ptr: usize,
    /// Which memory of this slot is current (its free callback says which
    /// one it was), and whether it is still alive.
    memory: u64,
    memory_alive: bool,
    /// The buffer was freed while its memory lived on elsewhere: the slot
    /// goes back to the VPU when that memory is freed.
    orphaned: bool,
}

#[derive(Default)]
struct Slots {
    slots: HashMap<u32, Slot>,
    /// The slot `acquire_buffer` / `alloc_buffer` serve (set by `frame`).
    pending: Option<(u32, Arc<Region>)>,
    /// Why `alloc_buffer` failed, for `frame`'s error.
    error: Option<String>,
    next_memory: u64,
    retired: bool,
    /// Buffers made over the pool's life.
    made: u64,
}

/// A CAPTURE slot as plain (non-fd) memory: a view of the region through a
/// mapping of its fd (the same pages, no copy). Dropping it (the memory is
/// freed) runs the slot's free callback.
struct PlainFrame {
    mapping: Mapping,
    len: usize,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl AsRef<[u8]> for PlainFrame {
    fn as_ref(&self) -> &[u8] {
        &self.mapping.as_slice()[..self.len]
    }
}

impl Drop for PlainFrame {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the table consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct CapturePool {
        pub(super) setup: OnceLock<Setup>,
        pub(super) slots: Mutex<Slots>,
        /// Serialises [`super::CapturePool::frame`]: `pending` names one slot.
        pub(super) acquiring: Mutex<()>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for CapturePool {
        const NAME: &'static str = "GstVpuDecCapturePool";
        type Type = super::CapturePool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for CapturePool {}
    impl GstObjectImpl for CapturePool {}

    impl CapturePool {
        pub(super) fn slots(&self) -> MutexGuard<'_, Slots> {
            lock(&self.slots)
        }

        /// Gives slot `index` back to the VPU (if the engine still exists;
        /// it drops a slot of an ended generation itself).
        pub(super) fn requeue(&self, index: u32, region: Arc<Region>) {
            let Some(setup) = self.setup.get() else {
                return;
            };
            if let Some(engine) = setup.engine.upgrade() {
                engine.requeue_capture(setup.generation, index, region);
            }
        }

        /// The free callback of the memory `serial` of slot `index`.
        pub(super) fn memory_freed(&self, index: u32, serial: u64) {
            let requeue = {
                let mut s = self.slots();
                let retired = s.retired;
                match s.slots.get_mut(&index) {
                    Some(slot) if slot.memory == serial => {
                        slot.memory_alive = false;
                        let orphaned = std::mem::take(&mut slot.orphaned);
                        (orphaned && !retired).then(|| Arc::clone(&slot.region))
                    }
                    _ => None,
                }
            };
            if let Some(region) = requeue {
                gst::debug!(
                    CAT,
                    imp = self,
                    "CAPTURE slot {index}: its shared memory is freed, back to the VPU"
                );
                self.requeue(index, region);
            }
        }

        fn make_memory(
            &self,
            setup: &Setup,
            index: u32,
            region: &Arc<Region>,
            serial: u64,
        ) -> Result<gst::Memory, String> {
            let release: Box<dyn FnOnce() + Send> = {
                let pool = self.obj().downgrade();
                Box::new(move || {
                    if let Some(pool) = pool.upgrade() {
                        pool.imp().memory_freed(index, serial);
                    }
                })
            };
            if setup.plain {
                let mapping = Mapping::map(region.fd(), region.size())
                    .map_err(|e| format!("mmap of {}: {e}", region.name()))?;
                return Ok(gst::Memory::from_slice(PlainFrame {
                    mapping,
                    len: region.size(),
                    release: Some(release),
                }));
            }
            match region.kind() {
                MemoryKind::Memfd => setup.memfd.wrap_with_release(Arc::clone(region), release),
                MemoryKind::DmaBuf => setup.dmabuf.wrap_with_release(Arc::clone(region), release),
            }
            .map_err(|e| format!("wrapping {}: {e}", region.name()))
        }

        fn try_alloc(&self) -> Result<gst::Buffer, String> {
            let setup = self.setup.get().ok_or("pool made without a setup")?;
            let (index, region, serial) = {
                let mut s = self.slots();
                let (index, region) = s
                    .pending
                    .clone()
                    .ok_or("a buffer was asked for outside CapturePool::frame")?;
                if let Some(slot) = s.slots.get(&index)
                    && slot.memory_alive
                {
                    return Err(format!(
                        "the VPU returned CAPTURE buffer {index} while its memory is still in \
                         use downstream"
                    ));
                }
                s.next_memory += 1;
                (index, region, s.next_memory)
            };
            let memory = self.make_memory(setup, index, &region, serial)?;
            let memory_ptr = memory.as_ptr() as usize;
            let mut buffer = gst::Buffer::new();
            {
                let b = buffer.get_mut().ok_or("a new buffer is not writable")?;
                b.append_memory(memory);
                setup
                    .layout
                    .add_to(b)
                    .map_err(|e| format!("adding the video meta: {e}"))?;
            }
            gst::debug!(
                CAT,
                imp = self,
                "CAPTURE slot {index} ({}): new buffer {:?}",
                region.name(),
                buffer.as_ptr()
            );
            let mut s = self.slots();
            s.made += 1;
            s.slots.insert(
                index,
                Slot {
                    region,
                    idle: None,
                    buffer: buffer.as_ptr() as usize,
                    memory_ptr,
                    memory: serial,
                    memory_alive: true,
                    orphaned: false,
                },
            );
            Ok(buffer)
        }
    }

    impl BufferPoolImpl for CapturePool {
        fn acquire_buffer(
            &self,
            params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let idle = {
                let mut s = self.slots();
                if s.retired {
                    return Err(gst::FlowError::Flushing);
                }
                let Some((index, region)) = s.pending.clone() else {
                    s.error = Some("a buffer was asked for outside CapturePool::frame".into());
                    return Err(gst::FlowError::Error);
                };
                s.slots
                    .get_mut(&index)
                    .filter(|slot| Arc::ptr_eq(&slot.region, &region))
                    .and_then(|slot| slot.idle.take())
            };
            match idle {
                Some(buffer) => Ok(buffer),
                // The base class allocates (alloc_buffer) and marks the
                // buffer's metas pooled, so reset_buffer keeps them.
                None => self.parent_acquire_buffer(params),
            }
        }

        fn alloc_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            self.try_alloc().map_err(|e| {
                gst::error!(CAT, imp = self, "{e}");
                self.slots().error = Some(e);
                gst::FlowError::Error
            })
        }

        fn reset_buffer(&self, buffer: &mut gst::BufferRef) {
            // Flags, timestamps, offsets and metas downstream added go; the
            // base class also sizes an intact buffer to the configured size,
            // while a slot's buffer spans its whole memory (the region may be
            // larger than a frame), as when it was made.
            self.parent_reset_buffer(buffer);
            if !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY) && buffer.n_memory() == 1 {
                let full = buffer.peek_memory(0).maxsize();
                if buffer.size() != full {
                    buffer.set_size(full);
                }
            }
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            let ptr = buffer.as_ptr() as usize;
            let mut requeue = None;
            let mut discard = None;
            {
                let mut s = self.slots();
                let retired = s.retired;
                match s.slots.iter_mut().find(|(_, slot)| slot.buffer == ptr) {
                    None => discard = Some(buffer),
                    Some((_, slot)) if retired => {
                        slot.buffer = 0;
                        discard = Some(buffer);
                    }
                    Some((&index, slot)) => {
                        let intact = buffer.n_memory() == 1
                            && buffer.peek_memory(0).as_ptr() as usize == slot.memory_ptr
                            && !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY)
                            && buffer.is_all_memory_writable();
                        if intact {
                            slot.idle = Some(buffer);
                            requeue = Some((index, Arc::clone(&slot.region)));
                        } else {
                            gst::debug!(
                                CAT,
                                imp = self,
                                "CAPTURE slot {index}: its buffer came back without its memory \
                                 to itself; the slot waits for the memory"
                            );
                            slot.buffer = 0;
                            discard = Some(buffer);
                            if slot.memory_alive {
                                slot.orphaned = true;
                            } else {
                                requeue = Some((index, Arc::clone(&slot.region)));
                            }
                        }
                    }
                }
            }
            // Outside the lock: freeing the memory runs `memory_freed`.
            drop(discard);
            if let Some((index, region)) = requeue {
                self.requeue(index, region);
            }
        }
    }
}

glib::wrapper! {
    /// The CAPTURE buffers of one allocation, one persistent GstBuffer each.
    pub struct CapturePool(ObjectSubclass<imp::CapturePool>)
        @extends gst::BufferPool, gst::Object;
}

impl CapturePool {
    /// An active pool for the CAPTURE allocation `generation` of `engine`,
    /// whose frames have `layout` and are `size`-byte regions; `plain`
    /// makes plain memory (`capture-io-mode=mmap`) instead of fd memory.
    pub(super) fn new(
        engine: &Arc<Engine>,
        generation: u64,
        layout: MetaLayout,
        plain: bool,
        caps: Option<&gst::Caps>,
        size: usize,
    ) -> Result<CapturePool, glib::BoolError> {
        let pool: CapturePool = glib::Object::new();
        let setup = Setup {
            engine: Arc::downgrade(engine),
            generation,
            layout,
            plain,
            memfd: VpuAllocator::new(),
            dmabuf: VpuDmaBufAllocator::new(),
        };
        if pool.imp().setup.set(setup).is_err() {
            return Err(glib::bool_error!("CAPTURE pool set up twice"));
        }
        let size = u32::try_from(size)
            .map_err(|_| glib::bool_error!("a {size}-byte CAPTURE buffer is too large"))?;
        let mut config = pool.config();
        // No minimum (nothing is preallocated: buffers are made per slot as
        // the VPU fills them) and no maximum (the allocation may grow).
        config.set_params(caps, size, 0, 0);
        pool.set_config(config)?;
        pool.set_active(true)?;
        Ok(pool)
    }

    /// The GstBuffer of CAPTURE slot `index` (over `region`), which the VPU
    /// has just filled: the slot's own buffer, made at its first use. The
    /// caller sets timestamps; downstream dropping it queues the slot again.
    pub(super) fn frame(&self, index: u32, region: &Arc<Region>) -> Result<gst::Buffer, String> {
        let imp = self.imp();
        let _one = lock(&imp.acquiring);
        imp.slots().pending = Some((index, Arc::clone(region)));
        let result = self.acquire_buffer(None);
        let mut s = imp.slots();
        s.pending = None;
        let error = s.error.take();
        drop(s);
        result.map_err(|flow| {
            error.unwrap_or_else(|| {
                format!("acquiring the buffer of CAPTURE slot {index}: {flow:?}")
            })
        })
    }

    /// Ends the pool's allocation: frees the buffers of the slots the VPU
    /// holds; those downstream are freed when they come back.
    pub(super) fn retire(&self) {
        let (idle, made): (Vec<gst::Buffer>, u64) = {
            let mut s = self.imp().slots();
            s.retired = true;
            let idle = s.slots.values_mut().filter_map(|s| s.idle.take()).collect();
            (idle, s.made)
        };
        gst::debug!(
            CAT,
            obj = self,
            "retired: {made} buffers made, {} freed now",
            idle.len()
        );
        drop(idle);
        if let Err(e) = self.set_active(false) {
            gst::debug!(CAT, obj = self, "deactivating: {e}");
        }
    }
}
