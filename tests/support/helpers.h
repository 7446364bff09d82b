/*
 * helpers.h — engine test helpers: synchronous appends and whole-conversation
 * reads on top of the asynchronous API.
 */
#ifndef CHATLOG_TEST_HELPERS_H
#define CHATLOG_TEST_HELPERS_H

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

#endif
