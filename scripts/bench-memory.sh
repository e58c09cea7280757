#!/usr/bin/env bash
# The resident memory of `weir bench nexmark` through a run, once a second: whether a
# query's memory stays flat as the events go on. Each query runs in a process of its own.
#
#   scripts/bench-memory.sh [EVENTS] [QUERY...]   (default 50,000,000 events, every query)
#   BIN=path/to/weir scripts/bench-memory.sh      (default: the release build)
#
# Prints per query: the samples (MiB; the last few are the ceiling measured after the
# run), then weir bench's own line (peak memory, rate, latency).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${1:-50000000}
shift || true
QUERIES=("$@")
[ ${#QUERIES[@]} -gt 0 ] || QUERIES=(q0 q1 q2 q3 q4 q5 q7 q8 session)
source scripts/lib/release-bin.sh

for q in "${QUERIES[@]}"; do
  out=$(mktemp)
  RUST_LOG=warn "$BIN" bench nexmark --query "$q" --events "$EVENTS" >"$out" 2>/dev/null &
  pid=$!
  samples=""
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && samples="$samples $rss"
    sleep 1
  done
  status=0
  wait "$pid" || status=$?
  echo "$q: resident MiB each second:$samples"
  [ "$status" -eq 0 ] || echo "$q: weir bench failed (exit $status); rerun it alone to see why"
  cat "$out"
  rm -f "$out"
done
