/*
 * batch.c — the record batch, the unit of the log.
 *
 * FORMAT (all integers little-endian; offsets in bytes from batch start)
 *
 *   0  u32  magic         0x31424C43 ("CLB1")
 *   4  u16  version       1
 *   6  u16  flags         bit 0 GROUP_END: last batch of one write (group
 *                         commit); every other bit must be 0
 *   8  u32  length        whole batch: header + records + checksum
 *  12  u32  shard_id      the shard whose log holds this batch
 *  16  u64  first_offset  log offset of the first record; record i has
 *                         offset first_offset + i
 *  24  u32  record_count  1 .. 4096
 *  28  u32  reserved      0
 *  32  u64  term          leader term (epoch) that wrote the batch
 *  40  i64  ts_ms         wall-clock time the batch was formed (ms)
 *  48  records, record_count of them, back to back:
 *        0  u32  rec_len     44 + key_len + body_len
 *        4  u8   type        1 .. REC_TYPE_MAX (enum rec_type; 7 is the
 *                            Raft no-op: conv_id, msg_id, sender_id 0, no
 *                            key or body, in any shard)
 *        5  u8   flags       0
 *        6  u16  key_len     0 .. 255 (the idempotency key, client_msg_id)
 *        8  u64  conv_id
 *       16  u64  msg_id
 *       24  u64  sender_id
 *       32  i64  ts_ms       server timestamp of the record
 *       40  u32  body_len    0 .. RECORD_MAX_BODY
 *       44  key bytes, then body bytes (protobuf)
 *  length-8  u64  XXH3-64 (seed 0) of bytes [0, length-8)
 *
 * VALID means: magic and version match, no unknown flag, reserved is zero,
 * BATCH_OVERHEAD + record_count*RECORD_HEADER_SIZE <= length <=
 * BATCH_MAX_BYTES, the checksum matches, and the records exactly fill the
 * space between header and checksum with every record's fields in range.
 * The checksum covers every header field — length and term included — so a
 * flipped length or term is caught, and because shard_id and first_offset are
 * inside it, a valid batch found where another belongs (a misdirected write)
 * is rejected by batch_verify_at().
 */
#include "batch.h"

#include <string.h>
#include <xxhash.h>

#include "errors.h"
#include "util.h"

size_t batch_encode(uint8_t *out, batch_header *h, const rec_view *recs,
                    uint32_t n)
{
    size_t pos = BATCH_HEADER_SIZE;
    for (uint32_t i = 0; i < n; i++) {
        const rec_view *r = &recs[i];
        uint8_t *p = out + pos;
        put_u32(p + 0, (uint32_t)batch_record_size(r->key_len, r->body_len));
        p[4] = r->type;
        p[5] = 0;
        put_u16(p + 6, (uint16_t)r->key_len);
        put_u64(p + 8, r->conv_id);
        put_u64(p + 16, r->msg_id);
        put_u64(p + 24, r->sender_id);
        put_u64(p + 32, (uint64_t)r->ts_ms);
        put_u32(p + 40, r->body_len);
        if (r->key_len)
            memcpy(p + RECORD_HEADER_SIZE, r->key, r->key_len);
        if (r->body_len)
            memcpy(p + RECORD_HEADER_SIZE + r->key_len, r->body, r->body_len);
        pos += batch_record_size(r->key_len, r->body_len);
    }
    size_t len = pos + BATCH_TRAILER_SIZE;
    h->length = (uint32_t)len;
    h->record_count = n;
    put_u32(out + 0, BATCH_MAGIC);
    put_u16(out + 4, BATCH_VERSION);
    put_u16(out + 6, h->flags);
    put_u32(out + 8, h->length);
    put_u32(out + 12, h->shard_id);
    put_u64(out + 16, h->first_offset);
    put_u32(out + 24, n);
    put_u32(out + 28, 0);
    put_u64(out + 32, h->term);
    put_u64(out + 40, (uint64_t)h->ts_ms);
    put_u64(out + pos, XXH3_64bits(out, pos));
    return len;
}

int batch_peek_header(const uint8_t *buf, batch_header *out)
{
    if (get_u32(buf) != BATCH_MAGIC || get_u16(buf + 4) != BATCH_VERSION ||
        (get_u16(buf + 6) & ~BATCH_FLAGS_KNOWN) || get_u32(buf + 28) != 0)
        return CL_ECORRUPT;
    out->flags = get_u16(buf + 6);
    out->length = get_u32(buf + 8);
    out->shard_id = get_u32(buf + 12);
    out->first_offset = get_u64(buf + 16);
    out->record_count = get_u32(buf + 24);
    out->term = get_u64(buf + 32);
    out->ts_ms = (int64_t)get_u64(buf + 40);
    if (out->record_count == 0 || out->record_count > BATCH_MAX_RECORDS ||
        out->length > BATCH_MAX_BYTES ||
        out->length < BATCH_OVERHEAD + (uint64_t)out->record_count * RECORD_HEADER_SIZE)
        return CL_ECORRUPT;
    return 0;
}

int batch_verify(const uint8_t *buf, size_t len, batch_header *out)
{
    if (len < BATCH_HEADER_SIZE)
        return CL_ETRUNC;
    int rc = batch_peek_header(buf, out);
    if (rc)
        return rc;
    if (len < out->length)
        return CL_ETRUNC;
    size_t body_end = out->length - BATCH_TRAILER_SIZE;
    if (XXH3_64bits(buf, body_end) != get_u64(buf + body_end))
        return CL_ECORRUPT;
    /* The checksum matched, but a writer bug (or a collision) must still not
     * make readers walk out of bounds: check every record's layout. */
    size_t pos = BATCH_HEADER_SIZE;
    for (uint32_t i = 0; i < out->record_count; i++) {
        if (body_end - pos < RECORD_HEADER_SIZE)
            return CL_ECORRUPT;
        const uint8_t *p = buf + pos;
        uint32_t rec_len = get_u32(p);
        uint32_t key_len = get_u16(p + 6);
        uint32_t body_len = get_u32(p + 40);
        if (p[4] == 0 || p[4] > REC_TYPE_MAX || p[5] != 0 ||
            key_len > RECORD_MAX_KEY || body_len > RECORD_MAX_BODY ||
            rec_len != batch_record_size(key_len, body_len) ||
            rec_len > body_end - pos)
            return CL_ECORRUPT;
        pos += rec_len;
    }
    if (pos != body_end)
        return CL_ECORRUPT;
    return 0;
}

int batch_verify_at(const uint8_t *buf, size_t len, uint32_t shard_id,
                    uint64_t first_offset, batch_header *out)
{
    int rc = batch_verify(buf, len, out);
    if (rc)
        return rc;
    if (out->shard_id != shard_id || out->first_offset != first_offset)
        return CL_EMISPLACED;
    return 0;
}

void batch_set_flags(uint8_t *buf, const batch_header *h, uint16_t flags)
{
    size_t body_end = h->length - BATCH_TRAILER_SIZE;
    put_u16(buf + 6, flags);
    put_u64(buf + body_end, XXH3_64bits(buf, body_end));
}

int batch_next_record(const uint8_t *buf, const batch_header *h, size_t *pos,
                      rec_view *rec)
{
    if (*pos == 0)
        *pos = BATCH_HEADER_SIZE;
    if (*pos >= h->length - BATCH_TRAILER_SIZE)
        return 1;
    const uint8_t *p = buf + *pos;
    rec->type = p[4];
    rec->flags = p[5];
    rec->key_len = get_u16(p + 6);
    rec->conv_id = get_u64(p + 8);
    rec->msg_id = get_u64(p + 16);
    rec->sender_id = get_u64(p + 24);
    rec->ts_ms = (int64_t)get_u64(p + 32);
    rec->body_len = get_u32(p + 40);
    rec->key = p + RECORD_HEADER_SIZE;
    rec->body = p + RECORD_HEADER_SIZE + rec->key_len;
    *pos += get_u32(p);
    return 0;
}
