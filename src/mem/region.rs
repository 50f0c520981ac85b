//! [`Region`]: one fd-backed buffer (fd + mapping + size + coherency + owner)
//! and its access guards.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use crate::sys::{self, DmaBackend, DmaBufSync, Mapping, SharedMapping, SyncAccess};

use super::cache::CacheSim;
use super::checker::{Checker, Direction, Violation};
use super::error::MemError;

/// How the CPU mapping of a region relates to what the device sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coherency {
    /// No sync needed (uncached / write-combined CPU mapping). Control rings,
    /// small bitstream buffers. No ownership tracking, syncs are no-ops.
    Coherent,
    /// Fast cached CPU access; every transfer needs `sync_for_device` /
    /// `sync_for_cpu`, and the checker tracks the owner.
    Cacheable,
}

/// Who may touch a cacheable region's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Cpu,
    Device,
}

/// What the region's fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// A dma-buf: CPU access is bracketed with `DMA_BUF_IOCTL_SYNC`.
    DmaBuf,
    /// Any other mappable fd (memfd): no sync ioctl exists for it.
    Memfd,
}

#[derive(Debug, Clone, Copy)]
enum Access {
    CpuRead,
    CpuWrite,
    DeviceRead,
    DeviceWrite,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::CpuRead => "cpu_read",
            Access::CpuWrite => "cpu_write",
            Access::DeviceRead => "device_read",
            Access::DeviceWrite => "device_write",
        }
    }
}

/// State behind the region lock.
#[derive(Debug)]
struct Inner {
    /// `None` once the region was switched to shared (ring) access.
    mapping: Option<Mapping>,
    owner: Owner,
    /// The CPU wrote since the last `sync_for_device`.
    cpu_dirty: bool,
    /// Cache model (cacheable regions with `simulate_cache` only).
    cache: Option<CacheSim>,
}

impl Inner {
    fn dram(&self) -> &[u8] {
        self.mapping.as_ref().map_or(&[], Mapping::as_slice)
    }

    fn dram_mut(&mut self) -> &mut [u8] {
        self.mapping.as_mut().map_or(&mut [], Mapping::as_mut_slice)
    }

    fn cpu_view(&self) -> &[u8] {
        match &self.cache {
            Some(cache) => cache.view(),
            None => self.dram(),
        }
    }

    fn cpu_view_mut(&mut self) -> &mut [u8] {
        match self.cache {
            Some(ref mut cache) => cache.view_mut(),
            None => self.dram_mut(),
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One buffer: an fd, its mapping, its size, its coherency and (if
/// cacheable) who owns it. Shared as `Arc<Region>`.
///
/// # Access protocol
///
/// Bytes are reached only through guards, each holding the region lock for
/// its lifetime, so CPU and device never touch the bytes at the same time:
///
/// - [`cpu_read`](Self::cpu_read) / [`cpu_write`](Self::cpu_write): the CPU.
///   On a cacheable dma-buf they bracket the access with
///   `DMA_BUF_IOCTL_SYNC` START/END (READ, resp. READ|WRITE).
/// - [`device_read`](Self::device_read) / [`device_write`](Self::device_write):
///   the (emulated) DMA engine; they see memory ("DRAM"), never the CPU cache.
///
/// On a cacheable region the CPU may access while it owns the region, the
/// device while the device owns it; [`sync_for_device`](Self::sync_for_device)
/// and [`sync_for_cpu`](Self::sync_for_cpu) hand ownership over (a new region
/// belongs to the CPU). A guard taken by the wrong side records a
/// [`Violation`] in the [`Checker`] (or panics with
/// `panic_on_violation`), then proceeds. With `simulate_cache`, the wrong
/// side also gets the stale data a write-back cache would produce.
///
/// Calling a sync or taking a second guard on the same region while holding
/// a guard on the same thread deadlocks (the lock is not reentrant).
///
/// A coherent region can instead be switched to concurrent ring access with
/// [`shared`](Self::shared); from then on its guards panic.
pub struct Region {
    id: u64,
    name: String,
    size: usize,
    coherency: Coherency,
    kind: MemoryKind,
    checker: Arc<Checker>,
    inner: Mutex<Inner>,
    shared: OnceLock<SharedMapping>,
    // Declared last: dropped after the mapping (not required by the kernel,
    // but the natural order).
    fd: OwnedFd,
}

impl Region {
    /// Allocates a new region of `size` bytes (the fd is rounded up to whole
    /// pages; the mapping and slices are exactly `size` bytes).
    pub fn allocate(
        name: &str,
        size: usize,
        coherency: Coherency,
        backend: DmaBackend,
        checker: &Arc<Checker>,
    ) -> Result<Arc<Region>, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize { name: name.into() });
        }
        let fd = backend
            .allocate(name, size)
            .map_err(|source| MemError::Allocate {
                name: name.into(),
                size,
                backend,
                source,
            })?;
        Region::new(name, fd, size, coherency, checker)
    }

    /// Wraps a foreign dma-buf or memfd. Fails if the fd holds fewer than
    /// `size` bytes.
    pub fn import(
        name: &str,
        fd: OwnedFd,
        size: usize,
        coherency: Coherency,
        checker: &Arc<Checker>,
    ) -> Result<Arc<Region>, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize { name: name.into() });
        }
        let actual = sys::fd_size(fd.as_fd()).map_err(|source| MemError::QuerySize {
            name: name.into(),
            source,
        })?;
        if actual < size as u64 {
            return Err(MemError::TooSmall {
                name: name.into(),
                expected: size,
                actual,
            });
        }
        Region::new(name, fd, size, coherency, checker)
    }

    fn new(
        name: &str,
        fd: OwnedFd,
        size: usize,
        coherency: Coherency,
        checker: &Arc<Checker>,
    ) -> Result<Arc<Region>, MemError> {
        let mapping = Mapping::map(fd.as_fd(), size).map_err(|source| MemError::Map {
            name: name.into(),
            size,
            source,
        })?;
        let kind = if sys::is_dma_buf(fd.as_fd()) {
            MemoryKind::DmaBuf
        } else {
            MemoryKind::Memfd
        };
        let cache = (coherency == Coherency::Cacheable && checker.config().simulate_cache)
            .then(|| CacheSim::new(size));
        Ok(Arc::new(Region {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            size,
            coherency,
            kind,
            checker: Arc::clone(checker),
            inner: Mutex::new(Inner {
                mapping: Some(mapping),
                owner: Owner::Cpu,
                cpu_dirty: false,
                cache,
            }),
            shared: OnceLock::new(),
            fd,
        }))
    }

    /// Process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Usable size in bytes (the fd may be larger, rounded up to pages).
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn coherency(&self) -> Coherency {
        self.coherency
    }

    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// The current owner. Coherent regions are never transferred and always
    /// report [`Owner::Cpu`].
    pub fn owner(&self) -> Owner {
        self.lock().owner
    }

    /// The fd, e.g. to export as DMABuf/fd memory or to queue to a driver.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn checker(&self) -> &Arc<Checker> {
        &self.checker
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A guard that panicked (e.g. panic_on_violation) leaves consistent
        // state: ownership changes are single assignments.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// CPU -> device: clean the CPU cache for this region, the device owns it
    /// afterwards. Cacheable: counted; with cache simulation, dirty lines are
    /// written back. Coherent: no-op.
    pub fn sync_for_device(&self) -> Result<(), MemError> {
        if self.coherency == Coherency::Coherent {
            return Ok(());
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut written = 0;
        if let (Some(cache), Some(mapping)) = (inner.cache.as_mut(), inner.mapping.as_mut()) {
            written = cache.clean(mapping.as_mut_slice());
        }
        inner.owner = Owner::Device;
        inner.cpu_dirty = false;
        drop(guard);
        self.checker.count_sync_for_device(written);
        log::trace!(
            "{}: sync_for_device ({written} lines written back)",
            self.name
        );
        Ok(())
    }

    /// Device -> CPU: invalidate the CPU cache for this region, the CPU owns
    /// it afterwards. Cacheable: counted; with cache simulation, all lines
    /// are invalidated. Coherent: no-op.
    pub fn sync_for_cpu(&self) -> Result<(), MemError> {
        if self.coherency == Coherency::Coherent {
            return Ok(());
        }
        let mut inner = self.lock();
        if let Some(cache) = inner.cache.as_mut() {
            cache.invalidate();
        }
        inner.owner = Owner::Cpu;
        drop(inner);
        self.checker.count_sync_for_cpu();
        log::trace!("{}: sync_for_cpu", self.name);
        Ok(())
    }

    /// Switches a coherent region to concurrent access by several threads
    /// (rings, descriptors) and returns the shared mapping. One-way: after
    /// this, CPU and device guards on the region panic. Fails for cacheable
    /// regions, and while a guard is held.
    pub fn shared(&self) -> Result<&SharedMapping, MemError> {
        if self.coherency != Coherency::Coherent {
            return Err(MemError::NotCoherent {
                name: self.name.clone(),
            });
        }
        if let Some(shared) = self.shared.get() {
            return Ok(shared);
        }
        let mut inner = match self.inner.try_lock() {
            Ok(inner) => inner,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(MemError::Busy {
                    name: self.name.clone(),
                });
            }
        };
        // Under the lock nobody else converts; `mapping` is `None` only if a
        // previous call already filled `shared`.
        match inner.mapping.take() {
            Some(mapping) => Ok(self.shared.get_or_init(|| mapping.into_shared())),
            None => self.shared.get().ok_or_else(|| MemError::Busy {
                name: self.name.clone(),
            }),
        }
    }

    /// Takes the lock for a guard: refuses shared-mode regions, checks
    /// ownership first (recording / panicking), prepares the cache model.
    fn acquire(&self, access: Access) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        if inner.mapping.is_none() {
            drop(inner);
            panic!(
                "{} of region \"{}\": the region was switched to shared (ring) access; \
                 use Region::shared() accessors",
                access.name(),
                self.name
            );
        }
        if self.coherency == Coherency::Coherent {
            return inner;
        }
        if let Some(violation) = self.check(&inner, access) {
            self.checker.record(violation.clone());
            if self.checker.config().panic_on_violation {
                drop(inner);
                panic!("{violation}");
            }
        }
        let inner_ref = &mut *inner;
        if let (Some(cache), Some(mapping)) = (inner_ref.cache.as_mut(), inner_ref.mapping.as_ref())
        {
            match access {
                Access::CpuRead => cache.fill(mapping.as_slice()),
                Access::CpuWrite => {
                    cache.fill(mapping.as_slice());
                    cache.begin_write();
                }
                Access::DeviceRead | Access::DeviceWrite => {}
            }
        }
        inner
    }

    fn check(&self, inner: &Inner, access: Access) -> Option<Violation> {
        let name = &self.name;
        let (direction, detail) = match (access, inner.owner) {
            (Access::CpuRead | Access::CpuWrite, Owner::Cpu)
            | (Access::DeviceRead | Access::DeviceWrite, Owner::Device) => return None,
            (Access::CpuRead, Owner::Device) => (
                Direction::DeviceToCpu,
                format!(
                    "CPU read of \"{name}\" while the device owns it: missing sync_for_cpu \
                     (the CPU may see stale cached data)"
                ),
            ),
            (Access::CpuWrite, Owner::Device) => (
                Direction::DeviceToCpu,
                format!(
                    "CPU write of \"{name}\" while the device owns it: missing sync_for_cpu \
                     (the write races with the device and may be lost)"
                ),
            ),
            (Access::DeviceRead, Owner::Cpu) if inner.cpu_dirty => (
                Direction::CpuToDevice,
                format!(
                    "device read of \"{name}\" with CPU writes never flushed: missing \
                     sync_for_device (the device sees stale memory where the CPU wrote)"
                ),
            ),
            (Access::DeviceRead, Owner::Cpu) => (
                Direction::CpuToDevice,
                format!("device read of \"{name}\" while the CPU owns it: missing sync_for_device"),
            ),
            (Access::DeviceWrite, Owner::Cpu) => (
                Direction::CpuToDevice,
                format!(
                    "device write of \"{name}\" while the CPU owns it: missing sync_for_device \
                     (dirty CPU cache lines may later overwrite the device's data)"
                ),
            ),
        };
        Some(Violation {
            buffer: self.name.clone(),
            direction,
            operation: access.name().into(),
            detail,
        })
    }

    fn needs_dma_buf_sync(&self) -> bool {
        self.kind == MemoryKind::DmaBuf && self.coherency == Coherency::Cacheable
    }

    fn dma_buf_sync(&self, sync: DmaBufSync) {
        let result = sys::dma_buf_sync(self.fd.as_fd(), sync);
        self.checker.count_dma_buf_ioctl(result.is_ok());
        if let Err(e) = result {
            log::error!("{}: DMA_BUF_IOCTL_SYNC {sync:?} failed: {e}", self.name);
        }
    }

    /// CPU read access (see the type docs).
    pub fn cpu_read(&self) -> CpuRead<'_> {
        let inner = self.acquire(Access::CpuRead);
        let dma_buf = self.needs_dma_buf_sync();
        if dma_buf {
            self.dma_buf_sync(DmaBufSync::Start(SyncAccess::Read));
        }
        CpuRead {
            region: self,
            inner,
            dma_buf,
        }
    }

    /// CPU read-write access (see the type docs).
    pub fn cpu_write(&self) -> CpuWrite<'_> {
        let inner = self.acquire(Access::CpuWrite);
        let dma_buf = self.needs_dma_buf_sync();
        if dma_buf {
            self.dma_buf_sync(DmaBufSync::Start(SyncAccess::ReadWrite));
        }
        CpuWrite {
            region: self,
            inner,
            dma_buf,
        }
    }

    /// Device (DMA engine) read access: sees memory, not the CPU cache.
    pub fn device_read(&self) -> DeviceRead<'_> {
        DeviceRead {
            inner: self.acquire(Access::DeviceRead),
        }
    }

    /// Device (DMA engine) write access: writes memory, not the CPU cache.
    pub fn device_write(&self) -> DeviceWrite<'_> {
        DeviceWrite {
            inner: self.acquire(Access::DeviceWrite),
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("coherency", &self.coherency)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// CPU read guard; derefs to the bytes the CPU sees.
pub struct CpuRead<'a> {
    region: &'a Region,
    inner: MutexGuard<'a, Inner>,
    dma_buf: bool,
}

impl Deref for CpuRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner.cpu_view()
    }
}

impl Drop for CpuRead<'_> {
    fn drop(&mut self) {
        if self.dma_buf {
            self.region.dma_buf_sync(DmaBufSync::End(SyncAccess::Read));
        }
    }
}

/// CPU read-write guard. On drop: marks the region as written by the CPU
/// (and, under cache simulation, the changed lines dirty), then ends the
/// dma-buf access.
pub struct CpuWrite<'a> {
    region: &'a Region,
    inner: MutexGuard<'a, Inner>,
    dma_buf: bool,
}

impl Deref for CpuWrite<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner.cpu_view()
    }
}

impl DerefMut for CpuWrite<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.inner.cpu_view_mut()
    }
}

impl Drop for CpuWrite<'_> {
    fn drop(&mut self) {
        if self.region.coherency == Coherency::Cacheable {
            self.inner.cpu_dirty = true;
            if let Some(cache) = self.inner.cache.as_mut() {
                cache.end_write();
            }
        }
        if self.dma_buf {
            self.region
                .dma_buf_sync(DmaBufSync::End(SyncAccess::ReadWrite));
        }
    }
}

/// Device read guard; derefs to memory as the device sees it.
pub struct DeviceRead<'a> {
    inner: MutexGuard<'a, Inner>,
}

impl Deref for DeviceRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner.dram()
    }
}

/// Device write guard.
pub struct DeviceWrite<'a> {
    inner: MutexGuard<'a, Inner>,
}

impl Deref for DeviceWrite<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner.dram()
    }
}

impl DerefMut for DeviceWrite<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.inner.dram_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::cache::CACHE_LINE;
    use crate::mem::checker::CheckerConfig;
    use std::collections::BTreeSet;

    fn checker(simulate_cache: bool) -> Arc<Checker> {
        Checker::new(CheckerConfig {
            simulate_cache,
            panic_on_violation: false,
        })
    }

    fn region(name: &str, size: usize, c: Coherency, checker: &Arc<Checker>) -> Arc<Region> {
        Region::allocate(name, size, c, DmaBackend::Memfd, checker).unwrap()
    }

    /// Indices where `a` and `b` differ, and the 64-byte lines they fall in.
    fn diff(a: &[u8], b: &[u8]) -> (Vec<usize>, BTreeSet<usize>) {
        let bytes: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        let lines = bytes.iter().map(|i| i / CACHE_LINE).collect();
        (bytes, lines)
    }

    #[test]
    fn correct_sequence_has_no_violation_and_no_stale_data() {
        let chk = checker(true);
        let r = region("frame", 1000, Coherency::Cacheable, &chk);
        assert_eq!(r.owner(), Owner::Cpu);
        let pattern: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        r.cpu_write().copy_from_slice(&pattern);
        r.sync_for_device().unwrap();
        assert_eq!(r.owner(), Owner::Device);
        assert_eq!(&*r.device_read(), &pattern[..]);
        r.device_write().fill(0x42);
        r.sync_for_cpu().unwrap();
        assert_eq!(r.owner(), Owner::Cpu);
        assert!(r.cpu_read().iter().all(|&b| b == 0x42));
        assert_eq!(chk.violation_count(), 0, "{:?}", chk.violations());
        let stats = chk.stats();
        assert_eq!(stats.syncs_for_device, 1);
        assert_eq!(stats.syncs_for_cpu, 1);
        // every line but the first changed (byte 0 of the pattern is 0)
        assert_eq!(stats.lines_written_back, 1000u64.div_ceil(64));
        assert_eq!(stats.dma_buf_ioctls, 0, "memfd regions issue no ioctl");
    }

    #[test]
    fn missing_sync_for_device_is_reported_and_device_sees_stale_lines() {
        let chk = checker(true);
        let r = region("bitstream-7", 512, Coherency::Cacheable, &chk);
        {
            let mut w = r.cpu_write();
            w[60..70].fill(0xff); // straddles lines 0 and 1
            w[300] = 0xff; // line 4
        }
        let cpu_intent = r.cpu_read().to_vec();
        // Forgot r.sync_for_device().
        let seen = r.device_read().to_vec();
        let v = chk.take_violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].buffer, "bitstream-7");
        assert_eq!(v[0].direction, Direction::CpuToDevice);
        assert_eq!(v[0].operation, "device_read");
        assert!(v[0].detail.contains("never flushed"), "{}", v[0]);
        assert!(v[0].to_string().contains("bitstream-7"));
        let (stale, lines) = diff(&seen, &cpu_intent);
        assert_eq!(stale, (60..70).chain([300]).collect::<Vec<_>>());
        assert_eq!(lines, BTreeSet::from([0, 1, 4]));

        // The device now writes the whole buffer (another violation), and the
        // late clean writes the dirty lines back over it: whole 64-byte lines
        // of the device's output are corrupted, nothing else.
        r.device_write().fill(0xdd);
        r.sync_for_device().unwrap();
        let after = r.device_read().to_vec();
        let (corrupt, lines) = diff(&after, &[0xdd; 512]);
        let expected: Vec<usize> = (0..128).chain(256..320).collect();
        assert_eq!(corrupt, expected, "exactly lines 0, 1 and 4");
        assert_eq!(lines, BTreeSet::from([0, 1, 4]));
        let v = chk.take_violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].operation, "device_write");
        assert_eq!(v[0].direction, Direction::CpuToDevice);
    }

    #[test]
    fn missing_sync_for_cpu_is_reported_and_cpu_sees_stale_lines() {
        let chk = checker(true);
        let r = region("capture-3", 640, Coherency::Cacheable, &chk);
        r.cpu_write().fill(0x11);
        r.sync_for_device().unwrap();
        {
            let mut d = r.device_write();
            d[64..128].fill(0x22); // line 1
            d[400..410].fill(0x22); // inside line 6
        }
        // Forgot r.sync_for_cpu().
        let seen = r.cpu_read().to_vec();
        let truth = r.device_read().to_vec();
        let v = chk.take_violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].buffer, "capture-3");
        assert_eq!(v[0].direction, Direction::DeviceToCpu);
        assert_eq!(v[0].operation, "cpu_read");
        assert!(v[0].detail.contains("missing sync_for_cpu"), "{}", v[0]);
        let (stale, lines) = diff(&seen, &truth);
        assert_eq!(stale, (64..128).chain(400..410).collect::<Vec<_>>());
        assert_eq!(lines, BTreeSet::from([1, 6]));
        assert!(seen.iter().all(|&b| b == 0x11), "old cached lines");

        r.sync_for_cpu().unwrap();
        assert_eq!(&*r.cpu_read(), &truth[..]);
        assert_eq!(chk.violation_count(), 1);
    }

    #[test]
    fn without_simulation_violations_are_reported_but_data_is_direct() {
        let chk = checker(false);
        let r = region("direct", 256, Coherency::Cacheable, &chk);
        r.cpu_write()[5] = 9;
        assert_eq!(r.device_read()[5], 9);
        r.sync_for_device().unwrap();
        r.device_write()[6] = 8;
        assert_eq!(r.cpu_read()[6], 8);
        let ops: Vec<_> = chk
            .violations()
            .iter()
            .map(|v| (v.operation.clone(), v.direction))
            .collect();
        assert_eq!(
            ops,
            [
                ("device_read".to_string(), Direction::CpuToDevice),
                ("cpu_read".to_string(), Direction::DeviceToCpu)
            ]
        );
    }

    #[test]
    fn coherent_regions_never_report_and_do_not_count_syncs() {
        let chk = checker(true);
        let r = region("ring", 256, Coherency::Coherent, &chk);
        r.cpu_write()[0] = 1;
        assert_eq!(r.device_read()[0], 1, "no cache in between");
        r.device_write()[1] = 2;
        assert_eq!(r.cpu_read()[1], 2);
        r.sync_for_device().unwrap();
        r.cpu_write()[2] = 3;
        r.sync_for_cpu().unwrap();
        assert_eq!(r.owner(), Owner::Cpu);
        assert_eq!(chk.violation_count(), 0);
        assert_eq!(chk.stats(), Default::default());
    }

    #[test]
    fn panic_on_violation_records_then_panics_and_leaves_region_usable() {
        let chk = Checker::new(CheckerConfig {
            simulate_cache: false,
            panic_on_violation: true,
        });
        let r = region("strict", 64, Coherency::Cacheable, &chk);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = r.device_read()[0];
        }));
        let msg = res.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("strict") && msg.contains("device_read"),
            "{msg}"
        );
        assert_eq!(chk.violation_count(), 1);
        r.sync_for_device().unwrap();
        assert_eq!(r.device_read()[0], 0);
    }

    #[test]
    fn import_checks_size_and_kind() {
        let chk = checker(false);
        let fd = sys::memfd_sealed("foreign", 4096).unwrap();
        let e = Region::import("foreign", fd, 4097, Coherency::Cacheable, &chk).unwrap_err();
        assert!(
            matches!(
                e,
                MemError::TooSmall {
                    expected: 4097,
                    actual: 4096,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("4097"), "{e}");
        let fd = sys::memfd_sealed("foreign", 4096).unwrap();
        let r = Region::import("foreign", fd, 4000, Coherency::Cacheable, &chk).unwrap();
        assert_eq!(r.size(), 4000);
        assert_eq!(r.cpu_read().len(), 4000);
        assert_eq!(r.kind(), MemoryKind::Memfd);
        let fd = sys::memfd_sealed("foreign", 4096).unwrap();
        assert!(matches!(
            Region::import("x", fd, 0, Coherency::Coherent, &chk),
            Err(MemError::ZeroSize { .. })
        ));
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let chk = checker(false);
        let ids: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let chk = &chk;
                    s.spawn(move || {
                        (0..8)
                            .map(|i| {
                                region(&format!("r{t}-{i}"), 64, Coherency::Coherent, chk).id()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn shared_access_is_for_idle_coherent_regions_only() {
        let chk = checker(true);
        let c = region("cacheable", 64, Coherency::Cacheable, &chk);
        assert!(matches!(c.shared(), Err(MemError::NotCoherent { .. })));

        let r = region("cmd-ring", 4096, Coherency::Coherent, &chk);
        r.cpu_write()[8] = 7;
        {
            let _held = r.cpu_read();
            assert!(matches!(r.shared(), Err(MemError::Busy { .. })));
        }
        let s = r.shared().unwrap();
        let mut b = [0u8; 1];
        s.read_at(8, &mut b).unwrap();
        assert_eq!(b, [7], "contents survive the switch");
        let again = r.shared().unwrap();
        again
            .atomic_u32(0)
            .unwrap()
            .store(5, std::sync::atomic::Ordering::Release);
        assert_eq!(
            s.atomic_u32(0)
                .unwrap()
                .load(std::sync::atomic::Ordering::Acquire),
            5
        );
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.cpu_read().len()));
        assert!(res.is_err(), "slices of a shared region must be refused");
    }

    #[test]
    fn regions_and_guards_are_thread_safe_types() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Region>();
        send_sync::<Checker>();
        send_sync::<crate::mem::Pool>();
    }

    /// The intended use: a host thread and a "firmware" thread hand frames
    /// back and forth with syncs and an eventfd as interrupt line; the cache
    /// model is on and nothing is stale or reported.
    #[test]
    fn host_and_firmware_threads_hand_over_correctly() {
        use crate::sys::EventFd;
        use std::time::Duration;
        let chk = checker(true);
        let frame = region("frame", 300, Coherency::Cacheable, &chk);
        let (to_fw, irq) = (
            Arc::new(EventFd::new().unwrap()),
            Arc::new(EventFd::new().unwrap()),
        );
        let fw = {
            let (frame, to_fw, irq) = (Arc::clone(&frame), Arc::clone(&to_fw), Arc::clone(&irq));
            std::thread::spawn(move || {
                for round in 0..20u8 {
                    assert!(to_fw.wait(Some(Duration::from_secs(10))).unwrap());
                    let input = frame.device_read()[0];
                    assert_eq!(input, round, "device sees the CPU's flushed data");
                    frame.device_write().fill(round.wrapping_mul(3));
                    irq.signal().unwrap();
                }
            })
        };
        for round in 0..20u8 {
            frame.cpu_write().fill(round);
            frame.sync_for_device().unwrap();
            to_fw.signal().unwrap();
            assert!(irq.wait(Some(Duration::from_secs(10))).unwrap());
            frame.sync_for_cpu().unwrap();
            assert!(frame.cpu_read().iter().all(|&b| b == round.wrapping_mul(3)));
        }
        fw.join().unwrap();
        assert_eq!(chk.violation_count(), 0, "{:?}", chk.violations());
        assert_eq!(chk.stats().syncs_for_device, 20);
        assert_eq!(chk.stats().syncs_for_cpu, 20);
    }

    #[test]
    fn zero_size_allocation_fails() {
        let chk = checker(false);
        let e =
            Region::allocate("z", 0, Coherency::Cacheable, DmaBackend::Memfd, &chk).unwrap_err();
        assert!(matches!(e, MemError::ZeroSize { .. }), "{e}");
    }

    /// Real dma-bufs: cacheable CPU guards bracket with DMA_BUF_IOCTL_SYNC.
    #[test]
    #[ignore = "needs /dev/dma_heap or /dev/udmabuf: run in the VM"]
    fn dma_buf_regions_bracket_cpu_access_with_sync_ioctls() {
        let mut tested = 0;
        for backend in [DmaBackend::DmaHeap, DmaBackend::Udmabuf] {
            if !backend.is_available() {
                eprintln!("!!! dma-buf backend {backend} NOT AVAILABLE here: not tested");
                continue;
            }
            let chk = checker(true);
            let r = Region::allocate("dmabuf", 5000, Coherency::Cacheable, backend, &chk).unwrap();
            assert_eq!(r.kind(), MemoryKind::DmaBuf, "{backend}");
            r.cpu_write().fill(0x3c);
            assert_eq!(r.cpu_read()[4999], 0x3c);
            r.sync_for_device().unwrap();
            assert!(r.device_read().iter().all(|&b| b == 0x3c));
            let s = chk.stats();
            assert_eq!(s.dma_buf_ioctls, 4, "{backend}: START+END per CPU guard");
            assert_eq!(s.dma_buf_ioctl_errors, 0, "{backend}");
            assert_eq!(chk.violation_count(), 0);
            let c = Region::allocate("dmabuf-c", 64, Coherency::Coherent, backend, &chk).unwrap();
            c.cpu_write()[0] = 1;
            assert_eq!(chk.stats().dma_buf_ioctls, 4, "coherent: no ioctl");
            tested += 1;
        }
        assert!(tested > 0, "no dma-buf backend available");
    }
}
