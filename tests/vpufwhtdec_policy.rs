//! `vpufwhtdec memory-policy`: what each policy allocates for CAPTURE and
//! what cache maintenance it costs. Alone in its test binary and serialised:
//! the sync counters are VPU-wide, so each test compares deltas with no
//! other decoder running.

use std::path::Path;

use gst::prelude::*;
use gstrsvpu::mem::{Coherency, SyncStats};

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

const FRAMES: u64 = 6;

fn sync_stats() -> SyncStats {
    gstrsvpu::emulated_vpu().unwrap().checker().stats()
}

/// What one run cost and what CAPTURE memory it used.
struct Run {
    /// `cache-syncs` of the element's stats at the end, minus the same
    /// VPU-wide counter before the run (the element reports none before it
    /// starts, and reading it once the pipeline plays would race with its
    /// CAPTURE set-up).
    cache_syncs: u64,
    syncs_for_cpu: u64,
    syncs_for_device: u64,
    frames: u64,
    coherency: Vec<Coherency>,
}

/// Decodes a vicodec vector with `policy`; if `map`, every frame is mapped
/// for reading on the CPU (as a CPU consumer does), else left untouched
/// (as a device importer does).
fn run(policy: &str, map: bool) -> Run {
    run_file(&vector(), policy, map)
}

fn vector() -> std::path::PathBuf {
    data("i420_640x480_gop4.fwht")
}

fn run_file(path: &Path, policy: &str, map: bool) -> Run {
    init();
    let desc = format!(
        "filesrc location={} ! vpufwhtdec name=dec memory-policy={policy} \
         ! appsink name=sink sync=false",
        path.display()
    );
    let pipeline = launch(&desc);
    let dec = pipeline.by_name("dec").unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    let before = sync_stats();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut frames = 0;
    let mut coherency = Vec::new();
    while let Some(sample) = try_pull_sample(&sink) {
        let buffer = sample.buffer().unwrap();
        let region = gstrsvpu::allocator::region(buffer.peek_memory(0)).expect("VPU memory");
        coherency.push(region.coherency());
        if map {
            let m = buffer.map_readable().expect("a CPU map");
            assert!(!m.is_empty());
        }
        frames += 1;
    }
    assert!(sink.property::<bool>("eos"));
    let syncs_at_end = stat(&stats(&dec), "cache-syncs");
    let violations = stat(&stats(&dec), "coherency-violations");
    pipeline.set_state(gst::State::Null).unwrap();
    let after = sync_stats();
    assert_eq!(violations, 0, "{desc}");
    Run {
        cache_syncs: syncs_at_end - (before.syncs_for_cpu + before.syncs_for_device),
        syncs_for_cpu: after.syncs_for_cpu - before.syncs_for_cpu,
        syncs_for_device: after.syncs_for_device - before.syncs_for_device,
        frames,
        coherency,
    }
}

#[test]
fn coherent_allocates_coherent_capture_memory_and_never_syncs() {
    let _serial = serial();
    let r = run("coherent", true);
    assert_eq!(r.frames, FRAMES);
    assert!(r.coherency.iter().all(|&c| c == Coherency::Coherent));
    assert_eq!(r.cache_syncs, 0, "stats cache-syncs");
    assert_eq!((r.syncs_for_cpu, r.syncs_for_device), (0, 0));
}

#[test]
fn cacheable_invalidates_once_per_frame_the_cpu_maps() {
    let _serial = serial();
    let r = run("cacheable", true);
    assert_eq!(r.frames, FRAMES);
    assert!(r.coherency.iter().all(|&c| c == Coherency::Cacheable));
    assert_eq!(r.syncs_for_cpu, FRAMES, "one sync_for_cpu per mapped frame");
    eprintln!(
        "cacheable, CPU consumer: {} sync_for_cpu, {} sync_for_device (cleans before re-queueing \
         a frame the CPU owned), stats cache-syncs {}",
        r.syncs_for_cpu, r.syncs_for_device, r.cache_syncs
    );
    assert!(r.cache_syncs >= FRAMES, "stats cache-syncs counts them");
}

#[test]
fn auto_is_cacheable_and_a_consumer_that_never_maps_pays_no_sync_per_frame() {
    let _serial = serial();
    let short = run("auto", false);
    assert_eq!(short.frames, FRAMES);
    assert!(short.coherency.iter().all(|&c| c == Coherency::Cacheable));
    assert_eq!(short.syncs_for_cpu, 0, "nobody mapped a frame");
    // The same stream three times over: three times the frames, and not one
    // sync more. What remains is the one clean of each fresh CAPTURE buffer
    // when it is first queued (the memory model hands new regions to the
    // device explicitly), paid at allocation, not per frame.
    let path = std::env::temp_dir().join(format!("vpufwhtdec-policy-{}.fwht", std::process::id()));
    std::fs::write(&path, std::fs::read(vector()).unwrap().repeat(3)).unwrap();
    let long = run_file(&path, "auto", false);
    let _ = std::fs::remove_file(&path);
    assert_eq!(long.frames, 3 * FRAMES);
    assert_eq!(long.syncs_for_cpu, 0, "nobody mapped a frame");
    assert_eq!(
        long.syncs_for_device, short.syncs_for_device,
        "no per-frame cache maintenance for a consumer that never maps"
    );
    assert_eq!(long.cache_syncs, short.cache_syncs, "stats cache-syncs");
    let mapped = run("auto", true);
    assert_eq!(
        mapped.syncs_for_cpu, FRAMES,
        "one sync_for_cpu per mapped frame"
    );
}
