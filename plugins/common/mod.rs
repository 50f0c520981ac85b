//! Code shared by the rsvpu elements: the `log` bridge and the tables that
//! translate between the driver contract ([`crate::m2m`]) and GStreamer
//! (pixel formats, caps, video info, colorimetry).
//!
//! Everything here is crate-private plumbing; the elements (`vpufwhtdec`,
//! `vpufwhtenc`) are its users.

pub(crate) mod formats;
pub(crate) mod log_bridge;
