/*
 * main.c — the chatd command:
 *   chatd [--config FILE] [--SETTING VALUE ...]   run the server
 *   chatd token --secret-file F --user ID [--ttl SECONDS]   mint a dev token
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "chatd.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: chatd [--config FILE] [--data DIR] [--listen HOST:PORT]\n"
            "             --secret-file F [--SETTING VALUE ...]\n"
            "       chatd token --secret-file F --user ID [--ttl SECONDS]\n"
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

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "token"))
        return cmd_token(argc, argv);
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
