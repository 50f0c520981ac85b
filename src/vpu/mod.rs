//! The in-crate VPU: a firmware core on its own thread behind a shared-memory
//! command ring, and the host-side driver implementing the m2m contract.
//!
//! ```text
//!  host (driver/)                           VPU (firmware/)
//!  EmuSession --Command--> [cmd ring] --doorbell--> vpu-fw thread
//!  waiter    <--Response-- [resp ring] <--irq------ sessions, codec engines
//!         frame memory: Region handles through the IOMMU table (iommu.rs)
//! ```
//!
//! "waiter": whichever host thread waits on a session handles the interrupt
//! (there is no interrupt thread, see [`driver`]).
//!
//! The ABI (`protocol.rs`) is versioned and size-asserted; both sides check
//! every value the other wrote. The firmware touches frame memory through
//! `Region::device_read`/`device_write`, so the coherency checker judges it as
//! it would judge DMA (the H.264 encoder's frames lent to libavcodec are the
//! one exception, see [`firmware`]).

pub mod codec;
pub mod driver;
pub mod firmware;
pub mod iommu;
pub mod protocol;
pub mod ring;

pub use driver::{EmuConfig, EmuSession, EmuVpu};
pub use firmware::Faults;
