#!/usr/bin/env bash
# Rows per second into each sink's store (PostgreSQL, Redis, Parquet files, DynamoDB on
# dynalite), from a 1-million-row append and from a q5-like updating view, beside the
# store's own bulk load of the same rows in the same run (scripts/bench_sinks.py says
# what is timed). Starts the stores on loopback and stops them at the end.
# Usage: [BIN=/path/to/weir] scripts/bench-sinks.sh [rows] [postgres|redis|files|dynamodb ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
ROWS="${1:-1000000}"
shift || true
if [ -z "${BIN:-}" ]; then
  cargo build --release -p weir-web --quiet
  BIN="$CARGO_TARGET_DIR/release/weir"
fi
export BIN
WORK=$(mktemp -d)
source scripts/lib/postgres.sh
source scripts/lib/redis.sh
source scripts/lib/aws.sh
install_postgres
install_redis
install_aws_endpoints > /dev/null
trap 'stop_postgres; stop_redis; stop_aws_endpoints; rm -rf "$WORK"' EXIT
start_postgres "$WORK"
start_redis "$WORK"
start_dynamodb "$WORK"
# pyarrow, for the files baseline, in the tools venv (installed once).
source scripts/lib/s3.sh
install_moto > /dev/null
"$WEIR_TOOLS/venv/bin/python" -c 'import pyarrow' 2>/dev/null \
  || "$WEIR_TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "pyarrow==21.0.0"
"$WEIR_TOOLS/venv/bin/python" scripts/bench_sinks.py "$ROWS" "$@"
