/*
 * blobs.c — the media part of `chatlog verify`: every object chatd stored
 * under DIR/media/ is checked against its name (docs/media.md, "Where blobs
 * live"):
 *
 *   DIR/media/<p>/<id>        <id> = lowercase hex SHA-256 of the bytes,
 *                             <p> = its first two hex digits
 *   DIR/media/<p>/<id>.meta   "content_type: …", "size: N", "uploader: …"
 *   DIR/media/<p>/tmp-*       a write in progress or left by a crash
 *
 * A problem (counted, exit 1): an object whose SHA-256 is not its name, an
 * object in the wrong <p> directory, a .meta whose size is not the object's
 * length, an object or .meta that cannot be read. A note (printed, not
 * counted): tmp- leftovers, a .meta without its object, any other file.
 * Hashing is OpenSSL's EVP SHA-256, reading each object in 64 KiB pieces.
 */
#include "blobs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#define BLOB_ID_LEN 64
#define BLOB_MAX_LINES 20

typedef struct bstate {
    FILE *out;
    const char *root; /* DIR/media, for messages */
    int problems;
    uint64_t objects, metas, leftovers, bytes;
} bstate;

static void bproblem(bstate *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bproblem(bstate *b, const char *fmt, ...)
{
    if (++b->problems > BLOB_MAX_LINES)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("verify: ", b->out);
    vfprintf(b->out, fmt, ap);
    fputc('\n', b->out);
    va_end(ap);
}

static int is_hex_lower(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* SHA-256 of the file at path as lowercase hex into hex (65 bytes), its
 * length into *size. 0, -errno on I/O, -EIO when OpenSSL fails. */
static int sha256_file(const char *path, char *hex, uint64_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = 0;
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = -EIO;
        goto out;
    }
    static unsigned char buf[65536];
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto out;
        }
        if (n == 0)
            break;
        if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
            rc = -EIO;
            goto out;
        }
        total += (uint64_t)n;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != BLOB_ID_LEN / 2) {
        rc = -EIO;
        goto out;
    }
    for (unsigned int i = 0; i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    *size = total;
out:
    EVP_MD_CTX_free(ctx);
    close(fd);
    return rc;
}

/* The "size: N" line of a .meta file: 0 with *size, 1 when the file has no
 * such line (or it is malformed), -errno when it cannot be read. */
static int meta_size(const char *path, uint64_t *size)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    char line[512];
    int rc = 1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "size: ", 6) != 0)
            continue;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(line + 6, &end, 10);
        if (errno == 0 && end != line + 6 && (*end == '\n' || *end == '\0')) {
            *size = v;
            rc = 0;
        }
        break;
    }
    if (ferror(f))
        rc = -EIO;
    fclose(f);
    return rc;
}

static void check_object(bstate *b, const char *dir, const char *p, const char *name)
{
    char path[4096], hex[BLOB_ID_LEN + 1];
    uint64_t size = 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    b->objects++;
    int rc = sha256_file(path, hex, &size);
    if (rc < 0) {
        bproblem(b, "media %s/%s: cannot read: %s", p, name, strerror(-rc));
        return;
    }
    b->bytes += size;
    if (memcmp(hex, name, BLOB_ID_LEN) != 0) {
        bproblem(b, "media %s/%s: content does not match its name (SHA-256 %s, %" PRIu64 " bytes)",
                 p, name, hex, size);
        return;
    }
    if (memcmp(name, p, 2) != 0)
        bproblem(b, "media %s/%s: in the wrong directory (belongs in %.2s/)", p, name, name);
    snprintf(path, sizeof path, "%s/%s.meta", dir, name);
    struct stat st;
    if (stat(path, &st) != 0)
        return; /* no .meta: served as application/octet-stream (docs/media.md) */
    uint64_t msize = 0;
    rc = meta_size(path, &msize);
    if (rc < 0)
        bproblem(b, "media %s/%s.meta: cannot read: %s", p, name, strerror(-rc));
    else if (rc > 0)
        bproblem(b, "media %s/%s.meta: no valid \"size:\" line", p, name);
    else if (msize != size)
        bproblem(b, "media %s/%s.meta: size %" PRIu64 " but the object has %" PRIu64 " bytes",
                 p, name, msize, size);
}

static int check_dir(bstate *b, const char *p)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", b->root, p);
    DIR *d = opendir(dir);
    if (!d) {
        bproblem(b, "media %s/: cannot open: %s", p, strerror(errno));
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (!strcmp(n, ".") || !strcmp(n, ".."))
            continue;
        if (!strncmp(n, "tmp-", 4)) {
            b->leftovers++;
            fprintf(b->out, "verify: note: media %s/%s: leftover of an unfinished write "
                    "(safe to remove while chatd is stopped)\n", p, n);
        } else if (len == BLOB_ID_LEN && is_hex_lower(n, len)) {
            check_object(b, dir, p, n);
        } else if (len == BLOB_ID_LEN + 5 && is_hex_lower(n, BLOB_ID_LEN) &&
                   !strcmp(n + BLOB_ID_LEN, ".meta")) {
            b->metas++;
            char obj[4096];
            struct stat st;
            snprintf(obj, sizeof obj, "%s/%.*s", dir, BLOB_ID_LEN, n);
            if (stat(obj, &st) != 0)
                fprintf(b->out, "verify: note: media %s/%s: metadata without its object\n", p, n);
        } else {
            fprintf(b->out, "verify: note: media %s/%s: not a file chatd writes\n", p, n);
        }
    }
    closedir(d);
    return 0;
}

int cli_verify_blobs(const char *data_dir, FILE *out)
{
    char root[4096];
    snprintf(root, sizeof root, "%s/media", data_dir);
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT)
            return 0; /* no media stored */
        return -errno;
    }
    bstate b = {.out = out, .root = root};
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, ".."))
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", root, n);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && strlen(n) == 2 && is_hex_lower(n, 2)) {
            check_dir(&b, n);
        } else if (!strncmp(n, "tmp-", 4)) {
            b.leftovers++;
            fprintf(out, "verify: note: media/%s: leftover of an unfinished write\n", n);
        } else {
            fprintf(out, "verify: note: media/%s: not a file chatd writes\n", n);
        }
    }
    closedir(d);
    if (b.problems > BLOB_MAX_LINES)
        fprintf(out, "verify: ... %d media problems in all\n", b.problems);
    fprintf(out, "verify: media: %" PRIu64 " objects (%" PRIu64 " bytes), %" PRIu64
            " metadata files, %" PRIu64 " leftovers, %d problems\n",
            b.objects, b.bytes, b.metas, b.leftovers, b.problems);
    return b.problems;
}
