/*
 * manifest.c — fuzz target: arbitrary bytes as DIR/MANIFEST, through
 * log_open (manifest_read in engine/log.c).
 *
 * Input: byte 0 is a mode, byte 1 the shard count asked for in
 * log_options.shards (0: whatever the manifest says), the rest the file.
 *   mode bit 0: the rest is the manifest's text without its checksum line;
 *               the target appends "checksum <XXH3 of the text>\n", so the
 *               fuzzer explores the key/value parsing behind the checksum.
 *
 * Properties checked:
 *  - a read-only open returns 0 or CL_EMANIFEST, nothing else;
 *  - when it accepts, the file is what the format says: a "checksum " line
 *    whose 16 hex digits are the XXH3-64 of every byte before it, a text
 *    starting "chatlog-manifest 1" with "shards N", 1 <= N <= 1024, N the
 *    log's shard count and equal to the count asked for (if any);
 *  - a read-write open of the same directory gives the same answer; when it
 *    fails it leaves the MANIFEST byte for byte as it was (a bad manifest is
 *    never "repaired" by overwriting it); when it succeeds (N <= 4, to keep
 *    inputs fast) the log opens, closes cleanly and the file is unchanged.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "common.h"
#include "errors.h"
#include "log.h"

static char dir[256], path[512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "%s/manifest", fuzz_tmp_dir());
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    return 0;
}

/* The shard count the file states, by a parser independent of the engine's
 * sscanf; 0 if the file does not look like an accepted manifest. *overflow
 * is set when the number does not fit 32 bits. */
static unsigned expect_shards(const uint8_t *f, size_t len, int *overflow)
{
    char *t = malloc(len + 1);
    FUZZ_CHECK(t != NULL, "oom");
    memcpy(t, f, len);
    t[len] = 0;
    unsigned result = 0;
    char *ck = strstr(t, "checksum ");
    char *sh = strstr(t, "shards");
    if (ck && sh && sh < ck && !strncmp(t, "chatlog-manifest", 16)) {
        unsigned long long want = strtoull(ck + 9, NULL, 16);
        const char *p = sh + 6;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '+')
            p++;
        unsigned long long v = 0;
        *overflow = 0;
        while (isdigit((unsigned char)*p)) {
            v = v * 10 + (unsigned)(*p++ - '0');
            if (v > UINT32_MAX) {
                *overflow = 1;
                v = UINT32_MAX;
            }
        }
        if (XXH3_64bits(t, (size_t)(ck - t)) == want)
            result = (unsigned)v;
    }
    free(t);
    return result;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (!dir[0])
        LLVMFuzzerInitialize(NULL, NULL);
    int add_checksum = data[0] & 1;
    uint32_t want = data[1];
    const uint8_t *text = data + 2;
    size_t tlen = size - 2;

    uint8_t *file = malloc(tlen + 32);
    FUZZ_CHECK(file != NULL, "oom");
    memcpy(file, text, tlen);
    size_t flen = tlen;
    if (add_checksum)
        flen += (size_t)snprintf((char *)file + tlen, 32, "checksum %016llx\n",
                                 (unsigned long long)XXH3_64bits(text, tlen));

    fuzz_rm_rf(dir);
    FUZZ_CHECK(mkdir(dir, 0700) == 0, "mkdir %s", dir);
    FUZZ_CHECK(fuzz_write_file(path, file, flen) == 0, "write");

    log_options o = {.read_only = 1, .shards = want, .log_fn = fuzz_quiet_log,
                     .io = fuzz_nosync_vfs()};
    log_t *log = NULL;
    int rc = log_open(dir, &o, &log);
    FUZZ_CHECK(rc == 0 || rc == CL_EMANIFEST, "read-only open: %d", rc);
    uint32_t n = 0;
    if (rc == 0) {
        n = log_shard_count(log);
        FUZZ_CHECK(log_close(log) == 0, "close");
        FUZZ_CHECK(n >= 1 && n <= LOG_MAX_SHARDS, "shards %u", n);
        FUZZ_CHECK(want == 0 || want == n, "asked %u, got %u", want, n);
        int overflow = 0;
        unsigned e = expect_shards(file, flen, &overflow);
        FUZZ_CHECK(e == n && !overflow, "accepted with %u shards; the file says %u%s",
                   n, e, overflow ? " (or more)" : "");
    }

    if (rc != 0 || n <= 4) {
        o.read_only = 0;
        int rc2 = log_open(dir, &o, &log);
        FUZZ_CHECK(rc2 == rc, "read-write open %d, read-only %d", rc2, rc);
        if (rc2 == 0)
            FUZZ_CHECK(log_close(log) == 0, "close");
        uint8_t *after;
        size_t alen;
        FUZZ_CHECK(fuzz_read_file(path, &after, &alen) == 0, "MANIFEST gone");
        FUZZ_CHECK(alen == flen && memcmp(after, file, flen) == 0,
                   "open rewrote the MANIFEST");
        free(after);
    }
    free(file);
    fuzz_rm_rf(dir);
    return 0;
}
