//! Sealed memfds and fd/page size helpers.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags, SeekFrom};

/// The CPU page size (from the aux vector; no syscall).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// Rounds `size` up to a whole number of pages; `None` on overflow.
pub fn page_align(size: usize) -> Option<usize> {
    let page = page_size();
    size.checked_add(page - 1).map(|s| s / page * page)
}

/// Creates an anonymous memory file of exactly `size` bytes whose size can no
/// longer change: `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)`, `ftruncate`,
/// then seals `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`.
///
/// The fd stays writable (no `F_SEAL_WRITE`), which is what udmabuf requires and
/// what shared mappings need. `name` shows up in `/proc/<pid>/fd` as
/// `/memfd:<name>`.
pub fn memfd_sealed(name: &str, size: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let len = u64::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd size overflows u64"))?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Returns the seals of a memfd (empty for files that do not support sealing).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<SealFlags> {
    match rustix::fs::fcntl_get_seals(fd) {
        Ok(s) => Ok(s),
        Err(rustix::io::Errno::INVAL) => Ok(SealFlags::empty()),
        Err(e) => Err(e.into()),
    }
}

/// The size in bytes of what `fd` refers to.
///
/// Uses `fstat`; for dma-bufs whose inode reports 0 (old kernels) it falls back
/// to `lseek(SEEK_END)`, which dma-buf implements as "return the buffer size",
/// and rewinds afterwards.
pub fn fd_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > 0 {
        return Ok(size);
    }
    match rustix::fs::seek(fd.as_fd(), SeekFrom::End(0)) {
        Ok(end) => {
            // dma-buf only accepts SEEK_SET/SEEK_END with offset 0; restore the
            // offset for well-behaved sharing of the file description.
            let _ = rustix::fs::seek(fd, SeekFrom::Start(0));
            Ok(end)
        }
        Err(rustix::io::Errno::SPIPE) | Err(rustix::io::Errno::INVAL) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_has_requested_size_and_is_sealed() {
        let fd = memfd_sealed("test-seal", 10_000).unwrap();
        assert_eq!(fd_size(fd.as_fd()).unwrap(), 10_000);
        let s = seals(fd.as_fd()).unwrap();
        assert!(s.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    }

    #[test]
    fn seal_prevents_growth_shrink_and_new_seals() {
        let fd = memfd_sealed("test-grow", 4096).unwrap();
        assert_eq!(
            rustix::fs::ftruncate(&fd, 8192),
            Err(rustix::io::Errno::PERM)
        );
        assert_eq!(
            rustix::fs::ftruncate(&fd, 100),
            Err(rustix::io::Errno::PERM)
        );
        assert_eq!(
            rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE),
            Err(rustix::io::Errno::PERM)
        );
        // Writing past the end would grow the file: refused as well.
        assert_eq!(
            rustix::io::pwrite(&fd, b"x", 4096),
            Err(rustix::io::Errno::PERM)
        );
        assert_eq!(fd_size(fd.as_fd()).unwrap(), 4096);
    }

    #[test]
    fn page_align_rounds_up() {
        let p = page_size();
        assert_eq!(page_align(0), Some(0));
        assert_eq!(page_align(1), Some(p));
        assert_eq!(page_align(p), Some(p));
        assert_eq!(page_align(p + 1), Some(2 * p));
        assert_eq!(page_align(usize::MAX), None);
    }
}
