/*
 * replay_main.c — runs corpus files through a fuzz target without libFuzzer,
 * so that `make test` replays every committed input (SQLite's fuzzcheck).
 *
 *   replay-<target> [-v] [FILE_OR_DIR...]
 *
 * The target's name comes from the program name (replay-<target>); with no
 * path it replays fuzz/corpus/<target>/ (relative to the working directory,
 * the repository root under scripts/run-tests.sh). LLVMFuzzerInitialize runs
 * once in this process if the target defines it; each file then runs in a
 * forked child, so that one abort or sanitizer report does not stop the
 * rest, with a time limit (REPLAY_TIMEOUT_S). A file passes when
 * LLVMFuzzerTestOneInput returns and the child exits 0 (sanitizer leak
 * checks included). Prints a line for each failure (each file with -v), one
 * line for the target, and last "N passed, N failed".
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define REPLAY_TIMEOUT_S 60

/* Weak: targets without set-up do not define it. */
extern int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

typedef struct list {
    char **v;
    size_t n, cap;
} list;

static void push(list *l, const char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v)
            abort();
    }
    l->v[l->n++] = strdup(s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Files of a directory (not recursive, no dot files), or the path itself.
 * Returns -1 if path does not exist. */
static int collect(list *l, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        push(l, path);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    size_t first = l->n;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            push(l, p);
    }
    closedir(d);
    qsort(l->v + first, l->n - first, sizeof *l->v, cmp_str);
    return 0;
}

static int run_one(const char *path)
{
    uint8_t *data;
    size_t len;
    if (fuzz_read_file(path, &data, &len) != 0) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        return 1;
    }
    /* An exactly sized copy, as libFuzzer passes it, so that a read one byte
     * past the input is caught by ASan. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact)
        abort();
    memcpy(exact, data, len);
    free(data);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

int main(int argc, char **argv)
{
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    const char *target = strncmp(base, "replay-", 7) == 0 ? base + 7 : base;
    int verbose = 0;
    list files = {0};
    int missing = 0, npaths = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-v")) {
            verbose = 1;
            continue;
        }
        npaths++;
        if (collect(&files, argv[i]) != 0) {
            fprintf(stderr, "replay %s: no such file or directory: %s\n",
                    target, argv[i]);
            missing++;
        }
    }
    if (npaths == 0) {
        char dir[4096];
        snprintf(dir, sizeof dir, "fuzz/corpus/%s", target);
        if (collect(&files, dir) != 0) {
            fprintf(stderr, "replay %s: no corpus directory %s\n", target, dir);
            missing++;
        }
    }

    if (LLVMFuzzerInitialize) {
        int ac = 1;
        char **av = argv;
        LLVMFuzzerInitialize(&ac, &av);
    }
    fflush(stdout);
    fflush(stderr);

    int passed = 0, failed = missing;
    for (size_t i = 0; i < files.n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            failed++;
            continue;
        }
        if (pid == 0) {
            alarm(REPLAY_TIMEOUT_S);
            exit(run_one(files.v[i]));
        }
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (ok) {
            passed++;
            if (verbose)
                printf("ok   %s %s\n", target, files.v[i]);
        } else {
            failed++;
            if (WIFSIGNALED(st))
                printf("FAIL %s %s: killed by signal %d%s\n", target,
                       files.v[i], WTERMSIG(st),
                       WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
            else
                printf("FAIL %s %s: exit status %d\n", target, files.v[i],
                       WEXITSTATUS(st));
        }
        fflush(stdout);
    }
    printf("replay %s: %zu corpus files\n", target, files.n);
    printf("%d passed, %d failed\n", passed, failed);
    for (size_t i = 0; i < files.n; i++)
        free(files.v[i]);
    free(files.v);
    return failed ? 1 : 0;
}
