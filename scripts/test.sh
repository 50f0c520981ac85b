#!/usr/bin/env bash
# test.sh -- the whole test suite, as CI runs it (.ci/run): set-up, formatting,
# clippy with warnings as errors, every test target, the doc tests, then the
# VM tests (scripts/vm-test.sh: the kernel-driver tests in a qemu guest).
# Tests that need hardware or the VM are gated by their own documented switch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; "$@"; }
# Every `cargo test` run's output also goes to a log, so the totals can be
# printed last as one plain line ("N passed, N failed").
log=$(mktemp)
trap 'rm -f "$log"' EXIT
tests() { step "$@" 2>&1 | tee -a "$log"; }
# --locked: Cargo.lock is committed and must already match Cargo.toml.
step cargo fmt --all -- --check
step cargo clippy --locked --all-targets -- -D warnings
# The plugin's .so for tests/plugin_load.rs (cargo test builds only the rlib).
step cargo build --locked
tests cargo test --locked --all-targets
tests cargo test --locked --doc
# The kernel-driver tests (vicodec, vkms, real dma-bufs), in one qemu guest
# boot; they fail the run like the host tests do.
tests scripts/vm-test.sh

awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, g }' "$log"
