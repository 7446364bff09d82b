/* Unit tests of the HTTP request parser (server/http.c). */
#include <stdlib.h>

#include "http.h"
#include "test.h"

/* Parse a copy of s (the parser writes into its buffer). The copy stays
 * alive until the next call, so the strings in *r stay valid. */
static char *copy_buf;

static int parse(const char *s, size_t max_head, http_req *r)
{
    size_t n = strlen(s);
    free(copy_buf);
    copy_buf = malloc(n + 1);
    ASSERT(copy_buf);
    memcpy(copy_buf, s, n + 1);
    return http_parse_head(copy_buf, n, max_head, r);
}

static int parse_n(const char *s, size_t n, size_t max_head, http_req *r)
{
    free(copy_buf);
    copy_buf = malloc(n + 1);
    ASSERT(copy_buf);
    memcpy(copy_buf, s, n);
    copy_buf[n] = 'X'; /* not a terminator the parser could rely on */
    return http_parse_head(copy_buf, n, max_head, r);
}

/* RFC 6455 §1.2's opening handshake. */
static const char upgrade_req[] =
    "GET /chat HTTP/1.1\r\n"
    "Host: server.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: chat.v1\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

TEST(http_websocket_upgrade_head)
{
    http_req r;
    ASSERT_EQ(parse(upgrade_req, 8192, &r), strlen(upgrade_req));
    ASSERT_STR_EQ(r.method, "GET");
    ASSERT_STR_EQ(r.target, "/chat");
    ASSERT_STR_EQ(r.path, "/chat");
    ASSERT_STR_EQ(r.query, "");
    ASSERT_EQ(r.minor_version, 1);
    ASSERT_EQ(r.nheaders, 7);
    ASSERT_STR_EQ(r.headers[0].name, "Host");
    ASSERT_STR_EQ(r.headers[0].value, "server.example.com");
    ASSERT_STR_EQ(http_header_get(&r, "upgrade"), "websocket");
    ASSERT_STR_EQ(http_header_get(&r, "SEC-WEBSOCKET-KEY"), "dGhlIHNhbXBsZSBub25jZQ==");
    ASSERT_STR_EQ(http_header_get(&r, "Sec-WebSocket-Version"), "13");
    ASSERT(http_header_get(&r, "Sec-WebSocket-Extensions") == NULL);
    ASSERT(http_list_has(http_header_get(&r, "Connection"), "upgrade"));
    ASSERT(http_list_has(http_header_get(&r, "Connection"), "Keep-Alive"));
    ASSERT(!http_list_has(http_header_get(&r, "Connection"), "close"));
    ASSERT_U64_EQ(r.content_length, 0);
    ASSERT_EQ(r.keep_alive, 1);
}

TEST(http_pipelined_requests)
{
    const char *two = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                      "POST /b?n=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                      "GET /c HTTP/1.1\r\n";
    size_t first = strlen("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    size_t second = strlen("POST /b?n=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n");
    http_req r;
    ASSERT_EQ(parse(two, 8192, &r), first);
    ASSERT_STR_EQ(r.path, "/a");
    char *b = copy_buf + first;
    size_t left = strlen(two) - first;
    ASSERT_EQ(http_parse_head(b, left, 8192, &r), second);
    ASSERT_STR_EQ(r.method, "POST");
    ASSERT_STR_EQ(r.path, "/b");
    ASSERT_STR_EQ(r.query, "n=1");
    ASSERT_U64_EQ(r.content_length, 5);
    ASSERT_MEM_EQ(b + second, "hello", 5);
    /* The third head is incomplete. */
    ASSERT_EQ(http_parse_head(b + second + 5, left - second - 5, 8192, &r), 0);
}

TEST(http_incomplete_head_returns_zero)
{
    size_t n = strlen(upgrade_req);
    http_req r;
    for (size_t k = 0; k < n; k++)
        if (parse_n(upgrade_req, k, 8192, &r) != 0)
            FAIL("prefix of %zu bytes did not return 0", k);
    ASSERT_EQ(parse_n(upgrade_req, n, 8192, &r), n);
}

TEST(http_bare_lf_accepted)
{
    http_req r;
    const char *s = "GET /x?y=1 HTTP/1.0\nHost: h\nConnection: keep-alive\n\nrest";
    ASSERT_EQ(parse(s, 8192, &r), strlen(s) - 4);
    ASSERT_STR_EQ(r.path, "/x");
    ASSERT_STR_EQ(r.query, "y=1");
    ASSERT_EQ(r.minor_version, 0);
    ASSERT_STR_EQ(http_header_get(&r, "host"), "h");
    ASSERT_EQ(r.keep_alive, 1);
    /* Mixed line ends. */
    s = "GET / HTTP/1.1\r\nA: 1\n\r\n";
    ASSERT_EQ(parse(s, 8192, &r), strlen(s));
    ASSERT_STR_EQ(http_header_get(&r, "a"), "1");
    /* A bare CR is not a line end. */
    ASSERT_EQ(parse("GET / HTTP/1.1\rHost: h\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nA: x\ry\r\n\r\n", 8192, &r), -400);
}

TEST(http_too_large_head_431)
{
    const char *s = "GET / HTTP/1.1\r\nHost: h\r\n\r\n"; /* 27 bytes */
    size_t n = strlen(s);
    ASSERT_EQ(n, 27);
    http_req r;
    ASSERT_EQ(parse(s, 27, &r), 27);   /* exactly max_head */
    ASSERT_EQ(parse(s, 26, &r), -431); /* one byte over */
    /* Incomplete: 0 while below max_head, 431 once max_head bytes arrived
     * without the end of the head. */
    ASSERT_EQ(parse_n(s, 20, 21, &r), 0);
    ASSERT_EQ(parse_n(s, 21, 21, &r), -431);
    ASSERT_EQ(parse_n(s, 26, 21, &r), -431);
    /* A huge header line. */
    size_t big = 20000;
    char *h = malloc(big + 64);
    ASSERT(h);
    strcpy(h, "GET / HTTP/1.1\r\nX-Big: ");
    memset(h + strlen(h), 'a', big);
    strcpy(h + 23 + big, "\r\n\r\n");
    ASSERT_EQ(parse(h, 8192, &r), -431);
    ASSERT_EQ(parse(h, 1 << 20, &r), 23 + big + 4);
    free(h);
}

TEST(http_too_many_headers_431)
{
    char s[8192];
    strcpy(s, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < HTTP_MAX_HEADERS; i++)
        sprintf(s + strlen(s), "H%d: v\r\n", i);
    size_t base = strlen(s);
    strcat(s, "\r\n");
    http_req r;
    ASSERT_EQ(parse(s, sizeof s, &r), strlen(s));
    ASSERT_EQ(r.nheaders, HTTP_MAX_HEADERS);
    ASSERT_STR_EQ(http_header_get(&r, "h47"), "v");
    strcpy(s + base, "One-More: v\r\n\r\n");
    ASSERT_EQ(parse(s, sizeof s, &r), -431);
}

TEST(http_transfer_encoding_chunked_only)
{
    http_req r;
    const char *ok = "POST /m HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    ASSERT_EQ(parse(ok, 8192, &r), strlen(ok));
    ASSERT_EQ(r.chunked, 1);
    ASSERT_EQ(r.content_length, 0);
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\ntransfer-encoding: CHUNKED\r\n\r\n", 8192, &r) > 0, 1);
    ASSERT_EQ(r.chunked, 1);
    /* Other codings: not implemented. */
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n", 8192, &r),
              -501);
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 8192, &r), -501);
    /* chunked not alone, twice, with Content-Length (either order), in
     * HTTP/1.0, or empty: faulty framing (the smuggling cases). */
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 8192, &r),
              -400);
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                    8192, &r), -400);
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                    8192, &r), -400);
    ASSERT_EQ(parse("POST /m HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("POST /m HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", 8192, &r), -400);
    const char *plain = "POST /m HTTP/1.1\r\nContent-Length: 3\r\n\r\n";
    ASSERT_EQ(parse(plain, 8192, &r), strlen(plain));
    ASSERT_EQ(r.chunked, 0);
}

/* Decode s (a whole chunked body, maybe followed by more) fed in pieces of
 * at most step bytes. Returns bytes consumed when the body ended, or the
 * negative error; out gets the data (NUL-terminated). */
static int64_t dechunk(const char *s, size_t len, size_t step, char *out, size_t cap)
{
    http_chunked d;
    http_chunked_init(&d);
    size_t used = 0, o = 0;
    for (int guard = 0; guard < 100000 && used < len && !http_chunked_done(&d); guard++) {
        size_t n = len - used < step ? len - used : step;
        while (n && !http_chunked_done(&d)) {
            int is_data;
            int64_t k = http_chunked_step(&d, (const uint8_t *)s + used, n, &is_data);
            if (k < 0)
                return k;
            if (k == 0)
                return -1; /* must consume while not done */
            if (is_data) {
                if (o + (size_t)k >= cap)
                    return -2;
                memcpy(out + o, s + used, (size_t)k);
                o += (size_t)k;
            }
            used += (size_t)k;
            n -= (size_t)k;
        }
    }
    out[o] = 0;
    return http_chunked_done(&d) ? (int64_t)used : -3;
}

TEST(http_chunked_decodes_in_any_split)
{
    const char body[] = "5\r\nhello\r\n1;ext=\"v\"\r\n \r\n00A \t;x\r\n0123456789\r\n"
                        "0\r\nTrailer: yes\r\nOther: 1\r\n\r\nGET / HTTP/1.1";
    size_t blen = sizeof body - 1, whole = blen - strlen("GET / HTTP/1.1");
    char out[64];
    for (size_t step = 1; step <= blen; step++) {
        ASSERT_EQ(dechunk(body, blen, step, out, sizeof out), (int64_t)whole);
        ASSERT_STR_EQ(out, "hello 0123456789");
    }
    ASSERT_EQ(dechunk("0\r\n\r\n", 5, 5, out, sizeof out), 5);
    ASSERT_STR_EQ(out, "");
    ASSERT_EQ(dechunk("000\r\n\r\n", 7, 1, out, sizeof out), 7);
}

TEST(http_chunked_rejects_bad_framing)
{
    char out[64];
#define BAD(s) ASSERT_EQ(dechunk(s, sizeof s - 1, 3, out, sizeof out), -400)
    BAD("\r\n");                 /* no size */
    BAD("x\r\n");                /* not hex */
    BAD("-1\r\n");
    BAD("5\nhello\r\n0\r\n\r\n"); /* bare LF */
    BAD("5\r\nhelloX\r\n");       /* data longer than its size */
    BAD("5\r\nhello\rX");
    BAD("1 2\r\n");               /* space inside the size */
    BAD("1;a\x01\r\n");           /* control byte in an extension */
    BAD("0\r\nBad\x01: x\r\n\r\n"); /* control byte in a trailer */
    BAD("0\r\n\rX");
    BAD("1000000000000000\r\n");  /* 16 hex digits: over the bound */
#undef BAD
    /* 15 digits is accepted as a size (the data then never comes). */
    ASSERT_EQ(dechunk("fffffffffffffff\r\n", 18, 18, out, sizeof out), -3);
    /* An endless extension or trailer is cut at its bound. */
    static char big[HTTP_CHUNK_MAX_TRAILER + 64];
    memcpy(big, "0\r\n", 3);
    memset(big + 3, 'a', sizeof big - 3);
    ASSERT_EQ(dechunk(big, sizeof big, 4096, out, sizeof out), -400);
    memcpy(big, "1;", 2);
    memset(big + 2, 'a', sizeof big - 2);
    ASSERT_EQ(dechunk(big, sizeof big, 4096, out, sizeof out), -400);
}

TEST(http_version_505)
{
    http_req r;
    ASSERT_EQ(parse("GET / HTTP/2.0\r\n\r\n", 8192, &r), -505);
    ASSERT_EQ(parse("GET / HTTP/1.2\r\n\r\n", 8192, &r), -505);
    ASSERT_EQ(parse("GET / HTTP/0.9\r\n\r\n", 8192, &r), -505);
    ASSERT_EQ(parse("GET / HTTP/3.1\r\n\r\n", 8192, &r), -505);
    /* Not an HTTP version at all: malformed. */
    ASSERT_EQ(parse("GET / HTTP/1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / http/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.1 \r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.10\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET /\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.0\r\n\r\n", 8192, &r), 18);
    ASSERT_EQ(r.minor_version, 0);
}

TEST(http_header_line_rules_400)
{
    http_req r;
    /* No colon. */
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nHost h\r\n\r\n", 8192, &r), -400);
    /* Name not a token, empty, or space before the colon. */
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nHo st: h\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\n: h\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nX(y): h\r\n\r\n", 8192, &r), -400);
    /* obs-fold. */
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n", 8192, &r), -400);
    /* Control bytes in a value; DEL too. */
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nA: b\x01" "c\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n", 8192, &r), -400);
    /* NUL anywhere in the head. */
    static const char nul[] = "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n";
    ASSERT_EQ(parse_n(nul, sizeof nul - 1, 8192, &r), -400);
    static const char nul2[] = "GET /a\0b HTTP/1.1\r\n\r\n";
    ASSERT_EQ(parse_n(nul2, sizeof nul2 - 1, 8192, &r), -400);
    /* Duplicate Host. */
    ASSERT_EQ(parse("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 8192, &r), -400);
    /* Accepted: obs-text, tabs inside the value, empty value, trimmed
     * OWS. */
    ASSERT_GT(parse("GET / HTTP/1.1\r\nA: caf\xc3\xa9\r\nB: x\ty\r\nC:\r\nD: \t v w \t\r\n\r\n",
                    8192, &r), 0);
    ASSERT_STR_EQ(http_header_get(&r, "a"), "caf\xc3\xa9");
    ASSERT_STR_EQ(http_header_get(&r, "b"), "x\ty");
    ASSERT_STR_EQ(http_header_get(&r, "c"), "");
    ASSERT_STR_EQ(http_header_get(&r, "d"), "v w");
    ASSERT_STR_EQ(r.headers[3].name, "D");
}

TEST(http_request_line_rules_400)
{
    http_req r;
    /* Method must be a token. */
    ASSERT_EQ(parse("GE(T / HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse(" / HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("G\xc3\xa9T / HTTP/1.1\r\n\r\n", 8192, &r), -400);
    /* Exactly one space between parts. */
    ASSERT_EQ(parse("GET  / HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET /  HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET\t/ HTTP/1.1\r\n\r\n", 8192, &r), -400);
    /* Origin-form targets only. */
    ASSERT_EQ(parse("OPTIONS * HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET http://h/ HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("CONNECT h:443 HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", 8192, &r), -400);
    /* An empty line before the request line. */
    ASSERT_EQ(parse("\r\nGET / HTTP/1.1\r\n\r\n", 8192, &r), -400);
    ASSERT_EQ(parse("\n\n", 8192, &r), -400);
    /* Unusual but valid token methods pass. */
    ASSERT_GT(parse("M-SEARCH /x HTTP/1.1\r\n\r\n", 8192, &r), 0);
    ASSERT_STR_EQ(r.method, "M-SEARCH");
}

TEST(http_content_length_rules)
{
    http_req r;
    ASSERT_GT(parse("POST / HTTP/1.1\r\nContent-Length: 42\r\n\r\n", 8192, &r), 0);
    ASSERT_U64_EQ(r.content_length, 42);
    ASSERT_GT(parse("POST / HTTP/1.1\r\ncontent-length:0\r\n\r\n", 8192, &r), 0);
    ASSERT_U64_EQ(r.content_length, 0);
    ASSERT_GT(parse("POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
                    8192, &r), 0);
    ASSERT_U64_EQ(r.content_length, UINT64_MAX);
    const char *bad[] = {
        "Content-Length: 18446744073709551616", /* 2^64 */
        "Content-Length: 99999999999999999999999",
        "Content-Length: abc",
        "Content-Length: ",
        "Content-Length: -1",
        "Content-Length: +5",
        "Content-Length: 0x10",
        "Content-Length: 5 5",
        "Content-Length: 5, 5",
        "Content-Length: 5\r\nContent-Length: 5", /* duplicate, even equal */
        "Content-Length: 5\r\ncontent-length: 6",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char s[256];
        snprintf(s, sizeof s, "POST / HTTP/1.1\r\n%s\r\n\r\n", bad[i]);
        if (parse(s, 8192, &r) != -400)
            FAIL("accepted %s", bad[i]);
    }
}

TEST(http_keep_alive_rules)
{
    http_req r;
    ASSERT_GT(parse("GET / HTTP/1.1\r\n\r\n", 8192, &r), 0);
    ASSERT_EQ(r.keep_alive, 1);
    ASSERT_GT(parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 8192, &r), 0);
    ASSERT_EQ(r.keep_alive, 0);
    ASSERT_GT(parse("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n", 8192, &r), 0);
    ASSERT_EQ(r.keep_alive, 0);
    ASSERT_GT(parse("GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", 8192, &r), 0);
    ASSERT_EQ(r.keep_alive, 1);
    ASSERT_GT(parse("GET / HTTP/1.0\r\n\r\n", 8192, &r), 0);
    ASSERT_EQ(r.keep_alive, 0);
    ASSERT_GT(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 8192, &r), 0);
    ASSERT_EQ(r.keep_alive, 1);
    /* A second Connection header counts too. */
    ASSERT_GT(parse("GET / HTTP/1.1\r\nConnection: upgrade\r\nConnection: close\r\n\r\n",
                    8192, &r), 0);
    ASSERT_EQ(r.keep_alive, 0);
}

TEST(http_list_has_tokens)
{
    ASSERT(http_list_has("Upgrade", "upgrade"));
    ASSERT(http_list_has("keep-alive,Upgrade", "upgrade"));
    ASSERT(http_list_has(" keep-alive ,\t upgrade \t", "Upgrade"));
    ASSERT(http_list_has(",,a,,", "a"));
    ASSERT(!http_list_has("upgraded", "upgrade"));
    ASSERT(!http_list_has("pupgrade", "upgrade"));
    ASSERT(!http_list_has("", "upgrade"));
    ASSERT(!http_list_has(NULL, "upgrade"));
}

TEST(http_query_param_decoding)
{
    http_req r;
    ASSERT_GT(parse("GET /api/v1/messages?conv_id=42&q=hello+world%21&e=&flag"
                    "&sp%20ace=1&pct=%E2%82%AC&bad=%4&bad2=%zz&nul=%00&q=second HTTP/1.1\r\n\r\n",
                    8192, &r), 0);
    ASSERT_STR_EQ(r.path, "/api/v1/messages");
    char out[64];
    ASSERT_EQ(http_query_param(&r, "conv_id", out, sizeof out), 2);
    ASSERT_STR_EQ(out, "42");
    ASSERT_EQ(http_query_param(&r, "q", out, sizeof out), 12); /* first one */
    ASSERT_STR_EQ(out, "hello world!");
    ASSERT_EQ(http_query_param(&r, "e", out, sizeof out), 0);
    ASSERT_STR_EQ(out, "");
    ASSERT_EQ(http_query_param(&r, "flag", out, sizeof out), 0);
    ASSERT_EQ(http_query_param(&r, "sp ace", out, sizeof out), 1);
    ASSERT_EQ(http_query_param(&r, "pct", out, sizeof out), 3);
    ASSERT_STR_EQ(out, "\xe2\x82\xac");
    ASSERT_EQ(http_query_param(&r, "missing", out, sizeof out), -1);
    ASSERT_EQ(http_query_param(&r, "conv", out, sizeof out), -1);
    ASSERT_EQ(http_query_param(&r, "bad", out, sizeof out), -1);
    ASSERT_EQ(http_query_param(&r, "bad2", out, sizeof out), -1);
    ASSERT_EQ(http_query_param(&r, "nul", out, sizeof out), -1);
    /* Too long: "hello world!" needs 13 bytes with its NUL. */
    ASSERT_EQ(http_query_param(&r, "q", out, 13), 12);
    ASSERT_EQ(http_query_param(&r, "q", out, 12), -1);
    /* No query at all. */
    ASSERT_GT(parse("GET /x HTTP/1.1\r\n\r\n", 8192, &r), 0);
    ASSERT_EQ(http_query_param(&r, "a", out, sizeof out), -1);
}

TEST(http_target_path_query_split)
{
    http_req r;
    ASSERT_GT(parse("GET /a/b?x=1?y=2&z HTTP/1.1\r\n\r\n", 8192, &r), 0);
    ASSERT_STR_EQ(r.path, "/a/b");
    ASSERT_STR_EQ(r.query, "x=1?y=2&z"); /* only the first '?' splits */
    ASSERT(r.target == r.path);
    ASSERT_GT(parse("GET /a? HTTP/1.1\r\n\r\n", 8192, &r), 0);
    ASSERT_STR_EQ(r.path, "/a");
    ASSERT_STR_EQ(r.query, "");
    ASSERT_GT(parse("GET /%7Euser/x%20y HTTP/1.1\r\n\r\n", 8192, &r), 0);
    ASSERT_STR_EQ(r.path, "/%7Euser/x%20y"); /* not decoded */
}

TEST(http_reason_covers_server_statuses)
{
    int codes[] = {101, 200, 201, 204, 206, 301, 304, 400, 401, 403, 404, 405, 408,
                   409, 411, 413, 414, 416, 426, 429, 431, 500, 501, 503, 505};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = http_reason(codes[i]);
        if (!s || !*s || strcmp(s, "Unknown") == 0)
            FAIL("no reason for %d", codes[i]);
    }
    ASSERT_STR_EQ(http_reason(101), "Switching Protocols");
    ASSERT_STR_EQ(http_reason(200), "OK");
    ASSERT_STR_EQ(http_reason(404), "Not Found");
    ASSERT_STR_EQ(http_reason(431), "Request Header Fields Too Large");
    ASSERT_STR_EQ(http_reason(505), "HTTP Version Not Supported");
    ASSERT_STR_EQ(http_reason(299), "Unknown");
}
