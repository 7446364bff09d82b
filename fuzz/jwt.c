/*
 * jwt.c — fuzz target: token strings through auth_verify (server/auth.c, on
 * Debian's libjwt), the check behind every Hello and every REST request.
 *
 * Input: byte 0 is a mode, the rest:
 *   0  the token as given;
 *   1  a header JSON text and a claims JSON text separated by FSRV_SEP: the
 *      target base64url-encodes them and signs the result with the right
 *      secret, so the fuzzer reaches the header and claims rules;
 *   2  "header.claims" as given (any bytes), signed with the right secret;
 *   3  8 bytes of user id and 4 of lifetime for auth_mint, whose token must
 *      then verify as exactly that user (or auth_mint refuses: id 0 or
 *      >= 2^53, lifetime <= 0).
 * Verification runs at a fixed time, FUZZ_NOW.
 *
 * Properties:
 *   - the result is one of the AUTH_E* codes, and never AUTH_EBADSIG for a
 *     token the target signed itself (modes 1-3);
 *   - a token accepted has the exact shape we require, checked by an
 *     independent parser here: three strict unpadded base64url segments;
 *     a header object without duplicate keys whose alg is "HS256" and typ,
 *     if present, "JWT"; a claims object without duplicate keys, exp an
 *     integer > now, nbf absent or an integer <= now, sub a string of 1..16
 *     digits without a leading zero, 1 .. 2^53-1, equal to the user id
 *     returned; and a signature that is exactly HMAC-SHA256 (OpenSSL,
 *     computed here) of "header.claims" with the secret;
 *   - conversely, a token that passes that independent check is accepted
 *     (nothing valid is refused);
 *   - an accepted token is refused with any one signature character
 *     changed, with another secret, at its exp time, and cut by one byte.
 */
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "common.h"
#include "srv_harness.h"

#define FUZZ_NOW 1800000000LL
#define ID_MAX ((1ull << 53) - 1)

static const char secret[] = "jwt-fuzz-secret-0123456789abcdef";
static const char other_secret[] = "jwt-fuzz-secret-0123456789abcdeF";
static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64url_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = b64[(acc >> bits) & 63];
        }
    }
    if (bits)
        out[o++] = b64[(acc << (6 - bits)) & 63];
    out[o] = 0;
    return o;
}

/* Strict: alphabet only, no padding, zero leftover bits. -1 if not. */
static long b64url_decode(const char *s, size_t n, uint8_t *out)
{
    if (n % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    long o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = s[i] ? strchr(b64, s[i]) : NULL;
        if (!p)
            return -1;
        acc = (acc << 6) | (uint32_t)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1))
        return -1;
    return o;
}

static void sign(const char *key, const char *msg, size_t n, uint8_t mac[32])
{
    unsigned int len = 0;
    FUZZ_CHECK(HMAC(EVP_sha256(), key, (int)strlen(key), (const uint8_t *)msg, n, mac, &len) &&
                   len == 32,
               "HMAC");
}

static json_t *seg_json(const char *s, size_t n)
{
    uint8_t *buf = malloc(n + 1);
    FUZZ_CHECK(buf != NULL, "oom");
    long m = b64url_decode(s, n, buf);
    /* RFC 8259: no raw NUL anywhere (Jansson would skip one between tokens). */
    json_t *j = m < 0 || memchr(buf, 0, (size_t)m)
                    ? NULL
                    : json_loadb((const char *)buf, (size_t)m, JSON_REJECT_DUPLICATES, NULL);
    free(buf);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

static int string_is(const json_t *j, const char *lit)
{
    return json_is_string(j) && json_string_length(j) == strlen(lit) &&
           !memcmp(json_string_value(j), lit, strlen(lit));
}

/* The independent check: 1 and *uid if tok is valid at now. */
static int valid_here(const char *tok, size_t len, long long now, uint64_t *uid)
{
    if (len == 0 || len > AUTH_MAX_TOKEN || memchr(tok, 0, len))
        return 0;
    const char *d1 = memchr(tok, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)))
        return 0;
    size_t hl = (size_t)(d1 - tok), pl = (size_t)(d2 - d1 - 1), sl = len - (size_t)(d2 + 1 - tok);
    if (!hl || !pl || !sl)
        return 0;
    uint8_t sig[AUTH_MAX_TOKEN], mac[32];
    if (b64url_decode(d2 + 1, sl, sig) != 32)
        return 0;
    sign(secret, tok, (size_t)(d2 - tok), mac);
    if (memcmp(sig, mac, 32))
        return 0;
    int ok = 0;
    json_t *h = seg_json(tok, hl), *p = seg_json(d1 + 1, pl);
    if (h && p) {
        json_t *typ = json_object_get(h, "typ"), *exp = json_object_get(p, "exp"),
               *nbf = json_object_get(p, "nbf"), *sub = json_object_get(p, "sub");
        ok = string_is(json_object_get(h, "alg"), "HS256") && (!typ || string_is(typ, "JWT")) &&
             json_is_integer(exp) && json_integer_value(exp) > now &&
             (!nbf || (json_is_integer(nbf) && json_integer_value(nbf) <= now)) &&
             json_is_string(sub);
        if (ok) {
            const char *v = json_string_value(sub);
            size_t n = json_string_length(sub);
            ok = n >= 1 && n <= 16 && v[0] != '0';
            uint64_t x = 0;
            for (size_t i = 0; ok && i < n; i++) {
                ok = v[i] >= '0' && v[i] <= '9';
                x = x * 10 + (uint64_t)(v[i] - '0');
            }
            ok = ok && x >= 1 && x <= ID_MAX;
            if (ok)
                *uid = x;
        }
    }
    json_decref(h);
    json_decref(p);
    return ok;
}

static int verify(const char *key, const char *tok, size_t len, long long now, uint64_t *uid)
{
    *uid = 0;
    int rc = auth_verify((const uint8_t *)key, strlen(key), tok, len, now, uid);
    FUZZ_CHECK(rc == AUTH_OK || rc == AUTH_EMALFORMED || rc == AUTH_EBADSIG ||
                   rc == AUTH_EEXPIRED || rc == AUTH_EBADSUB,
               "auth_verify returned %d", rc);
    return rc;
}

/* signed: the target signed tok itself, so "bad signature" is never the
 * right answer. */
static void check_token(const char *tok, size_t len, int signed_here)
{
    uint64_t uid = 0, mine = 0;
    int rc = verify(secret, tok, len, FUZZ_NOW, &uid);
    FUZZ_CHECK(!signed_here || rc != AUTH_EBADSIG, "a correctly signed token refused as "
               "badly signed: %.*s", (int)(len < 600 ? len : 600), tok);
    int valid = valid_here(tok, len, FUZZ_NOW, &mine);
    FUZZ_CHECK(rc != AUTH_OK || valid, "accepted a token the independent check refuses: %.*s",
               (int)(len < 600 ? len : 600), tok);
    FUZZ_CHECK(rc == AUTH_OK || !valid, "refused (%s) a valid token: %.*s", auth_strerror(rc),
               (int)(len < 600 ? len : 600), tok);
    if (rc != AUTH_OK)
        return;
    FUZZ_CHECK(uid == mine, "user %llu, the claims say %llu", (unsigned long long)uid,
               (unsigned long long)mine);

    char *t = malloc(len + 1);
    FUZZ_CHECK(t != NULL, "oom");
    memcpy(t, tok, len);
    t[len] = 0;
    uint64_t u2;
    /* Any one signature character changed. */
    const char *d2 = strrchr(t, '.');
    size_t sig0 = (size_t)(d2 + 1 - t);
    for (size_t i = sig0; i < len; i++) {
        char was = t[i];
        t[i] = was == 'A' ? 'B' : 'A';
        FUZZ_CHECK(verify(secret, t, len, FUZZ_NOW, &u2) != AUTH_OK,
                   "accepted with signature character %zu changed", i - sig0);
        t[i] = was;
    }
    FUZZ_CHECK(verify(other_secret, t, len, FUZZ_NOW, &u2) != AUTH_OK,
               "accepted with another secret");
    FUZZ_CHECK(verify(secret, t, len - 1, FUZZ_NOW, &u2) != AUTH_OK, "accepted cut by one byte");
    /* At exp it has expired. */
    json_t *p = seg_json(strchr(t, '.') + 1, (size_t)(d2 - strchr(t, '.') - 1));
    FUZZ_CHECK(p != NULL, "claims");
    long long exp = json_integer_value(json_object_get(p, "exp"));
    json_decref(p);
    FUZZ_CHECK(verify(secret, t, len, exp, &u2) == AUTH_EEXPIRED, "not expired at exp");
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0] & 3;
    const uint8_t *in = data + 1;
    size_t n = size - 1;
    if (n > 3 * AUTH_MAX_TOKEN)
        return 0;
    char *tok = malloc(2 * n + 512); /* base64 of n bytes, or a minted token */
    FUZZ_CHECK(tok != NULL, "oom");
    size_t len = 0;
    if (mode == 0) {
        memcpy(tok, in, n);
        len = n;
    } else if (mode == 1 || mode == 2) {
        if (mode == 1) {
            fsrv_piece pc[FSRV_MAX_PIECES];
            size_t np = fsrv_split(in, n, pc);
            if (np < 2) {
                free(tok);
                return 0;
            }
            len = b64url_encode(pc[0].p, pc[0].n, tok);
            tok[len++] = '.';
            len += b64url_encode(pc[1].p, pc[1].n, tok + len);
        } else {
            memcpy(tok, in, n);
            len = n;
        }
        uint8_t mac[32];
        sign(secret, tok, len, mac);
        tok[len++] = '.';
        len += b64url_encode(mac, 32, tok + len);
    } else {
        uint64_t uid = 0;
        int32_t ttl = (int32_t)fuzz_u32(in + (n > 8 ? 8 : n), n > 8 ? n - 8 : 0);
        for (size_t i = 0; i < 8 && i < n; i++)
            uid |= (uint64_t)in[i] << (8 * i);
        char *m = auth_mint((const uint8_t *)secret, strlen(secret), uid, FUZZ_NOW, ttl);
        int ok = uid >= 1 && uid <= ID_MAX && ttl > 0;
        FUZZ_CHECK(!m == !ok, "auth_mint(%llu, ttl %d): %s", (unsigned long long)uid, ttl,
                   m ? "a token" : "NULL");
        if (m) {
            uint64_t got = 0;
            FUZZ_CHECK(verify(secret, m, strlen(m), FUZZ_NOW, &got) == AUTH_OK && got == uid,
                       "minted token for %llu does not verify", (unsigned long long)uid);
            FUZZ_CHECK(verify(secret, m, strlen(m), FUZZ_NOW + ttl, &got) == AUTH_EEXPIRED,
                       "minted token alive at its exp");
            len = strlen(m);
            FUZZ_CHECK(len < 512, "minted token of %zu bytes", len);
            memcpy(tok, m, len);
            free(m);
        }
    }
    if (len)
        check_token(tok, len, mode != 0);
    free(tok);
    return 0;
}
