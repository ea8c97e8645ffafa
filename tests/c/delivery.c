#include "delivery.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "jfields.h"
#include "tally.h"

tally_t *open_http(collector *c, const char *store, ...)
{
    const char *defaults[] = {"log_level", "off", "flush_interval_ms", "60000", "store", store ? store : ":memory:",
                              c ? "write_key" : NULL, KEY, "endpoint", c ? collector_url(c) : NULL, NULL};
    va_list ap;
    va_start(ap, store);
    tally_t *t;
    tf_vopen(&t, defaults, ap);
    va_end(ap);
    return t;
}

/* Tracks n events "Seq Event" with properties {"seq":first+i,"name":"item-<seq>"[,"pad":"xxx"]}. */
int track_seq(tally_t *t, int first, int n, size_t pad)
{
    char *padding = NULL;
    if (pad) {
        padding = malloc(pad + 1);
        if (!padding) return -1;
        memset(padding, 'x', pad);
        padding[pad] = '\0';
    }
    size_t cap = pad + 128;
    char *props = malloc(cap);
    int bad = 0;
    for (int i = first; props && i < first + n; i++) {
        if (pad) snprintf(props, cap, "{\"seq\":%d,\"name\":\"item-%d\",\"pad\":\"%s\"}", i, i, padding);
        else snprintf(props, cap, "{\"seq\":%d,\"name\":\"item-%d\"}", i, i);
        if (tally_track(t, "Seq Event", props) != TALLY_OK) {
            fprintf(stderr, "  tally_track: %s\n", tally_errmsg(t));
            bad++;
        }
    }
    free(props);
    free(padding);
    return props ? bad : -1;
}

int received_load(collector *c, received *r)
{
    memset(r, 0, sizeof *r);
    char *body = collector_received(c);
    if (!body) return -1;
    r->a = tj_arena_new();
    size_t len = strlen(body);
    char *copy = r->a ? tj_strdup(r->a, body, len) : NULL;
    free(body);
    tj_error err;
    if (!copy || tj_parse(r->a, copy, len, &r->root, &err)) {
        fprintf(stderr, "  /received: cannot parse: %s\n", copy ? err.msg : "out of memory");
        return -1;
    }
    r->reqs = tj_object_get(r->root, "requests");
    return r->reqs && r->reqs->type == TJ_ARRAY ? 0 : -1;
}

void received_free(received *r) { tj_arena_free(r->a); }


int jtrue(const tj_value *o, const char *key)
{
    const tj_value *v = tj_object_get(o, key);
    return v && v->type == TJ_TRUE;
}

tj_value *req_at(const received *r, size_t i) { return i < r->reqs->u.arr.n ? r->reqs->u.arr.items[i] : NULL; }
size_t nreqs(const received *r) { return r->reqs->u.arr.n; }

size_t req_nmsgs(const tj_value *req)
{
    const tj_value *m = tj_object_get(req, "messages");
    return m && m->type == TJ_ARRAY ? m->u.arr.n : 0;
}

const tj_value *req_msg(const tj_value *req, size_t i)
{
    const tj_value *m = tj_object_get(req, "messages");
    return m && m->type == TJ_ARRAY && i < m->u.arr.n ? m->u.arr.items[i] : NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Checks that the accepted requests carry exactly messages first..first+n-1 of track_seq, each
 * once, with the body that was tracked: in order within each request, and, when `in_order`, across
 * requests too (max_in_flight=1; with several batches out at once they may arrive in any order).
 * Returns the number of problems. */
int check_sequence(const received *r, int first, int n, size_t pad, int in_order)
{
    int problems = 0;
    size_t total = 0, k = 0;
    for (size_t q = 0; q < nreqs(r); q++)
        if (jtrue(req_at(r, q), "accepted")) total += req_nmsgs(req_at(r, q));
    int64_t *seqs = calloc(total + 1, sizeof *seqs), last_any = (int64_t)first - 1;
    if (!seqs) return 1;
    for (size_t q = 0; q < nreqs(r); q++) {
        const tj_value *req = req_at(r, q);
        if (!jtrue(req, "accepted")) continue;
        int64_t last = -1;
        for (size_t i = 0; i < req_nmsgs(req); i++) {
            const tj_value *m = req_msg(req, i), *p = tj_object_get(m, "properties");
            int64_t seq = tu_jint(p, "seq");
            char name[32];
            snprintf(name, sizeof name, "item-%lld", (long long)seq);
            const char *ev = tu_jstr(m, "event"), *nm = tu_jstr(p, "name"), *type = tu_jstr(m, "type");
            const char *mid = tu_jstr(m, "messageId"), *ts = tu_jstr(m, "timestamp");
            const tj_value *ctx = tj_object_get(m, "context"), *lib = tj_object_get(ctx, "library");
            const char *padv = tu_jstr(p, "pad");
            int pad_ok = pad ? padv && strlen(padv) == pad : !tj_object_get(p, "pad");
            int order_ok = (i == 0 || seq == last + 1) && (!in_order || seq == last_any + 1);
            if (!order_ok || !ev || strcmp(ev, "Seq Event") || !nm || strcmp(nm, name) || !type ||
                strcmp(type, "track") || !mid || strlen(mid) < 16 || !ts || !lib || !tu_jstr(lib, "name") ||
                strcmp(tu_jstr(lib, "name"), "tally") || !pad_ok) {
                if (problems++ < 5)
                    fprintf(stderr, "  request %zu message %zu: seq %lld (after %lld) event %s name %s\n", q, i,
                            (long long)seq, (long long)last, ev ? ev : "(none)", nm ? nm : "(none)");
            }
            last = last_any = seq;
            seqs[k++] = seq;
        }
    }
    qsort(seqs, k, sizeof *seqs, cmp_i64);
    for (size_t i = 0; i < k; i++)
        if (seqs[i] != first + (int64_t)i) {
            if (problems++ < 10) fprintf(stderr, "  received seq %lld where %lld was expected\n", (long long)seqs[i], (long long)(first + (int64_t)i));
            break;
        }
    free(seqs);
    if (k != (size_t)n) {
        problems++;
        fprintf(stderr, "  %zu messages accepted, expected %d\n", k, n);
    }
    int64_t accepted = tu_jint(r->root, "accepted_messages"), uniq = tu_jint(r->root, "unique_message_ids"),
            dups = tu_jint(r->root, "duplicates");
    if (accepted != n || uniq != n || dups != 0) {
        problems++;
        fprintf(stderr, "  accepted %lld, unique ids %lld, duplicates %lld; expected %d, %d, 0\n", (long long)accepted,
                (long long)uniq, (long long)dups, n, n);
    }
    return problems;
}

int check_exact_sequence(const received *r, int first, int n, size_t pad)
{
    return check_sequence(r, first, n, pad, 0);
}

/* The seq of every dead letter of a store file, in the order they were written: "0,1,2". */
int dead_seqs(const char *path, char *out, size_t len)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    out[0] = '\0';
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT group_concat(json_extract(body, '$.properties.seq'), ',') FROM"
                               " (SELECT body FROM dead ORDER BY id)", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        snprintf(out, len, "%s", t ? t : "");
        rc = 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* Reads the dead-letter table of a store file: rows, min/max status, and every distinct reason. */
int read_dead(const char *path, int64_t *rows, int64_t *status_min, int64_t *status_max, char *reasons,
                     size_t rlen, int64_t *queued)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fprintf(stderr, "  sqlite3_open %s: %s\n", path, db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return -1;
    }
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db,
                           "SELECT count(*), min(status), max(status), group_concat(DISTINCT reason),"
                           " (SELECT coalesce(sum(n), 0) FROM queue) FROM dead",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        *rows = sqlite3_column_int64(st, 0);
        *status_min = sqlite3_column_int64(st, 1);
        *status_max = sqlite3_column_int64(st, 2);
        const char *rs = (const char *)sqlite3_column_text(st, 3);
        snprintf(reasons, rlen, "%s", rs ? rs : "");
        *queued = sqlite3_column_int64(st, 4);
        rc = 0;
    } else {
        fprintf(stderr, "  sqlite3: %s\n", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* Messages queued in a store file (a row holds a chunk of them). */
int64_t count_queued(const char *path)
{
    sqlite3 *db = NULL;
    int64_t n = -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT coalesce(sum(n), 0) FROM queue", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}
