/*
 * compress_bench.c — bytes on disk per message on a realistic chat corpus,
 * before and after the engine compresses sealed segments, and whether a zstd
 * dictionary trained on message bodies would be worth adopting.
 *
 * THE CORPUS. Chat text is mostly very short ("ok", "lol", an emoji), then
 * one-sentence lines, a tail of multi-sentence messages and the odd long
 * paragraph, URL, media message or non-Latin line. It is generated here from
 * tables with a seeded PRNG (xoshiro256**), so a seed always gives the same
 * bytes. Conversations are picked with Zipf weights (a few busy, many quiet);
 * 70% are direct chats, the rest groups of 3 to 40. Every message carries an
 * 18-byte client_msg_id ("c-" + 16 hex digits), as clients send one for
 * idempotency. Caveat: a generated corpus draws on a vocabulary of a few
 * hundred words, smaller than people's, so it compresses somewhat better than
 * real chat does, and a dictionary learns it more easily.
 *
 * PART 1, the engine as it is. The corpus is appended through log_append()
 * into a fresh log with 4 MiB segments (fsync off: bytes, not speed, are
 * measured here), with a bounded number of appends in flight so that groups
 * look like a busy server's. log_close() waits for the sealer; the log is
 * reopened read-only and every sealed, compressed segment is counted:
 * before = raw segment bytes / records, after = (.zlog + .idx bytes) /
 * records, the files' sizes taken from the directory.
 *
 * PART 2, dictionaries. The sealed segments' batches are read back with
 * log_read_from() and cut into blocks the way engine/segment.c does (whole
 * batches, a block closed once it reaches the target size; one zstd frame at
 * level 3 per block). The 64 KiB no-dictionary total must match the .zlog
 * payloads (checked). Dictionaries are trained with ZDICT_trainFromBuffer()
 * on the first --train-frac of each shard's sealed segments and evaluated on
 * the others (held out), at block sizes of 4, 16 and 64 KiB, against no
 * dictionary on the same blocks. The read cost is the bytes one record read
 * decompresses (its whole block) and the time to decompress one block.
 *
 * Output: tables, and "RESULT bench=compress ..." lines for scripts/bench.sh.
 */
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zdict.h>
#include <zstd.h>

#include "errors.h"
#include "log.h"
#include "log.pb-c.h"

/* Engine constants this bench mirrors (engine/segment.c). */
#define ENGINE_ZBLOCK_TARGET (64u << 10)
#define ENGINE_ZSTD_LEVEL 3
#define ZLOG_TABLE_BYTES(nb) (56 + 32 * (uint64_t)(nb) + 8)

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- PRNG: xoshiro256** seeded by splitmix64 ---- */

typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

static uint64_t rng_below(rng *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, v;
    do
        v = rng_next(r);
    while (v >= limit);
    return v % n;
}

static double rng_unit(rng *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define PICK(r, t) ((t)[rng_below((r), NELEM(t))])

/* ---- text ---- */

/* clang-format off */
static const char *const stock[] = {
    "ok", "ok", "ok!", "k", "kk", "okay", "lol", "lol", "lmao", "haha", "hahaha",
    "yes", "yeah", "yep", "yup", "no", "nope", "nah", "sure", "thanks!", "thanks",
    "thx", "ty", "np", "see you at 5", "see you soon", "on my way", "omw", "brb",
    "omg", "wait what", "what?", "call me", "call you later", "sounds good",
    "got it", "nice!", "nice", "same", "agreed", "true", "done", "5 min",
    "10 mins", "running late sorry", "love you", "love u", "good night", "gn",
    "morning!", "gm", "where are you?", "here", "here!", "can't talk now",
    "ok see you there", "lemme check", "idk", "maybe", "hmm", "hm", "ahh",
    "wow", "cool", "perfect", "great", "awesome", "sorry!", "no worries",
    "miss you", "home", "just landed", "at the store, need anything?",
    "what time?", "tomorrow?", "tonight works", "why", "how?", "who?",
    "\xF0\x9F\x91\x8D", "\xF0\x9F\x98\x82", "\xF0\x9F\x98\x82\xF0\x9F\x98\x82",
    "\xE2\x9D\xA4\xEF\xB8\x8F", "\xF0\x9F\x99\x8F", "\xF0\x9F\x98\x85",
    "\xF0\x9F\x8E\x89", "\xF0\x9F\x98\xAD", "\xF0\x9F\x91\x80", "\xF0\x9F\x94\xA5",
    "\xF0\x9F\x98\x8D", "\xF0\x9F\xA4\xA3", ":)", ":(", ";)", ":D", "xD",
    "???", "!!", "happy birthday!! \xF0\x9F\x8E\x82", "congrats \xF0\x9F\x8E\x89",
    "good luck today!", "drive safe", "text me when you're home",
};

/* Non-Latin lines: Cyrillic, Japanese, Chinese, Arabic, Greek, Hindi. */
static const char *const intl[] = {
    "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82! \xD0\xBA\xD0\xB0\xD0\xBA "
    "\xD0\xB4\xD0\xB5\xD0\xBB\xD0\xB0?",
    "\xD1\x81\xD0\xBF\xD0\xB0\xD1\x81\xD0\xB8\xD0\xB1\xD0\xBE",
    "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF",
    "\xE3\x81\x82\xE3\x82\x8A\xE3\x81\x8C\xE3\x81\xA8\xE3\x81\x86\xEF\xBC\x81",
    "\xE6\x98\x8E\xE5\xA4\xA9\xE8\xA7\x81", "\xE8\xB0\xA2\xE8\xB0\xA2",
    "\xE5\xA5\xBD\xE7\x9A\x84\xEF\xBC\x8C\xE6\xB2\xA1\xE9\x97\xAE\xE9\xA2\x98",
    "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7", "\xD8\xB4\xD9\x83\xD8\xB1\xD8\xA7",
    "\xCE\xB3\xCE\xB5\xCE\xB9\xCE\xB1 \xCF\x83\xCE\xBF\xCF\x85",
    "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87",
    "\xC2\xBF" "qu\xC3\xA9 tal?", "\xC3\xA7" "a va?", "gr\xC3\xBC\xC3\x9F" "e!",
};

static const char *const words[] = {
    "i", "you", "we", "they", "he", "she", "it", "me", "us", "them", "my", "your",
    "our", "their", "his", "her", "the", "a", "an", "this", "that", "these",
    "those", "is", "are", "was", "were", "be", "been", "being", "have", "has",
    "had", "do", "does", "did", "don't", "doesn't", "didn't", "can", "can't",
    "will", "won't", "would", "wouldn't", "should", "could", "might", "must",
    "just", "really", "actually", "maybe", "probably", "definitely", "so", "very",
    "too", "also", "still", "already", "not", "and", "but", "or", "because",
    "if", "when", "then", "than", "about", "after", "before", "with", "without",
    "for", "from", "to", "in", "on", "at", "by", "of", "up", "down", "out",
    "over", "back", "there", "here", "now", "later", "soon", "today", "tonight",
    "tomorrow", "yesterday", "morning", "afternoon", "evening", "weekend",
    "week", "month", "year", "monday", "tuesday", "wednesday", "thursday",
    "friday", "saturday", "sunday", "time", "day", "night", "minute", "hour",
    "place", "home", "house", "apartment", "work", "office", "school", "class",
    "meeting", "call", "dinner", "lunch", "breakfast", "brunch", "coffee", "tea",
    "beer", "wine", "pizza", "sushi", "burgers", "tacos", "party", "movie",
    "show", "episode", "game", "match", "concert", "trip", "flight", "train",
    "car", "bus", "bike", "uber", "station", "airport", "hotel", "ticket",
    "tickets", "plan", "plans", "idea", "thing", "stuff", "photo", "photos",
    "pic", "video", "link", "file", "doc", "spreadsheet", "slides", "report",
    "invoice", "contract", "deadline", "project", "release", "bug", "server",
    "team", "boss", "manager", "client", "customer", "mom", "dad", "sister",
    "brother", "grandma", "kids", "baby", "friend", "friends", "guys",
    "everyone", "someone", "anyone", "people", "dog", "cat", "doctor",
    "dentist", "gym", "weather", "rain", "snow", "sun", "traffic", "store",
    "supermarket", "pharmacy", "bank", "keys", "phone", "charger", "laptop",
    "wifi", "password", "money", "rent", "bill", "go", "going", "went", "come",
    "coming", "came", "get", "getting", "got", "make", "made", "take", "took",
    "see", "saw", "seen", "look", "looks", "looking", "know", "knew", "think",
    "thought", "want", "wanted", "need", "needs", "like", "love", "hate", "feel",
    "feeling", "say", "said", "tell", "told", "ask", "asked", "send", "sent",
    "check", "checked", "try", "tried", "wait", "waiting", "leave", "leaving",
    "left", "meet", "meeting", "bring", "pick", "drop", "finish", "finished",
    "start", "started", "help", "forget", "forgot", "remember", "book", "booked",
    "cancel", "cancelled", "move", "moved", "pay", "paid", "buy", "bought",
    "sleep", "eat", "drink", "watch", "read", "write", "play", "work", "working",
    "good", "great", "nice", "cool", "awesome", "amazing", "bad", "terrible",
    "weird", "funny", "crazy", "late", "early", "ready", "tired", "busy", "free",
    "sure", "sorry", "happy", "sad", "sick", "fine", "big", "small", "new", "old",
    "last", "next", "first", "same", "other", "all", "some", "any", "every",
    "more", "less", "much", "many", "few", "lot", "again", "almost", "right",
    "wrong", "okay", "yeah", "lol", "haha", "omg", "btw", "idk", "tbh", "fyi",
    "asap", "pls", "please", "thanks", "u", "ur", "gonna", "wanna", "gotta",
    "kinda", "sooo", "soooo", "reallyyy", "hahahaha", "ugh", "yay",
};

static const char *const names[] = {
    "Anna", "Ben", "Carla", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines",
    "Jonas", "Kemi", "Luca", "Maya", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa",
    "Sam", "Tariq", "Uma", "Viktor", "Wen", "Yusuf", "Zoe", "Alex", "Chris",
};

static const char *const enders[] = {
    "", "", "", "", ".", ".", "?", "?", "!", "!!", "...", " :)", " lol", " haha",
    " \xF0\x9F\x98\x82", " \xF0\x9F\x98\x8A", " \xF0\x9F\x91\x8D", " \xF0\x9F\x99\x84",
    " \xF0\x9F\x98\x85", " xx",
};

static const char *const domains[] = {
    "youtu.be", "www.youtube.com", "maps.app.goo.gl", "www.instagram.com",
    "twitter.com", "www.nytimes.com", "en.wikipedia.org", "github.com",
    "docs.google.com", "www.amazon.com", "open.spotify.com", "www.reddit.com",
    "tiktok.com", "www.airbnb.com",
};

static const char *const url_intros[] = {
    "look ", "check this out ", "did you see this? ", "lol ", "for tomorrow: ",
    "here: ",
};

static const char *const media_types[] = {"image/jpeg", "image/jpeg", "image/png",
                                          "video/mp4", "audio/ogg", "image/gif"};
static const char *const media_exts[] = {"jpg", "jpg", "png", "mp4", "ogg", "gif"};
/* clang-format on */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static void put(sbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (n > b->cap - 1 - b->len)
        n = b->cap - 1 - b->len;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void put_rand(sbuf *b, rng *r, const char *alphabet, int n)
{
    char tmp[80];
    size_t al = strlen(alphabet);
    for (int i = 0; i < n && i < 79; i++)
        tmp[i] = alphabet[rng_below(r, al)];
    tmp[n < 79 ? n : 79] = 0;
    put(b, tmp);
}

static const char B62[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
static const char HEX[] = "0123456789abcdef";

static void sentence(sbuf *b, rng *r, int lo, int hi)
{
    int n = lo + (int)rng_below(r, (uint64_t)(hi - lo + 1));
    int caps = rng_below(r, 3) == 0;
    for (int i = 0; i < n; i++) {
        if (i)
            put(b, rng_below(r, 25) ? " " : ", ");
        char tmp[24];
        const char *w;
        uint64_t k = rng_below(r, 40);
        if (k == 0) {
            snprintf(tmp, sizeof tmp, "%d:%02d", 1 + (int)rng_below(r, 12),
                     5 * (int)rng_below(r, 12));
            w = tmp;
        } else if (k == 1) {
            snprintf(tmp, sizeof tmp, "%d", (int)rng_below(r, 200));
            w = tmp;
        } else if (k == 2) {
            w = PICK(r, names);
        } else {
            w = PICK(r, words);
        }
        size_t at = b->len;
        put(b, w);
        if (i == 0 && caps && b->p[at] >= 'a' && b->p[at] <= 'z')
            b->p[at] = (char)(b->p[at] - 'a' + 'A');
    }
    put(b, PICK(r, enders));
}

static void url(sbuf *b, rng *r)
{
    const char *d = PICK(r, domains);
    put(b, "https://");
    put(b, d);
    put(b, "/");
    if (!strcmp(d, "youtu.be")) {
        put_rand(b, r, B62, 11);
    } else if (!strcmp(d, "maps.app.goo.gl")) {
        put_rand(b, r, B62, 17);
    } else {
        put(b, PICK(r, words));
        put(b, "-");
        put(b, PICK(r, words));
        put(b, "-");
        put(b, PICK(r, words));
        if (rng_below(r, 2)) {
            put(b, "?s=");
            put_rand(b, r, B62, 8 + (int)rng_below(r, 16));
        }
    }
}

/* One message body's fields: text always, media on 1.5% of messages. */
typedef struct msg {
    char text[4096];
    char media_url[128];
    const char *media_type;
} msg;

static void gen_msg(rng *r, msg *m)
{
    sbuf b = {m->text, 0, sizeof m->text};
    m->text[0] = 0;
    m->media_url[0] = 0;
    m->media_type = NULL;
    double u = rng_unit(r);
    if (u < 0.015) {
        size_t t = rng_below(r, NELEM(media_types));
        sbuf ub = {m->media_url, 0, sizeof m->media_url};
        put(&ub, "https://cdn.chatlog.example/m/");
        put_rand(&ub, r, HEX, 32);
        put(&ub, ".");
        put(&ub, media_exts[t]);
        m->media_type = media_types[t];
        if (rng_below(r, 2))
            sentence(&b, r, 1, 6);
    } else if (u < 0.36) {
        put(&b, PICK(r, stock));
    } else if (u < 0.38) {
        put(&b, PICK(r, intl));
    } else if (u < 0.80) {
        sentence(&b, r, 2, 10);
    } else if (u < 0.955) {
        int n = 2 + (int)rng_below(r, 2);
        for (int i = 0; i < n; i++) {
            if (i)
                put(&b, rng_below(r, 4) ? " " : "\n");
            sentence(&b, r, 3, 12);
        }
    } else if (u < 0.975) {
        /* The long tail: a plan, a story, a rant. */
        int paras = 1 + (int)rng_below(r, 2);
        for (int p = 0; p < paras; p++) {
            if (p)
                put(&b, "\n\n");
            int n = 3 + (int)rng_below(r, 7);
            for (int i = 0; i < n; i++) {
                if (i)
                    put(&b, " ");
                sentence(&b, r, 5, 16);
            }
        }
    } else {
        if (rng_below(r, 2))
            put(&b, PICK(r, url_intros));
        url(&b, r);
        if (rng_below(r, 3) == 0) {
            put(&b, " ");
            sentence(&b, r, 2, 8);
        }
    }
}

/* ---- options ---- */

typedef struct opts {
    uint64_t messages;
    uint32_t convs, shards, inflight;
    uint64_t segment_bytes;
    uint64_t seed;
    double train_frac;
    uint32_t dict_bytes;
    const char *dir;
    const char *from; /* analyse this existing log instead */
    int keep;
} opts;

static void usage(FILE *f)
{
    fprintf(f, "usage: compress_bench [options]\n"
               "  --messages N     messages in the corpus (default 600000)\n"
               "  --convs N        conversations (default 5000)\n"
               "  --shards N       shards of the log (default 2)\n"
               "  --segment-bytes N  roll size (default 4 MiB)\n"
               "  --inflight N     appends in flight while loading (default 64)\n"
               "  --seed N         corpus seed (default 1)\n"
               "  --train-frac F   share of each shard's sealed segments the\n"
               "                   dictionaries are trained on (default 0.3)\n"
               "  --dict-bytes N   dictionary size (default 102400)\n"
               "  --dir D          parent of the scratch directory (default $TMPDIR\n"
               "                   or /tmp); removed at the end\n"
               "  --keep           keep the scratch directory\n"
               "  --from DIR       analyse the sealed segments of an existing log\n"
               "                   (e.g. one written by `chatlog gen`) instead\n");
}

static int parse_opts(int argc, char **argv, opts *o)
{
    *o = (opts){.messages = 600000,
                .convs = 5000,
                .shards = 2,
                .inflight = 64,
                .segment_bytes = 4u << 20,
                .seed = 1,
                .train_frac = 0.3,
                .dict_bytes = 100 * 1024};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--keep")) {
            o->keep = 1;
        } else if (!v) {
            return -1;
        } else if (!strcmp(a, "--messages")) {
            o->messages = strtoull(v, NULL, 10), i++;
        } else if (!strcmp(a, "--convs")) {
            o->convs = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--shards")) {
            o->shards = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--segment-bytes")) {
            o->segment_bytes = strtoull(v, NULL, 10), i++;
        } else if (!strcmp(a, "--inflight")) {
            o->inflight = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--seed")) {
            o->seed = strtoull(v, NULL, 10), i++;
        } else if (!strcmp(a, "--train-frac")) {
            o->train_frac = atof(v), i++;
        } else if (!strcmp(a, "--dict-bytes")) {
            o->dict_bytes = (uint32_t)atoi(v), i++;
        } else if (!strcmp(a, "--dir")) {
            o->dir = v, i++;
        } else if (!strcmp(a, "--from")) {
            o->from = v, i++;
        } else {
            return -1;
        }
    }
    if (!o->messages || o->convs < 2 || !o->shards || o->shards > LOG_MAX_SHARDS ||
        !o->inflight || o->train_frac <= 0 || o->train_frac >= 1 || o->dict_bytes < 1024)
        return -1;
    return 0;
}

/* ---- part 1: load the corpus through the engine ---- */

typedef struct loader {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint32_t inflight;
    int err;
} loader;

static void on_loaded(void *arg, int status, const log_append_result *res)
{
    loader *l = arg;
    pthread_mutex_lock(&l->mu);
    l->inflight--;
    if (status && !l->err)
        l->err = status;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

typedef struct conv_gen {
    uint64_t conv_id;
    uint32_t members, base, stride;
} conv_gen;

static int load_corpus(const opts *o, const char *dir, double *load_s)
{
    rng r;
    rng_seed(&r, o->seed);
    uint32_t m = o->convs, users = m * 3;
    conv_gen *cv = calloc(m, sizeof *cv);
    double *cdf = malloc(m * sizeof *cdf);
    msg *mm = malloc(sizeof *mm);
    uint8_t *body = malloc(sizeof mm->text + 256);
    if (!cv || !cdf || !mm || !body) {
        free(cv), free(cdf), free(mm), free(body);
        return CL_ENOMEM;
    }
    double acc = 0;
    for (uint32_t i = 0; i < m; i++) {
        cv[i].conv_id = (1ull << 40) + (uint64_t)i * 7919 + rng_below(&r, 7919);
        cv[i].members = rng_below(&r, 10) < 7 ? 2 : 3 + (uint32_t)rng_below(&r, 38);
        cv[i].base = (uint32_t)rng_below(&r, users);
        cv[i].stride = 1 + (uint32_t)rng_below(&r, users - 1);
        acc += 1.0 / (double)(i + 1); /* Zipf, s = 1 */
        cdf[i] = acc;
    }
    log_options lo = {0};
    lo.shards = o->shards;
    lo.segment_bytes = o->segment_bytes;
    lo.fsync = LOG_FSYNC_NONE;
    log_t *log;
    int rc = log_open(dir, &lo, &log);
    if (rc) {
        free(cv), free(cdf), free(mm), free(body);
        return rc;
    }
    loader l = {.inflight = 0};
    pthread_mutex_init(&l.mu, NULL);
    pthread_cond_init(&l.cv, NULL);
    uint64_t t0 = mono_ns();
    for (uint64_t k = 0; k < o->messages && rc == 0; k++) {
        double x = rng_unit(&r) * acc;
        uint32_t lo_i = 0, hi_i = m - 1;
        while (lo_i < hi_i) {
            uint32_t mid = (lo_i + hi_i) / 2;
            if (cdf[mid] < x)
                lo_i = mid + 1;
            else
                hi_i = mid;
        }
        /* Scatter popularity over conversation ids. */
        conv_gen *c = &cv[(uint32_t)(((uint64_t)lo_i * 2654435761u) % m)];
        double u = rng_unit(&r);
        uint32_t sj =
            c->members == 2 ? (uint32_t)rng_below(&r, 2) : (uint32_t)(c->members * u * u);
        uint64_t sender = 100000 + (c->base + (uint64_t)sj * c->stride) % users;
        gen_msg(&r, mm);
        Chatlog__Log__V1__MessageBody mb = CHATLOG__LOG__V1__MESSAGE_BODY__INIT;
        mb.text = mm->text;
        if (mm->media_type) {
            mb.media_url = mm->media_url;
            mb.media_type = (char *)mm->media_type;
        }
        size_t n = chatlog__log__v1__message_body__pack(&mb, body);
        char key[19];
        snprintf(key, sizeof key, "c-%016llx", (unsigned long long)rng_next(&r));
        rec_view rec = {.type = REC_MESSAGE,
                        .conv_id = c->conv_id,
                        .sender_id = sender,
                        .key = (const uint8_t *)key,
                        .key_len = 18,
                        .body = body,
                        .body_len = (uint32_t)n};
        pthread_mutex_lock(&l.mu);
        while (l.inflight >= o->inflight && !l.err)
            pthread_cond_wait(&l.cv, &l.mu);
        rc = l.err;
        if (rc == 0)
            l.inflight++;
        pthread_mutex_unlock(&l.mu);
        if (rc)
            break;
        for (;;) {
            rc = log_append(log, &rec, on_loaded, &l);
            if (rc != CL_EBUSY)
                break;
            usleep(100);
        }
        if (rc) {
            pthread_mutex_lock(&l.mu);
            l.inflight--;
            pthread_mutex_unlock(&l.mu);
            break;
        }
    }
    pthread_mutex_lock(&l.mu);
    while (l.inflight)
        pthread_cond_wait(&l.cv, &l.mu);
    if (rc == 0)
        rc = l.err;
    pthread_mutex_unlock(&l.mu);
    int crc = log_close(log); /* waits for the sealer */
    if (rc == 0)
        rc = crc;
    *load_s = (double)(mono_ns() - t0) / 1e9;
    pthread_mutex_destroy(&l.mu);
    pthread_cond_destroy(&l.cv);
    free(cv), free(cdf), free(mm), free(body);
    return rc;
}

/* ---- reading the sealed segments back ---- */

typedef struct segdata {
    uint32_t shard;
    uint64_t base, end, records, messages;
    uint64_t raw_bytes, zlog_bytes, idx_bytes, info_disk_bytes;
    int train;
    uint8_t *raw; /* the segment's batches, back to back */
    uint64_t raw_len;
    uint32_t *batch_len; /* length of each batch */
    uint32_t nbatch, capbatch;
} segdata;

typedef struct reader {
    segdata *sd;
    int err;
} reader;

static int on_batch(void *arg, const batch_header *h, const uint8_t *bytes,
                    const log_entry *e, size_t n)
{
    reader *rd = arg;
    segdata *sd = rd->sd;
    if (h->first_offset >= sd->end)
        return 1; /* past the segment: stop */
    if (h->first_offset < sd->base || sd->raw_len + h->length > sd->raw_bytes) {
        rd->err = CL_ECORRUPT;
        return -1;
    }
    if (sd->nbatch == sd->capbatch) {
        uint32_t nc = sd->capbatch ? sd->capbatch * 2 : 1024;
        uint32_t *nb = realloc(sd->batch_len, nc * sizeof *nb);
        if (!nb) {
            rd->err = CL_ENOMEM;
            return -1;
        }
        sd->batch_len = nb;
        sd->capbatch = nc;
    }
    memcpy(sd->raw + sd->raw_len, bytes, h->length);
    sd->raw_len += h->length;
    sd->batch_len[sd->nbatch++] = h->length;
    return 0;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Every sealed, compressed segment of the log in dir, with its raw bytes. */
static int read_segments(const opts *o, const char *dir, segdata **out, uint32_t *nout)
{
    log_options lo = {0};
    lo.read_only = 1;
    log_t *log;
    int rc = log_open(dir, &lo, &log);
    if (rc)
        return rc;
    segdata *sds = NULL;
    uint32_t n = 0, cap = 0;
    for (uint32_t s = 0; s < log_shard_count(log) && rc == 0; s++) {
        uint32_t first = n;
        log_segment_info si;
        for (uint32_t i = 0; log_segment_info_get(log, s, i, &si) == 0; i++) {
            if (!si.sealed || !si.compressed)
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                segdata *ns = realloc(sds, cap * sizeof *ns);
                if (!ns) {
                    rc = CL_ENOMEM;
                    break;
                }
                sds = ns;
            }
            segdata *sd = &sds[n++];
            memset(sd, 0, sizeof *sd);
            sd->shard = s;
            sd->base = si.base_offset;
            sd->end = si.end_offset;
            sd->records = si.records;
            sd->raw_bytes = si.raw_bytes;
            sd->info_disk_bytes = si.disk_bytes;
            char path[4200];
            snprintf(path, sizeof path, "%s/shard-%04u/%020llu.zlog", dir, s,
                     (unsigned long long)si.base_offset);
            sd->zlog_bytes = file_size(path);
            snprintf(path, sizeof path, "%s/shard-%04u/%020llu.idx", dir, s,
                     (unsigned long long)si.base_offset);
            sd->idx_bytes = file_size(path);
            sd->raw = malloc(si.raw_bytes ? si.raw_bytes : 1);
            if (!sd->raw) {
                rc = CL_ENOMEM;
                break;
            }
            reader rd = {sd, 0};
            int r2 = log_read_from(log, s, sd->base, 0, on_batch, &rd);
            if (rd.err)
                rc = rd.err;
            else if (r2 < 0)
                rc = r2;
            else if (sd->raw_len != sd->raw_bytes)
                rc = CL_ECORRUPT;
            if (rc)
                break;
        }
        /* The first train_frac of this shard's sealed segments train. */
        uint32_t ns = n - first, ntrain = (uint32_t)(ns * o->train_frac + 0.5);
        if (ntrain < 1 && ns > 1)
            ntrain = 1;
        if (ntrain >= ns && ns > 0)
            ntrain = ns - 1;
        for (uint32_t i = 0; i < ntrain; i++)
            sds[first + i].train = 1;
    }
    log_close(log);
    *out = sds;
    *nout = n;
    return rc;
}

/* ---- part 2: blocks and dictionaries ---- */

typedef struct block {
    const uint8_t *p;
    uint32_t len;
    uint64_t records;
} block;

typedef struct blockset {
    block *b;
    uint32_t n, cap;
} blockset;

static int add_block(blockset *bs, const uint8_t *p, uint32_t len)
{
    if (bs->n == bs->cap) {
        uint32_t nc = bs->cap ? bs->cap * 2 : 1024;
        block *nb = realloc(bs->b, nc * sizeof *nb);
        if (!nb)
            return CL_ENOMEM;
        bs->b = nb;
        bs->cap = nc;
    }
    bs->b[bs->n++] = (block){p, len, 0};
    return 0;
}

/* Cut a segment into blocks as engine/segment.c does: whole batches, a block
 * closed as soon as it holds at least target bytes. */
static int cut_blocks(const segdata *sd, uint32_t target, blockset *bs)
{
    uint64_t pos = 0;
    uint32_t bi = 0;
    while (bi < sd->nbatch) {
        uint64_t start = pos;
        while (bi < sd->nbatch && (pos == start || pos - start < target))
            pos += sd->batch_len[bi++];
        int rc = add_block(bs, sd->raw + start, (uint32_t)(pos - start));
        if (rc)
            return rc;
    }
    return 0;
}

typedef struct eval {
    uint64_t raw, comp;
    uint32_t blocks;
    /* Reading one record decompresses its whole block, and a record picked
     * at random sits in a block with probability proportional to the block's
     * size: sums of len^2 and len*time give the expected cost of one read. */
    double raw_sq, ns_len;
} eval;

/* Compress every block (with cdict if not NULL) and time decompressing it
 * back. */
static int eval_blocks(const blockset *bs, const ZSTD_CDict *cd, const ZSTD_DDict *dd,
                       eval *ev)
{
    memset(ev, 0, sizeof *ev);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    size_t maxlen = 0;
    for (uint32_t i = 0; i < bs->n; i++)
        if (bs->b[i].len > maxlen)
            maxlen = bs->b[i].len;
    size_t bound = ZSTD_compressBound(maxlen);
    uint8_t *cbuf = malloc(bound), *dbuf = malloc(maxlen ? maxlen : 1);
    int rc = 0;
    if (!cc || !dc || !cbuf || !dbuf) {
        rc = CL_ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < bs->n; i++) {
        const block *b = &bs->b[i];
        size_t c =
            cd ? ZSTD_compress_usingCDict(cc, cbuf, bound, b->p, b->len, cd)
               : ZSTD_compressCCtx(cc, cbuf, bound, b->p, b->len, ENGINE_ZSTD_LEVEL);
        if (ZSTD_isError(c)) {
            rc = CL_ECORRUPT;
            goto out;
        }
        uint64_t t0 = mono_ns();
        size_t d = dd ? ZSTD_decompress_usingDDict(dc, dbuf, b->len, cbuf, c, dd)
                      : ZSTD_decompressDCtx(dc, dbuf, b->len, cbuf, c);
        ev->ns_len += (double)(mono_ns() - t0) * b->len;
        ev->raw_sq += (double)b->len * b->len;
        if (ZSTD_isError(d) || d != b->len || memcmp(dbuf, b->p, b->len)) {
            rc = CL_ECORRUPT;
            goto out;
        }
        ev->raw += b->len;
        ev->comp += c;
        ev->blocks++;
    }
out:
    ZSTD_freeCCtx(cc);
    ZSTD_freeDCtx(dc);
    free(cbuf);
    free(dbuf);
    return rc;
}

/* Training samples from the training segments: each REC_MESSAGE's body
 * (what="body") or its whole encoded record (what="record"). */
typedef struct samples {
    uint8_t *buf;
    size_t len, cap;
    size_t *sizes;
    unsigned n, capn;
} samples;

static int sample_add(samples *s, const uint8_t *p, size_t len)
{
    if (s->len + len > s->cap) {
        size_t nc = s->cap ? s->cap * 2 : (1u << 20);
        while (nc < s->len + len)
            nc *= 2;
        uint8_t *nb = realloc(s->buf, nc);
        if (!nb)
            return CL_ENOMEM;
        s->buf = nb;
        s->cap = nc;
    }
    if (s->n == s->capn) {
        unsigned nc = s->capn ? s->capn * 2 : 4096;
        size_t *ns = realloc(s->sizes, nc * sizeof *ns);
        if (!ns)
            return CL_ENOMEM;
        s->sizes = ns;
        s->capn = nc;
    }
    memcpy(s->buf + s->len, p, len);
    s->len += len;
    s->sizes[s->n++] = len;
    return 0;
}

static int collect_samples(const segdata *sds, uint32_t n, int whole_record,
                           size_t max_bytes, samples *s)
{
    for (uint32_t i = 0; i < n; i++) {
        const segdata *sd = &sds[i];
        if (!sd->train)
            continue;
        uint64_t pos = 0;
        for (uint32_t b = 0; b < sd->nbatch; b++) {
            const uint8_t *bp = sd->raw + pos;
            batch_header h;
            if (batch_verify(bp, sd->batch_len[b], &h))
                return CL_ECORRUPT;
            size_t rp = 0, rstart = BATCH_HEADER_SIZE;
            rec_view rv;
            while (batch_next_record(bp, &h, &rp, &rv) == 0) {
                size_t rlen = batch_record_size(rv.key_len, rv.body_len);
                if (rv.type == REC_MESSAGE) {
                    if (s->len >= max_bytes)
                        return 0;
                    int rc = whole_record ? sample_add(s, bp + rstart, rlen)
                                          : sample_add(s, rv.body, rv.body_len);
                    if (rc)
                        return rc;
                }
                rstart += rlen;
            }
            pos += sd->batch_len[b];
        }
    }
    return 0;
}

/* What the sealed segments hold, walked record by record. */
#define TEXT_HIST 4097
typedef struct corpus_stats {
    uint64_t records, messages, batches;
    uint64_t body_bytes, key_bytes, text_bytes, text_n;
    uint64_t text_len[TEXT_HIST]; /* messages by text length (last: longer) */
} corpus_stats;

static int scan_corpus(segdata *sds, uint32_t n, corpus_stats *st)
{
    for (uint32_t i = 0; i < n; i++) {
        segdata *sd = &sds[i];
        uint64_t pos = 0;
        for (uint32_t b = 0; b < sd->nbatch; b++) {
            const uint8_t *bp = sd->raw + pos;
            batch_header h;
            if (batch_verify(bp, sd->batch_len[b], &h))
                return CL_ECORRUPT;
            st->batches++;
            size_t rp = 0;
            rec_view rv;
            while (batch_next_record(bp, &h, &rp, &rv) == 0) {
                st->records++;
                if (rv.type != REC_MESSAGE)
                    continue;
                st->messages++;
                sd->messages++;
                st->body_bytes += rv.body_len;
                st->key_bytes += rv.key_len;
                Chatlog__Log__V1__MessageBody *mb =
                    chatlog__log__v1__message_body__unpack(NULL, rv.body_len, rv.body);
                if (mb) {
                    size_t tl = mb->text ? strlen(mb->text) : 0;
                    st->text_bytes += tl;
                    st->text_n++;
                    st->text_len[tl < TEXT_HIST - 1 ? tl : TEXT_HIST - 1]++;
                    chatlog__log__v1__message_body__free_unpacked(mb, NULL);
                }
            }
            pos += sd->batch_len[b];
        }
    }
    return 0;
}

static uint32_t text_quantile(const corpus_stats *st, double q)
{
    uint64_t want = (uint64_t)(q * (double)st->text_n), acc = 0;
    for (uint32_t i = 0; i < TEXT_HIST; i++) {
        acc += st->text_len[i];
        if (acc > want)
            return i;
    }
    return TEXT_HIST - 1;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

typedef struct dict {
    const char *name;
    void *buf;
    size_t len;
    double train_s;
    ZSTD_CDict *cd;
    ZSTD_DDict *dd;
} dict;

static int train_dict(const segdata *sds, uint32_t n, int whole_record, size_t dict_bytes,
                      dict *d)
{
    samples s = {0};
    /* ZDICT wants about 100x the dictionary size of samples; more only adds
     * training time. */
    int rc = collect_samples(sds, n, whole_record, dict_bytes * 100, &s);
    if (rc == 0 && s.n < 100)
        rc = CL_EINVAL;
    d->buf = malloc(dict_bytes);
    if (rc == 0 && !d->buf)
        rc = CL_ENOMEM;
    if (rc == 0) {
        uint64_t t0 = mono_ns();
        size_t len = ZDICT_trainFromBuffer(d->buf, dict_bytes, s.buf, s.sizes, s.n);
        d->train_s = (double)(mono_ns() - t0) / 1e9;
        if (ZDICT_isError(len)) {
            fprintf(stderr, "compress_bench: training %s: %s\n", d->name,
                    ZDICT_getErrorName(len));
            rc = CL_EINVAL;
        } else {
            d->len = len;
            d->cd = ZSTD_createCDict(d->buf, len, ENGINE_ZSTD_LEVEL);
            d->dd = ZSTD_createDDict(d->buf, len);
            if (!d->cd || !d->dd)
                rc = CL_ENOMEM;
        }
    }
    free(s.buf);
    free(s.sizes);
    return rc;
}

static void dict_free(dict *d)
{
    ZSTD_freeCDict(d->cd);
    ZSTD_freeDDict(d->dd);
    free(d->buf);
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *parent = o.dir ? o.dir : getenv("TMPDIR");
    if (!parent || !*parent)
        parent = "/tmp";
    char base[4096], dir[4200];
    snprintf(base, sizeof base, "%s/chatlog-cbench-XXXXXX", parent);
    if (!mkdtemp(base)) {
        fprintf(stderr, "compress_bench: cannot create a directory in %s: %s\n", parent,
                strerror(errno));
        return 1;
    }
    snprintf(dir, sizeof dir, "%s/log", base);
    int rc;
    segdata *sds = NULL;
    uint32_t nsd = 0;
    double load_s = 0;
    corpus_stats *st = calloc(1, sizeof *st);
    dict dicts[2] = {{.name = "bodies"}, {.name = "records"}};
    if (!st) {
        rc = CL_ENOMEM;
        goto done;
    }

    if (o.from) {
        printf("compress_bench: sealed segments of %s\n", o.from);
        rc = read_segments(&o, o.from, &sds, &nsd);
    } else {
        printf("compress_bench: generated corpus of %llu messages, %u conversations, "
               "seed %llu, %u shards, %llu-byte segments\n",
               (unsigned long long)o.messages, o.convs, (unsigned long long)o.seed,
               o.shards, (unsigned long long)o.segment_bytes);
        if ((rc = load_corpus(&o, dir, &load_s)) == 0)
            rc = read_segments(&o, dir, &sds, &nsd);
    }
    if (rc == 0)
        rc = scan_corpus(sds, nsd, st);
    if (rc) {
        fprintf(stderr, "compress_bench: %s\n", cl_strerror(rc));
        goto done;
    }
    if (nsd < 2 || !st->messages) {
        fprintf(stderr,
                "compress_bench: %u sealed segments, %llu messages; use more "
                "--messages or a smaller --segment-bytes\n",
                nsd, (unsigned long long)st->messages);
        rc = CL_EINVAL;
        goto done;
    }

    /* ---- part 1 ---- */
    uint64_t recs = 0, raw = 0, zlog = 0, idx = 0, info_disk = 0;
    for (uint32_t i = 0; i < nsd; i++) {
        recs += sds[i].records;
        raw += sds[i].raw_bytes;
        zlog += sds[i].zlog_bytes;
        idx += sds[i].idx_bytes;
        info_disk += sds[i].info_disk_bytes;
    }
    double m = (double)st->messages;
    if (!o.from)
        printf("loaded through the engine in %.1f s\n", load_s);
    printf("\nCorpus in the %u sealed segments: %llu records, %llu of them messages, "
           "%.1f records per batch\n",
           nsd, (unsigned long long)recs, (unsigned long long)st->messages,
           (double)recs / (double)st->batches);
    printf("  message text: mean %.1f B, median %u B, p90 %u B, p99 %u B\n",
           (double)st->text_bytes / (double)st->text_n, text_quantile(st, 0.5),
           text_quantile(st, 0.9), text_quantile(st, 0.99));
    printf("  per message, raw: body (protobuf) %.1f B + client_msg_id %.1f B + "
           "record header %d B + batch header/checksum %.1f B\n",
           (double)st->body_bytes / m, (double)st->key_bytes / m, RECORD_HEADER_SIZE,
           (double)BATCH_OVERHEAD * (double)st->batches / m);
    double rpm = (double)raw / m, zpm = (double)zlog / m, ipm = (double)idx / m;
    printf("\nBytes on disk per message, sealed segments%s\n",
           recs == st->messages ? "" : " (all records counted, divided by messages)");
    printf("  before compression (raw .log)        %7.1f B\n", rpm);
    printf("  after:  compressed segment (.zlog)   %7.1f B\n", zpm);
    printf("          sidecar index (.idx)         %7.1f B\n", ipm);
    printf("          total                        %7.1f B   (%.2fx smaller)\n",
           zpm + ipm, rpm / (zpm + ipm));
    printf("  log_segment_info.disk_bytes says     %7.1f B\n", (double)info_disk / m);
    printf("RESULT bench=compress messages=%.0f records=%llu segments=%u "
           "text_mean=%.1f text_median=%u body_bytes=%.1f records_per_batch=%.1f "
           "raw_bytes_per_msg=%.1f zlog_bytes_per_msg=%.1f idx_bytes_per_msg=%.1f "
           "disk_bytes_per_msg=%.1f ratio=%.2f\n",
           m, (unsigned long long)recs, nsd, (double)st->text_bytes / (double)st->text_n,
           text_quantile(st, 0.5), (double)st->body_bytes / m,
           (double)recs / (double)st->batches, rpm, zpm, ipm, zpm + ipm,
           rpm / (zpm + ipm));

    /* ---- part 2 ---- */
    uint64_t test_recs = 0, train_recs = 0;
    for (uint32_t i = 0; i < nsd; i++) {
        if (sds[i].train)
            train_recs += sds[i].records;
        else
            test_recs += sds[i].records;
    }
    for (int k = 0; k < 2 && rc == 0; k++)
        rc = train_dict(sds, nsd, k == 1, o.dict_bytes, &dicts[k]);
    if (rc) {
        fprintf(stderr, "compress_bench: dictionary: %s\n", cl_strerror(rc));
        goto done;
    }
    printf("\nDictionaries (ZDICT_trainFromBuffer, %u B asked) trained on %llu "
           "messages; evaluated on %llu others\n",
           o.dict_bytes, (unsigned long long)train_recs, (unsigned long long)test_recs);
    for (int k = 0; k < 2; k++)
        printf("  %-8s %6zu B, trained in %.1f s\n", dicts[k].name, dicts[k].len,
               dicts[k].train_s);

    /* The rebuilt 64 KiB blocks must be the engine's: same total. */
    {
        blockset all = {0};
        for (uint32_t i = 0; i < nsd && rc == 0; i++)
            rc = cut_blocks(&sds[i], ENGINE_ZBLOCK_TARGET, &all);
        eval ev;
        if (rc == 0)
            rc = eval_blocks(&all, NULL, NULL, &ev);
        if (rc == 0) {
            uint64_t rebuilt = ev.comp + nsd * ZLOG_TABLE_BYTES(0) + 32ull * ev.blocks;
            printf("  check: 64 KiB blocks rebuilt here: %llu B with block tables; "
                   "the engine's .zlog files: %llu B%s\n",
                   (unsigned long long)rebuilt, (unsigned long long)zlog,
                   rebuilt == zlog ? " (identical)" : " (DIFFERENT)");
        }
        free(all.b);
    }

    static const uint32_t targets[] = {4u << 10, 16u << 10, 64u << 10};
    uint64_t test_msgs = 0, test_raw = 0;
    uint32_t ntest = 0;
    for (uint32_t i = 0; i < nsd; i++)
        if (!sds[i].train)
            test_msgs += sds[i].messages, test_raw += sds[i].raw_bytes, ntest++;
    printf("\nHeld-out segments (%u, %llu messages, raw %.1f B/msg), zstd level %d, one "
           "frame per block as the engine writes them.\nB/msg = compressed blocks + "
           "32-byte block table entries, per message (no .idx: it does not change).\n"
           "read B / read us = bytes decompressed and time to read one record at "
           "random (its whole block).\n",
           ntest, (unsigned long long)test_msgs, (double)test_raw / (double)test_msgs,
           ENGINE_ZSTD_LEVEL);
    printf("%-9s %-8s %8s %7s %8s %9s %8s\n", "block", "dict", "B/msg", "ratio",
           "vs none", "read B", "read us");
    for (uint32_t t = 0; t < NELEM(targets) && rc == 0; t++) {
        blockset bs = {0};
        for (uint32_t i = 0; i < nsd && rc == 0; i++)
            if (!sds[i].train)
                rc = cut_blocks(&sds[i], targets[t], &bs);
        eval none;
        if (rc == 0)
            rc = eval_blocks(&bs, NULL, NULL, &none);
        for (int k = -1; k < 2 && rc == 0; k++) {
            eval ev = none;
            if (k >= 0 && (rc = eval_blocks(&bs, dicts[k].cd, dicts[k].dd, &ev)))
                break;
            const char *dn = k < 0 ? "none" : dicts[k].name;
            double bpm = (double)(ev.comp + 32ull * ev.blocks) / (double)test_msgs;
            double none_bpm =
                (double)(none.comp + 32ull * none.blocks) / (double)test_msgs;
            double rd_bytes = ev.raw_sq / (double)ev.raw,
                   rd_us = ev.ns_len / (double)ev.raw / 1e3;
            printf("%5u KiB %-8s %8.2f %7.2f %7.1f%% %9.0f %8.1f\n", targets[t] >> 10, dn,
                   bpm, (double)ev.raw / (double)ev.comp, 100.0 * (bpm / none_bpm - 1),
                   rd_bytes, rd_us);
            printf("RESULT bench=compress_dict block=%u dict=%s dict_len=%zu "
                   "bytes_per_msg=%.2f ratio=%.3f vs_none_pct=%.1f "
                   "read_bytes_per_record=%.0f read_us_per_record=%.1f\n",
                   targets[t], dn, k < 0 ? 0 : dicts[k].len, bpm,
                   (double)ev.raw / (double)ev.comp, 100.0 * (bpm / none_bpm - 1),
                   rd_bytes, rd_us);
        }
        free(bs.b);
    }
    if (rc == 0)
        printf("A dictionary stored with each segment would add %.2f B/msg (%zu B over "
               "%.0f messages); stored once per log, about 0.\n",
               (double)dicts[0].len * ntest / (double)test_msgs, dicts[0].len,
               (double)test_msgs / ntest);

done:
    free(st);
    for (int k = 0; k < 2; k++)
        dict_free(&dicts[k]);
    for (uint32_t i = 0; i < nsd; i++) {
        free(sds[i].raw);
        free(sds[i].batch_len);
    }
    free(sds);
    if (!o.keep)
        nftw(base, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return rc ? 1 : 0;
}
