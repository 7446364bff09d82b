/*
 * push.c — push notifications: the device registry, the notification queue
 * and the HTTP client that talks to the push gateway (push.h; the manual is
 * docs/push.md).
 *
 * The registry file
 * -----------------
 * Naming: DATA/push-devices.json; while being written DATA/tmp-push-devices.json
 * (the engine's "tmp-" prefix); a file that failed to load is kept as
 * DATA/push-devices.json.bad.
 *
 * Contents: one JSON object, UTF-8,
 *   {"version":1,"devices":[
 *     {"user_id":N,"app_id":"...","pushkey":"...","kind":"http","pushkey_ts":S},
 *     ...]}
 * Valid means: exactly these keys at both levels, version 1, user_id an
 * integer 1..2^53-1, app_id 1..64 printable ASCII bytes, pushkey 1..512
 * bytes without control characters, kind "http", pushkey_ts an integer >= 0
 * (seconds), and no (app_id, pushkey) pair twice. The per-user and total
 * limits are not part of validity: lowering them keeps what is registered.
 *
 * Writes: every change rewrites the whole file: write tmp-push-devices.json,
 * fsync it, rename it over push-devices.json, fsync the directory (fsyncs
 * are skipped under fsync_none, like the log's). The REST answer to a change
 * is sent after that, so an acknowledged registration or removal survives a
 * crash. A crash before the rename leaves the old file and a stale tmp file,
 * which start-up deletes. A file that does not parse as valid is not
 * trusted in part: it is renamed to push-devices.json.bad, an ERROR is
 * logged, and the server runs with no registrations (chat does not stop for
 * push). The file is small: rewriting it whole keeps the format trivial.
 * A failed write changes nothing in memory and is answered as an error; as
 * every write replaces the whole file from memory, no error has to stick
 * (unlike the log's appends). Writes run on the loop thread: changes are
 * rare (a device signing in or out, a pushkey rejected).
 *
 * The notification queue
 * ----------------------
 * One entry (pnote) per (user, conversation) waiting to be sent. A message
 * committing for an absent member either updates that member's waiting
 * entry for the conversation (coalescing: the latest msg_id and sender win)
 * or creates one that waits push_coalesce_ms. Entries then become READY and
 * are sent on one of PUSH_CONNECTIONS connection slots. The unread count,
 * the devices and whether the user is still away are read at send time, so
 * a notification carries the latest figures and is skipped when the user
 * came back or read the conversation meanwhile. A failed attempt (no
 * answer, a timeout, 429 or 5xx) waits push_backoff_ms doubled per failure
 * (capped, jittered) and tries again, up to push_max_attempts; an entry
 * that a newer one for the same (user, conversation) supersedes is not
 * retried. The queue holds at most push_queue_max entries; past that the
 * oldest not in flight is dropped.
 *
 * The HTTP client is libevent's evhttp on the server's own event base: it
 * never blocks the loop (host names resolve through evdns). Plain http
 * keeps its connections alive; https (OpenSSL, peer and host name
 * verified) uses a fresh connection per request, because an evhttp
 * connection cannot reconnect an OpenSSL bufferevent.
 */
#include "push.h"
#include "rest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.pb-c.h"
#include "metrics.h"
#include "state.h"

/* ---- naming rules ---- */
#define PUSH_FILE "push-devices.json"
#define PUSH_TMP_PREFIX "tmp-" /* as the engine's NAME_TMP_PREFIX */
#define PUSH_BAD_SUFFIX ".bad"
#define PUSH_FILE_VERSION 1
#define PUSH_FILE_MAX (256u << 20) /* a registry file larger is refused */

#define PUSH_ID_MAX ((1ull << 53) - 1)
#define PUSH_WARN_EVERY_MS 10000

/* The devices of one user. */
typedef struct udevs {
    uint32_t n, cap;
    push_dev d[];
} udevs;

enum { PN_WAITING = 1, PN_READY = 2, PN_INFLIGHT = 3 };

/* A notification for (user_id, conv_id), waiting, ready or in flight. */
typedef struct pnote {
    struct pnote *prev, *next;   /* p->head..tail, oldest first */
    struct pnote *rprev, *rnext; /* p->rhead..rtail while READY */
    struct pnote *unext;         /* the same user's entries */
    struct push *p;
    struct event *timer;
    uint64_t user_id, conv_id, msg_id, sender_id;
    char *body; /* push_include_body only */
    uint32_t attempts;
    int state;
} pnote;

/* One connection to the gateway and the request on it. */
typedef struct pslot {
    struct push *p;
    struct evhttp_connection *evcon;
    pnote *n;       /* in flight, or NULL */
    push_dev *sent; /* the devices that request named */
    size_t nsent;
    int recycle;    /* https: a fresh connection for the next request */
} pslot;

typedef struct push {
    srv *s;
    u64map users; /* user_id → udevs */
    uint32_t ndevs;
    /* the worker, with push_url */
    int on;
    int stopping;
    push_url url;
    struct evdns_base *dns;
    SSL_CTX *ssl_ctx;
    struct event *pump_ev;
    pslot slots[PUSH_CONNECTIONS];
    pnote *head, *tail;
    pnote *rhead, *rtail;
    uint32_t nnotes;
    u64map notes; /* user_id → that user's first pnote */
    uint64_t rng;
    int64_t last_warn_ms;
    uint64_t warns_suppressed;
} push;

/* ---- small pure parts ---- */

static int ci_prefix(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

int push_url_parse(const char *url, push_url *out, char *err, size_t errlen)
{
    push_url u;
    memset(&u, 0, sizeof u);
    for (const char *c = url; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c == 0x7f) {
            snprintf(err, errlen, "no spaces or control characters allowed");
            return -EINVAL;
        }
    const char *p;
    if (ci_prefix(url, "http://")) {
        p = url + 7;
    } else if (ci_prefix(url, "https://")) {
        u.tls = 1;
        p = url + 8;
    } else {
        snprintf(err, errlen, "must start with http:// or https://");
        return -EINVAL;
    }
    size_t alen = strcspn(p, "/?#");
    const char *rest = p + alen;
    if (memchr(p, '@', alen)) {
        snprintf(err, errlen, "user information in the URL is not supported");
        return -EINVAL;
    }
    if (strchr(rest, '#')) {
        snprintf(err, errlen, "a fragment (#) is not allowed");
        return -EINVAL;
    }
    const char *host = p, *port = NULL;
    size_t hlen;
    if (alen && p[0] == '[') {
        const char *close = memchr(p, ']', alen);
        if (!close) {
            snprintf(err, errlen, "unterminated [IPv6] host");
            return -EINVAL;
        }
        host = p + 1;
        hlen = (size_t)(close - host);
        if (close + 1 < p + alen) {
            if (close[1] != ':') {
                snprintf(err, errlen, "junk after the [IPv6] host");
                return -EINVAL;
            }
            port = close + 2;
        }
        char tmp[64];
        struct in6_addr a6;
        if (hlen == 0 || hlen >= sizeof tmp) {
            snprintf(err, errlen, "bad [IPv6] host");
            return -EINVAL;
        }
        memcpy(tmp, host, hlen);
        tmp[hlen] = 0;
        if (inet_pton(AF_INET6, tmp, &a6) != 1) {
            snprintf(err, errlen, "bad [IPv6] host");
            return -EINVAL;
        }
    } else {
        const char *colon = memchr(p, ':', alen);
        hlen = colon ? (size_t)(colon - p) : alen;
        if (colon)
            port = colon + 1;
        for (size_t i = 0; i < hlen; i++) {
            char c = host[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '-' || c == '.')) {
                snprintf(err, errlen, "bad character in the host name");
                return -EINVAL;
            }
        }
    }
    if (hlen == 0 || hlen >= sizeof u.host) {
        snprintf(err, errlen, "missing or too long host");
        return -EINVAL;
    }
    memcpy(u.host, host, hlen);
    u.host[hlen] = 0;
    u.port = u.tls ? 443 : 80;
    if (port) {
        size_t plen = (size_t)(p + alen - port);
        unsigned long v = 0;
        if (plen == 0 || plen > 5) {
            snprintf(err, errlen, "bad port");
            return -EINVAL;
        }
        for (size_t i = 0; i < plen; i++) {
            if (port[i] < '0' || port[i] > '9') {
                snprintf(err, errlen, "bad port");
                return -EINVAL;
            }
            v = v * 10 + (unsigned long)(port[i] - '0');
        }
        if (v < 1 || v > 65535) {
            snprintf(err, errlen, "port out of range");
            return -EINVAL;
        }
        u.port = (uint16_t)v;
    }
    int v6 = strchr(u.host, ':') != NULL;
    if (u.port == (u.tls ? 443 : 80))
        snprintf(u.hostport, sizeof u.hostport, v6 ? "[%s]" : "%s", u.host);
    else
        snprintf(u.hostport, sizeof u.hostport, v6 ? "[%s]:%u" : "%s:%u", u.host,
                 (unsigned)u.port);
    int n = snprintf(u.path, sizeof u.path, "%s%s", *rest == '/' ? "" : "/", rest);
    if (n < 0 || (size_t)n >= sizeof u.path) {
        snprintf(err, errlen, "path too long");
        return -EINVAL;
    }
    if (out)
        *out = u;
    return 0;
}

uint32_t push_backoff_ms(uint32_t failures, uint32_t base_ms, uint32_t cap_ms,
                         uint32_t rnd)
{
    uint64_t d = base_ms;
    for (uint32_t i = 1; i < failures && d < cap_ms; i++)
        d *= 2;
    if (d > cap_ms)
        d = cap_ms;
    /* Equal jitter: half the delay is fixed, so retries still back off; the
     * other half is random, so a gateway outage does not end with every
     * server retrying in the same millisecond. */
    uint64_t half = d / 2;
    return (uint32_t)(d - half + (half ? rnd % (half + 1) : 0));
}

size_t push_utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    /* Back up over continuation bytes to the start of the sequence that
     * would be cut, and drop it whole. */
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

static json_t *dev_json(const push_dev *d, int in_file)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = 0;
    if (in_file)
        bad |= json_object_set_new(o, "user_id", json_integer((json_int_t)d->user_id));
    bad |= json_object_set_new(o, "app_id", json_string(d->app_id));
    bad |= json_object_set_new(o, "pushkey", json_string(d->pushkey));
    bad |= json_object_set_new(o, "kind", json_string(d->kind));
    bad |= json_object_set_new(o, "pushkey_ts", json_integer(d->pushkey_ts));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

char *push_payload(const push_msg *m, const push_dev *devs, size_t n)
{
    char ev[48], room[24], sender[24];
    snprintf(ev, sizeof ev, "%" PRIu64 ":%" PRIu64, m->conv_id, m->msg_id);
    snprintf(room, sizeof room, "%" PRIu64, m->conv_id);
    snprintf(sender, sizeof sender, "%" PRIu64, m->sender_id);
    json_t *root = json_object(), *no = json_object(), *counts = json_object(),
           *arr = json_array();
    char *text = NULL;
    if (!root || !no || !counts || !arr) {
        json_decref(root);
        json_decref(no);
        json_decref(counts);
        json_decref(arr);
        return NULL;
    }
    int bad = json_object_set_new(root, "notification", no);
    bad |= json_object_set_new(no, "event_id", json_string(ev));
    bad |= json_object_set_new(no, "room_id", json_string(room));
    bad |= json_object_set_new(no, "type", json_string("m.room.message"));
    bad |= json_object_set_new(no, "sender", json_string(sender));
    if (m->body) {
        size_t len = push_utf8_cut(m->body, strlen(m->body), PUSH_MAX_BODY);
        json_t *body = json_stringn(m->body, len);
        json_t *c = json_object();
        bad |= json_object_set_new(no, "content", c);
        bad |= json_object_set_new(c, "msgtype", json_string("m.text"));
        /* Not UTF-8 (never accepted by the server, but the log is what it
         * is): an empty body rather than no notification. */
        bad |= json_object_set_new(c, "body", body ? body : json_string(""));
    }
    bad |= json_object_set_new(no, "counts", counts);
    bad |= json_object_set_new(counts, "unread", json_integer((json_int_t)m->unread));
    bad |= json_object_set_new(no, "devices", arr);
    for (size_t i = 0; i < n && !bad; i++) {
        json_t *d = json_object();
        bad |= json_array_append_new(arr, d);
        bad |= json_object_set_new(d, "app_id", json_string(devs[i].app_id));
        bad |= json_object_set_new(d, "pushkey", json_string(devs[i].pushkey));
        bad |= json_object_set_new(d, "pushkey_ts", json_integer(devs[i].pushkey_ts));
        bad |= json_object_set_new(d, "data", json_object());
        bad |= json_object_set_new(d, "tweaks", json_object());
    }
    if (!bad)
        text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}

int push_parse_rejected(const char *body, size_t len, const push_dev *devs,
                        size_t n, uint8_t *rejected)
{
    memset(rejected, 0, n);
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' ||
                       body[i] == '\n'))
        i++;
    if (i == len)
        return 0;
    json_t *j = json_loadb(body, len, 0, NULL);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return -EINVAL;
    }
    json_t *arr = json_object_get(j, "rejected");
    int count = 0;
    for (size_t k = 0; json_is_array(arr) && k < json_array_size(arr); k++) {
        const char *key = json_string_value(json_array_get(arr, k));
        for (size_t d = 0; key && d < n; d++)
            if (!rejected[d] && !strcmp(devs[d].pushkey, key)) {
                rejected[d] = 1;
                count++;
            }
    }
    json_decref(j);
    return count;
}

/* app_id, pushkey and (if allowed) kind of o into d. */
static int dev_fields(const json_t *o, int kind_allowed, push_dev *d, char *err,
                      size_t errlen)
{
    json_t *a = json_object_get(o, "app_id"), *k = json_object_get(o, "pushkey"),
           *kd = json_object_get(o, "kind");
    if (!a || !k) {
        snprintf(err, errlen, "missing field \"%s\"", !a ? "app_id" : "pushkey");
        return -EINVAL;
    }
    const char *as = json_string_value(a), *ks = json_string_value(k);
    size_t al = as ? json_string_length(a) : 0, kl = ks ? json_string_length(k) : 0;
    int ok = as && al >= 1 && al <= PUSH_MAX_APP_ID;
    for (size_t i = 0; ok && i < al; i++)
        ok = as[i] > 0x20 && as[i] < 0x7f;
    if (!ok) {
        snprintf(err, errlen,
                 "field \"app_id\" must be a string of 1..%d printable ASCII characters",
                 PUSH_MAX_APP_ID);
        return -EINVAL;
    }
    ok = ks && kl >= 1 && kl <= PUSH_MAX_PUSHKEY;
    for (size_t i = 0; ok && i < kl; i++)
        ok = (unsigned char)ks[i] >= 0x20 && ks[i] != 0x7f;
    if (!ok) {
        snprintf(err, errlen,
                 "field \"pushkey\" must be a string of 1..%d bytes without control "
                 "characters", PUSH_MAX_PUSHKEY);
        return -EINVAL;
    }
    if (kd && (!kind_allowed || !json_is_string(kd) ||
               strcmp(json_string_value(kd), "http"))) {
        snprintf(err, errlen, kind_allowed ? "field \"kind\" must be \"http\""
                                           : "unknown field \"kind\"");
        return -EINVAL;
    }
    memcpy(d->app_id, as, al);
    d->app_id[al] = 0;
    memcpy(d->pushkey, ks, kl);
    d->pushkey[kl] = 0;
    snprintf(d->kind, sizeof d->kind, "http");
    return 0;
}


int push_check_device(const json_t *o, int kind_allowed, push_dev *d, char *err,
                      size_t errlen)
{
    static const char *const post[] = {"app_id", "pushkey", "kind", NULL};
    static const char *const del[] = {"app_id", "pushkey", NULL};
    if (!json_is_object(o)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        return -EINVAL;
    }
    if (rest__check_fields(o, kind_allowed ? post : del, err, errlen))
        return -EINVAL;
    return dev_fields(o, kind_allowed, d, err, errlen);
}

/* ---- the registry file ---- */

static json_t *registry_root(json_t *arr)
{
    json_t *root = json_object();
    if (!root || json_object_set_new(root, "version", json_integer(PUSH_FILE_VERSION)) ||
        json_object_set_new(root, "devices", arr)) {
        json_decref(root);
        return NULL;
    }
    return root;
}

char *push_registry_json(const push_dev *devs, size_t n)
{
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        bad |= json_array_append_new(arr, dev_json(&devs[i], 1));
    if (bad) {
        json_decref(arr);
        return NULL;
    }
    json_t *root = registry_root(arr);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return text;
}

static int cmp_key(const void *a, const void *b)
{
    const push_dev *x = a, *y = b;
    int c = strcmp(x->app_id, y->app_id);
    return c ? c : strcmp(x->pushkey, y->pushkey);
}

int push_registry_parse(const char *text, size_t len, push_dev **out, size_t *n,
                        char *err, size_t errlen)
{
    static const char *const top[] = {"version", "devices", NULL};
    static const char *const fields[] = {"user_id", "app_id", "pushkey", "kind",
                                         "pushkey_ts", NULL};
    *out = NULL;
    *n = 0;
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        snprintf(err, errlen, "not JSON: line %d column %d: %s", je.line, je.column,
                 je.text);
        return -EINVAL;
    }
    int rc = -EINVAL;
    push_dev *devs = NULL, *sorted = NULL;
    json_t *ver = json_object_get(j, "version"), *arr = json_object_get(j, "devices");
    if (!json_is_object(j) || rest__check_fields(j, top, err, errlen)) {
        if (!json_is_object(j))
            snprintf(err, errlen, "not a JSON object");
        goto out;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != PUSH_FILE_VERSION) {
        snprintf(err, errlen, "\"version\" is not %d", PUSH_FILE_VERSION);
        goto out;
    }
    if (!json_is_array(arr)) {
        snprintf(err, errlen, "\"devices\" is not an array");
        goto out;
    }
    size_t cnt = json_array_size(arr);
    devs = calloc(cnt ? cnt : 1, sizeof *devs);
    if (!devs) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < cnt; i++) {
        json_t *o = json_array_get(arr, i);
        char why[200];
        if (!json_is_object(o)) {
            snprintf(err, errlen, "devices[%zu] is not an object", i);
            goto out;
        }
        if (rest__check_fields(o, fields, why, sizeof why) ||
            dev_fields(o, 1, &devs[i], why, sizeof why)) {
            snprintf(err, errlen, "devices[%zu]: %s", i, why);
            goto out;
        }
        json_t *u = json_object_get(o, "user_id"), *ts = json_object_get(o, "pushkey_ts");
        json_int_t uv = json_is_integer(u) ? json_integer_value(u) : 0;
        json_int_t tv = json_is_integer(ts) ? json_integer_value(ts) : -1;
        if (uv < 1 || (uint64_t)uv > PUSH_ID_MAX || tv < 0 ||
            !json_object_get(o, "kind")) {
            snprintf(err, errlen, "devices[%zu]: bad or missing user_id, kind or pushkey_ts",
                     i);
            goto out;
        }
        devs[i].user_id = (uint64_t)uv;
        devs[i].pushkey_ts = tv;
    }
    sorted = malloc((cnt ? cnt : 1) * sizeof *sorted);
    if (!sorted) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    memcpy(sorted, devs, cnt * sizeof *devs);
    qsort(sorted, cnt, sizeof *sorted, cmp_key);
    for (size_t i = 1; i < cnt; i++)
        if (!cmp_key(&sorted[i - 1], &sorted[i])) {
            snprintf(err, errlen, "app_id \"%s\" with the same pushkey twice",
                     sorted[i].app_id);
            goto out;
        }
    *out = devs;
    *n = cnt;
    devs = NULL;
    rc = 0;
out:
    free(sorted);
    free(devs);
    json_decref(j);
    return rc;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int push_write_atomic(const char *dir, const char *name, const char *text,
                      size_t len, int no_fsync)
{
    char tmp[CFG_PATH + 64], dst[CFG_PATH + 64];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/%s%s", dir, PUSH_TMP_PREFIX, name) >= sizeof tmp ||
        (size_t)snprintf(dst, sizeof dst, "%s/%s", dir, name) >= sizeof dst)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, text, len);
    if (!rc && !no_fsync && fsync(fd))
        rc = -errno;
    if (close(fd) && !rc)
        rc = -errno;
    if (!rc && rename(tmp, dst))
        rc = -errno;
    if (rc) {
        unlink(tmp);
        return rc;
    }
    if (no_fsync)
        return 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    rc = fsync(dfd) ? -errno : 0;
    close(dfd);
    return rc;
}

/* ---- the registry in memory ---- */

static int same_key(const push_dev *a, const push_dev *b)
{
    return !strcmp(a->app_id, b->app_id) && !strcmp(a->pushkey, b->pushkey);
}

static int matches_any(const push_dev *d, const push_dev *del, size_t ndel)
{
    for (size_t i = 0; i < ndel; i++)
        if (same_key(d, &del[i]))
            return 1;
    return 0;
}

/* Room for one more device of uid. 0 or -ENOMEM. */
static int reg_reserve(push *p, uint64_t uid)
{
    udevs *u = map_get(&p->users, uid);
    if (u && u->n < u->cap)
        return 0;
    uint32_t cap = u ? u->cap + 4 : 2;
    udevs *nu = realloc(u, sizeof *nu + cap * sizeof nu->d[0]);
    if (!nu)
        return -ENOMEM;
    if (!u)
        nu->n = 0;
    nu->cap = cap;
    /* Replacing a key never allocates: only a new user can fail here. */
    if (map_put(&p->users, uid, nu)) {
        free(nu);
        return -ENOMEM;
    }
    return 0;
}

/* Add d (room reserved). */
static void reg_insert(push *p, const push_dev *d)
{
    udevs *u = map_get(&p->users, d->user_id);
    u->d[u->n++] = *d;
    p->ndevs++;
}

/* Remove every device matching del[0..ndel) by (app_id, pushkey). Users
 * left without devices are forgotten, except keep_uid (whose room for a
 * device being added was reserved). */
static void reg_remove(push *p, const push_dev *del, size_t ndel, uint64_t keep_uid)
{
    uint64_t empty[16];
    size_t nempty = 0;
    MAP_EACH(&p->users, e) {
        udevs *u = e->val;
        for (uint32_t i = 0; i < u->n;) {
            if (matches_any(&u->d[i], del, ndel)) {
                u->d[i] = u->d[--u->n];
                p->ndevs--;
            } else {
                i++;
            }
        }
        if (u->n == 0 && e->key != keep_uid && nempty < sizeof empty / sizeof empty[0])
            empty[nempty++] = e->key;
    }
    for (size_t i = 0; i < nempty; i++)
        free(map_del(&p->users, empty[i]));
}

/* Change the registry durably: the file first, then memory. Removes the
 * devices matching del[0..ndel), then adds add (may be NULL). 0 or -errno
 * (then nothing changed). */
static int reg_change(push *p, const push_dev *add, const push_dev *del, size_t ndel)
{
    srv *s = p->s;
    if (add && reg_reserve(p, add->user_id))
        return -ENOMEM;
    json_t *arr = json_array();
    int bad = !arr;
    MAP_EACH(&p->users, e) {
        udevs *u = e->val;
        for (uint32_t i = 0; i < u->n && !bad; i++)
            if (!matches_any(&u->d[i], del, ndel))
                bad |= json_array_append_new(arr, dev_json(&u->d[i], 1));
    }
    if (add && !bad)
        bad |= json_array_append_new(arr, dev_json(add, 1));
    if (bad) {
        json_decref(arr);
        return -ENOMEM;
    }
    json_t *root = registry_root(arr);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text)
        return -ENOMEM;
    int rc = push_write_atomic(s->cfg.data, PUSH_FILE, text, strlen(text),
                               s->cfg.fsync_none);
    free(text);
    if (rc) {
        srv_log(s, LOG_ERROR, "push: cannot write %s/%s: %s (registry unchanged)",
                s->cfg.data, PUSH_FILE, strerror(-rc));
        return rc;
    }
    reg_remove(p, del, ndel, add ? add->user_id : 0);
    if (add)
        reg_insert(p, add);
    /* An empty user left by the reservation is harmless: reg_remove frees
     * empties on the next change, and lookups check n. */
    s->met->push_devices = p->ndevs;
    return 0;
}

static int reg_load(push *p)
{
    srv *s = p->s;
    char path[CFG_PATH + 64], tmp[CFG_PATH + 64], bad[CFG_PATH + 64];
    snprintf(path, sizeof path, "%s/%s", s->cfg.data, PUSH_FILE);
    snprintf(tmp, sizeof tmp, "%s/%s%s", s->cfg.data, PUSH_TMP_PREFIX, PUSH_FILE);
    snprintf(bad, sizeof bad, "%s%s", path, PUSH_BAD_SUFFIX);
    if (unlink(tmp) == 0)
        srv_log(s, LOG_INFO, "push: removed %s left by an interrupted write", tmp);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        srv_log(s, LOG_ERROR, "push: cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size > PUSH_FILE_MAX) {
        srv_log(s, LOG_ERROR, "push: %s: %s", path,
                sb.st_size > PUSH_FILE_MAX ? "larger than 256 MiB" : strerror(errno));
        close(fd);
        return -1;
    }
    size_t size = (size_t)sb.st_size, got = 0;
    char *text = malloc(size + 1);
    while (text && got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    int rerr = errno;
    close(fd);
    if (!text || got < size) {
        srv_log(s, LOG_ERROR, "push: cannot read %s: %s", path,
                text ? strerror(rerr) : "out of memory");
        free(text);
        return -1;
    }
    push_dev *devs;
    size_t n;
    char err[256];
    int rc = push_registry_parse(text, size, &devs, &n, err, sizeof err);
    free(text);
    if (rc == -ENOMEM) {
        srv_log(s, LOG_ERROR, "push: %s: out of memory", path);
        return -1;
    }
    if (rc) {
        srv_log(s, LOG_ERROR,
                "push: %s is damaged (%s): moved to %s; starting with no push "
                "devices registered", path, err, bad);
        if (rename(path, bad))
            srv_log(s, LOG_ERROR, "push: rename to %s: %s", bad, strerror(errno));
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (reg_reserve(p, devs[i].user_id)) {
            free(devs);
            srv_log(s, LOG_ERROR, "push: out of memory loading %s", path);
            return -1;
        }
        reg_insert(p, &devs[i]);
    }
    free(devs);
    return 0;
}

/* ---- REST ---- */

static int rest_err(int *code, int c, char *err, size_t errlen, const char *msg)
{
    *code = c;
    snprintf(err, errlen, "%s", msg);
    switch (c) {
    case GW_EBADFRAME: return 400;
    case GW_ENOTFOUND: return 404;
    case GW_ECONFLICT: return 409;
    case GW_EOVERLOADED: return 503;
    }
    return 500;
}

int push_rest(srv *s, uint64_t uid, const char *method, const http_req *r,
              const json_t *body, json_t **out, int *code, char *err,
              size_t errlen)
{
    push *p = s->push;
    *out = NULL;
    *code = 0;
    if (!p)
        return rest_err(code, GW_EINTERNAL, err, errlen, "push is not running");
    udevs *u = map_get(&p->users, uid);
    char why[256];
    if (!strcmp(method, "GET")) {
        json_t *arr = json_array(), *o = json_object();
        int bad = !arr || !o;
        for (uint32_t i = 0; u && i < u->n && !bad; i++)
            bad |= json_array_append_new(arr, dev_json(&u->d[i], 0));
        if (bad || json_object_set_new(o, "devices", arr)) {
            if (bad)
                json_decref(arr);
            json_decref(o);
            return rest_err(code, GW_EINTERNAL, err, errlen, "out of memory");
        }
        *out = o;
        return 200;
    }
    push_dev d;
    memset(&d, 0, sizeof d);
    d.user_id = uid;
    if (!strcmp(method, "POST")) {
        if (push_check_device(body, 1, &d, why, sizeof why))
            return rest_err(code, GW_EBADFRAME, err, errlen, why);
        for (uint32_t i = 0; u && i < u->n; i++)
            if (same_key(&u->d[i], &d)) {
                *out = dev_json(&u->d[i], 0); /* already registered */
                return *out ? 200 : rest_err(code, GW_EINTERNAL, err, errlen, "out of memory");
            }
        if (u && u->n >= s->cfg.push_devices_per_user) {
            snprintf(why, sizeof why,
                     "at most %u push devices per user (push_devices_per_user); "
                     "delete one first", s->cfg.push_devices_per_user);
            return rest_err(code, GW_ECONFLICT, err, errlen, why);
        }
        int elsewhere = 0;
        MAP_EACH(&p->users, e) {
            udevs *o = e->val;
            for (uint32_t k = 0; k < o->n && !elsewhere; k++)
                elsewhere = same_key(&o->d[k], &d);
        }
        if (!elsewhere && p->ndevs >= s->cfg.push_devices_max) {
            snprintf(why, sizeof why, "the server holds its maximum of %u push devices",
                     s->cfg.push_devices_max);
            return rest_err(code, GW_EOVERLOADED, err, errlen, why);
        }
        d.pushkey_ts = srv_now_ms() / 1000;
        /* A pushkey belongs to one user: the device's latest sign-in. */
        int rc = reg_change(p, &d, &d, 1);
        if (rc) {
            snprintf(why, sizeof why, "cannot store the registration: %s", strerror(-rc));
            return rest_err(code, GW_EINTERNAL, err, errlen, why);
        }
        *out = dev_json(&d, 0);
        return *out ? 201 : rest_err(code, GW_EINTERNAL, err, errlen, "out of memory");
    }
    /* DELETE */
    json_t *q = NULL;
    if (!body) {
        char a[PUSH_MAX_APP_ID + 2], k[PUSH_MAX_PUSHKEY + 2];
        int al = http_query_param(r, "app_id", a, sizeof a);
        int kl = http_query_param(r, "pushkey", k, sizeof k);
        q = json_object();
        if (!q)
            return rest_err(code, GW_EINTERNAL, err, errlen, "out of memory");
        if (al >= 0)
            json_object_set_new(q, "app_id", json_stringn(a, (size_t)al));
        if (kl >= 0)
            json_object_set_new(q, "pushkey", json_stringn(k, (size_t)kl));
        if (al < 0 || kl < 0) {
            json_decref(q);
            return rest_err(code, GW_EBADFRAME, err, errlen,
                            "give app_id and pushkey in a JSON body or in the query "
                            "(?app_id=...&pushkey=..., URL-encoded)");
        }
        body = q;
    }
    int rc = push_check_device(body, 0, &d, why, sizeof why);
    json_decref(q);
    if (rc)
        return rest_err(code, GW_EBADFRAME, err, errlen, why);
    int found = 0;
    for (uint32_t i = 0; u && i < u->n && !found; i++)
        found = same_key(&u->d[i], &d);
    if (!found)
        return rest_err(code, GW_ENOTFOUND, err, errlen,
                        "no such push device registered for this user");
    rc = reg_change(p, NULL, &d, 1);
    if (rc) {
        snprintf(why, sizeof why, "cannot store the removal: %s", strerror(-rc));
        return rest_err(code, GW_EINTERNAL, err, errlen, why);
    }
    return 204;
}

/* ---- the queue ---- */

static uint32_t rnd32(push *p)
{
    /* xorshift64*: jitter only, nothing secret. */
    p->rng ^= p->rng >> 12;
    p->rng ^= p->rng << 25;
    p->rng ^= p->rng >> 27;
    return (uint32_t)((p->rng * 0x2545F4914F6CDD1Dull) >> 32);
}

/* A failure worth telling the operator, at most one line per 10 s. */
static void warn(push *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(push *p, const char *fmt, ...)
{
    int64_t now = srv_now_ms();
    if (now - p->last_warn_ms < PUSH_WARN_EVERY_MS) {
        p->warns_suppressed++;
        return;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->warns_suppressed)
        srv_log(p->s, LOG_WARN, "push: %s (and %" PRIu64 " more since the last report)",
                msg, p->warns_suppressed);
    else
        srv_log(p->s, LOG_WARN, "push: %s", msg);
    p->last_warn_ms = now;
    p->warns_suppressed = 0;
}

static void gauge(push *p)
{
    p->s->met->push_queue_depth = p->nnotes;
}

static void ready_unlink(push *p, pnote *n)
{
    if (n->rprev)
        n->rprev->rnext = n->rnext;
    else
        p->rhead = n->rnext;
    if (n->rnext)
        n->rnext->rprev = n->rprev;
    else
        p->rtail = n->rprev;
    n->rprev = n->rnext = NULL;
}

static void note_free(push *p, pnote *n)
{
    if (n->state == PN_READY)
        ready_unlink(p, n);
    if (n->prev)
        n->prev->next = n->next;
    else
        p->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        p->tail = n->prev;
    pnote *first = map_get(&p->notes, n->user_id);
    if (first == n) {
        if (n->unext)
            map_put(&p->notes, n->user_id, n->unext); /* replacing: no allocation */
        else
            map_del(&p->notes, n->user_id);
    } else {
        for (pnote *x = first; x; x = x->unext)
            if (x->unext == n) {
                x->unext = n->unext;
                break;
            }
    }
    if (n->timer)
        event_free(n->timer);
    free(n->body);
    free(n);
    p->nnotes--;
    gauge(p);
}

static void pump(push *p);

static void on_note_timer(evutil_socket_t fd, short what, void *arg)
{
    pnote *n = arg;
    push *p = n->p;
    (void)fd;
    (void)what;
    n->state = PN_READY;
    n->rprev = p->rtail;
    n->rnext = NULL;
    if (p->rtail)
        p->rtail->rnext = n;
    else
        p->rhead = n;
    p->rtail = n;
    pump(p);
}

static void note_wait(push *p, pnote *n, uint32_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    n->state = PN_WAITING;
    if (event_add(n->timer, &tv)) {
        p->s->met->push_dropped++;
        note_free(p, n);
    }
}

static void note_add(push *p, uint64_t uid, uint64_t conv_id, uint64_t msg_id,
                     uint64_t sender, const char *body)
{
    srv *s = p->s;
    pnote *first = map_get(&p->notes, uid);
    for (pnote *n = first; n; n = n->unext)
        if (n->conv_id == conv_id && n->state != PN_INFLIGHT) {
            /* Coalesce: one notification per (user, conversation) carries
             * the latest message; the unread count is read when it goes. */
            char *b = body ? strdup(body) : NULL;
            if (body && !b)
                return; /* keep the older text */
            free(n->body);
            n->body = b;
            n->msg_id = msg_id;
            n->sender_id = sender;
            s->met->push_coalesced++;
            return;
        }
    /* Counted here, so that every queued notification ends as exactly one
     * of sent, failed, dropped or skipped (or is still in the queue). */
    s->met->push_queued++;
    if (p->nnotes >= s->cfg.push_queue_max) {
        pnote *old = p->head;
        while (old && old->state == PN_INFLIGHT)
            old = old->next;
        s->met->push_dropped++;
        warn(p, "queue full (push_queue_max=%u): dropping the oldest notification",
             s->cfg.push_queue_max);
        if (!old)
            return; /* all in flight: the new one is the one dropped */
        note_free(p, old);
        first = map_get(&p->notes, uid);
    }
    pnote *n = calloc(1, sizeof *n);
    if (n)
        n->timer = evtimer_new(s->base, on_note_timer, n);
    if (n && body)
        n->body = strdup(body);
    if (!n || !n->timer || (body && !n->body)) {
        if (n && n->timer)
            event_free(n->timer);
        if (n)
            free(n->body);
        free(n);
        s->met->push_dropped++;
        return;
    }
    n->p = p;
    n->user_id = uid;
    n->conv_id = conv_id;
    n->msg_id = msg_id;
    n->sender_id = sender;
    n->unext = first;
    if (map_put(&p->notes, uid, n)) {
        event_free(n->timer);
        free(n->body);
        free(n);
        s->met->push_dropped++;
        return;
    }
    n->prev = p->tail;
    if (p->tail)
        p->tail->next = n;
    else
        p->head = n;
    p->tail = n;
    p->nnotes++;
    gauge(p);
    note_wait(p, n, s->cfg.push_coalesce_ms);
}

void push_on_commit(srv *s, const convo *cv, const rec_view *r)
{
    push *p = s->push;
    if (!p || !p->on || s->stopping || r->type != REC_MESSAGE)
        return;
    char *text = NULL;
    int unpacked = 0;
    for (uint32_t i = 0; i < cv->nmembers; i++) {
        uint64_t uid = cv->members[i].user_id;
        udevs *ud = uid == r->sender_id ? NULL : map_get(&p->users, uid);
        if (!ud || !ud->n)
            continue;
        user *u = st_user(s->st, uid, 0);
        if (u && u->ndevices > u->naway)
            continue; /* a device is there and not AWAY: it got the Msg */
        if (s->cfg.push_include_body && !unpacked) {
            unpacked = 1;
            Chatlog__Log__V1__MessageBody *b =
                chatlog__log__v1__message_body__unpack(NULL, r->body_len, r->body);
            const char *t = b && b->text ? b->text : "";
            text = strndup(t, push_utf8_cut(t, strlen(t), PUSH_MAX_BODY));
            if (b)
                chatlog__log__v1__message_body__free_unpacked(b, NULL);
        }
        note_add(p, uid, cv->conv_id, r->msg_id, r->sender_id,
                 s->cfg.push_include_body ? (text ? text : "") : NULL);
    }
    free(text);
}

/* ---- sending ---- */

static void on_response(struct evhttp_request *req, void *arg);

static int is_ip(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static int slot_connect(push *p, pslot *sl)
{
    struct event_base *base = p->s->base;
    struct evhttp_connection *ec = NULL;
    if (p->url.tls) {
        SSL *ssl = SSL_new(p->ssl_ctx);
        if (!ssl)
            return -ENOMEM;
        /* Verify the certificate for the host (or IP address) of push_url;
         * SNI for names. */
        if (SSL_set1_host(ssl, p->url.host) != 1 ||
            (!is_ip(p->url.host) && SSL_set_tlsext_host_name(ssl, p->url.host) != 1)) {
            SSL_free(ssl);
            return -ENOMEM;
        }
        struct bufferevent *bev = bufferevent_openssl_socket_new(
            base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (!bev) {
            SSL_free(ssl);
            return -ENOMEM;
        }
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
        ec = evhttp_connection_base_bufferevent_new(base, p->dns, bev, p->url.host,
                                                    p->url.port);
        if (!ec) {
            bufferevent_free(bev);
            return -ENOMEM;
        }
    } else {
        ec = evhttp_connection_base_new(base, p->dns, p->url.host, p->url.port);
        if (!ec)
            return -ENOMEM;
    }
    struct timeval tv = {p->s->cfg.push_timeout_ms / 1000,
                         (p->s->cfg.push_timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(ec, &tv);
    evhttp_connection_set_max_body_size(ec, PUSH_MAX_RESPONSE);
    evhttp_connection_set_max_headers_size(ec, 16 * 1024);
    evhttp_connection_set_retries(ec, 0); /* retries are ours, with backoff */
    sl->evcon = ec;
    return 0;
}

/* An attempt failed in a way worth retrying. */
static void note_retry(push *p, pnote *n, const char *why)
{
    srv *s = p->s;
    for (pnote *x = map_get(&p->notes, n->user_id); x; x = x->unext)
        if (x != n && x->conv_id == n->conv_id && x->msg_id > n->msg_id) {
            /* A newer notification for the same (user, conversation) is
             * queued: it carries the latest figures, this one is done. */
            s->met->push_skipped++;
            note_free(p, n);
            return;
        }
    if (n->attempts >= s->cfg.push_max_attempts) {
        s->met->push_failed++;
        warn(p, "giving up on a notification for user %" PRIu64 " after %u attempts: %s",
             n->user_id, n->attempts, why);
        note_free(p, n);
        return;
    }
    s->met->push_retried++;
    uint32_t ms = push_backoff_ms(n->attempts, s->cfg.push_backoff_ms,
                                  s->cfg.push_backoff_max_ms, rnd32(p));
    srv_log(s, LOG_DEBUG, "push: attempt %u for user %" PRIu64 " failed (%s); retry in %u ms",
            n->attempts, n->user_id, why, ms);
    note_wait(p, n, ms);
}

/* Send n on the free slot sl, or settle it. */
static void note_send(push *p, pslot *sl, pnote *n)
{
    srv *s = p->s;
    convo *cv = st_conv(s->st, n->conv_id);
    member *m = cv ? st_member(cv, n->user_id) : NULL;
    user *u = st_user(s->st, n->user_id, 0);
    udevs *ud = map_get(&p->users, n->user_id);
    uint64_t unread = m ? st_unread(cv, m) : 0;
    if (!unread || !ud || !ud->n || (u && u->ndevices > u->naway)) {
        /* Read meanwhile, back online, left, or no device any more. */
        s->met->push_skipped++;
        note_free(p, n);
        return;
    }
    push_msg pm = {.conv_id = n->conv_id, .msg_id = n->msg_id,
                   .sender_id = n->sender_id, .unread = unread, .body = n->body};
    char *text = push_payload(&pm, ud->d, ud->n);
    push_dev *sent = malloc(ud->n * sizeof *sent);
    struct evhttp_request *req = NULL;
    if (text && sent && (sl->evcon || !slot_connect(p, sl)))
        req = evhttp_request_new(on_response, sl);
    if (!req) {
        free(text);
        free(sent);
        n->attempts++;
        note_retry(p, n, "out of memory");
        return;
    }
    memcpy(sent, ud->d, ud->n * sizeof *sent);
    sl->sent = sent;
    sl->nsent = ud->n;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", p->url.hostport);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Accept", "application/json");
    evhttp_add_header(h, "User-Agent", "chatd");
    if (p->url.tls)
        evhttp_add_header(h, "Connection", "close");
    evbuffer_add(evhttp_request_get_output_buffer(req), text, strlen(text));
    free(text);
    /* Everything is in place before the request starts: evhttp may call
     * on_response before evhttp_make_request returns. */
    n->attempts++;
    n->state = PN_INFLIGHT;
    sl->n = n;
    if (evhttp_make_request(sl->evcon, req, EVHTTP_REQ_POST, p->url.path) && sl->n == n) {
        sl->n = NULL;
        free(sl->sent);
        sl->sent = NULL;
        sl->recycle = 1;
        note_retry(p, n, "cannot start the request");
    }
}

/* Send what is ready on the free slots. Never called from inside an evhttp
 * callback (on_response defers through pump_ev), so a slot's connection can
 * be replaced here. */
static void pump(push *p)
{
    for (int i = 0; i < PUSH_CONNECTIONS; i++) {
        pslot *sl = &p->slots[i];
        if (sl->n)
            continue;
        if (sl->recycle && sl->evcon) {
            evhttp_connection_free(sl->evcon);
            sl->evcon = NULL;
        }
        sl->recycle = 0;
        if (!p->rhead)
            break;
        /* A request that failed at once may have asked for a fresh
         * connection: pump_ev brings this slot back later. */
        while (p->rhead && !sl->n && !sl->recycle) {
            pnote *n = p->rhead;
            ready_unlink(p, n);
            n->state = PN_WAITING; /* not READY any more; note_send decides */
            note_send(p, sl, n);
        }
    }
}

static void on_pump(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

static void on_response(struct evhttp_request *req, void *arg)
{
    pslot *sl = arg;
    push *p = sl->p;
    if (p->stopping)
        return;
    srv *s = p->s;
    pnote *n = sl->n;
    push_dev *sent = sl->sent;
    size_t nsent = sl->nsent;
    sl->n = NULL;
    sl->sent = NULL;
    sl->nsent = 0;
    if (p->url.tls)
        sl->recycle = 1;
    event_active(p->pump_ev, EV_TIMEOUT, 0);
    if (!n) {
        free(sent);
        return;
    }
    int status = req ? evhttp_request_get_response_code(req) : 0;
    if (status >= 200 && status < 300) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = in ? evbuffer_get_length(in) : 0;
        const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
        uint8_t *rej = calloc(nsent ? nsent : 1, 1);
        int k = rej && body ? push_parse_rejected(body, len, sent, nsent, rej) : 0;
        s->met->push_sent++;
        if (k < 0)
            warn(p, "the gateway answered %d with a body that is not a JSON object", status);
        if (k > 0) {
            /* Only the rejected ones, compacted to the front of sent. */
            size_t m = 0;
            for (size_t i = 0; i < nsent; i++)
                if (rej[i])
                    sent[m++] = sent[i];
            int rc = reg_change(p, NULL, sent, m);
            if (rc == 0) {
                s->met->push_rejected += m;
                srv_log(s, LOG_INFO, "push: the gateway rejected %zu pushkey(s) of user %"
                        PRIu64 ": unregistered", m, n->user_id);
            }
        }
        free(rej);
        note_free(p, n);
    } else if (status == 0 || status == 429 || status >= 500) {
        char why[64];
        if (status)
            snprintf(why, sizeof why, "HTTP %d", status);
        else
            snprintf(why, sizeof why, "no answer (connection failed or timed out)");
        note_retry(p, n, why);
    } else {
        /* 3xx, 4xx: retrying would get the same answer. */
        s->met->push_failed++;
        warn(p, "the gateway refused a notification with HTTP %d; not retried", status);
        note_free(p, n);
    }
    free(sent);
}

/* ---- lifecycle ---- */

int push_start(srv *s)
{
    push *p = calloc(1, sizeof *p);
    if (!p) {
        srv_log(s, LOG_ERROR, "push: out of memory");
        return -1;
    }
    p->s = s;
    s->push = p;
    p->rng = (uint64_t)srv_now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    if (!p->rng)
        p->rng = 1;
    for (int i = 0; i < PUSH_CONNECTIONS; i++)
        p->slots[i].p = p;
    if (reg_load(p))
        return -1;
    s->met->push_devices = p->ndevs;
    if (!s->cfg.push_url[0]) {
        if (p->ndevs)
            srv_log(s, LOG_INFO, "push: off (no push_url); %u devices registered", p->ndevs);
        return 0;
    }
    char err[200];
    if (push_url_parse(s->cfg.push_url, &p->url, err, sizeof err)) {
        srv_log(s, LOG_ERROR, "push_url: %s", err);
        return -1;
    }
    if (p->url.tls) {
        p->ssl_ctx = SSL_CTX_new(TLS_client_method());
        if (!p->ssl_ctx) {
            srv_log(s, LOG_ERROR, "push: cannot create a TLS context");
            return -1;
        }
        SSL_CTX_set_min_proto_version(p->ssl_ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(p->ssl_ctx, SSL_VERIFY_PEER, NULL);
        int ok = s->cfg.push_tls_ca[0]
                     ? SSL_CTX_load_verify_locations(p->ssl_ctx, s->cfg.push_tls_ca, NULL)
                     : SSL_CTX_set_default_verify_paths(p->ssl_ctx);
        if (ok != 1) {
            srv_log(s, LOG_ERROR, "push_tls_ca: cannot load %s",
                    s->cfg.push_tls_ca[0] ? s->cfg.push_tls_ca : "the system's CA store");
            return -1;
        }
    }
    if (!is_ip(p->url.host)) {
        /* Resolve the gateway's name without blocking the loop. */
        p->dns = evdns_base_new(s->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
        if (!p->dns)
            srv_log(s, LOG_WARN, "push: no resolver (evdns); %s resolves with a "
                    "blocking lookup", p->url.host);
    }
    p->pump_ev = event_new(s->base, -1, 0, on_pump, p);
    if (!p->pump_ev) {
        srv_log(s, LOG_ERROR, "push: out of memory");
        return -1;
    }
    p->on = 1;
    srv_log(s, LOG_INFO, "push: notifying %s://%s%s (%u devices registered, body %s)",
            p->url.tls ? "https" : "http", p->url.hostport, p->url.path, p->ndevs,
            s->cfg.push_include_body ? "included" : "left out");
    return 0;
}

void push_free(srv *s)
{
    push *p = s->push;
    if (!p)
        return;
    p->stopping = 1;
    /* Freeing a connection drops its request without calling on_response. */
    for (int i = 0; i < PUSH_CONNECTIONS; i++) {
        if (p->slots[i].evcon)
            evhttp_connection_free(p->slots[i].evcon);
        free(p->slots[i].sent);
    }
    while (p->head)
        note_free(p, p->head);
    map_free(&p->notes);
    MAP_EACH(&p->users, e)
        free(e->val);
    map_free(&p->users);
    if (p->pump_ev)
        event_free(p->pump_ev);
    if (p->dns)
        evdns_base_free(p->dns, 0);
    if (p->ssl_ctx)
        SSL_CTX_free(p->ssl_ctx);
    free(p);
    s->push = NULL;
}
