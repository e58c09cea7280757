#!/usr/bin/env bash
# Run every fuzz target (runtime/src/fuzz/) for longer than the test command does:
# CASES cases each (default 20000, about five minutes on two cores).
#   scripts/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
PROPTEST_CASES="${1:-20000}" RUST_BACKTRACE=0 cargo test -p weir-runtime --lib fuzz:: -- --test-threads=2
