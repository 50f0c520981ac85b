#!/usr/bin/env bash
# demo.sh -- from a fresh Debian 12 machine to frames encoded and decoded on the
# emulated VPU: set-up, release build, the plugin as GStreamer sees it, the
# main demo pipeline (videotestsrc ! vpufwhtenc ! vpufwhtdec ! fakesink, see
# pipelines/roundtrip.sh), then the fwht_roundtrip example (the same through
# the Rust API, with PSNR and the coherency checker's counters).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; "$@"; }
step cargo build --locked --release
# GStreamer finds the plugin by GST_PLUGIN_PATH; a plugin that fails to load
# makes gst-inspect-1.0 exit non-zero, which stops the demo here.
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
export GST_PLUGIN_PATH=$target_dir/release
step gst-inspect-1.0 rsvpu
step pipelines/roundtrip.sh
step cargo run --locked --release --example fwht_roundtrip
