/* Minimal C test harness: each TEST registers itself; CHECK records a failure and goes on,
 * REQUIRE stops the current test. The runner prints "N passed, M failed" like every suite. */
#ifndef TALLY_HARNESS_H
#define TALLY_HARNESS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*th_fn)(void);
struct th_case { const char *name; th_fn fn; struct th_case *next; };
extern struct th_case *th_cases;
extern int th_failed_now;

#define TEST(name)                                                              \
    static void name(void);                                                     \
    __attribute__((constructor)) static void th_reg_##name(void)                \
    {                                                                           \
        static struct th_case c = {#name, name, NULL};                          \
        c.next = th_cases; th_cases = &c;                                       \
    }                                                                           \
    static void name(void)

#define CHECK(cond) do { if (!(cond)) { th_failed_now = 1;                      \
    fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define REQUIRE(cond) do { if (!(cond)) { th_failed_now = 1;                    \
    fprintf(stderr, "  %s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond); return; } } while (0)
#define CHECK_EQ_INT(a, b) do { long long th_a = (long long)(a), th_b = (long long)(b);    \
    if (th_a != th_b) { th_failed_now = 1; fprintf(stderr, "  %s:%d: %s == %lld, expected %s == %lld\n", \
    __FILE__, __LINE__, #a, th_a, #b, th_b); } } while (0)
#define CHECK_STR(a, b) do { const char *th_a = (a), *th_b = (b);                \
    if (!th_a || !th_b || strcmp(th_a, th_b) != 0) { th_failed_now = 1;            \
    fprintf(stderr, "  %s:%d: %s\n    got:      %s\n    expected: %s\n", __FILE__, __LINE__, \
    #a, th_a ? th_a : "(null)", th_b ? th_b : "(null)"); } } while (0)
#define CHECK_CONTAINS(hay, needle) do { const char *th_h = (hay), *th_n = (needle); \
    if (!th_h || !strstr(th_h, th_n)) { th_failed_now = 1;                         \
    fprintf(stderr, "  %s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, \
    th_h ? th_h : "(null)", th_n); } } while (0)

#endif
