"""One window of Nexmark q5 in DataFusion alone: grouped by auction and the window
columns (constant within one window), and by auction alone, at 1 and 2 partitions.

    ~/.cache/weir-bench/duckdb-venv/bin/pip install datafusion pyarrow
    ~/.cache/weir-bench/duckdb-venv/bin/python scripts/bench-window-keys.py [BIDS_FILE]

BIDS_FILE: the JSON-lines bids scripts/bench-duckdb.sh writes (its first 1,000,000
auctions are read). Prints milliseconds per run, the mean of ten.
"""
import json
import os
import sys
import time

import pyarrow as pa
from datafusion import SessionConfig, SessionContext

path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/weir-bench/bids-10000000.jsonl")
auctions = []
with open(path) as f:
    for i, line in enumerate(f):
        if i >= 1_000_000:
            break
        auctions.append(json.loads(line)["auction"])
n = len(auctions)
table = pa.table({
    "auction": pa.array(auctions, pa.int64()),
    "window_start": pa.array([1_000_000] * n, pa.timestamp("ms")),
    "window_end": pa.array([1_010_000] * n, pa.timestamp("ms")),
})
WITH_WINDOW = """SELECT a.auction, a.num, a.window_start, a.window_end
FROM (SELECT auction, count(*) AS num, window_start, window_end FROM t
      GROUP BY auction, window_start, window_end) AS a
JOIN (SELECT max(c.num) AS maxn, c.window_start, c.window_end
      FROM (SELECT count(*) AS num, window_start, window_end FROM t
            GROUP BY auction, window_start, window_end) AS c
      GROUP BY c.window_start, c.window_end) AS m
ON a.window_start = m.window_start AND a.window_end = m.window_end AND a.num >= m.maxn"""
WITHOUT = """SELECT a.auction, a.num FROM (SELECT auction, count(*) AS num FROM t GROUP BY auction) AS a
JOIN (SELECT max(c.num) AS maxn FROM (SELECT count(*) AS num FROM t GROUP BY auction) AS c) AS m
ON a.num >= m.maxn"""
for name, sql in [("by auction and the window columns", WITH_WINDOW), ("by auction alone", WITHOUT)]:
    for partitions in [1, 2]:
        ctx = SessionContext(SessionConfig().with_target_partitions(partitions))
        batches = table.to_batches(max_chunksize=16384)
        ctx.register_record_batches("t", [batches[i::partitions] for i in range(partitions)])
        df = ctx.sql(sql)
        df.collect()
        start = time.time()
        for _ in range(10):
            df.collect()
        print(f"{name}, {partitions} partition(s): {(time.time() - start) * 100:.1f} ms")
