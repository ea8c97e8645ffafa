/* Requests from callers to the runtime's threads: tally_flush (served by the worker) and
 * tally_reload (served by the processor), and the kinds later issues add.
 *
 * The handshake, the same for every kind:
 *  1. The caller (tally.c) fills a tly_request on its own stack: its kind and its ticket, the
 *     intake position at the call, so the request applies after every record queued before it.
 *     requests_post links it into the list and numbers it (seq); the caller then wakes both
 *     threads with tly_wake_all (forced: a thread that looks busy must still look at the list)
 *     and waits in requests_wait, at most its timeout.
 *  2. The thread that serves the kind waits until the intake has been taken past the ticket.
 *     A kind served in one step (reload, and any kind added later) is claimed with requests_take,
 *     served without the lock, and ended with requests_finish: its result and error text, done,
 *     a broadcast. A flush has two steps, both the worker's: drained (every record before the
 *     ticket is in the store: requests_flush_drained records the store's last id as its mark),
 *     then done once no destination holds a row up to the mark and the store has committed
 *     (requests_flush_done, which broadcasts).
 *  3. requests_wait returns when its request is done or its timeout passed, and unlinks it either
 *     way. A caller may so leave at any moment: the threads touch a request only under the lock,
 *     and a thread that serves one without the lock finds it again by seq, never by a pointer kept
 *     across the unlock; a request that left is simply not found.
 *  At close, tally_close flushes first and then the runtime stops the threads; calls on a handle
 *  that is closing fail (TALLY_ECLOSED), so no request waits on a thread that has stopped.
 *
 * One mutex guards the list, the numbering and every field of a queued request; the condition
 * is broadcast whenever a request becomes done. Adding a kind: a value in req_kind, result fields
 * if it needs more than result/err, and a thread that serves it with requests_take and
 * requests_finish; nothing here changes. */
#ifndef TALLY_REQUESTS_H
#define TALLY_REQUESTS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

typedef enum req_kind {
    REQ_FLUSH = 1, /* everything queued before it delivered, and durable: the worker */
    REQ_RELOAD,    /* the rule set loaded again, in order with the messages: the processor */
    /* tally_forget: the processor serves it in order with the messages (the identity reset when
     * it is the id), then hands a ROW_FORGET row to the worker behind every row before it, and
     * the worker, meeting it, erases and finishes the request with the count. A request and not a
     * record: the caller waits for the count. */
    REQ_FORGET,
} req_kind;

typedef struct tly_request {
    req_kind            kind;
    size_t              ticket;  /* intake position at the call: the request follows every record before it */
    uint64_t            seq;     /* unique per request: requests_post */
    int                 done;
    int                 result;  /* TALLY_OK or why it failed (requests_finish) */
    tly_err             err;     /* the failure's text when result is not TALLY_OK */
    int                 drained; /* REQ_FLUSH: every record before the ticket is in the store */
    int64_t             mark;    /* REQ_FLUSH: the store's last row id when it drained */
    const char         *id;      /* REQ_FORGET: the id (the caller's, read only under the lock) */
    size_t              id_len;
    int64_t             count;   /* REQ_FORGET: messages erased */
    int                 handed;  /* REQ_FORGET: the processor passed it to the worker */
    struct tly_request *next;
} tly_request;

typedef struct requests {
    pthread_mutex_t mu;       /* guards list, next_seq and every queued request's fields */
    pthread_cond_t  cv;       /* broadcast when a request becomes done */
    tly_request    *list;
    uint64_t        next_seq;
} requests;

/* The condition waits on the monotonic clock, so a deadline does not jump with the wall clock. */
int  requests_init(requests *rq, tly_err *err);
void requests_destroy(requests *rq);

/* The caller's side. requests_post queues r (kind and ticket set, the rest zero); requests_wait
 * waits until r is done, at most timeout_ms (<0: no limit), unlinks it, and returns 1 when it was
 * done, 0 on timeout. */
void requests_post(requests *rq, tly_request *r);
int  requests_wait(requests *rq, tly_request *r, int timeout_ms);

/* The threads' side. Whether a request of that kind is queued and not done. */
int  requests_waiting(requests *rq, req_kind kind);
/* Finds a request of that kind, not done, whose ticket is at most `taken`: 1 with its seq, or 0.
 * The request stays queued (its caller may still leave) until requests_finish. */
int  requests_take(requests *rq, req_kind kind, size_t taken, uint64_t *seq);
/* Marks request seq done with rc (and err's text when rc is not TALLY_OK), if it is still queued. */
void requests_finish(requests *rq, uint64_t seq, int rc, const tly_err *err);

/* REQ_FORGET, the processor's: whether one waits that it has not handed to the worker yet; and
 * requests_take for those, marking it handed, with a malloc'd copy of its id in *id (NULL when
 * out of memory). */
int  requests_forget_waiting(requests *rq);
int  requests_take_forget(requests *rq, size_t taken, uint64_t *seq, char **id, size_t *id_len);
/* requests_finish with the number of messages erased. */
void requests_finish_count(requests *rq, uint64_t seq, int rc, const tly_err *err, int64_t count);

/* REQ_FLUSH, the worker's. When all_in (nothing waits in the row queue), every flush not drained
 * whose ticket is at most `taken` becomes drained with `mark`. Returns whether any flush is
 * drained and not done. */
int  requests_flush_drained(requests *rq, int all_in, size_t taken, int64_t mark);
/* Whether a drained flush not done has its mark below frontier (everything up to it delivered). */
int  requests_flush_due(requests *rq, int64_t frontier);
/* Marks those done and wakes their callers. */
void requests_flush_done(requests *rq, int64_t frontier);

#endif
