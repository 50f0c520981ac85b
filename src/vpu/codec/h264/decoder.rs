//! The H.264 decoding core: FFmpeg's libavcodec `h264` decoder through the
//! `ffmpeg-next` binding (the library GStreamer's `avdec_h264` wraps, so the
//! output is the same, bit for bit). Access units go in with a timestamp,
//! pictures come out in presentation order carrying the timestamp of the
//! access unit they were coded in (libavcodec reorders by POC).
//!
//! Frame threading: libavcodec decodes up to `threads` pictures in parallel
//! on its own threads, so `send` returns as soon as a worker took the access
//! unit; the firmware core is blocked for the parse of one access unit, not
//! the decode of one picture.

use ffmpeg_next as ff;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum H264Error {
    #[error("libavcodec has no H.264 decoder")]
    NoDecoder,
    #[error("opening libavcodec's H.264 decoder: {0}")]
    Open(ff::Error),
    #[error("libavcodec rejected the access unit: {0}")]
    Decode(ff::Error),
    #[error("decoded picture is {found}, this VPU outputs 8-bit 4:2:0 only")]
    Format { found: String },
}

/// A decoded picture, still in libavcodec's memory.
pub struct Picture {
    frame: ff::frame::Video,
    pub timestamp: u64,
    pub keyframe: bool,
    /// libavcodec flagged the picture as decoded from damaged data.
    pub corrupt: bool,
}

impl Picture {
    pub fn width(&self) -> u32 {
        self.frame.width()
    }
    pub fn height(&self) -> u32 {
        self.frame.height()
    }

    /// Plane `p` (0 = Y, 1 = Cb, 2 = Cr): its rows, each `width` bytes long.
    pub fn rows(&self, p: usize) -> impl Iterator<Item = &[u8]> {
        let (w, h) = if p == 0 {
            (self.width() as usize, self.height() as usize)
        } else {
            (
                self.width().div_ceil(2) as usize,
                self.height().div_ceil(2) as usize,
            )
        };
        let stride = self.frame.stride(p);
        let data = self.frame.data(p);
        (0..h).map(move |r| &data[r * stride..r * stride + w])
    }
}

pub struct H264Decoder {
    decoder: ff::decoder::Video,
    scratch: ff::frame::Video,
}

impl H264Decoder {
    /// Opens a decoder with `threads` frame threads (1: none).
    pub fn new(threads: usize) -> Result<H264Decoder, H264Error> {
        crate::vpu::codec::avlog::init();
        let codec = ff::decoder::find(ff::codec::Id::H264).ok_or(H264Error::NoDecoder)?;
        let mut ctx = ff::codec::context::Context::new_with_codec(codec);
        ctx.set_threading(ff::threading::Config {
            kind: if threads > 1 {
                ff::threading::Type::Frame
            } else {
                ff::threading::Type::None
            },
            count: threads.max(1),
            ..Default::default()
        });
        let decoder = ctx.decoder().video().map_err(H264Error::Open)?;
        Ok(H264Decoder {
            decoder,
            scratch: ff::frame::Video::empty(),
        })
    }

    /// Decodes one access unit (Annex-B). Pictures it completes are taken
    /// with [`receive`](Self::receive) before the next call.
    pub fn send(&mut self, au: &[u8], timestamp: u64) -> Result<(), H264Error> {
        let mut packet = ff::Packet::copy(au);
        packet.set_pts(Some(timestamp as i64));
        packet.set_dts(Some(timestamp as i64));
        self.decoder.send_packet(&packet).map_err(H264Error::Decode)
    }

    /// End of stream: every picture still held comes out of `receive`.
    pub fn send_eof(&mut self) {
        // Fails only if already draining, which is what was asked.
        let _ = self.decoder.send_eof();
    }

    /// The next picture in presentation order, if one is ready.
    pub fn receive(&mut self) -> Option<Result<Picture, H264Error>> {
        self.decoder.receive_frame(&mut self.scratch).ok()?;
        let frame = std::mem::replace(&mut self.scratch, ff::frame::Video::empty());
        let format = frame.format();
        if !matches!(
            format,
            ff::format::Pixel::YUV420P | ff::format::Pixel::YUVJ420P
        ) {
            return Some(Err(H264Error::Format {
                found: format!("{format:?}"),
            }));
        }
        let timestamp = frame.pts().unwrap_or(0) as u64;
        Some(Ok(Picture {
            keyframe: frame.is_key(),
            corrupt: frame.is_corrupt(),
            timestamp,
            frame,
        }))
    }

    /// Forgets every held picture and reference (a seek, or after EOS).
    pub fn flush(&mut self) {
        self.decoder.flush();
    }
}
