/* Power loss, fdatasync failure and a full disk, through the fault-injecting
 * I/O layer (tests/support/io_fault.c): unsynced writes are dropped, torn at
 * 512-byte sectors or garbled; after recovery no acked record may be missing
 * or changed and the log must verify. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "errors.h"
#include "helpers.h"
#include "io_fault.h"
#include "log.h"
#include "test.h"
#include "verify.h"

#define NCONV 12
#define MAX_ACKED 200000

typedef struct acked {
    uint64_t conv, msg_id, hash;
} acked;

typedef struct run {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    acked *acks;
    size_t nacks;
    int inflight;
    int failures;
    int first_err;
} run;

typedef struct app_ctx {
    run *r;
    uint64_t conv, hash;
} app_ctx;

static void ack_cb(void *arg, int status, const log_append_result *res)
{
    app_ctx *a = arg;
    run *r = a->r;
    pthread_mutex_lock(&r->mu);
    if (status == 0 && r->nacks < MAX_ACKED)
        r->acks[r->nacks++] = (acked){a->conv, res->msg_id, a->hash};
    if (status) {
        r->failures++;
        if (!r->first_err)
            r->first_err = status;
    }
    r->inflight--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    free(a);
}

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Append one message with a body derived from the PRNG; 0 or the error of
 * log_append (then no callback comes). */
static int append_one(log_t *log, run *r, uint64_t *seed)
{
    char body[600];
    uint64_t conv = 1 + rng(seed) % NCONV;
    size_t len = 1 + rng(seed) % 500;
    for (size_t i = 0; i < len; i++)
        body[i] = (char)('a' + rng(seed) % 26);
    app_ctx *a = malloc(sizeof *a);
    a->r = r;
    a->conv = conv;
    a->hash = XXH3_64bits(body, len);
    rec_view rec = {.type = REC_MESSAGE, .conv_id = conv, .sender_id = 9,
                    .body = (const uint8_t *)body, .body_len = (uint32_t)len};
    pthread_mutex_lock(&r->mu);
    r->inflight++;
    pthread_mutex_unlock(&r->mu);
    int rc = log_append(log, &rec, ack_cb, a);
    if (rc) {
        pthread_mutex_lock(&r->mu);
        r->inflight--;
        pthread_mutex_unlock(&r->mu);
        free(a);
    }
    return rc;
}

static void wait_inflight_below(run *r, int n)
{
    pthread_mutex_lock(&r->mu);
    while (r->inflight > n)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

/* Every acked record is there with its body, conversations are dense, and
 * the log verifies. */
static void check_acked(const char *dir, run *r)
{
    log_t *log;
    log_options o = {.segment_bytes = 64 << 10}; /* shard count from manifest */
    ASSERT_OK(log_open(dir, &o, &log));
    /* Read each conversation once, whole and in order. */
    uint64_t *hashes[NCONV + 1] = {0};
    long count[NCONV + 1] = {0};
    for (uint64_t c = 1; c <= NCONV; c++) {
        log_result res = {0};
        ASSERT_OK(log_read_conv(log, c, 0, LOG_AFTER, UINT32_MAX, &res, NULL));
        hashes[c] = calloc(res.n + 1, sizeof(uint64_t));
        for (size_t i = 0; i < res.n; i++) {
            ASSERT_U64_EQ(res.entries[i].rec.msg_id, i + 1); /* dense, ordered */
            hashes[c][i] = XXH3_64bits(res.entries[i].rec.body,
                                       res.entries[i].rec.body_len);
        }
        count[c] = (long)res.n;
        log_result_free(&res);
    }
    for (size_t i = 0; i < r->nacks; i++) {
        acked *a = &r->acks[i];
        if ((long)a->msg_id > count[a->conv])
            FAIL("acked conv %llu msg %llu missing after recovery (have %ld)",
                 (unsigned long long)a->conv, (unsigned long long)a->msg_id,
                 count[a->conv]);
        ASSERT_U64_EQ(hashes[a->conv][a->msg_id - 1], a->hash);
    }
    for (uint64_t c = 1; c <= NCONV; c++)
        free(hashes[c]);
    ASSERT_OK(log_close(log));
    FILE *devnull = fopen("/dev/null", "w");
    int v = rcv_verify(dir, devnull);
    fclose(devnull);
    ASSERT_EQ(v, 0);
}

static void run_init(run *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->acks = calloc(MAX_ACKED, sizeof *r->acks);
    ASSERT(r->acks);
}

TEST(powerloss_acked_records_survive_every_crash_mode)
{
    uint64_t seed = test_seed() * 7919 + 1;
    run r;
    run_init(&r);
    for (int round = 0; round < 24; round++) {
        io_vfs *vfs = iofault_new(seed + (uint64_t)round);
        ASSERT(vfs);
        log_t *log;
        ASSERT_OK(th_open(test_dir(), vfs, 64 << 10, &log));
        /* Keep a few hundred appends in flight, then pull the plug at a
         * random moment (by count: deterministic per seed). */
        uint64_t s = seed ^ (uint64_t)(round + 1) * 0x9E3779B97F4A7C15ull;
        int n = 200 + (int)(rng(&s) % 3000);
        for (int i = 0; i < n; i++) {
            if (append_one(log, &r, &s))
                break;
            if (i % 256 == 255)
                wait_inflight_below(&r, 128);
        }
        int mode = round % 4;
        iofault_crash(vfs, mode);
        log_close(log); /* everything after the crash fails with EIO */
        wait_inflight_below(&r, 0);
        iofault_free(vfs);
        check_acked(test_dir(), &r);
    }
    ASSERT_GT(r.nacks, 1000);
    printf("  %zu acked records checked over 24 power losses\n", r.nacks);
    free(r.acks);
}

TEST(powerloss_fdatasync_eio_fails_the_shard_and_acks_nothing_more)
{
    io_vfs *vfs = iofault_new(test_seed());
    log_t *log;
    log_options o = {.shards = 1, .segment_bytes = 1 << 20, .io = vfs};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    run r;
    run_init(&r);
    uint64_t s = 42;
    for (int i = 0; i < 50; i++) {
        ASSERT_OK(append_one(log, &r, &s));
        wait_inflight_below(&r, 0);
    }
    ASSERT_EQ(r.nacks, 50);
    iofault_fail_fdatasync_after(vfs, 0, -EIO);
    ASSERT_OK(append_one(log, &r, &s));
    wait_inflight_below(&r, 0);
    ASSERT_EQ(r.nacks, 50);     /* not acked */
    ASSERT_EQ(r.first_err, -EIO);
    /* Sticky: later appends are refused, nothing is retried as if written. */
    int rc = append_one(log, &r, &s);
    wait_inflight_below(&r, 0);
    ASSERT(rc == CL_EFAILED || r.failures == 2);
    log_shard_info si;
    ASSERT_OK(log_shard_info_get(log, 0, &si));
    ASSERT_EQ(si.failed, -EIO);
    ASSERT_EQ(si.records, 50);
    ASSERT_EQ(log_close(log), -EIO);
    iofault_free(vfs);
    check_acked(test_dir(), &r);
    free(r.acks);
}

TEST(powerloss_enospc_fails_the_append_and_keeps_the_log_valid)
{
    io_vfs *vfs = iofault_new(test_seed());
    log_t *log;
    log_options o = {.shards = 1, .segment_bytes = 1 << 20, .io = vfs};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    run r;
    run_init(&r);
    uint64_t s = 7;
    for (int i = 0; i < 20; i++) {
        ASSERT_OK(append_one(log, &r, &s));
        wait_inflight_below(&r, 0);
    }
    iofault_set_space_limit(vfs, iofault_used_bytes(vfs) + 300);
    int enospc = 0;
    for (int i = 0; i < 20 && !enospc; i++) {
        ASSERT_OK(append_one(log, &r, &s));
        wait_inflight_below(&r, 0);
        enospc = r.first_err == -ENOSPC;
    }
    ASSERT(enospc);
    size_t acked_before = r.nacks;
    /* Not sticky: with space again, appends go on and msg_ids stay dense. */
    iofault_set_space_limit(vfs, IOFAULT_NO_LIMIT);
    r.first_err = 0;
    for (int i = 0; i < 20; i++) {
        ASSERT_OK(append_one(log, &r, &s));
        wait_inflight_below(&r, 0);
    }
    ASSERT_EQ(r.first_err, 0);
    ASSERT_EQ(r.nacks, acked_before + 20);
    ASSERT_OK(log_close(log));
    iofault_free(vfs);
    check_acked(test_dir(), &r);
    free(r.acks);
}
