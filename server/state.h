/*
 * state.h — chat state rebuilt from the log: conversations, members, read
 * pointers, idempotency keys. The log is the truth; this is a view of it
 * that the event loop keeps current by applying every committed record
 * (st_apply), at start-up for the whole log and afterwards as records
 * commit. Nothing here is written anywhere else.
 */
#ifndef CHATLOG_STATE_H
#define CHATLOG_STATE_H

#include <stdint.h>

#include "chatd.h"

/* An idempotency key: (sender, conv_id, client_msg_id) → the message it
 * produced. pending while its append is in flight; waiters are the
 * connections (by id) to ack when it lands. */
typedef struct idem {
    struct idem *hnext;     /* hash chain */
    struct idem *unext;     /* user's FIFO */
    uint64_t sender, conv_id;
    uint64_t content_hash;  /* XXH3 of body and media_url */
    uint64_t msg_id;
    int64_t ts_ms;
    int pending;
    int held;               /* a Send in flight points here: not expired */
    uint64_t *waiters;      /* conn ids */
    uint32_t nwaiters;
    uint8_t keylen;
    char key[];
} idem;

typedef struct st st;

st *st_new(srv *s);
void st_free(st *t);

/* Rebuild from the whole log (every shard from offset 0). */
int st_load(st *t, log_t *log);
/* The same, shard i only below offset upto[i] (a cluster node: its
 * committed part). */
int st_load_upto(st *t, log_t *log, const uint64_t *upto);

/* Apply one committed record. Records of a conversation arrive in order. */
void st_apply(st *t, const log_entry *e);

convo *st_conv(st *t, uint64_t conv_id);
user *st_user(st *t, uint64_t user_id, int create);
member *st_member(const convo *c, uint64_t user_id);
/* Messages after the member's READ pointer that others sent. */
uint64_t st_unread(const convo *c, const member *m);

/* A direct conversation between a and b (either order), or NULL. */
convo *st_direct(st *t, uint64_t a, uint64_t b);
/* conv_id of the direct conversation between a and b: a deterministic
 * function of the pair, below 2^53. */
uint64_t st_direct_id(uint64_t a, uint64_t b);
/* A fresh random group conv_id below 2^53, unused so far. */
uint64_t st_new_group_id(st *t);
/* Record that a creation is in flight, so a second request for the same
 * direct pair waits rather than creating another; returns the placeholder. */
convo *st_conv_reserve(st *t, uint64_t conv_id);
void st_conv_unreserve(st *t, uint64_t conv_id);

idem *st_idem_find(st *t, uint64_t sender, uint64_t conv_id, const char *key,
                   size_t keylen);
/* Add a pending key for a Send in flight. NULL on allocation failure. */
idem *st_idem_add(st *t, uint64_t sender, uint64_t conv_id, const char *key,
                  size_t keylen, uint64_t content_hash);
/* Forget a pending key whose append failed. */
void st_idem_drop(st *t, idem *k);
int st_idem_wait(idem *k, uint64_t conn_id);

uint64_t st_content_hash(const char *body, size_t blen, const char *media,
                         size_t mlen);

/* Counts for /metrics. */
uint64_t st_nconvs(const st *t);
uint64_t st_nusers(const st *t);

#endif
