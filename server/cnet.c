/*
 * cnet.c — node-to-node links of the chatd cluster (API: cnet.h).
 *
 * Wire format (all integers big-endian). After TCP connect (and the TLS
 * handshake when TLS is configured, dialer = TLS client), each side sends
 * its HELLO at once:
 *
 *   HELLO (44 bytes)  magic "CNET" (43 4E 45 54) | version u32 = 1 |
 *                     node id u32 | nonce [32] (RAND_bytes, fresh per
 *                     connection)
 *
 * Then the two proofs, each PROOF (32 bytes) = HMAC-SHA256(secret, M) with
 *
 *   M = "chatlog-cnet-v1-auth" (20 bytes, no NUL) | dialer id u32 |
 *       acceptor id u32 | dialer nonce [32] | acceptor nonce [32] |
 *       role (1 byte: 'D' = 0x44 in the dialer's proof, 'A' = 0x41 in the
 *       acceptor's)                                          = 93 bytes.
 *
 *   1. dialer:   sends HELLO; on the acceptor's HELLO checks its id is the
 *                peer it meant to dial, then sends PROOF('D').
 *   2. acceptor: sends HELLO; on the dialer's HELLO checks the id (a member,
 *                not its own, smaller than its own); on the dialer's PROOF
 *                checks it (CRYPTO_memcmp) and only then sends PROOF('A'):
 *                the link is up.
 *   3. dialer:   checks PROOF('A'): the link is up.
 *
 * The acceptor, which anyone can reach, computes no proof for a peer that
 * has not proved itself first, and neither side answers before it has the
 * other's HELLO (so a proof always covers a nonce of its own making: no
 * oracle). The role byte keeps a proof from being reflected back. Any
 * failure (bad magic or version, unknown id, own id, a nonce equal to ours,
 * wrong proof, EOF, timeout CNET_HANDSHAKE_TIMEOUT_MS) closes the
 * connection without a word and counts in auth_failures. During the
 * handshake a side reads only the bytes of the message it waits for, so
 * frames that follow a proof in the same segment are left for the frame
 * reader.
 *
 * Then frames, both ways:   length u32 | payload [length],
 * length <= max_frame; a larger length closes the link (proto_errors).
 *
 * Memory: input holds at most one partial frame (<= 4 + max_frame) plus
 * one read chunk; output is the per-link evbuffer bounded by max_queue
 * (cnet_send refuses beyond it). Writes are deferred to one flush event per
 * loop round, so the frames queued by many cnet_send calls leave in one
 * writev (or a few 64 KiB SSL_writes).
 *
 * Lifetime: a closed link is unhooked at once (fd closed, peer slot
 * cleared) but its struct is freed only at the end of the event callback
 * that closed it (reap), so code still holding it (the frame loop after
 * on_frame) sees l->dead instead of freed memory.
 */
#include "cnet.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"

#define CNET_MAGIC "CNET"
#define CNET_VERSION 1u
#define CNET_NONCE 32
#define CNET_HELLO_LEN 44
#define CNET_PROOF_LEN 32
#define CNET_CONTEXT "chatlog-cnet-v1-auth"
#define CNET_ROLE_DIALER 0x44   /* 'D' */
#define CNET_ROLE_ACCEPTOR 0x41 /* 'A' */
/* One read syscall takes at most this much; one event reads at most
 * CNET_READS_PER_EVENT of them before letting other links run. */
#define CNET_READ_CHUNK (256u << 10)
#define CNET_READS_PER_EVENT 16
/* One SSL_write takes at most this much (a few TLS records). */
#define CNET_TLS_WRITE_CHUNK (64u << 10)
#define CNET_ACCEPTS_PER_EVENT 64
/* Chunks of the output queue handed to one sendmsg. */
#define CNET_WRITE_IOV 64

enum cnet_link_state {
    CL_CONNECTING = 0, /* dialer: TCP connect in progress */
    CL_TLS = 1,        /* TLS handshake */
    CL_HELLO = 2,      /* waiting for the peer's HELLO */
    CL_PROOF = 3,      /* waiting for the peer's PROOF */
    CL_UP = 4,         /* authenticated: frames */
};

typedef struct cnet_link cnet_link;

typedef struct cnet_slot {
    cnet *n;
    cnet_peer p;
    cnet_link *up;   /* the authenticated link, or NULL */
    cnet_link *dial; /* our dial in progress (we dial this peer), or NULL */
    struct event *redial;
    uint32_t backoff_ms;
    cnet_stats st;
} cnet_slot;

struct cnet_link {
    cnet *n;
    int fd;
    int state;
    int dialer;     /* we dialed */
    int dead;
    int armed_read, armed_write; /* what l->ev currently waits for */
    int ssl_want_write; /* the last SSL call wants the socket writable */
    int in_flushq;
    size_t tls_pending; /* SSL_write to retry with exactly this length */
    uint32_t peer;      /* the peer id: known from the start when dialing,
                           from its HELLO when accepting */
    cnet_slot *slot;    /* set once peer is known and valid */
    SSL *ssl;
    struct event *ev;
    struct event *timer; /* handshake timeout */
    struct evbuffer *in, *out;
    uint8_t my_nonce[CNET_NONCE], peer_nonce[CNET_NONCE];
    char addr[64]; /* the remote address, for logs */
    cnet_link *next, *prev;  /* n->links or n->dead */
    cnet_link *next_flush;
};

struct cnet {
    struct event_base *base;
    uint32_t self;
    uint32_t n_peers;
    cnet_slot slots[CNET_MAX_PEERS];
    uint8_t *secret;
    size_t secret_len;
    SSL_CTX *tls_server, *tls_client;
    size_t max_frame, max_queue;
    void (*on_frame)(void *, uint32_t, const uint8_t *, size_t);
    void (*on_peer)(void *, uint32_t, int);
    void (*log)(void *, int, const char *);
    void *arg;
    int listen_fd;
    int port;
    struct event *listen_ev;
    struct event *relisten_ev; /* accepting paused: out of descriptors */
    struct event *flush_ev;
    cnet_link *links; /* every open link */
    cnet_link *dead;  /* closed, freed by reap() */
    cnet_link *flushq;
    uint32_t npending; /* accepted links not yet authenticated */
    int freeing;
    uint64_t rng;
    cnet_stats unattributed; /* auth failures of no member */
};

static void link_event(evutil_socket_t fd, short what, void *arg);
static void link_close(cnet_link *l, const char *why);
static void schedule_dial(cnet_slot *s, uint32_t delay_ms);

/* ---- helpers ---- */

static void cnet_logf(cnet *n, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cnet_logf(cnet *n, int level, const char *fmt, ...)
{
    if (!n->log)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    n->log(n->arg, level, msg);
}

static cnet_slot *slot_of(const cnet *n, uint32_t id)
{
    if (id == 0)
        return NULL;
    for (uint32_t i = 0; i < n->n_peers; i++)
        if (n->slots[i].p.id == id)
            return (cnet_slot *)&n->slots[i];
    return NULL;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t rng_next(cnet *n)
{
    uint64_t x = n->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return n->rng = x;
}

/* Split "host:port" / "[v6]:port" into host and port. 0 or -EINVAL. */
static int split_addr(const char *addr, char *host, size_t hcap, char *port, size_t pcap)
{
    if (!addr)
        return -EINVAL;
    size_t len = strnlen(addr, 256);
    if (len == 0 || len >= 256)
        return -EINVAL;
    const char *colon = strrchr(addr, ':');
    if (!colon || colon[1] == 0)
        return -EINVAL;
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    } else if (memchr(h, ':', hl)) {
        return -EINVAL; /* a bare IPv6 address needs brackets */
    }
    size_t pl = strlen(colon + 1);
    if (hl >= hcap || pl >= pcap || pl > 5)
        return -EINVAL;
    for (size_t i = 0; i < pl; i++)
        if (colon[1 + i] < '0' || colon[1 + i] > '9')
            return -EINVAL;
    if (atoi(colon + 1) > 65535)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = 0;
    memcpy(port, colon + 1, pl + 1);
    return 0;
}

static void addr_text(const struct sockaddr *sa, char *buf, size_t cap)
{
    char h[NI_MAXHOST], p[NI_MAXSERV];
    socklen_t sl = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                             : sizeof(struct sockaddr_in);
    if (getnameinfo(sa, sl, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV))
        snprintf(buf, cap, "?");
    else if (sa->sa_family == AF_INET6)
        snprintf(buf, cap, "[%s]:%s", h, p);
    else
        snprintf(buf, cap, "%s:%s", h, p);
}

static void proof(const cnet *n, uint32_t dialer, uint32_t acceptor,
                  const uint8_t *dnonce, const uint8_t *anonce, uint8_t role,
                  uint8_t out[CNET_PROOF_LEN])
{
    uint8_t m[sizeof CNET_CONTEXT - 1 + 8 + 2 * CNET_NONCE + 1];
    size_t o = 0;
    memcpy(m, CNET_CONTEXT, sizeof CNET_CONTEXT - 1);
    o += sizeof CNET_CONTEXT - 1;
    put_u32(m + o, dialer);
    o += 4;
    put_u32(m + o, acceptor);
    o += 4;
    memcpy(m + o, dnonce, CNET_NONCE);
    o += CNET_NONCE;
    memcpy(m + o, anonce, CNET_NONCE);
    o += CNET_NONCE;
    m[o++] = role;
    unsigned int olen = CNET_PROOF_LEN;
    if (!HMAC(EVP_sha256(), n->secret, (int)n->secret_len, m, o, out, &olen))
        RAND_bytes(out, CNET_PROOF_LEN); /* fail closed: matches nothing */
}

/* ---- link bookkeeping ---- */

/* Wait for what the link needs: readable once connected, writable while
 * connecting, while output is queued or while TLS asks for it. */
static void update_events(cnet_link *l)
{
    if (l->dead)
        return;
    int rd = l->state != CL_CONNECTING;
    int wr = l->state == CL_CONNECTING || evbuffer_get_length(l->out) > 0 ||
             l->tls_pending > 0 || l->ssl_want_write;
    if (rd == l->armed_read && wr == l->armed_write)
        return;
    event_del(l->ev);
    event_assign(l->ev, l->n->base, l->fd,
                 (short)((rd ? EV_READ : 0) | (wr ? EV_WRITE : 0) | EV_PERSIST),
                 link_event, l);
    event_priority_set(l->ev, CNET_EVENT_PRIORITY);
    event_add(l->ev, NULL);
    l->armed_read = rd;
    l->armed_write = wr;
}

static void want_flush(cnet_link *l)
{
    if (l->in_flushq || l->dead)
        return;
    l->in_flushq = 1;
    l->next_flush = l->n->flushq;
    l->n->flushq = l;
    event_active(l->n->flush_ev, EV_WRITE, 0);
}

static void list_remove(cnet_link **head, cnet_link *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        *head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->next = l->prev = NULL;
}

static void list_push(cnet_link **head, cnet_link *l)
{
    l->prev = NULL;
    l->next = *head;
    if (*head)
        (*head)->prev = l;
    *head = l;
}

static void link_destroy(cnet_link *l)
{
    if (l->ev)
        event_free(l->ev);
    if (l->timer)
        event_free(l->timer);
    if (l->ssl)
        SSL_free(l->ssl);
    if (l->fd >= 0)
        close(l->fd);
    if (l->in)
        evbuffer_free(l->in);
    if (l->out)
        evbuffer_free(l->out);
    explicit_bzero(l->my_nonce, sizeof l->my_nonce);
    free(l);
}

/* Free the links closed during this callback (safe point: nothing holds
 * them any more). */
static void reap(cnet *n)
{
    while (n->dead) {
        cnet_link *l = n->dead;
        list_remove(&n->dead, l);
        link_destroy(l);
    }
}

static void auth_fail(cnet_link *l, const char *why)
{
    cnet *n = l->n;
    /* Accepted links have a slot only once their HELLO named a member. */
    (l->slot ? &l->slot->st : &n->unattributed)->auth_failures++;
    cnet_logf(n, LOG_WARN, "cnet: authentication with %s (%s, node %u) failed: %s",
              l->addr, l->dialer ? "dialed" : "accepted", l->peer, why);
    link_close(l, NULL);
}

static void link_close(cnet_link *l, const char *why)
{
    if (l->dead)
        return;
    cnet *n = l->n;
    l->dead = 1;
    event_del(l->ev);
    event_del(l->timer);
    if (l->ssl) {
        SSL_free(l->ssl); /* no close_notify: the peer sees EOF */
        l->ssl = NULL;
    }
    close(l->fd);
    l->fd = -1;
    if (l->in_flushq) {
        for (cnet_link **pp = &n->flushq; *pp; pp = &(*pp)->next_flush)
            if (*pp == l) {
                *pp = l->next_flush;
                break;
            }
        l->in_flushq = 0;
    }
    list_remove(&n->links, l);
    list_push(&n->dead, l);
    if (!l->dialer && l->state != CL_UP && n->npending > 0)
        n->npending--;
    if (why)
        cnet_logf(n, LOG_INFO, "cnet: link to node %u (%s) closed: %s", l->peer,
                  l->addr, why);
    cnet_slot *s = l->slot;
    if (!s)
        return;
    if (s->dial == l)
        s->dial = NULL;
    if (s->up == l) {
        s->up = NULL;
        if (!n->freeing && n->on_peer)
            n->on_peer(n->arg, s->p.id, 0);
    }
    /* We dial this peer: try again, later each time while it fails. The
     * callback above may have set a new address and dialed already. */
    if (!n->freeing && l->dialer && !s->up && !s->dial &&
        !evtimer_pending(s->redial, NULL)) {
        uint32_t d = s->backoff_ms;
        s->backoff_ms = d * 2 > CNET_BACKOFF_MAX_MS ? CNET_BACKOFF_MAX_MS : d * 2;
        schedule_dial(s, d / 2 + (uint32_t)(rng_next(n) % (d / 2 + 1)));
    }
}

static void on_handshake_timeout(evutil_socket_t fd, short what, void *arg)
{
    cnet_link *l = arg;
    cnet *n = l->n;
    if (l->state == CL_CONNECTING)
        link_close(l, "connect timed out");
    else
        auth_fail(l, "handshake timed out");
    reap(n);
}

static cnet_link *link_new(cnet *n, int fd, int dialer, const char *addr)
{
    cnet_link *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        return NULL;
    }
    l->n = n;
    l->fd = fd;
    l->dialer = dialer;
    snprintf(l->addr, sizeof l->addr, "%s", addr);
    l->in = evbuffer_new();
    l->out = evbuffer_new();
    l->ev = event_new(n->base, fd, EV_READ | EV_PERSIST, link_event, l);
    if (l->ev)
        event_priority_set(l->ev, CNET_EVENT_PRIORITY);
    l->timer = evtimer_new(n->base, on_handshake_timeout, l);
    if (!l->in || !l->out || !l->ev || !l->timer ||
        RAND_bytes(l->my_nonce, CNET_NONCE) != 1) {
        link_destroy(l);
        return NULL;
    }
    list_push(&n->links, l);
    struct timeval tv = {CNET_HANDSHAKE_TIMEOUT_MS / 1000,
                         (CNET_HANDSHAKE_TIMEOUT_MS % 1000) * 1000};
    evtimer_add(l->timer, &tv);
    return l;
}

/* TCP is established: start TLS or the secret handshake. 0 or -1 (the
 * link was closed). */
static int link_start(cnet_link *l)
{
    cnet *n = l->n;
    int one = 1;
    setsockopt(l->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (n->tls_client) {
        l->ssl = SSL_new(l->dialer ? n->tls_client : n->tls_server);
        if (!l->ssl || SSL_set_fd(l->ssl, l->fd) != 1) {
            link_close(l, "out of memory for TLS");
            return -1;
        }
        SSL_set_mode(l->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (l->dialer)
            SSL_set_connect_state(l->ssl);
        else
            SSL_set_accept_state(l->ssl);
        l->state = CL_TLS;
        return 0;
    }
    uint8_t hello[CNET_HELLO_LEN];
    memcpy(hello, CNET_MAGIC, 4);
    put_u32(hello + 4, CNET_VERSION);
    put_u32(hello + 8, n->self);
    memcpy(hello + 12, l->my_nonce, CNET_NONCE);
    l->state = CL_HELLO;
    if (evbuffer_add(l->out, hello, sizeof hello)) {
        link_close(l, "out of memory");
        return -1;
    }
    return 0;
}

/* ---- writing ---- */

/* Write what is queued until it is all out or the socket is full. */
static void link_write(cnet_link *l)
{
    cnet_stats *st = l->slot ? &l->slot->st : &l->n->unattributed;
    while (!l->dead && evbuffer_get_length(l->out) > 0) {
        if (l->ssl) {
            size_t len = l->tls_pending;
            if (!len) {
                len = evbuffer_get_length(l->out);
                if (len > CNET_TLS_WRITE_CHUNK)
                    len = CNET_TLS_WRITE_CHUNK;
            }
            unsigned char *p = evbuffer_pullup(l->out, (ev_ssize_t)len);
            if (!p) {
                link_close(l, "out of memory");
                return;
            }
            ERR_clear_error();
            st->write_calls++;
            int w = SSL_write(l->ssl, p, (int)len);
            if (w <= 0) {
                int e = SSL_get_error(l->ssl, w);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    l->tls_pending = len; /* OpenSSL wants the same call again */
                    l->ssl_want_write |= e == SSL_ERROR_WANT_WRITE;
                    break;
                }
                link_close(l, "TLS write failed");
                return;
            }
            l->tls_pending = 0;
            evbuffer_drain(l->out, (size_t)w);
            continue;
        }
        /* sendmsg rather than evbuffer_write: MSG_NOSIGNAL, so a peer gone
         * away is an EPIPE here and not a SIGPIPE for the process. */
        struct evbuffer_iovec v[CNET_WRITE_IOV];
        int nv = evbuffer_peek(l->out, -1, NULL, v, CNET_WRITE_IOV);
        if (nv > CNET_WRITE_IOV)
            nv = CNET_WRITE_IOV;
        struct iovec iov[CNET_WRITE_IOV];
        for (int i = 0; i < nv; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = v[i].iov_len;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)nv};
        st->write_calls++;
        ssize_t w = sendmsg(l->fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            link_close(l, strerror(errno));
            return;
        }
        evbuffer_drain(l->out, (size_t)w);
    }
    update_events(l);
}

static void flush_all(evutil_socket_t fd, short what, void *arg)
{
    cnet *n = arg;
    while (n->flushq) {
        cnet_link *l = n->flushq;
        n->flushq = l->next_flush;
        l->in_flushq = 0;
        if (!l->dead)
            link_write(l);
    }
    reap(n);
}

/* ---- the handshake ---- */

static void link_up(cnet_link *l)
{
    cnet *n = l->n;
    cnet_slot *s = l->slot;
    l->state = CL_UP;
    evtimer_del(l->timer);
    if (!l->dialer && n->npending > 0)
        n->npending--;
    if (s->dial == l)
        s->dial = NULL;
    s->backoff_ms = CNET_BACKOFF_MIN_MS;
    s->st.connects++;
    if (s->up)
        link_close(s->up, "replaced by a new connection (peer restarted)");
    if (l->dead) /* the down callback closed us */
        return;
    s->up = l;
    cnet_logf(n, LOG_INFO, "cnet: link to node %u (%s) up", s->p.id, l->addr);
    if (n->on_peer)
        n->on_peer(n->arg, s->p.id, 1);
}

static void on_hello(cnet_link *l, const uint8_t *h)
{
    cnet *n = l->n;
    uint32_t id = get_u32(h + 8);
    if (memcmp(h, CNET_MAGIC, 4) != 0)
        return auth_fail(l, "not a cnet peer (bad magic)");
    if (get_u32(h + 4) != CNET_VERSION)
        return auth_fail(l, "unsupported version");
    if (l->dialer) {
        if (id != l->peer)
            return auth_fail(l, "the node there has another id");
    } else {
        l->peer = id;
        if (id == n->self)
            return auth_fail(l, "peer claims our own id");
        cnet_slot *s = slot_of(n, id);
        if (!s)
            return auth_fail(l, "unknown node id");
        l->slot = s; /* failures from here on count against this member */
        if (id > n->self)
            return auth_fail(l, "a node with a larger id must not dial us");
    }
    memcpy(l->peer_nonce, h + 12, CNET_NONCE);
    if (CRYPTO_memcmp(l->peer_nonce, l->my_nonce, CNET_NONCE) == 0)
        return auth_fail(l, "our own nonce reflected");
    l->state = CL_PROOF;
    if (l->dialer) {
        uint8_t p[CNET_PROOF_LEN];
        proof(n, n->self, l->peer, l->my_nonce, l->peer_nonce, CNET_ROLE_DIALER, p);
        if (evbuffer_add(l->out, p, sizeof p))
            return link_close(l, "out of memory");
        want_flush(l);
    }
}

static void on_proof(cnet_link *l, const uint8_t *got)
{
    cnet *n = l->n;
    uint8_t want[CNET_PROOF_LEN];
    if (l->dialer)
        proof(n, n->self, l->peer, l->my_nonce, l->peer_nonce, CNET_ROLE_ACCEPTOR, want);
    else
        proof(n, l->peer, n->self, l->peer_nonce, l->my_nonce, CNET_ROLE_DIALER, want);
    if (CRYPTO_memcmp(want, got, CNET_PROOF_LEN) != 0)
        return auth_fail(l, "wrong proof (a different cluster secret?)");
    if (!l->dialer) {
        uint8_t p[CNET_PROOF_LEN];
        proof(n, l->peer, n->self, l->peer_nonce, l->my_nonce, CNET_ROLE_ACCEPTOR, p);
        if (evbuffer_add(l->out, p, sizeof p))
            return link_close(l, "out of memory");
        want_flush(l);
    }
    link_up(l);
}

/* ---- reading ---- */

/* Consume what l->in holds: handshake messages or whole frames. */
static void link_parse(cnet_link *l)
{
    cnet *n = l->n;
    while (!l->dead) {
        size_t have = evbuffer_get_length(l->in);
        if (l->state == CL_HELLO || l->state == CL_PROOF) {
            size_t need = l->state == CL_HELLO ? CNET_HELLO_LEN : CNET_PROOF_LEN;
            if (have < need)
                return;
            uint8_t msg[CNET_HELLO_LEN];
            evbuffer_remove(l->in, msg, need);
            if (l->state == CL_HELLO)
                on_hello(l, msg);
            else
                on_proof(l, msg);
            continue;
        }
        if (l->state != CL_UP || have < 4)
            return;
        uint8_t hdr[4];
        evbuffer_copyout(l->in, hdr, 4);
        uint32_t len = get_u32(hdr);
        if (len > n->max_frame) {
            l->slot->st.proto_errors++;
            cnet_logf(n, LOG_WARN,
                      "cnet: node %u (%s) sent a frame of %u bytes (max %zu): closing",
                      l->peer, l->addr, len, n->max_frame);
            return link_close(l, NULL);
        }
        if (have < 4 + (size_t)len)
            return;
        unsigned char *p = evbuffer_pullup(l->in, 4 + (ev_ssize_t)len);
        if (!p)
            return link_close(l, "out of memory");
        l->slot->st.frames_in++;
        l->slot->st.bytes_in += len;
        n->on_frame(n->arg, l->peer, p + 4, len);
        /* on_frame may have closed this link (its struct is still ours
         * until reap); its buffers are untouched either way. */
        evbuffer_drain(l->in, 4 + (size_t)len);
    }
}

/* How much the next read may take: during the handshake exactly the rest
 * of the message awaited, so nothing after it is read early. */
static size_t read_want(const cnet_link *l)
{
    size_t have = evbuffer_get_length(l->in);
    if (l->state == CL_HELLO)
        return CNET_HELLO_LEN - have;
    if (l->state == CL_PROOF)
        return CNET_PROOF_LEN - have;
    return CNET_READ_CHUNK;
}

static void link_read(cnet_link *l)
{
    for (int i = 0; i < CNET_READS_PER_EVENT && !l->dead; i++) {
        size_t want = read_want(l);
        ssize_t r;
        if (l->ssl) {
            struct evbuffer_iovec v;
            if (evbuffer_reserve_space(l->in, (ev_ssize_t)want, &v, 1) < 1)
                return link_close(l, "out of memory");
            ERR_clear_error();
            int k = SSL_read(l->ssl, v.iov_base, (int)want);
            if (k <= 0) {
                int e = SSL_get_error(l->ssl, k);
                if (e == SSL_ERROR_WANT_READ)
                    return;
                if (e == SSL_ERROR_WANT_WRITE) {
                    l->ssl_want_write = 1; /* update_events adds EV_WRITE */
                    return;
                }
                if (l->state != CL_UP)
                    return auth_fail(l, e == SSL_ERROR_ZERO_RETURN ? "closed by peer"
                                                                   : "TLS read failed");
                return link_close(l, e == SSL_ERROR_ZERO_RETURN ? "closed by peer"
                                                                 : "TLS read failed");
            }
            v.iov_len = (size_t)k;
            evbuffer_commit_space(l->in, &v, 1);
            r = k;
        } else {
            r = evbuffer_read(l->in, l->fd, (int)want);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    return;
                if (l->state != CL_UP)
                    return auth_fail(l, strerror(errno));
                return link_close(l, strerror(errno));
            }
            if (r == 0) {
                if (l->state != CL_UP)
                    return auth_fail(l, "closed by peer during the handshake");
                return link_close(l, "closed by peer");
            }
        }
        link_parse(l);
    }
    /* Read budget used up. A socket with more input fires again (level
     * triggered), but bytes TLS already decrypted would not. */
    if (!l->dead && l->ssl && SSL_pending(l->ssl) > 0)
        event_active(l->ev, EV_READ, 0);
}

static void tls_step(cnet_link *l)
{
    ERR_clear_error();
    int r = SSL_do_handshake(l->ssl);
    if (r == 1) {
        cnet *n = l->n;
        uint8_t hello[CNET_HELLO_LEN];
        memcpy(hello, CNET_MAGIC, 4);
        put_u32(hello + 4, CNET_VERSION);
        put_u32(hello + 8, n->self);
        memcpy(hello + 12, l->my_nonce, CNET_NONCE);
        l->state = CL_HELLO;
        if (evbuffer_add(l->out, hello, sizeof hello))
            return link_close(l, "out of memory");
        return;
    }
    int e = SSL_get_error(l->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return;
    if (e == SSL_ERROR_WANT_WRITE) {
        l->ssl_want_write = 1;
        return;
    }
    char err[160];
    ERR_error_string_n(ERR_peek_last_error(), err, sizeof err);
    auth_fail(l, ERR_peek_last_error() ? err : "TLS handshake failed");
}

static void link_event(evutil_socket_t fd, short what, void *arg)
{
    cnet_link *l = arg;
    cnet *n = l->n;
    if (l->state == CL_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof err;
        if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
            err = errno;
        if (err) {
            cnet_logf(n, LOG_DEBUG, "cnet: connect to node %u (%s): %s", l->peer,
                      l->addr, strerror(err));
            link_close(l, NULL);
            reap(n);
            return;
        }
        if (link_start(l)) {
            reap(n);
            return;
        }
    }
    l->ssl_want_write = 0;
    if (l->state == CL_TLS)
        tls_step(l);
    if (!l->dead && l->state >= CL_HELLO) {
        /* With TLS, read on any event: a write may have been waiting for
         * input, and input may be waiting for a write. */
        if ((what & EV_READ) || l->ssl)
            link_read(l);
        if (!l->dead)
            link_write(l);
    }
    update_events(l);
    reap(n);
}

/* ---- dialing and accepting ---- */

static void dial(cnet_slot *s, cnet *n)
{
    char host[256], port[8];
    if (s->up || s->dial || !s->p.addr[0])
        return;
    if (split_addr(s->p.addr, host, sizeof host, port, sizeof port)) {
        cnet_logf(n, LOG_ERROR, "cnet: node %u: bad address \"%s\"", s->p.id, s->p.addr);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int fd = -1, rc = getaddrinfo(host, port, &hints, &ai);
    if (rc == 0 && ai) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 &&
            errno != EINPROGRESS) {
            cnet_logf(n, LOG_DEBUG, "cnet: connect to node %u (%s): %s", s->p.id,
                      s->p.addr, strerror(errno));
            close(fd);
            fd = -1;
        }
    } else {
        cnet_logf(n, LOG_WARN, "cnet: node %u: cannot resolve %s: %s", s->p.id,
                  s->p.addr, gai_strerror(rc));
    }
    if (ai)
        freeaddrinfo(ai);
    cnet_link *l = fd >= 0 ? link_new(n, fd, 1, s->p.addr) : NULL;
    if (!l) {
        uint32_t d = s->backoff_ms;
        s->backoff_ms = d * 2 > CNET_BACKOFF_MAX_MS ? CNET_BACKOFF_MAX_MS : d * 2;
        schedule_dial(s, d / 2 + (uint32_t)(rng_next(n) % (d / 2 + 1)));
        return;
    }
    l->peer = s->p.id;
    l->slot = s;
    s->dial = l;
    l->state = CL_CONNECTING;
    update_events(l);
}

static void on_redial(evutil_socket_t fd, short what, void *arg)
{
    cnet_slot *s = arg;
    dial(s, s->n);
    reap(s->n);
}

static void schedule_dial(cnet_slot *s, uint32_t delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(s->redial, &tv);
}

static void on_relisten(evutil_socket_t fd, short what, void *arg)
{
    cnet *n = arg;
    event_add(n->listen_ev, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    cnet *n = arg;
    for (int i = 0; i < CNET_ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                       errno == ENOMEM)) {
            /* The connection stays queued and the listener stays readable:
             * pause instead of spinning, and try again shortly. */
            cnet_logf(n, LOG_ERROR, "cnet: accept: %s (pausing 200 ms)", strerror(errno));
            event_del(n->listen_ev);
            struct timeval tv = {0, 200 * 1000};
            evtimer_add(n->relisten_ev, &tv);
            break;
        }
        if (fd < 0)
            break;
        char addr[64];
        addr_text((struct sockaddr *)&ss, addr, sizeof addr);
        if (n->npending >= CNET_MAX_PENDING) {
            n->unattributed.auth_failures++;
            cnet_logf(n, LOG_WARN, "cnet: refusing %s: %d handshakes in progress", addr,
                      CNET_MAX_PENDING);
            close(fd);
            continue;
        }
        cnet_link *l = link_new(n, fd, 0, addr);
        if (!l)
            continue;
        n->npending++;
        if (link_start(l) == 0) {
            update_events(l);
            want_flush(l);
        }
    }
    reap(n);
}

/* ---- the public API ---- */

static int listen_on(cnet *n, const char *addr)
{
    char host[256], port[8];
    if (split_addr(addr, host, sizeof host, port, sizeof port))
        return -EINVAL;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &ai) || !ai)
        return -EHOSTUNREACH;
    int rc = -EADDRNOTAVAIL;
    for (struct addrinfo *p = ai; p && n->listen_fd < 0; p = p->ai_next) {
        int fd = socket(p->ai_family, p->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, p->ai_addr, p->ai_addrlen) || listen(fd, 128)) {
            rc = -errno;
            close(fd);
            continue;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl)) {
            rc = -errno;
            close(fd);
            continue;
        }
        n->port = ntohs(ss.ss_family == AF_INET6
                            ? ((struct sockaddr_in6 *)&ss)->sin6_port
                            : ((struct sockaddr_in *)&ss)->sin_port);
        n->listen_fd = fd;
        rc = 0;
    }
    freeaddrinfo(ai);
    return rc;
}

static int check_config(const cnet_config *cfg)
{
    if (!cfg || cfg->self == 0 || cfg->n_peers > CNET_MAX_PEERS || !cfg->listen ||
        !cfg->on_frame || !cfg->secret || cfg->secret_len < CNET_MIN_SECRET ||
        cfg->secret_len > CNET_MAX_SECRET || cfg->max_frame > CNET_MAX_FRAME_LIMIT ||
        !cfg->tls_server != !cfg->tls_client)
        return -EINVAL;
    for (uint32_t i = 0; i < cfg->n_peers; i++) {
        const cnet_peer *p = &cfg->peers[i];
        if (p->id == 0 || p->id == cfg->self || !memchr(p->addr, 0, sizeof p->addr))
            return -EINVAL;
        char h[256], port[8];
        if (p->addr[0] && split_addr(p->addr, h, sizeof h, port, sizeof port))
            return -EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (cfg->peers[j].id == p->id)
                return -EINVAL;
    }
    return 0;
}

int cnet_new(struct event_base *base, const cnet_config *cfg, cnet **out)
{
    *out = NULL;
    int rc = check_config(cfg);
    if (rc || !base)
        return rc ? rc : -EINVAL;
    cnet *n = calloc(1, sizeof *n);
    if (!n)
        return -ENOMEM;
    n->base = base;
    n->self = cfg->self;
    n->n_peers = cfg->n_peers;
    n->listen_fd = -1;
    n->max_frame = cfg->max_frame ? cfg->max_frame : CNET_DEFAULT_MAX_FRAME;
    n->max_queue = cfg->max_queue ? cfg->max_queue : CNET_DEFAULT_MAX_QUEUE;
    n->on_frame = cfg->on_frame;
    n->on_peer = cfg->on_peer;
    n->log = cfg->log;
    n->arg = cfg->arg;
    if (RAND_bytes((uint8_t *)&n->rng, sizeof n->rng) != 1 || n->rng == 0)
        n->rng = 0x9e3779b97f4a7c15ull;
    n->secret = malloc(cfg->secret_len);
    n->flush_ev = event_new(base, -1, 0, flush_all, n);
    rc = -ENOMEM;
    if (!n->secret || !n->flush_ev)
        goto fail;
    event_priority_set(n->flush_ev, CNET_EVENT_PRIORITY);
    memcpy(n->secret, cfg->secret, cfg->secret_len);
    n->secret_len = cfg->secret_len;
    for (uint32_t i = 0; i < n->n_peers; i++) {
        cnet_slot *s = &n->slots[i];
        s->n = n;
        s->p = cfg->peers[i];
        s->backoff_ms = CNET_BACKOFF_MIN_MS;
        s->redial = evtimer_new(base, on_redial, s);
        if (!s->redial)
            goto fail;
    }
    rc = listen_on(n, cfg->listen);
    if (rc)
        goto fail;
    rc = -ENOMEM;
    n->listen_ev = event_new(base, n->listen_fd, EV_READ | EV_PERSIST, on_accept, n);
    n->relisten_ev = evtimer_new(base, on_relisten, n);
    if (!n->listen_ev || !n->relisten_ev || event_add(n->listen_ev, NULL))
        goto fail;
    if (cfg->tls_server) {
        SSL_CTX_up_ref(cfg->tls_server);
        SSL_CTX_up_ref(cfg->tls_client);
        n->tls_server = cfg->tls_server;
        n->tls_client = cfg->tls_client;
    }
    for (uint32_t i = 0; i < n->n_peers; i++)
        if (n->slots[i].p.id > n->self && n->slots[i].p.addr[0])
            schedule_dial(&n->slots[i], 0);
    *out = n;
    return 0;
fail:
    cnet_free(n);
    return rc;
}

int cnet_listen_port(const cnet *n) { return n->port; }

int cnet_set_peer_addr(cnet *n, uint32_t peer, const char *addr)
{
    cnet_slot *s = slot_of(n, peer);
    char h[256], port[8];
    if (!s || !addr || split_addr(addr, h, sizeof h, port, sizeof port))
        return -EINVAL;
    snprintf(s->p.addr, sizeof s->p.addr, "%s", addr);
    if (peer < n->self || s->up)
        return 0;
    /* A dial to the old address is abandoned (without counting it as an
     * authentication failure) and a new one starts on the next round. */
    if (s->dial) {
        cnet_link *l = s->dial;
        s->dial = NULL;
        l->slot = NULL;
        link_close(l, NULL);
    }
    s->backoff_ms = CNET_BACKOFF_MIN_MS;
    evtimer_del(s->redial);
    schedule_dial(s, 0);
    return 0;
}

int cnet_send(cnet *n, uint32_t peer, const uint8_t *data, size_t len)
{
    cnet_slot *s = slot_of(n, peer);
    if (!s || (!data && len))
        return -EINVAL;
    if (len > n->max_frame)
        return -EMSGSIZE;
    cnet_link *l = s->up;
    if (!l) {
        s->st.drops++;
        return -ENOTCONN;
    }
    size_t queued = evbuffer_get_length(l->out);
    if (queued > n->max_queue || 4 + len > n->max_queue - queued) {
        s->st.drops++;
        return -ENOBUFS;
    }
    uint8_t hdr[4];
    put_u32(hdr, (uint32_t)len);
    /* Room for header and payload first, so that the two appends cannot
     * fail halfway and leave a header without its payload. */
    if (evbuffer_expand(l->out, 4 + len) || evbuffer_add(l->out, hdr, 4) ||
        (len && evbuffer_add(l->out, data, len))) {
        link_close(l, "out of memory");
        return -ENOMEM;
    }
    s->st.frames_out++;
    s->st.bytes_out += len;
    want_flush(l);
    return 0;
}

int cnet_peer_is_up(const cnet *n, uint32_t peer)
{
    const cnet_slot *s = slot_of(n, peer);
    return s && s->up != NULL;
}

size_t cnet_queued(const cnet *n, uint32_t peer)
{
    const cnet_slot *s = slot_of(n, peer);
    return s && s->up ? evbuffer_get_length(s->up->out) : 0;
}

static void stats_add(cnet_stats *a, const cnet_stats *b)
{
    a->frames_out += b->frames_out;
    a->frames_in += b->frames_in;
    a->bytes_out += b->bytes_out;
    a->bytes_in += b->bytes_in;
    a->connects += b->connects;
    a->auth_failures += b->auth_failures;
    a->drops += b->drops;
    a->write_calls += b->write_calls;
    a->proto_errors += b->proto_errors;
}

void cnet_stats_get(const cnet *n, uint32_t peer, cnet_stats *out)
{
    memset(out, 0, sizeof *out);
    if (peer != 0) {
        const cnet_slot *s = slot_of(n, peer);
        if (s)
            *out = s->st;
        return;
    }
    *out = n->unattributed;
    for (uint32_t i = 0; i < n->n_peers; i++)
        stats_add(out, &n->slots[i].st);
}

void cnet_free(cnet *n)
{
    if (!n)
        return;
    n->freeing = 1;
    while (n->links)
        link_close(n->links, NULL);
    reap(n);
    for (uint32_t i = 0; i < n->n_peers; i++)
        if (n->slots[i].redial)
            event_free(n->slots[i].redial);
    if (n->listen_ev)
        event_free(n->listen_ev);
    if (n->relisten_ev)
        event_free(n->relisten_ev);
    if (n->listen_fd >= 0)
        close(n->listen_fd);
    if (n->flush_ev)
        event_free(n->flush_ev);
    if (n->tls_server)
        SSL_CTX_free(n->tls_server);
    if (n->tls_client)
        SSL_CTX_free(n->tls_client);
    if (n->secret) {
        explicit_bzero(n->secret, n->secret_len);
        free(n->secret);
    }
    free(n);
}
