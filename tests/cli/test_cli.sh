#!/usr/bin/env bash
# test_cli.sh — end-to-end tests of the chatlog command (cli/).
#
#   bash tests/cli/test_cli.sh build/chatlog
#
# Writes a small workload with `chatlog gen` into a temporary directory, then
# checks ls, stats, dump, verify (media blobs too) and recover against it and against damaged
# copies of it (a flipped byte in a sealed segment, a torn tail in an active
# one), plus --help and bad-argument handling. Prints one line per check and
# ends with "N passed, N failed"; exits non-zero if any check failed. The
# temporary directory is removed on exit.
set -u

BIN=${1:-}
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
    echo "usage: test_cli.sh PATH/TO/chatlog" >&2
    exit 2
fi
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatlog-cli-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

pass=0
fail=0
ok() {
    echo "ok   - $1"
    pass=$((pass + 1))
}
not_ok() {
    local why=${2:-}
    why=${why//$'\n'/ }
    echo "FAIL - $1${why:+ ($why)}"
    fail=$((fail + 1))
}

# run CMD...: runs it with stdout in $OUT, stderr in $ERR, status in $RC.
OUT="$TMP/out"
ERR="$TMP/err"
RC=0
run() {
    "$@" >"$OUT" 2>"$ERR"
    RC=$?
}

# expect_status NAME WANT CMD...: the command exits with status WANT.
expect_status() {
    local name=$1 want=$2
    shift 2
    run "$@"
    if [ "$RC" -eq "$want" ]; then ok "$name"; else
        not_ok "$name" "exit $RC, want $want; stderr: $(head -c 300 "$ERR")"
    fi
}

# expect_usage_error NAME CMD...: non-zero exit and exactly one line on
# stderr that starts with "chatlog".
expect_usage_error() {
    local name=$1
    shift
    run "$@"
    local lines
    lines=$(wc -l <"$ERR")
    if [ "$RC" -ne 0 ] && [ "$lines" -eq 1 ] && grep -q '^chatlog' "$ERR"; then
        ok "$name"
    else
        not_ok "$name" "exit $RC, $lines stderr lines: $(head -c 300 "$ERR")"
    fi
}

# py NAME SCRIPT [ARGS...]: run a Python check; it passes when the script
# exits 0. The script reads $OUT as sys.argv[1] by convention.
py() {
    local name=$1 script=$2
    shift 2
    local msg
    if msg=$("$PY" -c "$script" "$@" 2>&1); then ok "$name"; else
        not_ok "$name" "$(echo "$msg" | tail -n 2 | tr '\n' ' ')"
    fi
}

D="$TMP/data"
MSGS=5000
CONVS=100
SHARDS=4

# ---- help and usage -------------------------------------------------------

run "$BIN" --help
listed=1
for c in ls dump stats recover verify gen; do
    grep -q "^  $c " "$OUT" || listed=0
done
if [ "$RC" -eq 0 ] && grep -q '^usage: chatlog' "$OUT" && [ $listed -eq 1 ]; then
    ok "chatlog --help lists every subcommand"
else
    not_ok "chatlog --help lists every subcommand" "exit $RC"
fi
for c in ls dump stats recover verify gen; do
    run "$BIN" "$c" --help
    if [ "$RC" -eq 0 ] && grep -q "^usage: chatlog $c" "$OUT"; then
        ok "$c --help"
    else
        not_ok "$c --help" "exit $RC"
    fi
done
expect_status "help gen is gen --help" 0 "$BIN" help gen

expect_usage_error "no command" "$BIN"
expect_usage_error "unknown command" "$BIN" frobnicate
expect_usage_error "ls without DIR" "$BIN" ls
expect_usage_error "ls with two DIRs" "$BIN" ls "$TMP" "$TMP"
expect_usage_error "unknown option" "$BIN" stats "$TMP" --bogus
expect_usage_error "gen without --messages" "$BIN" gen "$TMP/x" --conversations 3
expect_usage_error "gen --messages abc" "$BIN" gen "$TMP/x" --messages abc --conversations 3
expect_usage_error "gen --messages -5" "$BIN" gen "$TMP/x" --messages -5 --conversations 3
expect_usage_error "gen --messages 12x" "$BIN" gen "$TMP/x" --messages 12x --conversations 3
expect_usage_error "gen --conversations 0" "$BIN" gen "$TMP/x" --messages 1 --conversations 0
expect_usage_error "gen --segment-size below minimum" "$BIN" gen "$TMP/x" --messages 1 --conversations 1 --segment-size 1K
expect_usage_error "gen --shards without value" "$BIN" gen "$TMP/x" --messages 1 --conversations 1 --shards
expect_usage_error "dump --limit 0" "$BIN" dump "$TMP" --limit 0
if [ ! -e "$TMP/x" ]; then ok "bad gen arguments create nothing"; else
    not_ok "bad gen arguments create nothing"
fi
expect_usage_error "ls of a missing directory" "$BIN" ls "$TMP/missing"
mkdir "$TMP/empty"
expect_usage_error "stats of a directory without MANIFEST" "$BIN" stats "$TMP/empty"
expect_usage_error "recover of a directory without MANIFEST" "$BIN" recover "$TMP/empty"
if [ -z "$(ls -A "$TMP/empty")" ]; then ok "recover does not create a log in a non-log directory"; else
    not_ok "recover does not create a log in a non-log directory" "$(ls -A "$TMP/empty")"
fi
expect_usage_error "verify of a missing directory" "$BIN" verify "$TMP/missing"

# ---- gen -------------------------------------------------------------------

run "$BIN" gen "$D" --messages $MSGS --conversations $CONVS --seed 7 \
    --segment-size 16K --shards $SHARDS
if [ "$RC" -eq 0 ] && grep -q "wrote $MSGS messages, $CONVS conversations" "$OUT" &&
    grep -q 'msgs/s' "$OUT"; then
    ok "gen writes $MSGS messages in $CONVS conversations"
else
    not_ok "gen writes $MSGS messages in $CONVS conversations" "exit $RC: $(cat "$OUT" "$ERR")"
fi
[ -f "$D/MANIFEST" ] && ok "gen created DIR/MANIFEST" || not_ok "gen created DIR/MANIFEST"
expect_usage_error "gen into an existing log with other --shards" \
    "$BIN" gen "$D" --messages 1 --conversations 1 --shards 5

# ---- ls ------------------------------------------------------------------

run "$BIN" ls "$D"
cp "$OUT" "$TMP/ls.txt"
[ "$RC" -eq 0 ] && ok "ls exits 0" || not_ok "ls exits 0" "exit $RC: $(cat "$ERR")"
py "ls lists several segments per shard, each backed by its files" '
import os, re, sys
d, shards = sys.argv[2], int(sys.argv[3])
shard = None; segs = {}
for line in open(sys.argv[1]):
    m = re.match(r"shard (\d+): (\d+) segments", line)
    if m:
        shard = int(m.group(1)); segs[shard] = []
        want = int(m.group(2)); continue
    m = re.match(r"\s+(\d{20})\s+(\d{20})\s+(\d+)\s+(\d+)\s+(\d+)\s+(\w+)\s+(\S+)$", line)
    if m:
        segs[shard].append((m.group(1), m.group(6)))
assert sorted(segs) == list(range(shards)), segs.keys()
for sh, ss in segs.items():
    assert len(ss) >= 2, (sh, ss)
    assert [s for s in ss if s[1] == "active"] == [ss[-1]], ss
    for base, state in ss:
        sd = os.path.join(d, "shard-%04d" % sh)
        suffix = ".zlog" if state == "compressed" else ".log"
        assert os.path.exists(os.path.join(sd, base + suffix)), (sh, base)
assert any(s[1] in ("sealed", "compressed") for ss in segs.values() for s in ss)
' "$TMP/ls.txt" "$D" $SHARDS
run "$BIN" ls "$D" --shard 2
if [ "$RC" -eq 0 ] && grep -q '^shard 2:' "$OUT" && ! grep -q '^shard [013]:' "$OUT"; then
    ok "ls --shard 2 lists only shard 2"
else
    not_ok "ls --shard 2 lists only shard 2" "exit $RC"
fi
expect_usage_error "ls --shard out of range" "$BIN" ls "$D" --shard $SHARDS

# ---- dump ------------------------------------------------------------------

run "$BIN" dump "$D"
cp "$OUT" "$TMP/dump.jsonl"
[ "$RC" -eq 0 ] && ok "dump exits 0" || not_ok "dump exits 0" "exit $RC: $(cat "$ERR")"
py "dump prints one valid JSON object per line with the documented fields" '
import json, sys
keys = ["shard","offset","type","conv_id","msg_id","sender_id","ts","client_msg_id","body"]
types = {"message","conv_created","members_changed","read_pointer","edit","delete"}
n = 0
for line in open(sys.argv[1], encoding="utf-8"):
    o = json.loads(line)
    assert list(o) == keys, list(o)
    assert o["type"] in types, o["type"]
    assert isinstance(o["body"], dict), o
    n += 1
assert n > 0
' "$TMP/dump.jsonl"
py "dump has $MSGS messages and $CONVS conv_created records" '
import json, sys, collections
c = collections.Counter(json.loads(l)["type"] for l in open(sys.argv[1]))
assert c["message"] == int(sys.argv[2]), c
assert c["conv_created"] == int(sys.argv[3]), c
assert set(c) <= {"message", "conv_created", "read_pointer"}, c
' "$TMP/dump.jsonl" $MSGS $CONVS
py "dump offsets are contiguous from 0 in each shard" '
import json, sys
nxt = {}
for l in open(sys.argv[1]):
    o = json.loads(l)
    assert o["offset"] == nxt.get(o["shard"], 0), o
    nxt[o["shard"]] = o["offset"] + 1
assert sorted(nxt) == list(range(int(sys.argv[2]))), nxt
' "$TMP/dump.jsonl" $SHARDS
py "gen: conversations come first, with 2..250 members, senders are members" '
import json, sys
members = {}
for l in open(sys.argv[1]):
    o = json.loads(l)
    if o["type"] == "conv_created":
        b = o["body"]
        m = b["members"]
        assert 2 <= len(m) <= 250 and len(set(m)) == len(m), b
        assert b["kind"] == ("direct" if len(m) == 2 else "group"), b
        assert o["sender_id"] == m[0]
        members[o["conv_id"]] = set(m)
    else:
        assert o["conv_id"] in members, o
        assert o["sender_id"] in members[o["conv_id"]], o
kinds = [len(m) == 2 for m in members.values()]
assert 0.5 < sum(kinds) / len(kinds) < 0.9, sum(kinds)
' "$TMP/dump.jsonl"
py "gen: message keys, texts and read pointers look like a chat" '
import json, re, sys, collections
per_conv = collections.Counter(); texts = []; ptrs = 0; keys = set()
for l in open(sys.argv[1]):
    o = json.loads(l)
    if o["type"] == "message":
        per_conv[o["conv_id"]] += 1
        assert o["msg_id"] == per_conv[o["conv_id"]], o
        assert re.fullmatch(r"c-[0-9a-f]{16}", o["client_msg_id"]), o
        keys.add(o["client_msg_id"])
        texts.append(o["body"]["text"])
    elif o["type"] == "read_pointer":
        ptrs += 1
        assert 1 <= o["msg_id"] <= per_conv[o["conv_id"]], o
        assert o["body"]["kind"] in ("read", "delivered"), o
assert len(keys) == len(texts)
short = sum(len(t) <= 20 for t in texts) / len(texts)
assert short > 0.3, short
assert max(len(t) for t in texts) > 500
assert any("https://" in t for t in texts)
assert 0 < ptrs < len(texts) / 5, ptrs
top = per_conv.most_common(1)[0][1]
assert top > 5 * len(texts) / len(per_conv), top   # skewed popularity
' "$TMP/dump.jsonl"
py "dump escapes quotes, backslashes, newlines and keeps UTF-8" '
import json, sys
texts = [json.loads(l)["body"].get("text", "") for l in open(sys.argv[1], encoding="utf-8")]
raw = open(sys.argv[1], "rb").read()
assert any("\"" in t for t in texts) and b"\\\"" in raw
assert any("\\" in t for t in texts) and b"\\\\" in raw
assert any("\n" in t for t in texts) and b"\\n" in raw
assert any(ord(c) > 0xFFFF for t in texts for c in t)   # emoji, raw UTF-8
' "$TMP/dump.jsonl"

CONV=$("$PY" -c '
import json, sys, collections
c = collections.Counter(json.loads(l)["conv_id"] for l in open(sys.argv[1])
                        if json.loads(l)["type"] == "message")
print(c.most_common(3)[2][0])' "$TMP/dump.jsonl" 2>/dev/null)
run "$BIN" dump "$D" --conv "$CONV"
cp "$OUT" "$TMP/conv.jsonl"
[ "$RC" -eq 0 ] && ok "dump --conv exits 0" || not_ok "dump --conv exits 0" "exit $RC: $(cat "$ERR")"
py "dump --conv prints msg_ids 1..k in order, same records as dump" '
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
want = [o for o in map(json.loads, open(sys.argv[2]))
        if o["type"] == "message" and o["conv_id"] == int(sys.argv[3])]
assert len(got) > 3
assert [o["msg_id"] for o in got] == list(range(1, len(got) + 1))
assert got == want, (len(got), len(want))
' "$TMP/conv.jsonl" "$TMP/dump.jsonl" "$CONV"
run "$BIN" dump "$D" --conv "$CONV" --from 3 --limit 2
py "dump --conv --from 3 --limit 2 prints msg_ids 3 and 4" '
import json, sys
assert [json.loads(l)["msg_id"] for l in open(sys.argv[1])] == [3, 4]
' "$OUT"
run "$BIN" dump "$D" --conv 12345
if [ "$RC" -eq 0 ] && [ ! -s "$OUT" ]; then ok "dump --conv of an unknown conversation is empty"; else
    not_ok "dump --conv of an unknown conversation is empty" "exit $RC"
fi
run "$BIN" dump "$D" --shard 1 --from 10 --limit 5
py "dump --shard 1 --from 10 --limit 5 prints offsets 10..14 of shard 1" '
import json, sys
got = [(o["shard"], o["offset"]) for o in map(json.loads, open(sys.argv[1]))]
assert got == [(1, i) for i in range(10, 15)], got
' "$OUT"
run "$BIN" dump "$D" --limit 7
[ "$RC" -eq 0 ] && [ "$(wc -l <"$OUT")" -eq 7 ] && ok "dump --limit 7 prints 7 lines" ||
    not_ok "dump --limit 7 prints 7 lines" "exit $RC, $(wc -l <"$OUT") lines"
expect_usage_error "dump --shard out of range" "$BIN" dump "$D" --shard 99
expect_usage_error "dump --conv in another shard" "$BIN" dump "$D" --conv "$CONV" \
    --shard $(( ($(grep -m1 "\"conv_id\":$CONV," "$TMP/dump.jsonl" |
        "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["shard"])' 2>/dev/null) + 1) % SHARDS ))

# ---- stats -----------------------------------------------------------------

run "$BIN" stats "$D"
cp "$OUT" "$TMP/stats.txt"
[ "$RC" -eq 0 ] && ok "stats exits 0" || not_ok "stats exits 0" "exit $RC: $(cat "$ERR")"
py "stats totals match what was written and what dump and ls show" '
import json, re, sys
tot = {}; rows = []
for line in open(sys.argv[1]):
    m = re.match(r"^([a-z_]+)\s+([\d.]+)$", line)
    if m:
        tot[m.group(1)] = m.group(2)
    m = re.match(r"^(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)$", line)
    if m:
        rows.append([int(x) for x in m.group(1, 2, 3, 4, 5, 6, 8)])
records = sum(1 for _ in open(sys.argv[2]))
segs = sum(1 for l in open(sys.argv[3]) if re.match(r"\s+\d{20}\s", l))
assert int(tot["messages"]) == int(sys.argv[4]), tot
assert int(tot["conversations"]) == int(sys.argv[5]), tot
assert int(tot["records"]) == records, (tot, records)
assert int(tot["segments"]) == segs, (tot, segs)
assert int(tot["shards"]) == len(rows) == int(sys.argv[6]), (tot, rows)
assert sum(r[2] for r in rows) == int(tot["messages"])
assert sum(r[1] for r in rows) == int(tot["records"])
assert sum(r[5] for r in rows) == int(tot["disk_bytes"])
assert 0 < int(tot["disk_bytes"]) < int(tot["raw_bytes"]), tot
assert abs(float(tot["disk_bytes_per_msg"]) - int(tot["disk_bytes"]) / int(tot["messages"])) < 0.1
' "$TMP/stats.txt" "$TMP/dump.jsonl" "$TMP/ls.txt" $MSGS $CONVS $SHARDS

# ---- determinism -----------------------------------------------------------

run "$BIN" gen "$TMP/g1" --messages 800 --conversations 20 --seed 42 --shards 2
run "$BIN" gen "$TMP/g2" --messages 800 --conversations 20 --seed 42 --shards 2 --inflight 3
run "$BIN" gen "$TMP/g3" --messages 800 --conversations 20 --seed 43 --shards 2
for g in g1 g2 g3; do
    "$BIN" dump "$TMP/$g" | sed 's/"ts":[0-9]*,//' >"$TMP/$g.jsonl"
done
if cmp -s "$TMP/g1.jsonl" "$TMP/g2.jsonl" && ! cmp -s "$TMP/g1.jsonl" "$TMP/g3.jsonl" &&
    [ "$(wc -l <"$TMP/g1.jsonl")" -ge 820 ]; then
    ok "gen is deterministic per seed (timestamps aside)"
else
    not_ok "gen is deterministic per seed (timestamps aside)"
fi

# ---- verify ----------------------------------------------------------------

expect_status "verify of a clean log exits 0" 0 "$BIN" verify "$D"

# A flipped byte in a sealed segment: verify must find it and name it.
cp -a "$D" "$TMP/flip" 2>/dev/null || mkdir -p "$TMP/flip"
# The second compressed segment of shard 1 (the first holds only the
# conv_created records of the opening group).
SEALED=$(ls "$TMP"/flip/shard-0001/*.zlog 2>/dev/null | sed -n 2p)
if [ -n "$SEALED" ]; then ok "shard 1 has sealed, compressed segments"; else
    not_ok "shard 1 has sealed, compressed segments"
    SEALED="$TMP/flip/shard-0001/missing.zlog"
fi
SEG=$(basename "$SEALED" .zlog)
SEGEND=$("$BIN" ls "$D" --shard 1 | awk -v s="$SEG" '$1 == s { print $2 + 0 }')
"$PY" -c '
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x5a
open(p, "wb").write(b)' "$SEALED" 2>/dev/null
run "$BIN" verify "$TMP/flip"
if [ "$RC" -eq 1 ] && grep -q "segment $SEG" "$OUT"; then
    ok "verify exits 1 on a flipped byte and names segment $SEG"
else
    not_ok "verify exits 1 on a flipped byte and names segment $SEG" "exit $RC: $(head -c 300 "$OUT")"
fi
if [ "$(wc -l <"$ERR")" -eq 1 ]; then ok "verify problems: one line on stderr"; else
    not_ok "verify problems: one line on stderr" "$(cat "$ERR")"
fi

# Media blobs (DIR/media/<p>/<sha256>, docs/media.md): verify checks each
# object against its name. One correct object with its .meta, a tmp- leftover
# (a note), then one object whose bytes changed after it was named.
BL="$TMP/blobs"
cp -a "$D" "$BL" 2>/dev/null || mkdir -p "$BL"
blob() { # blob CONTENT: store CONTENT under its name, print the name
    local id
    id=$(printf '%s' "$1" | sha256sum | cut -c1-64)
    mkdir -p "$BL/media/${id:0:2}"
    printf '%s' "$1" >"$BL/media/${id:0:2}/$id"
    echo "$id"
}
GOOD=$(blob "a picture of a cat")
printf 'content_type: image/png\nsize: 18\nuploader: 42\n' >"$BL/media/${GOOD:0:2}/$GOOD.meta"
: >"$BL/media/${GOOD:0:2}/tmp-123-abc"
run "$BIN" verify "$BL"
if [ "$RC" -eq 0 ] && grep -q '^verify: media: 1 objects (18 bytes), 1 metadata files, 1 leftovers, 0 problems$' "$OUT" &&
    grep -q "^verify: note: media ${GOOD:0:2}/tmp-123-abc: leftover" "$OUT"; then
    ok "verify checks a correct media object and notes a tmp- leftover (exit 0)"
else
    not_ok "verify checks a correct media object and notes a tmp- leftover (exit 0)" "exit $RC: $(head -c 400 "$OUT")"
fi
BAD=$(blob "a picture of a dog")
printf 'X' | dd of="$BL/media/${BAD:0:2}/$BAD" bs=1 seek=3 conv=notrunc status=none
run "$BIN" verify "$BL"
if [ "$RC" -eq 1 ] && grep -q "^verify: media ${BAD:0:2}/$BAD: content does not match its name" "$OUT" &&
    ! grep -q "media ${GOOD:0:2}/$GOOD:" "$OUT" && grep -q ', 1 problems$' "$OUT" &&
    [ "$(wc -l <"$ERR")" -eq 1 ]; then
    ok "verify exits 1 on a corrupted media object and names it (not the good one)"
else
    not_ok "verify exits 1 on a corrupted media object and names it" "exit $RC: $(head -c 500 "$OUT") / $(cat "$ERR")"
fi

# Recovery trusts the valid sidecar and does not read the blocks, so the
# damage shows up on read: dump must skip past it, say so and exit 1.
total=$(grep -c '"shard":1,' "$TMP/dump.jsonl")
run "$BIN" dump "$TMP/flip" --shard 1
n=$(wc -l <"$OUT")
if [ "$RC" -eq 1 ] && [ "$n" -gt 0 ] && [ "$n" -lt "$total" ] &&
    grep -q '^chatlog dump: shard 1: offsets [0-9]*\.\.[0-9]* unreadable' "$ERR"; then
    ok "dump skips data that fails on read, reports it and exits 1"
else
    not_ok "dump skips data that fails on read, reports it and exits 1" "exit $RC, $n of $total lines: $(head -c 300 "$ERR")"
fi

# The same damage with the sidecar index gone, so that recovery has to scan
# the segment and fences it off: recover exits 1 naming it; dump serves the
# rest, reports the skipped range and exits 1.
rm -f "${SEALED%.zlog}.idx"
run "$BIN" recover "$TMP/flip"
if [ "$RC" -eq 1 ] && grep -q "shard 1 segment $SEG: damaged data fenced at byte" "$OUT" &&
    grep -q "segment $SEG" "$ERR"; then
    ok "recover exits 1 on fenced damage, naming shard, segment and byte"
else
    not_ok "recover exits 1 on fenced damage, naming shard, segment and byte" "exit $RC: $(cat "$OUT" "$ERR" | head -c 400)"
fi
run "$BIN" dump "$TMP/flip" --shard 1
n=$(wc -l <"$OUT")
if [ "$RC" -eq 1 ] && [ "$n" -gt 0 ] && [ "$n" -lt "$total" ] &&
    grep -q "unreadable (fenced by recovery in segment $SEG" "$ERR"; then
    ok "dump skips the fenced range, reports it and exits 1"
else
    not_ok "dump skips the fenced range, reports it and exits 1" "exit $RC, $n of $total lines: $(head -c 300 "$ERR")"
fi

# A conversation with messages in the fenced segment: dump --conv prints
# the rest in order and reports the skipped msg_ids.
DCONV=$("$PY" -c '
import json, sys
first = {}
for o in map(json.loads, open(sys.argv[1])):
    if o["type"] == "message" and o["shard"] == 1 and o["msg_id"] == 1:
        first[o["conv_id"]] = o["offset"]
lo, hi = int(sys.argv[2]), int(sys.argv[3])
print(next(c for c, off in first.items() if lo <= off < hi))
' "$TMP/dump.jsonl" "$SEG" "$SEGEND" 2>/dev/null)
run "$BIN" dump "$TMP/flip" --conv "$DCONV"
if [ "$RC" -eq 1 ] && grep -q "conversation $DCONV: msg_ids* 1\(\.\.[0-9]*\)* unreadable" "$ERR" &&
    "$PY" -c '
import json, sys
ids = [json.loads(l)["msg_id"] for l in open(sys.argv[1])]
assert ids == sorted(ids) and 1 not in ids' "$OUT"; then
    ok "dump --conv steps over damaged messages, reports them and exits 1"
else
    not_ok "dump --conv steps over damaged messages, reports them and exits 1" "conv '$DCONV' exit $RC: $(head -c 300 "$ERR")"
fi

# ---- recover: a torn tail --------------------------------------------------

cp -a "$D" "$TMP/torn" 2>/dev/null || mkdir -p "$TMP/torn"
ACTIVE=""
for sd in "$TMP"/torn/shard-*; do
    f=$(ls "$sd"/*.log 2>/dev/null | tail -1)
    if [ -n "$f" ] && [ "$(stat -c %s "$f")" -gt 100 ]; then ACTIVE=$f; break; fi
done
ASEG=$(basename "$ACTIVE" .log)
[ -n "$ACTIVE" ] && truncate -s -7 "$ACTIVE"
run "$BIN" verify "$TMP/torn"
[ "$RC" -eq 0 ] && ok "verify accepts a torn tail (a note, not a failure)" ||
    not_ok "verify accepts a torn tail (a note, not a failure)" "exit $RC"
run "$BIN" recover "$TMP/torn"
if [ "$RC" -eq 0 ] && grep -q "segment $ASEG: torn tail cut" "$OUT" &&
    grep -q '^recover: 1 torn tail cut' "$OUT"; then
    ok "recover cuts the torn tail of $ASEG, reports it and exits 0"
else
    not_ok "recover cuts the torn tail of $ASEG, reports it and exits 0" "exit $RC: $(cat "$OUT" "$ERR" | head -c 400)"
fi
run "$BIN" recover "$TMP/torn"
if [ "$RC" -eq 0 ] && grep -q '^recover: 0 torn tails cut (0 bytes), 0 damaged ranges' "$OUT"; then
    ok "a second recover finds nothing to cut"
else
    not_ok "a second recover finds nothing to cut" "exit $RC: $(cat "$OUT")"
fi
expect_status "verify after recover exits 0" 0 "$BIN" verify "$TMP/torn"
run "$BIN" stats "$TMP/torn"
before=$(awk '$1 == "records" { print $2 }' "$TMP/stats.txt")
after=$(awk '$1 == "records" { print $2 }' "$OUT")
if [ "$RC" -eq 0 ] && [ -n "$after" ] && [ "$after" -lt "$before" ] &&
    [ "$after" -gt $((before - 2000)) ]; then
    ok "stats after recover: $after of $before records left (torn group gone)"
else
    not_ok "stats after recover" "exit $RC, records '$after' of '$before'"
fi
expect_status "recover of a clean log exits 0" 0 "$BIN" recover "$D"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
