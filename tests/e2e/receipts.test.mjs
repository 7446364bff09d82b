// Receipts and unread counts: READ/DELIVERED positions stored durably, only
// moving forward, forwarded to the members with user_id set; unread counts
// others' messages after the READ position, in Welcome and in REST.
import assert from 'node:assert/strict';
import { e2e, api, createConv } from './lib/harness.mjs';

const convState = (c, conv) => c.welcome.conversations.find((x) => x.convId === conv);

async function restConv(s, uid, conv) {
  const r = await api(s, 'GET', '/api/v1/conversations', { token: s.token(uid) });
  assert.equal(r.status, 200, r.text);
  const cv = r.json.conversations.find((x) => x.conv_id === conv);
  assert.ok(cv, `user ${uid}'s conversation list has ${conv}: ${r.text}`);
  return cv;
}

e2e('receipts are forwarded with user_id; unread and last_read_msg_id in Welcome and REST', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  let a = await ctx.connect(s, 1);
  for (let i = 1; i <= 3; i++) await a.sendMsg(conv, `m${i}`, `a${i}`);

  // b was offline: three unread in Welcome and in REST.
  let b = await ctx.connect(s, 2);
  assert.deepEqual(
    (({ lastMsgId, lastReadMsgId, unread }) => ({ lastMsgId, lastReadMsgId, unread }))(convState(b, conv)),
    { lastMsgId: 3, lastReadMsgId: 0, unread: 3 }, "b's Welcome");
  let rc = await restConv(s, 2, conv);
  assert.deepEqual([rc.last_msg_id, rc.last_read_msg_id, rc.unread], [3, 0, 3], 'REST for b');
  // Your own messages are never unread.
  assert.equal((await restConv(s, 1, conv)).unread, 0, 'a sent them: none unread for a');

  // b reads up to 2: a (and b itself) get the Receipt with user_id = 2.
  b.send({ receipt: { convId: conv, kind: 'READ', upToMsgId: 2 } });
  const ra = await a.nextOf('receipt');
  assert.deepEqual(ra, { convId: conv, userId: 2, kind: 'READ', upToMsgId: 2 }, 'receipt forwarded to the sender');
  rc = await restConv(s, 2, conv);
  assert.deepEqual([rc.last_read_msg_id, rc.unread], [2, 1], 'after READ 2');

  // A position only moves forward: READ 1 changes nothing, forwards nothing.
  b.send({ receipt: { convId: conv, kind: 'READ', upToMsgId: 1 } });
  await b.barrier();
  await a.barrier();
  assert.equal(a.take('receipt').length, 0, 'a smaller READ is not forwarded');
  assert.equal((await restConv(s, 2, conv)).last_read_msg_id, 2, 'a smaller READ is ignored');

  // DELIVERED is forwarded too.
  b.send({ receipt: { convId: conv, kind: 'DELIVERED', upToMsgId: 3 } });
  assert.deepEqual(await a.nextOf('receipt'), { convId: conv, userId: 2, kind: 'DELIVERED', upToMsgId: 3 });

  // Bad receipts: past the last message, no kind.
  b.send({ receipt: { convId: conv, kind: 'READ', upToMsgId: 99 } });
  assert.equal((await b.nextOf('error')).code, 1, 'READ past the last message');
  b.send({ receipt: { convId: conv, kind: 'KIND_UNSPECIFIED', upToMsgId: 3 } });
  assert.equal((await b.nextOf('error')).code, 1, 'receipt without a kind');

  // b's own message is not unread for b; a gets one unread.
  await b.sendMsg(conv, 'b1', 'b1');
  assert.equal((await restConv(s, 2, conv)).unread, 1, "b's own message does not count");
  assert.equal((await restConv(s, 1, conv)).unread, 1, "a has b's message unread");

  // The positions are durable: restart, reconnect, same numbers.
  await a.close();
  await b.close();
  await s.restart();
  b = await ctx.connect(s, 2);
  assert.deepEqual(
    (({ lastMsgId, lastReadMsgId, unread }) => ({ lastMsgId, lastReadMsgId, unread }))(convState(b, conv)),
    { lastMsgId: 4, lastReadMsgId: 2, unread: 1 }, "b's Welcome after a restart");
  a = await ctx.connect(s, 1);
  assert.deepEqual([convState(a, conv).lastReadMsgId, convState(a, conv).unread], [0, 1], "a's Welcome after a restart");

  // REST read moves the pointer (204) and is forwarded like a Receipt.
  const r = await api(s, 'POST', `/api/v1/conversations/${conv}/read`, { token: s.token(1), body: { last_read_msg_id: 4 } });
  assert.equal(r.status, 204, r.text);
  assert.deepEqual(await b.nextOf('receipt'), { convId: conv, userId: 1, kind: 'READ', upToMsgId: 4 }, 'REST read forwarded');
  assert.equal((await restConv(s, 1, conv)).unread, 0);
  assert.equal((await restConv(s, 1, conv)).last_read_msg_id, 4);
});

e2e('group receipts reach every member, and unread is per member', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'group', [2, 3], 'g')).conv_id;
  const [a, b, c] = await Promise.all([1, 2, 3].map((u) => ctx.connect(s, u)));
  for (let i = 1; i <= 4; i++) await a.sendMsg(conv, `m${i}`);
  await b.sendMsg(conv, 'from b');
  c.send({ receipt: { convId: conv, kind: 'READ', upToMsgId: 3 } });
  for (const [x, who] of [[a, 'a'], [b, 'b'], [c, 'c itself']]) {
    assert.deepEqual(await x.nextOf('receipt'), { convId: conv, userId: 3, kind: 'READ', upToMsgId: 3 }, who);
  }
  assert.deepEqual(
    [(await restConv(s, 1, conv)).unread, (await restConv(s, 2, conv)).unread, (await restConv(s, 3, conv)).unread],
    [1, 4, 2], 'unread for a (b\'s message), b (a\'s four), c (after READ 3: 4 and 5)');
});
