/* Private to the store's files (store.c, store_queue.c, store_meta.c): the handle, the prepared
 * statements and the row-id layout. The rest of src/ sees only store.h. */
#ifndef TALLY_STORE_IMPL_H
#define TALLY_STORE_IMPL_H

#include <sqlite3.h>
#include <string.h>

#include "store.h"

enum {
    Q_INSERT, Q_LOAD, Q_RANGE_SIZE, Q_ACK, Q_BODIES, Q_ROW_SIZE, Q_DEAD_ADD, Q_PENDING, Q_OLDEST, Q_DELETE_ONE, Q_TRIM, Q_MIN,
    Q_DESTS, Q_COUNT, Q_META_GET, Q_META_SET, Q_META_DEL, Q_DEST_GET, Q_DEST_ADD, Q_RULE_DROP, Q_N
};

/* A row holds a chunk: n messages of one destination, their JSON texts joined by a NUL byte (JSON
 * text never holds one; rows written before chunks hold one message and n = 1). One row per
 * message made every message an INSERT, a b-tree cell and a DELETE, and the pages a FIFO churns
 * through were written to the WAL and checkpointed twice each; a chunk of up to a batch is one
 * cell whose body lives in overflow pages that a delete frees without rewriting (bench/README.md).
 * The worker gathers chunks (worker.c); the store splits them when it loads a batch, trims the
 * oldest one message-exactly when drop_oldest needs room, and dead-letters message by message. */
#define SEP '\0'

/* Where the message starting at p ends: at its separator, or at the end of the chunk. */
static inline const char *msg_end(const char *p, const char *end)
{
    const char *sep = memchr(p, SEP, (size_t)(end - p));
    return sep ? sep : end;
}

/* A row's id holds its destination in the high bits and the store-wide sequence number (the
 * order messages were stored in) in the low SEQ_BITS. Each destination's rows are then one
 * contiguous rowid range, so loading, acknowledging and counting a destination's queue are rowid
 * range scans, and no (dest, id) index has to be updated on every insert and delete: that index
 * cost 15% of the end-to-end throughput (bench/README.md). Outside the store ids are sequence
 * numbers only. */
#define SEQ_BITS 40
#define SEQ_MASK ((INT64_C(1) << SEQ_BITS) - 1)
static inline int64_t row_id(int dest_id, int64_t seq) { return ((int64_t)dest_id << SEQ_BITS) | seq; }
static inline int64_t seq_of(int64_t id) { return id & SEQ_MASK; }

struct store {
    sqlite3          *db;
    int               lock_fd;   /* flock'd for the life of the store: one writer process per file */
    sqlite3_stmt     *q[Q_N];
    char             *path;
    const tly_logger *log;
    store_limits      lim;
    int               in_txn;
    int               txn_failed; /* a write of the open transaction failed: it must not commit */
    uint64_t          txn_id;    /* counts transactions begun */
    int64_t           last_id;   /* sequence numbers are ours, not SQLite's: never reused within a run */
    int               wal_max_pages;
    int64_t           rows, bytes;   /* messages queued (all chunks), bytes of their bodies */
    int               wal_pages;  /* frames in the WAL after the last commit (wal hook) */
    int               scrub_due;  /* an erasure committed and its VACUUM + WAL truncation did not finish */
    int64_t           scrub_at;   /* wall ms: when store_checkpoint tries it again */
};

/* store.c: the helpers every part of the store reads and writes through. */
/* Joins the open group-commit transaction, beginning one when none is open; TALLY_EIO when a
 * write of the open one failed already (it can only be rolled back: store_commit). */
int           store_begin(store *s, tly_err *err);
sqlite3_stmt *store_stmt(store *s, int q);      /* prepared statement q, reset, no bindings */
/* Steps a statement that writes (or reads one row) and resets it; a failure marks the open
 * transaction failed. TALLY_OK or TALLY_EIO. */
int           store_step_done(store *s, sqlite3_stmt *st, tly_err *err);
/* Logs SQLite's last error on the store's connection and writes it to err: TALLY_EIO. */
int           store_failed(store *s, tly_err *err);
/* store.c: rebuilds the file and truncates the WAL after an erasure; TALLY_OK or TALLY_EIO
 * (scrub_due stays set). Not inside a transaction. */
int           store_scrub(store *s, tly_err *err);

#endif
