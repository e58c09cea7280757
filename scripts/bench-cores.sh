#!/usr/bin/env bash
# Two cores over one, in one run: each Nexmark query over the built-in generator on one
# core (`taskset -c 0`, `--parallelism 1`) and on two (`taskset -c 0,1`,
# `--parallelism 2`), alternating (which goes first changes each round), ROUNDS times. Prints each round's rates and ratio, and per query the
# median ratio (the issue's target: 1.8 or more). Rounds alternate so that a slow spell
# of this shared machine falls on both sides; one round's ratio wanders by up to 0.4.
#
#   scripts/bench-cores.sh [EVENTS] [ROUNDS] [QUERY...]
#       (default 40,000,000 events, 3 rounds, every query)
#   q3 and q8 read persons and auctions (8% of the events): give them 100,000,000
#   events, or each run lasts about a second and the ratio measures the start-up.
#   BIN=path/to/weir scripts/bench-cores.sh      (default: the release build)
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${1:-40000000}
ROUNDS=${2:-3}
shift 2 || shift $# || true
QUERIES=("$@")
[ ${#QUERIES[@]} -gt 0 ] || QUERIES=(q0 q1 q2 q3 q4 q5 q7 q8 session)
source scripts/lib/release-bin.sh
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed to pin one core" >&2; exit 1; }

# One run of query $1 on $2 cores: its events per second and cores used.
run() {
  local pinned=0 out
  [ "$2" -eq 2 ] && pinned=0,1
  if ! out=$(taskset -c "$pinned" "$BIN" bench nexmark --query "$1" --events "$EVENTS" --parallelism "$2" --json 2>&1); then
    echo "weir bench --query $1 --parallelism $2 failed:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$out" | tail -n 1 | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["events_per_second"], d["cores_used"])'
}

for q in "${QUERIES[@]}"; do
  ratios=()
  for round in $(seq "$ROUNDS"); do
    order="1 2"
    [ $((round % 2)) -eq 0 ] && order="2 1"
    for cores in $order; do
      measured=$(run "$q" "$cores") || exit 1
      if [ "$cores" -eq 1 ]; then
        read -r one one_cores <<<"$measured"
      else
        read -r two two_cores <<<"$measured"
      fi
    done
    ratio=$(python3 -c "print(f'{$two / $one:.2f}')")
    ratios+=("$ratio")
    python3 -c "print(f'$q round $round: 1 core {$one / 1e6:.2f} M events/s ({$one_cores:.2f} cores), 2 cores {$two / 1e6:.2f} M ({$two_cores:.2f} cores): $ratio')"
  done
  python3 -c "import statistics, sys; r = sorted(map(float, sys.argv[1:])); print(f'$q: 2 over 1, median of {len(r)}: {statistics.median(r):.2f} (from {r[0]:.2f} to {r[-1]:.2f})')" "${ratios[@]}"
done
