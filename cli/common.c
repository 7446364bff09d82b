/*
 * common.c — argument parsing, error reporting and opening a data directory,
 * shared by the chatlog subcommands.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define CLI_OPEN_ATTEMPTS 20

#include "errors.h"

void cli_err(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "chatlog %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static cli_opt *find_opt(cli_opt *opts, const char *name, size_t len)
{
    for (cli_opt *o = opts; o->name; o++)
        if (strlen(o->name) == len && memcmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts,
              const char **pos, int max_pos, int *npos)
{
    int n = 0, only_pos = 0;
    for (cli_opt *o = opts; o->name; o++)
        o->value = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && strcmp(a, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (!only_pos && a[0] == '-' && a[1] != '\0') {
            const char *name = a + 1;
            if (*name == '-')
                name++;
            else if (strcmp(name, "h") != 0) {
                cli_err(cmd, "unknown option '%s' (see chatlog %s --help)",
                        a, cmd);
                return CLI_USAGE;
            }
            if (strcmp(name, "h") == 0)
                name = "help";
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            cli_opt *o = find_opt(opts, name, len);
            if (!o) {
                cli_err(cmd, "unknown option '--%.*s' (see chatlog %s --help)",
                        (int)len, name, cmd);
                return CLI_USAGE;
            }
            if (!o->takes_value) {
                if (eq) {
                    cli_err(cmd, "option '--%s' takes no value", o->name);
                    return CLI_USAGE;
                }
                o->value = "";
            } else if (eq) {
                o->value = eq + 1;
            } else if (i + 1 < argc) {
                o->value = argv[++i];
            } else {
                cli_err(cmd, "option '--%s' needs a value", o->name);
                return CLI_USAGE;
            }
            continue;
        }
        if (n == max_pos) {
            cli_err(cmd, "unexpected argument '%s' (see chatlog %s --help)",
                    a, cmd);
            return CLI_USAGE;
        }
        pos[n++] = a;
    }
    *npos = n;
    return CLI_OK;
}

const char *cli_opt_get(const cli_opt *opts, const char *name)
{
    for (const cli_opt *o = opts; o->name; o++)
        if (strcmp(o->name, name) == 0)
            return o->value;
    return NULL;
}

int cli_parse_u64(const char *cmd, const char *what, const char *s,
                  uint64_t min, uint64_t max, int allow_suffix,
                  uint64_t *out)
{
    /* strtoull accepts leading spaces and a minus sign (and negates!), so
     * insist on a leading digit. */
    if (s[0] < '0' || s[0] > '9') {
        cli_err(cmd, "%s: '%s' is not a non-negative integer", what, s);
        return CLI_USAGE;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE) {
        cli_err(cmd, "%s: '%s' is out of range", what, s);
        return CLI_USAGE;
    }
    if (allow_suffix && *end && end[1] == '\0') {
        int shift = 0;
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        }
        if (shift) {
            if (v > (UINT64_MAX >> shift)) {
                cli_err(cmd, "%s: '%s' is out of range", what, s);
                return CLI_USAGE;
            }
            v <<= shift;
            end++;
        }
    }
    if (*end != '\0') {
        cli_err(cmd, "%s: '%s' is not a non-negative integer", what, s);
        return CLI_USAGE;
    }
    if (v < min || v > max) {
        cli_err(cmd, "%s: %s is out of range [%llu, %llu]", what, s,
                (unsigned long long)min, (unsigned long long)max);
        return CLI_USAGE;
    }
    *out = v;
    return CLI_OK;
}

/* Where engine log lines go; see cli_log_open. */
static struct {
    const char *cmd;
    int opening;      /* inside log_open: hold the first ERROR line */
    char error[512];  /* that line, or "" */
} engine_log;

static void on_engine_log(void *arg, int level, const char *msg)
{
    if (level < LOG_WARN)
        return;
    if (engine_log.opening && level >= LOG_ERROR && !engine_log.error[0]) {
        snprintf(engine_log.error, sizeof engine_log.error, "%s", msg);
        return;
    }
    fprintf(stderr, "chatlog %s: engine: %s\n", engine_log.cmd, msg);
}

/* log_open with engine lines routed as cli_log_open describes. Returns the
 * engine's code; an ERROR line logged meanwhile is held in
 * engine_log.error. */
static int open_routed(const char *cmd, const char *dir, log_options *opt,
                       log_t **out)
{
    engine_log.cmd = cmd;
    engine_log.opening = 1;
    engine_log.error[0] = '\0';
    opt->log_fn = on_engine_log;
    opt->log_arg = NULL;
    int rc = log_open(dir, opt, out);
    engine_log.opening = 0;
    return rc;
}

/* Turn open_routed's result into the one-line reason and a CLI status. */
static int open_report(const char *cmd, const char *dir, int rc)
{
    if (rc != 0) {
        if (engine_log.error[0])
            cli_err(cmd, "%s: cannot open: %s (%s)", dir, cl_strerror(rc),
                    engine_log.error);
        else
            cli_err(cmd, "%s: cannot open: %s", dir, cl_strerror(rc));
        return CLI_FAIL;
    }
    /* The open went through after all: the line was a warning in effect. */
    if (engine_log.error[0])
        fprintf(stderr, "chatlog %s: engine: %s\n", cmd, engine_log.error);
    return CLI_OK;
}

int cli_log_open(const char *cmd, const char *dir, log_options *opt,
                 log_t **out)
{
    return open_report(cmd, dir, open_routed(cmd, dir, opt, out));
}

int cli_open(const char *cmd, const char *dir, int read_only, log_t **out)
{
    struct stat st;
    if (stat(dir, &st) != 0) {
        cli_err(cmd, "%s: %s", dir, strerror(errno));
        return CLI_FAIL;
    }
    if (!S_ISDIR(st.st_mode)) {
        cli_err(cmd, "%s: not a directory", dir);
        return CLI_FAIL;
    }
    size_t len = strlen(dir) + sizeof "/MANIFEST";
    char *manifest = malloc(len);
    if (!manifest) {
        cli_err(cmd, "%s", cl_strerror(CL_ENOMEM));
        return CLI_FAIL;
    }
    snprintf(manifest, len, "%s/MANIFEST", dir);
    int rc = stat(manifest, &st);
    free(manifest);
    if (rc != 0) {
        cli_err(cmd, "%s: not a chatlog data directory (no MANIFEST)", dir);
        return CLI_FAIL;
    }
    /* A read-only open lists each shard directory and then opens the files
     * it saw; a live writer's sealer may meanwhile replace a .log with its
     * .zlog, and the open fails with -ENOENT. Listing again fixes that, so
     * retry a few times before giving up. */
    for (int attempt = 1;; attempt++) {
        log_options opt = {0};
        opt.read_only = read_only;
        rc = open_routed(cmd, dir, &opt, out);
        if (rc != -ENOENT || !read_only || attempt == CLI_OPEN_ATTEMPTS)
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return open_report(cmd, dir, rc);
}

void cli_fmt_offset(char out[21], uint64_t offset)
{
    snprintf(out, 21, "%020llu", (unsigned long long)offset);
}
