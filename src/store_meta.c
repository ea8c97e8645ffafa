/* Small tables beside the queue: destination ids, key/value metadata (the identity), the
 * per-destination counters and the messages rules dropped, for `tally inspect`. */
#include "store_impl.h"

#include <stdlib.h>

int store_dest_id(store *s, const char *name, int *id)
{
    sqlite3_stmt *st = store_stmt(s, Q_DEST_GET);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *id = sqlite3_column_int(st, 0);
        sqlite3_reset(st);
        return 0;
    }
    sqlite3_reset(st);
    st = store_stmt(s, Q_DEST_ADD);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (store_step_done(s, st)) return -1;
    *id = (int)sqlite3_last_insert_rowid(s->db);
    return 0;
}

void store_count(store *s, int dest_id, const char *name, int64_t delta)
{
    if (store_begin(s)) return;
    sqlite3_stmt *st = store_stmt(s, Q_COUNT);
    sqlite3_bind_int(st, 1, dest_id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, delta);
    store_step_done(s, st);
}

int store_rule_dropped(store *s, const char *rule, const char *cls, int64_t delta)
{
    if (store_begin(s)) return -1;
    sqlite3_stmt *st = store_stmt(s, Q_RULE_DROP);
    sqlite3_bind_text(st, 1, rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, cls, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, delta);
    return store_step_done(s, st);
}

char *store_meta_get(store *s, const char *key)
{
    sqlite3_stmt *st = store_stmt(s, Q_META_GET);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    char *v = NULL;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        v = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
    return v;
}

int store_meta_set(store *s, const char *key, const char *value)
{
    if (store_begin(s)) return -1;
    sqlite3_stmt *st = store_stmt(s, value ? Q_META_SET : Q_META_DEL);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (value) sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    return store_step_done(s, st);
}

