/*
 * engine_bench.c — durable append throughput and latency of the engine, side
 * by side with the raw write + fdatasync limit of the same machine, measured
 * in the same run on the same file system.
 *
 * WHAT IS MEASURED. A "producer" is a closed loop: it appends one REC_MESSAGE
 * with a 100-byte body (a packed MessageBody; 144 bytes as a record), waits
 * for its callback, and appends the next. Every append uses the default
 * durability, LOG_FSYNC_ALWAYS: the callback means "fdatasync returned". Each
 * producer writes its own conversation. --mode says who issues the next
 * append:
 *   group  (default) a few event-loop threads ("drivers", one per CPU) own the
 *          producers, as a server's network threads own connections. A
 *          callback puts its producer on its driver's ready list; the last
 *          callback of a group (on_commit gave the group's size, and a group's
 *          callbacks run back to back after it) wakes the drivers, once per
 *          group. This is how a server should consume completions.
 *   each   the same drivers, but every callback wakes its driver if it is
 *          asleep: the naive consumer. Shows what per-append wake-ups cost
 *          the writer thread, on whose time callbacks run.
 *   chain  no drivers: the callback issues the producer's next append itself,
 *          on the writer thread. No thread is ever woken: the engine's ceiling.
 *
 * A case is a number of producers and a layout: "spread" picks conversation
 * ids so that producers are spread evenly over the shards (the natural state
 * of a busy server: conversations hash to shards); "one" puts every producer
 * on the same shard, so one writer thread and one file take the whole load.
 * Each case runs --warmup seconds unmeasured, then --seconds measured:
 *   msgs/s        appends acked during the window / window length;
 *   p50/p99       latency from the log_append() call to its callback;
 *   group         messages and bytes per group commit (one pwrite + one
 *                 fdatasync), counted through log_options.on_commit;
 *   index B/msg   log_shard_info.index_bytes / messages, all shards.
 *
 * THE RAW LIMIT. In the same run, in a directory next to the engine's, a plain
 * loop of pwrite + fdatasync appending to one file, with writes of the
 * engine's average group size for that case ("the same batch sizes"):
 * writes/s, bytes/s, the message rate it is worth (writes/s x messages per
 * group) and the latency of one write + fdatasync. The ratios printed are
 * engine / raw. Because the engine runs one writer per shard, and so up to
 * one fdatasync per active shard at a time, the same loop is also run with
 * one thread (and file) per active shard ("K loops"): the fair limit for a
 * layout with K shards in use.
 *
 * Virtual disks drift by tens of percent within a minute, so a case does not
 * measure the engine and then the raw loops once each: it alternates them in
 * --rounds rounds (the producers are parked and the log drained while the raw
 * loops run) and sums each side over the rounds.
 *
 * Output: a table, then one "RESULT key=value ..." line per case for
 * scripts/bench.sh. Usage: engine_bench --help.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "log.h"
#include "log.pb-c.h"

#define MAX_CASES 16

/* ---- time ---- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* ---- latency histogram ----
 * Log-linear buckets, 128 per power of two (under 1% wide): exact below
 * 128 ns.
 * Writer threads add to it concurrently, hence relaxed atomics. */
#define HIST_BITS 7
#define HIST_SUB (1u << HIST_BITS)
#define HIST_BUCKETS (HIST_SUB + 40 * HIST_SUB)

typedef struct hist {
    _Atomic uint64_t b[HIST_BUCKETS];
    _Atomic uint64_t n;
} hist;

static uint32_t hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (uint32_t)v;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* >= HIST_BITS */
    uint32_t i = HIST_SUB + (e - HIST_BITS) * HIST_SUB +
                 (uint32_t)((v >> (e - HIST_BITS)) & (HIST_SUB - 1));
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

/* Middle of bucket i. */
static double hist_value(uint32_t i)
{
    if (i < HIST_SUB)
        return i;
    uint32_t e = (i - HIST_SUB) / HIST_SUB + HIST_BITS, sub = (i - HIST_SUB) % HIST_SUB;
    double lo = (double)((uint64_t)(HIST_SUB + sub) << (e - HIST_BITS));
    return lo + (double)(1ull << (e - HIST_BITS)) / 2;
}

static void hist_add(hist *h, uint64_t v)
{
    atomic_fetch_add_explicit(&h->b[hist_index(v)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->n, 1, memory_order_relaxed);
}

/* The q-quantile (0..1) in the histogram's unit; 0 if empty. */
static double hist_quantile(hist *h, double q)
{
    uint64_t n = atomic_load(&h->n);
    if (!n)
        return 0;
    /* The smallest rank r with r >= q*n (no libm: the Makefile links none). */
    uint64_t rank = (uint64_t)(q * (double)n), acc = 0;
    if ((double)rank < q * (double)n)
        rank++;
    if (rank < 1)
        rank = 1;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        acc += atomic_load_explicit(&h->b[i], memory_order_relaxed);
        if (acc >= rank)
            return hist_value(i);
    }
    return hist_value(HIST_BUCKETS - 1);
}

/* ---- options ---- */

enum { MODE_GROUP = 0, MODE_EACH = 1, MODE_CHAIN = 2 };
enum { LAYOUT_SPREAD = 0, LAYOUT_ONE = 1 };

typedef struct bench_case {
    uint32_t producers;
    int layout;
} bench_case;

typedef struct opts {
    double seconds, warmup, raw_seconds;
    uint32_t rounds;
    const char *dir;
    uint32_t shards;
    uint32_t drivers; /* 0: one per CPU */
    uint32_t body_bytes;
    uint32_t max_wait_us; /* log_options.max_wait_us */
    int mode;
    int keep;
    int no_raw;
    bench_case cases[MAX_CASES];
    uint32_t ncases;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: engine_bench [options]\n"
            "  --seconds S      measured time per case (default 3)\n"
            "  --warmup S       unmeasured time before it (default 0.5)\n"
            "  --raw-seconds S  time of each raw write+fdatasync loop (default 1)\n"
            "  --rounds N       alternate engine and raw N times per case (default 3)\n"
            "  --cases LIST     comma-separated producers[:one|:spread]\n"
            "                   (default 1,16,256,256:one)\n"
            "  --shards N       shards of the log (default %u)\n"
            "  --mode group|each|chain  who issues a producer's next append:\n"
            "                   event-loop threads woken once per group (default) or\n"
            "                   by each callback, or the callback itself\n"
            "  --drivers N      event-loop threads (default: number of CPUs)\n"
            "  --body N         message body bytes (default 100)\n"
            "  --max-wait-us N  log_options.max_wait_us (default 0, the engine's)\n"
            "  --dir D          parent of the scratch directory (default $TMPDIR\n"
            "                   or /tmp); the scratch directory is removed at the end\n"
            "  --keep           keep the scratch directory\n"
            "  --no-raw         skip the raw baseline\n",
            LOG_DEFAULT_SHARDS);
}

static const char *mode_name(int mode)
{
    return mode == MODE_GROUP ? "group" : mode == MODE_EACH ? "each" : "chain";
}

static int parse_cases(const char *s, opts *o)
{
    o->ncases = 0;
    while (*s) {
        if (o->ncases == MAX_CASES)
            return -1;
        char *end;
        unsigned long p = strtoul(s, &end, 10);
        if (end == s || p == 0 || p > 100000)
            return -1;
        bench_case c = {(uint32_t)p, LAYOUT_SPREAD};
        s = end;
        if (strncmp(s, ":one", 4) == 0) {
            c.layout = LAYOUT_ONE;
            s += 4;
        } else if (strncmp(s, ":spread", 7) == 0) {
            s += 7;
        }
        o->cases[o->ncases++] = c;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return o->ncases ? 0 : -1;
}

static int parse_opts(int argc, char **argv, opts *o)
{
    *o = (opts){.seconds = 3,
                .warmup = 0.5,
                .raw_seconds = 1,
                .rounds = 3,
                .shards = LOG_DEFAULT_SHARDS,
                .body_bytes = 100};
    parse_cases("1,16,256,256:one", o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--keep")) {
            o->keep = 1;
        } else if (!strcmp(a, "--no-raw")) {
            o->no_raw = 1;
        } else if (!v) {
            return -1;
        } else if (!strcmp(a, "--seconds")) {
            o->seconds = atof(v), i++;
        } else if (!strcmp(a, "--warmup")) {
            o->warmup = atof(v), i++;
        } else if (!strcmp(a, "--raw-seconds")) {
            o->raw_seconds = atof(v), i++;
        } else if (!strcmp(a, "--rounds")) {
            o->rounds = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--cases")) {
            if (parse_cases(v, o))
                return -1;
            i++;
        } else if (!strcmp(a, "--shards")) {
            o->shards = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--drivers")) {
            o->drivers = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--max-wait-us")) {
            o->max_wait_us = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--body")) {
            o->body_bytes = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--dir")) {
            o->dir = v, i++;
        } else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "group"))
                o->mode = MODE_GROUP;
            else if (!strcmp(v, "each"))
                o->mode = MODE_EACH;
            else if (!strcmp(v, "chain"))
                o->mode = MODE_CHAIN;
            else
                return -1;
            i++;
        } else {
            return -1;
        }
    }
    if (o->seconds <= 0 || o->warmup < 0 || o->raw_seconds <= 0 || o->shards == 0 ||
        o->rounds == 0 || o->rounds > 100 || o->shards > LOG_MAX_SHARDS ||
        o->body_bytes < 8 || o->body_bytes > 65536)
        return -1;
    return 0;
}

/* ---- the raw limit ---- */

typedef struct raw_acc {
    uint32_t threads;
    uint32_t rounds;
    double secs;      /* wall time, summed over rounds */
    uint64_t writes;  /* write + fdatasync pairs, all threads */
    double bytes_sum; /* bytes per write, summed over rounds (for the mean) */
    uint64_t bytes;   /* bytes written */
    hist lat;         /* one write + fdatasync */
} raw_acc;

typedef struct raw_thread {
    char path[4200];
    size_t bytes;
    double seconds;
    hist *lat;
    uint64_t writes;
    int err;
    pthread_t th;
} raw_thread;

static void *raw_main(void *arg)
{
    raw_thread *t = arg;
    int fd = open(t->path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    uint8_t *buf = malloc(t->bytes);
    if (fd < 0 || !buf) {
        t->err = fd < 0 ? -errno : CL_ENOMEM;
        if (fd >= 0)
            close(fd);
        free(buf);
        return NULL;
    }
    /* Not zeros, in case the storage below compresses or deduplicates. */
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)t;
    for (size_t i = 0; i < t->bytes; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    uint64_t off = 0, end = mono_ns() + (uint64_t)(t->seconds * 1e9);
    for (;;) {
        uint64_t a = mono_ns();
        if (a >= end && t->writes >= 10)
            break;
        size_t done = 0;
        while (done < t->bytes) {
            ssize_t n = pwrite(fd, buf + done, t->bytes - done, (off_t)(off + done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                t->err = n < 0 ? -errno : -EIO;
                goto out;
            }
            done += (size_t)n;
        }
        if (fdatasync(fd)) {
            t->err = -errno;
            goto out;
        }
        hist_add(t->lat, mono_ns() - a);
        off += t->bytes;
        t->writes++;
        /* Start over at the engine's segment size, as the engine rolls to a
         * new segment there. */
        if (off + t->bytes > LOG_DEFAULT_SEGMENT_BYTES) {
            if (ftruncate(fd, 0)) {
                t->err = -errno;
                goto out;
            }
            off = 0;
        }
    }
out:
    close(fd);
    unlink(t->path);
    free(buf);
    return NULL;
}

/* threads loops of pwrite(bytes) + fdatasync, each on its own new file in
 * dir, for seconds; added to *acc. */
static int raw_run(const char *dir, size_t bytes, uint32_t threads, double seconds,
                   raw_acc *acc)
{
    raw_thread *t = calloc(threads, sizeof *t);
    if (!t)
        return CL_ENOMEM;
    uint64_t t0 = mono_ns();
    for (uint32_t i = 0; i < threads; i++) {
        snprintf(t[i].path, sizeof t[i].path, "%s/raw-%u", dir, i);
        t[i].bytes = bytes;
        t[i].seconds = seconds;
        t[i].lat = &acc->lat;
        if (pthread_create(&t[i].th, NULL, raw_main, &t[i]))
            t[i].err = CL_ENOMEM;
    }
    int err = 0;
    for (uint32_t i = 0; i < threads; i++) {
        if (t[i].err == 0)
            pthread_join(t[i].th, NULL);
        acc->writes += t[i].writes;
        acc->bytes += t[i].writes * bytes;
        if (t[i].err && !err)
            err = t[i].err;
    }
    acc->secs += (double)(mono_ns() - t0) / 1e9;
    acc->threads = threads;
    acc->rounds++;
    acc->bytes_sum += (double)bytes;
    free(t);
    return err;
}

/* ---- the engine run ---- */

enum { PHASE_RUN = 0, PHASE_MEASURE = 1, PHASE_PAUSE = 2, PHASE_STOP = 3 };

typedef struct run run;
typedef struct driver driver;

typedef struct producer {
    run *r;
    driver *d;
    uint32_t id;
    uint64_t conv_id;
    uint64_t t0; /* when its pending append was issued */
} producer;

/* An event loop: producers whose append completed wait in ready[] until the
 * driver issues their next one. In chain mode there is no thread, and ready[]
 * only parks producers while the log is paused. */
struct driver {
    run *r;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t *ready, *work; /* producer ids */
    uint32_t nready;
    int sleeping, paused, issuing, stop;
    pthread_t th;
    int started;
};

/* Commit counters of one shard, written by that shard's writer only. */
typedef struct shard_ctr {
    _Atomic uint64_t groups, msgs, bytes;
    uint64_t left; /* callbacks of the current group still to run */
    char pad[64 - 4 * sizeof(uint64_t)];
} shard_ctr;

typedef struct totals {
    uint64_t groups, msgs, bytes;
} totals;

struct run {
    log_t *log;
    int mode;
    _Atomic int phase;
    _Atomic uint64_t acked; /* acked inside measured windows */
    _Atomic uint64_t inflight;
    _Atomic uint64_t errors;
    _Atomic int first_error;
    hist lat;
    producer *prods;
    uint32_t nprods;
    driver *drivers;
    uint32_t ndrivers;
    uint8_t *body;
    uint32_t body_len;
    shard_ctr ctr[LOG_MAX_SHARDS];
};

static void note_error(run *r, int err)
{
    atomic_fetch_add(&r->errors, 1);
    int zero = 0;
    atomic_compare_exchange_strong(&r->first_error, &zero, err);
}

static void on_commit(void *arg, uint32_t shard, const log_entry *e, size_t n)
{
    run *r = arg;
    uint64_t bytes =
        (uint64_t)BATCH_OVERHEAD * ((n + BATCH_MAX_RECORDS - 1) / BATCH_MAX_RECORDS);
    for (size_t i = 0; i < n; i++)
        bytes += batch_record_size(e[i].rec.key_len, e[i].rec.body_len);
    shard_ctr *c = &r->ctr[shard];
    atomic_fetch_add_explicit(&c->groups, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->msgs, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->bytes, bytes, memory_order_relaxed);
    c->left = n;
}

/* Group mode: wake the drivers that have work, once per group. */
static void wake_drivers(run *r)
{
    for (uint32_t i = 0; i < r->ndrivers; i++) {
        driver *d = &r->drivers[i];
        pthread_mutex_lock(&d->mu);
        if (d->sleeping && d->nready && !d->paused)
            pthread_cond_signal(&d->cv);
        pthread_mutex_unlock(&d->mu);
    }
}

static totals ctr_sum(run *r)
{
    totals t = {0};
    for (uint32_t s = 0; s < log_shard_count(r->log); s++) {
        t.groups += atomic_load(&r->ctr[s].groups);
        t.msgs += atomic_load(&r->ctr[s].msgs);
        t.bytes += atomic_load(&r->ctr[s].bytes);
    }
    return t;
}

static void on_appended(void *arg, int status, const log_append_result *res);

static void issue(producer *p)
{
    run *r = p->r;
    rec_view rec = {.type = REC_MESSAGE,
                    .conv_id = p->conv_id,
                    .sender_id = 1000 + p->id,
                    .body = r->body,
                    .body_len = r->body_len};
    atomic_fetch_add(&r->inflight, 1);
    p->t0 = mono_ns();
    int rc = log_append(r->log, &rec, on_appended, p);
    if (rc) {
        atomic_fetch_sub(&r->inflight, 1);
        note_error(r, rc);
    }
}

/* Runs on the writer thread. The producer is handed on (re-issued or parked)
 * before inflight drops, so that "inflight == 0" means every producer is
 * parked in a ready list. */
static void on_appended(void *arg, int status, const log_append_result *res)
{
    producer *p = arg;
    run *r = p->r;
    uint64_t now = mono_ns();
    int phase = atomic_load(&r->phase);
    if (status) {
        if (phase != PHASE_STOP)
            note_error(r, status);
    } else if (phase == PHASE_MEASURE) {
        hist_add(&r->lat, now - p->t0);
        atomic_fetch_add_explicit(&r->acked, 1, memory_order_relaxed);
    }
    if (status == 0 && phase != PHASE_STOP) {
        if (r->mode == MODE_CHAIN && phase != PHASE_PAUSE) {
            issue(p);
        } else {
            driver *d = p->d;
            pthread_mutex_lock(&d->mu);
            d->ready[d->nready++] = p->id;
            if (r->mode == MODE_EACH && d->sleeping && !d->paused)
                pthread_cond_signal(&d->cv);
            pthread_mutex_unlock(&d->mu);
        }
    }
    /* Callbacks of a group run back to back on its writer thread, right
     * after its on_commit: the last one knows the group is done. */
    if (r->mode == MODE_GROUP && status == 0 && res && --r->ctr[res->shard].left == 0)
        wake_drivers(r);
    atomic_fetch_sub(&r->inflight, 1);
}

static void *driver_main(void *arg)
{
    driver *d = arg;
    run *r = d->r;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while ((!d->nready || d->paused) && !d->stop) {
            d->sleeping = 1;
            pthread_cond_wait(&d->cv, &d->mu);
            d->sleeping = 0;
        }
        if (d->stop)
            break;
        uint32_t n = d->nready;
        memcpy(d->work, d->ready, n * sizeof *d->work);
        d->nready = 0;
        d->issuing = 1;
        pthread_mutex_unlock(&d->mu);
        for (uint32_t i = 0; i < n; i++)
            issue(&r->prods[d->work[i]]);
        pthread_mutex_lock(&d->mu);
        d->issuing = 0;
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* Park every producer and wait until the log has nothing in flight. */
static void run_pause(run *r)
{
    atomic_store(&r->phase, PHASE_PAUSE);
    for (uint32_t i = 0; i < r->ndrivers; i++) {
        pthread_mutex_lock(&r->drivers[i].mu);
        r->drivers[i].paused = 1;
        pthread_mutex_unlock(&r->drivers[i].mu);
    }
    for (;;) {
        int busy = atomic_load(&r->inflight) != 0;
        for (uint32_t i = 0; i < r->ndrivers && !busy; i++) {
            pthread_mutex_lock(&r->drivers[i].mu);
            busy = r->drivers[i].issuing;
            pthread_mutex_unlock(&r->drivers[i].mu);
        }
        if (!busy && atomic_load(&r->inflight) == 0)
            break;
        sleep_s(0.0002);
    }
}

static void run_resume(run *r)
{
    atomic_store(&r->phase, PHASE_RUN);
    for (uint32_t i = 0; i < r->ndrivers; i++) {
        driver *d = &r->drivers[i];
        pthread_mutex_lock(&d->mu);
        d->paused = 0;
        uint32_t n = 0;
        if (r->mode == MODE_CHAIN) {
            n = d->nready;
            memcpy(d->work, d->ready, n * sizeof *d->work);
            d->nready = 0;
        } else {
            pthread_cond_signal(&d->cv);
        }
        pthread_mutex_unlock(&d->mu);
        for (uint32_t k = 0; k < n; k++)
            issue(&r->prods[d->work[k]]);
    }
}

/* Conversation ids for the producers: distinct, and either spread evenly
 * over the shards (producer i on shard i mod shards) or all on shard 0. */
static void pick_convs(run *r, uint32_t shards, int layout)
{
    uint64_t next = 1;
    for (uint32_t i = 0; i < r->nprods; i++) {
        uint32_t want = layout == LAYOUT_ONE ? 0 : i % shards;
        while (log_shard_for(next, shards) != want)
            next++;
        r->prods[i].conv_id = next++;
    }
}

/* A packed MessageBody of exactly body_len bytes: one text field. */
static int make_body(uint32_t body_len, uint8_t **out)
{
    static const char filler[] =
        "see you at the station at five, bring the tickets and some coffee "
        "please, the train leaves at 5:20 sharp ";
    char *text = malloc(body_len + 1);
    uint8_t *buf = malloc(body_len + 16);
    if (!text || !buf) {
        free(text), free(buf);
        return CL_ENOMEM;
    }
    for (uint32_t tl = body_len; tl > 0; tl--) {
        for (uint32_t i = 0; i < tl; i++)
            text[i] = filler[i % (sizeof filler - 1)];
        text[tl] = 0;
        Chatlog__Log__V1__MessageBody mb = CHATLOG__LOG__V1__MESSAGE_BODY__INIT;
        mb.text = text;
        if (chatlog__log__v1__message_body__get_packed_size(&mb) == body_len) {
            chatlog__log__v1__message_body__pack(&mb, buf);
            free(text);
            *out = buf;
            return 0;
        }
    }
    free(text), free(buf);
    return CL_EINVAL;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void rm_rf(const char *path)
{
    nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static double rusage_cpu(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

static void rusage_csw(long *vol, long *invol)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    *vol = u.ru_nvcsw;
    *invol = u.ru_nivcsw;
}

typedef struct case_result {
    bench_case bc;
    char name[32];
    uint32_t shards, shards_used;
    double secs, cpu_secs;
    uint64_t acked;
    totals commits;
    long vcsw, ivcsw;
    double p50_us, p99_us, p999_us, max_us;
    double index_bytes_per_msg;
    uint64_t errors;
    int first_error;
    int have_raw, have_rawk;
    raw_acc *raw1, *rawk;
} case_result;

static double cr_msgs_per_s(const case_result *c)
{
    return c->secs > 0 ? (double)c->acked / c->secs : 0;
}

static double cr_group_msgs(const case_result *c)
{
    return c->commits.groups ? (double)c->commits.msgs / (double)c->commits.groups : 0;
}

static double cr_group_bytes(const case_result *c)
{
    return c->commits.groups ? (double)c->commits.bytes / (double)c->commits.groups : 0;
}

/* Message rate a raw loop is worth at the engine's messages per group. */
static double raw_msgs_per_s(const case_result *c, const raw_acc *a)
{
    return a->secs > 0 ? (double)a->writes / a->secs * cr_group_msgs(c) : 0;
}

static int run_case(const opts *o, const char *base, case_result *c)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", base, c->name);
    run *r = calloc(1, sizeof *r);
    if (!r)
        return CL_ENOMEM;
    int rc = 0;
    r->mode = o->mode;
    r->nprods = c->bc.producers;
    r->prods = calloc(r->nprods, sizeof *r->prods);
    r->ndrivers = o->drivers ? o->drivers : (uint32_t)sysconf(_SC_NPROCESSORS_ONLN);
    if (r->ndrivers < 1)
        r->ndrivers = 1;
    if (r->ndrivers > r->nprods)
        r->ndrivers = r->nprods;
    r->drivers = calloc(r->ndrivers, sizeof *r->drivers);
    r->body_len = o->body_bytes;
    if (!r->prods || !r->drivers) {
        rc = CL_ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < r->ndrivers && rc == 0; i++) {
        driver *d = &r->drivers[i];
        d->r = r;
        pthread_mutex_init(&d->mu, NULL);
        pthread_cond_init(&d->cv, NULL);
        d->ready = malloc(r->nprods * sizeof *d->ready);
        d->work = malloc(r->nprods * sizeof *d->work);
        if (!d->ready || !d->work)
            rc = CL_ENOMEM;
    }
    if (rc || (rc = make_body(o->body_bytes, &r->body)))
        goto out;

    log_options lo = {0};
    lo.shards = o->shards;
    lo.fsync = LOG_FSYNC_ALWAYS;
    lo.max_wait_us = o->max_wait_us;
    lo.on_commit = on_commit;
    lo.commit_arg = r;
    if ((rc = log_open(dir, &lo, &r->log)))
        goto out;
    c->shards = log_shard_count(r->log);
    pick_convs(r, c->shards, c->bc.layout);
    uint8_t used[LOG_MAX_SHARDS] = {0};
    for (uint32_t i = 0; i < r->nprods; i++) {
        uint32_t s = log_shard_of(r->log, r->prods[i].conv_id);
        c->shards_used += !used[s];
        used[s] = 1;
    }

    /* Everyone starts parked; resuming issues the first appends. */
    atomic_store(&r->phase, PHASE_PAUSE);
    for (uint32_t i = 0; i < r->nprods; i++) {
        producer *p = &r->prods[i];
        p->r = r;
        p->id = i;
        p->d = &r->drivers[i % r->ndrivers];
        p->d->ready[p->d->nready++] = i;
    }
    if (r->mode != MODE_CHAIN) {
        for (uint32_t i = 0; i < r->ndrivers; i++) {
            r->drivers[i].paused = 1;
            if (pthread_create(&r->drivers[i].th, NULL, driver_main, &r->drivers[i]) == 0)
                r->drivers[i].started = 1;
        }
    }
    run_resume(r);
    sleep_s(o->warmup);

    for (uint32_t round = 0; round < o->rounds; round++) {
        totals a = ctr_sum(r);
        long v0, i0, v1, i1;
        rusage_csw(&v0, &i0);
        double cpu0 = rusage_cpu();
        uint64_t t0 = mono_ns();
        atomic_store(&r->phase, PHASE_MEASURE);
        sleep_s(o->seconds / o->rounds);
        atomic_store(&r->phase, PHASE_RUN);
        uint64_t t1 = mono_ns();
        double cpu1 = rusage_cpu();
        rusage_csw(&v1, &i1);
        totals b = ctr_sum(r);
        c->secs += (double)(t1 - t0) / 1e9;
        c->cpu_secs += cpu1 - cpu0;
        c->vcsw += v1 - v0;
        c->ivcsw += i1 - i0;
        c->commits.groups += b.groups - a.groups;
        c->commits.msgs += b.msgs - a.msgs;
        c->commits.bytes += b.bytes - a.bytes;

        if (!o->no_raw && c->commits.groups) {
            run_pause(r);
            size_t gb = (size_t)(cr_group_bytes(c) + 0.5);
            double rs = o->raw_seconds / o->rounds;
            int rrc = raw_run(base, gb, 1, rs, c->raw1);
            if (rrc == 0 && c->shards_used > 1)
                rrc = raw_run(base, gb, c->shards_used, rs, c->rawk);
            if (rrc) {
                fprintf(stderr, "engine_bench: raw loop: %s\n", cl_strerror(rrc));
                rc = rrc;
                break;
            }
            c->have_raw = 1;
            c->have_rawk = c->shards_used > 1;
            if (round + 1 < o->rounds) {
                run_resume(r);
                sleep_s(0.05); /* let the groups fill up again */
            }
        }
    }
    c->acked = atomic_load(&r->acked);
    c->p50_us = hist_quantile(&r->lat, 0.50) / 1e3;
    c->p99_us = hist_quantile(&r->lat, 0.99) / 1e3;
    c->p999_us = hist_quantile(&r->lat, 0.999) / 1e3;
    c->max_us = hist_quantile(&r->lat, 1.0) / 1e3;

    /* Stop: the drivers first, then let the log drain. */
    atomic_store(&r->phase, PHASE_STOP);
    for (uint32_t i = 0; i < r->ndrivers; i++) {
        driver *d = &r->drivers[i];
        pthread_mutex_lock(&d->mu);
        d->stop = 1;
        pthread_cond_signal(&d->cv);
        pthread_mutex_unlock(&d->mu);
        if (d->started)
            pthread_join(d->th, NULL);
    }
    while (atomic_load(&r->inflight))
        sleep_s(0.001);
    uint64_t idx = 0, msgs = 0;
    for (uint32_t s = 0; s < c->shards; s++) {
        log_shard_info si;
        if (log_shard_info_get(r->log, s, &si) == 0) {
            idx += si.index_bytes;
            msgs += si.messages;
        }
    }
    c->index_bytes_per_msg = msgs ? (double)idx / (double)msgs : 0;
    int crc = log_close(r->log);
    if (rc == 0)
        rc = crc;
    c->errors = atomic_load(&r->errors);
    c->first_error = atomic_load(&r->first_error);
out:
    for (uint32_t i = 0; r->drivers && i < r->ndrivers; i++) {
        free(r->drivers[i].ready);
        free(r->drivers[i].work);
    }
    free(r->drivers);
    free(r->prods);
    free(r->body);
    free(r);
    rm_rf(dir);
    return rc;
}

/* ---- main ---- */

static void print_tables(const opts *o, case_result *cs, uint32_t n)
{
    printf("\nEngine: durable appends (fsync=always); latency = log_append() to "
           "callback\n");
    printf("%-12s %5s %7s %9s %8s %8s %8s %8s %9s %8s %5s %9s\n", "case", "prods",
           "shards", "msgs/s", "p50 us", "p99 us", "p99.9 us", "msgs/grp", "bytes/grp",
           "fsyncs/s", "cpu%", "idx B/msg");
    for (uint32_t i = 0; i < n; i++) {
        case_result *c = &cs[i];
        printf("%-12s %5u %3u/%-3u %9.0f %8.1f %8.1f %8.1f %8.1f %9.0f %8.0f %5.0f "
               "%9.1f\n",
               c->name, c->bc.producers, c->shards_used, c->shards, cr_msgs_per_s(c),
               c->p50_us, c->p99_us, c->p999_us, cr_group_msgs(c), cr_group_bytes(c),
               c->secs > 0 ? (double)c->commits.groups / c->secs : 0,
               c->secs > 0 ? 100.0 * c->cpu_secs / c->secs : 0, c->index_bytes_per_msg);
    }
    if (o->no_raw)
        return;
    printf("\nRaw limit, same run, same file system: pwrite + fdatasync of the "
           "engine's average group size,\none loop on one file, and K loops on K "
           "files (K = shards in use); alternated with the engine\n");
    printf("%-12s %7s | %8s %9s %7s %8s | %3s %9s %7s | %6s %6s %7s\n", "case", "bytes",
           "1 loop/s", "msgs/s", "MB/s", "p50 us", "K", "msgs/s", "MB/s", "eng/1",
           "eng/K", "p50 e/1");
    for (uint32_t i = 0; i < n; i++) {
        case_result *c = &cs[i];
        if (!c->have_raw)
            continue;
        raw_acc *k = c->have_rawk ? c->rawk : c->raw1;
        double m1 = raw_msgs_per_s(c, c->raw1), mk = raw_msgs_per_s(c, k);
        double p1 = hist_quantile(&c->raw1->lat, 0.5) / 1e3;
        printf("%-12s %7.0f | %8.0f %9.0f %7.2f %8.1f | %3u %9.0f %7.2f | %6.2f %6.2f "
               "%7.2f\n",
               c->name, c->raw1->bytes_sum / c->raw1->rounds,
               (double)c->raw1->writes / c->raw1->secs, m1,
               (double)c->raw1->bytes / c->raw1->secs / 1e6, p1, k->threads, mk,
               (double)k->bytes / k->secs / 1e6, cr_msgs_per_s(c) / m1,
               cr_msgs_per_s(c) / mk, c->p50_us / p1);
    }
}

static void print_results(const opts *o, case_result *cs, uint32_t n)
{
    printf("\n");
    for (uint32_t i = 0; i < n; i++) {
        case_result *c = &cs[i];
        printf("RESULT bench=engine case=%s producers=%u layout=%s shards=%u "
               "shards_used=%u mode=%s body_bytes=%u seconds=%.2f msgs_per_s=%.0f "
               "p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f group_msgs=%.2f "
               "group_bytes=%.0f fsyncs_per_s=%.0f cpu_pct=%.0f vcsw_per_s=%.0f "
               "ivcsw_per_s=%.0f index_bytes_per_msg=%.2f max_wait_us=%u errors=%llu",
               c->name, c->bc.producers, c->bc.layout == LAYOUT_ONE ? "one" : "spread",
               c->shards, c->shards_used, mode_name(o->mode), o->body_bytes, c->secs,
               cr_msgs_per_s(c), c->p50_us, c->p99_us, c->p999_us, c->max_us,
               cr_group_msgs(c), cr_group_bytes(c), (double)c->commits.groups / c->secs,
               100.0 * c->cpu_secs / c->secs, (double)c->vcsw / c->secs,
               (double)c->ivcsw / c->secs, c->index_bytes_per_msg, o->max_wait_us,
               (unsigned long long)c->errors);
        if (c->have_raw) {
            raw_acc *a = c->raw1;
            double p1 = hist_quantile(&a->lat, 0.5) / 1e3;
            printf(" raw_bytes=%.0f raw_writes_per_s=%.0f raw_msgs_per_s=%.0f "
                   "raw_bytes_per_s=%.0f raw_p50_us=%.1f raw_p99_us=%.1f ratio=%.3f "
                   "latency_ratio=%.3f",
                   a->bytes_sum / a->rounds, (double)a->writes / a->secs,
                   raw_msgs_per_s(c, a), (double)a->bytes / a->secs, p1,
                   hist_quantile(&a->lat, 0.99) / 1e3,
                   cr_msgs_per_s(c) / raw_msgs_per_s(c, a), c->p50_us / p1);
            raw_acc *k = c->have_rawk ? c->rawk : c->raw1;
            printf(" rawk_threads=%u rawk_msgs_per_s=%.0f rawk_bytes_per_s=%.0f "
                   "ratio_k=%.3f",
                   k->threads, raw_msgs_per_s(c, k), (double)k->bytes / k->secs,
                   cr_msgs_per_s(c) / raw_msgs_per_s(c, k));
        }
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    const char *parent = o.dir ? o.dir : getenv("TMPDIR");
    if (!parent || !*parent)
        parent = "/tmp";
    char base[4096];
    snprintf(base, sizeof base, "%s/chatlog-bench-XXXXXX", parent);
    if (!mkdtemp(base)) {
        fprintf(stderr, "engine_bench: cannot create a directory in %s: %s\n", parent,
                strerror(errno));
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    printf("engine_bench: %u-byte message bodies (%zu-byte records), fsync=always, "
           "%u shards, %s producers,\n  %.1f s measured per case in %u rounds "
           "after %.1f s warm-up; %ld CPUs, %.1f GiB RAM; scratch %s\n",
           o.body_bytes, batch_record_size(0, o.body_bytes), o.shards,
           o.mode == MODE_GROUP  ? "event-loop (woken once per group)"
           : o.mode == MODE_EACH ? "event-loop (woken by each callback)"
                                 : "chained",
           o.seconds, o.rounds, o.warmup, cpus, ram / (1024.0 * 1024 * 1024), base);

    case_result cs[MAX_CASES];
    int fail = 0;
    for (uint32_t i = 0; i < o.ncases; i++) {
        case_result *c = &cs[i];
        memset(c, 0, sizeof *c);
        c->bc = o.cases[i];
        snprintf(c->name, sizeof c->name, "p%u-%s", c->bc.producers,
                 c->bc.layout == LAYOUT_ONE ? "one" : "spread");
        c->raw1 = calloc(1, sizeof *c->raw1);
        c->rawk = calloc(1, sizeof *c->rawk);
        int rc = c->raw1 && c->rawk ? run_case(&o, base, c) : CL_ENOMEM;
        if (rc) {
            fprintf(stderr, "engine_bench: case %s: %s\n", c->name, cl_strerror(rc));
            fail = 1;
        }
        if (c->errors) {
            fprintf(stderr, "engine_bench: case %s: %llu appends failed, first: %s\n",
                    c->name, (unsigned long long)c->errors, cl_strerror(c->first_error));
            fail = 1;
        }
        printf("  %-12s %9.0f msgs/s  p50 %8.1f us  p99 %8.1f us  %6.1f msgs/group\n",
               c->name, cr_msgs_per_s(c), c->p50_us, c->p99_us, cr_group_msgs(c));
    }
    if (!o.keep)
        rm_rf(base);
    print_tables(&o, cs, o.ncases);
    print_results(&o, cs, o.ncases);
    for (uint32_t i = 0; i < o.ncases; i++) {
        free(cs[i].raw1);
        free(cs[i].rawk);
    }
    return fail;
}
