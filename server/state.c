/*
 * state.c — the chat state view of the log (see state.h).
 *
 * Record meanings (bodies in proto/log.proto):
 *   REC_CONV_CREATED    conv_id, sender = creator, body ConvCreated
 *   REC_MEMBERS_CHANGED conv_id, sender = who changed, body MembersChanged
 *   REC_READ_POINTER    conv_id, sender = member, msg_id = position,
 *                       body ReadPointer (DELIVERED or READ)
 *   REC_MESSAGE         conv_id, msg_id, sender, key = client_msg_id,
 *                       body MessageBody
 * Records that make no sense for the state (a message in an unknown
 * conversation, a pointer of a non-member) are logged and skipped: the log
 * is the truth, and the server's own checks keep such records out of it.
 */
#include "state.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "log.pb-c.h"
#include "map.h"
#include "media.h"

#define JS_SAFE_MAX ((1ull << 53) - 1)

struct st {
    srv *s;
    u64map convs; /* conv_id → convo */
    u64map users; /* user_id → user */
    idem **keys;  /* hash table of idempotency keys */
    uint32_t kcap, nkeys;
};

st *st_new(srv *s)
{
    st *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->s = s;
    t->kcap = 1024;
    t->keys = calloc(t->kcap, sizeof *t->keys);
    if (!t->keys) {
        free(t);
        return NULL;
    }
    return t;
}

static void conv_free(convo *c)
{
    for (uint32_t i = 0; i < c->nmembers; i++)
        free(c->members[i].own);
    free(c->members);
    free(c->title);
    free(c);
}

void st_free(st *t)
{
    if (!t)
        return;
    MAP_EACH(&t->convs, e) conv_free(e->val);
    MAP_EACH(&t->users, e) {
        user *u = e->val;
        free(u->convs);
        free(u);
    }
    for (uint32_t i = 0; i < t->kcap; i++) {
        idem *k = t->keys[i];
        while (k) {
            idem *n = k->hnext;
            free(k->waiters);
            free(k);
            k = n;
        }
    }
    free(t->keys);
    map_free(&t->convs);
    map_free(&t->users);
    free(t);
}

convo *st_conv(st *t, uint64_t conv_id) { return map_get(&t->convs, conv_id); }

user *st_user(st *t, uint64_t user_id, int create)
{
    user *u = map_get(&t->users, user_id);
    if (u || !create)
        return u;
    u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->user_id = user_id;
    if (map_put(&t->users, user_id, u)) {
        free(u);
        return NULL;
    }
    return u;
}

member *st_member(const convo *c, uint64_t user_id)
{
    uint32_t lo = 0, hi = c->nmembers;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->members[mid].user_id < user_id)
            lo = mid + 1;
        else if (c->members[mid].user_id > user_id)
            hi = mid;
        else
            return &c->members[mid];
    }
    return NULL;
}

uint64_t st_unread(const convo *c, const member *m)
{
    if (c->last_msg_id <= m->read_ptr)
        return 0;
    uint64_t n = c->last_msg_id - m->read_ptr;
    return n > m->nown ? n - m->nown : 0;
}

static int user_add_conv(user *u, uint64_t conv_id)
{
    for (uint32_t i = 0; i < u->nconvs; i++)
        if (u->convs[i] == conv_id)
            return 0;
    if (u->nconvs == u->capconvs) {
        uint32_t n = u->capconvs ? u->capconvs * 2 : 4;
        uint64_t *nc = realloc(u->convs, n * sizeof *nc);
        if (!nc)
            return -1;
        u->convs = nc;
        u->capconvs = n;
    }
    u->convs[u->nconvs++] = conv_id;
    return 0;
}

static void user_del_conv(user *u, uint64_t conv_id)
{
    for (uint32_t i = 0; i < u->nconvs; i++)
        if (u->convs[i] == conv_id) {
            u->convs[i] = u->convs[--u->nconvs];
            return;
        }
}

static int conv_add_member(st *t, convo *c, uint64_t uid)
{
    if (uid == 0 || st_member(c, uid))
        return 0;
    if (c->nmembers == c->capmembers) {
        uint32_t n = c->capmembers ? c->capmembers * 2 : 4;
        member *nm = realloc(c->members, n * sizeof *nm);
        if (!nm)
            return -1;
        c->members = nm;
        c->capmembers = n;
    }
    uint32_t i = c->nmembers;
    while (i > 0 && c->members[i - 1].user_id > uid) {
        c->members[i] = c->members[i - 1];
        i--;
    }
    /* A member joining later has read nothing before it joined: count only
     * what arrives from now on as unread. */
    c->members[i] = (member){.user_id = uid, .read_ptr = c->last_msg_id,
                             .delivered_ptr = c->last_msg_id};
    c->nmembers++;
    user *u = st_user(t, uid, 1);
    return u ? user_add_conv(u, c->conv_id) : -1;
}

static void conv_del_member(st *t, convo *c, uint64_t uid)
{
    member *m = st_member(c, uid);
    if (!m)
        return;
    free(m->own);
    uint32_t i = (uint32_t)(m - c->members);
    memmove(&c->members[i], &c->members[i + 1],
            (c->nmembers - i - 1) * sizeof *m);
    c->nmembers--;
    user *u = st_user(t, uid, 0);
    if (u)
        user_del_conv(u, c->conv_id);
}

uint64_t st_direct_id(uint64_t a, uint64_t b)
{
    uint64_t lo = a < b ? a : b, hi = a < b ? b : a;
    uint8_t buf[17];
    memcpy(buf, &lo, 8);
    memcpy(buf + 8, &hi, 8);
    buf[16] = 'd';
    uint64_t id = XXH3_64bits(buf, sizeof buf) & JS_SAFE_MAX;
    return id ? id : 1;
}

convo *st_direct(st *t, uint64_t a, uint64_t b)
{
    convo *c = st_conv(t, st_direct_id(a, b));
    if (c && c->kind == CONV_DIRECT && st_member(c, a) && st_member(c, b))
        return c;
    return NULL;
}

uint64_t st_new_group_id(st *t)
{
    for (;;) {
        uint64_t id;
        if (RAND_bytes((unsigned char *)&id, sizeof id) != 1)
            id = (uint64_t)srv_now_ms() * 2654435761u;
        id &= JS_SAFE_MAX;
        if (id && !st_conv(t, id))
            return id;
    }
}

convo *st_conv_reserve(st *t, uint64_t conv_id)
{
    convo *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->conv_id = conv_id;
    if (map_put(&t->convs, conv_id, c)) {
        free(c);
        return NULL;
    }
    return c;
}

void st_conv_unreserve(st *t, uint64_t conv_id)
{
    convo *c = map_get(&t->convs, conv_id);
    if (c && !c->committed) {
        map_del(&t->convs, conv_id);
        conv_free(c);
    }
}

/* ---- idempotency keys ---- */

static uint64_t key_hash(uint64_t sender, uint64_t conv_id, const char *key,
                         size_t keylen)
{
    return XXH3_64bits_withSeed(key, keylen, map_hash(sender) ^ conv_id);
}

uint64_t st_content_hash(const char *body, size_t blen, const char *media,
                         size_t mlen)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        return 0;
    XXH3_64bits_reset(x);
    XXH3_64bits_update(x, &blen, sizeof blen);
    XXH3_64bits_update(x, body, blen);
    XXH3_64bits_update(x, media, mlen);
    uint64_t h = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return h;
}

idem *st_idem_find(st *t, uint64_t sender, uint64_t conv_id, const char *key,
                   size_t keylen)
{
    uint64_t h = key_hash(sender, conv_id, key, keylen);
    for (idem *k = t->keys[h & (t->kcap - 1)]; k; k = k->hnext)
        if (k->sender == sender && k->conv_id == conv_id &&
            k->keylen == keylen && !memcmp(k->key, key, keylen))
            return k;
    return NULL;
}

static void key_unlink(st *t, idem *k)
{
    idem **pp = &t->keys[key_hash(k->sender, k->conv_id, k->key, k->keylen) &
                         (t->kcap - 1)];
    for (; *pp; pp = &(*pp)->hnext)
        if (*pp == k) {
            *pp = k->hnext;
            t->nkeys--;
            return;
        }
}

static void keys_grow(st *t)
{
    uint32_t ncap = t->kcap * 2;
    idem **nk = calloc(ncap, sizeof *nk);
    if (!nk)
        return;
    for (uint32_t i = 0; i < t->kcap; i++) {
        idem *k = t->keys[i];
        while (k) {
            idem *n = k->hnext;
            uint64_t h = key_hash(k->sender, k->conv_id, k->key, k->keylen);
            k->hnext = nk[h & (ncap - 1)];
            nk[h & (ncap - 1)] = k;
            k = n;
        }
    }
    free(t->keys);
    t->keys = nk;
    t->kcap = ncap;
}

/* A key is kept while it is among its user's last idempotency_keys sends
 * and younger than idempotency_window_s. So every user gets at least one of
 * the two promises — 24 h for anyone sending fewer than 10,000 messages a
 * day, the last 10,000 sends for anyone sending more — and memory stays
 * bounded by the count (docs/protocol.md). */
static void keys_expire(st *t, user *u, int64_t now)
{
    int64_t cutoff = now - (int64_t)t->s->cfg.idempotency_window_s * 1000;
    while (u->key_head && !u->key_head->pending && !u->key_head->held &&
           (u->nkeys > t->s->cfg.idempotency_keys || u->key_head->ts_ms < cutoff)) {
        idem *k = u->key_head;
        u->key_head = k->unext;
        if (!u->key_head)
            u->key_tail = NULL;
        u->nkeys--;
        key_unlink(t, k);
        free(k->waiters);
        free(k);
    }
}

idem *st_idem_add(st *t, uint64_t sender, uint64_t conv_id, const char *key,
                  size_t keylen, uint64_t content_hash)
{
    user *u = st_user(t, sender, 1);
    if (!u || keylen > 255)
        return NULL;
    idem *k = calloc(1, sizeof *k + keylen);
    if (!k)
        return NULL;
    k->sender = sender;
    k->conv_id = conv_id;
    k->content_hash = content_hash;
    k->pending = 1;
    k->keylen = (uint8_t)keylen;
    memcpy(k->key, key, keylen);
    if (t->nkeys + 1 > t->kcap)
        keys_grow(t);
    uint64_t h = key_hash(sender, conv_id, key, keylen);
    k->hnext = t->keys[h & (t->kcap - 1)];
    t->keys[h & (t->kcap - 1)] = k;
    t->nkeys++;
    if (u->key_tail)
        u->key_tail->unext = k;
    else
        u->key_head = k;
    u->key_tail = k;
    u->nkeys++;
    return k;
}

void st_idem_drop(st *t, idem *k)
{
    user *u = st_user(t, k->sender, 0);
    key_unlink(t, k);
    if (u) {
        idem **pp = &u->key_head;
        idem *prev = NULL;
        for (; *pp; prev = *pp, pp = &(*pp)->unext)
            if (*pp == k) {
                *pp = k->unext;
                if (u->key_tail == k)
                    u->key_tail = prev;
                u->nkeys--;
                break;
            }
    }
    free(k->waiters);
    free(k);
}

int st_idem_wait(idem *k, uint64_t conn_id)
{
    uint64_t *n = realloc(k->waiters, (k->nwaiters + 1) * sizeof *n);
    if (!n)
        return -1;
    k->waiters = n;
    k->waiters[k->nwaiters++] = conn_id;
    return 0;
}

/* ---- applying records ---- */

static void apply_message(st *t, const log_entry *e)
{
    const rec_view *r = &e->rec;
    convo *c = st_conv(t, r->conv_id);
    if (!c)
        return;
    if (r->msg_id > c->last_msg_id)
        c->last_msg_id = r->msg_id;
    member *m = st_member(c, r->sender_id);
    if (m && r->msg_id > m->read_ptr) {
        if (m->nown == m->capown) {
            uint32_t n = m->capown ? m->capown * 2 : 4;
            uint64_t *no = realloc(m->own, n * sizeof *no);
            if (no) {
                m->own = no;
                m->capown = n;
            }
        }
        if (m->nown < m->capown)
            m->own[m->nown++] = r->msg_id;
    }
    /* Remember where media was sent (media.c: who may mint its URLs);
     * only bodies that can name one are decoded. */
    if (r->body_len && memmem(r->body, r->body_len, "/media/", 7)) {
        Chatlog__Log__V1__MessageBody *mb =
            chatlog__log__v1__message_body__unpack(NULL, r->body_len, r->body);
        if (mb && mb->media_url)
            media_note_sent(mb->media_url, strlen(mb->media_url), r->conv_id);
        if (mb)
            chatlog__log__v1__message_body__free_unpacked(mb, NULL);
    }
    if (!r->key_len)
        return;
    idem *k = st_idem_find(t, r->sender_id, r->conv_id, (const char *)r->key,
                           r->key_len);
    if (!k) {
        Chatlog__Log__V1__MessageBody *b =
            chatlog__log__v1__message_body__unpack(NULL, r->body_len, r->body);
        uint64_t h = b ? st_content_hash(b->text, strlen(b->text), b->media_url,
                                         strlen(b->media_url))
                       : 0;
        if (b)
            chatlog__log__v1__message_body__free_unpacked(b, NULL);
        k = st_idem_add(t, r->sender_id, r->conv_id, (const char *)r->key,
                        r->key_len, h);
        if (!k)
            return;
    }
    k->pending = 0;
    k->msg_id = r->msg_id;
    k->ts_ms = r->ts_ms;
    user *u = st_user(t, r->sender_id, 0);
    if (u)
        keys_expire(t, u, srv_now_ms());
}

static void apply_created(st *t, const log_entry *e)
{
    const rec_view *r = &e->rec;
    Chatlog__Log__V1__ConvCreated *b =
        chatlog__log__v1__conv_created__unpack(NULL, r->body_len, r->body);
    if (!b)
        return;
    convo *c = st_conv(t, r->conv_id);
    if (!c)
        c = st_conv_reserve(t, r->conv_id);
    if (c && !c->committed) {
        c->kind = b->kind == CHATLOG__LOG__V1__CONV_CREATED__KIND__DIRECT
                      ? CONV_DIRECT
                      : CONV_GROUP;
        c->title = strdup(b->title);
        c->creator = r->sender_id;
        c->created_at = r->ts_ms;
        c->committed = 1;
        for (size_t i = 0; i < b->n_members; i++)
            conv_add_member(t, c, b->members[i]);
    }
    chatlog__log__v1__conv_created__free_unpacked(b, NULL);
}

static void apply_members(st *t, const log_entry *e)
{
    const rec_view *r = &e->rec;
    convo *c = st_conv(t, r->conv_id);
    if (!c || !c->committed)
        return;
    Chatlog__Log__V1__MembersChanged *b =
        chatlog__log__v1__members_changed__unpack(NULL, r->body_len, r->body);
    if (!b)
        return;
    for (size_t i = 0; i < b->n_add; i++)
        conv_add_member(t, c, b->add[i]);
    for (size_t i = 0; i < b->n_remove; i++)
        conv_del_member(t, c, b->remove[i]);
    chatlog__log__v1__members_changed__free_unpacked(b, NULL);
}

static void apply_pointer(st *t, const log_entry *e)
{
    const rec_view *r = &e->rec;
    convo *c = st_conv(t, r->conv_id);
    member *m = c ? st_member(c, r->sender_id) : NULL;
    if (!m)
        return;
    Chatlog__Log__V1__ReadPointer *b =
        chatlog__log__v1__read_pointer__unpack(NULL, r->body_len, r->body);
    if (!b)
        return;
    uint64_t pos = r->msg_id;
    if (b->kind == CHATLOG__LOG__V1__READ_POINTER__KIND__READ) {
        if (pos > m->read_ptr) {
            m->read_ptr = pos;
            uint32_t k = 0;
            for (uint32_t i = 0; i < m->nown; i++)
                if (m->own[i] > pos)
                    m->own[k++] = m->own[i];
            m->nown = k;
        }
        if (pos > m->delivered_ptr)
            m->delivered_ptr = pos; /* read implies delivered */
    } else if (pos > m->delivered_ptr) {
        m->delivered_ptr = pos;
    }
    chatlog__log__v1__read_pointer__free_unpacked(b, NULL);
}

void st_apply(st *t, const log_entry *e)
{
    switch (e->rec.type) {
    case REC_MESSAGE: apply_message(t, e); break;
    case REC_CONV_CREATED: apply_created(t, e); break;
    case REC_MEMBERS_CHANGED: apply_members(t, e); break;
    case REC_READ_POINTER: apply_pointer(t, e); break;
    default: break;
    }
}

typedef struct load_ctx {
    st *t;
    uint64_t next; /* offset after the last record applied */
    uint64_t end;  /* stop before this offset */
} load_ctx;

#define LOAD_STOP 1

static int load_cb(void *arg, const batch_header *h, const uint8_t *bytes,
                   const log_entry *e, size_t n)
{
    load_ctx *x = arg;
    (void)h;
    (void)bytes;
    for (size_t i = 0; i < n; i++) {
        if (e[i].offset >= x->end)
            return LOAD_STOP;
        st_apply(x->t, &e[i]);
        x->next = e[i].offset + 1;
    }
    return 0;
}

/* Where to resume after unreadable data at offset off: the end of the
 * segment holding it (or the next segment's start). 0 when none. */
static uint64_t skip_past(log_t *log, uint32_t shard, uint64_t off)
{
    log_segment_info si;
    for (uint32_t i = 0; log_segment_info_get(log, shard, i, &si) == 0; i++) {
        if (si.base_offset > off)
            return si.base_offset;
        if (off < si.end_offset)
            return si.end_offset > off ? si.end_offset : 0;
    }
    return 0;
}

int st_load(st *t, log_t *log)
{
    return st_load_upto(t, log, NULL);
}

int st_load_upto(st *t, log_t *log, const uint64_t *upto)
{
    int first = 0;
    for (uint32_t sh = 0; sh < log_shard_count(log); sh++) {
        load_ctx x = {t, 0, upto ? upto[sh] : UINT64_MAX};
        for (;;) {
            if (x.next >= x.end)
                break;
            int rc = log_read_from(log, sh, x.next, 0, load_cb, &x);
            if (rc == 0 || rc == LOAD_STOP)
                break;
            /* Damaged data: keep loading everything after it rather than
             * serve an empty state; what it held is missing until repair. */
            uint64_t resume = skip_past(log, sh, x.next);
            srv_log(t->s, LOG_ERROR, "shard %u: records %llu..%llu unreadable (%s); skipped",
                    sh, (unsigned long long)x.next,
                    (unsigned long long)(resume ? resume - 1 : x.next), cl_strerror(rc));
            if (!first)
                first = rc;
            if (resume <= x.next)
                break;
            x.next = resume;
        }
    }
    return first;
}

uint64_t st_nconvs(const st *t) { return t->convs.n; }
uint64_t st_nusers(const st *t) { return t->users.n; }
