# Sourced by scripts/test.sh: an S3 endpoint for tests, the `moto` server from PyPI,
# on a free loopback port. install_moto puts it in the tools venv once; start_s3 DIR
# starts it and exports WEIR_TEST_S3 (its URL) and S3_PID; stop_s3 stops it by PID.
WEIR_TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"
source "$(dirname "${BASH_SOURCE[0]}")/net.sh"

install_moto() {
  MOTO="$WEIR_TOOLS/venv/bin/moto_server"
  export WEIR_MOTO="$MOTO"
  if [ ! -x "$MOTO" ]; then
    [ -d "$WEIR_TOOLS/venv" ] || python3 -m venv "$WEIR_TOOLS/venv"
    "$WEIR_TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server,s3]==5.2.5"
  fi
}

start_s3() {
  local dir=$1 port
  port=$(free_port)
  "$MOTO" -H 127.0.0.1 -p "$port" > "$dir/moto.log" 2>&1 &
  S3_PID=$!
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$port/" > /dev/null 2>&1; then
      export WEIR_TEST_S3="http://127.0.0.1:$port" S3_PID
      return 0
    fi
    kill -0 "$S3_PID" 2>/dev/null || break
    sleep 0.2
  done
  echo "moto did not start; its log:" >&2
  cat "$dir/moto.log" >&2
  return 1
}

stop_s3() {
  if [ -n "${S3_PID:-}" ]; then
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
  fi
}
