//! A blocking client of the contract: the V4L2 stateful codec sequences
//! (initialisation, source change, drain) for callers that feed data and
//! take results on one thread: examples, benchmarks, tests, command-line
//! tools. The GStreamer elements use the [`Session`] directly, with a
//! separate thread waiting for events.
//!
//! Frames come out through a callback that borrows the CAPTURE [`Buffer`];
//! the buffer is queued back to the device when the callback returns. A
//! callback that reads a cacheable buffer on the CPU must call
//! `Region::sync_for_cpu` first, as any CPU consumer must.

use std::collections::VecDeque;
use std::time::Duration;

use super::{
    Buffer, BufferFlags, Control, Event, Format, M2mError, Memory, QueueKind, Session, SourceChange,
};
use crate::mem::{Coherency, Owner};

/// How long one call waits for the device before giving up.
const WAIT: Duration = Duration::from_secs(5);

/// Common queue plumbing of both directions.
struct Queues {
    session: Box<dyn Session>,
    free_output: VecDeque<Buffer>,
    /// OUTPUT buffers in all, free or queued.
    output_count: usize,
    capture_format: Option<Format>,
    /// CAPTURE memory policy.
    coherency: Coherency,
    /// CAPTURE buffers beyond the device's minimum.
    extra_capture: u32,
    /// A source change waiting for the LAST buffer of the old format.
    reconfigure: Option<SourceChange>,
    draining: bool,
}

impl Queues {
    fn take_output(
        &mut self,
        on_frame: &mut dyn FnMut(&Buffer) -> Result<(), M2mError>,
    ) -> Result<Buffer, M2mError> {
        loop {
            if let Some(b) = self.free_output.pop_front() {
                return Ok(b);
            }
            if !self.pump(WAIT, on_frame)? {
                return Err(M2mError::Timeout(WAIT));
            }
        }
    }

    /// Handles one event; false if none came within `timeout`.
    fn pump(
        &mut self,
        timeout: Duration,
        on_frame: &mut dyn FnMut(&Buffer) -> Result<(), M2mError>,
    ) -> Result<bool, M2mError> {
        let Some(event) = self.session.wait_event(timeout)? else {
            return Ok(false);
        };
        match event {
            Event::BufferDone(b) if b.queue == QueueKind::Output => self.free_output.push_back(b),
            Event::BufferDone(b) => {
                let last = b.flags.contains(BufferFlags::LAST);
                if b.bytesused > 0 || b.flags.contains(BufferFlags::ERROR) {
                    on_frame(&b)?;
                }
                if last {
                    self.draining = false;
                    if let Some(sc) = self.reconfigure.take() {
                        self.setup_capture(&sc)?;
                    } else {
                        self.requeue_after_last(b)?;
                    }
                } else {
                    self.requeue(b)?;
                }
            }
            Event::SourceChange(sc) => {
                let streaming = self.capture_format.is_some();
                if streaming {
                    // Frames of the old format come first, up to LAST.
                    self.reconfigure = Some(sc);
                } else {
                    self.setup_capture(&sc)?;
                }
            }
        }
        Ok(true)
    }

    fn requeue(&self, mut b: Buffer) -> Result<(), M2mError> {
        b.bytesused = 0;
        b.flags = if b.region.owner() == Owner::Device {
            BufferFlags::NO_CACHE_CLEAN
        } else {
            BufferFlags::NONE
        };
        self.session.queue(b).map_err(|e| e.error)
    }

    /// The LAST buffer of a drain stays with the client until the session restarts.
    fn requeue_after_last(&mut self, b: Buffer) -> Result<(), M2mError> {
        self.session.start()?;
        self.requeue(b)
    }

    fn setup_capture(&mut self, sc: &SourceChange) -> Result<(), M2mError> {
        if self.capture_format.is_some() {
            self.session.stream_off(QueueKind::Capture)?;
        }
        let format = self.session.set_format(QueueKind::Capture, &sc.format)?;
        let count = sc.min_capture_buffers + self.extra_capture;
        let buffers = self.session.allocate_buffers(
            QueueKind::Capture,
            count,
            Memory::Allocate(self.coherency),
        )?;
        self.session.stream_on(QueueKind::Capture)?;
        for b in buffers {
            self.session.queue(b).map_err(|e| e.error)?;
        }
        self.capture_format = Some(format);
        Ok(())
    }

    fn finish(
        &mut self,
        on_frame: &mut dyn FnMut(&Buffer) -> Result<(), M2mError>,
    ) -> Result<(), M2mError> {
        self.session.drain()?;
        self.draining = true;
        while self.draining {
            // No CAPTURE queue yet and every OUTPUT buffer back: the device
            // announces a stream before returning the buffer that completed
            // its first frame, so there was none, and nothing to drain.
            let idle = self.capture_format.is_none()
                && self.reconfigure.is_none()
                && self.free_output.len() == self.output_count;
            if idle {
                break;
            }
            if !self.pump(WAIT, on_frame)? {
                return Err(M2mError::Timeout(WAIT));
            }
        }
        self.draining = false;
        Ok(())
    }
}

/// Decodes a bitstream fed in arbitrary chunks.
pub struct BlockingDecoder {
    q: Queues,
}

impl BlockingDecoder {
    /// Sets up a decoder session: OUTPUT gets `output_buffers` coherent
    /// bitstream buffers; CAPTURE is set up at the first source change with
    /// the device's minimum plus `extra_capture` buffers of `coherency`.
    pub fn new(
        session: Box<dyn Session>,
        coherency: Coherency,
        output_buffers: u32,
        extra_capture: u32,
    ) -> Result<BlockingDecoder, M2mError> {
        let codec = session.codec();
        session.set_format(QueueKind::Output, &Format::coded(codec, 0, 0))?;
        let free_output: VecDeque<Buffer> = session
            .allocate_buffers(
                QueueKind::Output,
                output_buffers.max(1),
                Memory::Allocate(Coherency::Coherent),
            )?
            .into();
        session.stream_on(QueueKind::Output)?;
        Ok(BlockingDecoder {
            q: Queues {
                session,
                output_count: free_output.len(),
                free_output,
                capture_format: None,
                coherency,
                extra_capture,
                reconfigure: None,
                draining: false,
            },
        })
    }

    /// The CAPTURE format in use (known after the first source change).
    pub fn format(&self) -> Option<&Format> {
        self.q.capture_format.as_ref()
    }

    pub fn session(&self) -> &dyn Session {
        self.q.session.as_ref()
    }

    /// Queues `data` (any split of the stream) with `timestamp`; decoded
    /// frames that are ready meanwhile go to `on_frame`.
    pub fn decode(
        &mut self,
        mut data: &[u8],
        timestamp: u64,
        on_frame: &mut dyn FnMut(&Buffer) -> Result<(), M2mError>,
    ) -> Result<(), M2mError> {
        while !data.is_empty() {
            let mut b = self.q.take_output(on_frame)?;
            let n = data.len().min(b.region.size());
            b.region.cpu_write()[..n].copy_from_slice(&data[..n]);
            b.bytesused = n;
            b.timestamp = timestamp;
            b.flags = BufferFlags::NONE;
            self.q.session.queue(b).map_err(|e| e.error)?;
            data = &data[n..];
        }
        while self.q.pump(Duration::ZERO, on_frame)? {}
        Ok(())
    }

    /// Drains: every frame still inside comes out, then the session is
    /// ready for more input.
    pub fn finish(
        &mut self,
        on_frame: &mut dyn FnMut(&Buffer) -> Result<(), M2mError>,
    ) -> Result<(), M2mError> {
        self.q.finish(on_frame)
    }

    /// Flush (a seek): drops all input and pending frames; decoding resumes
    /// at the next key frame fed in.
    pub fn flush(&mut self) -> Result<(), M2mError> {
        let returned = self.q.session.stream_off(QueueKind::Output)?;
        self.q.free_output.extend(returned);
        self.q.session.stream_on(QueueKind::Output)?;
        if self.q.capture_format.is_some() {
            let returned = self.q.session.stream_off(QueueKind::Capture)?;
            self.q.session.stream_on(QueueKind::Capture)?;
            for b in returned {
                self.q.requeue(b)?;
            }
        }
        Ok(())
    }
}

/// Encodes raw frames one at a time.
pub struct BlockingEncoder {
    q: Queues,
    raw: Format,
}

impl BlockingEncoder {
    /// Sets up an encoder session for frames of `raw` (see `Format::raw`).
    /// OUTPUT frames are cacheable (the CPU writes them, cleaned at queue
    /// time); coded CAPTURE buffers are coherent.
    pub fn new(
        session: Box<dyn Session>,
        raw: &Format,
        controls: &[Control],
        buffers: u32,
    ) -> Result<BlockingEncoder, M2mError> {
        let raw = session.set_format(QueueKind::Output, raw)?;
        for &c in controls {
            session.set_control(c)?;
        }
        let free_output: VecDeque<Buffer> = session
            .allocate_buffers(
                QueueKind::Output,
                buffers.max(1),
                Memory::Allocate(Coherency::Cacheable),
            )?
            .into();
        let coded = session.format(QueueKind::Capture)?;
        let captures = session.allocate_buffers(
            QueueKind::Capture,
            buffers.max(1),
            Memory::Allocate(Coherency::Coherent),
        )?;
        session.stream_on(QueueKind::Output)?;
        session.stream_on(QueueKind::Capture)?;
        for b in captures {
            session.queue(b).map_err(|e| e.error)?;
        }
        Ok(BlockingEncoder {
            q: Queues {
                session,
                output_count: free_output.len(),
                free_output,
                capture_format: Some(coded),
                coherency: Coherency::Coherent,
                extra_capture: 0,
                reconfigure: None,
                draining: false,
            },
            raw,
        })
    }

    /// The OUTPUT (raw) format in effect.
    pub fn format(&self) -> &Format {
        &self.raw
    }

    pub fn session(&self) -> &dyn Session {
        self.q.session.as_ref()
    }

    /// Queues one raw frame laid out per [`Self::format`]; coded frames that
    /// are ready meanwhile go to `on_frame`. `keyframe` forces a key frame.
    pub fn encode(
        &mut self,
        frame: &[u8],
        timestamp: u64,
        keyframe: bool,
        on_frame: &mut dyn FnMut(&Buffer) -> Result<(), M2mError>,
    ) -> Result<(), M2mError> {
        if frame.len() < self.raw.size {
            return Err(M2mError::InvalidFormat {
                queue: QueueKind::Output,
                reason: format!(
                    "frame of {} bytes, the format needs {}",
                    frame.len(),
                    self.raw.size
                ),
            });
        }
        let mut b = self.q.take_output(on_frame)?;
        if b.region.owner() == Owner::Device {
            b.region.sync_for_cpu()?;
        }
        b.region.cpu_write()[..self.raw.size].copy_from_slice(&frame[..self.raw.size]);
        b.bytesused = self.raw.size;
        b.timestamp = timestamp;
        b.flags = if keyframe {
            BufferFlags::KEYFRAME
        } else {
            BufferFlags::NONE
        };
        self.q.session.queue(b).map_err(|e| e.error)?;
        while self.q.pump(Duration::ZERO, on_frame)? {}
        Ok(())
    }

    /// Drains: every coded frame still inside comes out.
    pub fn finish(
        &mut self,
        on_frame: &mut dyn FnMut(&Buffer) -> Result<(), M2mError>,
    ) -> Result<(), M2mError> {
        self.q.finish(on_frame)
    }
}
