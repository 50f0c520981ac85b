#!/bin/bash
# Runs INSIDE the vicodec VM (see regenerate.sh). For every line of
# $DIR/vectors.list (name fourcc width height frames gop i_qp p_qp frame_size):
#   $name.raw        -> vicodec encoder (/dev/video0) -> $name.fwht
#   $name.fwht       -> vicodec decoder (/dev/video1) -> $name.dec.raw
#   $name.ours.fwht  -> vicodec decoder (/dev/video1) -> $name.ours.dec.raw
# The OUTPUT format is set to the visible size; vicodec rounds it up to its
# coded size, then the crop selection brings the visible size back.
set -uo pipefail
DIR=${1:?usage: make-vectors.sh DIR}
cd "$DIR"
V4L2="timeout 120 v4l2-ctl"
while read -r name fourcc w h frames gop iqp pqp size; do
    echo "== $name: $fourcc ${w}x${h}, $frames frames, gop $gop, qp $iqp/$pqp"
    $V4L2 -d /dev/video0 \
        --set-fmt-video-out=width=$w,height=$h,pixelformat=$fourcc \
        --set-selection-output=target=crop,left=0,top=0,width=$w,height=$h \
        --set-fmt-video=pixelformat=FWHT \
        --set-ctrl=video_gop_size=$gop,fwht_i_frame_qp_value=$iqp,fwht_p_frame_qp_value=$pqp \
        --stream-mmap --stream-out-mmap --stream-count=$frames \
        --stream-from="$name.raw" --stream-to="$name.fwht" >"$name.enc.log" 2>&1
    for src in "$name" "$name.ours"; do
        $V4L2 -d /dev/video1 \
            --set-fmt-video-out=pixelformat=FWHT \
            --set-fmt-video=width=$w,height=$h,pixelformat=$fourcc \
            --stream-mmap --stream-out-mmap \
            --stream-from="$src.fwht" --stream-to="$src.dec.raw" >"$src.dec.log" 2>&1
        $V4L2 -d /dev/video1 --get-fmt-video >>"$src.dec.log" 2>&1 || true
    done
    ls -l "$name.fwht" "$name.dec.raw" "$name.ours.dec.raw"
done < vectors.list
