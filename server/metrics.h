/*
 * metrics.h — counters and histograms for GET /metrics (Prometheus text
 * format 0.0.4). Loop thread only, except met_observe_append_batch which the
 * engine's writer threads call (atomics).
 */
#ifndef CHATLOG_METRICS_H
#define CHATLOG_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define MET_BUCKETS 14

typedef struct met_hist {
    uint64_t counts[MET_BUCKETS + 1]; /* last: +Inf */
    double sum;
    uint64_t n;
} met_hist;

typedef struct met {
    uint64_t connections_total, connections_open, connections_rejected;
    uint64_t ws_sessions;
    uint64_t frames_in, frames_out;
    uint64_t http_requests;
    uint64_t messages_appended, receipts_appended;
    uint64_t deliveries;
    uint64_t slow_consumer_disconnects;
    uint64_t errors_by_code[16];
    met_hist append_latency_ms;
    /* push notifications (push.c; docs/push.md) */
    uint64_t push_queued, push_coalesced, push_sent, push_failed, push_retried;
    uint64_t push_dropped, push_rejected, push_skipped;
    uint64_t push_queue_depth, push_devices; /* gauges */
    /* media uploads (media.c; docs/media.md) */
    uint64_t media_uploads, media_upload_bytes, media_uploads_failed;
    uint64_t media_uploads_active; /* gauge */
    /* the largest input buffer any HTTP connection has held (gauge: a high
     * water mark; uploads stream, so it stays near max_head_bytes +
     * max_http_body_bytes whatever is uploaded) */
    uint64_t http_input_buffer_peak;
    /* written by writer threads */
    uint64_t fsync_batches;   /* atomic */
    uint64_t fsync_records;   /* atomic */
    uint64_t batch_size_counts[MET_BUCKETS + 1]; /* atomic, records/group */
} met;

void met_observe(met_hist *h, const double *bounds, double v);
extern const double met_latency_bounds[MET_BUCKETS];
/* One durable group of n records (any thread). */
void met_observe_group(met *m, size_t n);
/* Render everything into a malloc'd buffer (*len bytes); caller frees. */
char *met_render(const met *m, uint64_t convs, uint64_t users, size_t *len);

#endif
