/*
 * batch_decode.c — fuzz target: arbitrary bytes as a raw segment, through
 * the batch decoder (engine/batch.c).
 *
 * Input: byte 0 is a mode, the rest is the segment.
 *   mode bit 0: before verifying each candidate batch, write the correct
 *               XXH3 checksum into its trailer (in a copy), so that the
 *               fuzzer gets past the checksum to the record layout rules.
 * The segment is walked like recovery walks one: batch_verify at the current
 * position; on success step over the batch, on failure resynchronise at the
 * next "CLB1" magic.
 *
 * Properties checked:
 *  - nothing reads outside the input (the input sits in an exactly sized
 *    heap buffer; ASan);
 *  - the result is 0, CL_ETRUNC or CL_ECORRUPT, and CL_ETRUNC only when the
 *    buffer really ends before the batch would;
 *  - an accepted batch: its length fits the buffer and the limits,
 *    batch_next_record yields exactly record_count records, each inside the
 *    batch and with fields in range, and batch_encode of the decoded header
 *    and records gives back the same bytes (round trip);
 *  - an accepted batch is rejected when cut by one byte (CL_ETRUNC), when
 *    one bit of it is flipped (CL_ECORRUPT, or CL_ETRUNC when the flip
 *    grew the length field: the checksum covers every byte), and by batch_verify_at at another shard or offset
 *    (CL_EMISPLACED).
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "batch.h"
#include "common.h"
#include "errors.h"
#include "util.h"

static void check_accepted(const uint8_t *b, size_t avail,
                           const batch_header *h)
{
    FUZZ_CHECK(h->length <= avail && h->length <= BATCH_MAX_BYTES &&
                   h->length >= BATCH_OVERHEAD + (size_t)h->record_count * RECORD_HEADER_SIZE,
               "length %u avail %zu", h->length, avail);
    FUZZ_CHECK(h->record_count >= 1 && h->record_count <= BATCH_MAX_RECORDS,
               "record_count %u", h->record_count);

    batch_header peek;
    FUZZ_CHECK(batch_peek_header(b, &peek) == 0 && peek.length == h->length &&
                   peek.record_count == h->record_count && peek.flags == h->flags,
               "peek disagrees with verify");
    FUZZ_CHECK((h->flags & ~BATCH_FLAGS_KNOWN) == 0, "unknown flags 0x%x accepted",
               h->flags);

    rec_view *recs = malloc(h->record_count * sizeof *recs);
    FUZZ_CHECK(recs != NULL, "oom");
    size_t pos = 0;
    uint32_t n = 0;
    rec_view r;
    const uint8_t *lo = b + BATCH_HEADER_SIZE, *hi = b + h->length - BATCH_TRAILER_SIZE;
    while (batch_next_record(b, h, &pos, &r) == 0) {
        FUZZ_CHECK(n < h->record_count, "more records than record_count %u",
                   h->record_count);
        FUZZ_CHECK(r.type >= 1 && r.type <= REC_TYPE_MAX && r.flags == 0 &&
                       r.key_len <= RECORD_MAX_KEY && r.body_len <= RECORD_MAX_BODY,
                   "record %u fields out of range", n);
        FUZZ_CHECK(r.key >= lo && r.key + r.key_len <= hi && r.body >= lo &&
                       r.body + r.body_len <= hi && r.key + r.key_len == r.body,
                   "record %u outside its batch", n);
        recs[n++] = r;
    }
    FUZZ_CHECK(n == h->record_count, "%u records, header says %u", n,
               h->record_count);
    FUZZ_CHECK(pos == h->length - BATCH_TRAILER_SIZE, "records end at %zu of %u",
               pos, h->length);

    /* Round trip. */
    uint8_t *out = malloc(h->length);
    FUZZ_CHECK(out != NULL, "oom");
    batch_header e = {.flags = h->flags, .shard_id = h->shard_id,
                      .first_offset = h->first_offset, .term = h->term,
                      .ts_ms = h->ts_ms};
    size_t len = batch_encode(out, &e, recs, n);
    FUZZ_CHECK(len == h->length && e.length == h->length && e.record_count == n,
               "re-encoded length %zu, decoded %u", len, h->length);
    FUZZ_CHECK(memcmp(out, b, len) == 0, "re-encoded bytes differ");

    /* No acceptance of near misses. */
    batch_header x;
    FUZZ_CHECK(batch_verify(out, len - 1, &x) == CL_ETRUNC, "cut batch accepted");
    size_t bit = (size_t)(XXH3_64bits(b, len) % (len * 8));
    out[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    int frc = batch_verify(out, len, &x);
    FUZZ_CHECK(frc == CL_ECORRUPT || frc == CL_ETRUNC,
               "bit %zu flipped: rc %d", bit, frc);
    out[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    FUZZ_CHECK(batch_verify_at(out, len, h->shard_id, h->first_offset, &x) == 0,
               "verify_at at its own place");
    FUZZ_CHECK(batch_verify_at(out, len, h->shard_id + 1, h->first_offset, &x) ==
                   CL_EMISPLACED, "verify_at other shard");
    FUZZ_CHECK(batch_verify_at(out, len, h->shard_id, h->first_offset + 1, &x) ==
                   CL_EMISPLACED, "verify_at other offset");
    free(out);
    free(recs);
}

static void fix_checksum(uint8_t *b, size_t avail)
{
    batch_header h;
    if (avail < BATCH_HEADER_SIZE || batch_peek_header(b, &h) || h.length > avail)
        return;
    size_t end = h.length - BATCH_TRAILER_SIZE;
    put_u64(b + end, XXH3_64bits(b, end));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int fix = data[0] & 1;
    size_t len = size - 1;
    /* Exactly sized, so ASan catches a read one past the segment. */
    uint8_t *seg = malloc(len ? len : 1);
    FUZZ_CHECK(seg != NULL, "oom");
    memcpy(seg, data + 1, len);
    static const uint8_t magic[4] = {0x43, 0x4C, 0x42, 0x31};

    size_t pos = 0;
    while (pos < len) {
        if (fix)
            fix_checksum(seg + pos, len - pos);
        batch_header h;
        int rc = batch_verify(seg + pos, len - pos, &h);
        if (rc == 0) {
            check_accepted(seg + pos, len - pos, &h);
            pos += h.length;
            continue;
        }
        FUZZ_CHECK(rc == CL_ETRUNC || rc == CL_ECORRUPT, "rc %d", rc);
        if (rc == CL_ETRUNC) {
            batch_header p;
            FUZZ_CHECK(len - pos < BATCH_HEADER_SIZE ||
                           (batch_peek_header(seg + pos, &p) == 0 &&
                            p.length > len - pos),
                       "CL_ETRUNC though %zu bytes hold the batch", len - pos);
        }
        /* Resynchronise at the next magic, as recovery does. */
        const uint8_t *m = NULL;
        if (pos + 1 < len)
            m = memmem(seg + pos + 1, len - pos - 1, magic, sizeof magic);
        if (!m)
            break;
        pos = (size_t)(m - seg);
    }
    free(seg);
    return 0;
}
