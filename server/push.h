/*
 * push.h — push notifications for members who are not there (docs/push.md).
 *
 * When a message commits, every member of its conversation other than the
 * sender who has no connected device, or only AWAY ones, and who registered
 * at least one push device, gets a notification queued for its
 * (user, conversation). A worker on the server's event loop POSTs it, after
 * a short coalescing window, as JSON shaped like the Matrix push gateway API
 * to push_url. It is best-effort: it never delays delivery or acks, its
 * queue is bounded (the oldest waiting notification is dropped when full),
 * failures are retried with capped exponential backoff and jitter, and
 * pushkeys the gateway rejects are unregistered.
 *
 * Devices register with the REST API (POST/GET/DELETE /api/v1/push/devices);
 * registrations live in DATA/push-devices.json (format at the top of
 * push.c), rewritten atomically on every change.
 *
 * Everything runs on the loop thread. Errors are 0 / negative errno.
 */
#ifndef CHATLOG_PUSH_H
#define CHATLOG_PUSH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "chatd.h"

#define PUSH_REST_PATH "/api/v1/push/devices"
#define PUSH_MAX_APP_ID 64    /* bytes, as in the Matrix pusher API */
#define PUSH_MAX_PUSHKEY 512  /* bytes, as in the Matrix pusher API */
#define PUSH_MAX_BODY 1024    /* message text in content.body, cut at UTF-8 */
#define PUSH_CONNECTIONS 4    /* requests in flight to the gateway at once */
#define PUSH_MAX_RESPONSE (64 * 1024) /* a gateway answer larger is an error */

/* One registered device. */
typedef struct push_dev {
    uint64_t user_id;
    int64_t pushkey_ts; /* seconds since the epoch, when registered */
    char kind[8];       /* "http" */
    char app_id[PUSH_MAX_APP_ID + 1];
    char pushkey[PUSH_MAX_PUSHKEY + 1];
} push_dev;

/* ---- the server's hooks ---- */

/* Start-up (srv_run, after the state is loaded): load the device registry
 * from the data directory and, when push_url is set, start the worker.
 * Returns 0, or -1 after logging why (the server does not start). A damaged
 * registry file is not fatal: it is renamed to push-devices.json.bad, logged
 * as an ERROR, and the server starts with no registrations. */
int push_start(srv *s);

/* Shutdown: drop whatever is queued or in flight (best-effort: queued
 * notifications do not survive a restart) and free everything. Safe when
 * push_start failed or never ran. */
void push_free(srv *s);

/* A record committed and applied to the state (gw_on_commit): queue or
 * coalesce notifications for the members of cv that are not there. Never
 * blocks, never fails the caller. */
void push_on_commit(srv *s, const convo *cv, const rec_view *r);

/* REST /api/v1/push/devices for the authenticated user uid. method is
 * "GET", "POST" or "DELETE" (the caller answers 405 for others); body is the
 * parsed JSON object of a POST, or of a DELETE that had a body (else NULL:
 * a DELETE then takes app_id and pushkey from the query). Returns the HTTP
 * status. On success *code is 0 and *out the JSON to answer with (taken by
 * the caller), or NULL for 204. On failure *code is a GW_E* code and err a
 * message. A change is answered only once the registry file is durable. */
int push_rest(srv *s, uint64_t uid, const char *method, const http_req *r,
              const json_t *body, json_t **out, int *code, char *err,
              size_t errlen);

/* ---- parts without I/O, for the unit tests (tests/server/test_push.c) ---- */

typedef struct push_url {
    int tls;            /* https */
    char host[256];     /* without brackets for IPv6 */
    uint16_t port;
    char hostport[270]; /* for the Host header: brackets, port unless default */
    char path[1024];    /* path and query, at least "/" */
} push_url;

/* Parse push_url: http:// or https://, a host (name, IPv4 or [IPv6]), an
 * optional port, a path. No userinfo, no fragment, no spaces or control
 * bytes. out may be NULL (check only). 0, or -EINVAL with err. */
int push_url_parse(const char *url, push_url *out, char *err, size_t errlen);

/* Delay before the next attempt after `failures` failed attempts (>= 1):
 * base_ms doubled per failure, capped at cap_ms, then "equal jitter": the
 * result is in [d - d/2, d] for that d, chosen by rnd. */
uint32_t push_backoff_ms(uint32_t failures, uint32_t base_ms, uint32_t cap_ms,
                         uint32_t rnd);

/* What a notification says. body NULL: no content (the privacy default). */
typedef struct push_msg {
    uint64_t conv_id, msg_id, sender_id;
    uint64_t unread;
    const char *body;
} push_msg;

/* The gateway request body for m, to devs[0..n). Returns malloc'd JSON text
 * (caller frees), or NULL when out of memory. */
char *push_payload(const push_msg *m, const push_dev *devs, size_t n);

/* The length of the longest prefix of s[0..len) that is at most max bytes
 * and does not end inside a UTF-8 sequence. */
size_t push_utf8_cut(const char *s, size_t len, size_t max);

/* A gateway's 2xx answer: set rejected[i] = 1 for every devs[i] whose
 * pushkey is in its "rejected" array. Returns how many, or -EINVAL when the
 * body is not a JSON object (an empty body counts as no rejections). */
int push_parse_rejected(const char *body, size_t len, const push_dev *devs,
                        size_t n, uint8_t *rejected);

/* Check the fields of a registration (POST: app_id, pushkey, optional kind
 * which must be "http"; kind_allowed 1) or of a removal (DELETE: app_id and
 * pushkey only; kind_allowed 0) into d. user_id and pushkey_ts are left to
 * the caller. 0, or -EINVAL with err naming the field. */
int push_check_device(const json_t *o, int kind_allowed, push_dev *d, char *err,
                      size_t errlen);

/* The registry file: its JSON text for devs[0..n) (malloc'd, caller frees;
 * NULL when out of memory), and parsing it back (*out malloc'd, caller
 * frees; -EINVAL with err when the text is not a valid registry). */
char *push_registry_json(const push_dev *devs, size_t n);
int push_registry_parse(const char *text, size_t len, push_dev **out,
                        size_t *n, char *err, size_t errlen);

/* Write text to dir/name atomically: dir/tmp-name, fsync (unless
 * no_fsync), rename over dir/name, fsync dir. 0 or -errno; on failure the
 * old file is intact. */
int push_write_atomic(const char *dir, const char *name, const char *text,
                      size_t len, int no_fsync);

#endif
