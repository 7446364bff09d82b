/*
 * io_posix.c — the io_vfs over plain POSIX calls.
 */
#include "io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct io_file {
    int fd;
};

static int px_open(io_vfs *vfs, const char *path, int flags, io_file **out)
{
    (void)vfs;
    int oflags = O_CLOEXEC;
    oflags |= (flags & IO_RDWR) ? O_RDWR : O_RDONLY;
    if (flags & IO_CREATE)
        oflags |= O_CREAT;
    if (flags & IO_EXCL)
        oflags |= O_EXCL;
    int fd = open(path, oflags, 0644);
    if (fd < 0)
        return -errno;
    io_file *f = malloc(sizeof *f);
    if (!f) {
        close(fd);
        return -ENOMEM;
    }
    f->fd = fd;
    *out = f;
    return 0;
}

static int px_close(io_file *f)
{
    int rc = close(f->fd) ? -errno : 0;
    free(f);
    return rc;
}

static ssize_t px_pread(io_file *f, void *buf, size_t len, uint64_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(f->fd, (char *)buf + got, len - got, (off_t)(off + got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static int px_pwrite(io_file *f, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(f->fd, (const char *)buf + done, len - done,
                           (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)n;
    }
    return 0;
}

static int px_fdatasync(io_file *f)
{
    return fdatasync(f->fd) ? -errno : 0;
}

static int px_truncate(io_file *f, uint64_t size)
{
    return ftruncate(f->fd, (off_t)size) ? -errno : 0;
}

static int px_size(io_file *f, uint64_t *out)
{
    struct stat st;
    if (fstat(f->fd, &st))
        return -errno;
    *out = (uint64_t)st.st_size;
    return 0;
}

static int px_rename(io_vfs *vfs, const char *from, const char *to)
{
    (void)vfs;
    return rename(from, to) ? -errno : 0;
}

static int px_unlink(io_vfs *vfs, const char *path)
{
    (void)vfs;
    return unlink(path) ? -errno : 0;
}

static int px_mkdir(io_vfs *vfs, const char *path)
{
    (void)vfs;
    return mkdir(path, 0755) ? -errno : 0;
}

static int px_fsync_dir(io_vfs *vfs, const char *path)
{
    (void)vfs;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

static int px_list(io_vfs *vfs, const char *dir, io_list_cb cb, void *arg)
{
    (void)vfs;
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        rc = cb(e->d_name, arg);
    }
    closedir(d);
    return rc;
}

static int px_exists(io_vfs *vfs, const char *path)
{
    (void)vfs;
    struct stat st;
    return stat(path, &st) ? -errno : 0;
}

static io_vfs posix_vfs = {
    .open = px_open,
    .close = px_close,
    .pread = px_pread,
    .pwrite = px_pwrite,
    .fdatasync = px_fdatasync,
    .truncate = px_truncate,
    .size = px_size,
    .rename = px_rename,
    .unlink = px_unlink,
    .mkdir = px_mkdir,
    .fsync_dir = px_fsync_dir,
    .list = px_list,
    .exists = px_exists,
};

io_vfs *io_posix(void)
{
    return &posix_vfs;
}
