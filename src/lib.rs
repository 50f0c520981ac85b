//! rsvpu: GStreamer VPU codec elements driving a VPU through the V4L2 stateful
//! memory-to-memory codec model, with zero-copy DMABuf/fd memory and explicit
//! cache maintenance.
//!
//! Layers (imports point down only): `plugins/` (GStreamer elements; the only
//! gstreamer code besides this file) -> [`m2m`] (the driver contract) ->
//! [`vpu`] (the in-crate VPU) -> [`mem`] (regions, ownership, coherency checker)
//! -> [`sys`] (the only raw-syscall code). [`v4l2`] is the kernel backend
//! (sessions on kernel V4L2 codec nodes, and their discovery).
#![deny(unsafe_code)]

pub mod m2m;
pub mod mem;
pub mod sys;
pub mod v4l2;
pub mod vpu;

#[path = "../plugins/common/mod.rs"]
mod common;
#[path = "../plugins/typefind.rs"]
mod typefind;

#[path = "../plugins/allocator/mod.rs"]
pub mod allocator;

#[path = "../plugins/decoder/mod.rs"]
mod decoder;
#[path = "../plugins/deviceprovider/mod.rs"]
mod deviceprovider;
#[path = "../plugins/encoder/mod.rs"]
mod encoder;

#[path = "../plugins/vpufwhtdec/mod.rs"]
mod vpufwhtdec;
#[path = "../plugins/vpufwhtenc/mod.rs"]
mod vpufwhtenc;
#[path = "../plugins/vpuh264dec/mod.rs"]
mod vpuh264dec;
#[path = "../plugins/vpuh264enc/mod.rs"]
mod vpuh264enc;
#[path = "../plugins/vpukerneldec/mod.rs"]
mod vpukerneldec;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // Before anything else, so that whatever registration logs is kept.
    common::log_bridge::install();
    typefind::register(plugin)?;
    vpufwhtdec::register(plugin)?;
    vpuh264dec::register(plugin)?;
    vpufwhtenc::register(plugin)?;
    vpuh264enc::register(plugin)?;
    // vpuh265dec, vpuvp8dec, vpuvp9dec: only where a kernel node decodes them.
    vpukerneldec::register(plugin)?;
    deviceprovider::register(plugin)?;
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

/// The kernel node `device=auto` tries first for a `role` session of
/// `codec` (per [`v4l2::discovery::nodes`]), or `None` when it goes straight
/// to the emulated VPU. For tests and tools; an element whose chosen node
/// fails to open still runs, on the emulated VPU.
pub fn auto_device(role: m2m::Role, codec: m2m::PixelFormat) -> Option<std::path::PathBuf> {
    match common::device::resolve_auto(v4l2::discovery::nodes(), role, codec) {
        common::device::DeviceChoice::Path(p) => Some(p),
        _ => None,
    }
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
