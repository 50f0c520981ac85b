#!/bin/sh
# Purpose: decode a plain FWHT file (vicodec's format, unframed) with vpufwhtdec
#   filesrc ! vpufwhtdec ! videoconvert ! pngenc ! multifilesink
# Expected result: 6 PNG files (640x480), one per frame of
#   tests/data/fwht/i420_640x480_gop4.fwht, and "decode-fwht: OK, 6 frames";
#   exit status 0. Anything else prints what went wrong and exits 1.
# Run from anywhere; the plugin must be findable, e.g.
#   cargo build && GST_PLUGIN_PATH=$PWD/target/debug pipelines/decode-fwht.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
input="${1:-$here/../tests/data/fwht/i420_640x480_gop4.fwht}"
expected="${2:-6}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

gst-launch-1.0 -q filesrc location="$input" ! vpufwhtdec ! videoconvert \
    ! pngenc ! multifilesink location="$out/frame-%03d.png"

frames=$(find "$out" -name 'frame-*.png' | wc -l)
if [ "$frames" -ne "$expected" ]; then
    echo "decode-fwht: FAILED: $frames frames decoded, expected $expected" >&2
    exit 1
fi
echo "decode-fwht: OK, $frames frames"
