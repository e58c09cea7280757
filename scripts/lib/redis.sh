# Sourced by scripts/test.sh: a Redis server for tests, Debian's `redis-server`, on a
# free loopback port. install_redis installs the package when missing and exports
# WEIR_REDIS_SERVER (tests that restart a server start one of their own with it);
# start_redis DIR starts one in DIR and exports WEIR_TEST_REDIS (a URL) and REDIS_PID;
# stop_redis stops it by PID.
source "$(dirname "${BASH_SOURCE[0]}")/net.sh"

install_redis() {
  if ! command -v redis-server > /dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server > /dev/null
  fi
  WEIR_REDIS_SERVER=$(command -v redis-server)
  export WEIR_REDIS_SERVER
}

start_redis() {
  local dir=$1/redis port
  port=$(free_port)
  mkdir -p "$dir"
  "$WEIR_REDIS_SERVER" --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' \
    --appendonly no --daemonize no > "$dir/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
      export WEIR_TEST_REDIS="redis://127.0.0.1:$port/0" REDIS_PID
      return 0
    fi
    kill -0 "$REDIS_PID" 2> /dev/null || break
    sleep 0.1
  done
  echo "redis-server did not start; its log:" >&2
  cat "$dir/redis.log" >&2
  return 1
}

stop_redis() {
  if [ -n "${REDIS_PID:-}" ]; then
    kill "$REDIS_PID" 2> /dev/null || true
    wait "$REDIS_PID" 2> /dev/null || true
  fi
}
