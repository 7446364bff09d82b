/*
 * recovery.c — fuzz target: damage a real data directory, then recover it
 * (log_open, recovery/recovery.c) and check what survives.
 *
 * SET-UP (once per process, LLVMFuzzerInitialize). Two pristine data
 * directories are written through the engine, with the same NRECORDS records
 * (messages, most of them, and the other record types, in NCONVS
 * conversations over NSHARDS shards, bodies of 0 to 3000 bytes, some with an
 * idempotency key) and 16 KiB segments, so that each shard has several sealed
 * segments and an active one:
 *   variant 0: sealed segments compressed (<base>.zlog + <base>.idx);
 *   variant 1: no_compress (sealed <base>.log + <base>.idx).
 * Every byte of them is deterministic, so that an input reproduces: record
 * timestamps are given; batch timestamps are pinned by first writing one
 * record stamped far in the future, reopening (recovery raises the shard's
 * clock to it) and truncating it away; groups are formed with max_wait_us so
 * that each is the largest that fits max_batch_bytes; the MANIFEST's
 * created_ms is rewritten. Each directory is then parsed back (batches,
 * blocks, positions) and compared with what was appended.
 *
 * INPUT. byte 0: which file of the directory (MANIFEST, every segment,
 * sidecar); byte 1: the operation (bits 0-2) and the variant (bit 3);
 * bytes 2-5: a position (modulo the file size + 1); the rest: data.
 * With bit 4 of byte 1, two changes: byte 6 is the length L of the first
 * change's data (bytes 7 .. 7+L), and what follows is a second change in the
 * same format (file, operation, position, data) applied after it — so that
 * e.g. a deleted sidecar and a damaged block meet.
 *   0 overwrite at the position with the data (may extend the file)
 *   1 insert the data at the position
 *   2 truncate at the position
 *   3 flip bits: each data byte pair (d0, d1) flips bit d1&7 of the byte at
 *     position + d0 (+ 256 * (d1 >> 3))
 *   4 delete the file
 *   5 replace the whole file with the data
 *   6 create a file beside it: data[0] picks the kind (.log, .zlog, .idx,
 *     tmp-, unknown name), data[1] (signed) moves the base offset away from
 *     the chosen segment's, the rest is the content
 *   7 zero data[0] + 1 bytes at the position (a lost sector)
 *
 * CHECKS. Recovery runs with log_open; then:
 *  - log_open returns 0; CL_EMANIFEST only if the MANIFEST was changed;
 *  - every record before the damage point is readable with identical content
 *    through log_read_from and log_read_conv: all records of other shards and
 *    of other segments, and of the damaged segment those in batches (raw
 *    segment) or blocks (compressed segment) wholly before the first changed
 *    byte (nothing of a compressed segment whose header, table or size
 *    changed, or of a deleted segment); a changed sidecar loses nothing;
 *  - whatever else is returned is an original record at its original offset
 *    and msg_id — damage never invents or shifts a record;
 *  - the conversation's last msg_id is at least that of its last surviving
 *    message; an append to it gets the next msg_id, or CL_EDAMAGED when the
 *    shard is fenced; nothing else;
 *  - log_close returns 0; then rcv_verify (chatlog verify) returns 0 or 1,
 *    and 1 whenever recovery reported damage other than a torn tail;
 *  - if verify passed, a read-only reopen reports no damage and every record
 *    and every conversation reads back without error;
 *  - ASan/UBSan/LSan: no crash, no out-of-bounds access, no leak.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>
#include <xxhash.h>

#include "common.h"
#include "errors.h"
#include "internal.h"
#include "log.h"
#include "verify.h"

#define NSHARDS 2
#define NCONVS 8
#define NRECORDS 420
#define SEG_BYTES LOG_MIN_SEGMENT_BYTES
#define MAX_BATCH 2048
#define FUTURE_MS 4102444800000ll /* 2100-01-01 */
#define NVARIANTS 2

/* ---- the records appended ---- */

typedef struct orec {
    rec_view r; /* key and body point into malloc'd memory */
    uint32_t shard;
    uint64_t offset;
    int done;
} orec;

static orec recs[NRECORDS];
static uint64_t conv_ids[NCONVS];
/* by_off[s][o]: index in recs of the record at offset o of shard s */
static uint32_t *by_off[NSHARDS];
static uint64_t shard_end[NSHARDS];
/* msgs[c][m-1]: index in recs of message m of conversation c */
static uint32_t *msgs[NCONVS];
static uint64_t nmsgs[NCONVS];

/* ---- what the pristine directories look like ---- */

typedef struct pbatch {
    uint64_t pos; /* raw position */
    uint32_t len;
    uint64_t first_offset;
    uint32_t count;
} pbatch;

typedef struct pseg {
    uint64_t base, end;
    int zlog;
    uint64_t table_end; /* zlog: first byte after the block table */
    zblock *blocks;
    uint32_t nblocks;
    pbatch *batches;
    uint32_t nbatches;
} pseg;

typedef struct variant {
    char dir[512];
    char **files; /* relative paths, sorted */
    size_t nfiles;
    pseg *segs[NSHARDS];
    uint32_t nsegs[NSHARDS];
} variant;

static variant variants[NVARIANTS];
static FILE *devnull;
static char work[512];

/* The message check_appends added to each conversation after recovery: it
 * may take the offset and msg_id of a record recovery cut off. */
typedef struct added_msg {
    int valid;
    uint32_t shard;
    uint64_t offset, msg_id;
} added_msg;
static added_msg added[NCONVS];
static const uint8_t added_body[] = "after recovery";

static int is_added(uint32_t shard_id, uint64_t offset)
{
    for (int c = 0; c < NCONVS; c++)
        if (added[c].valid && added[c].shard == shard_id && added[c].offset == offset)
            return 1;
    return 0;
}

/* ---- writing the pristine directories ---- */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    int err;
    uint64_t msg_id;
} waiter;

static waiter wt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

static void waiter_add(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    w->outstanding++;
    pthread_mutex_unlock(&w->mu);
}

static void waiter_done(waiter *w, int status, uint64_t msg_id)
{
    pthread_mutex_lock(&w->mu);
    if (status && !w->err)
        w->err = status;
    w->msg_id = msg_id;
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

static void plain_cb(void *arg, int status, const log_append_result *res)
{
    waiter_done(arg, status, res ? res->msg_id : 0);
}

static void rec_cb(void *arg, int status, const log_append_result *res)
{
    orec *o = arg;
    FUZZ_CHECK(status == 0, "pristine append failed: %s", cl_strerror(status));
    if (o->r.type == REC_MESSAGE)
        o->r.msg_id = res->msg_id;
    o->shard = res->shard;
    o->offset = res->offset;
    o->done = 1;
    waiter_done(&wt, 0, res->msg_id);
}

static void added_cb(void *arg, int status, const log_append_result *res)
{
    added_msg *a = arg;
    if (status == 0)
        *a = (added_msg){1, res->shard, res->offset, res->msg_id};
    waiter_done(&wt, status, status == 0 ? res->msg_id : 0);
}

static void make_records(void)
{
    uint64_t st = 0x5eed;
    for (int c = 0; c < NCONVS; c++)
        conv_ids[c] = 1000 + (uint64_t)c * 7919;
    int created[NCONVS] = {0};
    for (int i = 0; i < NRECORDS; i++) {
        uint64_t x = fuzz_rand(&st);
        int c = (int)(x % NCONVS);
        rec_view *r = &recs[i].r;
        r->conv_id = conv_ids[c];
        r->sender_id = 1 + (x >> 8) % 50;
        r->ts_ms = 1700000000000ll + i * 37;
        if (!created[c]) {
            r->type = REC_CONV_CREATED;
            created[c] = 1;
        } else {
            unsigned t = (unsigned)((x >> 16) % 20);
            r->type = t < 16 ? REC_MESSAGE : (uint8_t)(REC_MEMBERS_CHANGED + (t - 16));
            if (r->type != REC_MESSAGE)
                r->msg_id = (x >> 24) % 40;
        }
        unsigned sz = (unsigned)((x >> 32) % 100);
        r->body_len = sz < 60 ? sz : sz < 95 ? 60 + sz * 3 : 1000 + sz * 20;
        r->key_len = (x >> 40) % 3 == 0 ? 16 : 0;
        uint8_t *b = malloc(r->body_len + r->key_len + 1);
        FUZZ_CHECK(b != NULL, "oom");
        fuzz_fill(x, b, r->body_len + r->key_len);
        r->key = r->key_len ? b : NULL;
        r->body = b + r->key_len;
    }
}

static void rewrite_manifest(const char *dir)
{
    char body[256], path[600];
    int len = snprintf(body, sizeof body,
                       "chatlog-manifest 1\nshards %u\ncreated_ms %lld\n",
                       NSHARDS, 1700000000000ll);
    len += snprintf(body + len, sizeof body - (size_t)len, "checksum %016llx\n",
                    (unsigned long long)XXH3_64bits(body, (size_t)len));
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    FUZZ_CHECK(fuzz_write_file(path, body, (size_t)len) == 0, "manifest");
}

static void write_pristine(variant *v, int no_compress)
{
    log_options o = {.shards = NSHARDS, .segment_bytes = SEG_BYTES,
                     .max_batch_bytes = MAX_BATCH, .no_compress = no_compress,
                     .io = fuzz_nosync_vfs(), .log_fn = fuzz_quiet_log};
    log_t *log;
    FUZZ_CHECK(log_open(v->dir, &o, &log) == 0, "open %s", v->dir);
    /* One record per shard stamped in the future: recovery makes it the
     * shard's clock, which then stamps every batch written after it. */
    for (uint32_t s = 0; s < NSHARDS; s++) {
        uint64_t conv_id = 1;
        while (log_shard_for(conv_id, NSHARDS) != s)
            conv_id++;
        rec_view r = {.type = REC_CONV_CREATED, .conv_id = conv_id, .ts_ms = FUTURE_MS};
        waiter_add(&wt);
        FUZZ_CHECK(log_append(log, &r, plain_cb, &wt) == 0, "append");
    }
    FUZZ_CHECK(waiter_wait(&wt) == 0, "clock records");
    FUZZ_CHECK(log_close(log) == 0, "close");

    o.max_wait_us = 1000000;
    FUZZ_CHECK(log_open(v->dir, &o, &log) == 0, "reopen %s", v->dir);
    for (uint32_t s = 0; s < NSHARDS; s++)
        FUZZ_CHECK(log_truncate_from(log, s, 0) == 0, "truncate");
    for (int i = 0; i < NRECORDS; i++) {
        recs[i].done = 0;
        if (recs[i].r.type == REC_MESSAGE)
            recs[i].r.msg_id = 0;
        waiter_add(&wt);
        FUZZ_CHECK(log_append(log, &recs[i].r, rec_cb, &recs[i]) == 0, "append");
    }
    /* Closing now lets the writers take the last, partial groups at once
     * instead of waiting max_wait_us for them to fill. */
    FUZZ_CHECK(log_close(log) == 0, "close");
    FUZZ_CHECK(waiter_wait(&wt) == 0, "appends");
    rewrite_manifest(v->dir);
}

/* ---- reading the pristine directories back ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int list_cb(const char *name, void *arg)
{
    variant *v = arg;
    v->files = realloc(v->files, (v->nfiles + 1) * sizeof *v->files);
    FUZZ_CHECK(v->files != NULL, "oom");
    v->files[v->nfiles++] = strdup(name);
    return 0;
}

static int same_rec(const rec_view *a, const rec_view *b)
{
    return a->type == b->type && a->conv_id == b->conv_id &&
           a->msg_id == b->msg_id && a->sender_id == b->sender_id &&
           a->ts_ms == b->ts_ms && a->key_len == b->key_len &&
           a->body_len == b->body_len &&
           (a->key_len == 0 || memcmp(a->key, b->key, a->key_len) == 0) &&
           (a->body_len == 0 || memcmp(a->body, b->body, a->body_len) == 0);
}

static void parse_segment(variant *v, uint32_t s, pseg *p, const char *shard_dir)
{
    io_vfs *io = io_posix();
    char path[PATH_MAX_LEN];
    name_segment(path, sizeof path, shard_dir, p->base, p->zlog ? SUFFIX_ZLOG : SUFFIX_LOG, 0);
    uint8_t *raw = NULL;
    size_t rlen = 0;
    if (p->zlog) {
        io_file *f;
        FUZZ_CHECK(io->open(io, path, IO_RDONLY, &f) == 0, "open %s", path);
        uint64_t end, raw_size, nrec;
        FUZZ_CHECK(zlog_load(io, f, s, p->base, &end, &raw_size, &nrec, &p->blocks,
                             &p->nblocks) == 0, "zlog_load %s", path);
        p->table_end = 56 + 32ull * p->nblocks + 8;
        raw = malloc(raw_size ? raw_size : 1);
        rbuf b = {0};
        for (uint32_t i = 0; i < p->nblocks; i++) {
            FUZZ_CHECK(zlog_read_block(io, f, &p->blocks[i], &b) == 0, "block");
            memcpy(raw + p->blocks[i].raw_pos, b.p, p->blocks[i].raw_len);
        }
        rbuf_free(&b);
        io->close(f);
        rlen = raw_size;
    } else {
        FUZZ_CHECK(fuzz_read_file(path, &raw, &rlen) == 0, "read %s", path);
    }
    uint64_t pos = 0, off = p->base;
    while (pos < rlen) {
        batch_header h;
        FUZZ_CHECK(batch_verify_at(raw + pos, rlen - pos, s, off, &h) == 0,
                   "pristine %s: bad batch at %llu", path, (unsigned long long)pos);
        p->batches = realloc(p->batches, (p->nbatches + 1) * sizeof *p->batches);
        p->batches[p->nbatches++] = (pbatch){pos, h.length, off, h.record_count};
        size_t rp = 0;
        rec_view r;
        for (uint32_t i = 0; batch_next_record(raw + pos, &h, &rp, &r) == 0; i++) {
            FUZZ_CHECK(off + i < shard_end[s], "record past the end");
            FUZZ_CHECK(same_rec(&r, &recs[by_off[s][off + i]].r),
                       "pristine record at offset %llu differs",
                       (unsigned long long)(off + i));
        }
        pos += h.length;
        off += h.record_count;
    }
    p->end = off;
    free(raw);
    (void)v;
}

static void parse_variant(variant *v)
{
    io_vfs *io = io_posix();
    list_cb(NAME_MANIFEST, v);
    for (uint32_t s = 0; s < NSHARDS; s++) {
        char sd[PATH_MAX_LEN], rel[64];
        name_shard_dir(sd, sizeof sd, v->dir, s);
        size_t first = v->nfiles;
        FUZZ_CHECK(io->list(io, sd, list_cb, v) == 0, "list %s", sd);
        for (size_t i = first; i < v->nfiles; i++) {
            snprintf(rel, sizeof rel, "shard-%04u/%s", s, v->files[i]);
            uint64_t base;
            int z = name_parse_segment(v->files[i], SUFFIX_ZLOG, &base) == 0;
            if (z || name_parse_segment(v->files[i], SUFFIX_LOG, &base) == 0) {
                v->segs[s] = realloc(v->segs[s], (v->nsegs[s] + 1) * sizeof(pseg));
                v->segs[s][v->nsegs[s]++] = (pseg){.base = base, .zlog = z};
            } else {
                FUZZ_CHECK(name_parse_segment(v->files[i], SUFFIX_IDX, &base) == 0,
                           "unexpected file %s", v->files[i]);
            }
            free(v->files[i]);
            v->files[i] = strdup(rel);
        }
        /* Segments in base order. */
        for (uint32_t i = 1; i < v->nsegs[s]; i++)
            for (uint32_t k = i; k > 0 && v->segs[s][k - 1].base > v->segs[s][k].base; k--) {
                pseg t = v->segs[s][k];
                v->segs[s][k] = v->segs[s][k - 1];
                v->segs[s][k - 1] = t;
            }
        uint64_t off = 0;
        for (uint32_t i = 0; i < v->nsegs[s]; i++) {
            FUZZ_CHECK(v->segs[s][i].base == off, "segments not contiguous");
            parse_segment(v, s, &v->segs[s][i], sd);
            off = v->segs[s][i].end;
        }
        FUZZ_CHECK(off == shard_end[s], "shard %u ends at %llu, wrote %llu", s,
                   (unsigned long long)off, (unsigned long long)shard_end[s]);
        FUZZ_CHECK(v->nsegs[s] >= 3, "shard %u has only %u segments", s, v->nsegs[s]);
    }
    qsort(v->files, v->nfiles, sizeof *v->files, cmp_str);
}

static void build_model(void)
{
    for (uint32_t s = 0; s < NSHARDS; s++) {
        shard_end[s] = 0;
        free(by_off[s]);
        by_off[s] = calloc(NRECORDS, sizeof **by_off);
    }
    for (int c = 0; c < NCONVS; c++) {
        free(msgs[c]);
        msgs[c] = calloc(NRECORDS, sizeof **msgs);
        nmsgs[c] = 0;
    }
    for (uint32_t i = 0; i < NRECORDS; i++) {
        orec *o = &recs[i];
        FUZZ_CHECK(o->done && o->shard < NSHARDS && o->offset < NRECORDS, "record %u", i);
        by_off[o->shard][o->offset] = i;
        if (o->offset + 1 > shard_end[o->shard])
            shard_end[o->shard] = o->offset + 1;
        if (o->r.type == REC_MESSAGE) {
            int c = 0;
            while (conv_ids[c] != o->r.conv_id)
                c++;
            FUZZ_CHECK(o->r.msg_id == nmsgs[c] + 1, "msg_id %llu after %llu",
                       (unsigned long long)o->r.msg_id, (unsigned long long)nmsgs[c]);
            msgs[c][nmsgs[c]++] = i;
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *tmp = fuzz_tmp_dir();
    devnull = fopen("/dev/null", "w");
    FUZZ_CHECK(devnull != NULL, "/dev/null");
    make_records();
    uint64_t digest[NVARIANTS];
    for (int k = 0; k < NVARIANTS; k++) {
        variant *v = &variants[k];
        snprintf(v->dir, sizeof v->dir, "%s/pristine-%d", tmp, k);
        fuzz_rm_rf(v->dir);
        write_pristine(v, k == 1);
        build_model();
        parse_variant(v);
        XXH3_state_t *st = XXH3_createState();
        XXH3_64bits_reset(st);
        for (size_t i = 0; i < v->nfiles; i++) {
            char p[1100];
            uint8_t *b;
            size_t n;
            snprintf(p, sizeof p, "%s/%s", v->dir, v->files[i]);
            FUZZ_CHECK(fuzz_read_file(p, &b, &n) == 0, "read %s", p);
            XXH3_64bits_update(st, v->files[i], strlen(v->files[i]) + 1);
            XXH3_64bits_update(st, b, n);
            free(b);
        }
        digest[k] = XXH3_64bits_digest(st);
        XXH3_freeState(st);
    }
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "recovery: pristine digests %016llx %016llx, %zu and %zu files\n",
                (unsigned long long)digest[0], (unsigned long long)digest[1],
                variants[0].nfiles, variants[1].nfiles);
    if (getenv("FUZZ_VERBOSE"))
        for (size_t i = 0; i < variants[0].nfiles; i++)
            fprintf(stderr, "recovery: file %zu: %s | %s\n", i, variants[0].files[i],
                    variants[1].files[i]);
    snprintf(work, sizeof work, "%s/work", tmp);
    return 0;
}

/* ---- applying the damage ---- */

typedef struct change {
    char rel[128]; /* relative path of the changed file */
    uint8_t *old, *neu;
    size_t old_len, new_len;
    int old_exists, new_exists;
} change;

static void apply(const variant *v, const uint8_t *data, size_t size, change *ch)
{
    const char *rel = v->files[data[0] % v->nfiles];
    int op = data[1] & 7;
    const uint8_t *d = data + 6;
    size_t dl = size - 6;
    char path[1100];
    snprintf(ch->rel, sizeof ch->rel, "%s", rel);

    if (op == 6) {
        /* A new file beside the chosen one. */
        const char *slash = strchr(rel, '/');
        char sdir[64];
        snprintf(sdir, sizeof sdir, "%.*s", slash ? (int)(slash - rel) : 10,
                 slash ? rel : "shard-0000");
        uint64_t base = 0;
        if (slash) {
            const char *name = slash + 1;
            if (strlen(name) > 20) {
                char digits[21];
                memcpy(digits, name, 20);
                digits[20] = 0;
                base = strtoull(digits, NULL, 10);
            }
        }
        int kind = dl > 0 ? d[0] % 5 : 0;
        int64_t delta = dl > 1 ? (int8_t)d[1] : 0;
        if (delta < 0 && (uint64_t)-delta > base)
            delta = -(int64_t)base;
        base += (uint64_t)delta;
        static const char *const sfx[] = {SUFFIX_LOG, SUFFIX_ZLOG, SUFFIX_IDX};
        if (kind < 3)
            snprintf(ch->rel, sizeof ch->rel, "%s/%020llu%s", sdir,
                     (unsigned long long)base, sfx[kind]);
        else if (kind == 3)
            snprintf(ch->rel, sizeof ch->rel, "%s/%s%020llu.log", sdir,
                     NAME_TMP_PREFIX, (unsigned long long)base);
        else
            snprintf(ch->rel, sizeof ch->rel, "%s/junk-%u", sdir, (unsigned)base);
        d += dl > 2 ? 2 : dl;
        dl -= dl > 2 ? 2 : dl;
    }
    snprintf(path, sizeof path, "%s/%s", work, ch->rel);
    ch->old_exists = fuzz_read_file(path, &ch->old, &ch->old_len) == 0;
    if (!ch->old_exists) {
        ch->old = NULL;
        ch->old_len = 0;
    }
    size_t pos = ch->old_len ? fuzz_u32(data + 2, 4) % (ch->old_len + 1) : 0;
    size_t cap = ch->old_len + dl + 1;
    uint8_t *n = calloc(1, cap);
    FUZZ_CHECK(n != NULL, "oom");
    if (ch->old_len)
        memcpy(n, ch->old, ch->old_len);
    size_t nlen = ch->old_len;
    ch->new_exists = 1;
    switch (op) {
    case 0: /* overwrite */
        memcpy(n + pos, d, dl);
        if (pos + dl > nlen)
            nlen = pos + dl;
        break;
    case 1: /* insert */
        memmove(n + pos + dl, n + pos, ch->old_len - pos);
        memcpy(n + pos, d, dl);
        nlen += dl;
        break;
    case 2: /* truncate */
        nlen = pos;
        break;
    case 3: /* bit flips */
        for (size_t i = 0; i + 1 < dl && i < 128; i += 2) {
            size_t at = pos + d[i] + 256u * (d[i + 1] >> 3);
            if (at < nlen)
                n[at] ^= (uint8_t)(1u << (d[i + 1] & 7));
        }
        break;
    case 4: /* delete */
        ch->new_exists = 0;
        nlen = 0;
        break;
    case 5: /* replace */
    case 6: /* create */
        memcpy(n, d, dl);
        nlen = dl;
        break;
    case 7: { /* zero a range */
        size_t z = dl > 0 ? (size_t)d[0] + 1 : 1;
        for (size_t i = pos; i < pos + z && i < nlen; i++)
            n[i] = 0;
        break;
    }
    }
    ch->neu = n;
    ch->new_len = nlen;
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "recovery: variant %d, op %d on %s at %zu: %zu -> %zu bytes%s\n",
                v == &variants[1], op, ch->rel, pos, ch->old_len, nlen,
                ch->new_exists ? "" : " (deleted)");
    if (ch->new_exists)
        FUZZ_CHECK(fuzz_write_file(path, n, nlen) == 0, "write %s", path);
    else
        unlink(path);
}

/* First byte that differs between the old and new file (the shorter length
 * if one is a prefix of the other), or SIZE_MAX when they are identical. */
static size_t first_change(const change *ch)
{
    if (ch->old_exists != ch->new_exists)
        return 0;
    size_t m = ch->old_len < ch->new_len ? ch->old_len : ch->new_len;
    for (size_t i = 0; i < m; i++)
        if (ch->old[i] != ch->neu[i])
            return i;
    return ch->old_len == ch->new_len ? SIZE_MAX : m;
}

/* Mark in ok[][] the records the damage may take; return 1 if the MANIFEST
 * changed. */
static int assess(const variant *v, const change *ch, uint8_t *ok[NSHARDS])
{
    size_t d = first_change(ch);
    if (d == SIZE_MAX)
        return 0;
    if (!strcmp(ch->rel, NAME_MANIFEST))
        return 1;
    unsigned s;
    char name[100];
    if (sscanf(ch->rel, "shard-%4u/%99s", &s, name) != 2 || s >= NSHARDS)
        return 0;
    uint64_t base;
    int is_log = name_parse_segment(name, SUFFIX_LOG, &base) == 0;
    int is_zlog = !is_log && name_parse_segment(name, SUFFIX_ZLOG, &base) == 0;
    if (!is_log && !is_zlog)
        return 0; /* sidecar, tmp- or unknown file: nothing is lost */
    const pseg *p = NULL;
    for (uint32_t i = 0; i < v->nsegs[s]; i++)
        if (v->segs[s][i].base == base)
            p = &v->segs[s][i];
    /* A .log beside a valid .zlog (rule 2: the .zlog wins), or a .zlog
     * beside a .log (only a valid one replaces it, and a valid one holds the
     * same bytes): the existing records stand. */
    if (p && p->zlog != is_zlog)
        return 0;
    if (!p) {
        /* A new segment file at an unused base B. Inside an existing
         * segment's range, recovery keeps it aside as .damaged (rule 6a,
         * finding 3, fixed): every record stays readable by offset. Past
         * the end it is a gap after the last record: nothing is lost. */
        return 0;
    }
    uint64_t lost_from = 0; /* raw position from which records may be lost */
    if (!ch->new_exists) {
        lost_from = 0;
    } else if (is_log) {
        lost_from = d;
    } else if (ch->new_len != ch->old_len || d < p->table_end) {
        lost_from = 0;
    } else {
        lost_from = 0;
        for (uint32_t i = 0; i < p->nblocks; i++)
            if (d >= p->blocks[i].file_pos &&
                d < p->blocks[i].file_pos + p->blocks[i].comp_len)
                lost_from = p->blocks[i].raw_pos;
    }
    for (uint32_t i = 0; i < p->nbatches; i++) {
        const pbatch *b = &p->batches[i];
        if (b->pos + b->len > lost_from)
            for (uint32_t k = 0; k < b->count; k++)
                ok[s][b->first_offset + k] = 0;
    }
    return 0;
}

/* ---- checking ---- */

typedef struct rf_ctx {
    uint32_t shard;
    uint64_t next, stop;
    int beyond_ok; /* records past the original end are allowed (appended) */
} rf_ctx;

static int rf_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                 const log_entry *e, size_t n)
{
    rf_ctx *c = arg;
    (void)bytes;
    FUZZ_CHECK(h->shard_id == c->shard, "batch of shard %u read from %u",
               h->shard_id, c->shard);
    for (size_t i = 0; i < n; i++) {
        if (e[i].offset >= c->stop)
            return 1;
        FUZZ_CHECK(e[i].offset == c->next, "shard %u: offset %llu after %llu",
                   c->shard, (unsigned long long)e[i].offset,
                   (unsigned long long)c->next);
        if (is_added(c->shard, e[i].offset))
            FUZZ_CHECK(e[i].rec.body_len == sizeof added_body - 1 &&
                           !memcmp(e[i].rec.body, added_body, sizeof added_body - 1),
                       "shard %u offset %llu: appended record differs", c->shard,
                       (unsigned long long)e[i].offset);
        else if (e[i].offset < shard_end[c->shard])
            FUZZ_CHECK(same_rec(&e[i].rec, &recs[by_off[c->shard][e[i].offset]].r),
                       "shard %u offset %llu: record differs", c->shard,
                       (unsigned long long)e[i].offset);
        else
            FUZZ_CHECK(c->beyond_ok, "shard %u offset %llu: past the original end %llu",
                       c->shard, (unsigned long long)e[i].offset,
                       (unsigned long long)shard_end[c->shard]);
        c->next++;
    }
    return 0;
}

static void check_read_from(log_t *log, uint8_t *ok[NSHARDS])
{
    for (uint32_t s = 0; s < NSHARDS; s++) {
        uint64_t o = 0;
        while (o < shard_end[s]) {
            if (!ok[s][o]) {
                o++;
                continue;
            }
            uint64_t hi = o;
            while (hi < shard_end[s] && ok[s][hi])
                hi++;
            rf_ctx c = {s, o, hi, 0};
            int rc = log_read_from(log, s, o, 0, rf_cb, &c);
            FUZZ_CHECK(c.next >= hi,
                       "shard %u: intact offsets [%llu, %llu) read only to %llu: %s",
                       s, (unsigned long long)o, (unsigned long long)hi,
                       (unsigned long long)c.next, cl_strerror(rc));
            o = hi;
        }
    }
}

static int msg_ok(int c, uint64_t m, uint8_t *ok[NSHARDS])
{
    const orec *o = &recs[msgs[c][m - 1]];
    return ok[o->shard][o->offset];
}

/* Read a conversation forward, stepping over damaged messages. Returns the
 * number of read errors. */
static int check_conv(log_t *log, int c, uint8_t *ok[NSHARDS], int strict)
{
    uint64_t cursor = 0;
    int errors = 0;
    uint8_t *seen = calloc(nmsgs[c] + 1, 1);
    for (int guard = 0; guard < (int)nmsgs[c] + 2; guard++) {
        log_result res = {0};
        int more = 0;
        int rc = log_read_conv(log, conv_ids[c], cursor, LOG_AFTER, 64, &res, &more);
        FUZZ_CHECK(rc == 0 || rc == CL_ECORRUPT, "read_conv: %s", cl_strerror(rc));
        for (size_t i = 0; i < res.n; i++) {
            const log_entry *e = &res.entries[i];
            uint64_t m = cursor + 1 + i;
            FUZZ_CHECK(e->rec.msg_id == m && e->rec.conv_id == conv_ids[c],
                       "conv %d: msg_id %llu where %llu expected", c,
                       (unsigned long long)e->rec.msg_id, (unsigned long long)m);
            if (added[c].valid && added[c].msg_id == m) {
                FUZZ_CHECK(e->offset == added[c].offset, "appended msg moved");
            } else if (m <= nmsgs[c]) {
                const orec *o = &recs[msgs[c][m - 1]];
                FUZZ_CHECK(same_rec(&e->rec, &o->r) && e->offset == o->offset &&
                               e->shard == o->shard,
                           "conv %d msg %llu differs", c, (unsigned long long)m);
                seen[m] = 1;
            } else {
                FUZZ_CHECK(strict == 0, "conv %d: msg %llu past the original %llu",
                           c, (unsigned long long)m, (unsigned long long)nmsgs[c]);
            }
        }
        if (rc == CL_ECORRUPT) {
            errors++;
            uint64_t bad = cursor + res.n + 1;
            FUZZ_CHECK(bad > nmsgs[c] || !msg_ok(c, bad, ok),
                       "conv %d: intact msg %llu unreadable", c, (unsigned long long)bad);
            cursor = bad;
        } else {
            cursor += res.n;
        }
        log_result_free(&res);
        if (rc == 0 && !more)
            break;
    }
    for (uint64_t m = 1; m <= nmsgs[c]; m++)
        FUZZ_CHECK(seen[m] || !msg_ok(c, m, ok), "conv %d: intact msg %llu not returned",
                   c, (unsigned long long)m);
    free(seen);

    /* The newest page, backwards: whatever comes is an original message. */
    log_result res = {0};
    int more;
    int rc = log_read_conv(log, conv_ids[c], 0, LOG_BEFORE, 8, &res, &more);
    FUZZ_CHECK(rc == 0 || rc == CL_ECORRUPT, "read_conv before: %s", cl_strerror(rc));
    for (size_t i = 0; i < res.n; i++) {
        uint64_t m = res.entries[i].rec.msg_id;
        FUZZ_CHECK(i == 0 || m == res.entries[i - 1].rec.msg_id - 1, "not descending");
        if (m >= 1 && m <= nmsgs[c] && !(added[c].valid && added[c].msg_id == m))
            FUZZ_CHECK(same_rec(&res.entries[i].rec, &recs[msgs[c][m - 1]].r),
                       "conv %d msg %llu differs (before)", c, (unsigned long long)m);
    }
    log_result_free(&res);
    return errors;
}

typedef struct dmg_sum {
    int nontorn, torn;
} dmg_sum;

static void dmg_cb(void *arg, const log_damage *d)
{
    dmg_sum *s = arg;
    if (d->torn_tail)
        s->torn++;
    else
        s->nontorn++;
}

static void check_appends(log_t *log, uint8_t *ok[NSHARDS])
{
    for (int c = 0; c < NCONVS; c++) {
        uint64_t last = log_conv_last_msg_id(log, conv_ids[c]);
        uint64_t keep = 0;
        for (uint64_t m = 1; m <= nmsgs[c]; m++)
            if (msg_ok(c, m, ok))
                keep = m;
        FUZZ_CHECK(last >= keep && last <= nmsgs[c],
                   "conv %d: last msg_id %llu, intact up to %llu, wrote %llu", c,
                   (unsigned long long)last, (unsigned long long)keep,
                   (unsigned long long)nmsgs[c]);
        log_shard_info info;
        FUZZ_CHECK(log_shard_info_get(log, log_shard_of(log, conv_ids[c]), &info) == 0,
                   "info");
        FUZZ_CHECK(info.failed == 0 || info.failed == CL_EDAMAGED, "shard failed: %s",
                   cl_strerror(info.failed));
        rec_view r = {.type = REC_MESSAGE, .conv_id = conv_ids[c], .sender_id = 9,
                      .ts_ms = FUTURE_MS, .body = added_body,
                      .body_len = sizeof added_body - 1};
        waiter_add(&wt);
        int rc = log_append(log, &r, added_cb, &added[c]);
        if (rc)
            waiter_done(&wt, 0, 0);
        if (info.failed == CL_EDAMAGED) {
            FUZZ_CHECK(rc == CL_EDAMAGED, "append to a fenced shard: %s",
                       cl_strerror(rc));
            continue;
        }
        FUZZ_CHECK(rc == 0, "append: %s", cl_strerror(rc));
        FUZZ_CHECK(waiter_wait(&wt) == 0, "append callback failed");
        FUZZ_CHECK(added[c].valid && added[c].msg_id == last + 1, "conv %d: new msg_id %llu after %llu", c,
                   (unsigned long long)added[c].msg_id, (unsigned long long)last);
    }
}

/* After verify passed: everything reads back without error. */
static void check_clean(void)
{
    log_options o = {.read_only = 1, .shards = NSHARDS, .log_fn = fuzz_quiet_log};
    log_t *log;
    int rc = log_open(work, &o, &log);
    FUZZ_CHECK(rc == 0, "read-only open after verify passed: %s", cl_strerror(rc));
    dmg_sum ds = {0, 0};
    log_damage_each(log, dmg_cb, &ds);
    FUZZ_CHECK(ds.nontorn == 0 && ds.torn == 0,
               "verify passed but a reopen finds %d damaged ranges, %d torn tails",
               ds.nontorn, ds.torn);
    for (uint32_t s = 0; s < NSHARDS; s++) {
        log_segment_info si;
        uint64_t from = log_segment_info_get(log, s, 0, &si) == 0 ? si.base_offset : 0;
        rf_ctx c = {s, from, UINT64_MAX, 1};
        rc = log_read_from(log, s, from, 0, rf_cb, &c);
        FUZZ_CHECK(rc == 0, "verify passed but shard %u reads fail at %llu: %s", s,
                   (unsigned long long)c.next, cl_strerror(rc));
    }
    uint8_t *none[NSHARDS];
    for (uint32_t s = 0; s < NSHARDS; s++)
        none[s] = calloc(shard_end[s] + 1, 1);
    for (int c = 0; c < NCONVS; c++)
        FUZZ_CHECK(check_conv(log, c, none, 0) == 0,
                   "verify passed but conversation %d has unreadable messages", c);
    for (uint32_t s = 0; s < NSHARDS; s++)
        free(none[s]);
    FUZZ_CHECK(log_close(log) == 0, "close");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    if (!work[0])
        LLVMFuzzerInitialize(NULL, NULL);
    const variant *v = &variants[(data[1] >> 3) & 1];
    fuzz_rm_rf(work);
    FUZZ_CHECK(fuzz_copy_tree(v->dir, work) == 0, "copy");
    change ch, ch2;
    memset(&ch, 0, sizeof ch);
    memset(&ch2, 0, sizeof ch2);
    int two = 0;
    if ((data[1] & 0x10) && size >= 7 && (size_t)7 + data[6] + 6 <= size) {
        /* Two changes: the first one's data is data[7 .. 7 + data[6]), the
         * rest of the input is the second change (its variant bit and its
         * own bit 4 are ignored). */
        size_t l1 = data[6];
        uint8_t *first = malloc(6 + l1);
        FUZZ_CHECK(first != NULL, "oom");
        memcpy(first, data, 6);
        memcpy(first + 6, data + 7, l1);
        apply(v, first, 6 + l1, &ch);
        free(first);
        apply(v, data + 7 + l1, size - 7 - l1, &ch2);
        two = 1;
    } else {
        apply(v, data, size, &ch);
    }
    uint8_t *ok[NSHARDS];
    for (uint32_t s = 0; s < NSHARDS; s++) {
        ok[s] = malloc(shard_end[s] + 1);
        memset(ok[s], 1, shard_end[s]);
    }
    memset(added, 0, sizeof added);
    int manifest_changed;
    if (two && !strcmp(ch.rel, ch2.rel)) {
        /* The same file twice: one change from the pristine bytes to the
         * final ones. */
        change both = ch2;
        both.old = ch.old;
        both.old_len = ch.old_len;
        both.old_exists = ch.old_exists;
        manifest_changed = assess(v, &both, ok);
    } else {
        manifest_changed = assess(v, &ch, ok);
        if (two)
            manifest_changed |= assess(v, &ch2, ok);
    }

    log_options o = {.shards = NSHARDS, .segment_bytes = SEG_BYTES,
                     .max_batch_bytes = MAX_BATCH, .no_compress = v == &variants[1],
                     .io = fuzz_nosync_vfs(), .log_fn = fuzz_quiet_log};
    log_t *log = NULL;
    int rc = log_open(work, &o, &log);
    if (rc == CL_EMANIFEST && manifest_changed) {
        FUZZ_CHECK(rcv_verify(work, devnull) == CL_EMANIFEST, "verify of a bad manifest");
        goto out;
    }
    FUZZ_CHECK(rc == 0, "log_open after damage to %s: %s", ch.rel, cl_strerror(rc));

    dmg_sum ds = {0, 0};
    log_damage_each(log, dmg_cb, &ds);
    check_read_from(log, ok);
    for (int c = 0; c < NCONVS; c++)
        check_conv(log, c, ok, 1);
    check_appends(log, ok);
    rc = log_close(log);
    FUZZ_CHECK(rc == 0, "log_close: %s", cl_strerror(rc));

    int vr = rcv_verify(work, devnull);
    FUZZ_CHECK(vr == 0 || vr == 1, "verify: %d", vr);
    FUZZ_CHECK(ds.nontorn == 0 || vr == 1,
               "recovery reported %d damaged ranges but verify passed", ds.nontorn);
    if (vr == 0)
        check_clean();
out:
    for (uint32_t s = 0; s < NSHARDS; s++)
        free(ok[s]);
    free(ch.old);
    free(ch.neu);
    free(ch2.old);
    free(ch2.neu);
    fuzz_rm_rf(work);
    return 0;
}
