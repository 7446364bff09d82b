/*
 * srv.c — the server core: start-up (log, state, socket, TLS), the event
 * loop, the inbox that brings engine results back to the loop thread, and a
 * clean shutdown.
 *
 * Threads: the event loop runs on the main thread and owns all chat state.
 * The engine's completion thread calls on_commit and the append callbacks; those
 * copy what they need into inbox items, link them under inbox_mu and wake the
 * loop (event_active on wake_ev, made thread-safe by evthread_use_pthreads).
 * Items keep their order, so a record's commit is always handled before its
 * append's completion.
 *
 * Shutdown (SIGINT/SIGTERM): stop accepting; keep running until every
 * in-flight append has been answered (so whatever was acked is durable and
 * its ack was sent), then close every connection (1001 Going Away), close
 * the log (which drains the engine) and return.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <netdb.h>
#include <openssl/err.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "chatd.h"
#include "cluster.h"
#include "metrics.h"
#include "push.h"
#include "state.h"

int64_t srv_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void srv_log(srv *s, int level, const char *fmt, ...)
{
    if (level < s->cfg.log_level)
        return;
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s %s ", ts, names[level & 3]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void engine_log(void *arg, int level, const char *msg)
{
    srv_log(arg, level, "engine: %s", msg);
}

/* ---- inbox ---- */

static void post(srv *s, inbox_item *it)
{
    it->next = NULL;
    pthread_mutex_lock(&s->inbox_mu);
    int was_empty = s->inbox_head == NULL;
    if (s->inbox_tail)
        s->inbox_tail->next = it;
    else
        s->inbox_head = it;
    s->inbox_tail = it;
    pthread_mutex_unlock(&s->inbox_mu);
    /* One wake-up per batch: the loop drains the whole inbox each time. */
    if (was_empty)
        event_active(s->wake_ev, EV_READ, 0);
}

/* Engine completion thread: copy each committed record for the loop. */
void srv_on_engine_commit(void *arg, uint32_t shard, const log_entry *e, size_t n)
{
    srv *s = arg;
    (void)shard;
    met_observe_group(s->met, n);
    for (size_t i = 0; i < n; i++) {
        size_t extra = (size_t)e[i].rec.key_len + e[i].rec.body_len;
        inbox_item *it = malloc(sizeof *it + extra);
        if (!it)
            abort(); /* the state would drift from the log; restart rebuilds it */
        memset(it, 0, sizeof *it);
        it->kind = IB_COMMIT;
        it->e = e[i];
        memcpy(it->data, e[i].rec.key, e[i].rec.key_len);
        memcpy(it->data + e[i].rec.key_len, e[i].rec.body, e[i].rec.body_len);
        it->e.rec.key = it->data;
        it->e.rec.body = it->data + e[i].rec.key_len;
        post(s, it);
    }
}

typedef struct append_ctx {
    srv *s;
    void (*done)(srv *, void *, int, const log_append_result *);
    void *ctx;
} append_ctx;

/* Engine completion thread: hand the result to the loop. */
static void on_appended(void *arg, int status, const log_append_result *res)
{
    append_ctx *a = arg;
    inbox_item *it = calloc(1, sizeof *it);
    if (!it)
        abort(); /* cannot tell a waiting client; better to restart */
    it->kind = IB_APPENDED;
    it->status = status;
    if (res)
        it->res = *res;
    it->done = a->done;
    it->ctx = a->ctx;
    srv *s = a->s;
    free(a);
    post(s, it);
}

void srv_post_result(srv *s, void (*done)(srv *, void *, int, const log_append_result *),
                     void *ctx, int status, const log_append_result *res)
{
    inbox_item *it = calloc(1, sizeof *it);
    if (!it)
        abort(); /* a lost completion would leave Raft or a client waiting */
    it->kind = IB_CALL;
    it->status = status;
    if (res)
        it->res = *res;
    it->done = done;
    it->ctx = ctx;
    post(s, it);
}

void srv_post_call(srv *s, void (*done)(srv *, void *, int, const log_append_result *),
                   void *ctx, int status)
{
    srv_post_result(s, done, ctx, status, NULL);
}

int srv_append(srv *s, const rec_view *rec,
               void (*done)(srv *, void *, int, const log_append_result *),
               void *ctx)
{
    if (s->cluster)
        return cluster_append(s, rec, done, ctx);
    append_ctx *a = malloc(sizeof *a);
    if (!a)
        return CL_ENOMEM;
    a->s = s;
    a->done = done;
    a->ctx = ctx;
    int rc = log_append(s->log, rec, on_appended, a);
    if (rc)
        free(a);
    else
        s->inflight++;
    return rc;
}

/* Shutdown, once every in-flight append is answered: say goodbye to every
 * connection, then leave the loop when they are gone or after a grace
 * period. */
static void maybe_finish(srv *s)
{
    if (!s->stopping || s->inflight > 0)
        return;
    int64_t now = srv_now_ms();
    if (!s->goodbye_deadline_ms) {
        s->goodbye_deadline_ms = now + 2000;
        conn_goodbye_all(s);
    }
    if (s->nconns == 0 || now >= s->goodbye_deadline_ms)
        event_base_loopexit(s->base, NULL);
}

void srv_on_wake(evutil_socket_t fd, short what, void *arg)
{
    srv *s = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&s->inbox_mu);
    inbox_item *it = s->inbox_head;
    s->inbox_head = s->inbox_tail = NULL;
    pthread_mutex_unlock(&s->inbox_mu);
    while (it) {
        inbox_item *next = it->next;
        if (it->kind == IB_COMMIT) {
            st_apply(s->st, &it->e);
            gw_on_commit(s, &it->e);
        } else if (it->kind == IB_CALL) {
            it->done(s, it->ctx, it->status, &it->res);
        } else {
            s->inflight--;
            it->done(s, it->ctx, it->status, it->status ? NULL : &it->res);
        }
        free(it);
        it = next;
    }
    if (s->cluster)
        cluster_round(s);
    conn_flush_all(s);
    maybe_finish(s);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    srv *s = arg;
    (void)fd;
    (void)what;
    int64_t now = srv_now_ms();
    gw_tick(s, now);
    conn_tick(s, now);
    maybe_finish(s);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    srv *s = arg;
    (void)what;
    if (s->stopping)
        return;
    srv_log(s, LOG_INFO, "signal %d: stopping (finishing %llu in-flight appends)",
            (int)sig, (unsigned long long)s->inflight);
    s->stopping = 1;
    if (s->listen_ev)
        event_del(s->listen_ev);
    maybe_finish(s);
}

/* ---- start-up ---- */

static int listen_on(srv *s)
{
    char host[256];
    snprintf(host, sizeof host, "%s", s->cfg.listen);
    char *colon = strrchr(host, ':');
    if (!colon)
        return -1;
    *colon = 0;
    const char *port = colon + 1;
    char *h = host;
    if (h[0] == '[') { /* [::1]:8080 */
        h++;
        size_t n = strlen(h);
        if (n && h[n - 1] == ']')
            h[n - 1] = 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    int rc = getaddrinfo(*h ? h : NULL, port, &hints, &ai);
    if (rc) {
        srv_log(s, LOG_ERROR, "listen: %s: %s", s->cfg.listen, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *p = ai; p && fd < 0; p = p->ai_next) {
        fd = socket(p->ai_family, p->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, p->ai_addr, p->ai_addrlen) || listen(fd, 4096)) {
            srv_log(s, LOG_ERROR, "listen: %s: %s", s->cfg.listen, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    s->listen_fd = fd;
    return fd < 0 ? -1 : 0;
}

static int tls_setup(srv *s)
{
    if (!s->cfg.tls_cert[0])
        return 0;
    s->ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!s->ssl_ctx)
        return -1;
    SSL_CTX_set_min_proto_version(s->ssl_ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(s->ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                     SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(s->ssl_ctx, s->cfg.tls_cert) != 1) {
        srv_log(s, LOG_ERROR, "tls_cert: cannot load %s", s->cfg.tls_cert);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(s->ssl_ctx, s->cfg.tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(s->ssl_ctx) != 1) {
        srv_log(s, LOG_ERROR, "tls_key: cannot load %s or it does not match the certificate",
                s->cfg.tls_key);
        return -1;
    }
    return 0;
}

int srv_run(srv *s)
{
    int rc = 1;
    static met metrics;
    s->met = &metrics;
    pthread_mutex_init(&s->inbox_mu, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads()) {
        srv_log(s, LOG_ERROR, "libevent: no pthreads support");
        return 1;
    }
    int arc = auth_load_secret(s->cfg.secret_file, &s->secret, &s->secret_len);
    if (arc) {
        srv_log(s, LOG_ERROR, "secret_file: %s: %s", s->cfg.secret_file,
                arc == -EINVAL ? "shorter than 16 bytes" : strerror(-arc));
        return 1;
    }
    if (tls_setup(s))
        goto out;
    s->base = event_base_new();
    /* Two priorities: engine completions, node links and Raft's clock
     * (cnet.c, cluster.c) at 0, before client sockets and timers at the
     * default 1: a node busy with clients still answers its peers in time
     * (no needless elections) and takes new work only as it finishes old. */
    if (s->base && event_base_priority_init(s->base, 2))
        goto out;
    s->st = st_new(s);
    if (!s->base || !s->st)
        goto out;
    /* In a cluster the Raft commit offset, not local durability, drives
     * delivery (cluster.c). */
    int clustered = cluster_enabled(&s->cfg);
    log_options lo = {.shards = s->cfg.shards, .segment_bytes = s->cfg.segment_bytes,
                      .fsync = s->cfg.fsync_none ? LOG_FSYNC_NONE : LOG_FSYNC_ALWAYS,
                      .log_fn = engine_log, .log_arg = s,
                      .on_commit = clustered ? NULL : srv_on_engine_commit, .commit_arg = s};
    /* `shards` only shapes a new directory; an existing one keeps its own. */
    char manifest[CFG_PATH + 16];
    snprintf(manifest, sizeof manifest, "%s/MANIFEST", s->cfg.data);
    if (access(manifest, F_OK) == 0)
        lo.shards = 0;
    int lrc = log_open(s->cfg.data, &lo, &s->log);
    if (lrc) {
        srv_log(s, LOG_ERROR, "data: cannot open %s: %s", s->cfg.data, cl_strerror(lrc));
        goto out;
    }
    if (s->cfg.fsync_none)
        srv_log(s, LOG_WARN, "fsync_none is set: acks are NOT durable (tests only)");
    int64_t t0 = srv_now_ms();
    if (clustered) {
        if (cluster_start(s))
            goto out;
    } else {
        lrc = st_load(s->st, s->log);
        if (lrc)
            srv_log(s, LOG_ERROR, "state loaded around damaged data (%s): see above",
                    cl_strerror(lrc));
    }
    srv_log(s, LOG_INFO, "state: %llu conversations, %llu users loaded in %lld ms",
            (unsigned long long)st_nconvs(s->st), (unsigned long long)st_nusers(s->st),
            (long long)(srv_now_ms() - t0));
    if (push_start(s))
        goto out;
    if (listen_on(s))
        goto out;
    s->wake_ev = event_new(s->base, -1, EV_PERSIST, srv_on_wake, s);
    if (s->wake_ev) /* engine completions: Raft's progress and the acks */
        event_priority_set(s->wake_ev, 0);
    s->tick_ev = event_new(s->base, -1, EV_PERSIST, on_tick, s);
    s->sig_int = evsignal_new(s->base, SIGINT, on_signal, s);
    s->sig_term = evsignal_new(s->base, SIGTERM, on_signal, s);
    struct timeval one = {1, 0};
    if (!s->wake_ev || !s->tick_ev || !s->sig_int || !s->sig_term ||
        event_add(s->wake_ev, NULL) || event_add(s->tick_ev, &one) ||
        event_add(s->sig_int, NULL) || event_add(s->sig_term, NULL) ||
        conn_accept_setup(s))
        goto out;
    printf("chatd listening on %s://%s (data %s, %u shards)\n",
           s->ssl_ctx ? "https" : "http", s->cfg.listen, s->cfg.data,
           log_shard_count(s->log));
    fflush(stdout);
    event_base_dispatch(s->base);

    /* Connections still open after the goodbye grace period go now. */
    conn_free_all(s);
    rc = 0;
out:
    cluster_stop(s);
    if (s->log) {
        int crc = log_close(s->log);
        if (crc) {
            srv_log(s, LOG_ERROR, "log closed with error: %s", cl_strerror(crc));
            rc = 1;
        }
        s->log = NULL;
    }
    /* Engine callbacks that ran during log_close are only freed here. */
    inbox_item *it = s->inbox_head;
    while (it) {
        inbox_item *n = it->next;
        if (it->kind == IB_APPENDED)
            free(it->ctx);
        else if (it->kind == IB_CALL) /* cluster.c: answers with CL_ECLOSED */
            it->done(s, it->ctx, it->status, &it->res);
        free(it);
        it = n;
    }
    gw_tick(s, srv_now_ms());
    if (s->listen_ev)
        event_free(s->listen_ev);
    if (s->wake_ev)
        event_free(s->wake_ev);
    if (s->tick_ev)
        event_free(s->tick_ev);
    if (s->sig_int)
        event_free(s->sig_int);
    if (s->sig_term)
        event_free(s->sig_term);
    if (s->listen_fd > 0)
        close(s->listen_fd);
    cluster_free(s);
    push_free(s); /* queued notifications are dropped: best-effort */
    st_free(s->st);
    map_free(&s->conn_by_id);
    if (s->base)
        event_base_free(s->base);
    if (s->ssl_ctx)
        SSL_CTX_free(s->ssl_ctx);
    free(s->secret);
    srv_log(s, LOG_INFO, "stopped");
    return rc;
}
