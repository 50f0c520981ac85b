//! The host side of the in-crate VPU: implements the m2m contract over the
//! shared-memory rings.
//!
//! [`EmuVpu`] boots a firmware core, owns the command ring's producing end and
//! an interrupt thread (`vpu-irq`) that drains the response ring and sorts each
//! response into the mailbox of its session. An [`EmuSession`] sends commands
//! (waiting for their acknowledgement where V4L2's ioctl would block), tracks
//! which buffers the device holds, and turns responses into [`Event`](crate::m2m::Event)s.
//!
//! Everything the firmware writes is untrusted: a response naming a session,
//! queue, index or size the host does not know makes the session fail with a
//! message saying what was wrong; it never indexes out of bounds. A firmware
//! that stops its heartbeat, or holds work without progress past the watchdog
//! bound, turns into [`M2mError::Timeout`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod session;

pub use session::EmuSession;

use super::firmware::{Faults, Firmware, FirmwareParts};
use super::iommu::Iommu;
use super::protocol::{
    self, Command, FW_STATE_OFFSET, FW_STATE_RUNNING, HEARTBEAT_OFFSET, Message, Response,
    SharedHeader, Status,
};
use super::ring::{Consumer, Producer, RingError};
use crate::m2m::{Device, DeviceInfo, DeviceKind, M2mError, PixelFormat, Role, Session};
use crate::mem::{Checker, CheckerConfig, Coherency, Region};
use crate::sys::{DmaBackend, EventFd};

/// Most minimum OUTPUT buffers the host takes from the firmware (V4L2's
/// `VIDEO_MAX_FRAME` is 64; an encoder holding more frames is broken).
const MAX_MIN_OUTPUT_BUFFERS: u32 = 32;

/// How often blocked host calls re-check the watchdog.
pub(super) const POLL: Duration = Duration::from_millis(20);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks stays consistent across a panic (plain field
    // updates), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How an emulated VPU is set up.
#[derive(Debug, Clone)]
pub struct EmuConfig {
    /// Checks every CPU/device access to the VPU's memory.
    pub checker: Arc<Checker>,
    /// Where buffer memory comes from.
    pub backend: DmaBackend,
    /// A firmware silent for this long while it holds work is declared hung.
    pub watchdog: Duration,
    /// Slots of each ring.
    pub ring_slots: u32,
}

impl Default for EmuConfig {
    fn default() -> EmuConfig {
        EmuConfig {
            checker: Checker::new(CheckerConfig::default()),
            backend: DmaBackend::probe(),
            watchdog: Duration::from_secs(2),
            ring_slots: 256,
        }
    }
}

/// Why a session can no longer run.
#[derive(Debug, Clone)]
pub(super) enum Fault {
    Timeout(Duration),
    Firmware(String),
}

impl Fault {
    pub(super) fn error(&self) -> M2mError {
        match self {
            Fault::Timeout(d) => M2mError::Timeout(*d),
            Fault::Firmware(s) => M2mError::Firmware(s.clone()),
        }
    }
}

#[derive(Debug)]
pub(super) struct Inbox {
    pub(super) acks: HashMap<u32, (Status, String)>,
    pub(super) responses: VecDeque<Response>,
    /// The session's minimum OUTPUT buffers, as the firmware last said.
    pub(super) min_output: u32,
    pub(super) last_progress: Instant,
    pub(super) fault: Option<Fault>,
}

/// Where the interrupt thread leaves one session's responses.
#[derive(Debug)]
pub(super) struct Mailbox {
    pub(super) inbox: Mutex<Inbox>,
    pub(super) cond: Condvar,
}

impl Mailbox {
    pub(super) fn new() -> Mailbox {
        Mailbox {
            inbox: Mutex::new(Inbox {
                acks: HashMap::new(),
                responses: VecDeque::new(),
                min_output: 1,
                last_progress: Instant::now(),
                fault: None,
            }),
            cond: Condvar::new(),
        }
    }

    pub(super) fn fail(&self, fault: Fault) {
        let mut inbox = lock(&self.inbox);
        if inbox.fault.is_none() {
            inbox.fault = Some(fault);
        }
        self.cond.notify_all();
    }
}

/// State shared by the sessions and the interrupt thread.
pub(super) struct Core {
    pub(super) config: EmuConfig,
    control: Arc<Region>,
    commands: Mutex<Producer>,
    doorbell: Arc<EventFd>,
    irq: Arc<EventFd>,
    pub(super) iommu: Arc<Iommu>,
    faults: Arc<Faults>,
    pub(super) sessions: Mutex<HashMap<u32, Arc<Mailbox>>>,
    next_session: AtomicU32,
    next_seq: AtomicU32,
}

impl Core {
    fn counter(&self, offset: usize) -> u32 {
        self.control
            .shared()
            .ok()
            .and_then(|m| m.atomic_u32(offset))
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    fn fail_all(&self, fault: Fault) {
        for mailbox in lock(&self.sessions).values() {
            mailbox.fail(fault.clone());
        }
    }

    /// Puts a command on the ring and rings the doorbell. Waits (bounded) for
    /// room when the ring is full.
    pub(super) fn send(&self, session: u32, cmd: &Command) -> Result<u32, M2mError> {
        let seq = self
            .next_seq
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        let msg = cmd.encode(session, seq);
        let deadline = Instant::now() + self.config.watchdog;
        loop {
            match lock(&self.commands).push(&msg) {
                Ok(()) => break,
                Err(RingError::Full(_)) if Instant::now() < deadline => {
                    let _ = self.doorbell.signal();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(RingError::Full(_)) => return Err(M2mError::Timeout(self.config.watchdog)),
                Err(e) => return Err(M2mError::Firmware(format!("command ring: {e}"))),
            }
        }
        self.doorbell.signal()?;
        Ok(seq)
    }

    /// Routes one response to its session's mailbox.
    pub(super) fn dispatch(&self, msg: &Message) {
        let Some(mailbox) = lock(&self.sessions).get(&msg.session).cloned() else {
            log::warn!(
                "VPU response for unknown session {} (opcode {:#x}) dropped",
                msg.session,
                msg.opcode
            );
            return;
        };
        match Response::decode(msg) {
            Ok(Response::Ack { status, text }) => {
                let mut inbox = lock(&mailbox.inbox);
                inbox.acks.insert(msg.seq, (status, text));
                inbox.last_progress = Instant::now();
            }
            Ok(Response::SessionError { text }) => mailbox.fail(Fault::Firmware(text)),
            // Taken here, not through `wait_event`: the command that changed
            // it returns with it known (it comes before that command's ack).
            Ok(Response::MinOutputBuffers { count }) => {
                let mut inbox = lock(&mailbox.inbox);
                inbox.min_output = count.clamp(1, MAX_MIN_OUTPUT_BUFFERS);
                inbox.last_progress = Instant::now();
            }
            Ok(other) => {
                let mut inbox = lock(&mailbox.inbox);
                inbox.responses.push_back(other);
                inbox.last_progress = Instant::now();
            }
            Err(e) => mailbox.fail(Fault::Firmware(format!(
                "corrupt response from the VPU: {e}"
            ))),
        }
        mailbox.cond.notify_all();
    }

    /// The interrupt thread: drain responses, watch the heartbeat.
    fn irq_loop(&self, mut responses: Consumer, stop: &AtomicBool) {
        let mut heartbeat = (self.counter(HEARTBEAT_OFFSET), Instant::now());
        let mut hung = false;
        while !stop.load(Ordering::Acquire) {
            let _ = self.irq.wait(Some(POLL));
            loop {
                match responses.pop() {
                    Ok(Some(msg)) => self.dispatch(&msg),
                    Ok(None) => break,
                    Err(e) => {
                        self.fail_all(Fault::Firmware(format!("response ring: {e}")));
                        return;
                    }
                }
            }
            let beat = self.counter(HEARTBEAT_OFFSET);
            if beat != heartbeat.0 {
                heartbeat = (beat, Instant::now());
                hung = false;
            } else if !hung && heartbeat.1.elapsed() > self.config.watchdog {
                hung = true;
                log::error!(
                    "VPU firmware heartbeat stopped for {:?}",
                    self.config.watchdog
                );
                self.fail_all(Fault::Timeout(self.config.watchdog));
            }
        }
    }
}

pub(super) struct Inner {
    pub(super) core: Arc<Core>,
    stop_irq: Arc<AtomicBool>,
    irq_thread: Mutex<Option<JoinHandle<()>>>,
    _firmware: Firmware,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_irq.store(true, Ordering::Release);
        let _ = self.core.irq.signal();
        if let Some(t) = lock(&self.irq_thread).take()
            && t.join().is_err()
        {
            log::error!("VPU interrupt thread panicked");
        }
        // `_firmware` drops next and joins the core's thread.
    }
}

/// An emulated VPU: one firmware core serving any number of sessions.
#[derive(Clone)]
pub struct EmuVpu {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmuVpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmuVpu")
            .field("sessions", &lock(&self.inner.core.sessions).len())
            .finish()
    }
}

impl EmuVpu {
    /// Boots a VPU core and waits (bounded by the watchdog) until it runs.
    pub fn new(config: EmuConfig) -> Result<EmuVpu, M2mError> {
        let slots = config.ring_slots.max(2);
        let size = protocol::control_region_size(slots, slots);
        let control = Region::allocate(
            "vpu-control",
            size,
            Coherency::Coherent,
            config.backend,
            &config.checker,
        )?;
        let ring =
            std::mem::size_of::<protocol::RingHeader>() + slots as usize * protocol::SLOT_SIZE;
        let header = SharedHeader {
            magic: protocol::ABI_MAGIC,
            version: protocol::ABI_VERSION,
            cmd_ring_offset: 64,
            cmd_ring_slots: slots,
            resp_ring_offset: (64 + ring) as u32,
            resp_ring_slots: slots,
            fw_state: protocol::FW_STATE_BOOTING,
            heartbeat: 0,
            reserved: [0; 8],
        };
        control
            .shared()?
            .write_at(0, bytemuck::bytes_of(&header))
            .map_err(crate::mem::MemError::from)?;
        let commands = Producer::new(control.clone(), 64, slots).map_err(ring_error)?;
        let responses = Consumer::new(control.clone(), 64 + ring, slots).map_err(ring_error)?;
        let doorbell = Arc::new(EventFd::new()?);
        let irq = Arc::new(EventFd::new()?);
        let iommu = Arc::new(Iommu::default());
        let faults = Arc::new(Faults::default());
        let firmware = Firmware::start(FirmwareParts {
            control: control.clone(),
            iommu: iommu.clone(),
            doorbell: doorbell.clone(),
            irq: irq.clone(),
            faults: faults.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        })?;
        let core = Arc::new(Core {
            config,
            control,
            commands: Mutex::new(commands),
            doorbell,
            irq,
            iommu,
            faults,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU32::new(0),
            next_seq: AtomicU32::new(0),
        });
        let deadline = Instant::now() + core.config.watchdog;
        while core.counter(FW_STATE_OFFSET) != FW_STATE_RUNNING {
            if Instant::now() > deadline {
                return Err(M2mError::Firmware(format!(
                    "the firmware did not boot within {:?}",
                    core.config.watchdog
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let stop_irq = Arc::new(AtomicBool::new(false));
        let thread = {
            let (core, stop) = (core.clone(), stop_irq.clone());
            std::thread::Builder::new()
                .name("vpu-irq".into())
                .spawn(move || core.irq_loop(responses, &stop))?
        };
        Ok(EmuVpu {
            inner: Arc::new(Inner {
                core,
                stop_irq,
                irq_thread: Mutex::new(Some(thread)),
                _firmware: firmware,
            }),
        })
    }

    /// The switchable faults of this VPU's core (for tests).
    pub fn faults(&self) -> Arc<Faults> {
        self.inner.core.faults.clone()
    }

    /// The checker watching this VPU's memory.
    pub fn checker(&self) -> Arc<Checker> {
        self.inner.core.config.checker.clone()
    }

    /// Regions currently mapped into the VPU.
    pub fn mapped_regions(&self) -> usize {
        self.inner.core.iommu.len()
    }

    /// (role, coded format) pairs the firmware has an engine for.
    pub const CODECS: &'static [(Role, PixelFormat)] = &[
        (Role::Decoder, PixelFormat::Fwht),
        (Role::Encoder, PixelFormat::Fwht),
        (Role::Decoder, PixelFormat::H264),
        (Role::Encoder, PixelFormat::H264),
    ];

    /// Opens a session, typed (see [`Device::open`]).
    pub fn open_session(&self, role: Role, codec: PixelFormat) -> Result<EmuSession, M2mError> {
        if !Self::CODECS.contains(&(role, codec)) {
            return Err(M2mError::Unsupported { role, codec });
        }
        let core = &self.inner.core;
        let id = core
            .next_session
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        let mailbox = Arc::new(Mailbox::new());
        lock(&core.sessions).insert(id, mailbox.clone());
        let session = EmuSession::new(self.inner.clone(), id, role, codec, mailbox);
        session.command(
            Command::Open {
                role,
                codec: codec.fourcc(),
            },
            |_, text| M2mError::Firmware(text),
        )?;
        Ok(session)
    }
}

fn ring_error(e: RingError) -> M2mError {
    match e {
        RingError::Memory(m) => M2mError::Memory(m),
        other => M2mError::Firmware(other.to_string()),
    }
}

impl Device for EmuVpu {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: "rsvpu emulated VPU".into(),
            kind: DeviceKind::Emulated,
            codecs: Self::CODECS.to_vec(),
        }
    }

    fn open(&self, role: Role, codec: PixelFormat) -> Result<Box<dyn Session>, M2mError> {
        Ok(Box::new(self.open_session(role, codec)?))
    }
}
