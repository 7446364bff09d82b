/*
 * auth.c — HS256 JSON Web Tokens through Debian 12's libjwt 1.10.2.
 *
 * What a valid token is (auth_verify), checked in this order:
 *
 *   1. Shape, before libjwt sees a byte: 1..AUTH_MAX_TOKEN bytes of the
 *      base64url alphabet [A-Za-z0-9_-] in exactly three non-empty
 *      segments "header.payload.signature". No '=' padding, no whitespace,
 *      no NUL, and the unused low bits of the last base64url character
 *      must be zero (one spelling per byte string).
 *   2. Header: a JSON object without duplicate keys whose "alg" is exactly
 *      the string "HS256" and whose "typ", if present, is "JWT".
 *      Payload: a JSON object without duplicate keys. Neither may contain
 *      a raw NUL byte (libjwt reads them as C strings).
 *   3. jwt_decode() with the secret, which checks the HMAC; then
 *      jwt_get_alg() must say HS256.
 *   4. "exp": a JSON integer greater than now (exp == now is expired);
 *      missing or of another type is expired too. "nbf", if present: a
 *      JSON integer not greater than now (RFC 7519 4.1.5), else expired.
 *   5. "sub": a JSON string of 1..16 decimal digits without a leading zero,
 *      value 1 .. 2^53-1.
 *
 * Failing steps 1-2 (or the alg check of 3) is AUTH_EMALFORMED, the HMAC
 * of 3 AUTH_EBADSIG, 4 AUTH_EEXPIRED, 5 AUTH_EBADSUB. A secret shorter
 * than AUTH_MIN_SECRET verifies nothing: AUTH_EBADSIG.
 *
 * Secret files (auth_load_secret): at most AUTH_MAX_SECRET_FILE (4096)
 * bytes, else -EFBIG; one trailing "\n" or "\r\n" is not part of the
 * secret; fewer than AUTH_MIN_SECRET bytes left is -EINVAL. These are
 * -errno values, not AUTH_E* codes (which overlap -EPERM..-EINTR), so
 * report them with strerror(-rc), not auth_strerror().
 *
 * Why steps 1 and 2 are ours rather than libjwt's: libjwt 1.10.2 reports
 * every failure as EINVAL, so without them a bad signature could not be
 * told from garbage; and it is laxer than RFC 7515/7519 in ways found by
 * probing it:
 *   - jwt_decode() with a key accepts any HMAC alg: an HS512 (or HS384)
 *     token signed with the same secret decodes with no error. Hence the
 *     jwt_get_alg() check of step 3, kept even though step 2 already
 *     refuses such a header.
 *   - "alg" is compared case-insensitively ("hs256" decodes as HS256).
 *   - '='-padded header/payload segments are accepted.
 *   - duplicate claims are accepted, the last one winning ({"sub":"5",
 *     "sub":"6"} gives sub 6); a second parser in front of us might pick
 *     the first, so duplicates are refused.
 *   - alg "none" decoded with a key is refused (EINVAL), as it should be;
 *     refused here already by step 2.
 *   - jwt_get_grant_int() returns 0 with errno 0 for a string or real
 *     value and -1 (not 0, as jwt.h says) with ENOENT for a missing one,
 *     so "exp" is read through jwt_get_grants_json(), whose text tells an
 *     integer from anything else.
 *   - 1.10.2 has no jwt_free_str(): strings it returns are plain malloc()
 *     memory, freed with free().
 *   - The HMAC comparison is constant-time only with Debian's
 *     1.10.2-1+deb12u1 (CVE-2024-25189, a strcmp() timing leak).
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <jwt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* exp and iat go through libjwt as long. */
_Static_assert(sizeof(long) >= sizeof(int64_t), "long must hold 64 bits");

#define AUTH_MAX_SECRET_FILE 4096
#define AUTH_MAX_USER_ID ((UINT64_C(1) << 53) - 1)
#define AUTH_MAX_SUB_DIGITS 16 /* 2^53-1 = 9007199254740991 */

/* --- secret ------------------------------------------------------------- */

int auth_load_secret(const char *path, uint8_t **out, size_t *len)
{
    /* One byte more than allowed, so that a file too large is noticed. */
    uint8_t buf[AUTH_MAX_SECRET_FILE + 1];
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while (n < sizeof buf) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int err = -errno;
            close(fd);
            explicit_bzero(buf, n);
            return err;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    int rc = 0;
    if (n > AUTH_MAX_SECRET_FILE) {
        rc = -EFBIG;
        goto out;
    }
    /* Editors and `echo` end a file with a newline that is not part of the
     * secret; `openssl rand -base64 32 > f` does too. */
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r')
            n--;
    }
    if (n < AUTH_MIN_SECRET) {
        rc = -EINVAL;
        goto out;
    }
    uint8_t *s = malloc(n);
    if (!s) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(s, buf, n);
    *out = s;
    *len = n;
out:
    explicit_bzero(buf, sizeof buf);
    return rc;
}

/* --- shape checks (steps 1 and 2) ---------------------------------------- */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Strict unpadded base64url: decodes s[0..n) into out (room for n*3/4
 * bytes), returns the decoded length or -1. */
static long b64url_decode(const char *s, size_t n, uint8_t *out)
{
    if (n % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* Leftover bits (2 or 4) must be zero, or two spellings would decode
     * to the same bytes. */
    if (acc & ((UINT32_C(1) << bits) - 1))
        return -1;
    return (long)o;
}

/* Decodes one segment and parses it as a JSON object with unique keys;
 * NULL if it is anything else. */
static json_t *segment_json(const char *s, size_t n)
{
    uint8_t buf[AUTH_MAX_TOKEN];
    long m = b64url_decode(s, n, buf);
    /* A NUL byte is never valid JSON outside a string (RFC 8259), but
     * Jansson skips one between tokens, while libjwt parses the decoded
     * segment as a C string, up to its first NUL: refuse it here, so that
     * both parsers always see the same text (found by fuzz/jwt). */
    if (m < 0 || memchr(buf, 0, (size_t)m))
        return NULL;
    json_t *js = json_loadb((const char *)buf, (size_t)m,
                            JSON_REJECT_DUPLICATES, NULL);
    if (js && !json_is_object(js)) {
        json_decref(js);
        js = NULL;
    }
    return js;
}

/* Whether js is exactly the JSON string lit (no NUL inside, no prefix). */
static int json_string_is(const json_t *js, const char *lit)
{
    return json_is_string(js) && json_string_length(js) == strlen(lit) &&
           memcmp(json_string_value(js), lit, strlen(lit)) == 0;
}

static int check_shape(const char *tok, size_t len)
{
    size_t dot[2], ndots = 0;
    for (size_t i = 0; i < len; i++) {
        if (tok[i] == '.') {
            if (ndots == 2)
                return AUTH_EMALFORMED;
            dot[ndots++] = i;
        } else if (b64url_value((unsigned char)tok[i]) < 0) {
            return AUTH_EMALFORMED;
        }
    }
    if (ndots != 2 || dot[0] == 0 || dot[1] == dot[0] + 1 ||
        dot[1] + 1 == len)
        return AUTH_EMALFORMED;

    int rc = AUTH_EMALFORMED;
    json_t *head = segment_json(tok, dot[0]);
    json_t *body = segment_json(tok + dot[0] + 1, dot[1] - dot[0] - 1);
    if (head && body) {
        const json_t *alg = json_object_get(head, "alg");
        const json_t *typ = json_object_get(head, "typ");
        /* RFC 7515 4.1.1: "alg" is case-sensitive. */
        if (json_string_is(alg, "HS256") &&
            (!typ || json_string_is(typ, "JWT")))
            rc = AUTH_OK;
    }
    json_decref(head);
    json_decref(body);
    return rc;
}

/* --- claims (steps 4 and 5) ---------------------------------------------- */

/* A claim that must be a JSON integer: 0 and *v, -ENOENT when absent, or
 * -EINVAL when of another type. */
static int claim_int(jwt_t *jwt, const char *name, int64_t *v)
{
    char *text = jwt_get_grants_json(jwt, name);
    if (!text)
        return -ENOENT;
    /* Jansson prints an integer as %lld; a real always has '.' or 'e', a
     * string quotes, everything else letters or brackets. */
    const char *p = text + (text[0] == '-');
    int rc = *p ? 0 : -EINVAL;
    for (; *p; p++)
        if (*p < '0' || *p > '9')
            rc = -EINVAL;
    if (rc == 0) {
        errno = 0;
        char *end;
        long long x = strtoll(text, &end, 10);
        if (errno || *end)
            rc = -EINVAL;
        else
            *v = x;
    }
    free(text);
    return rc;
}

static int parse_sub(const char *s, uint64_t *user_id)
{
    size_t n = strlen(s);
    if (n == 0 || n > AUTH_MAX_SUB_DIGITS || s[0] == '0')
        return AUTH_EBADSUB;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return AUTH_EBADSUB;
        v = v * 10 + (uint64_t)(s[i] - '0'); /* < 10^16: no overflow */
    }
    if (v > AUTH_MAX_USER_ID)
        return AUTH_EBADSUB;
    *user_id = v;
    return AUTH_OK;
}

int auth_verify(const uint8_t *secret, size_t secret_len, const char *token,
                size_t len, int64_t now, uint64_t *user_id)
{
    /* A missing or short secret would make forgery easy: verify nothing. */
    if (!secret || secret_len < AUTH_MIN_SECRET || secret_len > INT_MAX)
        return AUTH_EBADSIG;
    if (!token || len == 0 || len > AUTH_MAX_TOKEN)
        return AUTH_EMALFORMED;
    int rc = check_shape(token, len);
    if (rc != AUTH_OK)
        return rc;

    /* libjwt wants a NUL-terminated string; the shape check guarantees
     * there is no NUL inside. */
    char buf[AUTH_MAX_TOKEN + 1];
    memcpy(buf, token, len);
    buf[len] = '\0';
    jwt_t *jwt = NULL;
    /* The header was checked above, so the one way left to fail is the
     * signature (or ENOMEM, which we cannot tell apart: refused either
     * way). */
    if (jwt_decode(&jwt, buf, secret, (int)secret_len) != 0 || !jwt)
        return AUTH_EBADSIG;
    if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
        rc = AUTH_EMALFORMED;
        goto out;
    }

    int64_t exp, nbf;
    if (claim_int(jwt, "exp", &exp) != 0 || exp <= now) {
        rc = AUTH_EEXPIRED;
        goto out;
    }
    int nrc = claim_int(jwt, "nbf", &nbf);
    if ((nrc == 0 && nbf > now) || nrc == -EINVAL) {
        rc = AUTH_EEXPIRED;
        goto out;
    }

    /* NULL when absent or not a JSON string (a number is refused: RFC 7519
     * 4.1.2 makes "sub" a string). */
    const char *sub = jwt_get_grant(jwt, "sub");
    uint64_t uid = 0;
    rc = sub ? parse_sub(sub, &uid) : AUTH_EBADSUB;
    if (rc == AUTH_OK)
        *user_id = uid;
out:
    jwt_free(jwt);
    return rc;
}

/* --- minting ------------------------------------------------------------- */

char *auth_mint(const uint8_t *secret, size_t secret_len, uint64_t user_id,
                int64_t now, int64_t ttl)
{
    if (!secret || secret_len < AUTH_MIN_SECRET || secret_len > INT_MAX ||
        user_id == 0 || user_id > AUTH_MAX_USER_ID || ttl <= 0 ||
        now > INT64_MAX - ttl)
        return NULL;
    char sub[24];
    snprintf(sub, sizeof sub, "%" PRIu64, user_id);

    jwt_t *jwt = NULL;
    char *tok = NULL;
    if (jwt_new(&jwt) != 0)
        return NULL;
    if (jwt_set_alg(jwt, JWT_ALG_HS256, secret, (int)secret_len) == 0 &&
        jwt_add_grant(jwt, "sub", sub) == 0 &&
        jwt_add_grant_int(jwt, "exp", (long)(now + ttl)) == 0 &&
        jwt_add_grant_int(jwt, "iat", (long)now) == 0)
        tok = jwt_encode_str(jwt); /* malloc()ed: the caller free()s it */
    jwt_free(jwt);
    return tok;
}

const char *auth_strerror(int err)
{
    switch (err) {
    case AUTH_OK:
        return "ok";
    case AUTH_EMALFORMED:
        return "malformed token";
    case AUTH_EBADSIG:
        return "bad token signature";
    case AUTH_EEXPIRED:
        return "token expired";
    case AUTH_EBADSUB:
        return "bad token subject";
    default:
        return "unknown auth error";
    }
}
