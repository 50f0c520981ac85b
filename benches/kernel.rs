//! Our elements on the kernel's vicodec nodes against GStreamer's own
//! `v4l2fwhtenc` / `v4l2fwhtdec` on the same nodes and the same input:
//! frames/s, frames out, copies per frame. Runs inside the VM:
//!
//! ```sh
//! cargo bench --bench kernel --no-run
//! VMBED_RW=$PWD/target ../shared/vm/run-in-vm.sh target/release/deps/kernel-<hash> --bench
//! ```
//!
//! Encoders: `videotestsrc pattern=ball ! I420 640x480 ! ENC ! fakesink`
//! (both encoders propose their pool, so videotestsrc writes into the
//! driver's or our memory). Decoders: the same clip, coded once beforehand
//! by `vpufwhtenc device=emu`, one frame per buffer from an appsrc that
//! holds them all: `appsrc ! DEC ! video/x-raw,format=I420 ! fakesink` (I420
//! forced for both: unconstrained, v4l2fwhtdec picks YUY2 on vicodec and
//! decodes nothing).
//! Copies per frame, of raw frames and of coded frames: ours from their
//! `stats` (`frame-copies`; each copies every coded frame once by design),
//! the v4l2 elements' from what their buffer pools log in GStreamer's
//! `GST_PERFORMANCE` category ("slow copy into buffer", one per copy).
//!
//! Without `--bench` (under `cargo test`) it runs a few frames as a smoke
//! test; without the vicodec nodes (the host) it prints a loud skip line.
//! `KERNEL_BENCH_FRAMES` sets the frame count; `KERNEL_BENCH_VERBOSE=1`
//! prints every copy logged in `GST_PERFORMANCE`, with where it was made.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use gst::prelude::*;

mod common;
use common::{benching, env_num};

const RAW: &str = "video/x-raw,format=I420,width=640,height=480,framerate=30/1";

/// Buffer copies the v4l2 elements logged in `GST_PERFORMANCE` since the
/// last reset ("slow copy into buffer"): of raw frames, of coded frames.
static RAW_COPIES: LazyLock<Arc<AtomicU64>> = LazyLock::new(Arc::default);
static CODED_COPIES: LazyLock<Arc<AtomicU64>> = LazyLock::new(Arc::default);

struct Row {
    what: String,
    frames_in: u64,
    frames_out: u64,
    fps: f64,
    raw_copies: f64,
    coded_copies: f64,
    note: String,
}

/// Runs `desc` to EOS; `feed` goes into its `appsrc name=src` once it
/// plays; with `keep`, the buffers the sink got come back.
fn run(
    what: &str,
    desc: &str,
    frames_in: u64,
    feed: Option<&[gst::Buffer]>,
    keep: bool,
) -> (Row, Vec<gst::Buffer>) {
    RAW_COPIES.store(0, Ordering::Relaxed);
    CODED_COPIES.store(0, Ordering::Relaxed);
    let pipeline = match gst::parse::launch(desc) {
        Ok(p) => p.downcast::<gst::Pipeline>().unwrap(),
        Err(e) => {
            let row = Row {
                what: what.into(),
                frames_in,
                frames_out: 0,
                fps: 0.0,
                raw_copies: 0.0,
                coded_copies: 0.0,
                note: format!("cannot build: {e}"),
            };
            return (row, Vec::new());
        }
    };
    let sink = pipeline.by_name("sink").unwrap();
    sink.set_property("sync", false);
    sink.set_property("signal-handoffs", true);
    let out = Arc::new(AtomicU64::new(0));
    let kept: Arc<Mutex<Vec<gst::Buffer>>> = Arc::default();
    let (out2, kept2) = (Arc::clone(&out), Arc::clone(&kept));
    sink.connect("handoff", false, move |args| {
        out2.fetch_add(1, Ordering::Relaxed);
        if keep && let Ok(b) = args[1].get::<gst::Buffer>() {
            kept2.lock().unwrap().push(b);
        }
        None
    });
    let start = Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    if let (Some(feed), Some(src)) = (feed, pipeline.by_name("src")) {
        for b in feed {
            let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[b]);
        }
        let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    }
    let msg = pipeline.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(600),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let elapsed = start.elapsed();
    let mut note = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => String::new(),
        Some(gst::MessageView::Error(e)) => format!("error: {}", e.error()),
        _ => "no EOS within 600 s (stalled)".into(),
    };
    // Ours count their raw-frame copies; each also copies every coded
    // frame once by design (the encoder out of its CAPTURE buffer, the
    // decoder into its OUTPUT buffer).
    let ours = pipeline
        .by_name("vpu")
        .map(|e| e.property::<gst::Structure>("stats"))
        .map(|s| s.get::<u64>("frame-copies").unwrap_or(0));
    pipeline.set_state(gst::State::Null).unwrap();
    let frames_out = out.load(Ordering::Relaxed);
    let per_frame = |c: u64| c as f64 / frames_in.max(1) as f64;
    let (raw_copies, coded_copies) = match ours {
        Some(raw) => (per_frame(raw), per_frame(frames_out)),
        None => (
            per_frame(RAW_COPIES.load(Ordering::Relaxed)),
            per_frame(CODED_COPIES.load(Ordering::Relaxed)),
        ),
    };
    if frames_out != frames_in && note.is_empty() {
        note = format!("lost {} frames", frames_in.saturating_sub(frames_out));
    }
    let row = Row {
        what: what.into(),
        frames_in,
        frames_out,
        fps: frames_out as f64 / elapsed.as_secs_f64(),
        raw_copies,
        coded_copies,
        note,
    };
    let kept = std::mem::take(&mut *kept.lock().unwrap());
    (row, kept)
}

fn main() {
    let full = benching();
    let nodes = ["/dev/video0", "/dev/video1"];
    if let Some(missing) = nodes.iter().find(|p| !Path::new(p).exists()) {
        println!(
            "*** SKIPPED kernel benchmark: {missing} does not exist (run it in the VM, see \
             README \"Benchmarks\") ***"
        );
        return;
    }
    let n = env_num("KERNEL_BENCH_FRAMES").unwrap_or(if full { 300 } else { 10 }) as u64;

    gst::init().unwrap();
    gstrsvpu::plugin_register_static().unwrap();
    {
        let (raw, coded) = (Arc::clone(&RAW_COPIES), Arc::clone(&CODED_COPIES));
        let verbose = std::env::var_os("KERNEL_BENCH_VERBOSE").is_some();
        gst::log::add_log_function(move |cat, _, file, func, line, obj, msg| {
            if cat.name() == "GST_PERFORMANCE"
                && let Some(m) = msg.get()
                && m.contains("slow copy")
            {
                // The pool is named "<element>:pool<N>:<pad>": the encoder's
                // src and the decoder's sink pool hold coded frames.
                let who = obj.map(|o| o.to_string()).unwrap_or_default();
                let is_coded = (who.contains("enc") && who.ends_with(":src"))
                    || (who.contains("dec") && who.ends_with(":sink"));
                if is_coded { &coded } else { &raw }.fetch_add(1, Ordering::Relaxed);
                if verbose {
                    println!("GST_PERFORMANCE {file}:{line} {func} {who}: {m}");
                }
            }
        });
        gst::log::remove_default_log_function();
        gst::log::set_active(true);
        gst::log::set_threshold_for_name("GST_PERFORMANCE", gst::DebugLevel::Log);
    }

    // The coded frames both decoders get (one per buffer, as an encoder
    // pushes them), made off the clock.
    let (made, clip) = run(
        "make clip",
        &format!(
            "videotestsrc num-buffers={n} pattern=ball ! {RAW} ! vpufwhtenc device=emu \
             ! fakesink name=sink"
        ),
        n,
        None,
        true,
    );
    assert_eq!(
        made.frames_out, n,
        "the clip has every frame: {}",
        made.note
    );
    let clip: Vec<gst::Buffer> = clip
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let mut b = b.copy();
            let d = gst::ClockTime::SECOND / 30;
            let bm = b.get_mut().expect("a fresh copy");
            bm.set_pts(d * i as u64);
            bm.set_duration(d);
            b
        })
        .collect();

    let enc = |e: &str| {
        format!("videotestsrc num-buffers={n} pattern=ball ! {RAW} ! {e} ! fakesink name=sink")
    };
    // v4l2fwhtdec wants the colorimetry in its input caps.
    let dec = |d: &str| {
        format!(
            "appsrc name=src format=time \
             caps=video/x-fwht,width=640,height=480,framerate=30/1,colorimetry=bt601 \
             ! {d} ! video/x-raw,format=I420 ! fakesink name=sink"
        )
    };
    let e = |what: &str, desc: String| run(what, &desc, n, None, false).0;
    let d = |what: &str, desc: String| run(what, &desc, n, Some(&clip), false).0;
    let rows = vec![
        e(
            "vpufwhtenc device=/dev/video0",
            enc("vpufwhtenc name=vpu device=/dev/video0"),
        ),
        e("v4l2fwhtenc (/dev/video0)", enc("v4l2fwhtenc")),
        d(
            "vpufwhtdec device=/dev/video1",
            dec("vpufwhtdec name=vpu device=/dev/video1"),
        ),
        d("v4l2fwhtdec (/dev/video1)", dec("v4l2fwhtdec")),
        e(
            "vpufwhtenc device=emu (reference)",
            enc("vpufwhtenc name=vpu device=emu"),
        ),
        d(
            "vpufwhtdec device=emu (reference)",
            dec("vpufwhtdec name=vpu device=emu"),
        ),
    ];

    println!(
        "kernel benchmark: {n} frames 640x480 I420 (videotestsrc ball), vicodec, {}",
        if full { "full run" } else { "smoke run" }
    );
    println!(
        "| {:<36} | {:>6} | {:>6} | {:>8} | {:>12} | {:>14} | note",
        "element", "in", "out", "frames/s", "raw copies/f", "coded copies/f"
    );
    println!(
        "|{:-<38}|{:->8}|{:->8}|{:->10}|{:->14}|{:->16}|------",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<36} | {:>6} | {:>6} | {:>8.1} | {:>12.2} | {:>14.2} | {}",
            r.what, r.frames_in, r.frames_out, r.fps, r.raw_copies, r.coded_copies, r.note
        );
    }
    // Ours must give every frame; the peers are measured, not judged.
    for r in rows.iter().filter(|r| r.what.starts_with("vpu")) {
        assert_eq!(r.frames_out, r.frames_in, "{}: {}", r.what, r.note);
    }
}
