/*
 * srv_harness.c — see srv_harness.h.
 */
#include "srv_harness.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "chat.pb-c.h"
#include "common.h"
#include "log.pb-c.h"
#include "media.h"
#include "metrics.h"
#include "push.h"
#include "state.h"

#define TOKEN_IAT 1700000000
#define TOKEN_EXP 4102444800LL
/* Longest the server may take to settle one arrival (a hang otherwise). */
#define SETTLE_LIMIT_MS 20000
/* More output than this for one input is a failure (nothing in an input of
 * libFuzzer's sizes asks for it). */
#define OUT_LIMIT (64u << 20)

static srv the_srv;
static int opened;
static unsigned long inputs;
static char tokens[4][1024];
static struct sockaddr_un addr;
static socklen_t addr_len;
static unsigned generation;

/* ---- pieces, buffers ---- */

size_t fsrv_split(const uint8_t *data, size_t size, fsrv_piece *out)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i + FSRV_SEP_LEN <= size && n < FSRV_MAX_PIECES - 1;) {
        if (!memcmp(data + i, FSRV_SEP, FSRV_SEP_LEN)) {
            out[n].p = data + start;
            out[n].n = i - start;
            n++;
            i += FSRV_SEP_LEN;
            start = i;
        } else {
            i++;
        }
    }
    out[n].p = data + start;
    out[n].n = size - start;
    return n + 1;
}

void fbuf_free(fbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static void fbuf_add(fbuf *b, const void *p, size_t n)
{
    FUZZ_CHECK(b->n + n <= OUT_LIMIT, "the server wrote more than %u bytes", OUT_LIMIT);
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 65536;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        FUZZ_CHECK(b->p != NULL, "oom");
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void quiet_rec(void *arg, int level, const char *msg)
{
    (void)arg;
    (void)level;
    (void)msg;
}

/* ---- set-up and tear-down ---- */

static void setup_done(srv *s, void *ctx, int status, const log_append_result *res)
{
    (void)s;
    (void)res;
    FUZZ_CHECK(status == 0, "set-up append failed: %d", status);
    (*(int *)ctx)++;
}

static void append_or_die(srv *s, int type, uint64_t conv_id, uint64_t sender,
                          const uint8_t *body, size_t blen, int *count)
{
    rec_view r = {.type = (uint8_t)type, .conv_id = conv_id, .sender_id = sender,
                  .body = body, .body_len = (uint32_t)blen};
    int rc = srv_append(s, &r, setup_done, count);
    FUZZ_CHECK(rc == 0, "set-up append: %s", cl_strerror(rc));
}

static void create_conv(srv *s, uint64_t conv_id, int kind, uint64_t creator,
                        uint64_t *members, size_t n, const char *title, int *count)
{
    Chatlog__Log__V1__ConvCreated cc = CHATLOG__LOG__V1__CONV_CREATED__INIT;
    cc.kind = kind == CONV_DIRECT ? CHATLOG__LOG__V1__CONV_CREATED__KIND__DIRECT
                                  : CHATLOG__LOG__V1__CONV_CREATED__KIND__GROUP;
    cc.members = members;
    cc.n_members = n;
    cc.title = (char *)title;
    uint8_t buf[256];
    size_t len = chatlog__log__v1__conv_created__pack(&cc, buf);
    append_or_die(s, REC_CONV_CREATED, conv_id, creator, buf, len, count);
}

/* Make conv_id's members exactly want[0..n) (an input may have changed
 * them), with one MembersChanged record. */
static void restore_members(srv *s, uint64_t conv_id, uint64_t by, const uint64_t *want,
                            size_t n, int *count)
{
    convo *cv = st_conv(s->st, conv_id);
    FUZZ_CHECK(cv && cv->committed, "baseline conversation %llu missing",
               (unsigned long long)conv_id);
    uint64_t add[8], rem[300];
    size_t na = 0, nr = 0;
    for (size_t i = 0; i < n; i++)
        if (!st_member(cv, want[i]))
            add[na++] = want[i];
    for (uint32_t i = 0; i < cv->nmembers && nr < 300; i++) {
        int keep = 0;
        for (size_t k = 0; k < n; k++)
            keep |= cv->members[i].user_id == want[k];
        if (!keep)
            rem[nr++] = cv->members[i].user_id;
    }
    if (!na && !nr)
        return;
    Chatlog__Log__V1__MembersChanged mc = CHATLOG__LOG__V1__MEMBERS_CHANGED__INIT;
    mc.add = add;
    mc.n_add = na;
    mc.remove = rem;
    mc.n_remove = nr;
    size_t len = chatlog__log__v1__members_changed__get_packed_size(&mc);
    uint8_t *buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf != NULL, "oom");
    chatlog__log__v1__members_changed__pack(&mc, buf);
    append_or_die(s, REC_MEMBERS_CHANGED, conv_id, by, buf, len, count);
    free(buf);
}

static void srv_open(void)
{
    srv *s = &the_srv;
    static met metrics;
    static int once;
    if (!once) {
        FUZZ_CHECK(evthread_use_pthreads() == 0, "libevent without pthreads");
        signal(SIGPIPE, SIG_IGN);
        once = 1;
    }
    memset(s, 0, sizeof *s);
    s->listen_fd = -1;
    s->spare_fd = -1;
    s->met = &metrics;
    config_defaults(&s->cfg);
    generation++;
    snprintf(s->cfg.data, sizeof s->cfg.data, "%s/srv-%ld-%u", fuzz_tmp_dir(),
             (long)getpid(), generation);
    fuzz_rm_rf(s->cfg.data);
    FUZZ_CHECK(mkdir(s->cfg.data, 0700) == 0, "mkdir %s", s->cfg.data);
    s->cfg.shards = 1;
    s->cfg.fsync_none = 1;
    s->cfg.log_level = 99; /* silent */
    /* Rates out of the way, so that an input's answers do not depend on
     * the wall clock or on the inputs before it. */
    s->cfg.conn_frames_per_sec = s->cfg.conn_frames_burst = 1000000;
    s->cfg.user_msgs_per_sec = s->cfg.user_msgs_burst = 1000000;
    s->cfg.typing_per_sec = 1000;
    s->secret_len = strlen(FSRV_SECRET);
    s->secret = malloc(s->secret_len);
    FUZZ_CHECK(s->secret != NULL, "oom");
    memcpy(s->secret, FSRV_SECRET, s->secret_len);
    pthread_mutex_init(&s->inbox_mu, NULL);
    s->base = event_base_new();
    s->st = st_new(s);
    /* As srv_run: engine completions (priority 0) before client sockets. */
    FUZZ_CHECK(s->base && s->st && event_base_priority_init(s->base, 2) == 0,
               "event base / state");
    log_options lo = {.shards = 1, .fsync = LOG_FSYNC_NONE, .io = fuzz_nosync_vfs(),
                      .log_fn = quiet_rec, .on_commit = srv_on_engine_commit, .commit_arg = s};
    int rc = log_open(s->cfg.data, &lo, &s->log);
    FUZZ_CHECK(rc == 0, "log_open %s: %s", s->cfg.data, cl_strerror(rc));
    FUZZ_CHECK(st_load(s->st, s->log) == 0, "st_load");
    FUZZ_CHECK(push_start(s) == 0, "push_start");

    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(s->listen_fd >= 0, "socket: %s", strerror(errno));
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    /* Abstract namespace: no file to clean up. */
    int len = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1,
                       "chatlog-fuzz-%ld-%u", (long)getpid(), generation);
    addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
    FUZZ_CHECK(bind(s->listen_fd, (struct sockaddr *)&addr, addr_len) == 0 &&
                   listen(s->listen_fd, 64) == 0,
               "bind/listen: %s", strerror(errno));
    s->wake_ev = event_new(s->base, -1, EV_PERSIST, srv_on_wake, s);
    FUZZ_CHECK(s->wake_ev && event_priority_set(s->wake_ev, 0) == 0 &&
                   event_add(s->wake_ev, NULL) == 0,
               "wake event");
    FUZZ_CHECK(conn_accept_setup(s) == 0, "conn_accept_setup");

    int count = 0;
    uint64_t g[3] = {1, 2, 3}, o[2] = {2, 3}, d[2] = {1, 2};
    create_conv(s, FSRV_GROUP, CONV_GROUP, 1, g, 3, "fuzz group", &count);
    create_conv(s, FSRV_OTHER, CONV_GROUP, 2, o, 2, "others", &count);
    create_conv(s, st_direct_id(1, 2), CONV_DIRECT, 1, d, 2, "", &count);
    fsrv_pump(s);
    FUZZ_CHECK(count == 3, "set-up: %d of 3 appends answered", count);
    opened = 1;
}

static void srv_close(void)
{
    srv *s = &the_srv;
    if (!opened)
        return;
    opened = 0;
    fsrv_pump(s);
    conn_free_all(s);
    s->stopping = 1;
    if (s->log) {
        int rc = log_close(s->log);
        FUZZ_CHECK(rc == 0, "log_close: %s", cl_strerror(rc));
        s->log = NULL;
    }
    inbox_item *it = s->inbox_head;
    while (it) {
        inbox_item *n = it->next;
        if (it->kind == IB_APPENDED)
            free(it->ctx);
        free(it);
        it = n;
    }
    s->inbox_head = s->inbox_tail = NULL;
    gw_tick(s, srv_now_ms()); /* frees the typing table when stopping */
    if (s->listen_ev)
        event_free(s->listen_ev);
    if (s->wake_ev)
        event_free(s->wake_ev);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    push_free(s);
    st_free(s->st);
    map_free(&s->conn_by_id);
    event_base_free(s->base);
    free(s->secret);
    pthread_mutex_destroy(&s->inbox_mu);
    media_forget_all();
    fuzz_rm_rf(s->cfg.data);
    memset(s, 0, sizeof *s);
}

static void at_exit(void) { srv_close(); }

const char *fsrv_token(int uid)
{
    FUZZ_CHECK(uid >= 1 && uid <= 3, "user %d", uid);
    if (!tokens[uid][0]) {
        const char *sec = FSRV_SECRET;
        char *t = auth_mint((const uint8_t *)sec, strlen(sec), (uint64_t)uid, TOKEN_IAT,
                            TOKEN_EXP - TOKEN_IAT);
        FUZZ_CHECK(t && strlen(t) < sizeof tokens[0], "auth_mint");
        snprintf(tokens[uid], sizeof tokens[uid], "%s", t);
        free(t);
    }
    return tokens[uid];
}

uint64_t fsrv_direct_id(void) { return st_direct_id(1, 2); }

srv *fsrv_begin(void)
{
    static int registered;
    if (opened && inputs % FSRV_RESET_EVERY == 0)
        srv_close();
    inputs++;
    if (!opened) {
        srv_open();
        if (!registered) {
            atexit(at_exit);
            registered = 1;
        }
    }
    srv *s = &the_srv;
    /* The baseline memberships, whatever the inputs before did. */
    int count = 0, want = 0;
    uint64_t g[3] = {1, 2, 3}, o[2] = {2, 3};
    uint64_t before = s->inflight;
    restore_members(s, FSRV_GROUP, 1, g, 3, &count);
    restore_members(s, FSRV_OTHER, 2, o, 2, &count);
    want = (int)(s->inflight - before);
    fsrv_pump(s);
    FUZZ_CHECK(count == want, "baseline: %d of %d appends answered", count, want);
    return s;
}

void fsrv_end(srv *s)
{
    fsrv_pump(s);
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next_all;
        conn_close(c, 0, NULL);
    }
    conn_flush_all(s);
    FUZZ_CHECK(s->nconns == 0 && s->conns == NULL && s->dead == NULL,
               "connections left: %u", s->nconns);
    FUZZ_CHECK(s->inflight == 0, "appends in flight: %llu",
               (unsigned long long)s->inflight);
}

/* ---- clients ---- */

void fsrv_pump(srv *s)
{
    int64_t t0 = srv_now_ms();
    for (;;) {
        pthread_mutex_lock(&s->inbox_mu);
        int empty = s->inbox_head == NULL;
        pthread_mutex_unlock(&s->inbox_mu);
        int active = event_base_get_num_events(s->base, EVENT_BASE_COUNT_ACTIVE) > 0;
        if (s->inflight == 0 && empty && !active)
            break;
        event_base_loop(s->base, active ? EVLOOP_ONCE | EVLOOP_NONBLOCK : EVLOOP_ONCE);
        FUZZ_CHECK(srv_now_ms() - t0 < SETTLE_LIMIT_MS,
                   "the engine did not answer %llu appends in %d ms",
                   (unsigned long long)s->inflight, SETTLE_LIMIT_MS);
    }
    conn_flush_all(s);
}

void fsrv_connect(srv *s, fsrv_client *cl)
{
    memset(cl, 0, sizeof *cl);
    cl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(cl->fd >= 0, "socket: %s", strerror(errno));
    FUZZ_CHECK(connect(cl->fd, (struct sockaddr *)&addr, addr_len) == 0, "connect: %s",
               strerror(errno));
    uint64_t before = s->next_conn_id;
    int64_t t0 = srv_now_ms();
    while (s->next_conn_id == before) {
        event_base_loop(s->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        FUZZ_CHECK(srv_now_ms() - t0 < SETTLE_LIMIT_MS, "accept did not happen");
    }
    FUZZ_CHECK(s->conns && s->conns->id == s->next_conn_id, "accepted conn not first");
    cl->conn_id = s->next_conn_id;
}

conn *fsrv_conn(srv *s, const fsrv_client *cl)
{
    conn *c = conn_find(s, cl->conn_id);
    return c && !c->dead ? c : NULL;
}

static void drain_client(fsrv_client *cl)
{
    uint8_t buf[65536];
    for (;;) {
        ssize_t r = read(cl->fd, buf, sizeof buf);
        if (r > 0) {
            fbuf_add(&cl->out, buf, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        break;
    }
}

void fsrv_settle(srv *s, fsrv_client *cl)
{
    int64_t t0 = srv_now_ms();
    /* At least one round, so that an EOF or a pending write is seen. */
    event_base_loop(s->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    for (;;) {
        drain_client(cl);
        conn *c = fsrv_conn(s, cl);
        int unread = 0;
        if (c && ioctl(c->fd, FIONREAD, &unread) != 0)
            unread = 0;
        pthread_mutex_lock(&s->inbox_mu);
        int empty = s->inbox_head == NULL;
        pthread_mutex_unlock(&s->inbox_mu);
        int busy = s->inflight > 0 || !empty;
        /* An event made active by a callback (conn_http_resume) still has
         * to run. */
        int active = event_base_get_num_events(s->base, EVENT_BASE_COUNT_ACTIVE) > 0;
        if (!busy && !active && unread == 0 && (!c || !c->out_head)) {
            drain_client(cl);
            /* Nothing can wake a connection paused with no answer owed. */
            FUZZ_CHECK(!c || !c->paused, "connection paused for good (%u bytes kept)",
                       c ? c->inlen : 0);
            break;
        }
        /* Block only when nothing but the engine can make progress. */
        int flags = busy && !active && unread == 0 && (!c || !c->out_head)
                        ? EVLOOP_ONCE
                        : EVLOOP_ONCE | EVLOOP_NONBLOCK;
        event_base_loop(s->base, flags);
        FUZZ_CHECK(srv_now_ms() - t0 < SETTLE_LIMIT_MS,
                   "the server did not settle in %d ms (unread %d, in flight %llu)",
                   SETTLE_LIMIT_MS, unread, (unsigned long long)s->inflight);
    }
}

void fsrv_write(srv *s, fsrv_client *cl, const void *p, size_t n)
{
    const uint8_t *b = p;
    size_t done = 0;
    while (done < n) {
        ssize_t w = send(cl->fd, b + done, n - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            /* The socket buffer is full: let the server read. */
            if (!fsrv_conn(s, cl))
                return;
            event_base_loop(s->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
            drain_client(cl);
            continue;
        }
        return; /* the server closed: the rest is never read */
    }
    fsrv_settle(s, cl);
}

size_t fsrv_ws_frame(uint8_t *out, int opcode, const void *payload, size_t n)
{
    size_t h = 2;
    out[0] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        out[1] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        out[1] = 0x80 | 126;
        out[2] = (uint8_t)(n >> 8);
        out[3] = (uint8_t)n;
        h = 4;
    } else {
        out[1] = 0x80 | 127;
        for (int k = 0; k < 8; k++)
            out[2 + k] = (uint8_t)((uint64_t)n >> (56 - 8 * k));
        h = 10;
    }
    memset(out + h, 0, 4);
    memcpy(out + h + 4, payload, n);
    return h + 4 + n;
}

static void expect_welcome(void *arg, const void *frame)
{
    const Chat__V1__ServerFrame *f = frame;
    int *n = arg;
    if ((*n)++ == 0)
        FUZZ_CHECK(f->kind_case == CHAT__V1__SERVER_FRAME__KIND_WELCOME,
                   "first frame of a session is kind %d", (int)f->kind_case);
}

void fsrv_ws_session(srv *s, fsrv_client *cl, int uid)
{
    static const char up[] = "GET /ws HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Protocol: chat.v1\r\n\r\n";
    fsrv_connect(s, cl);
    Chat__V1__Hello h = CHAT__V1__HELLO__INIT;
    h.token = (char *)fsrv_token(uid);
    h.device_id = "fuzz";
    Chat__V1__ClientFrame f = CHAT__V1__CLIENT_FRAME__INIT;
    f.kind_case = CHAT__V1__CLIENT_FRAME__KIND_HELLO;
    f.hello = &h;
    uint8_t pb[2048], fr[2048 + 14];
    size_t n = chat__v1__client_frame__pack(&f, pb);
    size_t m = fsrv_ws_frame(fr, WS_OP_BINARY, pb, n);
    fsrv_write(s, cl, up, sizeof up - 1);
    fsrv_write(s, cl, fr, m);
    fsrv_resp r;
    size_t used = fsrv_parse_response(cl->out.p, cl->out.n, 0, &r);
    FUZZ_CHECK(r.status == 101, "upgrade answered %d", r.status);
    int nframes = 0;
    fsrv_check_ws_stream(cl->out.p + used, cl->out.n - used, expect_welcome, &nframes);
    FUZZ_CHECK(nframes >= 1, "no Welcome");
    conn *c = fsrv_conn(s, cl);
    FUZZ_CHECK(c && c->state == CS_READY, "session not ready");
    cl->out.n = 0;
}

void fsrv_hangup(fsrv_client *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    cl->fd = -1;
}

/* ---- HTTP responses ---- */

static int tchar(int ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

size_t fsrv_parse_response(const uint8_t *p, size_t n, int head, fsrv_resp *r)
{
    memset(r, 0, sizeof *r);
    if (n == 0)
        return 0;
    FUZZ_CHECK(n >= 13 && !memcmp(p, "HTTP/1.1 ", 9), "response does not start with \"HTTP/1.1 \": %.20s",
               (const char *)p);
    for (int i = 9; i < 12; i++)
        FUZZ_CHECK(p[i] >= '0' && p[i] <= '9', "status is not 3 digits");
    r->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    FUZZ_CHECK(r->status >= 100 && r->status <= 599 && p[12] == ' ', "status %d", r->status);
    size_t i = 13;
    /* reason phrase */
    while (i < n && p[i] != '\r') {
        FUZZ_CHECK(p[i] == '\t' || (p[i] >= 0x20 && p[i] < 0x7f), "control byte in reason");
        i++;
    }
    FUZZ_CHECK(i + 1 < n && p[i + 1] == '\n', "status line not ended by CRLF");
    i += 2;
    long long clen = -1;
    for (;;) {
        FUZZ_CHECK(i + 1 < n, "response head cut short");
        if (p[i] == '\r') {
            FUZZ_CHECK(p[i + 1] == '\n', "bare CR ends the head");
            i += 2;
            break;
        }
        size_t name = i;
        while (i < n && tchar(p[i]))
            i++;
        FUZZ_CHECK(i > name && i + 1 < n && p[i] == ':' && p[i + 1] == ' ',
                   "bad header line at %zu", name);
        size_t nlen = i - name;
        i += 2;
        size_t val = i;
        while (i < n && p[i] != '\r') {
            FUZZ_CHECK(p[i] == '\t' || (p[i] >= 0x20 && p[i] < 0x7f), "control byte in a header value");
            i++;
        }
        FUZZ_CHECK(i + 1 < n && p[i + 1] == '\n', "header line not ended by CRLF");
        size_t vlen = i - val;
        i += 2;
        if (nlen == 14 && !strncasecmp((const char *)p + name, "Content-Length", 14)) {
            FUZZ_CHECK(clen < 0, "two Content-Length headers");
            FUZZ_CHECK(vlen > 0 && vlen < 12, "Content-Length value");
            clen = 0;
            for (size_t k = 0; k < vlen; k++) {
                FUZZ_CHECK(p[val + k] >= '0' && p[val + k] <= '9', "Content-Length not decimal");
                clen = clen * 10 + (p[val + k] - '0');
            }
        } else if (nlen == 12 && !strncasecmp((const char *)p + name, "Content-Type", 12)) {
            snprintf(r->ctype, sizeof r->ctype, "%.*s", (int)vlen, (const char *)p + val);
        } else if (nlen == 10 && !strncasecmp((const char *)p + name, "Connection", 10)) {
            r->close = vlen == 5 && !strncasecmp((const char *)p + val, "close", 5);
        }
    }
    r->has_clen = clen >= 0;
    if (r->status == 101 || r->status == 204 || r->status == 304) {
        FUZZ_CHECK(clen <= 0, "%d with a body", r->status);
        clen = 0;
    }
    FUZZ_CHECK(clen >= 0, "%d response without Content-Length", r->status);
    if (head)
        clen = 0;
    FUZZ_CHECK((size_t)clen <= n - i, "body cut short: Content-Length %lld, %zu bytes left",
               clen, n - i);
    r->body = p + i;
    r->blen = (size_t)clen;
    return i + (size_t)clen;
}

void fsrv_check_api_response(const fsrv_resp *r, int rest)
{
    if (r->status == 204) {
        FUZZ_CHECK(r->blen == 0, "204 with a body");
        return;
    }
    FUZZ_CHECK(!strncmp(r->ctype, "application/json", 16), "API answer of type \"%s\"", r->ctype);
    json_error_t e;
    json_t *j = json_loadb((const char *)r->body, r->blen, JSON_REJECT_DUPLICATES, &e);
    FUZZ_CHECK(j != NULL, "API answer is not JSON (%s): %.*s", e.text, (int)r->blen,
               (const char *)r->body);
    FUZZ_CHECK(json_is_object(j), "API answer is not an object");
    if (r->status >= 400) {
        json_t *err = json_object_get(j, "error");
        FUZZ_CHECK(json_object_size(j) == 1 && json_is_object(err), "error shape: %.*s",
                   (int)r->blen, (const char *)r->body);
        json_t *code = json_object_get(err, "code"), *name = json_object_get(err, "name"),
               *msg = json_object_get(err, "message");
        FUZZ_CHECK(json_object_size(err) == 3 && json_is_integer(code) && json_is_string(name) &&
                       json_is_string(msg),
                   "error fields: %.*s", (int)r->blen, (const char *)r->body);
        json_int_t c = json_integer_value(code);
        /* conn.c answers plain HTTP errors with code 0, name "http". */
        if (c == 0 && !rest)
            FUZZ_CHECK(!strcmp(json_string_value(name), "http"), "code 0 named %s",
                       json_string_value(name));
        else
            FUZZ_CHECK(c >= GW_EBADFRAME && c <= GW_ECONFLICT &&
                           !strcmp(json_string_value(name), gw_error_name((int)c)),
                       "error code %lld named %s", (long long)c, json_string_value(name));
    } else {
        FUZZ_CHECK(r->status >= 200 && r->status < 300, "API status %d", r->status);
        FUZZ_CHECK(!json_object_get(j, "error"), "a success with an error field");
    }
    json_decref(j);
}

/* ---- WebSocket frames from the server ---- */

typedef struct ws_seen {
    int n, opcode, close_code;
    uint8_t *data;
    size_t len;
} ws_seen;

static int seen_cb(void *arg, int opcode, const uint8_t *data, size_t len, int close_code)
{
    ws_seen *w = arg;
    w->n++;
    w->opcode = opcode;
    w->close_code = close_code;
    w->data = malloc(len ? len : 1);
    FUZZ_CHECK(w->data != NULL, "oom");
    memcpy(w->data, data, len);
    w->len = len;
    return 0;
}

size_t fsrv_check_ws_stream(const uint8_t *p, size_t n,
                            void (*cb)(void *arg, const void *server_frame), void *arg)
{
    size_t i = 0, nbin = 0;
    int closed = 0;
    while (i < n) {
        FUZZ_CHECK(!closed, "%zu bytes after the close frame", n - i);
        FUZZ_CHECK(n - i >= 2, "frame header cut short");
        uint8_t b0 = p[i], b1 = p[i + 1];
        int fin = b0 >> 7, rsv = (b0 >> 4) & 7, op = b0 & 15, masked = b1 >> 7;
        FUZZ_CHECK(fin && !rsv && !masked, "frame flags %02x %02x", b0, b1);
        FUZZ_CHECK(op == WS_OP_BINARY || op == WS_OP_CLOSE || op == WS_OP_PING ||
                       op == WS_OP_PONG,
                   "server frame opcode %d", op);
        uint64_t len = b1 & 127;
        size_t h = 2;
        if (len == 126) {
            FUZZ_CHECK(n - i >= 4, "frame header cut short");
            len = ((uint64_t)p[i + 2] << 8) | p[i + 3];
            FUZZ_CHECK(len >= 126, "non-minimal length");
            h = 4;
        } else if (len == 127) {
            FUZZ_CHECK(n - i >= 10, "frame header cut short");
            len = 0;
            for (int k = 0; k < 8; k++)
                len = (len << 8) | p[i + 2 + k];
            FUZZ_CHECK(len >= 65536 && len < (1ull << 63), "non-minimal or huge length");
            h = 10;
        }
        FUZZ_CHECK(len <= n - i - h, "frame payload cut short");
        if (op >= 8)
            FUZZ_CHECK(len <= WS_MAX_CONTROL_PAYLOAD, "control payload %llu",
                       (unsigned long long)len);
        const uint8_t *pl = p + i + h;

        /* Our own decoder must take the frame as a client would send it. */
        size_t mlen = h + 4 + (size_t)len;
        uint8_t *m = malloc(mlen);
        FUZZ_CHECK(m != NULL, "oom");
        memcpy(m, p + i, h);
        m[1] |= 0x80;
        memset(m + h, 0, 4);
        memcpy(m + h + 4, pl, (size_t)len);
        ws_parser wp;
        ws_parser_init(&wp, 64u << 20);
        ws_seen seen = {0};
        ssize_t used = ws_parse(&wp, m, mlen, seen_cb, &seen);
        FUZZ_CHECK(used == (ssize_t)mlen && seen.n == 1 && seen.opcode == op,
                   "ws_parse of a server frame (op %d, %llu bytes): %zd, %d messages", op,
                   (unsigned long long)len, used, seen.n);
        if (op == WS_OP_CLOSE) {
            int code = len >= 2 ? (pl[0] << 8 | pl[1]) : WS_CLOSE_NO_STATUS;
            FUZZ_CHECK(seen.close_code == code && seen.len == (len >= 2 ? len - 2 : 0),
                       "close frame decoded as %d", seen.close_code);
        } else {
            FUZZ_CHECK(seen.len == len && !memcmp(seen.data, pl, (size_t)len),
                       "payload differs after ws_parse");
        }
        free(seen.data);
        ws_parser_free(&wp);
        free(m);

        if (op == WS_OP_CLOSE) {
            closed = 1;
        } else if (op == WS_OP_BINARY) {
            nbin++;
            Chat__V1__ServerFrame *f = chat__v1__server_frame__unpack(NULL, (size_t)len, pl);
            FUZZ_CHECK(f != NULL, "a binary message that is not a ServerFrame");
            FUZZ_CHECK(f->kind_case >= CHAT__V1__SERVER_FRAME__KIND_WELCOME &&
                           f->kind_case <= CHAT__V1__SERVER_FRAME__KIND_PONG,
                       "ServerFrame kind %d", (int)f->kind_case);
            /* Exactly one field on the wire: a re-encoding has the same
             * size as what was sent. */
            FUZZ_CHECK(chat__v1__server_frame__get_packed_size(f) == len,
                       "ServerFrame re-encodes to another size");
            if (f->kind_case == CHAT__V1__SERVER_FRAME__KIND_ERROR)
                FUZZ_CHECK(f->error->code >= GW_EBADFRAME && f->error->code <= GW_ECONFLICT,
                           "Error frame with unknown code %u", f->error->code);
            if (cb)
                cb(arg, f);
            chat__v1__server_frame__free_unpacked(f, NULL);
        }
        i += h + (size_t)len;
    }
    return nbin;
}
