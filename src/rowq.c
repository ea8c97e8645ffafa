#include "rowq.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct rowq {
    row            *slots;
    size_t          mask;
    _Atomic size_t  head, tail;    /* head: next to write (producer), tail: next to read */
    _Atomic int     waiting;       /* the producer sleeps for room */
    pthread_mutex_t mu;
    pthread_cond_t  room;
};

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
    row r;
    while (rowq_pop(q, &r)) free(r.data);
    pthread_cond_destroy(&q->room);
    pthread_mutex_destroy(&q->mu);
    free(q->slots);
    free(q);
}

int rowq_full(rowq *q)
{
    return atomic_load_explicit(&q->head, memory_order_relaxed) - atomic_load(&q->tail) > q->mask;
}

void rowq_push(rowq *q, row r)
{
    if (rowq_full(q)) {
        pthread_mutex_lock(&q->mu);
        /* seq_cst on both sides: either the consumer sees `waiting`, or we see its pop */
        atomic_store(&q->waiting, 1);
        while (rowq_full(q)) pthread_cond_wait(&q->room, &q->mu);
        atomic_store(&q->waiting, 0);
        pthread_mutex_unlock(&q->mu);
    }
    size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    q->slots[h & q->mask] = r;
    atomic_store_explicit(&q->head, h + 1, memory_order_release);
}

int rowq_pop(rowq *q, row *out)
{
    size_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    if (t == atomic_load_explicit(&q->head, memory_order_acquire)) return 0;
    *out = q->slots[t & q->mask];
    atomic_store(&q->tail, t + 1);
    if (atomic_load(&q->waiting)) {
        pthread_mutex_lock(&q->mu);
        pthread_cond_signal(&q->room);
        pthread_mutex_unlock(&q->mu);
    }
    return 1;
}

int rowq_empty(rowq *q)
{
    return atomic_load_explicit(&q->tail, memory_order_relaxed) == atomic_load_explicit(&q->head, memory_order_acquire);
}
