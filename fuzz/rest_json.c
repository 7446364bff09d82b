/*
 * rest_json.c — fuzz target: JSON request bodies (and history queries) into
 * the REST handlers (rest_handle, rest.c; push_rest, push.c) with a valid
 * token, on a connection of a real server with a real engine
 * (fuzz/srv_harness.h).
 *
 * Input: requests separated by FSRV_SEP; each is a selector byte then the
 * body. Selector:
 *   bits 0-3  route (mod 10): 0 POST /api/v1/conversations (create),
 *             1 POST .../:id/messages (send), 2 POST .../:id/read,
 *             3 POST .../:id/members, 4 POST /api/v1/push/devices,
 *             5 DELETE /api/v1/push/devices (JSON body),
 *             6 GET .../:id/messages?<body> (history; the body is the query),
 *             7 GET /api/v1/push/devices, 8 GET /api/v1/conversations,
 *             9 GET /api/v1/conversations/:id;
 *   bits 4-5  :id: 0 the group 100 (members 1, 2, 3), 1 the direct
 *             conversation of 1 and 2, 2 the conversation this input last
 *             created (else 100), 3 the group 101 (user 1 not a member);
 *   bit 6     as user 2 instead of user 1;
 *   bit 7     pipelined: the next request goes in before this one is
 *             answered (rest.c's per-connection queue and the in-flight
 *             creation and send tables).
 * Each request is an HTTP/1.1 head with "Authorization: Bearer <token>",
 * "Content-Type: application/json" and the body's Content-Length, parsed by
 * http_parse_head as conn.c does, then passed to rest_handle as conn.c
 * passes it; the server runs until the engine has answered.
 *
 * Properties: every request gets exactly one response, in order, each a
 * well-formed HTTP response whose body is JSON: an error is exactly
 * {"error":{"code","name","message"}} with a known code (1..9) and its name;
 * a success has the shape of its route — a conversation (conv_id, kind,
 * title, creator, members sorted and including the caller (unless it just
 * left through .../members), created_at,
 * last_msg_id, last_read_msg_id <= last_msg_id, unread), a sent message
 * (msg_id >= 1, the conv_id asked for, ts, client_msg_id), a history page
 * (messages of that conversation, msg_ids increasing with "after",
 * decreasing without, and more), or
 * 204 with no body.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "srv_harness.h"

#define NROUTES 10
#define ID_MAX ((1ll << 53) - 1)

typedef struct sent_req {
    int route;
    uint64_t conv_id, uid;
    int after; /* history: an "after" query parameter (oldest first) */
} sent_req;

/* Whether a query has a parameter named after (pages go oldest first then,
 * newest first otherwise: docs/api.md). */
static int has_after(const char *q)
{
    while (*q) {
        size_t n = strcspn(q, "&");
        size_t k = strcspn(q, "=&");
        if (k == 5 && !memcmp(q, "after", 5))
            return 1;
        q += n + (q[n] == '&');
    }
    return 0;
}

static int is_id(const json_t *v, json_int_t min)
{
    return json_is_integer(v) && json_integer_value(v) >= min &&
           json_integer_value(v) <= ID_MAX;
}

/* uid 0: the caller need not be a member (it may have just left). */
static void check_conv(const json_t *o, uint64_t uid, uint64_t want_id)
{
    FUZZ_CHECK(json_is_object(o) && json_object_size(o) == 9, "conversation shape");
    json_t *id = json_object_get(o, "conv_id"), *kind = json_object_get(o, "kind"),
           *title = json_object_get(o, "title"), *creator = json_object_get(o, "creator"),
           *mem = json_object_get(o, "members"), *created = json_object_get(o, "created_at"),
           *last = json_object_get(o, "last_msg_id"),
           *lr = json_object_get(o, "last_read_msg_id"), *unread = json_object_get(o, "unread");
    FUZZ_CHECK(is_id(id, 1) && (!want_id || (uint64_t)json_integer_value(id) == want_id),
               "conv_id");
    FUZZ_CHECK(json_is_string(kind) && (!strcmp(json_string_value(kind), "direct") ||
                                        !strcmp(json_string_value(kind), "group")),
               "kind");
    FUZZ_CHECK(json_is_string(title) && is_id(creator, 1) && json_is_integer(created),
               "title, creator, created_at");
    FUZZ_CHECK(is_id(last, 0) && is_id(lr, 0) && is_id(unread, 0) &&
                   json_integer_value(lr) <= json_integer_value(last) &&
                   json_integer_value(unread) <= json_integer_value(last),
               "last_msg_id %lld, last_read_msg_id %lld, unread %lld",
               (long long)json_integer_value(last), (long long)json_integer_value(lr),
               (long long)json_integer_value(unread));
    FUZZ_CHECK(json_is_array(mem) && json_array_size(mem) >= 1, "members");
    int caller = 0;
    json_int_t prev = 0;
    for (size_t i = 0; i < json_array_size(mem); i++) {
        json_t *m = json_array_get(mem, i);
        FUZZ_CHECK(is_id(m, 1) && json_integer_value(m) > prev, "members not sorted ids");
        prev = json_integer_value(m);
        caller |= (uint64_t)prev == uid;
    }
    FUZZ_CHECK(caller || !uid, "the caller %llu is not among the members", (unsigned long long)uid);
}

static void check_msg(const json_t *m, uint64_t conv_id)
{
    FUZZ_CHECK(json_is_object(m) && json_object_size(m) == 7, "message shape");
    FUZZ_CHECK(is_id(json_object_get(m, "conv_id"), 1) &&
                   (uint64_t)json_integer_value(json_object_get(m, "conv_id")) == conv_id,
               "message of another conversation");
    FUZZ_CHECK(is_id(json_object_get(m, "msg_id"), 1) &&
                   is_id(json_object_get(m, "sender_id"), 1) &&
                   json_is_string(json_object_get(m, "body")) &&
                   json_is_string(json_object_get(m, "media_url")) &&
                   json_is_integer(json_object_get(m, "ts")) &&
                   json_is_string(json_object_get(m, "client_msg_id")),
               "message fields");
}

/* Check one response against its request; returns the conv_id a creation
 * produced (0 otherwise). */
static uint64_t check_reply(const fsrv_resp *r, const sent_req *q)
{
    fsrv_check_api_response(r, 1);
    if (r->status >= 400 || r->status == 204)
        return 0;
    json_t *j = json_loadb((const char *)r->body, r->blen, 0, NULL);
    uint64_t created = 0;
    switch (q->route) {
    case 0:
        FUZZ_CHECK(r->status == 200 || r->status == 201, "create answered %d", r->status);
        check_conv(j, q->uid, 0);
        created = (uint64_t)json_integer_value(json_object_get(j, "conv_id"));
        break;
    case 1:
        FUZZ_CHECK(r->status == 200 || r->status == 201, "send answered %d", r->status);
        FUZZ_CHECK(json_object_size(j) == 4 && is_id(json_object_get(j, "msg_id"), 1) &&
                       is_id(json_object_get(j, "conv_id"), 1) &&
                       (uint64_t)json_integer_value(json_object_get(j, "conv_id")) ==
                           q->conv_id &&
                       json_is_integer(json_object_get(j, "ts")) &&
                       json_is_string(json_object_get(j, "client_msg_id")),
                   "send answer: %.*s", (int)r->blen, (const char *)r->body);
        break;
    case 2:
        FUZZ_CHECK(0, "read answered %d, not 204", r->status);
        break;
    case 3: /* the caller may have removed itself */
    case 9:
        FUZZ_CHECK(r->status == 200, "answered %d", r->status);
        check_conv(j, q->route == 3 ? 0 : q->uid, q->conv_id);
        break;
    case 6: {
        FUZZ_CHECK(r->status == 200, "history answered %d", r->status);
        json_t *msgs = json_object_get(j, "messages");
        FUZZ_CHECK(json_object_size(j) == 2 && json_is_array(msgs) &&
                       json_is_boolean(json_object_get(j, "more")),
                   "history shape");
        json_int_t prev = 0;
        for (size_t i = 0; i < json_array_size(msgs); i++) {
            json_t *m = json_array_get(msgs, i);
            check_msg(m, q->conv_id);
            json_int_t id = json_integer_value(json_object_get(m, "msg_id"));
            FUZZ_CHECK(i == 0 || (q->after ? id > prev : id < prev),
                       "history msg_ids not in %s order", q->after ? "increasing" : "decreasing");
            prev = id;
        }
        break;
    }
    case 8: {
        json_t *a = json_object_get(j, "conversations");
        FUZZ_CHECK(r->status == 200 && json_object_size(j) == 1 && json_is_array(a),
                   "list shape");
        for (size_t i = 0; i < json_array_size(a); i++)
            check_conv(json_array_get(a, i), q->uid, 0);
        break;
    }
    default: /* push devices: an object (fsrv_check_api_response) */
        FUZZ_CHECK(r->status == 200 || r->status == 201, "push answered %d", r->status);
        break;
    }
    json_decref(j);
    return created;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    srv *s = fsrv_begin();
    static fsrv_piece pieces[FSRV_MAX_PIECES];
    static sent_req sent[FSRV_MAX_PIECES];
    size_t np = fsrv_split(data, size, pieces), nsent = 0, answered = 0, off = 0;
    uint64_t last_created = 0;
    fsrv_client cl;
    fsrv_connect(s, &cl);
    char *head = malloc(8192 + s->cfg.max_head_bytes);
    FUZZ_CHECK(head != NULL, "oom");

    for (size_t i = 0; i < np; i++) {
        if (pieces[i].n == 0)
            continue;
        int sel = pieces[i].p[0];
        const uint8_t *body = pieces[i].p + 1;
        size_t blen = pieces[i].n - 1;
        int route = (sel & 15) % NROUTES, which = (sel >> 4) & 3;
        uint64_t uid = sel & 64 ? 2 : 1;
        uint64_t conv_id = which == 0   ? FSRV_GROUP
                           : which == 1 ? fsrv_direct_id()
                           : which == 2 ? (last_created ? last_created : FSRV_GROUP)
                                        : FSRV_OTHER;
        static const char *const method[NROUTES] = {"POST", "POST", "POST", "POST",
                                                    "POST", "DELETE", "GET", "GET",
                                                    "GET", "GET"};
        char path[4096];
        const char *cv = "/api/v1/conversations";
        switch (route) {
        case 0: snprintf(path, sizeof path, "%s", cv); break;
        case 1: snprintf(path, sizeof path, "%s/%llu/messages", cv, (unsigned long long)conv_id); break;
        case 2: snprintf(path, sizeof path, "%s/%llu/read", cv, (unsigned long long)conv_id); break;
        case 3: snprintf(path, sizeof path, "%s/%llu/members", cv, (unsigned long long)conv_id); break;
        case 4:
        case 5:
        case 7: snprintf(path, sizeof path, "/api/v1/push/devices"); break;
        case 6:
            /* A request target has no space or control byte: anything
             * else would be another request line, not a query. */
            for (size_t k = 0; k < blen && k < 2048; k++)
                if (body[k] <= 0x20 || body[k] >= 0x7f)
                    blen = k;
            snprintf(path, sizeof path, "%s/%llu/messages?%.*s", cv, (unsigned long long)conv_id,
                     (int)(blen < 2048 ? blen : 2048), (const char *)body);
            blen = 0;
            break;
        case 8: snprintf(path, sizeof path, "%s", cv); break;
        default: snprintf(path, sizeof path, "%s/%llu", cv, (unsigned long long)conv_id); break;
        }
        if (route >= 6)
            blen = 0;
        int hl = snprintf(head, 8192 + s->cfg.max_head_bytes,
                          "%s %s HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer %s\r\n"
                          "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                          method[route], path, fsrv_token((int)uid), blen);
        http_req r;
        if (hl <= 0 || http_parse_head(head, (size_t)hl, s->cfg.max_head_bytes, &r) != hl ||
            !r.keep_alive)
            continue; /* a query http_parse_head refuses never reaches rest.c */
        conn *c = fsrv_conn(s, &cl);
        FUZZ_CHECK(c != NULL, "the server closed the connection");
        sent[nsent++] = (sent_req){route, conv_id, uid, route == 6 && has_after(r.query)};
        int rc = rest_handle(c, &r, body, blen);
        FUZZ_CHECK(rc == 0, "rest_handle closed the connection");
        conn_flush_all(s);
        if (!(sel & 128) || i + 1 == np) {
            fsrv_settle(s, &cl);
            /* Read what has been answered so far (for "last created"). */
            while (off < cl.out.n) {
                fsrv_resp resp;
                off += fsrv_parse_response(cl.out.p + off, cl.out.n - off, 0, &resp);
                FUZZ_CHECK(answered < nsent, "more responses than requests");
                uint64_t id = check_reply(&resp, &sent[answered++]);
                if (id)
                    last_created = id;
            }
        }
    }
    fsrv_settle(s, &cl);
    while (off < cl.out.n) {
        fsrv_resp resp;
        off += fsrv_parse_response(cl.out.p + off, cl.out.n - off, 0, &resp);
        FUZZ_CHECK(answered < nsent, "more responses than requests");
        check_reply(&resp, &sent[answered++]);
    }
    FUZZ_CHECK(answered == nsent, "%zu requests, %zu responses", nsent, answered);
    free(head);
    fsrv_hangup(&cl);
    fsrv_end(s);
    fbuf_free(&cl.out);
    return 0;
}
