/*
 * common.h — helpers shared by the fuzz targets in fuzz/ and by the corpus
 * replay driver (fuzz/replay_main.c).
 *
 * Every target is one file fuzz/<target>.c defining LLVMFuzzerTestOneInput
 * (and, if it needs set-up, LLVMFuzzerInitialize). The same file is linked
 * two ways (fuzz/fuzz.mk): with clang and libFuzzer for fuzzing, and with
 * the build directory's compiler and replay_main.c for `make test`, which
 * replays fuzz/corpus/<target>/ — so nothing here may depend on libFuzzer.
 *
 * A property violation calls FUZZ_CHECK, which prints what was expected and
 * aborts: libFuzzer saves the input, the replay counts the file as failed.
 */
#ifndef CHATLOG_FUZZ_COMMON_H
#define CHATLOG_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt,
               ...) __attribute__((noreturn, format(printf, 4, 5)));

/* Abort with a message when a property does not hold. Never compiled out. */
#define FUZZ_CHECK(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond))                                                           \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                 \
    } while (0)

/* io_posix() with fdatasync and directory fsync turned into no-ops:
 * durability is not what the targets test, and a sync costs milliseconds. */
io_vfs *fuzz_nosync_vfs(void);

/* A directory private to this process, /tmp/chatlog-fuzz-<pid>, created on
 * first use and removed at exit by the process that created it. Forked replay
 * children inherit it (they run one at a time) and leave it alone. */
const char *fuzz_tmp_dir(void);

/* Remove a file or a directory tree (any depth). Missing is not an error. */
void fuzz_rm_rf(const char *path);
/* Copy the directory tree from into to (created). Returns 0 or -errno. */
int fuzz_copy_tree(const char *from, const char *to);
/* Whole file into a malloc'd buffer (caller frees; *len may be 0).
 * Returns 0 or -errno. */
int fuzz_read_file(const char *path, uint8_t **out, size_t *len);
/* Create or replace path with p[0..len). Returns 0 or -errno. */
int fuzz_write_file(const char *path, const void *p, size_t len);

/* True when FUZZ_NO_WORKAROUNDS is set: the targets then stop stepping
 * around open engine findings (docs/fuzzing.md), so that their reproducers
 * in fuzz/crashes/ fail again. */
int fuzz_no_workarounds(void);

/* A log_options.log_fn that drops every message. */
void fuzz_quiet_log(void *arg, int level, const char *msg);

/* Little-endian readers for fuzz input bytes past the end read as 0. */
uint32_t fuzz_u32(const uint8_t *p, size_t len);

/* splitmix64: deterministic pseudo-random bytes for bodies and keys. */
uint64_t fuzz_rand(uint64_t *state);
void fuzz_fill(uint64_t seed, uint8_t *p, size_t len);

#endif
