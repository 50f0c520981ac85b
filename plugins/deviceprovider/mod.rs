//! `vpudeviceprovider`: lists the VPUs for `GstDeviceMonitor` /
//! `gst-device-monitor-1.0`.
//!
//! One [`VpuDevice`] per (VPU, role, coded format): every stateful kernel
//! codec node that [`crate::v4l2::discovery`] found, once for each coded
//! format it offers, and the emulated VPU once for each (role, codec) its
//! firmware reports. One entry per codec rather than per VPU because a
//! GstDevice makes one element, and our elements are per role and codec
//! (`vpufwhtdec`, `vpufwhtenc`): each entry's `create_element` is then
//! unambiguous, and its caps say exactly what that element takes and gives.
//!
//! Device classes are `Video/Codec/Decoder` and `Video/Codec/Encoder`, so
//! `gst-device-monitor-1.0 Video/Codec` lists every VPU and
//! `gst-device-monitor-1.0 Codec/Decoder:video/x-fwht` the FWHT decoders.
//! Caps: the coded format (with the frame sizes a kernel node reports) and
//! the raw formats the codec takes or gives. Properties: `device.api`
//! (`v4l2` or `emulated`), `device.path`, `v4l2.device.driver`,
//! `v4l2.device.card`, `v4l2.device.bus_info` (kernel nodes, named as
//! GStreamer's own v4l2 provider names them), `vpu.role`, `vpu.codec` (the
//! V4L2 FourCC), `vpu.device` (the value our elements' `device` property
//! takes) and `vpu.element` (the element factory, when this build has one).
//!
//! The list is made when the provider starts, from discovery's once per
//! process scan: a node that appears later is seen by the next process.

use gst::glib;
use gst::prelude::*;

pub(crate) mod caps;
mod imp;

glib::wrapper! {
    pub struct VpuDeviceProvider(ObjectSubclass<imp::VpuDeviceProvider>)
        @extends gst::DeviceProvider, gst::Object;
}

glib::wrapper! {
    pub struct VpuDevice(ObjectSubclass<imp::VpuDevice>)
        @extends gst::Device, gst::Object;
}

/// Rank `PRIMARY`: the only provider of VPU codec devices; nothing to hide.
pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::DeviceProvider::register(
        Some(plugin),
        "vpudeviceprovider",
        gst::Rank::PRIMARY,
        VpuDeviceProvider::static_type(),
    )
}
