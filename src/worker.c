/* The worker thread: the only thread that stamps, stores and delivers. Callers only touch the
 * intake; everything that can be slow (rules, SQLite, the network) happens here, on one event
 * loop: curl_multi_poll waits for transfers, for the wake eventfd and for the next deadline. */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "identity.h"
#include "message.h"
#include "rules.h"
#include "runtime.h"
#include "store.h"

#if defined(__SANITIZE_THREAD__) && !defined(__clang__) && __GNUC__ >= 12
/* gcc -Werror=tsan refuses atomic_thread_fence (TSan does not model fences); the atomics of the
 * wake protocol are still checked */
#pragma GCC diagnostic ignored "-Wtsan"
#endif

#define BATCH_MAX_BYTES (475 * 1024) /* Segment accepts 500 KB; leave room for the envelope */

typedef struct dest_state {
    int        store_id;
    dest_batch batch;        /* the batch in flight, or last tried */
    int        in_flight;
    int64_t    pending;      /* rows queued in the store for this destination */
    int64_t    since_ms;     /* monotonic: when the oldest pending row arrived */
    int64_t    retry_at;     /* monotonic; 0 = not backing off */
    int        attempts;
    char      *mapping;      /* name of the destination-stage rule that shapes its payloads */
    int        map_idx;      /* that rule's index in the current rule set, -1 for none */
} dest_state;

struct worker {
    store      *st;
    CURLM      *multi;
    tj_arena   *arena;
    tbuf        out;
    dest_state *ds;
    identity    id;
    rules      *R;
    msg_list    results;     /* messages after the rules */
    msg_list    payloads;    /* one destination's mapped payloads */
    tbuf        mapped;
    int64_t     txn_since;   /* monotonic: when the open group-commit transaction began */
    unsigned    rng;
};

int64_t tly_clock_mono(tally_t *t) { return tly_mono_ms() + atomic_load(&t->clock_skew_ms); }
int64_t tly_clock_wall(tally_t *t) { return tly_now_ms() + atomic_load(&t->clock_skew_ms); }

void tly_wake(tally_t *t)
{
    /* pairs with the fence in worker_sleep: either the worker sees our record, or we see it asleep */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&t->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&t->sleeping, 0, memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t r = write(t->wake_fd, &one, sizeof one);
        (void)r; /* EAGAIN means a wake is already pending: fine */
    }
}

/* ---- processing: intake record -> stamped message -> one store row per destination ---- */

static void reject(tally_t *t, const char *why)
{
    atomic_fetch_add(&t->n.invalid, 1);
    tly_log(&t->log, TALLY_LOG_WARN, "message dropped by the worker: %s", why);
}

static void store_row(tally_t *t, struct worker *w, size_t i, const char *json, size_t len, int64_t now)
{
    dest_state *s = &w->ds[i];
    int64_t dropped = 0;
    int rc = store_append(w->st, s->store_id, json, len, &dropped);
    if (dropped) {
        atomic_fetch_add(&t->n.store_dropped, (uint64_t)dropped);
        tly_log(&t->log, TALLY_LOG_WARN, "store full (max_store_bytes/max_store_rows): dropped %lld oldest",
                (long long)dropped);
        /* the drop may have taken rows of any destination: recount rather than guess */
        for (size_t k = 0; k < t->ndests; k++) w->ds[k].pending = store_pending(w->st, w->ds[k].store_id, -1);
    }
    if (rc == 1) {
        atomic_fetch_add(&t->n.store_dropped, 1);
        tly_log(&t->log, TALLY_LOG_WARN, "%s: store full, newest message dropped (store_on_full=drop_newest)",
                t->dests[i].name);
    } else if (rc < 0) {
        atomic_fetch_add(&t->n.store_errors, 1);
    } else if (s->pending++ == 0) {
        s->since_ms = now;
    }
}

static void on_violation(void *ud, const char *rule, const char *code, const char *text)
{
    tally_t *t = ud;
    atomic_fetch_add(&t->n.violations, 1);
    tly_log(&t->log, TALLY_LOG_DEBUG, "rule %s: violation %s: %s", rule, code, text);
}

static void on_rule_drop(void *ud, const char *rule, const char *why)
{
    tally_t *t = ud;
    atomic_fetch_add(&t->n.rule_dropped, 1);
    tly_log(&t->log, TALLY_LOG_DEBUG, "rule %s dropped a message: %s", rule, why);
}

/* One stored row per destination: the message itself, or what the destination's mapping makes
 * of it (none, one or several payloads). */
static void store_for_dests(tally_t *t, struct worker *w, const tj_value *m, const char *json, size_t len)
{
    int64_t now = tly_clock_mono(t);
    if (!store_in_txn(w->st)) w->txn_since = now;
    for (size_t i = 0; i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        if (s->map_idx < 0) {
            store_row(t, w, i, json, len, now);
            continue;
        }
        rules_report rep = {on_violation, NULL, on_rule_drop, t, 0, 0};
        rules_map(w->R, s->map_idx, w->arena, m, tly_clock_wall(t), &w->payloads, &rep);
        for (size_t k = 0; k < w->payloads.n; k++) {
            tbuf_reset(&w->mapped);
            if (tj_write(&w->mapped, w->payloads.v[k]) || w->mapped.oom) continue;
            store_row(t, w, i, w->mapped.data, w->mapped.len, now);
        }
    }
}

/* Callers read the ids through a snapshot: the identity itself belongs to this thread. */
static void publish_identity(tally_t *t, struct worker *w)
{
    char *snap = identity_json(&w->id);
    if (!snap) return;
    w->id.changed = 0;
    pthread_mutex_lock(&t->mu);
    free(t->identity_snapshot);
    t->identity_snapshot = snap;
    pthread_mutex_unlock(&t->mu);
}

static void process(tally_t *t, struct worker *w, const intake_rec *r)
{
    int server = t->cfg.mode == MODE_SERVER, control = r->kind == REC_RESET || r->kind == REC_SESSION_START;
    tj_arena_reset(w->arena);
    tj_error err = {0, ""};
    tj_value *m = control ? NULL : msg_from_rec(w->arena, r, &err);
    if (!control && !m) {
        reject(t, err.msg[0] ? err.msg : "out of memory");
        return;
    }
    if (!server) {
        identity_apply(&w->id, w->st, r->kind, m, tly_clock_mono(t), tly_clock_wall(t));
        if (w->id.changed) publish_identity(t, w);
    }
    if (control) return;
    msg_ids ids = {0};
    if (!server) identity_ids(&w->id, &ids);
    if (!t->cfg.context_traits) ids.traits = NULL;
    if (msg_stamp(w->arena, m, &ids, r->ts_ms, &err)) {
        reject(t, err.msg[0] ? err.msg : "out of memory");
        return;
    }
    if (msg_validate(m, 1)) {
        reject(t, tally_errmsg(t));
        return;
    }
    rules_report rep = {on_violation, NULL, on_rule_drop, t, 0, 0};
    rules_process(w->R, w->arena, m, tly_clock_wall(t), &w->results, &rep);
    for (size_t i = 0; i < w->results.n; i++) {
        tj_value *v = w->results.v[i];
        tbuf_reset(&w->out);
        if (tj_write(&w->out, v) || w->out.oom) {
            reject(t, "cannot serialize (out of memory)");
            continue;
        }
        if (w->out.len > TALLY_MAX_MESSAGE_BYTES) {
            char why[128];
            snprintf(why, sizeof why, "%zu bytes after stamping and rules, over the %d-byte limit", w->out.len,
                     TALLY_MAX_MESSAGE_BYTES);
            reject(t, why);
            continue;
        }
        store_for_dests(t, w, v, w->out.data, w->out.len);
        atomic_fetch_add(&t->n.processed, 1);
    }
}

static int drain(tally_t *t, struct worker *w, int budget)
{
    int n = 0;
    intake_rec *r;
    while (n < budget && (r = intake_pop(&t->q)) != NULL) {
        process(t, w, r);
        free(r);
        n++;
    }
    return n;
}

static void commit(tally_t *t, struct worker *w)
{
    if (store_in_txn(w->st) && store_commit(w->st)) atomic_fetch_add(&t->n.store_errors, 1);
}

/* ---- delivery ---- */

/* Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)], so many
 * devices retrying after the same outage spread out instead of arriving together. */
static int64_t backoff_ms(tally_t *t, struct worker *w, int attempt)
{
    int64_t ceiling = t->cfg.retry_base_ms;
    for (int i = 1; i < attempt && ceiling < t->cfg.retry_cap_ms; i++) ceiling *= 2;
    if (ceiling > t->cfg.retry_cap_ms) ceiling = t->cfg.retry_cap_ms;
    return (int64_t)(rand_r(&w->rng) % (unsigned)(ceiling + 1));
}

static void outcome(tally_t *t, struct worker *w, size_t i, const dest_outcome *o)
{
    dest *d = &t->dests[i];
    dest_state *s = &w->ds[i];
    s->in_flight = 0;
    int64_t n = (int64_t)s->batch.n, now = tly_clock_mono(t);
    int removed = 1; /* the batch's rows left the queue (delivered or dead-lettered) */
    if (o->result == DEST_OK) {
        store_ack(w->st, s->store_id, s->batch.first_id, s->batch.last_id);
        store_count(w->st, s->store_id, "delivered", n);
        atomic_fetch_add(&d->delivered, (uint64_t)n);
        s->attempts = 0;
        s->retry_at = 0;
    } else if (o->result == DEST_RETRY && s->attempts < t->cfg.max_retries) {
        s->attempts++;
        int64_t wait = o->retry_after_ms > 0 ? o->retry_after_ms : backoff_ms(t, w, s->attempts);
        if (wait > t->cfg.retry_cap_ms) wait = t->cfg.retry_cap_ms;
        s->retry_at = now + (wait > 0 ? wait : 1);
        removed = 0;
        store_count(w->st, s->store_id, "retried", n);
        atomic_fetch_add(&d->retried, (uint64_t)n);
        tly_log(&t->log, TALLY_LOG_WARN, "%s: %s; retry %d of %d in %lld ms", d->name, o->reason, s->attempts,
                t->cfg.max_retries, (long long)wait);
    } else {
        char reason[300];
        if (o->result == DEST_RETRY) snprintf(reason, sizeof reason, "gave up after %d retries: %s", s->attempts, o->reason);
        else snprintf(reason, sizeof reason, "%s", o->reason);
        store_dead(w->st, s->store_id, s->batch.first_id, s->batch.last_id, o->status, reason);
        store_count(w->st, s->store_id, "dead_lettered", n);
        atomic_fetch_add(&d->failed, (uint64_t)n);
        tly_log(&t->log, TALLY_LOG_ERROR, "%s: %lld messages moved to dead letters: %s", d->name, (long long)n, reason);
        s->attempts = 0;
        s->retry_at = 0;
    }
    if (removed) {
        s->pending -= n;
        if (s->pending <= 0 && (s->pending = store_pending(w->st, s->store_id, -1)) < 0) s->pending = 0;
        s->since_ms = now; /* what remains is sent on its own schedule */
    }
}

static int due(tally_t *t, const dest_state *s, int64_t now, int force)
{
    if (s->in_flight || s->pending == 0 || (s->retry_at && now < s->retry_at)) return 0;
    return force || s->retry_at || s->pending >= t->cfg.flush_at || now - s->since_ms >= t->cfg.flush_interval_ms;
}

/* Sends what is due. Synchronous destinations (file, sqlite) are drained batch after batch while
 * they stay due, so a backlog is not paced by flush_interval_ms. */
static void deliver(tally_t *t, struct worker *w, int force)
{
    for (size_t i = 0; i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        while (due(t, s, tly_clock_mono(t), force)) {
            /* no commit here: rows read inside the open transaction are sent as they are; a crash
             * before the group commit loses them from the store, never duplicates them */
            int n = store_load(w->st, s->store_id, 0, (size_t)t->cfg.flush_at, BATCH_MAX_BYTES, &s->batch);
            if (n <= 0) {
                if (n == 0) s->pending = 0; /* rows were dropped by the full policy */
                break;
            }
            atomic_fetch_add(&t->dests[i].batches, 1);
            dest_outcome o;
            s->in_flight = 1;
            if (!t->dests[i].ops->submit(&t->dests[i], &s->batch, &o)) break; /* runs on the event loop */
            outcome(t, w, i, &o);
        }
    }
}

static void collect_transfers(tally_t *t, struct worker *w)
{
    int running;
    curl_multi_perform(w->multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        dest *d = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&d);
        if (!d) continue;
        size_t i = (size_t)(d - t->dests);
        dest_outcome o;
        d->ops->finish(d, m->easy_handle, m->data.result, &o);
        outcome(t, w, i, &o);
    }
}

/* ---- flush ---- */

/* Everything with a store id below the returned one has left every destination's queue. */
static int64_t delivered_frontier(tally_t *t, struct worker *w)
{
    int64_t frontier = INT64_MAX;
    for (size_t i = 0; i < t->ndests; i++) {
        int64_t oldest = store_oldest(w->st, w->ds[i].store_id);
        if (oldest < frontier) frontier = oldest;
    }
    return frontier;
}

/* A flush request is drained once every record before its ticket left the intake (we process
 * what we pop before coming here); it is done when no destination has a row up to the store id
 * that was last when it drained. Requests live on their callers' stacks and a caller may give up
 * (timeout) at any moment, so they are only touched with the lock held. */
static void serve_flushes(tally_t *t, struct worker *w)
{
    size_t taken = intake_taken(&t->q);
    int waiting = 0;
    pthread_mutex_lock(&t->mu);
    for (flush_req *f = t->flushes; f; f = f->next) {
        if (f->reload) continue;
        if (!f->drained && taken >= f->ticket) {
            f->drained = 1;
            f->mark = store_last_id(w->st);
        }
        waiting |= f->drained && !f->done;
    }
    pthread_mutex_unlock(&t->mu);
    if (!waiting) return;
    commit(t, w);
    deliver(t, w, 1);
    commit(t, w);
    int64_t frontier = delivered_frontier(t, w);
    int any = 0;
    pthread_mutex_lock(&t->mu);
    for (flush_req *f = t->flushes; f; f = f->next) any |= !f->reload && f->drained && !f->done && f->mark < frontier;
    pthread_mutex_unlock(&t->mu);
    if (!any) return;
    for (size_t i = 0; i < t->ndests; i++) t->dests[i].ops->sync(&t->dests[i]);
    pthread_mutex_lock(&t->mu);
    for (flush_req *f = t->flushes; f; f = f->next)
        if (!f->reload && f->drained && f->mark < frontier) f->done = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static int open_rules(tally_t *t, const char *spec, rules **out)
{
    rules_opts o = {(size_t)t->cfg.lua_memory, (long)t->cfg.lua_instructions, t->cfg.rule_breaker, 1, t->cfg.rule_config};
    return rules_open(out, spec, &o, &t->log);
}

/* Loads the rule set again into a new state; only a set that loads completely replaces the
 * running one, and mappings must still resolve. */
static int reload_rules(tally_t *t, struct worker *w, char *err, size_t errlen)
{
    if (!t->cfg.rules) {
        snprintf(err, errlen, "no rules configured");
        return TALLY_ECONFIG;
    }
    rules *R = NULL;
    int rc = open_rules(t, t->cfg.rules, &R);
    for (size_t i = 0; !rc && i < t->ndests; i++)
        if (w->ds[i].mapping && rules_find_mapping(R, w->ds[i].mapping) < 0)
            rc = tly_fail(TALLY_ELUA, "mapping \"%s\" of %s is missing from the new rules", w->ds[i].mapping, t->dests[i].name);
    if (rc) {
        snprintf(err, errlen, "%s", tally_errmsg(t));
        tly_log(&t->log, TALLY_LOG_ERROR, "rules reload failed, the previous rules stay: %s", err);
        rules_free(R);
        return rc;
    }
    for (size_t i = 0; i < t->ndests; i++)
        if (w->ds[i].mapping) w->ds[i].map_idx = rules_find_mapping(R, w->ds[i].mapping);
    pthread_mutex_lock(&t->mu);
    rules *old = w->R;
    w->R = t->rules = R;
    pthread_mutex_unlock(&t->mu);
    rules_free(old);
    tly_log(&t->log, TALLY_LOG_INFO, "rules reloaded: %zu scripts", rules_count(R));
    return TALLY_OK;
}

/* Reload requests apply in order with messages: once every record before the call is processed. */
static void serve_reloads(tally_t *t, struct worker *w)
{
    size_t taken = intake_taken(&t->q);
    for (;;) {
        pthread_mutex_lock(&t->mu);
        flush_req *f = t->flushes;
        while (f && !(f->reload && !f->done && taken >= f->ticket)) f = f->next;
        if (!f) {
            pthread_mutex_unlock(&t->mu);
            return;
        }
        /* the caller may give up while we reload: find its request again by number, not pointer */
        uint64_t seq = f->seq;
        pthread_mutex_unlock(&t->mu);
        char err[sizeof f->err];
        int rc = reload_rules(t, w, err, sizeof err);
        pthread_mutex_lock(&t->mu);
        for (flush_req *g = t->flushes; g; g = g->next) {
            if (g->seq != seq) continue;
            g->result = rc;
            snprintf(g->err, sizeof g->err, "%s", rc ? err : "");
            g->done = 1;
        }
        pthread_cond_broadcast(&t->cv);
        pthread_mutex_unlock(&t->mu);
    }
}

static int flush_waiting(tally_t *t)
{
    pthread_mutex_lock(&t->mu);
    int any = 0;
    for (flush_req *f = t->flushes; f && !any; f = f->next) any = !f->done;
    pthread_mutex_unlock(&t->mu);
    return any;
}

/* ---- the loop ---- */

static int next_timeout_ms(tally_t *t, struct worker *w)
{
    int64_t now = tly_clock_mono(t), next = now + 1000; /* a periodic wake as a safety net */
    if (store_in_txn(w->st) && w->txn_since + t->cfg.commit_interval_ms < next)
        next = w->txn_since + t->cfg.commit_interval_ms;
    for (size_t i = 0; i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        if (s->in_flight || !s->pending) continue;
        int64_t when = s->retry_at ? s->retry_at
                     : s->pending >= t->cfg.flush_at ? now
                                                     : s->since_ms + t->cfg.flush_interval_ms;
        if (when < next) next = when;
    }
    return next <= now ? 0 : (int)(next - now);
}

static void worker_sleep(tally_t *t, struct worker *w, int timeout_ms)
{
    atomic_store_explicit(&t->sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (intake_position(&t->q) != intake_taken(&t->q)) {
        atomic_store(&t->sleeping, 0);
        return;
    }
    struct curl_waitfd wake = {t->wake_fd, CURL_WAIT_POLLIN, 0};
    int n;
    curl_multi_poll(w->multi, &wake, 1, timeout_ms, &n);
    if (wake.revents) {
        uint64_t v;
        ssize_t r = read(t->wake_fd, &v, sizeof v);
        (void)r;
    }
    atomic_store(&t->sleeping, 0);
}

static int stop_requested(tally_t *t)
{
    pthread_mutex_lock(&t->mu);
    int s = t->stop;
    pthread_mutex_unlock(&t->mu);
    return s;
}

static void *worker_main(void *arg)
{
    tally_t *t = arg;
    struct worker *w = t->w;
    for (;;) {
        int did = drain(t, w, 1024);
        if (store_in_txn(w->st) && tly_clock_mono(t) - w->txn_since >= t->cfg.commit_interval_ms) {
            commit(t, w);
            /* now, between transactions: under a steady stream there is no other moment, and a
             * WAL that is never checkpointed grows without bound (257 MB for a 400k burst) */
            store_checkpoint(w->st, 0);
        }
        collect_transfers(t, w);
        deliver(t, w, 0);
        if (flush_waiting(t)) {
            serve_reloads(t, w);
            serve_flushes(t, w);
        }
        if (!did && stop_requested(t) && intake_position(&t->q) == intake_taken(&t->q)) break;
        if (!did) {
            commit(t, w);
            store_checkpoint(w->st, 1);
            worker_sleep(t, w, next_timeout_ms(t, w));
        } else {
            store_checkpoint(w->st, 0);
        }
    }
    commit(t, w);
    return NULL;
}

/* ---- start / stop ---- */

static void worker_free(tally_t *t, struct worker *w)
{
    if (!w) return;
    int64_t left = 0;
    for (size_t i = 0; i < t->ndests && w->ds; i++) {
        left += w->ds[i].pending;
        batch_free(&w->ds[i].batch);
    }
    /* destinations hold easy handles on the multi handle: close them before it goes */
    for (size_t i = 0; i < t->ndests; i++) dest_close(&t->dests[i]);
    if (left && t->cfg.store && strcmp(t->cfg.store, ":memory:") != 0)
        tly_log(&t->log, TALLY_LOG_INFO, "close: %lld deliveries left in the store for the next start", (long long)left);
    else if (left)
        tly_log(&t->log, TALLY_LOG_ERROR, "close: %lld undelivered messages lost (store is :memory:)", (long long)left);
    identity_free(&w->id);
    for (size_t i = 0; i < t->ndests && w->ds; i++) free(w->ds[i].mapping);
    pthread_mutex_lock(&t->mu);
    t->rules = NULL;
    pthread_mutex_unlock(&t->mu);
    rules_free(w->R);
    msg_list_free(&w->results);
    msg_list_free(&w->payloads);
    tbuf_free(&w->mapped);
    store_close(w->st);
    if (w->multi) curl_multi_cleanup(w->multi);
    free(w->ds);
    tbuf_free(&w->out);
    tj_arena_free(w->arena);
    free(w);
}

/* A destination naming a "mapping" gets its payloads from that destination-stage rule. */
static int read_mapping(tally_t *t, struct worker *w, size_t i)
{
    dest_state *s = &w->ds[i];
    s->map_idx = -1;
    tj_arena *a = tj_arena_new();
    tj_value *cfg, *m;
    tj_error err;
    if (!a) return tly_fail(TALLY_ENOMEM, "out of memory");
    if (tj_parse(a, t->cfg.dests[i], strlen(t->cfg.dests[i]), &cfg, &err) == 0 &&
        (m = tj_object_get(cfg, "mapping")) != NULL && m->type == TJ_STRING)
        s->mapping = strdup(m->u.str.s);
    tj_arena_free(a);
    if (!s->mapping) return TALLY_OK;
    s->map_idx = rules_find_mapping(w->R, s->mapping);
    if (s->map_idx < 0)
        return tly_fail(TALLY_ECONFIG, "%s: mapping \"%s\" is not a loaded rule with stage \"destination\"",
                        t->dests[i].name, s->mapping);
    return TALLY_OK;
}

/* Rows belong to a destination by name (by default its type and endpoint or path). Rows left for a
 * name that is no longer configured would wait forever without a word: say so at open. */
static void warn_orphan(void *ud, const char *name, int64_t rows)
{
    tally_t *t = ud;
    for (size_t i = 0; i < t->ndests; i++)
        if (!strcmp(t->dests[i].name, name)) return;
    tly_log(&t->log, TALLY_LOG_WARN,
            "store holds %lld queued messages for \"%s\", which is not configured now; they wait until it is "
            "(give destinations a stable \"name\" to change their endpoint or path)",
            (long long)rows, name);
}

static int open_dests(tally_t *t, struct worker *w)
{
    if (t->cfg.ndests == 0)
        return tly_fail(TALLY_ECONFIG, "no destination: set write_key (or TALLY_WRITE_KEY), out, or destinations");
    if (!(t->dests = calloc(t->cfg.ndests, sizeof *t->dests)) || !(w->ds = calloc(t->cfg.ndests, sizeof *w->ds)))
        return tly_fail(TALLY_ENOMEM, "tally_open: out of memory");
    dest_env env = {t->cfg.write_key, t->cfg.ca_bundle, t->cfg.proxy, t->cfg.gzip, t->cfg.timeout_ms, w->multi};
    int64_t now = tly_clock_mono(t);
    for (size_t i = 0; i < t->cfg.ndests; i++) {
        int rc = dest_open(&t->dests[i], t->cfg.dests[i], &env, &t->log);
        if (rc) return rc;
        t->ndests++;
        for (size_t k = 0; k < i; k++)
            if (!strcmp(t->dests[k].name, t->dests[i].name))
                return tly_fail(TALLY_ECONFIG, "destinations: \"%s\" is configured twice (give one a \"name\")",
                                t->dests[i].name);
        dest_state *s = &w->ds[i];
        if ((rc = read_mapping(t, w, i))) return rc;
        if (store_dest_id(w->st, t->dests[i].name, &s->store_id))
            return tly_fail(TALLY_EIO, "store: cannot register destination %s", t->dests[i].name);
        /* rows left by an earlier run go out at once */
        s->pending = store_pending(w->st, s->store_id, -1);
        s->since_ms = now - t->cfg.flush_interval_ms;
    }
    if (store_commit(w->st)) return tly_fail(TALLY_EIO, "store: cannot write");
    store_each_queued_dest(w->st, warn_orphan, t);
    return TALLY_OK;
}

static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

int worker_start(tally_t *t)
{
    static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
    pthread_once(&curl_once, curl_init_once);
    struct worker *w = calloc(1, sizeof *w);
    if (!w || !(w->arena = tj_arena_new()) || !(w->multi = curl_multi_init())) {
        worker_free(t, w);
        return tly_fail(TALLY_ENOMEM, "tally_open: out of memory");
    }
    w->rng = (unsigned)tly_now_ms() ^ (unsigned)(uintptr_t)w;
    const char *path = t->cfg.store ? t->cfg.store : ":memory:";
    store_limits lim = {t->cfg.max_store_bytes, t->cfg.max_store_rows, t->cfg.store_on_full == 0};
    int rc = store_open(&w->st, path, &lim, &t->log);
    if (!rc && t->cfg.rules) rc = open_rules(t, t->cfg.rules, &w->R);
    if (!rc) {
        pthread_mutex_lock(&t->mu);
        t->rules = w->R;
        pthread_mutex_unlock(&t->mu);
        rc = open_dests(t, w);
    }
    if (!rc && t->cfg.mode != MODE_SERVER &&
        identity_load(&w->id, w->st, (int64_t)t->cfg.session_timeout_s * 1000, tly_clock_wall(t)))
        rc = tly_fail(TALLY_EIO, "store: cannot load the identity");
    if (!rc && t->cfg.mode != MODE_SERVER) publish_identity(t, w);
    if (!rc) {
        t->w = w;
        /* The worker must not take the host's signals (nginx runs its event loop on them): it
         * starts with all of them blocked, and the caller's mask is restored right after. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int e = pthread_create(&t->thread, NULL, worker_main, t);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (e) {
            t->w = NULL;
            rc = tly_fail(TALLY_ENOMEM, "tally_open: cannot start the worker thread: %s", strerror(e));
        }
    }
    if (rc) worker_free(t, w);
    return rc;
}

void worker_stop(tally_t *t)
{
    if (!t->w) return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_mutex_unlock(&t->mu);
    atomic_store(&t->sleeping, 1); /* force the eventfd write even if the worker looks busy */
    tly_wake(t);
    pthread_join(t->thread, NULL);
    worker_free(t, t->w);
    t->w = NULL;
}
