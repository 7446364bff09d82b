/*
 * chatd.h — the server's shared types: the server, connections, users,
 * conversations. Everything here lives on the event-loop thread; the only
 * cross-thread path is the inbox (srv_post), through which the engine's
 * writer threads hand over committed records and append results.
 *
 * Module prefixes: srv_ (server core, main loop), conn_ (connection I/O),
 * gw_ (WebSocket sessions: chat.v1), rest_ (JSON API), st_ (chat state),
 * ws_ (WebSocket codec), http_ (HTTP parser), auth_ (JWT), met_ (metrics).
 */
#ifndef CHATLOG_CHATD_H
#define CHATLOG_CHATD_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdint.h>

#include "config.h"
#include "errors.h"
#include "http.h"
#include "log.h"
#include "map.h"
#include "ws.h"

struct event_base;
struct event;

/* ---- shared output buffers ----
 * A blob is encoded once and queued on any number of connections (fan-out);
 * the last connection to finish with it frees it. */
typedef struct blob {
    uint32_t refs;
    uint32_t len;
    uint8_t data[];
} blob;

blob *blob_new(size_t len);
void blob_unref(blob *b);

typedef struct outq {
    struct outq *next;
    blob *b;
    uint32_t off;
} outq;

/* ---- error codes of chat.v1 Error frames and REST bodies ---- */
enum gw_error {
    GW_EBADFRAME = 1,      /* malformed or unexpected frame */
    GW_ENOTMEMBER = 2,
    GW_ENOTFOUND = 3,
    GW_ETOOLARGE = 4,
    GW_ERATELIMITED = 5,
    GW_EOVERLOADED = 6,    /* engine queue full; retry later */
    GW_EUNAUTHORIZED = 7,
    GW_EINTERNAL = 8,      /* storage failed; not acked */
    GW_ECONFLICT = 9,      /* same client_msg_id, different content */
    GW_EUNAVAILABLE = 10,  /* cluster: no leader reachable, or the outcome
                              of a write is unknown; retry (same
                              client_msg_id) */
};
const char *gw_error_name(int code);

/* ---- token buckets ---- */
typedef struct bucket {
    double tokens;
    int64_t last_ms;
} bucket;
/* Take one token; 1 if allowed. */
int bucket_take(bucket *b, double rate, double burst, int64_t now_ms);

/* ---- chat state ---- */
enum conv_kind { CONV_DIRECT = 1, CONV_GROUP = 2 };

typedef struct member {
    uint64_t user_id;
    uint64_t read_ptr;      /* READ position (moves forward only) */
    uint64_t delivered_ptr; /* DELIVERED position */
    /* msg_ids this member sent after its read_ptr: unread excludes them */
    uint64_t *own;
    uint32_t nown, capown;
} member;

typedef struct convo {
    uint64_t conv_id;
    int kind;
    char *title;
    uint64_t creator;
    int64_t created_at;
    member *members; /* sorted by user_id */
    uint32_t nmembers, capmembers;
    uint64_t last_msg_id; /* committed */
    int committed;        /* its creation record is durable */
} convo;

struct conn;

typedef struct user {
    uint64_t user_id;
    uint64_t *convs; /* conversations the user is a member of */
    uint32_t nconvs, capconvs;
    struct conn *devices; /* connected WebSocket sessions, linked by next_dev */
    uint32_t ndevices, naway;
    int64_t last_seen_ms;
    bucket msgs;   /* Send rate */
    bucket typing;
    /* idempotency keys, oldest first (a FIFO through st's key table) */
    struct idem *key_head, *key_tail;
    uint32_t nkeys;
} user;

/* ---- connections ---- */
enum conn_state {
    CS_HTTP = 0,   /* reading an HTTP request */
    CS_HELLO = 1,  /* WebSocket open, waiting for Hello */
    CS_READY = 2,  /* session established */
    CS_CLOSING = 3 /* close sent or fatal error: flush, then free */
};

typedef struct conn {
    struct srv *srv;
    uint64_t id; /* never reused; lets late engine callbacks find it */
    int fd;
    int state;
    struct event *ev;  /* EV_READ|EV_WRITE as needed */
    int want_write;
    SSL *ssl;
    /* input kept between reads: a partial HTTP request, or a partial
     * WebSocket frame header (< 14 bytes) */
    uint8_t *in;
    uint32_t inlen, incap;
    ws_parser ws; /* when upgraded */
    int is_ws;
    outq *out_head, *out_tail;
    uint64_t out_bytes;
    int64_t opened_ms, last_rx_ms, last_ping_ms;
    bucket frames;
    /* session */
    user *u;
    struct conn *next_dev; /* in u->devices */
    char device_id[64];
    int away;
    int close_after_flush;
    int lingering; /* our side is shut; reading and dropping until EOF */
    int64_t close_deadline_ms;
    int dead;
    int http_requests; /* served on this connection */
    /* A streaming request body (POST /api/v1/media) being passed to its
     * sink as it arrives (conn.c, struct conn_body); NULL otherwise. */
    struct conn_body *body;
    /* Reading stopped: a streaming request's head waits in `in` until the
     * REST requests before it are answered (conn_http_resume). */
    int paused, resumed, ev_paused;
    int in_flushq;
    /* CORS: the 1-based index in client_urls of the Origin of the request
     * being answered (conn_cors_match), 0 for none; conn_send_blob adds
     * Access-Control-Allow-Origin for it to HTTP answers. */
    int cors_origin;
    struct conn *next_flush; /* srv->flushq */
    struct conn *next_all, *prev_all; /* srv->conns, or srv->dead */
} conn;

/* ---- inbox: engine threads → loop ---- */
enum inbox_kind { IB_COMMIT = 1, IB_APPENDED = 2, IB_CALL = 3 };

typedef struct inbox_item {
    struct inbox_item *next;
    int kind;
    /* IB_APPENDED: result of an append made by a session or REST request;
     * IB_CALL: any other engine completion (srv_post_call) */
    int status;
    log_append_result res;
    void (*done)(struct srv *s, void *ctx, int status,
                 const log_append_result *res);
    void *ctx;
    /* IB_COMMIT: one committed record (copied) */
    log_entry e;
    uint8_t data[];
} inbox_item;

typedef struct srv {
    chatd_config cfg;
    struct event_base *base;
    log_t *log;
    uint8_t *secret;
    size_t secret_len;
    SSL_CTX *ssl_ctx;
    int listen_fd;
    int spare_fd; /* reserve descriptor, see on_accept */
    struct event *listen_ev, *tick_ev, *wake_ev, *sig_int, *sig_term;
    uint64_t next_conn_id;
    conn *conns;        /* every open connection */
    u64map conn_by_id;  /* id → conn, for late engine callbacks */
    conn *dead;         /* closed, freed by conn_reap() */
    conn *flushq;       /* output queued this round, written by conn_flush_all */
    uint32_t nconns;
    int64_t last_limit_log_ms;
    int stopping;
    int64_t goodbye_deadline_ms; /* shutdown: connections closing since */
    uint8_t *rbuf; /* shared read buffer */
    size_t rbuf_cap;
    char *hbuf;    /* scratch copy of a request head being parsed */

    pthread_mutex_t inbox_mu;
    inbox_item *inbox_head, *inbox_tail;

    struct st *st; /* chat state */
    struct met *met;
    struct push *push; /* push notifications (push.c) */
    uint64_t inflight; /* appends not yet answered */
    struct cluster *cluster; /* NULL: a single node (cluster.c) */
} srv;

/* srv.c */
int64_t srv_now_ms(void);
void srv_log(srv *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Append a record; done runs on the loop thread with the result. Returns 0
 * or the engine's error (done is then never called). */
int srv_append(srv *s, const rec_view *rec,
               void (*done)(srv *s, void *ctx, int status,
                            const log_append_result *res),
               void *ctx);
int srv_run(srv *s);
/* The inbox, for whoever sets up a srv without srv_run (the fuzz harness):
 * the engine's on_commit (commit_arg = the srv), and the callback of
 * wake_ev (an EV_PERSIST event with no fd, arg = the srv), which runs what
 * was posted. */
void srv_on_engine_commit(void *arg, uint32_t shard, const log_entry *e, size_t n);
void srv_on_wake(int fd, short what, void *arg);
/* From any thread: run done(s, ctx, status, res) on the loop thread, in
 * posting order with commits and append results. res (may be NULL) is
 * copied. Not counted in inflight. */
void srv_post_result(srv *s, void (*done)(srv *, void *, int, const log_append_result *),
                     void *ctx, int status, const log_append_result *res);
void srv_post_call(srv *s, void (*done)(srv *, void *, int, const log_append_result *),
                   void *ctx, int status);

/* conn.c */
void conn_send_blob(conn *c, blob *b); /* takes a reference */
void conn_send(conn *c, const void *data, size_t len);
void conn_close(conn *c, int ws_code, const char *reason);
conn *conn_find(srv *s, uint64_t id);
/* Free connections closed since the last call; safe points only (end of an
 * event callback). */
void conn_reap(srv *s);
/* Write what every connection queued during this event (one writev per
 * connection however many frames it got), then free the dead. Called at the
 * end of each event callback. */
void conn_flush_all(srv *s);
int conn_accept_setup(srv *s);
void conn_tick(srv *s, int64_t now);
void conn_free_all(srv *s);
/* Shutdown: close every connection politely (1001 to WebSockets). */
void conn_goodbye_all(srv *s);

/* gateway.c (chat.v1 over WebSocket) */
int gw_on_message(conn *c, const uint8_t *data, size_t len);
void gw_on_close(conn *c);
void gw_on_commit(srv *s, const log_entry *e);
void gw_tick(srv *s, int64_t now);
/* A write holding idempotency key k ended: ack (status 0, res) or refuse
 * every session waiting on k, then settle it (held cleared) or forget it. */
struct idem;
void gw_key_settle(srv *s, struct idem *k, int status, const log_append_result *res);
/* The GW_E* code for an engine or cluster error of a write. */
int gw_engine_error(int status);
/* Cluster: a user's sessions on another node changed; a typing indicator
 * from another node (shown to this node's sessions only). */
void gw_remote_presence(srv *s, uint64_t uid, int64_t last_seen_ms);
void gw_remote_typing(srv *s, uint64_t conv_id, uint64_t uid, int active);

/* Shared by WebSocket Send and REST POST .../messages: validate, dedupe,
 * append. Returns 0 when the message was queued — done(ctx) then runs with
 * the engine's result (done NULL: the session's own completion acks
 * waiter_conn) — or answered from the key table: *dup_msg_id is the original
 * msg_id (UINT64_MAX: the same request is still in flight; waiter_conn is
 * acked when it lands). Else a GW_E* code and *why. */
int gw_submit_message(srv *s, uint64_t sender, uint64_t conv_id, const char *body,
                      size_t blen, const char *media, size_t mlen,
                      const char *cmid, size_t clen, uint64_t waiter_conn,
                      void (*done)(srv *, void *, int, const log_append_result *),
                      void *ctx, uint64_t *dup_msg_id, int64_t *dup_ts,
                      const char **why);
/* Store a member's DELIVERED (read=0) or READ position; a position that does
 * not move forward is accepted and ignored. 0 or a GW_E* code and *why. */
int gw_submit_pointer(srv *s, uint64_t uid, uint64_t conv_id, int read,
                      uint64_t up_to, uint64_t conn_id, const char **why);

/* Streaming request bodies: a route whose body must not be buffered (a
 * media upload) gets its bytes handed to a sink as they arrive, at most
 * 64 KiB at a time, after conn.c has removed the framing (Content-Length or
 * chunked). Exactly one of end or abort is called, once, for each accepted
 * body; after it ctx is not used again. */
typedef struct body_sink {
    /* The next bytes of the body, in order. 0, or -errno: the body is
     * failed, and end(c, ctx, err, 0) follows at once. */
    int (*write)(void *ctx, const uint8_t *p, size_t n);
    /* The whole body arrived (err 0) or a write failed (err < 0): answer
     * the request on c (err < 0 or keep_alive 0: with Connection: close)
     * and free ctx. */
    void (*end)(conn *c, void *ctx, int err, int keep_alive);
    /* The request ends without an answer from the sink (the client went
     * away, stopped sending, sent bad framing or too much): discard what
     * was written and free ctx. */
    void (*abort)(srv *s, void *ctx);
} body_sink;

/* A request whose head made its REST requests wait (rest.c): the
 * connection paused on a streaming request's head can go on. */
void conn_http_resume(srv *s, uint64_t conn_id);

/* rest.c (JSON API); returns 0 or -1 to close the connection */
int rest_handle(conn *c, const http_req *r, const uint8_t *body, size_t blen);

/* CORS (docs/api.md): the 1-based index of the client_urls entry whose
 * origin (scheme://host[:port]) r's Origin header names, or 0 when there is
 * no Origin header or it names no listed origin. */
int conn_cors_match(srv *s, const http_req *r);

/* http responses */
void conn_http_reply(conn *c, int status, const char *ctype, const void *body,
                     size_t len, int keep_alive);
void conn_http_error(conn *c, int status, int code, const char *msg,
                     int keep_alive);

#endif
