/* The queue: appending chunks under the full policy, loading batches from them, acknowledging
 * and dead-lettering those batches, and the counts the worker schedules by. */
#include "store_impl.h"

#include <stdlib.h>

#include "config.h"

int store_full(const store *s) { return s->rows >= s->lim.max_rows || s->bytes >= s->lim.max_bytes; }
int64_t store_last_id(const store *s) { return s->last_id; }

int64_t store_row_left(store *s, int dest_id, int64_t seq)
{
    sqlite3_stmt *st = store_stmt(s, Q_ROW_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, seq));
    int rc = sqlite3_step(st);
    int64_t n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? 0 : -1;
    sqlite3_reset(st);
    return n;
}

typedef struct oldest_row { int64_t id, size, n; int dest; } oldest_row;

static int by_seq(const void *a, const void *b)
{
    int64_t x = seq_of(((const oldest_row *)a)->id), y = seq_of(((const oldest_row *)b)->id);
    return (x > y) - (x < y);
}

#define OLDEST_N 64

/* The store-wide OLDEST_N oldest rows, by sequence: the heads of every destination's range,
 * merged. Only runs when the store is full, so a query per destination is affordable. out holds
 * 2 * OLDEST_N. */
static int oldest_rows(store *s, oldest_row *out)
{
    int ndests = 0, dests[256], n = 0;
    sqlite3_stmt *st = store_stmt(s, Q_DESTS);
    while (ndests < 256 && sqlite3_step(st) == SQLITE_ROW) dests[ndests++] = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    for (int k = 0; k < ndests; k++) {
        st = store_stmt(s, Q_OLDEST);
        sqlite3_bind_int64(st, 1, row_id(dests[k], 0));
        sqlite3_bind_int64(st, 2, row_id(dests[k], SEQ_MASK));
        while (n < 2 * OLDEST_N && sqlite3_step(st) == SQLITE_ROW) {
            out[n].id = sqlite3_column_int64(st, 0);
            out[n].size = sqlite3_column_int64(st, 1);
            out[n].n = sqlite3_column_int64(st, 2);
            out[n].dest = dests[k];
            n++;
        }
        sqlite3_reset(st);
        qsort(out, (size_t)n, sizeof *out, by_seq);
        if (n > OLDEST_N) n = OLDEST_N;
    }
    return n;
}

static int over(const store *s, int64_t n, size_t len)
{
    return s->rows + n > s->lim.max_rows || s->bytes + (int64_t)len > s->lim.max_bytes;
}

/* The front of row `id` (n messages, size bytes) that holds at least need_n messages and need_b
 * bytes: its message count (*k) and length with the separator after it (*cut); all of the row
 * when that is the whole row. */
static int front_cut(store *s, int64_t id, int64_t n, int64_t size, int64_t need_n, int64_t need_b, int64_t *k,
                     int64_t *cut)
{
    *k = n;
    *cut = size;
    if (need_n >= n || need_b >= size) return 0;
    sqlite3_stmt *st = store_stmt(s, Q_BODIES);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, id);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return -1;
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
    return 0;
}

/* Removes the first k of row id's n messages (cut bytes): the whole row when k == n. */
static int drop_front(store *s, int64_t id, int64_t k, int64_t n, int64_t cut)
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
    if (store_step_done(s, d)) return -1;
    s->rows -= k < n ? k : n;
    s->bytes -= cut;
    return 0;
}

/* Removes the oldest messages (any destination) until n more in `len` bytes fit: whole rows, and
 * the front of the last one touched, so exactly as many go as must. */
static int make_room(store *s, int64_t n, size_t len, int64_t *dropped)
{
    oldest_row rows[2 * OLDEST_N];
    while (s->rows > 0 && over(s, n, len)) {
        int got = oldest_rows(s, rows);
        if (got == 0) break;
        for (int i = 0; i < got && over(s, n, len); i++) {
            int64_t k, cut;
            if (front_cut(s, rows[i].id, rows[i].n, rows[i].size, s->rows + n - s->lim.max_rows,
                          s->bytes + (int64_t)len - s->lim.max_bytes, &k, &cut) ||
                drop_front(s, rows[i].id, k, rows[i].n, cut))
                return -1;
            *dropped += k;
            store_count(s, rows[i].dest, "dropped", k);
        }
    }
    return 0;
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

int store_append(store *s, int dest_id, const char *body, size_t len, int n, int64_t *dropped)
{
    *dropped = 0;
    if (store_begin(s)) return -1;
    int64_t refused = 0;
    /* block: the worker stops handing rows over once store_full() says so, so the store goes over
     * its limits by at most one chunk, and never drops one */
    if (s->lim.on_full != STORE_FULL_BLOCK && over(s, n, len)) {
        if (s->lim.on_full == STORE_FULL_DROP_NEWEST) {
            int64_t keep = front_that_fits(body, &len, n, s->lim.max_rows - s->rows, s->lim.max_bytes - s->bytes);
            refused = n - keep;
            store_count(s, dest_id, "dropped", refused);
            if (keep == 0) return (int)refused;
            n = (int)keep;
        } else if (make_room(s, n, len, dropped)) {
            return -1;
        }
    }
    sqlite3_stmt *st = store_stmt(s, Q_INSERT);
    sqlite3_bind_int64(st, 1, row_id(dest_id, s->last_id + 1));
    sqlite3_bind_int(st, 2, dest_id);
    sqlite3_bind_int(st, 3, n);
    sqlite3_bind_blob(st, 4, body, (int)len, SQLITE_STATIC);
    if (store_step_done(s, st)) return -1;
    s->last_id++;
    s->rows += n;
    s->bytes += (int64_t)len;
    return (int)refused;
}

/* Adds the messages at the front of a chunk to the batch while the batch stays within max_n
 * messages and max_bytes (as sent: one newline each), at least one. Returns how many, or -1. */
static int64_t split_into(dest_batch *b, const char *body, size_t len, size_t max_n, size_t max_bytes, size_t *bytes)
{
    const char *p = body, *end = body + len;
    int64_t k = 0;
    for (;;) {
        const char *e = msg_end(p, end);
        size_t one = (size_t)(e - p);
        if (b->n > 0 && (b->n >= max_n || *bytes + one + 1 > max_bytes)) return k;
        if (batch_add(b, p, one)) return -1;
        *bytes += one + 1;
        k++;
        if (e == end) return k;
        p = e + 1;
    }
}

/* Where the batch ends in its last row now, counted from the row's front: last_taken was that
 * position when it was loaded, and since then only the front can have gone (the batch before it
 * acknowledged, or the full policy's make_room trimming). Once every batch before it has been
 * removed, that front is exactly the batch's share of the row. Row gone: 0 of 0. */
static int last_share(store *s, int dest_id, const dest_batch *b, int64_t *k, int64_t *n, int64_t *size)
{
    *k = *n = *size = 0;
    sqlite3_stmt *st = store_stmt(s, Q_ROW_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, b->last_id));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *n = sqlite3_column_int64(st, 0);
        *size = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return -1;
    *k = b->last_taken - (b->last_n - *n);
    if (*k < 0) *k = 0;
    if (*k > *n) *k = *n;
    return 0;
}

/* Where a batch loaded after `after` begins: rows past its last one, or inside its last row when it
 * took only a front of it (*skip_row, *skip: that row and how many of its messages are after's). */
static int after_cursor(store *s, int dest_id, const dest_batch *after, int64_t *from, int64_t *skip_row,
                        int64_t *skip)
{
    *from = 0;
    *skip_row = -1;
    *skip = 0;
    if (!after) return 0;
    *from = after->last_id;
    if (after->last_taken >= after->last_n) return 0;
    int64_t k, n, size;
    if (last_share(s, dest_id, after, &k, &n, &size)) return -1;
    if (k < n) {
        *from = after->last_id - 1;
        *skip_row = after->last_id;
        *skip = k;
    }
    return 0;
}

int store_load(store *s, int dest_id, const dest_batch *after, const dest_batch *until, size_t max_n, size_t max_bytes,
               dest_batch *b)
{
    int64_t from, skip_row, skip, end_row = SEQ_MASK, end_k = INT64_MAX, n_now, size;
    if (after_cursor(s, dest_id, after, &from, &skip_row, &skip)) return -1;
    if (until) { /* until may be b itself: read it before b is cleared */
        if (until->last_id == 0) { batch_clear(b); return 0; }
        end_row = until->last_id;
        if (last_share(s, dest_id, until, &end_k, &n_now, &size)) return -1;
    }
    batch_clear(b);
    sqlite3_stmt *st = store_stmt(s, Q_LOAD);
    sqlite3_bind_int64(st, 1, row_id(dest_id, from));
    sqlite3_bind_int64(st, 2, row_id(dest_id, end_row));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)max_n);
    size_t bytes = 0;
    int rc;
    /* Batches are cut to max_n / max_bytes whatever the chunks: the last row may be taken in part
     * (last_taken < last_n); its front goes when the batch is acknowledged (store_ack). */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t n = sqlite3_column_int64(st, 1), at = 0;
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
        size_t before = b->n, room = max_n;
        if (id == end_row) { /* where `until` ends */
            if (end_k <= at) break;
            if ((size_t)(end_k - at) < max_n - b->n) room = b->n + (size_t)(end_k - at);
        }
        int64_t k = split_into(b, body, len, room, max_bytes, &bytes);
        if (k < 0) { sqlite3_reset(st); return -1; }
        if (k == 0) break;
        if (before == 0) b->first_id = id;
        b->last_id = id;
        b->last_taken = at + k; /* where the batch ends in the row, counted from its front now */
        b->last_n = n;
        if (at + k < n || b->n >= room) break;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        tly_log(s->log, TALLY_LOG_ERROR, "store %s: %s", s->path, sqlite3_errmsg(s->db));
        return -1;
    }
    return (int)b->n;
}

static int delete_range(store *s, int dest_id, int64_t first, int64_t last)
{
    /* measured: counting first and then deleting is faster than DELETE ... RETURNING */
    sqlite3_stmt *st = store_stmt(s, Q_RANGE_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, first));
    sqlite3_bind_int64(st, 2, row_id(dest_id, last));
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return -1;
    }
    int64_t rows = (int64_t)sqlite3_column_double(st, 0), bytes = (int64_t)sqlite3_column_double(st, 1);
    sqlite3_reset(st);
    st = store_stmt(s, Q_ACK);
    sqlite3_bind_int64(st, 1, row_id(dest_id, first));
    sqlite3_bind_int64(st, 2, row_id(dest_id, last));
    if (store_step_done(s, st)) return -1;
    s->rows -= rows;
    s->bytes -= bytes;
    return 0;
}

/* Removes what the batch covers: its rows, and the front of the last one when it took part. */
static int remove_batch(store *s, int dest_id, const dest_batch *b)
{
    if (b->last_taken >= b->last_n) return delete_range(s, dest_id, b->first_id, b->last_id);
    int64_t k, n, size, got, cut;
    if ((b->last_id > b->first_id && delete_range(s, dest_id, b->first_id, b->last_id - 1)) ||
        last_share(s, dest_id, b, &k, &n, &size))
        return -1;
    if (k == 0) return 0;
    if (front_cut(s, row_id(dest_id, b->last_id), n, size, k, 0, &got, &cut)) return -1;
    return drop_front(s, row_id(dest_id, b->last_id), got, n, cut);
}

int store_ack(store *s, int dest_id, const dest_batch *b)
{
    if (store_begin(s)) return -1;
    return remove_batch(s, dest_id, b);
}

int store_dead(store *s, int dest_id, const dest_batch *b, int status, const char *reason)
{
    if (store_begin(s)) return -1;
    int64_t last_k = b->last_n, n, size;
    if (b->last_taken < b->last_n && last_share(s, dest_id, b, &last_k, &n, &size)) return -1;
    /* one dead letter per message, so `tally inspect` and a replay see messages, not chunks */
    sqlite3_stmt *rows = store_stmt(s, Q_BODIES);
    sqlite3_bind_int64(rows, 1, row_id(dest_id, b->first_id));
    sqlite3_bind_int64(rows, 2, row_id(dest_id, b->last_id));
    int64_t at = tly_now_ms();
    int rc;
    while ((rc = sqlite3_step(rows)) == SQLITE_ROW) {
        const char *p = sqlite3_column_blob(rows, 0), *end = p + sqlite3_column_bytes(rows, 0);
        int64_t left = seq_of(sqlite3_column_int64(rows, 1)) == b->last_id ? last_k : INT64_MAX;
        while (left-- > 0) {
            const char *e = msg_end(p, end);
            sqlite3_stmt *add = store_stmt(s, Q_DEAD_ADD);
            sqlite3_bind_int(add, 1, dest_id);
            sqlite3_bind_blob(add, 2, p, (int)(e - p), SQLITE_STATIC);
            sqlite3_bind_int(add, 3, status);
            sqlite3_bind_text(add, 4, reason, -1, SQLITE_STATIC);
            sqlite3_bind_int64(add, 5, at);
            if (store_step_done(s, add)) { sqlite3_reset(rows); return -1; }
            if (e == end) break;
            p = e + 1;
        }
    }
    sqlite3_reset(rows);
    if (rc != SQLITE_DONE) return -1;
    return remove_batch(s, dest_id, b);
}

int64_t store_pending(store *s, int dest_id)
{
    sqlite3_stmt *st = store_stmt(s, Q_PENDING);
    sqlite3_bind_int64(st, 1, row_id(dest_id, 0));
    sqlite3_bind_int64(st, 2, row_id(dest_id, SEQ_MASK));
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? (int64_t)sqlite3_column_double(st, 0) : -1;
    sqlite3_reset(st);
    return n;
}

int64_t store_oldest(store *s, int dest_id)
{
    sqlite3_stmt *st = store_stmt(s, Q_MIN);
    sqlite3_bind_int64(st, 1, row_id(dest_id, 0));
    sqlite3_bind_int64(st, 2, row_id(dest_id, SEQ_MASK));
    int64_t id = INT64_MAX;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) id = seq_of(sqlite3_column_int64(st, 0));
    sqlite3_reset(st);
    return id;
}

void store_each_queued_dest(store *s, void (*fn)(void *ud, const char *name, int64_t rows), void *ud)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT d.name, sum(q.n) FROM queue q JOIN dests d ON d.id = q.dest GROUP BY q.dest",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    while (sqlite3_step(st) == SQLITE_ROW) fn(ud, (const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
}

