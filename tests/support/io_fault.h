/*
 * io_fault.h — a fault-injecting io_vfs for power-loss tests, in the manner
 * of SQLite's src/test6.c.
 *
 * It wraps io_posix(): files are real files on disk, but nothing written
 * through it reaches the real file before that file's fdatasync.
 *
 * Model
 * -----
 * - Pending writes. Every pwrite is held in memory, per file (per inode, so
 *   every handle of a file and a renamed file share them), as a pending write
 *   (offset + bytes). fdatasync of any handle of the file writes its pending
 *   writes through to the real file in the order they were made, then calls
 *   the real fdatasync. pread and size see the pending writes overlaid on the
 *   real contents (bytes in a hole below a pending write read as zeros).
 *   close() does not sync: a closed file's pending writes stay pending and are
 *   visible to a later open of the same file.
 * - truncate applies at once to the real file (and is treated as durable) and
 *   to the pending writes (those past the new size are cut).
 * - Directories. A file created by open(IO_CREATE) and a rename are recorded
 *   in a journal of unsynced directory operations. fsync_dir(D) removes from
 *   the journal every entry all of whose directories are D (a rename across
 *   two directories needs both fsynced). On a crash a prefix of the journal
 *   survives and the rest is undone, newest first: an undone creation unlinks
 *   the file; an undone rename moves the file back to its old name and, if
 *   the rename had replaced a file, brings that file back (the vfs keeps it
 *   as a hard link named ".iofault-bak-N" in the same directory until the
 *   rename is durable or undone; list() hides these names). mkdir and unlink
 *   are immediately durable. Paths are compared as given: use one spelling
 *   per directory (the engine does).
 * - Crash. iofault_crash() simulates a power loss: the fate of every file's
 *   pending writes and of the journal is decided by the seeded PRNG and the
 *   mode (see enum iofault_crash_mode), applied to the real files, and from
 *   then on every call through the vfs returns -EIO, except close(), which
 *   still releases its handle (and returns -EIO). Threads still using the vfs
 *   can change nothing on disk any more.
 *
 * Tearing works on 512-byte sectors aligned to file offsets (IOFAULT_SECTOR):
 * a sector is "dirty" when a pending write touches it, and each dirty sector
 * independently ends up with its old bytes (as of the last sync), its new
 * bytes (every pending write applied), or garbage in place of the bytes that
 * pending writes covered (synced bytes that were not overwritten are never
 * garbled). The file ends at the end of the last dirty sector that was
 * written or garbled (clipped to the file's size before the crash), or at its
 * synced size if that is larger; sectors left out below that read as their
 * old bytes, or zeros past the synced size.
 *
 * Fault switches: iofault_fail_fdatasync_after() and
 * iofault_set_space_limit(), below. Counters: iofault_get_stats().
 *
 * Thread safety: one mutex per vfs serialises every call, so the engine may
 * use it from all its threads at once. The switches, counters and crash may
 * be called from any thread.
 *
 * Errors: 0 (or a byte count) on success, a negative errno value on failure,
 * as io.h says for every io_vfs.
 */
#ifndef CHATLOG_IO_FAULT_H
#define CHATLOG_IO_FAULT_H

#include <stdint.h>

#include "io.h"

#define IOFAULT_SECTOR 512
#define IOFAULT_NO_LIMIT UINT64_MAX

/* A new fault-injecting vfs over io_posix(); seed drives every random choice
 * it makes (the same seed and the same sequence of calls give the same
 * crash). Returns NULL when out of memory. */
io_vfs *iofault_new(uint64_t seed);

/* Free the vfs. Every io_file opened through it must have been closed. If it
 * never crashed, pending writes are written through first (no power loss:
 * the OS would have written them eventually) and the journal is kept (backup
 * links are removed). Accepts NULL. */
void iofault_free(io_vfs *vfs);

/* What happens to unsynced data at a crash. */
enum iofault_crash_mode {
    /* Every pending write is lost; every journalled directory operation is
     * undone. */
    IOFAULT_CRASH_DROP = 0,
    /* Every pending write reaches the disk and the journal survives: as if
     * only the process died. */
    IOFAULT_CRASH_KEEP = 1,
    /* Per file, at random: all of its pending writes lost, all written, or
     * torn: each dirty sector independently written or left out. A random
     * prefix of the journal survives. */
    IOFAULT_CRASH_TEAR = 2,
    /* Like IOFAULT_CRASH_TEAR, and a torn file's dirty sector may also be
     * filled with garbage. */
    IOFAULT_CRASH_GARBLE = 3,
};

/* Simulate a power loss now (see the model above). Returns 0, -EINVAL for
 * an unknown mode, -EIO if the vfs had already crashed, or the first -errno
 * hit while applying the outcome to the real files (the vfs is crashed
 * regardless). */
int iofault_crash(io_vfs *vfs, int mode);

/* Whether iofault_crash() has been called. */
int iofault_crashed(io_vfs *vfs);

/* The (n+1)-th fdatasync call from now (n = 0: the next one) returns err
 * (a negative errno, e.g. -EIO) and drops the pending writes of the file it
 * was called on instead of writing them through, as Linux does after a
 * writeback error; later reads see the file as it was at its last successful
 * sync. One shot: the fdatasync calls after it behave normally. err = 0
 * cancels a pending switch. */
void iofault_fail_fdatasync_after(io_vfs *vfs, uint64_t n, int err);

/* Limit the bytes the vfs's files may occupy: the sum of the (logical) sizes
 * of every file this vfs has opened, counted from its first open until it is
 * unlinked or replaced by a rename (files it never opened don't count).
 * A pwrite that would take the total past the limit writes (as pending) the
 * prefix that fits, if any, and returns -ENOSPC; a truncate that would
 * returns -ENOSPC and changes nothing. Overwrites within a file's size always
 * succeed. IOFAULT_NO_LIMIT (the default) removes the limit. Lowering the
 * limit below the current usage only stops growth. */
void iofault_set_space_limit(io_vfs *vfs, uint64_t bytes);

/* The current total that the space limit is compared with. */
uint64_t iofault_used_bytes(io_vfs *vfs);

typedef struct iofault_stats {
    uint64_t opens;
    uint64_t pwrites;       /* pwrite calls (including failed ones) */
    uint64_t bytes_written; /* bytes accepted by pwrite (held as pending) */
    uint64_t fdatasyncs;    /* fdatasync calls (including failed ones) */
    uint64_t bytes_synced;  /* pending bytes written through by fdatasync */
    uint64_t fsync_dirs;    /* fsync_dir calls */
    uint64_t enospc;        /* pwrite/truncate calls failed with -ENOSPC */
    uint64_t injected;      /* fdatasync calls failed by the switch */
    uint64_t pending_bytes; /* bytes held as pending right now */
    uint64_t journal;       /* unsynced directory operations right now */
} iofault_stats;

/* A snapshot of the counters. Counting stops at a crash. */
void iofault_get_stats(io_vfs *vfs, iofault_stats *out);

#endif
