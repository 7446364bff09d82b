// Idempotent send: the same (sender, conv_id, client_msg_id) returns the
// original Ack and stores nothing new, also while the first attempt is in
// flight and after a restart; the same key with other content is a conflict
// (Error 9).
import assert from 'node:assert/strict';
import { e2e, api, createConv, restHistory, metrics } from './lib/harness.mjs';

e2e('a retried Send gets the original Ack and stores nothing; other content is Error 9', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const other = (await createConv(s, 1, 'direct', [3])).conv_id;
  const a = await ctx.connect(s, 1);
  const b = await ctx.connect(s, 2);

  const first = await a.sendMsg(conv, 'one', 'k1');
  assert.equal(first.msgId, 1);
  assert.equal((await b.nextOf('msg')).clientMsgId, 'k1');

  // The retry: the same Ack (msg_id and ts), no new Msg for b.
  const retry = await a.sendMsg(conv, 'one', 'k1');
  assert.deepEqual(retry, first, 'a retry gets the original Ack');
  const second = await a.sendMsg(conv, 'two', 'k2');
  assert.equal(second.msgId, 2, 'the retry used no msg_id');
  const next = await b.nextOf('msg');
  assert.deepEqual([next.msgId, next.clientMsgId], [2, 'k2'], 'b got no duplicate of k1');

  // A retry from another device of the same user is the same key too.
  const a2 = await ctx.connect(s, 1, 'second-device');
  assert.deepEqual(await a2.sendMsg(conv, 'one', 'k1'), first, 'a retry from another device');

  // Same key, different content: conflict.
  for (const [what, extra] of [['another body', { body: 'ONE' }], ['a media_url', { body: 'one', mediaUrl: 'https://x/y.png' }]]) {
    a.send({ send: { convId: conv, clientMsgId: 'k1', ...extra } });
    const err = await a.nextOf('error', () => true, { what: `Error for k1 with ${what}` });
    assert.equal(err.code, 9, `same key with ${what}: ${err.message}`);
    assert.equal(err.clientMsgId, 'k1');
  }

  // The key belongs to (sender, conversation): the other member, or another
  // conversation, may use the same client_msg_id for a new message.
  assert.equal((await b.sendMsg(conv, 'one', 'k1')).msgId, 3, "the same client_msg_id from another sender is a new message");
  assert.equal((await a.sendMsg(other, 'one', 'k1')).msgId, 1, 'the same client_msg_id in another conversation is a new message');

  // Two copies back to back, the second while the first is in flight: both
  // answered with one msg_id; one Msg at b.
  a.send({ send: { convId: conv, body: 'twice', clientMsgId: 'k3' } });
  a.send({ send: { convId: conv, body: 'twice', clientMsgId: 'k3' } });
  const x1 = await a.nextOf('ack', (k) => k.clientMsgId === 'k3');
  const x2 = await a.nextOf('ack', (k) => k.clientMsgId === 'k3', { what: 'the second Ack of k3' });
  assert.equal(x1.msgId, 4);
  assert.equal(x2.msgId, 4, 'an in-flight retry gets the same msg_id');
  assert.equal((await b.nextOf('msg', (m) => m.clientMsgId === 'k3')).msgId, 4);

  // REST sends share the key space with WebSocket sends.
  let r = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(1), body: { body: 'one', client_msg_id: 'k1' } });
  assert.equal(r.status, 200, `REST retry of k1: ${r.text}`);
  assert.equal(r.json.msg_id, 1, 'REST retry of a WebSocket send: the original msg_id');
  r = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(1), body: { body: 'not one', client_msg_id: 'k1' } });
  assert.equal(r.status, 409, `REST conflict: ${r.text}`);
  assert.equal(r.json?.error?.code, 9, r.text);
  r = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(1), body: { body: 'via rest', client_msg_id: 'r1' } });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.msg_id, 5);
  const rr = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(1), body: { body: 'via rest', client_msg_id: 'r1' } });
  assert.equal(rr.status, 200, rr.text);
  assert.deepEqual(rr.json, r.json, 'a REST retry: 200 with the original answer');
  assert.equal((await b.nextOf('msg', (m) => m.clientMsgId === 'r1')).body, 'via rest', 'a REST send is delivered live');
  const again = await a.sendMsg(conv, 'via rest', 'r1');
  assert.equal(again.msgId, 5, 'a WebSocket retry of a REST send: the original msg_id');

  // What is stored: five messages, each key once.
  const hist = await restHistory(s, 2, conv);
  assert.deepEqual(hist.map((m) => [m.msg_id, m.sender_id, m.client_msg_id]),
    [[1, 1, 'k1'], [2, 1, 'k2'], [3, 2, 'k1'], [4, 1, 'k3'], [5, 1, 'r1']]);
  const { messages } = await b.syncAll(conv);
  assert.equal(messages.length, 5, 'Sync agrees');
  assert.equal((await metrics(s)).chatd_messages_appended_total, 6, 'appended: 5 in conv, 1 in the other; retries none');
});

e2e('a retry after a restart still gets the original Ack (keys rebuilt from the log)', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  let a = await ctx.connect(s, 1);
  const acks = [];
  for (let i = 0; i < 20; i++) acks.push(await a.sendMsg(conv, `body ${i}`, `key-${i}`));
  await a.close();
  await s.restart(); // SIGTERM (checked clean), then start on the same data

  a = await ctx.connect(s, 1);
  assert.equal(a.welcome.conversations.find((c) => c.convId === conv)?.lastMsgId, 20);
  for (const i of [0, 7, 19]) {
    assert.deepEqual(await a.sendMsg(conv, `body ${i}`, `key-${i}`), acks[i], `retry of key-${i} after restart`);
  }
  a.send({ send: { convId: conv, body: 'changed', clientMsgId: 'key-3' } });
  const err = await a.nextOf('error');
  assert.equal(err.code, 9, `conflict after restart: ${err.message}`);
  assert.equal((await a.sendMsg(conv, 'new', 'key-20')).msgId, 21);
  const hist = await restHistory(s, 1, conv);
  assert.equal(hist.length, 21, 'the retries stored nothing');
  assert.equal((await metrics(s)).chatd_messages_appended_total, 1, 'only the new message was appended since the restart');
});
