/* The sqlite destination: a local `events` table in a database the user names, for games and
 * apps that want their analytics on the device (and for `make demo`). Columns hold the fields
 * people query by; `body` keeps the whole message. Delivery is at-least-once, so messageId is
 * unique and a redelivered batch inserts nothing twice. Messages cannot carry a blank id
 * (msg_validate), but a mapping's payloads can: those get no id rather than one shared id that
 * would keep only the first of them. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dest.h"

typedef struct sqlite_dest {
    sqlite3      *db;
    sqlite3_stmt *insert;
} sqlite_dest;

static const char events_schema[] =
    "PRAGMA journal_mode=WAL;"
    "CREATE TABLE IF NOT EXISTS events("
    " id INTEGER PRIMARY KEY, message_id TEXT UNIQUE, type TEXT NOT NULL, event TEXT, name TEXT,"
    " user_id TEXT, anonymous_id TEXT, session_id TEXT, timestamp TEXT, received_at TEXT, body TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS events_type_event ON events(type, event);"
    "CREATE INDEX IF NOT EXISTS events_session ON events(session_id);";

/* SQLite's JSON functions pull the columns out of the message in one statement. */
static const char insert_sql[] =
    "INSERT INTO events(message_id, type, event, name, user_id, anonymous_id, session_id, timestamp,"
    " received_at, body) VALUES (CASE WHEN trim(json_extract(?1, '$.messageId')) <> ''"
    " THEN json_extract(?1, '$.messageId') END, json_extract(?1, '$.type'),"
    " json_extract(?1, '$.event'), json_extract(?1, '$.name'), json_extract(?1, '$.userId'),"
    " json_extract(?1, '$.anonymousId'), json_extract(?1, '$.context.session.id'),"
    " json_extract(?1, '$.timestamp'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?1)"
    " ON CONFLICT(message_id) DO NOTHING";

static void sqlite_close_dest(dest *d)
{
    sqlite_dest *s = d->impl;
    if (!s) return;
    sqlite3_finalize(s->insert);
    sqlite3_close(s->db);
    free(s);
    d->impl = NULL;
}

static int sqlite_open_dest(dest *d, const tj_value *cfg, const dest_env *env, tly_err *err)
{
    const tj_value *path = tj_object_get(cfg, "path");
    if (!path || path->type != TJ_STRING || path->u.str.len == 0)
        return tly_err_set(err, TALLY_ECONFIG, "destinations: sqlite needs a non-empty string \"path\"");
    sqlite_dest *s = calloc(1, sizeof *s);
    if (!s) return tly_err_set(err, TALLY_ENOMEM, "sqlite destination: out of memory");
    d->impl = s;
    snprintf(d->name, sizeof d->name, "sqlite:%s", path->u.str.s);
    char *why = NULL;
    if (sqlite3_open_v2(path->u.str.s, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) ||
        sqlite3_exec(s->db, events_schema, NULL, NULL, &why) ||
        sqlite3_prepare_v2(s->db, insert_sql, -1, &s->insert, NULL)) {
        int rc = tly_err_set(err, TALLY_EIO, "sqlite destination %s: %s", path->u.str.s, why ? why : sqlite3_errmsg(s->db));
        sqlite3_free(why);
        sqlite_close_dest(d);
        return rc;
    }
    sqlite3_busy_timeout(s->db, 2000);
    return TALLY_OK;
}

static int sqlite_submit(dest *d, const dest_batch *b, dest_outcome *out, void **handle)
{
    (void)handle;
    sqlite_dest *s = d->impl;
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        dest_outcome_set(out, DEST_RETRY, 0, "begin: %s", sqlite3_errmsg(s->db));
        return 1;
    }
    for (size_t i = 0; i < b->n; i++) {
        sqlite3_reset(s->insert);
        sqlite3_bind_text(s->insert, 1, b->data.data + b->off[i], (int)(b->off[i + 1] - b->off[i] - 1), SQLITE_STATIC);
        if (sqlite3_step(s->insert) != SQLITE_DONE) {
            dest_outcome_set(out, DEST_RETRY, 0, "insert: %s", sqlite3_errmsg(s->db));
            sqlite3_reset(s->insert);
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return 1;
        }
    }
    sqlite3_reset(s->insert);
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        dest_outcome_set(out, DEST_RETRY, 0, "commit: %s", sqlite3_errmsg(s->db));
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return 1;
    }
    dest_outcome_set(out, DEST_OK, 0, "stored");
    return 1;
}

/* Each batch already commits; in WAL mode with the default synchronous=FULL that is durable. */
static int sqlite_sync(dest *d) { (void)d; return TALLY_OK; }

const dest_ops dest_sqlite_ops = {"sqlite", sqlite_open_dest, sqlite_submit, NULL, sqlite_sync, sqlite_close_dest};
