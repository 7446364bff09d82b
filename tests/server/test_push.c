/* Unit tests of the parts of server/push.c without I/O or an event loop:
 * push_url parsing, the backoff schedule, UTF-8 cutting, the gateway
 * payload, a gateway's "rejected" answer, registration checks, the registry
 * file's JSON both ways, and the atomic file write. The worker itself runs
 * against a real receiver in tests/e2e/push.test.mjs. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "push.h"
#include "test.h"

static push_url parse_ok(const char *s)
{
    push_url u;
    char err[200] = "";
    if (push_url_parse(s, &u, err, sizeof err))
        FAIL("\"%s\" refused: %s", s, err);
    return u;
}

TEST(push_url_parse_accepts_http_https_ports_ipv6_and_paths)
{
    push_url u = parse_ok("http://127.0.0.1:5000/_matrix/push/v1/notify");
    ASSERT_EQ(u.tls, 0);
    ASSERT_STR_EQ(u.host, "127.0.0.1");
    ASSERT_EQ(u.port, 5000);
    ASSERT_STR_EQ(u.hostport, "127.0.0.1:5000");
    ASSERT_STR_EQ(u.path, "/_matrix/push/v1/notify");

    u = parse_ok("HTTPS://push.example.org/_matrix/push/v1/notify");
    ASSERT_EQ(u.tls, 1);
    ASSERT_EQ(u.port, 443);
    ASSERT_STR_EQ(u.hostport, "push.example.org"); /* default port left out */

    u = parse_ok("http://gw");
    ASSERT_EQ(u.port, 80);
    ASSERT_STR_EQ(u.path, "/");

    u = parse_ok("http://gw?x=1");
    ASSERT_STR_EQ(u.path, "/?x=1");

    u = parse_ok("http://[::1]:8008/n?a=b");
    ASSERT_STR_EQ(u.host, "::1");
    ASSERT_EQ(u.port, 8008);
    ASSERT_STR_EQ(u.hostport, "[::1]:8008");
    ASSERT_STR_EQ(u.path, "/n?a=b");

    u = parse_ok("https://[2001:db8::5]/x");
    ASSERT_STR_EQ(u.hostport, "[2001:db8::5]");
    ASSERT_EQ(push_url_parse("http://h:1/x", NULL, NULL, 0), 0); /* check only */
}

TEST(push_url_parse_refuses_the_rest)
{
    const char *bad[] = {"",
                         "ftp://h/x",
                         "h:80/x",
                         "http://",
                         "http:///x",
                         "http://:80/x",
                         "http://user:pw@h/x",
                         "http://h/x#frag",
                         "http://h/a b",
                         "http://h/a\tb",
                         "http://h:0/x",
                         "http://h:65536/x",
                         "http://h:123456/x",
                         "http://h:/x",
                         "http://h:8x/x",
                         "http://h_under/x",
                         "http://[::1/x",
                         "http://[::1]x/",
                         "http://[nope]/x",
                         "http://[]/x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[200] = "";
        push_url u;
        if (push_url_parse(bad[i], &u, err, sizeof err) != -EINVAL)
            FAIL("accepted \"%s\"", bad[i]);
        if (!err[0])
            FAIL("no reason for \"%s\"", bad[i]);
    }
}

TEST(push_backoff_doubles_caps_and_jitters_within_half)
{
    uint32_t base = 1000, cap = 60000;
    uint64_t d = base;
    for (uint32_t f = 1; f <= 40; f++) {
        uint32_t want = (uint32_t)(d > cap ? cap : d);
        uint32_t lo = push_backoff_ms(f, base, cap, 0);
        ASSERT_EQ(lo, want - want / 2);
        ASSERT_EQ(push_backoff_ms(f, base, cap, want / 2), want); /* top of the range */
        for (uint32_t r = 1; r < 2000000000u; r = r * 7 + 13) {
            uint32_t v = push_backoff_ms(f, base, cap, r);
            ASSERT_GE(v, want - want / 2);
            ASSERT_LE(v, want);
        }
        d *= 2;
    }
    /* No overflow however many failures; the cap holds. */
    ASSERT_LE(push_backoff_ms(UINT32_MAX, 3600000, 86400000, UINT32_MAX), 86400000);
    ASSERT_EQ(push_backoff_ms(1, 1, 1, 12345), 1);
    ASSERT_EQ(push_backoff_ms(0, 100, 1000, 0), 50); /* 0 failures: as 1 */
}

TEST(push_utf8_cut_never_splits_a_sequence)
{
    ASSERT_EQ(push_utf8_cut("hello", 5, 10), 5);
    ASSERT_EQ(push_utf8_cut("hello", 5, 5), 5);
    ASSERT_EQ(push_utf8_cut("hello", 5, 3), 3);
    const char *euro = "\xe2\x82\xac\xe2\x82\xac"; /* two 3-byte characters */
    ASSERT_EQ(push_utf8_cut(euro, 6, 5), 3);
    ASSERT_EQ(push_utf8_cut(euro, 6, 4), 3);
    ASSERT_EQ(push_utf8_cut(euro, 6, 3), 3);
    ASSERT_EQ(push_utf8_cut(euro, 6, 2), 0);
    const char *emoji = "a\xf0\x9f\x98\x80"; /* a + a 4-byte character */
    ASSERT_EQ(push_utf8_cut(emoji, 5, 4), 1);
    ASSERT_EQ(push_utf8_cut(emoji, 5, 1), 1);
    ASSERT_EQ(push_utf8_cut(emoji, 5, 0), 0);
}

static push_dev dev(uint64_t uid, const char *app, const char *key, int64_t ts)
{
    push_dev d;
    memset(&d, 0, sizeof d);
    d.user_id = uid;
    d.pushkey_ts = ts;
    snprintf(d.kind, sizeof d.kind, "http");
    snprintf(d.app_id, sizeof d.app_id, "%s", app);
    snprintf(d.pushkey, sizeof d.pushkey, "%s", key);
    return d;
}

TEST(push_payload_is_the_matrix_notify_shape_without_body_by_default)
{
    push_dev d[2] = {dev(2, "org.example.chat", "pk1", 1700000000),
                     dev(2, "org.example.chat", "p\"k2", 1700000001)};
    push_msg m = {.conv_id = 9007199254740991ull, .msg_id = 42, .sender_id = 7, .unread = 5};
    char *t = push_payload(&m, d, 2);
    ASSERT(t);
    ASSERT_STR_EQ(t, "{\"notification\":{\"event_id\":\"9007199254740991:42\","
                     "\"room_id\":\"9007199254740991\",\"type\":\"m.room.message\","
                     "\"sender\":\"7\",\"counts\":{\"unread\":5},\"devices\":["
                     "{\"app_id\":\"org.example.chat\",\"pushkey\":\"pk1\","
                     "\"pushkey_ts\":1700000000,\"data\":{},\"tweaks\":{}},"
                     "{\"app_id\":\"org.example.chat\",\"pushkey\":\"p\\\"k2\","
                     "\"pushkey_ts\":1700000001,\"data\":{},\"tweaks\":{}}]}}");
    free(t);
}

TEST(push_payload_content_when_a_body_is_given)
{
    push_dev d = dev(2, "a", "k", 1);
    push_msg m = {.conv_id = 1, .msg_id = 2, .sender_id = 3, .unread = 1, .body = "hi \"you\""};
    char *t = push_payload(&m, &d, 1);
    ASSERT(t);
    ASSERT(strstr(t, "\"content\":{\"msgtype\":\"m.text\",\"body\":\"hi \\\"you\\\"\"}"));
    free(t);
    /* Not UTF-8: an empty body rather than no notification. */
    m.body = "bad \xff";
    t = push_payload(&m, &d, 1);
    ASSERT(t);
    ASSERT(strstr(t, "\"body\":\"\""));
    free(t);
    /* Longer than PUSH_MAX_BODY: cut on a character boundary. */
    char *big = malloc(3 * 1000 + 1);
    for (int i = 0; i < 1000; i++)
        memcpy(big + 3 * i, "\xe2\x82\xac", 3);
    big[3000] = 0;
    m.body = big;
    t = push_payload(&m, &d, 1);
    ASSERT(t);
    json_t *j = json_loads(t, 0, NULL);
    ASSERT(j);
    const char *b = json_string_value(
        json_object_get(json_object_get(json_object_get(j, "notification"), "content"), "body"));
    ASSERT(b);
    ASSERT_EQ(strlen(b), 1023);
    ASSERT_MEM_EQ(b, big, 1023);
    json_decref(j);
    free(t);
    free(big);
}

TEST(push_parse_rejected_marks_the_named_pushkeys)
{
    push_dev d[3] = {dev(1, "a", "k1", 0), dev(1, "a", "k2", 0), dev(1, "b", "k3", 0)};
    uint8_t r[3];
    const char *ok = "{\"rejected\":[\"k2\",\"nope\",\"k3\",\"k2\"]}";
    ASSERT_EQ(push_parse_rejected(ok, strlen(ok), d, 3, r), 2);
    ASSERT_EQ(r[0], 0);
    ASSERT_EQ(r[1], 1);
    ASSERT_EQ(r[2], 1);
    ASSERT_EQ(push_parse_rejected("", 0, d, 3, r), 0);
    ASSERT_EQ(push_parse_rejected(" \r\n", 3, d, 3, r), 0);
    ASSERT_EQ(push_parse_rejected("{}", 2, d, 3, r), 0);
    ASSERT_EQ(push_parse_rejected("{\"rejected\":\"k1\"}", 17, d, 3, r), 0);
    ASSERT_EQ(push_parse_rejected("{\"rejected\":[1,null]}", 21, d, 3, r), 0);
    ASSERT_EQ(r[0] + r[1] + r[2], 0);
    ASSERT_EQ(push_parse_rejected("[\"k1\"]", 6, d, 3, r), -EINVAL);
    ASSERT_EQ(push_parse_rejected("{\"rej", 5, d, 3, r), -EINVAL);
    ASSERT_EQ(push_parse_rejected("<html>", 6, d, 3, r), -EINVAL);
}

static int check(const char *json, int kind_allowed, push_dev *d, char *err)
{
    json_t *o = json_loads(json, 0, NULL);
    if (!o)
        FAIL("bad JSON in the test: %s", json);
    int rc = push_check_device(o, kind_allowed, d, err, 200);
    json_decref(o);
    return rc;
}

TEST(push_check_device_fields)
{
    push_dev d;
    char err[200];
    memset(&d, 0, sizeof d);
    ASSERT_OK(check("{\"app_id\":\"org.x\",\"pushkey\":\"k k\",\"kind\":\"http\"}", 1, &d, err));
    ASSERT_STR_EQ(d.app_id, "org.x");
    ASSERT_STR_EQ(d.pushkey, "k k");
    ASSERT_STR_EQ(d.kind, "http");
    ASSERT_OK(check("{\"app_id\":\"a\",\"pushkey\":\"k\"}", 1, &d, err)); /* kind defaults */
    ASSERT_OK(check("{\"app_id\":\"a\",\"pushkey\":\"k\"}", 0, &d, err));
    char buf[1200];
    snprintf(buf, sizeof buf, "{\"app_id\":\"%064d\",\"pushkey\":\"%0512d\"}", 0, 0);
    ASSERT_OK(check(buf, 1, &d, err)); /* the longest */
    ASSERT_EQ(strlen(d.app_id), 64);
    ASSERT_EQ(strlen(d.pushkey), 512);
    const char *bad[] = {
        "{\"pushkey\":\"k\"}",
        "{\"app_id\":\"a\"}",
        "{\"app_id\":\"\",\"pushkey\":\"k\"}",
        "{\"app_id\":\"a\",\"pushkey\":\"\"}",
        "{\"app_id\":\"a b\",\"pushkey\":\"k\"}",
        "{\"app_id\":\"\\u00e9\",\"pushkey\":\"k\"}",
        "{\"app_id\":1,\"pushkey\":\"k\"}",
        "{\"app_id\":\"a\",\"pushkey\":[]}",
        "{\"app_id\":\"a\",\"pushkey\":\"a\\u0001\"}",
        "{\"app_id\":\"a\",\"pushkey\":\"k\",\"kind\":\"email\"}",
        "{\"app_id\":\"a\",\"pushkey\":\"k\",\"kind\":null}",
        "{\"app_id\":\"a\",\"pushkey\":\"k\",\"extra\":1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (check(bad[i], 1, &d, err) != -EINVAL || !err[0])
            FAIL("accepted %s", bad[i]);
    }
    snprintf(buf, sizeof buf, "{\"app_id\":\"%065d\",\"pushkey\":\"k\"}", 0);
    ASSERT_EQ(check(buf, 1, &d, err), -EINVAL);
    snprintf(buf, sizeof buf, "{\"app_id\":\"a\",\"pushkey\":\"%0513d\"}", 0);
    ASSERT_EQ(check(buf, 1, &d, err), -EINVAL);
    /* A removal names app_id and pushkey only. */
    ASSERT_EQ(check("{\"app_id\":\"a\",\"pushkey\":\"k\",\"kind\":\"http\"}", 0, &d, err), -EINVAL);
    json_t *arr = json_array();
    ASSERT_EQ(push_check_device(arr, 1, &d, err, sizeof err), -EINVAL);
    json_decref(arr);
}

TEST(push_registry_json_round_trips)
{
    push_dev in[3] = {dev(1, "org.a", "k1", 0), dev(9007199254740991ull, "org.a", "k2", 5),
                      dev(1, "org.b", "k1", 1700000000)}; /* same pushkey, other app */
    char *t = push_registry_json(in, 3);
    ASSERT(t);
    push_dev *out;
    size_t n;
    char err[256];
    ASSERT_OK(push_registry_parse(t, strlen(t), &out, &n, err, sizeof err));
    ASSERT_EQ(n, 3);
    for (size_t i = 0; i < 3; i++) {
        ASSERT_U64_EQ(out[i].user_id, in[i].user_id);
        ASSERT_EQ(out[i].pushkey_ts, in[i].pushkey_ts);
        ASSERT_STR_EQ(out[i].app_id, in[i].app_id);
        ASSERT_STR_EQ(out[i].pushkey, in[i].pushkey);
        ASSERT_STR_EQ(out[i].kind, "http");
    }
    free(out);
    free(t);
    t = push_registry_json(NULL, 0);
    ASSERT_STR_EQ(t, "{\"version\":1,\"devices\":[]}");
    ASSERT_OK(push_registry_parse(t, strlen(t), &out, &n, err, sizeof err));
    ASSERT_EQ(n, 0);
    free(out);
    free(t);
}

TEST(push_registry_parse_refuses_anything_not_valid)
{
#define D(u, a, k, kind, ts) \
    "{\"user_id\":" u ",\"app_id\":\"" a "\",\"pushkey\":\"" k "\",\"kind\":" kind ",\"pushkey_ts\":" ts "}"
    const char *bad[] = {
        "",
        "{\"version\":1,\"devices\":[",                     /* torn */
        "[]",
        "{\"version\":2,\"devices\":[]}",
        "{\"version\":\"1\",\"devices\":[]}",
        "{\"devices\":[]}",
        "{\"version\":1}",
        "{\"version\":1,\"devices\":{}}",
        "{\"version\":1,\"devices\":[],\"more\":0}",
        "{\"version\":1,\"version\":1,\"devices\":[]}",      /* duplicate key */
        "{\"version\":1,\"devices\":[1]}",
        "{\"version\":1,\"devices\":[" D("0", "a", "k", "\"http\"", "1") "]}",
        "{\"version\":1,\"devices\":[" D("9007199254740992", "a", "k", "\"http\"", "1") "]}",
        "{\"version\":1,\"devices\":[" D("-1", "a", "k", "\"http\"", "1") "]}",
        "{\"version\":1,\"devices\":[" D("\"1\"", "a", "k", "\"http\"", "1") "]}",
        "{\"version\":1,\"devices\":[" D("1", "a", "k", "\"email\"", "1") "]}",
        "{\"version\":1,\"devices\":[" D("1", "a", "k", "\"http\"", "-1") "]}",
        "{\"version\":1,\"devices\":[" D("1", "a", "k", "\"http\"", "1.5") "]}",
        "{\"version\":1,\"devices\":[" D("1", "a b", "k", "\"http\"", "1") "]}",
        "{\"version\":1,\"devices\":[" D("1", "a", "", "\"http\"", "1") "]}",
        "{\"version\":1,\"devices\":[{\"user_id\":1,\"app_id\":\"a\",\"pushkey\":\"k\","
        "\"pushkey_ts\":1}]}", /* kind missing */
        "{\"version\":1,\"devices\":[{\"user_id\":1,\"app_id\":\"a\",\"pushkey\":\"k\","
        "\"kind\":\"http\",\"pushkey_ts\":1,\"x\":0}]}",
        "{\"version\":1,\"devices\":[" D("1", "a", "k", "\"http\"", "1") "," D(
            "2", "a", "k", "\"http\"", "2") "]}", /* one pushkey, two users */
        "{\"version\":1,\"devices\":[]} trailing",
    };
#undef D
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        push_dev *out = (push_dev *)1;
        size_t n = 7;
        char err[256] = "";
        if (push_registry_parse(bad[i], strlen(bad[i]), &out, &n, err, sizeof err) != -EINVAL)
            FAIL("accepted #%zu: %s", i, bad[i]);
        if (!err[0] || out || n)
            FAIL("#%zu: no reason, or output set", i);
    }
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

TEST(push_write_atomic_replaces_the_file_and_leaves_no_tmp)
{
    const char *dir = test_dir();
    ASSERT_OK(push_write_atomic(dir, "push-devices.json", "one", 3, 0));
    ASSERT_STR_EQ(slurp(test_path(0, "push-devices.json")), "one");
    ASSERT_OK(push_write_atomic(dir, "push-devices.json", "second", 6, 1));
    ASSERT_STR_EQ(slurp(test_path(0, "push-devices.json")), "second");
    ASSERT(access(test_path(1, "tmp-push-devices.json"), F_OK) != 0);
    struct stat sb;
    ASSERT_OK(stat(test_path(0, "push-devices.json"), &sb));
    ASSERT_EQ(sb.st_mode & 0777, 0600);
    /* A directory that does not exist: an error, nothing written. */
    ASSERT_EQ(push_write_atomic(test_path(2, "nope"), "f", "x", 1, 0), -ENOENT);
    /* The target is a directory: rename fails, the tmp file is removed. */
    ASSERT_OK(mkdir(test_path(2, "isdir"), 0700));
    ASSERT(push_write_atomic(dir, "isdir", "x", 1, 0) < 0);
    ASSERT(access(test_path(3, "tmp-isdir"), F_OK) != 0);
}
