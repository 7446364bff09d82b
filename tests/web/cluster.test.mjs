// cluster.test.mjs — the web client and a three-node chatd cluster (issue 6,
// docs/web.md "Several nodes"): two people sign in on node 1's page and
// talk; node 1 is SIGKILLed, one message going out right then; both pages
// move to another node by themselves (the status line names it), send
// and receive there, every message exactly once and in the same order on
// both sides, read ticks still coming; an attachment uploaded after the
// failover goes to the new node (CORS and the page's CSP); node 1 comes
// back and nothing changes for the pages.
//
// The nodes run with short Raft timeouts (heartbeat 50 ms, election 300 ms)
// so a failover takes well under a second. Every wait is bounded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ChatdCluster, checkPrerequisites, launchBrowser, until, WAIT_MS } from './lib.mjs';

const A = 1;
const B = 2;

let cluster;
let browser;
let pageA, pageB;
let direct = 0;
const pageErrors = [];
const consoleErrors = [];

before(async () => {
  checkPrerequisites();
  cluster = await new ChatdCluster(3, { heartbeatMs: 50, electionMs: 300 }).start();
  browser = await launchBrowser();
  for (const who of ['A', 'B']) {
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 640 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.on('pageerror', (e) => pageErrors.push(`${who}: ${e.message}`));
    page.on('console', (m) => {
      // Connections refused by the dead node are expected; anything else
      // (a CORS or CSP refusal above all) is not.
      const t = m.text();
      if (m.type() === 'error' && !/ERR_CONNECTION_REFUSED|WebSocket connection to .* failed/.test(t)) consoleErrors.push(`${who}: ${t}`);
    });
    if (who === 'A') pageA = page;
    else pageB = page;
  }
});

after(async () => {
  // Everything started here is stopped here, whatever happened above.
  await browser?.close().catch(() => {});
  let err;
  try { await cluster?.stop(); } catch (e) { err = e; }
  cluster?.cleanup();
  if (err) throw err;
});

const shown = (page) => page.$$eval('#message-list .msg', (els) => els.map((e) => ({
  body: e.querySelector('.body')?.textContent ?? e.querySelector('.file-name')?.textContent ?? '',
  msgId: Number(e.dataset.msgId || 0),
  own: e.classList.contains('own'),
  tick: e.querySelector('.ticks')?.dataset.tick || '',
})));

const status = (page) => page.$eval('#conn-status', (e) => ({ state: e.dataset.state, node: e.dataset.node, text: e.textContent }));

async function signIn(page, token) {
  await page.goto(cluster.base(1) + '/');
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', token);
  await page.click('#signin-button');
  await page.waitForSelector('#conn-status[data-state=ready]');
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

/** Until both pages show exactly `want` (bodies, in this order), every
 * message acked and held once; returns both lists. */
async function bothShow(want, what) {
  const lists = [];
  for (const [who, page] of [['A', pageA], ['B', pageB]]) {
    const l = await until(async () => {
      const x = await shown(page);
      return x.length === want.length && x.every((m) => m.msgId) && x;
    }, `${who} to show ${what}`, { timeout: WAIT_MS * 2 });
    assert.deepEqual(l.map((m) => m.body), want, `${who}: the messages, once each, in order`);
    assert.deepEqual(l.map((m) => m.msgId), want.map((_, i) => i + 1), `${who}: dense msg_ids, no duplicate`);
    lists.push(l);
  }
  return lists;
}

test('a 3-node cluster, chromium and the built client are there', () => {
  checkPrerequisites();
});

test('both sign in on node 1; the page knows the three nodes and says which one it is on', async () => {
  await signIn(pageA, cluster.token(A));
  await signIn(pageB, cluster.token(B));
  const host1 = new URL(cluster.base(1)).host;
  for (const page of [pageA, pageB]) {
    const st = await status(page);
    assert.equal(st.node, cluster.base(1));
    assert.equal(st.text, `connected to ${host1}`);
  }
});

test('they talk on node 1', async () => {
  await pageA.click('#new-conv summary');
  await pageA.check('#new-conv-form input[value=direct]');
  await pageA.fill('#new-members', String(B));
  await pageA.click('#new-conv-form button[type=submit]');
  await pageA.waitForSelector('#pane-conv:not([hidden])');
  direct = Number(await pageA.getAttribute('#conv-list .conv.active', 'data-conv-id'));
  assert.ok(direct > 0);
  await send(pageA, 'one');
  await pageB.waitForSelector(`#conv-list .conv[data-conv-id="${direct}"]`);
  await pageB.click(`#conv-list .conv[data-conv-id="${direct}"]`);
  await send(pageB, 'two');
  await bothShow(['one', 'two'], 'the first two messages');
  await until(async () => (await shown(pageA)).filter((m) => m.own).every((m) => m.tick === 'read'), 'A\'s message read by B');
});

test('node 1 is killed as A sends: both pages move to another node and go on, exactly once, in order', async () => {
  await send(pageA, 'at the kill');
  await cluster.kill(1);
  const moved = {};
  for (const [who, page] of [['A', pageA], ['B', pageB]]) {
    moved[who] = await until(async () => {
      const st = await status(page);
      return st.state === 'ready' && st.node !== cluster.base(1) && st;
    }, `${who} to reconnect to another node by itself`, { timeout: WAIT_MS * 2 });
    assert.equal(moved[who].text, `connected to ${new URL(moved[who].node).host}`);
    assert.ok([cluster.base(2), cluster.base(3)].includes(moved[who].node), moved[who].node);
  }
  // Writes may wait for the new leaders (or be refused with unavailable and
  // retried by the page with the same client_msg_id).
  await send(pageA, 'after 1');
  await until(async () => (await shown(pageB)).some((m) => m.body === 'after 1'), 'B to get A\'s first message after the kill', { timeout: WAIT_MS * 2 });
  await send(pageB, 'after 2');
  await until(async () => (await shown(pageA)).some((m) => m.body === 'after 2'), 'A to get B\'s message after the kill', { timeout: WAIT_MS * 2 });
  await send(pageA, 'after 3');
  await bothShow(['one', 'two', 'at the kill', 'after 1', 'after 2', 'after 3'], 'every message once after the failover');
  await until(async () => (await shown(pageA)).filter((m) => m.own).every((m) => m.tick === 'read'),
    'A\'s messages to show read by B (receipts through the new nodes)', { timeout: WAIT_MS * 2 });
  await until(async () => (await shown(pageB)).filter((m) => m.own).every((m) => m.tick === 'read'),
    'B\'s message to show read by A', { timeout: WAIT_MS * 2 });
});

test('after the failover an attachment goes to the node in use and the other side shows it', async () => {
  const base = (await status(pageA)).node;
  await pageA.setInputFiles('#attach-input', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('failover notes\n') });
  const link = await until(() => pageB.evaluate(() => {
    const a = [...document.querySelectorAll('#message-list .msg')].at(-1)?.querySelector('a.media-file');
    return a && { name: a.querySelector('.file-name')?.textContent, size: a.querySelector('.file-size')?.textContent, href: a.href };
  }), 'B to show the file as a link (its HEAD answered across origins)', { timeout: WAIT_MS * 2 });
  assert.deepEqual([link.name, link.size], ['notes.txt', '15 B']);
  assert.ok(link.href.startsWith(`${base}/media/`), `stored on the node A uploaded to: ${link.href}`);
  const got = await pageB.evaluate(async (href) => (await fetch(href)).text(), link.href);
  assert.equal(got, 'failover notes\n');
});

test('node 1 comes back: nothing changes for the pages', async () => {
  const before = { A: await status(pageA), B: await status(pageB) };
  const listA = await shown(pageA);
  await cluster.startNode(1);
  await cluster.waitLeaders(1);
  await send(pageB, 'after the restart');
  const want = [...listA.map((m) => m.body), 'after the restart'];
  await bothShow(want, 'the message sent after node 1 came back');
  for (const [who, page] of [['A', pageA], ['B', pageB]]) {
    const st = await status(page);
    assert.deepEqual([st.state, st.node], ['ready', before[who].node], `${who} stays where it is`);
  }
});

test('no script errors, no CORS or CSP refusals', () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleErrors, []);
});
