#!/usr/bin/env bash
# bench-cluster.sh — issue 6's benchmark: chatd as a three-node Raft cluster
# on this machine beside a single chatd, measured by the same load generator
# (bench/load.c) in the same run (results and setup in docs/performance.md,
# "Replicated cluster").
#
#   scripts/bench-cluster.sh BUILD_DIR        (make bench-cluster; make bench
#                                              runs it after scripts/bench.sh)
#
# In order, each bounded in time:
#   1. single   load starts its own chatd (fresh data directory, free port)
#               and runs the throughput shapes and the paced 10,000 msgs/s
#               latency phase;
#   2. cluster  scripts/cluster.sh starts three nodes (default Raft settings,
#               fresh data directories under one temporary directory, real
#               fdatasync, free ports on 127.0.0.1) with the same raised
#               per-user and per-connection limits load gives its own chatd;
#   3. cluster, clients on all nodes   load --connect n1,n2,n3: session i on
#               node i mod 3, so two thirds of the writes are forwarded to
#               their shard's leader;
#   4. cluster, clients on the shard leaders   --placement leaders: every
#               session on the node that leads its conversation's shard (no
#               forwarding; followers still deliver nothing to these clients);
#   5. the cluster is stopped (SIGTERM, then checked) and everything removed.
# Then a summary: durable msgs/s (Acks/s) per shape, single vs cluster and
# the ratio; send->ack p50/p99/p99.9 at the paced rate; the issue's targets
# (replicated throughput >= 50 % of single-node, p99 ack latency < 10 ms at
# 10,000 msgs/s) marked MET or MISSED. A miss is reported, not a failure
# (timing on a shared 2-core VM is not a test): the exit status is non-zero
# only if a run could not be made or load found an integrity error.
#
# Environment:
#   CLUSTER_BENCH_SECONDS  measured seconds per phase [5] (1 s warm-up each)
#   CLUSTER_BENCH_SHAPES   throughput shapes PAIRSxWINDOW [100x8,1000x4]
#   CLUSTER_BENCH_RATE     paced rate, msgs/s in total [10000]
#   CLUSTER_BENCH_PLACEMENTS  which cluster runs [all,leaders]
#   CLUSTER_BENCH_SHARDS   shards of the single node and of every cluster
#                          node [4]: all nodes of this bench share one disk,
#                          and 16 shards x 3 nodes = 48 writer threads
#                          flushing small groups made its queue the p99
#                          (docs/performance.md)
#   CLUSTER_BENCH_ARGS     more arguments for every load run
set -u
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
build=${1:-build}
if [ ! -x "$build/chatd" ] || [ ! -x "$build/bench/load" ]; then
  echo "bench-cluster.sh: need $build/chatd and $build/bench/load; run make first" >&2
  exit 2
fi
build_abs=$(cd "$build" && pwd)
load=$build_abs/bench/load
secs=${CLUSTER_BENCH_SECONDS:-5}
shapes=${CLUSTER_BENCH_SHAPES:-100x8,1000x4}
rate=${CLUSTER_BENCH_RATE:-10000}
nshards=${CLUSTER_BENCH_SHARDS:-4}
placements=${CLUSTER_BENCH_PLACEMENTS:-all,leaders}
# A load run takes about (connect + 1 s warm-up + secs + drain) per phase.
run_limit=$((120 + 30 * secs))

tmp=$(mktemp -d "${TMPDIR:-/tmp}/chatd-bench-cluster.XXXXXX") || exit 2
cluster_up=0
failed=()

cl() { # cluster.sh with this run's settings; cwd = tmp, so the JWT secret is
       # tmp/chatd.secret and nothing is written into the tree
  (cd "$tmp" && CLUSTER_DIR="$tmp/cluster" BUILD="$build_abs" HTTP_BASE="$http_base" \
    PEER_BASE="$peer_base" timeout -k 5 60 bash "$repo/scripts/cluster.sh" "$@")
}
cleanup() {
  if [ "$cluster_up" = 1 ]; then
    cl stop >/dev/null 2>&1 || true
    # cluster.sh stop waits 10 s per node then kills; make sure of it.
    for f in "$tmp"/cluster/n*.pid; do
      [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free ports: HTTP_BASE+1..3 and PEER_BASE+1..3 must all be bindable.
read -r http_base peer_base < <(python3 - <<'EOF'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(200):
    h = random.randrange(20000, 40000, 10)
    p = h + 5
    if all(free(h + i) and free(p + i) for i in (1, 2, 3)):
        print(h, p); break
EOF
)
if [ -z "${http_base:-}" ]; then
  echo "bench-cluster.sh: no free ports found" >&2
  exit 2
fi

# The limits load raises for its own chatd: the bench measures the server,
# not its rate limits.
limits=(--user-msgs-per-sec=1000000 --user-msgs-burst=1000000
  --conn-frames-per-sec=1000000 --conn-frames-burst=1000000
  --max-connections=1000000 --idle-timeout-ms=600000
  --ping-interval-ms=300000 --handshake-timeout-ms=120000)
common=(--phases throughput,latency --shapes "$shapes" --rate "$rate" --seconds "$secs")

run() { # name load-args...
  local name=$1; shift
  echo "=== $name: load $*"
  echo "=== $name: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  # shellcheck disable=SC2086
  timeout -k 10 "$run_limit" "$load" "$@" ${CLUSTER_BENCH_ARGS:-} 2>&1 | tee "$tmp/$name.out"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "=== $name: exit status $rc"
    failed+=("$name")
  fi
  echo
}

echo "=== bench-cluster: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "ports $((http_base + 1))-$((http_base + 3)) (HTTP), $((peer_base + 1))-$((peer_base + 3)) (links)"
run single --chatd "$build_abs/chatd" --chatd-arg=--shards=$nshards "${common[@]}"

echo "=== cluster: starting 3 nodes in $tmp/cluster"
if cl start --shards "$nshards" "${limits[@]}"; then
  cluster_up=1
  pids=$(for i in 1 2 3; do cat "$tmp/cluster/n$i.pid"; done | paste -sd,)
  targets=$(for i in 1 2 3; do printf '127.0.0.1:%d\n' $((http_base + i)); done | paste -sd,)
  for p in ${placements//,/ }; do
    run "cluster-$p" --connect "$targets" --pids "$pids" --secret-file "$tmp/chatd.secret" \
      --placement "$p" --drain 20 "${common[@]}"
  done
  # Every shard's first election is in the count; more mean leaders changed
  # during the runs (an overloaded node missing heartbeats), and writes in
  # flight then get "unavailable" (load counts them as errors).
  n=$(cat "$tmp"/cluster/n*.log | grep -c 'leader in term')
  shards=$(curl -sf --max-time 3 "http://127.0.0.1:$((http_base + 1))/api/v1/cluster" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["shards"]))' 2>/dev/null)
  echo "=== cluster: $n elections won over the whole run, ${shards:-?} shards (one each at start)"
  grep -hE ' (WARN|ERROR) ' "$tmp"/cluster/n*.log | grep -v 'max_connections lowered' | head -n 5 |
    sed 's/^/=== cluster log: /'
  cl stop
  cluster_up=0
else
  echo "=== cluster: did not start; logs:"
  tail -n 20 "$tmp"/cluster/n*.log
  failed+=(cluster-start)
fi

# ---- summary ----
field() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
res() { # run case -> RESULT line
  [ -f "$tmp/$1.out" ] && grep -E "^RESULT bench=chatd case=$2 " "$tmp/$1.out" | tail -n 1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { if [ "$1" = 1 ]; then echo MET; else echo MISSED; fi; }
row() { printf '%-44s %-22s %-22s %-22s %s\n' "$@"; }
runs=(single)
for p in ${placements//,/ }; do runs+=("cluster-$p"); done

echo "=== summary: replicated cluster (3 nodes) vs single chatd, same run," \
  "load average now $(cut -d' ' -f1-3 /proc/loadavg)"
row "" "${runs[@]}"
best_single=0
declare -A best
for s in ${shapes//,/ }; do
  vals=()
  for r in "${runs[@]}"; do
    x=$(res "$r" "throughput-$s")
    v=$(field acks_per_s "$x")
    v=${v:-0}
    if [ "$r" = single ]; then
      sv=$v
      vals+=("$v")
    else
      vals+=("$v ($(ratio "$v" "$sv")x)")
    fi
    if awk -v a="$v" -v b="${best[$r]:-0}" 'BEGIN { exit !(a + 0 > b + 0) }'; then best[$r]=$v; fi
  done
  row "durable msgs/s, 1:1 $s (x: of single)" "${vals[@]}"
  vals=()
  for r in "${runs[@]}"; do
    x=$(res "$r" "throughput-$s")
    vals+=("$(field ack_p50_ms "$x") / $(field ack_p99_ms "$x")")
  done
  row "  send->ack p50 / p99 ms (saturated)" "${vals[@]}"
done
best_single=${best[single]:-0}
vals=()
for r in "${runs[@]}"; do
  x=$(res "$r" latency)
  vals+=("$(field ack_p50_ms "$x") / $(field ack_p99_ms "$x") / $(field ack_p999_ms "$x")")
done
row "paced $rate/s: send->ack p50/p99/p99.9 ms" "${vals[@]}"
vals=()
for r in "${runs[@]}"; do
  x=$(res "$r" latency)
  vals+=("$(field p50_ms "$x") / $(field p99_ms "$x") / $(field p999_ms "$x")")
done
row "  send->receive p50/p99/p99.9 ms" "${vals[@]}"
vals=()
for r in "${runs[@]}"; do
  x=$(res "$r" latency)
  vals+=("$(field sent_per_s "$x") / $(field msgs_per_s "$x")")
done
row "  msgs/s sent / received" "${vals[@]}"
vals=()
for r in "${runs[@]}"; do
  x=$(res "$r" latency)
  vals+=("$(field srv_loop_cpu "$x") + $(field srv_other_cpu "$x") / $(field gen_cpu "$x")")
done
row "  CPUs: servers (loops + others) / gen" "${vals[@]}"

echo
echo "=== targets (issue 6)"
printf '%-62s %-34s %s\n' "target" "measured" "verdict"
for r in "${runs[@]}"; do
  [ "$r" = single ] && continue
  b=${best[$r]:-0}
  q=$(ratio "$b" "$best_single")
  ok=$(awk -v a="$b" -v s="$best_single" 'BEGIN { print (s > 0 && a >= 0.5 * s) ? 1 : 0 }')
  printf '%-62s %-34s %s\n' "replicated msgs/s >= 50% of single-node ($r, best shape)" \
    "$b vs $best_single msgs/s = ${q}x" "$(verdict "$ok")"
done
for r in "${runs[@]}"; do
  x=$(res "$r" latency)
  [ -n "$x" ] || continue
  p=$(field ack_p99_ms "$x"); got=$(field msgs_per_s "$x")
  ok=$(awk -v p="$p" -v g="$got" -v r="$rate" 'BEGIN { print (p + 0 < 10 && g >= 0.95 * r) ? 1 : 0 }')
  v=$(verdict "$ok"); [ "$r" = single ] && v="($v; reference)"
  printf '%-62s %-34s %s\n' "p99 send->ack < 10 ms at $rate msgs/s ($r)" "p99 $p ms at $got/s" "$v"
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "bench-cluster.sh: failed: ${failed[*]}"
  exit 1
fi
exit 0
