#!/usr/bin/env bash
# End-to-end throughput of the real binary: a finite Nexmark bid run through one
# tumbling-window view, timed from the view's creation to the source finishing, with the
# process's peak resident memory (flat across run lengths: state is bounded by open windows).
# With CHECKPOINT_INTERVAL (default 10s) it also reports the checkpoints taken meanwhile.
# QUERY=q5 runs Nexmark q5 instead of the tumbling aggregate; QUERY=session a SESSION view;
# QUERY=q8 a window join and QUERY=q3 an interval join of the person and auction sources;
# QUERY=q4 an aggregate over an interval join of auctions and bids; QUERY=stream3 three
# views (a filter, a tumbling aggregate, an updating aggregate) over one derived stream
# (the passthrough plugin's transform of the bids).
# QUERY=updating runs `GROUP BY auction` without a window.
# Usage: [QUERY=tumble|updating|q5|session|q8|q3|q4|stream3] [VIEW_MAX_ROWS=n] [CHECKPOINT_INTERVAL=1s] scripts/bench-nexmark.sh [events]   (default 20,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
EVENTS="${1:-20000000}"
# BIN=/path/to/weir measures that binary instead (an older build, for before-and-after).
if [ -z "${BIN:-}" ]; then
  cargo build --release -p weir-web --quiet
  BIN="$CARGO_TARGET_DIR/release/weir"
fi
DATA=$(mktemp -d)
# VIEW_MAX_ROWS bounds the rows the view keeps (default 1,000,000), to separate the
# view's retained rows from operator state in the memory figure.
printf '[runtime]\nview-max-rows = %s\n[runtime.checkpoints]\ninterval = "%s"\n' \
  "${VIEW_MAX_ROWS:-1000000}" "${CHECKPOINT_INTERVAL:-10s}" > "$DATA/weir.toml"
source scripts/lib/weir-server.sh
start_weir "$DATA"
PID=$WEIR_PID URL=$WEIR_URL
trap 'kill $PID 2>/dev/null; rm -rf "$DATA"' EXIT
sql "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = $EVENTS, seed = 1, event_rate = 100000)"
START=$(date +%s.%N)
case "${QUERY:-tumble}" in
  tumble) VIEW="SELECT window_start, window_end, auction, count(*) AS n, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end, auction" ;;
  # Nexmark q5 (hot items) in its subquery form: runs whole per closed window.
  q5) VIEW="SELECT a.auction, a.num, a.window_start, a.window_end FROM (SELECT auction, count(*) AS num, window_start, window_end FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end) AS a JOIN (SELECT max(c.num) AS maxn, c.window_start, c.window_end FROM (SELECT count(*) AS num, window_start, window_end FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end) AS c GROUP BY c.window_start, c.window_end) AS m ON a.window_start = m.window_start AND a.window_end = m.window_end AND a.num >= m.maxn" ;;
  # The updating aggregate users write first (GROUP BY without a window); the number of
  # distinct auctions grows with the events (about 60,000 per million).
  updating) VIEW="SELECT auction, count(*) AS n, max(price) AS top FROM bids GROUP BY auction" ;;
  # Sessions per bidder, ending after 2 s without a bid.
  session) VIEW="SELECT window_start, window_end, bidder, count(*) AS bids, max(price) AS top FROM SESSION(bids, date_time, INTERVAL '2' SECOND) GROUP BY window_start, window_end, bidder" ;;
  # Nexmark q8 (new users who opened auctions): a window join of two sources.
  q8)
    for t in person auction; do
      sql "CREATE SOURCE $t WITH (connector = 'nexmark', table = '$t', events = $EVENTS, seed = 1, event_rate = 100000)"
    done
    WAIT="person auction"
    VIEW="SELECT p.id, p.name, p.window_start FROM (SELECT id, name, window_start, window_end FROM TUMBLE(person, date_time, INTERVAL '10' SECOND) GROUP BY id, name, window_start, window_end) AS p JOIN (SELECT seller, window_start, window_end FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND) GROUP BY seller, window_start, window_end) AS a ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end" ;;
  # Nexmark q3 (local sellers): an interval join of two sources, rows kept for 10 s.
  q3)
    for t in person auction; do
      sql "CREATE SOURCE $t WITH (connector = 'nexmark', table = '$t', events = $EVENTS, seed = 1, event_rate = 100000)"
    done
    WAIT="person auction"
    OPTIONS="WITH (state_ttl = '10 seconds')"
    VIEW="SELECT P.name, P.city, P.state, A.id FROM auction AS A JOIN person AS P ON A.seller = P.id WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')" ;;
  # Nexmark q4 (average closing price per category): an aggregate over an interval join.
  q4)
    sql "CREATE SOURCE auction WITH (connector = 'nexmark', table = 'auction', events = $EVENTS, seed = 1, event_rate = 100000)"
    WAIT="auction bids"
    OPTIONS="WITH (state_ttl = '10 seconds')"
    VIEW="SELECT Q.category, avg(Q.final) AS avg_final FROM (SELECT A.id, A.category, A.date_time, max(B.price) AS final FROM auction AS A JOIN bids AS B ON A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.category, A.date_time) AS Q GROUP BY Q.category" ;;
  # Three views over one derived stream: the transform runs once per batch for all.
  stream3)
    WASM="${WASM:-$CARGO_TARGET_DIR/wasm32-unknown-unknown/plugin/weir_plugin_passthrough.wasm}"
    [ -f "$WASM" ] || scripts/build-plugins.sh > /dev/null
    curl -sf --data-binary @"$WASM" "$URL/api/v1/plugins?name=passthrough" > /dev/null
    sql "CREATE STREAM s AS TRANSFORM bids USING PLUGIN 'passthrough.passthrough'"
    START=$(date +%s.%N)   # the bids flow from the first view on
    sql "CREATE MATERIALIZED VIEW big AS SELECT auction, price FROM s WHERE price > 10000000"
    sql "CREATE MATERIALIZED VIEW per_channel AS SELECT channel, count(*) AS n, max(price) AS top FROM s GROUP BY channel"
    VIEW="SELECT window_start, window_end, auction, count(*) AS n FROM TUMBLE(s, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end, auction" ;;
  *) echo "QUERY must be tumble, updating, q5, session, q8, q3, q4 or stream3" >&2; exit 2 ;;
esac
sql "CREATE MATERIALIZED VIEW q ${OPTIONS:-} AS $VIEW"
for s in ${WAIT:-bids}; do
  until curl -sf "$URL/api/v1/sources/$s" | grep -q '"status":"finished"'; do sleep 0.05; done
done
END=$(date +%s.%N)
ROWS=0
for s in ${WAIT:-bids}; do
  ROWS=$((ROWS + $(curl -sf "$URL/api/v1/sources/$s" | sed -n 's/.*"records_in":\([0-9]*\).*/\1/p')))
done
PEAK_KB=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$PID/status")
python3 -c "import sys; e, r, s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3]); print(f'{e} events ({r} source rows) in {s:.2f} s: {e/s/1e6:.2f} M events/s, {r/s/1e6:.2f} M rows/s, peak RSS {int(sys.argv[5])/1024:.0f} MiB')" "$EVENTS" "$ROWS" "$START" "$END" "$PEAK_KB"
curl -sf "$URL/metrics" | python3 -c "
import sys
m = {}
for line in sys.stdin:
    if line.startswith('weir_checkpoint'):
        k, v = line.rsplit(' ', 1)
        m[k] = float(v)
n = m.get('weir_checkpoint_duration_seconds_count', 0)
if n:
    print(f\"{int(n)} checkpoints, mean {m['weir_checkpoint_duration_seconds_sum'] / n * 1000:.1f} ms, last {m.get('weir_checkpoint_bytes', 0) / 1024:.0f} KiB\")
"
