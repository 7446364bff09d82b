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

static void fail_list(pending *p, int err)
{
    while (p) {
        pending *next = p->next;
        if (p->cb)
            p->cb(p->arg, err, NULL);
        free(p);
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
    g->s = s;
    g->list = list;
    g->count = count;
    g->status = err;
    complete_group(s, g);
}

/* on_commit, then the callbacks, then free the group. */
static void run_group(log_t *log, done_group *g)
{
    shard *s = g->s;
    if (g->status == 0 && log->opt.on_commit)
        log->opt.on_commit(log->opt.commit_arg, s->id, g->ents, g->count);
    for (pending *p = g->list, *pn; p; p = pn) {
        pn = p->next;
        log_append_result res = {s->id, p->offset, p->rec.msg_id, p->rec.ts_ms, 0};
        if (g->status == 0 && g->count)
            res.term = g->ents[0].term;
        if (p->cb)
            p->cb(p->arg, g->status, g->status ? NULL : &res);
        free(p);
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
    size_t pos = 0;
    pending *p = list;
    while (p) {
        batch_header h = {.shard_id = s->id, .first_offset = p->offset,
                          .term = s->term, .ts_ms = now};
        /* Encode in chunks of views[] into one batch of <= BATCH_MAX_RECORDS:
         * batch_encode needs all records at once, so gather them first. */
        uint32_t n = 0;
        pending *q = p;
        while (q && n < BATCH_MAX_RECORDS) {
            n++;
            q = q->next;
        }
        rec_view *vs = n <= 256 ? views : malloc(n * sizeof *vs);
        if (!vs)
            return CL_ENOMEM;
        for (uint32_t i = 0; i < n; i++, p = p->next)
            vs[i] = p->rec;
        if (!p)
            h.flags = BATCH_FLAG_GROUP_END; /* the write's last batch */
        pos += batch_encode(s->wbuf + pos, &h, vs, n);
        if (vs != views)
            free(vs);
    }
    return pos == total ? 0 : CL_ECORRUPT;
}

static void process_group(shard *s, pending *list, uint32_t count)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    int rc = s->failed;
    /* The group object (with room for on_commit's entries) is made before
     * anything is written, so that a durable group can always be completed. */
    done_group *g = malloc(sizeof *g + (size_t)count * sizeof(log_entry));
    if (rc || !g) {
        fail_group(s, g, list, count, rc ? rc : CL_ENOMEM);
        return;
    }
    int64_t now = util_now_ms();
    if (now < s->last_ts)
        now = s->last_ts;
    uint32_t nbatches = (count + BATCH_MAX_RECORDS - 1) / BATCH_MAX_RECORDS;
    size_t total = (size_t)nbatches * BATCH_OVERHEAD;
    for (pending *p = list; p; p = p->next)
        total += p->size;

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

    /* Assign offsets, msg_ids and timestamps. */
    uint64_t first = s->next_offset;
    pthread_rwlock_wrlock(&s->lock); /* idx_get may insert */
    for (pending *p = list; p; p = p->next) {
        p->offset = s->next_offset++;
        if (p->rec.ts_ms == 0)
            p->rec.ts_ms = now;
        if (p->rec.type == REC_MESSAGE) {
            conv *c = idx_get(&s->convs, p->rec.conv_id);
            if (!c) {
                rc = CL_ENOMEM;
                break;
            }
            p->rec.msg_id = ++c->assigned;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    if (rc == 0)
        rc = encode_group(s, list, total, now);
    if (rc == 0)
        rc = io->pwrite(act->f, s->wbuf, total, act->raw_size);
    if (rc == 0 && log->opt.fsync == LOG_FSYNC_ALWAYS)
        rc = io->fdatasync(act->f);

    if (rc) {
        int sticky = rc != -ENOSPC && rc != CL_ENOMEM;
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
        for (pending *p = list; p; p = p->next)
            if (p->rec.type == REC_MESSAGE && p->rec.msg_id) {
                conv *c = idx_find(&s->convs, p->rec.conv_id);
                if (c && c->assigned >= p->rec.msg_id)
                    c->assigned = p->rec.msg_id - 1;
            }
        s->next_offset = first;
        if (sticky && !s->failed) {
            pthread_mutex_lock(&s->qmu);
            s->failed = rc;
            pthread_mutex_unlock(&s->qmu);
        }
        pthread_rwlock_unlock(&s->lock);
        log__msg(log, sticky ? LOG_ERROR : LOG_WARN,
                 "shard %u: group of %u appends failed: %s%s", s->id, count,
                 cl_strerror(rc), sticky ? "; shard is now read-only" : "");
        fail_group(s, g, list, count, rc);
        return;
    }

    /* Durable: publish, then tell the stream and the callers. */
    log_entry *ents = g->ents;
    int idx_err = 0;
    pthread_rwlock_wrlock(&s->lock);
    uint64_t pos = act->raw_size;
    pending *p = list;
    uint32_t k = 0;
    for (uint32_t b = 0; b < nbatches; b++) {
        uint32_t nrec = count - b * BATCH_MAX_RECORDS;
        if (nrec > BATCH_MAX_RECORDS)
            nrec = BATCH_MAX_RECORDS;
        seg_sparse_add(act, p->offset, pos);
        uint64_t bpos = pos;
        pos += BATCH_OVERHEAD;
        for (uint32_t i = 0; i < nrec; i++, p = p->next, k++) {
            if (p->rec.type == REC_MESSAGE) {
                conv *c = idx_find(&s->convs, p->rec.conv_id);
                /* Allocation failure here would desynchronise the index from
                 * the log; fail the shard rather than serve wrong reads. */
                if (!c || c->n + 1 != p->rec.msg_id ||
                    idx_push(c, loc_pack(act->ord, bpos, i)))
                    idx_err = CL_ENOMEM;
                s->messages++;
            }
            pos += p->size;
            ents[k] = (log_entry){s->id, p->offset, s->term, p->rec};
        }
    }
    act->raw_size += total;
    act->disk_bytes = act->raw_size;
    act->end = s->next_offset;
    act->records += count;
    s->records += count;
    s->durable_offset = s->next_offset;
    s->last_ts = now;
    pthread_rwlock_unlock(&s->lock);
    if (idx_err) {
        /* The group is durable but the index could not take it: fail the
         * shard rather than serve reads that disagree with the log. */
        pthread_mutex_lock(&s->qmu);
        if (!s->failed)
            s->failed = idx_err;
        pthread_mutex_unlock(&s->qmu);
    }

    g->s = s;
    g->list = list;
    g->count = count;
    g->status = 0;
    complete_group(s, g);
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
        /* Take a group: at least one record, then while it fits. */
        pending *head = s->qhead, *tail = head;
        uint64_t bytes = head->size;
        uint32_t count = 1;
        while (tail->next &&
               bytes + tail->next->size + BATCH_OVERHEAD * (count / BATCH_MAX_RECORDS + 1) <=
                   log->opt.max_batch_bytes) {
            tail = tail->next;
            bytes += tail->size;
            count++;
        }
        s->qhead = tail->next;
        if (!s->qhead)
            s->qtail = NULL;
        tail->next = NULL;
        s->qlen -= count;
        s->qbytes -= bytes;
        s->busy = 1;
        pthread_mutex_unlock(&s->qmu);
        process_group(s, head, count);
        pthread_mutex_lock(&s->qmu);
        s->busy = 0;
        pthread_cond_broadcast(&s->idlecond);
    }
    pthread_mutex_unlock(&s->qmu);
    return NULL;
}

/* ---- append ---- */

int log_append(log_t *log, const rec_view *rec, log_append_cb cb, void *arg)
{
    if (log->opt.read_only || !rec || rec->type == 0 || rec->type > REC_TYPE_MAX ||
        (rec->type == REC_MESSAGE && rec->msg_id != 0) ||
        (rec->key_len && !rec->key) || (rec->body_len && !rec->body))
        return CL_EINVAL;
    if (rec->key_len > RECORD_MAX_KEY || rec->body_len > RECORD_MAX_BODY)
        return CL_ETOOBIG;
    shard *s = &log->shards[log_shard_of(log, rec->conv_id)];
    uint32_t size = (uint32_t)batch_record_size(rec->key_len, rec->body_len);
    pending *p = malloc(sizeof *p + rec->key_len + rec->body_len);
    if (!p)
        return CL_ENOMEM;
    p->next = NULL;
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
    pthread_mutex_lock(&s->qmu);
    int rc = s->stopping ? CL_ECLOSED
             : s->failed ? CL_EFAILED
             : s->write_fenced ? CL_EDAMAGED
             : s->qlen + s->completing >= log->opt.max_pending ? CL_EBUSY
                                                : 0;
    if (rc == 0) {
        if (s->qtail)
            s->qtail->next = p;
        else
            s->qhead = p;
        s->qtail = p;
        s->qlen++;
        s->qbytes += size;
        pthread_cond_signal(&s->qcond);
    }
    pthread_mutex_unlock(&s->qmu);
    if (rc)
        free(p);
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
    out->term = s->term;
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
    pthread_rwlock_wrlock(&s->lock);
    if (term < s->term)
        rc = CL_EINVAL;
    else
        s->term = term;
    pthread_rwlock_unlock(&s->lock);
    return rc;
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

int log_truncate_from(log_t *log, uint32_t shard_id, uint64_t offset)
{
    if (shard_id >= log->nshards || log->opt.read_only)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    io_vfs *io = log->io;
    writer_pause(s);
    pthread_rwlock_wrlock(&s->lock);
    int rc = 0;
    if (offset >= s->durable_offset)
        goto out;
    int si = find_seg_locked(s, offset);
    int sealing = 0;
    for (uint32_t i = si < 0 ? s->nsegs : (uint32_t)si; i < s->nsegs; i++)
        sealing |= s->segs[i]->sealing;
    if (si < 0 || s->segs[si]->state == SEG_COMPRESSED || sealing) {
        /* Truncating into compressed history is not supported: the
         * replication layer keeps uncommitted records in raw segments. */
        rc = CL_EINVAL;
        goto out;
    }
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
    if (rc)
        goto out;
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
    char p[PATH_MAX_LEN];
    name_segment(p, sizeof p, s->dir, sg->base, SUFFIX_IDX, 0);
    io->unlink(io, p);
    if ((rc = io->truncate(sg->f, pos)) == 0 && (rc = io->fdatasync(sg->f)) == 0)
        rc = io->fsync_dir(io, s->dir);
    if (rc) {
        s->failed = rc;
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
        while (c->n && c->locs[c->n - 1] != LOC_DAMAGED && c->locs[c->n - 1] >= cut) {
            c->n--;
            s->messages--;
        }
        c->assigned = c->n;
    }
    s->next_offset = s->durable_offset = offset;
    s->gen++;
out:
    pthread_rwlock_unlock(&s->lock);
    writer_resume(s);
    return rc;
}
