/* How a destination reports a batch's fate. Apart from dest.c, whose registry names every
 * backend: the backends use this and dest.c uses them, so it cannot live there without the
 * two depending on each other (tests/make/test_no_src_cycles.sh). */
#include <stdarg.h>
#include <stdio.h>

#include "dest.h"

void dest_outcome_set(dest_outcome *o, int result, int status, const char *fmt, ...)
{
    o->result = result;
    o->status = status;
    o->retry_after_ms = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->reason, sizeof o->reason, fmt, ap);
    va_end(ap);
}
