#!/bin/bash
# Runs INSIDE the vicodec VM (see README.md). For every line of
# $DIR/vectors.list (name fourcc width height frames gop i_qp p_qp
# frame_bytes bytesperline), with the feeder $DIR/fwht-m2m (fwht-m2m.c):
#   $name.raw        -> vicodec encoder (/dev/video0) -> $name.fwht
#   $name.fwht       -> vicodec decoder (/dev/video1) -> $name.dec.raw
#   $name.ours.fwht  -> vicodec decoder (/dev/video1) -> $name.ours.dec.raw
# Raw frames go in and come out WHOLE: frame_bytes (sizeimage) each, padding
# rows and columns included, in exactly our `Format::raw` layout (fwht-m2m
# stops if vicodec's bytesperline or sizeimage differ). The encoder's OUTPUT
# format is set to the visible size (vicodec rounds it up to the coded size),
# then the crop selection brings the visible size back.
set -uo pipefail
DIR=${1:?usage: make-vectors.sh DIR}
cd "$DIR"
FEED="timeout 300 $DIR/fwht-m2m"
[ -x "$DIR/fwht-m2m" ] || { echo "build $DIR/fwht-m2m first (see README.md)"; exit 1; }
status=0
while read -r name fourcc w h frames gop iqp pqp size bpl; do
    echo "== $name: $fourcc ${w}x${h}, $frames frames, gop $gop, qp $iqp/$pqp, $size bytes/frame"
    $FEED enc /dev/video0 "$fourcc" "$w" "$h" "$gop" "$iqp" "$pqp" "$bpl" "$size" \
        "$name.raw" "$name.fwht" >"$name.enc.log" 2>&1 || { status=1; cat "$name.enc.log"; }
    for src in "$name" "$name.ours"; do
        $FEED dec /dev/video1 "$fourcc" "$w" "$h" "$bpl" "$size" \
            "$src.fwht" "$src.dec.raw" >"$src.dec.log" 2>&1 || { status=1; cat "$src.dec.log"; }
    done
    ls -l "$name.fwht" "$name.dec.raw" "$name.ours.dec.raw"
done < vectors.list
exit $status
