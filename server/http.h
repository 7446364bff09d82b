/*
 * http.h — a strict, bounded HTTP/1.1 request parser and response helpers.
 * No I/O. Requests are parsed from a caller-owned buffer; strings in the
 * result point into that buffer (NUL-terminated in place).
 *
 * Accepted: request line "METHOD SP target SP HTTP/1.1" (or HTTP/1.0), then
 * header lines "Name: value" (optional whitespace around value, no obs-fold),
 * then CRLF CRLF (bare LF line ends are accepted). Request bodies only with
 * Content-Length (Transfer-Encoding is refused with 501), at most one
 * Content-Length. The exact grammar is at the top of http.c.
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
 * (Transfer-Encoding), -505 ("HTTP/d.d" other than 1.0 and 1.1). The head
 * is parsed once complete; errors are not reported before that. */
int http_parse_head(char *buf, size_t len, size_t max_head, http_req *out);

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
