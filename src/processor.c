/* The processor thread (see processor.h). It owns the identity and the rules; the only things it
 * shares are the intake (callers write, it reads), the row queue (it writes, the worker reads),
 * the counters, the reload requests (requests.h) and what it publishes for callers (the identity
 * snapshot, the rule set's pointer for tally_stats), each under its own lock (runtime.h). */
#include "processor.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "identity.h"
#include "message.h"
#include "rowq.h"
#include "rules.h"
#include "store.h"
#include "rules_remote.h"

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
    consent_state consent;       /* the device's preferences as applied so far (client mode) */
    char      *prefs;            /* their JSON text, stamped on messages; NULL until decided */
    size_t     prefs_len;
    int64_t    remote_version; /* the remote bundle in use, 0: the local rules (rules_remote.h) */
    struct canary {            /* a new bundle running for some identities only (rules_canary) */
        rules   *R;            /* NULL: none */
        int     *map_idx;
        int64_t  version;
        uint64_t n, bad;       /* its messages, and those a rule failed on or dropped */
        uint64_t base_n, base_bad; /* the same for the active set meanwhile */
    } canary;
    /* rule_threads > 1 (server mode, see "Rule states" below): t->proc is the router and rule
     * state 0, states[] every state (states[0] == t->proc, the others of their own thread, each
     * with its lane); rows_mu, shared by all, lets several threads write the row queue. With one
     * state: nstates 1, no lane, no lock, and the processor works as it always did. */
    struct processor **states;
    size_t     nstates;
    struct lane *lane;
    pthread_mutex_t *rows_mu;
    rules    **sets;           /* the router's: each state's R, published for tally_stats */
    /* Several states: the canary's messages so far, over all of them (the router's counter;
     * every state points to it), so that it runs exactly rules_canary_messages although it is
     * judged only between drains. NULL with one state, which judges it at once. */
    _Atomic uint64_t canary_taken;
    _Atomic uint64_t *canary_cap;
};

/* ---- rule states ----
 * Several Lua states, to use more than one core for the rules in server mode, where messages
 * come from many identities and order is promised per identity only. The processor thread (the
 * router) pops the intake as always and sends each message to the state picked by a hash of its
 * userId (else anonymousId), running state 0's itself; state k > 0 runs on its own thread, fed
 * through its lane (a single-producer single-consumer ring). One identity always reaches the same
 * state, which handles its messages in order and writes their rows in order: per-identity order
 * holds to the row queue, and from there as before.
 *
 * Everything else is ordered against all messages: at the end of every drain, and before a
 * record that must not overtake any message (consent), the router waits until every lane is
 * empty and its state idle (lanes_join). Between two drains, then, no state runs: reloads, remote
 * swaps and canary verdicts change every state there, forgets write their row behind every
 * message before them, rule drops are handed over, and processed_pos (the worker's flushes)
 * moves past records that are all written. */
#define LANE_SLOTS 512 /* more than a drain's budget: a drain ends with a join */

struct lane {
    intake_rec     *ring[LANE_SLOTS];
    _Alignas(64) _Atomic size_t head; /* the router: records sent */
    _Alignas(64) _Atomic size_t done; /* the state's thread: records processed */
    _Atomic int     sleeping;         /* the state's thread waits for records (under mu) */
    _Atomic int     joining;          /* the router waits for done == head (under mu) */
    _Atomic int     quit;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    pthread_t       th;
    int             started;
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

static void hand_over(tally_t *t, pthread_mutex_t *mu, int dest_idx, const char *data, size_t len)
{
    if (mu) pthread_mutex_lock(mu); /* several rule states write the queue: one row at a time */
    char *buf = row_slot(t, len);
    if (buf) {
        memcpy(buf, data, len);
        rowq_publish(t->rows, dest_idx, (uint32_t)len);
    }
    if (mu) pthread_mutex_unlock(mu);
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

/* A message lost for want of memory (a message list that could not grow): counted as the
 * store's other messages it never took. */
static void given_up(tally_t *t) { atomic_fetch_add(&t->n.store_given_up, 1); }

static void reject(tally_t *t, const char *why)
{
    atomic_fetch_add(&t->n.invalid, 1);
    tly_log(&t->log, TALLY_LOG_WARN, "message dropped by the processor: %s", why);
}

static void on_violation(void *ud, const char *rule, const char *code, const char *text)
{
    tally_t *t = ((struct processor *)ud)->t;
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
    struct processor *p = ud; /* the rule state that ran the rule */
    tally_t *t = p->t;
    atomic_fetch_add(&t->n.rule_dropped, 1);
    count_rule_drop(p, rule, cls);
    tly_log(&t->log, TALLY_LOG_DEBUG, "rule %s dropped a message: %s", rule, why);
}

/* One row per destination: the message itself, or what the destination's mapping makes of it
 * (none, one or several payloads); none for a destination whose consent categories the message's
 * preferences (`granted`) do not all grant. */
static void rows_for_dests(tally_t *t, struct processor *p, rules *R, const int *map_idx, const tj_value *m,
                           const char *json, size_t len, uint64_t granted)
{
    for (size_t i = 0; i < t->ndests; i++) {
        if (!consent_allows(t->consent.need[i], granted)) {
            atomic_fetch_add_explicit(&t->dests[i].consent_withheld, 1, memory_order_relaxed);
            continue;
        }
        if (map_idx[i] < 0) {
            hand_over(t, p->rows_mu, (int)i, json, len);
            continue;
        }
        rules_report rep = {on_violation, NULL, on_rule_drop, p, 0, 0};
        rules_map(R, map_idx[i], p->arena, m, p->wall_ms, &p->payloads, &rep);
        if (p->payloads.cap < RULES_MAX_PARTS) given_up(t); /* lost for this destination: logged by rules.c */
        for (size_t k = 0; k < p->payloads.n; k++) {
            tbuf_reset(&p->mapped);
            if (tj_write(&p->mapped, p->payloads.v[k]) || p->mapped.oom) {
                /* dropped for this destination: counted and logged, like any message */
                reject(t, p->mapped.oom ? "a mapped payload: out of memory" : "a mapped payload cannot be written as JSON");
                continue;
            }
            hand_over(t, p->rows_mu, (int)i, p->mapped.data, p->mapped.len);
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

/* ---- consent ---- */

/* New preferences (tally_consent merged them on the caller's thread): from the next record on,
 * and to the worker in order with the messages before them, so it stores them in the same
 * transaction and purges or releases exactly the rows queued before. */
static void apply_consent(tally_t *t, struct processor *p, const intake_rec *r)
{
    tly_err err;
    consent_state cs;
    char *text = strndup(r->json, r->json_len);
    if (!text || consent_state_of(&t->consent, text, &cs, &err)) {
        free(text);
        tly_log(&t->log, TALLY_LOG_ERROR, "consent: not applied: %s", text ? err.msg : "out of memory");
        return;
    }
    free(p->prefs);
    p->prefs = text;
    p->prefs_len = r->json_len;
    p->consent = cs;
    /* every rule state is idle here (drain joined them first): they drop messages as we do */
    for (size_t k = 1; k < p->nstates; k++) p->states[k]->consent = cs;
    char *data = row_slot(t, r->json_len);
    if (!data) return;
    memcpy(data, r->json, r->json_len);
    rowq_publish(t->rows, ROW_CONSENT, r->json_len);
}

/* The consent categories message m grants, worked out once per message: its own
 * context.consent.categoryPreferences when it has them; otherwise the device's preferences, which
 * it is stamped with (client mode), or consent_default (server mode). Before the first decision
 * with consent_required everything is handed over, and the worker holds it. */
static uint64_t message_consent(tally_t *t, struct processor *p, tj_value *m, int server)
{
    tj_value *ctx = tj_object_get(m, "context"), *c;
    if (ctx && ctx->type == TJ_RAW && tj_expand(p->arena, ctx, NULL)) ctx = NULL; /* tally_send's, kept as text */
    c = ctx ? tj_object_get(ctx, "consent") : NULL;
    if (c && c->type == TJ_RAW && tj_expand(p->arena, c, NULL)) c = NULL;
    tj_value *own = c ? tj_object_get(c, "categoryPreferences") : NULL;
    if (own) return consent_granted(&t->consent, own);
    if (server) return t->cfg.consent_default == CONSENT_DEFAULT_GRANT ? ~UINT64_C(0) : 0;
    if (!p->consent.decided) return t->cfg.consent_required ? ~UINT64_C(0) : 0;
    /* not copied: the text stays until the next REC_CONSENT, and this message is written before it */
    tj_value *raw = tj_new(p->arena, TJ_RAW);
    if (raw) {
        raw->u.str.s = p->prefs;
        raw->u.str.len = p->prefs_len;
    }
    if (ctx && ctx->type == TJ_OBJECT && !c && (c = tj_new(p->arena, TJ_OBJECT)) != NULL &&
        tj_object_set(p->arena, ctx, "consent", 7, c))
        c = NULL;
    if (!raw || !c || c->type != TJ_OBJECT || tj_object_set(p->arena, c, "categoryPreferences", 19, raw))
        tly_log(&t->log, TALLY_LOG_WARN, "consent: a message could not be stamped with the preferences "
                "(context.consent is not an object, or out of memory); they still decide where it goes");
    return p->consent.granted;
}

/* ---- the canary of a remote bundle ---- */

static void canary_end(struct processor *p)
{
    rules_free(p->canary.R);
    free(p->canary.map_idx);
    memset(&p->canary, 0, sizeof p->canary);
}

static void publish_rules(tally_t *t, struct processor *p);

/* Once the canary handled rules_canary_messages (over every rule state), it is judged: rolled
 * back when its rate of messages a rule failed on or dropped exceeds the active set's (over the
 * same time) by more than rules_canary_margin, else promoted to every identity. p is the router;
 * with several states it runs between two drains, when none of them runs. */
static void canary_judge(tally_t *t, struct processor *p)
{
    uint64_t n = 0, bad = 0, base_n = 0, base_bad = 0;
    for (size_t k = 0; k < p->nstates; k++) {
        const struct canary *c = &p->states[k]->canary;
        n += c->n;
        bad += c->bad;
        base_n += c->base_n;
        base_bad += c->base_bad;
    }
    if (n < (uint64_t)t->cfg.rules_canary_messages) return;
    double rate = (double)bad / (double)n, base = base_n ? (double)base_bad / (double)base_n : 0;
    int promote = rate <= base + t->cfg.rules_canary_margin;
    int64_t version = p->canary.version;
    if (promote) {
        rules *old[TALLY_MAX_RULE_THREADS];
        for (size_t k = 0; k < p->nstates; k++) {
            struct processor *s = p->states[k];
            old[k] = s->R;
            s->R = s->canary.R;
            memcpy(s->map_idx, s->canary.map_idx, t->ndests * sizeof *s->map_idx);
            s->remote_version = version;
            s->canary.R = NULL;
        }
        publish_rules(t, p);
        for (size_t k = 0; k < p->nstates; k++) rules_free(old[k]);
    }
    tly_log(&t->log, promote ? TALLY_LOG_INFO : TALLY_LOG_WARN, "remote rules: canary version %lld: %.4f of %llu "
            "messages failed or dropped, against %.4f of %llu for the active rules: %s", (long long)version, rate,
            (unsigned long long)n, base, (unsigned long long)base_n, promote ? "promoted" : "rolled back");
    for (size_t k = 0; k < p->nstates; k++) canary_end(p->states[k]);
    rules_remote_verdict(t, version, promote);
}

/* Counted per message and per rule state. One state judges at once; several, after each drain. */
static void canary_count(tally_t *t, struct processor *p, int canary, int bad)
{
    struct canary *c = &p->canary;
    if (canary) {
        c->n++;
        c->bad += (uint64_t)bad;
    } else {
        c->base_n++;
        c->base_bad += (uint64_t)bad;
    }
    if (p->nstates == 1) canary_judge(t, p);
}

static void process(tally_t *t, struct processor *p, const intake_rec *r)
{
    int server = t->cfg.mode == MODE_SERVER, control = r->kind == REC_RESET || r->kind == REC_SESSION_START;
    if (r->kind == REC_CONSENT) {
        apply_consent(t, p, r);
        return;
    }
    if (!control && p->consent.opted_out) { /* nothing new is kept, not even identity changes */
        atomic_fetch_add_explicit(&t->n.opted_out, 1, memory_order_relaxed);
        return;
    }
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
    /* only where consent can matter: a destination needs a category, or there are preferences to stamp */
    uint64_t granted = ~UINT64_C(0);
    if (t->consent.any_need || (!server && p->consent.decided)) granted = message_consent(t, p, m, server);
    if (msg_validate(m, 1, &err)) {
        reject(t, err.msg);
        return;
    }
    rules_report rep = {on_violation, NULL, on_rule_drop, p, 0, 0};
    rules *R = p->R;
    const int *map_idx = p->map_idx;
    int canary = p->canary.R && rules_remote_in_canary(t->cfg.rules_canary, m);
    if (canary && p->canary_cap && atomic_fetch_add(p->canary_cap, 1) >= (uint64_t)t->cfg.rules_canary_messages)
        canary = 0; /* the canary had its share: the active set until it is judged */
    if (canary) {
        R = p->canary.R;
        map_idx = p->canary.map_idx;
    }
    rules_process(R, p->arena, m, p->wall_ms, &p->results, &rep);
    if (p->results.cap < RULES_MAX_PARTS) given_up(t); /* no room for the results: rules.c logged it */
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
                    "(counted as oversize)", p->out.len, rules_count(R) ? "the rules" : "stamping",
                    TALLY_MAX_MESSAGE_BYTES);
            continue;
        }
        rows_for_dests(t, p, R, map_idx, v, p->out.data, p->out.len, granted);
        atomic_fetch_add(&t->n.processed, 1);
    }
    /* after the rows: judging may free the set that just made them */
    if (p->canary.R) canary_count(t, p, canary, rep.failed || rep.dropped);
}

/* ---- rule states: routing and lanes (see "rule states" at the top) ---- */

/* The state that runs message record r: by a hash of its userId, else its anonymousId, as the
 * message will carry them (a string's text unescaped, so that one id always lands in one state);
 * a message with neither goes to state 0. FNV-1a, salted apart from the canary's hash. */
static size_t route(const struct processor *p, const intake_rec *r)
{
    const char *id = NULL;
    size_t len = 0, w;
    char buf[256];
    if (r->kind == REC_SEND) {
        tj_field f[2] = {TJ_FIELD("userId", -1), TJ_FIELD("anonymousId", -1)};
        if (tj_scan(r->json, r->json_len, f, 2, &w, NULL) == TALLY_OK) {
            const tj_field *g = f[0].found && f[0].first == '"' ? &f[0] : f[1].found && f[1].first == '"' ? &f[1] : NULL;
            if (g) {
                id = r->json + g->at;
                len = g->len;
                if (g->escaped && len <= sizeof buf) {
                    len = tj_unescape(buf, id, len);
                    id = buf;
                }
            }
        }
    } else if (r->kind == REC_IDENTIFY || r->kind == REC_ALIAS) {
        id = r->s1;
        len = r->s1_len;
    }
    if (!id) return 0;
    uint32_t h = 2166136261u;
    for (const char *c = "tally-rule-state:"; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)id[i]) * 16777619u;
    return h % p->nstates;
}

static void lane_signal(struct lane *l)
{
    pthread_mutex_lock(&l->mu);
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

/* The router: record r is state s's now (it frees it). */
static void lane_push(struct processor *s, intake_rec *r)
{
    struct lane *l = s->lane;
    size_t h = atomic_load_explicit(&l->head, memory_order_relaxed);
    assert(h - atomic_load(&l->done) < LANE_SLOTS); /* a drain sends fewer, and ends with a join */
    l->ring[h % LANE_SLOTS] = r;
    /* seq_cst, like the load of sleeping after it: either the thread sees the record before it
     * waits, or we see it waiting (lane_main sets sleeping under mu, so the signal is not lost) */
    atomic_store(&l->head, h + 1);
    if (atomic_load(&l->sleeping)) lane_signal(l);
}

/* The router: returns once every state has processed every record it was sent, their rows
 * published in the row queue. */
static void lanes_join(struct processor *p)
{
    for (size_t k = 1; k < p->nstates; k++) {
        struct lane *l = p->states[k]->lane;
        size_t h = atomic_load_explicit(&l->head, memory_order_relaxed);
        if (atomic_load(&l->done) == h) continue;
        pthread_mutex_lock(&l->mu);
        atomic_store(&l->joining, 1);
        while (atomic_load(&l->done) != h) pthread_cond_wait(&l->cv, &l->mu);
        atomic_store(&l->joining, 0);
        pthread_mutex_unlock(&l->mu);
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

/* The thread of rule state s (k > 0): processes what the router sends, in order, until told to
 * quit with nothing left. */
static void *lane_main(void *arg)
{
    struct processor *s = arg;
    tally_t *t = s->t;
    struct lane *l = s->lane;
    size_t tail = 0;
    for (;;) {
        if (tail == atomic_load(&l->head)) {
            pthread_mutex_lock(&l->mu);
            atomic_store(&l->sleeping, 1);
            while (tail == atomic_load(&l->head) && !atomic_load(&l->quit)) pthread_cond_wait(&l->cv, &l->mu);
            atomic_store(&l->sleeping, 0);
            pthread_mutex_unlock(&l->mu);
            if (tail == atomic_load(&l->head)) break; /* quit */
            continue;
        }
        intake_rec *r = l->ring[tail % LANE_SLOTS];
        read_clocks(t, s);
        process(t, s, r);
        if (r->reserved) tly_stamp_applied(t);
        intake_rec_free(&t->q, r);
        atomic_store(&l->done, ++tail); /* seq_cst: pairs with joining, as in lane_push */
        if (atomic_load(&l->joining)) lane_signal(l);
        if (tail % WAKE_EVERY == 0) tly_wake_worker(t);
    }
    return NULL;
}

static int drain(tally_t *t, struct processor *p, int budget)
{
    int n = 0, every = rules_count(p->R) ? 1 : WAKE_EVERY, lanes = p->nstates > 1;
    intake_rec *r;
    read_clocks(t, p);
    while (n < budget && (r = intake_pop(&t->q)) != NULL) {
        size_t k = 0;
        if (lanes && r->kind == REC_CONSENT) lanes_join(p); /* between two messages of every state */
        else if (lanes && r->kind != REC_RESET && r->kind != REC_SESSION_START) k = route(p, r);
        if (k) {
            lane_push(p->states[k], r);
        } else {
            process(t, p, r);
            if (r->reserved) tly_stamp_applied(t);
            intake_rec_free(&t->q, r);
        }
        n++;
        /* Everything the intake gave up so far is handled: processed here, or dropped by its
         * full policy (drop_oldest advances the same counter). The worker's flushes count on it.
         * With several rule states, only once they are joined (below). */
        if (!lanes) atomic_store_explicit(&t->processed_pos, intake_taken(&t->q), memory_order_release);
        /* Not after every record: a worker that keeps up sleeps between two rows, and waking it
         * for each was an eventfd write per message (11% of the samples with three rules). Every
         * WAKE_EVERY records, when the row queue fills (row_slot) and when this drain ends. */
        if (n % WAKE_EVERY == 0) tly_wake_worker(t);
        if (n % every == 0) read_clocks(t, p);
    }
    if (lanes) {
        lanes_join(p);
        atomic_store_explicit(&t->processed_pos, intake_taken(&t->q), memory_order_release);
        if (p->canary.R) canary_judge(t, p);
    }
    for (size_t k = 0; k < p->nstates; k++)
        if (p->states[k]->ndrops) rule_drops_to_worker(p->states[k]);
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

/* The sets tally_stats reads (every rule state's): replaced only under rules_mu, since the old
 * ones are freed after. p is the router. */
static void publish_rules(tally_t *t, struct processor *p)
{
    pthread_mutex_lock(&t->rules_mu);
    for (size_t k = 0; k < p->nstates; k++) p->sets[k] = p->states[k]->R;
    t->rules = p->nstates ? p->sets[0] : NULL;
    t->rule_sets = p->sets;
    t->nrule_sets = p->nstates;
    pthread_mutex_unlock(&t->rules_mu);
}

/* Loads the rule set again into new states, one per rule state; only sets that all load
 * completely replace the running ones, and mappings must still resolve. */
static int reload_rules(tally_t *t, struct processor *p, tly_err *err)
{
    if (p->remote_version)
        return tly_err_set(err, TALLY_ECONFIG, "rules: remote bundle version %lld is active; local rules are not "
                           "reloaded while one is", (long long)p->remote_version);
    if (!t->cfg.rules) return tly_err_set(err, TALLY_ECONFIG, "no rules configured");
    rules *R[TALLY_MAX_RULE_THREADS] = {NULL};
    int rc = TALLY_OK;
    for (size_t k = 0; !rc && k < p->nstates; k++) {
        rc = open_rules(t, t->cfg.rules, &R[k], err);
        for (size_t i = 0; !rc && i < t->ndests; i++)
            if (p->mapping[i] && rules_find_mapping(R[k], p->mapping[i]) < 0)
                rc = tly_err_set(err, TALLY_ELUA, "mapping \"%s\" of %s is missing from the new rules", p->mapping[i],
                                 t->dests[i].name);
    }
    if (rc) {
        tly_log(&t->log, TALLY_LOG_ERROR, "rules reload failed, the previous rules stay: %s", err->msg);
        for (size_t k = 0; k < p->nstates; k++) rules_free(R[k]);
        return rc;
    }
    for (size_t k = 0; k < p->nstates; k++) {
        struct processor *s = p->states[k];
        for (size_t i = 0; i < t->ndests; i++)
            if (p->mapping[i]) s->map_idx[i] = rules_find_mapping(R[k], p->mapping[i]);
        rules *old = s->R;
        s->R = R[k];
        R[k] = old;
    }
    publish_rules(t, p);
    for (size_t k = 0; k < p->nstates; k++) rules_free(R[k]); /* the old ones now */
    tly_log(&t->log, TALLY_LOG_INFO, "rules reloaded: %zu scripts", rules_count(p->R));
    return TALLY_OK;
}

/* A remote bundle's rule set, loaded, checked and self-tested by the worker (rules_remote.c):
 * taking it is a pointer swap, between two messages, like a reload. The worker checked that it
 * has every mapping the destinations name. */
static void take_remote_rules(tally_t *t, struct processor *p)
{
    rules_swap *s = rules_remote_take(t);
    if (!s) return;
    assert(s->nmore + 1 == p->nstates); /* the worker loads one copy per rule state */
    for (size_t k = 0; k < p->nstates; k++) canary_end(p->states[k]); /* a newer bundle replaces a canary still running */
    if (s->canary) {
        for (size_t k = 0; k < p->nstates; k++) {
            struct processor *q = p->states[k];
            if (!(q->canary.map_idx = calloc(t->ndests + 1, sizeof *q->canary.map_idx))) {
                tly_log(&t->log, TALLY_LOG_ERROR, "remote rules: out of memory: canary version %lld not started",
                        (long long)s->version);
                for (size_t j = 0; j < p->nstates; j++) canary_end(p->states[j]);
                for (size_t j = k; j < p->nstates; j++) rules_free(j ? s->more[j - 1] : s->R);
                rules_swap_free(s);
                return;
            }
            q->canary.R = k ? s->more[k - 1] : s->R;
            for (size_t i = 0; i < t->ndests; i++)
                q->canary.map_idx[i] = p->mapping[i] ? rules_find_mapping(q->canary.R, p->mapping[i]) : -1;
            q->canary.version = s->version;
        }
        atomic_store(&p->canary_taken, 0);
        rules_swap_free(s);
        return;
    }
    rules *old[TALLY_MAX_RULE_THREADS];
    for (size_t k = 0; k < p->nstates; k++) {
        struct processor *q = p->states[k];
        rules *R = k ? s->more[k - 1] : s->R;
        for (size_t i = 0; i < t->ndests; i++)
            if (p->mapping[i]) {
                q->map_idx[i] = rules_find_mapping(R, p->mapping[i]);
                assert(q->map_idx[i] >= 0);
            }
        old[k] = q->R;
        q->R = R;
        q->remote_version = s->version;
    }
    publish_rules(t, p);
    for (size_t k = 0; k < p->nstates; k++) rules_free(old[k]);
    rules_swap_free(s);
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
    if (atomic_load(&t->rules_next)) return -1;
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

/* A host that sends a steady trickle (an nginx worker: one message per request, tens of
 * thousands a second) made every call pay a wake: the caller's eventfd write, then this thread's
 * trip through poll and a drain of one record, and the worker's wake and commit after it. So
 * once a drain found work, the processor waits up to NAP_MS for more without setting
 * proc_sleeping: callers see it awake and skip the write, and the next drain takes everything that
 * came meanwhile. Forced wakes (flush, reload, stop: tly_wake_all) still end the nap at once. The
 * price is at most NAP_MS more before a message reaches the worker. */
#define NAP_MS 1

static void processor_nap(tally_t *t)
{
    struct pollfd pfd = {t->proc_wake_fd, POLLIN, 0};
    if (poll(&pfd, 1, NAP_MS) > 0) {
        uint64_t v;
        ssize_t r = read(t->proc_wake_fd, &v, sizeof v);
        (void)r;
    }
}

void *processor_main(void *arg)
{
    tally_t *t = arg;
    struct processor *p = t->proc;
    int busy = 0; /* a drain found work since the last nap */
    for (;;) {
        take_remote_rules(t, p);
        int did = drain(t, p, 256);
        int state = idle_state(t);
        if (state < 0) serve_reloads(t, p);
        if (state < 0) serve_forgets(t, p);
        if (did) busy = 1;
        if (did || state < 0) continue;
        if (state == 1 && intake_position(&t->q) == intake_taken(&t->q)) break;
        if (busy) {
            busy = 0;
            processor_nap(t);
            continue;
        }
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

/* The preferences a previous run kept: for stamping here, and for tally_consent to merge into. */
static int load_consent(tally_t *t, struct processor *p, tly_err *err)
{
    char *prefs = NULL;
    tly_err e;
    int rc = store_meta_get(t->store, CONSENT_META_KEY, &prefs, err);
    if (rc || !prefs) return rc;
    if (consent_state_of(&t->consent, prefs, &p->consent, &e)) {
        /* only a hand-edited store gets here: undecided is the safe reading (nothing is granted) */
        tly_log(&t->log, TALLY_LOG_ERROR, "store: consent preferences not readable, ignored: %s", e.msg);
        free(prefs);
        return TALLY_OK;
    }
    p->prefs = prefs;
    p->prefs_len = strlen(prefs);
    pthread_mutex_lock(&t->consent_mu);
    t->consent_prefs = strdup(prefs);
    pthread_mutex_unlock(&t->consent_mu);
    if (!t->consent_prefs) return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    atomic_store(&t->consent_stamp, sizeof ",\"consent\":{\"categoryPreferences\":}" - 1 + p->prefs_len);
    return TALLY_OK;
}

/* Rule state k > 0 (rule_threads): its own arena, rule set (R when given, taken either way), the
 * mappings' indexes in it and its lane; its thread starts later (start_lanes). */
static int state_open(tally_t *t, struct processor *p, size_t k, rules *R, tly_err *err)
{
    struct processor *s = calloc(1, sizeof *s);
    if (!s) {
        rules_free(R);
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    }
    p->states[k] = s;
    p->nstates = k + 1;
    s->R = R;
    s->t = t;
    s->rows_mu = p->rows_mu;
    s->canary_cap = &p->canary_taken;
    s->consent = p->consent;
    if (!(s->arena = tj_arena_new()) || !(s->map_idx = calloc(t->ndests + 1, sizeof *s->map_idx)) ||
        !(s->lane = calloc(1, sizeof *s->lane)))
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    pthread_mutex_init(&s->lane->mu, NULL);
    pthread_cond_init(&s->lane->cv, NULL);
    int rc = !R && t->cfg.rules ? open_rules(t, t->cfg.rules, &s->R, err) : TALLY_OK;
    for (size_t i = 0; !rc && i < t->ndests; i++) {
        s->map_idx[i] = p->mapping[i] ? rules_find_mapping(s->R, p->mapping[i]) : -1;
        assert(!p->mapping[i] || s->map_idx[i] >= 0); /* the same rules as state 0, where it resolved */
    }
    return rc;
}

/* The rule states' threads start with every signal blocked, as the runtime's do (runtime.c). */
static int start_lanes(struct processor *p, tly_err *err)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = 0;
    for (size_t k = 1; !e && k < p->nstates; k++) {
        struct lane *l = p->states[k]->lane;
        if (!(e = pthread_create(&l->th, NULL, lane_main, p->states[k]))) {
            l->started = 1;
            pthread_setname_np(l->th, "tally-rules");
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return e ? tly_err_set(err, TALLY_ENOMEM, "tally_open: cannot start a rule thread: %s", strerror(e)) : TALLY_OK;
}

/* What every rule state holds, the processor's own (state 0) and each lane's: freed the same way. */
static void state_parts_free(struct processor *s)
{
    free(s->map_idx);
    rules_free(s->R);
    canary_end(s);
    msg_list_free(&s->results);
    msg_list_free(&s->payloads);
    for (size_t k = 0; k < s->ndrops; k++) free(s->drops[k].rule);
    free(s->drops);
    tbuf_free(&s->mapped);
    tbuf_free(&s->out);
    tj_arena_free(s->arena);
    free(s);
}

static void state_free(struct processor *s)
{
    if (!s) return;
    struct lane *l = s->lane;
    if (l && l->started) { /* idle: the router joined it after its last drain */
        pthread_mutex_lock(&l->mu);
        atomic_store(&l->quit, 1);
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->th, NULL);
    }
    if (l) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        free(l);
    }
    state_parts_free(s);
}

int processor_open(tally_t *t, tly_err *err)
{
    assert(t->store && !t->proc);
    /* client mode has one identity, whose messages must stay in one order: one chain */
    if (t->cfg.rule_threads > 1 && t->cfg.mode != MODE_SERVER)
        return tly_err_set(err, TALLY_ECONFIG, "rule_threads: %d needs mode = server (client mode runs one rule "
                           "state: its messages are one identity's, in one order)", t->cfg.rule_threads);
    size_t n = t->cfg.mode == MODE_SERVER ? (size_t)t->cfg.rule_threads : 1;
    struct processor *p = calloc(1, sizeof *p);
    t->proc = p;
    if (!p || !(p->arena = tj_arena_new()) || !(p->mapping = calloc(t->ndests + 1, sizeof *p->mapping)) ||
        !(p->map_idx = calloc(t->ndests + 1, sizeof *p->map_idx)) || !(p->states = calloc(n, sizeof *p->states)) ||
        !(p->sets = calloc(n, sizeof *p->sets)) || (n > 1 && !(p->rows_mu = malloc(sizeof *p->rows_mu))))
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    if (p->rows_mu) pthread_mutex_init(p->rows_mu, NULL);
    p->states[0] = p;
    p->nstates = 1;
    if (n > 1) p->canary_cap = &p->canary_taken;
    p->t = t;
    p->sink = (meta_sink){meta_to_worker, p};
    int rc = TALLY_OK;
    /* a remote bundle kept in the store replaces the local rules (README, "Shipping rules") */
    rules_swap *s = rules_remote_take(t);
    if (s) {
        assert(s->nmore + 1 == n); /* the worker loads one copy per rule state */
        p->R = s->R;
        p->remote_version = s->version;
    } else if (t->cfg.rules) {
        rc = open_rules(t, t->cfg.rules, &p->R, err);
    }
    for (size_t i = 0; !rc && i < t->ndests; i++) rc = read_mapping(t, p, i, err);
    for (size_t k = 1; k < n; k++) {
        rules *R = s ? s->more[k - 1] : NULL;
        if (!rc) {
            rc = state_open(t, p, k, R, err);
            if (s) p->states[k]->remote_version = s->version;
        } else {
            rules_free(R);
        }
    }
    rules_swap_free(s);
    if (!rc) publish_rules(t, p);
    if (!rc && t->cfg.mode != MODE_SERVER &&
        !(rc = identity_load(&p->id, t->store, (int64_t)t->cfg.session_timeout_s * 1000, tly_clock_wall(t), err)))
        publish_identity(t, p);
    if (!rc && t->cfg.mode != MODE_SERVER) rc = load_consent(t, p, err);
    if (!rc) rc = start_lanes(p, err);
    return rc;
}

void processor_free(tally_t *t)
{
    struct processor *p = t->proc;
    if (!p) return;
    pthread_mutex_lock(&t->rules_mu);
    t->rules = NULL;
    t->rule_sets = NULL;
    t->nrule_sets = 0;
    pthread_mutex_unlock(&t->rules_mu);
    for (size_t k = 1; k < p->nstates; k++) state_free(p->states[k]);
    free(p->states);
    free(p->sets);
    if (p->rows_mu) {
        pthread_mutex_destroy(p->rows_mu);
        free(p->rows_mu);
    }
    identity_free(&p->id);
    free(p->prefs);
    for (size_t i = 0; p->mapping && i < t->ndests; i++) free(p->mapping[i]);
    free(p->mapping);
    state_parts_free(p);
    t->proc = NULL;
}
