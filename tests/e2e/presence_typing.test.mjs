// Presence (ONLINE on the first device, OFFLINE with last_seen on the last,
// AWAY when the client reports it) and typing (relayed to the others, not to
// oneself, rate-limited, expiring after typing_ttl_ms).
import assert from 'node:assert/strict';
import { e2e, createConv } from './lib/harness.mjs';

/** Make sure everything the server queued for `watchers` because of what
 * `actor` sent so far has arrived. */
async function settle(actor, ...watchers) {
  await actor.barrier();
  for (const w of watchers) await w.barrier();
}

e2e('presence: ONLINE on the first device, AWAY when every device says so, OFFLINE with last_seen on the last', async (ctx) => {
  const s = await ctx.server();
  await createConv(s, 1, 'direct', [2]);
  await createConv(s, 4, 'direct', [1]); // 4 knows 1 but not 2
  const a = await ctx.connect(s, 1, 'a');
  const d = await ctx.connect(s, 4, 'd');
  await a.nextOf('presence', (p) => p.userId === 4); // d came online

  const b1 = await ctx.connect(s, 2, 'b1');
  const on = await a.nextOf('presence', (p) => p.userId === 2);
  assert.equal(on.state, 'ONLINE');
  // The newcomer learns who is online among its contacts.
  const aOnline = await b1.nextOf('presence', (p) => p.userId === 1, { what: "a's presence at b1" });
  assert.equal(aOnline.state, 'ONLINE');
  await settle(b1, d);
  assert.equal(d.take((f) => f.kind === 'presence' && f.presence.userId === 2).length, 0,
    "4 shares no conversation with 2: no presence of 2");

  // A second device: no change, no Presence.
  const b2 = await ctx.connect(s, 2, 'b2');
  await settle(b2, a);
  assert.equal(a.take('presence').length, 0, 'a second device changes nothing');

  // AWAY on one device of two: still ONLINE; on both: AWAY.
  b1.send({ presence: { state: 'AWAY' } });
  await settle(b1, a);
  assert.equal(a.take('presence').length, 0, 'one of two devices AWAY: still ONLINE');
  b2.send({ presence: { state: 'AWAY' } });
  assert.equal((await a.nextOf('presence', (p) => p.userId === 2)).state, 'AWAY');
  b2.send({ presence: { state: 'ONLINE' } });
  assert.equal((await a.nextOf('presence', (p) => p.userId === 2)).state, 'ONLINE');
  b2.send({ presence: { state: 'OFFLINE' } });
  assert.equal((await b2.nextOf('error')).code, 1, 'a client cannot report OFFLINE');

  // The last device leaving: OFFLINE with last_seen.
  await b1.close();
  await settle(b2, a);
  assert.equal(a.take('presence').length, 0, 'one device left: still there');
  const t0 = Date.now();
  await b2.close();
  const off = await a.nextOf('presence', (p) => p.userId === 2);
  assert.equal(off.state, 'OFFLINE');
  assert.ok(off.lastSeenMs >= t0 - 1000 && off.lastSeenMs <= Date.now() + 1000,
    `last_seen_ms ${off.lastSeenMs} is when the last device left (${t0})`);

  // A single device reporting AWAY is AWAY.
  const b3 = await ctx.connect(s, 2, 'b3');
  assert.equal((await a.nextOf('presence', (p) => p.userId === 2)).state, 'ONLINE');
  b3.send({ presence: { state: 'AWAY' } });
  assert.equal((await a.nextOf('presence', (p) => p.userId === 2)).state, 'AWAY');
  // Dropping the TCP connection without a close handshake also ends it.
  await b3.terminate();
  assert.equal((await a.nextOf('presence', (p) => p.userId === 2)).state, 'OFFLINE');
});

e2e('typing: relayed to the others, not to oneself; expires after typing_ttl_ms; stops on disconnect', async (ctx) => {
  const TTL = 600;
  const s = await ctx.server({ 'typing-ttl-ms': TTL });
  const conv = (await createConv(s, 1, 'group', [2, 3], 't')).conv_id;
  const a = await ctx.connect(s, 1, 'a');
  const a2 = await ctx.connect(s, 1, 'a2');
  const b = await ctx.connect(s, 2, 'b');
  const c = await ctx.connect(s, 3, 'c');

  a.send({ typing: { convId: conv, active: true } });
  for (const x of [b, c]) {
    assert.deepEqual(await x.nextOf('typing'), { convId: conv, userId: 1, active: true });
  }
  const t0 = Date.now();
  await settle(a, a2);
  assert.equal(a.take('typing').length + a2.take('typing').length, 0, 'typing is not relayed to the typist');

  // No renewal: active=false after about TTL (the server checks once a tick).
  const stop = await b.nextOf('typing', () => true, { timeout: TTL + 5000, what: 'typing to expire' });
  const elapsed = Date.now() - t0;
  assert.equal(stop.active, false);
  assert.equal(stop.userId, 1);
  assert.ok(elapsed >= TTL - 100, `expired after ${elapsed} ms, before typing_ttl_ms=${TTL}`);
  assert.ok(elapsed <= TTL + 2500, `expired after ${elapsed} ms, long after typing_ttl_ms=${TTL}`);
  assert.equal((await c.nextOf('typing')).active, false);

  // Renewed every TTL/2: it stays active while renewed.
  a.send({ typing: { convId: conv, active: true } });
  assert.equal((await b.nextOf('typing')).active, true);
  let last = Date.now();
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, TTL / 2));
    a.send({ typing: { convId: conv, active: true } });
    const f = await b.nextOf('typing');
    assert.equal(f.active, true, `renewal ${i}: still typing (no expiry while renewed)`);
    last = Date.now();
  }
  const stop2 = await b.nextOf('typing', () => true, { timeout: TTL + 5000 });
  assert.equal(stop2.active, false);
  assert.ok(Date.now() - last >= TTL - 300, `expired ${Date.now() - last} ms after the last renewal`);

  // An explicit stop is relayed at once.
  a.send({ typing: { convId: conv, active: true } });
  assert.equal((await b.nextOf('typing')).active, true);
  a.send({ typing: { convId: conv, active: false } });
  const f = await b.nextOf('typing');
  assert.equal(f.active, false);

  // Over typing_per_sec (5): extra typing frames are dropped, not relayed.
  c.take('typing');
  for (let i = 0; i < 30; i++) c.send({ typing: { convId: conv, active: true } });
  await settle(c, b);
  const relayed = b.take('typing').length;
  assert.ok(relayed >= 1 && relayed <= 7, `30 typing frames in a burst relayed ${relayed} times (typing_per_sec 5)`);

  // The typist disconnects: the others see it stop.
  b.send({ typing: { convId: conv, active: true } });
  assert.equal((await a.nextOf('typing', (t) => t.userId === 2)).active, true);
  await b.terminate();
  assert.equal((await a.nextOf('typing', (t) => t.userId === 2)).active, false, 'typing stops when the typist leaves');
});
