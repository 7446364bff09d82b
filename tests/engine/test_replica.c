/* The engine API for Raft replication (engine/log.h): appends fenced by
 * term, batch boundaries in append results, batches received from a leader
 * (log_write_batches), the no-op batch, batch descriptors, and power loss
 * through the fault-injecting vfs while received batches are written. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"
#include "helpers.h"
#include "io_fault.h"
#include "log.h"
#include "test.h"
#include "verify.h"

/* ---- synchronous helpers ---- */

typedef struct awaiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    int n;
    int status[64];
    log_append_result res[64];
} awaiter;

static void await_cb(void *arg, int status, const log_append_result *res)
{
    awaiter *a = arg;
    pthread_mutex_lock(&a->mu);
    if (a->n < 64) {
        a->status[a->n] = status;
        if (res)
            a->res[a->n] = *res;
        a->n++;
    }
    a->outstanding--;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void await_all(awaiter *a)
{
    pthread_mutex_lock(&a->mu);
    while (a->outstanding > 0)
        pthread_cond_wait(&a->cv, &a->mu);
    pthread_mutex_unlock(&a->mu);
}

static rec_view msg(uint64_t conv, const char *body)
{
    return (rec_view){.type = REC_MESSAGE, .conv_id = conv, .sender_id = 3,
                      .body = (const uint8_t *)body,
                      .body_len = (uint32_t)strlen(body)};
}

/* The first n conv_ids >= 1 that live in shard sh (of 4). */
static void convs_in(uint32_t sh, uint64_t *out, int n)
{
    for (uint64_t c = 1; n > 0; c++)
        if (log_shard_for(c, 4) == sh) {
            *out++ = c;
            n--;
        }
}

/* Every durable batch of a shard, as stored. */
typedef struct bytes_buf {
    uint8_t *p;
    size_t len, cap;
    uint64_t firsts[4096];
    size_t pos[4096];
    uint32_t n;
} bytes_buf;

static int collect_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                      const log_entry *e, size_t n)
{
    bytes_buf *b = arg;
    if (b->len + h->length > b->cap) {
        b->cap = (b->len + h->length) * 2;
        b->p = realloc(b->p, b->cap);
    }
    if (b->n < 4096) {
        b->firsts[b->n] = h->first_offset;
        b->pos[b->n++] = b->len;
    }
    memcpy(b->p + b->len, bytes, h->length);
    b->len += h->length;
    return 0;
}

typedef struct descs {
    uint64_t first[4096], term[4096];
    uint32_t count[4096];
    uint32_t n;
} descs;

static void desc_cb(void *arg, uint64_t first, uint32_t count, uint64_t term)
{
    descs *d = arg;
    if (d->n < 4096) {
        d->first[d->n] = first;
        d->count[d->n] = count;
        d->term[d->n++] = term;
    }
}

static log_t *open_opts(const char *dir, io_vfs *io, uint64_t seg, int no_compress)
{
    log_options o = {.shards = 4, .segment_bytes = seg, .io = io,
                     .no_compress = no_compress};
    log_t *log = NULL;
    if (log_open(dir, &o, &log))
        return NULL;
    return log;
}

/* A leader log in dir with appends to three conversations of shard sh in
 * term `term`, n rounds of a group each (so several batches). */
static void fill_leader(log_t *log, uint32_t sh, uint64_t term, int rounds)
{
    uint64_t c[3];
    convs_in(sh, c, 3);
    ASSERT_OK(log_set_term(log, sh, term));
    for (int r = 0; r < rounds; r++) {
        awaiter a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, {0}, {{0}}};
        for (int i = 0; i < 6; i++) {
            char body[64];
            snprintf(body, sizeof body, "r%d-i%d-%s", r, i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            rec_view m = msg(c[i % 3], body);
            pthread_mutex_lock(&a.mu);
            a.outstanding++;
            pthread_mutex_unlock(&a.mu);
            ASSERT_OK(log_append_in_term(log, &m, term, await_cb, &a));
        }
        if (r % 3 == 1) {
            rec_view cc = {.type = REC_CONV_CREATED, .conv_id = c[0], .sender_id = 3};
            pthread_mutex_lock(&a.mu);
            a.outstanding++;
            pthread_mutex_unlock(&a.mu);
            ASSERT_OK(log_append(log, &cc, await_cb, &a));
        }
        await_all(&a);
        for (int i = 0; i < a.n; i++)
            ASSERT_OK(a.status[i]);
    }
}

static void read_bytes(log_t *log, uint32_t sh, uint64_t from, bytes_buf *b)
{
    memset(b, 0, sizeof *b);
    ASSERT_OK(log_read_from(log, sh, from, 0, collect_cb, b));
}

/* ---- fenced appends and batch boundaries ---- */

TEST(replica_append_in_term_refused_after_set_term)
{
    /* A long max_wait_us holds the writer before it takes the group, so the
     * set_term below lands between the queueing and the writer's check. */
    log_options o = {.shards = 4, .max_wait_us = 300000};
    log_t *log;
    ASSERT_OK(log_open(test_dir(), &o, &log));
    uint64_t c;
    convs_in(0, &c, 1);
    ASSERT_OK(log_set_term(log, 0, 5));
    awaiter a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 3, 0, {0}, {{0}}};
    rec_view m = msg(c, "one");
    ASSERT_OK(log_append_in_term(log, &m, 5, await_cb, &a));
    ASSERT_OK(log_append_in_term(log, &m, 5, await_cb, &a));
    ASSERT_OK(log_set_term(log, 0, 6));
    ASSERT_EQ(log_append_in_term(log, &m, 5, await_cb, &a), CL_ESTALE); /* at once */
    ASSERT_OK(log_append_in_term(log, &m, 6, await_cb, &a));
    await_all(&a);
    ASSERT_EQ(a.n, 3);
    ASSERT_EQ(a.status[0], CL_ESTALE);
    ASSERT_EQ(a.status[1], CL_ESTALE);
    ASSERT_OK(a.status[2]);
    /* The refused ones took no offset and no msg_id. */
    ASSERT_U64_EQ(a.res[2].offset, 0);
    ASSERT_U64_EQ(a.res[2].msg_id, 1);
    ASSERT_U64_EQ(a.res[2].term, 6);
    ASSERT_EQ(log_set_term(log, 0, 4), CL_EINVAL); /* never decreases */
    uint64_t id;
    ASSERT_OK(th_append_msg(log, c, "two", &id));
    ASSERT_U64_EQ(id, 2);
    uint64_t next, durable;
    ASSERT_OK(log_shard_ends(log, 0, &next, &durable));
    ASSERT_U64_EQ(next, 2);
    ASSERT_U64_EQ(durable, 2);
    ASSERT_EQ(log_shard_ends(log, 4, &next, &durable), CL_EINVAL);
    ASSERT_OK(log_close(log));
}

typedef struct bound_ctx {
    pthread_mutex_t mu;
    int outstanding;
    uint64_t first[2000];
    uint32_t count[2000];
    uint64_t offset[2000];
    int n, bad;
} bound_ctx;

static void bound_cb(void *arg, int status, const log_append_result *res)
{
    bound_ctx *b = arg;
    pthread_mutex_lock(&b->mu);
    if (status || b->n >= 2000)
        b->bad++;
    else {
        b->first[b->n] = res->batch_first_offset;
        b->count[b->n] = res->batch_count;
        b->offset[b->n++] = res->offset;
    }
    b->outstanding--;
    pthread_mutex_unlock(&b->mu);
}

TEST(replica_append_results_carry_their_batch)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    uint64_t c;
    convs_in(1, &c, 1);
    bound_ctx b = {.mu = PTHREAD_MUTEX_INITIALIZER};
    static char big[2001]; /* 1500 of these take several 1 MiB groups */
    memset(big, 'b', 2000);
    for (int i = 0; i < 1500; i++) {
        rec_view m = msg(c, i % 2 ? big : "abc");
        pthread_mutex_lock(&b.mu);
        b.outstanding++;
        pthread_mutex_unlock(&b.mu);
        ASSERT_OK(log_append(log, &m, bound_cb, &b));
    }
    for (;;) {
        pthread_mutex_lock(&b.mu);
        int left = b.outstanding;
        pthread_mutex_unlock(&b.mu);
        if (!left)
            break;
        usleep(1000);
    }
    ASSERT_EQ(b.bad, 0);
    ASSERT_EQ(b.n, 1500);
    descs d = {0};
    ASSERT_OK(log_batch_each(log, 1, desc_cb, &d));
    /* Callbacks in offset order; each names the batch that holds it, and
     * the batches they name are exactly the stored ones. */
    uint32_t k = 0;
    for (int i = 0; i < b.n; i++) {
        ASSERT_U64_EQ(b.offset[i], (uint64_t)i);
        ASSERT(b.first[i] <= b.offset[i] && b.offset[i] < b.first[i] + b.count[i]);
        if (i == 0 || b.first[i] != b.first[i - 1]) {
            ASSERT(k < d.n);
            ASSERT_U64_EQ(d.first[k], b.first[i]);
            ASSERT_EQ(d.count[k], b.count[i]);
            ASSERT_U64_EQ(d.term[k], 1);
            k++;
        }
    }
    ASSERT_EQ(k, d.n);
    ASSERT_GT(d.n, 1);
    ASSERT_OK(log_close(log));
}

/* ---- received batches ---- */

TEST(replica_follower_from_leader_bytes_reads_back_identically)
{
    char ld[4096], fd[4096];
    snprintf(ld, sizeof ld, "%s/leader", test_dir());
    snprintf(fd, sizeof fd, "%s/follower", test_dir());
    log_t *L = open_opts(ld, NULL, 16 << 10, 0);
    log_t *F = open_opts(fd, NULL, 16 << 10, 0);
    ASSERT(L && F);
    const uint32_t sh = 2;
    fill_leader(L, sh, 3, 60);
    bytes_buf *b = malloc(sizeof *b);
    read_bytes(L, sh, 0, b);
    ASSERT_GT(b->n, 20);
    /* Received in uneven pieces, each at the previous end. */
    uint64_t at = 0;
    for (uint32_t i = 0; i < b->n;) {
        uint32_t j = i + 1 + i % 5;
        if (j > b->n)
            j = b->n;
        size_t from = b->pos[i], to = j < b->n ? b->pos[j] : b->len;
        uint64_t end;
        ASSERT_OK(th_write_sync(F, sh, at, b->p + from, to - from, &end));
        at = j < b->n ? b->firsts[j] : end;
        ASSERT_U64_EQ(end, at);
        i = j;
    }
    th_recs *rl = calloc(1, sizeof *rl), *rf = calloc(1, sizeof *rf);
    ASSERT_OK(log_read_from(L, sh, 0, 0, th_recs_cb, rl));
    ASSERT_OK(log_read_from(F, sh, 0, 0, th_recs_cb, rf));
    ASSERT_EQ(rl->n, rf->n);
    ASSERT_MEM_EQ(rl->v, rf->v, sizeof rl->v[0] * rl->n);
    uint64_t c[3];
    convs_in(sh, c, 3);
    for (int i = 0; i < 3; i++) {
        ASSERT_U64_EQ(log_conv_last_msg_id(F, c[i]), log_conv_last_msg_id(L, c[i]));
        ASSERT_EQ(th_count_conv(F, c[i]), (long)log_conv_last_msg_id(L, c[i]));
    }
    /* A local append continues the sequence after the received msg_ids. */
    uint64_t id;
    ASSERT_OK(th_append_msg(F, c[1], "local", &id));
    ASSERT_U64_EQ(id, log_conv_last_msg_id(L, c[1]) + 1);
    log_segment_info si;
    ASSERT_OK(log_segment_info_get(F, sh, 1, &si)); /* it rolled */
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    /* After a reopen: the same records and batch descriptors. */
    L = open_opts(ld, NULL, 16 << 10, 0);
    F = open_opts(fd, NULL, 16 << 10, 0);
    descs *dl = calloc(1, sizeof *dl), *df = calloc(1, sizeof *df);
    ASSERT_OK(log_batch_each(L, sh, desc_cb, dl));
    ASSERT_OK(log_batch_each(F, sh, desc_cb, df));
    ASSERT_EQ(df->n, dl->n + 1); /* plus the local append */
    ASSERT_MEM_EQ(df->first, dl->first, dl->n * sizeof dl->first[0]);
    ASSERT_MEM_EQ(df->count, dl->count, dl->n * sizeof dl->count[0]);
    ASSERT_MEM_EQ(df->term, dl->term, dl->n * sizeof dl->term[0]);
    ASSERT_U64_EQ(dl->term[0], 3);
    ASSERT_EQ(dl->n, b->n);
    memset(rf, 0, sizeof *rf);
    ASSERT_OK(log_read_from(F, sh, 0, 0, th_recs_cb, rf));
    ASSERT_EQ(rf->n, rl->n + 1);
    ASSERT_MEM_EQ(rl->v, rf->v, sizeof rl->v[0] * rl->n);
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    FILE *devnull = fopen("/dev/null", "w");
    ASSERT_EQ(rcv_verify(fd, devnull), 0);
    fclose(devnull);
    free(b->p);
    free(b);
    free(rl);
    free(rf);
    free(dl);
    free(df);
}

/* Flags of the batches in a raw segment file. */
static int read_flags(const char *path, uint16_t *flags, int max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    int k = 0;
    for (size_t pos = 0; pos < got && k < max;) {
        batch_header h;
        if (batch_verify(buf + pos, got - pos, &h))
            break;
        flags[k++] = h.flags;
        pos += h.length;
    }
    free(buf);
    return k;
}

TEST(replica_truncation_then_new_batches_and_noop)
{
    char ld[4096], fd[4096];
    snprintf(ld, sizeof ld, "%s/leader", test_dir());
    snprintf(fd, sizeof fd, "%s/follower", test_dir());
    log_t *L = open_opts(ld, NULL, 1 << 20, 0);
    log_t *F = open_opts(fd, NULL, 1 << 20, 0);
    ASSERT(L && F);
    const uint32_t sh = 3;
    fill_leader(L, sh, 2, 12);
    bytes_buf *b = malloc(sizeof *b);
    read_bytes(L, sh, 0, b);
    uint64_t end;
    ASSERT_OK(th_write_sync(F, sh, 0, b->p, b->len, &end));
    uint64_t full_end = end;
    /* Restamped: one write, so GROUP_END only on its last batch. */
    char seg[4096];
    snprintf(seg, sizeof seg, "%s/shard-%04u/%020u.log", fd, sh, 0);
    uint16_t flags[64];
    int nf = read_flags(seg, flags, 64);
    ASSERT_EQ(nf, (int)b->n);
    for (int i = 0; i < nf; i++)
        ASSERT_EQ(flags[i], i + 1 == nf ? BATCH_FLAG_GROUP_END : 0);

    /* A new leader (term 9) replaces the suffix from batch 5 with its no-op. */
    uint64_t cut = b->firsts[5];
    uint64_t c[3];
    convs_in(sh, c, 3);
    th_recs *r = calloc(1, sizeof *r);
    ASSERT_OK(log_read_from(F, sh, 0, 0, th_recs_cb, r));
    uint64_t last_before[3] = {0};
    for (uint32_t i = 0; i < r->n && r->v[i][0] < cut; i++)
        for (int k = 0; k < 3; k++)
            if (r->v[i][2] == REC_MESSAGE && r->v[i][3] == c[k])
                last_before[k] = r->v[i][4];
    uint8_t noop[LOG_NOOP_BATCH_BYTES], noop2[LOG_NOOP_BATCH_BYTES];
    ASSERT_EQ(log_noop_batch(noop, sh, cut, 9), LOG_NOOP_BATCH_BYTES);
    memset(noop2, 0xee, sizeof noop2);
    ASSERT_EQ(log_noop_batch(noop2, sh, cut, 9), LOG_NOOP_BATCH_BYTES);
    ASSERT_MEM_EQ(noop, noop2, LOG_NOOP_BATCH_BYTES); /* deterministic */
    batch_header h;
    ASSERT_OK(batch_verify_at(noop, sizeof noop, sh, cut, &h));
    ASSERT_EQ(h.flags, BATCH_FLAG_GROUP_END);
    ASSERT_U64_EQ(h.term, 9);
    ASSERT_U64_EQ(h.ts_ms, 0);
    log_shard_info before;
    ASSERT_OK(log_shard_info_get(F, sh, &before));
    ASSERT_OK(th_write_sync(F, sh, cut, noop, sizeof noop, &end));
    ASSERT_U64_EQ(end, cut + 1);
    ASSERT(end < full_end);
    for (int k = 0; k < 3; k++)
        ASSERT_U64_EQ(log_conv_last_msg_id(F, c[k]), last_before[k]);
    log_shard_info after;
    ASSERT_OK(log_shard_info_get(F, sh, &after));
    ASSERT_U64_EQ(after.records, cut + 1);
    ASSERT_U64_EQ(after.term, 9); /* raised to the batch's term */
    ASSERT_U64_EQ(after.messages,
                  last_before[0] + last_before[1] + last_before[2]); /* no-op not a message */
    /* An older-term leader's append is refused now; local appends continue
     * each conversation after the cut. */
    rec_view m = msg(c[0], "stale");
    ASSERT_EQ(log_append_in_term(F, &m, 2, NULL, NULL), CL_ESTALE);
    uint64_t id;
    ASSERT_OK(th_append_msg(F, c[0], "after", &id));
    ASSERT_U64_EQ(id, last_before[0] + 1);
    /* The no-op is read back as a record of no conversation. */
    memset(r, 0, sizeof *r);
    ASSERT_OK(log_read_from(F, sh, cut, 0, th_recs_cb, r));
    ASSERT_EQ(r->n, 2);
    ASSERT_U64_EQ(r->v[0][0], cut);
    ASSERT_U64_EQ(r->v[0][1], 9);
    ASSERT_U64_EQ(r->v[0][2], REC_NOOP);
    ASSERT_U64_EQ(r->v[0][3], 0);
    ASSERT_U64_EQ(r->v[1][1], 9);
    ASSERT_U64_EQ(r->v[1][4], last_before[0] + 1);
    /* Noops cannot be appended: they belong to no shard. */
    rec_view n = {.type = REC_NOOP};
    ASSERT_EQ(log_append(F, &n, NULL, NULL), CL_EINVAL);
    /* A cut-only write (len 0) back to the no-op's end. */
    ASSERT_OK(th_write_sync(F, sh, cut + 1, NULL, 0, &end));
    ASSERT_U64_EQ(end, cut + 1);
    ASSERT_U64_EQ(log_conv_last_msg_id(F, c[0]), last_before[0]);
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    FILE *devnull = fopen("/dev/null", "w");
    ASSERT_EQ(rcv_verify(fd, devnull), 0);
    fclose(devnull);
    F = open_opts(fd, NULL, 1 << 20, 0);
    descs *d = calloc(1, sizeof *d);
    ASSERT_OK(log_batch_each(F, sh, desc_cb, d));
    ASSERT_EQ(d->n, 6);
    ASSERT_U64_EQ(d->first[5], cut);
    ASSERT_EQ(d->count[5], 1);
    ASSERT_U64_EQ(d->term[5], 9);
    ASSERT_U64_EQ(d->term[4], 2);
    ASSERT_OK(log_close(F));
    free(d);
    free(r);
    free(b->p);
    free(b);
}

static int wait_compressed(log_t *log, uint32_t sh, uint32_t seg)
{
    for (int i = 0; i < 2000; i++) {
        log_segment_info si;
        if (log_segment_info_get(log, sh, seg, &si) == 0 && si.compressed)
            return 0;
        usleep(2000);
    }
    return -1;
}

TEST(replica_truncation_across_segments_into_compressed_and_raw)
{
    for (int nc = 0; nc < 2; nc++) {
        char ld[4096], fd[4096];
        snprintf(ld, sizeof ld, "%s/leader%d", test_dir(), nc);
        snprintf(fd, sizeof fd, "%s/follower%d", test_dir(), nc);
        log_t *L = open_opts(ld, NULL, 16 << 10, 0);
        log_t *F = open_opts(fd, NULL, 16 << 10, nc);
        ASSERT(L && F);
        const uint32_t sh = 1;
        fill_leader(L, sh, 4, 80);
        bytes_buf *b = malloc(sizeof *b);
        read_bytes(L, sh, 0, b);
        for (uint32_t i = 0; i < b->n; i++) {
            size_t to = i + 1 < b->n ? b->pos[i + 1] : b->len;
            ASSERT_OK(th_write_sync(F, sh, b->firsts[i], b->p + b->pos[i], to - b->pos[i], NULL));
        }
        log_segment_info s0, s1;
        ASSERT_OK(log_segment_info_get(F, sh, 0, &s0));
        ASSERT_OK(log_segment_info_get(F, sh, 2, &s1)); /* three or more */
        if (!nc)
            ASSERT_OK(wait_compressed(F, sh, 0));
        /* Cut at a batch in the middle of segment 0. */
        uint32_t k = 0;
        while (b->firsts[k + 1] < s0.end_offset / 2)
            k++;
        uint64_t cut = b->firsts[k];
        ASSERT(cut > s0.base_offset && cut < s0.end_offset);
        /* Not at a batch boundary: refused, nothing changes. */
        uint8_t noop[LOG_NOOP_BATCH_BYTES];
        log_noop_batch(noop, sh, cut + 1, 7);
        if (b->firsts[k + 1] != cut + 1)
            ASSERT_EQ(th_write_sync(F, sh, cut + 1, noop, sizeof noop, NULL), CL_EINVAL);
        log_noop_batch(noop, sh, cut, 7);
        uint64_t end;
        ASSERT_OK(th_write_sync(F, sh, cut, noop, sizeof noop, &end));
        ASSERT_U64_EQ(end, cut + 1);
        log_segment_info si;
        ASSERT_OK(log_segment_info_get(F, sh, 0, &si));
        ASSERT_EQ(si.compressed, 0);
        ASSERT_EQ(si.sealed, 0); /* active again */
        ASSERT_U64_EQ(si.end_offset, cut + 1);
        ASSERT_EQ(log_segment_info_get(F, sh, 1, &si), CL_ENOTFOUND);
        /* The rest reads back as the leader wrote it. */
        th_recs *rl = calloc(1, sizeof *rl), *rf = calloc(1, sizeof *rf);
        ASSERT_OK(log_read_from(L, sh, 0, 0, th_recs_cb, rl));
        ASSERT_OK(log_read_from(F, sh, 0, 0, th_recs_cb, rf));
        ASSERT_EQ(rf->n, cut + 1);
        ASSERT_MEM_EQ(rl->v, rf->v, sizeof rl->v[0] * cut);
        /* The leader's suffix again, after the no-op is cut off again. */
        ASSERT_OK(log_truncate_from(F, sh, cut));
        ASSERT_OK(th_write_sync(F, sh, cut, b->p + b->pos[k], b->len - b->pos[k], &end));
        ASSERT_U64_EQ(end, rl->n);
        ASSERT_OK(log_close(F));
        F = open_opts(fd, NULL, 16 << 10, nc);
        memset(rf, 0, sizeof *rf);
        ASSERT_OK(log_read_from(F, sh, 0, 0, th_recs_cb, rf));
        ASSERT_EQ(rf->n, rl->n);
        ASSERT_MEM_EQ(rl->v, rf->v, sizeof rl->v[0] * rl->n);
        /* Below the oldest segment is refused (there is none below 0, so a
         * cut past the end is the other refusal). */
        log_noop_batch(noop, sh, rl->n + 3, 7);
        ASSERT_EQ(th_write_sync(F, sh, rl->n + 3, noop, sizeof noop, NULL), CL_EINVAL);
        ASSERT_OK(log_close(F));
        ASSERT_OK(log_close(L));
        FILE *devnull = fopen("/dev/null", "w");
        ASSERT_EQ(rcv_verify(fd, devnull), 0);
        fclose(devnull);
        free(rl);
        free(rf);
        free(b->p);
        free(b);
    }
}

TEST(replica_write_batches_refuses_bad_bytes_without_callback)
{
    char ld[4096], fd[4096];
    snprintf(ld, sizeof ld, "%s/leader", test_dir());
    snprintf(fd, sizeof fd, "%s/follower", test_dir());
    log_t *L = open_opts(ld, NULL, 0, 0);
    log_t *F = open_opts(fd, NULL, 0, 0);
    ASSERT(L && F);
    fill_leader(L, 0, 1, 3);
    bytes_buf *b = malloc(sizeof *b);
    read_bytes(L, 0, 0, b);
    int called = 0;
    th_wait w = TH_WAIT_INIT;
    /* Wrong shard, wrong offset, a flipped bit, a cut-off batch, too long. */
    ASSERT_EQ(log_write_batches(F, 1, 0, b->p, b->len, th_wait_cb, &w), CL_EMISPLACED);
    ASSERT_EQ(log_write_batches(F, 0, 1, b->p, b->len, th_wait_cb, &w), CL_EMISPLACED);
    b->p[60] ^= 4;
    ASSERT_EQ(log_write_batches(F, 0, 0, b->p, b->len, th_wait_cb, &w), CL_ECORRUPT);
    b->p[60] ^= 4;
    ASSERT_EQ(log_write_batches(F, 0, 0, b->p, b->len - 1, th_wait_cb, &w), CL_ETRUNC);
    ASSERT_EQ(log_write_batches(F, 0, 0, b->p, (size_t)LOG_MAX_RECEIVE_BYTES + 1,
                                th_wait_cb, &w), CL_ETOOBIG);
    ASSERT_EQ(log_write_batches(F, 9, 0, b->p, b->len, th_wait_cb, &w), CL_EINVAL);
    /* A valid batch whose record's conversation lives in another shard. */
    uint64_t other;
    convs_in(2, &other, 1);
    rec_view r = msg(other, "misplaced");
    uint8_t buf[256];
    batch_header h = {.shard_id = 0, .first_offset = 0, .term = 1};
    size_t n = batch_encode(buf, &h, &r, 1);
    ASSERT_EQ(log_write_batches(F, 0, 0, buf, n, th_wait_cb, &w), CL_EMISPLACED);
    /* A no-op with data in it. */
    rec_view bad = {.type = REC_NOOP, .conv_id = 5};
    n = batch_encode(buf, &h, &bad, 1);
    ASSERT_EQ(log_write_batches(F, 0, 0, buf, n, th_wait_cb, &w), CL_ECORRUPT);
    /* Terms going backwards. */
    uint8_t two[2 * LOG_NOOP_BATCH_BYTES];
    log_noop_batch(two, 0, 0, 5);
    log_noop_batch(two + LOG_NOOP_BATCH_BYTES, 0, 1, 4);
    ASSERT_EQ(log_write_batches(F, 0, 0, two, sizeof two, th_wait_cb, &w), CL_EINVAL);
    called = w.done;
    ASSERT_EQ(called, 0);
    /* A message that does not continue its conversation: refused by the
     * writer, nothing written. */
    uint64_t c;
    convs_in(0, &c, 1);
    rec_view skip = msg(c, "msg 7");
    skip.msg_id = 7;
    n = batch_encode(buf, &h, &skip, 1);
    ASSERT_EQ(th_write_sync(F, 0, 0, buf, n, NULL), CL_EINVAL);
    uint64_t next;
    ASSERT_OK(log_shard_ends(F, 0, &next, NULL));
    ASSERT_U64_EQ(next, 0);
    /* A good message then a repeated one: refused whole, and the sequence
     * is where it was (msg_id 1 is still free). */
    rec_view pair[2] = {msg(c, "m1"), msg(c, "m1 again")};
    pair[0].msg_id = pair[1].msg_id = 1;
    n = batch_encode(buf, &h, pair, 2);
    ASSERT_EQ(th_write_sync(F, 0, 0, buf, n, NULL), CL_EINVAL);
    ASSERT_OK(th_write_sync(F, 0, 0, b->p, b->len, NULL));
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    free(b->p);
    free(b);
}

TEST(replica_torn_tail_of_a_received_multi_batch_write_cuts_only_it)
{
    char ld[4096], fd[4096];
    snprintf(ld, sizeof ld, "%s/leader", test_dir());
    snprintf(fd, sizeof fd, "%s/follower", test_dir());
    log_t *L = open_opts(ld, NULL, 1 << 20, 0);
    log_t *F = open_opts(fd, NULL, 1 << 20, 0);
    ASSERT(L && F);
    const uint32_t sh = 0;
    fill_leader(L, sh, 2, 10); /* each round its own batch with GROUP_END */
    bytes_buf *b = malloc(sizeof *b);
    read_bytes(L, sh, 0, b);
    ASSERT_GE(b->n, 10);
    uint64_t end;
    ASSERT_OK(th_write_sync(F, sh, 0, b->p, b->pos[5], &end));
    uint64_t first_end = end;
    ASSERT_OK(th_write_sync(F, sh, end, b->p + b->pos[5], b->len - b->pos[5], &end));
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    /* Damage the first batch of the second write: as if that write tore. Had
     * the leader's flags (GROUP_END on every batch) been kept, the write's
     * later batches would make this look like synced damage. */
    char seg[4096];
    snprintf(seg, sizeof seg, "%s/shard-%04u/%020u.log", fd, sh, 0);
    FILE *f = fopen(seg, "r+b");
    ASSERT(f);
    fseek(f, (long)b->pos[5] + 70, SEEK_SET);
    fputc(0x5a ^ 0xff, f);
    fclose(f);
    F = open_opts(fd, NULL, 1 << 20, 0);
    ASSERT(F);
    log_shard_info si;
    ASSERT_OK(log_shard_info_get(F, sh, &si));
    ASSERT_EQ(si.damaged_ranges, 0);
    ASSERT_EQ(si.failed, 0);
    ASSERT_U64_EQ(si.next_offset, first_end);
    ASSERT_OK(log_close(F));
    free(b->p);
    free(b);
}

/* ---- power loss ---- */

typedef struct pl_ctx {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    uint64_t acked_end; /* highest end reported durable */
} pl_ctx;

static void pl_cb(void *arg, int status, uint64_t end)
{
    pl_ctx *c = arg;
    pthread_mutex_lock(&c->mu);
    if (status == 0 && end > c->acked_end)
        c->acked_end = end;
    c->outstanding--;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

TEST(replica_power_loss_keeps_every_acknowledged_received_batch)
{
    char ld[4096];
    snprintf(ld, sizeof ld, "%s/leader", test_dir());
    log_t *L = open_opts(ld, NULL, 16 << 10, 0);
    ASSERT(L);
    const uint32_t sh = 2;
    fill_leader(L, sh, 6, 60);
    bytes_buf *b = malloc(sizeof *b);
    read_bytes(L, sh, 0, b);
    th_recs *rl = calloc(1, sizeof *rl), *rf = calloc(1, sizeof *rf);
    ASSERT_OK(log_read_from(L, sh, 0, 0, th_recs_cb, rl));
    ASSERT_OK(log_close(L));
    uint64_t seed = test_seed();
    int some_acked = 0, some_lost = 0;
    for (int round = 0; round < 8; round++) {
        char fd[4096];
        snprintf(fd, sizeof fd, "%s/f%d", test_dir(), round);
        io_vfs *io = iofault_new(seed + (uint64_t)round);
        log_t *F = open_opts(fd, io, 16 << 10, 0);
        ASSERT(F);
        pl_ctx c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
        /* Queue pieces back to back (one with a cut and a re-send), crash
         * part-way through. */
        uint32_t crash_at = 3 + (uint32_t)((seed + round * 7) % (b->n - 4));
        for (uint32_t i = 0; i < b->n; i++) {
            size_t to = i + 1 < b->n ? b->pos[i + 1] : b->len;
            uint32_t from = i;
            pthread_mutex_lock(&c.mu);
            if (i == b->n / 2 && i >= 2) {
                /* Re-send two batches: a cut at a boundary. The cut removes
                 * what was acknowledged beyond it on purpose (Raft cuts only
                 * what is not committed), so only the re-sent records count
                 * as acknowledged there again, once their callback says so:
                 * the earlier callbacks must have come first. */
                from = i - 2;
                while (c.outstanding)
                    pthread_cond_wait(&c.cv, &c.mu);
                if (c.acked_end > b->firsts[from])
                    c.acked_end = b->firsts[from];
            }
            c.outstanding++;
            pthread_mutex_unlock(&c.mu);
            int rc = log_write_batches(F, sh, b->firsts[from], b->p + b->pos[from],
                                       to - b->pos[from], pl_cb, &c);
            if (rc) {
                pthread_mutex_lock(&c.mu);
                c.outstanding--;
                pthread_mutex_unlock(&c.mu);
            }
            if (i == crash_at / 2) {
                /* Let the first ones become durable. */
                pthread_mutex_lock(&c.mu);
                while (c.outstanding)
                    pthread_cond_wait(&c.cv, &c.mu);
                pthread_mutex_unlock(&c.mu);
            }
            if (i == crash_at)
                iofault_crash(io, IOFAULT_CRASH_DROP + round % 4);
        }
        pthread_mutex_lock(&c.mu);
        while (c.outstanding)
            pthread_cond_wait(&c.cv, &c.mu);
        uint64_t acked = c.acked_end;
        pthread_mutex_unlock(&c.mu);
        log_close(F);
        iofault_free(io);
        F = open_opts(fd, NULL, 16 << 10, 0);
        ASSERT(F);
        memset(rf, 0, sizeof *rf);
        ASSERT_OK(log_read_from(F, sh, 0, 0, th_recs_cb, rf));
        if (rf->n < acked)
            FAIL("round %d: acknowledged up to %llu, %u records after recovery",
                 round, (unsigned long long)acked, rf->n);
        ASSERT(rf->n <= rl->n);
        ASSERT_MEM_EQ(rl->v, rf->v, sizeof rl->v[0] * rf->n);
        some_acked |= acked > 0;
        some_lost |= rf->n < rl->n;
        log_shard_info si;
        ASSERT_OK(log_shard_info_get(F, sh, &si));
        ASSERT_EQ(si.damaged_ranges, 0);
        ASSERT_OK(log_close(F));
        FILE *devnull = fopen("/dev/null", "w");
        ASSERT_EQ(rcv_verify(fd, devnull), 0);
        fclose(devnull);
    }
    ASSERT(some_acked && some_lost); /* the crashes fell mid-way */
    free(rl);
    free(rf);
    free(b->p);
    free(b);
}
