//! The kernel backend: real V4L2 stateful M2M codec nodes, driven through
//! v4l2r. gst-free.
//!
//! [`discovery`] finds the stateful codec nodes of the machine (once per
//! process) with the coded and raw formats each offers; `device=auto` in the
//! elements and the device provider build on it.

pub mod discovery;
