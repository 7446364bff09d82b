/*
 * differential.c — fuzz target: a sequence of engine operations decoded
 * from the input, run against the real engine (threads, group commit,
 * rolling, sealing, recovery) and against a trivially correct in-memory
 * model; every read must agree exactly.
 *
 * MODEL. Per shard, the records by offset (offset i is element i); per
 * conversation, its messages by msg_id (message m is element m-1). An
 * append takes the shard's next offset and, for a message, the
 * conversation's next msg_id; a truncation drops every record at or past an
 * offset and the msg_ids go back with them.
 *
 * INPUT. Byte 0 configures the log: shards 1 + (b & 3), no_compress (b & 4),
 * segment size 16 KiB << ((b >> 3) & 3). Then operations, one byte each
 * followed by their arguments (missing bytes read as 0):
 *   0-2 append        a, n: conversation a % 6; type by (a >> 3) & 7
 *                     (0-4 message, 5 read pointer, 6 edit, 7 members
 *                     changed); body of n bytes (n * 37 for op 2), an
 *                     8-byte key if n is odd; ts_ms given, or 0 (stamped by
 *                     the writer) when a & 0x40. Appends are queued without
 *                     waiting, so that the writer groups them; the callback
 *                     must report the offset and msg_id the model expects.
 *   3   read_conv     a, m, l: conversation a % 6, LOG_BEFORE if a & 8,
 *                     around msg_id m, limit l % 40: the msg_ids, bodies,
 *                     order and the `more` flag must be the model's.
 *   4   read_from     s, o, x: shard s, from offset o (scaled into the
 *                     shard's length), max_bytes 64 * x: a contiguous run of
 *                     the model's records from o, to the end when x is 0,
 *                     else stopping at the first batch that reaches x.
 *   5   reopen        a: log_close + log_open (clean); a & 1: open read-only
 *                     in between and check reads there (appends must fail
 *                     with CL_EINVAL); (a >> 1) & 3 picks a new segment size.
 *                     No damage may be reported; counters and each
 *                     conversation's last msg_id must match the model.
 *   6   crash         s, c (2 bytes): close, cut c bytes off the end of the
 *                     shard's active segment (a torn, never-synced tail),
 *                     reopen: recovery must cut back to the last whole batch
 *                     and report at most a torn tail; the model drops the
 *                     records of the cut batches.
 *   7   truncate_from s, i: log_truncate_from at batch boundary i of the
 *                     shard (boundaries read with log_read_from): 0 (model
 *                     truncated) or CL_EINVAL (the boundary lies in sealed
 *                     history, refused; nothing changed). One record past a
 *                     boundary inside a batch must give CL_EINVAL.
 *                     (Also refused while a segment from the cut on is
 *                     being sealed.)
 * Before each read, truncation, reopen and at the end, every queued append
 * is waited for. At the end the log is closed and rcv_verify must pass.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "errors.h"
#include "log.h"
#include "verify.h"

#define NCONV 6
#define MAX_SHARDS 4
#define MAX_OPS 2000

typedef struct mrec {
    rec_view r; /* key, body: owned */
    uint64_t offset;
    uint64_t term;
    int acked;
} mrec;

typedef struct vec {
    mrec **v; /* shard: every record; conversation: its messages */
    size_t n, cap;
} vec;

static void vpush(vec *x, mrec *r)
{
    if (x->n == x->cap) {
        x->cap = x->cap ? x->cap * 2 : 64;
        x->v = realloc(x->v, x->cap * sizeof *x->v);
        FUZZ_CHECK(x->v != NULL, "oom");
    }
    x->v[x->n++] = r;
}

typedef struct state {
    log_t *log;
    log_options opt;
    uint32_t shards;
    int ro;
    vec shard[MAX_SHARDS];
    vec conv[NCONV];
    uint64_t conv_ids[NCONV];
    uint64_t ops;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
} state;

static char dir[512];
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "%s/differential", fuzz_tmp_dir());
    devnull = fopen("/dev/null", "w");
    return 0;
}

/* ---- input ---- */

typedef struct input {
    const uint8_t *p;
    size_t n, i;
} input;

static uint8_t next(input *in)
{
    return in->i < in->n ? in->p[in->i++] : 0;
}

/* ---- appends ---- */

typedef struct pending_ctx {
    state *st;
    mrec *m;
    uint32_t shard;
} pending_ctx;

static void append_cb(void *arg, int status, const log_append_result *res)
{
    pending_ctx *p = arg;
    state *st = p->st;
    FUZZ_CHECK(status == 0, "append failed: %s", cl_strerror(status));
    FUZZ_CHECK(res->shard == p->shard && res->offset == p->m->offset,
               "append landed at shard %u offset %llu; model: %u, %llu", res->shard,
               (unsigned long long)res->offset, p->shard,
               (unsigned long long)p->m->offset);
    FUZZ_CHECK(res->msg_id == p->m->r.msg_id, "append got msg_id %llu; model %llu",
               (unsigned long long)res->msg_id, (unsigned long long)p->m->r.msg_id);
    if (p->m->r.ts_ms == 0)
        p->m->r.ts_ms = res->ts_ms;
    else
        FUZZ_CHECK(res->ts_ms == p->m->r.ts_ms, "ts_ms changed");
    p->m->term = res->term;
    pthread_mutex_lock(&st->mu);
    p->m->acked = 1;
    st->outstanding--;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    free(p);
}

static void drain(state *st)
{
    pthread_mutex_lock(&st->mu);
    while (st->outstanding > 0)
        pthread_cond_wait(&st->cv, &st->mu);
    pthread_mutex_unlock(&st->mu);
}

static void op_append(state *st, input *in, int big)
{
    uint8_t a = next(in), n = next(in);
    int c = a % NCONV;
    int t = (a >> 3) & 7;
    mrec *m = calloc(1, sizeof *m);
    FUZZ_CHECK(m != NULL, "oom");
    rec_view *r = &m->r;
    r->type = t <= 4 ? REC_MESSAGE : t == 5 ? REC_READ_POINTER : t == 6 ? REC_EDIT
                                                                        : REC_MEMBERS_CHANGED;
    r->conv_id = st->conv_ids[c];
    r->sender_id = 100 + a;
    r->ts_ms = (a & 0x40) ? 0 : 1700000000000ll + (int64_t)st->ops;
    r->body_len = big ? (uint32_t)n * 37 : n;
    r->key_len = (n & 1) ? 8 : 0;
    uint8_t *b = malloc(r->body_len + r->key_len + 1);
    FUZZ_CHECK(b != NULL, "oom");
    fuzz_fill(st->ops * 1000003 + n, b, r->body_len + r->key_len);
    r->key = r->key_len ? b : NULL;
    r->body = b + r->key_len;
    if (r->type != REC_MESSAGE)
        r->msg_id = n;
    st->ops++;

    if (st->ro) {
        rec_view q = *r;
        q.msg_id = r->type == REC_MESSAGE ? 0 : r->msg_id;
        int rc = log_append(st->log, &q, append_cb, NULL);
        FUZZ_CHECK(rc == CL_EINVAL, "append to a read-only log: %s", cl_strerror(rc));
        free(b);
        free(m);
        return;
    }
    uint32_t s = log_shard_of(st->log, r->conv_id);
    m->offset = st->shard[s].n;
    if (r->type == REC_MESSAGE)
        r->msg_id = st->conv[c].n + 1;
    pending_ctx *p = malloc(sizeof *p);
    FUZZ_CHECK(p != NULL, "oom");
    *p = (pending_ctx){st, m, s};
    rec_view q = *r;
    if (q.type == REC_MESSAGE)
        q.msg_id = 0;
    pthread_mutex_lock(&st->mu);
    st->outstanding++;
    pthread_mutex_unlock(&st->mu);
    int rc = log_append(st->log, &q, append_cb, p);
    FUZZ_CHECK(rc == 0, "log_append: %s", cl_strerror(rc));
    vpush(&st->shard[s], m);
    if (r->type == REC_MESSAGE)
        vpush(&st->conv[c], m);
}

/* ---- comparing ---- */

static int same_rec(const rec_view *a, const rec_view *b)
{
    return a->type == b->type && a->conv_id == b->conv_id &&
           a->msg_id == b->msg_id && a->sender_id == b->sender_id &&
           a->ts_ms == b->ts_ms && a->key_len == b->key_len &&
           a->body_len == b->body_len &&
           (a->key_len == 0 || memcmp(a->key, b->key, a->key_len) == 0) &&
           (a->body_len == 0 || memcmp(a->body, b->body, a->body_len) == 0);
}

static void op_read_conv(state *st, input *in)
{
    uint8_t a = next(in), mb = next(in), lb = next(in);
    int c = a % NCONV;
    int before = (a >> 3) & 1;
    uint64_t m = mb;
    uint32_t limit = lb % 40;
    const vec *v = &st->conv[c];
    uint64_t n = v->n;
    log_result res = {0};
    int more = -1;
    int rc = log_read_conv(st->log, st->conv_ids[c], m, before ? LOG_BEFORE : LOG_AFTER,
                           limit, &res, &more);
    FUZZ_CHECK(rc == 0, "read_conv: %s", cl_strerror(rc));
    /* The model's answer. */
    uint64_t want_first, want_n;
    int want_more;
    if (!before) {
        want_first = m + 1;
        want_n = m >= n ? 0 : (n - m < limit ? n - m : limit);
        want_more = m + want_n < n;
    } else {
        uint64_t top = (m == 0 || m > n + 1) ? n + 1 : m;
        want_first = top - 1;
        want_n = top - 1 < limit ? top - 1 : limit;
        want_more = top - 1 > want_n;
    }
    FUZZ_CHECK(res.n == want_n, "conv %d %s %llu limit %u: %zu messages, model %llu", c,
               before ? "before" : "after", (unsigned long long)m, limit, res.n,
               (unsigned long long)want_n);
    FUZZ_CHECK(more == want_more, "conv %d %s %llu limit %u: more %d, model %d", c,
               before ? "before" : "after", (unsigned long long)m, limit, more,
               want_more);
    for (size_t i = 0; i < res.n; i++) {
        uint64_t id = before ? want_first - i : want_first + i;
        const mrec *x = v->v[id - 1];
        const log_entry *e = &res.entries[i];
        FUZZ_CHECK(e->rec.msg_id == id && same_rec(&e->rec, &x->r),
                   "conv %d entry %zu: msg_id %llu, model %llu (or content differs)", c,
                   i, (unsigned long long)e->rec.msg_id, (unsigned long long)id);
        FUZZ_CHECK(e->offset == x->offset && e->shard == log_shard_of(st->log, x->r.conv_id),
                   "conv %d msg %llu at offset %llu, model %llu", c,
                   (unsigned long long)id, (unsigned long long)e->offset,
                   (unsigned long long)x->offset);
    }
    log_result_free(&res);
}

typedef struct rf_ctx {
    const vec *v;
    uint32_t shard;
    uint64_t next;
    uint64_t passed;
    uint64_t last_len;
    /* boundaries collection */
    uint64_t *bounds;
    size_t nb, capb;
} rf_ctx;

static int rf_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                 const log_entry *e, size_t n)
{
    rf_ctx *c = arg;
    (void)bytes;
    FUZZ_CHECK(h->shard_id == c->shard, "batch of shard %u", h->shard_id);
    FUZZ_CHECK(n >= 1 && n <= h->record_count, "batch with %zu of %u entries", n,
               h->record_count);
    if (c->bounds) {
        if (c->nb == c->capb) {
            c->capb = c->capb ? c->capb * 2 : 64;
            c->bounds = realloc(c->bounds, c->capb * sizeof *c->bounds);
            FUZZ_CHECK(c->bounds != NULL, "oom");
        }
        c->bounds[c->nb++] = h->first_offset;
    }
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(e[i].offset == c->next, "shard %u: offset %llu, model %llu",
                   c->shard, (unsigned long long)e[i].offset,
                   (unsigned long long)c->next);
        FUZZ_CHECK(e[i].offset < c->v->n, "shard %u: offset %llu past the model's %zu",
                   c->shard, (unsigned long long)e[i].offset, c->v->n);
        const mrec *x = c->v->v[e[i].offset];
        FUZZ_CHECK(same_rec(&e[i].rec, &x->r), "shard %u offset %llu differs", c->shard,
                   (unsigned long long)e[i].offset);
        FUZZ_CHECK(e[i].term == h->term && e[i].shard == c->shard, "entry term/shard");
        c->next++;
    }
    FUZZ_CHECK(h->first_offset + h->record_count == c->next,
               "batch [%llu, +%u) ends at %llu", (unsigned long long)h->first_offset,
               h->record_count, (unsigned long long)c->next);
    c->passed += h->length;
    c->last_len = h->length;
    return 0;
}

static void op_read_from(state *st, input *in)
{
    uint32_t s = next(in) % st->shards;
    uint8_t ob = next(in), xb = next(in);
    const vec *v = &st->shard[s];
    uint64_t from = v->n ? (uint64_t)ob * (v->n + 1) / 256 : ob % 4;
    uint64_t max = (uint64_t)xb * 64;
    rf_ctx c = {v, s, from, 0, 0, NULL, 0, 0};
    int rc = log_read_from(st->log, s, from, max, rf_cb, &c);
    FUZZ_CHECK(rc == 0, "read_from %llu: %s", (unsigned long long)from, cl_strerror(rc));
    if (from >= v->n) {
        FUZZ_CHECK(c.next == from, "read past the end returned records");
        return;
    }
    if (max == 0 || c.next < v->n) {
        FUZZ_CHECK(c.next == v->n || (max && c.passed >= max),
                   "shard %u from %llu max %llu: stopped at %llu of %zu after %llu bytes",
                   s, (unsigned long long)from, (unsigned long long)max,
                   (unsigned long long)c.next, v->n, (unsigned long long)c.passed);
    }
    if (max)
        FUZZ_CHECK(c.passed - c.last_len < max, "read on past max_bytes");
}

/* ---- shard-wide checks ---- */

static void check_counters(state *st)
{
    for (uint32_t s = 0; s < st->shards; s++) {
        log_shard_info info;
        FUZZ_CHECK(log_shard_info_get(st->log, s, &info) == 0, "info");
        uint64_t msgs = 0;
        for (size_t i = 0; i < st->shard[s].n; i++)
            msgs += st->shard[s].v[i]->r.type == REC_MESSAGE;
        FUZZ_CHECK(info.next_offset == st->shard[s].n && info.records == st->shard[s].n &&
                       info.messages == msgs,
                   "shard %u: next_offset %llu records %llu messages %llu; model %zu, "
                   "%llu", s, (unsigned long long)info.next_offset,
                   (unsigned long long)info.records, (unsigned long long)info.messages,
                   st->shard[s].n, (unsigned long long)msgs);
        FUZZ_CHECK(info.failed == 0 && info.damaged_ranges == 0, "shard %u failed %d, %u damaged",
                   s, info.failed, info.damaged_ranges);
    }
    for (int c = 0; c < NCONV; c++)
        FUZZ_CHECK(log_conv_last_msg_id(st->log, st->conv_ids[c]) == st->conv[c].n,
                   "conv %d: last msg_id %llu, model %zu", c,
                   (unsigned long long)log_conv_last_msg_id(st->log, st->conv_ids[c]),
                   st->conv[c].n);
}

typedef struct dmg {
    int torn, other;
    uint32_t torn_shard;
} dmg;

static void dmg_cb(void *arg, const log_damage *d)
{
    dmg *x = arg;
    if (d->torn_tail) {
        x->torn++;
        x->torn_shard = d->shard;
    } else {
        x->other++;
    }
}

static void open_log(state *st, int ro)
{
    st->opt.read_only = ro;
    int rc = log_open(dir, &st->opt, &st->log);
    FUZZ_CHECK(rc == 0, "log_open: %s", cl_strerror(rc));
    st->ro = ro;
}

/* Drop every record of shard s at or past offset cut from the model. */
static void model_truncate(state *st, uint32_t s, uint64_t cut)
{
    vec *v = &st->shard[s];
    for (int c = 0; c < NCONV; c++) {
        vec *cv = &st->conv[c];
        while (cv->n && log_shard_of(st->log, st->conv_ids[c]) == s &&
               cv->v[cv->n - 1]->offset >= cut)
            cv->n--;
    }
    while (v->n > cut) {
        mrec *m = v->v[--v->n];
        free((void *)(m->r.key ? m->r.key : m->r.body));
        free(m);
    }
}

static void op_reopen(state *st, input *in)
{
    uint8_t a = next(in);
    FUZZ_CHECK(log_close(st->log) == 0, "close");
    st->log = NULL;
    if (a & 1) {
        open_log(st, 1);
        check_counters(st);
        for (int k = 0; k < 3; k++)
            op_read_conv(st, in);
        op_read_from(st, in);
        op_append(st, in, 0);
        FUZZ_CHECK(log_close(st->log) == 0, "close read-only");
    }
    st->opt.segment_bytes = (16u << 10) << ((a >> 1) & 3);
    open_log(st, 0);
    dmg d = {0, 0, 0};
    log_damage_each(st->log, dmg_cb, &d);
    FUZZ_CHECK(d.torn == 0 && d.other == 0, "clean reopen found %d torn, %d damaged",
               d.torn, d.other);
    check_counters(st);
}

/* Batches of shard s from offset `from`, read through the engine. */
static void boundaries(state *st, uint32_t s, uint64_t from, rf_ctx *c)
{
    memset(c, 0, sizeof *c);
    c->v = &st->shard[s];
    c->shard = s;
    c->next = from;
    c->bounds = malloc(sizeof *c->bounds);
    c->capb = 1;
    int rc = log_read_from(st->log, s, from, 0, rf_cb, c);
    FUZZ_CHECK(rc == 0, "read_from: %s", cl_strerror(rc));
}

static void op_crash(state *st, input *in)
{
    uint32_t s = next(in) % st->shards;
    uint32_t cut = next(in);
    cut |= (uint32_t)next(in) << 8;
    /* The active segment's batches, before closing. */
    uint32_t nseg = 0;
    log_segment_info si, last = {0};
    while (log_segment_info_get(st->log, s, nseg, &si) == 0) {
        last = si;
        nseg++;
    }
    FUZZ_CHECK(nseg >= 1 && !last.sealed, "no active segment");
    rf_ctx c;
    boundaries(st, s, last.base_offset, &c);
    FUZZ_CHECK(c.passed == last.raw_bytes, "active segment holds %llu bytes, batches %llu",
               (unsigned long long)last.raw_bytes, (unsigned long long)c.passed);
    FUZZ_CHECK(log_close(st->log) == 0, "close");
    st->log = NULL;

    uint64_t size = last.raw_bytes;
    uint64_t keep = cut >= size ? 0 : size - cut;
    /* The records of every batch not wholly below `keep` are lost. */
    uint64_t pos = 0, lost_from = st->shard[s].n;
    char path[1024];
    snprintf(path, sizeof path, "%s/shard-%04u/%020llu.log", dir, s,
             (unsigned long long)last.base_offset);
    uint8_t *b;
    size_t blen;
    /* Batch lengths from the file itself, checked against the engine's
     * view above. */
    FUZZ_CHECK(fuzz_read_file(path, &b, &blen) == 0 && blen == size,
               "active segment %s: %zu bytes, expected %llu", path, blen,
               (unsigned long long)size);
    size_t k = 0;
    while (pos < size) {
        batch_header h;
        FUZZ_CHECK(batch_verify(b + pos, size - pos, &h) == 0, "active segment batch");
        FUZZ_CHECK(k < c.nb && c.bounds[k] == h.first_offset, "batch order");
        if (pos + h.length > keep) {
            lost_from = h.first_offset;
            break;
        }
        pos += h.length;
        k++;
    }
    free(c.bounds);
    int cut_mid = keep > pos && keep < size; /* a partial batch remains */
    FUZZ_CHECK(fuzz_write_file(path, b, keep) == 0, "cut");
    free(b);
    open_log(st, 0);
    dmg d = {0, 0, 0};
    log_damage_each(st->log, dmg_cb, &d);
    FUZZ_CHECK(d.other == 0 && d.torn == cut_mid && (!d.torn || d.torn_shard == s),
               "after cutting %llu of %llu bytes: %d torn, %d damaged",
               (unsigned long long)(size - keep), (unsigned long long)size, d.torn,
               d.other);
    model_truncate(st, s, lost_from);
    check_counters(st);
}

static void op_truncate(state *st, input *in)
{
    uint32_t s = next(in) % st->shards;
    uint8_t ib = next(in);
    if (st->ro) {
        FUZZ_CHECK(log_truncate_from(st->log, s, 0) == CL_EINVAL, "truncate read-only");
        return;
    }
    rf_ctx c;
    boundaries(st, s, 0, &c);
    FUZZ_CHECK(c.next == st->shard[s].n, "shard %u reads to %llu of %zu", s,
               (unsigned long long)c.next, st->shard[s].n);
    if (c.nb == 0) {
        free(c.bounds);
        FUZZ_CHECK(log_truncate_from(st->log, s, 0) == 0, "truncate an empty shard");
        return;
    }
    size_t i = ib % (c.nb + 1);
    uint64_t at = i < c.nb ? c.bounds[i] : st->shard[s].n;
    uint64_t batch_end = i + 1 < c.nb ? c.bounds[i + 1] : st->shard[s].n;
    free(c.bounds);
    /* Inside a batch: refused, nothing changes. */
    if (ib & 0x80 && at + 1 < batch_end) {
        int rc = log_truncate_from(st->log, s, at + 1);
        FUZZ_CHECK(rc == CL_EINVAL, "truncate inside a batch: %s", cl_strerror(rc));
        check_counters(st);
        return;
    }
    int rc = log_truncate_from(st->log, s, at);
    FUZZ_CHECK(rc == 0 || rc == CL_EINVAL, "truncate_from %llu: %s",
               (unsigned long long)at, cl_strerror(rc));
    if (rc == 0)
        model_truncate(st, s, at);
    check_counters(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!dir[0])
        LLVMFuzzerInitialize(NULL, NULL);
    fuzz_rm_rf(dir);
    state *st = calloc(1, sizeof *st);
    FUZZ_CHECK(st != NULL, "oom");
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    input in = {data, size, 0};
    uint8_t cfg = next(&in);
    st->shards = 1 + (cfg & 3);
    st->opt = (log_options){.shards = st->shards,
                            .segment_bytes = (16u << 10) << ((cfg >> 3) & 3),
                            .no_compress = (cfg >> 2) & 1,
                            .io = fuzz_nosync_vfs(),
                            .log_fn = fuzz_quiet_log};
    for (int c = 0; c < NCONV; c++)
        st->conv_ids[c] = 1 + (uint64_t)c * 1000003;
    open_log(st, 0);

    for (int k = 0; k < MAX_OPS && in.i < in.n; k++) {
        uint8_t op = next(&in) % 8;
        if (op >= 3)
            drain(st);
        switch (op) {
        case 0:
        case 1:
            op_append(st, &in, 0);
            break;
        case 2:
            op_append(st, &in, 1);
            break;
        case 3:
            op_read_conv(st, &in);
            break;
        case 4:
            op_read_from(st, &in);
            break;
        case 5:
            op_reopen(st, &in);
            break;
        case 6:
            op_crash(st, &in);
            break;
        case 7:
            op_truncate(st, &in);
            break;
        }
    }
    drain(st);
    check_counters(st);
    FUZZ_CHECK(log_close(st->log) == 0, "final close");
    int vr = rcv_verify(dir, devnull);
    FUZZ_CHECK(vr == 0, "verify after the run: %d", vr);

    for (uint32_t s = 0; s < MAX_SHARDS; s++) {
        for (size_t i = 0; i < st->shard[s].n; i++) {
            mrec *m = st->shard[s].v[i];
            free((void *)(m->r.key ? m->r.key : m->r.body));
            free(m);
        }
        free(st->shard[s].v);
    }
    for (int c = 0; c < NCONV; c++)
        free(st->conv[c].v);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st);
    fuzz_rm_rf(dir);
    return 0;
}
