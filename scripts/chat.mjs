#!/usr/bin/env node
// chat.mjs — a tiny terminal client for chatd, for trying the server by hand.
// It uses the same off-the-shelf libraries as the end-to-end tests (ws and
// protobufjs, installed by `npm ci` in tests/e2e).
//
//   node scripts/chat.mjs --token TOKEN --conv CONV_ID [--url ws://127.0.0.1:8080/ws]
//
// Prints the conversation's history (Sync), then every new message; each line
// typed on stdin is sent as a message.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import readline from 'node:readline';
import crypto from 'node:crypto';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../tests/e2e/package.json'));
const WebSocket = require('ws');
const protobuf = require('protobufjs');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) =>
    a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc, []));
if (!args.token || !args.conv) {
  console.error('usage: node scripts/chat.mjs --token TOKEN --conv CONV_ID [--url URL]');
  process.exit(2);
}
const url = args.url || 'ws://127.0.0.1:8080/ws';
const conv = BigInt(args.conv);

const root = await protobuf.load(path.join(here, '../proto/chat.proto'));
const ClientFrame = root.lookupType('chat.v1.ClientFrame');
const ServerFrame = root.lookupType('chat.v1.ServerFrame');
const ws = new WebSocket(url, 'chat.v1');
const send = (f) => ws.send(ClientFrame.encode(ClientFrame.fromObject(f)).finish());
let last = 0n;

const show = (m) => {
  const id = BigInt(m.msgId);
  if (id <= last) return; // already shown (sync and live may meet)
  last = id;
  const t = new Date(Number(m.ts)).toISOString().slice(11, 19);
  console.log(`[${t}] #${id} user ${m.senderId}: ${m.body}${m.mediaUrl ? ' ' + m.mediaUrl : ''}`);
};

ws.on('open', () => send({ hello: { token: args.token, deviceId: 'cli-' + process.pid } }));
ws.on('message', (data) => {
  const f = ServerFrame.toObject(ServerFrame.decode(data), { longs: String, enums: String });
  if (f.welcome) {
    console.log(`signed in as user ${f.welcome.userId}; conversation ${conv}`);
    send({ sync: { convId: conv.toString(), afterMsgId: '0', limit: 500 } });
    ready = true;
    queued.splice(0).forEach(sendLine);
  } else if (f.syncBatch) {
    (f.syncBatch.messages || []).forEach(show);
    if (f.syncBatch.more) send({ sync: { convId: conv.toString(), afterMsgId: last.toString(), limit: 500 } });
  } else if (f.msg && BigInt(f.msg.convId) === conv) {
    show(f.msg);
  } else if (f.ack) {
    console.log(`  (sent as #${f.ack.msgId})`);
  } else if (f.error) {
    console.log(`  error ${f.error.code}: ${f.error.message}`);
  } else if (f.presence) {
    console.log(`  user ${f.presence.userId} is ${f.presence.state}`);
  } else if (f.typing && BigInt(f.typing.convId) === conv) {
    if (f.typing.active) console.log(`  user ${f.typing.userId} is typing...`);
  }
});
ws.on('close', (code, reason) => { console.log(`closed ${code} ${reason}`); process.exit(0); });
ws.on('error', (e) => { console.error(e.message); process.exit(1); });

// Lines typed before the session is up wait for it.
let ready = false;
const queued = [];
const sendLine = (line) => send({ send: { convId: conv.toString(), body: line, clientMsgId: crypto.randomUUID() } });
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  if (ready) sendLine(line); else queued.push(line);
}).on('close', () => setTimeout(() => ws.close(), 500));
