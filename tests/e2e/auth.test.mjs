// Authentication: Hello with a JWT is the first frame; anything else is an
// Error (unauthorized, 7) and close 4001. REST takes the same token as a
// bearer token.
import assert from 'node:assert/strict';
import { e2e, signJwt, api } from './lib/harness.mjs';

async function expectRefused(c, frame, what) {
  c.send(frame);
  const err = await c.nextOf('error', () => true, { what: `Error for ${what}` });
  assert.equal(err.code, 7, `${what}: Error code (message: ${err.message})`);
  const close = await c.waitClose();
  assert.equal(close.code, 4001, `${what}: close code`);
  assert.equal(c.take('welcome').length, 0, `${what}: no Welcome`);
}

e2e('a token minted by `chatd token` is accepted: Welcome carries its user id', async (ctx) => {
  const s = await ctx.server();
  const c = await ctx.open(s);
  const before = Date.now();
  const w = await c.hello(s.mintToken(42), 'phone');
  assert.equal(w.userId, 42);
  assert.deepEqual(w.conversations, []);
  assert.ok(Math.abs(w.serverTimeMs - before) < 60000, `server_time_ms ${w.serverTimeMs} near ${before}`);
  await c.close();
});

e2e('bad tokens get Error 7 and close 4001', async (ctx) => {
  const s = await ctx.server();
  const now = Math.floor(Date.now() / 1000);
  const cases = [
    ['garbage', 'not-a-jwt'],
    ['empty token', ''],
    ['wrong secret', signJwt('some-other-secret-of-32-bytes-xx', { sub: '42', exp: now + 3600 })],
    ['expired token', s.token(42, { exp: now - 60 })],
    ['no exp claim', signJwt(s.secret, { sub: '42' })],
    ['sub not a user id', s.token('abc')],
    ['alg none', `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(JSON.stringify({ sub: '42', exp: now + 3600 })).toString('base64url')}.`],
    ['tampered payload', (() => {
      const [h, , sig] = s.token(42).split('.');
      return `${h}.${Buffer.from(JSON.stringify({ sub: '43', exp: now + 3600 })).toString('base64url')}.${sig}`;
    })()],
  ];
  for (const [what, token] of cases) {
    const c = await ctx.open(s);
    await expectRefused(c, { hello: { token, deviceId: 'x' } }, what);
  }
  // The server still serves a good token afterwards.
  const ok = await ctx.connect(s, 42);
  assert.equal(ok.welcome.userId, 42);
});

e2e('a first frame that is not Hello gets Error 7 and close 4001', async (ctx) => {
  const s = await ctx.server();
  await expectRefused(await ctx.open(s), { ping: { nonce: 1 } }, 'Ping before Hello');
  await expectRefused(await ctx.open(s), { send: { convId: 1, body: 'x', clientMsgId: 'a' } }, 'Send before Hello');
  await expectRefused(await ctx.open(s), { sync: { convId: 1 } }, 'Sync before Hello');
  // Bytes that are not a ClientFrame at all before Hello: bad frame, then 4001.
  const c = await ctx.open(s);
  c.sendRaw(Buffer.from([0xff, 0xff, 0xff, 0xff]));
  const err = await c.nextOf('error');
  assert.equal(err.code, 1, `garbage before Hello: Error code (message: ${err.message})`);
  assert.equal((await c.waitClose()).code, 4001);
});

e2e('a second Hello is a bad frame, the session stays', async (ctx) => {
  const s = await ctx.server();
  const c = await ctx.connect(s, 5);
  c.send({ hello: { token: s.token(6), deviceId: 'x' } });
  const err = await c.nextOf('error');
  assert.equal(err.code, 1);
  await c.barrier();
  assert.equal(c.take('welcome').length, 0, 'no second Welcome');
  assert.equal(c.closeInfo, null);
});

e2e('a token that expires is refused from then on', async (ctx) => {
  const s = await ctx.server();
  const now = Math.floor(Date.now() / 1000);
  // exp == now is already expired (auth.c); exp = now + 2 works at first.
  const tok = s.token(7, { exp: now + 2 });
  const c = await ctx.open(s);
  await c.hello(tok);
  // Wait (bounded) until the clock is past exp; then the same token fails.
  while (Date.now() / 1000 < now + 3) await new Promise((r) => setTimeout(r, 100));
  await expectRefused(await ctx.open(s), { hello: { token: tok, deviceId: 'late' } }, 'token past its exp');
  const r = await api(s, 'GET', '/api/v1/conversations', { token: tok });
  assert.equal(r.status, 401, `REST with the expired token: ${r.text}`);
});

e2e('REST: no token, a bad token and a wrong scheme are 401; a good one is 200', async (ctx) => {
  const s = await ctx.server();
  let r = await api(s, 'GET', '/api/v1/conversations');
  assert.equal(r.status, 401, r.text);
  assert.equal(r.json?.error?.code, 7, r.text);
  assert.match(r.headers['www-authenticate'] ?? '', /^Bearer/, 'WWW-Authenticate: Bearer');
  r = await api(s, 'GET', '/api/v1/conversations', { token: 'x.y.z' });
  assert.equal(r.status, 401, r.text);
  r = await api(s, 'GET', '/api/v1/conversations', { headers: { Authorization: `Basic ${s.token(1)}` } });
  assert.equal(r.status, 401, r.text);
  r = await api(s, 'POST', '/api/v1/conversations', { body: { kind: 'direct', members: [2] } });
  assert.equal(r.status, 401, r.text);
  r = await api(s, 'GET', '/api/v1/conversations', { token: s.token(1) });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { conversations: [] });
});

e2e('nobody reads or writes a conversation they are not a member of', async (ctx) => {
  const s = await ctx.server();
  const r0 = await api(s, 'POST', '/api/v1/conversations', { token: s.token(1), body: { kind: 'direct', members: [2] } });
  assert.equal(r0.status, 201, r0.text);
  const conv = r0.json.conv_id;
  const out = await ctx.connect(s, 3);
  assert.equal(out.welcome.conversations.length, 0, 'user 3 sees no conversation');
  out.send({ send: { convId: conv, body: 'let me in', clientMsgId: 'm1' } });
  let err = await out.nextOf('error');
  assert.equal(err.code, 2, `Send by a non-member: ${err.message}`);
  assert.equal(err.clientMsgId, 'm1');
  out.send({ sync: { convId: conv } });
  err = await out.nextOf('error');
  assert.equal(err.code, 2, `Sync by a non-member: ${err.message}`);
  out.send({ receipt: { convId: conv, kind: 'READ', upToMsgId: 0 } });
  err = await out.nextOf('error');
  assert.equal(err.code, 2, `Receipt by a non-member: ${err.message}`);
  out.send({ typing: { convId: conv, active: true } });
  err = await out.nextOf('error');
  assert.equal(err.code, 2, `Typing by a non-member: ${err.message}`);
  out.send({ send: { convId: 999999, body: 'hello?', clientMsgId: 'm2' } });
  err = await out.nextOf('error');
  assert.equal(err.code, 3, `Send to no conversation: ${err.message}`);
  let r = await api(s, 'GET', `/api/v1/conversations/${conv}/messages`, { token: s.token(3) });
  assert.equal(r.status, 403, r.text);
  r = await api(s, 'POST', `/api/v1/conversations/${conv}/messages`, { token: s.token(3), body: { body: 'x', client_msg_id: 'r1' } });
  assert.equal(r.status, 403, r.text);
  r = await api(s, 'GET', `/api/v1/conversations/${conv}/messages`, { token: s.token(1) });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.messages, [], 'nothing was stored');
});
