/*
 * srv_harness.h — a real chatd server inside a fuzz process, for the
 * server-side targets (conn_input, frame, rest_json).
 *
 * The server is the real one: a srv with its chat state, metrics, push
 * registry, libevent base and an in-process engine (one shard, no fsync)
 * opened on a directory under fuzz_tmp_dir(). Only what srv_run() does
 * around it is replaced: no TCP listener, no signals, no tick. Connections
 * come through conn.c's own accept path on an abstract-namespace Unix
 * socket, so bytes written by a target go through conn.c's real read
 * handler (conn_event → on_readable → HTTP → REST or WebSocket → gateway),
 * and what the server writes is read back from the client end. The engine's
 * results come back through srv_append's inbox exactly as in srv.c (the
 * harness has its own copy of srv.c's on_commit and on_wake, which are
 * static there).
 *
 * The server is opened on the first input of a process, never in
 * LLVMFuzzerInitialize: the corpus replay forks a child per file, and a
 * forked child has none of the engine's threads. It is reused across inputs
 * and torn down and reopened on a fresh directory every FSRV_RESET_EVERY
 * inputs, so that the log, the index and the chat state stay bounded. Each
 * input starts from the same conversations (fsrv_begin):
 *
 *   FSRV_GROUP  (100)  group, members 1, 2, 3, creator 1
 *   FSRV_OTHER  (101)  group, members 2, 3, creator 2 (user 1 not a member)
 *   fsrv_direct_id()   direct conversation of users 1 and 2
 *
 * Tokens: fsrv_token(u) is an HS256 token for user u (1..3) signed with
 * the harness's fixed secret, issued at 1700000000 and valid until
 * 4102444800 (2100-01-01), so the same string works in committed seeds.
 *
 * Checkers (fsrv_check_*) abort through FUZZ_CHECK when the server's output
 * is not well-formed.
 */
#ifndef CHATLOG_FUZZ_SRV_HARNESS_H
#define CHATLOG_FUZZ_SRV_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "chatd.h"

#define FSRV_GROUP 100
#define FSRV_OTHER 101
#define FSRV_RESET_EVERY 5000
#define FSRV_SECRET "chatlog-fuzz-secret-0123456789"

/* Pieces of an input are separated by these 4 bytes (0xF5 never occurs in
 * UTF-8). conn_input: chunks as they arrive; frame: one ClientFrame each;
 * rest_json: one request each. */
#define FSRV_SEP "\xf5" "CUT"
#define FSRV_SEP_LEN 4
#define FSRV_MAX_PIECES 64

typedef struct fsrv_piece {
    const uint8_t *p;
    size_t n;
} fsrv_piece;

/* Split data at FSRV_SEP into at most FSRV_MAX_PIECES pieces (the last one
 * takes the rest). Returns the count (at least 1). */
size_t fsrv_split(const uint8_t *data, size_t size, fsrv_piece *out);

/* A growable byte buffer (what a client received). */
typedef struct fbuf {
    uint8_t *p;
    size_t n, cap;
} fbuf;
void fbuf_free(fbuf *b);

/* The server, opened on first use; counts inputs and resets the server
 * every FSRV_RESET_EVERY of them. Call once at the start of each input. */
srv *fsrv_begin(void);
/* Close every connection (after the engine has answered everything) and
 * check that nothing of the input is left behind. End of each input. */
void fsrv_end(srv *s);

const char *fsrv_token(int uid);
uint64_t fsrv_direct_id(void);

/* A client connection: fd is our end; conn_id the server's conn. */
typedef struct fsrv_client {
    int fd;
    uint64_t conn_id;
    fbuf out; /* everything the server wrote to it */
} fsrv_client;

/* Connect and let the server accept. */
void fsrv_connect(srv *s, fsrv_client *cl);
/* The server's conn of cl, NULL once closed. */
conn *fsrv_conn(srv *s, const fsrv_client *cl);
/* Write bytes as one arrival (a single write) and run the server until it
 * has read them and the engine has answered every append (fsrv_settle). */
void fsrv_write(srv *s, fsrv_client *cl, const void *p, size_t n);
/* Run the event loop until the server has read everything written to it,
 * the engine has answered every append and no output is pending; reads
 * what the server wrote into cl->out. */
void fsrv_settle(srv *s, fsrv_client *cl);
/* Close our end (the server sees EOF on its next read). */
void fsrv_hangup(fsrv_client *cl);

/* A masked client frame (FIN set, mask key 0, so the payload reads as
 * plain bytes) into out (n + 14 bytes); returns its length. */
size_t fsrv_ws_frame(uint8_t *out, int opcode, const void *payload, size_t n);
/* Connect, upgrade to chat.v1 and say Hello as user (1..3); checks the 101
 * and the Welcome, then clears cl->out. */
void fsrv_ws_session(srv *s, fsrv_client *cl, int uid);

/* Run the loop until every append is answered (no client). */
void fsrv_pump(srv *s);

/* ---- output checkers ---- */

/* What the checker knows of the request a response answers. */
typedef struct fsrv_req {
    int kind;   /* FSRV_RQ_* */
    int status; /* FSRV_RQ_BAD: the status the server must answer */
    int head;   /* HEAD: the response has no body */
} fsrv_req;
enum {
    FSRV_RQ_OTHER = 0,
    FSRV_RQ_BAD = 1,     /* refused before routing */
    FSRV_RQ_HEALTHZ = 2, /* GET/HEAD /healthz */
    FSRV_RQ_API = 3,     /* /api/... */
    FSRV_RQ_WS = 4,      /* /ws: 101 or an error, then nothing more */
    FSRV_RQ_ANY = 5,     /* from here on: any well-formed responses */
};

/* One parsed HTTP response. */
typedef struct fsrv_resp {
    int status;
    const uint8_t *body;
    size_t blen;
    char ctype[128];
    int has_clen;
    int close; /* Connection: close */
} fsrv_resp;

/* Parse one response at p[0..n): strict status line, header lines,
 * Content-Length (required except for 101 and 204; a HEAD response's body
 * is empty whatever it says). Returns its length, 0 when p is empty, and
 * fails the input on anything malformed or cut short. */
size_t fsrv_parse_response(const uint8_t *p, size_t n, int head, fsrv_resp *r);

/* Check a JSON API response: body is valid JSON; an error (status >= 400)
 * is exactly {"error":{"code":N,"name":gw_error_name(N),"message":"..."}}
 * with a known code (rest: 1..9; else code 0 named "http" is allowed too,
 * conn.c's plain HTTP errors); 204 has no body; other successes are JSON
 * objects. */
void fsrv_check_api_response(const fsrv_resp *r, int rest);

/* Check a stream of server WebSocket frames: unmasked, FIN set, RSV clear,
 * binary / close / ping / pong only, control payloads <= 125, a close frame
 * last with a valid code and UTF-8 reason; each frame, masked, is accepted
 * by our own decoder (ws_parse) with the same opcode and payload; every
 * binary message decodes as a chat.v1 ServerFrame with exactly one kind,
 * and every Error carries a known code. cb (may be NULL) sees each decoded
 * ServerFrame. Returns the number of binary messages. */
size_t fsrv_check_ws_stream(const uint8_t *p, size_t n,
                            void (*cb)(void *arg, const void *server_frame),
                            void *arg);

#endif
