/*
 * media.c — the media blob store, signed download URLs and the media REST
 * routes (docs/media.md).
 *
 * On-disk contract
 * ----------------
 * Naming rules (one place): under DATA/media/
 *   <p>/<id>        the object's bytes; <id> is the lowercase hex SHA-256 of
 *                   exactly those bytes, <p> its first two hex digits
 *   <p>/<id>.meta   text, one "key: value" per line:
 *                     content_type: <type as uploaded, printable ASCII>
 *                     size: <decimal byte count>
 *                     uploader: <decimal user id>      (one line per uploader)
 *   <p>/tmp-*       a .meta write in progress; never read
 *   tmp-up-*        an upload in progress (directly under media/: its
 *                   address is known only at its end); never read
 * A tmp- file is garbage once no chatd runs on the directory: a crash
 * leaves it, `chatlog verify` notes it, removing it is safe.
 * Valid: an object is valid iff sha256(bytes) == its name; a .meta is valid
 * iff it parses and its size equals the object's length. An object without
 * a valid .meta is served as application/octet-stream.
 *
 * Write order (an upload, media_upload_*): the bytes are streamed to
 * media/tmp-up-<pid>-<n> as they arrive, hashing them (SHA-256) on the way;
 * at the end fsync it, rename it to <p>/<id>, fsync <p>, fsync media/ (a new
 * <p>, the rename out of media/); then the .meta is written to
 * <p>/tmp-<id16>-<pid>-<n>, fsynced, renamed to <p>/<id>.meta, <p> fsynced.
 * A crash leaves at most a tmp- file (garbage, never read) or an object
 * without .meta; never a partial object under its final name. An object
 * already present is not rewritten (same name, same bytes): the new temp
 * file is removed instead. An upload cut short (client gone, bad framing,
 * too large, write error) removes its temp file at once.
 *
 * Signed URLs: /media/<id>?exp=<unix seconds>&sig=<hex HMAC-SHA256(secret,
 * id "\n" exp)>, secret being chatd's JWT secret. Valid while now <= exp.
 *
 * Who may mint a URL (GET /api/v1/media/<id>/url): an uploader of the
 * object, or a member of a conversation where a committed message carries
 * a media_url naming it. The second is an in-memory index rebuilt from the
 * log by st_apply (media_note_sent), like the rest of the chat state.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "media.h"
#include "metrics.h"
#include "rest.h"
#include "state.h"

#define MEDIA_DIR "media"
#define MEDIA_META_SUFFIX ".meta"
#define MEDIA_TMP_PREFIX "tmp-"
#define MEDIA_MAX_UPLOADERS 64
#define MEDIA_CTYPE_MAX 200

/* ---- ids, signatures, ranges ---- */

static const char hexd[] = "0123456789abcdef";

static void to_hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexd[b[i] >> 4];
        out[2 * i + 1] = hexd[b[i] & 15];
    }
    out[2 * n] = 0;
}

int media_valid_id(const char *s, size_t n)
{
    if (n != MEDIA_ID_LEN)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

int media_sign(const uint8_t *key, size_t klen, const char *id, int64_t exp, char *out)
{
    char msg[MEDIA_ID_LEN + 32];
    int n = snprintf(msg, sizeof msg, "%.64s\n%" PRId64, id, exp);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, (const uint8_t *)msg, (size_t)n, mac,
              &mlen) ||
        mlen != 32)
        return -1;
    to_hex(mac, 32, out);
    return 0;
}

int media_check_sig(const uint8_t *key, size_t klen, const char *id, const char *exp_str,
                    const char *sig, int64_t now)
{
    if (!exp_str || !sig || !media_valid_id(id, strlen(id)))
        return -1;
    /* exp: 1..18 decimal digits, no sign, no leading zero. */
    size_t el = strlen(exp_str);
    if (el == 0 || el > 18 || exp_str[0] == '0')
        return -1;
    int64_t exp = 0;
    for (size_t i = 0; i < el; i++) {
        if (exp_str[i] < '0' || exp_str[i] > '9')
            return -1;
        exp = exp * 10 + (exp_str[i] - '0');
    }
    if (strlen(sig) != MEDIA_SIG_LEN)
        return -1;
    char want[MEDIA_SIG_LEN + 1];
    if (media_sign(key, klen, id, exp, want))
        return -1;
    /* Constant-time: the comparison must not tell how many leading
     * characters of a forged signature were right. */
    int bad = CRYPTO_memcmp(want, sig, MEDIA_SIG_LEN) != 0;
    if (bad || now > exp)
        return -1;
    return 0;
}

static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 19)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

int media_parse_range(const char *v, uint64_t size, uint64_t *start, uint64_t *end)
{
    if (!v)
        return 0;
    while (*v == ' ' || *v == '\t')
        v++;
    if (strncasecmp(v, "bytes=", 6))
        return 0;
    v += 6;
    if (strchr(v, ','))
        return 0; /* several ranges: the whole object instead */
    const char *dash = strchr(v, '-');
    if (!dash)
        return 0;
    const char *a = v, *b = dash + 1;
    size_t alen = (size_t)(dash - a), blen = strlen(b);
    while (alen && (a[alen - 1] == ' ' || a[alen - 1] == '\t'))
        alen--;
    while (blen && (b[blen - 1] == ' ' || b[blen - 1] == '\t'))
        blen--;
    uint64_t x, y;
    if (alen == 0) { /* bytes=-n: the last n bytes */
        if (parse_u64(b, blen, &y))
            return 0;
        if (y == 0 || size == 0)
            return -1;
        *start = y >= size ? 0 : size - y;
        *end = size - 1;
        return 1;
    }
    if (parse_u64(a, alen, &x))
        return 0;
    if (blen == 0) {
        y = UINT64_MAX;
    } else {
        if (parse_u64(b, blen, &y))
            return 0;
        if (y < x)
            return 0; /* invalid range-spec: ignored */
    }
    if (x >= size)
        return -1;
    *start = x;
    *end = y >= size ? size - 1 : y;
    return 1;
}

int media_url_id(const char *url, size_t len, char *id)
{
    /* The last "/media/" before any '?' */
    size_t qlen = len;
    for (size_t i = 0; i < len; i++)
        if (url[i] == '?' || url[i] == '#') {
            qlen = i;
            break;
        }
    const size_t pl = sizeof MEDIA_URL_PREFIX - 1;
    if (qlen < pl + MEDIA_ID_LEN)
        return -1;
    const char *p = url + qlen - MEDIA_ID_LEN - pl;
    if (memcmp(p, MEDIA_URL_PREFIX, pl) || !media_valid_id(p + pl, MEDIA_ID_LEN))
        return -1;
    memcpy(id, p + pl, MEDIA_ID_LEN);
    id[MEDIA_ID_LEN] = 0;
    return 0;
}

uint64_t media_body_limit(const srv *s, const http_req *r)
{
    if (!strcmp(r->method, "POST") && !strcmp(r->path, MEDIA_REST_PATH))
        return s->cfg.max_media_bytes;
    return s->cfg.max_http_body_bytes;
}

/* ---- where media was sent ---- */

typedef struct sent {
    struct sent *next;
    char id[MEDIA_ID_LEN + 1];
    uint64_t *convs;
    uint32_t n, cap;
} sent;

/* first 8 bytes of the id → chain of sent */
static u64map sent_index;

static uint64_t id_key(const char *id)
{
    uint64_t k = 0;
    for (int i = 0; i < 16; i++) {
        char ch = id[i];
        k = k << 4 | (uint64_t)(ch <= '9' ? ch - '0' : ch - 'a' + 10);
    }
    return k;
}

static sent *sent_find(const char *id)
{
    for (sent *e = map_get(&sent_index, id_key(id)); e; e = e->next)
        if (!memcmp(e->id, id, MEDIA_ID_LEN))
            return e;
    return NULL;
}

void media_note_sent(const char *url, size_t len, uint64_t conv_id)
{
    char id[MEDIA_ID_LEN + 1];
    if (!url || media_url_id(url, len, id))
        return;
    sent *e = sent_find(id);
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e)
            return;
        memcpy(e->id, id, sizeof e->id);
        e->next = map_get(&sent_index, id_key(id));
        if (map_put(&sent_index, id_key(id), e)) {
            free(e);
            return;
        }
    }
    for (uint32_t i = 0; i < e->n; i++)
        if (e->convs[i] == conv_id)
            return;
    if (e->n == e->cap) {
        uint32_t nc = e->cap ? e->cap * 2 : 2;
        uint64_t *v = realloc(e->convs, nc * sizeof *v);
        if (!v)
            return;
        e->convs = v;
        e->cap = nc;
    }
    e->convs[e->n++] = conv_id;
}

void media_forget_all(void)
{
    MAP_EACH(&sent_index, me) {
        for (sent *e = me->val; e;) {
            sent *nx = e->next;
            free(e->convs);
            free(e);
            e = nx;
        }
    }
    map_free(&sent_index);
}

/* ---- the store ---- */

static void obj_paths(const char *data_dir, const char *id, char *dir, size_t dn,
                      char *obj, size_t on, char *meta, size_t mn)
{
    snprintf(dir, dn, "%s/" MEDIA_DIR "/%.2s", data_dir, id);
    snprintf(obj, on, "%s/%s", dir, id);
    snprintf(meta, mn, "%s/%s" MEDIA_META_SUFFIX, dir, id);
}

static int mkdir_p(const char *path)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST)
        return 0;
    return -errno;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* Write data to a tmp file in dir, fsync, rename to final, fsync dir. */
static int write_atomic(const char *dir, const char *final, const char *id,
                        const void *data, size_t len)
{
    static unsigned counter;
    char tmp[CFG_PATH + 256];
    snprintf(tmp, sizeof tmp, "%s/" MEDIA_TMP_PREFIX "%.16s-%ld-%u", dir, id,
             (long)getpid(), counter++);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    const uint8_t *p = data;
    size_t left = len;
    int rc = 0;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    if (!rc && fsync(fd))
        rc = -errno;
    if (close(fd) && !rc)
        rc = -errno;
    if (!rc && rename(tmp, final))
        rc = -errno;
    if (rc) {
        unlink(tmp);
        return rc;
    }
    return fsync_dir(dir);
}

typedef struct meta {
    char ctype[MEDIA_CTYPE_MAX + 1];
    uint64_t size;
    uint64_t uploaders[MEDIA_MAX_UPLOADERS];
    int nup;
    int has_size;
} meta;

static int read_meta(const char *path, meta *m)
{
    memset(m, 0, sizeof *m);
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = 0;
        if (!strncmp(line, "content_type: ", 14)) {
            snprintf(m->ctype, sizeof m->ctype, "%s", line + 14);
        } else if (!strncmp(line, "size: ", 6)) {
            if (parse_u64(line + 6, strlen(line + 6), &m->size) == 0)
                m->has_size = 1;
        } else if (!strncmp(line, "uploader: ", 10)) {
            uint64_t u;
            if (m->nup < MEDIA_MAX_UPLOADERS &&
                parse_u64(line + 10, strlen(line + 10), &u) == 0)
                m->uploaders[m->nup++] = u;
        }
    }
    fclose(f);
    return m->has_size ? 0 : -EINVAL;
}

static int write_meta(const char *dir, const char *path, const char *id, const meta *m)
{
    char buf[512 + MEDIA_MAX_UPLOADERS * 32];
    int n = snprintf(buf, sizeof buf, "content_type: %s\nsize: %" PRIu64 "\n", m->ctype,
                     m->size);
    for (int i = 0; i < m->nup; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "uploader: %" PRIu64 "\n",
                      m->uploaders[i]);
    return write_atomic(dir, path, id, buf, (size_t)n);
}

/* A content type kept as sent if it is short printable ASCII, else
 * application/octet-stream (it goes back out in a response header). */
static void clean_ctype(const char *v, char *out)
{
    const char *dflt = "application/octet-stream";
    size_t n = v ? strlen(v) : 0;
    int ok = n > 0 && n <= MEDIA_CTYPE_MAX;
    for (size_t i = 0; ok && i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            ok = 0;
    snprintf(out, MEDIA_CTYPE_MAX + 1, "%s", ok ? v : dflt);
}

/* Add uploader to the .meta of object id (len bytes): created with ctype
 * when missing or stale, unchanged when uploader is already listed. */
static int meta_add_uploader(const char *dir, const char *mpath, const char *id, uint64_t len,
                             const char *ctype, uint64_t uploader)
{
    meta m;
    if (read_meta(mpath, &m) || m.size != len) {
        memset(&m, 0, sizeof m);
        clean_ctype(ctype, m.ctype);
        m.size = len;
    }
    for (int i = 0; i < m.nup; i++)
        if (m.uploaders[i] == uploader)
            return 0;
    if (m.nup == MEDIA_MAX_UPLOADERS) {
        /* Keep the most recent uploaders. */
        memmove(m.uploaders, m.uploaders + 1,
                (MEDIA_MAX_UPLOADERS - 1) * sizeof m.uploaders[0]);
        m.nup--;
    }
    m.uploaders[m.nup++] = uploader;
    return write_meta(dir, mpath, id, &m);
}

/* ---- uploads ---- */

#define UPLOAD_WRITE_MAX (64u << 10)   /* one write(2) */
#define UPLOAD_WRITEBACK (4u << 20)    /* start writeback every this many bytes */

struct media_upload {
    int fd;
    int err;            /* sticky: the first failure */
    EVP_MD_CTX *md;
    uint64_t size, limit;
    uint64_t flushed;   /* writeback started up to here */
    uint64_t uploader;
    char ctype[MEDIA_CTYPE_MAX + 1];
    char data_dir[CFG_PATH];
    char tmp[CFG_PATH + 64];
};

int media_upload_open(const char *data_dir, uint64_t limit, const char *ctype,
                      uint64_t uploader, media_upload **out)
{
    static unsigned counter;
    *out = NULL;
    char top[CFG_PATH + 16];
    snprintf(top, sizeof top, "%s/" MEDIA_DIR, data_dir);
    int rc = mkdir_p(top);
    if (rc)
        return rc;
    media_upload *u = calloc(1, sizeof *u);
    if (!u)
        return -ENOMEM;
    u->md = EVP_MD_CTX_new();
    if (!u->md || !EVP_DigestInit_ex(u->md, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(u->md);
        free(u);
        return -ENOMEM;
    }
    u->limit = limit;
    u->uploader = uploader;
    clean_ctype(ctype, u->ctype);
    snprintf(u->data_dir, sizeof u->data_dir, "%s", data_dir);
    snprintf(u->tmp, sizeof u->tmp, "%s/" MEDIA_TMP_PREFIX "up-%ld-%u", top, (long)getpid(),
             counter++);
    u->fd = open(u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (u->fd < 0) {
        rc = -errno;
        EVP_MD_CTX_free(u->md);
        free(u);
        return rc;
    }
    *out = u;
    return 0;
}

uint64_t media_upload_size(const media_upload *u) { return u->size; }

int media_upload_write(media_upload *u, const uint8_t *p, size_t n)
{
    if (u->err)
        return u->err;
    if (n > u->limit - u->size) {
        u->err = -EFBIG;
        return u->err;
    }
    if (!EVP_DigestUpdate(u->md, p, n)) {
        u->err = -ENOMEM;
        return u->err;
    }
    while (n) {
        size_t k = n < UPLOAD_WRITE_MAX ? n : UPLOAD_WRITE_MAX;
        ssize_t w = write(u->fd, p, k);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            u->err = w < 0 ? -errno : -EIO;
            return u->err;
        }
        p += w;
        n -= (size_t)w;
        u->size += (uint64_t)w;
    }
    if (u->size - u->flushed >= UPLOAD_WRITEBACK) {
        /* Start writing the dirty pages now, without waiting: the fsync
         * at the end (on the loop thread) then has little left to do. */
        (void)sync_file_range(u->fd, (off64_t)u->flushed, (off64_t)(u->size - u->flushed),
                              SYNC_FILE_RANGE_WRITE);
        u->flushed = u->size;
    }
    return 0;
}

void media_upload_discard(media_upload *u)
{
    if (!u)
        return;
    if (u->fd >= 0)
        close(u->fd);
    unlink(u->tmp);
    EVP_MD_CTX_free(u->md);
    free(u);
}

int media_upload_commit(media_upload *u, char *id)
{
    int rc = u->err;
    uint8_t h[EVP_MAX_MD_SIZE];
    unsigned int hl = 0;
    if (!rc && (!EVP_DigestFinal_ex(u->md, h, &hl) || hl != SHA256_DIGEST_LENGTH))
        rc = -ENOMEM;
    if (!rc && fsync(u->fd))
        rc = -errno;
    if (!rc) {
        rc = close(u->fd) ? -errno : 0;
        u->fd = -1;
    }
    if (rc) {
        media_upload_discard(u);
        return rc;
    }
    to_hex(h, SHA256_DIGEST_LENGTH, id);
    char top[CFG_PATH + 16], dir[CFG_PATH + 32], obj[CFG_PATH + 128],
        mpath[CFG_PATH + 160];
    snprintf(top, sizeof top, "%s/" MEDIA_DIR, u->data_dir);
    obj_paths(u->data_dir, id, dir, sizeof dir, obj, sizeof obj, mpath, sizeof mpath);
    rc = mkdir_p(dir);
    struct stat sb;
    int have = !rc && stat(obj, &sb) == 0 && S_ISREG(sb.st_mode) &&
               (uint64_t)sb.st_size == u->size;
    if (!rc && !have) {
        if (rename(u->tmp, obj))
            rc = -errno;
        /* The new entry in <p>, and in media/ the new <p> and the temp
         * name gone: both directories must reach the disk. */
        if (!rc)
            rc = fsync_dir(dir);
        if (!rc)
            rc = fsync_dir(top);
    }
    if (have || rc)
        unlink(u->tmp); /* a duplicate, or a failed rename */
    if (!rc)
        rc = meta_add_uploader(dir, mpath, id, u->size, u->ctype, u->uploader);
    EVP_MD_CTX_free(u->md);
    free(u);
    return rc;
}

int media_store(const char *data_dir, const uint8_t *data, size_t len, const char *ctype,
                uint64_t uploader, char *id)
{
    media_upload *u;
    int rc = media_upload_open(data_dir, len, ctype, uploader, &u);
    if (rc)
        return rc;
    if ((rc = media_upload_write(u, data, len))) {
        media_upload_discard(u);
        return rc;
    }
    return media_upload_commit(u, id);
}

/* ---- HTTP ---- */

static char *signed_url(srv *s, const char *id, char *out, size_t n)
{
    int64_t exp = (int64_t)time(NULL) + (int64_t)s->cfg.media_url_ttl_s;
    char sig[MEDIA_SIG_LEN + 1];
    if (media_sign(s->secret, s->secret_len, id, exp, sig))
        return NULL;
    snprintf(out, n, MEDIA_URL_PREFIX "%s?exp=%" PRId64 "&sig=%s", id, exp, sig);
    return out;
}

static void reply_with_head(conn *c, const char *head, size_t hlen, int fd, uint64_t off,
                            uint64_t len, int ka)
{
    blob *b = blob_new(hlen + len);
    if (!b) {
        conn_close(c, 0, NULL);
        return;
    }
    memcpy(b->data, head, hlen);
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, b->data + hlen + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* The object shrank or cannot be read: headers are not sent
             * yet, so the answer can still be an error. */
            blob_unref(b);
            conn_http_error(c, 500, GW_EINTERNAL, "cannot read the object", 0);
            return;
        }
        got += (size_t)n;
    }
    if (!ka)
        c->close_after_flush = 1;
    conn_send_blob(c, b);
    blob_unref(b);
}

void media_serve(conn *c, const http_req *r, int ka)
{
    srv *s = c->srv;
    const char *id = r->path + sizeof MEDIA_URL_PREFIX - 1;
    char exp[32], sig[MEDIA_SIG_LEN + 2];
    int have_exp = http_query_param(r, "exp", exp, sizeof exp) >= 0;
    int have_sig = http_query_param(r, "sig", sig, sizeof sig) >= 0;
    if (!have_exp || !have_sig ||
        media_check_sig(s->secret, s->secret_len, id, exp, sig, (int64_t)time(NULL))) {
        conn_http_error(c, 403, GW_EUNAUTHORIZED,
                        "missing, expired or invalid media signature", ka);
        return;
    }
    char dir[CFG_PATH + 32], obj[CFG_PATH + 128], mpath[CFG_PATH + 160];
    obj_paths(s->cfg.data, id, dir, sizeof dir, obj, sizeof obj, mpath, sizeof mpath);
    int fd = open(obj, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        if (fd >= 0)
            close(fd);
        conn_http_error(c, 404, GW_ENOTFOUND, "no such media", ka);
        return;
    }
    uint64_t size = (uint64_t)sb.st_size;
    meta m;
    if (read_meta(mpath, &m) || m.size != size)
        snprintf(m.ctype, sizeof m.ctype, "application/octet-stream");
    uint64_t a = 0, b = size ? size - 1 : 0;
    int rr = media_parse_range(http_header_get(r, "Range"), size, &a, &b);
    char head[1024];
    int n;
    const char *conn_hdr = ka ? "" : "Connection: close\r\n";
    if (rr < 0) {
        n = snprintf(
            head, sizeof head,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%" PRIu64
            "\r\nContent-Length: 0\r\nAccept-Ranges: bytes\r\n%s\r\n",
            size, conn_hdr);
        reply_with_head(c, head, (size_t)n, fd, 0, 0, ka);
        close(fd);
        return;
    }
    /* The largest answer is the whole object; the store refuses uploads
     * above max_media_bytes, so this stays below the connection's HTTP
     * output bound. */
    if (size > (uint64_t)s->cfg.max_media_bytes && size > (48u << 20)) {
        close(fd);
        conn_http_error(c, 500, GW_EINTERNAL, "object larger than this server serves", 0);
        return;
    }
    uint64_t len = rr ? b - a + 1 : size;
    if (rr)
        n = snprintf(
            head, sizeof head,
            "HTTP/1.1 206 Partial Content\r\nContent-Type: %s\r\nContent-Length: "
            "%" PRIu64 "\r\nContent-Range: bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64
            "\r\nAccept-Ranges: bytes\r\nCache-Control: private, max-age=3600\r\n"
            "X-Content-Type-Options: nosniff\r\n%s\r\n",
            m.ctype, len, a, b, size, conn_hdr);
    else
        n = snprintf(
            head, sizeof head,
            "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %" PRIu64
            "\r\nAccept-Ranges: bytes\r\nCache-Control: private, max-age=3600\r\n"
            "X-Content-Type-Options: nosniff\r\n%s\r\n",
            m.ctype, len, conn_hdr);
    reply_with_head(c, head, (size_t)n, fd, a, strcmp(r->method, "HEAD") ? len : 0, ka);
    close(fd);
}

/* ---- POST /api/v1/media: the streaming upload ---- */

int media_is_upload(const http_req *r)
{
    return !strcmp(r->method, "POST") && !strcmp(r->path, MEDIA_REST_PATH);
}

/* An error answer with extra header lines (hdrs, may be NULL); the
 * connection closes after it (the body, if any, is not read). */
static void reply_refusal(conn *c, int status, int code, const char *hdrs, const char *msg)
{
    if (code > 0 && code < 16)
        c->srv->met->errors_by_code[code]++;
    json_t *j = json_pack("{s:{s:i, s:s, s:s}}", "error", "code", code, "name",
                          gw_error_name(code), "message", msg);
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    char head[512];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                     status, http_reason(status), blen, hdrs ? hdrs : "");
    blob *b = body && n > 0 && (size_t)n < sizeof head ? blob_new((size_t)n + blen) : NULL;
    if (!b) {
        free(body);
        conn_close(c, 0, NULL);
        return;
    }
    memcpy(b->data, head, (size_t)n);
    memcpy(b->data + n, body, blen);
    free(body);
    c->close_after_flush = 1;
    conn_send_blob(c, b);
    blob_unref(b);
}

/* The status of a failed upload: 413 past the limit, 507 out of space,
 * 503 out of descriptors, else 500. */
static int upload_status(int err, int *code, const char **msg)
{
    *code = GW_EINTERNAL;
    switch (err) {
    case -EFBIG:
        *code = GW_ETOOLARGE;
        *msg = "media larger than max_media_bytes";
        return 413;
    case -ENOSPC:
    case -EDQUOT:
        *msg = "the media store is out of space";
        return 507;
    case -EMFILE:
    case -ENFILE:
        *code = GW_EOVERLOADED;
        *msg = "too many uploads at once, retry later";
        return 503;
    }
    *msg = "storing the media failed";
    return 500;
}

static int up_write(void *ctx, const uint8_t *p, size_t n)
{
    return media_upload_write(ctx, p, n);
}

static void up_abort(srv *s, void *ctx)
{
    media_upload *u = ctx;
    s->met->media_uploads_active--;
    s->met->media_uploads_failed++;
    srv_log(s, LOG_DEBUG, "media: upload abandoned after %" PRIu64 " bytes, temp removed",
            u->size);
    media_upload_discard(u);
}

static void up_end(conn *c, void *ctx, int err, int ka)
{
    srv *s = c->srv;
    media_upload *u = ctx;
    uint64_t size = u->size;
    char id[MEDIA_ID_LEN + 1], url[256];
    s->met->media_uploads_active--;
    if (err)
        media_upload_discard(u);
    else
        err = media_upload_commit(u, id); /* frees u */
    if (err) {
        int code;
        const char *msg;
        int status = upload_status(err, &code, &msg);
        if (status != 413)
            srv_log(s, LOG_ERROR, "media: storing an upload failed after %" PRIu64 " bytes: %s",
                    size, strerror(-err));
        s->met->media_uploads_failed++;
        reply_refusal(c, status, code, NULL, msg);
        return;
    }
    s->met->media_uploads++;
    s->met->media_upload_bytes += size;
    char dir[CFG_PATH + 32], obj[CFG_PATH + 128], mpath[CFG_PATH + 160];
    obj_paths(s->cfg.data, id, dir, sizeof dir, obj, sizeof obj, mpath, sizeof mpath);
    meta m;
    if (read_meta(mpath, &m))
        snprintf(m.ctype, sizeof m.ctype, "application/octet-stream");
    json_t *j = signed_url(s, id, url, sizeof url)
                    ? json_pack("{s:s, s:s, s:I, s:s}", "media_id", id, "url", url, "size",
                                (json_int_t)size, "content_type", m.ctype)
                    : NULL;
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        reply_refusal(c, 500, GW_EINTERNAL, NULL, "out of memory");
        return;
    }
    conn_http_reply(c, 201, "application/json", text, strlen(text), ka);
    free(text);
}

const body_sink media_upload_sink = {up_write, up_end, up_abort};

int media_upload_begin(conn *c, const http_req *r, void **ctx)
{
    srv *s = c->srv;
    uint64_t uid;
    const char *why = "bad token";
    *ctx = NULL;
    if (rest__bearer(s, r, &uid, &why)) {
        reply_refusal(c, 401, GW_EUNAUTHORIZED, "WWW-Authenticate: Bearer realm=\"chatd\"\r\n",
                      why);
        return -1;
    }
    media_upload *u;
    int rc = media_upload_open(s->cfg.data, s->cfg.max_media_bytes,
                               http_header_get(r, "Content-Type"), uid, &u);
    if (rc) {
        int code;
        const char *msg;
        int status = upload_status(rc, &code, &msg);
        srv_log(s, status == 503 ? LOG_WARN : LOG_ERROR, "media: cannot start an upload: %s",
                strerror(-rc));
        s->met->media_uploads_failed++;
        reply_refusal(c, status, code, status == 503 ? "Retry-After: 1\r\n" : NULL, msg);
        return -1;
    }
    s->met->media_uploads_active++;
    *ctx = u;
    return 0;
}

static int may_mint(srv *s, uint64_t uid, const char *id, const meta *m, int have_meta)
{
    if (have_meta)
        for (int i = 0; i < m->nup; i++)
            if (m->uploaders[i] == uid)
                return 1;
    sent *e = sent_find(id);
    for (uint32_t i = 0; e && i < e->n; i++) {
        convo *cv = st_conv(s->st, e->convs[i]);
        if (cv && cv->committed && st_member(cv, uid))
            return 1;
    }
    return 0;
}

int media_rest(srv *s, uint64_t uid, const http_req *r, const uint8_t *body, size_t blen,
               json_t **out, int *code, char *err, size_t errlen)
{
    char url[256];
    *out = NULL;
    *code = 0;
    if (!strcmp(r->path, MEDIA_REST_PATH)) {
        /* Can't happen: conn.c streams every POST here to media_upload_sink,
         * and rest.c answers other methods with 405. */
        *code = GW_EINTERNAL;
        snprintf(err, errlen, "uploads are streamed, not routed here");
        return 500;
    }
    /* /api/v1/media/<id>/url */
    const char *p = r->path + sizeof MEDIA_REST_PATH - 1;
    size_t pl = strlen(p);
    if (pl != 1 + MEDIA_ID_LEN + 4 || p[0] != '/' ||
        !media_valid_id(p + 1, MEDIA_ID_LEN) || strcmp(p + 1 + MEDIA_ID_LEN, "/url")) {
        *code = GW_ENOTFOUND;
        snprintf(err, errlen, "no such path");
        return 404;
    }
    char id[MEDIA_ID_LEN + 1];
    memcpy(id, p + 1, MEDIA_ID_LEN);
    id[MEDIA_ID_LEN] = 0;
    char dir[CFG_PATH + 32], obj[CFG_PATH + 128], mpath[CFG_PATH + 160];
    obj_paths(s->cfg.data, id, dir, sizeof dir, obj, sizeof obj, mpath, sizeof mpath);
    meta m;
    int have_meta = read_meta(mpath, &m) == 0;
    /* Not a member and not the uploader: 403 whether or not the object
     * exists, so the answer does not reveal which ids are stored. */
    if (!may_mint(s, uid, id, &m, have_meta)) {
        *code = GW_ENOTMEMBER;
        snprintf(err, errlen, "not a member of a conversation where this media was sent");
        return 403;
    }
    struct stat sb;
    if (stat(obj, &sb)) {
        *code = GW_ENOTFOUND;
        snprintf(err, errlen, "no such media");
        return 404;
    }
    if (!signed_url(s, id, url, sizeof url)) {
        *code = GW_EINTERNAL;
        snprintf(err, errlen, "signing failed");
        return 500;
    }
    *out = json_pack("{s:s, s:s}", "media_id", id, "url", url);
    return 200;
}
