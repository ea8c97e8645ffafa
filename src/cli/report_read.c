/* Reading for `tally report`: the events database in one SQL scan (the `since` filter in its
 * WHERE), each body parsed once with tally's own codec (SQLite's json_each over a million bodies
 * costs three times more), counts kept in hash tables; the store's counters and dead letters by
 * SQL. Only aggregates and a few example messages are kept: memory follows the number of distinct
 * names and ids (plus 16 bytes per event for the chart), and the page carries no raw events. */
#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "report.h"

/* Bounds on what a report lists; past them it says how much it left out. */
#define MAX_PROPS       20000
#define MAX_VIOLATIONS  1000
#define MAX_EXAMPLE     4096

void rep_problem(rep_data *d, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char **p = realloc(d->problems, (d->nproblems + 1) * sizeof *p);
    if (!p) return;
    d->problems = p;
    if ((p[d->nproblems] = strdup(buf))) d->nproblems++;
}

static char *dup_col(sqlite3_stmt *st, int col)
{
    const unsigned char *s = sqlite3_column_text(st, col);
    return strdup(s ? (const char *)s : "");
}

/* ---- a small string -> index map (open addressing) ---- */

typedef struct strmap {
    char  **keys;
    size_t *idx, cap, n;
} strmap;

static uint64_t fnv(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* The index stored for key (len bytes, may hold NUL), or -1; with add, inserts next_idx. */
static long strmap_get(strmap *m, const char *key, size_t len, int add, size_t next_idx)
{
    if (add && (m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        char **keys = calloc(cap, sizeof *keys);
        size_t *idx = calloc(cap, sizeof *idx);
        if (!keys || !idx) { free(keys); free(idx); return -1; }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->keys[i]) continue;
            size_t kl = ((size_t *)(void *)m->keys[i])[0];
            size_t j = fnv(m->keys[i] + sizeof(size_t), kl) & (cap - 1);
            while (keys[j]) j = (j + 1) & (cap - 1);
            keys[j] = m->keys[i];
            idx[j] = m->idx[i];
        }
        free(m->keys);
        free(m->idx);
        m->keys = keys, m->idx = idx, m->cap = cap;
    }
    if (!m->cap) return -1;
    size_t j = fnv(key, len) & (m->cap - 1);
    while (m->keys[j]) {
        size_t kl = ((size_t *)(void *)m->keys[j])[0];
        if (kl == len && !memcmp(m->keys[j] + sizeof(size_t), key, len)) return (long)m->idx[j];
        j = (j + 1) & (m->cap - 1);
    }
    if (!add) return -1;
    char *k = malloc(sizeof(size_t) + len + 1); /* length prefix, then the bytes */
    if (!k) return -1;
    memcpy(k, &len, sizeof len);
    memcpy(k + sizeof(size_t), key, len);
    k[sizeof(size_t) + len] = '\0';
    m->keys[j] = k;
    m->idx[j] = next_idx;
    m->n++;
    return (long)next_idx;
}

static void strmap_free(strmap *m)
{
    for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
    free(m->keys);
    free(m->idx);
}

/* ---- the pass ---- */

typedef struct stamp { char first[32], last[32]; } stamp;   /* per event: ISO text, compared as text */
typedef struct tick { double jd; uint32_t ev; } tick;        /* one per timed event, for the chart */
typedef struct span { int64_t n; double lo, hi; } span;      /* one per session */

typedef struct pass {
    rep_data *d;
    strmap    names, props, codes, users, anons, sessions;
    size_t    events_cap, props_cap, viol_cap, anons_cap, sessions_cap, ticks_cap, nticks;
    stamp    *stamps;
    tick     *ticks;
    char     *identified;    /* per anonymous id: seen with a userId */
    span     *spans;
    double    lo, hi;
    int64_t   untimed, props_left_out;
    tbuf      label, key;    /* scratch: "type\x1fname" and "type\x1fname\0key" */
    int       oom;
} pass;

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap) return 0;
    size_t c = *cap ? *cap * 2 : 64;
    void *q = realloc(*p, c * size);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static long event_index(pass *P, const char *type, const char *name)
{
    tbuf_reset(&P->label);
    tbuf_puts(&P->label, type);
    tbuf_putc(&P->label, '\x1f');
    tbuf_puts(&P->label, name);
    if (P->label.oom) return -1;
    const char *label = P->label.data;
    size_t len = P->label.len;
    long at = strmap_get(&P->names, label, len, 0, 0);
    if (at >= 0) return at;
    rep_data *d = P->d;
    size_t cap = P->events_cap;
    if (grow((void **)&d->events, &P->events_cap, d->nevents, sizeof *d->events) ||
        grow((void **)&P->stamps, &cap, d->nevents, sizeof *P->stamps))
        return -1;
    at = strmap_get(&P->names, label, len, 1, d->nevents);
    if (at < 0) return -1;
    rep_event *e = &d->events[d->nevents];
    memset(e, 0, sizeof *e);
    memset(&P->stamps[d->nevents], 0, sizeof *P->stamps);
    e->type = strdup(type);
    e->name = strdup(name);
    d->nevents++;
    return at;
}

static void count_ids(pass *P, const char *user, const char *anon, const char *session, double jd, int timed)
{
    if (user && strmap_get(&P->users, user, strlen(user), 1, P->users.n) < 0) P->oom = 1;
    if (anon) {
        size_t before = P->anons.n;
        long i = strmap_get(&P->anons, anon, strlen(anon), 1, before);
        if (i < 0 || grow((void **)&P->identified, &P->anons_cap, (size_t)i, 1)) { P->oom = 1; return; }
        if (P->anons.n != before) P->identified[i] = 0;
        if (user) P->identified[i] = 1;
    }
    if (session) {
        size_t before = P->sessions.n;
        long i = strmap_get(&P->sessions, session, strlen(session), 1, before);
        if (i < 0 || grow((void **)&P->spans, &P->sessions_cap, (size_t)i, sizeof *P->spans)) { P->oom = 1; return; }
        span *s = &P->spans[i];
        if (P->sessions.n != before) s->n = 0, s->lo = 1e300, s->hi = -1e300;
        s->n++;
        if (timed) {
            if (jd < s->lo) s->lo = jd;
            if (jd > s->hi) s->hi = jd;
        }
    }
}

static int json_kind(const tj_value *v)
{
    switch (v->type) {
    case TJ_STRING: return RT_STRING;
    case TJ_TRUE: case TJ_FALSE: return RT_BOOLEAN;
    case TJ_NULL: return RT_NULL;
    case TJ_OBJECT: return RT_OBJECT;
    case TJ_ARRAY: return RT_ARRAY;
    default: return RT_NUMBER; /* integers, decimals and numbers kept as their text */
    }
}

static void add_props(pass *P, const char *label, size_t ll, const tj_value *payload)
{
    rep_data *d = P->d;
    for (size_t i = 0; i < payload->u.obj.n; i++) {
        const tj_member *m = &payload->u.obj.m[i];
        size_t kl = strlen(m->key);
        tbuf_reset(&P->key);
        tbuf_append(&P->key, label, ll);
        tbuf_putc(&P->key, '\0'); /* "label\0key": no label or key can be mistaken for another */
        tbuf_append(&P->key, m->key, kl);
        if (P->key.oom) { P->oom = 1; return; }
        const char *key = P->key.data;
        long at = strmap_get(&P->props, key, ll + 1 + kl, 0, 0);
        if (at < 0) {
            if (d->nprops >= MAX_PROPS) { P->props_left_out++; continue; }
            if (grow((void **)&d->props, &P->props_cap, d->nprops, sizeof *d->props) ||
                (at = strmap_get(&P->props, key, ll + 1 + kl, 1, d->nprops)) < 0) {
                P->oom = 1;
                return;
            }
            rep_prop *p = &d->props[d->nprops++];
            memset(p, 0, sizeof *p);
            p->event = strndup(label, ll);
            p->key = strdup(m->key);
        }
        d->props[at].n[json_kind(m->val)]++;
    }
}

static const char *str_of(const tj_value *v, const char *key)
{
    const tj_value *s = v->type == TJ_OBJECT ? tj_object_get(v, key) : NULL;
    return s && s->type == TJ_STRING ? s->u.str.s : "";
}

static void add_violations(pass *P, const tj_value *list, const char *body, size_t blen)
{
    rep_data *d = P->d;
    if (!list || list->type != TJ_ARRAY || !list->u.arr.n) return;
    d->messages_with_violations++;
    for (size_t i = 0; i < list->u.arr.n; i++) {
        const tj_value *v = list->u.arr.items[i];
        const char *code = str_of(v, "type");
        if (!*code) code = "(no type)";
        d->violations_total++;
        size_t cl = strlen(code);
        long at = strmap_get(&P->codes, code, cl, 0, 0);
        if (at < 0) {
            if (d->nviolations >= MAX_VIOLATIONS) continue;
            if (grow((void **)&d->violations, &P->viol_cap, d->nviolations, sizeof *d->violations) ||
                (at = strmap_get(&P->codes, code, cl, 1, d->nviolations)) < 0) {
                P->oom = 1;
                return;
            }
            rep_violation *r = &d->violations[d->nviolations++];
            memset(r, 0, sizeof *r);
            r->code = strdup(code);
            r->field = strdup(str_of(v, "field"));
            r->example_text = strdup(str_of(v, "description"));
            r->example_msg = strndup(body, blen < MAX_EXAMPLE ? blen : MAX_EXAMPLE);
        }
        d->violations[at].n++;
    }
}

static void take_row(pass *P, sqlite3_stmt *st, tj_arena *a)
{
    rep_data *d = P->d;
    const char *type = (const char *)sqlite3_column_text(st, 1), *name = (const char *)sqlite3_column_text(st, 2);
    const char *ts = (const char *)sqlite3_column_text(st, 3);
    long ev = event_index(P, type ? type : "", name ? name : "");
    if (ev < 0) { P->oom = 1; return; }
    rep_event *e = &d->events[ev];
    e->n++;
    d->total++;
    int t = msg_type_from(e->type, strlen(e->type));
    if (t >= 0) d->by_type[t]++;
    else d->other_type++;
    if (ts && strlen(ts) < sizeof P->stamps->first) {
        stamp *s = &P->stamps[ev];
        if (!*s->first || strcmp(ts, s->first) < 0) strcpy(s->first, ts);
        if (strcmp(ts, s->last) > 0) strcpy(s->last, ts);
    }
    int timed = sqlite3_column_type(st, 4) != SQLITE_NULL;
    double jd = timed ? sqlite3_column_double(st, 4) : 0;
    if (timed) {
        if (grow((void **)&P->ticks, &P->ticks_cap, P->nticks, sizeof *P->ticks)) { P->oom = 1; return; }
        P->ticks[P->nticks++] = (tick){jd, (uint32_t)ev};
        if (jd < P->lo) P->lo = jd;
        if (jd > P->hi) P->hi = jd;
    } else {
        P->untimed++;
    }
    count_ids(P, (const char *)sqlite3_column_text(st, 5), (const char *)sqlite3_column_text(st, 6),
              (const char *)sqlite3_column_text(st, 7), jd, timed);

    const char *body = (const char *)sqlite3_column_text(st, 8);
    size_t blen = (size_t)sqlite3_column_bytes(st, 8);
    tj_value *m;
    tj_error je;
    tj_arena_reset(a);
    if (!body || tj_parse(a, body, blen, &m, &je) || m->type != TJ_OBJECT) {
        if (!d->unreadable++) d->unreadable_example = sqlite3_column_int64(st, 0);
        return;
    }
    tbuf_reset(&P->label);
    tbuf_puts(&P->label, e->type);
    tbuf_putc(&P->label, '\x1f');
    tbuf_puts(&P->label, e->name);
    const tj_value *payload = tj_object_get(m, "properties");
    if (!payload || payload->type != TJ_OBJECT) payload = tj_object_get(m, "traits");
    if (payload && payload->type == TJ_OBJECT) add_props(P, P->label.data, P->label.len, payload);
    const tj_value *ctx = tj_object_get(m, "context"), *prot = ctx ? tj_object_get(ctx, "protocols") : NULL;
    if (prot) add_violations(P, tj_object_get(prot, "violations"), body, blen);
}

static double epoch_of(double jd) { return (jd - 2440587.5) * 86400.0; }

static char *iso_of(double jd)
{
    char buf[32];
    time_t t = (time_t)floor(epoch_of(jd));
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return strdup(buf);
}

static const rep_data *sort_d;
static int cmp_rank(const void *a, const void *b)
{
    const rep_event *x = &sort_d->events[*(const size_t *)a], *y = &sort_d->events[*(const size_t *)b];
    if (x->n != y->n) return x->n < y->n ? 1 : -1;
    int c = strcmp(x->type, y->type);
    return c ? c : strcmp(x->name, y->name);
}

/* Most frequent first; ticks keep pointing at the same events through `rank`. */
static int order_events(pass *P)
{
    rep_data *d = P->d;
    size_t n = d->nevents, *order = malloc((n ? n : 1) * sizeof *order);
    uint32_t *rank = malloc((n ? n : 1) * sizeof *rank);
    rep_event *sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!order || !rank || !sorted) { free(order), free(rank), free(sorted); return -1; }
    for (size_t i = 0; i < n; i++) order[i] = i;
    sort_d = d;
    qsort(order, n, sizeof *order, cmp_rank);
    for (size_t i = 0; i < n; i++) {
        sorted[i] = d->events[order[i]];
        sorted[i].first = strdup(P->stamps[order[i]].first);
        sorted[i].last = strdup(P->stamps[order[i]].last);
        rank[order[i]] = (uint32_t)i;
    }
    free(d->events);
    d->events = sorted;
    for (size_t i = 0; i < P->nticks; i++) P->ticks[i].ev = rank[P->ticks[i].ev];
    free(order);
    free(rank);
    return 0;
}

static void make_volume(pass *P)
{
    rep_data *d = P->d;
    if (!P->nticks) return;
    d->first_ts = iso_of(P->lo);
    d->last_ts = iso_of(P->hi);
    /* a bucket size that gives at most 60 bars: readable on a phone, detailed on a desk */
    static const int64_t steps[] = {1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400};
    double span_s = (P->hi - P->lo) * 86400.0;
    size_t k = 0;
    while (k + 1 < sizeof steps / sizeof *steps && span_s / (double)steps[k] >= 60) k++;
    d->bucket_s = steps[k];
    /* buckets start on a multiple of the step (UTC), so a day bar is a calendar day */
    d->volume_start = (int64_t)floor(epoch_of(P->lo) / (double)d->bucket_s) * d->bucket_s;
    d->nbuckets = (int64_t)((epoch_of(P->hi) - (double)d->volume_start) / (double)d->bucket_s) + 1;
    if (d->nbuckets > 400) d->nbuckets = 400; /* only with the largest step: later events go to the last bar */
    d->nseries = d->nevents < REP_TOP_SERIES ? (int)d->nevents : REP_TOP_SERIES;
    if (!(d->volume = calloc((size_t)d->nbuckets * (REP_TOP_SERIES + 1), sizeof *d->volume))) return;
    for (size_t i = 0; i < P->nticks; i++) {
        int64_t b = (int64_t)((epoch_of(P->ticks[i].jd) - (double)d->volume_start) / (double)d->bucket_s);
        if (b < 0) b = 0;
        if (b >= d->nbuckets) b = d->nbuckets - 1;
        int s = P->ticks[i].ev < (uint32_t)d->nseries ? (int)P->ticks[i].ev : REP_TOP_SERIES;
        d->volume[b * (REP_TOP_SERIES + 1) + s]++;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void make_identity(pass *P)
{
    rep_data *d = P->d;
    d->users = (int64_t)P->users.n;
    d->anonymous_ids = (int64_t)P->anons.n;
    for (size_t i = 0; i < P->anons.n; i++) d->anonymous_only += !P->identified[i];
    d->sessions = (int64_t)P->sessions.n;
    if (!P->sessions.n) return;
    double *secs = malloc(P->sessions.n * sizeof *secs);
    size_t n = 0;
    int64_t events = 0;
    for (size_t i = 0; i < P->sessions.n; i++) {
        events += P->spans[i].n;
        if (P->spans[i].hi < P->spans[i].lo || !secs) continue;
        double s = (P->spans[i].hi - P->spans[i].lo) * 86400.0;
        secs[n++] = s;
        d->session_bins[s < 60 ? 0 : s < 300 ? 1 : s < 1800 ? 2 : s < 7200 ? 3 : 4]++;
    }
    d->events_per_session = (double)events / (double)P->sessions.n;
    if (n) {
        qsort(secs, n, sizeof *secs, cmp_double);
        d->session_median_s = secs[n / 2];
        d->session_p90_s = secs[n * 9 / 10];
    }
    free(secs);
}

static int cmp_violation(const void *a, const void *b)
{
    const rep_violation *x = a, *y = b;
    return x->n != y->n ? (x->n < y->n ? 1 : -1) : strcmp(x->code, y->code);
}

static int cmp_prop(const void *a, const void *b)
{
    const rep_prop *x = a, *y = b;
    int c = strcmp(x->event, y->event);
    return c ? c : strcmp(x->key, y->key);
}

/* One scan: SQLite's GROUP BY sorts, and the five groupings a report needs (names, times, users,
 * anonymous ids, sessions) sorted a million rows five times over, ~9 s of CPU; hash tables over
 * the same scan that parses the bodies take a third of that. */
static void read_pass(rep_data *d, sqlite3 *db)
{
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT id, coalesce(type, ''), coalesce(event, name, ''), timestamp, julianday(timestamp),"
                              " user_id, anonymous_id, session_id, body FROM events%s",
             d->since ? " WHERE timestamp >= ?1" : "");
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        rep_problem(d, "could not read the events: %s", sqlite3_errmsg(db));
        return;
    }
    if (d->since) sqlite3_bind_text(st, 1, d->since, -1, SQLITE_STATIC);
    pass P;
    memset(&P, 0, sizeof P);
    P.d = d;
    P.lo = 1e300, P.hi = -1e300;
    tj_arena *a = tj_arena_new();
    int rc = SQLITE_DONE;
    while (a && !P.oom && (rc = sqlite3_step(st)) == SQLITE_ROW) take_row(&P, st, a);
    if (!a || P.oom) rep_problem(d, "out of memory after %lld events: the report covers those", (long long)d->total);
    else if (rc != SQLITE_DONE)
        rep_problem(d, "stopped reading after %lld events: %s", (long long)d->total, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    tj_arena_free(a);
    if (P.untimed)
        rep_problem(d, "%lld %s no readable timestamp: counted, but not in the volume chart", (long long)P.untimed,
                    P.untimed == 1 ? "event has" : "events have");
    if (d->unreadable)
        rep_problem(d, "%lld %s a body that is not a JSON object (first: row id %lld): counted in the totals,"
                       " not in properties or violations", (long long)d->unreadable,
                    d->unreadable == 1 ? "row has" : "rows have", (long long)d->unreadable_example);
    if (P.props_left_out)
        rep_problem(d, "more than %d distinct event properties: %lld values of further ones are not listed", MAX_PROPS,
                    (long long)P.props_left_out);
    if (order_events(&P)) rep_problem(d, "out of memory sorting the events");
    else make_volume(&P);
    make_identity(&P);
    if (d->nprops) qsort(d->props, d->nprops, sizeof *d->props, cmp_prop);
    if (d->nviolations) qsort(d->violations, d->nviolations, sizeof *d->violations, cmp_violation);
    strmap *maps[] = {&P.names, &P.props, &P.codes, &P.users, &P.anons, &P.sessions};
    for (size_t i = 0; i < sizeof maps / sizeof *maps; i++) strmap_free(maps[i]);
    free(P.stamps), free(P.ticks), free(P.identified), free(P.spans);
    tbuf_free(&P.label), tbuf_free(&P.key);
}

/* ---- opening ---- */

static const char events_schema[] =
    "CREATE TABLE events(id INTEGER PRIMARY KEY, message_id TEXT, type TEXT, event TEXT, name TEXT,"
    " user_id TEXT, anonymous_id TEXT, session_id TEXT, timestamp TEXT, received_at TEXT, body TEXT)";

/* NDJSON (a file destination's output): loaded into an in-memory events table like the sqlite
 * destination's, so the same queries read both. A line that is not JSON is kept as an unreadable row. */
static sqlite3 *load_ndjson(rep_data *d, char *err, size_t errlen)
{
    FILE *in = fopen(d->events_path, "r");
    if (!in) {
        snprintf(err, errlen, "%s: %s", d->events_path, strerror(errno));
        return NULL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *good = NULL, *bad = NULL;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK || sqlite3_exec(db, events_schema, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO events(type, event, name, user_id, anonymous_id, session_id, timestamp, body)"
                               " VALUES (json_extract(?1, '$.type'), json_extract(?1, '$.event'), json_extract(?1, '$.name'),"
                               " json_extract(?1, '$.userId'), json_extract(?1, '$.anonymousId'),"
                               " json_extract(?1, '$.context.session.id'), json_extract(?1, '$.timestamp'), ?1)",
                           -1, &good, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO events(body) VALUES (?1)", -1, &bad, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot load: %s", d->events_path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_finalize(good);
        sqlite3_close(db);
        fclose(in);
        return NULL;
    }
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        tj_error je;
        int ok = tj_validate(line, (size_t)n, &je) == 0 && line[strspn(line, " \t")] == '{';
        sqlite3_stmt *st = ok ? good : bad;
        sqlite3_bind_text(st, 1, line, (int)n, SQLITE_TRANSIENT);
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    free(line);
    fclose(in);
    sqlite3_finalize(good);
    sqlite3_finalize(bad);
    return db;
}

static sqlite3 *open_db(const char *path, const char *kind, const char *lacks, const char *probe, char *err, size_t errlen)
{
    if (access(path, R_OK) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0) {
        snprintf(err, errlen, "%s: empty file, not a tally %s", path, kind);
        return NULL;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot open: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 2000); /* the owner may be writing: WAL readers never wait long */
    if (sqlite3_prepare_v2(db, probe, -1, &st, NULL) != SQLITE_OK) {
        int code = sqlite3_errcode(db);
        if (code == SQLITE_NOTADB) snprintf(err, errlen, "%s: not an SQLite database", path);
        else snprintf(err, errlen, "%s: not a tally %s: %s (%s)", path, kind, lacks, sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_finalize(st);
    return db;
}

int rep_read_events(rep_data *d, int ndjson, char *err, size_t errlen)
{
    sqlite3 *db = ndjson ? load_ndjson(d, err, errlen)
                         : open_db(d->events_path, "events database", "it has no events table with the sqlite destination's columns",
                                   "SELECT id, type, event, name, user_id, anonymous_id, session_id, timestamp, body"
                                   " FROM events LIMIT 0", err, errlen);
    if (!db) return -1;
    d->have_events = 1;
    read_pass(d, db);
    sqlite3_close(db);
    return 0;
}

/* ---- the store ---- */

static void read_dest(sqlite3 *db, rep_dest *r, int id)
{
    static const char *const qs[] = {
        "SELECT coalesce(sum(n), 0) FROM queue WHERE dest = ?1",
        "SELECT count(*) FROM dead WHERE dest = ?1",
    };
    int64_t *out[] = {&r->queued, &r->dead};
    sqlite3_stmt *st;
    for (int i = 0; i < 2; i++) {
        if (sqlite3_prepare_v2(db, qs[i], -1, &st, NULL) != SQLITE_OK) continue;
        sqlite3_bind_int(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW) *out[i] = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    if (sqlite3_prepare_v2(db, "SELECT name, value FROM counters WHERE dest = ?1", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int(st, 1, id);
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *n = (const char *)sqlite3_column_text(st, 0);
            int64_t v = sqlite3_column_int64(st, 1);
            if (!n) continue;
            if (!strcmp(n, "delivered")) r->delivered = v;
            else if (!strcmp(n, "retried")) r->retried = v;
            else if (!strcmp(n, "dropped")) r->dropped = v;
            else if (!strcmp(n, "purged") || !strcmp(n, "consent_purged")) r->purged += v;
        }
        sqlite3_finalize(st);
    }
    if (sqlite3_prepare_v2(db, "SELECT coalesce(reason, ''), coalesce(status, 0), count(*) FROM dead WHERE dest = ?1"
                               " GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT 10", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int(st, 1, id);
        while (sqlite3_step(st) == SQLITE_ROW) {
            rep_dead_reason *p = realloc(r->reasons, (r->nreasons + 1) * sizeof *p);
            if (!p) break;
            r->reasons = p;
            p[r->nreasons].reason = dup_col(st, 0);
            p[r->nreasons].status = sqlite3_column_int(st, 1);
            p[r->nreasons++].n = sqlite3_column_int64(st, 2);
        }
        sqlite3_finalize(st);
    }
}

int rep_read_store(rep_data *d, char *err, size_t errlen)
{
    sqlite3 *db = open_db(d->store_path, "store", "it has no dests, queue, dead and counters tables",
                          "SELECT d.id, d.name, (SELECT count(*) FROM queue), (SELECT count(*) FROM dead),"
                          " (SELECT count(*) FROM counters) FROM dests d LIMIT 0", err, errlen);
    if (!db) return -1;
    d->have_store = 1;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT id, name FROM dests ORDER BY id", -1, &st, NULL) == SQLITE_OK) {
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            rep_dest *p = realloc(d->dests, (d->ndests + 1) * sizeof *p);
            if (!p) break;
            d->dests = p;
            p = &p[d->ndests++];
            memset(p, 0, sizeof *p);
            p->name = dup_col(st, 1);
            read_dest(db, p, sqlite3_column_int(st, 0));
        }
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) rep_problem(d, "store: stopped reading: %s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return 0;
}

/* ---- naming ---- */

static int is_word_byte(unsigned char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80; }
static int up(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static int low(unsigned char c) { return c >= 'a' && c <= 'z'; }
static int dig(unsigned char c) { return c >= '0' && c <= '9'; }

/* Words the way tally.naming splits them: on anything not a letter or digit, and at camelCase
 * boundaries (buttonName, HTMLParser, step2Done); bytes >= 0x80 are letters. */
int rep_follows_style(const char *name, const char *style, char *out, size_t outlen)
{
    char sep = !strcmp(style, "snake") ? '_' : ' ';
    int title = !strcmp(style, "title");
    size_t o = 0, n = strlen(name);
    int words = 0;
    for (size_t i = 0; i < n && o + 2 < outlen;) {
        if (!is_word_byte((unsigned char)name[i])) { i++; continue; }
        if (words++) out[o++] = sep;
        int first = 1;
        size_t j = i;
        while (j < n && is_word_byte((unsigned char)name[j]) && o + 2 < outlen) {
            unsigned char c = (unsigned char)name[j];
            if (!first) {
                unsigned char p = (unsigned char)name[j - 1], nx = j + 1 < n ? (unsigned char)name[j + 1] : 0;
                if ((low(p) && up(c)) || (dig(p) && up(c)) || (up(p) && up(c) && low(nx))) break;
            }
            out[o++] = (char)(title && first ? (low(c) ? c - 32 : c) : (up(c) ? c + 32 : c));
            first = 0;
            j++;
        }
        i = j;
    }
    out[o] = '\0';
    return !strcmp(out, name);
}

void rep_free(rep_data *d)
{
    for (size_t i = 0; i < d->nproblems; i++) free(d->problems[i]);
    free(d->problems);
    for (size_t i = 0; i < d->nevents; i++) {
        free(d->events[i].type), free(d->events[i].name), free(d->events[i].first), free(d->events[i].last);
    }
    free(d->events);
    free(d->first_ts), free(d->last_ts), free(d->volume);
    for (size_t i = 0; i < d->nprops; i++) free(d->props[i].event), free(d->props[i].key);
    free(d->props);
    for (size_t i = 0; i < d->nviolations; i++) {
        rep_violation *v = &d->violations[i];
        free(v->code), free(v->field), free(v->example_text), free(v->example_msg);
    }
    free(d->violations);
    for (size_t i = 0; i < d->nplanned; i++) free(d->planned[i]);
    free(d->planned);
    for (size_t i = 0; i < d->ndests; i++) {
        for (size_t k = 0; k < d->dests[i].nreasons; k++) free(d->dests[i].reasons[k].reason);
        free(d->dests[i].reasons);
        free(d->dests[i].name);
    }
    free(d->dests);
    memset(d, 0, sizeof *d);
}
