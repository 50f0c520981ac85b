//! The kernel backend: the m2m contract over a kernel V4L2 stateful codec
//! node (`/dev/videoN`), through v4l2r's ioctl wrappers.
//!
//! # Design
//!
//! v4l2r's high-level `device::queue` API encodes the queue life cycle in
//! typestates; the contract moves buffers by value between threads and
//! changes queue state from any of them, so this backend uses the one-ioctl
//! functions of `v4l2r::ioctl` instead and keeps its own per-queue book:
//! which indices the kernel holds, with which memory.
//!
//! * [`KernelDevice`] is one node: `VIDIOC_QUERYCAP` (must be an M2M node) and
//!   the coded formats of its queues (`VIDIOC_ENUM_FMT`): a coded format on
//!   OUTPUT makes it a decoder of that codec, on CAPTURE an encoder.
//! * [`KernelSession`] is one open file handle on it. Formats come from
//!   `VIDIOC_ENUM_FMT` / `VIDIOC_ENUM_FRAMESIZES`, are set with `VIDIOC_S_FMT`
//!   (plus `VIDIOC_S_SELECTION` crop for an encoder's visible size) and read
//!   back with `VIDIOC_G_FMT` / `VIDIOC_G_SELECTION`; the single- and the
//!   multi-planar API are both spoken (with one memory plane per buffer, the
//!   contract's one region per buffer).
//! * Memory: [`Memory::Allocate`](crate::m2m::Memory) is `V4L2_MEMORY_MMAP`;
//!   every buffer is exported once with `VIDIOC_EXPBUF` and mapped as a
//!   dma-buf [`Region`](crate::mem::Region), so the elements hand the
//!   driver's own memory downstream. Cacheable regions ask for
//!   `V4L2_MEMORY_FLAG_NON_COHERENT` when the queue reports
//!   `V4L2_BUF_CAP_SUPPORTS_MMAP_CACHE_HINTS`; their CPU access is
//!   bracketed by `DMA_BUF_IOCTL_SYNC` (the region does it), and QBUF carries
//!   `V4L2_BUF_FLAG_NO_CACHE_CLEAN` when the client did not write the
//!   buffer and `V4L2_BUF_FLAG_NO_CACHE_INVALIDATE` on OUTPUT buffers (the
//!   device never writes them). [`Memory::Import`](crate::m2m::Memory) is
//!   `V4L2_MEMORY_DMABUF` with the region's fd.
//! * Events: [`KernelSession::wait_event`](crate::m2m::Session::wait_event)
//!   polls the node (no thread of its own): `POLLPRI` -> `VIDIOC_DQEVENT`
//!   (`V4L2_EVENT_SOURCE_CHANGE` reads the driver's CAPTURE format back),
//!   `POLLIN`/`POLLOUT` -> non-blocking `VIDIOC_DQBUF`. When nothing is
//!   queued the kernel answers `POLLERR`; the wait then sleeps on a condition
//!   variable that queueing wakes, so there is no busy loop. A device that
//!   holds work on both queues and completes nothing for the watchdog bound
//!   is [`M2mError::Timeout`](crate::m2m::M2mError).
//! * Timestamps are opaque 64-bit values carried from OUTPUT to CAPTURE in
//!   the `timeval` (seconds = value / 10^6, microseconds = value % 10^6), so
//!   every value up to 2^63 / 1000 comes back exactly.
//! * Drain is `V4L2_DEC_CMD_STOP` / `V4L2_ENC_CMD_STOP`; the CAPTURE buffer
//!   with `V4L2_BUF_FLAG_LAST` ends it (`EPIPE` afterwards is expected, not
//!   an error); `start` is `V4L2_DEC_CMD_START` / `V4L2_ENC_CMD_START`.
//!
//! * [`discovery`] finds the stateful codec nodes of the machine (once per
//!   process) with the coded and raw formats each offers; `device=auto` in
//!   the elements and the device provider build on it.
//!
//! gst-free, and free of `unsafe`: union reads and `poll(2)` are in `sys`.

mod controls;
mod device;
pub mod discovery;
mod format;
mod session;

pub use controls::{ControlInfo, normalise_control_name};
pub use device::KernelDevice;
pub use session::KernelSession;
