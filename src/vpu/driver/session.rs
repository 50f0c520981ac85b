//! One session on the emulated VPU, host side: the queues as the host sees
//! them (which buffers the device holds), commands and their acknowledgements,
//! and the checks that turn untrusted responses into [`Event`]s.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Core, Fault, Inner, Mailbox, POLL, lock};
use crate::m2m::{
    Buffer, BufferFlags, Colorimetry, Control, Event, Format, M2mError, Memory, PixelFormat,
    QueueError, QueueKind, Role, Session, SourceChange,
};
use crate::mem::{Coherency, Owner, Region};
use crate::vpu::protocol::{self, Command, Response, Status, ctrl};

/// Buffers one queue can hold (`VIDEO_MAX_FRAME`).
const MAX_BUFFERS: usize = 32;

/// One buffer slot of a host-side queue.
#[derive(Debug, Default)]
struct Slot {
    /// Allocated memory, or the last imported region.
    region: Option<Arc<Region>>,
    /// Its IOMMU handle while mapped.
    handle: Option<u32>,
    /// The buffer while the device holds it.
    in_device: Option<Buffer>,
}

#[derive(Debug, Default)]
struct HostQueue {
    format: Option<Format>,
    memory: Option<Memory>,
    slots: Vec<Slot>,
    streaming: bool,
}

impl HostQueue {
    fn busy(&self) -> bool {
        self.slots.iter().any(|s| s.in_device.is_some())
    }
}

#[derive(Debug)]
struct HostState {
    role: Role,
    output: HostQueue,
    capture: HostQueue,
    /// From the last source change: formats the stream allows, its size.
    stream: Option<(Vec<PixelFormat>, u32, u32, Colorimetry)>,
    min_capture: u32,
    /// A source change was reported and CAPTURE was not restarted since.
    awaiting_capture: bool,
    draining: bool,
    /// A drain completed (LAST seen) and nothing restarted the session.
    stopped: bool,
}

impl HostState {
    fn new(role: Role) -> HostState {
        HostState {
            role,
            output: HostQueue::default(),
            capture: HostQueue::default(),
            stream: None,
            min_capture: 1,
            awaiting_capture: false,
            draining: false,
            stopped: false,
        }
    }

    fn queue(&mut self, q: QueueKind) -> &mut HostQueue {
        match q {
            QueueKind::Output => &mut self.output,
            QueueKind::Capture => &mut self.capture,
        }
    }

    /// Whether the device holds work it should be making progress on.
    fn device_has_work(&self) -> bool {
        let (out, cap) = (self.output.busy(), self.capture.busy());
        if self.draining && cap {
            return true;
        }
        if self.stopped {
            return false;
        }
        match self.role {
            Role::Decoder => {
                (out && cap && !self.awaiting_capture) || (out && self.stream.is_none())
            }
            Role::Encoder => out && cap && self.output.streaming && self.capture.streaming,
        }
    }
}

/// A session on an [`EmuVpu`](super::EmuVpu).
pub struct EmuSession {
    vpu: Arc<Inner>,
    id: u32,
    role: Role,
    codec: PixelFormat,
    mailbox: Arc<Mailbox>,
    state: Mutex<HostState>,
}

impl std::fmt::Debug for EmuSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmuSession")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish()
    }
}

impl EmuSession {
    pub(super) fn new(
        vpu: Arc<Inner>,
        id: u32,
        role: Role,
        codec: PixelFormat,
        mailbox: Arc<Mailbox>,
    ) -> EmuSession {
        EmuSession {
            vpu,
            id,
            role,
            codec,
            mailbox,
            state: Mutex::new(HostState::new(role)),
        }
    }

    fn core(&self) -> &Core {
        &self.vpu.core
    }

    fn check_fault(&self) -> Result<(), M2mError> {
        match &lock(&self.mailbox.inbox).fault {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    /// Sends a command and waits for its acknowledgement; a refusal becomes
    /// the error `refused` builds from the status and the firmware's reason.
    pub(super) fn command(
        &self,
        cmd: Command,
        refused: impl FnOnce(Status, String) -> M2mError,
    ) -> Result<(), M2mError> {
        self.check_fault()?;
        let seq = self.core().send(self.id, &cmd)?;
        self.wait_ack(seq, refused)
    }

    /// Sends `cmds` at once and waits for all their acknowledgements (one
    /// round trip to the core instead of one per command, as one REQBUFS
    /// ioctl sets up every buffer). The first refusal, in command order,
    /// becomes the error; every acknowledgement is waited for anyway, so
    /// none is left behind.
    fn commands(
        &self,
        cmds: &[Command],
        refused: impl Fn(Status, String) -> M2mError,
    ) -> Result<(), M2mError> {
        if cmds.is_empty() {
            return Ok(());
        }
        self.check_fault()?;
        let seqs = cmds
            .iter()
            .map(|c| self.core().send(self.id, c))
            .collect::<Result<Vec<u32>, M2mError>>()?;
        let mut first = Ok(());
        for seq in seqs {
            let r = self.wait_ack(seq, &refused);
            if let Err(M2mError::Timeout(_) | M2mError::Firmware(_)) = &r {
                return r;
            }
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Waits for the acknowledgement of command `seq` (see [`Self::command`]).
    fn wait_ack(
        &self,
        seq: u32,
        refused: impl FnOnce(Status, String) -> M2mError,
    ) -> Result<(), M2mError> {
        let watchdog = self.core().config.watchdog;
        let deadline = Instant::now() + watchdog;
        loop {
            let mut inbox = lock(&self.mailbox.inbox);
            if let Some((status, text)) = inbox.acks.remove(&seq) {
                return match status {
                    Status::Ok => Ok(()),
                    other => Err(refused(other, text)),
                };
            }
            if let Some(f) = &inbox.fault {
                return Err(f.error());
            }
            let seen = inbox.deliveries;
            drop(inbox);
            let now = Instant::now();
            if now >= deadline {
                self.mailbox.fail(Fault::Timeout(watchdog));
                return Err(M2mError::Timeout(watchdog));
            }
            // In poll periods: the handler checks the heartbeat in between.
            self.core()
                .wait_delivery(&self.mailbox, seen, (deadline - now).min(POLL));
        }
    }

    fn refused(queue: QueueKind) -> impl Fn(Status, String) -> M2mError {
        move |status, reason| match status {
            Status::BadState => M2mError::InvalidState { queue, reason },
            _ => M2mError::InvalidFormat { queue, reason },
        }
    }

    fn fail(&self, message: String) -> M2mError {
        self.mailbox.fail(Fault::Firmware(message.clone()));
        M2mError::Firmware(message)
    }

    /// Turns a response into an event, checking everything it claims.
    fn absorb(&self, st: &mut HostState, response: Response) -> Result<Option<Event>, M2mError> {
        match response {
            Response::BufferDone {
                queue,
                index,
                bytesused,
                timestamp,
                flags,
                sequence,
                error,
            } => {
                let hq = st.queue(queue);
                let count = hq.slots.len();
                let Some(slot) = hq.slots.get_mut(index as usize) else {
                    return Err(self.fail(format!(
                        "VPU returned {queue} buffer {index}, the queue has {count}"
                    )));
                };
                let Some(mut buf) = slot.in_device.take() else {
                    return Err(self.fail(format!(
                        "VPU returned {queue} buffer {index}, which the host had not queued"
                    )));
                };
                if bytesused as usize > buf.region.size() {
                    return Err(self.fail(format!(
                        "VPU reports {bytesused} bytes in {queue} buffer {index} of {} bytes",
                        buf.region.size()
                    )));
                }
                buf.bytesused = bytesused as usize;
                buf.timestamp = timestamp;
                buf.flags = flags;
                buf.sequence = sequence;
                buf.error = flags.contains(BufferFlags::ERROR).then_some(error);
                if queue == QueueKind::Capture && flags.contains(BufferFlags::LAST) && st.draining {
                    st.draining = false;
                    st.stopped = true;
                }
                Ok(Some(Event::BufferDone(buf)))
            }
            Response::SourceChange {
                fourcc,
                width,
                height,
                colorimetry,
                min_buffers,
                formats,
            } => {
                let format = PixelFormat::from_fourcc(fourcc)
                    .filter(|p| !p.is_coded())
                    .filter(|_| (1..=8192).contains(&width) && (1..=8192).contains(&height))
                    .and_then(|p| Format::raw(p, width, height));
                let Some(mut format) = format else {
                    return Err(self.fail(format!(
                        "VPU source change to {width}x{height} in format {fourcc:#010x} is not a raw format the host knows"
                    )));
                };
                format.colorimetry = colorimetry;
                let formats: Vec<PixelFormat> = formats
                    .iter()
                    .filter_map(|&c| PixelFormat::from_fourcc(c))
                    .filter(|p| !p.is_coded())
                    .collect();
                st.capture.format = Some(format.clone());
                st.stream = Some((formats.clone(), width, height, colorimetry));
                st.min_capture = min_buffers.clamp(1, 32);
                st.awaiting_capture = true;
                Ok(Some(Event::SourceChange(SourceChange {
                    format,
                    formats,
                    min_capture_buffers: st.min_capture,
                })))
            }
            // Acks and minimum counts are taken by `dispatch`; errors never
            // reach the queue.
            Response::Ack { .. }
            | Response::SessionError { .. }
            | Response::MinOutputBuffers { .. } => Ok(None),
        }
    }

    fn unmap_all(&self, st: &mut HostState, queue: QueueKind) -> Result<(), M2mError> {
        let handles: Vec<u32> = st
            .queue(queue)
            .slots
            .iter_mut()
            .filter_map(|s| s.handle.take())
            .collect();
        let unmaps: Vec<Command> = handles
            .iter()
            .map(|&handle| Command::UnmapRegion { handle })
            .collect();
        let result = self.commands(&unmaps, Self::refused(queue));
        for handle in handles {
            self.core().iommu.unmap(handle);
        }
        result
    }

    /// Appends `count` buffers to the queue's slots (indices continue after
    /// the existing ones). A failure maps nothing: what this call mapped is
    /// unmapped again.
    fn create(
        &self,
        st: &mut HostState,
        queue: QueueKind,
        count: u32,
        memory: Memory,
    ) -> Result<Vec<Buffer>, M2mError> {
        let first = st.queue(queue).slots.len() as u32;
        let coherency = match memory {
            Memory::Import => {
                let hq = st.queue(queue);
                hq.slots
                    .resize_with((first + count) as usize, Slot::default);
                return Ok(Vec::new());
            }
            Memory::Allocate(coherency) => coherency,
        };
        let size =
            st.queue(queue)
                .format
                .as_ref()
                .map(|f| f.size)
                .ok_or(M2mError::InvalidState {
                    queue,
                    reason: "set a format before allocating".into(),
                })?;
        let config = &self.core().config;
        let regions = (first..first + count)
            .map(|index| {
                let name = format!(
                    "vpu{}-{}-{}",
                    self.id,
                    queue.to_string().to_lowercase(),
                    index
                );
                Region::allocate(&name, size, coherency, config.backend, &config.checker)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Every region into the IOMMU, then one batch of MapRegion commands:
        // a single round trip to the core however many buffers.
        let handles: Vec<u32> = regions
            .iter()
            .map(|r| self.core().iommu.map(r.clone()))
            .collect();
        let maps: Vec<Command> = regions
            .iter()
            .zip(&handles)
            .map(|(r, &handle)| Command::MapRegion {
                handle,
                size: r.size() as u64,
            })
            .collect();
        if let Err(e) = self.commands(&maps, Self::refused(queue)) {
            // Best effort (a handle the core did not map is refused, and the
            // session fails anyway if the VPU does not answer).
            let unmaps: Vec<Command> = handles
                .iter()
                .map(|&handle| Command::UnmapRegion { handle })
                .collect();
            let _ = self.commands(&unmaps, Self::refused(queue));
            for &handle in &handles {
                self.core().iommu.unmap(handle);
            }
            return Err(e);
        }
        let buffers = (first..)
            .zip(&regions)
            .map(|(index, region)| Buffer::new(queue, index, region.clone()))
            .collect();
        st.queue(queue)
            .slots
            .extend(
                regions
                    .into_iter()
                    .zip(handles)
                    .map(|(region, handle)| Slot {
                        region: Some(region),
                        handle: Some(handle),
                        in_device: None,
                    }),
            );
        Ok(buffers)
    }

    fn map(&self, region: &Arc<Region>, queue: QueueKind) -> Result<u32, M2mError> {
        let handle = self.core().iommu.map(region.clone());
        let size = region.size() as u64;
        if let Err(e) = self.command(Command::MapRegion { handle, size }, Self::refused(queue)) {
            self.core().iommu.unmap(handle);
            return Err(e);
        }
        Ok(handle)
    }

    fn queue_inner(&self, st: &mut HostState, buf: &Buffer) -> Result<u32, M2mError> {
        let queue = buf.queue;
        let bad = |reason: String| M2mError::InvalidState { queue, reason };
        let hq = st.queue(queue);
        let count = hq.slots.len();
        let memory = hq.memory;
        let slot = hq.slots.get_mut(buf.index as usize).ok_or_else(|| {
            bad(format!(
                "buffer index {} but the queue has {count} buffers",
                buf.index
            ))
        })?;
        if slot.in_device.is_some() {
            return Err(bad(format!("buffer {} is already queued", buf.index)));
        }
        if buf.bytesused > buf.region.size() {
            return Err(bad(format!(
                "bytesused {} exceeds the {}-byte buffer {}",
                buf.bytesused,
                buf.region.size(),
                buf.index
            )));
        }
        let handle = match memory {
            Some(Memory::Allocate(_)) => match (&slot.region, slot.handle) {
                (Some(r), Some(h)) if Arc::ptr_eq(r, &buf.region) => h,
                _ => {
                    return Err(bad(format!(
                        "buffer {} does not carry the memory allocated for it",
                        buf.index
                    )));
                }
            },
            Some(Memory::Import) => match (&slot.region, slot.handle) {
                (Some(r), Some(h)) if Arc::ptr_eq(r, &buf.region) => h,
                _ => {
                    let old = slot.handle.take();
                    slot.region = None;
                    if let Some(h) = old {
                        self.command(Command::UnmapRegion { handle: h }, Self::refused(queue))?;
                        self.core().iommu.unmap(h);
                    }
                    let h = self.map(&buf.region, queue)?;
                    let slot = &mut st.queue(queue).slots[buf.index as usize];
                    slot.region = Some(buf.region.clone());
                    slot.handle = Some(h);
                    h
                }
            },
            None => return Err(bad("no buffers allocated".into())),
        };
        let region = &buf.region;
        if region.coherency() == Coherency::Cacheable
            && region.owner() == Owner::Cpu
            && !buf.flags.contains(BufferFlags::NO_CACHE_CLEAN)
        {
            region.sync_for_device()?;
        }
        Ok(handle)
    }
}

impl Session for EmuSession {
    fn role(&self) -> Role {
        self.role
    }

    fn codec(&self) -> PixelFormat {
        self.codec
    }

    fn enum_formats(&self, queue: QueueKind) -> Vec<PixelFormat> {
        let raw = || {
            PixelFormat::ALL
                .iter()
                .copied()
                .filter(|p| !p.is_coded() && Format::raw(*p, 16, 16).is_some())
        };
        match (self.role, queue) {
            (Role::Decoder, QueueKind::Output) | (Role::Encoder, QueueKind::Capture) => {
                vec![self.codec]
            }
            (Role::Encoder, QueueKind::Output) if self.codec == PixelFormat::H264 => raw()
                .filter(|&p| crate::vpu::codec::h264enc::supports(p))
                .collect(),
            (Role::Encoder, QueueKind::Output) => raw().collect(),
            (Role::Decoder, QueueKind::Capture) => match &lock(&self.state).stream {
                Some((formats, ..)) => formats.clone(),
                None => raw().collect(),
            },
        }
    }

    fn set_format(&self, queue: QueueKind, format: &Format) -> Result<Format, M2mError> {
        let mut st = lock(&self.state);
        if st.queue(queue).streaming {
            return Err(M2mError::InvalidState {
                queue,
                reason: "cannot change the format while streaming".into(),
            });
        }
        let cmd = Command::SetFormat {
            queue,
            fourcc: format.pixelformat.fourcc(),
            width: format.width,
            height: format.height,
            colorimetry: format.colorimetry,
        };
        self.command(cmd, Self::refused(queue))?;
        let invalid = |reason: String| M2mError::InvalidFormat { queue, reason };
        let (w, h, cm) = match (&st.stream, self.role, queue) {
            (Some((_, w, h, cm)), Role::Decoder, QueueKind::Capture) => (*w, *h, *cm),
            (_, Role::Decoder, QueueKind::Output) if format.width == 0 || format.height == 0 => {
                let (w, h) = protocol::DEFAULT_CODED_SIZE;
                (w, h, format.colorimetry)
            }
            _ => (format.width, format.height, format.colorimetry),
        };
        let mut effective = if format.pixelformat.is_coded() {
            Format::coded(format.pixelformat, w.max(1), h.max(1))
        } else {
            Format::raw(format.pixelformat, w, h).ok_or_else(|| {
                invalid(format!("{} has no layout at {w}x{h}", format.pixelformat))
            })?
        };
        effective.colorimetry = cm;
        if self.role == Role::Encoder && queue == QueueKind::Output {
            let mut coded = Format::coded(self.codec, w, h);
            coded.colorimetry = cm;
            st.capture.format = Some(coded);
        }
        st.queue(queue).format = Some(effective.clone());
        Ok(effective)
    }

    /// The emulated VPU writes decoded frames in any layout that holds their
    /// visible samples (`Command::SetLayout`); its encoder reads its own.
    fn set_layout(&self, queue: QueueKind, layout: &Format) -> Result<Option<Format>, M2mError> {
        let mut st = lock(&self.state);
        let invalid = |reason: String| M2mError::InvalidFormat { queue, reason };
        let hq = st.queue(queue);
        if hq.streaming || hq.busy() {
            return Err(M2mError::InvalidState {
                queue,
                reason: "cannot change the layout while streaming".into(),
            });
        }
        let Some(current) = hq.format.clone() else {
            return Err(M2mError::InvalidState {
                queue,
                reason: "set a format before its layout".into(),
            });
        };
        if (layout.pixelformat, layout.width, layout.height)
            != (current.pixelformat, current.width, current.height)
        {
            return Err(invalid(format!(
                "the layout is for {} {}x{}, the queue's format is {} {}x{}",
                layout.pixelformat,
                layout.width,
                layout.height,
                current.pixelformat,
                current.width,
                current.height
            )));
        }
        let wire = |v: usize, what: &str| {
            u32::try_from(v)
                .map_err(|_| invalid(format!("{what} {v} does not fit the VPU's 32 bits")))
        };
        if layout.planes.len() > protocol::MAX_PLANES {
            return Err(invalid(format!(
                "{} planes, the VPU takes at most {}",
                layout.planes.len(),
                protocol::MAX_PLANES
            )));
        }
        let planes = layout
            .planes
            .iter()
            .map(|p| {
                Ok(protocol::WirePlane {
                    offset: wire(p.offset, "plane offset")?,
                    stride: wire(p.stride, "stride")?,
                    rows: wire(p.rows, "rows")?,
                })
            })
            .collect::<Result<Vec<_>, M2mError>>()?;
        let cmd = Command::SetLayout {
            queue,
            size: wire(layout.size, "buffer size")?,
            planes,
        };
        self.command(cmd, Self::refused(queue))?;
        let mut effective = layout.clone();
        effective.colorimetry = current.colorimetry;
        st.queue(queue).format = Some(effective.clone());
        Ok(Some(effective))
    }

    fn format(&self, queue: QueueKind) -> Result<Format, M2mError> {
        lock(&self.state)
            .queue(queue)
            .format
            .clone()
            .ok_or(M2mError::InvalidState {
                queue,
                reason: "no format set yet".into(),
            })
    }

    fn set_control(&self, control: Control) -> Result<(), M2mError> {
        let (id, value) = match control {
            Control::GopSize(v) => (ctrl::GOP_SIZE, v),
            Control::IFrameQp(v) => (ctrl::I_FRAME_QP, v),
            Control::PFrameQp(v) => (ctrl::P_FRAME_QP, v),
            Control::Bitrate(v) => (ctrl::BITRATE, v),
            Control::ForceKeyFrame => (ctrl::FORCE_KEY_FRAME, 1),
            Control::BitrateMode(m) => (ctrl::BITRATE_MODE, m as u32),
            Control::MinQp(v) => (ctrl::MIN_QP, v),
            Control::MaxQp(v) => (ctrl::MAX_QP, v),
            Control::H264Profile(p) => (ctrl::H264_PROFILE, p as u32),
            Control::H264Level(l) => (ctrl::H264_LEVEL, l.map_or(ctrl::LEVEL_AUTO, |l| l.v4l2)),
            Control::LowLatency(on) => (ctrl::LOW_LATENCY, u32::from(on)),
            Control::FrameRate { num, den } => {
                if num == 0 || den == 0 {
                    return Err(M2mError::InvalidControl {
                        control,
                        reason: format!("a frame rate needs a non-zero fraction, got {num}/{den}"),
                    });
                }
                // On the wire in millihertz (precise enough for rate control).
                let mhz = (u64::from(num) * 1000).div_ceil(u64::from(den));
                (ctrl::FRAME_RATE_MHZ, u32::try_from(mhz).unwrap_or(u32::MAX))
            }
        };
        self.command(Command::SetControl { id, value }, |_, reason| {
            M2mError::InvalidControl { control, reason }
        })
    }

    fn min_buffers(&self, queue: QueueKind) -> u32 {
        match (self.role, queue) {
            (Role::Decoder, QueueKind::Capture) => lock(&self.state).min_capture,
            (Role::Encoder, QueueKind::Output) => lock(&self.mailbox.inbox).min_output,
            _ => 1,
        }
    }

    fn allocate_buffers(
        &self,
        queue: QueueKind,
        count: u32,
        memory: Memory,
    ) -> Result<Vec<Buffer>, M2mError> {
        let mut st = lock(&self.state);
        let hq = st.queue(queue);
        if hq.streaming || hq.busy() {
            return Err(M2mError::InvalidState {
                queue,
                reason: "cannot reallocate buffers while streaming".into(),
            });
        }
        self.unmap_all(&mut st, queue)?;
        let hq = st.queue(queue);
        hq.slots.clear();
        hq.memory = None;
        if count == 0 {
            return Ok(Vec::new());
        }
        let buffers = self.create(&mut st, queue, count, memory)?;
        st.queue(queue).memory = Some(memory);
        Ok(buffers)
    }

    fn add_buffers(
        &self,
        queue: QueueKind,
        count: u32,
        memory: Memory,
    ) -> Result<Vec<Buffer>, M2mError> {
        let mut st = lock(&self.state);
        let hq = st.queue(queue);
        if hq.memory != Some(memory) {
            return Err(M2mError::InvalidState {
                queue,
                reason: format!(
                    "buffers can only be added with the queue's memory ({:?}), not {memory:?}",
                    hq.memory
                ),
            });
        }
        let have = hq.slots.len();
        if have + count as usize > MAX_BUFFERS {
            return Err(M2mError::InvalidState {
                queue,
                reason: format!(
                    "{have} buffers plus {count} exceeds the {MAX_BUFFERS} a queue can hold"
                ),
            });
        }
        self.create(&mut st, queue, count, memory)
    }

    fn stream_on(&self, queue: QueueKind) -> Result<(), M2mError> {
        let mut st = lock(&self.state);
        self.command(Command::StreamOn { queue }, Self::refused(queue))?;
        st.queue(queue).streaming = true;
        if queue == QueueKind::Capture {
            st.awaiting_capture = false;
            st.stopped = false;
        }
        Ok(())
    }

    fn stream_off(&self, queue: QueueKind) -> Result<Vec<Buffer>, M2mError> {
        let mut st = lock(&self.state);
        self.command(Command::StreamOff { queue }, Self::refused(queue))?;
        // Responses for this queue still in the mailbox are superseded: the
        // buffers they name come back here, unprocessed as far as the client
        // is concerned.
        let mut inbox = lock(&self.mailbox.inbox);
        inbox
            .responses
            .retain(|r| !matches!(r, Response::BufferDone { queue: q, .. } if *q == queue));
        drop(inbox);
        let hq = st.queue(queue);
        hq.streaming = false;
        let mut returned: Vec<Buffer> = hq
            .slots
            .iter_mut()
            .filter_map(|s| s.in_device.take())
            .collect();
        for b in &mut returned {
            b.flags = BufferFlags::RETURNED;
            b.bytesused = 0;
        }
        st.draining = false;
        st.stopped = false;
        Ok(returned)
    }

    #[allow(clippy::result_large_err)]
    fn queue(&self, buffer: Buffer) -> Result<(), QueueError> {
        if let Err(error) = self.check_fault() {
            return Err(QueueError { buffer, error });
        }
        let mut st = lock(&self.state);
        let handle = match self.queue_inner(&mut st, &buffer) {
            Ok(h) => h,
            Err(error) => return Err(QueueError { buffer, error }),
        };
        let cmd = Command::QueueBuffer {
            queue: buffer.queue,
            index: buffer.index,
            handle,
            bytesused: buffer.bytesused as u32,
            timestamp: buffer.timestamp,
            flags: buffer.flags,
        };
        let (queue, index) = (buffer.queue, buffer.index as usize);
        st.queue(queue).slots[index].in_device = Some(buffer);
        lock(&self.mailbox.inbox).last_progress = Instant::now();
        if let Err(error) = self.core().send(self.id, &cmd) {
            let buffer = st.queue(queue).slots[index].in_device.take();
            return match buffer {
                Some(buffer) => Err(QueueError { buffer, error }),
                None => Ok(()),
            };
        }
        Ok(())
    }

    fn wait_event(&self, timeout: Duration) -> Result<Option<Event>, M2mError> {
        let deadline = Instant::now() + timeout;
        let watchdog = self.core().config.watchdog;
        // What the ring holds is read before the watchdog judges (nobody may
        // have read it while this session's thread was busy elsewhere).
        let mut drained = false;
        loop {
            // Taking a response and accounting for it happen under the state
            // lock (state before inbox, as everywhere), so a `stream_off` on
            // another thread sees either both or neither.
            let mut st = lock(&self.state);
            let mut inbox = lock(&self.mailbox.inbox);
            if let Some(response) = inbox.responses.pop_front() {
                drop(inbox);
                match self.absorb(&mut st, response)? {
                    Some(event) => return Ok(Some(event)),
                    None => continue,
                }
            }
            if let Some(f) = &inbox.fault {
                return Err(f.error());
            }
            let since = inbox.last_progress.elapsed();
            let seen = inbox.deliveries;
            drop(inbox);
            let stalled = drained && since > watchdog && st.device_has_work();
            drop(st);
            if stalled {
                self.mailbox.fail(Fault::Timeout(watchdog));
                return Err(M2mError::Timeout(watchdog));
            }
            let now = Instant::now();
            if now >= deadline && drained {
                return Ok(None);
            }
            let wait = deadline.saturating_duration_since(now).min(POLL);
            self.core().wait_delivery(&self.mailbox, seen, wait);
            drained = true;
        }
    }

    fn drain(&self) -> Result<(), M2mError> {
        let mut st = lock(&self.state);
        self.command(Command::Stop, Self::refused(QueueKind::Output))?;
        st.draining = st.capture.streaming;
        Ok(())
    }

    fn start(&self) -> Result<(), M2mError> {
        let mut st = lock(&self.state);
        self.command(Command::Start, Self::refused(QueueKind::Output))?;
        st.draining = false;
        st.stopped = false;
        Ok(())
    }
}

impl Drop for EmuSession {
    fn drop(&mut self) {
        let alive = self.check_fault().is_ok();
        if alive && let Err(e) = self.command(Command::Close, |_, t| M2mError::Firmware(t)) {
            log::warn!("VPU session {}: close failed: {e}", self.id);
        }
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for q in [&mut st.output, &mut st.capture] {
            for s in q.slots.iter_mut() {
                if let Some(h) = s.handle.take() {
                    self.vpu.core.iommu.unmap(h);
                }
            }
        }
        lock(&self.vpu.core.sessions).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::DmaBackend;
    use crate::vpu::driver::{EmuConfig, EmuVpu};

    fn session() -> (EmuVpu, EmuSession) {
        let vpu = EmuVpu::new(EmuConfig {
            backend: DmaBackend::Memfd,
            ..EmuConfig::default()
        })
        .unwrap();
        let s = vpu.open_session(Role::Decoder, PixelFormat::Fwht).unwrap();
        (vpu, s)
    }

    /// Delivers a response as if the interrupt handler had read it from the ring.
    fn inject(s: &EmuSession, r: Response) {
        s.vpu.core.dispatch(&r.encode(s.id, 0));
    }

    fn done(queue: QueueKind, index: u32, bytesused: u32) -> Response {
        Response::BufferDone {
            queue,
            index,
            bytesused,
            timestamp: 0,
            flags: BufferFlags::NONE,
            sequence: 0,
            error: String::new(),
        }
    }

    /// The firmware's minimum OUTPUT count is untrusted: kept within 1..=32.
    #[test]
    fn min_output_buffers_from_the_firmware_are_bounded() {
        let vpu = EmuVpu::new(EmuConfig {
            backend: DmaBackend::Memfd,
            ..EmuConfig::default()
        })
        .unwrap();
        let s = vpu.open_session(Role::Encoder, PixelFormat::H264).unwrap();
        assert_eq!(s.min_buffers(QueueKind::Output), 1);
        for (count, want) in [(4, 4), (0, 1), (1_000_000, 32)] {
            inject(&s, Response::MinOutputBuffers { count });
            assert_eq!(
                s.min_buffers(QueueKind::Output),
                want,
                "firmware said {count}"
            );
        }
        // Not an event: nothing waits in the queue.
        assert!(s.wait_event(Duration::ZERO).unwrap().is_none());
    }

    #[test]
    fn buffer_index_beyond_the_queue_is_refused() {
        let (_vpu, s) = session();
        inject(&s, done(QueueKind::Capture, 99, 0));
        let e = s.wait_event(Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string().contains("CAPTURE buffer 99, the queue has 0"),
            "{e}"
        );
        // The session stays failed.
        assert!(s.wait_event(Duration::ZERO).is_err());
    }

    #[test]
    fn buffer_the_host_never_queued_is_refused() {
        let (_vpu, s) = session();
        s.set_format(QueueKind::Output, &Format::coded(PixelFormat::Fwht, 64, 64))
            .unwrap();
        let _bufs = s
            .allocate_buffers(QueueKind::Output, 2, Memory::Allocate(Coherency::Coherent))
            .unwrap();
        inject(&s, done(QueueKind::Output, 1, 0));
        let e = s.wait_event(Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("had not queued"), "{e}");
    }

    #[test]
    fn bytesused_beyond_the_buffer_is_refused() {
        let (vpu, s) = session();
        s.set_format(QueueKind::Output, &Format::coded(PixelFormat::Fwht, 64, 64))
            .unwrap();
        let mut bufs = s
            .allocate_buffers(QueueKind::Output, 1, Memory::Allocate(Coherency::Coherent))
            .unwrap();
        s.stream_on(QueueKind::Output).unwrap();
        let size = bufs[0].region.size();
        // A hung core keeps the buffer, so only the forged completion comes back.
        vpu.faults().set_hang(true);
        let mut b = bufs.remove(0);
        b.bytesused = 1;
        s.queue(b).unwrap();
        inject(&s, done(QueueKind::Output, 0, size as u32 + 1));
        let e = s.wait_event(Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{} bytes in OUTPUT buffer 0", size + 1)),
            "{e}"
        );
        vpu.faults().set_hang(false);
    }

    #[test]
    fn source_change_to_an_unknown_format_is_refused() {
        let (_vpu, s) = session();
        inject(
            &s,
            Response::SourceChange {
                fourcc: u32::from_le_bytes(*b"ZZZZ"),
                width: 64,
                height: 64,
                colorimetry: Colorimetry::default(),
                min_buffers: 1,
                formats: vec![],
            },
        );
        let e = s.wait_event(Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("not a raw format"), "{e}");
    }

    #[test]
    fn responses_for_unknown_sessions_are_dropped() {
        let (vpu, s) = session();
        let mut msg = done(QueueKind::Capture, 0, 0).encode(s.id + 1000, 0);
        vpu.inner.core.dispatch(&msg);
        msg.session = 0;
        vpu.inner.core.dispatch(&msg);
        assert!(s.wait_event(Duration::from_millis(50)).unwrap().is_none());
    }
}
