/*
 * frame.c — fuzz target: arbitrary ClientFrame bytes into the chat.v1
 * gateway (gw_on_message) of a logged-in session, with a real server and
 * engine (fuzz/srv_harness.h).
 *
 * Set-up per input: user 1 connects, upgrades and says Hello with a valid
 * token through the real connection path (fsrv_ws_session); the conversations
 * are the harness's baseline (100: group of 1, 2, 3; 101: a group without
 * user 1; the direct conversation of 1 and 2).
 *
 * Input: byte 0 is flags, the rest is cut at each FSRV_SEP into frames
 * (each the payload of one binary WebSocket message):
 *   bit 0  run the engine to completion after each frame (else the frames
 *          go in back to back, and Sync/Receipt meet Sends still in flight);
 *   bit 1  a second device of user 1 is connected (fan-out, presence);
 *   bit 2  user 2 is connected (fan-out of messages, receipts, typing).
 * Each frame goes through gw_on_message exactly as conn.c's WebSocket
 * callback passes it, then conn_flush_all as at the end of an event.
 *
 * Properties, on everything each connected device receives: frames that our
 * own decoder accepts, each binary message a ServerFrame with one kind,
 * every Error with a known code (fsrv_check_ws_stream); and every Send with
 * a client_msg_id of 1..64 bytes is answered on the session exactly once,
 * by an Ack or an Error carrying that client_msg_id.
 */
#include <stdlib.h>
#include <string.h>

#include "chat.pb-c.h"
#include "common.h"
#include "srv_harness.h"

#define MAX_KEYS FSRV_MAX_PIECES

typedef struct keys {
    char k[MAX_KEYS][65];
    int want[MAX_KEYS], got[MAX_KEYS];
    int n;
} keys;

static int key_slot(keys *t, const char *k, int add)
{
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->k[i], k))
            return i;
    if (!add || t->n == MAX_KEYS)
        return -1;
    snprintf(t->k[t->n], sizeof t->k[0], "%s", k);
    t->want[t->n] = t->got[t->n] = 0;
    return t->n++;
}

static void count_answers(void *arg, const void *frame)
{
    keys *t = arg;
    const Chat__V1__ServerFrame *f = frame;
    const char *k = NULL;
    if (f->kind_case == CHAT__V1__SERVER_FRAME__KIND_ACK)
        k = f->ack->client_msg_id;
    else if (f->kind_case == CHAT__V1__SERVER_FRAME__KIND_ERROR)
        k = f->error->client_msg_id;
    if (!k || !*k)
        return;
    int i = key_slot(t, k, 0);
    FUZZ_CHECK(i >= 0, "an answer for client_msg_id \"%s\", never sent", k);
    t->got[i]++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    srv *s = fsrv_begin();
    int flags = data[0];
    static fsrv_piece pieces[FSRV_MAX_PIECES];
    size_t np = fsrv_split(data + 1, size - 1, pieces);

    fsrv_client me, other = {.fd = -1}, peer = {.fd = -1};
    fsrv_ws_session(s, &me, 1);
    if (flags & 2)
        fsrv_ws_session(s, &other, 1);
    if (flags & 4)
        fsrv_ws_session(s, &peer, 2);

    static keys t;
    t.n = 0;
    for (size_t i = 0; i < np; i++) {
        conn *c = fsrv_conn(s, &me);
        if (!c)
            break;
        Chat__V1__ClientFrame *f =
            chat__v1__client_frame__unpack(NULL, pieces[i].n, pieces[i].p);
        if (f && f->kind_case == CHAT__V1__CLIENT_FRAME__KIND_SEND && f->send->client_msg_id) {
            size_t kl = strlen(f->send->client_msg_id);
            if (kl >= 1 && kl <= 64) {
                int k = key_slot(&t, f->send->client_msg_id, 1);
                if (k >= 0)
                    t.want[k]++;
            }
        }
        if (f)
            chat__v1__client_frame__free_unpacked(f, NULL);
        /* As conn.c's ws_cb passes a binary message: data is never NULL. */
        gw_on_message(c, pieces[i].n ? pieces[i].p : (const uint8_t *)"", pieces[i].n);
        conn_flush_all(s);
        if (flags & 1)
            fsrv_settle(s, &me);
    }
    fsrv_settle(s, &me);
    if (other.fd >= 0)
        fsrv_settle(s, &other);
    if (peer.fd >= 0)
        fsrv_settle(s, &peer);

    fsrv_check_ws_stream(me.out.p, me.out.n, count_answers, &t);
    if (fsrv_conn(s, &me))
        for (int i = 0; i < t.n; i++)
            FUZZ_CHECK(t.got[i] == t.want[i],
                       "client_msg_id \"%s\": %d Sends, %d Acks or Errors", t.k[i], t.want[i],
                       t.got[i]);
    if (other.fd >= 0)
        fsrv_check_ws_stream(other.out.p, other.out.n, NULL, NULL);
    if (peer.fd >= 0)
        fsrv_check_ws_stream(peer.out.p, peer.out.n, NULL, NULL);

    fsrv_hangup(&me);
    fsrv_hangup(&other);
    fsrv_hangup(&peer);
    fsrv_end(s);
    fbuf_free(&me.out);
    fbuf_free(&other.out);
    fbuf_free(&peer.out);
    return 0;
}
