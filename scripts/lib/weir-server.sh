# Sourced by the benchmark scripts. start_weir DATA_DIR runs "$BIN serve" with
# DATA_DIR/weir.toml on a free loopback port and sets WEIR_PID and WEIR_URL;
# sql "STATEMENT" runs one statement against it and fails on an error.
start_weir() {
  local data=$1
  "$BIN" serve --config "$data/weir.toml" --listen 127.0.0.1:0 --data-dir "$data" > "$data/out" 2> "$data/log" &
  WEIR_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$data/out" 2>/dev/null && break; sleep 0.1; done
  WEIR_URL=$(sed -n 's/^weir listening on //p' "$data/out")
}

sql() {
  curl -sf "$WEIR_URL/api/v1/sql" -H 'content-type: application/json' -d "{\"sql\": \"$1\"}" > /dev/null
}
