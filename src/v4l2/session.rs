//! [`KernelSession`]: the m2m contract on one file handle of a V4L2
//! stateful codec node. See the module docs of `v4l2` for the design.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use v4l2r::bindings;
use v4l2r::ioctl::{
    self, BufferCapabilities, DecoderCmd, EncoderCommand, EventType, ExpbufFlags,
    MemoryConsistency, SelectionFlags, SelectionTarget, SelectionType, SubscribeEventFlags,
    UncheckedV4l2Buffer,
};
use v4l2r::memory::MemoryType;
use v4l2r::nix::errno::Errno;

use super::controls::{self, ControlInfo};
use super::device::{KernelDevice, WATCHDOG, enumerate_formats, open_node};
use super::format::{compatible_formats, fourcc_name, from_pix, known_format, queue_type, to_pix};
use crate::m2m::{
    Buffer, BufferFlags, Control, Event, Format, M2mError, Memory, PixelFormat, QueueError,
    QueueKind, Role, Session, SourceChange,
};
use crate::mem::{Checker, Coherency, Region};
use crate::sys::{PixFormat, poll_node};

/// Longest single `poll(2)`: the watchdog is looked at this often.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// One buffer index of a queue.
#[derive(Debug, Default)]
struct Slot {
    /// MMAP: the exported buffer, for good. DMABUF: the region queued now.
    region: Option<Arc<Region>>,
    /// Bytes of the buffer (MMAP: the driver's plane length).
    length: usize,
    /// The kernel holds the buffer (queued, not yet dequeued).
    queued: bool,
}

#[derive(Debug)]
struct QueueState {
    memory: Option<Memory>,
    slots: Vec<Slot>,
    streaming: bool,
    /// The format set (or, for an encoder's CAPTURE, implied) on the queue.
    format: Option<Format>,
    /// `V4L2_BUF_CAP_SUPPORTS_MMAP_CACHE_HINTS`.
    cache_hints: bool,
}

impl QueueState {
    fn new() -> QueueState {
        QueueState {
            memory: None,
            slots: Vec::new(),
            streaming: false,
            format: None,
            cache_hints: false,
        }
    }

    fn queued(&self) -> usize {
        self.slots.iter().filter(|s| s.queued).count()
    }
}

#[derive(Debug)]
struct State {
    output: QueueState,
    capture: QueueState,
    /// Events taken from the kernel, not yet handed out.
    pending: VecDeque<Event>,
    /// A CAPTURE buffer with `LAST` came out; the kernel answers `EPIPE`
    /// (and `POLLIN`) until the session starts again.
    stopped: bool,
    /// Formats the stream allows, from the last source change.
    stream_formats: Vec<PixelFormat>,
    /// When the device last completed something, or got work while idle.
    progress: Instant,
    /// Bumped whenever the client gives the device something to do.
    generation: u64,
    /// The session failed for good.
    dead: Option<String>,
}

impl State {
    fn queue(&self, kind: QueueKind) -> &QueueState {
        match kind {
            QueueKind::Output => &self.output,
            QueueKind::Capture => &self.capture,
        }
    }

    fn queue_mut(&mut self, kind: QueueKind) -> &mut QueueState {
        match kind {
            QueueKind::Output => &mut self.output,
            QueueKind::Capture => &mut self.capture,
        }
    }

    /// The device holds work it could do now: both queues stream and hold
    /// buffers, and no drain ended.
    fn device_busy(&self) -> bool {
        self.output.streaming
            && self.capture.streaming
            && self.output.queued() > 0
            && self.capture.queued() > 0
            && !self.stopped
    }
}

/// One session on a kernel V4L2 stateful codec node (one open file handle).
pub struct KernelSession {
    fd: File,
    path: PathBuf,
    role: Role,
    codec: PixelFormat,
    mplane: bool,
    checker: Arc<Checker>,
    watchdog: Duration,
    /// `V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME`, if the node has it.
    force_key_frame: Option<u32>,
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for KernelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSession")
            .field("path", &self.path)
            .field("role", &self.role)
            .field("codec", &self.codec)
            .field("mplane", &self.mplane)
            .finish_non_exhaustive()
    }
}

fn errno_text(e: impl Into<Errno>) -> String {
    let errno: Errno = e.into();
    format!("{} ({errno:?})", errno.desc())
}

/// The contract's timestamp in a `timeval`, exactly recoverable.
fn to_timeval(ts: u64) -> bindings::timeval {
    bindings::timeval {
        tv_sec: (ts / 1_000_000) as _,
        tv_usec: (ts % 1_000_000) as _,
    }
}

fn from_timeval(tv: bindings::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000)
        .saturating_add(tv.tv_usec.max(0) as u64)
}

/// Whether a coded FWHT frame is a key frame, from its header (flags word,
/// `FWHT_FL_I_FRAME`): vicodec's encoder sets neither `KEYFRAME` nor `PFRAME`
/// on its buffers. `None` for other codecs, or a buffer the CPU may not
/// read without a sync (it is only looked at when coherent).
fn fwht_keyframe(codec: PixelFormat, region: &Region, bytesused: usize) -> Option<bool> {
    const HEADER: usize = 44;
    const FLAGS_AT: usize = 20;
    const I_FRAME: u32 = 0x400;
    if codec != PixelFormat::Fwht || bytesused < HEADER || region.coherency() != Coherency::Coherent
    {
        return None;
    }
    let data = region.cpu_read();
    let word: [u8; 4] = data.get(FLAGS_AT..FLAGS_AT + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(word) & I_FRAME != 0)
}

impl KernelSession {
    pub(super) fn open(
        device: &KernelDevice,
        role: Role,
        codec: PixelFormat,
    ) -> Result<KernelSession, M2mError> {
        let path = device.path().to_path_buf();
        let fd = open_node(&path)?;
        let mut subscribe = vec![EventType::Eos];
        if role == Role::Decoder {
            subscribe.push(EventType::SourceChange(0));
        }
        for ev in subscribe {
            let what = format!("{ev:?}");
            ioctl::subscribe_event(&fd, ev, SubscribeEventFlags::empty()).map_err(|e| {
                M2mError::Kernel(format!(
                    "{}: VIDIOC_SUBSCRIBE_EVENT {what}: {}",
                    path.display(),
                    errno_text(e)
                ))
            })?;
        }
        let force_key_frame = controls::query(&fd, bindings::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME)
            .filter(ControlInfo::is_button)
            .map(|c| c.id);
        let session = KernelSession {
            fd,
            path,
            role,
            codec,
            mplane: device.is_mplane(),
            checker: Arc::clone(device.checker()),
            watchdog: WATCHDOG,
            force_key_frame,
            state: Mutex::new(State {
                output: QueueState::new(),
                capture: QueueState::new(),
                pending: VecDeque::new(),
                stopped: false,
                stream_formats: Vec::new(),
                progress: Instant::now(),
                generation: 0,
                dead: None,
            }),
            wake: Condvar::new(),
        };
        // The coded queue starts in the codec's format.
        let coded_queue = match role {
            Role::Decoder => QueueKind::Output,
            Role::Encoder => QueueKind::Capture,
        };
        let mut pix = session.g_fmt(coded_queue)?;
        if pix.pixelformat != codec.fourcc() {
            pix.pixelformat = codec.fourcc();
            session.s_fmt(coded_queue, &pix)?;
        }
        Ok(session)
    }

    /// The node's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Sets the watchdog bound (default 5 s).
    pub fn set_watchdog(&mut self, watchdog: Duration) {
        self.watchdog = watchdog;
    }

    /// Every control of the node.
    pub fn controls(&self) -> Vec<ControlInfo> {
        controls::enumerate(&self.fd)
    }

    /// `VIDIOC_S_PARM` on OUTPUT: the frame interval rate control works
    /// with. It is a hint: a node without frame intervals (vicodec has
    /// none) codes the same, so ENOTTY/EINVAL are logged, not errors.
    fn set_frame_rate(&self, num: u32, den: u32) -> Result<(), M2mError> {
        if num == 0 || den == 0 {
            return Err(M2mError::InvalidControl {
                control: Control::FrameRate { num, den },
                reason: "a frame rate needs a non-zero numerator and denominator".into(),
            });
        }
        let parm = bindings::v4l2_streamparm {
            type_: self.qtype(QueueKind::Output) as u32,
            parm: bindings::v4l2_streamparm__bindgen_ty_1 {
                output: bindings::v4l2_outputparm {
                    timeperframe: bindings::v4l2_fract {
                        numerator: den,
                        denominator: num,
                    },
                    ..Default::default()
                },
            },
        };
        match ioctl::s_parm::<_, bindings::v4l2_streamparm>(&self.fd, parm) {
            Ok(_) => Ok(()),
            Err(ioctl::GParmError::IoctlError(Errno::ENOTTY | Errno::EINVAL)) => {
                log::debug!(
                    "{}: no OUTPUT frame interval (VIDIOC_S_PARM); {num}/{den} fps not passed on",
                    self.path.display()
                );
                Ok(())
            }
            Err(ioctl::GParmError::IoctlError(e)) => {
                Err(self.kernel_err("VIDIOC_S_PARM OUTPUT", e))
            }
        }
    }

    fn set_checked(
        &self,
        c: &ControlInfo,
        value: i64,
        err: &dyn Fn(String) -> M2mError,
    ) -> Result<(), M2mError> {
        if !c.is_integer() {
            return Err(err(format!(
                "'{}' is not an integer control (type {})",
                c.name, c.kind
            )));
        }
        if !c.is_button() && !(c.minimum..=c.maximum).contains(&value) {
            return Err(err(format!(
                "'{}' takes {}..={}, not {value}",
                c.name, c.minimum, c.maximum
            )));
        }
        let v = i32::try_from(value).map_err(|_| err(format!("{value} does not fit 32 bits")))?;
        ioctl::s_ctrl(&self.fd, c.id, v)
            .map(drop)
            .map_err(|e| err(format!("VIDIOC_S_CTRL '{}' = {v}: {e}", c.name)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn kernel_err(&self, what: &str, e: impl Into<Errno>) -> M2mError {
        M2mError::Kernel(format!(
            "{}: {what}: {}",
            self.path.display(),
            errno_text(e)
        ))
    }

    fn qtype(&self, queue: QueueKind) -> v4l2r::QueueType {
        queue_type(queue, self.mplane)
    }

    fn g_fmt(&self, queue: QueueKind) -> Result<PixFormat, M2mError> {
        let f: bindings::v4l2_format = ioctl::g_fmt(&self.fd, self.qtype(queue))
            .map_err(|e| self.kernel_err(&format!("VIDIOC_G_FMT {queue}"), e))?;
        PixFormat::from_v4l2(&f).ok_or_else(|| M2mError::InvalidFormat {
            queue,
            reason: format!("the driver answered buffer type {}", f.type_),
        })
    }

    fn s_fmt(&self, queue: QueueKind, pix: &PixFormat) -> Result<PixFormat, M2mError> {
        let type_ = self.qtype(queue) as u32;
        let mut fd = self.fd.as_fd();
        let f: bindings::v4l2_format =
            ioctl::s_fmt(&mut fd, pix.to_v4l2(type_)).map_err(|e| M2mError::InvalidFormat {
                queue,
                reason: format!(
                    "{}: VIDIOC_S_FMT {} {}x{}: {e}",
                    self.path.display(),
                    fourcc_name(pix.pixelformat),
                    pix.width,
                    pix.height
                ),
            })?;
        PixFormat::from_v4l2(&f).ok_or_else(|| M2mError::InvalidFormat {
            queue,
            reason: format!("the driver answered buffer type {}", f.type_),
        })
    }

    /// The visible rectangle of a raw queue (encoder OUTPUT crop, decoder
    /// CAPTURE compose), `None` where the driver has no selection.
    fn visible(&self, queue: QueueKind) -> Option<(u32, u32)> {
        let (sel, target) = match (self.role, queue) {
            (Role::Encoder, QueueKind::Output) => (SelectionType::Output, SelectionTarget::Crop),
            (Role::Decoder, QueueKind::Capture) => {
                (SelectionType::Capture, SelectionTarget::Compose)
            }
            _ => return None,
        };
        ioctl::g_selection::<bindings::v4l2_rect>(&self.fd, sel, target)
            .ok()
            .map(|r| (r.width, r.height))
    }

    fn read_format(&self, queue: QueueKind) -> Result<Format, M2mError> {
        let pix = self.g_fmt(queue)?;
        from_pix(queue, &pix, self.visible(queue))
    }

    fn offered(&self, queue: QueueKind) -> Vec<PixelFormat> {
        let mut out: Vec<PixelFormat> = Vec::new();
        for f in enumerate_formats(&self.fd, self.qtype(queue)) {
            if let Some(p) = known_format(f.fourcc).filter(|p| !out.contains(p)) {
                out.push(p);
            }
        }
        out
    }

    /// Checks `width` x `height` against `VIDIOC_ENUM_FRAMESIZES`.
    fn check_size(&self, queue: QueueKind, format: &Format) -> Result<(), M2mError> {
        let Ok(fs) = ioctl::enum_frame_sizes::<bindings::v4l2_frmsizeenum>(
            &self.fd,
            0,
            format.pixelformat.fourcc().into(),
        ) else {
            return Ok(());
        };
        let (w, h) = (format.width, format.height);
        let fits = match fs.size() {
            Some(ioctl::FrmSizeTypes::StepWise(s)) => {
                (s.min_width..=s.max_width).contains(&w)
                    && (s.min_height..=s.max_height).contains(&h)
            }
            Some(ioctl::FrmSizeTypes::Discrete(_)) => {
                let mut sizes = Vec::new();
                for i in 0..64 {
                    match ioctl::enum_frame_sizes::<bindings::v4l2_frmsizeenum>(
                        &self.fd,
                        i,
                        format.pixelformat.fourcc().into(),
                    ) {
                        Ok(f) => {
                            if let Some(ioctl::FrmSizeTypes::Discrete(d)) = f.size() {
                                sizes.push((d.width, d.height));
                            }
                        }
                        Err(_) => break,
                    }
                }
                sizes.contains(&(w, h))
            }
            None => true,
        };
        if fits {
            return Ok(());
        }
        let range = match fs.size() {
            Some(ioctl::FrmSizeTypes::StepWise(s)) => format!(
                "{}..{} x {}..{}",
                s.min_width, s.max_width, s.min_height, s.max_height
            ),
            _ => "a list of fixed sizes".into(),
        };
        Err(M2mError::InvalidFormat {
            queue,
            reason: format!(
                "{} takes {} frames of {range}, not {w}x{h}",
                self.path.display(),
                format.pixelformat
            ),
        })
    }

    /// Reads the driver's CAPTURE format after `V4L2_EVENT_SOURCE_CHANGE`.
    fn source_change(&self, st: &mut State) -> Result<SourceChange, M2mError> {
        let format = self.read_format(QueueKind::Capture)?;
        let formats = compatible_formats(format.pixelformat, &self.offered(QueueKind::Capture));
        st.stream_formats = formats.clone();
        let min_capture_buffers = self.min_buffers(QueueKind::Capture);
        log::debug!(
            "{}: source change: {}x{} {} (allows {formats:?}), {min_capture_buffers} CAPTURE buffers",
            self.path.display(),
            format.width,
            format.height,
            format.pixelformat
        );
        Ok(SourceChange {
            format,
            formats,
            min_capture_buffers,
        })
    }

    /// Exports MMAP buffer `index` and maps it.
    fn export(
        &self,
        queue: QueueKind,
        index: u32,
        coherency: Coherency,
    ) -> Result<(Arc<Region>, usize), M2mError> {
        let qb: UncheckedV4l2Buffer = ioctl::querybuf(&self.fd, self.qtype(queue), index as usize)
            .map_err(|e| {
                M2mError::Kernel(format!(
                    "{}: VIDIOC_QUERYBUF {queue} {index}: {e}",
                    self.path.display()
                ))
            })?;
        let length = match &qb.1 {
            Some(planes) if self.mplane => {
                if qb.0.length != 1 {
                    return Err(M2mError::InvalidFormat {
                        queue,
                        reason: format!(
                            "buffers of {} memory planes; only one is supported",
                            qb.0.length
                        ),
                    });
                }
                planes[0].length as usize
            }
            _ => qb.0.length as usize,
        };
        let fd: OwnedFd = ioctl::expbuf(
            &self.fd,
            self.qtype(queue),
            index as usize,
            0,
            ExpbufFlags::CLOEXEC | ExpbufFlags::RDWR,
        )
        .map_err(|e| self.kernel_err(&format!("VIDIOC_EXPBUF {queue} {index}"), e))?;
        let name = format!(
            "{}-{}-{index}",
            self.path.display(),
            queue.to_string().to_lowercase()
        );
        let region = Region::import(&name, fd, length, coherency, &self.checker)?;
        Ok((region, length))
    }

    fn request(
        &self,
        st: &mut State,
        queue: QueueKind,
        count: u32,
        memory: Memory,
        create: bool,
    ) -> Result<Vec<Buffer>, M2mError> {
        let mem_type = match memory {
            Memory::Allocate(_) => MemoryType::Mmap,
            Memory::Import => MemoryType::DmaBuf,
        };
        let qt = self.qtype(queue);
        let first = if create {
            let q = st.queue(queue);
            if q.memory != Some(memory) {
                return Err(M2mError::InvalidState {
                    queue,
                    reason: format!(
                        "CREATE_BUFS with memory {memory:?}, the queue's memory is {:?}",
                        q.memory
                    ),
                });
            }
            let f: bindings::v4l2_format = ioctl::g_fmt(&self.fd, qt)
                .map_err(|e| self.kernel_err(&format!("VIDIOC_G_FMT {queue}"), e))?;
            let created: bindings::v4l2_create_buffers =
                ioctl::create_bufs(&self.fd, count, mem_type, f).map_err(|e| {
                    M2mError::InvalidState {
                        queue,
                        reason: format!(
                            "{}: VIDIOC_CREATE_BUFS of {count} more (now {}): {e}",
                            self.path.display(),
                            st.queue(queue).slots.len()
                        ),
                    }
                })?;
            if created.count < count {
                log::warn!(
                    "{}: {queue}: asked {count} more buffers, got {}",
                    self.path.display(),
                    created.count
                );
            }
            let q = st.queue_mut(queue);
            let first = created.index;
            q.slots
                .resize_with((first + created.count) as usize, Slot::default);
            first..first + created.count
        } else {
            let probe: ioctl::RequestBuffers =
                ioctl::reqbufs(&self.fd, qt, mem_type, 0, MemoryConsistency::empty())
                    .map_err(|e| self.kernel_err(&format!("VIDIOC_REQBUFS {queue} 0"), e))?;
            let hints = probe
                .capabilities
                .contains(BufferCapabilities::SUPPORTS_MMAP_CACHE_HINTS);
            let flags = if hints && memory == Memory::Allocate(Coherency::Cacheable) {
                MemoryConsistency::MEMORY_FLAG_NON_COHERENT
            } else {
                MemoryConsistency::empty()
            };
            let q = st.queue_mut(queue);
            q.slots.clear();
            q.memory = None;
            q.cache_hints = hints;
            if count == 0 {
                return Ok(Vec::new());
            }
            let got: ioctl::RequestBuffers = ioctl::reqbufs(&self.fd, qt, mem_type, count, flags)
                .map_err(|e| {
                self.kernel_err(&format!("VIDIOC_REQBUFS {queue} {count} {mem_type:?}"), e)
            })?;
            if got.count == 0 {
                return Err(M2mError::Kernel(format!(
                    "{}: VIDIOC_REQBUFS {queue}: the driver gave no buffers",
                    self.path.display()
                )));
            }
            let q = st.queue_mut(queue);
            q.memory = Some(memory);
            q.slots.resize_with(got.count as usize, Slot::default);
            0..got.count
        };
        let mut out = Vec::new();
        if let Memory::Allocate(coherency) = memory {
            for index in first {
                let (region, length) = self.export(queue, index, coherency)?;
                let slot = &mut st.queue_mut(queue).slots[index as usize];
                slot.region = Some(Arc::clone(&region));
                slot.length = length;
                out.push(Buffer::new(queue, index, region));
            }
        }
        Ok(out)
    }

    /// Takes every event and done buffer the kernel has ready into `pending`.
    fn collect(&self, st: &mut State, want: crate::sys::NodeReady) -> Result<(), M2mError> {
        if want.event {
            loop {
                match ioctl::dqevent::<bindings::v4l2_event>(&self.fd) {
                    Ok(ev) if ev.type_ == bindings::V4L2_EVENT_SOURCE_CHANGE => {
                        let sc = self.source_change(st)?;
                        st.pending.push_back(Event::SourceChange(sc));
                    }
                    Ok(ev) => log::trace!("{}: event {}", self.path.display(), ev.type_),
                    Err(ioctl::DqEventError::NotReady) => break,
                    Err(e) => return Err(self.kernel_err("VIDIOC_DQEVENT", e)),
                }
            }
        }
        for (queue, ready) in [
            (QueueKind::Output, want.output),
            (QueueKind::Capture, want.capture),
        ] {
            if !ready {
                continue;
            }
            while st.queue(queue).streaming && !(queue == QueueKind::Capture && st.stopped) {
                match ioctl::dqbuf::<UncheckedV4l2Buffer>(&self.fd, self.qtype(queue)) {
                    Ok(b) => {
                        let buffer = self.dequeued(st, queue, b)?;
                        st.progress = Instant::now();
                        st.pending.push_back(Event::BufferDone(buffer));
                    }
                    Err(ioctl::DqBufError::IoctlError(ioctl::DqBufIoctlError::NotReady)) => break,
                    Err(ioctl::DqBufError::IoctlError(ioctl::DqBufIoctlError::Eos)) => {
                        st.stopped = true;
                        break;
                    }
                    Err(e) => {
                        return Err(M2mError::Kernel(format!(
                            "{}: VIDIOC_DQBUF {queue}: {e}",
                            self.path.display()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns a dequeued `v4l2_buffer` into the contract's buffer.
    fn dequeued(
        &self,
        st: &mut State,
        queue: QueueKind,
        b: UncheckedV4l2Buffer,
    ) -> Result<Buffer, M2mError> {
        let index = b.0.index;
        let q = st.queue_mut(queue);
        let slot = q.slots.get_mut(index as usize).filter(|s| s.queued);
        let Some(slot) = slot else {
            return Err(M2mError::Kernel(format!(
                "{}: the driver returned {queue} buffer {index}, which was not queued",
                self.path.display()
            )));
        };
        slot.queued = false;
        let region = match q.memory {
            Some(Memory::Import) => slot.region.take(),
            _ => slot.region.clone(),
        };
        let Some(region) = region else {
            return Err(M2mError::Kernel(format!(
                "{}: {queue} buffer {index} has no memory",
                self.path.display()
            )));
        };
        let (bytesused, data_offset) = match &b.1 {
            Some(planes) if self.mplane => (planes[0].bytesused, planes[0].data_offset),
            _ => (b.0.bytesused, 0),
        };
        let kflags = ioctl::BufferFlags::from_bits_truncate(b.0.flags);
        let mut flags = BufferFlags::NONE;
        for (k, f) in [
            (ioctl::BufferFlags::KEYFRAME, BufferFlags::KEYFRAME),
            (ioctl::BufferFlags::PFRAME, BufferFlags::PFRAME),
            (ioctl::BufferFlags::LAST, BufferFlags::LAST),
            (ioctl::BufferFlags::ERROR, BufferFlags::ERROR),
        ] {
            if kflags.contains(k) {
                flags.insert(f);
            }
        }
        let bytesused = (bytesused as usize).min(region.size());
        if self.role == Role::Encoder
            && queue == QueueKind::Capture
            && !flags.contains(BufferFlags::KEYFRAME)
            && !flags.contains(BufferFlags::PFRAME)
            && let Some(key) = fwht_keyframe(self.codec, &region, bytesused)
        {
            flags.insert(if key {
                BufferFlags::KEYFRAME
            } else {
                BufferFlags::PFRAME
            });
        }
        let timestamp = from_timeval(b.0.timestamp);
        let mut error = None;
        if flags.contains(BufferFlags::ERROR) {
            error = Some(format!(
                "{} flagged {queue} buffer {index} (timestamp {timestamp}) \
                 V4L2_BUF_FLAG_ERROR: the data could not be {}",
                self.path.display(),
                match self.role {
                    Role::Decoder => "decoded (corrupt or truncated bitstream)",
                    Role::Encoder => "encoded",
                }
            ));
        }
        if data_offset != 0 {
            flags.insert(BufferFlags::ERROR);
            error = Some(format!(
                "{}: {queue} buffer {index} has its data at offset {data_offset}, \
                 which this plugin does not support",
                self.path.display()
            ));
        }
        if flags.contains(BufferFlags::LAST) && queue == QueueKind::Capture {
            st.stopped = true;
        }
        log::trace!(
            "{}: DQBUF {queue} {index}: {bytesused} bytes, ts {timestamp}, flags {flags:?}",
            self.path.display()
        );
        Ok(Buffer {
            queue,
            index,
            region,
            bytesused,
            timestamp,
            flags,
            sequence: b.0.sequence,
            error,
        })
    }

    #[allow(clippy::result_large_err)]
    fn try_queue(&self, st: &mut State, mut buffer: Buffer) -> Result<(), QueueError> {
        let queue = buffer.queue;
        let fail = |buffer: Buffer, error: M2mError| Err(QueueError { buffer, error });
        let invalid = |reason: String| M2mError::InvalidState { queue, reason };
        if let Some(reason) = &st.dead {
            return fail(buffer, M2mError::Kernel(reason.clone()));
        }
        let q = st.queue(queue);
        let Some(memory) = q.memory else {
            return fail(buffer, invalid("no buffers allocated (REQBUFS)".into()));
        };
        let index = buffer.index;
        let Some(slot) = q.slots.get(index as usize) else {
            let n = q.slots.len();
            return fail(
                buffer,
                invalid(format!("no buffer index {index} ({n} allocated)")),
            );
        };
        if slot.queued {
            return fail(buffer, invalid(format!("buffer {index} is already queued")));
        }
        let length = match memory {
            Memory::Allocate(_) => {
                let own = slot
                    .region
                    .as_ref()
                    .is_some_and(|r| Arc::ptr_eq(r, &buffer.region));
                if !own {
                    return fail(
                        buffer,
                        invalid(format!("buffer {index} does not hold its own memory")),
                    );
                }
                slot.length
            }
            Memory::Import => buffer.region.size(),
        };
        if queue == QueueKind::Output && buffer.bytesused > length {
            let reason = format!(
                "buffer {index}: {} bytes used in a {length}-byte buffer",
                buffer.bytesused
            );
            return fail(buffer, invalid(reason));
        }
        let hints = q.cache_hints;
        // Cache maintenance as the contract asks: a buffer the CPU wrote
        // goes to the device (its CPU writes were cleaned when the write
        // guard ended, DMA_BUF_IOCTL_SYNC); one the CPU never touched tells
        // the kernel so.
        let mut kflags = ioctl::BufferFlags::empty();
        if buffer.region.coherency() == Coherency::Cacheable {
            if buffer.flags.contains(BufferFlags::NO_CACHE_CLEAN) {
                if hints {
                    kflags |= ioctl::BufferFlags::NO_CACHE_CLEAN;
                }
            } else if let Err(e) = buffer.region.sync_for_device() {
                return fail(buffer, e.into());
            }
            if hints && queue == QueueKind::Output {
                kflags |= ioctl::BufferFlags::NO_CACHE_INVALIDATE;
            }
        }
        if queue == QueueKind::Output
            && self.role == Role::Encoder
            && buffer.flags.contains(BufferFlags::KEYFRAME)
        {
            if let Some(id) = self.force_key_frame {
                if let Err(e) = ioctl::s_ctrl(&self.fd, id, 1) {
                    log::warn!("{}: force key frame: {e}", self.path.display());
                }
            } else {
                log::debug!(
                    "{}: no force-key-frame control; the key frame request of buffer {index} is not passed on",
                    self.path.display()
                );
            }
        }
        let qt = self.qtype(queue);
        let mut v = UncheckedV4l2Buffer::new_for_querybuf(qt, Some(index));
        v.0.memory = match memory {
            Memory::Allocate(_) => MemoryType::Mmap,
            Memory::Import => MemoryType::DmaBuf,
        } as u32;
        v.0.flags = kflags.bits();
        v.0.field = bindings::v4l2_field_V4L2_FIELD_NONE;
        v.0.timestamp = to_timeval(buffer.timestamp);
        let bytesused = match queue {
            QueueKind::Output => buffer.bytesused as u32,
            QueueKind::Capture => 0,
        };
        let raw_fd = buffer.region.fd().as_raw_fd();
        match &mut v.1 {
            Some(planes) => {
                v.0.length = 1;
                planes[0].bytesused = bytesused;
                planes[0].length = length as u32;
                if memory == Memory::Import {
                    planes[0].m.fd = raw_fd;
                }
            }
            None => {
                v.0.bytesused = bytesused;
                v.0.length = length as u32;
                if memory == Memory::Import {
                    v.0.m.fd = raw_fd;
                }
            }
        }
        let was_busy = st.device_busy();
        if let Err(e) = ioctl::qbuf::<_, UncheckedV4l2Buffer>(&self.fd, v) {
            let error = M2mError::Kernel(format!(
                "{}: VIDIOC_QBUF {queue} {index}: {e}",
                self.path.display()
            ));
            return fail(buffer, error);
        }
        log::trace!(
            "{}: QBUF {queue} {index}: {bytesused} bytes, ts {}",
            self.path.display(),
            buffer.timestamp
        );
        let slot = &mut st.queue_mut(queue).slots[index as usize];
        slot.queued = true;
        if memory == Memory::Import {
            slot.length = length;
            slot.region = Some(Arc::clone(&buffer.region));
        }
        buffer.bytesused = 0;
        drop(buffer);
        if !was_busy {
            st.progress = Instant::now();
        }
        st.generation += 1;
        self.wake.notify_all();
        Ok(())
    }

    /// After `LAST` and `*_CMD_START`: makes sure CAPTURE dequeues again.
    /// Some drivers (vicodec up to at least 6.12) clear their stopped state
    /// on START but not the queue's "last buffer dequeued" mark, so DQBUF
    /// keeps failing with `EPIPE`; the V4L2 codec spec's other way to resume,
    /// STREAMOFF + STREAMON of CAPTURE, clears it. The buffers CAPTURE held
    /// are queued again, so the client sees nothing of this.
    fn resume_capture(&self, st: &mut State) -> Result<(), M2mError> {
        let qt = self.qtype(QueueKind::Capture);
        match ioctl::dqbuf::<UncheckedV4l2Buffer>(&self.fd, qt) {
            Ok(b) => {
                let buffer = self.dequeued(st, QueueKind::Capture, b)?;
                st.pending.push_back(Event::BufferDone(buffer));
                return Ok(());
            }
            Err(ioctl::DqBufError::IoctlError(ioctl::DqBufIoctlError::Eos)) => {}
            Err(_) => return Ok(()),
        }
        log::debug!(
            "{}: CAPTURE still ends in EPIPE after START: STREAMOFF/STREAMON",
            self.path.display()
        );
        // STREAMOFF discards whatever the driver completed but DQBUF could
        // not hand out any more: take it first.
        self.take_done_capture(st)?;
        ioctl::streamoff(&self.fd, qt)
            .map_err(|e| self.kernel_err("VIDIOC_STREAMOFF CAPTURE (resume)", e))?;
        ioctl::streamon(&self.fd, qt)
            .map_err(|e| self.kernel_err("VIDIOC_STREAMON CAPTURE (resume)", e))?;
        let requeue: Vec<Buffer> = st
            .capture
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(_, slot)| slot.queued)
            .filter_map(|(index, slot)| {
                slot.queued = false;
                slot.region
                    .clone()
                    .map(|r| Buffer::new(QueueKind::Capture, index as u32, r))
            })
            .collect();
        st.stopped = false;
        for mut b in requeue {
            b.flags = BufferFlags::NO_CACHE_CLEAN;
            self.try_queue(st, b).map_err(|e| e.error)?;
        }
        Ok(())
    }

    /// Takes the CAPTURE buffers the driver completed after the LAST one
    /// (DQBUF answers EPIPE once LAST was dequeued) with QUERYBUF, in
    /// sequence order, into `pending`, so that no frame is lost.
    ///
    /// vicodec (and any driver on v4l2-mem2mem's generic drain) can return
    /// the empty LAST buffer before the drain's final frame:
    /// `V4L2_DEC_CMD_STOP` finds the OUTPUT queue empty once `device_run`,
    /// on the m2m worker, has removed the frame's OUTPUT buffer, and flags
    /// another CAPTURE buffer LAST at once, while the frame's own CAPTURE
    /// buffer is only marked done right after.
    fn take_done_capture(&self, st: &mut State) -> Result<(), M2mError> {
        let qt = self.qtype(QueueKind::Capture);
        let queued: Vec<usize> = st
            .capture
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.queued)
            .map(|(index, _)| index)
            .collect();
        let mut done = Vec::new();
        for index in queued {
            let b: UncheckedV4l2Buffer = ioctl::querybuf(&self.fd, qt, index).map_err(|e| {
                M2mError::Kernel(format!(
                    "{}: VIDIOC_QUERYBUF CAPTURE {index}: {e}",
                    self.path.display()
                ))
            })?;
            let flags = ioctl::BufferFlags::from_bits_truncate(b.0.flags);
            if flags.contains(ioctl::BufferFlags::DONE)
                && !flags.contains(ioctl::BufferFlags::QUEUED)
            {
                done.push(b);
            }
        }
        done.sort_by_key(|b| b.0.sequence);
        for b in done {
            let buffer = self.dequeued(st, QueueKind::Capture, b)?;
            log::debug!(
                "{}: CAPTURE buffer {} (timestamp {}) completed after LAST: taken",
                self.path.display(),
                buffer.index,
                buffer.timestamp
            );
            st.pending.push_back(Event::BufferDone(buffer));
        }
        Ok(())
    }

    fn command(&self, start: bool) -> Result<(), M2mError> {
        let (name, r) = match (self.role, start) {
            (Role::Decoder, false) => (
                "V4L2_DEC_CMD_STOP",
                ioctl::decoder_cmd::<_, ()>(&self.fd, DecoderCmd::stop())
                    .map_err(|e| e.to_string()),
            ),
            (Role::Decoder, true) => (
                "V4L2_DEC_CMD_START",
                ioctl::decoder_cmd::<_, ()>(&self.fd, DecoderCmd::start())
                    .map_err(|e| e.to_string()),
            ),
            (Role::Encoder, false) => (
                "V4L2_ENC_CMD_STOP",
                ioctl::encoder_cmd::<_, ()>(&self.fd, &EncoderCommand::Stop(false))
                    .map_err(|e| e.to_string()),
            ),
            (Role::Encoder, true) => (
                "V4L2_ENC_CMD_START",
                ioctl::encoder_cmd::<_, ()>(&self.fd, &EncoderCommand::Start)
                    .map_err(|e| e.to_string()),
            ),
        };
        r.map_err(|e| M2mError::Kernel(format!("{}: {name}: {e}", self.path.display())))
    }
}

impl Session for KernelSession {
    fn role(&self) -> Role {
        self.role
    }

    fn codec(&self) -> PixelFormat {
        self.codec
    }

    fn enum_formats(&self, queue: QueueKind) -> Vec<PixelFormat> {
        let st = self.lock();
        if self.role == Role::Decoder
            && queue == QueueKind::Capture
            && !st.stream_formats.is_empty()
        {
            return st.stream_formats.clone();
        }
        drop(st);
        self.offered(queue)
    }

    fn set_format(&self, queue: QueueKind, format: &Format) -> Result<Format, M2mError> {
        let coded_queue = match self.role {
            Role::Decoder => QueueKind::Output,
            Role::Encoder => QueueKind::Capture,
        };
        let invalid = |reason: String| M2mError::InvalidFormat { queue, reason };
        if (queue == coded_queue) != format.pixelformat.is_coded() {
            return Err(invalid(format!(
                "a {}'s {queue} queue takes {} formats, not {}",
                self.role,
                if queue == coded_queue { "coded" } else { "raw" },
                format.pixelformat
            )));
        }
        if queue == coded_queue && format.pixelformat != self.codec {
            return Err(invalid(format!(
                "this session codes {}, not {}",
                self.codec, format.pixelformat
            )));
        }
        if self.lock().queue(queue).streaming {
            return Err(invalid("the queue is streaming".into()));
        }
        let offered = self.offered(queue);
        if !offered.contains(&format.pixelformat) {
            return Err(invalid(format!(
                "{} offers {offered:?} here, not {}",
                self.path.display(),
                format.pixelformat
            )));
        }
        // A decoder's OUTPUT may be set before the size is known (0x0).
        if !(queue == QueueKind::Output && self.role == Role::Decoder && format.width == 0) {
            self.check_size(queue, format)?;
        }
        let mut pix = to_pix(format);
        if queue == coded_queue {
            pix.planes[0].bytesperline = 0;
        }
        let set = self.s_fmt(queue, &pix)?;
        if set.pixelformat != format.pixelformat.fourcc() {
            return Err(invalid(format!(
                "asked {}, the driver chose {}",
                format.pixelformat,
                fourcc_name(set.pixelformat)
            )));
        }
        if self.role == Role::Encoder && queue == QueueKind::Output {
            let visible = (format.width, format.height);
            if visible != (set.width, set.height) {
                let rect = bindings::v4l2_rect {
                    left: 0,
                    top: 0,
                    width: format.width,
                    height: format.height,
                };
                ioctl::s_selection::<_, bindings::v4l2_rect>(
                    &self.fd,
                    SelectionType::Output,
                    SelectionTarget::Crop,
                    rect,
                    SelectionFlags::empty(),
                )
                .map_err(|e| {
                    invalid(format!(
                        "{}: VIDIOC_S_SELECTION crop {}x{}: {e}",
                        self.path.display(),
                        format.width,
                        format.height
                    ))
                })?;
            }
        }
        let effective = self.read_format(queue)?;
        let mut st = self.lock();
        st.queue_mut(queue).format = Some(effective.clone());
        if self.role == Role::Encoder && queue == QueueKind::Output {
            drop(st);
            let coded = self.read_format(QueueKind::Capture)?;
            self.lock().capture.format = Some(coded);
        }
        Ok(effective)
    }

    fn format(&self, queue: QueueKind) -> Result<Format, M2mError> {
        self.read_format(queue)
    }

    fn set_control(&self, control: Control) -> Result<(), M2mError> {
        let (id, value, name) = match control {
            Control::GopSize(v) => (
                bindings::V4L2_CID_MPEG_VIDEO_GOP_SIZE,
                i64::from(v),
                "GOP size",
            ),
            Control::IFrameQp(v) => (
                bindings::V4L2_CID_FWHT_I_FRAME_QP,
                i64::from(v),
                "I-frame QP",
            ),
            Control::PFrameQp(v) => (
                bindings::V4L2_CID_FWHT_P_FRAME_QP,
                i64::from(v),
                "P-frame QP",
            ),
            Control::Bitrate(v) => (
                bindings::V4L2_CID_MPEG_VIDEO_BITRATE,
                i64::from(v),
                "bitrate",
            ),
            Control::ForceKeyFrame => (
                bindings::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME,
                1,
                "force key frame",
            ),
            Control::BitrateMode(m) => (
                bindings::V4L2_CID_MPEG_VIDEO_BITRATE_MODE,
                i64::from(m as u32),
                "bitrate mode",
            ),
            Control::MinQp(v) => (
                bindings::V4L2_CID_MPEG_VIDEO_H264_MIN_QP,
                i64::from(v),
                "H.264 minimum QP",
            ),
            Control::MaxQp(v) => (
                bindings::V4L2_CID_MPEG_VIDEO_H264_MAX_QP,
                i64::from(v),
                "H.264 maximum QP",
            ),
            Control::H264Profile(p) => (
                bindings::V4L2_CID_MPEG_VIDEO_H264_PROFILE,
                i64::from(p as u32),
                "H.264 profile",
            ),
            // No level asked for: the driver keeps its own choice.
            Control::H264Level(None) => return Ok(()),
            Control::H264Level(Some(l)) => (
                bindings::V4L2_CID_MPEG_VIDEO_H264_LEVEL,
                i64::from(l.v4l2),
                "H.264 level",
            ),
            Control::FrameRate { num, den } => return self.set_frame_rate(num, den),
            Control::LowLatency(_) => {
                return Err(M2mError::InvalidControl {
                    control,
                    reason: format!(
                        "V4L2 has no low-latency control: {} codes as its driver does \
                         (the frames it holds are its V4L2_CID_MIN_BUFFERS_FOR_OUTPUT)",
                        self.path.display()
                    ),
                });
            }
        };
        let Some(info) = controls::query(&self.fd, id) else {
            return Err(M2mError::InvalidControl {
                control,
                reason: format!("{} has no {name} control", self.path.display()),
            });
        };
        self.set_checked(&info, value, &|reason| M2mError::InvalidControl {
            control,
            reason,
        })
    }

    /// Sets a control by the name `v4l2-ctl -l` prints (`video_gop_size`,
    /// `fwht_i_frame_qp_value` ...), as the v4l2 elements' `extra-controls`
    /// do; the driver's own name and any spelling that normalises to the
    /// same key work too. Checked against the control's range first.
    fn set_named_control(&self, name: &str, value: i64) -> Result<(), M2mError> {
        let key = controls::normalise_control_name(name);
        let all = self.controls();
        let Some(c) = all.iter().find(|c| c.key == key) else {
            let known: Vec<&str> = all.iter().map(|c| c.key.as_str()).collect();
            return Err(M2mError::UnknownControl {
                name: name.to_owned(),
                reason: format!(
                    "does not exist on {} (it has {})",
                    self.path.display(),
                    known.join(", ")
                ),
            });
        };
        self.set_checked(c, value, &|reason| M2mError::UnknownControl {
            name: name.to_owned(),
            reason,
        })
    }

    fn min_buffers(&self, queue: QueueKind) -> u32 {
        let id = match queue {
            QueueKind::Output => bindings::V4L2_CID_MIN_BUFFERS_FOR_OUTPUT,
            QueueKind::Capture => bindings::V4L2_CID_MIN_BUFFERS_FOR_CAPTURE,
        };
        ioctl::g_ctrl(&self.fd, id)
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v > 0)
            .unwrap_or(1)
    }

    fn allocate_buffers(
        &self,
        queue: QueueKind,
        count: u32,
        memory: Memory,
    ) -> Result<Vec<Buffer>, M2mError> {
        let mut st = self.lock();
        let q = st.queue(queue);
        if q.streaming {
            return Err(M2mError::InvalidState {
                queue,
                reason: "REQBUFS while streaming".into(),
            });
        }
        if q.format.is_none() {
            return Err(M2mError::InvalidState {
                queue,
                reason: "no format set on the queue yet (set_format first)".into(),
            });
        }
        if q.slots.iter().any(|s| s.queued) {
            return Err(M2mError::InvalidState {
                queue,
                reason: "buffers are still queued".into(),
            });
        }
        self.request(&mut st, queue, count, memory, false)
    }

    fn add_buffers(
        &self,
        queue: QueueKind,
        count: u32,
        memory: Memory,
    ) -> Result<Vec<Buffer>, M2mError> {
        let mut st = self.lock();
        self.request(&mut st, queue, count, memory, true)
    }

    fn stream_on(&self, queue: QueueKind) -> Result<(), M2mError> {
        let mut st = self.lock();
        if st.queue(queue).streaming {
            return Ok(());
        }
        ioctl::streamon(&self.fd, self.qtype(queue))
            .map_err(|e| self.kernel_err(&format!("VIDIOC_STREAMON {queue}"), e))?;
        st.queue_mut(queue).streaming = true;
        if queue == QueueKind::Capture {
            st.stopped = false;
        }
        st.progress = Instant::now();
        st.generation += 1;
        self.wake.notify_all();
        Ok(())
    }

    fn stream_off(&self, queue: QueueKind) -> Result<Vec<Buffer>, M2mError> {
        let mut st = self.lock();
        ioctl::streamoff(&self.fd, self.qtype(queue))
            .map_err(|e| self.kernel_err(&format!("VIDIOC_STREAMOFF {queue}"), e))?;
        let q = st.queue_mut(queue);
        q.streaming = false;
        let import = q.memory == Some(Memory::Import);
        let mut back = Vec::new();
        for (index, slot) in q.slots.iter_mut().enumerate() {
            if !slot.queued {
                continue;
            }
            slot.queued = false;
            let region = if import {
                slot.region.take()
            } else {
                slot.region.clone()
            };
            if let Some(region) = region {
                let mut b = Buffer::new(queue, index as u32, region);
                b.flags = BufferFlags::RETURNED;
                back.push(b);
            }
        }
        if queue == QueueKind::Capture {
            st.stopped = false;
        }
        st.generation += 1;
        self.wake.notify_all();
        Ok(back)
    }

    fn queue(&self, buffer: Buffer) -> Result<(), QueueError> {
        let mut st = self.lock();
        self.try_queue(&mut st, buffer)
    }

    fn wait_event(&self, timeout: Duration) -> Result<Option<Event>, M2mError> {
        let deadline = Instant::now() + timeout;
        let mut polled = false;
        loop {
            let (want_capture, generation) = {
                let mut st = self.lock();
                if let Some(ev) = st.pending.pop_front() {
                    return Ok(Some(ev));
                }
                if let Some(reason) = &st.dead {
                    return Err(M2mError::Kernel(reason.clone()));
                }
                if st.device_busy() && st.progress.elapsed() > self.watchdog {
                    st.dead = Some(format!(
                        "{}: the driver completed nothing for {:?} while holding work",
                        self.path.display(),
                        self.watchdog
                    ));
                    return Err(M2mError::Timeout(self.watchdog));
                }
                (st.capture.streaming && !st.stopped, st.generation)
            };
            let now = Instant::now();
            if polled && now >= deadline {
                return Ok(None);
            }
            let slice = deadline.saturating_duration_since(now).min(POLL_SLICE);
            let ready = poll_node(self.fd.as_fd(), want_capture, slice)
                .map_err(|e| M2mError::Kernel(format!("{}: poll: {e}", self.path.display())))?;
            polled = true;
            let mut st = self.lock();
            if ready.event || ready.output || ready.capture {
                self.collect(&mut st, ready)?;
            } else if ready.error && st.generation == generation {
                // Nothing queued that could complete: sleep until the client
                // gives the device something (or the slice ends).
                let _ = self
                    .wake
                    .wait_timeout_while(st, slice, |s| s.generation == generation);
            }
        }
    }

    fn drain(&self) -> Result<(), M2mError> {
        if let Some(reason) = &self.lock().dead {
            return Err(M2mError::Kernel(reason.clone()));
        }
        self.command(false)?;
        let mut st = self.lock();
        st.generation += 1;
        self.wake.notify_all();
        Ok(())
    }

    fn start(&self) -> Result<(), M2mError> {
        self.command(true)?;
        let mut st = self.lock();
        if st.stopped && st.capture.streaming {
            self.resume_capture(&mut st)?;
        }
        st.stopped = false;
        st.progress = Instant::now();
        st.generation += 1;
        self.wake.notify_all();
        Ok(())
    }
}

impl Drop for KernelSession {
    fn drop(&mut self) {
        // Closing the handle stops both queues and frees the driver's
        // buffers; exported regions held elsewhere keep their memory.
        log::debug!("{}: {} session closed", self.path.display(), self.role);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_survive_the_timeval() {
        for ts in [0, 1, 999_999, 1_000_000, 33_333_333, u64::MAX / 1000] {
            assert_eq!(from_timeval(to_timeval(ts)), ts);
        }
    }
}
