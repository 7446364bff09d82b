/*
 * helpers.h — engine test helpers: synchronous appends and whole-conversation
 * reads on top of the asynchronous API.
 */
#ifndef CHATLOG_TEST_HELPERS_H
#define CHATLOG_TEST_HELPERS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

/* Append one REC_MESSAGE and wait for its callback. Returns the callback's
 * status (or log_append's error); *msg_id gets the assigned id. */
int th_append_msg(log_t *log, uint64_t conv_id, const char *body,
                  uint64_t *msg_id);

/* Append n messages to conv_id without waiting in between, then wait for all
 * of them. Bodies are "<prefix>-<i>". Returns the first failure, or 0. */
int th_append_many(log_t *log, uint64_t conv_id, const char *prefix, int n);

/* Number of messages log_read_conv returns for conv_id reading forward in
 * pages, checking they are 1..n in order; -1 if any check fails. */
long th_count_conv(log_t *log, uint64_t conv_id);

/* Open with small segments and the given vfs (NULL: posix). */
int th_open(const char *dir, io_vfs *io, uint64_t segment_bytes, log_t **out);

/* Waiting for one log_write_cb (log_write_batches, log_segment_install):
 * initialise with TH_WAIT_INIT, pass th_wait_cb and the th_wait, then
 * th_wait_for returns the callback's status (and *end, if not NULL). */
typedef struct th_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, status;
    uint64_t end;
} th_wait;
#define TH_WAIT_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0}
void th_wait_cb(void *arg, int status, uint64_t end);
int th_wait_for(th_wait *w, uint64_t *end);

/* log_write_batches and wait: the call's error, else the callback's
 * status; *end (if not NULL) gets the end offset reported. */
int th_write_sync(log_t *log, uint32_t shard, uint64_t at, const uint8_t *b,
                  size_t len, uint64_t *end);

/* Records as log_read_from passes them, one row each: offset, term, type,
 * conv_id, msg_id, ts, a hash of the body (th_recs_cb; at most
 * TH_RECS_MAX kept). Compare two with memcmp over n rows. */
#define TH_RECS_MAX 8192
typedef struct th_recs {
    uint64_t v[TH_RECS_MAX][7];
    uint32_t n;
} th_recs;
int th_recs_cb(void *arg, const batch_header *h, const uint8_t *bytes,
               const log_entry *e, size_t n);

#endif
