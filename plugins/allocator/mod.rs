//! GstAllocators that turn [`Region`]s into GstMemory without copying:
//! [`VpuAllocator`] (memfd, GstFdAllocator parent) and
//! [`VpuDmaBufAllocator`] (real dma-bufs, GstDmaBufAllocator parent).
//!
//! # Why two types
//!
//! GObject has single inheritance and the parent decides what downstream
//! sees. A GstDmaBufAllocator memory is what `gst_is_dmabuf_memory()`
//! recognises, so importers (EGL, KMS sinks, other V4L2 devices) take the fd
//! without a copy; and its map brackets CPU access with `DMA_BUF_IOCTL_SYNC`
//! START/END itself (GStreamer 1.22 `gstdmabuf.c`). A memfd is not a dma-buf:
//! labelled as one, every map would issue an ioctl that fails with ENOTTY and
//! importers would try (and fail) to import it. So the region's
//! [`MemoryKind`] picks the type; `wrap` refuses the other kind. Everything
//! else (registry, map/unmap policy, free hook) is one implementation shared
//! by both (`imp.rs`, generic over the type).
//!
//! # Lifetime and identity
//!
//! `wrap` creates an fd memory over `region.fd()` with
//! `FdMemoryFlags::DONT_CLOSE` (the region owns its fd) and `KEEP_MAPPED`
//! (a pooled buffer is mapped once, not once per CPU access) of `region.size()`
//! bytes, and keeps the `Arc<Region>` in a registry keyed by the memory, until
//! the allocator's `free` vfunc has run the parent's free: the region lives
//! exactly as long as the GstMemory (and its sub-memories, which hold their
//! parent). `wrap_with_release` also runs a callback once the memory is
//! freed (a decoder re-queues the region to the device there). [`region`] recovers it from any memory (sub-memories via their
//! parent): that is how elements tell "this memory is ours, queue its fd as
//! is".
//!
//! # Cache maintenance on CPU maps
//!
//! The allocator's `mem_map_full` / `mem_unmap_full` instance pointers are
//! overridden at instance init with trampolines that run the region policy and
//! chain to the parent's saved functions (see `imp.rs` for the SAFETY
//! reasoning). The policy (`access.rs`):
//!
//! - **Coherent** regions: plain parent map, no sync, no check.
//! - **Cacheable**, map (READ and/or WRITE): if the device owns the region and
//!   has released it, a lazy `sync_for_cpu` (invalidate, counted by the
//!   checker) hands it to the CPU first; a WRITE map thus leaves the CPU as
//!   owner, so the driver's next `sync_for_device` cleans it. If the device
//!   still owns the region because no sync could be done (it is marked busy
//!   with [`set_device_busy`], i.e. queued to the device, or the sync failed),
//!   the map goes through a region guard, so the checker reports the
//!   violation (`cpu_read` / `cpu_write`, device->CPU) like any Rust access.
//! - **Cacheable**, unmap of a WRITE map: a short `cpu_write` guard tells the
//!   checker the CPU wrote (and reports it if the device took the region
//!   while it was mapped).
//! - Memory that is never CPU-mapped costs nothing: no sync, no lock.
//!
//! # Cache simulation (decision: the allocator path is simulated too)
//!
//! With `CheckerConfig::simulate_cache`, region CPU guards see a shadow cache
//! and only `sync_for_device` writes it back to memory (the fd). GStreamer's
//! own fd mmap would bypass that and see memory directly. So for simulated
//! regions the map does not call the parent at all: the first map copies the
//! CPU view out of a region guard into a staging buffer and hands that out;
//! the last unmap writes the bytes GStreamer changed back through a
//! `cpu_write` guard, where they become dirty lines. A downstream consumer
//! thus sees exactly what a Rust guard sees: fresh data after a correct sync,
//! stale cache lines after a missing one, and its writes reach the device only
//! through `sync_for_device`. The copy exists only under simulation (a test
//! configuration); without it, GStreamer's `MAP_SHARED` fd mapping shows the
//! same bytes as the region's mapping and nothing is copied.
//!
//! # Caveats
//!
//! - Region guards and GstMemory maps of the same region must not overlap on
//!   one thread: the map takes the (non-reentrant) region lock briefly.
//! - Under simulation, wrap a region at most once at a time: each memory has
//!   its own staging copy.
//! - A WRITE map while the device owns the region and is busy is reported
//!   twice: at the map and again at the unmap (the unmap check exists to
//!   catch the device taking the region while it was mapped).
//! - Without simulation, on a cacheable dma-buf the unmap of a WRITE map adds
//!   one START/END `DMA_BUF_IOCTL_SYNC` pair (the region guard's) to
//!   GStreamer's own; memfd regions issue no ioctl.
//! - `gst_allocator_alloc` on these allocators returns NULL (as for
//!   GstFdAllocator): memory is made from regions, by `wrap`.

mod access;
#[allow(unsafe_code)]
mod imp;

use std::os::fd::AsFd;
use std::sync::Arc;

use gst::glib;
use gst::prelude::*;

use crate::mem::{Checker, Coherency, MemoryKind, Region};

glib::wrapper! {
    /// Wraps memfd-backed [`Region`]s as GstFdMemory (`mem_type` "fd").
    pub struct VpuAllocator(ObjectSubclass<imp::VpuAllocator>)
        @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

glib::wrapper! {
    /// Wraps dma-buf [`Region`]s as GstDmaBufMemory (`mem_type` "dmabuf").
    pub struct VpuDmaBufAllocator(ObjectSubclass<imp::VpuDmaBufAllocator>)
        @extends gst_allocators::DmaBufAllocator, gst_allocators::FdAllocator,
            gst::Allocator, gst::Object;
}

fn check_kind(region: &Region, expected: MemoryKind) -> Result<(), glib::BoolError> {
    if region.kind() == expected {
        return Ok(());
    }
    let (ty, hint) = match expected {
        MemoryKind::Memfd => ("VpuAllocator", "VpuDmaBufAllocator"),
        MemoryKind::DmaBuf => ("VpuDmaBufAllocator", "VpuAllocator"),
    };
    Err(glib::bool_error!(
        "{ty} wraps {expected:?} regions, but region \"{}\" is {:?}: wrap it with {hint}",
        region.name(),
        region.kind()
    ))
}

impl VpuAllocator {
    pub fn new() -> Self {
        glib::Object::new()
    }

    /// A GstMemory over `region`'s fd, without copying; keeps `region` alive
    /// as long as the memory. Fails for dma-buf regions (use
    /// [`VpuDmaBufAllocator`]).
    pub fn wrap(&self, region: Arc<Region>) -> Result<gst::Memory, glib::BoolError> {
        check_kind(&region, MemoryKind::Memfd)?;
        imp::wrap(self.upcast_ref(), region, None)
    }

    /// As [`Self::wrap`], and runs `release` once GStreamer has freed the
    /// memory (its last reference dropped, sub-memories included): the
    /// point where a decoder hands the region back to the device.
    pub fn wrap_with_release(
        &self,
        region: Arc<Region>,
        release: Box<dyn FnOnce() + Send>,
    ) -> Result<gst::Memory, glib::BoolError> {
        check_kind(&region, MemoryKind::Memfd)?;
        imp::wrap(self.upcast_ref(), region, Some(release))
    }

    /// The region behind `mem` if it (or its parent) was made by one of our
    /// allocators. Same as the module-level [`region`].
    pub fn region(mem: &gst::MemoryRef) -> Option<Arc<Region>> {
        region(mem)
    }
}

impl Default for VpuAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl VpuDmaBufAllocator {
    pub fn new() -> Self {
        glib::Object::new()
    }

    /// A GstDmaBufMemory over `region`'s dma-buf, without copying; keeps
    /// `region` alive as long as the memory. Fails for memfd regions (use
    /// [`VpuAllocator`]).
    pub fn wrap(&self, region: Arc<Region>) -> Result<gst::Memory, glib::BoolError> {
        check_kind(&region, MemoryKind::DmaBuf)?;
        imp::wrap(self.upcast_ref(), region, None)
    }

    /// As [`Self::wrap`], and runs `release` once GStreamer has freed the
    /// memory (see [`VpuAllocator::wrap_with_release`]).
    pub fn wrap_with_release(
        &self,
        region: Arc<Region>,
        release: Box<dyn FnOnce() + Send>,
    ) -> Result<gst::Memory, glib::BoolError> {
        check_kind(&region, MemoryKind::DmaBuf)?;
        imp::wrap(self.upcast_ref(), region, Some(release))
    }
}

impl Default for VpuDmaBufAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// The region behind `mem` if it (or, for a sub-memory, its parent) was made
/// by [`VpuAllocator::wrap`] or [`VpuDmaBufAllocator::wrap`].
pub fn region(mem: &gst::MemoryRef) -> Option<Arc<Region>> {
    imp::lookup(mem).map(|w| Arc::clone(&w.region))
}

/// The VPUs (checkers) whose import of one memory is kept with it: more
/// than one producer feeds at once (a tee to several encoders), and few
/// enough that encoders started again and again on a kernel node (a new
/// checker each time; the region keeps its checker alive) do not pile up
/// mappings of a long-lived upstream pool. The oldest goes first.
const IMPORTERS_KEPT: usize = 4;

/// The region through which the VPU watched by `checker` imports `mem`,
/// `size` bytes of it, when `mem` is fd memory that is not ours (ours:
/// [`region`]): a frame another element made in a dma-buf (a dma-heap
/// allocation, a kernel decoder's exported buffer; GstDmaBufMemory) or in
/// other fd memory (a memfd; GstFdMemory), imported instead of copied. With
/// `dma_buf_only` (a kernel node, which imports nothing else) fd memory
/// that is no dma-buf is refused. `None` for memory without an fd.
///
/// The first import of a memory duplicates its fd and maps it; the region
/// is then kept with the memory (qdata, as kmssink keeps a framebuffer per
/// memory) and used again each time upstream sends the same memory, so a
/// producer's buffer pool is mapped once per buffer, not once per frame,
/// and the VPU's import slot stays bound to it. It is unmapped when the
/// memory is freed. The region is cacheable and starts owned by the CPU,
/// so its first queueing cleans it for the device; after that, a producer
/// that writes it with the CPU does its own cache maintenance, as for any
/// dma-buf (DMA_BUF_IOCTL_SYNC), just as a kernel driver keeps a re-queued
/// dma-buf's attachment. GStreamer's fd memory means the fd holds what the
/// memory holds (what waylandsink and kmssink rely on too).
pub fn import_foreign_fd_memory(
    mem: &gst::MemoryRef,
    size: usize,
    checker: &Arc<Checker>,
    dma_buf_only: bool,
) -> Option<Result<Arc<Region>, String>> {
    if imp::lookup(mem).is_some() {
        return None;
    }
    let fd_memory = mem.downcast_memory_ref::<gst_allocators::FdMemory>()?;
    Some(imp::with_imports(mem, |imports| {
        // A region names its VPU by its checker.
        let mine = |r: &Arc<Region>| Arc::ptr_eq(r.checker(), checker);
        if let Some(r) = imports.iter().find(|r| mine(r) && r.size() == size) {
            return Ok(Arc::clone(r));
        }
        let fd = imp::dup_memory_fd(fd_memory).map_err(|e| format!("cannot take its fd: {e}"))?;
        if dma_buf_only && !crate::sys::is_dma_buf(fd.as_fd()) {
            return Err("it is fd memory but no dma-buf, which a kernel node cannot import".into());
        }
        let region = Region::import("upstream-frame", fd, size, Coherency::Cacheable, checker)
            .map_err(|e| format!("cannot import its fd memory: {e}"))?;
        imports.retain(|i| !mine(i));
        if imports.len() >= IMPORTERS_KEPT {
            imports.remove(0);
        }
        imports.push(Arc::clone(&region));
        Ok(region)
    }))
}

/// Marks the region behind `mem` as in use by the device (queued) or
/// released. While busy, a CPU map must not take the region back, so it is
/// not synced and, if the device owns the region, reported as a violation.
/// Memories start released. Returns `false` if `mem` is not ours.
pub fn set_device_busy(mem: &gst::MemoryRef, busy: bool) -> bool {
    match imp::lookup(mem) {
        Some(w) => {
            w.set_device_busy(busy);
            true
        }
        None => false,
    }
}
