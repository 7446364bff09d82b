/*
 * io.h — the one file-I/O interface the engine uses.
 *
 * Every byte the engine reads or writes goes through an io_vfs, so that tests
 * can swap the POSIX implementation (io_posix()) for a fault-injecting one
 * (tests/support/io_fault.c) that holds unsynced writes in memory and drops or
 * tears them on a simulated power loss, or fails fdatasync with EIO, or a
 * write with ENOSPC.
 *
 * Errors: every function returns 0 (or a byte count) on success and a
 * negative errno value on failure (-EIO, -ENOSPC, -ENOENT, ...). A read that
 * reaches end of file returns the byte count it got, smaller than asked.
 *
 * Ownership: an io_file belongs to the caller from open() until close();
 * close() always releases it, even when it returns an error.
 *
 * Thread safety: pread on one io_file may run concurrently with pread and
 * pwrite on it (as POSIX pread/pwrite may); everything else on one io_file is
 * serialised by the caller.
 */
#ifndef CHATLOG_IO_H
#define CHATLOG_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct io_file io_file;
typedef struct io_vfs io_vfs;

/* open() flags. */
enum {
    IO_RDONLY = 0,
    IO_RDWR = 1,
    IO_CREATE = 2, /* create if missing (with IO_RDWR) */
    IO_EXCL = 4,   /* with IO_CREATE: fail with -EEXIST if present */
};

/* Called by list() once per directory entry (not "." or ".."); a non-zero
 * return stops the listing and becomes list()'s return value. */
typedef int (*io_list_cb)(const char *name, void *arg);

struct io_vfs {
    int (*open)(io_vfs *vfs, const char *path, int flags, io_file **out);
    int (*close)(io_file *f);
    /* Read up to len bytes at off; returns bytes read (0 at EOF) or -errno.
     * Loops over EINTR and short reads until len or EOF. */
    ssize_t (*pread)(io_file *f, void *buf, size_t len, uint64_t off);
    /* Write all len bytes at off; returns 0 or -errno. A failed write may have
     * written a prefix: callers truncate back to restore a valid log. */
    int (*pwrite)(io_file *f, const void *buf, size_t len, uint64_t off);
    int (*fdatasync)(io_file *f);
    int (*truncate)(io_file *f, uint64_t size);
    int (*size)(io_file *f, uint64_t *out);
    int (*rename)(io_vfs *vfs, const char *from, const char *to);
    int (*unlink)(io_vfs *vfs, const char *path);
    int (*mkdir)(io_vfs *vfs, const char *path);
    /* fsync the directory itself, making creations/renames/unlinks in it
     * durable. */
    int (*fsync_dir)(io_vfs *vfs, const char *path);
    int (*list)(io_vfs *vfs, const char *dir, io_list_cb cb, void *arg);
    /* 0 if path exists, -ENOENT if not, other -errno on error. */
    int (*exists)(io_vfs *vfs, const char *path);
};

/* The process-wide POSIX implementation; never freed. */
io_vfs *io_posix(void);

#endif
