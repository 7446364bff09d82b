#!/usr/bin/env bash
# cluster.sh — a local three-node chatd cluster on loopback (docs/cluster.md).
#
#   scripts/cluster.sh start   start nodes 1..3 (HTTP/WebSocket on 127.0.0.1:8081..8083,
#                              node links on 127.0.0.1:9101..9103), wait for leaders
#   scripts/cluster.sh stop    SIGTERM every node, wait for it to exit
#   scripts/cluster.sh status  GET /api/v1/cluster of every node, one line per shard
#   scripts/cluster.sh check   compare the committed records of every shard on
#                              the three nodes (chatlog dump up to the smallest
#                              commit offset) and run chatlog verify on each
#
# Environment: CLUSTER_DIR (./data-cluster) holds n1/ n2/ n3/ (data), nN.log,
# nN.pid and the secrets; BUILD (build) is where chatd and chatlog are;
# HTTP_BASE (8080) and PEER_BASE (9100) are added to the node id; NODES (3).
# The JWT secret is ./chatd.secret as for `make run`, so `chatd token` tokens
# work on every node.
set -euo pipefail

DIR=${CLUSTER_DIR:-./data-cluster}
BUILD=${BUILD:-build}
HTTP_BASE=${HTTP_BASE:-8080}
PEER_BASE=${PEER_BASE:-9100}
NODES=${NODES:-3}
CHATD=$BUILD/chatd
CHATLOG=$BUILD/chatlog

peers() {
    local p="" i
    for i in $(seq 1 "$NODES"); do
        p+="${p:+,}$i=127.0.0.1:$((PEER_BASE + i))"
    done
    echo "$p"
}

client_urls() {
    local u="" i
    for i in $(seq 1 "$NODES"); do
        u+="${u:+,}http://127.0.0.1:$((HTTP_BASE + i))"
    done
    echo "$u"
}

secret() { # file
    [ -s "$1" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$1")
}

alive() { [ -f "$DIR/n$1.pid" ] && kill -0 "$(cat "$DIR/n$1.pid")" 2>/dev/null; }

start_node() { # id [extra chatd flags...]
    local i=$1
    shift
    if alive "$i"; then
        echo "node $i already running (pid $(cat "$DIR/n$i.pid"))"
        return
    fi
    mkdir -p "$DIR/n$i"
    local web=()
    [ -d "$BUILD/web" ] && web=(--web-root "$BUILD/web")
    "$CHATD" --node-id "$i" --peers "$(peers)" --client-urls "$(client_urls)" \
        --cluster-secret-file "$DIR/cluster.secret" \
        --data "$DIR/n$i" --listen "127.0.0.1:$((HTTP_BASE + i))" \
        --secret-file chatd.secret "${web[@]}" "$@" >>"$DIR/n$i.log" 2>&1 &
    echo $! >"$DIR/n$i.pid"
    echo "node $i: http://127.0.0.1:$((HTTP_BASE + i))/  (pid $!, log $DIR/n$i.log)"
}

status_json() { # id
    curl -sf --max-time 2 "http://127.0.0.1:$((HTTP_BASE + $1))/api/v1/cluster"
}

cmd=${1:-}
shift || true
case "$cmd" in
start)
    [ -x "$CHATD" ] || { echo "cluster.sh: $CHATD missing (run make)" >&2; exit 3; }
    mkdir -p "$DIR"
    secret chatd.secret
    secret "$DIR/cluster.secret"
    for i in $(seq 1 "$NODES"); do start_node "$i" "$@"; done
    # Wait (bounded) until every shard has a leader that is ready.
    for _ in $(seq 1 100); do
        if s=$(status_json 1) && python3 -c '
import json,sys
d=json.load(sys.stdin)
sys.exit(0 if d["shards"] and all(s["leader"] for s in d["shards"]) else 1)' <<<"$s"; then
            echo "cluster up: every shard has a leader"
            exit 0
        fi
        sleep 0.1
    done
    echo "cluster.sh: no leader for every shard after 10 s; see $DIR/n*.log" >&2
    exit 1
    ;;
start-node) # one node: scripts/cluster.sh start-node ID
    start_node "$@"
    ;;
stop)
    for i in $(seq 1 "$NODES"); do
        if alive "$i"; then kill -TERM "$(cat "$DIR/n$i.pid")"; fi
    done
    for i in $(seq 1 "$NODES"); do
        for _ in $(seq 1 100); do alive "$i" || break; sleep 0.1; done
        if alive "$i"; then
            echo "node $i did not stop in 10 s; killing it" >&2
            kill -KILL "$(cat "$DIR/n$i.pid")"
        fi
        rm -f "$DIR/n$i.pid"
    done
    echo "cluster stopped"
    ;;
status)
    for i in $(seq 1 "$NODES"); do
        if ! s=$(status_json "$i"); then
            echo "node $i: down"
            continue
        fi
        python3 -c '
import json,sys
d=json.load(sys.stdin)
links=" ".join("%d:%s" % (n["id"], n["link"]) for n in d["nodes"])
print("node %d (links %s)" % (d["node_id"], links))
for s in d["shards"]:
    lag=" ".join("n%d lag %d" % (f["node"], f["lag"]) for f in s.get("followers", []))
    print("  shard %2d %-9s leader %d term %d commit %d applied %d %s" % (
        s["shard"], s["role"], s["leader"], s["term"], s["commit_offset"],
        s["applied_offset"], lag))' <<<"$s"
    done
    ;;
check)
    exec python3 "$(dirname "$0")/cluster_check.py" --dir "$DIR" --build "$BUILD" \
        --nodes "$NODES" --http-base "$HTTP_BASE"
    ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
