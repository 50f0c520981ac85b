//! The only raw-syscall code in the crate: memfd, mmap, eventfd,
//! `DMA_BUF_IOCTL_SYNC`, udmabuf and dma-heap, and the union reads and
//! `poll(2)` of the kernel V4L2 backend (its ioctls are v4l2r's), and
//! FFmpeg's log callback and frames lent to libavcodec without a copy
//! (`avframe`). Safe RAII types out.
//!
//! # Contract
//!
//! - Every function here is safe to call. All `unsafe` of the crate (besides
//!   the GStreamer allocator) lives in this module; each block is a single
//!   syscall or pointer operation with a `// SAFETY:` comment.
//! - Raw pointers never leave this module: memory is exposed as slices bound to
//!   a borrow of a [`Mapping`], or through copy/atomic accessors of a
//!   [`SharedMapping`]. Mappings unmap on `Drop`; fds are [`std::os::fd::OwnedFd`].
//! - Errors are `std::io::Error` (the errno, plus a message where the syscall's
//!   own errno would be misleading). Nothing here panics on anything the OS can
//!   influence.
//! - Which kind of dma-buf memory exists on the machine is decided once, in
//!   [`DmaBackend::probe`]; upper layers never open device nodes themselves.
//!
//! # Aliasing model of mapped memory
//!
//! A mapping is process-shared memory: besides Rust code it may be read or
//! written by a device (real DMA), by another mapping of the same fd, or by
//! another process. Rust's borrow rules only cover accesses through the same
//! `Mapping` value, so the crate splits the two ways of touching such memory
//! into two types:
//!
//! - [`Mapping`]: plain byte slices, like a `Box<[u8]>`: `as_slice(&self)`,
//!   `as_mut_slice(&mut self)`. Within the process the borrow checker guarantees
//!   exclusivity. Against *other* agents (device, other mappings) exclusivity is
//!   the job of `mem`'s ownership protocol: a region's bytes are only sliced
//!   while its lock is held and the checker knows who owns them.
//! - [`SharedMapping`]: for memory two threads use concurrently (command and
//!   response rings). It never creates a reference to the bytes: `read_at` /
//!   `write_at` copy with relaxed byte-sized atomic accesses and `atomic_u32`
//!   hands out an `&AtomicU32`, so even a misbehaving peer cannot cause a data
//!   race in Rust terms, only garbage values that the ring code must validate.
//!   Ordering comes from the ring indices (Release store of the producer index
//!   after writing the payload, Acquire load before reading it). Do not access
//!   the same bytes both through `atomic_u32` and through `read_at`/`write_at`
//!   concurrently (mixed-size atomics).
//!
//! A [`Mapping`] turns into a [`SharedMapping`] with [`Mapping::into_shared`];
//! the reverse is not offered, so slices and shared accessors never coexist.
#![allow(unsafe_code)]

mod avframe;
mod avlog;
mod backend;
mod dmabuf;
mod eventfd;
mod mapping;
mod memfd;
mod v4l2;

pub use avframe::{FrameMapping, Lease, LendError, LentFrame, PlaneView};
pub use avlog::{AvLogSink, route_av_log};
pub use backend::{BACKEND_ENV, DmaBackend, UnknownBackend};
pub use dmabuf::{
    DmaBufSync, SyncAccess, dma_buf_sync, dma_heap_alloc, is_dma_buf, udmabuf_from_memfd,
};
pub use eventfd::EventFd;
pub use mapping::{Mapping, OutOfRange, SharedMapping};
pub use memfd::{fd_size, memfd_sealed, page_align, page_size};
pub use v4l2::{NodeReady, PixFormat, PlanePixFormat, poll_node};
