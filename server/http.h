/*
 * http.h — a strict, bounded HTTP/1.1 request parser and response helpers.
 * No I/O. Requests are parsed from a caller-owned buffer; strings in the
 * result point into that buffer (NUL-terminated in place).
 *
 * Accepted: request line "METHOD SP target SP HTTP/1.1" (or HTTP/1.0), then
 * header lines "Name: value" (optional whitespace around value, no obs-fold),
 * then CRLF CRLF (bare LF line ends are accepted). Request bodies with one
 * Content-Length, or with "Transfer-Encoding: chunked" alone (decoded
 * incrementally by http_chunked_step; other codings are refused with 501).
 * The exact grammar is at the top of http.c.
 */
#ifndef CHATLOG_HTTP_H
#define CHATLOG_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 48

typedef struct http_header {
    const char *name; /* as sent; compare case-insensitively */
    const char *value;
} http_header;

typedef struct http_req {
    const char *method;  /* "GET", "POST", ... */
    /* The request target "/api/v1/conversations?x=1" is split in place:
     * its first '?' is overwritten by the NUL that ends path, so as a C
     * string target reads the same as path ("/api/v1/conversations"); the
     * whole target is path "?" query when query is non-empty. (One buffer
     * cannot hold both NUL-terminated target and path.) */
    const char *target;
    const char *path;    /* target up to '?', percent-decoding not applied */
    const char *query;   /* after '?' ("x=1"), or "" */
    int minor_version;   /* 1 for HTTP/1.1, 0 for HTTP/1.0 */
    http_header headers[HTTP_MAX_HEADERS];
    int nheaders;
    uint64_t content_length; /* 0 when absent */
    int chunked;             /* Transfer-Encoding: chunked (no Content-Length) */
    int keep_alive;          /* after this request */
} http_req;

/* Parse a request head at the start of buf[0..len) (the buffer is modified).
 * Returns the head's length in bytes (request line to the empty line
 * included) when complete; 0 when more bytes are needed and len < max_head;
 * or a negative HTTP status for a bad request: -400 (malformed: bad
 * method, target not starting with '/', a control byte, NUL or bare CR in
 * the head, obs-fold, header without colon, duplicate Host, duplicate or
 * non-numeric or overflowing Content-Length), -431 (head not complete
 * within max_head bytes, or more than HTTP_MAX_HEADERS headers), -501
 * (a Transfer-Encoding other than "chunked"; Transfer-Encoding with
 * Content-Length, twice, or in HTTP/1.0 is -400), -505 ("HTTP/d.d" other than 1.0 and 1.1). The head
 * is parsed once complete; errors are not reported before that. */
int http_parse_head(char *buf, size_t len, size_t max_head, http_req *out);

/* An incremental decoder of a chunked request body (RFC 9112 §7.1): a few
 * words of state whatever the body's size. Zero it with http_chunked_init. */
#define HTTP_CHUNK_MAX_DIGITS 15     /* chunk-size hex digits (< 2^60) */
#define HTTP_CHUNK_MAX_LINE 4096     /* a size line with its extensions */
#define HTTP_CHUNK_MAX_TRAILER 8192  /* the trailer section, all lines */

typedef struct http_chunked {
    int state;
    int digits, ext;
    uint32_t line, trailer;
    uint64_t left; /* chunk-data bytes still to come in this chunk */
} http_chunked;

void http_chunked_init(http_chunked *d);

/* Step over the start of in[0..n): returns how many bytes were consumed
 * (>= 1 when n > 0 and the body is not complete), with *is_data = 1 when
 * those bytes are chunk data — in[0..ret) is then body content, to be
 * passed on — and 0 when they were framing (consumed here). 0 when n == 0
 * or the body is complete; -400 for malformed framing (the decoder is then
 * unusable). Call it in a loop until the input is used up or
 * http_chunked_done. */
int64_t http_chunked_step(http_chunked *d, const uint8_t *in, size_t n, int *is_data);

/* 1 once the last chunk and the trailer section have been consumed. */
int http_chunked_done(const http_chunked *d);

/* Value of the first header named name (case-insensitive), or NULL. */
const char *http_header_get(const http_req *r, const char *name);

/* 1 if the comma-separated header list value contains token
 * (case-insensitive), e.g. Connection: keep-alive, Upgrade. */
int http_list_has(const char *value, const char *token);

/* The first query parameter name in r->query (form-encoded: %XX and '+'
 * for space; the name is decoded before comparing), decoded into out (size
 * n, NUL-terminated). A parameter without '=' has the value "". Returns the
 * decoded length, or -1 when absent, too long for out, or malformed (a bad
 * %XX escape, or %00). */
int http_query_param(const http_req *r, const char *name, char *out, size_t n);

/* Reason phrase of a status code ("OK", "Not Found", ...), "Unknown" for
 * codes it does not know. A static string. */
const char *http_reason(int status);

#endif
