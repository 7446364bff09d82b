/*
 * raft.c — the replication state machine described in raft.h and
 * docs/cluster.md. No I/O: everything that leaves goes through an outbox
 * (messages) or raft_persist_take (storage work).
 *
 * Layout of a shard's state:
 *   log[]     batch descriptors, contiguous from offset 0 (end = log end);
 *   epochs[]  term -> first offset, one entry per term present in the log,
 *             both strictly increasing (Kafka's leader-epoch cache): the
 *             term of any offset is a binary search, and the first offset
 *             of a term is what a follower reports on a mismatch;
 *   pending   storage work not yet handed out (hard state, lowest
 *             truncation, the log from pend_from, repairs);
 *   outstanding  items handed out and not yet reported durable, in order;
 *   held      (node-wide) messages waiting for an item to be durable.
 */
#include "raft.h"

#include <stdlib.h>
#include <string.h>

#include "errors.h"

#define DEF_HEARTBEAT_MS    100u
#define DEF_ELECTION_MIN_MS 600u
#define DEF_ELECTION_MAX_MS 1200u
#define DEF_MAX_INFLIGHT    8u
#define MAX_INFLIGHT        64u
#define DEF_MAX_BATCHES     64u
#define MAX_MSG_BATCHES     65536u
#define NO_OFFSET           UINT64_MAX

/* ALWAYS-style check: a broken invariant fails the shard, never aborts. */
#define CHECK(s, cond)                                                         \
    do {                                                                       \
        if (!(cond))                                                           \
            return shard_fail((s), RAFT_EINVARIANT);                           \
    } while (0)

const char *raft_strerror(int err)
{
    switch (err) {
    case RAFT_ENOTLEADER: return "not the leader of this shard";
    case RAFT_EPROTO: return "malformed or impossible replication message";
    case RAFT_EINVARIANT:
        return "replication safety check failed (shard stopped)";
    case RAFT_EFAILED: return "shard replication failed earlier";
    case RAFT_EINVAL: return "invalid argument";
    case RAFT_ENOMEM: return "out of memory";
    case RAFT_ENOTOPEN: return "shard not open";
    default: return cl_strerror(err);
    }
}

/* ---- arena: chunks that never move, so pointers stay valid ------------- */

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    raft_batch b[];
} arena_chunk;

struct raft_arena {
    arena_chunk *head; /* current chunk first */
};

static raft_batch *arena_alloc(raft_arena **ap, size_t n)
{
    if (!*ap) {
        *ap = calloc(1, sizeof **ap);
        if (!*ap)
            return NULL;
    }
    raft_arena *a = *ap;
    if (n == 0)
        n = 1;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 1024 ? n : 1024;
        arena_chunk *c = malloc(sizeof *c + cap * sizeof(raft_batch));
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    raft_batch *p = a->head->b + a->head->used;
    a->head->used += n;
    return p;
}

static void arena_reset(raft_arena *a)
{
    if (!a || !a->head)
        return;
    /* Keep the newest chunk, free the rest. */
    arena_chunk *c = a->head->next;
    while (c) {
        arena_chunk *nx = c->next;
        free(c);
        c = nx;
    }
    a->head->next = NULL;
    a->head->used = 0;
}

static void arena_free(raft_arena *a)
{
    if (!a)
        return;
    arena_chunk *c = a->head;
    while (c) {
        arena_chunk *nx = c->next;
        free(c);
        c = nx;
    }
    free(a);
}

void raft_outbox_init(raft_outbox *ob)
{
    memset(ob, 0, sizeof *ob);
}

void raft_outbox_reset(raft_outbox *ob)
{
    ob->n = 0;
    arena_reset(ob->arena);
}

void raft_outbox_free(raft_outbox *ob)
{
    free(ob->msgs);
    arena_free(ob->arena);
    memset(ob, 0, sizeof *ob);
}

/* ---- state ------------------------------------------------------------- */

typedef struct epoch {
    uint64_t term;
    uint64_t start;
} epoch;

typedef struct progress {
    uint64_t boot; /* the follower's incarnation these facts are about */
    uint64_t match, next;
    int probing;
    int probe_outstanding;
    uint64_t inflight[MAX_INFLIGHT]; /* end offsets of appends in flight */
    uint32_t inf_head, inf_n;
    uint64_t last_progress_ms;
    uint64_t last_heard_ms;
} progress;

typedef struct repair {
    uint64_t from, to;
    raft_batch *b; /* owned; NULL once handed out */
    size_t n;
} repair;

typedef struct outstanding {
    uint64_t seq;
    uint64_t valid_end;  /* log end the item makes durable (cut by later
                            truncations) */
    raft_range *repairs; /* owned */
    size_t n_repairs;
} outstanding;

typedef struct raft_shard {
    int open;
    int failed;
    int role;
    uint64_t term;
    uint32_t voted_for;
    uint32_t leader;

    raft_batch *log;
    size_t n, cap;
    epoch *epochs;
    size_t ne, cape;
    uint64_t end, durable_end, commit;
    uint64_t log_version;

    /* storage work not yet handed out */
    int pend_hard;
    uint64_t pend_trunc; /* NO_OFFSET: none */
    uint64_t pend_from;  /* the log from here on is not handed out */
    uint64_t handed_end; /* the disk may hold the log up to here */
    repair *pend_rep;
    size_t n_pend_rep, cap_pend_rep;
    uint64_t seq_issued, seq_done;
    outstanding *outs;
    size_t n_outs, cap_outs;

    uint64_t election_deadline;
    uint64_t leader_since;
    uint32_t votes; /* bit per member index */
    uint64_t campaign_seq;

    progress prs[RAFT_MAX_NODES];

    raft_range *faulty;
    size_t n_faulty, cap_faulty;
    uint64_t fetch_next_ms;
    uint32_t fetch_attempt;

    int recovering;
    uint64_t recover_target; /* min(acked_end, fresh leader ends) */
    uint64_t leader_matched_end;
    /* How far this log is known to equal the log of the leader of term
     * term_matched_term: the furthest end an append of that leader
     * verified (lowered by a cut). Within one term the leader's log only
     * grows, so all of it still matches, and a commit offset from that
     * leader applies up to it, not only up to the end of the append that
     * carried it (which, for a heartbeat, is the follower's known match:
     * a follower would otherwise learn a commit only with the next append
     * that reached past it). */
    uint64_t term_matched_end;
    uint64_t term_matched_term;
} raft_shard;

typedef struct held_msg {
    uint32_t shard;
    uint64_t seq;
    raft_msg m;
} held_msg;

struct raft_node {
    raft_config cfg;
    uint32_t self_idx;
    uint32_t quorum;
    raft_shard *shards;
    uint64_t rng;
    uint64_t now;
    uint64_t hb_next;
    held_msg *held;
    size_t n_held, cap_held;
    raft_arena *persist_arena;
    uint32_t take_rr;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q)
        return RAFT_ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

static int shard_fail(raft_shard *s, int err)
{
    if (!s->failed)
        s->failed = err;
    return err;
}

static uint64_t rng_next(raft_node *node)
{
    /* xorshift64* */
    uint64_t x = node->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    node->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static int member_idx(const raft_node *node, uint32_t id)
{
    for (uint32_t i = 0; i < node->cfg.n_nodes; i++)
        if (node->cfg.nodes[i] == id)
            return (int)i;
    return -1;
}

static void reset_election_timer(raft_node *node, raft_shard *s, uint64_t now)
{
    uint32_t lo = node->cfg.election_min_ms, hi = node->cfg.election_max_ms;
    s->election_deadline = now + lo + rng_next(node) % (hi - lo);
}

/* ---- log and epoch cache ----------------------------------------------- */

static uint64_t last_term(const raft_shard *s)
{
    return s->ne ? s->epochs[s->ne - 1].term : 0;
}

/* Term of the record at offset o, 0 if the log has none. */
static uint64_t term_at(const raft_shard *s, uint64_t o)
{
    if (o >= s->end || s->ne == 0)
        return 0;
    size_t lo = 0, hi = s->ne; /* last epoch with start <= o */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (s->epochs[mid].start <= o)
            lo = mid;
        else
            hi = mid;
    }
    return s->epochs[lo].term;
}

static size_t epoch_find(const raft_shard *s, uint64_t term)
{
    size_t lo = 0, hi = s->ne;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->epochs[mid].term < term)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->ne && s->epochs[lo].term == term ? lo : SIZE_MAX;
}

/* First offset of term in the log, NO_OFFSET if absent. */
static uint64_t epoch_first(const raft_shard *s, uint64_t term)
{
    size_t i = epoch_find(s, term);
    return i == SIZE_MAX ? NO_OFFSET : s->epochs[i].start;
}

/* Offset after the last record of term, NO_OFFSET if absent. */
static uint64_t epoch_end(const raft_shard *s, uint64_t term)
{
    size_t i = epoch_find(s, term);
    if (i == SIZE_MAX)
        return NO_OFFSET;
    return i + 1 < s->ne ? s->epochs[i + 1].start : s->end;
}

/* Index of the batch holding offset o (o < end). */
static size_t batch_at(const raft_shard *s, uint64_t o)
{
    size_t lo = 0, hi = s->n;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (s->log[mid].first_offset <= o)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static int is_boundary(const raft_shard *s, uint64_t o)
{
    if (o >= s->end)
        return o == s->end;
    return s->log[batch_at(s, o)].first_offset == o;
}

/* The batch boundary at or below o (end if o >= end). */
static uint64_t boundary_below(const raft_shard *s, uint64_t o)
{
    if (o >= s->end)
        return s->end;
    return s->log[batch_at(s, o)].first_offset;
}

static uint64_t first_faulty(const raft_shard *s)
{
    return s->n_faulty ? s->faulty[0].from : NO_OFFSET;
}

static int log_push(raft_shard *s, const raft_batch *b)
{
    if (grow((void **)&s->log, &s->cap, s->n + 1, sizeof *s->log))
        return RAFT_ENOMEM;
    if (s->ne == 0 || s->epochs[s->ne - 1].term < b->term) {
        if (grow((void **)&s->epochs, &s->cape, s->ne + 1, sizeof *s->epochs))
            return RAFT_ENOMEM;
        s->epochs[s->ne++] = (epoch){b->term, b->first_offset};
    }
    s->log[s->n++] = *b;
    s->end = b->first_offset + b->count;
    s->log_version++;
    return 0;
}

static void range_clip(raft_range *r, size_t *n, uint64_t from)
{
    size_t k = 0;
    for (size_t i = 0; i < *n; i++) {
        if (r[i].from >= from)
            continue;
        r[k] = r[i];
        if (r[k].to > from)
            r[k].to = from;
        k++;
    }
    *n = k;
}

/* Remove every record >= from. Never at or below the commit offset. */
static int log_truncate(raft_shard *s, uint64_t from)
{
    if (from >= s->end)
        return 0;
    if (from < s->commit || !is_boundary(s, from))
        return shard_fail(s, RAFT_EINVARIANT);
    s->n = batch_at(s, from);
    while (s->ne && s->epochs[s->ne - 1].start >= from)
        s->ne--;
    s->end = from;
    s->log_version++;
    if (s->durable_end > from)
        s->durable_end = from;
    if (s->leader_matched_end > from)
        s->leader_matched_end = from;
    if (s->term_matched_end > from)
        s->term_matched_end = from;
    if (from < s->handed_end) {
        if (s->pend_trunc == NO_OFFSET || from < s->pend_trunc)
            s->pend_trunc = from;
        s->handed_end = from;
    }
    if (s->pend_from > from)
        s->pend_from = from;
    for (size_t i = 0; i < s->n_outs; i++) {
        if (s->outs[i].valid_end > from)
            s->outs[i].valid_end = from;
        range_clip(s->outs[i].repairs, &s->outs[i].n_repairs, from);
    }
    size_t k = 0;
    for (size_t i = 0; i < s->n_pend_rep; i++) {
        repair *r = &s->pend_rep[i];
        if (r->from >= from) {
            free(r->b);
            continue;
        }
        if (r->to > from) {
            size_t nb = 0;
            while (nb < r->n && r->b[nb].first_offset < from)
                nb++;
            r->n = nb;
            r->to = from;
        }
        s->pend_rep[k++] = *r;
    }
    s->n_pend_rep = k;
    range_clip(s->faulty, &s->n_faulty, from);
    return 0;
}

/* ---- persistence bookkeeping ------------------------------------------- */

static int has_pending(const raft_shard *s)
{
    return s->pend_hard || s->pend_trunc != NO_OFFSET ||
           s->pend_from < s->end || s->n_pend_rep;
}

/* The item that will make the current in-memory state durable. */
static uint64_t required_seq(const raft_shard *s)
{
    return has_pending(s) ? s->seq_issued + 1 : s->seq_issued;
}

static int ob_push(raft_outbox *ob, const raft_msg *m, const raft_batch *b,
                   uint32_t nb)
{
    if (grow((void **)&ob->msgs, &ob->cap, ob->n + 1, sizeof *ob->msgs))
        return RAFT_ENOMEM;
    raft_msg *d = &ob->msgs[ob->n];
    *d = *m;
    d->batches = NULL;
    d->n_batches = 0;
    if (nb) {
        raft_batch *p = arena_alloc(&ob->arena, nb);
        if (!p)
            return RAFT_ENOMEM;
        memcpy(p, b, nb * sizeof *b);
        d->batches = p;
        d->n_batches = nb;
    }
    ob->n++;
    return 0;
}

/* Send m once everything in memory now is durable. */
static int send_after_persist(raft_node *node, raft_shard *s, uint32_t shard,
                              const raft_msg *m, raft_outbox *out)
{
    uint64_t need = required_seq(s);
    if (need <= s->seq_done)
        return ob_push(out, m, NULL, 0);
    if (grow((void **)&node->held, &node->cap_held, node->n_held + 1,
             sizeof *node->held))
        return RAFT_ENOMEM;
    node->held[node->n_held++] = (held_msg){shard, need, *m};
    return 0;
}

static raft_msg msg_to(raft_node *node, raft_shard *s, uint32_t shard,
                       uint32_t type, uint32_t to)
{
    raft_msg m;
    memset(&m, 0, sizeof m);
    m.type = type;
    m.shard = shard;
    m.from = node->cfg.self;
    m.to = to;
    m.term = s->term;
    m.boot = node->cfg.boot_id;
    return m;
}

/* ---- roles ------------------------------------------------------------- */

static int eligible(const raft_shard *s)
{
    return !s->failed && !s->recovering && s->n_faulty == 0;
}

static void become_follower(raft_node *node, raft_shard *s, uint64_t term,
                            uint32_t leader, uint64_t now)
{
    if (term > s->term) {
        s->term = term;
        s->voted_for = RAFT_NONE;
        s->pend_hard = 1;
    }
    /* Only a leader, which had no election timer running, starts one here.
     * Seeing a higher term is not hearing from a leader: were the timer
     * reset, a candidate that cannot win (its log is behind) would keep the
     * one that can from ever timing out. */
    if (s->role == RAFT_LEADER || leader != RAFT_NONE)
        reset_election_timer(node, s, now);
    s->role = RAFT_FOLLOWER;
    s->leader = leader;
    s->votes = 0;
}

static void check_recovered(raft_shard *s)
{
    if (!s->recovering || s->recover_target == RAFT_ACKED_UNKNOWN)
        return;
    uint64_t have = s->durable_end < s->leader_matched_end
                        ? s->durable_end
                        : s->leader_matched_end;
    if (have >= s->recover_target)
        s->recovering = 0;
}

static int send_append(raft_node *node, raft_shard *s, uint32_t shard,
                       uint32_t i, uint64_t prev, int with_batches,
                       raft_outbox *out, uint64_t *sent_end)
{
    raft_msg m = msg_to(node, s, shard, RAFT_MSG_APPEND, node->cfg.nodes[i]);
    m.offset = prev;
    m.log_term = prev ? term_at(s, prev - 1) : 0;
    m.commit = s->commit;
    m.end = s->end;
    m.to_boot = s->prs[i].boot;
    const raft_batch *b = NULL;
    uint32_t nb = 0;
    if (with_batches && prev < s->end) {
        size_t k = batch_at(s, prev);
        b = &s->log[k];
        nb = (uint32_t)(s->n - k);
        if (nb > node->cfg.max_batches_per_msg)
            nb = node->cfg.max_batches_per_msg;
    }
    if (sent_end)
        *sent_end = nb ? b[nb - 1].first_offset + b[nb - 1].count : prev;
    return ob_push(out, &m, b, nb);
}

/* Send what the follower's state allows: one probe, or fill the pipeline. */
static int send_more(raft_node *node, raft_shard *s, uint32_t shard, uint32_t i,
                     uint64_t now, raft_outbox *out)
{
    progress *pr = &s->prs[i];
    if (pr->probing) {
        if (pr->probe_outstanding)
            return 0;
        pr->probe_outstanding = 1;
        return send_append(node, s, shard, i, pr->next, 1, out, NULL);
    }
    while (pr->inf_n < node->cfg.max_inflight && pr->next < s->end) {
        uint64_t e;
        int rc = send_append(node, s, shard, i, pr->next, 1, out, &e);
        if (rc)
            return rc;
        if (pr->inf_n == 0)
            pr->last_progress_ms = now;
        pr->inflight[(pr->inf_head + pr->inf_n) % MAX_INFLIGHT] = e;
        pr->inf_n++;
        pr->next = e;
    }
    return 0;
}

static int bcast_append(raft_node *node, raft_shard *s, uint32_t shard,
                        uint64_t now, raft_outbox *out)
{
    for (uint32_t i = 0; i < node->cfg.n_nodes; i++) {
        if (i == node->self_idx)
            continue;
        int rc = send_more(node, s, shard, i, now, out);
        if (rc)
            return rc;
    }
    return 0;
}

static int cmp_u64_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Commit the highest offset durable on a majority, if its record is of the
 * current term (section 5.4.2: older terms commit only indirectly). */
static void maybe_commit(raft_node *node, raft_shard *s)
{
    if (s->role != RAFT_LEADER)
        return;
    uint64_t v[RAFT_MAX_NODES];
    for (uint32_t i = 0; i < node->cfg.n_nodes; i++)
        v[i] = i == node->self_idx ? s->durable_end : s->prs[i].match;
    qsort(v, node->cfg.n_nodes, sizeof v[0], cmp_u64_desc);
    uint64_t m = v[node->quorum - 1];
    if (m <= s->commit)
        return;
    if (term_at(s, m - 1) == s->term ||
        (node->cfg.test_break & RAFT_BREAK_COMMIT_OLD_TERM))
        s->commit = m;
}

static int become_leader(raft_node *node, raft_shard *s, uint32_t shard,
                         uint64_t now, raft_outbox *out)
{
    s->role = RAFT_LEADER;
    s->leader = node->cfg.self;
    s->leader_since = now;
    s->votes = 0;
    for (uint32_t i = 0; i < node->cfg.n_nodes; i++) {
        progress *pr = &s->prs[i];
        memset(pr, 0, sizeof *pr);
        pr->next = s->end;
        pr->probing = 1;
        pr->last_heard_ms = now;
        pr->last_progress_ms = now;
    }
    raft_batch noop = {s->end, s->term, 1, RAFT_BATCH_NOOP};
    int rc = log_push(s, &noop);
    if (rc)
        return shard_fail(s, rc);
    rc = bcast_append(node, s, shard, now, out);
    maybe_commit(node, s);
    return rc;
}

static int campaign(raft_node *node, raft_shard *s, uint32_t shard,
                    uint64_t now, raft_outbox *out)
{
    s->term++;
    s->voted_for = node->cfg.self;
    s->pend_hard = 1;
    s->role = RAFT_CANDIDATE;
    s->leader = RAFT_NONE;
    s->votes = 1u << node->self_idx;
    s->campaign_seq = required_seq(s);
    reset_election_timer(node, s, now);
    /* A one-member group wins once its own vote is durable (in
     * raft_persisted). Requests wait for the vote to be durable too:
     * otherwise a crash could let this node vote twice in the term. */
    for (uint32_t i = 0; i < node->cfg.n_nodes; i++) {
        if (i == node->self_idx)
            continue;
        raft_msg m = msg_to(node, s, shard, RAFT_MSG_VOTE, node->cfg.nodes[i]);
        m.offset = s->end;
        m.log_term = last_term(s);
        int rc = send_after_persist(node, s, shard, &m, out);
        if (rc)
            return shard_fail(s, rc);
    }
    return 0;
}

static void step_down(raft_node *node, raft_shard *s, uint64_t now)
{
    s->role = RAFT_FOLLOWER;
    s->leader = RAFT_NONE;
    s->votes = 0;
    reset_election_timer(node, s, now);
}

/* ---- lifecycle --------------------------------------------------------- */

static void shard_clear(raft_node *node, uint32_t shard)
{
    raft_shard *s = &node->shards[shard];
    free(s->log);
    free(s->epochs);
    for (size_t i = 0; i < s->n_pend_rep; i++)
        free(s->pend_rep[i].b);
    free(s->pend_rep);
    for (size_t i = 0; i < s->n_outs; i++)
        free(s->outs[i].repairs);
    free(s->outs);
    free(s->faulty);
    memset(s, 0, sizeof *s);
    size_t k = 0;
    for (size_t i = 0; i < node->n_held; i++)
        if (node->held[i].shard != shard)
            node->held[k++] = node->held[i];
    node->n_held = k;
}

int raft_node_new(const raft_config *cfg, raft_node **out)
{
    *out = NULL;
    raft_config c = *cfg;
    if (c.n_nodes == 0 || c.n_nodes > RAFT_MAX_NODES || c.self == RAFT_NONE ||
        c.n_shards == 0 || c.boot_id == 0)
        return RAFT_EINVAL;
    if (!c.heartbeat_ms)
        c.heartbeat_ms = DEF_HEARTBEAT_MS;
    if (!c.election_min_ms)
        c.election_min_ms = DEF_ELECTION_MIN_MS;
    if (!c.election_max_ms)
        c.election_max_ms = DEF_ELECTION_MAX_MS;
    if (!c.retry_ms)
        c.retry_ms = 2 * c.heartbeat_ms;
    if (!c.max_inflight)
        c.max_inflight = DEF_MAX_INFLIGHT;
    if (!c.max_batches_per_msg)
        c.max_batches_per_msg = DEF_MAX_BATCHES;
    if (c.election_min_ms >= c.election_max_ms ||
        c.max_inflight > MAX_INFLIGHT || c.heartbeat_ms >= c.election_min_ms)
        return RAFT_EINVAL;
    int self_idx = -1;
    for (uint32_t i = 0; i < c.n_nodes; i++) {
        if (c.nodes[i] == RAFT_NONE)
            return RAFT_EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (c.nodes[j] == c.nodes[i])
                return RAFT_EINVAL;
        if (c.nodes[i] == c.self)
            self_idx = (int)i;
    }
    if (self_idx < 0)
        return RAFT_EINVAL;
    raft_node *node = calloc(1, sizeof *node);
    if (!node)
        return RAFT_ENOMEM;
    node->shards = calloc(c.n_shards, sizeof *node->shards);
    if (!node->shards) {
        free(node);
        return RAFT_ENOMEM;
    }
    node->cfg = c;
    node->self_idx = (uint32_t)self_idx;
    node->quorum = c.n_nodes / 2 + 1;
    node->rng = (c.rand_seed ^ ((uint64_t)c.self * 0x9E3779B97F4A7C15ull)) | 1;
    *out = node;
    return 0;
}

void raft_node_free(raft_node *node)
{
    if (!node)
        return;
    for (uint32_t i = 0; i < node->cfg.n_shards; i++)
        shard_clear(node, i);
    free(node->shards);
    free(node->held);
    arena_free(node->persist_arena);
    free(node);
}

static int faulty_add(raft_shard *s, uint64_t from, uint64_t to)
{
    /* Widen to whole batches. */
    from = boundary_below(s, from);
    if (to < s->end && !is_boundary(s, to)) {
        const raft_batch *b = &s->log[batch_at(s, to)];
        to = b->first_offset + b->count;
    }
    if (grow((void **)&s->faulty, &s->cap_faulty, s->n_faulty + 1,
             sizeof *s->faulty))
        return RAFT_ENOMEM;
    /* Insert sorted, then merge overlapping or touching ranges. */
    size_t i = s->n_faulty;
    while (i > 0 && s->faulty[i - 1].from > from) {
        s->faulty[i] = s->faulty[i - 1];
        i--;
    }
    s->faulty[i] = (raft_range){from, to};
    s->n_faulty++;
    size_t k = 0;
    for (size_t j = 1; j < s->n_faulty; j++) {
        if (s->faulty[j].from <= s->faulty[k].to) {
            if (s->faulty[j].to > s->faulty[k].to)
                s->faulty[k].to = s->faulty[j].to;
        } else {
            s->faulty[++k] = s->faulty[j];
        }
    }
    s->n_faulty = k + 1;
    return 0;
}

static int faulty_remove(raft_shard *s, uint64_t from, uint64_t to)
{
    /* Subtract [from, to) from every range; may split one in two. */
    raft_range tmp[2];
    raft_range *res = NULL;
    size_t nres = 0, capres = 0;
    for (size_t i = 0; i < s->n_faulty; i++) {
        raft_range r = s->faulty[i];
        size_t nt = 0;
        if (r.to <= from || r.from >= to) {
            tmp[nt++] = r;
        } else {
            if (r.from < from)
                tmp[nt++] = (raft_range){r.from, from};
            if (r.to > to)
                tmp[nt++] = (raft_range){to, r.to};
        }
        for (size_t j = 0; j < nt; j++) {
            if (grow((void **)&res, &capres, nres + 1, sizeof *res)) {
                free(res);
                return RAFT_ENOMEM;
            }
            res[nres++] = tmp[j];
        }
    }
    free(s->faulty);
    s->faulty = res;
    s->n_faulty = nres;
    s->cap_faulty = capres;
    return 0;
}

int raft_shard_open(raft_node *node, uint32_t shard, const raft_shard_state *st,
                    uint64_t now_ms)
{
    if (shard >= node->cfg.n_shards)
        return RAFT_EINVAL;
    /* Validate before touching anything. */
    uint64_t off = 0, t = 0;
    for (size_t i = 0; i < st->n_batches; i++) {
        const raft_batch *b = &st->batches[i];
        if (b->first_offset != off || b->count == 0 || b->term < t ||
            b->term == 0 || b->term > st->term ||
            b->first_offset + b->count < b->first_offset)
            return RAFT_EINVAL;
        off = b->first_offset + b->count;
        t = b->term;
    }
    if (st->commit_offset > off ||
        (st->voted_for != RAFT_NONE && member_idx(node, st->voted_for) < 0))
        return RAFT_EINVAL;
    for (size_t i = 0; i < st->n_faulty; i++)
        if (st->faulty[i].from >= st->faulty[i].to || st->faulty[i].to > off)
            return RAFT_EINVAL;

    shard_clear(node, shard);
    raft_shard *s = &node->shards[shard];
    s->open = 1;
    s->term = st->term;
    s->voted_for = st->voted_for;
    s->pend_trunc = NO_OFFSET;
    for (size_t i = 0; i < st->n_batches; i++)
        if (log_push(s, &st->batches[i])) {
            shard_clear(node, shard);
            return RAFT_ENOMEM;
        }
    s->durable_end = s->end;
    s->pend_from = s->end;
    s->handed_end = s->end;
    s->commit = st->commit_offset;
    for (size_t i = 0; i < st->n_faulty; i++)
        if (faulty_add(s, st->faulty[i].from, st->faulty[i].to)) {
            shard_clear(node, shard);
            return RAFT_ENOMEM;
        }
    if (st->acked_end > s->end) {
        s->recovering = 1;
        s->recover_target = st->acked_end;
    }
    s->role = RAFT_FOLLOWER;
    reset_election_timer(node, s, now_ms);
    return 0;
}

/* ---- fetching faulty ranges -------------------------------------------- */

static int repairing(const raft_shard *s, uint64_t o, uint64_t *until)
{
    for (size_t i = 0; i < s->n_pend_rep; i++)
        if (s->pend_rep[i].from <= o && o < s->pend_rep[i].to) {
            *until = s->pend_rep[i].to;
            return 1;
        }
    for (size_t i = 0; i < s->n_outs; i++)
        for (size_t j = 0; j < s->outs[i].n_repairs; j++)
            if (s->outs[i].repairs[j].from <= o &&
                o < s->outs[i].repairs[j].to) {
                *until = s->outs[i].repairs[j].to;
                return 1;
            }
    return 0;
}

/* The first faulty range part that no repair is under way for. */
static int next_to_fetch(const raft_shard *s, raft_range *r)
{
    for (size_t i = 0; i < s->n_faulty; i++) {
        uint64_t o = s->faulty[i].from, until;
        while (o < s->faulty[i].to && repairing(s, o, &until))
            o = until;
        if (o < s->faulty[i].to) {
            uint64_t e = o;
            while (e < s->faulty[i].to && !repairing(s, e, &until)) {
                const raft_batch *b = &s->log[batch_at(s, e)];
                e = b->first_offset + b->count;
            }
            *r = (raft_range){o, e};
            return 1;
        }
    }
    return 0;
}

static int send_fetch(raft_node *node, raft_shard *s, uint32_t shard,
                      uint64_t now, raft_outbox *out)
{
    raft_range r;
    s->fetch_next_ms = now + node->cfg.retry_ms;
    if (node->cfg.n_nodes == 1 || !next_to_fetch(s, &r))
        return 0; /* alone, the damage can only be repaired by the caller */
    /* The leader first, then the other peers in turn. */
    uint32_t to = RAFT_NONE;
    uint32_t attempt = s->fetch_attempt++;
    if (s->leader != RAFT_NONE && s->leader != node->cfg.self &&
        attempt % 2 == 0)
        to = s->leader;
    else {
        uint32_t k = (attempt / 2) % (node->cfg.n_nodes - 1);
        uint32_t i = 0;
        for (uint32_t j = 0; j < node->cfg.n_nodes; j++) {
            if (j == node->self_idx)
                continue;
            if (i++ == k)
                to = node->cfg.nodes[j];
        }
    }
    if (to == RAFT_NONE)
        return 0;
    raft_msg m = msg_to(node, s, shard, RAFT_MSG_FETCH, to);
    m.offset = r.from;
    m.match = r.to;
    m.log_term = term_at(s, r.to - 1);
    return ob_push(out, &m, NULL, 0);
}

/* ---- message handlers -------------------------------------------------- */

static int handle_vote(raft_node *node, raft_shard *s, uint32_t shard,
                       const raft_msg *m, uint64_t now, raft_outbox *out)
{
    raft_msg r = msg_to(node, s, shard, RAFT_MSG_VOTE_RESP, m->from);
    if (m->term < s->term) {
        r.reason = RAFT_R_STALE_TERM;
        return ob_push(out, &r, NULL, 0);
    }
    uint64_t lt = last_term(s);
    int uptodate =
        m->log_term > lt || (m->log_term == lt && m->offset >= s->end);
    if (node->cfg.test_break & RAFT_BREAK_VOTE_UPTODATE)
        uptodate = 1;
    if (s->recovering && !(node->cfg.test_break & RAFT_BREAK_LOST_VOTES))
        r.reason = RAFT_R_RECOVERING;
    else if (s->voted_for != RAFT_NONE && s->voted_for != m->from)
        r.reason = RAFT_R_VOTED;
    else if (!uptodate)
        r.reason = RAFT_R_NOT_UPTODATE;
    else {
        s->voted_for = m->from;
        s->pend_hard = 1;
        r.flags = RAFT_MSGF_OK;
        reset_election_timer(node, s, now);
        if (node->cfg.test_break & RAFT_BREAK_VOTE_UNSYNCED)
            return ob_push(out, &r, NULL, 0);
    }
    return send_after_persist(node, s, shard, &r, out);
}

static int handle_vote_resp(raft_node *node, raft_shard *s, uint32_t shard,
                            const raft_msg *m, uint64_t now, raft_outbox *out)
{
    if (m->term != s->term || s->role != RAFT_CANDIDATE ||
        !(m->flags & RAFT_MSGF_OK))
        return 0;
    s->votes |= 1u << member_idx(node, m->from);
    if ((uint32_t)__builtin_popcount(s->votes) >= node->quorum &&
        s->seq_done >= s->campaign_seq)
        return become_leader(node, s, shard, now, out);
    return 0;
}

static int handle_append(raft_node *node, raft_shard *s, uint32_t shard,
                         const raft_msg *m, uint64_t now, raft_outbox *out)
{
    raft_msg r = msg_to(node, s, shard, RAFT_MSG_APPEND_RESP, m->from);
    r.offset = m->offset;
    if (m->term < s->term) {
        r.reason = RAFT_R_STALE_TERM;
        r.end = s->end;
        return ob_push(out, &r, NULL, 0);
    }
    /* Two leaders in one term: election safety is broken. */
    CHECK(s, s->role != RAFT_LEADER);
    if (s->role != RAFT_FOLLOWER || s->leader != m->from)
        become_follower(node, s, m->term, m->from, now);
    else
        reset_election_timer(node, s, now);

    uint64_t p = m->offset;
    if (p > s->end || (p > 0 && term_at(s, p - 1) != m->log_term)) {
        /* A leader of this term holds every committed record. */
        CHECK(s, p > s->commit);
        r.reason = RAFT_R_LOG_MISMATCH;
        r.end = s->end;
        if (p > s->end) {
            r.hint_term = 0;
            r.hint_offset = s->end;
        } else {
            r.hint_term = term_at(s, p - 1);
            r.hint_offset = epoch_first(s, r.hint_term);
        }
        return send_after_persist(node, s, shard, &r, out);
    }
    /* Same term at p-1 means the same batch there, so p is a boundary. */
    CHECK(s, is_boundary(s, p));
    uint64_t e = p;
    for (uint32_t i = 0; i < m->n_batches; i++) {
        const raft_batch *b = &m->batches[i];
        e = b->first_offset + b->count;
        if (b->first_offset < s->end) {
            CHECK(s, is_boundary(s, b->first_offset));
            const raft_batch *have = &s->log[batch_at(s, b->first_offset)];
            if (have->term == b->term) {
                CHECK(s, have->count == b->count);
                continue;
            }
            /* The first conflicting record: cut the suffix from here (its
             * place was found by term, and log_truncate refuses anything
             * at or below the commit offset). */
            int rc = log_truncate(s, b->first_offset);
            if (rc)
                return rc;
        }
        int rc = log_push(s, b);
        if (rc)
            return shard_fail(s, rc);
    }
    if (s->term_matched_term != m->term) {
        s->term_matched_term = m->term;
        s->term_matched_end = 0;
    }
    if (e > s->term_matched_end)
        s->term_matched_end = e;
    uint64_t c = m->commit < s->term_matched_end ? m->commit : s->term_matched_end;
    if (c > s->commit)
        s->commit = c;
    if (e > s->leader_matched_end)
        s->leader_matched_end = e;
    /* An append sent after the leader saw this incarnation: every record
     * committed with an acknowledgement we lost lies below its log end. */
    if (s->recovering && m->to_boot == node->cfg.boot_id &&
        m->end < s->recover_target)
        s->recover_target = m->end;
    check_recovered(s);
    r.flags = RAFT_MSGF_OK;
    r.end = e;
    uint64_t ff = first_faulty(s);
    r.match = e < ff ? e : ff;
    if (node->cfg.test_break & RAFT_BREAK_ACK_UNSYNCED)
        return ob_push(out, &r, NULL, 0);
    return send_after_persist(node, s, shard, &r, out);
}

static int handle_append_resp(raft_node *node, raft_shard *s, uint32_t shard,
                              const raft_msg *m, uint64_t now, raft_outbox *out)
{
    if (m->term != s->term || s->role != RAFT_LEADER)
        return 0;
    uint32_t i = (uint32_t)member_idx(node, m->from);
    progress *pr = &s->prs[i];
    if (m->boot < pr->boot)
        return 0; /* from before the follower restarted */
    if (m->boot > pr->boot) {
        /* The follower restarted: what it acknowledged before may be gone,
         * and its older answers still in flight must not count. */
        pr->boot = m->boot;
        pr->match = 0;
        pr->probing = 1;
        pr->probe_outstanding = 0;
        pr->inf_n = 0;
    }
    pr->last_heard_ms = now;
    if (m->flags & RAFT_MSGF_OK) {
        if (m->end > s->end || m->match > m->end || m->offset > m->end)
            return RAFT_EPROTO;
        if (m->match > pr->match)
            pr->match = m->match;
        if (pr->probing) {
            if (m->offset == pr->next) {
                pr->probing = 0;
                pr->probe_outstanding = 0;
                pr->next = m->end;
                pr->inf_n = 0;
                pr->last_progress_ms = now;
            }
        } else {
            int popped = 0;
            while (pr->inf_n && pr->inflight[pr->inf_head] <= m->end) {
                pr->inf_head = (pr->inf_head + 1) % MAX_INFLIGHT;
                pr->inf_n--;
                popped = 1;
            }
            if (popped)
                pr->last_progress_ms = now;
        }
        maybe_commit(node, s);
        return send_more(node, s, shard, i, now, out);
    }
    /* Refused. An answer to an append of an older term carries the
     * follower's term, which may be ours now (we led that older term too):
     * it says nothing about our log. */
    if (m->reason == RAFT_R_STALE_TERM)
        return 0;
    /* Ignore answers to requests we no longer stand behind. */
    if (pr->probing ? m->offset != pr->next : m->offset < pr->match)
        return 0;
    if (m->offset == 0 || m->hint_offset > m->end)
        return RAFT_EPROTO; /* prev_offset 0 always matches */
    uint64_t p = m->offset, cand;
    if (m->hint_term == 0)
        cand = m->hint_offset;
    else {
        /* Jump to the end of the follower's term in our log if we have that
         * term, else to where the term starts in the follower's log. */
        uint64_t e = epoch_end(s, m->hint_term);
        cand = e != NO_OFFSET ? e : m->hint_offset;
    }
    if (cand > p - 1)
        cand = p - 1;
    uint64_t nn = boundary_below(s, cand);
    if (m->hint_term == 0 && m->hint_offset < pr->match) {
        /* The follower lost records it had acknowledged (it restarted with
         * a shorter log): what it holds is no longer known. */
        if (nn < pr->match)
            pr->match = nn;
    } else if (nn < pr->match) {
        nn = pr->match;
    }
    pr->next = nn;
    pr->probing = 1;
    pr->probe_outstanding = 0;
    pr->inf_n = 0;
    return send_more(node, s, shard, i, now, out);
}

static int handle_fetch(raft_node *node, raft_shard *s, uint32_t shard,
                        const raft_msg *m, raft_outbox *out)
{
    raft_msg r = msg_to(node, s, shard, RAFT_MSG_FETCH_RESP, m->from);
    r.offset = m->offset;
    uint64_t from = m->offset, to = m->match;
    /* Serve only what is durable here: the bytes must be on our disk for
     * the transport to read them, and a repair must not copy a record
     * that a crash here could still take back. */
    int ok = to <= s->durable_end && term_at(s, to - 1) == m->log_term &&
             is_boundary(s, from) && is_boundary(s, to);
    for (size_t i = 0; ok && i < s->n_faulty; i++)
        if (s->faulty[i].from < to && from < s->faulty[i].to)
            ok = 0;
    if (!ok) {
        r.reason = RAFT_R_CANNOT_SERVE;
        r.match = to;
        return ob_push(out, &r, NULL, 0);
    }
    size_t k = batch_at(s, from);
    uint32_t nb = 0;
    while (k + nb < s->n && s->log[k + nb].first_offset < to &&
           nb < node->cfg.max_batches_per_msg)
        nb++;
    r.flags = RAFT_MSGF_OK;
    r.match = s->log[k + nb - 1].first_offset + s->log[k + nb - 1].count;
    return ob_push(out, &r, &s->log[k], nb);
}

static int handle_fetch_resp(raft_node *node, raft_shard *s, uint32_t shard,
                             const raft_msg *m, uint64_t now, raft_outbox *out)
{
    if (!(m->flags & RAFT_MSGF_OK)) {
        /* Ask the next peer now rather than at the next retry. */
        if (s->n_faulty)
            return send_fetch(node, s, shard, now, out);
        return 0;
    }
    uint64_t from = m->offset, to = m->match;
    if (to > s->end)
        return 0; /* our log got shorter meanwhile */
    /* Only a range still faulty and not already being repaired. */
    uint64_t until;
    int wanted = 0;
    for (size_t i = 0; i < s->n_faulty; i++)
        if (s->faulty[i].from <= from && from < s->faulty[i].to)
            wanted = 1;
    if (!wanted || repairing(s, from, &until))
        return 0;
    /* The peer's batches must be ours, descriptor for descriptor: same
     * offsets and terms mean the same bytes. */
    for (uint32_t i = 0; i < m->n_batches; i++) {
        const raft_batch *b = &m->batches[i];
        if (!is_boundary(s, b->first_offset))
            return 0;
        const raft_batch *have = &s->log[batch_at(s, b->first_offset)];
        if (have->term != b->term || have->count != b->count)
            return 0;
    }
    if (grow((void **)&s->pend_rep, &s->cap_pend_rep, s->n_pend_rep + 1,
             sizeof *s->pend_rep))
        return shard_fail(s, RAFT_ENOMEM);
    raft_batch *copy = malloc(m->n_batches * sizeof *copy);
    if (!copy)
        return shard_fail(s, RAFT_ENOMEM);
    memcpy(copy, m->batches, m->n_batches * sizeof *copy);
    s->pend_rep[s->n_pend_rep++] = (repair){from, to, copy, m->n_batches};
    /* Go on with the rest of the damage straight away. */
    return send_fetch(node, s, shard, now, out);
}

static int validate(const raft_node *node, const raft_msg *m)
{
    if (m->type < RAFT_MSG_VOTE || m->type > RAFT_MSG_FETCH_RESP ||
        m->shard >= node->cfg.n_shards || m->to != node->cfg.self ||
        m->from == node->cfg.self || member_idx(node, m->from) < 0 ||
        m->term == 0 || m->n_batches > MAX_MSG_BATCHES ||
        (m->n_batches && !m->batches))
        return RAFT_EPROTO;
    int carries = m->type == RAFT_MSG_APPEND ||
                  (m->type == RAFT_MSG_FETCH_RESP && (m->flags & RAFT_MSGF_OK));
    if (!carries && m->n_batches)
        return RAFT_EPROTO;
    uint64_t off = m->offset, t = m->type == RAFT_MSG_APPEND ? m->log_term : 0;
    for (uint32_t i = 0; i < m->n_batches; i++) {
        const raft_batch *b = &m->batches[i];
        if (b->first_offset != off || b->count == 0 || b->term < t ||
            b->term > m->term || b->term == 0 ||
            b->first_offset + b->count < b->first_offset)
            return RAFT_EPROTO;
        off = b->first_offset + b->count;
        t = b->term;
    }
    if (m->type == RAFT_MSG_APPEND && m->log_term > m->term)
        return RAFT_EPROTO;
    if (m->type == RAFT_MSG_FETCH && m->offset >= m->match)
        return RAFT_EPROTO;
    if (m->type == RAFT_MSG_FETCH_RESP && (m->flags & RAFT_MSGF_OK) &&
        (m->n_batches == 0 || off != m->match))
        return RAFT_EPROTO;
    return 0;
}

int raft_step(raft_node *node, uint64_t now_ms, const raft_msg *m,
              raft_outbox *out)
{
    int rc = validate(node, m);
    if (rc)
        return rc;
    raft_shard *s = &node->shards[m->shard];
    if (!s->open)
        return RAFT_ENOTOPEN;
    if (s->failed)
        return RAFT_EFAILED;
    if (now_ms > node->now)
        node->now = now_ms;
    /* Any message from a later term moves us to it (section 5.1). */
    if (m->term > s->term)
        become_follower(node, s, m->term,
                        m->type == RAFT_MSG_APPEND ? m->from : RAFT_NONE,
                        now_ms);
    switch (m->type) {
    case RAFT_MSG_VOTE: return handle_vote(node, s, m->shard, m, now_ms, out);
    case RAFT_MSG_VOTE_RESP:
        return handle_vote_resp(node, s, m->shard, m, now_ms, out);
    case RAFT_MSG_APPEND:
        return handle_append(node, s, m->shard, m, now_ms, out);
    case RAFT_MSG_APPEND_RESP:
        return handle_append_resp(node, s, m->shard, m, now_ms, out);
    case RAFT_MSG_FETCH: return handle_fetch(node, s, m->shard, m, out);
    default: return handle_fetch_resp(node, s, m->shard, m, now_ms, out);
    }
}

/* ---- time -------------------------------------------------------------- */

static int heartbeat(raft_node *node, raft_shard *s, uint32_t shard,
                     uint64_t now, raft_outbox *out)
{
    for (uint32_t i = 0; i < node->cfg.n_nodes; i++) {
        if (i == node->self_idx)
            continue;
        progress *pr = &s->prs[i];
        int rc;
        if (!pr->probing && pr->inf_n &&
            now - pr->last_progress_ms >= node->cfg.retry_ms) {
            /* Answers stopped coming: something in the pipeline was lost.
             * Start again from what the follower is known to hold. */
            pr->probing = 1;
            pr->next = pr->match;
            pr->inf_n = 0;
        }
        if (pr->probing) {
            /* The probe doubles as the heartbeat and resends a lost one. */
            pr->probe_outstanding = 0;
            rc = send_more(node, s, shard, i, now, out);
        } else {
            rc = send_append(node, s, shard, i, pr->match, 0, out, NULL);
        }
        if (rc)
            return shard_fail(s, rc);
    }
    return 0;
}

int raft_notify_commit(raft_node *node, uint32_t shard, raft_outbox *out)
{
    if (shard >= node->cfg.n_shards || !node->shards[shard].open)
        return RAFT_ENOTOPEN;
    raft_shard *s = &node->shards[shard];
    if (s->failed)
        return RAFT_EFAILED;
    if (s->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    for (uint32_t i = 0; i < node->cfg.n_nodes; i++) {
        if (i == node->self_idx || s->prs[i].probing)
            continue;
        int rc = send_append(node, s, shard, i, s->prs[i].match, 0, out, NULL);
        if (rc)
            return shard_fail(s, rc);
    }
    return 0;
}

static int tick_shard(raft_node *node, raft_shard *s, uint32_t shard,
                      uint64_t now, int hb, raft_outbox *out)
{
    if (s->role == RAFT_LEADER) {
        /* Check quorum: a leader cut off from a majority steps down, so a
         * minority side stops accepting writes instead of hanging them. */
        uint32_t lim = node->cfg.election_max_ms;
        if (now - s->leader_since >= lim) {
            uint32_t heard = 1;
            for (uint32_t i = 0; i < node->cfg.n_nodes; i++)
                if (i != node->self_idx && now - s->prs[i].last_heard_ms < lim)
                    heard++;
            if (heard < node->quorum) {
                step_down(node, s, now);
                return 0;
            }
        }
        return hb ? heartbeat(node, s, shard, now, out) : 0;
    }
    if (s->n_faulty && now >= s->fetch_next_ms) {
        int rc = send_fetch(node, s, shard, now, out);
        if (rc)
            return shard_fail(s, rc);
    }
    if (now >= s->election_deadline) {
        if (!eligible(s)) {
            /* Damaged or behind: never a candidate, just wait. */
            reset_election_timer(node, s, now);
            return 0;
        }
        return campaign(node, s, shard, now, out);
    }
    return 0;
}

int raft_tick(raft_node *node, uint64_t now_ms, raft_outbox *out)
{
    if (now_ms < node->now)
        now_ms = node->now;
    node->now = now_ms;
    int hb = now_ms >= node->hb_next;
    if (hb)
        node->hb_next = now_ms + node->cfg.heartbeat_ms;
    int first = 0;
    for (uint32_t i = 0; i < node->cfg.n_shards; i++) {
        raft_shard *s = &node->shards[i];
        if (!s->open || s->failed)
            continue;
        int rc = tick_shard(node, s, i, now_ms, hb, out);
        if (rc && !first)
            first = rc;
    }
    return first;
}

/* ---- proposals and persistence ----------------------------------------- */

int raft_propose(raft_node *node, uint32_t shard, uint32_t count,
                 raft_batch *out_batch, raft_outbox *out)
{
    if (shard >= node->cfg.n_shards || count == 0)
        return RAFT_EINVAL;
    raft_shard *s = &node->shards[shard];
    if (!s->open)
        return RAFT_ENOTOPEN;
    if (s->failed)
        return RAFT_EFAILED;
    if (s->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    raft_batch b = {s->end, s->term, count, 0};
    int rc = log_push(s, &b);
    if (rc)
        return shard_fail(s, rc);
    if (out_batch)
        *out_batch = b;
    rc = bcast_append(node, s, shard, node->now, out);
    maybe_commit(node, s);
    return rc ? shard_fail(s, rc) : 0;
}

static int take_one(raft_node *node, raft_shard *s, uint32_t shard,
                    raft_persist *it)
{
    memset(it, 0, sizeof *it);
    it->shard = shard;
    if (grow((void **)&s->outs, &s->cap_outs, s->n_outs + 1, sizeof *s->outs))
        return RAFT_ENOMEM;
    outstanding o = {0};
    if (s->pend_hard) {
        it->write_hard_state = 1;
        it->term = s->term;
        it->voted_for = s->voted_for;
    }
    if (s->pend_trunc != NO_OFFSET) {
        it->truncate = 1;
        it->truncate_from = s->pend_trunc;
    }
    if (s->pend_from < s->end) {
        size_t k = batch_at(s, s->pend_from);
        size_t nb = s->n - k;
        raft_batch *p = arena_alloc(&node->persist_arena, nb);
        if (!p)
            return RAFT_ENOMEM;
        memcpy(p, &s->log[k], nb * sizeof *p);
        it->batches = p;
        it->n_batches = nb;
    }
    if (s->n_pend_rep) {
        size_t nb = 0;
        for (size_t i = 0; i < s->n_pend_rep; i++)
            nb += s->pend_rep[i].n;
        raft_batch *p = arena_alloc(&node->persist_arena, nb);
        o.repairs = malloc(s->n_pend_rep * sizeof *o.repairs);
        if (!p || !o.repairs) {
            free(o.repairs);
            return RAFT_ENOMEM;
        }
        nb = 0;
        for (size_t i = 0; i < s->n_pend_rep; i++) {
            memcpy(p + nb, s->pend_rep[i].b, s->pend_rep[i].n * sizeof *p);
            nb += s->pend_rep[i].n;
            o.repairs[i] = (raft_range){s->pend_rep[i].from, s->pend_rep[i].to};
            free(s->pend_rep[i].b);
        }
        o.n_repairs = s->n_pend_rep;
        it->repair = p;
        it->n_repair = nb;
    }
    it->seq = ++s->seq_issued;
    o.seq = it->seq;
    o.valid_end = s->end;
    s->outs[s->n_outs++] = o;
    s->pend_hard = 0;
    s->pend_trunc = NO_OFFSET;
    s->pend_from = s->end;
    s->handed_end = s->end;
    s->n_pend_rep = 0;
    return 0;
}

size_t raft_persist_take(raft_node *node, raft_persist *items, size_t max)
{
    arena_reset(node->persist_arena);
    size_t n = 0;
    uint32_t ns = node->cfg.n_shards;
    for (uint32_t k = 0; k < ns && n < max; k++) {
        uint32_t i = (node->take_rr + k) % ns;
        raft_shard *s = &node->shards[i];
        if (!s->open || s->failed || !has_pending(s))
            continue;
        if (take_one(node, s, i, &items[n])) {
            shard_fail(s, RAFT_ENOMEM);
            continue;
        }
        n++;
    }
    node->take_rr++;
    return n;
}

int raft_persisted(raft_node *node, uint32_t shard, uint64_t seq,
                   raft_outbox *out)
{
    if (shard >= node->cfg.n_shards)
        return RAFT_EINVAL;
    raft_shard *s = &node->shards[shard];
    if (!s->open)
        return RAFT_ENOTOPEN;
    if (s->failed)
        return RAFT_EFAILED;
    if (seq > s->seq_issued)
        return RAFT_EINVAL;
    size_t k = 0;
    while (k < s->n_outs && s->outs[k].seq <= seq) {
        outstanding *o = &s->outs[k];
        s->durable_end = o->valid_end;
        for (size_t j = 0; j < o->n_repairs; j++)
            if (faulty_remove(s, o->repairs[j].from, o->repairs[j].to))
                return shard_fail(s, RAFT_ENOMEM);
        free(o->repairs);
        s->seq_done = o->seq;
        k++;
    }
    memmove(s->outs, s->outs + k, (s->n_outs - k) * sizeof *s->outs);
    s->n_outs -= k;
    /* Release what waited for this. */
    size_t w = 0;
    int rc = 0;
    for (size_t i = 0; i < node->n_held; i++) {
        held_msg *h = &node->held[i];
        if (h->shard == shard && h->seq <= s->seq_done) {
            if (!rc)
                rc = ob_push(out, &h->m, NULL, 0);
            continue;
        }
        node->held[w++] = *h;
    }
    node->n_held = w;
    if (rc)
        return shard_fail(s, rc);
    check_recovered(s);
    if (s->role == RAFT_LEADER)
        maybe_commit(node, s);
    else if (s->role == RAFT_CANDIDATE &&
             (uint32_t)__builtin_popcount(s->votes) >= node->quorum &&
             s->seq_done >= s->campaign_seq)
        return become_leader(node, s, shard, node->now, out);
    return 0;
}

/* ---- faults ------------------------------------------------------------ */

int raft_mark_faulty(raft_node *node, uint32_t shard, uint64_t from,
                     uint64_t to, raft_outbox *out)
{
    if (shard >= node->cfg.n_shards)
        return RAFT_EINVAL;
    raft_shard *s = &node->shards[shard];
    if (!s->open)
        return RAFT_ENOTOPEN;
    if (s->failed)
        return RAFT_EFAILED;
    if (from >= to || to > s->end)
        return RAFT_EINVAL;
    if (faulty_add(s, from, to))
        return shard_fail(s, RAFT_ENOMEM);
    /* A leader cannot serve what it cannot read: let a whole replica lead. */
    if (s->role != RAFT_FOLLOWER)
        step_down(node, s, node->now);
    int rc = send_fetch(node, s, shard, node->now, out);
    return rc ? shard_fail(s, rc) : 0;
}

int raft_clear_faulty(raft_node *node, uint32_t shard, uint64_t from,
                      uint64_t to)
{
    if (shard >= node->cfg.n_shards || from >= to)
        return RAFT_EINVAL;
    raft_shard *s = &node->shards[shard];
    if (!s->open)
        return RAFT_ENOTOPEN;
    if (faulty_remove(s, from, to))
        return shard_fail(s, RAFT_ENOMEM);
    return 0;
}

/* ---- inspection -------------------------------------------------------- */

int raft_shard_info_get(const raft_node *node, uint32_t shard,
                        raft_shard_info *out)
{
    memset(out, 0, sizeof *out);
    if (shard >= node->cfg.n_shards)
        return RAFT_EINVAL;
    const raft_shard *s = &node->shards[shard];
    if (!s->open)
        return RAFT_ENOTOPEN;
    out->shard = shard;
    out->role = s->role;
    out->term = s->term;
    out->voted_for = s->voted_for;
    out->leader = s->leader;
    out->end_offset = s->end;
    out->durable_offset = s->durable_end;
    out->commit_offset = s->commit;
    out->last_term = last_term(s);
    out->n_batches = (uint32_t)s->n;
    out->recovering = s->recovering;
    out->recover_target = s->recover_target;
    out->n_faulty = (uint32_t)s->n_faulty;
    out->first_faulty = first_faulty(s);
    out->failed = s->failed;
    out->log_version = s->log_version;
    if (s->role == RAFT_LEADER)
        for (uint32_t i = 0; i < node->cfg.n_nodes; i++) {
            if (i == node->self_idx)
                continue;
            const progress *pr = &s->prs[i];
            out->peers[out->n_peers++] = (raft_peer_info){
                node->cfg.nodes[i], pr->match,   pr->next,
                pr->inf_n,          pr->probing, pr->last_heard_ms};
        }
    return 0;
}

int raft_shard_log(const raft_node *node, uint32_t shard,
                   const raft_batch **batches, size_t *n)
{
    if (shard >= node->cfg.n_shards)
        return RAFT_EINVAL;
    const raft_shard *s = &node->shards[shard];
    if (!s->open)
        return RAFT_ENOTOPEN;
    *batches = s->log;
    *n = s->n;
    return 0;
}

uint64_t raft_term_at(const raft_node *node, uint32_t shard, uint64_t offset)
{
    if (shard >= node->cfg.n_shards || !node->shards[shard].open)
        return 0;
    return term_at(&node->shards[shard], offset);
}
