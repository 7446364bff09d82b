#!/usr/bin/env python3
"""make-seeds.py — regenerate the hand-made seed inputs (seed-*) of
fuzz/corpus/<target>/ from a log written by `chatlog gen`.

    python3 fuzz/make-seeds.py build/chatlog

Each seed is a small real example (a few batches of a real segment, a real
sidecar, compressed segment and manifest) or one of them damaged by hand,
with the mode byte(s) each target expects in front (see the comment at the
top of each fuzz/<target>.c). Files the fuzzer added (named by their SHA-1)
are left alone. Timestamps in the generated log vary from run to run, so the
seeds' bytes do too; their shape does not.
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile

# Size of shard 0's active segment in the recovery target's pristine log.
ACTIVE0_SIZE = 2941
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def gen(chatlog, messages, convs, seg, seed, inflight=4096):
    d = tempfile.mkdtemp(prefix="chatlog-seeds-")
    data = os.path.join(d, "data")
    subprocess.run([chatlog, "gen", data, "--messages", str(messages),
                    "--conversations", str(convs), "--seed", str(seed),
                    "--segment-size", seg, "--shards", "1",
                    "--inflight", str(inflight)],
                   check=True, stdout=subprocess.DEVNULL)
    return d, data


def files(data, suffix):
    sd = os.path.join(data, "shard-0000")
    return sorted(os.path.join(sd, n) for n in os.listdir(sd) if n.endswith(suffix))


def read(p):
    with open(p, "rb") as f:
        return f.read()


def batches(raw):
    """(pos, length, first_offset, count) of each batch of a raw segment."""
    out, pos = [], 0
    while pos + 48 <= len(raw):
        magic, ver, flags, length, shard, first, count = struct.unpack_from(
            "<IHHIIQI", raw, pos)
        if magic != 0x31424C43 or length < 56 or pos + length > len(raw):
            break
        out.append((pos, length, first, count))
        pos += length
    return out


def records(raw, b):
    """(conv_id, msg_id, type, rec_idx, batch_pos) of each record of batch b."""
    pos, length, first, count = b
    out, p = [], pos + 48
    for i in range(count):
        rec_len, typ, fl, key_len, conv, msg = struct.unpack_from("<IBBHQQ", raw, p)
        out.append((conv, msg, typ, i, pos))
        p += rec_len
    return out


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def regress(target, name, data):
    """The reproducer of a fixed finding: replayed as regress-<name>."""
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "regress-" + name), "wb") as f:
        f.write(data)


def crash(target, name, data):
    """A reproducer of a finding: fuzz/crashes/<target>/, never replayed."""
    d = os.path.join(ROOT, "fuzz", "crashes", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def regress(target, name, data):
    """A fixed finding's reproducer: replayed by make test from now on."""
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "regress-" + name), "wb") as f:
        f.write(data)


def flip(b, at):
    b = bytearray(b)
    b[at % len(b)] ^= 0x10
    return bytes(b)


def main():
    chatlog = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "chatlog")
    tmp, data = gen(chatlog, 600, 5, "16K", 3, inflight=3)
    tmp2, data2 = gen(chatlog, 1200, 9, "100K", 4)
    try:
        active = read(files(data, ".log")[-1])
        bl = batches(active)
        assert len(bl) >= 4, "need a few batches in the active segment"
        head = active[:bl[3][0]]             # three whole batches
        one = active[:bl[0][1]]
        # batch_decode: byte 0 is the mode (bit 0: fix checksums).
        write("batch_decode", "three-batches", b"\0" + head)
        write("batch_decode", "three-batches-fixsum", b"\1" + head)
        write("batch_decode", "one-batch", b"\0" + one)
        write("batch_decode", "torn-batch", b"\0" + head[:bl[1][0] + bl[1][1] // 2])
        write("batch_decode", "bad-checksum", b"\0" + flip(one, len(one) - 3))
        write("batch_decode", "bad-record-len-fixsum", b"\1" + flip(one, 48 + 1))
        write("batch_decode", "junk-then-batch", b"\0" + b"CLB1junk" * 5 + one)
        write("batch_decode", "empty", b"\0")

        # sidecar: byte 0 mode (0 as is, 1 fix checksum, 2 build from plain
        # entries; bit 2: check against a fixed segment instead).
        idx = read(files(data, ".idx")[0])
        write("sidecar", "real", b"\0" + idx)
        write("sidecar", "real-fixsum", b"\1" + idx)
        write("sidecar", "real-other-segment", b"\4" + idx)
        write("sidecar", "bad-checksum", b"\0" + flip(idx, len(idx) - 2))
        write("sidecar", "truncated", b"\0" + idx[:len(idx) // 2])
        write("sidecar", "payload-flipped-fixsum", b"\1" + flip(idx, 60))
        ents = [r for b in bl for r in records(active, b)]
        base = bl[0][2]
        plain = b"".join(struct.pack("<QQIHBB", c, m, pos, i, t, 0)
                         for (c, m, t, i, pos) in ents)
        hdr = struct.pack("<IHHIIQQQQQ", 0x31494C43, 1, 0, 0, 0, base,
                          base + len(ents), len(active), len(ents), 0)
        write("sidecar", "plain-entries", b"\2" + hdr + plain)
        write("sidecar", "plain-entries-bad-pos", b"\2" + hdr + plain[:16] +
              struct.pack("<I", len(active) + 5) + plain[20:])

        # zlog: byte 0 mode (bit 0 fix table checksum, bit 1 fix block
        # hashes, bit 2 fixed shard/base).
        z = read(files(data, ".zlog")[0])
        zbig = read(files(data2, ".zlog")[0])
        write("zlog", "real", b"\0" + z)
        write("zlog", "real-multiblock", b"\0" + zbig)
        write("zlog", "block-flipped-fixhash", b"\3" + flip(z, len(z) - 100))
        write("zlog", "table-flipped-fixsum", b"\1" + flip(z, 60))
        write("zlog", "truncated", b"\0" + z[:len(z) - 7])
        write("zlog", "header-only", b"\0" + z[:56])

        # manifest: byte 0 mode (bit 0: append the checksum line), byte 1 the
        # shard count asked for.
        m = read(os.path.join(data, "MANIFEST"))
        text = m[:m.index(b"checksum ")]
        write("manifest", "real", b"\0\0" + m)
        write("manifest", "real-asked-1", b"\0\1" + m)
        write("manifest", "real-asked-16", b"\0\x10" + m)
        write("manifest", "bad-checksum", b"\0\0" + flip(m, len(m) - 4))
        write("manifest", "no-checksum-line", b"\0\0" + text)
        write("manifest", "text-addsum", b"\1\0" + text)
        write("manifest", "shards-1024-addsum", b"\1\0" + b"chatlog-manifest 1\nshards 1024\n")
        write("manifest", "shards-0-addsum", b"\1\0" + b"chatlog-manifest 1\nshards 0\n")
        write("manifest", "version-2-addsum", b"\1\0" + b"chatlog-manifest 2\nshards 3\n")
    finally:
        shutil.rmtree(tmp)
        shutil.rmtree(tmp2)

    # recovery: file, op | variant << 3, position (u32), data. Files (sorted,
    # see FUZZ_VERBOSE=1): 0 MANIFEST; shard 0: 1 3 5 7 sidecars, 2 4 6 8
    # sealed segments (.zlog, or .log in variant 1), 9 the active .log;
    # shard 1: 10 12 14 16 sidecars, 11 13 15 17 sealed, 18 the active .log.
    def rec(f, op, var, pos, data=b""):
        return bytes([f, op | var << 3]) + struct.pack("<I", pos) + data
    seeds = {
        "active-torn-tail": rec(9, 2, 0, 3000),
        "active-overwrite": rec(9, 0, 0, 200, b"\xff" * 16),
        "active-insert": rec(18, 1, 0, 100, b"junk"),
        "active-append-garbage": rec(9, 0, 0, ACTIVE0_SIZE, b"CLB1" + b"\0" * 60),
        "active-deleted": rec(9, 4, 0, 0),
        "sealed-zlog-bitflip": rec(4, 3, 0, 700, b"\x01\x03\x20\x05"),
        "sealed-zlog-header": rec(4, 0, 0, 10, b"\x99"),
        "sealed-zlog-truncated": rec(6, 2, 0, 3000),
        "sealed-zlog-deleted": rec(8, 4, 0, 0),
        "first-zlog-deleted": rec(2, 4, 0, 0),
        "sealed-zlog-zeroed": rec(15, 7, 0, 500, b"\x7f"),
        "sidecar-bitflip": rec(3, 3, 0, 60, b"\x00\x01"),
        "sidecar-deleted": rec(5, 4, 0, 0),
        "sidecar-replaced": rec(7, 5, 0, 0, b"CLI1" + b"\0" * 60),
        "raw-sealed-bitflip": rec(4, 3, 1, 1000, b"\x00\x02\x10\x03"),
        "raw-sealed-truncated": rec(6, 2, 1, 5000),
        "raw-sealed-insert": rec(13, 1, 1, 48, b"\0" * 8),
        "raw-sealed-zeroed": rec(15, 7, 1, 200, b"\x40"),
        "raw-sealed-deleted": rec(17, 4, 1, 0),
        "raw-sidecar-bitflip": rec(16, 3, 1, 30, b"\x05\x00"),
        "manifest-bitflip": rec(0, 3, 0, 20, b"\x00\x01"),
        "manifest-deleted": rec(0, 4, 0, 0),
        "manifest-truncated": rec(0, 2, 1, 30),
        "stray-tmp-file": rec(9, 6, 0, 0, b"\x03\x00" + b"x" * 10),
        "stray-junk-file": rec(18, 6, 1, 0, b"\x04\x05" + b"x" * 10),
        "stray-zlog-beside-log": rec(9, 6, 0, 0, b"\x01\x00" + b"CLZ1" + b"\0" * 60),
        "stray-log-beside-zlog": rec(4, 6, 0, 0, b"\x00\x00" + b"\0" * 100),
        "stray-log-after-active": rec(18, 6, 0, 0, b"\x00\x7f" + b"\0" * 30),
        "stray-idx-for-active": rec(9, 6, 1, 0, b"\x02\x00" + b"CLI1"),
        # Two changes (bit 4 of byte 1; byte 6 is the first one's data length).
        "two-sidecar-deleted-zlog-flipped": rec(3, 4 | 0x10, 0, 0, b"\x00") +
        rec(4, 3, 0, 700, b"\x01\x03"),
        "two-sidecar-deleted-raw-sealed-flipped": rec(12, 4 | 0x10, 1, 0, b"\x00") +
        rec(13, 3, 0, 3000, b"\x01\x03"),
        "two-sidecar-deleted-raw-sealed-zeroed": rec(1, 4 | 0x10, 1, 0, b"\x00") +
        rec(2, 7, 0, 4000, b"\xff"),
        "two-active-flips": rec(18, 3 | 0x10, 0, 100, b"\x02\x00\x01") +
        rec(18, 3, 0, 5000, b"\x00\x04"),
    }
    for name, data in seeds.items():
        write("recovery", name, data)
    # Finding 3 (docs/fuzzing.md), fixed: an empty stray 00..119.log inside
    # segment [109, 133) of shard 1; recovery keeps it aside (rule 6a).
    regress("recovery", "stray-segment-inside-another", rec(15, 6, 0, 0, b"\x00\x0a"))

    # differential: config byte, then operations (see differential.c).
    A = lambda a, n: bytes([0, a, n])            # append
    BIG = lambda a, n: bytes([2, a, n])          # append n*37 bytes
    RC = lambda a, m, l: bytes([3, a, m, l])     # read_conv
    RF = lambda s, o, x: bytes([4, s, o, x])     # read_from
    RO = lambda a: bytes([5, a])                 # reopen
    CR = lambda s, c: bytes([6, s, c & 255, c >> 8])  # crash
    TR = lambda s, i: bytes([7, s, i])           # truncate_from
    msgs = b"".join(A(c, 20 + c * 7) for c in range(6)) * 6
    seeds = {
        "appends-and-reads": b"\x01" + msgs + RC(0, 0, 10) + RC(8, 0, 5) +
        RC(3, 2, 3) + RF(0, 0, 0) + RF(1, 128, 2),
        "types-and-keys": b"\x00" + b"".join(A(c | t << 3, 11) for t in range(8)
                                             for c in range(3)) + RF(0, 0, 0),
        "roll-and-seal": b"\x00" + b"".join(BIG(c, 200) for c in range(6)) * 5 +
        RC(1, 0, 39) + RF(0, 40, 1),
        "reopen": b"\x02" + msgs + RO(0) + RC(2, 0, 20) + msgs + RO(3) +
        RC(9, 0, 0) + RC(2, 0, 0) + RF(0, 0, 0) + A(1, 1) + RC(1, 0, 5),
        "crash-torn-tail": b"\x00" + msgs + CR(0, 70) + RC(0, 0, 39) + msgs +
        CR(0, 1) + RF(0, 0, 0),
        "truncate": b"\x01" + msgs + TR(0, 3) + RC(0, 0, 39) + msgs + TR(1, 0x81) +
        TR(0, 200) + RF(1, 0, 0),
        "stamped-ts": b"\x00" + b"".join(A(c | 0x40, 5) for c in range(6)) * 3 +
        RC(0x40, 0, 10) + RO(0) + A(0x40, 3) + RC(0, 0, 10),
    }
    for name, data in seeds.items():
        write("differential", name, data)
    # Reproduced a heap-use-after-free in log_truncate_from (docs/fuzzing.md,
    # finding 1; fixed in 12b2d2c): now a regression input.
    regress("differential", "truncate-from-while-sealing",
          b"\x04" + b"".join(BIG(c, 150) for c in range(6)) * 4 +
          TR(0, 1) + RF(0, 0, 0) + msgs)


if __name__ == "__main__":
    main()
