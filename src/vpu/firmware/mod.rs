//! The VPU core: the firmware's main loop on its own thread (`vpu-fw`).
//!
//! The loop waits on the doorbell (host -> VPU eventfd) or a short tick,
//! bumps the heartbeat, takes every command off the command ring, lets every
//! session do one unit of work (a frame), then posts the responses and raises
//! the interrupt (VPU -> host eventfd); while there is work it does not
//! sleep. It sees the host only through the
//! control region, the IOMMU table and the two eventfds, and reaches frame
//! memory through `Region::device_read`/`device_write`, so the coherency
//! checker sees it exactly like DMA. One exception: the H.264 encoder lends
//! an OUTPUT buffer to libavcodec through its own read-only mapping of the
//! buffer (`sys::avframe`), taken under a `device_read` guard; when the codec
//! keeps the frame past that call it reads it later without one, and the
//! buffer is not handed back to the host until the codec let go of it.
//!
//! [`Faults`] lets tests make the core hang, drop or corrupt responses, or run
//! slowly, to prove the host survives each.

mod decode;
mod decoder;
mod drain;
mod encode;
mod encoder;
mod engine;
mod h264dec;
mod h264enc;
mod session;
#[cfg(test)]
mod testing;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use session::FwSession;

use super::iommu::Iommu;
use super::protocol::{
    Command, FW_STATE_OFFSET, FW_STATE_RUNNING, FW_STATE_STOPPED, HEARTBEAT_OFFSET, Message,
    Response, SharedHeader, Status,
};
use super::ring::{Consumer, Producer, RingError};
use crate::mem::Region;
use crate::sys::EventFd;

/// Sessions one core serves at once.
pub const MAX_SESSIONS: usize = 64;
/// How long the core sleeps when nothing rings the doorbell.
const TICK: Duration = Duration::from_millis(5);

/// Switchable faults, shared between a test and the core.
#[derive(Debug, Default)]
pub struct Faults {
    hang: AtomicBool,
    drop_responses: AtomicU32,
    corrupt_responses: AtomicU32,
    frame_delay_us: AtomicU64,
    fixed_layout: AtomicBool,
}

impl Faults {
    /// A hung core serves nothing and stops its heartbeat until released.
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }
    /// The next `n` responses are silently lost.
    pub fn drop_responses(&self, n: u32) {
        self.drop_responses.store(n, Ordering::SeqCst);
    }
    /// The next `n` responses are posted with garbage in their fields.
    pub fn corrupt_responses(&self, n: u32) {
        self.corrupt_responses.store(n, Ordering::SeqCst);
    }
    /// Every coded or decoded frame takes at least this long (a slow core).
    pub fn set_frame_delay(&self, delay: Duration) {
        self.frame_delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// The core refuses host layouts (`SetLayout`) as a VPU whose buffer
    /// layout is fixed does (a kernel node): clients must adapt (copy).
    pub fn set_fixed_layout(&self, fixed: bool) {
        self.fixed_layout.store(fixed, Ordering::SeqCst);
    }

    pub(crate) fn fixed_layout(&self) -> bool {
        self.fixed_layout.load(Ordering::SeqCst)
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn frame_delay(&self) -> Duration {
        Duration::from_micros(self.frame_delay_us.load(Ordering::SeqCst))
    }
}

/// Responses a session produced during one pass, tagged with their session.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    messages: Vec<(u32, u32, Response)>,
}

impl Outbox {
    pub(crate) fn post(&mut self, session: u32, seq: u32, response: Response) {
        self.messages.push((session, seq, response));
    }
}

/// What the core is started with.
pub(crate) struct FirmwareParts {
    pub control: Arc<Region>,
    pub iommu: Arc<Iommu>,
    pub doorbell: Arc<EventFd>,
    pub irq: Arc<EventFd>,
    pub faults: Arc<Faults>,
    pub stop: Arc<AtomicBool>,
}

/// Boots the core on its own thread.
pub(crate) fn spawn(parts: FirmwareParts) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vpu-fw".into())
        .spawn(move || {
            let stop = parts.stop.clone();
            let control = parts.control.clone();
            match Core::boot(parts) {
                Ok(mut core) => core.run(&stop),
                Err(e) => log::error!("VPU firmware failed to boot: {e}"),
            }
            if let Ok(map) = control.shared()
                && let Some(state) = map.atomic_u32(FW_STATE_OFFSET)
            {
                state.store(FW_STATE_STOPPED, Ordering::Release);
            }
        })
}

struct Core {
    parts: FirmwareParts,
    commands: Consumer,
    responses: Producer,
    /// Responses the ring had no room for yet, in order.
    backlog: VecDeque<Message>,
    sessions: HashMap<u32, FwSession>,
}

impl Core {
    fn boot(parts: FirmwareParts) -> Result<Core, RingError> {
        let mut header = SharedHeader::zeroed_header();
        parts
            .control
            .shared()?
            .read_at(0, bytemuck::bytes_of_mut(&mut header))
            .map_err(crate::mem::MemError::from)?;
        let commands = Consumer::new(
            parts.control.clone(),
            header.cmd_ring_offset as usize,
            header.cmd_ring_slots,
        )?;
        let responses = Producer::new(
            parts.control.clone(),
            header.resp_ring_offset as usize,
            header.resp_ring_slots,
        )?;
        Ok(Core {
            parts,
            commands,
            responses,
            backlog: VecDeque::new(),
            sessions: HashMap::new(),
        })
    }

    fn counter(&self, offset: usize) -> Option<&AtomicU32> {
        self.parts.control.shared().ok()?.atomic_u32(offset)
    }

    fn run(&mut self, stop: &AtomicBool) {
        if let Some(state) = self.counter(FW_STATE_OFFSET) {
            state.store(FW_STATE_RUNNING, Ordering::Release);
        }
        // Whether the last pass did work: then the next one starts at once,
        // so a busy core never sleeps between frames. It does not even look
        // at the doorbell (a system call): the command ring's indices are in
        // shared memory and `take_commands` reads them anyway; the rings
        // rung meanwhile are consumed by the next idle wait, which then
        // returns at once.
        let mut busy = false;
        while !stop.load(Ordering::Acquire) {
            if !busy {
                // A failed wait is retried on the next pass; the tick bounds it.
                let _ = self.parts.doorbell.wait(Some(TICK));
            }
            if self.parts.faults.hang.load(Ordering::SeqCst) {
                busy = false;
                continue;
            }
            if let Some(hb) = self.counter(HEARTBEAT_OFFSET) {
                hb.fetch_add(1, Ordering::Release);
            }
            let mut outbox = Outbox::default();
            if let Err(e) = self.take_commands(&mut outbox) {
                // The host scribbled over the command ring: nothing it says can
                // be trusted any more. Tell every session and stop serving.
                log::error!("VPU firmware: {e}");
                for &id in self.sessions.keys() {
                    outbox.post(
                        id,
                        0,
                        Response::SessionError {
                            text: format!("firmware halted: {e}"),
                        },
                    );
                }
                self.post(outbox);
                return;
            }
            // One unit of work per session per pass, then the responses go
            // out: each frame is reported as soon as it is done (the host
            // refills while the core works on the next one), and sessions
            // take turns.
            busy = false;
            for session in self.sessions.values_mut() {
                busy |= session.step(&self.parts.faults, &mut outbox);
            }
            self.post(outbox);
        }
    }

    fn take_commands(&mut self, outbox: &mut Outbox) -> Result<(), RingError> {
        while let Some(msg) = self.commands.pop()? {
            let (session, seq) = (msg.session, msg.seq);
            match Command::decode(&msg) {
                Ok(cmd) => self.handle(session, seq, cmd, outbox),
                Err(e) => outbox.post(
                    session,
                    seq,
                    Response::Ack {
                        status: Status::BadArgument,
                        text: e.to_string(),
                    },
                ),
            }
        }
        Ok(())
    }

    fn handle(&mut self, id: u32, seq: u32, cmd: Command, outbox: &mut Outbox) {
        let ack = |status, text: &str| Response::Ack {
            status,
            text: text.to_owned(),
        };
        match cmd {
            Command::Open { role, codec } => {
                let reply = if id == 0 || self.sessions.contains_key(&id) {
                    ack(Status::BadArgument, "session id 0 or already open")
                } else if self.sessions.len() >= MAX_SESSIONS {
                    ack(Status::NoResources, "all session slots in use")
                } else {
                    match FwSession::open(id, role, codec, self.parts.iommu.clone()) {
                        Ok(s) => {
                            self.sessions.insert(id, s);
                            ack(Status::Ok, "")
                        }
                        Err(text) => ack(Status::Unsupported, &text),
                    }
                };
                outbox.post(id, seq, reply);
            }
            Command::Close => {
                let reply = match self.sessions.remove(&id) {
                    Some(_) => ack(Status::Ok, ""),
                    None => ack(Status::NoEntity, "no such session"),
                };
                outbox.post(id, seq, reply);
            }
            other => match self.sessions.get_mut(&id) {
                Some(s) => s.command(seq, other, &self.parts.faults, outbox),
                None => outbox.post(id, seq, ack(Status::NoEntity, "no such session")),
            },
        }
    }

    fn post(&mut self, outbox: Outbox) {
        let faults = &self.parts.faults;
        for (session, seq, response) in outbox.messages {
            if Faults::take(&faults.drop_responses) {
                continue;
            }
            let mut msg = response.encode(session, seq);
            if Faults::take(&faults.corrupt_responses) {
                // Keep the opcode so the host's field checks (queue, index,
                // size, status) are what must catch it.
                for a in msg.args.iter_mut() {
                    *a = a.wrapping_mul(0x9e37_79b9).wrapping_add(0xdead);
                }
            }
            self.backlog.push_back(msg);
        }
        let mut posted = false;
        while let Some(msg) = self.backlog.front() {
            match self.responses.push(msg) {
                Ok(()) => {
                    self.backlog.pop_front();
                    posted = true;
                }
                Err(RingError::Full(_)) => break,
                Err(e) => {
                    log::error!("VPU firmware: response ring: {e}");
                    self.backlog.clear();
                    break;
                }
            }
        }
        if posted || !self.backlog.is_empty() {
            // A failed signal only delays the host until its own poll tick.
            let _ = self.parts.irq.signal();
        }
    }
}

impl SharedHeader {
    fn zeroed_header() -> SharedHeader {
        bytemuck::Zeroable::zeroed()
    }
}

/// A running core and the means to stop it.
pub(crate) struct Firmware {
    stop: Arc<AtomicBool>,
    doorbell: Arc<EventFd>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Firmware {
    pub(crate) fn start(parts: FirmwareParts) -> std::io::Result<Firmware> {
        let stop = parts.stop.clone();
        let doorbell = parts.doorbell.clone();
        let thread = spawn(parts)?;
        Ok(Firmware {
            stop,
            doorbell,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for Firmware {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.doorbell.signal();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            log::error!("VPU firmware thread panicked");
        }
    }
}
