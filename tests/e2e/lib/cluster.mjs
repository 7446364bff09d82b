// cluster.mjs — real-process fault tests of a three-node chatd cluster
// (issue 6, docs/cluster.md): a ClusterHarness that runs N chatd processes on
// loopback with a TCP proxy on every node-to-node path, a steady load of
// WebSocket senders that retry with their idempotency keys and check what
// they receive, and the end-of-test checks (every acked message exactly once
// on every node, same order, dense msg_ids; scripts/cluster_check.py;
// `chatlog verify` on every data directory).
//
// Topology. Node i listens for clients on 127.0.0.1:(httpBase + i) (three
// consecutive ports, so scripts/cluster_check.py can find them) and for the
// other nodes on its own cluster port. In node i's --peers, every other node
// j is listed at the port of the proxy i→j, which forwards to j's cluster
// port. Every byte between two nodes therefore crosses a proxy the test
// controls, and isolate(i) cuts all of node i's links in both directions.
//
// A cut stalls rather than resets: the proxy stops reading and writing, as a
// network that drops packets would, so neither side sees a close and Raft's
// timeouts (check quorum, elections) are what notice. Bytes already in
// flight are held and delivered at heal(), as TCP would retransmit them.
// A connection opened during a cut is held unconnected until heal().
//
// Everything this module starts is stopped by ClusterHarness.shutdown() (the
// tests call it in a finally) and, failing that, SIGKILLed at process exit.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  ChatdServer, ChatClient, CHATD, REPO, SANITIZED, WAIT_MS, delay, withTimeout, api, createConv,
  restHistory, metrics,
} from './harness.mjs';

export const CHATLOG = path.join(path.dirname(CHATD), 'chatlog');
/** Slow-down factor of the build under test, for timeouts. */
export const SLOW = SANITIZED ? 2.5 : 1;

const harnesses = new Set();
process.on('exit', () => {
  for (const h of harnesses) h._killSync();
});

// ---- small helpers ----

/** GET a JSON document with a short timeout (a SIGSTOPped node must not hold
 * a test for WAIT_MS). Resolves the parsed body or null. */
export function getJson(port, urlPath, timeout = 1000) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        try { resolve(JSON.parse(Buffer.concat(chunks).toString('utf8'))); } catch { resolve(null); }
      });
      res.on('error', () => resolve(null));
    });
    req.on('error', () => resolve(null));
    req.setTimeout(timeout, () => { req.destroy(); resolve(null); });
  });
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** The first port the kernel hands out for outgoing connections: fixed ports
 * are taken below it, or a connection of any process (the proxies, the test's
 * clients, other tests on the machine) could take one between the check and
 * chatd's bind (seen: "Address already in use" at start). */
function ephemeralLow() {
  try {
    const low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (low > 11000) return low;
  } catch { /* not Linux */ }
  return 32768;
}

/** `count` consecutive free loopback ports base+1..base+count; returns base. */
async function freeRun(count) {
  const top = ephemeralLow() - count - 1;
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 10000 + crypto.randomInt(0, top - 10000);
    let ok = true;
    for (let i = 1; i <= count && ok; i++) ok = await portFree(base + i);
    if (ok) return base;
  }
  throw new Error(`no ${count} consecutive free loopback ports found`);
}

/** Run a program; resolves { code, stdout, stderr } (never rejects on exit status). */
export function run(file, args, { timeout = 120000 } = {}) {
  return new Promise((resolve) => {
    execFile(file, args, { timeout, maxBuffer: 256 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && typeof err.code !== 'number' ? String(err) : '') });
    });
  });
}

// ---- a TCP proxy for one directed node-to-node path ----

export class TcpProxy {
  constructor(name, targetPort) {
    this.name = name;
    this.targetPort = targetPort;
    this.blocked = false;
    this.conns = new Set();
    this.server = net.createServer((s) => this._accept(s));
    this.server.on('error', () => {});
  }

  listen(port) {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject);
        this.port = this.server.address().port;
        resolve(this.port);
      });
    });
  }

  _accept(client) {
    client.setNoDelay(true);
    const c = { client, up: null, held: [], dead: false };
    this.conns.add(c);
    client.on('error', () => {});
    client.on('close', () => this._drop(c));
    if (this.blocked) {
      client.pause();
      c.waiting = true;
    } else {
      this._connectUp(c);
    }
  }

  _connectUp(c) {
    c.waiting = false;
    const up = net.connect(this.targetPort, '127.0.0.1');
    up.setNoDelay(true);
    c.up = up;
    up.on('error', () => {});
    up.on('close', () => this._drop(c));
    this._wire(c, c.client, up);
    this._wire(c, up, c.client);
    c.client.resume();
  }

  _wire(c, src, dst) {
    src.on('data', (chunk) => {
      if (this.blocked) {
        c.held.push([dst, chunk]);
        src.pause();
        return;
      }
      if (!dst.write(chunk)) {
        src.pause();
        dst.once('drain', () => { if (!this.blocked && !c.dead) src.resume(); });
      }
    });
  }

  _drop(c) {
    if (c.dead) return;
    c.dead = true;
    this.conns.delete(c);
    c.client.destroy();
    if (c.up) c.up.destroy();
  }

  /** Stall every connection (existing and new) until heal(). */
  cut() {
    this.blocked = true;
    for (const c of this.conns) {
      c.client.pause();
      if (c.up) c.up.pause();
    }
  }

  heal() {
    if (!this.blocked) return;
    this.blocked = false;
    for (const c of [...this.conns]) {
      if (c.dead) continue;
      if (c.waiting) { this._connectUp(c); continue; }
      for (const [dst, chunk] of c.held.splice(0)) dst.write(chunk);
      c.client.resume();
      c.up.resume();
    }
  }

  /** Reset every connection (both sides see a close). */
  reset() {
    for (const c of [...this.conns]) this._drop(c);
  }

  close() {
    this.reset();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// ---- one chatd of the cluster ----

export class ClusterNode extends ChatdServer {
  constructor({ id, root, secret, flags, httpPort }) {
    super({ dir: root, secret, flags });
    this.id = id;
    this.dataDir = path.join(root, `n${id}`);
    this.secretFile = path.join(root, 'jwt.secret');
    this.httpPort = httpPort;
    this.stopped = false; // SIGSTOPped
    this.expectDown = false; // killed or stopped by the test
  }

  /** Start on this node's fixed HTTP port (retried while a dead
   * predecessor's port or cluster port is still being released). */
  async start() {
    let lastErr;
    for (let attempt = 0; attempt < 30; attempt++) {
      try {
        this.startMark = this.stderrText.length;
        await this._spawn(this.httpPort);
        this.stopped = false;
        this.expectDown = false;
        return this;
      } catch (e) {
        lastErr = e;
        if (!/in use|EADDRINUSE|bind/i.test(e.message)) break;
        await delay(100);
      }
    }
    throw lastErr;
  }

  signal(sig) {
    if (this.running) this.proc.kill(sig);
  }

  /** What the current run (since the last start) wrote to stderr. */
  stderrOfRun() { return this.stderrText.slice(this.startMark || 0); }

  /** /metrics of this node as { name_with_labels: number }. */
  metrics() { return metrics(this); }

  /** The segment files of a shard: [{ base, files: Set of suffixes }] by base. */
  segments(shard) {
    const d = this.shardDir(shard);
    const by = new Map();
    for (const f of fs.readdirSync(d)) {
      const m = /^(\d{20})\.(zlog|idx|log)$/.exec(f);
      if (!m) continue;
      if (!by.has(m[1])) by.set(m[1], { base: Number(m[1]), name: m[1], files: new Set() });
      by.get(m[1]).files.add(m[2]);
    }
    return [...by.values()].sort((a, b) => a.base - b.base);
  }

  /** Sealed and compressed segments of a shard (a .zlog and its .idx). */
  sealed(shard) {
    return this.segments(shard).filter((g) => g.files.has('zlog') && g.files.has('idx'));
  }

  shardDir(shard) { return path.join(this.dataDir, `shard-${String(shard).padStart(4, '0')}`); }

  async stop() {
    this.expectDown = true;
    if (this.running && this.stopped) { this.proc.kill('SIGCONT'); this.stopped = false; }
    return super.stop();
  }
}

// ---- the cluster ----

export class ClusterHarness {
  /**
   * n: nodes (3); shards: shards of each data directory; flags: extra chatd
   * flags for every node; log: a function for progress lines (t.diagnostic).
   */
  constructor({ n = 3, shards = 4, flags = {}, log = () => {} } = {}) {
    this.n = n;
    this.shards = shards;
    this.extraFlags = flags;
    this.log = log;
    this.nodes = new Map(); // id -> ClusterNode
    this.proxies = new Map(); // "i>j" -> TcpProxy
    this.isolated = new Set();
    this.t0 = Date.now();
  }

  ids() { return [...this.nodes.keys()]; }
  node(id) { return this.nodes.get(id); }
  /** Nodes whose process runs and is not stopped. */
  upIds() { return this.ids().filter((i) => this.node(i).running && !this.node(i).stopped); }

  /** Throw if a node exited that the test did not kill or stop. */
  assertAlive() {
    for (const i of this.ids()) {
      const nd = this.node(i);
      if (!nd.running && !nd.expectDown) {
        throw new Error(`node ${i} exited by itself (code ${nd.exit?.code}, signal ${nd.exit?.signal}); its stderr ends:\n${nd.stderrTail(3000)}`);
      }
    }
  }

  note(msg) { this.log(`[${((Date.now() - this.t0) / 1000).toFixed(2)}s] ${msg}`); }

  async start() {
    harnesses.add(this);
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-cluster-'));
    this.secret = crypto.randomBytes(24).toString('hex');
    fs.writeFileSync(path.join(this.root, 'jwt.secret'), this.secret, { mode: 0o600 });
    this.clusterSecretFile = path.join(this.root, 'cluster.secret');
    fs.writeFileSync(this.clusterSecretFile, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    this.httpBase = await freeRun(this.n);
    const ids = [];
    for (let i = 1; i <= this.n; i++) ids.push(i);
    // Fixed ports below the kernel's range for outgoing connections, as for
    // HTTP: a port taken with listen(0) and released could be handed to a
    // proxy, a dial or a second node before chatd binds it (seen: two nodes
    // given the same cluster port).
    const cport = {};
    let cbase = await freeRun(ids.length);
    while (Math.abs(cbase - this.httpBase) <= this.n) cbase = await freeRun(ids.length);
    ids.forEach((i, k) => { cport[i] = cbase + k + 1; });
    this.clusterPorts = cport;
    for (const i of ids) {
      for (const j of ids) {
        if (i === j) continue;
        const p = new TcpProxy(`${i}>${j}`, cport[j]);
        await p.listen(0);
        this.proxies.set(`${i}>${j}`, p);
      }
    }
    for (const i of ids) {
      const peers = ids.map((j) => `${j}=127.0.0.1:${i === j ? cport[j] : this.proxies.get(`${i}>${j}`).port}`).join(',');
      const flags = {
        'log-level': 'info',
        'node-id': i,
        peers,
        'cluster-listen': `127.0.0.1:${cport[i]}`,
        'cluster-secret-file': this.clusterSecretFile,
        shards: this.shards,
        'raft-heartbeat-ms': SANITIZED ? 60 : 50,
        'raft-election-ms': SANITIZED ? 500 : 300,
        ...this.extraFlags,
      };
      this.nodes.set(i, new ClusterNode({ id: i, root: this.root, secret: this.secret, flags, httpPort: this.httpBase + i }));
    }
    await Promise.all(ids.map((i) => this.node(i).start()));
    this.note(`cluster up: http ${this.httpBase + 1}..${this.httpBase + this.n}, data ${this.root}`);
    await this.waitReady();
  }

  token(uid) { return this.node(1).token(uid); }

  // ---- status ----

  async status(id, timeout = 1000) {
    const nd = this.node(id);
    if (!nd.running || nd.stopped) return null;
    return getJson(nd.httpPort, '/api/v1/cluster', timeout);
  }

  async statuses(ids = this.upIds()) {
    const out = {};
    await Promise.all(ids.map(async (i) => { out[i] = await this.status(i); }));
    return out;
  }

  /** The node that leads `shard` and is ready, as it says itself and as
   * every node of `ids` agrees; null if there is none right now. */
  async readyLeader(shard, ids = this.upIds()) {
    const st = await this.statuses(ids);
    let leader = null;
    for (const i of ids) {
      const s = st[i]?.shards?.[shard];
      if (!s) return null;
      if (leader === null) leader = s.leader;
      if (!s.leader || s.leader !== leader) return null;
    }
    const ls = st[leader]?.shards?.[shard];
    if (!ls || ls.role !== 'leader' || !ls.ready) return null;
    return leader;
  }

  /** Leader of shard as seen by any up node (may be stale), or 0. */
  async leaderOf(shard) {
    const st = await this.statuses();
    for (const i of Object.keys(st)) {
      const s = st[i]?.shards?.[shard];
      if (s && s.role === 'leader') return Number(i);
    }
    for (const i of Object.keys(st)) {
      const s = st[i]?.shards?.[shard];
      if (s?.leader) return s.leader;
    }
    return 0;
  }

  /** Every shard has a ready leader that all of `ids` agree on; returns the
   * leaders (shard -> node id). Bounded. */
  async waitReady({ ids, timeout = 15000 * SLOW } = {}) {
    const end = Date.now() + timeout;
    let last = '';
    for (;;) {
      this.assertAlive();
      const use = ids || this.upIds().filter((i) => !this.isolated.has(i));
      const leaders = [];
      let ok = true;
      for (let sh = 0; sh < this.shards && ok; sh++) {
        const l = await this.readyLeader(sh, use);
        if (!l) ok = false;
        leaders.push(l);
      }
      if (ok) return leaders;
      last = JSON.stringify(await this.statuses(use)).slice(0, 1500);
      if (Date.now() > end) throw new Error(`no ready leader for every shard after ${timeout} ms; status: ${last}`);
      await delay(50);
    }
  }

  /** Every up node has applied everything committed: per shard the same
   * commit offset (the leader's) everywhere and applied == commit. Bounded. */
  async waitConverged({ timeout = 20000 * SLOW } = {}) {
    const end = Date.now() + timeout;
    for (;;) {
      this.assertAlive();
      const ids = this.upIds();
      const st = await this.statuses(ids);
      let ok = ids.every((i) => st[i]?.shards?.length === this.shards);
      for (let sh = 0; sh < this.shards && ok; sh++) {
        const commits = ids.map((i) => st[i].shards[sh].commit_offset);
        const ends = ids.map((i) => st[i].shards[sh].end_offset);
        ok = commits.every((c) => c === commits[0]) &&
          ids.every((i) => st[i].shards[sh].applied_offset === commits[0]) &&
          ends.every((e) => e === commits[0]) &&
          ids.some((i) => st[i].shards[sh].role === 'leader' && st[i].shards[sh].ready);
      }
      if (ok) return st;
      if (Date.now() > end) {
        throw new Error(`nodes did not converge in ${timeout} ms: ${JSON.stringify(st).slice(0, 3000)}`);
      }
      await delay(50);
    }
  }

  // ---- faults ----

  async kill(id) {
    const nd = this.node(id);
    nd.expectDown = true;
    if (nd.stopped) nd.stopped = false;
    await nd.kill();
    this.note(`node ${id} SIGKILLed`);
  }

  sigstop(id) {
    this.node(id).signal('SIGSTOP');
    this.node(id).stopped = true;
    this.note(`node ${id} SIGSTOPped`);
  }

  sigcont(id) {
    this.node(id).signal('SIGCONT');
    this.node(id).stopped = false;
    this.note(`node ${id} SIGCONTinued`);
  }

  /** Start a node that is down again; wipe: empty its data directory first
   * (raft-state included: it rejoins as a fresh member). */
  async restart(id, { wipe = false } = {}) {
    const nd = this.node(id);
    if (nd.running) await this.kill(id);
    if (wipe) {
      fs.rmSync(nd.dataDir, { recursive: true, force: true });
      this.note(`node ${id}: data directory emptied`);
    }
    await nd.start();
    this.note(`node ${id} restarted`);
  }

  _proxiesOf(id) {
    return [...this.proxies.entries()].filter(([k]) => k.split('>').map(Number).includes(id)).map(([, p]) => p);
  }

  /** Cut every link of node id, both directions (stall, see the top). */
  isolate(id) {
    this.isolated.add(id);
    for (const p of this._proxiesOf(id)) p.cut();
    this.note(`node ${id} isolated`);
  }

  heal(id) {
    this.isolated.delete(id);
    for (const p of this._proxiesOf(id)) {
      const [a, b] = p.name.split('>').map(Number);
      if (!this.isolated.has(a) && !this.isolated.has(b)) p.heal();
    }
    this.note(`node ${id} healed`);
  }

  // ---- data ----

  /** The shard of a conversation that already holds a message. */
  async shardOf(convId) {
    for (const i of this.ids()) {
      const r = await run(CHATLOG, ['dump', this.node(i).dataDir, '--conv', String(convId), '--limit', '1']);
      const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
      if (line) return JSON.parse(line).shard;
    }
    throw new Error(`no node's log holds a message of ${convId}`);
  }

  /** scripts/cluster_check.py on the live, quiescent cluster (it also runs
   * chatlog verify on every directory). Throws on a difference. */
  async clusterCheck() {
    const r = await run('python3', [path.join(REPO, 'scripts/cluster_check.py'), '--dir', this.root,
      '--build', path.dirname(CHATD), '--nodes', String(this.n), '--http-base', String(this.httpBase)]);
    if (r.code !== 0) throw new Error(`cluster_check.py failed (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
    return r.stdout.trim().split('\n').pop();
  }

  /** `chatlog verify` on every data directory (nodes should be stopped). */
  async verifyAll() {
    const out = [];
    for (const i of this.ids()) {
      const r = await run(CHATLOG, ['verify', this.node(i).dataDir]);
      if (r.code !== 0) {
        throw new Error(`chatlog verify ${this.node(i).dataDir} (node ${i}): exit ${r.code}\n${(r.stdout + r.stderr).slice(-3000)}`);
      }
      out.push(`n${i}: ${r.stdout.trim().split('\n').pop()}`);
    }
    return out;
  }

  /** SIGTERM every node (each must exit 0 without sanitizer reports), close
   * the proxies, remove the temp dir. Throws the first problem after having
   * stopped everything. */
  async shutdown({ keep = false, verify = false } = {}) {
    if (this.down) return null;
    this.down = true;
    const errors = [];
    let verified = null;
    for (const p of this.proxies.values()) p.heal();
    await Promise.all(this.ids().map(async (i) => {
      const nd = this.node(i);
      try { await nd.stop(); } catch (e) { errors.push(new Error(`node ${i}: ${e.message}`)); }
      const san = nd.sanitizerReport();
      if (san) errors.push(new Error(`sanitizer report from node ${i}:\n${san}`));
    }));
    await Promise.all([...this.proxies.values()].map((p) => p.close()));
    if (verify && !errors.length) {
      try { verified = await this.verifyAll(); } catch (e) { errors.push(e); keep = true; }
    }
    if (this.keepOnShutdown) keep = true;
    if (!keep && !process.env.CLUSTER_KEEP) fs.rmSync(this.root, { recursive: true, force: true });
    else this.note(`kept ${this.root}`);
    harnesses.delete(this);
    if (errors.length) throw errors[0];
    return verified;
  }

  _killSync() {
    for (const nd of this.nodes.values()) {
      try { if (nd.running) nd.proc.kill('SIGKILL'); } catch { /* gone */ }
    }
    if (this.root && !process.env.CLUSTER_KEEP && !this.keepOnShutdown) {
      try { fs.rmSync(this.root, { recursive: true, force: true }); } catch { /* best effort */ }
    }
  }

  stderrTails(n = 2500) {
    return this.ids().map((i) => `--- node ${i} (${this.node(i).running ? 'running' : 'down'}), stderr tail ---\n${this.node(i).stderrTail(n)}`).join('\n');
  }
}

// ---- load: WebSocket senders that retry with their keys ----

/** Shared bookkeeping of one test's load. */
export class Ledger {
  constructor() {
    this.sent = new Map(); // "uid/cmid" -> { uid, conv, body, cmid }
    this.acked = new Map(); // "uid/cmid" -> { uid, conv, body, cmid, msgId, at }
    this.problems = [];
    this.errors = {}; // Error code -> count
    this.unanswered = []; // Sends that got no answer within RESEND_MS
    this.ackListeners = [];
  }

  problem(msg) {
    if (this.problems.length < 200) this.problems.push(msg);
  }

  onAck(f) { this.ackListeners.push(f); }

  ack(uid, cmid, msgId, node) {
    const key = `${uid}/${cmid}`;
    const s = this.sent.get(key);
    const prev = this.acked.get(key);
    if (prev) {
      if (prev.msgId !== msgId) this.problem(`${key}: acked as msg ${prev.msgId} and again as msg ${msgId}`);
      return;
    }
    const a = { ...s, msgId, at: Date.now(), node };
    this.acked.set(key, a);
    for (const f of this.ackListeners) f(a);
  }
}

const STALL_MS = 3000 * SLOW; // no frame at all for this long: the node is stuck
const RESEND_MS = 8000 * SLOW; // an unanswered Send is sent again (same key)
const CONNECT_MS = 2000 * SLOW;

/**
 * One user's device sending to some conversations (all of which it is a
 * member of), up to `window` sends in flight, a new one every `gapMs`.
 * Errors and unanswered sends are retried with the same client_msg_id; a
 * closed or stuck connection is replaced (the home node first, then the
 * others) followed by Sync of every conversation and a resend of every
 * unacked message.
 *
 * It also checks what it receives: per conversation, live Msg and SyncBatch
 * messages must come in msg_id order without gaps, except for ids of its own
 * messages (which come as Acks), checked at the end by checkReceived().
 */
export class Sender {
  constructor(h, ledger, { uid, home, convs, prefix, window = 2, gapMs = 25, max = 400, pad = 0 }) {
    Object.assign(this, { h, ledger, uid, home, convs, prefix, window, gapMs, max, pad });
    this.n = 0;
    this.pending = new Map(); // cmid -> { conv, body, lastSent, retryAt }
    this.own = new Set(); // cmids sent by this device
    this.views = new Map(convs.map((c) => [c, { max: 0, seen: [], syncing: false, buffered: [] }]));
    this.c = null;
    this.nodeId = home;
    this.producing = false;
    this.stopped = false;
    this.reconnects = 0;
    this.consecUnavailable = 0;
    this.lastRx = Date.now();
    this.timer = null;
    this.connecting = null;
  }

  async start() {
    await this._reconnect('start', this.home);
    this.producing = true;
    this.timer = setInterval(() => this._tick(), Math.max(5, Math.min(this.gapMs, 50)));
  }

  /** No new messages from now on (retries go on). */
  stopProducing() { this.producing = false; }

  inflight() { return this.pending.size; }

  _device() { return `${this.prefix}-dev`; }

  _tick() {
    if (this.stopped || this.connecting) return;
    const c = this.c;
    const now = Date.now();
    if (!c || c.closeInfo) { this._reconnect('closed', this.nodeId); return; }
    if (now - this.lastRx > STALL_MS) {
      this._reconnect(`no frame for ${now - this.lastRx} ms`, this._nextNode(this.nodeId));
      return;
    }
    // A ping keeps lastRx fresh on a healthy connection.
    if (now - (this.lastPing || 0) > 500) {
      this.lastPing = now;
      try { c.send({ ping: { nonce: 1 } }); } catch { /* closing */ }
    }
    for (const [cmid, p] of this.pending) {
      if (p.retryAt && now >= p.retryAt) {
        this._send(cmid, p);
      } else if (now - p.lastSent > RESEND_MS) {
        // chatd answers every write within about 5 s (docs/cluster.md):
        // a Send unanswered this long on a live connection is reported
        // (finish() and the summary line; not a failure yet, see the report
        // of the cluster tests: seen under ASan after two nodes restarted
        // with damage).
        this.ledger.unanswered.push(`${this.prefix}/${cmid} to conv ${p.conv} on node ${this.nodeId} (attempt ${p.attempts})`);
        this.h.note(`${this.prefix}: ${cmid} (conv ${p.conv}, attempt ${p.attempts}) unanswered for ${now - p.lastSent} ms ` +
          `on node ${this.nodeId}; sent again`);
        this._send(cmid, p);
      }
    }
    if (this.producing && this.n < this.max && this.pending.size < this.window &&
        now - (this.lastNew || 0) >= this.gapMs) {
      this.lastNew = now;
      const conv = this.convs[this.n % this.convs.length];
      const cmid = `${this.prefix}-${this.n}`;
      const body = `u${this.uid} ${this.prefix} #${this.n} ${'x'.repeat(this.n % 40 + this.pad)}`;
      this.n++;
      const p = { conv, body, lastSent: 0, firstSent: now, retryAt: 0 };
      this.pending.set(cmid, p);
      this.own.add(cmid);
      this.ledger.sent.set(`${this.uid}/${cmid}`, { uid: this.uid, conv, body, cmid, firstSent: now, device: this.prefix });
      this._send(cmid, p);
    }
  }

  _send(cmid, p) {
    p.lastSent = Date.now();
    p.retryAt = 0;
    p.attempts = (p.attempts || 0) + 1;
    this._trace(cmid, `send@n${this.nodeId}`);
    try { this.c.send({ send: { convId: p.conv, body: p.body, clientMsgId: cmid } }); } catch { /* reconnect will resend */ }
  }

  /** A short history of one message (attempts, answers), for reports. */
  _trace(cmid, what) {
    const s = this.ledger.sent.get(`${this.uid}/${cmid}`);
    if (s) (s.trace ||= []).push(`+${Date.now() - this.h.t0}:${what}`);
  }

  _nextNode(id) {
    const ids = this.h.ids();
    return ids[(ids.indexOf(id) + 1) % ids.length];
  }

  _onFrames(c) {
    if (c !== this.c) { c.frames = []; return; } // a replaced connection
    this.lastRx = Date.now();
    for (const f of c.take((x) => x.kind !== 'syncBatch' && x.kind !== 'welcome')) {
      if (f.kind === 'ack') {
        const cmid = f.ack.clientMsgId;
        if (!this.own.has(cmid)) { this.ledger.problem(`${this.prefix}: Ack for unknown ${cmid}`); continue; }
        this.consecUnavailable = 0;
        this._trace(cmid, `ack${f.ack.msgId}@n${this.nodeId}`);
        this.ledger.ack(this.uid, cmid, f.ack.msgId, this.nodeId);
        this.pending.delete(cmid);
      } else if (f.kind === 'error') {
        const code = f.error.code;
        this.ledger.errors[code] = (this.ledger.errors[code] || 0) + 1;
        const cmid = f.error.clientMsgId;
        if (!cmid) continue;
        this._trace(cmid, `err${code}@n${this.nodeId}`);
        const p = this.pending.get(cmid);
        if (code === 9) this.ledger.problem(`${this.prefix}: ${cmid} refused as conflict: ${f.error.message}`);
        if (!p) continue;
        p.retryAt = Date.now() + 50 + crypto.randomInt(0, 100);
        if (code === 10 && ++this.consecUnavailable >= 3) {
          // This node cannot reach a leader (minority side): try another.
          this.consecUnavailable = 0;
          this._reconnect('unavailable 3 times', this._nextNode(this.nodeId));
          return;
        }
      } else if (f.kind === 'msg') {
        this._onMsg(f.msg.convId, [f.msg], 'live');
      }
    }
  }

  _onMsg(conv, msgs, how) {
    const v = this.views.get(conv);
    if (!v) return;
    if (how === 'live' && v.syncing) { v.buffered.push(...msgs); return; }
    for (const m of msgs) {
      if (m.msgId <= v.max) continue; // already have it (docs/protocol.md: ignore)
      v.seen.push({ id: m.msgId, after: v.max, how, cmid: m.clientMsgId, sender: m.senderId });
      v.max = m.msgId;
    }
  }

  async _reconnect(why, first) {
    if (this.connecting || this.stopped) return this.connecting;
    this.connecting = (async () => {
      if (this.c) { this.c.ws.terminate(); this.c = null; }
      if (why !== 'start') this.reconnects++;
      const end = Date.now() + 60000 * SLOW;
      let id = first;
      for (let attempt = 0; !this.stopped && Date.now() < end; attempt++) {
        const nd = this.h.node(id);
        if (nd.running && !nd.stopped) {
          let c = null;
          try {
            c = await ChatClient.open(`ws://127.0.0.1:${nd.httpPort}/ws`, { timeout: CONNECT_MS });
            await withTimeout(c.hello(this.h.token(this.uid), this._device()), CONNECT_MS, 'Welcome');
            this.c = c;
            this.nodeId = id;
            this.lastRx = Date.now();
            c.ws.on('message', () => this._onFrames(c));
            for (const conv of this.convs) this.views.get(conv).syncing = true;
            for (const conv of this.convs) await this._sync(c, conv);
            for (const [cmid, p] of this.pending) this._send(cmid, p);
            return;
          } catch (e) {
            this.lastConnectError = e.message;
            if (c) c.ws.terminate();
            this.c = null;
          }
        }
        if (attempt % this.h.n === this.h.n - 1) await delay(100);
        id = this._nextNode(id);
      }
      if (!this.stopped) this.ledger.problem(`${this.prefix}: could not reconnect (${why}): ${this.lastConnectError}`);
    })().finally(() => { this.connecting = null; });
    return this.connecting;
  }

  async _sync(c, conv) {
    const v = this.views.get(conv);
    let after = v.max;
    for (let page = 0; page < 10000; page++) {
      c.send({ sync: { convId: conv, afterMsgId: after, limit: 500 } });
      const b = await c.nextOf('syncBatch', (s) => s.convId === conv, { timeout: CONNECT_MS * 2, what: `SyncBatch of ${conv}` });
      this._onMsg(conv, b.messages, 'sync');
      if (!b.more) break;
      after = b.messages[b.messages.length - 1].msgId;
    }
    v.syncing = false;
    const buf = v.buffered.splice(0);
    this._onMsg(conv, buf, 'live');
  }

  /** Resolves when every message is acked; bounded. */
  async drain(timeout = 40000 * SLOW) {
    this.stopProducing();
    const end = Date.now() + timeout;
    while (this.pending.size || this.connecting) {
      if (Date.now() > end) {
        throw new Error(`${this.prefix}: ${this.pending.size} sends still unacked after ${timeout} ms ` +
          `(node ${this.nodeId}, e.g. ${[...this.pending.keys()].slice(0, 3)})`);
      }
      await delay(20);
    }
  }

  /** A final Sync of every conversation so the view reaches the end. */
  async finalSync() {
    const c = this.c;
    if (!c || c.closeInfo) await this._reconnect('final', this.nodeId);
    for (const conv of this.convs) {
      const v = this.views.get(conv);
      v.syncing = true;
      await this._sync(this.c, conv);
    }
  }

  async close() {
    this.stopped = true;
    clearInterval(this.timer);
    if (this.connecting) await this.connecting.catch(() => {});
    if (this.c) { await this.c.close(); this.c = null; }
  }

  /**
   * What this device received, against the final history of each
   * conversation (conv -> [{msg_id, sender_id, client_msg_id}]): ids only
   * increase, and every id skipped between two received ones is one of this
   * device's own messages (it gets an Ack for those, not a Msg). Returns a
   * list of problems.
   */
  checkReceived(histories) {
    const out = [];
    for (const [conv, v] of this.views) {
      const hist = histories.get(conv);
      for (const s of v.seen) {
        const m = hist[s.id - 1];
        if (!m || m.msg_id !== s.id) { out.push(`${this.prefix}: conv ${conv}: received msg ${s.id}, not in the history`); continue; }
        if (s.cmid !== m.client_msg_id || s.sender !== m.sender_id) {
          out.push(`${this.prefix}: conv ${conv}: msg ${s.id} received as ${s.sender}/${s.cmid}, stored as ${m.sender_id}/${m.client_msg_id}`);
        }
        for (let id = s.after + 1; id < s.id; id++) {
          const g = hist[id - 1];
          if (!(g && g.sender_id === this.uid && this.own.has(g.client_msg_id))) {
            out.push(`${this.prefix}: conv ${conv}: gap: got msg ${s.id} (${s.how}) after ${s.after}; msg ${id} ` +
              `(${g ? `${g.sender_id}/${g.client_msg_id}` : 'missing'}) never arrived`);
            break;
          }
        }
      }
      // After the final Sync the device has reached the end.
      let last = v.max;
      while (last < hist.length && hist[last].sender_id === this.uid && this.own.has(hist[last].client_msg_id)) last++;
      if (last !== hist.length) out.push(`${this.prefix}: conv ${conv}: received up to ${v.max} of ${hist.length}`);
    }
    return out;
  }
}

// ---- one fault scenario: setup, load, checks ----

/**
 * A cluster with `convs` group conversations of users 1..users and one
 * Sender per user (spread over the nodes), ready for a fault. pad: bytes
 * added to every message body, so that a small --segment-bytes seals
 * segments after a few seconds of load.
 */
export async function setupLoad(h, { users = 6, convs = 6, window = 2, gapMs = 25, max = 2000, pad = 0, log } = {}) {
  const ledger = new Ledger();
  const members = [];
  for (let u = 2; u <= users; u++) members.push(u);
  const convIds = [];
  for (let k = 0; k < convs; k++) {
    // Through different nodes: creation is a replicated write too.
    const nd = h.node(h.ids()[k % h.n]);
    convIds.push((await createConvRetry(nd, 1, members, `c${k}`)).conv_id);
  }
  // One message per conversation so that its shard can be found.
  for (const conv of convIds) {
    const r = await postRetry(h, 1, conv, `hello ${conv}`, `seed-${conv}`);
    ledger.sent.set(`1/seed-${conv}`, { uid: 1, conv, body: `hello ${conv}`, cmid: `seed-${conv}` });
    ledger.ack(1, `seed-${conv}`, r.msg_id, 1);
  }
  const shardOf = new Map();
  for (const conv of convIds) shardOf.set(conv, await h.shardOf(conv));
  const senders = [];
  for (let u = 1; u <= users; u++) {
    // Every sender writes to every conversation, with its own order.
    const order = convIds.slice(u % convIds.length).concat(convIds.slice(0, u % convIds.length));
    senders.push(new Sender(h, ledger, { uid: u, home: h.ids()[(u - 1) % h.n], convs: order, prefix: `u${u}`, window, gapMs, max, pad }));
  }
  await Promise.all(senders.map((s) => s.start()));
  if (log) log(`load: ${users} senders on nodes ${senders.map((s) => s.home).join(',')}, conversations ${convIds.map((c) => `${c}@shard${shardOf.get(c)}`).join(' ')}`);
  return { ledger, convIds, shardOf, senders };
}

async function createConvRetry(nd, uid, members, title) {
  let last;
  for (let i = 0; i < 20; i++) {
    try { return await createConv(nd, uid, 'group', members, title); } catch (e) { last = e; await delay(100); }
  }
  throw new Error(`node ${nd.id}: ${last.message}`);
}

/** POST a message over REST, retrying (same key) on 503 and errors, through
 * the nodes in turn; bounded. */
export async function postRetry(h, uid, conv, body, cmid, { timeout = 20000 * SLOW } = {}) {
  const end = Date.now() + timeout;
  let k = 0;
  let last = '';
  while (Date.now() < end) {
    const ids = h.upIds();
    const nd = h.node(ids[k++ % ids.length]);
    try {
      const r = await api(nd, 'POST', `/api/v1/conversations/${conv}/messages`, { token: h.token(uid), body: { body, client_msg_id: cmid } });
      if (r.status === 200 || r.status === 201) return r.json;
      last = `${r.status} ${r.text}`;
    } catch (e) { last = e.message; }
    await delay(50);
  }
  throw new Error(`POST to ${conv} (${cmid}) not acked in ${timeout} ms: ${last}`);
}

/** Wait until `count` more acks have arrived (bounded). */
export function acksAfter(ledger, count, what, timeout = 20000 * SLOW) {
  const target = ledger.acked.size + count;
  const end = Date.now() + timeout;
  return (async () => {
    while (ledger.acked.size < target) {
      if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${count} acks ${what}`);
      await delay(10);
    }
  })();
}

/**
 * The checks after a scenario: load drained, nodes converged, then for
 * every conversation the REST history from every node is identical, dense
 * from 1, holds every acked message exactly once at its acked msg_id and
 * nothing that was not sent; every device received its conversations in
 * order without gaps; cluster_check.py passes; after a clean SIGTERM of every
 * node, `chatlog verify` passes on every data directory.
 */
export async function finish(h, load, t) {
  const { ledger, convIds, senders } = load;
  h.assertAlive();
  for (const i of h.ids()) assert.ok(h.node(i).running && !h.node(i).stopped, `node ${i} is up for the final checks`);
  h.note('final checks: draining the load');
  await Promise.all(senders.map((s) => s.drain()));
  await h.waitReady();
  await h.waitConverged();
  for (const s of senders) await s.finalSync();
  h.note('drained and converged');
  const histories = new Map();
  const problems = [...ledger.problems];
  for (const conv of convIds) {
    let ref = null;
    for (const i of h.ids()) {
      const hist = (await restHistory(h.node(i), 1, conv, 500)).map((m) => ({
        msg_id: m.msg_id, sender_id: m.sender_id, client_msg_id: m.client_msg_id, body: m.body,
      }));
      if (ref === null) { ref = hist; histories.set(conv, hist); continue; }
      if (hist.length !== ref.length) problems.push(`conv ${conv}: node ${i} has ${hist.length} messages, node ${h.ids()[0]} ${ref.length}`);
      const k = hist.findIndex((m, j) => JSON.stringify(m) !== JSON.stringify(ref[j]));
      if (k >= 0) problems.push(`conv ${conv}: node ${i} differs at msg ${k + 1}: ${JSON.stringify(hist[k])} vs ${JSON.stringify(ref[k])}`);
    }
    const seen = new Map();
    ref.forEach((m, j) => {
      if (m.msg_id !== j + 1) problems.push(`conv ${conv}: position ${j} holds msg_id ${m.msg_id} (not dense)`);
      const key = `${m.sender_id}/${m.client_msg_id}`;
      if (seen.has(key)) {
        const a = ledger.acked.get(key);
        const s0 = ledger.sent.get(key);
        problems.push(`conv ${conv} (shard ${load.shardOf.get(conv)}): ${key} stored twice: msg ${seen.get(key)} and msg ${m.msg_id}; ` +
          `acked as msg ${a?.msgId} by node ${a?.node} at +${a ? a.at - h.t0 : '?'} ms, first sent at +${s0?.firstSent - h.t0} ms; ` +
          `sender log: ${(s0?.trace || []).join(' ')}`);
      }
      seen.set(key, m.msg_id);
      const s = ledger.sent.get(key);
      if (!s) problems.push(`conv ${conv}: msg ${m.msg_id} (${key}) was never sent`);
      else if (s.body !== m.body || s.conv !== conv) problems.push(`conv ${conv}: msg ${m.msg_id} (${key}) has another body or conversation`);
    });
  }
  for (const [key, a] of ledger.acked) {
    const hist = histories.get(a.conv);
    const m = hist[a.msgId - 1];
    if (!m || `${m.sender_id}/${m.client_msg_id}` !== key) {
      problems.push(`acked ${key} (msg ${a.msgId} in ${a.conv}) is not at its msg_id: ${JSON.stringify(m)}`);
    }
  }
  for (const s of senders) problems.push(...s.checkReceived(histories));
  const total = [...histories.values()].reduce((n, x) => n + x.length, 0);
  t.diagnostic(`${ledger.acked.size} acked messages, ${total} stored in ${convIds.length} conversations on each of ${h.n} nodes; ` +
    `errors by code ${JSON.stringify(ledger.errors)}; reconnects ${senders.map((s) => s.reconnects).join(',')}`);
  if (ledger.unanswered.length) {
    t.diagnostic(`Sends unanswered for ${RESEND_MS} ms on a live connection: ${ledger.unanswered.join('; ')}`);
  }
  if (problems.length) {
    h.keepOnShutdown = true;
    throw new Error(`${problems.length} problem(s):\n${problems.slice(0, 40).join('\n')}`);
  }
  t.diagnostic(await h.clusterCheck());
  for (const s of senders) await s.close();
  const v = await h.shutdown({ verify: true });
  t.diagnostic(`chatlog verify after SIGTERM: ${v.join('; ')}`);
  return { acked: ledger.acked.size, stored: total, errors: ledger.errors, unanswered: ledger.unanswered.length };
}

/**
 * Failover time: from `since`, POST a message to conv through `via` (a node
 * that stays up), retrying with the same key every 20 ms while the answer is
 * an error, until it is acked. Resolves the ms from `since` to the ack. The
 * message is recorded in the ledger like any other.
 */
export async function failoverProbe(h, ledger, conv, via, since, tag) {
  const cmid = `probe-${tag}`;
  const body = `failover probe ${tag}`;
  ledger.sent.set(`1/${cmid}`, { uid: 1, conv, body, cmid, firstSent: since });
  const end = since + 30000 * SLOW;
  let last = '';
  while (Date.now() < end) {
    try {
      const r = await api(h.node(via), 'POST', `/api/v1/conversations/${conv}/messages`,
        { token: h.token(1), body: { body, client_msg_id: cmid } });
      if (r.status === 200 || r.status === 201) {
        const at = Date.now();
        ledger.ack(1, cmid, r.json.msg_id, via);
        return at - since;
      }
      last = `${r.status} ${r.text}`;
    } catch (e) { last = e.message; }
    await delay(20);
  }
  throw new Error(`failover probe ${tag} to ${conv} via node ${via}: no ack in 30 s: ${last}`);
}
