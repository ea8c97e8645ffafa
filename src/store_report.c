/* The read-only report `tally inspect` prints: it opens the file itself, read-only, so it can
 * run beside the runtime that writes it. */
#include "store.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"

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

/* Remote rules (rules_remote.c keeps these in meta): the active version, the last fetch and what
 * it came to; null when the store never polled. */
static void report_remote(sqlite3 *db, tbuf *b)
{
    static const char *const keys[] = {"rules_remote_version", "rules_remote_fetched_at", "rules_remote_result"};
    static const char *const names[] = {"version", "fetched_at", "result"};
    char *v[3] = {NULL, NULL, NULL};
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?1", -1, &st, NULL) == SQLITE_OK) {
        for (int i = 0; i < 3; i++) {
            sqlite3_bind_text(st, 1, keys[i], -1, SQLITE_STATIC);
            if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
                v[i] = sqlite3_mprintf("%s", (const char *)sqlite3_column_text(st, 0));
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
    }
    if (!v[1]) {
        tbuf_puts(b, ",\"rules_remote\":null");
    } else {
        tbuf_printf(b, ",\"rules_remote\":{\"version\":%lld", v[0] ? strtoll(v[0], NULL, 10) : 0LL);
        for (int i = 1; i < 3; i++) {
            tbuf_printf(b, ",\"%s\":", names[i]);
            tj_write_string(b, v[i] ? v[i] : "", v[i] ? strlen(v[i]) : 0);
        }
        tbuf_putc(b, '}');
    }
    for (int i = 0; i < 3; i++) sqlite3_free(v[i]);
}

/* 1 when the folder holding path cannot be written to by this process. */
static int folder_read_only(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    return access(dir, W_OK) != 0 && (errno == EACCES || errno == EROFS || errno == EPERM);
}

/* A store in WAL mode is read through its -shm file, which SQLite creates next to it even to
 * read. In a read-only folder it cannot: when no -wal file holds commits the main file lacks,
 * the file alone is the whole store, and SQLite may read it as immutable (no lock, no file
 * created). With a -wal file, reading the file alone would show an older state: refused. */
static int open_in_read_only_folder(const char *path, sqlite3 **db)
{
    char wal[4200];
    struct stat sb;
    snprintf(wal, sizeof wal, "%s-wal", path);
    if (stat(wal, &sb) == 0 && sb.st_size > 0) return -1;
    tbuf uri = TBUF_INIT;
    tbuf_puts(&uri, "file:");
    for (const char *p = path; *p; p++) {
        /* a name's ?, # and % would be read as the URI's own */
        if (*p == '?' || *p == '#' || *p == '%') tbuf_printf(&uri, "%%%02X", (unsigned char)*p);
        else tbuf_putc(&uri, *p);
    }
    tbuf_puts(&uri, "?immutable=1");
    int rc = uri.oom ? SQLITE_NOMEM
                     : sqlite3_open_v2(uri.data, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
    tbuf_free(&uri);
    return rc == SQLITE_OK ? 0 : -1;
}

int store_report(const char *path, char **json, tly_err *err)
{
    *json = NULL;
    sqlite3 *db;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        tly_err_set(err, TALLY_EIO, "%s: %s", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return TALLY_EIO;
    }
    sqlite3_busy_timeout(db, 2000);
    sqlite3_stmt *st;
    int prc = sqlite3_prepare_v2(db, "SELECT id, name FROM dests ORDER BY id", -1, &st, NULL);
    if (prc != SQLITE_OK && ((prc & 0xff) == SQLITE_READONLY || (prc & 0xff) == SQLITE_CANTOPEN) &&
        folder_read_only(path)) {
        sqlite3_close(db);
        db = NULL;
        if (open_in_read_only_folder(path, &db) ||
            (prc = sqlite3_prepare_v2(db, "SELECT id, name FROM dests ORDER BY id", -1, &st, NULL)) != SQLITE_OK) {
            tly_err_set(err, TALLY_EIO, "%s: its folder is read-only, and SQLite must create %s-shm there to read a "
                        "store that has a -wal file (%s)", path, path, db ? sqlite3_errmsg(db) : "not opened");
            sqlite3_close(db);
            return TALLY_EIO;
        }
    }
    if (prc != SQLITE_OK) {
        tly_err_set(err, TALLY_EIO, "%s: not a tally store (%s)", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return TALLY_EIO;
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
    tbuf_puts(&b, "]");
    report_remote(db, &b);
    tbuf_putc(&b, '}');
    sqlite3_close(db);
    if (b.oom) {
        tbuf_free(&b);
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    *json = tbuf_steal(&b);
    return TALLY_OK;
}
