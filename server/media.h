/*
 * media.h — media objects: a content-addressed blob store in the data
 * directory, uploads (POST /api/v1/media), signed download URLs
 * (GET /media/<id>?exp=&sig=) and minting fresh URLs
 * (GET /api/v1/media/<id>/url). docs/media.md is the manual; the on-disk
 * contract is at the top of media.c.
 *
 * Everything here runs on the loop thread. Errors: 0 success, negative
 * failure (-errno for I/O, -1 for "invalid"), unless said otherwise.
 */
#ifndef CHATLOG_MEDIA_H
#define CHATLOG_MEDIA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "chatd.h"

#define MEDIA_ID_LEN 64  /* lowercase hex SHA-256 of the bytes */
#define MEDIA_SIG_LEN 64 /* lowercase hex HMAC-SHA256 */
#define MEDIA_REST_PATH "/api/v1/media"
#define MEDIA_URL_PREFIX "/media/"

/* 1 if s[0..n) is MEDIA_ID_LEN lowercase hex digits, else 0. */
int media_valid_id(const char *s, size_t n);

/* sig = hex HMAC-SHA256(key, id "\n" exp) into out (MEDIA_SIG_LEN + 1 bytes,
 * NUL-terminated). 0, or -1 when OpenSSL fails. */
int media_sign(const uint8_t *key, size_t klen, const char *id, int64_t exp, char *out);

/* Check a download URL's parameters at time now (unix seconds): 0 when sig
 * is the signature of (id, exp) and now <= exp; -1 otherwise (missing,
 * malformed, expired or wrong). The comparison is constant-time
 * (CRYPTO_memcmp). */
int media_check_sig(const uint8_t *key, size_t klen, const char *id, const char *exp_str,
                    const char *sig, int64_t now);

/* A Range header value against an object of size bytes. Only one range of
 * the "bytes" unit is honoured: "bytes=a-b", "bytes=a-", "bytes=-n".
 * Returns 1 with [*start, *end] (inclusive) for a satisfiable range, 0 to
 * serve the whole object (no header, another unit, several ranges, or a
 * malformed value, which RFC 9110 lets a server ignore), or -1 when the
 * range cannot be satisfied (416). */
int media_parse_range(const char *v, uint64_t size, uint64_t *start, uint64_t *end);

/* The id in a message's media_url when it is one of ours
 * ("/media/<id>" optionally followed by "?..."; a scheme and host before it
 * are allowed). Writes MEDIA_ID_LEN + 1 bytes into id. 0, or -1. */
int media_url_id(const char *url, size_t len, char *id);

/* Largest request body accepted for this request: max_media_bytes for
 * POST /api/v1/media, else max_http_body_bytes. */
uint64_t media_body_limit(const srv *s, const http_req *r);

/* ---- uploads: streamed into the store ----
 * An upload is written to DATA/media/tmp-up-<pid>-<n> as it arrives while
 * its SHA-256 is computed, then committed under its content address (see
 * the contract in media.c). Memory per upload: this struct and a hash
 * context, whatever the object's size. */
typedef struct media_upload media_upload;

/* 1 if r is an upload (POST /api/v1/media): conn.c streams its body to
 * media_upload_sink instead of buffering it. */
int media_is_upload(const http_req *r);

/* Open an upload into the store under data_dir for at most limit bytes.
 * ctype (may be NULL) and uploader go into the .meta at commit. 0 with *out
 * (caller ends it with media_upload_commit or media_upload_discard), or
 * -errno (media/ cannot be created, the temp file cannot be opened). */
int media_upload_open(const char *data_dir, uint64_t limit, const char *ctype,
                      uint64_t uploader, media_upload **out);

/* Append the next bytes: hashed, and written to the temp file (in pieces of
 * at most 64 KiB; writeback is started every few MiB so the final fsync has
 * little left to do). 0, or -EFBIG past the limit, or the write's -errno
 * (-ENOSPC, -EDQUOT, -EIO, ...). An error sticks: later calls return it. */
int media_upload_write(media_upload *u, const uint8_t *p, size_t n);

/* Bytes written so far. */
uint64_t media_upload_size(const media_upload *u);

/* Finish: fsync the temp file, rename it to DATA/media/<p>/<id> (or drop it
 * when that object is already stored: same id, same bytes), fsync the
 * directories, then write the .meta (content type kept from the first
 * upload, uploader added). id receives the hex SHA-256 (MEDIA_ID_LEN + 1
 * bytes). Frees u whatever the outcome; on failure nothing is left under
 * the object's name and the temp file is removed. 0 or -errno (or the
 * sticky write error). */
int media_upload_commit(media_upload *u, char *id);

/* Abandon: close and unlink the temp file, free u. NULL is a no-op. */
void media_upload_discard(media_upload *u);

/* The body sink of POST /api/v1/media (ctx: from media_upload_begin). Its
 * end answers 201 {"media_id","url","size","content_type"}, or 413 (over
 * max_media_bytes), 507 (no space), 500 (another I/O error), with a JSON
 * error body. */
extern const body_sink media_upload_sink;

/* The head of an upload arrived on c (after conn.c's 413 check of a
 * Content-Length over max_media_bytes). Checks the bearer token and opens
 * the temp file. 0 with *ctx for media_upload_sink; or -1 after queueing
 * the answer on c with Connection: close (401 bad token, 503 out of file
 * descriptors, 507 no space, 500) — the body is then never read. */
int media_upload_begin(conn *c, const http_req *r, void **ctx);

/* Record that a committed message of conv_id carries media_url (called by
 * st_apply for every message, at start-up and live). URLs that are not ours
 * are ignored. Allocation failure drops the entry (the uploader can still
 * mint URLs). */
void media_note_sent(const char *url, size_t len, uint64_t conv_id);

/* Forget every recorded (media, conversation) pair (server shutdown, tests). */
void media_forget_all(void);

/* GET or HEAD /media/<id>?exp=&sig=: answer on c (200/206/403/404/416). */
void media_serve(conn *c, const http_req *r, int keep_alive);

/* GET /api/v1/media/<id>/url for authenticated user uid (uploads do not
 * come here: media_upload_sink). Returns the HTTP status; on success *out
 * is the JSON answer (caller decrefs), on failure *code is a GW_E* code and
 * err the message. body is unused. */
int media_rest(srv *s, uint64_t uid, const http_req *r, const uint8_t *body, size_t blen,
               json_t **out, int *code, char *err, size_t errlen);

/* Write an object held in memory into the store under data_dir: open,
 * write and commit an upload (crash-safe; see media.c). id receives the hex
 * SHA-256 (MEDIA_ID_LEN + 1 bytes). ctype and uploader go into the .meta
 * file; an existing object keeps its bytes and content type and gains the
 * uploader. 0 or -errno. */
int media_store(const char *data_dir, const uint8_t *data, size_t len, const char *ctype,
                uint64_t uploader, char *id);

#endif
