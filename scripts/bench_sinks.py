#!/usr/bin/env python3
"""Rows per second into each sink's store, beside the store's own bulk load, in one run.

Run by scripts/bench-sinks.sh, which builds weir and starts the stores; reads BIN, and
WEIR_TEST_POSTGRES, WEIR_TEST_REDIS, WEIR_TEST_DYNAMODB from the environment.

For each store, two figures:
- append: a view holding N bids (id, auction, price, ts) read from a file, then a sink
  created on it: its first epoch is the view's N rows; timed from CREATE SINK until the
  sink has delivered them.
- q5-like: an updating view (count and max price per auction, 10,000 auctions) and its
  sink made together over the same file; timed from CREATE VIEW until the file is read
  and the sink has delivered every change; reported as input rows/s and rows written/s.
And the store's own bulk load of the same N rows: PostgreSQL COPY from a CSV file,
`redis-cli --pipe` of N SETs, pyarrow writing the rows as one Snappy Parquet file (when
pyarrow is importable: bench-sinks.sh installs it in the tools venv), and a plain
DynamoDB client's BatchWriteItem calls (25 items each, 8 at once, as the sink makes them).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
# dynalite (node, in memory) takes a few thousand writes a second: a smaller run.
N_DYNAMO = min(N, int(os.environ.get("DYNAMO_ROWS", "50000")))
AUCTIONS = 10_000
BIN = os.environ["BIN"]


def bids_file(directory, n):
    path = os.path.join(directory, "files", f"bids-{n}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        with open(path, "w") as f:
            for i in range(n):
                f.write(f'{{"id": {i}, "auction": {i % AUCTIONS}, "price": {i * 7 % 10_000}, "ts": {1_700_000_000_000 + i}}}\n')
    return os.path.basename(path)


class Weir:
    def __init__(self, data, env=None):
        with open(os.path.join(data, "weir.toml"), "w") as f:
            f.write('[runtime.checkpoints]\ninterval = "1s"\n')
        self.out = open(os.path.join(data, "out"), "w+")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", os.path.join(data, "weir.toml"), "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=self.out,
            stderr=open(os.path.join(data, "log"), "w"),
            env={**os.environ, **(env or {})},
        )
        for _ in range(200):
            self.out.seek(0)
            line = self.out.readline()
            if line.startswith("weir listening on "):
                self.url = line.split("weir listening on ", 1)[1].strip()
                return
            time.sleep(0.05)
        raise RuntimeError("weir did not start")

    def sql(self, statement):
        request = urllib.request.Request(
            self.url + "/api/v1/sql",
            data=json.dumps({"sql": statement}).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            return json.load(urllib.request.urlopen(request))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{statement}: {e.read().decode()}") from None

    def get(self, path):
        return json.load(urllib.request.urlopen(self.url + path))

    def view_rows(self, view):
        answer = urllib.request.urlopen(self.url + f"/api/v1/views/{view}?limit=1")
        return int(answer.headers["weir-total-rows"])

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def wait(what, condition, timeout=1800):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def caught_up(weir, sink, rows=None):
    s = weir.get(f"/api/v1/sinks/{sink}")
    if s["status"] == "failed":
        raise RuntimeError(f"sink {sink} failed: {s['error']}")
    done = s["rows_pending"] == 0 and s["delivered_epoch"] == s["durable_epoch"] and s["delivered_epoch"] > 0
    return done and (rows is None or s["messages"] >= rows)


def append(name, sink_options, n, env=None):
    with tempfile.TemporaryDirectory() as data:
        source = bids_file(data, n)
        weir = Weir(data, env)
        try:
            weir.sql(f"CREATE SOURCE bids (id BIGINT, auction BIGINT, price BIGINT, ts BIGINT) WITH (connector = 'file', path = '{source}')")
            weir.sql("CREATE MATERIALIZED VIEW all_bids WITH (max_rows = 'unbounded') AS SELECT * FROM bids")
            wait("the view's rows", lambda: weir.view_rows("all_bids") == n)
            start = time.time()
            weir.sql(f"CREATE SINK out FROM all_bids WITH ({sink_options})")
            wait("the sink", lambda: caught_up(weir, "out", n))
            seconds = time.time() - start
        finally:
            weir.stop()
    print(f"{name:10} append   {n:>9,} rows in {seconds:7.2f} s = {n / seconds:>10,.0f} rows/s", flush=True)


def q5_like(name, sink_options, n, env=None):
    with tempfile.TemporaryDirectory() as data:
        source = bids_file(data, n)
        weir = Weir(data, env)
        try:
            weir.sql(f"CREATE SOURCE bids (id BIGINT, auction BIGINT, price BIGINT, ts BIGINT) WITH (connector = 'file', path = '{source}')")
            start = time.time()
            weir.sql("CREATE MATERIALIZED VIEW per_auction AS SELECT auction, count(*) AS n, max(price) AS top FROM bids GROUP BY auction")
            weir.sql(f"CREATE SINK out FROM per_auction WITH ({sink_options})")
            wait("the file", lambda: weir.get("/api/v1/sources/bids")["status"] == "finished")
            wait("the sink", lambda: caught_up(weir, "out"))
            seconds = time.time() - start
            written = weir.get("/api/v1/sinks/out")["messages"]
        finally:
            weir.stop()
    print(f"{name:10} q5-like  {n:>9,} input rows in {seconds:7.2f} s = {n / seconds:>10,.0f} rows/s; {written:,} rows written = {written / seconds:,.0f}/s", flush=True)


def timed(name, what, n, command, **kwargs):
    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kwargs)
    seconds = time.time() - start
    print(f"{name:10} {what:8} {n:>9,} rows in {seconds:7.2f} s = {n / seconds:>10,.0f} rows/s  (the store's own bulk load)", flush=True)


def postgres():
    url = os.environ["WEIR_TEST_POSTGRES"]
    stamp = int(time.time())
    append("postgres", f"connector = 'postgres', url = '{url}', table = 'bench_append_{stamp}'", N)
    q5_like("postgres", f"connector = 'postgres', url = '{url}', table = 'bench_q5_{stamp}', key = 'auction'", N)
    with tempfile.NamedTemporaryFile("w", suffix=".csv") as csv:
        for i in range(N):
            csv.write(f"{i},{i % AUCTIONS},{i * 7 % 10_000},{1_700_000_000_000 + i}\n")
        csv.flush()
        table = f"bench_copy_{stamp}"
        subprocess.run(["psql", url, "-qc", f"CREATE TABLE {table} (id bigint, auction bigint, price bigint, ts bigint)"], check=True)
        timed("postgres", "COPY", N, ["psql", url, "-qc", f"\\copy {table} FROM '{csv.name}' CSV"])


def redis():
    url = os.environ["WEIR_TEST_REDIS"]
    stamp = int(time.time())
    append("redis", f"connector = 'redis', url = '{url}', key = 'a{stamp}:{{id}}'", N)
    q5_like("redis", f"connector = 'redis', url = '{url}', key = 'q{stamp}:{{auction}}'", N)
    with tempfile.NamedTemporaryFile("wb", suffix=".resp") as resp:
        for i in range(N):
            key = f"p{stamp}:{i}".encode()
            value = f'{{"id":{i},"auction":{i % AUCTIONS},"price":{i * 7 % 10_000},"ts":{1_700_000_000_000 + i}}}'.encode()
            resp.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
        resp.flush()
        with open(resp.name, "rb") as stdin:
            timed("redis", "--pipe", N, ["redis-cli", "-u", url, "--pipe"], stdin=stdin)


def files():
    with tempfile.TemporaryDirectory() as out:
        append("files", f"connector = 'files', path = '{out}/append'", N)
        q5_like("files", f"connector = 'files', path = '{out}/q5'", N)
        try:
            import pyarrow
            import pyarrow.parquet
        except ImportError:
            print("files      (pyarrow is not installed: no baseline)", flush=True)
            return
        # The rows as Arrow first, as the sink has them; only the write is timed.
        table = pyarrow.table({
            "id": list(range(N)),
            "auction": [i % AUCTIONS for i in range(N)],
            "price": [i * 7 % 10_000 for i in range(N)],
            "ts": [1_700_000_000_000 + i for i in range(N)],
        })
        start = time.time()
        pyarrow.parquet.write_table(table, f"{out}/pyarrow.parquet", compression="snappy")
        seconds = time.time() - start
        print(f"{'files':10} {'pyarrow':8} {N:>9,} rows in {seconds:7.2f} s = {N / seconds:>10,.0f} rows/s  (the store's own bulk load)", flush=True)


def dynamodb_call(endpoint, target, body):
    """One call of DynamoDB's JSON protocol (dynalite does not check signatures)."""
    request = urllib.request.Request(
        endpoint,
        data=json.dumps(body).encode(),
        headers={
            "content-type": "application/x-amz-json-1.0",
            "x-amz-target": f"DynamoDB_20120810.{target}",
            "x-amz-date": "20260101T000000Z",
            "authorization": "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        },
    )
    return json.load(urllib.request.urlopen(request))


def dynamodb_table(endpoint, table, key):
    dynamodb_call(endpoint, "CreateTable", {
        "TableName": table,
        "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "N"}],
        "BillingMode": "PAY_PER_REQUEST",
    })
    time.sleep(0.5)


def dynamodb_batch_writes(endpoint, table, n):
    """A plain client writing the same rows: BatchWriteItem of 25 items, 8 calls at once,
    unprocessed items sent again."""
    from concurrent.futures import ThreadPoolExecutor

    def write(first):
        items = [{"PutRequest": {"Item": {
            "id": {"N": str(i)}, "auction": {"N": str(i % AUCTIONS)},
            "price": {"N": str(i * 7 % 10_000)}, "ts": {"N": str(1_700_000_000_000 + i)},
        }}} for i in range(first, min(first + 25, n))]
        while items:
            answer = dynamodb_call(endpoint, "BatchWriteItem", {"RequestItems": {table: items}})
            items = answer.get("UnprocessedItems", {}).get(table, [])

    start = time.time()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(0, n, 25)))
    seconds = time.time() - start
    print(f"{'dynamodb':10} {'client':8} {n:>9,} rows in {seconds:7.2f} s = {n / seconds:>10,.0f} rows/s  (a plain client's BatchWriteItem)", flush=True)


def dynamodb():
    endpoint = os.environ["WEIR_TEST_DYNAMODB"]
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    stamp = int(time.time())
    dynamodb_table(endpoint, f"append{stamp}", "id")
    dynamodb_table(endpoint, f"q5{stamp}", "auction")
    append("dynamodb", f"connector = 'dynamodb', endpoint = '{endpoint}', table = 'append{stamp}', partition_key = 'id'", N_DYNAMO, env)
    q5_like("dynamodb", f"connector = 'dynamodb', endpoint = '{endpoint}', table = 'q5{stamp}', partition_key = 'auction'", N_DYNAMO, env)
    dynamodb_table(endpoint, f"client{stamp}", "id")
    dynamodb_batch_writes(endpoint, f"client{stamp}", N_DYNAMO)


if __name__ == "__main__":
    wanted = sys.argv[2:] or ["postgres", "redis", "files", "dynamodb"]
    for store in wanted:
        globals()[store]()
