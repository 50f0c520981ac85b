//! The `vpuh264enc` element against real peers we did not write:
//! `avdec_h264` (FFmpeg) and `openh264dec` (Cisco) decode its output with the
//! exact frame count and timestamps and a PSNR against the source above a
//! floor; `h264parse ! mp4mux` then `qtdemux ! h264parse ! avdec_h264` round
//! trips it through a file. Rate control: a bitrate change in PLAYING
//! changes the output size from the next frame (an IDR), CBR holds the rate, constant
//! QP follows the quantizer, qp-min/qp-max bound it. GstForceKeyUnit gives an
//! IDR with SPS and PPS; a new size mid-stream starts with one. EOS on 0, 1
//! and 2 frames; refusals name what cannot be satisfied; latency. Throughput
//! mode (`low-latency=false`, the codec holds frames): N frames in, N units
//! out for N = 0, 1, 2, 30 with their timestamps, decoded frame-exact by
//! avdec_h264; a bitrate change loses no frame; force key unit; a flush
//! discards the held frames; the latency counts them.
//!
//! Clips: `videotestsrc pattern=smpte horizontal-speed=3` (scrolling bars,
//! deterministic), 320x240 I420 at 30/1, on the emulated VPU with its
//! coherency checker on (every run asserts zero violations).

use std::sync::{Mutex, OnceLock};

use gst::prelude::*;
use gst_video::prelude::*;

mod pipeline_support;
use pipeline_support::{assert_blurbs, collect, launch, play_to_eos, start_errors, stats};

const W: u32 = 320;
const H: u32 = 240;
const FRAMES: usize = 30;
/// Mean PSNR (over Y, U and V samples) of 30 decoded frames against the
/// source at 500 kbit/s. Measured 39.2 dB with both decoders (x264
/// ultrafast, constrained baseline); the floor leaves room for encoder
/// changes but catches a broken frame (a wrong frame scores below 20 dB).
const PSNR_FLOOR_500K: f64 = 32.0;

fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().expect("GStreamer initialises");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
        for f in [
            "vpuh264enc",
            "avdec_h264",
            "openh264dec",
            "h264parse",
            "mp4mux",
            "qtdemux",
        ] {
            assert!(
                gst::ElementFactory::find(f).is_some(),
                "{f} is missing: scripts/setup.sh installs it"
            );
        }
    });
}

fn source(n: usize) -> String {
    format!(
        "videotestsrc num-buffers={n} pattern=smpte horizontal-speed=3 \
         ! video/x-raw,format=I420,width={W},height={H},framerate=30/1"
    )
}

/// What the sink received, and the encoder's stats.
struct Out {
    buffers: Vec<gst::Buffer>,
    caps: Option<gst::Caps>,
    stats: Option<gst::Structure>,
}

/// Runs `desc` (with a `fakesink name=sink`, optionally `name=enc`) to EOS;
/// `on_buffer(n, enc)` runs on the encoder's sink pad for input buffer `n`.
/// Called on the encoder's sink pad with the input buffer's number.
type OnBuffer = Box<dyn Fn(usize, &gst::Element) + Send + Sync>;

fn run_with(desc: &str, on_buffer: Option<OnBuffer>) -> Out {
    init();
    let pipeline = launch(desc);
    let got = collect(&pipeline.by_name("sink").unwrap());
    if let (Some(f), Some(enc)) = (on_buffer, pipeline.by_name("enc")) {
        let count = Mutex::new(0usize);
        let weak = enc.downgrade();
        enc.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                let mut n = count.lock().unwrap();
                if let Some(enc) = weak.upgrade() {
                    f(*n, &enc);
                }
                *n += 1;
                gst::PadProbeReturn::Ok
            });
    }
    play_to_eos(&pipeline, desc, 60);
    let stats = pipeline.by_name("enc").map(|_| stats(&pipeline, "enc"));
    pipeline.set_state(gst::State::Null).unwrap();
    let (buffers, caps) = std::mem::take(&mut *got.lock().unwrap());
    if let Some(s) = &stats {
        assert_eq!(
            s.get::<u64>("coherency-violations").unwrap(),
            0,
            "the VPU's coherency checker saw no violation: {s}"
        );
    }
    Out {
        buffers,
        caps,
        stats,
    }
}

fn run(desc: &str) -> Out {
    run_with(desc, None)
}

/// NAL unit types of an Annex-B access unit, in order.
fn nal_types(data: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            types.push(data[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// An IDR access unit with its headers: SPS, then PPS, then IDR slices
/// (x264 puts its version SEI before the first slice), and no other slice.
fn idr_with_headers(types: &[u8]) -> bool {
    let pos = |t: u8| types.iter().position(|&x| x == t);
    matches!((pos(7), pos(8), pos(5)), (Some(s), Some(p), Some(i)) if s < p && p < i)
        && !types.contains(&1)
}

fn is_key(b: &gst::BufferRef) -> bool {
    !b.flags().contains(gst::BufferFlags::DELTA_UNIT)
}

fn bytes(b: &gst::BufferRef) -> Vec<u8> {
    b.map_readable().unwrap().to_vec()
}

/// Mean PSNR over the Y, U and V samples of each pair of I420 frames.
fn mean_psnr(a: &[gst::Buffer], b: &[gst::Buffer]) -> f64 {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, W, H)
        .build()
        .unwrap();
    let mut total = 0.0;
    for (x, y) in a.iter().zip(b) {
        let fx = gst_video::VideoFrameRef::from_buffer_ref_readable(x.as_ref(), &info).unwrap();
        let fy = gst_video::VideoFrameRef::from_buffer_ref_readable(y.as_ref(), &info).unwrap();
        let (mut se, mut n) = (0f64, 0f64);
        for p in 0..3 {
            let (w, h) = if p == 0 {
                (W as usize, H as usize)
            } else {
                (W as usize / 2, H as usize / 2)
            };
            let (sx, sy) = (
                fx.plane_stride()[p as usize] as usize,
                fy.plane_stride()[p as usize] as usize,
            );
            let (dx, dy) = (fx.plane_data(p).unwrap(), fy.plane_data(p).unwrap());
            for r in 0..h {
                for c in 0..w {
                    let d = f64::from(dx[r * sx + c]) - f64::from(dy[r * sy + c]);
                    se += d * d;
                    n += 1.0;
                }
            }
        }
        let mse = se / n;
        total += if mse == 0.0 {
            99.0
        } else {
            10.0 * (255.0 * 255.0 / mse).log10()
        };
    }
    total / a.len() as f64
}

fn frame_pts(i: usize) -> gst::ClockTime {
    gst::ClockTime::SECOND.mul_div_floor(i as u64, 30).unwrap()
}

fn check_decoded_by(decoder: &str) {
    let src = run(&format!("{} ! fakesink name=sink", source(FRAMES)));
    let out = run(&format!(
        "{} ! vpuh264enc name=enc bitrate=500 ! {decoder} \
         ! video/x-raw,format=I420 ! fakesink name=sink",
        source(FRAMES)
    ));
    assert_eq!(out.buffers.len(), FRAMES, "{decoder}: every frame decoded");
    for (i, b) in out.buffers.iter().enumerate() {
        assert_eq!(
            b.pts(),
            Some(frame_pts(i)),
            "{decoder}: frame {i}'s timestamp"
        );
    }
    let psnr = mean_psnr(&src.buffers, &out.buffers);
    println!("{decoder}: {FRAMES} frames at 500 kbit/s, mean PSNR {psnr:.2} dB");
    assert!(
        psnr >= PSNR_FLOOR_500K,
        "{decoder}: PSNR {psnr:.2} dB below the {PSNR_FLOOR_500K} dB floor"
    );
    let stats = out.stats.unwrap();
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), FRAMES as u64);
    // videotestsrc writes into the VPU pool the encoder proposes: no copy.
    assert_eq!(stats.get::<u64>("frame-copies").unwrap(), 0, "{stats}");
    assert_eq!(
        stats.get::<u64>("imported-frames").unwrap(),
        FRAMES as u64,
        "{stats}"
    );
}

#[test]
fn avdec_h264_decodes_every_frame_above_the_psnr_floor() {
    check_decoded_by("avdec_h264");
}

#[test]
fn openh264dec_decodes_every_frame_above_the_psnr_floor() {
    check_decoded_by("openh264dec");
}

#[test]
fn access_units_idr_headers_and_caps() {
    let out = run(&format!(
        "{} ! vpuh264enc name=enc gop-size=10 ! fakesink name=sink",
        source(25)
    ));
    assert_eq!(out.buffers.len(), 25);
    let caps = out.caps.unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!(s.name(), "video/x-h264");
    assert_eq!(s.get::<&str>("stream-format").unwrap(), "byte-stream");
    assert_eq!(s.get::<&str>("alignment").unwrap(), "au");
    assert_eq!(s.get::<&str>("profile").unwrap(), "constrained-baseline");
    for (i, b) in out.buffers.iter().enumerate() {
        let types = nal_types(&bytes(b));
        let idr = i % 10 == 0;
        assert_eq!(is_key(b), idr, "frame {i}: IDR every 10 frames ({types:?})");
        assert_eq!(idr_with_headers(&types), idr, "frame {i}: {types:?}");
        if !idr {
            assert!(
                types.iter().all(|&t| t == 1),
                "frame {i}: non-IDR slices only ({types:?})"
            );
        }
        assert_eq!(b.pts(), Some(frame_pts(i)));
    }
}

#[test]
fn profile_and_level_follow_downstream_caps() {
    for (profile, level) in [("main", "3"), ("high", "4.1"), ("baseline", "2.1")] {
        let out = run(&format!(
            "{} ! vpuh264enc name=enc ! video/x-h264,profile={profile},level=(string){level} \
             ! h264parse ! video/x-h264,stream-format=byte-stream ! fakesink name=sink",
            source(3)
        ));
        assert_eq!(out.buffers.len(), 3);
        let s = out.caps.as_ref().unwrap().structure(0).unwrap().to_owned();
        // h264parse reads the SPS: what the stream really is.
        let parsed = s.get::<&str>("profile").unwrap();
        let expect = if profile == "baseline" {
            "constrained-baseline"
        } else {
            profile
        };
        assert_eq!(parsed, expect, "{s}");
        assert_eq!(s.get::<&str>("level").unwrap(), level, "{s}");
    }
}

#[test]
fn bitrate_change_in_playing_changes_the_size_from_the_next_frame() {
    bitrate_change("");
}

/// The frames the codec holds are coded with the old rate and pushed
/// before the encoder reopens: none is lost, the IDR is still frame 30.
#[test]
fn bitrate_change_in_throughput_mode_loses_no_frame() {
    bitrate_change("low-latency=false");
}

fn bitrate_change(props: &str) {
    let desc = format!(
        "{} ! vpuh264enc name=enc bitrate=2000 gop-size=1000 {props} ! fakesink name=sink",
        source(60)
    );
    let out = run_with(
        &desc,
        Some(Box::new(|n, enc| {
            if n == 30 {
                enc.set_property("bitrate", 200u32);
            }
        })),
    );
    assert_eq!(out.buffers.len(), 60, "{props}: every frame out");
    for (i, b) in out.buffers.iter().enumerate() {
        assert_eq!(
            b.pts(),
            Some(frame_pts(i)),
            "{props}: frame {i}'s timestamp"
        );
    }
    let size =
        |r: std::ops::Range<usize>| -> usize { out.buffers[r].iter().map(|b| b.size()).sum() };
    let (before, after) = (size(10..30), size(40..60));
    let (kb_before, kb_after) = (before * 8 * 30 / 20 / 1000, after * 8 * 30 / 20 / 1000);
    println!("2000 kbit/s -> {kb_before} kbit/s; 200 kbit/s -> {kb_after} kbit/s");
    assert!(
        after * 4 < before,
        "the lower bitrate makes frames 40..60 ({after} B) a quarter of 10..30 ({before} B) or less"
    );
    let keys: Vec<usize> = (0..60).filter(|&i| is_key(&out.buffers[i])).collect();
    assert_eq!(
        keys,
        vec![0, 30],
        "the new rate starts with an IDR at the frame after the change"
    );
}

#[test]
fn cbr_holds_the_rate() {
    let out = run(&format!(
        "videotestsrc num-buffers=60 pattern=ball \
         ! video/x-raw,format=I420,width={W},height={H},framerate=30/1 \
         ! vpuh264enc name=enc rate-control=cbr bitrate=400 ! fakesink name=sink"
    ));
    assert_eq!(out.buffers.len(), 60);
    let total: usize = out.buffers.iter().map(|b| b.size()).sum();
    let kbps = total as f64 * 8.0 / 2.0 / 1000.0;
    println!("cbr 400 kbit/s on an easy clip: {kbps:.0} kbit/s");
    // Filler keeps an easy clip at the rate instead of far below it.
    assert!(
        (300.0..=500.0).contains(&kbps),
        "CBR at 400 kbit/s gave {kbps:.0} kbit/s"
    );
}

#[test]
fn constant_qp_follows_the_quantizer() {
    let encode = |qp: u32| {
        let src = run(&format!("{} ! fakesink name=sink", source(10)));
        let out = run(&format!(
            "{} ! vpuh264enc name=enc rate-control=constant-qp quantizer={qp} \
             ! tee name=t ! queue ! fakesink name=coded t. ! queue ! avdec_h264 \
             ! video/x-raw,format=I420 ! fakesink name=sink",
            source(10)
        ));
        assert_eq!(out.buffers.len(), 10);
        mean_psnr(&src.buffers, &out.buffers)
    };
    let fine = encode(12);
    let coarse = encode(40);
    println!("constant-qp: quantizer 12 -> {fine:.2} dB, 40 -> {coarse:.2} dB");
    assert!(fine > 45.0, "quantizer 12 is near lossless: {fine:.2} dB");
    assert!(
        coarse + 10.0 < fine,
        "quantizer 40 is much coarser: {coarse:.2} vs {fine:.2} dB"
    );
}

#[test]
fn force_key_unit_gives_an_idr_with_sps_and_pps() {
    force_key_unit(true);
}

#[test]
fn force_key_unit_gives_an_idr_on_its_frame_in_throughput_mode() {
    force_key_unit(false);
}

/// Frame `i` of a 160x120 I420 stream at 25 fps: a pattern that changes
/// with `i` (`k * a + i * b` mod 251 at byte `k`, for `(a, b) = mix`).
fn qqvga_frame(i: u64, (a, b): (u64, u64)) -> gst::Buffer {
    let mut buffer = gst::Buffer::with_size(160 * 120 * 3 / 2).unwrap();
    {
        let buf = buffer.get_mut().unwrap();
        buf.set_pts(gst::ClockTime::from_mseconds(40 * i));
        buf.set_duration(gst::ClockTime::from_mseconds(40));
        let mut m = buf.map_writable().unwrap();
        for (k, v) in m.iter_mut().enumerate() {
            *v = ((k as u64 * a + i * b) % 251) as u8;
        }
    }
    buffer
}

fn force_key_unit(low_latency: bool) {
    init();
    let mut h = gst_check::Harness::new("vpuh264enc");
    h.element().unwrap().set_property("gop-size", 1000u32);
    h.element()
        .unwrap()
        .set_property("low-latency", low_latency);
    h.set_src_caps_str("video/x-raw,format=I420,width=160,height=120,framerate=25/1");
    let frame = |i: u64| qqvga_frame(i, (7, 13));
    for i in 0..4 {
        h.push(frame(i)).unwrap();
    }
    assert!(
        h.push_upstream_event(
            gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build()
        )
    );
    for i in 4..8 {
        h.push(frame(i)).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let mut out = Vec::new();
    while let Some(b) = h.try_pull() {
        out.push(b);
    }
    assert_eq!(out.len(), 8);
    for (i, b) in out.iter().enumerate() {
        let types = nal_types(&bytes(b));
        let idr = i == 0 || i == 4;
        assert_eq!(is_key(b), idr, "frame {i} ({types:?})");
        assert_eq!(
            idr_with_headers(&types),
            idr,
            "frame {i}: SPS, PPS and IDR slices exactly on key frames ({types:?})"
        );
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(40 * i as u64)));
    }
}

#[test]
fn mp4_round_trip_keeps_count_and_timestamps() {
    let dir = std::env::temp_dir().join(format!("vpuh264enc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("clip.mp4");
    let written = run(&format!(
        "{} ! vpuh264enc name=enc ! h264parse ! mp4mux ! tee name=t ! queue \
         ! filesink location={} t. ! queue ! fakesink name=sink",
        source(FRAMES),
        file.display()
    ));
    assert!(!written.buffers.is_empty());
    let read = run(&format!(
        "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 ! fakesink name=sink",
        file.display()
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(read.buffers.len(), FRAMES, "every frame back from the file");
    for (i, b) in read.buffers.iter().enumerate() {
        let pts = b.pts().unwrap();
        let want = frame_pts(i);
        let diff = pts.nseconds().abs_diff(want.nseconds());
        // mp4mux stores times in its timescale: allow its rounding.
        assert!(diff < 1_000_000, "frame {i}: pts {pts} vs {want}");
    }
}

/// Throughput mode: the codec holds frames, yet N frames in give N units
/// out, in order, with their timestamps (the held ones at EOS), the first an
/// IDR; avdec_h264 decodes exactly N frames.
#[test]
fn throughput_mode_every_frame_out_in_order_with_its_timestamp() {
    for n in [0, 1, 2, 30] {
        let out = run(&format!(
            "{} ! vpuh264enc name=enc low-latency=false ! fakesink name=sink",
            source(n)
        ));
        assert_eq!(out.buffers.len(), n, "{n} frames in, {n} out");
        for (i, b) in out.buffers.iter().enumerate() {
            assert_eq!(b.pts(), Some(frame_pts(i)), "frame {i} of {n}");
            let types = nal_types(&bytes(b));
            assert_eq!(is_key(b), i == 0, "frame {i} of {n}: {types:?}");
        }
        if n > 0 {
            assert!(idr_with_headers(&nal_types(&bytes(&out.buffers[0]))));
        }
        let decoded = run(&format!(
            "{} ! vpuh264enc name=enc low-latency=false ! h264parse ! avdec_h264 \
             ! fakesink name=sink",
            source(n)
        ));
        assert_eq!(decoded.buffers.len(), n, "avdec_h264: {n} frames");
        for (i, b) in decoded.buffers.iter().enumerate() {
            assert_eq!(b.pts(), Some(frame_pts(i)), "decoded frame {i} of {n}");
        }
    }
}

/// A flushing seek in throughput mode: the frames the codec held are
/// discarded, the stream after it starts with an IDR, and every frame of
/// the new segment comes out.
#[test]
fn a_flush_in_throughput_mode_discards_held_frames_cleanly() {
    init();
    let mut h = gst_check::Harness::new("vpuh264enc");
    h.element().unwrap().set_property("low-latency", false);
    h.set_src_caps_str("video/x-raw,format=I420,width=160,height=120,framerate=25/1");
    let frame = |i: u64| qqvga_frame(i, (3, 11));
    for i in 0..3 {
        h.push(frame(i)).unwrap();
    }
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_mseconds(400));
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    // Whatever left before the flush was let through; what was held is gone.
    while h.try_pull().is_some() {}
    for i in 10..16 {
        h.push(frame(i)).unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let mut out = Vec::new();
    while let Some(b) = h.try_pull() {
        out.push(b);
    }
    let pts: Vec<u64> = out.iter().map(|b| b.pts().unwrap().mseconds()).collect();
    assert_eq!(
        pts,
        vec![400, 440, 480, 520, 560, 600],
        "the new segment, all of it"
    );
    assert!(is_key(&out[0]) && idr_with_headers(&nal_types(&bytes(&out[0]))));
    assert!(out[1..].iter().all(|b| !is_key(b)));
}

#[test]
fn eos_on_zero_one_and_two_frames() {
    for n in 0..=2 {
        let out = run(&format!(
            "{} ! vpuh264enc name=enc ! fakesink name=sink",
            source(n)
        ));
        assert_eq!(out.buffers.len(), n, "{n} frames in, {n} out");
        if n > 0 {
            assert!(is_key(&out.buffers[0]));
            assert!(idr_with_headers(&nal_types(&bytes(&out.buffers[0]))));
        }
    }
}

/// The error of `source ! vpuh264enc {props} ! capsfilter ! fakesink` whose
/// capsfilter gets `caps` after linking (so the refusal comes from the
/// encoder's negotiation, not from a link failure of the template).
fn refusal(source: &str, props: &str, caps: &str) -> String {
    init();
    let desc = format!("{source} ! vpuh264enc {props} ! capsfilter name=f ! fakesink");
    let pipeline = launch(&desc);
    if !caps.is_empty() {
        let caps: gst::Caps = caps.parse().unwrap();
        pipeline.by_name("f").unwrap().set_property("caps", caps);
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap_or_else(|| panic!("{desc}: neither EOS nor an error within 30 s"));
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.view() {
        gst::MessageView::Error(e) => {
            let from = e.src().map(|s| s.name().to_string()).unwrap_or_default();
            assert!(
                from.starts_with("vpuh264enc"),
                "the encoder itself reports it, not {from}: {:?}",
                e.error()
            );
            format!("{} ({})", e.error(), e.debug().unwrap_or_default())
        }
        _ => panic!("{desc} {caps}: reached EOS, an error was expected"),
    }
}

#[test]
fn what_cannot_be_satisfied_is_refused_with_the_reason() {
    let src = source(3);
    let e = refusal(&src, "", "video/x-h264,profile=high-4:4:4");
    assert!(
        e.contains("high-4:4:4") && e.contains("constrained-baseline, baseline, main and high"),
        "{e}"
    );
    let e = refusal(&src, "", "video/x-h264,level=(string)1.1");
    assert!(
        e.contains("level") && e.contains("1.1") && e.contains("macroblocks"),
        "{e}"
    );
    let e = refusal(&src, "", "video/x-h264,stream-format=avc");
    assert!(e.contains("h264parse"), "{e}");
    let odd = "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=321,height=241";
    let e = refusal(odd, "", "");
    assert!(
        e.contains("even frame size") && e.contains("321x241"),
        "{e}"
    );
    let e = refusal(&src, "qp-min=40 qp-max=30", "");
    assert!(e.contains("min QP 40 is above max QP 30"), "{e}");
}

#[test]
fn latency_is_reported() {
    let frame = gst::ClockTime::SECOND.mul_div_ceil(1, 30).unwrap();
    let min = live_latency("");
    assert_eq!(
        min, frame,
        "low latency: the one frame a coded frame waits for the next"
    );
}

/// Throughput mode: that frame plus the frames x264's frame threads hold
/// (x264_encoder_maximum_delayed_frames, as x264enc reports it: 3 on 2
/// CPUs).
#[test]
fn latency_in_throughput_mode_counts_the_frames_the_codec_holds() {
    use gstrsvpu::vpu::codec::h264enc::{H264Params, delayed_frames};
    let params = H264Params {
        low_latency: false,
        ..H264Params::default()
    };
    let held = u64::from(delayed_frames(&params, H));
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert!(held > 0, "frame threads hold frames on several CPUs");
    }
    let min = live_latency("low-latency=false");
    assert_eq!(
        min,
        gst::ClockTime::SECOND.mul_div_ceil(1 + held, 30).unwrap(),
        "{held} frames held + 1"
    );
    assert!(min > live_latency("") || held == 0);
}

/// The minimum latency `vpuh264enc {props}` adds in a live pipeline: what
/// its src pad answers less what its upstream (the live source) answers.
fn live_latency(props: &str) -> gst::ClockTime {
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=smpte \
         ! video/x-raw,format=I420,width={W},height={H},framerate=30/1 \
         ! vpuh264enc name=enc {props} ! fakesink sync=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    res.unwrap();
    let enc = pipeline.by_name("enc").unwrap();
    let latency = |pad: &gst::Pad, peer: bool| {
        let mut q = gst::query::Latency::new();
        let answered = if peer {
            pad.peer_query(&mut q)
        } else {
            pad.query(&mut q)
        };
        assert!(answered, "latency query on {}", pad.name());
        let (live, min, _max) = q.result();
        assert!(live);
        min
    };
    let through = latency(&enc.static_pad("src").unwrap(), false);
    let upstream = latency(&enc.static_pad("sink").unwrap(), true);
    pipeline.set_state(gst::State::Null).unwrap();
    through - upstream
}

#[test]
fn qp_min_and_qp_max_bound_rate_control() {
    let total = |props: &str| -> usize {
        let out = run(&format!(
            "{} ! vpuh264enc name=enc {props} ! fakesink name=sink",
            source(20)
        ));
        assert_eq!(out.buffers.len(), 20);
        out.buffers.iter().map(|b| b.size()).sum()
    };
    let free_high = total("bitrate=8000");
    let floored = total("bitrate=8000 qp-min=40");
    let free_low = total("bitrate=100");
    let capped = total("bitrate=100 qp-max=20");
    println!(
        "8000 kbit/s: {free_high} B, with qp-min=40: {floored} B; \
         100 kbit/s: {free_low} B, with qp-max=20: {capped} B"
    );
    assert!(
        floored * 3 < free_high,
        "qp-min=40 keeps the quantiser coarse"
    );
    assert!(capped > free_low * 3, "qp-max=20 keeps the quantiser fine");
}

#[test]
fn a_new_size_mid_stream_starts_a_new_stream_with_an_idr() {
    new_size_mid_stream("");
}

/// The same in throughput mode: the frames the codec holds at the caps
/// change come out (drained) before the new size starts.
#[test]
fn a_new_size_mid_stream_in_throughput_mode_loses_no_frame() {
    new_size_mid_stream("low-latency=false");
}

fn new_size_mid_stream(props: &str) {
    // The capsfilter before the encoder switches 320x240 -> 160x120 after
    // frame 4: the element drains the first size, the VPU takes the new
    // format, and the second size starts with SPS, PPS and an IDR; avdec_h264
    // decodes both (an error would fail the run).
    let out = run_with(
        &format!(
            "videotestsrc num-buffers=12 pattern=smpte ! video/x-raw,format=I420,framerate=30/1 \
         ! videoscale ! capsfilter name=size caps=video/x-raw,width=320,height=240 \
         ! vpuh264enc name=enc {props} ! tee name=t ! queue ! fakesink name=sink t. ! queue \
         ! h264parse ! avdec_h264 ! fakesink"
        ),
        Some(Box::new(|n, enc| {
            if n == 4
                && let Some(bin) = enc.parent().and_then(|p| p.downcast::<gst::Bin>().ok())
            {
                let caps: gst::Caps = "video/x-raw,width=160,height=120".parse().unwrap();
                bin.by_name("size").unwrap().set_property("caps", caps);
            }
        })),
    );
    assert_eq!(out.buffers.len(), 12, "{props}: every frame of both sizes");
    for (i, b) in out.buffers.iter().enumerate() {
        // videotestsrc restarts its timestamp arithmetic at the new caps
        // (199999999 ns for frame 6): allow its rounding.
        let pts = b.pts().unwrap().nseconds();
        let want = frame_pts(i).nseconds();
        assert!(
            pts.abs_diff(want) <= 1,
            "{props}: frame {i}: {pts} vs {want}"
        );
    }
    let s = out.caps.as_ref().unwrap().structure(0).unwrap().to_owned();
    assert_eq!(s.get::<i32>("width").unwrap(), 160, "{s}");
    let keys: Vec<usize> = (0..12).filter(|&i| is_key(&out.buffers[i])).collect();
    assert_eq!(keys.len(), 2, "one IDR per size: {keys:?}");
    assert!(keys[1] >= 4, "{keys:?}");
    assert!(idr_with_headers(&nal_types(&bytes(&out.buffers[keys[1]]))));
}

#[test]
fn properties_read_like_a_manual() {
    init();
    let factory = gst::ElementFactory::find("vpuh264enc").unwrap();
    assert_eq!(
        factory.metadata("klass"),
        Some("Codec/Encoder/Video/Hardware")
    );
    assert_eq!(factory.rank(), gst::Rank::SECONDARY);
    let enc = factory.create().build().unwrap();
    assert_blurbs(
        &enc,
        &[
            "bitrate",
            "rate-control",
            "gop-size",
            "qp-min",
            "qp-max",
            "quantizer",
            "low-latency",
            "extra-controls",
            "device",
            "memory-policy",
            "stats",
        ],
    );
    assert!(
        enc.find_property("bitrate")
            .unwrap()
            .flags()
            .contains(gst::PARAM_FLAG_MUTABLE_PLAYING),
        "bitrate is changeable in PLAYING"
    );
    assert_eq!(enc.property::<u32>("bitrate"), 2048);
    assert_eq!(enc.property::<u32>("gop-size"), 30);
    assert!(
        enc.property::<bool>("low-latency"),
        "one in, one out by default"
    );
    assert!(
        !enc.find_property("low-latency")
            .unwrap()
            .flags()
            .contains(gst::PARAM_FLAG_MUTABLE_PLAYING),
        "low-latency changes the latency the pipeline was set up with: READY only"
    );
    enc.set_property("low-latency", false);
    assert!(!enc.property::<bool>("low-latency"));
    enc.set_property_from_str("rate-control", "constant-qp");
    enc.set_property("quantizer", 30u32);
    assert_eq!(enc.property::<u32>("quantizer"), 30);
    // extra-controls set the same settings as the properties.
    let s: gst::Structure = "controls,video_bitrate=3000000,video_gop_size=12"
        .parse()
        .unwrap();
    enc.set_property("extra-controls", s);
    assert_eq!(enc.property::<u32>("bitrate"), 3000);
    assert_eq!(enc.property::<u32>("gop-size"), 12);
    let stats = enc.property::<gst::Structure>("stats");
    assert_eq!(stats.name(), "vpuh264enc-stats");
}

#[test]
fn extra_controls_take_effect_and_unknown_ones_are_named() {
    let out = run(&format!(
        "{} ! vpuh264enc name=enc extra-controls=\"controls,video_gop_size=4,no_such_control=1\" \
         ! fakesink name=sink",
        source(9)
    ));
    let keys: Vec<usize> = (0..9).filter(|&i| is_key(&out.buffers[i])).collect();
    assert_eq!(keys, vec![0, 4, 8], "video_gop_size=4");

    // The unknown one is a warning on the bus that names it and lists the
    // names the encoder knows.
    let pipeline = gst::Pipeline::new();
    let enc = gst::ElementFactory::make("vpuh264enc").build().unwrap();
    pipeline.add(&enc).unwrap();
    let s: gst::Structure = "controls,no_such_control=1".parse().unwrap();
    enc.set_property("extra-controls", s);
    let msg = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Warning])
        .expect("a warning");
    let gst::MessageView::Warning(w) = msg.view() else {
        unreachable!("filtered on warnings")
    };
    let text = format!("{} {:?}", w.error(), w.debug());
    assert!(
        text.contains("no_such_control") && text.contains("h264_minimum_qp_value"),
        "{text}"
    );
}

#[test]
fn a_device_that_cannot_open_is_a_clear_error() {
    init();
    let errors =
        start_errors("videotestsrc num-buffers=2 ! vpuh264enc device=/dev/video99 ! fakesink");
    assert!(!errors.is_empty(), "an error is posted");
    assert!(
        errors[0].contains("H.264") && errors[0].contains("/dev/video99"),
        "{errors:?}"
    );
}
