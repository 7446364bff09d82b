// 1:1 and group conversations: creation through REST, delivery to every
// connected device of every member, the group size cap.
import assert from 'node:assert/strict';
import { e2e, api, createConv, ChatClient, withTimeout, WAIT_MS, restHistory } from './lib/harness.mjs';

e2e('1:1: create through REST, send, Ack to the sender, Msg to the other member and the sender\'s other device', async (ctx) => {
  const s = await ctx.server();
  const r = await api(s, 'POST', '/api/v1/conversations', { token: s.token(1), body: { kind: 'direct', members: [2] } });
  assert.equal(r.status, 201, r.text);
  const conv = r.json;
  assert.equal(conv.kind, 'direct');
  assert.ok(Number.isInteger(conv.conv_id) && conv.conv_id > 0, `conv_id ${conv.conv_id}`);
  assert.deepEqual([...conv.members].sort((a, b) => a - b), [1, 2]);
  assert.ok(Number.isInteger(conv.created_at), `created_at ${conv.created_at}`);

  // The same pair from the other side: the same conversation, not a new one.
  const again = await api(s, 'POST', '/api/v1/conversations', { token: s.token(2), body: { kind: 'direct', members: [1] } });
  assert.equal(again.status, 200, `the existing conversation: ${again.text}`);
  assert.equal(again.json.conv_id, conv.conv_id, 'a direct conversation between the same users is returned, not duplicated');

  const a1 = await ctx.connect(s, 1, 'a-phone');
  const a2 = await ctx.connect(s, 1, 'a-laptop');
  const b = await ctx.connect(s, 2, 'b-phone');
  for (const [c, who] of [[a1, 'user 1'], [b, 'user 2']]) {
    const cs = c.welcome.conversations.find((x) => x.convId === conv.conv_id);
    assert.ok(cs, `${who}'s Welcome lists the conversation`);
    assert.equal(cs.kind, 'direct');
    assert.equal(cs.lastMsgId, 0);
  }

  const t0 = Date.now();
  const ack = await a1.sendMsg(conv.conv_id, 'hello, 2', 'c-1');
  assert.equal(ack.msgId, 1);
  assert.equal(ack.convId, conv.conv_id);
  assert.equal(ack.clientMsgId, 'c-1');
  assert.ok(ack.ts >= t0 - 5000 && ack.ts <= Date.now() + 5000, `ack ts ${ack.ts}`);
  for (const [c, who] of [[b, 'the other member'], [a2, "the sender's other device"]]) {
    const m = await c.nextOf('msg', (x) => x.convId === conv.conv_id, { what: `Msg at ${who}` });
    assert.deepEqual(m, { convId: conv.conv_id, msgId: 1, senderId: 1, body: 'hello, 2', mediaUrl: '', ts: ack.ts, clientMsgId: 'c-1' }, who);
  }
  // The sending device gets the Ack, not also a Msg.
  await a1.barrier();
  assert.equal(a1.take('msg').length, 0, 'the sending device gets no Msg of its own message');

  // Reply with a media_url.
  const ack2 = await b.sendMsg(conv.conv_id, 'hi 1', 'c-2', { mediaUrl: 'https://example.com/cat.png' });
  assert.equal(ack2.msgId, 2);
  for (const c of [a1, a2]) {
    const m = await c.nextOf('msg');
    assert.equal(m.msgId, 2);
    assert.equal(m.senderId, 2);
    assert.equal(m.mediaUrl, 'https://example.com/cat.png');
  }
  const hist = await restHistory(s, 1, conv.conv_id);
  assert.deepEqual(hist.map((m) => [m.msg_id, m.sender_id, m.body, m.client_msg_id]),
    [[1, 1, 'hello, 2', 'c-1'], [2, 2, 'hi 1', 'c-2']]);
  assert.equal(hist[1].media_url, 'https://example.com/cat.png');

  // A third user cannot join a direct conversation, and a direct conversation
  // needs exactly one other member.
  let bad = await api(s, 'POST', '/api/v1/conversations', { token: s.token(1), body: { kind: 'direct', members: [2, 3] } });
  assert.ok(bad.status >= 400 && bad.status < 500, `direct with two others: ${bad.status} ${bad.text}`);
  bad = await api(s, 'POST', '/api/v1/conversations', { token: s.token(1), body: { kind: 'direct', members: [1] } });
  assert.ok(bad.status >= 400 && bad.status < 500, `direct with oneself: ${bad.status} ${bad.text}`);
});

e2e('a 250-member group: every online member gets every message; 251 members are refused', async (ctx) => {
  const s = await ctx.server();
  const N = 250;
  const ids = Array.from({ length: N }, (_, i) => 1000 + i); // 1000 is the creator
  const grp = await createConv(s, ids[0], 'group', ids.slice(1), 'everyone');
  assert.equal(grp.kind, 'group');
  assert.equal(grp.members.length, N, 'the creator is a member too');
  assert.equal(grp.title, 'everyone');

  // One more is too many: at creation and by adding.
  const big = Array.from({ length: N }, (_, i) => 5000 + i);
  let r = await api(s, 'POST', '/api/v1/conversations', { token: s.token(4999), body: { kind: 'group', members: big } });
  assert.equal(r.status, 400, `251-member group: ${r.text}`);
  assert.match(r.json?.error?.message ?? '', /251.*250|max_group_members/, `a clear error: ${r.text}`);
  r = await api(s, 'POST', `/api/v1/conversations/${grp.conv_id}/members`, { token: s.token(ids[0]), body: { add: [9999] } });
  assert.equal(r.status, 400, `adding a 251st member: ${r.text}`);
  r = await api(s, 'GET', '/api/v1/conversations', { token: s.token(4999) });
  assert.deepEqual(r.json.conversations, [], 'the refused group was not created');

  // All 250 online, connected in batches.
  const clients = [];
  for (let i = 0; i < N; i += 50) {
    clients.push(...await Promise.all(ids.slice(i, i + 50).map((u) => ctx.connect(s, u, `dev-${u}`))));
  }
  for (const c of clients) {
    const cs = c.welcome.conversations.find((x) => x.convId === grp.conv_id);
    assert.ok(cs, `user ${c.welcome.userId}'s Welcome lists the group`);
    assert.equal(cs.members.length, N);
  }
  // Three senders, three messages each.
  const senders = [0, 77, 249];
  const acks = [];
  for (const si of senders) {
    for (let k = 0; k < 3; k++) acks.push(await clients[si].sendMsg(grp.conv_id, `from ${ids[si]} #${k}`, `g-${si}-${k}`));
  }
  assert.deepEqual(acks.map((a) => a.msgId), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  // Every member saw every message it did not send, in order.
  await Promise.all(clients.map(async (c, i) => {
    const got = [];
    const expect = acks.filter((_, j) => senders[Math.floor(j / 3)] !== i).map((a) => a.msgId);
    while (got.length < expect.length) {
      const m = await c.nextOf('msg', (x) => x.convId === grp.conv_id, { what: `Msg ${got.length + 1}/${expect.length} at user ${ids[i]}` });
      got.push(m.msgId);
      assert.equal(m.body, `from ${m.senderId} #${(m.msgId - 1) % 3}`);
    }
    assert.deepEqual(got, expect, `user ${ids[i]}`);
  }));
  // A late member catches up with Sync.
  const late = await ctx.track(await ChatClient.connect(s, s.token(ids[10]), 'late'));
  const { messages } = await late.syncAll(grp.conv_id);
  assert.deepEqual(messages.map((m) => m.msgId), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  await withTimeout(Promise.all(clients.map((c) => c.close())), WAIT_MS, 'closing 250 clients');
});

e2e('group membership: members may add, the creator may remove; a removed member is cut off', async (ctx) => {
  const s = await ctx.server();
  const grp = await createConv(s, 1, 'group', [2, 3], 'trio');
  let r = await api(s, 'POST', `/api/v1/conversations/${grp.conv_id}/members`, { token: s.token(2), body: { add: [4] } });
  assert.equal(r.status, 200, `a member adds: ${r.text}`);
  assert.deepEqual(r.json.members, [1, 2, 3, 4]);
  r = await api(s, 'POST', `/api/v1/conversations/${grp.conv_id}/members`, { token: s.token(2), body: { remove: [3] } });
  assert.equal(r.status, 403, `a non-creator removes: ${r.text}`);
  r = await api(s, 'POST', `/api/v1/conversations/${grp.conv_id}/members`, { token: s.token(1), body: { remove: [3] } });
  assert.equal(r.status, 200, `the creator removes: ${r.text}`);
  assert.deepEqual(r.json.members, [1, 2, 4]);
  const four = await ctx.connect(s, 4);
  assert.ok(four.welcome.conversations.some((x) => x.convId === grp.conv_id), 'the added member sees the group');
  const three = await ctx.connect(s, 3);
  assert.ok(!three.welcome.conversations.some((x) => x.convId === grp.conv_id), 'the removed member no longer sees it');
  three.send({ send: { convId: grp.conv_id, body: 'still here?', clientMsgId: 'x' } });
  assert.equal((await three.nextOf('error')).code, 2);
  await (await ctx.connect(s, 1)).sendMsg(grp.conv_id, 'welcome 4');
  assert.equal((await four.nextOf('msg')).body, 'welcome 4');
  await three.barrier();
  assert.equal(three.take('msg').length, 0, 'the removed member gets no Msg');
});
