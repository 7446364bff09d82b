/*
 * sidecar.c — fuzz target: arbitrary bytes as a sidecar index (<base>.idx),
 * through sidecar_load (engine/segment.c).
 *
 * Input: byte 0 is a mode, the rest is the file.
 *   bits 0-1: 0  the file as given;
 *             1  the trailing XXH3 recomputed over the rest, so the fuzzer
 *                gets past the checksum;
 *             2  the rest is a 56-byte header followed by PLAIN 24-byte
 *                entries: the target compresses them into one zstd frame,
 *                sets payload_len and appends the checksum, so the fuzzer
 *                reaches the per-entry rules directly;
 *             3  as 1.
 *   bit 2:    the segment the sidecar is checked against (shard, base, end,
 *             raw_size) is a fixed one instead of the file's own header
 *             fields, which would otherwise make the header match by
 *             construction. raw_size taken from the header is capped at
 *             SIDE_FUZZ_MAX_RAW: a real caller passes the size of a real
 *             segment, and what sidecar_load allocates is proportional to it.
 *
 * Properties checked: no crash or out-of-bounds read; the result is 0,
 * CL_ECORRUPT or CL_ETRUNC; an accepted sidecar is consistent with the
 * segment it was checked against (n == end - base, n <= raw_size / 44, every
 * entry's batch position < raw_size, type in range, rec_idx < 4096), and it
 * round-trips: sidecar_write of the loaded entries, loaded again, gives the
 * same entries.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>
#include <zstd.h>

#include "common.h"
#include "errors.h"
#include "internal.h"
#include "util.h"

#define SIDE_HEADER 56
#define SIDE_ENTRY 24
#define SIDE_FUZZ_MAX_RAW (1u << 20)

static char dir[256], path[512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "%s/sidecar", fuzz_tmp_dir());
    fuzz_rm_rf(dir);
    FUZZ_CHECK(mkdir(dir, 0700) == 0, "mkdir %s", dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!dir[0])
        LLVMFuzzerInitialize(NULL, NULL);
    int mode = data[0] & 3, fixed = data[0] & 4;
    const uint8_t *in = data + 1;
    size_t inlen = size - 1;

    uint8_t *file = NULL;
    size_t flen = 0;
    if (mode == 2) {
        if (inlen < SIDE_HEADER)
            return 0;
        size_t plain = inlen - SIDE_HEADER;
        size_t bound = ZSTD_compressBound(plain);
        file = malloc(SIDE_HEADER + bound + 8);
        FUZZ_CHECK(file != NULL, "oom");
        memcpy(file, in, SIDE_HEADER);
        size_t c = ZSTD_compress(file + SIDE_HEADER, bound, in + SIDE_HEADER,
                                 plain, 1);
        FUZZ_CHECK(!ZSTD_isError(c), "compress");
        put_u64(file + 48, c);
        flen = SIDE_HEADER + c + 8;
        put_u64(file + flen - 8, XXH3_64bits(file, flen - 8));
    } else {
        file = malloc(inlen ? inlen : 1);
        FUZZ_CHECK(file != NULL, "oom");
        memcpy(file, in, inlen);
        flen = inlen;
        if (mode != 0 && flen >= 8)
            put_u64(file + flen - 8, XXH3_64bits(file, flen - 8));
    }

    uint32_t shard_id = 3;
    uint64_t base = 1000, end = 1010, raw_size = 4096;
    if (!fixed && flen >= SIDE_HEADER) {
        shard_id = get_u32(file + 8);
        base = get_u64(file + 16);
        end = get_u64(file + 24);
        raw_size = get_u64(file + 32);
        if (raw_size > SIDE_FUZZ_MAX_RAW)
            raw_size = SIDE_FUZZ_MAX_RAW;
    }

    snprintf(path, sizeof path, "%s/%020llu.idx", dir, (unsigned long long)base);
    FUZZ_CHECK(fuzz_write_file(path, file, flen) == 0, "write %s", path);
    free(file);

    io_vfs *io = fuzz_nosync_vfs();
    side_ent *ents = NULL;
    uint64_t n = 0;
    int rc = sidecar_load(io, path, shard_id, base, end, raw_size, &ents, &n);
    FUZZ_CHECK(rc == 0 || rc == CL_ECORRUPT || rc == CL_ETRUNC, "rc %d", rc);
    if (rc == 0) {
        FUZZ_CHECK(end >= base && n == end - base, "n %llu for [%llu, %llu)",
                   (unsigned long long)n, (unsigned long long)base,
                   (unsigned long long)end);
        FUZZ_CHECK(n <= raw_size / RECORD_HEADER_SIZE, "n %llu raw_size %llu",
                   (unsigned long long)n, (unsigned long long)raw_size);
        FUZZ_CHECK(ents != NULL, "no entries array");
        for (uint64_t i = 0; i < n; i++)
            FUZZ_CHECK(ents[i].pos < raw_size && ents[i].type >= 1 &&
                           ents[i].type <= REC_TYPE_MAX &&
                           ents[i].rec_idx < BATCH_MAX_RECORDS,
                       "entry %llu: pos %u type %u rec_idx %u",
                       (unsigned long long)i, ents[i].pos, ents[i].type,
                       ents[i].rec_idx);

        /* Round trip through the writer. */
        seg sg = {.base = base, .end = end, .raw_size = raw_size};
        uint64_t side_bytes = 0;
        fuzz_rm_rf(path);
        FUZZ_CHECK(sidecar_write(io, dir, shard_id, &sg, ents, n, &side_bytes) == 0,
                   "sidecar_write");
        side_ent *again = NULL;
        uint64_t n2 = 0;
        rc = sidecar_load(io, path, shard_id, base, end, raw_size, &again, &n2);
        FUZZ_CHECK(rc == 0 && n2 == n, "reload rc %d n %llu", rc,
                   (unsigned long long)n2);
        for (uint64_t i = 0; i < n; i++)
            FUZZ_CHECK(again[i].conv_id == ents[i].conv_id &&
                           again[i].msg_id == ents[i].msg_id &&
                           again[i].pos == ents[i].pos &&
                           again[i].rec_idx == ents[i].rec_idx &&
                           again[i].type == ents[i].type,
                       "entry %llu differs after round trip", (unsigned long long)i);
        free(again);
        free(ents);
    }
    fuzz_rm_rf(path);
    return 0;
}
