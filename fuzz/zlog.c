/*
 * zlog.c — fuzz target: arbitrary bytes as a compressed sealed segment
 * (<base>.zlog), through zlog_load and zlog_read_block of every block
 * (engine/segment.c), then the batches inside each block through
 * batch_verify.
 *
 * Input: byte 0 is a mode, the rest is the file.
 *   bit 0: recompute the block table's XXH3 (for the block count the header
 *          states, when the table fits), so the fuzzer gets past it;
 *   bit 1: recompute each block's hash over the bytes it points at, so the
 *          fuzzer reaches the zstd frames;
 *   bit 2: check against shard 0, base 0 instead of the header's own
 *          shard_id and base_offset.
 *
 * Properties checked: no crash, out-of-bounds read or unbounded allocation;
 * results are 0, CL_ECORRUPT or CL_ETRUNC; an accepted file has >= 1 block,
 * blocks contiguous in raw positions from 0 and in file positions from the
 * end of the table to the end of the file, each raw_len in 1 .. 8 MiB +
 * 64 KiB, raw_size their sum, end_offset >= base; a block that reads back
 * has exactly raw_len bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "common.h"
#include "errors.h"
#include "internal.h"
#include "util.h"

#define ZLOG_HEADER 56
#define ZLOG_ENTRY 32
#define ZLOG_FUZZ_MAX_BLOCKS 64

static char path[512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(path, sizeof path, "%s/00000000000000000000.zlog", fuzz_tmp_dir());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!path[0])
        LLVMFuzzerInitialize(NULL, NULL);
    int mode = data[0];
    size_t flen = size - 1;
    uint8_t *file = malloc(flen ? flen : 1);
    FUZZ_CHECK(file != NULL, "oom");
    memcpy(file, data + 1, flen);

    uint32_t shard_id = 0;
    uint64_t base = 0;
    if (flen >= ZLOG_HEADER) {
        uint64_t nb = get_u32(file + 12);
        size_t table_end = ZLOG_HEADER + ZLOG_ENTRY * nb + 8;
        if ((mode & 1) && nb && table_end <= flen)
            put_u64(file + table_end - 8, XXH3_64bits(file, table_end - 8));
        if ((mode & 2) && table_end <= flen) {
            for (uint64_t i = 0; i < nb; i++) {
                uint8_t *e = file + ZLOG_HEADER + ZLOG_ENTRY * i;
                uint64_t fpos = get_u64(e + 16), clen = get_u32(e + 12);
                if (fpos <= flen && clen <= flen - fpos)
                    put_u64(e + 24, XXH3_64bits(file + fpos, clen));
            }
            if (mode & 1)
                put_u64(file + table_end - 8, XXH3_64bits(file, table_end - 8));
        }
        if (!(mode & 4)) {
            shard_id = get_u32(file + 8);
            base = get_u64(file + 16);
        }
    }
    FUZZ_CHECK(fuzz_write_file(path, file, flen) == 0, "write");
    free(file);

    io_vfs *io = fuzz_nosync_vfs();
    io_file *f;
    FUZZ_CHECK(io->open(io, path, IO_RDONLY, &f) == 0, "open");
    uint64_t end = 0, raw_size = 0, records = 0;
    zblock *bl = NULL;
    uint32_t nb = 0;
    int rc = zlog_load(io, f, shard_id, base, &end, &raw_size, &records, &bl, &nb);
    FUZZ_CHECK(rc == 0 || rc == CL_ECORRUPT || rc == CL_ETRUNC, "rc %d", rc);
    if (rc == 0) {
        FUZZ_CHECK(nb >= 1 && bl != NULL, "%u blocks", nb);
        FUZZ_CHECK(end >= base, "end %llu < base %llu", (unsigned long long)end,
                   (unsigned long long)base);
        uint64_t rpos = 0, fpos = ZLOG_HEADER + (uint64_t)ZLOG_ENTRY * nb + 8;
        for (uint32_t i = 0; i < nb; i++) {
            FUZZ_CHECK(bl[i].raw_pos == rpos && bl[i].file_pos == fpos,
                       "block %u not contiguous", i);
            FUZZ_CHECK(bl[i].raw_len >= 1 &&
                           bl[i].raw_len <= BATCH_MAX_BYTES + (64u << 10),
                       "block %u raw_len %u", i, bl[i].raw_len);
            rpos += bl[i].raw_len;
            fpos += bl[i].comp_len;
        }
        FUZZ_CHECK(rpos == raw_size, "raw_size %llu, blocks sum %llu",
                   (unsigned long long)raw_size, (unsigned long long)rpos);
        FUZZ_CHECK(fpos == flen, "blocks end at %llu of %zu",
                   (unsigned long long)fpos, flen);
        rbuf out = {0};
        for (uint32_t i = 0; i < nb && i < ZLOG_FUZZ_MAX_BLOCKS; i++) {
            int brc = zlog_read_block(io, f, &bl[i], &out);
            FUZZ_CHECK(brc == 0 || brc == CL_ECORRUPT, "block %u rc %d", i, brc);
            if (brc)
                continue;
            FUZZ_CHECK(out.cap >= bl[i].raw_len, "short block buffer");
            /* Exactly sized copy: walk its batches as a reader would. */
            uint8_t *raw = malloc(bl[i].raw_len);
            FUZZ_CHECK(raw != NULL, "oom");
            memcpy(raw, out.p, bl[i].raw_len);
            uint64_t pos = 0;
            while (pos < bl[i].raw_len) {
                batch_header h;
                if (batch_verify(raw + pos, bl[i].raw_len - pos, &h))
                    break;
                size_t rp = 0;
                rec_view r;
                while (batch_next_record(raw + pos, &h, &rp, &r) == 0)
                    ;
                pos += h.length;
            }
            free(raw);
        }
        rbuf_free(&out);
        free(bl);
    }
    io->close(f);
    unlink(path);
    return 0;
}
