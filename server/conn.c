/*
 * conn.c — connections: accept, read, write, HTTP routing, the WebSocket
 * upgrade, timeouts.
 *
 * Memory per idle connection is kept small on purpose (target 2 KiB): no
 * per-connection read buffer (reads land in one shared buffer; only a
 * partial HTTP request or a partial WebSocket frame header is kept), no timer
 * per connection (one tick a second walks them all), and output is a queue of
 * references to shared blobs, so a message fanned out to 250 members is
 * encoded once.
 *
 * A connection is never freed inside a call that might still use it:
 * conn_close() marks it dead and moves it to srv->dead; conn_reap() frees
 * the dead at the end of each event callback.
 *
 * Streaming request bodies (POST /api/v1/media, docs/media.md): once such a
 * request's head is parsed and accepted by its route (media_upload_begin:
 * token, temp file), its body is not collected in `in` but handed to a
 * body_sink as it arrives, straight from the shared read buffer, after the
 * framing (Content-Length or chunked) is removed here. While a body streams
 * a read takes at most RBUF_SIZE (64 KiB) and a read event at most 16 reads,
 * so one fast upload cannot starve the other connections; the sink's disk
 * writes are synchronous on this thread, each at most 64 KiB. Bytes after
 * the body are the next pipelined request. A streaming request never
 * overtakes REST answers still owed on its connection: when its head comes
 * while rest.c has requests of that connection in flight, reading stops
 * (paused) with the head kept in `in`, and rest.c resumes the connection
 * (conn_http_resume) once their answers are queued. A body that stops
 * arriving for media_idle_timeout_ms is dropped (408, connection closed);
 * a connection closed mid-body aborts the sink (the temp file goes).
 */
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "chatd.h"
#include "cluster.h"
#include "media.h"
#include "metrics.h"
#include "rest.h"
#include "state.h"

#define RBUF_SIZE (64 * 1024)
#define CLOSE_GRACE_MS 2000
#define HTTP_MAX_PENDING_OUT (64u << 20)
/* Descriptors kept for everything but client connections (segments,
 * sidecars being written, the listener, the spare). */
#define FD_RESERVE 64

blob *blob_new(size_t len)
{
    blob *b = malloc(sizeof *b + (len ? len : 1));
    if (!b)
        return NULL;
    b->refs = 1;
    b->len = (uint32_t)len;
    return b;
}

void blob_unref(blob *b)
{
    if (b && --b->refs == 0)
        free(b);
}

conn *conn_find(srv *s, uint64_t id) { return map_get(&s->conn_by_id, id); }

/* ---- CORS ----
 *
 * In a cluster the web client served by one node talks to the others (REST,
 * media) once its own node is gone, so their answers must be readable by a
 * page of another origin. A request whose Origin header names the origin of
 * one of client_urls is answered with Access-Control-Allow-Origin naming it
 * and Vary: Origin (conn_send_blob adds both to every HTTP answer of the
 * request, whichever module rendered it); any other origin gets no CORS
 * headers, so a browser keeps its pages from reading the answers. Preflight
 * OPTIONS requests are answered in rest.c. The WebSocket upgrade does not
 * look at Origin: a session is authenticated by the token in its Hello,
 * never by a cookie, so a foreign page gains nothing by opening one. */

/* The n-th (1-based) entry of the comma- or space-separated client_urls as
 * an origin: scheme://host[:port], scheme and host lowercase, a default port
 * (80 for http, 443 for https) dropped, into out (NUL-terminated). Returns
 * its length; 0 when the entry is not an http(s) URL; -1 when there are
 * fewer than n entries. */
static int cors_origin_at(const srv *s, int n, char *out, size_t cap)
{
    const char *p = s->cfg.client_urls;
    for (int i = 1;; i++) {
        while (*p == ',' || *p == ' ')
            p++;
        if (!*p)
            return -1;
        size_t len = strcspn(p, ", ");
        if (i < n) {
            p += len;
            continue;
        }
        const char *sep = memchr(p, ':', len);
        if (!sep || (size_t)(sep - p) + 3 > len || memcmp(sep, "://", 3))
            return 0;
        size_t slen = (size_t)(sep - p);
        int https = slen == 5 && !strncasecmp(p, "https", 5);
        if (!https && !(slen == 4 && !strncasecmp(p, "http", 4)))
            return 0;
        const char *host = sep + 3, *end = p + len;
        size_t hlen = 0;
        while (host + hlen < end && host[hlen] != '/' && host[hlen] != '?' && host[hlen] != '#')
            hlen++;
        const char *dflt = https ? ":443" : ":80";
        if (hlen > strlen(dflt) && !memcmp(host + hlen - strlen(dflt), dflt, strlen(dflt)))
            hlen -= strlen(dflt);
        if (!hlen || slen + 3 + hlen + 1 > cap)
            return 0;
        size_t k = 0;
        for (size_t j = 0; j < slen; j++)
            out[k++] = (char)(p[j] | 0x20);
        memcpy(out + k, "://", 3);
        k += 3;
        for (size_t j = 0; j < hlen; j++)
            out[k++] = host[j] >= 'A' && host[j] <= 'Z' ? (char)(host[j] | 0x20) : host[j];
        out[k] = 0;
        return (int)k;
    }
}

int conn_cors_match(srv *s, const http_req *r)
{
    const char *origin = http_header_get(r, "Origin");
    if (!origin || !s->cfg.client_urls[0])
        return 0;
    char o[256];
    int n;
    for (int i = 1; (n = cors_origin_at(s, i, o, sizeof o)) >= 0; i++)
        if (n > 0 && !strcasecmp(o, origin))
            return i;
    return 0;
}

/* b (an HTTP answer: status line, headers, body) with the CORS headers of
 * c->cors_origin after its status line; NULL when b is not such an answer,
 * is a 1xx (100 Continue, 101 to a WebSocket), or memory runs out. */
static blob *cors_added(conn *c, const blob *b)
{
    char origin[256], hdrs[300];
    if (c->is_ws || b->len < 13 || memcmp(b->data, "HTTP/1.", 7) || b->data[9] == '1' ||
        cors_origin_at(c->srv, c->cors_origin, origin, sizeof origin) <= 0)
        return NULL;
    const uint8_t *eol = memchr(b->data, '\n', b->len);
    if (!eol)
        return NULL;
    size_t at = (size_t)(eol - b->data) + 1;
    int n = snprintf(hdrs, sizeof hdrs, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n",
                     origin);
    if (n < 0 || (size_t)n >= sizeof hdrs)
        return NULL;
    blob *x = blob_new(b->len + (size_t)n);
    if (!x)
        return NULL;
    memcpy(x->data, b->data, at);
    memcpy(x->data + at, hdrs, (size_t)n);
    memcpy(x->data + at + n, b->data + at, b->len - at);
    return x;
}

/* A streaming request body in progress (see the top of this file). */
struct conn_body {
    const body_sink *sink;
    void *ctx;
    int chunked;    /* Transfer-Encoding: chunked, decoded by ck */
    http_chunked ck;
    uint64_t left;  /* Content-Length bytes still to come */
    int keep_alive; /* of the request */
};

/* The body ends without an answer from its sink (client gone, stalled,
 * bad framing). */
static void body_drop(conn *c)
{
    struct conn_body *b = c->body;
    if (!b)
        return;
    c->body = NULL;
    b->sink->abort(c->srv, b->ctx);
    free(b);
}

static void conn_event(evutil_socket_t fd, short what, void *arg);

static void update_events(conn *c)
{
    int want = c->out_head != NULL;
    if ((want == c->want_write && c->paused == c->ev_paused) || c->dead)
        return;
    c->want_write = want;
    c->ev_paused = c->paused;
    event_del(c->ev);
    /* Paused: no reading until conn_http_resume (nothing at all to wait
     * for when there is nothing to write either). */
    short what = (short)((c->paused ? 0 : EV_READ) | (want ? EV_WRITE : 0));
    if (!what)
        return;
    event_assign(c->ev, c->srv->base, c->fd, what | EV_PERSIST, conn_event, c);
    event_add(c->ev, NULL);
    /* event_del dropped the activation of conn_http_resume, and the kept
     * head will not make the socket readable again (found by
     * fuzz/conn_input: the request after the REST answers waited forever). */
    if (c->resumed)
        event_active(c->ev, EV_READ, 0);
}

/* ---- writing ---- */

static void flush_out(conn *c)
{
    while (c->out_head && !c->dead) {
        if (c->ssl) {
            outq *q = c->out_head;
            ERR_clear_error();
            int n = SSL_write(c->ssl, q->b->data + q->off, (int)(q->b->len - q->off));
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, n);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                    break;
                conn_close(c, 0, NULL);
                return;
            }
            q->off += (uint32_t)n;
            c->out_bytes -= (uint64_t)n;
            if (q->off == q->b->len) {
                c->out_head = q->next;
                if (!c->out_head)
                    c->out_tail = NULL;
                blob_unref(q->b);
                free(q);
            }
            continue;
        }
        struct iovec iov[64];
        int n = 0;
        for (outq *q = c->out_head; q && n < 64; q = q->next, n++) {
            iov[n].iov_base = q->b->data + q->off;
            iov[n].iov_len = q->b->len - q->off;
        }
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            conn_close(c, 0, NULL);
            return;
        }
        c->out_bytes -= (uint64_t)w;
        while (w > 0) {
            outq *q = c->out_head;
            size_t left = q->b->len - q->off;
            if ((size_t)w < left) {
                q->off += (uint32_t)w;
                break;
            }
            w -= (ssize_t)left;
            c->out_head = q->next;
            if (!c->out_head)
                c->out_tail = NULL;
            blob_unref(q->b);
            free(q);
        }
    }
    if (!c->dead && !c->out_head && c->close_after_flush && !c->lingering) {
        /* Lingering close: shut our side and read until the peer closes
         * too (or the deadline). Closing with unread input would make the
         * kernel send a reset, and the peer could lose our last bytes —
         * the close frame among them. */
        shutdown(c->fd, SHUT_WR);
        c->lingering = 1;
        c->close_deadline_ms = srv_now_ms() + CLOSE_GRACE_MS;
        return;
    }
    if (!c->dead)
        update_events(c);
}

static void drop_queue(conn *c, int keep_partial)
{
    outq *q = c->out_head;
    outq *keep = NULL;
    if (keep_partial && q && q->off > 0) {
        keep = q;
        q = q->next;
        keep->next = NULL;
    }
    while (q) {
        outq *n = q->next;
        c->out_bytes -= q->b->len - q->off;
        blob_unref(q->b);
        free(q);
        q = n;
    }
    c->out_head = c->out_tail = keep;
}

static void enqueue(conn *c, blob *b)
{
    outq *q = malloc(sizeof *q);
    if (!q) {
        blob_unref(b);
        conn_close(c, 0, NULL);
        return;
    }
    q->next = NULL;
    q->b = b;
    q->off = 0;
    if (c->out_tail)
        c->out_tail->next = q;
    else
        c->out_head = q;
    c->out_tail = q;
    c->out_bytes += b->len;
}

static void want_flush(conn *c)
{
    if (!c->in_flushq && !c->dead) {
        c->in_flushq = 1;
        c->next_flush = c->srv->flushq;
        c->srv->flushq = c;
    }
}

/* The connection whose HEAD request is being answered (handle_http sets it
 * once the head is parsed, until the request is dispatched; conn_flush_all
 * clears it too): its responses go out
 * without their body (RFC 9110 §9.3.2; found by fuzz/conn_input). HEAD is
 * answered at once on every route, never from a later engine callback. */
static conn *answering_head;

void conn_flush_all(srv *s)
{
    answering_head = NULL;
    while (s->flushq) {
        conn *c = s->flushq;
        s->flushq = c->next_flush;
        c->in_flushq = 0;
        if (!c->dead)
            flush_out(c);
    }
    conn_reap(s);
}

/* b's bytes up to the end of its HTTP head, or NULL when there is nothing
 * after the head (or no head). */
static blob *http_head_only(const blob *b)
{
    const uint8_t *e = memmem(b->data, b->len, "\r\n\r\n", 4);
    size_t n = e ? (size_t)(e - b->data) + 4 : 0;
    if (!e || n == b->len)
        return NULL;
    blob *h = blob_new(n);
    if (h)
        memcpy(h->data, b->data, n);
    return h;
}

void conn_send_blob(conn *c, blob *b)
{
    if (c->dead || (c->close_after_flush && c->state == CS_CLOSING)) {
        return;
    }
    if (c->cors_origin && !c->is_ws) {
        blob *x = cors_added(c, b);
        if (x) {
            int o = c->cors_origin;
            c->cors_origin = 0;
            conn_send_blob(c, x);
            c->cors_origin = o;
            blob_unref(x);
            return;
        }
    }
    if (c == answering_head && !c->is_ws) {
        blob *h = http_head_only(b);
        if (h) {
            answering_head = NULL;
            conn_send_blob(c, h);
            answering_head = c;
            blob_unref(h);
            return;
        }
    }
    b->refs++;
    enqueue(c, b);
    if (c->dead)
        return;
    /* HTTP answers are bounded by the requests (a history page can be a few
     * MB); WebSocket fan-out is not, and gets the configured limit. */
    uint64_t limit = c->srv->cfg.max_pending_out_bytes;
    if (!c->is_ws && limit < HTTP_MAX_PENDING_OUT)
        limit = HTTP_MAX_PENDING_OUT;
    if (c->out_bytes > limit)
        flush_out(c); /* judge what the peer has not taken, not a burst */
    if (c->dead)
        return;
    if (c->out_bytes > limit) {
        /* A slow consumer: drop what it has not read instead of growing;
         * it resyncs on reconnect. */
        c->srv->met->slow_consumer_disconnects++;
        srv_log(c->srv, LOG_INFO, "conn %llu: slow consumer (%llu bytes pending), closing 4008",
                (unsigned long long)c->id, (unsigned long long)c->out_bytes);
        drop_queue(c, 1);
        conn_close(c, WS_CLOSE_SLOW_CONSUMER, "slow consumer");
        return;
    }
    want_flush(c);
}

void conn_send(conn *c, const void *data, size_t len)
{
    blob *b = blob_new(len);
    if (!b) {
        conn_close(c, 0, NULL);
        return;
    }
    memcpy(b->data, data, len);
    conn_send_blob(c, b);
    blob_unref(b);
}

/* ---- closing ---- */

static void unlink_all(srv *s, conn *c)
{
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else
        s->conns = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    c->next_all = c->prev_all = NULL;
}

static void kill_conn(conn *c)
{
    srv *s = c->srv;
    if (c->dead)
        return;
    if (c->state == CS_READY || c->state == CS_HELLO || c->u)
        gw_on_close(c);
    body_drop(c); /* an upload cut short: its temp file goes now */
    c->dead = 1;
    event_del(c->ev);
    unlink_all(s, c);
    map_del(&s->conn_by_id, c->id);
    c->next_all = s->dead;
    s->dead = c;
    s->nconns--;
    s->met->connections_open--;
}

void conn_close(conn *c, int ws_code, const char *reason)
{
    if (c->dead)
        return;
    if (ws_code && c->is_ws && c->state != CS_CLOSING) {
        uint8_t frame[2 + WS_MAX_CONTROL_PAYLOAD];
        size_t n = ws_close_frame(frame, ws_code, reason ? reason : "");
        if (c->u)
            gw_on_close(c); /* the session ends now; only bytes remain */
        c->state = CS_CLOSING;
        c->close_after_flush = 1;
        c->close_deadline_ms = srv_now_ms() + CLOSE_GRACE_MS;
        blob *b = blob_new(n);
        if (b) {
            memcpy(b->data, frame, n);
            enqueue(c, b);
        }
        if (!c->dead)
            flush_out(c);
        return;
    }
    kill_conn(c);
}

void conn_reap(srv *s)
{
    /* A dead connection may still be linked in the flush queue. */
    for (conn **pp = &s->flushq; *pp;) {
        if ((*pp)->dead) {
            (*pp)->in_flushq = 0;
            *pp = (*pp)->next_flush;
        } else {
            pp = &(*pp)->next_flush;
        }
    }
    while (s->dead) {
        conn *c = s->dead;
        s->dead = c->next_all;
        drop_queue(c, 0);
        if (c->ssl)
            SSL_free(c->ssl);
        close(c->fd);
        event_free(c->ev);
        ws_parser_free(&c->ws);
        free(c->in);
        free(c);
    }
}

/* ---- HTTP ---- */

/* An answer with extra header lines (hdrs: "Name: value\r\n"..., or NULL). */
static void http_reply_hdrs(conn *c, int status, const char *ctype, const char *hdrs,
                            const void *body, size_t len, int keep_alive)
{
    char head[4096];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%s%s\r\n",
                     status, http_reason(status), ctype, len, hdrs ? hdrs : "",
                     keep_alive ? "" : "Connection: close\r\n");
    blob *b = n > 0 && (size_t)n < sizeof head ? blob_new((size_t)n + len) : NULL;
    if (!b) {
        conn_close(c, 0, NULL);
        return;
    }
    memcpy(b->data, head, (size_t)n);
    if (len)
        memcpy(b->data + n, body, len);
    if (!keep_alive)
        c->close_after_flush = 1;
    conn_send_blob(c, b);
    blob_unref(b);
}

void conn_http_reply(conn *c, int status, const char *ctype, const void *body,
                     size_t len, int keep_alive)
{
    http_reply_hdrs(c, status, ctype, NULL, body, len, keep_alive);
}

void conn_http_error(conn *c, int status, int code, const char *msg,
                     int keep_alive)
{
    char body[512];
    /* msg is ours (never peer bytes), but keep JSON valid anyway. */
    char safe[256];
    size_t k = 0;
    for (const char *p = msg; *p && k < sizeof safe - 1; p++)
        safe[k++] = (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) ? '\'' : *p;
    safe[k] = 0;
    int n = snprintf(body, sizeof body, "{\"error\":{\"code\":%d,\"name\":\"%s\",\"message\":\"%s\"}}",
                     code, code ? gw_error_name(code) : "http", safe);
    if (code > 0 && code < 16)
        c->srv->met->errors_by_code[code]++;
    conn_http_reply(c, status, "application/json", body, (size_t)n, keep_alive);
}

static int ws_upgrade(conn *c, const http_req *r)
{
    const char *up = http_header_get(r, "Upgrade");
    const char *co = http_header_get(r, "Connection");
    const char *ver = http_header_get(r, "Sec-WebSocket-Version");
    const char *key = http_header_get(r, "Sec-WebSocket-Key");
    const char *proto = http_header_get(r, "Sec-WebSocket-Protocol");
    char accept[29];
    if (strcmp(r->method, "GET") || !up || !http_list_has(up, "websocket") || !co ||
        !http_list_has(co, "upgrade")) {
        conn_http_error(c, 400, 0, "a WebSocket upgrade request is expected here", 0);
        return 0;
    }
    if (!ver || strcmp(ver, "13")) {
        static const char resp[] = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
                                   "Content-Length: 0\r\nConnection: close\r\n\r\n";
        c->close_after_flush = 1;
        conn_send(c, resp, sizeof resp - 1);
        return 0;
    }
    if (!key || ws_accept_key(key, strlen(key), accept)) {
        conn_http_error(c, 400, 0, "bad Sec-WebSocket-Key", 0);
        return 0;
    }
    if (!proto || !http_list_has(proto, "chat.v1")) {
        conn_http_error(c, 400, 0, "subprotocol chat.v1 required (Sec-WebSocket-Protocol)", 0);
        return 0;
    }
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                     "Sec-WebSocket-Protocol: chat.v1\r\n\r\n",
                     accept);
    conn_send(c, resp, (size_t)n);
    if (c->dead)
        return -1;
    c->is_ws = 1;
    c->state = CS_HELLO;
    c->opened_ms = srv_now_ms(); /* Hello timeout counts from here */
    ws_parser_init(&c->ws, c->srv->cfg.max_ws_message_bytes);
    return 0;
}

/* ---- static files (the web client) ---- */

#define STATIC_MAX_FILE (8u << 20)

static const char *content_type(const char *path)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".json", "application/json"},
        {".proto", "text/plain; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(path, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext))
            return types[i].type;
    return "application/octet-stream";
}

/* The Content-Security-Policy header of a page (web/index.html): it may
 * connect to and load images from this origin and every client_urls origin
 * (over http(s) and ws(s)), where the web client fails over to. The page's
 * own <meta> policy allows any http(s)/ws(s) origin there so that it works
 * behind other servers too; a browser enforces both, so under chatd the
 * narrower one here is what holds. */
static void page_csp(const srv *s, char *out, size_t cap)
{
    char o[256], conn_src[1400] = "'self'", img_src[1400] = "'self' data: blob:";
    size_t cl = strlen(conn_src), il = strlen(img_src);
    int n;
    for (int i = 1; (n = cors_origin_at(s, i, o, sizeof o)) >= 0; i++) {
        if (n <= 0 || cl + 2 * (size_t)n + 8 >= sizeof conn_src || il + (size_t)n + 2 >= sizeof img_src)
            continue;
        int tls = !strncmp(o, "https:", 6);
        cl += (size_t)snprintf(conn_src + cl, sizeof conn_src - cl, " %s %s%s", o,
                               tls ? "wss" : "ws", o + (tls ? 5 : 4));
        il += (size_t)snprintf(img_src + il, sizeof img_src - il, " %s", o);
    }
    snprintf(out, cap, "Content-Security-Policy: connect-src %s; img-src %s\r\n", conn_src,
             img_src);
}

/* GET a file under web_root. Only plain names ([A-Za-z0-9._-] segments, no
 * segment starting with '.') are served, so no path can leave the root. */
static void serve_static(conn *c, const http_req *r, int ka)
{
    const char *p = r->path;
    if (!strcmp(p, "/"))
        p = "/index.html";
    size_t n = strlen(p);
    int ok = n > 1 && n < 256;
    for (size_t i = 1; ok && i < n; i++) {
        char ch = p[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
             (ch == '.' && p[i - 1] != '/') || (ch == '/' && p[i - 1] != '/');
    }
    if (!ok) {
        conn_http_error(c, 404, GW_ENOTFOUND, "no such path", ka);
        return;
    }
    char full[CFG_PATH + 256];
    snprintf(full, sizeof full, "%s%s", c->srv->cfg.web_root, p);
    FILE *f = fopen(full, "rb");
    struct stat sb;
    if (!f || fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode) ||
        sb.st_size > STATIC_MAX_FILE) {
        if (f)
            fclose(f);
        conn_http_error(c, 404, GW_ENOTFOUND, "no such path", ka);
        return;
    }
    char *body = malloc(sb.st_size ? (size_t)sb.st_size : 1);
    size_t got = body ? fread(body, 1, (size_t)sb.st_size, f) : 0;
    fclose(f);
    if (!body || got != (size_t)sb.st_size) {
        free(body);
        conn_http_error(c, 500, GW_EINTERNAL, "cannot read file", 0);
        return;
    }
    char csp[3072];
    int page = !strcmp(content_type(p), "text/html; charset=utf-8");
    if (page)
        page_csp(c->srv, csp, sizeof csp);
    http_reply_hdrs(c, 200, content_type(p), page ? csp : NULL,
                    strcmp(r->method, "HEAD") ? body : "", strcmp(r->method, "HEAD") ? got : 0,
                    ka);
    free(body);
}

static void serve_builtin(conn *c, const http_req *r, int ka)
{
    srv *s = c->srv;
    if (!strcmp(r->path, "/healthz")) {
        conn_http_reply(c, 200, "application/json", "{\"ok\":true}", 11, ka);
    } else if (!strcmp(r->path, "/metrics")) {
        size_t len = 0;
        char *body = met_render(s->met, st_nconvs(s->st), st_nusers(s->st), &len);
        size_t cap = len + 1;
        if (body)
            cluster_metrics(s, &body, &len, &cap);
        if (!body) {
            conn_http_error(c, 500, GW_EINTERNAL, "out of memory", 0);
            return;
        }
        conn_http_reply(c, 200, "text/plain; version=0.0.4", body, len, ka);
        free(body);
    } else if (s->cfg.web_root[0]) {
        serve_static(c, r, ka);
    } else {
        conn_http_error(c, 404, GW_ENOTFOUND, "no such path", ka);
    }
}

/* The body is complete (err 0) or its sink failed (err < 0): the sink
 * answers. */
static void body_end(conn *c, int err)
{
    struct conn_body *b = c->body;
    c->body = NULL;
    b->sink->end(c, b->ctx, err, b->keep_alive && !err);
    free(b);
}

/* Pass the body bytes at the start of p[0..n) to the sink. Returns the
 * bytes consumed (the body's; what follows is the next request), or -1
 * when the request ended in an error (answered, connection closing). */
static ssize_t body_feed(conn *c, const uint8_t *p, size_t n)
{
    size_t used = 0;
    /* Each round consumes at least one byte or ends the body. */
    while (used < n && c->body) {
        struct conn_body *b = c->body;
        size_t take;
        int is_data = 1;
        if (b->chunked) {
            int64_t k = http_chunked_step(&b->ck, p + used, n - used, &is_data);
            if (k < 0) {
                body_drop(c);
                conn_http_error(c, 400, GW_EBADFRAME, "bad chunked framing", 0);
                return -1;
            }
            take = (size_t)k;
        } else {
            take = b->left < n - used ? (size_t)b->left : n - used;
            b->left -= take;
        }
        if (is_data && take) {
            int rc = b->sink->write(b->ctx, p + used, take);
            if (rc) {
                body_end(c, rc);
                return -1;
            }
        }
        used += take;
        if (b->chunked ? http_chunked_done(&b->ck) : b->left == 0) {
            body_end(c, 0);
            if (c->dead)
                return -1;
        } else if (take == 0) {
            break; /* cannot happen (the decoder consumes while not done) */
        }
    }
    return (ssize_t)used;
}

/* The head of a streaming request was accepted: start passing its body
 * on. 0, or -1 when it was refused (answered, closing). */
static int body_start(conn *c, const http_req *r)
{
    void *ctx;
    if (media_upload_begin(c, r, &ctx))
        return -1;
    struct conn_body *b = calloc(1, sizeof *b);
    if (!b) {
        media_upload_sink.abort(c->srv, ctx);
        conn_close(c, 0, NULL);
        return -1;
    }
    b->sink = &media_upload_sink;
    b->ctx = ctx;
    b->chunked = r->chunked;
    http_chunked_init(&b->ck);
    b->left = r->content_length;
    b->keep_alive = r->keep_alive;
    c->body = b;
    /* The client waits for this before sending the body (RFC 9110 §10.1.1);
     * it is sent only now that the request is accepted. */
    const char *ex = http_header_get(r, "Expect");
    if (ex && !strcasecmp(ex, "100-continue") && r->minor_version == 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        conn_send(c, cont, sizeof cont - 1);
    }
    if (!c->dead && !b->chunked && b->left == 0)
        body_end(c, 0);
    return c->dead ? -1 : 0;
}

void conn_http_resume(srv *s, uint64_t conn_id)
{
    conn *c = conn_find(s, conn_id);
    if (!c || c->dead || !c->paused)
        return;
    c->paused = 0;
    c->resumed = 1; /* parse the kept head before reading more */
    update_events(c);
    event_active(c->ev, EV_READ, 0);
}

/* Handle the requests in buf; returns bytes consumed, or -1 when the
 * connection was closed or switched to WebSocket mid-buffer (then *ws_rest
 * tells where the WebSocket bytes start). */
static ssize_t handle_http(conn *c, char *buf, size_t len, size_t *ws_rest)
{
    srv *s = c->srv;
    size_t used = 0;
    while (used < len && !c->dead && !c->close_after_flush && c->state == CS_HTTP &&
           !c->paused) {
        if (c->body) {
            ssize_t k = body_feed(c, (const uint8_t *)buf + used, len - used);
            if (k < 0)
                return -1;
            used += (size_t)k;
            continue;
        }
        /* Parse a copy: the parser writes NULs into what it parses, and an
         * incomplete request must stay as it arrived for the next read. */
        http_req r;
        size_t n = len - used;
        if (n > s->cfg.max_head_bytes)
            n = s->cfg.max_head_bytes;
        memcpy(s->hbuf, buf + used, n);
        s->hbuf[n] = 0;
        int hl = http_parse_head(s->hbuf, n, s->cfg.max_head_bytes, &r);
        if (hl == 0)
            break;
        if (hl < 0) {
            conn_http_error(c, -hl, GW_EBADFRAME, "bad HTTP request", 0);
            return -1;
        }
        c->cors_origin = conn_cors_match(s, &r);
        answering_head = !strcmp(r.method, "HEAD") ? c : NULL;
        if (r.content_length > media_body_limit(s, &r)) {
            conn_http_error(c, 413, GW_ETOOLARGE, "request body too large", 0);
            return -1;
        }
        /* Only rest_handle queues behind the REST answers still owed on this
         * connection. Any other request (an upload, /healthz, /ws, /media/)
         * must not overtake them — a 101 would also make them undeliverable
         * (found by fuzz/conn_input) — and a HEAD must be answered at once
         * (answering_head): wait, head kept, not reading (bounded: what was
         * read). */
        if ((media_is_upload(&r) || strncmp(r.path, "/api/", 5) || !strcmp(r.method, "HEAD")) &&
            rest_conn_busy(c->id)) {
            srv_log(s, LOG_DEBUG, "conn %llu: request waits for the answers owed before it",
                    (unsigned long long)c->id);
            c->paused = 1;
            update_events(c);
            break;
        }
        if (media_is_upload(&r)) {
            s->met->http_requests++;
            c->http_requests++;
            used += (size_t)hl;
            c->last_rx_ms = srv_now_ms();
            if (body_start(c, &r))
                return -1;
            continue;
        }
        if (r.chunked) {
            /* Only streaming routes take a body of unknown length. */
            conn_http_error(c, 411, GW_EBADFRAME,
                            "Content-Length required (chunked bodies only for POST /api/v1/media)", 0);
            return -1;
        }
        if ((size_t)hl + r.content_length > len - used)
            break; /* wait for the body */
        s->met->http_requests++;
        c->http_requests++;
        const uint8_t *body = (const uint8_t *)buf + used + hl;
        size_t blen = (size_t)r.content_length;
        used += (size_t)hl + blen;
        c->last_rx_ms = srv_now_ms();
        if (!strcmp(r.path, "/ws")) {
            if (ws_upgrade(c, &r))
                return -1;
            if (c->is_ws) {
                *ws_rest = used;
                return (ssize_t)used;
            }
        } else if (!strncmp(r.path, "/api/", 5)) {
            if (rest_handle(c, &r, body, blen))
                return -1;
        } else if ((!strcmp(r.method, "GET") || !strcmp(r.method, "HEAD")) &&
                   !strncmp(r.path, MEDIA_URL_PREFIX, sizeof MEDIA_URL_PREFIX - 1)) {
            media_serve(c, &r, r.keep_alive);
        } else if (!strcmp(r.method, "GET") || !strcmp(r.method, "HEAD")) {
            serve_builtin(c, &r, r.keep_alive);
        } else {
            conn_http_error(c, 405, GW_EBADFRAME, "method not allowed", 0);
        }
        answering_head = NULL;
    }
    return (ssize_t)used;
}

/* ---- WebSocket frames ---- */

static int ws_cb(void *arg, int opcode, const uint8_t *data, size_t len,
                 int close_code)
{
    conn *c = arg;
    srv *s = c->srv;
    switch (opcode) {
    case WS_OP_BINARY:
        s->met->frames_in++;
        if (!bucket_take(&c->frames, s->cfg.conn_frames_per_sec,
                         s->cfg.conn_frames_burst, srv_now_ms())) {
            /* Over the frame rate: the frame is refused, not the
             * connection (a Send gets a rate-limited Error). */
            return gw_on_message(c, NULL, 0) ? -1 : 0;
        }
        return gw_on_message(c, data, len) ? -1 : 0;
    case WS_OP_TEXT:
        conn_close(c, WS_CLOSE_UNSUPPORTED, "chat.v1 uses binary frames");
        return -1;
    case WS_OP_PING: {
        uint8_t out[10 + WS_MAX_CONTROL_PAYLOAD];
        size_t h = ws_frame_header(out, WS_OP_PONG, len);
        memcpy(out + h, data, len);
        conn_send(c, out, h + len);
        return c->dead ? -1 : 0;
    }
    case WS_OP_PONG:
        return 0;
    case WS_OP_CLOSE:
        if (c->state == CS_CLOSING) {
            /* Our close was answered: done. */
            conn_close(c, 0, NULL);
            return -1;
        }
        conn_close(c, close_code == WS_CLOSE_NO_STATUS ? WS_CLOSE_NORMAL : close_code, "");
        return -1;
    }
    return 0;
}

static void handle_ws(conn *c, uint8_t *buf, size_t len)
{
    ssize_t used = ws_parse(&c->ws, buf, len, ws_cb, c);
    if (c->dead || (used < 0 && c->state == CS_CLOSING)) {
        c->inlen = 0; /* nothing parsed here may be parsed again */
        return; /* the callback closed it (-1) */
    }
    if (used < 0) {
        int code = (int)-used;
        if (code < 1000 || code > 4999)
            code = WS_CLOSE_PROTOCOL;
        srv_log(c->srv, LOG_DEBUG, "conn %llu: WebSocket error, closing %d",
                (unsigned long long)c->id, code);
        conn_close(c, code, code == WS_CLOSE_TOO_BIG ? "message too large" : "protocol error");
        return;
    }
    if (c->state == CS_CLOSING && c->close_after_flush) {
        c->inlen = 0;
        return;
    }
    size_t rest = len - (size_t)used;
    if (rest > WS_MAX_FRAME_HEADER) {
        conn_close(c, WS_CLOSE_PROTOCOL, "protocol error");
        return;
    }
    if (rest) {
        if (c->incap < WS_MAX_FRAME_HEADER) {
            uint8_t *n = realloc(c->in, WS_MAX_FRAME_HEADER);
            if (!n) {
                conn_close(c, 0, NULL);
                return;
            }
            c->in = n;
            c->incap = WS_MAX_FRAME_HEADER;
        }
        memmove(c->in, buf + used, rest);
    }
    c->inlen = (uint32_t)rest;
}

/* ---- reading ---- */

static ssize_t conn_read(conn *c, uint8_t *buf, size_t cap)
{
    if (c->ssl) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, buf, (int)cap);
        if (n > 0)
            return n;
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return -EAGAIN;
        return 0;
    }
    ssize_t n = read(c->fd, buf, cap);
    if (n < 0)
        return errno == EINTR ? -EAGAIN : -errno;
    return n;
}

static void on_readable(conn *c)
{
    srv *s = c->srv;
    if (c->lingering) {
        for (int rounds = 0; rounds < 16; rounds++) {
            ssize_t n = conn_read(c, s->rbuf, s->rbuf_cap);
            if (n == -EAGAIN)
                return;
            if (n <= 0) {
                conn_close(c, 0, NULL);
                return;
            }
        }
        return;
    }
    for (int rounds = 0; rounds < 16 && !c->dead; rounds++) {
        /* Kept bytes first, then new ones, contiguous in the shared buffer
         * (or in c->in itself for a growing HTTP request). */
        uint8_t *buf;
        size_t have = c->inlen, cap;
        int http_big = !c->is_ws && c->inlen > 0;
        if (http_big) {
            /* The largest body of any buffered route; handle_http checks
             * each request's own limit as soon as its head is complete.
             * (Media uploads stream and are never collected here.) */
            size_t want = s->cfg.max_head_bytes + s->cfg.max_http_body_bytes;
            if (c->incap < want) {
                size_t ncap = c->incap ? c->incap * 2 : 16384;
                if (ncap > want)
                    ncap = want;
                if (ncap <= c->incap) {
                    conn_http_error(c, 431, GW_ETOOLARGE, "request too large", 0);
                    return;
                }
                uint8_t *n = realloc(c->in, ncap);
                if (!n) {
                    conn_close(c, 0, NULL);
                    return;
                }
                c->in = n;
                c->incap = (uint32_t)ncap;
            }
            buf = c->in;
            cap = c->incap;
            if (have == cap) {
                conn_http_error(c, 413, GW_ETOOLARGE, "request too large", 0);
                return;
            }
        } else {
            buf = s->rbuf;
            cap = s->rbuf_cap;
            if (have)
                memcpy(buf, c->in, have);
            if (c->body && cap > have + RBUF_SIZE + 1)
                cap = have + RBUF_SIZE + 1; /* a streaming body: 64 KiB a read */
        }
        if (c->incap > s->met->http_input_buffer_peak && !c->is_ws)
            s->met->http_input_buffer_peak = c->incap;
        ssize_t n = 0;
        if (c->resumed) {
            c->resumed = 0; /* the kept input first: a paused head */
        } else {
            n = conn_read(c, buf + have, cap - have - 1);
            if (n == -EAGAIN)
                return;
            if (n <= 0) {
                conn_close(c, 0, NULL); /* EOF or error: half-open ends here */
                return;
            }
            c->last_rx_ms = srv_now_ms();
        }
        size_t len = have + (size_t)n;
        if (c->is_ws) {
            handle_ws(c, buf, len);
            continue;
        }
        buf[len] = 0;
        size_t ws_rest = 0;
        ssize_t used = handle_http(c, (char *)buf, len, &ws_rest);
        if (used < 0 || c->dead)
            return;
        if (c->close_after_flush && !c->is_ws) {
            c->inlen = 0; /* answered with Connection: close: nothing more is parsed */
            return;
        }
        if (c->is_ws) {
            c->inlen = 0;
            if (ws_rest < len) {
                uint8_t *tmp = malloc(len - ws_rest);
                if (!tmp) {
                    conn_close(c, 0, NULL);
                    return;
                }
                memcpy(tmp, buf + ws_rest, len - ws_rest);
                handle_ws(c, tmp, len - ws_rest);
                free(tmp);
            }
            if (c->inlen == 0 && c->incap > WS_MAX_FRAME_HEADER) {
                free(c->in);
                c->in = NULL;
                c->incap = 0;
            }
            continue;
        }
        size_t rest = len - (size_t)used;
        if (rest == 0) {
            c->inlen = 0;
            if (c->incap > 16384) {
                free(c->in);
                c->in = NULL;
                c->incap = 0;
            }
        } else if (buf == c->in) {
            memmove(c->in, c->in + used, rest);
            c->inlen = (uint32_t)rest;
        } else {
            if (c->incap < rest + 1) {
                size_t ncap = rest + 4096;
                uint8_t *nb = realloc(c->in, ncap);
                if (!nb) {
                    conn_close(c, 0, NULL);
                    return;
                }
                c->in = nb;
                c->incap = (uint32_t)ncap;
            }
            memcpy(c->in, buf + used, rest);
            c->inlen = (uint32_t)rest;
        }
        if (c->paused)
            return; /* conn_http_resume goes on */
    }
}

static void conn_event(evutil_socket_t fd, short what, void *arg)
{
    conn *c = arg;
    srv *s = c->srv;
    (void)fd;
    if (c->ssl && !SSL_is_init_finished(c->ssl)) {
        ERR_clear_error();
        int r = SSL_accept(c->ssl);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                conn_close(c, 0, NULL);
            conn_reap(s);
            return;
        }
    }
    if (what & EV_WRITE)
        flush_out(c);
    if ((what & EV_READ) && !c->dead)
        on_readable(c);
    conn_flush_all(s);
}

/* ---- accepting ---- */

/* Answer 503 and close; logged at most once a second. */
static void refuse(srv *s, int fd, const char *why)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n";
    ssize_t w = write(fd, busy, sizeof busy - 1);
    (void)w;
    close(fd);
    s->met->connections_rejected++;
    int64_t now = srv_now_ms();
    if (now - s->last_limit_log_ms > 1000) {
        srv_log(s, LOG_WARN, "connection limit reached (%s): refusing, %u open", why, s->nconns);
        s->last_limit_log_ms = now;
    }
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    srv *s = arg;
    (void)what;
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE) && s->spare_fd >= 0) {
            /* Out of descriptors: give up the spare one to take the
             * connection and refuse it properly, instead of leaving it queued
             * (a level-triggered listener would spin on it). */
            close(s->spare_fd);
            s->spare_fd = -1;
            fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                refuse(s, fd, "open-file limit reached");
                fd = -1;
            }
            s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (s->spare_fd < 0)
                srv_log(s, LOG_ERROR, "no descriptor left in reserve: %s", strerror(errno));
            continue;
        }
        if (fd < 0)
            return;
        if (s->nconns >= s->cfg.max_connections || s->stopping) {
            refuse(s, fd, s->stopping ? "shutting down" : "max_connections reached");
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->srv = s;
        c->fd = fd;
        c->id = ++s->next_conn_id;
        c->opened_ms = c->last_rx_ms = srv_now_ms();
        c->frames.tokens = s->cfg.conn_frames_burst;
        c->frames.last_ms = c->opened_ms;
        c->ev = event_new(s->base, fd, EV_READ | EV_PERSIST, conn_event, c);
        if (s->ssl_ctx) {
            c->ssl = SSL_new(s->ssl_ctx);
            if (c->ssl)
                SSL_set_fd(c->ssl, fd);
        }
        if (!c->ev || (s->ssl_ctx && !c->ssl) || map_put(&s->conn_by_id, c->id, c)) {
            if (c->ev)
                event_free(c->ev);
            if (c->ssl)
                SSL_free(c->ssl);
            close(fd);
            free(c);
            continue;
        }
        c->next_all = s->conns;
        if (s->conns)
            s->conns->prev_all = c;
        s->conns = c;
        s->nconns++;
        s->met->connections_total++;
        s->met->connections_open++;
        event_add(c->ev, NULL);
    }
}

static uint64_t open_fds(void)
{
    uint64_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n > 3 ? n - 3 : 0; /* ".", ".." and the directory's own fd */
}

int conn_accept_setup(srv *s)
{
    /* Keep connections below the open-file limit, with room for the log's
     * files, the listener and a spare descriptor to refuse with. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        /* Already open (the log's segments among them), plus room for each
         * shard to roll and seal, plus a fixed reserve. */
        uint64_t used = open_fds() + 4ull * log_shard_count(s->log) + FD_RESERVE;
        uint64_t room = rl.rlim_cur > used ? rl.rlim_cur - used : 1;
        if (s->cfg.max_connections > room) {
            srv_log(s, LOG_WARN, "max_connections lowered from %u to %llu by the open-file limit (%llu)",
                    s->cfg.max_connections, (unsigned long long)room,
                    (unsigned long long)rl.rlim_cur);
            s->cfg.max_connections = (uint32_t)room;
        }
    }
    s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    s->rbuf_cap = RBUF_SIZE + 1024 * 1024;
    s->rbuf = malloc(s->rbuf_cap);
    s->hbuf = malloc(s->cfg.max_head_bytes + 1);
    if (!s->rbuf || !s->hbuf)
        return -1;
    s->listen_ev = event_new(s->base, s->listen_fd, EV_READ | EV_PERSIST, on_accept, s);
    return s->listen_ev ? event_add(s->listen_ev, NULL) : -1;
}

void conn_tick(srv *s, int64_t now)
{
    const chatd_config *cfg = &s->cfg;
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next_all;
        if (c->lingering) {
            if (now > c->close_deadline_ms)
                conn_close(c, 0, NULL);
            continue;
        }
        switch (c->state) {
        case CS_HTTP:
            if (c->paused)
                break; /* waiting for the server, not the client */
            if (c->body) {
                if (now - c->last_rx_ms > cfg->media_idle_timeout_ms) {
                    srv_log(s, LOG_INFO, "conn %llu: upload stalled, dropped",
                            (unsigned long long)c->id);
                    body_drop(c);
                    conn_http_error(c, 408, 0, "upload stalled (media_idle_timeout_ms)", 0);
                }
                break;
            }
            if (c->http_requests == 0 || c->inlen > 0) {
                if (now - c->opened_ms > cfg->handshake_timeout_ms &&
                    now - c->last_rx_ms > cfg->handshake_timeout_ms / 2) {
                    if (c->inlen)
                        conn_http_error(c, 408, 0, "request timeout", 0);
                    else
                        conn_close(c, 0, NULL);
                }
            } else if (now - c->last_rx_ms > cfg->idle_timeout_ms) {
                conn_close(c, 0, NULL);
            }
            break;
        case CS_HELLO:
            if (now - c->opened_ms > cfg->handshake_timeout_ms)
                conn_close(c, WS_CLOSE_UNAUTHORIZED, "no Hello in time");
            break;
        case CS_READY:
            if (now - c->last_rx_ms > cfg->idle_timeout_ms) {
                conn_close(c, WS_CLOSE_GOING_AWAY, "idle timeout");
            } else if (now - c->last_rx_ms > cfg->ping_interval_ms &&
                       now - c->last_ping_ms > cfg->ping_interval_ms) {
                uint8_t ping[10];
                ws_frame_header(ping, WS_OP_PING, 0);
                c->last_ping_ms = now;
                conn_send(c, ping, 2);
            }
            break;
        case CS_CLOSING:
            if (now > c->close_deadline_ms)
                conn_close(c, 0, NULL);
            break;
        }
    }
    conn_flush_all(s);
}

void conn_goodbye_all(srv *s)
{
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next_all;
        if (c->is_ws && c->state != CS_CLOSING)
            conn_close(c, WS_CLOSE_GOING_AWAY, "server shutting down");
        else if (!c->is_ws && !c->out_head)
            conn_close(c, 0, NULL);
        else
            c->close_after_flush = 1;
    }
    conn_flush_all(s);
}

void conn_free_all(srv *s)
{
    conn_flush_all(s);
    while (s->conns)
        kill_conn(s->conns);
    conn_reap(s);
    if (s->spare_fd >= 0)
        close(s->spare_fd);
    s->spare_fd = -1;
    free(s->rbuf);
    free(s->hbuf);
    s->rbuf = NULL;
    s->hbuf = NULL;
}
