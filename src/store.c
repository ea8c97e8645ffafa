#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "json.h"

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
static const char *msg_end(const char *p, const char *end)
{
    const char *sep = memchr(p, SEP, (size_t)(end - p));
    return sep ? sep : end;
}

/* A row's id holds its destination in the high bits and the store-wide sequence number (the
 * order messages were stored in) in the low SEQ_BITS. Each destination's rows are then one
 * contiguous rowid range, so loading, acknowledging and counting a destination's queue are rowid
 * range scans, and no (dest, id) index has to be updated on every insert and delete: that index
 * cost 15% of the end-to-end throughput (bench/README.md). Outside this file ids are sequence
 * numbers only. */
#define SEQ_BITS 40
#define SEQ_MASK ((INT64_C(1) << SEQ_BITS) - 1)
static int64_t row_id(int dest_id, int64_t seq) { return ((int64_t)dest_id << SEQ_BITS) | seq; }
static int64_t seq_of(int64_t id) { return id & SEQ_MASK; }

static const char *const sql_text[Q_N] = {
    [Q_INSERT] = "INSERT INTO queue(id, dest, n, body) VALUES (?1, ?2, ?3, ?4)",
    [Q_LOAD] = "SELECT id, n, body FROM queue WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
    [Q_RANGE_SIZE] = "SELECT total(n), total(length(body)) FROM queue WHERE id BETWEEN ?1 AND ?2",
    [Q_ACK] = "DELETE FROM queue WHERE id BETWEEN ?1 AND ?2",
    [Q_BODIES] = "SELECT body, id FROM queue WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
    [Q_ROW_SIZE] = "SELECT n, length(body) FROM queue WHERE id = ?1",
    [Q_DEAD_ADD] = "INSERT INTO dead(dest, body, status, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    [Q_PENDING] = "SELECT total(n) FROM queue WHERE id > ?1 AND id <= ?2",
    [Q_OLDEST] = "SELECT id, length(body), n FROM queue WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT 64", /* OLDEST_N */
    [Q_DELETE_ONE] = "DELETE FROM queue WHERE id = ?1",
    [Q_TRIM] = "UPDATE queue SET n = ?2, body = substr(body, ?3) WHERE id = ?1",
    [Q_MIN] = "SELECT min(id) FROM queue WHERE id > ?1 AND id <= ?2",
    [Q_DESTS] = "SELECT id FROM dests",
    [Q_COUNT] = "INSERT INTO counters(dest, name, value) VALUES (?1, ?2, ?3) "
                "ON CONFLICT(dest, name) DO UPDATE SET value = value + excluded.value",
    [Q_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [Q_META_SET] = "INSERT INTO meta(key, value) VALUES (?1, ?2) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    [Q_META_DEL] = "DELETE FROM meta WHERE key = ?1",
    [Q_DEST_GET] = "SELECT id FROM dests WHERE name = ?1",
    [Q_DEST_ADD] = "INSERT INTO dests(name) VALUES (?1)",
    [Q_RULE_DROP] = "INSERT INTO rule_drops(rule, class, value) VALUES (?1, ?2, ?3) "
                    "ON CONFLICT(rule, class) DO UPDATE SET value = value + excluded.value",
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS dests(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);"
    "CREATE TABLE IF NOT EXISTS queue(id INTEGER PRIMARY KEY, dest INTEGER NOT NULL, body BLOB NOT NULL,"
    " n INTEGER NOT NULL DEFAULT 1);"
    "CREATE TABLE IF NOT EXISTS dead(id INTEGER PRIMARY KEY, dest INTEGER NOT NULL, body BLOB NOT NULL,"
    " status INTEGER, reason TEXT, at INTEGER);"
    "CREATE TABLE IF NOT EXISTS counters(dest INTEGER NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,"
    " PRIMARY KEY(dest, name)) WITHOUT ROWID;"
    /* messages rules dropped, per rule and class (rules.h RULE_DROP_*); stores from before it get
     * it here when they are opened, and `tally inspect` reads a missing one as all zeros */
    "CREATE TABLE IF NOT EXISTS rule_drops(rule TEXT NOT NULL, class TEXT NOT NULL, value INTEGER NOT NULL,"
    " PRIMARY KEY(rule, class)) WITHOUT ROWID;";

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
};

static int exec(store *s, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        tly_log(s->log, TALLY_LOG_ERROR, "store %s: %s", s->path, err ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
    }
    return rc;
}

static void finalize_all(store *s)
{
    for (int i = 0; i < Q_N; i++) {
        sqlite3_finalize(s->q[i]);
        s->q[i] = NULL;
    }
}

static int is_memory(const char *path) { return !strcmp(path, ":memory:"); }

/* Two processes appending to one store would hand out the same row ids and lose rows, so the
 * file is locked for as long as a runtime uses it. flock, not fcntl: closing this descriptor must
 * not drop SQLite's own fcntl locks on the same file, and it is only closed after SQLite is. */
static int lock_store(store *s)
{
    s->lock_fd = -1;
    if (is_memory(s->path)) return TALLY_OK;
    s->lock_fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0) return tly_fail(TALLY_EIO, "store %s: cannot open: %s", s->path, strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(s->lock_fd);
        s->lock_fd = -1;
        return tly_fail(TALLY_EIO, "store %s: %s", s->path,
                        e == EWOULDBLOCK ? "in use by another process (one runtime per store file)" : strerror(e));
    }
    return TALLY_OK;
}

static void unlock_store(store *s)
{
    if (s->lock_fd >= 0) close(s->lock_fd);
    s->lock_fd = -1;
}

static int on_wal_commit(void *ud, sqlite3 *db, const char *name, int pages)
{
    (void)db;
    (void)name;
    ((store *)ud)->wal_pages = pages;
    return SQLITE_OK;
}

/* Checkpoints move the WAL back into the database. SQLite's automatic one runs inside a commit,
 * on the worker's hot path; we run it ourselves once the WAL passes WAL_MAX_BYTES, right after a
 * group commit or when the worker is idle, so it stays bounded under a constant stream. Idle
 * checkpoints used to start at 4 MiB: while delivery waits for an answer the worker is idle, so a
 * burst paid a checkpoint (and its fsync) every 4 MiB; one threshold measured 271k -> 286k
 * events/s end to end (5 paired runs, all five faster), the same bytes written.
 * Measured and left out: a checkpointer thread with its own connection. A checkpoint running
 * beside a busy writer never catches up with it, so the WAL cannot start over until the worker
 * copies the rest itself; on two cores shared with the collector it gained nothing (bench/README). */
#define WAL_MAX_BYTES (16 << 20)

void store_checkpoint(store *s)
{
    if (!s->db || s->in_txn || s->wal_pages < s->wal_max_pages) return;
    int log = 0, done = 0;
    if (sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done) == SQLITE_OK && done >= log)
        s->wal_pages = 0;
}

/* Stores written before chunks: every row holds one message. */
static int add_chunk_count(store *s)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT n FROM queue LIMIT 0", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_finalize(st);
        return SQLITE_OK;
    }
    return exec(s, "ALTER TABLE queue ADD COLUMN n INTEGER NOT NULL DEFAULT 1");
}

/* Stores written before ids carried the destination: move every row into its destination's
 * range and drop the index that range replaces. Old ids are sequence numbers (< 2^SEQ_BITS), so
 * the new ones cannot collide with rows not yet moved. */
static int migrate(store *s)
{
    sqlite3_stmt *st;
    int old = 0;
    if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM sqlite_schema WHERE type = 'index' AND name = 'queue_dest'", -1, &st,
                           NULL) != SQLITE_OK)
        return sqlite3_errcode(s->db);
    old = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (!old) return SQLITE_OK;
    char *move = sqlite3_mprintf("UPDATE queue SET id = (dest << %d) | id WHERE id <= %lld", SEQ_BITS,
                                 (long long)SEQ_MASK);
    if (!move) return SQLITE_NOMEM;
    int rc = exec(s, "BEGIN");
    if (rc == SQLITE_OK) rc = exec(s, move);
    sqlite3_free(move);
    if (rc == SQLITE_OK) rc = exec(s, "DROP INDEX queue_dest");
    if (rc == SQLITE_OK) rc = exec(s, "COMMIT");
    else exec(s, "ROLLBACK");
    if (rc == SQLITE_OK) tly_log(s->log, TALLY_LOG_INFO, "store %s: upgraded to per-destination id ranges", s->path);
    return rc;
}

/* Opens the database, applies the schema and reads the totals. Returns an SQLite code. */
static int open_db(store *s)
{
    sqlite3_stmt *st;
    int rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) return rc;
    sqlite3_busy_timeout(s->db, 2000); /* `tally inspect` may read at the same time */
    /* New files only (an existing one keeps its size): 16 KiB pages hold ~30 messages, so a
     * group commit writes and a checkpoint copies fewer, fuller pages than with 4 KiB ones
     * (156k -> 175k events/s end to end, 0.54 -> 0.46 CPU s per 100k; bench/README.md). */
    exec(s, "PRAGMA page_size=16384");
    /* Debian builds SQLite with secure_delete on: every page a delivered chunk frees would be
     * zeroed, i.e. written to the WAL and checkpointed once more. FAST still clears deleted
     * content in pages written anyway; freed pages keep old bytes until reused (README, limits).
     * WAL + checkpoint writes for 96 MB of messages: 361 -> 211 MB (bench/README.md). */
    exec(s, "PRAGMA secure_delete=FAST");
    if (!is_memory(s->path) && (rc = exec(s, "PRAGMA journal_mode=WAL")) != SQLITE_OK) return rc;
    sqlite3_wal_autocheckpoint(s->db, 0); /* see store_checkpoint */
    sqlite3_wal_hook(s->db, on_wal_commit, s);
    /* NORMAL in WAL mode: a commit survives a crash of the process; only an OS crash or power
     * loss can take back the last commits. */
    if ((rc = exec(s, "PRAGMA synchronous=NORMAL")) != SQLITE_OK) return rc;
    if ((rc = exec(s, schema)) != SQLITE_OK) return rc;
    if ((rc = migrate(s)) != SQLITE_OK || (rc = add_chunk_count(s)) != SQLITE_OK) return rc;
    int page = 4096;
    if (sqlite3_prepare_v2(s->db, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0) page = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    s->wal_max_pages = WAL_MAX_BYTES / page;
    for (int i = 0; i < Q_N; i++)
        if ((rc = sqlite3_prepare_v3(s->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &s->q[i], NULL)) != SQLITE_OK)
            return rc;
    /* Reading every row of the queue and of the small tables walks their pages, so a damaged
     * file is found here and not halfway through the run. */
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT total(n), total(length(body)), coalesce(max(id & ?1), 0),"
                            " (SELECT total(length(key) + length(value)) FROM meta),"
                            " (SELECT total(length(name)) FROM dests), (SELECT total(value) FROM counters),"
                            " (SELECT total(value) FROM rule_drops) FROM queue",
                            -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    sqlite3_bind_int64(st, 1, SEQ_MASK);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s->rows = (int64_t)sqlite3_column_double(st, 0);
        s->bytes = (int64_t)sqlite3_column_double(st, 1);
        s->last_id = sqlite3_column_int64(st, 2);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static void close_db(store *s)
{
    finalize_all(s);
    sqlite3_close(s->db);
    s->db = NULL;
}

/* Only a file SQLite wrote may be moved aside: a store path that names the user's text or
 * NDJSON file by mistake must leave that file where it is. */
static int has_sqlite_header(int fd)
{
    static const char magic[16] = "SQLite format 3"; /* with its NUL: 16 bytes */
    char head[16];
    return fd >= 0 && pread(fd, head, sizeof head, 0) == (ssize_t)sizeof head && !memcmp(head, magic, sizeof head);
}

/* A damaged store must not stop the host: keep the evidence, start empty, say so loudly. */
static int move_aside(store *s, int why)
{
    char aside[4096];
    snprintf(aside, sizeof aside, "%s.corrupt-%lld", s->path, (long long)(tly_now_ms() / 1000));
    if (rename(s->path, aside) != 0)
        return tly_fail(TALLY_EIO, "store %s: unreadable (%s) and cannot be moved aside: %s", s->path,
                        sqlite3_errstr(why), strerror(errno));
    char side[4200];
    snprintf(side, sizeof side, "%s-wal", s->path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", s->path);
    unlink(side);
    tly_log(s->log, TALLY_LOG_ERROR, "store %s: unreadable (%s); moved to %s, starting a fresh store", s->path,
            sqlite3_errstr(why), aside);
    return TALLY_OK;
}

int store_open(store **out, const char *path, const store_limits *lim, const tly_logger *log)
{
    *out = NULL;
    store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return tly_fail(TALLY_ENOMEM, "store: out of memory");
    }
    s->log = log;
    s->lim = *lim;
    int locked = lock_store(s);
    if (locked) {
        free(s->path);
        free(s);
        return locked;
    }
    struct stat st;
    if (s->lock_fd >= 0 && fstat(s->lock_fd, &st) == 0 && st.st_size > 0 && !has_sqlite_header(s->lock_fd)) {
        /* checked before SQLite opens it, so not even a -wal or -shm file appears beside it */
        int e = tly_fail(TALLY_ECONFIG, "store: %s is not a SQLite database (refusing to touch it)", path);
        unlock_store(s);
        free(s->path);
        free(s);
        return e;
    }
    int rc = open_db(s);
    if ((rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT) && !is_memory(path)) {
        close_db(s);
        unlock_store(s); /* the lock belongs to the file being moved aside */
        int moved = move_aside(s, rc);
        if (!moved) moved = lock_store(s);
        if (moved) { free(s->path); free(s); return moved; }
        rc = open_db(s);
    }
    if (rc != SQLITE_OK) {
        int e = tly_fail(TALLY_EIO, "store %s: cannot open: %s", path,
                         s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        close_db(s);
        unlock_store(s);
        free(s->path);
        free(s);
        return e;
    }
    *out = s;
    return TALLY_OK;
}

void store_close(store *s)
{
    if (!s) return;
    if (s->in_txn) store_commit(s);
    close_db(s);
    unlock_store(s);
    free(s->path);
    free(s);
}

static int begin(store *s)
{
    /* once a write failed the transaction only waits for store_commit to roll it back; writing
     * on would add to it for nothing, or, should SQLite have rolled it back already, commit each
     * statement on its own */
    if (s->in_txn && (s->txn_failed || sqlite3_get_autocommit(s->db))) {
        s->txn_failed = 1;
        return -1;
    }
    if (s->in_txn) return 0;
    if (exec(s, "BEGIN") != SQLITE_OK) return -1;
    s->in_txn = 1;
    s->txn_id++;
    return 0;
}

int store_in_txn(const store *s) { return s->in_txn; }
uint64_t store_txn_id(const store *s) { return s->txn_id; }
int store_full(const store *s) { return s->rows >= s->lim.max_rows || s->bytes >= s->lim.max_bytes; }
int64_t store_last_id(const store *s) { return s->last_id; }

/* After a rollback the totals are what the file holds again (the ids stay ours: never reused). */
static void recount(store *s)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT total(n), total(length(body)) FROM queue", -1, &st, NULL) != SQLITE_OK) return;
    if (sqlite3_step(st) == SQLITE_ROW) {
        s->rows = (int64_t)sqlite3_column_double(st, 0);
        s->bytes = (int64_t)sqlite3_column_double(st, 1);
    }
    sqlite3_finalize(st);
}

int store_commit(store *s)
{
    if (!s->in_txn) return 0;
    /* A failed write (SQLITE_FULL, IOERR...) may have undone one statement or the whole
     * transaction: committing the rest would keep half of it, so it all goes back. */
    int rc = s->txn_failed ? SQLITE_ABORT : exec(s, "COMMIT");
    if (rc == SQLITE_OK) {
        s->in_txn = 0;
        return 0;
    }
    if (rc == SQLITE_BUSY && !sqlite3_get_autocommit(s->db)) return 1; /* still open: try again later */
    if (!sqlite3_get_autocommit(s->db)) exec(s, "ROLLBACK");
    s->in_txn = 0;
    s->txn_failed = 0;
    recount(s);
    return -1;
}

int store_txn_intact(const store *s) { return s->in_txn && !s->txn_failed && !sqlite3_get_autocommit(s->db); }

static sqlite3_stmt *stmt(store *s, int q)
{
    sqlite3_reset(s->q[q]);
    sqlite3_clear_bindings(s->q[q]);
    return s->q[q];
}

static int step_done(store *s, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return 0;
    if (s->in_txn) s->txn_failed = 1;
    tly_log(s->log, TALLY_LOG_ERROR, "store %s: %s", s->path, sqlite3_errmsg(s->db));
    return -1;
}

int64_t store_row_left(store *s, int dest_id, int64_t seq)
{
    sqlite3_stmt *st = stmt(s, Q_ROW_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, seq));
    int rc = sqlite3_step(st);
    int64_t n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? 0 : -1;
    sqlite3_reset(st);
    return n;
}

int store_dest_id(store *s, const char *name, int *id)
{
    sqlite3_stmt *st = stmt(s, Q_DEST_GET);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *id = sqlite3_column_int(st, 0);
        sqlite3_reset(st);
        return 0;
    }
    sqlite3_reset(st);
    st = stmt(s, Q_DEST_ADD);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (step_done(s, st)) return -1;
    *id = (int)sqlite3_last_insert_rowid(s->db);
    return 0;
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
    sqlite3_stmt *st = stmt(s, Q_DESTS);
    while (ndests < 256 && sqlite3_step(st) == SQLITE_ROW) dests[ndests++] = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    for (int k = 0; k < ndests; k++) {
        st = stmt(s, Q_OLDEST);
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
    sqlite3_stmt *st = stmt(s, Q_BODIES);
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
        d = stmt(s, Q_DELETE_ONE);
        sqlite3_bind_int64(d, 1, id);
    } else {
        d = stmt(s, Q_TRIM);
        sqlite3_bind_int64(d, 1, id);
        sqlite3_bind_int64(d, 2, n - k);
        sqlite3_bind_int64(d, 3, cut + 1); /* substr counts from 1 */
    }
    if (step_done(s, d)) return -1;
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
    if (begin(s)) return -1;
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
    sqlite3_stmt *st = stmt(s, Q_INSERT);
    sqlite3_bind_int64(st, 1, row_id(dest_id, s->last_id + 1));
    sqlite3_bind_int(st, 2, dest_id);
    sqlite3_bind_int(st, 3, n);
    sqlite3_bind_blob(st, 4, body, (int)len, SQLITE_STATIC);
    if (step_done(s, st)) return -1;
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
    sqlite3_stmt *st = stmt(s, Q_ROW_SIZE);
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
    sqlite3_stmt *st = stmt(s, Q_LOAD);
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
    sqlite3_stmt *st = stmt(s, Q_RANGE_SIZE);
    sqlite3_bind_int64(st, 1, row_id(dest_id, first));
    sqlite3_bind_int64(st, 2, row_id(dest_id, last));
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return -1;
    }
    int64_t rows = (int64_t)sqlite3_column_double(st, 0), bytes = (int64_t)sqlite3_column_double(st, 1);
    sqlite3_reset(st);
    st = stmt(s, Q_ACK);
    sqlite3_bind_int64(st, 1, row_id(dest_id, first));
    sqlite3_bind_int64(st, 2, row_id(dest_id, last));
    if (step_done(s, st)) return -1;
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
    if (begin(s)) return -1;
    return remove_batch(s, dest_id, b);
}

int store_dead(store *s, int dest_id, const dest_batch *b, int status, const char *reason)
{
    if (begin(s)) return -1;
    int64_t last_k = b->last_n, n, size;
    if (b->last_taken < b->last_n && last_share(s, dest_id, b, &last_k, &n, &size)) return -1;
    /* one dead letter per message, so `tally inspect` and a replay see messages, not chunks */
    sqlite3_stmt *rows = stmt(s, Q_BODIES);
    sqlite3_bind_int64(rows, 1, row_id(dest_id, b->first_id));
    sqlite3_bind_int64(rows, 2, row_id(dest_id, b->last_id));
    int64_t at = tly_now_ms();
    int rc;
    while ((rc = sqlite3_step(rows)) == SQLITE_ROW) {
        const char *p = sqlite3_column_blob(rows, 0), *end = p + sqlite3_column_bytes(rows, 0);
        int64_t left = seq_of(sqlite3_column_int64(rows, 1)) == b->last_id ? last_k : INT64_MAX;
        while (left-- > 0) {
            const char *e = msg_end(p, end);
            sqlite3_stmt *add = stmt(s, Q_DEAD_ADD);
            sqlite3_bind_int(add, 1, dest_id);
            sqlite3_bind_blob(add, 2, p, (int)(e - p), SQLITE_STATIC);
            sqlite3_bind_int(add, 3, status);
            sqlite3_bind_text(add, 4, reason, -1, SQLITE_STATIC);
            sqlite3_bind_int64(add, 5, at);
            if (step_done(s, add)) { sqlite3_reset(rows); return -1; }
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
    sqlite3_stmt *st = stmt(s, Q_PENDING);
    sqlite3_bind_int64(st, 1, row_id(dest_id, 0));
    sqlite3_bind_int64(st, 2, row_id(dest_id, SEQ_MASK));
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? (int64_t)sqlite3_column_double(st, 0) : -1;
    sqlite3_reset(st);
    return n;
}

int64_t store_oldest(store *s, int dest_id)
{
    sqlite3_stmt *st = stmt(s, Q_MIN);
    sqlite3_bind_int64(st, 1, row_id(dest_id, 0));
    sqlite3_bind_int64(st, 2, row_id(dest_id, SEQ_MASK));
    int64_t id = INT64_MAX;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) id = seq_of(sqlite3_column_int64(st, 0));
    sqlite3_reset(st);
    return id;
}

void store_count(store *s, int dest_id, const char *name, int64_t delta)
{
    if (begin(s)) return;
    sqlite3_stmt *st = stmt(s, Q_COUNT);
    sqlite3_bind_int(st, 1, dest_id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, delta);
    step_done(s, st);
}

int store_rule_dropped(store *s, const char *rule, const char *cls, int64_t delta)
{
    if (begin(s)) return -1;
    sqlite3_stmt *st = stmt(s, Q_RULE_DROP);
    sqlite3_bind_text(st, 1, rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, cls, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, delta);
    return step_done(s, st);
}

char *store_meta_get(store *s, const char *key)
{
    sqlite3_stmt *st = stmt(s, Q_META_GET);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    char *v = NULL;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        v = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
    return v;
}

int store_meta_set(store *s, const char *key, const char *value)
{
    if (begin(s)) return -1;
    sqlite3_stmt *st = stmt(s, value ? Q_META_SET : Q_META_DEL);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (value) sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    return step_done(s, st);
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

/* ---- inspect ---- */

static void report_dest(sqlite3 *db, tbuf *b, int id, const char *name)
{
    static const char *const q[] = {
        "SELECT coalesce(sum(n), 0) FROM queue WHERE dest = ?1",
        "SELECT count(*) FROM dead WHERE dest = ?1",
    };
    int64_t v[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, q[i], -1, &st, NULL) != SQLITE_OK) continue;
        sqlite3_bind_int(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW) v[i] = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    tbuf_puts(b, "{\"name\":");
    tj_write_string(b, name, strlen(name));
    tbuf_printf(b, ",\"queued\":%lld,\"dead_letters\":%lld", (long long)v[0], (long long)v[1]);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT name, value FROM counters WHERE dest = ?1 ORDER BY name", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int(st, 1, id);
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *n = (const char *)sqlite3_column_text(st, 0);
            tbuf_putc(b, ',');
            tj_write_string(b, n, strlen(n));
            tbuf_printf(b, ":%lld", (long long)sqlite3_column_int64(st, 1));
        }
        sqlite3_finalize(st);
    }
    tbuf_puts(b, ",\"recent_dead\":[");
    if (sqlite3_prepare_v2(db, "SELECT status, reason, at FROM dead WHERE dest = ?1 ORDER BY id DESC LIMIT 5", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_int(st, 1, id);
        for (int i = 0; sqlite3_step(st) == SQLITE_ROW; i++) {
            const char *r = (const char *)sqlite3_column_text(st, 1);
            tbuf_printf(b, "%s{\"status\":%d,\"reason\":", i ? "," : "", sqlite3_column_int(st, 0));
            tj_write_string(b, r ? r : "", r ? strlen(r) : 0);
            char at[25];
            tly_iso8601(sqlite3_column_int64(st, 2), at);
            tbuf_printf(b, ",\"at\":\"%s\"}", at);
        }
        sqlite3_finalize(st);
    }
    tbuf_puts(b, "]}");
}

char *store_report(const char *path, char *err, size_t errlen)
{
    sqlite3 *db;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 2000);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT id, name FROM dests ORDER BY id", -1, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: not a tally store (%s)", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    tbuf b = TBUF_INIT;
    tbuf_puts(&b, "{\"store\":");
    tj_write_string(&b, path, strlen(path));
    tbuf_puts(&b, ",\"destinations\":[");
    for (int i = 0; sqlite3_step(st) == SQLITE_ROW; i++) {
        if (i) tbuf_putc(&b, ',');
        report_dest(db, &b, sqlite3_column_int(st, 0), (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_finalize(st);
    tbuf_puts(&b, "],\"rule_drops\":[");
    /* no table: a store from before rules' drops were kept, none counted yet */
    if (sqlite3_prepare_v2(db, "SELECT rule, class, value FROM rule_drops ORDER BY rule, class", -1, &st, NULL) == SQLITE_OK) {
        for (int i = 0; sqlite3_step(st) == SQLITE_ROW; i++) {
            const char *rule = (const char *)sqlite3_column_text(st, 0), *cls = (const char *)sqlite3_column_text(st, 1);
            tbuf_puts(&b, i ? ",{\"rule\":" : "{\"rule\":");
            tj_write_string(&b, rule ? rule : "", rule ? strlen(rule) : 0);
            tbuf_puts(&b, ",\"class\":");
            tj_write_string(&b, cls ? cls : "", cls ? strlen(cls) : 0);
            tbuf_printf(&b, ",\"n\":%lld}", (long long)sqlite3_column_int64(st, 2));
        }
        sqlite3_finalize(st);
    }
    tbuf_puts(&b, "]}");
    sqlite3_close(db);
    if (b.oom) {
        snprintf(err, errlen, "out of memory");
        tbuf_free(&b);
        return NULL;
    }
    return tbuf_steal(&b);
}
