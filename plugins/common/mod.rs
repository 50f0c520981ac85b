//! Code shared by the rsvpu elements: device selection, the `log` bridge and the tables that
//! translate between the driver contract ([`crate::m2m`]) and GStreamer
//! (pixel formats, caps, video info, colorimetry).
//!
//! Everything here is crate-private plumbing; the elements (`vpufwhtdec`,
//! `vpufwhtenc`, `vpuh264enc`) are its users.

pub(crate) mod device;
pub(crate) mod events;
pub(crate) mod formats;
pub(crate) mod log_bridge;
pub(crate) mod stats;
