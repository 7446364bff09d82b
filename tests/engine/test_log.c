/* Unit tests of the engine (engine/log.c, index.c, segment.c). */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "errors.h"
#include "helpers.h"
#include "log.h"
#include "test.h"

static int count_files(const char *dir, const char *suffix)
{
    int n = 0;
    char shard[4096];
    for (int s = 0; s < 64; s++) {
        snprintf(shard, sizeof shard, "%s/shard-%04d", dir, s);
        DIR *d = opendir(shard);
        if (!d)
            break;
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name), sl = strlen(suffix);
            if (l > sl && !strcmp(e->d_name + l - sl, suffix))
                n++;
        }
        closedir(d);
    }
    return n;
}

TEST(log_append_assigns_dense_msg_ids)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    uint64_t id;
    for (uint64_t i = 1; i <= 10; i++) {
        ASSERT_OK(th_append_msg(log, 77, "hi", &id));
        ASSERT_U64_EQ(id, i);
    }
    ASSERT_OK(th_append_msg(log, 78, "other", &id));
    ASSERT_U64_EQ(id, 1);
    ASSERT_U64_EQ(log_conv_last_msg_id(log, 77), 10);
    ASSERT_OK(log_close(log));
}

TEST(log_read_conv_after_and_before)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    ASSERT_OK(th_append_many(log, 5, "m", 30));
    log_result r = {0};
    int more;
    ASSERT_OK(log_read_conv(log, 5, 10, LOG_AFTER, 5, &r, &more));
    ASSERT_EQ(r.n, 5);
    ASSERT_EQ(more, 1);
    for (size_t i = 0; i < r.n; i++) {
        char want[32];
        snprintf(want, sizeof want, "m-%zu", 10 + i);
        ASSERT_U64_EQ(r.entries[i].rec.msg_id, 11 + i);
        ASSERT_EQ(r.entries[i].rec.body_len, strlen(want));
        ASSERT_MEM_EQ(r.entries[i].rec.body, want, strlen(want));
    }
    log_result_free(&r);
    ASSERT_OK(log_read_conv(log, 5, 0, LOG_BEFORE, 3, &r, &more));
    ASSERT_EQ(r.n, 3);
    ASSERT_U64_EQ(r.entries[0].rec.msg_id, 30);
    ASSERT_U64_EQ(r.entries[2].rec.msg_id, 28);
    ASSERT_EQ(more, 1);
    log_result_free(&r);
    ASSERT_OK(log_read_conv(log, 5, 3, LOG_BEFORE, 10, &r, &more));
    ASSERT_EQ(r.n, 2);
    ASSERT_EQ(more, 0);
    log_result_free(&r);
    ASSERT_OK(log_read_conv(log, 5, 30, LOG_AFTER, 10, &r, &more));
    ASSERT_EQ(r.n, 0);
    ASSERT_EQ(more, 0);
    log_result_free(&r);
    ASSERT_OK(log_read_conv(log, 999, 0, LOG_AFTER, 10, &r, &more));
    ASSERT_EQ(r.n, 0);
    log_result_free(&r);
    ASSERT_OK(log_close(log));
}

TEST(log_msg_ids_continue_after_restart)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    ASSERT_OK(th_append_many(log, 9, "a", 7));
    ASSERT_OK(log_close(log));
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    uint64_t id;
    ASSERT_OK(th_append_msg(log, 9, "b", &id));
    ASSERT_U64_EQ(id, 8);
    ASSERT_EQ(th_count_conv(log, 9), 8);
    ASSERT_OK(log_close(log));
}

TEST(log_roll_seal_compress_and_reload)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    for (int c = 1; c <= 4; c++)
        ASSERT_OK(th_append_many(log, (uint64_t)c, "a fairly ordinary chat line", 2000));
    ASSERT_OK(log_close(log)); /* waits for the sealer */
    ASSERT_GT(count_files(test_dir(), ".zlog"), 4);
    ASSERT_EQ(count_files(test_dir(), ".zlog"), count_files(test_dir(), ".idx"));
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    for (int c = 1; c <= 4; c++)
        ASSERT_EQ(th_count_conv(log, (uint64_t)c), 2000);
    uint64_t raw = 0, disk = 0;
    for (uint32_t s = 0; s < log_shard_count(log); s++) {
        log_shard_info si;
        ASSERT_OK(log_shard_info_get(log, s, &si));
        raw += si.raw_bytes;
        disk += si.disk_bytes;
        ASSERT_EQ(si.damaged_ranges, 0);
    }
    ASSERT_LT(disk * 2, raw); /* repetitive text compresses well */
    uint64_t id;
    ASSERT_OK(th_append_msg(log, 1, "after reload", &id));
    ASSERT_U64_EQ(id, 2001);
    ASSERT_OK(log_close(log));
}

TEST(log_restart_without_sidecars_rebuilds_them)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    ASSERT_OK(th_append_many(log, 3, "x", 5000));
    ASSERT_OK(log_close(log));
    int idx = count_files(test_dir(), ".idx");
    ASSERT_GT(idx, 2);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -f %s/shard-*/*.idx", test_dir());
    ASSERT_EQ(system(cmd), 0);
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    ASSERT_EQ(th_count_conv(log, 3), 5000);
    ASSERT_OK(log_close(log));
    ASSERT_EQ(count_files(test_dir(), ".idx"), idx);
}

typedef struct collect {
    uint64_t next_offset;
    long records;
    int bad;
} collect;

static int collect_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                      const log_entry *e, size_t n)
{
    collect *c = arg;
    (void)bytes;
    for (size_t i = 0; i < n; i++) {
        if (e[i].offset != c->next_offset || e[i].offset < h->first_offset)
            c->bad++;
        c->next_offset = e[i].offset + 1;
        c->records++;
    }
    return 0;
}

TEST(log_read_from_walks_every_offset)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    ASSERT_OK(th_append_many(log, 11, "payload", 3000));
    uint32_t sh = log_shard_of(log, 11);
    collect c = {0};
    ASSERT_OK(log_read_from(log, sh, 0, 0, collect_cb, &c));
    ASSERT_EQ(c.records, 3000);
    ASSERT_EQ(c.bad, 0);
    /* From the middle: starts exactly at the asked offset. */
    c = (collect){.next_offset = 1234};
    ASSERT_OK(log_read_from(log, sh, 1234, 0, collect_cb, &c));
    ASSERT_EQ(c.records, 3000 - 1234);
    ASSERT_EQ(c.bad, 0);
    ASSERT_OK(log_close(log));
}

TEST(log_manifest_guards_shard_count)
{
    log_t *log;
    log_options o = {.shards = 8};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    ASSERT_EQ(log_shard_count(log), 8);
    ASSERT_OK(log_close(log));
    o.shards = 16;
    ASSERT_EQ(log_open(test_dir(), &o, &log), CL_EMANIFEST);
    o.shards = 0;
    ASSERT_OK(log_open(test_dir(), &o, &log));
    ASSERT_EQ(log_shard_count(log), 8);
    ASSERT_OK(log_close(log));
    /* A damaged manifest is refused, not silently replaced. */
    FILE *f = fopen(test_path(0, "MANIFEST"), "r+");
    ASSERT(f);
    fseek(f, 28, SEEK_SET);
    fputc('9', f);
    fclose(f);
    ASSERT_EQ(log_open(test_dir(), &o, &log), CL_EMANIFEST);
}

TEST(log_shard_hash_is_stable)
{
    /* The mapping is part of the on-disk format: pin a few values. */
    uint32_t a = log_shard_for(1, 16), b = log_shard_for(42, 16),
             c = log_shard_for(UINT64_MAX, 16);
    ASSERT(a < 16 && b < 16 && c < 16);
    int spread[16] = {0};
    for (uint64_t i = 0; i < 16000; i++)
        spread[log_shard_for(i, 16)]++;
    for (int i = 0; i < 16; i++)
        ASSERT(spread[i] > 800 && spread[i] < 1200);
    ASSERT_EQ(log_shard_for(1, 16), a); /* deterministic */
}

typedef struct order_check {
    pthread_mutex_t mu;
    uint64_t last[8];
    int bad;
    long commits;
} order_check;

static void on_commit(void *arg, uint32_t shard, const log_entry *e, size_t n)
{
    order_check *oc = arg;
    (void)shard;
    pthread_mutex_lock(&oc->mu);
    for (size_t i = 0; i < n; i++) {
        uint64_t conv = e[i].rec.conv_id;
        if (conv < 8) {
            if (e[i].rec.msg_id != oc->last[conv] + 1)
                oc->bad++;
            oc->last[conv] = e[i].rec.msg_id;
        }
        oc->commits++;
    }
    pthread_mutex_unlock(&oc->mu);
}

typedef struct prod_arg {
    log_t *log;
    int conv;
    int n;
    int rc;
} prod_arg;

static void *producer(void *p)
{
    prod_arg *a = p;
    a->rc = th_append_many(a->log, (uint64_t)a->conv, "p", a->n);
    return NULL;
}

TEST(log_concurrent_producers_keep_order_and_stream)
{
    order_check oc = {.mu = PTHREAD_MUTEX_INITIALIZER};
    log_options o = {.shards = 2, .on_commit = on_commit, .commit_arg = &oc};
    log_t *log;
    ASSERT_OK(log_open(test_dir(), &o, &log));
    pthread_t t[8];
    prod_arg a[8];
    for (int i = 0; i < 8; i++) {
        a[i] = (prod_arg){log, i % 4, 500, 0};
        pthread_create(&t[i], NULL, producer, &a[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        ASSERT_OK(a[i].rc);
    }
    for (int c = 0; c < 4; c++)
        ASSERT_EQ(th_count_conv(log, (uint64_t)c), 1000);
    ASSERT_EQ(oc.bad, 0);
    ASSERT_EQ(oc.commits, 4000);
    ASSERT_OK(log_close(log));
}

TEST(log_truncate_from_drops_suffix)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    uint32_t sh = log_shard_of(log, 21);
    ASSERT_OK(th_append_many(log, 21, "keep", 10));
    log_shard_info si;
    ASSERT_OK(log_shard_info_get(log, sh, &si));
    uint64_t cut = si.next_offset;
    ASSERT_OK(th_append_many(log, 21, "drop", 10));
    ASSERT_OK(log_truncate_from(log, sh, cut));
    ASSERT_EQ(th_count_conv(log, 21), 10);
    uint64_t id;
    ASSERT_OK(th_append_msg(log, 21, "new", &id));
    ASSERT_U64_EQ(id, 11);
    ASSERT_OK(log_close(log));
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    log_result r = {0};
    ASSERT_OK(log_read_conv(log, 21, 10, LOG_AFTER, 10, &r, NULL));
    ASSERT_EQ(r.n, 1);
    ASSERT_MEM_EQ(r.entries[0].rec.body, "new", 3);
    log_result_free(&r);
    ASSERT_OK(log_close(log));
}

TEST(log_rejects_bad_appends)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    rec_view r = {.type = REC_MESSAGE, .conv_id = 1, .msg_id = 5};
    ASSERT_EQ(log_append(log, &r, NULL, NULL), CL_EINVAL); /* msg_id is ours */
    r.msg_id = 0;
    r.type = 99;
    ASSERT_EQ(log_append(log, &r, NULL, NULL), CL_EINVAL);
    r.type = REC_MESSAGE;
    static uint8_t big[RECORD_MAX_BODY + 1];
    r.body = big;
    r.body_len = sizeof big;
    ASSERT_EQ(log_append(log, &r, NULL, NULL), CL_ETOOBIG);
    ASSERT_OK(log_close(log));
}

TEST(log_index_memory_under_16_bytes_per_message)
{
    log_t *log;
    log_options o = {.shards = 4, .fsync = LOG_FSYNC_NONE};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    /* A chat-like spread: a few busy conversations, many quiet ones. */
    long total = 0;
    for (int c = 1; c <= 400; c++) {
        int n = c <= 10 ? 3000 : c <= 100 ? 300 : 40;
        ASSERT_OK(th_append_many(log, (uint64_t)c, "x", n));
        total += n;
    }
    uint64_t mem = 0;
    for (uint32_t s = 0; s < log_shard_count(log); s++) {
        log_shard_info si;
        ASSERT_OK(log_shard_info_get(log, s, &si));
        mem += si.index_bytes;
    }
    double per = (double)mem / (double)total;
    printf("  index: %.2f bytes/message over %ld messages\n", per, total);
    ASSERT_LT(mem, 16 * (uint64_t)total);
    ASSERT_OK(log_close(log));
}

TEST(log_manifest_shard_count_that_wraps_is_refused)
{
    /* Regression (fuzz/manifest): "shards 7750904230986121217" parsed with
     * %u wrapped modulo 2^32 into a valid-looking count. */
    char body[256];
    int n = snprintf(body, sizeof body,
                     "chatlog-manifest 1\nshards 000007750904230986121217\ncreated_ms 1\n");
    n += snprintf(body + n, sizeof body - (size_t)n, "checksum %016llx\n",
                  (unsigned long long)XXH3_64bits(body, (size_t)n));
    FILE *f = fopen(test_path(0, "MANIFEST"), "w");
    ASSERT(f);
    fwrite(body, 1, (size_t)n, f);
    fclose(f);
    log_t *log;
    ASSERT_EQ(log_open(test_dir(), NULL, &log), CL_EMANIFEST);
}
