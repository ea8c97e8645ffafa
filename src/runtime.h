/* The runtime handle, and the two threads past the intake: the processor (stamping, rules,
 * serializing: processor.c) and the worker (store, delivery: worker.c), joined by a row queue. */
#ifndef TALLY_RUNTIME_H
#define TALLY_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>

#include "config.h"
#include "dest.h"
#include "intake.h"
#include "internal.h"

/* A caller waiting in tally_flush(): lives on that caller's stack, linked into t->flushes. */
typedef struct flush_req {
    size_t            ticket;   /* intake position at the call: everything before must be delivered */
    int               drained;  /* worker: all records before the ticket are processed */
    int               done;
    int64_t           mark;     /* worker: the last store id when it drained */
    int               reload;   /* a tally_reload request rather than a flush */
    uint64_t          seq;      /* unique per request */
    int               result;   /* reload: its status */
    char              err[512]; /* reload: why it failed */
    struct flush_req *next;
} flush_req;

/* Callers write the first two, the processor and the worker the rest: on separate cache lines,
 * or every tally_track would pull the line the processor just wrote (false sharing). Messages
 * accepted are not counted here: the intake's position already counts every record queued. */
typedef struct tally_counters {
    _Alignas(64) _Atomic uint64_t control; /* control records queued (reset, session start) */
    _Atomic uint64_t rejected;       /* refused at the call (invalid) */
    _Alignas(64) _Atomic uint64_t processed; /* stamped and handed to destinations */
    _Atomic uint64_t invalid;        /* refused by the processor after the call (should not happen) */
    _Atomic uint64_t oversize;       /* grown past 32 KB by rules (or stamping, should the reserve miss) */
    _Atomic uint64_t store_dropped;  /* removed by the store's full policy */
    _Atomic uint64_t store_errors;   /* failed store commits (disk full, I/O): what they held is retried */
    _Atomic uint64_t store_given_up; /* messages the store never took: still unwritable at close, or no memory */
    _Atomic uint64_t violations;     /* ctx:violation calls by rules */
    _Atomic uint64_t rule_dropped;   /* messages dropped by rules (nil, block, fail closed) */
} tally_counters;

struct tally {
    struct tally_config cfg;
    tly_logger          log;
    intake              q;

    /* Read by every call and written (almost) never, so this line stays shared in every core's
     * cache. Waking the processor (callers, after queuing) and the worker (the processor, after
     * handing rows over): the eventfd is written only when the thread said it sleeps, so the
     * common case costs an atomic load, not a syscall. */
    _Alignas(64) unsigned fork_gen; /* process generation at open; see tally.c */
    _Atomic int         closing;
    int                 wake_fd;
    _Atomic int         sleeping;   /* written by the processor only when it goes to sleep */
    _Atomic int64_t     clock_skew_ms; /* tests move time forward instead of sleeping */
    /* What stamping the ids adds to a message (userId, context.traits), so a call can refuse a
     * message that would only go over 32 KB once stamped (tally.c, reserve). stamp_ids: exact for
     * the identity the processor has applied; stamp_pending: identify calls not applied yet
     * (count << 48) and the most any of them may make it (low 48 bits), one word so the last
     * one applied can clear the bound without losing a caller's raise. */
    _Atomic size_t      stamp_ids;
    _Atomic uint64_t    stamp_pending;

    tally_counters      n;
    _Atomic uint64_t    store_held;   /* messages held in memory while the store cannot write */
    _Atomic int         store_failing; /* its commits fail (worker.c): flush says so */

    _Alignas(64) int    w_wake_fd;
    _Atomic int         w_sleeping;
    struct rowq        *rows;          /* processor -> worker */
    _Atomic size_t      processed_pos; /* intake records handed over (or dropped by the intake) */
    _Atomic int         p_done;        /* the processor has stopped: no more rows will come */
    pthread_t           p_thread;
    int                 p_started;
    struct processor   *p;

    pthread_mutex_t     mu;         /* guards flushes and stop */
    pthread_cond_t      cv;
    flush_req          *flushes;
    uint64_t            next_seq;   /* numbers flush_req (under mu) */
    char               *identity_snapshot; /* JSON of the worker's current ids, for tally_identity */
    struct rules       *rules;      /* the worker's current rule set, for tally_stats (under mu) */
    int                 stop;
    pthread_t           thread;

    /* worker-owned below this line (dests: the processor reads ndests and names only) */
    dest               *dests;
    size_t              ndests;
    struct worker      *w;
};

void tly_stamp_applied(tally_t *t);       /* the processor applied an identify a caller reserved for */
void tly_wake(tally_t *t);                /* the processor: a record was queued */
void tly_wake_worker(tally_t *t);         /* the worker: rows were handed over */
void tly_wake_worker_forced(tally_t *t);  /* the worker, even if it looks busy */
void tly_wake_all(tally_t *t);            /* both, even if busy: a request (flush, reload, stop) */
int64_t tly_clock_mono(tally_t *t);   /* monotonic ms plus clock_skew_ms */
int64_t tly_clock_wall(tally_t *t);   /* wall ms plus clock_skew_ms */
int  worker_start(tally_t *t);     /* TALLY_OK or fails (errmsg set) */
void worker_stop(tally_t *t);      /* asks the worker to finish what is queued and joins it */

#endif
