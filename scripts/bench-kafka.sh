#!/usr/bin/env bash
# The Kafka source's throughput against its ceiling, in one run on one broker (tansu, on
# loopback, in memory): MESSAGES small JSON bids are produced to a 4-partition topic,
# then read by a plain librdkafka consumer that does nothing with them (the ceiling),
# then by weir (a Kafka source and one updating aggregate), and the same records by
# weir's `file` connector from a JSON-lines file. weir's times run from CREATE VIEW until
# the view has counted every record; its CPU time (user and system, all threads, from
# /proc) over the same span gives the cost per record, which the broker's own share of
# this machine's cores does not blur.
# Usage: [BIN=/path/to/weir] scripts/bench-kafka.sh [messages]   (default 10,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
MESSAGES="${1:-10000000}"
cargo build --release -p weir-benches --bin weir-kafka-tool --quiet
TOOL="$CARGO_TARGET_DIR/release/weir-kafka-tool"
if [ -z "${BIN:-}" ]; then
  cargo build --release -p weir-web --quiet
  BIN="$CARGO_TARGET_DIR/release/weir"
fi
WORK=$(mktemp -d)
source scripts/lib/kafka.sh
install_tansu > /dev/null
mkdir -p "$WORK/kafka"
start_kafka "$WORK/kafka"
source scripts/lib/weir-server.sh
# Like weir-server.sh's sql, but a refused statement stops the run with its error.
sql() {
  local answer
  answer=$(curl -s "$WEIR_URL/api/v1/sql" -H 'content-type: application/json' -d "{\"sql\": \"$1\"}")
  case "$answer" in *'"error"'*) echo "$1: $answer" >&2; exit 1 ;; esac
}
# `|| true`: under set -e a failed kill (weir already stopped) would end the trap early.
trap 'kill ${WEIR_PID:-} 2>/dev/null || true; stop_kafka; rm -rf "$WORK"' EXIT
TOPIC="bench-$(date +%s)"
"$TOOL" produce "$WEIR_TEST_KAFKA" "$TOPIC" "$MESSAGES" "$WORK/bids.jsonl"
/usr/bin/time -o "$WORK/consumer-cpu" -f '%U %S' "$TOOL" consume "$WEIR_TEST_KAFKA" "$TOPIC" "$MESSAGES"
python3 -c "import sys; u, s = map(float, open(sys.argv[1]).read().split()); n = int(sys.argv[2]); print(f'plain librdkafka consumer: {u + s:.2f} CPU s = {(u + s) * 1e9 / n:.0f} CPU ns per record')" "$WORK/consumer-cpu" "$MESSAGES"

# A process's CPU time so far (user + system, all its threads), in clock ticks.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# Time from CREATE VIEW until the view has counted `MESSAGES` records.
run_weir() {
  local name=$1 source=$2
  mkdir -p "$WORK/$name/files"
  # The file connector replays files from the data dir's files/.
  ln -f "$WORK/bids.jsonl" "$WORK/$name/files/bids.jsonl"
  printf '[runtime.checkpoints]\ninterval = "10s"\n' > "$WORK/$name/weir.toml"
  start_weir "$WORK/$name"
  sql "$source"
  local start end cpu_start cpu_end
  cpu_start=$(cpu_ticks "$WEIR_PID")
  start=$(date +%s.%N)
  sql "CREATE MATERIALIZED VIEW per_user AS SELECT user_id, count(*) AS n FROM bids GROUP BY user_id"
  until [ "$(curl -sf "$WEIR_URL/api/v1/sql" -H 'content-type: application/json' \
      -d '{"sql": "SELECT sum(n) AS n FROM per_user"}' | sed -n 's/.*"rows":\[\[\([0-9]*\)\]\].*/\1/p')" = "$MESSAGES" ]; do
    sleep 0.05
  done
  end=$(date +%s.%N)
  cpu_end=$(cpu_ticks "$WEIR_PID")
  python3 -c "import sys; n, s = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); cpu = (int(sys.argv[6]) - int(sys.argv[5])) / int(sys.argv[7]); print(f'weir, {sys.argv[4]}: {n} records in {s:.2f} s = {n/s:.0f} records/s; {cpu:.2f} CPU s = {cpu * 1e9 / n:.0f} CPU ns per record')" "$MESSAGES" "$start" "$end" "$name" "$cpu_start" "$cpu_end" "$(getconf CLK_TCK)"
  kill "$WEIR_PID"; wait "$WEIR_PID" 2>/dev/null || true
}
COLUMNS="id BIGINT, user_id BIGINT, price BIGINT, ts BIGINT"
run_weir kafka "CREATE SOURCE bids ($COLUMNS) WITH (connector = 'kafka', brokers = '$WEIR_TEST_KAFKA', topic = '$TOPIC', start = 'earliest')"
run_weir file "CREATE SOURCE bids ($COLUMNS) WITH (connector = 'file', path = 'bids.jsonl')"
