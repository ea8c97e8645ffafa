#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

_Thread_local int tly_in_log_callback;

static const char *level_name(int level)
{
    switch (level) {
    case TALLY_LOG_ERROR: return "error";
    case TALLY_LOG_WARN:  return "warn";
    case TALLY_LOG_INFO:  return "info";
    default:              return "debug";
    }
}

/* Length of the well-formed UTF-8 sequence at p (1..4), or 0 when it is not one. */
static int utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    int n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!n || end - p < n) return 0;
    for (int i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    if (n == 3 && ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))) return 0; /* overlong, surrogate */
    if (n == 4 && ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))) return 0;  /* overlong, > U+10FFFF */
    return n;
}

/* Log text carries what scripts and callers wrote (rule names, ctx:log text, error messages): a
 * newline in it would forge a line of its own, an escape sequence would reach the operator's
 * terminal. So every line leaves here with C0/C1 controls, DEL and bytes that are not UTF-8 as
 * \xNN (\n, \r, \t by name): one line in, exactly one line out. */
void tly_escape(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)in, *end = p + strlen(in);
    size_t o = 0;
    while (p < end && o + 5 < outlen) {
        int n = utf8_len(p, end);
        int c1 = n == 2 && p[0] == 0xC2 && p[1] < 0xA0;
        if (n && !c1 && p[0] >= 0x20 && p[0] != 0x7F) {
            if (o + (size_t)n >= outlen) break;
            memcpy(out + o, p, (size_t)n);
            o += (size_t)n;
            p += n;
            continue;
        }
        for (int i = 0; i < (c1 ? 2 : 1); i++, p++) {
            out[o++] = '\\';
            if (*p == '\n') out[o++] = 'n';
            else if (*p == '\r') out[o++] = 'r';
            else if (*p == '\t') out[o++] = 't';
            else {
                out[o++] = 'x';
                out[o++] = hex[*p >> 4];
                out[o++] = hex[*p & 15];
            }
        }
    }
    out[o] = '\0';
}

void tly_log(const tly_logger *lg, int level, const char *fmt, ...)
{
    if (!lg || level > lg->level) return;
    char line[1024], safe[4 * sizeof line];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    tly_escape(line, safe, sizeof safe);
    if (lg->fn) {
        tly_in_log_callback++;
        lg->fn(lg->ud, level, safe);
        tly_in_log_callback--;
    } else {
        /* one fprintf per line so concurrent lines do not interleave mid-line */
        fprintf(stderr, "tally: %s: %s\n", level_name(level), safe);
    }
}
