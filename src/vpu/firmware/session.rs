//! One codec session inside the firmware: its formats, its mapped regions, its
//! two buffer queues, and the codec engine that consumes them.
//!
//! Every value here arrived through the command ring, so every handle, index,
//! size and format is checked before it is used; a bad one is answered with a
//! status (or an ERROR buffer), never with a panic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::decoder::Decoder;
use super::encoder::Encoder;
use super::engine::CodecEngine;
use super::h264dec::H264Dec;
use super::h264enc::H264Engine;
use super::{Faults, Outbox};
use crate::m2m::{BufferFlags, Format, PixelFormat, PlaneLayout, QueueKind, Role};
use crate::mem::Region;
use crate::vpu::iommu::Iommu;
use crate::vpu::protocol::{Command, Response, Status, ctrl};

/// Largest frame side the core accepts.
pub(crate) const MAX_DIMENSION: u32 = 8192;
/// Buffers one queue may hold.
pub(crate) const MAX_QUEUED: usize = 64;

/// A buffer the host queued, resolved to its memory.
#[derive(Debug)]
pub(crate) struct QueuedBuffer {
    pub index: u32,
    pub region: Arc<Region>,
    pub bytesused: usize,
    pub timestamp: u64,
    pub flags: BufferFlags,
}

/// A queue as the firmware sees it.
#[derive(Debug, Default)]
pub(crate) struct FwQueue {
    pub format: Option<Format>,
    pub streaming: bool,
    pub buffers: VecDeque<QueuedBuffer>,
}

pub(crate) struct FwSession {
    pub id: u32,
    pub output: FwQueue,
    pub capture: FwQueue,
    /// Regions the host mapped for this session: handle -> region.
    mapped: HashMap<u32, Arc<Region>>,
    iommu: Arc<Iommu>,
    engine: Box<dyn CodecEngine>,
}

/// Where a session sends what it produces.
pub(crate) struct Sink<'a> {
    pub id: u32,
    pub outbox: &'a mut Outbox,
}

impl Sink<'_> {
    pub(crate) fn done(
        &mut self,
        queue: QueueKind,
        buf: &QueuedBuffer,
        bytesused: usize,
        flags: BufferFlags,
        sequence: u32,
        error: &str,
    ) {
        self.outbox.post(
            self.id,
            0,
            Response::BufferDone {
                queue,
                index: buf.index,
                bytesused: bytesused as u32,
                timestamp: buf.timestamp,
                flags,
                sequence,
                error: error.to_owned(),
            },
        );
    }

    pub(crate) fn post(&mut self, response: Response) {
        self.outbox.post(self.id, 0, response);
    }
}

impl FwSession {
    pub(crate) fn open(
        id: u32,
        role: Role,
        codec: u32,
        iommu: Arc<Iommu>,
    ) -> Result<FwSession, String> {
        let engine: Box<dyn CodecEngine> = match (PixelFormat::from_fourcc(codec), role) {
            (Some(PixelFormat::Fwht), Role::Decoder) => Box::<Decoder>::default(),
            (Some(PixelFormat::Fwht), Role::Encoder) => Box::<Encoder>::default(),
            (Some(PixelFormat::H264), Role::Encoder) => Box::<H264Engine>::default(),
            (Some(PixelFormat::H264), Role::Decoder) => Box::<H264Dec>::default(),
            _ => {
                let name = String::from_utf8_lossy(&codec.to_le_bytes()).into_owned();
                return Err(format!("this VPU has no {role} for {name:?}"));
            }
        };
        Ok(FwSession {
            id,
            output: FwQueue::default(),
            capture: FwQueue::default(),
            mapped: HashMap::new(),
            iommu,
            engine,
        })
    }

    fn min_output_buffers(&self) -> u32 {
        self.engine.min_output_buffers()
    }

    fn queue_mut(&mut self, q: QueueKind) -> &mut FwQueue {
        match q {
            QueueKind::Output => &mut self.output,
            QueueKind::Capture => &mut self.capture,
        }
    }

    pub(crate) fn command(&mut self, seq: u32, cmd: Command, faults: &Faults, outbox: &mut Outbox) {
        let min_output = self.min_output_buffers();
        let applied = self.apply(cmd, faults, outbox);
        // A changed minimum reaches the host before the acknowledgement.
        let now = self.min_output_buffers();
        if now != min_output {
            outbox.post(self.id, seq, Response::MinOutputBuffers { count: now });
        }
        let reply = match applied {
            Ok(None) => return,
            Ok(Some(())) => Response::Ack {
                status: Status::Ok,
                text: String::new(),
            },
            Err((status, text)) => Response::Ack { status, text },
        };
        outbox.post(self.id, seq, reply);
    }

    /// `Ok(None)`: the command needs no acknowledgement (queueing a buffer).
    fn apply(
        &mut self,
        cmd: Command,
        faults: &Faults,
        outbox: &mut Outbox,
    ) -> Result<Option<()>, (Status, String)> {
        let bad = |text: String| (Status::BadArgument, text);
        match cmd {
            Command::SetFormat {
                queue,
                fourcc,
                width,
                height,
                colorimetry,
            } => {
                if width > MAX_DIMENSION || height > MAX_DIMENSION {
                    return Err(bad(format!(
                        "{width}x{height} exceeds {MAX_DIMENSION}x{MAX_DIMENSION}"
                    )));
                }
                let pixfmt = PixelFormat::from_fourcc(fourcc)
                    .ok_or_else(|| bad(format!("unknown pixel format {fourcc:#010x}")))?;
                if self.queue_mut(queue).streaming {
                    return Err((Status::BadState, format!("{queue} is streaming")));
                }
                self.engine
                    .set_format(
                        &mut self.output,
                        &mut self.capture,
                        queue,
                        pixfmt,
                        (width, height),
                        colorimetry,
                    )
                    .map_err(bad)?;
                Ok(Some(()))
            }
            Command::MapRegion { handle, size } => {
                let region = self.iommu.lookup(handle).ok_or((
                    Status::NoEntity,
                    format!("region handle {handle} is not in the IOMMU"),
                ))?;
                if region.size() as u64 != size {
                    return Err(bad(format!(
                        "region {handle} is {} bytes, the host says {size}",
                        region.size()
                    )));
                }
                self.mapped.insert(handle, region);
                Ok(Some(()))
            }
            Command::UnmapRegion { handle } => {
                let in_use = |q: &FwQueue| {
                    q.buffers.iter().any(|b| {
                        self.mapped
                            .get(&handle)
                            .is_some_and(|r| Arc::ptr_eq(r, &b.region))
                    })
                };
                if in_use(&self.output) || in_use(&self.capture) {
                    return Err((Status::BadState, format!("region {handle} is still queued")));
                }
                self.mapped.remove(&handle).map(|_| Some(())).ok_or((
                    Status::NoEntity,
                    format!("region handle {handle} is not mapped"),
                ))
            }
            Command::QueueBuffer {
                queue,
                index,
                handle,
                bytesused,
                timestamp,
                flags,
            } => {
                let queued = self.queue_mut(queue).buffers.len();
                let fault = match self.mapped.get(&handle) {
                    None => Some(format!(
                        "{queue} buffer {index}: region handle {handle} is not mapped"
                    )),
                    Some(r) if bytesused as usize > r.size() => Some(format!(
                        "{queue} buffer {index}: bytesused {bytesused} exceeds the {}-byte region",
                        r.size()
                    )),
                    Some(_) if queued >= MAX_QUEUED => {
                        Some(format!("{queue} already holds {MAX_QUEUED} buffers"))
                    }
                    Some(_) => None,
                };
                if let Some(text) = fault {
                    // Not queued: hand it straight back, flagged.
                    outbox.post(
                        self.id,
                        0,
                        Response::BufferDone {
                            queue,
                            index,
                            bytesused: 0,
                            timestamp,
                            flags: BufferFlags::ERROR,
                            sequence: 0,
                            error: text,
                        },
                    );
                    return Ok(None);
                }
                let region = self.mapped[&handle].clone();
                let mut buf = QueuedBuffer {
                    index,
                    region,
                    bytesused: bytesused as usize,
                    timestamp,
                    flags,
                };
                if queue == QueueKind::Output {
                    self.engine.on_output_queued(&mut buf);
                }
                self.queue_mut(queue).buffers.push_back(buf);
                Ok(None)
            }
            Command::StreamOn { queue } => {
                if self.queue_mut(queue).format.is_none()
                    && (queue == QueueKind::Capture || self.engine.output_needs_format())
                {
                    return Err((Status::BadState, format!("{queue} has no format")));
                }
                self.queue_mut(queue).streaming = true;
                self.engine.stream_on(queue);
                Ok(Some(()))
            }
            Command::StreamOff { queue } => {
                let q = self.queue_mut(queue);
                q.streaming = false;
                q.buffers.clear();
                self.engine.stream_off(queue);
                Ok(Some(()))
            }
            Command::Stop => {
                self.engine.stop(&self.output);
                Ok(Some(()))
            }
            Command::Start => {
                self.engine.start();
                Ok(Some(()))
            }
            Command::SetControl { id, value } => {
                self.engine.set_control(id, value).map_err(bad)?;
                Ok(Some(()))
            }
            Command::SetLayout {
                queue,
                size,
                planes,
            } => {
                if faults.fixed_layout() {
                    return Err((
                        Status::Unsupported,
                        "this VPU lays its buffers out itself (fixed layout)".into(),
                    ));
                }
                let q = self.queue_mut(queue);
                if q.streaming {
                    return Err((Status::BadState, format!("{queue} is streaming")));
                }
                let Some(mut format) = q.format.clone() else {
                    return Err((Status::BadState, format!("{queue} has no format")));
                };
                if format.pixelformat.is_coded() {
                    return Err(bad(format!(
                        "{queue} carries {}, a coded format: it has no plane layout",
                        format.pixelformat
                    )));
                }
                if planes.len() != format.planes.len() {
                    return Err(bad(format!(
                        "{} has {} planes, the layout gives {}",
                        format.pixelformat,
                        format.planes.len(),
                        planes.len()
                    )));
                }
                for (i, p) in planes.iter().enumerate() {
                    let end = u64::from(p.offset) + u64::from(p.stride) * u64::from(p.rows);
                    if end > u64::from(size) {
                        return Err(bad(format!(
                            "plane {i} ends at byte {end}, beyond the {size}-byte buffer"
                        )));
                    }
                }
                format.size = size as usize;
                format.planes = planes
                    .iter()
                    .map(|p| PlaneLayout {
                        offset: p.offset as usize,
                        stride: p.stride as usize,
                        rows: p.rows as usize,
                    })
                    .collect();
                self.engine
                    .set_layout(&mut self.capture, queue, format)
                    .ok_or((
                        Status::Unsupported,
                        "this engine reads and writes frames in its own layout only".to_owned(),
                    ))?
                    .map_err(bad)?;
                Ok(Some(()))
            }
            Command::Open { .. } | Command::Close => unreachable_command(),
        }
    }

    /// Does one unit of the work the queues allow; false if there was none.
    pub(crate) fn step(&mut self, faults: &Faults, outbox: &mut Outbox) -> bool {
        let mut sink = Sink {
            id: self.id,
            outbox,
        };
        self.engine
            .step(&mut self.output, &mut self.capture, faults, &mut sink)
    }
}

/// Open and Close are handled by the core before a session is looked up.
fn unreachable_command() -> Result<Option<()>, (Status, String)> {
    Err((
        Status::BadState,
        "session-level command routed to the core".into(),
    ))
}

/// Control ids for messages.
pub(crate) fn control_name(id: u32) -> &'static str {
    match id {
        ctrl::GOP_SIZE => "gop-size",
        ctrl::I_FRAME_QP => "i-frame-qp",
        ctrl::P_FRAME_QP => "p-frame-qp",
        ctrl::BITRATE => "bitrate",
        ctrl::FORCE_KEY_FRAME => "force-key-frame",
        ctrl::BITRATE_MODE => "bitrate-mode",
        ctrl::MIN_QP => "min-qp",
        ctrl::MAX_QP => "max-qp",
        ctrl::H264_PROFILE => "h264-profile",
        ctrl::H264_LEVEL => "h264-level",
        ctrl::FRAME_RATE_MHZ => "frame-rate",
        ctrl::LOW_LATENCY => "low-latency",
        _ => "unknown",
    }
}
