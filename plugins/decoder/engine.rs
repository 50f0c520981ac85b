//! The decoder's VPU side: one m2m [`Session`], the `vpu-capture` thread that
//! waits for its events, and the queue bookkeeping shared by that thread, the
//! streaming thread and the release callbacks of CAPTURE memory.
//!
//! # Who does what
//!
//! - The **capture thread** only talks to the session: it loops on
//!   `wait_event` with short timeouts (so that it notices [`Engine::shutdown`]),
//!   puts returned OUTPUT buffers on the free list, turns CAPTURE results and
//!   source changes into [`Ready`] items, and ends a drain at the LAST buffer
//!   (`start` + re-queue, as `m2m::blocking` does).
//! - The **streaming thread** (the element, holding GstVideoDecoder's stream
//!   lock anyway) takes [`Ready`] items and does everything that touches the
//!   base class: negotiation, CAPTURE set-up, `finish_frame` / `drop_frame`.
//!   GStreamer's stream lock cannot be released from Rust while waiting, so
//!   the capture thread must never call into the base class: it would block
//!   on that lock while the streaming thread waits for an OUTPUT buffer that
//!   only the capture thread can hand back.
//! - **The CAPTURE pool** (`pool.rs`: one persistent GstBuffer per CAPTURE
//!   buffer) re-queues a CAPTURE buffer with [`Engine::requeue_capture`]
//!   when downstream drops its GstBuffer (or, if downstream kept the memory
//!   beyond it, when the memory is freed). It holds the engine weakly: after
//!   stop, a released frame has nowhere to go.
//!
//! # Generations
//!
//! Every CAPTURE allocation gets a new generation number (and its own pool);
//! a release carries the generation its buffer came from and re-queues only
//! if that allocation still streams. `capture` (the generation lock) is held across
//! every CAPTURE queue operation and across stream-off/on, so a release can
//! never slip a buffer into a queue that is being flushed, reallocated or
//! stopped. Lock order: `capture` before `inner`; neither is held while
//! waiting for an event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::m2m::{
    Buffer, BufferFlags, Event, Format, M2mError, Memory, QueueKind, Session, SourceChange,
};
use crate::mem::{Coherency, Owner, Region};

/// How long one `wait_event` of the capture thread (and one condition wait of
/// the streaming thread) lasts at most: the reaction time to a shutdown.
pub(super) const WAIT_SLICE: Duration = Duration::from_millis(20);

/// OUTPUT (bitstream) buffers: the device minimum plus this many, so the
/// streaming thread can fill one while the VPU parses the others.
const EXTRA_OUTPUT: u32 = 2;

/// What the capture thread hands to the streaming thread.
#[derive(Debug)]
pub(super) enum Ready {
    /// The stream's CAPTURE format is known (or changed): negotiate and set up.
    SourceChange(SourceChange),
    /// A CAPTURE buffer came back: a frame, or an ERROR for one.
    Frame(Buffer),
}

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DrainState {
    /// LAST not seen yet.
    Running,
    /// LAST came back: every frame queued before the drain is out.
    Done,
    /// No CAPTURE queue, no announced stream and every OUTPUT buffer back:
    /// the input held no frame, there is nothing to drain.
    Idle,
}

/// A fatal session error, kept for the streaming thread to report once.
#[derive(Debug, Clone)]
pub(super) struct Fatal {
    pub timeout: bool,
    pub message: String,
}

impl From<&M2mError> for Fatal {
    fn from(e: &M2mError) -> Fatal {
        Fatal {
            timeout: matches!(e, M2mError::Timeout(_)),
            message: e.to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    free_output: VecDeque<Buffer>,
    output_count: usize,
    ready: VecDeque<Ready>,
    /// A source change waiting for the LAST buffer of the old format.
    reconfigure: Option<SourceChange>,
    /// A source change reached the client (the stream has a format).
    announced: bool,
    /// A drain was requested and LAST has not come back yet.
    draining: bool,
    fatal: Option<Fatal>,
    /// CAPTURE buffers the VPU holds now.
    queued_capture: usize,
    starvation_waits: u64,
    /// Since when the VPU has held no CAPTURE buffer while streaming.
    starved_since: Option<Instant>,
    /// CAPTURE buffers added because downstream held every frame.
    grown: u64,
    /// Bumped at every change the streaming thread may wait for.
    changes: u64,
}

/// The generation lock's content.
#[derive(Debug, Default)]
struct CaptureQueue {
    /// `Some(generation)` while the CAPTURE queue streams.
    streaming: Option<u64>,
    next_generation: u64,
    /// CAPTURE buffers of this generation, and their memory.
    count: u32,
    coherency: Option<Coherency>,
}

/// How long the VPU may sit without a CAPTURE buffer (downstream holds them
/// all) before the pool grows.
const STARVE_GRACE: Duration = Duration::from_millis(30);
/// Buffers added per growth step.
const GROW_STEP: u32 = 2;
/// Most CAPTURE buffers the pool grows to (V4L2's `VIDEO_MAX_FRAME`).
const MAX_CAPTURE: u32 = 32;

pub(super) struct Engine {
    session: Box<dyn Session>,
    capture: Mutex<CaptureQueue>,
    inner: Mutex<Inner>,
    cond: Condvar,
    stop: AtomicBool,
    /// Held by the capture thread around each `wait_event` and by a flush
    /// around its stream-off/on, so a flush never interleaves with the
    /// handling of an event.
    events: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything
    // that can panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    pub(super) fn new(session: Box<dyn Session>) -> Arc<Engine> {
        Arc::new(Engine {
            session,
            capture: Mutex::new(CaptureQueue::default()),
            inner: Mutex::new(Inner::default()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            events: Mutex::new(()),
        })
    }

    /// Starts the `vpu-capture` thread.
    pub(super) fn spawn(self: &Arc<Engine>) -> std::io::Result<JoinHandle<()>> {
        let engine = Arc::clone(self);
        std::thread::Builder::new()
            .name("vpu-capture".into())
            .spawn(move || engine.run())
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let (handled, failed) = crate::common::events::handle_batch(
                WAIT_SLICE,
                |timeout| self.next_event(timeout),
                |event| {
                    self.handle(event);
                    Ok(())
                },
            );
            if handled > 0 {
                self.cond.notify_all();
            }
            if let Some(e) = failed {
                if !self.stop.load(Ordering::Acquire) {
                    log::error!("VPU decoder session failed: {e}");
                    self.notify(|i| i.fatal = Some(Fatal::from(&e)));
                }
                return;
            }
        }
    }

    fn next_event(&self, timeout: Duration) -> Result<Option<Event>, M2mError> {
        let _events = lock(&self.events);
        self.session.wait_event(timeout)
    }

    fn notify(&self, f: impl FnOnce(&mut Inner)) {
        self.update(f);
        self.cond.notify_all();
    }

    /// A change the streaming thread is woken for later (the capture thread
    /// notifies once per batch of events).
    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = lock(&self.inner);
        f(&mut inner);
        inner.changes += 1;
    }

    /// Handles one event; the caller wakes the streaming thread.
    fn handle(&self, event: Event) {
        match event {
            Event::BufferDone(b) if b.queue == QueueKind::Output => {
                self.update(|i| i.free_output.push_back(b));
            }
            Event::BufferDone(b) if b.flags.contains(BufferFlags::RETURNED) => {
                // Stream-off hands returned buffers back in its own list.
                log::debug!("CAPTURE buffer {} returned unprocessed", b.index);
            }
            Event::BufferDone(b) => {
                let last = b.flags.contains(BufferFlags::LAST);
                let has_frame = b.bytesused > 0 || b.flags.contains(BufferFlags::ERROR);
                let mut inner = lock(&self.inner);
                inner.queued_capture = inner.queued_capture.saturating_sub(1);
                if !last {
                    inner.ready.push_back(Ready::Frame(b));
                } else {
                    // The first LAST after a source change ends the old
                    // format, not a drain: a drain requested meanwhile
                    // still has the new format's frames to come (its own
                    // LAST follows them).
                    let reconfigure = inner.reconfigure.take();
                    let drained = reconfigure.is_none();
                    drop(inner);
                    self.end_of_sequence(b, has_frame, reconfigure);
                    inner = lock(&self.inner);
                    if drained {
                        // Only now: the frames `start` turned up are ready.
                        inner.draining = false;
                    }
                }
                inner.changes += 1;
            }
            Event::SourceChange(sc) => {
                let streaming = lock(&self.capture).streaming.is_some();
                self.update(|i| {
                    i.announced = true;
                    if streaming {
                        // Frames of the old format come first, up to LAST.
                        i.reconfigure = Some(sc);
                    } else {
                        i.ready.push_back(Ready::SourceChange(sc));
                    }
                });
            }
        }
    }

    /// The LAST buffer: of a drain (restart the decoder and give the buffer
    /// back) or of the old format before a source change (set up anew).
    fn end_of_sequence(&self, b: Buffer, has_frame: bool, reconfigure: Option<SourceChange>) {
        if let Some(sc) = reconfigure {
            let mut inner = lock(&self.inner);
            if has_frame {
                inner.ready.push_back(Ready::Frame(b));
            }
            inner.ready.push_back(Ready::SourceChange(sc));
            return;
        }
        if let Err(e) = self.session.start() {
            self.notify(|i| i.fatal = Some(Fatal::from(&e)));
            return;
        }
        // A driver may complete frames of the drain after LAST; the session
        // hands them out right after `start`. They come before the drain
        // ends, and before LAST's own frame (older frames go first).
        loop {
            match self.next_event(Duration::ZERO) {
                Ok(Some(event)) => self.handle(event),
                Ok(None) => break,
                Err(e) => {
                    self.notify(|i| i.fatal = Some(Fatal::from(&e)));
                    return;
                }
            }
        }
        if has_frame {
            lock(&self.inner).ready.push_back(Ready::Frame(b));
        } else {
            let generation = lock(&self.capture).streaming;
            if let Some(generation) = generation {
                self.requeue_capture(generation, b.index, b.region);
            }
        }
    }

    /// Sets up the OUTPUT queue for frames of about `width` x `height`.
    pub(super) fn setup_output(&self, width: u32, height: u32) -> Result<usize, M2mError> {
        let codec = self.session.codec();
        let format = self
            .session
            .set_format(QueueKind::Output, &Format::coded(codec, width, height))?;
        let count = self.session.min_buffers(QueueKind::Output).max(1) + EXTRA_OUTPUT;
        let buffers = self.session.allocate_buffers(
            QueueKind::Output,
            count,
            Memory::Allocate(Coherency::Coherent),
        )?;
        self.session.stream_on(QueueKind::Output)?;
        self.notify(|i| {
            i.output_count = buffers.len();
            i.free_output = buffers.into();
        });
        Ok(format.size)
    }

    pub(super) fn try_take_output(&self) -> Option<Buffer> {
        lock(&self.inner).free_output.pop_front()
    }

    /// Queues a filled OUTPUT buffer; on failure the buffer goes back to the
    /// free list.
    pub(super) fn queue_output(&self, b: Buffer) -> Result<(), M2mError> {
        self.session.queue(b).map_err(|e| {
            let error = e.error;
            self.notify(|i| i.free_output.push_back(e.buffer));
            error
        })
    }

    pub(super) fn pop_ready(&self) -> Option<Ready> {
        lock(&self.inner).ready.pop_front()
    }

    pub(super) fn fatal(&self) -> Option<Fatal> {
        lock(&self.inner).fatal.clone()
    }

    /// Waits until something changes (an event handled, a buffer released)
    /// or `timeout` passes. `seen` is the change counter last observed;
    /// returns the current one.
    pub(super) fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        let inner = lock(&self.inner);
        let (inner, _) = self
            .cond
            .wait_timeout_while(inner, timeout, |i| i.changes == seen)
            .unwrap_or_else(PoisonError::into_inner);
        inner.changes
    }

    pub(super) fn changes(&self) -> u64 {
        lock(&self.inner).changes
    }

    /// Counts one wait for an OUTPUT buffer during which the VPU held no
    /// CAPTURE buffer (downstream holds them all): decoding stalls until one
    /// is released. Returns whether this wait counted as starved.
    pub(super) fn note_output_wait(&self) -> bool {
        let streaming = lock(&self.capture).streaming.is_some();
        let mut inner = lock(&self.inner);
        let starved = streaming && inner.queued_capture == 0;
        if starved {
            inner.starvation_waits += 1;
        }
        starved
    }

    pub(super) fn starvation_waits(&self) -> u64 {
        lock(&self.inner).starvation_waits
    }

    /// CAPTURE buffers of the current allocation (growth included).
    pub(super) fn capture_buffers(&self) -> u32 {
        lock(&self.capture).count
    }

    /// CAPTURE buffers added since start because downstream held every frame.
    pub(super) fn pool_grown(&self) -> u64 {
        lock(&self.inner).grown
    }

    /// Grows the CAPTURE pool when the VPU has held no CAPTURE buffer for
    /// [`STARVE_GRACE`] (downstream keeps every frame): the decoder then
    /// decodes into new memory instead of stalling or copying
    /// (`VIDIOC_CREATE_BUFS`). Returns how many buffers were added.
    pub(super) fn grow_capture_if_starved(&self) -> Result<u32, M2mError> {
        let mut capture = lock(&self.capture);
        let (Some(generation), Some(coherency)) = (capture.streaming, capture.coherency) else {
            return Ok(0);
        };
        {
            let mut inner = lock(&self.inner);
            if inner.queued_capture > 0 {
                inner.starved_since = None;
                return Ok(0);
            }
            let since = *inner.starved_since.get_or_insert_with(Instant::now);
            if since.elapsed() < STARVE_GRACE || capture.count >= MAX_CAPTURE {
                return Ok(0);
            }
            inner.starved_since = None;
        }
        let step = GROW_STEP.min(MAX_CAPTURE - capture.count);
        let buffers =
            self.session
                .add_buffers(QueueKind::Capture, step, Memory::Allocate(coherency))?;
        let n = buffers.len();
        capture.count += n as u32;
        for b in buffers {
            self.queue_capture(b)?;
        }
        log::debug!(
            "downstream holds every frame: CAPTURE pool grown by {n} to {} (generation {generation})",
            capture.count
        );
        self.notify(|i| i.grown += n as u64);
        Ok(n as u32)
    }

    /// Stops the CAPTURE queue (if it streams) and sets `format` on it.
    /// Buffers still held downstream become stale (their generation ends).
    pub(super) fn set_capture_format(&self, format: &Format) -> Result<Format, M2mError> {
        let mut capture = lock(&self.capture);
        if capture.streaming.take().is_some() {
            self.session.stream_off(QueueKind::Capture)?;
            lock(&self.inner).queued_capture = 0;
        }
        self.session.set_format(QueueKind::Capture, format)
    }

    /// Asks the VPU to write frames in `layout` (after
    /// [`Engine::set_capture_format`], before [`Engine::start_capture`]);
    /// `Ok(None)` when it keeps its own layout (a kernel node).
    pub(super) fn set_capture_layout(&self, layout: &Format) -> Result<Option<Format>, M2mError> {
        let _capture = lock(&self.capture);
        self.session.set_layout(QueueKind::Capture, layout)
    }

    /// Allocates `count` CAPTURE buffers of `coherency`, streams the queue on
    /// and queues them all. Returns the new generation.
    pub(super) fn start_capture(&self, count: u32, coherency: Coherency) -> Result<u64, M2mError> {
        let mut capture = lock(&self.capture);
        let buffers = self.session.allocate_buffers(
            QueueKind::Capture,
            count,
            Memory::Allocate(coherency),
        )?;
        self.session.stream_on(QueueKind::Capture)?;
        let generation = capture.next_generation;
        capture.next_generation += 1;
        capture.streaming = Some(generation);
        capture.count = buffers.len() as u32;
        capture.coherency = Some(coherency);
        for b in buffers {
            self.queue_capture(b)?;
        }
        self.cond.notify_all();
        Ok(generation)
    }

    /// Queues a CAPTURE buffer, counted as held by the VPU *before* it is
    /// queued: the VPU may fill it, and the capture thread count it back,
    /// before `queue` returns (counted after, the decrement found 0 and the
    /// late increment left the count one too high for good, so a VPU
    /// starved of CAPTURE buffers looked fed and the pool never grew: the
    /// decoder stalled, "no OUTPUT buffer came back").
    fn queue_capture(&self, b: Buffer) -> Result<(), M2mError> {
        self.update(|i| i.queued_capture += 1);
        self.session.queue(b).map_err(|e| {
            self.update(|i| i.queued_capture = i.queued_capture.saturating_sub(1));
            e.error
        })
    }

    /// Gives a CAPTURE buffer back to the VPU if its allocation
    /// (`generation`) still streams; otherwise the buffer is dropped.
    pub(super) fn requeue_capture(&self, generation: u64, index: u32, region: Arc<Region>) {
        let capture = lock(&self.capture);
        if capture.streaming != Some(generation) || self.stop.load(Ordering::Acquire) {
            log::debug!("CAPTURE buffer {index} of generation {generation} is stale: dropped");
            return;
        }
        let mut b = Buffer::new(QueueKind::Capture, index, region);
        if b.region.owner() == Owner::Device {
            b.flags = BufferFlags::NO_CACHE_CLEAN;
        }
        let queued = self.queue_capture(b);
        drop(capture);
        match queued {
            Ok(()) => self.cond.notify_all(),
            Err(e) => log::warn!("re-queueing CAPTURE buffer {index}: {e}"),
        }
    }

    /// `V4L2_DEC_CMD_STOP`: every frame queued so far comes out, then LAST.
    pub(super) fn drain(&self) -> Result<(), M2mError> {
        lock(&self.inner).draining = true;
        self.session.drain().inspect_err(|_| {
            lock(&self.inner).draining = false;
        })
    }

    pub(super) fn drain_state(&self) -> DrainState {
        let streaming = lock(&self.capture).streaming.is_some();
        let inner = lock(&self.inner);
        if !inner.draining {
            return DrainState::Done;
        }
        // As `m2m::blocking`: the device announces a stream before returning
        // the OUTPUT buffer that completed its first frame.
        let idle = !streaming
            && !inner.announced
            && inner.reconfigure.is_none()
            && inner.free_output.len() == inner.output_count;
        if idle {
            DrainState::Idle
        } else {
            DrainState::Running
        }
    }

    /// Abandons a drain that ended without LAST (idle, or given up).
    pub(super) fn cancel_drain(&self) {
        lock(&self.inner).draining = false;
    }

    /// Flush (seek): both queues stop, every buffer comes back; OUTPUT
    /// buffers go to the free list, CAPTURE buffers (returned ones and those
    /// waiting in the ready list) are queued again. The VPU resumes at the
    /// next key frame. Buffers held downstream stay valid (same allocation).
    pub(super) fn flush(&self) -> Result<(), M2mError> {
        let _events = lock(&self.events);
        let capture = lock(&self.capture);
        let returned = self.session.stream_off(QueueKind::Output)?;
        self.session.stream_on(QueueKind::Output)?;
        let mut requeue = Vec::new();
        {
            let mut inner = lock(&self.inner);
            inner.free_output.extend(returned);
            inner.draining = false;
            let ready = std::mem::take(&mut inner.ready);
            for r in ready {
                match r {
                    Ready::Frame(b) => requeue.push(b),
                    sc @ Ready::SourceChange(_) => inner.ready.push_back(sc),
                }
            }
        }
        if capture.streaming.is_some() {
            requeue.extend(self.session.stream_off(QueueKind::Capture)?);
            self.session.stream_on(QueueKind::Capture)?;
            let n = requeue.len();
            for b in requeue {
                let mut b = Buffer::new(QueueKind::Capture, b.index, b.region);
                if b.region.owner() == Owner::Device {
                    b.flags = BufferFlags::NO_CACHE_CLEAN;
                }
                self.session.queue(b).map_err(|e| e.error)?;
            }
            drop(capture);
            self.notify(|i| i.queued_capture = n);
        }
        Ok(())
    }

    /// Stops the capture thread's loop, ends the CAPTURE generation and
    /// stops both queues. The session closes when the element drops the
    /// engine: release callbacks hold it weakly, so frames still held
    /// downstream keep their regions (memory) but not the session.
    pub(super) fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let mut capture = lock(&self.capture);
        capture.streaming = None;
        for q in [QueueKind::Output, QueueKind::Capture] {
            if let Err(e) = self.session.stream_off(q) {
                log::debug!("stream off {q} at shutdown: {e}");
            }
        }
        drop(capture);
        self.notify(|i| {
            i.free_output.clear();
            i.ready.clear();
        });
    }

    /// Waits (bounded) until `done` holds, running `service` between waits.
    /// Used by the streaming thread; returns false at the deadline.
    pub(super) fn wait_until<E>(
        &self,
        deadline: Instant,
        mut service: impl FnMut() -> Result<bool, E>,
    ) -> Result<bool, E> {
        let mut seen = self.changes();
        loop {
            if service()? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            seen = self.wait_change(seen, WAIT_SLICE.min(deadline - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m2m::{Control, PixelFormat, QueueError, Role};
    use crate::mem::{Checker, CheckerConfig};
    use crate::sys::DmaBackend;

    /// A session that hands out scripted events, and whose `start` is slow
    /// (as vicodec's: DEC_CMD_START, then STREAMOFF/STREAMON of CAPTURE and
    /// re-queueing) and may turn up more events (frames a driver completed
    /// after LAST).
    struct Scripted {
        events: Mutex<VecDeque<Event>>,
        after_start: Mutex<Vec<Event>>,
        start_delay: Duration,
        /// A queued CAPTURE buffer comes back filled at once, and `queue`
        /// returns only once the capture thread took that event (a VPU
        /// faster than the queueing thread, as the emulated one can be).
        fill_on_queue: bool,
    }

    impl Session for Scripted {
        fn role(&self) -> Role {
            Role::Decoder
        }
        fn codec(&self) -> PixelFormat {
            PixelFormat::Fwht
        }
        fn enum_formats(&self, _queue: QueueKind) -> Vec<PixelFormat> {
            Vec::new()
        }
        fn set_format(&self, queue: QueueKind, _format: &Format) -> Result<Format, M2mError> {
            Err(M2mError::InvalidState {
                queue,
                reason: "scripted session".into(),
            })
        }
        fn format(&self, queue: QueueKind) -> Result<Format, M2mError> {
            Err(M2mError::InvalidState {
                queue,
                reason: "scripted session".into(),
            })
        }
        fn set_control(&self, control: Control) -> Result<(), M2mError> {
            Err(M2mError::InvalidControl {
                control,
                reason: "scripted session".into(),
            })
        }
        fn min_buffers(&self, _queue: QueueKind) -> u32 {
            1
        }
        fn allocate_buffers(
            &self,
            queue: QueueKind,
            count: u32,
            _memory: Memory,
        ) -> Result<Vec<Buffer>, M2mError> {
            Ok((0..count)
                .map(|index| capture(index, 0, 0, BufferFlags::NONE))
                .filter(|b| b.queue == queue)
                .collect())
        }
        fn add_buffers(
            &self,
            queue: QueueKind,
            count: u32,
            memory: Memory,
        ) -> Result<Vec<Buffer>, M2mError> {
            self.allocate_buffers(queue, count, memory)
        }
        fn stream_on(&self, _queue: QueueKind) -> Result<(), M2mError> {
            Ok(())
        }
        fn stream_off(&self, _queue: QueueKind) -> Result<Vec<Buffer>, M2mError> {
            Ok(Vec::new())
        }
        fn queue(&self, buffer: Buffer) -> Result<(), QueueError> {
            if self.fill_on_queue && buffer.queue == QueueKind::Capture {
                let done = Buffer {
                    bytesused: 64,
                    ..buffer
                };
                lock(&self.events).push_back(Event::BufferDone(done));
                let deadline = Instant::now() + Duration::from_secs(5);
                while !lock(&self.events).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        }
        fn wait_event(&self, timeout: Duration) -> Result<Option<Event>, M2mError> {
            if let Some(event) = lock(&self.events).pop_front() {
                return Ok(Some(event));
            }
            std::thread::sleep(timeout.min(Duration::from_millis(2)));
            Ok(None)
        }
        fn drain(&self) -> Result<(), M2mError> {
            Ok(())
        }
        fn start(&self) -> Result<(), M2mError> {
            std::thread::sleep(self.start_delay);
            let more = std::mem::take(&mut *lock(&self.after_start));
            lock(&self.events).extend(more);
            Ok(())
        }
    }

    /// A CAPTURE buffer as the device returns it.
    fn capture(index: u32, timestamp: u64, bytesused: usize, flags: BufferFlags) -> Buffer {
        let checker = Checker::new(CheckerConfig::default());
        let region = Region::allocate("cap", 64, Coherency::Coherent, DmaBackend::Memfd, &checker)
            .expect("a memfd region");
        Buffer {
            bytesused,
            timestamp,
            flags,
            ..Buffer::new(QueueKind::Capture, index, region)
        }
    }

    /// Drains as the element does (waits while the drain runs) and returns
    /// the timestamps of the frames ready once it has ended.
    fn drain_then_ready(events: Vec<Event>, after_start: Vec<Event>) -> Vec<u64> {
        let engine = Engine::new(Box::new(Scripted {
            events: Mutex::new(events.into()),
            after_start: Mutex::new(after_start),
            start_delay: Duration::from_millis(200),
            fill_on_queue: false,
        }));
        engine
            .start_capture(3, Coherency::Coherent)
            .expect("the scripted CAPTURE queue");
        engine.drain().expect("the scripted drain");
        let thread = engine.spawn().expect("the capture thread");
        let deadline = Instant::now() + Duration::from_secs(10);
        while engine.drain_state() == DrainState::Running {
            assert!(Instant::now() < deadline, "the drain never ended");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut frames = Vec::new();
        while let Some(ready) = engine.pop_ready() {
            if let Ready::Frame(b) = ready {
                frames.push(b.timestamp);
            }
        }
        engine.shutdown();
        thread.join().expect("the capture thread ends");
        frames
    }

    /// vicodec flags the final frame's own CAPTURE buffer LAST when the
    /// STOP comes before that frame is decoded: the drain must not end
    /// before the frame is ready (it was lost while `start` ran).
    #[test]
    fn a_frame_on_the_last_buffer_is_ready_when_the_drain_ends() {
        let events = vec![
            Event::BufferDone(capture(1, 4, 64, BufferFlags::PFRAME)),
            Event::BufferDone(capture(0, 5, 64, BufferFlags::PFRAME | BufferFlags::LAST)),
        ];
        assert_eq!(drain_then_ready(events, Vec::new()), vec![4, 5]);
    }

    /// A frame the device completes after an empty LAST (handed out after
    /// `start`) still belongs to the drain.
    #[test]
    fn a_frame_completed_after_an_empty_last_is_ready_when_the_drain_ends() {
        let events = vec![
            Event::BufferDone(capture(1, 4, 64, BufferFlags::PFRAME)),
            Event::BufferDone(capture(2, 0, 0, BufferFlags::LAST)),
        ];
        let late = vec![Event::BufferDone(capture(0, 5, 64, BufferFlags::PFRAME))];
        assert_eq!(drain_then_ready(events, late), vec![4, 5]);
    }

    /// A CAPTURE buffer the VPU fills (and the capture thread counts back)
    /// before `queue` returned must not leave the count of buffers the VPU
    /// holds one too high: the decoder would take a starved VPU for a fed
    /// one and never grow its pool (it stalled under load).
    #[test]
    fn a_capture_buffer_filled_before_queue_returns_is_not_counted_as_held() {
        let engine = Engine::new(Box::new(Scripted {
            events: Mutex::new(VecDeque::new()),
            after_start: Mutex::new(Vec::new()),
            start_delay: Duration::ZERO,
            fill_on_queue: true,
        }));
        let thread = engine.spawn().expect("the capture thread");
        let generation = engine
            .start_capture(2, Coherency::Coherent)
            .expect("the scripted CAPTURE queue");
        assert_eq!(
            lock(&engine.inner).queued_capture,
            0,
            "both came back filled"
        );
        let mut frames = Vec::new();
        while let Some(ready) = engine.pop_ready() {
            if let Ready::Frame(b) = ready {
                frames.push(b);
            }
        }
        assert_eq!(frames.len(), 2);
        for b in frames {
            engine.requeue_capture(generation, b.index, b.region);
        }
        assert_eq!(
            lock(&engine.inner).queued_capture,
            0,
            "re-queued and filled"
        );
        engine.shutdown();
        thread.join().expect("the capture thread ends");
    }
}
