#!/usr/bin/env bash
# test.sh -- the whole test suite, as CI runs it (.ci/run): set-up, formatting,
# clippy with warnings as errors, every test target, then the doc tests.
# Tests that need hardware or the VM are gated by their own documented switch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; "$@"; }
# --locked: Cargo.lock is committed and must already match Cargo.toml.
step cargo fmt --all -- --check
step cargo clippy --locked --all-targets -- -D warnings
# The plugin's .so for tests/plugin_load.rs (cargo test builds only the rlib).
step cargo build --locked
step cargo test --locked --all-targets
step cargo test --locked --doc
