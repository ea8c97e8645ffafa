/* The queue: appending chunks under the full policy, loading batches from them, acknowledging
 * and dead-lettering those batches, and the counts the worker schedules by. */
#include "store_impl.h"

#include <assert.h>
#include <stdlib.h>

#include "config.h"

int store_full(const store *s) { return s->rows >= s->lim.max_rows || s->bytes >= s->lim.max_bytes; }
int64_t store_last_id(const store *s) { return s->last_id; }
int64_t store_queued_total(const store *s) { return s->rows; }

/* A cursor is empty (all zero) or names rows this store handed out (ids are never reused within
 * a run), in order, of whose last it took at least one message. That last_taken <= last_n is NOT
 * checked: it holds unless the file's n disagreed with the row's body (a file edited by hand),
 * and last_share() copes with that. */
static inline int cursor_ok(const store *s, const store_cursor *c)
{
    if (!c || (c->first_id == 0 && c->last_id == 0 && c->last_taken == 0 && c->last_n == 0)) return 1;
    return c->first_id > 0 && c->first_id <= c->last_id && c->last_id <= s->last_id && c->last_taken > 0;
}

/* The running totals are changed by exactly what the rows written or removed hold (their n and
 * length(body) columns), so they match the file's own sums; bytes cannot go below zero. */
static void totals_sub(store *s, int64_t rows, int64_t bytes)
{
    s->rows -= rows;
    s->bytes -= bytes;
    assert(s->bytes >= 0);
}

int store_row_left(store *s, int dest_id, int64_t seq, int64_t *left, tly_err *err)
{
    assert(seq > 0 && seq <= s->last_id); /* a row store_append made */
    sqlite3_stmt *st = store_stmt(s, Q_ROW_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, seq));
    int rc = sqlite3_step(st);
    *left = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? TALLY_OK : store_failed(s, err);
}

typedef struct oldest_row { int64_t id, size, n; int dest; } oldest_row;

static int by_seq(const void *a, const void *b)
{
    int64_t x = seq_of(((const oldest_row *)a)->id), y = seq_of(((const oldest_row *)b)->id);
    return (x > y) - (x < y);
}

#define OLDEST_N 64

/* The store-wide OLDEST_N oldest rows, by sequence: the heads of every destination's range,
 * merged, *got of them. Only runs when the store is full, so a query per destination is
 * affordable. out holds 2 * OLDEST_N. */
static int oldest_rows(store *s, oldest_row *out, int *got, tly_err *err)
{
    int ndests = 0, dests[256], n = 0, rc;
    sqlite3_stmt *st = store_stmt(s, Q_DESTS);
    while (ndests < 256 && (rc = sqlite3_step(st)) == SQLITE_ROW) dests[ndests++] = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    if (ndests < 256 && rc != SQLITE_DONE) return store_failed(s, err);
    for (int k = 0; k < ndests; k++) {
        st = store_stmt(s, Q_OLDEST);
        sqlite3_bind_int64(st, 1, row_id(dests[k], 0));
        sqlite3_bind_int64(st, 2, row_id(dests[k], SEQ_MASK));
        rc = SQLITE_DONE;
        while (n < 2 * OLDEST_N && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            out[n].id = sqlite3_column_int64(st, 0);
            out[n].size = sqlite3_column_int64(st, 1);
            out[n].n = sqlite3_column_int64(st, 2);
            out[n].dest = dests[k];
            n++;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) return store_failed(s, err);
        qsort(out, (size_t)n, sizeof *out, by_seq);
        if (n > OLDEST_N) n = OLDEST_N;
    }
    *got = n;
    return TALLY_OK;
}

static int over(const store *s, int64_t n, size_t len)
{
    return s->rows + n > s->lim.max_rows || s->bytes + (int64_t)len > s->lim.max_bytes;
}

/* The front of row `id` (n messages, size bytes) that holds at least need_n messages and need_b
 * bytes: its message count (*k) and length with the separator after it (*cut); all of the row
 * when that is the whole row. */
static int front_cut(store *s, int64_t id, int64_t n, int64_t size, int64_t need_n, int64_t need_b, int64_t *k,
                     int64_t *cut, tly_err *err)
{
    *k = n;
    *cut = size;
    if (need_n >= n || need_b >= size) return TALLY_OK;
    sqlite3_stmt *st = store_stmt(s, Q_BODIES);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, id);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? tly_err_set(err, TALLY_EIO, "store %s: row %lld vanished", s->path, (long long)id)
                                 : store_failed(s, err);
    }
    const char *body = sqlite3_column_blob(st, 0), *end = body + sqlite3_column_bytes(st, 0);
    int64_t got = 0, at = 0;
    while (got < n && (got < need_n || at < need_b)) {
        const char *e = msg_end(body + at, end);
        at = e - body + (e < end);
        got++;
    }
    sqlite3_reset(st);
    if (got < n) {
        *k = got;
        *cut = at;
    }
    return TALLY_OK;
}

/* Removes the first k of row id's n messages (cut bytes): the whole row when k == n. */
static int drop_front(store *s, int64_t id, int64_t k, int64_t n, int64_t cut, tly_err *err)
{
    sqlite3_stmt *d;
    if (k >= n) {
        d = store_stmt(s, Q_DELETE_ONE);
        sqlite3_bind_int64(d, 1, id);
    } else {
        d = store_stmt(s, Q_TRIM);
        sqlite3_bind_int64(d, 1, id);
        sqlite3_bind_int64(d, 2, n - k);
        sqlite3_bind_int64(d, 3, cut + 1); /* substr counts from 1 */
    }
    if (store_step_done(s, d, err)) return TALLY_EIO;
    totals_sub(s, k < n ? k : n, cut);
    return TALLY_OK;
}

/* Removes the oldest messages (any destination) until n more in `len` bytes fit: whole rows, and
 * the front of the last one touched, so exactly as many go as must. */
static int make_room(store *s, int64_t n, size_t len, int64_t *dropped, tly_err *err)
{
    oldest_row rows[2 * OLDEST_N];
    while (s->rows > 0 && over(s, n, len)) {
        int got = 0, rc = oldest_rows(s, rows, &got, err);
        if (rc) return rc;
        if (got == 0) break;
        for (int i = 0; i < got && over(s, n, len); i++) {
            int64_t k, cut;
            if ((rc = front_cut(s, rows[i].id, rows[i].n, rows[i].size, s->rows + n - s->lim.max_rows,
                                s->bytes + (int64_t)len - s->lim.max_bytes, &k, &cut, err)) ||
                (rc = drop_front(s, rows[i].id, k, rows[i].n, cut, err)))
                return rc;
            *dropped += k;
            if ((rc = store_count(s, rows[i].dest, "dropped", k, err))) return rc;
        }
    }
    return TALLY_OK;
}

/* The longest front of a chunk that fits in rows_room messages and bytes_room bytes: its message
 * count, and its length in *len. */
static int64_t front_that_fits(const char *body, size_t *len, int64_t n, int64_t rows_room, int64_t bytes_room)
{
    int64_t k = 0;
    size_t at = 0, fits = 0;
    while (k < n && k < rows_room) {
        size_t end = (size_t)(msg_end(body + at, body + *len) - body);
        if ((int64_t)end > bytes_room) break;
        fits = end;
        k++;
        at = end + 1;
    }
    *len = fits;
    return k;
}

int store_append(store *s, int dest_id, const char *body, size_t len, int n, int *refused, int64_t *dropped,
                 tly_err *err)
{
    assert(n > 0 && s->last_id < SEQ_MASK);
    *dropped = 0;
    *refused = 0;
    int rc = store_begin(s, err);
    if (rc) return rc;
    /* block: the worker stops handing rows over once store_full() says so, so the store goes over
     * its limits by at most one chunk, and never drops one */
    if (s->lim.on_full != STORE_FULL_BLOCK && over(s, n, len)) {
        if (s->lim.on_full == STORE_FULL_DROP_NEWEST) {
            int64_t keep = front_that_fits(body, &len, n, s->lim.max_rows - s->rows, s->lim.max_bytes - s->bytes);
            rc = store_count(s, dest_id, "dropped", n - keep, err);
            if (!rc && keep == 0) {
                *refused = n;
                return TALLY_OK;
            }
            if (!rc) *refused = (int)(n - keep);
            n = (int)keep;
        } else {
            rc = make_room(s, n, len, dropped, err);
        }
    }
    sqlite3_stmt *st = store_stmt(s, Q_INSERT);
    if (!rc) {
        sqlite3_bind_int64(st, 1, row_id(dest_id, s->last_id + 1));
        sqlite3_bind_int(st, 2, dest_id);
        sqlite3_bind_int(st, 3, n);
        sqlite3_bind_blob(st, 4, body, (int)len, SQLITE_STATIC);
        rc = store_step_done(s, st, err);
    }
    if (rc) {
        /* a chunk not stored must not be lost to a commit that succeeds: the caller redoes what
         * it appended only when the commit fails (worker.c), so this transaction must */
        s->txn_failed = 1;
        *refused = 0;
        return rc;
    }
    s->last_id++;
    s->rows += n;
    s->bytes += (int64_t)len;
    return TALLY_OK;
}

/* Hands the messages at the front of a chunk to the sink while the batch (*count messages, *bytes
 * as sent: one newline each) stays within max_n messages and the sink's max_bytes, at least one:
 * *k of them. */
static int split_into(const store_sink *to, const char *body, size_t len, size_t max_n, size_t *count, size_t *bytes,
                      int64_t *k, tly_err *err)
{
    const char *p = body, *end = body + len;
    *k = 0;
    for (;;) {
        const char *e = msg_end(p, end);
        size_t one = (size_t)(e - p);
        if (*count > 0 && (*count >= max_n || *bytes + one + 1 > to->max_bytes)) return TALLY_OK;
        int rc = to->take(to->ud, p, one);
        if (rc) return tly_err_set(err, rc, "store: loading a batch: %s", tally_strerror(rc));
        *bytes += one + 1;
        ++*count;
        ++*k;
        if (e == end) return TALLY_OK;
        p = e + 1;
    }
}

/* Where the batch ends in its last row now, counted from the row's front: last_taken was that
 * position when it was loaded, and since then only the front can have gone (the batch before it
 * acknowledged, or the full policy's make_room trimming). Once every batch before it has been
 * removed, that front is exactly the batch's share of the row. Row gone: 0 of 0. */
static int last_share(store *s, int dest_id, const store_cursor *c, int64_t *k, int64_t *n, int64_t *size,
                      tly_err *err)
{
    *k = *n = *size = 0;
    sqlite3_stmt *st = store_stmt(s, Q_ROW_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, c->last_id));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *n = sqlite3_column_int64(st, 0);
        *size = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return store_failed(s, err);
    *k = c->last_taken - (c->last_n - *n);
    /* < 0: drop_oldest trimmed more of the row's front than the batches before this one took,
     * some of this batch's share too (a recovery the full policy makes happen at run time).
     * > n: only when the row's n disagreed with its body at load (a file edited by hand). */
    if (*k < 0) *k = 0;
    if (*k > *n) *k = *n;
    return TALLY_OK;
}

/* Where a batch loaded after `after` begins: rows past its last one, or inside its last row when it
 * took only a front of it (*skip_row, *skip: that row and how many of its messages are after's). */
static int after_cursor(store *s, int dest_id, const store_cursor *after, int64_t *from, int64_t *skip_row,
                        int64_t *skip, tly_err *err)
{
    *from = 0;
    *skip_row = -1;
    *skip = 0;
    if (!after) return TALLY_OK;
    *from = after->last_id;
    if (after->last_taken >= after->last_n) return TALLY_OK;
    int64_t k, n, size;
    int rc = last_share(s, dest_id, after, &k, &n, &size, err);
    if (rc) return rc;
    if (k < n) {
        *from = after->last_id - 1;
        *skip_row = after->last_id;
        *skip = k;
    }
    return TALLY_OK;
}

int store_load(store *s, int dest_id, const store_cursor *after, const store_cursor *until, const store_sink *to,
               store_cursor *cur, size_t *n, tly_err *err)
{
    assert(cursor_ok(s, after) && cursor_ok(s, until));
    assert(!after || !until || until->last_id == 0 || after->last_id <= until->last_id); /* load order */
    *n = 0;
    store_cursor c = {0, 0, 0, 0};
    int64_t from, skip_row, skip, end_row = SEQ_MASK, end_k = INT64_MAX, n_now, size;
    int rc = after_cursor(s, dest_id, after, &from, &skip_row, &skip, err);
    if (rc) return rc;
    if (until) { /* until may be cur itself: read it before cur is written */
        if (until->last_id == 0) {
            *cur = c;
            return TALLY_OK;
        }
        end_row = until->last_id;
        if ((rc = last_share(s, dest_id, until, &end_k, &n_now, &size, err))) return rc;
    }
    sqlite3_stmt *st = store_stmt(s, Q_LOAD);
    sqlite3_bind_int64(st, 1, row_id(dest_id, from));
    sqlite3_bind_int64(st, 2, row_id(dest_id, end_row));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)to->max_n);
    size_t bytes = 0, count = 0;
    /* Batches are cut to max_n / max_bytes whatever the chunks: the last row may be taken in part
     * (last_taken < last_n); its front goes when the batch is acknowledged (store_ack). */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t rn = sqlite3_column_int64(st, 1), at = 0, k;
        const char *body = sqlite3_column_blob(st, 2);
        size_t len = (size_t)sqlite3_column_bytes(st, 2);
        int64_t id = seq_of(sqlite3_column_int64(st, 0));
        if (id == skip_row) { /* the batch before took this row's front */
            const char *p = body, *end = body + len;
            for (; at < skip && p < end; at++) {
                const char *e = msg_end(p, end);
                p = e < end ? e + 1 : end;
            }
            if (p == end) continue; /* nothing left of it (n disagreed with the body) */
            len -= (size_t)(p - body);
            body = p;
        }
        size_t before = count, room = to->max_n;
        if (id == end_row) { /* where `until` ends */
            if (end_k <= at) break;
            if ((size_t)(end_k - at) < to->max_n - count) room = count + (size_t)(end_k - at);
        }
        int e = split_into(to, body, len, room, &count, &bytes, &k, err);
        if (e) {
            sqlite3_reset(st);
            return e;
        }
        if (k == 0) break;
        if (before == 0) c.first_id = id;
        c.last_id = id;
        c.last_taken = at + k; /* where the batch ends in the row, counted from its front now */
        c.last_n = rn;
        if (at + k < rn || count >= room) break;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return store_failed(s, err);
    /* A reload that finds nothing left of its batch (the full policy or an erasure took it all)
     * keeps the batch's bounds: the batch after it must still begin where this one ended, not at
     * the front of the queue, and removing it removes only what is left in those bounds. */
    if (count == 0 && until) c = *until;
    assert(cursor_ok(s, &c) && (c.last_id == 0) == (count == 0 && !until));
    *cur = c;
    *n = count;
    return TALLY_OK;
}

static int delete_range(store *s, int dest_id, int64_t first, int64_t last, tly_err *err)
{
    /* measured: counting first and then deleting is faster than DELETE ... RETURNING */
    sqlite3_stmt *st = store_stmt(s, Q_RANGE_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, first));
    sqlite3_bind_int64(st, 2, row_id(dest_id, last));
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return store_failed(s, err);
    }
    int64_t rows = (int64_t)sqlite3_column_double(st, 0), bytes = (int64_t)sqlite3_column_double(st, 1);
    sqlite3_reset(st);
    st = store_stmt(s, Q_ACK);
    sqlite3_bind_int64(st, 1, row_id(dest_id, first));
    sqlite3_bind_int64(st, 2, row_id(dest_id, last));
    if (store_step_done(s, st, err)) return TALLY_EIO;
    totals_sub(s, rows, bytes);
    return TALLY_OK;
}

/* Removes what the batch covers: its rows, and the front of the last one when it took part. */
static int remove_batch(store *s, int dest_id, const store_cursor *c, tly_err *err)
{
    if (c->last_taken >= c->last_n) return delete_range(s, dest_id, c->first_id, c->last_id, err);
    int64_t k, n, size, got, cut;
    int rc;
    if ((c->last_id > c->first_id && (rc = delete_range(s, dest_id, c->first_id, c->last_id - 1, err))) ||
        (rc = last_share(s, dest_id, c, &k, &n, &size, err)))
        return rc;
    if (k == 0) return TALLY_OK;
    if ((rc = front_cut(s, row_id(dest_id, c->last_id), n, size, k, 0, &got, &cut, err))) return rc;
    return drop_front(s, row_id(dest_id, c->last_id), got, n, cut, err);
}

int store_ack(store *s, int dest_id, const store_cursor *c, tly_err *err)
{
    assert(cursor_ok(s, c));
    int rc = store_begin(s, err);
    return rc ? rc : remove_batch(s, dest_id, c, err);
}

/* Purges are rare (a consent change): the dead-letter statements are prepared when used. */
static int purge_dead(store *s, int dest_id, int64_t *n, tly_err *err)
{
    static const char *const sql[] = {"SELECT count(*) FROM dead WHERE dest = ?1", "DELETE FROM dead WHERE dest = ?1"};
    for (int k = 0; k < 2; k++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(s->db, sql[k], -1, &st, NULL) != SQLITE_OK) return store_failed(s, err);
        sqlite3_bind_int(st, 1, dest_id);
        int rc = sqlite3_step(st);
        if (k == 0 && rc == SQLITE_ROW) *n += sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        if (rc != (k == 0 ? SQLITE_ROW : SQLITE_DONE)) {
            s->txn_failed = 1;
            return tly_err_set(err, TALLY_EIO, "store: purging dead letters failed");
        }
    }
    return TALLY_OK;
}

int store_purge(store *s, int dest_id, int64_t upto, int dead, int64_t *purged, tly_err *err)
{
    *purged = 0;
    int rc = store_begin(s, err);
    if (rc) return rc;
    int64_t before = s->rows;
    if ((rc = delete_range(s, dest_id, 0, upto, err))) return rc;
    *purged = before - s->rows;
    return dead ? purge_dead(s, dest_id, purged, err) : TALLY_OK;
}

int store_dead(store *s, int dest_id, const store_cursor *c, int status, const char *reason, tly_err *err)
{
    assert(cursor_ok(s, c));
    int rc = store_begin(s, err);
    if (rc) return rc;
    int64_t last_k = c->last_n, n, size;
    if (c->last_taken < c->last_n && (rc = last_share(s, dest_id, c, &last_k, &n, &size, err))) return rc;
    /* one dead letter per message, so `tally inspect` and a replay see messages, not chunks */
    sqlite3_stmt *rows = store_stmt(s, Q_BODIES);
    sqlite3_bind_int64(rows, 1, row_id(dest_id, c->first_id));
    sqlite3_bind_int64(rows, 2, row_id(dest_id, c->last_id));
    int64_t at = tly_now_ms();
    while ((rc = sqlite3_step(rows)) == SQLITE_ROW) {
        const char *p = sqlite3_column_blob(rows, 0), *end = p + sqlite3_column_bytes(rows, 0);
        int64_t left = seq_of(sqlite3_column_int64(rows, 1)) == c->last_id ? last_k : INT64_MAX;
        while (left-- > 0) {
            const char *e = msg_end(p, end);
            sqlite3_stmt *add = store_stmt(s, Q_DEAD_ADD);
            sqlite3_bind_int(add, 1, dest_id);
            sqlite3_bind_blob(add, 2, p, (int)(e - p), SQLITE_STATIC);
            sqlite3_bind_int(add, 3, status);
            sqlite3_bind_text(add, 4, reason, -1, SQLITE_STATIC);
            sqlite3_bind_int64(add, 5, at);
            if (store_step_done(s, add, err)) {
                sqlite3_reset(rows);
                return TALLY_EIO;
            }
            if (e == end) break;
            p = e + 1;
        }
    }
    sqlite3_reset(rows);
    if (rc != SQLITE_DONE) return store_failed(s, err);
    return remove_batch(s, dest_id, c, err);
}

int store_pending(store *s, int dest_id, int64_t *n, tly_err *err)
{
    sqlite3_stmt *st = store_stmt(s, Q_PENDING);
    sqlite3_bind_int64(st, 1, row_id(dest_id, 0));
    sqlite3_bind_int64(st, 2, row_id(dest_id, SEQ_MASK));
    int rc = sqlite3_step(st);
    *n = rc == SQLITE_ROW ? (int64_t)sqlite3_column_double(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? TALLY_OK : store_failed(s, err);
}

int store_oldest(store *s, int dest_id, int64_t *seq, tly_err *err)
{
    sqlite3_stmt *st = store_stmt(s, Q_MIN);
    sqlite3_bind_int64(st, 1, row_id(dest_id, 0));
    sqlite3_bind_int64(st, 2, row_id(dest_id, SEQ_MASK));
    *seq = INT64_MAX;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) *seq = seq_of(sqlite3_column_int64(st, 0));
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? TALLY_OK : store_failed(s, err);
}

int store_each_queued_dest(store *s, void (*fn)(void *ud, const char *name, int64_t rows), void *ud, tly_err *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT d.name, sum(q.n) FROM queue q JOIN dests d ON d.id = q.dest GROUP BY q.dest",
                           -1, &st, NULL) != SQLITE_OK)
        return store_failed(s, err);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        fn(ud, (const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? TALLY_OK : store_failed(s, err);
}
