/*
 * raft_sim.c — the simulator described in raft_sim.h.
 *
 * Time moves in 1 ms steps. In each step, in this order: fault events (in
 * the fault phase), restarts that are due, persist items whose simulated
 * fsync completed (applied to the node's disk, then raft_persisted), messages
 * due for delivery (raft_step), ticks (every node every TICK_MS, staggered),
 * client proposals. After every call into a node its outbox is routed into
 * the network, its storage work queued, and the checker run on it.
 */
#include "raft_sim.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft.h"

#define TICK_MS         5
#define HEARTBEAT_MS    30
#define ELECTION_MIN_MS 150
#define ELECTION_MAX_MS 300
/* After healing: every shard has a leader known to all within this, */
#define LEADER_BOUND_MS 3000
/* and everything (requests, repairs, catch-up) is done within this. */
#define DONE_BOUND_MS      10000
#define REQUESTS_PER_SHARD 4

typedef struct dbatch {
    raft_batch b;
    int damaged;
} dbatch;

typedef struct disk {
    uint64_t term;
    uint32_t vote;
    dbatch *log;
    size_t n, cap;
    raft_batch *lost; /* destroyed by an injected fault after being durable */
    size_t nlost, caplost;
    uint64_t restart_acked; /* acked_end for restarts until recovered */
} disk;

typedef struct pitem {
    uint32_t shard;
    uint64_t seq;
    int hard;
    uint64_t term;
    uint32_t vote;
    int trunc;
    uint64_t trunc_from;
    raft_batch *b;
    size_t nb;
    raft_batch *rep;
    size_t nrep;
    uint64_t done_at;
} pitem;

typedef struct prop {
    uint32_t shard;
    raft_batch b;
    int req; /* client request index, -1 for fault-phase proposals */
} prop;

typedef struct creq {
    uint32_t shard;
    int state; /* 0 to submit, 1 pending, 2 acked */
    uint64_t submit_at;
} creq;

typedef struct snode {
    uint32_t id;
    raft_node *rn;
    int up;
    uint64_t restart_at;
    disk d[RSIM_MAX_SHARDS];
    pitem *q;
    size_t qhead, qn, qcap;
    uint64_t last_done_at;
    uint64_t next_tick;
    /* checker baselines per shard */
    int seen[RSIM_MAX_SHARDS];
    uint64_t seen_version[RSIM_MAX_SHARDS], seen_commit[RSIM_MAX_SHARDS];
    uint64_t lm[RSIM_MAX_SHARDS]; /* prefix equal to the ledger */
    uint64_t notified[RSIM_MAX_SHARDS]; /* commit last sent by notify */
    prop *props;
    size_t np, capp;
} snode;

typedef struct netmsg {
    uint64_t at, seq;
    raft_msg m;
    raft_batch *b;
} netmsg;

typedef struct ledger {
    raft_batch *b;
    uint64_t *cterm; /* term in which each batch was seen committed */
    size_t n, cap;
    uint64_t end;
} ledger;

typedef struct acked {
    uint32_t shard;
    raft_batch b;
} acked;

typedef struct sim {
    rsim_opts o;
    rsim_result *r;
    uint64_t rng;
    uint64_t now;
    uint64_t heal_at;
    int healed;
    snode nodes[RSIM_MAX_NODES];
    netmsg *heap;
    size_t hn, hcap;
    uint64_t mseq;
    int link[RSIM_MAX_NODES][RSIM_MAX_NODES];
    uint32_t loss_pct, dup_pct, delay_max;
    ledger led[RSIM_MAX_SHARDS];
    uint32_t *leader_of[RSIM_MAX_SHARDS]; /* [term] = node id */
    size_t lcap[RSIM_MAX_SHARDS];
    acked *ack;
    size_t nack, capack;
    creq *reqs;
    size_t nreq;
    uint64_t boot_counter;
    raft_outbox ob;
    int failed;
} sim;

/* ---- utilities --------------------------------------------------------- */

static uint64_t rnd(sim *S)
{
    uint64_t x = S->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    S->rng = x;
    return x;
}

static uint64_t rndn(sim *S, uint64_t n)
{
    return n ? rnd(S) % n : 0;
}

static void *xgrow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *q = realloc(p, nc * elem);
    if (!q) {
        fprintf(stderr, "raft_sim: out of memory\n");
        abort();
    }
    *cap = nc;
    return q;
}

__attribute__((format(printf, 2, 3))) static void fail(sim *S, const char *fmt,
                                                       ...)
{
    if (S->failed)
        return;
    S->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(S->r->error, sizeof S->r->error, fmt, ap);
    va_end(ap);
    S->r->error_at_ms = S->now;
    if (S->o.trace)
        fprintf(stderr, "%6llu VIOLATION %s\n", (unsigned long long)S->now,
                S->r->error);
}

__attribute__((format(printf, 2, 3))) static void trace(sim *S, const char *fmt,
                                                        ...)
{
    if (!S->o.trace)
        return;
    va_list ap;
    fprintf(stderr, "%6llu ", (unsigned long long)S->now);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const char *type_name(uint32_t t)
{
    static const char *n[] = {"?",           "VOTE",  "VOTE_RESP", "APPEND",
                              "APPEND_RESP", "FETCH", "FETCH_RESP"};
    return t <= 6 ? n[t] : "?";
}

static int same_batch(const raft_batch *a, const raft_batch *b)
{
    return a->first_offset == b->first_offset && a->term == b->term &&
           a->count == b->count;
}

/* Index of the ledger batch starting at o, or -1. */
static long ledger_at(const ledger *L, uint64_t o)
{
    size_t lo = 0, hi = L->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (L->b[mid].first_offset < o)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < L->n && L->b[lo].first_offset == o ? (long)lo : -1;
}

/* ---- network ----------------------------------------------------------- */

static int heap_less(const netmsg *a, const netmsg *b)
{
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static void heap_push(sim *S, netmsg *m)
{
    S->heap = xgrow(S->heap, &S->hcap, S->hn + 1, sizeof *S->heap);
    size_t i = S->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(m, &S->heap[p]))
            break;
        S->heap[i] = S->heap[p];
        i = p;
    }
    S->heap[i] = *m;
}

static netmsg heap_pop(sim *S)
{
    netmsg top = S->heap[0];
    netmsg last = S->heap[--S->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= S->hn)
            break;
        if (c + 1 < S->hn && heap_less(&S->heap[c + 1], &S->heap[c]))
            c++;
        if (!heap_less(&S->heap[c], &last))
            break;
        S->heap[i] = S->heap[c];
        i = c;
    }
    if (S->hn)
        S->heap[i] = last;
    return top;
}

static void net_send(sim *S, const raft_msg *m)
{
    S->r->messages++;
    uint32_t f = m->from - 1, t = m->to - 1;
    if (!S->link[f][t] || rndn(S, 100) < S->loss_pct)
        return;
    int copies = 1 + (rndn(S, 100) < S->dup_pct);
    for (int k = 0; k < copies; k++) {
        netmsg nm;
        nm.m = *m;
        nm.b = NULL;
        if (m->n_batches) {
            nm.b = malloc(m->n_batches * sizeof *nm.b);
            memcpy(nm.b, m->batches, m->n_batches * sizeof *nm.b);
        }
        nm.m.batches = NULL;
        uint64_t d = 1 + rndn(S, S->delay_max);
        if ((S->o.faults & RSIM_F_DELAY) && !S->healed && rndn(S, 100) < 2)
            d += rndn(S, 400); /* a straggler */
        nm.at = S->now + d;
        nm.seq = S->mseq++;
        heap_push(S, &nm);
    }
}

/* ---- disks ------------------------------------------------------------- */

static void disk_truncate(sim *S, snode *N, uint32_t shard, uint64_t from)
{
    disk *D = &N->d[shard];
    const ledger *L = &S->led[shard];
    size_t k = D->n;
    while (k > 0 && D->log[k - 1].b.first_offset >= from)
        k--;
    if (k < D->n && D->log[k].b.first_offset != from)
        fail(S, "node %u shard %u: disk truncation at %llu inside a batch",
             N->id, shard, (unsigned long long)from);
    for (size_t i = k; i < D->n; i++) {
        long li = ledger_at(L, D->log[i].b.first_offset);
        if (li >= 0 && same_batch(&L->b[li], &D->log[i].b))
            fail(S,
                 "node %u shard %u: committed batch at %llu (term %llu) "
                 "removed from disk",
                 N->id, shard, (unsigned long long)D->log[i].b.first_offset,
                 (unsigned long long)D->log[i].b.term);
    }
    D->n = k;
}

static void disk_append(sim *S, snode *N, uint32_t shard, const raft_batch *b)
{
    disk *D = &N->d[shard];
    uint64_t end =
        D->n ? D->log[D->n - 1].b.first_offset + D->log[D->n - 1].b.count : 0;
    uint64_t lt = D->n ? D->log[D->n - 1].b.term : 0;
    if (b->first_offset != end || b->term < lt || b->term > D->term) {
        fail(S,
             "node %u shard %u: bad append to disk: batch %llu+%u term %llu "
             "after end %llu term %llu (hard term %llu)",
             N->id, shard, (unsigned long long)b->first_offset, b->count,
             (unsigned long long)b->term, (unsigned long long)end,
             (unsigned long long)lt, (unsigned long long)D->term);
        return;
    }
    D->log = xgrow(D->log, &D->cap, D->n + 1, sizeof *D->log);
    D->log[D->n++] = (dbatch){*b, 0};
}

static void disk_repair(sim *S, snode *N, uint32_t shard, const raft_batch *b)
{
    disk *D = &N->d[shard];
    for (size_t i = 0; i < D->n; i++)
        if (D->log[i].b.first_offset == b->first_offset) {
            if (!same_batch(&D->log[i].b, b))
                fail(S,
                     "node %u shard %u: repair with a different batch at %llu",
                     N->id, shard, (unsigned long long)b->first_offset);
            if (D->log[i].damaged)
                S->r->repaired++;
            D->log[i].damaged = 0;
            return;
        }
    fail(S, "node %u shard %u: repair of a batch not on disk (%llu)", N->id,
         shard, (unsigned long long)b->first_offset);
}

/* Apply the first `steps` sub-steps of an item (SIZE_MAX: all of it). */
static void apply_item(sim *S, snode *N, const pitem *it, size_t steps)
{
    size_t k = 0;
    disk *D = &N->d[it->shard];
    if (it->hard) {
        if (k++ >= steps)
            return;
        D->term = it->term;
        D->vote = it->vote;
    }
    if (it->trunc) {
        if (k++ >= steps)
            return;
        disk_truncate(S, N, it->shard, it->trunc_from);
    }
    for (size_t i = 0; i < it->nb; i++) {
        if (k++ >= steps)
            return;
        disk_append(S, N, it->shard, &it->b[i]);
    }
    for (size_t i = 0; i < it->nrep; i++) {
        if (k++ >= steps)
            return;
        disk_repair(S, N, it->shard, &it->rep[i]);
    }
}

static size_t item_steps(const pitem *it)
{
    return (size_t)(it->hard != 0) + (size_t)(it->trunc != 0) + it->nb +
           it->nrep;
}

static void item_free(pitem *it)
{
    free(it->b);
    free(it->rep);
}

/* ---- checker ----------------------------------------------------------- */

/* Log matching between two logs: once they differ, no later record may
 * have the same offset and term in both. */
static void check_matching(sim *S, uint32_t shard, uint32_t ia,
                           const raft_batch *a, size_t na, uint32_t ib,
                           const raft_batch *b, size_t nb)
{
    size_t i = 0, j = 0;
    int diverged = 0;
    while (i < na && j < nb) {
        const raft_batch *x = &a[i], *y = &b[j];
        if (x->term == y->term) {
            if (diverged || x->first_offset != y->first_offset ||
                x->count != y->count) {
                fail(S,
                     "log matching broken on shard %u between nodes %u and "
                     "%u: term %llu at offsets %llu+%u / %llu+%u after "
                     "they differ",
                     shard, ia, ib, (unsigned long long)x->term,
                     (unsigned long long)x->first_offset, x->count,
                     (unsigned long long)y->first_offset, y->count);
                return;
            }
        } else {
            diverged = 1;
        }
        uint64_t xe = x->first_offset + x->count,
                 ye = y->first_offset + y->count;
        if (xe <= ye)
            i++;
        if (ye <= xe)
            j++;
    }
}

static uint64_t ledger_prefix(const ledger *L, const raft_batch *b, size_t n)
{
    size_t i = 0;
    while (i < n && i < L->n && same_batch(&b[i], &L->b[i]))
        i++;
    return i ? b[i - 1].first_offset + b[i - 1].count : 0;
}

static void check_props(sim *S, snode *N);

static void check_node(sim *S, snode *N)
{
    if (!N->up || S->failed)
        return;
    for (uint32_t s = 0; s < S->o.n_shards && !S->failed; s++) {
        raft_shard_info in;
        if (raft_shard_info_get(N->rn, s, &in)) {
            fail(S, "node %u shard %u: info failed", N->id, s);
            return;
        }
        if (in.failed) {
            fail(S, "node %u shard %u failed: %s", N->id, s,
                 raft_strerror(in.failed));
            return;
        }
        if (in.term > S->r->max_term)
            S->r->max_term = in.term;
        /* The caller keeps passing acked_end at restarts until the replica
         * has caught up (it must survive a crash while recovering). */
        if (!in.recovering && N->d[s].restart_acked) {
            N->d[s].restart_acked = 0;
            S->r->recovered++;
            trace(S, "node %u shard %u recovered", N->id, s);
        }
        ledger *L = &S->led[s];
        const raft_batch *log;
        size_t n;
        raft_shard_log(N->rn, s, &log, &n);
        if (in.role == RAFT_LEADER) {
            if (in.term + 1 > S->lcap[s]) {
                size_t old = S->lcap[s];
                S->leader_of[s] = xgrow(S->leader_of[s], &S->lcap[s],
                                        in.term + 1, sizeof *S->leader_of[s]);
                memset(S->leader_of[s] + old, 0,
                       (S->lcap[s] - old) * sizeof *S->leader_of[s]);
            }
            uint32_t *lo = &S->leader_of[s][in.term];
            if (*lo != 0 && *lo != N->id) {
                fail(S,
                     "election safety: shard %u has leaders %u and %u in term "
                     "%llu",
                     s, *lo, N->id, (unsigned long long)in.term);
                return;
            }
            if (*lo == 0) {
                *lo = N->id;
                S->r->leaders++;
                trace(S, "node %u leads shard %u in term %llu (end %llu)",
                      N->id, s, (unsigned long long)in.term,
                      (unsigned long long)in.end_offset);
                /* Leader completeness. */
                uint64_t need = 0;
                for (size_t i = 0; i < L->n && L->cterm[i] < in.term; i++)
                    need = L->b[i].first_offset + L->b[i].count;
                uint64_t have = ledger_prefix(L, log, n);
                if (have < need) {
                    fail(S,
                         "leader completeness: node %u leads shard %u in term "
                         "%llu without committed records %llu..%llu",
                         N->id, s, (unsigned long long)in.term,
                         (unsigned long long)have, (unsigned long long)need);
                    return;
                }
            }
        }
        if (N->seen[s] && in.log_version == N->seen_version[s] &&
            in.commit_offset == N->seen_commit[s])
            continue;
        int log_changed = !N->seen[s] || in.log_version != N->seen_version[s];
        uint64_t lm = ledger_prefix(L, log, n);
        if (N->seen[s] && lm < N->lm[s]) {
            fail(S,
                 "node %u shard %u: committed records from %llu rolled back "
                 "in memory",
                 N->id, s, (unsigned long long)lm);
            return;
        }
        if (in.commit_offset > in.end_offset) {
            fail(S, "node %u shard %u: commit %llu beyond log end %llu", N->id,
                 s, (unsigned long long)in.commit_offset,
                 (unsigned long long)in.end_offset);
            return;
        }
        if (in.commit_offset > lm) {
            if (lm < L->end) {
                fail(S,
                     "state machine safety: node %u shard %u commits up to "
                     "%llu but differs from the committed log at %llu",
                     N->id, s, (unsigned long long)in.commit_offset,
                     (unsigned long long)lm);
                return;
            }
            /* Extend the ledger with this node's newly committed batches. */
            for (size_t i = L->n;
                 i < n && log[i].first_offset < in.commit_offset; i++) {
                if (log[i].first_offset + log[i].count > in.commit_offset) {
                    fail(S, "node %u shard %u: commit %llu inside a batch",
                         N->id, s, (unsigned long long)in.commit_offset);
                    return;
                }
                size_t cap = L->cap;
                L->b = xgrow(L->b, &cap, L->n + 1, sizeof *L->b);
                if (cap != L->cap) {
                    L->cterm = realloc(L->cterm, cap * sizeof *L->cterm);
                    L->cap = cap;
                }
                L->b[L->n] = log[i];
                L->cterm[L->n] = in.term;
                L->n++;
                L->end = log[i].first_offset + log[i].count;
            }
            lm = ledger_prefix(L, log, n);
        }
        N->lm[s] = lm;
        N->seen[s] = 1;
        N->seen_version[s] = in.log_version;
        N->seen_commit[s] = in.commit_offset;
        if (!log_changed)
            continue;
        for (uint32_t j = 0; j < S->o.n_nodes; j++) {
            snode *M = &S->nodes[j];
            if (M == N || !M->up)
                continue;
            const raft_batch *log2;
            size_t n2;
            raft_shard_log(M->rn, s, &log2, &n2);
            check_matching(S, s, N->id, log, n, M->id, log2, n2);
        }
    }
    check_props(S, N);
}

static int disk_holds(const snode *N, uint32_t shard, const raft_batch *b)
{
    const disk *D = &N->d[shard];
    size_t lo = 0, hi = D->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (D->log[mid].b.first_offset < b->first_offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < D->n && same_batch(&D->log[lo].b, b))
        return 1;
    for (size_t i = 0; i < D->nlost; i++)
        if (same_batch(&D->lost[i], b))
            return 1;
    return 0;
}

/* Resolve the node's pending proposals: acked, lost or still open. */
static void check_props(sim *S, snode *N)
{
    size_t k = 0;
    for (size_t i = 0; i < N->np; i++) {
        prop *p = &N->props[i];
        raft_shard_info in;
        raft_shard_info_get(N->rn, p->shard, &in);
        uint64_t e = p->b.first_offset + p->b.count;
        if (e > in.end_offset ||
            raft_term_at(N->rn, p->shard, p->b.first_offset) != p->b.term) {
            if (p->req >= 0)
                S->reqs[p->req].state = 0; /* the client retries */
            continue;
        }
        if (in.commit_offset < e) {
            N->props[k++] = *p;
            continue;
        }
        /* Acked to the client now: durable on a majority, committed. */
        uint32_t holders = 0;
        for (uint32_t j = 0; j < S->o.n_nodes; j++)
            holders += (uint32_t)disk_holds(&S->nodes[j], p->shard, &p->b);
        if (holders < S->o.n_nodes / 2 + 1)
            fail(S,
                 "ack of shard %u batch %llu+%u term %llu by node %u with "
                 "only %u durable copies",
                 p->shard, (unsigned long long)p->b.first_offset, p->b.count,
                 (unsigned long long)p->b.term, N->id, holders);
        const ledger *L = &S->led[p->shard];
        long li = ledger_at(L, p->b.first_offset);
        if (li < 0 || !same_batch(&L->b[li], &p->b))
            fail(
                S,
                "ack of shard %u batch %llu term %llu not in the committed log",
                p->shard, (unsigned long long)p->b.first_offset,
                (unsigned long long)p->b.term);
        S->ack = xgrow(S->ack, &S->capack, S->nack + 1, sizeof *S->ack);
        S->ack[S->nack++] = (acked){p->shard, p->b};
        S->r->acked++;
        if (p->req >= 0)
            S->reqs[p->req].state = 2;
    }
    N->np = k;
}

/* ---- driving nodes ----------------------------------------------------- */

static void trace_msg(sim *S, const char *dir, const raft_msg *m)
{
    trace(S,
          "%s %u->%u s%u %s t%llu off %llu lt %llu c %llu m %llu e %llu "
          "ht %llu ho %llu nb %u%s",
          dir, m->from, m->to, m->shard, type_name(m->type),
          (unsigned long long)m->term, (unsigned long long)m->offset,
          (unsigned long long)m->log_term, (unsigned long long)m->commit,
          (unsigned long long)m->match, (unsigned long long)m->end,
          (unsigned long long)m->hint_term, (unsigned long long)m->hint_offset,
          m->n_batches, (m->flags & RAFT_MSGF_OK) ? " OK" : "");
}

static void after_call(sim *S, snode *N, int rc, const char *what)
{
    if (rc) {
        fail(S, "node %u: %s returned %s", N->id, what, raft_strerror(rc));
        raft_outbox_reset(&S->ob);
        return;
    }
    /* As chatd does: a leader whose commit offset moved tells the
     * followers at once (raft_notify_commit). Odd seeds only, so that even
     * ones keep the trajectories of heartbeat-only commit propagation. */
    for (uint32_t sh = 0; (S->o.seed & 1) && sh < S->o.n_shards; sh++) {
        raft_shard_info ri;
        if (raft_shard_info_get(N->rn, sh, &ri) || ri.role != RAFT_LEADER ||
            ri.commit_offset == N->notified[sh])
            continue;
        N->notified[sh] = ri.commit_offset;
        int nrc = raft_notify_commit(N->rn, sh, &S->ob);
        if (nrc) {
            fail(S, "node %u: raft_notify_commit returned %s", N->id, raft_strerror(nrc));
            raft_outbox_reset(&S->ob);
            return;
        }
    }
    for (size_t i = 0; i < S->ob.n; i++) {
        const raft_msg *m = &S->ob.msgs[i];
        if (S->o.trace)
            trace_msg(S, "send", m);
        net_send(S, m);
    }
    raft_outbox_reset(&S->ob);
    raft_persist items[16];
    size_t n;
    while ((n = raft_persist_take(N->rn, items, 16)) > 0) {
        for (size_t i = 0; i < n; i++) {
            const raft_persist *p = &items[i];
            pitem it = {0};
            it.shard = p->shard;
            it.seq = p->seq;
            it.hard = p->write_hard_state;
            it.term = p->term;
            it.vote = p->voted_for;
            it.trunc = p->truncate;
            it.trunc_from = p->truncate_from;
            if (p->n_batches) {
                it.b = malloc(p->n_batches * sizeof *it.b);
                memcpy(it.b, p->batches, p->n_batches * sizeof *it.b);
                it.nb = p->n_batches;
            }
            if (p->n_repair) {
                it.rep = malloc(p->n_repair * sizeof *it.rep);
                memcpy(it.rep, p->repair, p->n_repair * sizeof *it.rep);
                it.nrep = p->n_repair;
            }
            uint64_t at = S->now + rndn(S, 4);
            if (at < N->last_done_at)
                at = N->last_done_at;
            N->last_done_at = at;
            it.done_at = at;
            N->q = xgrow(N->q, &N->qcap, N->qhead + N->qn + 1, sizeof *N->q);
            N->q[N->qhead + N->qn++] = it;
        }
    }
    check_node(S, N);
}

static int storage_fault_active(sim *S)
{
    for (uint32_t i = 0; i < S->o.n_nodes; i++) {
        snode *N = &S->nodes[i];
        for (uint32_t s = 0; s < S->o.n_shards; s++) {
            disk *D = &N->d[s];
            if (D->restart_acked)
                return 1;
            for (size_t k = 0; k < D->n; k++)
                if (D->log[k].damaged)
                    return 1;
            if (N->up) {
                raft_shard_info in;
                raft_shard_info_get(N->rn, s, &in);
                if (in.recovering || in.n_faulty)
                    return 1;
            }
        }
    }
    return 0;
}

static void node_start(sim *S, snode *N)
{
    raft_config c;
    memset(&c, 0, sizeof c);
    c.self = N->id;
    c.n_nodes = S->o.n_nodes;
    for (uint32_t i = 0; i < S->o.n_nodes; i++)
        c.nodes[i] = i + 1;
    c.n_shards = S->o.n_shards;
    c.heartbeat_ms = HEARTBEAT_MS;
    c.election_min_ms = ELECTION_MIN_MS;
    c.election_max_ms = ELECTION_MAX_MS;
    c.retry_ms = 2 * HEARTBEAT_MS;
    c.max_inflight = 4;
    c.max_batches_per_msg = 4;
    c.rand_seed = rnd(S);
    c.boot_id = ++S->boot_counter;
    c.test_break = S->o.test_break;
    int rc = raft_node_new(&c, &N->rn);
    if (rc) {
        fail(S, "raft_node_new: %s", raft_strerror(rc));
        return;
    }
    for (uint32_t s = 0; s < S->o.n_shards; s++) {
        disk *D = &N->d[s];
        raft_batch *b = malloc((D->n + 1) * sizeof *b);
        raft_range *f = malloc((D->n + 1) * sizeof *f);
        size_t nf = 0;
        for (size_t i = 0; i < D->n; i++) {
            b[i] = D->log[i].b;
            if (!D->log[i].damaged)
                continue;
            uint64_t e = b[i].first_offset + b[i].count;
            if (nf && f[nf - 1].to == b[i].first_offset)
                f[nf - 1].to = e;
            else
                f[nf++] = (raft_range){b[i].first_offset, e};
        }
        raft_shard_state st = {D->term, D->vote,          b, D->n,
                               0,       D->restart_acked, f, nf};
        rc = raft_shard_open(N->rn, s, &st, S->now);
        if (D->restart_acked)
            trace(S,
                  "node %u shard %u restarts having lost a suffix (acked_end "
                  "%llu)",
                  N->id, s, (unsigned long long)D->restart_acked);
        free(b);
        free(f);
        if (rc) {
            fail(S, "node %u: raft_shard_open(%u): %s", N->id, s,
                 raft_strerror(rc));
            return;
        }
        N->seen[s] = 0;
    }
    N->up = 1;
    N->next_tick = S->now + 1 + N->id;
    trace(S, "node %u starts (boot %llu)", N->id,
          (unsigned long long)c.boot_id);
    after_call(S, N, 0, "start");
}

static void node_crash(sim *S, snode *N)
{
    /* Durable: a random prefix of the queued items, the last one torn. */
    size_t keep = (size_t)rndn(S, N->qn + 1);
    for (size_t i = 0; i < N->qn; i++) {
        pitem *it = &N->q[N->qhead + i];
        if (i < keep)
            apply_item(S, N, it, SIZE_MAX);
        else if (i == keep)
            apply_item(S, N, it, (size_t)rndn(S, item_steps(it) + 1));
        item_free(it);
    }
    N->qhead = N->qn = 0;
    N->last_done_at = 0;
    raft_node_free(N->rn);
    N->rn = NULL;
    N->up = 0;
    for (size_t i = 0; i < N->np; i++)
        if (N->props[i].req >= 0)
            S->reqs[N->props[i].req].state = 0;
    N->np = 0;
    N->restart_at = S->now + 20 + rndn(S, 600);
    S->r->crashes++;
    trace(S, "node %u crashes (restart at %llu)", N->id,
          (unsigned long long)N->restart_at);
}

/* ---- faults ------------------------------------------------------------ */

static void fault_lose_suffix(sim *S)
{
    if (storage_fault_active(S))
        return;
    snode *N = &S->nodes[rndn(S, S->o.n_nodes)];
    uint32_t s = (uint32_t)rndn(S, S->o.n_shards);
    if (N->up)
        node_crash(S, N);
    disk *D = &N->d[s];
    if (D->n == 0)
        return;
    uint64_t old_end =
        D->log[D->n - 1].b.first_offset + D->log[D->n - 1].b.count;
    size_t k = 1 + (size_t)rndn(S, D->n < 4 ? D->n : 4);
    for (size_t i = D->n - k; i < D->n; i++) {
        D->lost = xgrow(D->lost, &D->caplost, D->nlost + 1, sizeof *D->lost);
        D->lost[D->nlost++] = D->log[i].b;
    }
    D->n -= k;
    /* Half the time the replica knows what it had acked, half not. */
    D->restart_acked = rndn(S, 2) ? old_end : RAFT_ACKED_UNKNOWN;
    S->r->lost_suffixes++;
    trace(S, "node %u shard %u loses %zu durable batches (end %llu)", N->id, s,
          k, (unsigned long long)old_end);
}

static void fault_damage(sim *S)
{
    if (storage_fault_active(S))
        return;
    snode *N = &S->nodes[rndn(S, S->o.n_nodes)];
    uint32_t s = (uint32_t)rndn(S, S->o.n_shards);
    disk *D = &N->d[s];
    if (D->n == 0)
        return;
    size_t i = (size_t)rndn(S, D->n);
    D->log[i].damaged = 1;
    S->r->damages++;
    const raft_batch *b = &D->log[i].b;
    trace(S, "node %u shard %u: batch %llu+%u damaged on disk", N->id, s,
          (unsigned long long)b->first_offset, b->count);
    if (N->up) {
        /* The caller read it back and found the checksum failure. The
         * in-memory log may already be shorter (a truncation not yet
         * applied to disk); then nothing is reported. */
        raft_shard_info in;
        raft_shard_info_get(N->rn, s, &in);
        uint64_t e = b->first_offset + b->count;
        if (e <= in.end_offset &&
            raft_term_at(N->rn, s, b->first_offset) == b->term)
            after_call(S, N,
                       raft_mark_faulty(N->rn, s, b->first_offset, e, &S->ob),
                       "raft_mark_faulty");
    }
}

static void fault_event(sim *S)
{
    uint32_t f = S->o.faults;
    uint64_t r = rndn(S, 100);
    if (r < 25) {
        if (!(f & RSIM_F_CRASH))
            return;
        snode *N = &S->nodes[rndn(S, S->o.n_nodes)];
        if (N->up)
            node_crash(S, N);
    } else if (r < 33) {
        if (f & RSIM_F_LOSE_SUFFIX)
            fault_lose_suffix(S);
    } else if (r < 43) {
        if (f & RSIM_F_DAMAGE)
            fault_damage(S);
    } else if (r < 63) {
        if (!(f & RSIM_F_PARTITION))
            return;
        uint32_t a = (uint32_t)rndn(S, S->o.n_nodes),
                 how = (uint32_t)rndn(S, 5);
        if (how == 0) {
            for (uint32_t i = 0; i < S->o.n_nodes; i++)
                for (uint32_t j = 0; j < S->o.n_nodes; j++)
                    S->link[i][j] = i == j;
            trace(S, "partition: every node alone");
        } else if (how <= 2) {
            for (uint32_t j = 0; j < S->o.n_nodes; j++)
                if (j != a)
                    S->link[a][j] = S->link[j][a] = 0;
            trace(S, "partition: node %u isolated", a + 1);
        } else {
            uint32_t b = (uint32_t)rndn(S, S->o.n_nodes);
            if (a != b)
                S->link[a][b] = 0;
            trace(S, "partition: link %u->%u cut", a + 1, b + 1);
        }
        S->r->partitions++;
    } else if (r < 78) {
        static const uint32_t loss[] = {0, 2, 10, 30}, dup[] = {0, 2, 10},
                              delay[] = {2, 10, 40, 120};
        S->loss_pct = (f & RSIM_F_LOSS) ? loss[rndn(S, 4)] : 0;
        S->dup_pct = (f & RSIM_F_DUP) ? dup[rndn(S, 3)] : 0;
        S->delay_max = (f & RSIM_F_DELAY) ? delay[rndn(S, 4)] : 5;
        trace(S, "network: loss %u%% dup %u%% delay <= %u ms", S->loss_pct,
              S->dup_pct, S->delay_max);
    } else {
        for (uint32_t i = 0; i < S->o.n_nodes; i++)
            for (uint32_t j = 0; j < S->o.n_nodes; j++)
                S->link[i][j] = 1;
        trace(S, "partition healed");
    }
}

/* ---- clients ----------------------------------------------------------- */

static snode *pick_leader(sim *S, uint32_t shard, int newest)
{
    snode *c[RSIM_MAX_NODES];
    uint64_t t[RSIM_MAX_NODES];
    uint32_t n = 0;
    for (uint32_t i = 0; i < S->o.n_nodes; i++) {
        snode *N = &S->nodes[i];
        if (!N->up)
            continue;
        raft_shard_info in;
        raft_shard_info_get(N->rn, shard, &in);
        if (in.role == RAFT_LEADER) {
            t[n] = in.term;
            c[n++] = N;
        }
    }
    if (!n)
        return NULL;
    if (!newest)
        return c[rndn(S, n)];
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (t[i] > t[best])
            best = i;
    return c[best];
}

static void propose(sim *S, snode *N, uint32_t shard, int req)
{
    raft_batch b;
    int rc = raft_propose(N->rn, shard, 1 + (uint32_t)rndn(S, 6), &b, &S->ob);
    if (rc == RAFT_ENOTLEADER)
        return;
    if (rc == 0) {
        N->props = xgrow(N->props, &N->capp, N->np + 1, sizeof *N->props);
        N->props[N->np++] = (prop){shard, b, req};
        S->r->proposals++;
        if (req >= 0)
            S->reqs[req].state = 1;
        trace(S, "node %u proposes shard %u batch %llu+%u term %llu%s", N->id,
              shard, (unsigned long long)b.first_offset, b.count,
              (unsigned long long)b.term, req >= 0 ? " (client request)" : "");
    }
    after_call(S, N, rc, "raft_propose");
}

/* ---- the run ----------------------------------------------------------- */

static int converged(sim *S, char *why, size_t whylen)
{
    for (size_t i = 0; i < S->nreq; i++)
        if (S->reqs[i].state != 2) {
            snprintf(why, whylen, "client request %zu (shard %u) not acked", i,
                     S->reqs[i].shard);
            return 0;
        }
    for (uint32_t s = 0; s < S->o.n_shards; s++) {
        snode *L = pick_leader(S, s, 1);
        if (!L) {
            snprintf(why, whylen, "shard %u has no leader", s);
            return 0;
        }
        raft_shard_info li;
        raft_shard_info_get(L->rn, s, &li);
        for (uint32_t i = 0; i < S->o.n_nodes; i++) {
            snode *N = &S->nodes[i];
            raft_shard_info in;
            raft_shard_info_get(N->rn, s, &in);
            if (in.recovering || in.n_faulty || in.term != li.term ||
                in.commit_offset != li.end_offset ||
                in.durable_offset != li.end_offset || N->qn) {
                snprintf(why, whylen,
                         "shard %u node %u: term %llu/%llu commit %llu durable "
                         "%llu leader end %llu recovering %d faulty %u",
                         s, N->id, (unsigned long long)in.term,
                         (unsigned long long)li.term,
                         (unsigned long long)in.commit_offset,
                         (unsigned long long)in.durable_offset,
                         (unsigned long long)li.end_offset, in.recovering,
                         in.n_faulty);
                return 0;
            }
        }
    }
    return 1;
}

static void final_checks(sim *S)
{
    for (uint32_t s = 0; s < S->o.n_shards && !S->failed; s++) {
        const disk *D0 = &S->nodes[0].d[s];
        for (uint32_t i = 0; i < S->o.n_nodes; i++) {
            const disk *D = &S->nodes[i].d[s];
            if (D->n != D0->n)
                fail(S, "shard %u: disks of nodes 1 and %u differ in length", s,
                     i + 1);
            for (size_t k = 0; k < D->n && k < D0->n && !S->failed; k++) {
                if (!same_batch(&D->log[k].b, &D0->log[k].b))
                    fail(
                        S,
                        "shard %u: disks of nodes 1 and %u differ at batch %zu",
                        s, i + 1, k);
                if (D->log[k].damaged)
                    fail(S, "shard %u node %u: batch %zu still damaged", s,
                         i + 1, k);
            }
        }
    }
    for (size_t a = 0; a < S->nack && !S->failed; a++)
        for (uint32_t i = 0; i < S->o.n_nodes; i++) {
            const disk *D = &S->nodes[i].d[S->ack[a].shard];
            int found = 0;
            for (size_t k = 0; k < D->n; k++)
                if (same_batch(&D->log[k].b, &S->ack[a].b))
                    found = 1;
            if (!found) {
                fail(
                    S,
                    "acked batch %llu term %llu of shard %u missing on node %u",
                    (unsigned long long)S->ack[a].b.first_offset,
                    (unsigned long long)S->ack[a].b.term, S->ack[a].shard,
                    i + 1);
                break;
            }
        }
}

static void heal(sim *S)
{
    S->healed = 1;
    S->heal_at = S->now;
    S->loss_pct = 0;
    S->dup_pct = (S->o.faults & RSIM_F_DUP) ? 1 : 0;
    S->delay_max = 10;
    for (uint32_t i = 0; i < S->o.n_nodes; i++)
        for (uint32_t j = 0; j < S->o.n_nodes; j++)
            S->link[i][j] = 1;
    for (uint32_t i = 0; i < S->o.n_nodes; i++)
        if (!S->nodes[i].up)
            S->nodes[i].restart_at = S->now;
    S->nreq = (size_t)S->o.n_shards * REQUESTS_PER_SHARD;
    S->reqs = calloc(S->nreq, sizeof *S->reqs);
    for (size_t i = 0; i < S->nreq; i++) {
        S->reqs[i].shard = (uint32_t)(i % S->o.n_shards);
        S->reqs[i].submit_at = S->now + 50 * (i / S->o.n_shards) + rndn(S, 50);
    }
    S->r->requests_after_heal = (uint32_t)S->nreq;
    trace(S, "heal");
}

int rsim_run(const rsim_opts *o, rsim_result *r)
{
    sim *S = calloc(1, sizeof *S);
    memset(r, 0, sizeof *r);
    S->o = *o;
    if (!S->o.n_nodes)
        S->o.n_nodes = 3;
    if (!S->o.n_shards)
        S->o.n_shards = 3;
    if (!S->o.chaos_ms)
        S->o.chaos_ms = 3000;
    S->r = r;
    S->rng = (o->seed * 0x9E3779B97F4A7C15ull) ^ 0xD1B54A32D192ED03ull;
    if (!S->rng)
        S->rng = 1;
    for (int k = 0; k < 4; k++)
        rnd(S);
    S->delay_max = 5;
    raft_outbox_init(&S->ob);
    for (uint32_t i = 0; i < S->o.n_nodes; i++) {
        S->nodes[i].id = i + 1;
        for (uint32_t j = 0; j < S->o.n_nodes; j++)
            S->link[i][j] = 1;
    }
    for (uint32_t i = 0; i < S->o.n_nodes; i++)
        node_start(S, &S->nodes[i]);

    uint64_t next_fault = 50, next_prop = 20;
    int leaders_ok = 0;
    char why[256] = "";
    for (S->now = 0; !S->failed; S->now++) {
        if (!S->healed && S->now >= S->o.chaos_ms)
            heal(S);
        if (!S->healed && S->now >= next_fault) {
            fault_event(S);
            next_fault = S->now + 20 + rndn(S, 100);
        }
        for (uint32_t i = 0; i < S->o.n_nodes && !S->failed; i++) {
            snode *N = &S->nodes[i];
            if (!N->up && N->restart_at && S->now >= N->restart_at)
                node_start(S, N);
        }
        /* Storage completions. */
        for (uint32_t i = 0; i < S->o.n_nodes && !S->failed; i++) {
            snode *N = &S->nodes[i];
            while (N->up && N->qn && N->q[N->qhead].done_at <= S->now &&
                   !S->failed) {
                pitem it = N->q[N->qhead];
                N->qhead++;
                N->qn--;
                if (!N->qn)
                    N->qhead = 0;
                apply_item(S, N, &it, SIZE_MAX);
                uint32_t shard = it.shard;
                uint64_t seq = it.seq;
                item_free(&it);
                if (S->failed)
                    break;
                after_call(S, N, raft_persisted(N->rn, shard, seq, &S->ob),
                           "raft_persisted");
            }
        }
        /* Deliveries. */
        while (S->hn && S->heap[0].at <= S->now && !S->failed) {
            netmsg nm = heap_pop(S);
            snode *N = &S->nodes[nm.m.to - 1];
            if (N->up) {
                nm.m.batches = nm.b;
                if (S->o.trace)
                    trace_msg(S, "recv", &nm.m);
                after_call(S, N, raft_step(N->rn, S->now, &nm.m, &S->ob),
                           "raft_step");
            }
            free(nm.b);
        }
        /* Ticks. */
        for (uint32_t i = 0; i < S->o.n_nodes && !S->failed; i++) {
            snode *N = &S->nodes[i];
            if (N->up && S->now >= N->next_tick) {
                N->next_tick = S->now + TICK_MS;
                after_call(S, N, raft_tick(N->rn, S->now, &S->ob), "raft_tick");
            }
        }
        if (S->failed)
            break;
        /* Clients. */
        if (!S->healed && S->now >= next_prop) {
            next_prop = S->now + 3 + rndn(S, 15);
            uint32_t s = (uint32_t)rndn(S, S->o.n_shards);
            snode *L = pick_leader(S, s, 0);
            if (L)
                propose(S, L, s, -1);
        }
        if (!S->healed)
            continue;
        for (size_t i = 0; i < S->nreq && !S->failed; i++) {
            creq *q = &S->reqs[i];
            if (q->state != 0 || S->now < q->submit_at)
                continue;
            snode *L = pick_leader(S, q->shard, 1);
            if (L)
                propose(S, L, q->shard, (int)i);
            if (q->state == 0)
                q->submit_at = S->now + 5;
        }
        uint64_t since = S->now - S->heal_at;
        if (!leaders_ok) {
            int ok = 1;
            for (uint32_t s = 0; s < S->o.n_shards && ok; s++) {
                snode *L = pick_leader(S, s, 1);
                if (!L) {
                    ok = 0;
                    break;
                }
                for (uint32_t i = 0; i < S->o.n_nodes && ok; i++) {
                    raft_shard_info in;
                    if (!S->nodes[i].up) {
                        ok = 0;
                        break;
                    }
                    raft_shard_info_get(S->nodes[i].rn, s, &in);
                    if (in.leader != L->id)
                        ok = 0;
                }
            }
            if (ok) {
                leaders_ok = 1;
                r->heal_to_leaders_ms = since;
            } else if (since > LEADER_BOUND_MS) {
                fail(S,
                     "liveness: %u ms after healing some shard still has no "
                     "leader known to every node",
                     LEADER_BOUND_MS);
                break;
            }
        }
        if (leaders_ok && since % 10 == 0 && converged(S, why, sizeof why)) {
            r->heal_to_done_ms = since;
            break;
        }
        if (since > DONE_BOUND_MS) {
            converged(S, why, sizeof why);
            fail(S, "liveness: not converged %u ms after healing: %s",
                 DONE_BOUND_MS, why);
            break;
        }
    }
    if (!S->failed) {
        /* Let in-flight storage work land so the disks are final. */
        for (uint32_t i = 0; i < S->o.n_nodes; i++) {
            snode *N = &S->nodes[i];
            for (size_t k = 0; k < N->qn; k++)
                apply_item(S, N, &N->q[N->qhead + k], SIZE_MAX);
        }
        final_checks(S);
    }

    /* Free everything. */
    for (uint32_t i = 0; i < S->o.n_nodes; i++) {
        snode *N = &S->nodes[i];
        raft_node_free(N->rn);
        for (size_t k = 0; k < N->qn; k++)
            item_free(&N->q[N->qhead + k]);
        free(N->q);
        free(N->props);
        for (uint32_t s = 0; s < RSIM_MAX_SHARDS; s++) {
            free(N->d[s].log);
            free(N->d[s].lost);
        }
    }
    while (S->hn) {
        netmsg nm = heap_pop(S);
        free(nm.b);
    }
    free(S->heap);
    for (uint32_t s = 0; s < RSIM_MAX_SHARDS; s++) {
        free(S->led[s].b);
        free(S->led[s].cterm);
        free(S->leader_of[s]);
    }
    free(S->ack);
    free(S->reqs);
    raft_outbox_free(&S->ob);
    int failed = S->failed;
    free(S);
    return failed ? -1 : 0;
}
