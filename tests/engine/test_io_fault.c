/* Unit tests of the fault-injecting vfs (tests/support/io_fault.c), and one
 * power-loss test of the engine on top of it. Every test name starts with
 * "fault_" so that `build/tests/unit fault` runs exactly these. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"
#include "helpers.h"
#include "io_fault.h"
#include "log.h"
#include "test.h"

/* The real file's bytes, read past the vfs: its size, or -1 if missing. */
static long real_read(const char *path, uint8_t *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = pread(fd, buf, cap, 0);
    close(fd);
    return (long)n;
}

static long real_size(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

static void fill(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 7 + (i >> 8));
}

/* Create path through v, write n bytes of pattern seed at 0, fdatasync, and
 * fsync the directory: durable. */
static void make_synced(io_vfs *v, const char *path, size_t n, uint8_t seed)
{
    io_file *f;
    uint8_t *b = malloc(n);
    ASSERT(b);
    fill(b, n, seed);
    ASSERT_OK(v->open(v, path, IO_RDWR | IO_CREATE, &f));
    ASSERT_OK(v->pwrite(f, b, n, 0));
    ASSERT_OK(v->fdatasync(f));
    ASSERT_OK(v->close(f));
    ASSERT_OK(v->fsync_dir(v, test_dir()));
    free(b);
}

TEST(fault_pending_visible_to_pread_not_on_disk)
{
    io_vfs *v = iofault_new(1);
    const char *p = test_path(0, "f");
    io_file *f;
    ASSERT_OK(v->open(v, p, IO_RDWR | IO_CREATE, &f));
    ASSERT_OK(v->pwrite(f, "hello", 5, 0));
    ASSERT_OK(v->pwrite(f, "world", 5, 1000)); /* leaves a hole */
    ASSERT_OK(v->pwrite(f, "J", 1, 0));        /* later write wins */

    uint8_t buf[2048];
    uint64_t sz;
    ASSERT_OK(v->size(f, &sz));
    ASSERT_U64_EQ(sz, 1005);
    ASSERT_EQ(v->pread(f, buf, sizeof buf, 0), 1005);
    ASSERT_MEM_EQ(buf, "Jello", 5);
    for (int i = 5; i < 1000; i++)
        ASSERT_EQ(buf[i], 0);
    ASSERT_MEM_EQ(buf + 1000, "world", 5);
    ASSERT_EQ(v->pread(f, buf, 3, 1001), 3);
    ASSERT_MEM_EQ(buf, "orl", 3);
    ASSERT_EQ(v->pread(f, buf, 10, 1005), 0);

    ASSERT_EQ(real_size(p), 0); /* nothing reached the disk */
    iofault_stats st;
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.pwrites, 3);
    ASSERT_U64_EQ(st.bytes_written, 11);
    ASSERT_U64_EQ(st.pending_bytes, 11);
    ASSERT_U64_EQ(st.bytes_synced, 0);

    ASSERT_OK(v->fdatasync(f));
    ASSERT_EQ(real_read(p, buf, sizeof buf), 1005);
    ASSERT_MEM_EQ(buf, "Jello", 5);
    ASSERT_MEM_EQ(buf + 1000, "world", 5);
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.fdatasyncs, 1);
    ASSERT_U64_EQ(st.bytes_synced, 11);
    ASSERT_U64_EQ(st.pending_bytes, 0);
    ASSERT_OK(v->close(f));
    iofault_free(v);
}

TEST(fault_pending_survives_close_and_is_shared_by_handles)
{
    io_vfs *v = iofault_new(2);
    const char *p = test_path(0, "f");
    io_file *a, *b;
    uint8_t buf[16];
    ASSERT_OK(v->open(v, p, IO_RDWR | IO_CREATE, &a));
    ASSERT_OK(v->pwrite(a, "abcdef", 6, 0));
    ASSERT_OK(v->close(a));
    ASSERT_OK(v->open(v, p, IO_RDONLY, &b));
    ASSERT_EQ(v->pread(b, buf, sizeof buf, 0), 6);
    ASSERT_MEM_EQ(buf, "abcdef", 6);
    ASSERT_EQ(v->pwrite(b, "x", 1, 0), -EBADF);
    ASSERT_EQ(real_size(p), 0);
    /* fdatasync through a read-only handle still writes the file through. */
    ASSERT_OK(v->fdatasync(b));
    ASSERT_EQ(real_read(p, buf, sizeof buf), 6);
    ASSERT_MEM_EQ(buf, "abcdef", 6);
    ASSERT_OK(v->close(b));
    iofault_free(v);
}

TEST(fault_truncate_cuts_pending_writes)
{
    io_vfs *v = iofault_new(3);
    const char *p = test_path(0, "f");
    make_synced(v, p, 100, 1);
    io_file *f;
    uint8_t buf[256], want[100];
    fill(want, sizeof want, 1);
    ASSERT_OK(v->open(v, p, IO_RDWR, &f));
    ASSERT_OK(v->pwrite(f, "0123456789", 10, 95)); /* crosses 100 */
    ASSERT_OK(v->pwrite(f, "ZZ", 2, 150));
    ASSERT_OK(v->truncate(f, 98));
    uint64_t sz;
    ASSERT_OK(v->size(f, &sz));
    ASSERT_U64_EQ(sz, 98);
    ASSERT_EQ(real_size(p), 98);
    ASSERT_EQ(v->pread(f, buf, sizeof buf, 0), 98);
    ASSERT_MEM_EQ(buf, want, 95);
    ASSERT_MEM_EQ(buf + 95, "012", 3);
    iofault_stats st;
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.pending_bytes, 3);
    ASSERT_OK(v->fdatasync(f));
    ASSERT_EQ(real_read(p, buf, sizeof buf), 98);
    ASSERT_MEM_EQ(buf + 95, "012", 3);
    ASSERT_OK(v->close(f));
    iofault_free(v);
}

TEST(fault_crash_drop_loses_unsynced_keeps_synced)
{
    io_vfs *v = iofault_new(4);
    const char *p = test_path(0, "f");
    make_synced(v, p, 3000, 9);
    io_file *f;
    ASSERT_OK(v->open(v, p, IO_RDWR, &f));
    uint8_t junk[2000], buf[8192], want[3000];
    fill(junk, sizeof junk, 200);
    fill(want, sizeof want, 9);
    ASSERT_OK(v->pwrite(f, junk, sizeof junk, 2500)); /* overwrite + extend */
    ASSERT_OK(v->pwrite(f, junk, 10, 0));
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_DROP));
    ASSERT_EQ(real_read(p, buf, sizeof buf), 3000);
    ASSERT_MEM_EQ(buf, want, 3000);
    ASSERT_EQ(v->close(f), -EIO);
    iofault_free(v);
}

TEST(fault_crash_keep_writes_everything)
{
    io_vfs *v = iofault_new(5);
    const char *p = test_path(0, "f");
    make_synced(v, p, 1000, 9);
    io_file *f;
    uint8_t buf[4096];
    ASSERT_OK(v->open(v, p, IO_RDWR, &f));
    ASSERT_OK(v->pwrite(f, "tail", 4, 1000));
    ASSERT_OK(v->pwrite(f, "head", 4, 0));
    uint8_t want[1004];
    ASSERT_EQ(v->pread(f, want, sizeof want, 0), 1004);
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_KEEP));
    ASSERT_EQ(real_read(p, buf, sizeof buf), 1004);
    ASSERT_MEM_EQ(buf, want, 1004);
    ASSERT_MEM_EQ(buf, "head", 4);
    v->close(f);
    iofault_free(v);
}

/* One torn crash of a file with `old` synced and `nw` bytes of new data
 * written unaligned at `off`; checks every sector is all old, all new or
 * (garble) neither, and bytes outside dirty sectors never change. Counts the
 * outcomes seen. */
typedef struct tear_seen {
    int sectors_new, sectors_old, sectors_garbage;
    int files_torn; /* some new and some old sectors in one file */
} tear_seen;

static void one_torn_crash(uint64_t seed, int mode, tear_seen *seen)
{
    enum { OLD = 8192, OFF = 1000, NW = 9000 };
    char name[32];
    snprintf(name, sizeof name, "t%llu", (unsigned long long)seed);
    const char *p = test_path(1, name);
    io_vfs *v = iofault_new(seed);
    make_synced(v, p, OLD, 3);
    static uint8_t old[OLD], nw[NW], img[OFF + NW], buf[32768];
    fill(old, OLD, 3);
    fill(nw, NW, 101);
    memcpy(img, old, OLD);
    memcpy(img + OFF, nw, NW);
    io_file *f;
    ASSERT_OK(v->open(v, p, IO_RDWR, &f));
    /* Several writes, the way the log appends batch after batch. */
    ASSERT_OK(v->pwrite(f, nw, 3000, OFF));
    ASSERT_OK(v->pwrite(f, nw + 3000, 6000, OFF + 3000));
    ASSERT_OK(iofault_crash(v, mode));
    long n = real_read(p, buf, sizeof buf);
    ASSERT_GE(n, OLD);
    ASSERT_LE(n, OFF + NW);
    /* Synced bytes before the first dirty sector are untouched. */
    ASSERT_MEM_EQ(buf, old, (OFF / IOFAULT_SECTOR) * IOFAULT_SECTOR);
    static uint8_t before[OFF + NW]; /* what a left-out sector reads as */
    memset(before, 0, sizeof before);
    memcpy(before, old, OLD);
    int n_new = 0, n_old = 0;
    for (long a = (OFF / IOFAULT_SECTOR) * IOFAULT_SECTOR; a < n;
         a += IOFAULT_SECTOR) {
        long b = a + IOFAULT_SECTOR < n ? a + IOFAULT_SECTOR : n;
        /* Bytes of the first sector before OFF were synced and never
         * pending: no fate may change them. */
        if (a < OFF)
            ASSERT_MEM_EQ(buf + a, old + a, (size_t)(OFF - a));
        long lo = a > OFF ? a : OFF;
        size_t len = (size_t)(b - lo);
        if (!memcmp(buf + lo, img + lo, len))
            seen->sectors_new++, n_new++;
        else if (!memcmp(buf + lo, before + lo, len))
            seen->sectors_old++, n_old++;
        else if (mode == IOFAULT_CRASH_GARBLE)
            seen->sectors_garbage++;
        else
            FAIL("seed %llu: sector at %ld is neither old nor new",
                 (unsigned long long)seed, a);
    }
    /* The file ends at a sector boundary or where the writes ended, never
     * in the middle of a sector. */
    if (n > OLD)
        ASSERT(n % IOFAULT_SECTOR == 0 || n == OFF + NW);
    if (n_new && n_old)
        seen->files_torn++;
    v->close(f);
    iofault_free(v);
}

TEST(fault_crash_tear_is_at_sector_boundaries)
{
    tear_seen seen = {0};
    for (uint64_t seed = 1; seed <= 60; seed++)
        one_torn_crash(test_seed() + seed, IOFAULT_CRASH_TEAR, &seen);
    /* Over 60 crashes each fate occurs (a fixed seed makes this stable). */
    ASSERT_GT(seen.sectors_new, 0);
    ASSERT_GT(seen.sectors_old, 0);
    ASSERT_GT(seen.files_torn, 0);
    ASSERT_EQ(seen.sectors_garbage, 0);
}

TEST(fault_crash_garble_fills_sectors_with_garbage)
{
    tear_seen seen = {0};
    for (uint64_t seed = 1; seed <= 60; seed++)
        one_torn_crash(test_seed() + seed, IOFAULT_CRASH_GARBLE, &seen);
    ASSERT_GT(seen.sectors_new, 0);
    ASSERT_GT(seen.sectors_old, 0);
    ASSERT_GT(seen.sectors_garbage, 0);
}

TEST(fault_crash_is_deterministic_per_seed)
{
    uint8_t a[16384], b[16384];
    long na = 0, nb = 0;
    for (int round = 0; round < 2; round++) {
        const char *p = test_path(0, round ? "b" : "a");
        io_vfs *v = iofault_new(777);
        io_file *f;
        uint8_t data[6000];
        fill(data, sizeof data, 50);
        ASSERT_OK(v->open(v, p, IO_RDWR | IO_CREATE, &f));
        ASSERT_OK(v->pwrite(f, data, sizeof data, 0));
        ASSERT_OK(v->pwrite(f, data, sizeof data, 6000));
        ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_GARBLE));
        v->close(f);
        iofault_free(v);
        if (round)
            nb = real_read(p, b, sizeof b);
        else
            na = real_read(p, a, sizeof a);
    }
    ASSERT_EQ(na, nb);
    if (na > 0)
        ASSERT_MEM_EQ(a, b, (size_t)na);
}

TEST(fault_everything_fails_with_eio_after_crash)
{
    io_vfs *v = iofault_new(6);
    const char *p = test_path(0, "f");
    make_synced(v, p, 600, 1);
    io_file *f;
    ASSERT_OK(v->open(v, p, IO_RDWR, &f));
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_KEEP));
    ASSERT(iofault_crashed(v));
    uint8_t buf[16];
    uint64_t sz;
    io_file *g;
    ASSERT_EQ(v->pwrite(f, "x", 1, 0), -EIO);
    ASSERT_EQ(v->pread(f, buf, 1, 0), -EIO);
    ASSERT_EQ(v->fdatasync(f), -EIO);
    ASSERT_EQ(v->truncate(f, 0), -EIO);
    ASSERT_EQ(v->size(f, &sz), -EIO);
    ASSERT_EQ(v->open(v, p, IO_RDONLY, &g), -EIO);
    ASSERT_EQ(v->open(v, test_path(1, "new"), IO_RDWR | IO_CREATE, &g), -EIO);
    ASSERT_EQ(v->rename(v, p, test_path(1, "moved")), -EIO);
    ASSERT_EQ(v->unlink(v, p), -EIO);
    ASSERT_EQ(v->mkdir(v, test_path(1, "d")), -EIO);
    ASSERT_EQ(v->fsync_dir(v, test_dir()), -EIO);
    ASSERT_EQ(v->exists(v, p), -EIO);
    ASSERT_EQ(v->list(v, test_dir(), NULL, NULL), -EIO);
    ASSERT_EQ(iofault_crash(v, IOFAULT_CRASH_DROP), -EIO);
    /* Nothing of it reached the disk. */
    ASSERT_EQ(real_size(p), 600);
    ASSERT_EQ(real_size(test_path(1, "new")), -1);
    ASSERT_EQ(real_size(test_path(1, "moved")), -1);
    ASSERT_EQ(real_size(test_path(1, "d")), -1);
    ASSERT_EQ(v->close(f), -EIO); /* still releases the handle */
    iofault_free(v);
}

TEST(fault_fail_fdatasync_returns_error_and_drops_data)
{
    io_vfs *v = iofault_new(7);
    const char *p = test_path(0, "f");
    io_file *f;
    uint8_t buf[64];
    ASSERT_OK(v->open(v, p, IO_RDWR | IO_CREATE, &f));
    iofault_fail_fdatasync_after(v, 1, -EIO);
    ASSERT_OK(v->pwrite(f, "first", 5, 0));
    ASSERT_OK(v->fdatasync(f)); /* the 1st passes */
    ASSERT_OK(v->pwrite(f, "second", 6, 5));
    ASSERT_EQ(v->fdatasync(f), -EIO); /* the 2nd fails */
    /* The data did not reach the disk and is gone from the cache too. */
    ASSERT_EQ(real_read(p, buf, sizeof buf), 5);
    ASSERT_MEM_EQ(buf, "first", 5);
    uint64_t sz;
    ASSERT_OK(v->size(f, &sz));
    ASSERT_U64_EQ(sz, 5);
    ASSERT_EQ(v->pread(f, buf, sizeof buf, 0), 5);
    /* One shot: the next one works. */
    ASSERT_OK(v->pwrite(f, "third", 5, 5));
    ASSERT_OK(v->fdatasync(f));
    ASSERT_EQ(real_read(p, buf, sizeof buf), 10);
    ASSERT_MEM_EQ(buf, "firstthird", 10);
    iofault_stats st;
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.fdatasyncs, 3);
    ASSERT_U64_EQ(st.injected, 1);
    /* Other errors, and cancelling. */
    iofault_fail_fdatasync_after(v, 0, -ENOSPC);
    ASSERT_EQ(v->fdatasync(f), -ENOSPC);
    iofault_fail_fdatasync_after(v, 0, -EIO);
    iofault_fail_fdatasync_after(v, 0, 0);
    ASSERT_OK(v->fdatasync(f));
    ASSERT_OK(v->close(f));
    iofault_free(v);
}

TEST(fault_enospc_writes_the_prefix_that_fits)
{
    io_vfs *v = iofault_new(8);
    const char *p = test_path(0, "f");
    make_synced(v, p, 1000, 1);
    ASSERT_U64_EQ(iofault_used_bytes(v), 1000);
    iofault_set_space_limit(v, 1100);
    io_file *f;
    uint8_t data[300], buf[2048];
    fill(data, sizeof data, 77);
    ASSERT_OK(v->open(v, p, IO_RDWR, &f));
    /* Overwrites inside the file always fit. */
    ASSERT_OK(v->pwrite(f, data, 300, 500));
    /* 300 bytes at 950: 150 of growth, 100 fit -> 150 bytes written. */
    ASSERT_EQ(v->pwrite(f, data, 300, 950), -ENOSPC);
    uint64_t sz;
    ASSERT_OK(v->size(f, &sz));
    ASSERT_U64_EQ(sz, 1100);
    ASSERT_U64_EQ(iofault_used_bytes(v), 1100);
    ASSERT_EQ(v->pread(f, buf, sizeof buf, 0), 1100);
    ASSERT_MEM_EQ(buf + 950, data, 150);
    /* Full: nothing more, not even a hole; growing truncate fails too. */
    ASSERT_EQ(v->pwrite(f, "x", 1, 1100), -ENOSPC);
    ASSERT_EQ(v->pwrite(f, "x", 1, 5000), -ENOSPC);
    ASSERT_EQ(v->truncate(f, 1200), -ENOSPC);
    ASSERT_OK(v->size(f, &sz));
    ASSERT_U64_EQ(sz, 1100);
    /* A new file counts as well. */
    io_file *g;
    ASSERT_OK(v->open(v, test_path(1, "g"), IO_RDWR | IO_CREATE, &g));
    ASSERT_EQ(v->pwrite(g, "y", 1, 0), -ENOSPC);
    /* Freeing space (truncate, unlink) makes room again. */
    ASSERT_OK(v->truncate(f, 1000));
    ASSERT_OK(v->pwrite(g, data, 100, 0));
    ASSERT_OK(v->close(g));
    ASSERT_OK(v->unlink(v, test_path(1, "g")));
    ASSERT_U64_EQ(iofault_used_bytes(v), 1000);
    ASSERT_OK(v->pwrite(f, data, 100, 1000));
    iofault_stats st;
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.enospc, 5);
    iofault_set_space_limit(v, IOFAULT_NO_LIMIT);
    ASSERT_OK(v->pwrite(f, data, 300, 10000));
    ASSERT_OK(v->fdatasync(f));
    ASSERT_EQ(real_size(p), 10300);
    ASSERT_OK(v->close(f));
    iofault_free(v);
}

TEST(fault_unsynced_creation_vanishes_at_crash)
{
    io_vfs *v = iofault_new(9);
    const char *kept = test_path(0, "kept");
    const char *lost = test_path(1, "lost");
    make_synced(v, kept, 100, 1); /* fsyncs the directory */
    io_file *f;
    ASSERT_OK(v->open(v, lost, IO_RDWR | IO_CREATE, &f));
    ASSERT_OK(v->pwrite(f, "data", 4, 0));
    ASSERT_OK(v->fdatasync(f)); /* the data is synced, the name is not */
    ASSERT_OK(v->close(f));
    iofault_stats st;
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.journal, 1);
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_DROP));
    ASSERT_EQ(real_size(lost), -1);
    ASSERT_EQ(real_size(kept), 100);
    iofault_free(v);
}

TEST(fault_fsync_dir_makes_creation_durable)
{
    io_vfs *v = iofault_new(10);
    const char *p = test_path(0, "f");
    io_file *f;
    ASSERT_OK(v->open(v, p, IO_RDWR | IO_CREATE, &f));
    ASSERT_OK(v->pwrite(f, "data", 4, 0));
    ASSERT_OK(v->fdatasync(f));
    /* fsync of another directory does not help. */
    ASSERT_OK(v->mkdir(v, test_path(1, "sub")));
    ASSERT_OK(v->fsync_dir(v, test_path(1, "sub")));
    iofault_stats st;
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.journal, 1);
    ASSERT_OK(v->fsync_dir(v, test_dir()));
    iofault_get_stats(v, &st);
    ASSERT_U64_EQ(st.journal, 0);
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_DROP));
    ASSERT_EQ(real_size(p), 4);
    v->close(f);
    iofault_free(v);
}

static int list_names(const char *name, void *arg)
{
    int *count = arg;
    if (!strncmp(name, ".iofault", 8))
        return -EBADMSG; /* the backup must be hidden */
    (*count)++;
    return 0;
}

/* The tmp-then-rename pattern of the manifest: an unsynced rename over an
 * existing file is undone at a crash and the old file comes back. */
TEST(fault_unsynced_rename_is_undone_at_crash)
{
    io_vfs *v = iofault_new(11);
    const char *fin = test_path(0, "MANIFEST");
    const char *tmp = test_path(1, "tmp-MANIFEST");
    uint8_t want[500], buf[1024];
    fill(want, sizeof want, 5);
    make_synced(v, fin, 500, 5);
    io_file *f;
    ASSERT_OK(v->open(v, tmp, IO_RDWR | IO_CREATE, &f));
    ASSERT_OK(v->pwrite(f, "new", 3, 0));
    ASSERT_OK(v->fdatasync(f));
    ASSERT_OK(v->close(f));
    ASSERT_OK(v->rename(v, tmp, fin));
    /* The vfs sees the new file and no backup. */
    int count = 0;
    ASSERT_OK(v->list(v, test_dir(), list_names, &count));
    ASSERT_EQ(count, 1);
    ASSERT_OK(v->open(v, fin, IO_RDONLY, &f));
    ASSERT_EQ(v->pread(f, buf, sizeof buf, 0), 3);
    ASSERT_OK(v->close(f));
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_DROP));
    ASSERT_EQ(real_read(fin, buf, sizeof buf), 500);
    ASSERT_MEM_EQ(buf, want, 500);
    ASSERT_EQ(real_size(tmp), -1); /* its creation was not durable either */
    iofault_free(v);
    /* No backup left behind. */
    count = 0;
    ASSERT_OK(io_posix()->list(io_posix(), test_dir(), list_names, &count));
    ASSERT_EQ(count, 1);
}

TEST(fault_synced_rename_survives_crash)
{
    io_vfs *v = iofault_new(12);
    const char *fin = test_path(0, "MANIFEST");
    const char *tmp = test_path(1, "tmp-MANIFEST");
    uint8_t buf[1024];
    make_synced(v, fin, 500, 5);
    io_file *f;
    ASSERT_OK(v->open(v, tmp, IO_RDWR | IO_CREATE, &f));
    ASSERT_OK(v->pwrite(f, "new", 3, 0));
    ASSERT_OK(v->fdatasync(f));
    ASSERT_OK(v->close(f));
    ASSERT_OK(v->rename(v, tmp, fin));
    ASSERT_OK(v->fsync_dir(v, test_dir()));
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_DROP));
    ASSERT_EQ(real_read(fin, buf, sizeof buf), 3);
    ASSERT_MEM_EQ(buf, "new", 3);
    ASSERT_EQ(real_size(tmp), -1);
    iofault_free(v);
    int count = 0;
    ASSERT_OK(io_posix()->list(io_posix(), test_dir(), list_names, &count));
    ASSERT_EQ(count, 1);
}

TEST(fault_rename_keeps_pending_writes_with_the_file)
{
    io_vfs *v = iofault_new(13);
    const char *a = test_path(0, "a");
    const char *b = test_path(1, "b");
    io_file *f;
    uint8_t buf[16];
    ASSERT_OK(v->open(v, a, IO_RDWR | IO_CREATE, &f));
    ASSERT_OK(v->pwrite(f, "moved", 5, 0));
    ASSERT_OK(v->close(f));
    ASSERT_OK(v->fsync_dir(v, test_dir()));
    ASSERT_OK(v->rename(v, a, b));
    ASSERT_OK(v->fsync_dir(v, test_dir()));
    ASSERT_OK(v->open(v, b, IO_RDONLY, &f));
    ASSERT_EQ(v->pread(f, buf, sizeof buf, 0), 5);
    ASSERT_OK(v->close(f));
    ASSERT_EQ(real_size(b), 0);
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_KEEP));
    ASSERT_EQ(real_read(b, buf, sizeof buf), 5);
    ASSERT_MEM_EQ(buf, "moved", 5);
    iofault_free(v);
}

/* Threads append fixed-size records to their own files and fdatasync after
 * each; one thread crashes the vfs midway. Every record whose fdatasync
 * returned 0 must be on disk intact, whatever the crash tore. */
enum { TH_N = 4, TH_REC = 700 };

typedef struct th_arg {
    io_vfs *v;
    char path[4096];
    int id;
    long acked; /* records synced (read by the main thread at the end) */
    int saw_eio;
    int *running; /* threads that synced their first record */
} th_arg;

static void *th_writer(void *p)
{
    th_arg *a = p;
    io_file *f;
    int rc = a->v->open(a->v, a->path, IO_RDWR | IO_CREATE, &f);
    if (rc) {
        a->saw_eio = rc == -EIO;
        return NULL;
    }
    if (a->v->fsync_dir(a->v, test_dir()))
        a->saw_eio = 1;
    uint8_t rec[TH_REC];
    for (long i = 0; !a->saw_eio; i++) {
        fill(rec, sizeof rec, (uint8_t)(a->id * 31 + i));
        rc = a->v->pwrite(f, rec, sizeof rec, (uint64_t)i * TH_REC);
        if (rc == 0)
            rc = a->v->fdatasync(f);
        if (rc) {
            a->saw_eio = rc == -EIO;
            break;
        }
        a->acked = i + 1;
        if (i == 0)
            __atomic_add_fetch(a->running, 1, __ATOMIC_SEQ_CST);
    }
    a->v->close(f);
    return NULL;
}

TEST(fault_concurrent_writers_keep_every_synced_record)
{
    io_vfs *v = iofault_new(test_seed());
    th_arg args[TH_N];
    pthread_t th[TH_N];
    int running = 0;
    for (int i = 0; i < TH_N; i++) {
        args[i] = (th_arg){.v = v, .id = i, .running = &running};
        snprintf(args[i].path, sizeof args[i].path, "%s/w%d", test_dir(), i);
        ASSERT_OK(pthread_create(&th[i], NULL, th_writer, &args[i]));
    }
    /* The vfs mutex is not fair: wait until every writer got going (up to
     * 10 s), then let them race a little longer. */
    for (int i = 0; i < 10000 && __atomic_load_n(&running, __ATOMIC_SEQ_CST) < TH_N; i++)
        usleep(1000);
    usleep(20 * 1000);
    ASSERT_OK(iofault_crash(v, IOFAULT_CRASH_GARBLE));
    for (int i = 0; i < TH_N; i++)
        pthread_join(th[i], NULL);
    uint8_t rec[TH_REC], got[TH_REC];
    for (int i = 0; i < TH_N; i++) {
        ASSERT(args[i].saw_eio);
        ASSERT_GT(args[i].acked, 0);
        int fd = open(args[i].path, O_RDONLY);
        ASSERT_GE(fd, 0);
        for (long r = 0; r < args[i].acked; r++) {
            fill(rec, sizeof rec, (uint8_t)(i * 31 + r));
            ASSERT_EQ(pread(fd, got, TH_REC, r * TH_REC), TH_REC);
            ASSERT_MEM_EQ(got, rec, TH_REC);
        }
        close(fd);
    }
    iofault_free(v);
}

/* The engine on the faulty vfs: every append acked before a power cut is
 * there after recovery, in order, whatever the crash did to unsynced data.
 * A producer thread keeps appends in flight; the power goes once enough were
 * acked to have rolled segments. */
typedef struct acks {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t last[8]; /* highest msg_id acked per conversation 1..8 */
    uint64_t acked;
    int outstanding;
    int stop;
    log_t *log;
} acks;

typedef struct ack_ctx {
    acks *a;
    uint64_t conv;
} ack_ctx;

static ack_ctx pl_ctx[8];

static void ack_conv_cb(void *arg, int status, const log_append_result *res)
{
    ack_ctx *c = arg;
    acks *a = c->a;
    pthread_mutex_lock(&a->mu);
    if (status == 0) {
        a->acked++;
        if (res->msg_id > a->last[c->conv - 1])
            a->last[c->conv - 1] = res->msg_id;
    }
    a->outstanding--;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void *pl_producer(void *p)
{
    acks *a = p;
    char body[300];
    for (int i = 0;; i++) {
        pthread_mutex_lock(&a->mu);
        while (a->outstanding >= 256 && !a->stop)
            pthread_cond_wait(&a->cv, &a->mu);
        int stop = a->stop;
        if (!stop)
            a->outstanding++;
        pthread_mutex_unlock(&a->mu);
        if (stop)
            return NULL;
        int len = snprintf(body, sizeof body, "m%d ", i);
        memset(body + len, 'a' + i % 26, (size_t)(i * 37 % 200));
        len += i * 37 % 200;
        rec_view r = {.type = REC_MESSAGE, .conv_id = (uint64_t)(i % 8) + 1,
                      .sender_id = 1, .body = (const uint8_t *)body,
                      .body_len = (uint32_t)len};
        if (log_append(a->log, &r, ack_conv_cb, &pl_ctx[i % 8])) {
            pthread_mutex_lock(&a->mu);
            a->outstanding--;
            pthread_mutex_unlock(&a->mu);
            usleep(1000); /* busy, or failed after the crash */
        }
    }
}

/* The engine reports every failed group after the crash; keep it quiet. */
static void quiet(void *arg, int level, const char *msg)
{
    (void)arg, (void)level, (void)msg;
}

static void power_loss_round(int mode, uint64_t seed)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/m%d-%llu", test_dir(), mode,
             (unsigned long long)seed);
    io_vfs *v = iofault_new(seed);
    log_t *log;
    log_options o = {.shards = 2, .segment_bytes = 64 << 10, .io = v,
                     .log_fn = quiet};
    ASSERT_OK(log_open(dir, &o, &log));
    static acks a;
    a = (acks){.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
               .log = log};
    for (int i = 0; i < 8; i++)
        pl_ctx[i] = (ack_ctx){&a, (uint64_t)i + 1};
    pthread_t th;
    ASSERT_OK(pthread_create(&th, NULL, pl_producer, &a));
    /* About 200 KB per shard: a few rolls of 64 KiB segments. */
    uint64_t target = 2000 + seed % 7 * 100;
    pthread_mutex_lock(&a.mu);
    for (int waited = 0; a.acked < target && waited < 30000; waited++) {
        pthread_mutex_unlock(&a.mu);
        usleep(1000);
        pthread_mutex_lock(&a.mu);
    }
    pthread_mutex_unlock(&a.mu);
    ASSERT_OK(iofault_crash(v, mode));
    pthread_mutex_lock(&a.mu);
    a.stop = 1;
    pthread_cond_broadcast(&a.cv);
    pthread_mutex_unlock(&a.mu);
    pthread_join(th, NULL);
    pthread_mutex_lock(&a.mu);
    while (a.outstanding > 0)
        pthread_cond_wait(&a.cv, &a.mu);
    uint64_t last[8];
    memcpy(last, a.last, sizeof last);
    uint64_t acked = a.acked;
    pthread_mutex_unlock(&a.mu);
    ASSERT_GE(acked, target);
    log_close(log); /* fails: the vfs is dead */
    iofault_free(v);

    o.io = NULL;
    ASSERT_OK(log_open(dir, &o, &log));
    for (int c = 0; c < 8; c++) {
        long n = th_count_conv(log, (uint64_t)c + 1);
        if (n < (long)last[c])
            FAIL("mode %d seed %llu: conv %d has %ld messages, %llu were acked",
                 mode, (unsigned long long)seed, c + 1, n,
                 (unsigned long long)last[c]);
    }
    /* The log takes appends again, continuing each sequence. */
    uint64_t id;
    ASSERT_OK(th_append_msg(log, 1, "after", &id));
    ASSERT_U64_EQ(id, log_conv_last_msg_id(log, 1));
    ASSERT_GE(id, last[0] + 1);
    ASSERT_OK(log_close(log));
}

TEST(fault_log_keeps_acked_appends_through_power_loss)
{
    for (uint64_t s = 0; s < 3; s++) {
        power_loss_round(IOFAULT_CRASH_DROP, test_seed() + s);
        power_loss_round(IOFAULT_CRASH_TEAR, test_seed() + s);
        power_loss_round(IOFAULT_CRASH_GARBLE, test_seed() + s);
    }
}
