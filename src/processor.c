/* The processor thread (see processor.h). It owns the identity and the rules; the only things it
 * shares are the intake (callers write, it reads), the row queue (it writes, the worker reads),
 * the counters, the reload requests (requests.h) and what it publishes for callers (the identity
 * snapshot, the rule set's pointer for tally_stats), each under its own lock (runtime.h). */
#include "processor.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "identity.h"
#include "message.h"
#include "rowq.h"
#include "rules.h"

#if defined(__SANITIZE_THREAD__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic ignored "-Wtsan" /* see runtime.h */
#endif

struct processor {
    tj_arena  *arena;
    tbuf       out;
    tbuf       mapped;
    identity   id;
    rules     *R;
    msg_list   results;    /* messages after the rules */
    msg_list   payloads;   /* one destination's mapped payloads */
    char     **mapping;    /* per destination: the destination-stage rule shaping its payloads, or NULL */
    int       *map_idx;    /* that rule's index in the current rule set, -1 for none */
    meta_sink  sink;
    tally_t   *t;
    int64_t    mono_ms, wall_ms; /* read every WAKE_EVERY records (drain), not for each one */
    struct rule_drops {          /* rule drops not handed over yet (rule_drops_to_worker) */
        char    *rule;
        int      cls;
        uint64_t n;
    } *drops;
    size_t     ndrops, drops_cap;
};

/* ---- rows for the worker ---- */

/* The worker is woken once per record (drain); but a record that makes more rows than the queue
 * holds (a split times several destinations) would wait for room while the worker sleeps until
 * its next deadline, so a full queue wakes it first. */
static char *row_slot(tally_t *t, size_t len)
{
    if (rowq_full(t->rows)) tly_wake_worker(t);
    char *buf = rowq_slot(t->rows, len);
    if (!buf) {
        atomic_fetch_add(&t->n.store_given_up, 1);
        tly_log(&t->log, TALLY_LOG_ERROR, "out of memory: a message could not be queued for the store");
    }
    return buf;
}

static void hand_over(tally_t *t, int dest_idx, const char *data, size_t len)
{
    char *buf = row_slot(t, len);
    if (!buf) return;
    memcpy(buf, data, len);
    rowq_publish(t->rows, dest_idx, (uint32_t)len);
}

/* Identity changes go to the store through the same queue as the messages they stamp. */
static void meta_to_worker(void *ud, const char *key, const char *value)
{
    struct processor *p = ud;
    size_t kl = strlen(key), vl = value ? strlen(value) : 0;
    char *data = row_slot(p->t, kl + vl + 2);
    if (!data) return;
    memcpy(data, key, kl + 1);
    if (value) memcpy(data + kl + 1, value, vl + 1);
    else data[kl + 1] = '\0';
    rowq_publish(p->t->rows, value ? ROW_META_SET : ROW_META_DEL, (uint32_t)(kl + vl + 2));
}

/* ---- processing ---- */

static void reject(tally_t *t, const char *why)
{
    atomic_fetch_add(&t->n.invalid, 1);
    tly_log(&t->log, TALLY_LOG_WARN, "message dropped by the processor: %s", why);
}

static void on_violation(void *ud, const char *rule, const char *code, const char *text)
{
    tally_t *t = ud;
    atomic_fetch_add(&t->n.violations, 1);
    tly_log(&t->log, TALLY_LOG_DEBUG, "rule %s: violation %s: %s", rule, code, text);
}

/* Counted here per rule and class, and handed to the worker once per drain (not per message) so
 * the store keeps them for `tally inspect` after the process exits. A rule set holds few rules:
 * a linear search is enough. */
static void count_rule_drop(struct processor *p, const char *rule, int cls)
{
    size_t k = 0;
    while (k < p->ndrops && !(p->drops[k].cls == cls && !strcmp(p->drops[k].rule, rule))) k++;
    if (k == p->ndrops) {
        char *name = strdup(rule);
        if (p->ndrops == p->drops_cap) {
            size_t cap = p->drops_cap ? p->drops_cap * 2 : 8;
            struct rule_drops *v = name ? realloc(p->drops, cap * sizeof *v) : NULL;
            if (v) {
                p->drops = v;
                p->drops_cap = cap;
            }
        }
        if (!name || p->ndrops == p->drops_cap) {
            free(name);
            tly_log(&p->t->log, TALLY_LOG_ERROR, "out of memory: a drop by rule %s is not counted in the store", rule);
            return;
        }
        p->drops[p->ndrops++] = (struct rule_drops){name, cls, 0};
    }
    p->drops[k].n++;
}

static void rule_drops_to_worker(struct processor *p)
{
    for (size_t k = 0; k < p->ndrops; k++) {
        struct rule_drops *d = &p->drops[k];
        const char *cls = rule_drop_class_name[d->cls];
        size_t rl = strlen(d->rule), cl = strlen(cls);
        char *data = row_slot(p->t, rl + cl + 24);
        if (data) {
            int len = snprintf(data, rl + cl + 24, "%s%c%s%c%llu", d->rule, '\0', cls, '\0', (unsigned long long)d->n);
            rowq_publish(p->t->rows, ROW_RULE_DROPS, (uint32_t)len);
        }
        free(d->rule);
    }
    p->ndrops = 0;
}

static void on_rule_drop(void *ud, const char *rule, int cls, const char *why)
{
    tally_t *t = ud;
    atomic_fetch_add(&t->n.rule_dropped, 1);
    count_rule_drop(t->proc, rule, cls);
    tly_log(&t->log, TALLY_LOG_DEBUG, "rule %s dropped a message: %s", rule, why);
}

/* One row per destination: the message itself, or what the destination's mapping makes of it
 * (none, one or several payloads). */
static void rows_for_dests(tally_t *t, struct processor *p, const tj_value *m, const char *json, size_t len)
{
    for (size_t i = 0; i < t->ndests; i++) {
        if (p->map_idx[i] < 0) {
            hand_over(t, (int)i, json, len);
            continue;
        }
        rules_report rep = {on_violation, NULL, on_rule_drop, t, 0, 0};
        rules_map(p->R, p->map_idx[i], p->arena, m, p->wall_ms, &p->payloads, &rep);
        for (size_t k = 0; k < p->payloads.n; k++) {
            tbuf_reset(&p->mapped);
            if (tj_write(&p->mapped, p->payloads.v[k]) || p->mapped.oom) {
                /* dropped for this destination: counted and logged, like any message */
                reject(t, p->mapped.oom ? "a mapped payload: out of memory" : "a mapped payload cannot be written as JSON");
                continue;
            }
            hand_over(t, (int)i, p->mapped.data, p->mapped.len);
        }
    }
}

/* Callers read the ids through a snapshot: the identity itself belongs to this thread. What
 * stamping them adds is published first, for the calls' size check (tally.c). */
static void publish_identity(tally_t *t, struct processor *p)
{
    const identity *id = &p->id;
    size_t ids = 0;
    if (id->user_id) ids += sizeof ",\"userId\":" - 1 + tj_string_size(id->user_id, strlen(id->user_id));
    if (t->cfg.context_traits && id->traits) ids += sizeof ",\"traits\":" - 1 + strlen(id->traits);
    atomic_store(&t->stamp_ids, ids);
    char *snap = identity_json(&p->id);
    if (!snap) return;
    p->id.changed = 0;
    pthread_mutex_lock(&t->ident_mu);
    free(t->identity_snapshot);
    t->identity_snapshot = snap;
    pthread_mutex_unlock(&t->ident_mu);
}

static void process(tally_t *t, struct processor *p, const intake_rec *r)
{
    int server = t->cfg.mode == MODE_SERVER, control = r->kind == REC_RESET || r->kind == REC_SESSION_START;
    tj_arena_reset(p->arena);
    tly_err err;
    tj_value *m = NULL;
    if (!control && msg_from_rec(p->arena, r, &m, &err)) {
        reject(t, err.msg);
        return;
    }
    if (!server) {
        /* A session starts no later than the call that starts it: p->wall_ms is read every
         * WAKE_EVERY records, after the call, and a started_at after the first message's timestamp
         * would put the session's start after its first event. */
        int64_t call_ms = intake_rec_time(r) + atomic_load(&t->clock_skew_ms);
        identity_apply(&p->id, &p->sink, r->kind, m, p->mono_ms, call_ms < p->wall_ms ? call_ms : p->wall_ms);
        if (p->id.changed) publish_identity(t, p);
    }
    if (control) return;
    msg_ids ids = {0};
    if (!server) identity_ids(&p->id, &ids);
    if (!t->cfg.context_traits) ids.traits = NULL;
    if (msg_stamp(p->arena, m, &ids, intake_rec_time(r), &err)) {
        reject(t, err.msg);
        return;
    }
    if (msg_validate(m, 1, &err)) {
        reject(t, err.msg);
        return;
    }
    rules_report rep = {on_violation, NULL, on_rule_drop, t, 0, 0};
    rules_process(p->R, p->arena, m, p->wall_ms, &p->results, &rep);
    for (size_t i = 0; i < p->results.n; i++) {
        tj_value *v = p->results.v[i];
        tbuf_reset(&p->out);
        if (tj_write(&p->out, v) || p->out.oom) {
            reject(t, "cannot serialize (out of memory)");
            continue;
        }
        if (p->out.len > TALLY_MAX_MESSAGE_BYTES) {
            /* the call reserved room for stamping, so only rules grow a message this far */
            atomic_fetch_add(&t->n.oversize, 1);
            tly_log(&t->log, TALLY_LOG_WARN, "message dropped: %zu bytes after %s, over the %d-byte limit "
                    "(counted as oversize)", p->out.len, rules_count(p->R) ? "the rules" : "stamping",
                    TALLY_MAX_MESSAGE_BYTES);
            continue;
        }
        rows_for_dests(t, p, v, p->out.data, p->out.len);
        atomic_fetch_add(&t->n.processed, 1);
    }
}

#define WAKE_EVERY 32

/* The clocks sessions and ctx.now go by (ms). Read for every record they were ~8% of the
 * processor's time with no rules, where WAKE_EVERY records take ~30 us; with rules a record can
 * take a script's whole budget, so they are read for each one (and cost nothing next to it).
 * Message timestamps do not come from here: they are the time of each call (intake_rec_time). */
static void read_clocks(tally_t *t, struct processor *p)
{
    p->mono_ms = tly_clock_mono(t);
    p->wall_ms = tly_clock_wall(t);
}

static int drain(tally_t *t, struct processor *p, int budget)
{
    int n = 0, every = rules_count(p->R) ? 1 : WAKE_EVERY;
    intake_rec *r;
    read_clocks(t, p);
    while (n < budget && (r = intake_pop(&t->q)) != NULL) {
        process(t, p, r);
        if (r->reserved) tly_stamp_applied(t);
        intake_rec_free(&t->q, r);
        n++;
        /* Everything the intake gave up so far is handled: processed here, or dropped by its
         * full policy (drop_oldest advances the same counter). The worker's flushes count on it. */
        atomic_store_explicit(&t->processed_pos, intake_taken(&t->q), memory_order_release);
        /* Not after every record: a worker that keeps up sleeps between two rows, and waking it
         * for each was an eventfd write per message (11% of the samples with three rules). Every
         * WAKE_EVERY records, when the row queue fills (row_slot) and when this drain ends. */
        if (n % WAKE_EVERY == 0) tly_wake_worker(t);
        if (n % every == 0) read_clocks(t, p);
    }
    if (p->ndrops) rule_drops_to_worker(p);
    if (n) tly_wake_worker(t);
    return n;
}

/* ---- rules and their reloads ---- */

static int open_rules(tally_t *t, const char *spec, rules **out, tly_err *err)
{
    rules_opts o = {(size_t)t->cfg.lua_memory, (long)t->cfg.lua_instructions, t->cfg.rule_breaker, 1, t->cfg.rule_config,
                    (size_t)t->cfg.lua_memory_per_script};
    return rules_open(out, spec, &o, &t->log, err);
}

/* The set tally_stats reads: replaced only under rules_mu, since the old one is freed after. */
static void publish_rules(tally_t *t, rules *R)
{
    pthread_mutex_lock(&t->rules_mu);
    t->rules = R;
    pthread_mutex_unlock(&t->rules_mu);
}

/* Loads the rule set again into a new state; only a set that loads completely replaces the
 * running one, and mappings must still resolve. */
static int reload_rules(tally_t *t, struct processor *p, tly_err *err)
{
    if (!t->cfg.rules) return tly_err_set(err, TALLY_ECONFIG, "no rules configured");
    rules *R = NULL;
    int rc = open_rules(t, t->cfg.rules, &R, err);
    for (size_t i = 0; !rc && i < t->ndests; i++)
        if (p->mapping[i] && rules_find_mapping(R, p->mapping[i]) < 0)
            rc = tly_err_set(err, TALLY_ELUA, "mapping \"%s\" of %s is missing from the new rules", p->mapping[i],
                             t->dests[i].name);
    if (rc) {
        tly_log(&t->log, TALLY_LOG_ERROR, "rules reload failed, the previous rules stay: %s", err->msg);
        rules_free(R);
        return rc;
    }
    for (size_t i = 0; i < t->ndests; i++)
        if (p->mapping[i]) p->map_idx[i] = rules_find_mapping(R, p->mapping[i]);
    rules *old = p->R;
    p->R = R;
    publish_rules(t, R);
    rules_free(old);
    tly_log(&t->log, TALLY_LOG_INFO, "rules reloaded: %zu scripts", rules_count(R));
    return TALLY_OK;
}

/* Reload requests apply in order with messages: once every record before the call is processed.
 * The caller may give up while we reload: requests_finish finds its request by number. */
static void serve_reloads(tally_t *t, struct processor *p)
{
    size_t taken = intake_taken(&t->q);
    uint64_t seq;
    while (requests_take(&t->req, REQ_RELOAD, taken, &seq)) {
        tly_err err = {""};
        int rc = reload_rules(t, p, &err);
        requests_finish(&t->req, seq, rc, &err);
    }
}

/* ---- forget ---- */

/* tally_forget, here once every record before the call is processed: when the id is the device's
 * own, the identity is reset as tally_reset does (later messages must not carry it), and the
 * erasure goes to the worker as a row, so it runs after every row before it is stored. */
static void serve_forgets(tally_t *t, struct processor *p)
{
    size_t taken = intake_taken(&t->q);
    uint64_t seq;
    char *id;
    size_t len;
    while (requests_take_forget(&t->req, taken, &seq, &id, &len)) {
        char num[24];
        int nl = snprintf(num, sizeof num, "%llu", (unsigned long long)seq);
        if (id && t->cfg.mode != MODE_SERVER &&
            ((p->id.user_id && !strcmp(p->id.user_id, id)) || !strcmp(p->id.anonymous_id, id))) {
            identity_apply(&p->id, &p->sink, REC_RESET, NULL, p->mono_ms, p->wall_ms);
            publish_identity(t, p);
        }
        char *buf = id ? row_slot(t, (size_t)nl + 1 + len) : NULL;
        if (buf) {
            memcpy(buf, num, (size_t)nl + 1);
            memcpy(buf + nl + 1, id, len);
            rowq_publish(t->rows, ROW_FORGET, (uint32_t)(nl + 1 + len));
            tly_wake_worker(t);
        } else {
            tly_err err;
            tly_err_set(&err, TALLY_ENOMEM, "forget: out of memory");
            requests_finish(&t->req, seq, TALLY_ENOMEM, &err);
        }
        free(id);
    }
}

/* ---- the loop ---- */

/* 1: stop (once the intake is empty); 0: sleep; -1: go on (a reload or forget is waiting). */
static int idle_state(tally_t *t)
{
    if (requests_waiting(&t->req, REQ_RELOAD) || requests_forget_waiting(&t->req)) return -1;
    return atomic_load(&t->stop);
}

static void processor_sleep(tally_t *t)
{
    atomic_store_explicit(&t->proc_sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with tly_wake_processor: see runtime.h */
    if (intake_position(&t->q) != intake_taken(&t->q)) {
        atomic_store(&t->proc_sleeping, 0);
        return;
    }
    struct pollfd pfd = {t->proc_wake_fd, POLLIN, 0};
    /* requests (reload, stop) force a wake; the timeout is only a safety net */
    if (poll(&pfd, 1, 1000) > 0) {
        uint64_t v;
        ssize_t r = read(t->proc_wake_fd, &v, sizeof v);
        (void)r;
    }
    atomic_store(&t->proc_sleeping, 0);
}

void *processor_main(void *arg)
{
    tally_t *t = arg;
    struct processor *p = t->proc;
    for (;;) {
        int did = drain(t, p, 256);
        int state = idle_state(t);
        if (state < 0) serve_reloads(t, p);
        if (state < 0) serve_forgets(t, p);
        if (did || state < 0) continue;
        if (state == 1 && intake_position(&t->q) == intake_taken(&t->q)) break;
        processor_sleep(t);
    }
    atomic_store(&t->proc_done, 1);
    tly_wake_worker_forced(t); /* it stops once it has stored what is left */
    return NULL;
}

/* ---- start / stop ---- */

/* A destination naming a "mapping" gets its payloads from that destination-stage rule. */
static int read_mapping(tally_t *t, struct processor *p, size_t i, tly_err *err)
{
    p->map_idx[i] = -1;
    tj_arena *a = tj_arena_new();
    tj_value *cfg, *m;
    tj_error perr;
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    if (tj_parse(a, t->cfg.dests[i], strlen(t->cfg.dests[i]), &cfg, &perr) == 0 &&
        (m = tj_object_get(cfg, "mapping")) != NULL && m->type == TJ_STRING)
        p->mapping[i] = strdup(m->u.str.s);
    tj_arena_free(a);
    if (!p->mapping[i]) return TALLY_OK;
    p->map_idx[i] = rules_find_mapping(p->R, p->mapping[i]);
    if (p->map_idx[i] < 0)
        return tly_err_set(err, TALLY_ECONFIG, "%s: mapping \"%s\" is not a loaded rule with stage \"destination\"",
                           t->dests[i].name, p->mapping[i]);
    return TALLY_OK;
}

int processor_open(tally_t *t, tly_err *err)
{
    assert(t->store && !t->proc);
    struct processor *p = calloc(1, sizeof *p);
    t->proc = p;
    if (!p || !(p->arena = tj_arena_new()) || !(p->mapping = calloc(t->ndests + 1, sizeof *p->mapping)) ||
        !(p->map_idx = calloc(t->ndests + 1, sizeof *p->map_idx)))
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    p->t = t;
    p->sink = (meta_sink){meta_to_worker, p};
    int rc = TALLY_OK;
    if (t->cfg.rules) rc = open_rules(t, t->cfg.rules, &p->R, err);
    if (!rc) publish_rules(t, p->R);
    for (size_t i = 0; !rc && i < t->ndests; i++) rc = read_mapping(t, p, i, err);
    if (!rc && t->cfg.mode != MODE_SERVER &&
        !(rc = identity_load(&p->id, t->store, (int64_t)t->cfg.session_timeout_s * 1000, tly_clock_wall(t), err)))
        publish_identity(t, p);
    return rc;
}

void processor_free(tally_t *t)
{
    struct processor *p = t->proc;
    if (!p) return;
    identity_free(&p->id);
    for (size_t i = 0; p->mapping && i < t->ndests; i++) free(p->mapping[i]);
    free(p->mapping);
    free(p->map_idx);
    publish_rules(t, NULL);
    rules_free(p->R);
    msg_list_free(&p->results);
    msg_list_free(&p->payloads);
    for (size_t k = 0; k < p->ndrops; k++) free(p->drops[k].rule);
    free(p->drops);
    tbuf_free(&p->mapped);
    tbuf_free(&p->out);
    tj_arena_free(p->arena);
    free(p);
    t->proc = NULL;
}
