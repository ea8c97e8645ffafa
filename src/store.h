/* The durable queue: one SQLite database owned by the worker (WAL, one connection, prepared
 * statements). Rows are per destination, so each destination keeps its own cursor and a dead one
 * never stalls another. Writes are group-committed: appends join an open transaction that the
 * worker commits every commit_interval_ms, or at once for a flush. A message is durable when its
 * transaction commits. ":memory:" gives the same behaviour without a file.
 *
 * Functions that can fail return TALLY_OK or a TALLY_E* code (TALLY_EIO for SQLite's failures,
 * which an open store also logs) with the reason in *err; counts come back through out-parameters. */
#ifndef TALLY_STORE_H
#define TALLY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

typedef struct store store;

typedef struct store_limits {
    int64_t max_bytes;     /* bytes of queued message bodies, all destinations */
    int64_t max_rows;
    int     on_full;       /* STORE_FULL_*: drop the newest, drop the oldest, or block: the store
                            * takes what it is given, and the worker stops giving (store_full) */
} store_limits;

/* Where a loaded batch lies in its destination's queue: rows first_id..last_id (sequence
 * numbers), all of each but the last, of which it took the front last_taken of last_n messages
 * as they were when it was loaded. All zero: no rows (nothing loaded, or an empty load). The
 * store reads and writes it; its holder (the worker, beside the batch's messages) keeps it. */
typedef struct store_cursor {
    int64_t first_id, last_id;
    int64_t last_taken, last_n;
} store_cursor;

/* Where store_load puts the messages it takes, in queue order: take() gets one message's JSON
 * (not NUL-terminated) and returns TALLY_OK, or a TALLY_E* code that stops the load with it.
 * A load takes at most max_n messages and max_bytes of JSON (counting a newline after each),
 * and always at least one when any is queued. */
typedef struct store_sink {
    int   (*take)(void *ud, const char *json, size_t len);
    void   *ud;
    size_t  max_n, max_bytes;
} store_sink;

/* Opens (creating if needed) the store at path. A file that is not a database or is corrupt is
 * renamed to PATH.corrupt-<epoch> with an error logged, and a fresh store is created in its place.
 * TALLY_EIO (e.g. the directory is not writable, or another process holds the file), or
 * TALLY_ECONFIG when path names a file that is not a SQLite database (left untouched). */
int  store_open(store **out, const char *path, const store_limits *lim, const tly_logger *log, tly_err *err);
void store_close(store *s);        /* commits what is pending */

/* Destination ids are stable across restarts: rows left by a previous run keep their owner. */
int  store_dest_id(store *s, const char *name, int *id, tly_err *err);

/* Appends a chunk of n messages for one destination (their JSON texts joined by NUL bytes) inside
 * the open group-commit transaction. Applies the full policy first, message by message: *refused
 * counts the chunk's newest messages it did not store (drop_newest at the limit; 0 when all were
 * stored, and then the row is store_last_id()), *dropped older messages removed to make room
 * (drop_oldest). On failure the chunk is not stored and the open transaction is marked failed:
 * its commit rolls back, and the caller redoes what it appended. */
int  store_append(store *s, int dest_id, const char *body, size_t len, int n, int *refused, int64_t *dropped,
                  tly_err *err);
/* TALLY_OK: committed (or nothing was open). TALLY_ETIMEDOUT: busy past the busy timeout; the
 * transaction stays open for another try. TALLY_EIO: it failed (disk full, I/O error, or an
 * earlier write of it failed) and is rolled back, logged: everything it did is undone, and the
 * caller must redo what it still needs (worker.c keeps what it appended). */
int  store_commit(store *s, tly_err *err);
/* Whether the open transaction still holds every write made in it (none failed, SQLite did not
 * roll it back): only then do store_row_left's answers describe it. */
int  store_txn_intact(const store *s);
/* How many messages of row `seq` (a store_last_id() after its store_append) are still queued, in
 * *left: its whole count, fewer once batches took its front, 0 once it is gone. */
int  store_row_left(store *s, int dest_id, int64_t seq, int64_t *left, tly_err *err);
/* Whether the store is at its limits (rows or bytes). */
int  store_full(const store *s);
/* Messages queued for every destination together, as the open transaction has them. */
int64_t store_queued_total(const store *s);
/* Moves the WAL into the database once it grew past its bound (16 MiB); not inside a transaction.
 * Best effort: a checkpoint that cannot finish is tried again at the next call. */
void store_checkpoint(store *s);
int  store_in_txn(const store *s);
uint64_t store_txn_id(const store *s); /* changes whenever a transaction begins */

/* Loads the oldest messages of dest that follow the batch at `after` (NULL: the oldest of all)
 * into `to`, and their place into *cur, their number into *n (0: none queued). With `until`
 * (which may be cur itself), the batch ends where that one did at the latest: a retry reloads
 * what is left of its batch, no more. On failure *cur is left as it was; `to` may hold some
 * messages. Batches loaded one after another must be removed (store_ack, store_dead) in the
 * order they were loaded: a batch that begins inside a row assumes the batch before it has left
 * that row's front. */
int  store_load(store *s, int dest_id, const store_cursor *after, const store_cursor *until, const store_sink *to,
                store_cursor *cur, size_t *n, tly_err *err);
/* Removes the messages of a delivered batch (as store_load placed it). */
int  store_ack(store *s, int dest_id, const store_cursor *c, tly_err *err);
/* Moves the messages of the batch at c to the dead-letter table with the reason. */
int  store_dead(store *s, int dest_id, const store_cursor *c, int status, const char *reason, tly_err *err);
/* Consent: removes dest's queued messages in rows up to sequence number upto (store_last_id() when
 * they were queued), and with `dead` its dead letters too, in the open transaction; *purged counts
 * the messages removed. Rows a batch in flight covers must not be purged (they are removed when it
 * settles). */
int  store_purge(store *s, int dest_id, int64_t upto, int dead, int64_t *purged, tly_err *err);
/* Messages queued for dest. */
int  store_pending(store *s, int dest_id, int64_t *n, tly_err *err);
int64_t store_last_id(const store *s);
/* The smallest queued sequence number of dest_id into *seq, INT64_MAX when it has none. */
int  store_oldest(store *s, int dest_id, int64_t *seq, tly_err *err);

/* Calls fn for every destination (by name) that has queued rows. */
int  store_each_queued_dest(store *s, void (*fn)(void *ud, const char *name, int64_t rows), void *ud, tly_err *err);

/* Cumulative per-destination counters kept in the store, for `tally inspect`; in the open
 * transaction (a failed write makes the commit fail). */
int  store_count(store *s, int dest_id, const char *name, int64_t delta, tly_err *err);
/* Adds delta to the messages `rule` dropped for reason class `cls` (rules.h RULE_DROP_* names),
 * in the open transaction. */
int  store_rule_dropped(store *s, const char *rule, const char *cls, int64_t delta, tly_err *err);

/* Small key/value state (identity, sessions). get sets *value to a malloc'd string, or NULL when
 * the key is absent; set with value NULL deletes. */
int  store_meta_get(store *s, const char *key, char **value, tly_err *err);
int  store_meta_set(store *s, const char *key, const char *value, tly_err *err);

/* Erasing for good. Ordinary deletes run with secure_delete=FAST (store.c says why), which leaves
 * the bytes of freed pages in the file; an erasure must not. Between store_erase_begin and
 * store_erase_end, deletes and rewrites overwrite what they free (secure_delete=ON), in one
 * transaction of their own: begin wants no group-commit transaction open (commit first). End
 * commits it, goes back to FAST, rebuilds the file (VACUUM: no free page keeps bytes of earlier
 * FAST deletes either) and truncates the WAL (checkpoint TRUNCATE: its old frames held the erased
 * rows). TALLY_OK from end: the rows are gone for good. Should the scrub not finish (a reader such
 * as `tally inspect` holds the WAL), it is logged and store_checkpoint retries it until it does;
 * a crash before it does is finished at the next store_open (which truncates the WAL). A failed
 * commit rolls everything back (TALLY_EIO): nothing was erased. Used by store_forget's callers
 * and meant for any purge that must not leave bytes behind (consent). */
int  store_erase_begin(store *s, tly_err *err);
int  store_erase_end(store *s, tly_err *err);

/* Removes every queued message and dead letter whose top-level "userId" or "anonymousId" is id
 * (len bytes), for every destination: a chunk holding some of them is rewritten without them.
 * *erased counts them. live[k] (dest live_dest[k], nlive of them, NULL for none) are the cursors
 * of batches loaded and not yet removed: they are adjusted so that each still ends after the same
 * message (a chunk that lost messages behind a batch's end must not shift it). In the open
 * transaction: call it between store_erase_begin and store_erase_end. */
int  store_forget(store *s, const char *id, size_t len, store_cursor *const *live, const int *live_dest,
                  size_t nlive, int64_t *erased, tly_err *err);

/* Dead-letter retention: removes dead letters older than older_than_ms (wall clock, 0: none by
 * age) and the oldest beyond max_rows (<0: no cap), counting them per destination ("dead_pruned",
 * `tally inspect`) and in *pruned. In the open transaction, with the ordinary FAST deletes. */
int  store_dead_prune(store *s, int64_t older_than_ms, int64_t max_rows, int64_t *pruned, tly_err *err);

/* Read-only report for `tally inspect`: *json is malloc'd JSON text. Opens path itself, read-only,
 * so it runs beside the process that writes the store. */
int  store_report(const char *path, char **json, tly_err *err);

#endif
