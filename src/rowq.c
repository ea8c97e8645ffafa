#include "rowq.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct slot {
    row    r;
    size_t cap;   /* bytes allocated at r.data */
} slot;

struct rowq {
    slot           *slots;
    size_t          mask;
    _Atomic size_t  head, tail;    /* head: next to write (producer), tail: next to read */
    _Atomic int     waiting;       /* the producer sleeps for room */
    pthread_mutex_t mu;
    pthread_cond_t  room;
};

#define SLOT_MIN  768     /* a typical message and its envelope */
#define SLOT_KEEP 4096    /* larger buffers go back to this size when the slot is reused */

rowq *rowq_new(size_t capacity)
{
    size_t n = 2;
    while (n < capacity) n <<= 1;
    rowq *q = calloc(1, sizeof *q);
    if (!q || !(q->slots = calloc(n, sizeof *q->slots))) {
        free(q);
        return NULL;
    }
    q->mask = n - 1;
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    atomic_init(&q->waiting, 0);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->room, NULL);
    return q;
}

void rowq_free(rowq *q)
{
    if (!q) return;
    for (size_t i = 0; i <= q->mask; i++) free(q->slots[i].r.data);
    pthread_cond_destroy(&q->room);
    pthread_mutex_destroy(&q->mu);
    free(q->slots);
    free(q);
}

int rowq_full(rowq *q)
{
    return atomic_load_explicit(&q->head, memory_order_relaxed) - atomic_load(&q->tail) > q->mask;
}

char *rowq_slot(rowq *q, size_t len)
{
    if (rowq_full(q)) {
        pthread_mutex_lock(&q->mu);
        /* seq_cst on both sides: either the consumer sees `waiting`, or we see its release */
        atomic_store(&q->waiting, 1);
        while (rowq_full(q)) pthread_cond_wait(&q->room, &q->mu);
        atomic_store(&q->waiting, 0);
        pthread_mutex_unlock(&q->mu);
    }
    slot *s = &q->slots[atomic_load_explicit(&q->head, memory_order_relaxed) & q->mask];
    size_t want = len + 1 > SLOT_MIN ? len + 1 : SLOT_MIN;
    if (s->cap < want || (s->cap > SLOT_KEEP && want <= SLOT_KEEP)) {
        char *p = realloc(s->r.data, want);
        if (!p) return NULL;
        s->r.data = p;
        s->cap = want;
    }
    return s->r.data;
}

void rowq_publish(rowq *q, int dest, uint32_t len)
{
    size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    slot *s = &q->slots[h & q->mask];
    assert(h - atomic_load(&q->tail) <= q->mask && len < s->cap); /* rowq_slot made room for it */
    s->r.dest = dest;
    s->r.len = len;
    s->r.data[len] = '\0';
    atomic_store_explicit(&q->head, h + 1, memory_order_release);
}

int rowq_peek(rowq *q, row *out)
{
    size_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    if (t == atomic_load_explicit(&q->head, memory_order_acquire)) return 0;
    *out = q->slots[t & q->mask].r;
    return 1;
}

void rowq_release(rowq *q)
{
    assert(!rowq_empty(q)); /* only a row rowq_peek returned is released */
    atomic_store(&q->tail, atomic_load_explicit(&q->tail, memory_order_relaxed) + 1);
    if (atomic_load(&q->waiting)) {
        pthread_mutex_lock(&q->mu);
        pthread_cond_signal(&q->room);
        pthread_mutex_unlock(&q->mu);
    }
}

int rowq_empty(rowq *q)
{
    return atomic_load_explicit(&q->tail, memory_order_relaxed) == atomic_load_explicit(&q->head, memory_order_acquire);
}
