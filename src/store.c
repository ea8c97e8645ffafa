/* The store's file: opening, locking and migrating it, transactions and checkpoints. The queue
 * (store_queue.c), metadata and counters (store_meta.c) write through the helpers at the end. */
#include "store_impl.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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


/* Runs sql, logging a failure. Returns the SQLite code: opening tells a damaged file (moved
 * aside) from other failures by it, and a commit a busy database from a failed one. With err,
 * a failure's text goes there too. */
static int exec(store *s, const char *sql, tly_err *err)
{
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        tly_log(s->log, TALLY_LOG_ERROR, "store %s: %s", s->path, msg ? msg : sqlite3_errstr(rc));
        if (err) tly_err_set(err, TALLY_EIO, "store %s: %s", s->path, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
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
static int lock_store(store *s, tly_err *err)
{
    s->lock_fd = -1;
    if (is_memory(s->path)) return TALLY_OK;
    s->lock_fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0) return tly_err_set(err, TALLY_EIO, "store %s: cannot open: %s", s->path, strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(s->lock_fd);
        s->lock_fd = -1;
        return tly_err_set(err, TALLY_EIO, "store %s: %s", s->path,
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
    tly_err ignored; /* logged by store_scrub; it is tried again at the next call */
    if (s->db && !s->in_txn && s->scrub_due && tly_now_ms() >= s->scrub_at && store_scrub(s, &ignored) == TALLY_OK)
        return;
    if (!s->db || s->in_txn || s->wal_pages < s->wal_max_pages) return;
    int log = 0, done = 0;
    if (sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done) == SQLITE_OK && done >= log)
        s->wal_pages = 0;
}

/* After an erasure (store_erase.c; here because store_checkpoint retries it). */
int store_scrub(store *s, tly_err *err)
{
    assert(!s->in_txn);
    s->scrub_due = 1;
    s->scrub_at = tly_now_ms() + 10000; /* should it fail: a retry every 10 s, not every turn of the worker */
    /* VACUUM writes every live page anew (into the WAL), so free pages that kept bytes of earlier
     * FAST deletes are gone from the file once the checkpoint copies them back and truncates it */
    if (exec(s, "VACUUM", err) != SQLITE_OK) return TALLY_EIO;
    if (strcmp(s->path, ":memory:") != 0) {
        int log = 0, done = 0;
        int e = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done);
        if (e != SQLITE_OK) {
            tly_log(s->log, TALLY_LOG_WARN, "store %s: erased rows still in the WAL (%s); truncating it at the next "
                    "checkpoint", s->path, sqlite3_errmsg(s->db));
            return tly_err_set(err, TALLY_EIO, "store %s: cannot truncate the WAL: %s", s->path, sqlite3_errmsg(s->db));
        }
    }
    s->wal_pages = 0;
    s->scrub_due = 0;
    return TALLY_OK;
}

/* Stores written before chunks: every row holds one message. */
static int add_chunk_count(store *s)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT n FROM queue LIMIT 0", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_finalize(st);
        return SQLITE_OK;
    }
    return exec(s, "ALTER TABLE queue ADD COLUMN n INTEGER NOT NULL DEFAULT 1", NULL);
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
    int rc = exec(s, "BEGIN", NULL);
    if (rc == SQLITE_OK) rc = exec(s, move, NULL);
    sqlite3_free(move);
    if (rc == SQLITE_OK) rc = exec(s, "DROP INDEX queue_dest", NULL);
    if (rc == SQLITE_OK) rc = exec(s, "COMMIT", NULL);
    else exec(s, "ROLLBACK", NULL);
    if (rc == SQLITE_OK) tly_log(s->log, TALLY_LOG_INFO, "store %s: upgraded to per-destination id ranges", s->path);
    return rc;
}

/* Opens the database, applies the schema and reads the totals. Returns an SQLite code (not a
 * TALLY_E*): store_open moves a damaged file aside on SQLITE_NOTADB / SQLITE_CORRUPT only. */
static int open_db(store *s)
{
    sqlite3_stmt *st;
    int rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) return rc;
    sqlite3_busy_timeout(s->db, 2000); /* `tally inspect` may read at the same time */
    /* New files only (an existing one keeps its size): 16 KiB pages hold ~30 messages, so a
     * group commit writes and a checkpoint copies fewer, fuller pages than with 4 KiB ones
     * (156k -> 175k events/s end to end, 0.54 -> 0.46 CPU s per 100k; bench/README.md). */
    exec(s, "PRAGMA page_size=16384", NULL);
    /* Debian builds SQLite with secure_delete on: every page a delivered chunk frees would be
     * zeroed, i.e. written to the WAL and checkpointed once more. FAST still clears deleted
     * content in pages written anyway; freed pages keep old bytes until reused (README, limits).
     * WAL + checkpoint writes for 96 MB of messages: 361 -> 211 MB (bench/README.md). */
    exec(s, "PRAGMA secure_delete=FAST", NULL);
    if (!is_memory(s->path) && (rc = exec(s, "PRAGMA journal_mode=WAL", NULL)) != SQLITE_OK) return rc;
    sqlite3_wal_autocheckpoint(s->db, 0); /* see store_checkpoint */
    /* An erasure commits before it truncates the WAL (store_erase_end): a crash in between left
     * the erased rows' old frames there. Best effort: a reader holding the WAL only delays it. */
    if (!is_memory(s->path)) sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    sqlite3_wal_hook(s->db, on_wal_commit, s);
    /* NORMAL in WAL mode: a commit survives a crash of the process; only an OS crash or power
     * loss can take back the last commits. */
    if ((rc = exec(s, "PRAGMA synchronous=NORMAL", NULL)) != SQLITE_OK) return rc;
    if ((rc = exec(s, schema, NULL)) != SQLITE_OK) return rc;
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
static int move_aside(store *s, int why, tly_err *err)
{
    char aside[4096];
    snprintf(aside, sizeof aside, "%s.corrupt-%lld", s->path, (long long)(tly_now_ms() / 1000));
    if (rename(s->path, aside) != 0)
        return tly_err_set(err, TALLY_EIO, "store %s: unreadable (%s) and cannot be moved aside: %s", s->path,
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

int store_open(store **out, const char *path, const store_limits *lim, const tly_logger *log, tly_err *err)
{
    *out = NULL;
    store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return tly_err_set(err, TALLY_ENOMEM, "store: out of memory");
    }
    s->log = log;
    s->lim = *lim;
    int locked = lock_store(s, err);
    if (locked) {
        free(s->path);
        free(s);
        return locked;
    }
    struct stat st;
    if (s->lock_fd >= 0 && fstat(s->lock_fd, &st) == 0 && st.st_size > 0 && !has_sqlite_header(s->lock_fd)) {
        /* checked before SQLite opens it, so not even a -wal or -shm file appears beside it */
        int e = tly_err_set(err, TALLY_ECONFIG, "store: %s is not a SQLite database (refusing to touch it)", path);
        unlock_store(s);
        free(s->path);
        free(s);
        return e;
    }
    int rc = open_db(s);
    if ((rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT) && !is_memory(path)) {
        close_db(s);
        unlock_store(s); /* the lock belongs to the file being moved aside */
        int moved = move_aside(s, rc, err);
        if (!moved) moved = lock_store(s, err);
        if (moved) { free(s->path); free(s); return moved; }
        rc = open_db(s);
    }
    if (rc != SQLITE_OK) {
        int e = tly_err_set(err, TALLY_EIO, "store %s: cannot open: %s", path,
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
    tly_err ignored; /* a failed last commit is logged; close has no caller to tell */
    if (s->in_txn) store_commit(s, &ignored);
    close_db(s);
    unlock_store(s);
    free(s->path);
    free(s);
}

int store_begin(store *s, tly_err *err)
{
    /* once a write failed the transaction only waits for store_commit to roll it back; writing
     * on would add to it for nothing, or, should SQLite have rolled it back already, commit each
     * statement on its own */
    if (s->in_txn && (s->txn_failed || sqlite3_get_autocommit(s->db))) {
        s->txn_failed = 1;
        return tly_err_set(err, TALLY_EIO, "store %s: an earlier write of this transaction failed", s->path);
    }
    if (s->in_txn) return TALLY_OK;
    if (exec(s, "BEGIN", err) != SQLITE_OK) return TALLY_EIO;
    s->in_txn = 1;
    s->txn_id++;
    return TALLY_OK;
}

int store_in_txn(const store *s) { return s->in_txn; }
uint64_t store_txn_id(const store *s) { return s->txn_id; }

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

int store_commit(store *s, tly_err *err)
{
    assert(s->in_txn || !s->txn_failed); /* only a write inside a transaction can fail one */
    if (!s->in_txn) return TALLY_OK;
    /* A failed write (SQLITE_FULL, IOERR...) may have undone one statement or the whole
     * transaction: committing the rest would keep half of it, so it all goes back. */
    if (!s->txn_failed && atomic_load_explicit(&tly_fault_store_full, memory_order_relaxed)) {
        tly_log(s->log, TALLY_LOG_ERROR, "store %s: commit failed (fault point: store full)", s->path);
        s->txn_failed = 1;
    }
    int rc = s->txn_failed ? SQLITE_ABORT : exec(s, "COMMIT", err);
    if (rc == SQLITE_OK) {
        s->in_txn = 0;
        return TALLY_OK;
    }
    if (rc == SQLITE_BUSY && !sqlite3_get_autocommit(s->db)) /* still open: try again later */
        return tly_err_set(err, TALLY_ETIMEDOUT, "store %s: busy (another connection holds it); commit postponed",
                           s->path);
    if (s->txn_failed) tly_err_set(err, TALLY_EIO, "store %s: a write of the transaction failed; rolled back", s->path);
    if (!sqlite3_get_autocommit(s->db)) exec(s, "ROLLBACK", NULL);
    s->in_txn = 0;
    s->txn_failed = 0;
    recount(s);
    return TALLY_EIO;
}

int store_txn_intact(const store *s) { return s->in_txn && !s->txn_failed && !sqlite3_get_autocommit(s->db); }

sqlite3_stmt *store_stmt(store *s, int q)
{
    sqlite3_reset(s->q[q]);
    sqlite3_clear_bindings(s->q[q]);
    return s->q[q];
}

int store_step_done(store *s, sqlite3_stmt *st, tly_err *err)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return TALLY_OK;
    if (s->in_txn) s->txn_failed = 1;
    return store_failed(s, err);
}

int store_failed(store *s, tly_err *err)
{
    tly_log(s->log, TALLY_LOG_ERROR, "store %s: %s", s->path, sqlite3_errmsg(s->db));
    return tly_err_set(err, TALLY_EIO, "store %s: %s", s->path, sqlite3_errmsg(s->db));
}

