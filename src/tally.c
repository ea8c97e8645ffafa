/* The public API: argument checks on the caller's thread, then a copy into the intake. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "message.h"
#include "rules.h"
#include "runtime.h"

/* Fork detection without a getpid() syscall per call: the child handler bumps a generation that
 * every handle compares with the one it was opened in. */
static _Atomic unsigned fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { atomic_fetch_add(&fork_gen, 1); }
static void install_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static int usable(const tally_t *t)
{
    if (!t) return tly_fail(TALLY_EINVAL, "NULL handle");
    if (t->fork_gen != atomic_load_explicit(&fork_gen, memory_order_relaxed))
        return tly_fail(TALLY_EFORK, "this handle was opened before fork(); open a new one in the child");
    if (atomic_load_explicit(&t->closing, memory_order_relaxed))
        return tly_fail(TALLY_ECLOSED, "the handle is closing");
    return TALLY_OK;
}

/* The calls that wait for the background threads (or take the lock they log under) cannot run on a
 * thread that is inside a log callback: that thread may be the one they would wait for. */
static int from_log_callback(const char *call)
{
    if (!tly_in_log_callback) return TALLY_OK;
    return tly_fail(TALLY_EINVAL, "%s: called from inside a log callback (it would wait for the thread that logs)", call);
}

static void close_dests(tally_t *t)
{
    for (size_t i = 0; i < t->ndests; i++) dest_close(&t->dests[i]);
    free(t->dests);
    t->dests = NULL;
    t->ndests = 0;
}

static void free_handle(tally_t *t)
{
    close_dests(t);
    intake_destroy(&t->q);
    if (t->wake_fd >= 0) close(t->wake_fd);
    if (t->w_wake_fd >= 0) close(t->w_wake_fd);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    config_clear(&t->cfg);
    free(t->identity_snapshot);
    free(t);
}

int tally_open(const tally_config *cfg, tally_t **out)
{
    tly_clear_error();
    if (!out) return tly_fail(TALLY_EINVAL, "tally_open: NULL out");
    *out = NULL;
    pthread_once(&atfork_once, install_atfork);
    tally_t *t = tly_fault() ? NULL : calloc(1, sizeof *t);
    if (!t) return tly_fail(TALLY_ENOMEM, "tally_open: out of memory");
    t->wake_fd = t->w_wake_fd = -1;
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* flush deadlines must not jump with the wall clock */
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    struct tally_config defaults;
    config_defaults(&defaults);
    int rc = tly_fault() || config_copy(&t->cfg, cfg ? cfg : &defaults) ? tly_fail(TALLY_ENOMEM, "tally_open: out of memory") : 0;
    if (!rc) rc = tly_fault() ? tly_fail(TALLY_ENOMEM, "tally_open: out of memory") : config_apply_env(&t->cfg);
    if (!rc) rc = tly_fault() ? tly_fail(TALLY_ENOMEM, "tally_open: out of memory") : config_resolve_dests(&t->cfg);
    if (!rc) config_store_defaults(&t->cfg);
    t->log = (tly_logger){t->cfg.log_fn, t->cfg.log_ud, t->cfg.log_level};
    t->fork_gen = atomic_load(&fork_gen);
    tly_clock_init();
    if (!rc && (tly_fault() || intake_init(&t->q, t->cfg.max_queue_rows, t->cfg.max_queue_bytes, t->cfg.on_full)))
        rc = tly_fail(TALLY_ENOMEM, "tally_open: out of memory");
    if (!rc && ((t->wake_fd = tly_fault() ? (errno = EMFILE, -1) : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
                (t->w_wake_fd = tly_fault() ? (errno = EMFILE, -1) : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0))
        rc = tly_fail(TALLY_EIO, "tally_open: eventfd: %s", strerror(errno));
    if (!rc) rc = worker_start(t);
    if (rc) {
        free_handle(t);
        return rc;
    }
    *out = t;
    return TALLY_OK;
}

int tally_close(tally_t *t, int timeout_ms)
{
    if (!t) return TALLY_OK;
    int rc = from_log_callback("tally_close");
    if (rc) return rc;
    if (t->fork_gen != atomic_load(&fork_gen))
        return tly_fail(TALLY_EFORK, "tally_close: handle opened before fork(); left to the parent");
    rc = tally_flush(t, timeout_ms);
    atomic_store(&t->closing, 1);
    worker_stop(t);
    free_handle(t);
    return rc;
}

/* ---- enqueue ---- */

static int enqueue(tally_t *t, int kind, const char *s1, size_t l1, const char *s2, size_t l2, const char *json,
                   size_t json_len)
{
    intake_rec *r = intake_rec_new(&t->q, kind, s1, l1, s2, l2, json, json_len);
    if (!r) return tly_fail(TALLY_ENOMEM, "out of memory");
    /* Control records are not messages. Counting them (rare) instead of the messages keeps a
     * locked add off every call: accepted = records queued - control records (tally_stats). */
    int control = kind == REC_RESET || kind == REC_SESSION_START;
    if (control) atomic_fetch_add_explicit(&t->n.control, 1, memory_order_relaxed);
    int dropped_oldest;
    if (intake_push(&t->q, r, &dropped_oldest)) {
        intake_rec_free(&t->q, r);
        if (control) atomic_fetch_sub_explicit(&t->n.control, 1, memory_order_relaxed);
        return tly_fail(TALLY_EFULL, "queue full (max_queue_bytes=%zu, max_queue_rows=%zu): message dropped",
                        t->cfg.max_queue_bytes, t->cfg.max_queue_rows);
    }
    tly_wake(t);
    return TALLY_OK;
}

static int rejected(tally_t *t, int rc)
{
    atomic_fetch_add_explicit(&t->n.rejected, 1, memory_order_relaxed);
    return rc;
}

static int need_ids_from_caller(tally_t *t, const char *call)
{
    if (t->cfg.mode != MODE_SERVER) return TALLY_OK;
    return tly_fail(TALLY_EINVAL, "userId or anonymousId: required in server mode; use tally_send with the ids (%s)", call);
}

/* The common shape of the typed calls: two optional strings and one optional JSON object. */
static int typed(tally_t *t, int kind, const char *f1, const char *s1, int s1_required,
                 const char *f2, const char *s2, const char *fj, const char *json)
{
    int rc = usable(t);
    if (rc) return rc;
    size_t len = 0, l1 = 0, l2 = 0;
    if ((rc = msg_check_string(f1, s1, s1_required, &l1)) || (f2 && (rc = msg_check_string(f2, s2, 0, &l2))) ||
        (fj && (rc = msg_check_object(fj, json, &len))))
        return rejected(t, rc);
    size_t total = len + l1 + l2;
    if (total > TALLY_MAX_MESSAGE_BYTES)
        return rejected(t, tly_fail(TALLY_ETOOBIG, "message: %zu bytes of arguments, over the %d-byte limit",
                                    total, TALLY_MAX_MESSAGE_BYTES));
    if ((rc = need_ids_from_caller(t, msg_type_name(kind)))) return rejected(t, rc);
    return enqueue(t, kind, s1, l1, s2, l2, fj ? json : NULL, len);
}

int tally_track(tally_t *t, const char *event, const char *props)
{
    return typed(t, REC_TRACK, "event", event, 1, NULL, NULL, "properties", props);
}

int tally_identify(tally_t *t, const char *user_id, const char *traits)
{
    return typed(t, REC_IDENTIFY, "userId", user_id, 0, NULL, NULL, "traits", traits);
}

int tally_page(tally_t *t, const char *category, const char *name, const char *props)
{
    return typed(t, REC_PAGE, "name", name, 0, "category", category, "properties", props);
}

int tally_screen(tally_t *t, const char *name, const char *props)
{
    return typed(t, REC_SCREEN, "name", name, 0, NULL, NULL, "properties", props);
}

int tally_group(tally_t *t, const char *group_id, const char *traits)
{
    return typed(t, REC_GROUP, "groupId", group_id, 1, NULL, NULL, "traits", traits);
}

int tally_alias(tally_t *t, const char *user_id, const char *previous_id)
{
    return typed(t, REC_ALIAS, "userId", user_id, 1, "previousId", previous_id, NULL, NULL);
}

/* Whole messages are parsed on the caller's thread: the caller must learn here, not in a log,
 * that its message lacks an event or an id. A per-thread arena, freed when the thread exits,
 * keeps that from allocating on every call. */
static pthread_key_t send_arena_key;
static pthread_once_t send_arena_once = PTHREAD_ONCE_INIT;
static void free_arena(void *a) { tj_arena_free(a); }
static void make_arena_key(void) { pthread_key_create(&send_arena_key, free_arena); }

static tj_arena *thread_arena(void)
{
    pthread_once(&send_arena_once, make_arena_key);
    tj_arena *a = pthread_getspecific(send_arena_key);
    if (!a && (a = tj_arena_new()) != NULL) pthread_setspecific(send_arena_key, a);
    return a;
}

int tally_send(tally_t *t, const char *json)
{
    int rc = usable(t);
    if (rc) return rc;
    if (!json) return rejected(t, tly_fail(TALLY_EINVAL, "message: NULL"));
    size_t len = strlen(json);
    if (len > TALLY_MAX_MESSAGE_BYTES)
        return rejected(t, tly_fail(TALLY_ETOOBIG, "message: %zu bytes, over the %d-byte limit", len,
                                    TALLY_MAX_MESSAGE_BYTES));
    tj_arena *send_arena = thread_arena();
    if (!send_arena) return tly_fail(TALLY_ENOMEM, "out of memory");
    tj_arena_reset(send_arena);
    tj_value *m;
    tj_error err;
    if (tj_parse(send_arena, json, len, &m, &err))
        return rejected(t, tly_fail(TALLY_EINVAL, "message: invalid JSON: %s", err.msg));
    if ((rc = msg_validate(m, t->cfg.mode == MODE_SERVER))) return rejected(t, rc);
    return enqueue(t, REC_SEND, NULL, 0, NULL, 0, json, len);
}

int tally_reset(tally_t *t)
{
    int rc = usable(t);
    if (rc) return rc;
    return enqueue(t, REC_RESET, NULL, 0, NULL, 0, NULL, 0);
}

int tally_session_start(tally_t *t)
{
    int rc = usable(t);
    if (rc) return rc;
    return enqueue(t, REC_SESSION_START, NULL, 0, NULL, 0, NULL, 0);
}

/* ---- waiting ---- */

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

static void unlink_req(tally_t *t, flush_req *r)
{
    for (flush_req **p = &t->flushes; *p; p = &(*p)->next)
        if (*p == r) { *p = r->next; return; }
}

/* Queues a request for the worker and waits for it to be done, at most timeout_ms (<0: no limit).
 * Returns 1 when done, 0 on timeout. */
static int wait_request(tally_t *t, flush_req *req, int timeout_ms)
{
    pthread_mutex_lock(&t->mu);
    req->seq = ++t->next_seq;
    req->next = t->flushes;
    t->flushes = req;
    pthread_mutex_unlock(&t->mu);
    tly_wake_all(t);

    struct timespec until;
    if (timeout_ms >= 0) deadline_after(&until, timeout_ms);
    pthread_mutex_lock(&t->mu);
    while (!req->done) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&t->cv, &t->mu);
        } else if (pthread_cond_timedwait(&t->cv, &t->mu, &until) == ETIMEDOUT) {
            break;
        }
    }
    int done = req->done;
    unlink_req(t, req);
    pthread_mutex_unlock(&t->mu);
    return done;
}

int tally_flush(tally_t *t, int timeout_ms)
{
    int rc = usable(t);
    if (!rc) rc = from_log_callback("tally_flush");
    if (rc) return rc;
    flush_req req;
    memset(&req, 0, sizeof req);
    req.ticket = intake_position(&t->q);
    if (!wait_request(t, &req, timeout_ms))
        return tly_fail(TALLY_ETIMEDOUT, "flush: not everything was delivered within %d ms", timeout_ms);
    return TALLY_OK;
}

int tally_reload(tally_t *t, int timeout_ms)
{
    int rc = usable(t);
    if (!rc) rc = from_log_callback("tally_reload");
    if (rc) return rc;
    if (!t->cfg.rules) return tly_fail(TALLY_ECONFIG, "reload: no rules configured");
    flush_req req;
    memset(&req, 0, sizeof req);
    req.ticket = intake_position(&t->q);
    req.reload = 1;
    if (!wait_request(t, &req, timeout_ms))
        return tly_fail(TALLY_ETIMEDOUT, "reload: not done within %d ms (it still happens)", timeout_ms);
    if (req.result) return tly_fail(req.result, "reload: %s (the previous rules stay)", req.err);
    return TALLY_OK;
}

int tally_identity(tally_t *t, char **json_out)
{
    if (!t || !json_out) return tly_fail(TALLY_EINVAL, "tally_identity: NULL argument");
    if (from_log_callback("tally_identity")) return TALLY_EINVAL;
    *json_out = NULL;
    pthread_mutex_lock(&t->mu);
    const char *snap = t->identity_snapshot ? t->identity_snapshot : "{}";
    *json_out = strdup(snap);
    pthread_mutex_unlock(&t->mu);
    return *json_out ? TALLY_OK : tly_fail(TALLY_ENOMEM, "tally_identity: out of memory");
}

int tally_stats(tally_t *t, char **json_out)
{
    if (!t || !json_out) return tly_fail(TALLY_EINVAL, "tally_stats: NULL argument");
    if (from_log_callback("tally_stats")) return TALLY_EINVAL;
    tbuf b = TBUF_INIT;
    size_t pos = intake_position(&t->q), queued = pos - intake_taken(&t->q);
    uint64_t accepted = (uint64_t)pos - atomic_load(&t->n.control);
    tbuf_printf(&b,
                "{\"accepted\":%llu,\"rejected\":%llu,\"dropped\":%llu,\"processed\":%llu,\"invalid\":%llu,"
                "\"store_dropped\":%llu,\"store_errors\":%llu,\"queued\":%zu,\"queue_bytes\":%zu,\"destinations\":[",
                (unsigned long long)accepted, (unsigned long long)atomic_load(&t->n.rejected),
                (unsigned long long)atomic_load(&t->q.dropped), (unsigned long long)atomic_load(&t->n.processed),
                (unsigned long long)atomic_load(&t->n.invalid), (unsigned long long)atomic_load(&t->n.store_dropped),
                (unsigned long long)atomic_load(&t->n.store_errors), queued, intake_bytes(&t->q));
    for (size_t i = 0; i < t->ndests; i++) {
        dest *d = &t->dests[i];
        if (!d->ops) continue;
        tbuf_puts(&b, i ? ",{\"name\":" : "{\"name\":");
        tj_write_string(&b, d->name, strlen(d->name));
        tbuf_printf(&b, ",\"delivered\":%llu,\"failed\":%llu,\"retried\":%llu,\"batches\":%llu}",
                    (unsigned long long)atomic_load(&d->delivered), (unsigned long long)atomic_load(&d->failed),
                    (unsigned long long)atomic_load(&d->retried), (unsigned long long)atomic_load(&d->batches));
    }
    tbuf_printf(&b, "],\"violations\":%llu,\"rule_dropped\":%llu,\"rules\":",
                (unsigned long long)atomic_load(&t->n.violations), (unsigned long long)atomic_load(&t->n.rule_dropped));
    pthread_mutex_lock(&t->mu);
    rules_stats(t->rules, &b);
    pthread_mutex_unlock(&t->mu);
    tbuf_putc(&b, '}');
    if (b.oom) {
        tbuf_free(&b);
        return tly_fail(TALLY_ENOMEM, "tally_stats: out of memory");
    }
    *json_out = tbuf_steal(&b);
    return TALLY_OK;
}
