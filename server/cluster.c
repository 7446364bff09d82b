/*
 * cluster.c — chatd in a replicated cluster: the Raft driver (docs/cluster.md).
 *
 * Who does what:
 *   raft.c   decides (terms, votes, what to append or cut, commit offsets);
 *   log.c    stores (each shard's log is the Raft log, batch for batch);
 *   cnet.c   carries opaque frames between nodes (proto/cluster.proto);
 *   this     glues them: it turns Raft's persist items into engine writes
 *            and its messages into frames, reads batch bytes for the
 *            followers, applies the committed stream to the chat state and
 *            the sessions, acks clients at commit, and forwards writes to
 *            the shard's leader.
 *
 * The leader's write path. A client write on the leader goes to the engine
 * with log_append_in_term(term): the shard's writer refuses it if the term
 * moved on (this node stepped down) before it was written. When the batch
 * holding it is durable here, its descriptor is proposed to Raft (the
 * engine's offsets and Raft's always agree: nothing else appends on a
 * leader, and the no-op of a new term is written before any client write
 * of that term is accepted), and Raft ships it to the followers. So the
 * leader's fdatasync and the followers' ones run one after the other, not
 * overlapped (section 10.2.1 would overlap them; a later step). The write is
 * acked once the apply loop has passed it with Raft's term at its offset
 * still the term it was written in.
 *
 * A batch written here that Raft never accepted (the node lost leadership
 * between the engine's check and its write) is an orphan past Raft's log
 * end: nobody else has a batch of that term at that offset, it is not
 * shipped while this process runs, and the next write Raft asks for at that
 * offset cuts it (log_write_batches truncates first). Its client gets
 * CL_ESTALE. After a restart it is an ordinary uncommitted batch of its
 * term, which Raft keeps or cuts as any other.
 *
 * Persistent Raft state that the log does not hold — per shard the term,
 * the vote, the lost-suffix fact (acked_end) and a commit hint — lives in
 * <data>/raft-state (format below), rewritten whole (tmp, fdatasync, rename,
 * directory fsync) before anything that depends on it leaves the node.
 *
 * The chat state (state.c) sees only committed records: at start the log up
 * to the commit hint, then whatever the apply loop reads below
 * min(commit offset, local durable end). Reads that serve clients (Sync,
 * history) are capped by that state, so an uncommitted record is never
 * shown, even on a node that holds it.
 */
#include "cluster.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "auth.h"
#include "cluster.pb-c.h"
#include "log.pb-c.h"
#include "cnet.h"
#include "raft.h"
#include "state.h"

#define CL_TICK_MS 10
/* A write waits this long for a leader, and a write accepted by a leader
 * (this node's or a forwarded one) this long for its commit: after that the
 * client gets "unavailable" (outcome unknown; retry with the same key). A
 * minority side of a partition answers within this, rather than hang. */
#define CL_WAIT_MS 5000
#define CL_ACK_MS 5000
#define CL_FRAME_SOFT (8u << 20) /* flush a peer's frame beyond this */
#define CL_MAX_BATCHES 4096    /* batches in one received RaftMsg */
#define CL_HINT_MS 1000        /* commit hints saved at most this often */
#define CL_SEGMENT_MAX (48u << 20) /* larger segments are not shipped whole
                                      (a frame is at most 64 MiB) */
#define CL_BOOT_LINK_MS 3000   /* at start, wait this long for a first link */
#define CL_BOOT_REPLY_MS 10000 /* and this long for an answer about a segment */

/* ---- raft-state file --------------------------------------------------
 *
 *   0  8  magic "CLRAFT1\0"
 *   8  4  node id (u32 LE)
 *  12  4  shards n (u32 LE)
 *  16  n × 32: term u64, voted_for u32, zero u32, acked_end u64,
 *              commit_hint u64
 *  16+32n  8  XXH3-64 of every byte before it
 *
 * A missing file is a new node (term 0, no vote). A file that fails its
 * checksum or names another node or shard count stops the start: the node
 * would not know its vote, and voting twice in a term breaks Raft. */
#define HS_MAGIC "CLRAFT1"
typedef struct hs_ent {
    uint64_t term;
    uint32_t voted_for;
    uint64_t acked_end;
    uint64_t commit_hint;
} hs_ent;

/* A client write, from the engine call to its answer. */
typedef struct pend {
    struct pend *next;
    uint32_t shard;
    uint64_t term;
    int64_t deadline;
    log_append_result res;
    void (*done)(srv *, void *, int, const log_append_result *);
    void *ctx;
    struct cluster *cl;
} pend;

/* A write waiting for a leader, or forwarded to one. */
typedef struct wreq {
    struct wreq *next;
    uint64_t id;
    uint32_t shard;
    uint32_t sent_to; /* RAFT_NONE: waiting */
    int64_t deadline;  /* waiting for a leader: fixed when it arrived */
    int64_t sent_deadline; /* forwarded: the leader's answer is due */
    int status;        /* finished: its answer, given after the walk */
    int64_t retry_at;  /* after "not the leader": forward again from then */
    /* committed on the leader; answered once applied here too, so that
     * the client reads its own write on this node */
    int committed;
    log_append_result res;
    void (*done)(srv *, void *, int, const log_append_result *);
    void *ctx;
    rec_view rec; /* key/body point into data */
    uint8_t data[];
} wreq;

/* Storage work handed to the engine, reported to Raft in order. */
typedef struct op {
    uint64_t seq;
    int done;
} op;

typedef struct cl_shard {
    uint64_t applied;   /* offset after the last record applied */
    int role;
    uint64_t term;
    uint32_t leader;
    uint64_t noop_end;  /* leader: end of this term's no-op */
    uint64_t noop_term; /* the term noop_end belongs to */
    uint64_t notified_commit; /* leader: commit offset last sent out */
    uint64_t log_version;     /* Raft's, when the acks were last scanned */
    int ready;          /* leader whose no-op is committed and applied */
    pend *acks, *acks_tail; /* leader writes by offset */
    op *ops;
    size_t nops, capops;
    uint64_t elections; /* times this node became leader */
} cl_shard;

typedef struct peer_out {
    uint32_t id;
    Chatlog__Cluster__V1__RaftMsg **raft;
    size_t nraft, capraft;
    Chatlog__Cluster__V1__Forward **fwd;
    size_t nfwd, capfwd;
    Chatlog__Cluster__V1__ForwardResult **res;
    size_t nres, capres;
    Chatlog__Cluster__V1__Presence **pres;
    size_t npres, cappres;
    Chatlog__Cluster__V1__Typing **typ;
    size_t ntyp, captyp;
    int presence_sync;
    Chatlog__Cluster__V1__SegmentRequest **sreq;
    size_t nsreq, capsreq;
    Chatlog__Cluster__V1__SegmentReply **srep;
    size_t nsrep, capsrep;
    size_t bytes;
    /* remote sessions: user id → devices << 16 | away */
    u64map remote;
} peer_out;

/* A received batch whose bytes a persist item may need. */
typedef struct rx_batch {
    uint64_t first_offset, term;
    const uint8_t *bytes;
    size_t len;
} rx_batch;

typedef struct cluster {
    srv *s;
    raft_node *rn;
    cnet *net;
    raft_config rc;
    uint32_t nshards;
    cl_shard *sh;
    hs_ent *hs;
    int64_t hint_saved_ms;
    raft_outbox ob;
    raft_persist items[64];
    peer_out peers[RAFT_MAX_NODES];
    uint32_t npeers;
    struct event *tick_ev, *kick_ev;
    wreq *waiting;
    uint64_t next_id;
    /* what the message being stepped carried */
    const rx_batch *rx;
    size_t nrx;
    uint32_t rx_shard;
    /* set while persist items of a proposal are drained */
    int proposing; /* a proposal of shard proposing_shard is being drained */
    uint32_t proposing_shard;
    uint8_t *secret;
    size_t secret_len;
    SSL_CTX *tls_srv, *tls_cli;
    int closing;    /* cluster_stop ran: answer everything with CL_ECLOSED */
    int started;    /* cluster_start succeeded: raft-state may be saved */
    /* start-up catch-up by whole segments (boot_segments) */
    int booting;
    uint32_t boot_shard;
    uint64_t boot_from;
    uint32_t boot_asked, boot_none;
    Chatlog__Cluster__V1__SegmentReply *boot_got; /* owned by boot_frame */
    Chatlog__Cluster__V1__Frame *boot_frame;
    int boot_timeout;
    int hint_dirty; /* a commit hint moved since raft-state was saved */
    /* metrics */
    uint64_t forwarded_out, forwarded_in, frames_bad, became_leader;
    uint64_t segments_sent, segments_installed;
} cluster;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Deadlines and intervals: the monotonic clock (a wall-clock step must
 * not time out writes or stretch their waits). */
static int64_t now_ms(void)
{
    return (int64_t)mono_ms();
}

int cluster_enabled(const chatd_config *cfg)
{
    return cfg->peers[0] != 0;
}

static cluster *CL(srv *s)
{
    return s->cluster;
}

/* ---- raft-state file ---- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int hs_path(const cluster *cl, char *buf, size_t n, const char *suffix)
{
    int k = snprintf(buf, n, "%s/raft-state%s", cl->s->cfg.data, suffix);
    return k < 0 || (size_t)k >= n ? -ENAMETOOLONG : 0;
}

static int hs_load(cluster *cl, int *found)
{
    char path[CFG_PATH + 32];
    *found = 0;
    if (hs_path(cl, path, sizeof path, ""))
        return -ENAMETOOLONG;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    size_t want = 16 + 32 * (size_t)cl->nshards + 8;
    uint8_t *b = malloc(want + 1);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    ssize_t got = read(fd, b, want + 1);
    close(fd);
    int rc = 0;
    if (got != (ssize_t)want || memcmp(b, HS_MAGIC, 8) ||
        get64(b + want - 8) != XXH3_64bits(b, want - 8)) {
        srv_log(cl->s, LOG_ERROR, "cluster: %s is damaged (size or checksum)", path);
        rc = CL_ECORRUPT;
    } else if (get32(b + 8) != cl->rc.self || get32(b + 12) != cl->nshards) {
        srv_log(cl->s, LOG_ERROR,
                "cluster: %s belongs to node %u with %u shards, not node %u with %u",
                path, get32(b + 8), get32(b + 12), cl->rc.self, cl->nshards);
        rc = CL_EINVAL;
    } else {
        for (uint32_t i = 0; i < cl->nshards; i++) {
            const uint8_t *p = b + 16 + 32 * (size_t)i;
            cl->hs[i] = (hs_ent){get64(p), get32(p + 8), get64(p + 16), get64(p + 24)};
        }
        *found = 1;
    }
    free(b);
    return rc;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* Any failure here is fatal for the node: Raft must not go on with a vote
 * that is not durable. */
static int hs_save(cluster *cl)
{
    char path[CFG_PATH + 32], tmp[CFG_PATH + 32];
    if (hs_path(cl, path, sizeof path, "") || hs_path(cl, tmp, sizeof tmp, ".tmp"))
        return -ENAMETOOLONG;
    size_t n = 16 + 32 * (size_t)cl->nshards + 8;
    uint8_t *b = calloc(1, n);
    if (!b)
        return -ENOMEM;
    memcpy(b, HS_MAGIC, 8);
    put32(b + 8, cl->rc.self);
    put32(b + 12, cl->nshards);
    for (uint32_t i = 0; i < cl->nshards; i++) {
        uint8_t *p = b + 16 + 32 * (size_t)i;
        put64(p, cl->hs[i].term);
        put32(p + 8, cl->hs[i].voted_for);
        put64(p + 16, cl->hs[i].acked_end);
        put64(p + 24, cl->hs[i].commit_hint);
    }
    put64(b + n - 8, XXH3_64bits(b, n - 8));
    cl->hint_dirty = 0;
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        rc = -errno;
    else {
        if (write(fd, b, n) != (ssize_t)n || fdatasync(fd))
            rc = errno ? -errno : -EIO;
        if (close(fd) && !rc)
            rc = -errno;
    }
    free(b);
    if (!rc && rename(tmp, path))
        rc = -errno;
    if (!rc)
        rc = fsync_dir(cl->s->cfg.data);
    cl->hint_saved_ms = now_ms();
    return rc;
}

static void fatal(cluster *cl, const char *what, int rc)
{
    srv_log(cl->s, LOG_ERROR, "cluster: %s: %s; stopping (the node must not go on)",
            what, rc < -30100 ? raft_strerror(rc) : cl_strerror(rc));
    _exit(3);
}

/* ---- peers and frames ---- */

static peer_out *peer(cluster *cl, uint32_t id)
{
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cl->peers[i].id == id)
            return &cl->peers[i];
    return NULL;
}

static int grow(void **p, size_t *cap, size_t need, size_t sz)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * sz);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

static void peer_reset(peer_out *p)
{
    for (size_t i = 0; i < p->nraft; i++) {
        free(p->raft[i]->batches.data);
        free(p->raft[i]);
    }
    for (size_t i = 0; i < p->nfwd; i++) {
        free(p->fwd[i]->key.data);
        free(p->fwd[i]->body.data);
        free(p->fwd[i]);
    }
    for (size_t i = 0; i < p->nres; i++)
        free(p->res[i]);
    for (size_t i = 0; i < p->npres; i++)
        free(p->pres[i]);
    for (size_t i = 0; i < p->ntyp; i++)
        free(p->typ[i]);
    for (size_t i = 0; i < p->nsreq; i++)
        free(p->sreq[i]);
    for (size_t i = 0; i < p->nsrep; i++) {
        free(p->srep[i]->zlog.data);
        free(p->srep[i]->idx.data);
        free(p->srep[i]);
    }
    p->nraft = p->nfwd = p->nres = p->npres = p->ntyp = p->nsreq = p->nsrep = 0;
    p->presence_sync = 0;
    p->bytes = 0;
}

static void peer_flush(cluster *cl, peer_out *p)
{
    if (!p->nraft && !p->nfwd && !p->nres && !p->npres && !p->ntyp &&
        !p->presence_sync && !p->nsreq && !p->nsrep)
        return;
    Chatlog__Cluster__V1__Frame f = CHATLOG__CLUSTER__V1__FRAME__INIT;
    f.raft = p->raft;
    f.n_raft = p->nraft;
    f.forward = p->fwd;
    f.n_forward = p->nfwd;
    f.result = p->res;
    f.n_result = p->nres;
    f.presence = p->pres;
    f.n_presence = p->npres;
    f.typing = p->typ;
    f.n_typing = p->ntyp;
    f.presence_sync = p->presence_sync;
    f.segment_request = p->sreq;
    f.n_segment_request = p->nsreq;
    f.segment_reply = p->srep;
    f.n_segment_reply = p->nsrep;
    size_t len = chatlog__cluster__v1__frame__get_packed_size(&f);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf) {
        chatlog__cluster__v1__frame__pack(&f, buf);
        /* A link that is down or full drops the frame: Raft retransmits,
         * forwarded writes time out and are answered as unknown. */
        (void)cnet_send(cl->net, p->id, buf, len);
        free(buf);
    }
    peer_reset(p);
}

static void flush_all(cluster *cl)
{
    for (uint32_t i = 0; i < cl->npeers; i++)
        peer_flush(cl, &cl->peers[i]);
}

/* ---- reading batches for the followers ---- */

typedef struct rd_ctx {
    uint64_t end; /* stop once a batch reaches it */
    uint8_t *buf;
    size_t len, cap;
    const raft_batch *want; /* the descriptors the bytes must match */
    size_t nwant;
} rd_ctx;

static int rd_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                 const log_entry *e, size_t n)
{
    rd_ctx *x = arg;
    (void)e;
    (void)n;
    if (h->first_offset >= x->end)
        return 1;
    /* Only what Raft's log holds leaves this node. */
    if (!x->nwant || x->want->first_offset != h->first_offset ||
        x->want->count != h->record_count || x->want->term != h->term)
        return CL_EMISPLACED;
    x->want++;
    x->nwant--;
    if (grow((void **)&x->buf, &x->cap, x->len + h->length, 1))
        return CL_ENOMEM;
    memcpy(x->buf + x->len, bytes, h->length);
    x->len += h->length;
    return h->first_offset + h->record_count >= x->end ? 1 : 0;
}

/* The bytes of batches b[0..n) (contiguous) into *out, or an error. */
static int read_batches(cluster *cl, uint32_t shard, const raft_batch *b, size_t n,
                        rd_ctx *x)
{
    for (size_t i = 0; i < n;) {
        if (b[i].flags & RAFT_BATCH_NOOP) {
            if (grow((void **)&x->buf, &x->cap, x->len + LOG_NOOP_BATCH_BYTES, 1))
                return CL_ENOMEM;
            x->len += log_noop_batch(x->buf + x->len, shard, b[i].first_offset,
                                     b[i].term);
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && !(b[j].flags & RAFT_BATCH_NOOP))
            j++;
        x->end = b[j - 1].first_offset + b[j - 1].count;
        x->want = &b[i];
        x->nwant = j - i;
        size_t before = x->len;
        int rc = log_read_from(cl->s->log, shard, b[i].first_offset, 0, rd_cb, x);
        if (rc < 0)
            return rc;
        /* Fewer batches than asked: not durable here yet. */
        if (x->len == before || x->nwant)
            return CL_ENOTFOUND;
        i = j;
    }
    return 0;
}

/* ---- outgoing Raft messages ---- */

static void send_outbox(cluster *cl)
{
    /* The same batches usually go to every follower in one round: read
     * them from the engine once, copy them for the others. */
    struct {
        uint32_t shard, n;
        uint64_t first, end, last_term;
        uint8_t *buf;
        size_t len;
    } last = {0};
    for (size_t i = 0; i < cl->ob.n; i++) {
        const raft_msg *m = &cl->ob.msgs[i];
        peer_out *p = peer(cl, m->to);
        if (!p || !cnet_peer_is_up(cl->net, m->to))
            continue;
        Chatlog__Cluster__V1__RaftMsg *r = malloc(sizeof *r);
        if (!r)
            continue;
        chatlog__cluster__v1__raft_msg__init(r);
        r->type = m->type;
        r->flags = m->flags;
        r->shard = m->shard;
        r->from = m->from;
        r->to = m->to;
        r->reason = m->reason;
        r->term = m->term;
        r->offset = m->offset;
        r->log_term = m->log_term;
        r->commit = m->commit;
        r->match = m->match;
        r->end = m->end;
        r->hint_term = m->hint_term;
        r->hint_offset = m->hint_offset;
        r->boot = m->boot;
        r->to_boot = m->to_boot;
        if (m->n_batches) {
            const raft_batch *lb = &m->batches[m->n_batches - 1];
            uint64_t end = lb->first_offset + lb->count;
            rd_ctx x = {0};
            int rc = 0;
            if (last.buf && last.shard == m->shard && last.n == m->n_batches &&
                last.first == m->batches[0].first_offset && last.end == end &&
                last.last_term == lb->term) {
                x.buf = malloc(last.len);
                if (x.buf) {
                    memcpy(x.buf, last.buf, last.len);
                    x.len = last.len;
                } else {
                    rc = CL_ENOMEM;
                }
            } else {
                rc = read_batches(cl, m->shard, m->batches, m->n_batches, &x);
                uint8_t *copy = rc ? NULL : malloc(x.len);
                if (copy) {
                    memcpy(copy, x.buf, x.len);
                    free(last.buf);
                    last.buf = copy;
                    last.len = x.len;
                    last.shard = m->shard;
                    last.n = m->n_batches;
                    last.first = m->batches[0].first_offset;
                    last.end = end;
                    last.last_term = lb->term;
                }
            }
            if (rc) {
                /* Not sendable now (not durable yet, or unreadable):
                 * drop it; Raft resends after retry_ms. */
                srv_log(cl->s, LOG_DEBUG, "cluster: shard %u: batches at %llu not sent: %s",
                        m->shard, (unsigned long long)m->batches[0].first_offset,
                        cl_strerror(rc));
                free(x.buf);
                free(r);
                continue;
            }
            r->batches.data = x.buf;
            r->batches.len = x.len;
        }
        if (grow((void **)&p->raft, &p->capraft, p->nraft + 1, sizeof *p->raft)) {
            free(r->batches.data);
            free(r);
            continue;
        }
        p->raft[p->nraft++] = r;
        p->bytes += r->batches.len + 64;
        if (p->bytes > CL_FRAME_SOFT)
            peer_flush(cl, p);
    }
    free(last.buf);
    raft_outbox_reset(&cl->ob);
}

/* ---- persist items: Raft's storage work ---- */

static void ops_report(cluster *cl, uint32_t shard)
{
    cl_shard *h = &cl->sh[shard];
    size_t k = 0;
    uint64_t seq = 0;
    while (k < h->nops && h->ops[k].done)
        seq = h->ops[k++].seq;
    if (!k)
        return;
    memmove(h->ops, h->ops + k, (h->nops - k) * sizeof *h->ops);
    h->nops -= k;
    int rc = raft_persisted(cl->rn, shard, seq, &cl->ob);
    if (rc && rc != RAFT_EFAILED)
        srv_log(cl->s, LOG_ERROR, "cluster: shard %u: persisted: %s", shard,
                raft_strerror(rc));
}

typedef struct wr_ctx {
    cluster *cl;
    uint32_t shard;
    uint64_t seq;
} wr_ctx;

static void wrote(srv *s, void *arg, int status, const log_append_result *res)
{
    wr_ctx *w = arg;
    cluster *cl = w->cl;
    (void)res;
    if (cl->closing) {
        free(w);
        return;
    }
    if (status)
        /* The engine failed the shard (EIO) or ran out of space: Raft's
         * view of this replica's disk would be wrong from here on. */
        fatal(cl, "log write for Raft failed", status);
    cl_shard *h = &cl->sh[w->shard];
    for (size_t i = 0; i < h->nops; i++)
        if (h->ops[i].seq == w->seq)
            h->ops[i].done = 1;
    ops_report(cl, w->shard);
    free(w);
    (void)s;
}

static void write_cb(void *arg, int status, uint64_t end)
{
    wr_ctx *w = arg;
    (void)end;
    srv_post_call(w->cl->s, wrote, w, status);
}

static const rx_batch *rx_find(cluster *cl, uint32_t shard, const raft_batch *b)
{
    if (shard != cl->rx_shard)
        return NULL;
    for (size_t i = 0; i < cl->nrx; i++)
        if (cl->rx[i].first_offset == b->first_offset && cl->rx[i].term == b->term)
            return &cl->rx[i];
    return NULL;
}

static void do_item(cluster *cl, const raft_persist *it)
{
    cl_shard *h = &cl->sh[it->shard];
    if (grow((void **)&h->ops, &h->capops, h->nops + 1, sizeof *h->ops))
        fatal(cl, "out of memory", CL_ENOMEM);
    op *o = &h->ops[h->nops++];
    o->seq = it->seq;
    o->done = 0;
    if (it->n_repair)
        /* Repairs answer FETCH, which is sent only for ranges marked
         * faulty; this node never marks any (it cuts and re-fetches). */
        fatal(cl, "a repair item, which this node never asks for", CL_EINVAL);
    int need = it->truncate;
    for (size_t i = 0; i < it->n_batches && !need; i++)
        if (!cl->proposing || it->shard != cl->proposing_shard ||
            (it->batches[i].flags & RAFT_BATCH_NOOP))
            need = 1;
    if (!need) { /* a leader's proposals: already durable */
        o->done = 1;
        return;
    }
    rd_ctx x = {0};
    uint64_t at = it->truncate ? it->truncate_from
                               : it->batches[0].first_offset;
    for (size_t i = 0; i < it->n_batches; i++) {
        const raft_batch *b = &it->batches[i];
        if (b->flags & RAFT_BATCH_NOOP) {
            if (grow((void **)&x.buf, &x.cap, x.len + LOG_NOOP_BATCH_BYTES, 1))
                fatal(cl, "out of memory", CL_ENOMEM);
            x.len += log_noop_batch(x.buf + x.len, it->shard, b->first_offset, b->term);
            continue;
        }
        const rx_batch *r = rx_find(cl, it->shard, b);
        if (!r)
            fatal(cl, "a batch to append has no bytes", CL_EINVAL);
        if (grow((void **)&x.buf, &x.cap, x.len + r->len, 1))
            fatal(cl, "out of memory", CL_ENOMEM);
        memcpy(x.buf + x.len, r->bytes, r->len);
        x.len += r->len;
    }
    wr_ctx *w = malloc(sizeof *w);
    if (!w)
        fatal(cl, "out of memory", CL_ENOMEM);
    *w = (wr_ctx){cl, it->shard, it->seq};
    int rc = log_write_batches(cl->s->log, it->shard, at, x.buf, x.len, write_cb, w);
    free(x.buf);
    if (rc)
        fatal(cl, "log write for Raft refused", rc);
}

/* Take and perform every persist item. Term and vote first, for all items
 * at once (one file write), then the log work, in order per shard, and the
 * reports in order. This makes a later item's term and vote durable before
 * an earlier item's log work, which raft.h's "not reordered" does not
 * allow in general; it is safe here because a term or vote is only ever
 * required to be durable early, never late, and the log work not yet done
 * is unreported (a crash loses it as any unreported write). */
static void drain(cluster *cl)
{
    for (;;) {
        size_t n = raft_persist_take(cl->rn, cl->items, 64);
        if (!n)
            return;
        int hard = 0;
        for (size_t i = 0; i < n; i++) {
            const raft_persist *it = &cl->items[i];
            if (it->write_hard_state) {
                cl->hs[it->shard].term = it->term;
                cl->hs[it->shard].voted_for = it->voted_for;
                hard = 1;
                /* Before any write of the new term is queued (a new
                 * leader's no-op): client writes fenced with an older term
                 * must not land after it. */
                if (it->term != cl->sh[it->shard].term) {
                    int rc = log_set_term(cl->s->log, it->shard, it->term);
                    if (rc)
                        fatal(cl, "cannot set the engine's term", rc);
                    cl->sh[it->shard].term = it->term;
                    cl->sh[it->shard].ready = 0;
                }
            }
        }
        if (hard) {
            int rc = hs_save(cl);
            if (rc)
                fatal(cl, "cannot save raft-state", rc);
        }
        for (size_t i = 0; i < n; i++)
            do_item(cl, &cl->items[i]);
        for (size_t i = 0; i < n; i++)
            ops_report(cl, cl->items[i].shard);
    }
}

/* A shard Raft failed (a safety check, or out of memory) would stay led by
 * this node, unable to take writes, while the others never elect another
 * leader: the node stops instead, and restarts from its disk. */
static void check(cluster *cl, uint32_t shard, int rc, const char *what)
{
    if (!rc || rc == RAFT_EPROTO)
        return;
    srv_log(cl->s, LOG_ERROR, "cluster: shard %u: %s failed", shard, what);
    fatal(cl, "replication failed", rc);
}

/* ---- the committed stream ---- */

static void finish(cluster *cl, pend *p, int status)
{
    srv *s = cl->s;
    s->inflight--;
    p->done(s, p->ctx, status, status ? NULL : &p->res);
    free(p);
}

typedef struct ap_ctx {
    cluster *cl;
    uint64_t limit;
    uint64_t next;
} ap_ctx;

static int apply_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                    const log_entry *e, size_t n)
{
    ap_ctx *x = arg;
    (void)h;
    (void)bytes;
    for (size_t i = 0; i < n; i++) {
        if (e[i].offset >= x->limit)
            return 1;
        if (e[i].rec.type != REC_NOOP) {
            st_apply(x->cl->s->st, &e[i]);
            gw_on_commit(x->cl->s, &e[i]);
        }
        x->next = e[i].offset + 1;
    }
    return x->next >= x->limit;
}

static void apply(cluster *cl, uint32_t shard)
{
    cl_shard *h = &cl->sh[shard];
    raft_shard_info ri;
    if (raft_shard_info_get(cl->rn, shard, &ri))
        return;
    /* Committed, and durable here as Raft knows it: the engine's durable
     * end may include an orphan where Raft's log (already cut in memory)
     * holds the leader's batches that are not written yet. */
    uint64_t next = 0, durable = 0;
    log_shard_ends(cl->s->log, shard, &next, &durable);
    uint64_t limit = ri.commit_offset;
    if (ri.durable_offset < limit)
        limit = ri.durable_offset;
    if (durable < limit)
        limit = durable;
    while (h->applied < limit) {
        ap_ctx x = {cl, limit, h->applied};
        int rc = log_read_from(cl->s->log, shard, h->applied, 1u << 20, apply_cb, &x);
        if (x.next == h->applied) {
            /* Damage found while running: a restart cuts it off and
             * fetches it again (cut_damage); going on would leave the
             * shard unapplied here, and not ready if this node leads. */
            if (rc < 0)
                fatal(cl, "cannot read a committed record", rc);
            break;
        }
        h->applied = x.next;
    }
    /* Writes of this node: committed, or lost to a new term. They are in
     * offset order with deadlines in the same order, so the scan stops at
     * the first still waiting, unless Raft's log changed (a cut may have
     * taken any of them). */
    int full = ri.log_version != h->log_version;
    h->log_version = ri.log_version;
    pend **pp = &h->acks, *last = NULL;
    int64_t now = now_ms();
    while (*pp) {
        pend *p = *pp;
        uint64_t t = raft_term_at(cl->rn, shard, p->res.batch_first_offset);
        int verdict = 1; /* 1: keep waiting */
        if (t != p->term)
            verdict = CL_ESTALE;
        else if (p->res.offset < h->applied)
            verdict = 0;
        else if (now > p->deadline && !(h->role == RAFT_LEADER && h->term == p->term))
            /* Still leading its term, the write will commit or be cut:
             * wait. A leader that lost its majority answers "unknown"
             * (its key stays known to the next leader only if the write
             * commits there: retries are deduplicated then). */
            verdict = CL_ETIMEDOUT;
        if (verdict != 1) {
            *pp = p->next;
            finish(cl, p, verdict);
            continue;
        }
        if (!full) {
            last = h->acks_tail; /* p and all after it stay */
            break;
        }
        last = p;
        pp = &p->next;
    }
    h->acks_tail = last;
}

/* ---- writes: local, waiting, forwarded ---- */

static void leader_durable(srv *s, void *arg, int status, const log_append_result *res)
{
    pend *p = arg;
    cluster *cl = p->cl;
    if (status || cl->closing) {
        finish(cl, p, status ? status : CL_ECLOSED);
        return;
    }
    p->res = *res;
    cl_shard *h = &cl->sh[p->shard];
    raft_shard_info ri;
    raft_shard_info_get(cl->rn, p->shard, &ri);
    if (res->batch_first_offset < ri.end_offset &&
        raft_term_at(cl->rn, p->shard, res->batch_first_offset) == p->term) {
        /* Its batch was proposed already (by another record of it): the
         * commit or a cut decides, whatever this node's role now. */
    } else if (ri.role != RAFT_LEADER || ri.term != p->term) {
        finish(cl, p, CL_ESTALE); /* an orphan: never proposed, never sent */
        return;
    } else if (res->batch_first_offset == ri.end_offset) {
        raft_batch b;
        cl->proposing = 1;
        cl->proposing_shard = p->shard;
        int rc = raft_propose(cl->rn, p->shard, res->batch_count, &b, &cl->ob);
        drain(cl);
        cl->proposing = 0;
        if (rc || b.first_offset != res->batch_first_offset || b.term != p->term) {
            srv_log(s, LOG_ERROR, "cluster: shard %u: proposal at %llu refused or misplaced: %s",
                    p->shard, (unsigned long long)res->batch_first_offset,
                    rc ? raft_strerror(rc) : "offsets differ");
            check(cl, p->shard, rc ? rc : RAFT_EINVARIANT, "propose");
            finish(cl, p, CL_ESTALE);
            return;
        }
    } else {
        srv_log(s, LOG_ERROR, "cluster: shard %u: batch at %llu does not continue Raft's log (end %llu)",
                p->shard, (unsigned long long)res->batch_first_offset,
                (unsigned long long)ri.end_offset);
        finish(cl, p, CL_ESTALE);
        return;
    }
    p->deadline = now_ms() + CL_ACK_MS;
    p->next = NULL;
    if (h->acks_tail)
        h->acks_tail->next = p;
    else
        h->acks = p;
    h->acks_tail = p;
}

static void eng_cb(void *arg, int status, const log_append_result *res)
{
    pend *p = arg;
    srv_post_result(p->cl->s, leader_durable, p, status, res);
}

/* Append on this node, which leads the shard and is ready. */
static int leader_append(cluster *cl, uint32_t shard, const rec_view *rec,
                         void (*done)(srv *, void *, int, const log_append_result *),
                         void *ctx)
{
    pend *p = calloc(1, sizeof *p);
    if (!p)
        return CL_ENOMEM;
    p->cl = cl;
    p->shard = shard;
    p->term = cl->sh[shard].term;
    p->done = done;
    p->ctx = ctx;
    int rc = log_append_in_term(cl->s->log, rec, p->term, eng_cb, p);
    if (rc) {
        free(p);
        return rc;
    }
    cl->s->inflight++;
    return 0;
}

static wreq *wreq_new(cluster *cl, const rec_view *rec, uint32_t shard)
{
    wreq *w = calloc(1, sizeof *w + rec->key_len + rec->body_len);
    if (!w)
        return NULL;
    w->id = ++cl->next_id;
    w->shard = shard;
    w->rec = *rec;
    if (rec->key_len)
        memcpy(w->data, rec->key, rec->key_len);
    if (rec->body_len)
        memcpy(w->data + rec->key_len, rec->body, rec->body_len);
    w->rec.key = w->data;
    w->rec.body = w->data + rec->key_len;
    w->deadline = now_ms() + CL_WAIT_MS;
    return w;
}

static int send_forward(cluster *cl, wreq *w, uint32_t to)
{
    peer_out *p = peer(cl, to);
    if (!p || grow((void **)&p->fwd, &p->capfwd, p->nfwd + 1, sizeof *p->fwd))
        return -1;
    Chatlog__Cluster__V1__Forward *f = malloc(sizeof *f);
    if (!f)
        return -1;
    chatlog__cluster__v1__forward__init(f);
    f->id = w->id;
    f->type = w->rec.type;
    f->conv_id = w->rec.conv_id;
    f->msg_id = w->rec.msg_id;
    f->sender_id = w->rec.sender_id;
    f->key.len = w->rec.key_len;
    f->key.data = w->rec.key_len ? malloc(w->rec.key_len) : NULL;
    f->body.len = w->rec.body_len;
    f->body.data = w->rec.body_len ? malloc(w->rec.body_len) : NULL;
    if ((w->rec.key_len && !f->key.data) || (w->rec.body_len && !f->body.data)) {
        free(f->key.data);
        free(f->body.data);
        free(f);
        return -1;
    }
    if (w->rec.key_len)
        memcpy(f->key.data, w->rec.key, w->rec.key_len);
    if (w->rec.body_len)
        memcpy(f->body.data, w->rec.body, w->rec.body_len);
    p->fwd[p->nfwd++] = f;
    p->bytes += w->rec.key_len + w->rec.body_len + 64;
    if (p->bytes > CL_FRAME_SOFT)
        peer_flush(cl, p);
    w->sent_to = to;
    cl->forwarded_out++;
    return 0;
}

static void wreq_done(cluster *cl, wreq *w, int status, const log_append_result *res)
{
    cl->s->inflight--;
    w->done(cl->s, w->ctx, status, res);
    free(w);
}

/* Try every waiting write: to the local engine, to the leader, or time
 * out. Writes that finish are unlinked first and answered after the walk:
 * an answer may queue a new write (cluster_append), which must not see the
 * list half walked. */
static void dispatch(cluster *cl)
{
    int64_t now = now_ms();
    wreq **pp = &cl->waiting, *done = NULL, **done_tail = &done;
#define CL_FINISH(w_, st_)                                                    \
    do {                                                                      \
        *pp = (w_)->next;                                                     \
        (w_)->status = (st_);                                                 \
        (w_)->next = NULL;                                                    \
        *done_tail = (w_);                                                    \
        done_tail = &(w_)->next;                                              \
    } while (0)
    while (*pp) {
        wreq *w = *pp;
        cl_shard *h = &cl->sh[w->shard];
        if (w->committed) {
            if (h->applied > w->res.offset || now > w->sent_deadline + CL_ACK_MS) {
                CL_FINISH(w, 0);
                continue;
            }
        } else if (w->sent_to) {
            /* The link dropped, or the shard has another leader now (the
             * one we sent to was stopped or cut off), or no answer came:
             * it may have been appended, the outcome is unknown. */
            if (!cnet_peer_is_up(cl->net, w->sent_to) ||
                (h->leader && h->leader != w->sent_to) || now > w->sent_deadline) {
                CL_FINISH(w, CL_ETIMEDOUT);
                continue;
            }
        } else if (cl->s->stopping) {
            CL_FINISH(w, CL_ECLOSED);
            continue;
        } else if (h->role == RAFT_LEADER && h->ready) {
            /* While it waited, a new leader may have committed the same
             * message from an earlier attempt (its key is then settled):
             * answer with that one rather than append it twice. */
            idem *k = w->rec.type == REC_MESSAGE && w->rec.key_len
                          ? st_idem_find(cl->s->st, w->rec.sender_id, w->rec.conv_id,
                                         (const char *)w->rec.key, w->rec.key_len)
                          : NULL;
            if (k && !k->pending) {
                w->res = (log_append_result){.shard = w->shard, .msg_id = k->msg_id,
                                             .ts_ms = k->ts_ms,
                                             .offset = h->applied ? h->applied - 1 : 0};
                CL_FINISH(w, 0);
                continue;
            }
            int rc = leader_append(cl, w->shard, &w->rec, w->done, w->ctx);
            if (rc) {
                CL_FINISH(w, rc);
                continue;
            }
            *pp = w->next;
            cl->s->inflight--; /* leader_append counted it again */
            free(w);
            continue;
        } else if (now >= w->retry_at && h->leader && h->leader != cl->rc.self &&
                   cnet_peer_is_up(cl->net, h->leader) && send_forward(cl, w, h->leader) == 0) {
            w->sent_deadline = now + CL_ACK_MS;
        } else if (now > w->deadline) {
            CL_FINISH(w, RAFT_ENOTLEADER);
            continue;
        }
        pp = &w->next;
    }
#undef CL_FINISH
    while (done) {
        wreq *w = done;
        done = w->next;
        wreq_done(cl, w, w->status, w->status ? NULL : &w->res);
    }
}

/* Kick dispatch soon, from the loop (never from inside a caller's
 * callback). */
static void kick(cluster *cl)
{
    if (cl->kick_ev)
        event_active(cl->kick_ev, EV_TIMEOUT, 0);
}

int cluster_append(srv *s, const rec_view *rec,
                   void (*done)(srv *, void *, int, const log_append_result *),
                   void *ctx)
{
    cluster *cl = CL(s);
    uint32_t shard = log_shard_of(s->log, rec->conv_id);
    cl_shard *h = &cl->sh[shard];
    int behind = 0; /* an earlier write of this shard still waits */
    for (wreq *o = cl->waiting; o && !behind; o = o->next)
        behind = o->shard == shard && !o->sent_to && !o->committed;
    if (h->role == RAFT_LEADER && h->ready && !behind)
        return leader_append(cl, shard, rec, done, ctx);
    wreq *w = wreq_new(cl, rec, shard);
    if (!w)
        return CL_ENOMEM;
    w->done = done;
    w->ctx = ctx;
    /* Keep the order of writes: behind whatever already waits. */
    wreq **pp = &cl->waiting;
    while (*pp)
        pp = &(*pp)->next;
    *pp = w;
    s->inflight++;
    kick(cl);
    return 0;
}

/* ---- forwarded writes, on the leader ---- */

typedef struct fwd_reply {
    cluster *cl;
    uint32_t to;
    uint64_t id;
    idem *key; /* held pending while the write is in flight here */
} fwd_reply;

static void send_result(cluster *cl, uint32_t to, uint64_t id, int status,
                        const log_append_result *res)
{
    peer_out *p = peer(cl, to);
    if (!p || grow((void **)&p->res, &p->capres, p->nres + 1, sizeof *p->res))
        return;
    Chatlog__Cluster__V1__ForwardResult *r = malloc(sizeof *r);
    if (!r)
        return;
    chatlog__cluster__v1__forward_result__init(r);
    r->id = id;
    r->status = status;
    if (res) {
        r->shard = res->shard;
        r->offset = res->offset;
        r->msg_id = res->msg_id;
        r->ts_ms = res->ts_ms;
        r->term = res->term;
    }
    p->res[p->nres++] = r;
    p->bytes += 64;
    if (p->bytes > CL_FRAME_SOFT)
        peer_flush(cl, p);
}

static void fwd_done(srv *s, void *arg, int status, const log_append_result *res)
{
    fwd_reply *f = arg;
    if (f->key) /* sessions here that sent the same message wait on it */
        gw_key_settle(s, f->key, status, res);
    send_result(f->cl, f->to, f->id, status, res);
    free(f);
}

static void on_forward(cluster *cl, uint32_t from, const Chatlog__Cluster__V1__Forward *f)
{
    srv *s = cl->s;
    cl->forwarded_in++;
    if (f->type == 0 || f->type > REC_TYPE_MAX || f->type == REC_NOOP ||
        f->key.len > RECORD_MAX_KEY || f->body.len > RECORD_MAX_BODY) {
        send_result(cl, from, f->id, CL_EINVAL, NULL);
        return;
    }
    uint32_t shard = log_shard_of(s->log, f->conv_id);
    cl_shard *h = &cl->sh[shard];
    if (h->role != RAFT_LEADER || !h->ready) {
        send_result(cl, from, f->id, RAFT_ENOTLEADER, NULL);
        return;
    }
    /* The origin checked against its state, which may lag ours (a member
     * removed meanwhile): messages and pointers need a member here too. */
    if (f->type == REC_MESSAGE || f->type == REC_READ_POINTER) {
        convo *cv = st_conv(s->st, f->conv_id);
        if (!cv || !cv->committed || !st_member(cv, f->sender_id)) {
            send_result(cl, from, f->id, CL_EINVAL, NULL);
            return;
        }
    }
    /* The same message retried through another node: answer from the
     * committed key. */
    if (f->type == REC_MESSAGE && f->key.len) {
        idem *k = st_idem_find(s->st, f->sender_id, f->conv_id,
                               (const char *)f->key.data, f->key.len);
        if (k && !k->pending) {
            /* Its offset is not kept; everything applied here is a safe
             * bound for the origin to wait for. */
            log_append_result r = {.shard = shard, .msg_id = k->msg_id,
                                   .ts_ms = k->ts_ms,
                                   .offset = h->applied ? h->applied - 1 : 0};
            send_result(cl, from, f->id, 0, &r);
            return;
        }
        if (k) {
            send_result(cl, from, f->id, CL_EBUSY, NULL);
            return;
        }
    }
    idem *key = NULL;
    if (f->type == REC_MESSAGE && f->key.len) {
        /* Pending here while in flight, so the same key arriving through
         * another node meanwhile is not appended twice. */
        Chatlog__Log__V1__MessageBody *b =
            chatlog__log__v1__message_body__unpack(NULL, f->body.len, f->body.data);
        uint64_t hash = b ? st_content_hash(b->text, strlen(b->text), b->media_url,
                                         strlen(b->media_url))
                       : 0;
        if (b)
            chatlog__log__v1__message_body__free_unpacked(b, NULL);
        key = st_idem_add(s->st, f->sender_id, f->conv_id, (const char *)f->key.data,
                          f->key.len, hash);
        if (key)
            key->held = 1;
    }
    rec_view r = {.type = (uint8_t)f->type, .conv_id = f->conv_id,
                  .msg_id = f->msg_id, .sender_id = f->sender_id,
                  .key = f->key.len ? f->key.data : (const uint8_t *)"",
                  .key_len = (uint32_t)f->key.len,
                  .body = f->body.len ? f->body.data : (const uint8_t *)"",
                  .body_len = (uint32_t)f->body.len};
    fwd_reply *x = malloc(sizeof *x);
    if (!x) {
        if (key)
            st_idem_drop(s->st, key);
        send_result(cl, from, f->id, CL_ENOMEM, NULL);
        return;
    }
    *x = (fwd_reply){cl, from, f->id, key};
    int rc = leader_append(cl, shard, &r, fwd_done, x);
    if (rc) {
        free(x);
        if (key)
            st_idem_drop(s->st, key);
        send_result(cl, from, f->id, rc, NULL);
    }
}

static void on_result(cluster *cl, uint32_t from, const Chatlog__Cluster__V1__ForwardResult *r)
{
    for (wreq **pp = &cl->waiting; *pp; pp = &(*pp)->next) {
        wreq *w = *pp;
        if (w->id != r->id || w->sent_to != from || w->committed)
            continue;
        if (r->status == RAFT_ENOTLEADER || r->status == CL_ESTALE) {
            /* Not appended there (or cut before it committed): wait for
             * the next leader, unless a later write of the same shard
             * already went there; sending this one again would put it
             * after that one, so its client decides (retry). */
            int later = 0;
            for (wreq *o = w->next; o && !later; o = o->next)
                later = o->shard == w->shard && (o->sent_to || o->committed);
            if (later) {
                *pp = w->next;
                wreq_done(cl, w, RAFT_ENOTLEADER, NULL);
                return;
            }
            w->sent_to = RAFT_NONE;
            w->retry_at = now_ms() + 20;
            return;
        }
        if (r->status) {
            *pp = w->next;
            wreq_done(cl, w, r->status, NULL);
            return;
        }
        w->res = (log_append_result){.shard = w->shard, .offset = r->offset,
                                     .msg_id = r->msg_id, .ts_ms = r->ts_ms,
                                     .term = r->term};
        w->committed = 1;
        return;
    }
}

/* ---- after every round ---- */

static void after(cluster *cl)
{
    for (uint32_t sh = 0; sh < cl->nshards; sh++) {
        cl_shard *h = &cl->sh[sh];
        raft_shard_info ri;
        if (raft_shard_info_get(cl->rn, sh, &ri))
            continue;
        if (ri.role == RAFT_LEADER && (h->role != RAFT_LEADER || !h->noop_end ||
                                       h->noop_term != ri.term)) {
            h->noop_term = ri.term;
            h->noop_end = ri.end_offset;
            h->elections++;
            cl->became_leader++;
            srv_log(cl->s, LOG_INFO, "cluster: shard %u: leader in term %llu", sh,
                    (unsigned long long)ri.term);
        }
        h->role = ri.role;
        h->term = ri.term;
        h->leader = ri.leader;
        if (ri.failed)
            check(cl, sh, ri.failed, "raft");
        apply(cl, sh);
        if (ri.role == RAFT_LEADER && ri.commit_offset > h->notified_commit) {
            h->notified_commit = ri.commit_offset;
            (void)raft_notify_commit(cl->rn, sh, &cl->ob);
        }
        h->ready = h->role == RAFT_LEADER && ri.commit_offset >= h->noop_end &&
                   h->applied >= h->noop_end;
        if (cl->hs[sh].acked_end && !ri.recovering) {
            /* Caught up: it holds again all it had acknowledged. */
            srv_log(cl->s, LOG_INFO, "cluster: shard %u: caught up; may vote and lead again", sh);
            cl->hs[sh].acked_end = 0;
            cl->hint_dirty = 1;
        }
        /* The commit hint lets a restart rebuild the state before a leader
         * speaks; it is saved lazily. */
        if (h->applied > cl->hs[sh].commit_hint) {
            cl->hs[sh].commit_hint = h->applied;
            cl->hint_dirty = 1;
        }
    }
    dispatch(cl);
    send_outbox(cl);
    flush_all(cl);
}

/* ---- incoming frames ---- */

/* The batches of an APPEND or FETCH_RESP as Raft descriptors, with where
 * their bytes are. The engine checks them first, all at once, as it would
 * when they are written (checksums, layout, shard, contiguous offsets,
 * terms, records): bytes it would refuse later could not be stored, and
 * the node would stop. The walk that follows then only reads headers. */
static int parse_batches(cluster *cl, const Chatlog__Cluster__V1__RaftMsg *m,
                         raft_batch **bs, rx_batch **rx, size_t *n)
{
    size_t cap = 0, k = 0, pos = 0;
    const uint8_t *p = m->batches.data;
    size_t len = m->batches.len;
    *bs = NULL;
    *rx = NULL;
    batch_header h;
    if (len < BATCH_HEADER_SIZE || batch_peek_header(p, &h))
        return CL_ECORRUPT;
    int rc = log_check_batches(cl->s->log, m->shard, h.first_offset, p, len);
    if (rc)
        return rc;
    while (pos < len) {
        if (k >= CL_MAX_BATCHES)
            return CL_ECORRUPT;
        batch_peek_header(p + pos, &h); /* checked above */
        if (k == cap) {
            cap = cap ? cap * 2 : 8;
            raft_batch *nb = realloc(*bs, cap * sizeof **bs);
            if (!nb)
                return CL_ENOMEM;
            *bs = nb;
            rx_batch *nr = realloc(*rx, cap * sizeof **rx);
            if (!nr)
                return CL_ENOMEM;
            *rx = nr;
        }
        uint32_t flags = 0;
        if (h.record_count == 1) {
            size_t rp = 0;
            rec_view r;
            if (batch_next_record(p + pos, &h, &rp, &r) == 0 && r.type == REC_NOOP)
                flags = RAFT_BATCH_NOOP;
        }
        (*bs)[k] = (raft_batch){h.first_offset, h.term, h.record_count, flags};
        (*rx)[k] = (rx_batch){h.first_offset, h.term, p + pos, h.length};
        k++;
        pos += h.length;
    }
    *n = k;
    return 0;
}

static void on_raft(cluster *cl, uint32_t from, const Chatlog__Cluster__V1__RaftMsg *m)
{
    if (m->from != from || m->to != cl->rc.self || m->shard >= cl->nshards) {
        cl->frames_bad++;
        return;
    }
    raft_batch *bs = NULL;
    rx_batch *rx = NULL;
    size_t n = 0;
    if (m->batches.len && parse_batches(cl, m, &bs, &rx, &n)) {
        cl->frames_bad++;
        free(bs);
        free(rx);
        return;
    }
    raft_msg r = {.type = m->type, .flags = m->flags, .shard = m->shard,
                  .from = m->from, .to = m->to, .reason = m->reason,
                  .term = m->term, .offset = m->offset, .log_term = m->log_term,
                  .commit = m->commit, .match = m->match, .end = m->end,
                  .hint_term = m->hint_term, .hint_offset = m->hint_offset,
                  .boot = m->boot, .to_boot = m->to_boot,
                  .batches = bs, .n_batches = (uint32_t)n};
    cl->rx = rx;
    cl->nrx = n;
    cl->rx_shard = m->shard;
    int rc = raft_step(cl->rn, mono_ms(), &r, &cl->ob);
    if (rc == RAFT_EPROTO)
        cl->frames_bad++;
    check(cl, m->shard, rc, "step");
    drain(cl);
    cl->rx = NULL;
    cl->nrx = 0;
    free(bs);
    free(rx);
}

static void on_presence(cluster *cl, uint32_t from, const Chatlog__Cluster__V1__Presence *p);
static void on_typing(cluster *cl, const Chatlog__Cluster__V1__Typing *t);
static void send_all_presence(cluster *cl, uint32_t to);

static void on_segment_request(cluster *cl, uint32_t from,
                               const Chatlog__Cluster__V1__SegmentRequest *r);
static int boot_on_frame(cluster *cl, uint32_t from, Chatlog__Cluster__V1__Frame *f);

static void on_frame(void *arg, uint32_t from, const uint8_t *data, size_t len)
{
    cluster *cl = arg;
    Chatlog__Cluster__V1__Frame *f = chatlog__cluster__v1__frame__unpack(NULL, len, data);
    if (!f) {
        cl->frames_bad++;
        return;
    }
    if (cl->booting) {
        if (!boot_on_frame(cl, from, f))
            chatlog__cluster__v1__frame__free_unpacked(f, NULL);
        return;
    }
    for (size_t i = 0; i < f->n_segment_request; i++)
        on_segment_request(cl, from, f->segment_request[i]);
    for (size_t i = 0; i < f->n_raft; i++)
        on_raft(cl, from, f->raft[i]);
    for (size_t i = 0; i < f->n_forward; i++)
        on_forward(cl, from, f->forward[i]);
    for (size_t i = 0; i < f->n_result; i++)
        on_result(cl, from, f->result[i]);
    for (size_t i = 0; i < f->n_presence; i++)
        on_presence(cl, from, f->presence[i]);
    for (size_t i = 0; i < f->n_typing; i++)
        on_typing(cl, f->typing[i]);
    if (f->presence_sync)
        send_all_presence(cl, from);
    chatlog__cluster__v1__frame__free_unpacked(f, NULL);
    after(cl);
    conn_flush_all(cl->s);
}

/* ---- catching up by whole segments ----
 *
 * A node that starts behind (an empty data directory, or a long absence)
 * first asks its peers, shard by shard, for the sealed and committed segment
 * that begins where its log ends, installs it (log_segment_install: verified
 * block by block before anything is written), and asks again until no peer
 * has one. Only then does Raft open the shard; the leader's appends bring the
 * tail. Committed records never change, so any peer's committed segment will
 * do, and a node's commit offset is a true one. Raft messages that arrive
 * meanwhile are dropped: the leaders retransmit. */

static void on_segment_request(cluster *cl, uint32_t from,
                               const Chatlog__Cluster__V1__SegmentRequest *r)
{
    peer_out *p = peer(cl, from);
    if (!p || grow((void **)&p->srep, &p->capsrep, p->nsrep + 1, sizeof *p->srep))
        return;
    Chatlog__Cluster__V1__SegmentReply *m = calloc(1, sizeof *m);
    if (!m)
        return;
    chatlog__cluster__v1__segment_reply__init(m);
    m->shard = r->shard;
    m->seg_base = r->from;
    m->none = 1;
    raft_shard_info ri;
    if (!cl->booting && r->shard < cl->nshards &&
        raft_shard_info_get(cl->rn, r->shard, &ri) == 0 &&
        (r->from == 0 ? r->prev_term == 0
                      : raft_term_at(cl->rn, r->shard, r->from - 1) == r->prev_term)) {
        log_segment_info si;
        for (uint32_t i = 0; log_segment_info_get(cl->s->log, r->shard, i, &si) == 0; i++) {
            if (si.base_offset > r->from)
                break;
            if (si.base_offset != r->from)
                continue;
            log_segment_files sf;
            if (si.sealed && si.compressed && si.end_offset <= ri.commit_offset &&
                si.disk_bytes < CL_SEGMENT_MAX &&
                log_segment_files_get(cl->s->log, r->shard, i, &sf) == 0) {
                m->none = 0;
                m->end = sf.end;
                m->last_term = sf.last_term;
                m->zlog.data = sf.zlog;
                m->zlog.len = sf.zlog_len;
                m->idx.data = sf.idx;
                m->idx.len = sf.idx_len;
                /* ownership of the buffers moved to m */
                sf.zlog = sf.idx = NULL;
                log_segment_files_free(&sf);
                cl->segments_sent++;
            }
            break;
        }
    }
    p->srep[p->nsrep++] = m;
    p->bytes += m->zlog.len + m->idx.len;
    peer_flush(cl, p);
}

/* While booting: keep the first useful answer for the segment being asked
 * for (returns 1: f is kept, freed by the caller of boot_segments). */
static int boot_on_frame(cluster *cl, uint32_t from, Chatlog__Cluster__V1__Frame *f)
{
    (void)from;
    /* Peers that are behind as well ask us; we have nothing to give yet.
     * Writes forwarded to us (we led a shard before restarting) are not
     * ours to take: the sender waits for the next leader. */
    for (size_t i = 0; i < f->n_segment_request; i++)
        on_segment_request(cl, from, f->segment_request[i]);
    for (size_t i = 0; i < f->n_forward; i++)
        send_result(cl, from, f->forward[i]->id, RAFT_ENOTLEADER, NULL);
    if (f->n_forward)
        peer_flush(cl, peer(cl, from));
    for (size_t i = 0; i < f->n_segment_reply; i++) {
        Chatlog__Cluster__V1__SegmentReply *r = f->segment_reply[i];
        if (r->shard != cl->boot_shard || r->seg_base != cl->boot_from)
            continue;
        if (r->none) {
            cl->boot_none++;
            continue;
        }
        if (!cl->boot_got && r->end > r->seg_base) {
            cl->boot_got = r;
            cl->boot_frame = f;
            return 1;
        }
    }
    return 0;
}

static void boot_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ((cluster *)arg)->boot_timeout = 1;
}

/* Run the loop until cond holds or ms pass; 0 if cond held. */
static int boot_wait(cluster *cl, int (*cond)(cluster *), uint32_t ms)
{
    struct event *t = evtimer_new(cl->s->base, boot_timer_cb, cl);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    cl->boot_timeout = 0;
    if (!t || evtimer_add(t, &tv)) {
        if (t)
            event_free(t);
        return -1;
    }
    while (!cond(cl) && !cl->boot_timeout)
        event_base_loop(cl->s->base, EVLOOP_ONCE);
    event_free(t);
    return cond(cl) ? 0 : -1;
}

static int any_link_up(cluster *cl)
{
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cnet_peer_is_up(cl->net, cl->peers[i].id))
            return 1;
    return 0;
}

static int boot_answered(cluster *cl)
{
    return cl->boot_got || cl->boot_none >= cl->boot_asked;
}

typedef struct inst_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, status;
} inst_wait;

static void inst_cb(void *arg, int status, uint64_t end)
{
    inst_wait *w = arg;
    (void)end;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    w->status = status;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

typedef struct term_ctx {
    uint64_t offset, term;
} term_ctx;

static int term_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                   const log_entry *e, size_t n)
{
    term_ctx *x = arg;
    (void)bytes;
    (void)e;
    (void)n;
    if (h->first_offset <= x->offset && x->offset < h->first_offset + h->record_count)
        x->term = h->term;
    return 1;
}

/* The term of the record at offset (0 if it cannot be read). */
static uint64_t term_of(log_t *log, uint32_t sh, uint64_t offset)
{
    term_ctx x = {offset, 0};
    (void)log_read_from(log, sh, offset, 0, term_cb, &x);
    return x.term;
}

/* Returns the number of segments installed, or -1 (logged). upto[shard] is
 * raised to the end of what was installed (committed on the peer). */
static int boot_segments(cluster *cl, uint64_t *upto)
{
    srv *s = cl->s;
    int installed = 0;
    cl->booting = 1;
    if (boot_wait(cl, any_link_up, CL_BOOT_LINK_MS)) {
        srv_log(s, LOG_INFO, "cluster: no other node reachable yet; starting from the local log");
        cl->booting = 0;
        return 0;
    }
    for (uint32_t sh = 0; sh < cl->nshards; sh++) {
        for (;;) {
            uint64_t next = 0;
            log_shard_ends(s->log, sh, &next, NULL);
            uint64_t prev_term = next ? term_of(s->log, sh, next - 1) : 0;
            if (next && !prev_term)
                break; /* its last record does not read back: no shipping */
            cl->boot_shard = sh;
            cl->boot_from = next;
            cl->boot_got = NULL;
            cl->boot_frame = NULL;
            cl->boot_none = cl->boot_asked = 0;
            for (uint32_t i = 0; i < cl->npeers; i++) {
                peer_out *p = &cl->peers[i];
                if (!cnet_peer_is_up(cl->net, p->id) ||
                    grow((void **)&p->sreq, &p->capsreq, p->nsreq + 1, sizeof *p->sreq))
                    continue;
                Chatlog__Cluster__V1__SegmentRequest *q = malloc(sizeof *q);
                if (!q)
                    continue;
                chatlog__cluster__v1__segment_request__init(q);
                q->shard = sh;
                q->from = next;
                q->prev_term = prev_term;
                p->sreq[p->nsreq++] = q;
                peer_flush(cl, p);
                cl->boot_asked++;
            }
            if (!cl->boot_asked || boot_wait(cl, boot_answered, CL_BOOT_REPLY_MS) ||
                !cl->boot_got)
                break;
            Chatlog__Cluster__V1__SegmentReply *r = cl->boot_got;
            log_segment_files f = {.base = r->seg_base, .end = r->end, .last_term = r->last_term,
                                   .zlog = r->zlog.data, .zlog_len = r->zlog.len,
                                   .idx = r->idx.data, .idx_len = r->idx.len};
            inst_wait w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
            int rc = log_segment_install(s->log, sh, &f, inst_cb, &w);
            if (!rc) {
                pthread_mutex_lock(&w.mu);
                while (!w.done)
                    pthread_cond_wait(&w.cv, &w.mu);
                pthread_mutex_unlock(&w.mu);
                rc = w.status;
            }
            chatlog__cluster__v1__frame__free_unpacked(cl->boot_frame, NULL);
            cl->boot_frame = NULL;
            cl->boot_got = NULL;
            if (rc) {
                srv_log(s, LOG_WARN,
                        "cluster: shard %u: segment [%llu, %llu) from a peer not installed: %s",
                        sh, (unsigned long long)f.base, (unsigned long long)f.end,
                        cl_strerror(rc));
                break;
            }
            installed++;
            cl->segments_installed++;
            if (f.end > upto[sh])
                upto[sh] = f.end;
            srv_log(s, LOG_INFO, "cluster: shard %u: installed segment [%llu, %llu) from a peer",
                    sh, (unsigned long long)f.base, (unsigned long long)f.end);
        }
    }
    cl->booting = 0;
    /* Links that came up while booting skipped on_peer's work: ask for the
     * peers' sessions now (ours are none yet). */
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cnet_peer_is_up(cl->net, cl->peers[i].id))
            cl->peers[i].presence_sync = 1;
    return installed;
}

/* ---- presence and typing across nodes ---- */

static void queue_presence(cluster *cl, peer_out *p, const user *u)
{
    if (grow((void **)&p->pres, &p->cappres, p->npres + 1, sizeof *p->pres))
        return;
    Chatlog__Cluster__V1__Presence *m = malloc(sizeof *m);
    if (!m)
        return;
    chatlog__cluster__v1__presence__init(m);
    m->user_id = u->user_id;
    m->devices = u->ndevices;
    m->away = u->naway;
    m->last_seen_ms = u->last_seen_ms;
    p->pres[p->npres++] = m;
}

void cluster_presence_changed(srv *s, const user *u)
{
    cluster *cl = CL(s);
    if (!cl || cl->closing)
        return;
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cnet_peer_is_up(cl->net, cl->peers[i].id))
            queue_presence(cl, &cl->peers[i], u);
}

static void send_all_presence(cluster *cl, uint32_t to)
{
    peer_out *p = peer(cl, to);
    if (!p)
        return;
    for (conn *c = cl->s->conns; c; c = c->next_all)
        if (c->u && c->u->devices == c) /* once per user */
            queue_presence(cl, p, c->u);
}

void cluster_remote_devices(srv *s, uint64_t uid, uint32_t *devices, uint32_t *away)
{
    cluster *cl = CL(s);
    *devices = *away = 0;
    if (!cl)
        return;
    for (uint32_t i = 0; i < cl->npeers; i++) {
        uintptr_t v = (uintptr_t)map_get(&cl->peers[i].remote, uid);
        *devices += (uint32_t)(v >> 16);
        *away += (uint32_t)(v & 0xffff);
    }
}

static void on_presence(cluster *cl, uint32_t from, const Chatlog__Cluster__V1__Presence *p)
{
    peer_out *po = peer(cl, from);
    if (!po || p->user_id == 0 || p->away > p->devices)
        return;
    uint32_t d = p->devices > 0xffff ? 0xffff : p->devices;
    uint32_t a = p->away > d ? d : p->away;
    if (d == 0)
        map_del(&po->remote, p->user_id);
    else if (map_put(&po->remote, p->user_id, (void *)(uintptr_t)((uintptr_t)d << 16 | a)))
        return;
    gw_remote_presence(cl->s, p->user_id, p->last_seen_ms);
}

static void on_typing(cluster *cl, const Chatlog__Cluster__V1__Typing *t)
{
    gw_remote_typing(cl->s, t->conv_id, t->user_id, t->active);
}

void cluster_typing(srv *s, uint64_t conv_id, uint64_t user_id, int active)
{
    cluster *cl = CL(s);
    if (!cl || cl->closing)
        return;
    for (uint32_t i = 0; i < cl->npeers; i++) {
        peer_out *p = &cl->peers[i];
        if (!cnet_peer_is_up(cl->net, p->id) ||
            grow((void **)&p->typ, &p->captyp, p->ntyp + 1, sizeof *p->typ))
            continue;
        Chatlog__Cluster__V1__Typing *m = malloc(sizeof *m);
        if (!m)
            continue;
        chatlog__cluster__v1__typing__init(m);
        m->conv_id = conv_id;
        m->user_id = user_id;
        m->active = active != 0;
        p->typ[p->ntyp++] = m;
    }
}

static void on_peer(void *arg, uint32_t id, int up)
{
    cluster *cl = arg;
    peer_out *p = peer(cl, id);
    if (!p)
        return;
    srv_log(cl->s, LOG_INFO, "cluster: link to node %u %s", id, up ? "up" : "down");
    if (cl->booting)
        return; /* no Raft, no sessions yet */
    if (up) {
        p->presence_sync = 1;
        send_all_presence(cl, id);
    } else {
        /* Its users' sessions are gone from our view. */
        u64map old = p->remote;
        memset(&p->remote, 0, sizeof p->remote);
        MAP_EACH(&old, e)
            gw_remote_presence(cl->s, e->key, srv_now_ms());
        map_free(&old);
    }
    after(cl);
    conn_flush_all(cl->s);
}

/* ---- ticking ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    cluster *cl = arg;
    (void)fd;
    (void)what;
    int rc = raft_tick(cl->rn, mono_ms(), &cl->ob);
    if (rc && rc != RAFT_EFAILED)
        srv_log(cl->s, LOG_DEBUG, "cluster: tick: %s", raft_strerror(rc));
    drain(cl);
    after(cl);
    if (cl->hint_dirty && now_ms() - cl->hint_saved_ms >= CL_HINT_MS) {
        int src = hs_save(cl);
        if (src)
            fatal(cl, "cannot save raft-state", src);
    }
    conn_flush_all(cl->s);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    cluster *cl = arg;
    (void)fd;
    (void)what;
    if (!cl->closing && !cl->booting) {
        after(cl);
        conn_flush_all(cl->s);
    }
}

static void engine_log_fn(void *arg, int level, const char *msg)
{
    srv_log(arg, level, "cluster: %s", msg);
}

/* ---- start and stop ---- */

static int parse_peers(cluster *cl, const char *spec, cnet_config *nc)
{
    const chatd_config *cfg = &cl->s->cfg;
    char buf[sizeof cfg->peers];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        char *end;
        unsigned long id = eq ? strtoul(tok, &end, 10) : 0;
        if (!eq || end != eq || id == 0 || id > UINT32_MAX || !eq[1] ||
            strlen(eq + 1) >= sizeof nc->peers[0].addr ||
            cl->rc.n_nodes >= RAFT_MAX_NODES) {
            srv_log(cl->s, LOG_ERROR, "peers: '%s' is not ID=HOST:PORT (at most %d nodes)",
                    tok, RAFT_MAX_NODES);
            return -1;
        }
        for (uint32_t i = 0; i < cl->rc.n_nodes; i++)
            if (cl->rc.nodes[i] == id) {
                srv_log(cl->s, LOG_ERROR, "peers: node %lu listed twice", id);
                return -1;
            }
        cl->rc.nodes[cl->rc.n_nodes++] = (uint32_t)id;
        if (id == cfg->node_id) {
            if (!cfg->cluster_listen[0])
                snprintf(cl->s->cfg.cluster_listen, sizeof cfg->cluster_listen, "%s",
                         eq + 1);
            continue;
        }
        cnet_peer *p = &nc->peers[nc->n_peers++];
        p->id = (uint32_t)id;
        snprintf(p->addr, sizeof p->addr, "%s", eq + 1);
        cl->peers[cl->npeers++].id = (uint32_t)id;
    }
    int me = 0;
    for (uint32_t i = 0; i < cl->rc.n_nodes; i++)
        me |= cl->rc.nodes[i] == cfg->node_id;
    if (!me) {
        srv_log(cl->s, LOG_ERROR, "node_id %u is not one of the peers (%s)",
                cfg->node_id, spec);
        return -1;
    }
    return 0;
}

static int tls_ctx(cluster *cl)
{
    const chatd_config *c = &cl->s->cfg;
    if (!c->cluster_tls_ca[0])
        return 0;
    cl->tls_srv = SSL_CTX_new(TLS_server_method());
    cl->tls_cli = SSL_CTX_new(TLS_client_method());
    if (!cl->tls_srv || !cl->tls_cli)
        return -1;
    SSL_CTX *both[2] = {cl->tls_srv, cl->tls_cli};
    for (int i = 0; i < 2; i++) {
        SSL_CTX_set_min_proto_version(both[i], TLS1_2_VERSION);
        if (SSL_CTX_use_certificate_chain_file(both[i], c->tls_cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(both[i], c->tls_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_load_verify_locations(both[i], c->cluster_tls_ca, NULL) != 1) {
            srv_log(cl->s, LOG_ERROR,
                    "cluster_tls_ca: cannot load tls_cert/tls_key/%s", c->cluster_tls_ca);
            return -1;
        }
        /* Both ends present certificates signed by the cluster's CA. */
        SSL_CTX_set_verify(both[i], SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return 0;
}

typedef struct desc_ctx {
    raft_batch *b;
    size_t n, cap;
    int oom;
} desc_ctx;

/* Where a shard's log stops being trustworthy: the first offset of damage
 * recovery found and fenced (a torn tail was already cut and is not
 * damage). UINT64_MAX if none. */
typedef struct dmg_ctx {
    uint32_t shard;
    uint64_t first;
} dmg_ctx;

static void dmg_cb(void *arg, const log_damage *d)
{
    dmg_ctx *x = arg;
    if (d->shard != x->shard || d->torn_tail)
        return;
    /* Without a known offset, distrust the whole segment. */
    uint64_t from = d->first_offset ? d->first_offset : d->seg_base;
    if (d->first_offset == 0 && d->end_offset == 0)
        from = d->seg_base;
    if (from < x->first)
        x->first = from;
}

/* Record durably that shard sh had records up to end before they are cut:
 * a crash right after the cut must not forget it (the replica would vote
 * and lead again without them). */
static int lose_suffix(cluster *cl, uint32_t sh, uint64_t end)
{
    if (end <= cl->hs[sh].acked_end)
        return 0;
    cl->hs[sh].acked_end = end;
    return hs_save(cl);
}

/* A replica with damaged data in the middle of a shard's log drops the log
 * from the damage on and fetches it again from the leader, as a replica
 * that lost a suffix does: it neither votes nor leads the shard until it
 * holds again everything it held before (acked_end). Returns the new
 * acked_end (0: nothing damaged), or a negative error. */
static int64_t cut_damage(cluster *cl, uint32_t sh)
{
    dmg_ctx x = {sh, UINT64_MAX};
    log_damage_each(cl->s->log, dmg_cb, &x);
    if (x.first == UINT64_MAX)
        return 0;
    uint64_t next = 0;
    log_shard_ends(cl->s->log, sh, &next, NULL);
    srv_log(cl->s, LOG_WARN,
            "cluster: shard %u: damaged data from offset %llu: dropping records %llu..%llu "
            "to fetch them again from the other nodes",
            sh, (unsigned long long)x.first, (unsigned long long)x.first,
            (unsigned long long)(next ? next - 1 : 0));
    uint64_t lost = next > x.first ? next : x.first + 1;
    int rc = lose_suffix(cl, sh, lost);
    if (!rc)
        rc = log_truncate_from(cl->s->log, sh, x.first);
    return rc ? rc : (int64_t)lost;
}

static int end_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                  const log_entry *e, size_t n)
{
    (void)bytes;
    (void)e;
    (void)n;
    *(uint64_t *)arg = h->first_offset + h->record_count;
    return 0;
}

/* The offset after the last batch of the shard that reads back whole. */
static uint64_t readable_end(log_t *log, uint32_t sh)
{
    uint64_t end = 0;
    (void)log_read_from(log, sh, 0, 0, end_cb, &end);
    return end;
}

static void desc_cb(void *arg, uint64_t first, uint32_t count, uint64_t term)
{
    desc_ctx *d = arg;
    if (grow((void **)&d->b, &d->cap, d->n + 1, sizeof *d->b)) {
        d->oom = 1;
        return;
    }
    d->b[d->n++] = (raft_batch){first, term, count, 0};
}

int cluster_start(srv *s)
{
    const chatd_config *cfg = &s->cfg;
    cluster *cl = calloc(1, sizeof *cl);
    if (!cl)
        return -1;
    s->cluster = cl;
    cl->s = s;
    cl->nshards = log_shard_count(s->log);
    cl->sh = calloc(cl->nshards, sizeof *cl->sh);
    cl->hs = calloc(cl->nshards, sizeof *cl->hs);
    if (!cl->sh || !cl->hs)
        return -1;
    raft_outbox_init(&cl->ob);
    cnet_config nc = {0};
    if (!cfg->node_id) {
        srv_log(s, LOG_ERROR, "node_id: required with peers");
        return -1;
    }
    cl->rc.self = cfg->node_id;
    if (parse_peers(cl, cfg->peers, &nc))
        return -1;
    if (!cfg->cluster_secret_file[0]) {
        srv_log(s, LOG_ERROR, "cluster_secret_file: required with peers");
        return -1;
    }
    int arc = auth_load_secret(cfg->cluster_secret_file, &cl->secret, &cl->secret_len);
    if (arc) {
        srv_log(s, LOG_ERROR, "cluster_secret_file: %s: %s", cfg->cluster_secret_file,
                arc == -EINVAL ? "shorter than 16 bytes" : strerror(-arc));
        return -1;
    }
    if (tls_ctx(cl))
        return -1;
    cl->rc.n_shards = cl->nshards;
    cl->rc.heartbeat_ms = cfg->raft_heartbeat_ms;
    cl->rc.election_min_ms = cfg->raft_election_ms;
    cl->rc.election_max_ms = cfg->raft_election_ms * 2;
    /* Batches are at most max_batch_bytes (1 MiB) each: 16 of them keep an
     * append far below the 64 MiB a link frame may carry. */
    cl->rc.max_batches_per_msg = 16;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    cl->rc.boot_id = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
    cl->rc.rand_seed = cl->rc.boot_id ^ ((uint64_t)cfg->node_id << 48);
    int rc = raft_node_new(&cl->rc, &cl->rn);
    if (rc) {
        srv_log(s, LOG_ERROR, "cluster: bad Raft settings: %s", raft_strerror(rc));
        return -1;
    }
    int found;
    rc = hs_load(cl, &found);
    if (rc) {
        srv_log(s, LOG_ERROR, "cluster: cannot read raft-state: %s", cl_strerror(rc));
        return -1;
    }
    uint64_t *upto = calloc(cl->nshards, sizeof *upto);
    if (!upto)
        return -1;
    /* The links first: a node that starts behind catches up by whole
     * segments before Raft opens its shards (boot_segments). */
    nc.self = cfg->node_id;
    nc.listen = cfg->cluster_listen;
    nc.secret = cl->secret;
    nc.secret_len = cl->secret_len;
    nc.tls_server = cl->tls_srv;
    nc.tls_client = cl->tls_cli;
    nc.on_frame = on_frame;
    nc.on_peer = on_peer;
    nc.log = engine_log_fn;
    nc.arg = cl;
    cl->booting = 1;
    rc = cnet_new(s->base, &nc, &cl->net);
    if (rc) {
        srv_log(s, LOG_ERROR, "cluster_listen: cannot listen on %s: %s", cfg->cluster_listen,
                strerror(-rc));
        free(upto);
        return -1;
    }
    for (uint32_t sh = 0; sh < cl->nshards; sh++) {
        int64_t lost = cut_damage(cl, sh);
        if (lost < 0) {
            srv_log(s, LOG_ERROR, "cluster: shard %u: cannot drop damaged data: %s", sh,
                    cl_strerror((int)lost));
            free(upto);
            return -1;
        }
        if ((uint64_t)lost > cl->hs[sh].acked_end)
            cl->hs[sh].acked_end = (uint64_t)lost;
        upto[sh] = cl->hs[sh].commit_hint;
    }
    /* What was installed was committed on the peer: a true commit hint. */
    if (boot_segments(cl, upto) > 0)
        for (uint32_t sh = 0; sh < cl->nshards; sh++)
            if (upto[sh] > cl->hs[sh].commit_hint)
                cl->hs[sh].commit_hint = upto[sh];
    uint64_t now = mono_ms();
    for (uint32_t sh = 0; sh < cl->nshards; sh++) {
        hs_ent *e = &cl->hs[sh];
        desc_ctx d = {0};
        rc = log_batch_each(s->log, sh, desc_cb, &d);
        uint64_t next = 0, durable = 0;
        log_shard_ends(s->log, sh, &next, &durable);
        if (rc == CL_ECORRUPT && !d.oom) {
            /* Damage recovery did not see (a bad block under a good
             * sidecar): the same treatment, from the last batch that
             * reads back. */
            uint64_t cut = readable_end(s->log, sh);
            srv_log(s, LOG_WARN,
                    "cluster: shard %u: unreadable batch after offset %llu: dropping records "
                    "%llu..%llu to fetch them again from the other nodes",
                    sh, (unsigned long long)cut, (unsigned long long)cut,
                    (unsigned long long)(next ? next - 1 : 0));
            rc = lose_suffix(cl, sh, next > cut ? next : cut + 1);
            if (!rc)
                rc = log_truncate_from(s->log, sh, cut);
            if (!rc) {
                d.n = 0;
                rc = log_batch_each(s->log, sh, desc_cb, &d);
                log_shard_ends(s->log, sh, &next, &durable);
            }
        }
        if (rc || d.oom) {
            srv_log(s, LOG_ERROR, "cluster: shard %u: cannot list batches: %s", sh,
                    cl_strerror(rc ? rc : CL_ENOMEM));
            free(d.b);
            free(upto);
            return -1;
        }
        uint64_t term = e->term;
        if (d.n && d.b[d.n - 1].term > term)
            term = d.b[d.n - 1].term; /* a log written before the file existed */
        /* Less log than this node had applied (and so acknowledged): it
         * lost a suffix and must not vote or lead until caught up. */
        uint64_t acked = e->acked_end;
        if (e->commit_hint > durable && e->commit_hint > acked)
            acked = e->commit_hint;
        if (acked && acked <= durable)
            acked = 0;
        e->acked_end = acked;
        if (acked)
            srv_log(s, LOG_WARN,
                    "cluster: shard %u: log ends at %llu but %llu were acknowledged; "
                    "it will not vote or lead until it has caught up",
                    sh, (unsigned long long)durable, (unsigned long long)acked);
        uint64_t commit = e->commit_hint < durable ? e->commit_hint : durable;
        raft_shard_state rs = {.term = term,
                               .voted_for = term == e->term ? e->voted_for : RAFT_NONE,
                               .batches = d.b, .n_batches = d.n,
                               .commit_offset = commit, .acked_end = acked};
        rc = raft_shard_open(cl->rn, sh, &rs, now);
        free(d.b);
        if (rc) {
            srv_log(s, LOG_ERROR, "cluster: shard %u: cannot open for Raft: %s", sh,
                    raft_strerror(rc));
            free(upto);
            return -1;
        }
        e->voted_for = rs.voted_for;
        e->term = term;
        cl->sh[sh].term = term;
        log_set_term(s->log, sh, term);
        upto[sh] = commit;
        cl->sh[sh].applied = commit;
    }
    if (!found)
        srv_log(s, LOG_INFO, "cluster: no raft-state yet: a new member");
    if ((rc = hs_save(cl))) {
        srv_log(s, LOG_ERROR, "cluster: cannot write raft-state: %s", cl_strerror(rc));
        free(upto);
        return -1;
    }
    rc = st_load_upto(s->st, s->log, upto);
    free(upto);
    if (rc)
        srv_log(s, LOG_ERROR, "cluster: state loaded around damaged data (%s)",
                cl_strerror(rc));
    cl->tick_ev = event_new(s->base, -1, EV_PERSIST, on_tick, cl);
    cl->kick_ev = event_new(s->base, -1, 0, on_kick, cl);
    struct timeval tv = {0, CL_TICK_MS * 1000};
    if (cl->tick_ev)
        event_priority_set(cl->tick_ev, CNET_EVENT_PRIORITY);
    if (!cl->tick_ev || !cl->kick_ev || event_add(cl->tick_ev, &tv))
        return -1;
    srv_log(s, LOG_INFO, "cluster: node %u of %u, links on %s, %u shards", cfg->node_id,
            cl->rc.n_nodes, cfg->cluster_listen, cl->nshards);
    cl->started = 1;
    return 0;
}

void cluster_round(srv *s)
{
    cluster *cl = CL(s);
    if (cl && !cl->closing)
        after(cl);
}

void cluster_stop(srv *s)
{
    cluster *cl = CL(s);
    if (!cl || cl->closing)
        return;
    cl->closing = 1;
    while (cl->waiting) {
        wreq *w = cl->waiting;
        cl->waiting = w->next;
        wreq_done(cl, w, CL_ECLOSED, NULL);
    }
    for (uint32_t sh = 0; cl->sh && sh < cl->nshards; sh++) {
        while (cl->sh[sh].acks) {
            pend *p = cl->sh[sh].acks;
            cl->sh[sh].acks = p->next;
            finish(cl, p, CL_ECLOSED);
        }
    }
    if (cl->tick_ev)
        event_free(cl->tick_ev);
    if (cl->kick_ev)
        event_free(cl->kick_ev);
    cl->tick_ev = cl->kick_ev = NULL;
    if (cl->net)
        cnet_free(cl->net);
    cl->net = NULL;
    /* Never after a start that failed: it may not have read the file
     * (a damaged one must stay as it is, not become "no vote"). */
    if (cl->started)
        (void)hs_save(cl);
}

void cluster_free(srv *s)
{
    cluster *cl = CL(s);
    if (!cl)
        return;
    cluster_stop(s);
    for (uint32_t sh = 0; cl->sh && sh < cl->nshards; sh++)
        free(cl->sh[sh].ops);
    for (uint32_t i = 0; i < cl->npeers; i++) {
        peer_reset(&cl->peers[i]);
        free(cl->peers[i].raft);
        free(cl->peers[i].fwd);
        free(cl->peers[i].res);
        free(cl->peers[i].pres);
        free(cl->peers[i].typ);
        free(cl->peers[i].sreq);
        free(cl->peers[i].srep);
        map_free(&cl->peers[i].remote);
    }
    raft_node_free(cl->rn);
    raft_outbox_free(&cl->ob);
    if (cl->tls_srv)
        SSL_CTX_free(cl->tls_srv);
    if (cl->tls_cli)
        SSL_CTX_free(cl->tls_cli);
    free(cl->secret);
    free(cl->sh);
    free(cl->hs);
    free(cl);
    s->cluster = NULL;
}

/* ---- inspection ---- */

static const char *role_name(int r)
{
    return r == RAFT_LEADER ? "leader" : r == RAFT_CANDIDATE ? "candidate" : "follower";
}

json_t *cluster_status_json(srv *s)
{
    cluster *cl = CL(s);
    json_t *o = json_object();
    if (!o)
        return NULL;
    if (!cl || cl->closing) {
        json_object_set_new(o, "enabled", json_false());
        return o;
    }
    json_object_set_new(o, "enabled", json_true());
    json_object_set_new(o, "node_id", json_integer(cl->rc.self));
    /* Where clients may go when this node fails (client_urls). */
    json_t *urls = json_array();
    char buf[sizeof s->cfg.client_urls], *save = NULL;
    snprintf(buf, sizeof buf, "%s", s->cfg.client_urls);
    for (char *u = strtok_r(buf, ", ", &save); u; u = strtok_r(NULL, ", ", &save))
        json_array_append_new(urls, json_string(u));
    json_object_set_new(o, "client_urls", urls);
    json_t *nodes = json_array();
    for (uint32_t i = 0; i < cl->rc.n_nodes; i++) {
        uint32_t id = cl->rc.nodes[i];
        json_t *n = json_object();
        json_object_set_new(n, "id", json_integer(id));
        json_object_set_new(n, "link", id == cl->rc.self ? json_string("self")
                                       : cnet_peer_is_up(cl->net, id) ? json_string("up")
                                                                      : json_string("down"));
        json_array_append_new(nodes, n);
    }
    json_object_set_new(o, "nodes", nodes);
    json_t *shards = json_array();
    for (uint32_t sh = 0; sh < cl->nshards; sh++) {
        raft_shard_info ri;
        if (raft_shard_info_get(cl->rn, sh, &ri))
            continue;
        json_t *j = json_object();
        json_object_set_new(j, "shard", json_integer(sh));
        json_object_set_new(j, "role", json_string(role_name(ri.role)));
        json_object_set_new(j, "leader", json_integer(ri.leader));
        json_object_set_new(j, "term", json_integer((json_int_t)ri.term));
        json_object_set_new(j, "end_offset", json_integer((json_int_t)ri.end_offset));
        json_object_set_new(j, "durable_offset", json_integer((json_int_t)ri.durable_offset));
        json_object_set_new(j, "commit_offset", json_integer((json_int_t)ri.commit_offset));
        json_object_set_new(j, "applied_offset",
                            json_integer((json_int_t)cl->sh[sh].applied));
        json_object_set_new(j, "ready", json_boolean(cl->sh[sh].ready));
        json_object_set_new(j, "recovering", json_boolean(ri.recovering));
        json_object_set_new(j, "faulty_ranges", json_integer(ri.n_faulty));
        if (ri.failed)
            json_object_set_new(j, "failed", json_string(raft_strerror(ri.failed)));
        if (ri.role == RAFT_LEADER) {
            json_t *fs = json_array();
            for (uint32_t i = 0; i < ri.n_peers; i++) {
                json_t *f = json_object();
                json_object_set_new(f, "node", json_integer(ri.peers[i].node));
                json_object_set_new(f, "match", json_integer((json_int_t)ri.peers[i].match));
                json_object_set_new(f, "lag", json_integer((json_int_t)(
                    ri.end_offset - (ri.peers[i].match < ri.end_offset ? ri.peers[i].match
                                                                        : ri.end_offset))));
                json_array_append_new(fs, f);
            }
            json_object_set_new(j, "followers", fs);
        }
        json_array_append_new(shards, j);
    }
    json_object_set_new(o, "shards", shards);
    return o;
}

static void append_line(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append_line(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line || grow((void **)buf, cap, *len + (size_t)n + 1, 1))
        return;
    memcpy(*buf + *len, line, (size_t)n + 1);
    *len += (size_t)n;
}

void cluster_metrics(srv *s, char **buf, size_t *len, size_t *cap)
{
    cluster *cl = CL(s);
    if (!cl)
        return;
    append_line(buf, len, cap, "# TYPE chatd_cluster_elections_won_total counter\n"
                "chatd_cluster_elections_won_total %llu\n",
                (unsigned long long)cl->became_leader);
    append_line(buf, len, cap, "# TYPE chatd_cluster_forwarded_total counter\n"
                "chatd_cluster_forwarded_total{dir=\"out\"} %llu\n"
                "chatd_cluster_forwarded_total{dir=\"in\"} %llu\n",
                (unsigned long long)cl->forwarded_out, (unsigned long long)cl->forwarded_in);
    append_line(buf, len, cap, "# TYPE chatd_cluster_segments_total counter\n"
                "chatd_cluster_segments_total{dir=\"sent\"} %llu\n"
                "chatd_cluster_segments_total{dir=\"installed\"} %llu\n",
                (unsigned long long)cl->segments_sent,
                (unsigned long long)cl->segments_installed);
    append_line(buf, len, cap, "# TYPE chatd_cluster_bad_frames_total counter\n"
                "chatd_cluster_bad_frames_total %llu\n", (unsigned long long)cl->frames_bad);
    /* One family after the other (Prometheus text format). */
    append_line(buf, len, cap, "# TYPE chatd_cluster_leader gauge\n");
    for (uint32_t sh = 0; sh < cl->nshards; sh++) {
        raft_shard_info ri;
        if (raft_shard_info_get(cl->rn, sh, &ri) == 0)
            append_line(buf, len, cap, "chatd_cluster_leader{shard=\"%u\"} %d\n", sh,
                        ri.role == RAFT_LEADER);
    }
    append_line(buf, len, cap, "# TYPE chatd_cluster_replication_lag_records gauge\n");
    for (uint32_t sh = 0; sh < cl->nshards; sh++) {
        raft_shard_info ri;
        if (raft_shard_info_get(cl->rn, sh, &ri) || ri.role != RAFT_LEADER)
            continue;
        for (uint32_t i = 0; i < ri.n_peers; i++) {
            uint64_t m = ri.peers[i].match < ri.end_offset ? ri.peers[i].match : ri.end_offset;
            append_line(buf, len, cap,
                        "chatd_cluster_replication_lag_records{shard=\"%u\",node=\"%u\"} %llu\n",
                        sh, ri.peers[i].node, (unsigned long long)(ri.end_offset - m));
        }
    }
}
