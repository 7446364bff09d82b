#!/usr/bin/env python3
"""Seed inputs of the server fuzz targets (conn_input, frame, rest_json, jwt):
small real examples written as fuzz/corpus/<target>/seed-<what>.

    python3 fuzz/make-srv-seeds.py        # (re)writes the seed-* files

The tokens are the harness's (fuzz/srv_harness.h): users 1..3, signed with
FSRV_SECRET, valid until 2100, so the committed seeds keep working. The
conversations are the harness's baseline: 100 (group of 1, 2, 3), 101 (a
group without user 1) and the direct conversation of users 1 and 2.
"""
import base64
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
SEP = b"\xf5CUT"
SECRET = b"chatlog-fuzz-secret-0123456789"
JWT_SECRET = b"jwt-fuzz-secret-0123456789abcdef"  # fuzz/jwt.c
GROUP, OTHER, DIRECT = 100, 101, 1884968845693980


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(uid, secret=SECRET, exp=4102444800, iat=1700000000, extra=None):
    # The same bytes as libjwt 1.10's jwt_encode_str (keys sorted, compact).
    h = b64u(b'{"alg":"HS256","typ":"JWT"}')
    claims = {"exp": exp, "iat": iat, "sub": str(uid)}
    if extra:
        claims.update(extra)
    p = b64u(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64u(sig)}"


T1, T2 = token(1), token(2)


# ---- protobuf (chat.v1), by hand ----
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def f_varint(field, v):
    return varint(field << 3) + varint(v) if v else b""


def f_bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(field << 3 | 2) + varint(len(b)) + b if b else b""


def f_msg(field, b):
    return varint(field << 3 | 2) + varint(len(b)) + b


def hello(tok, device="seed"):
    return f_msg(1, f_bytes(1, tok) + f_bytes(2, device))


def send(conv, body, cmid="", media=""):
    return f_msg(2, f_varint(1, conv) + f_bytes(2, body) + f_bytes(3, cmid) + f_bytes(4, media))


def receipt(conv, kind, up_to):
    return f_msg(3, f_varint(1, conv) + f_varint(3, kind) + f_varint(4, up_to))


def typing(conv, active):
    return f_msg(4, f_varint(1, conv) + f_varint(3, 1 if active else 0))


def sync(conv, after=0, limit=0):
    return f_msg(5, f_varint(1, conv) + f_varint(2, after) + f_varint(3, limit))


def presence(state):
    return f_msg(6, f_varint(2, state))


def ping(nonce):
    return f_msg(7, f_varint(1, nonce))


# ---- WebSocket client frames, mask key 0 ----
def ws(payload, op=2, fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        h = bytes([b0, 0x80 | n])
    elif n < 65536:
        h = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return h + b"\0\0\0\0" + payload


def close(code=1000, reason=b""):
    return ws(struct.pack(">H", code) + reason, op=8)


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: chatd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Protocol: chat.v1\r\n\r\n")


def req(method, path, body=b"", tok=T1, extra=b"", ctype=True):
    if isinstance(body, str):
        body = body.encode()
    h = f"{method} {path} HTTP/1.1\r\nHost: chatd\r\n".encode()
    if tok:
        h += f"Authorization: Bearer {tok}\r\n".encode()
    if body or method in ("POST", "DELETE"):
        if ctype:
            h += b"Content-Type: application/json\r\n"
        h += f"Content-Length: {len(body)}\r\n".encode()
    return h + extra + b"\r\n" + body


API = "/api/v1/conversations"


def write(target, name, data, prefix="seed-"):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, prefix + name), "wb") as f:
        f.write(data)


def conn_input():
    t = "conn_input"
    write(t, "healthz", b"GET /healthz HTTP/1.1\r\nHost: chatd\r\n\r\n")
    write(t, "metrics-then-404", b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
          b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
    write(t, "post-not-allowed", b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    write(t, "http10-close", b"GET /healthz HTTP/1.0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
    write(t, "bad-request", b"GET healthz HTTP/1.1\r\n\r\n")
    # Finding: HEAD answers carried a body.
    write(t, "head-healthz-api-404", b"HEAD /healthz HTTP/1.1\r\n\r\n" +
          req("HEAD", API) + b"HEAD /nothing HTTP/1.1\r\n\r\n" +
          b"GET /healthz HTTP/1.1\r\n\r\n", prefix="regress-")
    write(t, "bad-version", b"GET / HTTP/2.0\r\n\r\n")
    write(t, "transfer-encoding-gzip",
          b"POST " + API.encode() + b" HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
    write(t, "split-request-line", b"GET /hea" + SEP + b"lthz HTTP/1.1\r" + SEP + b"\n\r\n")
    write(t, "rest-create-direct", req("POST", API, '{"kind":"direct","members":[2]}'))
    write(t, "rest-create-group-split",
          SEP.join([req("POST", API, '{"kind":"group","title":"t","members":[2,3]}')[:40],
                    req("POST", API, '{"kind":"group","title":"t","members":[2,3]}')[40:]]))
    write(t, "rest-send-then-history",
          req("POST", f"{API}/{GROUP}/messages", '{"body":"hi","client_msg_id":"c1"}') +
          req("GET", f"{API}/{GROUP}/messages?limit=5"))
    write(t, "rest-pipelined",
          req("POST", f"{API}/{DIRECT}/messages", '{"body":"one"}') +
          req("POST", f"{API}/{DIRECT}/read", '{"last_read_msg_id":1}') +
          req("GET", f"{API}/{DIRECT}") + req("GET", API))
    # Finding: requests other than REST overtook REST answers still owed.
    write(t, "rest-healthz-after-post",
          req("POST", f"{API}/{GROUP}/messages", '{"body":"x"}') +
          b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", prefix="regress-")
    write(t, "rest-upgrade-after-post",
          req("POST", f"{API}/{GROUP}/messages", '{"body":"y"}') + UPGRADE + ws(hello(T1)),
          prefix="regress-")
    # Finding: a request kept while REST answers were owed was never resumed.
    write(t, "upload-after-post-resumed",
          req("POST", f"{API}/{GROUP}/messages", '{"body":"z"}') +
          req("POST", "/api/v1/media", b"abc", ctype=False, extra=b"Content-Type: text/plain\r\n") +
          b"GET /healthz HTTP/1.1\r\n\r\n", prefix="regress-")
    write(t, "rest-no-token", req("GET", API, tok=None))
    write(t, "rest-bad-json", req("POST", API, '{"kind":'))
    write(t, "rest-members", req("POST", f"{API}/{GROUP}/members", '{"add":[4],"remove":[3]}'))
    write(t, "rest-push-device",
          req("POST", "/api/v1/push/devices",
              '{"pushkey":"k1","app_id":"a","url":"http://127.0.0.1:9/_matrix/push/v1/notify"}'))
    write(t, "rest-media-upload",
          req("POST", "/api/v1/media", b"\x89PNG\r\n\x1a\nabc", ctype=False,
              extra=b"Content-Type: image/png\r\n"))
    write(t, "rest-media-chunked",
          b"POST /api/v1/media HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + T1.encode() +
          b"\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"5\r\nhello" + SEP + b"\r\n6\r\n world\r\n0\r\n\r\n")
    write(t, "media-get-unsigned", b"GET /media/" + b"a" * 64 + b"?exp=1&sig=00 HTTP/1.1\r\n\r\n")
    hs = UPGRADE + ws(hello(T1))
    write(t, "ws-hello", hs)
    write(t, "ws-session",
          SEP.join([UPGRADE, ws(hello(T1)),
                    ws(send(GROUP, "hello", "k1")) + ws(sync(GROUP, 0, 10)),
                    ws(receipt(GROUP, 2, 1)) + ws(typing(GROUP, True)),
                    ws(presence(2)) + ws(ping(7)) + ws(b"ping", op=9),
                    close(1000, b"bye")]))
    write(t, "ws-split-frames",
          SEP.join([UPGRADE + ws(hello(T1))[:3], ws(hello(T1))[3:] + ws(send(DIRECT, "x"))[:1],
                    ws(send(DIRECT, "x"))[1:]]))
    frag = send(GROUP, "fragmented message", "k2")
    write(t, "ws-fragmented",
          hs + ws(frag[:5], fin=False) + ws(b"p", op=9) + ws(frag[5:], op=0))
    write(t, "ws-hello-bad-token", UPGRADE + ws(hello(T1[:-2] + "AA")))
    write(t, "ws-no-hello", UPGRADE + ws(sync(GROUP)))
    write(t, "ws-text-frame", hs + ws(b"text", op=1))
    write(t, "ws-unmasked", hs + b"\x82\x02hi")
    write(t, "ws-bad-close", hs + ws(b"\x03\xe8\xff", op=8))
    write(t, "ws-no-subprotocol", UPGRADE.replace(b"chat.v1", b"chat.v2"))
    write(t, "ws-version-8", UPGRADE.replace(b"Version: 13", b"Version: 8"))
    write(t, "ws-then-http", UPGRADE + b"GET /healthz HTTP/1.1\r\n\r\n")


def frame():
    t = "frame"
    write(t, "send-sync", b"\x01" + SEP.join([send(GROUP, "hi", "a"), sync(GROUP, 0, 5)]))
    write(t, "send-back-to-back",
          b"\x06" + SEP.join([send(GROUP, "one", "a"), send(GROUP, "one", "a"),
                              send(GROUP, "two", "a"), sync(GROUP), receipt(GROUP, 1, 1)]))
    write(t, "direct", b"\x05" + SEP.join([send(DIRECT, "d", "x"), receipt(DIRECT, 2, 1),
                                           typing(DIRECT, True), typing(DIRECT, False)]))
    write(t, "not-member", b"\x01" + SEP.join([send(OTHER, "no"), sync(OTHER),
                                               receipt(OTHER, 2, 1), typing(OTHER, True)]))
    write(t, "not-found", b"\x01" + SEP.join([send(999, "no", "z"), sync(999), typing(999, True)]))
    write(t, "presence-ping", b"\x03" + SEP.join([presence(2), presence(1), presence(3),
                                                  ping(42)]))
    write(t, "hello-again", b"\x01" + hello(T1))
    write(t, "empty-and-garbage", b"\x00" + SEP.join([b"", b"\x0a\xff", b"\x08\x01"]))
    write(t, "too-long-key", b"\x01" + send(GROUP, "x", "k" * 65))
    write(t, "media", b"\x01" + send(GROUP, "", "m", "/media/" + "b" * 64))
    write(t, "receipt-past-end", b"\x01" + receipt(GROUP, 2, 1 << 40))


def rest_json():
    t = "rest_json"
    write(t, "create-direct", b"\x00" + b'{"kind":"direct","members":[2]}')
    write(t, "create-group-then-send",
          SEP.join([b"\x00" + b'{"kind":"group","title":"g","members":[2,3]}',
                    b"\x21" + b'{"body":"hi","client_msg_id":"q"}', b"\x26" + b"limit=10"]))
    write(t, "send", b"\x01" + b'{"body":"hello","client_msg_id":"m1"}')
    write(t, "send-pipelined",
          SEP.join([b"\x81" + b'{"body":"a","client_msg_id":"p"}',
                    b"\x81" + b'{"body":"a","client_msg_id":"p"}',
                    b"\x81" + b'{"body":"b","client_msg_id":"p"}', b"\x06" + b"after=0"]))
    write(t, "read", b"\x12" + b'{"last_read_msg_id":0}')
    write(t, "members", b"\x03" + b'{"add":[5,6],"remove":[3]}')
    write(t, "members-not-member", b"\x33" + b'{"add":[1]}')
    write(t, "members-user2", b"\x73" + b'{"add":[1]}')
    write(t, "push", SEP.join([
        b"\x04" + b'{"pushkey":"k","app_id":"app","url":"http://127.0.0.1:9/notify"}',
        b"\x07", b"\x05" + b'{"pushkey":"k","app_id":"app"}']))
    write(t, "history", b"\x16" + b"before=3&limit=2")
    write(t, "list-get", SEP.join([b"\x08", b"\x09", b"\x19", b"\x39"]))
    write(t, "bad-fields", b"\x00" + b'{"kind":"group","x":1}')
    write(t, "bad-json", b"\x01" + b'{"body":"\xff"}')


def jwt():
    t = "jwt"
    write(t, "valid", b"\x00" + token(42, JWT_SECRET, exp=1900000000).encode())
    write(t, "valid-nbf", b"\x00" + token(7, JWT_SECRET, exp=1900000000,
                                          extra={"nbf": 1700000000}).encode())
    write(t, "wrong-secret", b"\x00" + token(42, b"x" * 32, exp=1900000000).encode())
    write(t, "expired", b"\x00" + token(42, JWT_SECRET, exp=1700000000).encode())
    write(t, "garbage", b"\x00" + b"a.b.c")
    hdr = b'{"alg":"HS256","typ":"JWT"}'
    for name, h, p in [
            ("claims", hdr, b'{"sub":"9007199254740991","exp":1900000000}'),
            ("alg-none", b'{"alg":"none"}', b'{"sub":"1","exp":1900000000}'),
            ("alg-hs512", b'{"alg":"HS512"}', b'{"sub":"1","exp":1900000000}'),
            ("alg-lower", b'{"alg":"hs256"}', b'{"sub":"1","exp":1900000000}'),
            ("sub-number", hdr, b'{"sub":1,"exp":1900000000}'),
            ("sub-zero", hdr, b'{"sub":"01","exp":1900000000}'),
            ("sub-too-big", hdr, b'{"sub":"9007199254740992","exp":1900000000}'),
            ("exp-string", hdr, b'{"sub":"1","exp":"1900000000"}'),
            ("exp-real", hdr, b'{"sub":"1","exp":1.9e9}'),
            ("nbf-future", hdr, b'{"sub":"1","exp":1900000000,"nbf":1850000000}'),
            ("dup-sub", hdr, b'{"sub":"1","sub":"2","exp":1900000000}'),
            ("typ-other", b'{"alg":"HS256","typ":"JWS"}', b'{"sub":"1","exp":1900000000}')]:
        write(t, "json-" + name, b"\x01" + h + SEP + p)
    write(t, "raw-signed", b"\x02" + b64u(hdr).encode() + b"." +
          b64u(b'{"sub":"3","exp":1900000000}').encode())
    write(t, "raw-padded", b"\x02" + (b64u(hdr) + "=").encode() + b"." +
          b64u(b'{"sub":"3","exp":1900000000}').encode())
    write(t, "mint", b"\x03" + struct.pack("<QI", 12345, 3600))
    write(t, "mint-bad", b"\x03" + struct.pack("<QI", 0, 3600))


if __name__ == "__main__":
    conn_input()
    frame()
    rest_json()
    jwt()
