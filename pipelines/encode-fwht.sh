#!/bin/sh
# Purpose: encode 60 frames of videotestsrc (I420 640x480) to a raw FWHT file
# with vpufwhtenc (on the emulated VPU unless a kernel node is chosen).
# Expected result: $tmp/clip.fwht exists, is not empty, and gst-typefind-1.0
# recognises it as video/x-fwht, width=640, height=480; the script prints the
# type and size and exits 0 (non-zero on any failure).
#
# Run from a build tree: GST_PLUGIN_PATH=$PWD/target/debug sh pipelines/encode-fwht.sh
set -eu

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

gst-launch-1.0 -q videotestsrc num-buffers=60 \
    ! video/x-raw,format=I420,width=640,height=480 \
    ! vpufwhtenc ! filesink location="$tmp/clip.fwht"

size=$(stat -c %s "$tmp/clip.fwht")
[ "$size" -gt 0 ] || { echo "clip.fwht is empty" >&2; exit 1; }

type=$(gst-typefind-1.0 "$tmp/clip.fwht")
echo "$type ($size bytes)"
case "$type" in
    *video/x-fwht*width=\(int\)640*height=\(int\)480*) ;;
    *) echo "not recognised as a 640x480 FWHT stream" >&2; exit 1 ;;
esac
