#!/bin/bash
# Runs on the HOST after make-vectors.sh: for each vector NAME given (default:
# every line of DIR/vectors.list), copies DIR/NAME.fwht into this directory
# and writes NAME.sha256 (the sidecar tests/fwht_vicodec.rs checks):
#   stream 0                 sha256 of NAME.fwht (vicodec's encoder)
#   input i                  frame i of NAME.raw (the regenerated input, fed whole)
#   vicodec-decoded i        frame i of NAME.dec.raw (vicodec's decoder on NAME.fwht)
#   vicodec-decoded-ours i   frame i of NAME.ours.dec.raw (vicodec's decoder on ours)
# Every frame is frame_bytes (sizeimage) long: the whole buffer, padding included.
set -euo pipefail
DIR=${1:?usage: write-sidecars.sh DIR [NAME...]}
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
frame_sums() { # kind file frame_bytes frames
    local i n
    n=$(( $(stat -c %s "$2") / $3 ))
    [ "$n" -eq "$4" ] || { echo "$2: $n frames, expected $4" >&2; exit 1; }
    for ((i = 0; i < $4; i++)); do
        echo "$1 $i $(dd if="$2" bs="$3" skip=$i count=1 status=none | sha256sum | cut -d' ' -f1)"
    done
}
while read -r name fourcc w h frames gop iqp pqp size bpl; do
    if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then continue; fi
    cp "$DIR/$name.fwht" "$HERE/$name.fwht"
    {
        echo "# $name $fourcc $w $h $frames $gop $iqp $pqp $size  (name fourcc width height frames gop i_qp p_qp frame_bytes)"
        echo "# input: regenerated raw frames; stream: vicodec encoder output ($name.fwht);"
        echo "# vicodec-decoded: vicodec decoder on $name.fwht; vicodec-decoded-ours: vicodec decoder on our stream;"
        echo "# every raw frame is the whole buffer ($size bytes, bytesperline $bpl), padding included, fed/read by fwht-m2m"
        echo "stream 0 $(sha256sum <"$DIR/$name.fwht" | cut -d' ' -f1)"
        frame_sums input "$DIR/$name.raw" "$size" "$frames"
        frame_sums vicodec-decoded "$DIR/$name.dec.raw" "$size" "$frames"
        frame_sums vicodec-decoded-ours "$DIR/$name.ours.dec.raw" "$size" "$frames"
    } >"$HERE/$name.sha256"
    echo "wrote $name.sha256"
done <"$DIR/vectors.list"
