/*
 * errors.h — Chatlog's error convention: 0 is success, a negative value is a
 * failure. Negative errno values (-EIO, -ENOSPC, ...) pass through unchanged;
 * the project's own codes sit in a reserved range below -30000 so they never
 * collide with errno.
 */
#ifndef CHATLOG_ERRORS_H
#define CHATLOG_ERRORS_H

enum {
    CL_ECORRUPT = -30001,   /* bytes on disk fail a checksum or format rule */
    CL_ETRUNC = -30002,     /* data ends before a structure does */
    CL_EMISPLACED = -30003, /* a valid batch read from the wrong shard/offset */
    CL_EFAILED = -30004,    /* the shard failed (fsync error) and is read-only */
    CL_ECLOSED = -30005,    /* the log is closing; nothing more is accepted */
    CL_EINVAL = -30006,     /* an argument is out of range */
    CL_ENOTFOUND = -30007,  /* no such conversation, offset or record */
    CL_EMANIFEST = -30008,  /* the manifest is missing, bad or disagrees */
    CL_ETOOBIG = -30009,    /* a record or batch exceeds a size limit */
    CL_ENOMEM = -30010,     /* allocation failed */
    CL_EBUSY = -30011,      /* too many appends pending (back-pressure) */
    CL_EDAMAGED = -30012,   /* unrepaired damage of unknown content: writes
                               refused so that no msg_id is reused */
    CL_ESTALE = -30013,     /* an append fenced by a term older than the
                               shard's: this node no longer leads it */
    CL_ETIMEDOUT = -30014,  /* gave up waiting (e.g. for a commit): the
                               outcome is unknown */
};

/* A static, human-readable description of any code (project or -errno). */
const char *cl_strerror(int err);

#endif
