//! H.264 for the VPU's firmware: Annex-B parsing of what the stateful
//! decoder needs before decoding ([`nal`], [`sps`]) and the decoding core
//! ([`decoder`], libavcodec).
//!
//! # Why libavcodec
//!
//! Measured before choosing (x264enc streams, 60 frames of a moving SMPTE
//! pattern at 4 Mbit/s, every frame compared with `avdec_h264`'s; codec calls
//! only, best of 3, this 2-core machine; the tool and the full table are in
//! the README, "H.264 decoder: choosing the codec library"):
//! libavcodec is byte-identical on Constrained Baseline, Main and High at
//! 1280x720 and 1920x1080, since it is the library `avdec_h264` wraps;
//! Cisco's openh264 (the `openh264` crate, built from source with nasm)
//! matches on Constrained Baseline only and drifts on Main and High
//! (B-frames/CABAC/weighted prediction differ), and is slower. The bar is
//! byte-identical output for all three profiles, so libavcodec it is.

pub mod decoder;
pub mod nal;
pub mod sps;

pub use decoder::{H264Decoder, H264Error, Picture};
pub use sps::Sps;
