//! `GstVpuDec`, the abstract base of the VPU decoders (`vpufwhtdec`,
//! `vpuh264dec`): GstVideoDecoder glue, properties, negotiation and the
//! hand-off of decoded frames, parametrised by the subclass's [`Codec`]. The
//! VPU side lives in `engine.rs`.
//!
//! Frame identity: each GstVideoCodecFrame is exactly one coded frame (an
//! FWHT frame cut by `parse`, or an H.264 access unit from upstream), queued
//! in OUTPUT buffers whose timestamp is the frame's `system_frame_number`;
//! the VPU copies it to the CAPTURE buffer of the picture, so a result finds
//! its frame with `decoder.frame(n)`. The VPU answers every frame with a
//! picture, an ERROR buffer or (no picture in it) an empty buffer, except
//! undecodable bytes before the first frame it understood. For a codec
//! without reordering (FWHT) results come in decode order, so frames older
//! than a result are dropped at once; with reordering (H.264) they come in
//! presentation order and a frame is only dropped by its own answer. Frames
//! left after a drain are dropped, so none is ever lost.
//!
//! Locks: `state` is held only to read or update it, never across a base
//! class call, `finish_frame` or a wait on the VPU.
//!
//! Layout: frames go out in the VPU's layout with a GstVideoMeta. For a
//! downstream that takes no GstVideoMeta (fakesink, a plain appsink) the VPU
//! is asked to write GStreamer's default layout instead (no padding rows),
//! so those frames are not copied either; only a VPU that keeps its own
//! layout (a kernel node) makes the element copy them (`frame-copies`).
//!
//! Caps: the src template offers every raw format in system memory and,
//! as a second structure, in `memory:DMABuf`. The feature is negotiated when
//! the VPU's frame memory is a real dma-buf and downstream names it itself
//! (see `setup_capture`); frames are then GstDmaBufMemory, otherwise fd
//! memory, both the VPU's own buffers.
//!
//! Memory policy: `coherent` allocates uncached CAPTURE regions (no cache
//! maintenance ever). `cacheable` and `auto` allocate cacheable ones whose
//! CPU sync is lazy: the allocator invalidates a frame at its first CPU map
//! (one `sync_for_cpu` per mapped frame), and the driver cleans it when it
//! goes back to the VPU; a frame nobody maps costs nothing, so a device-only
//! consumer pays no per-frame sync. `auto` is thus `cacheable` today: the
//! reader decides what is paid, not a guess made at negotiation.

use crate::common::stats::{VpuTime, checker_counts};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;

use super::engine::{DrainState, Engine, Fatal, Ready};
use super::pool::CapturePool;
use crate::common::device::{self, DeviceChoice};
use crate::common::formats::{self, MetaLayout};
use crate::m2m::{Buffer, BufferFlags, Format, Role, SourceChange};
use crate::mem::{Checker, Coherency, MemoryKind};
use crate::vpu::codec::fwht::{HEADER_SIZE, parse_header};

use super::{Codec, Framing};

/// How long the streaming thread waits for the VPU at most (an OUTPUT buffer,
/// the end of a drain) before giving up. The session's own watchdog reports a
/// hung VPU much sooner; this only bounds a VPU that answers but never frees.
const VPU_WAIT: Duration = Duration::from_secs(10);

/// CAPTURE buffers beyond the VPU's and downstream's minimum: two frames in
/// flight downstream, one being decoded, and one for the LAST buffer of a
/// drain, which needs a free CAPTURE buffer even when downstream (a queue, a
/// test harness) still holds the frames decoded just before it.
const EXTRA_CAPTURE: u32 = 4;

/// Bytes of the FWHT magic (`4f4f4f4f` then `ffffffff`); the first word is
/// what `parse` scans for.
const MAGIC_WORD: u32 = 0x4f4f_4f4f;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVpuDecMemoryPolicy")]
pub enum MemoryPolicy {
    #[default]
    #[enum_value(
        name = "Auto: cacheable frame memory, synced for the CPU only when mapped",
        nick = "auto"
    )]
    Auto,
    #[enum_value(
        name = "Coherent (uncached) frame memory, no cache maintenance",
        nick = "coherent"
    )]
    Coherent,
    #[enum_value(
        name = "Cacheable frame memory, invalidated when the CPU maps it",
        nick = "cacheable"
    )]
    Cacheable,
}

/// How decoded frames (the VPU's CAPTURE buffers) go downstream
/// (`capture-io-mode`, named as the v4l2 decoders name theirs). Every mode
/// pushes the VPU's own memory, never a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVpuDecCaptureIoMode")]
pub enum CaptureIoMode {
    #[default]
    #[enum_value(
        name = "Auto: DMABuf memory where the frames are dma-bufs, else fd memory",
        nick = "auto"
    )]
    Auto,
    #[enum_value(
        name = "MMAP: the same memory as plain mapped memory, synced for the CPU before the push",
        nick = "mmap"
    )]
    Mmap,
    #[enum_value(
        name = "DMABuf: the exported buffers as DMABuf memory (an error where they are not dma-bufs)",
        nick = "dmabuf"
    )]
    Dmabuf,
}

const DEFAULT_DEVICE: &str = "auto";
const DEFAULT_MEMORY_POLICY: MemoryPolicy = MemoryPolicy::Auto;

#[derive(Debug, Clone, Default)]
struct Settings {
    device: DeviceChoice,
    memory_policy: MemoryPolicy,
    capture_io_mode: CaptureIoMode,
}

/// Counters behind the `stats` property.
#[derive(Debug, Default, Clone)]
struct Stats {
    frames_in: u64,
    frames_out: u64,
    /// Frames the VPU answered with an error (dropped).
    decode_errors: u64,
    frame_copies: u64,
    bytes_copied: u64,
    vpu_time: VpuTime,
}

/// How decoded frames leave the element (known after a source change).
struct Output {
    generation: u64,
    /// Set when downstream lacks GstVideoMeta, the VPU's layout is not
    /// GStreamer's default for the caps and the VPU cannot write that one
    /// (`Session::set_layout`, e.g. a kernel node): frames must be copied.
    copy_to: Option<gst_video::VideoInfo>,
    /// The VPU's layout (for the copy source).
    info: gst_video::VideoInfo,
    /// `memory:DMABuf` caps were negotiated: every frame must be a
    /// GstDmaBufMemory.
    dmabuf: bool,
    /// `capture-io-mode=mmap`: frames go out as plain memory (synced for
    /// the CPU before the push).
    plain: bool,
    /// The GstBuffers of this allocation's CAPTURE slots (see `pool.rs`).
    pool: CapturePool,
}

impl Drop for Output {
    /// The allocation's frames are done with: the pool frees the buffers of
    /// the slots the VPU holds (whether it streams on or was stopped).
    fn drop(&mut self) {
        self.pool.retire();
    }
}

struct State {
    engine: Arc<Engine>,
    capture_thread: Option<JoinHandle<()>>,
    checker: Option<Arc<Checker>>,
    input_state:
        Option<gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>>,
    /// OUTPUT queue set up, with this buffer size.
    output_size: Option<usize>,
    output: Option<Arc<Output>>,
    /// After a flush the VPU rejects P-frames until a key frame: not errors.
    quiet_errors: bool,
    /// When each frame's first OUTPUT buffer was queued.
    queued_at: HashMap<u32, Instant>,
    /// What the session's frame memory is (decides `memory:DMABuf`).
    memory: MemoryKind,
}

/// What the allocation query told us about downstream.
#[derive(Debug, Default, Clone, Copy)]
struct Downstream {
    video_meta: bool,
    min_buffers: u32,
}

#[derive(Default)]
pub struct VpuDec {
    /// The subclass's codec, found by its type at construction.
    codec: OnceLock<&'static Codec>,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
    downstream: Mutex<Downstream>,
    /// One element error per failure: set when it is posted.
    failed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `format` values of a caps structure, in order (a string or a list).
fn format_names(s: &gst::StructureRef) -> Vec<String> {
    if let Ok(f) = s.get::<String>("format") {
        return vec![f];
    }
    s.get::<gst::List>("format")
        .map(|l| l.iter().filter_map(|v| v.get::<String>().ok()).collect())
        .unwrap_or_default()
}

impl VpuDec {
    fn codec(&self) -> &'static Codec {
        self.codec.get().copied().unwrap_or(&super::NO_CODEC)
    }

    fn cat(&self) -> gst::DebugCategory {
        **self.codec().cat
    }

    fn engine(&self) -> Result<Arc<Engine>, gst::FlowError> {
        lock(&self.state)
            .as_ref()
            .map(|s| Arc::clone(&s.engine))
            .ok_or(gst::FlowError::Flushing)
    }

    /// Posts the one element error of a fatal VPU failure.
    fn post_fatal(&self, fatal: &Fatal) -> gst::FlowError {
        if !self.failed.swap(true, Ordering::AcqRel) {
            if fatal.timeout {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Failed,
                    ("The VPU stopped answering"),
                    ["{}", fatal.message]
                );
            } else {
                gst::element_imp_error!(
                    self,
                    gst::LibraryError::Failed,
                    ("VPU failure"),
                    ["{}", fatal.message]
                );
            }
        }
        gst::FlowError::Error
    }

    fn check_fatal(&self, engine: &Engine) -> Result<(), gst::FlowError> {
        match engine.fatal() {
            Some(f) => Err(self.post_fatal(&f)),
            None if self.failed.load(Ordering::Acquire) => Err(gst::FlowError::Error),
            None => Ok(()),
        }
    }

    fn m2m_error(&self, what: &str, e: &crate::m2m::M2mError) -> gst::FlowError {
        self.post_fatal(&Fatal {
            timeout: matches!(e, crate::m2m::M2mError::Timeout(_)),
            message: format!("{what}: {e}"),
        })
    }

    /// Handles everything the capture thread has made ready.
    fn service(&self, engine: &Arc<Engine>) -> Result<(), gst::FlowError> {
        while let Some(ready) = engine.pop_ready() {
            match ready {
                Ready::SourceChange(sc) => self.setup_capture(engine, &sc)?,
                Ready::Frame(b) => self.output_frame(engine, b)?,
            }
        }
        self.check_fatal(engine)
    }

    /// Picks the CAPTURE format (and caps feature) with downstream,
    /// negotiates, and allocates and queues the CAPTURE buffers.
    ///
    /// `memory:DMABuf` is chosen when the VPU's frame memory is a real
    /// dma-buf and downstream lists a DMABuf structure with a format of the
    /// stream; otherwise plain system-memory caps (the frames are still the
    /// VPU's fd memory, without copy). Downstream answering ANY (fakesink,
    /// an appsink without caps) or ANY features gets plain caps.
    fn setup_capture(&self, engine: &Arc<Engine>, sc: &SourceChange) -> Result<(), gst::FlowError> {
        let obj = self.obj();
        let io_mode = lock(&self.settings).capture_io_mode;
        // `mmap` pushes plain memory: never negotiate memory:DMABuf then.
        let memory = match io_mode {
            CaptureIoMode::Mmap => MemoryKind::Memfd,
            CaptureIoMode::Auto | CaptureIoMode::Dmabuf => lock(&self.state)
                .as_ref()
                .map_or(MemoryKind::Memfd, |s| s.memory),
        };
        let mut filter = formats::raw_caps(&sc.formats);
        if memory == MemoryKind::DmaBuf {
            filter
                .make_mut()
                .append(formats::raw_dmabuf_caps(&sc.formats));
        }
        let peer = obj.src_pad().peer_query_caps(Some(&filter));
        let pick = |dmabuf: bool| {
            peer.iter_with_features()
                .filter(|(_, f)| f.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF) == dmabuf)
                .flat_map(|(s, _)| format_names(s))
                .filter_map(|f| formats::pixel_format(gst_video::VideoFormat::from_string(&f)))
                .find(|p| sc.formats.contains(p))
        };
        // Only a downstream that names the feature itself wants dma-bufs:
        // an unconstrained one (ANY, or ANY features) intersects with our
        // filter into both structures and would otherwise get them.
        let asks_dmabuf = memory == MemoryKind::DmaBuf
            && obj
                .src_pad()
                .peer_query_caps(None)
                .iter_with_features()
                .any(|(_, f)| {
                    !f.is_any() && f.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF)
                });
        let (chosen, dmabuf) = if peer.is_any() {
            (sc.formats.first().copied(), false)
        } else {
            match pick(true).filter(|_| asks_dmabuf) {
                Some(p) => (Some(p), true),
                None => (pick(false), false),
            }
        };
        let Some(pixfmt) = chosen else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("Downstream accepts none of the formats this stream decodes to"),
                ["stream formats {:?}, downstream caps {peer}", sc.formats]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let Some(mut want) = Format::raw(pixfmt, sc.format.width, sc.format.height) else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                [
                    "{pixfmt} at {}x{} has no raw layout",
                    sc.format.width,
                    sc.format.height
                ]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        want.colorimetry = sc.format.colorimetry;
        let format = engine
            .set_capture_format(&want)
            .map_err(|e| self.m2m_error("setting the CAPTURE format", &e))?;
        let (layout, info) =
            match MetaLayout::of(&format).and_then(|l| Ok((l, formats::video_info(&format)?))) {
                Ok(v) => v,
                Err(e) => {
                    gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{e}"]);
                    return Err(gst::FlowError::NotNegotiated);
                }
            };
        let input_state = lock(&self.state)
            .as_ref()
            .and_then(|s| s.input_state.clone());
        let mut builder = gst_video::VideoInfo::builder_from_info(&info);
        if let Some(input) = &input_state {
            builder = builder.fps(input.info().fps()).par(input.info().par());
        }
        let out_info = builder.build().map_err(|e| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{e}"]);
            gst::FlowError::NotNegotiated
        })?;
        gst::info!(
            self.cat(),
            imp = self,
            "stream {}x{}: decoding to {pixfmt}{} (stream allows {:?})",
            format.width,
            format.height,
            if dmabuf { " in memory:DMABuf" } else { "" },
            sc.formats
        );
        let default_layout =
            gst_video::VideoInfo::builder(layout.video_format, format.width, format.height)
                .build()
                .map_err(|_| gst::FlowError::NotNegotiated)?;
        let is_default_layout = default_layout.offset() == layout.offsets.as_slice()
            && default_layout.stride() == layout.strides.as_slice();
        self.negotiate_output(&out_info, input_state.as_ref(), dmabuf)?;
        let mut downstream = *lock(&self.downstream);
        let mut dmabuf = dmabuf;
        let (mut layout, mut info, mut is_default_layout) = (layout, info, is_default_layout);
        if !downstream.video_meta
            && !is_default_layout
            && let Some((l, i)) = self.default_capture_layout(engine, &format)
        {
            // The caps are the same: only the memory layout changed.
            (layout, info, is_default_layout) = (l, i, true);
        }
        if dmabuf && !downstream.video_meta && !is_default_layout {
            // A dma-buf cannot be copied into and stay a dma-buf: without
            // GstVideoMeta downstream could not read our layout, so fall
            // back to system-memory caps (and the copy below).
            gst::warning!(
                self.cat(),
                imp = self,
                "downstream takes memory:DMABuf but not GstVideoMeta, and the VPU's layout is \
                 not the default one: renegotiating system-memory caps"
            );
            self.negotiate_output(&out_info, input_state.as_ref(), false)?;
            downstream = *lock(&self.downstream);
            dmabuf = false;
        }

        let coherency = match lock(&self.settings).memory_policy {
            MemoryPolicy::Coherent => Coherency::Coherent,
            // Auto: cacheable whoever reads. The allocator syncs for the CPU
            // lazily at map time, so a device importer (memory:DMABuf, a
            // sink that never maps) costs no sync per frame, and a CPU
            // reader gets cached reads.
            MemoryPolicy::Cacheable | MemoryPolicy::Auto => Coherency::Cacheable,
        };
        let count = sc.min_capture_buffers + downstream.min_buffers + EXTRA_CAPTURE;
        let generation = engine
            .start_capture(count, coherency)
            .map_err(|e| self.m2m_error("setting up CAPTURE buffers", &e))?;
        let copy_to =
            (!dmabuf && !downstream.video_meta && !is_default_layout).then_some(default_layout);
        if copy_to.is_some() {
            gst::warning!(
                self.cat(),
                imp = self,
                "downstream does not take GstVideoMeta and the VPU's layout is not the default \
                 one: every frame will be copied"
            );
        }
        gst::debug!(
            self.cat(),
            imp = self,
            "{count} CAPTURE buffers ({coherency:?}), generation {generation}"
        );
        let caps = obj.output_state().and_then(|s| s.caps_owned());
        let pool = CapturePool::new(
            engine,
            generation,
            layout,
            io_mode == CaptureIoMode::Mmap,
            caps.as_ref(),
            format.size,
        )
        .map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Failed,
                ["Setting up the CAPTURE buffer pool: {e}"]
            );
            gst::FlowError::Error
        })?;
        let replaced = lock(&self.state).as_mut().and_then(|s| {
            s.output.replace(Arc::new(Output {
                generation,
                copy_to,
                info,
                dmabuf,
                plain: io_mode == CaptureIoMode::Mmap,
                pool,
            }))
        });
        // Outside the state lock: retiring the old pool frees buffers.
        drop(replaced);
        Ok(())
    }

    /// For a downstream without GstVideoMeta: asks the VPU to write the
    /// frames of `format` in GStreamer's default layout (no padding rows),
    /// so they go downstream as they are instead of being copied. The
    /// emulated VPU can; a kernel node keeps its own layout (`None`, and the
    /// frames are copied), as does a VPU refusing the layout (logged).
    fn default_capture_layout(
        &self,
        engine: &Engine,
        format: &Format,
    ) -> Option<(MetaLayout, gst_video::VideoInfo)> {
        // Everything GStreamer needs is computed before the VPU is asked, so
        // the VPU never writes a layout the element does not describe.
        let wanted = formats::default_layout(format).and_then(|f| {
            let described = MetaLayout::of(&f).and_then(|l| Ok((l, formats::video_info(&f)?)));
            described.map(|d| (f, d))
        });
        let (wanted, described) = match wanted {
            Ok(v) => v,
            Err(e) => {
                gst::warning!(
                    self.cat(),
                    imp = self,
                    "no default layout for {format:?}: {e}"
                );
                return None;
            }
        };
        match engine.set_capture_layout(&wanted) {
            Ok(Some(f)) if f.planes == wanted.planes && f.size == wanted.size => {
                gst::info!(
                    self.cat(),
                    imp = self,
                    "downstream takes no GstVideoMeta: the VPU writes GStreamer's default layout \
                     (no copy)"
                );
                Some(described)
            }
            Ok(Some(f)) => {
                // Not what was asked: back to the VPU's own layout, and copy.
                gst::warning!(
                    self.cat(),
                    imp = self,
                    "the VPU took layout {f:?} for {wanted:?}: keeping its own"
                );
                if let Err(e) = engine.set_capture_format(format) {
                    gst::warning!(self.cat(), imp = self, "restoring the CAPTURE format: {e}");
                }
                None
            }
            Ok(None) => {
                gst::debug!(
                    self.cat(),
                    imp = self,
                    "the VPU keeps its own CAPTURE layout"
                );
                None
            }
            Err(e) => {
                gst::warning!(
                    self.cat(),
                    imp = self,
                    "the VPU refused GStreamer's default layout: {e}"
                );
                None
            }
        }
    }

    /// Sets the output state for `info` (with the `memory:DMABuf` caps
    /// feature if `dmabuf`) and negotiates it downstream, which runs the
    /// ALLOCATION query (`decide_allocation` updates `downstream`).
    fn negotiate_output(
        &self,
        info: &gst_video::VideoInfo,
        input_state: Option<
            &gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
        >,
        dmabuf: bool,
    ) -> Result<(), gst::FlowError> {
        let obj = self.obj();
        let mut state =
            obj.set_output_state(info.format(), info.width(), info.height(), input_state)?;
        state.set_info(info.clone());
        if dmabuf {
            let mut caps = info.to_caps().map_err(|_| gst::FlowError::NotNegotiated)?;
            caps.make_mut()
                .set_features_simple(Some(gst::CapsFeatures::new([
                    gst_allocators::CAPS_FEATURE_MEMORY_DMABUF,
                ])));
            state.set_caps(&caps);
        }
        obj.negotiate(state)?;
        Ok(())
    }

    /// A CAPTURE buffer came back: finish or drop its frame.
    fn output_frame(&self, engine: &Arc<Engine>, b: Buffer) -> Result<(), gst::FlowError> {
        let obj = self.obj();
        let number = b.timestamp as u32;
        let (output, quiet, queued_at) = {
            let mut guard = lock(&self.state);
            let Some(s) = guard.as_mut() else {
                return Err(gst::FlowError::Flushing);
            };
            let queued_at = s.queued_at.remove(&number);
            (s.output.clone(), s.quiet_errors, queued_at)
        };
        let Some(output) = output else {
            return Ok(());
        };
        if let Some(t) = queued_at {
            lock(&self.stats).vpu_time.add(t.elapsed());
        }
        // Frames before this one the VPU never answered (bytes it could
        // not use before the stream's first frame): gone for good. Only in
        // decode-order codecs: with reordering, older frames come later.
        let reorders = self.codec().reorders;
        for f in obj.frames() {
            if !reorders && f.system_frame_number() < number {
                gst::debug!(
                    self.cat(),
                    imp = self,
                    "frame {} skipped by the VPU",
                    f.system_frame_number()
                );
                lock(&self.state)
                    .as_mut()
                    .map(|s| s.queued_at.remove(&f.system_frame_number()));
                obj.drop_frame(f)?;
            }
        }
        let frame = obj.frame(number as i32);
        if b.bytesused == 0 && !b.flags.contains(BufferFlags::ERROR) {
            // The coded frame held no picture (parameter sets only).
            engine.requeue_capture(output.generation, b.index, b.region);
            if let Some(frame) = frame {
                gst::debug!(self.cat(), imp = self, "frame {number} holds no picture");
                obj.drop_frame(frame)?;
            }
            return Ok(());
        }
        let failed = b.flags.contains(BufferFlags::ERROR);
        if failed {
            let reason = b.error.clone().unwrap_or_else(|| "empty frame".into());
            engine.requeue_capture(output.generation, b.index, b.region);
            let Some(frame) = frame else {
                return Ok(());
            };
            obj.drop_frame(frame)?;
            lock(&self.stats).decode_errors += 1;
            if quiet {
                gst::debug!(
                    self.cat(),
                    imp = self,
                    "frame {number} dropped after flush: {reason}"
                );
                return Ok(());
            }
            gst_video::video_decoder_error!(
                &*obj,
                1,
                gst::StreamError::Decode,
                ("Frame {number} could not be decoded"),
                ["{reason}"]
            )?;
            return Ok(());
        }
        if let Some(s) = lock(&self.state).as_mut() {
            s.quiet_errors = false;
        }
        let Some(mut frame) = frame else {
            // Flushed meanwhile.
            engine.requeue_capture(output.generation, b.index, b.region);
            return Ok(());
        };
        let buffer = self.wrap(&output, b)?;
        let buffer = match &output.copy_to {
            None => buffer,
            Some(dst_info) => self.copy_frame(&output.info, dst_info, buffer)?,
        };
        frame.set_output_buffer(buffer);
        obj.finish_frame(frame)?;
        lock(&self.stats).frames_out += 1;
        Ok(())
    }

    /// The CAPTURE buffer as its slot's GstBuffer over the VPU's memory (no
    /// copy, the same buffer each time the slot is decoded into), queued to
    /// the VPU again when downstream frees it (see `pool.rs`).
    ///
    /// The pool holds the engine weakly: a frame downstream keeps its region
    /// (the memory holds it), not the session. Once the element stops, the
    /// engine and its session go at once, and the VPU unmaps every buffer
    /// (as a V4L2 driver orphans exported buffers at REQBUFS(0)) even while a
    /// sink still holds its last frame.
    fn wrap(&self, output: &Output, b: Buffer) -> Result<gst::Buffer, gst::FlowError> {
        if output.dmabuf && b.region.kind() != MemoryKind::DmaBuf {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                [
                    "memory:DMABuf caps negotiated, but CAPTURE buffer {} is not a dma-buf",
                    b.index
                ]
            );
            return Err(gst::FlowError::NotNegotiated);
        }
        let region = &b.region;
        // Plain memory has no map hook for the lazy sync of our allocators:
        // `capture-io-mode=mmap` syncs for the CPU before the push.
        if output.plain
            && region.coherency() == Coherency::Cacheable
            && region.owner() == crate::mem::Owner::Device
            && let Err(e) = region.sync_for_cpu()
        {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Failed,
                [
                    "CAPTURE buffer {} as mapped memory: cache sync for the CPU: {e}",
                    b.index
                ]
            );
            return Err(gst::FlowError::Error);
        }
        output.pool.frame(b.index, region).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Failed,
                ["CAPTURE buffer {} as a GstBuffer: {e}", b.index]
            );
            gst::FlowError::Error
        })
    }

    /// Copies a frame into GStreamer's default layout, for a downstream that
    /// cannot read a GstVideoMeta. Counted in `frame-copies`.
    fn copy_frame(
        &self,
        src_info: &gst_video::VideoInfo,
        dst_info: &gst_video::VideoInfo,
        src: gst::Buffer,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let fail = |e: glib::BoolError| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ["Copying a frame: {e}"]);
            gst::FlowError::Error
        };
        let src = gst_video::VideoFrame::from_buffer_readable(src, src_info)
            .map_err(|_| fail(glib::bool_error!("cannot map the decoded frame")))?;
        let dst = gst::Buffer::with_size(dst_info.size()).map_err(fail)?;
        let mut dst = gst_video::VideoFrame::from_buffer_writable(dst, dst_info)
            .map_err(|_| fail(glib::bool_error!("cannot map the output frame")))?;
        src.copy(&mut dst).map_err(fail)?;
        lock(&self.stats).frame_copies += 1;
        Ok(dst.into_buffer())
    }

    /// Queues one FWHT frame (in several OUTPUT buffers if it is larger than
    /// one), waiting for free buffers while handling what the VPU returns.
    fn queue_frame(
        &self,
        engine: &Arc<Engine>,
        number: u32,
        data: &[u8],
    ) -> Result<(), gst::FlowError> {
        let mut rest = data;
        let limit = lock(&self.state)
            .as_ref()
            .and_then(|s| s.output_size)
            .unwrap_or(usize::MAX);
        if self.codec().framing == Framing::AccessUnits && data.len() > limit {
            // One access unit per OUTPUT buffer: it cannot be split.
            gst::element_imp_error!(
                self,
                gst::StreamError::Decode,
                [
                    "access unit of {} bytes exceeds the {limit}-byte bitstream buffers",
                    data.len()
                ]
            );
            return Err(gst::FlowError::Error);
        }
        while !rest.is_empty() {
            let mut starved_noted = false;
            let mut taken = None;
            let got = engine.wait_until(Instant::now() + VPU_WAIT, || {
                self.service(engine)?;
                taken = engine.try_take_output();
                if taken.is_none() && !starved_noted {
                    starved_noted = engine.note_output_wait();
                }
                if taken.is_none() {
                    self.grow_if_starved(engine)?;
                }
                Ok::<_, gst::FlowError>(taken.is_some())
            })?;
            let Some(mut b) = taken.filter(|_| got) else {
                return Err(self.post_fatal(&Fatal {
                    timeout: true,
                    message: format!("no OUTPUT buffer came back within {VPU_WAIT:?}"),
                }));
            };
            let n = rest.len().min(b.region.size());
            b.region.cpu_write()[..n].copy_from_slice(&rest[..n]);
            b.bytesused = n;
            b.timestamp = u64::from(number);
            b.flags = BufferFlags::NONE;
            engine
                .queue_output(b)
                .map_err(|e| self.m2m_error("queueing an OUTPUT buffer", &e))?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Grows the CAPTURE pool if downstream holds every frame (see
    /// `Engine::grow_capture_if_starved`).
    fn grow_if_starved(&self, engine: &Arc<Engine>) -> Result<(), gst::FlowError> {
        match engine.grow_capture_if_starved() {
            Ok(0) => Ok(()),
            Ok(n) => {
                gst::info!(
                    self.cat(),
                    imp = self,
                    "downstream holds every frame: {n} more CAPTURE buffers"
                );
                Ok(())
            }
            Err(e) => Err(self.m2m_error("growing the CAPTURE pool", &e)),
        }
    }

    /// Drain: every queued frame comes out (or is dropped) before this returns.
    fn drain_all(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Ok(engine) = self.engine() else {
            return Ok(gst::FlowSuccess::Ok);
        };
        let started = lock(&self.state)
            .as_ref()
            .is_some_and(|s| s.output_size.is_some());
        if started {
            self.service(&engine)?;
            engine
                .drain()
                .map_err(|e| self.m2m_error("draining the VPU", &e))?;
            let done = engine.wait_until(Instant::now() + VPU_WAIT, || {
                self.service(&engine)?;
                let running = engine.drain_state() == DrainState::Running;
                if running {
                    // LAST needs a CAPTURE buffer too.
                    self.grow_if_starved(&engine)?;
                }
                Ok::<_, gst::FlowError>(!running)
            })?;
            if !done {
                engine.cancel_drain();
                return Err(self.post_fatal(&Fatal {
                    timeout: true,
                    message: format!("the VPU did not finish draining within {VPU_WAIT:?}"),
                }));
            }
            engine.cancel_drain();
            self.service(&engine)?;
        }
        // Whatever the VPU never answered is gone.
        let obj = self.obj();
        for f in obj.frames() {
            gst::debug!(
                self.cat(),
                imp = self,
                "frame {} not decoded by the VPU: dropped",
                f.system_frame_number()
            );
            obj.drop_frame(f)?;
        }
        if let Some(s) = lock(&self.state).as_mut() {
            s.queued_at.clear();
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn stats_structure(&self) -> gst::Structure {
        let stats = lock(&self.stats).clone();
        let (checker, starvation, grown, capture_buffers) = match lock(&self.state).as_ref() {
            Some(s) => (
                s.checker.clone(),
                s.engine.starvation_waits(),
                s.engine.pool_grown(),
                s.engine.capture_buffers(),
            ),
            None => (None, 0, 0, 0),
        };
        let (syncs, violations) = checker_counts(checker.as_deref());
        gst::Structure::builder(format!("{}-stats", self.codec().element))
            .field("frames-in", stats.frames_in)
            .field("frames-out", stats.frames_out)
            .field("decode-errors", stats.decode_errors)
            .field("frame-copies", stats.frame_copies)
            .field("bytes-copied", stats.bytes_copied)
            .field("cache-syncs", syncs)
            .field("coherency-violations", violations)
            .field("starvation-waits", starvation)
            .field("pool-grown", grown)
            .field("capture-buffers", u64::from(capture_buffers))
            .field("vpu-time-per-frame-us", stats.vpu_time.mean_us())
            .build()
    }
}

#[glib::object_subclass]
impl ObjectSubclass for VpuDec {
    const NAME: &'static str = "GstVpuDec";
    const ABSTRACT: bool = true;
    type Type = super::VpuDec;
    type ParentType = gst_video::VideoDecoder;
}

impl ObjectImpl for VpuDec {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb(
                        "Which VPU decodes: \"auto\" (a kernel V4L2 codec node offering the codec, \
                         else the emulated VPU), \"emu\" (the in-crate emulated VPU) or a node \
                         path like /dev/video1 (the kernel backend). Read when the element \
                         starts",
                    )
                    .default_value(Some(DEFAULT_DEVICE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("memory-policy", DEFAULT_MEMORY_POLICY)
                    .nick("Memory policy")
                    .blurb(
                        "CPU caching of decoded frame memory: cacheable (fast CPU reads, one \
                         cache invalidate per frame the CPU maps, one clean when it goes back to \
                         the VPU), coherent (uncached: no cache maintenance, slow CPU reads) or \
                         auto (cacheable, with the invalidate done lazily at the first CPU map, so \
                         a consumer that only imports the memory into a device never pays a sync)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("capture-io-mode", CaptureIoMode::Auto)
                    .nick("Capture IO mode")
                    .blurb(
                        "How decoded frames (the VPU's CAPTURE buffers, never copied) go \
                         downstream: dmabuf (as DMABuf memory, memory:DMABuf caps when \
                         downstream asks for them; an error at start where the frame memory is \
                         no dma-buf), mmap (as plain mapped memory for CPU consumers, synced for \
                         the CPU before the push, no memory:DMABuf caps) or auto (DMABuf memory \
                         where the frames are dma-bufs, else fd memory synced lazily when \
                         mapped). Read at the next stream format",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters since start (<element>-stats): frames-in, frames-out, \
                         decode-errors (frames the VPU answered with an error, dropped), \
                         frame-copies (frames copied instead of handed over; 0 on the zero-copy \
                         path), bytes-copied (coded bytes written into VPU bitstream buffers), \
                         cache-syncs and coherency-violations (from the VPU's coherency \
                         checker, VPU-wide), starvation-waits (waits while downstream held every \
                         decoded frame buffer), pool-grown (frame buffers added because \
                         downstream held all of them), capture-buffers (frame buffers of the current \
                         allocation, growth included; each has one GstBuffer that downstream gets \
                         every time it holds a new frame), vpu-time-per-frame-us (mean microseconds from \
                         queueing a frame to the VPU until it is decoded)",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        match pspec.name() {
            "device" => {
                let s = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                match s.parse::<DeviceChoice>() {
                    Ok(d) => lock(&self.settings).device = d,
                    Err(e) => {
                        gst::warning!(self.cat(), imp = self, "{e}; keeping the previous device")
                    }
                }
            }
            "memory-policy" => {
                if let Ok(p) = value.get::<MemoryPolicy>() {
                    lock(&self.settings).memory_policy = p;
                }
            }
            "capture-io-mode" => {
                if let Ok(m) = value.get::<CaptureIoMode>() {
                    lock(&self.settings).capture_io_mode = m;
                }
            }
            other => gst::warning!(self.cat(), imp = self, "no writable property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "device" => lock(&self.settings).device.to_string().to_value(),
            "memory-policy" => lock(&self.settings).memory_policy.to_value(),
            "capture-io-mode" => lock(&self.settings).capture_io_mode.to_value(),
            "stats" => self.stats_structure().to_value(),
            // GObject only asks for properties we installed.
            _ => glib::Value::from_type(pspec.value_type()),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        let codec = super::codec_of(obj.type_());
        // FWHT: unframed input that `parse` cuts into frames; H.264: one
        // access unit per buffer (h264parse upstream).
        obj.set_packetized(codec.framing == Framing::AccessUnits);
        let _ = self.codec.set(codec);
    }
}

impl GstObjectImpl for VpuDec {}

impl ElementImpl for VpuDec {}

impl VideoDecoderImpl for VpuDec {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let device = lock(&self.settings).device.clone();
        let codec = self.codec();
        let opened = device::open(&device, Role::Decoder, codec.pixel_format).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                [
                    "Cannot open a {} decoder on device \"{device}\": {e}",
                    codec.name
                ]
            )
        })?;
        gst::info!(
            self.cat(),
            imp = self,
            "decoding on {} ({:?})",
            opened.info.name,
            opened.info.kind
        );
        if lock(&self.settings).capture_io_mode == CaptureIoMode::Dmabuf
            && opened.memory != MemoryKind::DmaBuf
        {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "capture-io-mode=dmabuf, but the frame memory of {} is not dma-bufs \
                     (memfd: this system has neither /dev/dma_heap nor /dev/udmabuf); use \
                     capture-io-mode=auto or mmap",
                    opened.info.name
                ]
            ));
        }
        let engine = Engine::new(opened.session);
        let thread = engine.spawn().map_err(|e| {
            gst::error_msg!(
                gst::CoreError::Thread,
                ["Cannot start the vpu-capture thread: {e}"]
            )
        })?;
        self.failed.store(false, Ordering::Release);
        *lock(&self.stats) = Stats::default();
        *lock(&self.downstream) = Downstream::default();
        *lock(&self.state) = Some(State {
            engine,
            capture_thread: Some(thread),
            checker: opened.checker,
            input_state: None,
            output_size: None,
            output: None,
            quiet_errors: false,
            queued_at: HashMap::new(),
            memory: opened.memory,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = lock(&self.state).take();
        if let Some(mut s) = state {
            s.engine.shutdown();
            if let Some(t) = s.capture_thread.take()
                && t.join().is_err()
            {
                gst::error!(self.cat(), imp = self, "the vpu-capture thread panicked");
            }
        }
        Ok(())
    }

    fn set_format(
        &self,
        input_state: &gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
    ) -> Result<(), gst::LoggableError> {
        gst::debug!(
            self.cat(),
            imp = self,
            "input caps {:?}",
            input_state.caps()
        );
        let codec = self.codec();
        if let Some(s) = input_state.caps().and_then(|c| c.structure(0))
            && let Err(why) = (codec.check_caps)(s)
        {
            gst::element_imp_error!(
                self,
                gst::StreamError::CodecNotFound,
                ("{} cannot decode this stream exactly", codec.element),
                ["{why}"]
            );
            return Err(gst::loggable_error!(self.cat(), "{why}"));
        }
        match lock(&self.state).as_mut() {
            Some(s) => s.input_state = Some(input_state.clone()),
            None => return Err(gst::loggable_error!(self.cat(), "set_format before start")),
        }
        // Decoded frames leave on the streaming thread when it next runs,
        // i.e. with the next input frame at the latest (see engine.rs): one
        // frame of latency, plus what the codec holds back (reordering),
        // when the input says how long a frame is.
        let fps = input_state.info().fps();
        if fps.numer() > 0 {
            let frames = 1 + codec.held_frames;
            let latency = gst::ClockTime::SECOND
                .mul_div_floor(frames * fps.denom() as u64, fps.numer() as u64)
                .unwrap_or(gst::ClockTime::ZERO);
            self.obj().set_latency(latency, Some(latency));
        }
        Ok(())
    }

    fn parse(
        &self,
        _frame: &gst_video::VideoCodecFrame,
        adapter: &gst_base::Adapter,
        at_eos: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.codec().framing != Framing::Fwht {
            // Packetized codecs never get here (the base class only parses
            // unframed input).
            return Err(gst::FlowError::NotSupported);
        }
        loop {
            let available = adapter.available();
            if available < 4 {
                if at_eos && available > 0 {
                    gst::warning!(
                        self.cat(),
                        imp = self,
                        "{available} trailing bytes without a frame dropped"
                    );
                    adapter.flush(available);
                }
                return Ok(gst_video::VIDEO_DECODER_FLOW_NEED_DATA);
            }
            let found = adapter
                .masked_scan_uint32(0xffff_ffff, MAGIC_WORD, 0, available)
                .ok()
                .flatten();
            let Some(offset) = found else {
                // Keep 3 bytes: they may start a magic word.
                let skip = if at_eos { available } else { available - 3 };
                gst::warning!(
                    self.cat(),
                    imp = self,
                    "skipping {skip} bytes without a FWHT header"
                );
                adapter.flush(skip);
                return Ok(gst_video::VIDEO_DECODER_FLOW_NEED_DATA);
            };
            if offset > 0 {
                gst::warning!(
                    self.cat(),
                    imp = self,
                    "skipping {offset} bytes before a FWHT header"
                );
                adapter.flush(offset);
                continue;
            }
            if available < HEADER_SIZE {
                if at_eos {
                    gst::warning!(
                        self.cat(),
                        imp = self,
                        "truncated FWHT header at the end: {available} bytes dropped"
                    );
                    adapter.flush(available);
                }
                return Ok(gst_video::VIDEO_DECODER_FLOW_NEED_DATA);
            }
            let bytes = adapter
                .copy_bytes(0, HEADER_SIZE)
                .map_err(|_| gst::FlowError::Error)?;
            let header = match parse_header(&bytes) {
                Ok(h) if h.payload_size as usize <= h.max_payload_size() => h,
                Ok(h) => {
                    gst::warning!(
                        self.cat(),
                        imp = self,
                        "FWHT header claims a {} byte payload, at most {} fit {}x{}: resyncing",
                        h.payload_size,
                        h.max_payload_size(),
                        h.width,
                        h.height
                    );
                    adapter.flush(1);
                    continue;
                }
                Err(e) => {
                    gst::debug!(self.cat(), imp = self, "not a FWHT header ({e}): resyncing");
                    adapter.flush(1);
                    continue;
                }
            };
            let size = header.frame_size();
            if available < size {
                if !at_eos {
                    return Ok(gst_video::VIDEO_DECODER_FLOW_NEED_DATA);
                }
                // The VPU reports the truncated frame (and it is dropped).
                gst::warning!(
                    self.cat(),
                    imp = self,
                    "last frame truncated: {available} of {size} bytes"
                );
                self.obj().add_to_frame(available as i32);
                return self.obj().have_frame();
            }
            self.obj().add_to_frame(size as i32);
            return self.obj().have_frame();
        }
    }

    fn handle_frame(
        &self,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let engine = self.engine()?;
        self.check_fatal(&engine)?;
        let number = frame.system_frame_number();
        let input = frame.input_buffer_owned().ok_or(gst::FlowError::Error)?;
        drop(frame);
        let map = input.map_readable().map_err(|_| gst::FlowError::Error)?;
        let data = map.as_slice();
        let output_size = lock(&self.state).as_ref().and_then(|s| s.output_size);
        if output_size.is_none() {
            let (w, h) = match self.codec().framing {
                // parse() only makes frames that start with a valid header.
                Framing::Fwht => parse_header(data)
                    .map(|h| (h.width, h.height))
                    .unwrap_or((0, 0)),
                // The size upstream announced sizes the bitstream buffers;
                // the VPU takes the real one from the SPS.
                Framing::AccessUnits => lock(&self.state)
                    .as_ref()
                    .and_then(|s| s.input_state.as_ref())
                    .map(|i| (i.info().width(), i.info().height()))
                    .unwrap_or((0, 0)),
            };
            let size = engine
                .setup_output(w, h)
                .map_err(|e| self.m2m_error("setting up OUTPUT buffers", &e))?;
            if let Some(s) = lock(&self.state).as_mut() {
                s.output_size = Some(size);
            }
        }
        if let Some(s) = lock(&self.state).as_mut() {
            s.queued_at.insert(number, Instant::now());
        }
        self.queue_frame(&engine, number, data)?;
        {
            let mut stats = lock(&self.stats);
            stats.frames_in += 1;
            stats.bytes_copied += data.len() as u64;
        }
        self.service(&engine)?;
        Ok(gst::FlowSuccess::Ok)
    }

    fn flush(&self) -> bool {
        let Ok(engine) = self.engine() else {
            return true;
        };
        if let Err(e) = engine.flush() {
            gst::element_imp_error!(self, gst::ResourceError::Failed, ["Flushing the VPU: {e}"]);
            return false;
        }
        if let Some(s) = lock(&self.state).as_mut() {
            s.quiet_errors = true;
            s.queued_at.clear();
        }
        true
    }

    fn drain(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.drain_all()
    }

    fn finish(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.drain_all()
    }

    fn decide_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        let video_meta = query
            .find_allocation_meta::<gst_video::VideoMeta>()
            .is_some();
        let min_buffers = query
            .allocation_pools()
            .next()
            .map(|(_, _, min, _)| min)
            .unwrap_or(0);
        gst::debug!(
            self.cat(),
            imp = self,
            "downstream: video meta {video_meta}, min buffers {min_buffers}"
        );
        *lock(&self.downstream) = Downstream {
            video_meta,
            min_buffers,
        };
        // Frames go downstream in the VPU's own memory: no downstream pool is
        // ever allocated from. GstVideoDecoder's default still configures the
        // first one, without the VideoMeta option, which a pool of VPU memory
        // (the VPU encoders') refuses for a padded layout (650x370), failing
        // the negotiation. Configure it as it will be used, with VideoMeta
        // when downstream reads it, and leave out a pool that still refuses.
        if let Some((Some(pool), size, min, max)) = query.allocation_pools().next() {
            let caps = self.obj().output_state().and_then(|s| s.caps_owned());
            let mut config = pool.config();
            config.set_params(caps.as_ref(), size, min, max);
            if video_meta {
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            }
            if let Err(e) = pool.set_config(config) {
                gst::debug!(
                    self.cat(),
                    imp = self,
                    "downstream's pool refuses our frames ({e}); not using it"
                );
                query.set_nth_allocation_pool(0, None::<&gst::BufferPool>, size, min, max);
            }
        }
        self.parent_decide_allocation(query)
    }
}
