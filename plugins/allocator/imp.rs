//! The two GObject subclasses and the only `unsafe` of the allocator.
//!
//! # What is unsafe here, and why it is sound
//!
//! 1. **Creating the memory** (`gst_fd_allocator_alloc` through
//!    `FdAllocatorExtManual::alloc_fd`): GStreamer stores the raw fd. It is
//!    the region's fd, created with `FdMemoryFlags::DONT_CLOSE` so GStreamer
//!    never closes it, and the `Arc<Region>` that owns it is kept in
//!    [`REGISTRY`] until our `free` vfunc has run the parent's free (which
//!    unmaps GStreamer's own mapping). So the fd is open for the memory's
//!    whole life.
//! 2. **Overriding `mem_map_full` / `mem_unmap_full`** on the instance in
//!    `instance_init`. GObject runs the parent's instance init first, so the
//!    fields hold the parent's functions (`gst_fd_mem_map` /
//!    `gst_fd_mem_unmap` for GstFdAllocator, `gst_dmabuf_mem_map` /
//!    `gst_dmabuf_mem_unmap` for GstDmaBufAllocator); we save them per type
//!    and install trampolines. Nothing else writes these fields after
//!    construction, and `gst_memory_map` / `gst_memory_unmap` prefer the
//!    `_full` variants, which also tell the unmap whether the map was WRITE.
//! 3. **The trampolines**: GStreamer calls them with a valid `GstMemory`
//!    whose allocator is ours (or a sub-memory of one, whose `parent` is the
//!    root memory, alive because the sub-memory holds a ref on it) and a
//!    valid `GstMapInfo`. They read two fields, run safe code
//!    ([`super::access`]) and chain to the saved parent functions with the
//!    arguments they received. Panics (only `panic_on_violation`) are caught
//!    and turned into a failed map, never unwound into C.
//! 4. **The pointer handed out under cache simulation** points into the
//!    staging `Vec` of the root memory's [`Wrapped`]: it is sized once at the
//!    first map and not touched by Rust while maps are outstanding, and the
//!    `Wrapped` lives in [`REGISTRY`] until the memory is freed, after its
//!    last unmap.
//! 5. **`free`**: receives the memory GStreamer is freeing (refcount 0); we
//!    remove its registry entry *before* calling the parent's free, so that
//!    the address cannot be reused by a concurrent `wrap` while still keyed,
//!    and drop the region only *after* it. The release callback of
//!    `wrap_with_release` runs after the parent's free too, inside
//!    `catch_unwind`.
//! 6. **Duplicating a foreign fd memory's fd** (`dup_memory_fd`): the fd of a
//!    GstFdMemory is open while the memory lives, and the memory is borrowed
//!    for the call.
//! 7. **The imports of a foreign memory, kept as its qdata**
//!    (`with_imports`): a `Box<Vec<Arc<Region>>>` (one region per VPU that
//!    imported the memory) set once under the quark
//!    [`IMPORTS_QUARK`], never replaced, and freed by GStreamer through
//!    `free_imports` when the memory is disposed. Only `with_imports` reads
//!    or creates it, holding [`IMPORTS_LOCK`] for the whole access, so no two
//!    threads create it or touch the `Vec` at once; the caller borrows the
//!    memory, so it is not disposed meanwhile.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};

use gst::glib;
use gst::subclass::prelude::*;
use gst_allocators::prelude::*;
use gst_allocators::subclass::prelude::*;

use crate::mem::Region;

use super::access::{MapPlan, ReleaseFn, Wrapped};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpuallocator",
        gst::DebugColorFlags::empty(),
        Some("rsvpu fd/dmabuf allocator over mem regions"),
    )
});

/// Root memories we created, keyed by their `GstMemory` address, with what
/// they keep alive. Shared by both allocator types.
static REGISTRY: LazyLock<Mutex<HashMap<usize, Arc<Wrapped>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn registry() -> MutexGuard<'static, HashMap<usize, Arc<Wrapped>>> {
    // Insert/remove/clone only: a poisoned map is still consistent.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The entry of the root memory of `mem` (itself, or its parent for
/// sub-memories made by `gst_memory_share`).
pub(super) fn lookup(mem: &gst::MemoryRef) -> Option<Arc<Wrapped>> {
    let root = mem.parent().unwrap_or(mem);
    registry().get(&(root.as_ptr() as usize)).cloned()
}

/// The parent type's map/unmap functions, as found on a fresh instance.
#[derive(Clone, Copy)]
struct ParentOps {
    map: gst::ffi::GstMemoryMapFunction,
    unmap: gst::ffi::GstMemoryUnmapFunction,
    map_full: gst::ffi::GstMemoryMapFullFunction,
    unmap_full: gst::ffi::GstMemoryUnmapFullFunction,
}

/// What differs between the two subclasses.
trait Flavour: ObjectSubclass {
    fn parent_ops() -> &'static OnceLock<ParentOps>;
}

/// A new fd for the file behind a (foreign) GstFdMemory or GstDmaBufMemory.
pub(super) fn dup_memory_fd(
    mem: &gst_allocators::FdMemoryRef,
) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: a GstFdMemory's fd stays open as long as the memory, and the
    // caller borrows the memory for the whole call; the borrow does not
    // outlive it (the fd is duplicated at once).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(mem.fd()) };
    fd.try_clone_to_owned()
}

/// Names the qdata that holds a foreign memory's imports (see 7. above).
static IMPORTS_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("rsvpu-foreign-imports"));

/// Held for every access to any memory's imports (see 7. above). Taken once
/// per imported frame, briefly, and never while taking another lock.
static IMPORTS_LOCK: Mutex<()> = Mutex::new(());

unsafe extern "C" fn free_imports(data: glib::ffi::gpointer) {
    // SAFETY: `data` is the box `with_imports` leaked into the qdata; GStreamer
    // calls this once, when the memory is disposed (nobody borrows it then).
    drop(unsafe { Box::from_raw(data.cast::<Vec<Arc<Region>>>()) });
}

/// Runs `f` on the imports kept with `mem` (empty the first time).
pub(super) fn with_imports<R>(
    mem: &gst::MemoryRef,
    f: impl FnOnce(&mut Vec<Arc<Region>>) -> R,
) -> R {
    let _guard = IMPORTS_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let object = mem.as_ptr() as *mut gst::ffi::GstMiniObject;
    let quark = glib::translate::IntoGlib::into_glib(*IMPORTS_QUARK);
    // SAFETY: see 7. above: `mem` is alive for the call, the qdata under this
    // quark is only ever our box, created here once, and this lock keeps any
    // other access out while `f` runs.
    unsafe {
        let mut imports =
            gst::ffi::gst_mini_object_get_qdata(object, quark).cast::<Vec<Arc<Region>>>();
        if imports.is_null() {
            imports = Box::into_raw(Box::<Vec<Arc<Region>>>::default());
            gst::ffi::gst_mini_object_set_qdata(object, quark, imports.cast(), Some(free_imports));
        }
        f(&mut *imports)
    }
}

/// Creates the memory over `region`'s fd and registers it (see 1. above).
pub(super) fn wrap(
    allocator: &gst_allocators::FdAllocator,
    region: Arc<Region>,
    release: Option<ReleaseFn>,
) -> Result<gst::Memory, glib::BoolError> {
    // SAFETY: the fd is the region's and stays open as long as the memory
    // exists: DONT_CLOSE keeps GStreamer from closing it, and the registry
    // holds the region until after the parent's free has run.
    //
    // KEEP_MAPPED: GStreamer's fd memory otherwise unmaps at the last unmap,
    // so every frame a producer wrote into a pooled buffer was a fresh mmap
    // and one page fault per 4 KiB page (at 1080p I420 about 760 faults and
    // 2.6 ms of kernel time per frame, measured under `videotestsrc !
    // vpuh264enc`). The mapping now lives as long as the memory, as
    // GstV4l2Allocator keeps its own. Cache maintenance does not depend on
    // it: it runs in our map/unmap trampolines either way.
    let mem = unsafe {
        allocator.alloc_fd(
            region.fd().as_raw_fd(),
            region.size(),
            gst_allocators::FdMemoryFlags::DONT_CLOSE | gst_allocators::FdMemoryFlags::KEEP_MAPPED,
        )
    }?;
    gst::debug!(
        CAT,
        obj = allocator,
        "wrapped region \"{}\" ({} bytes, {:?}, {:?}) as memory {:?}",
        region.name(),
        region.size(),
        region.coherency(),
        region.kind(),
        mem.as_ptr()
    );
    // Nobody else has the memory yet, so nobody can map it before this.
    registry().insert(
        mem.as_ptr() as usize,
        Arc::new(Wrapped::new(region, release)),
    );
    Ok(mem)
}

/// Saves the parent's functions and installs our trampolines (see 2. above).
///
/// # Safety
/// `allocator` is an instance of `F`'s type being initialised, after its
/// parent's instance init.
unsafe fn install<F: Flavour>(allocator: *mut gst::ffi::GstAllocator) {
    // SAFETY: per the contract, `allocator` points to a live GstAllocator
    // whose parent instance init has run; no other thread sees it yet.
    unsafe {
        let saved = ParentOps {
            map: (*allocator).mem_map,
            unmap: (*allocator).mem_unmap,
            map_full: (*allocator).mem_map_full,
            unmap_full: (*allocator).mem_unmap_full,
        };
        // Identical for every instance of a type: the first one wins.
        F::parent_ops().get_or_init(|| saved);
        (*allocator).mem_map_full = Some(map_full::<F>);
        (*allocator).mem_unmap_full = Some(unmap_full::<F>);
    }
}

unsafe extern "C" fn map_full<F: Flavour>(
    mem: *mut gst::ffi::GstMemory,
    info: *mut gst::ffi::GstMapInfo,
    maxsize: usize,
) -> glib::ffi::gpointer {
    // SAFETY: gst_memory_map passes its valid map info (see 3. above).
    let flags = unsafe { (*info).flags };
    // SAFETY: `mem` is a valid memory for the duration of the call.
    let wrapped = lookup(unsafe { gst::MemoryRef::from_ptr(mem) });
    if let Some(wrapped) = &wrapped {
        let write = flags & gst::ffi::GST_MAP_WRITE != 0;
        match catch_unwind(AssertUnwindSafe(|| wrapped.before_map(write))) {
            Ok(MapPlan::Parent) => {}
            // See 4. above for why this pointer stays valid.
            Ok(MapPlan::Staging(data)) => return data.cast(),
            Err(_) => {
                gst::error!(
                    CAT,
                    "CPU map of region \"{}\" refused: coherency violation (panic_on_violation)",
                    wrapped.region.name()
                );
                return ptr::null_mut();
            }
        }
    }
    let Some(ops) = F::parent_ops().get() else {
        return ptr::null_mut();
    };
    // SAFETY: the parent's own map function, with the arguments GStreamer
    // gave us.
    unsafe {
        if let Some(f) = ops.map_full {
            f(mem, info, maxsize)
        } else if let Some(f) = ops.map {
            f(mem, maxsize, flags)
        } else {
            ptr::null_mut()
        }
    }
}

unsafe extern "C" fn unmap_full<F: Flavour>(
    mem: *mut gst::ffi::GstMemory,
    info: *mut gst::ffi::GstMapInfo,
) {
    // SAFETY: gst_memory_unmap passes the map info of the map (see 3. above).
    let write = unsafe { (*info).flags } & gst::ffi::GST_MAP_WRITE != 0;
    // SAFETY: `mem` is a valid memory for the duration of the call.
    let wrapped = lookup(unsafe { gst::MemoryRef::from_ptr(mem) });
    // Simulated regions were mapped without the parent (see `map_full`).
    let simulated = wrapped.as_ref().is_some_and(|w| w.is_simulated());
    if !simulated && let Some(ops) = F::parent_ops().get() {
        // SAFETY: the parent's own unmap function, with the arguments
        // GStreamer gave us, for a map the parent made.
        unsafe {
            if let Some(f) = ops.unmap_full {
                f(mem, info);
            } else if let Some(f) = ops.unmap {
                f(mem);
            }
        }
    }
    if let Some(wrapped) = &wrapped
        && catch_unwind(AssertUnwindSafe(|| wrapped.after_unmap(write))).is_err()
    {
        gst::error!(
            CAT,
            "CPU unmap of region \"{}\": coherency violation (panic_on_violation)",
            wrapped.region.name()
        );
    }
}

/// Our `free` vfunc (see 5. above).
///
/// # Safety
/// As `AllocatorImpl::free`: `memory` is one of ours with refcount 0.
unsafe fn free<T: AllocatorImpl>(imp: &T, memory: *mut gst::ffi::GstMemory) {
    let entry = registry().remove(&(memory as usize));
    // SAFETY: forwarded unchanged from GStreamer's free.
    unsafe { imp.parent_free(memory) };
    if let Some(entry) = entry {
        gst::trace!(CAT, "memory of region \"{}\" freed", entry.region.name());
        // After the parent's free: the memory is gone, the region may be
        // handed on. Never unwind into C.
        if let Some(release) = entry.take_release()
            && catch_unwind(AssertUnwindSafe(release)).is_err()
        {
            gst::error!(
                CAT,
                "release callback of region \"{}\" panicked",
                entry.region.name()
            );
        }
    }
}

/// Memfd (any mappable fd) memory, GstFdAllocator parent.
#[derive(Default)]
pub struct VpuAllocator;

#[glib::object_subclass]
impl ObjectSubclass for VpuAllocator {
    const NAME: &'static str = "GstVpuAllocator";
    type Type = super::VpuAllocator;
    type ParentType = gst_allocators::FdAllocator;

    fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
        // SAFETY: called by GObject after GstFdAllocator's instance init.
        unsafe { install::<Self>(obj.as_ptr().cast()) }
    }
}

impl Flavour for VpuAllocator {
    fn parent_ops() -> &'static OnceLock<ParentOps> {
        static OPS: OnceLock<ParentOps> = OnceLock::new();
        &OPS
    }
}

impl ObjectImpl for VpuAllocator {}
impl GstObjectImpl for VpuAllocator {}

// SAFETY: `alloc` keeps the parent's (GstFdAllocator has none: NULL memory,
// and the CUSTOM_ALLOC flag keeps generic code from calling it); `free`
// chains to the parent's with the memory unchanged.
unsafe impl AllocatorImpl for VpuAllocator {
    unsafe fn free(&self, memory: *mut gst::ffi::GstMemory) {
        // SAFETY: forwarded from GStreamer's free.
        unsafe { free(self, memory) }
    }
}

impl FdAllocatorImpl for VpuAllocator {}

/// Real dma-buf memory, GstDmaBufAllocator parent.
#[derive(Default)]
pub struct VpuDmaBufAllocator;

#[glib::object_subclass]
impl ObjectSubclass for VpuDmaBufAllocator {
    const NAME: &'static str = "GstVpuDmaBufAllocator";
    type Type = super::VpuDmaBufAllocator;
    type ParentType = gst_allocators::DmaBufAllocator;

    fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
        // SAFETY: called by GObject after GstDmaBufAllocator's instance init.
        unsafe { install::<Self>(obj.as_ptr().cast()) }
    }
}

impl Flavour for VpuDmaBufAllocator {
    fn parent_ops() -> &'static OnceLock<ParentOps> {
        static OPS: OnceLock<ParentOps> = OnceLock::new();
        &OPS
    }
}

impl ObjectImpl for VpuDmaBufAllocator {}
impl GstObjectImpl for VpuDmaBufAllocator {}

// SAFETY: as for VpuAllocator.
unsafe impl AllocatorImpl for VpuDmaBufAllocator {
    unsafe fn free(&self, memory: *mut gst::ffi::GstMemory) {
        // SAFETY: forwarded from GStreamer's free.
        unsafe { free(self, memory) }
    }
}

impl FdAllocatorImpl for VpuDmaBufAllocator {}
impl DmaBufAllocatorImpl for VpuDmaBufAllocator {}
