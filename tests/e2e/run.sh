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

if [ ! -x "$CHATD" ]; then
  echo "run.sh: no chatd binary at $CHATD (build it with make)"
  echo "0 passed, 1 failed"
  exit 1
fi
exec bash "$repo/scripts/node-test.sh" "$here" 900 "$@"
