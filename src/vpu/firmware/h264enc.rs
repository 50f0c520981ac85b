//! The H.264 stateful encoder engine of a session (dev-encoder.rst,
//! emulated), on libx264 ([`crate::vpu::codec::h264enc`]).
//!
//! Same contract as the FWHT engine: raw frames are read from OUTPUT buffers
//! and access units written into CAPTURE buffers, only through the shared
//! regions (`device_read`/`device_write`, so the coherency checker judges it
//! like DMA). Every CAPTURE buffer holds exactly one access unit, with the
//! timestamp of the frame it codes; an IDR carries SPS and PPS and the
//! KEYFRAME flag. A drain (`Stop`) codes every frame queued before it, takes
//! every unit still inside the codec out, then returns one CAPTURE buffer
//! flagged LAST; the next frame after it starts a new stream with an IDR.
//!
//! Unlike FWHT, input and output are decoupled: an OUTPUT buffer goes back as
//! soon as the codec has taken the picture (x264 copies it), and units
//! wait in `pending` for a CAPTURE buffer, so a codec that holds frames back
//! fits.
//!
//! The frame is not copied on the way to the codec: libavcodec reads it
//! straight from the OUTPUT buffer, through the VPU's own read-only mapping
//! of the buffer's fd (made once per buffer and kept while the host's
//! region lives, like an IOMMU mapping; `sys::FrameMapping`), as a
//! refcounted frame whose buffer reference owns that mapping
//! (`codec::h264enc`, "Frames without a copy"). The engine takes the
//! region's `device_read` guard around the send, so the coherency checker
//! judges the access like DMA (the host must have handed the buffer over
//! with `sync_for_device`), and x264's copy of the picture happens inside
//! it. A buffer goes back only once libavcodec let go of its frame (the
//! lease is released): at once, since every frame's units are taken out
//! right after it; a frame libavcodec still holds (its unit not yet
//! received) keeps its buffer in `held`, checked after every send, receive,
//! flush and control change, and buffers go back in queue order. An OUTPUT
//! stream-off closes the codec, which lets go of everything, and the host
//! takes its buffers back. If a buffer cannot be mapped, the frame is copied
//! from the `device_read` guard instead (logged). With low latency (the default, `LOW_LATENCY` = 1) every frame gives
//! its unit at once; in throughput mode (`LOW_LATENCY` = 0, x264 frame
//! threads) the codec holds up to [`H264Engine::delayed_frames`] frames, and
//! the session reports one more as its minimum OUTPUT buffers. Every frame
//! still comes out, in order, with its timestamp: a drain takes the held
//! units out before LAST; a control change takes them out before the codec
//! is reopened with the new parameters (so they are coded with the old
//! ones); an OUTPUT stream-off (flush, seek) discards them uncoded.
//!
//! # The firmware core's other sessions
//!
//! A frame is coded inside [`H264Engine::step`], on the core thread: that is
//! one unit of work, and the core serves its sessions round robin, one unit
//! each per pass, so another session waits at most one frame's coding time
//! per busy H.264 session. x264 (ultrafast, sliced threads, spreading the
//! frame over its own threads) takes about 5.5 ms at 1280x720 and 12 ms at
//! 1920x1080 per frame here (`benches/h264enc.rs`, the `x264enc ...
//! zerolatency` row, on the loaded 2-core machine): well inside a 30 fps
//! frame period, so sessions sharing the core keep their frame rates while
//! the core has CPU left. The alternative, a coding thread per session,
//! would take that wait away but needs a second way to wake the core when a
//! frame is done (it sleeps on the doorbell between passes): polling would
//! spin a CPU, and a wake-up per frame adds a hand-off on every frame. Not
//! worth it at these costs; it is the change to make if a core must serve
//! several 1080p60 sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use super::Faults;
use super::drain::Drain;
use super::encode::{capture_done, output_done, raw_frame, set_capture_format};
use super::engine::CodecEngine;
use super::session::{FwQueue, QueuedBuffer, Sink, control_name};
use crate::m2m::{
    BitrateMode, BufferFlags, Colorimetry, Format, H264Level, H264Profile, PixelFormat, QueueKind,
};
use crate::mem::Region;
use crate::vpu::codec::h264enc::{self, AccessUnit, FrameMapping, H264Encoder, H264Params, Lease};
use crate::vpu::protocol::ctrl;

/// What waits for a CAPTURE buffer.
enum Pending {
    Unit {
        unit: AccessUnit,
        timestamp: u64,
    },
    /// A frame that could not be coded: its CAPTURE buffer carries ERROR.
    Error {
        timestamp: u64,
        reason: String,
    },
}

#[derive(Default)]
pub(crate) struct H264Engine {
    codec: Option<H264Encoder>,
    params: H264Params,
    drain: Drain,
    /// The drain took the codec's last units out.
    drain_flushed: bool,
    force_next: bool,
    /// Counter given to the codec as pts, and the timestamp of each frame
    /// inside the codec, in order.
    next_pts: i64,
    in_codec: VecDeque<(i64, u64)>,
    pending: VecDeque<Pending>,
    /// OUTPUT buffers whose frame libavcodec may still read, in queue
    /// order: each goes back once its lease is released (at once without
    /// one: copied, or refused).
    held: VecDeque<(QueuedBuffer, Option<Lease>)>,
    /// The VPU's read-only mapping of each OUTPUT buffer, made the first
    /// time it is coded, by region id (with the region, to drop mappings of
    /// buffers the host freed).
    mappings: HashMap<u64, (Weak<Region>, Arc<FrameMapping>)>,
}

impl CodecEngine for H264Engine {
    fn drain(&mut self) -> &mut Drain {
        &mut self.drain
    }

    fn set_format(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        queue: QueueKind,
        pixfmt: PixelFormat,
        (width, height): (u32, u32),
        colorimetry: Colorimetry,
    ) -> Result<(), String> {
        match queue {
            QueueKind::Output => {
                if !h264enc::supports(pixfmt) {
                    return Err(format!(
                        "the H.264 encoder takes I420, YV12, NV12 or NV21, not {pixfmt}"
                    ));
                }
                let mut raw = Format::raw(pixfmt, width, height)
                    .ok_or_else(|| format!("no {pixfmt} layout for {width}x{height}"))?;
                raw.colorimetry = colorimetry;
                let codec = H264Encoder::new(&raw, self.params).map_err(|e| e.to_string())?;
                let mut coded = Format::coded(PixelFormat::H264, width, height);
                coded.colorimetry = colorimetry;
                // The old codec goes (letting go of any frame it held);
                // like a stream-off, the host owns its buffers again.
                self.codec = Some(codec);
                self.release_held_on_flush();
                self.in_codec.clear();
                self.pending.clear();
                output.format = Some(raw);
                capture.format = Some(coded);
            }
            QueueKind::Capture => {
                set_capture_format(capture, PixelFormat::H264, pixfmt, width, height)?;
            }
        }
        Ok(())
    }

    fn set_control(&mut self, id: u32, value: u32) -> Result<(), String> {
        let mut p = self.params;
        let menu = |what: &str| format!("{value} is not a {what} menu index");
        match id {
            ctrl::GOP_SIZE => p.gop_size = value,
            ctrl::I_FRAME_QP => p.i_frame_qp = value,
            ctrl::P_FRAME_QP => p.p_frame_qp = value,
            ctrl::BITRATE => p.bitrate = value,
            ctrl::MIN_QP => p.min_qp = value,
            ctrl::MAX_QP => p.max_qp = value,
            ctrl::BITRATE_MODE => {
                p.mode = BitrateMode::from_v4l2(value).ok_or_else(|| menu("bitrate mode"))?;
            }
            ctrl::H264_PROFILE => {
                p.profile = H264Profile::from_v4l2(value).ok_or_else(|| menu("H.264 profile"))?;
            }
            ctrl::H264_LEVEL => {
                p.level = if value == ctrl::LEVEL_AUTO {
                    None
                } else {
                    Some(H264Level::from_v4l2(value).ok_or_else(|| menu("H.264 level"))?)
                };
            }
            ctrl::LOW_LATENCY => {
                p.low_latency = match value {
                    0 => false,
                    1 => true,
                    _ => return Err(format!("low-latency takes 0 or 1, got {value}")),
                };
            }
            ctrl::FRAME_RATE_MHZ => {
                if value == 0 {
                    return Err("a frame rate of 0 is not a rate".into());
                }
                p.framerate = (value, 1000);
            }
            ctrl::FORCE_KEY_FRAME => {
                self.force_next = true;
                return Ok(());
            }
            _ => {
                return Err(format!(
                    "the H.264 encoder has no {} control ({id})",
                    control_name(id)
                ));
            }
        }
        p.validate().map_err(|e| e.to_string())?;
        // Without a format there is no codec yet: it starts from `params`.
        if let Some(codec) = self.codec.as_mut() {
            let rest = codec.set_params(p).map_err(|e| e.to_string())?;
            self.take_units(rest);
        }
        self.params = p;
        Ok(())
    }

    /// 1, plus the frames the codec may hold before a frame's unit comes
    /// out (none before a format: no codec yet).
    fn min_output_buffers(&self) -> u32 {
        1 + self
            .codec
            .as_ref()
            .map_or(0, H264Encoder::max_delayed_frames)
    }

    fn on_output_queued(&mut self, buf: &mut QueuedBuffer) {
        if std::mem::take(&mut self.force_next) {
            buf.flags.insert(BufferFlags::KEYFRAME);
        }
    }

    fn flush(&mut self, queue: QueueKind) {
        match queue {
            QueueKind::Output => {
                // A flush: what is inside the codec is dropped uncoded, the
                // stream restarts with an IDR.
                if let Some(codec) = self.codec.as_mut() {
                    codec.discard();
                }
                // The stream-off gives every OUTPUT buffer back to the host;
                // closing the codec released them all (libavcodec unrefs the
                // frame it holds when it is freed).
                self.release_held_on_flush();
                self.in_codec.clear();
                self.pending.clear();
            }
            QueueKind::Capture => self.pending.clear(),
        }
    }

    fn stop(&mut self, output: &FwQueue) -> bool {
        let started = self.drain.stop(output);
        if started {
            self.drain_flushed = false;
        }
        started
    }

    /// One unit of work; false when nothing more can happen now.
    fn step(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) -> bool {
        // OUTPUT buffers libavcodec let go of since the last step (a control
        // change flushed the codec) go back first, streaming or not.
        if self.return_released(faults, sink) {
            return true;
        }
        if !self.drain.is_running() || !capture.streaming {
            return false;
        }
        // Coded units go out first, one per CAPTURE buffer.
        if !self.pending.is_empty()
            && let Some(dst) = capture.buffers.pop_front()
            && let Some(p) = self.pending.pop_front()
        {
            self.emit(p, dst, sink);
            return true;
        }
        // Code the next frame while a unit or two may wait for a buffer.
        if self.pending.len() < 2
            && let Some(src) = self.drain.take_output(output)
        {
            self.encode(src, output.format.as_ref(), faults, sink);
            return true;
        }
        if self.drain.drained() && self.pending.is_empty() {
            if !self.drain_flushed {
                self.drain_flushed = true;
                let flushed = match self.codec.as_mut() {
                    Some(c) => c.flush().map_err(|e| e.to_string()),
                    None => Ok(Vec::new()),
                };
                match flushed {
                    Ok(units) => self.take_units(units),
                    Err(reason) => self.pending.push_back(Pending::Error {
                        timestamp: 0,
                        reason,
                    }),
                }
                self.return_released(faults, sink);
                return true;
            }
            return self.drain.finish(capture, sink);
        }
        false
    }
}

impl H264Engine {
    /// The units the codec gave back, matched with their frames' timestamps.
    fn take_units(&mut self, units: Vec<AccessUnit>) {
        for unit in units {
            let pts = unit.pts();
            // Frames leave in order (no B-frames); skip any the codec dropped.
            let mut timestamp = 0;
            while let Some((p, ts)) = self.in_codec.pop_front() {
                if p == pts {
                    timestamp = ts;
                    break;
                }
                log::warn!("H.264 encoder: the codec dropped frame {p}");
            }
            self.pending.push_back(Pending::Unit { unit, timestamp });
        }
    }

    fn receive_all(&mut self) -> Result<(), String> {
        let mut units = Vec::new();
        if let Some(codec) = self.codec.as_mut() {
            while let Some(u) = codec.receive().map_err(|e| e.to_string())? {
                units.push(u);
            }
        }
        self.take_units(units);
        Ok(())
    }

    fn emit(&mut self, p: Pending, dst: QueuedBuffer, sink: &mut Sink<'_>) {
        let seq = self.drain.next_sequence();
        let (timestamp, result) = match p {
            Pending::Unit { unit, timestamp } => {
                let data = unit.data();
                let mut out = dst.region.device_write();
                let r = match out.get_mut(..data.len()) {
                    Some(o) => {
                        o.copy_from_slice(data);
                        Ok((data.len(), unit.keyframe()))
                    }
                    None => Err(format!(
                        "a {}-byte access unit does not fit the {}-byte CAPTURE buffer {}",
                        data.len(),
                        out.len(),
                        dst.index
                    )),
                };
                (timestamp, r)
            }
            Pending::Error { timestamp, reason } => (timestamp, Err(reason)),
        };
        let dst = QueuedBuffer { timestamp, ..dst };
        capture_done(&dst, seq, result, sink);
    }

    /// Returns, in order, the held OUTPUT buffers whose frames libavcodec
    /// let go of; stops at the first it still holds, so buffers go back in
    /// queue order. True if any went back.
    fn return_released(&mut self, faults: &Faults, sink: &mut Sink<'_>) -> bool {
        let mut any = false;
        while self
            .held
            .front()
            .is_some_and(|(_, lease)| lease.as_ref().is_none_or(Lease::released))
        {
            if let Some((src, _)) = self.held.pop_front() {
                output_done(&src, faults, sink);
                any = true;
            }
        }
        any
    }

    /// After the codec was closed by an OUTPUT stream-off (or replaced by a
    /// new format): the host takes every OUTPUT buffer back, so the held
    /// ones are forgotten. libavcodec unreferences the frame it holds when
    /// it is freed, so none is still read; were one (a libavcodec that kept
    /// a reference elsewhere), its memory stays mapped through the lease's
    /// own mapping, and the error says so.
    fn release_held_on_flush(&mut self) {
        for (src, lease) in self.held.drain(..) {
            if lease.is_some_and(|l| !l.released()) {
                log::error!(
                    "H.264 encoder: libavcodec still references OUTPUT buffer {} after the \
                     codec was closed",
                    src.index
                );
            }
        }
    }

    /// The VPU's read-only mapping of `region` (see `sys::FrameMapping`),
    /// made once per buffer.
    fn mapping(&mut self, region: &Arc<Region>) -> std::io::Result<Arc<FrameMapping>> {
        if let Some((_, m)) = self.mappings.get(&region.id()) {
            return Ok(Arc::clone(m));
        }
        // Mappings of buffers the host freed go with the first new one.
        self.mappings.retain(|_, (r, _)| r.strong_count() > 0);
        let m = FrameMapping::map(region.fd(), region.size())?;
        self.mappings
            .insert(region.id(), (Arc::downgrade(region), Arc::clone(&m)));
        Ok(m)
    }

    /// Codes `src`: libavcodec reads the frame straight from the buffer
    /// (through the VPU's mapping of it), and the buffer goes back once
    /// libavcodec let go of it (at once with libx264, which copies the
    /// picture, since the units of every frame are taken out right after
    /// it). Only if the buffer cannot be mapped is the frame copied.
    fn encode_one(
        &mut self,
        src: &QueuedBuffer,
        raw: Option<&Format>,
        pts: i64,
    ) -> Result<Option<Lease>, String> {
        raw_frame(src, raw)?;
        let idr = src.flags.contains(BufferFlags::KEYFRAME);
        let mapping = self.mapping(&src.region);
        let codec = self
            .codec
            .as_mut()
            .ok_or_else(|| "OUTPUT has no format".to_owned())?;
        // The device reads the region: the guard lets the checker judge the
        // access (the host must have handed the buffer over), and is held
        // while libx264 copies the picture.
        let input = src.region.device_read();
        match mapping {
            Ok(mapping) => codec
                .encode_mapped(&mapping, pts, idr)
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(e) => {
                log::warn!(
                    "H.264 encoder: cannot map OUTPUT buffer {} ({e}), copying the frame",
                    src.index
                );
                codec
                    .encode(&input, pts, idr)
                    .map(|()| None)
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn encode(
        &mut self,
        src: QueuedBuffer,
        raw: Option<&Format>,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) {
        let pts = self.next_pts;
        let timestamp = src.timestamp;
        let (lease, result) = match self.encode_one(&src, raw, pts) {
            Ok(lease) => (lease, Ok(())),
            Err(reason) => (None, Err(reason)),
        };
        // The buffer waits for its lease (after the ones before it).
        self.held.push_back((src, lease));
        let received = result.and_then(|()| {
            self.next_pts += 1;
            self.in_codec.push_back((pts, timestamp));
            self.receive_all()
        });
        self.return_released(faults, sink);
        if let Err(reason) = received {
            self.pending.push_back(Pending::Error { timestamp, reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{Checker, CheckerConfig, Coherency};
    use crate::sys::DmaBackend;
    use crate::vpu::firmware::testing;
    use crate::vpu::protocol::Response;

    const W: u32 = 322;
    const H: u32 = 242;

    /// The shared engine rig, with this engine and its raw format.
    struct Rig {
        base: testing::Rig,
        engine: H264Engine,
        raw: Format,
    }

    impl Rig {
        fn new() -> Rig {
            let checker = Checker::new(CheckerConfig {
                simulate_cache: true,
                panic_on_violation: false,
            });
            let mut rig = Rig {
                base: testing::Rig::with_checker(checker),
                engine: H264Engine::default(),
                raw: Format::raw(PixelFormat::I420, W, H).unwrap(),
            };
            for (queue, pixfmt) in [
                (QueueKind::Output, PixelFormat::I420),
                (QueueKind::Capture, PixelFormat::H264),
            ] {
                rig.engine
                    .set_format(
                        &mut rig.base.output,
                        &mut rig.base.capture,
                        queue,
                        pixfmt,
                        (W, H),
                        Colorimetry::default(),
                    )
                    .unwrap();
            }
            rig.base.capture.streaming = true;
            for queue in [QueueKind::Output, QueueKind::Capture] {
                rig.engine.stream_on(queue);
            }
            rig
        }

        /// A cacheable OUTPUT buffer holding frame `n`, handed to the device
        /// as the host does (written by the CPU, then `sync_for_device`).
        fn frame(&self, n: u32) -> QueuedBuffer {
            let region = Region::allocate(
                &format!("out{n}"),
                self.raw.size,
                Coherency::Cacheable,
                DmaBackend::Memfd,
                &self.base.checker,
            )
            .unwrap();
            for (i, b) in region.cpu_write().iter_mut().enumerate() {
                *b = ((i + 7 * n as usize) % 251) as u8;
            }
            region.sync_for_device().unwrap();
            QueuedBuffer {
                index: n,
                region,
                bytesused: self.raw.size,
                timestamp: u64::from(n) * 1000,
                flags: BufferFlags::NONE,
            }
        }

        fn queue_captures(&mut self, n: u32) {
            for index in 0..n {
                self.base.queue_capture(index, 256 * 1024);
            }
        }

        fn step_all(&mut self) {
            self.base.step_all(&mut self.engine);
        }

        /// Indices of the buffers of `queue` returned so far, in order.
        fn done(&self, queue: QueueKind) -> Vec<u32> {
            self.base
                .responses()
                .filter_map(|r| match r {
                    Response::BufferDone {
                        queue: q,
                        index,
                        error,
                        ..
                    } if *q == queue => {
                        assert!(error.is_empty(), "{queue} {index}: {error}");
                        Some(*index)
                    }
                    _ => None,
                })
                .collect()
        }

        /// Codes `buf` as the engine does but leaves its unit inside the
        /// codec (nothing received): the state in which libavcodec keeps
        /// the next frame it is sent.
        fn send_unreceived(&mut self, buf: QueuedBuffer) -> Lease {
            let pts = self.engine.next_pts;
            let lease = self
                .engine
                .encode_one(&buf, Some(&self.raw), pts)
                .unwrap()
                .expect("a lent frame");
            self.engine.next_pts += 1;
            self.engine.in_codec.push_back((pts, buf.timestamp));
            self.engine.held.push_back((buf, Some(lease.clone())));
            lease
        }

        /// Frame 0 coded as usual, then frames 1 and 2 sent with no unit
        /// received: libavcodec holds frame 2.
        fn hold_a_frame(&mut self) -> Lease {
            let buf = self.frame(0);
            self.base.output.buffers.push_back(buf);
            self.step_all();
            assert_eq!(self.done(QueueKind::Output), [0]);
            let lease1 = self.send_unreceived(self.frame(1));
            assert!(lease1.released(), "libavcodec took frame 1 at once");
            let lease2 = self.send_unreceived(self.frame(2));
            assert!(
                !lease2.released(),
                "frame 2 waits for unit 1 to be received"
            );
            self.step_all();
            assert_eq!(
                self.done(QueueKind::Output),
                [0, 1],
                "buffer 2 is not returned while libavcodec holds it"
            );
            lease2
        }

        fn assert_no_violation(&self) {
            assert!(
                self.base.checker.violations().is_empty(),
                "{:?}",
                self.base.checker.violations()
            );
        }
    }

    #[test]
    fn every_output_buffer_goes_back_once_coded_without_a_copy() {
        let mut rig = Rig::new();
        rig.queue_captures(7);
        // The host keeps its buffers (and so its regions) while coding.
        let mut host = Vec::new();
        for n in 0..6 {
            let buf = rig.frame(n);
            host.push(Arc::clone(&buf.region));
            rig.base.output.buffers.push_back(buf);
        }
        rig.step_all();
        assert_eq!(rig.done(QueueKind::Output), [0, 1, 2, 3, 4, 5]);
        assert_eq!(rig.done(QueueKind::Capture).len(), 6);
        assert!(rig.engine.held.is_empty());
        assert_eq!(rig.engine.mappings.len(), 6, "one VPU mapping per buffer");
        // Buffers the host freed lose their mapping with the next new one.
        drop(host);
        let buf = rig.frame(6);
        rig.base.output.buffers.push_back(buf);
        rig.step_all();
        assert_eq!(rig.done(QueueKind::Output).len(), 7);
        assert_eq!(rig.engine.mappings.len(), 1);
        rig.assert_no_violation();
    }

    #[test]
    fn a_held_frame_goes_back_after_a_control_change_coded_it() {
        let mut rig = Rig::new();
        let lease2 = rig.hold_a_frame();
        // A new bitrate flushes the codec: unit 1 out, frame 2 coded.
        rig.engine.set_control(ctrl::BITRATE, 1_000_000).unwrap();
        assert!(lease2.released());
        rig.queue_captures(4);
        rig.step_all();
        assert_eq!(rig.done(QueueKind::Output), [0, 1, 2]);
        assert_eq!(rig.done(QueueKind::Capture), [0, 1, 2], "every unit");
        rig.assert_no_violation();
    }

    #[test]
    fn a_held_frame_goes_back_when_a_drain_flushes_the_codec() {
        let mut rig = Rig::new();
        let lease2 = rig.hold_a_frame();
        assert!(rig.engine.stop(&rig.base.output));
        rig.queue_captures(4);
        rig.step_all();
        assert!(lease2.released());
        assert_eq!(rig.done(QueueKind::Output), [0, 1, 2]);
        // Units 0, 1, 2, then LAST.
        assert_eq!(rig.done(QueueKind::Capture), [0, 1, 2, 3]);
        rig.assert_no_violation();
    }

    #[test]
    fn an_output_stream_off_lets_go_of_a_held_frame() {
        let mut rig = Rig::new();
        let lease2 = rig.hold_a_frame();
        rig.base.output.streaming = false;
        rig.base.output.buffers.clear();
        rig.engine.stream_off(QueueKind::Output);
        assert!(lease2.released(), "closing the codec let go of frame 2");
        assert!(rig.engine.held.is_empty(), "the host took the buffers back");
        rig.step_all();
        assert_eq!(rig.done(QueueKind::Output), [0, 1]);
        rig.assert_no_violation();
    }
}
