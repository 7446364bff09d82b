/* Unit tests of media signing, Range parsing, URL ids and the blob store
 * (server/media.c). */
#include <dirent.h>
#include <errno.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "media.h"
#include "test.h"

static const char *id64 =
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
static const uint8_t key[] = "test-secret";

TEST(media_sign_known_vector)
{
    /* openssl: printf '<id>\n1700000000' | openssl dgst -sha256 -hmac test-secret
     */
    char sig[MEDIA_SIG_LEN + 1];
    ASSERT_EQ(media_sign(key, sizeof key - 1, id64, 1700000000, sig), 0);
    ASSERT_EQ(strlen(sig), MEDIA_SIG_LEN);
    FILE *p = popen("printf "
                    "'9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f"
                    "00a08\\n1700000000'"
                    " | openssl dgst -sha256 -hmac test-secret -r",
                    "r");
    if (p) {
        char line[256] = {0};
        if (fgets(line, sizeof line, p) && strlen(line) >= 64) {
            line[64] = 0;
            ASSERT_STR_EQ(sig, line);
        }
        pclose(p);
    }
}

TEST(media_check_sig_accepts_valid_rejects_tampered_expired_missing)
{
    char sig[MEDIA_SIG_LEN + 1];
    ASSERT_EQ(media_sign(key, sizeof key - 1, id64, 2000, sig), 0);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "2000", sig, 1999), 0);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "2000", sig, 2000), 0);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "2000", sig, 2001), -1);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "2001", sig, 1000), -1);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "02000", sig, 1000), -1);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, NULL, sig, 1000), -1);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "2000", NULL, 1000), -1);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "2000", "", 1000), -1);
    char bad[MEDIA_SIG_LEN + 1];
    memcpy(bad, sig, sizeof bad);
    bad[10] = bad[10] == 'a' ? 'b' : 'a';
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, id64, "2000", bad, 1000), -1);
    ASSERT_EQ(media_check_sig((const uint8_t *)"other", 5, id64, "2000", sig, 1000), -1);
    char other[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a09";
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, other, "2000", sig, 1000), -1);
    ASSERT_EQ(media_check_sig(key, sizeof key - 1, "../../etc", "2000", sig, 1000), -1);
}

TEST(media_parse_range_forms)
{
    uint64_t a = 0, b = 0;
    ASSERT_EQ(media_parse_range(NULL, 100, &a, &b), 0);
    ASSERT_EQ(media_parse_range("bytes=0-9", 100, &a, &b), 1);
    ASSERT_EQ(a, 0);
    ASSERT_EQ(b, 9);
    ASSERT_EQ(media_parse_range("bytes=90-", 100, &a, &b), 1);
    ASSERT_EQ(a, 90);
    ASSERT_EQ(b, 99);
    ASSERT_EQ(media_parse_range("bytes=-10", 100, &a, &b), 1);
    ASSERT_EQ(a, 90);
    ASSERT_EQ(b, 99);
    ASSERT_EQ(media_parse_range("bytes=-1000", 100, &a, &b), 1);
    ASSERT_EQ(a, 0);
    ASSERT_EQ(b, 99);
    ASSERT_EQ(media_parse_range("bytes=50-5000", 100, &a, &b), 1);
    ASSERT_EQ(a, 50);
    ASSERT_EQ(b, 99);
    ASSERT_EQ(media_parse_range("bytes=100-", 100, &a, &b), -1);
    ASSERT_EQ(media_parse_range("bytes=100-200", 100, &a, &b), -1);
    ASSERT_EQ(media_parse_range("bytes=-0", 100, &a, &b), -1);
    ASSERT_EQ(media_parse_range("bytes=0-", 0, &a, &b), -1);
    /* ignored: the whole object */
    ASSERT_EQ(media_parse_range("bytes=0-1,5-6", 100, &a, &b), 0);
    ASSERT_EQ(media_parse_range("items=0-1", 100, &a, &b), 0);
    ASSERT_EQ(media_parse_range("bytes=5-1", 100, &a, &b), 0);
    ASSERT_EQ(media_parse_range("bytes=x-1", 100, &a, &b), 0);
    ASSERT_EQ(media_parse_range("bytes=-", 100, &a, &b), 0);
    ASSERT_EQ(media_parse_range("bytes=99999999999999999999-", 100, &a, &b), 0);
}

TEST(media_url_id_parses_ours_only)
{
    char id[MEDIA_ID_LEN + 1];
    char url[256];
    snprintf(url, sizeof url, "/media/%s?exp=1&sig=ab", id64);
    ASSERT_EQ(media_url_id(url, strlen(url), id), 0);
    ASSERT_STR_EQ(id, id64);
    snprintf(url, sizeof url, "https://chat.example/media/%s", id64);
    ASSERT_EQ(media_url_id(url, strlen(url), id), 0);
    ASSERT_STR_EQ(id, id64);
    snprintf(url, sizeof url, "/media/%.63s?exp=1", id64);
    ASSERT_EQ(media_url_id(url, strlen(url), id), -1);
    snprintf(url, sizeof url, "/other/%s", id64);
    ASSERT_EQ(media_url_id(url, strlen(url), id), -1);
    ASSERT_EQ(media_url_id("", 0, id), -1);
}

TEST(media_store_names_object_by_sha256)
{
    const char *dir = test_path(0, "data");
    mkdir(dir, 0755);
    const char *text = "hello media";
    char id[MEDIA_ID_LEN + 1], id2[MEDIA_ID_LEN + 1];
    ASSERT_EQ(media_store(dir, (const uint8_t *)text, strlen(text), "text/plain", 7, id),
              0);
    uint8_t h[32];
    SHA256((const uint8_t *)text, strlen(text), h);
    char want[65];
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", h[i]);
    ASSERT_STR_EQ(id, want);
    char path[2048];
    snprintf(path, sizeof path, "%s/media/%.2s/%s", dir, id, id);
    struct stat sb;
    ASSERT_EQ(stat(path, &sb), 0);
    ASSERT_EQ(sb.st_size, strlen(text));
    ASSERT_EQ(media_store(dir, (const uint8_t *)text, strlen(text), "image/png", 8, id2),
              0);
    ASSERT_STR_EQ(id, id2);
    snprintf(path, sizeof path, "%s/media/%.2s/%s.meta", dir, id, id);
    FILE *f = fopen(path, "r");
    ASSERT(f);
    char buf[512] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    ASSERT(n > 0);
    ASSERT(strstr(buf, "content_type: text/plain\n"));
    ASSERT(strstr(buf, "size: 11\n"));
    ASSERT(strstr(buf, "uploader: 7\n"));
    ASSERT(strstr(buf, "uploader: 8\n"));
}

/* Names of the tmp- files under dir/media (top level and <p>/). */
static int count_tmp(const char *dir)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/media", dir);
    DIR *d = opendir(path);
    int n = 0;
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strncmp(e->d_name, "tmp-", 4))
            n++;
        else if (strlen(e->d_name) == 2 && e->d_name[0] != '.') {
            char sub[2100];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            DIR *s2 = opendir(sub);
            struct dirent *f;
            while (s2 && (f = readdir(s2)))
                n += !strncmp(f->d_name, "tmp-", 4);
            if (s2)
                closedir(s2);
        }
    }
    closedir(d);
    return n;
}

TEST(media_upload_streams_in_pieces_to_the_same_id)
{
    const char *dir = test_path(0, "data");
    mkdir(dir, 0755);
    static uint8_t data[300000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 131 + (i >> 9));
    media_upload *u;
    ASSERT_EQ(media_upload_open(dir, sizeof data, "video/mp4", 9, &u), 0);
    ASSERT_EQ(count_tmp(dir), 1);
    /* Uneven pieces, one larger than a single write. */
    size_t off = 0, step = 1;
    while (off < sizeof data) {
        size_t n = sizeof data - off < step ? sizeof data - off : step;
        ASSERT_EQ(media_upload_write(u, data + off, n), 0);
        off += n;
        step = step * 3 + 7;
    }
    ASSERT_EQ(media_upload_size(u), sizeof data);
    char id[MEDIA_ID_LEN + 1], id2[MEDIA_ID_LEN + 1];
    ASSERT_EQ(media_upload_commit(u, id), 0);
    ASSERT_EQ(count_tmp(dir), 0);
    ASSERT_EQ(media_store(dir, data, sizeof data, "text/plain", 10, id2), 0);
    ASSERT_STR_EQ(id, id2);
    ASSERT_EQ(count_tmp(dir), 0);
    char path[2048];
    snprintf(path, sizeof path, "%s/media/%.2s/%s.meta", dir, id, id);
    FILE *f = fopen(path, "r");
    ASSERT(f);
    char buf[512] = {0};
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    ASSERT(got > 0);
    ASSERT(strstr(buf, "content_type: video/mp4\n"));
    ASSERT(strstr(buf, "size: 300000\n"));
    ASSERT(strstr(buf, "uploader: 9\n"));
    ASSERT(strstr(buf, "uploader: 10\n"));
}

TEST(media_upload_over_limit_or_discarded_leaves_nothing)
{
    const char *dir = test_path(0, "data");
    mkdir(dir, 0755);
    media_upload *u;
    ASSERT_EQ(media_upload_open(dir, 10, NULL, 1, &u), 0);
    ASSERT_EQ(media_upload_write(u, (const uint8_t *)"0123456789", 10), 0);
    ASSERT_EQ(media_upload_write(u, (const uint8_t *)"x", 1), -EFBIG);
    /* The error sticks, and commit reports it and removes the temp file. */
    ASSERT_EQ(media_upload_write(u, (const uint8_t *)"", 0), -EFBIG);
    char id[MEDIA_ID_LEN + 1];
    ASSERT_EQ(media_upload_commit(u, id), -EFBIG);
    ASSERT_EQ(count_tmp(dir), 0);
    ASSERT_EQ(media_upload_open(dir, 100, NULL, 1, &u), 0);
    ASSERT_EQ(media_upload_write(u, (const uint8_t *)"partial", 7), 0);
    ASSERT_EQ(count_tmp(dir), 1);
    media_upload_discard(u);
    media_upload_discard(NULL);
    ASSERT_EQ(count_tmp(dir), 0);
    /* No object directory was created for either. */
    char path[2048];
    snprintf(path, sizeof path, "%s/media", dir);
    DIR *d = opendir(path);
    ASSERT(d);
    struct dirent *e;
    int entries = 0;
    while ((e = readdir(d)))
        entries += e->d_name[0] != '.';
    closedir(d);
    ASSERT_EQ(entries, 0);
}

TEST(media_upload_open_fails_cleanly_without_a_data_dir)
{
    media_upload *u = (media_upload *)1;
    ASSERT(media_upload_open("/nonexistent/chatlog-test/dir", 10, NULL, 1, &u) < 0);
    ASSERT(u == NULL);
}
