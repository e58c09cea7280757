#!/usr/bin/env bash
# weir's file connector against Flink 1.20 (PyFlink, a local mini-cluster) reading the
# same newline-delimited JSON bids with the same parallelism, for q0, q1, q2, q5 and q7
# (q5 as nexmark-flink writes it; q7 as weir's, a window join), in one run.
#
#   scripts/bench-flink.sh [BIDS] [PARALLELISM]    (default 2,000,000 bids, 2)
#   BIN=path/to/weir scripts/bench-flink.sh        (default: the release build)
#   ONLY="q5 q7" scripts/bench-flink.sh            (some of the queries)
#
# The bids file is the one scripts/bench-duckdb.sh writes (run that first). Flink reads
# it split into PARALLELISM files of whole lines in one directory (its JSON file source
# reads a file as one split), in streaming mode, with the same watermark as weir
# (4 seconds behind the event time), into the blackhole connector (Nexmark's usual
# sink: Flink keeps no rows, where weir keeps every row in its view). PyFlink comes
# from PyPI into a venv under ~/.cache/weir-bench and needs a Java 11 or 17 runtime.
# A first untimed job warms the JVM; each query's time is from its submission to its
# end. Prints one line per query: rows/s of weir and of Flink, and weir's ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

BIDS=${1:-2000000}
P=${2:-2}
CACHE="$HOME/.cache/weir-bench"
FILE="$CACHE/bids-$BIDS.jsonl"
source scripts/lib/release-bin.sh
if [ ! -s "$FILE" ]; then
  echo "no $FILE: run scripts/bench-duckdb.sh $BIDS first (it writes the file)" >&2
  exit 1
fi
if ! command -v java >/dev/null; then
  echo "Flink needs Java 11 or 17: apt-get install openjdk-17-jre-headless" >&2
  exit 1
fi
if [ ! -x "$CACHE/flink-venv/bin/python" ]; then
  python3 -m venv "$CACHE/flink-venv"
  "$CACHE/flink-venv/bin/pip" install -q 'apache-flink==1.20.*'
fi
PARTS="$CACHE/bids-$BIDS-in-$P"
if [ ! -d "$PARTS" ]; then
  mkdir -p "$PARTS.tmp"
  split -n "l/$P" -d "$FILE" "$PARTS.tmp/part-"
  mv "$PARTS.tmp" "$PARTS"
fi

weir=()
for q in ${ONLY:-q0 q1 q2 q5 q7}; do
  weir+=("$("$BIN" bench file --input "$FILE" --sql "$q" --parallelism "$P" --json 2>/dev/null)")
done

"$CACHE/flink-venv/bin/python" - "$PARTS" "$P" "${weir[@]}" <<'EOF'
import json, sys, time
from pyflink.table import EnvironmentSettings, TableEnvironment

parts, p, weir = sys.argv[1], sys.argv[2], [json.loads(a) for a in sys.argv[3:]]
env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
env.get_config().set("parallelism.default", p)
env.execute_sql(f"""CREATE TABLE bid (
  auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
  date_time BIGINT, extra STRING,
  dateTime AS TO_TIMESTAMP_LTZ(date_time, 3),
  WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'file://{parts}', 'format' = 'json')""")

hop = "TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))"
tumble = "TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))"
queries = {
    "q0": ("auction BIGINT, bidder BIGINT, price BIGINT, dateTime TIMESTAMP_LTZ(3), extra STRING",
           "SELECT auction, bidder, price, dateTime, extra FROM bid"),
    "q1": ("auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), dateTime TIMESTAMP_LTZ(3), extra STRING",
           "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid"),
    "q2": ("auction BIGINT, price BIGINT",
           "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0"),
    "q5": ("auction BIGINT, num BIGINT, window_start TIMESTAMP(3), window_end TIMESTAMP(3)",
           f"""SELECT AuctionBids.auction, AuctionBids.num, AuctionBids.starttime, AuctionBids.endtime
FROM (SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
      FROM {hop} GROUP BY auction, window_start, window_end) AS AuctionBids
JOIN (SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
      FROM (SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
            FROM {hop} GROUP BY auction, window_start, window_end) AS CountBids
      GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
   AND AuctionBids.num >= MaxBids.maxn"""),
    # weir's q7: the bids of each 10 s window at its highest price, a window join
    # (nexmark-flink's text joins on price with a BETWEEN on the window end instead,
    # which Flink runs as a regular join).
    "q7": ("auction BIGINT, price BIGINT, bidder BIGINT, dateTime TIMESTAMP_LTZ(3), extra STRING",
           f"""SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra
FROM (SELECT * FROM {tumble}) B
JOIN (SELECT MAX(price) AS maxprice, window_start, window_end
      FROM {tumble} GROUP BY window_start, window_end) M
ON B.window_start = M.window_start AND B.window_end = M.window_end AND B.price = M.maxprice"""),
}

def run(name):
    columns, query = queries[name]
    env.execute_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS sink_{name} ({columns}) "
                    "WITH ('connector' = 'blackhole')")
    started = time.perf_counter()
    env.execute_sql(f"INSERT INTO sink_{name} {query}").wait()
    return time.perf_counter() - started

run("q2")  # warm the JVM, untimed
for w in weir:
    q = w["query"]
    seconds = run(q)
    flink = w["events"] / seconds
    print(f"{q}: weir {w['events_per_second'] / 1e6:.2f} M rows/s ({w['cores_used']:.2f} cores), "
          f"Flink 1.20 {flink / 1e6:.2f} M rows/s (parallelism {p}, {seconds:.1f} s); "
          f"weir/Flink = {w['events_per_second'] / flink:.2f}", flush=True)
EOF
