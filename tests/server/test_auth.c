/* Unit tests of JWT auth (server/auth.c). Tokens that auth_mint cannot make
 * (alg none, HS512, odd claims) are built here by hand: base64url segments
 * signed with OpenSSL's HMAC. */
#include <errno.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>

#include "auth.h"
#include "test.h"

static const uint8_t SECRET[] = "0123456789abcdef0123456789abcdef";
#define SECRET_LEN (sizeof SECRET - 1)
#define NOW INT64_C(1700000000)

/* --- token building ------------------------------------------------------ */

static size_t b64url(const void *src, size_t n, char *out)
{
    static const char A[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const uint8_t *s = src;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = A[(v >> 6) & 63];
        out[o++] = A[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        out[o++] = A[v >> 18];
        out[o++] = A[(v >> 12) & 63];
        out[o++] = A[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

/* "h.p.sig" from already-encoded segments h and p, signed with md over the
 * exact bytes "h.p" (md NULL: empty signature). Returns a static buffer. */
static const char *sign_segments(const char *h, const char *p, const EVP_MD *md,
                                 const uint8_t *key, size_t key_len)
{
    static char tok[16384];
    int n = snprintf(tok, sizeof tok, "%s.%s", h, p);
    if (n < 0 || (size_t)n >= sizeof tok - 100)
        FAIL("token too long for the test buffer");
    size_t len = (size_t)n;
    tok[len++] = '.';
    tok[len] = '\0';
    if (md) {
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned mac_len = 0;
        if (!HMAC(md, key, (int)key_len, (const uint8_t *)tok, len - 1, mac,
                  &mac_len))
            FAIL("HMAC failed");
        b64url(mac, mac_len, tok + len);
    }
    return tok;
}

/* A token from JSON texts, HMAC'd with md and key. */
static const char *make_token_md(const char *header, const char *payload,
                                 const EVP_MD *md, const uint8_t *key,
                                 size_t key_len)
{
    static char h[8192], p[8192];
    b64url(header, strlen(header), h);
    b64url(payload, strlen(payload), p);
    return sign_segments(h, p, md, key, key_len);
}

#define HS256_HEADER "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"

/* An HS256 token with the test secret and the given payload JSON. */
static const char *make_token(const char *payload)
{
    return make_token_md(HS256_HEADER, payload, EVP_sha256(), SECRET,
                         SECRET_LEN);
}

static int verify(const char *tok, uint64_t *uid)
{
    return auth_verify(SECRET, SECRET_LEN, tok, strlen(tok), NOW, uid);
}

/* A payload with the given "sub" JSON value and an exp an hour from NOW. */
static const char *payload_sub(const char *sub_json)
{
    static char p[256];
    snprintf(p, sizeof p, "{\"sub\":%s,\"exp\":%lld}", sub_json,
             (long long)(NOW + 3600));
    return p;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0)
        FAIL("cannot write %s", path);
}

/* --- mint and verify ----------------------------------------------------- */

TEST(auth_round_trip)
{
    uint64_t ids[] = {1, 42, UINT64_C(9007199254740991)};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char *tok = auth_mint(SECRET, SECRET_LEN, ids[i], NOW, 600);
        ASSERT(tok != NULL);
        uint64_t uid = 0;
        ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, tok, strlen(tok), NOW, &uid),
                  AUTH_OK);
        ASSERT_U64_EQ(uid, ids[i]);
        /* Valid until the last second before exp, not at exp. */
        ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, tok, strlen(tok),
                              NOW + 599, &uid),
                  AUTH_OK);
        ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, tok, strlen(tok),
                              NOW + 600, &uid),
                  AUTH_EEXPIRED);
        free(tok);
    }
}

TEST(auth_mint_claims)
{
    /* auth_mint's token carries exactly what the contract says: HS256, sub
     * as a decimal string, exp = now + ttl, iat = now. */
    char *tok = auth_mint(SECRET, SECRET_LEN, 77, NOW, 90);
    ASSERT(tok != NULL);
    jwt_t *jwt = NULL;
    ASSERT_OK(jwt_decode(&jwt, tok, SECRET, (int)SECRET_LEN));
    ASSERT_EQ(jwt_get_alg(jwt), JWT_ALG_HS256);
    ASSERT(jwt_get_grant(jwt, "sub") != NULL);
    ASSERT_STR_EQ(jwt_get_grant(jwt, "sub"), "77");
    ASSERT_EQ(jwt_get_grant_int(jwt, "exp"), NOW + 90);
    ASSERT_EQ(jwt_get_grant_int(jwt, "iat"), NOW);
    jwt_free(jwt);
    free(tok);
}

TEST(auth_mint_refuses_bad_arguments)
{
    ASSERT(auth_mint(SECRET, SECRET_LEN, 0, NOW, 60) == NULL);
    ASSERT(auth_mint(SECRET, SECRET_LEN, UINT64_C(1) << 53, NOW, 60) == NULL);
    ASSERT(auth_mint(SECRET, SECRET_LEN, 1, NOW, 0) == NULL);
    ASSERT(auth_mint(SECRET, SECRET_LEN, 1, NOW, -5) == NULL);
    ASSERT(auth_mint(SECRET, SECRET_LEN, 1, INT64_MAX, 1) == NULL);
    ASSERT(auth_mint(SECRET, AUTH_MIN_SECRET - 1, 1, NOW, 60) == NULL);
    ASSERT(auth_mint(NULL, SECRET_LEN, 1, NOW, 60) == NULL);
}

/* --- signature and algorithm --------------------------------------------- */

TEST(auth_wrong_secret_is_bad_signature)
{
    static const uint8_t other[] = "another secret, 32 bytes long!!!";
    char *tok = auth_mint(other, sizeof other - 1, 5, NOW, 60);
    ASSERT(tok != NULL);
    uint64_t uid = 0;
    ASSERT_EQ(verify(tok, &uid), AUTH_EBADSIG);
    ASSERT_U64_EQ(uid, 0);
    free(tok);
}

TEST(auth_tampered_token_is_bad_signature)
{
    char *tok = auth_mint(SECRET, SECRET_LEN, 5, NOW, 60);
    ASSERT(tok != NULL);
    uint64_t uid = 0;
    /* Same header, a payload claiming another user, the old signature. */
    char *dot1 = strchr(tok, '.'), *dot2 = strrchr(tok, '.');
    char p[128], forged[1024];
    b64url(payload_sub("\"6\""), strlen(payload_sub("\"6\"")), p);
    snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(dot1 - tok), tok, p,
             dot2);
    ASSERT_EQ(verify(forged, &uid), AUTH_EBADSIG);
    /* A signature with one character changed. */
    size_t n = strlen(tok);
    tok[n - 2] = tok[n - 2] == 'A' ? 'B' : 'A';
    ASSERT_EQ(verify(tok, &uid), AUTH_EBADSIG);
    /* A truncated signature. */
    tok[n - 2] = '\0';
    ASSERT_EQ(verify(tok, &uid), AUTH_EBADSIG);
    ASSERT_U64_EQ(uid, 0);
    free(tok);
}

TEST(auth_alg_none_refused)
{
    /* The classic forgery: {"alg":"none"} and an empty signature. */
    const char *p = payload_sub("\"5\"");
    const char *tok =
        make_token_md("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, NULL, NULL, 0);
    ASSERT(tok[strlen(tok) - 1] == '.');
    uint64_t uid = 0;
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    /* Also with a (meaningless) HS256 signature attached, and spelled in
     * other cases. */
    tok = make_token_md("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, EVP_sha256(),
                        SECRET, SECRET_LEN);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    tok = make_token_md("{\"alg\":\"None\"}", p, NULL, NULL, 0);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    ASSERT_U64_EQ(uid, 0);
}

TEST(auth_hmac_variants_refused)
{
    /* HS512 and HS384 signed with our very secret: libjwt accepts them (see
     * auth_libjwt_behaviour), we must not. */
    const char *p = payload_sub("\"5\"");
    uint64_t uid = 0;
    const char *tok = make_token_md("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p,
                                    EVP_sha512(), SECRET, SECRET_LEN);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    tok = make_token_md("{\"alg\":\"HS384\",\"typ\":\"JWT\"}", p, EVP_sha384(),
                        SECRET, SECRET_LEN);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    /* "alg" is case-sensitive (RFC 7515); libjwt is not. */
    tok = make_token_md("{\"alg\":\"hs256\",\"typ\":\"JWT\"}", p, EVP_sha256(),
                        SECRET, SECRET_LEN);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    /* An RSA alg name over an HMAC (the key-confusion attack's shape). */
    tok = make_token_md("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", p, EVP_sha256(),
                        SECRET, SECRET_LEN);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    ASSERT_U64_EQ(uid, 0);
}

TEST(auth_libjwt_behaviour)
{
    /* Pins what libjwt 1.10.2 itself does, so that an upgrade that changes
     * it is noticed; auth.c's opening comment relies on these. */
    const char *p = payload_sub("\"5\"");
    jwt_t *jwt = NULL;
    const char *tok = make_token_md("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p,
                                    EVP_sha512(), SECRET, SECRET_LEN);
    /* Any HMAC alg verifies with the same key: the caller must check. */
    ASSERT_OK(jwt_decode(&jwt, tok, SECRET, (int)SECRET_LEN));
    ASSERT_EQ(jwt_get_alg(jwt), JWT_ALG_HS512);
    jwt_free(jwt);
    jwt = NULL;
    /* alg "none" with a key is refused. */
    tok = make_token_md("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, NULL, NULL, 0);
    ASSERT_NE(jwt_decode(&jwt, tok, SECRET, (int)SECRET_LEN), 0);
    ASSERT(jwt == NULL);
    /* A wrong key and garbage give the same EINVAL. */
    char *good = auth_mint(SECRET, SECRET_LEN, 5, NOW, 60);
    ASSERT(good != NULL);
    ASSERT_EQ(jwt_decode(&jwt, good, (const uint8_t *)"wrong key, wrong key",
                         20),
              EINVAL);
    ASSERT_EQ(jwt_decode(&jwt, "a.b.c", SECRET, (int)SECRET_LEN), EINVAL);
    free(good);
    /* A string "exp" reads as 0 with errno 0, a missing one as -1. */
    tok = make_token("{\"sub\":\"5\",\"exp\":\"99999999999\"}");
    ASSERT_OK(jwt_decode(&jwt, tok, SECRET, (int)SECRET_LEN));
    errno = 0;
    ASSERT_EQ(jwt_get_grant_int(jwt, "exp"), 0);
    ASSERT_EQ(errno, 0);
    errno = 0;
    ASSERT_EQ(jwt_get_grant_int(jwt, "nbf"), -1);
    ASSERT_EQ(errno, ENOENT);
    jwt_free(jwt);
}

/* --- exp and nbf --------------------------------------------------------- */

TEST(auth_expired)
{
    char p[128];
    uint64_t uid = 0;
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld}", (long long)NOW - 1);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EEXPIRED);
    /* exp == now is already expired: no leeway. */
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld}", (long long)NOW);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EEXPIRED);
    ASSERT_EQ(verify(make_token("{\"sub\":\"5\",\"exp\":0}"), &uid),
              AUTH_EEXPIRED);
    ASSERT_EQ(verify(make_token("{\"sub\":\"5\",\"exp\":-1}"), &uid),
              AUTH_EEXPIRED);
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld}", (long long)NOW + 1);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_OK);
    ASSERT_U64_EQ(uid, 5);
}

TEST(auth_exp_missing_or_not_an_integer)
{
    uint64_t uid = 0;
    ASSERT_EQ(verify(make_token("{\"sub\":\"5\"}"), &uid), AUTH_EEXPIRED);
    const char *bad[] = {
        "{\"sub\":\"5\",\"exp\":\"99999999999\"}",
        "{\"sub\":\"5\",\"exp\":99999999999.0}",
        "{\"sub\":\"5\",\"exp\":1e11}",
        "{\"sub\":\"5\",\"exp\":null}",
        "{\"sub\":\"5\",\"exp\":true}",
        "{\"sub\":\"5\",\"exp\":[99999999999]}",
        "{\"sub\":\"5\",\"exp\":{\"a\":1}}",
        /* Beyond int64: jansson refuses the whole payload. */
        "{\"sub\":\"5\",\"exp\":99999999999999999999999}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = verify(make_token(bad[i]), &uid);
        if (rc != AUTH_EEXPIRED && rc != AUTH_EMALFORMED)
            FAIL("%s: %d", bad[i], rc);
        ASSERT_NE(rc, AUTH_OK);
    }
    ASSERT_U64_EQ(uid, 0);
}

TEST(auth_nbf_honoured)
{
    char p[160];
    uint64_t uid = 0;
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld,\"nbf\":%lld}",
             (long long)NOW + 60, (long long)NOW + 1);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EEXPIRED);
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld,\"nbf\":\"0\"}",
             (long long)NOW + 60);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EEXPIRED);
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld,\"nbf\":%lld}",
             (long long)NOW + 60, (long long)NOW);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_OK);
    ASSERT_U64_EQ(uid, 5);
}

/* --- sub ----------------------------------------------------------------- */

TEST(auth_sub_refused)
{
    const char *bad[] = {
        "\"0\"", "\"-1\"", "\"+5\"", "\" 5\"", "\"5 \"", "\"007\"", "\"05\"",
        "\"\"", "\"5a\"", "\"0x10\"", "\"1e3\"", "\"5.0\"",
        "\"\\u0035\\u0020\"", /* "5 " */
        "\"9007199254740992\"",     /* 2^53 */
        "\"18446744073709551617\"", /* 2^64 + 1: must not wrap */
        "\"12345678901234567\"",    /* 17 digits */
        "\"99999999999999999999999999999999\"",
        "5", "9007199254740991", "5.0", "null", "true", "[\"5\"]",
        "{\"id\":\"5\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t uid = 0;
        int rc = verify(make_token(payload_sub(bad[i])), &uid);
        if (rc != AUTH_EBADSUB)
            FAIL("sub %s: %d (%s)", bad[i], rc, auth_strerror(rc));
        ASSERT_U64_EQ(uid, 0);
    }
    uint64_t uid = 0;
    char p[64];
    snprintf(p, sizeof p, "{\"exp\":%lld}", (long long)NOW + 60);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EBADSUB);
}

TEST(auth_sub_range_accepted)
{
    const char *good[] = {"\"1\"", "\"10\"", "\"9007199254740991\""};
    const uint64_t want[] = {1, 10, UINT64_C(9007199254740991)};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t uid = 0;
        ASSERT_EQ(verify(make_token(payload_sub(good[i])), &uid), AUTH_OK);
        ASSERT_U64_EQ(uid, want[i]);
    }
    /* "\u0037" is "7" spelled as a JSON escape: the same string. */
    uint64_t uid = 0;
    ASSERT_EQ(verify(make_token(payload_sub("\"\\u0037\"")), &uid), AUTH_OK);
    ASSERT_U64_EQ(uid, 7);
}

/* --- header and encoding rules ------------------------------------------- */

TEST(auth_header_rules)
{
    const char *p = payload_sub("\"5\"");
    uint64_t uid = 0;
    const EVP_MD *md = EVP_sha256();
    /* typ may be absent; otherwise it is "JWT". */
    ASSERT_EQ(verify(make_token_md("{\"alg\":\"HS256\"}", p, md, SECRET,
                                   SECRET_LEN),
                     &uid),
              AUTH_OK);
    ASSERT_U64_EQ(uid, 5);
    const char *bad[] = {
        "{\"alg\":\"HS256\",\"typ\":\"JWS\"}",
        "{\"alg\":\"HS256\",\"typ\":\"jwt\"}",
        "{\"alg\":\"HS256\",\"typ\":1}",
        "{\"alg\":\"HS256\",\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"alg\":\"none\"}",
        "{\"typ\":\"JWT\"}",
        "{\"alg\":256}",
        "[\"HS256\"]",
        "\"HS256\"",
        "{}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = verify(make_token_md(bad[i], p, md, SECRET, SECRET_LEN), &uid);
        if (rc != AUTH_EMALFORMED)
            FAIL("header %s: %d", bad[i], rc);
    }
}

TEST(auth_payload_rules)
{
    uint64_t uid = 0;
    char p[160];
    /* Duplicate claims: libjwt would take the last "sub". */
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"sub\":\"6\",\"exp\":%lld}",
             (long long)NOW + 60);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EMALFORMED);
    ASSERT_EQ(verify(make_token("[\"5\"]"), &uid), AUTH_EMALFORMED);
    ASSERT_EQ(verify(make_token("5"), &uid), AUTH_EMALFORMED);
    ASSERT_EQ(verify(make_token("{\"sub\":\"5\""), &uid), AUTH_EMALFORMED);
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld} x",
             (long long)NOW + 60);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EMALFORMED);
    snprintf(p, sizeof p, "{\"sub\":\"5\\u0000\",\"exp\":%lld}",
             (long long)NOW + 60);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_EMALFORMED);
    /* Unknown claims are ignored. */
    snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld,\"x\":[1,{}]}",
             (long long)NOW + 60);
    ASSERT_EQ(verify(make_token(p), &uid), AUTH_OK);
    ASSERT_U64_EQ(uid, 5);
}

/* Found by fuzz/jwt: Jansson skips a raw NUL between tokens while libjwt
 * parses up to it, so a correctly signed token with one in its claims was
 * refused as badly signed. A raw NUL is not JSON: malformed. */
TEST(auth_raw_nul_in_json_is_malformed)
{
    uint64_t uid = 0;
    char h[128], p[128];
    static const char claims[] = "{\"sub\":\"9\",\"exp\":1800000000\0}";
    static const char header[] = "{\"alg\":\"HS256\"\0}";
    b64url(HS256_HEADER, strlen(HS256_HEADER), h);
    b64url(claims, sizeof claims - 1, p);
    ASSERT_EQ(verify(sign_segments(h, p, EVP_sha256(), SECRET, SECRET_LEN), &uid),
              AUTH_EMALFORMED);
    static const char plain[] = "{\"sub\":\"9\",\"exp\":1800000000}";
    b64url(header, sizeof header - 1, h);
    b64url(plain, sizeof plain - 1, p);
    ASSERT_EQ(verify(sign_segments(h, p, EVP_sha256(), SECRET, SECRET_LEN), &uid),
              AUTH_EMALFORMED);
}

TEST(auth_base64url_strict)
{
    uint64_t uid = 0;
    char h[128], p[256], q[260];
    /* A payload of 3k+1 bytes: its last base64url character carries 2 bits
     * of data and 4 unused bits (JSON allows the trailing spaces). */
    char pj[160];
    snprintf(pj, sizeof pj, "%s", payload_sub("\"5\""));
    while (strlen(pj) % 3 != 1)
        strcat(pj, " ");
    b64url(HS256_HEADER, strlen(HS256_HEADER), h);
    size_t pn = b64url(pj, strlen(pj), p);
    ASSERT_EQ(pn % 4, 2);
    ASSERT_EQ(verify(sign_segments(h, p, EVP_sha256(), SECRET, SECRET_LEN),
                     &uid),
              AUTH_OK);
    ASSERT_U64_EQ(uid, 5);
    uid = 0;
    /* '=' padding, properly signed: libjwt accepts it; RFC 7515 has none. */
    snprintf(q, sizeof q, "%s==", p);
    ASSERT_EQ(verify(sign_segments(h, q, EVP_sha256(), SECRET, SECRET_LEN),
                     &uid),
              AUTH_EMALFORMED);
    /* Nonzero unused bits in the last character: another spelling of the
     * same bytes, properly signed. */
    static const char A[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    snprintf(q, sizeof q, "%s", p);
    size_t v = (size_t)(strchr(A, q[pn - 1]) - A);
    ASSERT_EQ(v & 15, 0);
    q[pn - 1] = A[v | 1];
    ASSERT_EQ(verify(sign_segments(h, q, EVP_sha256(), SECRET, SECRET_LEN),
                     &uid),
              AUTH_EMALFORMED);
    /* A segment of 4k+1 characters cannot be base64 at all. */
    snprintf(q, sizeof q, "%s%s", p, "AAA");
    ASSERT_EQ(strlen(q) % 4, 1);
    ASSERT_EQ(verify(sign_segments(h, q, EVP_sha256(), SECRET, SECRET_LEN),
                     &uid),
              AUTH_EMALFORMED);
    /* The standard base64 alphabet and whitespace. */
    ASSERT_EQ(verify(sign_segments("+/+/", p, EVP_sha256(), SECRET, SECRET_LEN),
                     &uid),
              AUTH_EMALFORMED);
    snprintf(q, sizeof q, "%.10s %s", p, p + 10);
    ASSERT_EQ(verify(sign_segments(h, q, EVP_sha256(), SECRET, SECRET_LEN),
                     &uid),
              AUTH_EMALFORMED);
    ASSERT_U64_EQ(uid, 0);
}

TEST(auth_garbage_refused)
{
    uint64_t uid = 0;
    const char *bad[] = {
        "", ".", "..", "...", "a.b.c", "a..c", ".b.c", "a.b.", "!!!.###.$$$",
        "eyJ.eyJ.eyJ", "e30.e30.e30", /* {} . {} . "{}" as a signature */
        "a.b.c.d", "x", "Bearer x.y.z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = verify(bad[i], &uid);
        if (rc == AUTH_OK)
            FAIL("\"%s\" accepted", bad[i]);
    }
    /* Valid base64url of text that is not JSON. */
    char h[64];
    b64url("{not json", 9, h);
    char tok[256];
    snprintf(tok, sizeof tok, "%s.%s.AAAA", h, h);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    /* 10 KB of 'A', and just within the bound. */
    static char big[10240 + 1];
    memset(big, 'A', sizeof big - 1);
    ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, big, sizeof big - 1, NOW, &uid),
              AUTH_EMALFORMED);
    ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, big, AUTH_MAX_TOKEN, NOW, &uid),
              AUTH_EMALFORMED);
    big[100] = big[200] = '.';
    ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, big, AUTH_MAX_TOKEN, NOW, &uid),
              AUTH_EMALFORMED);
    /* A NUL inside the given length. */
    char *good = auth_mint(SECRET, SECRET_LEN, 5, NOW, 60);
    ASSERT(good != NULL);
    size_t n = strlen(good);
    char withnul[1024];
    memcpy(withnul, good, n + 1);
    withnul[n / 2] = '\0';
    ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, withnul, n, NOW, &uid),
              AUTH_EMALFORMED);
    /* NULL token. */
    ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, NULL, 0, NOW, &uid),
              AUTH_EMALFORMED);
    ASSERT_U64_EQ(uid, 0);
    free(good);
}

TEST(auth_length_is_honoured)
{
    char *good = auth_mint(SECRET, SECRET_LEN, 5, NOW, 60);
    ASSERT(good != NULL);
    size_t n = strlen(good);
    uint64_t uid = 0;
    /* Bytes after len are not part of the token. */
    char buf[1024];
    memcpy(buf, good, n);
    memcpy(buf + n, "garbage", 8);
    ASSERT_EQ(auth_verify(SECRET, SECRET_LEN, buf, n, NOW, &uid), AUTH_OK);
    ASSERT_U64_EQ(uid, 5);
    uid = 0;
    ASSERT_NE(auth_verify(SECRET, SECRET_LEN, buf, n - 1, NOW, &uid), AUTH_OK);
    ASSERT_NE(auth_verify(SECRET, SECRET_LEN, buf, n + 7, NOW, &uid), AUTH_OK);
    /* A real token grown past AUTH_MAX_TOKEN by a huge claim. */
    static char p[AUTH_MAX_TOKEN];
    int k = snprintf(p, sizeof p, "{\"sub\":\"5\",\"exp\":%lld,\"pad\":\"",
                     (long long)NOW + 60);
    memset(p + k, 'x', sizeof p - (size_t)k - 3);
    memcpy(p + sizeof p - 3, "\"}", 3);
    const char *tok = make_token(p);
    ASSERT_GT(strlen(tok), AUTH_MAX_TOKEN);
    ASSERT_EQ(verify(tok, &uid), AUTH_EMALFORMED);
    ASSERT_U64_EQ(uid, 0);
    free(good);
}

TEST(auth_mutations_never_verify)
{
    /* Random single-byte changes to a good token: nothing but the
     * original may verify, and nothing may crash. */
    char *good = auth_mint(SECRET, SECRET_LEN, 5, NOW, 60);
    ASSERT(good != NULL);
    size_t n = strlen(good);
    uint64_t x = test_seed() | 1;
    char buf[1024];
    for (int i = 0; i < 3000; i++) {
        memcpy(buf, good, n + 1);
        int edits = 1 + (int)(x % 3);
        for (int e = 0; e < edits; e++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[x % n] = (char)(x >> 32);
        }
        uint64_t uid = 0;
        int rc = auth_verify(SECRET, SECRET_LEN, buf, n, NOW, &uid);
        if (rc == AUTH_OK && memcmp(buf, good, n) != 0)
            FAIL("mutation %d accepted: %s", i, buf);
    }
    free(good);
}

TEST(auth_verify_needs_a_secret)
{
    char *good = auth_mint(SECRET, SECRET_LEN, 5, NOW, 60);
    ASSERT(good != NULL);
    uint64_t uid = 0;
    ASSERT_EQ(auth_verify(SECRET, AUTH_MIN_SECRET - 1, good, strlen(good), NOW,
                          &uid),
              AUTH_EBADSIG);
    ASSERT_EQ(auth_verify(NULL, 0, good, strlen(good), NOW, &uid),
              AUTH_EBADSIG);
    ASSERT_U64_EQ(uid, 0);
    free(good);
}

/* --- secret files -------------------------------------------------------- */

TEST(auth_load_secret_strips_one_newline)
{
    static const char s[] = "correct horse battery staple";
    const size_t n = sizeof s - 1;
    char with[64];
    const char *endings[] = {"", "\n", "\r\n"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(with, sizeof with, "%s%s", s, endings[i]);
        write_file(test_path(0, "secret"), with, strlen(with));
        uint8_t *out = NULL;
        size_t len = 0;
        ASSERT_OK(auth_load_secret(test_path(0, "secret"), &out, &len));
        ASSERT_EQ(len, n);
        ASSERT_MEM_EQ(out, s, n);
        free(out);
    }
    /* Only one newline goes; a lone '\r' stays. */
    snprintf(with, sizeof with, "%s\n\n", s);
    write_file(test_path(0, "secret"), with, strlen(with));
    uint8_t *out = NULL;
    size_t len = 0;
    ASSERT_OK(auth_load_secret(test_path(0, "secret"), &out, &len));
    ASSERT_EQ(len, n + 1);
    ASSERT_EQ(out[n], '\n');
    free(out);
    snprintf(with, sizeof with, "%s\r", s);
    write_file(test_path(0, "secret"), with, strlen(with));
    ASSERT_OK(auth_load_secret(test_path(0, "secret"), &out, &len));
    ASSERT_EQ(len, n + 1);
    free(out);
    /* Binary secrets (NUL bytes included) are kept as they are. */
    uint8_t bin[32];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (uint8_t)(i * 37);
    write_file(test_path(0, "bin"), bin, sizeof bin);
    ASSERT_OK(auth_load_secret(test_path(0, "bin"), &out, &len));
    ASSERT_EQ(len, sizeof bin);
    ASSERT_MEM_EQ(out, bin, sizeof bin);
    /* A token minted with the loaded secret verifies with the literal. */
    char *tok = auth_mint(out, len, 9, NOW, 60);
    ASSERT(tok != NULL);
    uint64_t uid = 0;
    ASSERT_EQ(auth_verify(bin, sizeof bin, tok, strlen(tok), NOW, &uid),
              AUTH_OK);
    ASSERT_U64_EQ(uid, 9);
    free(tok);
    free(out);
}

TEST(auth_load_secret_refuses)
{
    uint8_t *out = NULL;
    size_t len = 0;
    /* 15 bytes, with or without a newline: too short. */
    write_file(test_path(0, "short"), "0123456789abcde\n", 16);
    ASSERT_EQ(auth_load_secret(test_path(0, "short"), &out, &len), -EINVAL);
    write_file(test_path(0, "short"), "0123456789abcde", 15);
    ASSERT_EQ(auth_load_secret(test_path(0, "short"), &out, &len), -EINVAL);
    write_file(test_path(0, "empty"), "", 0);
    ASSERT_EQ(auth_load_secret(test_path(0, "empty"), &out, &len), -EINVAL);
    ASSERT(out == NULL);
    /* Exactly AUTH_MIN_SECRET is enough. */
    write_file(test_path(0, "min"), "0123456789abcdef\n", 17);
    ASSERT_OK(auth_load_secret(test_path(0, "min"), &out, &len));
    ASSERT_EQ(len, AUTH_MIN_SECRET);
    free(out);
    out = NULL;
    /* Missing file, a directory. */
    ASSERT_EQ(auth_load_secret(test_path(0, "nope"), &out, &len), -ENOENT);
    ASSERT_EQ(auth_load_secret(test_dir(), &out, &len), -EISDIR);
    /* 4096 bytes are accepted, 4097 are not. */
    static char big[4097];
    memset(big, 's', sizeof big);
    write_file(test_path(0, "big"), big, 4096);
    ASSERT_OK(auth_load_secret(test_path(0, "big"), &out, &len));
    ASSERT_EQ(len, 4096);
    free(out);
    out = NULL;
    write_file(test_path(0, "big"), big, 4097);
    ASSERT_EQ(auth_load_secret(test_path(0, "big"), &out, &len), -EFBIG);
    ASSERT(out == NULL);
}

TEST(auth_strerror_texts)
{
    int codes[] = {AUTH_OK, AUTH_EMALFORMED, AUTH_EBADSIG, AUTH_EEXPIRED,
                   AUTH_EBADSUB};
    for (size_t i = 0; i < 5; i++) {
        ASSERT(auth_strerror(codes[i]) != NULL);
        ASSERT(strlen(auth_strerror(codes[i])) > 0);
        for (size_t j = 0; j < i; j++)
            ASSERT(strcmp(auth_strerror(codes[i]),
                          auth_strerror(codes[j])) != 0);
    }
    ASSERT(auth_strerror(-12345) != NULL);
}
