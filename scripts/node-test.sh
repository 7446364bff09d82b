#!/usr/bin/env bash
# node-test.sh — runs the Node test files of one test folder with `node
# --test` and its TAP reporter, after `npm ci` when node_modules is missing or
# older than the lockfile; ends with the line "N passed, N failed" that
# scripts/run-tests.sh sums (failed = TAP's fail + cancelled: a test that
# timed out or a file that crashed). Shared by tests/e2e/run.sh and
# tests/web/run.sh, which set up their environment first.
#
#   scripts/node-test.sh DIR SECONDS [node --test args]
set -u
dir=$1 limit=$2
shift 2

summary() { echo "$1 passed, $2 failed"; }

if ! command -v node >/dev/null 2>&1; then
  echo "node-test: node not found (scripts/install-deps.sh installs it)"
  summary 0 1
  exit 1
fi

cd "$dir" || { summary 0 1; exit 1; }
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "node-test: npm ci in $dir (from package-lock.json)"
  if ! npm ci --ignore-scripts --no-audit --no-fund >/dev/null; then
    echo "node-test: npm ci failed"
    summary 0 1
    exit 1
  fi
fi

out=$(mktemp "${TMPDIR:-/tmp}/chatlog-node-test.XXXXXX")
trap 'rm -f "$out"' EXIT
# A hard bound on the whole run; each test has its own timeout below it.
timeout --kill-after=10 "$limit" node --test --test-concurrency=1 --test-timeout=120000 \
  --test-reporter=tap "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}

count() { grep -E "^# $1 [0-9]+\$" "$out" | tail -n 1 | awk '{print $3}'; }
pass=$(count pass)
fail=$(count fail)
cancelled=$(count cancelled)
if [ -z "$pass" ] || [ -z "$fail" ]; then
  echo "node-test: node --test printed no summary (exit $rc)"
  summary "${pass:-0}" 1
  exit 1
fi
fail=$((fail + ${cancelled:-0}))
if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
  echo "node-test: node --test exited $rc with no failed test"
  fail=1
fi
summary "$pass" "$fail"
[ "$fail" -eq 0 ]
