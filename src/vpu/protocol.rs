//! The shared-memory ABI between the host driver and the VPU firmware.
//!
//! One coherent region holds a [`SharedHeader`], then the command ring
//! (host -> VPU), then the response ring (VPU -> host). Every ring slot is one
//! [`Message`] of [`SLOT_SIZE`] bytes. Frame memory never travels through the
//! rings: a buffer is named by the handle of a region the host mapped into the
//! VPU's address space (the emulated IOMMU, see `vpu::iommu`).
//!
//! Everything here is `#[repr(C)]`, plain old data and size-asserted, so the
//! layout is the contract. [`Command`] and [`Response`] are the typed views;
//! decoding a [`Message`] validates every field, because whatever the other
//! side wrote is untrusted.

use bytemuck::{Pod, Zeroable};

use crate::m2m::{BufferFlags, Colorimetry, QueueKind, Role};

/// `"VPU1"` in the header's first word.
pub const ABI_MAGIC: u32 = u32::from_le_bytes(*b"VPU1");
/// Bumped on any incompatible change of this file.
///
/// - 1: the first version.
/// - 2: [`Command::SetLayout`] (the host chooses a raw queue's plane layout).
/// - 3: [`Response::MinOutputBuffers`] and the [`ctrl::LOW_LATENCY`] control.
pub const ABI_VERSION: u32 = 3;
/// Bytes per ring slot.
pub const SLOT_SIZE: usize = 128;
/// Bytes of free text a message can carry (error details).
pub const TEXT_SIZE: usize = 64;
/// Argument words per message.
pub const ARGS: usize = 12;

/// The first bytes of the control region.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct SharedHeader {
    pub magic: u32,
    pub version: u32,
    /// Byte offset of the command ring (its [`RingHeader`]).
    pub cmd_ring_offset: u32,
    pub cmd_ring_slots: u32,
    /// Byte offset of the response ring.
    pub resp_ring_offset: u32,
    pub resp_ring_slots: u32,
    /// Written by the firmware: [`FW_STATE_RUNNING`] once it serves commands.
    pub fw_state: u32,
    /// Written by the firmware: incremented on every pass of its main loop.
    pub heartbeat: u32,
    pub reserved: [u32; 8],
}
const _: () = assert!(std::mem::size_of::<SharedHeader>() == 64);

/// Byte offsets of the fields both sides poll with atomics.
pub const FW_STATE_OFFSET: usize = 24;
pub const HEARTBEAT_OFFSET: usize = 28;
pub const FW_STATE_BOOTING: u32 = 0;
pub const FW_STATE_RUNNING: u32 = 1;
pub const FW_STATE_STOPPED: u32 = 2;

/// The head of each ring: the producer's and the consumer's free-running
/// indices, each on its own cache line.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RingHeader {
    /// Next slot the producer writes (free running, wraps at `u32::MAX`).
    pub head: u32,
    pub pad0: [u32; 15],
    /// Next slot the consumer reads.
    pub tail: u32,
    pub pad1: [u32; 15],
}
const _: () = assert!(std::mem::size_of::<RingHeader>() == 128);
pub const RING_HEAD_OFFSET: usize = 0;
pub const RING_TAIL_OFFSET: usize = 64;

/// One ring slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Message {
    pub opcode: u32,
    /// Session the message belongs to (0: none).
    pub session: u32,
    /// Command sequence number; a response that acknowledges a command echoes it.
    pub seq: u32,
    /// Bytes of `text` in use.
    pub text_len: u32,
    pub args: [u32; ARGS],
    pub text: [u8; TEXT_SIZE],
}
const _: () = assert!(std::mem::size_of::<Message>() == SLOT_SIZE);

/// Frame size a decoder's OUTPUT (bitstream) buffers are sized for when the
/// host sets a coded format without a size.
pub const DEFAULT_CODED_SIZE: (u32, u32) = (1920, 1088);

/// Bytes a control region needs for rings of these sizes.
pub const fn control_region_size(cmd_slots: u32, resp_slots: u32) -> usize {
    64 + 2 * std::mem::size_of::<RingHeader>()
        + (cmd_slots as usize + resp_slots as usize) * SLOT_SIZE
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u32),
    #[error("field {field} holds {value:#x}, which is not a valid value")]
    BadField { field: &'static str, value: u32 },
    #[error("text length {0} exceeds the {TEXT_SIZE}-byte text field")]
    BadText(u32),
}

mod op {
    pub const OPEN: u32 = 0x01;
    pub const CLOSE: u32 = 0x02;
    pub const SET_FORMAT: u32 = 0x03;
    pub const MAP_REGION: u32 = 0x04;
    pub const UNMAP_REGION: u32 = 0x05;
    pub const QUEUE_BUFFER: u32 = 0x06;
    pub const STREAM_ON: u32 = 0x07;
    pub const STREAM_OFF: u32 = 0x08;
    pub const STOP: u32 = 0x09;
    pub const START: u32 = 0x0a;
    pub const SET_CONTROL: u32 = 0x0b;
    pub const SET_LAYOUT: u32 = 0x0c;

    pub const ACK: u32 = 0x81;
    pub const BUFFER_DONE: u32 = 0x82;
    pub const SOURCE_CHANGE: u32 = 0x83;
    pub const SESSION_ERROR: u32 = 0x84;
    pub const MIN_OUTPUT_BUFFERS: u32 = 0x85;
}

/// Control ids on the wire.
pub mod ctrl {
    pub const GOP_SIZE: u32 = 1;
    pub const I_FRAME_QP: u32 = 2;
    pub const P_FRAME_QP: u32 = 3;
    pub const BITRATE: u32 = 4;
    pub const FORCE_KEY_FRAME: u32 = 5;
    /// `BitrateMode` as its V4L2 menu index.
    pub const BITRATE_MODE: u32 = 6;
    pub const MIN_QP: u32 = 7;
    pub const MAX_QP: u32 = 8;
    /// `H264Profile` as its V4L2 menu index.
    pub const H264_PROFILE: u32 = 9;
    /// `H264Level` as its V4L2 menu index, or [`LEVEL_AUTO`].
    pub const H264_LEVEL: u32 = 10;
    /// OUTPUT frame rate in millihertz (frames per 1000 s).
    pub const FRAME_RATE_MHZ: u32 = 11;
    /// 1: code each frame as it comes (one in, one out); 0: throughput
    /// (the codec may hold frames, see [`super::Response::MinOutputBuffers`]).
    pub const LOW_LATENCY: u32 = 12;
    /// `H264_LEVEL` value: the encoder picks the lowest level that fits.
    pub const LEVEL_AUTO: u32 = u32::MAX;
}

/// Status codes carried by [`Response::Ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    /// The command names a session, queue, region or buffer the VPU does not know.
    NoEntity = 1,
    /// The command is not valid in the session's state.
    BadState = 2,
    /// An argument is out of range (format, size, control value).
    BadArgument = 3,
    /// The VPU cannot do this (codec, direction, format).
    Unsupported = 4,
    /// The VPU ran out of session or mapping slots.
    NoResources = 5,
}

impl Status {
    fn from_u32(v: u32) -> Result<Status, ProtocolError> {
        Ok(match v {
            0 => Status::Ok,
            1 => Status::NoEntity,
            2 => Status::BadState,
            3 => Status::BadArgument,
            4 => Status::Unsupported,
            5 => Status::NoResources,
            _ => {
                return Err(ProtocolError::BadField {
                    field: "status",
                    value: v,
                });
            }
        })
    }
}

/// Most planes a raw frame has (Y, U, V).
pub const MAX_PLANES: usize = 3;

/// One plane of a [`Command::SetLayout`], in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WirePlane {
    pub offset: u32,
    pub stride: u32,
    pub rows: u32,
}

/// Host -> VPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Open {
        role: Role,
        codec: u32,
    },
    Close,
    SetFormat {
        queue: QueueKind,
        fourcc: u32,
        width: u32,
        height: u32,
        colorimetry: Colorimetry,
    },
    MapRegion {
        handle: u32,
        size: u64,
    },
    UnmapRegion {
        handle: u32,
    },
    QueueBuffer {
        queue: QueueKind,
        index: u32,
        handle: u32,
        bytesused: u32,
        timestamp: u64,
        flags: BufferFlags,
    },
    StreamOn {
        queue: QueueKind,
    },
    StreamOff {
        queue: QueueKind,
    },
    Stop,
    Start,
    SetControl {
        id: u32,
        value: u32,
    },
    /// Lays out the buffers of a raw queue (whose format is set) as given
    /// instead of the VPU's own layout: 1 to [`MAX_PLANES`] planes (as many
    /// as the format has) and the buffer size. Since version 2.
    SetLayout {
        queue: QueueKind,
        size: u32,
        planes: Vec<WirePlane>,
    },
}

/// VPU -> host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The command with this message's `seq` was carried out (or not: `status`).
    Ack { status: Status, text: String },
    /// A buffer is done. `error` explains an ERROR flag.
    BufferDone {
        queue: QueueKind,
        index: u32,
        bytesused: u32,
        timestamp: u64,
        flags: BufferFlags,
        sequence: u32,
        error: String,
    },
    /// The decoder found the stream's format. `formats[0]` is the one in effect.
    SourceChange {
        fourcc: u32,
        width: u32,
        height: u32,
        colorimetry: Colorimetry,
        min_buffers: u32,
        formats: Vec<u32>,
    },
    /// The session can no longer run.
    SessionError { text: String },
    /// The session's `V4L2_CID_MIN_BUFFERS_FOR_OUTPUT` changed to `count`:
    /// an encoder whose codec holds frames back needs that many frames
    /// queued before the first unit comes out. Posted, when a command
    /// changed it, before that command's [`Response::Ack`], so the host
    /// knows it when the command returns. Since version 3.
    MinOutputBuffers { count: u32 },
}

fn queue_to_u32(q: QueueKind) -> u32 {
    match q {
        QueueKind::Output => 0,
        QueueKind::Capture => 1,
    }
}

fn queue_from_u32(v: u32) -> Result<QueueKind, ProtocolError> {
    match v {
        0 => Ok(QueueKind::Output),
        1 => Ok(QueueKind::Capture),
        _ => Err(ProtocolError::BadField {
            field: "queue",
            value: v,
        }),
    }
}

fn split_u64(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

fn join_u64(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

fn with_text(mut m: Message, text: &str) -> Message {
    // Cut on a character boundary so the other side always gets valid UTF-8.
    let mut end = text.len().min(TEXT_SIZE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    m.text[..end].copy_from_slice(&text.as_bytes()[..end]);
    m.text_len = end as u32;
    m
}

fn text_of(m: &Message) -> Result<String, ProtocolError> {
    let len = m.text_len as usize;
    let bytes = m
        .text
        .get(..len)
        .ok_or(ProtocolError::BadText(m.text_len))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn message(opcode: u32, session: u32, seq: u32, args: &[u32]) -> Message {
    let mut m = Message::zeroed();
    m.opcode = opcode;
    m.session = session;
    m.seq = seq;
    m.args[..args.len()].copy_from_slice(args);
    m
}

impl Command {
    pub fn encode(&self, session: u32, seq: u32) -> Message {
        let msg = |opcode, args: &[u32]| message(opcode, session, seq, args);
        match *self {
            Command::Open { role, codec } => msg(
                op::OPEN,
                &[if role == Role::Decoder { 0 } else { 1 }, codec],
            ),
            Command::Close => msg(op::CLOSE, &[]),
            Command::SetFormat {
                queue,
                fourcc,
                width,
                height,
                colorimetry: c,
            } => msg(
                op::SET_FORMAT,
                &[
                    queue_to_u32(queue),
                    fourcc,
                    width,
                    height,
                    c.colorspace,
                    c.xfer_func,
                    c.ycbcr_enc,
                    c.quantization,
                ],
            ),
            Command::MapRegion { handle, size } => {
                let (lo, hi) = split_u64(size);
                msg(op::MAP_REGION, &[handle, lo, hi])
            }
            Command::UnmapRegion { handle } => msg(op::UNMAP_REGION, &[handle]),
            Command::QueueBuffer {
                queue,
                index,
                handle,
                bytesused,
                timestamp,
                flags,
            } => {
                let (lo, hi) = split_u64(timestamp);
                msg(
                    op::QUEUE_BUFFER,
                    &[
                        queue_to_u32(queue),
                        index,
                        handle,
                        bytesused,
                        lo,
                        hi,
                        flags.bits(),
                    ],
                )
            }
            Command::StreamOn { queue } => msg(op::STREAM_ON, &[queue_to_u32(queue)]),
            Command::StreamOff { queue } => msg(op::STREAM_OFF, &[queue_to_u32(queue)]),
            Command::Stop => msg(op::STOP, &[]),
            Command::Start => msg(op::START, &[]),
            Command::SetControl { id, value } => msg(op::SET_CONTROL, &[id, value]),
            Command::SetLayout {
                queue,
                size,
                ref planes,
            } => {
                let n = planes.len().min(MAX_PLANES);
                let mut args = vec![queue_to_u32(queue), n as u32, size];
                for p in &planes[..n] {
                    args.extend([p.offset, p.stride, p.rows]);
                }
                msg(op::SET_LAYOUT, &args)
            }
        }
    }

    pub fn decode(m: &Message) -> Result<Command, ProtocolError> {
        let a = &m.args;
        Ok(match m.opcode {
            op::OPEN => Command::Open {
                role: match a[0] {
                    0 => Role::Decoder,
                    1 => Role::Encoder,
                    v => {
                        return Err(ProtocolError::BadField {
                            field: "role",
                            value: v,
                        });
                    }
                },
                codec: a[1],
            },
            op::CLOSE => Command::Close,
            op::SET_FORMAT => Command::SetFormat {
                queue: queue_from_u32(a[0])?,
                fourcc: a[1],
                width: a[2],
                height: a[3],
                colorimetry: Colorimetry {
                    colorspace: a[4],
                    xfer_func: a[5],
                    ycbcr_enc: a[6],
                    quantization: a[7],
                },
            },
            op::MAP_REGION => Command::MapRegion {
                handle: a[0],
                size: join_u64(a[1], a[2]),
            },
            op::UNMAP_REGION => Command::UnmapRegion { handle: a[0] },
            op::QUEUE_BUFFER => Command::QueueBuffer {
                queue: queue_from_u32(a[0])?,
                index: a[1],
                handle: a[2],
                bytesused: a[3],
                timestamp: join_u64(a[4], a[5]),
                flags: BufferFlags::from_bits_truncate(a[6]),
            },
            op::STREAM_ON => Command::StreamOn {
                queue: queue_from_u32(a[0])?,
            },
            op::STREAM_OFF => Command::StreamOff {
                queue: queue_from_u32(a[0])?,
            },
            op::STOP => Command::Stop,
            op::START => Command::Start,
            op::SET_CONTROL => Command::SetControl {
                id: a[0],
                value: a[1],
            },
            op::SET_LAYOUT => {
                let n = a[1] as usize;
                if !(1..=MAX_PLANES).contains(&n) {
                    return Err(ProtocolError::BadField {
                        field: "planes",
                        value: a[1],
                    });
                }
                Command::SetLayout {
                    queue: queue_from_u32(a[0])?,
                    size: a[2],
                    planes: a[3..3 + 3 * n]
                        .chunks_exact(3)
                        .map(|p| WirePlane {
                            offset: p[0],
                            stride: p[1],
                            rows: p[2],
                        })
                        .collect(),
                }
            }
            other => return Err(ProtocolError::UnknownOpcode(other)),
        })
    }
}

/// Most alternative formats a source change can list.
pub const MAX_FORMATS: usize = ARGS - 8;

impl Response {
    pub fn encode(&self, session: u32, seq: u32) -> Message {
        let msg = |opcode, args: &[u32]| message(opcode, session, seq, args);
        match self {
            Response::Ack { status, text } => with_text(msg(op::ACK, &[*status as u32]), text),
            Response::BufferDone {
                queue,
                index,
                bytesused,
                timestamp,
                flags,
                sequence,
                error,
            } => {
                let (lo, hi) = split_u64(*timestamp);
                with_text(
                    msg(
                        op::BUFFER_DONE,
                        &[
                            queue_to_u32(*queue),
                            *index,
                            *bytesused,
                            lo,
                            hi,
                            flags.bits(),
                            *sequence,
                        ],
                    ),
                    error,
                )
            }
            Response::SourceChange {
                fourcc,
                width,
                height,
                colorimetry: c,
                min_buffers,
                formats,
            } => {
                let mut args = vec![
                    *fourcc,
                    *width,
                    *height,
                    c.colorspace,
                    c.xfer_func,
                    c.ycbcr_enc,
                    c.quantization,
                    *min_buffers,
                ];
                args.extend(formats.iter().take(MAX_FORMATS));
                msg(op::SOURCE_CHANGE, &args)
            }
            Response::SessionError { text } => with_text(msg(op::SESSION_ERROR, &[]), text),
            Response::MinOutputBuffers { count } => msg(op::MIN_OUTPUT_BUFFERS, &[*count]),
        }
    }

    pub fn decode(m: &Message) -> Result<Response, ProtocolError> {
        let a = &m.args;
        Ok(match m.opcode {
            op::ACK => Response::Ack {
                status: Status::from_u32(a[0])?,
                text: text_of(m)?,
            },
            op::BUFFER_DONE => Response::BufferDone {
                queue: queue_from_u32(a[0])?,
                index: a[1],
                bytesused: a[2],
                timestamp: join_u64(a[3], a[4]),
                flags: BufferFlags::from_bits_truncate(a[5]),
                sequence: a[6],
                error: text_of(m)?,
            },
            op::SOURCE_CHANGE => Response::SourceChange {
                fourcc: a[0],
                width: a[1],
                height: a[2],
                colorimetry: Colorimetry {
                    colorspace: a[3],
                    xfer_func: a[4],
                    ycbcr_enc: a[5],
                    quantization: a[6],
                },
                min_buffers: a[7],
                formats: a[8..].iter().copied().filter(|&f| f != 0).collect(),
            },
            op::SESSION_ERROR => Response::SessionError { text: text_of(m)? },
            op::MIN_OUTPUT_BUFFERS => Response::MinOutputBuffers { count: a[0] },
            other => return Err(ProtocolError::UnknownOpcode(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let cmds = [
            Command::Open {
                role: Role::Encoder,
                codec: 0x5448_5746,
            },
            Command::Close,
            Command::SetFormat {
                queue: QueueKind::Capture,
                fourcc: 7,
                width: 322,
                height: 242,
                colorimetry: Colorimetry {
                    colorspace: 3,
                    xfer_func: 1,
                    ycbcr_enc: 2,
                    quantization: 1,
                },
            },
            Command::MapRegion {
                handle: 9,
                size: 5 << 32 | 17,
            },
            Command::UnmapRegion { handle: 9 },
            Command::QueueBuffer {
                queue: QueueKind::Output,
                index: 3,
                handle: 9,
                bytesused: 1000,
                timestamp: u64::MAX - 5,
                flags: BufferFlags::KEYFRAME | BufferFlags::NO_CACHE_CLEAN,
            },
            Command::StreamOn {
                queue: QueueKind::Output,
            },
            Command::StreamOff {
                queue: QueueKind::Capture,
            },
            Command::Stop,
            Command::Start,
            Command::SetControl {
                id: ctrl::GOP_SIZE,
                value: 10,
            },
            Command::SetLayout {
                queue: QueueKind::Capture,
                size: 3_110_400,
                planes: vec![
                    WirePlane {
                        offset: 0,
                        stride: 1920,
                        rows: 1080,
                    },
                    WirePlane {
                        offset: 2_073_600,
                        stride: 960,
                        rows: 540,
                    },
                    WirePlane {
                        offset: 2_592_000,
                        stride: 960,
                        rows: 540,
                    },
                ],
            },
            Command::SetLayout {
                queue: QueueKind::Output,
                size: 7,
                planes: vec![WirePlane {
                    offset: 1,
                    stride: 2,
                    rows: 3,
                }],
            },
        ];
        for c in cmds {
            let m = c.encode(4, 77);
            assert_eq!((m.session, m.seq), (4, 77));
            assert_eq!(Command::decode(&m).unwrap(), c);
        }
    }

    #[test]
    fn responses_round_trip() {
        let resps = [
            Response::Ack {
                status: Status::BadArgument,
                text: "width 0".into(),
            },
            Response::BufferDone {
                queue: QueueKind::Capture,
                index: 1,
                bytesused: 0,
                timestamp: 1 << 40,
                flags: BufferFlags::LAST | BufferFlags::ERROR,
                sequence: 12,
                error: "truncated".into(),
            },
            Response::SourceChange {
                fourcc: 1,
                width: 640,
                height: 480,
                colorimetry: Colorimetry::default(),
                min_buffers: 2,
                formats: vec![1, 2, 3],
            },
            Response::SessionError {
                text: "x".repeat(TEXT_SIZE),
            },
            Response::MinOutputBuffers { count: 4 },
        ];
        for r in resps {
            assert_eq!(Response::decode(&r.encode(1, 2)).unwrap(), r);
        }
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let text = "é".repeat(40); // 80 bytes
        let r = Response::SessionError { text };
        let Response::SessionError { text } = Response::decode(&r.encode(0, 0)).unwrap() else {
            panic!("wrong variant");
        };
        assert_eq!(text, "é".repeat(32));
    }

    #[test]
    fn untrusted_fields_are_rejected() {
        let mut m = Command::StreamOn {
            queue: QueueKind::Output,
        }
        .encode(1, 1);
        m.args[0] = 7;
        assert_eq!(
            Command::decode(&m),
            Err(ProtocolError::BadField {
                field: "queue",
                value: 7
            })
        );
        m.opcode = 0x7777;
        assert_eq!(
            Command::decode(&m),
            Err(ProtocolError::UnknownOpcode(0x7777))
        );
        for planes in [0, 4, u32::MAX] {
            let mut m = Command::SetLayout {
                queue: QueueKind::Capture,
                size: 64,
                planes: vec![WirePlane::default()],
            }
            .encode(1, 1);
            m.args[1] = planes;
            assert_eq!(
                Command::decode(&m),
                Err(ProtocolError::BadField {
                    field: "planes",
                    value: planes
                })
            );
        }
        let mut r = Response::Ack {
            status: Status::Ok,
            text: String::new(),
        }
        .encode(1, 1);
        r.text_len = 65;
        assert_eq!(Response::decode(&r), Err(ProtocolError::BadText(65)));
        r.text_len = 0;
        r.args[0] = 99;
        assert!(Response::decode(&r).is_err());
    }
}
