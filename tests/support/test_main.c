/*
 * test_main.c — runs the tests registered with TEST(). Each test runs in a
 * forked child so that a crash or sanitizer abort fails that test only and
 * the others still run; the parent prints one line per test and the summary
 * line "N passed, N failed".
 */
#include "test.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct test_case {
    const char *name;
    const char *file;
    test_fn fn;
};

static struct test_case tests[1024];
static int ntests;
static char cur_dir[4096];
static char path_slots[4][4096];

void test_register(const char *name, const char *file, test_fn fn)
{
    if (ntests < (int)(sizeof tests / sizeof tests[0]))
        tests[ntests++] = (struct test_case){name, file, fn};
}

void test_fail_(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "  %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (seed %" PRIu64 ")\n", test_seed());
    fflush(stdout);
    fflush(stderr);
    _exit(1);
}

const char *test_dir(void) { return cur_dir; }

const char *test_path(int slot, const char *name)
{
    snprintf(path_slots[slot & 3], sizeof path_slots[0], "%s/%s", cur_dir, name);
    return path_slots[slot & 3];
}

uint64_t test_seed(void)
{
    const char *s = getenv("TEST_SEED");
    return s ? strtoull(s, NULL, 0) : 20261129;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    int passed = 0, failed = 0;
    for (int i = 0; i < ntests; i++) {
        if (filter && !strstr(tests[i].name, filter))
            continue;
        snprintf(cur_dir, sizeof cur_dir, "%s/chatlog-test-XXXXXX", tmp);
        if (!mkdtemp(cur_dir)) {
            perror("mkdtemp");
            return 2;
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            tests[i].fn();
            fflush(stdout);
            exit(0); /* not _exit: LeakSanitizer checks at exit */
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (ok) {
            passed++;
            printf("ok   %s (%.0f ms)\n", tests[i].name, ms);
            nftw(cur_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
        } else {
            failed++;
            if (WIFSIGNALED(st))
                printf("FAIL %s (signal %d; data kept in %s)\n", tests[i].name,
                       WTERMSIG(st), cur_dir);
            else
                printf("FAIL %s (data kept in %s)\n", tests[i].name, cur_dir);
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
