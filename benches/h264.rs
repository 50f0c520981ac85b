//! H.264 decoding throughput: `vpuh264dec` next to `avdec_h264` (the same
//! library, libavcodec, wrapped by gst-libav) and `openh264dec` (Cisco's
//! openh264), in one run, at 1280x720 and 1920x1080.
//!
//! Content: `videotestsrc pattern=ball` (moving ball over black) and
//! `pattern=smpte horizontal-speed=4` (scrolling bars), encoded once by
//! x264enc (High profile, 2 B-frames, 4 Mbit/s at 720p, 8 Mbit/s at 1080p)
//! into memory before anything is timed. Each decoder then runs
//! `appsrc ! h264parse ! DECODER ! fakesink sync=false` over the same
//! access units, the fakesink answering the ALLOCATION query with
//! GstVideoMeta (as display and encoder sinks do, so no decoder copies a
//! frame into GStreamer's default layout for it): the pipeline is brought to
//! READY first, the clock runs from PLAYING to EOS on the bus.
//!
//! Per row: frames/s (wall) and CPU milliseconds per frame (all threads of
//! the process, from `CLOCK_PROCESS_CPUTIME_ID`), median of
//! the runs, and the ratio to `avdec_h264`. `avdec_h264` and `vpuh264dec`
//! both use libavcodec with frame threads (one per core), so the ratio is
//! the cost of the VPU model (bitstream and frame copies through shared
//! memory, the firmware's ring round trips) against GStreamer's direct
//! wrapping.
//!
//! Run: `cargo bench --bench h264`. Environment: H264_BENCH_FRAMES=n (default
//! 120), H264_BENCH_RUNS=n (default 3), H264_BENCH_SIZE=1280x720 (one size).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs once on
//! 10 frames at 320x240, as a smoke test. The load average is printed: on a
//! shared 2-core machine compare ratios within one run.

use std::time::Instant;

use gst::prelude::*;

mod common;
use common::{Plan, cpu_secs, feed, launch, loadavg, median, plan, wait_eos};

struct Coded {
    caps: gst::Caps,
    units: Vec<gst::Buffer>,
}

fn encode(pattern: &str, w: u32, h: u32, frames: usize) -> Coded {
    let bitrate = if w * h > 1280 * 720 { 8000 } else { 4000 };
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} {pattern} ! \
         video/x-raw,format=I420,width={w},height={h},framerate=30/1 ! \
         x264enc bitrate={bitrate} bframes=2 key-int-max=60 ! \
         video/x-h264,profile=high,stream-format=byte-stream,alignment=au ! \
         appsink name=sink sync=false"
    ));
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut caps = None;
    let mut units = Vec::new();
    while let Some(s) =
        sink.emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&30_000_000_000u64])
    {
        caps.get_or_insert_with(|| s.caps().unwrap().to_owned());
        units.push(s.buffer().unwrap().copy());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    Coded {
        caps: caps.expect("x264enc produced a stream"),
        units,
    }
}

/// One timed run: (wall seconds, CPU seconds, frames out).
fn run(coded: &Coded, decoder: &str) -> (f64, f64, u64) {
    let pipeline = launch(&format!(
        "appsrc name=src format=time ! h264parse ! {decoder} ! \
         identity name=count silent=true ! fakesink name=sink sync=false"
    ));
    // The sink takes GstVideoMeta, as display and encoder sinks do: every
    // decoder may then hand over frames in its own layout (the VPU's stores
    // 1080 rows as 1088) instead of copying them for fakesink.
    pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, |_, info| {
            if let Some(gst::QueryViewMut::Allocation(q)) = info.query_mut().map(|q| q.view_mut()) {
                q.add_allocation_meta::<gst_video::VideoMeta>(None);
            }
            gst::PadProbeReturn::Ok
        });
    let src = pipeline.by_name("src").unwrap();
    src.set_property("caps", &coded.caps);
    src.set_property("max-bytes", 0u64);
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = frames.clone();
    pipeline
        .by_name("count")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Ready).unwrap();
    let (t0, c0) = (Instant::now(), cpu_secs());
    pipeline.set_state(gst::State::Playing).unwrap();
    feed(&pipeline, coded.units.iter().cloned());
    wait_eos(&pipeline);
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
    pipeline.set_state(gst::State::Null).unwrap();
    (wall, cpu, frames.load(std::sync::atomic::Ordering::Relaxed))
}

fn main() {
    gst::init().expect("gst init");
    gstrsvpu::plugin_register_static().expect("rsvpu registers");
    let Plan { runs, sizes } = plan(
        "H264",
        3,
        &[(1280, 720, 120), (1920, 1080, 120)],
        (320, 240, 10),
    );
    let decoders = ["avdec_h264", "vpuh264dec", "openh264dec"];
    println!(
        "H.264 decode, x264enc High (2 B-frames), median of {runs} run(s); load average {}",
        loadavg()
    );
    for (w, h, frames) in sizes {
        for (name, pattern) in [
            ("ball", "pattern=ball"),
            ("scrolling smpte", "pattern=smpte horizontal-speed=4"),
        ] {
            let coded = encode(pattern, w, h, frames);
            println!("{w}x{h} {name} ({frames} frames, {} bytes):", {
                coded.units.iter().map(|b| b.size()).sum::<usize>()
            });
            let mut reference = None;
            for decoder in decoders {
                if gst::ElementFactory::find(decoder).is_none() {
                    println!("  {decoder:12} not installed");
                    continue;
                }
                let mut walls = Vec::new();
                let mut cpus = Vec::new();
                for _ in 0..runs {
                    let (wall, cpu, out) = run(&coded, decoder);
                    assert_eq!(out as usize, coded.units.len(), "{decoder}: frames out");
                    walls.push(wall);
                    cpus.push(cpu);
                }
                let n = coded.units.len() as f64;
                let fps = n / median(walls);
                let cpu_ms = median(cpus) * 1000.0 / n;
                let ratio = match reference {
                    None if decoder == "avdec_h264" => 1.0,
                    None => f64::NAN,
                    Some(r) => fps / r,
                };
                if decoder == "avdec_h264" {
                    reference = Some(fps);
                }
                println!(
                    "  {decoder:12} {fps:7.1} frames/s  {cpu_ms:6.2} ms CPU/frame{}",
                    {
                        if ratio.is_nan() {
                            String::new()
                        } else {
                            format!("  {ratio:.2}x avdec_h264")
                        }
                    }
                );
            }
        }
    }
    println!("load average after: {}", loadavg());
}
