#!/usr/bin/python3
"""End-to-end test of chatd with Python's websockets (Debian's
python3-websockets 10.4), a client nobody here wrote.

    /usr/bin/python3 tests/e2e_py/test_ws.py [path/to/chatd]

The chatd binary is the argument, else $CHATD, else build/chatd. Starts its
own chatd on a free loopback port with its own data directory and secret,
and checks the handshake (Hello -> Welcome, a bad token -> Error 7 + close
4001), one message between two users (Ack, Msg, a retry, Sync), a text frame
(close 1003), and REST through Python's urllib (which writes the request
head and body separately). Protobuf is encoded here by a small codec driven by
proto/chat.proto itself (field numbers and types read from the file), since
Debian's python3-protobuf is not a dependency. Prints one line per test and
ends with "N passed, N failed"; exits non-zero if anything failed.
"""
import asyncio
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
WAIT = 20.0  # bound of every wait, seconds

# ---- a protobuf codec driven by proto/chat.proto ----

VARINT_TYPES = {"uint64", "int64", "uint32", "int32", "bool"}


def load_schema(path):
    """{message: {field_name: (number, type, repeated)}}, enums as 'enum'."""
    text = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
    schema, enums, stack = {}, set(), []
    for tok in re.finditer(r"(message|enum)\s+(\w+)\s*\{|\}|(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;", text):
        if tok.group(1):
            stack.append((tok.group(1), tok.group(2)))
            if tok.group(1) == "message":
                schema[tok.group(2)] = {}
            else:
                enums.add(tok.group(2))
        elif tok.group(0) == "}":
            if stack:
                stack.pop()
        elif tok.group(4):
            msgs = [n for k, n in stack if k == "message"]
            if stack and stack[-1][0] == "message":
                schema[msgs[-1]][tok.group(5)] = (int(tok.group(6)), tok.group(4), bool(tok.group(3)))
    for fields in schema.values():
        for name, (num, typ, rep) in list(fields.items()):
            if typ in enums:
                fields[name] = (num, "enum", rep)
    return schema


SCHEMA = load_schema(os.path.join(REPO, "proto", "chat.proto"))


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(msg, obj):
    out = bytearray()
    fields = SCHEMA[msg]
    for name, value in obj.items():
        num, typ, rep = fields[name]
        for v in value if rep else [value]:
            if typ in VARINT_TYPES or typ == "enum":
                out += _varint(num << 3) + _varint(int(v) & ((1 << 64) - 1))
            elif typ == "string":
                b = v.encode("utf-8")
                out += _varint(num << 3 | 2) + _varint(len(b)) + b
            else:
                b = encode(typ, v)
                out += _varint(num << 3 | 2) + _varint(len(b)) + b
    return bytes(out)


def _read_varint(buf, i):
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode(msg, buf):
    fields = {num: (name, typ, rep) for name, (num, typ, rep) in SCHEMA[msg].items()}
    obj = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            raw, i = _read_varint(buf, i)
        elif wt == 2:
            n, i = _read_varint(buf, i)
            raw, i = buf[i:i + n], i + n
        elif wt == 1:
            raw, i = buf[i:i + 8], i + 8
        elif wt == 5:
            raw, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("bad wire type %d" % wt)
        if num not in fields:
            continue
        name, typ, rep = fields[num]
        if typ in VARINT_TYPES or typ == "enum":
            if wt == 2:  # packed
                vals, j = [], 0
                while j < len(raw):
                    v, j = _read_varint(raw, j)
                    vals.append(v)
            else:
                vals = [raw]
            vals = [bool(v) if typ == "bool" else v for v in vals]
        elif typ == "string":
            vals = [raw.decode("utf-8")]
        else:
            vals = [decode(typ, raw)]
        if rep:
            obj.setdefault(name, []).extend(vals)
        else:
            obj[name] = vals[-1]
    return obj


def server_frame(data):
    """('kind', payload dict) of a ServerFrame."""
    f = decode("ServerFrame", data)
    if len(f) != 1:
        raise ValueError("a ServerFrame with %d kinds: %r" % (len(f), f))
    return next(iter(f.items()))


def client_frame(kind, payload):
    return encode("ClientFrame", {kind: payload})


# ---- chatd ----

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Chatd:
    def __init__(self, binary):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="chatd-e2e-py-")
        self.secret_file = os.path.join(self.dir, "secret")
        with open(self.secret_file, "w") as f:
            f.write(secrets.token_hex(24))
        self.proc = None
        self.port = None
        self.stderr_path = os.path.join(self.dir, "stderr")

    def start(self):
        for _ in range(5):
            port = free_port()
            err = open(self.stderr_path, "ab")
            self.proc = subprocess.Popen(
                [self.binary, "--data", os.path.join(self.dir, "data"), "--listen", "127.0.0.1:%d" % port,
                 "--secret-file", self.secret_file, "--log-level", "warn"],
                stdout=subprocess.PIPE, stderr=err)
            err.close()
            line = self._read_line(WAIT)
            if line and ("127.0.0.1:%d" % port) in line:
                self.port = port
                return
            self.proc.kill()
            self.proc.wait()
            if "in use" not in self.stderr():
                break
        raise RuntimeError("chatd did not start: %r %s" % (line, self.stderr()[-2000:]))

    def _read_line(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        end = time.monotonic() + timeout
        while b"\n" not in buf:
            left = end - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
        sel.close()
        return buf.decode("utf-8", "replace")

    def stderr(self):
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        """SIGTERM; returns an error string if the exit was not clean."""
        if not self.proc or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "chatd did not exit within %d s of SIGTERM" % WAIT
        self.proc.stdout.close()
        err = self.stderr()
        if code != 0 or re.search(r"Sanitizer|runtime error:", err):
            return "chatd exit %s on SIGTERM: %s" % (code, err[-3000:])
        return None

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc and self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self):
        return "ws://127.0.0.1:%d/ws" % self.port

    def token(self, uid):
        return subprocess.run([self.binary, "token", "--secret-file", self.secret_file, "--user", str(uid)],
                              check=True, capture_output=True, text=True).stdout.strip()

    def rest(self, method, path, token, body=None):
        """One request, head and body in a single write (see test_urllib_rest
        for a client that writes them separately)."""
        data = json.dumps(body).encode() if body is not None else b""
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nConnection: close\r\n" % (
            method, path, token)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as s:
            s.sendall(head.encode() + b"\r\n" + data)
            resp = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                resp += chunk
        head, _, payload = resp.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        try:
            return status, json.loads(payload or b"null")
        except ValueError:
            return status, payload.decode("utf-8", "replace")

    def urllib_rest(self, method, path, token, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data, method=method)
        req.add_header("Authorization", "Bearer " + token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except OSError as e:
            return None, str(e)


# ---- a chat.v1 session on websockets ----

class Session:
    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def connect(cls, srv, token, device="py"):
        ws = await asyncio.wait_for(websockets.connect(srv.url, subprotocols=["chat.v1"]), WAIT)
        s = cls(ws)
        check(ws.subprotocol == "chat.v1", "subprotocol %r" % ws.subprotocol)
        if token is not None:
            await s.send("hello", {"token": token, "device_id": device})
        return s

    async def send(self, kind, payload):
        await self.ws.send(client_frame(kind, payload))

    async def next(self, want=None):
        """The next ServerFrame (of kind `want`, skipping others)."""
        while True:
            data = await asyncio.wait_for(self.ws.recv(), WAIT)
            check(isinstance(data, bytes), "a binary frame, got %r" % (data,))
            kind, payload = server_frame(data)
            if want is None or kind == want:
                return kind, payload

    async def close_code(self):
        """Wait for the server's close; its code."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), WAIT)
        except websockets.exceptions.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


# ---- tests ----

async def test_handshake(srv):
    s = await Session.connect(srv, srv.token(42))
    kind, w = await s.next()
    check(kind == "welcome", "Welcome after Hello, got %s %r" % (kind, w))
    check(w.get("user_id") == 42, "Welcome.user_id %r" % w.get("user_id"))
    check(abs(w.get("server_time_ms", 0) - time.time() * 1000) < 60000, "server_time_ms %r" % w.get("server_time_ms"))
    await s.send("ping", {"nonce": 99})
    kind, p = await s.next("pong")
    check(p.get("nonce") == 99, "Pong nonce %r" % p)
    await s.ws.close()
    check(s.ws.close_code == 1000, "close handshake: %r" % s.ws.close_code)


async def test_bad_token(srv):
    s = await Session.connect(srv, None)
    await s.send("hello", {"token": "not.a.token", "device_id": "py"})
    kind, e = await s.next()
    check(kind == "error" and e.get("code") == 7, "Error 7 for a bad token, got %s %r" % (kind, e))
    code = await s.close_code()
    check(code == 4001, "close 4001 after a bad token, got %r" % code)


async def test_one_message(srv):
    st, conv = srv.rest("POST", "/api/v1/conversations", srv.token(1), {"kind": "direct", "members": [2]})
    check(st == 201 and isinstance(conv, dict), "create a direct conversation: %s %r" % (st, conv))
    conv_id = conv["conv_id"]
    a = await Session.connect(srv, srv.token(1), "py-a")
    b = await Session.connect(srv, srv.token(2), "py-b")
    _, wa = await a.next("welcome")
    _, wb = await b.next("welcome")
    check([c["conv_id"] for c in wb.get("conversations", [])] == [conv_id], "b's Welcome lists the conversation: %r" % wb)
    body = "héllo from Python ✓"
    await a.send("send", {"conv_id": conv_id, "body": body, "client_msg_id": "py-1"})
    _, ack = await a.next("ack")
    check(ack.get("msg_id") == 1 and ack.get("client_msg_id") == "py-1" and ack.get("conv_id") == conv_id, "Ack %r" % ack)
    _, msg = await b.next("msg")
    check(msg.get("msg_id") == 1 and msg.get("sender_id") == 1 and msg.get("body") == body, "Msg at b %r" % msg)
    check(msg.get("ts") == ack.get("ts"), "the Msg and the Ack carry the same ts")
    # The retry gets the same Ack.
    await a.send("send", {"conv_id": conv_id, "body": body, "client_msg_id": "py-1"})
    _, ack2 = await a.next("ack")
    check(ack2 == ack, "retry: %r vs %r" % (ack2, ack))
    await b.send("sync", {"conv_id": conv_id, "after_msg_id": 0})
    _, sb = await b.next("sync_batch")
    msgs = sb.get("messages", [])
    check([(m["msg_id"], m["body"]) for m in msgs] == [(1, body)], "Sync: %r" % sb)
    check(not sb.get("more", False), "Sync: more=false")
    await a.ws.close()
    await b.ws.close()


async def test_text_frame(srv):
    s = await Session.connect(srv, srv.token(5))
    await s.next("welcome")
    await s.ws.send("text is not chat.v1")
    code = await s.close_code()
    check(code == 1003, "close 1003 for a text frame, got %r" % code)


async def test_urllib_rest(srv):
    # Python's urllib writes the request head and the body with two send()
    # calls, so the server usually reads the body separately.
    st, conv = srv.urllib_rest("POST", "/api/v1/conversations", srv.token(7), {"kind": "direct", "members": [8]})
    check(st == 201 and isinstance(conv, dict) and conv.get("kind") == "direct",
          "POST through urllib (body in its own segment): %s %r" % (st, conv))
    st, lst = srv.urllib_rest("GET", "/api/v1/conversations", srv.token(7))
    check(st == 200 and len(lst.get("conversations", [])) == 1, "GET through urllib: %s %r" % (st, lst))


TESTS = [test_handshake, test_bad_token, test_one_message, test_text_frame, test_urllib_rest]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CHATD", os.path.join(REPO, "build", "chatd"))
    binary = os.path.abspath(binary)
    passed = failed = 0
    srv = Chatd(binary)
    try:
        srv.start()
        for t in TESTS:
            name = t.__name__
            try:
                asyncio.run(asyncio.wait_for(t(srv), 4 * WAIT))
                print("ok   - %s" % name)
                passed += 1
            except Exception as e:  # every failure is reported, then counted
                detail = str(e) if isinstance(e, Failure) else traceback.format_exc()
                print("FAIL - %s: %s" % (name, detail.strip()))
                failed += 1
        err = srv.stop()
        if err:
            print("FAIL - chatd stops cleanly: %s" % err)
            failed += 1
        else:
            print("ok   - chatd stops cleanly")
            passed += 1
    except Exception:
        print("FAIL - setup: %s" % traceback.format_exc().strip())
        failed += 1
    finally:
        srv.cleanup()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
