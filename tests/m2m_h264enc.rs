//! The H.264 encoder engine of the emulated VPU through the m2m contract,
//! without GStreamer: every frame comes out as one access unit with its
//! timestamp, IDRs carry SPS and PPS and the KEYFRAME flag, a drain returns
//! every frame then LAST, and the stream decodes (FFmpeg's H.264 decoder) to
//! the frames that went in; bad buffers, formats and controls get errors that
//! say what was wrong, and the session goes on. Throughput mode: the held
//! frames are reported as minimum OUTPUT buffers, and all come out.

use std::time::Duration;

use ffmpeg_next as ff;
use gstrsvpu::m2m::blocking::BlockingEncoder;
use gstrsvpu::m2m::{
    BufferFlags, Control, Device, Event, Format, H264Level, Memory, PixelFormat, QueueKind, Role,
};
use gstrsvpu::mem::Coherency;
use gstrsvpu::vpu::EmuVpu;
use gstrsvpu::vpu::codec::h264enc::{H264Params, delayed_frames};

mod m2m_support;
use m2m_support::{Coded, encode_frames, frames, vpu};

fn nal_types(data: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            types.push(data[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// Encodes `input` (timestamps 0, 1000, ...), forcing a key frame on
/// frame 7.
fn encode(vpu: &EmuVpu, raw: &Format, input: &[Vec<u8>], controls: &[Control]) -> Vec<Coded> {
    let session = vpu.open(Role::Encoder, PixelFormat::H264).unwrap();
    let mut enc = BlockingEncoder::new(session, raw, controls, 3).unwrap();
    encode_frames(&mut enc, input, 1000, Some(7), |_| {})
}

/// Decodes the access units with FFmpeg's own H.264 decoder: the I420
/// frames, visible area only, in the contract layout of `raw`.
fn ffmpeg_decode(units: &[Coded], raw: &Format) -> Vec<Vec<u8>> {
    let codec = ff::decoder::find(ff::codec::Id::H264).expect("FFmpeg's H.264 decoder");
    let mut dec = ff::codec::context::Context::new_with_codec(codec)
        .decoder()
        .video()
        .unwrap();
    let mut out = Vec::new();
    let mut frame = ff::frame::Video::empty();
    let mut take = |dec: &mut ff::decoder::Video, out: &mut Vec<Vec<u8>>| {
        while dec.receive_frame(&mut frame).is_ok() {
            let mut f = vec![0; raw.size];
            let (w, h) = (raw.width as usize, raw.height as usize);
            for (p, (rows, cols)) in [(h, w), (h / 2, w / 2), (h / 2, w / 2)]
                .into_iter()
                .enumerate()
            {
                let (stride, dst) = (frame.stride(p), raw.planes[p]);
                for r in 0..rows {
                    f[dst.offset + r * dst.stride..][..cols]
                        .copy_from_slice(&frame.data(p)[r * stride..][..cols]);
                }
            }
            out.push(f);
        }
    };
    for u in units {
        dec.send_packet(&ff::Packet::copy(&u.data)).unwrap();
        take(&mut dec, &mut out);
    }
    dec.send_eof().unwrap();
    take(&mut dec, &mut out);
    out
}

/// PSNR over the visible luma of two frames in `raw`'s layout.
fn luma_psnr(a: &[u8], b: &[u8], raw: &Format) -> f64 {
    let y = raw.planes[0];
    let mut se = 0f64;
    for r in 0..raw.height as usize {
        for c in 0..raw.width as usize {
            let d = f64::from(a[y.offset + r * y.stride + c])
                - f64::from(b[y.offset + r * y.stride + c]);
            se += d * d;
        }
    }
    let mse = se / f64::from(raw.width * raw.height);
    if mse == 0.0 {
        99.0
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

#[test]
fn every_frame_is_one_access_unit_and_decodes_back() {
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 320, 240).unwrap();
    let input = frames(&raw, 12);
    let out = encode(
        &vpu,
        &raw,
        &input,
        &[
            Control::FrameRate { num: 30, den: 1 },
            Control::Bitrate(1_000_000),
            Control::GopSize(5),
        ],
    );
    assert_eq!(out.len(), 12, "the drain returns every frame");
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.timestamp, i as u64 * 1000, "frame {i}'s timestamp");
        let types = nal_types(&c.data);
        // GOP 5 from 0, and frame 7 forced: the GOP restarts there.
        let idr = matches!(i, 0 | 5 | 7);
        assert_eq!(c.keyframe, idr, "frame {i}: {types:?}");
        assert_eq!(
            types.contains(&7) && types.contains(&8) && types.contains(&5),
            idr,
            "frame {i}: SPS, PPS and IDR slices exactly on key frames ({types:?})"
        );
    }
    let decoded = ffmpeg_decode(&out, &raw);
    assert_eq!(decoded.len(), 12, "FFmpeg decodes every access unit");
    for (i, (d, s)) in decoded.iter().zip(&input).enumerate() {
        let psnr = luma_psnr(d, s, &raw);
        assert!(psnr > 30.0, "frame {i}: luma PSNR {psnr:.1} dB");
    }
    assert_eq!(vpu.checker().violation_count(), 0);
}

/// Throughput mode (`LowLatency(false)`, x264 frame threads): the session
/// says how many frames the codec holds (its minimum OUTPUT buffers, 1 +
/// held), and N frames in still give N units out, in order, with their
/// timestamps, the forced key frame on its frame, all decodable.
#[test]
fn throughput_mode_reports_held_frames_and_returns_every_one() {
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 320, 240).unwrap();
    let params = H264Params {
        low_latency: false,
        ..H264Params::default()
    };
    let held = delayed_frames(&params, raw.height);
    for n in [0usize, 1, 2, 30] {
        let input = frames(&raw, n as u32);
        let session = vpu.open(Role::Encoder, PixelFormat::H264).unwrap();
        assert_eq!(session.min_buffers(QueueKind::Output), 1);
        let controls = [
            Control::FrameRate { num: 30, den: 1 },
            Control::LowLatency(false),
        ];
        let mut enc = BlockingEncoder::new(session, &raw, &controls, 3).unwrap();
        assert_eq!(
            enc.session().min_buffers(QueueKind::Output),
            1 + held,
            "the frames the codec holds, plus one"
        );
        let force = Some(7).filter(|&k| k < n);
        let out = encode_frames(&mut enc, &input, 1000, force, |_| {});
        assert_eq!(out.len(), n, "{n} frames in, {n} units out");
        for (i, c) in out.iter().enumerate() {
            assert_eq!(c.timestamp, i as u64 * 1000, "frame {i} of {n}");
            assert_eq!(c.keyframe, i == 0 || i == 7, "frame {i} of {n}");
        }
        let decoded = ffmpeg_decode(&out, &raw);
        assert_eq!(decoded.len(), n, "FFmpeg decodes every unit");
        for (i, (d, s)) in decoded.iter().zip(&input).enumerate() {
            let psnr = luma_psnr(d, s, &raw);
            assert!(psnr > 30.0, "frame {i}: luma PSNR {psnr:.1} dB");
        }
        // Back to one in, one out: nothing held any more.
        enc.session()
            .set_control(Control::LowLatency(true))
            .unwrap();
        assert_eq!(enc.session().min_buffers(QueueKind::Output), 1);
    }
    assert_eq!(vpu.checker().violation_count(), 0);
}

#[test]
fn nv12_and_yv12_code_the_same_picture_as_i420() {
    let vpu = vpu();
    let i420 = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let input = frames(&i420, 3);
    let reference = encode(&vpu, &i420, &input, &[Control::GopSize(10)]);
    for pf in [PixelFormat::Nv12, PixelFormat::Yv12, PixelFormat::Nv21] {
        let raw = Format::raw(pf, 160, 120).unwrap();
        // The same picture laid out as `pf`.
        let converted: Vec<Vec<u8>> = input
            .iter()
            .map(|f| {
                let mut g = vec![0; raw.size];
                let (w, h) = (160, 120);
                let (y, u, v) = (i420.planes[0], i420.planes[1], i420.planes[2]);
                for r in 0..h {
                    g[raw.planes[0].offset + r * raw.planes[0].stride..][..w]
                        .copy_from_slice(&f[y.offset + r * y.stride..][..w]);
                }
                for r in 0..h / 2 {
                    for c in 0..w / 2 {
                        let (cb, cr) = (
                            f[u.offset + r * u.stride + c],
                            f[v.offset + r * v.stride + c],
                        );
                        match pf {
                            PixelFormat::Yv12 => {
                                g[raw.planes[1].offset + r * raw.planes[1].stride + c] = cr;
                                g[raw.planes[2].offset + r * raw.planes[2].stride + c] = cb;
                            }
                            _ => {
                                let p = raw.planes[1];
                                let (a, b) = if pf == PixelFormat::Nv12 {
                                    (cb, cr)
                                } else {
                                    (cr, cb)
                                };
                                g[p.offset + r * p.stride + 2 * c] = a;
                                g[p.offset + r * p.stride + 2 * c + 1] = b;
                            }
                        }
                    }
                }
                g
            })
            .collect();
        let out = encode(&vpu, &raw, &converted, &[Control::GopSize(10)]);
        let decoded = ffmpeg_decode(&out, &i420);
        let want = ffmpeg_decode(&reference, &i420);
        assert_eq!(decoded, want, "{pf} codes the same picture as I420");
    }
}

#[test]
fn bad_formats_and_controls_are_refused_with_the_reason() {
    let vpu = vpu();
    let s = vpu.open(Role::Encoder, PixelFormat::H264).unwrap();
    let e = s
        .set_format(
            QueueKind::Output,
            &Format::raw(PixelFormat::Rgb24, 64, 64).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("takes I420, YV12, NV12 or NV21, not RGB3"),
        "{e}"
    );
    let e = s
        .set_format(
            QueueKind::Output,
            &Format::raw(PixelFormat::I420, 63, 64).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("even frame size, got 63x64"), "{e}");
    s.set_format(
        QueueKind::Output,
        &Format::raw(PixelFormat::I420, 1920, 1080).unwrap(),
    )
    .unwrap();
    let e = s.set_control(Control::MinQp(60)).unwrap_err().to_string();
    assert!(e.contains("min QP must be 0..=51, got 60"), "{e}");
    s.set_control(Control::MinQp(40)).unwrap();
    let e = s.set_control(Control::MaxQp(30)).unwrap_err().to_string();
    assert!(e.contains("min QP 40 is above max QP 30"), "{e}");
    let l3 = H264Level::from_caps_name("3").unwrap();
    let e = s
        .set_control(Control::H264Level(Some(l3)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("level 3 allows 1620 macroblocks per frame, 1920x1080 has 8160"),
        "{e}"
    );
    let e = s
        .set_control(Control::FrameRate { num: 30, den: 0 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("30/0"), "{e}");
    assert!(
        vpu.open(Role::Encoder, PixelFormat::I420).is_err(),
        "a raw format is no codec to encode to"
    );
}

#[test]
fn a_short_frame_is_an_error_buffer_and_the_stream_goes_on() {
    let vpu = vpu();
    let s = vpu.open(Role::Encoder, PixelFormat::H264).unwrap();
    let raw = s
        .set_format(
            QueueKind::Output,
            &Format::raw(PixelFormat::I420, 64, 48).unwrap(),
        )
        .unwrap();
    let mut outputs = s
        .allocate_buffers(QueueKind::Output, 2, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    let captures = s
        .allocate_buffers(QueueKind::Capture, 2, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    s.stream_on(QueueKind::Output).unwrap();
    s.stream_on(QueueKind::Capture).unwrap();
    for c in captures {
        s.queue(c).unwrap();
    }
    let mut good = outputs.pop().unwrap();
    let mut short = outputs.pop().unwrap();
    short.bytesused = 100;
    short.timestamp = 1;
    s.queue(short).unwrap();
    good.bytesused = raw.size;
    good.timestamp = 2;
    s.queue(good).unwrap();
    let mut coded = Vec::new();
    while coded.len() < 2 {
        match s.wait_event(Duration::from_secs(5)).unwrap() {
            Some(Event::BufferDone(b)) if b.queue == QueueKind::Capture => coded.push(b),
            Some(_) => {}
            None => panic!("no coded buffer within 5 s"),
        }
    }
    assert!(coded[0].flags.contains(BufferFlags::ERROR));
    assert_eq!(coded[0].timestamp, 1);
    let why = coded[0].error.as_deref().unwrap_or_default();
    assert!(why.contains("holds 100 bytes"), "{why}");
    assert!(
        !coded[1].flags.contains(BufferFlags::ERROR),
        "{:?}",
        coded[1].error
    );
    assert!(coded[1].flags.contains(BufferFlags::KEYFRAME));
    assert_eq!(coded[1].timestamp, 2);
    assert!(coded[1].bytesused > 0);
}
