/* Segment shipping (engine/segship.c, log.h): a follower installs a
 * leader's sealed segments (log_segment_files_get → log_segment_install),
 * then the tail with log_write_batches; bad files are refused with nothing
 * written; a power loss at any point of an install leaves no segment or the
 * whole one. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "errors.h"
#include "helpers.h"
#include "io_fault.h"
#include "log.h"
#include "test.h"
#include "verify.h"

#define SH 1
#define NSHARDS 4
#define SEG_BYTES (16u << 10)

/* ---- helpers ---- */

/* log_segment_install and wait: the call's error, else the callback's. */
static int install_sync(log_t *log, uint32_t sh, const log_segment_files *f,
                        uint64_t *end)
{
    th_wait w = TH_WAIT_INIT;
    int rc = log_segment_install(log, sh, f, th_wait_cb, &w);
    if (rc)
        return rc;
    return th_wait_for(&w, end);
}

static void quiet(void *arg, int level, const char *msg) {}

static log_t *open_opts(const char *dir, io_vfs *io, uint64_t seg)
{
    log_options o = {.shards = NSHARDS, .segment_bytes = seg, .io = io,
                     .log_fn = quiet};
    log_t *log = NULL;
    if (log_open(dir, &o, &log))
        return NULL;
    return log;
}

static void convs_in(uint32_t sh, uint64_t *out, int n)
{
    for (uint64_t c = 1; n > 0; c++)
        if (log_shard_for(c, NSHARDS) == sh) {
            *out++ = c;
            n--;
        }
}

typedef struct awaiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding, failed;
} awaiter;

static void await_cb(void *arg, int status, const log_append_result *res)
{
    awaiter *a = arg;
    pthread_mutex_lock(&a->mu);
    if (status)
        a->failed = status;
    a->outstanding--;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

/* Appends to three conversations of shard sh (and a REC_CONV_CREATED now
 * and then) in `term`, `rounds` groups. */
static void fill(log_t *log, uint32_t sh, uint64_t term, int rounds)
{
    uint64_t c[3];
    convs_in(sh, c, 3);
    ASSERT_OK(log_set_term(log, sh, term));
    for (int r = 0; r < rounds; r++) {
        awaiter a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
        for (int i = 0; i < 7; i++) {
            char body[96];
            snprintf(body, sizeof body, "t%llu-r%d-i%d-%s", (unsigned long long)term,
                     r, i, "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy");
            rec_view m = {.type = i == 6 ? REC_CONV_CREATED : REC_MESSAGE,
                          .conv_id = c[i % 3], .sender_id = 9,
                          .body = (const uint8_t *)body,
                          .body_len = (uint32_t)strlen(body)};
            pthread_mutex_lock(&a.mu);
            a.outstanding++;
            pthread_mutex_unlock(&a.mu);
            ASSERT_OK(log_append_in_term(log, &m, term, await_cb, &a));
        }
        pthread_mutex_lock(&a.mu);
        while (a.outstanding)
            pthread_cond_wait(&a.cv, &a.mu);
        pthread_mutex_unlock(&a.mu);
        ASSERT_OK(a.failed);
    }
}

/* Wait until every segment but the active one is compressed; returns the
 * number of segments. */
static uint32_t wait_sealed(log_t *log, uint32_t sh)
{
    for (int tries = 0; tries < 5000; tries++) {
        uint32_t n = 0, ok = 1;
        log_segment_info si;
        while (log_segment_info_get(log, sh, n, &si) == 0) {
            n++;
            ok &= si.compressed;
        }
        log_segment_info_get(log, sh, n - 1, &si);
        if (!si.compressed && ok == 0) {
            /* the active one is never compressed: count the others */
            uint32_t good = 1;
            for (uint32_t i = 0; i + 1 < n; i++) {
                log_segment_info_get(log, sh, i, &si);
                good &= si.compressed;
            }
            if (good)
                return n;
        }
        usleep(2000);
    }
    FAIL("segments were not compressed in time");
}

static th_recs *read_recs(log_t *log, uint32_t sh)
{
    th_recs *r = calloc(1, sizeof *r);
    ASSERT(r);
    ASSERT_OK(log_read_from(log, sh, 0, 0, th_recs_cb, r));
    return r;
}

typedef struct descs {
    uint64_t v[4096][3];
    uint32_t n;
} descs;

static void desc_cb(void *arg, uint64_t first, uint32_t count, uint64_t term)
{
    descs *d = arg;
    if (d->n < 4096) {
        d->v[d->n][0] = first;
        d->v[d->n][1] = count;
        d->v[d->n++][2] = term;
    }
}

/* Every batch from offset `from` on, as stored. */
typedef struct bytes_buf {
    uint8_t *p;
    size_t len, cap;
} bytes_buf;

static int collect_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                      const log_entry *e, size_t n)
{
    bytes_buf *b = arg;
    if (b->len + h->length > b->cap) {
        b->cap = (b->len + h->length) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, bytes, h->length);
    b->len += h->length;
    return 0;
}

static int verify_dir(const char *dir)
{
    FILE *devnull = fopen("/dev/null", "w");
    int rc = rcv_verify(dir, devnull);
    fclose(devnull);
    return rc;
}

/* Files named *suffix in the shard directory of dir. */
static int count_files(const char *dir, uint32_t sh, const char *suffix)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "ls %s/shard-%04u | grep -c -- '^[0-9]*\\%s$'", dir,
             sh, suffix);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

/* A leader in <test_dir>/leader with several sealed segments in shard SH,
 * in terms 3 then 5. Returns its segment count (the last one active). */
static log_t *make_leader(uint32_t *nsegs)
{
    log_t *L = open_opts(test_path(0, "leader"), NULL, SEG_BYTES);
    ASSERT(L);
    fill(L, SH, 3, 40);
    fill(L, SH, 5, 40);
    *nsegs = wait_sealed(L, SH);
    ASSERT_GE(*nsegs, 4);
    return L;
}

static void assert_same(log_t *L, log_t *F)
{
    th_recs *rl = read_recs(L, SH), *rf = read_recs(F, SH);
    ASSERT_EQ(rl->n, rf->n);
    ASSERT_MEM_EQ(rl->v, rf->v, sizeof rl->v[0] * rl->n);
    free(rl);
    free(rf);
    descs *dl = calloc(1, sizeof *dl), *df = calloc(1, sizeof *df);
    ASSERT_OK(log_batch_each(L, SH, desc_cb, dl));
    ASSERT_OK(log_batch_each(F, SH, desc_cb, df));
    ASSERT_EQ(dl->n, df->n);
    ASSERT_MEM_EQ(dl->v, df->v, sizeof dl->v[0] * dl->n);
    free(dl);
    free(df);
    uint64_t c[3];
    convs_in(SH, c, 3);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(log_conv_last_msg_id(L, c[i]), log_conv_last_msg_id(F, c[i]));
        ASSERT_EQ(th_count_conv(F, c[i]), (long)log_conv_last_msg_id(L, c[i]));
    }
    log_shard_info il, inf;
    ASSERT_OK(log_shard_info_get(L, SH, &il));
    ASSERT_OK(log_shard_info_get(F, SH, &inf));
    ASSERT_EQ(il.records, inf.records);
    ASSERT_EQ(il.messages, inf.messages);
    ASSERT_EQ(il.next_offset, inf.next_offset);
    ASSERT_EQ(inf.damaged_ranges, 0);
}

/* Whether <base><suffix> exists in the shard directory of dir. */
static int has_file(const char *dir, uint32_t sh, uint64_t base, const char *suffix)
{
    char p[8192];
    snprintf(p, sizeof p, "%s/shard-%04u/%020llu%s", dir, sh,
             (unsigned long long)base, suffix);
    return access(p, F_OK) == 0;
}

/* ---- tests ---- */

TEST(segship_follower_installs_segments_then_tail_reads_back_identically)
{
    uint32_t nsegs;
    log_t *L = make_leader(&nsegs);
    const char *fd = test_path(1, "follower");
    log_t *F = open_opts(fd, NULL, SEG_BYTES);
    ASSERT(F);
    uint64_t end = 0;
    for (uint32_t i = 0; i + 1 < nsegs; i++) {
        log_segment_files f;
        ASSERT_OK(log_segment_files_get(L, SH, i, &f));
        ASSERT_EQ(f.base, end);
        ASSERT(f.end > f.base && f.zlog_len > 0 && f.idx_len > 0);
        ASSERT(f.last_term == 3 || f.last_term == 5);
        uint64_t got = 0;
        ASSERT_OK(install_sync(F, SH, &f, &got));
        ASSERT_EQ(got, f.end);
        end = f.end;
        uint64_t next, durable;
        ASSERT_OK(log_shard_ends(F, SH, &next, &durable));
        ASSERT_EQ(next, end);
        ASSERT_EQ(durable, end);
        log_shard_info si;
        ASSERT_OK(log_shard_info_get(F, SH, &si));
        ASSERT_EQ(si.term, f.last_term);
        log_segment_info sg;
        ASSERT_OK(log_segment_info_get(F, SH, i, &sg));
        ASSERT(sg.sealed && sg.compressed);
        ASSERT_EQ(sg.base_offset, f.base);
        ASSERT_EQ(sg.end_offset, f.end);
        log_segment_files_free(&f);
    }
    /* The active segment and segments past the end are not shipped. */
    log_segment_files f;
    ASSERT_EQ(log_segment_files_get(L, SH, nsegs - 1, &f), CL_EINVAL);
    ASSERT_EQ(log_segment_files_get(L, SH, nsegs, &f), CL_ENOTFOUND);
    ASSERT(f.zlog == NULL && f.idx == NULL);
    /* The tail, batch bytes as usual. */
    bytes_buf b = {0};
    ASSERT_OK(log_read_from(L, SH, end, 0, collect_cb, &b));
    ASSERT_GT(b.len, 0);
    ASSERT_OK(th_write_sync(F, SH, end, b.p, b.len, NULL));
    free(b.p);
    assert_same(L, F);

    /* Local appends continue each conversation on both. */
    uint64_t c[3];
    convs_in(SH, c, 3);
    uint64_t last = log_conv_last_msg_id(L, c[1]), id = 0;
    ASSERT_OK(log_set_term(F, SH, 7));
    ASSERT_OK(th_append_msg(F, c[1], "after install", &id));
    ASSERT_EQ(id, last + 1);
    ASSERT_OK(th_append_msg(L, c[1], "after install", &id));
    ASSERT_EQ(id, last + 1);

    ASSERT_OK(log_close(F));
    ASSERT_EQ(verify_dir(fd), 0);
    F = open_opts(fd, NULL, SEG_BYTES);
    ASSERT(F);
    ASSERT_EQ(log_conv_last_msg_id(F, c[1]), last + 1);
    ASSERT_EQ(th_count_conv(F, c[1]), (long)last + 1);
    log_shard_info si;
    ASSERT_OK(log_shard_info_get(F, SH, &si));
    ASSERT_EQ(si.damaged_ranges, 0);
    ASSERT_GE(si.term, 5);
    /* The follower's installed segments ship onwards byte for byte. */
    for (uint32_t i = 0; i + 1 < nsegs; i++) {
        log_segment_files a, bb;
        ASSERT_OK(log_segment_files_get(L, SH, i, &a));
        ASSERT_OK(log_segment_files_get(F, SH, i, &bb));
        ASSERT_EQ(a.zlog_len, bb.zlog_len);
        ASSERT_MEM_EQ(a.zlog, bb.zlog, a.zlog_len);
        ASSERT_EQ(a.idx_len, bb.idx_len);
        ASSERT_MEM_EQ(a.idx, bb.idx, a.idx_len);
        log_segment_files_free(&a);
        log_segment_files_free(&bb);
    }
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    ASSERT_EQ(verify_dir(fd), 0);
}

TEST(segship_install_refused_unless_log_ends_at_base)
{
    uint32_t nsegs;
    log_t *L = make_leader(&nsegs);
    const char *fd = test_path(1, "follower");
    log_t *F = open_opts(fd, NULL, SEG_BYTES);
    ASSERT(F);
    log_segment_files f0, f1, f2;
    ASSERT_OK(log_segment_files_get(L, SH, 0, &f0));
    ASSERT_OK(log_segment_files_get(L, SH, 1, &f1));
    ASSERT_OK(log_segment_files_get(L, SH, 2, &f2));
    /* An empty log ends at 0, not at f1.base. */
    ASSERT_EQ(install_sync(F, SH, &f1, NULL), CL_EINVAL);
    ASSERT_EQ(count_files(fd, SH, ".zlog"), 0);
    ASSERT_EQ(count_files(fd, SH, ".idx"), 0);
    ASSERT_OK(install_sync(F, SH, &f0, NULL));
    /* Twice, or skipping one: refused. */
    ASSERT_EQ(install_sync(F, SH, &f0, NULL), CL_EINVAL);
    ASSERT_EQ(install_sync(F, SH, &f2, NULL), CL_EINVAL);
    /* Bad arguments: refused at once. */
    log_segment_files bad = f1;
    bad.last_term = f1.last_term + 1;
    ASSERT_EQ(log_segment_install(F, SH, &bad, th_wait_cb, NULL), CL_EINVAL);
    bad = f1;
    bad.end = bad.base;
    ASSERT_EQ(log_segment_install(F, SH, &bad, th_wait_cb, NULL), CL_EINVAL);
    ASSERT_EQ(log_segment_install(F, NSHARDS, &f1, th_wait_cb, NULL), CL_EINVAL);
    ASSERT_EQ(log_segment_install(F, SH, NULL, th_wait_cb, NULL), CL_EINVAL);
    ASSERT_OK(install_sync(F, SH, &f1, NULL));
    ASSERT_OK(install_sync(F, SH, &f2, NULL));
    ASSERT_EQ(count_files(fd, SH, ".zlog"), 3);
    ASSERT_EQ(count_files(fd, SH, ".idx"), 3);
    ASSERT_EQ(count_files(fd, SH, ".log"), 1);
    log_segment_files_free(&f0);
    log_segment_files_free(&f1);
    log_segment_files_free(&f2);
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    ASSERT_EQ(verify_dir(fd), 0);
}

/* Rewrite a sidecar's payload with fn applied to its plain entries,
 * recompressed and re-checksummed: a well-formed file that lies. */
static void forge_sidecar(log_segment_files *f, void (*fn)(uint8_t *plain, size_t n))
{
    uint64_t clen;
    memcpy(&clen, f->idx + 48, 8);
    uint64_t cnt;
    memcpy(&cnt, f->idx + 40, 8);
    size_t plen = (size_t)cnt * 24;
    uint8_t *plain = malloc(plen);
    ASSERT_EQ(ZSTD_decompress(plain, plen, f->idx + 56, clen), plen);
    fn(plain, cnt);
    size_t bound = ZSTD_compressBound(plen);
    uint8_t *nf = malloc(56 + bound + 8);
    memcpy(nf, f->idx, 56);
    size_t nc = ZSTD_compress(nf + 56, bound, plain, plen, 3);
    ASSERT(!ZSTD_isError(nc));
    uint64_t v = nc;
    memcpy(nf + 48, &v, 8);
    v = XXH3_64bits(nf, 56 + nc);
    memcpy(nf + 56 + nc, &v, 8);
    free(f->idx);
    free(plain);
    f->idx = nf;
    f->idx_len = 56 + nc + 8;
}

static void bump_msg_id(uint8_t *plain, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (plain[i * 24 + 22] == REC_MESSAGE) {
            plain[i * 24 + 8]++;
            return;
        }
}

static void shift_pos(uint8_t *plain, size_t n) { plain[(n - 1) * 24 + 16] ^= 1; }

static log_segment_files dup_files(const log_segment_files *f)
{
    log_segment_files d = *f;
    d.zlog = malloc(f->zlog_len);
    d.idx = malloc(f->idx_len);
    memcpy(d.zlog, f->zlog, f->zlog_len);
    memcpy(d.idx, f->idx, f->idx_len);
    return d;
}

TEST(segship_bad_files_refused_with_nothing_written)
{
    uint32_t nsegs;
    log_t *L = make_leader(&nsegs);
    /* The same history in another shard: well-formed files of the wrong
     * shard. */
    fill(L, 2, 3, 60);
    wait_sealed(L, 2);
    const char *fd = test_path(1, "follower");
    log_t *F = open_opts(fd, NULL, SEG_BYTES);
    ASSERT(F);
    log_segment_files f, d, other;
    ASSERT_OK(log_segment_files_get(L, SH, 0, &f));
    ASSERT_OK(log_segment_files_get(L, 2, 0, &other));
    ASSERT_EQ(other.base, 0);

    /* A byte of a compressed block. */
    d = dup_files(&f);
    d.zlog[d.zlog_len - 5] ^= 0x40;
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_ECORRUPT);
    log_segment_files_free(&d);
    /* The block table. */
    d = dup_files(&f);
    d.zlog[60] ^= 1;
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_ECORRUPT);
    log_segment_files_free(&d);
    /* Truncated files. */
    d = dup_files(&f);
    d.zlog_len -= 1;
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_ECORRUPT);
    d.zlog_len += 1;
    d.idx_len -= 1;
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_ECORRUPT);
    log_segment_files_free(&d);
    /* A byte of the sidecar. */
    d = dup_files(&f);
    d.idx[70] ^= 0x10;
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_ECORRUPT);
    log_segment_files_free(&d);
    /* Well-formed sidecars that disagree with the batches. */
    d = dup_files(&f);
    forge_sidecar(&d, bump_msg_id);
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_ECORRUPT);
    log_segment_files_free(&d);
    d = dup_files(&f);
    forge_sidecar(&d, shift_pos);
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_ECORRUPT);
    log_segment_files_free(&d);
    /* Another shard's segment. */
    ASSERT_EQ(log_segment_install(F, SH, &other, th_wait_cb, NULL), CL_EMISPLACED);
    /* A wrong base or end for these files. */
    d = dup_files(&f);
    d.base += 1;
    d.end += 1;
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_EMISPLACED);
    d.base -= 1;
    ASSERT_EQ(log_segment_install(F, SH, &d, th_wait_cb, NULL), CL_EMISPLACED);
    log_segment_files_free(&d);

    /* Nothing was written: no files, no records. */
    ASSERT_EQ(count_files(fd, SH, ".zlog"), 0);
    ASSERT_EQ(count_files(fd, SH, ".idx"), 0);
    ASSERT_EQ(count_files(fd, SH, ".log"), 1);
    log_shard_info si;
    ASSERT_OK(log_shard_info_get(F, SH, &si));
    ASSERT_EQ(si.records, 0);
    ASSERT_EQ(si.segments, 1);
    /* The genuine files still go in. */
    ASSERT_OK(install_sync(F, SH, &f, NULL));
    log_segment_files_free(&f);
    log_segment_files_free(&other);
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    ASSERT_EQ(verify_dir(fd), 0);
}

TEST(segship_install_into_active_segment_with_records_refused)
{
    uint32_t nsegs;
    log_t *L = make_leader(&nsegs);
    log_segment_files f0, f1;
    ASSERT_OK(log_segment_files_get(L, SH, 0, &f0));
    ASSERT_OK(log_segment_files_get(L, SH, 1, &f1));
    /* The follower took segment 0's records as batches: its log ends at
     * f1.base, but in an active segment that holds them. */
    const char *fd = test_path(1, "follower");
    log_t *F = open_opts(fd, NULL, 1u << 20);
    ASSERT(F);
    bytes_buf b = {0};
    ASSERT_OK(log_read_from(L, SH, 0, 0, collect_cb, &b));
    /* Batches up to f0.end. */
    size_t pos = 0;
    uint64_t off = 0;
    while (off < f0.end) {
        batch_header h;
        ASSERT_OK(batch_peek_header(b.p + pos, &h));
        pos += h.length;
        off += h.record_count;
    }
    ASSERT_EQ(off, f0.end);
    ASSERT_OK(th_write_sync(F, SH, 0, b.p, pos, NULL));
    ASSERT_EQ(install_sync(F, SH, &f1, NULL), CL_EINVAL);
    ASSERT_EQ(count_files(fd, SH, ".zlog"), 0);
    ASSERT_EQ(count_files(fd, SH, ".idx"), 0);
    /* The shard goes on: the rest as batches. */
    ASSERT_OK(th_write_sync(F, SH, f0.end, b.p + pos, b.len - pos, NULL));
    assert_same(L, F);
    free(b.p);
    log_segment_files_free(&f0);
    log_segment_files_free(&f1);
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    ASSERT_EQ(verify_dir(fd), 0);
}

/* A follower log ending at `at` in an empty active segment, its records
 * [0, at) hand-made: messages of conversation conv (msg_ids 1..at) in
 * `term`. Made by writing them, then one large batch (which rolls the
 * segment), then cutting that batch off again. */
static log_t *follower_ending_at(const char *dir, uint64_t at, uint64_t conv,
                                 uint64_t term)
{
    log_t *F = open_opts(dir, NULL, SEG_BYTES);
    ASSERT(F);
    size_t cap = (size_t)at * (RECORD_HEADER_SIZE + 8) + (at / 8 + 1) * BATCH_OVERHEAD;
    uint8_t *buf = malloc(cap);
    size_t len = 0;
    for (uint64_t off = 0; off < at;) {
        rec_view r[8];
        uint32_t n = 0;
        for (; n < 8 && off + n < at; n++)
            r[n] = (rec_view){.type = REC_MESSAGE, .conv_id = conv,
                              .msg_id = off + n + 1, .sender_id = 4,
                              .ts_ms = 1000, .body = (const uint8_t *)"abcdefgh",
                              .body_len = 8};
        batch_header h = {.shard_id = SH, .first_offset = off, .term = term,
                          .ts_ms = 1000};
        len += batch_encode(buf + len, &h, r, n);
        off += n;
    }
    ASSERT(len < SEG_BYTES);
    ASSERT_OK(th_write_sync(F, SH, 0, buf, len, NULL));
    /* One batch too large for the segment: the writer rolls before it. */
    static uint8_t body[SEG_BYTES - 1024];
    memset(body, 'q', sizeof body);
    rec_view big = {.type = REC_CONV_CREATED, .conv_id = conv, .sender_id = 4,
                    .ts_ms = 1000, .body = body, .body_len = sizeof body};
    batch_header h = {.shard_id = SH, .first_offset = at, .term = term, .ts_ms = 1000};
    uint8_t *bb = malloc(BATCH_OVERHEAD + RECORD_HEADER_SIZE + sizeof body);
    size_t blen = batch_encode(bb, &h, &big, 1);
    ASSERT_OK(th_write_sync(F, SH, at, bb, blen, NULL));
    log_segment_info si;
    ASSERT_OK(log_segment_info_get(F, SH, 1, &si));
    ASSERT_EQ(si.base_offset, at);
    ASSERT_OK(log_truncate_from(F, SH, at));
    ASSERT_OK(log_segment_info_get(F, SH, 1, &si));
    ASSERT_EQ(si.records, 0);
    free(buf);
    free(bb);
    return F;
}

TEST(segship_install_refused_when_terms_or_msg_ids_do_not_continue)
{
    uint64_t c[3];
    convs_in(SH, c, 3);
    const uint64_t at = 100;
    /* A leader whose [0, at) is c[0]'s messages in term 2, then c[1]'s
     * first messages in term 3, sealed from `at` on. */
    const char *ld = test_path(0, "leader");
    log_t *L = follower_ending_at(ld, at, c[0], 2);
    ASSERT_OK(log_set_term(L, SH, 3));
    ASSERT_OK(th_append_many(L, c[1], "from-the-leader", 600));
    ASSERT_GE(wait_sealed(L, SH), 3);
    log_segment_files f;
    ASSERT_OK(log_segment_files_get(L, SH, 1, &f));
    ASSERT_EQ(f.base, at);
    ASSERT_EQ(f.last_term, 3);

    /* Another history up to `at`, of c[2], in term 1: the segment
     * continues it (c[1] is new there, terms rise). */
    log_t *F = follower_ending_at(test_path(1, "f-ok"), at, c[2], 1);
    uint64_t end;
    ASSERT_OK(install_sync(F, SH, &f, &end));
    ASSERT_EQ(end, f.end);
    ASSERT_EQ(log_conv_last_msg_id(F, c[1]), f.end - f.base);
    ASSERT_EQ(log_conv_last_msg_id(F, c[2]), at);
    ASSERT_OK(log_close(F));
    ASSERT_EQ(verify_dir(test_path(1, "f-ok")), 0);

    /* The same in term 9: the segment's term 3 would go backwards. */
    F = follower_ending_at(test_path(2, "f-term"), at, c[2], 9);
    ASSERT_EQ(install_sync(F, SH, &f, NULL), CL_EINVAL);
    ASSERT(!has_file(test_path(2, "f-term"), SH, at, ".zlog"));
    ASSERT(!has_file(test_path(2, "f-term"), SH, at, ".idx"));
    ASSERT_OK(log_close(F));

    /* A history where c[1] has msg_ids 1..at already: the segment's c[1]
     * starts again at 1. Refused, nothing written, the log goes on. */
    const char *fm = test_path(3, "f-msgid");
    F = follower_ending_at(fm, at, c[1], 1);
    ASSERT_EQ(install_sync(F, SH, &f, NULL), CL_EINVAL);
    ASSERT(!has_file(fm, SH, at, ".zlog"));
    ASSERT(!has_file(fm, SH, at, ".idx"));
    ASSERT(has_file(fm, SH, at, ".log"));
    uint64_t id;
    ASSERT_OK(th_append_msg(F, c[1], "own", &id));
    ASSERT_EQ(id, at + 1);
    ASSERT_OK(log_close(F));
    ASSERT_EQ(verify_dir(fm), 0);

    log_segment_files_free(&f);
    ASSERT_OK(log_close(L));
}

/* ---- power loss at every step of an install ----
 * A vfs over io_fault that counts the calls which change files (open with
 * IO_CREATE, pwrite, fdatasync, truncate, rename, unlink, fsync_dir) and
 * simulates the power loss just before the armed one runs. One at a time:
 * the io_file functions carry no vfs, so the state is global. */

static struct {
    io_vfs base;
    io_vfs *inner;
    pthread_mutex_t mu;
    int armed;
    uint64_t count, crash_at;
    int mode;
} cv = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void cv_step(void)
{
    pthread_mutex_lock(&cv.mu);
    if (cv.armed && ++cv.count == cv.crash_at)
        iofault_crash(cv.inner, cv.mode);
    pthread_mutex_unlock(&cv.mu);
}

static int cv_open(io_vfs *v, const char *path, int flags, io_file **out)
{
    if (flags & IO_CREATE)
        cv_step();
    return cv.inner->open(cv.inner, path, flags, out);
}
static int cv_close(io_file *f) { return cv.inner->close(f); }
static ssize_t cv_pread(io_file *f, void *buf, size_t len, uint64_t off)
{
    return cv.inner->pread(f, buf, len, off);
}
static int cv_pwrite(io_file *f, const void *buf, size_t len, uint64_t off)
{
    cv_step();
    return cv.inner->pwrite(f, buf, len, off);
}
static int cv_fdatasync(io_file *f)
{
    cv_step();
    return cv.inner->fdatasync(f);
}
static int cv_truncate(io_file *f, uint64_t size)
{
    cv_step();
    return cv.inner->truncate(f, size);
}
static int cv_size(io_file *f, uint64_t *out) { return cv.inner->size(f, out); }
static int cv_rename(io_vfs *v, const char *from, const char *to)
{
    cv_step();
    return cv.inner->rename(cv.inner, from, to);
}
static int cv_unlink(io_vfs *v, const char *path)
{
    cv_step();
    return cv.inner->unlink(cv.inner, path);
}
static int cv_mkdir(io_vfs *v, const char *path) { return cv.inner->mkdir(cv.inner, path); }
static int cv_fsync_dir(io_vfs *v, const char *path)
{
    cv_step();
    return cv.inner->fsync_dir(cv.inner, path);
}
static int cv_list(io_vfs *v, const char *dir, io_list_cb cb, void *arg)
{
    return cv.inner->list(cv.inner, dir, cb, arg);
}
static int cv_exists(io_vfs *v, const char *path) { return cv.inner->exists(cv.inner, path); }

static io_vfs *cv_new(io_vfs *inner)
{
    cv.base = (io_vfs){cv_open, cv_close, cv_pread, cv_pwrite, cv_fdatasync,
                       cv_truncate, cv_size, cv_rename, cv_unlink, cv_mkdir,
                       cv_fsync_dir, cv_list, cv_exists};
    cv.inner = inner;
    cv.armed = 0;
    cv.count = 0;
    return &cv.base;
}

static void cv_arm(uint64_t crash_at, int mode)
{
    pthread_mutex_lock(&cv.mu);
    cv.armed = 1;
    cv.count = 0;
    cv.crash_at = crash_at;
    cv.mode = mode;
    pthread_mutex_unlock(&cv.mu);
}

static uint64_t cv_disarm(void)
{
    pthread_mutex_lock(&cv.mu);
    cv.armed = 0;
    uint64_t n = cv.count;
    pthread_mutex_unlock(&cv.mu);
    return n;
}

static int no_tmp_cb(const char *name, void *arg)
{
    if (strncmp(name, "tmp-", 4) == 0)
        (*(int *)arg)++;
    return 0;
}

TEST(segship_power_loss_during_install_leaves_no_segment_or_the_whole_one)
{
    uint32_t nsegs;
    log_t *L = make_leader(&nsegs);
    log_segment_files f0, f1;
    ASSERT_OK(log_segment_files_get(L, SH, 0, &f0));
    ASSERT_OK(log_segment_files_get(L, SH, 1, &f1));
    th_recs *rl = read_recs(L, SH);
    ASSERT_OK(log_close(L));
    uint64_t seed = test_seed();
    int saw_none = 0, saw_whole = 0;
    uint64_t total = UINT64_MAX;
    for (uint64_t k = 1; total == UINT64_MAX && k < 200; k++) {
        char fd[4096];
        snprintf(fd, sizeof fd, "%s/f%llu", test_dir(), (unsigned long long)k);
        io_vfs *fio = iofault_new(seed + k);
        ASSERT(fio);
        io_vfs *io = cv_new(fio);
        log_t *F = open_opts(fd, io, SEG_BYTES);
        ASSERT(F);
        ASSERT_OK(install_sync(F, SH, &f0, NULL));
        int mode = (int)(k % 4);
        cv_arm(k, mode);
        uint64_t end = 0;
        int rc = install_sync(F, SH, &f1, &end);
        uint64_t ops = cv_disarm();
        int crashed = iofault_crashed(fio);
        if (!crashed) {
            /* k is past the install's last step: every step was tried. */
            ASSERT_OK(rc);
            total = ops;
            iofault_crash(fio, IOFAULT_CRASH_DROP); /* durable is durable */
        }
        log_close(F);
        iofault_free(fio);

        /* Recovery: no segment [f1.base, f1.end), or the whole one. */
        F = open_opts(fd, NULL, SEG_BYTES);
        ASSERT(F);
        int tmps = 0;
        char sd[8192];
        snprintf(sd, sizeof sd, "%s/shard-%04u", fd, SH);
        io_posix()->list(io_posix(), sd, no_tmp_cb, &tmps);
        ASSERT_EQ(tmps, 0);
        uint64_t next;
        ASSERT_OK(log_shard_ends(F, SH, &next, NULL));
        if (next != f0.end && next != f1.end)
            FAIL("crash at step %llu (mode %d): log ends at %llu, not %llu or %llu",
                 (unsigned long long)k, mode, (unsigned long long)next,
                 (unsigned long long)f0.end, (unsigned long long)f1.end);
        if (rc == 0)
            ASSERT_EQ(next, f1.end); /* acknowledged: must be there */
        saw_none |= next == f0.end;
        saw_whole |= next == f1.end;
        ASSERT_EQ(has_file(fd, SH, f1.base, ".zlog"), next == f1.end);
        ASSERT_EQ(has_file(fd, SH, f1.base, ".idx"), next == f1.end);
        th_recs *rf = read_recs(F, SH);
        ASSERT_EQ(rf->n, next);
        ASSERT_MEM_EQ(rl->v, rf->v, sizeof rl->v[0] * rf->n);
        free(rf);
        log_shard_info si;
        ASSERT_OK(log_shard_info_get(F, SH, &si));
        ASSERT_EQ(si.damaged_ranges, 0);
        ASSERT_EQ(si.failed, 0);
        /* The log goes on: the segment (again, if lost) and an append. */
        if (next == f0.end)
            ASSERT_OK(install_sync(F, SH, &f1, NULL));
        uint64_t c[3], id;
        convs_in(SH, c, 3);
        uint64_t last = log_conv_last_msg_id(F, c[2]);
        ASSERT_OK(th_append_msg(F, c[2], "after the crash", &id));
        ASSERT_EQ(id, last + 1);
        ASSERT_OK(log_close(F));
        if (verify_dir(fd) != 0)
            FAIL("crash at step %llu (mode %d): chatlog verify fails",
                 (unsigned long long)k, mode);
    }
    ASSERT(total != UINT64_MAX && total >= 6);
    ASSERT(saw_none && saw_whole);
    free(rl);
    log_segment_files_free(&f0);
    log_segment_files_free(&f1);
}

/* ---- shipping from a live leader ---- */

typedef struct live_ctx {
    log_t *log;
    int rc;
} live_ctx;

static void *live_writer(void *p)
{
    live_ctx *x = p;
    uint64_t c[3];
    convs_in(SH, c, 3);
    for (int r = 0; r < 30 && x->rc == 0; r++)
        x->rc = th_append_many(x->log, c[r % 3], "live-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 40);
    return NULL;
}

TEST(segship_files_from_a_live_leader_install_while_it_writes_and_seals)
{
    log_t *L = open_opts(test_path(0, "leader"), NULL, SEG_BYTES);
    ASSERT(L);
    const char *fd = test_path(1, "follower");
    log_t *F = open_opts(fd, NULL, SEG_BYTES);
    ASSERT(F);
    live_ctx x = {L, 0};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, live_writer, &x), 0);
    uint32_t next = 0, installed_live = 0;
    uint64_t end = 0;
    for (int spins = 0; spins < 4000; spins++) {
        log_segment_files f;
        int rc = log_segment_files_get(L, SH, next, &f);
        if (rc == CL_EINVAL || rc == CL_ENOTFOUND) {
            if (spins > 50 && x.rc == 0 && installed_live > 2)
                break;
            usleep(500);
            continue;
        }
        ASSERT_OK(rc);
        ASSERT_EQ(f.base, end);
        ASSERT_OK(install_sync(F, SH, &f, &end));
        log_segment_files_free(&f);
        next++;
        installed_live++;
    }
    pthread_join(th, NULL);
    ASSERT_OK(x.rc);
    ASSERT_GT(installed_live, 0);
    uint32_t nsegs = wait_sealed(L, SH);
    for (; next + 1 < nsegs; next++) {
        log_segment_files f;
        ASSERT_OK(log_segment_files_get(L, SH, next, &f));
        ASSERT_OK(install_sync(F, SH, &f, &end));
        log_segment_files_free(&f);
    }
    bytes_buf b = {0};
    ASSERT_OK(log_read_from(L, SH, end, 0, collect_cb, &b));
    ASSERT_OK(th_write_sync(F, SH, end, b.p, b.len, NULL));
    free(b.p);
    assert_same(L, F);
    ASSERT_OK(log_close(F));
    ASSERT_OK(log_close(L));
    ASSERT_EQ(verify_dir(fd), 0);
}
