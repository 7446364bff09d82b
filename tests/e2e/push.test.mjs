// Push notifications (server/push.c, docs/push.md) against a real HTTP(S)
// receiver standing in for a Matrix push gateway (lib/push_receiver.mjs):
// who gets a notification and what it says, coalescing, retries with
// backoff, timeouts, giving up, rejected pushkeys unregistered durably, the
// bounded queue, the device API and its file surviving restarts, https.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { e2e, api, createConv, metrics, until } from './lib/harness.mjs';
import { PushReceiver, NOTIFY_PATH } from './lib/push_receiver.mjs';

const APP = 'org.example.chat';
const DEVICES = '/api/v1/push/devices';

async function receiver(ctx, opts) {
  const rx = await PushReceiver.start(opts);
  ctx.t.after(() => rx.close());
  return rx;
}

/** chatd pushing to rx, with short windows so tests run quickly. */
function pushServer(ctx, rx, flags = {}) {
  return ctx.server({
    'push-url': rx.url, 'push-coalesce-ms': 50, 'push-backoff-ms': 50, ...flags,
  });
}

async function register(s, uid, pushkey, { app = APP, expect = 201 } = {}) {
  const r = await api(s, 'POST', DEVICES, { token: s.token(uid), body: { app_id: app, pushkey, kind: 'http' } });
  assert.equal(r.status, expect, `register ${pushkey} for ${uid}: ${r.status} ${r.text}`);
  return r.json;
}

async function listDevices(s, uid) {
  const r = await api(s, 'GET', DEVICES, { token: s.token(uid) });
  assert.equal(r.status, 200, r.text);
  return r.json.devices;
}

async function send(s, uid, conv, body) {
  const r = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(uid), body: { body } });
  assert.equal(r.status, 201, `send as ${uid}: ${r.status} ${r.text}`);
  return r.json;
}

const m = async (s, name) => (await metrics(s))[`chatd_push_${name}`];

/** Wait until nothing is queued or in flight; then every queued
 * notification has ended as exactly one of sent, failed, dropped, skipped. */
async function drained(s) {
  await until(async () => (await m(s, 'queue_depth')) === 0, 'the push queue to drain');
  const x = await metrics(s), v = (k) => x[`chatd_push_${k}_total`];
  assert.equal(v('queued'), v('sent') + v('failed') + v('dropped') + v('skipped'),
    `push accounting: ${JSON.stringify(Object.fromEntries(Object.entries(x).filter(([k]) => k.startsWith('chatd_push'))))}`);
}

e2e('push: an offline member gets one notification with room, sender, unread and its devices; no body by default', async (ctx) => {
  const rx = await receiver(ctx);
  const s = await pushServer(ctx, rx);
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const dev = await register(s, 2, 'pk-b');
  assert.deepEqual(Object.keys(dev).sort(), ['app_id', 'kind', 'pushkey', 'pushkey_ts']);
  await register(s, 1, 'pk-a'); // the sender's own device gets nothing for its own message

  const sent = await send(s, 1, conv, 'a secret text');
  const [req] = await rx.waitFor(1);
  assert.equal(req.method, 'POST');
  assert.equal(req.url, NOTIFY_PATH);
  assert.match(req.headers['content-type'], /^application\/json/);
  assert.equal(req.headers.host, `127.0.0.1:${rx.port}`);
  const n = req.json.notification;
  assert.equal(n.event_id, `${conv}:${sent.msg_id}`);
  assert.equal(n.room_id, String(conv));
  assert.equal(n.sender, '1');
  assert.equal(n.type, 'm.room.message');
  assert.deepEqual(n.counts, { unread: 1 });
  assert.equal(n.content, undefined, 'no content unless push_include_body');
  assert.ok(!req.text.includes('secret'), 'the message text is not sent');
  assert.deepEqual(n.devices, [{ app_id: APP, pushkey: 'pk-b', pushkey_ts: dev.pushkey_ts, data: {}, tweaks: {} }]);
  assert.ok(Math.abs(dev.pushkey_ts - Date.now() / 1000) < 120, 'pushkey_ts is in seconds');

  await drained(s);
  assert.equal(rx.requests.length, 1, 'the sender is not notified of its own message');
  assert.equal(await m(s, 'queued_total'), 1);
  assert.equal(await m(s, 'sent_total'), 1);
  assert.equal(await m(s, 'failed_total'), 0);
  assert.equal(await m(s, 'devices'), 2);
});

e2e('push: a burst in one conversation is coalesced into one notification with the latest unread count; one per conversation', async (ctx) => {
  const rx = await receiver(ctx);
  const s = await pushServer(ctx, rx, { 'push-coalesce-ms': 600 });
  const c1 = (await createConv(s, 1, 'direct', [2])).conv_id;
  const c2 = (await createConv(s, 1, 'group', [2, 3], 'g')).conv_id;
  await register(s, 2, 'pk-b');

  const acks = await Promise.all([1, 2, 3, 4, 5].map((i) => send(s, 1, c1, `burst ${i}`)));
  await Promise.all([send(s, 3, c2, 'x'), send(s, 1, c2, 'y')]);
  const last1 = Math.max(...acks.map((a) => a.msg_id));
  await rx.waitFor(1, (r) => r.json.notification.room_id === String(c1) && r.json.notification.counts.unread === 5);
  await rx.waitFor(1, (r) => r.json.notification.room_id === String(c2) && r.json.notification.counts.unread === 2);
  await drained(s);
  const per = (c) => rx.notifications.filter((n) => n.room_id === String(c));
  assert.ok(per(c1).length <= 2, `a burst of 5 gave ${per(c1).length} notifications`);
  assert.ok(per(c2).length <= 2, `a burst of 2 gave ${per(c2).length} notifications`);
  const final = per(c1).at(-1);
  assert.equal(final.event_id, `${c1}:${last1}`, 'the notification names the latest message');
  assert.deepEqual(final.counts, { unread: 5 });
  assert.ok((await m(s, 'coalesced_total')) >= 4, 'messages were folded into queued notifications');
});

e2e('push: nobody is notified while online; AWAY devices only are notified; coming back or reading meanwhile cancels', async (ctx) => {
  const rx = await receiver(ctx);
  const s = await pushServer(ctx, rx, { 'push-coalesce-ms': 1500 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  await register(s, 2, 'pk-b');
  const b = await ctx.connect(s, 2, 'b-phone');

  // Online: delivered live, no push. The decision is made when the message
  // commits, before its ack, so the counter is already final here.
  await send(s, 1, conv, 'while online');
  assert.equal(await m(s, 'queued_total'), 0, 'an online member is not queued for push');

  // AWAY on its only device: notified, with every message it has not read.
  b.send({ presence: { state: 'AWAY' } });
  await b.barrier();
  const sent2 = await send(s, 1, conv, 'while away');
  assert.equal(await m(s, 'queued_total'), 1);
  const [req] = await rx.waitFor(1);
  assert.equal(req.json.notification.event_id, `${conv}:${sent2.msg_id}`);
  assert.deepEqual(req.json.notification.counts, { unread: 2 });

  // AWAY, a message, then ONLINE again within the window: skipped.
  await send(s, 1, conv, 'then back');
  b.send({ presence: { state: 'ONLINE' } });
  await b.barrier();
  await until(async () => (await m(s, 'skipped_total')) === 1, 'the notification to be skipped', { every: 50 });
  // AWAY again: a message, then read through REST within the window: skipped.
  b.send({ presence: { state: 'AWAY' } });
  await b.barrier();
  const sent4 = await send(s, 1, conv, 'then read');
  const rd = await api(s, 'POST', `/api/v1/conversations/${conv}/read`,
    { token: s.token(2), body: { last_read_msg_id: sent4.msg_id } });
  assert.equal(rd.status, 204);
  await until(async () => (await m(s, 'skipped_total')) === 2, 'the read notification to be skipped', { every: 50 });
  // Offline (the connection closed): notified again.
  await b.close();
  await send(s, 1, conv, 'while offline');
  await rx.waitFor(2);
  await drained(s);
  assert.equal(rx.requests.length, 2);
  assert.deepEqual(rx.notifications[1].counts, { unread: 1 });
});

e2e('push: 503 twice, then 200: the notification arrives on the third attempt, with backoff between attempts', async (ctx) => {
  const rx = await receiver(ctx, { respond: (rec, n) => (n <= 2 ? { status: 503 } : { status: 200, body: { rejected: [] } }) });
  const s = await pushServer(ctx, rx, { 'push-backoff-ms': 100 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  await register(s, 2, 'pk-b');
  const sent = await send(s, 1, conv, 'hi');
  const reqs = await rx.waitFor(3);
  await drained(s);
  assert.equal(rx.requests.length, 3, 'exactly three attempts');
  for (const r of reqs) assert.equal(r.json.notification.event_id, `${conv}:${sent.msg_id}`);
  // Equal jitter: after the first failure 50..100 ms, after the second 100..200 ms.
  const gap1 = reqs[1].at - reqs[0].at, gap2 = reqs[2].at - reqs[1].at;
  assert.ok(gap1 >= 40, `first retry after ${gap1} ms`);
  assert.ok(gap2 >= 90, `second retry after ${gap2} ms`);
  assert.equal(await m(s, 'retried_total'), 2);
  assert.equal(await m(s, 'sent_total'), 1);
  assert.equal(await m(s, 'failed_total'), 0);
});

e2e('push: a gateway that never answers times out, a reset connection is retried too', async (ctx) => {
  const rx = await receiver(ctx, { respond: (rec, n) => (n === 1 ? 'hang' : n === 2 ? 'reset' : { status: 200, body: {} }) });
  const s = await pushServer(ctx, rx, { 'push-timeout-ms': 400 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  await register(s, 2, 'pk-b');
  await send(s, 1, conv, 'hi');
  const reqs = await rx.waitFor(3);
  assert.ok(reqs[1].at - reqs[0].at >= 350, `the timeout fired after ${reqs[1].at - reqs[0].at} ms`);
  await until(async () => (await m(s, 'sent_total')) === 1, 'sent_total 1');
  assert.equal(await m(s, 'retried_total'), 2);
  await drained(s);
});

e2e('push: out of attempts on 5xx, and a 4xx is not retried; both count as failed', async (ctx) => {
  const rx = await receiver(ctx, { respond: (rec, n) => (n <= 3 ? { status: 500 } : { status: 400, body: { error: 'bad' } }) });
  const s = await pushServer(ctx, rx, { 'push-max-attempts': 3 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  await register(s, 2, 'pk-b');
  await send(s, 1, conv, 'one');
  await until(async () => (await m(s, 'failed_total')) === 1, 'the first notification to be given up');
  await rx.waitFor(3); // recorded before answering, but a loaded machine may delay the log
  assert.equal(rx.requests.length, 3, 'push_max_attempts attempts');
  await send(s, 1, conv, 'two');
  await until(async () => (await m(s, 'failed_total')) === 2, 'the 400 to be given up');
  await drained(s);
  assert.equal(rx.requests.length, 4, 'a 400 is not retried');
  assert.equal(await m(s, 'retried_total'), 2);
  assert.equal(await m(s, 'sent_total'), 0);
});

e2e('push: a pushkey the gateway rejects is unregistered, also after a restart; the others stay', async (ctx) => {
  const rx = await receiver(ctx, {
    respond: (rec) => ({ status: 200, body: { rejected: rec.json.notification.devices.some((d) => d.pushkey === 'pk-dead') ? ['pk-dead'] : [] } }),
  });
  const s = await pushServer(ctx, rx);
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  await register(s, 2, 'pk-dead');
  await register(s, 2, 'pk-live');
  await send(s, 1, conv, 'hi');
  const [req] = await rx.waitFor(1);
  assert.deepEqual(req.json.notification.devices.map((d) => d.pushkey).sort(), ['pk-dead', 'pk-live']);
  await until(async () => (await listDevices(s, 2)).length === 1, 'the rejected device to be gone');
  assert.deepEqual((await listDevices(s, 2)).map((d) => d.pushkey), ['pk-live']);
  assert.equal(await m(s, 'rejected_total'), 1);

  await s.restart();
  assert.deepEqual((await listDevices(s, 2)).map((d) => d.pushkey), ['pk-live'], 'still gone after a restart');
  assert.equal(await m(s, 'devices'), 1);
  await send(s, 1, conv, 'again');
  const [, req2] = await rx.waitFor(2);
  assert.deepEqual(req2.json.notification.devices.map((d) => d.pushkey), ['pk-live']);
  assert.deepEqual(req2.json.notification.counts, { unread: 2 });
  await drained(s);
});

e2e('push: with push_include_body the text is in content, cut to 1024 bytes on a UTF-8 boundary', async (ctx) => {
  const rx = await receiver(ctx);
  const s = await pushServer(ctx, rx, { 'push-include-body': 'true' });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  await register(s, 2, 'pk-b');
  await send(s, 1, conv, 'hello there');
  const [req] = await rx.waitFor(1);
  assert.deepEqual(req.json.notification.content, { msgtype: 'm.text', body: 'hello there' });
  await drained(s);
  const long = '€'.repeat(2000); // 3 bytes each
  await send(s, 1, conv, long);
  const [, req2] = await rx.waitFor(2);
  const body = req2.json.notification.content.body;
  assert.equal(Buffer.byteLength(body), 1023);
  assert.ok(long.startsWith(body));
});

e2e('push: the queue is bounded; when full the oldest notification is dropped and counted', async (ctx) => {
  const rx = await receiver(ctx);
  const s = await pushServer(ctx, rx, { 'push-queue-max': 16, 'push-coalesce-ms': 3000 });
  await register(s, 2, 'pk-b');
  const convs = [];
  for (let i = 0; i < 20; i++) convs.push((await createConv(s, 1, 'group', [2], `g${i}`)).conv_id);
  for (const c of convs) await send(s, 1, c, 'hi');
  assert.equal(await m(s, 'queued_total'), 20);
  assert.equal(await m(s, 'dropped_total'), 4);
  assert.equal(await m(s, 'queue_depth'), 16);
  await rx.waitFor(16);
  await drained(s);
  assert.deepEqual(rx.notifications.map((n) => n.room_id).sort(), convs.slice(4).map(String).sort(),
    'the 4 oldest were dropped');
});

e2e('push: a gateway that hangs and a full queue never delay acks or live delivery; shutdown with requests in flight is clean', async (ctx) => {
  const rx = await receiver(ctx, { respond: () => 'hang' });
  const s = await pushServer(ctx, rx, { 'push-queue-max': 16, 'push-coalesce-ms': 0, 'push-timeout-ms': 60000 });
  const members = [];
  for (let u = 100; u < 140; u++) members.push(u);
  const conv = (await createConv(s, 1, 'group', [2, ...members], 'big')).conv_id;
  for (const u of members) await register(s, u, `pk-${u}`);
  const live = await ctx.connect(s, 2, 'live');
  let slowest = 0;
  for (let i = 0; i < 30; i++) {
    const t0 = Date.now();
    await send(s, 1, conv, `m${i}`);
    slowest = Math.max(slowest, Date.now() - t0);
  }
  const got = [];
  while (got.length < 30) got.push(await live.nextOf('msg'));
  assert.deepEqual(got.map((x) => x.body), Array.from({ length: 30 }, (_, i) => `m${i}`));
  // Blocked behind the gateway, an ack would wait for push_timeout_ms (60 s).
  assert.ok(slowest < 5000, `the slowest ack took ${slowest} ms`);
  await rx.waitFor(4); // every connection slot holds a request that will not be answered
  assert.ok((await m(s, 'dropped_total')) > 0, 'the queue overflowed');
  assert.ok((await m(s, 'queue_depth')) <= 16);
  assert.equal(rx.requests.length, 4, 'no more than 4 requests in flight');
});

e2e('push: the device API — list, re-register, move, limits, delete by body or query, validation', async (ctx) => {
  const rx = await receiver(ctx);
  const s = await pushServer(ctx, rx, { 'push-devices-per-user': 2, 'push-devices-max': 3 });
  const tok = s.token(2);
  assert.deepEqual(await listDevices(s, 2), []);
  const d = await register(s, 2, 'k1');
  assert.deepEqual(d, { app_id: APP, pushkey: 'k1', kind: 'http', pushkey_ts: d.pushkey_ts });
  await register(s, 2, 'k1', { expect: 200 }); // already there
  const odd = 'a b/c+d&e=f?ü';
  await register(s, 2, odd);
  // Per-user limit, then the total.
  const over = await api(s, 'POST', DEVICES, { token: tok, body: { app_id: APP, pushkey: 'k3' } });
  assert.equal(over.status, 409, over.text);
  assert.match(over.json.error.message, /push_devices_per_user/);
  await register(s, 3, 'k4');
  const full = await api(s, 'POST', DEVICES, { token: s.token(3), body: { app_id: APP, pushkey: 'k5' } });
  assert.equal(full.status, 503, full.text);
  // A pushkey belongs to one user: registering it elsewhere moves it (allowed when full).
  await register(s, 3, 'k1');
  assert.deepEqual((await listDevices(s, 2)).map((x) => x.pushkey), [odd]);
  assert.deepEqual((await listDevices(s, 3)).map((x) => x.pushkey).sort(), ['k1', 'k4']);
  // Delete through the query (URL-encoded) and through a JSON body.
  const q = `?app_id=${encodeURIComponent(APP)}&pushkey=${encodeURIComponent(odd)}`;
  assert.equal((await api(s, 'DELETE', DEVICES + q, { token: tok })).status, 204);
  assert.equal((await api(s, 'DELETE', DEVICES + q, { token: tok })).status, 404);
  assert.equal((await api(s, 'DELETE', DEVICES, { token: s.token(3), body: { app_id: APP, pushkey: 'k4' } })).status, 204);
  assert.equal((await api(s, 'DELETE', DEVICES, { token: tok, body: { app_id: APP, pushkey: 'k1' } })).status, 404,
    "another user's device is not yours to delete");
  assert.deepEqual(await listDevices(s, 2), []);
  // Validation and the usual REST rules.
  const bad = [
    [{ app_id: APP }, /pushkey/],
    [{ app_id: APP, pushkey: 'k', kind: 'email' }, /kind/],
    [{ app_id: APP, pushkey: 'k', data: {} }, /unknown field "data"/],
    [{ app_id: 'x'.repeat(65), pushkey: 'k' }, /app_id/],
    [{ app_id: 'has space', pushkey: 'k' }, /app_id/],
    [{ app_id: APP, pushkey: 'k'.repeat(513) }, /pushkey/],
    [{ app_id: APP, pushkey: 'a\nb' }, /pushkey/],
    [{ app_id: APP, pushkey: 7 }, /pushkey/],
  ];
  for (const [body, re] of bad) {
    const r = await api(s, 'POST', DEVICES, { token: tok, body });
    assert.equal(r.status, 400, `${JSON.stringify(body).slice(0, 60)}: ${r.status}`);
    assert.match(r.json.error.message, re);
  }
  assert.equal((await api(s, 'DELETE', DEVICES, { token: tok })).status, 400, 'DELETE needs app_id and pushkey');
  assert.equal((await api(s, 'GET', DEVICES)).status, 401);
  const put = await api(s, 'PUT', DEVICES, { token: tok, body: {} });
  assert.equal(put.status, 405);
  assert.equal(put.headers.allow, 'GET, POST, DELETE');
  // Registrations survive a restart.
  await register(s, 2, 'k9');
  await s.restart();
  assert.deepEqual((await listDevices(s, 2)).map((x) => x.pushkey), ['k9']);
  assert.deepEqual((await listDevices(s, 3)).map((x) => x.pushkey), ['k1']);
});

e2e('push: a damaged registry file is kept aside as .bad and the server starts without registrations', async (ctx) => {
  const rx = await receiver(ctx);
  const s = await pushServer(ctx, rx);
  await register(s, 2, 'k1');
  await s.stop();
  const file = path.join(s.dataDir, 'push-devices.json');
  const good = fs.readFileSync(file, 'utf8');
  assert.equal(JSON.parse(good).version, 1);
  fs.writeFileSync(file, good.slice(0, good.length - 3)); // torn
  fs.writeFileSync(path.join(s.dataDir, 'tmp-push-devices.json'), '{"half'); // an interrupted write
  await s.start();
  assert.deepEqual(await listDevices(s, 2), []);
  assert.match(s.stderrText, /push-devices\.json is damaged/);
  assert.equal(fs.readFileSync(file + '.bad', 'utf8'), good.slice(0, good.length - 3));
  assert.ok(!fs.existsSync(path.join(s.dataDir, 'tmp-push-devices.json')), 'the stale tmp file is removed');
  await register(s, 2, 'k2');
  assert.deepEqual(JSON.parse(fs.readFileSync(file, 'utf8')).devices.map((x) => x.pushkey), ['k2']);
});

e2e('push: a bad push_url is refused at start-up, naming the setting', async (ctx) => {
  for (const url of ['ftp://127.0.0.1/x', 'http://', 'http://user@host/x', 'http://h:99999/x']) {
    await assert.rejects(ctx.server({ 'push-url': url }), /push_url/, url);
  }
});

function haveOpenssl() {
  try { execFileSync('openssl', ['version'], { stdio: 'ignore' }); return true; } catch { return false; }
}

e2e('push: https gateways: the certificate is verified (push_tls_ca), an untrusted one is never sent to', { skip: !haveOpenssl() && 'no openssl CLI' }, async (ctx) => {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'push-tls-'));
  ctx.t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const selfSigned = (name, san) => {
    const key = path.join(dir, `${name}-key.pem`), cert = path.join(dir, `${name}.pem`);
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=push-test',
      '-addext', `subjectAltName=${san}`], { stdio: 'ignore' });
    return [key, cert];
  };
  const [key, cert] = selfSigned('good', 'IP:127.0.0.1');
  const rx = await receiver(ctx, { tls: { key: fs.readFileSync(key), cert: fs.readFileSync(cert) } });
  const s = await pushServer(ctx, rx, { 'push-tls-ca': cert });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  await register(s, 2, 'pk-b');
  await send(s, 1, conv, 'one');
  await send(s, 1, conv, 'two');
  await rx.waitFor(1);
  await drained(s);
  await send(s, 1, conv, 'three'); // a fresh TLS connection per request
  const reqs = await rx.waitFor(2);
  assert.deepEqual(reqs.at(-1).json.notification.counts, { unread: 3 });
  assert.equal(await m(s, 'sent_total'), 2);
  assert.ok(rx.tlsHandshakes >= 2, `TLS handshakes: ${rx.tlsHandshakes}`);

  // The system's CA store does not trust this certificate: nothing is sent.
  const rx2 = await receiver(ctx, { tls: { key: fs.readFileSync(key), cert: fs.readFileSync(cert) } });
  const s2 = await pushServer(ctx, rx2, { 'push-max-attempts': 2 });
  const conv2 = (await createConv(s2, 1, 'direct', [2])).conv_id;
  await register(s2, 2, 'pk-b');
  await send(s2, 1, conv2, 'hi');
  await until(async () => (await m(s2, 'failed_total')) === 1, 'the untrusted gateway to be given up');
  assert.equal(rx2.requests.length, 0, 'no request reached a gateway with an untrusted certificate');
  await drained(s2);

  // A trusted certificate for another address: refused too.
  const [key3, cert3] = selfSigned('other', 'IP:127.0.0.2');
  const rx3 = await receiver(ctx, { tls: { key: fs.readFileSync(key3), cert: fs.readFileSync(cert3) } });
  const s3 = await pushServer(ctx, rx3, { 'push-max-attempts': 2, 'push-tls-ca': cert3 });
  const conv3 = (await createConv(s3, 1, 'direct', [2])).conv_id;
  await register(s3, 2, 'pk-b');
  await send(s3, 1, conv3, 'hi');
  await until(async () => (await m(s3, 'failed_total')) === 1, 'the misnamed gateway to be given up');
  assert.equal(rx3.requests.length, 0, 'no request reached a gateway whose certificate names another host');
});
