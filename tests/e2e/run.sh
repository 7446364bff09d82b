#!/usr/bin/env bash
# run.sh — the Node end-to-end tests of chatd (tests/e2e/*.test.mjs), one
# file at a time, with Node's TAP reporter; ends with the line
# "N passed, N failed" that scripts/run-tests.sh sums (failed = TAP's fail +
# cancelled, e.g. a test that timed out or a file that crashed).
#
#   CHATD=build-san/chatd bash tests/e2e/run.sh [node --test args, e.g. a file]
#
# CHATD defaults to build/chatd. The dependencies (ws, protobufjs, pinned in
# package-lock.json) are installed with `npm ci` when node_modules is missing
# or older than the lockfile. E2E_SCALE multiplies load sizes (default 1).
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

chatd=${CHATD:-$repo/build/chatd}
case "$chatd" in /*) ;; *) chatd="$PWD/$chatd" ;; esac
export CHATD="$chatd"

summary() { echo "$1 passed, $2 failed"; }

if [ ! -x "$CHATD" ]; then
  echo "run.sh: no chatd binary at $CHATD (build it with make)"
  summary 0 1
  exit 1
fi
if ! command -v node >/dev/null 2>&1; then
  echo "run.sh: node not found (scripts/install-deps.sh installs it)"
  summary 0 1
  exit 1
fi

cd "$here" || exit 1
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "run.sh: npm ci (ws, protobufjs from package-lock.json)"
  if ! npm ci --no-audit --no-fund >/dev/null; then
    echo "run.sh: npm ci failed"
    summary 0 1
    exit 1
  fi
fi

out=$(mktemp "${TMPDIR:-/tmp}/chatd-e2e-node.XXXXXX")
trap 'rm -f "$out"' EXIT
# A hard bound on the whole run; each test has its own timeout well below it.
timeout --kill-after=10 900 node --test --test-concurrency=1 --test-reporter=tap "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}

count() { grep -E "^# $1 [0-9]+\$" "$out" | tail -n 1 | awk '{print $3}'; }
pass=$(count pass)
fail=$(count fail)
cancelled=$(count cancelled)
if [ -z "$pass" ] || [ -z "$fail" ]; then
  echo "run.sh: node --test printed no summary (exit $rc)"
  summary "${pass:-0}" 1
  exit 1
fi
fail=$((fail + ${cancelled:-0}))
if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
  echo "run.sh: node --test exited $rc with no failed test"
  fail=1
fi
summary "$pass" "$fail"
[ "$fail" -eq 0 ]
