//! rsvpu: GStreamer VPU codec elements driving a VPU through the V4L2 stateful
//! memory-to-memory codec model, with zero-copy DMABuf/fd memory and explicit
//! cache maintenance.
//!
//! Layers (imports point down only): `plugins/` (GStreamer elements; the only
//! gstreamer code besides this file) -> [`m2m`] (the driver contract) ->
//! [`vpu`] (the in-crate VPU) -> [`mem`] (regions, ownership, coherency checker)
//! -> [`sys`] (the only raw-syscall code).
#![deny(unsafe_code)]

pub mod m2m;
pub mod mem;
pub mod sys;
pub mod vpu;

#[path = "../plugins/common/mod.rs"]
mod common;
#[path = "../plugins/typefind.rs"]
mod typefind;

#[path = "../plugins/allocator/mod.rs"]
pub mod allocator;

#[path = "../plugins/decoder/mod.rs"]
mod decoder;
#[path = "../plugins/vpufwhtdec/mod.rs"]
mod vpufwhtdec;
#[path = "../plugins/vpufwhtenc/mod.rs"]
mod vpufwhtenc;
#[path = "../plugins/vpuh264dec/mod.rs"]
mod vpuh264dec;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // Before anything else, so that whatever registration logs is kept.
    common::log_bridge::install();
    typefind::register(plugin)?;
    vpufwhtdec::register(plugin)?;
    vpuh264dec::register(plugin)?;
    vpufwhtenc::register(plugin)?;
    Ok(())
}

/// The process-wide emulated VPU the elements use with `device=auto|emu`
/// (booted on first use). For tests and tools: fault injection
/// (`faults().set_hang(..)`) and the coherency checker's counters. The VPU
/// is shared by every element of the process, so a fault injected here hits
/// them all.
pub fn emulated_vpu() -> Result<vpu::EmuVpu, m2m::M2mError> {
    common::device::emulated()
}

gst::plugin_define!(
    rsvpu,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    // No public home yet: GStreamer's own default for an unknown origin.
    "Unknown package origin",
    env!("BUILD_REL_DATE")
);
