//! The stateful decoder engine of a session (dev-decoder.rst, emulated).
//!
//! OUTPUT buffers are unframed bitstream: their bytes go through a
//! [`FrameScanner`] that finds frame boundaries from the FWHT header, as the
//! kernel's stateful decoder does. The first frame (and any frame whose size
//! or pixel encoding differs) raises a source change: the session pauses until
//! the host streams CAPTURE on again with buffers of the new format. A drain
//! (`Stop`) decodes everything queued before it and returns one CAPTURE buffer
//! flagged LAST. A bad frame comes back as a CAPTURE buffer flagged ERROR with
//! the reason, and decoding resumes at the next key frame.

use std::collections::VecDeque;

use super::Faults;
use super::decode::{announce_capture_format, raw_format, set_output_format};
use super::drain::Drain;
use super::engine::CodecEngine;
use super::session::{FwQueue, QueuedBuffer, Sink};
use crate::m2m::{BufferFlags, Colorimetry, Format, PixelFormat, QueueKind};
use crate::vpu::codec::fwht::{self, FrameScanner, FwhtDecoder, FwhtHeader};

/// What the stream looks like, from its frame headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamInfo {
    width: u32,
    height: u32,
    formats: Vec<PixelFormat>,
    colorimetry: Colorimetry,
}

impl StreamInfo {
    fn of(h: &FwhtHeader) -> StreamInfo {
        StreamInfo {
            width: h.width,
            height: h.height,
            formats: fwht::capture_formats(h),
            colorimetry: h.colorimetry,
        }
    }
}

/// One unit of decoder work taken from the bitstream.
#[derive(Debug)]
enum Item {
    Frame {
        data: Vec<u8>,
        timestamp: u64,
    },
    /// Bytes that could not be framed; reported on a CAPTURE buffer.
    Bad {
        reason: String,
        timestamp: u64,
    },
}

pub(crate) struct Decoder {
    scanner: FrameScanner,
    codec: FwhtDecoder,
    items: VecDeque<Item>,
    /// Timestamp of the OUTPUT buffer in which the partial frame held by the
    /// scanner started.
    carry_timestamp: Option<u64>,
    stream: Option<StreamInfo>,
    /// The raw format the host asked for, used when the stream allows it.
    preferred: Option<PixelFormat>,
    drain: Drain,
    need_keyframe: bool,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            scanner: FrameScanner::new(),
            codec: FwhtDecoder::new(),
            items: VecDeque::new(),
            carry_timestamp: None,
            stream: None,
            preferred: None,
            drain: Drain::default(),
            need_keyframe: false,
        }
    }
}

impl CodecEngine for Decoder {
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
                    PixelFormat::Fwht,
                    pixfmt,
                    (width, height),
                    colorimetry,
                )?;
            }
            QueueKind::Capture => {
                if pixfmt.is_coded() {
                    return Err(format!("decoder CAPTURE takes a raw format, not {pixfmt}"));
                }
                let (w, h, cm) = match &self.stream {
                    Some(s) if !s.formats.contains(&pixfmt) => {
                        let allowed: Vec<String> =
                            s.formats.iter().map(|f| f.to_string()).collect();
                        return Err(format!(
                            "this stream decodes to {}, not {pixfmt}",
                            allowed.join(", ")
                        ));
                    }
                    Some(s) => (s.width, s.height, s.colorimetry),
                    None => (width, height, colorimetry),
                };
                capture.format = Some(raw_format(pixfmt, (w, h), cm)?);
                self.preferred = Some(pixfmt);
            }
        }
        Ok(())
    }

    /// The host's own CAPTURE layout for the current format (`format` holds
    /// it), instead of vicodec's: the codec writes every visible sample into
    /// it and leaves out the padding the layout lacks. A source change or a
    /// new format sets vicodec's layout again.
    fn set_layout(
        &mut self,
        capture: &mut FwQueue,
        queue: QueueKind,
        format: Format,
    ) -> Option<Result<(), String>> {
        if queue != QueueKind::Capture {
            return Some(Err(
                "the decoder's OUTPUT queue carries a bitstream, not planes".into(),
            ));
        }
        let checked = fwht::check_output_layout(&format).map_err(|e| e.to_string());
        if checked.is_ok() {
            capture.format = Some(format);
        }
        Some(checked)
    }

    fn flush(&mut self, queue: QueueKind) {
        if queue == QueueKind::Output {
            // Flush: forget all bitstream; resume at the next key frame.
            self.scanner.reset();
            self.items.clear();
            self.carry_timestamp = None;
            self.codec.reset();
            self.need_keyframe = self.stream.is_some();
        }
    }

    /// One unit of work; false when nothing more can happen now.
    ///
    /// Taking in an OUTPUT buffer that completes a frame and decoding that
    /// frame are one unit, as a kernel m2m job takes one OUTPUT and one
    /// CAPTURE buffer: both come back with one interrupt, so the host wakes
    /// once per frame rather than once per buffer.
    fn step(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) -> bool {
        let pending = self.items.len();
        let progress = self.step_once(output, capture, faults, sink);
        if progress && pending == 0 && !self.items.is_empty() {
            // Whatever must come first (the LAST of the old format before a
            // new one) still does: this is an ordinary step.
            self.step_once(output, capture, faults, sink);
        }
        progress
    }
}

impl Decoder {
    fn step_once(
        &mut self,
        output: &mut FwQueue,
        capture: &mut FwQueue,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) -> bool {
        if let Some(progress) = self.drain.send_owed_last(capture, sink) {
            return progress;
        }
        if !self.drain.is_running() {
            return false;
        }
        if let Some(item) = self.items.front() {
            if self.stream.is_none()
                && let Item::Bad { reason, .. } = item
            {
                // Nothing was decoded yet, so there is no CAPTURE buffer to
                // carry the error: the bytes are skipped, as before a header.
                log::warn!(
                    "VPU decoder session {}: skipping undecodable data: {reason}",
                    sink.id
                );
                self.items.pop_front();
                return true;
            }
            if self.announce(capture, sink) {
                return true;
            }
            if !capture.streaming {
                return false;
            }
            // The buffer queued last: with a consumer that hands frames
            // straight back, the same one or two buffers go round and stay
            // in the CPU's caches (and the others are never even touched),
            // instead of every buffer of the pool in turn. A stateful
            // decoder may fill its CAPTURE buffers in any order; clients go
            // by the index.
            let Some(buf) = capture.buffers.pop_back() else {
                return false;
            };
            let item = self.items.pop_front();
            if let Some(item) = item {
                self.decode(item, buf, capture.format.as_ref(), faults, sink);
            }
            return true;
        }
        // Only with every frame found so far decoded (the branch above
        // returns otherwise).
        if let Some(buf) = self.drain.take_output(output) {
            self.consume(&buf, capture, sink);
            return true;
        }
        if self.drain.drained() {
            return self.finish_drain(capture, sink);
        }
        false
    }
}

impl Decoder {
    fn source_change(&mut self, info: StreamInfo, capture: &mut FwQueue, sink: &mut Sink<'_>) {
        // Mid-stream: the last buffer of the old format is flagged LAST.
        if self.stream.is_some() {
            self.drain.owe_last(capture);
        }
        let pixfmt = self
            .preferred
            .filter(|p| info.formats.contains(p))
            .or_else(|| info.formats.first().copied());
        let format = pixfmt.and_then(|p| Format::raw(p, info.width, info.height));
        match format {
            Some(mut f) => {
                f.colorimetry = info.colorimetry;
                announce_capture_format(capture, sink, f, &info.formats, 1);
                self.stream = Some(info);
                self.drain.await_capture();
            }
            None => {
                // A header no raw format can hold: report it as a bad frame.
                let reason = format!(
                    "stream of {}x{} has no raw format this VPU can decode to",
                    info.width, info.height
                );
                if let Some(Item::Frame { timestamp, .. }) = self.items.pop_front() {
                    self.items.push_front(Item::Bad { reason, timestamp });
                }
            }
        }
    }

    fn consume(&mut self, buf: &QueuedBuffer, capture: &mut FwQueue, sink: &mut Sink<'_>) {
        {
            let data = buf.region.device_read();
            let used = buf.bytesused.min(data.len());
            self.scanner.push(&data[..used]);
        }
        // A frame that started in an earlier buffer keeps that buffer's
        // timestamp; every frame starting in this one gets this one's.
        let mut first = true;
        while let Some(next) = self.scanner.next_frame() {
            let timestamp = if first {
                self.carry_timestamp.unwrap_or(buf.timestamp)
            } else {
                buf.timestamp
            };
            first = false;
            self.items.push_back(match next {
                Ok(data) => Item::Frame { data, timestamp },
                Err(e) => Item::Bad {
                    reason: e.to_string(),
                    timestamp,
                },
            });
        }
        self.carry_timestamp = match (self.scanner.buffered() > 0, first) {
            (false, _) => None,
            (true, true) => Some(self.carry_timestamp.unwrap_or(buf.timestamp)),
            (true, false) => Some(buf.timestamp),
        };
        // The stream's format is announced before the OUTPUT buffer that
        // completed its first frame comes back: a client that sees all its
        // OUTPUT buffers back without a source change knows there was no frame.
        self.announce(capture, sink);
        sink.done(
            QueueKind::Output,
            buf,
            buf.bytesused,
            BufferFlags::NONE,
            0,
            "",
        );
    }

    /// Raises a source change if the next frame's format differs from the
    /// stream's; true if it did.
    fn announce(&mut self, capture: &mut FwQueue, sink: &mut Sink<'_>) -> bool {
        let Some(Item::Frame { data, .. }) = self.items.front() else {
            return false;
        };
        let Ok(header) = fwht::parse_header(data) else {
            return false;
        };
        let info = StreamInfo::of(&header);
        if self.stream.as_ref() == Some(&info) {
            return false;
        }
        self.source_change(info, capture, sink);
        true
    }

    fn decode(
        &mut self,
        item: Item,
        buf: QueuedBuffer,
        format: Option<&Format>,
        faults: &Faults,
        sink: &mut Sink<'_>,
    ) {
        let seq = self.drain.next_sequence();
        let (data, timestamp) = match item {
            Item::Frame { data, timestamp } => (data, timestamp),
            Item::Bad { reason, timestamp } => {
                self.need_keyframe = true;
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
        };
        let buf = QueuedBuffer { timestamp, ..buf };
        let Some(format) = format else {
            sink.done(
                QueueKind::Capture,
                &buf,
                0,
                BufferFlags::ERROR,
                seq,
                "CAPTURE has no format",
            );
            return;
        };
        if self.need_keyframe && !fwht::parse_header(&data).is_ok_and(|h| h.is_keyframe()) {
            let why = "P-frame skipped: decoding resumes at the next key frame";
            sink.done(QueueKind::Capture, &buf, 0, BufferFlags::ERROR, seq, why);
            return;
        }
        let result = {
            let mut dst = buf.region.device_write();
            if dst.len() < format.size {
                Err(format!(
                    "CAPTURE buffer {} holds {} bytes, the frame needs {}",
                    buf.index,
                    dst.len(),
                    format.size
                ))
            } else {
                self.codec
                    .decode(&data, format, &mut dst[..format.size])
                    .map_err(|e| e.to_string())
            }
        };
        let delay = faults.frame_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match result {
            Ok(decoded) => {
                self.need_keyframe = false;
                let kind = if decoded.keyframe {
                    BufferFlags::KEYFRAME
                } else {
                    BufferFlags::PFRAME
                };
                sink.done(QueueKind::Capture, &buf, format.size, kind, seq, "");
            }
            Err(reason) => {
                self.need_keyframe = true;
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
        let partial = self.scanner.buffered();
        if partial > 0 {
            self.scanner.reset();
            if self.stream.is_some() && capture.streaming {
                let timestamp = self.carry_timestamp.take().unwrap_or(0);
                self.items.push_back(Item::Bad {
                    reason: format!(
                        "truncated frame at end of stream: {partial} bytes of an incomplete frame"
                    ),
                    timestamp,
                });
                return true;
            }
        }
        self.drain.finish(capture, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpu::codec::fwht::{EncoderParams, FwhtEncoder, test_pattern};
    use crate::vpu::firmware::testing::Rig;

    /// A frame's OUTPUT buffer and the CAPTURE buffer it decodes into come
    /// back from one step, so one interrupt tells the host about both.
    #[test]
    fn a_frame_s_output_and_capture_buffers_come_back_from_one_step() {
        let raw = Format::raw(PixelFormat::I420, 64, 48).unwrap();
        let mut enc = FwhtEncoder::new(&raw, EncoderParams::default()).unwrap();
        let coded: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                let mut src = vec![0; raw.size];
                test_pattern(&raw, i, &mut src);
                let mut dst = vec![0; FwhtEncoder::max_frame_size(&raw)];
                let n = enc.encode(&src, &mut dst).unwrap().bytes;
                dst.truncate(n);
                dst
            })
            .collect();
        let mut rig = Rig::new();
        let mut dec = Decoder::default();
        // The first frame tells the format; nothing decodes before CAPTURE
        // is set up.
        rig.queue_output(0, &coded[0], 4096);
        let (progress, done) = rig.step(&mut dec);
        assert!(progress);
        assert_eq!(done, vec![(QueueKind::Output, 0)]);
        rig.start_capture(&mut dec, PixelFormat::I420, (64, 48), 2, raw.size);
        let (_, done) = rig.step(&mut dec);
        assert_eq!(done, vec![(QueueKind::Capture, 1)], "the held frame");
        // From now on, one step per frame returns both of its buffers.
        for (i, frame) in coded.iter().enumerate().skip(1) {
            rig.queue_output(i as u32, frame, 4096);
            let (progress, done) = rig.step(&mut dec);
            assert!(progress);
            assert_eq!(done.len(), 2, "frame {i}: {done:?}");
            assert_eq!(done[0], (QueueKind::Output, i as u32));
            assert_eq!(done[1].0, QueueKind::Capture);
            rig.queue_capture(done[1].1, raw.size);
        }
    }
}
