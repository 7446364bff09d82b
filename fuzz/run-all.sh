#!/usr/bin/env bash
# Runs every fuzz target (or those named) for S seconds each, one at a time,
# at the lowest CPU priority, and keeps libFuzzer's output and final stats in
# build-fuzz/logs/<target>.log. Crashes land in fuzz/crashes/<target>/, new
# inputs in build-fuzz/corpus/<target>/ (merge them with make fuzz-merge).
# FUZZ_BUILD=dir builds and runs in dir instead of build-fuzz.
#
#   fuzz/run-all.sh [-s SECONDS] [TARGET...]
#
# Scratch directories go to FUZZ_TMPDIR (default /dev/shm when it exists:
# the recovery and differential targets write small data directories for
# every input, several times faster on tmpfs).
set -u
cd "$(dirname "$0")/.."
secs=600
if [ "${1:-}" = "-s" ]; then secs=$2; shift 2; fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=($(sed -n 's/^FUZZ_\(ENGINE\|SRV\)_TARGETS := //p' fuzz/fuzz.mk))
fi
fb=${FUZZ_BUILD:-build-fuzz}
if [ -z "${FUZZ_TMPDIR:-}" ] && [ -d /dev/shm ]; then export FUZZ_TMPDIR=/dev/shm; fi
make --no-print-directory FUZZ_BUILD="$fb" fuzz >/dev/null || exit 1
mkdir -p "$fb/logs"
status=0
for t in "${targets[@]}"; do
  echo "=== $t: ${secs}s"
  nice -n 19 make --no-print-directory FUZZ_BUILD="$fb" fuzz-run T="$t" S="$secs" \
    FUZZ_ARGS="${FUZZ_ARGS:-}" >"$fb/logs/$t.log" 2>&1 || status=1
  grep -E '^#[0-9]+[[:space:]]+DONE|stat::|Test unit written|SUMMARY' "$fb/logs/$t.log"
done
exit $status
