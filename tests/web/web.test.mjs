// web.test.mjs — the web client in a real browser: Debian's chromium,
// headless, driven by playwright-core, against a chatd started here that
// serves the built client (--web-root). Two browser contexts are two people
// (user 1 "A" and user 2 "B", with tokens minted by `chatd token`). The tests
// run in order and build on each other, as one session of two people would:
// sign in, start a conversation, talk, type, read, drop off and come back,
// survive a server restart, scroll back through history, attach an image and
// a file.
//
// Every wait is bounded (lib.mjs WAIT_MS); nothing sleeps to synchronise.
// If chromium is missing the suite fails and says how to install it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { Chatd, checkPrerequisites, launchBrowser, screenshot, until, WAIT_MS } from './lib.mjs';

const A = 1;
const B = 2;
const C = 3;

let server;
let browser;
let ctxA, ctxB;
let pageA, pageB;
let direct = 0; // the conv_id of A and B's direct conversation
const pageErrors = [];

before(async () => {
  checkPrerequisites();
  server = await new Chatd().start();
  browser = await launchBrowser();
  ctxA = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  ctxB = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  pageA = await ctxA.newPage();
  pageB = await ctxB.newPage();
  for (const [name, p] of [['A', pageA], ['B', pageB]]) {
    p.setDefaultTimeout(WAIT_MS);
    p.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  }
});

after(async () => {
  // Everything started here is stopped here, whatever happened above.
  await browser?.close().catch(() => {});
  let err;
  try { await server?.stop(); } catch (e) { err = e; }
  server?.cleanup();
  if (err) throw err;
});

// ---- helpers reading the page ----

/** The open conversation's messages as shown: body, msg_id, state, tick. */
const shown = (page) => page.$$eval('#message-list .msg', (els) => els.map((e) => ({
  body: e.querySelector('.body')?.textContent ?? '',
  msgId: Number(e.dataset.msgId || 0),
  own: e.classList.contains('own'),
  state: e.dataset.state || '',
  tick: e.querySelector('.ticks')?.dataset.tick || '',
})));

const bodies = async (page) => (await shown(page)).map((m) => m.body);

async function signIn(page, token) {
  await page.goto(server.base + '/');
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', token);
  await page.click('#signin-button');
  await page.waitForSelector('#conn-status[data-state=ready]');
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

async function openConv(page, convId) {
  await page.click(`#conv-list .conv[data-conv-id="${convId}"]`);
  await page.waitForFunction((id) => document.querySelector(`#conv-list .conv[data-conv-id="${id}"]`)?.classList.contains('active')
    && !document.getElementById('pane-conv').hidden, convId);
}

/** Records every data-state a message element of #message-list takes, by
 * client_msg_id, so a test can see pending → sent however fast the Ack is. */
async function recordStates(page) {
  await page.evaluate(() => {
    window.__states = {};
    const note = (el) => {
      if (!(el instanceof HTMLElement) || !el.dataset.clientMsgId) return;
      const list = (window.__states[el.dataset.clientMsgId] ||= []);
      const st = el.dataset.msgId ? `${el.dataset.state}:${el.dataset.msgId}` : el.dataset.state;
      if (list[list.length - 1] !== st) list.push(st);
    };
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === 'attributes') note(r.target);
        for (const n of r.addedNodes || []) note(n);
      }
    }).observe(document.getElementById('message-list'), { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state', 'data-msg-id'] });
  });
}

/** A small RGB PNG (w × h, a colour gradient), made here: signature, IHDR,
 * one zlib IDAT, IEND, each chunk with its CRC-32. */
function makePng(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    const row = y * (w * 3 + 1); // filter byte 0, then the pixels
    for (let x = 0; x < w; x++) {
      raw[row + 1 + x * 3] = Math.round((255 * x) / (w - 1));
      raw[row + 2 + x * 3] = Math.round((200 * y) / (h - 1));
      raw[row + 3 + x * 3] = 230;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** The last message's inline image as the page has it: loaded or not. */
const lastImage = (page) => page.evaluate(() => {
  const img = [...document.querySelectorAll('#message-list .msg')].at(-1)?.querySelector('img.media-img');
  return img ? { src: img.getAttribute('src'), complete: img.complete, w: img.naturalWidth, h: img.naturalHeight } : null;
});

function noDuplicates(list, who) {
  const ids = list.map((m) => m.msgId).filter(Boolean);
  assert.equal(new Set(ids).size, ids.length, `${who}: a msg_id shown twice: ${ids.join(',')}`);
}

// ---- the tests, in order ----

test('chromium, chatd and the built client are there', () => {
  checkPrerequisites(); // the same check as before(), as a test that names the problem
});

test('signs in with a token minted by `chatd token`, and remembers it', async () => {
  await pageA.goto(server.base + '/');
  await pageA.waitForSelector('#signin:not([hidden])');
  assert.match(await pageA.textContent('.help'), /chatd token --secret-file chatd\.secret --user 42/);
  await screenshot(pageA, 'web-signin');

  await pageA.fill('#token', 'not-a-token');
  await pageA.click('#signin-button');
  await pageA.waitForSelector('#signin-error:not([hidden])');

  await signIn(pageA, server.token(A));
  assert.equal(await pageA.textContent('#me-name'), `User ${A}`);
  // Reloading keeps the session: the token is in localStorage.
  await pageA.reload();
  await pageA.waitForSelector('#conn-status[data-state=ready]');
  assert.equal(await pageA.textContent('#me-name'), `User ${A}`);

  await signIn(pageB, server.token(B));
  assert.equal(await pageB.textContent('#me-name'), `User ${B}`);
});

test('creates a direct conversation; messages go both ways, in order, the echo replaced by the acked message', async () => {
  await pageA.click('#new-conv summary');
  await pageA.check('#new-conv-form input[value=direct]');
  await pageA.fill('#new-members', String(B));
  await pageA.click('#new-conv-form button[type=submit]');
  await pageA.waitForSelector('#pane-conv:not([hidden])');
  assert.equal(await pageA.textContent('#conv-title'), `User ${B}`);
  direct = Number(await pageA.getAttribute('#conv-list .conv.active', 'data-conv-id'));
  assert.ok(direct > 0, 'the new conversation is in the list and open');

  await recordStates(pageA);
  await send(pageA, 'hello B');
  const a1 = await until(async () => (await shown(pageA)).find((m) => m.body === 'hello B' && m.msgId === 1 && m.tick === 'sent'),
    'A\'s first message to be acked as msg_id 1');
  assert.equal(a1.own, true);
  const states = await pageA.evaluate(() => Object.values(window.__states));
  assert.deepEqual(states, [['pending', 'sent:1']], 'shown as pending, then replaced in place by the acked message');

  // B has not heard of the conversation until its first message: it appears
  // with an unread count, fetched through REST.
  await pageB.waitForSelector(`#conv-list .conv[data-conv-id="${direct}"] .badge[data-unread="1"]`);
  await openConv(pageB, direct);
  await until(async () => (await bodies(pageB)).join('|') === 'hello B', 'B to show A\'s message');
  await pageB.waitForSelector(`#conv-list .conv[data-conv-id="${direct}"]:not(:has(.badge))`);

  await send(pageB, 'hi A');
  await send(pageB, 'how are you?');
  await until(async () => (await shown(pageB)).filter((m) => m.own && m.msgId).length === 2, 'B\'s two messages acked');
  await send(pageA, 'fine, thanks');
  const want = ['hello B', 'hi A', 'how are you?', 'fine, thanks'];
  for (const [who, page] of [['A', pageA], ['B', pageB]]) {
    const list = await until(async () => {
      const l = await shown(page);
      return l.length === 4 && l.every((m) => m.msgId) && l;
    }, `${who} to show 4 acked messages`);
    assert.deepEqual(list.map((m) => m.body), want, `${who}: order`);
    assert.deepEqual(list.map((m) => m.msgId), [1, 2, 3, 4], `${who}: msg_ids in order`);
    assert.deepEqual(list.map((m) => m.own), who === 'A' ? [true, false, false, true] : [false, true, true, false]);
  }
});

test('typing shows on the other side and goes away', async () => {
  await pageB.fill('#composer-input', '');
  await pageB.type('#composer-input', 'let me th', { delay: 20 });
  await until(async () => (await pageA.textContent('#typing')) === `User ${B} is typing…`, 'A to see B typing');
  assert.equal(await pageA.textContent(`#conv-list .conv[data-conv-id="${direct}"] .conv-preview`), `User ${B} typing…`);
  await screenshot(pageA, 'web-typing');
  // Emptying the box says "stopped".
  await pageB.fill('#composer-input', '');
  await pageB.dispatchEvent('#composer-input', 'input');
  await until(async () => (await pageA.textContent('#typing')) === '', 'A to see B stop typing');
});

test('ticks: ✓ sent, ✓✓ delivered while B looks elsewhere, blue ✓✓ once B opens the conversation', async () => {
  // B creates a group (with user 3) and looks at it instead.
  await pageB.click('#new-conv summary');
  await pageB.check('#new-conv-form input[value=group]');
  await pageB.fill('#new-members', `${C}`);
  await pageB.fill('#new-title', 'Team');
  await pageB.click('#new-conv-form button[type=submit]');
  await until(async () => (await pageB.textContent('#conv-title')) === 'Team', 'B to open the new group');

  await send(pageA, 'are you there?');
  const delivered = await until(async () => (await shown(pageA)).find((m) => m.body === 'are you there?' && m.tick === 'delivered'),
    'A\'s message to show delivered (B\'s device has it, B has not read it)');
  assert.equal(delivered.msgId, 5);
  assert.equal(await pageA.textContent(`#message-list .msg[data-msg-id="5"] .ticks`), '✓✓');
  await pageB.waitForSelector(`#conv-list .conv[data-conv-id="${direct}"] .badge[data-unread="1"]`);

  await openConv(pageB, direct);
  await until(async () => (await shown(pageA)).filter((m) => m.own).every((m) => m.tick === 'read'),
    'every message of A to show read once B opened the conversation');
  const color = await pageA.$eval('#message-list .msg[data-msg-id="5"] .ticks', (e) => getComputedStyle(e).color);
  assert.equal(color, 'rgb(30, 136, 229)', 'read ticks are blue');
});

test('B drops off the network; A sends 3; B comes back and catches up with no duplicates', async () => {
  await ctxB.setOffline(true);
  await pageB.waitForSelector('#conn-status[data-state=offline], #conn-status[data-state=waiting]');
  await pageB.waitForSelector('#conn-banner:not([hidden])');
  await until(async () => /^(offline|last seen)/.test(await pageA.textContent('#conv-sub')), 'A to see B offline');

  const three = ['while you were out 1', 'while you were out 2', 'while you were out 3'];
  for (const t of three) await send(pageA, t);
  await until(async () => (await shown(pageA)).filter((m) => three.includes(m.body) && m.tick === 'sent').length === 3,
    'A\'s 3 messages acked (and not delivered: B is offline)');
  // What B writes meanwhile waits as pending.
  await send(pageB, 'written offline');
  await pageB.waitForSelector('#message-list .msg.own[data-state=pending]');
  await screenshot(pageB, 'web-offline');

  await ctxB.setOffline(false);
  await pageB.waitForSelector('#conn-status[data-state=ready]', { timeout: WAIT_MS * 2 });
  const list = await until(async () => {
    const l = await shown(pageB);
    return l.length === 9 && l.every((m) => m.msgId) && l;
  }, 'B to catch up on the 3 messages and send its pending one');
  noDuplicates(list, 'B');
  assert.deepEqual(list.map((m) => m.msgId), [1, 2, 3, 4, 5, 6, 7, 8, 9], 'B holds every message once, in order, no gap');
  assert.deepEqual(list.slice(5).map((m) => m.body), [...three, 'written offline']);
  await until(async () => (await bodies(pageA)).at(-1) === 'written offline', 'A to get what B wrote offline');
  await until(async () => (await pageA.textContent('#conv-sub')) === 'online', 'A to see B online again');
  await until(async () => (await shown(pageA)).filter((m) => m.own).every((m) => m.tick === 'read'),
    'A\'s 3 messages read (B has the conversation open)');
  const listA = await shown(pageA);
  noDuplicates(listA, 'A');
  assert.deepEqual(listA.map((m) => m.msgId), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  await screenshot(pageA, 'web-conversation');
});

test('both reconnect by themselves after chatd restarts; a message sent meanwhile arrives once', async () => {
  await server.stop();
  await pageA.waitForSelector('#conn-status[data-state=waiting]');
  await pageB.waitForSelector('#conn-status[data-state=waiting]');
  await server.start(); // same port, same data
  // Sent over REST before the pages are back: they get it through Sync.
  const r = await server.api(A, 'POST', `/conversations/${direct}/messages`, { body: 'after the restart', client_msg_id: 'rest-1' });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  for (const [who, page] of [['A', pageA], ['B', pageB]]) {
    await page.waitForSelector('#conn-status[data-state=ready]', { timeout: WAIT_MS * 2 });
    const list = await until(async () => {
      const l = await shown(page);
      return l.some((m) => m.body === 'after the restart') && l;
    }, `${who} to get the message sent while it was disconnected`);
    noDuplicates(list, who);
    assert.deepEqual(list.map((m) => m.msgId), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], `${who}: all 10, once, in order`);
  }
  // Sending works again on the new connections.
  await send(pageB, 'back');
  await until(async () => (await bodies(pageA)).at(-1) === 'back', 'A to get B\'s message after the restart');
});

test('scrolling up loads older pages through REST until the beginning', async () => {
  // A group of A and user 3 with 130 messages, written over REST by user 3.
  const g = await server.api(C, 'POST', '/conversations', { kind: 'group', members: [A], title: 'History' });
  assert.equal(g.status, 201);
  const conv = g.json.conv_id;
  for (let i = 1; i <= 130; i++) {
    const r = await server.api(C, 'POST', `/conversations/${conv}/messages`, { body: `old ${i}`, client_msg_id: `h${i}` });
    assert.equal(r.status, 201);
  }
  // A page opened now (a reload: the token is remembered) knows the group
  // from its Welcome and loads only the newest page of it. The read ticks
  // seen before the reload are kept: this browser remembers the receipt
  // positions it saw (the protocol has no way to ask for them).
  await openConv(pageA, direct);
  const readBefore = (await shown(pageA)).filter((m) => m.own && m.tick === 'read').map((m) => m.msgId);
  assert.ok(readBefore.length >= 6, `A saw B read its messages: ${readBefore}`);
  await pageA.reload();
  await pageA.waitForSelector('#conn-status[data-state=ready]');
  await pageA.waitForSelector(`#conv-list .conv[data-conv-id="${conv}"] .badge[data-unread="130"]`);
  let readAfter;
  await until(async () => {
    readAfter = (await shown(pageA)).filter((m) => m.own && m.tick === 'read').map((m) => m.msgId);
    return readBefore.every((id) => readAfter.includes(id));
  }, 'A\'s read ticks to be read still after the reload').catch((e) => {
    throw new Error(`${e.message}: before ${readBefore}, after ${readAfter}`);
  });
  await openConv(pageA, conv);
  await until(async () => (await shown(pageA)).at(-1)?.body === 'old 130', 'A to show the newest message');
  const first = (await shown(pageA)).length;
  assert.ok(first < 130, `only the newest page is loaded at first (${first})`);
  const atStart = async () => (await pageA.textContent('#history-state')) === 'The beginning of the conversation';
  for (let i = 0; i < 10 && !(await atStart()); i++) {
    const before = (await shown(pageA)).length;
    await pageA.$eval('#messages', (e) => { e.scrollTop = 0; });
    await until(async () => (await shown(pageA)).length > before || atStart(), 'an older page to load');
  }
  await until(async () => (await pageA.textContent('#history-state')) === 'The beginning of the conversation', 'the whole history');
  const list = await shown(pageA);
  assert.deepEqual(list.map((m) => m.msgId), Array.from({ length: 130 }, (_, i) => i + 1), 'every message once, in order');
  assert.equal(list[0].body, 'old 1');
  assert.equal(await pageA.textContent('#conv-title'), 'History');
});

test('attachments: A attaches an image (pending while it uploads) and a file; B sees the image inline and the file as a link', async () => {
  await openConv(pageA, direct);
  await until(async () => (await shown(pageB)).at(-1)?.body === 'back', 'B to hold the direct conversation');
  const png = makePng(160, 96);
  await recordStates(pageA);
  // Hold the upload back a little so that its pending state is on screen.
  let release;
  const held = new Promise((r) => { release = r; });
  await pageA.route('**/api/v1/media', async (route) => { await held; await route.continue(); });
  await pageA.setInputFiles('#attach-input', { name: 'gradient.png', mimeType: 'image/png', buffer: png });
  await pageA.waitForSelector('#message-list .msg.own[data-state=pending] .media-pending');
  assert.match(await pageA.textContent('#message-list .msg.own[data-state=pending] .media-status'), /^Uploading gradient\.png \(.+\)…$/);
  release();
  await until(async () => { const i = await lastImage(pageA); return i && i.complete && i.w === 160 && /^\/media\/[0-9a-f]{64}\?exp=\d+&sig=[0-9a-f]{64}$/.test(i.src) && i; },
    'A\'s image to be acked and shown from its signed URL');
  await pageA.unroute('**/api/v1/media');
  // (Messages of the conversation rendered just after the recording began
  // show up as well, never pending.)
  const states = Object.values(await pageA.evaluate(() => window.__states)).filter((l) => l.includes('pending'));
  assert.equal(states.length, 1);
  assert.equal(states[0][0], 'pending', `the attachment was shown pending first: ${states[0]}`);
  assert.match(states[0][1], /^(sent|delivered|read):12$/, `then replaced by the acked message: ${states[0]}`);

  // B sees it inline, loaded (naturalWidth > 0), with no text.
  const imgB = await until(async () => { const i = await lastImage(pageB); return i && i.complete && i.w > 0 && i; }, 'B to show the image, loaded');
  assert.deepEqual([imgB.w, imgB.h], [160, 96]);
  const bytes = await pageB.evaluate(async (src) => new Uint8Array(await (await fetch(src)).arrayBuffer()).length, imgB.src);
  assert.equal(bytes, png.length, 'the signed URL serves the uploaded bytes');
  assert.equal((await shown(pageB)).at(-1).body, '');

  // Any other file is a download link with its name and size.
  const text = Buffer.from('hello notes\n');
  await pageA.setInputFiles('#attach-input', { name: 'notes.txt', mimeType: 'text/plain', buffer: text });
  const link = await until(() => pageB.evaluate(() => {
    const a = [...document.querySelectorAll('#message-list .msg')].at(-1)?.querySelector('a.media-file');
    return a && { name: a.querySelector('.file-name')?.textContent, size: a.querySelector('.file-size')?.textContent, href: a.getAttribute('href'), download: a.getAttribute('download') };
  }), 'B to show the file as a link');
  assert.deepEqual([link.name, link.size, link.download], ['notes.txt', '12 B', 'notes.txt']);
  const got = await pageB.evaluate(async (href) => (await fetch(href)).text(), link.href);
  assert.equal(got, text.toString());

  await screenshot(pageB, 'web-attachment');

  // A stored URL that no longer works (here: expired and wrongly signed, as
  // every URL is once its exp has passed): the client mints a fresh one
  // with GET /api/v1/media/<id>/url and shows the image.
  const id = /\/media\/([0-9a-f]{64})/.exec(imgB.src)[1];
  const stale = `/media/${id}?exp=1&sig=${'0'.repeat(64)}`;
  const r = await server.api(A, 'POST', `/conversations/${direct}/messages`, { body: '', media_url: stale, client_msg_id: 'stale-1' });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  await until(async () => (await shown(pageB)).at(-1)?.msgId === r.json.msg_id, 'B to get the message with the stale URL');
  const fresh = await until(async () => { const i = await lastImage(pageB); return i && i.complete && i.w > 0 && i; }, 'B to show the image from a freshly minted URL');
  assert.notEqual(fresh.src, stale);
  assert.match(fresh.src, new RegExp(`^/media/${id}\\?exp=\\d+&sig=[0-9a-f]{64}$`));
  await until(async () => { const i = await lastImage(pageA); return i && i.complete && i.w > 0; }, 'A to show it too');

  // An upload the server refuses: "Not sent" with Retry, which uploads again.
  await pageA.route('**/api/v1/media', (route) => route.fulfill({
    status: 500, contentType: 'application/json', body: JSON.stringify({ error: { code: 13, message: 'disk full' } }),
  }));
  await pageA.setInputFiles('#attach-input', { name: 'again.png', mimeType: 'image/png', buffer: png });
  await pageA.waitForSelector('#message-list .msg.own[data-state=failed]');
  assert.match(await pageA.textContent('#message-list .msg.own[data-state=failed] .failed'), /^Not sent: upload failed: disk full/);
  await pageA.unroute('**/api/v1/media');
  await pageA.click('#message-list .msg.own[data-state=failed] .failed button');
  await until(async () => (await shown(pageB)).at(-1)?.msgId === r.json.msg_id + 1, 'B to get the retried attachment');
  await until(async () => { const i = await lastImage(pageB); return i && i.complete && i.w === 160; }, 'B to show the retried image');
});

test('no script errors on either page', () => {
  assert.deepEqual(pageErrors, []);
});
