/*
 * io_fault.c — the fault-injecting io_vfs; the model it implements is
 * described in io_fault.h.
 *
 * State: one record ("node") per file the vfs has opened, keyed by device and
 * inode so that every handle of a file, and the file under a new name after a
 * rename, share its pending writes. A node outlives its handles (a closed
 * file's unsynced writes are still in the page cache and still lost at a
 * power cut) until the file is unlinked. Each node knows the path it lives at
 * now, which is how the crash reaches files nobody has open.
 *
 * Every call takes the vfs's one mutex for its whole length, real I/O
 * included, except list(), which calls its callback after releasing it (the
 * callback may call back into the vfs).
 */
#include "io_fault.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BAK_PREFIX ".iofault-bak-"

typedef struct pwrite_rec {
    uint64_t off;
    size_t len;
    uint8_t *data;
} pwrite_rec;

typedef struct node {
    struct node *next;
    dev_t dev;
    ino_t ino;
    char *path;  /* where the file lives now; NULL once unlinked */
    int refs;    /* open handles */
    int counted; /* its size is in fault_vfs.used */
    uint64_t size; /* logical size: real contents + pending writes */
    pwrite_rec *w;
    size_t nw, capw;
} node;

typedef struct fault_vfs fault_vfs;

/* Our io_file. The engine sees it as an io_file *; it is never defined as
 * struct io_file here, because io_posix.c owns that name. */
typedef struct fault_file {
    fault_vfs *v;
    node *n;
    io_file *real;
    int writable;
} fault_file;

enum { J_CREATE = 1, J_RENAME = 2 };

typedef struct jent {
    int kind;
    char *path; /* J_CREATE: the file; J_RENAME: from */
    char *to;   /* J_RENAME */
    char *bak;  /* J_RENAME over an existing file: a link to the old one */
    char *dir1, *dir2;
    int synced1, synced2;
} jent;

struct fault_vfs {
    io_vfs base; /* first: an io_vfs * is a fault_vfs * */
    io_vfs *real;
    pthread_mutex_t mu;
    uint64_t rng;
    int crashed;
    node *nodes;
    jent *j;
    size_t nj, capj;
    int fail_armed;
    uint64_t fail_countdown;
    int fail_err;
    uint64_t limit;
    uint64_t used;
    uint64_t bak_seq;
    iofault_stats st;
};

static fault_vfs *fv(io_vfs *vfs) { return (fault_vfs *)vfs; }
static fault_file *ff(io_file *f) { return (fault_file *)f; }

/* splitmix64: small, seedable, good enough to pick fates. */
static uint64_t rnd(fault_vfs *v)
{
    uint64_t z = (v->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* The directory part of path, without trailing slashes ("." if none). */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return dup_str(".");
    while (slash > path && slash[-1] == '/')
        slash--;
    if (slash == path)
        return dup_str("/");
    size_t n = (size_t)(slash - path);
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, path, n);
        p[n] = 0;
    }
    return p;
}

/* dir compared with a journalled directory: equal up to trailing slashes. */
static int same_dir(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    while (la > 1 && a[la - 1] == '/')
        la--;
    while (lb > 1 && b[lb - 1] == '/')
        lb--;
    return la == lb && memcmp(a, b, la) == 0;
}

/* ---- nodes ---- */

static node *node_find(fault_vfs *v, dev_t dev, ino_t ino)
{
    for (node *n = v->nodes; n; n = n->next)
        if (n->dev == dev && n->ino == ino)
            return n;
    return NULL;
}

static node *node_at(fault_vfs *v, const char *path)
{
    struct stat st;
    if (stat(path, &st))
        return NULL;
    return node_find(v, st.st_dev, st.st_ino);
}

static void pending_clear(fault_vfs *v, node *n)
{
    for (size_t i = 0; i < n->nw; i++) {
        v->st.pending_bytes -= n->w[i].len;
        free(n->w[i].data);
    }
    n->nw = 0;
}

static void node_unlist(fault_vfs *v, node *n)
{
    for (node **pp = &v->nodes; *pp; pp = &(*pp)->next)
        if (*pp == n) {
            *pp = n->next;
            return;
        }
}

static void node_free(fault_vfs *v, node *n)
{
    pending_clear(v, n);
    free(n->w);
    free(n->path);
    free(n);
}

/* The file's name is gone (unlinked, or replaced and its backup dropped):
 * stop counting it, and free it if no handle holds it. */
static void node_gone(fault_vfs *v, node *n)
{
    if (n->counted) {
        v->used -= n->size;
        n->counted = 0;
    }
    free(n->path);
    n->path = NULL;
    node_unlist(v, n);
    if (n->refs == 0)
        node_free(v, n);
}

static void set_size(fault_vfs *v, node *n, uint64_t size)
{
    if (n->counted)
        v->used = v->used - n->size + size;
    n->size = size;
}

/* A read-write real handle on n: f's own when it is writable, else a fresh
 * one by path (*tmp is set and must be closed). */
static int real_rw(fault_vfs *v, node *n, fault_file *f, io_file **out,
                   io_file **tmp)
{
    *tmp = NULL;
    if (f && f->writable) {
        *out = f->real;
        return 0;
    }
    if (!n->path)
        return -ENOENT;
    int rc = v->real->open(v->real, n->path, IO_RDWR, tmp);
    *out = *tmp;
    return rc;
}

/* Write every pending write of n through, in order, dropping each one once it
 * is on the real file. */
static int write_through(fault_vfs *v, node *n, io_file *real)
{
    size_t i = 0;
    int rc = 0;
    for (; i < n->nw; i++) {
        rc = v->real->pwrite(real, n->w[i].data, n->w[i].len, n->w[i].off);
        if (rc)
            break;
        v->st.bytes_synced += n->w[i].len;
        v->st.pending_bytes -= n->w[i].len;
        free(n->w[i].data);
    }
    memmove(n->w, n->w + i, (n->nw - i) * sizeof *n->w);
    n->nw -= i;
    return rc;
}

/* ---- the journal of unsynced directory operations ---- */

static void jent_free(jent *e)
{
    free(e->path);
    free(e->to);
    free(e->bak);
    free(e->dir1);
    free(e->dir2);
}

static int journal_add(fault_vfs *v, jent *e)
{
    if (v->nj == v->capj) {
        size_t cap = v->capj ? v->capj * 2 : 16;
        jent *p = realloc(v->j, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        v->j = p;
        v->capj = cap;
    }
    v->j[v->nj++] = *e;
    v->st.journal = v->nj;
    return 0;
}

/* A rename became durable (or was the last word at a crash): the file it
 * replaced is gone for good. */
static void drop_backup(fault_vfs *v, jent *e)
{
    if (!e->bak)
        return;
    node *n = node_at(v, e->bak);
    v->real->unlink(v->real, e->bak);
    if (n)
        node_gone(v, n);
}

/* ---- io_vfs ---- */

static int fa_open(io_vfs *vfs, const char *path, int flags, io_file **out)
{
    fault_vfs *v = fv(vfs);
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    v->st.opens++;
    int created = (flags & IO_CREATE) && v->real->exists(v->real, path) == -ENOENT;
    fault_file *f = calloc(1, sizeof *f);
    char *dir = created ? dir_of(path) : NULL;
    char *jpath = created ? dup_str(path) : NULL;
    if (!f || (created && (!dir || !jpath))) {
        free(f);
        free(dir);
        free(jpath);
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = v->real->open(v->real, path, flags, &f->real))) {
        free(f);
        free(dir);
        free(jpath);
        goto out;
    }
    f->v = v;
    f->writable = (flags & IO_RDWR) != 0;
    struct stat st;
    uint64_t size = 0;
    if (stat(path, &st))
        rc = -errno;
    else
        rc = v->real->size(f->real, &size);
    node *n = rc ? NULL : node_find(v, st.st_dev, st.st_ino);
    if (!rc && !n) {
        n = calloc(1, sizeof *n);
        if (n && !(n->path = dup_str(path))) {
            free(n);
            n = NULL;
        }
        if (!n) {
            rc = -ENOMEM;
        } else {
            n->dev = st.st_dev;
            n->ino = st.st_ino;
            n->size = size;
            n->counted = 1;
            v->used += size;
            n->next = v->nodes;
            v->nodes = n;
        }
    }
    if (!rc && created) {
        jent e = {.kind = J_CREATE, .path = jpath, .dir1 = dir, .synced2 = 1};
        rc = journal_add(v, &e);
        if (!rc)
            jpath = dir = NULL;
    }
    free(jpath);
    free(dir);
    if (rc) {
        v->real->close(f->real);
        if (created) {
            if (n && n->refs == 0)
                node_gone(v, n);
            v->real->unlink(v->real, path);
        }
        free(f);
        goto out;
    }
    f->n = n;
    n->refs++;
    *out = (io_file *)f;
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_close(io_file *file)
{
    fault_file *f = ff(file);
    fault_vfs *v = f->v;
    pthread_mutex_lock(&v->mu);
    int rc = v->real->close(f->real);
    if (v->crashed)
        rc = -EIO;
    node *n = f->n;
    n->refs--;
    if (n->refs == 0 && !n->path)
        node_free(v, n);
    free(f);
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static ssize_t fa_pread(io_file *file, void *buf, size_t len, uint64_t off)
{
    fault_file *f = ff(file);
    fault_vfs *v = f->v;
    ssize_t rc;
    pthread_mutex_lock(&v->mu);
    node *n = f->n;
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    if (off >= n->size || len == 0) {
        rc = 0;
        goto out;
    }
    size_t want = len;
    if (n->size - off < want)
        want = (size_t)(n->size - off);
    rc = v->real->pread(f->real, buf, want, off);
    if (rc < 0)
        goto out;
    memset((uint8_t *)buf + rc, 0, want - (size_t)rc);
    for (size_t i = 0; i < n->nw; i++) {
        const pwrite_rec *w = &n->w[i];
        uint64_t lo = w->off > off ? w->off : off;
        uint64_t hi = w->off + w->len < off + want ? w->off + w->len : off + want;
        if (lo < hi)
            memcpy((uint8_t *)buf + (lo - off), w->data + (lo - w->off),
                   (size_t)(hi - lo));
    }
    rc = (ssize_t)want;
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_pwrite(io_file *file, const void *buf, size_t len, uint64_t off)
{
    fault_file *f = ff(file);
    fault_vfs *v = f->v;
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    node *n = f->n;
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    v->st.pwrites++;
    if (!f->writable) {
        rc = -EBADF;
        goto out;
    }
    uint64_t end = off + len;
    uint64_t growth = end > n->size ? end - n->size : 0;
    if (growth && v->limit != IOFAULT_NO_LIMIT && v->used + growth > v->limit) {
        /* Write the prefix that fits, as a full disk does. */
        uint64_t room = v->limit > v->used ? v->limit - v->used : 0;
        uint64_t fit_end = n->size + room;
        len = fit_end > off ? (size_t)(fit_end - off) : 0;
        end = off + len;
        growth = end > n->size ? end - n->size : 0;
        v->st.enospc++;
        rc = -ENOSPC;
    }
    if (len == 0)
        goto out;
    if (n->nw == n->capw) {
        size_t cap = n->capw ? n->capw * 2 : 8;
        pwrite_rec *p = realloc(n->w, cap * sizeof *p);
        if (!p) {
            rc = -ENOMEM;
            goto out;
        }
        n->w = p;
        n->capw = cap;
    }
    uint8_t *data = malloc(len);
    if (!data) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(data, buf, len);
    n->w[n->nw++] = (pwrite_rec){off, len, data};
    if (growth)
        set_size(v, n, end);
    v->st.bytes_written += len;
    v->st.pending_bytes += len;
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_fdatasync(io_file *file)
{
    fault_file *f = ff(file);
    fault_vfs *v = f->v;
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    node *n = f->n;
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    v->st.fdatasyncs++;
    if (v->fail_armed) {
        if (v->fail_countdown == 0) {
            /* Like Linux after a writeback error: the error is reported once
             * and the unwritten data is gone. */
            v->fail_armed = 0;
            v->st.injected++;
            rc = v->fail_err;
            pending_clear(v, n);
            uint64_t real_size = 0;
            if (v->real->size(f->real, &real_size) == 0)
                set_size(v, n, real_size);
            goto out;
        }
        v->fail_countdown--;
    }
    io_file *real, *tmp;
    if (n->nw) {
        if ((rc = real_rw(v, n, f, &real, &tmp)))
            goto out;
        rc = write_through(v, n, real);
        if (tmp)
            v->real->close(tmp);
        if (rc)
            goto out;
    }
    rc = v->real->fdatasync(f->real);
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_truncate(io_file *file, uint64_t size)
{
    fault_file *f = ff(file);
    fault_vfs *v = f->v;
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    node *n = f->n;
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    if (!f->writable) {
        rc = -EBADF;
        goto out;
    }
    if (size > n->size && v->limit != IOFAULT_NO_LIMIT &&
        v->used + (size - n->size) > v->limit) {
        v->st.enospc++;
        rc = -ENOSPC;
        goto out;
    }
    if ((rc = v->real->truncate(f->real, size)))
        goto out;
    size_t k = 0;
    for (size_t i = 0; i < n->nw; i++) {
        pwrite_rec w = n->w[i];
        if (w.off >= size) {
            v->st.pending_bytes -= w.len;
            free(w.data);
            continue;
        }
        if (w.off + w.len > size) {
            size_t keep = (size_t)(size - w.off);
            v->st.pending_bytes -= w.len - keep;
            w.len = keep;
        }
        n->w[k++] = w;
    }
    n->nw = k;
    set_size(v, n, size);
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_size(io_file *file, uint64_t *out)
{
    fault_file *f = ff(file);
    fault_vfs *v = f->v;
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    if (v->crashed)
        rc = -EIO;
    else
        *out = f->n->size;
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_rename(io_vfs *vfs, const char *from, const char *to)
{
    fault_vfs *v = fv(vfs);
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    jent e = {.kind = J_RENAME, .path = dup_str(from), .to = dup_str(to),
              .dir1 = dir_of(from), .dir2 = dir_of(to)};
    if (!e.path || !e.to || !e.dir1 || !e.dir2) {
        jent_free(&e);
        rc = -ENOMEM;
        goto out;
    }
    struct stat sf, st;
    if (stat(from, &sf)) {
        rc = -errno;
        jent_free(&e);
        goto out;
    }
    node *nf = node_find(v, sf.st_dev, sf.st_ino);
    node *nt = NULL;
    int replacing = stat(to, &st) == 0;
    if (replacing && st.st_dev == sf.st_dev && st.st_ino == sf.st_ino) {
        jent_free(&e); /* POSIX: renaming a file onto itself does nothing */
        goto out;
    }
    if (replacing) {
        /* Keep the file about to be replaced under a hidden name, so that
         * undoing the rename at a crash can bring it back. */
        char name[64];
        snprintf(name, sizeof name, "/" BAK_PREFIX "%llu",
                 (unsigned long long)++v->bak_seq);
        size_t l = strlen(e.dir2) + strlen(name) + 1;
        if (!(e.bak = malloc(l))) {
            jent_free(&e);
            rc = -ENOMEM;
            goto out;
        }
        snprintf(e.bak, l, "%s%s", e.dir2, name);
        if (link(to, e.bak)) {
            rc = -errno;
            jent_free(&e);
            goto out;
        }
        nt = node_find(v, st.st_dev, st.st_ino);
    }
    if (!rc && v->nj == v->capj) {
        /* Make room first so that the journal entry cannot fail after the
         * rename is done. */
        jent probe = {0};
        if ((rc = journal_add(v, &probe)) == 0)
            v->st.journal = --v->nj;
    }
    if (!rc)
        rc = v->real->rename(v->real, from, to);
    if (rc) {
        if (e.bak)
            unlink(e.bak);
        jent_free(&e);
        goto out;
    }
    if (nf) {
        char *p = dup_str(to);
        if (p) {
            free(nf->path);
            nf->path = p;
        }
    }
    if (nt) {
        /* The replaced file lives on only as the backup: no longer counted
         * against the space limit, reached by the backup's name. */
        char *p = dup_str(e.bak);
        if (p) {
            free(nt->path);
            nt->path = p;
        }
        if (nt->counted) {
            v->used -= nt->size;
            nt->counted = 0;
        }
    }
    journal_add(v, &e);
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_unlink(io_vfs *vfs, const char *path)
{
    fault_vfs *v = fv(vfs);
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    node *n = node_at(v, path);
    if ((rc = v->real->unlink(v->real, path)))
        goto out;
    if (n)
        node_gone(v, n);
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_mkdir(io_vfs *vfs, const char *path)
{
    fault_vfs *v = fv(vfs);
    int rc;
    pthread_mutex_lock(&v->mu);
    rc = v->crashed ? -EIO : v->real->mkdir(v->real, path);
    pthread_mutex_unlock(&v->mu);
    return rc;
}

static int fa_fsync_dir(io_vfs *vfs, const char *path)
{
    fault_vfs *v = fv(vfs);
    int rc;
    pthread_mutex_lock(&v->mu);
    if (v->crashed) {
        rc = -EIO;
        goto out;
    }
    v->st.fsync_dirs++;
    if ((rc = v->real->fsync_dir(v->real, path)))
        goto out;
    size_t k = 0;
    for (size_t i = 0; i < v->nj; i++) {
        jent *e = &v->j[i];
        if (same_dir(e->dir1, path))
            e->synced1 = 1;
        if (e->dir2 && same_dir(e->dir2, path))
            e->synced2 = 1;
        if (e->synced1 && e->synced2) {
            drop_backup(v, e);
            jent_free(e);
            continue;
        }
        v->j[k++] = *e;
    }
    v->nj = k;
    v->st.journal = k;
out:
    pthread_mutex_unlock(&v->mu);
    return rc;
}

typedef struct names {
    char **v;
    size_t n, cap;
} names;

static int collect_cb(const char *name, void *arg)
{
    names *l = arg;
    if (!strncmp(name, BAK_PREFIX, strlen(BAK_PREFIX)))
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char **p = realloc(l->v, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        l->v = p;
        l->cap = cap;
    }
    if (!(l->v[l->n] = dup_str(name)))
        return -ENOMEM;
    l->n++;
    return 0;
}

static int fa_list(io_vfs *vfs, const char *dir, io_list_cb cb, void *arg)
{
    fault_vfs *v = fv(vfs);
    names l = {0};
    int rc;
    pthread_mutex_lock(&v->mu);
    rc = v->crashed ? -EIO : v->real->list(v->real, dir, collect_cb, &l);
    pthread_mutex_unlock(&v->mu);
    for (size_t i = 0; i < l.n; i++) {
        if (rc == 0)
            rc = cb(l.v[i], arg);
        free(l.v[i]);
    }
    free(l.v);
    return rc;
}

static int fa_exists(io_vfs *vfs, const char *path)
{
    fault_vfs *v = fv(vfs);
    int rc;
    pthread_mutex_lock(&v->mu);
    rc = v->crashed ? -EIO : v->real->exists(v->real, path);
    pthread_mutex_unlock(&v->mu);
    return rc;
}

/* ---- the crash ---- */

/* Apply a torn version of n's pending writes to real: each dirty sector
 * gets its new bytes, keeps its old ones, or (garble) gets random ones where
 * pending writes covered it. Bytes that were synced and not overwritten since
 * are never garbled: a disk that tears a sector it was not asked to write is
 * outside what any log can survive. */
static int tear(fault_vfs *v, node *n, io_file *real, int garble)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < n->nw; i++) {
        if (n->w[i].off < lo)
            lo = n->w[i].off;
        if (n->w[i].off + n->w[i].len > hi)
            hi = n->w[i].off + n->w[i].len;
    }
    if (lo >= hi)
        return 0;
    uint64_t s0 = lo / IOFAULT_SECTOR, s1 = (hi - 1) / IOFAULT_SECTOR + 1;
    size_t len = (size_t)(hi - lo);
    uint8_t *img = calloc(1, len);
    uint8_t *dirty = calloc(1, (size_t)(s1 - s0));
    uint8_t *covered = calloc(1, len);
    int rc = 0;
    if (!img || !dirty || !covered) {
        rc = -ENOMEM;
        goto out;
    }
    ssize_t got = v->real->pread(real, img, len, lo);
    if (got < 0) {
        rc = (int)got;
        goto out;
    }
    for (size_t i = 0; i < n->nw; i++) {
        const pwrite_rec *w = &n->w[i];
        memcpy(img + (w->off - lo), w->data, w->len);
        memset(covered + (w->off - lo), 1, w->len);
        for (uint64_t s = w->off / IOFAULT_SECTOR;
             s * IOFAULT_SECTOR < w->off + w->len; s++)
            dirty[s - s0] = 1;
    }
    for (uint64_t s = s0; s < s1; s++) {
        if (!dirty[s - s0])
            continue;
        uint64_t a = s * IOFAULT_SECTOR, b = a + IOFAULT_SECTOR;
        if (a < lo)
            a = lo;
        if (b > hi)
            b = hi;
        uint64_t fate = rnd(v) % (garble ? 3 : 2);
        if (fate == 1)
            continue; /* left out */
        uint8_t *p = img + (a - lo);
        if (fate == 2)
            for (uint64_t i = 0; i < b - a; i++)
                if (covered[a - lo + i])
                    p[i] = (uint8_t)rnd(v);
        if ((rc = v->real->pwrite(real, p, (size_t)(b - a), a)))
            break;
    }
out:
    free(img);
    free(dirty);
    free(covered);
    return rc;
}

static void undo(fault_vfs *v, jent *e)
{
    if (e->kind == J_CREATE) {
        unlink(e->path);
        return;
    }
    if (rename(e->to, e->path) == 0 && e->bak) {
        rename(e->bak, e->to);
        free(e->bak);
        e->bak = NULL;
    }
}

int iofault_crash(io_vfs *vfs, int mode)
{
    fault_vfs *v = fv(vfs);
    if (mode < IOFAULT_CRASH_DROP || mode > IOFAULT_CRASH_GARBLE)
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&v->mu);
    if (v->crashed) {
        pthread_mutex_unlock(&v->mu);
        return -EIO;
    }
    v->crashed = 1;
    for (node *n = v->nodes; n; n = n->next) {
        if (!n->nw || !n->path)
            continue;
        int fate = mode == IOFAULT_CRASH_DROP ? 0
                   : mode == IOFAULT_CRASH_KEEP ? 1
                                                : (int)(rnd(v) % 3);
        if (fate == 0)
            continue;
        io_file *real, *tmp;
        int r = real_rw(v, n, NULL, &real, &tmp);
        if (r == 0)
            r = fate == 1 ? write_through(v, n, real)
                          : tear(v, n, real, mode == IOFAULT_CRASH_GARBLE);
        if (tmp)
            v->real->close(tmp);
        if (r && !rc)
            rc = r;
    }
    for (node *n = v->nodes; n; n = n->next)
        pending_clear(v, n);
    size_t cut = mode == IOFAULT_CRASH_DROP   ? 0
                 : mode == IOFAULT_CRASH_KEEP ? v->nj
                                              : (size_t)(rnd(v) % (v->nj + 1));
    for (size_t i = v->nj; i > cut; i--)
        undo(v, &v->j[i - 1]);
    for (size_t i = 0; i < v->nj; i++) {
        if (i < cut && v->j[i].bak)
            unlink(v->j[i].bak);
        jent_free(&v->j[i]);
    }
    v->nj = 0;
    v->st.journal = 0;
    pthread_mutex_unlock(&v->mu);
    return rc;
}

int iofault_crashed(io_vfs *vfs)
{
    fault_vfs *v = fv(vfs);
    pthread_mutex_lock(&v->mu);
    int c = v->crashed;
    pthread_mutex_unlock(&v->mu);
    return c;
}

/* ---- switches and counters ---- */

void iofault_fail_fdatasync_after(io_vfs *vfs, uint64_t n, int err)
{
    fault_vfs *v = fv(vfs);
    pthread_mutex_lock(&v->mu);
    v->fail_armed = err != 0;
    v->fail_countdown = n;
    v->fail_err = err;
    pthread_mutex_unlock(&v->mu);
}

void iofault_set_space_limit(io_vfs *vfs, uint64_t bytes)
{
    fault_vfs *v = fv(vfs);
    pthread_mutex_lock(&v->mu);
    v->limit = bytes;
    pthread_mutex_unlock(&v->mu);
}

uint64_t iofault_used_bytes(io_vfs *vfs)
{
    fault_vfs *v = fv(vfs);
    pthread_mutex_lock(&v->mu);
    uint64_t u = v->used;
    pthread_mutex_unlock(&v->mu);
    return u;
}

void iofault_get_stats(io_vfs *vfs, iofault_stats *out)
{
    fault_vfs *v = fv(vfs);
    pthread_mutex_lock(&v->mu);
    *out = v->st;
    pthread_mutex_unlock(&v->mu);
}

/* ---- life cycle ---- */

io_vfs *iofault_new(uint64_t seed)
{
    fault_vfs *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->base = (io_vfs){
        .open = fa_open,
        .close = fa_close,
        .pread = fa_pread,
        .pwrite = fa_pwrite,
        .fdatasync = fa_fdatasync,
        .truncate = fa_truncate,
        .size = fa_size,
        .rename = fa_rename,
        .unlink = fa_unlink,
        .mkdir = fa_mkdir,
        .fsync_dir = fa_fsync_dir,
        .list = fa_list,
        .exists = fa_exists,
    };
    v->real = io_posix();
    v->rng = seed;
    v->limit = IOFAULT_NO_LIMIT;
    pthread_mutex_init(&v->mu, NULL);
    return &v->base;
}

void iofault_free(io_vfs *vfs)
{
    if (!vfs)
        return;
    fault_vfs *v = fv(vfs);
    pthread_mutex_lock(&v->mu);
    if (!v->crashed) {
        for (node *n = v->nodes; n; n = n->next) {
            io_file *real, *tmp;
            if (!n->nw || !n->path || real_rw(v, n, NULL, &real, &tmp))
                continue;
            write_through(v, n, real);
            v->real->close(tmp);
        }
        for (size_t i = 0; i < v->nj; i++) {
            if (v->j[i].bak)
                unlink(v->j[i].bak);
            jent_free(&v->j[i]);
        }
    }
    free(v->j);
    while (v->nodes) {
        node *n = v->nodes;
        v->nodes = n->next;
        node_free(v, n);
    }
    pthread_mutex_unlock(&v->mu);
    pthread_mutex_destroy(&v->mu);
    free(v);
}
