//! H.264 encoders side by side, in one run: `vpuh264enc` (libx264 on the
//! emulated VPU; with its default `low-latency=true` and with `false`)
//! against GStreamer's `x264enc speed-preset=ultrafast` (the same libx264,
//! as the issue names it, and with `tune=zerolatency`, the configuration of
//! the VPU engine's low-latency mode) and `openh264enc` (Cisco's
//! libopenh264 2.3.1), at 1280x720 and 1920x1080 I420, 4 Mbit/s, an IDR
//! every 30 frames for all of them (`GOP`: `vpuh264enc`'s default; until
//! 2026-11-21 the peers ran with their own defaults, 250 and 90).
//!
//! Content: `videotestsrc pattern=smpte horizontal-speed=3` (scrolling bars),
//! captured once through an appsink before anything is timed; every encoder
//! gets the same buffers from `appsrc name=src ! <encoder> ! fakesink`
//! (system memory: vpuh264enc copies each frame once into VPU memory, as the
//! others copy it into their codec). The clock runs from PLAYING to EOS on the
//! bus, the pipeline having been brought to READY first.
//!
//! A second table has the encoders fed by `videotestsrc` itself (frames
//! generated during the run, `videotestsrc ! fakesink` alone printed as
//! well): there `vpuh264enc` proposes its pool, so the source writes into
//! VPU memory and nothing is copied before x264's own copy, as for
//! `x264enc` reading the source's memory in place.
//!
//! Printed per encoder: frames/s and CPU time of the process per frame
//! (all threads, also those that exited during the run, such as x264's once
//! the VPU closes it at EOS; `CLOCK_PROCESS_CPUTIME_ID`), medians of the
//! runs, and the output bitrate. Each
//! `vpuh264enc` row also gets its ratio of frames/s to the `x264enc` row of
//! the same configuration (the peer that wraps the same library, so below
//! 1.0 is our overhead): `vpuh264enc` (low latency: one in, one out) against
//! `x264enc speed-preset=ultrafast tune=zerolatency` (sliced threads), and
//! `vpuh264enc low-latency=false` (throughput: frame threads) against plain
//! `x264enc speed-preset=ultrafast` (frame threads, x264enc's default). The
//! runs go in rounds (each encoder once per round), so load changes of the
//! machine spread over every row.
//!
//! Then the engine's hand-off alone, per size and mode: the calling thread's
//! CPU time per frame to send a frame to libx264 and take its units, with
//! the frame copied into libavcodec's own frame (the engine's path before)
//! and lent from a mapping of the buffer (its path now), the same frames
//! through two encoders in turn; the difference is the copy the engine no
//! longer makes, measured without the noise of whole pipelines.
//!
//! Run: `cargo bench --bench h264enc`. H264ENC_BENCH_FRAMES=n frames per run
//! (default 90 at 720p, 60 at 1080p), H264ENC_BENCH_RUNS=n (default 3),
//! H264ENC_BENCH_SIZE=1280x720 (one size only), H264ENC_BENCH_STATS=1 (print
//! `vpuh264enc`'s `stats` after each appsrc run: copies, imports, maps),
//! H264ENC_BENCH_TABLES=system,live,handoff (the tables to run; all by
//! default), H264ENC_BENCH_ONLY=<encoder row name> (that row alone in the
//! appsrc tables, e.g. to profile one encoder: `perf record` the bench). Under `cargo test
//! --all-targets` (no `--bench`) it runs once on 3 small frames, as a smoke
//! test. The load average is printed before and after: on a shared 2-core
//! machine compare the ratios within one run.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use gst::prelude::*;

mod common;
use common::{
    Plan, capture, cpu_secs, feed, loadavg, median, plan, raw_caps, thread_cpu_secs, wait_eos,
};
use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::mem::{Checker, CheckerConfig, Coherency, Region};
use gstrsvpu::sys::DmaBackend;
use gstrsvpu::vpu::codec::h264enc::{FrameMapping, H264Encoder, H264Params};

struct Run {
    secs: f64,
    cpu: f64,
    frames: usize,
    bytes: usize,
}

/// One timed run of `appsrc ! encoder ! fakesink` over `frames`.
fn run(encoder: &str, w: u32, h: u32, frames: &[gst::Buffer]) -> Run {
    let launch = format!(
        "appsrc name=src format=time caps={} ! {encoder} ! fakesink name=sink sync=false \
         signal-handoffs=true",
        raw_caps(w, h)
    );
    let pipeline = common::launch(&launch);
    let out: Arc<Mutex<(usize, usize)>> = Arc::default();
    let out2 = Arc::clone(&out);
    pipeline
        .by_name("sink")
        .expect("fakesink")
        .connect("handoff", false, move |args| {
            let b = args[1].get::<gst::Buffer>().expect("a buffer");
            let mut o = out2.lock().unwrap();
            o.0 += 1;
            o.1 += b.size();
            None
        });
    pipeline.set_state(gst::State::Ready).expect("READY");
    let d = gst::ClockTime::SECOND / 30;
    let buffers: Vec<gst::Buffer> = frames
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut b = b.copy();
            let bm = b.get_mut().expect("fresh buffer");
            bm.set_pts(d * i as u64);
            bm.set_duration(d);
            b
        })
        .collect();
    let cpu0 = cpu_secs();
    let t = Instant::now();
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    feed(&pipeline, buffers);
    wait_eos(&pipeline);
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    if std::env::var_os("H264ENC_BENCH_STATS").is_some() {
        for e in pipeline.iterate_elements().into_iter().flatten() {
            let ours = e.factory().is_some_and(|f| f.name().starts_with("vpu"));
            if ours && e.find_property("stats").is_some() {
                println!("    {encoder}: {}", e.property::<gst::Structure>("stats"));
            }
        }
    }
    pipeline.set_state(gst::State::Null).expect("NULL");
    let (n, bytes) = *out.lock().unwrap();
    Run {
        secs,
        cpu,
        frames: n,
        bytes,
    }
}

/// One encoder of the table, and the row it is compared with.
struct Encoder {
    name: &'static str,
    launch: String,
    /// The `x264enc` row of the same configuration (`None`: a reference
    /// row itself, or another library).
    against: Option<&'static str>,
}

const ZEROLATENCY: &str = "x264enc ultrafast zerolatency";
/// Frames from one IDR to the next, for every encoder: `vpuh264enc`'s default
/// `gop-size`. Left to their defaults, `x264enc` would code one IDR in 250
/// frames and `openh264enc` one in 90: fewer of the costly intra frames,
/// not the same job.
const GOP: u32 = 30;
const FRAME_THREADS: &str = "x264enc ultrafast";

/// The table's rows for `frames` (`w` x `h`).
fn measure(frames: &[gst::Buffer], w: u32, h: u32, runs: usize, kbps: u32) {
    let n = frames.len();
    let encoders = [
        Encoder {
            name: "vpuh264enc",
            launch: format!("vpuh264enc gop-size={GOP} bitrate={kbps}"),
            against: Some(ZEROLATENCY),
        },
        Encoder {
            name: "vpuh264enc low-latency=false",
            launch: format!("vpuh264enc low-latency=false gop-size={GOP} bitrate={kbps}"),
            against: Some(FRAME_THREADS),
        },
        Encoder {
            name: ZEROLATENCY,
            launch: format!(
                "x264enc speed-preset=ultrafast tune=zerolatency key-int-max={GOP} bitrate={kbps}"
            ),
            against: None,
        },
        Encoder {
            name: FRAME_THREADS,
            launch: format!("x264enc speed-preset=ultrafast key-int-max={GOP} bitrate={kbps}"),
            against: None,
        },
        Encoder {
            name: "openh264enc",
            launch: format!(
                "openh264enc rate-control=bitrate gop-size={GOP} bitrate={}",
                kbps * 1000
            ),
            against: None,
        },
    ];
    // H264ENC_BENCH_ONLY=name: that encoder's row alone (for profiling).
    let only = std::env::var("H264ENC_BENCH_ONLY").ok();
    let encoders: Vec<Encoder> = encoders
        .into_iter()
        .filter(|e| only.as_deref().is_none_or(|o| e.name == o))
        .collect();
    // Rounds of one run per encoder, so that a change of the machine's load
    // hits every row alike.
    let mut results: Vec<Vec<Run>> = encoders.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (e, out) in encoders.iter().zip(&mut results) {
            let r = run(&e.launch, w, h, frames);
            assert_eq!(r.frames, n, "{}: every frame coded", e.name);
            out.push(r);
        }
    }
    let rows: Vec<(f64, f64, f64)> = results
        .iter()
        .map(|rs| {
            let fps = median(rs.iter().map(|r| n as f64 / r.secs).collect());
            let cpu = median(rs.iter().map(|r| r.cpu * 1000.0 / n as f64).collect());
            let bytes: usize = rs.iter().map(|r| r.bytes).sum();
            let kbit = bytes as f64 * 8.0 * 30.0 / (n * rs.len()) as f64 / 1000.0;
            (fps, cpu, kbit)
        })
        .collect();
    let fps_of = |name: &str| {
        encoders
            .iter()
            .position(|e| e.name == name)
            .map(|i| rows[i].0)
    };
    for (e, (fps, cpu, kbit)) in encoders.iter().zip(&rows) {
        let ratio = e
            .against
            .and_then(|a| fps_of(a).map(|r| format!("{:.2} vs {a}", fps / r)))
            .unwrap_or_default();
        println!(
            "{:<11} {:<30} {:>8.1} {:>10.2} {:>10.0}  {ratio}",
            format!("{w}x{h}"),
            e.name,
            fps,
            cpu,
            kbit,
        );
    }
}

/// `videotestsrc ! <encoder> ! fakesink`: the source writes each frame
/// into the encoder's own pool where the encoder proposes one (vpuh264enc
/// does: VPU memory, no copy), into its own system memory otherwise
/// (x264enc reads it in place). Frames are generated during the run, so
/// `videotestsrc ! fakesink` alone is timed too; per row: frames/s and
/// process CPU per frame, medians, runs in rounds.
fn live(w: u32, h: u32, n: usize, runs: usize, kbps: u32) {
    let source = format!(
        "videotestsrc num-buffers={n} pattern=smpte horizontal-speed=3 ! \
         video/x-raw,format=I420,width={w},height={h},framerate=30/1"
    );
    let rows = [
        ("videotestsrc ! fakesink", String::new()),
        (
            "videotestsrc ! vpuh264enc",
            format!("vpuh264enc gop-size={GOP} bitrate={kbps} !"),
        ),
        (
            "videotestsrc ! x264enc zerolatency",
            format!(
                "x264enc speed-preset=ultrafast tune=zerolatency key-int-max={GOP} \
                 bitrate={kbps} !"
            ),
        ),
    ];
    let mut results: Vec<Vec<(f64, f64)>> = rows.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for ((_, enc), out) in rows.iter().zip(&mut results) {
            let pipeline = common::launch(&format!("{source} ! {enc} fakesink sync=false"));
            pipeline.set_state(gst::State::Ready).expect("READY");
            let cpu0 = cpu_secs();
            let t = Instant::now();
            pipeline.set_state(gst::State::Playing).expect("PLAYING");
            wait_eos(&pipeline);
            out.push((t.elapsed().as_secs_f64(), cpu_secs() - cpu0));
            pipeline.set_state(gst::State::Null).expect("NULL");
        }
    }
    let fps: Vec<f64> = results
        .iter()
        .map(|rs| median(rs.iter().map(|r| n as f64 / r.0).collect()))
        .collect();
    for (i, ((name, _), rs)) in rows.iter().zip(&results).enumerate() {
        let cpu = median(rs.iter().map(|r| r.1 * 1000.0 / n as f64).collect());
        let ratio = if i == 1 {
            format!("{:.2} vs x264enc zerolatency", fps[1] / fps[2])
        } else {
            String::new()
        };
        println!(
            "{:<11} {:<34} {:>8.1} {:>10.2}  {ratio}",
            format!("{w}x{h}"),
            name,
            fps[i],
            cpu
        );
    }
}

/// The engine's hand-off alone (no GStreamer, no VPU rings): the same
/// frames coded by two `H264Encoder`s, one copying each frame into its
/// libavcodec frame (`encode`, the engine's path before frames were lent),
/// one lending it from a mapping of the buffer (`encode_mapped`, the
/// engine's path now), frame by frame in turn. Per path: the calling
/// thread's CPU time per frame for sending the frame and receiving its
/// units (our copy, if any, x264's copy of the picture and whatever of
/// x264's coding runs on the calling thread; the same for both but for the
/// copy), median over frames and runs.
fn handoff(w: u32, h: u32, frames: &[gst::Buffer], runs: usize) {
    let raw = Format::raw(PixelFormat::I420, w, h).expect("an I420 layout");
    let checker = Checker::new(CheckerConfig::default());
    let buffers: Vec<(Vec<u8>, std::sync::Arc<FrameMapping>)> = frames
        .iter()
        .map(|b| {
            let map = b.map_readable().expect("readable frame");
            // videotestsrc's tightly packed I420 into the contract layout
            // (whose rows may be padded: 1080 lines are stored as 1088).
            let (w, h) = (w as usize, h as usize);
            assert_eq!(map.size(), w * h * 3 / 2, "videotestsrc's I420 is packed");
            let mut bytes = vec![0; raw.size];
            let mut src = 0;
            for (plane, (rows, cols)) in
                raw.planes
                    .iter()
                    .zip([(h, w), (h / 2, w / 2), (h / 2, w / 2)])
            {
                for row in 0..rows {
                    let dst = plane.offset + row * plane.stride;
                    bytes[dst..dst + cols].copy_from_slice(&map[src..src + cols]);
                    src += cols;
                }
            }
            let region = Region::allocate(
                "bench-frame",
                raw.size,
                Coherency::Coherent,
                DmaBackend::Memfd,
                &checker,
            )
            .expect("a memfd region");
            region.cpu_write().copy_from_slice(&bytes);
            let mapping = FrameMapping::map(region.fd(), raw.size).expect("a frame mapping");
            (bytes, mapping)
        })
        .collect();
    for low_latency in [true, false] {
        let params = H264Params {
            bitrate: 4_000_000,
            low_latency,
            ..H264Params::default()
        };
        let (mut copy_ms, mut lent_ms) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let mut copied = H264Encoder::new(&raw, params).expect("encoder");
            let mut lent = H264Encoder::new(&raw, params).expect("encoder");
            for (i, (bytes, mapping)) in buffers.iter().enumerate() {
                let t = thread_cpu_secs();
                copied.encode(bytes, i as i64, false).expect("encode");
                while copied.receive().expect("receive").is_some() {}
                copy_ms.push((thread_cpu_secs() - t) * 1000.0);
                let t = thread_cpu_secs();
                let lease = lent
                    .encode_mapped(mapping, i as i64, false)
                    .expect("encode");
                while lent.receive().expect("receive").is_some() {}
                lent_ms.push((thread_cpu_secs() - t) * 1000.0);
                assert!(lease.released(), "libavcodec let go of frame {i}");
            }
            copied.flush().expect("flush");
            lent.flush().expect("flush");
        }
        let (c, l) = (median(copy_ms), median(lent_ms));
        println!(
            "{:<11} {:<30} copy {c:.3} ms/f, lent {l:.3} ms/f: {:.3} ms/f less",
            format!("{w}x{h}"),
            if low_latency {
                "engine hand-off, low latency"
            } else {
                "engine hand-off, throughput"
            },
            c - l,
        );
    }
}

fn main() {
    gst::init().expect("gst init");
    gstrsvpu::plugin_register_static().expect("rsvpu registers");
    for f in ["x264enc", "openh264enc", "vpuh264enc"] {
        assert!(
            gst::ElementFactory::find(f).is_some(),
            "{f} is missing (scripts/setup.sh installs the peers)"
        );
    }
    let Plan { runs, sizes } = plan(
        "H264ENC",
        3,
        &[(1280, 720, 90), (1920, 1080, 60)],
        (160, 120, 3),
    );
    let kbps = 4000;
    println!(
        "H.264 encoders, I420, videotestsrc pattern=smpte horizontal-speed=3 frames, \
         {kbps} kbit/s, median of {runs} runs"
    );
    println!("load average before: {}", loadavg());
    println!(
        "{:<11} {:<30} {:>8} {:>10} {:>10}  ratio (frames/s) vs its pair",
        "size", "encoder", "frames/s", "cpu ms/f", "kbit/s"
    );
    println!(
        "  (frames/s and cpu ms/f: medians over the runs; cpu ms/f: CPU time of the process\n   \
         per frame, all threads; kbit/s: output rate at 30 fps; ratio: each vpuh264enc row\n   \
         over the x264enc row of the same configuration, the same library: vpuh264enc (one\n   \
         in, one out) vs x264enc tune=zerolatency (sliced threads), vpuh264enc\n   \
         low-latency=false (frame threads) vs plain x264enc ultrafast (frame threads);\n   \
         below 1.0 is our overhead)"
    );
    let tables =
        std::env::var("H264ENC_BENCH_TABLES").unwrap_or_else(|_| "system,live,handoff".into());
    let table = |t: &str| tables.split(',').any(|x| x == t);
    for &(w, h, n) in sizes.iter().filter(|_| table("system")) {
        let (frames, _) = capture("pattern=smpte horizontal-speed=3", w, h, n);
        measure(&frames, w, h, runs, kbps);
    }
    println!(
        "from videotestsrc, frames generated during the run (into vpuh264enc's own VPU\n  \
         memory; x264enc reads videotestsrc's system memory in place): frames/s, cpu ms/f"
    );
    for &(w, h, n) in sizes.iter().filter(|_| table("live")) {
        live(w, h, n, runs, kbps);
    }
    println!(
        "engine hand-off: the calling thread's CPU per frame to send a frame and take its\n  \
         units, copying it into libavcodec's frame vs lending it (median of frames and runs)"
    );
    for (w, h, n) in sizes.into_iter().filter(|_| table("handoff")) {
        let (frames, _) = capture("pattern=smpte horizontal-speed=3", w, h, n);
        handoff(w, h, &frames, runs);
    }
    println!("load average after: {}", loadavg());
}
