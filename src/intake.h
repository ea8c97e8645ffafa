/* The intake: a bounded multi-producer queue between caller threads and the processor thread.
 *
 * Callers must never block, so the queue is lock-free (a ring of sequenced cells, one pointer
 * each). It is bounded twice: by cells (max_queue_rows) and by the bytes of the records it holds
 * (max_queue_bytes), so memory stays capped whatever the message sizes. When full, the policy
 * decides: drop_newest refuses the new record (the caller gets TALLY_EFULL), drop_oldest removes
 * the oldest queued record to make room. Either way the drop is counted. */
#ifndef TALLY_INTAKE_H
#define TALLY_INTAKE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum rec_kind {
    REC_TRACK, REC_IDENTIFY, REC_PAGE, REC_SCREEN, REC_GROUP, REC_ALIAS, REC_SEND, REC_RESET,
    REC_SESSION_START, REC_CONSENT /* json: the whole merged preferences (tally_consent) */
};

/* One caller request, copied into a single allocation. s1/s2 are the call's string arguments
 * (event, user id, name, group id, previous id, category), json its JSON argument. */
typedef struct intake_rec {
    uint32_t size;       /* bytes in use, for the byte bound; up to REC_SPARE_(BIG_)BYTES: a spare's */
    uint8_t  kind;       /* enum rec_kind */
    uint8_t  at_ticks;   /* `at` is tly_ticks(), not wall ms */
    uint8_t  reserved;   /* an identify counted in tally_t.stamp_pending */
    uint8_t  pooled;     /* carved from a rec_pool slab: goes back to the pool, never to free() */
    int64_t  at;         /* when the call happened: the message's timestamp (intake_rec_time) */
    const char *s1, *s2, *json;
    uint32_t s1_len, s2_len, json_len;
    char     data[];
} intake_rec;

typedef struct intake intake;
/* q: the intake whose spare records to reuse (NULL: malloc). The lengths are the strings' (the
 * caller measured them when it checked them); NULL ones are 0. */
intake_rec *intake_rec_new(intake *q, int kind, const char *s1, size_t l1, const char *s2, size_t l2, const char *json,
                           size_t json_len);
/* Gives a record back: to q's pool when it came from one, else free. */
void intake_rec_free(intake *q, intake_rec *r);
int64_t intake_rec_time(const intake_rec *r); /* wall ms of the call */

enum { ON_FULL_DROP_NEWEST, ON_FULL_DROP_OLDEST };

typedef struct intake_cell {
    _Atomic size_t seq;
    intake_rec    *rec;
} intake_cell;

/* A bounded lock-free ring of pointers, many producers and many consumers. */
typedef struct ptr_ring {
    intake_cell *cells;
    size_t       mask;
    _Alignas(64) _Atomic size_t head;   /* next position to fill */
    _Alignas(64) _Atomic size_t tail;   /* next position to take */
} ptr_ring;

/* Records the processor is done with go back to callers through `spare` instead of free(): a free
 * of a block another thread allocated takes that thread's malloc arena lock, which the calling
 * thread's next malloc then waits for (~20 ns of tally_track's p50, bench/README.md). */
#define REC_SPARE_BYTES 256
/* Whole messages (tally_send: a server's request, ~300-1000 bytes) get a second class of spares,
 * for the same reason; larger records are malloc'd and freed each time. */
#define REC_SPARE_BIG_BYTES 1024
/* Spares are carved from slabs whose pages are faulted in when the slab is made (MAP_POPULATE
 * where there is one): a first touch of fresh heap page by page put a page fault (~17 us on the
 * bench VM) into every 4th tally_send and 16th tally_track while the queue grew, the p99 of both
 * (bench/README.md). A pool grows only when all its records are in use, up to what a full queue
 * of half-class records can hold, and keeps its slabs until intake_destroy. */
#define REC_SLAB_BYTES (64 * 1024)

typedef struct rec_pool {
    ptr_ring         spare;      /* free records of `slot` bytes; holds every record of the pool */
    void           **slabs;      /* [max_slabs]; slabs[i] NULL: that slab could not be made */
    size_t           max_slabs;
    size_t           slot;       /* REC_SPARE_BYTES or REC_SPARE_BIG_BYTES */
    _Atomic size_t   nslabs;     /* slabs claimed so far */
} rec_pool;

struct intake {
    ptr_ring     ring;                  /* head: producers (callers); tail: the processor, and
                                         * drop_oldest producers */
    rec_pool     spare;                 /* records of REC_SPARE_BYTES to reuse */
    rec_pool     spare_big;             /* records of REC_SPARE_BIG_BYTES to reuse */
    size_t       max_bytes;
    int          on_full;
    _Alignas(64) _Atomic size_t bytes;  /* bytes of queued records */
    _Atomic uint64_t dropped;           /* records dropped by the full policy */
};

/* rows: rounded up to 2^k. TALLY_OK or TALLY_ENOMEM: the caller names what it was opening. */
int  intake_init(intake *q, size_t rows, size_t max_bytes, int on_full);
void intake_destroy(intake *q);          /* frees queued records too */
/* TALLY_OK queued; TALLY_EFULL refused (drop_newest, full): the caller words the error, with the
 * configuration it knows. Under drop_oldest it always queues; *dropped_oldest is set to 1 when an
 * older record was discarded for it. */
int  intake_push(intake *q, intake_rec *r, int *dropped_oldest);
intake_rec *intake_pop(intake *q);       /* NULL when empty */
size_t intake_position(intake *q);       /* how many records have ever been queued */
size_t intake_taken(intake *q);          /* how many have left the queue (popped or dropped) */
size_t intake_bytes(intake *q);

#endif
