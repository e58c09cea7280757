#!/usr/bin/env bash
# Builds the example and hostile plugins in plugins/ for wasm32-unknown-unknown, and the
# currency plugin also for wasm32-wasip1 (adding the targets if missing). The modules
# land in $CARGO_TARGET_DIR/wasm32-unknown-unknown/plugin/*.wasm and
# $CARGO_TARGET_DIR/wasm32-wasip1/plugin/*.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$' \
  || rustup target add wasm32-unknown-unknown
cargo build --quiet --profile plugin --target wasm32-unknown-unknown \
  -p weir-plugin-currency -p weir-plugin-redact -p weir-plugin-enrich \
  -p weir-plugin-passthrough -p weir-plugin-hostile
# One plugin also for wasm32-wasip1, whose WASI imports the host answers with stubs.
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip1$' \
  || rustup target add wasm32-wasip1
cargo build --quiet --profile plugin --target wasm32-wasip1 -p weir-plugin-currency
ls -l "$CARGO_TARGET_DIR"/wasm32-unknown-unknown/plugin/*.wasm \
  "$CARGO_TARGET_DIR"/wasm32-wasip1/plugin/*.wasm | awk '{print $5, $9}'
