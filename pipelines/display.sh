#!/bin/sh
# Purpose: watch the round trip: a test picture encoded by vpufwhtenc and
#   decoded by vpufwhtdec (emulated VPU), shown with autovideosink.
#   videotestsrc ! vpufwhtenc ! vpufwhtdec ! videoconvert ! autovideosink
# Expected result: a window shows the moving ball for 5 s (150 frames), then
#   "display: OK"; exit status 0. Without a display ($DISPLAY / $WAYLAND_DISPLAY
#   unset) it prints "display: SKIPPED (no display)" and exits 0.
# Run from anywhere; the plugin must be findable, e.g.
#   cargo build && GST_PLUGIN_PATH=$PWD/target/debug pipelines/display.sh
set -eu

if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    echo "display: SKIPPED (no display)"
    exit 0
fi
gst-launch-1.0 -q videotestsrc num-buffers=150 pattern=ball \
    ! video/x-raw,width=640,height=480,framerate=30/1 \
    ! vpufwhtenc ! vpufwhtdec ! videoconvert ! autovideosink
echo "display: OK"
