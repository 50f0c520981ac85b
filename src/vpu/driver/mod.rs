//! The host side of the in-crate VPU: implements the m2m contract over the
//! shared-memory rings.
//!
//! [`EmuVpu`] boots a firmware core and owns the command ring's producing end
//! and the response ring's consuming end. An [`EmuSession`] sends commands
//! (waiting for their acknowledgement where V4L2's ioctl would block), tracks
//! which buffers the device holds, and turns responses into [`Event`](crate::m2m::Event)s.
//!
//! # The interrupt is handled by whoever waits
//!
//! There is no interrupt thread. A host thread that waits for its session
//! (an event, an acknowledgement) and finds nothing in its mailbox becomes the
//! interrupt handler, unless another waiter already is: it blocks on the
//! interrupt eventfd, drains the response ring, sorts each response into the
//! mailbox of its session (waking that session's waiter if it is another
//! thread), and watches the heartbeat. It stops being the handler when its own
//! session got something or its wait ran out, and then wakes the other
//! waiters so that one of them takes over. In the common case of one session
//! and one waiting thread (an element's `vpu-capture`), a completed buffer
//! thus wakes exactly that thread, once: a separate interrupt thread forwarding
//! each response cost a second wake-up and context switch per event (about
//! 25 us of CPU per frame, measured by `benches/elements.rs`). Nobody waiting
//! means nobody reads the ring: the firmware keeps what does not fit in a
//! backlog, and the watchdog judges a session only when someone waits on it,
//! after draining what the ring holds.
//!
//! Everything the firmware writes is untrusted: a response naming a session,
//! queue, index or size the host does not know makes the session fail with a
//! message saying what was wrong; it never indexes out of bounds. A firmware
//! that stops its heartbeat, or holds work without progress past the watchdog
//! bound, turns into [`M2mError::Timeout`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
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
/// A heartbeat watch interrupted for longer than this starts afresh: waiters
/// look at least every [`POLL`], so a longer gap means nobody was waiting.
const HEARTBEAT_GAP: Duration = Duration::from_millis(100);

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
    /// Counts every delivery (response, acknowledgement, fault): a waiter
    /// that saw `deliveries == n` waits until it changes (see
    /// [`Core::wait_delivery`]).
    pub(super) deliveries: u64,
    pub(super) acks: HashMap<u32, (Status, String)>,
    pub(super) responses: VecDeque<Response>,
    /// The session's minimum OUTPUT buffers, as the firmware last said.
    pub(super) min_output: u32,
    pub(super) last_progress: Instant,
    pub(super) fault: Option<Fault>,
}

/// Where the interrupt handler leaves one session's responses.
#[derive(Debug)]
pub(super) struct Mailbox {
    pub(super) inbox: Mutex<Inbox>,
    pub(super) cond: Condvar,
}

impl Mailbox {
    pub(super) fn new() -> Mailbox {
        Mailbox {
            inbox: Mutex::new(Inbox {
                deliveries: 0,
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
            inbox.deliveries += 1;
        }
        self.cond.notify_all();
    }
}

/// Who handles the interrupt (see the module doc).
#[derive(Debug, Default)]
struct IrqRole {
    /// A waiter is the handler now.
    taken: bool,
    /// Waiters blocked on their mailbox while another is the handler.
    waiters: usize,
}

/// The response ring's consuming end and the heartbeat watch: the
/// handler's alone.
struct Irq {
    responses: Consumer,
    /// The last heartbeat value seen, and since when it is watched unchanged.
    heartbeat: (u32, Instant),
    /// When the handler last looked at the heartbeat.
    checked: Instant,
    hung: bool,
    /// The ring broke (an index out of range): what every session fails with.
    broken: Option<String>,
}

/// State shared by the sessions.
pub(super) struct Core {
    pub(super) config: EmuConfig,
    control: Arc<Region>,
    commands: Mutex<Producer>,
    doorbell: Arc<EventFd>,
    irq: Arc<EventFd>,
    irq_role: Mutex<IrqRole>,
    /// Taken only by the handler, so never contended.
    irq_state: Mutex<Irq>,
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
                inbox.deliveries += 1;
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
                inbox.deliveries += 1;
            }
            Err(e) => mailbox.fail(Fault::Firmware(format!(
                "corrupt response from the VPU: {e}"
            ))),
        }
        mailbox.cond.notify_all();
    }

    /// Waits up to `wait` for a delivery to `mailbox` after the caller saw
    /// `seen` deliveries (and nothing it was waiting for), as the interrupt
    /// handler if no other waiter is (see the module doc). Returns early on
    /// a delivery, or when the handler let go (the caller looks again, and
    /// may become the handler).
    pub(super) fn wait_delivery(&self, mailbox: &Mailbox, seen: u64, wait: Duration) {
        let inbox = lock(&mailbox.inbox);
        if inbox.deliveries != seen {
            return;
        }
        {
            // Inbox before role: the handler takes neither while holding the
            // other, and its hand-over (below) notifies under each inbox
            // lock, so no wake-up falls between this check and the wait.
            let mut role = lock(&self.irq_role);
            if !role.taken {
                role.taken = true;
                drop(role);
                drop(inbox);
                self.handle_irq(mailbox, seen, wait);
                return;
            }
            role.waiters += 1;
        }
        drop(
            mailbox
                .cond
                .wait_timeout(inbox, wait)
                .unwrap_or_else(PoisonError::into_inner),
        );
        lock(&self.irq_role).waiters -= 1;
    }

    /// The interrupt handler's turn: drain the ring and wait for the
    /// interrupt until `mailbox` got something or `wait` ran out, then hand
    /// the role over.
    fn handle_irq(&self, mailbox: &Mailbox, seen: u64, wait: Duration) {
        let deadline = Instant::now() + wait;
        {
            let mut irq = lock(&self.irq_state);
            loop {
                self.drain(&mut irq);
                if lock(&mailbox.inbox).deliveries != seen {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                // A failed wait (not a timeout) only costs a poll period.
                if let Err(e) = self.irq.wait(Some(deadline - now)) {
                    log::warn!("VPU interrupt wait failed: {e}");
                    std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
                }
            }
        }
        let waiters = {
            let mut role = lock(&self.irq_role);
            role.taken = false;
            role.waiters
        };
        if waiters > 0 {
            let mailboxes: Vec<Arc<Mailbox>> = lock(&self.sessions).values().cloned().collect();
            for m in mailboxes {
                // Under the inbox lock: see `wait_delivery`.
                let _inbox = lock(&m.inbox);
                m.cond.notify_all();
            }
        }
    }

    /// Drains the response ring into the mailboxes and checks the heartbeat.
    fn drain(&self, irq: &mut Irq) {
        if let Some(why) = &irq.broken {
            self.fail_all(Fault::Firmware(why.clone()));
            return;
        }
        loop {
            match irq.responses.pop() {
                Ok(Some(msg)) => self.dispatch(&msg),
                Ok(None) => break,
                Err(e) => {
                    let why = format!("response ring: {e}");
                    self.fail_all(Fault::Firmware(why.clone()));
                    irq.broken = Some(why);
                    return;
                }
            }
        }
        // The heartbeat is judged over a span somebody watched: after a gap
        // (nobody waited), an unchanged value says nothing about the time
        // in between (the core may have stopped and resumed, or just
        // resumed and not beaten yet), so the watch starts afresh.
        let beat = self.counter(HEARTBEAT_OFFSET);
        let now = Instant::now();
        let gap = now.duration_since(irq.checked) > HEARTBEAT_GAP;
        irq.checked = now;
        if beat != irq.heartbeat.0 || gap {
            irq.heartbeat = (beat, now);
            irq.hung = false;
        } else if !irq.hung && now.duration_since(irq.heartbeat.1) > self.config.watchdog {
            irq.hung = true;
            log::error!(
                "VPU firmware heartbeat stopped for {:?}",
                self.config.watchdog
            );
            // Sessions opened later learn it from their own commands'
            // timeouts.
            self.fail_all(Fault::Timeout(self.config.watchdog));
        }
    }
}

pub(super) struct Inner {
    pub(super) core: Arc<Core>,
    /// Dropping it stops and joins the core's thread.
    _firmware: Firmware,
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
        let heartbeat = (
            control
                .shared()
                .ok()
                .and_then(|m| m.atomic_u32(HEARTBEAT_OFFSET))
                .map_or(0, |a| a.load(Ordering::Acquire)),
            Instant::now(),
        );
        let core = Arc::new(Core {
            config,
            control,
            commands: Mutex::new(commands),
            doorbell,
            irq,
            irq_role: Mutex::new(IrqRole::default()),
            irq_state: Mutex::new(Irq {
                responses,
                heartbeat,
                checked: Instant::now(),
                hung: false,
                broken: None,
            }),
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
        Ok(EmuVpu {
            inner: Arc::new(Inner {
                core,
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
