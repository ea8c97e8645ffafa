/* Tests for the JSON codec (src/json.c). */
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>

#include "harness.h"
#include "json.h"

/* ---------------------------------------------------------------- helpers */

/* Parses in (explicit length, may hold NULs) and also checks that tj_validate agrees with tj_parse,
 * down to the error message. Returns what tj_parse returns. */
static int parse_n(tj_arena *a, const char *in, size_t len, tj_value **out, tj_error *err)
{
    tj_error verr;
    int rp = tj_parse(a, in, len, out, err);
    int rv = tj_validate(in, len, &verr);
    CHECK_EQ_INT(rp, rv);
    if (rp && rv) {
        CHECK_STR(err->msg, verr.msg);
        CHECK_EQ_INT(err->offset, verr.offset);
    }
    return rp;
}

static int parse(tj_arena *a, const char *in, tj_value **out, tj_error *err)
{
    return parse_n(a, in, strlen(in), out, err);
}

/* parse + write; the returned string is valid until the next call. */
static const char *rewrite_n(const char *in, size_t len)
{
    static tbuf b = TBUF_INIT;
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    tbuf_reset(&b);
    if (parse_n(a, in, len, &v, &err)) {
        tbuf_printf(&b, "ERROR: %s", err.msg);
    } else if (tj_write(&b, v)) {
        tbuf_reset(&b);
        tbuf_puts(&b, "WRITE FAILED");
    }
    tj_arena_free(a);
    return b.data;
}

static const char *rewrite(const char *in) { return rewrite_n(in, strlen(in)); }

#define ROUND_TRIP(s) CHECK_STR(rewrite(s), s)

/* Expects a parse error whose message contains `msg`. */
#define REJECT(in, msg) CHECK_CONTAINS(rewrite(in), msg)
#define REJECT_N(in, msg) CHECK_CONTAINS(rewrite_n(in, sizeof(in) - 1), msg)

static const char *fmt_double(double d)
{
    static tbuf b = TBUF_INIT;
    tbuf_reset(&b);
    tj_write_double(&b, d);
    return b.data;
}

static uint64_t bits_of(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double from_bits(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rng(void) /* xorshift64*: fixed seed, reproducible */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

/* Significant digits in a number as text (leading zeros and trailing zeros dropped). */
static int sig_digits(const char *s)
{
    char d[64];
    int n = 0;
    for (; *s && *s != 'e' && *s != 'E'; s++)
        if (*s >= '0' && *s <= '9' && (n || *s != '0')) d[n++] = *s;
    while (n > 0 && d[n - 1] == '0') n--;
    return n ? n : 1;
}

/* Independent oracle: the fewest significant digits with which some decimal reads back as d.
 * Tries printf's nearest p-digit decimal and its two neighbours for every p. */
static int min_digits(double d)
{
    for (int p = 1; p <= 17; p++) {
        char buf[64], dig[32], cand[80];
        snprintf(buf, sizeof buf, "%.*e", p - 1, fabs(d));
        int k = 0;
        const char *e = buf;
        for (; *e != 'e'; e++) if (*e >= '0' && *e <= '9') dig[k++] = *e;
        int ex = atoi(e + 1) - (p - 1);
        unsigned long long w = strtoull((dig[k] = 0, dig), NULL, 10);
        for (int delta = -1; delta <= 1; delta++) {
            snprintf(cand, sizeof cand, "%llue%d", w + (unsigned long long)delta, ex);
            if (strtod(cand, NULL) == fabs(d)) return p;
        }
    }
    return 99;
}

/* ---------------------------------------------------------------- round trips */

TEST(round_trip_sample_object)
{
    ROUND_TRIP("{\"n\":9007199254740993,\"f\":0.1,\"a\":[],\"z\":null}");
    ROUND_TRIP("{\"b\":true,\"c\":false,\"o\":{},\"s\":\"x\",\"nested\":[[],{},[null,1,-2.5]]}");
    ROUND_TRIP("\"\"");
    ROUND_TRIP("[]");
    ROUND_TRIP("{}");
}

TEST(round_trip_numbers)
{
    static const char *same[] = {
        "9007199254740993", "-9223372036854775808", "9223372036854775807", "0", "-1", "0.1",
        "1e-7", "5e-324", "2.2250738585072014e-308", "1.7976931348623157e308", "-0.0", "1.0",
        "100.0", "1e21", "123.456", "0.000001", "123456789012345680000.0", "1e300", "-1e-300",
        "5e-323", "1e-320", "4.94e-322", "0.30000000000000004", "1.5", "-2.5e-7", "[1,2.0,-3e30]",
    };
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) ROUND_TRIP(same[i]);
    CHECK_STR(rewrite("4.9406564584124654e-323"), "5e-323");
    CHECK_STR(rewrite("-0"), "-0.0");
    CHECK_STR(rewrite("1E+2"), "100.0");
    CHECK_STR(rewrite("1e+300"), "1e300");
    CHECK_STR(rewrite("0.1e1"), "1.0");
    CHECK_STR(rewrite("1e-400"), "0.0");
    CHECK_STR(rewrite("2e-324"), "0.0");
    CHECK_STR(rewrite("3e-324"), "5e-324");
    CHECK_STR(rewrite("1.00000000000000000000000000001"), "1.0");
    CHECK_STR(rewrite("0.000000000000000000000000000000000000001"), "1e-39");
}

/* Issue 14 #19: integers beyond 64 bits were rewritten as doubles (100000000000000000000.0). No C
 * type holds them exactly, so the parser keeps their text and the writer puts it back as given. */
TEST(integers_beyond_64_bits_keep_their_text)
{
    static const char *same[] = {
        "99999999999999999999", "-9223372036854775809", "9223372036854775808", "18446744073709551616",
        "123456789012345678901234567890", "-100000000000000000000000000000000000000000",
        "{\"big\":99999999999999999999,\"small\":1,\"list\":[18446744073709551616,-9223372036854775809]}",
    };
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) ROUND_TRIP(same[i]);
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    REQUIRE(parse(a, "[99999999999999999999, 1e20, 100000000000000000000.0]", &v, &err) == 0);
    CHECK(v->u.arr.items[0]->type == TJ_RAW);
    CHECK_EQ_INT(v->u.arr.items[0]->u.str.len, 20);
    CHECK_EQ_INT(memcmp(v->u.arr.items[0]->u.str.s, "99999999999999999999", 20), 0);
    /* only integer literals: a literal with a fraction or an exponent is a double, as before */
    CHECK(v->u.arr.items[1]->type == TJ_DOUBLE && v->u.arr.items[2]->type == TJ_DOUBLE);
    CHECK(tj_literal_double("99999999999999999999", 20) == 1e20);
    tj_arena_free(a);
}

TEST(number_types)
{
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    REQUIRE(parse(a, "[-9223372036854775808,9223372036854775807,9223372036854775808,-0,0,1.0,1e2]",
                  &v, &err) == 0);
    REQUIRE(v->type == TJ_ARRAY && v->u.arr.n == 7);
    tj_value **it = v->u.arr.items;
    CHECK(it[0]->type == TJ_INT && it[0]->u.i == INT64_MIN);
    CHECK(it[1]->type == TJ_INT && it[1]->u.i == INT64_MAX);
    CHECK(it[2]->type == TJ_RAW && it[2]->u.str.len == 19);
    CHECK(it[3]->type == TJ_DOUBLE && it[3]->u.d == 0 && signbit(it[3]->u.d));
    CHECK(it[4]->type == TJ_INT && it[4]->u.i == 0);
    CHECK(it[5]->type == TJ_DOUBLE && it[5]->u.d == 1.0);
    CHECK(it[6]->type == TJ_DOUBLE && it[6]->u.d == 100.0);
    tj_arena_free(a);
}

TEST(double_formatting)
{
    CHECK_STR(fmt_double(0.1), "0.1");
    CHECK_STR(fmt_double(1e-7), "1e-7");
    CHECK_STR(fmt_double(1e-6), "0.000001");
    CHECK_STR(fmt_double(1.5e-6), "0.0000015");
    CHECK_STR(fmt_double(5e-324), "5e-324");
    CHECK_STR(fmt_double(1.7976931348623157e308), "1.7976931348623157e308");
    CHECK_STR(fmt_double(2.2250738585072014e-308), "2.2250738585072014e-308");
    CHECK_STR(fmt_double(1e300), "1e300");
    CHECK_STR(fmt_double(1e21), "1e21");
    CHECK_STR(fmt_double(1e20), "100000000000000000000.0");
    CHECK_STR(fmt_double(123456789012345680000.0), "123456789012345680000.0");
    CHECK_STR(fmt_double(1.0), "1.0");
    CHECK_STR(fmt_double(-0.0), "-0.0");
    CHECK_STR(fmt_double(0.0), "0.0");
    CHECK_STR(fmt_double(100.0), "100.0");
    CHECK_STR(fmt_double(9007199254740993.0), "9007199254740992.0");
    CHECK_STR(fmt_double(-123.456), "-123.456");
    CHECK_STR(fmt_double(1.0 / 3), "0.3333333333333333");
    CHECK_STR(fmt_double(2.0 / 3), "0.6666666666666666");
    CHECK_STR(fmt_double(0.1 + 0.2), "0.30000000000000004");
    CHECK_STR(fmt_double(4.35), "4.35");
    CHECK_STR(fmt_double(9.5367431640625e-7), "9.5367431640625e-7");
    /* exact ties at the digit being cut: printf must decide the rounding, not our 25-digit copy */
    CHECK_STR(fmt_double(2251799813685248.5), "2251799813685248.5");
    CHECK_STR(fmt_double(4503599627370495.5), "4503599627370495.5");
    CHECK_STR(fmt_double(1125899906842624.25), "1125899906842624.2");
    CHECK_STR(fmt_double(1125899906842624.75), "1125899906842624.8");
    CHECK_STR(fmt_double(562949953421312.75), "562949953421312.8");
    CHECK_STR(fmt_double(562949953421312.25), "562949953421312.2");
    CHECK_STR(fmt_double(NAN), "null");
    CHECK_STR(fmt_double(INFINITY), "null");
}

static void check_double(double d, int exact_min, int *failures)
{
    const char *s = fmt_double(d);
    char g17[40];
    snprintf(g17, sizeof g17, "%.17g", d);
    int ok = bits_of(strtod(s, NULL)) == bits_of(d) && sig_digits(s) <= sig_digits(g17);
    if (ok && exact_min) ok = sig_digits(s) == min_digits(d);
    if (!ok && (*failures)++ < 10)
        fprintf(stderr, "  double %016llx: wrote %s, %%.17g %s, min digits %d\n",
                (unsigned long long)bits_of(d), s, g17, min_digits(d));
}

TEST(random_doubles_round_trip_shortest)
{
    int failures = 0;
    for (int i = 0; i < 300000; i++) {
        double d = from_bits(rng());
        if (!isfinite(d)) continue;
        check_double(d, i % 16 == 0, &failures); /* exact minimality on a subset: the oracle is slow */
    }
    /* short decimals, the common case in real events */
    for (int i = 0; i < 50000; i++) {
        char buf[40];
        snprintf(buf, sizeof buf, "%llu.%03llue%d", (unsigned long long)(rng() % 100000),
                 (unsigned long long)(rng() % 1000), (int)(rng() % 40) - 20);
        check_double(strtod(buf, NULL), 1, &failures);
    }
    CHECK_EQ_INT(failures, 0);
}

TEST(powers_of_two_and_subnormals_are_shortest)
{
    /* Just above a power of two the round-trip interval is lopsided: the nearest candidate can fail
     * while its other neighbour works. */
    int failures = 0;
    for (int e = -1074; e <= 1023; e++) {
        double d = ldexp(1.0, e);
        check_double(d, 1, &failures);
        check_double(nextafter(d, 0), 1, &failures);
        check_double(nextafter(d, INFINITY), 1, &failures);
    }
    for (int i = 0; i < 20000; i++) check_double(from_bits(rng() % 0x0010000000000000ULL), 1, &failures);
    check_double(DBL_MAX, 1, &failures);
    check_double(DBL_MIN, 1, &failures);
    CHECK_EQ_INT(failures, 0);
}

TEST(decimal_comma_locale_does_not_leak)
{
    static const char *names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "de_DE", NULL};
    const char *got = NULL;
    for (int i = 0; names[i] && !got; i++) got = setlocale(LC_NUMERIC, names[i]);
    if (!got) {
        fprintf(stderr, "  (no decimal-comma locale installed; only checking the C locale)\n");
    }
    ROUND_TRIP("[0.1,1.5,1e-7,123.456,2.2250738585072014e-308,1.7976931348623157e308]");
    CHECK_STR(fmt_double(0.30000000000000004), "0.30000000000000004");
    CHECK_STR(rewrite("1.7976931348623159e308"), "ERROR: number out of range at offset 0");
    setlocale(LC_NUMERIC, "C");
}

/* ---------------------------------------------------------------- strings */

TEST(string_escapes)
{
    CHECK_STR(rewrite("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\""), "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\"");
    CHECK_STR(rewrite("\"\\u0041\\u00e9\\u20AC\""), "\"A\xC3\xA9\xE2\x82\xAC\"");
    CHECK_STR(rewrite("\"\\ud83d\\ude00\""), "\"\xF0\x9F\x98\x80\"");
    CHECK_STR(rewrite("\"\\uDBFF\\uDFFF\""), "\"\xF4\x8F\xBF\xBF\"");
    CHECK_STR(rewrite("\"\\u0001\\u001f\\u007f\""), "\"\\u0001\\u001f\x7F\"");
    CHECK_STR(rewrite("\"\\u2028\\u2029\""), "\"\\u2028\\u2029\"");
    CHECK_STR(rewrite("\"\xE2\x80\xA8\""), "\"\\u2028\"");
    CHECK_STR(rewrite("\"\xE2\x80\xA7\xE2\x82\xAC\""), "\"\xE2\x80\xA7\xE2\x82\xAC\"");
    ROUND_TRIP("\"plain text that is long enough to take the eight-byte path, twice over\"");
    ROUND_TRIP("{\"k\\\"ey\":\"v\\\\al\\n\"}");

    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    REQUIRE(parse(a, "\"a\\u0000b\"", &v, &err) == 0);
    CHECK(v->type == TJ_STRING && v->u.str.len == 3 && memcmp(v->u.str.s, "a\0b", 3) == 0);
    REQUIRE(parse(a, "\"\\ud83d\\ude00\"", &v, &err) == 0);
    CHECK(v->u.str.len == 4 && memcmp(v->u.str.s, "\xF0\x9F\x98\x80", 4) == 0);
    tj_arena_free(a);
    CHECK_STR(rewrite("\"a\\u0000b\""), "\"a\\u0000b\"");
}

TEST(write_string_escapes_minimally)
{
    tbuf b = TBUF_INIT;
    tj_write_string(&b, "q\"b\\\x01\x1f\x7f/\xE2\x80\xA9 \xC3\xA9", 14);
    CHECK_STR(b.data, "\"q\\\"b\\\\\\u0001\\u001f\x7f/\\u2029 \xC3\xA9\"");
    tbuf_reset(&b);
    tj_write_string(&b, "\xE2\x80", 2); /* truncated lead byte at the end: no out-of-bounds read */
    CHECK_STR(b.data, "\"\xE2\x80\"");
    tbuf_reset(&b);
    tj_write_string(&b, "", 0);
    CHECK_STR(b.data, "\"\"");
    tbuf_free(&b);
}

TEST(surrogate_errors)
{
    REJECT("\"\\ud83d\"", "lone surrogate in \\u escape at offset 1");
    REJECT("\"\\ude00\"", "lone surrogate in \\u escape at offset 1");
    REJECT("\"ab\\ud83d\\u0041\"", "lone surrogate in \\u escape at offset 3");
    REJECT("\"\\ud83dx\"", "lone surrogate");
    REJECT("\"\\ud83d\\ud83d\"", "lone surrogate");
    REJECT("\"\\ud83d\\", "lone surrogate");
    REJECT("\"\\u12\"", "invalid \\u escape at offset 1");
    REJECT("\"\\u12g4\"", "invalid \\u escape at offset 1");
    REJECT("\"\\x\"", "invalid escape at offset 1");
    REJECT("\"\\", "unterminated escape at offset 1");
}

TEST(invalid_utf8)
{
    REJECT_N("\"\xC0\x80\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xC1\xBF\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"ok\xED\xA0\x80\"", "invalid UTF-8 at offset 3");
    REJECT_N("\"\xED\xBF\xBF\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xF4\x90\x80\x80\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xE0\x9F\xBF\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xF0\x8F\xBF\xBF\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xF5\x80\x80\x80\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xFF\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\x80\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xE2\x82\"", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xE2\x82", "invalid UTF-8 at offset 1");
    REJECT_N("\"\xF0\x9F\x98", "invalid UTF-8 at offset 1");
    REJECT_N("{\"a\":\"xx\xC0\x80\"}", "invalid UTF-8 at offset 8");
    REJECT_N("{\"k\xC0\x80\":1}", "invalid UTF-8 at offset 3");
    REJECT_N("\"0123456789abcdef\xC0\x80\"", "invalid UTF-8 at offset 17");
    /* the edges of the valid ranges */
    CHECK_STR(rewrite("\"\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xEF\xBF\xBF\""),
              "\"\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xEF\xBF\xBF\"");
    CHECK_STR(rewrite("\"\xF0\x90\x80\x80\xF4\x8F\xBF\xBF\""), "\"\xF0\x90\x80\x80\xF4\x8F\xBF\xBF\"");

    size_t bad = 99;
    CHECK(tj_utf8_valid("abc\xC3\xA9", 5, &bad) == 1);
    CHECK(tj_utf8_valid("abcdefgh\xC3", 9, &bad) == 0 && bad == 8);
    CHECK(tj_utf8_valid("\xED\xA0\x80", 3, &bad) == 0 && bad == 0);
    CHECK(tj_utf8_valid("a\0b", 3, NULL) == 1);
    CHECK(tj_utf8_valid("", 0, NULL) == 1);
}

TEST(control_characters)
{
    REJECT_N("\"a\x01\"", "control character in string at offset 2");
    REJECT_N("\"a\tb\"", "control character in string at offset 2");
    REJECT_N("\"a\nb\"", "control character in string at offset 2");
    REJECT_N("[\"\x00\"]", "control character in string at offset 2");
    REJECT_N("\"a\x1f\"", "control character in string at offset 2");
    CHECK_STR(rewrite("\"a\x7f\""), "\"a\x7f\"");
}

/* ---------------------------------------------------------------- structure */

static char *nested(int depth, int objects)
{
    tbuf b = TBUF_INIT;
    for (int i = 0; i < depth; i++) tbuf_puts(&b, objects ? "{\"a\":" : "[");
    tbuf_puts(&b, "1");
    for (int i = 0; i < depth; i++) tbuf_puts(&b, objects ? "}" : "]");
    return tbuf_steal(&b);
}

TEST(depth_limit)
{
    for (int objects = 0; objects <= 1; objects++) {
        char *ok = nested(64, objects), *bad = nested(65, objects);
        CHECK_STR(rewrite(ok), ok);
        CHECK_CONTAINS(rewrite(bad), objects ? "nesting deeper than 64 at offset 320"
                                             : "nesting deeper than 64 at offset 64");
        free(ok);
        free(bad);
    }
    /* empty containers count as a level too */
    tbuf b = TBUF_INIT;
    for (int i = 0; i < 64; i++) tbuf_puts(&b, "[");
    for (int i = 0; i < 64; i++) tbuf_puts(&b, "]");
    CHECK_STR(rewrite(b.data), b.data);
    tbuf_reset(&b);
    for (int i = 0; i < 65; i++) tbuf_puts(&b, "[");
    for (int i = 0; i < 65; i++) tbuf_puts(&b, "]");
    CHECK_STR(rewrite(b.data), "ERROR: nesting deeper than 64 at offset 64");
    /* depth goes back down: many siblings at depth 64 are fine */
    tbuf_reset(&b);
    for (int i = 0; i < 63; i++) tbuf_puts(&b, "[");
    for (int i = 0; i < 100; i++) tbuf_puts(&b, i ? ",{}" : "{}");
    for (int i = 0; i < 63; i++) tbuf_puts(&b, "]");
    CHECK_STR(rewrite(b.data), b.data);
    tbuf_free(&b);
    /* mixed: 64 levels alternating */
    tbuf_reset(&b);
    for (int i = 0; i < 32; i++) tbuf_puts(&b, "[{\"k\":");
    tbuf_puts(&b, "null");
    for (int i = 0; i < 32; i++) tbuf_puts(&b, "}]");
    CHECK_STR(rewrite(b.data), b.data);
    tbuf_free(&b);
}

TEST(syntax_errors)
{
    REJECT("", "unexpected end of input at offset 0");
    REJECT("   ", "unexpected end of input at offset 3");
    REJECT("1 x", "trailing characters at offset 2");
    REJECT("{} {}", "trailing characters at offset 3");
    REJECT("[1]]", "trailing characters at offset 3");
    REJECT("nullx", "trailing characters at offset 4");
    REJECT("\"abc", "unterminated string at offset 0");
    REJECT("[\"abc\\\"]", "unterminated string at offset 1");
    REJECT("[1,x]", "unexpected character 'x' at offset 3");
    REJECT("[1 2]", "unexpected character '2' at offset 3");
    REJECT("[1,]", "unexpected character ']' at offset 3");
    REJECT("[,1]", "unexpected character ',' at offset 1");
    REJECT("{\"a\" 1}", "unexpected character '1' at offset 5");
    REJECT("{\"a\":1,}", "unexpected character '}' at offset 7");
    REJECT("{1:2}", "unexpected character '1' at offset 1");
    REJECT("{\"a\":1]", "unexpected character ']' at offset 6");
    REJECT("[1}", "unexpected character '}' at offset 2");
    REJECT("[1,2", "unexpected end of input at offset 4");
    REJECT("{\"a\":", "unexpected end of input at offset 5");
    REJECT("{\"a\"", "unexpected end of input at offset 4");
    REJECT("{", "unexpected end of input at offset 1");
    REJECT("tru", "invalid literal at offset 0");
    REJECT("[truE]", "invalid literal at offset 1");
    REJECT("nul", "invalid literal at offset 0");
    REJECT("\xC3\xA9", "unexpected byte 0xC3 at offset 0");
    REJECT("'a'", "unexpected character ''' at offset 0");
    REJECT("[1]\x01", "trailing characters at offset 3");
    CHECK_STR(rewrite(" \t\n\r[ 1 , { \"a\" : 2 } ]\r\n "), "[1,{\"a\":2}]");
    /* JSON text with an embedded NUL: the length decides, not the NUL */
    REJECT_N("1\0", "trailing characters at offset 1");
}

TEST(number_errors)
{
    REJECT("01", "trailing characters at offset 1");
    REJECT("[01]", "unexpected character '1' at offset 2");
    REJECT("-01", "trailing characters at offset 2");
    REJECT("1.", "invalid number at offset 0");
    REJECT("[1.e5]", "invalid number at offset 1");
    REJECT(".5", "unexpected character '.' at offset 0");
    REJECT("-", "invalid number at offset 0");
    REJECT("-a", "invalid number at offset 0");
    REJECT("+1", "unexpected character '+' at offset 0");
    REJECT("1e", "invalid number at offset 0");
    REJECT("1e+", "invalid number at offset 0");
    REJECT("0x10", "trailing characters at offset 1");
    REJECT("NaN", "unexpected character 'N' at offset 0");
    REJECT("Infinity", "unexpected character 'I' at offset 0");
    REJECT("-Infinity", "invalid number at offset 0");
    REJECT("[1e309]", "number out of range at offset 1");
    REJECT("[1,-1e309]", "number out of range at offset 3");
    REJECT("1e99999999999999999999", "number out of range at offset 0");
    REJECT("0.001e312", "number out of range at offset 0");
    REJECT("1.7976931348623159e308", "number out of range at offset 0");
    CHECK_STR(rewrite("1.7976931348623158e308"), "1.7976931348623157e308");
    CHECK_STR(rewrite("1e-99999999999999999999"), "0.0");
    CHECK_STR(rewrite("0.001e311"), "1e308");

    /* integers of 308/309/310 digits (no exponent): 10^308 fits, 10^309 does not */
    char big[400];
    memset(big, '0', sizeof big);
    big[0] = '1';
    big[309] = '\0';
    CHECK_STR(rewrite(big), big); /* an integer literal: kept as written */
    big[309] = '0';
    big[310] = '\0';
    REJECT(big, "number out of range at offset 0");
    /* 2^1024 - 2^970 is exactly halfway between DBL_MAX and 2^1024: ties-to-even gives infinity */
    static const char half[] =
        "17976931348623158079372897140530341507993413271003782693617377898044496829276475094664901797"
        "75872070963302864166928879109465555478519404026306574886715058206819089020007083836762738548"
        "45817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711"
        "559699508093042880177904174497792";
    REJECT(half, "number out of range at offset 0");
    char below[sizeof half];
    memcpy(below, half, sizeof half);
    below[sizeof half - 2] = '1'; /* ...791: just under the midpoint */
    CHECK_STR(rewrite(below), below);
    char above[sizeof half + 3];
    memcpy(above, half, sizeof half);
    memcpy(above + sizeof half - 1, ".5", 3); /* fraction must not be ignored */
    REJECT(above, "number out of range at offset 0");
    memcpy(above, below, sizeof below);
    memcpy(above + sizeof below - 1, ".9", 3);
    CHECK_STR(rewrite(above), "1.7976931348623157e308");
}

/* ---------------------------------------------------------------- tree API */

TEST(object_set_replace_remove)
{
    tj_arena *a = tj_arena_new();
    tj_value *o = tj_new(a, TJ_OBJECT);
    REQUIRE(o);
    CHECK(tj_object_set(a, o, "b", 1, tj_new_int(a, 1)) == 0);
    CHECK(tj_object_set(a, o, "a", 1, tj_new_string(a, "x\0y", 3)) == 0);
    CHECK(tj_object_set(a, o, "c", 1, tj_new_double(a, 2.5)) == 0);
    CHECK(tj_object_set(a, o, "b", 1, tj_new(a, TJ_TRUE)) == 0); /* replaces in place */
    tbuf b = TBUF_INIT;
    CHECK(tj_write(&b, o) == 0);
    CHECK_STR(b.data, "{\"b\":true,\"a\":\"x\\u0000y\",\"c\":2.5}");
    CHECK(tj_object_get(o, "c")->u.d == 2.5);
    CHECK(tj_object_get(o, "zz") == NULL);
    CHECK(tj_object_get(tj_new_int(a, 1), "c") == NULL);
    CHECK_EQ_INT(tj_object_remove(o, "a"), 1);
    CHECK_EQ_INT(tj_object_remove(o, "a"), 0);
    for (int i = 0; i < 100; i++) { /* growth beyond the initial capacity */
        char k[8];
        int n = snprintf(k, sizeof k, "k%d", i);
        CHECK(tj_object_set(a, o, k, (size_t)n, tj_new_int(a, i)) == 0);
    }
    CHECK_EQ_INT(o->u.obj.n, 102);
    CHECK_EQ_INT(tj_object_get(o, "k77")->u.i, 77);
    tbuf_reset(&b);
    CHECK(tj_write(&b, o) == 0);
    CHECK(strncmp(b.data, "{\"b\":true,\"c\":2.5,\"k0\":0,\"k1\":1,", 31) == 0);

    /* duplicates from the parser: last wins for get/set, remove drops all */
    tj_value *d;
    tj_error err;
    REQUIRE(parse(a, "{\"x\":1,\"y\":2,\"x\":3}", &d, &err) == 0);
    CHECK_EQ_INT(tj_object_get(d, "x")->u.i, 3);
    CHECK(tj_object_set(a, d, "x", 1, tj_new_int(a, 4)) == 0);
    tbuf_reset(&b);
    tj_write(&b, d);
    CHECK_STR(b.data, "{\"x\":1,\"y\":2,\"x\":4}");
    CHECK_EQ_INT(tj_object_remove(d, "x"), 1);
    tbuf_reset(&b);
    tj_write(&b, d);
    CHECK_STR(b.data, "{\"y\":2}");
    tbuf_free(&b);
    tj_arena_free(a);
}

TEST(array_push_and_build)
{
    tj_arena *a = tj_arena_new();
    tj_value *arr = tj_new(a, TJ_ARRAY);
    for (int i = 0; i < 1000; i++) CHECK(tj_array_push(a, arr, tj_new_int(a, i)) == 0);
    CHECK_EQ_INT(arr->u.arr.n, 1000);
    CHECK_EQ_INT(arr->u.arr.items[999]->u.i, 999);
    tj_value *p;
    tj_error err;
    REQUIRE(parse(a, "[1,2]", &p, &err) == 0);
    CHECK(tj_array_push(a, p, tj_new(a, TJ_NULL)) == 0); /* parsed arrays can grow too */
    tbuf b = TBUF_INIT;
    tj_write(&b, p);
    CHECK_STR(b.data, "[1,2,null]");
    tbuf_reset(&b);
    tj_value *s = tj_new(a, TJ_STRING); /* default string is empty, not NULL */
    tj_write(&b, s);
    CHECK_STR(b.data, "\"\"");
    tbuf_reset(&b);
    tj_value *bad = tj_new(a, TJ_ARRAY);
    tj_array_push(a, bad, tj_new_double(a, NAN));
    CHECK(tj_write(&b, bad) == TALLY_EINVAL);
    tbuf_reset(&b);
    CHECK(tj_write(&b, tj_new_double(a, -INFINITY)) == TALLY_EINVAL);
    tbuf_free(&b);
    tj_arena_free(a);
}

TEST(raw_written_verbatim_and_expand)
{
    tj_arena *a = tj_arena_new();
    tj_value *o = tj_new(a, TJ_OBJECT);
    tj_value *raw = tj_new_raw(a, "{ \"k\" : [1, 2.50] }", 19);
    tj_object_set(a, o, "props", 5, raw);
    tbuf b = TBUF_INIT;
    CHECK(tj_write(&b, o) == 0);
    CHECK_STR(b.data, "{\"props\":{ \"k\" : [1, 2.50] }}");
    tj_error err;
    CHECK(tj_expand(a, raw, &err) == 0);
    CHECK(raw->type == TJ_OBJECT);
    CHECK_EQ_INT(tj_object_get(raw, "k")->u.arr.n, 2);
    tbuf_reset(&b);
    tj_write(&b, o);
    CHECK_STR(b.data, "{\"props\":{\"k\":[1,2.5]}}");
    CHECK(tj_expand(a, raw, &err) == 0); /* not raw any more: no-op */
    tj_value *bad = tj_new_raw(a, "[1,", 3);
    CHECK(tj_expand(a, bad, &err) == TALLY_EINVAL);
    CHECK_STR(err.msg, "unexpected end of input at offset 3");
    CHECK(bad->type == TJ_RAW);
    tbuf_free(&b);
    tj_arena_free(a);
}

TEST(arena_alignment_and_reset)
{
    tj_arena *a = tj_arena_new();
    for (int round = 0; round < 3; round++) {
        for (size_t n = 0; n < 3000; n++) {
            char *s = tj_strdup(a, "abc", n % 4);
            CHECK(s && s[n % 4] == '\0');
            void *p = tj_alloc(a, n % 97 + 1);
            CHECK(p && ((uintptr_t)p & 15) == 0);
            memset(p, 0xAB, n % 97 + 1);
        }
        void *big = tj_alloc(a, 1 << 20); /* a chunk of its own */
        CHECK(big && ((uintptr_t)big & 15) == 0);
        memset(big, 1, 1 << 20);
        void *after = tj_alloc(a, 16);
        CHECK(after && ((uintptr_t)after & 15) == 0);
        tj_arena_reset(a);
    }
    tj_arena_free(a);
    tj_arena_free(NULL);
}

/* ---------------------------------------------------------------- agreement, mini-fuzz */

static const char *corpus[] = {
    "{\"n\":9007199254740993,\"f\":0.1,\"a\":[],\"z\":null}",
    ("{\"event\":\"Signed Up\",\"properties\":{\"plan\":\"pro\",\"seats\":3,\"price\":9.99,"
     "\"tags\":[\"a\",\"b\"],\"ok\":true,\"note\":\"caf\xC3\xA9 \\u00e9\\ud83d\\ude00\"}}"),
    "[1,-2,3.5e10,-0.0,true,false,null,\"x\\n\",{},[]]",
    "\"\\u2028\"", "-9223372036854775808", "1e308",
};

TEST(validate_agrees_with_parse_on_mutations)
{
    /* byte flips, truncations and insertions of JSON-significant bytes */
    static const char specials[] = "{}[]\",:\\0-.eE+u \x01\x80\xC3\xED\xF4";
    char buf[512];
    int mismatches = 0;
    tj_arena *a = tj_arena_new();
    for (size_t c = 0; c < sizeof corpus / sizeof *corpus; c++) {
        size_t len = strlen(corpus[c]);
        for (int i = 0; i < 4000; i++) {
            memcpy(buf, corpus[c], len);
            size_t n = len, pos = rng() % len;
            switch (rng() % 3) {
            case 0: buf[pos] = specials[rng() % (sizeof specials - 1)]; break;
            case 1: n = pos; break;
            default:
                memmove(buf + pos + 1, buf + pos, len - pos);
                buf[pos] = specials[rng() % (sizeof specials - 1)];
                n++;
            }
            tj_value *v;
            tj_error e1, e2;
            int r1 = tj_parse(a, buf, n, &v, &e1), r2 = tj_validate(buf, n, &e2);
            if (r1 != r2 || (r1 && strcmp(e1.msg, e2.msg) != 0)) mismatches++;
            if (!r1) { /* write -> parse -> write is stable */
                tbuf w1 = TBUF_INIT, w2 = TBUF_INIT;
                tj_value *v2;
                CHECK(tj_write(&w1, v) == 0);
                CHECK(tj_parse(a, w1.data, w1.len, &v2, &e1) == 0);
                CHECK(tj_write(&w2, v2) == 0);
                CHECK(w1.len == w2.len && memcmp(w1.data, w2.data, w1.len) == 0);
                tbuf_free(&w1);
                tbuf_free(&w2);
            }
            tj_arena_reset(a);
        }
    }
    tj_arena_free(a);
    CHECK_EQ_INT(mismatches, 0);
}

TEST(null_error_pointer_is_allowed)
{
    tj_arena *a = tj_arena_new();
    tj_value *v = (tj_value *)1;
    CHECK(tj_parse(a, "[", 1, &v, NULL) == TALLY_EINVAL);
    CHECK(v == NULL);
    CHECK(tj_validate("[", 1, NULL) == TALLY_EINVAL);
    CHECK(tj_validate("[]", 2, NULL) == 0);
    tj_arena_free(a);
}
