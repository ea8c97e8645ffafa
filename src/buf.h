/* Growable byte buffer used by the codec, the message builder and the destinations.
 * Allocation failure is sticky (b->oom) so call sites can append freely and check once. */
#ifndef TALLY_BUF_H
#define TALLY_BUF_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tally.h"

typedef struct tbuf {
    char  *data;   /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    int    oom;    /* set once any append failed; contents are then incomplete */
} tbuf;

#define TBUF_INIT {NULL, 0, 0, 0}

int  tbuf_grow(tbuf *b, size_t extra);              /* tbuf_reserve's slow path; its returns */

/* The appends are inline: serializing a message calls them for every key, value and comma, and
 * the calls themselves were a fifth of the processor's time (bench/README.md). */
static inline int tbuf_reserve(tbuf *b, size_t extra) /* TALLY_OK, or TALLY_ENOMEM (and b->oom set) */
{
    if (!b->oom && extra < b->cap - b->len) return TALLY_OK; /* room for extra bytes and the NUL */
    return tbuf_grow(b, extra);
}

static inline void tbuf_append(tbuf *b, const void *p, size_t n)
{
    if (tbuf_reserve(b, n)) return;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static inline void tbuf_putc(tbuf *b, char c)
{
    if (tbuf_reserve(b, 1)) return;
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
}

void tbuf_puts(tbuf *b, const char *s);
void tbuf_printf(tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tbuf_reset(tbuf *b);                           /* len = 0, keeps capacity */
void tbuf_free(tbuf *b);
char *tbuf_steal(tbuf *b);                          /* caller owns the returned string; b is reset */

#endif
