//! The driver contract: a V4L2 stateful memory-to-memory codec session.
//!
//! This is what the GStreamer elements program against, and what every VPU
//! backend implements (the in-crate VPU in `vpu::driver`; kernel V4L2 nodes
//! in `v4l2`). It keeps V4L2's concepts and vocabulary (see the kernel's
//! `dev-decoder.rst` and `dev-encoder.rst`) and nothing of any backend:
//!
//! * two queues: **OUTPUT** carries what goes into the codec (bitstream for a
//!   decoder, raw frames for an encoder), **CAPTURE** what comes out;
//! * formats are set per queue ([`Session::set_format`], like `VIDIOC_S_FMT`);
//!   the session answers with the format it really uses;
//! * buffers move by value: [`Session::queue`] consumes a [`Buffer`], and
//!   [`Session::wait_event`] hands it back in [`Event::BufferDone`]; a failed
//!   queue returns the buffer inside [`QueueError`];
//! * a decoder announces the stream's format with [`Event::SourceChange`]
//!   (`V4L2_EVENT_SOURCE_CHANGE`); on a change mid-stream the last CAPTURE
//!   buffer of the old format carries [`BufferFlags::LAST`] first;
//! * [`Session::drain`] is `V4L2_DEC_CMD_STOP` / `V4L2_ENC_CMD_STOP`: every
//!   frame queued before it comes out, then one CAPTURE buffer with
//!   [`BufferFlags::LAST`] (maybe empty); [`Session::start`] resumes after it;
//! * [`Session::stream_off`] on a queue is the flush: the device forgets every
//!   buffer of that queue and they all come back, unprocessed.
//!
//! Memory: every buffer is one [`Region`] (fd + mapping + coherency). The
//! session does the cache maintenance a kernel does at `QBUF`: a buffer the CPU
//! wrote is cleaned (`sync_for_device`) when it is queued unless
//! [`BufferFlags::NO_CACHE_CLEAN`] says the CPU never touched it. A CAPTURE
//! buffer comes back still owned by the device; whoever wants to read it on the
//! CPU calls `Region::sync_for_cpu` first (the allocator does this on map), so a
//! frame that only a display imports never costs a cache invalidate.

pub mod blocking;
pub mod controls;
pub mod format;
pub mod layout;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use controls::{BitrateMode, H264Level, H264Profile};
pub use format::{Colorimetry, Format, PixelFormat, PlaneLayout};

use crate::mem::{Coherency, Region};

/// The two queues of a stateful M2M codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// Into the codec: bitstream (decoder) or raw frames (encoder).
    Output,
    /// Out of the codec: raw frames (decoder) or bitstream (encoder).
    Capture,
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueKind::Output => "OUTPUT",
            QueueKind::Capture => "CAPTURE",
        })
    }
}

/// Whether a session decodes or encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Decoder,
    Encoder,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Decoder => "decoder",
            Role::Encoder => "encoder",
        })
    }
}

/// Buffer flags, a subset of `V4L2_BUF_FLAG_*` with the same meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BufferFlags(u32);

impl BufferFlags {
    pub const NONE: BufferFlags = BufferFlags(0);
    /// The frame is a key frame (I-frame).
    pub const KEYFRAME: BufferFlags = BufferFlags(1 << 0);
    /// The frame is a predicted frame.
    pub const PFRAME: BufferFlags = BufferFlags(1 << 1);
    /// The last buffer of a drain or of the format before a source change.
    pub const LAST: BufferFlags = BufferFlags(1 << 2);
    /// The data is corrupt (or the frame could not be coded); see the error detail.
    pub const ERROR: BufferFlags = BufferFlags(1 << 3);
    /// Queue hint: the CPU never wrote this buffer, skip the cache clean.
    pub const NO_CACHE_CLEAN: BufferFlags = BufferFlags(1 << 4);
    /// The buffer came back because its queue was stopped, not processed.
    pub const RETURNED: BufferFlags = BufferFlags(1 << 5);

    pub const fn bits(self) -> u32 {
        self.0
    }
    pub const fn from_bits_truncate(bits: u32) -> BufferFlags {
        BufferFlags(bits & 0x3f)
    }
    pub const fn contains(self, other: BufferFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: BufferFlags) {
        self.0 |= other.0;
    }
    pub fn remove(&mut self, other: BufferFlags) {
        self.0 &= !other.0;
    }
}

impl std::ops::BitOr for BufferFlags {
    type Output = BufferFlags;
    fn bitor(self, rhs: BufferFlags) -> BufferFlags {
        BufferFlags(self.0 | rhs.0)
    }
}

/// One buffer of a queue. Owned by whoever holds it: the client between a
/// dequeue and the next queue, the session in between.
#[derive(Debug)]
pub struct Buffer {
    pub queue: QueueKind,
    /// Index within its queue, as allocated by [`Session::allocate_buffers`].
    pub index: u32,
    /// The memory of the buffer (all planes, laid out per the queue's format).
    pub region: Arc<Region>,
    /// Bytes of valid data (OUTPUT: set by the client; CAPTURE: by the device).
    pub bytesused: usize,
    /// Presentation timestamp in nanoseconds; copied from OUTPUT to CAPTURE.
    pub timestamp: u64,
    pub flags: BufferFlags,
    /// CAPTURE: frame counter set by the device.
    pub sequence: u32,
    /// ERROR buffers: what was wrong, as the device reported it.
    pub error: Option<String>,
}

impl Buffer {
    /// A buffer ready to be queued, with nothing used yet.
    pub fn new(queue: QueueKind, index: u32, region: Arc<Region>) -> Buffer {
        Buffer {
            queue,
            index,
            region,
            bytesused: 0,
            timestamp: 0,
            flags: BufferFlags::NONE,
            sequence: 0,
            error: None,
        }
    }
}

/// How the buffers of a queue get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// The session allocates the memory (`V4L2_MEMORY_MMAP`) with this coherency.
    Allocate(Coherency),
    /// The client brings its own region with every queued buffer
    /// (`V4L2_MEMORY_DMABUF`).
    Import,
}

/// What a decoder found out about the stream (`V4L2_EVENT_SOURCE_CHANGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceChange {
    /// The CAPTURE format the session now uses (read it, do not assume one).
    pub format: Format,
    /// Raw formats the stream can be decoded to, preferred first.
    pub formats: Vec<PixelFormat>,
    /// `V4L2_CID_MIN_BUFFERS_FOR_CAPTURE`.
    pub min_capture_buffers: u32,
}

/// What [`Session::wait_event`] reports.
#[derive(Debug)]
pub enum Event {
    /// A buffer comes back to the client (processed, errored, or returned).
    BufferDone(Buffer),
    /// The stream's format is known or changed (decoder only).
    SourceChange(SourceChange),
}

/// Codec controls, named after their V4L2 counterparts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `V4L2_CID_MPEG_VIDEO_GOP_SIZE`.
    GopSize(u32),
    /// `V4L2_CID_FWHT_I_FRAME_QP` (or the codec's I-frame QP).
    IFrameQp(u32),
    /// `V4L2_CID_FWHT_P_FRAME_QP` (or the codec's P-frame QP).
    PFrameQp(u32),
    /// `V4L2_CID_MPEG_VIDEO_BITRATE`, bits per second.
    Bitrate(u32),
    /// `V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME`: the next frame is a key frame.
    ForceKeyFrame,
    /// `V4L2_CID_MPEG_VIDEO_BITRATE_MODE`.
    BitrateMode(BitrateMode),
    /// `V4L2_CID_MPEG_VIDEO_H264_MIN_QP`.
    MinQp(u32),
    /// `V4L2_CID_MPEG_VIDEO_H264_MAX_QP`.
    MaxQp(u32),
    /// `V4L2_CID_MPEG_VIDEO_H264_PROFILE`.
    H264Profile(H264Profile),
    /// `V4L2_CID_MPEG_VIDEO_H264_LEVEL`; `None` lets the encoder pick the
    /// lowest level the stream fits.
    H264Level(Option<H264Level>),
    /// The OUTPUT frame rate, frames per second as `num/den` (`VIDIOC_S_PARM`
    /// on the OUTPUT queue in V4L2); rate control needs it.
    FrameRate { num: u32, den: u32 },
    /// `true` (the default): the encoder codes each frame as it comes, its
    /// unit out before the next frame is taken; `false`: throughput, the
    /// codec may hold frames (frame threads, as x264's default) and
    /// [`Session::min_buffers`] of OUTPUT says how many (plus one). V4L2 has
    /// no such control: a kernel node refuses it and codes as its driver
    /// does.
    LowLatency(bool),
}

/// Errors of the contract. Messages say what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum M2mError {
    #[error("the device has no {role} for {codec}")]
    Unsupported { role: Role, codec: PixelFormat },
    #[error("invalid format on {queue}: {reason}")]
    InvalidFormat { queue: QueueKind, reason: String },
    #[error("invalid control {control:?}: {reason}")]
    InvalidControl { control: Control, reason: String },
    #[error("{queue} queue: {reason}")]
    InvalidState { queue: QueueKind, reason: String },
    #[error("memory: {0}")]
    Memory(#[from] crate::mem::MemError),
    #[error("the VPU did not answer within {0:?} (watchdog)")]
    Timeout(Duration),
    #[error("VPU firmware fault: {0}")]
    Firmware(String),
    #[error("the VPU session is closed")]
    Closed,
    #[error("VPU setup: {0}")]
    Io(#[from] std::io::Error),
    /// A kernel V4L2 node refused a request: which node, which ioctl, the errno.
    #[error("{0}")]
    Kernel(String),
    /// [`Session::set_named_control`] on a VPU without such a control.
    #[error("control '{name}' {reason}")]
    UnknownControl { name: String, reason: String },
}

/// A failed [`Session::queue`]: the buffer comes back with the reason.
#[derive(Debug, thiserror::Error)]
#[error("cannot queue {} buffer {}: {error}", buffer.queue, buffer.index)]
pub struct QueueError {
    pub buffer: Buffer,
    #[source]
    pub error: M2mError,
}

/// One open codec session (one V4L2 file handle on an M2M node).
///
/// All methods take `&self`: a streaming thread queues while another waits for
/// events. Implementations are internally synchronised and never block longer
/// than their watchdog bound.
pub trait Session: Send + Sync {
    fn role(&self) -> Role;
    /// The coded format of this session (FWHT, H.264 ...).
    fn codec(&self) -> PixelFormat;
    /// Formats the queue can take now (`VIDIOC_ENUM_FMT`). For a decoder's
    /// CAPTURE queue, after a source change: the formats the stream allows.
    fn enum_formats(&self, queue: QueueKind) -> Vec<PixelFormat>;
    /// Sets the queue's format (`VIDIOC_S_FMT`) and returns the one in effect.
    fn set_format(&self, queue: QueueKind, format: &Format) -> Result<Format, M2mError>;
    /// Lays the buffers of a raw `queue` out as `layout` says (its planes'
    /// offsets, strides and rows and its buffer size, for the pixel format
    /// and size [`Session::set_format`] set) instead of the device's own
    /// layout, e.g. GStreamer's default one for a consumer that cannot read
    /// another. Call it after `set_format` (which restores the device's
    /// layout) and before allocating buffers.
    ///
    /// `Ok(None)`: the device lays buffers out itself. That is the default
    /// and what a kernel node answers (V4L2 lets a client ask for a
    /// `bytesperline` at most, not for plane offsets or rows), so the client
    /// keeps the layout `set_format` returned and adapts to it (copies).
    /// `Ok(Some(format))`: the format now in effect, `layout`'s planes and
    /// size. An error: the device could, but not this layout (it lacks rows
    /// or columns the device writes, or planes, or it overflows its size).
    fn set_layout(&self, queue: QueueKind, layout: &Format) -> Result<Option<Format>, M2mError> {
        let _ = (queue, layout);
        Ok(None)
    }
    /// The queue's current format (`VIDIOC_G_FMT`).
    fn format(&self, queue: QueueKind) -> Result<Format, M2mError>;
    /// Sets a codec control (`VIDIOC_S_EXT_CTRLS`); also allowed while streaming.
    fn set_control(&self, control: Control) -> Result<(), M2mError>;
    /// Sets a driver control by the name `v4l2-ctl -l` prints for it
    /// (`video_gop_size`, `fwht_i_frame_qp_value` ...), what the v4l2
    /// elements' `extra-controls` takes. Backends without named controls
    /// (the emulated VPU) refuse every name.
    fn set_named_control(&self, name: &str, value: i64) -> Result<(), M2mError> {
        let _ = value;
        Err(M2mError::UnknownControl {
            name: name.to_owned(),
            reason: "does not exist on this VPU (it takes named controls only on a kernel node)"
                .into(),
        })
    }
    /// `V4L2_CID_MIN_BUFFERS_FOR_OUTPUT` / `..._FOR_CAPTURE`. For an
    /// encoder's OUTPUT: the frames it must have before the first unit comes
    /// out, i.e. 1 + the frames its codec holds back (read it after
    /// `set_format` of OUTPUT and the controls; it may change with them).
    fn min_buffers(&self, queue: QueueKind) -> u32;
    /// `VIDIOC_REQBUFS`: (re)creates `count` buffers on a stopped queue. With
    /// [`Memory::Allocate`] the buffers come back to the client to be queued;
    /// with [`Memory::Import`] the list is empty and the client builds
    /// [`Buffer`]s with indices `0..count` around its own regions.
    fn allocate_buffers(
        &self,
        queue: QueueKind,
        count: u32,
        memory: Memory,
    ) -> Result<Vec<Buffer>, M2mError>;
    /// `VIDIOC_CREATE_BUFS`: adds `count` buffers to a queue, also while it
    /// streams (a decoder whose downstream holds many frames grows its
    /// CAPTURE pool instead of stalling). `memory` must be the queue's. The
    /// new buffers get the next indices and come back to the client.
    fn add_buffers(
        &self,
        queue: QueueKind,
        count: u32,
        memory: Memory,
    ) -> Result<Vec<Buffer>, M2mError>;
    /// `VIDIOC_STREAMON`.
    fn stream_on(&self, queue: QueueKind) -> Result<(), M2mError>;
    /// `VIDIOC_STREAMOFF`: the queue stops and every buffer it held comes back
    /// (flagged [`BufferFlags::RETURNED`]) in the returned list.
    fn stream_off(&self, queue: QueueKind) -> Result<Vec<Buffer>, M2mError>;
    /// `VIDIOC_QBUF`. On failure the buffer comes back inside the error (it
    /// moves by value, as in v4l2r); that path is cold, so the large error
    /// type costs nothing where it matters.
    #[allow(clippy::result_large_err)]
    fn queue(&self, buffer: Buffer) -> Result<(), QueueError>;
    /// Waits up to `timeout` for the next event. `Ok(None)`: nothing happened
    /// and nothing is overdue. A device that holds work and stays silent past
    /// the watchdog bound gives [`M2mError::Timeout`].
    fn wait_event(&self, timeout: Duration) -> Result<Option<Event>, M2mError>;
    /// `V4L2_DEC_CMD_STOP` / `V4L2_ENC_CMD_STOP`: drain.
    fn drain(&self) -> Result<(), M2mError>;
    /// `V4L2_DEC_CMD_START` / `V4L2_ENC_CMD_START`: resume after a drain.
    /// CAPTURE buffers a driver completed after its LAST buffer (a kernel
    /// race, see `v4l2::KernelSession`) come out as `BufferDone` events
    /// right after this returns: they still belong to the drain.
    fn start(&self) -> Result<(), M2mError>;
}

/// Where a VPU lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// The in-crate emulated VPU.
    Emulated,
    /// A kernel V4L2 M2M node.
    Kernel(std::path::PathBuf),
}

/// What one VPU offers.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub kind: DeviceKind,
    /// (role, coded format) pairs the device supports.
    pub codecs: Vec<(Role, PixelFormat)>,
}

/// A VPU that sessions can be opened on.
pub trait Device: Send + Sync {
    fn info(&self) -> DeviceInfo;
    /// Opens a session (`open()` of the node plus choosing the coded format).
    fn open(&self, role: Role, codec: PixelFormat) -> Result<Box<dyn Session>, M2mError>;
}
