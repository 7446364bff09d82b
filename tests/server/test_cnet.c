/* Tests of server/cnet.c, the cluster transport: real sockets on 127.0.0.1
 * with ephemeral ports, several cnet instances on one event_base, and raw
 * sockets that speak the wire format of docs/cluster.md ("Transport") by
 * hand (an independent implementation of the handshake, so the spec is
 * tested too). Every wait runs the loop with a deadline. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cnet.h"
#include "test.h"

#define MAXN 10 /* node ids used in these tests: 1..9 */
#define SECRET "0123456789abcdef-cluster-secret"

/* ---- a node under test and what it received ---- */

typedef struct tnode {
    cnet *n;
    uint32_t id;
    int up[MAXN];   /* current state from on_peer */
    int ups[MAXN];  /* on_peer(up) calls */
    int downs[MAXN];
    uint64_t got[MAXN]; /* frames received per sender */
    uint64_t got_bytes[MAXN];
    const size_t *script; /* expected sizes, in order, per sender */
    size_t script_len;
    int bad; /* a frame arrived that did not match the script */
    char why[200];
    int warns;
    char last_warn[512];
} tnode;

static uint8_t pattern(uint32_t from, uint32_t to, uint64_t k, size_t i)
{
    return (uint8_t)(from * 31 + to * 17 + k * 7 + i * 13 + (i >> 8));
}

static void on_frame(void *arg, uint32_t peer, const uint8_t *data, size_t len)
{
    tnode *t = arg;
    if (peer >= MAXN) {
        t->bad = 1;
        return;
    }
    uint64_t k = t->got[peer]++;
    t->got_bytes[peer] += len;
    if (!t->script || t->bad)
        return;
    size_t want = t->script[k % t->script_len];
    if (len != want) {
        t->bad = 1;
        snprintf(t->why, sizeof t->why, "frame %llu from %u: %zu bytes, want %zu",
                 (unsigned long long)k, peer, len, want);
        return;
    }
    for (size_t i = 0; i < len; i++)
        if (data[i] != pattern(peer, t->id, k, i)) {
            t->bad = 1;
            snprintf(t->why, sizeof t->why, "frame %llu from %u: byte %zu differs",
                     (unsigned long long)k, peer, i);
            return;
        }
}

static void on_peer(void *arg, uint32_t peer, int up)
{
    tnode *t = arg;
    if (peer >= MAXN)
        return;
    if (up) {
        if (t->up[peer])
            t->bad = 1; /* up twice without a down */
        t->ups[peer]++;
    } else {
        if (!t->up[peer])
            t->bad = 1;
        t->downs[peer]++;
    }
    t->up[peer] = up;
}

static void on_log(void *arg, int level, const char *msg)
{
    tnode *t = arg;
    if (level >= 2) {
        t->warns++;
        snprintf(t->last_warn, sizeof t->last_warn, "%s", msg);
    }
    if (getenv("CNET_TEST_LOG"))
        fprintf(stderr, "    [node %u] %s\n", t->id, msg);
}

static cnet_config base_config(tnode *t, uint32_t self, const char *listen)
{
    cnet_config c;
    memset(&c, 0, sizeof c);
    c.self = self;
    c.listen = listen;
    c.secret = (const uint8_t *)SECRET;
    c.secret_len = strlen(SECRET);
    c.on_frame = on_frame;
    c.on_peer = on_peer;
    c.log = on_log;
    c.arg = t;
    t->id = self;
    return c;
}

static void add_peer(cnet_config *c, uint32_t id, int port)
{
    c->peers[c->n_peers].id = id;
    if (port > 0)
        snprintf(c->peers[c->n_peers].addr, sizeof c->peers[0].addr, "127.0.0.1:%d", port);
    c->n_peers++;
}

/* ---- running the loop with a deadline ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void tick(evutil_socket_t fd, short what, void *arg) {}

/* Run the loop until done(arg) or timeout_ms; returns done's last value. */
static int run_until(struct event_base *b, int (*done)(void *), void *arg, int timeout_ms)
{
    struct event *t = event_new(b, -1, EV_PERSIST, tick, NULL);
    struct timeval tv = {0, 2000};
    event_add(t, &tv);
    int64_t end = mono_ms() + timeout_ms;
    int ok = done(arg);
    while (!ok && mono_ms() < end) {
        event_base_loop(b, EVLOOP_ONCE);
        ok = done(arg);
    }
    event_free(t);
    return ok;
}

static int never(void *arg) { return 0; }
static void run_for(struct event_base *b, int ms) { run_until(b, never, NULL, ms); }

typedef struct cluster {
    tnode *t[MAXN];
    uint32_t ids[MAXN];
    int n;
} cluster;

/* Every pair of the cluster is up, as seen by both cnet and on_peer. */
static int all_up(void *arg)
{
    cluster *c = arg;
    for (int i = 0; i < c->n; i++)
        for (int j = 0; j < c->n; j++)
            if (i != j && (!cnet_peer_is_up(c->t[i]->n, c->ids[j]) ||
                           !c->t[i]->up[c->ids[j]]))
                return 0;
    return 1;
}

/* ---- raw sockets speaking the documented wire format ---- */

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a))
        FAIL("connect to %d: %s", port, strerror(errno));
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static int raw_listen(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    socklen_t sl = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 8) ||
        getsockname(fd, (struct sockaddr *)&a, &sl))
        FAIL("raw listen: %s", strerror(errno));
    fcntl(fd, F_SETFL, O_NONBLOCK);
    *port = ntohs(a.sin_port);
    return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    int64_t end = mono_ms() + 5000;
    while (n > 0 && mono_ms() < end) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w > 0) {
            b += w;
            n -= (size_t)w;
        } else if (w < 0 && errno != EAGAIN) {
            return; /* the node may close on us: that is what some tests want */
        }
    }
}

typedef struct raw_rx {
    int fd;
    uint8_t *buf;
    size_t want, have;
    int eof;
} raw_rx;

static int raw_rx_step(void *arg)
{
    raw_rx *r = arg;
    while (!r->eof && r->have < r->want) {
        ssize_t k = recv(r->fd, r->buf + r->have, r->want - r->have, 0);
        if (k > 0)
            r->have += (size_t)k;
        else if (k == 0 || errno != EAGAIN)
            r->eof = 1;
        else
            break;
    }
    return r->eof || r->have == r->want;
}

/* Read exactly n bytes while the loop runs; 0, or -1 on EOF/timeout. */
static int raw_recv(struct event_base *b, int fd, void *buf, size_t n)
{
    raw_rx r = {fd, buf, n, 0, 0};
    run_until(b, raw_rx_step, &r, 5000);
    return r.have == n ? 0 : -1;
}

static int raw_closed_step(void *arg)
{
    int fd = *(int *)arg;
    uint8_t junk[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t k = recv(fd, junk, sizeof junk, 0);
        if (k == 0 || (k < 0 && errno != EAGAIN))
            return 1;
        if (k < 0)
            return 0;
    }
    return 0;
}

/* 1 if the node closed fd within 3 s (its output discarded). */
static int raw_wait_closed(struct event_base *b, int fd)
{
    return run_until(b, raw_closed_step, &fd, 3000);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void hello(uint8_t h[44], uint32_t id, const uint8_t nonce[32])
{
    memcpy(h, "CNET", 4);
    put32(h + 4, 1);
    put32(h + 8, id);
    memcpy(h + 12, nonce, 32);
}

/* The proof as docs/cluster.md specifies it, written independently of
 * cnet.c. */
static void spec_proof(const char *secret, uint32_t dialer, uint32_t acceptor,
                       const uint8_t dn[32], const uint8_t an[32], uint8_t role,
                       uint8_t out[32])
{
    uint8_t m[93];
    memcpy(m, "chatlog-cnet-v1-auth", 20);
    put32(m + 20, dialer);
    put32(m + 24, acceptor);
    memcpy(m + 28, dn, 32);
    memcpy(m + 60, an, 32);
    m[92] = role;
    unsigned int ol = 32;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), m, sizeof m, out, &ol);
}

/* Dial the node on port as node `id` and authenticate with `secret`.
 * Returns the fd once the node's proof checked out, or -1 if the node
 * closed the connection first. */
static int raw_dial_auth(struct event_base *b, int port, uint32_t id, uint32_t node_id,
                         const char *secret)
{
    int fd = raw_connect(port);
    uint8_t dn[32], h[44], nh[44], p[32], np[32];
    RAND_bytes(dn, sizeof dn);
    hello(h, id, dn);
    raw_send(fd, h, sizeof h);
    if (raw_recv(b, fd, nh, sizeof nh)) {
        close(fd);
        return -1;
    }
    ASSERT_MEM_EQ(nh, "CNET\0\0\0\1", 8);
    ASSERT_EQ((uint32_t)nh[8] << 24 | nh[9] << 16 | nh[10] << 8 | nh[11], node_id);
    spec_proof(secret, id, node_id, dn, nh + 12, 'D', p);
    raw_send(fd, p, sizeof p);
    if (raw_recv(b, fd, np, sizeof np)) {
        close(fd);
        return -1;
    }
    uint8_t want[32];
    spec_proof(secret, id, node_id, dn, nh + 12, 'A', want);
    ASSERT_MEM_EQ(np, want, 32);
    return fd;
}

static void raw_frame(int fd, const void *p, uint32_t len)
{
    uint8_t h[4];
    put32(h, len);
    raw_send(fd, h, 4);
    if (len)
        raw_send(fd, p, len);
}

/* ---- helpers for frames ---- */

static uint8_t *make_frame(uint32_t from, uint32_t to, uint64_t k, size_t len)
{
    uint8_t *p = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        p[i] = pattern(from, to, k, i);
    return p;
}

typedef struct want_frames {
    tnode *t;
    uint32_t from;
    uint64_t count;
} want_frames;

static int got_frames(void *arg)
{
    want_frames *w = arg;
    return w->t->bad || w->t->got[w->from] >= w->count;
}

static void new_node(struct event_base *b, tnode *t, cnet_config *c)
{
    int rc = cnet_new(b, c, &t->n);
    if (rc)
        FAIL("cnet_new(self %u): %s", c->self, strerror(-rc));
}

/* Three nodes 1..3 on ephemeral ports; the addresses are set after binding,
 * as the test hook allows. */
static void three_nodes(struct event_base *b, tnode t[3], cluster *c, SSL_CTX *srv,
                        SSL_CTX *cli)
{
    memset(c, 0, sizeof *c);
    for (uint32_t i = 0; i < 3; i++) {
        cnet_config cfg = base_config(&t[i], i + 1, "127.0.0.1:0");
        for (uint32_t j = 0; j < 3; j++)
            if (j != i)
                add_peer(&cfg, j + 1, 0);
        cfg.tls_server = srv;
        cfg.tls_client = cli;
        new_node(b, &t[i], &cfg);
        c->t[i] = &t[i];
        c->ids[i] = i + 1;
    }
    c->n = 3;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            if (i != j) {
                char a[64];
                snprintf(a, sizeof a, "127.0.0.1:%d", cnet_listen_port(t[j].n));
                ASSERT_OK(cnet_set_peer_addr(t[i].n, (uint32_t)j + 1, a));
            }
}

/* Sizes 0, 1, 64 KiB and 5 MiB from every node to every other, checked
 * byte by byte and in order. */
static const size_t big_script[] = {0, 1, 64 << 10, 5 << 20, 1, 0, 3000};

static void exchange_big_frames(struct event_base *b, tnode t[3])
{
    size_t ns = sizeof big_script / sizeof big_script[0];
    for (int i = 0; i < 3; i++) {
        t[i].script = big_script;
        t[i].script_len = ns;
    }
    for (uint32_t from = 1; from <= 3; from++)
        for (uint32_t to = 1; to <= 3; to++) {
            if (from == to)
                continue;
            for (size_t k = 0; k < ns; k++) {
                uint8_t *p = make_frame(from, to, k, big_script[k]);
                int rc = cnet_send(t[from - 1].n, to, p, big_script[k]);
                free(p);
                if (rc)
                    FAIL("send %u->%u frame %zu: %d", from, to, k, rc);
            }
        }
    for (uint32_t to = 1; to <= 3; to++)
        for (uint32_t from = 1; from <= 3; from++) {
            if (from == to)
                continue;
            want_frames w = {&t[to - 1], from, ns};
            run_until(b, got_frames, &w, 10000);
            if (t[to - 1].bad)
                FAIL("node %u: %s", to, t[to - 1].why);
            ASSERT_EQ(t[to - 1].got[from], ns);
        }
    size_t total = 0;
    for (size_t k = 0; k < ns; k++)
        total += big_script[k];
    cnet_stats st;
    cnet_stats_get(t[0].n, 2, &st);
    ASSERT_U64_EQ(st.frames_out, ns);
    ASSERT_U64_EQ(st.frames_in, ns);
    ASSERT_U64_EQ(st.bytes_out, total);
    ASSERT_U64_EQ(st.bytes_in, total);
}

/* ---- the tests ---- */

TEST(cnet_new_refuses_bad_configs)
{
    struct event_base *b = event_base_new();
    tnode t;
    memset(&t, 0, sizeof t);
    cnet *n = (cnet *)1;
    cnet_config c = base_config(&t, 1, "127.0.0.1:0");
    add_peer(&c, 2, 1);

    cnet_config x = c;
    x.self = 0;
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    ASSERT(n == NULL);
    x = c;
    x.secret_len = 15;
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    x.peers[0].id = 1; /* ourselves */
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    add_peer(&x, 2, 5); /* twice */
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    x.n_peers = CNET_MAX_PEERS + 1;
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    snprintf(x.peers[0].addr, sizeof x.peers[0].addr, "no-port");
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    x.listen = "127.0.0.1:99999";
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    x.tls_server = (SSL_CTX *)&x; /* one without the other */
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    x.max_frame = (size_t)CNET_MAX_FRAME_LIMIT + 1;
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);
    x = c;
    x.on_frame = NULL;
    ASSERT_EQ(cnet_new(b, &x, &n), -EINVAL);

    /* A port in use. */
    ASSERT_OK(cnet_new(b, &c, &n));
    char busy[64];
    snprintf(busy, sizeof busy, "127.0.0.1:%d", cnet_listen_port(n));
    cnet *m = NULL;
    x = c;
    x.listen = busy;
    ASSERT_EQ(cnet_new(b, &x, &m), -EADDRINUSE);

    /* The send errors, in their order. */
    uint8_t byte = 7;
    ASSERT_EQ(cnet_send(n, 9, &byte, 1), -EINVAL);
    ASSERT_EQ(cnet_send(n, 0, &byte, 1), -EINVAL);
    ASSERT_EQ(cnet_send(n, 2, &byte, (size_t)CNET_DEFAULT_MAX_FRAME + 1), -EMSGSIZE);
    ASSERT_EQ(cnet_send(n, 2, &byte, 1), -ENOTCONN);
    ASSERT_EQ(cnet_set_peer_addr(n, 9, "127.0.0.1:1"), -EINVAL);
    ASSERT_EQ(cnet_set_peer_addr(n, 2, "127.0.0.1"), -EINVAL);
    ASSERT_EQ(cnet_set_peer_addr(n, 2, "::1:80"), -EINVAL);
    ASSERT_OK(cnet_set_peer_addr(n, 2, "[::1]:80"));
    cnet_stats st;
    cnet_stats_get(n, 2, &st);
    ASSERT_U64_EQ(st.drops, 1);
    ASSERT_EQ(cnet_peer_is_up(n, 2), 0);
    ASSERT_EQ(cnet_peer_is_up(n, 9), 0);
    cnet_free(n);
    cnet_free(NULL);
    event_base_free(b);
}

TEST(cnet_three_nodes_connect_and_carry_frames_both_ways)
{
    struct event_base *b = event_base_new();
    tnode t[3];
    memset(t, 0, sizeof t);
    cluster c;
    three_nodes(b, t, &c, NULL, NULL);
    ASSERT(run_until(b, all_up, &c, 5000));
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(t[i].bad, 0);
        cnet_stats st;
        cnet_stats_get(t[i].n, 0, &st);
        ASSERT_U64_EQ(st.connects, 2);
        ASSERT_U64_EQ(st.auth_failures, 0);
    }
    exchange_big_frames(b, t);
    /* Nothing else arrived, no link flapped. */
    run_for(b, 50);
    for (int i = 0; i < 3; i++)
        for (uint32_t p = 1; p <= 3; p++) {
            ASSERT_EQ(t[i].downs[p], 0);
            ASSERT_LE(t[i].ups[p], 1);
        }
    for (int i = 0; i < 3; i++)
        cnet_free(t[i].n);
    event_base_free(b);
}

TEST(cnet_small_frames_in_one_round_share_write_calls)
{
    struct event_base *b = event_base_new();
    tnode t[3];
    memset(t, 0, sizeof t);
    cluster c;
    three_nodes(b, t, &c, NULL, NULL);
    ASSERT(run_until(b, all_up, &c, 5000));
    static size_t sizes[50];
    for (size_t i = 0; i < 50; i++)
        sizes[i] = 10 + i * 3;
    t[1].script = sizes;
    t[1].script_len = 50;
    cnet_stats before, after;
    cnet_stats_get(t[0].n, 2, &before);
    enum { N = 5000 };
    for (uint64_t k = 0; k < N; k++) {
        uint8_t *p = make_frame(1, 2, k, sizes[k % 50]);
        ASSERT_OK(cnet_send(t[0].n, 2, p, sizes[k % 50]));
        free(p);
    }
    /* Nothing is written inside cnet_send: the flush runs from the loop. */
    cnet_stats_get(t[0].n, 2, &after);
    ASSERT_U64_EQ(after.write_calls, before.write_calls);
    ASSERT_GT(cnet_queued(t[0].n, 2), N * 14);
    want_frames w = {&t[1], 1, N};
    run_until(b, got_frames, &w, 5000);
    if (t[1].bad)
        FAIL("%s", t[1].why);
    ASSERT_EQ(t[1].got[1], N);
    cnet_stats_get(t[0].n, 2, &after);
    /* ~300 KB of frames: a handful of sendmsg calls, not 5000. */
    ASSERT_U64_EQ(after.frames_out - before.frames_out, N);
    ASSERT_LE(after.write_calls - before.write_calls, 20);
    ASSERT_EQ(cnet_queued(t[0].n, 2), 0);
    for (int i = 0; i < 3; i++)
        cnet_free(t[i].n);
    event_base_free(b);
}

TEST(cnet_wrong_secret_never_passes_a_frame)
{
    struct event_base *b = event_base_new();
    tnode t[3];
    memset(t, 0, sizeof t);
    cluster c;
    three_nodes(b, t, &c, NULL, NULL);
    /* Node 3 again, with a secret of its own, on a new port. */
    cnet_free(t[2].n);
    cnet_config cfg = base_config(&t[2], 3, "127.0.0.1:0");
    add_peer(&cfg, 1, 0);
    add_peer(&cfg, 2, 0);
    cfg.secret = (const uint8_t *)"another-secret-of-16+-bytes";
    cfg.secret_len = strlen("another-secret-of-16+-bytes");
    new_node(b, &t[2], &cfg);
    char a[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", cnet_listen_port(t[2].n));
    ASSERT_OK(cnet_set_peer_addr(t[0].n, 3, a));
    ASSERT_OK(cnet_set_peer_addr(t[1].n, 3, a));
    cluster pair = {{&t[0], &t[1]}, {1, 2}, 2};
    ASSERT(run_until(b, all_up, &pair, 5000));

    int64_t end = mono_ms() + 600;
    int refused = 0;
    while (mono_ms() < end) {
        uint8_t x = 1;
        refused += cnet_send(t[0].n, 3, &x, 1) == -ENOTCONN;
        refused += cnet_send(t[2].n, 2, &x, 1) == -ENOTCONN;
        run_for(b, 20);
    }
    ASSERT_GT(refused, 20);
    cnet_stats s13, s23, s31;
    cnet_stats_get(t[0].n, 3, &s13);
    cnet_stats_get(t[1].n, 3, &s23);
    cnet_stats_get(t[2].n, 1, &s31);
    /* Several attempts each, all refused on both sides (backoff <= 1 s). */
    ASSERT_GE(s13.auth_failures, 2);
    ASSERT_GE(s23.auth_failures, 2);
    ASSERT_GE(s31.auth_failures, 2);
    ASSERT_U64_EQ(s13.connects, 0);
    ASSERT_U64_EQ(s31.connects, 0);
    ASSERT_U64_EQ(s13.frames_in + s23.frames_in + s31.frames_in, 0);
    ASSERT_EQ(t[0].got[3] + t[1].got[3] + t[2].got[1] + t[2].got[2], 0);
    ASSERT_EQ(t[0].ups[3] + t[2].ups[1] + t[2].ups[2], 0);
    /* The log names the peer's address. */
    ASSERT(t[2].warns > 0 && strstr(t[2].last_warn, "127.0.0.1:"));
    ASSERT(strstr(t[2].last_warn, "proof") || strstr(t[2].last_warn, "closed"));
    for (int i = 0; i < 3; i++)
        cnet_free(t[i].n);
    event_base_free(b);
}

/* Node 5 with members 1..4 and 6; raw sockets try everything wrong. */
TEST(cnet_handshake_refuses_garbage_unknown_ids_and_wrong_proofs)
{
    struct event_base *b = event_base_new();
    tnode t;
    memset(&t, 0, sizeof t);
    cnet_config cfg = base_config(&t, 5, "127.0.0.1:0");
    for (uint32_t id = 1; id <= 6; id++)
        if (id != 5)
            add_peer(&cfg, id, 0);
    new_node(b, &t, &cfg);
    int port = cnet_listen_port(t.n);
    uint8_t nonce[32], h[44];
    RAND_bytes(nonce, sizeof nonce);
    cnet_stats st;

    struct {
        const char *what;
        uint32_t id;
        int corrupt; /* 1: magic, 2: version, 3: garbage, 4: huge length */
        int per_peer;
    } cases[] = {
        {"garbage", 1, 3, 0},        {"bad magic", 1, 1, 0},
        {"bad version", 1, 2, 0},    {"our own id", 5, 0, 0},
        {"unknown id", 7, 0, 0},     {"id zero", 0, 0, 0},
        {"larger id dials", 6, 0, 1}, {"a frame length first", 1, 4, 0},
    };
    uint64_t fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int fd = raw_connect(port);
        hello(h, cases[i].id, nonce);
        if (cases[i].corrupt == 1)
            h[0] = 'X';
        if (cases[i].corrupt == 2)
            h[7] = 2;
        if (cases[i].corrupt == 3)
            RAND_bytes(h, sizeof h);
        if (cases[i].corrupt == 4)
            memset(h, 0xff, sizeof h);
        raw_send(fd, h, sizeof h);
        if (!raw_wait_closed(b, fd))
            FAIL("%s: connection not closed", cases[i].what);
        close(fd);
        cnet_stats_get(t.n, 0, &st);
        ASSERT_U64_EQ(st.auth_failures, ++fails);
    }
    cnet_stats_get(t.n, 6, &st);
    ASSERT_U64_EQ(st.auth_failures, 1); /* the member that dialed wrongly */

    /* Right hello, wrong secret: closed, counted against the claimed id,
     * and the node's proof never sent (raw_dial_auth gets EOF). */
    ASSERT_EQ(raw_dial_auth(b, port, 2, 5, "not-the-cluster-secret!"), -1);
    cnet_stats_get(t.n, 2, &st);
    ASSERT_U64_EQ(st.auth_failures, 1);
    ASSERT_U64_EQ(st.connects, 0);

    /* A connection that says nothing is closed by the handshake timeout. */
    int idle = raw_connect(port);
    int64_t t0 = mono_ms();
    raw_rx r = {idle, h, 44, 0, 0}; /* the node's hello arrives at once */
    run_until(b, raw_rx_step, &r, 2000);
    ASSERT_EQ(r.have, 44);
    ASSERT(run_until(b, raw_closed_step, &idle, CNET_HANDSHAKE_TIMEOUT_MS + 2000));
    ASSERT_GE(mono_ms() - t0, CNET_HANDSHAKE_TIMEOUT_MS - 100);
    close(idle);

    /* And after all that, a correct member gets in. */
    int fd = raw_dial_auth(b, port, 3, 5, SECRET);
    ASSERT(fd >= 0);
    ASSERT_EQ(cnet_peer_is_up(t.n, 3), 1); /* up when it sent its proof */
    ASSERT_EQ(t.up[3], 1);
    close(fd);
    cnet_free(t.n);
    event_base_free(b);
}

static int peer_down(void *arg)
{
    tnode *t = arg;
    return t->downs[1] > 0;
}

TEST(cnet_oversize_frame_length_drops_the_link)
{
    struct event_base *b = event_base_new();
    tnode t;
    memset(&t, 0, sizeof t);
    cnet_config cfg = base_config(&t, 2, "127.0.0.1:0");
    add_peer(&cfg, 1, 0);
    cfg.max_frame = 1000;
    new_node(b, &t, &cfg);
    int fd = raw_dial_auth(b, cnet_listen_port(t.n), 1, 2, SECRET);
    ASSERT(fd >= 0);
    run_for(b, 10);
    ASSERT_EQ(cnet_peer_is_up(t.n, 1), 1);
    /* A valid frame, then one announcing max_frame + 1 bytes. */
    static const size_t sizes[] = {1000};
    t.script = sizes;
    t.script_len = 1;
    uint8_t *p = make_frame(1, 2, 0, 1000);
    raw_frame(fd, p, 1000);
    free(p);
    uint8_t h[4];
    put32(h, 1001);
    raw_send(fd, h, 4);
    ASSERT(raw_wait_closed(b, fd));
    close(fd);
    ASSERT(run_until(b, peer_down, &t, 1000));
    ASSERT_EQ(t.bad, 0);
    ASSERT_EQ(t.got[1], 1);
    cnet_stats st;
    cnet_stats_get(t.n, 1, &st);
    ASSERT_U64_EQ(st.proto_errors, 1);
    ASSERT_EQ(cnet_peer_is_up(t.n, 1), 0);
    ASSERT_EQ(cnet_send(t.n, 1, h, 4), -ENOTCONN);
    /* Sending more than max_frame is refused at our end too. */
    ASSERT_EQ(cnet_send(t.n, 1, h, 1001), -EMSGSIZE);
    cnet_free(t.n);
    event_base_free(b);
}

TEST(cnet_new_connection_from_a_peer_replaces_the_old_one)
{
    struct event_base *b = event_base_new();
    tnode t;
    memset(&t, 0, sizeof t);
    cnet_config cfg = base_config(&t, 2, "127.0.0.1:0");
    add_peer(&cfg, 1, 0);
    new_node(b, &t, &cfg);
    int port = cnet_listen_port(t.n);
    int a = raw_dial_auth(b, port, 1, 2, SECRET);
    ASSERT(a >= 0);
    run_for(b, 10);
    ASSERT_EQ(t.ups[1], 1);
    /* Node 1 "restarts": a new authenticated connection while the old one
     * is still open. */
    int c2 = raw_dial_auth(b, port, 1, 2, SECRET);
    ASSERT(c2 >= 0);
    ASSERT(raw_wait_closed(b, a));
    close(a);
    ASSERT_EQ(t.downs[1], 1);
    ASSERT_EQ(t.ups[1], 2);
    ASSERT_EQ(t.up[1], 1);
    ASSERT_EQ(t.bad, 0);
    /* Frames now go to the new connection. */
    ASSERT_OK(cnet_send(t.n, 1, (const uint8_t *)"hey", 3));
    uint8_t got[7];
    ASSERT_OK(raw_recv(b, c2, got, 7));
    ASSERT_MEM_EQ(got, "\0\0\0\3hey", 7);
    cnet_stats st;
    cnet_stats_get(t.n, 1, &st);
    ASSERT_U64_EQ(st.connects, 2);
    close(c2);
    cnet_free(t.n);
    event_base_free(b);
}

static int node_is_down_everywhere(void *arg)
{
    tnode *t = arg; /* t[0], t[2] must both see node 2 down */
    return !cnet_peer_is_up(t[0].n, 2) && !cnet_peer_is_up(t[2].n, 2);
}

TEST(cnet_restarted_peers_reconnect_and_frames_flow_again)
{
    struct event_base *b = event_base_new();
    tnode t[3];
    memset(t, 0, sizeof t);
    cluster c;
    three_nodes(b, t, &c, NULL, NULL);
    ASSERT(run_until(b, all_up, &c, 5000));

    /* Node 2 (dialed by 1, dialing 3) stops and comes back on its port. */
    int port2 = cnet_listen_port(t[1].n);
    cnet_free(t[1].n);
    memset(&t[1], 0, sizeof t[1]);
    ASSERT(run_until(b, node_is_down_everywhere, t, 2000));
    ASSERT_EQ(t[0].downs[2], 1);
    ASSERT_EQ(t[2].downs[2], 1);
    run_for(b, 100); /* node 1 redials a closed port meanwhile */
    char l2[64];
    snprintf(l2, sizeof l2, "127.0.0.1:%d", port2);
    cnet_config cfg = base_config(&t[1], 2, l2);
    add_peer(&cfg, 1, cnet_listen_port(t[0].n));
    add_peer(&cfg, 3, cnet_listen_port(t[2].n));
    new_node(b, &t[1], &cfg);
    ASSERT(run_until(b, all_up, &c, 3000)); /* backoff is at most 1 s */
    ASSERT_EQ(t[0].ups[2], 2);

    /* Node 1 (dials everyone) restarts on a new port: nobody needs its
     * address. */
    cnet_free(t[0].n);
    memset(&t[0], 0, sizeof t[0]);
    cfg = base_config(&t[0], 1, "127.0.0.1:0");
    add_peer(&cfg, 2, port2);
    add_peer(&cfg, 3, cnet_listen_port(t[2].n));
    new_node(b, &t[0], &cfg);
    ASSERT(run_until(b, all_up, &c, 3000));
    exchange_big_frames(b, t);
    for (int i = 0; i < 3; i++)
        cnet_free(t[i].n);
    event_base_free(b);
}

typedef struct accept_wait {
    int lfd, fd;
} accept_wait;

static int accepted(void *arg)
{
    accept_wait *a = arg;
    if (a->fd < 0)
        a->fd = accept(a->lfd, NULL, NULL);
    return a->fd >= 0;
}

TEST(cnet_peer_that_stops_reading_fills_the_queue_to_its_bound)
{
    struct event_base *b = event_base_new();
    tnode t;
    memset(&t, 0, sizeof t);
    int rport;
    int lfd = raw_listen(&rport);
    cnet_config cfg = base_config(&t, 1, "127.0.0.1:0");
    add_peer(&cfg, 2, rport);
    cfg.max_frame = 64 << 10;
    cfg.max_queue = 1 << 20;
    new_node(b, &t, &cfg);

    /* Play node 2: accept, answer the handshake as the acceptor, then
     * never read again. */
    accept_wait aw = {lfd, -1};
    ASSERT(run_until(b, accepted, &aw, 3000));
    int fd = aw.fd;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    uint8_t an[32], h[44], nh[44], np[32], p[32];
    RAND_bytes(an, sizeof an);
    hello(h, 2, an);
    raw_send(fd, h, sizeof h);
    ASSERT_OK(raw_recv(b, fd, nh, sizeof nh));
    ASSERT_OK(raw_recv(b, fd, np, sizeof np));
    uint8_t want[32];
    spec_proof(SECRET, 1, 2, nh + 12, an, 'D', want);
    ASSERT_MEM_EQ(np, want, 32);
    spec_proof(SECRET, 1, 2, nh + 12, an, 'A', p);
    raw_send(fd, p, sizeof p);
    run_for(b, 20);
    ASSERT_EQ(cnet_peer_is_up(t.n, 2), 1);

    uint8_t *frame = calloc(1, 64 << 10);
    int rc = 0;
    size_t max_seen = 0;
    for (int i = 0; i < 2000 && rc == 0; i++) {
        rc = cnet_send(t.n, 2, frame, 64 << 10);
        if (cnet_queued(t.n, 2) > max_seen)
            max_seen = cnet_queued(t.n, 2);
        run_for(b, 1);
    }
    free(frame);
    ASSERT_EQ(rc, -ENOBUFS);
    ASSERT_LE(max_seen, 1 << 20);
    ASSERT_GT(max_seen, (1 << 20) - (64 << 10) - 4 - 1);
    cnet_stats st;
    cnet_stats_get(t.n, 2, &st);
    ASSERT_U64_EQ(st.drops, 1);
    /* The link stays up; once the peer reads again the queue drains and
     * every accepted frame arrives. */
    ASSERT_EQ(cnet_peer_is_up(t.n, 2), 1);
    uint64_t expect = st.frames_out * (4 + (64 << 10)), got = 0;
    int64_t end = mono_ms() + 5000;
    uint8_t *sink = malloc(1 << 16);
    while (got < expect && mono_ms() < end) {
        ssize_t k = recv(fd, sink, 1 << 16, 0);
        if (k > 0)
            got += (uint64_t)k;
        else if (k == 0 || errno != EAGAIN)
            break;
        else
            run_for(b, 1);
    }
    free(sink);
    ASSERT_U64_EQ(got, expect);
    ASSERT_EQ(cnet_queued(t.n, 2), 0);
    ASSERT_OK(cnet_send(t.n, 2, (const uint8_t *)"x", 1));
    close(fd);
    close(lfd);
    cnet_free(t.n);
    event_base_free(b);
}

/* ---- TLS ---- */

/* A throwaway self-signed P-256 certificate, in memory. */
static void make_cert(EVP_PKEY **key, X509 **cert)
{
    *key = EVP_EC_gen("P-256");
    ASSERT(*key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, *key);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"cnet-test",
                               -1, -1, 0);
    X509_set_issuer_name(x, nm);
    ASSERT(X509_sign(x, *key, EVP_sha256()) > 0);
    *cert = x;
}

/* Server and client contexts: the client trusts exactly `trust`. */
static void make_ctxs(EVP_PKEY *key, X509 *cert, X509 *trust, SSL_CTX **srv, SSL_CTX **cli)
{
    *srv = SSL_CTX_new(TLS_server_method());
    *cli = SSL_CTX_new(TLS_client_method());
    ASSERT(*srv && *cli);
    ASSERT_EQ(SSL_CTX_use_certificate(*srv, cert), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey(*srv, key), 1);
    SSL_CTX_set_verify(*cli, SSL_VERIFY_PEER, NULL);
    ASSERT_EQ(X509_STORE_add_cert(SSL_CTX_get_cert_store(*cli), trust), 1);
}

TEST(cnet_tls_links_carry_frames_and_refuse_untrusted_certificates)
{
    signal(SIGPIPE, SIG_IGN); /* required with TLS, see cnet.h */
    struct event_base *b = event_base_new();
    EVP_PKEY *key, *key2;
    X509 *cert, *cert2;
    make_cert(&key, &cert);
    make_cert(&key2, &cert2);
    SSL_CTX *srv, *cli;
    make_ctxs(key, cert, cert, &srv, &cli);
    tnode t[3];
    memset(t, 0, sizeof t);
    cluster c;
    three_nodes(b, t, &c, srv, cli);
    /* cnet holds its own references. */
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    ASSERT(run_until(b, all_up, &c, 5000));
    exchange_big_frames(b, t);

    /* A plain-TCP node 1 (right secret) cannot talk to TLS node 3. */
    tnode p;
    memset(&p, 0, sizeof p);
    cnet_config cfg = base_config(&p, 1, "127.0.0.1:0");
    add_peer(&cfg, 3, cnet_listen_port(t[2].n));
    new_node(b, &p, &cfg);
    /* And a TLS node 5 whose client trusts another certificate. */
    SSL_CTX *srv2, *cli2;
    make_ctxs(key2, cert2, cert2, &srv2, &cli2);
    tnode q;
    memset(&q, 0, sizeof q);
    cfg = base_config(&q, 2, "127.0.0.1:0"); /* claims a member id: 2 < 3 */
    add_peer(&cfg, 3, cnet_listen_port(t[2].n));
    cfg.tls_server = srv2;
    cfg.tls_client = cli2;
    new_node(b, &q, &cfg);
    run_for(b, 400);
    cnet_stats st;
    cnet_stats_get(q.n, 3, &st);
    ASSERT_GE(st.auth_failures, 1); /* certificate verify failed */
    ASSERT_U64_EQ(st.connects, 0);
    ASSERT_EQ(q.ups[3], 0);
    ASSERT(strstr(q.last_warn, "certificate") != NULL);
    cnet_stats_get(p.n, 3, &st);
    ASSERT_GE(st.auth_failures, 1);
    ASSERT_U64_EQ(st.connects, 0);
    /* Node 3 saw only failed handshakes besides its two real links, which
     * stayed up. */
    cnet_stats_get(t[2].n, 0, &st);
    ASSERT_GE(st.auth_failures, 2);
    ASSERT_U64_EQ(st.connects, 2);
    ASSERT_EQ(t[2].downs[1] + t[2].downs[2], 0);
    cnet_free(q.n);
    cnet_free(p.n);
    SSL_CTX_free(srv2);
    SSL_CTX_free(cli2);
    for (int i = 0; i < 3; i++)
        cnet_free(t[i].n);
    X509_free(cert);
    X509_free(cert2);
    EVP_PKEY_free(key);
    EVP_PKEY_free(key2);
    event_base_free(b);
}
