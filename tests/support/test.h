/*
 * test.h — a small unit-test harness in the manner of libuv's test/task.h.
 *
 * TEST(name) { ... } defines and registers a test. ASSERT_* macros print both
 * sides and fail the current test (the rest of it is skipped). Each test gets
 * a fresh temporary directory, test_dir(), removed afterwards when it passed.
 * The runner (test_main.c) runs every test, or those whose name contains the
 * first argument, and ends with the line "N passed, N failed".
 */
#ifndef CHATLOG_TEST_H
#define CHATLOG_TEST_H

#include <inttypes.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_fail_(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
/* The current test's private temporary directory. */
const char *test_dir(void);
/* A path inside test_dir(); the returned buffer is reused by the next call
 * from the same slot (0..3). */
const char *test_path(int slot, const char *name);
/* A deterministic seed for the current test: TEST_SEED env var or a fixed
 * value, printed when a test fails. */
uint64_t test_seed(void);

#define TEST(name)                                                            \
    static void test_##name(void);                                            \
    __attribute__((constructor)) static void test_reg_##name(void)            \
    {                                                                         \
        test_register(#name, __FILE__, test_##name);                          \
    }                                                                         \
    static void test_##name(void)

#define FAIL(...) test_fail_(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT(cond)                                                          \
    do {                                                                      \
        if (!(cond))                                                          \
            FAIL("assertion failed: %s", #cond);                              \
    } while (0)

#define ASSERT_INT_OP(a, op, b)                                               \
    do {                                                                      \
        long long a_ = (long long)(a), b_ = (long long)(b);                   \
        if (!(a_ op b_))                                                      \
            FAIL("%s %s %s: %lld vs %lld", #a, #op, #b, a_, b_);              \
    } while (0)
#define ASSERT_EQ(a, b) ASSERT_INT_OP(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_INT_OP(a, !=, b)
#define ASSERT_LT(a, b) ASSERT_INT_OP(a, <, b)
#define ASSERT_LE(a, b) ASSERT_INT_OP(a, <=, b)
#define ASSERT_GT(a, b) ASSERT_INT_OP(a, >, b)
#define ASSERT_GE(a, b) ASSERT_INT_OP(a, >=, b)
#define ASSERT_U64_EQ(a, b)                                                   \
    do {                                                                      \
        uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                      \
        if (a_ != b_)                                                         \
            FAIL("%s == %s: %" PRIu64 " vs %" PRIu64, #a, #b, a_, b_);        \
    } while (0)
/* 0-or-negative-error calls: prints cl_strerror of the code. */
#define ASSERT_OK(expr)                                                       \
    do {                                                                      \
        int rc_ = (expr);                                                     \
        if (rc_ != 0)                                                         \
            FAIL("%s returned %d", #expr, rc_);                               \
    } while (0)
#define ASSERT_MEM_EQ(a, b, n)                                                \
    do {                                                                      \
        if (memcmp((a), (b), (n)) != 0)                                       \
            FAIL("%s and %s differ in their first %zu bytes", #a, #b,        \
                 (size_t)(n));                                                \
    } while (0)
#define ASSERT_STR_EQ(a, b)                                                   \
    do {                                                                      \
        const char *a_ = (a), *b_ = (b);                                      \
        if (strcmp(a_, b_) != 0)                                              \
            FAIL("%s == %s: \"%s\" vs \"%s\"", #a, #b, a_, b_);               \
    } while (0)

#endif
