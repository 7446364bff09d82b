// Per-conversation order under concurrent senders: every member sees msg_ids
// 1..N in order, no gaps, no duplicates; every sender's Acks match what the
// others saw.
import assert from 'node:assert/strict';
import { e2e, createConv, scaled, assertDense } from './lib/harness.mjs';

e2e('concurrent senders in one group: every member sees 1..N in order, Acks match', async (ctx) => {
  const s = await ctx.server();
  const users = [1, 2, 3, 4, 5];
  const grp = await createConv(s, 1, 'group', users.slice(1), 'race');
  const conv = grp.conv_id;
  const devices = await Promise.all(users.map((u) => ctx.connect(s, u, `main-${u}`)));
  const observer = await ctx.connect(s, 1, 'observer'); // user 1's second device
  const senders = devices.slice(0, 4);
  const M = scaled(250, 10);
  const N = M * senders.length;

  // Each sender pipelines all of its messages without waiting for Acks.
  const sent = new Map(); // client_msg_id -> { sender, body, k }
  const ackLists = await Promise.all(senders.map(async (c, si) => {
    const uid = users[si];
    const acks = [];
    const got = new Map();
    for (let k = 0; k < M; k++) {
      const cmid = `u${uid}-${k}`;
      const body = `message ${k} from ${uid}`;
      sent.set(cmid, { sender: uid, body, k });
      c.send({ send: { convId: conv, body, clientMsgId: cmid } });
    }
    while (acks.length < M) {
      const f = await c.next((x) => x.kind === 'ack' || x.kind === 'error', { what: `Ack ${acks.length + 1}/${M} of user ${uid}` });
      if (f.kind === 'error') assert.fail(`user ${uid}: Error ${f.error.code} ${f.error.message} for ${f.error.clientMsgId}`);
      assert.ok(!got.has(f.ack.clientMsgId), `user ${uid}: a second Ack for ${f.ack.clientMsgId}`);
      got.set(f.ack.clientMsgId, f.ack.msgId);
      acks.push(f.ack);
    }
    return acks;
  }));

  // Acks: each sender's in its send order with increasing msg_ids; all of
  // them together exactly 1..N.
  const owner = new Map(); // msg_id -> client_msg_id
  ackLists.forEach((acks, si) => {
    const ks = acks.map((a) => sent.get(a.clientMsgId).k);
    assert.deepEqual(ks, [...ks].sort((a, b) => a - b), `user ${users[si]}'s Acks come in send order`);
    for (let i = 1; i < acks.length; i++) {
      assert.ok(acks[i].msgId > acks[i - 1].msgId, `user ${users[si]}'s messages keep their order: ${acks[i - 1].msgId} then ${acks[i].msgId}`);
    }
    for (const a of acks) {
      assert.equal(a.convId, conv);
      assert.ok(!owner.has(a.msgId), `msg_id ${a.msgId} acked twice (${owner.get(a.msgId)} and ${a.clientMsgId})`);
      owner.set(a.msgId, a.clientMsgId);
    }
  });
  assertDense([...owner.keys()].sort((a, b) => a - b), 1, N, 'acked msg_ids');

  // Every device: the Msgs it got, strictly in order, each matching the Ack
  // of its sender; together with its own Acks, exactly 1..N.
  const all = [...devices, observer];
  await Promise.all(all.map(async (c, i) => {
    const ownAcks = i < senders.length ? ackLists[i].map((a) => a.msgId) : [];
    const expect = N - ownAcks.length;
    const ids = [];
    while (ids.length < expect) {
      const m = await c.nextOf('msg', (x) => x.convId === conv, { what: `Msg ${ids.length + 1}/${expect} at device ${i}` });
      const cmid = owner.get(m.msgId);
      assert.ok(cmid, `device ${i}: Msg ${m.msgId} was never acked`);
      assert.equal(m.clientMsgId, cmid, `device ${i}: Msg ${m.msgId}`);
      assert.equal(m.senderId, sent.get(cmid).sender);
      assert.equal(m.body, sent.get(cmid).body);
      if (ids.length) assert.ok(m.msgId > ids[ids.length - 1], `device ${i}: Msg ${m.msgId} after ${ids[ids.length - 1]}`);
      ids.push(m.msgId);
    }
    assertDense([...ids, ...ownAcks].sort((a, b) => a - b), 1, N, `device ${i}: Msgs + own Acks`);
    await c.barrier();
    assert.equal(c.take('msg').length, 0, `device ${i}: no extra Msg`);
  }));

  // The stored history is the same sequence.
  const late = await ctx.connect(s, 5, 'late');
  assert.equal(late.welcome.conversations[0].lastMsgId, N);
  const { messages } = await late.syncAll(conv, 0, 500);
  assertDense(messages.map((m) => m.msgId), 1, N, 'Sync from 0');
  for (const m of messages) assert.equal(m.clientMsgId, owner.get(m.msgId));
});

e2e('concurrent senders in many 1:1 conversations: each conversation is dense on its own', async (ctx) => {
  const s = await ctx.server();
  const pairs = 6;
  const M = scaled(100, 5);
  const convs = [];
  for (let p = 0; p < pairs; p++) convs.push((await createConv(s, 100 + p, 'direct', [200 + p])).conv_id);
  const left = await Promise.all(convs.map((_, p) => ctx.connect(s, 100 + p)));
  const right = await Promise.all(convs.map((_, p) => ctx.connect(s, 200 + p)));
  // Both sides of every pair send at once.
  const acks = await Promise.all(convs.flatMap((conv, p) => [left[p], right[p]].map(async (c, side) => {
    for (let k = 0; k < M; k++) c.send({ send: { convId: conv, body: `${side}:${k}`, clientMsgId: `${side}-${k}` } });
    const out = [];
    while (out.length < M) out.push(await c.nextOf('ack', () => true, { what: `Ack in conversation ${conv}` }));
    return out;
  })));
  for (let p = 0; p < pairs; p++) {
    const ids = [...acks[2 * p], ...acks[2 * p + 1]].map((a) => a.msgId).sort((a, b) => a - b);
    assertDense(ids, 1, 2 * M, `conversation ${convs[p]}: acked msg_ids`);
    const { messages } = await left[p].syncAll(convs[p]);
    assertDense(messages.map((m) => m.msgId), 1, 2 * M, `conversation ${convs[p]}: Sync`);
  }
});
