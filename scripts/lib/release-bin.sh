# Sourced by the benchmark scripts that measure a ready binary: sets BIN to the release
# build (or keeps BIN from the environment) and fails with how to make one when missing.
BIN=${BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/weir-release}/release/weir}
if [ ! -x "$BIN" ]; then
  echo "no weir binary at $BIN: cargo build --release -p weir-web, or set BIN" >&2
  exit 1
fi
