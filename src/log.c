#include <stdarg.h>
#include <stdio.h>

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

void tly_log(const tly_logger *lg, int level, const char *fmt, ...)
{
    if (!lg || level > lg->level) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (lg->fn) {
        tly_in_log_callback++;
        lg->fn(lg->ud, level, line);
        tly_in_log_callback--;
    } else {
        /* one fprintf per line so concurrent lines do not interleave mid-line */
        fprintf(stderr, "tally: %s: %s\n", level_name(level), line);
    }
}
