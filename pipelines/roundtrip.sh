#!/bin/sh
# Purpose: the main demo: encode a moving test picture to FWHT and decode it
#   again, both on the emulated VPU, in one pipeline:
#   videotestsrc ! vpufwhtenc ! vpufwhtdec ! videoconvert ! fakesink
# Expected result: "roundtrip: OK, 120 frames encoded and decoded (640x480
#   I420)" (every frame reaches the sink); exit status 0. Anything else prints
#   what went wrong and exits 1.
# Run from anywhere; the plugin must be findable, e.g.
#   cargo build && GST_PLUGIN_PATH=$PWD/target/debug pipelines/roundtrip.sh
# Optional arguments: FRAMES (120) WIDTH (640) HEIGHT (480) FORMAT (I420).
set -eu

frames="${1:-120}"
width="${2:-640}"
height="${3:-480}"
format="${4:-I420}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# fakesink silent=false logs one "chain" line per buffer it receives.
gst-launch-1.0 -v videotestsrc num-buffers="$frames" pattern=ball \
    ! "video/x-raw,format=$format,width=$width,height=$height,framerate=30/1" \
    ! vpufwhtenc name=enc gop-size=10 ! vpufwhtdec name=dec ! videoconvert \
    ! fakesink name=sink silent=false >"$log" 2>&1 || {
        echo "roundtrip: FAILED: gst-launch-1.0 failed:" >&2
        tail -20 "$log" >&2
        exit 1
    }
got=$(grep -c 'sink: last-message = chain' "$log" || true)
if [ "$got" -ne "$frames" ]; then
    echo "roundtrip: FAILED: $got frames reached the sink, expected $frames" >&2
    exit 1
fi
echo "roundtrip: OK, $frames frames encoded and decoded (${width}x${height} $format)"
