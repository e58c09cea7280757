#!/usr/bin/env bash
# Touch most of the machine's free memory once, before measuring. On a fresh virtual
# machine the host backs a page only when the guest first touches it: there the first
# 19 GiB took 74 s to touch (0.26 GiB/s) and 8 GiB more after that 5.7 s (1.5 GiB/s).
# A benchmark that grows large tables (an aggregate over millions of keys) runs at a
# fraction of its rate until the memory it lands on has been touched once, and its
# figures then vary by a factor of two from run to run (docs/PERFORMANCE.md, "A fresh
# machine's memory"). Prints how fast the touch ran: near 1 GiB/s or more, the memory
# was warm already.
#
#   scripts/warm-memory.sh [GIB]      (default: three quarters of MemAvailable)
set -euo pipefail
GIB=${1:-$(awk '/MemAvailable/ { print int($2 * 3 / 4 / 1048576) }' /proc/meminfo)}
python3 - "$GIB" <<'PY'
import sys, time
gib = int(sys.argv[1])
started = time.perf_counter()
touched = bytearray(b"\x01") * (gib << 30)
took = time.perf_counter() - started
print(f"touched {gib} GiB in {took:.1f} s ({gib / max(took, 1e-9):.2f} GiB/s)")
PY
