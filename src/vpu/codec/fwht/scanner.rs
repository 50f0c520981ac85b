//! Stateful-decoder framing: finds frames in a byte stream cut at arbitrary
//! points, as vicodec's decoder does (bytes before the magic are skipped; a
//! frame may span input buffers; a header whose payload would be larger than
//! a raw frame of its size is rejected).
//!
//! Memory stays bounded: while no magic is found only the last 7 bytes are
//! kept (a possible magic prefix), and once a header is accepted at most one
//! frame of at most [`FwhtHeader::max_payload_size`] bytes is buffered per
//! frame the caller has not yet taken.

use super::FwhtError;
use super::header::{FwhtHeader, HEADER_SIZE, MAGIC, parse_header};

/// Splits a pushed byte stream into complete FWHT frames.
#[derive(Debug, Default)]
pub struct FrameScanner {
    buf: Vec<u8>,
    /// Offset of the first byte not yet consumed.
    start: usize,
}

impl FrameScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
        self.skip_garbage();
    }

    /// Forgets everything buffered (flush).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Bytes currently buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame (header + payload), `None` when more input is
    /// needed, or an error for a frame that cannot be valid; after an error
    /// the scanner has skipped that frame's magic and resynchronises.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FwhtError>> {
        loop {
            self.skip_garbage();
            let pending = self.buf.get(self.start..).unwrap_or_default();
            if pending.len() < HEADER_SIZE {
                return None;
            }
            let header = match parse_header(pending) {
                Ok(h) => h,
                Err(e) => {
                    self.start += 1;
                    return Some(Err(e));
                }
            };
            if let Err(e) = check_size(&header) {
                self.start += 1;
                return Some(Err(e));
            }
            let len = header.frame_size();
            if pending.len() < len {
                return None;
            }
            let frame = pending.get(..len).map(<[u8]>::to_vec);
            self.start += len;
            if let Some(f) = frame {
                return Some(Ok(f));
            }
        }
    }

    /// Drops bytes before the next magic, keeping a possible magic prefix.
    fn skip_garbage(&mut self) {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        if pending.starts_with(&MAGIC) {
            return;
        }
        match pending.windows(MAGIC.len()).position(|w| w == MAGIC) {
            Some(pos) => self.start += pos,
            None => {
                // Keep the longest tail that is a prefix of the magic.
                let keep = (1..MAGIC.len())
                    .rev()
                    .find(|&n| pending.len() >= n && pending.ends_with(&MAGIC[..n]))
                    .unwrap_or(0);
                self.start += pending.len() - keep;
            }
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

fn check_size(h: &FwhtHeader) -> Result<(), FwhtError> {
    let max = h.max_payload_size();
    if h.payload_size as usize > max {
        return Err(FwhtError::PayloadTooLarge {
            size: h.payload_size,
            max,
            width: h.width,
            height: h.height,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m2m::Colorimetry;
    use crate::vpu::codec::fwht::PixelEncoding;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let h = FwhtHeader {
            version: 3,
            width: 16,
            height: 16,
            flags: 0xa0400,
            colorimetry: Colorimetry::default(),
            payload_size: payload.len() as u32,
            components: 3,
            pixel_encoding: Some(PixelEncoding::Yuv),
        };
        let mut f = h.to_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn split_frames_and_garbage() {
        let a = frame(&[1, 2, 3, 4]);
        let b = frame(&[9; 10]);
        let mut stream = vec![0x4f, 0x4f, 0x00, 0xff, 0x13];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&[0x4f, 0x4f, 0x4f]);
        stream.extend_from_slice(&b);
        for chunk in [1, 3, 7, 44, 1000] {
            let mut s = FrameScanner::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                s.push(c);
                while let Some(f) = s.next_frame() {
                    got.push(f.unwrap());
                }
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "chunk {chunk}");
        }
    }

    #[test]
    fn garbage_does_not_grow() {
        let mut s = FrameScanner::new();
        for _ in 0..1000 {
            s.push(&[0x12; 4096]);
            assert!(s.next_frame().is_none());
        }
        assert!(s.buffered() < 8);
        s.push(&[0x4f, 0x4f, 0x4f]);
        assert_eq!(s.buffered(), 3);
    }

    #[test]
    fn oversized_frame_is_rejected_then_resyncs() {
        let mut bad = frame(&[]);
        bad[43] = 0xff;
        bad[42] = 0xff; // size 65535 for a 16x16 frame
        let good = frame(&[5; 6]);
        let mut s = FrameScanner::new();
        s.push(&bad);
        s.push(&good);
        let e = s.next_frame().unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                FwhtError::PayloadTooLarge {
                    size: 65535,
                    max: 384,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(s.next_frame().unwrap().unwrap(), good);
        assert!(s.next_frame().is_none());
    }
}
