/* Unit tests of the pure helpers of the REST API (server/rest.c): path
 * routing, strict id parsing, Content-Type matching, id arrays and unknown
 * fields in JSON bodies. The endpoints themselves are exercised against a
 * running chatd by tests/server/rest_smoke.sh. */
#include <jansson.h>
#include <stdlib.h>

#include "rest.h"
#include "test.h"

static int parse(const char *s, uint64_t min, uint64_t *out)
{
    return rest__parse_id(s, strlen(s), min, out);
}

TEST(rest_parse_id_accepts_decimal_in_range)
{
    uint64_t v = 0;
    ASSERT_OK(parse("1", 1, &v));
    ASSERT_U64_EQ(v, 1);
    ASSERT_OK(parse("0", 0, &v));
    ASSERT_U64_EQ(v, 0);
    ASSERT_OK(parse("9007199254740991", 1, &v));
    ASSERT_U64_EQ(v, 9007199254740991ull);
    ASSERT_OK(parse("0042", 1, &v));
    ASSERT_U64_EQ(v, 42);
}

TEST(rest_parse_id_refuses_everything_else)
{
    uint64_t v = 7;
    const char *bad[] = {"",   "0",  "-1", "+1", " 1", "1 ", "1x", "0x10", "1.0", "1e3",
                         "9007199254740992", "18446744073709551616", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parse(bad[i], 1, &v) == 0)
            FAIL("accepted \"%s\"", bad[i]);
    ASSERT_U64_EQ(v, 7); /* untouched on failure */
    /* Only n bytes are read. */
    ASSERT_OK(rest__parse_id("12/messages", 2, 1, &v));
    ASSERT_U64_EQ(v, 12);
}

TEST(rest_route_paths)
{
    uint64_t id = 0;
    ASSERT_EQ(rest__route("/api/v1/conversations", &id), RT_CONVS);
    ASSERT_EQ(rest__route("/api/v1/conversations/5", &id), RT_CONV);
    ASSERT_U64_EQ(id, 5);
    ASSERT_EQ(rest__route("/api/v1/conversations/77/messages", &id), RT_MESSAGES);
    ASSERT_U64_EQ(id, 77);
    ASSERT_EQ(rest__route("/api/v1/conversations/9007199254740991/read", &id), RT_READ);
    ASSERT_U64_EQ(id, 9007199254740991ull);
    ASSERT_EQ(rest__route("/api/v1/conversations/3/members", &id), RT_MEMBERS);
    const char *bad[] = {"/api/v1/conversation",
                         "/api/v1/conversationsx",
                         "/api/v1/conversations/",
                         "/api/v1/conversations//messages",
                         "/api/v1/conversations/0",
                         "/api/v1/conversations/abc",
                         "/api/v1/conversations/9007199254740992",
                         "/api/v1/conversations/1/",
                         "/api/v1/conversations/1/messages/",
                         "/api/v1/conversations/1/messagesx",
                         "/api/v1/conversations/1/read/2",
                         "/api/v1/conversations/%31",
                         "/api/v2/conversations",
                         "/api/v1",
                         ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (rest__route(bad[i], &id) >= 0)
            FAIL("routed \"%s\"", bad[i]);
}

TEST(rest_json_content_type)
{
    ASSERT(rest__is_json_ctype("application/json"));
    ASSERT(rest__is_json_ctype("Application/JSON"));
    ASSERT(rest__is_json_ctype("application/json; charset=utf-8"));
    ASSERT(rest__is_json_ctype(" application/json ;charset=UTF-8"));
    ASSERT(!rest__is_json_ctype("application/jsonx"));
    ASSERT(!rest__is_json_ctype("application/x-www-form-urlencoded"));
    ASSERT(!rest__is_json_ctype("text/plain"));
    ASSERT(!rest__is_json_ctype(""));
}

static json_t *load(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, &e);
    if (!j)
        FAIL("test JSON %s: %s", s, e.text);
    return j;
}

TEST(rest_ids_sorts_and_dedupes)
{
    json_t *a = load("[5, 3, 9007199254740991, 3, 1, 5]");
    uint64_t *ids = NULL;
    size_t n = 0;
    char err[256];
    int rc = rest__ids(a, "members", &ids, &n, err, sizeof err);
    json_decref(a);
    if (rc)
        FAIL("refused: %s", err);
    ASSERT_EQ(n, 4);
    ASSERT_U64_EQ(ids[0], 1);
    ASSERT_U64_EQ(ids[1], 3);
    ASSERT_U64_EQ(ids[2], 5);
    ASSERT_U64_EQ(ids[3], 9007199254740991ull);
    free(ids);
    ASSERT_OK(rest__ids(NULL, "members", &ids, &n, err, sizeof err));
    ASSERT_EQ(n, 0);
    ASSERT(ids == NULL);
    a = load("[]");
    ASSERT_OK(rest__ids(a, "members", &ids, &n, err, sizeof err));
    json_decref(a);
    ASSERT_EQ(n, 0);
}

TEST(rest_ids_refuses_non_ids_and_names_the_field)
{
    const char *bad[] = {"[0]", "[-1]", "[9007199254740992]", "[1.0]", "[\"1\"]",
                         "[null]", "[true]", "[[1]]", "[{}]", "{}", "\"1\"", "1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_error_t e;
        json_t *a = json_loads(bad[i], JSON_DECODE_ANY, &e);
        ASSERT(a != NULL);
        uint64_t *ids = (uint64_t *)1;
        size_t n = 99;
        char err[256] = "";
        int rc = rest__ids(a, "add", &ids, &n, err, sizeof err);
        json_decref(a);
        if (rc == 0)
            FAIL("accepted %s", bad[i]);
        ASSERT(ids == NULL);
        if (!strstr(err, "\"add\""))
            FAIL("message for %s does not name the field: %s", bad[i], err);
    }
}

TEST(rest_check_fields_names_the_unknown_one)
{
    static const char *const allowed[] = {"body", "client_msg_id", "media_url", NULL};
    char err[256] = "";
    json_t *o = load("{\"body\":\"x\",\"media_url\":\"\"}");
    ASSERT_OK(rest__check_fields(o, allowed, err, sizeof err));
    json_decref(o);
    o = load("{}");
    ASSERT_OK(rest__check_fields(o, allowed, err, sizeof err));
    json_decref(o);
    o = load("{\"body\":\"x\",\"Body\":\"y\"}");
    ASSERT_EQ(rest__check_fields(o, allowed, err, sizeof err), -1);
    json_decref(o);
    ASSERT_STR_EQ(err, "unknown field \"Body\"");
}
