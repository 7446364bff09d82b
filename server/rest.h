/*
 * rest.h — helpers of the JSON API (rest.c) shared with the modules that add
 * endpoints to it (push.c) and with its unit tests. Entry point: rest_handle()
 * in chatd.h. Each returns 0 or -1 with a one-line reason in err.
 */
#ifndef CHATLOG_REST_H
#define CHATLOG_REST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

struct srv;

enum rest_route {
    RT_CONVS = 1,    /* /api/v1/conversations */
    RT_CONV = 2,     /* /api/v1/conversations/:id */
    RT_MESSAGES = 3, /* .../:id/messages */
    RT_READ = 4,     /* .../:id/read */
    RT_MEMBERS = 5,  /* .../:id/members */
};
/* A decimal id in min .. 2^53-1 (digits only). */
int rest__parse_id(const char *s, size_t n, uint64_t min, uint64_t *out);
/* Which conversation route path is (0: none), and its conv_id. */
int rest__route(const char *path, uint64_t *conv_id);
/* Content-Type names JSON (parameters allowed). */
int rest__is_json_ctype(const char *v);
/* field of a must be an array of ids; *out is malloc'd (caller frees). */
int rest__ids(const json_t *a, const char *field, uint64_t **out, size_t *n,
              char *err, size_t errlen);
/* Every key of o is in allowed (NULL-terminated). */
int rest__check_fields(const json_t *o, const char *const *allowed, char *err,
                       size_t errlen);

/* The bearer token of r checked against s's secret: 0 with *uid, or -1
 * with a static reason in *why (the 401 message). */
int rest__bearer(struct srv *s, const http_req *r, uint64_t *uid, const char **why);
/* 1 while conn_id has a REST request waiting for the engine or queued
 * behind one: an answer sent now would overtake theirs. */
int rest_conn_busy(uint64_t conn_id);

#endif
