/*
 * recovery.c — rebuilding a shard from its directory when the log opens.
 *
 * RULES
 * 1. tmp-* files are unfinished writes (sidecars, compressed segments, the
 *    manifest): deleted.
 * 2. A segment with both <base>.zlog and <base>.log: the .zlog was renamed
 *    into place only after it was verified and synced, so if its header and
 *    block table check out the .log is a leftover and is deleted; if not, the
 *    .log is used and the .zlog is renamed <base>.zlog.damaged (never
 *    deleted: damaged data is kept for repair).
 * 3. Segments are taken in base-offset order. All but the last are sealed.
 *    A sealed segment's index comes from its sidecar when the sidecar is
 *    valid and matches the segment; otherwise the segment is scanned (and the
 *    sidecar rewritten by sealing).
 * 4. In a sealed segment, a batch that fails its checksum, its format rules,
 *    or sits at the wrong shard/offset is CORRUPTION: never truncated. The
 *    range up to the next valid batch is fenced off and recorded
 *    (log_damage), reads that hit it fail with CL_ECORRUPT, everything else
 *    is served. msg_ids known to lie in it become LOC_DAMAGED entries.
 * 5. The last segment is the active one. It is walked batch by batch; at the
 *    first bad batch at position p:
 *      - it is a TORN TAIL only if it can lie in the last write: the writer
 *        has at most one write (one group, at most LOG_MAX_WRITE_BYTES, its
 *        last batch flagged GROUP_END) unsynced at a time. So the write
 *        holding p — begun after the last GROUP_END before p — must end
 *        within LOG_MAX_WRITE_BYTES of its start at the end of the file, and
 *        after p there may be at most one GROUP_END batch and nothing valid
 *        after it. Then nothing there was ever acked: the cut bytes are kept
 *        in <base>.log.tail-<p>.damaged, the file is truncated at p, and a
 *        line says how many bytes were cut.
 *      - otherwise the bytes at p were synced before later writes, so this is
 *        corruption (rule 4), and a new active segment is started so that
 *        nothing is ever appended after damaged bytes.
 *    (One case stays ambiguous: damage in the GROUP_END batch of the
 *    second-to-last write while the last write is lost whole. It is taken
 *    for a tear; a replica can restore what it cut.)
 * 6. A gap or overlap between consecutive segments is recorded as damage,
 *    except (6a) a segment file whose base lies strictly inside the previous
 *    segment's records: the writer never makes one (it comes from outside:
 *    a copied or renamed file), the range stays with the segment that holds
 *    it, and the stray file (with its .idx) is renamed <name>.damaged and
 *    reported — never deleted. (The segment before it was recovered as a
 *    sealed one; if the stray file was the last, a new active segment
 *    follows it.)
 * 7. The active segment has no sidecar: a <base>.idx beside the last raw
 *    segment is stale and deleted. It is left by a crash between the two
 *    renames of a segment install (log_segment_install renames the received
 *    <base>.idx, then <base>.zlog, into place beside the empty active
 *    <base>.log) or during a truncation into a sealed segment. Once the
 *    installed <base>.zlog is in place, rule 2 makes it the segment and
 *    deletes the empty .log: a crash leaves no segment or the whole one.
 * In read-only mode nothing is deleted, truncated or created: a torn tail is
 * reported and left out of reads.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "internal.h"
#include "util.h"

/* Largest file recovery reads whole into memory. */
#define RCV_MAX_FILE (LOG_MAX_SEGMENT_BYTES + 2 * (uint64_t)LOG_MAX_WRITE_BYTES)

typedef struct listing {
    uint64_t *logs, *zlogs, *idxs;
    size_t nlog, nzlog, nidx, caplog, capzlog, capidx;
    shard *s;
    int err;
} listing;

static int push_base(uint64_t **a, size_t *n, size_t *cap, uint64_t v)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        uint64_t *na = realloc(*a, nc * sizeof *na);
        if (!na)
            return CL_ENOMEM;
        *a = na;
        *cap = nc;
    }
    (*a)[(*n)++] = v;
    return 0;
}

static int list_cb(const char *name, void *arg)
{
    listing *l = arg;
    shard *s = l->s;
    log_t *log = s->log;
    uint64_t base;
    if (!strncmp(name, NAME_TMP_PREFIX, strlen(NAME_TMP_PREFIX))) {
        if (!log->opt.read_only) {
            char p[PATH_MAX_LEN];
            snprintf(p, sizeof p, "%s/%s", s->dir, name);
            log->io->unlink(log->io, p);
            log__msg(log, LOG_INFO, "shard %u: removed unfinished %s", s->id, name);
        }
        return 0;
    }
    if (!name_parse_segment(name, SUFFIX_LOG, &base))
        return push_base(&l->logs, &l->nlog, &l->caplog, base);
    if (!name_parse_segment(name, SUFFIX_ZLOG, &base))
        return push_base(&l->zlogs, &l->nzlog, &l->capzlog, base);
    if (!name_parse_segment(name, SUFFIX_IDX, &base))
        return push_base(&l->idxs, &l->nidx, &l->capidx, base);
    log__msg(log, LOG_WARN, "shard %u: ignoring %s file %s", s->id,
             strstr(name, SUFFIX_DAMAGED) ? "damaged" : "unknown", name);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int has(const uint64_t *a, size_t n, uint64_t v)
{
    return n && bsearch(&v, a, n, sizeof v, cmp_u64) != NULL;
}

/* ---- indexing records ---- */

enum { KNOWN = 0, UNKNOWN = 1 };

/* Record one damaged range. unknown: the records in it could not be
 * identified, so the msg_ids they took are unknown and the shard must refuse
 * writes until repaired. */
static void damage(shard *s, uint64_t seg_base, uint64_t pos, uint64_t bytes,
                   uint64_t first_off, uint64_t end_off, int err, int torn,
                   int unknown)
{
    log_damage d = {s->id, seg_base, pos, bytes, first_off, end_off, err, torn};
    shard__add_damage_locked(s, &d);
    if (unknown && !s->write_fenced) {
        s->write_fenced = 1;
        log__msg(s->log, LOG_ERROR,
                 "shard %u: damaged records could not be identified; writes "
                 "to this shard are refused until it is repaired", s->id);
    }
    if (!torn)
        log__msg(s->log, LOG_ERROR,
                 "shard %u: %s in segment %020llu at byte %llu (%llu bytes, "
                 "offsets [%llu, %llu)) — kept and fenced off, not truncated",
                 s->id, cl_strerror(err), (unsigned long long)seg_base,
                 (unsigned long long)pos, (unsigned long long)bytes,
                 (unsigned long long)first_off, (unsigned long long)end_off);
}

/* Add one record to the index. Returns 0 or CL_ENOMEM. */
static int index_record(shard *s, seg *sg, uint64_t offset, uint64_t conv_id,
                        uint64_t msg_id, uint8_t type, uint64_t pos, uint32_t ri)
{
    sg->records++;
    s->records++;
    if (type != REC_MESSAGE)
        return 0;
    conv *c = idx_get(&s->convs, conv_id);
    if (!c)
        return CL_ENOMEM;
    /* Bound what a bad msg_id can make us allocate. */
    if (msg_id <= c->n || msg_id - c->n > (1u << 20)) {
        /* A repeated id is known bad; an absurd jump leaves the sequence's
         * true end unknown. */
        damage(s, sg->base, pos, 0, offset, offset + 1, CL_ECORRUPT, 0,
               msg_id <= c->n ? KNOWN : UNKNOWN);
        return 0;
    }
    while (c->n + 1 < msg_id) {
        int rc = idx_push(c, LOC_DAMAGED);
        if (rc)
            return rc;
    }
    s->messages++;
    return idx_push(c, loc_pack(sg->ord, pos, ri));
}

/* Index every record of a verified batch at pos. */
static int index_batch(shard *s, seg *sg, const uint8_t *b,
                       const batch_header *h, uint64_t pos)
{
    size_t rp = 0;
    rec_view r;
    int rc = seg_sparse_add(sg, h->first_offset, pos);
    for (uint32_t i = 0; rc == 0 && batch_next_record(b, h, &rp, &r) == 0; i++) {
        rc = index_record(s, sg, h->first_offset + i, r.conv_id, r.msg_id,
                          r.type, pos, i);
        if (r.ts_ms > s->last_ts)
            s->last_ts = r.ts_ms;
    }
    if (h->term > s->term)
        s->term = h->term;
    return rc;
}

/* The next position >= from holding a valid batch of this shard, or -1. */
static int64_t resync(shard *s, const uint8_t *buf, uint64_t len, uint64_t from,
                      batch_header *h)
{
    static const uint8_t magic[4] = {0x43, 0x4C, 0x42, 0x31};
    for (uint64_t q = from; q + BATCH_HEADER_SIZE <= len; q++) {
        const uint8_t *m = memchr(buf + q, magic[0], len - q);
        if (!m)
            return -1;
        q = (uint64_t)(m - buf);
        if (q + BATCH_HEADER_SIZE > len)
            return -1;
        if (memcmp(m, magic, 4) == 0 && batch_verify(m, len - q, h) == 0 &&
            h->shard_id == s->id)
            return (int64_t)q;
    }
    return -1;
}

/* Walk the batches of buf[0..len) (raw positions base_pos..), indexing them,
 * from expected offset *off. Stops at the first bad batch, returning its
 * position in *bad (or len when all were good); *group_start is the position
 * after the last GROUP_END batch seen (where the last write began). */
static int walk(shard *s, seg *sg, const uint8_t *buf, uint64_t len,
                uint64_t base_pos, uint64_t *off, uint64_t *bad, int *err,
                uint64_t *group_start)
{
    uint64_t pos = 0;
    *err = 0;
    while (pos < len) {
        batch_header h;
        int rc = batch_verify_at(buf + pos, len - pos, s->id, *off, &h);
        if (rc) {
            *err = rc;
            break;
        }
        if ((rc = index_batch(s, sg, buf + pos, &h, base_pos + pos)))
            return rc;
        *off += h.record_count;
        pos += h.length;
        if (h.flags & BATCH_FLAG_GROUP_END)
            *group_start = base_pos + pos;
    }
    *bad = pos;
    return 0;
}

/* Could the damage at bad be a torn last write? Only the last write can be
 * torn (the writer syncs each write before the next), so: the write that
 * holds bad began at group_start (after the last complete write) and must
 * reach the end of the file within the largest write; and after bad there
 * is at most that one write's GROUP_END batch, with nothing valid after it.
 * Two writes' ends after bad — or valid data after an end — mean the bytes
 * at bad were synced before later writes: damage, not a tear. */
static int is_torn_tail(shard *s, const uint8_t *buf, uint64_t len,
                        uint64_t group_start, uint64_t bad)
{
    if (len - group_start > LOG_MAX_WRITE_BYTES)
        return 0;
    int ends = 0;
    for (uint64_t q = bad + 1;;) {
        batch_header h;
        int64_t v = resync(s, buf, len, q, &h);
        if (v < 0)
            return 1;
        if (ends)
            return 0; /* valid data after a write's end */
        if (h.flags & BATCH_FLAG_GROUP_END)
            ends++;
        q = (uint64_t)v + h.length;
    }
}

/* Scan a raw segment held in buf. active: apply the torn-tail rule. Sets
 * sg->end and sg->raw_size. *fresh_active is set when damage means a new
 * active segment must follow. */
static int scan_raw(shard *s, seg *sg, const uint8_t *buf, uint64_t len,
                    int active, uint64_t *valid_end, int *fresh_active)
{
    uint64_t off = sg->base, start = 0, group_start = 0;
    for (;;) {
        uint64_t bad;
        int err;
        int rc = walk(s, sg, buf + start, len - start, start, &off, &bad, &err,
                      &group_start);
        if (rc)
            return rc;
        bad += start;
        if (bad >= len)
            break;
        if (active && is_torn_tail(s, buf, len, group_start, bad)) {
            damage(s, sg->base, bad, len - bad, off, off, err, 1, KNOWN);
            len = bad;
            break;
        }
        batch_header h;
        int64_t q = resync(s, buf, len, bad + 1, &h);
        uint64_t stop = q < 0 ? len : (uint64_t)q;
        uint64_t end_off = q < 0 ? off : h.first_offset;
        damage(s, sg->base, bad, stop - bad, off, end_off, err, 0, UNKNOWN);
        if (active)
            *fresh_active = 1;
        if (q < 0)
            break;
        if (h.first_offset < off) {
            /* Offsets going backwards: nothing after this can be trusted. */
            damage(s, sg->base, stop, len - stop, h.first_offset, off,
                   CL_EMISPLACED, 0, UNKNOWN);
            break;
        }
        off = h.first_offset;
        start = stop;
    }
    sg->end = off;
    sg->raw_size = len;
    *valid_end = len;
    return 0;
}

static int read_whole(io_vfs *io, io_file *f, uint8_t **out, uint64_t *len)
{
    uint64_t size;
    int rc = io->size(f, &size);
    if (rc)
        return rc;
    if (size > RCV_MAX_FILE)
        return CL_ETOOBIG;
    uint8_t *b = malloc(size ? size : 1);
    if (!b)
        return CL_ENOMEM;
    ssize_t n = io->pread(f, b, size, 0);
    if (n < 0) {
        free(b);
        return (int)n;
    }
    *out = b;
    *len = (uint64_t)n;
    return 0;
}

/* Scan a compressed segment block by block (its sidecar was unusable). */
static int scan_zlog(shard *s, seg *sg, uint64_t zend)
{
    rbuf blk = {0};
    uint64_t gs_unused = 0;
    uint64_t off = sg->base;
    int rc = 0;
    for (uint32_t i = 0; i < sg->nblocks && rc == 0; i++) {
        const zblock *b = &sg->blocks[i];
        int err = zlog_read_block(s->log->io, sg->f, b, &blk);
        uint64_t bad = 0;
        if (err == 0)
            rc = walk(s, sg, blk.p, b->raw_len, b->raw_pos, &off, &bad, &err,
                      &gs_unused);
        if (rc == 0 && err) {
            /* Fence the rest of the block; the next block's first batch
             * tells where offsets resume. */
            uint64_t next_off = zend;
            if (i + 1 < sg->nblocks &&
                zlog_read_block(s->log->io, sg->f, &sg->blocks[i + 1], &blk) == 0) {
                batch_header h;
                if (batch_peek_header(blk.p, &h) == 0)
                    next_off = h.first_offset;
            }
            damage(s, sg->base, b->raw_pos + bad, b->raw_len - bad, off,
                   next_off, err, 0, UNKNOWN);
            if (next_off > off)
                off = next_off;
        }
    }
    rbuf_free(&blk);
    sg->end = off > zend ? off : zend;
    return rc;
}

/* Load a sealed segment's index from its sidecar. Returns 0, or an error
 * meaning "scan instead". */
static int load_sidecar(shard *s, seg *sg)
{
    char p[PATH_MAX_LEN];
    name_segment(p, sizeof p, s->dir, sg->base, SUFFIX_IDX, 0);
    side_ent *e = NULL;
    uint64_t n = 0;
    int rc = sidecar_load(s->log->io, p, s->id, sg->base, sg->end, sg->raw_size,
                          &e, &n);
    if (rc)
        return rc;
    /* Index into a scratch state first: a sidecar that disagrees with the
     * msg_id sequence is rejected as a whole. */
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        if (i == 0 || e[i].pos != e[i - 1].pos)
            rc = seg_sparse_add(sg, sg->base + i, e[i].pos);
        if (rc == 0)
            rc = index_record(s, sg, sg->base + i, e[i].conv_id, e[i].msg_id,
                              e[i].type, e[i].pos, e[i].rec_idx);
    }
    free(e);
    return rc;
}

/* Forget what a rejected sidecar put in the index for segment sg. */
static void unindex_segment(shard *s, seg *sg, uint64_t recs_before,
                            uint64_t msgs_before)
{
    s->records = recs_before;
    s->messages = msgs_before;
    sg->records = 0;
    sg->nsparse = 0;
    for (uint32_t i = 0; i < s->convs.cap; i++) {
        conv *c = s->convs.slots[i];
        while (c && c->n && c->locs[c->n - 1] != LOC_DAMAGED &&
               loc_seg(c->locs[c->n - 1]) == sg->ord)
            c->n--;
    }
}

static int open_file(shard *s, uint64_t base, const char *sfx, io_file **f)
{
    char p[PATH_MAX_LEN];
    name_segment(p, sizeof p, s->dir, base, sfx, 0);
    return s->log->io->open(s->log->io, p, s->log->opt.read_only ? IO_RDONLY : IO_RDWR, f);
}

static void remove_file(shard *s, uint64_t base, const char *sfx)
{
    char p[PATH_MAX_LEN];
    name_segment(p, sizeof p, s->dir, base, sfx, 0);
    s->log->io->unlink(s->log->io, p);
}

static int add_seg(shard *s, seg *sg)
{
    if (s->nsegs == s->capsegs) {
        uint32_t nc = s->capsegs ? s->capsegs * 2 : 16;
        seg **n = realloc(s->segs, nc * sizeof *n);
        if (!n)
            return CL_ENOMEM;
        s->segs = n;
        s->capsegs = nc;
    }
    s->segs[s->nsegs++] = sg;
    return 0;
}

/* Keep the bytes a torn tail cut in <base>.log.tail-<pos>.damaged: the
 * rule that calls them torn is sound but for one corner (see rule 5), and
 * cut data should stay recoverable by hand. Synced before the cut. */
static int keep_tail(shard *s, uint64_t base, const uint8_t *p, uint64_t n,
                     uint64_t pos)
{
    io_vfs *io = s->log->io;
    char segpath[PATH_MAX_LEN], path[PATH_MAX_LEN];
    name_segment(segpath, sizeof segpath, s->dir, base, SUFFIX_LOG, 0);
    snprintf(path, sizeof path, "%s.tail-%llu%s", segpath, (unsigned long long)pos,
             SUFFIX_DAMAGED);
    io_file *f;
    int rc = io->open(io, path, IO_RDWR | IO_CREATE, &f);
    if (rc)
        return rc;
    if ((rc = io->truncate(f, 0)) == 0 && (rc = io->pwrite(f, p, n, 0)) == 0)
        rc = io->fdatasync(f);
    io->close(f);
    return rc ? rc : io->fsync_dir(io, s->dir);
}

/* Rule 6a: rename a stray segment file (and its sidecar) to .damaged. */
static void set_aside(shard *s, uint64_t base, int is_zlog)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    static const char *const sfx[] = {SUFFIX_LOG, SUFFIX_ZLOG, SUFFIX_IDX};
    for (int k = 0; k < 3; k++) {
        if (k == 1 && !is_zlog)
            continue;
        if (k == 0 && is_zlog)
            continue;
        char from[PATH_MAX_LEN], to[PATH_MAX_LEN];
        name_segment(from, sizeof from, s->dir, base, sfx[k], 0);
        snprintf(to, sizeof to, "%s%s", from, SUFFIX_DAMAGED);
        if (log->opt.read_only)
            continue;
        int rc = io->rename(io, from, to);
        if (rc == 0 || k != 2)
            log__msg(log, LOG_ERROR,
                     "shard %u: %s lies inside the range of the segment before "
                     "it (not part of the log); %s %s", s->id, from,
                     rc ? "could not keep it aside:" : "kept aside as",
                     rc ? cl_strerror(rc) : to);
    }
    if (log->opt.read_only)
        log__msg(log, LOG_ERROR, "shard %u: segment %020llu lies inside the "
                 "range of the segment before it; ignored", s->id,
                 (unsigned long long)base);
    else
        io->fsync_dir(io, s->dir);
}

/* Open and index one segment. */
static int recover_segment(shard *s, uint64_t base, int is_zlog, int is_last,
                           int have_idx, uint64_t next_base, int *fresh_active)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    int ro = log->opt.read_only;
    if (s->nsegs >= LOC_MAX_SEGMENTS)
        return CL_ETOOBIG;
    seg *sg = seg__alloc(s->nsegs, base);
    if (!sg)
        return CL_ENOMEM;
    int rc;
    if (is_zlog) {
        if ((rc = open_file(s, base, SUFFIX_ZLOG, &sg->f)))
            goto fail;
        uint64_t end, raw, recs;
        rc = zlog_load(io, sg->f, s->id, base, &end, &raw, &recs, &sg->blocks,
                       &sg->nblocks);
        if (rc == CL_ECORRUPT || rc == CL_ETRUNC) {
            /* The block table is unreadable: the whole segment is lost here
             * (a replica can repair it later). */
            damage(s, base, 0, 0, base, next_base, rc, 0, UNKNOWN);
            sg->state = SEG_COMPRESSED;
            sg->end = next_base > base ? next_base : base;
            io->size(sg->f, &sg->disk_bytes);
            return add_seg(s, sg);
        }
        if (rc)
            goto fail;
        sg->state = SEG_COMPRESSED;
        sg->end = end;
        sg->raw_size = raw;
        io->size(sg->f, &sg->disk_bytes);
        if ((rc = add_seg(s, sg)))
            goto fail;
        uint64_t recs_before = s->records, msgs_before = s->messages;
        if (!have_idx || load_sidecar(s, sg)) {
            /* Sidecar missing or bad: undo partial indexing, then scan. */
            unindex_segment(s, sg, recs_before, msgs_before);
            if ((rc = scan_zlog(s, sg, end)))
                return rc;
            if (!ro && s->ndamage == 0)
                log__queue_seal(log, s, sg); /* rewrites the sidecar */
        }
        if (have_idx) {
            uint64_t isz = 0;
            io_file *f;
            if (open_file(s, base, SUFFIX_IDX, &f) == 0) {
                io->size(f, &isz);
                io->close(f);
            }
            sg->disk_bytes += isz;
        }
        return 0;
    }

    if ((rc = open_file(s, base, SUFFIX_LOG, &sg->f)))
        goto fail;
    if (is_last && have_idx && !ro) {
        /* Rule 7: the active segment has no sidecar; one beside it is
         * stale (an install or a truncation was interrupted). */
        remove_file(s, base, SUFFIX_IDX);
        io->fsync_dir(io, s->dir);
        log__msg(log, LOG_INFO, "shard %u: removed stale sidecar of active "
                 "segment %020llu", s->id, (unsigned long long)base);
    }
    uint64_t fsize;
    if ((rc = io->size(sg->f, &fsize)))
        goto fail;
    sg->state = is_last ? SEG_ACTIVE : SEG_SEALED;
    if ((rc = add_seg(s, sg)))
        return rc;
    /* A sealed raw segment with a good sidecar needs no scan. */
    if (!is_last && have_idx) {
        io_file *f;
        if (open_file(s, base, SUFFIX_IDX, &f) == 0) {
            uint8_t h[48];
            ssize_t n = io->pread(f, h, sizeof h, 0);
            io->close(f);
            if (n == (ssize_t)sizeof h && get_u64(h + 32) == fsize) {
                sg->end = get_u64(h + 24);
                sg->raw_size = fsize;
                uint64_t recs_before = s->records, msgs_before = s->messages;
                if (sg->end >= base && load_sidecar(s, sg) == 0) {
                    sg->disk_bytes = fsize;
                    if (!ro)
                        log__queue_seal(log, s, sg);
                    return 0;
                }
                unindex_segment(s, sg, recs_before, msgs_before);
            }
        }
    }
    uint8_t *buf = NULL;
    uint64_t len = 0, valid_end = 0;
    if ((rc = read_whole(io, sg->f, &buf, &len)))
        return rc;
    uint32_t damage_before = s->ndamage;
    rc = scan_raw(s, sg, buf, len, is_last, &valid_end, fresh_active);
    int torn = rc == 0 && is_last && valid_end < fsize &&
               s->ndamage > damage_before && s->damage[s->ndamage - 1].torn_tail;
    if (torn && !ro)
        rc = keep_tail(s, base, buf + valid_end, len - valid_end, valid_end);
    free(buf);
    if (rc)
        return rc;
    if (torn) {
        log__msg(log, LOG_INFO,
                 "shard %u: torn tail: cut %llu bytes at byte %llu of segment "
                 "%020llu (never acked)%s",
                 s->id, (unsigned long long)(fsize - valid_end),
                 (unsigned long long)valid_end, (unsigned long long)base,
                 ro ? " [read-only: not truncated]" : "");
        if (!ro) {
            if ((rc = io->truncate(sg->f, valid_end)) == 0)
                rc = io->fdatasync(sg->f);
            if (rc)
                return rc;
        }
    }
    sg->disk_bytes = fsize;
    if (!is_last && !ro && s->ndamage == damage_before)
        log__queue_seal(log, s, sg);
    if (is_last && *fresh_active)
        sg->state = SEG_SEALED;
    return 0;
fail:
    seg__free(log, sg);
    return rc;
}

int rcv_shard(shard *s)
{
    log_t *log = s->log;
    io_vfs *io = log->io;
    int ro = log->opt.read_only;
    listing l = {.s = s};
    int rc = io->list(io, s->dir, list_cb, &l);
    if (rc == -ENOENT && ro)
        rc = 0; /* read-only open of a directory without this shard yet */
    if (rc)
        goto out;
    if (l.nlog)
        qsort(l.logs, l.nlog, sizeof(uint64_t), cmp_u64);
    if (l.nzlog)
        qsort(l.zlogs, l.nzlog, sizeof(uint64_t), cmp_u64);
    if (l.nidx)
        qsort(l.idxs, l.nidx, sizeof(uint64_t), cmp_u64);

    /* Rule 2: settle .zlog/.log pairs. */
    uint64_t *bases = malloc((l.nlog + l.nzlog + 1) * sizeof *bases);
    uint8_t *zflag = malloc(l.nlog + l.nzlog + 1);
    size_t nb = 0;
    if (!bases || !zflag) {
        free(bases);
        free(zflag);
        rc = CL_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < l.nzlog; i++) {
        uint64_t b = l.zlogs[i];
        int use_z = 1;
        if (has(l.logs, l.nlog, b)) {
            io_file *f;
            uint64_t e, r, n;
            zblock *bl = NULL;
            uint32_t nbl;
            int zrc = open_file(s, b, SUFFIX_ZLOG, &f);
            if (zrc == 0) {
                zrc = zlog_load(io, f, s->id, b, &e, &r, &n, &bl, &nbl);
                free(bl);
                io->close(f);
            }
            use_z = zrc == 0;
            if (!ro) {
                if (use_z) {
                    remove_file(s, b, SUFFIX_LOG);
                } else {
                    /* Never delete damaged data: the .log is used, the bad
                     * .zlog is kept aside (ignored, reported) for repair. */
                    char from[PATH_MAX_LEN], to[PATH_MAX_LEN];
                    name_segment(from, sizeof from, s->dir, b, SUFFIX_ZLOG, 0);
                    snprintf(to, sizeof to, "%s%s", from, SUFFIX_DAMAGED);
                    io->rename(io, from, to);
                    log__msg(log, LOG_ERROR, "shard %u: %s is damaged (%s); kept as %s",
                             s->id, from, cl_strerror(zrc), to);
                }
                io->fsync_dir(io, s->dir);
            }
        }
        if (use_z) {
            bases[nb] = b;
            zflag[nb++] = 1;
        }
    }
    for (size_t i = 0; i < l.nlog; i++) {
        int dup = 0;
        for (size_t k = 0; k < nb && !dup; k++)
            dup = bases[k] == l.logs[i];
        if (!dup) {
            bases[nb] = l.logs[i];
            zflag[nb++] = 0;
        }
    }
    /* Sort bases with their flags (insertion sort: counts are small). */
    for (size_t i = 1; i < nb; i++)
        for (size_t k = i; k > 0 && bases[k - 1] > bases[k]; k--) {
            uint64_t t = bases[k];
            bases[k] = bases[k - 1];
            bases[k - 1] = t;
            uint8_t z = zflag[k];
            zflag[k] = zflag[k - 1];
            zflag[k - 1] = z;
        }

    int fresh_active = 0;
    for (size_t i = 0; i < nb && rc == 0; i++) {
        uint64_t prev_end = s->nsegs ? s->segs[s->nsegs - 1]->end : bases[0];
        if (s->nsegs && bases[i] > s->segs[s->nsegs - 1]->base && bases[i] < prev_end) {
            /* Rule 6a: a file whose base lies inside the previous segment's
             * records is not part of this log (the writer never makes one:
             * it comes from outside, a copied or renamed file). The range
             * stays with the segment that holds it; the stray file is kept
             * aside as .damaged, with its sidecar. */
            set_aside(s, bases[i], zflag[i]);
            continue;
        }
        if (bases[i] != prev_end)
            damage(s, bases[i], 0, 0, prev_end < bases[i] ? prev_end : bases[i],
                   prev_end < bases[i] ? bases[i] : prev_end,
                   bases[i] > prev_end ? CL_ETRUNC : CL_EMISPLACED, 0, UNKNOWN);
        uint64_t next_base = i + 1 < nb ? bases[i + 1] : 0;
        rc = recover_segment(s, bases[i], zflag[i], i + 1 == nb,
                             has(l.idxs, l.nidx, bases[i]), next_base,
                             &fresh_active);
        if (rc == -ENOENT && ro && !zflag[i]) {
            /* Read-only beside a live writer: the sealer replaced the .log
             * with its .zlog (and sidecar) after we listed the directory. */
            rc = recover_segment(s, bases[i], 1, i + 1 == nb, 1, next_base,
                                 &fresh_active);
        }
    }
    free(bases);
    free(zflag);
    if (rc)
        goto out;

    uint64_t end = s->nsegs ? s->segs[s->nsegs - 1]->end : 0;
    int need_active = s->nsegs == 0 || s->segs[s->nsegs - 1]->state != SEG_ACTIVE;
    /* A last segment whose end is unknown (unreadable) leaves no safe base
     * for a new one — it could take the damaged segment's own name. Such a
     * shard refuses writes anyway (write_fenced) until it is repaired. */
    if (need_active && s->nsegs && s->write_fenced &&
        s->segs[s->nsegs - 1]->end <= s->segs[s->nsegs - 1]->base)
        need_active = 0;
    if (need_active && !ro) {
        seg *sg;
        if (s->nsegs && s->segs[s->nsegs - 1]->state == SEG_SEALED && !fresh_active &&
            !s->segs[s->nsegs - 1]->sealing)
            log__queue_seal(log, s, s->segs[s->nsegs - 1]);
        rc = shard__new_segment_locked(s, end, &sg);
        if (rc)
            goto out;
    }
    s->next_offset = s->durable_offset = end;
    for (uint32_t i = 0; i < s->convs.cap; i++)
        if (s->convs.slots[i])
            s->convs.slots[i]->assigned = s->convs.slots[i]->n;
out:
    free(l.logs);
    free(l.zlogs);
    free(l.idxs);
    return rc;
}
