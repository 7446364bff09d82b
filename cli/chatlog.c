/*
 * chatlog.c — the `chatlog` command: entry point and subcommand table.
 *
 * Subcommands live in their own files: ls and stats in inspect.c, dump in
 * dump.c, recover and verify in check.c, gen in gen.c. Usage is in each
 * subcommand's --help and in docs/cli.md.
 */
#include "cli.h"

#include <string.h>

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"ls", cmd_ls, "list each shard's segments: offsets, sizes, sealing"},
    {"dump", cmd_dump, "print records as JSON lines"},
    {"stats", cmd_stats, "totals and per-shard figures"},
    {"recover", cmd_recover, "run recovery (cuts torn tails), report damage"},
    {"verify", cmd_verify, "check every segment and index, report problems"},
    {"gen", cmd_gen, "write a synthetic chat workload through the engine"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fputs("usage: chatlog COMMAND [ARGS]\n"
          "\n"
          "Inspect, check and load a Chatlog data directory.\n"
          "\n"
          "Commands:\n",
          f);
    for (const command *c = commands; c->name; c++)
        fprintf(f, "  %-9s %s\n", c->name, c->summary);
    fputs("\n"
          "Run 'chatlog COMMAND --help' for a command's usage; see also\n"
          "docs/cli.md.\n"
          "\n"
          "Exit status: 0 ok, 1 problems found in the data (verify, "
          "recover,\n"
          "dump), 2 bad usage, 3 the command could not run.\n",
          f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("chatlog: missing command (see chatlog --help)\n", stderr);
        return CLI_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 ||
        strcmp(name, "help") == 0) {
        if (strcmp(name, "help") == 0 && argc > 2) {
            /* "chatlog help CMD" is "chatlog CMD --help". */
            for (const command *c = commands; c->name; c++)
                if (strcmp(c->name, argv[2]) == 0) {
                    char *args[] = {argv[2], "--help", NULL};
                    return c->fn(2, args);
                }
            fprintf(stderr, "chatlog: unknown command '%s' (see chatlog "
                    "--help)\n", argv[2]);
            return CLI_USAGE;
        }
        usage(stdout);
        return CLI_OK;
    }
    for (const command *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c->fn(argc - 1, argv + 1);
    fprintf(stderr, "chatlog: unknown command '%s' (see chatlog --help)\n",
            name);
    return CLI_USAGE;
}
