//! Every example in `pipelines/` runs and reports success (each script
//! checks its own expected result and exits non-zero otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `pipelines/<script>` with the plugin cargo built for this profile
/// and returns what it printed; panics if it failed or did not print `expect`.
fn run(script: &str, args: &[&str], expect: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // target/<profile>/deps/<test> -> target/<profile>/libgstrsvpu.so
    let exe = std::env::current_exe().expect("test binary path");
    let plugin_dir: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .into();
    assert!(
        plugin_dir.join("libgstrsvpu.so").exists(),
        "{} has no libgstrsvpu.so: run `cargo build` (same profile) before the tests",
        plugin_dir.display()
    );
    let out = Command::new(root.join("pipelines").join(script))
        .args(args)
        .env("GST_PLUGIN_PATH", &plugin_dir)
        .output()
        .expect("running the pipeline script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(expect),
        "{script} did not print {expect:?}: {stdout}"
    );
    stdout
}

#[test]
fn roundtrip_demo() {
    run("roundtrip.sh", &[], "roundtrip: OK, 120 frames");
}

#[test]
fn roundtrip_odd_size_semi_planar() {
    run(
        "roundtrip.sh",
        &["30", "322", "242", "NV12"],
        "roundtrip: OK, 30 frames",
    );
}

#[test]
fn encode_h264_round_trips_through_mp4() {
    run("encode-h264.sh", &["30"], "encode-h264: OK, 30 frames");
}

#[test]
fn decode_h264_matches_avdec_h264() {
    run(
        "decode-h264.sh",
        &[],
        "decode-h264: OK, 60 frames identical to avdec_h264 (640x360 high, x264enc)",
    );
    run(
        "decode-h264.sh",
        &["30", "320", "240", "constrained-baseline"],
        "decode-h264: OK, 30 frames identical to avdec_h264 (320x240 constrained-baseline, x264enc)",
    );
}

#[test]
fn h264_round_trips_through_our_encoder_and_decoder() {
    // vpuh264enc -> mp4 -> vpuh264dec, frame by frame equal to avdec_h264.
    run(
        "decode-h264.sh",
        &["30", "640", "480", "high", "vpuh264enc"],
        "decode-h264: OK, 30 frames identical to avdec_h264 (640x480 high, vpuh264enc)",
    );
}

#[test]
fn display_example_runs_or_says_why_not() {
    // Shows a window where a display exists; says SKIPPED otherwise.
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let expected = if has_display {
        "display: OK"
    } else {
        "display: SKIPPED (no display)"
    };
    run("display.sh", &[], expected);
}
