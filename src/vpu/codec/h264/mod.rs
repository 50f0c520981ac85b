//! H.264 for the VPU's firmware: Annex-B parsing of what the stateful
//! decoder needs before decoding ([`nal`], [`sps`]) and the decoding core
//! ([`decoder`], libavcodec).
//!
//! # Why libavcodec
//!
//! Measured before choosing (`tools/h264-candidates`; full table in the
//! README, "H.264: choosing the codec library"): x264enc streams, 60 frames
//! at 1280x720 and 1920x1080, every frame compared with `avdec_h264`'s.
//! libavcodec (Debian's FFmpeg 5.1 through `ffmpeg-next`) is byte-identical
//! on Constrained Baseline, Main and High, since it is the library
//! `avdec_h264` wraps, at 3-10 ms CPU per frame. Cisco's openh264 2.7.0 (the
//! `openh264` crate, built with nasm) is identical on Constrained Baseline
//! only: on Main and High it reports decode errors from the first B-frame
//! (frame 6) and outputs 14 of 60 frames, at 4-19 ms CPU per frame. The bar
//! is byte-identical output for all three profiles, so libavcodec it is.

pub mod decoder;
pub mod nal;
pub mod sps;

pub use decoder::{H264Decoder, H264Error, Picture};
pub use sps::Sps;
