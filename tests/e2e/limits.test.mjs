// The limits: body size (Error 4), WebSocket message size (close 1009),
// messages per second per user and frames per second per connection
// (Error 5), pending output per connection (slow consumer: close 4008).
import assert from 'node:assert/strict';
import { e2e, api, createConv, metrics, ChatClient, decodeServer, encodeClient, assertDense, WAIT_MS } from './lib/harness.mjs';

e2e('max_body_bytes: a body one byte over is Error 4 (bytes, not characters); the connection stays usable', async (ctx) => {
  const s = await ctx.server({ 'max-body-bytes': 1000, 'max-ws-message-bytes': 4096 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const a = await ctx.connect(s, 1);
  assert.equal((await a.sendMsg(conv, 'x'.repeat(1000), 'exact')).msgId, 1, 'exactly max_body_bytes is fine');
  await assert.rejects(a.sendMsg(conv, 'x'.repeat(1001), 'over'), (e) => e.code === 4, 'one byte over: Error 4 with its client_msg_id');
  assert.equal((await a.sendMsg(conv, 'é'.repeat(500), 'utf8-exact')).msgId, 2, '500 two-byte characters = 1000 bytes');
  await assert.rejects(a.sendMsg(conv, 'é'.repeat(501), 'utf8-over'), (e) => e.code === 4, '501 two-byte characters');
  await assert.rejects(a.sendMsg(conv, 'x', 'media-over', { mediaUrl: 'https://x/' + 'a'.repeat(2040) }), (e) => e.code === 4, 'media_url over 2048 bytes');
  assert.equal((await a.sendMsg(conv, 'x', 'media-ok', { mediaUrl: 'https://x/' + 'a'.repeat(2038) })).msgId, 3, 'media_url of 2048 bytes');
  await a.barrier();
  assert.equal(a.closeInfo, null, 'still open');
  const r = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(1), body: { body: 'y'.repeat(1001), client_msg_id: 'rest-over' } });
  assert.equal(r.status, 413, r.text);
  assert.equal(r.json?.error?.code, 4, r.text);
  const m = await metrics(s);
  assert.ok(m['chatd_errors_total{code="too_large"}'] >= 4, `too_large counted: ${m['chatd_errors_total{code="too_large"}']}`);
});

e2e('max_ws_message_bytes: a bigger message is closed with 1009, also when fragmented; fragments within it work', async (ctx) => {
  const s = await ctx.server({ 'max-body-bytes': 1000, 'max-ws-message-bytes': 4096 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;

  // Fragmentation within the limit: one Send in three frames.
  const a = await ctx.connect(s, 1);
  const bytes = encodeClient({ send: { convId: conv, body: 'in three pieces', clientMsgId: 'frag' } });
  const cut = [bytes.subarray(0, 5), bytes.subarray(5, 12), bytes.subarray(12)];
  a.sendRaw(cut[0], { fin: false });
  a.ws.ping(); // a control frame between fragments is allowed
  a.sendRaw(cut[1], { fin: false });
  a.sendRaw(cut[2], { fin: true });
  const ack = await a.nextOf('ack');
  assert.deepEqual([ack.clientMsgId, ack.msgId], ['frag', 1]);

  // One frame over the limit.
  const b = await ctx.connect(s, 1);
  b.sendRaw(Buffer.alloc(5000, 1));
  assert.equal((await b.waitClose()).code, 1009);

  // Three fragments, each under the limit, 6000 bytes together.
  const c = await ctx.connect(s, 1);
  c.sendRaw(Buffer.alloc(2000, 1), { fin: false });
  c.sendRaw(Buffer.alloc(2000, 1), { fin: false });
  c.sendRaw(Buffer.alloc(2000, 1), { fin: true });
  assert.equal((await c.waitClose()).code, 1009);

  // Before Hello too.
  const d = await ctx.open(s);
  d.sendRaw(Buffer.alloc(8192, 1));
  assert.equal((await d.waitClose()).code, 1009);

  // The others are not affected.
  await a.barrier();
  assert.equal((await a.sendMsg(conv, 'still here', 'after')).msgId, 2);
});

e2e('user_msgs_per_sec: over the rate a Send gets Error 5, on every device of the user; it recovers', async (ctx) => {
  // A burst of 5, refilled at 1 a second: slow enough that the checks below
  // do not race the refill even on a loaded machine.
  const s = await ctx.server({ 'user-msgs-per-sec': 1, 'user-msgs-burst': 5 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const a = await ctx.connect(s, 1);
  const a2 = await ctx.connect(s, 1, 'second');
  const b = await ctx.connect(s, 2);
  for (let i = 0; i < 12; i++) a.send({ send: { convId: conv, body: `m${i}`, clientMsgId: `m${i}` } });
  const acked = [];
  const limited = [];
  while (acked.length + limited.length < 12) {
    const f = await a.next((x) => x.kind === 'ack' || x.kind === 'error');
    if (f.kind === 'ack') acked.push(f.ack.clientMsgId);
    else {
      assert.equal(f.error.code, 5, `Error ${f.error.code} ${f.error.message}`);
      assert.ok(f.error.clientMsgId, 'the rate-limited Error names the client_msg_id');
      limited.push(f.error.clientMsgId);
    }
  }
  assert.ok(acked.length >= 5 && acked.length <= 6, `a burst of 5 (+ refill): ${acked.length} acked`);
  assert.deepEqual(acked, ['m0', 'm1', 'm2', 'm3', 'm4', 'm5'].slice(0, acked.length), 'the first ones pass');
  // The bucket is the user's, not the connection's.
  await assert.rejects(a2.sendMsg(conv, 'from the other device', 'other-dev'), (e) => e.code === 5, 'the second device shares the limit');
  // Another user is not limited.
  assert.ok((await b.sendMsg(conv, 'b is fine', 'b1')).msgId > 0);
  const r = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(1), body: { body: 'rest', client_msg_id: 'rest-1' } });
  assert.equal(r.status, 429, `REST over the rate: ${r.text}`);
  // After a second the bucket has refilled; a refused client_msg_id can be
  // sent again (refused sends keep no key).
  await new Promise((res) => setTimeout(res, 1100));
  const again = await a.sendMsg(conv, `m${acked.length}`, limited[0]);
  assert.ok(again.msgId > 0, 'sending again after the refill works');
  const hist = await b.syncAll(conv);
  assert.equal(hist.messages.length, acked.length + 2, 'refused sends stored nothing');
});

e2e('conn_frames_per_sec: frames over the rate get Error 5, the connection stays; it recovers', async (ctx) => {
  const s = await ctx.server({ 'conn-frames-per-sec': 5, 'conn-frames-burst': 10 });
  const a = await ctx.connect(s, 1); // Hello took one token
  const nonces = Array.from({ length: 25 }, (_, i) => 1000 + i);
  for (const n of nonces) a.send({ ping: { nonce: n } });
  let pongs = 0, limited = 0;
  while (pongs + limited < nonces.length) {
    const f = await a.next((x) => x.kind === 'pong' || x.kind === 'error');
    if (f.kind === 'pong') pongs++;
    else { assert.equal(f.error.code, 5, f.error.message); limited++; }
  }
  assert.ok(pongs >= 9 && pongs <= 11, `burst 10 minus Hello (+ refill): ${pongs} answered`);
  assert.equal(limited, nonces.length - pongs);
  assert.equal(a.closeInfo, null, 'rate limiting does not close the connection');
  const other = await ctx.connect(s, 2);
  await other.barrier(); // another connection has its own bucket
  // A second later the bucket has refilled.
  await new Promise((res) => setTimeout(res, 1100));
  a.send({ ping: { nonce: 7 } });
  const f = await a.next((x) => x.kind === 'pong' || x.kind === 'error');
  assert.equal(f.kind, 'pong', `after a second: ${JSON.stringify(f)}`);
});

e2e('max_pending_out_bytes: a client that never reads is cut off (4008), others are not; it resyncs', async (ctx) => {
  const LIMIT = 1 << 20;
  const s = await ctx.server({ 'max-pending-out-bytes': LIMIT });
  const conv = (await createConv(s, 1, 'group', [2, 3], 'flood')).conv_id;
  const a = await ctx.connect(s, 1, 'sender');
  const b = await ctx.connect(s, 2, 'reader');
  // The slow one: a raw socket that says Hello and then stops reading.
  const slow = await ctx.raw(s);
  slow.sendClient({ hello: { token: s.token(3), deviceId: 'slow' } });
  const w = await slow.readFrame();
  assert.equal(decodeServer(w.payload).kind, 'welcome');
  slow.sock.pause();

  // Flood in rounds of 32 x 16 KiB (half the limit, so that a reader that
  // keeps up never has that much queued) until the server reports the slow
  // consumer; bounded at 30 rounds (15 MiB).
  const body = 'z'.repeat(16 * 1024);
  const PER_ROUND = 32;
  let sent = 0;
  const bSeen = [];
  for (let round = 0; round < 30; round++) {
    for (let i = 0; i < PER_ROUND; i++) a.send({ send: { convId: conv, body, clientMsgId: `f${sent + i}` } });
    for (let i = 0; i < PER_ROUND; i++) await a.nextOf('ack', () => true, { what: `Ack ${sent + i + 1}` });
    sent += PER_ROUND;
    while (bSeen.length < sent) bSeen.push((await b.nextOf('msg')).msgId);
    if ((await metrics(s)).chatd_slow_consumer_disconnects_total >= 1) break;
  }
  const m = await metrics(s);
  assert.equal(m.chatd_slow_consumer_disconnects_total, 1, `the slow consumer (only) was disconnected after ${sent} messages of 16 KiB`);
  assertDense(bSeen, 1, sent, 'the reading member got everything, in order');

  // What the slow client gets when it reads again: whole frames in order,
  // then close 4008 (or the socket ends, if the close frame could not be
  // written before the server gave up).
  slow.sock.resume();
  const end = await slow.readUntilClose(WAIT_MS);
  let lastId = 0;
  for (const f of end.frames) {
    assert.equal(f.opcode, 2, 'binary frames only');
    const sf = decodeServer(f.payload);
    if (sf.kind === 'msg') {
      assert.ok(sf.msg.msgId > lastId, `frames stay whole and in order: ${sf.msg.msgId} after ${lastId}`);
      lastId = sf.msg.msgId;
    }
  }
  assert.ok(end.code === 4008 || end.eof, `close 4008 or the end of the stream, got ${JSON.stringify({ code: end.code, eof: end.eof })}`);
  assert.ok(lastId < sent, `the slow client did not get everything (${lastId} of ${sent})`);

  // It reconnects and catches up with Sync (in pages that fit the limit:
  // see the Sync regression test below).
  const again = await ctx.track(await ChatClient.connect(s, s.token(3), 'slow-again'));
  const { messages } = await again.syncAll(conv, lastId, 40);
  assertDense(messages.map((x) => x.msgId), lastId + 1, sent, 'resync after 4008');
  // The sender and the reader were never disturbed.
  assert.equal(a.closeInfo, null);
  assert.equal(b.closeInfo, null);
});

// Regression: the pending-output check runs when a frame is queued, before
// the server has tried to write anything in that event round, so a burst of
// committed messages larger than max_pending_out_bytes cuts off a member
// that reads everything at once (with the defaults: 4 MiB, e.g. 64 messages
// of 64 KiB committed together in a busy group disconnect every member).
e2e('a reader that keeps up is not cut off (4008) by a burst larger than max_pending_out_bytes', async (ctx) => {
  const s = await ctx.server({ 'max-pending-out-bytes': 65536 });
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const a = await ctx.connect(s, 1);
  const b = await ctx.connect(s, 2);
  const body = 'z'.repeat(16 * 1024);
  const N = 24; // 384 KiB: far less than what the loopback socket buffers take at once
  for (let i = 0; i < N; i++) a.send({ send: { convId: conv, body, clientMsgId: `burst-${i}` } });
  for (let i = 0; i < N; i++) await a.nextOf('ack');
  const got = [];
  try {
    while (got.length < N) got.push((await b.nextOf('msg')).msgId);
  } catch { /* closed: reported below */ }
  assert.equal(b.closeInfo, null, `a reader reading everything was closed ${JSON.stringify(b.closeInfo)} after ${got.length} of ${N} messages (16 KiB each, sent in one burst)`);
  assertDense(got, 1, N, 'the burst');
});

// Regression: a SyncBatch is one frame of up to `limit` messages whatever
// their size, and a frame larger than max_pending_out_bytes closes the
// connection as a slow consumer. With the defaults (4 MiB pending, 64 KiB
// bodies, Sync limit 100) a client catching up on a conversation of large
// messages is disconnected by its own default Sync, every time it retries.
e2e('Sync with the default limit over large messages is answered, not closed 4008 (defaults)', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const a = await ctx.connect(s, 1);
  const body = 'q'.repeat(60 * 1024);
  const N = 100;
  for (let i = 0; i < N; i += 10) {
    for (let k = i; k < i + 10; k++) a.send({ send: { convId: conv, body, clientMsgId: `big-${k}` } });
    for (let k = i; k < i + 10; k++) await a.nextOf('ack');
  }
  const b = await ctx.connect(s, 2);
  b.send({ sync: { convId: conv, afterMsgId: 0, limit: 0 } });
  let got = null;
  try {
    got = await b.nextOf('syncBatch');
  } catch { /* closed: reported below */ }
  assert.equal(b.closeInfo, null, `Sync (limit 0 = 100) of ${N} messages of 60 KiB closed the connection: ${JSON.stringify(b.closeInfo)}`);
  assert.ok(got && got.messages.length >= 1, 'a SyncBatch with messages');
  assertDense(got.messages.map((m) => m.msgId), 1, got.messages.length, 'the first page');
});

e2e('idle timeout: a silent session is pinged, then closed 1001; one that answers pings stays', async (ctx) => {
  const s = await ctx.server({ 'idle-timeout-ms': 1500, 'ping-interval-ms': 500 });
  const started = Date.now();
  // `ws` answers pings by itself; the raw socket never sends a thing.
  const alive = await ctx.connect(s, 1);
  const pinged = new Promise((res) => alive.ws.once('ping', res));
  const silent = await ctx.raw(s);
  silent.sendClient({ hello: { token: s.token(2), deviceId: 'silent' } });
  assert.equal(decodeServer((await silent.readFrame()).payload).kind, 'welcome');
  const end = await silent.readUntilClose(10000);
  const after = Date.now() - started;
  assert.ok(end.frames.some((f) => f.opcode === 9), 'the silent session was pinged first');
  assert.equal(end.code, 1001, `closed as idle (${JSON.stringify(end.code)})`);
  assert.ok(after >= 1400, `closed after ${after} ms, idle_timeout_ms is 1500`);
  await pinged;
  await alive.barrier();
  assert.equal(alive.closeInfo, null, 'the session answering pings is still open');
});
