//! The driver contract: a stateful V4L2-style codec session (OUTPUT/CAPTURE
//! queues, formats, SOURCE_CHANGE, drain with LAST, flush, buffer errors).
//! gst-free. Implemented by the in-crate VPU (`vpu::driver`) and, later, the
//! kernel backend.

pub mod format;
pub mod layout;

pub use format::{Colorimetry, Format, PixelFormat, PlaneLayout};
