#!/usr/bin/env bash
# run.sh — the browser test of the web client (tests/web/*.test.mjs) with
# Node's TAP reporter; ends with the line "N passed, N failed" that
# scripts/run-tests.sh sums (failed = TAP's fail + cancelled).
#
#   CHATD=build/chatd WEB_ROOT=build/web bash tests/web/run.sh [node --test args]
#
# CHATD defaults to build/chatd and WEB_ROOT to web/ beside it ($(BUILD)/web,
# built by web/web.mk). playwright-core (pinned in package-lock.json) is
# installed with `npm ci` when node_modules is missing or older than the
# lockfile; the browser is Debian's chromium (scripts/install-deps.sh).
# WEB_SCREENSHOTS=DIR writes the screenshots there (make web-screenshots).
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

chatd=${CHATD:-$repo/build/chatd}
case "$chatd" in /*) ;; *) chatd="$PWD/$chatd" ;; esac
export CHATD="$chatd"
web_root=${WEB_ROOT:-$(dirname "$CHATD")/web}
case "$web_root" in /*) ;; *) web_root="$PWD/$web_root" ;; esac
export WEB_ROOT="$web_root"
if [ -n "${WEB_SCREENSHOTS:-}" ]; then
  case "$WEB_SCREENSHOTS" in /*) ;; *) WEB_SCREENSHOTS="$PWD/$WEB_SCREENSHOTS" ;; esac
  export WEB_SCREENSHOTS
fi

summary() { echo "$1 passed, $2 failed"; }

if ! command -v node >/dev/null 2>&1; then
  echo "run.sh: node not found (scripts/install-deps.sh installs it)"
  summary 0 1
  exit 1
fi

cd "$here" || exit 1
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "run.sh: npm ci (playwright-core from package-lock.json)"
  if ! npm ci --ignore-scripts --no-audit --no-fund >/dev/null; then
    echo "run.sh: npm ci failed"
    summary 0 1
    exit 1
  fi
fi

out=$(mktemp "${TMPDIR:-/tmp}/chatd-web-test.XXXXXX")
trap 'rm -f "$out"' EXIT
# A hard bound on the whole run (the test takes well under a minute).
timeout --kill-after=10 300 node --test --test-concurrency=1 --test-timeout=120000 --test-reporter=tap "$@" 2>&1 | tee "$out"
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
