//! Choice of the dma-buf allocator: dma-heap, udmabuf, or plain memfd.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use super::{dmabuf, memfd};

/// Environment variable that forces a backend (`memfd`, `udmabuf`, `dma-heap`).
pub const BACKEND_ENV: &str = "GST_VPU_DMA_BACKEND";
const DMA_HEAP_SYSTEM: &str = "/dev/dma_heap/system";
const UDMABUF: &str = "/dev/udmabuf";

/// Where region memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmaBackend {
    /// `/dev/dma_heap/system`: real dma-bufs from the kernel's system heap.
    DmaHeap,
    /// A sealed memfd wrapped into a dma-buf through `/dev/udmabuf`.
    Udmabuf,
    /// A sealed memfd: mappable and shareable, but not a dma-buf (no
    /// `DMA_BUF_IOCTL_SYNC`, not importable by kernel drivers).
    Memfd,
}

impl DmaBackend {
    /// The backend for this process, decided once and cached.
    ///
    /// `GST_VPU_DMA_BACKEND=memfd|udmabuf|dma-heap` forces one (for tests; an
    /// unavailable forced backend makes allocations fail rather than silently
    /// fall back). Otherwise the first that works of dma-heap, udmabuf, memfd:
    /// "works" means a one-page test allocation succeeded, so missing devices
    /// and missing permissions both fall through.
    pub fn probe() -> DmaBackend {
        static PROBED: OnceLock<DmaBackend> = OnceLock::new();
        *PROBED.get_or_init(|| {
            let forced = std::env::var(BACKEND_ENV).ok();
            let backend = detect(
                forced.as_deref(),
                Path::new(DMA_HEAP_SYSTEM),
                Path::new(UDMABUF),
            );
            log::info!("dma-buf backend: {backend}");
            backend
        })
    }

    /// Allocates `size` bytes rounded up to whole pages.
    pub fn allocate(self, name: &str, size: usize) -> io::Result<OwnedFd> {
        self.allocate_at(name, size, Path::new(DMA_HEAP_SYSTEM), Path::new(UDMABUF))
    }

    fn allocate_at(
        self,
        name: &str,
        size: usize,
        heap: &Path,
        udmabuf: &Path,
    ) -> io::Result<OwnedFd> {
        let aligned = match memfd::page_align(size) {
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot allocate 0 bytes",
                ));
            }
            Some(a) => a,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("size {size} overflows when rounded up to pages"),
                ));
            }
        };
        match self {
            DmaBackend::DmaHeap => dmabuf::dma_heap_alloc(heap, aligned),
            DmaBackend::Udmabuf => {
                let mfd = memfd::memfd_sealed(name, aligned)?;
                // The udmabuf holds its own references to the pages; the memfd
                // can be closed afterwards.
                dmabuf::udmabuf_from_memfd_at(udmabuf, mfd.as_fd(), 0, aligned as u64)
            }
            DmaBackend::Memfd => memfd::memfd_sealed(name, aligned),
        }
    }

    /// Whether allocating from this backend works on this machine.
    pub fn is_available(self) -> bool {
        self.works_at(Path::new(DMA_HEAP_SYSTEM), Path::new(UDMABUF))
    }

    fn works_at(self, heap: &Path, udmabuf: &Path) -> bool {
        match self.allocate_at("gst-vpu-probe", 1, heap, udmabuf) {
            Ok(_) => true,
            Err(e) => {
                log::debug!("dma-buf backend {self} unavailable: {e}");
                false
            }
        }
    }

    /// Whether allocations return real dma-bufs.
    pub fn is_dma_buf(self) -> bool {
        !matches!(self, DmaBackend::Memfd)
    }
}

/// The probing logic behind [`DmaBackend::probe`], with injectable inputs.
fn detect(forced: Option<&str>, heap: &Path, udmabuf: &Path) -> DmaBackend {
    if let Some(s) = forced {
        match s.parse::<DmaBackend>() {
            Ok(b) => return b,
            Err(e) => log::warn!("ignoring {BACKEND_ENV}: {e}"),
        }
    }
    for b in [DmaBackend::DmaHeap, DmaBackend::Udmabuf] {
        if b.works_at(heap, udmabuf) {
            return b;
        }
    }
    DmaBackend::Memfd
}

impl fmt::Display for DmaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DmaBackend::DmaHeap => "dma-heap",
            DmaBackend::Udmabuf => "udmabuf",
            DmaBackend::Memfd => "memfd",
        })
    }
}

/// A backend name that is none of `memfd`, `udmabuf`, `dma-heap`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dma-buf backend {0:?}, expected memfd, udmabuf or dma-heap")]
pub struct UnknownBackend(pub String);

impl FromStr for DmaBackend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "memfd" => Ok(DmaBackend::Memfd),
            "udmabuf" => Ok(DmaBackend::Udmabuf),
            "dma-heap" | "dmaheap" | "dma_heap" => Ok(DmaBackend::DmaHeap),
            other => Err(UnknownBackend(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{fd_size, is_dma_buf, page_size};

    const MISSING: &str = "/nonexistent/gst-vpu-test-device";

    #[test]
    fn falls_back_to_memfd_without_devices() {
        let m = Path::new(MISSING);
        assert_eq!(detect(None, m, m), DmaBackend::Memfd);
        assert_eq!(detect(Some("bogus"), m, m), DmaBackend::Memfd);
    }

    #[test]
    fn env_override_is_honoured_even_if_unavailable() {
        let m = Path::new(MISSING);
        assert_eq!(detect(Some("udmabuf"), m, m), DmaBackend::Udmabuf);
        assert_eq!(detect(Some("dma-heap"), m, m), DmaBackend::DmaHeap);
        assert_eq!(detect(Some("memfd"), m, m), DmaBackend::Memfd);
        let e = DmaBackend::Udmabuf.allocate_at("x", 10, m, m).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn probe_matches_this_machine() {
        let b = DmaBackend::probe();
        eprintln!("probed dma-buf backend: {b}");
        assert_eq!(b, DmaBackend::probe(), "cached");
        if std::env::var_os(BACKEND_ENV).is_none() {
            let heap = Path::new(DMA_HEAP_SYSTEM).exists();
            let udma = Path::new(UDMABUF).exists();
            if !heap && !udma {
                assert_eq!(b, DmaBackend::Memfd);
            }
        }
    }

    #[test]
    fn memfd_allocation_is_page_aligned() {
        let fd = DmaBackend::Memfd.allocate("test-alloc", 1).unwrap();
        assert_eq!(fd_size(fd.as_fd()).unwrap(), page_size() as u64);
        assert!(!is_dma_buf(fd.as_fd()));
        assert!(DmaBackend::Memfd.allocate("test-alloc", 0).is_err());
        assert!(
            DmaBackend::Memfd
                .allocate("test-alloc", usize::MAX)
                .is_err()
        );
    }

    /// Allocates from every dma-buf backend that exists here; loud when a
    /// device is missing. Run in the VM to exercise the real thing.
    #[test]
    #[ignore = "needs /dev/dma_heap or /dev/udmabuf: run in the VM"]
    fn real_dma_buf_backends_allocate_dma_bufs() {
        let mut tested = 0;
        for b in [DmaBackend::DmaHeap, DmaBackend::Udmabuf] {
            if !b.is_available() {
                eprintln!("!!! dma-buf backend {b} NOT AVAILABLE here: not tested");
                continue;
            }
            let fd = b.allocate("test-real", 5000).unwrap();
            assert!(is_dma_buf(fd.as_fd()), "{b} must return a dma-buf");
            assert_eq!(
                fd_size(fd.as_fd()).unwrap(),
                crate::sys::page_align(5000).unwrap() as u64
            );
            tested += 1;
        }
        assert!(tested > 0, "no dma-buf backend available");
    }
}
