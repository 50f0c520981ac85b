//! The `vpufwhtenc` GstVideoEncoder subclass.
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;

use super::copy::copy_frame;
use super::engine::{Coded, Engine, EngineError, Params, Stats, Wake};
use super::pool::VpuBufferPool;
use crate::common::device::{self, DeviceChoice};
use crate::common::formats;
use crate::m2m::{Control, Format, PixelFormat, QueueKind, Role, Session};
use crate::mem::{Checker, CheckerConfig, Coherency, Region};
use crate::vpu::codec::fwht::{self, EncoderParams};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpufwhtenc",
        gst::DebugColorFlags::empty(),
        Some("VPU FWHT encoder"),
    )
});

const DEFAULT_GOP_SIZE: u32 = 10;
const DEFAULT_I_FRAME_QP: u32 = 20;
const DEFAULT_P_FRAME_QP: u32 = 20;
const DEFAULT_DEVICE: &str = "auto";

/// Which memory the frames the VPU reads live in (`memory-policy`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVpuFwhtEncMemoryPolicy")]
pub enum MemoryPolicy {
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

#[derive(Debug, Clone)]
struct Settings {
    gop_size: u32,
    i_frame_qp: u32,
    p_frame_qp: u32,
    device: DeviceChoice,
    memory_policy: MemoryPolicy,
    /// The `extra-controls` structure as last set.
    extra_controls: Option<gst::Structure>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gop_size: DEFAULT_GOP_SIZE,
            i_frame_qp: DEFAULT_I_FRAME_QP,
            p_frame_qp: DEFAULT_P_FRAME_QP,
            device: DeviceChoice::Auto,
            memory_policy: MemoryPolicy::Auto,
            extra_controls: None,
        }
    }
}

impl Settings {
    /// Records `control` in the settings it shadows.
    fn record(&mut self, control: Control) {
        match control {
            Control::GopSize(v) => self.gop_size = v,
            Control::IFrameQp(v) => self.i_frame_qp = v,
            Control::PFrameQp(v) => self.p_frame_qp = v,
            Control::Bitrate(_) | Control::ForceKeyFrame => {}
        }
    }

    fn params(&self) -> Params {
        Params {
            gop_size: self.gop_size,
            i_frame_qp: self.i_frame_qp,
            p_frame_qp: self.p_frame_qp,
        }
    }
}

/// The open VPU session (from `open` to `close`).
struct State {
    session: Arc<dyn Session>,
    checker: Arc<Checker>,
    /// Raw caps the session's OUTPUT queue takes.
    sink_caps: gst::Caps,
}

/// The streaming setup for the current input format.
struct Stream {
    engine: Engine,
    info: gst_video::VideoInfo,
}

#[derive(Default)]
pub struct VpuFwhtEnc {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stream: Mutex<Option<Stream>>,
    stats: Arc<Mutex<Stats>>,
    /// Controls set since the streaming setup started, not yet given to the
    /// VPU: the streaming thread applies them before the next frame.
    pending: Mutex<Vec<Control>>,
    /// An element error was posted for the current run: post no second one.
    error_posted: AtomicBool,
}

/// An `extra-controls` name, how its value becomes a [`Control`], its range.
type ExtraControl = (&'static str, fn(u32) -> Control, (u32, u32));

/// The V4L2 controls `extra-controls` knows, by the name `v4l2-ctl -l`
/// prints for vicodec's encoder (the v4l2 elements' syntax), with how each
/// becomes a [`Control`] and its range.
const EXTRA_CONTROLS: &[ExtraControl] = &[
    (
        "video_gop_size",
        Control::GopSize,
        EncoderParams::GOP_SIZE_RANGE,
    ),
    (
        "fwht_i_frame_qp_value",
        Control::IFrameQp,
        EncoderParams::QP_RANGE,
    ),
    (
        "fwht_p_frame_qp_value",
        Control::PFrameQp,
        EncoderParams::QP_RANGE,
    ),
];

/// Why an `extra-controls` field was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum ExtraControlError {
    #[error(
        "control '{0}' does not exist on the FWHT encoder (it has video_gop_size, \
         fwht_i_frame_qp_value, fwht_p_frame_qp_value): ignored"
    )]
    Unknown(String),
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

/// The controls in an `extra-controls` structure, in field order, and what
/// was wrong with the fields that are not taken.
fn parse_extra_controls(s: &gst::StructureRef) -> (Vec<Control>, Vec<ExtraControlError>) {
    let mut controls = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in s.iter() {
        let Some(&(_, make, (min, max))) = EXTRA_CONTROLS.iter().find(|(n, ..)| *n == name) else {
            errors.push(ExtraControlError::Unknown(name.to_string()));
            continue;
        };
        let v = value
            .get::<i32>()
            .map(i64::from)
            .or_else(|_| value.get::<u32>().map(i64::from))
            .or_else(|_| value.get::<i64>())
            .or_else(|_| value.get::<u64>().map(|v| v.min(i64::MAX as u64) as i64));
        let Ok(v) = v else {
            errors.push(ExtraControlError::NotAnInteger {
                name: name.to_string(),
                found: format!("{value:?}"),
            });
            continue;
        };
        match u32::try_from(v) {
            Ok(u) if (min..=max).contains(&u) => controls.push(make(u)),
            _ => errors.push(ExtraControlError::OutOfRange {
                name: name.to_string(),
                value: v,
                min,
                max,
            }),
        }
    }
    (controls, errors)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Raw formats the FWHT encoder takes, in the contract's order.
fn encodable_formats(candidates: &[PixelFormat]) -> Vec<PixelFormat> {
    candidates
        .iter()
        .copied()
        .filter(|&p| {
            !p.is_coded()
                && fwht::supports(p)
                && formats::video_format(p).is_some()
                && Format::raw(p, 16, 16).is_some()
        })
        .collect()
}

impl VpuFwhtEnc {
    /// Posts the element error for `e` (once per run) and gives the flow error.
    fn fail(&self, e: &EngineError) -> gst::FlowError {
        if !self.error_posted.swap(true, Ordering::SeqCst) {
            gst::element_imp_error!(self, gst::StreamError::Encode, ["{}", e]);
        } else {
            gst::debug!(CAT, imp = self, "again: {e}");
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
    fn push(&self, coded: Vec<Coded>) -> Result<gst::FlowSuccess, gst::FlowError> {
        let obj = self.obj();
        for c in coded {
            let Some(mut frame) = obj.frame(c.frame as i32) else {
                gst::warning!(
                    CAT,
                    imp = self,
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
                CAT,
                imp = self,
                "frame {} coded: {} bytes, key {}",
                c.frame,
                c.buffer.size(),
                c.keyframe
            );
            frame.set_output_buffer(c.buffer);
            obj.finish_frame(frame)?;
            lock(&self.stats).frames_out += 1;
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Drains the VPU: every queued frame is pushed.
    fn drain(&self, engine: &Engine) -> Result<gst::FlowSuccess, gst::FlowError> {
        engine.start_drain().map_err(|e| self.fail(&e))?;
        loop {
            match engine.wait_last().map_err(|e| self.fail(&e))? {
                Wake::Got(()) => break,
                Wake::Ready(c) => {
                    self.push(c)?;
                }
            }
        }
        let rest = engine.take_ready().map_err(|e| self.fail(&e))?;
        self.push(rest)
    }

    /// The region behind `input` if it can be queued without a copy: one
    /// memory starting at its fd's start, in the contract layout, that is
    /// ours or a foreign dma-buf (imported: the VPU maps it, `checker`
    /// watches it like our own memory).
    fn importable(
        &self,
        input: &gst::BufferRef,
        info: &gst_video::VideoInfo,
        raw: &Format,
        checker: Option<&Arc<Checker>>,
    ) -> Option<Arc<Region>> {
        if input.n_memory() != 1 {
            return None;
        }
        let mem = input.peek_memory(0);
        if mem.offset() != 0 {
            return None;
        }
        formats::buffer_layout_matches(input, info, raw).ok()?;
        let region = match crate::allocator::region(mem) {
            Some(region) => region,
            None => {
                let fd = match crate::allocator::foreign_dmabuf_fd(mem)? {
                    Ok(fd) => fd,
                    Err(e) => {
                        gst::debug!(CAT, imp = self, "cannot import a dma-buf: {e}");
                        return None;
                    }
                };
                // The producer may have written it with the CPU: cacheable,
                // owned by the CPU, so queueing cleans it for the device.
                match Region::import(
                    "upstream-dmabuf",
                    fd,
                    raw.size,
                    Coherency::Cacheable,
                    checker?,
                ) {
                    Ok(region) => region,
                    Err(e) => {
                        gst::debug!(CAT, imp = self, "cannot import a dma-buf: {e}");
                        return None;
                    }
                }
            }
        };
        if region.size() < raw.size {
            return None;
        }
        Some(region)
    }

    fn encode(
        &self,
        stream: &mut Stream,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let number = frame.system_frame_number();
        let keyframe = frame
            .flags()
            .contains(gst_video::VideoCodecFrameFlags::FORCE_KEYFRAME);
        let Some(input) = frame.input_buffer_owned() else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Failed,
                ["frame {number} has no input buffer"]
            );
            return Err(gst::FlowError::Error);
        };
        // The base class keeps the frame; it is found again by its number.
        drop(frame);
        lock(&self.stats).frames_in += 1;
        let engine = &mut stream.engine;
        self.apply_pending(engine)?;

        let checker = lock(&self.state).as_ref().map(|st| Arc::clone(&st.checker));
        if let Some(region) = self.importable(&input, &stream.info, engine.raw(), checker.as_ref())
        {
            let slot = loop {
                match engine.import_slot(&region).map_err(|e| self.fail(&e))? {
                    Wake::Got(slot) => break slot,
                    Wake::Ready(c) => {
                        self.push(c)?;
                    }
                }
            };
            engine
                .queue_import(slot, region, input, number, keyframe)
                .map_err(|e| self.fail(&e))?;
            lock(&self.stats).imported_frames += 1;
            gst::trace!(CAT, imp = self, "frame {number} imported into slot {slot}");
        } else {
            let vframe =
                gst_video::VideoFrameRef::from_buffer_ref_readable(input.as_ref(), &stream.info)
                    .map_err(|_| {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Format,
                            ["frame {number} cannot be mapped as {:?}", stream.info]
                        );
                        gst::FlowError::Error
                    })?;
            let (slot, region) = loop {
                match engine.copy_slot().map_err(|e| self.fail(&e))? {
                    Wake::Got(s) => break s,
                    Wake::Ready(c) => {
                        self.push(c)?;
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
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ["frame {number}: {e}"]
                    );
                    return Err(gst::FlowError::Error);
                }
            };
            drop(vframe);
            engine
                .queue_copy(slot, number, keyframe)
                .map_err(|e| self.fail(&e))?;
            let mut stats = lock(&self.stats);
            stats.frame_copies += 1;
            stats.bytes_copied += copied as u64;
        }
        let ready = engine.take_ready().map_err(|e| self.fail(&e))?;
        self.push(ready)
    }

    fn stats_structure(&self) -> gst::Structure {
        let s = lock(&self.stats).clone();
        let checker = lock(&self.state).as_ref().map(|st| Arc::clone(&st.checker));
        let (syncs, violations) = checker
            .map(|c| {
                let st = c.stats();
                (
                    st.syncs_for_device + st.syncs_for_cpu,
                    c.violation_count() as u64,
                )
            })
            .unwrap_or((0, 0));
        let per_frame = if s.vpu_frames > 0 {
            (s.vpu_time.as_micros() / u128::from(s.vpu_frames)) as u64
        } else {
            0
        };
        gst::Structure::builder("vpufwhtenc-stats")
            .field("frames-in", s.frames_in)
            .field("frames-out", s.frames_out)
            .field("frame-copies", s.frame_copies)
            .field("bytes-copied", s.bytes_copied)
            .field("imported-frames", s.imported_frames)
            .field("import-maps", s.import_maps)
            .field("cache-syncs", syncs)
            .field("coherency-violations", violations)
            .field("vpu-time-per-frame-us", per_frame)
            .build()
    }

    /// Gives the controls set since the last frame to the VPU, before the
    /// next frame is queued. The VPU reads its controls when it codes a frame
    /// (as vicodec does), so it first finishes every frame queued before:
    /// a change applies exactly from the first frame `handle_frame` receives
    /// after it was set, at the cost of one pipeline bubble per change.
    fn apply_pending(&self, engine: &Engine) -> Result<(), gst::FlowError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.is_empty() {
            return Ok(());
        }
        loop {
            match engine.wait_idle().map_err(|e| self.fail(&e))? {
                Wake::Got(()) => break,
                Wake::Ready(c) => {
                    self.push(c)?;
                }
            }
        }
        for control in pending {
            gst::debug!(CAT, imp = self, "applying {control:?}");
            if let Err(e) = engine.session().set_control(control) {
                gst::warning!(CAT, imp = self, "the VPU refused {control:?}: {e}");
            }
        }
        Ok(())
    }

    /// Records `controls` in the settings and queues them for the VPU.
    fn set_controls(&self, settings: &mut Settings, controls: &[Control]) {
        for &c in controls {
            gst::debug!(CAT, imp = self, "setting {c:?}");
            settings.record(c);
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
            .ok_or_else(|| format!("the FWHT encoder cannot take {caps}"))?;
        let (checker, min) = {
            let st = lock(&self.state);
            let st = st.as_ref().ok_or("no VPU session (not opened)")?;
            (
                Arc::clone(&st.checker),
                st.session.min_buffers(QueueKind::Output),
            )
        };
        let coherency = lock(&self.settings).memory_policy.coherency();
        let pool = VpuBufferPool::new(&raw, coherency, &checker).map_err(|e| e.to_string())?;
        let size = u32::try_from(raw.size).map_err(|_| format!("{} bytes", raw.size))?;
        // The VPU's minimum, the frame the encoder holds for its one frame of
        // latency, and the one the producer fills.
        Ok((pool, size, min + 2))
    }
}

#[glib::object_subclass]
impl ObjectSubclass for VpuFwhtEnc {
    const NAME: &'static str = "GstVpuFwhtEnc";
    type Type = super::VpuFwhtEnc;
    type ParentType = gst_video::VideoEncoder;
}

impl ObjectImpl for VpuFwhtEnc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let (gop_min, gop_max) = EncoderParams::GOP_SIZE_RANGE;
            let (qp_min, qp_max) = EncoderParams::QP_RANGE;
            vec![
                glib::ParamSpecUInt::builder("gop-size")
                    .nick("GOP size")
                    .blurb(
                        "Maximum distance between key frames, in frames (V4L2 \
                         GOP_SIZE; 1 = every frame a key frame). The FWHT encoder \
                         restarts the GOP early when a frame codes no predicted block. \
                         A change in PLAYING applies from the next frame the encoder \
                         receives (it lets the VPU finish the frames before)",
                    )
                    .minimum(gop_min)
                    .maximum(gop_max)
                    .default_value(DEFAULT_GOP_SIZE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("i-frame-qp")
                    .nick("I-frame QP")
                    .blurb(
                        "Quantiser of key frames (V4L2 FWHT_I_FRAME_QP), 1 = finest \
                         and largest .. 31 = coarsest and smallest; changes in PLAYING \
                         apply from the next frame the encoder receives",
                    )
                    .minimum(qp_min)
                    .maximum(qp_max)
                    .default_value(DEFAULT_I_FRAME_QP)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("p-frame-qp")
                    .nick("P-frame QP")
                    .blurb(
                        "Quantiser of predicted frames (V4L2 FWHT_P_FRAME_QP), \
                         1 = finest and largest .. 31 = coarsest and smallest; changes \
                         in PLAYING apply from the next frame the encoder receives",
                    )
                    .minimum(qp_min)
                    .maximum(qp_max)
                    .default_value(DEFAULT_P_FRAME_QP)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("extra-controls")
                    .nick("Extra controls")
                    .blurb(
                        "V4L2 controls by the names v4l2-ctl -l prints for vicodec, as \
                         for the v4l2 elements: \"controls,video_gop_size=5,\
                         fwht_i_frame_qp_value=10,fwht_p_frame_qp_value=30\". They set \
                         the same values as gop-size, i-frame-qp and p-frame-qp (the \
                         last one set wins); an unknown name or a value out of range \
                         is ignored with a warning naming it. Changes in PLAYING apply \
                         from the next frame the encoder receives, as for those properties",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb(
                        "Which VPU encodes: \"auto\" (a kernel codec node offering FWHT, \
                         else the emulated VPU), \"emu\" (the in-process emulated VPU) \
                         or a V4L2 M2M node path such as /dev/video0 (this build cannot \
                         open kernel nodes yet: a path fails to open, and auto falls back \
                         to emu with a warning naming the node)",
                    )
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
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "vpufwhtenc-stats: frames-in, frames-out, frame-copies and \
                         bytes-copied (input copied into VPU memory), imported-frames \
                         (queued without a copy), import-maps (times the VPU mapped an \
                         imported buffer: once per buffer of the proposed pool), \
                         cache-syncs and coherency-violations \
                         (of the whole VPU, shared by every element using it), \
                         vpu-time-per-frame-us (mean time from queueing a frame to its \
                         coded data, in microseconds). Counters restart at READY->PAUSED",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        let mut rejected = Vec::new();
        match pspec.name() {
            "gop-size" => {
                let v = value.get().expect("type checked upstream");
                self.set_controls(&mut settings, &[Control::GopSize(v)]);
            }
            "i-frame-qp" => {
                let v = value.get().expect("type checked upstream");
                self.set_controls(&mut settings, &[Control::IFrameQp(v)]);
            }
            "p-frame-qp" => {
                let v = value.get().expect("type checked upstream");
                self.set_controls(&mut settings, &[Control::PFrameQp(v)]);
            }
            "extra-controls" => {
                let s: Option<gst::Structure> = value.get().expect("type checked upstream");
                if let Some(s) = &s {
                    let (controls, errors) = parse_extra_controls(s);
                    self.set_controls(&mut settings, &controls);
                    rejected = errors;
                }
                settings.extra_controls = s;
            }
            "device" => {
                let v: Option<String> = value.get().expect("type checked upstream");
                match v.as_deref().unwrap_or(DEFAULT_DEVICE).parse() {
                    Ok(d) => settings.device = d,
                    Err(e) => gst::error!(CAT, imp = self, "{e}: keeping {}", settings.device),
                }
            }
            "memory-policy" => {
                settings.memory_policy = value.get().expect("type checked upstream");
            }
            other => {
                gst::error!(CAT, imp = self, "no writable property {other}");
            }
        }
        drop(settings);
        for e in rejected {
            gst::warning!(CAT, imp = self, "extra-controls: {e}");
            gst::element_imp_warning!(self, gst::ResourceError::Settings, ("extra-controls: {e}"));
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = lock(&self.settings);
        match pspec.name() {
            "gop-size" => settings.gop_size.to_value(),
            "i-frame-qp" => settings.i_frame_qp.to_value(),
            "p-frame-qp" => settings.p_frame_qp.to_value(),
            "device" => settings.device.to_string().to_value(),
            "memory-policy" => settings.memory_policy.to_value(),
            "extra-controls" => settings.extra_controls.to_value(),
            "stats" => {
                drop(settings);
                self.stats_structure().to_value()
            }
            other => {
                gst::error!(CAT, imp = self, "no readable property {other}");
                None::<String>.to_value()
            }
        }
    }
}

impl GstObjectImpl for VpuFwhtEnc {}

impl ElementImpl for VpuFwhtEnc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "VPU FWHT encoder",
                "Codec/Encoder/Video/Hardware",
                "Encodes raw video to FWHT (the Linux vicodec codec, video/x-fwht) on a \
                 VPU through the V4L2 stateful memory-to-memory encoder model; the \
                 stream is bit-exact with the kernel's vicodec. The encoder proposes \
                 a pool of VPU memory upstream, so producers write frames where the \
                 VPU reads them; input already in VPU memory is queued without a \
                 copy, other input is copied once (counted in the stats property). \
                 Runs on a kernel V4L2 codec node or \
                 on the in-process emulated VPU (device property)",
                "gst-vpu developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let sink_caps = formats::raw_caps(&encodable_formats(PixelFormat::ALL));
            let sink = gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &sink_caps,
            )
            .expect("a valid sink template");
            let src_caps = gst::Caps::builder(formats::FWHT_MEDIA_TYPE)
                .field("width", gst::IntRange::new(1, formats::MAX_CAPS_DIM))
                .field("height", gst::IntRange::new(1, formats::MAX_CAPS_DIM))
                .field(
                    "framerate",
                    gst::FractionRange::new(
                        gst::Fraction::new(0, 1),
                        gst::Fraction::new(i32::MAX, 1),
                    ),
                )
                .build();
            let src = gst::PadTemplate::new(
                "src",
                gst::PadDirection::Src,
                gst::PadPresence::Always,
                &src_caps,
            )
            .expect("a valid src template");
            vec![sink, src]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl VideoEncoderImpl for VpuFwhtEnc {
    fn open(&self) -> Result<(), gst::ErrorMessage> {
        let choice = lock(&self.settings).device.clone();
        let opened = device::open(&choice, Role::Encoder, PixelFormat::Fwht).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenReadWrite,
                ["cannot open an FWHT encoder on device {choice}: {e}"]
            )
        })?;
        let offered = opened.session.enum_formats(QueueKind::Output);
        let sink_caps = formats::raw_caps(&encodable_formats(&offered));
        if sink_caps.is_empty() {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "{} offers no raw format the FWHT encoder takes (it lists {offered:?})",
                    opened.info.name
                ]
            ));
        }
        gst::info!(
            CAT,
            imp = self,
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
        });
        Ok(())
    }

    fn close(&self) -> Result<(), gst::ErrorMessage> {
        drop(lock(&self.stream).take());
        drop(lock(&self.state).take());
        Ok(())
    }

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        *lock(&self.stats) = Stats::default();
        self.error_posted.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Joins vpu-capture and stops both queues.
        drop(lock(&self.stream).take());
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> gst::Caps {
        let sink_caps = lock(&self.state).as_ref().map(|s| s.sink_caps.clone());
        match sink_caps {
            Some(caps) => self.obj().proxy_getcaps(Some(&caps), filter),
            None => self.parent_caps(filter),
        }
    }

    fn set_format(
        &self,
        state: &gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
    ) -> Result<(), gst::LoggableError> {
        let info = state.info().clone();
        gst::debug!(CAT, imp = self, "input {:?}", info);
        let pf = formats::pixel_format(info.format()).ok_or_else(|| {
            gst::loggable_error!(CAT, "{:?} is not a format the VPU takes", info.format())
        })?;
        let (w, h) = (info.width(), info.height());
        let mut raw = Format::raw(pf, w, h).ok_or_else(|| {
            gst::loggable_error!(CAT, "the FWHT encoder cannot take {w}x{h} {pf}")
        })?;
        raw.colorimetry = formats::colorimetry_from_gst(&info.colorimetry(), pf, w, h);

        // A new format mid-stream: every frame of the old one goes out first.
        if let Some(old) = lock(&self.stream).take() {
            gst::debug!(
                CAT,
                imp = self,
                "caps change: draining {}x{} first",
                old.info.width(),
                old.info.height()
            );
            self.drain(&old.engine)
                .map_err(|e| gst::loggable_error!(CAT, "draining before the caps change: {e:?}"))?;
            // Dropping it stops both queues and joins vpu-capture.
            drop(old);
        }

        let (session, checker) = {
            let st = lock(&self.state);
            let st = st
                .as_ref()
                .ok_or_else(|| gst::loggable_error!(CAT, "no VPU session (not opened)"))?;
            (Arc::clone(&st.session), Arc::clone(&st.checker))
        };
        // The new setup starts from the settings: what was pending is in
        // them (a control set from now on is pending again, so none is lost).
        lock(&self.pending).clear();
        let (params, coherency) = {
            let s = lock(&self.settings);
            (s.params(), s.memory_policy.coherency())
        };
        let engine = Engine::start(
            session,
            &raw,
            params,
            coherency,
            &checker,
            Arc::clone(&self.stats),
        )
        .map_err(|e| {
            gst::element_imp_error!(self, gst::LibraryError::Settings, ["{e}"]);
            gst::loggable_error!(CAT, "{e}")
        })?;
        gst::debug!(CAT, imp = self, "VPU takes {:?}", engine.raw());

        let caps = formats::fwht_caps(Some((w, h)));
        let obj = self.obj();
        let output = obj
            .set_output_state(caps, Some(state))
            .map_err(|_| gst::loggable_error!(CAT, "cannot set the output state"))?;
        obj.negotiate(output)
            .map_err(|_| gst::loggable_error!(CAT, "downstream refused video/x-fwht"))?;

        // Coded frames leave when the next frame comes in (see the module doc).
        let fps = info.fps();
        if fps.numer() > 0 {
            let frame = gst::ClockTime::SECOND
                .mul_div_floor(fps.denom() as u64, fps.numer() as u64)
                .unwrap_or(gst::ClockTime::ZERO);
            obj.set_latency(frame, Some(frame));
        }
        *lock(&self.stream) = Some(Stream { engine, info });
        Ok(())
    }

    fn handle_frame(
        &self,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.with_stream(|stream| self.encode(stream, frame))
            .unwrap_or_else(|| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ["a frame came before any caps"]
                );
                Err(gst::FlowError::NotNegotiated)
            })
    }

    fn finish(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        gst::debug!(CAT, imp = self, "draining at EOS");
        self.with_stream(|stream| self.drain(&stream.engine))
            .unwrap_or(Ok(gst::FlowSuccess::Ok))
    }

    fn flush(&self) -> bool {
        gst::debug!(CAT, imp = self, "flush");
        self.error_posted.store(false, Ordering::SeqCst);
        self.with_stream(|stream| stream.engine.flush())
            .map(|r| match r {
                Ok(()) => true,
                Err(e) => {
                    gst::error!(CAT, imp = self, "flush failed: {e}");
                    false
                }
            })
            .unwrap_or(true)
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Our pool's frames carry the contract's strides in a VideoMeta; any
        // other strides are fine too (the copy honours the VideoMeta).
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        let (caps, _need_pool) = query.get();
        match caps.map(|c| self.input_pool(c)) {
            Some(Ok((pool, size, min))) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "proposing the VPU pool: {size}-byte frames, at least {min}"
                );
                // No maximum: the base class holds frames until they are
                // coded, so a bounded pool could starve the producer.
                query.add_allocation_pool(Some(&pool), size, min, 0);
            }
            Some(Err(e)) => gst::info!(CAT, imp = self, "no VPU pool to propose: {e}"),
            None => gst::debug!(CAT, imp = self, "allocation query without caps"),
        }
        // The default adds its system-memory pool only when none is there.
        self.parent_propose_allocation(query)
    }
}
