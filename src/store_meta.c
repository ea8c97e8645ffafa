/* Small tables beside the queue: destination ids, key/value metadata (the identity), the
 * per-destination counters and the messages rules dropped, for `tally inspect`. */
#include "store_impl.h"

#include <stdlib.h>

int store_dest_id(store *s, const char *name, int *id, tly_err *err)
{
    sqlite3_stmt *st = store_stmt(s, Q_DEST_GET);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *id = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW) return TALLY_OK;
    if (rc != SQLITE_DONE) return store_failed(s, err);
    st = store_stmt(s, Q_DEST_ADD);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (store_step_done(s, st, err)) return TALLY_EIO;
    *id = (int)sqlite3_last_insert_rowid(s->db);
    return TALLY_OK;
}

int store_count(store *s, int dest_id, const char *name, int64_t delta, tly_err *err)
{
    int rc = store_begin(s, err);
    if (rc) return rc;
    sqlite3_stmt *st = store_stmt(s, Q_COUNT);
    sqlite3_bind_int(st, 1, dest_id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, delta);
    return store_step_done(s, st, err);
}

int store_rule_dropped(store *s, const char *rule, const char *cls, int64_t delta, tly_err *err)
{
    int rc = store_begin(s, err);
    if (rc) return rc;
    sqlite3_stmt *st = store_stmt(s, Q_RULE_DROP);
    sqlite3_bind_text(st, 1, rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, cls, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, delta);
    return store_step_done(s, st, err);
}

int store_meta_get(store *s, const char *key, char **value, tly_err *err)
{
    *value = NULL;
    sqlite3_stmt *st = store_stmt(s, Q_META_GET);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), oom = 0;
    const char *v = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    if (v) oom = !(*value = strdup(v));
    sqlite3_reset(st);
    if (oom) return tly_err_set(err, TALLY_ENOMEM, "store: out of memory reading %s", key);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return store_failed(s, err);
    return TALLY_OK;
}

int store_meta_set(store *s, const char *key, const char *value, tly_err *err)
{
    int rc = store_begin(s, err);
    if (rc) return rc;
    sqlite3_stmt *st = store_stmt(s, value ? Q_META_SET : Q_META_DEL);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (value) sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    return store_step_done(s, st, err);
}
