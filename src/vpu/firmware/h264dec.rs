//! The stateful H.264 decoder engine of a session (dev-decoder.rst,
//! emulated), on libavcodec ([`crate::vpu::codec::h264`]).
//!
//! OUTPUT buffers carry one access unit each (Annex-B), as V4L2_PIX_FMT_H264
//! specifies for decoders without `V4L2_FMT_FLAG_CONTINUOUS_BYTESTREAM`;
//! their timestamp is copied to the CAPTURE buffer of the picture they code.
//! The engine parses SPSs itself, so the source change (coded and visible
//! size, minimum CAPTURE buffers = DPB frames + 1) is raised before the
//! OUTPUT buffer that holds the first picture comes back, and a new SPS with
//! another geometry mid-stream first returns every picture of the old one,
//! then LAST, then the new source change. Pictures leave in presentation
//! order (libavcodec reorders); a drain (`Stop`) returns every picture, then
//! LAST.
//!
//! Every access unit is answered on a CAPTURE buffer: with its picture, with
//! ERROR and the reason (rejected, damaged, or no picture came out of it),
//! or empty without ERROR when it holds no slice (parameter sets only).
//!
//! The codec library (libavcodec) was chosen by measurement: figures and
//! reason in [`crate::vpu::codec::h264`] and the README.
//!
//! Sharing the core: one access unit per step, and libavcodec's frame
//! threads do the decoding, so a step costs the parse of one access unit
//! plus the copy of at most one picture; FWHT sessions on the same core wait
//! for that, not for a whole H.264 decode.

use std::collections::{HashMap, VecDeque};

use super::Faults;
use super::decode::{announce_capture_format, raw_format, set_output_format};
use super::drain::Drain;
use super::engine::CodecEngine;
use super::session::{FwQueue, QueuedBuffer, Sink};
use crate::m2m::{BufferFlags, Colorimetry, Format, PixelFormat, QueueKind};
use crate::vpu::codec::h264::nal::{self, nal_type};
use crate::vpu::codec::h264::{H264Decoder, Picture, Sps};
use crate::vpu::protocol::Response;

/// Raw formats the engine writes, the default first.
pub(crate) const CAPTURE_FORMATS: [PixelFormat; 4] = [
    PixelFormat::I420,
    PixelFormat::Nv12,
    PixelFormat::Yv12,
    PixelFormat::Nv21,
];

/// An access unit whose picture has not come out after this many more
/// access units was dropped by libavcodec: more than the largest DPB (16)
/// plus the frame threads' delay.
const LOST_AFTER: u64 = 32;
/// CAPTURE buffers beyond the DPB size: the picture being written.
const CAPTURE_MARGIN: u32 = 1;

fn decoder_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// What a source change announces, from the SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamInfo {
    width: u32,
    height: u32,
    coded_width: u32,
    coded_height: u32,
    dpb_frames: u32,
    colorimetry: Colorimetry,
}

impl StreamInfo {
    fn of(sps: &Sps) -> StreamInfo {
        StreamInfo {
            width: sps.width,
            height: sps.height,
            coded_width: sps.coded_width,
            coded_height: sps.coded_height,
            dpb_frames: sps.dpb_frames(),
            colorimetry: Colorimetry::default(),
        }
    }
}

/// An access unit taken from an OUTPUT buffer.
#[derive(Debug)]
enum Unit {
    Au {
        data: Vec<u8>,
        timestamp: u64,
        /// The SPS in force and whether the unit holds a slice.
        stream: Option<Result<StreamInfo, String>>,
        picture: bool,
    },
    Bad {
        reason: String,
        timestamp: u64,
    },
}

/// What goes back on CAPTURE, in order.
enum Outcome {
    Picture(Picture),
    Error {
        timestamp: u64,
        reason: String,
    },
    /// An access unit without a slice.
    Empty {
        timestamp: u64,
    },
    /// The pictures of the old geometry are all out: announce the new one.
    Change(StreamInfo),
}

#[derive(Default)]
pub(crate) struct H264Dec {
    codec: Option<H264Decoder>,
    /// SPSs by id, as received.
    sps: HashMap<u32, Sps>,
    /// The SPS the last slice used, and the one received last.
    active_sps: Option<u32>,
    last_sps: Option<u32>,
    units: VecDeque<Unit>,
    results: VecDeque<Outcome>,
    /// Access units sent to libavcodec whose picture has not come out:
    /// (timestamp, count of units sent before it).
    in_flight: VecDeque<(u64, u64)>,
    sent: u64,
    stream: Option<StreamInfo>,
    preferred: Option<PixelFormat>,
    drain: Drain,
    /// libavcodec was told the stream ends (drain).
    eof_sent: bool,
}

impl CodecEngine for H264Dec {
    fn drain(&mut self) -> &mut Drain {
        &mut self.drain
    }

    fn output_needs_format(&self) -> bool {
        false
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
                set_output_format(
                    output,
                    PixelFormat::H264,
                    pixfmt,
                    (width, height),
                    colorimetry,
                )?;
            }
            QueueKind::Capture => {
                if !CAPTURE_FORMATS.contains(&pixfmt) {
                    let allowed: Vec<String> =
                        CAPTURE_FORMATS.iter().map(|f| f.to_string()).collect();
                    return Err(format!(
                        "H.264 decodes to {}, not {pixfmt}",
                        allowed.join(", ")
                    ));
                }
                let (w, h, cm) = match &self.stream {
                    Some(s) => (s.width, s.height, s.colorimetry),
                    None => (width, height, colorimetry),
                };
                capture.format = Some(raw_format(pixfmt, (w, h), cm)?);
                self.preferred = Some(pixfmt);
            }
        }
        Ok(())
    }

    fn flush(&mut self, queue: QueueKind) {
        if queue == QueueKind::Output {
            // Flush (seek): forget every unit, picture and reference.
            self.units.clear();
            self.results.retain(|r| matches!(r, Outcome::Change(_)));
            self.in_flight.clear();
            if let Some(c) = self.codec.as_mut() {
                c.flush();
            }
            self.eof_sent = false;
        }
    }

    /// One unit of work; false when nothing more can happen now.
    ///
    /// Taking in an OUTPUT buffer's access unit, handing it to libavcodec
    /// and writing the picture that comes out are one unit, as a kernel m2m
    /// job takes one OUTPUT and one CAPTURE buffer: both come back with one
    /// interrupt, so the host wakes once per frame, not once per buffer.
    /// (libavcodec's frame threads keep the picture of an earlier access
    /// unit coming out at each one once they are all busy.) A step still
    /// parses at most one access unit and copies at most one picture.
    fn step(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) -> bool {
        let mut did = self.step_once(output, capture, faults, sink, true);
        let progress = did != Did::Nothing;
        // Consumed -> decoded -> written, no further, and no second OUTPUT
        // buffer taken in: whatever must come first (a picture already
        // waiting for a CAPTURE buffer, the LAST of the old geometry) still
        // does, as in separate steps.
        for _ in 0..2 {
            if !matches!(did, Did::Consumed | Did::Decoded) {
                break;
            }
            did = self.step_once(output, capture, faults, sink, false);
        }
        progress
    }
}

/// What one [`H264Dec::step_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Did {
    Nothing,
    /// Took in an OUTPUT buffer.
    Consumed,
    /// Handed an access unit to the codec.
    Decoded,
    /// Anything else (a CAPTURE buffer written, a source change, LAST).
    Other,
}

impl From<bool> for Did {
    fn from(progress: bool) -> Did {
        if progress { Did::Other } else { Did::Nothing }
    }
}

impl H264Dec {
    /// One action; with `take_output` false, an OUTPUT buffer is not taken
    /// in.
    fn step_once(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        faults: &Faults,
        sink: &mut Sink<'_>,
        take_output: bool,
    ) -> Did {
        if let Some(progress) = self.drain.send_owed_last(capture, sink) {
            return progress.into();
        }
        if !self.drain.is_running() {
            return Did::Nothing;
        }
        if let Some(result) = self.results.front() {
            if let Outcome::Change(info) = result {
                let info = info.clone();
                self.results.pop_front();
                self.source_change(info, capture, sink);
                return Did::Other;
            }
            if !capture.streaming {
                return Did::Nothing;
            }
            let Some(buf) = capture.buffers.pop_front() else {
                return Did::Nothing;
            };
            if let Some(result) = self.results.pop_front() {
                self.write(result, buf, capture.format.as_ref(), faults, sink);
            }
            return Did::Other;
        }
        if !self.units.is_empty() {
            self.decode_unit(capture, sink);
            return Did::Decoded;
        }
        if !take_output {
            return Did::Nothing;
        }
        if let Some(buf) = self.drain.take_output(output) {
            self.consume(&buf, capture, sink);
            return Did::Consumed;
        }
        if self.drain.drained() {
            if !self.eof_sent {
                self.eof_sent = true;
                if let Some(c) = self.codec.as_mut() {
                    c.send_eof();
                }
                self.collect(true);
                return Did::Other;
            }
            return self.finish_drain(capture, sink).into();
        }
        Did::Nothing
    }

    fn decoder(&mut self) -> Result<&mut H264Decoder, String> {
        if self.codec.is_none() {
            self.codec = Some(H264Decoder::new(decoder_threads()).map_err(|e| e.to_string())?);
        }
        self.codec
            .as_mut()
            .ok_or_else(|| "no H.264 decoder".to_owned())
    }

    /// Splits an OUTPUT buffer's access unit, notes its SPSs, and announces
    /// the stream if this is its first picture.
    fn consume(&mut self, buf: &QueuedBuffer, capture: &mut FwQueue, sink: &mut Sink<'_>) {
        let data = {
            let mem = buf.region.device_read();
            mem[..buf.bytesused.min(mem.len())].to_vec()
        };
        let unit = self.parse_unit(data, buf.timestamp);
        if self.stream.is_none()
            && let Unit::Au {
                stream: Some(Ok(info)),
                picture: true,
                ..
            } = &unit
        {
            let info = info.clone();
            self.source_change(info, capture, sink);
        }
        self.units.push_back(unit);
        sink.done(
            QueueKind::Output,
            buf,
            buf.bytesused,
            BufferFlags::NONE,
            0,
            "",
        );
    }

    fn parse_unit(&mut self, data: Vec<u8>, timestamp: u64) -> Unit {
        if data.is_empty() {
            return Unit::Bad {
                reason: "empty OUTPUT buffer".into(),
                timestamp,
            };
        }
        let mut picture = false;
        if nal::nal_units(&data).next().is_none() {
            return Unit::Bad {
                reason: format!("no NAL unit start code in {} bytes", data.len()),
                timestamp,
            };
        }
        for unit in nal::nal_units(&data) {
            match unit[0] & 0x1f {
                nal_type::SPS => match Sps::parse(unit) {
                    Ok(sps) => {
                        self.last_sps = Some(sps.id);
                        self.sps.insert(sps.id, sps);
                    }
                    Err(e) => {
                        return Unit::Bad {
                            reason: format!("damaged sequence parameter set: {e}"),
                            timestamp,
                        };
                    }
                },
                // The PPS is not parsed: a slice is taken to use the SPS
                // received last, as in every single-SPS stream (libavcodec
                // resolves the real reference for decoding).
                nal_type::SLICE | nal_type::IDR => picture = true,
                _ => {}
            }
        }
        if picture {
            self.active_sps = self.last_sps;
        }
        let stream =
            self.active_sps
                .and_then(|id| self.sps.get(&id))
                .map(|sps| match sps.unsupported() {
                    Some(why) => Err(why),
                    None => Ok(StreamInfo::of(sps)),
                });
        if picture && stream.is_none() {
            return Unit::Bad {
                reason: "slice data before any sequence parameter set".into(),
                timestamp,
            };
        }
        Unit::Au {
            data,
            timestamp,
            stream,
            picture,
        }
    }

    /// Decodes the next access unit (or reports it), first draining the old
    /// geometry if its SPS changed the stream.
    fn decode_unit(&mut self, capture: &mut FwQueue, sink: &mut Sink<'_>) {
        let Some(unit) = self.units.pop_front() else {
            return;
        };
        let (data, timestamp, stream, picture) = match unit {
            Unit::Bad { reason, timestamp } => {
                if self.stream.is_none() {
                    // No CAPTURE buffer can carry it yet: skipped, as bytes
                    // before the first header.
                    log::warn!(
                        "VPU H.264 session {}: skipping undecodable data: {reason}",
                        sink.id
                    );
                } else {
                    self.results.push_back(Outcome::Error { timestamp, reason });
                }
                return;
            }
            Unit::Au {
                data,
                timestamp,
                stream,
                picture,
            } => (data, timestamp, stream, picture),
        };
        if !picture {
            if self.stream.is_some() {
                self.results.push_back(Outcome::Empty { timestamp });
            }
            return;
        }
        let info = match stream {
            Some(Ok(info)) => info,
            Some(Err(why)) => {
                if self.stream.is_none() {
                    // Nothing can be announced for it: the session cannot
                    // go on with this stream.
                    sink.post(Response::SessionError { text: why });
                    self.units.clear();
                    self.drain.halt();
                } else {
                    self.results.push_back(Outcome::Error {
                        timestamp,
                        reason: why,
                    });
                }
                return;
            }
            None => return,
        };
        match &self.stream {
            None => {
                // Announced at consume time unless CAPTURE was not ready.
                self.source_change(info, capture, sink);
                self.units.push_front(Unit::Au {
                    data,
                    timestamp,
                    stream: None,
                    picture,
                });
                // Re-queued with its info resolved: the stream is set now.
                if let Some(Unit::Au { stream, .. }) = self.units.front_mut() {
                    *stream = self.stream.clone().map(Ok);
                }
                return;
            }
            Some(current) if *current != info => {
                // New geometry: the old pictures come out first.
                if let Some(c) = self.codec.as_mut() {
                    c.send_eof();
                }
                self.collect(true);
                self.codec = None;
                self.results.push_back(Outcome::Change(info.clone()));
                self.stream = Some(info);
            }
            Some(_) => {}
        }
        let sent = self.sent;
        self.sent += 1;
        match self
            .decoder()
            .and_then(|c| c.send(&data, timestamp).map_err(|e| e.to_string()))
        {
            Ok(()) => self.in_flight.push_back((timestamp, sent)),
            Err(reason) => self.results.push_back(Outcome::Error { timestamp, reason }),
        }
        self.collect(false);
    }

    /// Takes the pictures libavcodec finished; access units that produced
    /// none (long overdue, or all of them at the end of the stream) are
    /// answered with an ERROR.
    fn collect(&mut self, at_end: bool) {
        let Some(codec) = self.codec.as_mut() else {
            return;
        };
        while let Some(result) = codec.receive() {
            match result {
                Ok(picture) => {
                    let ts = picture.timestamp;
                    if let Some(i) = self.in_flight.iter().position(|&(t, _)| t == ts) {
                        self.in_flight.remove(i);
                    }
                    if picture.corrupt {
                        self.results.push_back(Outcome::Error {
                            timestamp: ts,
                            reason: "picture decoded from damaged or missing data".into(),
                        });
                    } else {
                        self.results.push_back(Outcome::Picture(picture));
                    }
                }
                Err(e) => {
                    // The picture is unusable; its access unit is answered
                    // below when it is overdue.
                    log::warn!("VPU H.264: {e}");
                }
            }
        }
        let sent = self.sent;
        while let Some(&(timestamp, at)) = self.in_flight.front() {
            if !at_end && at + LOST_AFTER > sent {
                break;
            }
            self.in_flight.pop_front();
            self.results.push_back(Outcome::Error {
                timestamp,
                reason: "no picture came out of this access unit (damaged, or it references \
                         pictures the decoder does not have)"
                    .into(),
            });
        }
    }

    fn source_change(&mut self, info: StreamInfo, capture: &mut FwQueue, sink: &mut Sink<'_>) {
        if self.stream.is_some() {
            self.drain.owe_last(capture);
        }
        let pixfmt = self
            .preferred
            .filter(|p| CAPTURE_FORMATS.contains(p))
            .unwrap_or(CAPTURE_FORMATS[0]);
        let Some(mut f) = Format::raw(pixfmt, info.width, info.height) else {
            sink.post(Response::SessionError {
                text: format!(
                    "H.264 stream of {}x{} has no raw layout on this VPU",
                    info.width, info.height
                ),
            });
            self.drain.halt();
            return;
        };
        f.colorimetry = info.colorimetry;
        let min_buffers = info.dpb_frames + CAPTURE_MARGIN;
        announce_capture_format(capture, sink, f, &CAPTURE_FORMATS, min_buffers);
        self.stream = Some(info);
        self.drain.await_capture();
    }

    fn write(
        &mut self,
        result: Outcome,
        buf: QueuedBuffer,
        format: Option<&Format>,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) {
        let seq = self.drain.next_sequence();
        let picture = match result {
            Outcome::Picture(p) => p,
            Outcome::Error { timestamp, reason } => {
                let buf = QueuedBuffer { timestamp, ..buf };
                sink.done(
                    QueueKind::Capture,
                    &buf,
                    0,
                    BufferFlags::ERROR,
                    seq,
                    &reason,
                );
                return;
            }
            Outcome::Empty { timestamp } => {
                let buf = QueuedBuffer { timestamp, ..buf };
                sink.done(QueueKind::Capture, &buf, 0, BufferFlags::NONE, seq, "");
                return;
            }
            Outcome::Change(_) => return,
        };
        let buf = QueuedBuffer {
            timestamp: picture.timestamp,
            ..buf
        };
        let written = match format {
            None => Err("CAPTURE has no format".to_owned()),
            Some(f) => {
                let mut dst = buf.region.device_write();
                copy_picture(&picture, f, &mut dst)
            }
        };
        let delay = faults.frame_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match written {
            Ok(size) => {
                let kind = if picture.keyframe {
                    BufferFlags::KEYFRAME
                } else {
                    BufferFlags::PFRAME
                };
                sink.done(QueueKind::Capture, &buf, size, kind, seq, "");
            }
            Err(reason) => {
                sink.done(
                    QueueKind::Capture,
                    &buf,
                    0,
                    BufferFlags::ERROR,
                    seq,
                    &reason,
                );
            }
        }
    }

    fn finish_drain(&mut self, capture: &mut FwQueue, sink: &mut Sink<'_>) -> bool {
        if !self.drain.finish(capture, sink) {
            return false;
        }
        // Ready for a new stream after `Start`, from its next key frame.
        if let Some(c) = self.codec.as_mut() {
            c.flush();
        }
        self.eof_sent = false;
        true
    }
}

/// Copies a picture into a CAPTURE buffer laid out as `format`; returns the
/// bytes used.
fn copy_picture(picture: &Picture, format: &Format, dst: &mut [u8]) -> Result<usize, String> {
    if picture.width() != format.width || picture.height() != format.height {
        return Err(format!(
            "picture is {}x{}, CAPTURE is set up for {}x{}",
            picture.width(),
            picture.height(),
            format.width,
            format.height
        ));
    }
    if dst.len() < format.size {
        return Err(format!(
            "CAPTURE buffer holds {} bytes, the frame needs {}",
            dst.len(),
            format.size
        ));
    }
    let planes = &format.planes;
    let plane = |i: usize| {
        planes
            .get(i)
            .copied()
            .ok_or_else(|| format!("{} has no plane {i}", format.pixelformat))
    };
    let y = plane(0)?;
    for (r, row) in picture.rows(0).enumerate() {
        let at = y.offset + r * y.stride;
        dst[at..at + row.len()].copy_from_slice(row);
    }
    match format.pixelformat {
        PixelFormat::I420 | PixelFormat::Yv12 => {
            let (u, v) = if format.pixelformat == PixelFormat::I420 {
                (plane(1)?, plane(2)?)
            } else {
                (plane(2)?, plane(1)?)
            };
            for (p, layout) in [(1, u), (2, v)] {
                for (r, row) in picture.rows(p).enumerate() {
                    let at = layout.offset + r * layout.stride;
                    dst[at..at + row.len()].copy_from_slice(row);
                }
            }
        }
        PixelFormat::Nv12 | PixelFormat::Nv21 => {
            let uv = plane(1)?;
            let (first, second) = if format.pixelformat == PixelFormat::Nv12 {
                (1, 2)
            } else {
                (2, 1)
            };
            for (r, (a, b)) in picture.rows(first).zip(picture.rows(second)).enumerate() {
                let at = uv.offset + r * uv.stride;
                for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
                    dst[at + 2 * i] = a;
                    dst[at + 2 * i + 1] = b;
                }
            }
        }
        other => return Err(format!("the H.264 engine does not write {other}")),
    }
    Ok(format.size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpu::codec::fwht::test_pattern;
    use crate::vpu::codec::h264enc::{H264Encoder, H264Params};
    use crate::vpu::firmware::testing::Rig;

    /// Access units of `n` frames from libx264 (low latency: one unit per
    /// frame, in order, no reordering).
    fn stream(raw: &Format, n: u32) -> Vec<Vec<u8>> {
        let mut enc = H264Encoder::new(raw, H264Params::default()).expect("an encoder");
        let mut units = Vec::new();
        let mut src = vec![0; raw.size];
        for i in 0..n {
            test_pattern(raw, i, &mut src);
            enc.encode(&src, i64::from(i), false).expect("encode");
            while let Some(u) = enc.receive().expect("receive") {
                units.push(u.data().to_vec());
            }
        }
        units.extend(
            enc.flush()
                .expect("flush")
                .iter()
                .map(|u| u.data().to_vec()),
        );
        units
    }

    /// Once libavcodec's frame threads are all busy, an access unit's OUTPUT
    /// buffer and the CAPTURE buffer of the picture that comes out come back
    /// from one step, so one interrupt tells the host about both.
    #[test]
    fn an_access_unit_s_output_and_a_picture_come_back_from_one_step() {
        let raw = Format::raw(PixelFormat::I420, 320, 240).expect("a layout");
        let units = stream(&raw, 12);
        assert_eq!(units.len(), 12, "one access unit per frame");
        let mut rig = Rig::new();
        let mut dec = H264Dec::default();
        // The first access unit tells the format; no picture is written
        // before CAPTURE is set up.
        rig.queue_output(0, &units[0], 1 << 16);
        let (progress, done) = rig.step(&mut dec);
        assert!(progress);
        assert_eq!(done, vec![(QueueKind::Output, 0)]);
        rig.start_capture(&mut dec, PixelFormat::I420, (320, 240), 8, raw.size);
        // A picture that came out before CAPTURE was ready.
        let mut pictures = 0;
        loop {
            let (progress, done) = rig.step(&mut dec);
            if !progress {
                break;
            }
            assert!(done.iter().all(|d| d.0 == QueueKind::Capture), "{done:?}");
            pictures += done.len();
        }
        let threads = decoder_threads();
        for (i, unit) in units.iter().enumerate().skip(1) {
            rig.queue_output(i as u32, unit, 1 << 16);
            let (progress, done) = rig.step(&mut dec);
            assert!(progress);
            assert_eq!(
                done.first(),
                Some(&(QueueKind::Output, i as u32)),
                "unit {i}: {done:?}"
            );
            for &(queue, index) in done.iter().skip(1) {
                assert_eq!(queue, QueueKind::Capture, "unit {i}: {done:?}");
                rig.queue_capture(index, raw.size);
            }
            pictures += done.len().saturating_sub(1);
            if i >= threads {
                // Frame threads hold at most `threads - 1` pictures back.
                assert_eq!(done.len(), 2, "unit {i} ({threads} threads): {done:?}");
            }
        }
        assert!(
            pictures + threads >= units.len(),
            "{pictures} pictures of {} units",
            units.len()
        );
    }
}
