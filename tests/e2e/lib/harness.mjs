// harness.mjs — what every end-to-end test of chatd needs: a real chatd on a
// free loopback port with its own data directory and secret (ChatdServer),
// WebSocket clients built on the `ws` package speaking chat.v1 through
// protobufjs loading proto/chat.proto (ChatClient), a raw-socket WebSocket
// client for frames `ws` refuses to send (RawWs), HS256 tokens signed with
// node:crypto, and a REST helper on node:http.
//
// Environment:
//   CHATD      the chatd binary (default ../../build/chatd, relative to
//              tests/e2e)
//   E2E_SCALE  multiplies load sizes (default 1); a sanitizer build keeps 1
//
// Every wait is bounded (WAIT_MS, scaled for sanitizer builds); a test never
// sleeps to synchronise where an event can be awaited.
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const here = path.dirname(fileURLToPath(import.meta.url));
export const E2E_DIR = path.resolve(here, '..');
export const REPO = path.resolve(E2E_DIR, '../..');
const require = createRequire(path.join(E2E_DIR, 'package.json'));
export const WebSocket = require('ws');
const protobuf = require('protobufjs');

export const CHATD = process.env.CHATD
  ? path.resolve(process.cwd(), process.env.CHATD)
  : path.resolve(E2E_DIR, '../../build/chatd');
export const SANITIZED = /build-san/.test(CHATD) || process.env.E2E_SANITIZED === '1';
export const SCALE = Math.max(0.1, Number(process.env.E2E_SCALE || 1));
/** Default bound of every wait, in ms. */
export const WAIT_MS = SANITIZED ? 20000 : 10000;

/** n scaled by E2E_SCALE, at least min. */
export const scaled = (n, min = 1) => Math.max(min, Math.round(n * SCALE));

// ---- protobuf ----

const root = protobuf.loadSync(path.join(REPO, 'proto/chat.proto'));
export const ClientFrame = root.lookupType('chat.v1.ClientFrame');
export const ServerFrame = root.lookupType('chat.v1.ServerFrame');

export function encodeClient(obj) {
  const m = ClientFrame.fromObject(obj);
  const err = ClientFrame.verify(m);
  if (err) throw new Error(`bad ClientFrame in the test itself: ${err}`);
  return Buffer.from(ClientFrame.encode(m).finish());
}

/** A ServerFrame as a plain object: { kind: 'ack', ack: {...} }, ids as
 * Numbers (the server keeps them below 2^53), enums as names. */
export function decodeServer(buf) {
  return ServerFrame.toObject(ServerFrame.decode(buf), {
    longs: Number, enums: String, defaults: true, oneofs: true,
  });
}

// ---- small utilities ----

export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

export const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll cond() (sync or async) every `every` ms until it is truthy; bounded. */
export async function until(cond, what, { timeout = WAIT_MS, every = 20 } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await delay(every);
  }
}

const b64url = (b) => Buffer.from(b).toString('base64url');

/** An HS256 JWT signed here with node:crypto (not by chatd). */
export function signJwt(secret, claims, header = { alg: 'HS256', typ: 'JWT' }) {
  const h = b64url(JSON.stringify(header));
  const p = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${h}.${p}`).digest();
  return `${h}.${p}.${b64url(sig)}`;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---- chatd processes ----

const live = new Set(); // servers to SIGKILL if this process exits early
const tempDirs = new Set();
process.on('exit', () => {
  for (const s of live) {
    try { s.proc.kill('SIGKILL'); } catch { /* already gone */ }
  }
  for (const d of tempDirs) {
    try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
  }
});

function flagArgs(flags) {
  const out = [];
  for (const [k, v] of Object.entries(flags)) out.push(`--${k}`, String(v));
  return out;
}

const SAN_RE = /(AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:)/;

export class ChatdServer {
  constructor({ dir, secret, flags }) {
    this.dir = dir;
    this.dataDir = path.join(dir, 'data');
    this.secretFile = path.join(dir, 'secret');
    this.secret = secret;
    this.flags = flags;
    this.proc = null;
    this.port = 0;
    this.stderrText = ''; // every run's stderr, for failure reports
    this.exit = null;
  }

  get url() { return `ws://127.0.0.1:${this.port}/ws`; }
  get base() { return `http://127.0.0.1:${this.port}`; }
  get running() { return this.proc !== null && this.exit === null; }

  /** Start chatd on a free port; retried if the port was taken meanwhile. */
  async start() {
    let lastErr;
    for (let attempt = 0; attempt < 5; attempt++) {
      const port = await freePort();
      try {
        await this._spawn(port);
        return this;
      } catch (e) {
        lastErr = e;
        if (!/in use|EADDRINUSE|bind/i.test(e.message)) break;
      }
    }
    throw lastErr;
  }

  _spawn(port) {
    const args = ['--data', this.dataDir, '--listen', `127.0.0.1:${port}`,
      '--secret-file', this.secretFile, ...flagArgs(this.flags)];
    const proc = spawn(CHATD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    this.exit = null;
    live.add(this);
    const exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
        live.delete(this);
        resolve(this.exit);
      });
    });
    this.exited = exited;
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      this.stderrText += d;
      if (this.stderrText.length > 4 << 20) this.stderrText = this.stderrText.slice(-(2 << 20));
    });
    proc.stdout.setEncoding('utf8');
    let out = '';
    const ready = new Promise((resolve, reject) => {
      proc.stdout.on('data', (d) => {
        out += d;
        const m = /chatd listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      proc.on('error', reject);
      exited.then((e) => reject(new Error(
        `chatd exited before listening (code ${e.code}, signal ${e.signal}): ${this.stderrText.slice(-2000)}`)));
    });
    return withTimeout(ready, WAIT_MS, 'chatd to print "chatd listening on"').then((p) => {
      if (p !== port) throw new Error(`chatd says it listens on ${p}, asked for ${port}`);
      this.port = port;
    }, (e) => {
      if (this.running) proc.kill('SIGKILL');
      throw e;
    });
  }

  /** SIGTERM and wait; throws if the exit was not clean (non-zero status,
   * a signal, or sanitizer output). */
  async stop() {
    if (!this.running) return this.exit;
    const before = this.stderrText.length;
    this.proc.kill('SIGTERM');
    let e;
    try {
      e = await withTimeout(this.exited, WAIT_MS, 'chatd to exit after SIGTERM');
    } catch (err) {
      this.proc.kill('SIGKILL');
      await this.exited;
      throw err;
    }
    const tail = this.stderrText.slice(before);
    if (e.code !== 0 || SAN_RE.test(tail)) {
      throw new Error(`chatd did not stop cleanly on SIGTERM (code ${e.code}, signal ${e.signal}):\n${tail.slice(-4000)}`);
    }
    return e;
  }

  /** SIGKILL and wait. */
  async kill() {
    if (!this.running) return this.exit;
    this.proc.kill('SIGKILL');
    return withTimeout(this.exited, WAIT_MS, 'chatd to die after SIGKILL');
  }

  /** Start again on the same data directory (a new port). */
  async restart() {
    if (this.running) await this.stop();
    return this.start();
  }

  /** A token for user `uid` signed with this server's secret. */
  token(uid, { ttl = 3600, exp, extra = {} } = {}) {
    const now = Math.floor(Date.now() / 1000);
    return signJwt(this.secret, { sub: String(uid), iat: now, exp: exp ?? now + ttl, ...extra });
  }

  /** A token minted by `chatd token` itself. */
  mintToken(uid, ttl = 3600) {
    return execFileSync(CHATD, ['token', '--secret-file', this.secretFile, '--user', String(uid),
      '--ttl', String(ttl)], { encoding: 'utf8' }).trim();
  }

  stderrTail(n = 3000) { return this.stderrText.slice(-n); }

  sanitizerReport() {
    const m = SAN_RE.exec(this.stderrText);
    return m ? this.stderrText.slice(Math.max(0, m.index - 200), m.index + 4000) : null;
  }
}

// ---- the REST API ----

/** One HTTP request on its own connection. body: an object (sent as JSON) or
 * a string/Buffer (sent as is). Resolves { status, headers, text, json }. */
export function api(server, method, urlPath, { token, body, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    let payload;
    if (body !== undefined) {
      payload = typeof body === 'string' || Buffer.isBuffer(body) ? Buffer.from(body) : Buffer.from(JSON.stringify(body));
      if (!('Content-Type' in h)) h['Content-Type'] = 'application/json';
      h['Content-Length'] = payload.length;
    }
    if (token) h.Authorization = `Bearer ${token}`;
    const req = http.request({ host: '127.0.0.1', port: server.port, method, path: urlPath, headers: h, agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json;
          try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
          resolve({ status: res.statusCode, headers: res.headers, text, json });
        });
        res.on('error', reject);
      });
    req.on('error', reject);
    req.setTimeout(WAIT_MS, () => req.destroy(new Error(`${method} ${urlPath}: no answer in ${WAIT_MS} ms`)));
    if (payload) req.write(payload);
    req.end();
  });
}

/** POST /api/v1/conversations as `uid`; returns the conversation object and
 * throws unless the answer is 200/201. */
export async function createConv(server, uid, kind, members, title) {
  const body = { kind, members };
  if (title !== undefined) body.title = title;
  const r = await api(server, 'POST', '/api/v1/conversations', { token: server.token(uid), body });
  if (r.status !== 201 && r.status !== 200) {
    throw new Error(`create ${kind} conversation as ${uid} with ${JSON.stringify(members).slice(0, 80)}: ${r.status} ${r.text}`);
  }
  return r.json;
}

/** Every message of a conversation through REST, oldest first. */
export async function restHistory(server, uid, convId, limit = 200) {
  const out = [];
  let after = 0;
  for (let page = 0; page < 10000; page++) {
    const r = await api(server, 'GET', `/api/v1/conversations/${convId}/messages?after=${after}&limit=${limit}`,
      { token: server.token(uid) });
    if (r.status !== 200) throw new Error(`history of ${convId}: ${r.status} ${r.text}`);
    out.push(...r.json.messages);
    if (!r.json.more) return out;
    if (r.json.messages.length === 0) throw new Error('history: more=true with an empty page');
    after = r.json.messages[r.json.messages.length - 1].msg_id;
  }
  throw new Error('history: too many pages');
}

/** GET /metrics as { name_with_labels: number }. */
export async function metrics(server) {
  const r = await api(server, 'GET', '/metrics');
  if (r.status !== 200) throw new Error(`/metrics: ${r.status}`);
  const m = {};
  for (const line of r.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

// ---- chat.v1 clients on `ws` ----

let nonceSeq = 1;

export class ChatClient {
  /** Open a WebSocket to server (or a URL) with subprotocol chat.v1. */
  static open(server, { protocols = 'chat.v1', timeout = WAIT_MS } = {}) {
    const url = typeof server === 'string' ? server : server.url;
    const ws = new WebSocket(url, protocols);
    const c = new ChatClient(ws);
    const opened = new Promise((resolve, reject) => {
      ws.once('open', () => resolve(c));
      ws.once('unexpected-response', (req, res) => {
        const err = new Error(`WebSocket upgrade refused: HTTP ${res.statusCode}`);
        err.status = res.statusCode;
        res.resume();
        req.destroy();
        reject(err);
      });
      ws.once('error', reject);
    });
    return withTimeout(opened, timeout, `WebSocket to ${url} to open`);
  }

  /** Open and say Hello; resolves with the client, its Welcome in .welcome. */
  static async connect(server, token, deviceId = 'd' + nonceSeq++) {
    const c = await ChatClient.open(server);
    await c.hello(token, deviceId);
    return c;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = []; // received and not yet taken by next()
    this.waiters = [];
    this.closeInfo = null;
    this.welcome = null;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        for (const w of this.waiters.splice(0)) {
          clearTimeout(w.timer);
          w.reject(new Error(`connection closed (${code} ${reason}) while waiting for ${w.what}`));
        }
        resolve(this.closeInfo);
      });
    });
    ws.on('error', (e) => { this.lastError = e; });
    ws.on('message', (data, isBinary) => {
      let f;
      if (!isBinary) f = { kind: 'text', text: data.toString() };
      else {
        try { f = decodeServer(data); } catch (e) { f = { kind: 'undecodable', error: e.message, bytes: data }; }
      }
      for (let i = 0; i < this.waiters.length; i++) {
        const w = this.waiters[i];
        if (w.pred(f)) {
          this.waiters.splice(i, 1);
          clearTimeout(w.timer);
          w.resolve(f);
          return;
        }
      }
      this.frames.push(f);
    });
  }

  send(obj) { this.ws.send(encodeClient(obj)); }
  sendRaw(buf, opts) { this.ws.send(buf, opts); }

  /** The first frame (already buffered or still to come) for which pred is
   * true, removed from the buffer. pred may be a kind name. */
  next(pred = () => true, { timeout = WAIT_MS, what } = {}) {
    const p = typeof pred === 'string' ? ((k) => (f) => f.kind === k)(pred) : pred;
    const label = what || (typeof pred === 'string' ? `a ${pred} frame` : 'a matching frame');
    const i = this.frames.findIndex(p);
    if (i >= 0) return Promise.resolve(this.frames.splice(i, 1)[0]);
    if (this.closeInfo) {
      return Promise.reject(new Error(`connection closed (${this.closeInfo.code}) before ${label}`));
    }
    return new Promise((resolve, reject) => {
      const w = { pred: p, resolve, reject, what: label };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        const kinds = this.frames.map((f) => f.kind).join(',');
        reject(new Error(`timed out after ${timeout} ms waiting for ${label} (buffered: ${kinds.slice(0, 300)})`));
      }, timeout);
      this.waiters.push(w);
    });
  }

  /** Next frame of a kind, returning its payload (f[kind]). */
  async nextOf(kind, pred = () => true, opts = {}) {
    const f = await this.next((x) => x.kind === kind && pred(x[kind]), { what: `a ${kind} frame`, ...opts });
    return f[kind];
  }

  /** Take every buffered frame matching pred (no waiting). */
  take(pred = () => true) {
    const p = typeof pred === 'string' ? ((k) => (f) => f.kind === k)(pred) : pred;
    const out = this.frames.filter(p);
    this.frames = this.frames.filter((f) => !p(f));
    return out;
  }

  async hello(token, deviceId = 'dev') {
    this.send({ hello: { token, deviceId } });
    const f = await this.next((x) => x.kind === 'welcome' || x.kind === 'error', { what: 'Welcome' });
    if (f.kind === 'error') throw new Error(`Hello refused: Error ${f.error.code} ${f.error.message}`);
    this.welcome = f.welcome;
    return f.welcome;
  }

  /** Ping and wait for its Pong: every frame the server queued for this
   * connection before it read the Ping has arrived when this resolves. */
  async barrier(opts) {
    const nonce = nonceSeq++;
    this.send({ ping: { nonce } });
    await this.nextOf('pong', (p) => p.nonce === nonce, { what: `Pong ${nonce}`, ...opts });
  }

  /** Send a message; resolves with its Ack (or throws on an Error). */
  async sendMsg(convId, body, clientMsgId = crypto.randomUUID(), extra = {}) {
    this.send({ send: { convId, body, clientMsgId, ...extra } });
    const f = await this.next((x) => (x.kind === 'ack' && x.ack.clientMsgId === clientMsgId) ||
      (x.kind === 'error' && x.error.clientMsgId === clientMsgId), { what: `Ack of ${clientMsgId}` });
    if (f.kind === 'error') {
      const e = new Error(`Send ${clientMsgId} refused: Error ${f.error.code} ${f.error.message}`);
      e.code = f.error.code;
      throw e;
    }
    return f.ack;
  }

  /** Every message of a conversation after `after`, via Sync pages. */
  async syncAll(convId, after = 0, limit = 0) {
    const out = [];
    const pages = [];
    for (let i = 0; i < 100000; i++) {
      this.send({ sync: { convId, afterMsgId: after, limit } });
      const b = await this.nextOf('syncBatch', (s) => s.convId === convId, { what: `SyncBatch of ${convId}` });
      pages.push({ n: b.messages.length, more: b.more });
      out.push(...b.messages);
      if (!b.more) return { messages: out, pages };
      if (b.messages.length === 0) throw new Error(`SyncBatch of ${convId}: more=true with no messages`);
      after = b.messages[b.messages.length - 1].msgId;
    }
    throw new Error('sync: too many pages');
  }

  /** Wait for the close; resolves { code, reason }. */
  waitClose(timeout = WAIT_MS) {
    return withTimeout(this.closed, timeout, 'the connection to close');
  }

  close() {
    if (this.closeInfo) return Promise.resolve(this.closeInfo);
    try { this.ws.close(1000); } catch { /* not open yet */ }
    return withTimeout(this.closed, WAIT_MS, 'close handshake').catch(() => {
      this.ws.terminate();
      return this.closed;
    });
  }

  terminate() { this.ws.terminate(); return this.closed; }
}

// ---- a WebSocket client on a bare socket, for frames `ws` will not send ----

export class RawWs {
  static async connect(server, { protocol = 'chat.v1', path: p = '/ws' } = {}) {
    const sock = net.connect(server.port, '127.0.0.1');
    const r = new RawWs(sock);
    await withTimeout(new Promise((res, rej) => { sock.once('connect', res); sock.once('error', rej); }),
      WAIT_MS, 'TCP connect');
    const key = crypto.randomBytes(16).toString('base64');
    sock.write(`GET ${p} HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
      (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : '') + '\r\n');
    const head = await r.readHead();
    if (!/^HTTP\/1\.1 101 /.test(head)) throw new Error(`no 101: ${head}`);
    const want = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
    if (!head.includes(`Sec-WebSocket-Accept: ${want}`)) throw new Error(`bad Sec-WebSocket-Accept: ${head}`);
    return r;
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.ended = false;
    this.error = null;
    this.notify = null;
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this._wake(); });
    sock.on('end', () => { this.ended = true; this._wake(); });
    sock.on('close', () => { this.ended = true; this._wake(); });
    sock.on('error', (e) => { this.error = e; this.ended = true; this._wake(); });
  }

  _wake() { const n = this.notify; this.notify = null; if (n) n(); }
  _more() { return new Promise((r) => { this.notify = r; }); }

  async readHead(timeout = WAIT_MS) {
    const end = Date.now() + timeout;
    for (;;) {
      const i = this.buf.indexOf('\r\n\r\n');
      if (i >= 0) {
        const head = this.buf.subarray(0, i + 4).toString('latin1');
        this.buf = this.buf.subarray(i + 4);
        return head;
      }
      if (this.ended) throw new Error(`connection ended before an HTTP head: ${this.buf.toString('latin1').slice(0, 200)}`);
      await withTimeout(this._more(), Math.max(1, end - Date.now()), 'an HTTP response head');
    }
  }

  /** A client frame: masked unless mask === false. */
  static frame(opcode, payload, { fin = true, mask = true, rsv = 0 } = {}) {
    payload = Buffer.from(payload);
    const len = payload.length;
    let hdr;
    if (len < 126) { hdr = Buffer.alloc(2); hdr[1] = len; }
    else if (len < 65536) { hdr = Buffer.alloc(4); hdr[1] = 126; hdr.writeUInt16BE(len, 2); }
    else { hdr = Buffer.alloc(10); hdr[1] = 127; hdr.writeBigUInt64BE(BigInt(len), 2); }
    hdr[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode;
    if (!mask) return Buffer.concat([hdr, payload]);
    hdr[1] |= 0x80;
    const key = crypto.randomBytes(4);
    const body = Buffer.from(payload);
    for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
    return Buffer.concat([hdr, key, body]);
  }

  write(buf) { this.sock.write(buf); }
  sendFrame(opcode, payload, opts) { this.write(RawWs.frame(opcode, payload, opts)); }
  sendClient(obj) { this.sendFrame(2, encodeClient(obj)); }

  /** Parse one server frame from the buffer, or null if incomplete. */
  _parse() {
    const b = this.buf;
    if (b.length < 2) return null;
    const fin = !!(b[0] & 0x80), opcode = b[0] & 0x0f, masked = !!(b[1] & 0x80);
    let len = b[1] & 0x7f, off = 2;
    if (len === 126) { if (b.length < 4) return null; len = b.readUInt16BE(2); off = 4; }
    else if (len === 127) { if (b.length < 10) return null; len = Number(b.readBigUInt64BE(2)); off = 10; }
    if (masked) throw new Error('server sent a masked frame');
    if (b.length < off + len) return null;
    const payload = b.subarray(off, off + len);
    this.buf = b.subarray(off + len);
    return { fin, opcode, payload };
  }

  /** Next server frame; { opcode, payload, fin }, or { eof: true } at the end. */
  async readFrame(timeout = WAIT_MS) {
    const end = Date.now() + timeout;
    for (;;) {
      const f = this._parse();
      if (f) return f;
      if (this.ended) return { eof: true, partial: this.buf.length, error: this.error };
      await withTimeout(this._more(), Math.max(1, end - Date.now()), 'a WebSocket frame');
    }
  }

  /** Read frames until a close frame or EOF. Resolves { code, reason, frames }
   * where code is the close frame's code, or null if the socket just ended. */
  async readUntilClose(timeout = WAIT_MS) {
    const end = Date.now() + timeout;
    const frames = [];
    for (;;) {
      const f = await this.readFrame(Math.max(1, end - Date.now()));
      if (f.eof) return { code: null, frames, eof: true, error: f.error };
      if (f.opcode === 8) {
        const code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005;
        return { code, reason: f.payload.subarray(2).toString(), frames };
      }
      frames.push(f);
    }
  }

  /** Resolves when the peer has closed the TCP connection. */
  async waitEnd(timeout = WAIT_MS) {
    const end = Date.now() + timeout;
    while (!this.ended) await withTimeout(this._more(), Math.max(1, end - Date.now()), 'the server to close the socket');
  }

  destroy() { this.sock.destroy(); }
}

/** A bare TCP connection to the server that collects everything it reads. */
export async function rawTcp(server) {
  const sock = net.connect(server.port, '127.0.0.1');
  await withTimeout(new Promise((res, rej) => { sock.once('connect', res); sock.once('error', rej); }),
    WAIT_MS, 'TCP connect');
  const chunks = [];
  const r = { sock, ended: false, error: null };
  r.closed = new Promise((resolve) => {
    sock.on('data', (d) => chunks.push(d));
    sock.on('error', (e) => { r.error = e; });
    sock.on('close', () => { r.ended = true; resolve(); });
  });
  r.text = () => Buffer.concat(chunks).toString('latin1');
  r.waitClosed = (timeout = WAIT_MS) => withTimeout(r.closed, timeout, 'the server to close the TCP connection');
  return r;
}

// ---- per-test context ----

/** Everything one test owns: its servers (each with its own temp dir and
 * secret) and clients. cleanup() closes and stops all of it, and removes the
 * temp dirs; it throws if a server did not stop cleanly. */
export class Ctx {
  constructor(t) {
    this.t = t;
    this.servers = [];
    this.clients = [];
    this.sockets = [];
  }

  async server(flags = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-e2e-'));
    tempDirs.add(dir);
    const secret = crypto.randomBytes(24).toString('hex');
    fs.writeFileSync(path.join(dir, 'secret'), secret, { mode: 0o600 });
    const s = new ChatdServer({ dir, secret, flags: { 'log-level': 'info', ...flags } });
    this.servers.push(s);
    await s.start();
    return s;
  }

  track(c) {
    if (c instanceof ChatClient) this.clients.push(c);
    else this.sockets.push(c);
    return c;
  }

  async connect(server, uid, deviceId) {
    return this.track(await ChatClient.connect(server, server.token(uid), deviceId));
  }

  async open(server, opts) {
    return this.track(await ChatClient.open(server, opts));
  }

  async raw(server, opts) {
    return this.track(await RawWs.connect(server, opts));
  }

  async tcp(server) {
    return this.track(await rawTcp(server));
  }

  async cleanup() {
    for (const c of this.clients) if (!c.closeInfo) c.ws.terminate();
    for (const s of this.sockets) (s.sock || s).destroy();
    await Promise.all(this.clients.map((c) => withTimeout(c.closed, 2000, 'client close').catch(() => {})));
    this.clients = [];
    this.sockets = [];
    const errors = [];
    for (const s of this.servers) {
      try { await s.stop(); } catch (e) { errors.push(e); }
      const san = s.sanitizerReport();
      if (san && !errors.length) errors.push(new Error(`sanitizer report from chatd:\n${san}`));
      fs.rmSync(s.dir, { recursive: true, force: true });
      tempDirs.delete(s.dir);
    }
    this.servers = [];
    if (errors.length) throw errors[0];
  }

  stderrTails() {
    return this.servers.map((s) => `--- chatd on port ${s.port}, stderr tail ---\n${s.stderrTail(2000)}`).join('\n');
  }
}

/** A test with its own Ctx; on failure the servers' stderr tails are added to
 * the error message; the Ctx is always cleaned up. */
export function e2e(name, opts, fn) {
  if (typeof opts === 'function') { fn = opts; opts = {}; }
  const timeout = opts.timeout ?? (SANITIZED ? 120000 : 60000);
  test(name, { ...opts, timeout }, async (t) => {
    const ctx = new Ctx(t);
    let cleaned = false;
    t.after(async () => { if (!cleaned) { cleaned = true; await ctx.cleanup().catch(() => {}); } });
    try {
      await fn(ctx, t);
    } catch (e) {
      if (e && typeof e === 'object' && ctx.servers.length) {
        try { e.message = `${e.message}\n${ctx.stderrTails()}`; } catch { /* read-only message */ }
      }
      cleaned = true;
      await ctx.cleanup().catch(() => {});
      throw e;
    }
    cleaned = true;
    await ctx.cleanup();
  });
}

/** Assert that ids are exactly from..to, in order. */
export function assertDense(ids, from, to, what) {
  const want = [];
  for (let i = from; i <= to; i++) want.push(i);
  if (ids.length !== want.length || ids.some((v, i) => v !== want[i])) {
    const seen = new Set();
    const dups = ids.filter((v) => seen.has(v) || !seen.add(v));
    const missing = want.filter((v) => !seen.has(v));
    throw new Error(`${what}: expected msg_ids ${from}..${to} in order; got ${ids.length} ids` +
      ` (dups: ${dups.slice(0, 10)}, missing: ${missing.slice(0, 10)}, first: ${ids.slice(0, 10)})`);
  }
}
