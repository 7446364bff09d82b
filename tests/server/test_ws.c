/* Unit tests of the WebSocket codec (server/ws.c). */
#include <stdlib.h>

#include "test.h"
#include "ws.h"

/* ---- helpers ---- */

static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d}; /* RFC 6455 §5.7 */

#define FIN 0x80

/* A client frame: b0 is FIN|RSV|opcode; mask NULL sends it unmasked;
 * lenform 0 picks the minimal length encoding, 126 or 127 forces one. */
static size_t mkframe_len(uint8_t *out, int b0, const void *payload,
                          size_t len, const uint8_t *mask, int lenform)
{
    size_t h = 0;
    out[h++] = (uint8_t)b0;
    uint8_t m = mask ? 0x80 : 0;
    if (lenform == 0)
        lenform = len < 126 ? 0 : len <= 0xFFFF ? 126 : 127;
    if (lenform == 0) {
        out[h++] = (uint8_t)(m | len);
    } else if (lenform == 126) {
        out[h++] = m | 126;
        out[h++] = (uint8_t)(len >> 8);
        out[h++] = (uint8_t)len;
    } else {
        out[h++] = m | 127;
        for (int i = 0; i < 8; i++)
            out[h++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    if (mask) {
        memcpy(out + h, mask, 4);
        h += 4;
    }
    const uint8_t *p = payload;
    for (size_t i = 0; i < len; i++)
        out[h + i] = mask ? p[i] ^ mask[i & 3] : p[i];
    return h + len;
}

static size_t mkframe(uint8_t *out, int b0, const void *payload, size_t len)
{
    return mkframe_len(out, b0, payload, len, MASK, 0);
}

/* What the callback saw: a log of every delivery, and the last one. */
typedef struct rec {
    char *log;
    size_t log_len, log_cap;
    int count;
    int last_op, last_code;
    uint8_t *last;
    size_t last_len;
    int stop_rc; /* returned by the callback when non-zero */
} rec;

static void log_put(rec *r, const void *d, size_t n)
{
    if (r->log_len + n + 1 > r->log_cap) {
        r->log_cap = (r->log_len + n + 1) * 2;
        r->log = realloc(r->log, r->log_cap);
        ASSERT(r->log);
    }
    memcpy(r->log + r->log_len, d, n);
    r->log_len += n;
    r->log[r->log_len] = '\0';
}

static int collect(void *arg, int op, const uint8_t *data, size_t len,
                   int close_code)
{
    rec *r = arg;
    char h[64];
    int hn = snprintf(h, sizeof h, "[%d %d %zu]", op, close_code, len);
    log_put(r, h, (size_t)hn);
    ASSERT(data != NULL);
    log_put(r, data, len);
    free(r->last);
    r->last = malloc(len + 1);
    ASSERT(r->last);
    memcpy(r->last, data, len);
    r->last[len] = 0;
    r->last_len = len;
    r->last_op = op;
    r->last_code = close_code;
    r->count++;
    return r->stop_rc;
}

static void rec_free(rec *r)
{
    free(r->log);
    free(r->last);
    memset(r, 0, sizeof *r);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Feed stream to the parser as a connection would: in reads of chunk bytes
 * (chunk 0: random sizes from *seed), keeping the unconsumed tail between
 * reads. Checks the tail rule on every call. Returns the first negative
 * ws_parse result, or the length of the tail left at the end. */
static long feed(ws_parser *p, const uint8_t *stream, size_t len, size_t chunk,
                 uint64_t *seed, rec *r)
{
    uint8_t *pend = malloc(len + 1);
    ASSERT(pend);
    size_t plen = 0, off = 0;
    long result = 0;
    while (off < len) {
        size_t k = chunk ? chunk : 1 + (size_t)(rng_next(seed) % 40);
        if (k > len - off)
            k = len - off;
        memcpy(pend + plen, stream + off, k);
        plen += k;
        off += k;
        ssize_t rc = ws_parse(p, pend, plen, collect, r);
        if (rc < 0) {
            result = (long)rc;
            break;
        }
        ASSERT((size_t)rc <= plen);
        ASSERT_LT(plen - (size_t)rc, WS_MAX_FRAME_HEADER);
        memmove(pend, pend + rc, plen - (size_t)rc);
        plen -= (size_t)rc;
        result = (long)plen;
    }
    free(pend);
    return result;
}

/* Parse one whole buffer (copied: ws_parse unmasks in place). */
static ssize_t parse_all(ws_parser *p, const uint8_t *data, size_t len, rec *r)
{
    uint8_t *copy = malloc(len ? len : 1);
    ASSERT(copy);
    memcpy(copy, data, len);
    ssize_t rc = ws_parse(p, copy, len, collect, r);
    free(copy);
    return rc;
}

/* The result of parsing a stream that should fail, checked whole and byte
 * by byte (both must fail the same way). */
static long parse_err(size_t max_message, const uint8_t *data, size_t len)
{
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, max_message);
    ssize_t whole = parse_all(&p, data, len, &r);
    ws_parser_free(&p);
    rec_free(&r);
    ws_parser_init(&p, max_message);
    long bytes = feed(&p, data, len, 1, NULL, &r);
    ws_parser_free(&p);
    rec_free(&r);
    ASSERT_EQ(whole, bytes);
    return bytes;
}

/* ---- handshake ---- */

TEST(ws_accept_key_rfc_example)
{
    char out[29];
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    ASSERT_OK(ws_accept_key(key, strlen(key), out));
    ASSERT_STR_EQ(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST(ws_accept_key_rejects_malformed_keys)
{
    char out[29];
    ASSERT_EQ(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ=", 23, out), -1);
    ASSERT_EQ(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ===", 25, out), -1);
    ASSERT_EQ(ws_accept_key("dGhlIHNhbXBsZSBub25jZQxx", 24, out), -1);
    ASSERT_EQ(ws_accept_key("dGhlIHNhbXBs ZSBub25jZ==", 24, out), -1);
    ASSERT_EQ(ws_accept_key("dGhlIHNhbXBsZSBub25j\0Q==", 24, out), -1);
    ASSERT_EQ(ws_accept_key("", 0, out), -1);
    /* Another valid key: 16 zero bytes. */
    ASSERT_OK(ws_accept_key("AAAAAAAAAAAAAAAAAAAAAA==", 24, out));
    ASSERT_EQ(strlen(out), 28);
}

/* ---- RFC 6455 §5.7 examples ---- */

TEST(ws_rfc_masked_hello)
{
    uint8_t f[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(ws_parse(&p, f, sizeof f, collect, &r), sizeof f);
    ASSERT_EQ(r.count, 1);
    ASSERT_EQ(r.last_op, WS_OP_TEXT);
    ASSERT_EQ(r.last_len, 5);
    ASSERT_MEM_EQ(r.last, "Hello", 5);
    ASSERT(ws_parser_idle(&p));
    ws_parser_free(&p);
    rec_free(&r);
}

TEST(ws_rfc_unmasked_hello_rejected)
{
    uint8_t f[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    ASSERT_EQ(parse_err(1024, f, sizeof f), -WS_CLOSE_PROTOCOL);
}

TEST(ws_rfc_fragmented_unmasked_rejected)
{
    uint8_t f[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    ASSERT_EQ(parse_err(1024, f, sizeof f), -WS_CLOSE_PROTOCOL);
    /* The same fragments masked form "Hello". */
    uint8_t g[64];
    size_t n = mkframe(g, WS_OP_TEXT, "Hel", 3);
    n += mkframe(g + n, FIN | WS_OP_CONT, "lo", 2);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(ws_parse(&p, g, n, collect, &r), n);
    ASSERT_EQ(r.count, 1);
    ASSERT_EQ(r.last_op, WS_OP_TEXT);
    ASSERT_EQ(r.last_len, 5);
    ASSERT_MEM_EQ(r.last, "Hello", 5);
    ws_parser_free(&p);
    rec_free(&r);
}

TEST(ws_rfc_ping_pong)
{
    /* Unmasked ping (as in the RFC, a server's frame): refused from a
     * client. */
    uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    ASSERT_EQ(parse_err(1024, ping, sizeof ping), -WS_CLOSE_PROTOCOL);
    /* Masked pong, the RFC's example. */
    uint8_t pong[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(ws_parse(&p, pong, sizeof pong, collect, &r), sizeof pong);
    ASSERT_EQ(r.count, 1);
    ASSERT_EQ(r.last_op, WS_OP_PONG);
    ASSERT_MEM_EQ(r.last, "Hello", 5);
    /* And a masked ping. */
    uint8_t f[32];
    size_t n = mkframe(f, FIN | WS_OP_PING, "Hello", 5);
    ASSERT_EQ(ws_parse(&p, f, n, collect, &r), n);
    ASSERT_EQ(r.last_op, WS_OP_PING);
    ASSERT_EQ(r.last_len, 5);
    ASSERT_MEM_EQ(r.last, "Hello", 5);
    ws_parser_free(&p);
    rec_free(&r);
}

TEST(ws_frame_header_rfc_lengths)
{
    uint8_t h[10];
    /* "Hello", unmasked (the RFC's server frame). */
    ASSERT_EQ(ws_frame_header(h, WS_OP_TEXT, 5), 2);
    ASSERT_MEM_EQ(h, "\x81\x05", 2);
    ASSERT_EQ(ws_frame_header(h, WS_OP_BINARY, 125), 2);
    ASSERT_EQ(h[1], 125);
    /* 256 bytes binary: 0x82 0x7E 0x0100. */
    ASSERT_EQ(ws_frame_header(h, WS_OP_BINARY, 256), 4);
    ASSERT_MEM_EQ(h, "\x82\x7e\x01\x00", 4);
    ASSERT_EQ(ws_frame_header(h, WS_OP_BINARY, 126), 4);
    ASSERT_EQ(ws_frame_header(h, WS_OP_BINARY, 65535), 4);
    ASSERT_MEM_EQ(h + 2, "\xff\xff", 2);
    /* 64 KiB binary: 0x82 0x7F 0x0000000000010000. */
    ASSERT_EQ(ws_frame_header(h, WS_OP_BINARY, 65536), 10);
    ASSERT_MEM_EQ(h, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    ASSERT_EQ(ws_frame_header(h, WS_OP_PING, 0), 2);
    ASSERT_MEM_EQ(h, "\x89\x00", 2);
}

/* ---- reassembly and splitting ---- */

TEST(ws_fragmented_message_with_interleaved_ping)
{
    uint8_t f[256];
    size_t n = mkframe(f, WS_OP_TEXT, "abc", 3);
    n += mkframe(f + n, FIN | WS_OP_PING, "p1", 2);
    n += mkframe(f + n, WS_OP_CONT, "def", 3);
    n += mkframe(f + n, FIN | WS_OP_PONG, "", 0);
    n += mkframe(f + n, FIN | WS_OP_CONT, "ghi", 3);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(parse_all(&p, f, n, &r), n);
    ASSERT_EQ(r.count, 3);
    ASSERT_STR_EQ(r.log, "[9 0 2]p1[10 0 0][1 0 9]abcdefghi");
    ASSERT(ws_parser_idle(&p));
    ws_parser_free(&p);
    rec_free(&r);
}

/* A stream exercising every path: single frames, fragments, control frames
 * inside a message, zero-length frames, 16- and 64-bit lengths (also
 * non-minimal ones), masks that differ per frame, and a close. */
static size_t build_stream(uint8_t *s)
{
    static uint8_t big[70000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)('a' + i % 26);
    const uint8_t m2[4] = {1, 2, 3, 4}, m3[4] = {0xff, 0, 0x80, 0x7f};
    size_t n = 0;
    n += mkframe(s + n, FIN | WS_OP_TEXT, "Hello", 5);
    n += mkframe(s + n, FIN | WS_OP_BINARY, "\x00\x01\x02\xff", 4);
    n += mkframe(s + n, FIN | WS_OP_TEXT, "", 0);
    n += mkframe_len(s + n, WS_OP_TEXT, "h\xc3", 2, m2, 0);
    n += mkframe(s + n, FIN | WS_OP_PING, "", 0);
    n += mkframe_len(s + n, WS_OP_CONT, "", 0, m3, 0);
    n += mkframe_len(s + n, WS_OP_CONT, "\xa9llo \xf0\x9f", 7, m3, 126);
    n += mkframe(s + n, FIN | WS_OP_PONG, "pong!", 5);
    n += mkframe_len(s + n, FIN | WS_OP_CONT, "\x98\x80!", 3, m2, 127);
    n += mkframe(s + n, FIN | WS_OP_BINARY, big, 300);
    n += mkframe_len(s + n, WS_OP_BINARY, big, 65536, m3, 0);
    n += mkframe_len(s + n, FIN | WS_OP_CONT, big + 7, 4464, m2, 0);
    n += mkframe(s + n, FIN | WS_OP_TEXT, big, 70000);
    n += mkframe(s + n, FIN | WS_OP_CLOSE, "\x03\xe8" "bye", 5);
    return n;
}

TEST(ws_byte_by_byte_equals_whole_buffer)
{
    static uint8_t s[200000];
    size_t n = build_stream(s);
    ws_parser p;
    rec whole = {0};
    ws_parser_init(&p, 70000);
    ASSERT_EQ(parse_all(&p, s, n, &whole), n);
    ASSERT_EQ(whole.count, 10);
    ASSERT(ws_parser_idle(&p));
    ws_parser_free(&p);
    /* The third message of the stream, reassembled across fragments with
     * code points split between frames. */
    static const char third[] = "[1 0 12]h\xc3\xa9llo \xf0\x9f\x98\x80!";
    ASSERT(memmem(whole.log, whole.log_len, third, sizeof third - 1) != NULL);
    static const char pong[] = "[10 0 5]pong![1 0 12]";
    ASSERT(memmem(whole.log, whole.log_len, pong, sizeof pong - 1) != NULL);
    static const char bye[] = "[8 1000 3]bye";
    ASSERT_EQ(whole.log_len - (sizeof bye - 1),
              (size_t)((char *)memmem(whole.log, whole.log_len, bye,
                                      sizeof bye - 1) - whole.log));
    ASSERT_EQ(whole.last_op, WS_OP_CLOSE);

    size_t chunks[] = {1, 2, 3, 5, 13, 14, 15, 4096, 0, 0, 0};
    uint64_t seed = test_seed() | 1;
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        rec r = {0};
        ws_parser_init(&p, 70000);
        ASSERT_EQ(feed(&p, s, n, chunks[i], &seed, &r), 0);
        ASSERT_EQ(r.count, whole.count);
        ASSERT_EQ(r.log_len, whole.log_len);
        ASSERT_MEM_EQ(r.log, whole.log, whole.log_len);
        ASSERT(ws_parser_idle(&p));
        ws_parser_free(&p);
        rec_free(&r);
    }
    rec_free(&whole);
}

TEST(ws_partial_header_left_unconsumed)
{
    uint8_t f[32];
    size_t n = mkframe_len(f, FIN | WS_OP_BINARY, "xyz", 3, MASK, 127);
    ASSERT_EQ(n, 14 + 3);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    /* Every proper prefix of the 14-byte header consumes nothing. */
    for (size_t k = 0; k < 14; k++) {
        uint8_t c[32];
        memcpy(c, f, n);
        ASSERT_EQ(ws_parse(&p, c, k, collect, &r), 0);
        ASSERT(ws_parser_idle(&p));
    }
    /* Header complete, payload not: the header is consumed, and then each
     * payload byte as it arrives. */
    uint8_t c[32];
    memcpy(c, f, n);
    ASSERT_EQ(ws_parse(&p, c, 14, collect, &r), 14);
    ASSERT(!ws_parser_idle(&p));
    ASSERT_EQ(ws_parse(&p, c + 14, 1, collect, &r), 1);
    ASSERT_EQ(ws_parse(&p, c + 15, 2, collect, &r), 2);
    ASSERT_EQ(r.count, 1);
    ASSERT_MEM_EQ(r.last, "xyz", 3);
    ASSERT(ws_parser_idle(&p));
    ws_parser_free(&p);
    rec_free(&r);
}

TEST(ws_empty_messages)
{
    uint8_t f[64];
    size_t n = mkframe(f, FIN | WS_OP_BINARY, "", 0);
    n += mkframe(f + n, WS_OP_TEXT, "", 0);
    n += mkframe(f + n, FIN | WS_OP_CONT, "", 0);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 0); /* only empty messages fit */
    ASSERT_EQ(parse_all(&p, f, n, &r), n);
    ASSERT_STR_EQ(r.log, "[2 0 0][1 0 0]");
    n = mkframe(f, FIN | WS_OP_BINARY, "x", 1);
    ASSERT_EQ(parse_all(&p, f, n, &r), -WS_CLOSE_TOO_BIG);
    ws_parser_free(&p);
    rec_free(&r);
}

/* ---- framing errors ---- */

TEST(ws_rsv_bits_rejected)
{
    for (int bit = 0x10; bit <= 0x40; bit <<= 1) {
        uint8_t f[32];
        size_t n = mkframe(f, FIN | bit | WS_OP_TEXT, "hi", 2);
        ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
        /* Also on a control frame and a continuation. */
        n = mkframe(f, FIN | bit | WS_OP_PING, "", 0);
        ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
        n = mkframe(f, WS_OP_TEXT, "a", 1);
        n += mkframe(f + n, FIN | bit | WS_OP_CONT, "b", 1);
        ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    }
    /* The error comes from the first byte alone. */
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    uint8_t b = FIN | 0x40 | WS_OP_TEXT;
    ASSERT_EQ(ws_parse(&p, &b, 1, collect, &r), -WS_CLOSE_PROTOCOL);
    ws_parser_free(&p);
}

TEST(ws_unknown_opcodes_rejected)
{
    int ops[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        uint8_t f[32];
        size_t n = mkframe(f, FIN | ops[i], "", 0);
        ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    }
}

TEST(ws_control_frame_rules)
{
    uint8_t f[256], big[126];
    memset(big, 'x', sizeof big);
    /* 125 bytes is the limit... */
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    size_t n = mkframe(f, FIN | WS_OP_PING, big, 125);
    ASSERT_EQ(parse_all(&p, f, n, &r), n);
    ASSERT_EQ(r.last_len, 125);
    ws_parser_free(&p);
    rec_free(&r);
    /* ...126 is refused, as is a 16-bit length even when small. */
    n = mkframe(f, FIN | WS_OP_PING, big, 126);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    n = mkframe_len(f, FIN | WS_OP_PONG, big, 5, MASK, 126);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    /* Fragmented control frames. */
    n = mkframe(f, WS_OP_PING, "x", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    n = mkframe(f, WS_OP_CLOSE, "\x03\xe8", 2);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
}

TEST(ws_fragmentation_order_rules)
{
    uint8_t f[64];
    /* A continuation with no message in progress. */
    size_t n = mkframe(f, FIN | WS_OP_CONT, "x", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    /* Also after a finished message. */
    n = mkframe(f, FIN | WS_OP_TEXT, "a", 1);
    n += mkframe(f + n, FIN | WS_OP_CONT, "x", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    /* A new data message inside a fragmented one. */
    n = mkframe(f, WS_OP_TEXT, "a", 1);
    n += mkframe(f + n, FIN | WS_OP_TEXT, "b", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    n = mkframe(f, WS_OP_BINARY, "a", 1);
    n += mkframe(f + n, WS_OP_BINARY, "b", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
}

TEST(ws_length_msb_set_rejected)
{
    uint8_t f[14] = {FIN | WS_OP_BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1,
                     1, 2, 3, 4};
    ASSERT_EQ(parse_err(SIZE_MAX, f, sizeof f), -WS_CLOSE_PROTOCOL);
    /* Seen as soon as the first length byte arrives. */
    ws_parser p;
    ws_parser_init(&p, SIZE_MAX);
    ASSERT_EQ(ws_parse(&p, f, 3, collect, NULL), -WS_CLOSE_PROTOCOL);
    ws_parser_free(&p);
}

TEST(ws_non_minimal_lengths_accepted)
{
    uint8_t f[64];
    size_t n = mkframe_len(f, FIN | WS_OP_TEXT, "abc", 3, MASK, 126);
    n += mkframe_len(f + n, FIN | WS_OP_TEXT, "defg", 4, MASK, 127);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(feed(&p, f, n, 1, NULL, &r), 0);
    ASSERT_STR_EQ(r.log, "[1 0 3]abc[1 0 4]defg");
    ws_parser_free(&p);
    rec_free(&r);
}

/* ---- size limit ---- */

TEST(ws_oversize_claim_rejected_without_allocating)
{
    /* A header claiming 2^62 bytes: refused on the header alone. */
    uint8_t f[14] = {FIN | WS_OP_BINARY, 0x80 | 127, 0x40, 0, 0, 0, 0, 0, 0, 0,
                     1, 2, 3, 4};
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1 << 20);
    ASSERT_EQ(ws_parse(&p, f, sizeof f, collect, &r), -WS_CLOSE_TOO_BIG);
    ASSERT(p.msg == NULL);
    ASSERT_EQ(p.msg_cap, 0);
    ASSERT_EQ(r.count, 0);
    ws_parser_free(&p);
    /* Same as the first fragment of a fragmented message. */
    f[0] = WS_OP_TEXT;
    ASSERT_EQ(parse_err(1 << 20, f, sizeof f), -WS_CLOSE_TOO_BIG);
    /* One byte over the limit. */
    uint8_t g[64];
    size_t n = mkframe(g, FIN | WS_OP_BINARY, "0123456789a", 11);
    ASSERT_EQ(parse_err(10, g, n), -WS_CLOSE_TOO_BIG);
}

TEST(ws_oversize_fragmented_message_rejected)
{
    static uint8_t f[8192], body[3000];
    memset(body, 'q', sizeof body);
    size_t n = mkframe(f, WS_OP_BINARY, body, 3000);
    n += mkframe(f + n, FIN | WS_OP_PING, "", 0);
    n += mkframe(f + n, WS_OP_CONT, body, 2000);
    size_t ok = n;
    n += mkframe(f + n, FIN | WS_OP_CONT, body, 1);
    /* 5000 fits, 5001 does not. */
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 5000);
    ASSERT_EQ(parse_all(&p, f, ok, &r), ok);
    ASSERT_LE(p.msg_cap, 5000);
    ASSERT_EQ(p.msg_len, 5000);
    ASSERT_EQ(parse_all(&p, f + ok, n - ok, &r), -WS_CLOSE_TOO_BIG);
    ASSERT_LE(p.msg_cap, 5000);
    ASSERT_EQ(r.count, 1); /* the ping only */
    ws_parser_free(&p);
    rec_free(&r);
    ASSERT_EQ(parse_err(5000, f, n), -WS_CLOSE_TOO_BIG);
    /* Exactly at the limit is accepted. */
    n = mkframe(f, WS_OP_BINARY, body, 3000);
    n += mkframe(f + n, FIN | WS_OP_CONT, body, 2000);
    ws_parser_init(&p, 5000);
    ASSERT_EQ(feed(&p, f, n, 7, NULL, &r), 0);
    ASSERT_EQ(r.count, 1);
    ASSERT_EQ(r.last_len, 5000);
    ws_parser_free(&p);
    rec_free(&r);
}

TEST(ws_reassembly_buffer_grows_geometrically_capped_and_is_freed)
{
    enum { LIMIT = 100000 };
    static uint8_t f[LIMIT + 64], body[LIMIT];
    for (size_t i = 0; i < LIMIT; i++)
        body[i] = (uint8_t)i;
    size_t n = mkframe(f, FIN | WS_OP_BINARY, body, LIMIT);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, LIMIT);
    /* Header and 10 payload bytes: the buffer follows what arrived, not
     * the 100000 bytes the header claims. */
    uint8_t *c = malloc(n);
    ASSERT(c);
    memcpy(c, f, n);
    size_t hl = 2 + 8 + 4, pos = 0;
    ssize_t rc = ws_parse(&p, c, hl + 10, collect, &r);
    ASSERT_EQ(rc, hl + 10);
    pos = hl + 10;
    ASSERT_GE(p.msg_cap, 10);
    ASSERT_LE(p.msg_cap, 256);
    /* Then in 1000-byte reads: the capacity at most doubles per growth and
     * never passes the limit. */
    size_t grows = 0, prev = p.msg_cap;
    while (pos < n) {
        size_t k = n - pos < 1000 ? n - pos : 1000;
        rc = ws_parse(&p, c + pos, k, collect, &r);
        ASSERT_EQ(rc, k);
        pos += k;
        if (r.count == 0) {
            ASSERT_LE(p.msg_cap, LIMIT);
            ASSERT_GE(p.msg_cap, p.msg_len);
            if (p.msg_cap != prev) {
                /* Doubling from prev to the first size that holds what
                 * arrived: less than twice the larger of the two. */
                size_t bound = 2 * (prev > p.msg_len ? prev : p.msg_len);
                ASSERT_LT(p.msg_cap, bound);
                grows++;
                prev = p.msg_cap;
            }
        }
    }
    ASSERT_LE(grows, 12);
    ASSERT_EQ(r.count, 1);
    ASSERT_EQ(r.last_len, LIMIT);
    ASSERT_MEM_EQ(r.last, body, LIMIT);
    /* Delivered: nothing is held. */
    ASSERT(ws_parser_idle(&p));
    ASSERT(p.msg == NULL);
    ASSERT_EQ(p.msg_cap, 0);
    free(c);
    ws_parser_free(&p);
    rec_free(&r);
}

static int note_ptr(void *arg, int op, const uint8_t *data, size_t len,
                    int close_code)
{
    *(const uint8_t **)arg = data;
    return 0;
}

TEST(ws_single_frame_in_buffer_delivered_without_copy)
{
    uint8_t f[64];
    size_t n = mkframe(f, FIN | WS_OP_TEXT, "zero-copy", 9);
    ws_parser p;
    ws_parser_init(&p, 1024);
    const uint8_t *seen = NULL;
    ASSERT_EQ(ws_parse(&p, f, n, note_ptr, &seen), n);
    /* The callback saw the caller's buffer, unmasked in place. */
    ASSERT(seen == f + 6);
    ASSERT_MEM_EQ(f + 6, "zero-copy", 9);
    ASSERT(p.msg == NULL);
    /* A message split over two reads is copied and reassembled. */
    n = mkframe(f, FIN | WS_OP_TEXT, "zero-copy", 9);
    ASSERT_EQ(ws_parse(&p, f, 8, note_ptr, &seen), 8);
    seen = NULL;
    ASSERT_EQ(ws_parse(&p, f + 8, n - 8, note_ptr, &seen), n - 8);
    ASSERT(seen != NULL);
    ASSERT(seen < f || seen >= f + sizeof f);
    ws_parser_free(&p);
}

/* ---- UTF-8 ---- */

TEST(ws_invalid_utf8_across_fragment_boundary)
{
    /* E2 82 | 41: a 3-byte sequence cut by an ASCII byte in the next
     * frame. */
    uint8_t f[64];
    size_t n = mkframe(f, WS_OP_TEXT, "ok\xe2\x82", 4);
    n += mkframe(f + n, FIN | WS_OP_CONT, "A", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_INVALID_DATA);
    /* The same bytes as binary are fine. */
    f[0] = WS_OP_BINARY;
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(parse_all(&p, f, n, &r), n);
    ASSERT_EQ(r.last_op, WS_OP_BINARY);
    ASSERT_EQ(r.last_len, 5);
    ws_parser_free(&p);
    rec_free(&r);
}

TEST(ws_valid_4byte_utf8_split_across_frames)
{
    const char *cp = "\xf0\x9f\x98\x80"; /* U+1F600 */
    for (size_t cut = 1; cut < 4; cut++) {
        uint8_t f[64];
        size_t n = mkframe(f, WS_OP_TEXT, cp, cut);
        n += mkframe(f + n, FIN | WS_OP_PING, "", 0);
        n += mkframe(f + n, FIN | WS_OP_CONT, cp + cut, 4 - cut);
        ws_parser p;
        rec r = {0};
        ws_parser_init(&p, 1024);
        ASSERT_EQ(feed(&p, f, n, 1, NULL, &r), 0);
        ASSERT_EQ(r.count, 2);
        ASSERT_EQ(r.last_op, WS_OP_TEXT);
        ASSERT_EQ(r.last_len, 4);
        ASSERT_MEM_EQ(r.last, cp, 4);
        ws_parser_free(&p);
        rec_free(&r);
    }
}

TEST(ws_invalid_utf8_fails_before_message_ends)
{
    /* 0xFF in the first fragment: refused without waiting for FIN. */
    uint8_t f[64];
    size_t n = mkframe(f, WS_OP_TEXT, "ab\xff", 3);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_INVALID_DATA);
    /* Also in the middle of a single frame whose payload is still
     * arriving. */
    n = mkframe(f, FIN | WS_OP_TEXT, "abc\xc0\xafxyz", 8);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(ws_parse(&p, f, 6 + 3, collect, &r), 6 + 3);
    ASSERT_EQ(ws_parse(&p, f + 9, 2, collect, &r), -WS_CLOSE_INVALID_DATA);
    ws_parser_free(&p);
}

TEST(ws_text_ending_inside_code_point_rejected)
{
    uint8_t f[64];
    size_t n = mkframe(f, FIN | WS_OP_TEXT, "ab\xe2\x82", 4);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_INVALID_DATA);
    n = mkframe(f, WS_OP_TEXT, "ab\xe2", 3);
    n += mkframe(f + n, FIN | WS_OP_CONT, "\x82", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_INVALID_DATA);
}

TEST(ws_utf8_valid_rfc3629)
{
#define V(s) ws_utf8_valid((const uint8_t *)(s), sizeof(s) - 1)
    ASSERT_EQ(V(""), 1);
    ASSERT_EQ(V("plain ascii \x7f"), 1);
    ASSERT_EQ(V("\xc2\x80"), 1);             /* U+0080 */
    ASSERT_EQ(V("\xdf\xbf"), 1);             /* U+07FF */
    ASSERT_EQ(V("\xe0\xa0\x80"), 1);         /* U+0800 */
    ASSERT_EQ(V("\xed\x9f\xbf"), 1);         /* U+D7FF */
    ASSERT_EQ(V("\xee\x80\x80"), 1);         /* U+E000 */
    ASSERT_EQ(V("\xef\xbf\xbf"), 1);         /* U+FFFF */
    ASSERT_EQ(V("\xf0\x90\x80\x80"), 1);     /* U+10000 */
    ASSERT_EQ(V("\xf4\x8f\xbf\xbf"), 1);     /* U+10FFFF */
    ASSERT_EQ(V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"), 1);
    ASSERT_EQ(V("\x00"), 1);                 /* NUL is a code point */
    /* Overlongs. */
    ASSERT_EQ(V("\xc0\x80"), 0);
    ASSERT_EQ(V("\xc1\xbf"), 0);
    ASSERT_EQ(V("\xe0\x9f\xbf"), 0);
    ASSERT_EQ(V("\xf0\x8f\xbf\xbf"), 0);
    /* Surrogates. */
    ASSERT_EQ(V("\xed\xa0\x80"), 0);
    ASSERT_EQ(V("\xed\xbf\xbf"), 0);
    /* Above U+10FFFF and bytes that never appear. */
    ASSERT_EQ(V("\xf4\x90\x80\x80"), 0);
    ASSERT_EQ(V("\xf5\x80\x80\x80"), 0);
    ASSERT_EQ(V("\xff"), 0);
    ASSERT_EQ(V("\xfe"), 0);
    /* Stray and missing continuation bytes. */
    ASSERT_EQ(V("\x80"), 0);
    ASSERT_EQ(V("a\xbf"), 0);
    ASSERT_EQ(V("\xc3"), 0);
    ASSERT_EQ(V("\xe2\x82"), 0);
    ASSERT_EQ(V("\xf0\x9f\x98"), 0);
    ASSERT_EQ(V("\xc3\x28"), 0);
    ASSERT_EQ(V("\xe2\x28\xa1"), 0);
    /* A bad byte after a long ASCII run (the 8-byte fast path). */
    ASSERT_EQ(V("0123456789abcdef0123456789abcde\x80"), 0);
    ASSERT_EQ(V("0123456789abcdef\xc3\xa9" "0123456789abcdef"), 1);
#undef V
}

/* ---- close frames ---- */

static long close_with_code(int code)
{
    uint8_t pl[2] = {(uint8_t)(code >> 8), (uint8_t)code}, f[32];
    size_t n = mkframe(f, FIN | WS_OP_CLOSE, pl, 2);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    long rc = (long)parse_all(&p, f, n, &r);
    if (rc >= 0) {
        ASSERT_EQ(r.count, 1);
        ASSERT_EQ(r.last_op, WS_OP_CLOSE);
        ASSERT_EQ(r.last_code, code);
        ASSERT_EQ(r.last_len, 0);
    }
    ws_parser_free(&p);
    rec_free(&r);
    return rc;
}

TEST(ws_close_codes_on_the_wire)
{
    int ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4001, 4999};
    int bad[] = {0, 1, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (close_with_code(ok[i]) != 4 + 2 + 2)
            FAIL("code %d refused", ok[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (close_with_code(bad[i]) != -WS_CLOSE_PROTOCOL)
            FAIL("code %d accepted", bad[i]);
}

TEST(ws_close_payload_rules)
{
    uint8_t f[256];
    ws_parser p;
    rec r = {0};
    /* Empty: "no status" (1005) reaches the callback. */
    size_t n = mkframe(f, FIN | WS_OP_CLOSE, "", 0);
    ws_parser_init(&p, 1024);
    ASSERT_EQ(parse_all(&p, f, n, &r), n);
    ASSERT_EQ(r.last_code, WS_CLOSE_NO_STATUS);
    ASSERT_EQ(r.last_len, 0);
    /* Code and UTF-8 reason. */
    n = mkframe(f, FIN | WS_OP_CLOSE, "\x0f\xa1" "d\xc3\xa9j\xc3\xa0", 8);
    ASSERT_EQ(parse_all(&p, f, n, &r), n);
    ASSERT_EQ(r.last_code, 4001);
    ASSERT_EQ(r.last_len, 6);
    ASSERT_MEM_EQ(r.last, "d\xc3\xa9j\xc3\xa0", 6);
    ws_parser_free(&p);
    rec_free(&r);
    /* One byte. */
    n = mkframe(f, FIN | WS_OP_CLOSE, "\x03", 1);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_PROTOCOL);
    /* Invalid UTF-8 reason (also a code point cut at the end). */
    n = mkframe(f, FIN | WS_OP_CLOSE, "\x03\xe8" "a\xff", 4);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_INVALID_DATA);
    n = mkframe(f, FIN | WS_OP_CLOSE, "\x03\xe8" "a\xc3", 4);
    ASSERT_EQ(parse_err(1024, f, n), -WS_CLOSE_INVALID_DATA);
}

TEST(ws_close_frame_cuts_reason_at_utf8_boundary)
{
    char reason[300];
    /* 122 ASCII bytes then a 3-byte '€' straddling the 123-byte limit. */
    memset(reason, 'r', 122);
    strcpy(reason + 122, "\xe2\x82\xac and more");
    uint8_t out[2 + WS_MAX_CONTROL_PAYLOAD + 16];
    memset(out, 0xAA, sizeof out);
    size_t n = ws_close_frame(out, WS_CLOSE_POLICY, reason);
    ASSERT_EQ(n, 4 + 122);
    ASSERT_EQ(out[0], 0x88);
    ASSERT_EQ(out[1], 2 + 122);
    ASSERT_EQ(out[2] << 8 | out[3], WS_CLOSE_POLICY);
    ASSERT(ws_utf8_valid(out + 4, n - 4));
    ASSERT_EQ(out[n], 0xAA); /* nothing written past the frame */
    /* 121 ASCII bytes + '€' ends exactly at 124: cut to 121. 120 + '€'
     * ends at 123: kept whole. */
    reason[121] = '\0';
    strcpy(reason + 121, "\xe2\x82\xac");
    n = ws_close_frame(out, 1000, reason);
    ASSERT_EQ(n, 4 + 121);
    memset(reason, 'r', 120);
    strcpy(reason + 120, "\xe2\x82\xac");
    n = ws_close_frame(out, 1000, reason);
    ASSERT_EQ(n, 4 + 123);
    ASSERT_EQ(n, 2 + WS_MAX_CONTROL_PAYLOAD);
    ASSERT_MEM_EQ(out + 4 + 120, "\xe2\x82\xac", 3);
    /* A long ASCII reason is cut to exactly 123 bytes. */
    memset(reason, 'z', 299);
    reason[299] = '\0';
    n = ws_close_frame(out, 1000, reason);
    ASSERT_EQ(n, 2 + 125);
    ASSERT_EQ(out[1], 125);
    /* 4-byte code points: 30 of them (120 bytes) fit, the 31st does not. */
    reason[0] = '\0';
    for (int i = 0; i < 40; i++)
        strcat(reason, "\xf0\x9f\x98\x80");
    n = ws_close_frame(out, 1000, reason);
    ASSERT_EQ(n, 4 + 120);
    ASSERT(ws_utf8_valid(out + 4, n - 4));
}

TEST(ws_close_frame_round_trips_through_parser)
{
    uint8_t out[2 + WS_MAX_CONTROL_PAYLOAD];
    size_t n = ws_close_frame(out, WS_CLOSE_TOO_BIG, "message too big");
    ASSERT_EQ(n, 4 + 15);
    /* Mask it as a client would and parse it back. */
    uint8_t f[256];
    size_t fn = mkframe(f, out[0], out + 2, out[1]);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(parse_all(&p, f, fn, &r), fn);
    ASSERT_EQ(r.last_op, WS_OP_CLOSE);
    ASSERT_EQ(r.last_code, WS_CLOSE_TOO_BIG);
    ASSERT_STR_EQ((const char *)r.last, "message too big");
    ws_parser_free(&p);
    rec_free(&r);
    /* No reason; and codes that must not be sent give an empty payload. */
    ASSERT_EQ(ws_close_frame(out, WS_CLOSE_NORMAL, NULL), 4);
    ASSERT_MEM_EQ(out, "\x88\x02\x03\xe8", 4);
    ASSERT_EQ(ws_close_frame(out, WS_CLOSE_NO_STATUS, "x"), 2);
    ASSERT_MEM_EQ(out, "\x88\x00", 2);
    ASSERT_EQ(ws_close_frame(out, 1006, "x"), 2);
    /* An invalid reason is cut where it stops being UTF-8. */
    ASSERT_EQ(ws_close_frame(out, 1000, "ab\xff" "cd"), 6);
}

/* ---- callback control and parser lifecycle ---- */

TEST(ws_callback_return_stops_parsing)
{
    uint8_t f[64];
    size_t n = mkframe(f, FIN | WS_OP_TEXT, "one", 3);
    n += mkframe(f + n, FIN | WS_OP_TEXT, "two", 3);
    ws_parser p;
    rec r = {.stop_rc = -4242};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(parse_all(&p, f, n, &r), -4242);
    ASSERT_EQ(r.count, 1);
    ASSERT_STR_EQ((const char *)r.last, "one");
    ws_parser_free(&p);
    rec_free(&r);
    /* Also from a reassembled message and a control frame. */
    n = mkframe(f, WS_OP_TEXT, "a", 1);
    n += mkframe(f + n, FIN | WS_OP_PING, "", 0);
    n += mkframe(f + n, FIN | WS_OP_CONT, "b", 1);
    r = (rec){.stop_rc = -7};
    ws_parser_init(&p, 1024);
    ASSERT_EQ(parse_all(&p, f, n, &r), -7);
    ASSERT_EQ(r.count, 1);
    ASSERT_EQ(r.last_op, WS_OP_PING);
    ws_parser_free(&p);
    rec_free(&r);
}

TEST(ws_parser_idle_only_between_messages)
{
    uint8_t f[64];
    size_t n1 = mkframe(f, WS_OP_BINARY, "ab", 2);
    size_t n2 = mkframe(f + n1, FIN | WS_OP_CONT, "cd", 2);
    ws_parser p;
    rec r = {0};
    ws_parser_init(&p, 1024);
    ASSERT(ws_parser_idle(&p));
    ASSERT_EQ(ws_parse(&p, f, 3, collect, &r), 0); /* partial header */
    ASSERT(ws_parser_idle(&p));
    ASSERT_EQ(ws_parse(&p, f, 7, collect, &r), 7); /* header + 1 byte */
    ASSERT(!ws_parser_idle(&p));
    ASSERT_EQ(ws_parse(&p, f + 7, n1 - 7, collect, &r), n1 - 7);
    ASSERT(!ws_parser_idle(&p)); /* message unfinished */
    ASSERT_EQ(ws_parse(&p, f + n1, n2, collect, &r), n2);
    ASSERT(ws_parser_idle(&p));
    ASSERT_STR_EQ(r.log, "[2 0 4]abcd");
    /* Free in the middle of a message, init, reuse. */
    ASSERT_EQ(ws_parse(&p, f, n1, collect, &r), n1);
    ws_parser_free(&p);
    ws_parser_init(&p, 1024);
    uint8_t g[64];
    size_t n = mkframe(g, FIN | WS_OP_TEXT, "again", 5);
    ASSERT_EQ(ws_parse(&p, g, n, collect, &r), n);
    ASSERT_STR_EQ((const char *)r.last, "again");
    ws_parser_free(&p);
    rec_free(&r);
}
