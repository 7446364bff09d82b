#!/usr/bin/env python3
"""cluster_check.py — do the nodes of a cluster hold the same committed log?

For every shard it takes the commit offset from the nodes that answer
GET /api/v1/cluster (the largest one: the leader's), dumps that many records
from every node's data directory with `chatlog dump` (read-only, safe on a
live node) and compares them record by record. Then it runs `chatlog verify`
on every directory.

Exit status: 0 all equal and verified; 1 a node differs, is behind, or fails
verify; 2 bad usage or nothing to compare.

  python3 scripts/cluster_check.py --dir ./data-cluster --build build
"""
import argparse
import json
import subprocess
import sys
import urllib.request


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/cluster", timeout=3) as r:
            return json.load(r)
    except OSError:
        return None


def dump(chatlog, d, shard, limit):
    if limit == 0:
        return []
    out = subprocess.run([chatlog, "dump", d, "--shard", str(shard), "--limit", str(limit)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"chatlog dump {d} --shard {shard}: {out.stderr.strip()}")
    return out.stdout.splitlines()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="./data-cluster")
    ap.add_argument("--build", default="build")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--http-base", type=int, default=8080)
    ap.add_argument("--allow-behind", action="store_true",
                    help="a node holding a prefix of the committed log is not an error")
    a = ap.parse_args()
    chatlog = f"{a.build}/chatlog"
    nodes = list(range(1, a.nodes + 1))
    sts = {i: status(a.http_base + i) for i in nodes}
    live = {i: s for i, s in sts.items() if s and s.get("enabled")}
    if not live:
        print("cluster_check: no node answers /api/v1/cluster", file=sys.stderr)
        return 2
    nshards = max(len(s["shards"]) for s in live.values())
    bad = 0
    compared = 0
    for sh in range(nshards):
        commit = max(s["shards"][sh]["commit_offset"] for s in live.values()
                     if sh < len(s["shards"]))
        ref = None
        for i in nodes:
            recs = dump(chatlog, f"{a.dir}/n{i}", sh, commit)
            if len(recs) < commit:
                msg = f"shard {sh}: node {i} holds {len(recs)} of {commit} committed records"
                if a.allow_behind:
                    print("note: " + msg)
                else:
                    print("FAIL: " + msg)
                    bad += 1
            if ref is None or len(recs) > len(ref[1]):
                if ref is not None and recs[:len(ref[1])] != ref[1]:
                    print(f"FAIL: shard {sh}: node {i} differs from node {ref[0]}")
                    bad += 1
                ref = (i, recs)
            elif recs != ref[1][:len(recs)]:
                k = next(j for j in range(len(recs)) if recs[j] != ref[1][j])
                print(f"FAIL: shard {sh}: node {i} differs from node {ref[0]} at offset {k}")
                bad += 1
        compared += commit
    for i in nodes:
        v = subprocess.run([chatlog, "verify", f"{a.dir}/n{i}"], capture_output=True, text=True,
                           timeout=300)
        if v.returncode != 0:
            print(f"FAIL: chatlog verify {a.dir}/n{i}: exit {v.returncode}: "
                  f"{(v.stdout + v.stderr).strip()[-400:]}")
            bad += 1
    print(f"cluster_check: {nshards} shards, {compared} committed records compared on "
          f"{len(nodes)} nodes: {'OK' if not bad else f'{bad} problem(s)'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
