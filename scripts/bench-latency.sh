#!/usr/bin/env bash
# End-to-end latency of the real binary with the settings a user gets by default: events
# sent over HTTP at a steady rate (default 100,000 events/s for 20 s) while a client
# follows two views' server-sent event streams (benches/bin/latency.rs says what is
# measured). Prints p50, p99 and max for a filter view and for a 1-second tumbling window,
# then weir's own weir_end_to_end_latency_seconds histogram.
# MAX_DELAY=0ms creates the source with max_delay = '0ms' (default: the source default).
# Usage: [BIN=/path/to/weir] [MAX_DELAY=0ms] scripts/bench-latency.sh [events_per_second] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
cargo build --release -p weir-benches --bin weir-latency-tool --quiet
if [ -z "${BIN:-}" ]; then
  cargo build --release -p weir-web --quiet
  BIN="$CARGO_TARGET_DIR/release/weir"
fi
DATA=$(mktemp -d)
: > "$DATA/weir.toml"
source scripts/lib/weir-server.sh
start_weir "$DATA"
trap 'kill $WEIR_PID 2>/dev/null; rm -rf "$DATA"' EXIT
"$CARGO_TARGET_DIR/release/weir-latency-tool" "$WEIR_URL" "${1:-100000}" "${2:-20}"
echo "weir's histogram (weir_end_to_end_latency_seconds, cumulative counts per bucket):"
curl -sf "$WEIR_URL/metrics" | grep '^weir_end_to_end_latency_seconds' | grep -v '_sum\|_count' | sed 's/^weir_end_to_end_latency_seconds_bucket//'
