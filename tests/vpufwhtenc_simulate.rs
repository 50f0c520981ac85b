//! `vpufwhtenc` with the proposed pool under a simulated write-back CPU cache
//! (`GST_VPU_CHECKER=simulate`): videotestsrc writes frames through a cached
//! mapping, so a missed clean before the VPU reads would leave stale lines in
//! memory and the stream would differ from the bare encoder's.
//!
//! # Why the test re-runs itself
//!
//! The process's emulated VPU reads `GST_VPU_CHECKER` once, when it boots
//! (`plugins/common/device.rs`), and changing the environment of a running
//! multi-threaded test process is not sound (`std::env::set_var` is unsafe,
//! and this crate allows no `unsafe` in tests). So the one `#[test]` here,
//! started by `cargo test` without the variable, runs this same test
//! executable again as a child with `GST_VPU_CHECKER=simulate`, restricted
//! to itself (`--exact`); in the child, where the variable is set, it
//! encodes. Running the binary by hand with the variable set runs the checks
//! directly. The child's output is shown when it fails.

use std::process::Command;

mod pipeline_support;
mod vpufwhtenc_support;
use gstrsvpu::m2m::PixelFormat;
use vpufwhtenc_support::*;

const CHECKER_ENV: &str = "GST_VPU_CHECKER";
const TEST_NAME: &str = "the_proposed_pool_is_bit_exact_under_a_simulated_cache";

#[test]
fn the_proposed_pool_is_bit_exact_under_a_simulated_cache() {
    if std::env::var(CHECKER_ENV).as_deref() != Ok("simulate") {
        let exe = std::env::current_exe().expect("the test executable's path");
        let out = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHECKER_ENV, "simulate")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the simulated-cache run failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The child really ran the test (a filter typo would run nothing).
        assert!(
            stdout.contains("1 passed"),
            "the child ran no test:\n{stdout}"
        );
        return;
    }
    for (case, size) in [
        (("I420", PixelFormat::I420), (320, 240)),
        (("NV12", PixelFormat::Nv12), (322, 242)),
    ] {
        let stats = check_against_bare_encoder(case, size, 30, Route::Pool);
        assert!(stat(&stats, "cache-syncs") > 0, "{stats}");
        // The copy path next to it: same cache, same bytes.
        check_against_bare_encoder(case, size, 8, Route::Copy);
    }
}
