//! Helpers the GStreamer benches share: the quick-mode switch, environment
//! knobs, medians, the machine's load, CPU time of the process, captured
//! `videotestsrc` frames and waiting for EOS. Each bench declares
//! `mod common;` and uses what it needs.

// Every bench uses a different subset of these helpers.
#![allow(dead_code)]

use gst::prelude::*;

/// True under `cargo bench` (full runs); false under `cargo test`, where
/// the benches run once on a few small frames as a smoke test.
pub fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A positive number from the environment variable `name`.
pub fn env_num(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The 1, 5 and 15 minute load averages, to print next to the figures.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU time this process has consumed so far, seconds: every thread's,
/// those that have exited included (an encoder may close its codec, whose
/// threads then exit, at EOS), from `CLOCK_PROCESS_CPUTIME_ID` (nanosecond
/// resolution).
pub fn cpu_secs() -> f64 {
    clock_secs(rustix::time::ClockId::ProcessCPUTime)
}

/// CPU time the calling thread has consumed so far, seconds
/// (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_secs() -> f64 {
    clock_secs(rustix::time::ClockId::ThreadCPUTime)
}

fn clock_secs(id: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(id);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// What a bench measures: runs per figure, and (width, height, frames)
/// per size.
pub struct Plan {
    pub runs: usize,
    pub sizes: Vec<(u32, u32, usize)>,
}

/// Under `--bench`: `sizes` (width, height, default frame count), narrowed
/// to one by `{prefix}_BENCH_SIZE=WxH`, with `{prefix}_BENCH_RUNS` runs
/// (default `runs`). Otherwise the smoke test: `smoke`, once.
/// `{prefix}_BENCH_FRAMES` overrides the frame count of every size.
pub fn plan(
    prefix: &str,
    runs: usize,
    sizes: &[(u32, u32, usize)],
    smoke: (u32, u32, usize),
) -> Plan {
    let frames = env_num(&format!("{prefix}_BENCH_FRAMES"));
    let with_frames = |&(w, h, n): &(u32, u32, usize)| (w, h, frames.unwrap_or(n));
    if !benching() {
        return Plan {
            runs: 1,
            sizes: vec![with_frames(&smoke)],
        };
    }
    let only = std::env::var(format!("{prefix}_BENCH_SIZE")).ok();
    Plan {
        runs: env_num(&format!("{prefix}_BENCH_RUNS")).unwrap_or(runs),
        sizes: sizes
            .iter()
            .filter(|(w, h, _)| only.as_deref().is_none_or(|s| s == format!("{w}x{h}")))
            .map(with_frames)
            .collect(),
    }
}

/// I420 caps at `w`x`h`, 30 frames/s.
pub fn raw_caps(w: u32, h: u32) -> String {
    format!("video/x-raw,format=I420,width={w},height={h},framerate=30/1")
}

/// A pipeline from a `gst-launch` description.
pub fn launch(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap_or_else(|_| panic!("{desc}: not a pipeline"))
}

/// `n` I420 frames of `videotestsrc {pattern}` (its properties, e.g.
/// `pattern=ball`), as videotestsrc lays them out, and their video info.
pub fn capture(
    pattern: &str,
    w: u32,
    h: u32,
    n: usize,
) -> (Vec<gst::Buffer>, gst_video::VideoInfo) {
    let pipeline = launch(&format!(
        "videotestsrc {pattern} num-buffers={n} ! {} ! appsink name=sink sync=false",
        raw_caps(w, h)
    ));
    let sink = pipeline.by_name("sink").expect("appsink");
    pipeline
        .set_state(gst::State::Playing)
        .expect("capture plays");
    let mut frames = Vec::with_capacity(n);
    let mut info = None;
    while let Some(sample) = sink.emit_by_name::<Option<gst::Sample>>("pull-sample", &[]) {
        if info.is_none() {
            let caps = sample.caps().expect("sample caps");
            info = Some(gst_video::VideoInfo::from_caps(caps).expect("video caps"));
        }
        frames.push(sample.buffer_owned().expect("sample buffer"));
    }
    pipeline.set_state(gst::State::Null).expect("capture stops");
    assert_eq!(frames.len(), n, "videotestsrc gave every frame");
    (frames, info.expect("at least one frame"))
}

/// Hands `buffers`, then EOS, to the pipeline's `appsrc name=src`. A
/// refused EOS is left to [`wait_eos`], which reports the pipeline's error.
pub fn feed(pipeline: &gst::Pipeline, buffers: impl IntoIterator<Item = gst::Buffer>) {
    let src = pipeline.by_name("src").expect("appsrc");
    for b in buffers {
        let r = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&b]);
        assert_eq!(r, gst::FlowReturn::Ok, "appsrc takes the buffer");
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
}

/// Waits up to 300 s for EOS; a pipeline error panics with its source.
pub fn wait_eos(pipeline: &gst::Pipeline) {
    let bus = pipeline.bus().expect("bus");
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(300)) {
        match msg.view() {
            gst::MessageView::Eos(..) => return,
            gst::MessageView::Error(e) => panic!(
                "pipeline error from {:?}: {} ({:?})",
                e.src().map(|s| s.path_string()),
                e.error(),
                e.debug()
            ),
            _ => {}
        }
    }
    panic!("no EOS within 300 s");
}
