/* The runtime handle, and the owner of its lifecycle (runtime.c): the store, the destinations and
 * the two threads past the intake, the processor (identity, rules, serializing: processor.c) and
 * the worker (store, delivery: worker.c), joined by a row queue (rowq.h). runtime.c opens and
 * starts them in order and stops them in order; the threads' files use this header (the handle,
 * the wake and clock helpers) and the queues they read or write, never each other.
 * docs/ARCHITECTURE.md draws the whole picture. */
#ifndef TALLY_RUNTIME_H
#define TALLY_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "config.h"
#include "consent.h"
#include "dest.h"
#include "intake.h"
#include "internal.h"
#include "requests.h"

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
    _Atomic uint64_t opted_out;      /* messages not kept: the device opted out (consent) */
    _Atomic uint64_t forgotten;      /* messages erased by tally_forget */
    _Atomic uint64_t dead_pruned;    /* dead letters removed by their retention (dead_letter_max_*) */
} tally_counters;

struct tally {
    struct tally_config cfg;         /* set at open, read-only afterwards */
    tly_logger          log;         /* set at open, read-only afterwards */
    intake              q;           /* callers push, the processor pops (intake.h) */

    /* Read by every call and written (almost) never, so this line stays shared in every core's
     * cache. Waking the processor (callers, after queuing) and the worker (the processor, after
     * handing rows over): the eventfd is written only when the thread said it sleeps, so the
     * common case costs an atomic load, not a syscall. */
    _Alignas(64) unsigned fork_gen;  /* process generation at open; see tally.c */
    _Atomic int         closing;
    int                 proc_wake_fd;
    _Atomic int         proc_sleeping; /* set by the processor only when it goes to sleep */
    _Atomic int64_t     clock_skew_ms; /* tests move time forward instead of sleeping */
    /* What stamping the ids adds to a message (userId, context.traits), so a call can refuse a
     * message that would only go over 32 KB once stamped (tally.c, reserve). stamp_ids: exact for
     * the identity the processor has applied; stamp_pending: identify calls not applied yet
     * (count << 48) and the most any of them may make it (low 48 bits), one word so the last
     * one applied can clear the bound without losing a caller's raise. */
    _Atomic size_t      stamp_ids;
    _Atomic uint64_t    stamp_pending;

    tally_counters      n;
    _Atomic uint64_t    store_held;    /* messages held in memory while the store cannot write */
    _Atomic int         store_failing; /* its commits fail (worker.c): flush says so */

    _Alignas(64) int    work_wake_fd;
    _Atomic int         work_sleeping; /* set by the worker only when it goes to sleep */
    struct rowq        *rows;          /* processor -> worker; made and freed by the runtime */
    _Atomic size_t      processed_pos; /* intake records handed over (or dropped by the intake) */
    _Atomic int         proc_done;     /* the processor has stopped: no more rows will come */
    _Atomic int         stop;          /* the runtime asks both threads to finish (close) */

    /* The runtime's alone (runtime.c): the threads, and whether each was started. */
    pthread_t           proc_thread;
    pthread_t           work_thread;
    int                 proc_started;
    int                 work_started;

    requests            req;           /* flush, reload: its own lock (requests.h) */

    /* What the processor publishes for callers, each under its own lock. */
    pthread_mutex_t     ident_mu;
    char               *identity_snapshot; /* under ident_mu: JSON of the processor's ids, for tally_identity */
    pthread_mutex_t     rules_mu;
    struct rules       *rules;         /* under rules_mu: the processor's rule set, for tally_stats */
    struct rules      **rule_sets;     /* under rules_mu: every rule state's copy of it (rule_threads), summed */
    size_t              nrule_sets;
    /* Remote rules (rules_remote.h): the worker offers a loaded, tested rule set here and the
     * processor takes it between two messages; remote is set at open, its counters are atomics. */
    _Atomic(struct rules_swap *) rules_next;
    _Atomic int64_t     canary_verdict; /* the processor's: +version promoted, -version rolled back */
    struct rules_remote *remote;

    /* Consent (consent.h): the destinations' categories, read-only once open; the preferences as
     * the calls merged them, under consent_mu, which also keeps tally_consent records in the
     * intake in the order they were merged; what stamping them adds to a message (only grows). */
    consent_cfg         consent;
    pthread_mutex_t     consent_mu;
    char               *consent_prefs;
    _Atomic size_t      consent_stamp;

    /* Opened and closed by the runtime; while the threads run: the store and the transfer handle
     * are the worker's alone (the processor reads the identity from the store before they start);
     * the destinations are the worker's, except ndests and their names, which the processor reads,
     * and their counters, which tally_stats reads. */
    struct store       *store;
    void               *transfers;     /* CURLM *: the destinations' transfers, on the worker's loop */
    dest               *dests;
    size_t              ndests;
    struct processor   *proc;          /* the processor thread's state (processor.c) */
    struct worker      *work;          /* the worker thread's state (worker.c) */
};

/* Opens the store, the destinations, the processor (rules, mappings, identity) and the worker,
 * then starts the worker thread and the processor thread. The intake, the wake eventfds, the
 * request list and the locks above must be ready. TALLY_OK, or an error in err with everything it
 * made freed again. */
int  runtime_open(tally_t *t, tly_err *err);
/* Asks the threads to finish: the processor hands over everything in the intake and stops, the
 * worker stores it (and delivers what it can) and stops; then frees what runtime_open made.
 * Only after a runtime_open that succeeded. */
void runtime_stop(tally_t *t);

/* ---- waking the threads, their clocks, the stamp reservation ----
 * Inline, so that the threads' files depend on this header and never on runtime.o, which starts
 * them: the dependency runs one way. */

#if defined(__SANITIZE_THREAD__) && !defined(__clang__) && __GNUC__ >= 12
/* gcc -Werror=tsan refuses atomic_thread_fence (TSan does not model fences); the atomics of the
 * wake protocol are still checked */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtsan"
#define TLY_TSAN_FENCE_POP 1
#endif

static inline void tly_wake_fd(int fd, _Atomic int *sleeping)
{
    /* pairs with the fence before a thread's last look for work (processor_sleep, worker_sleep):
     * either it sees what we queued, or we see it asleep */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(sleeping, 0, memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t r = write(fd, &one, sizeof one);
        (void)r; /* EAGAIN means a wake is already pending: fine */
    }
}

/* The processor: a record was queued (callers). */
static inline void tly_wake_processor(tally_t *t) { tly_wake_fd(t->proc_wake_fd, &t->proc_sleeping); }
/* The worker: rows were handed over (the processor). */
static inline void tly_wake_worker(tally_t *t) { tly_wake_fd(t->work_wake_fd, &t->work_sleeping); }

/* For requests (flush, reload, stop) and the processor's end: the eventfd is written even if the
 * thread looks busy, so its next sleep returns at once and it looks again. */
static inline void tly_wake_worker_forced(tally_t *t)
{
    atomic_store(&t->work_sleeping, 1);
    tly_wake_worker(t);
}

static inline void tly_wake_all(tally_t *t)
{
    atomic_store(&t->proc_sleeping, 1);
    tly_wake_processor(t);
    tly_wake_worker_forced(t);
}

#ifdef TLY_TSAN_FENCE_POP
#pragma GCC diagnostic pop
#undef TLY_TSAN_FENCE_POP
#endif

static inline int64_t tly_clock_mono(tally_t *t) { return tly_mono_ms() + atomic_load(&t->clock_skew_ms); }
static inline int64_t tly_clock_wall(tally_t *t) { return tly_now_ms() + atomic_load(&t->clock_skew_ms); }

#define STAMP_PENDING_SHIFT 48
#define STAMP_PENDING_BOUND ((UINT64_C(1) << STAMP_PENDING_SHIFT) - 1)

/* The processor applied an identify a caller reserved room for (tally.c raises the reservation). */
static inline void tly_stamp_applied(tally_t *t)
{
    uint64_t w = atomic_load(&t->stamp_pending), nw;
    do {
        uint64_t n = w >> STAMP_PENDING_SHIFT;
        /* the last one: stamp_ids is exact */
        nw = n > 1 ? ((n - 1) << STAMP_PENDING_SHIFT) | (w & STAMP_PENDING_BOUND) : 0;
    } while (!atomic_compare_exchange_weak(&t->stamp_pending, &w, nw));
}

#endif
