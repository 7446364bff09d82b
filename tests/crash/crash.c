/*
 * crash.c — the SIGKILL crash test (build/tests/crash).
 *
 *   crash harness [--rounds N] [--seed S]
 *   crash writer DIR SIDEFILE SEED
 *
 * The harness runs N rounds (default 30) against one data directory in a
 * fresh temporary directory. Each round it starts this binary as a writer,
 * lets it append for a random 20–300 ms, kills it with SIGKILL, then opens
 * the log itself (which runs recovery) and checks:
 *   - every append the writer saw acknowledged (status 0) is there, with the
 *     same body (XXH3-64 of the bytes);
 *   - each conversation's messages are exactly msg_ids 1..last, no gap, no
 *     repeat, read forward in pages with log_read_conv(LOG_AFTER), and
 *     log_conv_last_msg_id() agrees;
 *   - nothing goes backwards across rounds: a message seen in one round is
 *     there with the same body in every later round, and a new writer's acks
 *     continue each sequence after what the previous check saw;
 *   - recovery found nothing but torn tails (no damage fenced off) and
 *     log_close() returns 0;
 *   - the offline verifier (rcv_verify) finds the closed directory clean.
 * It prints one line per round and ends with "N passed, N failed" (rounds),
 * exiting non-zero on any failure. The temporary directory is removed when
 * every round passed and kept (its path is printed) otherwise. A hard
 * timeout (HARD_TIMEOUT_S) bounds the whole run.
 *
 * Why a side file: the writer appends "conv_id msg_id hash" to SIDEFILE from
 * the append callback, after status 0, with one write() per line. SIGKILL
 * does not lose what write() put in the page cache, so the harness knows
 * exactly which appends were acknowledged before the kill. An append that
 * reached the disk but whose ack line did not is fine: acked ⊆ durable.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "errors.h"
#include "log.h"
#include "verify.h"

#define NCONV 50              /* conversations 1..NCONV */
#define NPRODUCERS 8          /* writer threads appending */
#define INFLIGHT 8            /* appends each producer keeps in flight */
#define MAX_BODY 400          /* bodies are 1..MAX_BODY random bytes */
#define SEGMENT_BYTES (256u << 10)
#define DEFAULT_ROUNDS 30
#define HARD_TIMEOUT_S 120    /* the whole harness, hangs included */
#define SOFT_BUDGET_S 100     /* no new round starts after this */
#define READ_PAGE 256
#define MAX_REPORT 10         /* problem lines printed per round */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static log_options make_options(void)
{
    /* Default options but small segments, so that rolls, sealing and
     * compression happen within a round. The shard count is the default,
     * which the manifest keeps across rounds. */
    log_options o = {0};
    o.segment_bytes = SEGMENT_BYTES;
    o.fsync = LOG_FSYNC_ALWAYS;
    return o;
}

/* ================================ writer ================================ */

typedef struct producer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
    uint64_t rng;
    pthread_t th;
} producer;

typedef struct append_ctx {
    producer *p;
    uint64_t conv_id;
    uint64_t hash;
} append_ctx;

static log_t *w_log;
static int w_side_fd = -1;
static pthread_mutex_t w_side_mu = PTHREAD_MUTEX_INITIALIZER;

static void w_log_fn(void *arg, int level, const char *msg)
{
    (void)arg;
    if (level >= LOG_WARN)
        fprintf(stderr, "  writer: %s\n", msg);
}

static void w_append_cb(void *arg, int status, const log_append_result *res)
{
    append_ctx *c = arg;
    producer *p = c->p;
    if (status == 0) {
        char line[96];
        int n = snprintf(line, sizeof line, "%" PRIu64 " %" PRIu64 " %016" PRIx64 "\n",
                         c->conv_id, res->msg_id, c->hash);
        pthread_mutex_lock(&w_side_mu);
        ssize_t w = write(w_side_fd, line, (size_t)n);
        pthread_mutex_unlock(&w_side_mu);
        if (w != n) {
            /* The harness could not trust this round's side file. */
            fprintf(stderr, "  writer: side file write failed: %s\n",
                    strerror(errno));
            _exit(4);
        }
    } else {
        static int reported;
        if (!__atomic_exchange_n(&reported, 1, __ATOMIC_SEQ_CST))
            fprintf(stderr, "  writer: append failed: %s\n", cl_strerror(status));
    }
    free(c);
    pthread_mutex_lock(&p->mu);
    p->inflight--;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void *w_producer(void *arg)
{
    producer *p = arg;
    uint8_t body[MAX_BODY];
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->inflight >= INFLIGHT)
            pthread_cond_wait(&p->cv, &p->mu);
        p->inflight++;
        pthread_mutex_unlock(&p->mu);

        uint64_t conv_id = 1 + splitmix(&p->rng) % NCONV;
        uint32_t len = 1 + (uint32_t)(splitmix(&p->rng) % MAX_BODY);
        for (uint32_t i = 0; i < len; i += 8) {
            uint64_t r = splitmix(&p->rng);
            memcpy(body + i, &r, len - i < 8 ? len - i : 8);
        }
        append_ctx *c = malloc(sizeof *c);
        if (!c)
            _exit(5);
        *c = (append_ctx){p, conv_id, XXH3_64bits(body, len)};
        rec_view r = {.type = REC_MESSAGE, .conv_id = conv_id,
                      .sender_id = conv_id * 1000 + 7, .body = body,
                      .body_len = len};
        int rc;
        while ((rc = log_append(w_log, &r, w_append_cb, c)) == CL_EBUSY)
            usleep(1000);
        if (rc) {
            fprintf(stderr, "  writer: log_append: %s\n", cl_strerror(rc));
            _exit(3);
        }
    }
    return NULL;
}

static int writer_main(const char *dir, const char *side, uint64_t seed)
{
    w_side_fd = open(side, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (w_side_fd < 0) {
        fprintf(stderr, "  writer: %s: %s\n", side, strerror(errno));
        return 2;
    }
    log_options o = make_options();
    o.log_fn = w_log_fn;
    int rc = log_open(dir, &o, &w_log);
    if (rc) {
        fprintf(stderr, "  writer: log_open: %s\n", cl_strerror(rc));
        return 2;
    }
    static producer ps[NPRODUCERS];
    for (int i = 0; i < NPRODUCERS; i++) {
        pthread_mutex_init(&ps[i].mu, NULL);
        pthread_cond_init(&ps[i].cv, NULL);
        ps[i].rng = seed * 1000003u + (uint64_t)i;
        if (pthread_create(&ps[i].th, NULL, w_producer, &ps[i])) {
            fprintf(stderr, "  writer: pthread_create failed\n");
            return 2;
        }
    }
    /* Runs until killed. */
    for (;;)
        pause();
}

/* ================================ harness =============================== */

typedef struct msg_state {
    uint64_t hash;   /* body hash seen by a read, or acked */
    uint8_t seen;    /* read back in some round: must stay */
    uint8_t acked;   /* acknowledged to the writer */
} msg_state;

typedef struct conv_state {
    msg_state *m; /* m[msg_id] */
    size_t cap;
    uint64_t last; /* last msg_id the previous check saw */
} conv_state;

static conv_state convs[NCONV + 1];

typedef struct round_report {
    int problems;
    uint64_t acked_new;
    uint64_t torn_tails;
    uint64_t torn_bytes;
    uint64_t messages;
    int engine_errors;
} round_report;

static round_report *cur_report;

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void problem(const char *fmt, ...)
{
    if (++cur_report->problems > MAX_REPORT)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("    ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
}

static msg_state *msg_at(uint64_t conv_id, uint64_t msg_id)
{
    conv_state *c = &convs[conv_id];
    if (msg_id >= c->cap) {
        size_t cap = c->cap ? c->cap : 1024;
        while (cap <= msg_id)
            cap *= 2;
        msg_state *m = realloc(c->m, cap * sizeof *m);
        if (!m) {
            fprintf(stderr, "crash: out of memory\n");
            exit(2);
        }
        memset(m + c->cap, 0, (cap - c->cap) * sizeof *m);
        c->m = m;
        c->cap = cap;
    }
    return &c->m[msg_id];
}

/* Read the side file from *pos: every complete line is an ack. A partial
 * last line (none is expected: one write() per line) is cut off so that the
 * next writer's lines start clean. */
static void read_acks(const char *side, off_t *pos, round_report *r)
{
    int fd = open(side, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            problem("side file %s: %s", side, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) || st.st_size < *pos) {
        problem("side file shrank");
        close(fd);
        return;
    }
    size_t len = (size_t)(st.st_size - *pos);
    char *buf = malloc(len + 1);
    if (!buf || pread(fd, buf, len, *pos) != (ssize_t)len) {
        problem("side file: cannot read");
        free(buf);
        close(fd);
        return;
    }
    buf[len] = 0;
    size_t i = 0;
    while (i < len) {
        char *nl = memchr(buf + i, '\n', len - i);
        if (!nl) {
            problem("side file: partial last line cut (%zu bytes)", len - i);
            if (ftruncate(fd, *pos + (off_t)i))
                problem("side file: ftruncate: %s", strerror(errno));
            break;
        }
        *nl = 0;
        unsigned long long conv_id, msg_id, hash;
        if (sscanf(buf + i, "%llu %llu %llx", &conv_id, &msg_id, &hash) != 3 ||
            conv_id < 1 || conv_id > NCONV || msg_id == 0) {
            problem("side file: bad line \"%s\"", buf + i);
        } else if (msg_id <= convs[conv_id].last) {
            /* The writer started after the last check saw `last`: its acks
             * must continue the sequence, never reuse an id. */
            problem("conv %llu: writer acked msg_id %llu again (the log "
                    "already had 1..%" PRIu64 ")",
                    conv_id, msg_id, convs[conv_id].last);
        } else {
            msg_state *m = msg_at(conv_id, msg_id);
            if (m->acked && m->hash != hash)
                problem("conv %llu: msg_id %llu acked twice with different "
                        "bodies", conv_id, msg_id);
            m->acked = 1;
            m->hash = hash;
            r->acked_new++;
        }
        i = (size_t)(nl - buf) + 1;
    }
    *pos += (off_t)i;
    free(buf);
    close(fd);
}

static void h_log_fn(void *arg, int level, const char *msg)
{
    (void)arg;
    if (level >= LOG_ERROR) {
        cur_report->engine_errors++;
        problem("engine error: %s", msg);
    } else if (level >= LOG_WARN) {
        printf("    engine warning: %s\n", msg);
    }
}

static void h_damage_cb(void *arg, const log_damage *d)
{
    round_report *r = arg;
    if (d->torn_tail) {
        r->torn_tails++;
        r->torn_bytes += d->bytes;
        return;
    }
    problem("damage in shard %u segment %020" PRIu64 " at byte %" PRIu64
            " (%" PRIu64 " bytes): %s",
            d->shard, d->seg_base, d->file_pos, d->bytes, cl_strerror(d->err));
}

/* Read conversation c forward in pages and check it against what we know. */
static void check_conv(log_t *log, uint64_t c, round_report *r)
{
    conv_state *cs = &convs[c];
    uint64_t after = 0;
    int more = 1;
    while (more) {
        log_result res = {0};
        more = 0;
        int rc = log_read_conv(log, c, after, LOG_AFTER, READ_PAGE, &res, &more);
        if (rc) {
            problem("conv %" PRIu64 ": log_read_conv after %" PRIu64 ": %s", c,
                    after, cl_strerror(rc));
            log_result_free(&res);
            return;
        }
        if (more && res.n == 0) {
            problem("conv %" PRIu64 ": empty page but more=1 after %" PRIu64, c,
                    after);
            log_result_free(&res);
            return;
        }
        for (size_t i = 0; i < res.n; i++) {
            const rec_view *rec = &res.entries[i].rec;
            if (rec->conv_id != c || rec->type != REC_MESSAGE) {
                problem("conv %" PRIu64 ": read a record of conv %" PRIu64
                        " type %u", c, rec->conv_id, rec->type);
                log_result_free(&res);
                return;
            }
            if (rec->msg_id != after + 1) {
                problem("conv %" PRIu64 ": msg_id %" PRIu64 " follows %" PRIu64
                        " (gap or repeat)", c, rec->msg_id, after);
                log_result_free(&res);
                return;
            }
            after = rec->msg_id;
            uint64_t h = XXH3_64bits(rec->body, rec->body_len);
            msg_state *m = msg_at(c, after);
            if ((m->seen || m->acked) && m->hash != h)
                problem("conv %" PRIu64 " msg_id %" PRIu64 ": body changed "
                        "(%s): hash %016" PRIx64 ", expected %016" PRIx64,
                        c, after, m->acked ? "acked" : "seen before", h, m->hash);
            m->hash = h;
            m->seen = 1;
            r->messages++;
        }
        log_result_free(&res);
    }
    uint64_t last = after;
    if (last < cs->last)
        problem("conv %" PRIu64 ": went backwards: %" PRIu64 " messages, an "
                "earlier round saw %" PRIu64, c, last, cs->last);
    uint64_t lm = log_conv_last_msg_id(log, c);
    if (lm != last)
        problem("conv %" PRIu64 ": log_conv_last_msg_id says %" PRIu64
                ", reading found %" PRIu64, c, lm, last);
    for (uint64_t id = last + 1; id < cs->cap; id++)
        if (cs->m[id].acked) {
            problem("conv %" PRIu64 ": acked msg_id %" PRIu64 " is missing "
                    "(the log ends at %" PRIu64 ")", c, id, last);
            break;
        }
    if (last > cs->last)
        cs->last = last;
}

static void check_round(const char *dir, round_report *r)
{
    log_t *log;
    log_options o = make_options();
    o.log_fn = h_log_fn;
    int rc = log_open(dir, &o, &log);
    if (rc) {
        problem("log_open: %s", cl_strerror(rc));
        return;
    }
    log_damage_each(log, h_damage_cb, r);
    for (uint64_t c = 1; c <= NCONV; c++)
        check_conv(log, c, r);
    if ((rc = log_close(log)))
        problem("log_close: %s", cl_strerror(rc));

    char *rep = NULL;
    size_t replen = 0;
    FILE *f = open_memstream(&rep, &replen);
    if (!f) {
        problem("open_memstream failed");
        return;
    }
    rc = rcv_verify(dir, f);
    fclose(f);
    if (rc != 0) {
        problem("rcv_verify returned %d%s", rc, rc < 0 ? "" : " (problems found)");
        if (rep && *rep)
            printf("%s", rep);
    }
    free(rep);
}

static volatile sig_atomic_t h_child;
static volatile sig_atomic_t h_passed, h_rounds;

static void put_num(char **p, long v)
{
    char tmp[24];
    int n = 0;
    if (v == 0)
        tmp[n++] = '0';
    while (v > 0) {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    }
    while (n)
        *(*p)++ = tmp[--n];
}

/* SIGALRM: something hung. Kill the writer, report, exit — with
 * async-signal-safe calls only. */
static void h_timeout(int sig)
{
    (void)sig;
    if (h_child > 0)
        kill(h_child, SIGKILL);
    char msg[128], *p = msg;
    const char *t = "crash: hard timeout, giving up\n";
    while (*t)
        *p++ = *t++;
    put_num(&p, h_passed);
    t = " passed, ";
    while (*t)
        *p++ = *t++;
    put_num(&p, h_rounds - h_passed);
    t = " failed\n";
    while (*t)
        *p++ = *t++;
    ssize_t w = write(1, msg, (size_t)(p - msg));
    (void)w;
    _exit(1);
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int harness_main(int rounds, uint64_t seed)
{
    h_rounds = rounds;
    signal(SIGALRM, h_timeout);
    alarm(HARD_TIMEOUT_S);

    const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char root[4096], dir[4200], side[4200];
    snprintf(root, sizeof root, "%s/chatlog-crash-XXXXXX", tmpdir);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s/data", root);
    snprintf(side, sizeof side, "%s/acked.txt", root);
    printf("crash: %d rounds, seed %" PRIu64 ", dir %s\n", rounds, seed, root);
    fflush(stdout);

    uint64_t rng = seed;
    off_t side_pos = 0;
    int passed = 0, failed = 0;
    uint64_t acked_total = 0;
    double t0 = now_s();
    for (int round = 1; round <= rounds; round++) {
        if (now_s() - t0 > SOFT_BUDGET_S) {
            printf("round %d: FAIL time budget of %d s used up; %d rounds not "
                   "run\n", round, SOFT_BUDGET_S, rounds - round + 1);
            failed += rounds - round + 1;
            break;
        }
        round_report r = {0};
        cur_report = &r;
        char seedarg[32];
        uint64_t wseed = seed * 7919 + (uint64_t)round;
        snprintf(seedarg, sizeof seedarg, "%" PRIu64, wseed);
        int kill_ms = 20 + (int)(splitmix(&rng) % 281);
        fflush(stdout);
        fflush(stderr);
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            /* The writer must not outlive a harness that dies. */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            execl("/proc/self/exe", "crash", "writer", dir, side, seedarg,
                  (char *)NULL);
            fprintf(stderr, "crash: exec /proc/self/exe: %s\n", strerror(errno));
            _exit(127);
        }
        h_child = pid;
        usleep((useconds_t)kill_ms * 1000);
        kill(pid, SIGKILL);
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        h_child = 0;
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
            problem("writer ended by itself before the kill (%s %d)",
                    WIFEXITED(st) ? "exit" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));

        read_acks(side, &side_pos, &r);
        acked_total += r.acked_new;
        check_round(dir, &r);

        if (r.problems == 0) {
            passed++;
            h_passed = passed;
            printf("round %d: ok   killed at %d ms, %" PRIu64 " new acks (%" PRIu64
                   " total), %" PRIu64 " messages, %" PRIu64 " torn tails cut "
                   "(%" PRIu64 " bytes)\n",
                   round, kill_ms, r.acked_new, acked_total, r.messages,
                   r.torn_tails, r.torn_bytes);
        } else {
            failed++;
            printf("round %d: FAIL killed at %d ms, %d problems (writer seed %"
                   PRIu64 ")\n", round, kill_ms, r.problems, wseed);
        }
        fflush(stdout);
    }
    alarm(0);
    if (acked_total == 0 && failed == 0) {
        /* Every round killed the writer before its first ack: nothing was
         * tested. */
        printf("crash: FAIL no append was acked in any round\n");
        failed++;
        passed = passed > 0 ? passed - 1 : 0;
    }
    if (failed == 0)
        nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    else
        printf("crash: data kept in %s\n", root);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: crash harness [--rounds N] [--seed S]\n"
            "       crash writer DIR SIDEFILE SEED\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "writer")) {
        if (argc != 5)
            return usage();
        return writer_main(argv[2], argv[3], strtoull(argv[4], NULL, 0));
    }
    if (argc >= 2 && !strcmp(argv[1], "harness")) {
        int rounds = DEFAULT_ROUNDS;
        uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
                rounds = atoi(argv[++i]);
            else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
                seed = strtoull(argv[++i], NULL, 0);
            else
                return usage();
        }
        if (rounds < 1)
            return usage();
        setvbuf(stdout, NULL, _IOLBF, 0);
        return harness_main(rounds, seed);
    }
    return usage();
}
