//! The built `libgstrsvpu.so` loads into GStreamer as plugin `rsvpu`, as
//! `gst-inspect-1.0` and `GST_PLUGIN_PATH` users will load it.
//!
//! `cargo test` links tests against the rlib and does not always write the
//! cdylib, so `scripts/test.sh` runs `cargo build` first; without it this test
//! fails and says so.

use std::path::PathBuf;

/// The cdylib cargo built beside this test binary (target/<profile>/).
fn plugin_file() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/plugin_load-<hash> -> target/<profile>/libgstrsvpu.so
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile_dir.join("libgstrsvpu.so")
}

#[test]
fn the_shared_library_loads_as_plugin_rsvpu() {
    gst::init().unwrap();
    let file = plugin_file();
    assert!(
        file.exists(),
        "{} does not exist: run `cargo build` (same profile) before the tests",
        file.display()
    );
    let plugin = gst::Plugin::load_file(&file).expect("GStreamer loads the plugin");
    assert_eq!(plugin.plugin_name(), "rsvpu");
    assert_eq!(plugin.source(), "gst-plugin-vpu");
    assert!(
        plugin.description().contains("VPU"),
        "{}",
        plugin.description()
    );
    assert_eq!(plugin.license(), "MPL");
}
