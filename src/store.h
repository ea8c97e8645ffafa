/* The durable queue: one SQLite database owned by the worker (WAL, one connection, prepared
 * statements). Rows are per destination, so each destination keeps its own cursor and a dead one
 * never stalls another. Writes are group-committed: appends join an open transaction that the
 * worker commits every commit_interval_ms, or at once for a flush. A message is durable when its
 * transaction commits. ":memory:" gives the same behaviour without a file. */
#ifndef TALLY_STORE_H
#define TALLY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "dest.h"
#include "internal.h"

typedef struct store store;

typedef struct store_limits {
    int64_t max_bytes;     /* bytes of queued message bodies, all destinations */
    int64_t max_rows;
    int     on_full;       /* STORE_FULL_*: drop the newest, drop the oldest, or block: the store
                            * takes what it is given, and the worker stops giving (store_full) */
} store_limits;

/* Opens (creating if needed) the store at path. A file that is not a database or is corrupt is
 * renamed to PATH.corrupt-<epoch> with an error logged, and a fresh store is created in its place.
 * Returns TALLY_OK, or TALLY_EIO with errmsg set (e.g. the directory is not writable). */
int  store_open(store **out, const char *path, const store_limits *lim, const tly_logger *log);
void store_close(store *s);        /* commits what is pending */

/* Destination ids are stable across restarts: rows left by a previous run keep their owner. */
int  store_dest_id(store *s, const char *name, int *id);

/* Appends a chunk of n messages for one destination (their JSON texts joined by NUL bytes) inside
 * the open group-commit transaction. Applies the full policy first, message by message: returns
 * how many of the chunk's newest messages were refused (drop_newest at the limit; 0 when all were
 * stored), or -1 on error. *dropped counts older messages removed to make room (drop_oldest). */
int  store_append(store *s, int dest_id, const char *body, size_t len, int n, int64_t *dropped);
/* 0: committed; 1: busy, the transaction stays open for another try; -1: it failed (disk full,
 * I/O error, or an earlier write of it failed) and is rolled back, logged: everything it did is
 * undone, and the caller must redo what it still needs (worker.c keeps what it appended). */
int  store_commit(store *s);
/* Whether the open transaction still holds every write made in it (none failed, SQLite did not
 * roll it back): only then do store_row_left's answers describe it. */
int  store_txn_intact(const store *s);
/* How many messages of row `seq` (a store_last_id() after its store_append) are still queued: its
 * whole count, fewer once batches took its front, 0 once it is gone; -1 on error. */
int64_t store_row_left(store *s, int dest_id, int64_t seq);
/* Whether the store is at its limits (rows or bytes). */
int  store_full(const store *s);
/* Moves the WAL into the database once it grew past its bound (16 MiB); not inside a transaction. */
void store_checkpoint(store *s);
int  store_in_txn(const store *s);
uint64_t store_txn_id(const store *s); /* changes whenever a transaction begins */

/* Loads the oldest messages of dest that follow batch `after` (NULL: the oldest of all), up to
 * max_n / max_bytes of JSON (at least one), into b (cleared first), setting b->first_id /
 * b->last_id (row ids) and, when the last row is taken in part, b->last_taken / b->last_n.
 * With `until` (which may be b itself), the batch ends where that one did at the latest: a retry
 * reloads what is left of its batch, no more. Returns the number of messages loaded or -1.
 * Batches loaded one after another must be removed (store_ack, store_dead) in the order they were
 * loaded: a batch that begins inside a row assumes the batch before it has left that row's front. */
int  store_load(store *s, int dest_id, const dest_batch *after, const dest_batch *until, size_t max_n,
                size_t max_bytes, dest_batch *b);
/* Removes the messages of a delivered batch (as store_load made it). */
int  store_ack(store *s, int dest_id, const dest_batch *b);
/* Moves the messages of batch b to the dead-letter table with the reason. */
int  store_dead(store *s, int dest_id, const dest_batch *b, int status, const char *reason);
/* Messages queued for dest, or -1. */
int64_t store_pending(store *s, int dest_id);
int64_t store_last_id(const store *s);
/* The smallest queued id of dest_id, INT64_MAX when it has none. */
int64_t store_oldest(store *s, int dest_id);

/* Calls fn for every destination (by name) that has queued rows. */
void store_each_queued_dest(store *s, void (*fn)(void *ud, const char *name, int64_t rows), void *ud);

/* Cumulative per-destination counters kept in the store, for `tally inspect`. */
void store_count(store *s, int dest_id, const char *name, int64_t delta);
/* Adds delta to the messages `rule` dropped for reason class `cls` (rules.h RULE_DROP_* names),
 * in the open transaction: 0, or -1 when the write failed (the commit will then fail). */
int  store_rule_dropped(store *s, const char *rule, const char *cls, int64_t delta);

/* Small key/value state (identity, sessions). get returns a malloc'd string or NULL. */
char *store_meta_get(store *s, const char *key);
int   store_meta_set(store *s, const char *key, const char *value); /* value NULL deletes */

/* Read-only report for `tally inspect`: JSON text, malloc'd. */
char *store_report(const char *path, char *err, size_t errlen);

#endif
