/* The runtime's lifecycle (runtime.h): what tally_open makes after the intake, in the order it
 * must be made, and what tally_close undoes, in the order it must be undone. */
#include "runtime.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "processor.h"
#include "rowq.h"
#include "store.h"
#include "worker.h"

#define ROWQ_SLOTS 1024 /* rows between the threads: ~0.5 MB of typical messages */

static int oom(tly_err *err) { return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory"); }

static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- the destinations ---- */

static int open_dests(tally_t *t, tly_err *err)
{
    if (t->cfg.ndests == 0)
        return tly_err_set(err, TALLY_ECONFIG,
                           "no destination: set write_key (or TALLY_WRITE_KEY), out, or destinations");
    if (tly_fault() || !(t->dests = calloc(t->cfg.ndests, sizeof *t->dests))) return oom(err);
    dest_env env = {t->cfg.write_key, t->cfg.ca_bundle, t->cfg.proxy, t->cfg.gzip,
                    t->cfg.timeout_ms, t->cfg.max_in_flight, t->transfers};
    for (size_t i = 0; i < t->cfg.ndests; i++) {
        int rc = tly_fault() ? tly_err_set(err, TALLY_EIO, "destination: injected fault")
                             : dest_open(&t->dests[i], t->cfg.dests[i], &env, &t->log, err);
        if (rc) return rc;
        t->ndests++;
        for (size_t k = 0; k < i; k++)
            if (!strcmp(t->dests[k].name, t->dests[i].name))
                return tly_err_set(err, TALLY_ECONFIG, "destinations: \"%s\" is configured twice (give one a \"name\")",
                                   t->dests[i].name);
    }
    return TALLY_OK;
}

static void close_dests(tally_t *t)
{
    for (size_t i = 0; i < t->ndests; i++) dest_close(&t->dests[i]);
    free(t->dests);
    t->dests = NULL;
    t->ndests = 0;
}

/* ---- the threads ---- */

/* Both threads start with every signal blocked: they must not take the host's signals (nginx
 * runs its event loop on them); the caller's mask is restored right after. Named, so `top -H`
 * and perf tell them apart from the host's threads. */
static int start_thread(pthread_t *th, const char *name, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(th, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!e) pthread_setname_np(*th, name); /* at most 15 characters */
    return e;
}

/* The worker first: the processor's rows need a reader. The processor stops once the intake is
 * empty and says so (proc_done); the worker stops once it saw that and the row queue is empty. */
static int start_threads(tally_t *t, tly_err *err)
{
    int e = tly_fault() ? EAGAIN : start_thread(&t->work_thread, "tally-worker", worker_main, t);
    if (e) return tly_err_set(err, TALLY_ENOMEM, "tally_open: cannot start the worker thread: %s", strerror(e));
    t->work_started = 1;
    e = tly_fault() ? EAGAIN : start_thread(&t->proc_thread, "tally-processor", processor_main, t);
    if (e) {
        /* the worker is running: stop it as a close would, the processor counting as done */
        atomic_store(&t->proc_done, 1);
        atomic_store(&t->stop, 1);
        tly_wake_worker_forced(t);
        pthread_join(t->work_thread, NULL);
        t->work_started = 0;
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: cannot start the processor thread: %s", strerror(e));
    }
    t->proc_started = 1;
    return TALLY_OK;
}

/* Frees what runtime_open made, whatever it got to; the threads are not running. The worker
 * before the destinations (its batches refer to them), the destinations before the transfer
 * handle their easy handles hang on, the store last but the row queue (rows still there were
 * never stored: only after a failed open). */
static void free_parts(tally_t *t)
{
    assert(!t->proc_started && !t->work_started);
    processor_free(t);
    worker_free(t);
    close_dests(t);
    if (t->transfers) curl_multi_cleanup(t->transfers);
    t->transfers = NULL;
    store_close(t->store);
    t->store = NULL;
    rowq_free(t->rows);
    t->rows = NULL;
}

int runtime_open(tally_t *t, tly_err *err)
{
    static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
    pthread_once(&curl_once, curl_init_once);
    int rc = TALLY_OK;
    if (tly_fault() || !(t->rows = rowq_new(ROWQ_SLOTS)) || tly_fault() || !(t->transfers = curl_multi_init()))
        rc = oom(err);
    if (!rc) {
        const char *path = t->cfg.store ? t->cfg.store : ":memory:";
        store_limits lim = {t->cfg.max_store_bytes, t->cfg.max_store_rows, t->cfg.store_on_full};
        rc = tly_fault() ? tly_err_set(err, TALLY_EIO, "store: injected fault")
                         : store_open(&t->store, path, &lim, &t->log, err);
    }
    if (!rc) rc = open_dests(t, err);
    if (!rc) rc = worker_open(t, err);
    /* the identity is loaded before any thread runs; its first writes go into the store directly */
    if (!rc) rc = tly_fault() ? tly_err_set(err, TALLY_ENOMEM, "injected fault") : processor_open(t, err);
    if (!rc && (tly_fault() || store_commit(t->store, err))) rc = tly_err_set(err, TALLY_EIO, "store: cannot write");
    if (!rc) rc = start_threads(t, err);
    if (rc) free_parts(t);
    return rc;
}

void runtime_stop(tally_t *t)
{
    assert(t->proc_started && t->work_started);
    atomic_store(&t->stop, 1);
    tly_wake_all(t);
    /* the processor hands over what is in the intake, then marks itself done and wakes the
     * worker, which stores what it was handed before it stops */
    pthread_join(t->proc_thread, NULL);
    t->proc_started = 0;
    pthread_join(t->work_thread, NULL);
    t->work_started = 0;
    free_parts(t);
}
