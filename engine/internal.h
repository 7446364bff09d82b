/*
 * internal.h — structures shared by the engine (engine/) and recovery
 * (recovery/). Not part of the public API.
 *
 * Locking: each shard has
 *   - qmu: the append queue and writer hand-off (pending list, stopping,
 *     paused, busy);
 *   - lock (rwlock): the segment array, segment fields, the conversation
 *     index, durable counters and damage list. Readers hold it shared for the
 *     whole of a lookup + pread + verify; the writer holds it exclusively only
 *     to publish a durable group, and the sealer only to swap a segment's
 *     file. Functions named *_locked expect the caller to hold it.
 * The writer thread alone touches next_offset, conv->assigned, last_ts and the
 * active segment's file size between publishes.
 */
#ifndef CHATLOG_INTERNAL_H
#define CHATLOG_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "batch.h"
#include "io.h"
#include "log.h"

/* ---- naming rules: every on-disk name is made here ----
 *   DIR/MANIFEST                 the manifest (text, checksummed)
 *   DIR/shard-NNNN/              one directory per shard, 4-digit id
 *   <base>.log                   raw segment, base = 20-digit first offset
 *   <base>.zlog                  compressed sealed segment
 *   <base>.idx                   sidecar index of a sealed segment
 *   tmp-<name>                   being written; deleted by recovery
 *   <name>.damaged               damaged file kept aside by recovery
 */
#define NAME_MANIFEST "MANIFEST"
#define NAME_TMP_PREFIX "tmp-"
#define SUFFIX_LOG ".log"
#define SUFFIX_ZLOG ".zlog"
#define SUFFIX_IDX ".idx"
#define SUFFIX_DAMAGED ".damaged" /* appended to a file kept aside */
#define PATH_MAX_LEN 4096

void name_shard_dir(char *out, size_t n, const char *dir, uint32_t shard_id);
void name_segment(char *out, size_t n, const char *shard_dir, uint64_t base,
                  const char *suffix, int tmp);
/* Parses "<20 digits><suffix>"; returns 0 and *base, or -1. */
int name_parse_segment(const char *name, const char *suffix, uint64_t *base);

/* ---- index locations ----
 * A message's location packs the segment ordinal (20 bits), the byte
 * position of its batch in the uncompressed segment (32 bits) and its index
 * within the batch (12 bits) into 8 bytes. LOC_DAMAGED marks a msg_id known
 * to exist whose record lies in damaged data. */
#define LOC_DAMAGED UINT64_MAX
#define LOC_MAX_SEGMENTS (1u << 20)
static inline uint64_t loc_pack(uint32_t seg, uint64_t pos, uint32_t idx)
{
    return ((uint64_t)seg << 44) | ((pos & 0xffffffffull) << 12) | (idx & 0xfff);
}
static inline uint32_t loc_seg(uint64_t l) { return (uint32_t)(l >> 44); }
static inline uint64_t loc_pos(uint64_t l) { return (l >> 12) & 0xffffffffull; }
static inline uint32_t loc_idx(uint64_t l) { return (uint32_t)(l & 0xfff); }

typedef struct conv {
    uint64_t conv_id;
    uint64_t *locs;    /* locs[i] is where msg_id i+1 lives */
    uint32_t n;        /* published (durable) messages */
    uint32_t cap;
    uint64_t assigned; /* writer only: last msg_id handed out */
} conv;

typedef struct conv_table {
    conv **slots;
    uint32_t cap; /* power of two */
    uint32_t count;
} conv_table;

conv *idx_find(const conv_table *t, uint64_t conv_id);
/* Find or insert; returns NULL on allocation failure. Caller holds the
 * shard's lock exclusively. */
conv *idx_get(conv_table *t, uint64_t conv_id);
/* Append the location of the next msg_id; 0 or CL_ENOMEM. */
int idx_push(conv *c, uint64_t loc);
void idx_free(conv_table *t);
uint64_t idx_memory(const conv_table *t);

/* ---- segments ---- */
enum seg_state { SEG_ACTIVE = 0, SEG_SEALED = 1, SEG_COMPRESSED = 2 };

typedef struct zblock {
    uint64_t raw_pos;  /* position of its first byte in the raw segment */
    uint32_t raw_len;
    uint32_t comp_len;
    uint64_t file_pos; /* position of the compressed bytes in the .zlog */
    uint64_t hash;     /* XXH3-64 of the compressed bytes */
} zblock;

typedef struct sparse_ent {
    uint64_t offset;
    uint64_t pos;
} sparse_ent;

typedef struct seg {
    uint32_t ord; /* position in the shard's segment array */
    uint64_t base;
    uint64_t end;      /* next offset after the last readable record */
    uint64_t raw_size; /* bytes of valid raw data */
    uint64_t records;
    uint64_t disk_bytes;
    int state;
    int sealing; /* queued for the sealer */
    io_file *f;  /* .log, or .zlog when compressed */
    zblock *blocks;
    uint32_t nblocks;
    /* offset -> raw position, one entry per >= SPARSE_EVERY bytes */
    sparse_ent *sparse;
    uint32_t nsparse, capsparse;
    uint64_t sparse_last_pos;
} seg;

#define SPARSE_EVERY 4096u

int seg_sparse_add(seg *s, uint64_t offset, uint64_t pos);

/* A growable buffer that reads reuse. */
typedef struct rbuf {
    uint8_t *p;
    size_t cap;
} rbuf;
int rbuf_reserve(rbuf *b, size_t n);
void rbuf_free(rbuf *b);

/* Reader state: scratch buffers and the last decompressed block. */
typedef struct rctx {
    rbuf batch;
    rbuf block;
    const seg *block_seg;
    uint32_t block_idx;
    uint64_t block_gen;
} rctx;
void rctx_free(rctx *r);

typedef struct shard shard;

/* Read and verify the batch at raw position pos of segment sg (caller holds
 * the shard lock shared). *out points into r's buffers until the next call.
 * Returns 0, CL_ECORRUPT, CL_ETRUNC (pos past the valid data), -errno. */
int seg_read_batch_locked(shard *s, const seg *sg, uint64_t pos, rctx *r,
                          const uint8_t **out, batch_header *h);

/* .zlog: compress raw[0..raw_size) (whole batches) into path, verify it by
 * reading back and decompressing, fdatasync. Returns 0 and the block table
 * (caller frees) or -errno / CL_ECORRUPT. */
int zlog_write(io_vfs *io, const char *path, uint32_t shard_id, const seg *sg,
               const uint8_t *raw, zblock **blocks_out, uint32_t *nblocks_out);
/* Load and check a .zlog's header and block table. Returns 0, CL_ECORRUPT,
 * CL_ETRUNC, -errno. */
int zlog_load(io_vfs *io, io_file *f, uint32_t shard_id, uint64_t base,
              uint64_t *end, uint64_t *raw_size, uint64_t *records,
              zblock **blocks_out, uint32_t *nblocks_out);
/* Decompress block b of f into out (reserved by the call). */
int zlog_read_block(io_vfs *io, io_file *f, const zblock *b, rbuf *out);
/* Bytes of a .zlog's header and block table with its checksum. */
size_t zlog_table_end(uint32_t nblocks);
/* The checks of zlog_load on bytes in memory: t[0..tlen) holds at least the
 * header and block table of a .zlog of fsize bytes. Returns 0 and the block
 * table (caller frees), CL_ETRUNC (tlen too short for the table the header
 * announces), CL_ECORRUPT, CL_ENOMEM. */
int zlog_parse(const uint8_t *t, size_t tlen, uint64_t fsize,
               uint32_t shard_id, uint64_t base, uint64_t *end,
               uint64_t *raw_size, uint64_t *records, zblock **blocks_out,
               uint32_t *nblocks_out);
/* Check the hash of block b's compressed bytes comp[0..b->comp_len) and
 * decompress them into out. 0, CL_ECORRUPT, CL_ENOMEM. */
int zlog_decompress_block(const uint8_t *comp, const zblock *b, rbuf *out);
/* Write p[0..len) as the whole file path (created or truncated) and
 * fdatasync it; the file is removed again on failure. */
int seg_write_file(io_vfs *io, const char *path, const uint8_t *p, size_t len);

/* Sidecar index: one entry per record of a sealed segment, in offset order
 * (the entry's offset is base + its index). */
typedef struct side_ent {
    uint64_t conv_id;
    uint64_t msg_id;
    uint32_t pos;
    uint16_t rec_idx;
    uint8_t type;
} side_ent;

/* Write <base>.idx (tmp → fdatasync → rename); *bytes gets its size. The
 * caller fsyncs the directory. */
int sidecar_write(io_vfs *io, const char *shard_dir, uint32_t shard_id,
                  const seg *sg, const side_ent *ents, uint64_t n,
                  uint64_t *bytes);
/* The checks of sidecar_load on a whole .idx file in memory. */
int sidecar_parse(const uint8_t *file, uint64_t fsize, uint32_t shard_id,
                  uint64_t base, uint64_t end, uint64_t raw_size,
                  side_ent **out, uint64_t *n);
/* Returns 0 and the entries (caller frees), CL_ECORRUPT/CL_ETRUNC when the
 * file is bad or does not match the segment, -ENOENT, -errno. */
int sidecar_load(io_vfs *io, const char *path, uint32_t shard_id,
                 uint64_t base, uint64_t end, uint64_t raw_size,
                 side_ent **out, uint64_t *n);

/* ---- shards ---- */

/* A log_write_batches call, split into chunks of at most max_batch_bytes
 * (whole batches) queued back to back; the last chunk runs the callback. */
typedef struct wchain {
    int err; /* writer thread only: the first failure of a chunk */
    log_write_cb cb;
    void *arg;
} wchain;

/* A verified segment waiting to be installed (log_segment_install): the
 * received files, and what checking them found. Built by segship__check. */
typedef struct seg_install {
    uint64_t base, end, last_term;
    uint64_t first_term; /* term of its first batch */
    uint64_t raw_size;
    int64_t max_ts;
    uint8_t *zlog;
    size_t zlog_len;
    uint8_t *idx;
    size_t idx_len;
    zblock *blocks; /* the .zlog's block table */
    uint32_t nblocks;
    side_ent *ents; /* one per record, offset base + i */
    log_write_cb cb;
    void *arg;
} seg_install;

/* engine/segship.c: check received files completely (see log.h); 0 and
 * *out (free with segship__free), or CL_EINVAL, CL_ECORRUPT, CL_EMISPLACED,
 * CL_ETOOBIG, CL_ENOMEM. */
int segship__check(log_t *log, uint32_t shard_id, const log_segment_files *f,
                   seg_install **out);
void segship__free(seg_install *in);
/* Write an installed segment's files: tmp-<base>.idx and tmp-<base>.zlog
 * synced, then renamed in that order, then the directory synced. *committed
 * is set once the .zlog rename was made (from then on recovery finds the
 * whole segment, or nothing if the directory sync did not happen). On a
 * failure before that, every file written is removed again. */
int segship__write_files(io_vfs *io, const char *shard_dir,
                         const seg_install *in, int *committed);

enum { PK_APPEND = 0, PK_WRITE = 1, PK_INSTALL = 2 };

/* One queue entry: an appended record or a chunk of received batches. */
typedef struct pending {
    struct pending *next;
    uint8_t kind;   /* PK_* */
    uint8_t fenced; /* log_append_in_term: term holds the fence */
    uint8_t cut;    /* PK_WRITE, writer: cut the log at offset first */
    uint8_t last;   /* PK_WRITE: the chain's last chunk */
    int status;     /* writer: refused at take time (CL_ESTALE, ...) */
    rec_view rec;   /* PK_APPEND: key/body point into data[] */
    log_append_cb cb;
    void *arg;
    uint64_t offset; /* PK_APPEND: assigned offset; PK_WRITE: at_offset */
    uint64_t term;   /* PK_APPEND: the fence, then the term written with */
    uint64_t batch_first; /* PK_APPEND: its batch, set at encoding */
    uint32_t batch_count;
    uint32_t batch_idx;   /* index in that batch */
    uint64_t wpos;        /* position of its batch (PK_WRITE: its first
                             batch) in the group's write */
    uint32_t size; /* PK_APPEND: encoded record size; PK_WRITE: bytes */
    uint32_t nrecs;     /* PK_WRITE: records in the chunk */
    uint64_t end;       /* PK_WRITE: offset after the chunk */
    uint64_t max_term;  /* PK_WRITE: highest batch term in the chunk */
    wchain *chain;      /* PK_WRITE */
    seg_install *inst;  /* PK_INSTALL */
    uint8_t data[];     /* PK_APPEND: key, body; PK_WRITE: the batches */
} pending;

struct shard {
    log_t *log;
    uint32_t id;
    char dir[PATH_MAX_LEN];

    pthread_mutex_t qmu;
    pthread_cond_t qcond;    /* work arrived, or stop/pause changed */
    pthread_cond_t idlecond; /* writer went idle */
    pending *qhead, *qtail;
    uint32_t qlen;
    uint64_t qbytes;
    int stopping, paused, busy;
    pthread_t writer;
    int writer_started;

    pthread_rwlock_t lock;
    seg **segs;
    uint32_t nsegs, capsegs;
    conv_table convs;
    uint64_t next_offset;    /* writer: next offset to assign; changed
                                under lock (exclusive) */
    uint64_t durable_offset; /* published */
    uint64_t term;           /* under qmu: log_set_term and the writer's
                                fence check must be atomic */
    int64_t last_ts;
    uint64_t records, messages;
    uint64_t gen; /* bumped by truncation and segment swaps */
    int failed;   /* sticky error, read under qmu or lock */
    /* Recovery found damage whose records it could not identify: the
     * msg_ids in it are unknown, so appends are refused (CL_EDAMAGED) rather
     * than risk handing out an acked msg_id again. Lifted by repair. */
    int write_fenced;
    log_damage *damage;
    uint32_t ndamage, capdamage;

    uint8_t *wbuf; /* writer: the encoded group */
    size_t wcap;
    uint32_t completing; /* appends handed to the completer, under qmu */
};

/* A finished group on its way to the completion thread: on_commit (when
 * status is 0) and then every append's callback run there, in order, so the
 * writer can go back to the disk at once. */
typedef struct done_group {
    struct done_group *next;
    shard *s;
    pending *list;
    uint32_t count; /* queue entries in list */
    uint32_t nents; /* records in ents */
    int status;
    log_entry ents[]; /* nents entries when status is 0 */
} done_group;

struct log {
    char dir[PATH_MAX_LEN];
    log_options opt;
    io_vfs *io;
    uint32_t nshards;
    shard *shards;

    pthread_mutex_t cmu; /* completion queue */
    pthread_cond_t ccond;
    done_group *chead, *ctail;
    int cstop;
    pthread_t completer;
    int completer_started;

    pthread_mutex_t smu; /* sealer queue */
    pthread_cond_t scond;
    struct seal_job *sq_head, *sq_tail;
    int sealer_stop;
    int sealer_busy;
    pthread_t sealer;
    int sealer_started;
};

void log__msg(log_t *log, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int shard__add_damage_locked(shard *s, const log_damage *d);
/* Create segment file <base>.log in the shard (truncating a leftover) and
 * fsync the directory; appends it to the segment array. */
int shard__new_segment_locked(shard *s, uint64_t base, seg **out);
seg *seg__alloc(uint32_t ord, uint64_t base);
void seg__free(log_t *log, seg *sg);
/* Queue a sealed raw segment for the sealer (sidecar + compression). */
void log__queue_seal(log_t *log, shard *s, seg *sg);

/* recovery/recovery.c: rebuild a shard's segments and index from its
 * directory. Called by log_open with the shard lock unused (no threads yet).
 */
int rcv_shard(shard *s);

#endif
