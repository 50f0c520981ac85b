//! Every example in `pipelines/` runs and reports success (each script
//! checks its own expected result and exits non-zero otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(script: &str, args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The plugin cargo built for this profile: target/<profile>/libgstrsvpu.so.
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK"),
        "{script} did not report OK: {stdout}"
    );
}

#[test]
fn roundtrip_demo() {
    run("roundtrip.sh", &[]);
}

#[test]
fn roundtrip_odd_size_semi_planar() {
    run("roundtrip.sh", &["30", "322", "242", "NV12"]);
}

#[test]
fn display_example_runs_or_says_why_not() {
    // Shows a window where a display exists; says SKIPPED otherwise.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().expect("test binary path");
    let plugin_dir: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .into();
    let out = Command::new(root.join("pipelines/display.sh"))
        .env("GST_PLUGIN_PATH", &plugin_dir)
        .output()
        .expect("running display.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let expected = if has_display {
        "display: OK"
    } else {
        "display: SKIPPED (no display)"
    };
    assert!(stdout.contains(expected), "{stdout}");
}
