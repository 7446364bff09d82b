/* Recovery rules (recovery/recovery.c) and the verifier (recovery/verify.c),
 * on plain files damaged the way crashes and bad disks damage them. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"
#include "helpers.h"
#include "log.h"
#include "test.h"
#include "verify.h"

/* Path of the n-th (0-based, sorted) file with suffix in a shard dir, or
 * NULL. */
static const char *nth_file(const char *dir, uint32_t shard, const char *suffix,
                            int n)
{
    static char out[4096];
    char sd[4096];
    snprintf(sd, sizeof sd, "%s/shard-%04u", dir, shard);
    struct dirent **list;
    int cnt = scandir(sd, &list, NULL, alphasort);
    const char *res = NULL;
    int seen = 0;
    for (int i = 0; i < cnt; i++) {
        size_t l = strlen(list[i]->d_name), sl = strlen(suffix);
        if (!res && l > sl && !strcmp(list[i]->d_name + l - sl, suffix) &&
            seen++ == n) {
            snprintf(out, sizeof out, "%s/%s", sd, list[i]->d_name);
            res = out;
        }
        free(list[i]);
    }
    if (cnt >= 0)
        free(list);
    return res;
}

static int last_log(const char *dir, uint32_t shard, char *out, size_t n)
{
    const char *p = NULL;
    for (int i = 0;; i++) {
        const char *q = nth_file(dir, shard, ".log", i);
        if (!q)
            break;
        snprintf(out, n, "%s", q);
        p = out;
    }
    return p ? 0 : -1;
}

static off_t file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) ? -1 : st.st_size;
}

static void flip_byte(const char *p, off_t at)
{
    int fd = open(p, O_RDWR);
    ASSERT(fd >= 0);
    uint8_t b;
    ASSERT_EQ(pread(fd, &b, 1, at), 1);
    b ^= 0x10;
    ASSERT_EQ(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

typedef struct dmg_count {
    int torn, corrupt;
    uint64_t cut;
} dmg_count;

static void count_damage(void *arg, const log_damage *d)
{
    dmg_count *c = arg;
    if (d->torn_tail) {
        c->torn++;
        c->cut += d->bytes;
    } else {
        c->corrupt++;
    }
}

static int verify_quiet(const char *dir)
{
    FILE *f = fopen("/dev/null", "w");
    int rc = rcv_verify(dir, f);
    fclose(f);
    return rc;
}

TEST(recovery_cuts_torn_tail_and_keeps_acked)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    ASSERT_OK(th_append_many(log, 1, "acked", 100));
    uint32_t sh = log_shard_of(log, 1);
    ASSERT_OK(log_close(log));
    char p[4096];
    ASSERT_OK(last_log(test_dir(), sh, p, sizeof p));
    off_t size = file_size(p);
    /* A torn write: half a batch of garbage-ish bytes at the end. */
    FILE *f = fopen(p, "a");
    fwrite("CLB1\x01\x00\x00\x00\xff\x00\x00\x00partial", 1, 19, f);
    fclose(f);
    ASSERT_EQ(verify_quiet(test_dir()), 0); /* a torn tail is a note */
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    dmg_count dc = {0};
    log_damage_each(log, count_damage, &dc);
    ASSERT_EQ(dc.torn, 1);
    ASSERT_EQ(dc.corrupt, 0);
    ASSERT_EQ(dc.cut, 19);
    ASSERT_EQ(th_count_conv(log, 1), 100);
    uint64_t id;
    ASSERT_OK(th_append_msg(log, 1, "next", &id));
    ASSERT_U64_EQ(id, 101);
    ASSERT_OK(log_close(log));
    ASSERT_EQ(file_size(p), size + (off_t)(BATCH_OVERHEAD + RECORD_HEADER_SIZE + 4));
    ASSERT_EQ(verify_quiet(test_dir()), 0);
}

TEST(recovery_truncated_last_batch_loses_only_it)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    for (int i = 0; i < 5; i++)
        ASSERT_OK(th_append_msg(log, 2, "one batch each", NULL));
    uint32_t sh = log_shard_of(log, 2);
    ASSERT_OK(log_close(log));
    char p[4096];
    ASSERT_OK(last_log(test_dir(), sh, p, sizeof p));
    ASSERT_OK(truncate(p, file_size(p) - 1));
    ASSERT_OK(th_open(test_dir(), NULL, 0, &log));
    ASSERT_EQ(th_count_conv(log, 2), 4);
    ASSERT_OK(log_close(log));
    ASSERT_EQ(verify_quiet(test_dir()), 0);
}

TEST(recovery_flipped_bit_in_sealed_segment_is_corruption)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    uint32_t sh = log_shard_of(log, 3);
    uint64_t other = 4;
    while (log_shard_of(log, other) != sh)
        other++;
    for (int i = 0; i < 6; i++) {
        ASSERT_OK(th_append_many(log, 3, "victim conversation", 500));
        ASSERT_OK(th_append_many(log, other, "neighbour", 500));
    }
    ASSERT_OK(log_close(log));
    const char *z = nth_file(test_dir(), sh, ".zlog", 1);
    ASSERT(z != NULL);
    char zp[4096];
    snprintf(zp, sizeof zp, "%s", z);
    flip_byte(zp, file_size(zp) / 2);

    ASSERT_EQ(verify_quiet(test_dir()), 1);
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    dmg_count dc = {0};
    log_damage_each(log, count_damage, &dc);
    ASSERT_EQ(dc.torn, 0); /* never mistaken for a torn tail */
    /* The sidecar still knows every message; reads of the damaged block fail
     * cleanly and everything else is served. */
    uint64_t last = log_conv_last_msg_id(log, 3);
    ASSERT_U64_EQ(last, 3000);
    int ok = 0, corrupt = 0;
    for (uint64_t m = 0; m < last; m += 50) {
        log_result r = {0};
        int rc = log_read_conv(log, 3, m, LOG_AFTER, 50, &r, NULL);
        if (rc == 0 && r.n == 50)
            ok++;
        else if (rc == CL_ECORRUPT)
            corrupt++;
        else
            FAIL("read after %llu: rc %d n %zu", (unsigned long long)m, rc, r.n);
        log_result_free(&r);
    }
    ASSERT_GT(corrupt, 0);
    ASSERT_GT(ok, corrupt);
    /* Appends still work, and the file was not truncated. */
    off_t zsize = file_size(zp);
    uint64_t id;
    ASSERT_OK(th_append_msg(log, 3, "still alive", &id));
    ASSERT_U64_EQ(id, 3001);
    ASSERT_OK(log_close(log));
    ASSERT_EQ(file_size(zp), zsize);
    ASSERT_EQ(verify_quiet(test_dir()), 1);
}

TEST(recovery_flipped_bit_in_sealed_raw_segment_without_sidecar)
{
    log_t *log;
    log_options o = {.shards = 1, .segment_bytes = 64 << 10, .no_compress = 1};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    ASSERT_OK(th_append_many(log, 7, "uncompressed history", 4000));
    ASSERT_OK(log_close(log));
    const char *p0 = nth_file(test_dir(), 0, ".log", 1);
    ASSERT(p0);
    char p[4096];
    snprintf(p, sizeof p, "%s", p0);
    const char *idx0 = nth_file(test_dir(), 0, ".idx", 1);
    ASSERT(idx0);
    ASSERT_OK(unlink(idx0));
    flip_byte(p, 1000);
    ASSERT_OK(log_open(test_dir(), &o, &log));
    dmg_count dc = {0};
    log_damage_each(log, count_damage, &dc);
    ASSERT_EQ(dc.torn, 0);
    ASSERT_EQ(dc.corrupt, 1);
    /* The damaged batch's msg_ids are known from the next batch: holes. */
    uint64_t last = log_conv_last_msg_id(log, 7);
    ASSERT_U64_EQ(last, 4000);
    log_result r = {0};
    ASSERT_EQ(log_read_conv(log, 7, 0, LOG_AFTER, 4000, &r, NULL), CL_ECORRUPT);
    ASSERT_GT(r.n, 0); /* messages before the damage were returned */
    log_result_free(&r);
    ASSERT_OK(log_read_conv(log, 7, 3500, LOG_AFTER, 500, &r, NULL));
    ASSERT_EQ(r.n, 500);
    log_result_free(&r);
    /* Which msg_ids the damaged batch held is unknown (no sidecar): writes
     * are refused rather than risk reusing an acked one. */
    ASSERT_EQ(th_append_msg(log, 7, "refused", NULL), CL_EDAMAGED);
    ASSERT_OK(log_close(log));
    ASSERT(file_size(p) > 1000);
}

TEST(recovery_mid_log_damage_in_active_segment_is_not_a_torn_tail)
{
    /* More than LOG_MAX_WRITE_BYTES after the damage means the damaged bytes
     * were synced: recovery must fence them, not cut the log there. */
    log_t *log;
    log_options o = {.shards = 1, .segment_bytes = 64ull << 20};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    static char body[2000];
    memset(body, 'z', sizeof body - 1);
    for (int i = 0; i < 4; i++)
        ASSERT_OK(th_append_many(log, 8, body, 1500)); /* ~12 MB */
    ASSERT_OK(log_close(log));
    char p[4096];
    ASSERT_OK(last_log(test_dir(), 0, p, sizeof p));
    off_t size = file_size(p);
    ASSERT_GT(size, (off_t)LOG_MAX_WRITE_BYTES * 2);
    flip_byte(p, 100000);
    ASSERT_OK(log_open(test_dir(), &o, &log));
    dmg_count dc = {0};
    log_damage_each(log, count_damage, &dc);
    ASSERT_EQ(dc.torn, 0);
    ASSERT_EQ(dc.corrupt, 1);
    ASSERT_U64_EQ(log_conv_last_msg_id(log, 8), 6000);
    ASSERT_EQ(th_append_msg(log, 8, "after damage", NULL), CL_EDAMAGED);
    log_shard_info si;
    ASSERT_OK(log_shard_info_get(log, 0, &si));
    ASSERT_EQ(si.failed, CL_EDAMAGED);
    ASSERT_OK(log_close(log));
    ASSERT_EQ(file_size(p), size); /* nothing cut, nothing appended after */
    ASSERT_EQ(verify_quiet(test_dir()), 1);
}

TEST(recovery_removes_tmp_files_and_settles_zlog_pairs)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    ASSERT_OK(th_append_many(log, 9, "pairs", 3000));
    uint32_t sh = log_shard_of(log, 9);
    ASSERT_OK(log_close(log));
    const char *z = nth_file(test_dir(), sh, ".zlog", 0);
    ASSERT(z);
    char zp[4096], lp[4096], tp[4096];
    snprintf(zp, sizeof zp, "%s", z);
    /* Crash after the rename of the .zlog, before the unlink of the .log. */
    snprintf(lp, sizeof lp, "%.*s.log", (int)(strlen(zp) - 5), zp);
    FILE *f = fopen(lp, "w");
    fputs("stale raw copy", f);
    fclose(f);
    /* And an unfinished temporary file. */
    snprintf(tp, sizeof tp, "%s/shard-%04u/tmp-00000000000000099999.zlog",
             test_dir(), sh);
    f = fopen(tp, "w");
    fputs("half", f);
    fclose(f);
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    ASSERT_EQ(th_count_conv(log, 9), 3000);
    ASSERT_OK(log_close(log));
    ASSERT_EQ(access(lp, F_OK), -1);
    ASSERT_EQ(access(tp, F_OK), -1);
    ASSERT_EQ(access(zp, F_OK), 0);
    ASSERT_EQ(verify_quiet(test_dir()), 0);
}

TEST(recovery_bad_sidecar_is_rebuilt)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    ASSERT_OK(th_append_many(log, 12, "sidecar", 3000));
    uint32_t sh = log_shard_of(log, 12);
    ASSERT_OK(log_close(log));
    const char *ip = nth_file(test_dir(), sh, ".idx", 0);
    ASSERT(ip);
    char p[4096];
    snprintf(p, sizeof p, "%s", ip);
    flip_byte(p, 60);
    ASSERT_EQ(verify_quiet(test_dir()), 1);
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    ASSERT_EQ(th_count_conv(log, 12), 3000);
    ASSERT_OK(log_close(log)); /* sealer rewrote the sidecar */
    ASSERT_EQ(verify_quiet(test_dir()), 0);
}

TEST(verify_passes_clean_log_and_fails_on_missing_segment)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 64 << 10, &log));
    for (uint64_t c = 1; c <= 20; c++)
        ASSERT_OK(th_append_many(log, c, "verify me", c == 1 ? 4000 : 300));
    ASSERT_OK(log_close(log));
    ASSERT_EQ(verify_quiet(test_dir()), 0);
    /* A missing middle segment is a gap: verify fails. */
    const char *z = nth_file(test_dir(), log_shard_for(1, 4), ".zlog", 1);
    ASSERT(z);
    ASSERT_OK(unlink(z));
    ASSERT_EQ(verify_quiet(test_dir()), 1);
}

TEST(recovery_unreadable_last_zlog_stays_fenced_across_reopens)
{
    /* Regression (found by fuzz/recovery): the last segment is a .zlog whose
     * block table is unreadable, so its end offset is unknown. Recovery used
     * to start a new active segment at the damaged one's own base; the next
     * open then saw <base>.log beside a bad <base>.zlog, deleted the .zlog
     * and forgot the damage — letting msg_ids be handed out again. */
    log_t *log;
    log_options o = {.shards = 1, .segment_bytes = 64 << 10};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    ASSERT_OK(th_append_many(log, 5, "soon unreadable", 3000));
    ASSERT_OK(log_close(log));
    /* Lose the active segment (as if its creation never reached the disk),
     * then damage the block table of the last sealed one. */
    char active[4096];
    ASSERT_OK(last_log(test_dir(), 0, active, sizeof active));
    ASSERT_OK(unlink(active));
    const char *z = NULL;
    for (int i = 0;; i++) {
        const char *q = nth_file(test_dir(), 0, ".zlog", i);
        if (!q)
            break;
        z = q;
    }
    ASSERT(z);
    char zp[4096];
    snprintf(zp, sizeof zp, "%s", z);
    flip_byte(zp, 60);
    for (int round = 0; round < 2; round++) {
        ASSERT_OK(log_open(test_dir(), &o, &log));
        dmg_count dc = {0};
        log_damage_each(log, count_damage, &dc);
        ASSERT_GE(dc.corrupt, 1);
        ASSERT_EQ(th_append_msg(log, 5, "must not get a reused id", NULL), CL_EDAMAGED);
        ASSERT_OK(log_close(log));
        ASSERT_EQ(access(zp, F_OK), 0); /* the damaged file is kept */
    }
    ASSERT_EQ(verify_quiet(test_dir()), 1);
}

TEST(recovery_damage_near_the_end_of_many_small_writes_is_not_a_torn_tail)
{
    /* Regression (review): damage within 4 MiB of the end of the active
     * segment used to be cut as a "torn tail" although every later write had
     * been synced and acked. Only the last write can be torn. */
    log_t *log;
    log_options o = {.shards = 1, .segment_bytes = 64ull << 20};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    for (int i = 0; i < 400; i++) /* many separate writes (groups) */
        ASSERT_OK(th_append_many(log, 3, "acked and synced", 10));
    ASSERT_OK(log_close(log));
    char p[4096];
    ASSERT_OK(last_log(test_dir(), 0, p, sizeof p));
    off_t size = file_size(p);
    ASSERT_LT(size, (off_t)LOG_MAX_WRITE_BYTES);
    flip_byte(p, size / 4);
    ASSERT_EQ(verify_quiet(test_dir()), 1);
    ASSERT_OK(log_open(test_dir(), &o, &log));
    dmg_count dc = {0};
    log_damage_each(log, count_damage, &dc);
    ASSERT_EQ(dc.torn, 0);
    ASSERT_EQ(dc.corrupt, 1);
    ASSERT_U64_EQ(log_conv_last_msg_id(log, 3), 4000); /* all still indexed */
    ASSERT_OK(log_close(log));
    ASSERT_EQ(file_size(p), size); /* nothing cut */
}

TEST(recovery_torn_last_write_is_cut_and_kept_aside)
{
    log_t *log;
    log_options o = {.shards = 1};
    ASSERT_OK(log_open(test_dir(), &o, &log));
    for (int i = 0; i < 20; i++)
        ASSERT_OK(th_append_many(log, 4, "before the tear", 5));
    ASSERT_OK(th_append_msg(log, 4, "the last write, alone", NULL));
    ASSERT_OK(log_close(log));
    char p[4096];
    ASSERT_OK(last_log(test_dir(), 0, p, sizeof p));
    off_t size = file_size(p);
    /* Tear the last write: keep its first bytes only. */
    ASSERT_OK(truncate(p, size - 40));
    ASSERT_OK(log_open(test_dir(), &o, &log));
    dmg_count dc = {0};
    log_damage_each(log, count_damage, &dc);
    ASSERT_EQ(dc.torn, 1);
    ASSERT_EQ(dc.corrupt, 0);
    ASSERT_U64_EQ(log_conv_last_msg_id(log, 4), 100);
    ASSERT_OK(log_close(log));
    char kept[4200];
    snprintf(kept, sizeof kept, "%s.tail-%llu.damaged", p,
             (unsigned long long)file_size(p));
    ASSERT_EQ(access(kept, F_OK), 0);
    ASSERT_EQ(file_size(kept), size - 40 - file_size(p));
    ASSERT_EQ(verify_quiet(test_dir()), 0);
}

/* log_read_from callback: offsets must follow each other from *arg. */
static int count_from_cb(void *arg, const batch_header *h, const uint8_t *b,
                         const log_entry *e, size_t n)
{
    uint64_t *next = arg;
    for (size_t i = 0; i < n; i++)
        if (e[i].offset != (*next)++)
            return CL_ECORRUPT;
    return 0;
}

/* Finding 3 of docs/fuzzing.md: an empty stray segment file whose base lies
 * inside another segment's range made reads by offset fail past its base and
 * fenced the shard against writes. Recovery now keeps it aside. */
TEST(recovery_stray_segment_inside_another_is_kept_aside)
{
    log_t *log;
    ASSERT_OK(th_open(test_dir(), NULL, 16 << 10, &log));
    ASSERT_OK(th_append_many(log, 1, "a-fairly-long-message-body-for-rolling", 400));
    uint32_t sh = log_shard_of(log, 1);
    log_segment_info s0;
    ASSERT_OK(log_segment_info_get(log, sh, 0, &s0));
    ASSERT_OK(log_close(log));
    ASSERT_GT(s0.end_offset, 10);
    char stray[4096], kept[4200];
    snprintf(stray, sizeof stray, "%s/shard-%04u/%020llu.log", test_dir(), sh,
             (unsigned long long)(s0.base_offset + 5));
    FILE *f = fopen(stray, "w");
    ASSERT(f);
    fclose(f);
    ASSERT_OK(th_open(test_dir(), NULL, 16 << 10, &log));
    dmg_count dc = {0};
    log_damage_each(log, count_damage, &dc);
    ASSERT_EQ(dc.corrupt, 0);
    log_shard_info si;
    ASSERT_OK(log_shard_info_get(log, sh, &si));
    ASSERT_EQ(si.failed, 0); /* writes not fenced */
    ASSERT_EQ(th_count_conv(log, 1), 400);
    uint64_t next = 0;
    ASSERT_OK(log_read_from(log, sh, 0, 0, count_from_cb, &next));
    ASSERT_U64_EQ(next, si.next_offset);
    uint64_t id;
    ASSERT_OK(th_append_msg(log, 1, "next", &id));
    ASSERT_U64_EQ(id, 401);
    ASSERT_OK(log_close(log));
    struct stat st;
    ASSERT_NE(stat(stray, &st), 0);
    snprintf(kept, sizeof kept, "%s.damaged", stray);
    ASSERT_OK(stat(kept, &st));
    ASSERT_EQ(verify_quiet(test_dir()), 0);
}
