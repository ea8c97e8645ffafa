/* The worker thread: the only thread that touches the store and the network. It takes the rows
 * the processor thread made (processor.c: stamping, rules, serializing) and stores and delivers
 * them on one event loop: curl_multi_poll waits for transfers, for its wake eventfd and for the
 * next deadline. */
#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msg_owner.h"
#include "rowq.h"
#include "rules_remote.h"
#include "store.h"
#include "worker.h"

#if defined(__SANITIZE_THREAD__) && !defined(__clang__) && __GNUC__ >= 12
/* gcc -Werror=tsan refuses atomic_thread_fence (TSan does not model fences); the atomics of the
 * wake protocol are still checked */
#pragma GCC diagnostic ignored "-Wtsan"
#endif

#define BATCH_MAX_BYTES (475 * 1024) /* Segment accepts 500 KB; leave room for the envelope */

/* A batch loaded from the store and not removed yet. Several may be out at once per destination
 * (max_in_flight): while the collector reads one, the next is already on its way, instead of the
 * worker waiting a round trip per batch. They are removed from the store in the order they were
 * loaded, whatever order their answers come in (store_load), so a batch answered early waits. */
enum { FL_SENDING = 1, FL_RETRY, FL_OK, FL_DEAD };
typedef struct flight {
    dest_batch batch;
    store_cursor cur;        /* where batch lies in the store */
    void      *handle;       /* the transfer of an asynchronous destination */
    int        state;
    int        attempts;
    int64_t    retry_at;     /* monotonic, FL_RETRY */
    int        status;       /* FL_DEAD: for the dead-letter rows */
    char       reason[300];
} flight;

typedef struct dest_state {
    int        store_id;
    flight     f[MAX_IN_FLIGHT]; /* a ring in load order: the k-th is f[slot(s, k)], k < nf */
    int        head, nf;
    int64_t    pending;      /* messages queued for this destination: in the store and in chunk */
    int64_t    sent;         /* of those, in the batches of f */
    int64_t    since_ms;     /* monotonic: when the oldest message not in a batch arrived */
    int        stale;        /* a rollback changed the rows under batches in flight: recount after them */
    tbuf       chunk;        /* messages not stored yet, joined by NUL bytes (store_impl.h) */
    int        chunk_n;
    int        consent_hold; /* consent_required and no decision yet: kept in the store, not sent */
    int        purge_due;    /* consent revoked while batches were in flight: purge once they settle */
    int64_t    purge_upto;   /* the last row queued before the revocation */
} dest_state;

/* What the open transaction wrote that must survive it failing: the chunks it appended and the
 * identity changes it set. A commit can fail (disk full, I/O error) after the rows were handed
 * over and the callers told TALLY_OK; SQLite then undoes the whole transaction, so the worker
 * keeps a copy until the commit succeeds, and holds what was not delivered meanwhile (`held`)
 * until the store takes it again. */
enum { REDO_RULE_DROPS = -2 };

typedef struct redo {
    int     dest;    /* destination index; -1: an identity change, body "key\0value" (n 0: delete);
                      * REDO_RULE_DROPS: n messages rule `body` dropped, body "rule\0class" */
    int64_t seq;     /* the row store_append made, -1 when none (not stored, or its insert failed) */
    int     n;       /* messages in body (joined by NUL bytes, as in a chunk) */
    int64_t left;    /* commit: how many of them are still queued, -1 unknown */
    tbuf    body;
} redo;

typedef struct redo_list {
    redo   *v;
    size_t  n, cap;  /* entries past n keep their buffers, for the next transaction */
    size_t  bytes;
    int64_t msgs;
} redo_list;

struct worker {
    store      *st;          /* the runtime's (t->store), this thread's alone while it runs */
    redo_list   log;         /* the open transaction's */
    redo_list   held;        /* rolled back and not delivered: stored again once the store writes */
    int64_t     retry_at;    /* monotonic: when to try storing `held` again */
    int64_t     retry_wait;  /* backoff, ms */
    int         failing;     /* commits fail: logged once per spell */
    int64_t     uncopied;    /* messages of the open transaction the log has no copy of (out of memory) */
    size_t      log_max;     /* a transaction commits early once its log holds this many bytes */
    CURLM      *multi;       /* the runtime's (t->transfers): the destinations' transfers run on it */
    dest_state *ds;
    uint64_t    txn_id;      /* the store transaction txn_since belongs to */
    int64_t     txn_since;   /* monotonic: when it began */
    unsigned    rng;
    int         stopping;    /* close: take every row, whatever the store's limits */
    int         held_back;   /* store_on_full=block is holding rows back (logged once per spell) */
    int         chunk_max_n; /* a chunk is at most a batch, and never more than the store holds */
    size_t      chunk_max_bytes;
    consent_state consent;   /* the preferences the rows taken so far were stamped under */
    int64_t     prune_at;    /* monotonic: when dead letters are next checked against their retention */
};

/* ---- rows from the processor -> chunks -> the store ---- */

/* All of a destination's pending messages: the stored ones and those still being gathered. */
static int64_t count_pending(struct worker *w, dest_state *s)
{
    int64_t n;
    tly_err e;
    return (store_pending(w->st, s->store_id, &n, &e) ? 0 : n) + s->chunk_n;
}

/* ---- the redo log ---- */

static redo *redo_push(redo_list *l, int di, int64_t seq, int n, const char *body, size_t len)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        redo *v = realloc(l->v, cap * sizeof *v);
        if (!v) return NULL;
        memset(v + l->cap, 0, (cap - l->cap) * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    redo *e = &l->v[l->n];
    tbuf_reset(&e->body);
    tbuf_append(&e->body, body, len);
    if (e->body.oom) {
        tbuf_free(&e->body);
        return NULL;
    }
    e->dest = di;
    e->seq = seq;
    e->n = n;
    l->n++;
    l->bytes += len;
    if (di >= 0) l->msgs += n;
    return e;
}

static void redo_clear(redo_list *l)
{
    l->n = 0;
    l->bytes = 0;
    l->msgs = 0;
}

static void redo_free(redo_list *l)
{
    for (size_t k = 0; k < l->cap; k++) tbuf_free(&l->v[k].body);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* The length of the first k messages of a chunk, without the separator after them. */
static size_t front_len(const char *body, size_t len, int64_t k)
{
    size_t at = 0;
    for (int64_t i = 0; i < k; i++) {
        const char *sep = memchr(body + at, '\0', len - at);
        if (!sep) return len;
        at = (size_t)(sep - body) + (i + 1 < k);
    }
    return at;
}

/* An entry goes into the log even when its insert failed: the commit will fail (store.c refuses
 * to commit after a failed write) and the entry is then held, not lost. Without memory for the
 * copy, the messages are counted as given up should that commit fail. */
static void log_append(struct worker *w, int di, int64_t seq, int n, const char *body, size_t len)
{
    if (!redo_push(&w->log, di, seq, n, body, len) && di >= 0) w->uncopied += n;
}

/* Appends n messages (a chunk) for destination i, with the full policy's counting. */
static void append_chunk(tally_t *t, struct worker *w, size_t i, const char *body, size_t len, int n)
{
    dest_state *s = &w->ds[i];
    int64_t dropped = 0;
    int rc;
    tly_err e; /* a failed write is logged by the store, and fails the commit: the redo log has it */
    if (store_append(w->st, s->store_id, body, len, n, &rc, &dropped, &e) != TALLY_OK)
        log_append(w, (int)i, -1, n, body, len);
    else if (rc < n)
        log_append(w, (int)i, store_last_id(w->st), n - rc, body, front_len(body, len, n - rc));
    if (dropped) {
        atomic_fetch_add(&t->n.store_dropped, (uint64_t)dropped);
        tly_log(&t->log, TALLY_LOG_WARN, "store full (max_store_bytes/max_store_rows): dropped %lld oldest",
                (long long)dropped);
        /* the drop may have taken messages of any destination: recount rather than guess */
        for (size_t k = 0; k < t->ndests; k++) w->ds[k].pending = count_pending(w, &w->ds[k]);
    }
    if (rc > 0) {
        atomic_fetch_add(&t->n.store_dropped, (uint64_t)rc);
        s->pending -= rc;
        tly_log(&t->log, TALLY_LOG_WARN, "%s: store full, %d newest messages dropped (store_on_full=drop_newest)",
                t->dests[i].name, rc);
    }
}

/* Stores the messages a destination gathered as one row (a chunk: see store_impl.h). Chunks are
 * written when they reach a batch, before a batch is loaded, before every commit and when the
 * worker runs out of rows, so gathering never delays the group commit. */
static void store_chunk(tally_t *t, struct worker *w, size_t i)
{
    dest_state *s = &w->ds[i];
    int n = s->chunk_n;
    if (!n) return;
    if (s->chunk.oom) {
        atomic_fetch_add(&t->n.store_given_up, (uint64_t)n);
        s->pending -= n;
        tly_log(&t->log, TALLY_LOG_ERROR, "%s: out of memory gathering messages: %d lost", t->dests[i].name, n);
    } else {
        append_chunk(t, w, i, s->chunk.data, s->chunk.len, n);
    }
    if (s->chunk.oom) tbuf_free(&s->chunk);
    tbuf_reset(&s->chunk);
    s->chunk_n = 0;
}

static void store_chunks(tally_t *t, struct worker *w)
{
    for (size_t i = 0; i < t->ndests; i++) store_chunk(t, w, i);
}

static void store_row(tally_t *t, struct worker *w, size_t i, const char *json, size_t len, int64_t now)
{
    dest_state *s = &w->ds[i];
    if (s->chunk_n && s->chunk.len + 1 + len > w->chunk_max_bytes) store_chunk(t, w, i);
    if (s->chunk_n) tbuf_putc(&s->chunk, '\0');
    tbuf_append(&s->chunk, json, len);
    s->chunk_n++;
    if (s->pending++ <= s->sent) s->since_ms = now;
    if (s->chunk_n >= w->chunk_max_n) store_chunk(t, w, i);
}

/* store_on_full=block: a full store takes no more rows, so the row queue and then the intake
 * fill up and callers get TALLY_EFULL, until deliveries make room. Not while closing: the
 * processor must be able to hand everything over to finish. */
static int stop_requested(tally_t *t) { return atomic_load(&t->stop); }

static int paused(tally_t *t, struct worker *w)
{
    /* the store cannot write: take nothing more until what it gave back is stored (pushback) */
    if (w->held.n && !w->stopping && !(w->stopping = stop_requested(t))) return 1;
    int full = t->cfg.store_on_full == STORE_FULL_BLOCK && !w->stopping && store_full(w->st) &&
               !(w->stopping = stop_requested(t));
    if (full != w->held_back) {
        w->held_back = full;
        if (full)
            tly_log(&t->log, TALLY_LOG_WARN, "store full (max_store_bytes=%lld, max_store_rows=%lld): taking no new "
                    "messages until deliveries make room; callers get TALLY_EFULL meanwhile",
                    t->cfg.max_store_bytes, t->cfg.max_store_rows);
        else
            tly_log(&t->log, TALLY_LOG_INFO, "store has room again: taking new messages");
    }
    return full;
}

static void meta_set(struct worker *w, const char *key, const char *value)
{
    tly_err e; /* logged by the store; the redo log keeps the change should the commit fail */
    store_meta_set(w->st, key, value, &e);
    size_t kl = strlen(key);
    char buf[1024];
    if (!value) {
        log_append(w, -1, -1, 0, key, kl);
    } else if (kl + 1 + strlen(value) < sizeof buf) { /* identity values are ids and small numbers... */
        int len = snprintf(buf, sizeof buf, "%s%c%s", key, '\0', value);
        log_append(w, -1, -1, 1, buf, (size_t)len);
    } else { /* ...and traits, which can be long */
        tbuf b = TBUF_INIT;
        tbuf_append(&b, key, kl + 1);
        tbuf_puts(&b, value);
        if (!b.oom) log_append(w, -1, -1, 1, b.data, b.len);
        tbuf_free(&b);
    }
}

/* Kept in the redo log like identity changes: a failed commit must not lose the counts. */
static void rule_drops_add(struct worker *w, const char *rule, const char *cls, int n)
{
    tly_err e; /* as in meta_set */
    store_rule_dropped(w->st, rule, cls, n, &e);
    size_t rl = strlen(rule), cl = strlen(cls);
    tbuf b = TBUF_INIT;
    tbuf_append(&b, rule, rl + 1);
    tbuf_append(&b, cls, cl);
    if (!b.oom) log_append(w, REDO_RULE_DROPS, -1, n, b.data, b.len);
    tbuf_free(&b);
}

/* A ROW_RULE_DROPS row: "rule\0class\0count" (rowq.h). */
static void rule_drops_row(struct worker *w, const char *data, size_t len)
{
    const char *cls = data + strlen(data) + 1;
    const char *count = cls + strlen(cls) + 1;
    if (count >= data + len) return;
    long long n = strtoll(count, NULL, 10);
    if (n > 0 && n <= INT_MAX) rule_drops_add(w, data, cls, (int)n);
}

/* ---- held rows: what an erasure takes from them ---- */

static void commit(tally_t *t, struct worker *w);
static void set_failing(tally_t *t, struct worker *w, int on);

/* Takes the emptied message entries (n 0) out of the held list, keeping the rest in order and the
 * held counts true. Emptied buffers stay for reuse, cleared: they held erased messages. */
static void held_compact(tally_t *t, struct worker *w)
{
    redo_list *l = &w->held;
    size_t keep = 0;
    l->bytes = 0;
    l->msgs = 0;
    for (size_t k = 0; k < l->n; k++) {
        redo *e = &l->v[k];
        if (e->dest >= 0 && e->n <= 0) {
            if (e->body.data) memset(e->body.data, 0, e->body.cap);
            tbuf_reset(&e->body);
            continue;
        }
        if (k != keep) {
            redo tmp = l->v[keep];
            l->v[keep] = *e;
            *e = tmp;
        }
        l->bytes += l->v[keep].body.len;
        if (l->v[keep].dest >= 0) l->msgs += l->v[keep].n;
        keep++;
    }
    l->n = keep;
    if (!w->failing) return;
    if (l->n) {
        atomic_store(&t->store_held, (uint64_t)l->msgs);
        return;
    }
    /* nothing left to store again: the next commit says whether the store writes */
    set_failing(t, w, 0);
    for (size_t i = 0; i < t->ndests; i++) w->ds[i].pending = count_pending(w, &w->ds[i]);
}

/* Destination i's held messages, which a revocation purges like its stored ones: how many. */
static int64_t held_drop_dest(tally_t *t, struct worker *w, size_t i)
{
    int64_t n = 0;
    for (size_t k = 0; k < w->held.n; k++)
        if (w->held.v[k].dest == (int)i) {
            n += w->held.v[k].n;
            w->held.v[k].n = 0;
        }
    if (n) held_compact(t, w);
    return n;
}

/* Removes the id's messages from the held chunks, keeping the others in order; how many, per
 * destination in gone[] (ndests entries, added to). */
static int64_t held_forget(tally_t *t, struct worker *w, tj_arena *a, const char *id, size_t idlen, int64_t *gone)
{
    int64_t total = 0;
    for (size_t k = 0; k < w->held.n; k++) {
        redo *e = &w->held.v[k];
        if (e->dest < 0) continue;
        char *body = e->body.data;
        size_t len = e->body.len, at = 0, from = 0;
        int kept = 0, removed = 0;
        while (from <= len && kept + removed < e->n) {
            const char *sep = memchr(body + from, '\0', len - from);
            size_t to = sep ? (size_t)(sep - body) : len;
            if (msg_owned_by(a, body + from, to - from, id, idlen)) {
                removed++;
            } else {
                if (kept++) body[at++] = '\0';
                memmove(body + at, body + from, to - from);
                at += to - from;
            }
            from = to + 1;
        }
        if (!removed) continue;
        memset(body + at, 0, e->body.cap - at); /* the erased messages' bytes, wherever they were */
        e->body.len = at;
        e->n = kept;
        gone[e->dest] += removed;
        total += removed;
    }
    if (total) held_compact(t, w);
    return total;
}

/* ---- erasure: a transaction of its own ---- */

typedef int (*erase_op)(tally_t *t, struct worker *w, void *arg, tly_err *err);

/* Runs op as an erasure: after every row before it is committed, in a transaction of its own that
 * overwrites what it frees (store_erase_begin/end), so neither the file nor the WAL keeps the
 * bytes. TALLY_OK, or a failure with nothing of op's kept (rolled back, or not begun: the store
 * holds rows it cannot write, or the group commit is postponed by another connection). */
static int erase_now(tally_t *t, struct worker *w, erase_op op, void *arg, tly_err *err)
{
    commit(t, w); /* a no-op when the caller just did */
    if (w->held.n || store_in_txn(w->st))
        return tly_err_set(err, TALLY_EIO, "the store cannot write now (%s)", w->held.n ? "disk full?" : "busy");
    int rc = store_erase_begin(w->st, err);
    if (rc) return rc;
    tly_err end;
    int op_rc = op(t, w, arg, err);
    rc = store_erase_end(w->st, op_rc ? &end : err); /* rolls back when op failed */
    return op_rc ? op_rc : rc;
}

/* ---- consent: purge and release ---- */

struct purge {
    size_t  i;
    int64_t n;
};

static int purge_op(tally_t *t, struct worker *w, void *arg, tly_err *err)
{
    (void)t;
    struct purge *p = arg;
    dest_state *s = &w->ds[p->i];
    int rc = store_purge(w->st, s->store_id, s->purge_upto, 1, &p->n, err);
    if (!rc && p->n) rc = store_count(w->st, s->store_id, "consent_purged", p->n, err);
    return rc;
}

/* Erases destination i's rows up to purge_upto. Until that commits nothing more goes to it
 * (loadable): should the store not write now, purge_due stays and the loop tries again
 * (purge_pending), so a rollback cannot bring the rows back to be delivered. */
static void purge_now(tally_t *t, struct worker *w, size_t i)
{
    dest_state *s = &w->ds[i];
    struct purge p = {i, 0};
    tly_err e;
    int rc = erase_now(t, w, purge_op, &p, &e);
    if (rc && !s->purge_due)
        tly_log(&t->log, TALLY_LOG_WARN, "%s: consent withdrawn: cannot purge now (%s); nothing is sent to it until "
                "the purge is done", t->dests[i].name, e.msg);
    if (!rc && p.n) {
        atomic_fetch_add(&t->dests[i].consent_purged, (uint64_t)p.n);
        tly_log(&t->log, TALLY_LOG_INFO, "%s: consent withdrawn: %lld queued and dead-lettered messages deleted",
                t->dests[i].name, (long long)p.n);
    }
    s->purge_due = rc != TALLY_OK;
    s->pending = count_pending(w, s);
    s->sent = 0;
}

/* Purges whose store could not write when they were due, once no batch of theirs is out. */
static void purge_pending(tally_t *t, struct worker *w)
{
    for (size_t i = 0; i < t->ndests; i++)
        if (w->ds[i].purge_due && !w->ds[i].nf) purge_now(t, w, i);
}

/* Everything queued for destination i before now goes: what is being gathered and what a failed
 * commit holds in memory at once, the stored rows and dead letters at once or, when batches are
 * out, once they settle (a batch handed to a destination cannot be called back; it is removed when
 * its answer comes). Every row before the revocation is committed first, so a later rollback can
 * neither bring purged rows back nor give them new ids past purge_upto: what it gives back is held
 * and stored again after the revocation, and belongs to it. */
static void purge_dest(tally_t *t, struct worker *w, size_t i)
{
    dest_state *s = &w->ds[i];
    tly_err e;
    int64_t mem = s->chunk_n;
    if (s->chunk_n) {
        s->pending -= s->chunk_n;
        tbuf_reset(&s->chunk);
        s->chunk_n = 0;
    }
    commit(t, w);
    mem += held_drop_dest(t, w, i);
    if (mem) {
        atomic_fetch_add(&t->dests[i].consent_purged, (uint64_t)mem);
        store_count(w->st, s->store_id, "consent_purged", mem, &e);
    }
    s->purge_due = 0;
    s->purge_upto = store_last_id(w->st);
    if (!s->nf) purge_now(t, w, i);
    else s->purge_due = 1;
}

/* A ROW_CONSENT row: the preferences every later row was stamped under. Kept in meta (in this
 * transaction, with the rows before it); a destination they no longer allow loses what is queued
 * for it (the first decision under consent_required: what was held); the others are released. */
static void consent_row(tally_t *t, struct worker *w, const char *text)
{
    consent_state cs;
    tly_err e;
    if (consent_state_of(&t->consent, text, &cs, &e)) { /* checked by the caller: out of memory */
        tly_log(&t->log, TALLY_LOG_ERROR, "consent: cannot apply the new preferences in the store: %s", e.msg);
        return;
    }
    meta_set(w, CONSENT_META_KEY, text);
    const consent_state *old = &w->consent;
    for (size_t i = 0; i < t->ndests; i++) {
        uint64_t need = t->consent.need[i];
        int now_ok = !cs.opted_out && consent_allows(need, cs.granted);
        int was_ok = old->decided && !old->opted_out && consent_allows(need, old->granted);
        if (!now_ok && (was_ok || !old->decided || cs.opted_out)) purge_dest(t, w, i);
        w->ds[i].consent_hold = 0;
    }
    w->consent = cs;
}
static void forget_row(tally_t *t, struct worker *w, const char *data, size_t len);

static int drain(tally_t *t, struct worker *w, int budget)
{
    int n = 0;
    row r;
    int64_t now = tly_clock_mono(t); /* a pending message's age counts in ms: once per drain is enough */
    while (n < budget && w->log.bytes < w->log_max && !paused(t, w) && rowq_peek(t->rows, &r)) {
        if (r.dest >= 0) store_row(t, w, (size_t)r.dest, r.data, r.len, now);
        else if (r.dest == ROW_RULE_DROPS) rule_drops_row(w, r.data, r.len);
        else if (r.dest == ROW_CONSENT) consent_row(t, w, r.data);
        else if (r.dest == ROW_FORGET) forget_row(t, w, r.data, r.len);
        else meta_set(w, r.data, r.dest == ROW_META_SET ? r.data + strlen(r.data) + 1 : NULL);
        rowq_release(t->rows);
        n++;
    }
    return n;
}

/* How long the open group-commit transaction has been open (-1: none), whatever began it: a
 * stored row, an acknowledgement, a counter. Timing only the transactions rows began let every
 * acknowledged batch commit at once: ~1900 commits for 200k events instead of ~250, and the
 * WAL's last pages written over and over (bench/README.md). */
static int64_t txn_age(tally_t *t, struct worker *w)
{
    if (!store_in_txn(w->st)) return -1;
    int64_t now = tly_clock_mono(t);
    if (store_txn_id(w->st) != w->txn_id) {
        w->txn_id = store_txn_id(w->st);
        w->txn_since = now;
    }
    return now - w->txn_since;
}

/* The commit failed and SQLite undid the transaction: of each chunk it appended, what was not
 * delivered (or dropped by the full policy) within it is held, with every identity change. */
static void hold_log(tally_t *t, struct worker *w, int intact_left_known)
{
    redo_list *l = &w->log;
    for (size_t k = 0; k < l->n; k++) {
        redo *e = &l->v[k];
        int64_t left = e->n;
        if (e->dest >= 0 && e->seq >= 0 && intact_left_known && e->left >= 0) left = e->left;
        if (e->dest >= 0 && left <= 0) continue;
        /* A revocation that found this transaction still open (its commit postponed as busy)
         * could not purge these rows; held, they would come back with ids past purge_upto. */
        if (e->dest >= 0 && w->ds[e->dest].purge_due && e->seq <= w->ds[e->dest].purge_upto) {
            atomic_fetch_add(&t->dests[e->dest].consent_purged, (uint64_t)left);
            continue;
        }
        /* delivered messages are the front of a chunk: keep its back */
        size_t skip = e->dest >= 0 && left < e->n ? front_len(e->body.data, e->body.len, e->n - left) + 1 : 0;
        if (!redo_push(&w->held, e->dest, -1, (int)left, e->body.data + skip, e->body.len - skip) && e->dest >= 0) {
            atomic_fetch_add(&t->n.store_given_up, (uint64_t)left);
            tly_log(&t->log, TALLY_LOG_ERROR, "store cannot write and no memory to hold %lld messages: lost",
                    (long long)left);
        }
    }
    redo_clear(l);
}

static void set_failing(tally_t *t, struct worker *w, int on)
{
    w->failing = on;
    atomic_store(&t->store_held, on ? (uint64_t)w->held.msgs : 0);
    atomic_store(&t->store_failing, on);
}

static void commit(tally_t *t, struct worker *w)
{
    store_chunks(t, w);
    if (!store_in_txn(w->st)) {
        redo_clear(&w->log);
        return;
    }
    /* what is left of each appended row, asked before the commit: after a failed one the rows
     * are gone, and the batches taken from them (delivered or not) with them */
    int intact = store_txn_intact(w->st);
    tly_err err; /* the store logs its failures; here they are counted and held */
    for (size_t k = 0; intact && k < w->log.n; k++) {
        redo *e = &w->log.v[k];
        e->left = -1;
        if (e->dest >= 0 && e->seq >= 0 && store_row_left(w->st, w->ds[e->dest].store_id, e->seq, &e->left, &err))
            e->left = -1;
    }
    int rc = store_commit(w->st, &err);
    if (rc == TALLY_ETIMEDOUT) return; /* busy: the transaction and its log stay for the next try */
    if (rc == TALLY_OK) {
        redo_clear(&w->log);
        w->uncopied = 0;
        return;
    }
    atomic_fetch_add(&t->n.store_errors, 1);
    if (w->uncopied) {
        atomic_fetch_add(&t->n.store_given_up, (uint64_t)w->uncopied);
        tly_log(&t->log, TALLY_LOG_ERROR, "store cannot write: %lld messages lost (no memory to hold them)",
                (long long)w->uncopied);
        w->uncopied = 0;
    }
    int was_failing = w->failing;
    hold_log(t, w, intact);
    /* the rollback brought back rows that were acknowledged and took away rows that were not */
    for (size_t i = 0; i < t->ndests; i++) {
        w->ds[i].pending = count_pending(w, &w->ds[i]);
        w->ds[i].stale = w->ds[i].nf > 0;
    }
    if (!w->held.n) return;
    int64_t now = tly_clock_mono(t);
    w->retry_wait = was_failing ? (w->retry_wait * 2 > 2000 ? 2000 : w->retry_wait * 2) : 50;
    w->retry_at = now + w->retry_wait;
    set_failing(t, w, 1);
    if (!was_failing)
        tly_log(&t->log, TALLY_LOG_ERROR, "store cannot write (disk full?): holding %lld messages in memory and "
                "taking no new ones until it can (callers get TALLY_EFULL meanwhile)", (long long)w->held.msgs);
}

/* Stores what a failed commit gave back, in its order, before anything newer. */
static void restore_held(tally_t *t, struct worker *w)
{
    redo_list again = w->held;
    memset(&w->held, 0, sizeof w->held);
    int64_t msgs = again.msgs;
    for (size_t k = 0; k < again.n; k++) {
        redo *e = &again.v[k];
        if (e->dest == REDO_RULE_DROPS) rule_drops_add(w, e->body.data, e->body.data + strlen(e->body.data) + 1, e->n);
        else if (e->dest < 0) meta_set(w, e->body.data, e->n ? e->body.data + strlen(e->body.data) + 1 : NULL);
        else append_chunk(t, w, (size_t)e->dest, e->body.data, e->body.len, e->n);
    }
    redo_free(&again);
    commit(t, w);
    if (w->held.n) return;
    if (!w->failing) return;
    set_failing(t, w, 0);
    for (size_t i = 0; i < t->ndests; i++) w->ds[i].pending = count_pending(w, &w->ds[i]);
    tly_log(&t->log, TALLY_LOG_WARN, "store writes again: %lld held messages stored", (long long)msgs);
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

static int slot(const dest_state *s, int k) { return (s->head + k) % MAX_IN_FLIGHT; }
static flight *flight_at(dest_state *s, int k) { return &s->f[slot(s, k)]; }

static int take_message(void *b, const char *json, size_t len)
{
    return batch_add(b, json, len);
}

/* Loads the batch that follows `after` (NULL: the oldest), at most a batch, into f; with `until`,
 * no further than that batch ended (a retry reloads what is left of it). The number of messages,
 * or -1 on a store error (logged by the store), with f's cursor as it was. */
static int load_batch(tally_t *t, struct worker *w, dest_state *s, const store_cursor *after,
                      const store_cursor *until, flight *f)
{
    store_sink to = {take_message, &f->batch, (size_t)t->cfg.flush_at, BATCH_MAX_BYTES};
    size_t n;
    tly_err e;
    batch_clear(&f->batch);
    return store_load(w->st, s->store_id, after, until, &to, &f->cur, &n, &e) ? -1 : (int)n;
}

/* Removes answered batches from the front of the line, in load order. */
static void settle(tally_t *t, struct worker *w, size_t i)
{
    dest *d = &t->dests[i];
    dest_state *s = &w->ds[i];
    while (s->nf > 0 && (flight_at(s, 0)->state == FL_OK || flight_at(s, 0)->state == FL_DEAD)) {
        flight *f = flight_at(s, 0);
        int64_t n = (int64_t)f->batch.n, queued = store_queued_total(w->st), gone = 0;
        tly_err e; /* a failed write is logged by the store and fails the commit, which recounts */
        /* the store's drop_oldest may have removed (and counted as dropped) the front of a batch
         * while it was out: `gone` of its messages were no longer queued when it settled */
        if (f->state == FL_OK) {
            if (store_ack(w->st, s->store_id, &f->cur, &e) == TALLY_OK) gone = n - (queued - store_queued_total(w->st));
            if (gone > 0) { /* they reached the destination after all: delivered, not dropped */
                store_count(w->st, s->store_id, "dropped", -gone, &e);
                atomic_fetch_sub(&t->n.store_dropped, (uint64_t)gone);
            }
            store_count(w->st, s->store_id, "delivered", n, &e);
            atomic_fetch_add(&d->delivered, (uint64_t)n);
        } else {
            if (store_dead(w->st, s->store_id, &f->cur, f->status, f->reason, &e) == TALLY_OK)
                gone = n - (queued - store_queued_total(w->st));
            int64_t dead = gone > 0 ? n - gone : n; /* the gone ones count as dropped, not dead letters */
            w->prune_at = 0; /* the row cap holds at once, not a minute later */
            store_count(w->st, s->store_id, "dead_lettered", dead, &e);
            atomic_fetch_add(&d->failed, (uint64_t)dead);
            tly_log(&t->log, TALLY_LOG_ERROR, "%s: %lld messages moved to dead letters: %s", d->name, (long long)dead,
                    f->reason);
        }
        f->state = 0;
        s->head = slot(s, 1);
        s->nf--;
        s->sent -= n;
        s->pending -= n;
        if (s->pending <= 0 || s->sent < 0 || (s->stale && !s->nf)) { /* after a drop or a rollback: recount */
            s->pending = count_pending(w, s);
            if (!s->nf) s->sent = s->stale = 0;
        }
    }
    if (s->purge_due && !s->nf) purge_now(t, w, i);
}

static void outcome(tally_t *t, struct worker *w, size_t i, flight *f, const dest_outcome *o)
{
    dest *d = &t->dests[i];
    int64_t n = (int64_t)f->batch.n;
    f->handle = NULL;
    if (o->result == DEST_OK) {
        f->state = FL_OK;
    } else if (o->result == DEST_RETRY && f->attempts < t->cfg.max_retries) {
        f->attempts++;
        int64_t wait = o->retry_after_ms > 0 ? o->retry_after_ms : backoff_ms(t, w, f->attempts);
        if (wait > t->cfg.retry_cap_ms) wait = t->cfg.retry_cap_ms;
        f->state = FL_RETRY;
        f->retry_at = tly_clock_mono(t) + (wait > 0 ? wait : 1);
        tly_err e; /* as in settle */
        store_count(w->st, w->ds[i].store_id, "retried", n, &e);
        atomic_fetch_add(&d->retried, (uint64_t)n);
        tly_log(&t->log, TALLY_LOG_WARN, "%s: %s; retry %d of %d in %lld ms", d->name, o->reason, f->attempts,
                t->cfg.max_retries, (long long)wait);
    } else {
        f->state = FL_DEAD;
        f->status = o->status;
        if (o->result == DEST_RETRY) snprintf(f->reason, sizeof f->reason, "gave up after %d retries: %s", f->attempts, o->reason);
        else snprintf(f->reason, sizeof f->reason, "%s", o->reason);
    }
    settle(t, w, i);
}

/* Hands f's batch to the destination; a synchronous one answers at once. */
static void send_batch(tally_t *t, struct worker *w, size_t i, flight *f)
{
    dest_outcome o;
    f->state = FL_SENDING;
    atomic_fetch_add(&t->dests[i].batches, 1);
    if (!t->dests[i].ops->submit(&t->dests[i], &f->batch, &o, &f->handle)) return; /* on the event loop */
    outcome(t, w, i, f, &o);
}

/* Sends the k-th batch again: what is left of it in the store, since the full policy may have
 * dropped its front meanwhile (those messages count as dropped, and are not sent after all). */
static void retry(tally_t *t, struct worker *w, size_t i, int k)
{
    dest_state *s = &w->ds[i];
    flight *f = flight_at(s, k);
    int64_t was = (int64_t)f->batch.n;
    int n = load_batch(t, w, s, k ? &flight_at(s, k - 1)->cur : NULL, &f->cur, f);
    if (n < 0) { /* a store error: try again later, with the same bounds (f->cur is untouched) */
        f->batch.n = 0;
        f->retry_at = tly_clock_mono(t) + t->cfg.retry_base_ms;
        s->sent -= was;
        return;
    }
    s->sent += n - was;
    if (n == 0) { /* all of it was dropped: nothing to send, nothing to remove */
        f->state = FL_OK;
        settle(t, w, i);
        return;
    }
    send_batch(t, w, i, f);
}

/* Whether a batch waits for its retry: the destination is failing, so no new batch goes out. */
static int backing_off(const dest_state *s)
{
    for (int k = 0; k < s->nf; k++)
        if (s->f[slot(s, k)].state == FL_RETRY) return 1;
    return 0;
}

/* How many messages a new batch could take now: 0 while the line is full, nothing is left
 * outside a batch, or the destination backs off. */
static int64_t loadable(tally_t *t, const dest_state *s)
{
    int64_t unsent = s->pending - s->sent;
    if (s->consent_hold || s->purge_due) return 0;
    return s->nf >= t->cfg.max_in_flight || unsent <= 0 || backing_off(s) ? 0 : unsent;
}

/* Whether a new batch is due: room in the line, messages not in a batch yet, and a full batch of
 * them, their interval over, or a flush. */
static int due(tally_t *t, const dest_state *s, int64_t now, int force)
{
    int64_t unsent = loadable(t, s);
    if (!unsent) return 0;
    return force || unsent >= t->cfg.flush_at || now - s->since_ms >= t->cfg.flush_interval_ms;
}

/* Sends what is due: batches whose backoff is over, then new ones. Synchronous destinations (file,
 * sqlite) are drained batch after batch while they stay due, so a backlog is not paced by
 * flush_interval_ms. */
static void deliver(tally_t *t, struct worker *w, int force)
{
    for (size_t i = 0; i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        int64_t now = tly_clock_mono(t);
        for (int k = 0; k < s->nf; k++) {
            flight *f = flight_at(s, k);
            if (f->state == FL_RETRY && now >= f->retry_at) retry(t, w, i, k);
        }
        /* while the store cannot write, acknowledgements cannot be kept either: a batch sent now
         * would only be sent again once the rollback brings its rows back */
        while (!w->held.n && due(t, s, tly_clock_mono(t), force)) {
            /* no commit here: rows read inside the open transaction are sent as they are; a crash
             * before the group commit loses them from the store, never duplicates them */
            /* What is gathered goes in only when the stored rows do not make a batch: under a
             * backlog chunks then fill up to flush_at and batches line up with them, instead of
             * ending inside a chunk whose rest must be rewritten when they are acknowledged. */
            if (s->pending - s->sent - s->chunk_n < t->cfg.flush_at) store_chunk(t, w, i);
            flight *f = flight_at(s, s->nf), *prev = s->nf ? flight_at(s, s->nf - 1) : NULL;
            const store_cursor *after = prev ? &prev->cur : NULL;
            int n = load_batch(t, w, s, after, NULL, f);
            if (n == 0 && s->chunk_n) {
                store_chunk(t, w, i); /* pending was an estimate after a full-policy drop */
                n = load_batch(t, w, s, after, NULL, f);
            }
            if (n <= 0) {
                if (n == 0) s->pending = s->sent; /* rows were dropped by the full policy */
                break;
            }
            f->attempts = 0;
            s->nf++;
            s->sent += n;
            if (s->pending > s->sent) s->since_ms = now; /* what is left waits its own interval */
            send_batch(t, w, i, f);
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
        if (rules_remote_finished(t->remote, m->easy_handle, m->data.result)) continue;
        dest *d = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&d);
        if (!d) continue;
        size_t i = (size_t)(d - t->dests);
        dest_state *s = &w->ds[i];
        flight *f = NULL;
        for (int k = 0; k < s->nf && !f; k++) {
            flight *c = flight_at(s, k);
            if (c->state == FL_SENDING && c->handle == m->easy_handle) f = c;
        }
        dest_outcome o;
        d->ops->finish(d, m->easy_handle, m->data.result, &o);
        if (f) outcome(t, w, i, f, &o);
    }
}

/* ---- flush ---- */

/* Everything with a store id below the returned one has left every destination's queue. */
static int64_t delivered_frontier(tally_t *t, struct worker *w)
{
    int64_t frontier = INT64_MAX;
    for (size_t i = 0; i < t->ndests; i++) {
        int64_t oldest;
        tly_err e;
        if (w->ds[i].consent_hold) continue; /* kept for the first consent decision, not for delivery */
        if (store_oldest(w->st, w->ds[i].store_id, &oldest, &e)) return 0; /* unknown: nothing is done */
        if (oldest < frontier) frontier = oldest;
    }
    return frontier;
}

/* A flush request is drained once every record before its ticket was handed over by the processor
 * and stored; it is done when no destination has a row up to the store id that was last when it
 * drained (requests.h has the whole handshake). */
static void serve_flushes(tally_t *t, struct worker *w)
{
    /* what the processor had handed over when we looked, then everything it queued before that */
    size_t taken = atomic_load_explicit(&t->processed_pos, memory_order_acquire);
    while (drain(t, w, 1 << 20) > 0) continue;
    store_chunks(t, w); /* so the last row id covers everything drained */
    int all_in = rowq_empty(t->rows); /* not when a full store (block) left rows waiting */
    if (!requests_flush_drained(&t->req, all_in, taken, store_last_id(w->st))) return;
    /* No commit here: this runs on every turn of the loop while a flush waits, and committing on
     * each one wrote the WAL's last pages over and over (1,500 commits in the last 0.7 s of a
     * 200k burst). The group commit goes on at its interval; only a flush that is done commits. */
    deliver(t, w, 1);
    int64_t frontier = delivered_frontier(t, w);
    if (!requests_flush_due(&t->req, frontier)) return;
    commit(t, w); /* what the flush saw delivered is acknowledged on disk too */
    if (w->held.n) return; /* it was not: the store gave messages back, and they are not delivered */
    for (size_t i = 0; i < t->ndests; i++) t->dests[i].ops->sync(&t->dests[i]);
    requests_flush_done(&t->req, frontier);
}

/* ---- forget ---- */

/* Removes the id's messages from a batch held in memory, keeping the others in order; how many. */
static int64_t batch_forget(tj_arena *a, dest_batch *b, const char *id, size_t len)
{
    size_t n = 0, at = b->n ? b->off[0] : 0;
    int64_t gone = 0;
    for (size_t k = 0; k < b->n; k++) {
        size_t from = b->off[k], to = b->off[k + 1]; /* with its newline */
        if (msg_owned_by(a, b->data.data + from, to - from - 1, id, len)) {
            gone++;
            continue;
        }
        memmove(b->data.data + at, b->data.data + from, to - from);
        b->off[n] = at;
        at += to - from;
        b->off[++n] = at;
    }
    b->data.len = at; /* what lies past it held erased messages: scrub_buffers clears it */
    b->n = n;
    return gone;
}

/* Buffers kept for reuse still hold the messages they last carried: an erasure clears the unused
 * part, so no copy of an erased message outlives it in the worker (the row queue's slots and the
 * intake's spare records are overwritten by the next messages, not cleared). */
static void scrub(tbuf *b, size_t from)
{
    if (b->data && b->cap > from) memset(b->data + from, 0, b->cap - from);
}

static void scrub_buffers(tally_t *t, struct worker *w)
{
    for (size_t k = w->log.n; k < w->log.cap; k++) scrub(&w->log.v[k].body, 0);
    for (size_t i = 0; i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        scrub(&s->chunk, s->chunk.len);
        for (int k = s->nf; k < MAX_IN_FLIGHT; k++) scrub(&flight_at(s, k)->batch.data, 0);
        for (int k = 0; k < s->nf; k++)
            if (flight_at(s, k)->state != FL_SENDING) scrub(&flight_at(s, k)->batch.data, flight_at(s, k)->batch.data.len);
    }
}

struct forget {
    const char  *id;
    size_t       idlen;
    store_cursor **live;
    int         *live_dest;
    size_t       nlive;
    int64_t     *held;      /* per destination: the id's messages taken from the held rows */
    int64_t      erased;
};

static int forget_op(tally_t *t, struct worker *w, void *arg, tly_err *err)
{
    struct forget *f = arg;
    int rc = store_forget(w->st, f->id, f->idlen, f->live, f->live_dest, f->nlive, &f->erased, err);
    for (size_t i = 0; !rc && i < t->ndests; i++)
        if (f->held[i]) rc = store_count(w->st, w->ds[i].store_id, "forgotten", f->held[i], err);
    return rc;
}

/* tally_forget, once every row before it is stored (rowq.h ROW_FORGET): the id's messages are
 * taken from the rows a failed commit holds in memory (so they can never be stored later), then
 * erased from the store for good (erase_now), and from the batches held in memory that are not on
 * their way. A batch being sent keeps its copy until its transfer ends (curl reads it); its cursor
 * is adjusted like the others, so a retry reloads it from the store without the erased messages,
 * which are then never sent again. Should the store not write, the caller gets TALLY_EIO: the held
 * copies are gone, the stored ones stay until it calls again. */
static void forget_row(tally_t *t, struct worker *w, const char *data, size_t len)
{
    uint64_t seq = strtoull(data, NULL, 10);
    size_t skip = strlen(data) + 1;
    tly_err err = {""};
    struct forget f = {data + skip, len - skip, NULL, NULL, 0, NULL, 0};
    commit(t, w); /* every row before this one, durable or held, first */
    size_t cap = t->ndests * MAX_IN_FLIGHT;
    store_cursor *saved = calloc(cap + 1, sizeof *saved);
    f.live = calloc(cap + 1, sizeof *f.live);
    f.live_dest = calloc(cap + 1, sizeof *f.live_dest);
    f.held = calloc(t->ndests, sizeof *f.held);
    tj_arena *a = tj_arena_new();
    int rc = !saved || !f.live || !f.live_dest || !f.held || !a ? tly_err_set(&err, TALLY_ENOMEM, "forget: out of memory")
                                                               : TALLY_OK;
    int64_t from_held = rc ? 0 : held_forget(t, w, a, f.id, f.idlen, f.held);
    for (size_t i = 0; !rc && i < t->ndests; i++)
        for (int k = 0; k < w->ds[i].nf; k++) {
            f.live[f.nlive] = &flight_at(&w->ds[i], k)->cur;
            saved[f.nlive] = *f.live[f.nlive];
            f.live_dest[f.nlive++] = w->ds[i].store_id;
        }
    if (!rc && (rc = erase_now(t, w, forget_op, &f, &err))) {
        for (size_t k = 0; k < f.nlive; k++) *f.live[k] = saved[k]; /* the rows are as they were */
        f.erased = 0;
        tly_err why = err;
        tly_err_set(&err, rc, "forget: %s; the stored messages are not erased (call again once it writes)%s",
                    why.msg, from_held ? ", the id's messages a failed commit held in memory are" : "");
    }
    for (size_t i = 0; !rc && i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        for (int k = 0; k < s->nf; k++) {
            flight *fl = flight_at(s, k);
            if (fl->state != FL_SENDING) s->sent -= batch_forget(a, &fl->batch, f.id, f.idlen);
        }
        /* as after a rollback: the rows under the batches changed, recount once they are settled */
        s->pending = count_pending(w, s);
        s->stale = s->nf > 0;
    }
    if (!rc) {
        f.erased += from_held;
        scrub_buffers(t, w);
        tly_log(&t->log, TALLY_LOG_INFO, "forget: %lld messages erased", (long long)f.erased);
    }
    atomic_fetch_add(&t->n.forgotten, (uint64_t)(rc ? from_held : f.erased));
    tj_arena_free(a);
    free(f.live);
    free(saved);
    free(f.live_dest);
    free(f.held);
    requests_finish_count(&t->req, seq, rc, &err, f.erased);
}

/* Dead letters are kept dead_letter_max_age_s and at most dead_letter_max_rows (README, Privacy);
 * checked once a minute, in the group transaction. */
#define PRUNE_EVERY_MS 60000

static void prune_dead(tally_t *t, struct worker *w)
{
    int64_t now = tly_clock_mono(t);
    if (now < w->prune_at) return;
    w->prune_at = now + PRUNE_EVERY_MS;
    int64_t age = (int64_t)t->cfg.dead_letter_max_age_s * 1000, pruned = 0;
    tly_err e; /* a failed write is logged by the store and fails the commit; the next check tries again */
    if (store_dead_prune(w->st, age ? tly_clock_wall(t) - age : 0,
                         t->cfg.dead_letter_max_rows ? t->cfg.dead_letter_max_rows : -1, &pruned, &e) == TALLY_OK &&
        pruned) {
        atomic_fetch_add(&t->n.dead_pruned, (uint64_t)pruned);
        tly_log(&t->log, TALLY_LOG_INFO, "%lld dead letters pruned (dead_letter_max_age_s=%d, dead_letter_max_rows=%lld)",
                (long long)pruned, t->cfg.dead_letter_max_age_s, t->cfg.dead_letter_max_rows);
    }
}

/* ---- the loop ---- */

static int next_timeout_ms(tally_t *t, struct worker *w)
{
    int64_t now = tly_clock_mono(t), next = now + 1000; /* a periodic wake as a safety net */
    int64_t age = txn_age(t, w);
    if (age >= 0 && now - age + t->cfg.commit_interval_ms < next) next = now - age + t->cfg.commit_interval_ms;
    if (w->held.n && w->retry_at < next) next = w->retry_at;
    if (rules_remote_next(t->remote) < next) next = rules_remote_next(t->remote);
    for (size_t i = 0; i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        for (int k = 0; k < s->nf; k++) {
            const flight *f = flight_at(s, k);
            if (f->state == FL_RETRY && f->retry_at < next) next = f->retry_at;
        }
        int64_t unsent = loadable(t, s);
        if (!unsent) continue;
        int64_t when = unsent >= t->cfg.flush_at ? now : s->since_ms + t->cfg.flush_interval_ms;
        if (when < next) next = when;
    }
    return next <= now ? 0 : (int)(next - now);
}

static void worker_sleep(tally_t *t, struct worker *w, int timeout_ms)
{
    atomic_store_explicit(&t->work_sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (!rowq_empty(t->rows) && !paused(t, w)) {
        atomic_store(&t->work_sleeping, 0);
        return;
    }
    struct curl_waitfd fd = {t->work_wake_fd, CURL_WAIT_POLLIN, 0};
    int n;
    curl_multi_poll(w->multi, &fd, 1, timeout_ms, &n);
    if (fd.revents) {
        uint64_t v;
        ssize_t r = read(t->work_wake_fd, &v, sizeof v);
        (void)r;
    }
    atomic_store(&t->work_sleeping, 0);
}

void *worker_main(void *arg)
{
    tally_t *t = arg;
    struct worker *w = t->work;
    for (;;) {
        if (w->held.n && tly_clock_mono(t) >= w->retry_at) restore_held(t, w);
        purge_pending(t, w);
        int did = drain(t, w, 1024);
        if (txn_age(t, w) >= t->cfg.commit_interval_ms || w->log.bytes >= w->log_max) {
            commit(t, w);
            /* now, between transactions: under a steady stream there is no other moment, and a
             * WAL that is never checkpointed grows without bound (257 MB for a 400k burst) */
            store_checkpoint(w->st);
        }
        collect_transfers(t, w);
        rules_remote_tick(t->remote, tly_clock_mono(t));
        prune_dead(t, w);
        deliver(t, w, 0);
        if (requests_waiting(&t->req, REQ_FLUSH)) serve_flushes(t, w);
        /* the processor has stopped only once the intake was empty: nothing more will come */
        if (!did && atomic_load(&t->proc_done) && rowq_empty(t->rows)) break;
        /* Nothing more to gather for now: with no transaction open, into a new one, so the group
         * commit's deadline covers it; an open one takes them when it commits. Running dry does
         * not commit (under load the row queue runs dry for a moment all the time): the sleep
         * ends at the commit's deadline and the check at the top of the loop commits. */
        if (!did && !store_in_txn(w->st)) store_chunks(t, w);
        store_checkpoint(w->st);
        if (!did) worker_sleep(t, w, next_timeout_ms(t, w));
    }
    commit(t, w);
    if (w->held.n) restore_held(t, w); /* one last try */
    purge_pending(t, w);
    if (w->held.n) {
        size_t ids = 0, drops = 0;
        for (size_t k = 0; k < w->held.n; k++) {
            ids += w->held.v[k].dest == -1;
            drops += w->held.v[k].dest == REDO_RULE_DROPS;
        }
        atomic_fetch_add(&t->n.store_given_up, (uint64_t)w->held.msgs);
        tly_log(&t->log, TALLY_LOG_ERROR, "close: the store still cannot write: %lld held messages lost "
                "(counted as store_given_up)%s%s", (long long)w->held.msgs, ids ? ", and the last identity changes" : "",
                drops ? ", and the last rule-drop counts (tally inspect)" : "");
    }
    return NULL;
}

/* ---- open / free ---- */

void worker_free(tally_t *t)
{
    struct worker *w = t->work;
    if (!w) return;
    int64_t left = 0;
    for (size_t i = 0; i < t->ndests && w->ds; i++) {
        left += w->ds[i].pending;
        for (int k = 0; k < MAX_IN_FLIGHT; k++) batch_free(&w->ds[i].f[k].batch);
        tbuf_free(&w->ds[i].chunk);
    }
    if (left && t->cfg.store && strcmp(t->cfg.store, ":memory:") != 0)
        tly_log(&t->log, TALLY_LOG_INFO, "close: %lld deliveries left in the store for the next start", (long long)left);
    else if (left)
        tly_log(&t->log, TALLY_LOG_ERROR, "close: %lld undelivered messages lost (store is :memory:)", (long long)left);
    rules_remote_free(t, t->remote); /* before the multi handle its transfer hangs on */
    t->remote = NULL;
    redo_free(&w->log);
    redo_free(&w->held);
    free(w->ds);
    free(w);
    t->work = NULL;
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

/* Before the first decision under consent_required, what a previous run queued stays held. */
static void load_consent(tally_t *t, struct worker *w)
{
    char *prefs = NULL;
    tly_err e; /* the processor reads the same key at open and reports what is wrong with it */
    if (!store_meta_get(w->st, CONSENT_META_KEY, &prefs, &e) && consent_state_of(&t->consent, prefs, &w->consent, &e))
        memset(&w->consent, 0, sizeof w->consent);
    free(prefs);
    for (size_t i = 0; i < t->ndests; i++) w->ds[i].consent_hold = t->cfg.consent_required && !w->consent.decided;
}

static int register_dests(tally_t *t, struct worker *w, tly_err *err)
{
    int64_t now = tly_clock_mono(t);
    tly_err e;
    for (size_t i = 0; i < t->ndests; i++) {
        dest_state *s = &w->ds[i];
        if (tly_fault() || store_dest_id(w->st, t->dests[i].name, &s->store_id, err))
            return tly_err_set(err, TALLY_EIO, "store: cannot register destination %s", t->dests[i].name);
        /* rows left by an earlier run go out at once */
        if (store_pending(w->st, s->store_id, &s->pending, &e)) s->pending = -1;
        s->since_ms = now - t->cfg.flush_interval_ms;
    }
    if (tly_fault() || store_commit(w->st, err)) return tly_err_set(err, TALLY_EIO, "store: cannot write");
    if (t->cfg.mode != MODE_SERVER) load_consent(t, w);
    store_each_queued_dest(w->st, warn_orphan, t, &e); /* a warning only: its failure is logged */
    return TALLY_OK;
}

int worker_open(tally_t *t, tly_err *err)
{
    assert(t->store && t->transfers && t->rows && t->ndests > 0 && !t->work);
    struct worker *w = tly_fault() ? NULL : calloc(1, sizeof *w);
    if (!w) return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    t->work = w;
    if (tly_fault() || !(w->ds = calloc(t->ndests, sizeof *w->ds)))
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    w->st = t->store;
    w->multi = t->transfers;
    w->rng = (unsigned)tly_now_ms() ^ (unsigned)(uintptr_t)w;
    /* what one failed commit can leave held: no more than the intake holds */
    w->log_max = t->cfg.max_queue_bytes > BATCH_MAX_BYTES ? t->cfg.max_queue_bytes : BATCH_MAX_BYTES;
    w->chunk_max_n = t->cfg.flush_at < t->cfg.max_store_rows ? (int)t->cfg.flush_at : (int)t->cfg.max_store_rows;
    if (w->chunk_max_n < 1) w->chunk_max_n = 1;
    w->chunk_max_bytes = t->cfg.max_store_bytes > 0 && (uint64_t)t->cfg.max_store_bytes < BATCH_MAX_BYTES
                             ? (size_t)t->cfg.max_store_bytes : BATCH_MAX_BYTES;
    int rc = register_dests(t, w, err);
    /* before processor_open: the last good bundle is offered to it (rules_remote.h) */
    if (!rc && t->cfg.rules_url) rc = rules_remote_open(t, w->st, &t->remote, err);
    return rc;
}
