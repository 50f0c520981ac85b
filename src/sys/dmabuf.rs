//! dma-buf ioctls: `DMA_BUF_IOCTL_SYNC`, udmabuf (`UDMABUF_CREATE`) and
//! dma-heap (`DMA_HEAP_IOCTL_ALLOC`). One safe function per ioctl; the raw
//! declarations are private and size-asserted against the kernel UAPI.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, Setter, Updater, opcode};

use super::memfd;

// --- include/uapi/linux/dma-buf.h ---------------------------------------

#[repr(C)]
struct DmaBufSyncArg {
    flags: u64,
}
const _: () = assert!(size_of::<DmaBufSyncArg>() == 8);

const DMA_BUF_SYNC_READ: u64 = 1 << 0;
const DMA_BUF_SYNC_WRITE: u64 = 1 << 1;
const DMA_BUF_SYNC_START: u64 = 0;
const DMA_BUF_SYNC_END: u64 = 1 << 2;
/// Flags outside of this mask make a dma-buf answer `EINVAL`.
#[cfg(test)]
const DMA_BUF_SYNC_VALID_FLAGS_MASK: u64 =
    DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE | DMA_BUF_SYNC_END;
const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSyncArg>(b'b', 0);
/// `f_type` of the dmabuf pseudo filesystem ("DMAB").
const DMA_BUF_MAGIC: u64 = 0x444d_4142;

// --- include/uapi/linux/udmabuf.h ---------------------------------------

#[repr(C)]
struct UdmabufCreateArg {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}
const _: () = assert!(size_of::<UdmabufCreateArg>() == 24);
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreateArg>(b'u', 0x42);

// --- include/uapi/linux/dma-heap.h --------------------------------------

#[repr(C)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}
const _: () = assert!(size_of::<DmaHeapAllocationData>() == 24);
const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

/// Which CPU accesses a `DMA_BUF_IOCTL_SYNC` bracket covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAccess {
    Read,
    Write,
    ReadWrite,
}

/// Argument of [`dma_buf_sync`]: start or end of a CPU access of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaBufSync {
    /// Before the CPU touches the buffer (the kernel invalidates / waits for
    /// fences as needed).
    Start(SyncAccess),
    /// After the CPU is done (the kernel cleans for the device).
    End(SyncAccess),
}

impl DmaBufSync {
    fn bits(self) -> u64 {
        let (phase, access) = match self {
            DmaBufSync::Start(a) => (DMA_BUF_SYNC_START, a),
            DmaBufSync::End(a) => (DMA_BUF_SYNC_END, a),
        };
        phase
            | match access {
                SyncAccess::Read => DMA_BUF_SYNC_READ,
                SyncAccess::Write => DMA_BUF_SYNC_WRITE,
                SyncAccess::ReadWrite => DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE,
            }
    }
}

/// How often `dma_buf_sync` retries `EINTR`/`EAGAIN` before giving up.
const SYNC_RETRIES: u32 = 10_000;

/// `DMA_BUF_IOCTL_SYNC`: brackets CPU access to a dma-buf. Retries on
/// `EINTR`/`EAGAIN` as the UAPI asks. On a non-dma-buf fd this fails with
/// `ENOTTY`.
pub fn dma_buf_sync(fd: BorrowedFd<'_>, sync: DmaBufSync) -> io::Result<()> {
    raw_sync(fd, sync.bits())
}

fn raw_sync(fd: BorrowedFd<'_>, flags: u64) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        // SAFETY: DMA_BUF_IOCTL_SYNC is _IOW('b', 0, struct dma_buf_sync) and
        // DmaBufSyncArg has that exact layout (size asserted above). The
        // kernel only reads the argument.
        let ioctl = unsafe { Setter::<DMA_BUF_IOCTL_SYNC, _>::new(DmaBufSyncArg { flags }) };
        // SAFETY: see above; the ioctl has no other effect on process memory.
        match unsafe { rustix::ioctl::ioctl(fd, ioctl) } {
            Ok(()) => return Ok(()),
            Err(Errno::INTR | Errno::AGAIN) if attempts < SYNC_RETRIES => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` is a dma-buf.
///
/// Checks the filesystem magic of the dmabuf pseudo-fs (kernels >= 5.3), then
/// the `anon_inode:dmabuf` link name of older kernels.
pub fn is_dma_buf(fd: BorrowedFd<'_>) -> bool {
    if let Ok(st) = rustix::fs::fstatfs(fd) {
        #[allow(clippy::unnecessary_cast)] // FsWord is i64 or u32 depending on the arch
        if st.f_type as u64 == DMA_BUF_MAGIC {
            return true;
        }
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match std::fs::read_link(link) {
        Ok(target) => target
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b"anon_inode:dmabuf"),
        Err(_) => false,
    }
}

/// Checks that an invalid-flag sync is refused the way a dma-buf refuses it
/// (`EINVAL`) rather than as an unknown ioctl (`ENOTTY`). Test helper only: it
/// proves the ioctl number reaches the dma-buf driver.
#[cfg(test)]
pub(crate) fn sync_ioctl_reaches_dma_buf(fd: BorrowedFd<'_>) -> bool {
    let invalid = !DMA_BUF_SYNC_VALID_FLAGS_MASK & 0xff;
    raw_sync(fd, invalid).err().and_then(|e| e.raw_os_error()) == Some(Errno::INVAL.raw_os_error())
}

struct UdmabufCreate {
    arg: UdmabufCreateArg,
}

// SAFETY: opcode and argument layout match include/uapi/linux/udmabuf.h; the
// kernel only reads the argument and returns a new fd as the ioctl result.
unsafe impl Ioctl for UdmabufCreate {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        UDMABUF_CREATE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        (&raw mut self.arg).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<OwnedFd> {
        if out < 0 {
            return Err(Errno::BADF);
        }
        // SAFETY: on success UDMABUF_CREATE returns a new fd that nobody else
        // owns; we take ownership exactly once.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

/// Wraps `size` bytes at `offset` of a memfd into a dma-buf through
/// `/dev/udmabuf` (`UDMABUF_CREATE`, close-on-exec).
///
/// The memfd must be sealed against shrinking (and not against writing), and
/// `offset`/`size` must be page-aligned; these are checked up front so the
/// error says which rule was broken instead of a bare `EINVAL`.
pub fn udmabuf_from_memfd(memfd: BorrowedFd<'_>, offset: u64, size: u64) -> io::Result<OwnedFd> {
    udmabuf_from_memfd_at(Path::new("/dev/udmabuf"), memfd, offset, size)
}

pub(crate) fn udmabuf_from_memfd_at(
    dev: &Path,
    memfd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> io::Result<OwnedFd> {
    let page = memfd::page_size() as u64;
    if size == 0 || !size.is_multiple_of(page) || !offset.is_multiple_of(page) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "udmabuf needs page-aligned offset and size (page {page}), got offset {offset} size {size}"
            ),
        ));
    }
    let seals = memfd::seals(memfd)?;
    if !seals.contains(SealFlags::SHRINK) || seals.contains(SealFlags::WRITE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "udmabuf needs a memfd sealed with F_SEAL_SHRINK and without F_SEAL_WRITE, seals are {seals:?}"
            ),
        ));
    }
    let memfd_raw = u32::try_from(memfd.as_raw_fd())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative memfd"))?;
    let dev = rustix::fs::open(dev, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let ioctl = UdmabufCreate {
        arg: UdmabufCreateArg {
            memfd: memfd_raw,
            flags: UDMABUF_FLAGS_CLOEXEC,
            offset,
            size,
        },
    };
    // SAFETY: see `impl Ioctl for UdmabufCreate`.
    Ok(unsafe { rustix::ioctl::ioctl(dev.as_fd(), ioctl) }?)
}

/// Allocates `size` bytes from a dma-heap (e.g. `/dev/dma_heap/system`) with
/// `DMA_HEAP_IOCTL_ALLOC`; the returned dma-buf fd is `O_RDWR | O_CLOEXEC`.
pub fn dma_heap_alloc(heap: &Path, size: usize) -> io::Result<OwnedFd> {
    let len = u64::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size overflows u64"))?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot allocate 0 bytes",
        ));
    }
    let heap_fd = rustix::fs::open(heap, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut data = DmaHeapAllocationData {
        len,
        fd: 0,
        fd_flags: (OFlags::RDWR | OFlags::CLOEXEC).bits(),
        heap_flags: 0,
    };
    // SAFETY: DMA_HEAP_IOCTL_ALLOC is _IOWR('H', 0, struct
    // dma_heap_allocation_data); the layout matches (size asserted). The
    // kernel writes only `fd` inside `data`, which outlives the call.
    let ioctl = unsafe { Updater::<DMA_HEAP_IOCTL_ALLOC, _>::new(&mut data) };
    // SAFETY: see above.
    unsafe { rustix::ioctl::ioctl(heap_fd.as_fd(), ioctl) }?;
    let fd = i32::try_from(data.fd)
        .map_err(|_| io::Error::other("dma-heap returned an fd that is out of range"))?;
    // SAFETY: on success the kernel installed a new fd in our table and gave
    // us its number; nobody else owns it; we take ownership exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Mapping, memfd_sealed};

    #[test]
    fn sync_flag_bits_match_uapi() {
        assert_eq!(DmaBufSync::Start(SyncAccess::Read).bits(), 1);
        assert_eq!(DmaBufSync::Start(SyncAccess::Write).bits(), 2);
        assert_eq!(DmaBufSync::Start(SyncAccess::ReadWrite).bits(), 3);
        assert_eq!(DmaBufSync::End(SyncAccess::Read).bits(), 5);
        assert_eq!(DmaBufSync::End(SyncAccess::ReadWrite).bits(), 7);
        // _IOW('b', 0, 8 bytes) and friends, as in the kernel headers (x86/arm)
        assert_eq!(DMA_BUF_IOCTL_SYNC as u64, 0x4008_6200);
        assert_eq!(UDMABUF_CREATE as u64, 0x4018_7542);
        assert_eq!(DMA_HEAP_IOCTL_ALLOC as u64, 0xc018_4800);
    }

    #[test]
    fn memfd_is_not_a_dma_buf() {
        let fd = memfd_sealed("test-kind", 4096).unwrap();
        assert!(!is_dma_buf(fd.as_fd()));
        let err = dma_buf_sync(fd.as_fd(), DmaBufSync::Start(SyncAccess::Read)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::NOTTY.raw_os_error()));
    }

    #[test]
    fn udmabuf_rejects_misaligned_or_unsealed_memfd_before_the_ioctl() {
        let fd = memfd_sealed("test-udmabuf", 4096).unwrap();
        let e = udmabuf_from_memfd(fd.as_fd(), 0, 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let unsealed =
            rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        let page = memfd::page_size() as u64;
        let e = udmabuf_from_memfd(unsealed.as_fd(), 0, page).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    fn check_dma_buf(fd: &OwnedFd, size: usize) {
        assert!(is_dma_buf(fd.as_fd()), "expected a dma-buf");
        assert_eq!(memfd::fd_size(fd.as_fd()).unwrap(), size as u64);
        assert!(sync_ioctl_reaches_dma_buf(fd.as_fd()));
        let mut m = Mapping::map(fd.as_fd(), size).unwrap();
        dma_buf_sync(fd.as_fd(), DmaBufSync::Start(SyncAccess::ReadWrite)).unwrap();
        m.as_mut_slice().fill(0x5a);
        dma_buf_sync(fd.as_fd(), DmaBufSync::End(SyncAccess::ReadWrite)).unwrap();
        dma_buf_sync(fd.as_fd(), DmaBufSync::Start(SyncAccess::Read)).unwrap();
        assert!(m.as_slice().iter().all(|&b| b == 0x5a));
        dma_buf_sync(fd.as_fd(), DmaBufSync::End(SyncAccess::Read)).unwrap();
    }

    #[test]
    #[ignore = "needs /dev/dma_heap/system: run in the VM (see src/sys/mod.rs docs)"]
    fn dma_heap_allocation_and_sync() {
        let size = 3 * memfd::page_size();
        let fd = dma_heap_alloc(Path::new("/dev/dma_heap/system"), size).unwrap();
        let fd_flags = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
        let status = rustix::fs::fcntl_getfl(&fd).unwrap();
        assert_eq!(status & OFlags::RWMODE, OFlags::RDWR);
        check_dma_buf(&fd, size);
    }

    #[test]
    #[ignore = "needs /dev/udmabuf: run in the VM (see src/sys/mod.rs docs)"]
    fn udmabuf_wraps_memfd_and_shares_its_pages() {
        let size = 2 * memfd::page_size();
        let mfd = memfd_sealed("test-udmabuf", size).unwrap();
        let fd = udmabuf_from_memfd(mfd.as_fd(), 0, size as u64).unwrap();
        check_dma_buf(&fd, size);
        // Same pages: what went through the dma-buf is visible in the memfd.
        let m = Mapping::map(mfd.as_fd(), size).unwrap();
        assert!(m.as_slice().iter().all(|&b| b == 0x5a));
    }
}
