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

exec bash "$repo/scripts/node-test.sh" "$here" 300 "$@"
