#!/usr/bin/env bash
# weir's file connector against DuckDB reading the same newline-delimited JSON file of
# Nexmark bids with the same number of threads, for q0, q1, q2, q5 and q7, in one run.
#
#   scripts/bench-duckdb.sh [BIDS] [THREADS]      (default 2,000,000 bids, 2 threads)
#   BIN=path/to/weir scripts/bench-duckdb.sh      (default: the release build)
#
# The bids file (random bids in the Nexmark bid schema, fixed seed) is written once to
# ~/.cache/weir-bench/. DuckDB runs from a venv there (pip install duckdb), and each of
# its queries materializes its result (CREATE TEMP TABLE ... AS), as a view keeps rows.
# Prints one line per query: rows/s of weir and of DuckDB, and weir's ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

BIDS=${1:-2000000}
THREADS=${2:-2}
CACHE="$HOME/.cache/weir-bench"
mkdir -p "$CACHE"
source scripts/lib/release-bin.sh
if [ ! -x "$CACHE/duckdb-venv/bin/python" ]; then
  python3 -m venv "$CACHE/duckdb-venv"
  "$CACHE/duckdb-venv/bin/pip" install -q duckdb
fi
PY="$CACHE/duckdb-venv/bin/python"
FILE="$CACHE/bids-$BIDS.jsonl"
if [ ! -s "$FILE" ]; then
  "$PY" - "$FILE" "$BIDS" <<'EOF'
import random, sys
path, n = sys.argv[1], int(sys.argv[2])
random.seed(1)
channels = ["Google", "Facebook", "Baidu", "Apple"]
start = 1436918400000
with open(path + ".tmp", "w") as f:
    out = []
    for i in range(n):
        c = channels[i % 4]
        out.append('{"auction":%d,"bidder":%d,"price":%d,"channel":"%s","url":"https://www.nexmark.com/%s/item.htm?query=1","date_time":%d,"extra":"%s"}\n'
                   % (1000 + random.randint(0, 9999), 1000 + random.randint(0, 4999),
                      random.randint(100, 10_000_000), c, c.lower(), start + i // 10,
                      "x" * random.randint(0, 20)))
        if len(out) >= 100_000:
            f.write("".join(out)); out = []
    f.write("".join(out))
import os
os.rename(path + ".tmp", path)
EOF
fi

for q in q0 q1 q2 q5 q7; do
  weir=$("$BIN" bench file --input "$FILE" --sql "$q" --parallelism "$THREADS" --json 2>/dev/null)
  "$PY" - "$FILE" "$THREADS" "$q" "$weir" <<'EOF'
import json, sys, time
import duckdb
path, threads, q, weir = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
bid = f"""(SELECT auction, bidder, price, channel, url, epoch_ms(date_time) AS date_time, extra
  FROM read_json('{path}', format = 'newline_delimited', columns = {{auction: 'BIGINT',
  bidder: 'BIGINT', price: 'BIGINT', channel: 'VARCHAR', url: 'VARCHAR',
  date_time: 'BIGINT', extra: 'VARCHAR'}}))"""
queries = {
    "q0": f"SELECT auction, bidder, price, date_time, extra FROM {bid}",
    "q1": f"SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM {bid}",
    "q2": f"SELECT auction, price FROM {bid} WHERE auction % 123 = 0",
    # Hot items: 10 s windows sliding by 2 s, the auctions with the most bids.
    "q5": f"""WITH h AS (
  SELECT ws AS window_start, ws + 10000 AS window_end, auction, count(*) AS num
  FROM (SELECT auction, (epoch_ms(date_time) - epoch_ms(date_time) % 2000) - k * 2000 AS ws
        FROM {bid} CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS o(k))
  GROUP BY ws, auction)
SELECT a.auction, a.num, a.window_start, a.window_end FROM h AS a
JOIN (SELECT max(num) AS maxn, window_start FROM h GROUP BY window_start) AS m
ON a.window_start = m.window_start AND a.num >= m.maxn""",
    # Highest bid per 10 s window.
    "q7": f"""WITH b AS (SELECT *, time_bucket(INTERVAL '10 seconds', date_time) AS window_start FROM {bid})
SELECT b.auction, b.price, b.bidder, b.date_time, b.extra FROM b
JOIN (SELECT max(price) AS maxprice, window_start FROM b GROUP BY window_start) AS m
ON b.window_start = m.window_start AND b.price = m.maxprice""",
}
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
started = time.perf_counter()
con.execute(f"CREATE TEMP TABLE out AS {queries[q]}")
seconds = time.perf_counter() - started
rows = weir["events"]
duck = rows / seconds
print(f"{q}: weir {weir['events_per_second'] / 1e6:.2f} M rows/s ({weir['cores_used']:.2f} cores), "
      f"DuckDB {duckdb.__version__} {duck / 1e6:.2f} M rows/s ({threads} threads); "
      f"weir/DuckDB = {weir['events_per_second'] / duck:.2f}")
EOF
done
