#!/bin/sh
# Makes the candidate measurement's streams in DIR: x264enc Constrained
# Baseline, Main and High, 60 frames of a scrolling SMPTE pattern at 4 Mbit/s,
# 1280x720 and 1920x1080 (NAME.h264), and avdec_h264's I420 output for each
# (NAME.avdec.yuv), the reference every candidate is compared with.
set -eu
dir=${1:?usage: make-streams.sh DIR}
mkdir -p "$dir"
for size in 1280x720 1920x1080; do
    w=${size%x*}; h=${size#*x}
    for prof in constrained-baseline main high; do
        gst-launch-1.0 -q videotestsrc num-buffers=60 pattern=smpte horizontal-speed=3 \
            ! "video/x-raw,width=$w,height=$h,framerate=30/1,format=I420" \
            ! x264enc bitrate=4000 key-int-max=30 \
            ! "video/x-h264,profile=$prof,stream-format=byte-stream,alignment=au" \
            ! filesink location="$dir/$prof-$size.h264"
        gst-launch-1.0 -q filesrc location="$dir/$prof-$size.h264" ! h264parse ! avdec_h264 \
            ! video/x-raw,format=I420 ! filesink location="$dir/$prof-$size.avdec.yuv"
    done
done
