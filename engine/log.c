/*
 * log.c — the engine: manifest, shards, group commit, sealing, reads.
 *
 * MANIFEST (DIR/MANIFEST), text, one "key value" per line:
 *     chatlog-manifest 1
 *     shards 16
 *     created_ms 1795000000000
 *     checksum <16 hex digits: XXH3-64 of every byte before this line>
 * Written once, when the directory is created, as tmp-MANIFEST → fdatasync
 * → rename → fsync(DIR). The shard count never changes afterwards: a
 * conversation's shard is XXH3(conv_id) mod shards.
 *
 * GROUP COMMIT. Each shard has one writer thread. log_append() queues a copy
 * of the record and returns. The writer takes everything queued (up to
 * max_batch_bytes), assigns offsets and msg_ids, encodes one batch (more if
 * over BATCH_MAX_RECORDS) into one buffer, and does one pwrite and one
 * fdatasync; appends queued meanwhile form the next group. Only after the
 * fdatasync returns does the writer publish the group (index, durable offset)
 * and hand it to the log's completion thread, which calls on_commit and then
 * each append's callback while the writer is already on the next group (a
 * group of a few records with nothing queued before it is completed on the
 * writer thread itself: the hop would cost more than it saves). So
 * the writer never has more than one group (<= LOG_MAX_WRITE_BYTES) written
 * and not synced — the fact recovery uses to tell a torn tail from
 * corruption — and callbacks never sit between two fdatasyncs.
 *
 * FAILURES. A failed pwrite with ENOSPC truncates the segment back, undoes
 * the group's msg_ids and fails its appends with -ENOSPC; the shard goes on.
 * Any other failed pwrite, and any failed fdatasync, fails the shard for good
 * (sticky): after a failed fdatasync the kernel may have dropped the dirty
 * pages, so retrying could ack data that is not on disk (PostgreSQL 2018).
 * The group and everything queued later fail with that error.
 *
 * ROLL AND SEAL. Before a group that would push the active segment past
 * segment_bytes, the writer creates <next_offset>.log, fsyncs the directory,
 * and hands the old segment to the sealer thread, which writes its sidecar
 * index and its compressed copy (see segment.c) and swaps the segment over.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "errors.h"
#include "internal.h"
#include "util.h"

struct seal_job {
    struct seal_job *next;
    shard *s;
    seg *sg;
};

/* ---- messages ---- */

void log__msg(log_t *log, int level, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (log->opt.log_fn) {
        log->opt.log_fn(log->opt.log_arg, level, buf);
    } else if (level >= LOG_INFO) {
        static const char *names[] = {"debug", "info", "warn", "error"};
        fprintf(stderr, "chatlog %s: %s\n", names[level & 3], buf);
    }
}

int shard__add_damage_locked(shard *s, const log_damage *d)
{
    if (s->ndamage == s->capdamage) {
        uint32_t ncap = s->capdamage ? s->capdamage * 2 : 4;
        log_damage *n = realloc(s->damage, ncap * sizeof *n);
        if (!n)
            return CL_ENOMEM;
        s->damage = n;
        s->capdamage = ncap;
    }
    s->damage[s->ndamage++] = *d;
    return 0;
}

/* ---- shard selection ---- */

uint32_t log_shard_for(uint64_t conv_id, uint32_t shards)
{
    uint8_t b[8];
    put_u64(b, conv_id);
    return (uint32_t)(XXH3_64bits(b, 8) % shards);
}

uint32_t log_shard_count(const log_t *log) { return log->nshards; }

uint32_t log_shard_of(const log_t *log, uint64_t conv_id)
{
    return log_shard_for(conv_id, log->nshards);
}

/* ---- manifest ---- */

static int manifest_read(log_t *log, uint32_t *shards)
{
    char path[PATH_MAX_LEN];
    snprintf(path, sizeof path, "%s/%s", log->dir, NAME_MANIFEST);
    io_file *f;
    int rc = log->io->open(log->io, path, IO_RDONLY, &f);
    if (rc)
        return rc;
    char buf[1024];
    ssize_t n = log->io->pread(f, buf, sizeof buf - 1, 0);
    log->io->close(f);
    if (n < 0)
        return (int)n;
    buf[n] = 0;
    char *ck = strstr(buf, "checksum ");
    if (!ck || (size_t)n == sizeof buf - 1)
        return CL_EMANIFEST;
    unsigned long long want;
    char tail;
    if (sscanf(ck, "checksum %16llx%c", &want, &tail) != 2 || tail != '\n' ||
        XXH3_64bits(buf, (size_t)(ck - buf)) != want)
        return CL_EMANIFEST;
    /* Exactly "chatlog-manifest 1\nshards N\n" with N a plain decimal in
     * range (sscanf's %u would wrap a long number modulo 2^32). */
    static const char head[] = "chatlog-manifest 1\nshards ";
    if (strncmp(buf, head, sizeof head - 1) != 0)
        return CL_EMANIFEST;
    const char *p = buf + sizeof head - 1;
    uint32_t sh = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (digits >= 5)
            return CL_EMANIFEST;
        sh = sh * 10 + (uint32_t)(*p - '0');
    }
    if (*p != '\n' || digits == 0 || sh == 0 || sh > LOG_MAX_SHARDS ||
        (digits > 1 && buf[sizeof head - 1] == '0'))
        return CL_EMANIFEST;
    *shards = sh;
    return 0;
}

static int manifest_write(log_t *log, uint32_t shards)
{
    char body[256], tmp[PATH_MAX_LEN], fin[PATH_MAX_LEN];
    int len = snprintf(body, sizeof body,
                       "chatlog-manifest 1\nshards %u\ncreated_ms %lld\n",
                       shards, (long long)util_now_ms());
    len += snprintf(body + len, sizeof body - (size_t)len, "checksum %016llx\n",
                    (unsigned long long)XXH3_64bits(body, (size_t)len));
    snprintf(tmp, sizeof tmp, "%s/%s%s", log->dir, NAME_TMP_PREFIX, NAME_MANIFEST);
    snprintf(fin, sizeof fin, "%s/%s", log->dir, NAME_MANIFEST);
    io_file *f;
    int rc = log->io->open(log->io, tmp, IO_RDWR | IO_CREATE, &f);
    if (rc)
        return rc;
    if ((rc = log->io->truncate(f, 0)) == 0 &&
        (rc = log->io->pwrite(f, body, (size_t)len, 0)) == 0)
        rc = log->io->fdatasync(f);
    log->io->close(f);
    if (rc == 0)
        rc = log->io->rename(log->io, tmp, fin);
    if (rc == 0)
        rc = log->io->fsync_dir(log->io, log->dir);
    return rc;
}

/* ---- segments ---- */

int shard__new_segment_locked(shard *s, uint64_t base, seg **out)
{
    log_t *log = s->log;
    if (s->nsegs >= LOC_MAX_SEGMENTS)
        return CL_ETOOBIG;
    if (s->nsegs == s->capsegs) {
        uint32_t ncap = s->capsegs ? s->capsegs * 2 : 16;
        seg **n = realloc(s->segs, ncap * sizeof *n);
        if (!n)
            return CL_ENOMEM;
        s->segs = n;
        s->capsegs = ncap;
    }
    seg *sg = seg__alloc(s->nsegs, base);
    if (!sg)
        return CL_ENOMEM;
    char path[PATH_MAX_LEN];
    name_segment(path, sizeof path, s->dir, base, SUFFIX_LOG, 0);
    int rc = log->io->open(log->io, path, IO_RDWR | IO_CREATE, &sg->f);
    if (rc == 0)
        rc = log->io->truncate(sg->f, 0);
    if (rc == 0)
        rc = log->io->fsync_dir(log->io, s->dir);
    if (rc) {
        seg__free(log, sg);
        return rc;
    }
    sg->state = SEG_ACTIVE;
    s->segs[s->nsegs++] = sg;
    *out = sg;
    return 0;
}

/* ---- sealing ---- */

void log__queue_seal(log_t *log, shard *s, seg *sg)
{
    struct seal_job *j = malloc(sizeof *j);
    if (!j)
        return; /* stays raw; the next open queues it again */
    j->next = NULL;
    j->s = s;
    j->sg = sg;
    sg->sealing = 1;
    pthread_mutex_lock(&log->smu);
    if (log->sq_tail)
        log->sq_tail->next = j;
    else
        log->sq_head = j;
    log->sq_tail = j;
    pthread_cond_signal(&log->scond);
    pthread_mutex_unlock(&log->smu);
}

/* Write the sidecar and the compressed copy of a sealed raw segment, then
 * swap the segment to the compressed file. Runs on the sealer thread; the
 * segment's fields are stable (sealed) except for the swap, done under the
 * shard lock. */
static void seal_segment(log_t *log, shard *s, seg *sg)
{
    io_vfs *io = log->io;
    uint8_t *raw = NULL;
    side_ent *ents = NULL;
    zblock *blocks = NULL;
    uint32_t nblocks = 0;
    int rc;
    char tmp[PATH_MAX_LEN], zpath[PATH_MAX_LEN], lpath[PATH_MAX_LEN];

    pthread_rwlock_rdlock(&s->lock);
    int state = sg->state;
    int still = state != SEG_ACTIVE && sg->ord < s->nsegs && s->segs[sg->ord] == sg;
    uint64_t raw_size = sg->raw_size, nrec = sg->end - sg->base;
    pthread_rwlock_unlock(&s->lock);
    if (!still)
        return;

    raw = malloc(raw_size ? raw_size : 1);
    ents = malloc((nrec ? nrec : 1) * sizeof *ents);
    if (!raw || !ents) {
        rc = CL_ENOMEM;
        goto out;
    }
    if (state == SEG_SEALED) {
        ssize_t n = io->pread(sg->f, raw, raw_size, 0);
        rc = n < 0 ? (int)n : (uint64_t)n != raw_size ? CL_ETRUNC : 0;
    } else {
        /* Compressed already: only the sidecar is missing. */
        rbuf blk = {0};
        rc = 0;
        for (uint32_t i = 0; i < sg->nblocks && rc == 0; i++) {
            rc = zlog_read_block(io, sg->f, &sg->blocks[i], &blk);
            if (rc == 0)
                memcpy(raw + sg->blocks[i].raw_pos, blk.p, sg->blocks[i].raw_len);
        }
        rbuf_free(&blk);
    }
    if (rc)
        goto out;
    /* Re-verify every batch: bytes that went bad since they were written
     * must not be compressed into a "verified" file. */
    uint64_t pos = 0, off = sg->base, k = 0;
    while (pos < raw_size) {
        batch_header h;
        rc = batch_verify_at(raw + pos, raw_size - pos, s->id, off, &h);
        if (rc)
            goto out;
        size_t rp = 0;
        rec_view r;
        for (uint32_t i = 0; batch_next_record(raw + pos, &h, &rp, &r) == 0; i++) {
            if (k >= nrec) {
                rc = CL_ECORRUPT;
                goto out;
            }
            ents[k++] = (side_ent){r.conv_id, r.msg_id, (uint32_t)pos,
                                   (uint16_t)i, r.type};
        }
        off += h.record_count;
        pos += h.length;
    }
    if (k != nrec) {
        rc = CL_ECORRUPT;
        goto out;
    }
    uint64_t side_bytes = 0;
    if ((rc = sidecar_write(io, s->dir, s->id, sg, ents, k, &side_bytes)))
        goto out;
    if (state == SEG_SEALED && !log->opt.no_compress && raw_size > 0) {
        name_segment(tmp, sizeof tmp, s->dir, sg->base, SUFFIX_ZLOG, 1);
        name_segment(zpath, sizeof zpath, s->dir, sg->base, SUFFIX_ZLOG, 0);
        if ((rc = zlog_write(io, tmp, s->id, sg, raw, &blocks, &nblocks)))
            goto out;
        if ((rc = io->rename(io, tmp, zpath)))
            goto out;
    }
    if ((rc = io->fsync_dir(io, s->dir)))
        goto out;
    if (blocks) {
        io_file *zf;
        if ((rc = io->open(io, zpath, IO_RDONLY, &zf)))
            goto out;
        uint64_t zsize = 0;
        io->size(zf, &zsize);
        pthread_rwlock_wrlock(&s->lock);
        io_file *old = sg->f;
        sg->f = zf;
        sg->blocks = blocks;
        sg->nblocks = nblocks;
        sg->state = SEG_COMPRESSED;
        sg->disk_bytes = zsize + side_bytes;
        s->gen++;
        pthread_rwlock_unlock(&s->lock);
        blocks = NULL;
        io->close(old);
        name_segment(lpath, sizeof lpath, s->dir, sg->base, SUFFIX_LOG, 0);
        if ((rc = io->unlink(io, lpath)) == 0)
            rc = io->fsync_dir(io, s->dir);
    }
out:
    if (rc)
        log__msg(log, LOG_WARN,
                 "shard %u: sealing segment %020llu failed: %s (kept raw)",
                 s->id, (unsigned long long)sg->base, cl_strerror(rc));
    free(blocks);
    free(raw);
    free(ents);
}

static void *sealer_main(void *arg)
{
    log_t *log = arg;
    pthread_mutex_lock(&log->smu);
    for (;;) {
        while (!log->sq_head && !log->sealer_stop)
            pthread_cond_wait(&log->scond, &log->smu);
        if (!log->sq_head)
            break;
        struct seal_job *j = log->sq_head;
        log->sq_head = j->next;
        if (!log->sq_head)
            log->sq_tail = NULL;
        log->sealer_busy = 1;
        pthread_mutex_unlock(&log->smu);
        seal_segment(log, j->s, j->sg);
        pthread_rwlock_wrlock(&j->s->lock);
        j->sg->sealing = 0;
        pthread_rwlock_unlock(&j->s->lock);
        free(j);
        pthread_mutex_lock(&log->smu);
        log->sealer_busy = 0;
        pthread_cond_broadcast(&log->scond);
    }
    pthread_mutex_unlock(&log->smu);
    return NULL;
}

/* ---- the writer ---- */

static int shard_cut(shard *s, uint64_t offset);
static void process_install(shard *s, pending *p);

/* Free one queue entry (and a write chain with its last chunk). */
static void pending_free(pending *p)
{
    if (p->kind == PK_WRITE && p->last)
        free(p->chain);
    if (p->kind == PK_INSTALL)
        segship__free(p->inst);
    free(p);
}

/* Call an entry's callback with status (res for a successful append). */
static void pending_done(pending *p, int status, const log_append_result *res)
{
    if (p->kind == PK_APPEND) {
        if (p->cb)
            p->cb(p->arg, status, status ? NULL : res);
    } else if (p->kind == PK_INSTALL) {
        if (p->inst->cb)
            p->inst->cb(p->inst->arg, status, status ? 0 : p->inst->end);
    } else if (p->last) {
        if (status == 0 && p->chain->err)
            status = p->chain->err;
        if (p->chain->cb)
            p->chain->cb(p->chain->arg, status, status ? 0 : p->end);
    }
}

/* Writer thread: remember that a chunk of a write chain failed, so that its
 * later chunks fail too (and the last one reports it). */
static void chain_fail(pending *list, int err)
{
    for (pending *p = list; p; p = p->next)
        if (p->kind == PK_WRITE && !p->chain->err)
            p->chain->err = p->status ? p->status : err;
}

static void fail_list(pending *p, int err)
{
    chain_fail(p, err);
    while (p) {
        pending *next = p->next;
        pending_done(p, p->status ? p->status : err, NULL);
        pending_free(p);
        p = next;
    }
}

/* A group at most this large is completed on the writer thread itself when
 * none of its shard's groups wait for the completer: the hop to another
 * thread would cost more than the callbacks (one producer's latency). */
#define INLINE_GROUP 4

static void run_group(log_t *log, done_group *g);

/* Hand a finished group to the completion thread (or run it here). */
static void complete_group(shard *s, done_group *g)
{
    log_t *log = s->log;
    pthread_mutex_lock(&s->qmu);
    int inline_ok = s->completing == 0 && g->count <= INLINE_GROUP;
    if (!inline_ok)
        s->completing += g->count;
    pthread_mutex_unlock(&s->qmu);
    if (inline_ok) {
        run_group(log, g);
        return;
    }
    g->next = NULL;
    pthread_mutex_lock(&log->cmu);
    if (log->ctail)
        log->ctail->next = g;
    else
        log->chead = g;
    log->ctail = g;
    pthread_cond_signal(&log->ccond);
    pthread_mutex_unlock(&log->cmu);
}

/* Fail a group: through the completer when there is a group object, so
 * callbacks keep their order; inline if even that could not be allocated. */
static void fail_group(shard *s, done_group *g, pending *list, uint32_t count,
                       int err)
{
    if (!g) {
        fail_list(list, err);
        return;
    }
    chain_fail(list, err);
    g->s = s;
    g->list = list;
    g->count = count;
    g->nents = 0;
    g->status = err;
    complete_group(s, g);
}

/* on_commit, then the callbacks, then free the group. */
static void run_group(log_t *log, done_group *g)
{
    shard *s = g->s;
    if (g->status == 0 && g->nents && log->opt.on_commit)
        log->opt.on_commit(log->opt.commit_arg, s->id, g->ents, g->nents);
    for (pending *p = g->list, *pn; p; p = pn) {
        pn = p->next;
        int status = p->status ? p->status : g->status;
        log_append_result res = {s->id, p->offset, p->rec.msg_id, p->rec.ts_ms,
                                 p->term, p->batch_first, p->batch_count};
        pending_done(p, status, &res);
        pending_free(p);
    }
    free(g);
}

static void *completer_main(void *arg)
{
    log_t *log = arg;
    pthread_mutex_lock(&log->cmu);
    for (;;) {
        while (!log->chead && !log->cstop)
            pthread_cond_wait(&log->ccond, &log->cmu);
        done_group *g = log->chead;
        if (!g)
            break;
        log->chead = log->ctail = NULL;
        pthread_mutex_unlock(&log->cmu);
        while (g) {
            done_group *next = g->next;
            shard *s = g->s;
            uint32_t count = g->count;
            run_group(log, g);
            pthread_mutex_lock(&s->qmu);
            s->completing -= count;
            pthread_mutex_unlock(&s->qmu);
            g = next;
        }
        pthread_mutex_lock(&log->cmu);
    }
    pthread_mutex_unlock(&log->cmu);
    return NULL;
}

/* Roll the active segment: seal it and start a new one at next_offset. */
static int roll_segment(shard *s)
{
    seg *old = s->segs[s->nsegs - 1], *nsg;
    pthread_rwlock_wrlock(&s->lock);
    int rc = shard__new_segment_locked(s, s->next_offset, &nsg);
    if (rc == 0)
        old->state = SEG_SEALED;
    pthread_rwlock_unlock(&s->lock);
    if (rc == 0)
        log__queue_seal(s->log, s, old);
    return rc;
}

static int accepted(const pending *p) { return p->status == 0; }

/* Encode the group into s->wbuf: runs of appends of one term as batches of
 * at most BATCH_MAX_RECORDS, received chunks copied. GROUP_END is cleared
 * everywhere and set on the write's last batch (checksums recomputed).
 * Fills each entry's batch fields and wpos. */
static int encode_group(shard *s, pending *list, size_t total, int64_t now)
{
    if (s->wcap < total) {
        uint8_t *n = realloc(s->wbuf, total);
        if (!n)
            return CL_ENOMEM;
        s->wbuf = n;
        s->wcap = total;
    }
    rec_view views[256];
    size_t pos = 0, last_batch = SIZE_MAX;
    pending *p = list;
    while (p) {
        if (!accepted(p)) {
            p = p->next;
            continue;
        }
        if (p->kind == PK_WRITE) {
            p->wpos = pos;
            size_t q = 0;
            while (q < p->size) {
                batch_header h;
                uint8_t *b = s->wbuf + pos + q;
                memcpy(b, p->data + q, BATCH_HEADER_SIZE);
                if (batch_peek_header(b, &h))
                    return CL_ECORRUPT; /* verified at call time */
                memcpy(b, p->data + q, h.length);
                if (h.flags & BATCH_FLAG_GROUP_END)
                    batch_set_flags(b, &h, 0);
                last_batch = pos + q;
                q += h.length;
            }
            pos += p->size;
            p = p->next;
            continue;
        }
        /* A run of accepted appends of one term. */
        batch_header h = {.shard_id = s->id, .first_offset = p->offset,
                          .term = p->term, .ts_ms = now};
        uint32_t n = 0;
        pending *q = p;
        for (; q && n < BATCH_MAX_RECORDS; q = q->next) {
            if (!accepted(q))
                continue;
            if (q->kind != PK_APPEND || q->term != p->term)
                break;
            n++;
        }
        rec_view *vs = n <= 256 ? views : malloc(n * sizeof *vs);
        if (!vs)
            return CL_ENOMEM;
        uint32_t i = 0;
        for (pending *r = p; r != q; r = r->next) {
            if (!accepted(r))
                continue;
            r->batch_first = p->offset;
            r->batch_count = n;
            r->batch_idx = i;
            r->wpos = pos;
            vs[i++] = r->rec;
        }
        last_batch = pos;
        pos += batch_encode(s->wbuf + pos, &h, vs, n);
        if (vs != views)
            free(vs);
        p = q;
    }
    if (pos != total)
        return CL_ECORRUPT;
    if (last_batch != SIZE_MAX) {
        batch_header h;
        if (batch_peek_header(s->wbuf + last_batch, &h))
            return CL_ECORRUPT;
        batch_set_flags(s->wbuf + last_batch, &h, BATCH_FLAG_GROUP_END);
    }
    return 0;
}

/* The bytes encode_group will write. */
static size_t group_bytes(const pending *list)
{
    size_t total = 0;
    uint32_t run = 0;
    const pending *prev = NULL;
    for (const pending *p = list; p; p = p->next) {
        if (!accepted(p))
            continue;
        if (p->kind == PK_WRITE) {
            total += p->size;
        } else {
            if (prev && prev->kind == PK_APPEND && prev->term == p->term &&
                run < BATCH_MAX_RECORDS) {
                run++;
            } else {
                run = 1;
                total += BATCH_OVERHEAD;
            }
            total += p->size;
        }
        prev = p;
    }
    return total;
}

/* Undo the msg_ids a failed group took: between groups every
 * conversation's last assigned msg_id is its last published one (c->n), so
 * each conversation the group touched goes back to that. */
static void unassign_locked(shard *s, pending *list)
{
    for (pending *p = list; p; p = p->next) {
        if (!accepted(p))
            continue;
        if (p->kind == PK_APPEND) {
            if (p->rec.type == REC_MESSAGE) {
                conv *c = idx_find(&s->convs, p->rec.conv_id);
                if (c)
                    c->assigned = c->n;
            }
            continue;
        }
        for (size_t q = 0; q < p->size;) {
            batch_header h;
            batch_peek_header(p->data + q, &h);
            size_t rp = 0;
            rec_view r;
            while (batch_next_record(p->data + q, &h, &rp, &r) == 0) {
                if (r.type != REC_MESSAGE)
                    continue;
                conv *c = idx_find(&s->convs, r.conv_id);
                if (c)
                    c->assigned = c->n;
            }
            q += h.length;
        }
    }
}

/* Assign offsets, msg_ids and timestamps (appends), take the given msg_ids
 * (received chunks: each must continue its conversation). Caller holds the
 * lock exclusively. */
static int assign_locked(shard *s, pending *list, int64_t *now)
{
    for (pending *p = list; p; p = p->next) {
        if (!accepted(p))
            continue;
        if (p->kind == PK_APPEND) {
            p->offset = s->next_offset++;
            if (p->rec.ts_ms == 0)
                p->rec.ts_ms = *now;
            if (p->rec.type == REC_MESSAGE) {
                conv *c = idx_get(&s->convs, p->rec.conv_id);
                if (!c)
                    return CL_ENOMEM;
                p->rec.msg_id = ++c->assigned;
            }
            continue;
        }
        if (p->offset != s->next_offset)
            return CL_EINVAL; /* can't happen: planned at take time */
        for (size_t q = 0; q < p->size;) {
            batch_header h;
            batch_peek_header(p->data + q, &h);
            size_t rp = 0;
            rec_view r;
            while (batch_next_record(p->data + q, &h, &rp, &r) == 0) {
                if (r.ts_ms > *now)
                    *now = r.ts_ms;
                if (r.type != REC_MESSAGE)
                    continue;
                conv *c = idx_get(&s->convs, r.conv_id);
                if (!c)
                    return CL_ENOMEM;
                if (r.msg_id != c->assigned + 1)
                    return CL_EINVAL; /* not the conversation's next id */
                c->assigned = r.msg_id;
            }
            q += h.length;
        }
        s->next_offset = p->end;
    }
    return 0;
}

/* Publish a durable group to the index and fill ents; caller holds the lock
 * exclusively. Returns the number of entries, *idx_err on failure to index
 * (the shard must then fail). */
static uint32_t publish_locked(shard *s, seg *act, pending *list,
                               log_entry *ents, int *idx_err)
{
    uint64_t base = act->raw_size;
    uint32_t k = 0;
    for (pending *p = list; p; p = p->next) {
        if (!accepted(p))
            continue;
        if (p->kind == PK_APPEND) {
            if (p->batch_idx == 0)
                seg_sparse_add(act, p->batch_first, base + p->wpos);
            if (p->rec.type == REC_MESSAGE) {
                conv *c = idx_find(&s->convs, p->rec.conv_id);
                /* Allocation failure here would desynchronise the index from
                 * the log; fail the shard rather than serve wrong reads. */
                if (!c || c->n + 1 != p->rec.msg_id ||
                    idx_push(c, loc_pack(act->ord, base + p->wpos, p->batch_idx)))
                    *idx_err = CL_ENOMEM;
                s->messages++;
            }
            ents[k++] = (log_entry){s->id, p->offset, p->term, p->rec};
            continue;
        }
        for (size_t q = 0; q < p->size;) {
            batch_header h;
            batch_peek_header(p->data + q, &h);
            uint64_t bpos = base + p->wpos + q;
            seg_sparse_add(act, h.first_offset, bpos);
            size_t rp = 0;
            rec_view r;
            for (uint32_t i = 0; batch_next_record(p->data + q, &h, &rp, &r) == 0; i++) {
                if (r.type == REC_MESSAGE) {
                    conv *c = idx_find(&s->convs, r.conv_id);
                    if (!c || c->n + 1 != r.msg_id ||
                        idx_push(c, loc_pack(act->ord, bpos, i)))
                        *idx_err = CL_ENOMEM;
                    s->messages++;
                }
                ents[k++] = (log_entry){s->id, h.first_offset + i, h.term, r};
            }
            q += h.length;
        }
    }
    return k;
}

static void set_failed(shard *s, int rc)
{
    pthread_mutex_lock(&s->qmu);
    if (!s->failed)
        s->failed = rc;
    pthread_mutex_unlock(&s->qmu);
}

/* Write one group: list holds count queue entries (some refused already,
 * status set), nrec records to write. A PK_WRITE entry marked cut comes
 * first among the accepted ones. */
static void process_group(shard *s, pending *list, uint32_t count, uint32_t nrec)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    int rc = s->failed;
    /* The group object (with room for on_commit's entries) is made before
     * anything is written, so that a durable group can always be completed. */
    done_group *g = malloc(sizeof *g + (size_t)nrec * sizeof(log_entry));
    if (rc || !g) {
        fail_group(s, g, list, count, rc ? rc : CL_ENOMEM);
        return;
    }
    for (pending *p = list; p; p = p->next)
        if (accepted(p) && p->kind == PK_WRITE && p->cut) {
            /* Remove the suffix the received batches replace; durable
             * before anything is written after it. */
            rc = shard_cut(s, p->offset);
            if (rc == CL_EINVAL) {
                p->status = rc; /* only this write fails */
                p->chain->err = rc;
                rc = 0;
            }
            break;
        }
    if (rc) {
        log__msg(log, LOG_ERROR, "shard %u: cutting the log for received "
                 "batches failed: %s", s->id, cl_strerror(rc));
        fail_group(s, g, list, count, rc);
        return;
    }
    int64_t now = util_now_ms();
    if (now < s->last_ts)
        now = s->last_ts;
    size_t total = group_bytes(list);
    nrec = 0;
    for (pending *p = list; p; p = p->next)
        if (accepted(p))
            nrec += p->kind == PK_APPEND ? 1 : p->nrecs;
    if (nrec == 0) {
        /* Nothing to write (a truncation only, or every entry refused). */
        g->s = s;
        g->list = list;
        g->count = count;
        g->nents = 0;
        g->status = 0;
        complete_group(s, g);
        return;
    }

    seg *act = s->segs[s->nsegs - 1];
    if (act->raw_size > 0 && act->raw_size + total > log->opt.segment_bytes) {
        if ((rc = roll_segment(s))) {
            log__msg(log, LOG_ERROR, "shard %u: cannot roll segment: %s",
                     s->id, cl_strerror(rc));
            fail_group(s, g, list, count, rc);
            return;
        }
        act = s->segs[s->nsegs - 1];
    }

    uint64_t first = s->next_offset;
    pthread_rwlock_wrlock(&s->lock); /* idx_get may insert */
    rc = assign_locked(s, list, &now);
    pthread_rwlock_unlock(&s->lock);
    if (rc == 0)
        rc = encode_group(s, list, total, now);
    if (rc == 0)
        rc = io->pwrite(act->f, s->wbuf, total, act->raw_size);
    if (rc == 0 && log->opt.fsync == LOG_FSYNC_ALWAYS)
        rc = io->fdatasync(act->f);

    if (rc) {
        int sticky = rc != -ENOSPC && rc != CL_ENOMEM && rc != CL_EINVAL;
        /* Put the log back as it was: drop what may have been written and
         * hand the msg_ids out again. */
        int trc = io->truncate(act->f, act->raw_size);
        if (trc == 0 && !sticky)
            trc = io->fdatasync(act->f); /* the cut must be durable too */
        if (trc && !sticky) {
            sticky = 1;
            rc = trc;
        }
        pthread_rwlock_wrlock(&s->lock);
        unassign_locked(s, list);
        s->next_offset = first;
        if (sticky)
            set_failed(s, rc);
        pthread_rwlock_unlock(&s->lock);
        log__msg(log, sticky ? LOG_ERROR : LOG_WARN,
                 "shard %u: group of %u entries failed: %s%s", s->id, count,
                 cl_strerror(rc), sticky ? "; shard is now read-only" : "");
        fail_group(s, g, list, count, rc);
        return;
    }

    /* Durable: publish, then tell the stream and the callers. */
    int idx_err = 0;
    pthread_rwlock_wrlock(&s->lock);
    uint32_t k = publish_locked(s, act, list, g->ents, &idx_err);
    act->raw_size += total;
    act->disk_bytes = act->raw_size;
    act->end = s->next_offset;
    act->records += k;
    s->records += k;
    s->durable_offset = s->next_offset;
    s->last_ts = now;
    pthread_rwlock_unlock(&s->lock);
    if (idx_err)
        set_failed(s, idx_err); /* durable, but the index could not take it */

    g->s = s;
    g->list = list;
    g->count = count;
    g->nents = k;
    g->status = 0;
    complete_group(s, g);
}

/* Take the next group off the queue (caller holds qmu): entries while they
 * fit in max_batch_bytes (at least one). Decides here, atomically with
 * log_set_term, which fenced appends are refused, and plans each received
 * chunk against the offsets the group reaches. *nrec gets the records to
 * write. */
static pending *take_group(shard *s, uint32_t *count_out, uint32_t *nrec_out)
{
    log_t *log = s->log;
    pending *head = s->qhead, *tail = NULL, *p = head;
    uint64_t bytes = 0, running = s->next_offset, term = s->term;
    uint32_t count = 0, nrec = 0, run = 0, naccepted = 0;
    uint64_t run_term = 0;
    int run_open = 0;
    while (p) {
        uint64_t add = 0;
        int status = 0;
        if (p->kind == PK_INSTALL) {
            /* A segment install runs alone: it replaces the active segment. */
            if (count)
                break;
            p->status = 0;
            count = 1;
            tail = p;
            break;
        }
        if (p->kind == PK_APPEND) {
            if (p->fenced && p->term != term)
                status = CL_ESTALE;
            else {
                int fresh = !run_open || run_term != term || run == BATCH_MAX_RECORDS;
                add = p->size + (fresh ? BATCH_OVERHEAD : 0);
            }
        } else if (p->chain->err) {
            status = p->chain->err;
        } else if (p->offset > running) {
            status = CL_EINVAL;
        } else {
            if (p->offset < running && naccepted)
                break; /* the cut must come first in its group */
            add = p->size;
        }
        if (count && status == 0 && bytes + add > log->opt.max_batch_bytes)
            break;
        /* Taken. */
        p->status = status;
        if (status == 0) {
            naccepted++;
            bytes += add;
            if (p->kind == PK_APPEND) {
                p->term = term;
                if (!run_open || run_term != term || run == BATCH_MAX_RECORDS) {
                    run = 0;
                    run_open = 1;
                    run_term = term;
                }
                run++;
                running++;
                nrec++;
            } else {
                p->cut = p->offset < running;
                run_open = 0;
                running = p->end;
                nrec += p->nrecs;
                if (p->max_term > term)
                    term = p->max_term;
            }
        } else if (p->kind == PK_WRITE) {
            p->chain->err = status;
        }
        count++;
        tail = p;
        p = p->next;
        if (status == 0 && tail->kind == PK_WRITE && tail->cut)
            break; /* a cut is planned alone: it may fail */
    }
    s->qhead = tail->next;
    if (!s->qhead)
        s->qtail = NULL;
    tail->next = NULL;
    s->qlen -= count;
    for (pending *q = head; q; q = q->next)
        s->qbytes -= q->size;
    /* Terms never decrease along the log: from now on the shard's term is at
     * least that of the batches just taken. */
    s->term = term;
    *count_out = count;
    *nrec_out = nrec;
    return head;
}

static void *writer_main(void *arg)
{
    shard *s = arg;
    log_t *log = s->log;
    pthread_mutex_lock(&s->qmu);
    for (;;) {
        while ((!s->qhead || s->paused) && !s->stopping)
            pthread_cond_wait(&s->qcond, &s->qmu);
        if (!s->qhead)
            break; /* stopping and drained */
        if (log->opt.max_wait_us && s->qbytes < log->opt.max_batch_bytes &&
            !s->stopping) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_nsec += (long)log->opt.max_wait_us * 1000;
            dl.tv_sec += dl.tv_nsec / 1000000000;
            dl.tv_nsec %= 1000000000;
            while (s->qbytes < log->opt.max_batch_bytes && !s->stopping &&
                   !s->paused &&
                   pthread_cond_timedwait(&s->qcond, &s->qmu, &dl) == 0)
                ;
            if (s->paused && !s->stopping)
                continue; /* a truncation holds the shard: wait for it */
        }
        uint32_t count, nrec;
        pending *head = take_group(s, &count, &nrec);
        s->busy = 1;
        pthread_mutex_unlock(&s->qmu);
        if (head->kind == PK_INSTALL)
            process_install(s, head);
        else
            process_group(s, head, count, nrec);
        pthread_mutex_lock(&s->qmu);
        s->busy = 0;
        pthread_cond_broadcast(&s->idlecond);
    }
    pthread_mutex_unlock(&s->qmu);
    return NULL;
}

/* ---- append ---- */

/* Queue p (a PK_APPEND or a chain of PK_WRITE chunks, last at tail) on s,
 * or return the error that refuses it. fence: compare with the term. */
static int enqueue(log_t *log, shard *s, pending *p, pending *tail,
                   uint32_t n, int fenced, uint64_t fence)
{
    uint64_t bytes = 0;
    for (pending *q = p; q; q = q->next)
        bytes += q->size;
    pthread_mutex_lock(&s->qmu);
    int rc = s->stopping ? CL_ECLOSED
             : s->failed ? CL_EFAILED
             : s->write_fenced ? CL_EDAMAGED
             : fenced && s->term != fence ? CL_ESTALE
             : s->qlen + s->completing + n > log->opt.max_pending ? CL_EBUSY
                                                          : 0;
    if (rc == 0) {
        if (s->qtail)
            s->qtail->next = p;
        else
            s->qhead = p;
        s->qtail = tail;
        s->qlen += n;
        s->qbytes += bytes;
        pthread_cond_signal(&s->qcond);
    }
    pthread_mutex_unlock(&s->qmu);
    return rc;
}

static int append_common(log_t *log, const rec_view *rec, int fenced,
                         uint64_t term, log_append_cb cb, void *arg)
{
    if (log->opt.read_only || !rec || rec->type == 0 || rec->type > REC_TYPE_MAX ||
        rec->type == REC_NOOP || /* shard-less: log_noop_batch */
        (rec->type == REC_MESSAGE && rec->msg_id != 0) ||
        (rec->key_len && !rec->key) || (rec->body_len && !rec->body))
        return CL_EINVAL;
    if (rec->key_len > RECORD_MAX_KEY || rec->body_len > RECORD_MAX_BODY)
        return CL_ETOOBIG;
    shard *s = &log->shards[log_shard_of(log, rec->conv_id)];
    uint32_t size = (uint32_t)batch_record_size(rec->key_len, rec->body_len);
    pending *p = calloc(1, sizeof *p + rec->key_len + rec->body_len);
    if (!p)
        return CL_ENOMEM;
    p->kind = PK_APPEND;
    p->fenced = (uint8_t)fenced;
    p->term = term;
    p->rec = *rec;
    p->rec.flags = 0;
    p->rec.key = p->data;
    p->rec.body = p->data + rec->key_len;
    if (rec->key_len)
        memcpy(p->data, rec->key, rec->key_len);
    if (rec->body_len)
        memcpy(p->data + rec->key_len, rec->body, rec->body_len);
    p->cb = cb;
    p->arg = arg;
    p->size = size;
    int rc = enqueue(log, s, p, p, 1, fenced, term);
    if (rc)
        free(p);
    return rc;
}

int log_append(log_t *log, const rec_view *rec, log_append_cb cb, void *arg)
{
    return append_common(log, rec, 0, 0, cb, arg);
}

int log_append_in_term(log_t *log, const rec_view *rec, uint64_t term,
                       log_append_cb cb, void *arg)
{
    return append_common(log, rec, 1, term, cb, arg);
}

/* ---- replication: received batches ---- */

size_t log_noop_batch(uint8_t out[LOG_NOOP_BATCH_BYTES], uint32_t shard_id,
                      uint64_t offset, uint64_t term)
{
    rec_view r = {.type = REC_NOOP};
    batch_header h = {.flags = BATCH_FLAG_GROUP_END, .shard_id = shard_id,
                      .first_offset = offset, .term = term, .ts_ms = 0};
    memset(out, 0, LOG_NOOP_BATCH_BYTES);
    return batch_encode(out, &h, &r, 1);
}

/* Check received bytes (see log.h); *end gets the offset after them. */
static int check_received(log_t *log, uint32_t shard_id, uint64_t at_offset,
                          const uint8_t *bytes, size_t len, uint64_t *end)
{
    uint64_t off = at_offset, last_term = 0;
    size_t pos = 0;
    while (pos < len) {
        batch_header h;
        int rc = batch_verify_at(bytes + pos, len - pos, shard_id, off, &h);
        if (rc)
            return rc;
        if (h.length > LOG_MAX_WRITE_BYTES - 64 * 1024)
            return CL_ETOOBIG;
        if (h.term < last_term)
            return CL_EINVAL; /* terms never decrease along a log */
        last_term = h.term;
        size_t rp = 0;
        rec_view r;
        while (batch_next_record(bytes + pos, &h, &rp, &r) == 0) {
            if (r.type == REC_NOOP) {
                if (r.conv_id || r.msg_id || r.sender_id || r.key_len || r.body_len)
                    return CL_ECORRUPT;
                continue;
            }
            if (log_shard_of(log, r.conv_id) != shard_id)
                return CL_EMISPLACED;
            if (r.type == REC_MESSAGE && r.msg_id == 0)
                return CL_ECORRUPT;
        }
        off += h.record_count;
        pos += h.length;
    }
    *end = off;
    return 0;
}

int log_check_batches(log_t *log, uint32_t shard_id, uint64_t at_offset,
                      const uint8_t *bytes, size_t len)
{
    uint64_t end;
    if (shard_id >= log->nshards || len > LOG_MAX_RECEIVE_BYTES || (len && !bytes))
        return CL_EINVAL;
    return check_received(log, shard_id, at_offset, bytes, len, &end);
}

int log_write_batches(log_t *log, uint32_t shard_id, uint64_t at_offset,
                      const uint8_t *bytes, size_t len, log_write_cb cb,
                      void *arg)
{
    if (log->opt.read_only || shard_id >= log->nshards || (len && !bytes) ||
        at_offset > UINT64_MAX / 2)
        return CL_EINVAL;
    if (len > LOG_MAX_RECEIVE_BYTES)
        return CL_ETOOBIG;
    uint64_t end;
    int rc = check_received(log, shard_id, at_offset, bytes, len, &end);
    if (rc)
        return rc;
    wchain *ch = calloc(1, sizeof *ch);
    if (!ch)
        return CL_ENOMEM;
    ch->cb = cb;
    ch->arg = arg;
    /* Chunks of whole batches, at most max_batch_bytes each (a single
     * larger batch alone): each a local write of its own at most. */
    pending *head = NULL, *tail = NULL;
    uint32_t n = 0;
    size_t pos = 0;
    uint64_t off = at_offset;
    do {
        size_t clen = 0;
        uint32_t recs = 0;
        uint64_t max_term = 0;
        while (pos + clen < len) {
            batch_header h;
            batch_peek_header(bytes + pos + clen, &h);
            if (clen && clen + h.length > log->opt.max_batch_bytes)
                break;
            clen += h.length;
            recs += h.record_count;
            if (h.term > max_term)
                max_term = h.term;
        }
        pending *p = calloc(1, sizeof *p + clen);
        if (!p) {
            while (head) {
                pending *nx = head->next;
                free(head);
                head = nx;
            }
            free(ch);
            return CL_ENOMEM;
        }
        p->kind = PK_WRITE;
        p->chain = ch;
        p->offset = off;
        p->size = (uint32_t)clen;
        p->nrecs = recs;
        p->end = off + recs;
        p->max_term = max_term;
        if (clen)
            memcpy(p->data, bytes + pos, clen);
        if (tail)
            tail->next = p;
        else
            head = p;
        tail = p;
        n++;
        pos += clen;
        off += recs;
    } while (pos < len);
    tail->last = 1;
    shard *s = &log->shards[shard_id];
    rc = enqueue(log, s, head, tail, n, 0, 0);
    if (rc) {
        while (head) {
            pending *nx = head->next;
            free(head);
            head = nx;
        }
        free(ch);
    }
    return rc;
}

/* ---- open / close ---- */

static int normalise_options(log_options *o)
{
    if (o->shards > LOG_MAX_SHARDS)
        return CL_EINVAL;
    if (!o->segment_bytes)
        o->segment_bytes = LOG_DEFAULT_SEGMENT_BYTES;
    if (o->segment_bytes < LOG_MIN_SEGMENT_BYTES ||
        o->segment_bytes > LOG_MAX_SEGMENT_BYTES)
        return CL_EINVAL;
    if (!o->max_batch_bytes)
        o->max_batch_bytes = LOG_DEFAULT_BATCH_BYTES;
    if (o->max_batch_bytes > LOG_MAX_WRITE_BYTES - 64 * 1024)
        o->max_batch_bytes = LOG_MAX_WRITE_BYTES - 64 * 1024;
    /* Keep a segment to many groups, so that rolling stays near its size. */
    if (o->max_batch_bytes > o->segment_bytes / 4)
        o->max_batch_bytes = (uint32_t)(o->segment_bytes / 4);
    if (!o->max_pending)
        o->max_pending = LOG_DEFAULT_MAX_PENDING;
    if (o->fsync != LOG_FSYNC_ALWAYS && o->fsync != LOG_FSYNC_NONE)
        return CL_EINVAL;
    if (o->max_wait_us > 1000000)
        return CL_EINVAL;
    return 0;
}

static void shard_destroy(log_t *log, shard *s)
{
    for (uint32_t i = 0; i < s->nsegs; i++)
        seg__free(log, s->segs[i]);
    free(s->segs);
    idx_free(&s->convs);
    free(s->damage);
    free(s->wbuf);
    pthread_mutex_destroy(&s->qmu);
    pthread_cond_destroy(&s->qcond);
    pthread_cond_destroy(&s->idlecond);
    pthread_rwlock_destroy(&s->lock);
}

static void log_free(log_t *log)
{
    if (log->shards) {
        for (uint32_t i = 0; i < log->nshards; i++)
            shard_destroy(log, &log->shards[i]);
        free(log->shards);
    }
    struct seal_job *j = log->sq_head;
    while (j) {
        struct seal_job *n = j->next;
        free(j);
        j = n;
    }
    pthread_mutex_destroy(&log->smu);
    pthread_cond_destroy(&log->scond);
    pthread_mutex_destroy(&log->cmu);
    pthread_cond_destroy(&log->ccond);
    free(log);
}

int log_open(const char *dir, const log_options *opt, log_t **out)
{
    log_t *log = calloc(1, sizeof *log);
    if (!log)
        return CL_ENOMEM;
    pthread_mutex_init(&log->smu, NULL);
    pthread_cond_init(&log->scond, NULL);
    pthread_mutex_init(&log->cmu, NULL);
    pthread_cond_init(&log->ccond, NULL);
    if (opt)
        log->opt = *opt;
    log->io = log->opt.io ? log->opt.io : io_posix();
    int rc = normalise_options(&log->opt);
    if (rc || strlen(dir) >= PATH_MAX_LEN - 64) {
        log_free(log);
        return rc ? rc : CL_EINVAL;
    }
    snprintf(log->dir, sizeof log->dir, "%s", dir);

    uint32_t nshards = 0;
    rc = manifest_read(log, &nshards);
    if (rc == -ENOENT && !log->opt.read_only) {
        nshards = log->opt.shards ? log->opt.shards : LOG_DEFAULT_SHARDS;
        rc = log->io->mkdir(log->io, dir);
        if (rc == -EEXIST)
            rc = 0;
        if (rc == 0)
            rc = manifest_write(log, nshards);
    } else if (rc == 0 && log->opt.shards && log->opt.shards != nshards) {
        log__msg(log, LOG_ERROR, "%s: manifest says %u shards, %u requested",
                 dir, nshards, log->opt.shards);
        rc = CL_EMANIFEST;
    }
    if (rc) {
        log_free(log);
        return rc;
    }
    log->nshards = nshards;
    log->shards = calloc(nshards, sizeof *log->shards);
    if (!log->shards) {
        log_free(log);
        return CL_ENOMEM;
    }
    for (uint32_t i = 0; i < nshards; i++) {
        shard *s = &log->shards[i];
        s->log = log;
        s->id = i;
        s->term = 1;
        name_shard_dir(s->dir, sizeof s->dir, dir, i);
        pthread_mutex_init(&s->qmu, NULL);
        pthread_cond_init(&s->qcond, NULL);
        pthread_cond_init(&s->idlecond, NULL);
        pthread_rwlock_init(&s->lock, NULL);
    }
    for (uint32_t i = 0; i < nshards && rc == 0; i++) {
        shard *s = &log->shards[i];
        if (!log->opt.read_only) {
            rc = log->io->mkdir(log->io, s->dir);
            if (rc == -EEXIST)
                rc = 0;
            else if (rc == 0)
                rc = log->io->fsync_dir(log->io, dir);
        }
        if (rc == 0)
            rc = rcv_shard(s);
    }
    if (rc) {
        log_free(log);
        return rc;
    }
    if (!log->opt.read_only) {
        if (pthread_create(&log->completer, NULL, completer_main, log))
            rc = CL_ENOMEM;
        else
            log->completer_started = 1;
        for (uint32_t i = 0; i < nshards && rc == 0; i++) {
            shard *s = &log->shards[i];
            if (pthread_create(&s->writer, NULL, writer_main, s))
                rc = CL_ENOMEM;
            else
                s->writer_started = 1;
        }
        if (rc == 0) {
            if (pthread_create(&log->sealer, NULL, sealer_main, log))
                rc = CL_ENOMEM;
            else
                log->sealer_started = 1;
        }
        if (rc) {
            log_close(log);
            return rc;
        }
    }
    *out = log;
    return 0;
}

int log_close(log_t *log)
{
    if (!log)
        return 0;
    int first = 0;
    for (uint32_t i = 0; i < log->nshards; i++) {
        shard *s = &log->shards[i];
        pthread_mutex_lock(&s->qmu);
        s->stopping = 1;
        s->paused = 0;
        pthread_cond_broadcast(&s->qcond);
        pthread_mutex_unlock(&s->qmu);
    }
    for (uint32_t i = 0; i < log->nshards; i++) {
        shard *s = &log->shards[i];
        if (s->writer_started)
            pthread_join(s->writer, NULL);
        if (s->failed && !first)
            first = s->failed;
    }
    if (log->completer_started) {
        pthread_mutex_lock(&log->cmu);
        log->cstop = 1;
        pthread_cond_broadcast(&log->ccond);
        pthread_mutex_unlock(&log->cmu);
        pthread_join(log->completer, NULL);
    }
    if (log->sealer_started) {
        pthread_mutex_lock(&log->smu);
        log->sealer_stop = 1;
        pthread_cond_broadcast(&log->scond);
        pthread_mutex_unlock(&log->smu);
        pthread_join(log->sealer, NULL);
    }
    log_free(log);
    return first;
}

/* ---- reads ---- */

void log_result_free(log_result *r)
{
    for (size_t i = 0; i < r->nbufs; i++)
        free(r->bufs[i]);
    free(r->bufs);
    free(r->entries);
    memset(r, 0, sizeof *r);
}

/* Append a copy of e (its key and body copied into owned memory). */
static int result_add(log_result *r, const log_entry *e)
{
    if (r->n == r->cap) {
        size_t ncap = r->cap ? r->cap * 2 : 16;
        log_entry *ne = realloc(r->entries, ncap * sizeof *ne);
        if (!ne)
            return CL_ENOMEM;
        r->entries = ne;
        uint8_t **nb = realloc(r->bufs, ncap * sizeof *nb);
        if (!nb)
            return CL_ENOMEM;
        r->bufs = nb;
        r->cap = ncap;
    }
    size_t len = (size_t)e->rec.key_len + e->rec.body_len;
    uint8_t *b = malloc(len ? len : 1);
    if (!b)
        return CL_ENOMEM;
    memcpy(b, e->rec.key, e->rec.key_len);
    memcpy(b + e->rec.key_len, e->rec.body, e->rec.body_len);
    log_entry c = *e;
    c.rec.key = b;
    c.rec.body = b + e->rec.key_len;
    r->bufs[r->nbufs++] = b;
    r->entries[r->n++] = c;
    return 0;
}

/* Find record idx of the batch at loc; fills *e. */
static int read_loc_locked(shard *s, uint64_t loc, rctx *r, log_entry *e)
{
    if (loc == LOC_DAMAGED || loc_seg(loc) >= s->nsegs)
        return CL_ECORRUPT;
    const seg *sg = s->segs[loc_seg(loc)];
    const uint8_t *b;
    batch_header h;
    int rc = seg_read_batch_locked(s, sg, loc_pos(loc), r, &b, &h);
    if (rc)
        return rc;
    size_t pos = 0;
    uint32_t want = loc_idx(loc);
    for (uint32_t i = 0; batch_next_record(b, &h, &pos, &e->rec) == 0; i++) {
        if (i == want) {
            e->shard = s->id;
            e->offset = h.first_offset + i;
            e->term = h.term;
            return 0;
        }
    }
    return CL_ECORRUPT;
}

int log_read_conv(log_t *log, uint64_t conv_id, uint64_t msg_id,
                  int direction, uint32_t limit, log_result *out, int *more)
{
    shard *s = &log->shards[log_shard_of(log, conv_id)];
    rctx r = {0};
    int rc = 0;
    if (more)
        *more = 0;
    pthread_rwlock_rdlock(&s->lock);
    conv *c = idx_find(&s->convs, conv_id);
    uint64_t n = c ? c->n : 0;
    if (direction == LOG_AFTER) {
        uint64_t i = msg_id; /* index of msg_id+1 */
        for (uint32_t k = 0; i < n && k < limit && rc == 0; k++, i++) {
            log_entry e;
            rc = read_loc_locked(s, c->locs[i], &r, &e);
            if (rc == 0 && (e.rec.conv_id != conv_id || e.rec.msg_id != i + 1 ||
                            e.rec.type != REC_MESSAGE))
                rc = CL_ECORRUPT;
            if (rc == 0)
                rc = result_add(out, &e);
        }
        if (more && rc == 0)
            *more = i < n;
    } else {
        uint64_t top = (msg_id == 0 || msg_id > n + 1) ? n + 1 : msg_id;
        uint64_t m = top - 1; /* next msg_id to return */
        for (uint32_t k = 0; m >= 1 && k < limit && rc == 0; k++, m--) {
            log_entry e;
            rc = read_loc_locked(s, c->locs[m - 1], &r, &e);
            if (rc == 0 && (e.rec.conv_id != conv_id || e.rec.msg_id != m ||
                            e.rec.type != REC_MESSAGE))
                rc = CL_ECORRUPT;
            if (rc == 0)
                rc = result_add(out, &e);
        }
        if (more && rc == 0)
            *more = m >= 1;
    }
    pthread_rwlock_unlock(&s->lock);
    rctx_free(&r);
    return rc;
}

uint64_t log_conv_last_msg_id(log_t *log, uint64_t conv_id)
{
    shard *s = &log->shards[log_shard_of(log, conv_id)];
    pthread_rwlock_rdlock(&s->lock);
    conv *c = idx_find(&s->convs, conv_id);
    uint64_t n = c ? c->n : 0;
    pthread_rwlock_unlock(&s->lock);
    return n;
}

/* Segment holding offset (base <= offset < end), or -1. */
static int find_seg_locked(const shard *s, uint64_t offset)
{
    uint32_t lo = 0, hi = s->nsegs;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (offset < s->segs[mid]->base)
            hi = mid;
        else if (offset >= s->segs[mid]->end)
            lo = mid + 1;
        else
            return (int)mid;
    }
    return -1;
}

/* Raw position of a batch at or before offset in sg, from the sparse index. */
static uint64_t sparse_pos(const seg *sg, uint64_t offset, uint64_t *at_offset)
{
    uint32_t lo = 0, hi = sg->nsparse;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (sg->sparse[mid].offset <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) {
        *at_offset = sg->base;
        return 0;
    }
    *at_offset = sg->sparse[lo - 1].offset;
    return sg->sparse[lo - 1].pos;
}

int log_read_from(log_t *log, uint32_t shard_id, uint64_t from_offset,
                  uint64_t max_bytes, log_batch_cb cb, void *arg)
{
    if (shard_id >= log->nshards)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    rctx r = {0};
    rbuf copy = {0};
    log_entry *ents = NULL;
    uint32_t ents_cap = 0;
    uint64_t passed = 0, offset = from_offset;
    int rc = 0;
    for (;;) {
        pthread_rwlock_rdlock(&s->lock);
        if (offset >= s->durable_offset) {
            pthread_rwlock_unlock(&s->lock);
            break;
        }
        int si = find_seg_locked(s, offset);
        if (si < 0) {
            /* Below the first segment, or in a gap fenced off as damage. */
            uint64_t next = UINT64_MAX;
            for (uint32_t i = 0; i < s->nsegs; i++)
                if (s->segs[i]->base > offset && s->segs[i]->end > s->segs[i]->base) {
                    next = s->segs[i]->base;
                    break;
                }
            int below_start = s->nsegs && offset < s->segs[0]->base;
            pthread_rwlock_unlock(&s->lock);
            if (next == UINT64_MAX)
                break;
            if (below_start) {
                offset = next;
                continue;
            }
            rc = CL_ECORRUPT;
            break;
        }
        const seg *sg = s->segs[si];
        uint64_t boff;
        uint64_t pos = sparse_pos(sg, offset, &boff);
        const uint8_t *b = NULL;
        batch_header h;
        /* Walk batches from the sparse entry to the one holding offset. */
        for (;;) {
            rc = seg_read_batch_locked(s, sg, pos, &r, &b, &h);
            if (rc == 0 && h.first_offset != boff)
                rc = CL_EMISPLACED;
            if (rc || offset < boff + h.record_count)
                break;
            pos += h.length;
            boff += h.record_count;
        }
        if (rc == 0 && (rc = rbuf_reserve(&copy, h.length)) == 0)
            memcpy(copy.p, b, h.length);
        pthread_rwlock_unlock(&s->lock);
        if (rc)
            break;
        if (h.record_count > ents_cap) {
            log_entry *ne = realloc(ents, h.record_count * sizeof *ne);
            if (!ne) {
                rc = CL_ENOMEM;
                break;
            }
            ents = ne;
            ents_cap = h.record_count;
        }
        size_t rp = 0;
        uint32_t n = 0;
        rec_view rv;
        for (uint32_t i = 0; batch_next_record(copy.p, &h, &rp, &rv) == 0; i++)
            if (h.first_offset + i >= offset)
                ents[n++] = (log_entry){s->id, h.first_offset + i, h.term, rv};
        rc = cb(arg, &h, copy.p, ents, n);
        if (rc)
            break;
        offset = h.first_offset + h.record_count;
        passed += h.length;
        if (max_bytes && passed >= max_bytes)
            break;
    }
    rctx_free(&r);
    rbuf_free(&copy);
    free(ents);
    return rc;
}

/* ---- inspection ---- */

int log_shard_info_get(log_t *log, uint32_t shard_id, log_shard_info *out)
{
    if (shard_id >= log->nshards)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&s->lock);
    out->shard = shard_id;
    out->next_offset = s->durable_offset;
    out->durable_offset = s->durable_offset;
    pthread_mutex_lock(&s->qmu);
    out->term = s->term;
    pthread_mutex_unlock(&s->qmu);
    out->records = s->records;
    out->messages = s->messages;
    out->conversations = s->convs.count;
    out->segments = s->nsegs;
    out->damaged_ranges = 0;
    for (uint32_t i = 0; i < s->ndamage; i++)
        out->damaged_ranges += !s->damage[i].torn_tail;
    for (uint32_t i = 0; i < s->nsegs; i++) {
        out->raw_bytes += s->segs[i]->raw_size;
        out->disk_bytes += s->segs[i]->disk_bytes;
    }
    out->failed = s->failed ? s->failed : s->write_fenced ? CL_EDAMAGED : 0;
    out->index_bytes = idx_memory(&s->convs);
    pthread_rwlock_unlock(&s->lock);
    return 0;
}

int log_segment_info_get(log_t *log, uint32_t shard_id, uint32_t i,
                         log_segment_info *out)
{
    if (shard_id >= log->nshards)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    int rc = 0;
    pthread_rwlock_rdlock(&s->lock);
    if (i >= s->nsegs) {
        rc = CL_ENOTFOUND;
    } else {
        const seg *sg = s->segs[i];
        *out = (log_segment_info){
            .base_offset = sg->base,
            .end_offset = sg->end,
            .raw_bytes = sg->raw_size,
            .disk_bytes = sg->disk_bytes,
            .records = sg->records,
            .sealed = sg->state != SEG_ACTIVE,
            .compressed = sg->state == SEG_COMPRESSED,
        };
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

void log_damage_each(log_t *log, void (*cb)(void *arg, const log_damage *d),
                     void *arg)
{
    for (uint32_t i = 0; i < log->nshards; i++) {
        shard *s = &log->shards[i];
        pthread_rwlock_rdlock(&s->lock);
        for (uint32_t k = 0; k < s->ndamage; k++)
            cb(arg, &s->damage[k]);
        pthread_rwlock_unlock(&s->lock);
    }
}

/* ---- replication support ---- */

int log_set_term(log_t *log, uint32_t shard_id, uint64_t term)
{
    if (shard_id >= log->nshards)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    int rc = 0;
    pthread_mutex_lock(&s->qmu);
    if (term < s->term)
        rc = CL_EINVAL;
    else
        s->term = term;
    pthread_mutex_unlock(&s->qmu);
    return rc;
}

int log_shard_ends(log_t *log, uint32_t shard_id, uint64_t *next,
                   uint64_t *durable)
{
    if (shard_id >= log->nshards)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    pthread_rwlock_rdlock(&s->lock);
    if (next)
        *next = s->next_offset;
    if (durable)
        *durable = s->durable_offset;
    pthread_rwlock_unlock(&s->lock);
    return 0;
}

/* Stop the writer between groups; returns with qmu released. */
static void writer_pause(shard *s)
{
    pthread_mutex_lock(&s->qmu);
    s->paused = 1;
    while (s->busy)
        pthread_cond_wait(&s->idlecond, &s->qmu);
    pthread_mutex_unlock(&s->qmu);
}

static void writer_resume(shard *s)
{
    pthread_mutex_lock(&s->qmu);
    s->paused = 0;
    pthread_cond_broadcast(&s->qcond);
    pthread_mutex_unlock(&s->qmu);
}

/* Wait until the sealer holds no segment of s from ordinal si on (queued or
 * being sealed), so that a cut can change or free them. Caller holds no
 * lock and is the writer (or has paused it): no new seal can be queued. */
static void wait_sealer(shard *s, uint32_t si)
{
    log_t *log = s->log;
    pthread_mutex_lock(&log->smu);
    for (;;) {
        int busy = 0;
        pthread_rwlock_rdlock(&s->lock);
        for (uint32_t i = si; i < s->nsegs; i++)
            busy |= s->segs[i]->sealing;
        pthread_rwlock_unlock(&s->lock);
        if (!busy || !log->sealer_started)
            break;
        pthread_cond_wait(&log->scond, &log->smu);
    }
    pthread_mutex_unlock(&log->smu);
}

/* A compressed segment cut at raw position pos becomes a raw <base>.log of
 * its first pos bytes again: tmp-<base>.log written and synced, renamed (a
 * crash now leaves both files, and recovery keeps the valid .zlog: the
 * segment whole), then the .idx and .zlog unlinked. Lock held exclusively. */
static int uncompress_prefix_locked(shard *s, seg *sg, uint64_t pos)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    char tmp[PATH_MAX_LEN], path[PATH_MAX_LEN];
    name_segment(tmp, sizeof tmp, s->dir, sg->base, SUFFIX_LOG, 1);
    name_segment(path, sizeof path, s->dir, sg->base, SUFFIX_LOG, 0);
    io_file *f;
    int rc = io->open(io, tmp, IO_RDWR | IO_CREATE, &f);
    if (rc)
        return rc;
    rbuf blk = {0};
    if ((rc = io->truncate(f, 0)) == 0) {
        for (uint32_t i = 0; i < sg->nblocks && rc == 0; i++) {
            const zblock *b = &sg->blocks[i];
            if (b->raw_pos >= pos)
                break;
            rc = zlog_read_block(io, sg->f, b, &blk);
            uint64_t n = b->raw_len;
            if (b->raw_pos + n > pos)
                n = pos - b->raw_pos;
            if (rc == 0)
                rc = io->pwrite(f, blk.p, n, b->raw_pos);
        }
    }
    rbuf_free(&blk);
    if (rc == 0)
        rc = io->fdatasync(f);
    io->close(f);
    if (rc == 0)
        rc = io->rename(io, tmp, path);
    if (rc == 0)
        rc = io->fsync_dir(io, s->dir);
    if (rc) {
        io->unlink(io, tmp);
        return rc;
    }
    /* From here on the .log is the segment; failures fail the shard. */
    if ((rc = io->open(io, path, IO_RDWR, &f)))
        return rc;
    name_segment(tmp, sizeof tmp, s->dir, sg->base, SUFFIX_IDX, 0);
    io->unlink(io, tmp);
    name_segment(tmp, sizeof tmp, s->dir, sg->base, SUFFIX_ZLOG, 0);
    io->unlink(io, tmp);
    io->close(sg->f);
    sg->f = f;
    free(sg->blocks);
    sg->blocks = NULL;
    sg->nblocks = 0;
    sg->state = SEG_SEALED; /* made active by the caller */
    s->gen++;
    return io->fsync_dir(io, s->dir);
}

/* Remove every record >= offset (see log_truncate_from). Runs on the
 * writer thread, or with the writer paused; holds no lock on entry. */
static int shard_cut(shard *s, uint64_t offset)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    pthread_rwlock_rdlock(&s->lock);
    int si = offset < s->durable_offset ? find_seg_locked(s, offset) : -2;
    pthread_rwlock_unlock(&s->lock);
    if (si == -2)
        return 0; /* nothing at or after offset */
    if (si < 0)
        return CL_EINVAL; /* below the oldest segment, or in a damaged gap */
    wait_sealer(s, (uint32_t)si);

    pthread_rwlock_wrlock(&s->lock);
    int rc = 0;
    seg *sg = s->segs[si];
    uint64_t boff;
    uint64_t pos = sparse_pos(sg, offset, &boff);
    rctx r = {0};
    while (boff < offset) {
        const uint8_t *b;
        batch_header h;
        if ((rc = seg_read_batch_locked(s, sg, pos, &r, &b, &h)))
            break;
        pos += h.length;
        boff += h.record_count;
    }
    rctx_free(&r);
    if (rc == 0 && boff != offset)
        rc = CL_EINVAL; /* not at a batch boundary */
    if (rc) {
        if (rc != CL_EINVAL)
            rc = CL_EINVAL; /* unreadable (damaged) data before the cut */
        goto out;
    }
    /* Drop later segments, newest first, then cut this one. */
    for (uint32_t i = s->nsegs; i-- > (uint32_t)si + 1;) {
        seg *d = s->segs[i];
        char p[PATH_MAX_LEN];
        static const char *const sfx[] = {SUFFIX_LOG, SUFFIX_ZLOG, SUFFIX_IDX};
        for (int k = 0; k < 3; k++) {
            name_segment(p, sizeof p, s->dir, d->base, sfx[k], 0);
            io->unlink(io, p);
        }
        s->records -= d->records;
        seg__free(log, d);
        s->nsegs--;
    }
    /* Damage records of what is gone go with it. When no damage is left
     * (a replica cut its log at the damage to fetch it again), neither is
     * the write fence, nor the index's damaged entries (all after the cut). */
    int damage_left = 0;
    for (uint32_t i = 0; i < s->ndamage;) {
        log_damage *d = &s->damage[i];
        if (d->seg_base > sg->base || (d->seg_base == sg->base && d->file_pos >= pos)) {
            s->damage[i] = s->damage[--s->ndamage];
        } else {
            damage_left |= !d->torn_tail;
            i++;
        }
    }
    if (!damage_left && s->write_fenced) {
        s->write_fenced = 0;
        log__msg(log, LOG_INFO, "shard %u: the damaged part was cut off; writes allowed again",
                 s->id);
    }
    if (sg->state == SEG_COMPRESSED && (rc = uncompress_prefix_locked(s, sg, pos))) {
        set_failed(s, rc);
        goto out;
    }
    char p[PATH_MAX_LEN];
    name_segment(p, sizeof p, s->dir, sg->base, SUFFIX_IDX, 0);
    io->unlink(io, p);
    if ((rc = io->truncate(sg->f, pos)) == 0 && (rc = io->fdatasync(sg->f)) == 0)
        rc = io->fsync_dir(io, s->dir);
    if (rc) {
        set_failed(s, rc);
        goto out;
    }
    s->records -= sg->end - offset;
    sg->records -= sg->end - offset;
    sg->raw_size = pos;
    sg->disk_bytes = pos;
    sg->end = offset;
    sg->state = SEG_ACTIVE;
    while (sg->nsparse && sg->sparse[sg->nsparse - 1].offset >= offset)
        sg->nsparse--;
    sg->sparse_last_pos = sg->nsparse ? sg->sparse[sg->nsparse - 1].pos : 0;
    /* Forget index entries at or after the cut. */
    uint64_t cut = loc_pack(sg->ord, pos, 0);
    for (uint32_t i = 0; i < s->convs.cap; i++) {
        conv *c = s->convs.slots[i];
        if (!c)
            continue;
        while (c->n && (c->locs[c->n - 1] == LOC_DAMAGED ? !damage_left
                                                          : c->locs[c->n - 1] >= cut)) {
            c->n--;
            s->messages--;
        }
        c->assigned = c->n;
    }
    s->next_offset = s->durable_offset = offset;
    s->gen++;
out:
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

int log_truncate_from(log_t *log, uint32_t shard_id, uint64_t offset)
{
    if (shard_id >= log->nshards || log->opt.read_only)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    writer_pause(s);
    int rc = shard_cut(s, offset);
    writer_resume(s);
    return rc;
}

/* ---- replication: installing a shipped segment ---- */

/* The term of the shard's last batch (0 for an empty log), read from the
 * newest segment that holds records. Writer thread. */
static int last_batch_term(shard *s, uint64_t *term)
{
    int rc = 0;
    *term = 0;
    pthread_rwlock_rdlock(&s->lock);
    for (uint32_t i = s->nsegs; i-- > 0;) {
        const seg *sg = s->segs[i];
        if (sg->end == sg->base || sg->raw_size == 0)
            continue;
        uint64_t boff;
        uint64_t pos = sparse_pos(sg, sg->end - 1, &boff);
        rctx r = {0};
        while (pos < sg->raw_size) {
            const uint8_t *b;
            batch_header h;
            if ((rc = seg_read_batch_locked(s, sg, pos, &r, &b, &h)))
                break;
            *term = h.term;
            pos += h.length;
        }
        rctx_free(&r);
        break;
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* Give back the msg_ids claimed for the first n entries of an install. */
static void unclaim_locked(shard *s, const seg_install *in, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        if (in->ents[i].type != REC_MESSAGE)
            continue;
        conv *c = idx_find(&s->convs, in->ents[i].conv_id);
        if (c)
            c->assigned = c->n;
    }
}

/* Take the install's msg_ids: each must continue its conversation. */
static int claim_locked(shard *s, const seg_install *in)
{
    uint64_t n = in->end - in->base;
    for (uint64_t i = 0; i < n; i++) {
        const side_ent *e = &in->ents[i];
        if (e->type != REC_MESSAGE)
            continue;
        conv *c = idx_get(&s->convs, e->conv_id);
        int rc = !c ? CL_ENOMEM : e->msg_id != c->assigned + 1 ? CL_EINVAL : 0;
        if (rc) {
            unclaim_locked(s, in, i);
            return rc;
        }
        c->assigned = e->msg_id;
    }
    return 0;
}

/* Writer thread: install a checked segment (log_segment_install) in place
 * of the empty active segment. */
static void process_install(shard *s, pending *p)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    seg_install *in = p->inst;
    uint64_t n = in->end - in->base;
    done_group *g = malloc(sizeof *g);
    int rc = s->failed;
    if (rc || !g) {
        fail_group(s, g, p, 1, rc ? rc : CL_ENOMEM);
        return;
    }
    seg *act = s->nsegs ? s->segs[s->nsegs - 1] : NULL;
    if (!act || act->state != SEG_ACTIVE || act->raw_size != 0 ||
        act->base != in->base || s->next_offset != in->base)
        rc = CL_EINVAL; /* the log does not end at base, or holds records
                           in its active segment */
    uint64_t last_term = 0;
    if (rc == 0 && (rc = last_batch_term(s, &last_term)) == 0 &&
        in->first_term < last_term)
        rc = CL_EINVAL; /* terms never decrease along a log */
    if (rc == 0) {
        pthread_rwlock_wrlock(&s->lock); /* idx_get may insert */
        rc = claim_locked(s, in);
        pthread_rwlock_unlock(&s->lock);
    }
    if (rc) {
        fail_group(s, g, p, 1, rc);
        return;
    }

    int committed = 0;
    io_file *zf = NULL;
    char path[PATH_MAX_LEN];
    rc = segship__write_files(io, s->dir, in, &committed);
    if (rc == 0) {
        name_segment(path, sizeof path, s->dir, in->base, SUFFIX_ZLOG, 0);
        rc = io->open(io, path, IO_RDONLY, &zf);
    }
    if (rc) {
        int sticky = committed || (rc != -ENOSPC && rc != CL_ENOMEM);
        pthread_rwlock_wrlock(&s->lock);
        unclaim_locked(s, in, n);
        pthread_rwlock_unlock(&s->lock);
        if (sticky)
            set_failed(s, rc);
        log__msg(log, sticky ? LOG_ERROR : LOG_WARN,
                 "shard %u: installing segment %020llu failed: %s%s", s->id,
                 (unsigned long long)in->base, cl_strerror(rc),
                 sticky ? "; shard is now read-only" : "");
        fail_group(s, g, p, 1, rc);
        return;
    }

    /* Durable: the active segment becomes the installed one, then a new
     * active segment starts at its end. */
    int idx_err = 0;
    pthread_rwlock_wrlock(&s->lock);
    io_file *old = act->f;
    act->f = zf;
    act->blocks = in->blocks;
    act->nblocks = in->nblocks;
    in->blocks = NULL;
    act->state = SEG_COMPRESSED;
    act->end = in->end;
    act->raw_size = in->raw_size;
    act->records = n;
    act->disk_bytes = in->zlog_len + in->idx_len;
    act->nsparse = 0;
    act->sparse_last_pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        const side_ent *e = &in->ents[i];
        if ((i == 0 || e->pos != in->ents[i - 1].pos) &&
            seg_sparse_add(act, in->base + i, e->pos))
            idx_err = CL_ENOMEM;
        if (e->type != REC_MESSAGE)
            continue;
        conv *c = idx_find(&s->convs, e->conv_id);
        if (!c || c->n + 1 != e->msg_id ||
            idx_push(c, loc_pack(act->ord, e->pos, e->rec_idx)))
            idx_err = CL_ENOMEM;
        s->messages++;
    }
    s->records += n;
    if (in->max_ts > s->last_ts)
        s->last_ts = in->max_ts;
    s->next_offset = s->durable_offset = in->end;
    s->gen++;
    seg *nsg;
    rc = shard__new_segment_locked(s, in->end, &nsg);
    pthread_rwlock_unlock(&s->lock);
    io->close(old);
    if (rc == 0) {
        /* The empty <base>.log is a leftover now (recovery rule 2 would
         * remove it too). */
        name_segment(path, sizeof path, s->dir, in->base, SUFFIX_LOG, 0);
        io->unlink(io, path);
        io->fsync_dir(io, s->dir);
    } else {
        log__msg(log, LOG_ERROR, "shard %u: cannot start a segment after the "
                 "installed %020llu: %s; shard is now read-only", s->id,
                 (unsigned long long)in->base, cl_strerror(rc));
        set_failed(s, rc);
    }
    if (idx_err)
        set_failed(s, idx_err); /* durable, but the index could not take it */
    pthread_mutex_lock(&s->qmu);
    if (in->last_term > s->term)
        s->term = in->last_term;
    pthread_mutex_unlock(&s->qmu);
    g->s = s;
    g->list = p;
    g->count = 1;
    g->nents = 0;
    g->status = 0;
    complete_group(s, g);
}

int log_segment_install(log_t *log, uint32_t shard_id,
                        const log_segment_files *f, log_write_cb cb, void *arg)
{
    if (log->opt.read_only || shard_id >= log->nshards || !f || !f->zlog ||
        !f->idx || f->end <= f->base || f->end > UINT64_MAX / 2)
        return CL_EINVAL;
    seg_install *in;
    int rc = segship__check(log, shard_id, f, &in);
    if (rc)
        return rc;
    in->cb = cb;
    in->arg = arg;
    pending *p = calloc(1, sizeof *p);
    if (!p) {
        segship__free(in);
        return CL_ENOMEM;
    }
    p->kind = PK_INSTALL;
    p->inst = in;
    p->offset = in->base;
    p->end = in->end;
    rc = enqueue(log, &log->shards[shard_id], p, p, 1, 0, 0);
    if (rc)
        pending_free(p);
    return rc;
}

/* ---- batch descriptors ---- */

typedef struct bdesc {
    uint64_t first_offset;
    uint64_t term;
    uint32_t count;
} bdesc;

int log_batch_each(log_t *log, uint32_t shard_id,
                   void (*cb)(void *arg, uint64_t first_offset, uint32_t count,
                              uint64_t term),
                   void *arg)
{
    if (shard_id >= log->nshards || !cb)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    bdesc *v = NULL;
    size_t n = 0, cap = 0;
    rctx r = {0};
    int rc = 0;
    /* Collected under the lock, delivered without it. */
    pthread_rwlock_rdlock(&s->lock);
    for (uint32_t i = 0; i < s->nsegs && rc == 0; i++) {
        const seg *sg = s->segs[i];
        uint64_t pos = 0;
        while (pos < sg->raw_size && rc == 0) {
            const uint8_t *b;
            batch_header h;
            rc = seg_read_batch_locked(s, sg, pos, &r, &b, &h);
            if (rc == 0 && h.first_offset >= s->durable_offset)
                break;
            if (rc) {
                /* Skip a range recovery fenced off; anything else is news. */
                uint64_t skip = 0;
                for (uint32_t k = 0; k < s->ndamage; k++)
                    if (s->damage[k].seg_base == sg->base &&
                        s->damage[k].file_pos == pos && !s->damage[k].torn_tail)
                        skip = s->damage[k].bytes;
                if (skip == 0)
                    break;
                rc = 0;
                pos += skip;
                continue;
            }
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 256;
                bdesc *nv = realloc(v, nc * sizeof *nv);
                if (!nv) {
                    rc = CL_ENOMEM;
                    break;
                }
                v = nv;
                cap = nc;
            }
            v[n++] = (bdesc){h.first_offset, h.term, h.record_count};
            pos += h.length;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    rctx_free(&r);
    for (size_t i = 0; i < n && rc == 0; i++)
        cb(arg, v[i].first_offset, v[i].count, v[i].term);
    free(v);
    return rc;
}
