/*
 * main.c — the chatd command:
 *   chatd [--config FILE] [--SETTING VALUE ...]   run the server
 *   chatd token --secret-file F --user ID [--ttl SECONDS]   mint a dev token
 *   chatd status --node URL                 a cluster node's replication status
 */
#include <jansson.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "chatd.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: chatd [--config FILE] [--data DIR] [--listen HOST:PORT]\n"
            "             --secret-file F [--SETTING VALUE ...]\n"
            "       chatd token --secret-file F --user ID [--ttl SECONDS]\n"
            "       chatd status --node http://HOST:PORT\n"
            "\n"
            "Runs the Chatlog chat server: WebSocket (chat.v1) at /ws, REST at\n"
            "/api/v1, /healthz and /metrics. Stops cleanly on SIGINT/SIGTERM.\n\n");
}

static int cmd_token(int argc, char **argv)
{
    const char *secret_file = NULL, *user_arg = NULL;
    long long ttl = 3600;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: chatd token --secret-file F --user ID [--ttl SECONDS]\n"
                   "Prints an HS256 JWT for user ID, valid for --ttl seconds (3600).\n");
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "chatd token: %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--secret-file"))
            secret_file = argv[++i];
        else if (!strcmp(argv[i], "--user"))
            user_arg = argv[++i];
        else if (!strcmp(argv[i], "--ttl")) {
            char *end;
            ttl = strtoll(argv[++i], &end, 10);
            if (*end || ttl <= 0 || ttl > 10LL * 365 * 86400) {
                fprintf(stderr, "chatd token: --ttl must be 1..315360000 seconds\n");
                return 2;
            }
        } else {
            fprintf(stderr, "chatd token: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!secret_file || !user_arg) {
        fprintf(stderr, "chatd token: --secret-file and --user are required\n");
        return 2;
    }
    char *end;
    unsigned long long uid = strtoull(user_arg, &end, 10);
    if (*end || !*user_arg || user_arg[0] == '-' || uid == 0 || uid >= (1ull << 53)) {
        fprintf(stderr, "chatd token: --user must be 1..2^53-1\n");
        return 2;
    }
    uint8_t *secret;
    size_t slen;
    int rc = auth_load_secret(secret_file, &secret, &slen);
    if (rc) {
        fprintf(stderr, "chatd token: %s: %s\n", secret_file,
                rc == -22 ? "secret shorter than 16 bytes" : strerror(-rc));
        return 1;
    }
    char *tok = auth_mint(secret, slen, uid, (int64_t)time(NULL), ttl);
    free(secret);
    if (!tok) {
        fprintf(stderr, "chatd token: cannot mint a token\n");
        return 1;
    }
    printf("%s\n", tok);
    free(tok);
    return 0;
}

/* GET url's /api/v1/cluster over plain HTTP/1.0; the body, or NULL with a
 * message printed. */
static char *http_get_status(const char *url)
{
    const char *p = url;
    if (!strncmp(p, "http://", 7))
        p += 7;
    else if (strstr(p, "://")) {
        fprintf(stderr, "chatd status: only http:// node URLs (use curl for https)\n");
        return NULL;
    }
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)strcspn(p, "/"), p);
    char *colon = strrchr(host, ':');
    if (!colon) {
        fprintf(stderr, "chatd status: %s: expected http://HOST:PORT\n", url);
        return NULL;
    }
    *colon = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, colon + 1, &hints, &ai);
    if (rc) {
        fprintf(stderr, "chatd status: %s: %s\n", host, gai_strerror(rc));
        return NULL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    struct timeval tv = {5, 0};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen)) {
        fprintf(stderr, "chatd status: cannot connect to %s: %m\n", url);
        freeaddrinfo(ai);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    freeaddrinfo(ai);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /api/v1/cluster HTTP/1.0\r\nHost: %s\r\n\r\n", host);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (!buf || write(fd, req, (size_t)n) != n) {
        fprintf(stderr, "chatd status: cannot send the request\n");
        free(buf);
        close(fd);
        return NULL;
    }
    for (;;) {
        if (len + 1 == cap) {
            if (cap >= (16u << 20))
                break; /* a status is never this large */
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + len, cap - 1 - len);
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    buf[len] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) || !strstr(buf, " 200 ") || !body) {
        fprintf(stderr, "chatd status: %s answered: %.80s\n", url, buf);
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, strlen(body + 4) + 1);
    return buf;
}

static int cmd_status(int argc, char **argv)
{
    const char *node = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--node") && i + 1 < argc)
            node = argv[++i];
        else {
            printf("usage: chatd status --node http://HOST:PORT\n"
                   "Prints a node's view of the cluster: links, and per shard the role,\n"
                   "leader, term, commit offset and each follower's lag.\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (!node) {
        fprintf(stderr, "chatd status: --node URL is required\n");
        return 2;
    }
    char *body = http_get_status(node);
    if (!body)
        return 1;
    json_error_t jerr;
    json_t *o = json_loads(body, 0, &jerr);
    free(body);
    if (!o) {
        fprintf(stderr, "chatd status: not JSON: %s\n", jerr.text);
        return 1;
    }
    if (!json_is_true(json_object_get(o, "enabled"))) {
        printf("%s: a single node (no cluster)\n", node);
        json_decref(o);
        return 0;
    }
    printf("node %lld, links:", (long long)json_integer_value(json_object_get(o, "node_id")));
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(o, "nodes"), i, v)
        printf(" %lld:%s", (long long)json_integer_value(json_object_get(v, "id")),
               json_string_value(json_object_get(v, "link")));
    printf("\n%5s %-9s %6s %6s %10s %10s  %s\n", "shard", "role", "leader", "term",
           "commit", "applied", "followers (lag in records)");
    json_array_foreach(json_object_get(o, "shards"), i, v) {
        printf("%5lld %-9s %6lld %6lld %10lld %10lld ",
               (long long)json_integer_value(json_object_get(v, "shard")),
               json_string_value(json_object_get(v, "role")),
               (long long)json_integer_value(json_object_get(v, "leader")),
               (long long)json_integer_value(json_object_get(v, "term")),
               (long long)json_integer_value(json_object_get(v, "commit_offset")),
               (long long)json_integer_value(json_object_get(v, "applied_offset")));
        size_t k;
        json_t *f;
        json_array_foreach(json_object_get(v, "followers"), k, f)
            printf(" n%lld:%lld", (long long)json_integer_value(json_object_get(f, "node")),
                   (long long)json_integer_value(json_object_get(f, "lag")));
        if (json_is_true(json_object_get(v, "recovering")))
            printf(" RECOVERING");
        if (json_object_get(v, "failed"))
            printf(" FAILED: %s", json_string_value(json_object_get(v, "failed")));
        printf("\n");
    }
    json_decref(o);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "token"))
        return cmd_token(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "status"))
        return cmd_status(argc, argv);
    srv s;
    memset(&s, 0, sizeof s);
    s.listen_fd = -1;
    s.spare_fd = -1;
    config_defaults(&s.cfg);
    char err[512];
    /* The config file first, wherever --config appears; then the flags. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            config_print_help();
            return 0;
        }
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "chatd: --config needs a file\n");
                return 2;
            }
            if (config_load_file(&s.cfg, argv[i + 1], err, sizeof err)) {
                fprintf(stderr, "chatd: %s\n", err);
                return 2;
            }
        }
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            i++;
            continue;
        }
        if (strncmp(argv[i], "--", 2) != 0) {
            fprintf(stderr, "chatd: unexpected argument '%s' (see --help)\n", argv[i]);
            return 2;
        }
        const char *key = argv[i] + 2, *val;
        char kbuf[64];
        const char *eq = strchr(key, '=');
        if (eq) { /* --name=value */
            snprintf(kbuf, sizeof kbuf, "%.*s", (int)(eq - key), key);
            key = kbuf;
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "chatd: --%s needs a value\n", key);
            return 2;
        }
        if (config_set(&s.cfg, key, val, err, sizeof err)) {
            fprintf(stderr, "chatd: %s\n", err);
            return 2;
        }
    }
    if (config_validate(&s.cfg, err, sizeof err)) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    return srv_run(&s);
}
