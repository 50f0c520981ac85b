//! The element logic shared by the VPU encoders, and the [`Codec`]
//! descriptor that makes one of them.
//!
//! # Why `finish_frame` runs on the streaming thread
//!
//! `gst_video_encoder_finish_frame` takes the encoder's stream lock, which the
//! streaming thread holds throughout `handle_frame`, `finish` (EOS) and
//! `set_format`. The C v4l2 encoder releases that lock while it waits for the
//! device; safe gstreamer-rs cannot (the lock is only reachable as a raw
//! pointer, and this crate allows `unsafe` in `src/sys` and the allocator
//! only). A `vpu-capture` thread calling `finish_frame` would therefore
//! deadlock against a streaming thread waiting for a free OUTPUT slot or for
//! the end of a drain. So `vpu-capture` only services the VPU (see
//! `engine.rs`) and the streaming thread pushes what it coded: after queueing
//! each frame, while waiting for a free slot, and when draining (EOS, caps
//! change). A coded frame thus leaves when the next frame comes in or at the
//! drain; the element reports one frame of latency for that.
//!
//! # Locks
//!
//! `settings` and `state` are held only for short reads and writes. The
//! streaming setup (`stream`) is taken out of its mutex by the streaming
//! thread for the duration of a call and put back after, so no lock of the
//! element is held while waiting on the VPU, in `finish_frame` or in a
//! `parent_*` call.

use crate::common::stats::checker_counts;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gst::glib;
use gst::prelude::*;
use gst_video::prelude::*;

use super::copy::copy_frame;
use super::engine::{Coded, Engine, EngineError, OutputIo, Stats, Wake};
use super::pool::VpuBufferPool;
use crate::common::device::{self, DeviceChoice};
use crate::common::formats;
use crate::m2m::{Control, Format, PixelFormat, QueueKind, Role, Session};
use crate::mem::{Checker, CheckerConfig, Coherency, MemoryKind, Region};
use crate::sys::DmaBackend;

pub(crate) const DEFAULT_DEVICE: &str = "auto";

/// What makes one encoder element: its names, caps, properties and controls.
pub(crate) trait Codec: 'static + Send + Sync {
    /// The codec's own settings (the properties that shadow its controls).
    type Settings: Default + Clone + Send + fmt::Debug;
    /// Element name (`vpuh264enc`); also names the stats structure.
    const ELEMENT: &'static str;
    /// The codec as messages name it ("H.264").
    const CODEC_NAME: &'static str;
    /// The coded format of the session.
    const CODEC: PixelFormat;
    /// `extra-controls` names (as `v4l2-ctl -l` prints them), how each value
    /// becomes a [`Control`], and its range.
    const EXTRA_CONTROLS: &'static [ExtraControl];

    fn cat() -> gst::DebugCategory;
    /// True for the raw formats the codec takes.
    fn takes(raw: PixelFormat) -> bool;
    /// The src pad template caps.
    fn src_template_caps() -> gst::Caps;
    /// The codec's own properties.
    fn properties() -> Vec<glib::ParamSpec>;
    /// The controls a codec property sets, `None` if `name` is not one of them.
    fn property_controls(name: &str, value: &glib::Value) -> Option<Vec<Control>>;
    /// A codec property's value, `None` if `name` is not one of them.
    fn property_value(settings: &Self::Settings, name: &str) -> Option<glib::Value>;
    /// Records `control` in the settings it shadows.
    fn record(settings: &mut Self::Settings, control: Control);
    /// The controls that set a new session up from the settings.
    fn controls(settings: &Self::Settings) -> Vec<Control>;
    /// Negotiation: the src caps for `info` given what downstream `allowed`
    /// (its unfiltered caps; `None`: anything), and the controls they imply
    /// (profile, level). The error says what downstream asked that cannot be
    /// satisfied.
    fn output_caps(
        info: &gst_video::VideoInfo,
        allowed: Option<&gst::Caps>,
    ) -> Result<(gst::Caps, Vec<Control>), String>;
}

/// Which memory the frames the VPU reads live in (`memory-policy`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVpuEncMemoryPolicy")]
pub(crate) enum MemoryPolicy {
    /// The encoder chooses: frames it copies are written by the CPU only, so
    /// cacheable memory (fast writes, one cache clean per frame).
    #[default]
    #[enum_value(
        name = "Auto: cacheable frame buffers (the CPU writes them)",
        nick = "auto"
    )]
    Auto,
    #[enum_value(
        name = "Coherent: uncached frame buffers, no cache maintenance",
        nick = "coherent"
    )]
    Coherent,
    #[enum_value(
        name = "Cacheable: cached frame buffers, cleaned before the VPU reads",
        nick = "cacheable"
    )]
    Cacheable,
}

impl MemoryPolicy {
    fn coherency(self) -> Coherency {
        match self {
            MemoryPolicy::Coherent => Coherency::Coherent,
            MemoryPolicy::Auto | MemoryPolicy::Cacheable => Coherency::Cacheable,
        }
    }
}

/// How the OUTPUT (raw frame) queue gets its memory (`output-io-mode`,
/// named as the v4l2 encoders name theirs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVpuEncOutputIoMode")]
pub(crate) enum OutputIoMode {
    #[default]
    #[enum_value(
        name = "Auto: import dma-bufs where the VPU can, else mmap",
        nick = "auto"
    )]
    Auto,
    #[enum_value(
        name = "MMAP: buffers the VPU allocates, every frame copied in",
        nick = "mmap"
    )]
    Mmap,
    #[enum_value(
        name = "DMABuf import: upstream memory queued as is, an error where it cannot be",
        nick = "dmabuf-import"
    )]
    DmabufImport,
}

impl OutputIoMode {
    fn nick(self) -> &'static str {
        match self {
            OutputIoMode::Auto => "auto",
            OutputIoMode::Mmap => "mmap",
            OutputIoMode::DmabufImport => "dmabuf-import",
        }
    }
}

/// What `mode` means on a VPU: `kernel` (a V4L2 node, which can only import
/// real dma-bufs) or the emulated VPU, on a system whose best memory is
/// `backend`. `auto` imports, except on a kernel node when the system has no
/// dma-buf allocator (no /dev/dma_heap, no /dev/udmabuf): every frame would
/// then be a memfd the node cannot import, so it takes MMAP buffers.
pub(crate) fn resolve_output_io(mode: OutputIoMode, kernel: bool, backend: DmaBackend) -> OutputIo {
    match mode {
        OutputIoMode::Mmap => OutputIo::Mmap,
        OutputIoMode::DmabufImport => OutputIo::Import,
        OutputIoMode::Auto if kernel && backend == DmaBackend::Memfd => OutputIo::Mmap,
        OutputIoMode::Auto => OutputIo::Import,
    }
}

/// Takes the controls V4L2 does not have out of a kernel node's setup:
/// [`Control::LowLatency`] (the node codes as its driver does, and its
/// latency is what it says in `min_buffers(OUTPUT)`). True when one of them
/// asked for something else than a node does anyway (`LowLatency(false)`),
/// which deserves a warning.
fn drop_controls_v4l2_lacks(controls: &mut Vec<Control>) -> bool {
    let mut ignored = false;
    controls.retain(|c| match *c {
        Control::LowLatency(on) => {
            ignored |= !on;
            false
        }
        _ => true,
    });
    ignored
}

#[derive(Debug, Clone, Default)]
struct Settings<S> {
    codec: S,
    device: DeviceChoice,
    memory_policy: MemoryPolicy,
    output_io_mode: OutputIoMode,
    /// The `extra-controls` structure as last set.
    extra_controls: Option<gst::Structure>,
    /// `extra-controls` fields beyond the codec's table, for a kernel node
    /// to look up by name (`device=/dev/videoN` only).
    named_controls: Vec<(String, i64)>,
}

/// The open VPU session (from `open` to `close`).
struct State {
    session: Arc<dyn Session>,
    checker: Arc<Checker>,
    /// Raw caps the session's OUTPUT queue takes.
    sink_caps: gst::Caps,
    /// The session is on a kernel node: it imports real dma-bufs only.
    kernel: bool,
}

/// The streaming setup for the current input format.
struct Stream {
    engine: Engine,
    info: gst_video::VideoInfo,
    /// `output-io-mode=dmabuf-import`: a frame that cannot be imported is an
    /// error, not a copy.
    import_only: bool,
    /// The VPU imports real dma-bufs only (a kernel node).
    kernel: bool,
}

/// An `extra-controls` name, how its value becomes a [`Control`], its range.
pub(crate) type ExtraControl = (&'static str, fn(u32) -> Control, (u32, u32));

/// Why an `extra-controls` field was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum ExtraControlError {
    #[error("control '{name}' does not exist on the {codec} encoder (it has {known}): ignored")]
    Unknown {
        name: String,
        codec: &'static str,
        known: String,
    },
    #[error("control '{name}' takes an integer, got {found}: ignored")]
    NotAnInteger { name: String, found: String },
    #[error("control '{name}' takes {min}..={max}, got {value}: ignored")]
    OutOfRange {
        name: String,
        value: i64,
        min: u32,
        max: u32,
    },
}

/// Parsed `extra-controls`: the codec table's controls, integer fields with
/// other names (a kernel node may have them), and what was wrong with the rest.
#[derive(Debug, Default)]
struct ExtraControls {
    controls: Vec<Control>,
    named: Vec<(String, i64)>,
    errors: Vec<ExtraControlError>,
}

/// The controls in an `extra-controls` structure, in field order. With
/// `by_name` (a kernel node), integer fields beyond the codec's table are
/// kept for the node to look up by name; without, they are errors.
fn parse_extra_controls<C: Codec>(s: &gst::StructureRef, by_name: bool) -> ExtraControls {
    let mut out = ExtraControls::default();
    for (name, value) in s.iter() {
        let known = C::EXTRA_CONTROLS.iter().find(|(n, ..)| *n == name);
        if known.is_none() && !by_name {
            out.errors.push(ExtraControlError::Unknown {
                name: name.to_string(),
                codec: C::CODEC_NAME,
                known: C::EXTRA_CONTROLS
                    .iter()
                    .map(|(n, ..)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
            continue;
        }
        let v = value
            .get::<i32>()
            .map(i64::from)
            .or_else(|_| value.get::<u32>().map(i64::from))
            .or_else(|_| value.get::<i64>())
            .or_else(|_| value.get::<u64>().map(|v| v.min(i64::MAX as u64) as i64));
        let Ok(v) = v else {
            out.errors.push(ExtraControlError::NotAnInteger {
                name: name.to_string(),
                found: format!("{value:?}"),
            });
            continue;
        };
        let Some(&(_, make, (min, max))) = known else {
            out.named.push((name.to_string(), v));
            continue;
        };
        match u32::try_from(v) {
            Ok(u) if (min..=max).contains(&u) => out.controls.push(make(u)),
            _ => out.errors.push(ExtraControlError::OutOfRange {
                name: name.to_string(),
                value: v,
                min,
                max,
            }),
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Raw formats the codec takes, in the contract's order.
fn encodable_formats<C: Codec>(candidates: &[PixelFormat]) -> Vec<PixelFormat> {
    candidates
        .iter()
        .copied()
        .filter(|&p| {
            !p.is_coded()
                && C::takes(p)
                && formats::video_format(p).is_some()
                && Format::raw(p, 16, 16).is_some()
        })
        .collect()
}

/// The state and logic of one encoder element; its imp struct holds one and
/// delegates to it (see [`encoder_element!`]).
pub(crate) struct EncoderBase<C: Codec> {
    settings: Mutex<Settings<C::Settings>>,
    state: Mutex<Option<State>>,
    stream: Mutex<Option<Stream>>,
    stats: Arc<Mutex<Stats>>,
    /// Controls set since the streaming setup started, not yet given to the
    /// VPU: the streaming thread applies them before the next frame.
    pending: Mutex<Vec<Control>>,
    /// Named controls set since the streaming setup started (kernel nodes).
    pending_named: Mutex<Vec<(String, i64)>>,
    /// An element error was posted for the current run: post no second one.
    error_posted: AtomicBool,
}

impl<C: Codec> Default for EncoderBase<C> {
    fn default() -> Self {
        EncoderBase {
            settings: Mutex::default(),
            state: Mutex::default(),
            stream: Mutex::default(),
            stats: Arc::default(),
            pending: Mutex::default(),
            pending_named: Mutex::default(),
            error_posted: AtomicBool::new(false),
        }
    }
}

type Enc = gst_video::VideoEncoder;

impl<C: Codec> EncoderBase<C> {
    /// The sink pad template caps: every raw format the codec takes.
    pub(crate) fn sink_template_caps() -> gst::Caps {
        formats::raw_caps(&encodable_formats::<C>(PixelFormat::ALL))
    }

    /// Posts the element error for `e` (once per run) and gives the flow error.
    fn fail(&self, enc: &Enc, e: &EngineError) -> gst::FlowError {
        if !self.error_posted.swap(true, Ordering::SeqCst) {
            gst::element_error!(enc, gst::StreamError::Encode, ["{}", e]);
        } else {
            gst::debug!(C::cat(), obj = enc, "again: {e}");
        }
        gst::FlowError::Error
    }

    /// Runs `f` on the streaming setup, taken out of its mutex meanwhile.
    fn with_stream<R>(&self, f: impl FnOnce(&mut Stream) -> R) -> Option<R> {
        let mut stream = lock(&self.stream).take()?;
        let r = f(&mut stream);
        *lock(&self.stream) = Some(stream);
        Some(r)
    }

    /// Pushes coded frames downstream, in order.
    fn push(&self, enc: &Enc, coded: Vec<Coded>) -> Result<gst::FlowSuccess, gst::FlowError> {
        for c in coded {
            let Some(mut frame) = enc.frame(c.frame as i32) else {
                gst::warning!(
                    C::cat(),
                    obj = enc,
                    "coded frame {} is not pending any more",
                    c.frame
                );
                continue;
            };
            if c.keyframe {
                frame.set_flags(gst_video::VideoCodecFrameFlags::SYNC_POINT);
            } else {
                frame.unset_flags(gst_video::VideoCodecFrameFlags::SYNC_POINT);
            }
            gst::trace!(
                C::cat(),
                obj = enc,
                "frame {} coded: {} bytes, key {}",
                c.frame,
                c.buffer.size(),
                c.keyframe
            );
            frame.set_output_buffer(c.buffer);
            enc.finish_frame(frame)?;
            lock(&self.stats).frames_out += 1;
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Drains the VPU: every queued frame is pushed.
    fn drain(&self, enc: &Enc, engine: &Engine) -> Result<gst::FlowSuccess, gst::FlowError> {
        engine.start_drain().map_err(|e| self.fail(enc, &e))?;
        loop {
            match engine.wait_last().map_err(|e| self.fail(enc, &e))? {
                Wake::Got(()) => break,
                Wake::Ready(c) => {
                    self.push(enc, c)?;
                }
            }
        }
        let rest = engine.take_ready().map_err(|e| self.fail(enc, &e))?;
        self.push(enc, rest)
    }

    /// The region behind `input` if it can be queued without a copy: one
    /// memory starting at its fd's start, in the contract layout, that is
    /// ours or a foreign dma-buf (imported: the VPU maps it, `checker`
    /// watches it like our own memory); a kernel node (`kernel`) takes real
    /// dma-bufs only, not memfds. Else why not.
    fn importable(
        input: &gst::BufferRef,
        info: &gst_video::VideoInfo,
        raw: &Format,
        checker: Option<&Arc<Checker>>,
        kernel: bool,
    ) -> Result<Arc<Region>, String> {
        if input.n_memory() != 1 {
            return Err(format!(
                "it has {} memories, the VPU takes one",
                input.n_memory()
            ));
        }
        let mem = input.peek_memory(0);
        if mem.offset() != 0 {
            return Err(format!(
                "its memory starts at byte {} of its fd, the VPU takes byte 0",
                mem.offset()
            ));
        }
        formats::buffer_layout_matches(input, info, raw)
            .map_err(|e| format!("its layout is not the VPU's: {e}"))?;
        let region = match crate::allocator::region(mem) {
            Some(region) => region,
            None => {
                // Mapped at its first import only (kept with the memory).
                let checker = checker.ok_or("no VPU session")?;
                crate::allocator::import_foreign_fd_memory(mem, raw.size, checker, kernel).ok_or(
                    "its memory is neither VPU memory nor fd memory (a dma-buf, a memfd)",
                )??
            }
        };
        if kernel && region.kind() != MemoryKind::DmaBuf {
            return Err(
                "it is memfd memory (this system has neither /dev/dma_heap nor \
                 /dev/udmabuf), which a kernel node cannot import"
                    .into(),
            );
        }
        if region.size() < raw.size {
            return Err(format!(
                "its memory holds {} bytes, a frame needs {}",
                region.size(),
                raw.size
            ));
        }
        Ok(region)
    }

    fn encode(
        &self,
        enc: &Enc,
        stream: &mut Stream,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let number = frame.system_frame_number();
        let keyframe = frame
            .flags()
            .contains(gst_video::VideoCodecFrameFlags::FORCE_KEYFRAME);
        let Some(input) = frame.input_buffer_owned() else {
            gst::element_error!(
                enc,
                gst::CoreError::Failed,
                ["frame {number} has no input buffer"]
            );
            return Err(gst::FlowError::Error);
        };
        // The base class keeps the frame; it is found again by its number.
        drop(frame);
        lock(&self.stats).frames_in += 1;
        let engine = &mut stream.engine;
        self.apply_pending(enc, engine)?;

        let checker = lock(&self.state).as_ref().map(|st| Arc::clone(&st.checker));
        let importable = match engine.io() {
            OutputIo::Mmap => None,
            OutputIo::Import => Some(Self::importable(
                &input,
                &stream.info,
                engine.raw(),
                checker.as_ref(),
                stream.kernel,
            )),
        };
        let importable = match importable {
            Some(Err(why)) if stream.import_only => {
                gst::element_error!(
                    enc,
                    gst::StreamError::Encode,
                    ("output-io-mode=dmabuf-import: frame {number} cannot be imported: {why}"),
                    ["use output-io-mode=auto or mmap to copy such frames"]
                );
                return Err(gst::FlowError::Error);
            }
            Some(Err(why)) => {
                gst::trace!(C::cat(), obj = enc, "frame {number} is copied: {why}");
                None
            }
            Some(Ok(region)) => Some(region),
            None => None,
        };
        if let Some(region) = importable {
            let slot = loop {
                match engine
                    .import_slot(&region)
                    .map_err(|e| self.fail(enc, &e))?
                {
                    Wake::Got(slot) => break slot,
                    Wake::Ready(c) => {
                        self.push(enc, c)?;
                    }
                }
            };
            engine
                .queue_import(slot, region, input, number, keyframe)
                .map_err(|e| self.fail(enc, &e))?;
            lock(&self.stats).imported_frames += 1;
            gst::trace!(
                C::cat(),
                obj = enc,
                "frame {number} imported into slot {slot}"
            );
        } else {
            let vframe =
                gst_video::VideoFrameRef::from_buffer_ref_readable(input.as_ref(), &stream.info)
                    .map_err(|_| {
                        gst::element_error!(
                            enc,
                            gst::StreamError::Format,
                            ["frame {number} cannot be mapped as {:?}", stream.info]
                        );
                        gst::FlowError::Error
                    })?;
            let (slot, region) = loop {
                match engine.copy_slot().map_err(|e| self.fail(enc, &e))? {
                    Wake::Got(s) => break s,
                    Wake::Ready(c) => {
                        self.push(enc, c)?;
                    }
                }
            };
            let copied = {
                let mut dst = region.cpu_write();
                copy_frame(&vframe, engine.raw(), &mut dst)
            };
            let copied = match copied {
                Ok(n) => n,
                Err(e) => {
                    engine.release_copy_slot(slot);
                    gst::element_error!(enc, gst::StreamError::Format, ["frame {number}: {e}"]);
                    return Err(gst::FlowError::Error);
                }
            };
            drop(vframe);
            engine
                .queue_copy(slot, number, keyframe)
                .map_err(|e| self.fail(enc, &e))?;
            let mut stats = lock(&self.stats);
            stats.frame_copies += 1;
            stats.bytes_copied += copied as u64;
        }
        let ready = engine.take_ready().map_err(|e| self.fail(enc, &e))?;
        self.push(enc, ready)
    }

    fn stats_structure(&self) -> gst::Structure {
        let s = lock(&self.stats).clone();
        let io = lock(&self.stream)
            .as_ref()
            .map_or("none", |st| st.engine.io().name());
        let checker = lock(&self.state).as_ref().map(|st| Arc::clone(&st.checker));
        let (syncs, violations) = checker_counts(checker.as_deref());
        gst::Structure::builder(format!("{}-stats", C::ELEMENT))
            .field("frames-in", s.frames_in)
            .field("frames-out", s.frames_out)
            .field("frame-copies", s.frame_copies)
            .field("bytes-copied", s.bytes_copied)
            .field("imported-frames", s.imported_frames)
            .field("import-maps", s.import_maps)
            .field("cache-syncs", syncs)
            .field("coherency-violations", violations)
            .field("vpu-time-per-frame-us", s.vpu_time.mean_us())
            .field("output-io", io)
            .build()
    }

    /// Gives the controls set since the last frame to the VPU, before the
    /// next frame is queued. The VPU reads its controls when it codes a frame
    /// (as vicodec does), so it first finishes every frame queued before:
    /// a change applies exactly from the first frame `handle_frame` receives
    /// after it was set, at the cost of one pipeline bubble per change.
    fn apply_pending(&self, enc: &Enc, engine: &Engine) -> Result<(), gst::FlowError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        let named = std::mem::take(&mut *lock(&self.pending_named));
        if pending.is_empty() && named.is_empty() {
            return Ok(());
        }
        loop {
            match engine.wait_idle().map_err(|e| self.fail(enc, &e))? {
                Wake::Got(()) => break,
                Wake::Ready(c) => {
                    self.push(enc, c)?;
                }
            }
        }
        for control in pending {
            gst::debug!(C::cat(), obj = enc, "applying {control:?}");
            if let Err(e) = engine.session().set_control(control) {
                gst::warning!(C::cat(), obj = enc, "the VPU refused {control:?}: {e}");
                gst::element_warning!(
                    enc,
                    gst::LibraryError::Settings,
                    ["the VPU refused {control:?}: {e}"]
                );
            }
        }
        self.apply_named(enc, engine.session(), &named);
        Ok(())
    }

    /// Gives `extra-controls` fields beyond the codec's table to a kernel
    /// node by name; one it refuses is a warning naming it.
    fn apply_named(&self, enc: &Enc, session: &dyn Session, named: &[(String, i64)]) {
        for (name, value) in named {
            gst::debug!(C::cat(), obj = enc, "applying control {name}={value}");
            if let Err(e) = session.set_named_control(name, *value) {
                gst::warning!(C::cat(), obj = enc, "extra-controls: {e}: ignored");
                gst::element_warning!(
                    enc,
                    gst::ResourceError::Settings,
                    ("extra-controls: {e}: ignored")
                );
            }
        }
    }

    /// Records `controls` in the settings and queues them for the VPU.
    fn set_controls(&self, enc: &Enc, settings: &mut Settings<C::Settings>, controls: &[Control]) {
        for &c in controls {
            gst::debug!(C::cat(), obj = enc, "setting {c:?}");
            C::record(&mut settings.codec, c);
        }
        lock(&self.pending).extend_from_slice(controls);
    }

    /// The pool proposed for `caps`: the streaming setup's OUTPUT format when
    /// the caps are the current ones, else the contract's format for them.
    fn input_pool(&self, caps: &gst::CapsRef) -> Result<(VpuBufferPool, u32, u32), String> {
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|_| format!("{caps} is not raw video"))?;
        let pf = formats::pixel_format(info.format())
            .ok_or_else(|| format!("{:?} is not a format the VPU takes", info.format()))?;
        let current = lock(&self.stream).as_ref().and_then(|st| {
            (st.info.format() == info.format()
                && st.info.width() == info.width()
                && st.info.height() == info.height())
            .then(|| st.engine.raw().clone())
        });
        let raw = current
            .or_else(|| Format::raw(pf, info.width(), info.height()))
            .ok_or_else(|| format!("the {} encoder cannot take {caps}", C::CODEC_NAME))?;
        let (checker, min, kernel) = {
            let st = lock(&self.state);
            let st = st.as_ref().ok_or("no VPU session (not opened)")?;
            (
                Arc::clone(&st.checker),
                st.session.min_buffers(QueueKind::Output),
                st.kernel,
            )
        };
        let mode = lock(&self.settings).output_io_mode;
        if resolve_output_io(mode, kernel, DmaBackend::probe()) == OutputIo::Mmap {
            return Err(format!(
                "output-io-mode={} resolves to mmap: every frame is copied into \
                 the VPU's own buffers",
                mode.nick()
            ));
        }
        let coherency = lock(&self.settings).memory_policy.coherency();
        let pool = VpuBufferPool::new(&raw, coherency, &checker).map_err(|e| e.to_string())?;
        let size = u32::try_from(raw.size).map_err(|_| format!("{} bytes", raw.size))?;
        // The VPU's minimum (1 + the frames its codec holds, whose buffers
        // the base class keeps until their units are pushed), the frame the
        // encoder holds for its one frame of latency, and the one the
        // producer fills.
        Ok((pool, size, min + 2))
    }

    // ---- properties ----

    /// The properties of every encoder, after the codec's own.
    pub(crate) fn properties() -> Vec<glib::ParamSpec> {
        let mut props = C::properties();
        let names = C::EXTRA_CONTROLS
            .iter()
            .map(|(n, ..)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        props.extend([
            glib::ParamSpecBoxed::builder::<gst::Structure>("extra-controls")
                .nick("Extra controls")
                .blurb(&format!(
                    "V4L2 controls by the names v4l2-ctl -l prints, as for the v4l2 \
                     elements (\"controls,name=value,...\"); this encoder knows {names}. \
                     They set the same values as the properties that shadow them (the \
                     last one set wins). On a kernel node (device=/dev/videoN set \
                     before this property) any other integer control is looked up by \
                     that name on the node. An unknown name or a value out of range is \
                     ignored with a warning naming it. Changes in PLAYING apply from \
                     the next frame the encoder receives"
                ))
                .mutable_playing()
                .build(),
            glib::ParamSpecString::builder("device")
                .nick("Device")
                .blurb(&format!(
                    "Which VPU encodes: \"auto\" (a kernel codec node offering {}, \
                     else the emulated VPU), \"emu\" (the in-process emulated VPU) \
                     or a V4L2 M2M encoder node path such as /dev/video0 (the kernel \
                     backend). Read when the element starts",
                    C::CODEC_NAME
                ))
                .default_value(Some(DEFAULT_DEVICE))
                .mutable_ready()
                .build(),
            glib::ParamSpecEnum::builder::<MemoryPolicy>("memory-policy")
                .nick("Memory policy")
                .blurb(
                    "Memory of the frame buffers the encoder copies input into and \
                     of the pool it proposes upstream (input already in VPU memory \
                     is queued as is): cacheable \
                     (fast CPU writes, cleaned before the VPU reads) or coherent \
                     (uncached, no cache maintenance); auto picks cacheable",
                )
                .default_value(MemoryPolicy::Auto)
                .mutable_ready()
                .build(),
            glib::ParamSpecEnum::builder::<OutputIoMode>("output-io-mode")
                .nick("Output IO mode")
                .blurb(
                    "How raw frames reach the VPU's OUTPUT queue: dmabuf-import \
                     (V4L2_MEMORY_DMABUF: upstream dma-bufs and VPU memory queued \
                     as they are; a frame that cannot be imported is an error naming \
                     why), mmap (V4L2_MEMORY_MMAP: buffers the VPU allocates, every \
                     frame copied in and counted in stats) or auto (import where \
                     possible, else copy into the encoder's own buffers; on a kernel \
                     node of a system without /dev/dma_heap or /dev/udmabuf, mmap). \
                     The emulated VPU has the same semantics with its own memory, \
                     and imports memfd memory too (ours, or upstream fd memory). \
                     Read when the caps are set",
                )
                .default_value(OutputIoMode::Auto)
                .mutable_ready()
                .build(),
            glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                .nick("Statistics")
                .blurb(&format!(
                    "{}-stats: frames-in, frames-out, frame-copies and \
                     bytes-copied (input copied into VPU memory), imported-frames \
                     (queued without a copy), import-maps (times the VPU mapped an \
                     imported buffer: once per buffer of the proposed pool or of \
                     upstream's pool, while they fit the VPU's 16 import slots), \
                     cache-syncs and coherency-violations \
                     (of the whole VPU, shared by every element using it), \
                     vpu-time-per-frame-us (mean time from queueing a frame to its \
                     coded data, in microseconds), output-io (what output-io-mode \
                     resolved to: dmabuf-import or mmap; none before caps). \
                     Counters restart at READY->PAUSED",
                    C::ELEMENT
                ))
                .read_only()
                .build(),
        ]);
        props
    }

    pub(crate) fn set_property(&self, enc: &Enc, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        let mut rejected = Vec::new();
        let name = pspec.name();
        if let Some(controls) = C::property_controls(name, value) {
            self.set_controls(enc, &mut settings, &controls);
            return;
        }
        match name {
            "extra-controls" => {
                let s: Option<gst::Structure> = value.get().expect("type checked upstream");
                settings.named_controls.clear();
                if let Some(s) = &s {
                    // A kernel node looks other names up when streaming.
                    let by_name = matches!(settings.device, DeviceChoice::Path(_));
                    let parsed = parse_extra_controls::<C>(s, by_name);
                    self.set_controls(enc, &mut settings, &parsed.controls);
                    rejected = parsed.errors;
                    lock(&self.pending_named).extend(parsed.named.iter().cloned());
                    settings.named_controls = parsed.named;
                }
                settings.extra_controls = s;
            }
            "device" => {
                let v: Option<String> = value.get().expect("type checked upstream");
                match v.as_deref().unwrap_or(DEFAULT_DEVICE).parse() {
                    Ok(d) => settings.device = d,
                    Err(e) => gst::error!(C::cat(), obj = enc, "{e}: keeping {}", settings.device),
                }
            }
            "memory-policy" => {
                settings.memory_policy = value.get().expect("type checked upstream");
            }
            "output-io-mode" => {
                settings.output_io_mode = value.get().expect("type checked upstream");
            }
            other => {
                gst::error!(C::cat(), obj = enc, "no writable property {other}");
            }
        }
        drop(settings);
        for e in rejected {
            gst::warning!(C::cat(), obj = enc, "extra-controls: {e}");
            gst::element_warning!(enc, gst::ResourceError::Settings, ("extra-controls: {e}"));
        }
    }

    pub(crate) fn property(&self, enc: &Enc, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = lock(&self.settings);
        if let Some(v) = C::property_value(&settings.codec, pspec.name()) {
            return v;
        }
        match pspec.name() {
            "device" => settings.device.to_string().to_value(),
            "memory-policy" => settings.memory_policy.to_value(),
            "output-io-mode" => settings.output_io_mode.to_value(),
            "extra-controls" => settings.extra_controls.to_value(),
            "stats" => {
                drop(settings);
                self.stats_structure().to_value()
            }
            other => {
                gst::error!(C::cat(), obj = enc, "no readable property {other}");
                None::<String>.to_value()
            }
        }
    }

    // ---- GstVideoEncoder ----

    pub(crate) fn open(&self, enc: &Enc) -> Result<(), gst::ErrorMessage> {
        let choice = lock(&self.settings).device.clone();
        let opened = device::open(&choice, Role::Encoder, C::CODEC).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenReadWrite,
                [
                    "cannot open an {} encoder on device {choice}: {e}",
                    C::CODEC_NAME
                ]
            )
        })?;
        let offered = opened.session.enum_formats(QueueKind::Output);
        let sink_caps = formats::raw_caps(&encodable_formats::<C>(&offered));
        if sink_caps.is_empty() {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "{} offers no raw format the {} encoder takes (it lists {offered:?})",
                    opened.info.name,
                    C::CODEC_NAME
                ]
            ));
        }
        gst::info!(
            C::cat(),
            obj = enc,
            "encoding on {} ({choice}), input {sink_caps}",
            opened.info.name
        );
        let checker = opened
            .checker
            .unwrap_or_else(|| Checker::new(CheckerConfig::default()));
        *lock(&self.state) = Some(State {
            session: Arc::from(opened.session),
            checker,
            sink_caps,
            kernel: matches!(opened.info.kind, crate::m2m::DeviceKind::Kernel(_)),
        });
        Ok(())
    }

    pub(crate) fn close(&self) {
        drop(lock(&self.stream).take());
        drop(lock(&self.state).take());
    }

    pub(crate) fn start(&self) {
        *lock(&self.stats) = Stats::default();
        self.error_posted.store(false, Ordering::SeqCst);
    }

    pub(crate) fn stop(&self) {
        // Joins vpu-capture and stops both queues.
        drop(lock(&self.stream).take());
    }

    /// The sink caps the open session takes, narrowed by what downstream
    /// takes; `None` before `open`. When downstream takes nothing we can
    /// produce, the session's caps unnarrowed: negotiation then reaches
    /// `set_format`, whose error says what downstream asked and why it cannot
    /// be had, instead of a bare not-negotiated in the source.
    pub(crate) fn caps(&self, enc: &Enc, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let sink_caps = lock(&self.state).as_ref().map(|s| s.sink_caps.clone())?;
        let proxied = enc.proxy_getcaps(Some(&sink_caps), filter);
        if !proxied.is_empty() {
            return Some(proxied);
        }
        Some(match filter {
            Some(f) => f.intersect_with_mode(&sink_caps, gst::CapsIntersectMode::First),
            None => sink_caps,
        })
    }

    pub(crate) fn set_format(
        &self,
        enc: &Enc,
        state: &gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
    ) -> Result<(), gst::LoggableError> {
        let cat = C::cat();
        let info = state.info().clone();
        gst::debug!(cat, obj = enc, "input {:?}", info);
        let pf = formats::pixel_format(info.format()).ok_or_else(|| {
            gst::loggable_error!(cat, "{:?} is not a format the VPU takes", info.format())
        })?;
        let (w, h) = (info.width(), info.height());
        let mut raw = Format::raw(pf, w, h).ok_or_else(|| {
            gst::loggable_error!(
                cat,
                "the {} encoder cannot take {w}x{h} {pf}",
                C::CODEC_NAME
            )
        })?;
        raw.colorimetry = formats::colorimetry_from_gst(&info.colorimetry(), pf, w, h);

        // What downstream takes decides the output caps (and for H.264 the
        // profile and level) before the VPU is set up.
        // Unfiltered, so the codec can name what downstream asked for.
        let allowed = enc.src_pad().peer_query_caps(None);
        let allowed = (!allowed.is_any()).then_some(allowed);
        let (caps, negotiated) = C::output_caps(&info, allowed.as_ref()).map_err(|e| {
            gst::element_error!(
                enc,
                gst::CoreError::Negotiation,
                ["cannot negotiate the {} output: {e}", C::CODEC_NAME]
            );
            gst::loggable_error!(cat, "{e}")
        })?;

        // A new format mid-stream: every frame of the old one goes out first.
        if let Some(old) = lock(&self.stream).take() {
            gst::debug!(
                cat,
                obj = enc,
                "caps change: draining {}x{} first",
                old.info.width(),
                old.info.height()
            );
            self.drain(enc, &old.engine)
                .map_err(|e| gst::loggable_error!(cat, "draining before the caps change: {e:?}"))?;
            // Dropping it stops both queues and joins vpu-capture.
            drop(old);
        }

        let (session, checker, kernel) = {
            let st = lock(&self.state);
            let st = st
                .as_ref()
                .ok_or_else(|| gst::loggable_error!(cat, "no VPU session (not opened)"))?;
            (Arc::clone(&st.session), Arc::clone(&st.checker), st.kernel)
        };
        // The new setup starts from the settings: what was pending is in
        // them (a control set from now on is pending again, so none is lost).
        lock(&self.pending).clear();
        lock(&self.pending_named).clear();
        let (mut controls, coherency, named, io_mode) = {
            let s = lock(&self.settings);
            (
                C::controls(&s.codec),
                s.memory_policy.coherency(),
                s.named_controls.clone(),
                s.output_io_mode,
            )
        };
        let io = resolve_output_io(io_mode, kernel, DmaBackend::probe());
        gst::info!(
            cat,
            obj = enc,
            "output-io-mode {io_mode:?}: OUTPUT takes {} buffers",
            io.name()
        );
        let fps = info.fps();
        // Rate control needs a rate: a variable one (0/1) is taken as 30 fps.
        controls.push(if fps.numer() > 0 && fps.denom() > 0 {
            Control::FrameRate {
                num: fps.numer() as u32,
                den: fps.denom() as u32,
            }
        } else {
            Control::FrameRate { num: 30, den: 1 }
        });
        controls.extend(negotiated);
        if kernel && drop_controls_v4l2_lacks(&mut controls) {
            let device = lock(&self.settings).device.clone();
            gst::element_warning!(
                enc,
                gst::LibraryError::Settings,
                ("low-latency=false is ignored: {device} is a kernel V4L2 node, and \
                  V4L2 has no control for a throughput mode; it codes as its driver does")
            );
        }
        let engine = Engine::start(
            session,
            &raw,
            io,
            &controls,
            coherency,
            &checker,
            Arc::clone(&self.stats),
            C::ELEMENT,
        )
        .map_err(|e| {
            gst::element_error!(enc, gst::LibraryError::Settings, ["{e}"]);
            gst::loggable_error!(cat, "{e}")
        })?;
        // After the setup's own controls, so that a named one wins.
        self.apply_named(enc, engine.session(), &named);
        gst::debug!(cat, obj = enc, "VPU takes {:?}", engine.raw());

        let output = enc
            .set_output_state(caps.clone(), Some(state))
            .map_err(|_| gst::loggable_error!(cat, "cannot set the output state"))?;
        enc.negotiate(output)
            .map_err(|_| gst::loggable_error!(cat, "downstream refused {caps}"))?;

        // A coded frame leaves when the next frame comes in (see the module
        // doc), and the VPU's codec may hold `min_buffers(OUTPUT) - 1` frames
        // before it codes one (H.264 with low-latency=false): so
        // `min_buffers(OUTPUT)` frames in all, the number v4l2videodec
        // also takes its latency from (MIN_BUFFERS_FOR_CAPTURE there).
        if fps.numer() > 0 {
            let frames = u64::from(engine.session().min_buffers(QueueKind::Output).max(1));
            let latency = gst::ClockTime::SECOND
                .mul_div_ceil(frames * fps.denom() as u64, fps.numer() as u64)
                .unwrap_or(gst::ClockTime::ZERO);
            gst::info!(
                cat,
                obj = enc,
                "latency {latency} ({frames} frames: the VPU holds {})",
                frames - 1
            );
            enc.set_latency(latency, Some(latency));
        }
        *lock(&self.stream) = Some(Stream {
            engine,
            info,
            import_only: io_mode == OutputIoMode::DmabufImport,
            kernel,
        });
        Ok(())
    }

    pub(crate) fn handle_frame(
        &self,
        enc: &Enc,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.with_stream(|stream| self.encode(enc, stream, frame))
            .unwrap_or_else(|| {
                gst::element_error!(
                    enc,
                    gst::CoreError::Negotiation,
                    ["a frame came before any caps"]
                );
                Err(gst::FlowError::NotNegotiated)
            })
    }

    pub(crate) fn finish(&self, enc: &Enc) -> Result<gst::FlowSuccess, gst::FlowError> {
        gst::debug!(C::cat(), obj = enc, "draining at EOS");
        self.with_stream(|stream| self.drain(enc, &stream.engine))
            .unwrap_or(Ok(gst::FlowSuccess::Ok))
    }

    pub(crate) fn flush(&self, enc: &Enc) -> bool {
        gst::debug!(C::cat(), obj = enc, "flush");
        self.error_posted.store(false, Ordering::SeqCst);
        self.with_stream(|stream| stream.engine.flush())
            .map(|r| match r {
                Ok(()) => true,
                Err(e) => {
                    gst::error!(C::cat(), obj = enc, "flush failed: {e}");
                    false
                }
            })
            .unwrap_or(true)
    }

    /// Adds the VPU pool and the VideoMeta to the query; the caller then
    /// lets the base class add its defaults.
    pub(crate) fn propose_allocation(&self, enc: &Enc, query: &mut gst::query::Allocation) {
        // Our pool's frames carry the contract's strides in a VideoMeta; any
        // other strides are fine too (the copy honours the VideoMeta).
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        let (caps, _need_pool) = query.get();
        match caps.map(|c| self.input_pool(c)) {
            Some(Ok((pool, size, min))) => {
                gst::debug!(
                    C::cat(),
                    obj = enc,
                    "proposing the VPU pool: {size}-byte frames, at least {min}"
                );
                // No maximum: the base class holds frames until they are
                // coded, so a bounded pool could starve the producer.
                query.add_allocation_pool(Some(&pool), size, min, 0);
            }
            Some(Err(e)) => gst::info!(C::cat(), obj = enc, "no VPU pool to propose: {e}"),
            None => gst::debug!(C::cat(), obj = enc, "allocation query without caps"),
        }
    }
}

/// Makes `$imp` (a struct with a `base: EncoderBase<$codec>` field) a
/// GstVideoEncoder subclass: GObject properties, element metadata and pad
/// templates, and every GstVideoEncoder virtual method, all delegated to the
/// base. `$longname`/`$description` are the element metadata.
macro_rules! encoder_element {
    ($imp:ty, $codec:ty, $longname:expr, $description:expr) => {
        impl gst::glib::subclass::object::ObjectImpl for $imp {
            fn properties() -> &'static [gst::glib::ParamSpec] {
                static PROPERTIES: std::sync::LazyLock<Vec<gst::glib::ParamSpec>> =
                    std::sync::LazyLock::new($crate::encoder::EncoderBase::<$codec>::properties);
                PROPERTIES.as_ref()
            }

            fn set_property(
                &self,
                _id: usize,
                value: &gst::glib::Value,
                pspec: &gst::glib::ParamSpec,
            ) {
                let obj = self.obj();
                self.base.set_property(obj.upcast_ref(), value, pspec);
            }

            fn property(&self, _id: usize, pspec: &gst::glib::ParamSpec) -> gst::glib::Value {
                let obj = self.obj();
                self.base.property(obj.upcast_ref(), pspec)
            }
        }

        impl gst::subclass::prelude::GstObjectImpl for $imp {}

        impl gst::subclass::prelude::ElementImpl for $imp {
            fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
                static META: std::sync::LazyLock<gst::subclass::ElementMetadata> =
                    std::sync::LazyLock::new(|| {
                        gst::subclass::ElementMetadata::new(
                            $longname,
                            "Codec/Encoder/Video/Hardware",
                            $description,
                            "gst-vpu developers",
                        )
                    });
                Some(&*META)
            }

            fn pad_templates() -> &'static [gst::PadTemplate] {
                static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                    std::sync::LazyLock::new(|| {
                        let sink = gst::PadTemplate::new(
                            "sink",
                            gst::PadDirection::Sink,
                            gst::PadPresence::Always,
                            &$crate::encoder::EncoderBase::<$codec>::sink_template_caps(),
                        )
                        .expect("a valid sink template");
                        let src = gst::PadTemplate::new(
                            "src",
                            gst::PadDirection::Src,
                            gst::PadPresence::Always,
                            &<$codec as $crate::encoder::Codec>::src_template_caps(),
                        )
                        .expect("a valid src template");
                        vec![sink, src]
                    });
                TEMPLATES.as_ref()
            }
        }

        impl gst_video::subclass::prelude::VideoEncoderImpl for $imp {
            fn open(&self) -> Result<(), gst::ErrorMessage> {
                self.base.open(self.obj().upcast_ref())
            }

            fn close(&self) -> Result<(), gst::ErrorMessage> {
                self.base.close();
                Ok(())
            }

            fn start(&self) -> Result<(), gst::ErrorMessage> {
                self.base.start();
                Ok(())
            }

            fn stop(&self) -> Result<(), gst::ErrorMessage> {
                self.base.stop();
                Ok(())
            }

            fn caps(&self, filter: Option<&gst::Caps>) -> gst::Caps {
                self.base
                    .caps(self.obj().upcast_ref(), filter)
                    .unwrap_or_else(|| self.parent_caps(filter))
            }

            fn set_format(
                &self,
                state: &gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
            ) -> Result<(), gst::LoggableError> {
                self.base.set_format(self.obj().upcast_ref(), state)
            }

            fn handle_frame(
                &self,
                frame: gst_video::VideoCodecFrame,
            ) -> Result<gst::FlowSuccess, gst::FlowError> {
                self.base.handle_frame(self.obj().upcast_ref(), frame)
            }

            fn finish(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
                self.base.finish(self.obj().upcast_ref())
            }

            fn flush(&self) -> bool {
                self.base.flush(self.obj().upcast_ref())
            }

            fn propose_allocation(
                &self,
                query: &mut gst::query::Allocation,
            ) -> Result<(), gst::LoggableError> {
                self.base.propose_allocation(self.obj().upcast_ref(), query);
                // The default adds its system-memory pool only when none is there.
                self.parent_propose_allocation(query)
            }
        }
    };
}
pub(crate) use encoder_element;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_node_gets_no_low_latency_control() {
        let mut c = vec![
            Control::Bitrate(1000),
            Control::LowLatency(true),
            Control::GopSize(5),
        ];
        assert!(
            !drop_controls_v4l2_lacks(&mut c),
            "true: nothing to warn of"
        );
        assert_eq!(c, vec![Control::Bitrate(1000), Control::GopSize(5)]);
        let mut c = vec![Control::LowLatency(false), Control::GopSize(5)];
        assert!(
            drop_controls_v4l2_lacks(&mut c),
            "false is ignored: a warning"
        );
        assert_eq!(c, vec![Control::GopSize(5)]);
    }

    #[test]
    fn output_io_mode_resolves_per_vpu_and_memory() {
        use DmaBackend::{DmaHeap, Memfd, Udmabuf};
        use OutputIoMode::{Auto, DmabufImport, Mmap};
        for kernel in [false, true] {
            for backend in [DmaHeap, Udmabuf, Memfd] {
                // Explicit modes are taken as they are.
                assert_eq!(resolve_output_io(Mmap, kernel, backend), OutputIo::Mmap);
                assert_eq!(
                    resolve_output_io(DmabufImport, kernel, backend),
                    OutputIo::Import
                );
            }
            // With a dma-buf allocator, auto imports.
            for backend in [DmaHeap, Udmabuf] {
                assert_eq!(resolve_output_io(Auto, kernel, backend), OutputIo::Import);
            }
        }
        // Without one: the emulated VPU imports memfds, a kernel node cannot.
        assert_eq!(resolve_output_io(Auto, false, Memfd), OutputIo::Import);
        assert_eq!(resolve_output_io(Auto, true, Memfd), OutputIo::Mmap);
    }
}
