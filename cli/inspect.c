/*
 * inspect.c — `chatlog ls` and `chatlog stats`: what a data directory holds,
 * from the engine's own accounting (log_shard_info_get,
 * log_segment_info_get) on a read-only open. Figures are exact byte and
 * record counts so that scripts can use them.
 */
#include "cli.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

static const char *seg_state(const log_segment_info *s)
{
    if (s->compressed)
        return "compressed";
    return s->sealed ? "sealed" : "active";
}

/* raw/disk as "%.2f", or "-" when there is nothing on disk. */
static void fmt_ratio(char *out, size_t cap, uint64_t raw, uint64_t disk)
{
    if (disk == 0)
        snprintf(out, cap, "-");
    else
        snprintf(out, cap, "%.2f", (double)raw / (double)disk);
}

static const char ls_usage[] =
    "usage: chatlog ls DIR [--shard N]\n"
    "\n"
    "List each shard's segments, oldest first: base offset, end offset (the\n"
    "offset after the last record), record count, raw (uncompressed) bytes,\n"
    "bytes on disk (sidecar index included), state (active: being written;\n"
    "sealed: rolled, kept raw; compressed: rolled and zstd-compressed) and\n"
    "compression ratio raw/disk. Segment files are named by their base\n"
    "offset. The log is opened read-only.\n"
    "\n"
    "  --shard N    only shard N\n";

int cmd_ls(int argc, char **argv)
{
    cli_opt opts[] = {{"help", 0, NULL}, {"shard", 1, NULL}, {NULL, 0, NULL}};
    const char *pos[1];
    int npos;
    if (cli_parse("ls", argc, argv, opts, pos, 1, &npos) != CLI_OK)
        return CLI_USAGE;
    if (cli_opt_get(opts, "help")) {
        fputs(ls_usage, stdout);
        return CLI_OK;
    }
    if (npos != 1) {
        cli_err("ls", "missing DIR (see chatlog ls --help)");
        return CLI_USAGE;
    }
    uint64_t only = 0;
    const char *s_shard = cli_opt_get(opts, "shard");
    if (s_shard && cli_parse_u64("ls", "--shard", s_shard, 0,
                                 LOG_MAX_SHARDS - 1, 0, &only))
        return CLI_USAGE;

    log_t *log;
    if (cli_open("ls", pos[0], 1, &log) != CLI_OK)
        return CLI_FAIL;
    uint32_t n = log_shard_count(log);
    if (s_shard && only >= n) {
        cli_err("ls", "--shard %" PRIu64 ": the log has %" PRIu32 " shards",
                only, n);
        log_close(log);
        return CLI_USAGE;
    }
    int status = CLI_OK;
    for (uint32_t sh = 0; sh < n; sh++) {
        if (s_shard && sh != only)
            continue;
        log_shard_info si;
        int rc = log_shard_info_get(log, sh, &si);
        if (rc != 0) {
            cli_err("ls", "shard %" PRIu32 ": %s", sh, cl_strerror(rc));
            status = CLI_FAIL;
            continue;
        }
        printf("shard %" PRIu32 ": %" PRIu32 " segments, %" PRIu64
               " records, next offset %" PRIu64 ", %" PRIu64
               " raw bytes, %" PRIu64 " bytes on disk",
               sh, si.segments, si.records, si.next_offset, si.raw_bytes,
               si.disk_bytes);
        if (si.damaged_ranges)
            printf(", %" PRIu32 " damaged ranges", si.damaged_ranges);
        if (si.failed)
            printf(", FAILED: %s", cl_strerror(si.failed));
        putchar('\n');
        if (si.segments == 0)
            continue;
        printf("  %-20s  %-20s  %10s  %12s  %12s  %-10s  %6s\n", "base_offset",
               "end_offset", "records", "raw_bytes", "disk_bytes", "state",
               "ratio");
        for (uint32_t i = 0;; i++) {
            log_segment_info sg;
            rc = log_segment_info_get(log, sh, i, &sg);
            if (rc == CL_ENOTFOUND)
                break;
            if (rc != 0) {
                cli_err("ls", "shard %" PRIu32 " segment %" PRIu32 ": %s", sh,
                        i, cl_strerror(rc));
                status = CLI_FAIL;
                break;
            }
            char base[21], end[21], ratio[32];
            cli_fmt_offset(base, sg.base_offset);
            cli_fmt_offset(end, sg.end_offset);
            fmt_ratio(ratio, sizeof ratio, sg.raw_bytes, sg.disk_bytes);
            printf("  %-20s  %-20s  %10" PRIu64 "  %12" PRIu64 "  %12" PRIu64
                   "  %-10s  %6s\n",
                   base, end, sg.records, sg.raw_bytes, sg.disk_bytes,
                   seg_state(&sg), ratio);
        }
    }
    int rc = log_close(log);
    if (rc != 0 && status == CLI_OK) {
        cli_err("ls", "close: %s", cl_strerror(rc));
        status = CLI_FAIL;
    }
    if (fflush(stdout) != 0)
        status = CLI_FAIL;
    return status;
}

static const char stats_usage[] =
    "usage: chatlog stats DIR\n"
    "\n"
    "Print totals, then one line per shard: records, messages,\n"
    "conversations, raw (uncompressed) bytes, bytes on disk (segments and\n"
    "sidecar indexes), bytes on disk per message, segments. The log is\n"
    "opened read-only.\n";

static void per_msg(char *out, size_t cap, uint64_t disk, uint64_t msgs)
{
    if (msgs == 0)
        snprintf(out, cap, "-");
    else
        snprintf(out, cap, "%.1f", (double)disk / (double)msgs);
}

int cmd_stats(int argc, char **argv)
{
    cli_opt opts[] = {{"help", 0, NULL}, {NULL, 0, NULL}};
    const char *pos[1];
    int npos;
    if (cli_parse("stats", argc, argv, opts, pos, 1, &npos) != CLI_OK)
        return CLI_USAGE;
    if (cli_opt_get(opts, "help")) {
        fputs(stats_usage, stdout);
        return CLI_OK;
    }
    if (npos != 1) {
        cli_err("stats", "missing DIR (see chatlog stats --help)");
        return CLI_USAGE;
    }
    log_t *log;
    if (cli_open("stats", pos[0], 1, &log) != CLI_OK)
        return CLI_FAIL;
    uint32_t n = log_shard_count(log);
    log_shard_info *si = calloc(n, sizeof *si);
    if (!si) {
        cli_err("stats", "%s", cl_strerror(CL_ENOMEM));
        log_close(log);
        return CLI_FAIL;
    }
    log_shard_info tot = {0};
    uint32_t damaged = 0, failed = 0;
    for (uint32_t sh = 0; sh < n; sh++) {
        int rc = log_shard_info_get(log, sh, &si[sh]);
        if (rc != 0) {
            cli_err("stats", "shard %" PRIu32 ": %s", sh, cl_strerror(rc));
            free(si);
            log_close(log);
            return CLI_FAIL;
        }
        tot.records += si[sh].records;
        tot.messages += si[sh].messages;
        tot.conversations += si[sh].conversations;
        tot.raw_bytes += si[sh].raw_bytes;
        tot.disk_bytes += si[sh].disk_bytes;
        tot.segments += si[sh].segments;
        damaged += si[sh].damaged_ranges;
        failed += si[sh].failed != 0;
    }
    char buf[32];
    printf("%-20s %" PRIu32 "\n", "shards", n);
    printf("%-20s %" PRIu32 "\n", "segments", tot.segments);
    printf("%-20s %" PRIu64 "\n", "records", tot.records);
    printf("%-20s %" PRIu64 "\n", "messages", tot.messages);
    printf("%-20s %" PRIu64 "\n", "conversations", tot.conversations);
    printf("%-20s %" PRIu64 "\n", "raw_bytes", tot.raw_bytes);
    printf("%-20s %" PRIu64 "\n", "disk_bytes", tot.disk_bytes);
    per_msg(buf, sizeof buf, tot.disk_bytes, tot.messages);
    printf("%-20s %s\n", "disk_bytes_per_msg", buf);
    fmt_ratio(buf, sizeof buf, tot.raw_bytes, tot.disk_bytes);
    printf("%-20s %s\n", "ratio", buf);
    if (damaged)
        printf("%-20s %" PRIu32 "\n", "damaged_ranges", damaged);
    if (failed)
        printf("%-20s %" PRIu32 "\n", "failed_shards", failed);
    printf("\n%-5s  %10s  %10s  %13s  %12s  %12s  %12s  %8s\n", "shard",
           "records", "messages", "conversations", "raw_bytes", "disk_bytes",
           "disk/msg", "segments");
    for (uint32_t sh = 0; sh < n; sh++) {
        per_msg(buf, sizeof buf, si[sh].disk_bytes, si[sh].messages);
        printf("%-5" PRIu32 "  %10" PRIu64 "  %10" PRIu64 "  %13" PRIu64
               "  %12" PRIu64 "  %12" PRIu64 "  %12s  %8" PRIu32 "%s\n",
               sh, si[sh].records, si[sh].messages, si[sh].conversations,
               si[sh].raw_bytes, si[sh].disk_bytes, buf, si[sh].segments,
               si[sh].failed ? "  FAILED" : "");
    }
    free(si);
    int status = CLI_OK;
    int rc = log_close(log);
    if (rc != 0) {
        cli_err("stats", "close: %s", cl_strerror(rc));
        status = CLI_FAIL;
    }
    if (fflush(stdout) != 0)
        status = CLI_FAIL;
    return status;
}
