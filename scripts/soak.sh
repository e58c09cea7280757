#!/usr/bin/env bash
# The soak (tests/e2e/soak.rs): the real binary on loopback under 1,000 SSE readers and
# 100 retrying ingest clients, with DDL and plugin uploads, killed with -9 every few
# minutes; then every acknowledged record must be counted exactly once, memory back at
# its plateau, no descriptor leaked, and /healthz answered throughout (p99 reported).
#   scripts/soak.sh [seconds, default 600] [kill every seconds, default 180]
# Figures go to $CARGO_TARGET_DIR/soak-report.json. The test command runs one minute.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
export WEIR_SOAK_SECS="${1:-600}"
export WEIR_SOAK_KILL_EVERY_SECS="${2:-180}"
export WEIR_SOAK_REPORT="${WEIR_SOAK_REPORT:-$CARGO_TARGET_DIR/soak-report.json}"
# 1,000 readers and 100 writers need more descriptors than many defaults allow.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  echo "soak: needs at least 4096 open files (ulimit -n is $(ulimit -n))" >&2
  exit 1
fi
cargo build -p weir-web --quiet
[ -f "$CARGO_TARGET_DIR/wasm32-unknown-unknown/plugin/weir_plugin_passthrough.wasm" ] || scripts/build-plugins.sh
cargo test -p weir-tests --test e2e --quiet -- --ignored --nocapture soak::
