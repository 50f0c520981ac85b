#!/usr/bin/env bash
# meson-cargo-build.sh CARGO SRCDIR TARGETDIR OUTPUT -- meson.build's build step.
# Runs cargo from the source dir (so .cargo/config.toml applies, as for a
# plain `cargo build`) with the target dir in meson's build dir, then copies
# the plugin to where meson expects its output.
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 CARGO SRCDIR TARGETDIR OUTPUT" >&2; exit 2; }
cargo=$1 src=$2 target=$3
out=$(realpath -m "$4") # meson passes it relative to the build dir
cd "$src"
"$cargo" build --locked --release --lib --target-dir "$target"
cp "$target/release/libgstrsvpu.so" "$out"
