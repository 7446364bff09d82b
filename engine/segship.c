/*
 * segship.c — segment shipping: a sealed, compressed segment handed whole
 * to another replica (log_segment_files_get), and the receiver's checks of
 * such files before it installs them (log_segment_install, whose writer side
 * lives in log.c with the other queued writes).
 *
 * The files travel in their on-disk formats (segment.c): <base>.zlog and
 * its sidecar <base>.idx. Nothing received is trusted: the receiver
 * decompresses every block and verifies every batch and record exactly as
 * log_write_batches would, derives the sidecar entries from the batches and
 * requires the received sidecar to match them entry for entry.
 *
 * INSTALL ORDER (crash safety, see recovery/recovery.c): tmp-<base>.idx and
 * tmp-<base>.zlog are written and fdatasynced; <base>.idx is renamed into
 * place, then <base>.zlog; then the directory is fsynced. The .zlog rename
 * is the commit point: before it recovery sees the empty active <base>.log
 * (and perhaps a stray <base>.idx beside it, which it deletes), after it a
 * valid <base>.zlog beside <base>.log, which makes the .log a leftover
 * (rule 2): either no segment or the whole one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "internal.h"
#include "util.h"

/* Largest raw segment accepted: a segment may pass segment_bytes by one
 * group, and index locations hold 32-bit raw positions. */
#define SHIP_MAX_RAW (LOG_MAX_SEGMENT_BYTES + 2 * (uint64_t)LOG_MAX_WRITE_BYTES)

/* ---- the sender ---- */

void log_segment_files_free(log_segment_files *f)
{
    if (!f)
        return;
    free(f->zlog);
    free(f->idx);
    memset(f, 0, sizeof *f);
}

static int read_file_whole(io_vfs *io, io_file *f, uint64_t max, uint8_t **out,
                           size_t *len)
{
    uint64_t size;
    int rc = io->size(f, &size);
    if (rc)
        return rc;
    if (size > max)
        return CL_ETOOBIG;
    uint8_t *b = malloc(size ? size : 1);
    if (!b)
        return CL_ENOMEM;
    ssize_t n = io->pread(f, b, size, 0);
    if (n < 0 || (uint64_t)n != size) {
        free(b);
        return n < 0 ? (int)n : CL_ECORRUPT;
    }
    *out = b;
    *len = (size_t)size;
    return 0;
}

int log_segment_files_get(log_t *log, uint32_t shard_id, uint32_t i,
                          log_segment_files *out)
{
    if (!out)
        return CL_EINVAL;
    memset(out, 0, sizeof *out);
    if (shard_id >= log->nshards)
        return CL_EINVAL;
    shard *s = &log->shards[shard_id];
    io_vfs *io = log->io;
    io_file *zf = NULL, *xf = NULL;
    uint64_t base = 0, end = 0;
    char path[PATH_MAX_LEN];
    int rc = 0;
    /* Open both files under the lock: a truncation (which may remove them)
     * holds it exclusively. Once open, they are read without it: a .zlog
     * and its .idx are never changed in place. */
    pthread_rwlock_rdlock(&s->lock);
    if (i >= s->nsegs) {
        rc = CL_ENOTFOUND;
    } else if (s->segs[i]->state != SEG_COMPRESSED || s->segs[i]->sealing ||
               i + 1 == s->nsegs) {
        rc = CL_EINVAL;
    } else {
        base = s->segs[i]->base;
        end = s->segs[i]->end;
        name_segment(path, sizeof path, s->dir, base, SUFFIX_ZLOG, 0);
        rc = io->open(io, path, IO_RDONLY, &zf);
        if (rc == 0) {
            name_segment(path, sizeof path, s->dir, base, SUFFIX_IDX, 0);
            rc = io->open(io, path, IO_RDONLY, &xf);
            if (rc == -ENOENT)
                rc = CL_EINVAL; /* the sealer rewrites it: not ready */
        }
    }
    pthread_rwlock_unlock(&s->lock);
    zblock *bl = NULL;
    uint32_t nb = 0;
    rbuf blk = {0};
    if (rc)
        goto out;
    if ((rc = read_file_whole(io, zf, SHIP_MAX_RAW, &out->zlog, &out->zlog_len)) ||
        (rc = read_file_whole(io, xf, 256ull << 20, &out->idx, &out->idx_len)))
        goto out;
    uint64_t zend, raw_size, records;
    rc = zlog_parse(out->zlog, out->zlog_len, out->zlog_len, s->id, base, &zend,
                    &raw_size, &records, &bl, &nb);
    if (rc == CL_ETRUNC)
        rc = CL_ECORRUPT;
    if (rc == 0 && zend != end)
        rc = CL_ECORRUPT;
    if (rc)
        goto out;
    /* The sidecar's checksum and header (its entries are the receiver's to
     * compare with the batches). */
    side_ent *ents = NULL;
    uint64_t n = 0;
    if ((rc = sidecar_parse(out->idx, out->idx_len, s->id, base, end, raw_size,
                            &ents, &n)))
        goto out;
    free(ents);
    /* last_term: the last batch of the last block. */
    const zblock *lb = &bl[nb - 1];
    if ((rc = zlog_decompress_block(out->zlog + lb->file_pos, lb, &blk)))
        goto out;
    uint64_t pos = 0, term = 0;
    int seen = 0;
    while (pos < lb->raw_len) {
        batch_header h;
        if ((rc = batch_verify(blk.p + pos, lb->raw_len - pos, &h)))
            goto out;
        term = h.term;
        seen = 1;
        pos += h.length;
    }
    if (!seen) {
        rc = CL_ECORRUPT;
        goto out;
    }
    out->base = base;
    out->end = end;
    out->last_term = term;
out:
    if (rc == CL_ETRUNC)
        rc = CL_ECORRUPT;
    if (zf)
        io->close(zf);
    if (xf)
        io->close(xf);
    free(bl);
    rbuf_free(&blk);
    if (rc)
        log_segment_files_free(out);
    return rc;
}

/* ---- the receiver ---- */

void segship__free(seg_install *in)
{
    if (!in)
        return;
    free(in->zlog);
    free(in->idx);
    free(in->blocks);
    free(in->ents);
    free(in);
}

/* Per-conversation msg_id continuity within the segment: an open-addressed
 * table of conv_id -> last msg_id seen. */
typedef struct seqtab {
    uint64_t *keys, *last;
    size_t cap, count;
} seqtab;

static int seq_check(seqtab *t, uint64_t conv_id, uint64_t msg_id)
{
    if (t->count * 2 >= t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 256;
        uint64_t *nk = calloc(ncap, sizeof *nk), *nl = calloc(ncap, sizeof *nl);
        if (!nk || !nl) {
            free(nk);
            free(nl);
            return CL_ENOMEM;
        }
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->last[i])
                continue;
            size_t h = (size_t)(t->keys[i] * 0x9E3779B97F4A7C15ull) & (ncap - 1);
            while (nl[h])
                h = (h + 1) & (ncap - 1);
            nk[h] = t->keys[i];
            nl[h] = t->last[i];
        }
        free(t->keys);
        free(t->last);
        t->keys = nk;
        t->last = nl;
        t->cap = ncap;
    }
    size_t h = (size_t)(conv_id * 0x9E3779B97F4A7C15ull) & (t->cap - 1);
    while (t->last[h] && t->keys[h] != conv_id)
        h = (h + 1) & (t->cap - 1);
    if (t->last[h]) {
        if (msg_id != t->last[h] + 1)
            return CL_ECORRUPT; /* a gap or repeat inside the segment */
        t->last[h] = msg_id;
        return 0;
    }
    t->keys[h] = conv_id;
    t->last[h] = msg_id; /* msg_id != 0: checked by the caller */
    t->count++;
    return 0;
}

int segship__check(log_t *log, uint32_t shard_id, const log_segment_files *f,
                   seg_install **out)
{
    if (f->zlog_len < zlog_table_end(0) || f->idx_len < 64)
        return CL_ECORRUPT;
    /* A file of another shard or another place says so in its header:
     * tell that apart from bad bytes. */
    if (get_u32(f->zlog + 8) != shard_id || get_u64(f->zlog + 16) != f->base ||
        get_u32(f->idx + 8) != shard_id || get_u64(f->idx + 16) != f->base)
        return CL_EMISPLACED;
    seg_install *in = calloc(1, sizeof *in);
    if (!in)
        return CL_ENOMEM;
    rbuf blk = {0};
    seqtab seq = {0};
    side_ent *rx = NULL;
    uint64_t nrx = 0, records = 0;
    int rc = zlog_parse(f->zlog, f->zlog_len, f->zlog_len, shard_id, f->base,
                        &in->end, &in->raw_size, &records, &in->blocks,
                        &in->nblocks);
    if (rc == CL_ETRUNC)
        rc = CL_ECORRUPT;
    if (rc)
        goto out;
    if (in->end != f->end || records != f->end - f->base) {
        rc = CL_EMISPLACED;
        goto out;
    }
    if (in->raw_size > SHIP_MAX_RAW || records > in->raw_size / RECORD_HEADER_SIZE) {
        rc = in->raw_size > SHIP_MAX_RAW ? CL_ETOOBIG : CL_ECORRUPT;
        goto out;
    }
    in->ents = malloc((records ? records : 1) * sizeof *in->ents);
    if (!in->ents) {
        rc = CL_ENOMEM;
        goto out;
    }
    /* Every block, every batch, every record. */
    uint64_t off = f->base, k = 0, prev_term = 0;
    int first = 1;
    in->max_ts = INT64_MIN;
    for (uint32_t b = 0; b < in->nblocks; b++) {
        const zblock *zb = &in->blocks[b];
        if ((rc = zlog_decompress_block(f->zlog + zb->file_pos, zb, &blk)))
            goto out;
        uint64_t pos = 0;
        while (pos < zb->raw_len) {
            batch_header h;
            rc = batch_verify_at(blk.p + pos, zb->raw_len - pos, shard_id, off, &h);
            if (rc == CL_ETRUNC)
                rc = CL_ECORRUPT; /* a batch across blocks */
            if (rc)
                goto out;
            if (h.length > LOG_MAX_WRITE_BYTES - 64 * 1024) {
                rc = CL_ETOOBIG;
                goto out;
            }
            if (first) {
                in->first_term = h.term;
                first = 0;
            } else if (h.term < prev_term) {
                rc = CL_ECORRUPT; /* terms never decrease along a log */
                goto out;
            }
            prev_term = h.term;
            size_t rp = 0;
            rec_view r;
            for (uint32_t ri = 0; batch_next_record(blk.p + pos, &h, &rp, &r) == 0; ri++) {
                if (r.type == REC_NOOP) {
                    if (r.conv_id || r.msg_id || r.sender_id || r.key_len || r.body_len) {
                        rc = CL_ECORRUPT;
                        goto out;
                    }
                } else if (log_shard_of(log, r.conv_id) != shard_id) {
                    rc = CL_EMISPLACED;
                    goto out;
                } else if (r.type == REC_MESSAGE &&
                           (r.msg_id == 0 || (rc = seq_check(&seq, r.conv_id, r.msg_id)))) {
                    if (!rc)
                        rc = CL_ECORRUPT;
                    goto out;
                }
                if (k >= records) {
                    rc = CL_ECORRUPT;
                    goto out;
                }
                if (r.ts_ms > in->max_ts)
                    in->max_ts = r.ts_ms;
                in->ents[k++] = (side_ent){r.conv_id, r.msg_id,
                                           (uint32_t)(zb->raw_pos + pos),
                                           (uint16_t)ri, r.type};
            }
            off += h.record_count;
            pos += h.length;
        }
    }
    if (off != f->end || k != records) {
        rc = CL_ECORRUPT;
        goto out;
    }
    if (prev_term != f->last_term) {
        rc = CL_EINVAL; /* the caller's description disagrees with the bytes */
        goto out;
    }
    /* The received sidecar must say exactly what the batches say. */
    if ((rc = sidecar_parse(f->idx, f->idx_len, shard_id, f->base, f->end,
                            in->raw_size, &rx, &nrx)))
        goto out;
    if (nrx != records) {
        rc = CL_ECORRUPT;
        goto out;
    }
    for (uint64_t i = 0; i < nrx; i++) {
        const side_ent *a = &rx[i], *e = &in->ents[i];
        if (a->conv_id != e->conv_id || a->msg_id != e->msg_id || a->pos != e->pos ||
            a->rec_idx != e->rec_idx || a->type != e->type) {
            rc = CL_ECORRUPT;
            goto out;
        }
    }
    in->zlog = malloc(f->zlog_len);
    in->idx = malloc(f->idx_len);
    if (!in->zlog || !in->idx) {
        rc = CL_ENOMEM;
        goto out;
    }
    memcpy(in->zlog, f->zlog, f->zlog_len);
    memcpy(in->idx, f->idx, f->idx_len);
    in->zlog_len = f->zlog_len;
    in->idx_len = f->idx_len;
    in->base = f->base;
    in->last_term = f->last_term;
    if (in->max_ts == INT64_MIN)
        in->max_ts = 0;
out:
    rbuf_free(&blk);
    free(seq.keys);
    free(seq.last);
    free(rx);
    if (rc) {
        segship__free(in);
        return rc;
    }
    *out = in;
    return 0;
}

int segship__write_files(io_vfs *io, const char *shard_dir,
                         const seg_install *in, int *committed)
{
    char tidx[PATH_MAX_LEN], tzlog[PATH_MAX_LEN], idx[PATH_MAX_LEN],
        zlog[PATH_MAX_LEN];
    name_segment(tidx, sizeof tidx, shard_dir, in->base, SUFFIX_IDX, 1);
    name_segment(tzlog, sizeof tzlog, shard_dir, in->base, SUFFIX_ZLOG, 1);
    name_segment(idx, sizeof idx, shard_dir, in->base, SUFFIX_IDX, 0);
    name_segment(zlog, sizeof zlog, shard_dir, in->base, SUFFIX_ZLOG, 0);
    *committed = 0;
    int rc = seg_write_file(io, tidx, in->idx, in->idx_len);
    if (rc)
        return rc;
    if ((rc = seg_write_file(io, tzlog, in->zlog, in->zlog_len))) {
        io->unlink(io, tidx);
        return rc;
    }
    if ((rc = io->rename(io, tidx, idx))) {
        io->unlink(io, tidx);
        io->unlink(io, tzlog);
        return rc;
    }
    if ((rc = io->rename(io, tzlog, zlog))) {
        io->unlink(io, tzlog);
        io->unlink(io, idx);
        io->fsync_dir(io, shard_dir);
        return rc;
    }
    *committed = 1;
    return io->fsync_dir(io, shard_dir);
}
