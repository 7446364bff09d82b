// push_receiver.mjs — a real HTTP(S) server standing in for a Matrix push
// gateway (POST /_matrix/push/v1/notify) in the push tests: it records every
// request that arrives and answers as the test says.
//
//   const rx = await PushReceiver.start({ respond: (rec, n) => ({ status: 503 }) });
//   ... chatd --push-url rx.url ...
//   const [first] = await rx.waitFor(1);
//
// respond(rec, n) gets the recorded request and its 1-based number and
// returns { status, body } (body: an object, sent as JSON, or a string),
// or 'hang' (never answer: chatd's timeout must fire) or 'reset' (destroy
// the connection without an answer). The default answers 200 {"rejected":[]}.
// With { tls: { key, cert } } it is an https server.
import http from 'node:http';
import https from 'node:https';
import { WAIT_MS, until } from './harness.mjs';

export const NOTIFY_PATH = '/_matrix/push/v1/notify';

export class PushReceiver {
  static async start({ respond, tls } = {}) {
    const rx = new PushReceiver(respond);
    const handler = (req, res) => rx._handle(req, res);
    rx.server = tls ? https.createServer({ key: tls.key, cert: tls.cert }, handler)
      : http.createServer(handler);
    rx.server.on('connection', (s) => { rx.sockets.add(s); s.on('close', () => rx.sockets.delete(s)); });
    rx.server.on('secureConnection', (s) => { rx.tlsHandshakes++; s.on('close', () => {}); });
    rx.server.on('tlsClientError', () => { rx.tlsErrors++; });
    await new Promise((resolve, reject) => {
      rx.server.once('error', reject);
      rx.server.listen(0, '127.0.0.1', resolve);
    });
    rx.port = rx.server.address().port;
    rx.url = `${tls ? 'https' : 'http'}://127.0.0.1:${rx.port}${NOTIFY_PATH}`;
    return rx;
  }

  constructor(respond) {
    this.respond = respond || (() => ({ status: 200, body: { rejected: [] } }));
    this.requests = []; // { method, url, headers, text, json, at }
    this.sockets = new Set();
    this.tlsHandshakes = 0;
    this.tlsErrors = 0;
  }

  _handle(req, res) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let json;
      try { json = JSON.parse(text); } catch { json = undefined; }
      const rec = { method: req.method, url: req.url, headers: req.headers, text, json, at: Date.now() };
      this.requests.push(rec);
      let a;
      try { a = this.respond(rec, this.requests.length); } catch (e) { a = { status: 500, body: String(e) }; }
      if (a === 'hang') return;
      if (a === 'reset') { req.socket.destroy(); return; }
      const body = a.body === undefined ? '' : typeof a.body === 'string' ? a.body : JSON.stringify(a.body);
      res.writeHead(a.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
  }

  /** The notifications (request bodies' .notification) received so far. */
  get notifications() { return this.requests.map((r) => r.json && r.json.notification); }

  /** Resolves with the requests once at least n matching pred arrived. */
  async waitFor(n, pred = () => true, { timeout = WAIT_MS } = {}) {
    return until(() => {
      const got = this.requests.filter(pred);
      return got.length >= n ? got : null;
    }, `${n} push request(s) at the receiver (got ${this.requests.filter(pred).length})`, { timeout });
  }

  async close() {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }
}
