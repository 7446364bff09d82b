/*
 * gen_text.c — the seeded random number generator and the text of the
 * synthetic chat workload written by `chatlog gen`.
 *
 * Real chat text is what the storage format has to be good at: mostly very
 * short lines, a long tail of longer ones, emoji and non-Latin scripts, the
 * odd URL. Everything here is built from the tables below with a seeded
 * PRNG, so a seed always gives the same text.
 */
#include "cli.h"

#include <string.h>

/* ---- PRNG: xoshiro256** (Blackman & Vigna), seeded with splitmix64 ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void rng_seed(cli_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t rng_next(cli_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t rng_below(cli_rng *r, uint64_t n)
{
    /* Rejection keeps it unbiased; the loop almost never repeats. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;
    do
        v = rng_next(r);
    while (v >= limit);
    return v % n;
}

double rng_unit(cli_rng *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

#define PICK(r, table) (table[rng_below(r, sizeof table / sizeof table[0])])

/* ---- tables ---- */

/* Whole messages as people send them; about a third of all messages. */
static const char *const short_lines[] = {
    "ok", "ok!", "k", "okay", "lol", "haha", "hahaha", "yes", "yep", "no",
    "nope", "sure", "thanks!", "thx", "ty", "np", "see you at 5",
    "on my way", "omw", "brb", "omg", "wait what", "call me", "sounds good",
    "got it", "nice!", "same", "agreed", "done \xE2\x9C\x85", "5 min",
    "running late, sorry", "love you", "good night", "morning!",
    "where are you?", "here", "can't right now", "ok see you there",
    "\xF0\x9F\x91\x8D", "\xF0\x9F\x98\x82", "\xE2\x9D\xA4\xEF\xB8\x8F",
    "\xF0\x9F\x99\x8F", "\xF0\x9F\x98\x85\xF0\x9F\x98\x85",
    "\xF0\x9F\x8E\x89\xF0\x9F\x8E\x89\xF0\x9F\x8E\x89",
    "\xF0\x9F\x98\xAD", "\xF0\x9F\x91\x80", "\xF0\x9F\x94\xA5",
    "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82!",
    "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF",
    "\xC2\xBF" "qu\xC3\xA9 tal?", "\xC3\xA7" "a va?", "\xE8\xB0\xA2\xE8\xB0\xA2",
    "he said \"maybe\"", "it's in C:\\Users\\shared\\photos",
    "shopping list:\n- milk\n- eggs\n- bread",
    "haha \"classic\"", ":)", ":(", ";)", "xD", "???", "!!!",
    "what time?", "tomorrow?", "tonight works", "let me check",
    "sorry, missed your call", "happy birthday!! \xF0\x9F\x8E\x82",
    "congrats \xF0\x9F\x8E\x89", "good luck today", "miss you",
    "i'm home", "just landed", "at the store, need anything?",
};

static const char *const words[] = {
    "i", "you", "we", "they", "he", "she", "it", "me", "us", "them",
    "the", "a", "an", "this", "that", "these", "my", "your", "our",
    "is", "are", "was", "were", "be", "been", "have", "has", "had", "do",
    "did", "don't", "can", "can't", "will", "won't", "would", "should",
    "could", "might", "must", "just", "really", "actually", "maybe",
    "probably", "definitely", "so", "very", "too", "also", "still", "already",
    "not", "and", "but", "or", "because", "if", "when", "then", "than",
    "about", "after", "before", "with", "without", "for", "from", "to", "in",
    "on", "at", "by", "of", "up", "down", "out", "over", "back", "there",
    "here", "now", "later", "today", "tonight", "tomorrow", "yesterday",
    "morning", "afternoon", "evening", "weekend", "week", "monday", "friday",
    "time", "day", "night", "minute", "hour", "place", "home", "work",
    "office", "school", "meeting", "call", "dinner", "lunch", "breakfast",
    "coffee", "beer", "pizza", "party", "movie", "game", "trip", "flight",
    "train", "car", "bus", "station", "airport", "ticket", "plan", "idea",
    "thing", "stuff", "photo", "photos", "video", "link", "file", "doc",
    "slides", "report", "deadline", "project", "team", "boss", "client",
    "mom", "dad", "kids", "friend", "friends", "guys", "everyone", "someone",
    "people", "dog", "cat", "weather", "rain", "sun", "traffic", "store",
    "go", "going", "come", "coming", "get", "got", "make", "made", "take",
    "see", "saw", "look", "looks", "know", "think", "thought", "want",
    "need", "like", "love", "hate", "feel", "say", "said", "tell", "told",
    "ask", "send", "sent", "check", "try", "wait", "leave", "meet", "bring",
    "call", "text", "pick", "finish", "start", "help", "forget", "remember",
    "good", "great", "nice", "cool", "awesome", "bad", "terrible", "weird",
    "funny", "crazy", "late", "early", "ready", "tired", "busy", "free",
    "sure", "sorry", "happy", "sad", "big", "small", "new", "old", "last",
    "next", "first", "same", "other", "all", "some", "any", "every", "more",
    "less", "much", "many", "few", "lot", "again", "almost", "right",
    "okay", "yeah", "lol", "haha", "omg", "btw", "idk", "tbh", "fyi",
};

static const char *const enders[] = {
    "", "", "", ".", ".", "?", "!", "!!", "...", " :)", " \xF0\x9F\x98\x82",
    " \xF0\x9F\x98\x8A", " \xF0\x9F\x91\x8D", " \xF0\x9F\x99\x84", " lol",
    " haha",
};

static const char *const url_intros[] = {
    "check this out ", "look ", "", "did you see this? ", "here: ",
    "this one ", "lol ", "for tomorrow: ",
};

static const char *const domains[] = {
    "example.com", "news.example.org", "youtu.be", "maps.example.net",
    "docs.example.com", "shop.example.co.uk", "blog.example.io",
};

static const char *const titles[] = {
    "Family", "Book club", "Weekend hiking", "Team standup", "Flatmates",
    "Project Phoenix", "Soccer Sunday", "Class of 2015", "Trip planning",
    "Birthday surprise \xF0\x9F\x8E\x82", "On-call", "Neighbours",
    "Gaming night \xF0\x9F\x8E\xAE", "Wedding crew", "Design review",
    "Parents of 3B", "Running club \xF0\x9F\x8F\x83", "Release 2.0",
};

/* ---- building text ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap; /* cap excludes the NUL */
} sbuf;

static void put(sbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (n > b->cap - b->len)
        n = b->cap - b->len;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void put_hex(sbuf *b, cli_rng *r, int digits)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[65];
    for (int i = 0; i < digits && i < 64; i++)
        tmp[i] = hex[rng_below(r, 16)];
    tmp[digits < 64 ? digits : 64] = '\0';
    put(b, tmp);
}

/* One sentence of lo..hi words: capitalised or not, sometimes with a
 * time or number in it, with an ending. */
static void sentence(sbuf *b, cli_rng *r, int lo, int hi)
{
    int n = lo + (int)rng_below(r, (uint64_t)(hi - lo + 1));
    int caps = rng_below(r, 3) == 0;
    for (int i = 0; i < n && b->len < b->cap; i++) {
        if (i)
            put(b, " ");
        char num[16];
        const char *w;
        if (rng_below(r, 30) == 0) {
            if (rng_below(r, 2))
                snprintf(num, sizeof num, "%d:%02d",
                         1 + (int)rng_below(r, 12), 15 * (int)rng_below(r, 4));
            else
                snprintf(num, sizeof num, "%d", 1 + (int)rng_below(r, 20));
            w = num;
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

static void url(sbuf *b, cli_rng *r)
{
    put(b, "https://");
    const char *d = PICK(r, domains);
    put(b, d);
    put(b, "/");
    if (strcmp(d, "youtu.be") == 0) {
        put_hex(b, r, 11);
        return;
    }
    put(b, PICK(r, words));
    put(b, "-");
    put(b, PICK(r, words));
    if (rng_below(r, 2)) {
        put(b, "?id=");
        put_hex(b, r, 8);
    }
}

size_t gen_text(cli_rng *r, char *buf)
{
    sbuf b = {buf, 0, GEN_TEXT_MAX - 1};
    buf[0] = '\0';
    double u = rng_unit(r);
    if (u < 0.34) {
        put(&b, PICK(r, short_lines));
    } else if (u < 0.80) {
        sentence(&b, r, 2, 12);
    } else if (u < 0.95) {
        int n = 2 + (int)rng_below(r, 3);
        for (int i = 0; i < n; i++) {
            if (i)
                put(&b, " ");
            sentence(&b, r, 3, 14);
        }
    } else if (u < 0.98) {
        /* The long tail: a paragraph or two, the kind of message that
         * explains a plan or tells a story. */
        int paras = 1 + (int)rng_below(r, 2);
        for (int p = 0; p < paras; p++) {
            if (p)
                put(&b, "\n\n");
            int n = 5 + (int)rng_below(r, 11);
            for (int i = 0; i < n; i++) {
                if (i)
                    put(&b, " ");
                sentence(&b, r, 6, 20);
            }
        }
    } else {
        put(&b, PICK(r, url_intros));
        url(&b, r);
        if (rng_below(r, 3) == 0) {
            put(&b, " ");
            sentence(&b, r, 2, 8);
        }
    }
    return b.len;
}

size_t gen_media(cli_rng *r, char *caption, char *url_buf, size_t url_cap,
                 const char **media_type)
{
    static const char *const types[] = {"image/jpeg", "image/jpeg",
                                        "image/png", "video/mp4",
                                        "audio/ogg"};
    static const char *const exts[] = {"jpg", "jpg", "png", "mp4", "ogg"};
    size_t t = rng_below(r, sizeof types / sizeof types[0]);
    *media_type = types[t];
    sbuf u = {url_buf, 0, url_cap - 1};
    url_buf[0] = '\0';
    put(&u, "https://cdn.chatlog.example/m/");
    put_hex(&u, r, 32);
    put(&u, ".");
    put(&u, exts[t]);
    sbuf c = {caption, 0, GEN_TEXT_MAX - 1};
    caption[0] = '\0';
    if (rng_below(r, 2))
        sentence(&c, r, 1, 6);
    return c.len;
}

size_t gen_title(cli_rng *r, char *buf)
{
    sbuf b = {buf, 0, GEN_TEXT_MAX - 1};
    buf[0] = '\0';
    if (rng_below(r, 2)) {
        put(&b, PICK(r, titles));
    } else {
        int n = 1 + (int)rng_below(r, 3);
        for (int i = 0; i < n; i++) {
            if (i)
                put(&b, " ");
            size_t at = b.len;
            put(&b, PICK(r, words));
            if (b.p[at] >= 'a' && b.p[at] <= 'z')
                b.p[at] = (char)(b.p[at] - 'a' + 'A');
        }
    }
    return b.len;
}
