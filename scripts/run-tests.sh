#!/usr/bin/env bash
# Runs the whole test suite against one or more build directories and ends
# with one line "N passed, N failed" summing every suite. Each suite prints
# its own "N passed, N failed" last; a suite that crashes or prints no such
# line counts as one failure.
#
#   scripts/run-tests.sh build build-san
set -u
cd "$(dirname "$0")/.."

total_pass=0
total_fail=0
failed_suites=()

run_suite() {
  local name=$1; shift
  echo "=== $name"
  local out rc
  out=$(mktemp)
  "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
  rm -f "$out"
  if [ -z "$line" ]; then
    echo "=== $name: no summary line (exit $rc): counted as 1 failure"
    total_fail=$((total_fail + 1))
    failed_suites+=("$name")
    return
  fi
  local p f
  p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
  f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
  fi
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  [ "$f" -ne 0 ] && failed_suites+=("$name")
}

for b in "$@"; do
  run_suite "$b: unit" "$b/tests/unit"
  run_suite "$b: crash (SIGKILL)" "$b/tests/crash" harness --rounds 30
  run_suite "$b: cli" bash tests/cli/test_cli.sh "$b/chatlog"
  # End-to-end: a real chatd driven by clients nobody here wrote (Node's ws +
  # protobufjs; Debian's python3-websockets under Debian's own python3).
  run_suite "$b: e2e node" env CHATD="$PWD/$b/chatd" bash tests/e2e/run.sh
  run_suite "$b: e2e python" /usr/bin/python3 tests/e2e_py/test_ws.py "$b/chatd"
  run_suite "$b: rest (curl)" bash tests/server/rest_smoke.sh "$b/chatd"
  # The web client ($b/web, built by web/web.mk) in Debian's chromium.
  run_suite "$b: web (chromium)" env CHATD="$PWD/$b/chatd" WEB_ROOT="$PWD/$b/web" bash tests/web/run.sh
  # Every committed fuzz input through its target (fuzz/fuzz.mk builds one
  # replay binary per fuzz/corpus/<target>/; a missing one counts as failed).
  for corpus in fuzz/corpus/*/; do
    t=$(basename "$corpus")
    run_suite "$b: fuzz corpus replay ($t)" "$b/fuzz/replay-$t"
  done
done

echo
if [ ${#failed_suites[@]} -gt 0 ]; then
  echo "failed suites: ${failed_suites[*]}"
fi
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
