#!/usr/bin/env bash
# The Kinesis source's throughput against its ceiling, in one run on one endpoint
# (kinesalite on loopback, in memory): RECORDS small JSON bids are put on a 4-shard
# stream, then read by a plain aws-sdk-kinesis reader that does nothing with them (the
# ceiling: the endpoint's own speed), then by weir (a Kinesis source and one updating
# aggregate), timed from CREATE VIEW until the view has counted every record, with
# weir's CPU time over the same span. Then KPL de-aggregation in MB/s (criterion).
# Usage: [BIN=/path/to/weir] scripts/bench-kinesis.sh [records]   (default 200,000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
RECORDS="${1:-200000}"
cargo build --release -p weir-benches --bin weir-kinesis-tool --quiet
TOOL="$CARGO_TARGET_DIR/release/weir-kinesis-tool"
if [ -z "${BIN:-}" ]; then
  cargo build --release -p weir-web --quiet
  BIN="$CARGO_TARGET_DIR/release/weir"
fi
WORK=$(mktemp -d)
source scripts/lib/aws.sh
install_aws_endpoints > /dev/null
start_kinesis "$WORK"
source scripts/lib/weir-server.sh
trap 'kill ${WEIR_PID:-} 2>/dev/null || true; stop_aws_endpoints; rm -rf "$WORK"' EXIT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
STREAM="bench-$(date +%s)"
"$TOOL" produce "$WEIR_TEST_KINESIS" "$STREAM" "$RECORDS" 4
"$TOOL" consume "$WEIR_TEST_KINESIS" "$STREAM" "$RECORDS"

cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}
mkdir -p "$WORK/weir"
printf '[runtime.checkpoints]\ninterval = "10s"\n' > "$WORK/weir/weir.toml"
start_weir "$WORK/weir"
curl -sf "$WEIR_URL/api/v1/sql" -H 'content-type: application/json' -d "{\"sql\": \"CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts BIGINT) WITH (connector = 'kinesis', stream = '$STREAM', endpoint = '$WEIR_TEST_KINESIS')\"}" > /dev/null
cpu_start=$(cpu_ticks "$WEIR_PID")
start=$(date +%s.%N)
sql "CREATE MATERIALIZED VIEW per_user AS SELECT user_id, count(*) AS n FROM bids GROUP BY user_id"
until [ "$(curl -sf "$WEIR_URL/api/v1/sql" -H 'content-type: application/json' \
    -d '{"sql": "SELECT sum(n) AS n FROM per_user"}' | sed -n 's/.*"rows":\[\[\([0-9]*\)\]\].*/\1/p')" = "$RECORDS" ]; do
  sleep 0.05
done
end=$(date +%s.%N)
cpu_end=$(cpu_ticks "$WEIR_PID")
python3 -c "import sys; n, s = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); cpu = (int(sys.argv[5]) - int(sys.argv[4])) / int(sys.argv[6]); print(f'weir, kinesis source: {n} records in {s:.2f} s = {n/s:.0f} records/s; {cpu:.2f} CPU s = {cpu * 1e9 / n:.0f} CPU ns per record')" "$RECORDS" "$start" "$end" "$cpu_start" "$cpu_end" "$(getconf CLK_TCK)"
kill "$WEIR_PID"; wait "$WEIR_PID" 2>/dev/null || true
cargo bench -p weir-benches --bench kpl --quiet -- --noplot 2>&1 | grep -E "^kpl/|thrpt" || true
