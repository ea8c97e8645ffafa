/* Erasure (tally_forget, and purges that must not leave bytes behind) and dead-letter retention:
 * store.h says what each function guarantees. */
#include "store_impl.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "msg_owner.h"

static int run(store *s, const char *sql, tly_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) == SQLITE_OK) return TALLY_OK;
    tly_log(s->log, TALLY_LOG_ERROR, "store %s: %s: %s", s->path, sql, msg ? msg : sqlite3_errmsg(s->db));
    tly_err_set(err, TALLY_EIO, "store %s: %s: %s", s->path, sql, msg ? msg : sqlite3_errmsg(s->db));
    sqlite3_free(msg);
    return TALLY_EIO;
}

int store_erase_begin(store *s, tly_err *err)
{
    assert(!s->in_txn); /* the erasure is a transaction of its own: the caller commits first */
    int rc = run(s, "PRAGMA secure_delete=ON", err);
    if (!rc) rc = store_begin(s, err);
    tly_err ignored; /* the failure that matters is already in err */
    if (rc) run(s, "PRAGMA secure_delete=FAST", &ignored);
    return rc;
}

int store_erase_end(store *s, tly_err *err)
{
    int rc = store_commit(s, err);
    tly_err ignored; /* FAST again or not, the erasure's result stands; a failure is logged */
    run(s, "PRAGMA secure_delete=FAST", &ignored);
    if (rc) return rc;
    store_scrub(s, &ignored); /* logged; store_checkpoint finishes it */
    return TALLY_OK;
}

/* The erased messages' positions in one row, as a bitmap of n bits (positions counted from the
 * row's front as it is now). */
typedef struct row_edit {
    unsigned char *gone;
    int64_t        n, removed;
    tbuf           keep;     /* the messages that stay, joined by SEP */
} row_edit;

/* Messages of the row before `end` (a position) that are erased. */
static int64_t gone_before(const row_edit *e, int64_t end)
{
    int64_t k = 0;
    for (int64_t p = 0; p < end && p < e->n; p++) k += (e->gone[p / 8] >> (p % 8)) & 1;
    return k;
}

/* A batch whose last row is this one and that took only its front ends `end` messages into the
 * row as it is now (store_queue.c's last_share). Erased messages at or after its end must not
 * count as taken by batches before it: its last_n loses them, so last_share still finds its end
 * after the same message. */
static void keep_cursors(int dest, int64_t seq, int64_t n_now, const row_edit *e, store_cursor *const *live,
                         const int *live_dest, size_t nlive)
{
    for (size_t k = 0; k < nlive; k++) {
        store_cursor *c = live[k];
        if (live_dest[k] != dest || c->last_id != seq || c->last_taken >= c->last_n) continue;
        int64_t end = c->last_taken - (c->last_n - n_now);
        if (end < 0) end = 0;
        if (end > n_now) end = n_now;
        c->last_n -= e->removed - gone_before(e, end);
    }
}

/* Splits a row into the messages that stay and the positions that go. */
static int edit_row(tj_arena *a, const char *body, size_t len, int64_t n, const char *id, size_t idlen, row_edit *e)
{
    e->n = n;
    e->removed = 0;
    tbuf_reset(&e->keep);
    free(e->gone);
    e->gone = calloc((size_t)(n / 8 + 1), 1);
    if (!e->gone) return TALLY_ENOMEM;
    const char *p = body, *end = body + len;
    for (int64_t at = 0; p <= end; at++) {
        const char *m = msg_end(p, end);
        if (msg_owned_by(a, p, (size_t)(m - p), id, idlen)) {
            if (at < n) e->gone[at / 8] |= (unsigned char)(1u << (at % 8));
            e->removed++;
        } else {
            if (e->keep.len) tbuf_putc(&e->keep, SEP);
            tbuf_append(&e->keep, p, (size_t)(m - p));
        }
        if (m == end) break;
        p = m + 1;
    }
    return e->keep.oom ? TALLY_ENOMEM : TALLY_OK;
}

/* A walk over a table by rowid, one query per row, so that a row can be rewritten or deleted
 * between steps without an open scan of the table under it. The query selects rows with rowid
 * > ?1 ORDER BY rowid LIMIT 1, the rowid as column 0. */
typedef struct row_walk {
    sqlite3_stmt *next;
    int64_t       after;
} row_walk;

static int walk_open(store *s, row_walk *w, const char *sql, tly_err *err)
{
    w->after = -1;
    if (sqlite3_prepare_v2(s->db, sql, -1, &w->next, NULL) == SQLITE_OK) return TALLY_OK;
    w->next = NULL;
    return store_failed(s, err);
}

/* 1 with the next row in w->next's columns, 0 past the last, or a TALLY_E* code. */
static int walk_next(store *s, row_walk *w, tly_err *err)
{
    sqlite3_reset(w->next);
    sqlite3_bind_int64(w->next, 1, w->after);
    int step = sqlite3_step(w->next);
    if (step == SQLITE_DONE) return 0;
    if (step != SQLITE_ROW) return store_failed(s, err);
    w->after = sqlite3_column_int64(w->next, 0);
    return 1;
}

static int forget_queued(store *s, tj_arena *a, const char *id, size_t idlen, store_cursor *const *live,
                         const int *live_dest, size_t nlive, int64_t *erased, tly_err *err)
{
    row_walk rows = {NULL, -1};
    sqlite3_stmt *upd = NULL, *del = NULL;
    row_edit e = {NULL, 0, 0, TBUF_INIT};
    int rc = walk_open(s, &rows, "SELECT id, dest, n, body FROM queue WHERE id > ?1 ORDER BY id LIMIT 1", err);
    if (!rc && (sqlite3_prepare_v2(s->db, "UPDATE queue SET n = ?2, body = ?3 WHERE id = ?1", -1, &upd, NULL) ||
                sqlite3_prepare_v2(s->db, "DELETE FROM queue WHERE id = ?1", -1, &del, NULL)))
        rc = store_failed(s, err);
    while (!rc && (rc = walk_next(s, &rows, err)) == 1) {
        rc = TALLY_OK;
        int64_t rid = rows.after, n = sqlite3_column_int64(rows.next, 2);
        int dest = sqlite3_column_int(rows.next, 1);
        const char *body = sqlite3_column_blob(rows.next, 3);
        size_t len = (size_t)sqlite3_column_bytes(rows.next, 3);
        if ((rc = edit_row(a, body ? body : "", len, n, id, idlen, &e))) {
            rc = tly_err_set(err, rc, "store: forget: out of memory");
            break;
        }
        if (!e.removed) continue;
        keep_cursors(dest, seq_of(rid), n, &e, live, live_dest, nlive);
        /* a row whose n disagreed with its body (a file edited by hand) goes when nothing is left */
        int64_t left = n - e.removed;
        sqlite3_stmt *w = left > 0 && e.keep.len ? upd : del;
        sqlite3_reset(w);
        sqlite3_bind_int64(w, 1, rid);
        if (w == upd) {
            sqlite3_bind_int64(w, 2, left);
            sqlite3_bind_blob(w, 3, e.keep.data, (int)e.keep.len, SQLITE_STATIC);
        }
        if ((rc = store_step_done(s, w, err))) break;
        s->rows -= w == upd ? e.removed : n;
        s->bytes -= (int64_t)len - (w == upd ? (int64_t)e.keep.len : 0);
        assert(s->bytes >= 0);
        *erased += e.removed;
        if ((rc = store_count(s, dest, "forgotten", e.removed, err))) break;
    }
    sqlite3_finalize(rows.next);
    sqlite3_finalize(upd);
    sqlite3_finalize(del);
    free(e.gone);
    tbuf_free(&e.keep);
    return rc;
}

static int forget_dead(store *s, tj_arena *a, const char *id, size_t idlen, int64_t *erased, tly_err *err)
{
    row_walk rows = {NULL, -1};
    sqlite3_stmt *del = NULL;
    int rc = walk_open(s, &rows, "SELECT id, dest, body FROM dead WHERE id > ?1 ORDER BY id LIMIT 1", err);
    if (!rc && sqlite3_prepare_v2(s->db, "DELETE FROM dead WHERE id = ?1", -1, &del, NULL)) rc = store_failed(s, err);
    while (!rc && (rc = walk_next(s, &rows, err)) == 1) {
        rc = TALLY_OK;
        int dest = sqlite3_column_int(rows.next, 1);
        const char *body = sqlite3_column_blob(rows.next, 2);
        if (!msg_owned_by(a, body ? body : "", (size_t)sqlite3_column_bytes(rows.next, 2), id, idlen)) continue;
        /* the whole row goes, its reason with it: a destination's answer may quote the message */
        sqlite3_reset(del);
        sqlite3_bind_int64(del, 1, rows.after);
        if ((rc = store_step_done(s, del, err))) break;
        ++*erased;
        if ((rc = store_count(s, dest, "forgotten", 1, err))) break;
    }
    sqlite3_finalize(rows.next);
    sqlite3_finalize(del);
    return rc;
}

/* A dead letter's reason is its batch's: a destination's answer may quote any message of the
 * batch, so the reasons of the others that name the id lose their text too. */
static int forget_reasons(store *s, const char *id, size_t idlen, tly_err *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "UPDATE dead SET reason = '(erased: it named a forgotten id)' "
                           "WHERE instr(reason, ?1) > 0", -1, &st, NULL))
        return store_failed(s, err);
    sqlite3_bind_text(st, 1, id, (int)idlen, SQLITE_STATIC);
    int rc = store_step_done(s, st, err);
    sqlite3_finalize(st);
    return rc;
}

int store_forget(store *s, const char *id, size_t len, store_cursor *const *live, const int *live_dest,
                 size_t nlive, int64_t *erased, tly_err *err)
{
    assert(id && len > 0);
    *erased = 0;
    int rc = store_begin(s, err);
    if (rc) return rc;
    tj_arena *a = tj_arena_new();
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "store: forget: out of memory");
    rc = forget_queued(s, a, id, len, live, live_dest, nlive, erased, err);
    if (!rc) rc = forget_dead(s, a, id, len, erased, err);
    if (!rc) rc = forget_reasons(s, id, len, err);
    tj_arena_free(a);
    if (rc) s->txn_failed = 1; /* half an erasure must not commit */
    return rc;
}

/* Counts what `where` selects from dead per destination ("dead_pruned") and deletes it. */
static int prune_where(store *s, const char *where, int64_t arg, int64_t *pruned, tly_err *err)
{
    char sql[256];
    sqlite3_stmt *st;
    snprintf(sql, sizeof sql, "SELECT dest, count(*) FROM dead WHERE %s GROUP BY dest", where);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL)) return store_failed(s, err);
    sqlite3_bind_int64(st, 1, arg);
    int rc = TALLY_OK, step;
    int64_t total = 0;
    while (!rc && (step = sqlite3_step(st)) == SQLITE_ROW) {
        total += sqlite3_column_int64(st, 1);
        rc = store_count(s, sqlite3_column_int(st, 0), "dead_pruned", sqlite3_column_int64(st, 1), err);
    }
    if (!rc && step != SQLITE_DONE) rc = store_failed(s, err);
    sqlite3_finalize(st);
    if (rc || !total) return rc;
    snprintf(sql, sizeof sql, "DELETE FROM dead WHERE %s", where);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL)) return store_failed(s, err);
    sqlite3_bind_int64(st, 1, arg);
    rc = store_step_done(s, st, err);
    sqlite3_finalize(st);
    if (!rc) *pruned += total;
    return rc;
}

int store_dead_prune(store *s, int64_t older_than_ms, int64_t max_rows, int64_t *pruned, tly_err *err)
{
    *pruned = 0;
    int rc = store_begin(s, err);
    if (!rc && older_than_ms > 0) rc = prune_where(s, "at < ?1", older_than_ms, pruned, err);
    /* ids only grow, so the newest max_rows are the highest ids */
    if (!rc && max_rows >= 0)
        rc = prune_where(s, "id <= (SELECT id FROM dead ORDER BY id DESC LIMIT 1 OFFSET ?1)", max_rows, pruned, err);
    return rc;
}
