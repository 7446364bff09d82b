// Bad input on the WebSocket: bad frames get the right close code, bad
// protobuf gets Error 1 and the session goes on, a text frame is 1003; the
// RFC 6455 basics (ping/pong, the close handshake) work with `ws`.
import assert from 'node:assert/strict';
import { e2e, createConv, encodeClient, decodeServer, RawWs } from './lib/harness.mjs';

/** A raw WebSocket past Hello as user uid. */
async function rawSession(ctx, s, uid) {
  const r = await ctx.raw(s);
  r.sendClient({ hello: { token: s.token(uid), deviceId: 'raw' } });
  const w = await r.readFrame();
  assert.equal(decodeServer(w.payload).kind, 'welcome');
  return r;
}

e2e('bad WebSocket frames are closed with 1002 (or 1007 for a bad close reason)', async (ctx) => {
  const s = await ctx.server();
  const ping = encodeClient({ ping: { nonce: 1 } });
  const cases = [
    ['an unmasked frame', RawWs.frame(2, ping, { mask: false }), 1002],
    ['RSV1 set without an extension', RawWs.frame(2, ping, { rsv: 4 }), 1002],
    ['reserved opcode 3', RawWs.frame(3, ping), 1002],
    ['reserved control opcode 0xB', RawWs.frame(0xb, Buffer.alloc(0)), 1002],
    ['a continuation with nothing to continue', RawWs.frame(0, ping), 1002],
    ['a fragmented ping', RawWs.frame(9, Buffer.from('x'), { fin: false }), 1002],
    ['a ping of 126 bytes', RawWs.frame(9, Buffer.alloc(126)), 1002],
    ['a new message inside a fragmented one', Buffer.concat([RawWs.frame(2, ping.subarray(0, 2), { fin: false }), RawWs.frame(2, ping)]), 1002],
    ['a close frame with a 1-byte payload', RawWs.frame(8, Buffer.from([3])), 1002],
    ['a close frame with code 1005', RawWs.frame(8, Buffer.from([0x03, 0xed])), 1002],
    ['a close frame with code 999', RawWs.frame(8, Buffer.from([0x03, 0xe7])), 1002],
    ['a close reason that is not UTF-8', RawWs.frame(8, Buffer.from([0x03, 0xe8, 0xff, 0xfe])), 1007],
  ];
  for (const [what, bytes, code] of cases) {
    const r = await rawSession(ctx, s, 1);
    r.write(bytes);
    const end = await r.readUntilClose();
    assert.equal(end.code, code, `${what}: close code`);
    await r.waitEnd(); // and the server closes the TCP connection
  }
  // Also before Hello.
  const r = await ctx.raw(s);
  r.write(RawWs.frame(2, ping, { mask: false }));
  assert.equal((await r.readUntilClose()).code, 1002, 'unmasked before Hello');
  // The server is fine.
  assert.equal((await ctx.connect(s, 2)).welcome.userId, 2);
});

e2e('a 64-bit length with the top bit set, and a length past the limit, are refused without allocating', async (ctx) => {
  const s = await ctx.server();
  const r = await rawSession(ctx, s, 1);
  const hdr = Buffer.alloc(14);
  hdr[0] = 0x82; hdr[1] = 0x80 | 127;
  hdr.writeBigUInt64BE(1n << 63n, 2);
  r.write(hdr);
  assert.equal((await r.readUntilClose()).code, 1002);
  const r2 = await rawSession(ctx, s, 1);
  const h2 = Buffer.alloc(14);
  h2[0] = 0x82; h2[1] = 0x80 | 127;
  h2.writeBigUInt64BE(1n << 40n, 2); // a terabyte
  r2.write(h2);
  assert.equal((await r2.readUntilClose()).code, 1009);
});

e2e('a text frame is closed with 1003', async (ctx) => {
  const s = await ctx.server();
  const c = await ctx.connect(s, 1);
  c.ws.send('hello as text');
  assert.equal((await c.waitClose()).code, 1003);
  const d = await ctx.open(s); // before Hello too
  d.ws.send('{"hello":{}}');
  assert.equal((await d.waitClose()).code, 1003);
});

e2e('bad protobuf gets Error 1 and the session stays usable', async (ctx) => {
  const s = await ctx.server();
  const conv = (await createConv(s, 1, 'direct', [2])).conv_id;
  const c = await ctx.connect(s, 1);
  const varint = (n) => { const out = []; while (n > 127) { out.push((n % 128) + 128); n = Math.floor(n / 128); } out.push(n); return Buffer.from(out); };
  const lenField = (tag, b) => Buffer.concat([Buffer.from([tag]), varint(b.length), b]);
  const cases = [
    ['random bytes', Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])],
    ['an empty message (no kind)', Buffer.alloc(0)],
    ['only an unknown field', Buffer.from([0xf8, 0x06, 0x01])], // field 111, varint
    ['a truncated Send', encodeClient({ send: { convId: conv, body: 'cut short', clientMsgId: 'x' } }).subarray(0, 8)],
    ['Send.conv_id with the wrong wire type', Buffer.concat([Buffer.from([0x12, 0x03]), Buffer.from([0x0a, 0x01, 0x41])])],
    ['a length far past the end', Buffer.concat([Buffer.from([0x12]), varint(2 ** 31), Buffer.from([0x00])])],
    ['a body that is not UTF-8', lenField(0x12, Buffer.concat([Buffer.from([0x08]), varint(conv), Buffer.from([0x12, 0x02, 0xc3, 0x28, 0x1a, 0x01, 0x41])]))],
    ['a client_msg_id over 64 bytes', encodeClient({ send: { convId: conv, body: 'b', clientMsgId: 'k'.repeat(65) } })],
    ['an empty Send', encodeClient({ send: { convId: conv, body: '', clientMsgId: 'empty' } })],
  ];
  for (const [what, bytes] of cases) {
    c.sendRaw(bytes);
    const f = await c.next((x) => x.kind === 'error' || x.kind === 'ack', { what: `an answer to ${what}` });
    assert.equal(f.kind, 'error', `${what}: ${JSON.stringify(f)}`);
    assert.equal(f.error.code, 1, `${what}: ${f.error.message}`);
    await c.barrier(); // still answering
  }
  assert.equal(c.closeInfo, null);
  // Unknown fields next to a valid frame are ignored (protobuf rules).
  c.sendRaw(Buffer.concat([encodeClient({ ping: { nonce: 77 } }), Buffer.from([0xf8, 0x06, 0x01])]));
  assert.equal((await c.nextOf('pong')).nonce, 77, 'a ping with an unknown field is still a ping');
  assert.equal((await c.sendMsg(conv, 'after all that', 'ok')).msgId, 1);
  const hist = await c.syncAll(conv);
  assert.equal(hist.messages.length, 1, 'nothing bad was stored');
});

e2e('RFC 6455 basics with ws: ping/pong, close handshake, no subprotocol refused, Pong echoes the nonce', async (ctx) => {
  const s = await ctx.server();
  const c = await ctx.connect(s, 1);
  const payload = Buffer.from('are you there');
  const pong = new Promise((res) => c.ws.once('pong', res));
  c.ws.ping(payload);
  assert.deepEqual(await pong, payload, 'the server answers a WebSocket ping with the same payload');
  c.send({ ping: { nonce: 123456789 } });
  const p = await c.nextOf('pong');
  assert.equal(p.nonce, 123456789);
  assert.ok(Math.abs(p.serverTimeMs - Date.now()) < 60000);
  assert.equal(c.ws.protocol, 'chat.v1', 'the subprotocol is chat.v1');
  c.ws.close(1000, 'bye');
  assert.equal((await c.waitClose()).code, 1000, 'the close handshake echoes 1000');

  await assert.rejects(ctx.open(s, { protocols: [] }), (e) => e.status === 400, 'no chat.v1 subprotocol: 400');
  await assert.rejects(ctx.open(s, { protocols: 'chat.v2' }), (e) => e.status === 400, 'another subprotocol: 400');
});
