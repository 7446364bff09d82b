#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chatd.h"

const double met_latency_bounds[MET_BUCKETS] = {
    0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
static const double batch_bounds[MET_BUCKETS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};

void met_observe(met_hist *h, const double *bounds, double v)
{
    int i = 0;
    while (i < MET_BUCKETS && v > bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

void met_observe_group(met *m, size_t n)
{
    int i = 0;
    while (i < MET_BUCKETS && (double)n > batch_bounds[i])
        i++;
    __atomic_add_fetch(&m->batch_size_counts[i], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&m->fsync_batches, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&m->fsync_records, n, __ATOMIC_RELAXED);
}

typedef struct sb {
    char *p;
    size_t len, cap;
} sb;

static void sbf(sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sbf(sb *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0,
                          fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap ? b->cap * 2 : 8192;
        while (ncap < b->len + (size_t)n + 1)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np)
            return;
        b->p = np;
        b->cap = ncap;
    }
}

static void counter(sb *b, const char *name, const char *help, uint64_t v)
{
    sbf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
        (unsigned long long)v);
}

static void gauge(sb *b, const char *name, const char *help, uint64_t v)
{
    sbf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", name, help, name, name,
        (unsigned long long)v);
}

static void hist(sb *b, const char *name, const char *help, const double *bounds,
                 const uint64_t *counts, double sum, uint64_t n)
{
    sbf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < MET_BUCKETS; i++) {
        cum += counts[i];
        sbf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += counts[MET_BUCKETS];
    sbf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %g\n%s_count %llu\n", name,
        (unsigned long long)cum, name, sum, name, (unsigned long long)n);
}

char *met_render(const met *m, uint64_t convs, uint64_t users, size_t *len)
{
    sb b = {0};
    counter(&b, "chatd_connections_total", "TCP connections accepted", m->connections_total);
    gauge(&b, "chatd_connections_open", "open connections", m->connections_open);
    counter(&b, "chatd_connections_rejected_total", "connections refused at the limit",
            m->connections_rejected);
    gauge(&b, "chatd_ws_sessions", "WebSocket sessions past Hello", m->ws_sessions);
    counter(&b, "chatd_frames_in_total", "WebSocket messages received", m->frames_in);
    counter(&b, "chatd_frames_out_total", "WebSocket messages queued", m->frames_out);
    counter(&b, "chatd_http_requests_total", "HTTP requests", m->http_requests);
    counter(&b, "chatd_messages_appended_total", "messages durable in the log",
            m->messages_appended);
    counter(&b, "chatd_receipts_appended_total", "read/delivered pointers stored",
            m->receipts_appended);
    counter(&b, "chatd_deliveries_total", "Msg frames queued to devices", m->deliveries);
    counter(&b, "chatd_slow_consumer_disconnects_total",
            "connections closed with 4008", m->slow_consumer_disconnects);
    sbf(&b, "# HELP chatd_errors_total Error frames and REST errors by code\n"
            "# TYPE chatd_errors_total counter\n");
    for (int i = 1; i < 16; i++)
        if (gw_error_name(i)[0] != '?')
            sbf(&b, "chatd_errors_total{code=\"%s\"} %llu\n", gw_error_name(i),
                (unsigned long long)m->errors_by_code[i]);
    hist(&b, "chatd_append_latency_ms", "append to durable, milliseconds",
         met_latency_bounds, m->append_latency_ms.counts, m->append_latency_ms.sum,
         m->append_latency_ms.n);
    uint64_t bc[MET_BUCKETS + 1];
    for (int i = 0; i <= MET_BUCKETS; i++)
        bc[i] = __atomic_load_n(&m->batch_size_counts[i], __ATOMIC_RELAXED);
    hist(&b, "chatd_fsync_batch_records", "records per fdatasync group", batch_bounds,
         bc, (double)__atomic_load_n(&m->fsync_records, __ATOMIC_RELAXED),
         __atomic_load_n(&m->fsync_batches, __ATOMIC_RELAXED));
    counter(&b, "chatd_push_queued_total", "push notifications queued", m->push_queued);
    counter(&b, "chatd_push_coalesced_total",
            "messages folded into a queued push notification", m->push_coalesced);
    counter(&b, "chatd_push_sent_total", "push notifications the gateway accepted",
            m->push_sent);
    counter(&b, "chatd_push_failed_total",
            "push notifications given up (refused, or out of attempts)", m->push_failed);
    counter(&b, "chatd_push_retried_total", "push attempts scheduled again", m->push_retried);
    counter(&b, "chatd_push_dropped_total", "push notifications dropped, queue full",
            m->push_dropped);
    counter(&b, "chatd_push_rejected_total", "pushkeys the gateway rejected (unregistered)",
            m->push_rejected);
    counter(&b, "chatd_push_skipped_total",
            "push notifications not sent: read, back online, no device, or superseded",
            m->push_skipped);
    gauge(&b, "chatd_push_queue_depth", "push notifications queued or in flight",
          m->push_queue_depth);
    gauge(&b, "chatd_push_devices", "registered push devices", m->push_devices);
    counter(&b, "chatd_media_uploads_total", "media uploads stored", m->media_uploads);
    counter(&b, "chatd_media_upload_bytes_total", "bytes of media uploads stored",
            m->media_upload_bytes);
    counter(&b, "chatd_media_uploads_failed_total",
            "media uploads refused after their head, cut short or failed", m->media_uploads_failed);
    gauge(&b, "chatd_media_uploads_active", "media uploads being received", m->media_uploads_active);
    gauge(&b, "chatd_http_input_buffer_peak_bytes",
          "largest input buffer an HTTP connection has held", m->http_input_buffer_peak);
    gauge(&b, "chatd_conversations", "conversations", convs);
    gauge(&b, "chatd_users", "users known", users);
    *len = b.len;
    return b.p;
}
