/* Unit tests of media signing, Range parsing, URL ids and the blob store
 * (server/media.c). */
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
