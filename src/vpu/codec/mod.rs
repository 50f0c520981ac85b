//! Codec engines run by the VPU firmware.

pub mod avlog;
pub mod fwht;
pub mod h264;
pub mod h264enc;
