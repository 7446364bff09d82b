/*
 * check.c — `chatlog recover` and `chatlog verify`.
 *
 * recover opens the log in normal (read-write) mode, which runs recovery:
 * torn tails are cut, damage in sealed data is fenced off and kept. It then
 * reports every damage record (log_damage_each) and closes. A torn tail is
 * the expected result of a crash and is repaired, so it does not fail the
 * command; damage that is still there does.
 *
 * verify is a thin wrapper around rcv_verify() (recovery/verify.h), which
 * checks a data directory without changing it and prints its findings, and
 * then checks chatd's media objects under DIR/media/ against their names
 * (cli_verify_blobs, blobs.c).
 */
#include "cli.h"

#include <inttypes.h>
#include <string.h>

#include "blobs.h"
#include "errors.h"
#include "verify.h"

typedef struct recover_report {
    uint64_t torn, torn_bytes;
    uint64_t damaged, damaged_bytes;
    log_damage first_damage;
} recover_report;

static void print_damage(const log_damage *d)
{
    char seg[21];
    cli_fmt_offset(seg, d->seg_base);
    printf("shard %" PRIu32 " segment %s: %s at byte %" PRIu64 ": %" PRIu64
           " bytes",
           d->shard, seg,
           d->torn_tail ? "torn tail cut" : "damaged data fenced",
           d->file_pos, d->bytes);
    if (d->end_offset > d->first_offset)
        printf(", offsets %" PRIu64 "..%" PRIu64, d->first_offset,
               d->end_offset - 1);
    printf(" (%s)\n", cl_strerror(d->err));
}

static void on_damage(void *arg, const log_damage *d)
{
    recover_report *r = arg;
    print_damage(d);
    if (d->torn_tail) {
        r->torn++;
        r->torn_bytes += d->bytes;
    } else {
        if (r->damaged++ == 0)
            r->first_damage = *d;
        r->damaged_bytes += d->bytes;
    }
}

static const char recover_usage[] =
    "usage: chatlog recover DIR\n"
    "\n"
    "Open the log read-write, which runs recovery on every shard: a torn\n"
    "tail (a write cut short by a crash) is truncated away; damaged data in\n"
    "the middle of the log is fenced off and kept for inspection. Print\n"
    "one line per torn tail cut and per damaged range (shard, segment, byte\n"
    "position in the uncompressed segment, bytes, offsets), then a summary.\n"
    "\n"
    "Exit status: 0 if the log is clean or only torn tails were cut, 1 if\n"
    "damaged data remains or a shard failed, 2 bad usage, 3 error.\n";

int cmd_recover(int argc, char **argv)
{
    cli_opt opts[] = {{"help", 0, NULL}, {NULL, 0, NULL}};
    const char *pos[1];
    int npos;
    if (cli_parse("recover", argc, argv, opts, pos, 1, &npos) != CLI_OK)
        return CLI_USAGE;
    if (cli_opt_get(opts, "help")) {
        fputs(recover_usage, stdout);
        return CLI_OK;
    }
    if (npos != 1) {
        cli_err("recover", "missing DIR (see chatlog recover --help)");
        return CLI_USAGE;
    }
    log_t *log;
    if (cli_open("recover", pos[0], 0, &log) != CLI_OK)
        return CLI_FAIL;
    recover_report r = {0};
    log_damage_each(log, on_damage, &r);
    uint32_t failed = 0;
    for (uint32_t sh = 0; sh < log_shard_count(log); sh++) {
        log_shard_info si;
        if (log_shard_info_get(log, sh, &si) == 0 && si.failed) {
            printf("shard %" PRIu32 ": failed: %s\n", sh,
                   cl_strerror(si.failed));
            failed++;
        }
    }
    int rc = log_close(log);
    printf("recover: %" PRIu64 " torn tail%s cut (%" PRIu64 " bytes), %" PRIu64
           " damaged range%s remain (%" PRIu64 " bytes)\n",
           r.torn, r.torn == 1 ? "" : "s", r.torn_bytes, r.damaged,
           r.damaged == 1 ? "" : "s", r.damaged_bytes);
    fflush(stdout);
    if (r.damaged) {
        char seg[21];
        cli_fmt_offset(seg, r.first_damage.seg_base);
        cli_err("recover", "%" PRIu64 " damaged range%s remain, first in "
                "shard %" PRIu32 " segment %s at byte %" PRIu64,
                r.damaged, r.damaged == 1 ? "" : "s", r.first_damage.shard,
                seg, r.first_damage.file_pos);
        return CLI_PROBLEM;
    }
    if (failed) {
        cli_err("recover", "%" PRIu32 " shard%s failed", failed,
                failed == 1 ? "" : "s");
        return CLI_PROBLEM;
    }
    if (rc != 0) {
        cli_err("recover", "close: %s", cl_strerror(rc));
        return CLI_FAIL;
    }
    return CLI_OK;
}

static const char verify_usage[] =
    "usage: chatlog verify DIR\n"
    "\n"
    "Check a data directory without changing it: the manifest, every\n"
    "segment (raw and compressed) batch by batch, and the sidecar indexes;\n"
    "then every media object chatd stored under DIR/media/ (its SHA-256\n"
    "must equal its name, its .meta size its length; tmp- leftovers are\n"
    "noted). Print each problem found with its shard, segment and position\n"
    "or its media path.\n"
    "\n"
    "Exit status: 0 clean, 1 problems found, 2 bad usage, 3 error.\n";

int cmd_verify(int argc, char **argv)
{
    cli_opt opts[] = {{"help", 0, NULL}, {NULL, 0, NULL}};
    const char *pos[1];
    int npos;
    if (cli_parse("verify", argc, argv, opts, pos, 1, &npos) != CLI_OK)
        return CLI_USAGE;
    if (cli_opt_get(opts, "help")) {
        fputs(verify_usage, stdout);
        return CLI_OK;
    }
    if (npos != 1) {
        cli_err("verify", "missing DIR (see chatlog verify --help)");
        return CLI_USAGE;
    }
    int rc = rcv_verify(pos[0], stdout);
    fflush(stdout);
    if (rc < 0) {
        cli_err("verify", "%s: %s", pos[0], cl_strerror(rc));
        return CLI_FAIL;
    }
    int brc = cli_verify_blobs(pos[0], stdout);
    fflush(stdout);
    if (brc < 0) {
        cli_err("verify", "%s/media: %s", pos[0], strerror(-brc));
        return CLI_FAIL;
    }
    if (rc > 0 || brc > 0) {
        cli_err("verify", "%s: problems found", pos[0]);
        return CLI_PROBLEM;
    }
    return CLI_OK;
}
