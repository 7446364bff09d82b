#!/usr/bin/env bash
# rest_smoke.sh — smoke test of the REST API (server/rest.c, docs/api.md)
# with curl against a real chatd.
#
#   bash tests/server/rest_smoke.sh [build/chatd]
#
# Starts chatd on a free loopback port with its own secret and data directory,
# checks every endpoint's status codes and bodies (JSON parsed with Debian's
# /usr/bin/python3), including the error paths, concurrent requests for the
# same direct pair and the same client_msg_id, pipelined requests, a restart
# on the same data, and a second server with a tiny message rate for 429.
# Prints one line per check and ends with "N passed, N failed"; exits non-zero
# if any check failed. Stops its servers and removes its files on exit.
set -u

BIN=${1:-build/chatd}
if [ ! -x "$BIN" ]; then
    echo "usage: rest_smoke.sh PATH/TO/chatd" >&2
    exit 2
fi
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatd-rest-smoke.XXXXXX")
PID=""
stop_server() {
    if [ -n "$PID" ]; then
        kill -TERM "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
        PID=""
    fi
}
trap 'stop_server; rm -rf "$TMP"' EXIT

pass=0
fail=0
ok() {
    echo "ok   - $1"
    pass=$((pass + 1))
}
not_ok() {
    local why=${2:-}
    why=${why//$'\n'/ }
    echo "FAIL - $1${why:+ (${why:0:400})}"
    fail=$((fail + 1))
}

# Background curls: PIDS+=($!) after each, then wait_all (a bare `wait`
# would wait for chatd too).
PIDS=()
wait_all() {
    wait "${PIDS[@]}"
    PIDS=()
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_server DATA [FLAGS...]: starts chatd, sets PID, PORT and BASE.
start_server() {
    local data=$1
    shift
    PORT=$(free_port)
    "$BIN" --data "$data" --listen "127.0.0.1:$PORT" --secret-file "$TMP/secret" \
        --log-level warn "$@" >"$TMP/chatd.out" 2>>"$TMP/chatd.err" &
    PID=$!
    BASE="http://127.0.0.1:$PORT"
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "$BASE/healthz" && return 0
        sleep 0.05
    done
    echo "chatd did not start:" >&2
    cat "$TMP/chatd.err" >&2
    exit 1
}

printf 'a-secret-of-at-least-16-bytes' >"$TMP/secret"
printf 'another-secret-of-16-bytes-or-more' >"$TMP/secret2"
tok() { "$BIN" token --secret-file "$TMP/secret" --user "$1" ${2:+--ttl "$2"}; }
T1=$(tok 1)
T2=$(tok 2)
T3=$(tok 3)
T4=$(tok 4)
T5=$(tok 5)
T9=$(tok 9)

# req METHOD PATH TOKEN [BODY [CONTENT-TYPE]]: status in $ST, body in $TMP/body,
# headers in $TMP/head. TOKEN "-" sends no Authorization; CONTENT-TYPE "-"
# sends none.
ST=0
req() {
    local method=$1 path=$2 token=$3 body=${4-} ctype=${5-application/json}
    local args=(-s -o "$TMP/body" -D "$TMP/head" -w '%{http_code}' -X "$method")
    [ "$token" != "-" ] && args+=(-H "Authorization: Bearer $token")
    if [ -n "$body" ]; then
        if [ "$ctype" = "-" ]; then
            args+=(-H 'Content-Type:')
        else
            args+=(-H "Content-Type: $ctype")
        fi
        args+=(--data-binary "$body")
    fi
    ST=$(curl "${args[@]}" "$BASE$path")
}

# jq_ EXPR: evaluates a Python expression on the last body parsed as j.
jq_() {
    "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
        "$TMP/body" "$1" 2>/dev/null
}

# check NAME WANT_STATUS [PY_EXPR]: the last request had that status and,
# if given, the Python expression on its JSON body j is true.
check() {
    local name=$1 want=$2 expr=${3-}
    if [ "$ST" != "$want" ]; then
        not_ok "$name" "status $ST, want $want: $(head -c 300 "$TMP/body")"
        return
    fi
    if [ -n "$expr" ] && [ "$(jq_ "$expr")" != "True" ]; then
        not_ok "$name" "$expr is not true of $(head -c 300 "$TMP/body")"
        return
    fi
    ok "$name"
}

# check_err NAME STATUS CODE [MESSAGE-SUBSTRING]: an error body of that shape.
check_err() {
    local name=$1 want=$2 code=$3 sub=${4-}
    check "$name" "$want" \
        "set(j)=={'error'} and set(j['error'])=={'code','name','message'} and j['error']['code']==$code and '$sub' in j['error']['message']"
}

start_server "$TMP/d1" --max-group-members 5
A=/api/v1/conversations

# ---- paths, methods, authentication ----
req GET /api/v1/nope "$T1"
check_err "unknown path 404" 404 3
for p in "$A/abc" "$A/0" "$A/9007199254740992" "$A/" "$A/1/x" "$A/1/messages/" "$A/-1" "$A/+1"; do
    req GET "$p" "$T1"
    check_err "bad path $p is 404" 404 3
done
req DELETE "$A" "$T1"
check_err "DELETE /conversations is 405" 405 1
grep -qi '^Allow: GET, POST' "$TMP/head" && ok "405 names Allow: GET, POST" || not_ok "405 names Allow" "$(cat "$TMP/head")"
req GET "$A/1/read" "$T1"
check_err "GET .../read is 405" 405 1
grep -qi '^Allow: POST' "$TMP/head" && ok "405 names Allow: POST" || not_ok "405 Allow: POST"
req POST "$A/1" "$T1" '{}'
check_err "POST /conversations/:id is 405" 405 1
req GET "$A" -
check_err "no token is 401" 401 7 "Authorization"
grep -qi '^WWW-Authenticate: Bearer' "$TMP/head" && ok "401 sends WWW-Authenticate" || not_ok "401 sends WWW-Authenticate"
ST=$(curl -s -o "$TMP/body" -w '%{http_code}' -H "Authorization: Basic dTpw" "$BASE$A")
check_err "Basic scheme is 401" 401 7 "Bearer"
req GET "$A" "not.a.jwt"
check_err "garbage token is 401" 401 7
TX=$("$BIN" token --secret-file "$TMP/secret2" --user 1)
req GET "$A" "$TX"
check_err "token of another secret is 401" 401 7
TE=$(tok 1 1)
sleep 2.1
req GET "$A" "$TE"
check_err "expired token is 401" 401 7
ST=$(curl -s -o "$TMP/body" -w '%{http_code}' -H "authorization: bearer   $T1  " "$BASE$A")
check "scheme and header name are case-insensitive" 200 "j=={'conversations':[]}"

# ---- request bodies ----
req POST "$A" "$T1" '{"kind":"group"}' text/plain
check_err "text/plain body is 415" 415 1
req POST "$A" "$T1" '{"kind":"group","members":[2]}' "application/json; charset=utf-8"
check "application/json with charset is accepted" 201
req POST "$A" "$T1" '{"kind":"group","members":[2]}' -
check "absent Content-Type is accepted" 201
req POST "$A" "$T1" ''
check_err "empty body is 400" 400 1 "JSON object"
req POST "$A" "$T1" '{"kind":'
check_err "truncated JSON is 400" 400 1 "invalid JSON"
req POST "$A" "$T1" '[1,2]'
check_err "array body is 400" 400 1 "JSON object"
req POST "$A" "$T1" '{"kind":"group"} x'
check_err "trailing garbage is 400" 400 1 "invalid JSON"
req POST "$A" "$T1" '{"kind":"group","kind":"direct"}'
check_err "duplicate key is 400" 400 1 "duplicate"
req POST "$A" "$T1" $'{"kind":"group","title":"a\\u0000b"}'
check_err "NUL in a string is 400" 400 1 "invalid JSON"
req POST "$A" "$T1" $'{"kind":"group","title":"\xff"}'
check_err "invalid UTF-8 is 400" 400 1 "invalid JSON"
req POST "$A" "$T1" '{"kind":"group","colour":"red"}'
check_err "unknown field is 400 and named" 400 1 'colour'
req POST "$A" "$T1" '{"members":[2]}'
check_err "missing kind is 400" 400 1 'kind'
req POST "$A" "$T1" '{"kind":"channel"}'
check_err "bad kind is 400" 400 1 'kind'
req POST "$A" "$T1" '{"kind":7}'
check_err "kind of wrong type is 400" 400 1 'kind'
req POST "$A" "$T1" '{"kind":"group","members":"2"}'
check_err "members not an array is 400" 400 1 'members'
for bad in 0 -1 9007199254740992 1.0 '"2"' null 99999999999999999999; do
    req POST "$A" "$T1" "{\"kind\":\"group\",\"members\":[2,$bad]}"
    check "member id $bad is 400" 400 "j['error']['code']==1"
done
req POST "$A" "$T1" '{"kind":"group","members":[9007199254740991]}'
check "member id 2^53-1 is accepted" 201 "9007199254740991 in j['members']"
req POST "$A" "$T1" '{"kind":"group","title":5}'
check_err "title of wrong type is 400" 400 1 'title'
LONG=$(printf 'x%.0s' $(seq 1 201))
req POST "$A" "$T1" "{\"kind\":\"group\",\"title\":\"$LONG\"}"
check_err "title of 201 bytes is 400" 400 1 'title'
req POST "$A" "$T1" "{\"kind\":\"group\",\"title\":\"${LONG:1}\"}"
check "title of 200 bytes is accepted" 201 "len(j['title'])==200"
req POST "$A" "$T1" '{"kind":"group","members":[2,3,4,5,6]}'
check_err "group beyond max_group_members is 400" 400 1 "group of 6 members exceeds max_group_members=5"
req POST "$A" "$T1" '{"kind":"group","members":[1,2,3,4,5,5,4]}'
check "group of exactly the cap, duplicates removed" 201 "j['members']==[1,2,3,4,5]"

# ---- conversations ----
req POST "$A" "$T1" '{"kind":"direct"}'
check_err "direct without members is 400" 400 1 members
req POST "$A" "$T1" '{"kind":"direct","members":[1]}'
check_err "direct with oneself only is 400" 400 1 "exactly one"
req POST "$A" "$T1" '{"kind":"direct","members":[2,3]}'
check_err "direct with two others is 400" 400 1 "exactly one"
req POST "$A" "$T1" '{"kind":"direct","members":[2],"title":"x"}'
check_err "direct with a title is 400" 400 1 title
req POST "$A" "$T1" '{"kind":"direct","members":[2]}'
check "direct created: 201" 201 "j['kind']=='direct' and j['members']==[1,2] and j['title']=='' and j['creator']==1 and j['created_at']>0 and type(j['conv_id'])==int"
D=$(jq_ "j['conv_id']")
req POST "$A" "$T2" '{"kind":"direct","members":[1,2]}'
check "direct again from the other side: 200, same conversation" 200 "j['conv_id']==$D"
req POST "$A" "$T1" '{"kind":"direct","members":[2,2,1]}'
check "direct again with duplicates: 200" 200 "j['conv_id']==$D"

# Concurrent creation of one new pair: one conversation.
for i in 1 2 3 4 5 6 7 8; do
    curl -s -o "$TMP/par$i" -w '%{http_code}\n' -H "Authorization: Bearer $T3" \
        -H 'Content-Type: application/json' -d '{"kind":"direct","members":[4]}' \
        "$BASE$A" >"$TMP/parst$i" &
    PIDS+=($!)
done
wait_all
"$PY" - "$TMP" <<'EOF' && ok "8 concurrent direct creations: one 201, one conv_id" || not_ok "concurrent direct creation"
import json, sys
t = sys.argv[1]
st = [open(f"{t}/parst{i}").read().strip() for i in range(1, 9)]
ids = {json.load(open(f"{t}/par{i}"))["conv_id"] for i in range(1, 9)}
sys.exit(0 if st.count("201") == 1 and st.count("200") == 7 and len(ids) == 1 else 1)
EOF

req POST "$A" "$T1" '{"kind":"group","members":[2,3],"title":"Team ☃"}'
check "group created: 201" 201 "j['kind']=='group' and j['members']==[1,2,3] and j['title']=='Team ☃'"
G=$(jq_ "j['conv_id']")
req GET "$A/$G" "$T2"
check "GET one conversation" 200 "j['conv_id']==$G and j['unread']==0"
req GET "$A/$G" "$T5"
check_err "GET a conversation one is not in is 403" 403 2
req GET "$A/12345" "$T1"
check_err "GET an unknown conversation is 404" 404 3

# ---- messages ----
M="$A/$D/messages"
req POST "$M" "$T1" '{"body":"hello","client_msg_id":"c1"}'
check "send: 201 with msg_id 1" 201 "j['msg_id']==1 and j['conv_id']==$D and j['ts']>0 and j['client_msg_id']=='c1'"
req POST "$M" "$T1" '{"body":"hello","client_msg_id":"c1"}'
check "send retried: 200, the original msg_id" 200 "j['msg_id']==1"
req POST "$M" "$T1" '{"body":"changed","client_msg_id":"c1"}'
check_err "same key, other body: 409" 409 9
req POST "$M" "$T2" '{"body":"hi back","client_msg_id":"c1"}'
check "the same key from another sender is another message" 201 "j['msg_id']==2"
req POST "$M" "$T1" '{"body":"a picture","media_url":"https://example.com/p.png"}'
check "send with media_url, no key" 201 "j['msg_id']==3 and j['client_msg_id']==''"
req POST "$M" "$T1" '{"media_url":"https://example.com/q.png"}'
check "media_url without body" 201 "j['msg_id']==4"
req POST "$M" "$T1" '{"client_msg_id":"x"}'
check_err "no body: 400" 400 1 body
req POST "$M" "$T1" '{"body":""}'
check_err "empty message: 400" 400 1 empty
req POST "$M" "$T1" '{"body":5}'
check_err "body of wrong type: 400" 400 1 body
req POST "$M" "$T1" '{"body":"x","client_msg_id":7}'
check_err "client_msg_id of wrong type: 400" 400 1 client_msg_id
req POST "$M" "$T1" '{"body":"x","extra":1}'
check_err "unknown field: 400" 400 1 extra
K65=$(printf 'k%.0s' $(seq 1 65))
req POST "$M" "$T1" "{\"body\":\"x\",\"client_msg_id\":\"$K65\"}"
check_err "client_msg_id of 65 bytes: 400" 400 1 client_msg_id
"$PY" -c 'import json; print(json.dumps({"body": "x" * 65537}))' >"$TMP/big.json"
ST=$(curl -s -o "$TMP/body" -w '%{http_code}' -H "Authorization: Bearer $T1" \
    -H 'Content-Type: application/json' --data-binary @"$TMP/big.json" "$BASE$M")
check_err "body over 64 KiB: 413" 413 4
req POST "$M" "$T5" '{"body":"intruder"}'
check_err "send by a non-member: 403" 403 2
req POST "$A/12345/messages" "$T1" '{"body":"x"}'
check_err "send to an unknown conversation: 404" 404 3

# Concurrent sends with one key: one message.
for i in 1 2 3 4 5 6; do
    curl -s -o "$TMP/ks$i" -w '%{http_code}\n' -H "Authorization: Bearer $T1" \
        -H 'Content-Type: application/json' -d '{"body":"once","client_msg_id":"same"}' \
        "$BASE$M" >"$TMP/kst$i" &
    PIDS+=($!)
done
wait_all
"$PY" - "$TMP" <<'EOF' && ok "6 concurrent sends of one key: one msg_id, one 201" || not_ok "concurrent sends of one key"
import json, sys
t = sys.argv[1]
st = [open(f"{t}/kst{i}").read().strip() for i in range(1, 7)]
ids = {json.load(open(f"{t}/ks{i}"))["msg_id"] for i in range(1, 7)}
sys.exit(0 if st.count("201") == 1 and st.count("200") == 5 and ids == {5} else 1)
EOF
for i in $(seq 6 12); do
    req POST "$M" "$T2" "{\"body\":\"m$i\",\"client_msg_id\":\"b$i\"}"
done
check "more messages" 201 "j['msg_id']==12"

# ---- history ----
req GET "$M" "$T1"
check "history: newest first" 200 "[m['msg_id'] for m in j['messages']]==list(range(12,0,-1)) and j['more']==False"
check "history: message fields" 200 "j['messages'][-1]=={'conv_id':$D,'msg_id':1,'sender_id':1,'body':'hello','media_url':'','ts':j['messages'][-1]['ts'],'client_msg_id':'c1'}"
check "history: media_url" 200 "j['messages'][-3]['media_url']=='https://example.com/p.png'"
req GET "$M?limit=5" "$T1"
check "history: limit=5" 200 "[m['msg_id'] for m in j['messages']]==[12,11,10,9,8] and j['more']==True"
req GET "$M?before=8&limit=5" "$T1"
check "history: before=8" 200 "[m['msg_id'] for m in j['messages']]==[7,6,5,4,3] and j['more']==True"
req GET "$M?before=3&limit=5" "$T1"
check "history: before=3, the end" 200 "[m['msg_id'] for m in j['messages']]==[2,1] and j['more']==False"
req GET "$M?after=0&limit=5" "$T1"
check "history: after=0, oldest first" 200 "[m['msg_id'] for m in j['messages']]==[1,2,3,4,5] and j['more']==True"
req GET "$M?after=9&limit=5" "$T1"
check "history: after=9, the end" 200 "[m['msg_id'] for m in j['messages']]==[10,11,12] and j['more']==False"
req GET "$M?after=12" "$T1"
check "history: after the last" 200 "j=={'messages':[],'more':False}"
req GET "$M?before=1" "$T1"
check "history: before the first" 200 "j=={'messages':[],'more':False}"
req GET "$M?before=9007199254740991&limit=1" "$T1"
check "history: before past the end" 200 "[m['msg_id'] for m in j['messages']]==[12]"
req GET "$M?limit=100000" "$T1"
check "history: a large limit is capped" 200 "len(j['messages'])==12"
req GET "$A/$G/messages" "$T1"
check "history of an empty conversation" 200 "j=={'messages':[],'more':False}"
for q in "limit=0" "limit=abc" "limit=" "limit=-1" "before=0" "before=x" "after=-1" "after=1.5" \
    "before=1&after=1" "limit=1&limit=2" "befor=3" "after=9007199254740992"; do
    req GET "$M?$q" "$T1"
    check_err "history: ?$q is 400" 400 1
done
req GET "$M?after=%31%30" "$T1"
check "history: percent-encoded value" 200 "[m['msg_id'] for m in j['messages']]==[11,12]"
req GET "$M" "$T5"
check_err "history by a non-member: 403" 403 2
req GET "$A/12345/messages" "$T1"
check_err "history of an unknown conversation: 404" 404 3

# ---- read pointer, unread ----
req GET "$A" "$T2"
check "list: unread counts others' messages only" 200 "[c for c in j['conversations'] if c['conv_id']==$D][0]['unread']==4"
req POST "$A/$D/read" "$T2" '{"last_read_msg_id":5}'
check "read: 204" 204
if grep -qi '^Content-Length' "$TMP/head" || [ -s "$TMP/body" ]; then not_ok "204 has no body"; else ok "204 has no body"; fi
req POST "$A/$D/read" "$T2" '{"last_read_msg_id":3}'
check "read backwards is accepted and ignored: 204" 204
sleep 0.2
req GET "$A/$D" "$T2"
check "read pointer stored" 200 "j['last_read_msg_id']==5 and j['unread']==0"
req POST "$A/$D/read" "$T1" '{"last_read_msg_id":1}'
check "read: 204 for the other member" 204
sleep 0.2
req GET "$A/$D" "$T1"
check "unread after reading 1" 200 "j['last_read_msg_id']==1 and j['unread']==8"
req POST "$A/$D/read" "$T1" '{"last_read_msg_id":13}'
check_err "read past the last message: 400" 400 1
req POST "$A/$D/read" "$T1" '{"last_read_msg_id":-1}'
check_err "read -1: 400" 400 1 last_read_msg_id
req POST "$A/$D/read" "$T1" '{"last_read_msg_id":"5"}'
check_err "read of wrong type: 400" 400 1 last_read_msg_id
req POST "$A/$D/read" "$T1" '{}'
check_err "read without the field: 400" 400 1 last_read_msg_id
req POST "$A/$D/read" "$T1" '{"last_read_msg_id":1,"x":1}'
check_err "read with an unknown field: 400" 400 1 '"x"'
req POST "$A/$D/read" "$T5" '{"last_read_msg_id":1}'
check_err "read by a non-member: 403" 403 2
req POST "$A/12345/read" "$T1" '{"last_read_msg_id":1}'
check_err "read of an unknown conversation: 404" 404 3

# ---- members ----
MB="$A/$G/members"
req POST "$MB" "$T2" '{"add":[4]}'
check "a member adds: 200" 200 "j['members']==[1,2,3,4]"
req POST "$MB" "$T4" '{"add":[4]}'
check "adding a member again changes nothing: 200" 200 "j['members']==[1,2,3,4]"
req POST "$MB" "$T2" '{"remove":[3]}'
check_err "a non-creator removes another: 403" 403 2 creator
req POST "$MB" "$T2" '{"add":[5,6]}'
check_err "beyond max_group_members: 400" 400 1 "group of 6 members exceeds max_group_members=5"
req POST "$MB" "$T1" '{"add":[5],"remove":[5]}'
check_err "the same user in add and remove: 400" 400 1
req POST "$MB" "$T1" '{}'
check_err "nothing to change: 400" 400 1
req POST "$MB" "$T1" '{"add":[0]}'
check_err "add id 0: 400" 400 1 add
req POST "$MB" "$T1" '{"add":3}'
check_err "add not an array: 400" 400 1 add
req POST "$MB" "$T1" '{"drop":[3]}'
check_err "unknown field: 400" 400 1 drop
req POST "$MB" "$T5" '{"add":[5]}'
check_err "a non-member adds: 403" 403 2
req POST "$A/$D/members" "$T1" '{"add":[3]}'
check_err "members of a direct conversation: 400" 400 1 direct
req POST "$A/12345/members" "$T1" '{"add":[3]}'
check_err "members of an unknown conversation: 404" 404 3
req POST "$MB" "$T4" '{"remove":[4]}'
check "a member leaves: 200" 200 "j['members']==[1,2,3] and j['last_read_msg_id']==0"
req GET "$A/$G" "$T4"
check_err "after leaving: 403" 403 2
req POST "$MB" "$T1" '{"remove":[3],"add":[5]}'
check "the creator removes and adds: 200" 200 "j['members']==[1,2,5]"
# Concurrent additions cannot exceed the cap together.
for u in 6 7 8; do
    curl -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $T1" \
        -H 'Content-Type: application/json' -d "{\"add\":[$u, 1$u]}" "$BASE$MB" >"$TMP/ma$u" &
    PIDS+=($!)
done
wait_all
req GET "$A/$G" "$T1"
check "3 concurrent additions stop at the cap" 200 "len(j['members'])==5"
[ "$(cat "$TMP/ma6" "$TMP/ma7" "$TMP/ma8" | sort | tr '\n' ' ')" = "200 400 400 " ] &&
    ok "one addition 200, two 400" || not_ok "one addition 200, two 400" "$(cat "$TMP"/ma?)"
req GET "$A" "$T5"
check "the added member lists the group" 200 "$G in [c['conv_id'] for c in j['conversations']]"

# ---- pipelining and connection handling ----
"$PY" - "$PORT" "$T1" "$D" <<'EOF' && ok "pipelined requests are answered in order" || not_ok "pipelining"
import json, socket, sys
port, tok, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def post(path, body):
    b = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b
def get(path):
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n".encode()
m = f"/api/v1/conversations/{d}/messages"
reqs = [post(m, {"body": "p1", "client_msg_id": "p1"}), get(m + "?limit=1"),
        post(m, {"body": "p2", "client_msg_id": "p2"}), get("/api/v1/nope"),
        post(m, {"body": "p1", "client_msg_id": "p1"}), get(m + "?limit=1")]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"".join(reqs))
buf = b""
out = []
while len(out) < len(reqs):
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(1)
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    n = 0
    for l in lines[1:]:
        k, v = l.split(":", 1)
        if k.lower() == "content-length":
            n = int(v)
    while len(buf) < n:
        buf += s.recv(65536)
    body, buf = buf[:n], buf[n:]
    out.append((status, json.loads(body)))
st = [o[0] for o in out]
ok = (st == [201, 200, 201, 404, 200, 200]
      and out[1][1]["messages"][0]["msg_id"] == out[0][1]["msg_id"]
      and out[2][1]["msg_id"] == out[0][1]["msg_id"] + 1
      and out[4][1]["msg_id"] == out[0][1]["msg_id"]
      and out[5][1]["messages"][0]["msg_id"] == out[2][1]["msg_id"])
sys.exit(0 if ok else 1)
EOF
"$PY" - "$PORT" "$T1" "$D" <<'EOF' && ok "a client that leaves before the reply does no harm" || not_ok "early close"
import socket, sys
port, tok, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
b = b'{"body":"gone","client_msg_id":"gone"}'
for _ in range(20):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"POST /api/v1/conversations/{d}/messages HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {tok}\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b)
    s.close()
EOF
"$PY" - "$PORT" "$T1" "$D" <<'EOF' && ok "a request body split across two TCP writes" || not_ok "a request body split across two TCP writes"
import socket, sys, time
port, tok, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
b = b'{"body":"split","client_msg_id":"split"}'
h = (f"POST /api/v1/conversations/{d}/messages HTTP/1.1\r\nHost: x\r\n"
     f"Authorization: Bearer {tok}\r\nContent-Length: {len(b)}\r\n\r\n").encode()
s = socket.create_connection(("127.0.0.1", port), timeout=3)
s.sendall(h + b[:10])
time.sleep(0.2)
s.sendall(b[10:])
try:
    sys.exit(0 if s.recv(4096).startswith(b"HTTP/1.1 201") else 1)
except OSError:
    sys.exit(1)
EOF
ST=$(curl -s -o "$TMP/body" -D "$TMP/head" -w '%{http_code}' -H 'Connection: close' \
    -H "Authorization: Bearer $T1" "$BASE$A")
check "Connection: close is honoured" 200
grep -qi '^Connection: close' "$TMP/head" && ok "reply says Connection: close" || not_ok "reply says Connection: close"
req POST "$M" "$T1" '{"body":"gone","client_msg_id":"gone"}'
check "the abandoned send was stored once" 200 "j['client_msg_id']=='gone'"
GONE=$(jq_ "j['msg_id']")

# ---- restart: everything comes back from the log ----
stop_server
start_server "$TMP/d1" --max-group-members 5
req GET "$A/$D" "$T1"
check "after restart: the conversation" 200 "j['members']==[1,2] and j['last_read_msg_id']==1"
req POST "$M" "$T1" '{"body":"gone","client_msg_id":"gone"}'
check "after restart: a retried send gets its original msg_id" 200 "j['msg_id']==$GONE"
req POST "$A" "$T2" '{"kind":"direct","members":[1]}'
check "after restart: the direct pair is found" 200 "j['conv_id']==$D"
req GET "$A/$G" "$T1"
check "after restart: group members" 200 "len(j['members'])==5 and 3 not in j['members']"
req GET "$M?limit=3" "$T2"
check "after restart: history" 200 "len(j['messages'])==3 and j['more']==True"
curl -s -o /dev/null "$BASE/healthz" && ok "server alive" || not_ok "server alive"
stop_server

# ---- rate limit ----
start_server "$TMP/d2" --user-msgs-burst 2 --user-msgs-per-sec 1
req POST "$A" "$T1" '{"kind":"direct","members":[2]}'
D2=$(jq_ "j['conv_id']")
req POST "$A/$D2/messages" "$T1" '{"body":"1"}'
req POST "$A/$D2/messages" "$T1" '{"body":"2"}'
req POST "$A/$D2/messages" "$T1" '{"body":"3"}'
check_err "over the message rate: 429" 429 5
grep -qi '^Retry-After: 1' "$TMP/head" && ok "429 sends Retry-After" || not_ok "429 sends Retry-After"
stop_server

if grep -qiE 'AddressSanitizer|runtime error|LeakSanitizer' "$TMP/chatd.err"; then
    not_ok "no sanitizer reports" "$(grep -iE 'Sanitizer|runtime error' "$TMP/chatd.err" | head -3)"
else
    ok "no sanitizer reports"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
