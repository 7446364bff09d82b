/*
 * batch.h — encoding and decoding of record batches, the unit the log is
 * written, checksummed, replicated and recovered in. The byte layout is
 * specified at the top of batch.c and in docs/storage.md.
 *
 * Errors: decoders return 0 or a negative CHATLOG error (errors.h):
 * CL_ETRUNC when the buffer ends before the batch does (a torn tail looks like
 * this), CL_ECORRUPT when the bytes are not a valid batch (bad magic, version,
 * length, checksum, record layout), CL_EMISPLACED when a valid batch names a
 * different shard or offset than where it was read from.
 *
 * Ownership: decoded records point into the caller's buffer and are valid as
 * long as it is.
 */
#ifndef CHATLOG_BATCH_H
#define CHATLOG_BATCH_H

#include <stddef.h>
#include <stdint.h>

#define BATCH_MAGIC 0x31424C43u /* "CLB1" as stored (little-endian) */
#define BATCH_VERSION 1
#define BATCH_HEADER_SIZE 48
#define BATCH_TRAILER_SIZE 8
#define BATCH_OVERHEAD (BATCH_HEADER_SIZE + BATCH_TRAILER_SIZE)
#define RECORD_HEADER_SIZE 44
/* Hard limits that a decoder enforces on untrusted bytes. */
#define BATCH_MAX_BYTES (8u << 20)  /* one batch, header to checksum */
#define BATCH_MAX_RECORDS 4096u     /* records in one batch */
#define RECORD_MAX_KEY 255u         /* client_msg_id bytes */
#define RECORD_MAX_BODY (1u << 20)  /* protobuf body bytes */

/* Batch header flags. GROUP_END marks the last batch of one write (one
 * group commit: one pwrite, one fdatasync); recovery uses it to tell a torn
 * last write from damage in synced data. */
#define BATCH_FLAG_GROUP_END 0x1u
#define BATCH_FLAGS_KNOWN BATCH_FLAG_GROUP_END

/* Record types. Only REC_MESSAGE takes a per-conversation msg_id from the
 * sequence; the others carry 0 or the msg_id they refer to. */
enum rec_type {
    REC_MESSAGE = 1,
    REC_CONV_CREATED = 2,
    REC_MEMBERS_CHANGED = 3,
    REC_READ_POINTER = 4,
    REC_EDIT = 5,
    REC_DELETE = 6,
    /* Raft no-op: written by a new leader as the first batch of its term
     * (Raft section 8). No chat data: conv_id, msg_id and sender_id 0, no key,
     * no body. It belongs to no conversation (the index, the msg_id
     * sequences and the message counts ignore it) and may sit in any shard. */
    REC_NOOP = 7,
    REC_TYPE_MAX = 7,
};

typedef struct rec_view {
    uint8_t type;
    uint8_t flags;
    uint64_t conv_id;
    uint64_t msg_id;
    uint64_t sender_id;
    int64_t ts_ms;
    const uint8_t *key; /* idempotency key (client_msg_id); key_len may be 0 */
    uint32_t key_len;
    const uint8_t *body; /* protobuf-encoded body */
    uint32_t body_len;
} rec_view;

typedef struct batch_header {
    uint16_t flags;  /* BATCH_FLAG_* */
    uint32_t length; /* whole batch: header + records + checksum */
    uint32_t shard_id;
    uint64_t first_offset;
    uint32_t record_count;
    uint64_t term;
    int64_t ts_ms;
} batch_header;

/* Size of one encoded record. */
static inline size_t batch_record_size(uint32_t key_len, uint32_t body_len)
{
    return RECORD_HEADER_SIZE + (size_t)key_len + body_len;
}

/* Encode a batch of n records into out, which must hold
 * BATCH_OVERHEAD + sum(batch_record_size) bytes, with h's flags, shard_id,
 * first_offset, term and ts_ms. h->length and h->record_count are filled in. Returns the bytes written. The caller has
 * checked the limits above. */
size_t batch_encode(uint8_t *out, batch_header *h, const rec_view *recs,
                    uint32_t n);

/* Parse and verify the 48-byte header in buf (at least BATCH_HEADER_SIZE
 * bytes): magic, version, flags, and length within limits. Does not verify
 * the checksum. Returns 0, CL_ECORRUPT. */
int batch_peek_header(const uint8_t *buf, batch_header *out);

/* Verify a whole batch in buf[0..len): header, checksum, record layout.
 * Returns 0 and fills *out, CL_ETRUNC if len < the batch's length, or
 * CL_ECORRUPT. The checksum covers every byte but itself. */
int batch_verify(const uint8_t *buf, size_t len, batch_header *out);

/* Like batch_verify, and also checks that the batch is where it was read
 * from: its shard id and first offset. Returns CL_EMISPLACED if not. */
int batch_verify_at(const uint8_t *buf, size_t len, uint32_t shard_id,
                    uint64_t first_offset, batch_header *out);

/* Rewrite the flags of a batch that batch_verify accepted and recompute its
 * checksum in place (the GROUP_END flag is a property of the local write,
 * restamped when received batches are written). */
void batch_set_flags(uint8_t *buf, const batch_header *h, uint16_t flags);

/* Bytes of the batch log_noop_batch (log.h) encodes. */
#define LOG_NOOP_BATCH_BYTES (BATCH_OVERHEAD + RECORD_HEADER_SIZE)

/* Iterate the records of a verified batch. *pos starts at 0; each call fills
 * *rec and returns 0, or returns 1 after the last record. Only valid on a
 * buffer batch_verify accepted (which already checked the record layout). */
int batch_next_record(const uint8_t *buf, const batch_header *h, size_t *pos,
                      rec_view *rec);

#endif
