/* tally's JSON codec; the contract is in json.h.
 *
 * Design:
 *  - tj_validate is the single authority on what is valid JSON. It is an iterative, table-driven
 *    scanner with a 64-bit "container kind" stack, so it needs no allocation and no recursion, and
 *    it skips runs of ordinary string bytes eight at a time (SWAR).
 *  - tj_parse first runs tj_validate and then builds the tree with a builder that trusts its input.
 *    That makes "identical acceptance" true by construction instead of by keeping two parsers in
 *    sync, and the builder stays free of error paths (except OOM).
 *  - Numbers are converted without the C library's locale: an exact fast path (Clinger: at most 2^53
 *    as the decimal significand and |exponent| <= 22, one correctly rounded IEEE operation) covers
 *    almost every literal; the rest goes to strtod_l with a private "C" locale, because writing a
 *    correct arbitrary-precision decimal conversion is far more code than it is worth here.
 *  - Doubles are written in the shortest form that reads back to the same bits. Integers and short
 *    decimals (the bulk of event data) are found with exact double arithmetic; the rest is rounded
 *    from one exactly rounded printf("%.24e") and checked by reading it back (shortest_digits()). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strtod_l and newlocale */
#endif
#include "json.h"

#include <assert.h>
#include <float.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __APPLE__
#include <xlocale.h>
#endif

/* ======================================================================== arena */

#define ARENA_ALIGN     16
#define ARENA_FIRST     4096          /* the chunk that survives tj_arena_reset */
#define ARENA_GROW_MIN  8192
#define ARENA_GROW_MAX  (256 * 1024)

typedef struct tj_chunk { struct tj_chunk *next; } tj_chunk;

struct tj_arena {
    uintptr_t cur, end;       /* bump region; integers so over-aligned "cur" is never UB */
    tj_chunk *extra;          /* every chunk after the first, newest first */
    size_t grow;              /* size of the next regular chunk */
    uintptr_t first, first_end;
    unsigned char *scratch;   /* the parser's work stack, kept across parses */
    size_t scratch_cap;
    size_t extra_bytes;       /* in the chunks after the first */
};

static uintptr_t align_up(uintptr_t p) { return (p + (ARENA_ALIGN - 1)) & ~(uintptr_t)(ARENA_ALIGN - 1); }

tj_arena *tj_arena_new(void)
{
    tj_arena *a = malloc(sizeof *a + ARENA_ALIGN + ARENA_FIRST);
    if (!a) return NULL;
    a->first = align_up((uintptr_t)(a + 1));
    a->first_end = a->first + ARENA_FIRST;
    a->extra = NULL;
    a->scratch = NULL;
    a->scratch_cap = 0;
    tj_arena_reset(a);
    return a;
}

static void free_extra(tj_arena *a)
{
    while (a->extra) {
        tj_chunk *n = a->extra->next;
        free(a->extra);
        a->extra = n;
    }
}

void tj_arena_reset(tj_arena *a)
{
    free_extra(a);
    a->extra_bytes = 0;
    a->cur = a->first;
    a->end = a->first_end;
    a->grow = ARENA_GROW_MIN;
}

void tj_arena_free(tj_arena *a)
{
    if (!a) return;
    free_extra(a);
    free(a->scratch);
    free(a);
}

/* Returns the usable, aligned start of a new chunk with room for n bytes. */
static uintptr_t new_chunk(tj_arena *a, size_t n)
{
    if (n > SIZE_MAX - sizeof(tj_chunk) - ARENA_ALIGN) return 0;
    tj_chunk *c = malloc(sizeof *c + ARENA_ALIGN + n);
    if (!c) return 0;
    c->next = a->extra;
    a->extra = c;
    a->extra_bytes += n;
    return align_up((uintptr_t)(c + 1));
}

size_t tj_arena_size(const tj_arena *a) { return ARENA_FIRST + a->extra_bytes; }

static void *alloc_slow(tj_arena *a, size_t n)
{
    /* A big block gets a chunk of its own so it neither wastes the rest of the current chunk nor
     * forces the regular chunk size up. */
    if (n > a->grow / 4) return (void *)new_chunk(a, n);
    uintptr_t p = new_chunk(a, a->grow);
    if (!p) return NULL;
    a->end = p + a->grow;
    if (a->grow < ARENA_GROW_MAX) a->grow *= 2;
    a->cur = p + n;
    return (void *)p;
}

void *tj_alloc(tj_arena *a, size_t n)
{
    if (n == 0) n = 1;
    uintptr_t p = align_up(a->cur);
    if (p <= a->end && n <= a->end - p) {
        a->cur = p + n;
        return (void *)p;
    }
    return alloc_slow(a, n);
}

/* Unaligned bump for string bytes: strings are the bulk of a tree and need no alignment. */
static char *alloc_bytes(tj_arena *a, size_t n)
{
    if (n <= a->end - a->cur) {
        char *p = (char *)a->cur;
        a->cur += n;
        return p;
    }
    return alloc_slow(a, n);
}

char *tj_strdup(tj_arena *a, const char *s, size_t n)
{
    if (n == SIZE_MAX) return NULL;
    char *p = alloc_bytes(a, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ======================================================================== numbers */

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

static void c_locale_init(void) { c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

/* strtod that always uses '.' whatever LC_NUMERIC says. s must be NUL-terminated. */
static double c_strtod(const char *s)
{
    pthread_once(&c_locale_once, c_locale_init);
    if (c_locale) return strtod_l(s, NULL, c_locale);
    return strtod(s, NULL); /* newlocale("C") cannot really fail; the C locale is then assumed */
}

static const double pow10_exact[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

#define TWO53 9007199254740992ULL

/* w * 10^e10 exactly rounded, when one IEEE operation on exact operands gives it. */
static int fast_scale(uint64_t w, int64_t e10, double *out)
{
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    if (w > TWO53 || e10 < -22 || e10 > 22) return 0;
    *out = e10 >= 0 ? (double)w * pow10_exact[e10] : (double)w / pow10_exact[-e10];
    return 1;
#else
    (void)w; (void)e10; (void)out;
    return 0; /* extended-precision evaluation would round twice */
#endif
}

static int is_digit(unsigned char c) { return (unsigned)(c - '0') < 10; }

/* Converts a JSON number literal [s, e) known to be well formed. */
static double literal_to_double(const char *s, const char *e)
{
    const char *p = s;
    int neg = *p == '-';
    if (neg) p++;
    uint64_t w = 0;
    int nd = 0, exact = 1;
    int64_t e10 = 0;
    for (; p < e && is_digit((unsigned char)*p); p++) {
        if (w || *p != '0') { if (nd++ < 19) w = w * 10 + (uint64_t)(*p - '0'); else exact = 0; }
    }
    if (p < e && *p == '.') {
        for (p++; p < e && is_digit((unsigned char)*p); p++) {
            if (w || *p != '0') { if (nd++ < 19) w = w * 10 + (uint64_t)(*p - '0'); else exact = 0; }
            e10--;
        }
    }
    if (p < e) { /* exponent */
        p++;
        int eneg = *p == '-';
        if (*p == '+' || *p == '-') p++;
        int64_t x = 0;
        for (; p < e; p++) if (x < 100000) x = x * 10 + (*p - '0');
        e10 += eneg ? -x : x;
    }
    double d;
    if (w == 0) d = 0.0;
    else if (!(exact && fast_scale(w, e10, &d))) {
        char small[128];
        size_t n = (size_t)(e - s);
        char *buf = n < sizeof small ? small : malloc(n + 1);
        if (!buf) return NAN; /* only reachable on OOM; reported by the caller */
        memcpy(buf, s, n);
        buf[n] = '\0';
        d = c_strtod(buf);
        if (buf != small) free(buf);
        return d;
    }
    return neg ? -d : d;
}

/* Does the well-formed literal [s, e) fit in a double (underflow is fine)? Decides from the decimal
 * magnitude, so strtod only runs for the narrow band around DBL_MAX. */
static int literal_finite(const unsigned char *s, const unsigned char *e)
{
    const unsigned char *p = s + (*s == '-');
    const unsigned char *i0 = p;
    while (p < e && is_digit(*p)) p++;
    const unsigned char *i1 = p, *f0 = p, *f1 = p;
    if (p < e && *p == '.') {
        f0 = ++p;
        while (p < e && is_digit(*p)) p++;
        f1 = p;
    }
    int64_t x = 0;
    if (p < e) {
        p++;
        int eneg = *p == '-';
        if (*p == '+' || *p == '-') p++;
        for (; p < e; p++) if (x < 1000000000) x = x * 10 + (*p - '0');
        if (eneg) x = -x;
    }
    const int64_t cap = 1000000000000LL;
    const unsigned char *sig;
    int64_t mag; /* value is in [10^(mag-1), 10^mag) */
    if (*i0 != '0') {
        sig = i0;
        mag = (i1 - i0 < cap ? i1 - i0 : cap) + x;
    } else {
        sig = f0;
        while (sig < f1 && *sig == '0') sig++;
        if (sig == f1) return 1; /* zero */
        mag = -(sig - f0 < cap ? sig - f0 : cap) + x;
    }
    if (mag < 309) return 1;  /* < 1e308 < DBL_MAX */
    if (mag > 309) return 0;  /* >= 1e309 */
    /* Within [1e308, 1e309): round exactly. 400 significant digits plus a sticky digit decide it
     * because every double and every rounding midpoint up there is an integer of <= 309 digits. */
    char buf[420];
    size_t n = 0;
    int sticky = 0;
    buf[n++] = '0';
    buf[n++] = '.';
    for (const unsigned char *q = sig; q < f1; q++) {
        if (q == i1) { q = f0; if (q == f1) break; }
        if (n < 402) buf[n++] = (char)*q;
        else if (*q != '0') sticky = 1;
    }
    if (sticky) buf[n++] = '1';
    memcpy(buf + n, "e309", 5);
    return !isinf(c_strtod(buf));
}

/* ======================================================================== UTF-8 */

/* Length of the valid multi-byte sequence at p (lead byte >= 0x80), or 0 when it is invalid:
 * overlong, a UTF-16 surrogate, beyond U+10FFFF or truncated. */
static int utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t avail = (size_t)(end - p);
    if (c < 0xC2) return 0;
    if (c < 0xE0) return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        if (avail < 3 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80) return 0;
        return 3;
    }
    if (c < 0xF5) {
        unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        if (avail < 4 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        return 4;
    }
    return 0;
}

#define ONES  0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static uint64_t load8(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static uint64_t has_zero_byte(uint64_t v) { return (v - ONES) & ~v & HIGHS; }

/* Any byte that is not plain printable ASCII inside a JSON string: < 0x20, >= 0x80, '"', '\\'. */
static uint64_t str_special8(uint64_t w)
{
    return (((w - ONES * 0x20) | w) & HIGHS) | has_zero_byte(w ^ (ONES * '"')) |
           has_zero_byte(w ^ (ONES * '\\'));
}

/* Skips plain string bytes 8 at a time. In each term of str_special8 a borrow can only set flags
 * above a truly special byte, never below it, so the lowest flag is exact: on a little-endian
 * machine the first special byte is found without going back to byte-at-a-time (most keys and
 * values are shorter than 8 bytes, so that is where the time went). */
static inline __attribute__((always_inline)) const unsigned char *skip_plain(const unsigned char *p,
                                                                            const unsigned char *end)
{
    while (end - p >= 8) {
        uint64_t m = str_special8(load8(p));
        if (m) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return p + (__builtin_ctzll(m) >> 3);
#else
            return p;
#endif
        }
        p += 8;
    }
    return p;
}

int tj_utf8_valid(const char *s, size_t len, size_t *bad_offset)
{
    const unsigned char *base = (const unsigned char *)s, *p = base, *end = base + len;
    while (p < end) {
        while (end - p >= 8 && !(load8(p) & HIGHS)) p += 8;
        if (p == end) break;
        if (*p < 0x80) { p++; continue; }
        int n = utf8_seq(p, end);
        if (!n) {
            if (bad_offset) *bad_offset = (size_t)(p - base);
            return 0;
        }
        p += n;
    }
    return 1;
}

/* ======================================================================== validate */

enum { SC_PLAIN, SC_QUOTE, SC_ESC, SC_CTRL, SC_HIGH };

#define R8(x)  x, x, x, x, x, x, x, x
#define R16(x) R8(x), R8(x)
static const unsigned char str_class[256] = {
    R16(SC_CTRL), R16(SC_CTRL),
    SC_PLAIN, SC_PLAIN, SC_QUOTE, SC_PLAIN, R8(SC_PLAIN), SC_PLAIN, SC_PLAIN, SC_PLAIN, SC_PLAIN,
    R16(SC_PLAIN), R16(SC_PLAIN),
    R8(SC_PLAIN), SC_PLAIN, SC_PLAIN, SC_PLAIN, SC_PLAIN, SC_ESC, SC_PLAIN, SC_PLAIN, SC_PLAIN,
    R16(SC_PLAIN), R16(SC_PLAIN),
    R16(SC_HIGH), R16(SC_HIGH), R16(SC_HIGH), R16(SC_HIGH),
    R16(SC_HIGH), R16(SC_HIGH), R16(SC_HIGH), R16(SC_HIGH),
};

/* -1 for a non-hex character */
static int hexval(unsigned char c)
{
    if (is_digit(c)) return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The 4 hex digits at p (caller checked they are in bounds), or -1. */
static long hex4(const unsigned char *p)
{
    int a = hexval(p[0]), b = hexval(p[1]), c = hexval(p[2]), d = hexval(p[3]);
    if ((a | b | c | d) < 0) return -1;
    return (long)a << 12 | b << 8 | c << 4 | d;
}

typedef struct {
    const unsigned char *base, *end;
    tj_error *err;
} vctx;

static const unsigned char *vfail(const vctx *v, const unsigned char *at, const char *what)
{
    v->err->offset = (size_t)(at - v->base);
    snprintf(v->err->msg, sizeof v->err->msg, "%s at offset %zu", what, v->err->offset);
    return NULL;
}

static const unsigned char *vfail_char(const vctx *v, const unsigned char *at)
{
    char what[48];
    if (at == v->end) return vfail(v, at, "unexpected end of input");
    if (*at >= 0x20 && *at < 0x7F) snprintf(what, sizeof what, "unexpected character '%c'", *at);
    else snprintf(what, sizeof what, "unexpected byte 0x%02X", *at);
    return vfail(v, at, what);
}

/* An escape; p is at the backslash. Returns the position after it. */
static const unsigned char *v_escape(const vctx *v, const unsigned char *p)
{
    const unsigned char *end = v->end;
    if (end - p < 2) return vfail(v, p, "unterminated escape");
    switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        return p + 2;
    case 'u': break;
    default: return vfail(v, p, "invalid escape");
    }
    long u;
    if (end - p < 6 || (u = hex4(p + 2)) < 0) return vfail(v, p, "invalid \\u escape");
    if (u >= 0xDC00 && u <= 0xDFFF) return vfail(v, p, "lone surrogate in \\u escape");
    if (u < 0xD800 || u > 0xDBFF) return p + 6;
    long lo;
    if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || (lo = hex4(p + 8)) < 0xDC00 || lo > 0xDFFF)
        return vfail(v, p, "lone surrogate in \\u escape");
    return p + 12;
}

/* The rest of a string that holds escapes, control bytes or non-ASCII: open is at the opening
 * quote, p where the fast path stopped. Returns the position after the closing quote. */
static __attribute__((noinline)) const unsigned char *v_string_slow(const vctx *v, const unsigned char *open,
                                                                    const unsigned char *p)
{
    const unsigned char *end = v->end;
    for (;;) {
        p = skip_plain(p, end);
        if (p == end) return vfail(v, open, "unterminated string");
        switch (str_class[*p]) {
        case SC_PLAIN: p++; break;
        case SC_QUOTE: return p + 1;
        case SC_ESC:
            if (!(p = v_escape(v, p))) return NULL;
            break;
        case SC_CTRL: return vfail(v, p, "control character in string");
        default: {
            int n = utf8_seq(p, end);
            if (!n) return vfail(v, p, "invalid UTF-8");
            p += n;
        }
        }
    }
}

/* A string; p is at the opening quote. Returns the position after the closing quote. Most strings
 * are plain ASCII up to the closing quote: one skip and one compare, inlined into the validator
 * (the call itself, with its register saves, was a third of the time). */
static inline const unsigned char *v_string(const vctx *v, const unsigned char *p)
{
    const unsigned char *q = skip_plain(p + 1, v->end);
    if (q < v->end && *q == '"') return q + 1;
    return v_string_slow(v, p, q);
}

static const unsigned char *v_digits(const unsigned char *p, const unsigned char *end)
{
    while (p < end && is_digit(*p)) p++;
    return p;
}

/* A number; p is at '-' or a digit. Returns the position after it. */
static const unsigned char *v_number(const vctx *v, const unsigned char *p)
{
    const unsigned char *start = p, *end = v->end;
    if (*p == '-') p++;
    if (p == end || !is_digit(*p)) return vfail(v, start, "invalid number");
    const unsigned char *i0 = p;
    p = *p == '0' ? p + 1 : v_digits(p, end);
    int check = p - i0 > 308;
    if (p < end && *p == '.') {
        p++;
        if (p == end || !is_digit(*p)) return vfail(v, start, "invalid number");
        p = v_digits(p, end);
    }
    if (p < end && (*p | 0x20) == 'e') {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p == end || !is_digit(*p)) return vfail(v, start, "invalid number");
        p = v_digits(p, end);
        check = 1;
    }
    if (check && !literal_finite(start, p)) return vfail(v, start, "number out of range");
    return p;
}

static const unsigned char *v_literal(const vctx *v, const unsigned char *p, const char *word, size_t n)
{
    if ((size_t)(v->end - p) < n || memcmp(p, word, n) != 0) return vfail(v, p, "invalid literal");
    return p + n;
}

static int is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
    while (p < end && is_ws(*p)) p++;
    return p;
}

/* ---- measuring while validating (tj_scan) ----
 * The same walk as tj_validate, also adding up what tj_write will write for the tree tj_parse
 * would build, and noting the values of the members the caller asked about. Kept in one function
 * with tj_validate (validate() below, with sc NULL for tj_validate) so that both accept and refuse
 * exactly the same texts with the same messages. */

typedef struct {
    tj_field *f;
    size_t    nf;
    size_t    w;        /* bytes written so far */
    int       member[3];  /* at depth 1 and 2: the field whose value is being read, or -1 */
    const unsigned char *start[3];
    size_t    wstart[3];
    int       escaped;  /* the last string read held a backslash */
    int       oom;
    uint64_t  parents;  /* bit i: field i has children */
    uint64_t  by_len[16]; /* bit i of [n]: field i's key is n bytes long ([0]: 16 or more) */
} scan_state;

/* What tj_write writes for the decoded escape at p (the backslash; validated). */
static size_t escape_written(const unsigned char *p)
{
    if (p[1] == '/') return 1;
    if (p[1] != 'u') return 2; /* \" \\ \b \f \n \r \t: written as the same escape */
    long u = hex4(p + 2);
    if (u >= 0xD800 && u <= 0xDBFF) return 4; /* a pair: one 4-byte character */
    if (u == '"' || u == '\\' || u == '\b' || u == '\f' || u == '\n' || u == '\r' || u == '\t') return 2;
    if (u < 0x20 || u == 0x2028 || u == 0x2029) return 6;
    return u < 0x80 ? 1 : u < 0x800 ? 2 : 3;
}

/* v_string_slow, also measuring: n counts from the opening quote to p. */
static __attribute__((noinline)) const unsigned char *s_string_slow(const vctx *v, scan_state *sc,
                                                                    const unsigned char *open,
                                                                    const unsigned char *p)
{
    const unsigned char *end = v->end;
    size_t n = 2 + (size_t)(p - open - 1);
    int escaped = 0;
    for (;;) {
        const unsigned char *q = skip_plain(p, end);
        n += (size_t)(q - p);
        p = q;
        if (p == end) return vfail(v, open, "unterminated string");
        switch (str_class[*p]) {
        case SC_PLAIN: p++; n++; break;
        case SC_QUOTE:
            sc->w += n;
            sc->escaped = escaped;
            return p + 1;
        case SC_ESC:
            if (!(q = v_escape(v, p))) return NULL;
            n += escape_written(p);
            escaped = 1;
            p = q;
            break;
        case SC_CTRL: return vfail(v, p, "control character in string");
        default: {
            int k = utf8_seq(p, end);
            if (!k) return vfail(v, p, "invalid UTF-8");
            /* U+2028 and U+2029 are written escaped (json.h) */
            n += k == 3 && p[0] == 0xE2 && p[1] == 0x80 && (p[2] | 1) == 0xA9 ? 6 : (size_t)k;
            p += k;
        }
        }
    }
}

static inline const unsigned char *s_string(const vctx *v, scan_state *sc, const unsigned char *p)
{
    const unsigned char *q = skip_plain(p + 1, v->end);
    if (q < v->end && *q == '"') {
        sc->w += (size_t)(q - p) + 1;
        sc->escaped = 0;
        return q + 1;
    }
    return s_string_slow(v, sc, p, q);
}

static const unsigned char *scan_number(const unsigned char *s, const unsigned char *end, tj_value *v);
static size_t format_double(double d, char *out);
static char *unescape(char *o, const unsigned char *p, const unsigned char *e);

/* What tj_write writes for the validated number literal [s, e): integers as they are (JSON allows
 * no other spelling; beyond 64 bits they are kept verbatim), doubles in their shortest form. */
/* Is [s, e) a double literal tj_write writes back byte for byte: no exponent, at most 15
 * significant digits (any such decimal is the shortest text of its double: two of them cannot
 * round to the same double), no trailing zero but a lone ".0", and a decimal exponent in plain
 * notation's range. Most doubles a program prints are; the rest are formatted to be measured. */
static int plain_double(const unsigned char *s, const unsigned char *e)
{
    const unsigned char *p = s + (*s == '-'), *dot = memchr(p, '.', (size_t)(e - p));
    if (!dot || memchr(dot, 'e', (size_t)(e - dot)) || memchr(dot, 'E', (size_t)(e - dot))) return 0;
    const unsigned char *f = dot + 1;
    if (e[-1] == '0' && e - f != 1) return 0;
    if (*p != '0') return (dot - p) + (e - f) - (e[-1] == '0') <= 15;
    const unsigned char *q = f;
    while (q < e && *q == '0') q++;
    return q == e || (q - f <= 5 && e - q <= 15);
}

static void s_number(scan_state *sc, const unsigned char *s, const unsigned char *e)
{
    if (plain_double(s, e)) {
        sc->w += (size_t)(e - s);
        return;
    }
    tj_value n;
    if (!scan_number(s, e, &n)) {
        sc->oom = 1;
        return;
    }
    if (n.type != TJ_DOUBLE) {
        sc->w += (size_t)(e - s);
        return;
    }
    char buf[48];
    sc->w += format_double(n.u.d, buf);
}

/* The field named by the key body [k, k + len) among the children of parent (-1: the root's). */
static int s_match(const scan_state *sc, int parent, const unsigned char *k, size_t len, int escaped)
{
    char buf[96];
    if (escaped) {
        if (len > sizeof buf) return -1; /* longer than any name asked about, even escaped */
        len = (size_t)(unescape(buf, k, k + len) - buf);
        k = (const unsigned char *)buf;
    }
    /* only the fields whose key has this length: one or two of a message's, not all sixteen */
    for (uint64_t c = sc->by_len[len < 16 ? len : 0]; c; c &= c - 1) {
        int i = __builtin_ctzll(c);
        tj_field *f = &sc->f[i];
        if (f->klen == len && f->parent == parent && f->key[0] == k[0] && !memcmp(f->key, k, len)) return i;
    }
    return -1;
}

/* A member's key was read at depth d: which field's value follows. A later member with the same
 * key replaces an earlier one, children included (JSON's last one wins, as in tj_object_get). */
static void s_key(scan_state *sc, int d, const unsigned char *k, size_t len)
{
    int parent = d == 1 ? -1 : sc->member[1], i;
    int none = d == 2 && (parent == -1 || !(sc->parents >> parent & 1));
    sc->member[d] = i = none ? -1 : s_match(sc, parent, k, len, sc->escaped);
    if (i < 0 || d != 1) return;
    for (size_t j = (size_t)i + 1; j < sc->nf; j++)
        if (sc->f[j].parent == i) sc->f[j].found = 0;
}

/* The value of the member at depth d ended just before p. */
static void s_value_end(scan_state *sc, const unsigned char *base, int d, const unsigned char *p)
{
    tj_field *f = &sc->f[sc->member[d]];
    const unsigned char *a = sc->start[d];
    int str = *a == '"';
    f->found = 1;
    f->first = *a;
    f->escaped = str && sc->escaped;
    f->at = (size_t)(a + str - base);
    f->len = (size_t)(p - a) - 2 * (size_t)str;
    f->written = sc->w - sc->wstart[d];
    sc->member[d] = -1;
}

/* tj_validate, and tj_scan when sc is set: inlined into both, so the plain validator pays nothing. */
static inline __attribute__((always_inline)) int validate(const char *s, size_t len, tj_error *err, scan_state *sc)
{
    tj_error scratch_err;
    vctx v = {(const unsigned char *)s, (const unsigned char *)s + len, err ? err : &scratch_err};
    const unsigned char *p = v.base, *end = v.end, *k;
    uint64_t objects = 0; /* bit 0 describes the innermost open container: 1 = object */
    int depth = 0;

value:
    p = skip_ws(p, end);
    if (p == end) goto bad_char;
    if (sc && (depth == 1 || depth == 2) && sc->member[depth] >= 0) {
        sc->start[depth] = p;
        sc->wstart[depth] = sc->w;
    }
    switch (*p) {
    case '"': p = sc ? s_string(&v, sc, p) : v_string(&v, p); break;
    case '{':
    case '[':
        if (depth == TJ_MAX_DEPTH) {
            char what[40];
            snprintf(what, sizeof what, "nesting deeper than %d", TJ_MAX_DEPTH);
            vfail(&v, p, what);
            return TALLY_EINVAL;
        }
        depth++;
        if (sc) sc->w++;
        objects = objects << 1 | (*p == '{');
        p = skip_ws(p + 1, end);
        if (p < end && *p == (objects & 1 ? '}' : ']')) { p++; goto close; }
        if (objects & 1) goto key;
        goto value;
    case 't': p = v_literal(&v, p, "true", 4); if (sc) sc->w += 4; break;
    case 'f': p = v_literal(&v, p, "false", 5); if (sc) sc->w += 5; break;
    case 'n': p = v_literal(&v, p, "null", 4); if (sc) sc->w += 4; break;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        k = p;
        p = v_number(&v, p);
        if (sc && p) s_number(sc, k, p);
        break;
    default: goto bad_char;
    }
    if (!p) return TALLY_EINVAL;
after:
    if (sc && (depth == 1 || depth == 2) && sc->member[depth] >= 0) s_value_end(sc, v.base, depth, p);
    p = skip_ws(p, end);
    if (depth == 0) {
        if (p != end) { vfail(&v, p, "trailing characters"); return TALLY_EINVAL; }
        return TALLY_OK;
    }
    if (p == end) goto bad_char;
    if (*p == ',') {
        if (sc) sc->w++;
        p = skip_ws(p + 1, end);
        if (objects & 1) goto key;
        goto value;
    }
    if (*p != (objects & 1 ? '}' : ']')) goto bad_char;
    p++;
close:
    if (sc) sc->w++;
    depth--;
    objects >>= 1;
    goto after;
key:
    if (p == end || *p != '"') goto bad_char;
    k = p;
    if (!(p = sc ? s_string(&v, sc, p) : v_string(&v, p))) return TALLY_EINVAL;
    if (sc) {
        sc->w++; /* ':' */
        if (depth <= 2) s_key(sc, depth, k + 1, (size_t)(p - k) - 2);
    }
    p = skip_ws(p, end);
    if (p == end || *p != ':') goto bad_char;
    p++;
    goto value;
bad_char:
    vfail_char(&v, p);
    return TALLY_EINVAL;
}

int tj_validate(const char *s, size_t len, tj_error *err) { return validate(s, len, err, NULL); }

int tj_scan(const char *s, size_t len, tj_field *f, size_t nf, size_t *written, tj_error *err)
{
    tj_error scratch_err;
    if (!err) err = &scratch_err;
    scan_state sc = {f, nf, 0, {-1, -1, -1}, {NULL, NULL, NULL}, {0, 0, 0}, 0, 0, 0, {0}};
    assert(nf <= 64);
    for (size_t i = 0; i < nf; i++) {
        assert(f[i].parent < (int)i && (f[i].parent < 0 || f[f[i].parent].parent < 0) && f[i].klen > 0);
        f[i].found = 0;
        if (f[i].parent >= 0) sc.parents |= 1ull << f[i].parent;
        sc.by_len[f[i].klen < 16 ? f[i].klen : 0] |= 1ull << i;
    }
    int rc = validate(s, len, err, &sc);
    *written = sc.w;
    if (!rc && sc.oom) {
        err->offset = 0;
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return TALLY_ENOMEM;
    }
    return rc;
}

/* ======================================================================== build */

tj_value *tj_new(tj_arena *a, tj_type t)
{
    tj_value *v = tj_alloc(a, sizeof *v);
    if (!v) return NULL;
    memset(v, 0, sizeof *v);
    v->type = t;
    if (t == TJ_STRING || t == TJ_RAW) v->u.str.s = "";
    return v;
}

tj_value *tj_new_int(tj_arena *a, int64_t i)
{
    tj_value *v = tj_new(a, TJ_INT);
    if (v) v->u.i = i;
    return v;
}

tj_value *tj_new_double(tj_arena *a, double d)
{
    tj_value *v = tj_new(a, TJ_DOUBLE);
    if (v) v->u.d = d;
    return v;
}

static tj_value *new_strlike(tj_arena *a, tj_type t, const char *s, size_t len)
{
    tj_value *v = tj_new(a, t);
    if (!v) return NULL;
    char *c = tj_strdup(a, s, len);
    if (!c) return NULL;
    v->u.str.s = c;
    v->u.str.len = len;
    return v;
}

tj_value *tj_new_string(tj_arena *a, const char *s, size_t len) { return new_strlike(a, TJ_STRING, s, len); }
tj_value *tj_new_raw(tj_arena *a, const char *json, size_t len) { return new_strlike(a, TJ_RAW, json, len); }

/* Makes room for one more element of size sz in an arena array; the old block is simply abandoned. */
static void *grow_array(tj_arena *a, void *items, size_t n, size_t *cap, size_t sz)
{
    if (n < *cap) return items;
    size_t ncap = *cap ? *cap * 2 : 4;
    if (ncap < n + 1) ncap = n + 1;
    if (ncap > SIZE_MAX / sz) return NULL;
    void *p = tj_alloc(a, ncap * sz);
    if (!p) return NULL;
    if (n) memcpy(p, items, n * sz);
    *cap = ncap;
    return p;
}

int tj_array_push(tj_arena *a, tj_value *arr, tj_value *v)
{
    if (!arr || arr->type != TJ_ARRAY) return TALLY_EINVAL;
    tj_value **items = grow_array(a, arr->u.arr.items, arr->u.arr.n, &arr->u.arr.cap, sizeof *items);
    if (!items) return TALLY_ENOMEM;
    items[arr->u.arr.n++] = v;
    arr->u.arr.items = items;
    return TALLY_OK;
}

/* Index of the last member named key (JSON's "last one wins"), or -1. */
static long find_member(const tj_value *obj, const char *key, size_t klen)
{
    for (size_t i = obj->u.obj.n; i-- > 0;) {
        const tj_member *m = &obj->u.obj.m[i];
        if (m->klen == klen && memcmp(m->key, key, klen) == 0) return (long)i;
    }
    return -1;
}

int tj_object_set(tj_arena *a, tj_value *obj, const char *key, size_t klen, tj_value *v)
{
    if (!obj || obj->type != TJ_OBJECT) return TALLY_EINVAL;
    long i = find_member(obj, key, klen);
    if (i >= 0) {
        obj->u.obj.m[i].val = v;
        return TALLY_OK;
    }
    char *k = tj_strdup(a, key, klen);
    tj_member *m = grow_array(a, obj->u.obj.m, obj->u.obj.n, &obj->u.obj.cap, sizeof *m);
    if (!k || !m) return TALLY_ENOMEM;
    m[obj->u.obj.n++] = (tj_member){k, klen, v};
    obj->u.obj.m = m;
    return TALLY_OK;
}

tj_value *tj_object_get(const tj_value *obj, const char *key)
{
    if (!obj || obj->type != TJ_OBJECT) return NULL;
    long i = find_member(obj, key, strlen(key));
    return i < 0 ? NULL : obj->u.obj.m[i].val;
}

int tj_object_remove(tj_value *obj, const char *key)
{
    if (!obj || obj->type != TJ_OBJECT) return 0;
    size_t klen = strlen(key), kept = 0, n = obj->u.obj.n;
    tj_member *m = obj->u.obj.m;
    for (size_t i = 0; i < n; i++) /* drops duplicates too, keeping the order of the rest */
        if (!(m[i].klen == klen && memcmp(m[i].key, key, klen) == 0)) m[kept++] = m[i];
    obj->u.obj.n = kept;
    return kept != n;
}

/* ======================================================================== parse (trusting builder) */

typedef struct {
    tj_arena *a;
    const unsigned char *p, *end;
    size_t top; /* bytes used in a->scratch */
} bctx;

static int scratch_push(bctx *c, const void *item, size_t sz)
{
    tj_arena *a = c->a;
    if (c->top + sz > a->scratch_cap) {
        size_t cap = a->scratch_cap ? a->scratch_cap * 2 : 1024;
        unsigned char *s = realloc(a->scratch, cap);
        if (!s) return -1;
        a->scratch = s;
        a->scratch_cap = cap;
    }
    memcpy(a->scratch + c->top, item, sz);
    c->top += sz;
    return 0;
}

static void b_ws(bctx *c) { c->p = skip_ws(c->p, c->end); }

static char *put_utf8(char *o, unsigned long u)
{
    if (u < 0x80) { *o++ = (char)u; return o; }
    if (u < 0x800) {
        *o++ = (char)(0xC0 | u >> 6);
    } else {
        if (u < 0x10000) {
            *o++ = (char)(0xE0 | u >> 12);
        } else {
            *o++ = (char)(0xF0 | u >> 18);
            *o++ = (char)(0x80 | (u >> 12 & 0x3F));
        }
        *o++ = (char)(0x80 | (u >> 6 & 0x3F));
    }
    *o++ = (char)(0x80 | (u & 0x3F));
    return o;
}

/* Decodes the escaped string body [p, e) into o; returns the end of the output. */
static char *unescape(char *o, const unsigned char *p, const unsigned char *e)
{
    while (p < e) {
        if (*p != '\\') { *o++ = (char)*p++; continue; }
        unsigned char c = p[1];
        p += 2;
        switch (c) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned long u = (unsigned long)hex4(p);
            p += 4;
            if (u >= 0xD800 && u <= 0xDBFF) { /* the validator guaranteed the low half follows */
                u = 0x10000 + ((u - 0xD800) << 10) + ((unsigned long)hex4(p + 2) - 0xDC00);
                p += 6;
            }
            o = put_utf8(o, u);
            break;
        }
        default: *o++ = (char)c; /* " \ / */
        }
    }
    return o;
}

/* The closing quote of the (validated) string whose body starts at q; *escaped tells whether the
 * body holds a backslash. */
static const unsigned char *scan_string(const unsigned char *q, const unsigned char *end, int *escaped)
{
    const unsigned char *r = q;
    *escaped = 0;
    for (;;) {
        while (end - r >= 8) {
            uint64_t w = load8(r);
            if (has_zero_byte(w ^ (ONES * '"')) | has_zero_byte(w ^ (ONES * '\\'))) break;
            r += 8;
        }
        if (*r == '"') return r;
        if (*r == '\\') { *escaped = 1; r += 2; }
        else r++;
    }
}

size_t tj_unescape(char *out, const char *body, size_t len)
{
    const unsigned char *p = (const unsigned char *)body;
    return (size_t)(unescape(out, p, p + len) - out);
}

/* Reads a string at c->p (the opening quote) into the arena. */
static int b_string(bctx *c, const char **out, size_t *outlen)
{
    const unsigned char *q = c->p + 1;
    int escaped;
    const unsigned char *r = scan_string(q, c->end, &escaped);
    c->p = r + 1;
    size_t n = (size_t)(r - q);
    if (!escaped) {
        *out = tj_strdup(c->a, (const char *)q, n);
        *outlen = n;
        return *out ? 0 : -1;
    }
    char *s = alloc_bytes(c->a, n + 1); /* decoding never lengthens the text */
    if (!s) return -1;
    char *e = unescape(s, q, r);
    *e = '\0';
    *out = s;
    *outlen = (size_t)(e - s);
    return 0;
}

/* Reads the (validated) number at p into *v without allocating: TJ_INT within int64, TJ_RAW
 * pointing at the literal for an integer beyond 64 bits (its text is the only exact form we have),
 * TJ_DOUBLE otherwise. Returns the end of the literal, or NULL on OOM for a huge literal. */
static const unsigned char *scan_number(const unsigned char *s, const unsigned char *end, tj_value *v)
{
    const unsigned char *p = s;
    int neg = *p == '-';
    p += neg;
    uint64_t u = 0;
    int fits = 1;
    for (; p < end && is_digit(*p); p++) {
        unsigned d = *p - '0';
        if (u > (UINT64_MAX - d) / 10) fits = 0;
        else u = u * 10 + d;
    }
    int integral = !(p < end && (*p == '.' || (*p | 0x20) == 'e'));
    while (p < end && (is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-'))
        p++;
    memset(v, 0, sizeof *v);
    /* "-0" stays a double so that it keeps its sign through a round trip. */
    if (integral && !(neg && u == 0)) {
        if (fits && !neg && u <= (uint64_t)INT64_MAX) {
            v->type = TJ_INT;
            v->u.i = (int64_t)u;
            return p;
        }
        if (fits && neg && u <= (uint64_t)INT64_MAX + 1) {
            v->type = TJ_INT;
            v->u.i = (int64_t)(0 - u);
            return p;
        }
        v->type = TJ_RAW;
        v->u.str.s = (const char *)s;
        v->u.str.len = (size_t)(p - s);
        return p;
    }
    v->type = TJ_DOUBLE;
    v->u.d = literal_to_double((const char *)s, (const char *)p);
    return isnan(v->u.d) ? NULL : p; /* NaN: OOM for a huge literal */
}

double tj_literal_double(const char *s, size_t len) { return literal_to_double(s, s + len); }

static tj_value *b_number(bctx *c)
{
    tj_value n;
    const unsigned char *p = scan_number(c->p, c->end, &n);
    if (!p) return NULL;
    c->p = p;
    if (n.type == TJ_RAW) return tj_new_raw(c->a, n.u.str.s, n.u.str.len);
    tj_value *v = tj_new(c->a, n.type);
    if (v) v->u = n.u;
    return v;
}

static tj_value *b_value(bctx *c);

static tj_value *b_array(bctx *c)
{
    tj_value *v = tj_new(c->a, TJ_ARRAY);
    if (!v) return NULL;
    c->p++;
    b_ws(c);
    if (*c->p == ']') { c->p++; return v; }
    size_t base = c->top;
    for (;;) {
        tj_value *item = b_value(c);
        if (!item || scratch_push(c, &item, sizeof item)) return NULL;
        b_ws(c);
        if (*c->p++ == ']') break;
    }
    size_t n = (c->top - base) / sizeof(tj_value *);
    tj_value **items = tj_alloc(c->a, n * sizeof *items);
    if (!items) return NULL;
    memcpy(items, c->a->scratch + base, n * sizeof *items);
    c->top = base;
    v->u.arr.items = items;
    v->u.arr.n = v->u.arr.cap = n;
    return v;
}

static tj_value *b_object(bctx *c)
{
    tj_value *v = tj_new(c->a, TJ_OBJECT);
    if (!v) return NULL;
    c->p++;
    b_ws(c);
    if (*c->p == '}') { c->p++; return v; }
    size_t base = c->top;
    for (;;) {
        tj_member m;
        b_ws(c);
        if (b_string(c, &m.key, &m.klen)) return NULL;
        b_ws(c);
        c->p++; /* ':' */
        if (!(m.val = b_value(c)) || scratch_push(c, &m, sizeof m)) return NULL;
        b_ws(c);
        if (*c->p++ == '}') break;
    }
    size_t n = (c->top - base) / sizeof(tj_member);
    tj_member *m = tj_alloc(c->a, n * sizeof *m);
    if (!m) return NULL;
    memcpy(m, c->a->scratch + base, n * sizeof *m);
    c->top = base;
    v->u.obj.m = m;
    v->u.obj.n = v->u.obj.cap = n;
    return v;
}

static tj_value *b_value(bctx *c)
{
    b_ws(c);
    switch (*c->p) {
    case '{': return b_object(c);
    case '[': return b_array(c);
    case '"': {
        tj_value *v = tj_new(c->a, TJ_STRING);
        if (!v || b_string(c, &v->u.str.s, &v->u.str.len)) return NULL;
        return v;
    }
    case 't': c->p += 4; return tj_new(c->a, TJ_TRUE);
    case 'f': c->p += 5; return tj_new(c->a, TJ_FALSE);
    case 'n': c->p += 4; return tj_new(c->a, TJ_NULL);
    default: return b_number(c);
    }
}

int tj_parse_valid(tj_arena *a, const char *s, size_t len, tj_value **out)
{
    bctx c = {a, (const unsigned char *)s, (const unsigned char *)s + len, 0};
    *out = b_value(&c);
    return *out ? TALLY_OK : TALLY_ENOMEM;
}

/* ---- shallow build (tj_parse_shallow) ---- */

/* The end of the validated string at p (its opening quote); clears *canon when tj_write would
 * write it differently: an escape that is not the one tj_write uses, or a raw U+2028/U+2029. */
static const unsigned char *string_extent(const unsigned char *p, const unsigned char *end, int *canon)
{
    for (p++;;) {
        p = skip_plain(p, end);
        unsigned char ch = *p;
        if (ch == '"') return p + 1;
        if (ch == '\\') {
            if (p[1] != 'u') {
                if (p[1] == '/') *canon = 0;
                p += 2;
                continue;
            }
            long u = hex4(p + 2);
            int same = (u < 0x20 && u != '\b' && u != '\f' && u != '\n' && u != '\r' && u != '\t') || u == 0x2028 ||
                       u == 0x2029;
            for (int i = 2; i < 6 && same; i++) same = !(p[i] >= 'A' && p[i] <= 'F'); /* tj_write writes lowercase hex */
            if (!same) *canon = 0;
            p += 6;
            continue;
        }
        if (ch == 0xE2 && p[1] == 0x80 && (p[2] | 1) == 0xA9) *canon = 0;
        p++;
    }
}

/* The end of the validated container at p ('{' or '['); *canon: its text is exactly what tj_write
 * writes for the tree tj_parse builds from it (compact, the same escapes, numbers as written). */
static const unsigned char *container_extent(const unsigned char *p, const unsigned char *end, int *canon)
{
    int depth = 0;
    *canon = 1;
    for (;;) {
        switch (*p) {
        case '{': case '[': depth++; p++; break;
        case '}': case ']':
            p++;
            if (--depth == 0) return p;
            break;
        case ',': case ':': p++; break;
        case '"': p = string_extent(p, end, canon); break;
        case 't': case 'n': p += 4; break;
        case 'f': p += 5; break;
        case ' ': case '\t': case '\n': case '\r':
            *canon = 0;
            p = skip_ws(p, end);
            break;
        default: { /* a number */
            const unsigned char *q = p + 1;
            int integral = 1;
            while (q < end && (is_digit(*q) || *q == '.' || (*q | 0x20) == 'e' || *q == '+' || *q == '-')) {
                integral &= is_digit(*q);
                q++;
            }
            if (integral ? (*p == '-' && q - p == 2 && p[1] == '0') : !plain_double(p, q)) *canon = 0;
            p = q;
        }
        }
    }
}

int tj_parse_shallow(tj_arena *a, const char *s, size_t len, const char *deep, tj_value **out)
{
    bctx c = {a, (const unsigned char *)s, (const unsigned char *)s + len, 0};
    b_ws(&c);
    if (*c.p != '{') return tj_parse_valid(a, s, len, out);
    tj_value *v = tj_new(a, TJ_OBJECT);
    if (!v) return TALLY_ENOMEM;
    c.p++;
    b_ws(&c);
    size_t dlen = deep ? strlen(deep) : 0;
    while (*c.p != '}') {
        tj_member m;
        b_ws(&c);
        if (b_string(&c, &m.key, &m.klen)) return TALLY_ENOMEM;
        b_ws(&c);
        c.p++; /* ':' */
        b_ws(&c);
        m.val = NULL;
        if ((*c.p == '{' || *c.p == '[') && !(deep && m.klen == dlen && !memcmp(m.key, deep, dlen))) {
            int canon;
            const unsigned char *e = container_extent(c.p, c.end, &canon);
            if (canon) {
                if (!(m.val = tj_new_raw(a, (const char *)c.p, (size_t)(e - c.p)))) return TALLY_ENOMEM;
                c.p = e;
            }
        }
        if ((!m.val && !(m.val = b_value(&c))) || scratch_push(&c, &m, sizeof m)) return TALLY_ENOMEM;
        b_ws(&c);
        if (*c.p == ',') c.p++;
        b_ws(&c);
    }
    size_t n = c.top / sizeof(tj_member);
    if (n) {
        tj_member *m = tj_alloc(a, n * sizeof *m);
        if (!m) return TALLY_ENOMEM;
        memcpy(m, a->scratch, n * sizeof *m);
        v->u.obj.m = m;
        v->u.obj.n = v->u.obj.cap = n;
    }
    *out = v;
    return TALLY_OK;
}

static int write_value(tbuf *b, const tj_value *v);

unsigned tj_raw_keys(const char *s, size_t len, const char *const *keys, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    unsigned found = 0;
    int canon;
    assert(n <= 32 && len >= 2 && *p == '{');
    for (p = skip_ws(p + 1, end); *p == '"';) {
        const unsigned char *k = p + 1;
        p = string_extent(p, end, &canon);
        size_t klen = (size_t)(p - 1 - k);
        for (size_t i = 0; i < n; i++)
            if (strlen(keys[i]) == klen && !memcmp(keys[i], k, klen)) found |= 1u << i;
        p = skip_ws(skip_ws(p, end) + 1, end); /* past ':' */
        if (*p == '{' || *p == '[') p = container_extent(p, end, &canon);
        else if (*p == '"') p = string_extent(p, end, &canon);
        else while (p < end && *p != ',' && *p != '}' && !is_ws(*p)) p++; /* a number or literal */
        p = skip_ws(p, end);
        if (*p == ',') p = skip_ws(p + 1, end);
    }
    return found;
}

int tj_raw_append(tj_arena *a, tj_value *raw, const tj_value *add)
{
    const char *s = raw->u.str.s;
    size_t len = raw->u.str.len;
    assert(raw->type == TJ_RAW && len >= 2 && s[0] == '{' && s[len - 1] == '}' && add->type == TJ_OBJECT);
    if (!add->u.obj.n) return TALLY_OK;
    /* written in the arena's parse stack (free between parses), then copied into the arena */
    tbuf b = {(char *)a->scratch, 0, a->scratch_cap, 0};
    tbuf_append(&b, s, len - 1);
    int rc = 0;
    for (size_t i = 0; i < add->u.obj.n && !rc; i++) {
        const tj_member *m = &add->u.obj.m[i];
        if (i || len > 2) tbuf_putc(&b, ',');
        tj_write_string(&b, m->key, m->klen);
        tbuf_putc(&b, ':');
        rc = write_value(&b, m->val);
    }
    tbuf_putc(&b, '}');
    a->scratch = (unsigned char *)b.data;
    a->scratch_cap = b.cap;
    if (b.oom) return TALLY_ENOMEM;
    if (rc) return TALLY_EINVAL;
    char *t = tj_strdup(a, b.data, b.len);
    if (!t) return TALLY_ENOMEM;
    raw->u.str.s = t;
    raw->u.str.len = b.len;
    return TALLY_OK;
}

int tj_parse(tj_arena *a, const char *s, size_t len, tj_value **out, tj_error *err)
{
    tj_error scratch_err;
    if (!err) err = &scratch_err;
    *out = NULL;
    int rc = tj_validate(s, len, err);
    if (rc) return rc;
    if (tj_parse_valid(a, s, len, out)) {
        err->offset = 0;
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return TALLY_ENOMEM;
    }
    return TALLY_OK;
}

int tj_expand(tj_arena *a, tj_value *v, tj_error *err)
{
    if (v->type != TJ_RAW) return TALLY_OK;
    tj_value *t;
    int rc = tj_parse(a, v->u.str.s, v->u.str.len, &t, err);
    if (rc) return rc;
    *v = *t;
    return TALLY_OK;
}

/* ======================================================================== walk (no tree) */

typedef struct {
    const tj_handler *h;
    void *ud;
    const unsigned char *p, *end;
} wctx;

static int w_value(wctx *c);

static int w_container(wctx *c, int object)
{
    const tj_handler *h = c->h;
    char close = object ? '}' : ']';
    if (h->begin(c->ud, object)) return -1;
    c->p = skip_ws(c->p + 1, c->end);
    if (*c->p == close) {
        c->p++;
        return h->end(c->ud);
    }
    for (;;) {
        if (object) {
            int esc;
            c->p = skip_ws(c->p, c->end);
            const unsigned char *q = c->p + 1, *r = scan_string(q, c->end, &esc);
            if (h->key(c->ud, (const char *)q, (size_t)(r - q), esc)) return -1;
            c->p = skip_ws(r + 1, c->end) + 1; /* past ':' */
        }
        if (w_value(c)) return -1;
        c->p = skip_ws(c->p, c->end);
        if (*c->p++ == close) break;
    }
    return h->end(c->ud);
}

static int w_value(wctx *c)
{
    const tj_handler *h = c->h;
    tj_value v;
    c->p = skip_ws(c->p, c->end);
    switch (*c->p) {
    case '{': return w_container(c, 1);
    case '[': return w_container(c, 0);
    case '"': {
        int esc;
        const unsigned char *q = c->p + 1, *r = scan_string(q, c->end, &esc);
        c->p = r + 1;
        return h->string(c->ud, (const char *)q, (size_t)(r - q), esc);
    }
    case 't': c->p += 4; v.type = TJ_TRUE; break;
    case 'f': c->p += 5; v.type = TJ_FALSE; break;
    case 'n': c->p += 4; v.type = TJ_NULL; break;
    default: {
        const unsigned char *e = scan_number(c->p, c->end, &v);
        if (!e) return -1;
        c->p = e;
    }
    }
    return h->scalar(c->ud, &v);
}

int tj_walk(const char *s, size_t len, const tj_handler *h, void *ud, tj_error *err)
{
    tj_error scratch_err;
    if (!err) err = &scratch_err;
    int rc = tj_validate(s, len, err);
    if (rc) return rc;
    wctx c = {h, ud, (const unsigned char *)s, (const unsigned char *)s + len};
    if (w_value(&c)) {
        err->offset = (size_t)(c.p - (const unsigned char *)s);
        snprintf(err->msg, sizeof err->msg, "stopped by the handler");
        return TALLY_EINVAL;
    }
    return TALLY_OK;
}

/* ======================================================================== write: numbers */

static size_t put_u64(char *o, uint64_t u)
{
    char tmp[20];
    size_t n = 0;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    for (size_t i = 0; i < n; i++) o[i] = tmp[n - 1 - i];
    return n;
}

static void write_int(tbuf *b, int64_t i)
{
    char buf[24];
    size_t n = 0;
    uint64_t u = (uint64_t)i;
    if (i < 0) { buf[n++] = '-'; u = 0 - u; }
    n += put_u64(buf + n, u);
    tbuf_append(b, buf, n);
}

/* The `prec` significant digits of d > 0 as printf rounds them exactly; *e10 gets the decimal
 * exponent of the first digit. Only digits are read back, so the locale's decimal point (which
 * printf does honour) cannot leak into the result. */
static int digits_at(double d, int prec, char *dig, int *e10)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
    int k = 0;
    const char *p = buf;
    for (; *p && *p != 'e'; p++) if (is_digit((unsigned char)*p)) dig[k++] = *p;
    *e10 = atoi(p + 1);
    return k;
}

static uint64_t digits_value(const char *dig, int k)
{
    uint64_t w = 0;
    for (int i = 0; i < k; i++) w = w * 10 + (uint64_t)(dig[i] - '0');
    return w;
}

/* The double nearest to 0.dig * 10^(e10+1), i.e. d[0].d[1..] * 10^e10. */
static double digits_to_double(const char *dig, int k, int e10)
{
    double d;
    if (fast_scale(digits_value(dig, k), e10 - (k - 1), &d)) return d;
    char buf[48];
    memcpy(buf, dig, (size_t)k);
    snprintf(buf + k, sizeof buf - (size_t)k, "e%d", e10 - (k - 1));
    return c_strtod(buf);
}

static int strip_zeros(const char *dig, int k)
{
    while (k > 1 && dig[k - 1] == '0') k--;
    return k;
}

/* The nearest k-digit candidate failed; the one on the other side of d may still round-trip. This
 * matters just above powers of two, where the round-trip interval is lopsided. */
static int try_other_side(double d, char *dig, int k, int *e10)
{
    uint64_t w = digits_value(dig, k), lo = 1, hi;
    for (int i = 1; i < k; i++) lo *= 10;
    hi = lo * 10;
    int e = *e10;
    if (digits_to_double(dig, k, e) < d) { if (++w == hi) { w = lo; e++; } }
    else if (--w < lo) { w = hi - 1; e--; }
    char cand[20];
    for (int i = k; i-- > 0; w /= 10) cand[i] = (char)('0' + w % 10);
    if (digits_to_double(cand, k, e) != d) return 0;
    memcpy(dig, cand, (size_t)k);
    *e10 = e;
    return 1;
}

/* Digits of the integer w (> 0) taken as w * 10^-scale. */
static int digits_of(uint64_t w, int scale, char *dig, int *e10)
{
    int k = (int)put_u64(dig, w);
    *e10 = k - 1 - scale;
    return strip_zeros(dig, k);
}

/* Events are full of short decimals (prices, ratios, durations). Finds the fewest decimals k for
 * which an integer w makes w / 10^k read back as d, using one exact division per try. Below 2^51
 * the round-trip radius of x = d*10^k is <= 0.25 and fl(x) is within 0.125 of x, so the only
 * possible w is the integer nearest fl(x): the first k that works gives the shortest digits. */
static int short_decimal(double d, char *dig, int *e10)
{
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    for (int k = 1; k <= 22; k++) {
        double x = d * pow10_exact[k];
        if (x >= 2251799813685248.0) break;
        double w = floor(x + 0.5);
        if (w > 0 && w / pow10_exact[k] == d) return digits_of((uint64_t)w, k, dig, e10);
    }
#else
    (void)d; (void)dig; (void)e10;
#endif
    return 0;
}

/* printf's exactly rounded digits of d at WIDE significant digits. nearest() rounds them to fewer
 * digits itself, so the general case costs one printf instead of one per precision tried. */
#define WIDE 25
typedef struct {
    double d;
    char dig[WIDE + 1];
    int e10;
} wide_t;

static void wide_init(wide_t *w, double d)
{
    w->d = d;
    w->dig[digits_at(d, WIDE, w->dig, &w->e10)] = '\0';
}

/* The nearest p-digit (p < WIDE) decimal to w->d. */
static int nearest(const wide_t *w, int p, char *dig, int *e10)
{
    const char *cut = w->dig + p;
    int up = *cut > '5' || (*cut == '5' && strspn(cut + 1, "0") < (size_t)(WIDE - p - 1));
    /* "5000..." at WIDE digits may itself be rounded, so only printf knows which way it goes */
    if (*cut == '5' && !up) return digits_at(w->d, p, dig, e10);
    memcpy(dig, w->dig, (size_t)p);
    *e10 = w->e10;
    if (up) {
        int i = p - 1;
        while (i >= 0 && dig[i] == '9') dig[i--] = '0';
        if (i >= 0) dig[i]++;
        else { dig[0] = '1'; ++*e10; }
    }
    return p;
}

/* Shortest digits that read back as d (finite, > 0). Returns the digit count, no trailing zeros. */
static int shortest_digits(double d, char *dig, int *e10)
{
    /* An integer below 2^53 is exact and any shorter decimal is at least 1 away: print it. */
    if (d < (double)TWO53 && d == (double)(uint64_t)d) return digits_of((uint64_t)d, 0, dig, e10);
    int k = short_decimal(d, dig, e10);
    if (k) return k;
    wide_t w;
    wide_init(&w, d);
    if (d >= DBL_MIN) {
        /* Any decimal of <= 15 digits survives decimal->double->15 digits (DBL_DIG), so if a
         * 15-digit rendering round-trips, stripping its zeros gives the shortest. Otherwise 16
         * digits may do (nearest or its other neighbour), and 17 always do. */
        k = strip_zeros(dig, nearest(&w, 15, dig, e10));
        if (digits_to_double(dig, k, *e10) == d) return k;
        k = nearest(&w, 16, dig, e10);
        if (digits_to_double(dig, k, *e10) == d || try_other_side(d, dig, k, e10))
            return strip_zeros(dig, k);
        return strip_zeros(dig, nearest(&w, 17, dig, e10));
    }
    /* Subnormals have fewer significant bits, so DBL_DIG does not apply; their round-trip interval
     * is symmetric, so "nearest p digits round-trip" is monotone in p: binary search. */
    int lo = 1, hi = 17;
    while (lo < hi) {
        int mid = (lo + hi) / 2, e;
        char tmp[WIDE];
        k = nearest(&w, mid, tmp, &e);
        if (digits_to_double(tmp, k, e) == d) hi = mid;
        else lo = mid + 1;
    }
    return strip_zeros(dig, nearest(&w, hi, dig, e10));
}

/* Formats finite d; returns the length. Plain notation for exponents -6..20, else d.ddde-N. */
static size_t format_double(double d, char *out)
{
    char *o = out;
    if (signbit(d)) { *o++ = '-'; d = -d; }
    if (d == 0) { memcpy(o, "0.0", 3); return (size_t)(o + 3 - out); }
    char dig[24];
    int e, k = shortest_digits(d, dig, &e);
    if (e > 20 || e < -6) {
        *o++ = dig[0];
        if (k > 1) { *o++ = '.'; memcpy(o, dig + 1, (size_t)k - 1); o += k - 1; }
        o += sprintf(o, "e%d", e);
    } else if (e < 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = -1; i > e; i--) *o++ = '0';
        memcpy(o, dig, (size_t)k);
        o += k;
    } else {
        for (int i = 0; i <= e; i++) *o++ = i < k ? dig[i] : '0';
        *o++ = '.';
        if (k > e + 1) { memcpy(o, dig + e + 1, (size_t)(k - e - 1)); o += k - e - 1; }
        else *o++ = '0';
    }
    return (size_t)(o - out);
}

void tj_write_double(tbuf *b, double d)
{
    if (!isfinite(d)) { tbuf_append(b, "null", 4); return; }
    char buf[48];
    tbuf_append(b, buf, format_double(d, buf));
}

/* ======================================================================== write: strings, trees */

/* Bytes the writer must look at: < 0x20, '"', '\\' and 0xE2 (lead byte of U+2028/U+2029). */
static uint64_t write_special8(uint64_t w)
{
    return ((w - ONES * 0x20) & ~w & HIGHS) | has_zero_byte(w ^ (ONES * '"')) |
           has_zero_byte(w ^ (ONES * '\\')) | has_zero_byte(w ^ (ONES * 0xE2));
}

static int needs_escape(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = *p;
    if (c == 0xE2) return end - p >= 3 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9);
    return c < 0x20 || c == '"' || c == '\\';
}

/* Writes the escape for the byte(s) at p (needs_escape() said so); returns the bytes consumed. */
static size_t write_escape(tbuf *b, const unsigned char *p)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char c = *p;
    char e[6] = {'\\', 0};
    switch (c) {
    case '"': case '\\': e[1] = (char)c; break;
    case '\b': e[1] = 'b'; break;
    case '\f': e[1] = 'f'; break;
    case '\n': e[1] = 'n'; break;
    case '\r': e[1] = 'r'; break;
    case '\t': e[1] = 't'; break;
    case 0xE2:
        tbuf_append(b, p[2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
        return 3;
    default:
        memcpy(e, "\\u00", 4);
        e[4] = hex[c >> 4];
        e[5] = hex[c & 15];
        tbuf_append(b, e, 6);
        return 1;
    }
    tbuf_append(b, e, 2);
    return 1;
}

void tj_write_string(tbuf *b, const char *s, size_t len)
{
    if (tbuf_reserve(b, len + 2)) return;
    tbuf_putc(b, '"');
    const unsigned char *p = (const unsigned char *)s, *end = p + len, *run = p;
    while (p < end) {
        while (end - p >= 8 && !write_special8(load8(p))) p += 8;
        if (p == end) break;
        if (!needs_escape(p, end)) { p++; continue; }
        if (p > run) tbuf_append(b, run, (size_t)(p - run));
        p += write_escape(b, p);
        run = p;
    }
    if (p > run) tbuf_append(b, run, (size_t)(p - run));
    tbuf_putc(b, '"');
}

size_t tj_string_size(const char *s, size_t len)
{
    size_t n = len + 2;
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        while (end - p >= 8 && !write_special8(load8(p))) p += 8;
        if (p == end) break;
        if (!needs_escape(p, end)) { p++; continue; }
        unsigned char c = *p;
        if (c == 0xE2) { n += 3; p += 3; continue; } /* 3 bytes -> \u2028 */
        n += c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t' ? 1 : 5;
        p++;
    }
    return n;
}

/* Raw JSON (a caller's properties or traits, validated at the call) goes out as given, except
 * that line breaks become spaces: in a valid text they can only be whitespace between tokens
 * (inside a string they would have to be escaped), and a message must stay on one line, or a
 * pretty-printed properties object split one NDJSON record into several. */
static void write_raw(tbuf *b, const char *s, size_t len)
{
    size_t at = b->len;
    tbuf_append(b, s, len);
    if (b->oom || (!memchr(s, '\n', len) && !memchr(s, '\r', len))) return;
    for (char *p = b->data + at, *end = b->data + b->len; p < end; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}

static int write_value(tbuf *b, const tj_value *v)
{
    switch (v->type) {
    case TJ_NULL: tbuf_append(b, "null", 4); break;
    case TJ_FALSE: tbuf_append(b, "false", 5); break;
    case TJ_TRUE: tbuf_append(b, "true", 4); break;
    case TJ_INT: write_int(b, v->u.i); break;
    case TJ_DOUBLE:
        if (!isfinite(v->u.d)) return -1;
        tj_write_double(b, v->u.d);
        break;
    case TJ_STRING: tj_write_string(b, v->u.str.s, v->u.str.len); break;
    case TJ_RAW: write_raw(b, v->u.str.s, v->u.str.len); break;
    case TJ_ARRAY:
        tbuf_putc(b, '[');
        for (size_t i = 0; i < v->u.arr.n; i++) {
            if (i) tbuf_putc(b, ',');
            if (write_value(b, v->u.arr.items[i])) return -1;
        }
        tbuf_putc(b, ']');
        break;
    case TJ_OBJECT:
        tbuf_putc(b, '{');
        for (size_t i = 0; i < v->u.obj.n; i++) {
            const tj_member *m = &v->u.obj.m[i];
            if (i) tbuf_putc(b, ',');
            tj_write_string(b, m->key, m->klen);
            tbuf_putc(b, ':');
            if (write_value(b, m->val)) return -1;
        }
        tbuf_putc(b, '}');
        break;
    default: return -1;
    }
    return b->oom ? -1 : 0;
}

int tj_write(tbuf *b, const tj_value *v)
{
    if (write_value(b, v)) return b->oom ? TALLY_ENOMEM : TALLY_EINVAL;
    return TALLY_OK;
}
