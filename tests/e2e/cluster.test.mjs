// Real-process fault tests of a three-node chatd cluster (issue 6, "Tests in
// make test"; docs/cluster.md). Each test starts its own cluster
// (lib/cluster.mjs: three chatd on loopback, a TCP proxy on every node link),
// puts a steady load of WebSocket senders on it (six users, one device each,
// spread over the nodes, writing to six group conversations with
// client_msg_ids and retrying until acked), injects one fault, heals it, and
// then checks (finish() in lib/cluster.mjs):
//   - every acked message is stored exactly once, at its acked msg_id, on
//     every node (REST history from each node), in the same order, msg_ids
//     dense from 1, nothing stored that was not sent;
//   - every device received each conversation in msg_id order with no gap
//     (live Msg frames, and Sync after each reconnect);
//   - scripts/cluster_check.py finds the committed logs equal;
//   - every node stops cleanly on SIGTERM and `chatlog verify` passes on all
//     three data directories.
// The failover time (fault -> first ack of a write to each affected shard,
// sent through a surviving node) is printed as a diagnostic, and every test
// ends with one line "summary [tag]: ..." (failover times, what was
// repaired or installed, messages, duration).
//
// The storage tests run chatd with --segment-bytes 16384 and pad the message
// bodies, so that a few seconds of load leave several sealed, compressed
// segments (<base>.zlog + <base>.idx) in the shards that hold the test
// conversations.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { SANITIZED, delay, until } from './lib/harness.mjs';
import {
  ClusterHarness, CHATLOG, SLOW, setupLoad, acksAfter, finish, failoverProbe, run,
} from './lib/cluster.mjs';

const TIMEOUT = SANITIZED ? 150000 : 60000;
/** Acks of the load to wait for between steps. */
const STEP = SANITIZED ? 60 : 150;
/** The smallest roll size chatd takes, and bytes added to every message
 * body (about 40 records per 16 KiB segment). */
const SEGMENT_BYTES = 16384;
const PAD = 300;
const SMALL_SEGMENTS = { flags: { 'segment-bytes': SEGMENT_BYTES }, load: { pad: PAD } };

/** opts: tag (for the summary line), load (setupLoad options), the rest
 * for ClusterHarness. */

async function scenario(t, opts, fn) {
  const { tag, load: loadOpts = {}, ...hopts } = opts;
  const h = new ClusterHarness({ log: (m) => t.diagnostic(m), ...hopts });
  h.summary = []; // short notes for the summary line
  const t0 = Date.now();
  let load = null;
  try {
    await h.start();
    load = await setupLoad(h, { log: (m) => h.note(m), ...loadOpts });
    await acksAfter(load.ledger, STEP, 'before the fault');
    await fn(h, load);
    const r = await finish(h, load, t);
    if (r.unanswered) h.summary.push(`${r.unanswered} Send(s) unanswered for ${8 * SLOW} s`);
    t.diagnostic(`summary [${tag}]: ${[...h.summary, `${r.acked} acked, ${r.stored} stored on every node, ` +
      `${((Date.now() - t0) / 1000).toFixed(1)} s`].join('; ')}`);
  } catch (e) {
    try { e.message = `${e.message}\n${h.stderrTails()}`; } catch { /* read-only */ }
    throw e;
  } finally {
    if (load) for (const s of load.senders) await s.close().catch(() => {});
    await h.shutdown().catch(() => {});
  }
}

/** Shards that have a test conversation: shard -> first conv in it. */
function convOfShard(load) {
  const m = new Map();
  for (const c of load.convIds) if (!m.has(load.shardOf.get(c))) m.set(load.shardOf.get(c), c);
  return m;
}

/** Kill-style fault on the leader of conv 0's shard: returns the victim, and
 * the probes' failover times (ms) for every shard it led that holds a test
 * conversation. `fault` performs the fault on node id. */
async function faultLeader(t, h, load, what, fault) {
  const leaders = await h.waitReady();
  const shard = load.shardOf.get(load.convIds[0]);
  const victim = leaders[shard];
  const via = h.ids().find((i) => i !== victim);
  const affected = [...convOfShard(load)].filter(([sh]) => leaders[sh] === victim);
  h.note(`${what}: node ${victim}, leader of shards ${leaders.map((l, sh) => (l === victim ? sh : null)).filter((x) => x !== null)}`);
  const since = Date.now();
  await fault(victim);
  const others = h.ids().filter((i) => i !== victim);
  const [times, elected] = await Promise.all([
    Promise.all(affected.map(([sh, conv], k) =>
      failoverProbe(h, load.ledger, conv, via, since, `${what.replace(/\W+/g, '-')}-${sh}-${k}`))),
    // Raft's part alone: until the other nodes agree on a new ready leader.
    Promise.all(affected.map(async ([sh]) => {
      for (let i = 0; i < 2000 && Date.now() - since < 30000 * SLOW; i++) {
        const l = await h.readyLeader(sh, others);
        if (l && l !== victim) return Date.now() - since;
        await delay(10);
      }
      return -1;
    })),
  ]);
  t.diagnostic(`failover time after ${what} of node ${victim} (fault -> first ack of a write sent through node ${via}): ` +
    affected.map(([sh], k) => `shard ${sh} ${times[k]} ms (new leader ready after ${elected[k]} ms)`).join(', '));
  h.summary.push(`failover after ${what} of node ${victim}: ` +
    affected.map(([sh], k) => `shard ${sh} ${times[k]} ms (leader ${elected[k]} ms)`).join(', '));
  return { victim, via, times };
}

test('cluster: SIGKILL of a shard leader under load, then restart', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, { tag: 'sigkill' }, async (h, load) => {
    const { victim } = await faultLeader(t, h, load, 'SIGKILL', (id) => h.kill(id));
    await acksAfter(load.ledger, STEP, 'with the leader dead');
    await h.restart(victim);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after the restart');
  });
});

test('cluster: SIGSTOP of a leader longer than the election timeout, then SIGCONT', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, { tag: 'sigstop' }, async (h, load) => {
    const { victim } = await faultLeader(t, h, load, 'SIGSTOP', (id) => h.sigstop(id));
    await acksAfter(load.ledger, STEP, 'with the leader stopped');
    await delay(1000 * SLOW); // well past the election timeout (300-600 ms)
    h.sigcont(victim);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after SIGCONT');
  });
});

test('cluster: a partition isolates one node (a leader), then heals', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, { tag: 'partition' }, async (h, load) => {
    let cutAt = 0;
    let healAt = 0;
    const { victim } = await faultLeader(t, h, load, 'partition', (id) => { cutAt = Date.now(); h.isolate(id); });
    // The majority side goes on; the isolated node acks nothing sent after
    // the cut, and its clients get Error 10 (unavailable) rather than a hang.
    const before = { ...load.ledger.errors };
    await acksAfter(load.ledger, STEP, 'during the partition');
    await delay(6000); // past the 5 s a write waits for a leader (CL_WAIT_MS)
    healAt = Date.now();
    h.heal(victim);
    const unavailable = (load.ledger.errors[10] || 0) - (before[10] || 0);
    t.diagnostic(`during the partition: ${unavailable} Error 10 answers`);
    h.summary.push(`${unavailable} Error 10 answers during the partition`);
    for (const a of load.ledger.acked.values()) {
      if (a.node === victim && a.firstSent > cutAt + 50 && a.at < healAt) {
        assert.fail(`node ${victim} acked ${a.uid}/${a.cmid} (sent ${a.firstSent - cutAt} ms after the cut) while cut off`);
      }
    }
    assert.ok(unavailable > 0, 'clients of the isolated node got Error 10 (unavailable)');
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after healing');
  });
});

/** Wait until every node of `ids` has at least `n` sealed segments in the
 * shard (bounded). */
async function waitSealed(h, ids, shard, n, what) {
  await until(() => {
    h.assertAlive();
    return ids.every((i) => h.node(i).sealed(shard).length >= n);
  }, `${n} sealed segment(s) of shard ${shard} on nodes ${ids} (${what})`, { timeout: 20000 * SLOW, every: 50 });
}

/** Lines of a node's current run that match re (global). */
function logLines(h, id, re) {
  return h.node(id).stderrOfRun().split('\n').filter((l) => re.test(l)).map((l) => l.replace(/^\S+ \w+ /, ''));
}

test('cluster: a node restarted with an empty data directory catches up by whole segments', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, { tag: 'empty-dir', ...SMALL_SEGMENTS }, async (h, load) => {
    // A follower of conv 0's shard: it rejoins as a fresh member.
    const shard = load.shardOf.get(load.convIds[0]);
    const leaders = await h.waitReady();
    const victim = h.ids().find((i) => i !== leaders[shard]);
    const others = h.ids().filter((i) => i !== victim);
    await h.kill(victim);
    await acksAfter(load.ledger, STEP, 'with the node down');
    await waitSealed(h, others, shard, 2, 'to be shipped');
    const t0 = Date.now();
    await h.restart(victim, { wipe: true });
    await acksAfter(load.ledger, STEP, 'after the restart');
    await h.waitReady();
    const ready = Date.now() - t0;
    // It received whole sealed segments (SegmentRequest/SegmentReply), as
    // stored on a peer, before Raft's appends brought the tail.
    const lines = logLines(h, victim, /cluster: shard \d+: installed segment \[\d+, \d+\) from a peer/);
    const m = await h.node(victim).metrics();
    const counted = m['chatd_cluster_segments_total{dir="installed"}'];
    t.diagnostic(`node ${victim}: ${lines.length} segment(s) installed: ${lines.join('; ')}; /metrics installed ${counted}`);
    assert.ok(lines.length > 0, `node ${victim} logged no "installed segment" line; its log:\n${h.node(victim).stderrOfRun().slice(-3000)}`);
    assert.equal(counted, lines.length, 'chatd_cluster_segments_total{dir="installed"} counts the installed segments');
    const mine = lines.filter((l) => l.includes(`shard ${shard}:`));
    assert.ok(mine.length > 0, `segments of shard ${shard} (${h.node(others[0]).sealed(shard).length} sealed on node ${others[0]}) were installed`);
    let sent = 0;
    for (const i of others) sent += (await h.node(i).metrics())['chatd_cluster_segments_total{dir="sent"}'] || 0;
    assert.ok(sent >= lines.length, `the peers count ${sent} segments sent, ${lines.length} installed`);
    // An installed segment is the peer's file byte for byte.
    for (const l of lines) {
      const [, sh, base] = /shard (\d+): installed segment \[(\d+),/.exec(l);
      const name = `${String(base).padStart(20, '0')}.zlog`;
      const own = fs.readFileSync(path.join(h.node(victim).shardDir(Number(sh)), name));
      const same = others.some((i) => {
        const f = path.join(h.node(i).shardDir(Number(sh)), name);
        return fs.existsSync(f) && own.equals(fs.readFileSync(f));
      });
      assert.ok(same, `node ${victim}: shard ${sh} ${name} equals a peer's copy`);
    }
    h.summary.push(`node ${victim} wiped: ${lines.length} segments installed (${mine.length} of shard ${shard}), ready leaders ${ready} ms after its start`);
  });
});

test('cluster: two failovers in quick succession, then both nodes restarted', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, { tag: 'double-failover' }, async (h, load) => {
    const first = await faultLeader(t, h, load, 'SIGKILL (first)', (id) => h.kill(id));
    // The new leader of the same shard, killed before the first is back:
    // the shard has no majority until one of them returns.
    const shard = load.shardOf.get(load.convIds[0]);
    const second = await h.readyLeader(shard, h.upIds());
    assert.ok(second && second !== first.victim, `a new leader of shard ${shard} (got ${second})`);
    await h.kill(second);
    await delay(500 * SLOW);
    const since = Date.now();
    await h.restart(first.victim);
    const third = h.ids().find((i) => i !== first.victim && i !== second);
    const ms = await failoverProbe(h, load.ledger, load.convIds[0], third, since, 'double');
    t.diagnostic(`second failover: shard ${shard} writable ${ms} ms after node ${first.victim} restarted (nodes ${first.victim}, ${third} up)`);
    h.summary.push(`second failover: shard ${shard} writable ${ms} ms after node ${first.victim} restarted`);
    await acksAfter(load.ledger, STEP, 'with one node down');
    await h.restart(second);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after both restarts');
  });
});

/** Wait until no node reports a faulty range, a recovering replica or a
 * failed shard (bounded). */
async function waitRepaired(h, what) {
  const end = Date.now() + 15000 * SLOW;
  for (;;) {
    h.assertAlive();
    const st = await h.statuses();
    const bad = Object.entries(st).flatMap(([i, s]) => (s ? s.shards : [{ shard: '*', down: true }])
      .filter((x) => x.down || x.faulty_ranges || x.recovering || x.failed)
      .map((x) => `node ${i} shard ${x.shard}: ${x.down ? 'no status' : `faulty ${x.faulty_ranges} recovering ${x.recovering} failed ${x.failed}`}`));
    if (!bad.length) return;
    if (Date.now() > end) assert.fail(`${what}: not repaired in ${15000 * SLOW} ms: ${bad.join('; ')}`);
    await delay(100);
  }
}

/** `chatlog verify` on a stopped node's directory must fail: the damage is
 * real (not in bytes nothing checks). */
async function assertVerifyFails(h, id, what) {
  const r = await run(CHATLOG, ['verify', h.node(id).dataDir]);
  assert.notEqual(r.code, 0, `chatlog verify passes on node ${id} after ${what}:\n${r.stdout.slice(-1500)}`);
}

/**
 * Storage damage on two nodes at once, in two shards: node X (a follower of
 * conv 0's shard A) gets a bit flipped, node Y (another node, not the leader
 * of shard B) gets a segment cut short; both are stopped first (so for a
 * moment only one node runs and nothing commits), damaged, and restarted
 * together. Shard A still has intact copies on Y and the third node, shard B
 * on X and the third node, so each shard elects a leader among intact
 * copies while the damaged replica cuts its log at the damage and fetches
 * the rest again (docs/cluster.md, "Storage faults"). sealed: damage a
 * sealed, compressed segment (.zlog); otherwise the active segment (.log).
 * With only one shard holding test conversations (B = A), Y is damaged only
 * after X has been repaired: two damaged copies of one shard leave no
 * majority of intact ones.
 */
async function damageTwoNodes(t, h, load, { sealed }) {
  const shards = [...convOfShard(load).keys()];
  const A = load.shardOf.get(load.convIds[0]);
  const B = shards.find((sh) => sh !== A) ?? A;
  const leaders = await h.waitReady();
  const X = h.ids().find((i) => i !== leaders[A]);
  const Y = h.ids().find((i) => i !== X && i !== leaders[B]);
  if (sealed) {
    await waitSealed(h, [X], A, 2, 'to flip a bit in');
    await waitSealed(h, [Y], B, 2, 'to cut short');
  } else {
    await acksAfter(load.ledger, STEP, 'to fill the segments');
  }
  /** A segment file of a stopped node: the k-th sealed .zlog (sealed), or
   * the active .log; k < 0 counts from the end. */
  const pick = (id, shard, k) => {
    const segs = sealed ? h.node(id).sealed(shard) : h.node(id).segments(shard).filter((g) => g.files.has('log'));
    const g = segs[k < 0 ? segs.length + k : k];
    return path.join(h.node(id).shardDir(shard), `${g.name}.${sealed ? 'zlog' : 'log'}`);
  };
  const flip = async () => {
    await h.kill(X);
    // Sealed: the second segment, so that the first stays intact and the
    // cut falls in the middle of the log. Active: the newest file.
    const f = pick(X, A, sealed ? 1 : -1);
    const buf = fs.readFileSync(f);
    const pos = Math.floor(buf.length * (sealed ? 0.5 : 0.4));
    buf[pos] ^= 0x10;
    fs.writeFileSync(f, buf);
    h.note(`node ${X}: flipped bit 4 of byte ${pos} of ${path.relative(h.root, f)} (${buf.length} bytes)`);
    flippedBase = Number(path.basename(f).slice(0, 20));
    await assertVerifyFails(h, X, 'the bit flip');
    return `node ${X} shard ${A}: bit flipped in ${path.basename(f)}`;
  };
  const cut = async () => {
    await h.kill(Y);
    const f = pick(Y, B, sealed ? 0 : -1);
    const size = fs.statSync(f).size;
    const to = Math.floor(size * 0.6) + 3;
    fs.truncateSync(f, to);
    h.note(`node ${Y}: truncated ${path.relative(h.root, f)} from ${size} to ${to} bytes`);
    if (sealed) await assertVerifyFails(h, Y, 'the cut');
    return `node ${Y} shard ${B}: ${path.basename(f)} cut from ${size} to ${to} bytes`;
  };
  let flippedBase = 0;
  const t0 = Date.now();
  const what = [];
  if (B !== A) {
    what.push(await flip(), await cut());
    await Promise.all([h.restart(X), h.restart(Y)]);
  } else {
    h.note(`every test conversation is in shard ${A}: the two nodes are damaged one after the other`);
    what.push(await flip());
    await h.restart(X);
    await waitRepaired(h, `node ${X} after the bit flip`);
    what.push(await cut());
    await h.restart(Y);
  }
  await waitRepaired(h, `nodes ${X} and ${Y} after the damage`);
  await h.waitReady();
  const repairedMs = Date.now() - t0;
  h.note(`repaired: no faulty, recovering or failed shard, every shard has a ready leader`);
  // The cut and re-fetch (server/cluster.c cut_damage, or an unreadable
  // batch under a good sidecar): logged with what was dropped.
  const dropped = (id, shard) => logLines(h, id, new RegExp(`cluster: shard ${shard}: .*dropping records`));
  const dx = dropped(X, A);
  const dy = dropped(Y, B);
  const installed = [X, Y].map((i) => `node ${i} ${logLines(h, i, /installed segment/).length}`).join(', ');
  t.diagnostic(`${what.join('; ')}; node ${X} logged: ${dx.join(' | ') || '-'}; node ${Y} logged: ${dy.join(' | ') || '-'}; ` +
    `segments installed at start: ${installed}`);
  assert.ok(dx.length > 0, `node ${X} logged no "dropping records" for shard ${A}:\n${h.node(X).stderrOfRun().slice(-2500)}`);
  // A cut in the active segment's tail is a torn tail (the records are
  // simply missing and come again by appends); a cut sealed segment is damage.
  if (sealed) assert.ok(dy.length > 0, `node ${Y} logged no "dropping records" for shard ${B}:\n${h.node(Y).stderrOfRun().slice(-2500)}`);
  // Where node X cut, against where the flipped segment begins: the records
  // before it are intact and need not be fetched again (reported when the
  // cut is lower: server/cluster.c cuts at 0 when log_batch_each fails,
  // since that delivers no batch at all on an error).
  const cutAt = Number(/dropping records (\d+)/.exec(dx[0])[1]);
  if (cutAt < flippedBase) t.diagnostic(`node ${X} cut shard ${A} at ${cutAt}, below the damaged segment's base ${flippedBase}`);
  await acksAfter(load.ledger, STEP, 'after the repair');
  h.note(`${STEP} acks after the repair`);
  h.summary.push(`${what.join(', ')}; repaired, all shards ready after ${repairedMs} ms; ` +
    `dropped: ${[...dx, ...dy].map((l) => l.replace(/^.*?(shard \d+).*dropping (records \d+\.\.\d+).*$/, '$1 $2')).join(', ')}`);
}

test('cluster: damaged sealed segments on two nodes (a bit flipped in a .zlog, another shard\'s segment cut short) are dropped and fetched again', {
  timeout: TIMEOUT,
}, async (t) => {
  await scenario(t, { tag: 'sealed-damage', ...SMALL_SEGMENTS }, (h, load) => damageTwoNodes(t, h, load, { sealed: true }));
});

test('cluster: damage in the active segment on two nodes (a bit flipped, another shard\'s tail cut) is repaired from the others', {
  timeout: TIMEOUT,
}, async (t) => {
  await scenario(t, { tag: 'active-damage' }, (h, load) => damageTwoNodes(t, h, load, { sealed: false }));
});
