/*
 * segment.c — segment files: raw segments, compressed sealed segments
 * (.zlog) and their sidecar indexes (.idx). All integers little-endian.
 *
 * RAW SEGMENT (<base>.log): batches (batch.c) back to back from byte 0; the
 * first batch's first_offset is <base>, and each batch's first_offset is the
 * previous one's plus its record_count. The active segment is the last one of
 * a shard; every other segment is sealed and never written again.
 *
 * COMPRESSED SEGMENT (<base>.zlog): the same bytes as the raw segment, cut
 * into blocks of whole batches (about ZBLOCK_TARGET raw bytes each, more if a
 * batch is larger), each block one zstd frame, so that one record is read by
 * decompressing one block only.
 *    0  u32 magic "CLZ1" (0x315A4C43)     4  u16 version 1   6  u16 flags 0
 *    8  u32 shard_id                      12 u32 nblocks (>= 1)
 *   16  u64 base_offset                   24 u64 end_offset
 *   32  u64 raw_size                      40 u64 records
 *   48  u64 reserved 0
 *   56  block table, nblocks entries of 32 bytes:
 *         u64 raw_pos, u32 raw_len, u32 comp_len, u64 file_pos,
 *         u64 XXH3-64 of the compressed bytes
 *   56+32*nblocks  u64 XXH3-64 of bytes [0, 56+32*nblocks)
 *   then the compressed blocks at their file_pos, in order, back to back.
 * VALID: header and table checksum match; blocks are contiguous in raw
 * positions from 0 to raw_size and in file positions after the table; each
 * block's compressed bytes match their hash and decompress to exactly raw_len
 * bytes, which hold whole valid batches.
 * Written as tmp-<base>.zlog, read back and checked block by block against
 * the raw bytes, fdatasynced, renamed, then the directory fsynced; only then
 * is the raw segment unlinked (and the directory fsynced again).
 *
 * SIDECAR INDEX (<base>.idx): one entry per record of the sealed segment.
 *    0  u32 magic "CLI1" (0x31494C43)     4  u16 version 1   6  u16 0
 *    8  u32 shard_id                      12 u32 0
 *   16  u64 base_offset                   24 u64 end_offset
 *   32  u64 raw_size                      40 u64 n (records)
 *   48  u64 payload_len (compressed)
 *   56  payload: one zstd frame holding n entries of 24 bytes:
 *         u64 conv_id, u64 msg_id, u32 batch_pos, u16 rec_idx, u8 type, u8 0
 *       entry i describes the record at offset base_offset + i
 *   56+payload_len  u64 XXH3-64 of every byte before it
 * VALID: checksum matches, header matches its segment (shard, base, end,
 * raw_size), n == end - base, and the payload decompresses to n*24 bytes.
 * Written tmp → fdatasync → rename; a missing or invalid sidecar is rebuilt
 * from the segment on open.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

#include "errors.h"
#include "internal.h"
#include "util.h"

#define ZLOG_MAGIC 0x315A4C43u
#define SIDE_MAGIC 0x31494C43u
#define ZLOG_HEADER 56
#define ZLOG_ENTRY 32
#define SIDE_HEADER 56
#define SIDE_ENTRY 24
#define ZBLOCK_TARGET (64u << 10)
#define ZSTD_LEVEL 3
#define SIDE_MAX_FILE (256ull << 20)

/* ---- names ---- */

void name_shard_dir(char *out, size_t n, const char *dir, uint32_t shard_id)
{
    snprintf(out, n, "%s/shard-%04u", dir, shard_id);
}

void name_segment(char *out, size_t n, const char *shard_dir, uint64_t base,
                  const char *suffix, int tmp)
{
    snprintf(out, n, "%s/%s%020llu%s", shard_dir, tmp ? NAME_TMP_PREFIX : "",
             (unsigned long long)base, suffix);
}

int name_parse_segment(const char *name, const char *suffix, uint64_t *base)
{
    size_t sl = strlen(suffix);
    if (strlen(name) != 20 + sl || strcmp(name + 20, suffix) != 0)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(name[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *base = v;
    return 0;
}

/* ---- buffers ---- */

int rbuf_reserve(rbuf *b, size_t n)
{
    if (b->cap >= n)
        return 0;
    size_t ncap = b->cap ? b->cap : 4096;
    while (ncap < n)
        ncap *= 2;
    uint8_t *p = realloc(b->p, ncap);
    if (!p)
        return CL_ENOMEM;
    b->p = p;
    b->cap = ncap;
    return 0;
}

void rbuf_free(rbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

void rctx_free(rctx *r)
{
    rbuf_free(&r->batch);
    rbuf_free(&r->block);
    r->block_seg = NULL;
}

/* ---- segment objects ---- */

seg *seg__alloc(uint32_t ord, uint64_t base)
{
    seg *sg = calloc(1, sizeof *sg);
    if (!sg)
        return NULL;
    sg->ord = ord;
    sg->base = sg->end = base;
    return sg;
}

void seg__free(log_t *log, seg *sg)
{
    if (!sg)
        return;
    if (sg->f)
        log->io->close(sg->f);
    free(sg->blocks);
    free(sg->sparse);
    free(sg);
}

int seg_sparse_add(seg *sg, uint64_t offset, uint64_t pos)
{
    if (sg->nsparse && pos < sg->sparse_last_pos + SPARSE_EVERY)
        return 0;
    if (sg->nsparse == sg->capsparse) {
        uint32_t ncap = sg->capsparse ? sg->capsparse * 2 : 16;
        sparse_ent *n = realloc(sg->sparse, ncap * sizeof *n);
        if (!n)
            return CL_ENOMEM;
        sg->sparse = n;
        sg->capsparse = ncap;
    }
    sg->sparse[sg->nsparse++] = (sparse_ent){offset, pos};
    sg->sparse_last_pos = pos;
    return 0;
}

/* ---- reading batches ---- */

static int find_block(const seg *sg, uint64_t pos)
{
    uint32_t lo = 0, hi = sg->nblocks;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const zblock *b = &sg->blocks[mid];
        if (pos < b->raw_pos)
            hi = mid;
        else if (pos >= b->raw_pos + b->raw_len)
            lo = mid + 1;
        else
            return (int)mid;
    }
    return -1;
}

int seg_read_batch_locked(shard *s, const seg *sg, uint64_t pos, rctx *r,
                          const uint8_t **out, batch_header *h)
{
    io_vfs *io = s->log->io;
    if (pos >= sg->raw_size)
        return CL_ETRUNC;
    uint64_t avail = sg->raw_size - pos;
    int rc;
    if (sg->state != SEG_COMPRESSED) {
        if (avail < BATCH_HEADER_SIZE)
            return CL_ECORRUPT;
        if ((rc = rbuf_reserve(&r->batch, BATCH_HEADER_SIZE)))
            return rc;
        ssize_t n = io->pread(sg->f, r->batch.p, BATCH_HEADER_SIZE, pos);
        if (n < 0)
            return (int)n;
        if (n < BATCH_HEADER_SIZE)
            return CL_ECORRUPT;
        if ((rc = batch_peek_header(r->batch.p, h)))
            return rc;
        if (h->length > avail)
            return CL_ECORRUPT;
        if ((rc = rbuf_reserve(&r->batch, h->length)))
            return rc;
        n = io->pread(sg->f, r->batch.p, h->length, pos);
        if (n < 0)
            return (int)n;
        if ((size_t)n < h->length)
            return CL_ECORRUPT;
        rc = batch_verify(r->batch.p, h->length, h);
        if (rc == 0 && h->shard_id != s->id)
            rc = CL_EMISPLACED;
        if (rc)
            return rc == CL_ETRUNC ? CL_ECORRUPT : rc;
        *out = r->batch.p;
        return 0;
    }
    int bi = find_block(sg, pos);
    if (bi < 0)
        return CL_ECORRUPT;
    if (r->block_seg != sg || r->block_idx != (uint32_t)bi ||
        r->block_gen != s->gen) {
        r->block_seg = NULL;
        if ((rc = zlog_read_block(io, sg->f, &sg->blocks[bi], &r->block)))
            return rc;
        r->block_seg = sg;
        r->block_idx = (uint32_t)bi;
        r->block_gen = s->gen;
    }
    const zblock *b = &sg->blocks[bi];
    uint64_t in = pos - b->raw_pos;
    rc = batch_verify(r->block.p + in, b->raw_len - in, h);
    if (rc == 0 && h->shard_id != s->id)
        rc = CL_EMISPLACED;
    if (rc)
        return rc == CL_ETRUNC ? CL_ECORRUPT : rc;
    *out = r->block.p + in;
    return 0;
}

/* ---- .zlog ---- */

int zlog_read_block(io_vfs *io, io_file *f, const zblock *b, rbuf *out)
{
    uint8_t *comp = malloc(b->comp_len ? b->comp_len : 1);
    if (!comp)
        return CL_ENOMEM;
    int rc = 0;
    ssize_t n = io->pread(f, comp, b->comp_len, b->file_pos);
    if (n < 0) {
        rc = (int)n;
    } else if ((size_t)n != b->comp_len ||
               XXH3_64bits(comp, b->comp_len) != b->hash) {
        rc = CL_ECORRUPT;
    } else if ((rc = rbuf_reserve(out, b->raw_len ? b->raw_len : 1)) == 0) {
        size_t got = ZSTD_decompress(out->p, b->raw_len, comp, b->comp_len);
        if (ZSTD_isError(got) || got != b->raw_len)
            rc = CL_ECORRUPT;
    }
    free(comp);
    return rc;
}

static int write_all_sync(io_vfs *io, const char *path, const uint8_t *p,
                          size_t len, io_file **keep)
{
    io_file *f;
    int rc = io->open(io, path, IO_RDWR | IO_CREATE, &f);
    if (rc)
        return rc;
    if ((rc = io->truncate(f, 0)) == 0 && (rc = io->pwrite(f, p, len, 0)) == 0)
        rc = io->fdatasync(f);
    if (rc || !keep) {
        io->close(f);
        if (rc)
            io->unlink(io, path);
        return rc;
    }
    *keep = f;
    return 0;
}

int zlog_write(io_vfs *io, const char *path, uint32_t shard_id, const seg *sg,
               const uint8_t *raw, zblock **blocks_out, uint32_t *nblocks_out)
{
    /* Cut the raw bytes into blocks at batch boundaries. */
    uint32_t nb = 0, capb = 16;
    zblock *bl = malloc(capb * sizeof *bl);
    if (!bl)
        return CL_ENOMEM;
    uint64_t pos = 0;
    while (pos < sg->raw_size) {
        uint64_t start = pos;
        while (pos < sg->raw_size && (pos == start || pos - start < ZBLOCK_TARGET)) {
            batch_header h;
            if (sg->raw_size - pos < BATCH_HEADER_SIZE ||
                batch_peek_header(raw + pos, &h) || h.length > sg->raw_size - pos) {
                free(bl);
                return CL_ECORRUPT;
            }
            pos += h.length;
        }
        if (nb == capb) {
            capb *= 2;
            zblock *n = realloc(bl, capb * sizeof *n);
            if (!n) {
                free(bl);
                return CL_ENOMEM;
            }
            bl = n;
        }
        bl[nb++] = (zblock){.raw_pos = start, .raw_len = (uint32_t)(pos - start)};
    }
    if (nb == 0) {
        free(bl);
        return CL_EINVAL;
    }
    size_t table_end = ZLOG_HEADER + (size_t)ZLOG_ENTRY * nb + 8;
    size_t bound = table_end;
    for (uint32_t i = 0; i < nb; i++)
        bound += ZSTD_compressBound(bl[i].raw_len);
    uint8_t *file = malloc(bound);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    int rc = 0;
    if (!file || !cctx) {
        rc = CL_ENOMEM;
        goto out;
    }
    size_t fpos = table_end;
    for (uint32_t i = 0; i < nb; i++) {
        size_t c = ZSTD_compressCCtx(cctx, file + fpos, bound - fpos,
                                     raw + bl[i].raw_pos, bl[i].raw_len,
                                     ZSTD_LEVEL);
        if (ZSTD_isError(c)) {
            rc = CL_ENOMEM;
            goto out;
        }
        bl[i].file_pos = fpos;
        bl[i].comp_len = (uint32_t)c;
        bl[i].hash = XXH3_64bits(file + fpos, c);
        fpos += c;
    }
    put_u32(file, ZLOG_MAGIC);
    put_u16(file + 4, 1);
    put_u16(file + 6, 0);
    put_u32(file + 8, shard_id);
    put_u32(file + 12, nb);
    put_u64(file + 16, sg->base);
    put_u64(file + 24, sg->end);
    put_u64(file + 32, sg->raw_size);
    put_u64(file + 40, sg->records);
    put_u64(file + 48, 0);
    for (uint32_t i = 0; i < nb; i++) {
        uint8_t *e = file + ZLOG_HEADER + (size_t)ZLOG_ENTRY * i;
        put_u64(e, bl[i].raw_pos);
        put_u32(e + 8, bl[i].raw_len);
        put_u32(e + 12, bl[i].comp_len);
        put_u64(e + 16, bl[i].file_pos);
        put_u64(e + 24, bl[i].hash);
    }
    put_u64(file + table_end - 8, XXH3_64bits(file, table_end - 8));

    io_file *f = NULL;
    if ((rc = write_all_sync(io, path, file, fpos, &f)))
        goto out;
    /* Verify what the file system holds, not what we meant to write. */
    uint64_t end, rs, recs;
    zblock *chk = NULL;
    uint32_t nchk = 0;
    rbuf tmp = {0};
    rc = zlog_load(io, f, shard_id, sg->base, &end, &rs, &recs, &chk, &nchk);
    if (rc == 0 && (nchk != nb || end != sg->end || rs != sg->raw_size))
        rc = CL_ECORRUPT;
    for (uint32_t i = 0; rc == 0 && i < nchk; i++) {
        rc = zlog_read_block(io, f, &chk[i], &tmp);
        if (rc == 0 && memcmp(tmp.p, raw + chk[i].raw_pos, chk[i].raw_len) != 0)
            rc = CL_ECORRUPT;
    }
    rbuf_free(&tmp);
    free(chk);
    io->close(f);
    if (rc)
        io->unlink(io, path);
out:
    ZSTD_freeCCtx(cctx);
    free(file);
    if (rc) {
        free(bl);
        return rc;
    }
    *blocks_out = bl;
    *nblocks_out = nb;
    return 0;
}

int zlog_parse(const uint8_t *t, size_t tlen, uint64_t fsize,
               uint32_t shard_id, uint64_t base, uint64_t *end,
               uint64_t *raw_size, uint64_t *records, zblock **blocks_out,
               uint32_t *nblocks_out)
{
    if (tlen < ZLOG_HEADER)
        return CL_ETRUNC;
    uint32_t nb = get_u32(t + 12);
    if (get_u32(t) != ZLOG_MAGIC || get_u16(t + 4) != 1 ||
        get_u16(t + 6) != 0 || get_u32(t + 8) != shard_id ||
        get_u64(t + 16) != base || nb == 0 ||
        (uint64_t)nb * ZLOG_ENTRY + ZLOG_HEADER + 8 > fsize)
        return CL_ECORRUPT;
    size_t table_end = zlog_table_end(nb);
    if (tlen < table_end)
        return CL_ETRUNC;
    if (XXH3_64bits(t, table_end - 8) != get_u64(t + table_end - 8))
        return CL_ECORRUPT;
    zblock *bl = calloc(nb, sizeof *bl);
    if (!bl)
        return CL_ENOMEM;
    uint64_t rpos = 0, fpos = table_end;
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *e = t + ZLOG_HEADER + (size_t)ZLOG_ENTRY * i;
        bl[i] = (zblock){get_u64(e), get_u32(e + 8), get_u32(e + 12),
                         get_u64(e + 16), get_u64(e + 24)};
        if (bl[i].raw_pos != rpos || bl[i].file_pos != fpos ||
            bl[i].raw_len == 0 || bl[i].raw_len > BATCH_MAX_BYTES + ZBLOCK_TARGET ||
            bl[i].comp_len > fsize - fpos) {
            free(bl);
            return CL_ECORRUPT;
        }
        rpos += bl[i].raw_len;
        fpos += bl[i].comp_len;
    }
    if (rpos != get_u64(t + 32) || fpos != fsize || get_u64(t + 24) < base) {
        free(bl);
        return CL_ECORRUPT;
    }
    *end = get_u64(t + 24);
    *raw_size = rpos;
    *records = get_u64(t + 40);
    *blocks_out = bl;
    *nblocks_out = nb;
    return 0;
}

size_t zlog_table_end(uint32_t nblocks)
{
    return ZLOG_HEADER + (size_t)ZLOG_ENTRY * nblocks + 8;
}

int zlog_load(io_vfs *io, io_file *f, uint32_t shard_id, uint64_t base,
              uint64_t *end, uint64_t *raw_size, uint64_t *records,
              zblock **blocks_out, uint32_t *nblocks_out)
{
    uint8_t hdr[ZLOG_HEADER];
    uint64_t fsize;
    int rc = io->size(f, &fsize);
    if (rc)
        return rc;
    ssize_t n = io->pread(f, hdr, sizeof hdr, 0);
    if (n < 0)
        return (int)n;
    if (n < (ssize_t)sizeof hdr)
        return CL_ETRUNC;
    uint32_t nb = get_u32(hdr + 12);
    if (nb == 0 || (uint64_t)nb * ZLOG_ENTRY + ZLOG_HEADER + 8 > fsize)
        return CL_ECORRUPT;
    size_t table_end = zlog_table_end(nb);
    uint8_t *t = malloc(table_end);
    if (!t)
        return CL_ENOMEM;
    n = io->pread(f, t, table_end, 0);
    if (n < 0)
        rc = (int)n;
    else if ((size_t)n != table_end)
        rc = CL_ECORRUPT;
    else
        rc = zlog_parse(t, table_end, fsize, shard_id, base, end, raw_size,
                        records, blocks_out, nblocks_out);
    if (rc == CL_ETRUNC)
        rc = CL_ECORRUPT; /* the size said the table fits */
    free(t);
    return rc;
}

int zlog_decompress_block(const uint8_t *comp, const zblock *b, rbuf *out)
{
    if (XXH3_64bits(comp, b->comp_len) != b->hash)
        return CL_ECORRUPT;
    int rc = rbuf_reserve(out, b->raw_len ? b->raw_len : 1);
    if (rc)
        return rc;
    size_t got = ZSTD_decompress(out->p, b->raw_len, comp, b->comp_len);
    if (ZSTD_isError(got) || got != b->raw_len)
        return CL_ECORRUPT;
    return 0;
}

int seg_write_file(io_vfs *io, const char *path, const uint8_t *p, size_t len)
{
    return write_all_sync(io, path, p, len, NULL);
}

/* ---- sidecar ---- */

int sidecar_write(io_vfs *io, const char *shard_dir, uint32_t shard_id,
                  const seg *sg, const side_ent *ents, uint64_t n,
                  uint64_t *bytes)
{
    size_t plain_len = (size_t)n * SIDE_ENTRY;
    uint8_t *plain = malloc(plain_len ? plain_len : 1);
    size_t bound = ZSTD_compressBound(plain_len);
    uint8_t *file = malloc(SIDE_HEADER + bound + 8);
    int rc = 0;
    if (!plain || !file) {
        rc = CL_ENOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint8_t *e = plain + i * SIDE_ENTRY;
        put_u64(e, ents[i].conv_id);
        put_u64(e + 8, ents[i].msg_id);
        put_u32(e + 16, ents[i].pos);
        put_u16(e + 20, ents[i].rec_idx);
        e[22] = ents[i].type;
        e[23] = 0;
    }
    size_t clen = ZSTD_compress(file + SIDE_HEADER, bound, plain, plain_len,
                                ZSTD_LEVEL);
    if (ZSTD_isError(clen)) {
        rc = CL_ENOMEM;
        goto out;
    }
    put_u32(file, SIDE_MAGIC);
    put_u16(file + 4, 1);
    put_u16(file + 6, 0);
    put_u32(file + 8, shard_id);
    put_u32(file + 12, 0);
    put_u64(file + 16, sg->base);
    put_u64(file + 24, sg->end);
    put_u64(file + 32, sg->raw_size);
    put_u64(file + 40, n);
    put_u64(file + 48, clen);
    put_u64(file + SIDE_HEADER + clen, XXH3_64bits(file, SIDE_HEADER + clen));
    char tmp[PATH_MAX_LEN], fin[PATH_MAX_LEN];
    name_segment(tmp, sizeof tmp, shard_dir, sg->base, SUFFIX_IDX, 1);
    name_segment(fin, sizeof fin, shard_dir, sg->base, SUFFIX_IDX, 0);
    if ((rc = write_all_sync(io, tmp, file, SIDE_HEADER + clen + 8, NULL)) == 0)
        rc = io->rename(io, tmp, fin);
    *bytes = SIDE_HEADER + clen + 8;
out:
    free(plain);
    free(file);
    return rc;
}

int sidecar_parse(const uint8_t *file, uint64_t fsize, uint32_t shard_id,
                  uint64_t base, uint64_t end, uint64_t raw_size,
                  side_ent **out, uint64_t *nout)
{
    uint8_t *plain = NULL;
    side_ent *ents = NULL;
    int rc = CL_ECORRUPT;
    if (fsize < SIDE_HEADER + 8 || fsize > SIDE_MAX_FILE ||
        XXH3_64bits(file, fsize - 8) != get_u64(file + fsize - 8))
        goto out;
    uint64_t cnt = get_u64(file + 40), clen = get_u64(file + 48);
    if (get_u32(file) != SIDE_MAGIC || get_u16(file + 4) != 1 ||
        get_u32(file + 8) != shard_id || get_u64(file + 16) != base ||
        get_u64(file + 24) != end || get_u64(file + 32) != raw_size ||
        cnt != end - base || clen != fsize - SIDE_HEADER - 8 ||
        cnt > raw_size / RECORD_HEADER_SIZE)
        goto out;
    size_t plain_len = (size_t)cnt * SIDE_ENTRY;
    plain = malloc(plain_len ? plain_len : 1);
    ents = malloc((cnt ? cnt : 1) * sizeof *ents);
    if (!plain || !ents) {
        rc = CL_ENOMEM;
        goto out;
    }
    size_t got = ZSTD_decompress(plain, plain_len, file + SIDE_HEADER, clen);
    if (ZSTD_isError(got) || got != plain_len)
        goto out;
    for (uint64_t i = 0; i < cnt; i++) {
        const uint8_t *e = plain + i * SIDE_ENTRY;
        ents[i] = (side_ent){get_u64(e), get_u64(e + 8), get_u32(e + 16),
                             get_u16(e + 20), e[22]};
        if (ents[i].pos >= raw_size || ents[i].type == 0 ||
            ents[i].type > REC_TYPE_MAX || ents[i].rec_idx >= BATCH_MAX_RECORDS)
            goto out;
    }
    *out = ents;
    *nout = cnt;
    ents = NULL;
    rc = 0;
out:
    free(plain);
    free(ents);
    return rc;
}

int sidecar_load(io_vfs *io, const char *path, uint32_t shard_id,
                 uint64_t base, uint64_t end, uint64_t raw_size,
                 side_ent **out, uint64_t *nout)
{
    io_file *f;
    int rc = io->open(io, path, IO_RDONLY, &f);
    if (rc)
        return rc;
    uint64_t fsize;
    uint8_t *file = NULL;
    if ((rc = io->size(f, &fsize)))
        goto out;
    rc = CL_ECORRUPT;
    if (fsize < SIDE_HEADER + 8 || fsize > SIDE_MAX_FILE)
        goto out;
    if (!(file = malloc(fsize))) {
        rc = CL_ENOMEM;
        goto out;
    }
    ssize_t n = io->pread(f, file, fsize, 0);
    if (n < 0) {
        rc = (int)n;
        goto out;
    }
    rc = (uint64_t)n != fsize ? CL_ECORRUPT
                              : sidecar_parse(file, fsize, shard_id, base, end,
                                              raw_size, out, nout);
out:
    io->close(f);
    free(file);
    return rc;
}
