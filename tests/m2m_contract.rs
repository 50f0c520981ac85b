//! The m2m contract on the emulated VPU, without GStreamer: round trips,
//! source changes, drain, flush, corrupt input, firmware faults, concurrency
//! and the coherency checker watching the whole path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gstrsvpu::m2m::blocking::{BlockingDecoder, BlockingEncoder};
use gstrsvpu::m2m::{
    Buffer, BufferFlags, Control, Device, Event, Format, M2mError, Memory, PixelFormat,
    PlaneLayout, QueueKind, Role, Session,
};
use gstrsvpu::mem::Coherency;
use gstrsvpu::vpu::EmuVpu;
use gstrsvpu::vpu::codec::fwht::{self, EncoderParams, FwhtDecoder, FwhtEncoder};

mod m2m_support;
use m2m_support::{Coded, encode_frames, frames, start_capture, start_decoder, vpu, vpu_with};

fn encode(vpu: &EmuVpu, raw: &Format, input: &[Vec<u8>], controls: &[Control]) -> Vec<Coded> {
    let session = vpu.open(Role::Encoder, PixelFormat::Fwht).unwrap();
    let mut enc = BlockingEncoder::new(session, raw, controls, 3).unwrap();
    encode_frames(&mut enc, input, 1000, None, |_| {})
}

struct Decoded {
    data: Vec<u8>,
    format: Format,
    timestamp: u64,
    error: Option<String>,
}

/// Decodes `chunks` (timestamp, bytes) with cacheable CAPTURE memory.
fn decode(vpu: &EmuVpu, chunks: &[(u64, &[u8])]) -> Vec<Decoded> {
    let session = vpu.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Cacheable, 2, 1).unwrap();
    let mut out: Vec<Decoded> = Vec::new();
    let formats = std::cell::RefCell::new(Vec::<Format>::new());
    {
        let mut take = |b: &Buffer| {
            b.region.sync_for_cpu()?;
            out.push(Decoded {
                data: b.region.cpu_read()[..b.bytesused].to_vec(),
                format: Format::raw(PixelFormat::I420, 1, 1).unwrap(),
                timestamp: b.timestamp,
                error: b.error.clone(),
            });
            Ok(())
        };
        for (ts, c) in chunks {
            dec.decode(c, *ts, &mut take).unwrap();
            if let Some(f) = dec.format() {
                formats.borrow_mut().push(f.clone());
            }
        }
        dec.finish(&mut take).unwrap();
    }
    // Every frame's format is the one whose size matches its bytes.
    let formats = formats.into_inner();
    for d in out.iter_mut() {
        if let Some(f) = formats.iter().rev().find(|f| f.size == d.data.len()) {
            d.format = f.clone();
        }
    }
    out
}

fn bare_decode(stream: &[Coded], raw: &Format) -> Vec<Vec<u8>> {
    let mut dec = FwhtDecoder::new();
    stream
        .iter()
        .map(|c| {
            let mut out = vec![0; raw.size];
            dec.decode(&c.data, raw, &mut out).unwrap();
            out
        })
        .collect()
}

#[test]
fn encode_decode_round_trip_matches_the_bare_codec() {
    let vpu = vpu();
    for (pixfmt, w, h) in [
        (PixelFormat::I420, 320, 240),
        (PixelFormat::Rgb24, 322, 242),
        (PixelFormat::Nv12, 176, 144),
    ] {
        let raw = Format::raw(pixfmt, w, h).unwrap();
        let input = frames(&raw, 12);
        let coded = encode(&vpu, &raw, &input, &[Control::GopSize(5)]);
        assert_eq!(coded.len(), 12, "{pixfmt}: every frame encoded");
        assert!(
            coded[0].keyframe && !coded[1].keyframe,
            "{pixfmt}: I then P frames"
        );
        for (i, c) in coded.iter().enumerate() {
            assert_eq!(
                c.timestamp,
                i as u64 * 1000,
                "{pixfmt}: encoder keeps timestamps"
            );
        }

        // Same bytes as the bare codec with the same settings.
        let params = EncoderParams {
            gop_size: 5,
            ..EncoderParams::default()
        };
        let mut bare = FwhtEncoder::new(&raw, params).unwrap();
        for (f, c) in input.iter().zip(&coded) {
            let mut dst = vec![0; FwhtEncoder::max_frame_size(&raw)];
            let e = bare.encode(f, &mut dst).unwrap();
            assert_eq!(
                &dst[..e.bytes],
                &c.data[..],
                "{pixfmt}: VPU path and bare encoder agree"
            );
        }

        let chunks: Vec<(u64, &[u8])> = coded.iter().map(|c| (c.timestamp, &c.data[..])).collect();
        let decoded = decode(&vpu, &chunks);
        assert_eq!(decoded.len(), 12, "{pixfmt}: N frames in, N frames out");
        let reference = bare_decode(&coded, &raw);
        let cap = Format::raw(decoded[0].format.pixelformat, w, h).unwrap();
        for (i, d) in decoded.iter().enumerate() {
            assert!(d.error.is_none(), "{pixfmt}: frame {i}: {:?}", d.error);
            assert_eq!(
                d.timestamp,
                i as u64 * 1000,
                "{pixfmt}: decoder keeps timestamps"
            );
            if cap.pixelformat == pixfmt {
                assert_eq!(
                    d.data, reference[i],
                    "{pixfmt}: frame {i} equals the bare decoder's"
                );
                let p = fwht::psnr(&d.data, &input[i]);
                assert!(p > 28.0, "{pixfmt}: frame {i} PSNR {p:.1} dB");
            }
        }
    }
    assert_eq!(
        vpu.checker().violation_count(),
        0,
        "{:?}",
        vpu.checker().violations()
    );
}

#[test]
fn unframed_chunks_decode_to_the_same_frames() {
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 8), &[]);
    let stream: Vec<u8> = coded.iter().flat_map(|c| c.data.iter().copied()).collect();
    // Garbage before the first header is skipped, like the kernel's decoder does.
    let mut with_garbage = vec![0x55u8; 37];
    with_garbage.extend_from_slice(&stream);
    let chunks: Vec<(u64, &[u8])> = with_garbage
        .chunks(777)
        .enumerate()
        .map(|(i, c)| (i as u64, c))
        .collect();
    let decoded = decode(&vpu, &chunks);
    let reference = bare_decode(&coded, &raw);
    assert_eq!(decoded.len(), 8);
    for (d, r) in decoded.iter().zip(&reference) {
        assert_eq!(&d.data, r);
    }
    assert_eq!(vpu.checker().violation_count(), 0);
}

#[test]
fn resolution_change_mid_stream_raises_source_change() {
    let vpu = vpu();
    let small = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let big = Format::raw(PixelFormat::I420, 328, 248).unwrap();
    let mut coded = encode(&vpu, &small, &frames(&small, 3), &[]);
    coded.extend(encode(&vpu, &big, &frames(&big, 4), &[]));
    let chunks: Vec<(u64, &[u8])> = coded
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64, &c.data[..]))
        .collect();

    // Drive the session by hand to see the events in order.
    let session = vpu.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Coherent, 2, 1).unwrap();
    let mut sizes = Vec::new();
    let mut take = |b: &Buffer| {
        sizes.push(b.bytesused);
        Ok(())
    };
    for (ts, c) in &chunks {
        dec.decode(c, *ts, &mut take).unwrap();
    }
    dec.finish(&mut take).unwrap();
    assert_eq!(sizes.len(), 7, "no frame lost across the change");
    assert!(sizes[..3].iter().all(|&s| s == small.size));
    assert!(sizes[3..].iter().all(|&s| s == big.size));
    assert_eq!(dec.format().unwrap().width, 328);
    assert_eq!(dec.format().unwrap().height, 248);
}

/// Sets up a decoder session by hand (no blocking helper) up to streaming.
fn manual_decoder(vpu: &EmuVpu, first: &[u8]) -> (Box<dyn Session>, Vec<Buffer>) {
    manual_decoder_for(vpu, first, 320, 240)
}

fn manual_decoder_for(
    vpu: &EmuVpu,
    first: &[u8],
    width: u32,
    height: u32,
) -> (Box<dyn Session>, Vec<Buffer>) {
    let s = vpu.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let (sc, outs) = start_decoder(&*s, first, (width, height), 8, Duration::from_secs(5));
    assert_eq!(
        sc.formats.first(),
        Some(&PixelFormat::I420),
        "4:2:0 decodes to YU12 first, as vicodec"
    );
    start_capture(&*s, &sc.format, 6);
    (s, outs)
}

#[test]
fn drain_returns_every_frame_then_last() {
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 320, 240).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 5), &[]);
    let (s, mut outs) = manual_decoder(&vpu, &coded[0].data);
    for (i, c) in coded.iter().enumerate().skip(1) {
        let mut b = outs.pop().unwrap();
        b.region.cpu_write()[..c.data.len()].copy_from_slice(&c.data);
        b.bytesused = c.data.len();
        b.timestamp = i as u64;
        s.queue(b).unwrap();
    }
    s.drain().unwrap();
    let mut got = Vec::new();
    loop {
        match s
            .wait_event(Duration::from_secs(5))
            .unwrap()
            .expect("drain must finish")
        {
            Event::BufferDone(b) if b.queue == QueueKind::Capture => {
                if b.flags.contains(BufferFlags::LAST) {
                    assert_eq!(b.bytesused, 0);
                    break;
                }
                got.push(b.timestamp);
            }
            _ => {}
        }
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    // After LAST the decoder is stopped until started again; then it decodes.
    s.start().unwrap();
}

#[test]
fn eos_without_any_frame_does_not_hang() {
    let vpu = vpu();
    let session = vpu.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Coherent, 2, 1).unwrap();
    let mut n = 0;
    dec.finish(&mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 0);

    let session = vpu.open(Role::Encoder, PixelFormat::Fwht).unwrap();
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    let mut enc = BlockingEncoder::new(session, &raw, &[], 2).unwrap();
    enc.finish(&mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn flush_discards_and_restarts_at_a_keyframe() {
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 10), &[Control::GopSize(5)]);
    assert!(coded[5].keyframe);
    let session = vpu.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Coherent, 4, 1).unwrap();
    let mut got: Vec<(u64, bool)> = Vec::new();
    let mut take = |b: &Buffer| {
        got.push((b.timestamp, b.flags.contains(BufferFlags::ERROR)));
        Ok(())
    };
    for (i, c) in coded.iter().enumerate().take(3) {
        dec.decode(&c.data, i as u64, &mut take).unwrap();
    }
    dec.flush().unwrap();
    // Seek target: the key frame at 5.
    for (i, c) in coded.iter().enumerate().skip(5) {
        dec.decode(&c.data, i as u64, &mut take).unwrap();
    }
    dec.finish(&mut take).unwrap();
    let after: Vec<_> = got.iter().filter(|(ts, _)| *ts >= 5).collect();
    assert_eq!(
        after.len(),
        5,
        "every frame after the seek decodes: {got:?}"
    );
    assert!(
        after.iter().all(|(_, err)| !err),
        "no error after a flush to a key frame: {got:?}"
    );
    assert!(
        got.iter().all(|(ts, _)| *ts < 3 || *ts >= 5),
        "nothing of the flushed input comes out"
    );
}

#[test]
fn corrupt_and_truncated_frames_are_buffer_errors_and_decoding_continues() {
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 160, 120).unwrap();
    let mut coded = encode(&vpu, &raw, &frames(&raw, 8), &[Control::GopSize(4)]);
    assert!(coded[4].keyframe);
    // Frame 1: payload garbage (a coefficient run past the end of a block
    // or a plane overflow); frame 7: cut short at the end of the stream.
    for b in coded[1].data[44..].iter_mut() {
        *b = 0xff;
    }
    let cut = coded[7].data.len() / 2;
    coded[7].data.truncate(cut);
    let chunks: Vec<(u64, &[u8])> = coded
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64, &c.data[..]))
        .collect();
    let decoded = decode(&vpu, &chunks);
    let errors: Vec<(u64, &str)> = decoded
        .iter()
        .filter_map(|d| d.error.as_deref().map(|e| (d.timestamp, e)))
        .collect();
    let good: Vec<u64> = decoded
        .iter()
        .filter(|d| d.error.is_none())
        .map(|d| d.timestamp)
        .collect();
    assert!(
        errors.iter().any(|(ts, _)| *ts == 1),
        "corrupt frame flagged: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(ts, e)| *ts == 7 && e.contains("truncated")),
        "truncated frame flagged: {errors:?}"
    );
    assert!(good.contains(&0));
    assert_eq!(
        &good[good.len() - 3..],
        &[4, 5, 6],
        "decoding resumes at the next key frame: {good:?}"
    );
    for (_, e) in &errors {
        assert!(!e.is_empty(), "every error says what was wrong");
    }
}

/// An encoder session for one `raw` frame: streaming, its CAPTURE buffer
/// queued; returns the OUTPUT buffer, ready to fill and queue.
fn one_frame_encoder(vpu: &EmuVpu, raw: &Format, output: Coherency) -> (Box<dyn Session>, Buffer) {
    let s = vpu.open(Role::Encoder, PixelFormat::Fwht).unwrap();
    s.set_format(QueueKind::Output, raw).unwrap();
    let mut outs = s
        .allocate_buffers(QueueKind::Output, 1, Memory::Allocate(output))
        .unwrap();
    let caps = s
        .allocate_buffers(QueueKind::Capture, 1, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    s.stream_on(QueueKind::Output).unwrap();
    s.stream_on(QueueKind::Capture).unwrap();
    for c in caps {
        s.queue(c).unwrap();
    }
    (s, outs.remove(0))
}

/// Waits for the session to fail; returns the error and how long it took.
fn first_error(s: &dyn Session) -> (M2mError, Duration) {
    let start = Instant::now();
    loop {
        match s.wait_event(Duration::from_millis(100)) {
            Err(e) => return (e, start.elapsed()),
            Ok(_) => assert!(
                start.elapsed() < Duration::from_secs(10),
                "the session never failed"
            ),
        }
    }
}

#[test]
fn firmware_hang_becomes_a_timeout_within_the_watchdog_bound() {
    let watchdog = Duration::from_millis(300);
    let vpu = vpu_with(watchdog, false);
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    let (s, mut b) = one_frame_encoder(&vpu, &raw, Coherency::Coherent);
    vpu.faults().set_hang(true);
    b.bytesused = raw.size;
    s.queue(b).unwrap();
    let (err, took) = first_error(s.as_ref());
    assert!(matches!(err, M2mError::Timeout(_)), "{err}");
    assert!(took < watchdog * 4, "took {took:?}");
    assert!(err.to_string().contains("did not answer"));
    // Commands now fail fast instead of blocking.
    assert!(s.drain().is_err());
    vpu.faults().set_hang(false);
}

#[test]
fn dropped_and_corrupt_responses_are_errors_not_hangs() {
    let watchdog = Duration::from_millis(300);
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    for corrupt in [false, true] {
        let vpu = vpu_with(watchdog, false);
        let (s, mut b) = one_frame_encoder(&vpu, &raw, Coherency::Coherent);
        if corrupt {
            vpu.faults().corrupt_responses(1);
        } else {
            vpu.faults().drop_responses(2);
        }
        b.bytesused = raw.size;
        s.queue(b).unwrap();
        let (err, _) = first_error(s.as_ref());
        if corrupt {
            assert!(matches!(err, M2mError::Firmware(_)), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("VPU") && text.contains("queue"),
                "names what was wrong: {text}"
            );
        } else {
            assert!(matches!(err, M2mError::Timeout(_)), "{err}");
        }
    }
}

#[test]
fn several_sessions_run_side_by_side() {
    let vpu = Arc::new(vpu_with(Duration::from_secs(5), false));
    let threads: Vec<_> = (0..6u32)
        .map(|i| {
            let vpu = vpu.clone();
            std::thread::spawn(move || {
                let raw = Format::raw(PixelFormat::I420, 96 + 8 * i, 64 + 8 * i).unwrap();
                let input = frames(&raw, 6);
                let coded = encode(&vpu, &raw, &input, &[]);
                let chunks: Vec<(u64, &[u8])> =
                    coded.iter().map(|c| (c.timestamp, &c.data[..])).collect();
                let decoded = decode(&vpu, &chunks);
                assert_eq!(decoded.len(), 6);
                assert_eq!(decoded[5].data, bare_decode(&coded, &raw)[5]);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        vpu.mapped_regions(),
        0,
        "every session unmapped its memory on close"
    );
}

#[test]
fn a_missing_cache_clean_is_caught_and_corrupts_like_real_hardware() {
    // The client writes a cacheable OUTPUT frame and queues it claiming it
    // never touched it: the device reads stale memory.
    let vpu = vpu_with(Duration::from_secs(5), true);
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    let input = frames(&raw, 1).remove(0);
    let (s, mut b) = one_frame_encoder(&vpu, &raw, Coherency::Cacheable);
    b.region.cpu_write()[..raw.size].copy_from_slice(&input);
    b.bytesused = raw.size;
    b.flags = BufferFlags::NO_CACHE_CLEAN;
    s.queue(b).unwrap();
    let coded = loop {
        if let Some(Event::BufferDone(b)) = s.wait_event(Duration::from_secs(5)).unwrap()
            && b.queue == QueueKind::Capture
        {
            break b.region.cpu_read()[..b.bytesused].to_vec();
        }
    };
    let violations = vpu.checker().take_violations();
    assert!(
        !violations.is_empty(),
        "the checker reports the missing clean"
    );
    let text = violations[0].to_string();
    assert!(
        text.contains("vpu") && text.contains("output"),
        "names the buffer: {text}"
    );
    // The device saw zeros (stale DRAM), not the picture.
    let mut dec = FwhtDecoder::new();
    let mut out = vec![0; raw.size];
    dec.decode(&coded, &raw, &mut out).unwrap();
    assert!(fwht::psnr(&out, &input) < 20.0, "stale data was encoded");
}

#[test]
fn bad_requests_get_clear_errors() {
    let vpu = vpu();
    let err = vpu
        .open(Role::Decoder, PixelFormat::I420)
        .err()
        .expect("a raw format is no codec");
    assert!(err.to_string().contains("YU12"), "{err}");
    let s = vpu.open(Role::Encoder, PixelFormat::Fwht).unwrap();
    let err = s
        .set_format(QueueKind::Output, &Format::coded(PixelFormat::Fwht, 64, 64))
        .unwrap_err();
    assert!(err.to_string().contains("raw"), "{err}");
    let err = s
        .allocate_buffers(QueueKind::Output, 2, Memory::Allocate(Coherency::Coherent))
        .unwrap_err();
    assert!(err.to_string().contains("format"), "{err}");
    let err = s.set_control(Control::Bitrate(1000)).unwrap_err();
    assert!(err.to_string().contains("bitrate"), "{err}");
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    s.set_format(QueueKind::Output, &raw).unwrap();
    let err = s.set_control(Control::IFrameQp(1000)).unwrap_err();
    assert!(matches!(err, M2mError::InvalidControl { .. }), "{err}");
    let outs = s
        .allocate_buffers(QueueKind::Output, 1, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    let mut wrong = outs.into_iter().next().unwrap();
    wrong.index = 9;
    let e = s.queue(wrong).unwrap_err();
    assert_eq!(e.buffer.index, 9, "a failed queue hands the buffer back");
    assert!(e.to_string().contains("index 9"), "{e}");
}

/// Both done events of a one-frame encode (OUTPUT and CAPTURE), in either order.
fn wait_one_frame(s: &dyn Session, within: Duration) {
    let deadline = Instant::now() + within;
    let mut done = (false, false);
    while done != (true, true) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the frame did not come back within {within:?}"
        );
        match s.wait_event(left).unwrap() {
            Some(Event::BufferDone(b)) if b.queue == QueueKind::Output => done.0 = true,
            Some(Event::BufferDone(b)) => {
                assert!(b.bytesused > 0, "a coded frame");
                done.1 = true;
            }
            Some(other) => panic!("unexpected event {other:?}"),
            None => {}
        }
    }
}

/// There is no interrupt thread: a waiting thread handles the interrupt
/// for every session. One session's thread waiting (and so, at times, the
/// handler) must not keep another session's events from it, and the role
/// passes on when its holder stops waiting.
#[test]
fn a_waiting_thread_of_one_session_does_not_hold_up_another() {
    let vpu = vpu_with(Duration::from_secs(5), false);
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    let (idle, _) = one_frame_encoder(&vpu, &raw, Coherency::Coherent);
    let idle_wait = Duration::from_millis(1500);
    let (busy, b) = one_frame_encoder(&vpu, &raw, Coherency::Coherent);
    let idle_done = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let r = idle.wait_event(idle_wait);
            (r.map(|e| e.is_none()), Instant::now())
        });
        // Let the idle session's thread take the handler's role first.
        std::thread::sleep(Duration::from_millis(50));
        let mut b = b;
        b.bytesused = raw.size;
        busy.queue(b).unwrap();
        wait_one_frame(busy.as_ref(), Duration::from_secs(5));
        let busy_done = Instant::now();
        let (idle_result, idle_done) = waiter.join().unwrap();
        assert!(
            idle_result.unwrap(),
            "the idle session got nothing and no error"
        );
        assert!(
            busy_done < idle_done,
            "the busy session's frame came back while the idle one still waited"
        );
        idle_done
    });
    // Nobody waits now: a later wait takes the role and is served.
    assert!(idle_done.elapsed() < Duration::from_secs(5));
    let (again, mut b) = one_frame_encoder(&vpu, &raw, Coherency::Coherent);
    b.bytesused = raw.size;
    again.queue(b).unwrap();
    wait_one_frame(again.as_ref(), Duration::from_secs(5));
}

/// Responses nobody read for longer than the watchdog (the session's thread
/// was busy elsewhere, e.g. blocked pushing downstream) are work done, not a
/// hung core: the ring is read before the watchdog judges.
#[test]
fn responses_left_unread_past_the_watchdog_are_not_a_timeout() {
    let watchdog = Duration::from_millis(200);
    let vpu = vpu_with(watchdog, false);
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    let (s, mut b) = one_frame_encoder(&vpu, &raw, Coherency::Coherent);
    b.bytesused = raw.size;
    s.queue(b).unwrap();
    std::thread::sleep(watchdog * 3);
    wait_one_frame(s.as_ref(), Duration::from_secs(2));
}

#[test]
fn a_slow_core_is_not_mistaken_for_a_hung_one() {
    let vpu = vpu_with(Duration::from_millis(400), false);
    vpu.faults().set_frame_delay(Duration::from_millis(60));
    let raw = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 6), &[]);
    let chunks: Vec<(u64, &[u8])> = coded.iter().map(|c| (c.timestamp, &c.data[..])).collect();
    assert_eq!(decode(&vpu, &chunks).len(), 6);
}

#[test]
fn a_drain_requested_before_capture_is_set_up_still_returns_every_frame() {
    // EOS arrives before the client has even seen the source change: the
    // drain must survive the CAPTURE set-up that follows.
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 96, 64).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 4), &[]);
    let stream: Vec<u8> = coded.iter().flat_map(|c| c.data.iter().copied()).collect();
    let s = vpu.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    s.set_format(QueueKind::Output, &Format::coded(PixelFormat::Fwht, 96, 64))
        .unwrap();
    let mut outs = s
        .allocate_buffers(QueueKind::Output, 1, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    s.stream_on(QueueKind::Output).unwrap();
    let mut b = outs.remove(0);
    b.region.cpu_write()[..stream.len()].copy_from_slice(&stream);
    b.bytesused = stream.len();
    s.queue(b).unwrap();
    s.drain().unwrap();
    let mut decoded = 0;
    loop {
        match s
            .wait_event(Duration::from_secs(5))
            .unwrap()
            .expect("the drain must finish")
        {
            Event::SourceChange(sc) => {
                s.set_format(QueueKind::Capture, &sc.format).unwrap();
                let caps = s
                    .allocate_buffers(QueueKind::Capture, 2, Memory::Allocate(Coherency::Coherent))
                    .unwrap();
                s.stream_on(QueueKind::Capture).unwrap();
                for c in caps {
                    s.queue(c).unwrap();
                }
            }
            Event::BufferDone(b) if b.queue == QueueKind::Capture => {
                if b.flags.contains(BufferFlags::LAST) {
                    break;
                }
                decoded += 1;
                s.queue(Buffer::new(QueueKind::Capture, b.index, b.region))
                    .unwrap();
            }
            Event::BufferDone(_) => {}
        }
    }
    assert_eq!(decoded, 4);
}

#[test]
fn stream_off_racing_a_waiting_thread_loses_no_accounting() {
    // One thread waits for events while another flushes the CAPTURE queue
    // over and over: a completion taken by the waiter must never be
    // mistaken for a buffer the host did not queue.
    let vpu = vpu_with(Duration::from_secs(5), false);
    let raw = Format::raw(PixelFormat::I420, 64, 48).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 4), &[Control::GopSize(1)]);
    let (s, mut outs) = manual_decoder_for(&vpu, &coded[0].data, 64, 48);
    let s: Arc<dyn Session> = Arc::from(s);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiter = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut done = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match s.wait_event(Duration::from_millis(5)) {
                    Ok(Some(Event::BufferDone(b))) => done.push(b),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(done)
        })
    };
    for i in 0..150 {
        if let Some(mut b) = outs.pop() {
            let c = &coded[i % coded.len()].data;
            b.region.cpu_write()[..c.len()].copy_from_slice(c);
            b.bytesused = c.len();
            s.queue(b).unwrap();
        }
        let back = s.stream_off(QueueKind::Capture).unwrap();
        s.stream_on(QueueKind::Capture).unwrap();
        for b in back {
            s.queue(Buffer::new(QueueKind::Capture, b.index, b.region))
                .unwrap();
        }
        if outs.is_empty() {
            // Take OUTPUT buffers back by flushing that queue too.
            outs.extend(s.stream_off(QueueKind::Output).unwrap());
            s.stream_on(QueueKind::Output).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let result = waiter.join().unwrap();
    assert!(result.is_ok(), "{:?}", result.err());
}

#[test]
fn capture_grows_while_streaming_when_the_client_holds_every_buffer() {
    let vpu = vpu();
    let raw = Format::raw(PixelFormat::I420, 96, 64).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 5), &[]);
    let stream: Vec<u8> = coded.iter().flat_map(|c| c.data.iter().copied()).collect();
    // manual_decoder_for queues 6 CAPTURE buffers; the client keeps every
    // frame it gets, so after 6 frames the decoder would stall.
    let (s, mut outs) = manual_decoder_for(&vpu, &stream, 96, 64);
    let mut b = outs.pop().unwrap();
    b.region.cpu_write()[..stream.len()].copy_from_slice(&stream);
    b.bytesused = stream.len();
    s.queue(b).unwrap();
    let mut held = Vec::new();
    while held.len() < 6 {
        if let Some(Event::BufferDone(b)) = s.wait_event(Duration::from_secs(5)).unwrap()
            && b.queue == QueueKind::Capture
        {
            held.push(b);
        }
    }
    assert!(
        s.wait_event(Duration::from_millis(100))
            .unwrap()
            .is_none_or(
                |e| !matches!(e, Event::BufferDone(ref b) if b.queue == QueueKind::Capture)
            ),
        "no CAPTURE buffer left to fill"
    );
    let more = s
        .add_buffers(QueueKind::Capture, 4, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    assert_eq!(
        more.iter().map(|b| b.index).collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    for b in more {
        s.queue(b).unwrap();
    }
    while held.len() < 10 {
        match s
            .wait_event(Duration::from_secs(5))
            .unwrap()
            .expect("decoding resumes")
        {
            Event::BufferDone(b) if b.queue == QueueKind::Capture => held.push(b),
            _ => {}
        }
    }
    assert_eq!(held.iter().filter(|b| b.bytesused > 0).count(), 10);
    let err = s
        .add_buffers(
            QueueKind::Capture,
            40,
            Memory::Allocate(Coherency::Coherent),
        )
        .unwrap_err();
    assert!(err.to_string().contains("32"), "{err}");
    let err = s
        .add_buffers(QueueKind::Capture, 1, Memory::Import)
        .unwrap_err();
    assert!(err.to_string().contains("memory"), "{err}");
}

/// GStreamer's default I420 layout for `w` x `h`: strides rounded up to 4,
/// the visible rows only (no vicodec padding), planes back to back.
fn gst_default_i420(w: u32, h: u32) -> Format {
    let (w, h) = (w as usize, h as usize);
    let (ys, cs) = (w.div_ceil(4) * 4, w.div_ceil(2).div_ceil(4) * 4);
    let (yr, cr) = (h, h.div_ceil(2));
    let mut f = Format::raw(PixelFormat::I420, w as u32, h as u32).unwrap();
    f.planes = vec![
        PlaneLayout {
            offset: 0,
            stride: ys,
            rows: yr,
        },
        PlaneLayout {
            offset: ys * yr,
            stride: cs,
            rows: cr,
        },
        PlaneLayout {
            offset: ys * yr + cs * cr,
            stride: cs,
            rows: cr,
        },
    ];
    f.size = ys * yr + 2 * cs * cr;
    f
}

#[test]
fn the_decoder_writes_the_capture_layout_the_client_sets() {
    let vpu = vpu();
    let (w, h) = (322, 242);
    let raw = Format::raw(PixelFormat::I420, w, h).unwrap();
    let coded = encode(&vpu, &raw, &frames(&raw, 6), &[Control::GopSize(3)]);
    let reference = bare_decode(&coded, &raw);

    let s = vpu.open(Role::Decoder, PixelFormat::Fwht).unwrap();
    s.set_format(QueueKind::Output, &Format::coded(PixelFormat::Fwht, w, h))
        .unwrap();
    let outs = s
        .allocate_buffers(QueueKind::Output, 6, Memory::Allocate(Coherency::Coherent))
        .unwrap();
    s.stream_on(QueueKind::Output).unwrap();
    for (mut b, c) in outs.into_iter().zip(&coded) {
        b.region.cpu_write()[..c.data.len()].copy_from_slice(&c.data);
        b.bytesused = c.data.len();
        b.timestamp = c.timestamp;
        s.queue(b).unwrap();
    }
    let sc = loop {
        match s.wait_event(Duration::from_secs(5)).unwrap() {
            Some(Event::SourceChange(sc)) => break sc,
            Some(Event::BufferDone(_)) => {}
            None => panic!("no source change"),
        }
    };
    let vicodec = s.set_format(QueueKind::Capture, &sc.format).unwrap();
    assert_eq!(
        (vicodec.planes, vicodec.size),
        (raw.planes.clone(), raw.size),
        "set_format gives the VPU's own layout"
    );

    // Layouts the decoder cannot fill are refused, with the reason.
    let mut short = gst_default_i420(w, h);
    short.planes[1].rows -= 1;
    let err = s.set_layout(QueueKind::Capture, &short).unwrap_err();
    assert!(
        matches!(err, M2mError::InvalidFormat { .. }) && err.to_string().contains("rows"),
        "{err}"
    );
    let mut two = gst_default_i420(w, h);
    two.planes.pop();
    let err = s.set_layout(QueueKind::Capture, &two).unwrap_err();
    assert!(err.to_string().contains("planes"), "{err}");
    let mut overflow = gst_default_i420(w, h);
    overflow.size -= 1;
    let err = s.set_layout(QueueKind::Capture, &overflow).unwrap_err();
    assert!(err.to_string().contains("beyond"), "{err}");

    let layout = gst_default_i420(w, h);
    let effective = s
        .set_layout(QueueKind::Capture, &layout)
        .unwrap()
        .expect("the emulated VPU takes a client layout");
    assert_eq!(
        (effective.planes.clone(), effective.size),
        (layout.planes.clone(), layout.size)
    );
    assert_eq!(s.format(QueueKind::Capture).unwrap(), effective);
    let caps = s
        .allocate_buffers(
            QueueKind::Capture,
            3,
            Memory::Allocate(Coherency::Cacheable),
        )
        .unwrap();
    assert!(caps.iter().all(|b| b.region.size() >= layout.size));
    s.stream_on(QueueKind::Capture).unwrap();
    for c in caps {
        s.queue(c).unwrap();
    }
    let mut got = 0;
    while got < coded.len() {
        let Some(Event::BufferDone(b)) = s.wait_event(Duration::from_secs(5)).unwrap() else {
            continue;
        };
        if b.queue == QueueKind::Output {
            continue;
        }
        assert!(b.error.is_none(), "frame {got}: {:?}", b.error);
        assert_eq!(b.bytesused, layout.size);
        b.region.sync_for_cpu().unwrap();
        {
            let data = b.region.cpu_read();
            // Every visible sample equals vicodec's layout's.
            for (p, q) in layout.planes.iter().zip(&raw.planes) {
                let cols = if p.offset == 0 { w } else { w.div_ceil(2) } as usize;
                for y in 0..p.rows {
                    assert_eq!(
                        &data[p.offset + y * p.stride..][..cols],
                        &reference[got][q.offset + y * q.stride..][..cols],
                        "frame {got}, row {y} of the plane at {}",
                        p.offset
                    );
                }
            }
        }
        got += 1;
        let mut again = Buffer::new(QueueKind::Capture, b.index, b.region);
        again.flags = BufferFlags::NONE;
        s.queue(again).unwrap();
    }

    // A new format brings the VPU's own layout back.
    s.stream_off(QueueKind::Capture).unwrap();
    let again = s.set_format(QueueKind::Capture, &sc.format).unwrap();
    assert_eq!((again.planes, again.size), (raw.planes.clone(), raw.size));

    // The encoder reads its own layout only (it codes the padding rows).
    let e = vpu.open(Role::Encoder, PixelFormat::Fwht).unwrap();
    e.set_format(QueueKind::Output, &raw).unwrap();
    let err = e.set_layout(QueueKind::Output, &layout).unwrap_err();
    assert!(err.to_string().contains("own layout"), "{err}");
    assert_eq!(
        vpu.checker().violation_count(),
        0,
        "{:?}",
        vpu.checker().violations()
    );
}
