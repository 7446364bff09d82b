/*
 * Tests of server/raft.c: a few hand-driven scenarios, then the
 * deterministic simulator (raft_sim.c) over many seeds, then proof that the
 * simulator's checker catches broken rules (RAFT_BREAK_*).
 *
 * Seeds: each three-node simulator test runs RAFT_SIM_SEEDS seeds (default
 * below; the five-node one a fifth of that) starting at 1. TEST_SEED=N runs
 * exactly seed N (RAFT_SIM_SEEDS=M with it: M seeds from N). RAFT_SIM_TRACE=1
 * prints every event of the run. A failure prints the seed and the command that
 * replays it.
 */
#include <stdlib.h>
#include <string.h>

#include "raft.h"
#include "raft_sim.h"
#include "test.h"

/* Seeds per three-node simulator profile (three profiles, plus a fifth of
 * this for five nodes): chosen so that the plain and the ASan+UBSan builds
 * together stay well inside a minute. */
#ifndef RAFT_SIM_DEFAULT_SEEDS
#define RAFT_SIM_DEFAULT_SEEDS 1500
#endif

/* ---- hand-driven helpers ----------------------------------------------- */

typedef struct cluster {
    raft_node *n[3];
    raft_outbox ob;
    uint64_t now;
} cluster;

static raft_node *mk_node(uint32_t id, uint32_t shards, uint64_t boot,
                          uint32_t brk)
{
    raft_config c;
    memset(&c, 0, sizeof c);
    c.self = id;
    c.n_nodes = 3;
    c.nodes[0] = 1;
    c.nodes[1] = 2;
    c.nodes[2] = 3;
    c.n_shards = shards;
    c.heartbeat_ms = 30;
    c.election_min_ms = 150;
    c.election_max_ms = 300;
    c.rand_seed = id * 7919;
    c.boot_id = boot;
    c.test_break = brk;
    raft_node *n = NULL;
    ASSERT_OK(raft_node_new(&c, &n));
    return n;
}

static void open_empty(raft_node *n, uint32_t shard)
{
    raft_shard_state st;
    memset(&st, 0, sizeof st);
    ASSERT_OK(raft_shard_open(n, shard, &st, 0));
}

/* Make every persist item of a node durable at once. */
static void persist_all(raft_node *n, raft_outbox *ob)
{
    raft_persist it[8];
    size_t k;
    while ((k = raft_persist_take(n, it, 8)) > 0)
        for (size_t i = 0; i < k; i++)
            ASSERT_OK(raft_persisted(n, it[i].shard, it[i].seq, ob));
}

/* Deliver everything in the outbox (and what that produces) until quiet,
 * persisting immediately. */
static void pump(cluster *c)
{
    for (int round = 0; round < 1000; round++) {
        for (int i = 0; i < 3; i++)
            persist_all(c->n[i], &c->ob);
        if (c->ob.n == 0)
            return;
        raft_outbox in = c->ob;
        raft_outbox_init(&c->ob);
        for (size_t i = 0; i < in.n; i++)
            ASSERT_OK(raft_step(c->n[in.msgs[i].to - 1], c->now, &in.msgs[i],
                                &c->ob));
        raft_outbox_free(&in);
    }
    FAIL("messages never quiesced");
}

static int leader_of(cluster *c, uint32_t shard)
{
    int l = -1;
    for (int i = 0; i < 3; i++) {
        raft_shard_info in;
        ASSERT_OK(raft_shard_info_get(c->n[i], shard, &in));
        if (in.role == RAFT_LEADER)
            l = i;
    }
    return l;
}

static void cluster_init(cluster *c, uint32_t shards)
{
    memset(c, 0, sizeof *c);
    raft_outbox_init(&c->ob);
    for (uint32_t i = 0; i < 3; i++) {
        c->n[i] = mk_node(i + 1, shards, 1, 0);
        for (uint32_t s = 0; s < shards; s++)
            open_empty(c->n[i], s);
    }
}

static void cluster_free(cluster *c)
{
    for (int i = 0; i < 3; i++)
        raft_node_free(c->n[i]);
    raft_outbox_free(&c->ob);
}

/* Tick everyone in 5 ms steps until shard has a leader. */
static int elect(cluster *c, uint32_t shard)
{
    for (int k = 0; k < 400; k++) {
        c->now += 5;
        for (int i = 0; i < 3; i++)
            ASSERT_OK(raft_tick(c->n[i], c->now, &c->ob));
        pump(c);
        int l = leader_of(c, shard);
        if (l >= 0)
            return l;
    }
    FAIL("no leader elected");
}

/* ---- hand-driven tests ------------------------------------------------- */

TEST(raft_elects_and_commits)
{
    cluster c;
    cluster_init(&c, 2);
    int l = elect(&c, 0);
    raft_batch b;
    ASSERT_OK(raft_propose(c.n[l], 0, 5, &b, &c.ob));
    ASSERT_U64_EQ(b.first_offset, 1); /* after the leader's no-op */
    ASSERT_EQ(raft_propose(c.n[(l + 1) % 3], 0, 1, NULL, &c.ob),
              RAFT_ENOTLEADER);
    pump(&c);
    /* One more heartbeat round carries the commit offset to followers. */
    c.now += 40;
    for (int i = 0; i < 3; i++)
        ASSERT_OK(raft_tick(c.n[i], c.now, &c.ob));
    pump(&c);
    for (int i = 0; i < 3; i++) {
        raft_shard_info in;
        ASSERT_OK(raft_shard_info_get(c.n[i], 0, &in));
        ASSERT_U64_EQ(in.commit_offset, 6);
        ASSERT_U64_EQ(in.end_offset, 6);
        ASSERT_U64_EQ(raft_term_at(c.n[i], 0, 3), b.term);
    }
    cluster_free(&c);
}

/* Heartbeats of every shard a node leads leave in one tick, so the
 * transport can send one frame per peer. */
TEST(raft_heartbeats_leave_together)
{
    cluster c;
    cluster_init(&c, 4);
    for (uint32_t s = 0; s < 4; s++)
        elect(&c, s);
    /* Find a node leading at least two shards, or any leader. */
    int counts[3] = {0};
    for (uint32_t s = 0; s < 4; s++)
        counts[leader_of(&c, s)]++;
    int l = 0;
    for (int i = 1; i < 3; i++)
        if (counts[i] > counts[l])
            l = i;
    /* Over 300 ms, every outbox from node l holding heartbeats holds them
     * for all its shards to both peers. */
    int frames = 0;
    for (int k = 0; k < 60; k++) {
        c.now += 5;
        for (int i = 0; i < 3; i++) {
            size_t before = c.ob.n;
            ASSERT_OK(raft_tick(c.n[i], c.now, &c.ob));
            if (i != l || c.ob.n == before)
                continue;
            int per_peer[4] = {0};
            for (size_t m = before; m < c.ob.n; m++)
                if (c.ob.msgs[m].type == RAFT_MSG_APPEND)
                    per_peer[c.ob.msgs[m].to]++;
            for (int p = 1; p <= 3; p++)
                if (p != l + 1)
                    ASSERT_EQ(per_peer[p], counts[l]);
            frames++;
        }
        pump(&c);
    }
    ASSERT_GE(frames, 300 / 30 - 1);
    ASSERT_LE(frames, 300 / 30 + 1);
    cluster_free(&c);
}

/* A vote is answered only once it is durable; a crash before that leaves
 * no trace of it. */
TEST(raft_vote_waits_for_persist)
{
    raft_node *a = mk_node(1, 1, 1, 0), *b = mk_node(2, 1, 1, 0);
    open_empty(a, 0);
    open_empty(b, 0);
    raft_outbox ob, ob2;
    raft_outbox_init(&ob);
    raft_outbox_init(&ob2);
    /* Candidate: its requests wait for its own vote to be durable. */
    ASSERT_OK(raft_tick(a, 1000, &ob));
    ASSERT_EQ(ob.n, 0);
    raft_persist it[2];
    ASSERT_EQ(raft_persist_take(a, it, 2), 1);
    ASSERT(it[0].write_hard_state);
    ASSERT_U64_EQ(it[0].term, 1);
    ASSERT_EQ(it[0].voted_for, 1);
    ASSERT_OK(raft_persisted(a, 0, it[0].seq, &ob));
    ASSERT_EQ(ob.n, 2);
    const raft_msg *req = ob.msgs[0].to == 2 ? &ob.msgs[0] : &ob.msgs[1];
    ASSERT_OK(raft_step(b, 1000, req, &ob2));
    ASSERT_EQ(ob2.n, 0); /* granted, but not durable yet */
    ASSERT_EQ(raft_persist_take(b, it, 2), 1);
    ASSERT_EQ(it[0].voted_for, 1);
    ASSERT_OK(raft_persisted(b, 0, it[0].seq, &ob2));
    ASSERT_EQ(ob2.n, 1);
    ASSERT_EQ(ob2.msgs[0].type, RAFT_MSG_VOTE_RESP);
    ASSERT(ob2.msgs[0].flags & RAFT_MSGF_OK);
    raft_node_free(a);
    raft_node_free(b);
    raft_outbox_free(&ob);
    raft_outbox_free(&ob2);
}

static raft_msg append_msg(uint32_t from, uint32_t to, uint64_t term,
                           uint64_t prev, uint64_t prev_term, uint64_t commit,
                           const raft_batch *b, uint32_t nb)
{
    raft_msg m;
    memset(&m, 0, sizeof m);
    m.type = RAFT_MSG_APPEND;
    m.from = from;
    m.to = to;
    m.term = term;
    m.offset = prev;
    m.log_term = prev_term;
    m.commit = commit;
    m.batches = b;
    m.n_batches = nb;
    m.boot = 1;
    return m;
}

/* A follower with a divergent uncommitted suffix: the mismatch answer names
 * its term and that term's first offset, and the cut is where the terms
 * part — found by term, not by backing off to the commit offset. */
TEST(raft_follower_cuts_by_term)
{
    raft_node *f = mk_node(2, 1, 1, 0);
    /* Follower log: [0,4) t1, [4,6) t2, [6,9) t2, [9,10) t3; term 3. */
    raft_batch fl[] = {{0, 1, 4, 0}, {4, 2, 2, 0}, {6, 2, 3, 0}, {9, 3, 1, 0}};
    raft_shard_state st = {3, 0, fl, 4, 4, 0, NULL, 0};
    ASSERT_OK(raft_shard_open(f, 0, &st, 0));
    raft_outbox ob;
    raft_outbox_init(&ob);
    /* Leader of term 4 whose log is [0,4) t1, [4,6) t2, [6,8) t4 ... probes
     * at 10 with prev_term 4. */
    raft_msg m = append_msg(1, 2, 4, 10, 4, 4, NULL, 0);
    ASSERT_OK(raft_step(f, 10, &m, &ob));
    persist_all(f, &ob);
    ASSERT_EQ(ob.n, 1);
    ASSERT_EQ(ob.msgs[0].type, RAFT_MSG_APPEND_RESP);
    ASSERT_EQ(ob.msgs[0].flags & RAFT_MSGF_OK, 0);
    ASSERT_U64_EQ(ob.msgs[0].hint_term, 3);
    ASSERT_U64_EQ(ob.msgs[0].hint_offset, 9);
    raft_outbox_reset(&ob);
    /* Now the leader sends from 6 (prev term 2 matches) its term-4 batch:
     * the follower cuts at 6 exactly. */
    raft_batch lb[] = {{6, 4, 2, 0}};
    m = append_msg(1, 2, 4, 6, 2, 4, lb, 1);
    ASSERT_OK(raft_step(f, 20, &m, &ob));
    raft_persist it[2];
    ASSERT_EQ(raft_persist_take(f, it, 2), 1);
    ASSERT(it[0].truncate);
    ASSERT_U64_EQ(it[0].truncate_from, 6);
    ASSERT_EQ(it[0].n_batches, 1);
    ASSERT_EQ(ob.n, 0); /* acked only once durable */
    ASSERT_OK(raft_persisted(f, 0, it[0].seq, &ob));
    ASSERT_EQ(ob.n, 1);
    ASSERT(ob.msgs[0].flags & RAFT_MSGF_OK);
    ASSERT_U64_EQ(ob.msgs[0].match, 8);
    raft_shard_info in;
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_U64_EQ(in.end_offset, 8);
    ASSERT_U64_EQ(in.last_term, 4);
    raft_node_free(f);
    raft_outbox_free(&ob);
}

/* A "leader" that asks a follower to replace a committed record trips the
 * always-on check: an error, the shard stops, nothing is cut. */
TEST(raft_never_cuts_committed)
{
    raft_node *f = mk_node(2, 1, 1, 0);
    raft_batch fl[] = {{0, 1, 4, 0}, {4, 2, 2, 0}};
    raft_shard_state st = {2, 0, fl, 2, 6, 0, NULL, 0}; /* all committed */
    ASSERT_OK(raft_shard_open(f, 0, &st, 0));
    raft_outbox ob;
    raft_outbox_init(&ob);
    raft_batch lb[] = {{4, 3, 2, 0}};
    raft_msg m = append_msg(1, 2, 3, 4, 1, 6, lb, 1);
    ASSERT_EQ(raft_step(f, 10, &m, &ob), RAFT_EINVARIANT);
    raft_shard_info in;
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_EQ(in.failed, RAFT_EINVARIANT);
    ASSERT_U64_EQ(in.end_offset, 6);
    ASSERT_EQ(raft_step(f, 20, &m, &ob), RAFT_EFAILED);
    raft_node_free(f);
    raft_outbox_free(&ob);
}

TEST(raft_rejects_malformed_messages)
{
    raft_node *f = mk_node(2, 1, 1, 0);
    open_empty(f, 0);
    raft_outbox ob;
    raft_outbox_init(&ob);
    raft_batch gap[] = {{0, 1, 2, 0}, {3, 1, 1, 0}};
    raft_msg m = append_msg(1, 2, 1, 0, 0, 0, gap, 2);
    ASSERT_EQ(raft_step(f, 1, &m, &ob), RAFT_EPROTO);
    raft_batch future[] = {{0, 5, 1, 0}};
    m = append_msg(1, 2, 1, 0, 0, 0, future, 1); /* batch term > msg term */
    ASSERT_EQ(raft_step(f, 1, &m, &ob), RAFT_EPROTO);
    m = append_msg(7, 2, 1, 0, 0, 0, NULL, 0); /* not a member */
    ASSERT_EQ(raft_step(f, 1, &m, &ob), RAFT_EPROTO);
    m = append_msg(1, 3, 1, 0, 0, 0, NULL, 0); /* not for us */
    ASSERT_EQ(raft_step(f, 1, &m, &ob), RAFT_EPROTO);
    m = append_msg(1, 2, 1, 0, 0, 0, NULL, 0);
    m.shard = 9;
    ASSERT_EQ(raft_step(f, 1, &m, &ob), RAFT_EPROTO);
    raft_batch zero[] = {{0, 1, 0, 0}};
    m = append_msg(1, 2, 1, 0, 0, 0, zero, 1);
    ASSERT_EQ(raft_step(f, 1, &m, &ob), RAFT_EPROTO);
    raft_shard_info in;
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_U64_EQ(in.term, 0);
    ASSERT_EQ(ob.n, 0);
    raft_node_free(f);
    raft_outbox_free(&ob);
}

/* A replica that lost a suffix refuses every vote and never campaigns until
 * it matches a leader again. */
TEST(raft_lost_suffix_neither_votes_nor_campaigns)
{
    raft_node *f = mk_node(2, 1, 5, 0);
    raft_batch fl[] = {{0, 1, 4, 0}};
    raft_shard_state st = {1, 0, fl, 1, 0, 9, NULL, 0}; /* acked up to 9 */
    ASSERT_OK(raft_shard_open(f, 0, &st, 0));
    raft_outbox ob;
    raft_outbox_init(&ob);
    for (uint64_t t = 0; t < 3000; t += 10)
        ASSERT_OK(raft_tick(f, t, &ob));
    persist_all(f, &ob);
    ASSERT_EQ(ob.n, 0);
    raft_msg v;
    memset(&v, 0, sizeof v);
    v.type = RAFT_MSG_VOTE;
    v.from = 3;
    v.to = 2;
    v.term = 2;
    v.offset = 100;
    v.log_term = 1;
    v.boot = 1;
    ASSERT_OK(raft_step(f, 3000, &v, &ob));
    persist_all(f, &ob);
    ASSERT_EQ(ob.n, 1);
    ASSERT_EQ(ob.msgs[0].flags & RAFT_MSGF_OK, 0);
    ASSERT_EQ(ob.msgs[0].reason, RAFT_R_RECOVERING);
    raft_outbox_reset(&ob);
    /* A leader (term 2) that has seen this incarnation sends [4, 9). */
    raft_batch lb[] = {{4, 1, 3, 0}, {7, 2, 2, 0}};
    raft_msg m = append_msg(1, 2, 2, 4, 1, 9, lb, 2);
    m.to_boot = 5;
    m.end = 9;
    ASSERT_OK(raft_step(f, 3010, &m, &ob));
    raft_shard_info in;
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_EQ(in.recovering, 1); /* not durable yet */
    persist_all(f, &ob);
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_EQ(in.recovering, 0);
    raft_node_free(f);
    raft_outbox_free(&ob);
}

/* A damaged range: no candidacy, a FETCH to the peers, the answer becomes
 * a repair item, and the range clears once that is durable. */
TEST(raft_faulty_range_is_fetched_and_repaired)
{
    cluster c;
    cluster_init(&c, 1);
    int l = elect(&c, 0);
    for (int k = 0; k < 5; k++)
        ASSERT_OK(raft_propose(c.n[l], 0, 3, NULL, &c.ob));
    pump(&c);
    int f = (l + 1) % 3;
    ASSERT_OK(raft_mark_faulty(c.n[f], 0, 5, 6, &c.ob)); /* inside [4,7) */
    raft_shard_info in;
    ASSERT_OK(raft_shard_info_get(c.n[f], 0, &in));
    ASSERT_EQ(in.n_faulty, 1);
    ASSERT_U64_EQ(in.first_faulty, 4);
    /* Deliver the fetch and its answer by hand to see the repair item. */
    ASSERT_EQ(c.ob.n, 1);
    ASSERT_EQ(c.ob.msgs[0].type, RAFT_MSG_FETCH);
    raft_outbox ans;
    raft_outbox_init(&ans);
    ASSERT_OK(raft_step(c.n[c.ob.msgs[0].to - 1], c.now, &c.ob.msgs[0], &ans));
    raft_outbox_reset(&c.ob);
    ASSERT_EQ(ans.n, 1);
    ASSERT(ans.msgs[0].flags & RAFT_MSGF_OK);
    ASSERT_OK(raft_step(c.n[f], c.now, &ans.msgs[0], &c.ob));
    raft_persist it[2];
    ASSERT_EQ(raft_persist_take(c.n[f], it, 2), 1);
    ASSERT_EQ(it[0].n_repair, 1);
    ASSERT_U64_EQ(it[0].repair[0].first_offset, 4);
    ASSERT_OK(raft_persisted(c.n[f], 0, it[0].seq, &c.ob));
    ASSERT_OK(raft_shard_info_get(c.n[f], 0, &in));
    ASSERT_EQ(in.n_faulty, 0);
    raft_outbox_free(&ans);
    cluster_free(&c);
}

TEST(raft_faulty_leader_steps_down)
{
    cluster c;
    cluster_init(&c, 1);
    int l = elect(&c, 0);
    ASSERT_OK(raft_propose(c.n[l], 0, 2, NULL, &c.ob));
    pump(&c);
    ASSERT_OK(raft_mark_faulty(c.n[l], 0, 1, 2, &c.ob));
    raft_shard_info in;
    ASSERT_OK(raft_shard_info_get(c.n[l], 0, &in));
    ASSERT_EQ(in.role, RAFT_FOLLOWER);
    /* Someone else takes over; the damaged node never campaigns. */
    raft_outbox_reset(&c.ob);
    int l2 = elect(&c, 0);
    ASSERT_NE(l2, l);
    cluster_free(&c);
}

TEST(raft_faulty_range_cleared_by_caller)
{
    raft_node *f = mk_node(2, 1, 1, 0);
    raft_batch fl[] = {{0, 1, 4, 0}, {4, 1, 2, 0}, {6, 1, 3, 0}};
    raft_shard_state st = {1, 0, fl, 3, 0, 0, NULL, 0};
    ASSERT_OK(raft_shard_open(f, 0, &st, 0));
    raft_outbox ob;
    raft_outbox_init(&ob);
    ASSERT_EQ(raft_mark_faulty(f, 0, 5, 20, &ob), RAFT_EINVAL); /* past end */
    ASSERT_OK(raft_mark_faulty(f, 0, 1, 5, &ob)); /* widened to [0, 6) */
    raft_shard_info in;
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_EQ(in.n_faulty, 1);
    ASSERT_U64_EQ(in.first_faulty, 0);
    /* Repairing the middle splits the range; then the rest. */
    ASSERT_OK(raft_clear_faulty(f, 0, 0, 4));
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_U64_EQ(in.first_faulty, 4);
    ASSERT_OK(raft_clear_faulty(f, 0, 4, 6));
    ASSERT_OK(raft_shard_info_get(f, 0, &in));
    ASSERT_EQ(in.n_faulty, 0);
    raft_node_free(f);
    raft_outbox_free(&ob);
}

TEST(raft_config_and_state_checked)
{
    raft_config c;
    memset(&c, 0, sizeof c);
    c.self = 1;
    c.n_nodes = 3;
    c.nodes[0] = 1;
    c.nodes[1] = 2;
    c.nodes[2] = 3;
    c.n_shards = 1;
    c.boot_id = 1;
    raft_node *n = NULL;
    c.self = 4;
    ASSERT_EQ(raft_node_new(&c, &n), RAFT_EINVAL); /* not a member */
    c.self = 1;
    c.nodes[2] = 2;
    ASSERT_EQ(raft_node_new(&c, &n), RAFT_EINVAL); /* duplicate id */
    c.nodes[2] = 3;
    c.boot_id = 0;
    ASSERT_EQ(raft_node_new(&c, &n), RAFT_EINVAL);
    c.boot_id = 1;
    c.election_min_ms = 500;
    c.election_max_ms = 400;
    ASSERT_EQ(raft_node_new(&c, &n), RAFT_EINVAL);
    c.election_min_ms = c.election_max_ms = 0;
    ASSERT_OK(raft_node_new(&c, &n));
    raft_batch gap[] = {{0, 1, 2, 0}, {3, 1, 1, 0}};
    raft_shard_state st = {1, 0, gap, 2, 0, 0, NULL, 0};
    ASSERT_EQ(raft_shard_open(n, 0, &st, 0), RAFT_EINVAL);
    raft_batch newer[] = {{0, 3, 2, 0}};
    raft_shard_state st2 = {2, 0, newer, 1, 0, 0, NULL, 0}; /* term 3 > 2 */
    ASSERT_EQ(raft_shard_open(n, 0, &st2, 0), RAFT_EINVAL);
    ASSERT_EQ(raft_propose(n, 0, 1, NULL, NULL), RAFT_ENOTOPEN);
    raft_node_free(n);
}

/* ---- the simulator ----------------------------------------------------- */

static uint64_t env_u64(const char *name, uint64_t def)
{
    const char *s = getenv(name);
    return s && *s ? strtoull(s, NULL, 0) : def;
}

/* Runs the configured seeds of one profile; fails on the first bad seed.
 * RAFT_SIM_BREAK=<RAFT_BREAK_* bits> runs them against a deliberately
 * broken node, to watch the checker catch it. */
static void sim_seeds(const char *test, uint32_t n_nodes, uint32_t faults,
                      uint32_t n_shards, uint32_t share)
{
    uint64_t first = 1,
             n = env_u64("RAFT_SIM_SEEDS", RAFT_SIM_DEFAULT_SEEDS) / share;
    if (getenv("TEST_SEED")) {
        first = test_seed();
        n = env_u64("RAFT_SIM_SEEDS", 1);
    }
    int tr = (int)env_u64("RAFT_SIM_TRACE", 0);
    uint32_t brk = (uint32_t)env_u64("RAFT_SIM_BREAK", 0);
    uint64_t acked = 0, props = 0, leaders = 0, crashes = 0, dmg = 0, lost = 0,
             rep = 0, rec = 0, worst_leader = 0, worst_done = 0;
    for (uint64_t seed = first; seed < first + n; seed++) {
        rsim_opts o = {seed, n_nodes, n_shards, 0, faults, brk, tr};
        rsim_result r;
        if (rsim_run(&o, &r) != 0)
            FAIL("%s seed %llu at %llu ms: %s\n  replay: TEST_SEED=%llu "
                 "RAFT_SIM_TRACE=1 build/tests/unit %s\n ",
                 test, (unsigned long long)seed,
                 (unsigned long long)r.error_at_ms, r.error,
                 (unsigned long long)seed, test);
        acked += r.acked;
        props += r.proposals;
        leaders += r.leaders;
        crashes += r.crashes;
        dmg += r.damages;
        lost += r.lost_suffixes;
        rep += r.repaired;
        rec += r.recovered;
        if (r.heal_to_leaders_ms > worst_leader)
            worst_leader = r.heal_to_leaders_ms;
        if (r.heal_to_done_ms > worst_done)
            worst_done = r.heal_to_done_ms;
    }
    printf("     %llu seeds from %llu: %llu proposals, %llu acked, %llu "
           "leaders, %llu crashes, %llu batches damaged (%llu repaired from "
           "peers), %llu lost suffixes (%llu recovered); after healing: a "
           "leader within %llu ms, all converged within %llu ms\n",
           (unsigned long long)n, (unsigned long long)first,
           (unsigned long long)props, (unsigned long long)acked,
           (unsigned long long)leaders, (unsigned long long)crashes,
           (unsigned long long)dmg, (unsigned long long)rep,
           (unsigned long long)lost, (unsigned long long)rec,
           (unsigned long long)worst_leader, (unsigned long long)worst_done);
}

TEST(raft_sim_all_faults)
{
    sim_seeds("raft_sim_all_faults", 3, RSIM_F_ALL, 3, 1);
}

TEST(raft_sim_network)
{
    sim_seeds("raft_sim_network", 3,
              RSIM_F_LOSS | RSIM_F_DUP | RSIM_F_DELAY | RSIM_F_PARTITION, 2, 1);
}

TEST(raft_sim_crashes_and_disks)
{
    sim_seeds("raft_sim_crashes_and_disks", 3,
              RSIM_F_CRASH | RSIM_F_DAMAGE | RSIM_F_LOSE_SUFFIX | RSIM_F_DELAY,
              3, 1);
}

/* Nothing here is specific to three members. */
TEST(raft_sim_five_nodes)
{
    sim_seeds("raft_sim_five_nodes", 5, RSIM_F_ALL, 2, 5);
}

/* ---- the checker bites
 * ----------------------------------------------------------
 *
 * Each test switches one safety rule off (RAFT_BREAK_*) and searches seeds
 * from 1 until the simulator reports a violation. The caps are several
 * times the seed at which the violation was first found when the test was
 * written; a change to raft.c moves the trajectories, so a miss after such
 * a change means: look at how many seeds it now takes before raising the
 * cap. */
static void expect_caught(const char *rule, uint32_t brk, uint32_t faults,
                          uint64_t max_seeds, const char *kind)
{
    for (uint64_t seed = 1; seed <= max_seeds; seed++) {
        rsim_opts o = {seed, 3, 3, 0, faults, brk, 0};
        rsim_result r;
        if (rsim_run(&o, &r) == 0)
            continue;
        printf("     %s: caught at seed %llu: %s\n", rule,
               (unsigned long long)seed, r.error);
        if (!strstr(r.error, kind))
            FAIL("%s: expected a \"%s\" violation, got: %s", rule, kind,
                 r.error);
        return;
    }
    FAIL("%s: no violation in %llu seeds: the checker does not bite", rule,
         (unsigned long long)max_seeds);
}

TEST(raft_sim_catches_vote_without_uptodate_check)
{
    expect_caught("vote without the up-to-date check", RAFT_BREAK_VOTE_UPTODATE,
                  RSIM_F_ALL, 100, "leader completeness");
}

TEST(raft_sim_catches_commit_by_counting_older_terms)
{
    /* Figure 8 of the paper; rare because every leader first writes a
     * no-op of its own term. */
    expect_caught("commit by counting older terms", RAFT_BREAK_COMMIT_OLD_TERM,
                  RSIM_F_CRASH | RSIM_F_PARTITION | RSIM_F_DELAY, 4000,
                  "leader completeness");
}

TEST(raft_sim_catches_ack_before_fsync)
{
    expect_caught("ack before fsync", RAFT_BREAK_ACK_UNSYNCED, RSIM_F_ALL, 100,
                  "durable copies");
}

TEST(raft_sim_catches_vote_by_replica_that_lost_data)
{
    expect_caught("vote by a replica that lost acked data",
                  RAFT_BREAK_LOST_VOTES, RSIM_F_ALL, 500,
                  "leader completeness");
}

TEST(raft_sim_catches_vote_answered_before_fsync)
{
    expect_caught(
        "vote answered before it is durable", RAFT_BREAK_VOTE_UNSYNCED,
        RSIM_F_CRASH | RSIM_F_DAMAGE | RSIM_F_LOSE_SUFFIX | RSIM_F_DELAY, 1000,
        "election safety");
}
