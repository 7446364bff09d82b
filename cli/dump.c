/*
 * dump.c — `chatlog dump`: records as JSON lines.
 *
 * Two ways to read, matching the engine's two read paths:
 *   - by shard (default): log_read_from() over each shard (or --shard N) in
 *     offset order, every record type; --from is an offset, inclusive, and
 *     applies to each shard read.
 *   - by conversation (--conv ID): log_read_conv() with LOG_AFTER, in msg_id
 *     order, messages only (the per-conversation index holds only
 *     REC_MESSAGE); --from is a msg_id, inclusive (--from 5 starts at
 *     message 5, so LOG_AFTER is given 4).
 * Damaged data does not end a dump: a shard read that fails skips to the end
 * of the range recovery fenced off (log_damage_each) or, where recovery
 * recorded nothing (it trusts a valid sidecar and does not read a sealed
 * segment's blocks), probes forward for the first readable offset; a
 * conversation read steps over unreadable messages. Each skipped range is
 * one line on stderr, and the exit status is then CLI_PROBLEM.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "errors.h"

#define DUMP_STOP 1 /* batch callback return value: --limit reached */
#define DUMP_CONV_PAGE 1000u

typedef struct dump_ctx {
    FILE *out;
    uint64_t limit; /* 0: none */
    uint64_t printed;
    uint64_t next_offset; /* offset after the last record printed */
} dump_ctx;

static void print_hex(FILE *f, const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    putc('"', f);
    for (size_t i = 0; i < n; i++) {
        putc(hex[p[i] >> 4], f);
        putc(hex[p[i] & 15], f);
    }
    putc('"', f);
}

static void print_entry(FILE *f, const log_entry *e)
{
    const rec_view *r = &e->rec;
    const char *type = rec_type_name(r->type);
    fprintf(f, "{\"shard\":%" PRIu32 ",\"offset\":%" PRIu64 ",\"type\":",
            e->shard, e->offset);
    if (type)
        fprintf(f, "\"%s\"", type);
    else
        fprintf(f, "\"type_%u\"", (unsigned)r->type);
    fprintf(f,
            ",\"conv_id\":%" PRIu64 ",\"msg_id\":%" PRIu64
            ",\"sender_id\":%" PRIu64 ",\"ts\":%" PRId64 ",\"client_msg_id\":",
            r->conv_id, r->msg_id, r->sender_id, r->ts_ms);
    if (r->key_len)
        json_write_str(f, r->key, r->key_len);
    else
        fputs("null", f);
    fputs(",\"body\":", f);
    if (json_write_body(f, r->type, r->body, r->body_len) != 0) {
        fputs("null,\"body_hex\":", f);
        print_hex(f, r->body, r->body_len);
    }
    fputs("}\n", f);
}

static int on_batch(void *arg, const batch_header *h, const uint8_t *bytes,
                    const log_entry *entries, size_t n)
{
    dump_ctx *c = arg;
    for (size_t i = 0; i < n; i++) {
        if (c->limit && c->printed >= c->limit)
            return DUMP_STOP;
        print_entry(c->out, &entries[i]);
        c->printed++;
        c->next_offset = entries[i].offset + 1;
    }
    /* A write error (say, a closed pipe) ends the dump; cmd_dump reports
     * it. */
    if (ferror(c->out))
        return DUMP_STOP;
    return (c->limit && c->printed >= c->limit) ? DUMP_STOP : 0;
}

typedef struct find_damage {
    uint32_t shard;
    uint64_t at; /* the read stopped at or after this offset */
    int found;
    log_damage d; /* the earliest fenced range ending after `at` */
} find_damage;

static void on_damage(void *arg, const log_damage *d)
{
    find_damage *fd = arg;
    if (d->shard != fd->shard || d->torn_tail || d->end_offset <= fd->at)
        return;
    if (!fd->found || d->first_offset < fd->d.first_offset) {
        fd->d = *d;
        fd->found = 1;
    }
}

static int probe_batch(void *arg, const batch_header *h, const uint8_t *bytes,
                       const log_entry *entries, size_t n)
{
    return DUMP_STOP;
}

/* The first offset after `bad` that log_read_from can read, or `end`. Used
 * when a read fails where recovery recorded no damage (it trusts a valid
 * sidecar and does not scan a sealed segment's blocks): one probe per
 * offset, each costing one block read, until the reads work again. */
static uint64_t probe_readable(log_t *log, uint32_t shard, uint64_t bad,
                               uint64_t end)
{
    uint64_t k = bad + 1;
    for (; k < end; k++) {
        int rc = log_read_from(log, shard, k, 1, probe_batch, NULL);
        if (rc == 0 || rc == DUMP_STOP)
            break;
    }
    return k;
}

/* Dump one shard from offset `from`, skipping what cannot be read. Returns
 * CLI_OK, CLI_PROBLEM (something was skipped), CLI_FAIL, or DUMP_LIMIT when
 * --limit was reached. */
#define DUMP_LIMIT 10
static int dump_shard(log_t *log, uint32_t shard, uint64_t from, dump_ctx *c)
{
    int status = CLI_OK;
    for (;;) {
        c->next_offset = from;
        int rc = log_read_from(log, shard, from, 0, on_batch, c);
        if (rc == 0)
            return status;
        if (rc == DUMP_STOP)
            return DUMP_LIMIT;
        if (rc != CL_ECORRUPT && rc != CL_ETRUNC && rc != CL_EMISPLACED) {
            cli_err("dump", "shard %" PRIu32 " at offset %" PRIu64 ": %s",
                    shard, c->next_offset, cl_strerror(rc));
            return CLI_FAIL;
        }
        status = CLI_PROBLEM;
        fflush(c->out);
        uint64_t bad = c->next_offset;
        find_damage fd = {.shard = shard, .at = bad};
        log_damage_each(log, on_damage, &fd);
        char seg[21];
        if (fd.found && fd.d.first_offset <= bad) {
            /* A range recovery fenced off: skip to where it ends. */
            cli_fmt_offset(seg, fd.d.seg_base);
            cli_err("dump", "shard %" PRIu32 ": offsets %" PRIu64 "..%" PRIu64
                    " unreadable (fenced by recovery in segment %s at byte %"
                    PRIu64 ": %s), skipped",
                    shard, bad, fd.d.end_offset - 1, seg, fd.d.file_pos,
                    cl_strerror(fd.d.err));
            from = fd.d.end_offset;
            continue;
        }
        log_shard_info si;
        if (log_shard_info_get(log, shard, &si) != 0)
            si.next_offset = bad + 1;
        uint64_t end = probe_readable(log, shard, bad, si.next_offset);
        cli_err("dump", "shard %" PRIu32 ": offsets %" PRIu64 "..%" PRIu64
                " unreadable (%s), skipped", shard, bad, end - 1,
                cl_strerror(rc));
        from = end;
    }
}

/* Report msg_ids [lo, hi] of a conversation as skipped. */
static void report_conv_gap(uint64_t conv, uint64_t lo, uint64_t hi)
{
    if (lo == hi)
        cli_err("dump", "conversation %" PRIu64 ": msg_id %" PRIu64
                " unreadable (damaged data), skipped", conv, lo);
    else
        cli_err("dump", "conversation %" PRIu64 ": msg_ids %" PRIu64
                "..%" PRIu64 " unreadable (damaged data), skipped",
                conv, lo, hi);
}

static int dump_conv(log_t *log, uint64_t conv, uint64_t from, dump_ctx *c)
{
    uint64_t after = from ? from - 1 : 0;
    uint64_t last = log_conv_last_msg_id(log, conv);
    uint64_t gap_lo = 0; /* first msg_id of the unreadable run, 0: none */
    int status = CLI_OK;
    for (;;) {
        uint32_t page = DUMP_CONV_PAGE;
        if (c->limit && c->limit - c->printed < page)
            page = (uint32_t)(c->limit - c->printed);
        if (page == 0)
            break;
        log_result r = {0};
        int more = 0;
        int rc = log_read_conv(log, conv, after, LOG_AFTER, page, &r, &more);
        if (gap_lo && r.n) {
            fflush(c->out);
            report_conv_gap(conv, gap_lo, after);
            gap_lo = 0;
        }
        for (size_t i = 0; i < r.n; i++) {
            print_entry(c->out, &r.entries[i]);
            c->printed++;
            after = r.entries[i].rec.msg_id;
        }
        size_t got = r.n;
        log_result_free(&r);
        if (ferror(c->out))
            break; /* reported by the caller */
        if (rc == CL_ECORRUPT && after < last) {
            /* The message after `after` lies in damaged data: step over it
             * and keep going, reporting runs of them as one range. */
            status = CLI_PROBLEM;
            if (!gap_lo)
                gap_lo = after + 1;
            after++;
            continue;
        }
        if (rc != 0) {
            cli_err("dump", "conversation %" PRIu64 " after msg_id %" PRIu64
                    ": %s", conv, after, cl_strerror(rc));
            return CLI_FAIL;
        }
        if (!more || got == 0)
            break;
    }
    if (gap_lo) {
        fflush(c->out);
        report_conv_gap(conv, gap_lo, after);
    }
    return status;
}

static const char dump_usage[] =
    "usage: chatlog dump DIR [--shard N] [--conv ID] [--from N] [--limit N]\n"
    "\n"
    "Print records as JSON lines, one object per record:\n"
    "  {\"shard\",\"offset\",\"type\",\"conv_id\",\"msg_id\",\"sender_id\","
    "\"ts\",\"client_msg_id\",\"body\"}\n"
    "type is message, conv_created, members_changed, read_pointer, edit,\n"
    "delete or noop (a cluster leader's first record of its term, no data);\n"
    "body is the record's protobuf body as an object (a body that\n"
    "does not decode is null, with its bytes in \"body_hex\"). The log is\n"
    "opened read-only.\n"
    "\n"
    "  --shard N    only shard N (default: every shard, in order)\n"
    "  --conv ID    only the messages of conversation ID, in msg_id order\n"
    "               (read through the conversation index)\n"
    "  --from N     start here, inclusive: an offset in each shard read, or\n"
    "               with --conv a msg_id\n"
    "  --limit N    print at most N records in all\n"
    "\n"
    "Records that cannot be read (damaged data) are skipped and each skipped\n"
    "range is reported on stderr.\n"
    "\n"
    "Exit status: 0 ok, 1 damaged data was skipped, 2 bad usage, 3 error.\n";

int cmd_dump(int argc, char **argv)
{
    cli_opt opts[] = {{"help", 0, NULL},  {"shard", 1, NULL},
                      {"conv", 1, NULL},  {"from", 1, NULL},
                      {"limit", 1, NULL}, {NULL, 0, NULL}};
    const char *pos[1];
    int npos;
    if (cli_parse("dump", argc, argv, opts, pos, 1, &npos) != CLI_OK)
        return CLI_USAGE;
    if (cli_opt_get(opts, "help")) {
        fputs(dump_usage, stdout);
        return CLI_OK;
    }
    if (npos != 1) {
        cli_err("dump", "missing DIR (see chatlog dump --help)");
        return CLI_USAGE;
    }
    uint64_t shard = 0, conv = 0, from = 0, limit = 0;
    const char *s_shard = cli_opt_get(opts, "shard");
    const char *s_conv = cli_opt_get(opts, "conv");
    const char *s;
    if (s_shard && cli_parse_u64("dump", "--shard", s_shard, 0,
                                 LOG_MAX_SHARDS - 1, 0, &shard))
        return CLI_USAGE;
    if (s_conv &&
        cli_parse_u64("dump", "--conv", s_conv, 0, UINT64_MAX, 0, &conv))
        return CLI_USAGE;
    if ((s = cli_opt_get(opts, "from")) &&
        cli_parse_u64("dump", "--from", s, 0, UINT64_MAX, 0, &from))
        return CLI_USAGE;
    if ((s = cli_opt_get(opts, "limit")) &&
        cli_parse_u64("dump", "--limit", s, 1, UINT64_MAX, 0, &limit))
        return CLI_USAGE;

    log_t *log;
    if (cli_open("dump", pos[0], 1, &log) != CLI_OK)
        return CLI_FAIL;
    uint32_t nshards = log_shard_count(log);
    if (s_shard && shard >= nshards) {
        cli_err("dump", "--shard %" PRIu64 ": the log has %" PRIu32
                " shards (0..%" PRIu32 ")", shard, nshards, nshards - 1);
        log_close(log);
        return CLI_USAGE;
    }
    if (s_shard && s_conv && log_shard_of(log, conv) != shard) {
        cli_err("dump", "conversation %" PRIu64 " is in shard %" PRIu32
                ", not %" PRIu64, conv, log_shard_of(log, conv), shard);
        log_close(log);
        return CLI_USAGE;
    }

    static char buf[1 << 16];
    setvbuf(stdout, buf, _IOFBF, sizeof buf);
    dump_ctx c = {.out = stdout, .limit = limit};
    int status = CLI_OK;
    if (s_conv) {
        status = dump_conv(log, conv, from, &c);
    } else {
        uint32_t lo = s_shard ? (uint32_t)shard : 0;
        uint32_t hi = s_shard ? (uint32_t)shard + 1 : nshards;
        for (uint32_t i = lo; i < hi; i++) {
            int rc = dump_shard(log, i, from, &c);
            if (rc == DUMP_LIMIT)
                break;
            if (rc > status)
                status = rc;
            if (ferror(stdout))
                break;
        }
    }
    log_close(log);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        cli_err("dump", "writing output: %s", strerror(errno));
        return CLI_FAIL;
    }
    return status;
}
