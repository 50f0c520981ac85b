//! The implementation every VPU encoder element shares (`vpufwhtenc`,
//! `vpuh264enc`): a GstVideoEncoder driving a V4L2 stateful M2M encoder
//! session ([`crate::m2m`]), parametrised by a per-codec descriptor, the
//! [`Codec`] trait (element name, caps, properties, the controls they set,
//! how the output caps are negotiated).
//!
//! Files: `base.rs` is the element logic ([`EncoderBase`]: properties common
//! to all, caps, negotiation, the frame flow) and the [`encoder_element!`]
//! macro that makes a codec's imp struct a GstVideoEncoder subclass; `engine.rs`
//! is the VPU side (queues, buffers, the `vpu-capture` event thread);
//! `pool.rs` is the buffer pool of VPU memory proposed upstream, so producers
//! write where the VPU reads; `copy.rs` lays a GStreamer frame out in the
//! contract's layout when upstream memory cannot be queued as is.
//!
//! Controls set while streaming apply from the next frame `handle_frame`
//! receives: the streaming thread lets the VPU finish the frames before and
//! then sets them (see `base.rs`).
//!
//! Threading: the streaming thread queues raw frames and is the only caller of
//! `finish_frame`; `vpu-capture` waits on the session's events, returns done
//! OUTPUT buffers, copies coded frames out of their CAPTURE buffers and
//! requeues those at once. See `base.rs` for why `finish_frame` stays on the
//! streaming thread.

mod base;
mod copy;
mod engine;
mod pool;

pub(crate) use base::{Codec, EncoderBase, ExtraControl, encoder_element};
