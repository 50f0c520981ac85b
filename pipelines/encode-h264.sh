#!/bin/sh
# Purpose: encode N frames (default 60) of videotestsrc (I420 640x480, 30 fps)
# to H.264 with vpuh264enc (on the emulated VPU unless a kernel node is chosen)
# at 1000 kbit/s, mux them into MP4, then play the file back through
# qtdemux ! h264parse ! avdec_h264 (FFmpeg's decoder, not ours).
# Expected result: every frame decodes back; the script prints
# "encode-h264: OK, <N> frames, <size> bytes" and exits 0 (non-zero on any
# failure, or when the decoded frame count differs).
#
# Run from a build tree: GST_PLUGIN_PATH=$PWD/target/debug sh pipelines/encode-h264.sh [N]
set -eu

n=${1:-60}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

gst-launch-1.0 -q videotestsrc num-buffers="$n" pattern=smpte horizontal-speed=3 \
    ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 \
    ! vpuh264enc bitrate=1000 ! h264parse ! mp4mux ! filesink location="$tmp/clip.mp4"

size=$(stat -c %s "$tmp/clip.mp4")
[ "$size" -gt 0 ] || { echo "clip.mp4 is empty" >&2; exit 1; }

frames=$(gst-launch-1.0 -v filesrc location="$tmp/clip.mp4" ! qtdemux ! h264parse \
    ! avdec_h264 ! identity name=count silent=false ! fakesink 2>&1 \
    | grep -c "count: last-message = chain" || true)
if [ "$frames" -ne "$n" ]; then
    echo "decoded $frames frames, expected $n" >&2
    exit 1
fi
echo "encode-h264: OK, $frames frames, $size bytes"
