//! `mmap`ed memory: [`Mapping`] (byte slices) and [`SharedMapping`] (copies and
//! atomics for memory used concurrently). See the module docs of `sys` for the
//! aliasing model.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use rustix::mm::{MapFlags, ProtFlags};

/// A byte range outside of a mapping (or misaligned for an atomic access).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range {offset}..{offset}+{len} is outside of the {size}-byte mapping")]
pub struct OutOfRange {
    pub offset: usize,
    pub len: usize,
    pub size: usize,
}

/// The raw mapping: base pointer and length. Unmaps on drop.
#[derive(Debug)]
pub(super) struct RawMap {
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

impl RawMap {
    fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<RawMap> {
        RawMap::map_prot(fd, len, ProtFlags::READ | ProtFlags::WRITE)
    }

    /// A `MAP_SHARED`, `PROT_READ` mapping: a write through it faults.
    pub(super) fn map_read_only(fd: BorrowedFd<'_>, len: usize) -> io::Result<RawMap> {
        RawMap::map_prot(fd, len, ProtFlags::READ)
    }

    fn map_prot(fd: BorrowedFd<'_>, len: usize, prot: ProtFlags) -> io::Result<RawMap> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map 0 bytes",
            ));
        }
        // SAFETY: a fresh mapping at an address chosen by the kernel
        // (null hint) cannot overlap any memory Rust already uses. The fd is
        // borrowed for the duration of the call; the mapping keeps its own
        // reference to the file.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }?;
        NonNull::new(ptr.cast::<u8>())
            .map(|ptr| RawMap { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), OutOfRange> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping created by `RawMap::map_prot`
        // that is unmapped only here; every borrow handed out is tied to
        // `&self` of the owning Mapping/SharedMapping, and a frame lent to
        // libav (`avframe`) owns an `Arc` of its mapping, so none outlives
        // this call.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            log::error!("munmap of {} bytes failed: {e}", self.len);
        }
    }
}

/// A `MAP_SHARED`, read-write mapping of an fd, accessed as byte slices.
///
/// Behaves like an owned `Box<[u8]>`: `&self` gives `&[u8]`, `&mut self` gives
/// `&mut [u8]`. Other agents that can write the same memory (devices, other
/// mappings of the fd) must be excluded by the caller's ownership protocol
/// while a slice is alive; in this crate that is `mem::Region`'s lock and
/// checker.
#[derive(Debug)]
pub struct Mapping {
    raw: RawMap,
}

// SAFETY: the mapping is owned memory like a Box<[u8]>; moving it to another
// thread moves that ownership. Nothing in it is tied to the creating thread.
unsafe impl Send for Mapping {}
// SAFETY: through `&Mapping` only shared `&[u8]` borrows can be created, and
// mutation requires `&mut Mapping`, so Rust's borrow rules give the same
// guarantees as for `&Box<[u8]>` shared across threads.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` (`MAP_SHARED`, `PROT_READ|PROT_WRITE`).
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        RawMap::map(fd, len).map(|raw| Mapping { raw })
    }

    pub fn len(&self) -> usize {
        self.raw.len
    }

    /// Always false: zero-length mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        self.raw.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for reads of len bytes for as long as the
        // mapping lives, which the returned borrow of `self` guarantees. No
        // `&mut` to these bytes can exist at the same time (that needs
        // `&mut self`); external writers are excluded by the documented
        // ownership protocol.
        unsafe { std::slice::from_raw_parts(self.raw.ptr.as_ptr(), self.raw.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`, and `&mut self` guarantees this is the
        // only borrow of the bytes within the process.
        unsafe { std::slice::from_raw_parts_mut(self.raw.ptr.as_ptr(), self.raw.len) }
    }

    /// Gives up slice access for concurrent copy/atomic access. One-way.
    pub fn into_shared(self) -> SharedMapping {
        SharedMapping { raw: self.raw }
    }
}

/// A `MAP_SHARED` mapping used concurrently by several threads (rings,
/// descriptors). Never hands out references to plain bytes: copies go through
/// relaxed `AtomicU8` accesses and counters through `&AtomicU32`.
#[derive(Debug)]
pub struct SharedMapping {
    raw: RawMap,
}

// SAFETY: owned memory; see `Mapping`.
unsafe impl Send for SharedMapping {}
// SAFETY: every access through `&SharedMapping` is atomic (AtomicU8 copies,
// &AtomicU32), so concurrent use from several threads cannot data-race.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps the first `len` bytes of `fd` for shared access.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMapping> {
        RawMap::map(fd, len).map(|raw| SharedMapping { raw })
    }

    pub fn len(&self) -> usize {
        self.raw.len
    }

    /// Always false: zero-length mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        self.raw.len == 0
    }

    fn byte(&self, index: usize) -> &AtomicU8 {
        debug_assert!(index < self.raw.len);
        // SAFETY: callers bounds-check `index` first; the byte lives as long as
        // `self`; AtomicU8 has alignment 1; all accesses to the mapping through
        // this type are atomic, so creating an atomic view is allowed
        // (`AtomicU8::from_ptr` requirements).
        unsafe { AtomicU8::from_ptr(self.raw.ptr.as_ptr().add(index)) }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the mapping.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfRange> {
        self.raw.check(offset, dst.len())?;
        for (i, d) in dst.iter_mut().enumerate() {
            *d = self.byte(offset + i).load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies `src` into the mapping starting at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), OutOfRange> {
        self.raw.check(offset, src.len())?;
        for (i, s) in src.iter().enumerate() {
            self.byte(offset + i).store(*s, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The `u32` at `offset` as an atomic, or `None` if out of range or not
    /// 4-byte aligned.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        self.raw.check(offset, 4).ok()?;
        // SAFETY: in bounds (checked above); the pointer stays inside the
        // mapping.
        let ptr = unsafe { self.raw.ptr.as_ptr().add(offset) };
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<AtomicU32>()) {
            return None;
        }
        // SAFETY: in bounds, aligned (checked above), valid for the lifetime
        // of `&self`, and only ever accessed atomically through this type.
        Some(unsafe { AtomicU32::from_ptr(ptr.cast::<u32>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::memfd_sealed;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    #[test]
    fn mapping_read_write_and_visibility_through_second_mapping() {
        let fd = memfd_sealed("test-map", 8192).unwrap();
        let mut a = Mapping::map(fd.as_fd(), 8192).unwrap();
        assert_eq!(a.len(), 8192);
        assert!(a.as_slice().iter().all(|&b| b == 0));
        a.as_mut_slice()[100..104].copy_from_slice(&[1, 2, 3, 4]);
        let b = SharedMapping::map(fd.as_fd(), 8192).unwrap();
        let mut out = [0u8; 4];
        b.read_at(100, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        b.write_at(8190, &[9, 9]).unwrap();
        assert_eq!(&a.as_slice()[8190..], &[9, 9]);
    }

    #[test]
    fn map_rejects_zero_length() {
        let fd = memfd_sealed("test-zero", 4096).unwrap();
        assert!(Mapping::map(fd.as_fd(), 0).is_err());
    }

    #[test]
    fn shared_accessors_are_bounds_checked() {
        let fd = memfd_sealed("test-bounds", 4096).unwrap();
        let m = Mapping::map(fd.as_fd(), 4096).unwrap().into_shared();
        let mut buf = [0u8; 8];
        assert_eq!(
            m.read_at(4090, &mut buf),
            Err(OutOfRange {
                offset: 4090,
                len: 8,
                size: 4096
            })
        );
        assert!(m.write_at(usize::MAX, &buf).is_err());
        assert!(m.write_at(4088, &buf).is_ok());
        assert!(m.atomic_u32(4092).is_some());
        assert!(m.atomic_u32(4093).is_none(), "misaligned");
        assert!(m.atomic_u32(4096).is_none(), "out of range");
        assert!(m.atomic_u32(usize::MAX - 1).is_none(), "overflow");
    }

    #[test]
    fn atomics_synchronise_two_threads() {
        const N: u32 = 10_000;
        let fd = memfd_sealed("test-atomics", 4096).unwrap();
        let m = Arc::new(SharedMapping::map(fd.as_fd(), 4096).unwrap());
        let producer = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                let idx = m.atomic_u32(0).unwrap();
                for i in 1..=N {
                    // payload first, then publish with Release
                    m.write_at(64, &i.to_le_bytes()).unwrap();
                    idx.store(i, Ordering::Release);
                    while m.atomic_u32(4).unwrap().load(Ordering::Acquire) != i {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let idx = m.atomic_u32(0).unwrap();
        let ack = m.atomic_u32(4).unwrap();
        for i in 1..=N {
            while idx.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            let mut p = [0u8; 4];
            m.read_at(64, &mut p).unwrap();
            assert_eq!(u32::from_le_bytes(p), i);
            ack.store(i, Ordering::Release);
        }
        producer.join().unwrap();
        // fetch_add works on the shared memory as on any atomic
        assert_eq!(m.atomic_u32(8).unwrap().fetch_add(5, Ordering::AcqRel), 0);
        let mut raw = [0u8; 4];
        m.read_at(8, &mut raw).unwrap();
        assert_eq!(u32::from_ne_bytes(raw), 5);
    }
}
