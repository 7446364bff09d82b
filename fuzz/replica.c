/*
 * replica.c — fuzz target: the bytes a cluster node receives from a peer
 * and hands to the engine (engine/replica side of log.h): batches for
 * log_check_batches / log_write_batches, and sealed segments (.zlog + .idx)
 * for log_segment_install.
 *
 * SET-UP (once per process, LLVMFuzzerInitialize, before the replay forks):
 * a leader data directory, 1 shard, 16 KiB segments, NRECORDS records in
 * NCONVS conversations written with log_append at term LEADER_TERM, every
 * byte deterministic as in recovery.c (batch timestamps pinned through the
 * writer's clock, groups formed with max_wait_us), closed so that the sealer
 * has compressed every rolled segment. Reopened, it gives the material: the
 * raw batches of the whole shard (log_read_from) and the files of each
 * sealed segment (log_segment_files_get). Then follower directories
 * follower-<i>: a fresh log with segments 0 .. i-1 installed from the
 * material, so it ends at segment i's base with an empty active segment.
 * The log is closed before any input: a forked replay child has no engine
 * threads.
 *
 * INPUT. byte 0: bit 0 the mode (0 append, 1 install), bit 1 "fix".
 *
 *   append: byte 1 picks at_offset: 0 the leader's end, k >= 1 the start of
 *   the leader's batch (k - 1) mod (batches + 1) (the end for the last one),
 *   so a write may first cut a suffix, inside a compressed segment too. The
 *   rest are the batch bytes. With "fix", each batch that fits is renumbered
 *   (shard 0, first_offset continuing from at_offset) and its checksum
 *   recomputed, so the fuzzer gets past them to the record rules. A copy of
 *   the leader's directory is opened; log_check_batches, then
 *   log_write_batches with the same arguments.
 *
 *   install: byte 1 the segment i (mod the number of sealed segments);
 *   byte 2: bit 0 the file changed (0 .zlog, 1 .idx), bits 1-3 the change
 *   (0 none, 1 overwrite, 2 insert, 3 truncate, 4 flip bits — each data byte
 *   pair (d0, d1) flips bit d1&7 of the byte at position + d0 + 256*(d1>>3),
 *   5 replace the file with the data, 6 zero data[0] + 1 bytes, 7 take the
 *   file of segment i + 1 instead), bit 4 "fix" (recompute the .zlog's block
 *   hashes and table checksum, the .idx's checksum), bits 5-7 the metadata
 *   passed beside the files (5: last_term ^ 1, 6: end - 1, 7: base + 1,
 *   else as read); bytes 3-6 a position (modulo the file size + 1); the rest
 *   data. A copy of follower-<i> is opened, log_segment_install called.
 *
 * CHECKS.
 *  append:
 *  - log_check_batches and log_write_batches return the same code, one of
 *    those log.h lists;
 *  - refused: nothing in the directory changed (names and sizes) and the log
 *    reads back exactly as the leader's;
 *  - accepted: the callback comes once, with 0 and end_offset = at_offset +
 *    the records written, or with CL_EINVAL (a msg_id that does not continue
 *    its conversation) and the log ends at the leader's end or at at_offset;
 *    what log_read_from returns is the leader's batches below at_offset then
 *    exactly the written batches (GROUP_END and the checksum aside, which
 *    the writer sets), before and after a reopen;
 *  install:
 *  - an immediate error is one log.h lists, and nothing in the directory
 *    changed; the unchanged files with the true metadata are always
 *    installed;
 *  - accepted: the callback comes once, with 0 and f->end, and the log then
 *    reads back as the leader's up to f->end (so the installed records are
 *    the leader's), before and after a reopen; or with CL_EINVAL, and
 *    nothing changed;
 *  both: log_close returns 0 and rcv_verify (chatlog verify) passes on the
 *  directory; ASan/UBSan/LSan.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "common.h"
#include "errors.h"
#include "log.h"
#include "util.h"
#include "verify.h"

#define NRECORDS 300
#define NCONVS 6
#define SEG_BYTES LOG_MIN_SEGMENT_BYTES
#define MAX_BATCH 2048
#define MAX_SEGS 32
#define LEADER_TERM 3
#define FUTURE_MS 4102444800000ll /* 2100-01-01 */

typedef struct mbatch {
    size_t pos; /* in raw */
    uint32_t len;
    uint64_t first_offset;
    uint32_t count;
} mbatch;

static char leader_dir[512], work[512], follower_dir[MAX_SEGS][512];
static uint8_t *raw; /* the leader's shard as batches, from offset 0 */
static size_t raw_len;
static mbatch *batches;
static size_t nbatches;
static uint64_t leader_end;
static log_segment_files segs[MAX_SEGS];
static uint32_t nsegs;
static FILE *devnull;

/* ---- waiting for the engine's callbacks ---- */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    int calls;
    int err;
    uint64_t end;
} waiter;

static waiter wt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};

static void waiter_add(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    w->outstanding++;
    pthread_mutex_unlock(&w->mu);
}

static void waiter_done(waiter *w, int status, uint64_t end)
{
    pthread_mutex_lock(&w->mu);
    if (status && !w->err)
        w->err = status;
    w->end = end;
    w->calls++;
    w->outstanding--;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int waiter_wait(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->outstanding > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    int e = w->err;
    w->err = 0;
    pthread_mutex_unlock(&w->mu);
    return e;
}

static void append_cb(void *arg, int status, const log_append_result *res)
{
    (void)res;
    waiter_done(arg, status, 0);
}

static void write_cb(void *arg, int status, uint64_t end_offset)
{
    waiter_done(arg, status, end_offset);
}

/* ---- helpers ---- */

static log_options opts(void)
{
    return (log_options){.shards = 1, .segment_bytes = SEG_BYTES,
                         .max_batch_bytes = MAX_BATCH, .fsync = LOG_FSYNC_NONE,
                         .io = fuzz_nosync_vfs(), .log_fn = fuzz_quiet_log};
}

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void buf_put(buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        FUZZ_CHECK(b->p != NULL, "oom");
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static int read_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                   const log_entry *e, size_t n)
{
    (void)e;
    (void)n;
    buf_put(arg, bytes, h->length);
    return 0;
}

/* Every batch of the shard, from offset 0, concatenated into *out. */
static void read_all(log_t *log, buf *out)
{
    out->n = 0;
    int rc = log_read_from(log, 0, 0, 0, read_cb, out);
    FUZZ_CHECK(rc == 0, "log_read_from: %s", cl_strerror(rc));
}

/* Clear what the writer may set on received batches (GROUP_END and so the
 * checksum), so that what was sent and what was stored compare. The bytes
 * must be whole, valid batches. */
static void normalise(uint8_t *p, size_t n)
{
    size_t pos = 0;
    while (pos + BATCH_HEADER_SIZE <= n) {
        uint32_t len = get_u32(p + pos + 8);
        FUZZ_CHECK(len >= BATCH_OVERHEAD && len <= n - pos, "normalise: length %u", len);
        put_u16(p + pos + 6, (uint16_t)(get_u16(p + pos + 6) & ~BATCH_FLAG_GROUP_END));
        memset(p + pos + len - BATCH_TRAILER_SIZE, 0, BATCH_TRAILER_SIZE);
        pos += len;
    }
    FUZZ_CHECK(pos == n, "normalise: %zu of %zu bytes", pos, n);
}

/* The log's batches must be norm(leader[0 .. prefix)) followed by
 * norm(tail). */
static void check_contents(log_t *log, size_t prefix, const uint8_t *tail,
                           size_t tail_len, const char *when)
{
    buf got = {0};
    read_all(log, &got);
    uint8_t *want = malloc(prefix + tail_len + 1);
    FUZZ_CHECK(want != NULL, "oom");
    memcpy(want, raw, prefix);
    if (tail_len)
        memcpy(want + prefix, tail, tail_len);
    normalise(want, prefix + tail_len);
    normalise(got.p, got.n);
    FUZZ_CHECK(got.n == prefix + tail_len, "%s: log holds %zu bytes of batches, expected %zu",
               when, got.n, prefix + tail_len);
    size_t d = 0;
    while (d < got.n && got.p[d] == want[d])
        d++;
    FUZZ_CHECK(d == got.n, "%s: batches differ at byte %zu (leader prefix %zu)", when, d,
               prefix);
    free(want);
    free(got.p);
}

/* Position in raw of the batch starting at offset, or SIZE_MAX. */
static size_t raw_pos_of(uint64_t offset)
{
    if (offset == leader_end)
        return raw_len;
    for (size_t i = 0; i < nbatches; i++)
        if (batches[i].first_offset == offset)
            return batches[i].pos;
    return SIZE_MAX;
}

typedef struct listing {
    char *s;
    size_t n;
} listing;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "name size" of every file of the directory and its shard directory,
 * sorted, in one string (caller frees). */
static char *list_dir(const char *dir)
{
    char *names[256];
    size_t n = 0;
    const char *sub[2] = {"", "/shard-0000"};
    for (int k = 0; k < 2; k++) {
        char d[600];
        snprintf(d, sizeof d, "%s%s", dir, sub[k]);
        DIR *dh = opendir(d);
        FUZZ_CHECK(dh != NULL, "opendir %s", d);
        struct dirent *e;
        while ((e = readdir(dh))) {
            if (e->d_name[0] == '.')
                continue;
            char p[1200], line[1300];
            struct stat st;
            snprintf(p, sizeof p, "%s/%s", d, e->d_name);
            if (stat(p, &st) != 0 || S_ISDIR(st.st_mode))
                continue;
            snprintf(line, sizeof line, "%s/%s %lld", sub[k], e->d_name,
                     (long long)st.st_size);
            FUZZ_CHECK(n < 256, "too many files");
            names[n++] = strdup(line);
        }
        closedir(dh);
    }
    qsort(names, n, sizeof *names, cmp_str);
    buf b = {0};
    for (size_t i = 0; i < n; i++) {
        buf_put(&b, names[i], strlen(names[i]));
        buf_put(&b, "\n", 1);
        free(names[i]);
    }
    buf_put(&b, "", 1);
    return (char *)b.p;
}

static void check_listing(const char *before, const char *what)
{
    char *now = list_dir(work);
    FUZZ_CHECK(!strcmp(before, now), "%s changed the directory:\nbefore:\n%safter:\n%s",
               what, before, now);
    free(now);
}

/* Close, verify, reopen read-only and check the contents again. */
static void close_and_verify(log_t *log, size_t prefix, const uint8_t *tail,
                             size_t tail_len)
{
    int rc = log_close(log);
    FUZZ_CHECK(rc == 0, "log_close: %s", cl_strerror(rc));
    int vr = rcv_verify(work, devnull);
    FUZZ_CHECK(vr == 0, "verify of the follower: %d", vr);
    log_options o = opts();
    o.read_only = 1;
    rc = log_open(work, &o, &log);
    FUZZ_CHECK(rc == 0, "read-only reopen: %s", cl_strerror(rc));
    check_contents(log, prefix, tail, tail_len, "after reopen");
    FUZZ_CHECK(log_close(log) == 0, "close read-only");
}

/* ---- set-up ---- */

static void write_leader(void)
{
    log_options o = opts();
    log_t *log;
    FUZZ_CHECK(log_open(leader_dir, &o, &log) == 0, "open %s", leader_dir);
    /* A record stamped in the future becomes the shard's clock on reopen,
     * so every later batch carries that timestamp: deterministic bytes. */
    rec_view fut = {.type = REC_CONV_CREATED, .conv_id = 1, .ts_ms = FUTURE_MS};
    waiter_add(&wt);
    FUZZ_CHECK(log_append(log, &fut, append_cb, &wt) == 0, "append");
    FUZZ_CHECK(waiter_wait(&wt) == 0, "clock record");
    FUZZ_CHECK(log_close(log) == 0, "close");

    o.max_wait_us = 1000000;
    FUZZ_CHECK(log_open(leader_dir, &o, &log) == 0, "reopen %s", leader_dir);
    FUZZ_CHECK(log_truncate_from(log, 0, 0) == 0, "truncate");
    FUZZ_CHECK(log_set_term(log, 0, LEADER_TERM) == 0, "term");
    uint64_t st = 0x7e91;
    uint64_t conv_ids[NCONVS];
    int created[NCONVS] = {0};
    for (int c = 0; c < NCONVS; c++)
        conv_ids[c] = 2000 + (uint64_t)c * 7919;
    for (int i = 0; i < NRECORDS; i++) {
        uint64_t x = fuzz_rand(&st);
        int c = (int)(x % NCONVS);
        rec_view r = {.conv_id = conv_ids[c], .sender_id = 1 + (x >> 8) % 50,
                      .ts_ms = 1700000000000ll + i * 37};
        if (!created[c]) {
            r.type = REC_CONV_CREATED;
            created[c] = 1;
        } else {
            unsigned t = (unsigned)((x >> 16) % 20);
            r.type = t < 16 ? REC_MESSAGE : (uint8_t)(REC_MEMBERS_CHANGED + (t - 16));
            if (r.type != REC_MESSAGE)
                r.msg_id = (x >> 24) % 40;
        }
        unsigned sz = (unsigned)((x >> 32) % 100);
        r.body_len = sz < 60 ? sz : sz < 95 ? 60 + sz * 3 : 1000 + sz * 20;
        r.key_len = (x >> 40) % 3 == 0 ? 16 : 0;
        uint8_t *b = malloc(r.body_len + r.key_len + 1);
        FUZZ_CHECK(b != NULL, "oom");
        fuzz_fill(x, b, r.body_len + r.key_len);
        r.key = r.key_len ? b : NULL;
        r.body = b + r.key_len;
        waiter_add(&wt);
        FUZZ_CHECK(log_append(log, &r, append_cb, &wt) == 0, "append");
        free(b);
    }
    /* Closing lets the writer take the last, partial group at once, and
     * waits for the sealer to compress every rolled segment. */
    FUZZ_CHECK(log_close(log) == 0, "close");
    FUZZ_CHECK(waiter_wait(&wt) == 0, "appends");
}

static void read_material(void)
{
    log_options o = opts();
    log_t *log;
    FUZZ_CHECK(log_open(leader_dir, &o, &log) == 0, "reopen leader");
    buf b = {0};
    read_all(log, &b);
    raw = b.p;
    raw_len = b.n;
    size_t pos = 0;
    uint64_t off = 0;
    while (pos < raw_len) {
        batch_header h;
        FUZZ_CHECK(batch_verify_at(raw + pos, raw_len - pos, 0, off, &h) == 0,
                   "leader batch at %zu", pos);
        batches = realloc(batches, (nbatches + 1) * sizeof *batches);
        batches[nbatches++] = (mbatch){pos, h.length, off, h.record_count};
        pos += h.length;
        off += h.record_count;
    }
    leader_end = off;
    for (nsegs = 0; nsegs < MAX_SEGS; nsegs++) {
        int rc = log_segment_files_get(log, 0, nsegs, &segs[nsegs]);
        if (rc == CL_EINVAL || rc == CL_ENOTFOUND)
            break;
        FUZZ_CHECK(rc == 0, "segment files %u: %s", nsegs, cl_strerror(rc));
    }
    FUZZ_CHECK(nsegs >= 2, "only %u sealed segments", nsegs);
    FUZZ_CHECK(log_close(log) == 0, "close leader");
}

static void make_followers(void)
{
    for (uint32_t i = 0; i < nsegs; i++) {
        snprintf(follower_dir[i], sizeof follower_dir[i], "%s/follower-%u",
                 fuzz_tmp_dir(), i);
        fuzz_rm_rf(follower_dir[i]);
        log_options o = opts();
        log_t *log;
        FUZZ_CHECK(log_open(follower_dir[i], &o, &log) == 0, "open follower");
        for (uint32_t k = 0; k < i; k++) {
            waiter_add(&wt);
            int rc = log_segment_install(log, 0, &segs[k], write_cb, &wt);
            if (rc)
                waiter_done(&wt, rc, 0);
            FUZZ_CHECK(waiter_wait(&wt) == 0, "install pristine segment %u", k);
        }
        FUZZ_CHECK(log_close(log) == 0, "close follower");
    }
}

static void write_seed(const char *dir, const char *name, const uint8_t *head,
                       size_t hlen, const uint8_t *body, size_t blen)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    uint8_t *b = malloc(hlen + blen + 1);
    memcpy(b, head, hlen);
    if (blen)
        memcpy(b + hlen, body, blen);
    FUZZ_CHECK(fuzz_write_file(p, b, hlen + blen) == 0, "write %s", p);
    free(b);
}

/* FUZZ_REPLICA_SEEDS=dir: write the seed inputs of fuzz/corpus/replica/. */
static void write_seeds(const char *dir)
{
    uint8_t noop[LOG_NOOP_BATCH_BYTES];
    log_noop_batch(noop, 0, leader_end, LEADER_TERM + 1);
    write_seed(dir, "seed-append-noop-at-end", (const uint8_t[]){0, 0}, 2, noop, sizeof noop);
    size_t mid = nbatches / 2;
    uint8_t h[3] = {0, (uint8_t)(mid + 1), 0};
    write_seed(dir, "seed-append-leader-suffix", h, 2, raw + batches[mid].pos,
               raw_len - batches[mid].pos);
    h[1] = 1;
    write_seed(dir, "seed-append-whole-at-0", h, 2, raw, raw_len);
    h[0] = 2;
    h[1] = 0;
    write_seed(dir, "seed-append-fix-at-end", h, 2, raw + batches[1].pos,
               batches[1].len + batches[2].len);
    for (uint32_t i = 0; i < nsegs && i < 3; i++) {
        char name[64];
        uint8_t ih[7] = {1, (uint8_t)i, 0, 0, 0, 0, 0};
        snprintf(name, sizeof name, "seed-install-%u", i);
        write_seed(dir, name, ih, 7, NULL, 0);
    }
    /* A flipped bit in the middle of the .zlog, checksums fixed; a flipped
     * bit in the .idx; a truncated .idx. */
    uint8_t flip[9] = {1, 1, 0x18, 0, 4, 0, 0, 0x10, 0x03};
    write_seed(dir, "seed-install-zlog-flip-fixed", flip, sizeof flip, NULL, 0);
    uint8_t iflip[9] = {1, 0, 0x09, 60, 0, 0, 0, 0x05, 0x02};
    write_seed(dir, "seed-install-idx-flip", iflip, sizeof iflip, NULL, 0);
    uint8_t itrunc[7] = {1, 0, 0x07, 100, 0, 0, 0};
    write_seed(dir, "seed-install-idx-truncate", itrunc, sizeof itrunc, NULL, 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *tmp = fuzz_tmp_dir();
    devnull = fopen("/dev/null", "w");
    FUZZ_CHECK(devnull != NULL, "/dev/null");
    snprintf(leader_dir, sizeof leader_dir, "%s/leader", tmp);
    snprintf(work, sizeof work, "%s/work", tmp);
    fuzz_rm_rf(leader_dir);
    write_leader();
    read_material();
    make_followers();
    const char *seeds = getenv("FUZZ_REPLICA_SEEDS");
    if (seeds && *seeds)
        write_seeds(seeds);
    return 0;
}

/* ---- append mode ---- */

/* Renumber each batch that fits: shard 0, offsets from at, checksum. */
static void fix_batches(uint8_t *p, size_t n, uint64_t at)
{
    size_t pos = 0;
    while (pos + BATCH_OVERHEAD <= n) {
        uint32_t len = get_u32(p + pos + 8);
        if (len < BATCH_OVERHEAD || len > n - pos)
            break;
        put_u32(p + pos + 12, 0);
        put_u64(p + pos + 16, at);
        at += get_u32(p + pos + 24);
        put_u64(p + pos + len - 8, XXH3_64bits(p + pos, len - 8));
        pos += len;
    }
}

static int known_refusal(int rc)
{
    return rc == CL_EINVAL || rc == CL_ECORRUPT || rc == CL_ETRUNC ||
           rc == CL_EMISPLACED || rc == CL_ETOOBIG;
}

static void run_append(const uint8_t *data, size_t size)
{
    if (size < 2)
        return;
    int fix = data[0] & 2;
    uint64_t at = leader_end;
    if (data[1] != 0) {
        size_t k = (size_t)(data[1] - 1) % (nbatches + 1);
        at = k < nbatches ? batches[k].first_offset : leader_end;
    }
    size_t n = size - 2;
    uint8_t *bytes = malloc(n ? n : 1); /* exactly sized: ASan sees overreads */
    FUZZ_CHECK(bytes != NULL, "oom");
    memcpy(bytes, data + 2, n);
    if (fix)
        fix_batches(bytes, n, at);
    size_t prefix = raw_pos_of(at);

    FUZZ_CHECK(fuzz_copy_tree(leader_dir, work) == 0, "copy");
    log_options o = opts();
    log_t *log;
    int rc = log_open(work, &o, &log);
    FUZZ_CHECK(rc == 0, "open the follower: %s", cl_strerror(rc));
    char *before = list_dir(work);

    int crc = log_check_batches(log, 0, at, bytes, n);
    waiter_add(&wt);
    int wrc = log_write_batches(log, 0, at, bytes, n, write_cb, &wt);
    if (wrc)
        waiter_done(&wt, wrc, 0);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "replica: append %zu bytes at %llu%s: check %s\n", n,
                (unsigned long long)at, fix ? " (fixed)" : "", cl_strerror(crc));
    FUZZ_CHECK(crc == wrc, "log_check_batches says %s, log_write_batches %s",
               cl_strerror(crc), cl_strerror(wrc));
    if (crc != 0) {
        waiter_wait(&wt);
        FUZZ_CHECK(known_refusal(crc), "refused with %s", cl_strerror(crc));
        check_listing(before, "refused batches");
        check_contents(log, raw_len, NULL, 0, "refused");
        close_and_verify(log, raw_len, NULL, 0);
        goto out;
    }
    /* Accepted: count the records the bytes hold. */
    uint64_t count = 0;
    for (size_t pos = 0; pos < n;) {
        batch_header h;
        FUZZ_CHECK(batch_verify_at(bytes + pos, n - pos, 0, at + count, &h) == 0,
                   "accepted bytes fail batch_verify_at at %zu", pos);
        count += h.record_count;
        pos += h.length;
    }
    int st = waiter_wait(&wt);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "replica: write: %s\n", cl_strerror(st));
    if (st == 0) {
        FUZZ_CHECK(wt.end == at + count, "write ended at %llu, expected %llu",
                   (unsigned long long)wt.end, (unsigned long long)(at + count));
        check_contents(log, prefix, bytes, n, "written");
        close_and_verify(log, prefix, bytes, n);
    } else {
        FUZZ_CHECK(st == CL_EINVAL, "write failed: %s", cl_strerror(st));
        log_shard_info info;
        FUZZ_CHECK(log_shard_info_get(log, 0, &info) == 0, "info");
        FUZZ_CHECK(info.next_offset == leader_end || info.next_offset == at,
                   "failed write left the log ending at %llu (leader %llu, at %llu)",
                   (unsigned long long)info.next_offset,
                   (unsigned long long)leader_end, (unsigned long long)at);
        size_t pre = info.next_offset == leader_end ? raw_len : prefix;
        check_contents(log, pre, NULL, 0, "failed write");
        close_and_verify(log, pre, NULL, 0);
    }
out:
    free(before);
    free(bytes);
}

/* ---- install mode ---- */

static void fix_zlog(uint8_t *z, size_t n)
{
    if (n < 64)
        return;
    uint32_t nb = get_u32(z + 12);
    if (nb > (n - 64) / 32)
        return;
    size_t table_end = 56 + (size_t)32 * nb + 8;
    for (uint32_t i = 0; i < nb; i++) {
        uint8_t *e = z + 56 + (size_t)32 * i;
        uint64_t fp = get_u64(e + 16);
        uint32_t cl = get_u32(e + 12);
        if (fp <= n && cl <= n - fp)
            put_u64(e + 24, XXH3_64bits(z + fp, cl));
    }
    put_u64(z + table_end - 8, XXH3_64bits(z, table_end - 8));
}

static void fix_idx(uint8_t *x, size_t n)
{
    if (n >= 8)
        put_u64(x + n - 8, XXH3_64bits(x, n - 8));
}

/* Apply change op to *p (of *len bytes, malloc'd), as recovery.c does. */
static void mutate(uint8_t **p, size_t *len, int op, uint32_t where,
                   const uint8_t *d, size_t dn)
{
    size_t old = *len;
    size_t pos = old ? where % (old + 1) : 0;
    uint8_t *n;
    size_t nlen;
    switch (op) {
    case 1: /* overwrite */
        nlen = pos + dn > old ? pos + dn : old;
        n = calloc(nlen + 1, 1);
        memcpy(n, *p, old);
        memcpy(n + pos, d, dn);
        break;
    case 2: /* insert */
        nlen = old + dn;
        n = malloc(nlen + 1);
        memcpy(n, *p, pos);
        memcpy(n + pos, d, dn);
        memcpy(n + pos + dn, *p + pos, old - pos);
        break;
    case 3: /* truncate */
        nlen = pos;
        n = malloc(nlen + 1);
        memcpy(n, *p, nlen);
        break;
    case 4: /* flip bits */
        nlen = old;
        n = malloc(nlen + 1);
        memcpy(n, *p, old);
        for (size_t i = 0; i + 1 < dn; i += 2) {
            size_t at = pos + d[i] + 256u * (d[i + 1] >> 3);
            if (at < nlen)
                n[at] ^= (uint8_t)(1u << (d[i + 1] & 7));
        }
        break;
    case 5: /* replace */
        nlen = dn;
        n = malloc(nlen + 1);
        if (dn)
            memcpy(n, d, dn);
        break;
    case 6: /* zero a range */
        nlen = old;
        n = malloc(nlen + 1);
        memcpy(n, *p, old);
        for (size_t i = pos; i < pos + (dn ? d[0] : 0) + 1u && i < nlen; i++)
            n[i] = 0;
        break;
    default:
        return;
    }
    FUZZ_CHECK(n != NULL, "oom");
    free(*p);
    *p = n;
    *len = nlen;
}

static void run_install(const uint8_t *data, size_t size)
{
    if (size < 3)
        return;
    uint32_t i = data[1] % nsegs;
    int which = data[2] & 1, op = (data[2] >> 1) & 7, fix = data[2] & 0x10;
    int meta = data[2] >> 5;
    uint32_t where = fuzz_u32(data + 3, size > 3 ? size - 3 : 0);
    const uint8_t *d = size > 7 ? data + 7 : (const uint8_t *)"";
    size_t dn = size > 7 ? size - 7 : 0;

    const log_segment_files *src = &segs[i];
    log_segment_files f = *src;
    f.zlog = malloc(src->zlog_len + 1);
    f.idx = malloc(src->idx_len + 1);
    FUZZ_CHECK(f.zlog && f.idx, "oom");
    memcpy(f.zlog, src->zlog, src->zlog_len);
    memcpy(f.idx, src->idx, src->idx_len);
    uint8_t **fp = which ? &f.idx : &f.zlog;
    size_t *fl = which ? &f.idx_len : &f.zlog_len;
    if (op == 7) {
        const log_segment_files *o = &segs[(i + 1) % nsegs];
        const uint8_t *sp = which ? o->idx : o->zlog;
        *fl = which ? o->idx_len : o->zlog_len;
        free(*fp);
        *fp = malloc(*fl + 1);
        memcpy(*fp, sp, *fl);
    } else {
        mutate(fp, fl, op, where, d, dn);
    }
    if (fix) {
        fix_zlog(f.zlog, f.zlog_len);
        fix_idx(f.idx, f.idx_len);
    }
    if (meta == 5)
        f.last_term ^= 1;
    else if (meta == 6)
        f.end--;
    else if (meta == 7)
        f.base++;
    /* Exactly sized copies, so that ASan sees a read past either file. */
    uint8_t *zx = malloc(f.zlog_len ? f.zlog_len : 1), *ix = malloc(f.idx_len ? f.idx_len : 1);
    FUZZ_CHECK(zx && ix, "oom");
    memcpy(zx, f.zlog, f.zlog_len);
    memcpy(ix, f.idx, f.idx_len);
    free(f.zlog);
    free(f.idx);
    f.zlog = zx;
    f.idx = ix;
    int pristine = f.zlog_len == src->zlog_len && f.idx_len == src->idx_len &&
                   !memcmp(f.zlog, src->zlog, f.zlog_len) &&
                   !memcmp(f.idx, src->idx, f.idx_len) && f.base == src->base &&
                   f.end == src->end && f.last_term == src->last_term;
    size_t base_pos = raw_pos_of(src->base);
    FUZZ_CHECK(base_pos != SIZE_MAX, "segment base %llu", (unsigned long long)src->base);

    FUZZ_CHECK(fuzz_copy_tree(follower_dir[i], work) == 0, "copy");
    log_options o = opts();
    log_t *log;
    int rc = log_open(work, &o, &log);
    FUZZ_CHECK(rc == 0, "open the follower: %s", cl_strerror(rc));
    char *before = list_dir(work);

    waiter_add(&wt);
    rc = log_segment_install(log, 0, &f, write_cb, &wt);
    if (rc)
        waiter_done(&wt, rc, 0);
    free(f.zlog);
    free(f.idx);
    int st = waiter_wait(&wt);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "replica: install segment %u [%llu, %llu) %s: %s, then %s\n", i,
                (unsigned long long)f.base, (unsigned long long)f.end,
                pristine ? "pristine" : "changed", cl_strerror(rc), cl_strerror(st));
    FUZZ_CHECK(!pristine || st == 0, "the leader's segment %u refused: %s", i,
               cl_strerror(st));
    if (rc) {
        FUZZ_CHECK(rc == CL_EINVAL || rc == CL_ECORRUPT || rc == CL_EMISPLACED ||
                       rc == CL_ETOOBIG,
                   "install refused with %s", cl_strerror(rc));
        check_listing(before, "refused install");
        check_contents(log, base_pos, NULL, 0, "refused install");
        close_and_verify(log, base_pos, NULL, 0);
    } else if (st == 0) {
        FUZZ_CHECK(wt.end == f.end, "install ended at %llu, f->end %llu",
                   (unsigned long long)wt.end, (unsigned long long)f.end);
        size_t end_pos = raw_pos_of(f.end);
        FUZZ_CHECK(end_pos != SIZE_MAX && f.base == src->base,
                   "installed [%llu, %llu): not the leader's segment bounds",
                   (unsigned long long)f.base, (unsigned long long)f.end);
        check_contents(log, end_pos, NULL, 0, "installed");
        close_and_verify(log, end_pos, NULL, 0);
    } else {
        FUZZ_CHECK(st == CL_EINVAL, "install failed: %s", cl_strerror(st));
        check_listing(before, "failed install");
        check_contents(log, base_pos, NULL, 0, "failed install");
        close_and_verify(log, base_pos, NULL, 0);
    }
    free(before);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!work[0])
        LLVMFuzzerInitialize(NULL, NULL);
    wt.calls = 0;
    if (data[0] & 1)
        run_install(data, size);
    else
        run_append(data, size);
    FUZZ_CHECK(wt.calls <= 1, "the callback came %d times", wt.calls);
    fuzz_rm_rf(work);
    return 0;
}
