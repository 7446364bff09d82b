/*
 * verify.c — checks a data directory end to end (see verify.h). It opens the
 * log read-only (so recovery's own checks run without repairing anything),
 * then walks every segment again byte by byte rather than trusting the index
 * recovery built: verification must not share the code path it checks more
 * than it has to.
 */
#include "verify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "internal.h"

#define VERIFY_MAX_LINES 20

typedef struct vstate {
    FILE *out;
    int problems;
    conv_table last; /* conv_id -> last msg_id seen, kept in conv->n */
} vstate;

static void problem(vstate *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void problem(vstate *v, const char *fmt, ...)
{
    /* The first problems name the place; past that, count only: one bad
     * segment can make every later msg_id check fail. */
    if (++v->problems > VERIFY_MAX_LINES)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("verify: ", v->out);
    vfprintf(v->out, fmt, ap);
    fputc('\n', v->out);
    va_end(ap);
}

static void damage_cb(void *arg, const log_damage *d)
{
    vstate *v = arg;
    if (d->torn_tail) {
        fprintf(v->out,
                "verify: note: shard %u segment %020llu: torn tail of %llu "
                "bytes at byte %llu (never acked; recovery will cut it)\n",
                d->shard, (unsigned long long)d->seg_base,
                (unsigned long long)d->bytes, (unsigned long long)d->file_pos);
        return;
    }
    problem(v, "shard %u segment %020llu byte %llu: %s (%llu bytes, offsets [%llu, %llu))",
            d->shard, (unsigned long long)d->seg_base,
            (unsigned long long)d->file_pos, cl_strerror(d->err),
            (unsigned long long)d->bytes, (unsigned long long)d->first_offset,
            (unsigned long long)d->end_offset);
}

/* Walk one segment; compare with its sidecar when there is one. */
static void verify_segment(vstate *v, shard *s, seg *sg, uint64_t *offset)
{
    log_t *log = s->log;
    rctx r = {0};
    side_ent *side = NULL;
    uint64_t nside = 0;
    int have_side = 0;
    if (sg->state != SEG_ACTIVE) {
        char p[PATH_MAX_LEN];
        name_segment(p, sizeof p, s->dir, sg->base, SUFFIX_IDX, 0);
        int rc = sidecar_load(log->io, p, s->id, sg->base, sg->end,
                              sg->raw_size, &side, &nside);
        if (rc == 0)
            have_side = 1;
        else if (rc != -ENOENT)
            problem(v, "shard %u segment %020llu: sidecar index %s: %s", s->id,
                    (unsigned long long)sg->base, p, cl_strerror(rc));
    }
    if (sg->base != *offset)
        problem(v, "shard %u segment %020llu: starts at offset %llu, previous "
                "segment ended at %llu", s->id, (unsigned long long)sg->base,
                (unsigned long long)sg->base, (unsigned long long)*offset);
    uint64_t pos = 0, off = sg->base, k = 0;
    while (pos < sg->raw_size) {
        const uint8_t *b;
        batch_header h;
        int rc = seg_read_batch_locked(s, sg, pos, &r, &b, &h);
        if (rc == 0 && h.first_offset != off)
            rc = CL_EMISPLACED;
        if (rc) {
            problem(v, "shard %u segment %020llu byte %llu (offset %llu): %s",
                    s->id, (unsigned long long)sg->base, (unsigned long long)pos,
                    (unsigned long long)off, cl_strerror(rc));
            break;
        }
        size_t rp = 0;
        rec_view rec;
        for (uint32_t i = 0; batch_next_record(b, &h, &rp, &rec) == 0; i++, k++) {
            if (have_side) {
                const side_ent *e = k < nside ? &side[k] : NULL;
                if (!e || e->conv_id != rec.conv_id || e->msg_id != rec.msg_id ||
                    e->type != rec.type || e->pos != pos || e->rec_idx != i) {
                    problem(v, "shard %u segment %020llu: sidecar entry %llu "
                            "disagrees with the record at offset %llu",
                            s->id, (unsigned long long)sg->base,
                            (unsigned long long)k, (unsigned long long)(off + i));
                    have_side = 0;
                }
            }
            if (rec.type != REC_MESSAGE)
                continue;
            conv *c = idx_get(&v->last, rec.conv_id);
            if (!c) {
                problem(v, "out of memory");
                goto out;
            }
            if (rec.msg_id != c->n + 1)
                problem(v, "shard %u segment %020llu offset %llu: conversation "
                        "%llu msg_id %llu follows %llu", s->id,
                        (unsigned long long)sg->base,
                        (unsigned long long)(off + i),
                        (unsigned long long)rec.conv_id,
                        (unsigned long long)rec.msg_id,
                        (unsigned long long)c->n);
            c->n = (uint32_t)rec.msg_id;
        }
        off += h.record_count;
        pos += h.length;
    }
    if (have_side && k != nside)
        problem(v, "shard %u segment %020llu: sidecar has %llu entries, "
                "segment %llu records", s->id, (unsigned long long)sg->base,
                (unsigned long long)nside, (unsigned long long)k);
    if (off != sg->end && pos >= sg->raw_size)
        problem(v, "shard %u segment %020llu: ends at offset %llu, expected %llu",
                s->id, (unsigned long long)sg->base, (unsigned long long)off,
                (unsigned long long)sg->end);
out:
    *offset = sg->end;
    free(side);
    rctx_free(&r);
}

static void quiet(void *arg, int level, const char *msg)
{
    (void)arg;
    (void)level;
    (void)msg;
}

int rcv_verify(const char *dir, FILE *report)
{
    vstate v = {.out = report};
    log_options o = {.read_only = 1};
    /* Recovery's own messages become findings below; keep them quiet. */
    o.log_fn = quiet;
    log_t *log;
    int rc = log_open(dir, &o, &log);
    if (rc) {
        fprintf(report, "verify: cannot open %s: %s\n", dir, cl_strerror(rc));
        return rc;
    }
    log_damage_each(log, damage_cb, &v);
    for (uint32_t i = 0; i < log->nshards; i++) {
        shard *s = &log->shards[i];
        uint64_t off = s->nsegs ? s->segs[0]->base : 0;
        for (uint32_t k = 0; k < s->nsegs; k++)
            verify_segment(&v, s, s->segs[k], &off);
    }
    idx_free(&v.last);
    log_close(log);
    if (v.problems == 0)
        fprintf(report, "verify: %s: ok\n", dir);
    else if (v.problems > VERIFY_MAX_LINES)
        fprintf(report, "verify: ... %d problems in all\n", v.problems);
    return v.problems ? 1 : 0;
}
