/*
 * conn_input.c — fuzz target: bytes as they arrive on a client connection,
 * through conn.c's real input handling, with a real server and engine
 * (fuzz/srv_harness.h): HTTP request parsing, routing, REST (with the
 * engine answering appends), /healthz and /metrics, the WebSocket upgrade,
 * WebSocket frames, the chat.v1 gateway (Hello with a real token, Send,
 * Sync, ...).
 *
 * Input: the bytes the client sends, cut into arrivals at each FSRV_SEP
 * ("\xf5CUT", not part of the stream): each arrival is one write on the
 * client socket, and the server runs until it has read it and the engine
 * has answered every append before the next one is written. So the fuzzer
 * chooses where requests and frames are split (inside a request line,
 * between a WebSocket header and its mask, ...). Seeds carry valid tokens
 * (srv_harness.h), WebSocket frames with a zero mask key so their payload
 * is plain protobuf, and the conversations of the harness's baseline.
 *
 * Properties checked on what the server writes back, besides no crash,
 * leak or hang:
 *   - a sequence of HTTP responses, each with a strict status line
 *     ("HTTP/1.1 " and 3 digits), well-formed header lines, a
 *     Content-Length that matches the bytes that follow (none on HEAD);
 *   - the responses answer the requests in order: the target parses the
 *     same bytes with http_parse_head, as conn.c does, and knows for each
 *     response which request it answers — a refused request gets its
 *     status (400/413/431/501/505) and nothing follows; /healthz gets
 *     {"ok":true}; /api/ gets JSON with the error shape of
 *     fsrv_check_api_response; after "Connection: close" nothing follows;
 *   - a connection still open for HTTP has answered every whole request;
 *   - after a 101 the rest is WebSocket frames that our own decoder
 *     accepts, each binary message a ServerFrame, every Error with a known
 *     code, nothing after a close frame (fsrv_check_ws_stream).
 * At the end the client hangs up, and the server must end up with no
 * connection and no append in flight. FUZZ_VERBOSE=1 prints what the server
 * wrote.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "media.h"
#include "srv_harness.h"

#define MAX_REQS 512 /* and one for FSRV_RQ_ANY */

/* How many of the mirrored requests are whole (each must be answered while
 * the connection stays open): all but an upload cut short. */
static size_t mirror_whole;

/* The requests in the stream as conn.c will see them. */
static size_t mirror(srv *s, const uint8_t *in, size_t n, fsrv_req *reqs)
{
    size_t max_head = s->cfg.max_head_bytes, used = 0, k = 0;
    char *h = malloc(max_head + 1);
    FUZZ_CHECK(h != NULL, "oom");
    while (used < n && k < MAX_REQS - 1) {
        size_t m = n - used;
        if (m > max_head)
            m = max_head;
        memcpy(h, in + used, m);
        h[m] = 0;
        http_req r;
        int hl = http_parse_head(h, m, max_head, &r);
        if (hl == 0)
            break;
        fsrv_req *q = &reqs[k];
        memset(q, 0, sizeof *q);
        if (hl < 0) {
            q->kind = FSRV_RQ_BAD;
            q->status = -hl;
            k++;
            break;
        }
        int get = !strcmp(r.method, "GET"), head = !strcmp(r.method, "HEAD");
        q->head = head; /* whatever the answer, a HEAD gets no body */
        if (r.content_length > media_body_limit(s, &r)) {
            q->kind = FSRV_RQ_BAD;
            q->status = 413;
            k++;
            break;
        }
        if (!strcmp(r.method, "POST") && !strcmp(r.path, "/api/v1/media")) {
            /* A streaming upload (conn.c): refused as soon as its head is
             * read (then with Connection: close), or answered once its
             * body, Content-Length or chunked, is complete. */
            q->kind = FSRV_RQ_API;
            k++;
            size_t end = used + (size_t)hl;
            int complete = 0;
            if (r.chunked) {
                http_chunked d;
                http_chunked_init(&d);
                while (end < n && !http_chunked_done(&d)) {
                    int is_data;
                    int64_t st = http_chunked_step(&d, in + end, n - end, &is_data);
                    if (st <= 0)
                        break;
                    end += (size_t)st;
                }
                complete = http_chunked_done(&d);
            } else if ((size_t)hl + r.content_length <= n - used) {
                end += (size_t)r.content_length;
                complete = 1;
            }
            if (!complete) {
                /* Cut short or malformed framing: what follows is not
                 * mirrored, any well-formed responses. */
                mirror_whole = k - 1;
                memset(&reqs[k], 0, sizeof reqs[k]);
                reqs[k++].kind = FSRV_RQ_ANY;
                free(h);
                return k;
            }
            used = end;
            if (!r.keep_alive)
                break;
            continue;
        }
        if (r.chunked) {
            q->kind = FSRV_RQ_BAD;
            q->status = 411; /* chunked bodies only for uploads */
            k++;
            break;
        }
        if ((size_t)hl + r.content_length > n - used)
            break;
        used += (size_t)hl + (size_t)r.content_length;
        k++;
        if (!strcmp(r.path, "/ws")) {
            q->kind = FSRV_RQ_WS;
            break;
        }
        if (!strncmp(r.path, "/api/", 5))
            q->kind = FSRV_RQ_API;
        else if ((get || head) && !strcmp(r.path, "/healthz"))
            q->kind = FSRV_RQ_HEALTHZ;
        else
            q->kind = FSRV_RQ_OTHER;
        if (!r.keep_alive || (!get && !head && q->kind == FSRV_RQ_OTHER))
            break; /* the server closes after it */
    }
    free(h);
    mirror_whole = k;
    return k;
}

/* Returns how many requests were answered (those before FSRV_RQ_ANY). */
static size_t check_output(const uint8_t *p, size_t n, const fsrv_req *reqs, size_t nreqs)
{
    size_t off = 0, i = 0;
    while (off < n) {
        FUZZ_CHECK(i < nreqs, "response %zu answers no request", i);
        const fsrv_req *q = &reqs[i];
        fsrv_resp r;
        size_t used = fsrv_parse_response(p + off, n - off, q->head, &r);
        off += used;
        switch (q->kind) {
        case FSRV_RQ_BAD:
            FUZZ_CHECK(r.status == q->status, "request %zu refused with %d, expected %d", i,
                       r.status, q->status);
            FUZZ_CHECK(off == n, "output after a refused request");
            break;
        case FSRV_RQ_HEALTHZ:
            FUZZ_CHECK(r.status == 200 && (q->head ? r.blen == 0
                                                   : r.blen == 11 &&
                                                         !memcmp(r.body, "{\"ok\":true}", 11)),
                       "request %zu (/healthz) answered %d", i, r.status);
            break;
        case FSRV_RQ_API:
            if (!q->head)
                fsrv_check_api_response(&r, 0);
            break;
        case FSRV_RQ_WS:
            if (r.status == 101) {
                fsrv_check_ws_stream(p + off, n - off, NULL, NULL);
                return i + 1;
            }
            FUZZ_CHECK(r.status >= 400, "/ws answered %d", r.status);
            FUZZ_CHECK(off == n, "output after a refused upgrade");
            break;
        case FSRV_RQ_ANY:
            if (r.status == 101) {
                fsrv_check_ws_stream(p + off, n - off, NULL, NULL);
                return i;
            }
            if (!q->head && !strncmp(r.ctype, "application/json", 16))
                fsrv_check_api_response(&r, 0);
            if (r.close)
                FUZZ_CHECK(off == n, "%zu bytes after a Connection: close response", n - off);
            continue; /* matches every response from here on */
        default:
            FUZZ_CHECK(r.status >= 200, "status %d", r.status);
            if (!q->head && !strncmp(r.ctype, "application/json", 16))
                fsrv_check_api_response(&r, 0);
            break;
        }
        if (r.close)
            FUZZ_CHECK(off == n, "%zu bytes after a Connection: close response", n - off);
        i++;
    }
    return i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    srv *s = fsrv_begin();
    static fsrv_piece pieces[FSRV_MAX_PIECES];
    size_t np = fsrv_split(data, size, pieces);

    /* The stream without the separators, for the mirror. */
    uint8_t *stream = malloc(size ? size : 1);
    FUZZ_CHECK(stream != NULL, "oom");
    size_t slen = 0;
    for (size_t i = 0; i < np; i++) {
        memcpy(stream + slen, pieces[i].p, pieces[i].n);
        slen += pieces[i].n;
    }
    static fsrv_req reqs[MAX_REQS];
    size_t nreqs = mirror(s, stream, slen, reqs);

    fsrv_client cl;
    fsrv_connect(s, &cl);
    for (size_t i = 0; i < np && fsrv_conn(s, &cl); i++)
        if (pieces[i].n)
            fsrv_write(s, &cl, pieces[i].p, pieces[i].n);
    fsrv_settle(s, &cl);
    if (getenv("FUZZ_VERBOSE")) { /* what the server wrote, for a reproducer */
        fwrite(cl.out.p, 1, cl.out.n, stderr);
        fprintf(stderr, "\n-- %zu bytes, %zu requests mirrored\n", cl.out.n, nreqs);
    }
    size_t answered = check_output(cl.out.p, cl.out.n, reqs, nreqs);
    /* A connection still open for HTTP owes an answer to every request it
     * has whole (the server closes after a refusal or Connection: close). */
    conn *c = fsrv_conn(s, &cl);
    if (c && c->state == CS_HTTP && !c->close_after_flush && !c->lingering)
        FUZZ_CHECK(answered >= mirror_whole,
                   "%zu of %zu whole requests answered on an open connection", answered,
                   mirror_whole);

    fsrv_hangup(&cl);
    for (int k = 0; k < 8 && fsrv_conn(s, &cl); k++)
        fsrv_settle(s, &cl);
    fsrv_end(s);
    fbuf_free(&cl.out);
    free(stream);
    return 0;
}
