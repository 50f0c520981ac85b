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
//! soon as the codec has taken the picture (the codec copies it), and units
//! wait in `pending` for a CAPTURE buffer, so a codec that holds frames back
//! fits. With low latency (the default, `LOW_LATENCY` = 1) every frame gives
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

use std::collections::VecDeque;

use super::Faults;
use super::drain::Drain;
use super::encode::{capture_done, output_done, raw_frame, set_capture_format};
use super::engine::CodecEngine;
use super::session::{FwQueue, QueuedBuffer, Sink, control_name};
use crate::m2m::{
    BitrateMode, BufferFlags, Colorimetry, Format, H264Level, H264Profile, PixelFormat, QueueKind,
};
use crate::vpu::codec::h264enc::{self, AccessUnit, H264Encoder, H264Params};
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
                self.codec = Some(codec);
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

    fn encode(
        &mut self,
        src: QueuedBuffer,
        raw: Option<&Format>,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) {
        let pts = self.next_pts;
        let result = raw_frame(&src, raw).and_then(|raw| {
            let codec = self
                .codec
                .as_mut()
                .ok_or_else(|| "OUTPUT has no format".to_owned())?;
            let idr = src.flags.contains(BufferFlags::KEYFRAME);
            let input = src.region.device_read();
            codec
                .encode(&input[..raw.size], pts, idr)
                .map_err(|e| e.to_string())
        });
        output_done(&src, faults, sink);
        let received = result.and_then(|()| {
            self.next_pts += 1;
            self.in_codec.push_back((pts, src.timestamp));
            self.receive_all()
        });
        if let Err(reason) = received {
            self.pending.push_back(Pending::Error {
                timestamp: src.timestamp,
                reason,
            });
        }
    }
}
