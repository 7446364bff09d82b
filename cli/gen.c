/*
 * gen.c — `chatlog gen`: write a synthetic but realistic chat workload
 * through the engine, with the default (fsync on) options.
 *
 * The workload, all drawn from one seeded PRNG so a seed always gives the
 * same records (timestamps aside, which the writer stamps):
 *   - one REC_CONV_CREATED per conversation first: ~70% direct chats of two
 *     members, ~30% groups of 3..250 members skewed toward small ones;
 *   - then N REC_MESSAGE records, each to a conversation drawn from a Zipf
 *     distribution (a few conversations carry most of the traffic), sent by
 *     one of its members, with a client_msg_id key "c-<16 hex>" and a text
 *     from gen_text.c (1% are media messages with a caption);
 *   - now and then a REC_READ_POINTER (delivered or read) by another member,
 *     pointing at the conversation's newest message.
 *
 * Members are not stored: member j of a conversation is user
 * (base + j * stride) mod U, with U prime so that any stride in [1, U)
 * gives distinct members. Memory is about 44 bytes per conversation plus a
 * bounded number of appends in flight: the generator keeps up to --inflight
 * appends outstanding (a mutex and condition variable bound it) so that the
 * engine's group commit has something to group.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "log.pb-c.h"

#define GEN_MAX_CONVERSATIONS 10000000u
#define GEN_MAX_GROUP 250u
#define GEN_USER_BASE 1000000u /* user ids start here */
#define GEN_DEFAULT_INFLIGHT 4096u

typedef struct gen_conv {
    uint64_t conv_id;
    uint64_t last_msg_id; /* newest msg_id, counting our own appends */
    uint32_t members;
    uint32_t base, stride;
} gen_conv;

typedef struct gen_state gen_state;

/* The append callback's argument: which counter an ack goes to. */
typedef struct gen_tag {
    gen_state *g;
    int type;
} gen_tag;

struct gen_state {
    log_t *log;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t inflight, max_inflight;
    int err; /* first failed append's status, sticky */
    uint64_t acked[REC_TYPE_MAX + 1];
    gen_tag tags[REC_TYPE_MAX + 1];
};

static void on_appended(void *arg, int status, const log_append_result *res)
{
    gen_tag *t = arg;
    gen_state *g = t->g;
    pthread_mutex_lock(&g->mu);
    if (status != 0 && g->err == 0)
        g->err = status;
    else if (status == 0)
        g->acked[t->type]++;
    g->inflight--;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Append one record, waiting while --inflight appends are outstanding.
 * Returns 0, or the error that stops the run (an append's or a failed
 * callback's). */
static int submit(gen_state *g, const rec_view *rec)
{
    pthread_mutex_lock(&g->mu);
    while (g->inflight >= g->max_inflight && g->err == 0)
        pthread_cond_wait(&g->cv, &g->mu);
    int err = g->err;
    if (err == 0)
        g->inflight++;
    pthread_mutex_unlock(&g->mu);
    if (err)
        return err;
    for (;;) {
        int rc = log_append(g->log, rec, on_appended, &g->tags[rec->type]);
        if (rc == 0)
            return 0;
        if (rc == CL_EBUSY) {
            /* A shard's queue is full: let the writer drain a little. */
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
            continue;
        }
        pthread_mutex_lock(&g->mu);
        g->inflight--;
        pthread_mutex_unlock(&g->mu);
        return rc;
    }
}

static void wait_all(gen_state *g)
{
    pthread_mutex_lock(&g->mu);
    while (g->inflight > 0)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static uint32_t next_prime(uint32_t n)
{
    for (;; n++) {
        int prime = n >= 2;
        for (uint32_t d = 2; prime && (uint64_t)d * d <= n; d++)
            if (n % d == 0)
                prime = 0;
        if (prime)
            return n;
    }
}

static uint64_t member_id(const gen_conv *c, uint32_t j, uint32_t users)
{
    uint64_t idx = (c->base + (uint64_t)j * c->stride) % users;
    return GEN_USER_BASE + idx;
}

/* Group size in 3..250, skewed toward small groups the way real ones are:
 * half have 3..5 members, a few percent more than 60. */
static uint32_t group_size(cli_rng *r, uint32_t users)
{
    static const struct {
        uint32_t percent, lo, hi;
    } buckets[] = {{50, 3, 5},    {25, 6, 10},    {13, 11, 25},
                   {7, 26, 60},   {4, 61, 150},   {1, 151, GEN_MAX_GROUP}};
    uint32_t p = (uint32_t)rng_below(r, 100), i = 0;
    while (p >= buckets[i].percent) {
        p -= buckets[i].percent;
        i++;
    }
    uint32_t n = buckets[i].lo +
                 (uint32_t)rng_below(r, buckets[i].hi - buckets[i].lo + 1);
    return n < users ? n : users;
}

/* Index of the conversation with popularity rank drawn from Zipf (s = 1) by
 * inverse CDF; rank_to_conv shuffles ranks so that popularity does not
 * follow creation order. */
static uint32_t pick_conv(cli_rng *r, const double *cdf, uint32_t n,
                          const uint32_t *rank_to_conv)
{
    double u = rng_unit(r) * cdf[n - 1];
    uint32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return rank_to_conv[lo];
}

static void make_key(cli_rng *r, char key[19])
{
    snprintf(key, 19, "c-%016" PRIx64, rng_next(r));
}

/* A growable buffer for packed protobuf bodies. */
typedef struct pbuf {
    uint8_t *p;
    size_t cap;
} pbuf;

static int pbuf_reserve(pbuf *b, size_t n)
{
    if (n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return CL_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char gen_usage[] =
    "usage: chatlog gen DIR --messages N --conversations M [--seed S]\n"
    "                   [--segment-size BYTES] [--shards N] [--inflight N]\n"
    "\n"
    "Write a synthetic chat workload into DIR through the engine, with its\n"
    "default options (every append acked after fdatasync, group commit):\n"
    "one conv_created record per conversation (~70% direct chats, ~30%\n"
    "groups of 3..250 members, mostly small), then N messages spread over\n"
    "the conversations with a Zipf-like popularity, each with a\n"
    "client_msg_id and a text of realistic length (mostly short lines, some\n"
    "paragraphs, emoji, ~2% URLs, 1% media), plus occasional read_pointer\n"
    "records. The same seed writes the same records (timestamps aside).\n"
    "DIR is created if needed; an existing log is appended to (--shards\n"
    "must then match it or be left out).\n"
    "\n"
    "  --messages N        messages to write (required)\n"
    "  --conversations M   conversations to create (required, >= 1)\n"
    "  --seed S            PRNG seed (default 1)\n"
    "  --segment-size B    segment roll size, K/M/G suffixes allowed\n"
    "                      (default 64M, at least 16K)\n"
    "  --shards N          shards for a new DIR (default 16)\n"
    "  --inflight N        appends kept outstanding (default 4096)\n"
    "\n"
    "Prints the records written, the elapsed time and messages per second.\n";

int cmd_gen(int argc, char **argv)
{
    cli_opt opts[] = {{"help", 0, NULL},
                      {"messages", 1, NULL},
                      {"conversations", 1, NULL},
                      {"seed", 1, NULL},
                      {"segment-size", 1, NULL},
                      {"shards", 1, NULL},
                      {"inflight", 1, NULL},
                      {NULL, 0, NULL}};
    const char *pos[1];
    int npos;
    if (cli_parse("gen", argc, argv, opts, pos, 1, &npos) != CLI_OK)
        return CLI_USAGE;
    if (cli_opt_get(opts, "help")) {
        fputs(gen_usage, stdout);
        return CLI_OK;
    }
    if (npos != 1) {
        cli_err("gen", "missing DIR (see chatlog gen --help)");
        return CLI_USAGE;
    }
    uint64_t messages, convs, seed = 1, seg = 0, shards = 0;
    uint64_t inflight = GEN_DEFAULT_INFLIGHT;
    const char *s;
    if (!(s = cli_opt_get(opts, "messages"))) {
        cli_err("gen", "--messages is required");
        return CLI_USAGE;
    }
    if (cli_parse_u64("gen", "--messages", s, 0, UINT64_MAX / 2, 0,
                      &messages))
        return CLI_USAGE;
    if (!(s = cli_opt_get(opts, "conversations"))) {
        cli_err("gen", "--conversations is required");
        return CLI_USAGE;
    }
    if (cli_parse_u64("gen", "--conversations", s, 1, GEN_MAX_CONVERSATIONS,
                      0, &convs))
        return CLI_USAGE;
    if ((s = cli_opt_get(opts, "seed")) &&
        cli_parse_u64("gen", "--seed", s, 0, UINT64_MAX, 0, &seed))
        return CLI_USAGE;
    if ((s = cli_opt_get(opts, "segment-size")) &&
        cli_parse_u64("gen", "--segment-size", s, LOG_MIN_SEGMENT_BYTES,
                      LOG_MAX_SEGMENT_BYTES, 1, &seg))
        return CLI_USAGE;
    if ((s = cli_opt_get(opts, "shards")) &&
        cli_parse_u64("gen", "--shards", s, 1, LOG_MAX_SHARDS, 0, &shards))
        return CLI_USAGE;
    if ((s = cli_opt_get(opts, "inflight")) &&
        cli_parse_u64("gen", "--inflight", s, 1, 1u << 20, 0, &inflight))
        return CLI_USAGE;
    const char *dir = pos[0];

    uint32_t m = (uint32_t)convs;
    uint32_t users = next_prime(m * 2 > 1000 ? m * 2 : 1000);
    gen_conv *cv = calloc(m, sizeof *cv);
    double *cdf = malloc((size_t)m * sizeof *cdf);
    uint32_t *rank_to_conv = malloc((size_t)m * sizeof *rank_to_conv);
    char *text = malloc(GEN_TEXT_MAX);
    char *caption = malloc(GEN_TEXT_MAX);
    uint64_t *member_buf = malloc(GEN_MAX_GROUP * sizeof *member_buf);
    pbuf body = {0};
    if (!cv || !cdf || !rank_to_conv || !text || !caption || !member_buf) {
        cli_err("gen", "%s", cl_strerror(CL_ENOMEM));
        free(cv), free(cdf), free(rank_to_conv), free(text), free(caption);
        free(member_buf);
        return CLI_FAIL;
    }

    cli_rng r;
    rng_seed(&r, seed);
    /* Conversation ids: distinct by construction (an odd multiplier is a
     * bijection modulo 2^52), salted by the seed, and below 2^53 so that
     * JSON readers that use doubles keep them exact. */
    uint64_t salt = rng_next(&r);
    double acc = 0;
    for (uint32_t i = 0; i < m; i++) {
        cv[i].conv_id =
            (1ull << 52) |
            (((uint64_t)i * 0x9E3779B97F4A7C15ull + salt) & ((1ull << 52) - 1));
        cv[i].members =
            rng_below(&r, 10) < 7 ? 2 : group_size(&r, users);
        cv[i].base = (uint32_t)rng_below(&r, users);
        cv[i].stride = 1 + (uint32_t)rng_below(&r, users - 1);
        acc += 1.0 / (double)(i + 1); /* Zipf, s = 1 */
        cdf[i] = acc;
        rank_to_conv[i] = i;
    }
    for (uint32_t i = m - 1; i > 0; i--) {
        uint32_t j = (uint32_t)rng_below(&r, (uint64_t)i + 1);
        uint32_t t = rank_to_conv[i];
        rank_to_conv[i] = rank_to_conv[j];
        rank_to_conv[j] = t;
    }

    int existing = 0;
    size_t mlen = strlen(dir) + sizeof "/MANIFEST";
    char *mf = malloc(mlen);
    if (mf) {
        snprintf(mf, mlen, "%s/MANIFEST", dir);
        existing = access(mf, F_OK) == 0;
        free(mf);
    }
    log_options opt = {0};
    opt.shards = (uint32_t)shards;
    opt.segment_bytes = seg;
    log_t *log;
    int rc = 0;
    if (cli_log_open("gen", dir, &opt, &log) != CLI_OK) {
        free(cv), free(cdf), free(rank_to_conv), free(text), free(caption);
        free(member_buf);
        return CLI_FAIL;
    }
    if (existing)
        printf("gen: %s already holds a log; appending to it\n", dir);
    for (uint32_t i = 0; i < m; i++)
        cv[i].last_msg_id = log_conv_last_msg_id(log, cv[i].conv_id);

    gen_state g = {.log = log, .max_inflight = (uint32_t)inflight};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    for (int t = 0; t <= REC_TYPE_MAX; t++)
        g.tags[t] = (gen_tag){&g, t};

    double t0 = now_s();
    char key[19];
    rec_view rec;

    /* Conversations first, as a chat system creates them before their
     * first message. */
    for (uint32_t i = 0; i < m && rc == 0; i++) {
        gen_conv *c = &cv[i];
        Chatlog__Log__V1__ConvCreated cc = CHATLOG__LOG__V1__CONV_CREATED__INIT;
        for (uint32_t j = 0; j < c->members; j++)
            member_buf[j] = member_id(c, j, users);
        cc.n_members = c->members;
        cc.members = member_buf;
        if (c->members > 2) {
            cc.kind = CHATLOG__LOG__V1__CONV_CREATED__KIND__GROUP;
            gen_title(&r, text);
            cc.title = text;
        } else {
            cc.kind = CHATLOG__LOG__V1__CONV_CREATED__KIND__DIRECT;
        }
        size_t n = chatlog__log__v1__conv_created__get_packed_size(&cc);
        if ((rc = pbuf_reserve(&body, n)) != 0)
            break;
        chatlog__log__v1__conv_created__pack(&cc, body.p);
        make_key(&r, key);
        rec = (rec_view){.type = REC_CONV_CREATED,
                         .conv_id = c->conv_id,
                         .sender_id = member_buf[0],
                         .key = (const uint8_t *)key,
                         .key_len = 18,
                         .body = body.p,
                         .body_len = (uint32_t)n};
        rc = submit(&g, &rec);
    }

    for (uint64_t k = 0; k < messages && rc == 0; k++) {
        gen_conv *c = &cv[pick_conv(&r, cdf, m, rank_to_conv)];
        /* Earlier members talk more: a few people carry a group. */
        double u = rng_unit(&r);
        uint32_t sj = c->members == 2 ? (uint32_t)rng_below(&r, 2)
                                      : (uint32_t)(c->members * u * u);
        Chatlog__Log__V1__MessageBody mb = CHATLOG__LOG__V1__MESSAGE_BODY__INIT;
        char url[128];
        const char *media_type;
        if (rng_below(&r, 100) == 0) {
            gen_media(&r, caption, url, sizeof url, &media_type);
            mb.text = caption;
            mb.media_url = url;
            mb.media_type = (char *)media_type;
        } else {
            gen_text(&r, text);
            mb.text = text;
        }
        size_t n = chatlog__log__v1__message_body__get_packed_size(&mb);
        if ((rc = pbuf_reserve(&body, n)) != 0)
            break;
        chatlog__log__v1__message_body__pack(&mb, body.p);
        make_key(&r, key);
        rec = (rec_view){.type = REC_MESSAGE,
                         .conv_id = c->conv_id,
                         .sender_id = member_id(c, sj, users),
                         .key = (const uint8_t *)key,
                         .key_len = 18,
                         .body = body.p,
                         .body_len = (uint32_t)n};
        if ((rc = submit(&g, &rec)) != 0)
            break;
        /* The writer gives this conversation's messages consecutive ids in
         * the order we append them, so we know the new message's id. */
        c->last_msg_id++;

        /* Someone else's client reports it delivered or read it. */
        uint64_t p = rng_below(&r, 100);
        if (p < 8) {
            uint32_t rj = (sj + 1 + (uint32_t)rng_below(&r, c->members - 1)) %
                          c->members;
            Chatlog__Log__V1__ReadPointer rp =
                CHATLOG__LOG__V1__READ_POINTER__INIT;
            rp.kind = p < 3 ? CHATLOG__LOG__V1__READ_POINTER__KIND__DELIVERED
                            : CHATLOG__LOG__V1__READ_POINTER__KIND__READ;
            n = chatlog__log__v1__read_pointer__get_packed_size(&rp);
            if ((rc = pbuf_reserve(&body, n)) != 0)
                break;
            chatlog__log__v1__read_pointer__pack(&rp, body.p);
            rec = (rec_view){.type = REC_READ_POINTER,
                             .conv_id = c->conv_id,
                             .msg_id = c->last_msg_id,
                             .sender_id = member_id(c, rj, users),
                             .body = body.p,
                             .body_len = (uint32_t)n};
            if ((rc = submit(&g, &rec)) != 0)
                break;
        }
    }

    wait_all(&g);
    double elapsed = now_s() - t0;
    if (rc == 0)
        rc = g.err;
    int crc = log_close(log);
    if (rc == 0)
        rc = crc;
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
    free(cv), free(cdf), free(rank_to_conv), free(text), free(caption);
    free(member_buf), free(body.p);

    uint64_t msgs = g.acked[REC_MESSAGE];
    uint64_t records = 0;
    for (int t = 0; t <= REC_TYPE_MAX; t++)
        records += g.acked[t];
    if (elapsed <= 0)
        elapsed = 1e-9;
    printf("gen: wrote %" PRIu64 " messages, %" PRIu64 " conversations, %"
           PRIu64 " read pointers (%" PRIu64 " records) in %.3f s: %.0f "
           "msgs/s, %.0f records/s\n",
           msgs, g.acked[REC_CONV_CREATED], g.acked[REC_READ_POINTER],
           records, elapsed, (double)msgs / elapsed,
           (double)records / elapsed);
    fflush(stdout);
    if (rc != 0) {
        cli_err("gen", "%s: stopped after %" PRIu64 " acked messages: %s",
                dir, msgs, cl_strerror(rc));
        return CLI_FAIL;
    }
    return CLI_OK;
}
