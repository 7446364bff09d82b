/*
 * gateway.c — chat.v1 sessions over WebSocket (docs/protocol.md).
 *
 * A session: Hello (JWT) → Welcome; then Send / Receipt / Typing / Sync /
 * Presence / Ping in any order. Writes go to the log through srv_append;
 * nothing is answered as done until the engine says the record is durable.
 * Delivery is driven by the stream of committed records (gw_on_commit): each
 * committed message is encoded once into a blob that every connected device
 * of every member shares, so the same path will serve a follower node
 * delivering from its replicated stream.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "chat.pb-c.h"
#include "chatd.h"
#include "cluster.h"
#include "log.pb-c.h"
#include "metrics.h"
#include "push.h"
#include "raft.h"
#include "state.h"

#define MAX_CLIENT_MSG_ID 64
#define MAX_MEDIA_URL 2048
#define SYNC_DEFAULT 100
#define SYNC_MAX 500

const char *gw_error_name(int code)
{
    switch (code) {
    case GW_EBADFRAME: return "bad_frame";
    case GW_ENOTMEMBER: return "not_member";
    case GW_ENOTFOUND: return "not_found";
    case GW_ETOOLARGE: return "too_large";
    case GW_ERATELIMITED: return "rate_limited";
    case GW_EOVERLOADED: return "overloaded";
    case GW_EUNAUTHORIZED: return "unauthorized";
    case GW_EINTERNAL: return "internal";
    case GW_ECONFLICT: return "conflict";
    case GW_EUNAVAILABLE: return "unavailable";
    }
    return "?";
}

int bucket_take(bucket *b, double rate, double burst, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * rate / 1000.0;
        if (b->tokens > burst)
            b->tokens = burst;
        b->last_ms = now_ms;
    }
    if (b->tokens < 1.0)
        return 0;
    b->tokens -= 1.0;
    return 1;
}

/* ---- frames out ---- */

/* Encode a ServerFrame as one binary WebSocket message in a new blob. */
static blob *frame_blob(const Chat__V1__ServerFrame *f)
{
    size_t n = chat__v1__server_frame__get_packed_size(f);
    uint8_t hdr[10];
    size_t h = ws_frame_header(hdr, WS_OP_BINARY, n);
    blob *b = blob_new(h + n);
    if (!b)
        return NULL;
    memcpy(b->data, hdr, h);
    chat__v1__server_frame__pack(f, b->data + h);
    return b;
}

static void send_frame(conn *c, const Chat__V1__ServerFrame *f)
{
    blob *b = frame_blob(f);
    if (!b) {
        conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    c->srv->met->frames_out++;
    conn_send_blob(c, b);
    blob_unref(b);
}

static void send_error(conn *c, int code, const char *msg, const char *cmid)
{
    Chat__V1__Error e = CHAT__V1__ERROR__INIT;
    e.code = (uint32_t)code;
    e.message = (char *)msg;
    e.client_msg_id = (char *)(cmid ? cmid : "");
    Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_ERROR;
    f.error = &e;
    if (code > 0 && code < 16)
        c->srv->met->errors_by_code[code]++;
    send_frame(c, &f);
}

/* Queue b on every connected device of the conversation's members, except
 * those in skip[]. */
static void fan_out(srv *s, const convo *cv, blob *b, const uint64_t *skip,
                    uint32_t nskip, uint64_t skip_user)
{
    for (uint32_t i = 0; i < cv->nmembers; i++) {
        if (cv->members[i].user_id == skip_user)
            continue;
        user *u = st_user(s->st, cv->members[i].user_id, 0);
        for (conn *d = u ? u->devices : NULL, *next; d; d = next) {
            next = d->next_dev;
            int skipped = 0;
            for (uint32_t k = 0; k < nskip && !skipped; k++)
                skipped = skip[k] == d->id;
            if (skipped || d->state != CS_READY)
                continue;
            s->met->frames_out++;
            conn_send_blob(d, b);
        }
    }
}

/* ---- presence ---- */

/* Sessions on this node and, in a cluster, on the others. */
static int user_state(srv *s, const user *u)
{
    uint32_t devices, away;
    cluster_remote_devices(s, u->user_id, &devices, &away);
    devices += u->ndevices;
    away += u->naway;
    if (devices == 0)
        return CHAT__V1__PRESENCE__STATE__OFFLINE;
    return away == devices ? CHAT__V1__PRESENCE__STATE__AWAY
                           : CHAT__V1__PRESENCE__STATE__ONLINE;
}

/* Call fn for every user sharing a conversation with u (u excluded). */
static void each_contact(srv *s, user *u, void (*fn)(srv *, user *, void *),
                         void *arg)
{
    u64map seen = {0};
    for (uint32_t i = 0; i < u->nconvs; i++) {
        convo *cv = st_conv(s->st, u->convs[i]);
        for (uint32_t k = 0; cv && k < cv->nmembers; k++) {
            uint64_t id = cv->members[k].user_id;
            if (id == u->user_id || map_get(&seen, id))
                continue;
            map_put(&seen, id, (void *)1);
            user *o = st_user(s->st, id, 0);
            if (o)
                fn(s, o, arg);
        }
    }
    map_free(&seen);
}

static void send_blob_to_user(srv *s, user *o, void *arg)
{
    for (conn *d = o->devices; d; d = d->next_dev)
        if (d->state == CS_READY) {
            s->met->frames_out++;
            conn_send_blob(d, arg);
        }
}

static blob *presence_blob(srv *s, const user *u)
{
    Chat__V1__Presence p = CHAT__V1__PRESENCE__INIT;
    p.user_id = u->user_id;
    p.state = user_state(s, u);
    p.last_seen_ms = u->last_seen_ms;
    Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_PRESENCE;
    f.presence = &p;
    return frame_blob(&f);
}

static void broadcast_presence(srv *s, user *u)
{
    blob *b = presence_blob(s, u);
    if (!b)
        return;
    each_contact(s, u, send_blob_to_user, b);
    blob_unref(b);
}

/* Tell a newly connected device who of its contacts is online. */
static void presence_to_conn(srv *s, user *o, void *arg)
{
    if (user_state(s, o) == CHAT__V1__PRESENCE__STATE__OFFLINE)
        return;
    blob *b = presence_blob(s, o);
    if (b) {
        conn_send_blob(arg, b);
        blob_unref(b);
    }
}

/* ---- typing ---- */

typedef struct typing_ent {
    uint64_t conv_id, user_id;
    int64_t expires_ms;
} typing_ent;

static typing_ent *typings;
static uint32_t ntypings, captypings;

/* To this node's sessions only. */
static void relay_typing_local(srv *s, const convo *cv, uint64_t uid, int active)
{
    Chat__V1__Typing t = CHAT__V1__TYPING__INIT;
    t.conv_id = cv->conv_id;
    t.user_id = uid;
    t.active = active;
    Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_TYPING;
    f.typing = &t;
    blob *b = frame_blob(&f);
    if (b) {
        fan_out(s, cv, b, NULL, 0, uid);
        blob_unref(b);
    }
}

/* To every session, on this node and the others. */
static void relay_typing(srv *s, const convo *cv, uint64_t uid, int active)
{
    relay_typing_local(s, cv, uid, active);
    cluster_typing(s, cv->conv_id, uid, active);
}

void gw_remote_typing(srv *s, uint64_t conv_id, uint64_t uid, int active)
{
    convo *cv = st_conv(s->st, conv_id);
    if (cv && cv->committed && st_member(cv, uid))
        relay_typing_local(s, cv, uid, active);
}

void gw_remote_presence(srv *s, uint64_t uid, int64_t last_seen_ms)
{
    /* A user this node does not know shares no conversation with anyone
     * here: nobody to tell (and a peer cannot make us create users). */
    user *u = st_user(s->st, uid, 0);
    if (!u)
        return;
    if (last_seen_ms > u->last_seen_ms)
        u->last_seen_ms = last_seen_ms;
    broadcast_presence(s, u);
}

static void typing_set(srv *s, const convo *cv, uint64_t uid, int active)
{
    int64_t now = srv_now_ms();
    for (uint32_t i = 0; i < ntypings; i++) {
        if (typings[i].conv_id == cv->conv_id && typings[i].user_id == uid) {
            if (active) {
                typings[i].expires_ms = now + s->cfg.typing_ttl_ms;
            } else {
                typings[i] = typings[--ntypings];
            }
            relay_typing(s, cv, uid, active);
            return;
        }
    }
    if (active) {
        if (ntypings == captypings) {
            uint32_t n = captypings ? captypings * 2 : 64;
            typing_ent *nt = realloc(typings, n * sizeof *nt);
            if (!nt)
                return;
            typings = nt;
            captypings = n;
        }
        typings[ntypings++] =
            (typing_ent){cv->conv_id, uid, now + s->cfg.typing_ttl_ms};
    }
    relay_typing(s, cv, uid, active);
}

void gw_tick(srv *s, int64_t now)
{
    for (uint32_t i = 0; i < ntypings;) {
        if (typings[i].expires_ms <= now) {
            typing_ent t = typings[i];
            typings[i] = typings[--ntypings];
            convo *cv = st_conv(s->st, t.conv_id);
            if (cv)
                relay_typing(s, cv, t.user_id, 0);
        } else {
            i++;
        }
    }
    if (s->stopping) {
        free(typings);
        typings = NULL;
        ntypings = captypings = 0;
    }
}

/* ---- Hello ---- */

static void on_hello(conn *c, const Chat__V1__Hello *h)
{
    srv *s = c->srv;
    uint64_t uid = 0;
    const char *tok = h->token ? h->token : "";
    int rc = auth_verify(s->secret, s->secret_len, tok, strlen(tok),
                         srv_now_ms() / 1000, &uid);
    if (rc != AUTH_OK) {
        srv_log(s, LOG_INFO, "conn %llu: Hello refused: %s", (unsigned long long)c->id,
                auth_strerror(rc));
        send_error(c, GW_EUNAUTHORIZED, auth_strerror(rc), NULL);
        conn_close(c, WS_CLOSE_UNAUTHORIZED, "unauthorized");
        return;
    }
    user *u = st_user(s->st, uid, 1);
    if (!u) {
        conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    snprintf(c->device_id, sizeof c->device_id, "%s", h->device_id ? h->device_id : "");
    int state_before = user_state(s, u);
    c->u = u;
    c->state = CS_READY;
    c->next_dev = u->devices;
    u->devices = c;
    u->ndevices++;
    s->met->ws_sessions++;
    if (u->msgs.last_ms == 0) {
        u->msgs.tokens = s->cfg.user_msgs_burst;
        u->msgs.last_ms = srv_now_ms();
        u->typing.tokens = s->cfg.typing_per_sec;
        u->typing.last_ms = u->msgs.last_ms;
    }

    /* Welcome with every conversation's state. */
    uint32_t n = 0;
    Chat__V1__ConvState *cs = calloc(u->nconvs ? u->nconvs : 1, sizeof *cs);
    Chat__V1__ConvState **csp = calloc(u->nconvs ? u->nconvs : 1, sizeof *csp);
    uint64_t **mems = calloc(u->nconvs ? u->nconvs : 1, sizeof *mems);
    if (!cs || !csp || !mems) {
        free(cs);
        free(csp);
        free(mems);
        conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    for (uint32_t i = 0; i < u->nconvs; i++) {
        convo *cv = st_conv(s->st, u->convs[i]);
        member *m = cv ? st_member(cv, uid) : NULL;
        if (!m || !cv->committed)
            continue;
        Chat__V1__ConvState *x = &cs[n];
        chat__v1__conv_state__init(x);
        x->conv_id = cv->conv_id;
        x->kind = cv->kind == CONV_DIRECT ? "direct" : "group";
        x->last_msg_id = cv->last_msg_id;
        x->last_read_msg_id = m->read_ptr;
        x->unread = st_unread(cv, m);
        x->title = cv->title ? cv->title : "";
        mems[n] = malloc((cv->nmembers ? cv->nmembers : 1) * sizeof(uint64_t));
        if (mems[n]) {
            for (uint32_t k = 0; k < cv->nmembers; k++)
                mems[n][k] = cv->members[k].user_id;
            x->members = mems[n];
            x->n_members = cv->nmembers;
        }
        csp[n] = x;
        n++;
    }
    Chat__V1__Welcome w = CHAT__V1__WELCOME__INIT;
    w.user_id = uid;
    w.conversations = csp;
    w.n_conversations = n;
    w.server_time_ms = srv_now_ms();
    Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_WELCOME;
    f.welcome = &w;
    send_frame(c, &f);
    for (uint32_t i = 0; i < n; i++)
        free(mems[i]);
    free(mems);
    free(cs);
    free(csp);
    if (c->dead)
        return;
    each_contact(s, u, presence_to_conn, c);
    cluster_presence_changed(s, u);
    if (user_state(s, u) != state_before) {
        u->last_seen_ms = srv_now_ms();
        broadcast_presence(s, u);
    }
}

void gw_on_close(conn *c)
{
    user *u = c->u;
    if (!u)
        return;
    srv *s = c->srv;
    int state_before = user_state(s, u);
    for (conn **pp = &u->devices; *pp; pp = &(*pp)->next_dev)
        if (*pp == c) {
            *pp = c->next_dev;
            break;
        }
    u->ndevices--;
    if (c->away)
        u->naway--;
    c->u = NULL;
    s->met->ws_sessions--;
    u->last_seen_ms = srv_now_ms();
    if (!s->stopping)
        cluster_presence_changed(s, u);
    if (u->ndevices > 0 && user_state(s, u) != state_before && !s->stopping)
        broadcast_presence(s, u); /* e.g. the last ONLINE device left: AWAY */
    if (u->ndevices == 0 && !s->stopping) {
        /* Stop anything this user was typing. */
        for (uint32_t i = 0; i < ntypings;) {
            if (typings[i].user_id == u->user_id) {
                typing_ent t = typings[i];
                typings[i] = typings[--ntypings];
                convo *cv = st_conv(s->st, t.conv_id);
                if (cv)
                    relay_typing(s, cv, t.user_id, 0);
            } else {
                i++;
            }
        }
        broadcast_presence(s, u);
    }
}

/* ---- Send ---- */

typedef struct send_ctx {
    uint64_t conn_id;
    uint64_t sender, conv_id;
    idem *key; /* NULL for a Send without client_msg_id */
    int64_t t0_ms;
    char cmid[MAX_CLIENT_MSG_ID + 1];
    /* a REST caller's own completion, run after the key's waiters */
    void (*user_done)(srv *, void *, int, const log_append_result *);
    void *user_ctx;
} send_ctx;

static void send_ack(conn *c, const char *cmid, uint64_t conv_id, uint64_t msg_id,
                     int64_t ts)
{
    Chat__V1__Ack a = CHAT__V1__ACK__INIT;
    a.client_msg_id = (char *)cmid;
    a.conv_id = conv_id;
    a.msg_id = msg_id;
    a.ts = ts;
    Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_ACK;
    f.ack = &a;
    send_frame(c, &f);
}

int gw_engine_error(int status)
{
    if (status == CL_EBUSY)
        return GW_EOVERLOADED;
    if (status == CL_ESTALE || status == RAFT_ENOTLEADER || status == CL_ETIMEDOUT)
        return GW_EUNAVAILABLE;
    return GW_EINTERNAL;
}

void gw_key_settle(srv *s, idem *k, int status, const log_append_result *res)
{
    char cmid[MAX_CLIENT_MSG_ID + 1];
    size_t n = k->keylen < MAX_CLIENT_MSG_ID ? k->keylen : MAX_CLIENT_MSG_ID;
    memcpy(cmid, k->key, n);
    cmid[n] = 0;
    for (uint32_t i = 0; i < k->nwaiters; i++) {
        conn *c = conn_find(s, k->waiters[i]);
        if (!c || c->state != CS_READY)
            continue;
        if (status == 0)
            send_ack(c, cmid, k->conv_id, res->msg_id, res->ts_ms);
        else
            send_error(c, gw_engine_error(status), raft_strerror(status), cmid);
    }
    if (status) {
        st_idem_drop(s->st, k);
        return;
    }
    free(k->waiters);
    k->waiters = NULL;
    k->nwaiters = 0;
    k->held = 0;
}

static void send_done(srv *s, void *arg, int status, const log_append_result *res)
{
    send_ctx *x = arg;
    if (!x->user_done)
        met_observe(&s->met->append_latency_ms, met_latency_bounds,
                    (double)(srv_now_ms() - x->t0_ms));
    if (status == 0) {
        if (!x->user_done)
            s->met->messages_appended++;
        if (x->key) {
            gw_key_settle(s, x->key, 0, res);
        } else {
            conn *c = conn_find(s, x->conn_id);
            if (c && c->state == CS_READY)
                send_ack(c, "", x->conv_id, res->msg_id, res->ts_ms);
        }
    } else {
        int code = gw_engine_error(status);
        const char *msg = raft_strerror(status);
        if (x->key) {
            gw_key_settle(s, x->key, status, NULL);
        } else {
            conn *c = conn_find(s, x->conn_id);
            if (c && c->state == CS_READY)
                send_error(c, code, msg, "");
        }
    }
    if (x->user_done)
        x->user_done(s, x->user_ctx, status, res);
    free(x);
}

int gw_submit_message(srv *s, uint64_t sender, uint64_t conv_id, const char *body,
                      size_t blen, const char *media, size_t mlen,
                      const char *cmid, size_t clen, uint64_t waiter_conn,
                      void (*done)(srv *, void *, int, const log_append_result *),
                      void *ctx, uint64_t *dup_msg_id, int64_t *dup_ts,
                      const char **why)
{
    convo *cv = st_conv(s->st, conv_id);
    *dup_msg_id = 0;
    if (!cv || !cv->committed) {
        *why = "no such conversation";
        return GW_ENOTFOUND;
    }
    if (!st_member(cv, sender)) {
        *why = "not a member of this conversation";
        return GW_ENOTMEMBER;
    }
    if (blen > s->cfg.max_body_bytes || mlen > MAX_MEDIA_URL) {
        *why = "message too large";
        return GW_ETOOLARGE;
    }
    if (clen > MAX_CLIENT_MSG_ID) {
        *why = "client_msg_id longer than 64 bytes";
        return GW_EBADFRAME;
    }
    if (blen == 0 && mlen == 0) {
        *why = "empty message";
        return GW_EBADFRAME;
    }
    if (!ws_utf8_valid((const uint8_t *)body, blen) ||
        !ws_utf8_valid((const uint8_t *)media, mlen) ||
        !ws_utf8_valid((const uint8_t *)cmid, clen)) {
        *why = "strings must be UTF-8";
        return GW_EBADFRAME;
    }
    user *u = st_user(s->st, sender, 1);
    if (!u) {
        *why = "out of memory";
        return GW_EINTERNAL;
    }
    uint64_t h = st_content_hash(body, blen, media, mlen);
    idem *k = NULL;
    if (clen) {
        k = st_idem_find(s->st, sender, conv_id, cmid, clen);
        if (k) {
            if (k->content_hash != h) {
                *why = "client_msg_id already used for a different message";
                return GW_ECONFLICT;
            }
            if (!k->pending) {
                *dup_msg_id = k->msg_id;
                *dup_ts = k->ts_ms;
                return 0;
            }
            /* Same request in flight: answer both when it lands. */
            if (waiter_conn && st_idem_wait(k, waiter_conn)) {
                *why = "out of memory";
                return GW_EINTERNAL;
            }
            *dup_msg_id = UINT64_MAX; /* "pending" */
            return 0;
        }
    }
    if (u->msgs.last_ms == 0) {
        u->msgs.tokens = s->cfg.user_msgs_burst;
        u->msgs.last_ms = srv_now_ms();
    }
    if (!bucket_take(&u->msgs, s->cfg.user_msgs_per_sec, s->cfg.user_msgs_burst,
                     srv_now_ms())) {
        *why = "too many messages; slow down";
        return GW_ERATELIMITED;
    }
    Chatlog__Log__V1__MessageBody mb = CHATLOG__LOG__V1__MESSAGE_BODY__INIT;
    char *bcopy = strndup(body, blen), *mcopy = strndup(media, mlen);
    if (!bcopy || !mcopy) {
        free(bcopy);
        free(mcopy);
        *why = "out of memory";
        return GW_EINTERNAL;
    }
    mb.text = bcopy;
    mb.media_url = mcopy;
    size_t plen = chatlog__log__v1__message_body__get_packed_size(&mb);
    uint8_t *pb = malloc(plen ? plen : 1);
    if (!pb) {
        free(bcopy);
        free(mcopy);
        *why = "out of memory";
        return GW_EINTERNAL;
    }
    chatlog__log__v1__message_body__pack(&mb, pb);
    free(bcopy);
    free(mcopy);
    if (clen) {
        k = st_idem_add(s->st, sender, conv_id, cmid, clen, h);
        if (!k || (waiter_conn && st_idem_wait(k, waiter_conn))) {
            if (k)
                st_idem_drop(s->st, k);
            free(pb);
            *why = "out of memory";
            return GW_EINTERNAL;
        }
    }
    rec_view r = {.type = REC_MESSAGE, .conv_id = conv_id, .sender_id = sender,
                  .key = (const uint8_t *)cmid, .key_len = (uint32_t)clen,
                  .body = pb, .body_len = (uint32_t)plen};
    /* send_done settles the key (acks its waiters, or drops it on failure)
     * and then runs the caller's own done, if any. */
    send_ctx *x = calloc(1, sizeof *x);
    if (!x) {
        if (k)
            st_idem_drop(s->st, k);
        free(pb);
        *why = "out of memory";
        return GW_EINTERNAL;
    }
    x->conn_id = waiter_conn;
    x->sender = sender;
    x->conv_id = conv_id;
    x->key = k;
    if (k)
        k->held = 1; /* until send_done: the commit alone must not expire it */
    x->t0_ms = srv_now_ms();
    memcpy(x->cmid, cmid, clen);
    x->user_done = done;
    x->user_ctx = ctx;
    int rc = srv_append(s, &r, send_done, x);
    free(pb);
    if (rc) {
        if (k)
            st_idem_drop(s->st, k);
        free(x);
        *why = cl_strerror(rc);
        return gw_engine_error(rc);
    }
    return 0;
}

static void on_send(conn *c, const Chat__V1__Send *m)
{
    srv *s = c->srv;
    const char *body = m->body ? m->body : "", *media = m->media_url ? m->media_url : "";
    const char *cmid = m->client_msg_id ? m->client_msg_id : "";
    size_t clen = strlen(cmid);
    uint64_t dup = 0;
    int64_t dup_ts = 0;
    const char *why = "";
    int code = gw_submit_message(s, c->u->user_id, m->conv_id, body, strlen(body),
                                 media, strlen(media), cmid, clen, c->id, NULL,
                                 NULL, &dup, &dup_ts, &why);
    if (code) {
        send_error(c, code, why, clen <= MAX_CLIENT_MSG_ID ? cmid : "");
        return;
    }
    if (dup && dup != UINT64_MAX)
        send_ack(c, cmid, m->conv_id, dup, dup_ts); /* a retry: original ack */
}

/* ---- Receipt ---- */

typedef struct rcpt_ctx {
    uint64_t conn_id;
} rcpt_ctx;

static void receipt_done(srv *s, void *arg, int status, const log_append_result *res)
{
    (void)res;
    rcpt_ctx *x = arg;
    if (status == 0) {
        s->met->receipts_appended++;
    } else {
        conn *c = conn_find(s, x->conn_id);
        if (c && c->state == CS_READY)
            send_error(c, gw_engine_error(status), raft_strerror(status), NULL);
    }
    free(x);
}

int gw_submit_pointer(srv *s, uint64_t uid, uint64_t conv_id, int read,
                      uint64_t up_to, uint64_t conn_id, const char **why)
{
    convo *cv = st_conv(s->st, conv_id);
    if (!cv || !cv->committed) {
        *why = "no such conversation";
        return GW_ENOTFOUND;
    }
    member *m = st_member(cv, uid);
    if (!m) {
        *why = "not a member of this conversation";
        return GW_ENOTMEMBER;
    }
    if (up_to > cv->last_msg_id) {
        *why = "up_to_msg_id is past the last message";
        return GW_EBADFRAME;
    }
    if (up_to <= (read ? m->read_ptr : m->delivered_ptr))
        return 0; /* positions only move forward */
    Chatlog__Log__V1__ReadPointer rp = CHATLOG__LOG__V1__READ_POINTER__INIT;
    rp.kind = read ? CHATLOG__LOG__V1__READ_POINTER__KIND__READ
                   : CHATLOG__LOG__V1__READ_POINTER__KIND__DELIVERED;
    uint8_t pb[16];
    size_t plen = chatlog__log__v1__read_pointer__pack(&rp, pb);
    rec_view r = {.type = REC_READ_POINTER, .conv_id = conv_id, .sender_id = uid,
                  .msg_id = up_to, .body = pb, .body_len = (uint32_t)plen};
    rcpt_ctx *x = malloc(sizeof *x);
    if (!x) {
        *why = "out of memory";
        return GW_EINTERNAL;
    }
    x->conn_id = conn_id;
    int rc = srv_append(s, &r, receipt_done, x);
    if (rc) {
        free(x);
        *why = cl_strerror(rc);
        return gw_engine_error(rc);
    }
    return 0;
}

static void on_receipt(conn *c, const Chat__V1__Receipt *m)
{
    const char *why = "";
    if (m->kind != CHAT__V1__RECEIPT__KIND__DELIVERED &&
        m->kind != CHAT__V1__RECEIPT__KIND__READ) {
        send_error(c, GW_EBADFRAME, "receipt kind must be DELIVERED or READ", NULL);
        return;
    }
    int code = gw_submit_pointer(c->srv, c->u->user_id, m->conv_id,
                                 m->kind == CHAT__V1__RECEIPT__KIND__READ,
                                 m->up_to_msg_id, c->id, &why);
    if (code)
        send_error(c, code, why, NULL);
}

/* ---- Sync ---- */

static void on_sync(conn *c, const Chat__V1__Sync *m)
{
    srv *s = c->srv;
    convo *cv = st_conv(s->st, m->conv_id);
    if (!cv || !cv->committed) {
        send_error(c, GW_ENOTFOUND, "no such conversation", NULL);
        return;
    }
    if (!st_member(cv, c->u->user_id)) {
        send_error(c, GW_ENOTMEMBER, "not a member of this conversation", NULL);
        return;
    }
    uint32_t limit = m->limit ? m->limit : SYNC_DEFAULT;
    if (limit > SYNC_MAX)
        limit = SYNC_MAX;
    /* Up to what this loop has seen committed: anything later reaches the
     * device as a live Msg, so sync + live never overlap or leave a gap. */
    uint64_t cap = cv->last_msg_id;
    if (m->after_msg_id < cap && cap - m->after_msg_id < limit)
        limit = (uint32_t)(cap - m->after_msg_id);
    if (m->after_msg_id >= cap)
        limit = 0;
    log_result r = {0};
    int more = 0;
    int rc = limit ? log_read_conv(s->log, m->conv_id, m->after_msg_id, LOG_AFTER,
                                   limit, &r, &more)
                   : 0;
    if (rc) {
        log_result_free(&r);
        send_error(c, GW_EINTERNAL, cl_strerror(rc), NULL);
        return;
    }
    /* One SyncBatch is one frame: keep it well inside what the connection
     * may have pending, whatever the message sizes; `more` says the rest. */
    size_t budget = s->cfg.max_pending_out_bytes / 2, bytes = 0;
    for (size_t i = 0; i < r.n; i++) {
        bytes += r.entries[i].rec.body_len + r.entries[i].rec.key_len + 64;
        if (i > 0 && bytes > budget) {
            r.n = i; /* log_result_free still frees every buffer */
            break;
        }
    }
    Chat__V1__Msg *msgs = calloc(r.n ? r.n : 1, sizeof *msgs);
    Chat__V1__Msg **mp = calloc(r.n ? r.n : 1, sizeof *mp);
    Chatlog__Log__V1__MessageBody **bodies = calloc(r.n ? r.n : 1, sizeof *bodies);
    char **keys = calloc(r.n ? r.n : 1, sizeof *keys);
    if (!msgs || !mp || !bodies || !keys) {
        free(msgs);
        free(mp);
        free(bodies);
        free(keys);
        log_result_free(&r);
        send_error(c, GW_EINTERNAL, "out of memory", NULL);
        return;
    }
    for (size_t i = 0; i < r.n; i++) {
        const rec_view *rv = &r.entries[i].rec;
        chat__v1__msg__init(&msgs[i]);
        msgs[i].conv_id = rv->conv_id;
        msgs[i].msg_id = rv->msg_id;
        msgs[i].sender_id = rv->sender_id;
        msgs[i].ts = rv->ts_ms;
        bodies[i] = chatlog__log__v1__message_body__unpack(NULL, rv->body_len, rv->body);
        msgs[i].body = bodies[i] ? bodies[i]->text : "";
        msgs[i].media_url = bodies[i] ? bodies[i]->media_url : "";
        keys[i] = strndup((const char *)rv->key, rv->key_len);
        msgs[i].client_msg_id = keys[i] ? keys[i] : "";
        mp[i] = &msgs[i];
    }
    Chat__V1__SyncBatch sb = CHAT__V1__SYNC_BATCH__INIT;
    sb.conv_id = m->conv_id;
    sb.messages = mp;
    sb.n_messages = r.n;
    sb.more = (m->after_msg_id + r.n) < cap;
    Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_SYNC_BATCH;
    f.sync_batch = &sb;
    send_frame(c, &f);
    for (size_t i = 0; i < r.n; i++) {
        if (bodies[i])
            chatlog__log__v1__message_body__free_unpacked(bodies[i], NULL);
        free(keys[i]);
    }
    free(msgs);
    free(mp);
    free(bodies);
    free(keys);
    log_result_free(&r);
}

/* ---- dispatch ---- */

int gw_on_message(conn *c, const uint8_t *data, size_t len)
{
    if (!data) {
        send_error(c, GW_ERATELIMITED, "too many frames; slow down", NULL);
        return c->dead;
    }
    Chat__V1__ClientFrame *f = chat__v1__client_frame__unpack(NULL, len, data);
    if (!f) {
        send_error(c, GW_EBADFRAME, "not a chat.v1 ClientFrame", NULL);
        if (c->state == CS_HELLO)
            conn_close(c, WS_CLOSE_UNAUTHORIZED, "Hello expected");
        return c->dead;
    }
    if (c->state == CS_HELLO) {
        if (f->kind_case == CHAT__V1__CLIENT_FRAME__KIND_HELLO) {
            on_hello(c, f->hello);
        } else {
            send_error(c, GW_EUNAUTHORIZED, "the first frame must be Hello", NULL);
            conn_close(c, WS_CLOSE_UNAUTHORIZED, "Hello expected");
        }
        chat__v1__client_frame__free_unpacked(f, NULL);
        return c->dead;
    }
    if (c->state != CS_READY) {
        chat__v1__client_frame__free_unpacked(f, NULL);
        return 0;
    }
    switch (f->kind_case) {
    case CHAT__V1__CLIENT_FRAME__KIND_SEND:
        on_send(c, f->send);
        break;
    case CHAT__V1__CLIENT_FRAME__KIND_RECEIPT:
        on_receipt(c, f->receipt);
        break;
    case CHAT__V1__CLIENT_FRAME__KIND_TYPING: {
        convo *cv = st_conv(c->srv->st, f->typing->conv_id);
        if (!cv || !cv->committed)
            send_error(c, GW_ENOTFOUND, "no such conversation", NULL);
        else if (!st_member(cv, c->u->user_id))
            send_error(c, GW_ENOTMEMBER, "not a member of this conversation", NULL);
        else if (f->typing->active &&
                 !bucket_take(&c->u->typing, c->srv->cfg.typing_per_sec,
                              c->srv->cfg.typing_per_sec, srv_now_ms()))
            ; /* typing over its rate is dropped silently: it is a hint */
        else
            typing_set(c->srv, cv, c->u->user_id, f->typing->active);
        break;
    }
    case CHAT__V1__CLIENT_FRAME__KIND_SYNC:
        on_sync(c, f->sync);
        break;
    case CHAT__V1__CLIENT_FRAME__KIND_PRESENCE: {
        int away = f->presence->state == CHAT__V1__PRESENCE__STATE__AWAY;
        if (f->presence->state != CHAT__V1__PRESENCE__STATE__AWAY &&
            f->presence->state != CHAT__V1__PRESENCE__STATE__ONLINE) {
            send_error(c, GW_EBADFRAME, "presence must be AWAY or ONLINE", NULL);
            break;
        }
        if (away != c->away) {
            int before = user_state(c->srv, c->u);
            c->away = away;
            c->u->naway += away ? 1 : -1;
            cluster_presence_changed(c->srv, c->u);
            if (user_state(c->srv, c->u) != before) {
                c->u->last_seen_ms = srv_now_ms();
                broadcast_presence(c->srv, c->u);
            }
        }
        break;
    }
    case CHAT__V1__CLIENT_FRAME__KIND_PING: {
        Chat__V1__Pong p = CHAT__V1__PONG__INIT;
        p.nonce = f->ping->nonce;
        p.server_time_ms = srv_now_ms();
        Chat__V1__ServerFrame o = CHAT__V1__SERVER_FRAME__INIT;
        o.kind_case = CHAT__V1__SERVER_FRAME__KIND_PONG;
        o.pong = &p;
        send_frame(c, &o);
        break;
    }
    case CHAT__V1__CLIENT_FRAME__KIND_HELLO:
        send_error(c, GW_EBADFRAME, "already said Hello", NULL);
        break;
    default:
        send_error(c, GW_EBADFRAME, "empty or unknown frame kind", NULL);
        break;
    }
    chat__v1__client_frame__free_unpacked(f, NULL);
    return c->dead;
}

/* ---- the committed stream ---- */

void gw_on_commit(srv *s, const log_entry *e)
{
    const rec_view *r = &e->rec;
    convo *cv = st_conv(s->st, r->conv_id);
    if (!cv || !cv->committed)
        return;
    push_on_commit(s, cv, r); /* members not there: a push notification, later */
    if (r->type == REC_MESSAGE) {
        Chatlog__Log__V1__MessageBody *b =
            chatlog__log__v1__message_body__unpack(NULL, r->body_len, r->body);
        char key[RECORD_MAX_KEY + 1];
        memcpy(key, r->key, r->key_len);
        key[r->key_len] = 0;
        Chat__V1__Msg m = CHAT__V1__MSG__INIT;
        m.conv_id = r->conv_id;
        m.msg_id = r->msg_id;
        m.sender_id = r->sender_id;
        m.body = b ? b->text : "";
        m.media_url = b ? b->media_url : "";
        m.ts = r->ts_ms;
        m.client_msg_id = key;
        Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
        f.kind_case = CHAT__V1__SERVER_FRAME__KIND_MSG;
        f.msg = &m;
        blob *bl = frame_blob(&f);
        if (b)
            chatlog__log__v1__message_body__free_unpacked(b, NULL);
        if (!bl)
            return;
        /* The sending device(s) get the Ack instead. */
        idem *k = r->key_len ? st_idem_find(s->st, r->sender_id, r->conv_id, key,
                                            r->key_len)
                             : NULL;
        uint64_t before = s->met->frames_out;
        fan_out(s, cv, bl, k ? k->waiters : NULL, k ? k->nwaiters : 0, 0);
        s->met->deliveries += s->met->frames_out - before;
        blob_unref(bl);
    } else if (r->type == REC_READ_POINTER) {
        Chatlog__Log__V1__ReadPointer *b =
            chatlog__log__v1__read_pointer__unpack(NULL, r->body_len, r->body);
        if (!b)
            return;
        Chat__V1__Receipt rc = CHAT__V1__RECEIPT__INIT;
        rc.conv_id = r->conv_id;
        rc.user_id = r->sender_id;
        rc.kind = b->kind == CHATLOG__LOG__V1__READ_POINTER__KIND__READ
                      ? CHAT__V1__RECEIPT__KIND__READ
                      : CHAT__V1__RECEIPT__KIND__DELIVERED;
        rc.up_to_msg_id = r->msg_id;
        chatlog__log__v1__read_pointer__free_unpacked(b, NULL);
        Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
        f.kind_case = CHAT__V1__SERVER_FRAME__KIND_RECEIPT;
        f.receipt = &rc;
        blob *bl = frame_blob(&f);
        if (bl) {
            fan_out(s, cv, bl, NULL, 0, 0);
            blob_unref(bl);
        }
    }
}
