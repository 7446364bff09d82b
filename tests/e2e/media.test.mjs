// Media: uploads into the content-addressed store, signed download URLs,
// Range requests, minting fresh URLs (members of a conversation where the
// media was sent, and uploaders), limits, and persistence across restarts.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { e2e, api, createConv } from './lib/harness.mjs';

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
