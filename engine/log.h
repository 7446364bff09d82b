/*
 * log.h — the Chatlog storage engine: a data directory of shards, each one
 * segmented, append-only log with group commit, an in-memory per-conversation
 * index, and zstd-compressed sealed segments. The on-disk format is
 * documented in docs/storage.md and at the top of batch.c, segment.c and
 * sidecar.c; recovery rules in recovery/recovery.c.
 *
 * Threads: each shard has one writer thread that assigns offsets and msg_ids,
 * writes and fdatasyncs; one completion thread per log runs on_commit and the
 * append callbacks (in each shard's order) while the writers go on — small
 * groups are completed on their writer thread directly; one sealer thread
 * per log compresses rolled segments. Callbacks may therefore run on either
 * kind of engine thread, never two of one shard at once. All functions here may be called from any thread, except
 * log_close(), which must not race with other calls on the same log.
 *
 * Errors: 0 or a negative code, see errors.h (cl_strerror()).
 */
#ifndef CHATLOG_LOG_H
#define CHATLOG_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "io.h"

typedef struct log log_t;

enum log_fsync {
    LOG_FSYNC_ALWAYS = 0, /* default: an append is acked after fdatasync */
    LOG_FSYNC_NONE = 1,   /* TESTS AND BENCHMARKS ONLY: acks before data is
                             durable; a crash or power loss loses acked data */
};

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

#define LOG_DEFAULT_SHARDS 16
#define LOG_MAX_SHARDS 1024
#define LOG_DEFAULT_SEGMENT_BYTES (64ull << 20)
#define LOG_MIN_SEGMENT_BYTES (16ull << 10)
#define LOG_MAX_SEGMENT_BYTES (1ull << 30)
#define LOG_DEFAULT_BATCH_BYTES (1u << 20)
/* The writer never has more than this many bytes written and not yet
 * fdatasynced; recovery relies on it to tell a torn tail from corruption. */
#define LOG_MAX_WRITE_BYTES (4u << 20)
#define LOG_DEFAULT_MAX_PENDING 65536u

/* One record as read back: where it lives and what it says. rec's pointers
 * are owned by whoever handed out the entry (see each function). */
typedef struct log_entry {
    uint32_t shard;
    uint64_t offset;
    uint64_t term;
    rec_view rec;
} log_entry;

typedef struct log_options {
    /* Number of shards for a new directory (0: LOG_DEFAULT_SHARDS). For an
     * existing one the manifest decides; a non-zero value that disagrees
     * makes log_open fail with CL_EMANIFEST. */
    uint32_t shards;
    uint64_t segment_bytes;   /* roll size; 0: 64 MiB */
    uint32_t max_batch_bytes; /* bytes per group write; 0: 1 MiB; capped at
                                 LOG_MAX_WRITE_BYTES */
    uint32_t max_wait_us;     /* wait this long for a group to fill before
                                 writing it; 0: write whatever is queued */
    uint32_t max_pending;     /* queued appends per shard before CL_EBUSY */
    int fsync;                /* enum log_fsync */
    int no_compress;          /* keep sealed segments uncompressed */
    /* Open for inspection: no threads, no writes, no repairs. A torn tail is
     * reported and left out of reads instead of truncated. Appends fail with
     * CL_EINVAL. */
    int read_only;
    io_vfs *io; /* NULL: io_posix() */
    /* Receives one line per notable event (torn tail cut, corruption found,
     * shard failed). NULL: written to stderr at INFO and above. */
    void (*log_fn)(void *arg, int level, const char *msg);
    void *log_arg;
    /* Called on an engine thread (see Threads) after each group becomes
     * durable, before the appends' callbacks, with the group's records in
     * offset order; groups of one shard come in offset order. Entries are
     * valid during the call only. This is the stream the server delivers
     * from. Must not block for long: it delays every shard's callbacks. */
    void (*on_commit)(void *arg, uint32_t shard, const log_entry *entries,
                      size_t n);
    void *commit_arg;
} log_options;

/* Open (creating if needed) the data directory dir and recover every shard.
 * Returns 0 and *out, or: CL_EMANIFEST (bad or mismatched manifest),
 * CL_EINVAL (bad options), -errno from the file system, CL_ENOMEM. Corruption
 * found in sealed data does not fail the open; see log_damage(). */
int log_open(const char *dir, const log_options *opt, log_t **out);

/* Stop accepting appends, let every queued append finish (its callback runs,
 * successful or not), wait for sealing to end, and free the log. Returns the
 * first error the log hit (a failed shard's error), else 0. */
int log_close(log_t *log);

/* ---- appending ---- */

typedef struct log_append_result {
    uint32_t shard;
    uint64_t offset;
    uint64_t msg_id; /* assigned for REC_MESSAGE, else the record's msg_id */
    int64_t ts_ms;
    uint64_t term;
    /* The on-disk batch that holds this record: the offset of its first
     * record and its record count. Every batch made of appended records is
     * reported by the callbacks of its records (callbacks come in offset
     * order), so a caller can announce each new batch once it is durable. */
    uint64_t batch_first_offset;
    uint32_t batch_count;
} log_append_result;

/* status is 0 when the record is durable (per the fsync policy), or a
 * negative error: -ENOSPC (the log is unchanged and later appends may
 * succeed), CL_EFAILED / -EIO (the shard failed; nothing of this group is
 * acked), CL_ECLOSED. res is valid during the call only. */
typedef void (*log_append_cb)(void *arg, int status,
                              const log_append_result *res);

/* Queue one record for the shard of rec->conv_id. The record is copied; the
 * caller's buffers may be reused on return. For REC_MESSAGE, rec->msg_id must
 * be 0: the writer assigns the next id of the conversation. ts_ms 0 means
 * "now" (the writer stamps it, never earlier than the shard's previous
 * record). Returns 0 and cb is called exactly once later on an engine thread
 * (callbacks of one shard in append order, right after the on_commit of
 * their group);
 * or returns CL_EINVAL, CL_ETOOBIG, CL_EBUSY, CL_EFAILED, CL_EDAMAGED (the
 * shard holds damage recovery could not identify, so it cannot know which
 * msg_ids are taken) or CL_ECLOSED and cb is never called. */
int log_append(log_t *log, const rec_view *rec, log_append_cb cb, void *arg);

/* Exactly like log_append, but fenced by term: when the writer is about to
 * write the record it refuses it unless the shard's term (log_set_term, or
 * the highest term of batches written by log_write_batches) equals term at
 * that moment. The check and the write are atomic with respect to
 * log_set_term: a log_set_term that returned before the writer took the
 * record is seen. A refused record takes no offset and no msg_id; its
 * callback gets CL_ESTALE (in append order with the others). Also returns
 * CL_ESTALE at once, cb never called, if the term differs already. */
int log_append_in_term(log_t *log, const rec_view *rec, uint64_t term,
                       log_append_cb cb, void *arg);

/* ---- replication: writing batches received from a leader ---- */

/* Largest byte string one log_write_batches call takes. */
#define LOG_MAX_RECEIVE_BYTES (64u << 20)

/* Encode into out the Raft no-op batch of a new leader: one REC_NOOP record
 * (all fields 0), at offset in shard, stamped with term, ts_ms 0, flags
 * BATCH_FLAG_GROUP_END. Deterministic: the same inputs always give the same
 * LOG_NOOP_BATCH_BYTES bytes, which are returned. Write it with
 * log_write_batches. */
size_t log_noop_batch(uint8_t out[LOG_NOOP_BATCH_BYTES], uint32_t shard,
                      uint64_t offset, uint64_t term);

/* status 0: the batches are durable (per the fsync policy) and the shard's
 * log ends at end_offset. Otherwise an error as for appends (-ENOSPC: the
 * batches were not written, though a truncation they needed may have been
 * done; CL_EFAILED / -EIO: the shard failed), or CL_EINVAL (at_offset was
 * past the log's end when the writer reached the call, the cut was not at
 * a batch boundary or below the oldest segment, or a message's msg_id does
 * not continue its conversation), CL_ECLOSED. */
typedef void (*log_write_cb)(void *arg, int status, uint64_t end_offset);

/* Write bytes[0..len): zero or more whole encoded batches of this shard,
 * contiguous, the first at at_offset — a follower storing what its leader
 * sent. The bytes are copied and checked now: each batch's checksum and
 * layout, shard and offsets (batch_verify_at), at most BATCH_MAX_BYTES and
 * LOG_MAX_WRITE_BYTES each, terms not decreasing, every record's conv_id in
 * this shard (REC_NOOP excepted, which must be all zero), REC_MESSAGE
 * msg_ids not 0, len <= LOG_MAX_RECEIVE_BYTES. Returns 0 and cb is called
 * exactly once later on an engine thread, or CL_EINVAL, CL_ECORRUPT,
 * CL_ETRUNC, CL_EMISPLACED, CL_ETOOBIG, CL_EBUSY, CL_EFAILED, CL_EDAMAGED,
 * CL_ECLOSED, CL_ENOMEM and cb is never called.
 *
 * The write is queued with the shard's appends and runs in queue order. The
 * writer then: if the log ends after at_offset, first removes every record
 * >= at_offset as log_truncate_from does (made durable before anything is
 * written; across segment rolls; a cut inside a sealed or compressed
 * segment is handled: the writer waits for the sealer, and a compressed
 * segment is rewritten raw up to the cut — see log_truncate_from); if the
 * log ends before at_offset, fails with CL_EINVAL. Then it writes the
 * batches as they are — records keep their msg_ids, timestamps and the
 * batches their terms; the index takes the msg_ids, and later appends
 * continue each conversation after them — except that GROUP_END is cleared
 * on every batch and set on the last one of each local write (recovery's
 * torn-tail rule depends on it), with the checksum recomputed. The writes
 * obey the group-commit rules (at most max_batch_bytes, one fdatasync per
 * group, shared with appends queued around it; a long string takes several
 * groups). on_commit sees the written records as for appends. The shard's
 * term rises to the highest batch term written (so an older-term
 * log_append_in_term queued after it is refused). len 0 only truncates;
 * cb runs once that is durable. */
int log_write_batches(log_t *log, uint32_t shard, uint64_t at_offset,
                      const uint8_t *bytes, size_t len, log_write_cb cb,
                      void *arg);

/* The checks log_write_batches makes when it is called, alone: 0 when
 * bytes[0..len) would be accepted (at_offset as given), else the error it
 * would return. For a receiver that must refuse bad bytes before they are
 * acknowledged anywhere (cluster.c checks an append before Raft sees it). */
int log_check_batches(log_t *log, uint32_t shard, uint64_t at_offset,
                      const uint8_t *bytes, size_t len);

/* Every batch of the shard from its first offset, in offset order:
 * cb(arg, first_offset, count, term) for each, called without any engine
 * lock held (it may call other functions of this API). Only durable batches.
 * This reads the shard's segments (every batch header; a compressed segment
 * is decompressed block by block), O(log size): meant for start-up. Damaged
 * ranges fenced by recovery are skipped, so the caller sees a gap in the
 * offsets there (log_damage_each says what). Returns 0, CL_EINVAL (bad
 * shard), CL_ENOMEM, -errno, or CL_ECORRUPT for damage recovery did not
 * record. */
int log_batch_each(log_t *log, uint32_t shard,
                   void (*cb)(void *arg, uint64_t first_offset, uint32_t count,
                              uint64_t term),
                   void *arg);

/* The shard's ends, cheaply (no lock but the shard's own, no stats walk),
 * from any thread: *next is the offset the next record will take (it
 * includes a group being written right now), *durable the offset below
 * which every record is durable. Either pointer may be NULL. Returns 0 or
 * CL_EINVAL (bad shard). */
int log_shard_ends(log_t *log, uint32_t shard, uint64_t *next,
                   uint64_t *durable);

/* ---- replication: shipping sealed segments ----
 * A follower far behind (or with an empty data directory) takes a peer's
 * sealed, compressed segments whole instead of batch by batch: the peer
 * reads them with log_segment_files_get, the follower installs them one by
 * one, oldest first, with log_segment_install, then takes the tail with
 * log_write_batches. The files travel as they are on disk (formats in
 * docs/storage.md); the follower checks every byte before writing any. */

/* A sealed segment of a shard as files: the compressed segment and its
 * sidecar index, read whole (the leader's side of segment shipping). */
typedef struct log_segment_files {
    uint64_t base, end; /* offsets [base, end) */
    uint64_t last_term; /* term of its last batch */
    uint8_t *zlog;
    size_t zlog_len;
    uint8_t *idx;
    size_t idx_len;
} log_segment_files;

/* Segment i (0-based, oldest first, as log_segment_info_get) of the shard,
 * if it is sealed and compressed: reads both files whole into *out,
 * verifying the .zlog's header and block-table checksum and the sidecar's
 * checksum and header (not every block: the receiver checks those), and
 * reads the last block for last_term. Returns 0, CL_ENOTFOUND (no segment
 * i), CL_EINVAL (bad shard, or segment i not sealed and compressed yet: the
 * active segment, one the sealer has not finished, a log opened with
 * no_compress, or one whose sidecar is being rewritten), CL_ECORRUPT (the
 * files fail those checks), -errno, CL_ENOMEM. On error *out is zeroed.
 * The caller owns the buffers: free with log_segment_files_free. Safe while
 * the log is live (writer, sealer): the files are opened under the shard's
 * lock and read after it (a sealed .zlog and its .idx are never changed in
 * place), so the result is the segment as it was when the call began. */
int log_segment_files_get(log_t *log, uint32_t shard, uint32_t i,
                          log_segment_files *out);
/* Free the buffers of *f and zero it. Accepts a zeroed struct. */
void log_segment_files_free(log_segment_files *f);

/* Install a sealed segment received from another replica at the end of the
 * shard's log (the follower's side). The shard's log must end exactly at
 * f->base with its active segment empty: a shard whose active segment holds
 * records is refused (CL_EINVAL), even when it ends at f->base.
 *
 * Checked now, before anything is queued: the .zlog's header (shard, base,
 * end, raw size, records) and block-table checksum; every block's hash, and
 * that it decompresses to exactly its raw length of whole batches; every
 * batch (batch_verify_at: checksum, layout, this shard, offsets contiguous
 * from base to end), at most BATCH_MAX_BYTES and LOG_MAX_WRITE_BYTES each,
 * terms not decreasing, the last one's term == f->last_term; every record's
 * conv_id in this shard (REC_NOOP all zero), REC_MESSAGE msg_ids not 0 and
 * consecutive per conversation within the segment; the received sidecar's
 * checksum and header, and each of its entries equal to the one derived
 * from the batches (the received sidecar is verified, then written as
 * received; it is not trusted). Checked by the writer when it reaches the
 * install: the log ends at f->base with the active segment empty, the first
 * batch's term is not below the term of the log's last batch, and each
 * conversation's first msg_id in the segment continues the index (as
 * log_write_batches requires).
 *
 * Queued on the shard's writer in order with appends and log_write_batches,
 * and run alone between groups. The writer writes tmp-<base>.idx and
 * tmp-<base>.zlog (each fdatasynced), renames the .idx and then the .zlog
 * into place, fsyncs the directory; then the segment joins the shard as
 * sealed and compressed, the index takes its records, a new active segment
 * starts at f->end (the old empty <base>.log is removed), and the shard's
 * term rises to f->last_term if below. cb(arg, 0, f->end) follows on an
 * engine thread once that is durable; on_commit is not called for installed
 * records (read them with log_read_from). Errors passed to cb: CL_EINVAL
 * (the log does not end at f->base, its active segment holds records, a
 * term or msg_id does not continue the log), -ENOSPC (nothing installed;
 * the shard goes on), -EIO or another -errno (the shard fails, as for
 * appends), CL_EFAILED, CL_ECLOSED, CL_ENOMEM.
 *
 * Returns 0 (cb called exactly once later), or an immediate error and cb is
 * never called: CL_EINVAL (bad arguments, read-only log, end <= base),
 * CL_ECORRUPT or CL_EMISPLACED (bad bytes: nothing written), CL_ETOOBIG,
 * CL_EBUSY, CL_EFAILED, CL_EDAMAGED, CL_ECLOSED, CL_ENOMEM. f's buffers are
 * copied; the caller may free them on return.
 *
 * Crash rules (recovery/recovery.c): the tmp- files are deleted; a
 * <base>.idx beside an empty active <base>.log (a crash between the two
 * renames) is deleted; a <base>.zlog beside <base>.log is the segment (the
 * .log is removed). So a crash leaves either no segment or the whole one. */
int log_segment_install(log_t *log, uint32_t shard,
                        const log_segment_files *f, log_write_cb cb,
                        void *arg);

/* ---- reading ---- */

/* A set of entries with the memory behind them; free with
 * log_result_free(). */
typedef struct log_result {
    log_entry *entries;
    size_t n;
    size_t cap;
    uint8_t **bufs; /* internal: copies of the batches the entries point in */
    size_t nbufs;
} log_result;

void log_result_free(log_result *r);

enum log_direction { LOG_AFTER = 0, LOG_BEFORE = 1 };

/* Messages (REC_MESSAGE) of a conversation: with LOG_AFTER those with
 * msg_id > msg_id in ascending order; with LOG_BEFORE those with
 * msg_id < msg_id (0: no bound) in descending order. At most limit entries
 * are appended to *out; *more (if not NULL) tells whether more exist in that
 * direction. Only durable records are returned. Returns 0, CL_ECORRUPT if a
 * message in range lies in damaged data (out holds those before it),
 * -errno. An unknown conversation is an empty result. */
int log_read_conv(log_t *log, uint64_t conv_id, uint64_t msg_id,
                  int direction, uint32_t limit, log_result *out, int *more);

/* The newest msg_id of a conversation (0 if it has none). */
uint64_t log_conv_last_msg_id(log_t *log, uint64_t conv_id);

/* Called once per batch in offset order. bytes[0..h->length) is the batch as
 * stored (verified); entries are its records with offset >= the requested
 * from_offset. All valid during the call only. A non-zero return stops the
 * read and is returned by log_read_from. */
typedef int (*log_batch_cb)(void *arg, const batch_header *h,
                            const uint8_t *bytes, const log_entry *entries,
                            size_t n);

/* Every durable record of a shard with offset >= from_offset, batch by
 * batch, until the durable end or until about max_bytes (0: no limit) of
 * batches were passed. Returns 0, CL_ECORRUPT at damaged data (batches before
 * it were delivered), CL_EINVAL for a bad shard, -errno. */
int log_read_from(log_t *log, uint32_t shard, uint64_t from_offset,
                  uint64_t max_bytes, log_batch_cb cb, void *arg);

/* ---- shards and inspection ---- */

uint32_t log_shard_count(const log_t *log);
/* The shard of a conversation: XXH3-64 of conv_id's 8 little-endian bytes,
 * modulo the shard count. Stable across versions and machines. */
uint32_t log_shard_of(const log_t *log, uint64_t conv_id);
uint32_t log_shard_for(uint64_t conv_id, uint32_t shards);

typedef struct log_segment_info {
    uint64_t base_offset;
    uint64_t end_offset; /* next offset after its last record */
    uint64_t raw_bytes;  /* uncompressed size */
    uint64_t disk_bytes; /* size of the file(s) on disk, sidecar included */
    uint64_t records;
    int sealed;
    int compressed;
} log_segment_info;

typedef struct log_shard_info {
    uint32_t shard;
    uint64_t next_offset;    /* offset after the last durable record */
    uint64_t durable_offset; /* records below this are durable (same value
                                until replication separates them) */
    uint64_t term;
    uint64_t records;
    uint64_t messages;
    uint64_t conversations;
    uint64_t raw_bytes;
    uint64_t disk_bytes;
    uint32_t segments;
    uint32_t damaged_ranges;
    uint64_t index_bytes; /* memory held by the conversation index */
    int failed; /* 0, the error that failed the shard, or CL_EDAMAGED when
                   writes are refused because of unidentified damage */
} log_shard_info;

int log_shard_info_get(log_t *log, uint32_t shard, log_shard_info *out);

/* Segment i (0-based, oldest first) of a shard; CL_ENOTFOUND past the end. */
int log_segment_info_get(log_t *log, uint32_t shard, uint32_t i,
                         log_segment_info *out);

/* What recovery found: a torn tail cut (repaired) or damaged data kept and
 * fenced off (not repaired). */
typedef struct log_damage {
    uint32_t shard;
    uint64_t seg_base;    /* segment the damage is in */
    uint64_t file_pos;    /* byte position in the uncompressed segment */
    uint64_t bytes;       /* bytes cut (torn tail) or fenced (damage) */
    uint64_t first_offset; /* first log offset affected, if known */
    uint64_t end_offset;   /* offset after the last affected, if known */
    int err;              /* CL_ECORRUPT, CL_ETRUNC, CL_EMISPLACED, -errno */
    int torn_tail;        /* 1: a torn tail that recovery cut off */
} log_damage;

/* Calls cb for each damage record, in shard order. */
void log_damage_each(log_t *log, void (*cb)(void *arg, const log_damage *d),
                     void *arg);

/* ---- for replication (later issues) ---- */

/* The term stamped on batches written from now on, and the one
 * log_append_in_term compares with. Must not decrease (CL_EINVAL). Atomic
 * with the writer's check (see log_append_in_term). */
int log_set_term(log_t *log, uint32_t shard, uint64_t term);

/* Remove every record with offset >= offset from the shard (a follower
 * dropping an uncommitted suffix): files are truncated and synced, the index
 * forgets the records, msg_id sequences go back accordingly. Waits for the
 * writer to be idle, and for the sealer if it holds a segment from the cut
 * on. A cut inside a sealed segment makes it the active segment again
 * (its sidecar is removed); inside a compressed one, the segment's bytes up
 * to the cut are rewritten as a raw <base>.log (tmp, fdatasync, rename)
 * before its .zlog is removed, so a crash leaves either the old or the new
 * log, never less. Returns 0, CL_EINVAL (offset below the start of the
 * oldest segment, in a damaged gap, or not at a batch boundary), -errno
 * (an I/O error after files were changed fails the shard). */
int log_truncate_from(log_t *log, uint32_t shard, uint64_t offset);

#endif
