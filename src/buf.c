#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tbuf_grow(tbuf *b, size_t extra)
{
    if (b->oom) return TALLY_ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return TALLY_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) { b->oom = 1; return TALLY_ENOMEM; }
    b->data = p;
    b->cap = cap;
    return TALLY_OK;
}

void tbuf_puts(tbuf *b, const char *s) { tbuf_append(b, s, strlen(s)); }

void tbuf_printf(tbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) { tbuf_append(b, small, (size_t)n); return; }
    if (tbuf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void tbuf_reset(tbuf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void tbuf_free(tbuf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

char *tbuf_steal(tbuf *b)
{
    char *p = b->data;
    if (!p) p = calloc(1, 1);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    return p;
}
