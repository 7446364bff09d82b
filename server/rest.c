/*
 * rest.c — the JSON REST API under /api/v1 (docs/api.md is its manual).
 *
 * Routes (ids are decimal, digits only, 1 .. 2^53-1):
 *   GET  /api/v1/conversations                    the caller's conversations
 *   POST /api/v1/conversations                    create (direct: find or create)
 *   GET  /api/v1/conversations/:id                one conversation
 *   GET  /api/v1/conversations/:id/messages       history, paged
 *   POST /api/v1/conversations/:id/messages       send (idempotent by key)
 *   POST /api/v1/conversations/:id/read           move the READ pointer
 *   POST /api/v1/conversations/:id/members        add / remove members
 *   GET|POST|DELETE /api/v1/push/devices          push devices (push.c)
 *   POST /api/v1/media                            upload media (media.c)
 *   GET  /api/v1/media/:sha256/url                mint a signed URL (media.c)
 *   GET  /api/v1/cluster                          replication status (cluster.c;
 *                                                 no token, like /metrics)
 *   OPTIONS /api/v1/...                           CORS preflight (the CORS rules
 *                                                 are in conn.c, "CORS")
 * An unknown path is 404, a known path with another method 405 (with Allow),
 * then a missing or bad bearer token 401. Every error body is
 * {"error":{"code":N,"name":"...","message":"..."}} with the chat.v1 error
 * codes (enum gw_error).
 *
 * Writes are answered only once their record is durable and applied to the
 * state: the engine's completion runs on the loop after the record's commit
 * (srv.c), so a done callback here sees the state with its record in it.
 *
 * Three things make the asynchronous answers safe:
 *  - Order. A connection's requests run one at a time, as if the client
 *    waited for each answer, also when it pipelines: while one waits for the
 *    engine, later REST requests of that connection are copied into a
 *    per-connection queue (rconns) and run when it has been answered. So
 *    answers leave in request order, and a pipelined GET sees the POST
 *    before it.
 *  - Late replies. A done callback finds its connection by id
 *    (conn_find); if the client went away the reply is dropped.
 *  - One change at a time. A creation or membership change of a conversation
 *    that is in flight (ops, by conv_id) makes later requests for the same
 *    conversation wait and then run against the state it produced: two
 *    requests for the same direct pair create one conversation, and two
 *    concurrent additions cannot together exceed max_group_members.
 *
 * Everything here runs on the loop thread.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "chatd.h"
#include "cluster.h"
#include "log.pb-c.h"
#include "media.h"
#include "metrics.h"
#include "push.h"
#include "raft.h"
#include "rest.h"
#include "state.h"

#define REST_ID_MAX ((1ull << 53) - 1)
#define REST_MAX_TITLE 200
#define REST_PAGE_DEFAULT 50
#define REST_PAGE_MAX 200
#define REST_PREFIX "/api/v1/conversations"


/* ---- one request at a time per connection ---- */

/* A request that arrived while an earlier one of its connection was
 * waiting for the engine: a deep copy, run when its turn comes. */
typedef struct qreq {
    struct qreq *next;
    http_req r;
    const uint8_t *body;
    size_t blen, size;
    char mem[]; /* the strings r points to, then the body */
} qreq;

typedef struct rconn {
    int busy;     /* a request is waiting for the engine */
    int draining; /* drain() is running for this connection */
    qreq *head, *tail;
    uint32_t nq;
    size_t qbytes;
} rconn;

/* Pipelining beyond this closes the connection rather than growing. */
#define REST_MAX_QUEUED 256
#define REST_MAX_QUEUED_BYTES (8u << 20)

/* conn id → rconn, only while a connection has a request in flight. */
static u64map rconns;

/* One request being answered: where the reply goes. Copied by value into
 * whatever waits for the engine. */
typedef struct req {
    srv *s;
    uint64_t conn_id;
    int keep_alive;
    int deferred; /* answered later: its connection is busy until then */
    int cors_origin; /* conn_cors_match of the request: set on the
                      * connection when the answer goes (conn.c adds the
                      * CORS headers), since a pipelined request after this
                      * one may have set another by then */
} req;

static void handle(req *rq, const http_req *r, const uint8_t *body, size_t blen);

/* rq will be answered later, from a done callback: later requests of its
 * connection queue until then. 0, or -1 when out of memory. */
static int req_defer(req *rq)
{
    if (rq->deferred)
        return 0;
    rconn *rc = map_get(&rconns, rq->conn_id);
    if (!rc) {
        rc = calloc(1, sizeof *rc);
        if (!rc || map_put(&rconns, rq->conn_id, rc)) {
            free(rc);
            return -1;
        }
    }
    rc->busy = 1;
    rq->deferred = 1;
    return 0;
}

/* A connection that can still take an HTTP reply. */
static conn *reply_conn(srv *s, uint64_t conn_id)
{
    conn *c = conn_find(s, conn_id);
    if (!c || c->dead || c->is_ws || c->state != CS_HTTP || c->close_after_flush)
        return NULL;
    return c;
}

static void rconn_drop(uint64_t conn_id, rconn *rc)
{
    while (rc->head) {
        qreq *q = rc->head;
        rc->head = q->next;
        free(q);
    }
    map_del(&rconns, conn_id);
    free(rc);
    if (rconns.n == 0)
        map_free(&rconns);
}

/* Run the queued requests of a connection until one waits for the engine. */
static void drain(srv *s, uint64_t conn_id)
{
    rconn *rc = map_get(&rconns, conn_id);
    if (!rc || rc->draining)
        return; /* the drain() further up the stack goes on */
    rc->draining = 1;
    while (!rc->busy && rc->head) {
        conn *c = reply_conn(s, conn_id);
        if (!c)
            break; /* the client is gone: nobody to answer */
        qreq *q = rc->head;
        rc->head = q->next;
        if (!rc->head)
            rc->tail = NULL;
        rc->nq--;
        rc->qbytes -= q->size;
        req rq = {.s = s, .conn_id = conn_id, .keep_alive = q->r.keep_alive};
        handle(&rq, &q->r, q->body, q->blen);
        free(q);
    }
    rc->draining = 0;
    if (!rc->busy && (!rc->head || !reply_conn(s, conn_id))) {
        rconn_drop(conn_id, rc);
        /* Every request before a streaming one (a media upload, whose head
         * paused the connection) has its answer queued: it may start. */
        conn_http_resume(s, conn_id);
    }
}

int rest_conn_busy(uint64_t conn_id) { return map_get(&rconns, conn_id) != NULL; }

/* Send a reply (b owned; NULL: close the connection instead). */
static void deliver(req *rq, blob *b)
{
    conn *c = reply_conn(rq->s, rq->conn_id);
    if (c && !b) {
        conn_close(c, 0, NULL);
    } else if (c) {
        if (!rq->keep_alive)
            c->close_after_flush = 1;
        c->cors_origin = rq->cors_origin;
        conn_send_blob(c, b);
    }
    blob_unref(b);
    if (rq->deferred) {
        rq->deferred = 0;
        rconn *rc = map_get(&rconns, rq->conn_id);
        if (rc) {
            rc->busy = 0;
            drain(rq->s, rq->conn_id);
        }
    }
}

static size_t str_size(const char *s) { return s ? strlen(s) + 1 : 0; }

static const char *str_copy(char **p, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    memcpy(*p, s, n);
    const char *out = *p;
    *p += n;
    return out;
}

/* Queue a copy of a request behind the one in flight. 0 or -1 (too many,
 * or no memory: the caller closes the connection). */
static int enqueue_req(rconn *rc, const http_req *r, const uint8_t *body, size_t blen)
{
    size_t n = str_size(r->method) + str_size(r->target) + str_size(r->path) +
               str_size(r->query) + blen;
    for (int i = 0; i < r->nheaders; i++)
        n += str_size(r->headers[i].name) + str_size(r->headers[i].value);
    if (rc->nq >= REST_MAX_QUEUED || rc->qbytes + n > REST_MAX_QUEUED_BYTES)
        return -1;
    qreq *q = malloc(sizeof *q + n);
    if (!q)
        return -1;
    char *p = q->mem;
    q->next = NULL;
    q->r = *r;
    q->r.method = str_copy(&p, r->method);
    q->r.target = str_copy(&p, r->target);
    q->r.path = str_copy(&p, r->path);
    q->r.query = str_copy(&p, r->query);
    for (int i = 0; i < r->nheaders; i++) {
        q->r.headers[i].name = str_copy(&p, r->headers[i].name);
        q->r.headers[i].value = str_copy(&p, r->headers[i].value);
    }
    if (blen)
        memcpy(p, body, blen);
    q->body = (const uint8_t *)p;
    q->blen = blen;
    q->size = n;
    if (rc->tail)
        rc->tail->next = q;
    else
        rc->head = q;
    rc->tail = q;
    rc->nq++;
    rc->qbytes += n;
    return 0;
}

/* ---- responses ---- */

static blob *render(int status, const char *hdrs, const char *body, size_t len,
                    int keep_alive)
{
    char head[512];
    int n;
    if (status == 204)
        n = snprintf(head, sizeof head,
                     "HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n%s%s\r\n",
                     hdrs ? hdrs : "", keep_alive ? "" : "Connection: close\r\n");
    else
        n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nCache-Control: no-store\r\n%s%s\r\n",
                     status, http_reason(status), len, hdrs ? hdrs : "",
                     keep_alive ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof head)
        return NULL;
    blob *b = blob_new((size_t)n + len);
    if (!b)
        return NULL;
    memcpy(b->data, head, (size_t)n);
    if (len)
        memcpy(b->data + n, body, len);
    return b;
}

static void reply_raw(req *rq, int status, const char *hdrs, const char *body,
                      size_t len)
{
    deliver(rq, render(status, hdrs, body, len, rq->keep_alive));
}

static void reply_error(req *rq, int status, int code, const char *hdrs,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void reply_error(req *rq, int status, int code, const char *hdrs,
                        const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Messages may quote a client's field name: keep them printable ASCII
     * so that they are always valid JSON strings. */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    if (!hdrs) {
        if (status == 401)
            hdrs = "WWW-Authenticate: Bearer realm=\"chatd\"\r\n";
        else if (status == 429 || status == 503)
            hdrs = "Retry-After: 1\r\n";
    }
    if (code > 0 && code < 16)
        rq->s->met->errors_by_code[code]++;
    json_t *e = json_object(), *o = json_object();
    char *text = NULL;
    if (e && o && !json_object_set_new(e, "code", json_integer(code)) &&
        !json_object_set_new(e, "name", json_string(gw_error_name(code))) &&
        !json_object_set_new(e, "message", json_string(msg)) &&
        !json_object_set(o, "error", e))
        text = json_dumps(o, JSON_COMPACT);
    json_decref(e);
    json_decref(o);
    if (!text) {
        deliver(rq, NULL);
        return;
    }
    reply_raw(rq, status, hdrs, text, strlen(text));
    free(text);
}

/* Reply with j (taken). A body the connection could not queue without being
 * cut as a slow consumer is refused instead. */
static void reply_json(req *rq, int status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    size_t len = strlen(text);
    if (len + 1024 > rq->s->cfg.max_pending_out_bytes) {
        free(text);
        reply_error(rq, 500, GW_EINTERNAL, NULL,
                    "response of %zu bytes exceeds max_pending_out_bytes=%u", len,
                    rq->s->cfg.max_pending_out_bytes);
        return;
    }
    reply_raw(rq, status, NULL, text, len);
    free(text);
}

static int gw_status(int code)
{
    switch (code) {
    case GW_EBADFRAME: return 400;
    case GW_EUNAUTHORIZED: return 401;
    case GW_ENOTMEMBER: return 403;
    case GW_ENOTFOUND: return 404;
    case GW_ECONFLICT: return 409;
    case GW_ETOOLARGE: return 413;
    case GW_ERATELIMITED: return 429;
    case GW_EOVERLOADED: return 503;
    case GW_EUNAVAILABLE: return 503;
    }
    return 500;
}

static void reply_gw(req *rq, int code, const char *why)
{
    reply_error(rq, gw_status(code), code, NULL, "%s", why);
}

/* An append the engine or the cluster refused or failed: overloaded or
 * unavailable (retry), or internal. */
static void reply_engine(req *rq, int status)
{
    int code = gw_engine_error(status);
    if (code == GW_EINTERNAL)
        reply_error(rq, 500, code, NULL, "storage: %s", raft_strerror(status));
    else
        reply_error(rq, 503, code, NULL, "%s; retry later", raft_strerror(status));
}

/* ---- parsing ---- */

int rest__parse_id(const char *s, size_t n, uint64_t min, uint64_t *out)
{
    if (n == 0 || n > 16)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v < min || v > REST_ID_MAX)
        return -1;
    *out = v;
    return 0;
}

int rest__route(const char *path, uint64_t *conv_id)
{
    size_t plen = sizeof REST_PREFIX - 1;
    if (strncmp(path, REST_PREFIX, plen))
        return -1;
    const char *p = path + plen;
    if (*p == 0)
        return RT_CONVS;
    if (*p != '/')
        return -1;
    p++;
    const char *slash = strchr(p, '/');
    size_t idlen = slash ? (size_t)(slash - p) : strlen(p);
    if (rest__parse_id(p, idlen, 1, conv_id))
        return -1;
    if (!slash)
        return RT_CONV;
    if (!strcmp(slash, "/messages"))
        return RT_MESSAGES;
    if (!strcmp(slash, "/read"))
        return RT_READ;
    if (!strcmp(slash, "/members"))
        return RT_MEMBERS;
    return -1;
}

int rest__is_json_ctype(const char *v)
{
    while (*v == ' ' || *v == '\t')
        v++;
    static const char mt[] = "application/json";
    if (strncasecmp(v, mt, sizeof mt - 1))
        return 0;
    v += sizeof mt - 1;
    while (*v == ' ' || *v == '\t')
        v++;
    return *v == 0 || *v == ';';
}

int rest__check_fields(const json_t *o, const char *const *allowed, char *err,
                       size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = !strcmp(key, *a);
        if (!ok) {
            snprintf(err, errlen, "unknown field \"%.64s\"", key);
            return -1;
        }
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A JSON array of user ids → sorted, duplicates removed. a NULL → none.
 * *out is malloc'd (caller frees; NULL when *n is 0). 0, or -1 with err. */
int rest__ids(const json_t *a, const char *field, uint64_t **out, size_t *n,
              char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (!a)
        return 0;
    if (!json_is_array(a)) {
        snprintf(err, errlen, "field \"%s\" must be an array of user ids", field);
        return -1;
    }
    size_t cnt = json_array_size(a);
    if (cnt == 0)
        return 0;
    uint64_t *ids = malloc(cnt * sizeof *ids);
    if (!ids) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < cnt; i++) {
        json_t *v = json_array_get(a, i);
        json_int_t x = json_is_integer(v) ? json_integer_value(v) : 0;
        if (x < 1 || (uint64_t)x > REST_ID_MAX) {
            snprintf(err, errlen,
                     "field \"%s\"[%zu] must be a user id (an integer 1..%llu)",
                     field, i, (unsigned long long)REST_ID_MAX);
            free(ids);
            return -1;
        }
        ids[i] = (uint64_t)x;
    }
    qsort(ids, cnt, sizeof *ids, cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < cnt; i++)
        if (k == 0 || ids[k - 1] != ids[i])
            ids[k++] = ids[i];
    *out = ids;
    *n = k;
    return 0;
}

static int has_id(const uint64_t *ids, size_t n, uint64_t id)
{
    return n && bsearch(&id, ids, n, sizeof *ids, cmp_u64) != NULL;
}

/* ---- views ---- */

static json_t *jstr(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    return j ? j : json_string(""); /* not UTF-8 (never written by us) */
}

static json_t *conv_json(const convo *cv, uint64_t uid)
{
    json_t *o = json_object(), *mem = json_array();
    if (!o || !mem) {
        json_decref(o);
        json_decref(mem);
        return NULL;
    }
    int bad = 0;
    for (uint32_t i = 0; i < cv->nmembers; i++)
        bad |= json_array_append_new(mem, json_integer((json_int_t)cv->members[i].user_id));
    const member *m = st_member(cv, uid);
    const char *title = cv->title ? cv->title : "";
    bad |= json_object_set_new(o, "conv_id", json_integer((json_int_t)cv->conv_id));
    bad |= json_object_set_new(o, "kind", json_string(cv->kind == CONV_DIRECT ? "direct" : "group"));
    bad |= json_object_set_new(o, "title", jstr(title, strlen(title)));
    bad |= json_object_set_new(o, "creator", json_integer((json_int_t)cv->creator));
    bad |= json_object_set_new(o, "members", mem);
    bad |= json_object_set_new(o, "created_at", json_integer(cv->created_at));
    bad |= json_object_set_new(o, "last_msg_id", json_integer((json_int_t)cv->last_msg_id));
    bad |= json_object_set_new(o, "last_read_msg_id",
                               json_integer((json_int_t)(m ? m->read_ptr : 0)));
    bad |= json_object_set_new(o, "unread", json_integer((json_int_t)(m ? st_unread(cv, m) : 0)));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static void reply_conv(req *rq, int status, const convo *cv, uint64_t uid)
{
    reply_json(rq, status, conv_json(cv, uid));
}

/* The conversation for a request, or NULL after replying 404/403. */
static convo *conv_access(req *rq, uint64_t uid, uint64_t conv_id)
{
    convo *cv = st_conv(rq->s->st, conv_id);
    if (!cv || !cv->committed) {
        reply_error(rq, 404, GW_ENOTFOUND, NULL, "no such conversation");
        return NULL;
    }
    if (!st_member(cv, uid)) {
        reply_error(rq, 403, GW_ENOTMEMBER, NULL, "not a member of this conversation");
        return NULL;
    }
    return cv;
}

/* ---- conversation changes: creation and membership ---- */

enum { SV_DIRECT = 1, SV_GROUP = 2, SV_MEMBERS = 3 };

/* A request that changes a conversation, kept while it waits. */
typedef struct saved {
    struct saved *next;
    int type;
    req rq;
    uint64_t uid;     /* the caller */
    uint64_t conv_id; /* SV_MEMBERS */
    size_t nadd, nrem;
    uint64_t ids[];   /* SV_DIRECT: the other member; SV_MEMBERS: add, remove */
} saved;

enum { OP_CREATE = 1, OP_MEMBERS = 2 };

/* A creation or membership change in flight, by conv_id. */
typedef struct op {
    int type;
    uint64_t conv_id;
    saved *origin;
    saved *wait_head, *wait_tail;
} op;

static u64map ops;

static saved *saved_new(const req *rq, int type, uint64_t uid, uint64_t conv_id,
                        const uint64_t *add, size_t nadd, const uint64_t *rem,
                        size_t nrem)
{
    saved *sv = calloc(1, sizeof *sv + (nadd + nrem) * sizeof(uint64_t));
    if (!sv)
        return NULL;
    sv->type = type;
    sv->rq = *rq;
    sv->uid = uid;
    sv->conv_id = conv_id;
    sv->nadd = nadd;
    sv->nrem = nrem;
    if (nadd)
        memcpy(sv->ids, add, nadd * sizeof *add);
    if (nrem)
        memcpy(sv->ids + nadd, rem, nrem * sizeof *rem);
    return sv;
}

static void op_wait(op *o, saved *sv)
{
    if (req_defer(&sv->rq)) {
        reply_error(&sv->rq, 500, GW_EINTERNAL, NULL, "out of memory");
        free(sv);
        return;
    }
    sv->next = NULL;
    if (o->wait_tail)
        o->wait_tail->next = sv;
    else
        o->wait_head = sv;
    o->wait_tail = sv;
}

static void direct_run(saved *sv);
static void members_run(saved *sv);

/* An op finished: run what waited on it, in arrival order, against the new
 * state (each either answers or waits on the next op). */
static void op_finish(op *o)
{
    map_del(&ops, o->conv_id);
    if (ops.n == 0)
        map_free(&ops);
    saved *w = o->wait_head;
    free(o->origin);
    free(o);
    while (w) {
        saved *next = w->next;
        w->next = NULL;
        if (w->type == SV_DIRECT)
            direct_run(w);
        else
            members_run(w);
        w = next;
    }
}

/* Start an op: register it and append its record. Answers on failure. */
static void op_start(saved *sv, int type, uint64_t conv_id, int rec_type,
                     const uint8_t *body, size_t blen,
                     void (*done)(srv *, void *, int, const log_append_result *))
{
    srv *s = sv->rq.s;
    op *o = calloc(1, sizeof *o);
    if (!o || req_defer(&sv->rq) || map_put(&ops, conv_id, o)) {
        free(o);
        if (type == OP_CREATE)
            st_conv_unreserve(s->st, conv_id);
        reply_error(&sv->rq, 500, GW_EINTERNAL, NULL, "out of memory");
        free(sv);
        return;
    }
    o->type = type;
    o->conv_id = conv_id;
    o->origin = sv;
    rec_view rec = {.type = (uint8_t)rec_type, .conv_id = conv_id,
                    .sender_id = sv->uid, .body = body, .body_len = (uint32_t)blen};
    int rc = srv_append(s, &rec, done, o);
    if (rc) {
        map_del(&ops, conv_id);
        if (ops.n == 0)
            map_free(&ops);
        free(o);
        if (type == OP_CREATE)
            st_conv_unreserve(s->st, conv_id);
        reply_engine(&sv->rq, rc);
        free(sv);
    }
}

static void create_done(srv *s, void *arg, int status, const log_append_result *res)
{
    (void)res;
    op *o = arg;
    saved *sv = o->origin;
    if (status) {
        st_conv_unreserve(s->st, o->conv_id);
        reply_engine(&sv->rq, status);
    } else {
        convo *cv = st_conv(s->st, o->conv_id);
        if (cv && cv->committed)
            reply_conv(&sv->rq, 201, cv, sv->uid);
        else
            reply_error(&sv->rq, 500, GW_EINTERNAL, NULL,
                        "the conversation was stored but could not be applied");
    }
    op_finish(o);
}

static void start_create(saved *sv, uint64_t conv_id, int kind,
                         uint64_t *members, size_t n, const char *title)
{
    srv *s = sv->rq.s;
    if (!st_conv_reserve(s->st, conv_id)) {
        reply_error(&sv->rq, 500, GW_EINTERNAL, NULL, "out of memory");
        free(sv);
        return;
    }
    Chatlog__Log__V1__ConvCreated cc = CHATLOG__LOG__V1__CONV_CREATED__INIT;
    cc.kind = kind == CONV_DIRECT ? CHATLOG__LOG__V1__CONV_CREATED__KIND__DIRECT
                                  : CHATLOG__LOG__V1__CONV_CREATED__KIND__GROUP;
    cc.n_members = n;
    cc.members = members;
    cc.title = (char *)title;
    size_t plen = chatlog__log__v1__conv_created__get_packed_size(&cc);
    uint8_t *pb = malloc(plen ? plen : 1);
    if (!pb) {
        st_conv_unreserve(s->st, conv_id);
        reply_error(&sv->rq, 500, GW_EINTERNAL, NULL, "out of memory");
        free(sv);
        return;
    }
    chatlog__log__v1__conv_created__pack(&cc, pb);
    op_start(sv, OP_CREATE, conv_id, REC_CONV_CREATED, pb, plen, create_done);
    free(pb);
}

/* Find or create the direct conversation of sv->uid and sv->ids[0]. */
static void direct_run(saved *sv)
{
    st *t = sv->rq.s->st;
    uint64_t a = sv->uid, b = sv->ids[0];
    convo *cv = st_direct(t, a, b);
    if (cv && cv->committed) {
        reply_conv(&sv->rq, 200, cv, a);
        free(sv);
        return;
    }
    uint64_t id = st_direct_id(a, b);
    cv = st_conv(t, id);
    if (cv) {
        op *o = map_get(&ops, id);
        if (!cv->committed && o && o->type == OP_CREATE) {
            op_wait(o, sv); /* the same pair, being created: its answer is ours */
            return;
        }
        reply_error(&sv->rq, 409, GW_ECONFLICT, NULL,
                    "conversation id %" PRIu64 " is taken by another conversation", id);
        free(sv);
        return;
    }
    uint64_t members[2] = {a < b ? a : b, a < b ? b : a};
    start_create(sv, id, CONV_DIRECT, members, 2, "");
}

static void h_create(req *rq, uint64_t uid, const json_t *j)
{
    static const char *const fields[] = {"kind", "members", "title", NULL};
    srv *s = rq->s;
    char err[256];
    if (rest__check_fields(j, fields, err, sizeof err)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "%s", err);
        return;
    }
    json_t *jk = json_object_get(j, "kind"), *jm = json_object_get(j, "members"),
           *jt = json_object_get(j, "title");
    if (!jk) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "missing field \"kind\"");
        return;
    }
    const char *kind = json_is_string(jk) ? json_string_value(jk) : "";
    int is_direct = !strcmp(kind, "direct"), is_group = !strcmp(kind, "group");
    if (!is_direct && !is_group) {
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "field \"kind\" must be \"direct\" or \"group\"");
        return;
    }
    if (jt && !json_is_string(jt)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "field \"title\" must be a string");
        return;
    }
    const char *title = jt ? json_string_value(jt) : "";
    size_t tlen = jt ? json_string_length(jt) : 0;
    if (tlen > REST_MAX_TITLE) {
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "field \"title\" is %zu bytes; at most %d", tlen, REST_MAX_TITLE);
        return;
    }
    if (!ws_utf8_valid((const uint8_t *)title, tlen)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "field \"title\" must be UTF-8");
        return;
    }
    if (is_direct && !jm) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "missing field \"members\"");
        return;
    }
    uint64_t *ids;
    size_t n;
    if (rest__ids(jm, "members", &ids, &n, err, sizeof err)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "%s", err);
        return;
    }
    if (is_direct) {
        uint64_t other = 0;
        size_t others = 0;
        for (size_t i = 0; i < n; i++)
            if (ids[i] != uid) {
                other = ids[i];
                others++;
            }
        free(ids);
        if (others != 1) {
            reply_error(rq, 400, GW_EBADFRAME, NULL,
                        "field \"members\": a direct conversation has exactly one "
                        "member besides the caller (%zu given)", others);
            return;
        }
        if (tlen) {
            reply_error(rq, 400, GW_EBADFRAME, NULL,
                        "field \"title\": direct conversations have no title");
            return;
        }
        saved *sv = saved_new(rq, SV_DIRECT, uid, 0, &other, 1, NULL, 0);
        if (!sv) {
            reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
            return;
        }
        direct_run(sv);
        return;
    }
    /* A group: the caller is always a member. */
    if (!has_id(ids, n, uid)) {
        uint64_t *m = realloc(ids, (n + 1) * sizeof *m);
        if (!m) {
            free(ids);
            reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
            return;
        }
        ids = m;
        ids[n++] = uid;
        qsort(ids, n, sizeof *ids, cmp_u64);
    }
    if (n > s->cfg.max_group_members) {
        free(ids);
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "group of %zu members exceeds max_group_members=%u", n,
                    s->cfg.max_group_members);
        return;
    }
    saved *sv = saved_new(rq, SV_GROUP, uid, 0, NULL, 0, NULL, 0);
    if (!sv) {
        free(ids);
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    start_create(sv, st_new_group_id(s->st), CONV_GROUP, ids, n, title);
    free(ids);
}

static void members_done(srv *s, void *arg, int status, const log_append_result *res)
{
    (void)res;
    op *o = arg;
    saved *sv = o->origin;
    if (status) {
        reply_engine(&sv->rq, status);
    } else {
        convo *cv = st_conv(s->st, o->conv_id);
        if (cv)
            reply_conv(&sv->rq, 200, cv, sv->uid);
        else
            reply_error(&sv->rq, 500, GW_EINTERNAL, NULL, "conversation vanished");
    }
    op_finish(o);
}

/* Apply a membership change request against the current state. */
static void members_run(saved *sv)
{
    srv *s = sv->rq.s;
    op *o = map_get(&ops, sv->conv_id);
    if (o) {
        op_wait(o, sv);
        return;
    }
    convo *cv = conv_access(&sv->rq, sv->uid, sv->conv_id);
    if (!cv) {
        free(sv);
        return;
    }
    if (cv->kind == CONV_DIRECT) {
        reply_error(&sv->rq, 400, GW_EBADFRAME, NULL,
                    "the members of a direct conversation cannot change");
        free(sv);
        return;
    }
    const uint64_t *add = sv->ids, *rem = sv->ids + sv->nadd;
    for (size_t i = 0; i < sv->nrem; i++)
        if (rem[i] != sv->uid && cv->creator != sv->uid) {
            reply_error(&sv->rq, 403, GW_ENOTMEMBER, NULL,
                        "only the creator (user %" PRIu64 ") may remove other members",
                        cv->creator);
            free(sv);
            return;
        }
    uint64_t *fa = malloc((sv->nadd + sv->nrem + 1) * sizeof *fa);
    if (!fa) {
        reply_error(&sv->rq, 500, GW_EINTERNAL, NULL, "out of memory");
        free(sv);
        return;
    }
    size_t na = 0, nr = 0;
    for (size_t i = 0; i < sv->nadd; i++)
        if (!st_member(cv, add[i]))
            fa[na++] = add[i];
    uint64_t *fr = fa + na;
    for (size_t i = 0; i < sv->nrem; i++)
        if (st_member(cv, rem[i]))
            fr[nr++] = rem[i];
    size_t after = (size_t)cv->nmembers + na - nr;
    if (after > s->cfg.max_group_members) {
        free(fa);
        reply_error(&sv->rq, 400, GW_EBADFRAME, NULL,
                    "group of %zu members exceeds max_group_members=%u", after,
                    s->cfg.max_group_members);
        free(sv);
        return;
    }
    if (na == 0 && nr == 0) {
        free(fa);
        reply_conv(&sv->rq, 200, cv, sv->uid); /* nothing changes */
        free(sv);
        return;
    }
    Chatlog__Log__V1__MembersChanged mc = CHATLOG__LOG__V1__MEMBERS_CHANGED__INIT;
    mc.n_add = na;
    mc.add = fa;
    mc.n_remove = nr;
    mc.remove = fr;
    size_t plen = chatlog__log__v1__members_changed__get_packed_size(&mc);
    uint8_t *pb = malloc(plen ? plen : 1);
    if (!pb) {
        free(fa);
        reply_error(&sv->rq, 500, GW_EINTERNAL, NULL, "out of memory");
        free(sv);
        return;
    }
    chatlog__log__v1__members_changed__pack(&mc, pb);
    free(fa);
    op_start(sv, OP_MEMBERS, sv->conv_id, REC_MEMBERS_CHANGED, pb, plen, members_done);
    free(pb);
}

static void h_members(req *rq, uint64_t uid, uint64_t conv_id, const json_t *j)
{
    static const char *const fields[] = {"add", "remove", NULL};
    char err[256];
    if (rest__check_fields(j, fields, err, sizeof err)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "%s", err);
        return;
    }
    uint64_t *add = NULL, *rem = NULL;
    size_t na = 0, nr = 0;
    if (rest__ids(json_object_get(j, "add"), "add", &add, &na, err, sizeof err) ||
        rest__ids(json_object_get(j, "remove"), "remove", &rem, &nr, err, sizeof err)) {
        free(add);
        reply_error(rq, 400, GW_EBADFRAME, NULL, "%s", err);
        return;
    }
    if (na == 0 && nr == 0) {
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "nothing to change: give \"add\" and/or \"remove\"");
        return;
    }
    for (size_t i = 0; i < na; i++)
        if (has_id(rem, nr, add[i])) {
            reply_error(rq, 400, GW_EBADFRAME, NULL,
                        "user %" PRIu64 " is in both \"add\" and \"remove\"", add[i]);
            free(add);
            free(rem);
            return;
        }
    saved *sv = saved_new(rq, SV_MEMBERS, uid, conv_id, add, na, rem, nr);
    free(add);
    free(rem);
    if (!sv) {
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    members_run(sv);
}

/* ---- messages ---- */

/* A REST send in flight. Requests repeating its key while it is in flight
 * wait on it (waiters) and get the same answer. */
typedef struct send_op {
    struct send_op *next, *prev;
    req rq;
    uint64_t sender, conv_id;
    int64_t t0_ms;
    req *waiters;
    uint32_t nwaiters;
    size_t clen;
    char cmid[];
} send_op;

static send_op *sends; /* every REST send in flight */

static json_t *sent_json(uint64_t conv_id, uint64_t msg_id, int64_t ts,
                         const char *cmid, size_t clen)
{
    json_t *o = json_object();
    if (o && !json_object_set_new(o, "msg_id", json_integer((json_int_t)msg_id)) &&
        !json_object_set_new(o, "conv_id", json_integer((json_int_t)conv_id)) &&
        !json_object_set_new(o, "ts", json_integer(ts)) &&
        !json_object_set_new(o, "client_msg_id", jstr(cmid, clen)))
        return o;
    json_decref(o);
    return NULL;
}

static void send_done(srv *s, void *arg, int status, const log_append_result *res)
{
    send_op *x = arg;
    if (x->prev)
        x->prev->next = x->next;
    else
        sends = x->next;
    if (x->next)
        x->next->prev = x->prev;
    met_observe(&s->met->append_latency_ms, met_latency_bounds,
                (double)(srv_now_ms() - x->t0_ms));
    if (status == 0) {
        s->met->messages_appended++;
        reply_json(&x->rq, 201, sent_json(x->conv_id, res->msg_id, res->ts_ms,
                                          x->cmid, x->clen));
        for (uint32_t i = 0; i < x->nwaiters; i++)
            reply_json(&x->waiters[i], 200, sent_json(x->conv_id, res->msg_id,
                                                      res->ts_ms, x->cmid, x->clen));
    } else {
        /* gw_submit_message has already dropped the key. */
        reply_engine(&x->rq, status);
        for (uint32_t i = 0; i < x->nwaiters; i++)
            reply_engine(&x->waiters[i], status);
    }
    free(x->waiters);
    free(x);
}

static int get_string(req *rq, const json_t *j, const char *field, const char **v,
                      size_t *n)
{
    json_t *f = json_object_get(j, field);
    *v = "";
    *n = 0;
    if (!f)
        return 0;
    if (!json_is_string(f)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "field \"%s\" must be a string", field);
        return -1;
    }
    *v = json_string_value(f);
    *n = json_string_length(f);
    return 0;
}

static void h_send(req *rq, uint64_t uid, uint64_t conv_id, const json_t *j)
{
    static const char *const fields[] = {"body", "client_msg_id", "media_url", NULL};
    srv *s = rq->s;
    char err[256];
    if (rest__check_fields(j, fields, err, sizeof err)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "%s", err);
        return;
    }
    const char *body, *cmid, *media;
    size_t blen, clen, mlen;
    if (get_string(rq, j, "body", &body, &blen) ||
        get_string(rq, j, "client_msg_id", &cmid, &clen) ||
        get_string(rq, j, "media_url", &media, &mlen))
        return;
    if (!json_object_get(j, "body") && !mlen) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "missing field \"body\"");
        return;
    }
    if (clen > RECORD_MAX_KEY) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "field \"client_msg_id\" is too long");
        return;
    }
    send_op *x = calloc(1, sizeof *x + clen + 1);
    if (!x || req_defer(rq)) {
        free(x);
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    x->sender = uid;
    x->conv_id = conv_id;
    x->t0_ms = srv_now_ms();
    x->clen = clen;
    memcpy(x->cmid, cmid, clen);
    uint64_t dup = 0;
    int64_t dup_ts = 0;
    const char *why = "";
    int code = gw_submit_message(s, uid, conv_id, body, blen, media, mlen, cmid, clen,
                                 0, send_done, x, &dup, &dup_ts, &why);
    if (code) {
        free(x);
        reply_gw(rq, code, why);
        return;
    }
    if (dup == UINT64_MAX) {
        /* The same key is in flight. From a REST request: answer with it. */
        free(x);
        for (send_op *o = sends; o; o = o->next)
            if (o->sender == uid && o->conv_id == conv_id && o->clen == clen &&
                !memcmp(o->cmid, cmid, clen)) {
                req *w = realloc(o->waiters, (o->nwaiters + 1) * sizeof *w);
                if (!w) {
                    reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
                    return;
                }
                o->waiters = w;
                o->waiters[o->nwaiters++] = *rq;
                return;
            }
        /* From a WebSocket Send, whose completion does not call us. */
        reply_error(rq, 409, GW_ECONFLICT, "Retry-After: 1\r\n",
                    "a message with this client_msg_id is still being stored; "
                    "retry to get its msg_id");
        return;
    }
    if (dup) {
        free(x);
        reply_json(rq, 200, sent_json(conv_id, dup, dup_ts, cmid, clen)); /* a retry */
        return;
    }
    x->rq = *rq;
    x->next = sends;
    if (sends)
        sends->prev = x;
    sends = x;
}

/* Parse the history query: before, after, limit; each at most once. */
static int history_query(req *rq, const http_req *r, int *has_before, uint64_t *before,
                         int *has_after, uint64_t *after, uint64_t *limit)
{
    int nb = 0, na = 0, nl = 0;
    for (const char *q = r->query; q && *q;) {
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', plen);
        size_t klen = eq ? (size_t)(eq - q) : plen;
        if (klen == 6 && !memcmp(q, "before", 6))
            nb++;
        else if (klen == 5 && !memcmp(q, "after", 5))
            na++;
        else if (klen == 5 && !memcmp(q, "limit", 5))
            nl++;
        else if (klen) {
            reply_error(rq, 400, GW_EBADFRAME, NULL,
                        "unknown query parameter \"%.*s\" (before, after, limit)",
                        (int)(klen > 40 ? 40 : klen), q);
            return -1;
        }
        q = amp ? amp + 1 : q + plen;
    }
    if (nb > 1 || na > 1 || nl > 1) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "a query parameter is repeated");
        return -1;
    }
    if (nb && na) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "give \"before\" or \"after\", not both");
        return -1;
    }
    char v[32];
    int n;
    *has_before = nb;
    *has_after = na;
    *limit = REST_PAGE_DEFAULT;
    if (nb && ((n = http_query_param(r, "before", v, sizeof v)) < 0 ||
               rest__parse_id(v, (size_t)n, 1, before))) {
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "\"before\" must be a msg_id (an integer 1..%llu)",
                    (unsigned long long)REST_ID_MAX);
        return -1;
    }
    if (na && ((n = http_query_param(r, "after", v, sizeof v)) < 0 ||
               rest__parse_id(v, (size_t)n, 0, after))) {
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "\"after\" must be a msg_id (an integer 0..%llu)",
                    (unsigned long long)REST_ID_MAX);
        return -1;
    }
    if (nl && ((n = http_query_param(r, "limit", v, sizeof v)) < 0 ||
               rest__parse_id(v, (size_t)n, 1, limit))) {
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "\"limit\" must be an integer 1..%d (larger is capped)", REST_PAGE_MAX);
        return -1;
    }
    if (*limit > REST_PAGE_MAX)
        *limit = REST_PAGE_MAX;
    return 0;
}

static json_t *msg_json(const rec_view *rv)
{
    Chatlog__Log__V1__MessageBody *b =
        chatlog__log__v1__message_body__unpack(NULL, rv->body_len, rv->body);
    const char *text = b && b->text ? b->text : "";
    const char *media = b && b->media_url ? b->media_url : "";
    json_t *o = json_object();
    if (o && (json_object_set_new(o, "conv_id", json_integer((json_int_t)rv->conv_id)) ||
              json_object_set_new(o, "msg_id", json_integer((json_int_t)rv->msg_id)) ||
              json_object_set_new(o, "sender_id", json_integer((json_int_t)rv->sender_id)) ||
              json_object_set_new(o, "body", jstr(text, strlen(text))) ||
              json_object_set_new(o, "media_url", jstr(media, strlen(media))) ||
              json_object_set_new(o, "ts", json_integer(rv->ts_ms)) ||
              json_object_set_new(o, "client_msg_id",
                                  jstr((const char *)rv->key, rv->key_len)))) {
        json_decref(o);
        o = NULL;
    }
    if (b)
        chatlog__log__v1__message_body__free_unpacked(b, NULL);
    return o;
}

static void h_history(req *rq, const http_req *r, uint64_t uid, uint64_t conv_id)
{
    srv *s = rq->s;
    int has_before, has_after;
    uint64_t before = 0, after = 0, limit;
    if (history_query(rq, r, &has_before, &before, &has_after, &after, &limit))
        return;
    convo *cv = conv_access(rq, uid, conv_id);
    if (!cv)
        return;
    /* Up to what this loop has applied: like Sync, so that a client that
     * reads history and then listens sees no gap and no duplicate. */
    uint64_t cap = cv->last_msg_id;
    log_result res = {0};
    int more = 0, rc = 0;
    if (has_after) {
        if (after < cap) {
            uint64_t n = cap - after < limit ? cap - after : limit;
            rc = log_read_conv(s->log, conv_id, after, LOG_AFTER, (uint32_t)n, &res, NULL);
        }
    } else {
        uint64_t bound = cap + 1;
        if (has_before && before < bound)
            bound = before;
        if (bound > 1)
            rc = log_read_conv(s->log, conv_id, bound, LOG_BEFORE, (uint32_t)limit, &res,
                               &more);
    }
    if (rc) {
        log_result_free(&res);
        reply_error(rq, 500, GW_EINTERNAL, NULL, "storage: %s", cl_strerror(rc));
        return;
    }
    json_t *arr = json_array();
    /* Keep a page well within what the connection may still queue: output
     * beyond max_pending_out_bytes closes it as a slow consumer. */
    conn *c = reply_conn(s, rq->conn_id);
    size_t room = s->cfg.max_pending_out_bytes;
    if (c && c->out_bytes < room)
        room -= (size_t)c->out_bytes;
    size_t budget = room / 2, used = 0, n = 0;
    uint64_t last = 0;
    int cut = 0, bad = !arr;
    for (size_t i = 0; i < res.n && !bad; i++) {
        const rec_view *rv = &res.entries[i].rec;
        if (rv->type != REC_MESSAGE || rv->msg_id > cap)
            continue;
        json_t *m = msg_json(rv);
        if (!m) {
            bad = 1;
            break;
        }
        size_t sz = json_dumpb(m, NULL, 0, JSON_COMPACT) + 1;
        if (n && used + sz > budget) {
            json_decref(m);
            cut = 1;
            break;
        }
        used += sz;
        bad |= json_array_append_new(arr, m);
        last = rv->msg_id;
        n++;
    }
    log_result_free(&res);
    if (has_after)
        more = cut || (n && last < cap);
    else
        more = more || cut;
    json_t *o = bad ? NULL : json_object();
    if (!o) {
        json_decref(arr);
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    /* json_object_set_new takes its value even when it fails. */
    if (json_object_set_new(o, "messages", arr) ||
        json_object_set_new(o, "more", json_boolean(more))) {
        json_decref(o);
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    reply_json(rq, 200, o);
}

static void h_read(req *rq, uint64_t uid, uint64_t conv_id, const json_t *j)
{
    static const char *const fields[] = {"last_read_msg_id", NULL};
    char err[256];
    if (rest__check_fields(j, fields, err, sizeof err)) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "%s", err);
        return;
    }
    json_t *v = json_object_get(j, "last_read_msg_id");
    if (!v) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "missing field \"last_read_msg_id\"");
        return;
    }
    json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
    if (x < 0 || (uint64_t)x > REST_ID_MAX) {
        reply_error(rq, 400, GW_EBADFRAME, NULL,
                    "field \"last_read_msg_id\" must be a msg_id (an integer 0..%llu)",
                    (unsigned long long)REST_ID_MAX);
        return;
    }
    const char *why = "";
    int code = gw_submit_pointer(rq->s, uid, conv_id, 1, (uint64_t)x, 0, &why);
    if (code) {
        reply_gw(rq, code, why);
        return;
    }
    reply_raw(rq, 204, NULL, NULL, 0);
}

/* ---- conversations ---- */

static int cmp_conv(const void *a, const void *b)
{
    const convo *x = *(const convo *const *)a, *y = *(const convo *const *)b;
    if (x->created_at != y->created_at)
        return x->created_at < y->created_at ? -1 : 1;
    return x->conv_id < y->conv_id ? -1 : x->conv_id > y->conv_id;
}

static void h_list(req *rq, uint64_t uid)
{
    st *t = rq->s->st;
    user *u = st_user(t, uid, 0);
    uint32_t n = 0;
    convo **list = malloc(((u ? u->nconvs : 0) + 1) * sizeof *list);
    json_t *arr = json_array(), *o = json_object();
    if (!list || !arr || !o) {
        free(list);
        json_decref(arr);
        json_decref(o);
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    for (uint32_t i = 0; u && i < u->nconvs; i++) {
        convo *cv = st_conv(t, u->convs[i]);
        if (cv && cv->committed && st_member(cv, uid))
            list[n++] = cv;
    }
    qsort(list, n, sizeof *list, cmp_conv);
    int bad = 0;
    for (uint32_t i = 0; i < n && !bad; i++)
        bad |= json_array_append_new(arr, conv_json(list[i], uid));
    free(list);
    if (bad || json_object_set_new(o, "conversations", arr)) {
        if (!bad)
            arr = NULL; /* taken by the failed set */
        json_decref(arr);
        json_decref(o);
        reply_error(rq, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    reply_json(rq, 200, o);
}

/* ---- dispatch ---- */

int rest__bearer(struct srv *s, const http_req *r, uint64_t *uid, const char **why)
{
    const char *h = http_header_get(r, "Authorization");
    if (!h) {
        *why = "missing Authorization: Bearer <token>";
        return -1;
    }
    while (*h == ' ' || *h == '\t')
        h++;
    if (strncasecmp(h, "Bearer", 6) || (h[6] != ' ' && h[6] != '\t')) {
        *why = "the Authorization scheme must be Bearer";
        return -1;
    }
    h += 7;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t len = strlen(h);
    while (len && (h[len - 1] == ' ' || h[len - 1] == '\t'))
        len--;
    if (len == 0 || len > AUTH_MAX_TOKEN) {
        *why = "bad token";
        return -1;
    }
    int rc = auth_verify(s->secret, s->secret_len, h, len, srv_now_ms() / 1000, uid);
    if (rc != AUTH_OK) {
        *why = auth_strerror(rc);
        return -1;
    }
    return 0;
}

static int authenticate(req *rq, const http_req *r, uint64_t *uid)
{
    const char *why = "bad token";
    if (rest__bearer(rq->s, r, uid, &why)) {
        reply_error(rq, 401, GW_EUNAUTHORIZED, NULL, "%s", why);
        return -1;
    }
    return 0;
}

/* The JSON object in a POST body, or NULL after replying. */
static json_t *parse_body(req *rq, const http_req *r, const uint8_t *body, size_t blen)
{
    const char *ct = http_header_get(r, "Content-Type");
    if (ct && !rest__is_json_ctype(ct)) {
        reply_error(rq, 415, GW_EBADFRAME, NULL, "Content-Type must be application/json");
        return NULL;
    }
    if (blen > rq->s->cfg.max_http_body_bytes) {
        reply_error(rq, 413, GW_ETOOLARGE, NULL, "request body too large");
        return NULL;
    }
    if (blen == 0) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "the request body must be a JSON object");
        return NULL;
    }
    json_error_t e;
    json_t *j = json_loadb((const char *)body, blen, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        reply_error(rq, 400, GW_EBADFRAME, NULL, "invalid JSON at line %d column %d: %s",
                    e.line, e.column, e.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        reply_error(rq, 400, GW_EBADFRAME, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return j;
}

/* /api/v1/push/devices: push_rest (push.c) does the work; docs/push.md. */
static void h_push(req *rq, const http_req *r, const uint8_t *body, size_t blen)
{
    int get = !strcmp(r->method, "GET"), del = !strcmp(r->method, "DELETE");
    uint64_t uid;
    json_t *j = NULL, *out = NULL;
    if (!get && !del && strcmp(r->method, "POST")) {
        reply_error(rq, 405, GW_EBADFRAME, "Allow: GET, POST, DELETE\r\n",
                    "method %.16s not allowed here", r->method);
        return;
    }
    if (authenticate(rq, r, &uid))
        return;
    if ((!get && !del) || (del && blen)) { /* DELETE: a body, or the query */
        j = parse_body(rq, r, body, blen);
        if (!j)
            return;
    }
    char err[320];
    int code = 0, status = push_rest(rq->s, uid, r->method, r, j, &out, &code, err,
                                     sizeof err);
    json_decref(j);
    if (code)
        reply_error(rq, status, code, NULL, "%s", err);
    else if (out)
        reply_json(rq, status, out);
    else
        reply_raw(rq, 204, NULL, NULL, 0);
}

/* /api/v1/media/:id/url: media_rest (media.c) does the work; docs/media.md.
 * The upload itself (POST /api/v1/media) streams and never comes here
 * (conn.c hands its body to media_upload_sink); other methods on its path
 * get their 405 here. */
static void h_media(req *rq, const http_req *r, const uint8_t *body, size_t blen)
{
    int upload = !strcmp(r->path, MEDIA_REST_PATH);
    if (strcmp(r->method, upload ? "POST" : "GET")) {
        reply_error(rq, 405, GW_EBADFRAME, upload ? "Allow: POST\r\n" : "Allow: GET\r\n",
                    "method %.16s not allowed here", r->method);
        return;
    }
    uint64_t uid;
    if (authenticate(rq, r, &uid))
        return;
    json_t *out = NULL;
    char err[320];
    int code = 0, status = media_rest(rq->s, uid, r, body, blen, &out, &code, err,
                                      sizeof err);
    if (code || !out)
        reply_error(rq, status, code ? code : GW_EINTERNAL, NULL, "%s", code ? err : "out of memory");
    else
        reply_json(rq, status, out);
}

/* A CORS preflight (OPTIONS, any path under /api/): what a page of a listed
 * origin may send. conn.c adds Access-Control-Allow-Origin for a listed
 * Origin and nothing for any other, which the browser takes as a refusal. */
#define REST_PREFLIGHT                                                        \
    "Allow: GET, POST, DELETE, OPTIONS\r\n"                                    \
    "Access-Control-Allow-Methods: GET, POST, DELETE\r\n"                      \
    "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"           \
    "Access-Control-Max-Age: 600\r\n"

static void handle(req *rq, const http_req *r, const uint8_t *body, size_t blen)
{
    uint64_t conv_id = 0, uid = 0;
    rq->cors_origin = conn_cors_match(rq->s, r);
    if (!strcmp(r->method, "OPTIONS")) {
        reply_raw(rq, 204, rq->cors_origin ? REST_PREFLIGHT : "Allow: GET, POST, DELETE, OPTIONS\r\n",
                  NULL, 0);
        return;
    }
    if (!strcmp(r->path, PUSH_REST_PATH)) {
        h_push(rq, r, body, blen);
        return;
    }
    if (!strcmp(r->path, "/api/v1/cluster")) { /* operations, like /metrics */
        if (strcmp(r->method, "GET"))
            reply_error(rq, 405, GW_EBADFRAME, "Allow: GET\r\n", "method %.16s not allowed here",
                        r->method);
        else
            reply_json(rq, 200, cluster_status_json(rq->s));
        return;
    }
    if (!strncmp(r->path, MEDIA_REST_PATH, sizeof MEDIA_REST_PATH - 1) &&
        (!r->path[sizeof MEDIA_REST_PATH - 1] || r->path[sizeof MEDIA_REST_PATH - 1] == '/')) {
        h_media(rq, r, body, blen);
        return;
    }
    int rt = rest__route(r->path, &conv_id);
    if (rt < 0) {
        reply_error(rq, 404, GW_ENOTFOUND, NULL, "no such path");
        return;
    }
    int get = !strcmp(r->method, "GET"), post = !strcmp(r->method, "POST");
    const char *allow = rt == RT_CONVS || rt == RT_MESSAGES ? "Allow: GET, POST\r\n"
                        : rt == RT_CONV                      ? "Allow: GET\r\n"
                                                             : "Allow: POST\r\n";
    int ok = rt == RT_CONVS || rt == RT_MESSAGES ? get || post
             : rt == RT_CONV                      ? get
                                                  : post;
    if (!ok) {
        reply_error(rq, 405, GW_EBADFRAME, allow, "method %.16s not allowed here",
                    r->method);
        return;
    }
    if (authenticate(rq, r, &uid))
        return;
    if (get) {
        if (rt == RT_CONVS)
            h_list(rq, uid);
        else if (rt == RT_MESSAGES)
            h_history(rq, r, uid, conv_id);
        else {
            convo *cv = conv_access(rq, uid, conv_id);
            if (cv)
                reply_conv(rq, 200, cv, uid);
        }
        return;
    }
    json_t *j = parse_body(rq, r, body, blen);
    if (!j)
        return;
    switch (rt) {
    case RT_CONVS: h_create(rq, uid, j); break;
    case RT_MESSAGES: h_send(rq, uid, conv_id, j); break;
    case RT_READ: h_read(rq, uid, conv_id, j); break;
    case RT_MEMBERS: h_members(rq, uid, conv_id, j); break;
    }
    json_decref(j);
}

int rest_handle(conn *c, const http_req *r, const uint8_t *body, size_t blen)
{
    /* An earlier request of this connection is still waiting for the
     * engine: this one runs after it, as if the client had waited (a
     * pipelined GET sees the effect of the POST before it). */
    rconn *rc = map_get(&rconns, c->id);
    if (rc) {
        if (enqueue_req(rc, r, body, blen)) {
            srv_log(c->srv, LOG_INFO, "conn %llu: too many pipelined REST requests, closing",
                    (unsigned long long)c->id);
            conn_close(c, 0, NULL);
            return -1;
        }
        return 0;
    }
    req rq = {.s = c->srv, .conn_id = c->id, .keep_alive = r->keep_alive};
    handle(&rq, r, body, blen);
    return c->dead ? -1 : 0;
}
