#!/usr/bin/env bash
# Nexmark q1 end to end on the real binary, twice on the same finite bid run: once with
# the conversion in native SQL (0.908 * price) and once through the currency plugin
# (to_eur(price)). Prints events per second for each and their ratio.
# Usage: scripts/bench-plugin-q1.sh [events]   (default 10,000,000)
# VIEW_WITH="WITH (parallelism = 1)" gives the views that option (serial batches).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
EVENTS="${1:-10000000}"
# BIN=/path/to/weir measures that binary instead (an older build, for before-and-after).
if [ -z "${BIN:-}" ]; then
  cargo build --release -p weir-web --quiet
  BIN="$CARGO_TARGET_DIR/release/weir"
fi
scripts/build-plugins.sh > /dev/null
WASM="$CARGO_TARGET_DIR/wasm32-unknown-unknown/plugin/weir_plugin_currency.wasm"

source scripts/lib/weir-server.sh

run() { # $1 = the price expression; prints events per second
  local data start end
  data=$(mktemp -d)
  # q1 keeps every row; bound what the view retains so memory is not the measure.
  printf '[runtime]\nview-max-rows = 100000\n' > "$data/weir.toml"
  start_weir "$data"
  local pid=$WEIR_PID url=$WEIR_URL
  curl -sf --data-binary @"$WASM" "$url/api/v1/plugins?name=currency" > /dev/null
  sql "CREATE SOURCE bid WITH (connector = 'nexmark', table = 'bid', events = $EVENTS, seed = 1, event_rate = 100000)"
  start=$(date +%s.%N)
  sql "CREATE MATERIALIZED VIEW q1 ${VIEW_WITH:-} AS SELECT auction, bidder, $1 AS price, date_time, extra FROM bid"
  until curl -sf "$url/api/v1/sources/bid" | grep -q '"status":"finished"'; do sleep 0.05; done
  end=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$data"
  python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.0f}')" "$EVENTS" "$start" "$end"
}

NATIVE=$(run "0.908 * price")
PLUGIN=$(run "to_eur(price)")
python3 -c "import sys; n, p = float(sys.argv[1]), float(sys.argv[2]); print(f'q1 native: {n/1e6:.2f} M events/s; q1 plugin: {p/1e6:.2f} M events/s; plugin/native = {p/n:.2f}')" "$NATIVE" "$PLUGIN"
