//! Memory model: regions (fd + mapping + size + coherency), CPU/device
//! ownership, sync operations, the coherency checker and simple pools.
//! gst-free; the elements, the emu VPU driver and its firmware all use this.
//!
//! # Contract
//!
//! - A [`Region`] is one fd-backed buffer (dma-buf or memfd), mapped once,
//!   shared as `Arc<Region>`. Its bytes are reached only through guards
//!   ([`Region::cpu_read`], [`Region::cpu_write`] for the CPU,
//!   [`Region::device_read`], [`Region::device_write`] for the (emulated) DMA
//!   engine) that hold the region lock, or, for coherent rings, through
//!   [`Region::shared`] (atomics and copies only, see `sys`).
//! - [`Coherency::Cacheable`] regions have an owner. `sync_for_device` (clean)
//!   hands them to the device, `sync_for_cpu` (invalidate) back to the CPU;
//!   both are counted in [`SyncStats`]. Access by the side that does not own
//!   the region is a [`Violation`] recorded by the shared [`Checker`], naming
//!   buffer, direction and operation; access proceeds (or panics with
//!   `panic_on_violation`). On real dma-bufs CPU guards bracket access with
//!   `DMA_BUF_IOCTL_SYNC` START/END, as kernels require.
//! - [`Coherency::Coherent`] regions have no owner: syncs are no-ops, never
//!   counted, never reported.
//! - With `CheckerConfig::simulate_cache`, cacheable regions get a 64-byte-line
//!   write-back cache model: CPU guards see the cache, device guards see
//!   memory, so a missed sync yields stale data in whole cache lines, as on a
//!   non-coherent SoC. Without it, CPU guards touch the mapping directly (no
//!   per-access allocation; a lock and, for dma-bufs, two ioctls).
//! - Nothing here uses `unsafe`; nothing panics on what the OS, input or the
//!   firmware can influence (failed dma-buf sync ioctls are logged and
//!   counted). Panics are reserved for API misuse (`panic_on_violation`,
//!   guards on a region switched to shared access).

mod cache;
mod checker;
mod error;
pub mod pool;
mod region;

pub use cache::CACHE_LINE;
pub use checker::{Checker, CheckerConfig, Direction, SyncStats, Violation};
pub use error::MemError;
pub use pool::Pool;
pub use region::{
    Coherency, CpuRead, CpuWrite, DeviceRead, DeviceWrite, MemoryKind, Owner, Region,
};
