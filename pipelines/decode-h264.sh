#!/bin/sh
# Purpose: H.264 on the emulated VPU against GStreamer's own decoder: make an
#   mp4 with x264enc (High profile, B-frames) or with our vpuh264enc, and
#   mp4mux, then decode it with
#   filesrc ! qtdemux ! h264parse ! vpuh264dec and with ... ! avdec_h264, and
#   compare the SHA-1 of every decoded I420 frame and its timestamp.
# Expected result: "decode-h264: OK, 60 frames identical to avdec_h264
#   (640x360 high, x264enc)"; exit status 0. Anything else prints what went wrong and
#   exits 1.
# Run from anywhere; the plugin must be findable, e.g.
#   cargo build && GST_PLUGIN_PATH=$PWD/target/debug pipelines/decode-h264.sh
# Optional arguments: FRAMES (60) WIDTH (640) HEIGHT (360) PROFILE (high)
# ENCODER (x264enc, or vpuh264enc: our encoder and decoder round trip, at
# 1000 kbit/s; it codes no B-frames).
# WIDTH must be a multiple of 8: checksumsink hashes whole buffers, and at
# other widths I420 rows carry padding bytes that videoconvert leaves as the
# pool had them (tests/vpuh264dec.rs compares odd sizes pixel by pixel).
set -eu

frames="${1:-60}"
width="${2:-640}"
height="${3:-360}"
profile="${4:-high}"
encoder="${5:-x264enc}"
if [ $((width % 8)) -ne 0 ]; then
    echo "decode-h264: FAILED: WIDTH $width is not a multiple of 8 (see the header)" >&2
    exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

bframes=2
[ "$profile" = constrained-baseline ] && bframes=0
case "$encoder" in
    x264enc) enc="x264enc bframes=$bframes" ;;
    vpuh264enc) enc="vpuh264enc bitrate=1000" ;;
    *) echo "decode-h264: FAILED: ENCODER $encoder is not x264enc or vpuh264enc" >&2; exit 1 ;;
esac
# shellcheck disable=SC2086 # $enc is an element and its properties
gst-launch-1.0 -q videotestsrc num-buffers="$frames" pattern=ball \
    ! "video/x-raw,width=$width,height=$height,framerate=30/1" \
    ! $enc ! "video/x-h264,profile=$profile" ! h264parse \
    ! mp4mux ! filesink location="$dir/clip.mp4" >"$dir/enc.log" 2>&1 || {
        echo "decode-h264: FAILED: encoding the mp4 failed:" >&2
        tail -20 "$dir/enc.log" >&2
        exit 1
    }
for dec in vpuh264dec avdec_h264; do
    # checksumsink prints "<timestamp> <sha1>" for every frame.
    gst-launch-1.0 -q filesrc location="$dir/clip.mp4" ! qtdemux ! h264parse ! "$dec" \
        ! videoconvert ! video/x-raw,format=I420 ! checksumsink \
        >"$dir/$dec.sums" 2>"$dir/$dec.log" || {
            echo "decode-h264: FAILED: decoding with $dec failed:" >&2
            tail -20 "$dir/$dec.log" >&2
            exit 1
        }
done
got=$(grep -c . "$dir/vpuh264dec.sums" || true)
if [ "$got" -ne "$frames" ]; then
    echo "decode-h264: FAILED: vpuh264dec gave $got frames, expected $frames" >&2
    exit 1
fi
if ! cmp -s "$dir/vpuh264dec.sums" "$dir/avdec_h264.sums"; then
    echo "decode-h264: FAILED: frames differ from avdec_h264's:" >&2
    diff "$dir/vpuh264dec.sums" "$dir/avdec_h264.sums" | head -10 >&2
    exit 1
fi
echo "decode-h264: OK, $frames frames identical to avdec_h264 (${width}x${height} $profile, $encoder)"
