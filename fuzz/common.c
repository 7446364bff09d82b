/*
 * common.c — see common.h.
 */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt,
               ...)
{
    va_list ap;
    fprintf(stderr, "FUZZ CHECK FAILED %s:%d: %s: ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}

/* ---- a vfs without syncs ---- */

static int nosync_fdatasync(io_file *f)
{
    (void)f;
    return 0;
}

static int nosync_fsync_dir(io_vfs *vfs, const char *path)
{
    (void)vfs;
    (void)path;
    return 0;
}

io_vfs *fuzz_nosync_vfs(void)
{
    static io_vfs v;
    static int ready;
    if (!ready) {
        v = *io_posix();
        v.fdatasync = nosync_fdatasync;
        v.fsync_dir = nosync_fsync_dir;
        ready = 1;
    }
    return &v;
}

/* ---- files ---- */

static char tmp_dir[4200];
static pid_t tmp_owner;

static void tmp_cleanup(void)
{
    if (tmp_owner == getpid())
        fuzz_rm_rf(tmp_dir);
}

/* Directories of fuzz processes that died without cleaning up (a crash
 * found, a timeout, a kill). */
static void remove_stale(const char *root)
{
    DIR *d = opendir(root);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid;
        char tail;
        if (sscanf(e->d_name, "chatlog-fuzz-%ld%c", &pid, &tail) != 1 || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", root, e->d_name);
        fuzz_rm_rf(p);
    }
    closedir(d);
}

const char *fuzz_tmp_dir(void)
{
    if (!tmp_dir[0]) {
        const char *root = getenv("FUZZ_TMPDIR");
        if (!root || !*root)
            root = "/tmp";
        remove_stale(root);
        tmp_owner = getpid();
        snprintf(tmp_dir, sizeof tmp_dir, "%s/chatlog-fuzz-%ld", root, (long)tmp_owner);
        fuzz_rm_rf(tmp_dir); /* a leftover of a dead process with our pid */
        if (mkdir(tmp_dir, 0700) != 0) {
            perror(tmp_dir);
            abort();
        }
        atexit(tmp_cleanup);
    }
    return tmp_dir;
}

void fuzz_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                    continue;
                char p[4096];
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                fuzz_rm_rf(p);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

int fuzz_read_file(const char *path, uint8_t **out, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    size_t n = (size_t)st.st_size, got = 0;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *out = b;
    *len = got;
    return 0;
}

int fuzz_write_file(const char *path, const void *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -errno;
    const uint8_t *c = p;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, c + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = -errno;
            close(fd);
            return e;
        }
        done += (size_t)w;
    }
    return close(fd) ? -errno : 0;
}

int fuzz_copy_tree(const char *from, const char *to)
{
    if (mkdir(to, 0700) != 0 && errno != EEXIST)
        return -errno;
    DIR *d = opendir(from);
    if (!d)
        return -errno;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char src[4096], dst[4096];
        snprintf(src, sizeof src, "%s/%s", from, e->d_name);
        snprintf(dst, sizeof dst, "%s/%s", to, e->d_name);
        struct stat st;
        if (lstat(src, &st) != 0) {
            rc = -errno;
        } else if (S_ISDIR(st.st_mode)) {
            rc = fuzz_copy_tree(src, dst);
        } else {
            uint8_t *b;
            size_t n;
            if ((rc = fuzz_read_file(src, &b, &n)) == 0) {
                rc = fuzz_write_file(dst, b, n);
                free(b);
            }
        }
    }
    closedir(d);
    return rc;
}

int fuzz_no_workarounds(void)
{
    static int v = -1;
    if (v < 0)
        v = getenv("FUZZ_NO_WORKAROUNDS") != NULL;
    return v;
}

void fuzz_quiet_log(void *arg, int level, const char *msg)
{
    (void)arg;
    (void)level;
    (void)msg;
}

uint32_t fuzz_u32(const uint8_t *p, size_t len)
{
    uint32_t v = 0;
    for (size_t i = 0; i < 4 && i < len; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

uint64_t fuzz_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fuzz_fill(uint64_t seed, uint8_t *p, size_t len)
{
    uint64_t st = seed;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t r = fuzz_rand(&st);
        for (size_t k = 0; k < 8 && i + k < len; k++)
            p[i + k] = (uint8_t)(r >> (8 * k));
    }
}
