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
// sent through a surviving node) is printed as a diagnostic.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { SANITIZED, delay } from './lib/harness.mjs';
import {
  ClusterHarness, SLOW, setupLoad, acksAfter, finish, failoverProbe,
} from './lib/cluster.mjs';

const TIMEOUT = SANITIZED ? 150000 : 60000;
// Tests that fail on a known, reported bug are skipped with the bug named
// (remove the skip once fixed); CLUSTER_KNOWN_BUGS=1 runs them anyway.
const KNOWN_BUGS = process.env.CLUSTER_KNOWN_BUGS === '1';
const knownBug = (text) => (KNOWN_BUGS ? false : `known bug, reported to the lead: ${text} (CLUSTER_KNOWN_BUGS=1 runs it)`);
/** Acks of the load to wait for between steps. */
const STEP = SANITIZED ? 60 : 150;

async function scenario(t, opts, fn) {
  const h = new ClusterHarness({ log: (m) => t.diagnostic(m), ...opts });
  let load = null;
  try {
    await h.start();
    load = await setupLoad(h, { log: (m) => h.note(m) });
    await acksAfter(load.ledger, STEP, 'before the fault');
    await fn(h, load);
    await finish(h, load, t);
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
  return { victim, via, times };
}

test('cluster: SIGKILL of a shard leader under load, then restart', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, {}, async (h, load) => {
    const { victim } = await faultLeader(t, h, load, 'SIGKILL', (id) => h.kill(id));
    await acksAfter(load.ledger, STEP, 'with the leader dead');
    await h.restart(victim);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after the restart');
  });
});

test('cluster: SIGSTOP of a leader longer than the election timeout, then SIGCONT', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, {}, async (h, load) => {
    const { victim } = await faultLeader(t, h, load, 'SIGSTOP', (id) => h.sigstop(id));
    await acksAfter(load.ledger, STEP, 'with the leader stopped');
    await delay(1000 * SLOW); // well past the election timeout (300-600 ms)
    h.sigcont(victim);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after SIGCONT');
  });
});

test('cluster: a partition isolates one node (a leader), then heals', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, {}, async (h, load) => {
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

test('cluster: a node restarted with an empty data directory catches up', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, {}, async (h, load) => {
    // A follower of conv 0's shard: it rejoins as a fresh member.
    const leaders = await h.waitReady();
    const victim = h.ids().find((i) => i !== leaders[load.shardOf.get(load.convIds[0])]);
    await h.kill(victim);
    await acksAfter(load.ledger, STEP, 'with the node down');
    const t0 = Date.now();
    await h.restart(victim, { wipe: true });
    await acksAfter(load.ledger, STEP, 'after the restart');
    await h.waitReady();
    t.diagnostic(`node ${victim} back with an empty directory; ready leaders ${Date.now() - t0} ms after its start`);
  });
});

test('cluster: two failovers in quick succession, then both nodes restarted', {
  timeout: TIMEOUT,
  skip: knownBug('a retried Send whose first attempt reached the old leader is stored twice after a failover ' +
    '(idempotency key not known on the new leader until the old term\'s entry is applied)'),
}, async (t) => {
  await scenario(t, {}, async (h, load) => {
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
    await acksAfter(load.ledger, STEP, 'with one node down');
    await h.restart(second);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'with all nodes back');
  });
});

// (6) of issue 6 wants a bit flipped in a *sealed* segment. chatd has no
// setting for the segment size (the engine's log_options.segment_bytes is
// fixed at its 64 MiB default in server/srv.c; only `chatlog gen` takes
// --segment-size), so a test would have to write 64 MiB into one shard to
// seal a segment. Not faked here: skipped until chatd grows a segment size
// setting (then: flip a bit inside a .zlog/.log that is not the active one).
test('cluster: a bit flipped in a sealed segment of one node', {
  skip: 'TODO(issue 6, case 6): chatd has no --segment-size setting, so no sealed segment exists in a test-sized log',
}, () => {});

/** The active (newest) segment file of a shard in a data directory. */
function activeSegment(dataDir, shard) {
  const d = path.join(dataDir, `shard-${String(shard).padStart(4, '0')}`);
  const segs = fs.readdirSync(d).filter((f) => /^\d{20}\.(z?log)$/.test(f)).sort();
  return path.join(d, segs[segs.length - 1]);
}

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
    if (Date.now() > end) assert.fail(`${what}: not repaired in 15 s: ${bad.join('; ')}`);
    await delay(100);
  }
}

test('cluster: a bit flipped in the middle of one node\'s segment is repaired from the others', {
  timeout: TIMEOUT,
  skip: knownBug('a node restarted with mid-log damage exits with code 3 ("log write for Raft refused: shard has ' +
    'unrepaired damage ... stopping") instead of fetching the range from its peers'),
}, async (t) => {
  await scenario(t, {}, async (h, load) => {
    await acksAfter(load.ledger, STEP * 2, 'to fill the segments');
    const shard = load.shardOf.get(load.convIds[0]);
    const leaders = await h.waitReady();
    const x = h.ids().find((i) => i !== leaders[shard]); // a follower
    await h.kill(x);
    const f = activeSegment(h.node(x).dataDir, shard);
    const buf = fs.readFileSync(f);
    const pos = Math.floor(buf.length * 0.4);
    buf[pos] ^= 0x10;
    fs.writeFileSync(f, buf);
    h.note(`node ${x}: flipped bit 4 of byte ${pos} of ${path.relative(h.root, f)} (${buf.length} bytes)`);
    await h.restart(x);
    await waitRepaired(h, `node ${x} after the bit flip in shard ${shard}`);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after the repair');
  });
});

test('cluster: a truncated segment on one node (another shard) is caught up from the others', { timeout: TIMEOUT }, async (t) => {
  await scenario(t, {}, async (h, load) => {
    await acksAfter(load.ledger, STEP * 2, 'to fill the segments');
    const shards = [...convOfShard(load).keys()];
    const shard = shards[1] ?? shards[0];
    const leaders = await h.waitReady();
    const y = h.ids().find((i) => i !== leaders[shard]); // a follower
    await h.kill(y);
    const f = activeSegment(h.node(y).dataDir, shard);
    const size = fs.statSync(f).size;
    const cut = Math.floor(size * 0.6) + 3;
    fs.truncateSync(f, cut);
    h.note(`node ${y}: truncated ${path.relative(h.root, f)} from ${size} to ${cut} bytes`);
    await h.restart(y);
    await waitRepaired(h, `node ${y} after the cut in shard ${shard}`);
    await h.waitReady();
    await acksAfter(load.ledger, STEP, 'after the catch-up');
  });
});
