// lib.mjs — what the browser test of the web client needs: a real chatd on a
// free loopback port serving the built client (--web-root), with its own temp
// data directory and secret, tokens minted by `chatd token`, Debian's
// chromium driven by playwright-core, and bounded waits.
//
// Environment:
//   CHATD            the chatd binary (default build/chatd)
//   WEB_ROOT         the built client (default: web/ next to the chatd binary,
//                    i.e. $(BUILD)/web as web/web.mk makes it)
//   CHROMIUM         the browser (default /usr/bin/chromium)
//   WEB_SCREENSHOTS  a directory to write screenshots into (make
//                    web-screenshots passes docs/img); none when unset
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../..');
const require = createRequire(path.join(here, 'package.json'));

const abs = (p) => path.resolve(process.cwd(), p);
export const CHATD = process.env.CHATD ? abs(process.env.CHATD) : path.join(REPO, 'build/chatd');
export const WEB_ROOT = process.env.WEB_ROOT ? abs(process.env.WEB_ROOT) : path.join(path.dirname(CHATD), 'web');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOTS = process.env.WEB_SCREENSHOTS ? abs(process.env.WEB_SCREENSHOTS) : '';
export const SANITIZED = /san/.test(path.basename(path.dirname(CHATD))); // build-san, build-x-san
/** The bound of every wait, in ms. */
export const WAIT_MS = SANITIZED ? 15000 : 8000;

export const delay = (ms) => new Promise((r) => setTimeout(r, ms));

export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** Poll cond() until it returns a truthy value; bounded. The last value seen
 * is in the error to make a failure readable. */
export async function until(cond, what, { timeout = WAIT_MS, every = 50 } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    last = await cond();
    if (last) return last;
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)?.slice(0, 500)})`);
    }
    await delay(every);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A free loopback port below the kernel's range for outgoing connections,
 * for nodes that are restarted on their port: a port from listen(0) is in
 * that range, and a connection could take it while the node is down. */
async function fixedFreePort() {
  let low = 32768;
  try {
    const v = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (v > 11000) low = v;
  } catch { /* not Linux */ }
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10000 + crypto.randomInt(0, low - 10000);
    const ok = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  return freePort();
}

const live = new Set();
const tempDirs = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
  for (const d of tempDirs) {
    try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ }
  }
});

/** Checks that what the test needs is there, with a message saying how to
 * get it; throws otherwise. */
export function checkPrerequisites() {
  const problems = [];
  if (!fs.existsSync(CHATD)) problems.push(`no chatd binary at ${CHATD} (build it with make)`);
  if (!fs.existsSync(path.join(WEB_ROOT, 'index.html')) || !fs.existsSync(path.join(WEB_ROOT, 'protobuf.min.js'))) {
    problems.push(`no built web client at ${WEB_ROOT} (make builds $(BUILD)/web through web/web.mk)`);
  }
  if (!fs.existsSync(CHROMIUM)) {
    problems.push(`chromium is not installed at ${CHROMIUM}: install Debian's package ` +
      '(`apt-get install chromium`; scripts/install-deps.sh does it) or point CHROMIUM at one');
  }
  if (problems.length) throw new Error(problems.join('; '));
}

/** chatd on a free loopback port, serving WEB_ROOT, with its own data
 * directory and secret. stop() ends it (SIGTERM, then SIGKILL if it hangs);
 * restart() brings it back on the same port and data. */
export class Chatd {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-web-'));
    tempDirs.add(this.dir);
    this.secretFile = path.join(this.dir, 'secret');
    fs.writeFileSync(this.secretFile, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    this.proc = null;
    this.port = 0;
    this.log = '';
    this.extraArgs = []; // more chatd flags
  }

  get base() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    let lastErr;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await this.spawn(this.port || await freePort());
        return this;
      } catch (e) {
        lastErr = e;
        if (!/in use|bind/i.test(e.message)) break;
        await delay(200);
      }
    }
    throw lastErr;
  }

  spawn(port) {
    const args = ['--data', path.join(this.dir, 'data'), '--listen', `127.0.0.1:${port}`,
      '--secret-file', this.secretFile, '--web-root', WEB_ROOT, ...(this.extraArgs || [])];
    const proc = spawn(CHATD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    live.add(proc);
    this.exited = new Promise((resolve) => proc.on('exit', (code, signal) => { live.delete(proc); resolve({ code, signal }); }));
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => { this.log = (this.log + d).slice(-200000); });
    proc.stdout.setEncoding('utf8');
    let out = '';
    const ready = new Promise((resolve, reject) => {
      proc.stdout.on('data', (d) => {
        out += d;
        if (/chatd listening on http:\/\/127\.0\.0\.1:\d+/.test(out)) resolve();
      });
      proc.on('error', reject);
      this.exited.then((e) => reject(new Error(`chatd exited before listening (${e.code ?? e.signal}): ${this.log.slice(-2000)}`)));
    });
    return withTimeout(ready, WAIT_MS, 'chatd to listen').then(() => { this.port = port; }, (e) => {
      proc.kill('SIGKILL');
      throw e;
    });
  }

  /** SIGTERM and wait; throws unless chatd exits 0 (ASan reports included). */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    let e;
    try {
      e = await withTimeout(this.exited, WAIT_MS, 'chatd to exit after SIGTERM');
    } catch (err) {
      proc.kill('SIGKILL');
      await this.exited;
      throw err;
    }
    if (e.code !== 0 || /Sanitizer|runtime error:/.test(this.log)) {
      throw new Error(`chatd did not stop cleanly (code ${e.code}, signal ${e.signal}): ${this.log.slice(-3000)}`);
    }
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** A token for user `uid`, minted (once per uid and ttl) by `chatd token`
   * as the page tells a person to. */
  token(uid, ttl = 3600) {
    const key = `${uid}/${ttl}`;
    this.tokens ||= new Map();
    if (!this.tokens.has(key)) this.tokens.set(key, this.mint(uid, ttl));
    return this.tokens.get(key);
  }

  mint(uid, ttl) {
    return execFileSync(CHATD, ['token', '--secret-file', this.secretFile, '--user', String(uid), '--ttl', String(ttl)],
      { encoding: 'utf8' }).trim();
  }

  /** A REST call as `uid`; resolves { status, json }. */
  async api(uid, method, urlPath, body) {
    const res = await fetch(`${this.base}/api/v1${urlPath}`, {
      method,
      headers: { Authorization: `Bearer ${this.token(uid)}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(WAIT_MS),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : null };
  }

  cleanup() {
    fs.rmSync(this.dir, { recursive: true, force: true });
    tempDirs.delete(this.dir);
  }
}

/** Debian's chromium, headless, with the flags this machine needs (no
 * sandbox as root, no GPU, and nothing that calls home: the network is
 * closed). Playwright gives it a fresh, empty profile directory. */
export async function launchBrowser() {
  const { chromium } = require('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

/** Save a screenshot of `page` as NAME.png when WEB_SCREENSHOTS is set. */
export async function screenshot(page, name) {
  if (!SCREENSHOTS) return;
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), timeout: WAIT_MS });
}

/** A three-node chatd cluster on loopback for the failover test: every node
 * on its own free HTTP and cluster ports, with its own temp data directory;
 * one JWT secret (tokens work on every node) and one cluster secret; short
 * Raft timeouts; --client-urls listing every node and --web-root on all.
 * kill(i) SIGKILLs node i, startNode(i) brings it back on the same ports and
 * data, stop() ends every node (SIGTERM, then SIGKILL). */
export class ChatdCluster {
  constructor(n = 3, { heartbeatMs = 50, electionMs = 300 } = {}) {
    this.n = n;
    this.heartbeatMs = heartbeatMs;
    this.electionMs = electionMs;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-web-cluster-'));
    tempDirs.add(this.dir);
    this.secretFile = path.join(this.dir, 'secret');
    fs.writeFileSync(this.secretFile, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    this.clusterSecretFile = path.join(this.dir, 'cluster.secret');
    fs.writeFileSync(this.clusterSecretFile, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    this.nodes = []; // 1-based: { id, http, peer, proc, exited, log }
  }

  base(i) { return `http://127.0.0.1:${this.nodes[i].http}`; }

  async start() {
    const ports = new Set();
    while (ports.size < 2 * this.n) ports.add(await fixedFreePort());
    const list = [...ports];
    for (let i = 1; i <= this.n; i++) this.nodes[i] = { id: i, http: list[2 * i - 2], peer: list[2 * i - 1], proc: null, log: '' };
    await Promise.all(this.nodes.slice(1).map((nd) => this.startNode(nd.id)));
    await this.waitLeaders();
    return this;
  }

  startNode(i) {
    const nd = this.nodes[i];
    const peers = this.nodes.slice(1).map((x) => `${x.id}=127.0.0.1:${x.peer}`).join(',');
    const urls = this.nodes.slice(1).map((x) => `http://127.0.0.1:${x.http}`).join(',');
    const args = ['--node-id', String(i), '--peers', peers, '--client-urls', urls,
      '--cluster-secret-file', this.clusterSecretFile, '--raft-heartbeat-ms', String(this.heartbeatMs),
      '--raft-election-ms', String(this.electionMs), '--data', path.join(this.dir, `n${i}`),
      '--listen', `127.0.0.1:${nd.http}`, '--secret-file', this.secretFile, '--web-root', WEB_ROOT];
    const proc = spawn(CHATD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    nd.proc = proc;
    live.add(proc);
    nd.exited = new Promise((resolve) => proc.on('exit', (code, signal) => { live.delete(proc); resolve({ code, signal }); }));
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => { nd.log = (nd.log + d).slice(-200000); });
    proc.stdout.setEncoding('utf8');
    let out = '';
    const ready = new Promise((resolve, reject) => {
      proc.stdout.on('data', (d) => {
        out += d;
        if (/chatd listening on http:\/\/127\.0\.0\.1:\d+/.test(out)) resolve();
      });
      proc.on('error', reject);
      nd.exited.then((e) => reject(new Error(`node ${i} exited before listening (${e.code ?? e.signal}): ${nd.log.slice(-2000)}`)));
    });
    return withTimeout(ready, WAIT_MS, `node ${i} to listen`);
  }

  /** GET /api/v1/cluster of node i, or null (down, slow). */
  async status(i) {
    try {
      const res = await fetch(`${this.base(i)}/api/v1/cluster`, { signal: AbortSignal.timeout(1000) });
      return res.ok ? await res.json() : null;
    } catch {
      return null;
    }
  }

  /** Until every shard has a leader among the nodes that are up, as node
   * `from` (default: the first live one) sees it. */
  async waitLeaders(from = 0) {
    const up = this.nodes.slice(1).filter((nd) => nd.proc && nd.proc.exitCode === null && nd.proc.signalCode === null);
    const at = from || up[0].id;
    const alive = new Set(up.map((nd) => nd.id));
    await until(async () => {
      const st = await this.status(at);
      return st?.shards?.length && st.shards.every((s) => alive.has(s.leader) && (s.leader !== at || s.ready !== false));
    }, `a leader for every shard (seen from node ${at})`, { timeout: WAIT_MS * 2 });
  }

  kill(i) {
    const nd = this.nodes[i];
    nd.proc.kill('SIGKILL');
    return withTimeout(nd.exited, WAIT_MS, `node ${i} to die`);
  }

  /** SIGTERM every node still running and wait; SIGKILL after WAIT_MS.
   * Throws when a node's log has a sanitizer report. */
  async stop() {
    await Promise.all(this.nodes.slice(1).map(async (nd) => {
      const proc = nd.proc;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      try {
        await withTimeout(nd.exited, WAIT_MS, `node ${nd.id} to exit`);
      } catch {
        proc.kill('SIGKILL');
        await nd.exited;
      }
    }));
    const bad = this.nodes.slice(1).filter((nd) => /Sanitizer|runtime error:/.test(nd.log));
    if (bad.length) throw new Error(`sanitizer reports: ${bad.map((nd) => `node ${nd.id}: ${nd.log.slice(-3000)}`).join('\n')}`);
  }

  token(uid, ttl = 3600) {
    return execFileSync(CHATD, ['token', '--secret-file', this.secretFile, '--user', String(uid), '--ttl', String(ttl)],
      { encoding: 'utf8' }).trim();
  }

  cleanup() {
    fs.rmSync(this.dir, { recursive: true, force: true });
    tempDirs.delete(this.dir);
  }
}
