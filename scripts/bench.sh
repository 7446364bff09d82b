#!/usr/bin/env bash
# Runs the benchmarks in BUILD_DIR/bench and prints their output, then a
# summary of the issue's targets, measured against PASS or MISS. Targets are
# reported, not asserted: timing on a shared machine is not a test. The exit
# status is non-zero only if a benchmark fails to run or reports an error.
#
#   scripts/bench.sh BUILD_DIR
#
# Extra arguments for each bench come from the environment:
#   ENGINE_BENCH_ARGS    e.g. "--seconds 1 --raw-seconds 0.5"
#   EXTRA_BENCH_ARGS     the two extra engine_bench runs (--mode each, chain)
#   COMPRESS_BENCH_ARGS  e.g. "--messages 200000"
# Any other executable in BUILD_DIR/bench runs with no arguments.
set -u
cd "$(dirname "$0")/.." || exit 2

build=${1:-build}
if [ ! -d "$build/bench" ]; then
  echo "bench.sh: no $build/bench; run make first" >&2
  exit 2
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=()

run() {
  local name=$1; shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee -a "$out"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "=== $name: exit status $rc"
    failed+=("$name")
  fi
  echo
}

# The engine first: its figures are the ones the issue sets targets for.
bins=()
[ -x "$build/bench/engine_bench" ] && bins+=("$build/bench/engine_bench")
for bin in "$build"/bench/*; do
  [ -f "$bin" ] && [ -x "$bin" ] && [ "$bin" != "$build/bench/engine_bench" ] && bins+=("$bin")
done

for bin in "${bins[@]}"; do
  name=$(basename "$bin")
  case "$name" in
    engine_bench)
      # shellcheck disable=SC2086
      run "$name" "$bin" ${ENGINE_BENCH_ARGS:-}
      # The same 256-producer cases with a naive consumer (every callback
      # wakes its event loop) and with no consumer thread at all (the next
      # append issued from the callback: the engine's ceiling).
      # shellcheck disable=SC2086
      run "$name (each)" "$bin" --mode each --cases 256,256:one --seconds 2 \
        ${EXTRA_BENCH_ARGS:-}
      # shellcheck disable=SC2086
      run "$name (chain)" "$bin" --mode chain --cases 256,256:one --seconds 2 \
        ${EXTRA_BENCH_ARGS:-}
      ;;
    compress_bench)
      # shellcheck disable=SC2086
      run "$name" "$bin" ${COMPRESS_BENCH_ARGS:-}
      ;;
    *)
      run "$name" "$bin"
      ;;
  esac
done

# ---- summary ----
# field KEY LINE: the value of KEY=... in a RESULT line.
field() {
  echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}
# result BENCH CASE MODE: the RESULT line of that case.
result() {
  grep -E "^RESULT bench=$1 " "$out" | grep -E " case=$2 " | grep -E " mode=$3 " | tail -n 1
}
verdict() { # verdict OK -> PASS/MISS
  if [ "$1" = 1 ]; then echo PASS; else echo MISS; fi
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 >= b + 0) ? 1 : 0 }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 <= b + 0) ? 1 : 0 }'; }

echo "=== summary: the issue's targets (2-core machine), measured in this run"
printf '%-60s %-12s %-36s %s\n' "target" "case" "measured" "verdict"
spread=$(result engine p256-spread group)
one=$(result engine p256-one group)
p1=$(result engine p1-spread group)
row() { printf '%-60s %-12s %-36s %s\n' "$@"; }
if [ -n "$spread" ]; then
  v=$(field msgs_per_s "$spread")
  row ">= 200,000 durable msgs/s, 256 producers" p256-spread "$v msgs/s" \
    "$(verdict "$(ge "$v" 200000)")"
fi
if [ -n "$one" ]; then
  v=$(field msgs_per_s "$one")
  row "  same, all 256 on one shard" p256-one "$v msgs/s" "$(verdict "$(ge "$v" 200000)")"
fi
if [ -n "$spread" ] && [ -n "$(field ratio_k "$spread")" ]; then
  k=$(field ratio_k "$spread"); r=$(field ratio "$spread"); t=$(field rawk_threads "$spread")
  row ">= 0.80 x raw write+fdatasync, same batch sizes, 256 prod." p256-spread \
    "$k x $t loops ($r x 1 loop)" "$(verdict "$(ge "$k" 0.8)")"
fi
if [ -n "$one" ] && [ -n "$(field ratio "$one")" ]; then
  r=$(field ratio "$one")
  row "  same, one shard (one writer, one file) vs one loop" p256-one "$r x 1 loop" \
    "$(verdict "$(ge "$r" 0.8)")"
fi
if [ -n "$p1" ] && [ -n "$(field latency_ratio "$p1")" ]; then
  l=$(field latency_ratio "$p1")
  row "1 producer: p50 latency <= 1.2 x one raw write+fdatasync" p1-spread \
    "$l ($(field p50_us "$p1") vs $(field raw_p50_us "$p1") us)" \
    "$(verdict "$(le "$l" 1.2)")"
fi
for m in each chain; do
  for c in p256-spread p256-one; do
    x=$(result engine "$c" "$m")
    [ -n "$x" ] || continue
    k=$(field ratio_k "$x")
    row "  256 producers, --mode $m" "$c" \
      "$(field msgs_per_s "$x") msgs/s, $k x $(field rawk_threads "$x") loops" \
      "$(verdict "$(ge "$k" 0.8)")"
  done
done
comp=$(grep -E '^RESULT bench=compress ' "$out" | tail -n 1)
if [ -n "$comp" ]; then
  row "bytes on disk per message, before -> after compression" corpus \
    "$(field raw_bytes_per_msg "$comp") -> $(field disk_bytes_per_msg "$comp") B" "info"
  d=$(grep -E '^RESULT bench=compress_dict block=65536 dict=bodies ' "$out" | tail -n 1)
  [ -n "$d" ] && row "  zstd dictionary (bodies) at the engine's 64 KiB blocks" corpus \
    "$(field vs_none_pct "$d")% size" "info"
fi

if [ ${#failed[@]} -ne 0 ]; then
  echo "bench.sh: failed: ${failed[*]}"
  exit 1
fi
exit 0
