#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[512];

int tly_fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return rc;
}

void tly_clear_error(void) { last_error[0] = '\0'; }

int tly_err_set(tly_err *e, int rc, const char *fmt, ...)
{
    assert(e && rc != TALLY_OK);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return rc;
}

int tly_err_wrap(tly_err *e, int rc, const char *prefix)
{
    assert(e && prefix);
    char tmp[sizeof e->msg];
    size_t n = strlen(prefix);
    if (n > sizeof tmp - 3) n = sizeof tmp - 3;
    memcpy(tmp, prefix, n);
    memcpy(tmp + n, ": ", 2);
    size_t room = sizeof tmp - n - 2, len = strnlen(e->msg, sizeof e->msg);
    if (len >= room) len = room - 1;
    memcpy(tmp + n + 2, e->msg, len);
    tmp[n + 2 + len] = '\0';
    memcpy(e->msg, tmp, sizeof tmp);
    return rc;
}

int tly_publish(int rc, const tly_err *e)
{
    assert(e);
    if (rc != TALLY_OK) { /* the public text keeps what fits, as tly_fail's does */
        size_t n = strnlen(e->msg, sizeof last_error - 1);
        memcpy(last_error, e->msg, n);
        last_error[n] = '\0';
    }
    return rc;
}

const char *tally_errmsg(const tally_t *t)
{
    (void)t; /* the text is per thread, whichever handle failed on it */
    return last_error;
}

const char *tally_strerror(int rc)
{
    switch (rc) {
    case TALLY_OK:        return "ok";
    case TALLY_EINVAL:    return "invalid argument";
    case TALLY_ENOMEM:    return "out of memory";
    case TALLY_EFULL:     return "queue full: message dropped";
    case TALLY_ETIMEDOUT: return "timed out";
    case TALLY_ECLOSED:   return "handle is closing";
    case TALLY_EFORK:     return "handle belongs to the parent process (fork)";
    case TALLY_ECONFIG:   return "bad configuration";
    case TALLY_EIO:       return "input/output error";
    case TALLY_ETOOBIG:   return "message too large";
    case TALLY_ELUA:      return "Lua script error";
    default:              return "unknown error";
    }
}

const char *tally_version(void) { return TALLY_VERSION; }

void tally_free(void *p) { free(p); }
