/*
 * config.h — chatd's settings: defaults, a config file, command-line flags.
 *
 * Every setting has one name. In a file it is written "name = value" (one per
 * line, '#' starts a comment); on the command line "--name value" with
 * dashes or underscores alike (--data-dir, --data_dir). Flags are applied
 * after the file, so flags win. An unknown name or a bad value is an error
 * that names the key.
 */
#ifndef CHATLOG_CONFIG_H
#define CHATLOG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CFG_PATH 1024

typedef struct chatd_config {
    char listen[256];       /* host:port */
    char data[CFG_PATH];    /* data directory */
    char secret_file[CFG_PATH];
    char tls_cert[CFG_PATH]; /* both set: serve wss:// and https:// */
    char tls_key[CFG_PATH];
    char web_root[CFG_PATH]; /* static files served at / (the web client) */
    uint32_t shards;         /* for a new data directory */
    uint32_t segment_bytes;  /* roll size of a segment */
    int fsync_none;          /* TESTS ONLY: ack before fdatasync */

    uint32_t max_body_bytes;       /* message body (Send.body, REST body) */
    uint32_t max_ws_message_bytes; /* one WebSocket message */
    uint32_t max_http_body_bytes;  /* one REST request body */
    uint32_t max_head_bytes;       /* HTTP request head */
    uint32_t conn_frames_per_sec;  /* token bucket per connection */
    uint32_t conn_frames_burst;
    uint32_t user_msgs_per_sec;    /* token bucket per user (all devices) */
    uint32_t user_msgs_burst;
    uint32_t max_pending_out_bytes; /* per connection; then close 4008 */
    uint32_t max_connections;
    uint32_t max_group_members;
    uint32_t handshake_timeout_ms; /* HTTP head, and Hello after upgrade */
    uint32_t idle_timeout_ms;      /* no bytes from the peer for this long */
    uint32_t ping_interval_ms;     /* server pings an idle WebSocket */
    uint32_t idempotency_keys;     /* remembered per user ... */
    uint32_t idempotency_window_s; /* ... and all of those this recent */
    uint32_t typing_ttl_ms;        /* typing expires without renewal */
    uint32_t typing_per_sec;       /* typing frames relayed per user */
    int log_level;                 /* 0 debug .. 3 error */
    /* push notifications (server/push.c, docs/push.md) */
    char push_url[CFG_PATH];       /* gateway notify URL; empty: push off */
    char push_tls_ca[CFG_PATH];    /* CA file for https gateways; empty: system */
    int push_include_body;         /* message text in content.body */
    uint32_t push_coalesce_ms;     /* wait this long, then one per (user, conv) */
    uint32_t push_queue_max;       /* queued notifications; then drop the oldest */
    uint32_t push_timeout_ms;      /* one request to the gateway */
    uint32_t push_max_attempts;    /* per notification, first one included */
    uint32_t push_backoff_ms;      /* first retry delay, doubled per failure ... */
    uint32_t push_backoff_max_ms;  /* ... up to this */
    uint32_t push_devices_per_user;
    uint32_t push_devices_max;     /* registered devices, all users */
    /* media (server/media.c, docs/media.md) */
    uint32_t max_media_bytes;      /* one upload (POST /api/v1/media body) */
    uint32_t media_url_ttl_s;      /* lifetime of a signed download URL */
    /* cluster (server/cluster.c, docs/cluster.md); peers empty: one node */
    uint32_t node_id;
    char peers[CFG_PATH];          /* "1=host:port,2=host:port,3=host:port" */
    char cluster_listen[256];      /* host:port for the other nodes;
                                      empty: this node's entry in peers */
    char cluster_secret_file[CFG_PATH];
    char cluster_tls_ca[CFG_PATH]; /* set: node links use TLS with tls_cert/
                                      tls_key, peers verified against it */
    char client_urls[CFG_PATH];    /* every node's base URL for clients,
                                      comma-separated (web client failover) */
    uint32_t raft_heartbeat_ms;
    uint32_t raft_election_ms;     /* timeouts uniform in [this, 2 × this) */
    uint32_t media_idle_timeout_ms; /* an upload that sends nothing this long */
} chatd_config;

void config_defaults(chatd_config *c);

/* Apply one setting. Returns 0, or -1 with a one-line reason in err that
 * names the key. */
int config_set(chatd_config *c, const char *key, const char *value, char *err,
               size_t errlen);

/* Apply a config file. Returns 0, or -1 with "FILE:LINE: reason" in err. */
int config_load_file(chatd_config *c, const char *path, char *err,
                     size_t errlen);

/* Check cross-field rules (required keys, TLS pair). 0 or -1 with err. */
int config_validate(const chatd_config *c, char *err, size_t errlen);

/* Print every setting with its default and meaning (for --help). */
void config_print_help(void);

#endif
