// cors.test.mjs — chatd's CORS answers (server/conn.c "CORS", rest.c
// preflight), which let the web client served by one node of a cluster call
// the others: a listed origin (an entry of client_urls, default port or not)
// gets Access-Control-Allow-Origin naming it and Vary: Origin on REST, media
// and error answers, and a preflight with the methods and headers the client
// uses; any other origin gets no CORS header at all. The page itself comes
// with a Content-Security-Policy naming the same nodes. Plain HTTP from Node
// (node:http sets any Origin), against a single chatd given --client-urls.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Chatd, WAIT_MS } from './lib.mjs';

let server;
const OTHER = 'http://node2.example'; // listed as http://Node2.example:80/chat
const TLS = 'https://n3.example'; // listed as https://n3.example:443

/** One request; resolves { status, headers, body }. */
function request(method, urlPath, headers = {}, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: server.port, method, path: urlPath, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(WAIT_MS, () => req.destroy(new Error(`${method} ${urlPath}: no answer`)));
    req.end(body);
  });
}

before(async () => {
  server = new Chatd();
  server.extraArgs = ['--client-urls', `http://127.0.0.1:1,http://Node2.example:80/chat ${TLS}:443`];
  await server.start();
});

after(async () => {
  let err;
  try { await server?.stop(); } catch (e) { err = e; }
  server?.cleanup();
  if (err) throw err;
});

test('a preflight from a listed origin is answered with what the web client sends', async () => {
  const r = await request('OPTIONS', '/api/v1/conversations/5/messages', {
    Origin: OTHER, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization,content-type',
  });
  assert.equal(r.status, 204);
  assert.equal(r.headers['access-control-allow-origin'], OTHER);
  assert.equal(r.headers.vary, 'Origin');
  assert.equal(r.headers['access-control-allow-methods'], 'GET, POST, DELETE');
  assert.equal(r.headers['access-control-allow-headers'], 'Authorization, Content-Type');
  assert.ok(Number(r.headers['access-control-max-age']) > 0);
  // Any path under /api/, also one that has no route (the answer to the
  // real request says 404 then).
  const m = await request('OPTIONS', '/api/v1/media', { Origin: TLS, 'Access-Control-Request-Method': 'POST' });
  assert.equal(m.status, 204);
  assert.equal(m.headers['access-control-allow-origin'], TLS);
});

test('an origin that is not listed gets no CORS headers', async () => {
  for (const origin of ['http://evil.example', 'http://node2.example:8080', 'https://node2.example', 'null']) {
    const p = await request('OPTIONS', '/api/v1/conversations', { Origin: origin, 'Access-Control-Request-Method': 'POST' });
    assert.equal(p.status, 204);
    assert.equal(p.headers['access-control-allow-origin'], undefined, origin);
    assert.equal(p.headers['access-control-allow-methods'], undefined, origin);
    const g = await request('GET', '/api/v1/conversations', { Origin: origin, Authorization: `Bearer ${server.token(1)}` });
    assert.equal(g.status, 200);
    assert.equal(g.headers['access-control-allow-origin'], undefined, origin);
  }
  // No Origin (not a browser, or same-origin GET): nothing either.
  const g = await request('GET', '/api/v1/cluster');
  assert.equal(g.headers['access-control-allow-origin'], undefined);
});

test('REST answers, errors, uploads and media carry the listed origin', async () => {
  const auth = { Authorization: `Bearer ${server.token(1)}` };
  const list = await request('GET', '/api/v1/conversations', { Origin: OTHER, ...auth });
  assert.equal(list.status, 200);
  assert.equal(list.headers['access-control-allow-origin'], OTHER);
  assert.equal(list.headers.vary, 'Origin');
  const e = await request('GET', '/api/v1/conversations', { Origin: OTHER });
  assert.equal(e.status, 401);
  assert.equal(e.headers['access-control-allow-origin'], OTHER, 'errors are readable too (the client shows them)');
  // A write, answered after the engine (a deferred answer).
  const c = await request('POST', '/api/v1/conversations', { Origin: TLS, ...auth, 'Content-Type': 'application/json' },
    JSON.stringify({ kind: 'direct', members: [2] }));
  assert.equal(c.status, 201, c.body);
  assert.equal(c.headers['access-control-allow-origin'], TLS);
  const conv = JSON.parse(c.body).conv_id;
  const s = await request('POST', `/api/v1/conversations/${conv}/messages`, { Origin: OTHER, ...auth, 'Content-Type': 'application/json' },
    JSON.stringify({ body: 'hi', client_msg_id: 'cors-1' }));
  assert.equal(s.status, 201, s.body);
  assert.equal(s.headers['access-control-allow-origin'], OTHER);
  // The streaming upload, and the object it made (GET and HEAD).
  const up = await request('POST', '/api/v1/media', { Origin: OTHER, ...auth, 'Content-Type': 'text/plain' }, 'hello cors');
  assert.equal(up.status, 201, up.body);
  assert.equal(up.headers['access-control-allow-origin'], OTHER);
  const url = JSON.parse(up.body).url;
  for (const method of ['GET', 'HEAD']) {
    const m = await request(method, url, { Origin: TLS });
    assert.equal(m.status, 200);
    assert.equal(m.headers['access-control-allow-origin'], TLS, method);
    assert.equal(m.headers['content-length'], '10');
    assert.equal(m.body, method === 'GET' ? 'hello cors' : '');
  }
  const bad = await request('HEAD', url.replace(/sig=[0-9a-f]+/, `sig=${'0'.repeat(64)}`), { Origin: TLS });
  assert.equal(bad.status, 403);
  assert.equal(bad.headers['access-control-allow-origin'], TLS, 'a 403 is readable: the client mints a fresh URL then');
});

test('pipelined requests of two origins each get their own', async () => {
  // Two requests in one write; the first waits for the engine, so the
  // second's head has been read before the first is answered.
  const auth = `Authorization: Bearer ${server.token(1)}\r\n`;
  const body = JSON.stringify({ kind: 'direct', members: [3] });
  const raw = `POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nOrigin: ${OTHER}\r\n${auth}Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}` +
    `GET /api/v1/conversations HTTP/1.1\r\nHost: x\r\nOrigin: ${TLS}\r\n${auth}Connection: close\r\n\r\n`;
  const net = await import('node:net');
  const text = await new Promise((resolve, reject) => {
    const sock = net.connect(server.port, '127.0.0.1', () => sock.write(raw));
    let out = '';
    sock.setEncoding('utf8');
    sock.on('data', (d) => { out += d; });
    sock.on('end', () => resolve(out));
    sock.on('error', reject);
    sock.setTimeout(WAIT_MS, () => sock.destroy(new Error('no answer')));
  });
  const origins = [...text.matchAll(/^Access-Control-Allow-Origin: (.*)\r$/gm)].map((m) => m[1]);
  assert.deepEqual(origins, [OTHER, TLS], text.slice(0, 600));
});

test('the page comes with a Content-Security-Policy naming the listed nodes', async () => {
  const r = await request('GET', '/');
  assert.equal(r.status, 200);
  const csp = r.headers['content-security-policy'];
  assert.match(csp, /connect-src 'self' http:\/\/127\.0\.0\.1:1 ws:\/\/127\.0\.0\.1:1 http:\/\/node2\.example ws:\/\/node2\.example https:\/\/n3\.example wss:\/\/n3\.example;/);
  assert.match(csp, /img-src 'self' data: blob: http:\/\/127\.0\.0\.1:1 http:\/\/node2\.example https:\/\/n3\.example$/);
  const js = await request('GET', '/app.js');
  assert.equal(js.headers['content-security-policy'], undefined);
});
