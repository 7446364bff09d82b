// store.test.mjs — the web client's bookkeeping (web/store.js) and the
// reconnect schedule (web/conn.js) under Node, without a browser: the rules
// that keep a conversation free of duplicates and gaps, the pending → acked
// replacement, unread counts, ticks, backoff, and the order in which a
// client tries a cluster's nodes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Conversation, Store, TICK } from '../../web/store.js';
import { backoffDelay, wsUrlFor, BACKOFF_MAX_MS, ChatSocket, nodeOrder, originOf, wsUrlOf } from '../../web/conn.js';

const ME = 1;
const msg = (id, sender = 2, extra = {}) => ({ convId: 7, msgId: id, senderId: sender, body: `m${id}`, ts: 1000 + id, clientMsgId: '', ...extra });
const ids = (c) => c.timeline().held.map((m) => m.msgId);

function conv(lastMsgId = 0, extra = {}) {
  const c = new Conversation(7, ME);
  c.applyState({ kind: 'direct', members: [1, 2], lastMsgId, lastReadMsgId: 0, unread: 0, ...extra });
  return c;
}

test('a tail sync places the window below the newest page', () => {
  const c = conv(120);
  assert.equal(c.placeTail(50), 70);
  assert.equal(c.lo, 71);
  assert.equal(c.hi, 70);
  assert.equal(c.needsSync(), true);
  c.addMessages(Array.from({ length: 50 }, (_, i) => msg(71 + i)));
  assert.equal(c.hi, 120);
  assert.equal(c.needsSync(), false);
  assert.equal(c.hasOlder(), true);
  // A REST page going back extends the window downwards.
  c.addMessages(Array.from({ length: 70 }, (_, i) => msg(70 - i)));
  assert.equal(c.lo, 1);
  assert.equal(c.hasOlder(), false);
  assert.deepEqual(ids(c), Array.from({ length: 120 }, (_, i) => i + 1));
});

test('duplicates from Sync and live Msg meeting are held once', () => {
  const c = conv(3);
  c.placeTail(50);
  assert.equal(c.addMessages([msg(1), msg(2), msg(3)]).length, 3);
  assert.equal(c.addMessages([msg(3), msg(2)]).length, 0);
  assert.equal(c.addMessages([msg(4), msg(4)]).length, 1);
  assert.deepEqual(ids(c), [1, 2, 3, 4]);
});

test('a message past a hole asks for a Sync from the last contiguous msg_id', () => {
  const c = conv(2);
  c.placeTail(50);
  c.addMessages([msg(1), msg(2)]);
  c.addMessages([msg(5)]);
  assert.equal(c.hi, 2);
  assert.equal(c.needsSync(), true, 'msgs 3 and 4 are missing');
  c.addMessages([msg(3), msg(4)]);
  assert.equal(c.hi, 5);
  assert.equal(c.needsSync(), false);
});

test('a pending message is replaced by its Ack, or by the stored message from a Sync', () => {
  const c = conv(0);
  c.placeTail(50);
  c.addPending('k1', 'hello', '', 10);
  c.addPending('k2', 'again', '', 11);
  assert.deepEqual(c.timeline().pending.map((p) => p.clientMsgId), ['k1', 'k2']);
  const m = c.ack({ clientMsgId: 'k1', convId: 7, msgId: 1, ts: 99 });
  assert.equal(m.body, 'hello');
  assert.equal(c.ack({ clientMsgId: 'k1', convId: 7, msgId: 1, ts: 99 }), null, 'a repeated Ack changes nothing');
  // The Ack of k2 was lost with the connection; the Sync after the reconnect
  // brings the stored message, which settles the pending one.
  c.addMessages([msg(2, ME, { clientMsgId: 'k2', body: 'again' })]);
  assert.equal(c.pending.size, 0);
  assert.deepEqual(ids(c), [1, 2]);
  assert.equal(c.unread, 0, 'one\'s own messages are never unread');
});

test('unread counts only what is new past what the Welcome counted', () => {
  const c = conv(10, { lastReadMsgId: 7, unread: 3 });
  c.placeTail(50);
  c.addMessages(Array.from({ length: 10 }, (_, i) => msg(i + 1)));
  assert.equal(c.unread, 3, 'the tail sync brings nothing new');
  c.addMessages([msg(11), msg(11), msg(12, ME)]);
  assert.equal(c.unread, 4);
  c.setMyRead(12);
  assert.equal(c.unread, 0);
  c.addMessages([msg(13)]);
  c.receipt({ userId: ME, kind: 'READ', upToMsgId: 13 }); // read on another device
  assert.equal(c.unread, 0);
  assert.equal(c.lastReadMsgId, 13);
});

test('ticks: sent, delivered to every other member, read by every other member', () => {
  const c = new Conversation(7, ME);
  c.applyState({ kind: 'group', members: [1, 2, 3], lastMsgId: 0 });
  assert.equal(c.tick(5), TICK.SENT);
  c.receipt({ userId: 2, kind: 'DELIVERED', upToMsgId: 5 });
  assert.equal(c.tick(5), TICK.SENT, 'user 3 does not have it yet');
  c.receipt({ userId: 3, kind: 'READ', upToMsgId: 9 });
  assert.equal(c.tick(5), TICK.DELIVERED, 'READ implies DELIVERED');
  c.receipt({ userId: 2, kind: 'READ', upToMsgId: 5 });
  assert.equal(c.tick(5), TICK.READ);
  assert.equal(c.tick(6), TICK.SENT, 'user 2 is at 5');
  c.receipt({ userId: 2, kind: 'DELIVERED', upToMsgId: 1 });
  assert.equal(c.tick(5), TICK.READ, 'positions only move forward');
});

test('typing expires locally; presence resets at each Welcome', () => {
  const c = conv(0);
  c.setTyping(2, true, 1000, 8000);
  assert.deepEqual(c.typingNow(5000), [2]);
  assert.deepEqual(c.typingNow(9001), []);
  c.setTyping(ME, true, 1000);
  assert.deepEqual(c.typingNow(1001), [], 'my own typing is not shown');

  const s = new Store();
  s.welcome({ userId: 1, conversations: [{ convId: 7, kind: 'direct', members: [1, 2], lastMsgId: 0 }] });
  s.setPresence({ userId: 2, state: 'ONLINE', lastSeenMs: 0 });
  assert.equal(s.presence.get(2).state, 'ONLINE');
  s.setPresence({ userId: 2, state: 'OFFLINE', lastSeenMs: 5000 });
  s.welcome({ userId: 1, conversations: [{ convId: 7, kind: 'direct', members: [1, 2], lastMsgId: 0 }] });
  assert.deepEqual(s.presence.get(2), { state: 'OFFLINE', lastSeenMs: 5000 });
  assert.equal(s.conv(7).peer(), 2);
});

test('backoff doubles up to its cap, with jitter in the upper half', () => {
  assert.equal(backoffDelay(0, () => 0), 250);
  assert.equal(backoffDelay(0, () => 1), 500);
  assert.equal(backoffDelay(3, () => 1), 4000);
  assert.equal(backoffDelay(30, () => 1), BACKOFF_MAX_MS);
  assert.equal(backoffDelay(30, () => 0), BACKOFF_MAX_MS / 2);
});

test('the WebSocket URL follows the page origin', () => {
  assert.equal(wsUrlFor({ protocol: 'http:', host: '127.0.0.1:8080' }), 'ws://127.0.0.1:8080/ws');
  assert.equal(wsUrlFor({ protocol: 'https:', host: 'chat.example.org' }), 'wss://chat.example.org/ws');
});

test('the nodes of a cluster: own origin first, then the ones after it in client_urls', () => {
  const urls = ['http://127.0.0.1:8081', 'http://127.0.0.1:8082/', 'http://127.0.0.1:8083/chat'];
  assert.deepEqual(nodeOrder('http://127.0.0.1:8082', urls), ['http://127.0.0.1:8082', 'http://127.0.0.1:8083', 'http://127.0.0.1:8081']);
  assert.deepEqual(nodeOrder('http://127.0.0.1:8081', urls), ['http://127.0.0.1:8081', 'http://127.0.0.1:8082', 'http://127.0.0.1:8083']);
  // A page served by an origin not in the list still starts at its own.
  assert.deepEqual(nodeOrder('http://localhost:9000', urls.slice(0, 1)), ['http://localhost:9000', 'http://127.0.0.1:8081']);
  assert.deepEqual(nodeOrder('http://x:1', []), ['http://x:1']);
  assert.deepEqual(nodeOrder('http://x:1', ['ftp://y', 'nonsense', 'http://x:1', 'HTTP://X:1/']), ['http://x:1']);
  assert.equal(originOf('https://chat.example.org:443/'), 'https://chat.example.org');
  assert.equal(wsUrlOf('https://chat.example.org'), 'wss://chat.example.org/ws');
  assert.equal(wsUrlOf('http://127.0.0.1:8082'), 'ws://127.0.0.1:8082/ws');
});

test('the socket moves to the next node after each failure; the backoff grows per round through the list', () => {
  const tried = [];
  class FakeWs {
    constructor(url) { this.url = url; this.readyState = 0; tried.push(this); }
    close() { this.readyState = 3; }
  }
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = FakeWs;
  const states = [];
  const urls = ['ws://n1/ws', 'ws://n2/ws', 'ws://n3/ws'];
  const sock = new ChatSocket({ urls, token: 't', deviceId: 'd', types: {}, win: {}, onState: (st, info) => states.push({ st, ...info }) });
  try {
    sock.connect();
    for (let i = 0; i < 6; i++) {
      tried.at(-1).onclose({ code: 1006, reason: '' });
      sock.reconnectNow();
    }
    assert.deepEqual(tried.map((w) => w.url), ['n1', 'n2', 'n3', 'n1', 'n2', 'n3', 'n1'].map((n) => `ws://${n}/ws`));
    const waits = states.filter((x) => x.st === 'waiting');
    assert.deepEqual(waits.map((x) => x.url), ['n2', 'n3', 'n1', 'n2', 'n3', 'n1'].map((n) => `ws://${n}/ws`));
    // Round 0 (three attempts) waits at most 500 ms, round 1 at least 500.
    const now = Date.now();
    for (const x of waits.slice(0, 3)) assert.ok(x.retryAt - now <= 500, `round 0: ${x.retryAt - now}`);
    for (const x of waits.slice(3)) assert.ok(x.retryAt - now >= 450, `round 1: ${x.retryAt - now}`);
    assert.equal(sock.url, 'ws://n1/ws');
    // A new list keeps the node in use.
    sock.setUrls(['ws://n3/ws', 'ws://n1/ws']);
    assert.equal(sock.url, 'ws://n1/ws');
  } finally {
    sock.stop();
    globalThis.WebSocket = saved;
  }
});

test('a conversation state older than what was seen does not reset the unread count', () => {
  const c = conv(5, { lastReadMsgId: 5, unread: 0 });
  c.placeTail(50);
  c.addMessages([msg(6), msg(7)]);
  assert.equal(c.unread, 2);
  c.applyState({ last_msg_id: 6, last_read_msg_id: 5, unread: 1 }); // a REST answer from before msg 7
  assert.equal(c.unread, 2);
  c.applyState({ lastMsgId: 8, lastReadMsgId: 5, unread: 3 }); // a newer Welcome
  assert.equal(c.unread, 3);
  assert.equal(c.lastMsgId, 8);
  assert.equal(c.needsSync(), true);
});
