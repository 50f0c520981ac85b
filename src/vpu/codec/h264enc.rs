//! H.264 encoder of the emulated VPU: libx264 through FFmpeg's libavcodec
//! (the `ffmpeg-next` binding, against Debian 12's FFmpeg 5.1 and x264 0.164).
//!
//! # Why libx264 (and not the `openh264` crate)
//!
//! Measured on the 2-core build machine (2026-11-21) with the GStreamer peer
//! elements that wrap each library (`x264enc` = the same libx264 this engine
//! drives; `openh264enc` = Debian's libopenh264 2.3.1; commands in the README,
//! "Choosing the H.264 encoder library"):
//!
//! * Rate control: asked for 500 kbit/s on a scrolling 640x480 SMPTE clip,
//!   openh264 in `rate-control=bitrate` produced 1.39 Mbit/s (2.8x over) and
//!   logged `cmInitParaError`; x264 produced 0.56 Mbit/s. x264 also has what
//!   the element needs: ABR, CBR (VBV + `nal-hrd=cbr`), constant QP, qp
//!   min/max, bitrate changes while encoding (libavcodec reconfigures x264 on
//!   the next frame), forced IDR, SPS/PPS repeated on every IDR, and Baseline,
//!   Main and High profiles; openh264 encodes Constrained Baseline only.
//! * Quality at equal size (~1.4 Mbit/s, same clip, PSNR of the avdec_h264
//!   decode against the source): openh264 33.0 dB, x264 ultrafast 34.3 dB,
//!   x264 superfast 37.1 dB.
//! * Speed, CPU seconds for 150 frames less the source's (`videotestsrc` alone):
//!   1280x720 openh264 0.50 s, x264 ultrafast 0.56-0.65 s; 1920x1080 openh264
//!   1.67 s, x264 ultrafast 1.15-1.54 s: on par, within the noise.
//! * Build: libavcodec comes from Debian (`libavcodec-dev`; `ffmpeg-sys-next`
//!   runs bindgen against its headers), nothing is compiled from C++ sources.
//!
//! # Configuration
//!
//! A hardware encoder has one speed/quality point; this one is x264's
//! `ultrafast` preset, plus CABAC for Main and CABAC and the 8x8 transform
//! for High, the tools that make those profiles worth asking for. No
//! B-frames and no rate-control lookahead in either mode, so units leave in
//! input order. Two ways to thread it ([`H264Params::low_latency`]):
//!
//! * low latency (the default): `tune=zerolatency`, sliced threads (each
//!   frame is cut into slices coded in parallel): every frame in gives its
//!   access unit out at once, like a hardware encoder's one-in-one-out.
//! * throughput: frame threads, as `x264enc`'s default: several frames are
//!   coded at once, each by its own thread, so the codec holds frames back
//!   ([`H264Encoder::max_delayed_frames`]) and they come out later (all of
//!   them at the latest on [`H264Encoder::flush`]). One slice per frame. It
//!   pays where sliced threads leave cores idle; on a CPU-saturated machine
//!   it gains nothing (figures in the README, `benches/h264enc.rs`).
//!
//! x264 repeats SPS and PPS in front of every IDR (no global header) and
//! writes Annex-B start codes. Changing a parameter while encoding reopens
//! the encoder, so the next frame is an IDR (see [`H264Encoder::set_params`]).
//!
//! # Frames without a copy
//!
//! [`H264Encoder::encode_mapped`] codes a frame where it lies: libavcodec
//! gets a refcounted, read-only `AVFrame` whose planes point into a
//! [`FrameMapping`] of the buffer (the contract layout of `Format::raw`, as
//! is: YV12 is I420 with the chroma plane pointers swapped; NV12 and NV21
//! are libavcodec's own), see `sys::avframe`. x264 copies the picture into
//! its own frame in `x264_encoder_encode`, which takes any stride and any
//! plane address (its plane copies read unaligned and copy the last row
//! with `memcpy` so as not to read past the plane), and libavcodec puts no
//! alignment requirement on an encoder's input: so every layout of the four
//! formats is lent, odd chroma strides included (322x242 I420: 161), and
//! the coded stream is byte-identical to the copy's (tested). The picture is
//! then copied once per frame, by x264, as with `x264enc`.
//!
//! libavcodec takes a reference to a sent frame (`av_frame_ref`; a frame
//! without buffers would be copied) and drops it once the codec took the
//! picture: inside `avcodec_send_frame` when the previous unit was received
//! (its one-packet slot is free), else on the next `receive_packet` that
//! finds the slot empty, or when the encoder is closed. The [`Lease`]
//! `encode_mapped` returns says when; the caller keeps the buffer unchanged
//! until then. [`H264Encoder::flush`] first codes a frame libavcodec still
//! holds (with it inside, the end of stream would be refused).
//!
//! [`H264Encoder::encode`] is the copy path, for a frame in plain memory:
//! the firmware uses it only when an OUTPUT buffer cannot be mapped
//! (`mmap` refused), and the tests as the reference the lent frames must
//! match.

use std::fmt;
use std::sync::Arc;

use ff::util::format::Pixel;
use ffmpeg_next as ff;

use crate::m2m::{BitrateMode, Format, H264Level, H264Profile, PixelFormat};
pub use crate::sys::{FrameMapping, Lease};
use crate::sys::{LendError, LentFrame, PlaneView};

/// QP range of H.264 (8-bit).
pub const QP_RANGE: (u32, u32) = (0, 51);
/// GOP sizes the encoder takes (x264's keyint).
pub const GOP_RANGE: (u32, u32) = (1, 1 << 16);

/// What the encoder is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Params {
    /// Target bitrate in bits per second (VBR and CBR).
    pub bitrate: u32,
    pub mode: BitrateMode,
    /// Maximum distance between IDR frames, in frames.
    pub gop_size: u32,
    /// Constant-QP mode: the QP of I and P frames.
    pub i_frame_qp: u32,
    pub p_frame_qp: u32,
    pub min_qp: u32,
    pub max_qp: u32,
    pub profile: H264Profile,
    /// `None`: the lowest level the stream fits.
    pub level: Option<H264Level>,
    /// Frames per second as num/den.
    pub framerate: (u32, u32),
    /// `true`: sliced threads, no frame held back; `false`: frame threads,
    /// the codec holds [`delayed_frames`] frames (see the module doc).
    pub low_latency: bool,
}

impl Default for H264Params {
    fn default() -> H264Params {
        H264Params {
            bitrate: 2_000_000,
            mode: BitrateMode::Vbr,
            gop_size: 30,
            i_frame_qp: 23,
            p_frame_qp: 23,
            min_qp: 0,
            max_qp: 51,
            profile: H264Profile::ConstrainedBaseline,
            level: None,
            framerate: (30, 1),
            low_latency: true,
        }
    }
}

/// The frame threads x264 would pick itself for a `height`-line picture
/// (`X264_THREADS_AUTO` in `x264_validate_parameters`, x264 0.164): 1.5 per
/// CPU, at most one per two macroblock rows. Set explicitly, so the delay
/// it implies is known before the first frame (see [`delayed_frames`]).
fn frame_threads(height: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let by_rows = (height.div_ceil(16) / 2).max(1);
    (cpus * 3 / 2).clamp(1, MAX_FRAME_THREADS).min(by_rows)
}

/// Most frame threads the throughput mode uses (x264 allows 128; beyond a
/// few per CPU they only add delay).
const MAX_FRAME_THREADS: u32 = 16;

/// The frames the codec holds before the unit of a frame comes out, for a
/// `height`-line picture: what `x264_encoder_maximum_delayed_frames` returns
/// (x264's `frames.i_delay`), derived from the parameters this module sets,
/// because libavcodec does not expose x264's handle to ask it. x264 computes
/// `max(bframes, rc_lookahead) + (frame threads - 1) + sync_lookahead +
/// vfr_input`; here bframes = rc_lookahead = 0 (ultrafast), vfr_input = 0
/// (`force-cfr`, as zerolatency does), and sync_lookahead is x264's auto
/// value, `bframes + 1` = 1 with frame threads, 0 with one thread. So:
/// 0 with low latency (sliced threads), else `threads - 1 + (threads > 1)`.
/// `tests` checks it against what the codec really holds.
pub fn delayed_frames(params: &H264Params, height: u32) -> u32 {
    if params.low_latency {
        return 0;
    }
    let threads = frame_threads(height);
    threads - 1 + u32::from(threads > 1)
}

impl H264Params {
    /// Checks ranges and consistency; the message names the offending value.
    pub fn validate(&self) -> Result<(), H264Error> {
        let bad = |s: String| Err(H264Error::Params(s));
        let (qmin, qmax) = QP_RANGE;
        for (name, v) in [
            ("i-frame QP", self.i_frame_qp),
            ("p-frame QP", self.p_frame_qp),
            ("min QP", self.min_qp),
            ("max QP", self.max_qp),
        ] {
            if !(qmin..=qmax).contains(&v) {
                return bad(format!("{name} must be {qmin}..={qmax}, got {v}"));
            }
        }
        if self.min_qp > self.max_qp {
            return bad(format!(
                "min QP {} is above max QP {}",
                self.min_qp, self.max_qp
            ));
        }
        if !(GOP_RANGE.0..=GOP_RANGE.1).contains(&self.gop_size) {
            return bad(format!(
                "GOP size must be {}..={}, got {}",
                GOP_RANGE.0, GOP_RANGE.1, self.gop_size
            ));
        }
        if self.mode != BitrateMode::ConstantQp && self.bitrate < 1000 {
            return bad(format!(
                "a bitrate of {} bit/s is below the 1 kbit/s minimum",
                self.bitrate
            ));
        }
        if self.framerate.0 == 0 || self.framerate.1 == 0 {
            return bad(format!(
                "frame rate {}/{} is not a rate",
                self.framerate.0, self.framerate.1
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum H264Error {
    #[error("invalid H.264 encoder parameters: {0}")]
    Params(String),
    #[error("the H.264 encoder takes I420, YV12, NV12 or NV21, not {0}")]
    Format(PixelFormat),
    #[error("H.264 4:2:0 needs an even frame size, got {0}x{1}")]
    OddSize(u32, u32),
    #[error("{0}")]
    Level(String),
    #[error("FFmpeg has no libx264 encoder (install libavcodec59 built with x264)")]
    NoX264,
    #[error("the H.264 encoder is closed")]
    Closed,
    #[error("libx264 {what}: {source}")]
    Library {
        what: &'static str,
        #[source]
        source: ff::Error,
    },
    #[error("the frame buffer holds {found} bytes, a {width}x{height} {format} frame needs {need}")]
    ShortFrame {
        found: usize,
        need: usize,
        width: u32,
        height: u32,
        format: PixelFormat,
    },
    #[error("cannot lend the frame buffer to libavcodec: {0}")]
    Lend(#[from] LendError),
}

fn lib(what: &'static str) -> impl FnOnce(ff::Error) -> H264Error {
    move |source| H264Error::Library { what, source }
}

/// One coded access unit (Annex-B, SPS/PPS in front of an IDR).
pub struct AccessUnit {
    packet: ff::Packet,
}

impl AccessUnit {
    pub fn data(&self) -> &[u8] {
        self.packet.data().unwrap_or(&[])
    }
    /// The presentation counter of the frame it codes, as given to `encode`.
    pub fn pts(&self) -> i64 {
        self.packet.pts().unwrap_or(-1)
    }
    pub fn keyframe(&self) -> bool {
        self.packet.is_key()
    }
}

impl fmt::Debug for AccessUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessUnit")
            .field("bytes", &self.data().len())
            .field("pts", &self.pts())
            .field("keyframe", &self.keyframe())
            .finish()
    }
}

/// The libavcodec pixel format for a contract format.
fn pixel(format: PixelFormat) -> Option<Pixel> {
    Some(match format {
        PixelFormat::I420 | PixelFormat::Yv12 => Pixel::YUV420P,
        PixelFormat::Nv12 => Pixel::NV12,
        PixelFormat::Nv21 => Pixel::NV21,
        _ => return None,
    })
}

/// True for the raw formats the encoder takes.
pub fn supports(format: PixelFormat) -> bool {
    pixel(format).is_some()
}

/// An open libx264 encoder for one raw format and size.
pub struct H264Encoder {
    /// `None` after a flush or a discard: the next frame reopens it.
    encoder: Option<ff::encoder::Video>,
    frame: ff::frame::Video,
    raw: Format,
    params: H264Params,
    /// A frame was sent and `receive` has not yet said "nothing more".
    unreceived: bool,
    /// Frames sent and not yet received as units.
    inside: u32,
    /// The most frames the codec held at once since it was opened.
    max_inside: u32,
}

impl fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H264Encoder")
            .field("raw", &self.raw)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The peak video bitrate the rate control lets the stream reach, bit/s
/// (the VBV maximum rate it gives x264); none under constant QP.
fn peak_bitrate(p: &H264Params) -> Option<u64> {
    match p.mode {
        BitrateMode::Vbr => Some(vbr_peak(p.bitrate) as u64),
        BitrateMode::Cbr => Some(u64::from(p.bitrate)),
        BitrateMode::ConstantQp => None,
    }
}

/// The VBV peak rate of VBR: twice the average.
fn vbr_peak(bitrate: u32) -> usize {
    bitrate as usize * 2
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

fn open(raw: &Format, p: &H264Params) -> Result<ff::encoder::Video, H264Error> {
    super::avlog::init();
    let codec = ff::encoder::find_by_name("libx264").ok_or(H264Error::NoX264)?;
    let ctx = ff::codec::context::Context::new_with_codec(codec);
    let mut enc = ctx.encoder().video().map_err(lib("setup"))?;
    let pix = pixel(raw.pixelformat).ok_or(H264Error::Format(raw.pixelformat))?;
    enc.set_width(raw.width);
    enc.set_height(raw.height);
    enc.set_format(pix);
    let g = gcd(p.framerate.0, p.framerate.1);
    let (num, den) = (p.framerate.0 / g, p.framerate.1 / g);
    let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    enc.set_time_base(ff::Rational(to_i32(den), to_i32(num)));
    enc.set_frame_rate(Some(ff::Rational(to_i32(num), to_i32(den))));
    enc.set_gop(p.gop_size);
    enc.set_max_b_frames(0);
    enc.set_qmin(to_i32(p.min_qp));
    enc.set_qmax(to_i32(p.max_qp));

    let mut opts = ff::Dictionary::new();
    opts.set("preset", "ultrafast");
    let mut x264 = vec![format!("keyint-min={}", p.gop_size.min(25))];
    if p.low_latency {
        opts.set("tune", "zerolatency");
        opts.set("threads", "0");
    } else {
        // Frame threads (no tune), with the count x264 would pick, set so
        // that `delayed_frames` knows it. `force-cfr`: timestamps are frame
        // counters, so x264's variable-frame-rate input handling would
        // only add a frame of delay (zerolatency turns it off too).
        opts.set("threads", &frame_threads(raw.height).to_string());
        x264.push("force-cfr=1".into());
    }
    opts.set("forced-idr", "1");
    // Frames the source marks as key frames are IDRs only when asked.
    opts.set("sc_threshold", "0");
    opts.set(
        "profile",
        match p.profile {
            H264Profile::Baseline | H264Profile::ConstrainedBaseline => "baseline",
            H264Profile::Main => "main",
            H264Profile::High => "high",
        },
    );
    let level = match p.level {
        Some(l) => l,
        None => H264Level::lowest_fitting_rate(
            raw.width,
            raw.height,
            p.framerate,
            peak_bitrate(p).map(|b| (b, p.profile)),
        )
        .ok_or_else(|| {
            H264Error::Level(format!(
                "{}x{} at {}/{} fps exceeds every H.264 level up to 5.2",
                raw.width, raw.height, p.framerate.0, p.framerate.1
            ))
        })?,
    };
    if let Some(why) = level.check(raw.width, raw.height, p.framerate) {
        return Err(H264Error::Level(why));
    }
    opts.set("level", &level.idc.to_string());
    match p.profile {
        H264Profile::Baseline | H264Profile::ConstrainedBaseline => {}
        H264Profile::Main => x264.push("cabac=1".into()),
        H264Profile::High => {
            x264.push("cabac=1".into());
            x264.push("8x8dct=1".into());
        }
    }
    match p.mode {
        BitrateMode::Vbr => {
            // Average `bitrate`, peaks up to twice it over a one-second
            // buffer. x264 takes a bitrate change in place only with a VBV.
            enc.set_bit_rate(p.bitrate as usize);
            enc.set_max_bit_rate(vbr_peak(p.bitrate));
            opts.set("bufsize", &p.bitrate.to_string());
        }
        BitrateMode::Cbr => {
            enc.set_bit_rate(p.bitrate as usize);
            enc.set_max_bit_rate(p.bitrate as usize);
            // A one-second buffer, and filler so the rate really is constant.
            opts.set("bufsize", &p.bitrate.to_string());
            x264.push("nal-hrd=cbr".into());
            x264.push("filler=1".into());
        }
        BitrateMode::ConstantQp => {
            opts.set("qp", &p.p_frame_qp.to_string());
            // x264 derives the I-frame QP from the P-frame QP by ipratio.
            let ipratio = 2f64.powf((f64::from(p.p_frame_qp) - f64::from(p.i_frame_qp)) / 6.0);
            x264.push(format!("ipratio={ipratio:.4}"));
        }
    }
    opts.set("x264-params", &x264.join(":"));
    enc.open_with(opts).map_err(lib("open"))
}

impl H264Encoder {
    /// Opens an encoder for frames laid out as `raw` (a contract layout).
    pub fn new(raw: &Format, params: H264Params) -> Result<H264Encoder, H264Error> {
        params.validate()?;
        let pix = pixel(raw.pixelformat).ok_or(H264Error::Format(raw.pixelformat))?;
        if !raw.width.is_multiple_of(2) || !raw.height.is_multiple_of(2) {
            return Err(H264Error::OddSize(raw.width, raw.height));
        }
        let encoder = open(raw, &params)?;
        Ok(H264Encoder {
            encoder: Some(encoder),
            frame: ff::frame::Video::new(pix, raw.width, raw.height),
            raw: raw.clone(),
            params,
            unreceived: false,
            inside: 0,
            max_inside: 0,
        })
    }

    pub fn params(&self) -> &H264Params {
        &self.params
    }

    /// The most frames the codec holds before a frame's unit comes out
    /// (0: one in, one out), for the current parameters: see
    /// [`delayed_frames`].
    pub fn max_delayed_frames(&self) -> u32 {
        delayed_frames(&self.params, self.raw.height)
    }

    /// The most frames the codec really held at once (sent, not yet
    /// received) since it was last opened: at most
    /// [`Self::max_delayed_frames`] when units are received after each
    /// frame.
    pub fn held_most(&self) -> u32 {
        self.max_inside
    }

    /// Applies new parameters from the next frame: the encoder is reopened,
    /// so that frame is an IDR. (libavcodec can hand x264 a new bitrate in
    /// place, but x264's ABR averages over the whole stream and its VBV keeps
    /// the buffer size it was opened with: measured on a 320x240 clip, going
    /// from 2000 to 200 kbit/s in place left the next second at 1850 kbit/s.
    /// A reopened encoder meets the new rate from its first GOP.) The units
    /// still inside the old encoder come back here first (none with
    /// `zerolatency`).
    pub fn set_params(&mut self, params: H264Params) -> Result<Vec<AccessUnit>, H264Error> {
        params.validate()?;
        if params == self.params {
            return Ok(Vec::new());
        }
        if let Some(why) = params
            .level
            .and_then(|l| l.check(self.raw.width, self.raw.height, params.framerate))
        {
            return Err(H264Error::Level(why));
        }
        let rest = self.flush()?;
        self.params = params;
        // The next `encode` opens the encoder with the new parameters.
        Ok(rest)
    }

    /// Opens the encoder if a flush or discard closed it.
    fn reopen(&mut self) -> Result<(), H264Error> {
        if self.encoder.is_none() {
            self.encoder = Some(open(&self.raw, &self.params)?);
            self.max_inside = 0;
        }
        Ok(())
    }

    /// For each libavcodec plane of the raw format: (contract plane, rows,
    /// bytes per row). YV12 is I420 with the chroma planes swapped.
    fn planes(&self) -> Result<Vec<(usize, usize, usize)>, H264Error> {
        let (w, h) = (self.raw.width as usize, self.raw.height as usize);
        Ok(match self.raw.pixelformat {
            PixelFormat::I420 => vec![(0, h, w), (1, h / 2, w / 2), (2, h / 2, w / 2)],
            PixelFormat::Yv12 => vec![(0, h, w), (2, h / 2, w / 2), (1, h / 2, w / 2)],
            PixelFormat::Nv12 | PixelFormat::Nv21 => vec![(0, h, w), (1, h / 2, w)],
            other => return Err(H264Error::Format(other)),
        })
    }

    fn short_frame(&self, found: usize) -> H264Error {
        H264Error::ShortFrame {
            found,
            need: self.raw.size,
            width: self.raw.width,
            height: self.raw.height,
            format: self.raw.pixelformat,
        }
    }

    /// Sends `frame` (with its pts and picture type) to `encoder`, the
    /// encoder of `self`: a function of the field, so the copy path can
    /// send `self.frame`.
    fn send(encoder: &mut Option<ff::encoder::Video>, frame: &ff::Frame) -> Result<(), H264Error> {
        let encoder = encoder.as_mut().ok_or(H264Error::Closed)?;
        encoder.send_frame(frame).map_err(lib("encode"))
    }

    /// Books a frame sent.
    fn sent(&mut self) {
        self.unreceived = true;
        // The unit of the frame just sent is not out yet either.
        self.inside += 1;
    }

    fn kind(idr: bool) -> ff::picture::Type {
        if idr {
            ff::picture::Type::I
        } else {
            ff::picture::Type::None
        }
    }

    /// Codes the frame in `mapping` (laid out as the raw format from byte
    /// 0) without copying it: libavcodec gets a read-only frame whose planes
    /// point into the mapping ([`LentFrame`]). Its unit, and any the
    /// encoder held back, come from [`Self::receive`].
    ///
    /// The returned lease says when libavcodec let go of the memory; until
    /// then the bytes must not change. With libx264 that is inside this
    /// call (x264 copies the picture into its own frame at once) if the
    /// previous units were received up to "nothing more" (`receive` gave
    /// `None`), else during the next `receive`, `flush` or `discard`
    /// (libavcodec keeps the frame until it can hand it to the codec). On
    /// an error the lease is released when this returns.
    pub fn encode_mapped(
        &mut self,
        mapping: &Arc<FrameMapping>,
        pts: i64,
        idr: bool,
    ) -> Result<Lease, H264Error> {
        self.reopen()?;
        if mapping.len() < self.raw.size {
            return Err(self.short_frame(mapping.len()));
        }
        let planes: Vec<PlaneView> = self
            .planes()?
            .into_iter()
            .map(|(src, rows, row_bytes)| PlaneView {
                offset: self.raw.planes[src].offset,
                stride: self.raw.planes[src].stride,
                rows,
                row_bytes,
            })
            .collect();
        let pix = pixel(self.raw.pixelformat).ok_or(H264Error::Format(self.raw.pixelformat))?;
        let (mut frame, lease) =
            LentFrame::new(mapping, pix, self.raw.width, self.raw.height, &planes)?;
        frame.set_pts(Some(pts));
        frame.set_kind(Self::kind(idr));
        Self::send(&mut self.encoder, frame.frame())?;
        self.sent();
        // Our reference goes here; libavcodec holds its own until the codec
        // took the picture.
        drop(frame);
        Ok(lease)
    }

    /// Codes one frame read from `input` (laid out as the raw format) by
    /// copying it into a libavcodec frame first: for input that is not in
    /// a mappable buffer. Its unit, and any the encoder held back, come
    /// from [`Self::receive`].
    pub fn encode(&mut self, input: &[u8], pts: i64, idr: bool) -> Result<(), H264Error> {
        self.reopen()?;
        if input.len() < self.raw.size {
            return Err(self.short_frame(input.len()));
        }
        let planes = self.planes()?;
        // libavcodec hands a sent frame to x264 (which copies the picture)
        // at once, unless the previous unit was not received yet: then it
        // still holds a reference to our frame, so write into a new one.
        if std::mem::take(&mut self.unreceived) {
            self.frame =
                ff::frame::Video::new(self.frame.format(), self.raw.width, self.raw.height);
        }
        for (dst_index, &(src_index, rows, bytes)) in planes.iter().enumerate() {
            let src = self.raw.planes[src_index];
            let dst_stride = self.frame.stride(dst_index);
            let dst = self.frame.data_mut(dst_index);
            for row in 0..rows {
                let s = src.offset + row * src.stride;
                let d = row * dst_stride;
                dst[d..d + bytes].copy_from_slice(&input[s..s + bytes]);
            }
        }
        self.frame.set_pts(Some(pts));
        self.frame.set_kind(Self::kind(idr));
        Self::send(&mut self.encoder, &self.frame)?;
        self.sent();
        Ok(())
    }

    /// The next coded unit, if the encoder has one now.
    pub fn receive(&mut self) -> Result<Option<AccessUnit>, H264Error> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(None);
        };
        let mut packet = ff::Packet::empty();
        match encoder.receive_packet(&mut packet) {
            Ok(()) => {
                self.inside = self.inside.saturating_sub(1);
                Ok(Some(AccessUnit { packet }))
            }
            Err(ff::Error::Other { errno }) if errno == ff::error::EAGAIN => {
                // Whatever is still inside now is held back by the codec.
                self.max_inside = self.max_inside.max(self.inside);
                self.unreceived = false;
                Ok(None)
            }
            Err(ff::Error::Eof) => Ok(None),
            Err(e) => Err(lib("receive")(e)),
        }
    }

    /// Ends the stream: every unit still inside comes out. The next frame
    /// starts a new stream (reopened encoder, IDR first).
    pub fn flush(&mut self) -> Result<Vec<AccessUnit>, H264Error> {
        let Some(mut encoder) = self.encoder.take() else {
            return Ok(Vec::new());
        };
        self.unreceived = false;
        self.inside = 0;
        // A frame libavcodec still holds (the unit before it was not
        // received) goes to the codec first: with it inside, the end of
        // stream would be refused (EAGAIN).
        let mut units = Vec::new();
        loop {
            let mut packet = ff::Packet::empty();
            match encoder.receive_packet(&mut packet) {
                Ok(()) => units.push(AccessUnit { packet }),
                Err(ff::Error::Other { errno }) if errno == ff::error::EAGAIN => break,
                Err(ff::Error::Eof) => break,
                Err(e) => return Err(lib("flush")(e)),
            }
        }
        encoder.send_eof().map_err(lib("flush"))?;
        loop {
            let mut packet = ff::Packet::empty();
            match encoder.receive_packet(&mut packet) {
                Ok(()) => units.push(AccessUnit { packet }),
                Err(ff::Error::Eof) => break,
                Err(e) => return Err(lib("flush")(e)),
            }
        }
        Ok(units)
    }

    /// Drops the frames inside the codec without coding them (a flush or
    /// seek of the stream): the encoder is closed, and the next frame
    /// starts a new stream (reopened encoder, IDR first).
    pub fn discard(&mut self) {
        self.encoder = None;
        self.unreceived = false;
        self.inside = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moving gradient, so that frames differ.
    fn frame(raw: &Format, n: usize) -> Vec<u8> {
        (0..raw.size).map(|i| ((i + 7 * n) % 251) as u8).collect()
    }

    /// Codes `n` frames, taking the units out after each as the firmware
    /// does, then flushes; returns the units' pts and key flags.
    fn code(
        enc: &mut H264Encoder,
        raw: &Format,
        n: usize,
        idr_at: Option<usize>,
    ) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        for i in 0..n {
            enc.encode(&frame(raw, i), i as i64, idr_at == Some(i))
                .unwrap();
            while let Some(u) = enc.receive().unwrap() {
                out.push((u.pts(), u.keyframe()));
            }
        }
        out.extend(enc.flush().unwrap().iter().map(|u| (u.pts(), u.keyframe())));
        out
    }

    fn raw() -> Format {
        Format::raw(PixelFormat::I420, 320, 240).unwrap()
    }

    #[test]
    fn the_derived_delay_is_what_the_codec_holds() {
        let raw = raw();
        for low_latency in [true, false] {
            let params = H264Params {
                low_latency,
                ..H264Params::default()
            };
            let mut enc = H264Encoder::new(&raw, params).unwrap();
            let units = code(&mut enc, &raw, 20, None);
            let pts: Vec<i64> = units.iter().map(|u| u.0).collect();
            assert_eq!(pts, (0..20).collect::<Vec<_>>(), "every frame, in order");
            // x264 holds exactly its maximum once enough frames came in.
            assert_eq!(
                enc.held_most(),
                enc.max_delayed_frames(),
                "low_latency={low_latency}"
            );
            if low_latency {
                assert_eq!(enc.max_delayed_frames(), 0);
            }
        }
    }

    #[test]
    fn throughput_mode_holds_frames_on_several_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let params = H264Params {
            low_latency: false,
            ..H264Params::default()
        };
        let d = delayed_frames(&params, 720);
        if cpus > 1 {
            // cpus * 1.5 frame threads, one more frame for sync lookahead.
            assert_eq!(d, cpus * 3 / 2, "{cpus} CPUs");
        } else {
            assert_eq!(d, 0, "one CPU: one thread, nothing held");
        }
        // Tiny pictures get fewer threads (one per two macroblock rows).
        assert!(delayed_frames(&params, 32) <= 1);
    }

    #[test]
    fn discard_drops_held_frames_and_the_next_stream_starts_with_an_idr() {
        let raw = raw();
        let params = H264Params {
            low_latency: false,
            ..H264Params::default()
        };
        let mut enc = H264Encoder::new(&raw, params).unwrap();
        let held = enc.max_delayed_frames() as usize;
        let mut first = Vec::new();
        for i in 0..held {
            enc.encode(&frame(&raw, i), i as i64, false).unwrap();
            while let Some(u) = enc.receive().unwrap() {
                first.push(u.pts());
            }
        }
        assert!(first.is_empty(), "the codec held the first {held} frames");
        enc.discard();
        let units = code(&mut enc, &raw, 3, None);
        assert_eq!(
            units.iter().map(|u| u.0).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "only the frames after the discard"
        );
        assert!(units[0].1, "a new stream starts with an IDR");
    }

    #[test]
    fn a_forced_idr_lands_on_its_frame_with_frame_threads() {
        let raw = raw();
        let params = H264Params {
            low_latency: false,
            ..H264Params::default()
        };
        let mut enc = H264Encoder::new(&raw, params).unwrap();
        let units = code(&mut enc, &raw, 12, Some(7));
        let keys: Vec<i64> = units.iter().filter(|u| u.1).map(|u| u.0).collect();
        assert_eq!(keys, vec![0, 7]);
    }

    /// `bytes` in a memfd, and the read-only mapping the engine codes from.
    fn mapped(bytes: &[u8]) -> Arc<FrameMapping> {
        use std::os::fd::AsFd;
        let fd = crate::sys::memfd_sealed("h264enc-test", bytes.len()).unwrap();
        let mut rw = crate::sys::Mapping::map(fd.as_fd(), bytes.len()).unwrap();
        rw.as_mut_slice().copy_from_slice(bytes);
        FrameMapping::map(fd.as_fd(), bytes.len()).unwrap()
    }

    /// What one operation on both encoders gave: (pts, key, bytes) of each
    /// unit.
    type Units = Vec<(i64, bool, Vec<u8>)>;

    fn units(list: impl IntoIterator<Item = AccessUnit>) -> Units {
        list.into_iter()
            .map(|u| (u.pts(), u.keyframe(), u.data().to_vec()))
            .collect()
    }

    fn receive_all(enc: &mut H264Encoder) -> Units {
        units(std::iter::from_fn(|| enc.receive().unwrap()))
    }

    /// Codes `n` frames of `raw` both ways (copied into libavcodec's frame,
    /// and lent from a mapping), with an IDR forced on frame 5 and the
    /// bitrate changed before frame 8; returns both streams, after
    /// checking each lease the way the engine relies on: released by the
    /// time `encode_mapped` returns (the units before were all received).
    fn code_both_ways(raw: &Format, params: H264Params, n: usize) -> (Units, Units) {
        let mut copied = H264Encoder::new(raw, params).unwrap();
        let mut lent = H264Encoder::new(raw, params).unwrap();
        let (mut a, mut b) = (Units::new(), Units::new());
        for i in 0..n {
            if i == 8 {
                let p = H264Params {
                    bitrate: params.bitrate / 2,
                    ..params
                };
                a.extend(units(copied.set_params(p).unwrap()));
                b.extend(units(lent.set_params(p).unwrap()));
            }
            let bytes = frame(raw, i);
            copied.encode(&bytes, i as i64, i == 5).unwrap();
            let mapping = mapped(&bytes);
            let lease = lent.encode_mapped(&mapping, i as i64, i == 5).unwrap();
            assert!(lease.released(), "frame {i}: libavcodec let go inside send");
            assert_eq!(
                Arc::strong_count(&mapping),
                1,
                "frame {i}: nothing holds it"
            );
            a.extend(receive_all(&mut copied));
            b.extend(receive_all(&mut lent));
        }
        a.extend(units(copied.flush().unwrap()));
        b.extend(units(lent.flush().unwrap()));
        (a, b)
    }

    #[test]
    fn lent_frames_code_the_same_stream_as_copied_ones() {
        for low_latency in [true, false] {
            for (format, w, h) in [
                (PixelFormat::I420, 322, 242),
                (PixelFormat::Yv12, 322, 242),
                (PixelFormat::Nv12, 322, 242),
                (PixelFormat::Nv21, 320, 240),
            ] {
                let raw = Format::raw(format, w, h).unwrap();
                // x264's rate control with frame threads depends on which
                // frames' sizes are known when a frame starts (thread
                // timing): two runs of the same encoder on the same frames
                // differ. Constant QP there leaves the stream to the
                // pictures alone.
                let mode = if low_latency {
                    BitrateMode::Vbr
                } else {
                    BitrateMode::ConstantQp
                };
                let params = H264Params {
                    low_latency,
                    bitrate: 400_000,
                    mode,
                    ..H264Params::default()
                };
                let (copied, lent) = code_both_ways(&raw, params, 12);
                let what = format!("{format} {w}x{h} low_latency={low_latency}");
                assert_eq!(copied.len(), 12, "{what}: every frame");
                let keys: Vec<i64> = lent.iter().filter(|u| u.1).map(|u| u.0).collect();
                assert_eq!(keys, vec![0, 5, 8], "{what}: first, forced, reopened");
                for (c, l) in copied.iter().zip(&lent) {
                    assert_eq!((c.0, c.1), (l.0, l.1), "{what}");
                    assert!(c.2 == l.2, "{what}: unit {} differs", c.0);
                }
                assert_eq!(copied.len(), lent.len(), "{what}");
            }
        }
    }

    /// Sends frames 0 and 1 without receiving in between (libavcodec keeps
    /// frame 1 until the unit of frame 0 is taken out).
    fn send_two(enc: &mut H264Encoder, raw: &Format) -> (Arc<FrameMapping>, Lease, Lease) {
        let first = mapped(&frame(raw, 0));
        let lease0 = enc.encode_mapped(&first, 0, false).unwrap();
        assert!(lease0.released());
        let second = mapped(&frame(raw, 1));
        let lease1 = enc.encode_mapped(&second, 1, false).unwrap();
        (second, lease0, lease1)
    }

    #[test]
    fn a_frame_libavcodec_holds_stays_lent_until_the_codec_took_it() {
        let raw = raw();
        let mut enc = H264Encoder::new(&raw, H264Params::default()).unwrap();
        let (second, _, lease1) = send_two(&mut enc, &raw);
        assert!(!lease1.released(), "unit 0 not received: frame 1 waits");
        assert_eq!(Arc::strong_count(&second), 2, "libavcodec's reference");
        let unit0 = enc.receive().unwrap().unwrap();
        assert_eq!(unit0.pts(), 0);
        assert!(
            !lease1.released(),
            "handing out unit 0 does not code frame 1"
        );
        let unit1 = enc.receive().unwrap().unwrap();
        assert_eq!(unit1.pts(), 1);
        assert!(lease1.released(), "coding frame 1 let go of it");
        assert_eq!(Arc::strong_count(&second), 1);
        assert!(enc.receive().unwrap().is_none());

        // The same stream as copying both frames.
        let mut copied = H264Encoder::new(&raw, H264Params::default()).unwrap();
        copied.encode(&frame(&raw, 0), 0, false).unwrap();
        copied.encode(&frame(&raw, 1), 1, false).unwrap();
        let expected = receive_all(&mut copied);
        assert_eq!(expected, units([unit0, unit1]));
    }

    #[test]
    fn flush_and_discard_let_go_of_a_held_frame() {
        let raw = raw();
        let mut enc = H264Encoder::new(&raw, H264Params::default()).unwrap();
        let (_, _, lease1) = send_two(&mut enc, &raw);
        assert!(!lease1.released());
        let flushed = enc.flush().unwrap();
        assert_eq!(
            flushed.iter().map(AccessUnit::pts).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(lease1.released(), "flush coded the held frame");

        let (second, _, lease1) = send_two(&mut enc, &raw);
        assert!(!lease1.released());
        enc.discard();
        assert!(lease1.released(), "closing the codec let go of it");
        assert_eq!(Arc::strong_count(&second), 1);
        // The next stream starts afresh.
        let lease = enc
            .encode_mapped(&mapped(&frame(&raw, 2)), 2, false)
            .unwrap();
        assert!(lease.released());
        let units = receive_all(&mut enc);
        assert_eq!(units.len(), 1);
        assert!(units[0].1, "an IDR first");
    }

    #[test]
    fn dropping_the_encoder_lets_go_of_a_held_frame() {
        let raw = raw();
        let mut enc = H264Encoder::new(&raw, H264Params::default()).unwrap();
        let (second, _, lease1) = send_two(&mut enc, &raw);
        drop(enc);
        assert!(lease1.released());
        assert_eq!(Arc::strong_count(&second), 1);
    }

    #[test]
    fn a_mapping_shorter_than_the_frame_is_refused() {
        let raw = raw();
        let mut enc = H264Encoder::new(&raw, H264Params::default()).unwrap();
        let short = mapped(&vec![0; raw.size - 1]);
        let err = enc.encode_mapped(&short, 0, false).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("holds {} bytes", raw.size - 1)),
            "{err}"
        );
        assert_eq!(Arc::strong_count(&short), 1, "nothing lent");
        // The encoder goes on.
        let lease = enc
            .encode_mapped(&mapped(&frame(&raw, 0)), 0, false)
            .unwrap();
        assert!(lease.released());
        assert_eq!(receive_all(&mut enc).len(), 1);
    }
}
