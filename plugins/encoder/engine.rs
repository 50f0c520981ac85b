//! The VPU side of the encoders: one streaming setup of an encoder session
//! (formats, buffers, both queues on) and the `vpu-capture` thread.
//!
//! # Queues and memory
//!
//! OUTPUT (raw frames) is set up as [`OutputIo`] says. With
//! [`OutputIo::Import`] it uses [`Memory::Import`] (`V4L2_MEMORY_DMABUF` on
//! a kernel node): its slots are split between
//! *copy slots*, each bound for good to one region of ours that frames are
//! copied into (so the VPU maps it once), and *import slots*, which take
//! upstream memory that already is a VPU region (zero copy; the VPU remaps a
//! slot only when a different region arrives in it). With [`OutputIo::Mmap`]
//! it uses [`Memory::Allocate`] (`V4L2_MEMORY_MMAP`): every slot is a copy
//! slot whose region the session allocated (the driver's own buffer,
//! exported), and there are no import slots. CAPTURE (bitstream)
//! buffers are allocated by the session, coherent: the CPU reads each coded
//! frame exactly once, right after the VPU wrote it.
//!
//! # The capture thread
//!
//! `vpu-capture` loops on [`Session::wait_event`]: a done OUTPUT buffer frees
//! its slot (and the upstream buffer it held); a done CAPTURE buffer is copied
//! out into a new `gst::Buffer` (a coded frame is small; copying lets the
//! buffer go back to the VPU at once, so the VPU never waits for downstream)
//! and requeued; `LAST` (end of a drain) resumes the session and is
//! recorded; a session error is recorded and ends the thread. It never calls
//! into GStreamer elements and never takes the element's locks, so it cannot
//! deadlock with the streaming thread, which waits on [`Shared`]'s condition
//! variable (bounded) and is the one that pushes coded frames downstream.

use crate::common::stats::VpuTime;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::m2m::{
    Buffer, BufferFlags, Control, Event, Format, M2mError, Memory, QueueKind, Session,
};
use crate::mem::{Checker, Coherency, MemError, Owner, Region};
use crate::sys::DmaBackend;

/// OUTPUT slots bound to our own regions (frames copied in).
pub(super) const COPY_SLOTS: u32 = 4;
/// OUTPUT slots for upstream memory queued without a copy. More than the
/// buffers of upstream's pool in steady state, so that each of them stays
/// bound to one slot and the VPU maps it once (see [`IMPORT_DEPTH`]).
pub(super) const IMPORT_SLOTS: u32 = 16;
/// Most imported frames in the VPU at once. This, not the slot count, bounds
/// how far a producer runs ahead: it holds at most `IMPORT_DEPTH` buffers in
/// the VPU, as many again coded but not yet pushed (they leave at the next
/// frame), and the one it fills; `2 * IMPORT_DEPTH + 1 < IMPORT_SLOTS`, so the
/// pool the element proposes never outgrows the slots.
pub(super) const IMPORT_DEPTH: usize = 4;
const _: () = assert!(2 * IMPORT_DEPTH + 1 < IMPORT_SLOTS as usize);
/// CAPTURE (bitstream) buffers.
pub(super) const CAPTURE_BUFFERS: u32 = 4;
/// How often the capture thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Longest the streaming thread waits for the VPU, on top of the session's
/// own watchdog (which normally fires first, as an error).
pub(super) const WAIT_BOUND: Duration = Duration::from_secs(10);

/// How the OUTPUT queue gets its memory (the `output-io-mode` resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutputIo {
    /// [`Memory::Import`]: upstream memory queued as is where it can be,
    /// else copied into regions of ours.
    Import,
    /// [`Memory::Allocate`]: buffers the VPU allocates, frames copied in.
    Mmap,
}

impl OutputIo {
    /// As `output-io-mode` and the stats name it.
    pub(super) fn name(self) -> &'static str {
        match self {
            OutputIo::Import => "dmabuf-import",
            OutputIo::Mmap => "mmap",
        }
    }
}

/// A coded frame ready to go downstream.
#[derive(Debug)]
pub(super) struct Coded {
    /// The `system_frame_number` of the GstVideoCodecFrame it codes.
    pub frame: u32,
    pub buffer: gst::Buffer,
    pub keyframe: bool,
}

/// Counters shared with the element's `stats` property.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub frame_copies: u64,
    pub bytes_copied: u64,
    pub imported_frames: u64,
    /// Times an import slot was bound to a region it did not hold (the VPU
    /// maps the region then): once per distinct upstream region when they
    /// fit the import slots.
    pub import_maps: u64,
    /// Queue-to-coded times, for the per-frame average.
    pub vpu_time: VpuTime,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum EngineError {
    #[error("VPU setup failed: {0}")]
    Setup(#[source] M2mError),
    #[error("cannot allocate a {size}-byte frame buffer: {source}")]
    Memory {
        size: usize,
        #[source]
        source: MemError,
    },
    #[error("{0}")]
    Vpu(String),
    #[error("the VPU gave nothing back for {0:?}")]
    Timeout(Duration),
    #[error("cannot start the vpu-capture thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[derive(Default)]
struct Inner {
    free_copy: Vec<u32>,
    free_import: Vec<u32>,
    /// Upstream buffers the VPU reads now, by OUTPUT slot.
    imported: HashMap<u32, gst::Buffer>,
    /// When each frame in the VPU was queued, by frame number.
    queued_at: HashMap<u32, Instant>,
    ready: VecDeque<Coded>,
    last: bool,
    error: Option<String>,
    stop: bool,
}

/// What the streaming side and `vpu-capture` share.
pub(super) struct Shared {
    session: Arc<dyn Session>,
    /// OUTPUT slots `0..copy_slots` are copy slots, the next `import_slots`
    /// import slots.
    copy_slots: u32,
    import_slots: u32,
    inner: Mutex<Inner>,
    cond: Condvar,
    stats: Arc<Mutex<Stats>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent: survive a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The next thing the streaming thread gets from [`Engine`] while waiting.
pub(super) enum Wake<T> {
    Got(T),
    /// Coded frames to push first; then wait again.
    Ready(Vec<Coded>),
}

/// One streaming setup of the session for one raw format.
pub(super) struct Engine {
    shared: Arc<Shared>,
    raw: Format,
    io: OutputIo,
    copy_regions: Vec<Arc<Region>>,
    /// The region each import slot holds now (streaming thread only).
    import_regions: Vec<Option<u64>>,
    /// When each import slot was last bound, counted in `binds`.
    import_bound_at: Vec<u64>,
    binds: u64,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Sets the controls, then `raw` on OUTPUT (so the codec starts with
    /// them), allocates and queues, and starts `vpu-capture`. Returns the
    /// engine and the raw format in effect. `name` labels its regions.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        session: Arc<dyn Session>,
        raw: &Format,
        io: OutputIo,
        controls: &[Control],
        coherency: Coherency,
        checker: &Arc<Checker>,
        stats: Arc<Mutex<Stats>>,
        name: &str,
    ) -> Result<Engine, EngineError> {
        let s = session.as_ref();
        for &c in controls {
            s.set_control(c).map_err(EngineError::Setup)?;
        }
        let raw = s
            .set_format(QueueKind::Output, raw)
            .map_err(EngineError::Setup)?;
        let (copy_regions, import_slots) = match io {
            OutputIo::Import => {
                s.allocate_buffers(QueueKind::Output, COPY_SLOTS + IMPORT_SLOTS, Memory::Import)
                    .map_err(EngineError::Setup)?;
                let backend = DmaBackend::probe();
                let regions = (0..COPY_SLOTS)
                    .map(|i| {
                        Region::allocate(
                            &format!("{name}-frame-{i}"),
                            raw.size,
                            coherency,
                            backend,
                            checker,
                        )
                        .map_err(|source| EngineError::Memory {
                            size: raw.size,
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (regions, IMPORT_SLOTS)
            }
            OutputIo::Mmap => {
                let buffers = s
                    .allocate_buffers(QueueKind::Output, COPY_SLOTS, Memory::Allocate(coherency))
                    .map_err(EngineError::Setup)?;
                let mut regions = Vec::with_capacity(buffers.len());
                for (i, b) in buffers.into_iter().enumerate() {
                    if b.index as usize != i || b.region.size() < raw.size {
                        return Err(EngineError::Setup(M2mError::InvalidState {
                            queue: QueueKind::Output,
                            reason: format!(
                                "buffer {i} came back as index {} of {} bytes, \
                                 a {}-byte frame needs one",
                                b.index,
                                b.region.size(),
                                raw.size
                            ),
                        }));
                    }
                    regions.push(b.region);
                }
                (regions, 0)
            }
        };
        let copy_slots = copy_regions.len() as u32;
        let captures = s
            .allocate_buffers(
                QueueKind::Capture,
                CAPTURE_BUFFERS,
                Memory::Allocate(Coherency::Coherent),
            )
            .map_err(EngineError::Setup)?;
        s.stream_on(QueueKind::Output).map_err(EngineError::Setup)?;
        s.stream_on(QueueKind::Capture)
            .map_err(EngineError::Setup)?;
        for b in captures {
            s.queue(b).map_err(|e| EngineError::Setup(e.error))?;
        }
        let shared = Arc::new(Shared {
            session,
            copy_slots,
            import_slots,
            inner: Mutex::new(Inner::default()),
            cond: Condvar::new(),
            stats,
        });
        let mut engine = Engine {
            shared,
            raw,
            io,
            copy_regions,
            import_regions: vec![None; import_slots as usize],
            import_bound_at: vec![0; import_slots as usize],
            binds: 0,
            thread: None,
        };
        engine.reset_slots();
        engine.spawn()?;
        Ok(engine)
    }

    fn reset_slots(&self) {
        let (copy, import) = (self.shared.copy_slots, self.shared.import_slots);
        let mut inner = lock(&self.shared.inner);
        inner.free_copy = (0..copy).rev().collect();
        inner.free_import = (copy..copy + import).rev().collect();
        for (_, b) in inner.imported.drain() {
            release_busy(&b);
        }
        inner.queued_at.clear();
        inner.ready.clear();
        inner.last = false;
        inner.stop = false;
    }

    fn spawn(&mut self) -> Result<(), EngineError> {
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name("vpu-capture".into())
            .spawn(move || capture_loop(&shared))
            .map_err(EngineError::Thread)?;
        self.thread = Some(handle);
        Ok(())
    }

    fn join(&mut self) {
        lock(&self.shared.inner).stop = true;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("vpu-capture thread panicked");
        }
    }

    /// The OUTPUT format in effect.
    pub(super) fn raw(&self) -> &Format {
        &self.raw
    }

    /// How the OUTPUT queue gets its memory.
    pub(super) fn io(&self) -> OutputIo {
        self.io
    }

    pub(super) fn session(&self) -> &dyn Session {
        self.shared.session.as_ref()
    }

    /// Waits (bounded) until `take` finds what it wants in the shared state,
    /// handing coded frames out as they come; a VPU error ends the wait.
    fn wait_for<T>(
        &self,
        mut take: impl FnMut(&mut Inner) -> Option<T>,
    ) -> Result<Wake<T>, EngineError> {
        let deadline = Instant::now() + WAIT_BOUND;
        let mut inner = lock(&self.shared.inner);
        loop {
            if let Some(e) = &inner.error {
                return Err(EngineError::Vpu(e.clone()));
            }
            if let Some(t) = take(&mut inner) {
                return Ok(Wake::Got(t));
            }
            if !inner.ready.is_empty() {
                return Ok(Wake::Ready(inner.ready.drain(..).collect()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(EngineError::Timeout(WAIT_BOUND));
            }
            inner = self
                .shared
                .cond
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Coded frames ready now (never blocks); a recorded VPU error first.
    pub(super) fn take_ready(&self) -> Result<Vec<Coded>, EngineError> {
        let mut inner = lock(&self.shared.inner);
        if let Some(e) = &inner.error {
            return Err(EngineError::Vpu(e.clone()));
        }
        Ok(inner.ready.drain(..).collect())
    }

    /// A free copy slot and its region, ready for the CPU to write.
    pub(super) fn copy_slot(&self) -> Result<Wake<(u32, Arc<Region>)>, EngineError> {
        let wake = self.wait_for(|i| i.free_copy.pop())?;
        Ok(match wake {
            Wake::Got(slot) => {
                let region = Arc::clone(&self.copy_regions[slot as usize]);
                if region.owner() == Owner::Device
                    && let Err(e) = region.sync_for_cpu()
                {
                    lock(&self.shared.inner).free_copy.push(slot);
                    return Err(EngineError::Vpu(format!(
                        "cannot take the frame buffer back: {e}"
                    )));
                }
                Wake::Got((slot, region))
            }
            Wake::Ready(r) => Wake::Ready(r),
        })
    }

    /// A free import slot: one that already holds `region` (no remap), else
    /// one that never held a region, else the free one bound longest ago.
    /// An engine without import slots ([`OutputIo::Mmap`]) refuses.
    pub(super) fn import_slot(&self, region: &Region) -> Result<Wake<u32>, EngineError> {
        let (copy, import) = (self.shared.copy_slots, self.shared.import_slots);
        if import == 0 {
            return Err(EngineError::Vpu(format!(
                "OUTPUT is set up for {} buffers: nothing can be imported",
                self.io.name()
            )));
        }
        let id = region.id();
        let known = &self.import_regions;
        let bound_at = &self.import_bound_at;
        self.wait_for(|i| {
            if import as usize - i.free_import.len() >= IMPORT_DEPTH {
                return None;
            }
            let held = |s: &u32| known[(s - copy) as usize];
            let pos = i
                .free_import
                .iter()
                .position(|s| held(s) == Some(id))
                .or_else(|| i.free_import.iter().position(|s| held(s).is_none()))
                .or_else(|| {
                    (0..i.free_import.len())
                        .min_by_key(|&p| bound_at[(i.free_import[p] - copy) as usize])
                })?;
            Some(i.free_import.swap_remove(pos))
        })
    }

    /// Waits until the VPU holds no frame (every OUTPUT buffer done), handing
    /// coded frames out meanwhile.
    pub(super) fn wait_idle(&self) -> Result<Wake<()>, EngineError> {
        let (copy, import) = (self.shared.copy_slots, self.shared.import_slots);
        self.wait_for(|i| {
            (i.free_copy.len() == copy as usize && i.free_import.len() == import as usize)
                .then_some(())
        })
    }

    /// Gives back a copy slot taken with [`Self::copy_slot`] and not queued.
    pub(super) fn release_copy_slot(&self, slot: u32) {
        lock(&self.shared.inner).free_copy.push(slot);
    }

    /// Queues the frame now in copy slot `slot`.
    pub(super) fn queue_copy(
        &self,
        slot: u32,
        frame: u32,
        keyframe: bool,
    ) -> Result<(), EngineError> {
        let region = Arc::clone(&self.copy_regions[slot as usize]);
        self.queue(
            Buffer::new(QueueKind::Output, slot, region),
            frame,
            keyframe,
            None,
        )
    }

    /// Queues upstream's `buffer` (its single memory is `region`) in import slot `slot`.
    pub(super) fn queue_import(
        &mut self,
        slot: u32,
        region: Arc<Region>,
        buffer: gst::Buffer,
        frame: u32,
        keyframe: bool,
    ) -> Result<(), EngineError> {
        let i = (slot - self.shared.copy_slots) as usize;
        if self.import_regions[i] != Some(region.id()) {
            self.import_regions[i] = Some(region.id());
            self.binds += 1;
            self.import_bound_at[i] = self.binds;
            lock(&self.shared.stats).import_maps += 1;
        }
        if buffer.n_memory() > 0 {
            crate::allocator::set_device_busy(buffer.peek_memory(0), true);
        }
        self.queue(
            Buffer::new(QueueKind::Output, slot, region),
            frame,
            keyframe,
            Some(buffer),
        )
    }

    fn queue(
        &self,
        mut b: Buffer,
        frame: u32,
        keyframe: bool,
        held: Option<gst::Buffer>,
    ) -> Result<(), EngineError> {
        b.bytesused = self.raw.size;
        b.timestamp = u64::from(frame);
        b.flags = if b.region.owner() == Owner::Device {
            BufferFlags::NO_CACHE_CLEAN
        } else {
            BufferFlags::NONE
        };
        if keyframe {
            b.flags.insert(BufferFlags::KEYFRAME);
        }
        let slot = b.index;
        {
            let mut inner = lock(&self.shared.inner);
            inner.queued_at.insert(frame, Instant::now());
            if let Some(h) = held {
                inner.imported.insert(slot, h);
            }
        }
        if let Err(e) = self.shared.session.queue(b) {
            let mut inner = lock(&self.shared.inner);
            inner.queued_at.remove(&frame);
            if let Some(h) = inner.imported.remove(&slot) {
                release_busy(&h);
            }
            free_slot(&mut inner, self.shared.copy_slots, slot);
            return Err(EngineError::Vpu(e.to_string()));
        }
        Ok(())
    }

    /// Starts a drain (`ENC_CMD_STOP`): every queued frame comes out, then LAST.
    pub(super) fn start_drain(&self) -> Result<(), EngineError> {
        lock(&self.shared.inner).last = false;
        self.shared
            .session
            .drain()
            .map_err(|e| EngineError::Vpu(e.to_string()))
    }

    /// Waits for the LAST buffer of a drain, handing out coded frames.
    pub(super) fn wait_last(&self) -> Result<Wake<()>, EngineError> {
        self.wait_for(|i| std::mem::take(&mut i.last).then_some(()))
    }

    /// Flush: both queues off and on again; queued frames are dropped, coded
    /// ones not yet pushed too; the next frame is a key frame.
    pub(super) fn flush(&mut self) -> Result<(), EngineError> {
        self.join();
        let captures = self.stop_queues();
        self.reset_slots();
        let s = self.session();
        let setup = |r: Result<_, M2mError>| r.map_err(EngineError::Setup);
        setup(s.stream_on(QueueKind::Output))?;
        setup(s.stream_on(QueueKind::Capture))?;
        if captures.len() != CAPTURE_BUFFERS as usize {
            log::warn!(
                "flush got {} of {CAPTURE_BUFFERS} CAPTURE buffers back",
                captures.len()
            );
        }
        for mut b in captures {
            b.bytesused = 0;
            b.flags = BufferFlags::NONE;
            s.queue(b).map_err(|e| EngineError::Setup(e.error))?;
        }
        lock(&self.shared.inner).error = None;
        self.spawn()
    }

    /// Both queues off; every buffer back (CAPTURE ones returned).
    fn stop_queues(&self) -> Vec<Buffer> {
        let s = self.session();
        let mut captures = Vec::new();
        if let Err(e) = s.stream_off(QueueKind::Output) {
            log::warn!("OUTPUT stream off: {e}");
        }
        match s.stream_off(QueueKind::Capture) {
            Ok(returned) => captures.extend(returned),
            Err(e) => log::warn!("CAPTURE stream off: {e}"),
        }
        // Buffers done before the stream off still wait as events.
        while let Ok(Some(event)) = s.wait_event(Duration::ZERO) {
            if let Event::BufferDone(b) = event
                && b.queue == QueueKind::Capture
            {
                captures.push(b);
            }
        }
        captures
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.join();
        drop(self.stop_queues());
        self.reset_slots();
    }
}

fn release_busy(b: &gst::Buffer) {
    if b.n_memory() > 0 {
        crate::allocator::set_device_busy(b.peek_memory(0), false);
    }
}

fn free_slot(inner: &mut Inner, copy_slots: u32, slot: u32) {
    if slot < copy_slots {
        inner.free_copy.push(slot);
    } else {
        inner.free_import.push(slot);
    }
}

fn capture_loop(shared: &Shared) {
    let session = shared.session.as_ref();
    loop {
        if lock(&shared.inner).stop {
            return;
        }
        // The streaming thread is woken once per batch of events.
        let (handled, failed) = crate::common::events::handle_batch(
            POLL,
            |timeout| session.wait_event(timeout).map_err(|e| e.to_string()),
            |event| on_event(shared, event),
        );
        if let Some(e) = failed {
            log::error!("vpu-capture: {e}");
            lock(&shared.inner).error = Some(e);
            shared.cond.notify_all();
            return;
        }
        if handled > 0 {
            shared.cond.notify_all();
        }
    }
}

fn on_event(shared: &Shared, event: Event) -> Result<(), String> {
    match event {
        Event::BufferDone(b) if b.queue == QueueKind::Output => {
            let mut inner = lock(&shared.inner);
            if let Some(h) = inner.imported.remove(&b.index) {
                release_busy(&h);
            }
            free_slot(&mut inner, shared.copy_slots, b.index);
            Ok(())
        }
        Event::BufferDone(b) => on_capture(shared, b),
        Event::SourceChange(sc) => {
            log::warn!("vpu-capture: an encoder got a source change ({sc:?}), ignored");
            Ok(())
        }
    }
}

fn on_capture(shared: &Shared, mut b: Buffer) -> Result<(), String> {
    let frame = b.timestamp as u32;
    if b.flags.contains(BufferFlags::ERROR) {
        return Err(format!(
            "the VPU could not encode frame {frame}: {}",
            b.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let last = b.flags.contains(BufferFlags::LAST);
    if b.bytesused > 0 {
        if b.region.coherency() == Coherency::Cacheable && b.region.owner() == Owner::Device {
            b.region
                .sync_for_cpu()
                .map_err(|e| format!("cannot read coded frame {frame}: {e}"))?;
        }
        let data = b
            .region
            .cpu_read()
            .get(..b.bytesused)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                format!(
                    "CAPTURE buffer {} says {} bytes used but holds {}",
                    b.index,
                    b.bytesused,
                    b.region.size()
                )
            })?;
        let coded = Coded {
            frame,
            buffer: gst::Buffer::from_mut_slice(data),
            keyframe: b.flags.contains(BufferFlags::KEYFRAME),
        };
        let mut inner = lock(&shared.inner);
        if let Some(t) = inner.queued_at.remove(&frame) {
            lock(&shared.stats).vpu_time.add(t.elapsed());
        }
        inner.ready.push_back(coded);
    }
    if last {
        // A drain ended: resume, so that frames may follow (after a flush
        // or a new segment) on the same streaming setup.
        shared
            .session
            .start()
            .map_err(|e| format!("cannot restart after a drain: {e}"))?;
    }
    b.bytesused = 0;
    b.flags = if b.region.owner() == Owner::Device {
        BufferFlags::NO_CACHE_CLEAN
    } else {
        BufferFlags::NONE
    };
    shared
        .session
        .queue(b)
        .map_err(|e| format!("cannot requeue a CAPTURE buffer: {e}"))?;
    if last {
        lock(&shared.inner).last = true;
    }
    Ok(())
}
