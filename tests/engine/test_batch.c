/* Unit tests of the batch format (engine/batch.c). */
#include <stdlib.h>
#include <xxhash.h>

#include "batch.h"
#include "errors.h"
#include "test.h"
#include "util.h"

static size_t make_batch(uint8_t *buf, uint32_t n, batch_header *h)
{
    rec_view r[8];
    for (uint32_t i = 0; i < n; i++) {
        r[i] = (rec_view){.type = REC_MESSAGE, .conv_id = 100 + i, .msg_id = i + 1,
                          .sender_id = 7, .ts_ms = 1700000000000 + i,
                          .key = (const uint8_t *)"c-1", .key_len = 3,
                          .body = (const uint8_t *)"hello world", .body_len = 11};
    }
    *h = (batch_header){.shard_id = 3, .first_offset = 42, .term = 9, .ts_ms = 5};
    return batch_encode(buf, h, r, n);
}

TEST(batch_round_trip)
{
    uint8_t buf[4096];
    batch_header h, d;
    size_t len = make_batch(buf, 5, &h);
    ASSERT_EQ(len, BATCH_OVERHEAD + 5 * batch_record_size(3, 11));
    ASSERT_EQ(h.length, len);
    ASSERT_OK(batch_verify_at(buf, len, 3, 42, &d));
    ASSERT_EQ(d.record_count, 5);
    ASSERT_U64_EQ(d.term, 9);
    ASSERT_U64_EQ(d.first_offset, 42);
    size_t pos = 0;
    rec_view r;
    uint32_t i = 0;
    while (batch_next_record(buf, &d, &pos, &r) == 0) {
        ASSERT_U64_EQ(r.conv_id, 100 + i);
        ASSERT_U64_EQ(r.msg_id, i + 1);
        ASSERT_EQ(r.body_len, 11);
        ASSERT_MEM_EQ(r.body, "hello world", 11);
        ASSERT_MEM_EQ(r.key, "c-1", 3);
        i++;
    }
    ASSERT_EQ(i, 5);
}

TEST(batch_every_flipped_bit_is_rejected)
{
    uint8_t buf[4096];
    batch_header h, d;
    size_t len = make_batch(buf, 3, &h);
    for (size_t byte = 0; byte < len; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[byte] ^= (uint8_t)(1 << bit);
            int rc = batch_verify(buf, len, &d);
            if (rc == 0)
                FAIL("flip of byte %zu bit %d accepted", byte, bit);
            buf[byte] ^= (uint8_t)(1 << bit);
        }
    }
    ASSERT_OK(batch_verify(buf, len, &d));
}

TEST(batch_truncated_is_etrunc)
{
    uint8_t buf[4096];
    batch_header h, d;
    size_t len = make_batch(buf, 2, &h);
    for (size_t cut = 0; cut < len; cut++) {
        int rc = batch_verify(buf, cut, &d);
        ASSERT(rc == CL_ETRUNC || (cut >= BATCH_HEADER_SIZE && rc == CL_ECORRUPT));
        if (cut >= BATCH_HEADER_SIZE)
            ASSERT_EQ(rc, CL_ETRUNC);
    }
}

TEST(batch_misdirected_is_rejected)
{
    uint8_t buf[4096];
    batch_header h, d;
    size_t len = make_batch(buf, 2, &h);
    ASSERT_EQ(batch_verify_at(buf, len, 4, 42, &d), CL_EMISPLACED);
    ASSERT_EQ(batch_verify_at(buf, len, 3, 43, &d), CL_EMISPLACED);
    ASSERT_OK(batch_verify_at(buf, len, 3, 42, &d));
}

TEST(batch_forged_length_with_valid_checksum_is_rejected)
{
    /* A writer bug or forgery: records that do not fill the batch exactly,
     * with a checksum recomputed to match. The layout check must catch it. */
    uint8_t buf[4096];
    batch_header h, d;
    size_t len = make_batch(buf, 2, &h);
    put_u32(buf + BATCH_HEADER_SIZE, 9999); /* first record's rec_len */
    put_u64(buf + len - 8, XXH3_64bits(buf, len - 8));
    ASSERT_EQ(batch_verify(buf, len, &d), CL_ECORRUPT);
}

TEST(batch_header_limits)
{
    uint8_t buf[BATCH_HEADER_SIZE] = {0};
    batch_header h;
    put_u32(buf, BATCH_MAGIC);
    put_u16(buf + 4, BATCH_VERSION);
    put_u32(buf + 8, BATCH_MAX_BYTES + 1);
    put_u32(buf + 24, 1);
    ASSERT_EQ(batch_peek_header(buf, &h), CL_ECORRUPT);
    put_u32(buf + 8, 200);
    put_u32(buf + 24, 0); /* no records */
    ASSERT_EQ(batch_peek_header(buf, &h), CL_ECORRUPT);
    put_u32(buf + 24, 1);
    ASSERT_OK(batch_peek_header(buf, &h));
    put_u16(buf + 6, BATCH_FLAG_GROUP_END);
    ASSERT_OK(batch_peek_header(buf, &h));
    ASSERT_EQ(h.flags, BATCH_FLAG_GROUP_END);
    put_u16(buf + 6, 2); /* unknown flag */
    ASSERT_EQ(batch_peek_header(buf, &h), CL_ECORRUPT);
}
