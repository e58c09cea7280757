# Sourced by scripts/test.sh: a PostgreSQL server for tests, Debian's `postgresql`, on a
# free loopback port. install_postgres installs the package when missing and exports
# WEIR_PG_BIN (its initdb, pg_ctl; tests that restart a server start one of their own
# from it); start_postgres DIR initialises a cluster in DIR (as the `postgres` user
# when run as root: initdb refuses root) and exports WEIR_TEST_POSTGRES (a URL) and
# PG_PID; stop_postgres stops it by PID.
source "$(dirname "${BASH_SOURCE[0]}")/net.sh"

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true
}

install_postgres() {
  WEIR_PG_BIN=$(pg_bin)
  if [ -z "$WEIR_PG_BIN" ] || [ ! -x "$WEIR_PG_BIN/initdb" ]; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    WEIR_PG_BIN=$(pg_bin)
  fi
  export WEIR_PG_BIN
}

# as_pg CMD...: run CMD as the user that owns the clusters.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_postgres() {
  local dir=$1/postgres port
  port=$(free_port)
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chmod o+x "$1"
    chown postgres "$dir"
  fi
  as_pg "$WEIR_PG_BIN/initdb" -D "$dir/data" -U weir --auth=trust -E UTF8 > "$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  # fsync off: a test server, thrown away after the run.
  as_pg "$WEIR_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
    start > /dev/null || { cat "$dir/server.log" >&2; return 1; }
  PG_PID=$(head -n 1 "$dir/data/postmaster.pid")
  export WEIR_TEST_POSTGRES="postgres://weir@127.0.0.1:$port/postgres" PG_PID
}

stop_postgres() {
  if [ -n "${PG_PID:-}" ]; then
    # SIGINT: PostgreSQL's fast shutdown.
    kill -INT "$PG_PID" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$PG_PID" 2>/dev/null || return 0
      sleep 0.1
    done
    kill -KILL "$PG_PID" 2>/dev/null || true
  fi
}
