/*
 * cnet.h — the node-to-node transport of the chatd cluster: opaque frames
 * (the caller's protobuf) between the nodes of a cluster of up to 8 nodes
 * (this one and CNET_MAX_PEERS others), on the caller's libevent event_base.
 *
 * Threads: single-threaded. Every function must be called on the loop thread
 * of the event_base given to cnet_new, and every callback runs there.
 *
 * Links: exactly one TCP connection per node pair carries all frames (every
 * shard). The node with the smaller id dials the larger one; the larger one
 * only accepts. While a link is down the dialer redials with exponential
 * backoff (50 ms doubling to 1 s, jittered). Both ends prove knowledge of the
 * shared cluster secret (HMAC-SHA256 over both nodes' random nonces) before
 * any frame passes; a newly authenticated connection from a peer replaces
 * the old one (the peer restarted). The wire format and the handshake are
 * specified byte by byte at the top of cnet.c and in docs/cluster.md
 * ("Transport").
 *
 * Delivery: frames sent on one link arrive in order, whole, at most once.
 * Nothing is retransmitted: frames queued while a link is down, or still
 * queued when it goes down, are lost (Raft retransmits). A frame delivered
 * to on_frame has been received completely; a frame cnet_send accepted may
 * still be lost if the link breaks before the peer reads it.
 *
 * TLS: with tls_server and tls_client set, every link runs TLS (the dialer
 * is the TLS client) and the secret handshake runs inside it. Certificate
 * verification is whatever the caller configured in the SSL_CTXs: cnet sets
 * no verify mode, no host name and no SNI. Node identity is established by
 * the secret handshake, not by certificates; to also authenticate at the TLS
 * level, give tls_client SSL_VERIFY_PEER and the cluster's CA (or the
 * pinned certificate) and, for client certificates, give tls_server
 * SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT and a certificate for
 * tls_client. Without TLS, frames are authenticated only at connection time:
 * they are neither encrypted nor integrity-protected on the wire, so plain
 * TCP is for trusted networks only. OpenSSL writes to the socket with
 * write(2), so with TLS the process must ignore SIGPIPE (chatd does, in
 * srv.c); plain links use MSG_NOSIGNAL and do not need it.
 *
 * Errors: 0 on success, a negative errno value on failure.
 */
#ifndef CHATLOG_CNET_H
#define CHATLOG_CNET_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;

typedef struct cnet cnet;

/* Other members of one cluster: a cluster has at most CNET_MAX_PEERS + 1
 * nodes. */
#define CNET_MAX_PEERS 7
/* The libevent priority of the links' events (0: the highest). When the
 * caller's event_base has several priorities (event_base_priority_init),
 * node traffic (Raft heartbeats and answers) is served before events of a
 * lower priority, so a node busy with clients does not miss heartbeats and
 * start needless elections. With one priority it changes nothing. */
#define CNET_EVENT_PRIORITY 0
/* The shared secret: at least CNET_MIN_SECRET bytes, at most CNET_MAX_SECRET. */
#define CNET_MIN_SECRET 16
#define CNET_MAX_SECRET 4096
#define CNET_DEFAULT_MAX_FRAME (64u << 20)
#define CNET_DEFAULT_MAX_QUEUE (256u << 20)
/* The largest max_frame accepted (a frame length must fit the 4-byte
 * header with room to spare). */
#define CNET_MAX_FRAME_LIMIT (1u << 30)
/* Time a connection has to complete TCP connect, TLS and the secret
 * handshake before it is closed. */
#define CNET_HANDSHAKE_TIMEOUT_MS 5000
/* Accepted connections still in their handshake, at most; more are closed
 * at once. */
#define CNET_MAX_PENDING 32
/* Redial backoff while a link is down: the n-th consecutive attempt waits a
 * random time in [d/2, d] with d = min(MIN << n, MAX). */
#define CNET_BACKOFF_MIN_MS 50
#define CNET_BACKOFF_MAX_MS 1000

typedef struct cnet_peer {
    uint32_t id;    /* non-zero, unique, not the config's self */
    char addr[256]; /* "host:port" or "[v6]:port"; "" = not known yet (no
                       dialing until cnet_set_peer_addr) */
} cnet_peer;

typedef struct cnet_config {
    uint32_t self;       /* this node's id (non-zero) */
    const char *listen;  /* "host:port" to accept peers on ("127.0.0.1:0" =
                            any free port, see cnet_listen_port) */
    uint32_t n_peers;    /* the OTHER members, at most CNET_MAX_PEERS */
    cnet_peer peers[CNET_MAX_PEERS];
    /* Shared cluster secret, CNET_MIN_SECRET..CNET_MAX_SECRET bytes. Copied
     * by cnet_new (and wiped by cnet_free); the caller keeps its own. */
    const uint8_t *secret;
    size_t secret_len;
    /* Both NULL: plain TCP. Both set: TLS both ways (tls_client when
     * dialing, tls_server when accepting). cnet_new takes a reference on
     * each (SSL_CTX_up_ref) and drops it in cnet_free, so the caller may
     * free its own at any time. */
    SSL_CTX *tls_server, *tls_client;
    /* Largest frame payload, both ways: cnet_send refuses a larger one with
     * -EMSGSIZE and a peer announcing a larger one loses its link. 0:
     * CNET_DEFAULT_MAX_FRAME; at most CNET_MAX_FRAME_LIMIT. Use the same
     * value on every node. */
    size_t max_frame;
    /* Bytes (frames with their 4-byte headers) queued to one peer and not
     * yet taken by the kernel before cnet_send refuses with -ENOBUFS. 0:
     * CNET_DEFAULT_MAX_QUEUE. This bounds the memory a peer that stops
     * reading can cost. */
    size_t max_queue;
    /* A frame from an authenticated peer. data (len bytes, len may be 0) is
     * valid only during the call. May call cnet_send and the other
     * functions, but not cnet_free. Required. */
    void (*on_frame)(void *arg, uint32_t peer, const uint8_t *data, size_t len);
    /* The authenticated link to peer went up (up = 1) or down (up = 0).
     * Calls alternate per peer, starting with up; a link replaced by a newer
     * one gives a down then an up. May be NULL. Same rules as on_frame. */
    void (*on_peer)(void *arg, uint32_t peer, int up);
    /* Diagnostics (auth failures with the peer's address, links up and
     * down). level: engine/log.h enum log_level (LOG_DEBUG..LOG_ERROR).
     * msg is valid during the call. May be NULL. Must not call cnet. */
    void (*log)(void *arg, int level, const char *msg);
    void *arg;
} cnet_config;

/* Create a node: validate cfg, copy it, bind and listen on cfg->listen at
 * once, and start dialing the peers with larger ids whose addresses are
 * known (from the loop: nothing happens before the loop runs, and no
 * callback runs inside cnet_new). On success *out owns the node; free it
 * with cnet_free.
 * Errors: -EINVAL (self 0, more than CNET_MAX_PEERS peers, a peer id 0,
 * equal to self or repeated, a malformed address, secret too short or too
 * long, only one of the TLS contexts, max_frame above CNET_MAX_FRAME_LIMIT,
 * on_frame NULL), -ENOMEM, -errno of socket/bind/listen (-EADDRINUSE...), or
 * -EHOSTUNREACH when the listen host does not resolve. */
int cnet_new(struct event_base *base, const cnet_config *cfg, cnet **out);

/* The port the node listens on (the one picked for ":0"). */
int cnet_listen_port(const cnet *n);

/* Set a peer's address ("host:port"; names are resolved with getaddrinfo on
 * the loop thread at each dial, so prefer numeric addresses). For peers we
 * dial: a dial in progress is abandoned and a new one starts at once with
 * the backoff reset; an up link is kept (the address is used next time).
 * Errors: -EINVAL (unknown peer, malformed or too long address). */
int cnet_set_peer_addr(cnet *n, uint32_t peer, const char *addr);

/* Queue one frame of len bytes (copied; data may be NULL when len is 0) to
 * peer. Frames queued during one loop round are written together after the
 * current callback returns (one write syscall for many frames).
 * Errors: -EINVAL (peer is not a member), -EMSGSIZE (len > max_frame),
 * -ENOTCONN (no authenticated link: dropped), -ENOBUFS (the peer's queue
 * would exceed max_queue: dropped), -ENOMEM. Dropped frames count in
 * cnet_stats.drops. */
int cnet_send(cnet *n, uint32_t peer, const uint8_t *data, size_t len);

/* 1 if the authenticated link to peer is up, else 0 (also for a peer that
 * is not a member). */
int cnet_peer_is_up(const cnet *n, uint32_t peer);

/* Bytes queued to peer and not yet taken by the kernel (frames with their
 * headers; at most max_queue plus the handshake's few bytes). 0 when the
 * link is down or peer is not a member. Lets a caller slow down before
 * cnet_send refuses. */
size_t cnet_queued(const cnet *n, uint32_t peer);

typedef struct cnet_stats {
    uint64_t frames_out;    /* frames accepted by cnet_send */
    uint64_t frames_in;     /* frames delivered to on_frame */
    uint64_t bytes_out;     /* payload bytes of frames_out (no headers) */
    uint64_t bytes_in;      /* payload bytes of frames_in */
    uint64_t connects;      /* links that completed authentication */
    uint64_t auth_failures; /* handshakes refused or failed: bad magic,
                               version, unknown or own id, wrong proof, TLS
                               failure, timeout */
    uint64_t drops;         /* frames cnet_send refused (-ENOTCONN,
                               -ENOBUFS) */
    uint64_t write_calls;   /* write/writev/SSL_write calls on links, the
                               handshake included */
    uint64_t proto_errors;  /* authenticated links closed for a bad frame
                               length */
} cnet_stats;

/* Counters for one peer, or with peer 0 the node's totals, which also hold
 * what could not be attributed to a member (a connection claiming an unknown
 * id, garbage). A peer that is not a member gives zeros. */
void cnet_stats_get(const cnet *n, uint32_t peer, cnet_stats *out);

/* Close every connection and free everything, including the copy of the
 * secret (wiped). No callback runs during or after it. NULL is ignored. Must
 * not be called from inside a cnet callback. */
void cnet_free(cnet *n);

#endif
