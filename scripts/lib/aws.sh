# Sourced by scripts/test.sh: local AWS endpoints for tests, from npm, on free loopback
# ports: kinesalite for Kinesis (started through kinesalite.js, which binds 127.0.0.1
# and can inject faults per stream) and dynalite for DynamoDB.
#   install_aws_endpoints  puts both in $WEIR_TOOLS/aws (default ~/.cache/weir-tools) once
#   start_kinesis DIR      exports WEIR_TEST_KINESIS (its URL) and KINESIS_PID
#   start_dynamodb DIR     exports WEIR_TEST_DYNAMODB (its URL) and DYNAMODB_PID
#   stop_aws_endpoints     stops both by PID
WEIR_TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"
AWS_ENDPOINTS="$WEIR_TOOLS/aws"
source "$(dirname "${BASH_SOURCE[0]}")/net.sh"

install_aws_endpoints() {
  if [ ! -f "$AWS_ENDPOINTS/node_modules/kinesalite/package.json" ] \
    || [ ! -f "$AWS_ENDPOINTS/node_modules/dynalite/package.json" ]; then
    mkdir -p "$AWS_ENDPOINTS"
    (cd "$AWS_ENDPOINTS" && npm install --no-audit --no-fund --loglevel=error kinesalite@3.3.3 dynalite@4.0.0)
  fi
  # Tests that need an endpoint of their own (one that starts late) start these.
  export WEIR_KINESALITE_JS
  WEIR_KINESALITE_JS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kinesalite.js"
  export WEIR_AWS_MODULES="$AWS_ENDPOINTS/node_modules"
}

# wait_http URL PID LOG: wait until URL answers (any status) or PID dies.
wait_http() {
  local url=$1 pid=$2 log=$3
  for _ in $(seq 100); do
    if curl -s -o /dev/null "$url" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$url did not start; its log:" >&2
  cat "$log" >&2
  return 1
}

start_kinesis() {
  local dir=$1 port
  port=$(free_port)
  node "$WEIR_KINESALITE_JS" "$port" "$WEIR_AWS_MODULES" > "$dir/kinesalite.log" 2>&1 &
  KINESIS_PID=$!
  wait_http "http://127.0.0.1:$port/" "$KINESIS_PID" "$dir/kinesalite.log" || return 1
  export WEIR_TEST_KINESIS="http://127.0.0.1:$port" KINESIS_PID
}

start_dynamodb() {
  local dir=$1 port
  port=$(free_port)
  node "$WEIR_AWS_MODULES/dynalite/cli.js" --host 127.0.0.1 --port "$port" \
    --createTableMs 50 --deleteTableMs 50 --updateTableMs 50 > "$dir/dynalite.log" 2>&1 &
  DYNAMODB_PID=$!
  wait_http "http://127.0.0.1:$port/" "$DYNAMODB_PID" "$dir/dynalite.log" || return 1
  export WEIR_TEST_DYNAMODB="http://127.0.0.1:$port" DYNAMODB_PID
}

stop_aws_endpoints() {
  for pid in "${KINESIS_PID:-}" "${DYNAMODB_PID:-}"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  KINESIS_PID="" DYNAMODB_PID=""
}
