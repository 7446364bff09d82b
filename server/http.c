/*
 * http.c — a strict, bounded HTTP/1.1 request-head parser (RFC 9112).
 *
 * What is accepted, exactly:
 *
 *   head         = request-line *( header-line ) EOL
 *   request-line = method SP target SP version EOL
 *   method       = 1*tchar
 *   target       = "/" *VCHAR                 (origin-form only)
 *   version      = "HTTP/1.1" / "HTTP/1.0"    ("HTTP/" DIGIT "." DIGIT
 *                                              otherwise: 505)
 *   header-line  = name ":" OWS value OWS EOL
 *   name         = 1*tchar                    (no space before ':')
 *   value        = *( VCHAR / obs-text / SP / HTAB )
 *   EOL          = CRLF / LF
 *
 * Anything else is 400: a CR not followed by LF, a NUL or other control
 * byte anywhere in the head, obs-fold (a line starting with SP or HTAB),
 * empty lines before the request line, a second space between parts.
 *
 * Bounds: the head, up to and including its empty line, must fit in
 * max_head bytes (else 431), with at most HTTP_MAX_HEADERS header lines
 * (else 431). Bodies: Content-Length must be 1*DIGIT, fit in 64 bits and
 * appear at most once (else 400). Transfer-Encoding is accepted only as one
 * header whose value is exactly "chunked" (case-insensitive), in HTTP/1.1,
 * without Content-Length: then http_req.chunked is set and the body is
 * decoded with http_chunked_step. Transfer-Encoding together with
 * Content-Length, twice, or in HTTP/1.0 is 400 (RFC 9112 §6.1: faulty
 * framing, the request-smuggling ambiguity); any other coding ("gzip",
 * "gzip, chunked") is 501. Which routes take a chunked body is the caller's
 * business (conn.c answers 411 on the others). A second Host header is 400
 * (RFC 9112 §3.2).
 *
 * Chunked bodies (RFC 9112 §7.1), decoded incrementally with bounded state:
 *
 *   chunked-body = *chunk last-chunk trailer-section CRLF
 *   chunk        = chunk-size [ BWS ";" ext ] CRLF chunk-data CRLF
 *   chunk-size   = 1*16HEXDIG      (at most HTTP_CHUNK_MAX_DIGITS digits)
 *   last-chunk   = 1*"0" [ BWS ";" ext ] CRLF
 *   trailer-section = *( field-line CRLF )   (read and ignored)
 *
 * Line ends are CRLF only (no bare LF inside a body: the framing must be
 * read the same way by every hop). A size line (with its extensions) longer
 * than HTTP_CHUNK_MAX_LINE bytes, trailers longer than HTTP_CHUNK_MAX_TRAILER
 * bytes in all, a control byte in an extension or trailer, or anything else
 * off the grammar is 400.
 *
 * In place: the parser writes a NUL after the method, after the path (over
 * the '?'), after the query / target, after each header name (over the
 * ':') and after each value (over the OWS or line end), so every string in
 * http_req points into the caller's buffer.
 */
#include "http.h"

#include <limits.h>
#include <string.h>
#include <strings.h>

static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
    case '+': case '-': case '.': case '^': case '_': case '`': case '|':
    case '~':
        return 1;
    }
    return 0;
}

static int is_vchar(unsigned char c) { return c > 0x20 && c < 0x7F; }

/* A byte allowed inside a field value (before trimming). */
static int is_field_char(unsigned char c)
{
    return c == ' ' || c == '\t' || (c > 0x20 && c != 0x7F);
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* Length of the head in buf[0..len): the offset just past the empty line
 * that ends it, or 0 if it has not arrived. */
static size_t find_head_end(const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return 0;
        p = nl + 1;
        /* An empty line: LF right after the previous LF, or CR LF. */
        if (p < end && *p == '\n')
            return (size_t)(p + 1 - buf);
        if (p + 1 < end && p[0] == '\r' && p[1] == '\n')
            return (size_t)(p + 2 - buf);
    }
    return 0;
}

/* Split off the next line of head[*pos..end): NUL-terminates it (over its
 * CR or LF) and returns it; *pos moves past the line end. NULL if a CR is
 * not followed by LF or the line holds a NUL. The caller guarantees a LF
 * before end. */
static char *next_line(char *head, size_t *pos, size_t end, size_t *line_len)
{
    char *line = head + *pos;
    char *nl = memchr(line, '\n', end - *pos);
    size_t n = (size_t)(nl - line);
    *pos += n + 1;
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (memchr(line, '\r', n) || memchr(line, '\0', n))
        return NULL;
    line[n] = '\0';
    *line_len = n;
    return line;
}

static int parse_request_line(char *line, size_t n, http_req *out)
{
    char *p = line, *end = line + n;
    /* method */
    char *m = p;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == m || p == end || *p != ' ')
        return -400;
    *p++ = '\0';
    out->method = m;
    /* target */
    char *t = p;
    if (p == end || *p != '/')
        return -400;
    char *q = NULL;
    while (p < end && is_vchar((unsigned char)*p)) {
        if (*p == '?' && !q)
            q = p;
        p++;
    }
    if (p == end || *p != ' ')
        return -400;
    *p++ = '\0';
    out->target = t;
    out->path = t;
    if (q) {
        *q = '\0';
        out->query = q + 1;
    } else {
        out->query = p - 1; /* the NUL just written: "" */
    }
    /* version */
    size_t vlen = (size_t)(end - p);
    if (vlen != 8 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' ||
        p[5] > '9' || p[6] != '.' || p[7] < '0' || p[7] > '9')
        return -400;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return -505;
    out->minor_version = p[7] - '0';
    return 0;
}

static int parse_content_length(const char *v, uint64_t *out)
{
    uint64_t n = 0;
    if (!*v)
        return -400;
    for (; *v; v++) {
        if (*v < '0' || *v > '9')
            return -400;
        unsigned d = (unsigned)(*v - '0');
        if (n > (UINT64_MAX - d) / 10)
            return -400;
        n = n * 10 + d;
    }
    *out = n;
    return 0;
}

int http_parse_head(char *buf, size_t len, size_t max_head, http_req *out)
{
    if (max_head > INT_MAX)
        max_head = INT_MAX;
    size_t scan = len < max_head ? len : max_head;
    size_t head_len = find_head_end(buf, scan);
    if (head_len == 0)
        return len >= max_head ? -431 : 0;

    memset(out, 0, sizeof *out);
    size_t pos = 0, n;
    char *line = next_line(buf, &pos, head_len, &n);
    if (!line)
        return -400;
    int rc = parse_request_line(line, n, out);
    if (rc)
        return rc;

    int have_cl = 0, have_host = 0, conn_close = 0, conn_keep = 0, have_te = 0;
    for (;;) {
        line = next_line(buf, &pos, head_len, &n);
        if (!line)
            return -400;
        if (n == 0)
            break; /* the empty line: pos == head_len */
        if (is_ows(line[0]))
            return -400; /* obs-fold */
        char *p = line, *end = line + n;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        if (p == line || p == end || *p != ':')
            return -400;
        *p++ = '\0';
        while (p < end && is_ows(*p))
            p++;
        char *v = p;
        for (; p < end; p++)
            if (!is_field_char((unsigned char)*p))
                return -400;
        while (p > v && is_ows(p[-1]))
            p--;
        *p = '\0';
        if (out->nheaders == HTTP_MAX_HEADERS)
            return -431;
        out->headers[out->nheaders++] = (http_header){line, v};

        if (strcasecmp(line, "Transfer-Encoding") == 0) {
            if (have_te++)
                return -400;
            if (strcasecmp(v, "chunked"))
                return http_list_has(v, "chunked") || !*v ? -400 : -501;
            out->chunked = 1;
        }
        if (strcasecmp(line, "Content-Length") == 0) {
            if (have_cl)
                return -400;
            have_cl = 1;
            if (parse_content_length(v, &out->content_length))
                return -400;
        } else if (strcasecmp(line, "Host") == 0) {
            if (have_host)
                return -400;
            have_host = 1;
        } else if (strcasecmp(line, "Connection") == 0) {
            conn_close |= http_list_has(v, "close");
            conn_keep |= http_list_has(v, "keep-alive");
        }
    }
    if (have_te && (have_cl || out->minor_version != 1))
        return -400;
    if (out->minor_version == 1)
        out->keep_alive = !conn_close;
    else
        out->keep_alive = conn_keep && !conn_close;
    return (int)head_len;
}

/* ---- chunked bodies ---- */

enum {
    CK_SIZE = 0,  /* chunk-size digits */
    CK_EXT,       /* after the digits: BWS, ";" extensions, up to CR */
    CK_SIZE_LF,   /* the LF after the size line's CR */
    CK_DATA,      /* chunk data, left bytes to go */
    CK_DATA_CR,   /* the CRLF after chunk data */
    CK_DATA_LF,
    CK_TRAILER,   /* at the start of a trailer line (or the final CRLF) */
    CK_TRAILER_LINE,
    CK_TRAILER_LF,
    CK_END_LF,    /* the final LF */
    CK_DONE,
};

void http_chunked_init(http_chunked *d) { memset(d, 0, sizeof *d); }

int64_t http_chunked_step(http_chunked *d, const uint8_t *in, size_t n, int *is_data)
{
    *is_data = 0;
    if (d->state == CK_DONE || n == 0)
        return 0;
    if (d->state == CK_DATA) {
        size_t k = d->left < n ? (size_t)d->left : n;
        d->left -= k;
        if (d->left == 0)
            d->state = CK_DATA_CR;
        *is_data = 1;
        return (int64_t)k;
    }
    /* Framing: one byte at a time (a few bytes per chunk). */
    uint8_t c = in[0];
    switch (d->state) {
    case CK_SIZE: {
        int h = (c >= '0' && c <= '9') ? c - '0'
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                         : -1;
        if (h >= 0) {
            if (++d->digits > HTTP_CHUNK_MAX_DIGITS)
                return -400;
            d->left = d->left << 4 | (uint64_t)h;
            break;
        }
        if (d->digits == 0)
            return -400;
        d->state = CK_EXT;
        goto ext; /* the byte after the digits */
    }
    case CK_EXT:
    ext:
        if (c == '\r') {
            d->state = CK_SIZE_LF;
        } else if (c == ';' || c == ' ' || c == '\t') {
            d->ext = d->ext || c == ';';
        } else if (!d->ext || c < 0x20 || c == 0x7f) {
            return -400; /* only BWS before ';'; no control bytes after */
        }
        break;
    case CK_SIZE_LF:
        if (c != '\n')
            return -400;
        d->digits = 0;
        d->ext = 0;
        d->line = 0;
        d->state = d->left ? CK_DATA : CK_TRAILER;
        return 1;
    case CK_DATA_CR:
        if (c != '\r')
            return -400;
        d->state = CK_DATA_LF;
        break;
    case CK_DATA_LF:
        if (c != '\n')
            return -400;
        d->line = 0;
        d->state = CK_SIZE;
        return 1;
    case CK_TRAILER:
        if (c == '\r') {
            d->state = CK_END_LF;
            break;
        }
        d->state = CK_TRAILER_LINE;
        /* fall through */
    case CK_TRAILER_LINE:
        if (c == '\r') {
            d->state = CK_TRAILER_LF;
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return -400;
        }
        if (++d->trailer > HTTP_CHUNK_MAX_TRAILER)
            return -400;
        return 1;
    case CK_TRAILER_LF:
        if (c != '\n')
            return -400;
        d->state = CK_TRAILER;
        return 1;
    case CK_END_LF:
        if (c != '\n')
            return -400;
        d->state = CK_DONE;
        return 1;
    default:
        return -400;
    }
    if (++d->line > HTTP_CHUNK_MAX_LINE)
        return -400;
    return 1;
}

int http_chunked_done(const http_chunked *d) { return d->state == CK_DONE; }

const char *http_header_get(const http_req *r, const char *name)
{
    for (int i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

int http_list_has(const char *value, const char *token)
{
    if (!value)
        return 0;
    size_t tlen = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ',' || is_ows(*p))
            p++;
        const char *s = p;
        while (*p && *p != ',')
            p++;
        const char *e = p;
        while (e > s && is_ows(e[-1]))
            e--;
        if ((size_t)(e - s) == tlen && strncasecmp(s, token, tlen) == 0)
            return 1;
    }
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode one form-encoded byte at s[*i] (s[0..n)): '+' is a space, %XX a
 * byte. -1 for a malformed escape or %00 (which would end a C string). */
static int form_byte(const char *s, size_t n, size_t *i)
{
    char c = s[*i];
    if (c == '+') {
        (*i)++;
        return ' ';
    }
    if (c != '%') {
        (*i)++;
        return (unsigned char)c;
    }
    if (*i + 2 >= n)
        return -1;
    int hi = hexval(s[*i + 1]), lo = hexval(s[*i + 2]);
    if (hi < 0 || lo < 0 || (hi | lo) == 0)
        return -1;
    *i += 3;
    return hi << 4 | lo;
}

/* 1 if the form-encoded s[0..n) decodes to name. */
static int form_equals(const char *s, size_t n, const char *name)
{
    size_t i = 0, j = 0;
    while (i < n) {
        int c = form_byte(s, n, &i);
        if (c < 0 || name[j] == '\0' || (unsigned char)name[j] != c)
            return 0;
        j++;
    }
    return name[j] == '\0';
}

int http_query_param(const http_req *r, const char *name, char *out, size_t n)
{
    const char *q = r->query;
    if (!q || n == 0)
        return -1;
    while (*q) {
        const char *pair = q;
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        q = amp ? amp + 1 : q + plen;
        const char *eq = memchr(pair, '=', plen);
        size_t klen = eq ? (size_t)(eq - pair) : plen;
        if (klen == 0 || !form_equals(pair, klen, name))
            continue;
        const char *v = eq ? eq + 1 : pair + plen;
        size_t vlen = (size_t)(pair + plen - v), i = 0, o = 0;
        while (i < vlen) {
            int c = form_byte(v, vlen, &i);
            if (c < 0 || o + 1 >= n)
                return -1;
            out[o++] = (char)c;
        }
        if (o > INT_MAX)
            return -1;
        out[o] = '\0';
        return (int)o;
    }
    return -1;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}
