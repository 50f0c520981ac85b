//! Code shared by the rsvpu elements: device selection, the `log` bridge and the tables that
//! translate between the driver contract ([`crate::m2m`]) and GStreamer
//! (pixel formats, caps, video info, colorimetry).
//!
//! Everything here is crate-private plumbing; the elements (`vpufwhtdec`,
//! `vpufwhtenc`, `vpuh264enc`) are its users.

pub(crate) mod device;
// Part of the format tables is used only by the tests so far; the
// expectation fails (and must go) once they are all used.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "used by vpufwhtdec/vpufwhtenc, which land next")
)]
pub(crate) mod formats;
pub(crate) mod log_bridge;
