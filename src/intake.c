#include "intake.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

/* ---- the ring ---- */

static int ring_init(ptr_ring *g, size_t rows)
{
    size_t n = 2;
    while (n < rows) n <<= 1;
    g->cells = calloc(n, sizeof *g->cells);
    if (!g->cells) return -1;
    for (size_t i = 0; i < n; i++) atomic_init(&g->cells[i].seq, i);
    g->mask = n - 1;
    atomic_init(&g->head, 0);
    atomic_init(&g->tail, 0);
    return 0;
}

/* The cell protocol: a cell whose seq equals the position is free for the producer claiming that
 * position; seq == position + 1 means filled and ready for the consumer; after taking it the
 * consumer sets seq = position + capacity, freeing it for the next lap. */
static int ring_push(ptr_ring *g, intake_rec *r)
{
    size_t pos = atomic_load_explicit(&g->head, memory_order_relaxed);
    for (;;) {
        intake_cell *c = &g->cells[pos & g->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)pos;
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&g->head, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                c->rec = r;
                atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
                return 0;
            }
        } else if (dif < 0) {
            return -1; /* the cell still holds last lap's record: no free cell */
        } else {
            pos = atomic_load_explicit(&g->head, memory_order_relaxed);
        }
    }
}

static intake_rec *ring_pop(ptr_ring *g)
{
    size_t pos = atomic_load_explicit(&g->tail, memory_order_relaxed);
    for (;;) {
        intake_cell *c = &g->cells[pos & g->mask];
        size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&g->tail, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                intake_rec *r = c->rec;
                atomic_store_explicit(&c->seq, pos + g->mask + 1, memory_order_release);
                return r;
            }
        } else if (dif < 0) {
            return NULL;
        } else {
            pos = atomic_load_explicit(&g->tail, memory_order_relaxed);
        }
    }
}

/* ---- record pools ---- */

static void *slab_new(void)
{
#ifdef MAP_POPULATE
    /* one call faults every page in, far cheaper than a fault per page on first touch */
    void *s = mmap(NULL, REC_SLAB_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return s == MAP_FAILED ? NULL : s;
#else
    void *s = malloc(REC_SLAB_BYTES);
    if (s) memset(s, 0, REC_SLAB_BYTES);
    return s;
#endif
}

static void slab_free(void *s)
{
#ifdef MAP_POPULATE
    if (s) munmap(s, REC_SLAB_BYTES);
#else
    free(s);
#endif
}

/* The pool grows only when every record it has is queued or being processed, so it holds at
 * most as many as the queue did at its deepest (up to max_records, plus a slab): memory the
 * queue had in use then anyway, kept for the next burst. */
static int pool_init(rec_pool *p, size_t slot, size_t max_records)
{
    size_t per = REC_SLAB_BYTES / slot, max_slabs = max_records / per + 1;
    if (max_slabs > 1024) max_slabs = 1024; /* 64 MiB: past that, records beyond it are malloc'd */
    p->slot = slot;
    p->max_slabs = max_slabs;
    atomic_init(&p->nslabs, 0);
    if (!(p->slabs = calloc(max_slabs, sizeof *p->slabs))) return -1;
    if (ring_init(&p->spare, max_slabs * (REC_SLAB_BYTES / slot))) {
        free(p->slabs);
        p->slabs = NULL;
        return -1;
    }
    return 0;
}

static void pool_destroy(rec_pool *p)
{
    if (!p->slabs) return;
    size_t n = atomic_load(&p->nslabs);
    for (size_t i = 0; i < n && i < p->max_slabs; i++) slab_free(p->slabs[i]);
    free(p->slabs);
    free(p->spare.cells);
    p->slabs = NULL;
    p->spare.cells = NULL;
}

/* A free record of the pool, making a slab when none is left; NULL when the pool is at its cap
 * or out of memory (the caller mallocs). Callers may race here: each claims its own slab index. */
static intake_rec *pool_get(rec_pool *p)
{
    intake_rec *r = ring_pop(&p->spare);
    if (r) return r;
    size_t i = atomic_load_explicit(&p->nslabs, memory_order_relaxed);
    do {
        if (i >= p->max_slabs) return NULL;
    } while (!atomic_compare_exchange_weak_explicit(&p->nslabs, &i, i + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    char *slab = slab_new();
    p->slabs[i] = slab; /* read only by pool_destroy, after every thread is done */
    if (!slab) return NULL;
    for (size_t k = 1; k < REC_SLAB_BYTES / p->slot; k++) {
        intake_rec *o = (intake_rec *)(slab + k * p->slot);
        o->pooled = 1;
        int full = ring_push(&p->spare, o);
        assert(!full); /* the ring holds every record the pool can have */
        (void)full;
    }
    r = (intake_rec *)slab;
    r->pooled = 1;
    return r;
}

/* ---- records ---- */

intake_rec *intake_rec_new(intake *q, int kind, const char *s1, size_t l1, const char *s2, size_t l2, const char *json,
                           size_t json_len)
{
    size_t size = sizeof(intake_rec) + l1 + 1 + l2 + 1 + json_len + 1;
    intake_rec *r = NULL;
    rec_pool *pool = !q || size > REC_SPARE_BIG_BYTES ? NULL : size > REC_SPARE_BYTES ? &q->spare_big : &q->spare;
    if (pool && (r = pool_get(pool))) {
        assert(r->pooled);
    } else {
        if (!(r = malloc(size > REC_SPARE_BIG_BYTES ? size : size > REC_SPARE_BYTES ? REC_SPARE_BIG_BYTES : REC_SPARE_BYTES)))
            return NULL;
        r->pooled = 0;
    }
    r->size = (uint32_t)size;
    r->kind = (uint8_t)kind;
    r->reserved = 0;
    r->at_ticks = (uint8_t)tly_ticks_ok;
    r->at = tly_ticks_ok ? (int64_t)tly_ticks() : tly_now_ms();
    char *p = r->data;
    r->s1 = s1 ? p : NULL;
    r->s1_len = (uint32_t)l1;
    if (s1) memcpy(p, s1, l1);
    p[l1] = '\0';
    p += l1 + 1;
    r->s2 = s2 ? p : NULL;
    r->s2_len = (uint32_t)l2;
    if (s2) memcpy(p, s2, l2);
    p[l2] = '\0';
    p += l2 + 1;
    r->json = json ? p : NULL;
    r->json_len = (uint32_t)json_len;
    if (json) memcpy(p, json, json_len);
    p[json_len] = '\0';
    return r;
}

void intake_rec_free(intake *q, intake_rec *r)
{
    if (!r) return;
    if (!r->pooled) {
        free(r);
        return;
    }
    /* only q's own pools hand out pooled records, and their rings hold all of them */
    assert(q);
    int full = ring_push(r->size <= REC_SPARE_BYTES ? &q->spare.spare : &q->spare_big.spare, r);
    assert(!full);
    (void)full;
}

int64_t intake_rec_time(const intake_rec *r) { return r->at_ticks ? tly_ticks_wall_ms((uint64_t)r->at) : r->at; }

/* ---- the queue ---- */

int intake_init(intake *q, size_t rows, size_t max_bytes, int on_full)
{
    if (ring_init(&q->ring, rows)) return TALLY_ENOMEM;
    /* sized for records of half the class or more: a queue of smaller ones mallocs the rest */
    size_t small = max_bytes / (REC_SPARE_BYTES / 2), big = max_bytes / (REC_SPARE_BIG_BYTES / 2);
    if (pool_init(&q->spare, REC_SPARE_BYTES, small < rows ? small : rows)) {
        free(q->ring.cells);
        q->ring.cells = NULL;
        return TALLY_ENOMEM;
    }
    if (pool_init(&q->spare_big, REC_SPARE_BIG_BYTES, big < rows ? big : rows)) {
        free(q->ring.cells);
        pool_destroy(&q->spare);
        q->ring.cells = NULL;
        return TALLY_ENOMEM;
    }
    q->max_bytes = max_bytes;
    q->on_full = on_full;
    atomic_init(&q->bytes, 0);
    atomic_init(&q->dropped, 0);
    return TALLY_OK;
}

void intake_destroy(intake *q)
{
    if (!q->ring.cells) return; /* never made (tally_open failed before it), or destroyed already */
    intake_rec *r;
    while ((r = intake_pop(q)) != NULL) intake_rec_free(q, r);
    pool_destroy(&q->spare);
    pool_destroy(&q->spare_big);
    free(q->ring.cells);
    q->ring.cells = NULL;
}

intake_rec *intake_pop(intake *q)
{
    intake_rec *r = ring_pop(&q->ring);
    size_t before = r ? atomic_fetch_sub_explicit(&q->bytes, r->size, memory_order_relaxed) : 0;
    assert(before >= (r ? r->size : 0)); /* counted when it was pushed */
    (void)before;
    return r;
}

static void drop_one_oldest(intake *q)
{
    intake_rec *old = intake_pop(q);
    if (old) {
        intake_rec_free(q, old);
        atomic_fetch_add_explicit(&q->dropped, 1, memory_order_relaxed);
    }
}

int intake_push(intake *q, intake_rec *r, int *dropped_oldest)
{
    *dropped_oldest = 0;
    size_t before = atomic_fetch_add_explicit(&q->bytes, r->size, memory_order_relaxed);
    int over_bytes = before + r->size > q->max_bytes;
    if (q->on_full == ON_FULL_DROP_NEWEST) {
        if (over_bytes || ring_push(&q->ring, r) != 0) {
            atomic_fetch_sub_explicit(&q->bytes, r->size, memory_order_relaxed);
            atomic_fetch_add_explicit(&q->dropped, 1, memory_order_relaxed);
            return TALLY_EFULL;
        }
        return TALLY_OK;
    }
    /* drop_oldest: make room by discarding from the front until this record fits. Bounded: each
     * round removes one record or finds the queue empty, in which case the record fits alone. */
    while (atomic_load_explicit(&q->bytes, memory_order_relaxed) > q->max_bytes &&
           atomic_load_explicit(&q->ring.tail, memory_order_relaxed) !=
               atomic_load_explicit(&q->ring.head, memory_order_relaxed)) {
        drop_one_oldest(q);
        *dropped_oldest = 1;
    }
    while (ring_push(&q->ring, r) != 0) {
        drop_one_oldest(q);
        *dropped_oldest = 1;
    }
    return TALLY_OK;
}

size_t intake_position(intake *q) { return atomic_load_explicit(&q->ring.head, memory_order_acquire); }
size_t intake_taken(intake *q) { return atomic_load_explicit(&q->ring.tail, memory_order_acquire); }
size_t intake_bytes(intake *q) { return atomic_load_explicit(&q->bytes, memory_order_relaxed); }
