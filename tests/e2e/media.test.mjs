// Media: uploads into the content-addressed store, signed download URLs,
// Range requests, minting fresh URLs (members of a conversation where the
// media was sent, and uploaders), limits, and persistence across restarts.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { e2e, api, createConv, delay, metrics, signJwt, until } from './lib/harness.mjs';

/** GET a path; resolves { status, headers, body: Buffer }. */
function get(server, urlPath, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: server.port, method: 'GET', path: urlPath, headers, agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
    req.on('error', reject);
    req.end();
  });
}

function upload(server, uid, bytes, ctype = 'application/octet-stream') {
  return api(server, 'POST', '/api/v1/media', { token: server.token(uid), body: bytes, headers: { 'Content-Type': ctype } });
}

function sign(secret, id, exp) {
  return crypto.createHmac('sha256', secret).update(`${id}\n${exp}`).digest('hex');
}

const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');

e2e('media: upload, then download with the signed URL gives the same bytes and content type', async (ctx) => {
  const s = await ctx.server();
  const bytes = crypto.randomBytes(3 << 20); // above max_http_body_bytes: the media route has its own limit
  const r = await upload(s, 1, bytes, 'image/png');
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.media_id, sha256(bytes));
  assert.equal(r.json.size, bytes.length);
  assert.equal(r.json.content_type, 'image/png');
  assert.match(r.json.url, /^\/media\/[0-9a-f]{64}\?exp=\d+&sig=[0-9a-f]{64}$/);
  const d = await get(s, r.json.url);
  assert.equal(d.status, 200);
  assert.equal(d.headers['content-type'], 'image/png');
  assert.equal(d.headers['accept-ranges'], 'bytes');
  assert.ok(d.body.equals(bytes), 'downloaded bytes equal the upload');

  // Identical content: the same id.
  const again = await upload(s, 2, bytes, 'image/png');
  assert.equal(again.status, 201, again.text);
  assert.equal(again.json.media_id, r.json.media_id);

  // No token: 401.
  const anon = await api(s, 'POST', '/api/v1/media', { body: Buffer.from('x') });
  assert.equal(anon.status, 401, anon.text);
});

e2e('media: single Range requests give 206 with Content-Range; unsatisfiable gives 416', async (ctx) => {
  const s = await ctx.server();
  const bytes = Buffer.from('0123456789abcdefghij');
  const r = await upload(s, 1, bytes, 'text/plain');
  assert.equal(r.status, 201, r.text);
  const url = r.json.url;
  let d = await get(s, url, { Range: 'bytes=2-5' });
  assert.equal(d.status, 206);
  assert.equal(d.headers['content-range'], 'bytes 2-5/20');
  assert.equal(d.body.toString(), '2345');
  d = await get(s, url, { Range: 'bytes=15-' });
  assert.equal(d.status, 206);
  assert.equal(d.headers['content-range'], 'bytes 15-19/20');
  assert.equal(d.body.toString(), 'fghij');
  d = await get(s, url, { Range: 'bytes=-3' });
  assert.equal(d.status, 206);
  assert.equal(d.body.toString(), 'hij');
  d = await get(s, url, { Range: 'bytes=20-' });
  assert.equal(d.status, 416);
  assert.equal(d.headers['content-range'], 'bytes */20');
  // Several ranges: the whole object (documented).
  d = await get(s, url, { Range: 'bytes=0-1,4-5' });
  assert.equal(d.status, 200);
  assert.ok(d.body.equals(bytes));
});

e2e('media: tampered, expired or missing signatures are 403; an unknown id with a valid signature is 404', async (ctx) => {
  const s = await ctx.server();
  const r = await upload(s, 1, Buffer.from('secret picture'), 'image/jpeg');
  assert.equal(r.status, 201, r.text);
  const id = r.json.media_id;
  const u = new URL(r.json.url, s.base);
  const exp = u.searchParams.get('exp');
  const sig = u.searchParams.get('sig');
  const flip = sig.slice(0, -1) + (sig.endsWith('0') ? '1' : '0');
  assert.equal((await get(s, `/media/${id}?exp=${exp}&sig=${flip}`)).status, 403, 'tampered sig');
  assert.equal((await get(s, `/media/${id}?exp=${Number(exp) + 1}&sig=${sig}`)).status, 403, 'tampered exp');
  assert.equal((await get(s, `/media/${id}?exp=${exp}`)).status, 403, 'no sig');
  assert.equal((await get(s, `/media/${id}?sig=${sig}`)).status, 403, 'no exp');
  assert.equal((await get(s, `/media/${id}`)).status, 403, 'no query');
  // The test signs with the server's secret: a future exp works, a past one is 403.
  const future = Math.floor(Date.now() / 1000) + 600;
  assert.equal((await get(s, `/media/${id}?exp=${future}&sig=${sign(s.secret, id, future)}`)).status, 200, 'own signature');
  const past = Math.floor(Date.now() / 1000) - 5;
  assert.equal((await get(s, `/media/${id}?exp=${past}&sig=${sign(s.secret, id, past)}`)).status, 403, 'expired');
  const unknown = sha256(Buffer.from('never uploaded'));
  assert.equal((await get(s, `/media/${unknown}?exp=${future}&sig=${sign(s.secret, unknown, future)}`)).status, 404);
});

e2e('media: an upload over max_media_bytes is 413', async (ctx) => {
  const s = await ctx.server({ 'max-media-bytes': 4096 });
  const ok = await upload(s, 1, crypto.randomBytes(4096));
  assert.equal(ok.status, 201, ok.text);
  const big = await upload(s, 1, crypto.randomBytes(5000));
  assert.equal(big.status, 413, big.text);
});

e2e('media: a member of a conversation where it was sent can mint a URL; a non-member gets 403', async (ctx) => {
  const s = await ctx.server();
  const bytes = crypto.randomBytes(1000);
  const up = await upload(s, 1, bytes, 'image/gif');
  assert.equal(up.status, 201, up.text);
  const id = up.json.media_id;
  const mint = (uid) => api(s, 'GET', `/api/v1/media/${id}/url`, { token: s.token(uid) });

  // Before it is sent anywhere: only the uploader.
  assert.equal((await mint(1)).status, 200);
  assert.equal((await mint(2)).status, 403);

  const conv = await createConv(s, 1, 'group', [2], 'pics');
  const sent = await api(s, 'POST', `/api/v1/conversations/${conv.conv_id}/messages`,
    { token: s.token(1), body: { body: 'look', media_url: up.json.url } });
  assert.ok(sent.status === 200 || sent.status === 201, sent.text);

  const m2 = await mint(2);
  assert.equal(m2.status, 200, m2.text);
  assert.equal(m2.json.media_id, id);
  const d = await get(s, m2.json.url);
  assert.equal(d.status, 200);
  assert.ok(d.body.equals(bytes));
  assert.equal((await mint(3)).status, 403, 'not a member');
  assert.equal((await api(s, 'GET', `/api/v1/media/${id}/url`)).status, 401, 'no token');

  // After a restart the index is rebuilt from the log, and the object is still there.
  await s.restart();
  const again = await mint(2);
  assert.equal(again.status, 200, again.text);
  const d2 = await get(s, again.json.url);
  assert.equal(d2.status, 200);
  assert.equal(d2.headers['content-type'], 'image/gif');
  assert.ok(d2.body.equals(bytes));
  assert.equal((await mint(3)).status, 403);
});

e2e('media: an upload survives a chatd kill and restart', async (ctx) => {
  const s = await ctx.server();
  const bytes = crypto.randomBytes(100000);
  const up = await upload(s, 5, bytes, 'application/pdf');
  assert.equal(up.status, 201, up.text);
  await s.kill();
  await s.start();
  const d = await get(s, up.json.url);
  assert.equal(d.status, 200);
  assert.equal(d.headers['content-type'], 'application/pdf');
  assert.ok(d.body.equals(bytes));
  const m = await api(s, 'GET', `/api/v1/media/${up.json.media_id}/url`, { token: s.token(5) });
  assert.equal(m.status, 200, m.text);
});

// ---- streaming uploads (conn.c body sink → media.c; docs/media.md) ----

/** Parse the HTTP responses in raw bytes, in order: [{ status, headers, body }].
 * Interim 1xx answers are included (they have no body). A response whose
 * body has not fully arrived is left out. */
function parseResponses(buf) {
  const out = [];
  let off = 0;
  for (let guard = 0; guard < 1000 && off < buf.length; guard++) {
    const end = buf.indexOf('\r\n\r\n', off, 'latin1');
    if (end < 0) break;
    const head = buf.subarray(off, end).toString('latin1').split('\r\n');
    const status = Number(head[0].split(' ')[1]);
    const headers = {};
    for (const l of head.slice(1)) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
    }
    const len = status < 200 ? 0 : Number(headers['content-length'] || 0);
    if (end + 4 + len > buf.length) break;
    const body = buf.subarray(end + 4, end + 4 + len);
    let json;
    try { json = JSON.parse(body.toString('utf8')); } catch { json = undefined; }
    out.push({ status, headers, body, json });
    off = end + 4 + len;
  }
  return out;
}

/** A raw TCP connection that collects bytes as a Buffer. */
async function tcp(ctx, s) {
  const r = await ctx.tcp(s);
  const chunks = [];
  r.sock.on('data', (d) => chunks.push(d));
  r.buf = () => Buffer.concat(chunks);
  r.responses = () => parseResponses(r.buf());
  r.write = (b) => new Promise((res, rej) => r.sock.write(b, (e) => (e ? rej(e) : res())));
  r.waitResponses = (n, what) => until(() => r.responses().filter((x) => x.status >= 200).length >= n,
    what || `${n} responses`);
  return r;
}

function uploadHead(s, uid, len, extra = '') {
  const auth = uid === null ? '' : `Authorization: Bearer ${typeof uid === 'string' ? uid : s.token(uid)}\r\n`;
  const cl = len === null ? 'Transfer-Encoding: chunked\r\n' : `Content-Length: ${len}\r\n`;
  return `POST /api/v1/media HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/octet-stream\r\n${cl}${extra}\r\n`;
}

/** Files under DATA/media: { tmp: [...], objects: [...] } (relative paths). */
function mediaFiles(s) {
  const root = path.join(s.dataDir, 'media');
  const out = { tmp: [], objects: [] };
  if (!fs.existsSync(root)) return out;
  for (const e of fs.readdirSync(root, { withFileTypes: true })) {
    if (e.isFile()) (e.name.startsWith('tmp-') ? out.tmp : out.objects).push(e.name);
    else if (e.isDirectory()) {
      for (const f of fs.readdirSync(path.join(root, e.name))) {
        (f.startsWith('tmp-') ? out.tmp : out.objects).push(`${e.name}/${f}`);
      }
    }
  }
  return out;
}

/** VmHWM (peak resident set) of a process, in bytes. */
function vmHwm(pid) {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

e2e('media: a 12 MiB upload streams to disk: peak RSS and input buffers grow by far less than the upload', async (ctx) => {
  const s = await ctx.server();
  // Warm up (first upload, first REST answer) so that one-time allocations are not counted.
  assert.equal((await upload(s, 1, crypto.randomBytes(100000))).status, 201);
  await metrics(s);
  const before = vmHwm(s.proc.pid);
  const bytes = crypto.randomBytes(12 << 20);
  const r = await upload(s, 1, bytes, 'video/mp4');
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.media_id, sha256(bytes));
  assert.equal(r.json.size, bytes.length);
  const grew = vmHwm(s.proc.pid) - before;
  const m = await metrics(s);
  // Buffered, the body alone would add 12 MiB (plus the doubling growth of
  // the input buffer); streamed, reads go through one shared 64 KiB buffer.
  assert.ok(grew < (3 << 20), `peak RSS grew by ${grew} bytes during a ${bytes.length}-byte upload`);
  assert.ok(m.chatd_http_input_buffer_peak_bytes < (2 << 20),
    `an input buffer reached ${m.chatd_http_input_buffer_peak_bytes} bytes`);
  assert.equal(m.chatd_media_uploads_active, 0);
  assert.ok(m.chatd_media_upload_bytes_total >= bytes.length);
  console.log(`# 12 MiB upload: VmHWM grew by ${(grew / 1024).toFixed(0)} KiB; input buffer peak ${m.chatd_http_input_buffer_peak_bytes} bytes`);
  const d = await get(s, r.json.url);
  assert.equal(d.status, 200);
  assert.ok(d.body.equals(bytes), 'downloaded bytes equal the upload');
  assert.deepEqual(mediaFiles(s).tmp, [], 'no temp file left');
});

e2e('media: an upload sent in many small writes with pauses is stored whole, and other connections are served meanwhile', async (ctx) => {
  const s = await ctx.server();
  const bytes = crypto.randomBytes(200000);
  const c = await tcp(ctx, s);
  await c.write(uploadHead(s, 3, bytes.length));
  const piece = 5000;
  for (let off = 0, i = 0; off < bytes.length; off += piece, i++) {
    await c.write(bytes.subarray(off, off + piece));
    await delay(i % 8 === 0 ? 60 : 5);
    if (i === 10) {
      // Mid-upload, another connection gets its answers at once.
      assert.equal((await api(s, 'GET', '/healthz')).status, 200);
      assert.equal((await metrics(s)).chatd_media_uploads_active, 1);
    }
  }
  await c.waitResponses(1, 'the upload answer');
  const [res] = c.responses();
  assert.equal(res.status, 201, res.body.toString());
  assert.equal(res.json.media_id, sha256(bytes));
  assert.equal(res.json.size, bytes.length);
});

e2e('media: an upload cut mid-way leaves neither an object nor a temp file', async (ctx) => {
  const s = await ctx.server();
  const bytes = crypto.randomBytes(1 << 20);
  const c = await tcp(ctx, s);
  await c.write(uploadHead(s, 1, bytes.length));
  await c.write(bytes.subarray(0, 600000));
  await until(async () => (await metrics(s)).chatd_media_uploads_active === 1, 'the upload to start');
  await until(() => mediaFiles(s).tmp.length === 1, 'the temp file to exist while the upload runs');
  c.sock.destroy();
  await until(async () => (await metrics(s)).chatd_media_uploads_active === 0, 'the upload to be dropped');
  const f = mediaFiles(s);
  assert.deepEqual(f.tmp, [], 'temp file removed');
  assert.deepEqual(f.objects, [], 'nothing stored');
  assert.ok((await metrics(s)).chatd_media_uploads_failed_total >= 1);
  // The store still works.
  assert.equal((await upload(s, 1, bytes)).status, 201);
});

e2e('media: Content-Length over max_media_bytes is 413 before any body byte is sent', async (ctx) => {
  const s = await ctx.server({ 'max-media-bytes': 1 << 20 });
  const c = await tcp(ctx, s);
  await c.write(uploadHead(s, 1, (1 << 20) + 1));
  await c.waitResponses(1, 'the 413');
  assert.equal(c.responses()[0].status, 413);
  assert.equal(c.responses()[0].headers.connection, 'close');
  await c.waitClosed();
  assert.deepEqual(mediaFiles(s).tmp, []);
});

e2e('media: a bad or missing token is 401 before the body, with no 100 Continue', async (ctx) => {
  const s = await ctx.server();
  for (const tok of [null, 'not-a-jwt', signJwt('wrong secret', { sub: '1', exp: Math.floor(Date.now() / 1000) + 60 })]) {
    const c = await tcp(ctx, s);
    await c.write(uploadHead(s, tok, 5 << 20, 'Expect: 100-continue\r\n'));
    await c.waitResponses(1, 'the 401');
    const rs = c.responses();
    assert.equal(rs[0].status, 401, `token ${tok}`);
    assert.equal(rs[0].headers['www-authenticate'], 'Bearer realm="chatd"');
    assert.equal(rs[0].json.error.name, 'unauthorized');
    assert.equal(rs.length, 1, 'no 100 Continue before the 401');
    await c.waitClosed();
  }
  const m = await metrics(s);
  assert.equal(m.chatd_media_uploads_active, 0);
  assert.deepEqual(mediaFiles(s), { tmp: [], objects: [] });
});

e2e('media: Expect: 100-continue gets 100 Continue once accepted, then the body', async (ctx) => {
  const s = await ctx.server();
  const bytes = crypto.randomBytes(70000);
  const c = await tcp(ctx, s);
  await c.write(uploadHead(s, 2, bytes.length, 'Expect: 100-continue\r\n'));
  await until(() => c.responses().length >= 1, '100 Continue');
  assert.equal(c.responses()[0].status, 100);
  await c.write(bytes);
  await c.waitResponses(1, 'the 201');
  const rs = c.responses();
  assert.deepEqual(rs.map((x) => x.status), [100, 201]);
  assert.equal(rs[1].json.media_id, sha256(bytes));
});

e2e('media: pipelined requests are answered in order around an upload', async (ctx) => {
  const s = await ctx.server({ 'log-level': 'debug' });
  const conv = await createConv(s, 1, 'group', [2], 'pipe');
  const bytes = crypto.randomBytes(300000);
  const tok = s.token(1);
  const msg = JSON.stringify({ body: 'before the upload', client_msg_id: 'pipe-1' });
  // A message send (answered only once durable: it waits for the engine),
  // then the upload, then a GET, all in one write: the upload must wait for
  // the send's answer, and the GET for the upload's.
  const reqs = Buffer.concat([
    Buffer.from(`POST /api/v1/conversations/${conv.conv_id}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(msg)}\r\n\r\n${msg}`),
    Buffer.from(uploadHead(s, 1, bytes.length)), bytes,
    Buffer.from(`GET /api/v1/conversations/${conv.conv_id}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\n\r\n`),
    Buffer.from(uploadHead(s, 1, 5)), Buffer.from('hello'),
  ]);
  const c = await tcp(ctx, s);
  await c.write(reqs);
  await c.waitResponses(4, 'four answers');
  const rs = c.responses();
  assert.deepEqual(rs.map((x) => x.status), [201, 201, 200, 201], rs.map((x) => x.body.toString().slice(0, 120)).join('\n'));
  assert.ok(rs[0].json.msg_id > 0, 'the send answer first');
  assert.equal(rs[1].json.media_id, sha256(bytes), 'the upload answer second');
  assert.equal(rs[2].json.messages.at(-1).body, 'before the upload', 'the GET third, seeing the send');
  assert.equal(rs[3].json.media_id, sha256(Buffer.from('hello')));  // The upload's head arrived while the send waited for the engine: reading
  // paused until the send was answered (conn_http_resume), rather than
  // answering the upload first.
  assert.match(s.stderrText, /request waits for the answers owed before it/);
});

e2e('media: identical uploads are stored once (dedup) and both uploaders may mint', async (ctx) => {
  const s = await ctx.server();
  const bytes = crypto.randomBytes(50000);
  const a = await upload(s, 1, bytes, 'image/png');
  const b = await upload(s, 2, bytes, 'image/jpeg');
  assert.equal(a.status, 201);
  assert.equal(b.status, 201);
  assert.equal(a.json.media_id, b.json.media_id);
  assert.equal(b.json.content_type, 'image/png', 'the first upload\'s content type is kept');
  const f = mediaFiles(s);
  const id = a.json.media_id;
  assert.deepEqual(f.objects.sort(), [`${id.slice(0, 2)}/${id}`, `${id.slice(0, 2)}/${id}.meta`]);
  assert.deepEqual(f.tmp, []);
  const meta = fs.readFileSync(path.join(s.dataDir, 'media', id.slice(0, 2), `${id}.meta`), 'utf8');
  assert.match(meta, /uploader: 1\n/);
  assert.match(meta, /uploader: 2\n/);
  for (const uid of [1, 2]) {
    assert.equal((await api(s, 'GET', `/api/v1/media/${id}/url`, { token: s.token(uid) })).status, 200);
  }
});

function chunked(parts) {
  return Buffer.concat([...parts.flatMap((p) => [Buffer.from(`${p.length.toString(16)}\r\n`), p, Buffer.from('\r\n')]),
    Buffer.from('0\r\n\r\n')]);
}

e2e('media: chunked uploads are decoded as they stream; bad framing is 400, too large 413, nothing left behind', async (ctx) => {
  const s = await ctx.server({ 'max-media-bytes': 100000 });
  const bytes = crypto.randomBytes(90000);
  // Through node:http (chunked when no Content-Length is set), in pieces.
  const res = await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: s.port, method: 'POST', path: '/api/v1/media', agent: false,
      headers: { Authorization: `Bearer ${s.token(4)}`, 'Content-Type': 'text/plain' } }, (r) => {
      const chunks = [];
      r.on('data', (d) => chunks.push(d));
      r.on('end', () => resolve({ status: r.statusCode, json: JSON.parse(Buffer.concat(chunks).toString()) }));
    });
    req.on('error', reject);
    (async () => {
      for (let off = 0; off < bytes.length; off += 7000) { req.write(bytes.subarray(off, off + 7000)); await delay(2); }
      req.end();
    })();
  });
  assert.equal(res.status, 201, JSON.stringify(res.json));
  assert.equal(res.json.media_id, sha256(bytes));
  assert.equal(res.json.size, bytes.length);
  assert.equal(res.json.content_type, 'text/plain');

  // Raw: extensions and trailers are accepted and ignored; a keep-alive GET follows.
  const c = await tcp(ctx, s);
  const small = Buffer.from('chunk one;chunk two');
  await c.write(Buffer.concat([Buffer.from(uploadHead(s, 4, null)),
    Buffer.from('9;name=v\r\nchunk one\r\nA\r\n;chunk two\r\n0\r\nX-Trailer: 1\r\n\r\n'),
    Buffer.from('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')]));
  await c.waitResponses(2, 'upload + GET');
  assert.deepEqual(c.responses().map((x) => x.status), [201, 200]);
  assert.equal(c.responses()[0].json.media_id, sha256(small));

  // Malformed framing: 400, temp removed.
  const bad = await tcp(ctx, s);
  await bad.write(Buffer.concat([Buffer.from(uploadHead(s, 4, null)), Buffer.from('5\r\nabcde\r\nzz\r\n')]));
  await bad.waitResponses(1, 'the 400');
  assert.equal(bad.responses()[0].status, 400);
  await bad.waitClosed();

  // Over max_media_bytes while streaming: 413, temp removed.
  const big = await tcp(ctx, s);
  await big.write(Buffer.from(uploadHead(s, 4, null)));
  await big.write(chunked([crypto.randomBytes(60000), crypto.randomBytes(60000)]));
  await big.waitResponses(1, 'the 413');
  assert.equal(big.responses()[0].status, 413);
  await big.waitClosed();
  await until(async () => (await metrics(s)).chatd_media_uploads_active === 0, 'no upload active');
  assert.deepEqual(mediaFiles(s).tmp, []);
  assert.equal(mediaFiles(s).objects.length, 4, 'the two good uploads and their .meta only');

  // Chunked on a route that buffers its body: 411.
  const other = await tcp(ctx, s);
  await other.write(`POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`);
  await other.waitResponses(1, 'the 411');
  assert.equal(other.responses()[0].status, 411);
});

e2e('media: an upload that stops sending is dropped after media_idle_timeout_ms (408), temp removed', async (ctx) => {
  const s = await ctx.server({ 'media-idle-timeout-ms': 1000 });
  const c = await tcp(ctx, s);
  await c.write(uploadHead(s, 1, 100000));
  await c.write(crypto.randomBytes(40000));
  await until(() => mediaFiles(s).tmp.length === 1, 'the temp file');
  await c.waitResponses(1, 'the 408');
  assert.equal(c.responses()[0].status, 408);
  await c.waitClosed();
  assert.deepEqual(mediaFiles(s), { tmp: [], objects: [] });
  assert.equal((await metrics(s)).chatd_media_uploads_active, 0);
});
