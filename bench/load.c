/*
 * load.c — load generator for chatd: many WebSocket (chat.v1) sessions
 * against a chatd that it starts itself, and in one run the figures the
 * server's benchmark targets are about (issue 3; results and setup in
 * docs/performance.md, "Server (chatd)"):
 *
 *   idle        server memory per idle session: chatd's VmRSS
 *               (/proc/PID/status) before and after opening --idle sessions
 *               (WebSocket open and past Hello → Welcome), delta / sessions.
 *               The generator's processes each hold at most --idle-per-proc
 *               sockets and bind them to source addresses 127.0.0.2, .3, …
 *               (--idle-per-addr each), so that neither the generator's own
 *               open-file limit nor one source address's ephemeral ports cap
 *               the count; chatd's open-file limit does (see below). Then,
 *               with all of them held: chatd's CPU for 2 s (an idle server
 *               should use none) and a Ping → Pong round trip on every 50th
 *               session (are held sessions still served?).
 *   throughput  durable end-to-end messages/s in 1:1 conversations, one case
 *               per --shapes entry PAIRSxWINDOW: PAIRS direct conversations,
 *               both users of each sending, each session keeping WINDOW
 *               Sends without an Ack in flight (a closed loop). Counted in
 *               the measured window: Acks/s at the senders (an Ack means
 *               fdatasync'd) and Msg/s at the receivers, plus latencies. The
 *               shapes matter: the same server does several times more per
 *               second when each session has several messages in flight
 *               (frames share reads and writes) than when thousands of
 *               sessions have one each.
 *   latency     --pairs pairs, open loop: Sends paced at --rate messages/s in
 *               total, round-robin over every session. The timestamp a
 *               message carries is the time it was *scheduled*, not the time
 *               it was written, so a late generator or a stalled server shows
 *               up as latency instead of silently lowering the rate (no
 *               coordinated omission); the generator's own lag (scheduled →
 *               written) is reported next to it.
 *   fanout      --groups groups of --group-size members, every member online
 *               (one session each), --group-senders members per group sending
 *               with --group-window Sends in flight; counted: Msg frames
 *               received per second over all sessions ("deliveries").
 *
 * Latency: every Send carries its timestamp (CLOCK_MONOTONIC, nanoseconds,
 * one clock for every process of the machine) in client_msg_id, which the
 * server hands back in the Ack and in every Msg. send→ack is measured at the
 * sender, send→receive at each receiver (now − timestamp on the Msg's
 * arrival). Histograms are log-linear (128 sub-buckets per power of two,
 * < 0.8 % error), merged over processes.
 *
 * Integrity, checked on the way: per session, msg_ids of its conversation
 * only go up; a member that never sends sees every msg_id (no gap); every
 * Send is answered (Ack or Error) before the phase ends. A violation makes
 * the exit status 1.
 *
 * Each load phase: the sessions connect (not measured), then --warmup
 * seconds of load, --seconds measured, then the senders stop and the
 * generator waits up to --drain seconds (5) for the Acks still in flight.
 * Only events inside the measured window count. At the window's edges the
 * main process samples chatd's per-thread CPU time (/proc/PID/task: the
 * main thread is the event loop, the others the engine's writers,
 * completion thread and sealer), the workers' CPU, the whole machine's (/proc/stat: other processes,
 * interrupts, steal), chatd's VmRSS and its /metrics counters, so the report
 * says where the time went and how busy the machine was with other work.
 *
 * Processes: the main process starts chatd (--chatd; default the chatd in
 * the parent of this binary's directory, i.e. BUILD/chatd) with a fresh data
 * directory and secret in a temporary directory and a free port, its rate
 * limits raised (the benchmark measures the server, not its limits) and its
 * soft open-file limit raised to the hard one; creates the conversations
 * through the REST API (pipelined POST /api/v1/conversations); then forks
 * --workers processes per phase. Each worker is one thread with its own
 * libevent loop; workers and the main process talk through a socketpair (one
 * byte per step) and shared memory (times, results). Tokens are HS256 JWTs
 * minted here with OpenSSL's HMAC from the same secret (what `chatd token`
 * makes, without a process per user). At the end chatd gets SIGTERM and
 * must exit 0.
 *
 * Servers started elsewhere (--connect HOST:PORT,...; issue 6's cluster
 * benchmark, scripts/bench-cluster.sh): no chatd is started or stopped, the
 * tokens are minted from --secret-file, REST setup goes to the first server,
 * and each phase's sessions are spread over the servers: session i on server
 * i mod N (--placement all; in a cluster most writes are then forwarded to
 * their shard's leader), or on the server that leads the conversation's
 * shard as GET /api/v1/cluster says just before the phase (--placement
 * leaders). CPU and memory are summed over the --pids given, /metrics over
 * the servers. The idle phase needs a chatd of its own.
 *
 * WebSocket client side (RFC 6455 §5.3): every client frame is masked with a
 * fresh key. Server frames are parsed by hand, and the hot ServerFrame kinds
 * (Msg, Ack, Pong) are decoded with a small protobuf wire reader instead of
 * protobuf-c's allocating unpack, so that the generator spends its CPU on
 * sockets; at start a self-check packs frames with protobuf-c and reads them
 * back with that reader, so a schema change cannot silently skew figures.
 *
 * Output: a table, then one "RESULT bench=chatd case=<case> key=value ..."
 * line per case (idle, throughput-PxW, latency, fanout) for
 * scripts/bench.sh. Exit status: 0 when every phase ran (a missed target is
 * reported, not a failure), 1 when one could not run, an integrity check
 * failed or chatd did not stop cleanly, 2 for bad usage.
 * Usage: load --help.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat.pb-c.h"
#include "log.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_WORKERS 64
#define MAX_TARGETS 8
#define RBUF_SIZE (256 * 1024)
#define MAX_HANDSHAKES 128 /* per worker, in progress at once */
#define NS 1000000000LL

/* User id ranges per phase, so that phases never share users (and a
 * session of one phase never gets another phase's presence or messages). */
#define UID_PAIRS ((uint64_t)1)
#define UID_GROUPS ((uint64_t)10000000)
#define UID_IDLE ((uint64_t)20000000)

/* ---- options ---- */

static struct {
    const char *chatd;
    const char *connect;     /* --connect: servers already running */
    const char *secret_file; /* their JWT secret */
    const char *pids;        /* their process ids, for CPU and memory */
    int leaders_only;        /* --placement leaders */
    double seconds, warmup;
    double drain; /* how long Sends still in flight may take after a phase */
    int workers;
    int pairs, body_bytes;
    int rate;
    int groups, group_size, group_senders, group_window;
    int idle, idle_per_proc, idle_per_addr;
    double idle_timeout;
    int keep;
    char phases[128];
    char shapes[128]; /* throughput: PAIRSxWINDOW,... */
    const char *extra_args[32];
    int nextra;
} opt = {
    .seconds = 5,
    .warmup = 1,
    .drain = 5,
    .workers = 2,
    .pairs = 1000,
    .body_bytes = 100,
    .rate = 10000,
    .groups = 4,
    .group_size = 250,
    .group_senders = 2,
    .group_window = 8,
    .idle = 20000,
    .idle_per_proc = 5000,
    .idle_per_addr = 5000,
    .idle_timeout = 15,
    .phases = "idle,throughput,latency,fanout",
    .shapes = "100x8,1000x4,1000x1",
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: load [options]\n"
            "Starts chatd on a free port with a fresh data directory, loads it over\n"
            "WebSocket (chat.v1) and prints a table and RESULT lines. Phases:\n"
            "idle (memory per idle session), throughput (1:1, closed loop), latency\n"
            "(1:1, paced), fanout (groups). See the top of bench/load.c.\n\n"
            "  --chatd PATH          server binary [directory of this binary/../chatd]\n"
            "  --phases LIST         comma-separated subset of idle,throughput,latency,fanout\n"
            "  --seconds S           measured seconds per phase [5]\n"
            "  --warmup S            unmeasured seconds before that [1]\n"
            "  --workers N           generator processes for the load phases [2]\n"
            "  --drain S             after a phase, wait up to S s for every Send's answer\n"
            "                        (one still missing then is an integrity failure) [5]\n"
            "  --shapes LIST         throughput cases PAIRSxWINDOW: pairs of sessions in\n"
            "                        1:1 conversations, unacked Sends per sender\n"
            "                        [100x8,1000x4,1000x1]\n"
            "  --pairs N             latency phase: 1:1 conversations [1000]\n"
            "  --body-bytes N        message body size [100]\n"
            "  --rate N              latency phase: msgs/s in total [10000]\n"
            "  --groups N            fanout: groups [4]\n"
            "  --group-size N        fanout: members per group, all online [250]\n"
            "  --group-senders N     fanout: senders per group [2]\n"
            "  --group-window N      fanout: unacked Sends per sender [8]\n"
            "  --idle N              idle sessions to open [20000]\n"
            "  --idle-per-proc N     sessions per generator process [5000]\n"
            "  --idle-per-addr N     sessions per source address 127.0.0.x [5000]\n"
            "  --idle-timeout S      a session not past Hello by then is 'stuck' [15]\n"
            "  --chatd-arg ARG       pass ARG to chatd (repeatable; e.g. --chatd-arg=--shards=4)\n"
            "  --keep                keep the temporary directory (data, chatd.log)\n\n"
            "Against servers that are already running (e.g. a cluster) instead:\n"
            "  --connect LIST        comma-separated HOST:PORT (IPv4) of chatd nodes; no chatd\n"
            "                        is started and none is stopped. Sessions are spread\n"
            "                        over the nodes, REST setup goes to the first one\n"
            "  --secret-file F       their JWT secret (required with --connect)\n"
            "  --pids LIST           their process ids, same order, for the CPU and memory\n"
            "                        figures (summed over the nodes; optional)\n"
            "  --placement all|leaders\n"
            "                        all: session i on node i mod N [all]; leaders: every\n"
            "                        session on the node that leads its conversation's shard\n"
            "                        (GET /api/v1/cluster on each node before each phase)\n");
}

/* ---- time ---- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static void sleep_until(int64_t t)
{
    for (;;) {
        int64_t d = t - now_ns();
        if (d <= 0)
            return;
        struct timespec ts = {d / NS, d % NS};
        nanosleep(&ts, NULL);
    }
}

static void sleep_ms(int ms) { sleep_until(now_ns() + (int64_t)ms * 1000000); }

/* ---- latency histogram: log-linear, microseconds ---- */

#define H_SUB 128
#define H_BUCKETS (H_SUB * 2 + 40 * H_SUB)

typedef struct hist {
    uint64_t n, max_us;
    double sum_us;
    uint64_t b[H_BUCKETS];
} hist;

static unsigned h_index(uint64_t v)
{
    if (v < 2 * H_SUB)
        return (unsigned)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 7; /* keep 8 significant bits: 128..255 */
    unsigned i = 2 * H_SUB + (unsigned)(shift - 1) * H_SUB + (unsigned)((v >> shift) - H_SUB);
    return i < H_BUCKETS ? i : H_BUCKETS - 1;
}

/* The middle of bucket i. */
static double h_value(unsigned i)
{
    if (i < 2 * H_SUB)
        return i;
    unsigned shift = (i - 2 * H_SUB) / H_SUB + 1;
    unsigned sub = (i - 2 * H_SUB) % H_SUB + H_SUB;
    return ((double)sub + 0.5) * (double)(1ull << shift);
}

static void h_add(hist *h, int64_t ns)
{
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    h->b[h_index(us)]++;
    h->n++;
    h->sum_us += (double)us;
    if (us > h->max_us)
        h->max_us = us;
}

static void h_merge(hist *d, const hist *s)
{
    for (unsigned i = 0; i < H_BUCKETS; i++)
        d->b[i] += s->b[i];
    d->n += s->n;
    d->sum_us += s->sum_us;
    if (s->max_us > d->max_us)
        d->max_us = s->max_us;
}

/* Percentile q (0..1) in milliseconds; 0 when empty. */
static double h_pct_ms(const hist *h, double q)
{
    if (!h->n)
        return 0;
    double x = q * (double)h->n;
    uint64_t want = (uint64_t)x, seen = 0;
    if ((double)want < x || want == 0)
        want++; /* the ceiling: the smallest rank covering q */
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            double v = h_value(i);
            return (v > (double)h->max_us ? (double)h->max_us : v) / 1000.0;
        }
    }
    return (double)h->max_us / 1000.0;
}

/* ---- what workers report (shared memory) ---- */

typedef struct wstats {
    int ready, done;
    uint64_t conns, ok, failed, stuck;
    uint64_t fail_connect, fail_eof, fail_http, fail_close, fail_other;
    uint64_t http_503;
    uint64_t sent, acks, msgs;             /* whole phase */
    uint64_t sent_win, acks_win, msgs_win; /* in the measured window */
    uint64_t inflight_end;                 /* Sends never acked */
    uint64_t errors[16];                   /* Error frames by code */
    uint64_t closes_4008, closes_other;    /* server closes after Welcome */
    uint64_t unordered;                    /* Msg msg_id not increasing */
    uint64_t gaps;                         /* non-sender: msg_id skipped one */
    uint64_t other_frames;                 /* presence, receipts, ... */
    uint64_t late_ticks;                   /* latency: tick > 2 ms late */
    char first_error[160];
    hist lat_msg, lat_ack;
    hist lag; /* latency phase: scheduled -> handed to the socket */
} wstats;

typedef struct shared {
    int64_t t_go, t_meas0, t_meas1, t_stop;
    wstats w[MAX_WORKERS];
} shared;

static shared *shm;

/* ---- what a phase asks a worker to do ---- */

enum phase_kind { PH_IDLE = 1, PH_WINDOW = 2, PH_PACED = 3 };

typedef struct spec {
    uint64_t user_id;
    uint64_t conv_id; /* its conversation (0: none) */
    uint8_t sender;   /* sends into conv_id */
    uint32_t src;     /* source address 127.0.0.src; 0 = don't bind */
    uint8_t target;   /* index into tgt[]: the server it connects to */
} spec;

typedef struct phase {
    const char *name;
    int kind;
    spec *conns;
    size_t nconns;
    int nworkers;
    int window;
    double rate; /* PH_PACED, in total */
    int64_t handshake_timeout_ns;
} phase;

/* ---- the server under test ---- */

static char tmpdir[256];
static char secret[256];
static pid_t chatd_pid; /* the chatd this process started, if any */

/* The servers under test: the one chatd started here, or the --connect
 * list. pid 0: unknown (no CPU or memory figures for it). */
static struct target {
    uint32_t addr; /* IPv4, network byte order */
    int port;
    pid_t pid;
} tgt[MAX_TARGETS];
static int ntgt;
static pid_t worker_pids[MAX_WORKERS];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void kill_children(void)
{
    for (int i = 0; i < MAX_WORKERS; i++)
        if (worker_pids[i] > 0)
            kill(worker_pids[i], SIGKILL);
    if (chatd_pid > 0)
        kill(chatd_pid, SIGKILL);
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "load: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    kill_children();
    if (tmpdir[0])
        fprintf(stderr, "load: kept %s (chatd.log)\n", tmpdir);
    exit(1);
}

/* ---- base64url and tokens ---- */

static size_t b64url(char *out, const uint8_t *in, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
    }
    out[o] = 0;
    return o;
}

/* An HS256 JWT {"sub":"<uid>","exp":now+1 day} signed with the secret. */
static void mint_token(char out[256], uint64_t uid)
{
    char payload[96];
    int pn = snprintf(payload, sizeof payload, "{\"sub\":\"%" PRIu64 "\",\"exp\":%lld}", uid,
                      (long long)time(NULL) + 86400);
    /* base64url of {"alg":"HS256","typ":"JWT"} */
    size_t n = (size_t)snprintf(out, 256, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.");
    n += b64url(out + n, (const uint8_t *)payload, (size_t)pn);
    uint8_t mac[32];
    unsigned maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const uint8_t *)out, n, mac, &maclen);
    out[n++] = '.';
    b64url(out + n, mac, maclen);
}

/* ---- a tiny protobuf wire reader for the hot ServerFrame kinds ---- */

/* proto/chat.proto field numbers (checked at start by self_check). */
enum {
    SF_WELCOME = 1, SF_MSG = 2, SF_ACK = 3, SF_ERROR = 8, SF_PONG = 9,
    PONG_NONCE = 1,
    MSG_CONV_ID = 1, MSG_MSG_ID = 2, MSG_CLIENT_MSG_ID = 7,
    ACK_CLIENT_MSG_ID = 1, ACK_CONV_ID = 2, ACK_MSG_ID = 3,
    ERR_CODE = 1, ERR_MESSAGE = 2,
};

typedef struct pbfield {
    uint32_t num;
    int wt;
    uint64_t v;          /* varint */
    const uint8_t *p;    /* length-delimited */
    size_t len;
} pbfield;

static int pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int s = 0; s < 64 && *p < end; s += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Next field of [*p, end): 1, 0 at the end, -1 if malformed. */
static int pb_next(const uint8_t **p, const uint8_t *end, pbfield *f)
{
    if (*p >= end)
        return 0;
    uint64_t tag;
    if (pb_varint(p, end, &tag))
        return -1;
    f->num = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    f->p = NULL;
    f->len = 0;
    f->v = 0;
    switch (f->wt) {
    case 0:
        return pb_varint(p, end, &f->v) ? -1 : 1;
    case 1:
        if (end - *p < 8)
            return -1;
        *p += 8;
        return 1;
    case 2:
        if (pb_varint(p, end, &f->v) || f->v > (uint64_t)(end - *p))
            return -1;
        f->p = *p;
        f->len = (size_t)f->v;
        *p += f->len;
        return 1;
    case 5:
        if (end - *p < 4)
            return -1;
        *p += 4;
        return 1;
    }
    return -1;
}

/* What the generator needs from a Msg or an Ack. */
typedef struct hot {
    uint64_t conv_id, msg_id;
    const uint8_t *cmid;
    size_t cmid_len;
} hot;

static int decode_hot(const uint8_t *p, size_t len, int kind, hot *h)
{
    const uint8_t *end = p + len;
    pbfield f;
    int r;
    memset(h, 0, sizeof *h);
    while ((r = pb_next(&p, end, &f)) == 1) {
        if (kind == SF_MSG) {
            if (f.num == MSG_CONV_ID && f.wt == 0)
                h->conv_id = f.v;
            else if (f.num == MSG_MSG_ID && f.wt == 0)
                h->msg_id = f.v;
            else if (f.num == MSG_CLIENT_MSG_ID && f.wt == 2) {
                h->cmid = f.p;
                h->cmid_len = f.len;
            }
        } else {
            if (f.num == ACK_CONV_ID && f.wt == 0)
                h->conv_id = f.v;
            else if (f.num == ACK_MSG_ID && f.wt == 0)
                h->msg_id = f.v;
            else if (f.num == ACK_CLIENT_MSG_ID && f.wt == 2) {
                h->cmid = f.p;
                h->cmid_len = f.len;
            }
        }
    }
    return r;
}

/* client_msg_id = 16 hex digits of the send timestamp (ns), '.', a
 * per-session sequence number in hex. */
static size_t make_cmid(char out[40], int64_t t, uint64_t seq)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++)
        out[i] = hx[((uint64_t)t >> (60 - 4 * i)) & 15];
    out[16] = '.';
    size_t n = 17;
    char tmp[16];
    int k = 0;
    do {
        tmp[k++] = hx[seq & 15];
        seq >>= 4;
    } while (seq);
    while (k)
        out[n++] = tmp[--k];
    out[n] = 0;
    return n;
}

static int64_t cmid_time(const uint8_t *p, size_t len)
{
    if (len < 17 || p[16] != '.')
        return -1;
    uint64_t t = 0;
    for (int i = 0; i < 16; i++) {
        int c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        t = t << 4 | (uint64_t)d;
    }
    return (int64_t)t;
}

/* Pack frames with protobuf-c and read them back with the wire reader. */
static void self_check(void)
{
    char cmid[40];
    int64_t t = now_ns();
    make_cmid(cmid, t, 0x1234);
    Chat__V1__Msg m = CHAT__V1__MSG__INIT;
    m.conv_id = 77;
    m.msg_id = 123456789;
    m.sender_id = 5;
    m.body = "hello";
    m.ts = 42;
    m.client_msg_id = cmid;
    Chat__V1__ServerFrame f = CHAT__V1__SERVER_FRAME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_MSG;
    f.msg = &m;
    uint8_t buf[256];
    size_t n = chat__v1__server_frame__pack(&f, buf);
    const uint8_t *p = buf;
    pbfield pf;
    hot h;
    if (pb_next(&p, buf + n, &pf) != 1 || pf.num != SF_MSG || pf.wt != 2 ||
        decode_hot(pf.p, pf.len, SF_MSG, &h) != 0 || h.conv_id != 77 ||
        h.msg_id != 123456789 || cmid_time(h.cmid, h.cmid_len) != t)
        die("self-check: Msg does not decode as expected (proto/chat.proto changed?)");
    Chat__V1__Ack a = CHAT__V1__ACK__INIT;
    a.client_msg_id = cmid;
    a.conv_id = 78;
    a.msg_id = 9;
    a.ts = 1;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_ACK;
    f.ack = &a;
    n = chat__v1__server_frame__pack(&f, buf);
    p = buf;
    if (pb_next(&p, buf + n, &pf) != 1 || pf.num != SF_ACK || pf.wt != 2 ||
        decode_hot(pf.p, pf.len, SF_ACK, &h) != 0 || h.conv_id != 78 || h.msg_id != 9 ||
        cmid_time(h.cmid, h.cmid_len) != t)
        die("self-check: Ack does not decode as expected (proto/chat.proto changed?)");
    Chat__V1__Welcome w = CHAT__V1__WELCOME__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_WELCOME;
    f.welcome = &w;
    n = chat__v1__server_frame__pack(&f, buf);
    p = buf;
    if (pb_next(&p, buf + n, &pf) != 1 || pf.num != SF_WELCOME)
        die("self-check: Welcome field number changed");
    Chat__V1__Error e = CHAT__V1__ERROR__INIT;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_ERROR;
    f.error = &e;
    n = chat__v1__server_frame__pack(&f, buf);
    p = buf;
    if (pb_next(&p, buf + n, &pf) != 1 || pf.num != SF_ERROR)
        die("self-check: Error field number changed");
    Chat__V1__Pong po = CHAT__V1__PONG__INIT;
    po.nonce = t;
    f.kind_case = CHAT__V1__SERVER_FRAME__KIND_PONG;
    f.pong = &po;
    n = chat__v1__server_frame__pack(&f, buf);
    p = buf;
    if (pb_next(&p, buf + n, &pf) != 1 || pf.num != SF_PONG)
        die("self-check: Pong field number changed");
    const uint8_t *q = pf.p;
    if (pb_next(&q, pf.p + pf.len, &pf) != 1 || pf.num != PONG_NONCE || (int64_t)pf.v != t)
        die("self-check: Pong does not decode as expected");
}

/* ---- worker: sessions on one libevent loop ---- */

enum { ST_IDLE = 0, ST_CONNECTING, ST_HTTP, ST_HELLO, ST_READY, ST_DEAD };

typedef struct lconn {
    struct worker *w;
    const spec *sp;
    int fd;
    int state;
    struct event *ev;
    int want_write;
    int64_t started_ns;
    uint64_t seq;
    uint32_t inflight;
    uint64_t last_msg_id; /* of the conversation, as received */
    uint8_t *in;          /* unparsed input kept between reads */
    size_t inlen, incap;
    uint8_t *out;         /* unwritten output */
    size_t outlen, outcap;
    int in_flush;
    struct lconn *next_flush;
} lconn;

typedef struct worker {
    int idx;
    const phase *ph;
    wstats *st;
    struct event_base *base;
    lconn *c;
    size_t n, next_start, resolved, handshaking;
    int syncfd;
    struct event *sync_ev, *timer_ev, *tick_ev;
    int sending;
    int64_t t_go, t_meas0, t_meas1, t_stop;
    uint8_t *rbuf;
    const char *body;
    lconn *flushq;
    lconn **senders;
    size_t nsenders, rr;
    uint64_t paced_sent;
    int64_t last_tick;
    uint64_t rng;
    int reported;
    size_t probes; /* idle: pings without a pong */
} worker;

static uint32_t rnd32(worker *w)
{
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return (uint32_t)w->rng;
}

static void set_first_error(worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_first_error(worker *w, const char *fmt, ...)
{
    if (w->st->first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->st->first_error, sizeof w->st->first_error, fmt, ap);
    va_end(ap);
}

static void conn_cb(evutil_socket_t fd, short what, void *arg);
static void start_more(worker *w);
static void maybe_ready(worker *w);

static void set_events(lconn *c)
{
    int want = c->outlen > 0 || c->state == ST_CONNECTING;
    if (want == c->want_write || c->state == ST_DEAD)
        return;
    c->want_write = want;
    event_del(c->ev);
    event_assign(c->ev, c->w->base, c->fd, EV_READ | EV_PERSIST | (want ? EV_WRITE : 0),
                 conn_cb, c);
    event_add(c->ev, NULL);
}

static void out_reserve(lconn *c, size_t more)
{
    if (c->outlen + more <= c->outcap)
        return;
    size_t cap = c->outcap ? c->outcap : 1024;
    while (cap < c->outlen + more)
        cap *= 2;
    uint8_t *n = realloc(c->out, cap);
    if (!n)
        die("out of memory");
    c->out = n;
    c->outcap = cap;
}

/* A masked client frame (RFC 6455 §5.2, §5.3) appended to c->out. */
static void ws_put(lconn *c, int opcode, const uint8_t *payload, size_t len)
{
    out_reserve(c, len + 14);
    uint8_t *o = c->out + c->outlen;
    size_t h = 0;
    o[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        o[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        o[h++] = 0x80 | 126;
        o[h++] = (uint8_t)(len >> 8);
        o[h++] = (uint8_t)len;
    } else {
        o[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            o[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t key = rnd32(c->w);
    uint8_t mask[4];
    memcpy(mask, &key, 4);
    memcpy(o + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        o[h + i] = payload[i] ^ mask[i & 3];
    c->outlen += h + len;
}

static void want_flush(lconn *c)
{
    if (!c->in_flush) {
        c->in_flush = 1;
        c->next_flush = c->w->flushq;
        c->w->flushq = c;
    }
}

static void conn_dead(lconn *c, int resolved_as_failure);

static void flush(lconn *c)
{
    while (c->outlen && c->state != ST_DEAD) {
        ssize_t n = write(c->fd, c->out, c->outlen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            set_first_error(c->w, "write: %s", strerror(errno));
            conn_dead(c, 1);
            return;
        }
        memmove(c->out, c->out + n, c->outlen - (size_t)n);
        c->outlen -= (size_t)n;
    }
    set_events(c);
}

static void flush_all(worker *w)
{
    while (w->flushq) {
        lconn *c = w->flushq;
        w->flushq = c->next_flush;
        c->in_flush = 0;
        if (c->state != ST_DEAD)
            flush(c);
    }
}

static void conn_dead(lconn *c, int failure)
{
    worker *w = c->w;
    if (c->state == ST_DEAD)
        return;
    int was_handshaking = c->state != ST_READY && c->state != ST_IDLE;
    if (c->state == ST_READY)
        w->st->ok--;
    c->state = ST_DEAD;
    if (c->ev) {
        event_del(c->ev);
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (was_handshaking) {
        w->handshaking--;
        if (failure)
            w->st->failed++;
        w->resolved++;
        start_more(w);
        maybe_ready(w);
    }
}

/* ---- sending ---- */

static void send_one(lconn *c, int64_t stamp)
{
    worker *w = c->w;
    char cmid[40];
    make_cmid(cmid, stamp, ++c->seq);
    Chat__V1__Send s = CHAT__V1__SEND__INIT;
    s.conv_id = c->sp->conv_id;
    s.body = (char *)w->body;
    s.client_msg_id = cmid;
    Chat__V1__ClientFrame f = CHAT__V1__CLIENT_FRAME__INIT;
    f.kind_case = CHAT__V1__CLIENT_FRAME__KIND_SEND;
    f.send = &s;
    uint8_t buf[1024 + 128];
    size_t need = chat__v1__client_frame__get_packed_size(&f);
    uint8_t *p = need <= sizeof buf ? buf : malloc(need);
    if (!p)
        die("out of memory");
    size_t n = chat__v1__client_frame__pack(&f, p);
    ws_put(c, 0x2, p, n);
    if (p != buf)
        free(p);
    c->inflight++;
    w->st->sent++;
    int64_t t = now_ns();
    if (t >= w->t_meas0 && t < w->t_meas1) {
        w->st->sent_win++;
        if (w->ph->kind == PH_PACED)
            h_add(&w->st->lag, t - stamp);
    }
    want_flush(c);
}

static void fill_window(lconn *c)
{
    worker *w = c->w;
    while (w->sending && c->state == ST_READY && c->sp->sender &&
           c->inflight < (uint32_t)w->ph->window)
        send_one(c, now_ns());
}

/* ---- receiving ---- */

static void on_server_frame(lconn *c, const uint8_t *p, size_t len)
{
    worker *w = c->w;
    const uint8_t *q = p;
    pbfield f;
    if (pb_next(&q, p + len, &f) != 1 || f.wt != 2) {
        set_first_error(w, "unparsable ServerFrame (%zu bytes)", len);
        w->st->other_frames++;
        return;
    }
    int64_t t = now_ns();
    int in_win = t >= w->t_meas0 && t < w->t_meas1;
    hot h;
    switch (f.num) {
    case SF_MSG:
        if (decode_hot(f.p, f.len, SF_MSG, &h) != 0) {
            set_first_error(w, "bad Msg");
            return;
        }
        w->st->msgs++;
        if (h.msg_id <= c->last_msg_id && c->sp->conv_id == h.conv_id)
            w->st->unordered++;
        /* A member that never sends sees every msg_id of its conversation. */
        else if (!c->sp->sender && c->last_msg_id && h.msg_id != c->last_msg_id + 1 &&
                 c->sp->conv_id == h.conv_id)
            w->st->gaps++;
        if (c->sp->conv_id == h.conv_id)
            c->last_msg_id = h.msg_id;
        if (in_win) {
            w->st->msgs_win++;
            int64_t ts = cmid_time(h.cmid, h.cmid_len);
            if (ts > 0)
                h_add(&w->st->lat_msg, t - ts);
        }
        break;
    case SF_ACK:
        if (decode_hot(f.p, f.len, SF_ACK, &h) != 0) {
            set_first_error(w, "bad Ack");
            return;
        }
        w->st->acks++;
        if (c->inflight)
            c->inflight--;
        if (h.msg_id > c->last_msg_id && c->sp->conv_id == h.conv_id)
            c->last_msg_id = h.msg_id;
        if (in_win) {
            w->st->acks_win++;
            int64_t ts = cmid_time(h.cmid, h.cmid_len);
            if (ts > 0)
                h_add(&w->st->lat_ack, t - ts);
        }
        if (w->ph->kind == PH_WINDOW)
            fill_window(c);
        break;
    case SF_PONG: {
        const uint8_t *q2 = f.p;
        pbfield g;
        while (pb_next(&q2, f.p + f.len, &g) == 1)
            if (g.num == PONG_NONCE && g.wt == 0) {
                h_add(&w->st->lat_msg, t - (int64_t)g.v);
                if (w->probes)
                    w->probes--;
            }
        break;
    }
    case SF_WELCOME:
        if (c->state == ST_HELLO) {
            c->state = ST_READY;
            w->handshaking--;
            w->resolved++;
            w->st->ok++;
            start_more(w);
            maybe_ready(w);
        }
        break;
    case SF_ERROR: {
        Chat__V1__ServerFrame *sf = chat__v1__server_frame__unpack(NULL, len, p);
        if (sf && sf->error) {
            uint32_t code = sf->error->code < 16 ? sf->error->code : 0;
            w->st->errors[code]++;
            set_first_error(w, "Error %u: %s", sf->error->code,
                            sf->error->message ? sf->error->message : "");
            /* A refused Send is answered: it is no longer in flight. */
            if (sf->error->client_msg_id && sf->error->client_msg_id[0] && c->inflight)
                c->inflight--;
        }
        if (sf)
            chat__v1__server_frame__free_unpacked(sf, NULL);
        break;
    }
    default:
        w->st->other_frames++;
        break;
    }
}

/* Parse whole frames in buf; returns the bytes used. */
static size_t on_ws_bytes(lconn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (len - off >= 2 && c->state != ST_DEAD) {
        const uint8_t *b = buf + off;
        size_t avail = len - off, h = 2;
        uint64_t plen = b[1] & 0x7f;
        if (b[1] & 0x80) {
            set_first_error(c->w, "masked server frame");
            conn_dead(c, 1);
            return off;
        }
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (uint64_t)b[2] << 8 | b[3];
            h = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | b[2 + i];
            h = 10;
        }
        if (avail - h < plen)
            break;
        int opcode = b[0] & 0x0f;
        const uint8_t *pl = b + h;
        off += h + (size_t)plen;
        if (!(b[0] & 0x80)) {
            set_first_error(c->w, "fragmented server frame (not expected from chatd)");
            continue;
        }
        switch (opcode) {
        case 0x2:
            on_server_frame(c, pl, (size_t)plen);
            break;
        case 0x9: /* ping: answer with the same payload */
            ws_put(c, 0xA, pl, (size_t)plen);
            want_flush(c);
            break;
        case 0x8: {
            int code = plen >= 2 ? (pl[0] << 8 | pl[1]) : 1005;
            if (c->state == ST_READY) {
                if (code == 4008)
                    c->w->st->closes_4008++;
                else
                    c->w->st->closes_other++;
                set_first_error(c->w, "server closed a session: %d %.*s", code,
                                plen > 2 ? (int)plen - 2 : 0, (const char *)pl + 2);
            } else {
                c->w->st->fail_close++;
                set_first_error(c->w, "server closed a handshake: %d %.*s", code,
                                plen > 2 ? (int)plen - 2 : 0, (const char *)pl + 2);
            }
            conn_dead(c, 1);
            return off;
        }
        default:
            break;
        }
    }
    return off;
}

static void keep_input(lconn *c, const uint8_t *p, size_t n)
{
    if (n > c->incap) {
        uint8_t *m = realloc(c->in, n);
        if (!m)
            die("out of memory");
        c->in = m;
        c->incap = n;
    }
    memmove(c->in, p, n);
    c->inlen = n;
}

static void send_hello(lconn *c)
{
    char tok[256];
    mint_token(tok, c->sp->user_id);
    Chat__V1__Hello h = CHAT__V1__HELLO__INIT;
    h.token = tok;
    h.device_id = "load";
    Chat__V1__ClientFrame f = CHAT__V1__CLIENT_FRAME__INIT;
    f.kind_case = CHAT__V1__CLIENT_FRAME__KIND_HELLO;
    f.hello = &h;
    uint8_t buf[512];
    size_t n = chat__v1__client_frame__pack(&f, buf);
    ws_put(c, 0x2, buf, n);
    want_flush(c);
}

/* The HTTP answer to the upgrade; returns bytes used, 0 if incomplete. */
static size_t on_http(lconn *c, const uint8_t *buf, size_t len)
{
    const uint8_t *e = memmem(buf, len, "\r\n\r\n", 4);
    if (!e)
        return 0;
    size_t used = (size_t)(e - buf) + 4;
    if (len < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0) {
        if (len >= 12 && !memcmp(buf, "HTTP/1.1 503", 12))
            c->w->st->http_503++;
        c->w->st->fail_http++;
        set_first_error(c->w, "upgrade refused: %.*s", (int)(memchr(buf, '\r', len)
                                                                  ? (const uint8_t *)memchr(buf, '\r', len) - buf
                                                                  : 40),
                        (const char *)buf);
        conn_dead(c, 1);
        return used;
    }
    c->state = ST_HELLO;
    send_hello(c);
    return used;
}

static void on_readable(lconn *c)
{
    worker *w = c->w;
    for (int round = 0; round < 8 && c->state != ST_DEAD; round++) {
        uint8_t *buf;
        size_t have = c->inlen, cap;
        if (have) {
            if (c->incap < have + RBUF_SIZE) {
                uint8_t *m = realloc(c->in, have + RBUF_SIZE);
                if (!m)
                    die("out of memory");
                c->in = m;
                c->incap = have + RBUF_SIZE;
            }
            buf = c->in;
            cap = c->incap;
        } else {
            buf = w->rbuf;
            cap = RBUF_SIZE;
        }
        ssize_t n = read(c->fd, buf + have, cap - have);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            if (c->state != ST_READY)
                w->st->fail_eof++;
            set_first_error(w, "read: %s", strerror(errno));
            conn_dead(c, 1);
            return;
        }
        if (n == 0) {
            if (c->state != ST_READY)
                w->st->fail_eof++;
            else
                w->st->closes_other++;
            set_first_error(w, "server closed a connection (EOF) in state %d", c->state);
            conn_dead(c, 1);
            return;
        }
        size_t len = have + (size_t)n, used = 0;
        if (c->state == ST_HTTP) {
            used = on_http(c, buf, len);
            if (used == 0) {
                if (len > 16384) {
                    w->st->fail_http++;
                    conn_dead(c, 1);
                    return;
                }
                keep_input(c, buf, len);
                continue;
            }
        }
        if (c->state == ST_HELLO || c->state == ST_READY)
            used += on_ws_bytes(c, buf + used, len - used);
        if (c->state == ST_DEAD)
            return;
        if (used < len) {
            keep_input(c, buf + used, len - used);
        } else {
            c->inlen = 0;
            if (c->incap > 65536) {
                free(c->in);
                c->in = NULL;
                c->incap = 0;
            }
        }
        if ((size_t)n < cap - have)
            return; /* the socket is empty */
    }
}

static void on_connected(lconn *c)
{
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        c->w->st->fail_connect++;
        set_first_error(c->w, "connect: %s", strerror(err));
        conn_dead(c, 1);
        return;
    }
    uint8_t key[16];
    char k64[32];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)rnd32(c->w);
    /* standard base64 of 16 bytes: our url alphabet only differs in the
     * last two symbols, which the server's decoder must see as '+' '/' */
    b64url(k64, key, 16);
    for (char *p = k64; *p; p++)
        *p = *p == '-' ? '+' : *p == '_' ? '/' : *p;
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v1\r\n\r\n",
                     tgt[c->sp->target].port, k64);
    out_reserve(c, (size_t)n);
    memcpy(c->out + c->outlen, req, (size_t)n);
    c->outlen += (size_t)n;
    c->state = ST_HTTP;
    flush(c);
}

static void conn_cb(evutil_socket_t fd, short what, void *arg)
{
    lconn *c = arg;
    worker *w = c->w;
    (void)fd;
    if (c->state == ST_CONNECTING) {
        if (what & (EV_WRITE | EV_READ))
            on_connected(c);
    } else {
        if ((what & EV_WRITE) && c->state != ST_DEAD)
            flush(c);
        if ((what & EV_READ) && c->state != ST_DEAD)
            on_readable(c);
    }
    flush_all(w);
}

static void start_conn(worker *w, lconn *c)
{
    const spec *sp = c->sp;
    c->started_ns = now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        w->st->fail_other++;
        set_first_error(w, "socket: %s", strerror(errno));
        c->state = ST_CONNECTING;
        w->handshaking++;
        conn_dead(c, 1);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (sp->src) {
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(0x7f000000u | sp->src);
        if (bind(c->fd, (struct sockaddr *)&sa, sizeof sa)) {
            w->st->fail_other++;
            set_first_error(w, "bind 127.0.0.%u: %s", sp->src, strerror(errno));
            c->state = ST_CONNECTING;
            w->handshaking++;
            conn_dead(c, 1);
            return;
        }
    }
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)tgt[sp->target].port)};
    to.sin_addr.s_addr = tgt[sp->target].addr;
    c->state = ST_CONNECTING;
    w->handshaking++;
    if (connect(c->fd, (struct sockaddr *)&to, sizeof to) && errno != EINPROGRESS) {
        w->st->fail_connect++;
        set_first_error(w, "connect: %s", strerror(errno));
        conn_dead(c, 1);
        return;
    }
    c->want_write = 1;
    c->ev = event_new(w->base, c->fd, EV_READ | EV_WRITE | EV_PERSIST, conn_cb, c);
    if (!c->ev)
        die("event_new failed");
    event_add(c->ev, NULL);
}

static void start_more(worker *w)
{
    while (w->handshaking < MAX_HANDSHAKES && w->next_start < w->n) {
        lconn *c = &w->c[w->next_start++];
        start_conn(w, c);
    }
}

static void maybe_ready(worker *w)
{
    if (w->reported || w->resolved < w->n)
        return;
    w->reported = 1;
    w->st->ready = 1;
    char b = 'R';
    if (write(w->syncfd, &b, 1) != 1)
        _exit(3);
}

/* ---- worker timers ---- */

static void finish(worker *w)
{
    uint64_t left = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->c[i].state == ST_READY)
            left += w->c[i].inflight;
    w->st->inflight_end = left;
    w->st->done = 1;
    char b = 'D';
    if (write(w->syncfd, &b, 1) != 1)
        _exit(3);
}

static void arm(worker *w, struct event *ev, int64_t at)
{
    int64_t d = at - now_ns();
    if (d < 0)
        d = 0;
    struct timeval tv = {d / NS, (d % NS) / 1000};
    evtimer_add(ev, &tv);
}

enum { T_HANDSHAKE = 1, T_GO, T_STOP, T_DRAIN, T_PROBE };
static int timer_what;

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    worker *w = arg;
    (void)fd;
    (void)what;
    if (!w->sending || !w->nsenders)
        return;
    int64_t t = now_ns();
    double rate = w->ph->rate / w->ph->nworkers;
    if (t - w->last_tick > 2000000 && w->last_tick)
        w->st->late_ticks++;
    w->last_tick = t;
    uint64_t due = (uint64_t)((double)(t - w->t_go) * rate / 1e9);
    size_t misses = 0;
    while (w->paced_sent < due && misses < w->nsenders) {
        lconn *c = w->senders[w->rr++ % w->nsenders];
        if (c->state != ST_READY) {
            misses++;
            continue;
        }
        misses = 0;
        /* The time it should have gone out: lateness counts as latency. */
        int64_t stamp = w->t_go + (int64_t)((double)w->paced_sent * 1e9 / rate);
        send_one(c, stamp);
        w->paced_sent++;
    }
    flush_all(w);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    worker *w = arg;
    (void)fd;
    (void)what;
    int64_t t = now_ns();
    switch (timer_what) {
    case T_HANDSHAKE: {
        /* Sessions past their time without Welcome are "stuck": usually in
         * the server's accept queue, never accepted. They stay open. */
        for (size_t i = 0; i < w->next_start; i++) {
            lconn *c = &w->c[i];
            if (c->state != ST_READY && c->state != ST_DEAD && c->state != ST_IDLE &&
                t - c->started_ns > w->ph->handshake_timeout_ns) {
                w->st->stuck++;
                w->handshaking--;
                w->resolved++;
                c->state = ST_IDLE; /* not counted again */
                if (c->ev)
                    event_del(c->ev);
            }
        }
        start_more(w);
        maybe_ready(w);
        if (!w->reported)
            arm(w, w->timer_ev, t + NS / 2);
        break;
    }
    case T_GO:
        w->sending = 1;
        if (w->ph->kind == PH_WINDOW) {
            for (size_t i = 0; i < w->nsenders; i++)
                fill_window(w->senders[i]);
            flush_all(w);
        } else if (w->ph->kind == PH_PACED) {
            struct timeval ms = {0, 1000};
            w->tick_ev = event_new(w->base, -1, EV_PERSIST, tick_cb, w);
            event_add(w->tick_ev, &ms);
        }
        timer_what = T_STOP;
        arm(w, w->timer_ev, w->t_stop);
        break;
    case T_STOP:
        w->sending = 0;
        if (w->tick_ev)
            event_del(w->tick_ev);
        timer_what = T_DRAIN;
        arm(w, w->timer_ev, t + 10000000);
        break;
    case T_PROBE:
        if (w->probes == 0 || t - w->t_go > (int64_t)(opt.drain * 1e9)) {
            w->st->inflight_end = w->probes;
            w->st->done = 1;
            char b = 'D';
            if (write(w->syncfd, &b, 1) != 1)
                _exit(3);
            break;
        }
        arm(w, w->timer_ev, t + 10000000);
        break;
    case T_DRAIN: {
        uint64_t left = 0;
        for (size_t i = 0; i < w->n; i++)
            if (w->c[i].state == ST_READY)
                left += w->c[i].inflight;
        if (left == 0 || t - w->t_stop > (int64_t)(opt.drain * 1e9)) {
            finish(w);
            break;
        }
        arm(w, w->timer_ev, t + 10000000);
        break;
    }
    }
}

static void sync_cb(evutil_socket_t fd, short what, void *arg)
{
    worker *w = arg;
    (void)what;
    char b;
    ssize_t n = read(fd, &b, 1);
    if (n <= 0 || b == 'Q') {
        event_base_loopbreak(w->base);
        return;
    }
    if (b == 'G' && w->ph->kind == PH_IDLE) {
        /* Are the sessions still served? A Ping on every 50th one, the
         * round trip to its Pong. */
        w->t_go = now_ns();
        for (size_t i = 0; i < w->n; i += 50) {
            lconn *c = &w->c[i];
            if (c->state != ST_READY)
                continue;
            Chat__V1__Ping pg = CHAT__V1__PING__INIT;
            pg.nonce = now_ns();
            Chat__V1__ClientFrame f = CHAT__V1__CLIENT_FRAME__INIT;
            f.kind_case = CHAT__V1__CLIENT_FRAME__KIND_PING;
            f.ping = &pg;
            uint8_t buf[32];
            size_t n2 = chat__v1__client_frame__pack(&f, buf);
            ws_put(c, 0x2, buf, n2);
            flush(c);
            w->probes++;
        }
        timer_what = T_PROBE;
        arm(w, w->timer_ev, now_ns() + 10000000);
    } else if (b == 'G') {
        w->t_go = shm->t_go;
        w->t_meas0 = shm->t_meas0;
        w->t_meas1 = shm->t_meas1;
        w->t_stop = shm->t_stop;
        timer_what = T_GO;
        arm(w, w->timer_ev, w->t_go);
    }
}

static int worker_main(const phase *ph, int idx, int syncfd)
{
    worker wk;
    memset(&wk, 0, sizeof wk);
    worker *w = &wk;
    w->idx = idx;
    w->ph = ph;
    w->st = &shm->w[idx];
    w->syncfd = syncfd;
    w->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)getpid() << 17) ^ (uint64_t)now_ns();
    w->t_meas0 = w->t_meas1 = INT64_MAX;
    /* Without a precise timer libevent's epoll backend wakes a 1 ms timer
     * every 4 ms here, which would show up as 2 ms of latency. */
    struct event_config *cfg = event_config_new();
    if (cfg)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    w->base = cfg ? event_base_new_with_config(cfg) : NULL;
    if (cfg)
        event_config_free(cfg);
    w->rbuf = malloc(RBUF_SIZE);
    char *body = malloc((size_t)opt.body_bytes + 1);
    if (!w->base || !w->rbuf || !body)
        die("worker: out of memory");
    memset(body, 'x', (size_t)opt.body_bytes);
    body[opt.body_bytes] = 0;
    w->body = body;
    for (size_t i = (size_t)idx; i < ph->nconns; i += (size_t)ph->nworkers)
        w->n++;
    w->c = calloc(w->n ? w->n : 1, sizeof *w->c);
    w->senders = calloc(w->n ? w->n : 1, sizeof *w->senders);
    if (!w->c || !w->senders)
        die("worker: out of memory");
    size_t k = 0;
    for (size_t i = (size_t)idx; i < ph->nconns; i += (size_t)ph->nworkers, k++) {
        w->c[k].w = w;
        w->c[k].sp = &ph->conns[i];
        w->c[k].fd = -1;
        if (ph->conns[i].sender)
            w->senders[w->nsenders++] = &w->c[k];
    }
    w->st->conns = w->n;
    w->sync_ev = event_new(w->base, syncfd, EV_READ | EV_PERSIST, sync_cb, w);
    w->timer_ev = evtimer_new(w->base, timer_cb, w);
    event_add(w->sync_ev, NULL);
    timer_what = T_HANDSHAKE;
    arm(w, w->timer_ev, now_ns() + NS / 2);
    start_more(w);
    flush_all(w);
    maybe_ready(w);
    event_base_dispatch(w->base);
    return 0;
}

/* ---- main process: chatd, REST, phases ---- */

/* A blocking connection to server t. */
static int connect_to(int t, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tgt[t].port)};
    to.sin_addr.s_addr = tgt[t].addr;
    if (connect(fd, (struct sockaddr *)&to, sizeof to)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read one HTTP response (Content-Length bodies only) from fd, with rest
 * holding bytes already read. Returns the status and the body (malloc'd)
 * or -1. */
typedef struct rbuf_t {
    char *p;
    size_t len, cap;
} rbuf_t;

static int http_read(int fd, rbuf_t *rb, char **body, size_t *blen)
{
    for (;;) {
        char *e = rb->len ? memmem(rb->p, rb->len, "\r\n\r\n", 4) : NULL;
        if (e) {
            size_t hl = (size_t)(e - rb->p) + 4;
            int status = 0;
            if (sscanf(rb->p, "HTTP/1.1 %d", &status) != 1)
                return -1;
            size_t cl = 0;
            for (char *l = rb->p; l < e; l = strstr(l, "\r\n") + 2) {
                if (!strncasecmp(l, "Content-Length:", 15))
                    cl = strtoul(l + 15, NULL, 10);
                if (!strstr(l, "\r\n"))
                    break;
            }
            if (rb->len >= hl + cl) {
                *body = malloc(cl + 1);
                if (!*body)
                    return -1;
                memcpy(*body, rb->p + hl, cl);
                (*body)[cl] = 0;
                *blen = cl;
                memmove(rb->p, rb->p + hl + cl, rb->len - hl - cl);
                rb->len -= hl + cl;
                rb->p[rb->len] = 0;
                return status;
            }
        }
        if (rb->cap - rb->len < 65536) {
            size_t cap = rb->cap ? rb->cap * 2 : 131072;
            char *n = realloc(rb->p, cap);
            if (!n)
                return -1;
            rb->p = n;
            rb->cap = cap;
        }
        ssize_t n = read(fd, rb->p + rb->len, rb->cap - rb->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        rb->len += (size_t)n;
        rb->p[rb->len] = 0;
    }
}

static int http_get_at(int t, const char *path, char **body)
{
    int fd = connect_to(t, 3000);
    if (fd < 0)
        return -1;
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     path);
    rbuf_t rb = {0};
    size_t blen;
    int st = write_all(fd, req, (size_t)n) ? -1 : http_read(fd, &rb, body, &blen);
    free(rb.p);
    close(fd);
    return st;
}

/* A counter from /metrics: the sum of the samples of that name. */
static double metric(const char *text, const char *name)
{
    double sum = 0;
    size_t nl = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (!strncmp(l, name, nl) && (l[nl] == ' ' || l[nl] == '{'))
            sum += strtod(strchr(l + nl, ' ') + 1, NULL);
    }
    return sum;
}

typedef struct msnap {
    int ok;
    double appended, deliveries, frames_in, frames_out, slow, batches, batch_records;
    double errors;
    double append_ms_sum, append_n;
    double rejected;
} msnap;

/* /metrics of every server, summed (ok only if every one answered). */
static msnap metrics_snap(void)
{
    msnap m = {.ok = 1};
    for (int t = 0; t < ntgt; t++) {
        char *b = NULL;
        if (http_get_at(t, "/metrics", &b) != 200 || !b) {
            m.ok = 0;
            free(b);
            continue;
        }
        m.appended += metric(b, "chatd_messages_appended_total");
        m.deliveries += metric(b, "chatd_deliveries_total");
        m.frames_in += metric(b, "chatd_frames_in_total");
        m.frames_out += metric(b, "chatd_frames_out_total");
        m.slow += metric(b, "chatd_slow_consumer_disconnects_total");
        m.batches += metric(b, "chatd_fsync_batch_records_count");
        m.batch_records += metric(b, "chatd_fsync_batch_records_sum");
        m.errors += metric(b, "chatd_errors_total");
        m.append_ms_sum += metric(b, "chatd_append_latency_ms_sum");
        m.append_n += metric(b, "chatd_append_latency_ms_count");
        m.rejected += metric(b, "chatd_connections_rejected_total");
        free(b);
    }
    return m;
}

/* Create conversations through REST: batches of requests pipelined on
 * REST_CONNS connections at once (connection k to server k mod N), because
 * chatd answers the requests of one connection one after the other, and in a
 * cluster each is a replicated write. creators[i] makes body[i]; conv_ids[i]
 * gets the result. */
#define REST_CONNS 8
static void rest_create(size_t n, const uint64_t *creators, char **bodies, uint64_t *conv_ids)
{
    int fds[REST_CONNS];
    rbuf_t rb[REST_CONNS], wb = {0};
    memset(rb, 0, sizeof rb);
    for (int c = 0; c < REST_CONNS; c++) {
        fds[c] = connect_to(c % ntgt, 30000);
        if (fds[c] < 0)
            die("REST: cannot connect to chatd: %s", strerror(errno));
    }
    const size_t batch = 16;
    for (size_t i0 = 0; i0 < n; i0 += batch * REST_CONNS) {
        size_t sent[REST_CONNS] = {0};
        for (int c = 0; c < REST_CONNS; c++) {
            size_t i = i0 + (size_t)c * batch;
            if (i >= n)
                break;
            size_t m = n - i < batch ? n - i : batch;
            /* A batch goes out in one write (pipelined requests). */
            wb.len = 0;
            for (size_t k = 0; k < m; k++) {
                char tok[256], head[512];
                mint_token(tok, creators[i + k]);
                size_t bl = strlen(bodies[i + k]);
                int hn = snprintf(head, sizeof head,
                                  "POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\n"
                                  "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                                  "Content-Length: %zu\r\n\r\n",
                                  tok, bl);
                if (wb.cap < wb.len + (size_t)hn + bl) {
                    size_t cap = (wb.len + (size_t)hn + bl) * 2;
                    char *np = realloc(wb.p, cap);
                    if (!np)
                        die("out of memory");
                    wb.p = np;
                    wb.cap = cap;
                }
                memcpy(wb.p + wb.len, head, (size_t)hn);
                memcpy(wb.p + wb.len + hn, bodies[i + k], bl);
                wb.len += (size_t)hn + bl;
            }
            if (write_all(fds[c], wb.p, wb.len))
                die("REST: write: %s", strerror(errno));
            sent[c] = m;
        }
        for (int c = 0; c < REST_CONNS; c++) {
            size_t i = i0 + (size_t)c * batch;
            for (size_t k = 0; k < sent[c]; k++) {
                char *body = NULL;
                size_t blen = 0;
                int st = http_read(fds[c], &rb[c], &body, &blen);
                if (st != 201 && st != 200)
                    die("REST: POST /api/v1/conversations answered %d: %s", st,
                        body ? body : "");
                const char *p = body ? strstr(body, "\"conv_id\"") : NULL;
                if (p)
                    p = strchr(p, ':');
                if (!p)
                    die("REST: no conv_id in %s", body ? body : "");
                conv_ids[i + k] = strtoull(p + 1, NULL, 10);
                free(body);
            }
        }
    }
    for (int c = 0; c < REST_CONNS; c++) {
        free(rb[c].p);
        close(fds[c]);
    }
    free(wb.p);
}

static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* The soft open-file limit of a process (/proc/PID/limits), -1 if unknown. */
static long fd_limit(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "Max open files", 14))
            v = strtol(line + 14, NULL, 10);
    fclose(f);
    return v;
}

static int count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* CPU seconds of a process: [0] its main thread (chatd's event loop), [1]
 * all its other threads (the engine's writers and sealer). */
typedef struct cpu {
    double loop, other;
} cpu;

static double stat_cpu(const char *path)
{
    char buf[1024];
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* fields after comm: state(3) ... utime(14) stime(15) */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    for (char *t = strtok(p + 1, " "); t; t = strtok(NULL, " ")) {
        field++;
        if (field == 14)
            ut = strtoull(t, NULL, 10);
        else if (field == 15) {
            st = strtoull(t, NULL, 10);
            break;
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static cpu proc_cpu(pid_t pid)
{
    cpu c = {0, 0};
    char path[128];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return c;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/stat", (int)pid, e->d_name);
        double s = stat_cpu(path);
        if (atoi(e->d_name) == pid)
            c.loop += s;
        else
            c.other += s;
    }
    closedir(d);
    return c;
}

/* CPU seconds of the whole machine (all CPUs, /proc/stat): busy in
 * processes (user, nice, system), in interrupts (irq, softirq: on loopback
 * that is mostly TCP receive work, not charged to any process), and stolen
 * by the hypervisor. */
typedef struct mcpu {
    double procs, irq, steal;
} mcpu;

static mcpu machine_cpu(void)
{
    mcpu m = {0, 0, 0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return m;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8)
        return m;
    double tck = (double)sysconf(_SC_CLK_TCK);
    m.procs = (double)(v[0] + v[1] + v[2]) / tck;
    m.irq = (double)(v[5] + v[6]) / tck;
    m.steal = (double)v[7] / tck;
    return m;
}

/* The servers under test together: CPU (main threads, other threads) and
 * VmRSS; -1 for memory when no process id is known. */
static cpu servers_cpu(void)
{
    cpu c = {0, 0};
    for (int t = 0; t < ntgt; t++)
        if (tgt[t].pid > 0) {
            cpu x = proc_cpu(tgt[t].pid);
            c.loop += x.loop;
            c.other += x.other;
        }
    return c;
}

static long servers_rss_kb(void)
{
    long kb = -1;
    for (int t = 0; t < ntgt; t++) {
        long x = tgt[t].pid > 0 ? rss_kb(tgt[t].pid) : -1;
        if (x >= 0)
            kb = (kb < 0 ? 0 : kb) + x;
    }
    return kb;
}

static double workers_cpu(int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        if (worker_pids[i] > 0) {
            cpu c = proc_cpu(worker_pids[i]);
            s += c.loop + c.other;
        }
    return s;
}

static void start_chatd(void)
{
    char path[512], data[512], log[512], listen[64], sf[512];
    snprintf(data, sizeof data, "%s/data", tmpdir);
    snprintf(log, sizeof log, "%s/chatd.log", tmpdir);
    snprintf(sf, sizeof sf, "%s/secret", tmpdir);
    /* A free port: bind to 0, read it, release it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(0x7f000001u);
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl))
        die("cannot find a free port: %s", strerror(errno));
    int port = ntohs(sa.sin_port);
    close(fd);
    ntgt = 1;
    tgt[0] = (struct target){htonl(0x7f000001u), port, 0};
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(path, sizeof path, "%s", opt.chatd);
    const char *argv[64];
    int a = 0;
    argv[a++] = path;
    argv[a++] = "--data";
    argv[a++] = data;
    argv[a++] = "--listen";
    argv[a++] = listen;
    argv[a++] = "--secret-file";
    argv[a++] = sf;
    /* The benchmark measures the server, not its limits. */
    argv[a++] = "--user-msgs-per-sec=1000000";
    argv[a++] = "--user-msgs-burst=1000000";
    argv[a++] = "--conn-frames-per-sec=1000000";
    argv[a++] = "--conn-frames-burst=1000000";
    argv[a++] = "--max-connections=1000000";
    argv[a++] = "--idle-timeout-ms=600000";
    argv[a++] = "--ping-interval-ms=300000";
    argv[a++] = "--handshake-timeout-ms=120000";
    for (int i = 0; i < opt.nextra; i++)
        argv[a++] = opt.extra_args[i];
    argv[a] = NULL;
    printf("chatd: %s", path);
    for (int i = 1; i < a; i++)
        printf(" %s", argv[i]);
    printf("\n");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (lfd >= 0) {
            dup2(lfd, 1);
            dup2(lfd, 2);
        }
        struct rlimit rl;
        if (!getrlimit(RLIMIT_NOFILE, &rl)) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        execv(path, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    chatd_pid = pid;
    tgt[0].pid = pid;
    int64_t deadline = now_ns() + 20 * NS;
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            chatd_pid = 0;
            die("chatd exited at start (status %d); see %s", status, log);
        }
        char *b = NULL;
        int st = http_get_at(0, "/healthz", &b);
        free(b);
        if (st == 200)
            break;
        if (now_ns() > deadline)
            die("chatd did not answer /healthz within 20 s; see %s", log);
        sleep_ms(50);
    }
}

static int stop_chatd(void)
{
    if (chatd_pid <= 0)
        return -1;
    kill(chatd_pid, SIGTERM);
    int64_t deadline = now_ns() + 30 * NS;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(chatd_pid, &status, WNOHANG);
        if (r == chatd_pid)
            break;
        if (now_ns() > deadline) {
            fprintf(stderr, "load: chatd did not stop within 30 s of SIGTERM; killing it\n");
            kill(chatd_pid, SIGKILL);
            waitpid(chatd_pid, &status, 0);
            break;
        }
        sleep_ms(20);
    }
    chatd_pid = 0;
    return status;
}

/* ---- running a phase ---- */

typedef struct presult {
    wstats tot;
    double seconds;
    double cpu_seconds; /* between the two CPU samples (about seconds) */
    cpu srv0, srv1;
    double gen_cpu;
    double others_cpu; /* the rest of the machine: other processes, kernel threads */
    double irq_cpu, steal_cpu;
    msnap m0, m1;
    long rss0_kb, rss1_kb, rss_after_close_kb;
    int fds0, fds1;
    long fd_limit;
    double srv_cpu_hold; /* idle: chatd CPU share while holding the sessions */
    double connect_s;
} presult;

static int syncfds[MAX_WORKERS];

static void fork_workers(const phase *ph)
{
    memset(shm, 0, sizeof *shm);
    for (int i = 0; i < ph->nworkers; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
            die("socketpair: %s", strerror(errno));
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(sv[0]);
            for (int k = 0; k < i; k++)
                close(syncfds[k]);
            chatd_pid = 0;
            memset(worker_pids, 0, sizeof worker_pids);
            worker_main(ph, i, sv[1]);
            _exit(0);
        }
        close(sv[1]);
        syncfds[i] = sv[0];
        worker_pids[i] = pid;
    }
}

/* Wait for one byte c from every worker. */
static void wait_all(const phase *ph, char want)
{
    for (int i = 0; i < ph->nworkers; i++) {
        char b;
        ssize_t n;
        do
            n = read(syncfds[i], &b, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1 || b != want)
            die("%s: worker %d died (%zd, %s)", ph->name, i, n, n < 0 ? strerror(errno) : "EOF");
    }
}

static void tell_all(const phase *ph, char b)
{
    for (int i = 0; i < ph->nworkers; i++)
        if (write(syncfds[i], &b, 1) != 1)
            die("%s: worker %d gone", ph->name, i);
}

static void reap_workers(const phase *ph)
{
    for (int i = 0; i < ph->nworkers; i++) {
        int status;
        if (waitpid(worker_pids[i], &status, 0) == worker_pids[i] &&
            (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
            die("%s: worker %d ended with wait status %d", ph->name, i, status);
        worker_pids[i] = 0;
        close(syncfds[i]);
    }
}

static void sum_stats(const phase *ph, wstats *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < ph->nworkers; i++) {
        const wstats *s = &shm->w[i];
        t->conns += s->conns;
        t->ok += s->ok;
        t->failed += s->failed;
        t->stuck += s->stuck;
        t->fail_connect += s->fail_connect;
        t->fail_eof += s->fail_eof;
        t->fail_http += s->fail_http;
        t->fail_close += s->fail_close;
        t->fail_other += s->fail_other;
        t->http_503 += s->http_503;
        t->sent += s->sent;
        t->acks += s->acks;
        t->msgs += s->msgs;
        t->sent_win += s->sent_win;
        t->acks_win += s->acks_win;
        t->msgs_win += s->msgs_win;
        t->inflight_end += s->inflight_end;
        for (int k = 0; k < 16; k++)
            t->errors[k] += s->errors[k];
        t->closes_4008 += s->closes_4008;
        t->closes_other += s->closes_other;
        t->unordered += s->unordered;
        t->gaps += s->gaps;
        t->other_frames += s->other_frames;
        t->late_ticks += s->late_ticks;
        if (!t->first_error[0] && s->first_error[0])
            memcpy(t->first_error, s->first_error, sizeof t->first_error);
        h_merge(&t->lat_msg, &s->lat_msg);
        h_merge(&t->lat_ack, &s->lat_ack);
        h_merge(&t->lag, &s->lag);
    }
}

/* Wait until every server has closed what the last phase left behind:
 * only our own /metrics request open. */
static void wait_server_settled(void)
{
    int64_t deadline = now_ns() + 60 * NS;
    for (int t = 0; t < ntgt; t++) {
        while (now_ns() < deadline) {
            char *b = NULL;
            int st = http_get_at(t, "/metrics", &b);
            double open = st == 200 && b ? metric(b, "chatd_connections_open") : -1;
            free(b);
            if (open >= 0 && open <= 1)
                break;
            sleep_ms(100);
        }
    }
    sleep_ms(300);
}

static void run_load_phase(const phase *ph, presult *r)
{
    memset(r, 0, sizeof *r);
    int64_t t0 = now_ns();
    fork_workers(ph);
    wait_all(ph, 'R');
    r->connect_s = (double)(now_ns() - t0) / 1e9;
    sum_stats(ph, &r->tot);
    if (r->tot.ok < r->tot.conns)
        fprintf(stderr, "load: %s: only %" PRIu64 " of %" PRIu64 " sessions opened (%s)\n",
                ph->name, r->tot.ok, r->tot.conns, r->tot.first_error);
    /* Let presence and other connect-time traffic settle. */
    sleep_ms(500);
    int64_t t = now_ns() + 100000000;
    shm->t_go = t;
    shm->t_meas0 = t + (int64_t)(opt.warmup * 1e9);
    shm->t_meas1 = shm->t_meas0 + (int64_t)(opt.seconds * 1e9);
    shm->t_stop = shm->t_meas1;
    r->seconds = opt.seconds;
    tell_all(ph, 'G');
    sleep_until(shm->t_meas0);
    /* CPU first, /metrics after: an overloaded server can take seconds to
     * answer, which must not shift the CPU window. */
    int64_t c0 = now_ns();
    r->srv0 = servers_cpu();
    double g0 = workers_cpu(ph->nworkers);
    mcpu b0 = machine_cpu();
    r->rss0_kb = servers_rss_kb();
    r->m0 = metrics_snap();
    sleep_until(shm->t_meas1);
    r->srv1 = servers_cpu();
    r->gen_cpu = workers_cpu(ph->nworkers) - g0;
    mcpu b1 = machine_cpu();
    r->cpu_seconds = (double)(now_ns() - c0) / 1e9;
    r->others_cpu = b1.procs - b0.procs - r->gen_cpu -
                    (r->srv1.loop + r->srv1.other - r->srv0.loop - r->srv0.other);
    r->irq_cpu = b1.irq - b0.irq;
    r->steal_cpu = b1.steal - b0.steal;
    r->rss1_kb = servers_rss_kb();
    r->m1 = metrics_snap();
    wait_all(ph, 'D');
    sum_stats(ph, &r->tot);
    tell_all(ph, 'Q');
    reap_workers(ph);
}

static void run_idle_phase(const phase *ph, presult *r)
{
    memset(r, 0, sizeof *r);
    r->rss0_kb = rss_kb(chatd_pid);
    r->fds0 = count_fds(chatd_pid);
    r->fd_limit = fd_limit(chatd_pid);
    int64_t t0 = now_ns();
    fork_workers(ph);
    wait_all(ph, 'R');
    r->connect_s = (double)(now_ns() - t0) / 1e9;
    sleep_ms(1000); /* let the server finish what the Hellos started */
    r->rss1_kb = rss_kb(chatd_pid);
    r->fds1 = count_fds(chatd_pid);
    /* Is the server idle while it holds them? (At its open-file limit a
     * level-triggered listening socket can keep the loop spinning.) */
    cpu a = proc_cpu(chatd_pid);
    int64_t h0 = now_ns();
    sleep_ms(2000);
    cpu b = proc_cpu(chatd_pid);
    r->srv_cpu_hold = (b.loop + b.other - a.loop - a.other) / ((double)(now_ns() - h0) / 1e9);
    tell_all(ph, 'G');
    wait_all(ph, 'D');
    sum_stats(ph, &r->tot);
    tell_all(ph, 'Q');
    reap_workers(ph);
    wait_server_settled();
    r->rss_after_close_kb = rss_kb(chatd_pid);
    r->m1 = metrics_snap();
}

/* ---- report ---- */

static void row(const char *ph, const char *what, const char *value, const char *target,
                const char *verdict)
{
    printf("%-11s %-50s %-24s %-14s %s\n", ph, what, value, target, verdict);
}

static const char *verdict(int ok) { return ok ? "PASS" : "MISS"; }

/* CPU time per unit of work (a message, or a delivery for fanout), in
 * microseconds: what the work costs whatever else shares the machine. */
static void cpu_per_unit(const presult *r, double units, double *loop, double *srv, double *gen,
                         double *irq)
{
    double u = units > 0 ? units : 1;
    *loop = (r->srv1.loop - r->srv0.loop) / u * 1e6;
    *srv = (r->srv1.loop + r->srv1.other - r->srv0.loop - r->srv0.other) / u * 1e6;
    *gen = r->gen_cpu / u * 1e6;
    *irq = r->irq_cpu / u * 1e6;
}

static void print_common(const char *name, const presult *r, double units, const char *unit)
{
    const wstats *t = &r->tot;
    double loop = (r->srv1.loop - r->srv0.loop) / r->cpu_seconds;
    double other = (r->srv1.other - r->srv0.other) / r->cpu_seconds;
    char v[64];
    snprintf(v, sizeof v, "%.0f%% + %.0f%%", loop * 100, other * 100);
    row(name, "chatd CPU: event loop + engine threads", v, "", "");
    snprintf(v, sizeof v, "%.0f%%", r->gen_cpu / r->cpu_seconds * 100);
    row(name, "generator CPU (all workers)", v, "", "");
    snprintf(v, sizeof v, "%.0f%%", r->others_cpu / r->cpu_seconds * 100);
    row(name, "other processes on the machine", v, "", "");
    snprintf(v, sizeof v, "%.0f%% / %.0f%%", r->irq_cpu / r->cpu_seconds * 100,
             r->steal_cpu / r->cpu_seconds * 100);
    row(name, "interrupts (loopback TCP) / stolen by host", v, "", "");
    double lp, sv, gn, iq;
    cpu_per_unit(r, units, &lp, &sv, &gn, &iq);
    char what[64];
    snprintf(what, sizeof what, "CPU us per %s: chatd (loop) + gen + irq", unit);
    snprintf(v, sizeof v, "%.2f (%.2f) + %.2f + %.2f", sv, lp, gn, iq);
    row(name, what, v, "", "");
    if (r->m1.ok && r->m0.ok && r->m1.batches > r->m0.batches) {
        snprintf(v, sizeof v, "%.1f",
                 (r->m1.batch_records - r->m0.batch_records) / (r->m1.batches - r->m0.batches));
        row(name, "records per fdatasync (server)", v, "", "");
    }
    if (r->m1.ok && r->m0.ok && r->m1.appended > r->m0.appended) {
        snprintf(v, sizeof v, "%.0f B",
                 (double)(r->rss1_kb - r->rss0_kb) * 1024 / (r->m1.appended - r->m0.appended));
        row(name, "chatd VmRSS growth per message stored", v, "", "");
    }
    if (r->m1.ok && r->m0.ok && r->m1.append_n > r->m0.append_n) {
        snprintf(v, sizeof v, "%.2f ms",
                 (r->m1.append_ms_sum - r->m0.append_ms_sum) / (r->m1.append_n - r->m0.append_n));
        row(name, "server Send->durable, mean (its metric)", v, "", "");
    }
    uint64_t errs = 0;
    for (int k = 0; k < 16; k++)
        errs += t->errors[k];
    if (errs || t->closes_4008 || t->closes_other || t->unordered || t->gaps ||
        t->inflight_end || t->ok < t->conns) {
        char e[240];
        snprintf(e, sizeof e,
                 "sessions %" PRIu64 "/%" PRIu64 ", errors %" PRIu64 ", 4008 %" PRIu64
                 ", other closes %" PRIu64 ", unordered %" PRIu64 ", gaps %" PRIu64
                 ", unacked %" PRIu64,
                 t->ok, t->conns, errs, t->closes_4008, t->closes_other, t->unordered, t->gaps,
                 t->inflight_end);
        printf("%-11s ! %s\n", name, e);
        if (t->first_error[0])
            printf("%-11s ! first: %s\n", name, t->first_error);
    }
}

static int integrity_failed;

static void result_line(const char *name, const presult *r, double units, const char *extra)
{
    double lp, sv, gn, iq;
    cpu_per_unit(r, units, &lp, &sv, &gn, &iq);
    const wstats *t = &r->tot;
    uint64_t errs = 0;
    for (int k = 0; k < 16; k++)
        errs += t->errors[k];
    if (t->unordered || t->gaps || t->inflight_end) {
        printf("%-11s ! integrity: %" PRIu64 " out of order, %" PRIu64 " gaps, %" PRIu64
               " Sends never answered\n",
               name, t->unordered, t->gaps, t->inflight_end);
        integrity_failed = 1;
    }
    printf("RESULT bench=chatd case=%s sessions=%" PRIu64 " errors=%" PRIu64
           " closes_4008=%" PRIu64 " unacked=%" PRIu64 " unordered=%" PRIu64 " gaps=%" PRIu64
           " srv_loop_cpu=%.2f"
           " srv_other_cpu=%.2f gen_cpu=%.2f others_cpu=%.2f irq_cpu=%.2f steal_cpu=%.2f"
           " rss_per_msg=%.0f us_loop=%.2f us_chatd=%.2f us_gen=%.2f us_irq=%.2f %s\n",
           name, t->ok, errs, t->closes_4008, t->inflight_end, t->unordered, t->gaps,
           (r->srv1.loop - r->srv0.loop) / (r->cpu_seconds > 0 ? r->cpu_seconds : 1),
           (r->srv1.other - r->srv0.other) / (r->cpu_seconds > 0 ? r->cpu_seconds : 1),
           r->gen_cpu / (r->cpu_seconds > 0 ? r->cpu_seconds : 1),
           r->others_cpu / (r->cpu_seconds > 0 ? r->cpu_seconds : 1),
           r->irq_cpu / (r->cpu_seconds > 0 ? r->cpu_seconds : 1),
           r->steal_cpu / (r->cpu_seconds > 0 ? r->cpu_seconds : 1),
           r->m1.appended > r->m0.appended
               ? (double)(r->rss1_kb - r->rss0_kb) * 1024 / (r->m1.appended - r->m0.appended)
               : 0.0,
           lp, sv, gn, iq, extra);
}

/* ---- main ---- */

static int has_phase(const char *name)
{
    char buf[128];
    snprintf(buf, sizeof buf, ",%s,", opt.phases);
    char want[64];
    snprintf(want, sizeof want, ",%s,", name);
    return strstr(buf, want) != NULL;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void on_signal(int sig)
{
    kill_children();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int parse_int(const char *name, const char *v, int min, int max)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < min || x > max) {
        fprintf(stderr, "load: %s must be an integer in %d..%d\n", name, min, max);
        exit(2);
    }
    return (int)x;
}

static double parse_double(const char *name, const char *v, double min, double max)
{
    char *end;
    double x = strtod(v, &end);
    if (*end || !(x >= min && x <= max)) {
        fprintf(stderr, "load: %s must be a number in %g..%g\n", name, min, max);
        exit(2);
    }
    return x;
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--keep")) {
            opt.keep = 1;
            continue;
        }
        const char *v = NULL;
        char name[64];
        const char *eq = strchr(a, '=');
        if (eq && !strncmp(a, "--", 2)) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
            v = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
            if (i + 1 < argc)
                v = argv[++i];
        }
        if (!v) {
            fprintf(stderr, "load: %s needs a value (see --help)\n", name);
            exit(2);
        }
        if (!strcmp(name, "--chatd"))
            opt.chatd = v;
        else if (!strcmp(name, "--connect"))
            opt.connect = v;
        else if (!strcmp(name, "--secret-file"))
            opt.secret_file = v;
        else if (!strcmp(name, "--pids"))
            opt.pids = v;
        else if (!strcmp(name, "--placement")) {
            if (strcmp(v, "all") && strcmp(v, "leaders")) {
                fprintf(stderr, "load: --placement is all or leaders\n");
                exit(2);
            }
            opt.leaders_only = !strcmp(v, "leaders");
        }
        else if (!strcmp(name, "--phases"))
            snprintf(opt.phases, sizeof opt.phases, "%s", v);
        else if (!strcmp(name, "--seconds"))
            opt.seconds = parse_double(name, v, 0.1, 3600);
        else if (!strcmp(name, "--warmup"))
            opt.warmup = parse_double(name, v, 0, 3600);
        else if (!strcmp(name, "--drain"))
            opt.drain = parse_double(name, v, 0.1, 3600);
        else if (!strcmp(name, "--workers"))
            opt.workers = parse_int(name, v, 1, MAX_WORKERS);
        else if (!strcmp(name, "--pairs"))
            opt.pairs = parse_int(name, v, 1, 1000000);
        else if (!strcmp(name, "--shapes"))
            snprintf(opt.shapes, sizeof opt.shapes, "%s", v);
        else if (!strcmp(name, "--body-bytes"))
            opt.body_bytes = parse_int(name, v, 1, 60000);
        else if (!strcmp(name, "--rate"))
            opt.rate = parse_int(name, v, 1, 10000000);
        else if (!strcmp(name, "--groups"))
            opt.groups = parse_int(name, v, 1, 100000);
        else if (!strcmp(name, "--group-size"))
            opt.group_size = parse_int(name, v, 2, 100000);
        else if (!strcmp(name, "--group-senders"))
            opt.group_senders = parse_int(name, v, 1, 100000);
        else if (!strcmp(name, "--group-window"))
            opt.group_window = parse_int(name, v, 1, 100000);
        else if (!strcmp(name, "--idle"))
            opt.idle = parse_int(name, v, 1, 10000000);
        else if (!strcmp(name, "--idle-per-proc"))
            opt.idle_per_proc = parse_int(name, v, 1, 1000000);
        else if (!strcmp(name, "--idle-per-addr"))
            opt.idle_per_addr = parse_int(name, v, 1, 60000);
        else if (!strcmp(name, "--idle-timeout"))
            opt.idle_timeout = parse_double(name, v, 1, 3600);
        else if (!strcmp(name, "--chatd-arg")) {
            if (opt.nextra >= 32) {
                fprintf(stderr, "load: too many --chatd-arg\n");
                exit(2);
            }
            opt.extra_args[opt.nextra++] = v;
        } else {
            fprintf(stderr, "load: unknown option %s (see --help)\n", name);
            exit(2);
        }
    }
    if (opt.group_senders > opt.group_size)
        opt.group_senders = opt.group_size;
}

/* --connect HOST:PORT,... and --pids into tgt[]. */
static void parse_targets(void)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", opt.connect);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strncmp(t, "http://", 7))
            t += 7;
        char *colon = strrchr(t, ':');
        struct in_addr a;
        char *end;
        long pt = colon ? strtol(colon + 1, &end, 10) : 0;
        if (colon)
            *colon = 0;
        if (ntgt == MAX_TARGETS || !colon || (*end != 0 && *end != '/') || pt < 1 || pt > 65535 ||
            inet_pton(AF_INET, t, &a) != 1) {
            fprintf(stderr, "load: --connect: '%s' is not an IPv4 HOST:PORT (at most %d)\n", t,
                    MAX_TARGETS);
            exit(2);
        }
        tgt[ntgt++] = (struct target){a.s_addr, (int)pt, 0};
    }
    if (!ntgt) {
        fprintf(stderr, "load: --connect: no servers\n");
        exit(2);
    }
    if (opt.pids) {
        snprintf(buf, sizeof buf, "%s", opt.pids);
        int i = 0;
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
             t = strtok_r(NULL, ",", &save), i++)
            if (i < ntgt)
                tgt[i].pid = (pid_t)parse_int("--pids", t, 1, 1 << 30);
        if (i != ntgt) {
            fprintf(stderr, "load: --pids: %d process ids for %d servers\n", i, ntgt);
            exit(2);
        }
    }
}

/* The JWT secret of servers started elsewhere: the file's text without
 * trailing white space (what chatd reads from --secret-file). */
static void read_secret(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("--secret-file %s: %s", path, strerror(errno));
    size_t n = fread(secret, 1, sizeof secret - 1, f);
    fclose(f);
    while (n && (secret[n - 1] == '\n' || secret[n - 1] == '\r' || secret[n - 1] == ' ' ||
                 secret[n - 1] == '\t'))
        n--;
    secret[n] = 0;
    if (!n)
        die("--secret-file %s is empty", path);
}

/* ---- placement: which server each session connects to ---- */

#define MAX_SHARDS 1024
static int shard_leader[MAX_SHARDS]; /* index into tgt[], -1 unknown */
static uint32_t nshards;

/* Every server's own view (GET /api/v1/cluster): the shards it leads. The
 * JSON is chatd's own, so a scan for "shard":N and the "role" that follows
 * it is enough. Returns the number of shards without a known leader. */
static int find_leaders(void)
{
    nshards = 0;
    for (int i = 0; i < MAX_SHARDS; i++)
        shard_leader[i] = -1;
    for (int t = 0; t < ntgt; t++) {
        char *b = NULL;
        if (http_get_at(t, "/api/v1/cluster", &b) != 200 || !b) {
            free(b);
            continue;
        }
        for (const char *p = strstr(b, "\"shard\":"); p; p = strstr(p, "\"shard\":")) {
            p += 8;
            long sh = strtol(p, NULL, 10);
            if (sh < 0 || sh >= MAX_SHARDS)
                continue;
            if ((uint32_t)sh + 1 > nshards)
                nshards = (uint32_t)sh + 1;
            const char *role = strstr(p, "\"role\":\"");
            const char *next = strstr(p, "\"shard\":");
            if (role && (!next || role < next) && !strncmp(role + 8, "leader\"", 7))
                shard_leader[sh] = t;
        }
        free(b);
    }
    int missing = 0;
    for (uint32_t i = 0; i < nshards; i++)
        missing += shard_leader[i] < 0;
    return nshards ? missing : -1;
}

/* Spread sessions over the servers: i mod N, or (--placement leaders) on
 * the leader of the conversation's shard as the servers see it now. */
static void place(spec *c, size_t n)
{
    int missing = 0;
    if (opt.leaders_only && ntgt > 1) {
        missing = find_leaders();
        if (missing < 0)
            die("--placement leaders: no server answered GET /api/v1/cluster with shards");
        if (missing)
            fprintf(stderr, "load: %d of %u shards without a leader now; their sessions go"
                            " to node i mod N\n", missing, nshards);
    }
    for (size_t i = 0; i < n; i++) {
        int t = (int)(i % (size_t)ntgt);
        if (opt.leaders_only && ntgt > 1 && c[i].conv_id) {
            int l = shard_leader[log_shard_for(c[i].conv_id, nshards)];
            if (l >= 0)
                t = l;
        }
        c[i].target = (uint8_t)t;
    }
}

#define MAX_SHAPES 8
static int shape_pairs[MAX_SHAPES], shape_window[MAX_SHAPES], nshapes;

static void parse_shapes(void)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", opt.shapes);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int p, w;
        char extra;
        if (nshapes == MAX_SHAPES || sscanf(t, "%dx%d%c", &p, &w, &extra) != 2 || p < 1 ||
            w < 1 || p > 1000000 || w > 100000) {
            fprintf(stderr, "load: --shapes: '%s' is not PAIRSxWINDOW (at most %d)\n", t,
                    MAX_SHAPES);
            exit(2);
        }
        shape_pairs[nshapes] = p;
        shape_window[nshapes++] = w;
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    parse_shapes();
    if (opt.connect) {
        parse_targets();
        if (!opt.secret_file) {
            fprintf(stderr, "load: --connect needs --secret-file\n");
            exit(2);
        }
        if (has_phase("idle")) {
            fprintf(stderr, "load: the idle phase needs a chatd of its own (not --connect);"
                            " use --phases\n");
            exit(2);
        }
    }
    static char chatd_default[1024];
    if (!opt.chatd && !opt.connect) {
        char self[900];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0)
            die("cannot find my own path; use --chatd");
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash)
            *slash = 0;
        snprintf(chatd_default, sizeof chatd_default, "%s/../chatd", self);
        opt.chatd = chatd_default;
    }
    if (!opt.connect && access(opt.chatd, X_OK))
        die("%s: %s (build it with make, or use --chatd)", opt.chatd, strerror(errno));
    self_check();
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    snprintf(tmpdir, sizeof tmpdir, "%s/chatd-load.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir))
        die("mkdtemp: %s", strerror(errno));
    if (opt.connect) {
        read_secret(opt.secret_file);
    } else {
        uint8_t raw[32];
        if (RAND_bytes(raw, sizeof raw) != 1)
            die("RAND_bytes failed");
        for (int i = 0; i < 32; i++)
            sprintf(secret + 2 * i, "%02x", raw[i]);
        char sf[512];
        snprintf(sf, sizeof sf, "%s/secret", tmpdir);
        FILE *f = fopen(sf, "w");
        if (!f || fprintf(f, "%s\n", secret) < 0 || fclose(f))
            die("%s: %s", sf, strerror(errno));
    }

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    printf("load: %ld CPUs, open-file limit %llu (hard %llu), %s\n", sysconf(_SC_NPROCESSORS_ONLN),
           (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, tmpdir);
    if (opt.connect) {
        for (int t = 0; t < ntgt; t++) {
            char *b = NULL, a[INET_ADDRSTRLEN];
            int st = http_get_at(t, "/healthz", &b);
            free(b);
            inet_ntop(AF_INET, &tgt[t].addr, a, sizeof a);
            if (st != 200)
                die("--connect %s:%d: GET /healthz answered %d", a, tgt[t].port, st);
            printf("server %d: %s:%d, pid %d, placement %s\n", t + 1, a, tgt[t].port,
                   (int)tgt[t].pid, opt.leaders_only ? "shard leaders" : "all nodes");
        }
    } else {
        start_chatd();
        printf("chatd: pid %d, port %d, %d open files at start, VmRSS %ld KiB\n",
               (int)chatd_pid, tgt[0].port, count_fds(chatd_pid), rss_kb(chatd_pid));
    }
    long rss_start = servers_rss_kb();

    int failed = 0;
    static presult idle_r, thr_r[MAX_SHAPES], lat_r, fan_r;
    int did_idle = 0, did_thr = 0, did_lat = 0, did_fan = 0;
    spec *pairs = NULL;
    size_t npairs_conns = 0;

    /* ---- idle ---- */
    if (has_phase("idle")) {
        phase ph = {.name = "idle", .kind = PH_IDLE};
        ph.nconns = (size_t)opt.idle;
        ph.conns = calloc(ph.nconns, sizeof *ph.conns);
        if (!ph.conns)
            die("out of memory");
        for (size_t i = 0; i < ph.nconns; i++) {
            ph.conns[i].user_id = UID_IDLE + i;
            ph.conns[i].src = 2 + (uint32_t)(i / (size_t)opt.idle_per_addr);
        }
        ph.nworkers = (int)((ph.nconns + (size_t)opt.idle_per_proc - 1) / (size_t)opt.idle_per_proc);
        if (ph.nworkers > MAX_WORKERS)
            die("--idle / --idle-per-proc needs more than %d processes", MAX_WORKERS);
        ph.handshake_timeout_ns = (int64_t)(opt.idle_timeout * 1e9);
        printf("idle: opening %zu sessions from %d processes, source addresses 127.0.0.2-%u\n",
               ph.nconns, ph.nworkers, ph.conns[ph.nconns - 1].src);
        run_idle_phase(&ph, &idle_r);
        did_idle = 1;
        free(ph.conns);
    }

    /* ---- 1:1 conversations ---- */
    if (has_phase("throughput") || has_phase("latency")) {
        size_t n = (size_t)opt.pairs;
        for (int i = 0; i < nshapes && has_phase("throughput"); i++)
            if ((size_t)shape_pairs[i] > n)
                n = (size_t)shape_pairs[i];
        uint64_t *creators = calloc(n, sizeof *creators), *convs = calloc(n, sizeof *convs);
        char **bodies = calloc(n, sizeof *bodies);
        if (!creators || !convs || !bodies)
            die("out of memory");
        for (size_t i = 0; i < n; i++) {
            creators[i] = UID_PAIRS + 2 * i;
            bodies[i] = malloc(64);
            snprintf(bodies[i], 64, "{\"kind\":\"direct\",\"members\":[%" PRIu64 "]}",
                     UID_PAIRS + 2 * i + 1);
        }
        int64_t t0 = now_ns();
        rest_create(n, creators, bodies, convs);
        printf("setup: %zu direct conversations created through REST in %.2f s\n", n,
               (double)(now_ns() - t0) / 1e9);
        npairs_conns = 2 * n;
        pairs = calloc(npairs_conns, sizeof *pairs);
        if (!pairs)
            die("out of memory");
        for (size_t i = 0; i < n; i++) {
            pairs[2 * i] = (spec){UID_PAIRS + 2 * i, convs[i], 1, 0, 0};
            pairs[2 * i + 1] = (spec){UID_PAIRS + 2 * i + 1, convs[i], 1, 0, 0};
            free(bodies[i]);
        }
        free(creators);
        free(convs);
        free(bodies);
    }
    for (int i = 0; i < nshapes && has_phase("throughput"); i++) {
        phase ph = {.name = "throughput", .kind = PH_WINDOW, .conns = pairs,
                    .nconns = 2 * (size_t)shape_pairs[i], .nworkers = opt.workers,
                    .window = shape_window[i], .handshake_timeout_ns = 30 * NS};
        printf("throughput: %d pairs, %zu sessions, window %d, %d workers, %g s + %g s warmup\n",
               shape_pairs[i], ph.nconns, ph.window, opt.workers, opt.seconds, opt.warmup);
        place(pairs, ph.nconns);
        run_load_phase(&ph, &thr_r[i]);
        did_thr = i + 1;
        wait_server_settled();
    }
    if (has_phase("latency")) {
        phase ph = {.name = "latency", .kind = PH_PACED, .conns = pairs,
                    .nconns = npairs_conns, .nworkers = opt.workers, .rate = opt.rate,
                    .handshake_timeout_ns = 30 * NS};
        printf("latency: %d pairs, %d msgs/s paced (open loop), %d workers\n", opt.pairs,
               opt.rate, opt.workers);
        place(pairs, ph.nconns);
        run_load_phase(&ph, &lat_r);
        did_lat = 1;
        wait_server_settled();
    }

    /* ---- groups ---- */
    if (has_phase("fanout")) {
        size_t g = (size_t)opt.groups, gs = (size_t)opt.group_size;
        uint64_t *creators = calloc(g, sizeof *creators), *convs = calloc(g, sizeof *convs);
        char **bodies = calloc(g, sizeof *bodies);
        if (!creators || !convs || !bodies)
            die("out of memory");
        for (size_t i = 0; i < g; i++) {
            creators[i] = UID_GROUPS + i * gs;
            size_t cap = gs * 24 + 100, o = 0;
            bodies[i] = malloc(cap);
            o += (size_t)snprintf(bodies[i] + o, cap - o,
                                  "{\"kind\":\"group\",\"title\":\"load %zu\",\"members\":[", i);
            for (size_t k = 1; k < gs; k++)
                o += (size_t)snprintf(bodies[i] + o, cap - o, "%s%" PRIu64, k > 1 ? "," : "",
                                      UID_GROUPS + i * gs + k);
            snprintf(bodies[i] + o, cap - o, "]}");
        }
        int64_t t0 = now_ns();
        rest_create(g, creators, bodies, convs);
        printf("setup: %zu groups of %zu created through REST in %.2f s\n", g, gs,
               (double)(now_ns() - t0) / 1e9);
        phase ph = {.name = "fanout", .kind = PH_WINDOW, .nworkers = opt.workers,
                    .window = opt.group_window, .handshake_timeout_ns = 30 * NS};
        ph.nconns = g * gs;
        ph.conns = calloc(ph.nconns, sizeof *ph.conns);
        if (!ph.conns)
            die("out of memory");
        for (size_t i = 0; i < g; i++) {
            for (size_t k = 0; k < gs; k++) {
                spec *s = &ph.conns[i * gs + k];
                s->user_id = UID_GROUPS + i * gs + k;
                s->conv_id = convs[i];
                s->sender = k < (size_t)opt.group_senders;
            }
            free(bodies[i]);
        }
        free(creators);
        free(convs);
        free(bodies);
        printf("fanout: %d groups x %d members online, %d senders each, window %d, %d workers\n",
               opt.groups, opt.group_size, opt.group_senders, opt.group_window, opt.workers);
        place(ph.conns, ph.nconns);
        run_load_phase(&ph, &fan_r);
        did_fan = 1;
        free(ph.conns);
    }
    free(pairs);

    /* ---- chatd's own account ---- */
    long rss_end = servers_rss_kb();
    int st = opt.connect ? 0 : stop_chatd();
    char logp[512];
    snprintf(logp, sizeof logp, "%s/chatd.log", tmpdir);
    FILE *lf = fopen(logp, "r");
    int nwarn = 0;
    char line[512], first_limit[512] = "";
    int nlimit = 0;
    if (lf) {
        while (fgets(line, sizeof line, lf)) {
            if (strstr(line, " WARN ") || strstr(line, " ERROR "))
                nwarn++;
            if (strstr(line, "limit") || strstr(line, "cannot accept")) {
                if (!nlimit++)
                    snprintf(first_limit, sizeof first_limit, "%s", line);
            }
        }
        fclose(lf);
    }
    size_t fl = strlen(first_limit);
    if (fl && first_limit[fl - 1] == '\n')
        first_limit[fl - 1] = 0;

    /* ---- report ---- */
    printf("\n");
    row("phase", "measure", "value", "target", "verdict");
    if (did_idle) {
        const presult *r = &idle_r;
        const wstats *t = &r->tot;
        char v[64], w[400];
        snprintf(v, sizeof v, "%" PRIu64 " / %" PRIu64, t->ok, t->conns);
        snprintf(w, sizeof w, "%d", opt.idle);
        /* Met when every session asked for is open, or when chatd is at its
         * open-file limit with every descriptor it had left (beyond its own
         * files at start) holding a session. */
        int at_limit = r->fd_limit > 0 && (long)t->ok + r->fds0 >= r->fd_limit;
        row("idle", "sessions past Hello / attempted", v, w,
            t->ok >= (uint64_t)opt.idle ? "PASS" : at_limit ? "PASS (chatd at its limit)" : "MISS");
        snprintf(v, sizeof v, "%ld, %d of them its own", r->fd_limit, r->fds0);
        row("idle", "  chatd open-file limit", v, "", "");
        if (t->failed || t->stuck) {
            snprintf(v, sizeof v, "%" PRIu64 " failed, %" PRIu64 " stuck", t->failed, t->stuck);
            row("idle", "  not established", v, "", "");
            if (t->failed)
                printf("%-11s   failed: connect %" PRIu64 ", EOF %" PRIu64 ", HTTP %" PRIu64
                       " (503: %" PRIu64 "), closed %" PRIu64 ", other %" PRIu64 "\n",
                       "idle", t->fail_connect, t->fail_eof, t->fail_http, t->http_503,
                       t->fail_close, t->fail_other);
            if (t->stuck)
                printf("%-11s   stuck: connected, never answered within %g s (in chatd's accept"
                       " queue)\n", "idle", opt.idle_timeout);
            if (t->first_error[0])
                printf("%-11s ! first: %s\n", "idle", t->first_error);
        }
        double per = t->ok ? (double)(r->rss1_kb - r->rss0_kb) * 1024.0 / (double)t->ok : 0;
        snprintf(v, sizeof v, "%.0f B", per);
        row("idle", "chatd memory per idle session (RSS delta)", v, "<= 2048 B",
            verdict(per > 0 && per <= 2048));
        snprintf(v, sizeof v, "%ld -> %ld KiB", r->rss0_kb, r->rss1_kb);
        row("idle", "  chatd VmRSS before -> after", v, "", "");
        snprintf(v, sizeof v, "%ld KiB", r->rss_after_close_kb);
        row("idle", "  chatd VmRSS after they closed", v, "", "");
        snprintf(v, sizeof v, "%d -> %d", r->fds0, r->fds1);
        row("idle", "  chatd open files", v, "", "");
        snprintf(v, sizeof v, "%.0f%%", r->srv_cpu_hold * 100);
        row("idle", "  chatd CPU while holding them", v, "~0%", "");
        snprintf(v, sizeof v, "%.2f / %.2f ms (%" PRIu64 ")", h_pct_ms(&t->lat_msg, .5),
                 h_pct_ms(&t->lat_msg, 1), t->lat_msg.n);
        row("idle", "  Ping->Pong p50 / max on held sessions", v, "", "");
        if (t->inflight_end) {
            snprintf(v, sizeof v, "%" PRIu64, t->inflight_end);
            row("idle", "  Pings never answered", v, "", "");
        }
        snprintf(v, sizeof v, "%.1f s", r->connect_s);
        row("idle", "  time to open them", v, "", "");
        if (r->m1.ok) {
            snprintf(v, sizeof v, "%.0f", r->m1.rejected);
            row("idle", "  chatd_connections_rejected_total after", v, "", "");
        }
        snprintf(w, sizeof w, "rss_before_kb=%ld rss_after_kb=%ld bytes_per_session=%.0f"
                              " attempted=%" PRIu64 " stuck=%" PRIu64 " failed=%" PRIu64
                              " fd_limit=%ld own_fds=%d at_limit=%d hold_cpu=%.2f"
                              " ping_p50_ms=%.3f ping_max_ms=%.3f rejected_metric=%.0f",
                 r->rss0_kb, r->rss1_kb, per, t->conns, t->stuck, t->failed, r->fd_limit, r->fds0,
                 at_limit, r->srv_cpu_hold, h_pct_ms(&t->lat_msg, .5), h_pct_ms(&t->lat_msg, 1),
                 r->m1.rejected);
        printf("RESULT bench=chatd case=idle sessions=%" PRIu64 " %s\n", t->ok, w);
    }
    for (int i = 0; i < did_thr; i++) {
        const presult *r = &thr_r[i];
        const wstats *t = &r->tot;
        double acks = (double)t->acks_win / r->seconds, msgs = (double)t->msgs_win / r->seconds;
        char v[64], x[512], name[64], what[64];
        snprintf(name, sizeof name, "throughput-%dx%d", shape_pairs[i], shape_window[i]);
        printf("%s: %d pairs (%d sessions), %d unacked Sends per session\n", name,
               shape_pairs[i], 2 * shape_pairs[i], shape_window[i]);
        snprintf(v, sizeof v, "%.0f", acks);
        snprintf(what, sizeof what, "durable msgs/s, 1:1 (Acks/s)");
        row("throughput", what, v, ">= 50000", verdict(acks >= 50000));
        snprintf(v, sizeof v, "%.0f", msgs);
        row("throughput", "received msgs/s, 1:1 (Msg/s)", v, "", "");
        snprintf(v, sizeof v, "%.2f / %.2f / %.2f ms", h_pct_ms(&t->lat_msg, .5),
                 h_pct_ms(&t->lat_msg, .99), h_pct_ms(&t->lat_msg, .999));
        row("throughput", "send->receive p50/p99/p999 (saturated)", v, "", "");
        snprintf(v, sizeof v, "%.2f / %.2f / %.2f ms", h_pct_ms(&t->lat_ack, .5),
                 h_pct_ms(&t->lat_ack, .99), h_pct_ms(&t->lat_ack, .999));
        row("throughput", "send->ack p50/p99/p999 (saturated)", v, "", "");
        print_common("throughput", r, (double)t->acks_win, "message");
        snprintf(x, sizeof x,
                 "pairs=%d window=%d acks_per_s=%.0f msgs_per_s=%.0f p50_ms=%.3f p99_ms=%.3f"
                 " p999_ms=%.3f ack_p50_ms=%.3f ack_p99_ms=%.3f ack_p999_ms=%.3f",
                 shape_pairs[i], shape_window[i], acks, msgs, h_pct_ms(&t->lat_msg, .5),
                 h_pct_ms(&t->lat_msg, .99), h_pct_ms(&t->lat_msg, .999),
                 h_pct_ms(&t->lat_ack, .5), h_pct_ms(&t->lat_ack, .99),
                 h_pct_ms(&t->lat_ack, .999));
        result_line(name, r, (double)t->acks_win, x);
    }
    if (did_lat) {
        const presult *r = &lat_r;
        const wstats *t = &r->tot;
        double sent = (double)t->sent_win / r->seconds, msgs = (double)t->msgs_win / r->seconds;
        double p99 = h_pct_ms(&t->lat_msg, .99);
        char v[64], x[512];
        snprintf(v, sizeof v, "%.0f sent, %.0f received", sent, msgs);
        row("latency", "paced msgs/s", v, "10000", "");
        snprintf(v, sizeof v, "%.2f / %.2f / %.2f ms", h_pct_ms(&t->lat_msg, .5), p99,
                 h_pct_ms(&t->lat_msg, .999));
        row("latency", "send->receive p50/p99/p999", v, "p99 < 5 ms",
            verdict(p99 < 5 && msgs >= 0.95 * opt.rate));
        snprintf(v, sizeof v, "%.2f ms", (double)t->lat_msg.max_us / 1000);
        row("latency", "  max", v, "", "");
        snprintf(v, sizeof v, "%.2f / %.2f / %.2f ms", h_pct_ms(&t->lat_ack, .5),
                 h_pct_ms(&t->lat_ack, .99), h_pct_ms(&t->lat_ack, .999));
        row("latency", "send->ack p50/p99/p999", v, "", "");
        snprintf(v, sizeof v, "%.2f / %.2f / %.2f ms", h_pct_ms(&t->lag, .5),
                 h_pct_ms(&t->lag, .99), h_pct_ms(&t->lag, .999));
        row("latency", "  of which generator lag (sched->write)", v, "", "");
        if (t->late_ticks) {
            snprintf(v, sizeof v, "%" PRIu64, t->late_ticks);
            row("latency", "  generator ticks > 2 ms late", v, "", "");
        }
        print_common("latency", r, (double)t->acks_win, "message");
        snprintf(x, sizeof x,
                 "rate=%d sent_per_s=%.0f msgs_per_s=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f"
                 " max_ms=%.3f ack_p50_ms=%.3f ack_p99_ms=%.3f ack_p999_ms=%.3f",
                 opt.rate, sent, msgs, h_pct_ms(&t->lat_msg, .5), p99, h_pct_ms(&t->lat_msg, .999),
                 (double)t->lat_msg.max_us / 1000, h_pct_ms(&t->lat_ack, .5),
                 h_pct_ms(&t->lat_ack, .99), h_pct_ms(&t->lat_ack, .999));
        result_line("latency", r, (double)t->acks_win, x);
    }
    if (did_fan) {
        const presult *r = &fan_r;
        const wstats *t = &r->tot;
        double del = (double)t->msgs_win / r->seconds, acks = (double)t->acks_win / r->seconds;
        char v[64], x[512];
        snprintf(v, sizeof v, "%.0f", del);
        row("fanout", "deliveries/s (Msg frames received)", v, ">= 1000000",
            verdict(del >= 1e6));
        snprintf(v, sizeof v, "%.0f", acks);
        row("fanout", "group messages/s (Acks/s)", v, "", "");
        if (r->m0.ok && r->m1.ok) {
            snprintf(v, sizeof v, "%.0f", (r->m1.deliveries - r->m0.deliveries) / r->seconds);
            row("fanout", "  deliveries/s queued by chatd", v, "", "");
        }
        snprintf(v, sizeof v, "%.2f / %.2f / %.2f ms", h_pct_ms(&t->lat_msg, .5),
                 h_pct_ms(&t->lat_msg, .99), h_pct_ms(&t->lat_msg, .999));
        row("fanout", "send->receive p50/p99/p999", v, "", "");
        print_common("fanout", r, (double)t->msgs_win, "delivery");
        snprintf(x, sizeof x,
                 "groups=%d group_size=%d senders=%d window=%d deliveries_per_s=%.0f"
                 " msgs_per_s=%.0f p50_ms=%.3f p99_ms=%.3f",
                 opt.groups, opt.group_size, opt.group_senders, opt.group_window, del, acks,
                 h_pct_ms(&t->lat_msg, .5), h_pct_ms(&t->lat_msg, .99));
        result_line("fanout", r, (double)t->msgs_win, x);
    }
    printf("chatd: VmRSS %ld KiB at start, %ld KiB at the end; %d WARN/ERROR log lines",
           rss_start, rss_end, nwarn);
    if (nlimit)
        printf("; %d about limits, first: %s", nlimit, first_limit);
    printf("\n");
    if (opt.connect) {
        printf("servers: left running (not started here)\n");
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        printf("chatd: did not stop cleanly (wait status %d)\n", st);
        failed = 1;
    } else {
        printf("chatd: stopped cleanly on SIGTERM\n");
    }
    if (integrity_failed)
        failed = 1;
    if (opt.keep || failed) {
        printf("load: kept %s\n", tmpdir);
    } else {
        nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    }
    return failed;
}
