// An offline member catching up with Sync (paging with `more`, no gaps, no
// duplicates, also while new messages keep coming), and REST history paging
// both ways.
import assert from 'node:assert/strict';
import { e2e, api, createConv, scaled, assertDense } from './lib/harness.mjs';

/** Pipeline n sends on c and wait for all their Acks; returns the Acks. */
async function flood(c, conv, n, prefix) {
  for (let i = 0; i < n; i++) c.send({ send: { convId: conv, body: `${prefix} ${i}`, clientMsgId: `${prefix}-${i}` } });
  const acks = [];
  while (acks.length < n) {
    const f = await c.next((x) => x.kind === 'ack' || x.kind === 'error', { what: `Ack ${acks.length + 1}/${n}` });
    if (f.kind === 'error') assert.fail(`Error ${f.error.code} ${f.error.message}`);
    acks.push(f.ack);
  }
  return acks;
}

e2e('an offline member catches up with Sync: pages with more, no gaps, no duplicates', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const a = await ctx.connect(s, 1);
  let b = await ctx.connect(s, 2);
  const bodies = new Map();
  for (const ack of await flood(a, conv, 5, 'online')) bodies.set(ack.msgId, ack.clientMsgId);
  const seen = [];
  while (seen.length < 5) seen.push((await b.nextOf('msg')).msgId);
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  await b.close();

  // While b is away.
  const K = scaled(600, 520);
  for (const ack of await flood(a, conv, K, 'offline')) bodies.set(ack.msgId, ack.clientMsgId);
  const last = 5 + K;

  b = await ctx.connect(s, 2);
  const cs = b.welcome.conversations.find((x) => x.convId === conv);
  assert.equal(cs.lastMsgId, last, 'Welcome tells the last msg_id');
  assert.equal(cs.unread, last, 'nothing read yet');

  // Sync from the last msg_id b saw, 40 at a time.
  const { messages, pages } = await b.syncAll(conv, 5, 40);
  assertDense(messages.map((m) => m.msgId), 6, last, 'Sync after 5');
  for (const m of messages) {
    assert.equal(m.clientMsgId, bodies.get(m.msgId), `msg ${m.msgId}`);
    assert.equal(m.body, m.clientMsgId.replace(/-(\d+)$/, ' $1'));
    assert.equal(m.senderId, 1);
    assert.equal(m.convId, conv);
  }
  assert.ok(pages.slice(0, -1).every((p) => p.n === 40 && p.more), `every page but the last is full with more: ${JSON.stringify(pages.slice(0, 3))}`);
  assert.equal(pages.at(-1).more, false);
  assert.ok(pages.at(-1).n >= 1 && pages.at(-1).n <= 40);

  // Limits of one Sync: 0 means 100, more than 500 is 500; at the end, none.
  b.send({ sync: { convId: conv, afterMsgId: 0, limit: 0 } });
  let sb = await b.nextOf('syncBatch');
  assert.equal(sb.messages.length, 100, 'limit 0: the default 100');
  assert.equal(sb.more, true);
  b.send({ sync: { convId: conv, afterMsgId: 0, limit: 100000 } });
  sb = await b.nextOf('syncBatch');
  assert.equal(sb.messages.length, 500, 'limit capped at 500');
  assert.equal(sb.more, true);
  b.send({ sync: { convId: conv, afterMsgId: last, limit: 10 } });
  sb = await b.nextOf('syncBatch');
  assert.deepEqual([sb.messages.length, sb.more], [0, false], 'Sync from the last msg_id: nothing, no more');
  b.send({ sync: { convId: conv, afterMsgId: last + 50, limit: 10 } });
  sb = await b.nextOf('syncBatch');
  assert.deepEqual([sb.messages.length, sb.more], [0, false], 'Sync from past the end: nothing');
  b.send({ sync: { convId: 424242, afterMsgId: 0 } });
  assert.equal((await b.nextOf('error')).code, 3, 'Sync of no conversation: not_found');
});

e2e('catching up while messages keep coming: Sync + live Msg cover every msg_id once', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const a = await ctx.connect(s, 1);
  const K = scaled(300, 50);
  await flood(a, conv, K, 'before');

  // b reconnects and pages through Sync while a sends L more.
  const L = scaled(300, 50);
  const b = await ctx.connect(s, 2);
  const sending = flood(a, conv, L, 'during');
  const synced = [];
  let after = 0;
  for (let i = 0; i < 10000; i++) {
    b.send({ sync: { convId: conv, afterMsgId: after, limit: 25 } });
    const sb = await b.nextOf('syncBatch');
    synced.push(...sb.messages.map((m) => m.msgId));
    if (!sb.more) break;
    after = synced.at(-1);
  }
  await sending;
  // Live Msgs for the rest; a barrier after the last Ack makes sure they are in.
  await b.barrier();
  const live = b.take('msg').map((f) => f.msg.msgId);
  for (let i = 1; i < live.length; i++) assert.ok(live[i] > live[i - 1], `live Msgs in order: ${live[i - 1]} then ${live[i]}`);
  assertDense(synced, 1, synced.length, 'Sync pages');
  assert.ok(synced.length >= K, `Sync returned at least what was there before (${synced.length} >= ${K})`);
  // Sync answers up to what was committed; everything later came live.
  const union = [...new Set([...synced, ...live])].sort((x, y) => x - y);
  assertDense(union, 1, K + L, 'Sync + live');
  // b was in session before a sent them: every one of those came live.
  assertDense(live, K + 1, K + L, 'live Msgs');
});

e2e('REST history: after (oldest first) and before (newest first), limit, more', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const a = await ctx.connect(s, 1);
  const N = 230;
  const acks = await flood(a, conv, N, 'h');
  const tok = s.token(2);
  const get = async (q) => {
    const r = await api(s, 'GET', `/api/v1/conversations/${conv}/messages${q}`, { token: tok });
    assert.equal(r.status, 200, `${q}: ${r.text}`);
    return r.json;
  };

  // Forward in pages of 25.
  let ids = [];
  let pages = 0;
  for (let after = 0; ; pages++) {
    const j = await get(`?after=${after}&limit=25`);
    ids.push(...j.messages.map((m) => m.msg_id));
    if (!j.more) break;
    assert.equal(j.messages.length, 25);
    after = j.messages.at(-1).msg_id;
  }
  assertDense(ids, 1, N, 'after= pages');
  assert.equal(pages, Math.ceil(N / 25) - 1);

  // Backward in pages of 25, newest first.
  ids = [];
  for (let before = N + 1; ;) {
    const j = await get(`?before=${before}&limit=25`);
    const page = j.messages.map((m) => m.msg_id);
    for (let i = 1; i < page.length; i++) assert.ok(page[i] < page[i - 1], `before=${before}: newest first`);
    ids.push(...page);
    if (!j.more) break;
    before = page.at(-1);
  }
  assertDense(ids.reverse(), 1, N, 'before= pages');

  // A message in full.
  const one = (await get('?after=6&limit=1')).messages[0];
  const ack = acks.find((x) => x.msgId === 7);
  assert.deepEqual(one, { conv_id: conv, msg_id: 7, sender_id: 1, body: `h ${ack.clientMsgId.slice(2)}`, media_url: '', ts: ack.ts, client_msg_id: ack.clientMsgId });

  // Defaults and caps.
  let j = await get('');
  assert.equal(j.messages.length, 50, 'default page of 50');
  assert.equal(j.messages[0].msg_id, N, 'no cursor: the newest first');
  assert.equal(j.more, true);
  j = await get('?after=0&limit=100000');
  assert.equal(j.messages.length, 200, 'limit capped at 200');
  assert.equal(j.more, true);
  j = await get(`?after=${N}`);
  assert.deepEqual([j.messages.length, j.more], [0, false]);
  j = await get('?before=1');
  assert.deepEqual([j.messages.length, j.more], [0, false]);
  j = await get(`?after=${N - 3}&limit=3`);
  assert.deepEqual([j.messages.map((m) => m.msg_id), j.more], [[N - 2, N - 1, N], false], 'a page that ends exactly at the end has more=false');

  for (const q of ['?after=1&before=5', '?limit=0', '?limit=abc', '?after=-1', '?before=0', '?colour=blue']) {
    const r = await api(s, 'GET', `/api/v1/conversations/${conv}/messages${q}`, { token: tok });
    assert.equal(r.status, 400, `${q}: ${r.status} ${r.text}`);
  }
  const r = await api(s, 'GET', '/api/v1/conversations/77777/messages', { token: tok });
  assert.equal(r.status, 404, r.text);
});
