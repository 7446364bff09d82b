#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "push.h"

enum kind { K_STR, K_U32, K_BOOL, K_LEVEL };

typedef struct setting {
    const char *name;
    enum kind kind;
    size_t off;
    size_t size;       /* for strings */
    uint32_t min, max; /* for numbers */
    const char *help;
} setting;

#define S(field, help)                                                        \
    {#field, K_STR, offsetof(chatd_config, field),                            \
     sizeof(((chatd_config *)0)->field), 0, 0, help}
#define U(field, lo, hi, help)                                                \
    {#field, K_U32, offsetof(chatd_config, field), 0, lo, hi, help}

static const setting settings[] = {
    S(listen, "address to listen on, host:port"),
    S(data, "data directory"),
    S(secret_file, "file holding the JWT (HS256) secret"),
    S(tls_cert, "PEM certificate chain; with tls_key, serve wss:// and https://"),
    S(tls_key, "PEM private key"),
    S(web_root, "directory of the web client served at / (empty: none)"),
    U(shards, 1, 1024, "shards of a new data directory"),
    U(segment_bytes, 16 << 10, 1u << 30, "roll a shard's segment at this size (sealed, compressed)"),
    {"fsync_none", K_BOOL, offsetof(chatd_config, fsync_none), 0, 0, 1,
     "TESTS ONLY: ack before data is durable (true/false)"},
    U(max_body_bytes, 1, 1 << 20, "largest message body"),
    U(max_ws_message_bytes, 1024, 16 << 20, "largest WebSocket message"),
    U(max_http_body_bytes, 1024, 64 << 20, "largest REST request body"),
    U(max_head_bytes, 1024, 1 << 20, "largest HTTP request head"),
    U(conn_frames_per_sec, 1, 1000000, "frames per second per connection"),
    U(conn_frames_burst, 1, 1000000, "frame burst per connection"),
    U(user_msgs_per_sec, 1, 1000000, "messages per second per user"),
    U(user_msgs_burst, 1, 1000000, "message burst per user"),
    U(max_pending_out_bytes, 4096, 1u << 30,
      "unsent bytes per connection before it is closed (4008)"),
    U(max_connections, 1, 10000000, "open connections"),
    U(max_group_members, 2, 100000, "members of a group"),
    U(handshake_timeout_ms, 100, 600000, "time to send the HTTP head and Hello"),
    U(idle_timeout_ms, 1000, 86400000, "close a silent connection after"),
    U(ping_interval_ms, 500, 3600000, "ping a quiet WebSocket every"),
    U(idempotency_keys, 1, 10000000, "idempotency keys kept per user"),
    U(idempotency_window_s, 1, 31 * 86400, "and all keys younger than"),
    U(typing_ttl_ms, 500, 60000, "typing indicator lifetime"),
    U(typing_per_sec, 1, 1000, "typing frames relayed per user per second"),
    {"log_level", K_LEVEL, offsetof(chatd_config, log_level), 0, 0, 3,
     "debug, info, warn or error"},
    S(push_url, "push gateway URL, e.g. http://host:5000/_matrix/push/v1/notify (empty: off)"),
    S(push_tls_ca, "CA certificates (PEM) for an https push_url (empty: the system's)"),
    {"push_include_body", K_BOOL, offsetof(chatd_config, push_include_body), 0, 0, 1,
     "put the message text in push notifications (true/false)"},
    U(push_coalesce_ms, 0, 60000, "push: wait this long and send one per (user, conversation)"),
    U(push_queue_max, 16, 10000000, "push: queued notifications before the oldest is dropped"),
    U(push_timeout_ms, 100, 600000, "push: one request to the gateway"),
    U(push_max_attempts, 1, 100, "push: attempts per notification"),
    U(push_backoff_ms, 10, 3600000, "push: first retry delay (doubled each time, jittered)"),
    U(push_backoff_max_ms, 10, 86400000, "push: longest retry delay"),
    U(push_devices_per_user, 1, 10000, "push: registered devices per user"),
    U(push_devices_max, 1, 100000000, "push: registered devices in all"),
    U(max_media_bytes, 1, 48 << 20, "largest media upload (POST /api/v1/media)"),
    U(media_url_ttl_s, 1, 365 * 86400, "lifetime of a signed media download URL"),
    U(media_idle_timeout_ms, 100, 3600000, "drop a media upload that sends nothing for"),
    U(node_id, 1, 1000000, "cluster: this node's id (one of peers)"),
    S(peers, "cluster: every member as ID=HOST:PORT,... (empty: a single node)"),
    S(cluster_listen, "cluster: address for the other nodes (empty: own entry in peers)"),
    S(cluster_secret_file, "cluster: file holding the secret shared by all nodes"),
    S(cluster_tls_ca, "cluster: CA (PEM) of the nodes' certificates; set: links use TLS"),
    S(client_urls, "cluster: every node's base URL for clients, comma-separated (clients fail over along it)"),
    U(raft_heartbeat_ms, 10, 10000, "cluster: leader heartbeat interval"),
    U(raft_election_ms, 50, 60000, "cluster: election timeout, uniform in [this, 2 x this)"),
};

#define NSETTINGS (sizeof settings / sizeof settings[0])

void config_defaults(chatd_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:8080");
    snprintf(c->data, sizeof c->data, "./data");
    c->shards = 16;
    c->segment_bytes = 64u << 20;
    c->max_body_bytes = 64 * 1024;
    c->max_ws_message_bytes = 128 * 1024;
    c->max_http_body_bytes = 1 << 20;
    c->max_head_bytes = 16 * 1024;
    c->conn_frames_per_sec = 2000;
    c->conn_frames_burst = 4000;
    c->user_msgs_per_sec = 1000;
    c->user_msgs_burst = 2000;
    c->max_pending_out_bytes = 4 << 20;
    c->max_connections = 100000;
    c->max_group_members = 250;
    c->handshake_timeout_ms = 10000;
    c->idle_timeout_ms = 120000;
    c->ping_interval_ms = 30000;
    c->idempotency_keys = 10000;
    c->idempotency_window_s = 86400;
    c->typing_ttl_ms = 6000;
    c->typing_per_sec = 5;
    c->log_level = 1;
    c->push_coalesce_ms = 200;
    c->max_media_bytes = 16 << 20;
    c->media_url_ttl_s = 86400;
    c->media_idle_timeout_ms = 30000;
    c->push_queue_max = 10000;
    c->push_timeout_ms = 10000;
    c->push_max_attempts = 8;
    c->push_backoff_ms = 1000;
    c->push_backoff_max_ms = 60000;
    c->push_devices_per_user = 10;
    c->push_devices_max = 100000;
    c->raft_heartbeat_ms = 100;
    c->raft_election_ms = 600;
}

static const setting *find(const char *key)
{
    char norm[64];
    size_t n = strlen(key);
    if (n == 0 || n >= sizeof norm)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        norm[i] = key[i] == '-' ? '_' : key[i];
    for (size_t i = 0; i < NSETTINGS; i++)
        if (!strcmp(settings[i].name, norm))
            return &settings[i];
    return NULL;
}

int config_set(chatd_config *c, const char *key, const char *value, char *err,
               size_t errlen)
{
    const setting *s = find(key);
    if (!s) {
        snprintf(err, errlen, "unknown setting '%s'", key);
        return -1;
    }
    char *field = (char *)c + s->off;
    switch (s->kind) {
    case K_STR:
        if (strlen(value) >= s->size) {
            snprintf(err, errlen, "%s: value too long", s->name);
            return -1;
        }
        snprintf(field, s->size, "%s", value);
        return 0;
    case K_U32: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (!*value || *end || errno || value[0] == '-' || v < s->min ||
            v > s->max) {
            snprintf(err, errlen, "%s: '%s' is not a number in %u..%u",
                     s->name, value, s->min, s->max);
            return -1;
        }
        *(uint32_t *)field = (uint32_t)v;
        return 0;
    }
    case K_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1"))
            *(int *)field = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0"))
            *(int *)field = 0;
        else {
            snprintf(err, errlen, "%s: '%s' is not true or false", s->name, value);
            return -1;
        }
        return 0;
    case K_LEVEL: {
        static const char *lv[] = {"debug", "info", "warn", "error"};
        for (int i = 0; i < 4; i++)
            if (!strcmp(value, lv[i])) {
                *(int *)field = i;
                return 0;
            }
        snprintf(err, errlen, "%s: '%s' is not debug, info, warn or error",
                 s->name, value);
        return -1;
    }
    }
    return -1;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
                 s[n - 1] == '\n'))
        s[--n] = 0;
    return s;
}

int config_load_file(chatd_config *c, const char *path, char *err,
                     size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[2048], e[256];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, errlen, "%s:%d: line too long", path, lineno);
            rc = -1;
            break;
        }
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *t = trim(line);
        if (!*t)
            continue;
        char *eq = strchr(t, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'name = value'", path, lineno);
            rc = -1;
            break;
        }
        *eq = 0;
        char *k = trim(t), *v = trim(eq + 1);
        if (config_set(c, k, v, e, sizeof e)) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, e);
            rc = -1;
        }
    }
    fclose(f);
    return rc;
}

int config_validate(const chatd_config *c, char *err, size_t errlen)
{
    if (!c->secret_file[0]) {
        snprintf(err, errlen, "secret_file: required (a file holding the JWT secret)");
        return -1;
    }
    if (!!c->tls_cert[0] != !!c->tls_key[0]) {
        snprintf(err, errlen, "%s: set tls_cert and tls_key together",
                 c->tls_cert[0] ? "tls_key" : "tls_cert");
        return -1;
    }
    if (!strrchr(c->listen, ':')) {
        snprintf(err, errlen, "listen: '%s' is not host:port", c->listen);
        return -1;
    }
    char why[200];
    if (c->push_url[0] && push_url_parse(c->push_url, NULL, why, sizeof why)) {
        snprintf(err, errlen, "push_url: %s", why);
        return -1;
    }
    if (c->push_backoff_max_ms < c->push_backoff_ms) {
        snprintf(err, errlen, "push_backoff_max_ms: must be at least push_backoff_ms");
        return -1;
    }
    if (c->max_body_bytes + 1024 > c->max_ws_message_bytes) {
        snprintf(err, errlen,
                 "max_ws_message_bytes: must exceed max_body_bytes by 1024");
        return -1;
    }
    if (c->peers[0]) {
        if (!c->node_id) {
            snprintf(err, errlen, "node_id: required with peers");
            return -1;
        }
        if (!c->cluster_secret_file[0]) {
            snprintf(err, errlen, "cluster_secret_file: required with peers");
            return -1;
        }
        if (c->raft_heartbeat_ms * 2 > c->raft_election_ms) {
            snprintf(err, errlen, "raft_election_ms: must be at least twice raft_heartbeat_ms");
            return -1;
        }
        if (c->cluster_tls_ca[0] && !c->tls_cert[0]) {
            snprintf(err, errlen, "cluster_tls_ca: needs tls_cert and tls_key");
            return -1;
        }
    }
    return 0;
}

void config_print_help(void)
{
    chatd_config d;
    config_defaults(&d);
    printf("settings (config file 'name = value', or flag --name value):\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        const char *field = (const char *)&d + s->off;
        char def[64] = "";
        if (s->kind == K_U32)
            snprintf(def, sizeof def, " [%u]", *(const uint32_t *)field);
        else if (s->kind == K_STR && *field)
            snprintf(def, sizeof def, " [%s]", field);
        printf("  --%-24s %s%s\n", s->name, s->help, def);
    }
}
