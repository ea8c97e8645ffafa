/* Requests to the runtime's threads: the handshake is described in requests.h. */
#include "requests.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int requests_init(requests *rq, tly_err *err)
{
    memset(rq, 0, sizeof *rq);
    pthread_condattr_t ca;
    int e = pthread_condattr_init(&ca);
    if (!e) e = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (!e) e = pthread_cond_init(&rq->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (e) return tly_err_set(err, TALLY_ENOMEM, "requests: cannot make a condition: %s", strerror(e));
    if ((e = pthread_mutex_init(&rq->mu, NULL)) != 0) {
        pthread_cond_destroy(&rq->cv);
        return tly_err_set(err, TALLY_ENOMEM, "requests: cannot make a mutex: %s", strerror(e));
    }
    return TALLY_OK;
}

void requests_destroy(requests *rq)
{
    assert(!rq->list); /* every caller unlinks its own request before it returns */
    pthread_mutex_destroy(&rq->mu);
    pthread_cond_destroy(&rq->cv);
}

void requests_post(requests *rq, tly_request *r)
{
    assert(r->kind == REQ_FLUSH || r->kind == REQ_RELOAD || r->kind == REQ_FORGET);
    pthread_mutex_lock(&rq->mu);
    r->seq = ++rq->next_seq;
    r->next = rq->list;
    rq->list = r;
    pthread_mutex_unlock(&rq->mu);
}

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void unlink_request(requests *rq, tly_request *r)
{
    for (tly_request **p = &rq->list; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

int requests_wait(requests *rq, tly_request *r, int timeout_ms)
{
    struct timespec until;
    if (timeout_ms >= 0) deadline_after(&until, timeout_ms);
    pthread_mutex_lock(&rq->mu);
    while (!r->done) {
        if (timeout_ms < 0) pthread_cond_wait(&rq->cv, &rq->mu);
        else if (pthread_cond_timedwait(&rq->cv, &rq->mu, &until) == ETIMEDOUT) break;
    }
    int done = r->done;
    unlink_request(rq, r);
    pthread_mutex_unlock(&rq->mu);
    return done;
}

int requests_waiting(requests *rq, req_kind kind)
{
    int any = 0;
    pthread_mutex_lock(&rq->mu);
    for (const tly_request *r = rq->list; r && !any; r = r->next) any = r->kind == kind && !r->done;
    pthread_mutex_unlock(&rq->mu);
    return any;
}

int requests_take(requests *rq, req_kind kind, size_t taken, uint64_t *seq)
{
    pthread_mutex_lock(&rq->mu);
    const tly_request *r = rq->list;
    while (r && !(r->kind == kind && !r->done && taken >= r->ticket)) r = r->next;
    if (r) *seq = r->seq;
    pthread_mutex_unlock(&rq->mu);
    return r != NULL;
}

void requests_finish(requests *rq, uint64_t seq, int rc, const tly_err *err)
{
    assert(rc == TALLY_OK || err);
    pthread_mutex_lock(&rq->mu);
    for (tly_request *r = rq->list; r; r = r->next) {
        if (r->seq != seq) continue;
        r->result = rc;
        if (rc != TALLY_OK) r->err = *err;
        r->done = 1;
    }
    pthread_cond_broadcast(&rq->cv);
    pthread_mutex_unlock(&rq->mu);
}

static int forget_unhanded(const tly_request *r) { return r->kind == REQ_FORGET && !r->done && !r->handed; }

int requests_forget_waiting(requests *rq)
{
    int any = 0;
    pthread_mutex_lock(&rq->mu);
    for (const tly_request *r = rq->list; r && !any; r = r->next) any = forget_unhanded(r);
    pthread_mutex_unlock(&rq->mu);
    return any;
}

int requests_take_forget(requests *rq, size_t taken, uint64_t *seq, char **id, size_t *id_len)
{
    pthread_mutex_lock(&rq->mu);
    tly_request *r = rq->list;
    while (r && !(forget_unhanded(r) && taken >= r->ticket)) r = r->next;
    if (r) {
        r->handed = 1;
        *seq = r->seq;
        *id_len = r->id_len;
        if ((*id = malloc(r->id_len + 1)) != NULL) {
            memcpy(*id, r->id, r->id_len);
            (*id)[r->id_len] = '\0';
        }
    }
    pthread_mutex_unlock(&rq->mu);
    return r != NULL;
}

void requests_finish_count(requests *rq, uint64_t seq, int rc, const tly_err *err, int64_t count)
{
    pthread_mutex_lock(&rq->mu);
    for (tly_request *r = rq->list; r; r = r->next)
        if (r->seq == seq) r->count = count;
    pthread_mutex_unlock(&rq->mu);
    requests_finish(rq, seq, rc, err);
}

int requests_flush_drained(requests *rq, int all_in, size_t taken, int64_t mark)
{
    int waiting = 0;
    pthread_mutex_lock(&rq->mu);
    for (tly_request *r = rq->list; r; r = r->next) {
        if (r->kind != REQ_FLUSH) continue;
        if (!r->drained && all_in && taken >= r->ticket) {
            r->drained = 1;
            r->mark = mark;
        }
        waiting |= r->drained && !r->done;
    }
    pthread_mutex_unlock(&rq->mu);
    return waiting;
}

static int flush_due(const tly_request *r, int64_t frontier)
{
    return r->kind == REQ_FLUSH && r->drained && !r->done && r->mark < frontier;
}

int requests_flush_due(requests *rq, int64_t frontier)
{
    int any = 0;
    pthread_mutex_lock(&rq->mu);
    for (const tly_request *r = rq->list; r && !any; r = r->next) any = flush_due(r, frontier);
    pthread_mutex_unlock(&rq->mu);
    return any;
}

void requests_flush_done(requests *rq, int64_t frontier)
{
    pthread_mutex_lock(&rq->mu);
    for (tly_request *r = rq->list; r; r = r->next)
        if (flush_due(r, frontier)) r->done = 1;
    pthread_cond_broadcast(&rq->cv);
    pthread_mutex_unlock(&rq->mu);
}
