#include "helpers.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    int first_err;
    uint64_t msg_id;
} waiter;

static void wait_cb(void *arg, int status, const log_append_result *res)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    if (status && !w->first_err)
        w->first_err = status;
    if (status == 0)
        w->msg_id = res->msg_id;
    w->outstanding--;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int wait_all(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->outstanding > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    return w->first_err;
}

int th_append_msg(log_t *log, uint64_t conv_id, const char *body,
                  uint64_t *msg_id)
{
    waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0, 0};
    rec_view r = {.type = REC_MESSAGE, .conv_id = conv_id, .sender_id = 1,
                  .body = (const uint8_t *)body, .body_len = (uint32_t)strlen(body)};
    int rc = log_append(log, &r, wait_cb, &w);
    if (rc)
        return rc;
    rc = wait_all(&w);
    if (msg_id)
        *msg_id = w.msg_id;
    return rc;
}

int th_append_many(log_t *log, uint64_t conv_id, const char *prefix, int n)
{
    waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char body[4096];
        snprintf(body, sizeof body, "%s-%d", prefix, i);
        rec_view r = {.type = REC_MESSAGE, .conv_id = conv_id, .sender_id = 1,
                      .body = (const uint8_t *)body,
                      .body_len = (uint32_t)strlen(body)};
        pthread_mutex_lock(&w.mu);
        w.outstanding++;
        pthread_mutex_unlock(&w.mu);
        rc = log_append(log, &r, wait_cb, &w);
        if (rc) {
            pthread_mutex_lock(&w.mu);
            w.outstanding--;
            pthread_mutex_unlock(&w.mu);
        }
    }
    int wrc = wait_all(&w);
    return rc ? rc : wrc;
}

long th_count_conv(log_t *log, uint64_t conv_id)
{
    uint64_t after = 0;
    long count = 0;
    for (;;) {
        log_result r = {0};
        int more = 0;
        if (log_read_conv(log, conv_id, after, LOG_AFTER, 100, &r, &more)) {
            log_result_free(&r);
            return -1;
        }
        for (size_t i = 0; i < r.n; i++) {
            if (r.entries[i].rec.msg_id != after + 1) {
                log_result_free(&r);
                return -1;
            }
            after++;
            count++;
        }
        log_result_free(&r);
        if (!more)
            return count;
    }
}

int th_open(const char *dir, io_vfs *io, uint64_t segment_bytes, log_t **out)
{
    log_options o = {.shards = 4, .segment_bytes = segment_bytes, .io = io};
    return log_open(dir, &o, out);
}

void th_wait_cb(void *arg, int status, uint64_t end)
{
    th_wait *w = arg;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    w->status = status;
    w->end = end;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int th_wait_for(th_wait *w, uint64_t *end)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    if (end)
        *end = w->end;
    return w->status;
}

int th_write_sync(log_t *log, uint32_t shard, uint64_t at, const uint8_t *b,
                  size_t len, uint64_t *end)
{
    th_wait w = TH_WAIT_INIT;
    int rc = log_write_batches(log, shard, at, b, len, th_wait_cb, &w);
    return rc ? rc : th_wait_for(&w, end);
}

int th_recs_cb(void *arg, const batch_header *h, const uint8_t *bytes,
               const log_entry *e, size_t n)
{
    th_recs *r = arg;
    (void)h;
    (void)bytes;
    for (size_t i = 0; i < n && r->n < TH_RECS_MAX; i++) {
        uint64_t hash = 1469598103934665603ull; /* FNV-1a */
        for (uint32_t k = 0; k < e[i].rec.body_len; k++)
            hash = (hash ^ e[i].rec.body[k]) * 1099511628211ull;
        uint64_t *v = r->v[r->n++];
        v[0] = e[i].offset;
        v[1] = e[i].term;
        v[2] = e[i].rec.type;
        v[3] = e[i].rec.conv_id;
        v[4] = e[i].rec.msg_id;
        v[5] = (uint64_t)e[i].rec.ts_ms;
        v[6] = hash;
    }
    return 0;
}
