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
#include "rules_remote.h"
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

/* What tally_open makes before the runtime (runtime.c frees its own parts). */
static void free_handle(tally_t *t, int req_ready)
{
    intake_destroy(&t->q);
    if (t->proc_wake_fd >= 0) close(t->proc_wake_fd);
    if (t->work_wake_fd >= 0) close(t->work_wake_fd);
    if (req_ready) requests_destroy(&t->req);
    pthread_mutex_destroy(&t->ident_mu);
    pthread_mutex_destroy(&t->rules_mu);
    pthread_mutex_destroy(&t->consent_mu);
    consent_free(&t->consent);
    free(t->consent_prefs);
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
    t->proc_wake_fd = t->work_wake_fd = -1;
    pthread_mutex_init(&t->ident_mu, NULL);
    pthread_mutex_init(&t->rules_mu, NULL);
    pthread_mutex_init(&t->consent_mu, NULL);
    tly_err err = {""};
    int req_ready = requests_init(&t->req, &err) == TALLY_OK;
    if (!req_ready) {
        free_handle(t, 0);
        return tly_publish(TALLY_ENOMEM, &err);
    }
    struct tally_config defaults;
    config_defaults(&defaults);
    int rc = tly_fault() || config_copy(&t->cfg, cfg ? cfg : &defaults) ? tly_fail(TALLY_ENOMEM, "tally_open: out of memory") : 0;
    if (!rc) rc = tly_fault() ? tly_fail(TALLY_ENOMEM, "tally_open: out of memory") : tly_publish(config_apply_env(&t->cfg, &err), &err);
    if (!rc) rc = tly_fault() ? tly_fail(TALLY_ENOMEM, "tally_open: out of memory") : tly_publish(config_resolve_dests(&t->cfg, &err), &err);
    if (!rc) rc = tly_publish(config_check_pairs(&t->cfg, &err), &err);
    if (!rc) config_store_defaults(&t->cfg);
    if (!rc) rc = tly_publish(consent_open(&t->consent, t->cfg.dests, t->cfg.ndests, &err), &err);
    if (!rc && t->cfg.consent_required && t->cfg.mode == MODE_SERVER)
        rc = tly_fail(TALLY_ECONFIG, "consent_required: only in client mode (in server mode each message's own "
                      "context.consent decides, and consent_default the rest)");
    t->log = (tly_logger){t->cfg.log_fn, t->cfg.log_ud, t->cfg.log_level};
    t->fork_gen = atomic_load(&fork_gen);
    tly_clock_init();
    if (!rc && (tly_fault() || intake_init(&t->q, t->cfg.max_queue_rows, t->cfg.max_queue_bytes, t->cfg.on_full)))
        rc = tly_fail(TALLY_ENOMEM, "tally_open: out of memory");
    if (!rc && ((t->proc_wake_fd = tly_fault() ? (errno = EMFILE, -1) : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
                (t->work_wake_fd = tly_fault() ? (errno = EMFILE, -1) : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0))
        rc = tly_fail(TALLY_EIO, "tally_open: eventfd: %s", strerror(errno));
    if (!rc) rc = tly_publish(runtime_open(t, &err), &err);
    if (rc) {
        free_handle(t, 1);
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
    runtime_stop(t);
    free_handle(t, 1);
    return rc;
}

/* ---- enqueue ---- */

/* ---- room for stamping ----
 *
 * The processor stamps a message after the call (messageId, timestamp, ids, context), and a
 * message must still fit in 32 KB then. So each call checks the size the message will have as
 * written plus the most stamping can add (msg_stamp_bound), and the caller hears TALLY_ETOOBIG
 * now instead of the processor dropping the message later. The ids' part depends on the
 * identity the processor will have applied by then: stamp_ids for what it applied, raised by
 * every identify queued but not applied yet (its new userId and traits on top of the rest). */

static size_t ids_reserve(tally_t *t)
{
    if (t->cfg.mode == MODE_SERVER) return 0;
    size_t consent = atomic_load_explicit(&t->consent_stamp, memory_order_relaxed);
    size_t applied = atomic_load_explicit(&t->stamp_ids, memory_order_relaxed);
    size_t pending = (size_t)(atomic_load_explicit(&t->stamp_pending, memory_order_relaxed) & STAMP_PENDING_BOUND);
    return (applied > pending ? applied : pending) + consent;
}

/* An identify is about to be queued: until it is applied, every call reserves `bound`. */
static void reserve_raise(tally_t *t, size_t bound)
{
    uint64_t w = atomic_load(&t->stamp_pending), nw;
    do {
        uint64_t b = w & STAMP_PENDING_BOUND;
        if (bound > b) b = bound > STAMP_PENDING_BOUND ? STAMP_PENDING_BOUND : bound;
        nw = (((w >> STAMP_PENDING_SHIFT) + 1) << STAMP_PENDING_SHIFT) | b;
    } while (!atomic_compare_exchange_weak(&t->stamp_pending, &w, nw));
}

static int too_big_once_stamped(size_t given, size_t stamp)
{
    return tly_fail(TALLY_ETOOBIG, "message: %zu bytes once stamped (%zu given + up to %zu for messageId, timestamp, "
                    "ids and context), over the %d-byte limit", given + stamp, given, stamp, TALLY_MAX_MESSAGE_BYTES);
}

static int enqueue(tally_t *t, int kind, const char *s1, size_t l1, const char *s2, size_t l2, const char *json,
                   size_t json_len, size_t identify_bound)
{
    intake_rec *r = intake_rec_new(&t->q, kind, s1, l1, s2, l2, json, json_len);
    if (!r) return tly_fail(TALLY_ENOMEM, "out of memory");
    if (identify_bound) { /* raised before it is queued: a call queued after it reserves enough */
        reserve_raise(t, identify_bound);
        r->reserved = 1;
    }
    /* Control records are not messages. Counting them (rare) instead of the messages keeps a
     * locked add off every call: accepted = records queued - control records (tally_stats). */
    int control = kind == REC_RESET || kind == REC_SESSION_START || kind == REC_CONSENT;
    if (control) atomic_fetch_add_explicit(&t->n.control, 1, memory_order_relaxed);
    int dropped_oldest;
    if (intake_push(&t->q, r, &dropped_oldest)) {
        if (r->reserved) tly_stamp_applied(t);
        intake_rec_free(&t->q, r);
        if (control) atomic_fetch_sub_explicit(&t->n.control, 1, memory_order_relaxed);
        return tly_fail(TALLY_EFULL, "queue full (max_queue_bytes=%zu, max_queue_rows=%zu): message dropped",
                        t->cfg.max_queue_bytes, t->cfg.max_queue_rows);
    }
    tly_wake_processor(t);
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

/* Per calling thread, freed when it exits: a buffer for decoding a whole message's escaped
 * strings (tally_send), so calls do not allocate each time. */
typedef struct call_scratch {
    tbuf out;
} call_scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static void free_scratch(void *p)
{
    call_scratch *c = p;
    tbuf_free(&c->out);
    free(c);
}
static void make_scratch_key(void) { pthread_key_create(&scratch_key, free_scratch); }

static call_scratch *thread_scratch(void)
{
    pthread_once(&scratch_once, make_scratch_key);
    call_scratch *c = pthread_getspecific(scratch_key);
    if (c) return c;
    if (!(c = calloc(1, sizeof *c))) return NULL;
    pthread_setspecific(scratch_key, c);
    return c;
}

/* What an identify adds to the ids' stamp on top of the current ones: its userId (as written, 0:
 * none), and its traits (as written, MSG_NO_TRAITS: none) when they are copied into
 * context.traits (merged traits are at most the old plus the new). */
static size_t identify_growth(tally_t *t, size_t user_size, size_t traits_size)
{
    size_t n = user_size ? sizeof ",\"userId\":" - 1 + user_size : 0;
    if (t->cfg.context_traits && traits_size != MSG_NO_TRAITS) n += sizeof ",\"traits\":" - 1 + traits_size;
    return n;
}

static size_t member_size(const char *key, size_t value_size) { return 1 + strlen(key) + 2 + 1 + value_size; }

/* The common shape of the typed calls: two optional strings and one optional JSON object. */
static int typed(tally_t *t, int kind, const char *f1, const char *s1, int s1_required,
                 const char *f2, const char *s2, const char *fj, const char *json)
{
    int rc = usable(t);
    if (rc) return rc;
    size_t len = 0, l1 = 0, l2 = 0;
    tly_err err;
    if ((rc = msg_check_string(f1, s1, s1_required, &l1, &err)) || (f2 && (rc = msg_check_string(f2, s2, 0, &l2, &err))) ||
        (fj && (rc = msg_check_object(fj, json, &len, &err))))
        return rejected(t, tly_publish(rc, &err));
    const char *type = msg_type_name(msg_type_of_rec(kind));
    if ((rc = need_ids_from_caller(t, type))) return rejected(t, rc);
    /* as msg_from_rec builds it: {"type":..,f1:s1,f2:s2,fj:json} with json as given */
    size_t given = 2 + member_size("type", tj_string_size(type, strlen(type))) - 1; /* braces, no first comma */
    if (s1) given += member_size(f1, tj_string_size(s1, l1));
    if (f2 && s2) given += member_size(f2, tj_string_size(s2, l2));
    if (fj && json) given += member_size(fj, len);
    size_t ids = ids_reserve(t), bound = 0;
    if (kind == REC_IDENTIFY && t->cfg.mode != MODE_SERVER) {
        size_t traits = MSG_NO_TRAITS; /* the traits were checked: tj_scan only measures them */
        if (json && tj_scan(json, len, NULL, 0, &traits, NULL)) return tly_fail(TALLY_ENOMEM, "out of memory");
        bound = ids += identify_growth(t, s1 && l1 ? tj_string_size(s1, l1) : 0, traits);
    }
    size_t stamp = msg_stamp_bound(NULL, kind == REC_ALIAS ? MT_ALIAS : MT_TRACK, t->cfg.mode != MODE_SERVER, ids);
    if (given + stamp > TALLY_MAX_MESSAGE_BYTES) return rejected(t, too_big_once_stamped(given, stamp));
    return enqueue(t, kind, s1, l1, s2, l2, fj ? json : NULL, len, bound);
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

/* Whole messages are checked on the caller's thread: the caller must learn here, not in a log,
 * that its message lacks an event or an id, or will not fit once stamped. One pass over the text
 * (msg_check_text), no tree: the processor builds that, once. */
int tally_send(tally_t *t, const char *json)
{
    int rc = usable(t);
    if (rc) return rc;
    if (!json) return rejected(t, tly_fail(TALLY_EINVAL, "message: NULL"));
    size_t len = strlen(json);
    if (len > TALLY_MAX_MESSAGE_BYTES)
        return rejected(t, tly_fail(TALLY_ETOOBIG, "message: %zu bytes, over the %d-byte limit", len,
                                    TALLY_MAX_MESSAGE_BYTES));
    call_scratch *c = thread_scratch();
    if (!c) return tly_fail(TALLY_ENOMEM, "out of memory");
    msg_text m;
    tly_err err;
    if ((rc = msg_check_text(json, len, t->cfg.mode == MODE_SERVER, &c->out, &m, &err)))
        return rc == TALLY_ENOMEM ? tly_publish(rc, &err) : rejected(t, tly_publish(rc, &err));
    int client = t->cfg.mode != MODE_SERVER;
    size_t ids = ids_reserve(t), bound = 0;
    if (m.type == MT_IDENTIFY && client) bound = ids += identify_growth(t, m.user_size, m.traits_size);
    size_t stamp = msg_stamp_bound_given(m.given, m.type, client, ids);
    if (m.written + stamp > TALLY_MAX_MESSAGE_BYTES) return rejected(t, too_big_once_stamped(m.written, stamp));
    return enqueue(t, REC_SEND, NULL, 0, NULL, 0, json, len, bound);
}

int tally_reset(tally_t *t)
{
    int rc = usable(t);
    if (rc) return rc;
    return enqueue(t, REC_RESET, NULL, 0, NULL, 0, NULL, 0, 0);
}

/* Merged here, on the caller's thread, so a bad or too large result is the caller's error; the
 * lock keeps merges and their records in one order, so the last call's preferences win. */
int tally_consent(tally_t *t, const char *json)
{
    int rc = usable(t);
    if (rc) return rc;
    tly_err err;
    if (!json) return tly_fail(TALLY_EINVAL, "consent: NULL");
    if (t->cfg.mode == MODE_SERVER)
        return tly_fail(TALLY_EINVAL, "consent: not in server mode (each message's own context.consent decides, "
                        "consent_default the rest)");
    char *merged = NULL;
    pthread_mutex_lock(&t->consent_mu);
    rc = consent_merge(&t->consent, t->consent_prefs, json, strlen(json), &merged, &err);
    if (rc) {
        tly_publish(rc, &err);
    } else {
        /* raised before the record is queued: a call queued after it reserves room for the stamp */
        size_t stamp = sizeof ",\"consent\":{\"categoryPreferences\":}" - 1 + strlen(merged);
        if (stamp > atomic_load(&t->consent_stamp)) atomic_store(&t->consent_stamp, stamp);
        rc = enqueue(t, REC_CONSENT, NULL, 0, NULL, 0, merged, strlen(merged), 0);
    }
    if (!rc) {
        free(t->consent_prefs);
        t->consent_prefs = merged;
    } else {
        free(merged);
    }
    pthread_mutex_unlock(&t->consent_mu);
    return rc;
}

int tally_session_start(tally_t *t)
{
    int rc = usable(t);
    if (rc) return rc;
    return enqueue(t, REC_SESSION_START, NULL, 0, NULL, 0, NULL, 0, 0);
}

/* ---- waiting ---- */

/* Queues a request for the threads and waits for it to be done, at most timeout_ms (<0: no
 * limit): the handshake is requests.h's. Returns 1 when done, 0 on timeout. */
static int wait_request(tally_t *t, tly_request *req, int timeout_ms)
{
    requests_post(&t->req, req);
    tly_wake_all(t);
    return requests_wait(&t->req, req, timeout_ms);
}

int tally_flush(tally_t *t, int timeout_ms)
{
    int rc = usable(t);
    if (!rc) rc = from_log_callback("tally_flush");
    if (rc) return rc;
    tly_request req = {.kind = REQ_FLUSH, .ticket = intake_position(&t->q)};
    if (!wait_request(t, &req, timeout_ms)) {
        uint64_t held = atomic_load(&t->store_held);
        if (atomic_load(&t->store_failing))
            return tly_fail(TALLY_EIO, "flush: the store cannot write (disk full?): %llu messages held in memory, "
                            "not delivered", (unsigned long long)held);
        return tly_fail(TALLY_ETIMEDOUT, "flush: not everything was delivered within %d ms", timeout_ms);
    }
    return TALLY_OK;
}

int tally_reload(tally_t *t, int timeout_ms)
{
    int rc = usable(t);
    if (!rc) rc = from_log_callback("tally_reload");
    if (rc) return rc;
    if (!t->cfg.rules) return tly_fail(TALLY_ECONFIG, "reload: no rules configured");
    tly_request req = {.kind = REQ_RELOAD, .ticket = intake_position(&t->q)};
    if (!wait_request(t, &req, timeout_ms))
        return tly_fail(TALLY_ETIMEDOUT, "reload: not done within %d ms (it still happens)", timeout_ms);
    if (req.result) return tly_fail(req.result, "reload: %s (the previous rules stay)", req.err.msg);
    return TALLY_OK;
}

/* Bounds the wait: the erasure runs behind every row queued before it, which the worker stores
 * at its own pace; a caller that gives up leaves it to happen. */
#define FORGET_WAIT_MS 30000

int tally_forget(tally_t *t, const char *id, size_t *erased)
{
    if (erased) *erased = 0;
    int rc = usable(t);
    if (!rc) rc = from_log_callback("tally_forget");
    if (rc) return rc;
    if (!id) return tly_fail(TALLY_EINVAL, "forget: id: NULL");
    size_t len = strlen(id);
    if (!len) return tly_fail(TALLY_EINVAL, "forget: id: empty (expected a userId or anonymousId)");
    if (len > TALLY_MAX_MESSAGE_BYTES)
        return tly_fail(TALLY_EINVAL, "forget: id: %zu bytes, over the %d-byte limit (no message holds a longer one)",
                        len, TALLY_MAX_MESSAGE_BYTES);
    tly_request req = {.kind = REQ_FORGET, .ticket = intake_position(&t->q), .id = id, .id_len = len};
    if (!wait_request(t, &req, FORGET_WAIT_MS))
        return tly_fail(TALLY_ETIMEDOUT, "forget: not done within %d ms; it still happens if the threads had taken "
                        "it (call again to be sure: forgetting twice is harmless)", FORGET_WAIT_MS);
    if (req.result) return tly_publish(req.result, &req.err);
    if (erased) *erased = (size_t)req.count;
    return TALLY_OK;
}

int tally_identity(tally_t *t, char **json_out)
{
    if (!t || !json_out) return tly_fail(TALLY_EINVAL, "tally_identity: NULL argument");
    if (from_log_callback("tally_identity")) return TALLY_EINVAL;
    *json_out = NULL;
    pthread_mutex_lock(&t->ident_mu);
    const char *snap = t->identity_snapshot ? t->identity_snapshot : "{}";
    *json_out = strdup(snap);
    pthread_mutex_unlock(&t->ident_mu);
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
                "{\"accepted\":%llu,\"rejected\":%llu,\"dropped\":%llu,\"processed\":%llu,\"invalid\":%llu,\"oversize\":%llu,"
                "\"store_dropped\":%llu,\"store_errors\":%llu,\"store_held\":%llu,\"store_given_up\":%llu,"
                "\"queued\":%zu,\"queue_bytes\":%zu,\"destinations\":[",
                (unsigned long long)accepted, (unsigned long long)atomic_load(&t->n.rejected),
                (unsigned long long)atomic_load(&t->q.dropped), (unsigned long long)atomic_load(&t->n.processed),
                (unsigned long long)atomic_load(&t->n.invalid), (unsigned long long)atomic_load(&t->n.oversize),
                (unsigned long long)atomic_load(&t->n.store_dropped),
                (unsigned long long)atomic_load(&t->n.store_errors), (unsigned long long)atomic_load(&t->store_held),
                (unsigned long long)atomic_load(&t->n.store_given_up), queued, intake_bytes(&t->q));
    for (size_t i = 0; i < t->ndests; i++) {
        dest *d = &t->dests[i];
        if (!d->ops) continue;
        tbuf_puts(&b, i ? ",{\"name\":" : "{\"name\":");
        tj_write_string(&b, d->name, strlen(d->name));
        tbuf_printf(&b, ",\"delivered\":%llu,\"failed\":%llu,\"retried\":%llu,\"batches\":%llu,"
                    "\"consent_withheld\":%llu,\"consent_purged\":%llu}",
                    (unsigned long long)atomic_load(&d->delivered), (unsigned long long)atomic_load(&d->failed),
                    (unsigned long long)atomic_load(&d->retried), (unsigned long long)atomic_load(&d->batches),
                    (unsigned long long)atomic_load(&d->consent_withheld),
                    (unsigned long long)atomic_load(&d->consent_purged));
    }
    tbuf_printf(&b, "],\"violations\":%llu,\"rule_dropped\":%llu,\"opted_out\":%llu,\"rules\":",
                (unsigned long long)atomic_load(&t->n.violations), (unsigned long long)atomic_load(&t->n.rule_dropped),
                (unsigned long long)atomic_load(&t->n.opted_out));
    pthread_mutex_lock(&t->rules_mu);
    rules_stats_sum((const struct rules *const *)t->rule_sets, t->nrule_sets, &b);
    pthread_mutex_unlock(&t->rules_mu);
    rules_remote_stats(t->remote, &b); /* nothing without rules_url */
    tbuf_printf(&b, ",\"forgotten\":%llu,\"dead_pruned\":%llu", (unsigned long long)atomic_load(&t->n.forgotten),
                (unsigned long long)atomic_load(&t->n.dead_pruned));
    tbuf_putc(&b, '}');
    if (b.oom) {
        tbuf_free(&b);
        return tly_fail(TALLY_ENOMEM, "tally_stats: out of memory");
    }
    *json_out = tbuf_steal(&b);
    return TALLY_OK;
}
