/*
 * auth.h — JSON Web Tokens (HS256) for clients, through Debian's libjwt.
 *
 * A token's "sub" claim is the user id in decimal (uint64, 1 .. 2^53-1 so
 * that JavaScript clients hold it exactly); "exp" (seconds since the epoch)
 * is required and honoured, with no leeway. Only alg HS256 is accepted: a
 * token with "alg":"none" or any other algorithm is refused.
 */
#ifndef CHATLOG_AUTH_H
#define CHATLOG_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_MAX_TOKEN 4096
#define AUTH_MIN_SECRET 16

enum {
    AUTH_OK = 0,
    AUTH_EMALFORMED = -1, /* not a JWT, bad base64/JSON, wrong alg */
    AUTH_EBADSIG = -2,    /* signature does not match */
    AUTH_EEXPIRED = -3,   /* exp in the past, or missing */
    AUTH_EBADSUB = -4,    /* sub missing or not a decimal id in range */
};

/* Read a secret file: its bytes with one trailing newline stripped. Returns
 * 0 and *out (caller frees) and *len, or -errno / -EINVAL when shorter than
 * AUTH_MIN_SECRET bytes. */
int auth_load_secret(const char *path, uint8_t **out, size_t *len);

/* Verify token[0..len) at time now (seconds). Returns AUTH_OK and *user_id,
 * or an AUTH_E* code. Never crashes on arbitrary bytes. */
int auth_verify(const uint8_t *secret, size_t secret_len, const char *token,
                size_t len, int64_t now, uint64_t *user_id);

/* Mint an HS256 token for user_id valid for ttl seconds from now. Returns a
 * malloc'd NUL-terminated string (caller frees) or NULL. */
char *auth_mint(const uint8_t *secret, size_t secret_len, uint64_t user_id,
                int64_t now, int64_t ttl);

const char *auth_strerror(int err);

#endif
