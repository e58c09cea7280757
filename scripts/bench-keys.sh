#!/usr/bin/env bash
# An updating aggregate over few and over many keys, weir against DuckDB, in one run:
# `SELECT k, count(*), max(price), avg(price) ... GROUP BY k` over the bids file of
# scripts/bench-duckdb.sh, with k = auction * 100000 + bidder (9.06 million distinct keys
# over 10 M bids) and k = that % 1000 (1,000 keys). Prints each engine's rate for both,
# and the ratio many keys / few keys (the issue's target: 0.8 or more).
#
#   scripts/bench-keys.sh [BIDS] [THREADS]      (default 10,000,000 bids, 2 threads)
#   BIN=path/to/weir scripts/bench-keys.sh      (default: the release build)
set -euo pipefail
cd "$(dirname "$0")/.."

BIDS=${1:-10000000}
THREADS=${2:-2}
CACHE="$HOME/.cache/weir-bench"
FILE="$CACHE/bids-$BIDS.jsonl"
source scripts/lib/release-bin.sh
if [ ! -s "$FILE" ] || [ ! -x "$CACHE/duckdb-venv/bin/python" ]; then
  echo "no $FILE or DuckDB venv: run scripts/bench-duckdb.sh $BIDS first (it writes both)" >&2
  exit 1
fi

query() {
  echo "SELECT k, count(*) AS n, max(price) AS top, avg(price) AS mean FROM (SELECT $1 AS k, price FROM bid) GROUP BY k"
}
MANY="auction * 100000 + bidder"
FEW="(auction * 100000 + bidder) % 1000"
weir_few=$("$BIN" bench file --input "$FILE" --sql "$(query "$FEW")" --parallelism "$THREADS" --json 2>/dev/null)
weir_many=$("$BIN" bench file --input "$FILE" --sql "$(query "$MANY")" --parallelism "$THREADS" --json 2>/dev/null)
"$CACHE/duckdb-venv/bin/python" - "$FILE" "$THREADS" "$FEW" "$MANY" "$weir_few" "$weir_many" <<'PY'
import json, sys, time
import duckdb
path, threads, few, many = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
weir_few, weir_many = json.loads(sys.argv[5]), json.loads(sys.argv[6])
bid = f"""read_json('{path}', format = 'newline_delimited', columns = {{auction: 'BIGINT',
  bidder: 'BIGINT', price: 'BIGINT', channel: 'VARCHAR', url: 'VARCHAR',
  date_time: 'BIGINT', extra: 'VARCHAR'}})"""
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
duck = {}
for name, k in (("few", few), ("many", many)):
    con.execute("DROP TABLE IF EXISTS out")
    started = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE out AS SELECT k, count(*) AS n, max(price) AS top, "
                f"avg(price) AS mean FROM (SELECT {k} AS k, price FROM {bid}) GROUP BY k")
    duck[name] = weir_few["events"] / (time.perf_counter() - started)
    groups = con.execute("SELECT count(*) FROM out").fetchone()[0]
    print(f"DuckDB {duckdb.__version__}, {groups} keys: {duck[name] / 1e6:.2f} M rows/s")
w_few, w_many = weir_few["events_per_second"], weir_many["events_per_second"]
print(f"weir, 1000 keys: {w_few / 1e6:.2f} M rows/s; many keys: {w_many / 1e6:.2f} M rows/s "
      f"({weir_many['peak_memory_mib']:.0f} MiB at the peak)")
print(f"many keys / 1000 keys: weir {w_many / w_few:.2f}, DuckDB {duck['many'] / duck['few']:.2f}")
PY
