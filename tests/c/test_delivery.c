/* HTTP delivery end to end: tally -> the segment destination -> tests/e2e/collector.py.
 * Every wait is on an observable condition (tally_flush with a timeout, the collector's counts,
 * tally_stats); nothing sleeps in place of synchronisation. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "collector.h"
#include "harness.h"
#include "jfields.h"
#include "json.h"
#include "tally.h"
#include "util.h"

#define KEY "wk_test_SECRET_9f8e7d6c"
#define KEY_BASIC "d2tfdGVzdF9TRUNSRVRfOWY4ZTdkNmM6" /* base64(KEY ":"), the Authorization header */
#define SEGMENT_MAX_BATCH (500 * 1024) /* Segment's documented limit for one batch request */

/* ---- opening a handle ---- */

/* Before any thread starts: a TALLY_WRITE_KEY in the environment would add a destination at
 * api.segment.io to every handle, and a proxy would stand between tally and the collector. */
__attribute__((constructor)) static void clean_environment(void)
{
    static const char *const vars[] = {"TALLY_WRITE_KEY", "TALLY_ENDPOINT", "http_proxy", "HTTP_PROXY",
                                       "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", NULL};
    for (int i = 0; vars[i]; i++) unsetenv(vars[i]);
}

/* A handle with a segment destination at the collector (when c is given). Extra key/value pairs
 * end with NULL and override the defaults set here: batches go out only when full or flushed, so
 * request counts are deterministic. */
static tally_t *vopen(collector *c, const char *store, tally_log_fn logfn, void *logud, va_list ap)
{
    tally_config *cfg = tally_config_new();
    if (!cfg) return NULL;
    int ok = 1;
    if (c) {
        ok &= tally_config_set(cfg, "write_key", KEY) == TALLY_OK;
        ok &= tally_config_set(cfg, "endpoint", collector_url(c)) == TALLY_OK;
    }
    ok &= tally_config_set(cfg, "log_level", "off") == TALLY_OK;
    ok &= tally_config_set(cfg, "flush_interval_ms", "60000") == TALLY_OK;
    ok &= tally_config_set(cfg, "store", store ? store : ":memory:") == TALLY_OK;
    const char *k;
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        if (tally_config_set(cfg, k, v) != TALLY_OK) {
            fprintf(stderr, "  config %s=%s: %s\n", k, v, tally_errmsg(NULL));
            ok = 0;
        }
    }
    if (logfn) tally_config_set_logger(cfg, logfn, logud);
    tally_t *t = NULL;
    if (ok && tally_open(cfg, &t) != TALLY_OK) fprintf(stderr, "  tally_open: %s\n", tally_errmsg(NULL));
    tally_config_free(cfg);
    return t;
}

static tally_t *open_http(collector *c, const char *store, ...)
{
    va_list ap;
    va_start(ap, store);
    tally_t *t = vopen(c, store, NULL, NULL, ap);
    va_end(ap);
    return t;
}

static tally_t *open_http_logged(collector *c, tally_log_fn fn, void *ud, ...)
{
    va_list ap;
    va_start(ap, ud);
    tally_t *t = vopen(c, NULL, fn, ud, ap);
    va_end(ap);
    return t;
}

/* Tracks n events "Seq Event" with properties {"seq":first+i,"name":"item-<seq>"[,"pad":"xxx"]}. */
static int track_seq(tally_t *t, int first, int n, size_t pad)
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

/* ---- reading what the collector recorded ---- */

typedef struct received {
    tj_arena *a;
    tj_value *root;
    tj_value *reqs; /* array of request records, in arrival order */
} received;

static int received_load(collector *c, received *r)
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

static void received_free(received *r) { tj_arena_free(r->a); }


static int jtrue(const tj_value *o, const char *key)
{
    const tj_value *v = tj_object_get(o, key);
    return v && v->type == TJ_TRUE;
}

static tj_value *req_at(const received *r, size_t i) { return i < r->reqs->u.arr.n ? r->reqs->u.arr.items[i] : NULL; }
static size_t nreqs(const received *r) { return r->reqs->u.arr.n; }

static size_t req_nmsgs(const tj_value *req)
{
    const tj_value *m = tj_object_get(req, "messages");
    return m && m->type == TJ_ARRAY ? m->u.arr.n : 0;
}

static const tj_value *req_msg(const tj_value *req, size_t i)
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
static int check_sequence(const received *r, int first, int n, size_t pad, int in_order)
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

static int check_exact_sequence(const received *r, int first, int n, size_t pad)
{
    return check_sequence(r, first, n, pad, 0);
}

/* ---- tally_stats ---- */

/* ---- log capture ---- */

typedef struct logcap {
    pthread_mutex_t mu;
    tbuf            text;
    int             lines;
} logcap;

static void capture(void *ud, int level, const char *msg)
{
    logcap *lc = ud;
    pthread_mutex_lock(&lc->mu);
    tbuf_printf(&lc->text, "%d %s\n", level, msg);
    lc->lines++;
    pthread_mutex_unlock(&lc->mu);
}

/* =========================================================================================== */

/* 1000 messages at flush_at=50, all queued before the flush: twenty full batches, each message
 * once. With max_in_flight=1 the batches also arrive in the order tracked. */
static void deliver_1000(const char *in_flight)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, "flush_at", "50", "max_in_flight", in_flight, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 1000, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 30000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 1000);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), 0);
    CHECK_EQ_INT(tu_stat(t, "segment", "retried"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(check_sequence(&r, 0, 1000, 0, !strcmp(in_flight, "1")), 0);
        CHECK_EQ_INT(nreqs(&r), 20);
        for (size_t q = 0; q < nreqs(&r); q++) {
            CHECK_EQ_INT(req_nmsgs(req_at(&r, q)), 50);
            CHECK_STR(tu_jstr(req_at(&r, q), "path"), "/v1/batch");
            CHECK(tu_jstr(req_at(&r, q), "sent_at") != NULL);
        }
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(exact_delivery_of_1000) { deliver_1000("2"); }

TEST(one_batch_in_flight_delivers_batches_in_order) { deliver_1000("1"); }

static int read_dead(const char *path, int64_t *rows, int64_t *status_min, int64_t *status_max, char *reasons,
                     size_t rlen, int64_t *queued);

/* The seq of every dead letter of a store file, in the order they were written: "0,1,2". */
static int dead_seqs(const char *path, char *out, size_t len)
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

/* 20 messages at flush_at=10: two batches. The collector holds the first one 300 ms and answers
 * it with `status`; the second, sent meanwhile, is answered at once, so it is recorded first and
 * acknowledged before the first one's answer. A 500 is retried: every message arrives once, the
 * retry carries exactly the first batch. A 400 dead-letters the first batch's ten messages and
 * only those. Either way the store ends empty. */
static void overtaken(int status)
{
    int retried = status >= 500;
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char script[128];
    snprintf(script, sizeof script, "{\"script\":[{\"delay_ms\":300,\"status\":%d}]}", status);
    REQUIRE(collector_script(c, script) == 0);
    char *store = tu_path(retried ? "overtaken-retry.db" : "overtaken-dead.db");
    unlink(store);
    tally_t *t = open_http(c, store, "flush_at", "10", "retry_base_ms", "10", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 20, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), retried ? 20 : 10);
    CHECK_EQ_INT(tu_stat(t, "segment", "retried"), retried ? 10 : 0);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), retried ? 0 : 10);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(nreqs(&r), retried ? 3 : 2);
        if (nreqs(&r) >= 2) {
            /* the second batch travelled while the first was held: it arrived, and was answered, first */
            CHECK_EQ_INT(tu_jint(tj_object_get(req_msg(req_at(&r, 0), 0), "properties"), "seq"), 10);
            CHECK_EQ_INT(tu_jint(tj_object_get(req_msg(req_at(&r, 1), 0), "properties"), "seq"), 0);
            CHECK_EQ_INT(tu_jint(req_at(&r, 1), "status_returned"), status);
        }
        CHECK_EQ_INT(check_exact_sequence(&r, retried ? 0 : 10, retried ? 20 : 10, 0), 0);
    } else {
        CHECK(!"cannot read /received");
    }
    int64_t rows = -1, smin = -1, smax = -1, queued = -1;
    char reasons[1024] = "", seqs[256];
    CHECK_EQ_INT(read_dead(store, &rows, &smin, &smax, reasons, sizeof reasons, &queued), 0);
    CHECK_EQ_INT(rows, retried ? 0 : 10);
    CHECK_EQ_INT(queued, 0);
    CHECK_EQ_INT(dead_seqs(store, seqs, sizeof seqs), 0);
    CHECK_STR(seqs, retried ? "" : "0,1,2,3,4,5,6,7,8,9");
    received_free(&r);
    free(store);
    collector_stop(c);
}

TEST(a_batch_overtaken_and_retried_is_delivered_once) { overtaken(500); }

TEST(a_batch_overtaken_and_refused_dead_letters_only_its_own) { overtaken(400); }

/* Runs n messages of `pad` bytes of padding at flush_at=50 and checks every request's limits.
 * Returns the largest number of messages seen in one request. */
static size_t run_batch_limits(int n, size_t pad, int gzip)
{
    collector *c = collector_start(NULL);
    if (!c) { CHECK(!"collector did not start"); return 0; }
    tally_t *t = open_http(c, NULL, "flush_at", "50", "gzip", gzip ? "true" : "false", NULL);
    size_t most = 0;
    if (!t) { CHECK(!"open failed"); collector_stop(c); return 0; }
    CHECK_EQ_INT(track_seq(t, 0, n, pad), 0);
    CHECK_EQ_INT(tally_flush(t, 30000), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(check_exact_sequence(&r, 0, n, pad), 0);
        for (size_t q = 0; q < nreqs(&r); q++) {
            const tj_value *req = req_at(&r, q);
            size_t k = req_nmsgs(req);
            int64_t dec = tu_jint(req, "decoded_bytes"), raw = tu_jint(req, "raw_bytes");
            if (k > most) most = k;
            CHECK(k >= 1 && k <= 50);
            CHECK(dec > 0 && dec <= SEGMENT_MAX_BATCH);
            CHECK(raw > 0 && raw <= SEGMENT_MAX_BATCH);
            /* a batch closed by size: the next message would not have fitted under 500 KB (all
             * but the batch that ends the run, which may arrive before others: two are out at once) */
            int64_t end = tu_jint(tj_object_get(req_msg(req, k - 1), "properties"), "seq");
            if (end != n - 1 && k < 50) CHECK(dec + (int64_t)pad + 200 > 475 * 1024);
        }
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    collector_stop(c);
    return most;
}

TEST(batches_respect_flush_at_and_500kb)
{
    CHECK_EQ_INT(run_batch_limits(230, 0, 0), 50);
    /* ~20 KB messages: the size limit closes batches long before 50 messages */
    size_t most = run_batch_limits(100, 20000, 0);
    CHECK(most > 10 && most < 50);
    /* messages near the 32 KB maximum */
    most = run_batch_limits(40, 31500, 0);
    CHECK(most > 5 && most < 50);
    /* gzip compresses the padding to almost nothing: the limit is on the JSON, not the wire */
    most = run_batch_limits(60, 20000, 1);
    CHECK(most > 10 && most < 50);
}

TEST(gzip_bodies_are_encoded_and_intact)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, "gzip", "true", "flush_at", "100", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 250, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 30000), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 250, 0), 0);
        CHECK_EQ_INT(nreqs(&r), 3);
        for (size_t q = 0; q < nreqs(&r); q++) {
            const tj_value *req = req_at(&r, q);
            CHECK_STR(tu_jstr(req, "content_encoding"), "gzip");
            CHECK(tu_jstr(req, "error") == NULL);
            CHECK(tu_jint(req, "decoded_bytes") > tu_jint(req, "raw_bytes"));
            CHECK(tu_jint(req, "raw_bytes") > 0);
        }
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(plain_bodies_have_no_content_encoding)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 5, 0), 0);
    CHECK_EQ_INT(tally_close(t, 10000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0 && nreqs(&r) == 1) {
        const tj_value *req = req_at(&r, 0);
        CHECK(tu_jstr(req, "content_encoding") == NULL);
        CHECK_EQ_INT(tu_jint(req, "decoded_bytes"), tu_jint(req, "raw_bytes"));
    } else {
        CHECK(!"expected exactly one request");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(basic_auth_user_agent_content_type)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 3, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0 && nreqs(&r) >= 1) {
        const tj_value *req = req_at(&r, 0);
        CHECK_STR(tu_jstr(req, "auth_user"), KEY);
        CHECK_STR(tu_jstr(req, "auth_password"), "");
        const char *ua = tu_jstr(req, "user_agent");
        CHECK(ua && strncmp(ua, "tally/", 6) == 0);
        CHECK_CONTAINS(ua, TALLY_VERSION);
        CHECK_STR(tu_jstr(req, "content_type"), "application/json");
        const tj_value *h = tj_object_get(req, "headers");
        CHECK(tj_object_get(h, "expect") == NULL); /* no 100-continue round trip */
        const char *auth = tu_jstr(h, "authorization");
        CHECK(auth && strncmp(auth, "Basic ", 6) == 0);
    } else {
        CHECK(!"no request recorded");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(per_destination_write_key_and_gzip_override)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char dests[512];
    snprintf(dests, sizeof dests,
             "[{\"type\":\"segment\",\"name\":\"own\",\"endpoint\":\"%s/\",\"write_key\":\"other-key\",\"gzip\":true}]",
             collector_url(c));
    tally_t *t = open_http(NULL, NULL, "destinations", dests, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 4, 0), 0);
    CHECK_EQ_INT(tally_close(t, 10000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0 && nreqs(&r) == 1) {
        const tj_value *req = req_at(&r, 0);
        CHECK_STR(tu_jstr(req, "auth_user"), "other-key");
        CHECK_STR(tu_jstr(req, "content_encoding"), "gzip");
        CHECK_STR(tu_jstr(req, "path"), "/v1/batch"); /* trailing slash of the endpoint dropped */
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 4, 0), 0);
    } else {
        CHECK(!"expected exactly one request");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(server_errors_are_retried_then_delivered_once_in_order)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"script\":[{\"status\":500},{\"status\":500},{\"status\":500}]}") == 0);
    tally_t *t = open_http(c, NULL, "retry_base_ms", "10", "flush_at", "100", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 40, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 40);
    CHECK_EQ_INT(tu_stat(t, "segment", "retried"), 3 * 40);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(nreqs(&r), 4);
        for (size_t q = 0; q < nreqs(&r) && q < 3; q++) CHECK_EQ_INT(tu_jint(req_at(&r, q), "status_returned"), 500);
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 40, 0), 0);
        /* a retry resends the same messages: same ids, same order */
        const tj_value *first = req_at(&r, 0), *last = req_at(&r, 3);
        CHECK_EQ_INT(req_nmsgs(first), req_nmsgs(last));
        for (size_t i = 0; first && last && i < req_nmsgs(first); i++)
            CHECK_STR(tu_jstr(req_msg(first, i), "messageId"), tu_jstr(req_msg(last, i), "messageId"));
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(network_faults_are_retried_without_loss)
{
    /* a reset mid-body, a truncated response after a 200 (stored, ack lost), a response slower
     * than timeout_ms (stored, ack lost): all three must be retried; the last two legitimately
     * duplicate, and the duplicate must carry the same messageId so the server can drop it. */
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"script\":[{\"reset\":true,\"read_bytes\":10},{\"close_mid_response\":true},"
                                "{\"delay_ms\":1500}]}") == 0);
    tally_t *t = open_http(c, NULL, "retry_base_ms", "10", "timeout_ms", "500", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 10, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 10);
    CHECK_EQ_INT(tu_stat(t, "segment", "retried"), 30);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    /* the collector records the delayed request only when its delay ends, after tally gave up */
    CHECK_EQ_INT(collector_wait_requests(c, 4, 10000), 0);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(nreqs(&r), 4);
        CHECK_EQ_INT(tu_jint(r.root, "unique_message_ids"), 10);
        CHECK_EQ_INT(tu_jint(r.root, "accepted_messages"), 30); /* 10 from each of the last three */
        CHECK_EQ_INT(tu_jint(r.root, "duplicates"), 20);
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(retry_after_is_honoured)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"script\":[{\"status\":429,\"retry_after\":\"1\"}]}") == 0);
    tally_t *t = open_http(c, NULL, "retry_base_ms", "10", "retry_cap_ms", "5000", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 10, 0), 0);
    long t0 = tu_mono_ms();
    CHECK_EQ_INT(tally_flush(t, 15000), TALLY_OK);
    long took = tu_mono_ms() - t0;
    CHECK(took >= 900);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0 && nreqs(&r) == 2) {
        double gap = tu_jnum(req_at(&r, 1), "time") - tu_jnum(req_at(&r, 0), "time");
        CHECK(gap >= 0.9);
        CHECK(gap < 3.0);
        CHECK_EQ_INT(tu_jint(req_at(&r, 0), "status_returned"), 429);
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 10, 0), 0);
    } else {
        CHECK(!"expected exactly two requests");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(retry_after_applies_only_to_its_own_response)
{
    /* 429 + Retry-After: 2, then a 500 without it: the second retry must use the short backoff,
     * not a Retry-After remembered from the earlier response on the reused handle. */
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"script\":[{\"status\":429,\"retry_after\":\"2\"},{\"status\":500}]}") == 0);
    tally_t *t = open_http(c, NULL, "retry_base_ms", "10", "retry_cap_ms", "5000", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 3, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 15000), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0 && nreqs(&r) == 3) {
        double gap1 = tu_jnum(req_at(&r, 1), "time") - tu_jnum(req_at(&r, 0), "time");
        double gap2 = tu_jnum(req_at(&r, 2), "time") - tu_jnum(req_at(&r, 1), "time");
        CHECK(gap1 >= 1.9 && gap1 < 4.0);
        CHECK(gap2 < 1.0); /* backoff for attempt 2 is at most 20 ms; a stale Retry-After would be 2 s */
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 3, 0), 0);
    } else {
        CHECK(!"expected exactly three requests");
    }
    received_free(&r);
    collector_stop(c);
}

/* Reads the dead-letter table of a store file: rows, min/max status, and every distinct reason. */
static int read_dead(const char *path, int64_t *rows, int64_t *status_min, int64_t *status_max, char *reasons,
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

TEST(retry_after_is_capped_by_retry_cap_ms)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"script\":[{\"status\":503,\"retry_after\":\"3600\"}]}") == 0);
    tally_t *t = open_http(c, NULL, "retry_base_ms", "10", "retry_cap_ms", "300", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 2, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(collector_requests(c), 2);
    CHECK_EQ_INT(collector_accepted(c), 2);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    collector_stop(c);
}

TEST(client_error_goes_to_dead_letters_without_retry)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":400}}") == 0);
    char *store = tu_path("dead400.db");
    unlink(store);
    tally_t *t = open_http(c, store, "retry_base_ms", "10", "flush_at", "100", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 25, 0), 0);
    /* dead-lettered counts as done for flush */
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), 25);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 0);
    CHECK_EQ_INT(tu_stat(t, "segment", "retried"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(collector_requests(c), 1);
    CHECK_EQ_INT(collector_accepted(c), 0);
    int64_t rows = -1, smin = -1, smax = -1, queued = -1;
    char reasons[1024] = "";
    CHECK_EQ_INT(read_dead(store, &rows, &smin, &smax, reasons, sizeof reasons, &queued), 0);
    CHECK_EQ_INT(rows, 25);
    CHECK_EQ_INT(smin, 400);
    CHECK_EQ_INT(smax, 400);
    CHECK_CONTAINS(reasons, "HTTP 400");
    CHECK_EQ_INT(queued, 0);
    free(store);
    collector_stop(c);
}

TEST(retries_exhausted_go_to_dead_letters)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":503}}") == 0);
    char *store = tu_path("dead503.db");
    unlink(store);
    tally_t *t = open_http(c, store, "retry_base_ms", "5", "retry_cap_ms", "20", "max_retries", "2", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 7, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), 7);
    CHECK_EQ_INT(tu_stat(t, "segment", "retried"), 14);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(collector_requests(c), 3); /* the first try and max_retries=2 retries */
    int64_t rows = -1, smin = -1, smax = -1, queued = -1;
    char reasons[1024] = "";
    CHECK_EQ_INT(read_dead(store, &rows, &smin, &smax, reasons, sizeof reasons, &queued), 0);
    CHECK_EQ_INT(rows, 7);
    CHECK_EQ_INT(smax, 503);
    CHECK_CONTAINS(reasons, "gave up after 2 retries");
    CHECK_CONTAINS(reasons, "HTTP 503");
    free(store);
    collector_stop(c);
}

TEST(collector_down_10s_then_up_loses_nothing)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, "max_retries", "1000", "retry_base_ms", "50", "retry_cap_ms", "1000",
                           "timeout_ms", "2000", "flush_at", "50", NULL);
    REQUIRE(t);
    /* the outage starts before anything is sent: no batch is in flight when connections are cut */
    REQUIRE(collector_script(c, "{\"down_ms\":10000}") == 0);
    long t0 = tu_mono_ms();
    CHECK_EQ_INT(track_seq(t, 0, 120, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 30000), TALLY_OK);
    long took = tu_mono_ms() - t0;
    CHECK(took >= 9000); /* delivered only once the collector was back */
    CHECK(tu_stat(t, "segment", "retried") > 0);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 120);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 120, 0), 0);
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    collector_stop(c);
}

/* Messages queued in a store file (a row holds a chunk of them). */
static int64_t count_queued(const char *path)
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

TEST(restart_with_a_non_empty_store_delivers_exactly_once)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":503}}") == 0);
    char *store = tu_path("restart.db");
    unlink(store);
    tally_t *t = open_http(c, store, "retry_base_ms", "10", "retry_cap_ms", "50", "max_retries", "1000", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 300, 0), 0);
    CHECK_EQ_INT(collector_wait_requests(c, 2, 10000), 0); /* it tried, and was refused */
    CHECK_EQ_INT(tally_close(t, 0), TALLY_ETIMEDOUT);
    CHECK_EQ_INT(collector_accepted(c), 0);
    CHECK_EQ_INT(count_queued(store), 300);

    collector_reset(c); /* healthy again: the default answer is 200 */
    t = open_http(c, store, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_flush(t, 15000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 300);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(count_queued(store), 0);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 300, 0), 0);
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);

    /* a third start has nothing left to send */
    collector_reset(c);
    t = open_http(c, store, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(collector_requests(c), 0);
    free(store);
    collector_stop(c);
}

TEST(restart_to_a_new_endpoint_with_a_named_destination)
{
    /* the store keys rows by destination name: with a "name" the queue survives a change of
     * endpoint (here: a collector on another port) */
    collector *down = collector_start(NULL), *up = collector_start(NULL);
    REQUIRE(down && up);
    REQUIRE(collector_script(down, "{\"default\":{\"status\":503}}") == 0);
    char *store = tu_path("rename.db");
    unlink(store);
    char dests[512];
    snprintf(dests, sizeof dests, "[{\"type\":\"segment\",\"name\":\"main\",\"endpoint\":\"%s\",\"write_key\":\"%s\"}]",
             collector_url(down), KEY);
    tally_t *t = open_http(NULL, store, "destinations", dests, "retry_base_ms", "10", "max_retries", "1000",
                           "flush_at", "10", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 20, 0), 0);
    CHECK_EQ_INT(collector_wait_requests(down, 1, 10000), 0);
    CHECK_EQ_INT(tally_close(t, 0), TALLY_ETIMEDOUT);
    snprintf(dests, sizeof dests, "[{\"type\":\"segment\",\"name\":\"main\",\"endpoint\":\"%s\",\"write_key\":\"%s\"}]",
             collector_url(up), KEY);
    t = open_http(NULL, store, "destinations", dests, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_close(t, 15000), TALLY_OK);
    received r;
    if (received_load(up, &r) == 0) {
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 20, 0), 0);
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    free(store);
    collector_stop(down);
    collector_stop(up);
}

TEST(a_dead_destination_does_not_stall_another)
{
    collector *good = collector_start(NULL), *bad = collector_start(NULL);
    REQUIRE(good && bad);
    REQUIRE(collector_script(bad, "{\"default\":{\"status\":503}}") == 0);
    char dests[768];
    snprintf(dests, sizeof dests,
             "[{\"type\":\"segment\",\"name\":\"good\",\"endpoint\":\"%s\",\"write_key\":\"%s\"},"
             "{\"type\":\"segment\",\"name\":\"bad\",\"endpoint\":\"%s\",\"write_key\":\"%s\"}]",
             collector_url(good), KEY, collector_url(bad), KEY);
    tally_t *t = open_http(NULL, NULL, "destinations", dests, "flush_at", "50", "retry_base_ms", "20",
                           "retry_cap_ms", "200", "max_retries", "1000", NULL);
    REQUIRE(t);
    long t0 = tu_mono_ms();
    CHECK_EQ_INT(track_seq(t, 0, 500, 0), 0);
    /* no flush: the healthy destination sends full batches on its own */
    CHECK_EQ_INT(collector_wait_accepted(good, 500, 10000), 0);
    long took = tu_mono_ms() - t0;
    CHECK(took < 3000);
    CHECK_EQ_INT(collector_wait_requests(bad, 3, 10000), 0); /* the other keeps retrying */
    CHECK_EQ_INT(collector_accepted(bad), 0);
    CHECK_EQ_INT(tu_wait_stat(t, "good", "delivered", 500, 5000), 0);
    CHECK_EQ_INT(tu_stat(t, "bad", "delivered"), 0);
    CHECK(tu_stat(t, "bad", "retried") > 0);
    CHECK_EQ_INT(tu_stat(t, "bad", "failed"), 0);
    /* flush waits for every destination: it cannot finish while one is down */
    CHECK_EQ_INT(tally_flush(t, 200), TALLY_ETIMEDOUT);
    /* and once the bad one heals, everything arrives there too, once */
    collector_reset(bad);
    CHECK_EQ_INT(tally_flush(t, 15000), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(good, &r) == 0) CHECK_EQ_INT(check_exact_sequence(&r, 0, 500, 0), 0);
    else CHECK(!"cannot read /received (good)");
    received_free(&r);
    if (received_load(bad, &r) == 0) CHECK_EQ_INT(check_exact_sequence(&r, 0, 500, 0), 0);
    else CHECK(!"cannot read /received (bad)");
    received_free(&r);
    collector_stop(good);
    collector_stop(bad);
}

TEST(flush_times_out_while_down_and_succeeds_once_delivered)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, "retry_base_ms", "20", "retry_cap_ms", "200", "max_retries", "1000", NULL);
    REQUIRE(t);
    /* nothing queued: a flush returns at once */
    long t0 = tu_mono_ms();
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK(tu_mono_ms() - t0 < 1000);
    REQUIRE(collector_script(c, "{\"down_ms\":2500}") == 0);
    CHECK_EQ_INT(track_seq(t, 0, 10, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 0), TALLY_ETIMEDOUT);
    t0 = tu_mono_ms();
    CHECK_EQ_INT(tally_flush(t, 300), TALLY_ETIMEDOUT);
    long took = tu_mono_ms() - t0;
    CHECK(took >= 290 && took < 2000);
    CHECK_CONTAINS(tally_errmsg(t), "300 ms");
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 0);
    CHECK_EQ_INT(tally_flush(t, 15000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 10);
    CHECK_EQ_INT(collector_accepted(c), 10);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    collector_stop(c);
}

TEST(flush_interval_sends_a_partial_batch_without_flush)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, "flush_interval_ms", "100", "flush_at", "100", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 7, 0), 0);
    CHECK_EQ_INT(collector_wait_accepted(c, 7, 5000), 0);
    CHECK_EQ_INT(collector_requests(c), 1);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    collector_stop(c);
}

/* Runs a handle with a debug logger through failures and returns the captured text. */
static void run_logged_failure(collector *c, const char *script, int n, logcap *lc, const char *store)
{
    REQUIRE(collector_script(c, script) == 0);
    tally_t *t = open_http_logged(c, capture, lc, "log_level", "debug", "retry_base_ms", "5", "retry_cap_ms", "20",
                                  "store", store ? store : ":memory:", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, n, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), n);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
}

TEST(write_key_never_appears_in_logs)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    logcap lc = {PTHREAD_MUTEX_INITIALIZER, TBUF_INIT, 0};
    run_logged_failure(c, "{\"script\":[{\"status\":500},{\"status\":429},{\"status\":401}]}", 5, &lc, NULL);
    pthread_mutex_lock(&lc.mu);
    CHECK(lc.lines >= 3); /* two retries and a dead letter were logged */
    CHECK_CONTAINS(lc.text.data, "HTTP 500");
    CHECK_CONTAINS(lc.text.data, "HTTP 401");
    CHECK(lc.text.data && strstr(lc.text.data, KEY) == NULL);
    pthread_mutex_unlock(&lc.mu);
    tbuf_free(&lc.text);
    collector_stop(c);
}

TEST(write_key_echoed_by_the_server_is_not_logged_or_stored)
{
    /* Some collectors echo the credentials they reject ("invalid write key 'wk_...'"). The reason
     * keeps the first bytes of the response body, so the key must be masked there. */
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char *store = tu_path("echo.db");
    unlink(store);
    logcap lc = {PTHREAD_MUTEX_INITIALIZER, TBUF_INIT, 0};
    run_logged_failure(c,
                       "{\"script\":[{\"status\":503,\"body\":\"overloaded for " KEY "\"},"
                       "{\"status\":500,\"body\":\"echo: Authorization: Basic " KEY_BASIC "\\r\\n\"},"
                       "{\"status\":401,\"body\":{\"error\":\"invalid write key '" KEY "'\"}}]}",
                       4, &lc, store);
    pthread_mutex_lock(&lc.mu);
    CHECK_CONTAINS(lc.text.data, "HTTP 401");
    CHECK_CONTAINS(lc.text.data, "invalid write key");
    CHECK_CONTAINS(lc.text.data, "echo: Authorization: Basic ***");
    CHECK(lc.text.data && strchr(lc.text.data, '\r') == NULL); /* one line per log line */
    if (lc.text.data && (strstr(lc.text.data, KEY) || strstr(lc.text.data, KEY_BASIC))) {
        th_failed_now = 1;
        fprintf(stderr, "  the write key is in the log:\n%s", lc.text.data);
    }
    pthread_mutex_unlock(&lc.mu);
    tbuf_free(&lc.text);
    int64_t rows = -1, smin = -1, smax = -1, queued = -1;
    char reasons[2048] = "";
    CHECK_EQ_INT(read_dead(store, &rows, &smin, &smax, reasons, sizeof reasons, &queued), 0);
    CHECK_EQ_INT(rows, 4);
    CHECK_CONTAINS(reasons, "invalid write key '***'");
    CHECK(strstr(reasons, KEY) == NULL);
    free(store);
    collector_stop(c);
}

/* ---- throughput (opt-in: TALLY_BENCH=1; TALLY_BENCH_N, default 100000; TALLY_BENCH_FLUSH_AT,
 * default 100). Measures track() of n small events until tally_flush() returns, i.e. until the
 * local collector acknowledged all of them; the Python collector is part of what is measured. ---- */

static void bench_one(const char *label, const char *store, int gzip, int n, const char *flush_at)
{
    collector *c = collector_start(NULL);
    if (!c) { CHECK(!"collector did not start"); return; }
    if (store) unlink(store);
    tally_t *t = open_http(c, store ? store : ":memory:", "gzip", gzip ? "true" : "false", "flush_at", flush_at,
                           "max_queue_rows", "1000000", "max_queue_bytes", "1073741824", NULL);
    if (!t) { CHECK(!"open failed"); collector_stop(c); return; }
    long t0 = tu_mono_ms();
    CHECK_EQ_INT(track_seq(t, 0, n, 0), 0);
    long t1 = tu_mono_ms();
    CHECK_EQ_INT(tally_flush(t, 600000), TALLY_OK);
    long t2 = tu_mono_ms();
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), n);
    int64_t batches = tu_stat(t, "segment", "batches");
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(collector_accepted(c), n);
    CHECK_EQ_INT(collector_duplicates(c), 0);
    double secs = (t2 - t0) / 1000.0;
    printf("bench %-16s flush_at=%-5s n=%d: enqueue %.0f/s, delivered %.0f events/s (%.2f s, %lld batches)\n",
           label, flush_at, n, n / ((t1 - t0) / 1000.0 + 1e-9), n / secs, secs, (long long)batches);
    fflush(stdout);
    collector_stop(c);
}

TEST(throughput)
{
    if (!getenv("TALLY_BENCH")) return;
    int n = getenv("TALLY_BENCH_N") ? atoi(getenv("TALLY_BENCH_N")) : 100000;
    const char *fa = getenv("TALLY_BENCH_FLUSH_AT") ? getenv("TALLY_BENCH_FLUSH_AT") : "100"; /* the default */
    char *file = tu_path("bench.db");
    bench_one("memory gzip=off", NULL, 0, n, fa);
    bench_one("memory gzip=on", NULL, 1, n, fa);
    bench_one("file gzip=off", file, 0, n, fa);
    bench_one("file gzip=on", file, 1, n, fa);
    free(file);
}

TEST(store_full_while_a_batch_is_in_flight_does_not_strand_rows)
{
    /* drop_oldest removes rows of the batch in flight; when that batch is acknowledged the
     * destination's pending count must still cover the rows that remain, or they are never
     * sent and every flush times out. */
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"script\":[{\"delay_ms\":800}]}") == 0);
    tally_t *t = open_http(c, NULL, "flush_at", "10", "max_store_rows", "16", "store_on_full", "drop_oldest",
                           "max_in_flight", "1", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 10, 0), 0);
    CHECK_EQ_INT(tu_wait_stat(t, "segment", "batches", 1, 5000), 0); /* rows 0..9 are in flight */
    CHECK_EQ_INT(track_seq(t, 10, 30, 0), 0);                     /* 40 rows for 16 places */
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_dropped"), 24);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    /* the first batch (already sent) and the 16 newest */
    CHECK_EQ_INT(collector_accepted(c), 10 + 16);
    received r;
    if (received_load(c, &r) == 0) {
        int64_t last = -1;
        for (size_t q = 0; q < nreqs(&r); q++)
            for (size_t i = 0; i < req_nmsgs(req_at(&r, q)); i++) {
                int64_t seq = tu_jint(tj_object_get(req_msg(req_at(&r, q), i), "properties"), "seq");
                CHECK(seq > last);
                last = seq;
            }
        CHECK_EQ_INT(last, 39);
    }
    received_free(&r);
    collector_stop(c);
}

/* The store keeps messages in chunks of up to a batch (store.c); a full store must still drop
 * exactly as many messages as the limit says, the newest or the oldest, never a whole chunk too
 * many. The collector refuses everything meanwhile, so all 25 have to wait in the store. */
static void store_full_exactly(const char *policy, int kept_first)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":503}}") == 0);
    tally_t *t = open_http(c, NULL, "flush_at", "10", "max_store_rows", "16", "store_on_full", policy, "retry_base_ms",
                           "10", "retry_cap_ms", "50", "max_retries", "1000", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 25, 0), 0);
    CHECK_EQ_INT(tu_wait_stat(t, NULL, "store_dropped", 9, 5000), 0);
    collector_reset(c); /* healthy again */
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_dropped"), 9);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 16);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0) {
        CHECK_EQ_INT(check_exact_sequence(&r, kept_first, 16, 0), 0);
    } else {
        CHECK(!"cannot read /received");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(full_store_drop_newest_keeps_exactly_the_oldest) { store_full_exactly("drop_newest", 0); }

TEST(full_store_drop_oldest_keeps_exactly_the_newest) { store_full_exactly("drop_oldest", 9); }

struct flusher {
    tally_t   *t;
    collector *c;
    int        first, n, rc, missing, disorder;
};

/* Tracks its own range of seq, flushes, then checks the collector already has every one of them
 * (in order within each request): tally_flush covers everything this thread accepted before it. */
static void *flusher_main(void *arg)
{
    struct flusher *f = arg;
    f->rc = track_seq(f->t, f->first, f->n, 0) ? -100 : tally_flush(f->t, 20000);
    received r;
    if (received_load(f->c, &r) == 0) {
        int64_t last = -1;
        int seen = 0;
        for (size_t q = 0; q < nreqs(&r); q++) {
            if (!jtrue(req_at(&r, q), "accepted")) continue;
            last = -1; /* two batches are out at once: requests may arrive in any order */
            for (size_t i = 0; i < req_nmsgs(req_at(&r, q)); i++) {
                int64_t seq = tu_jint(tj_object_get(req_msg(req_at(&r, q), i), "properties"), "seq");
                if (seq < f->first || seq >= f->first + f->n) continue;
                seen++;
                if (seq <= last) f->disorder++;
                last = seq;
            }
        }
        f->missing = f->n - seen;
    } else {
        f->missing = f->n;
    }
    received_free(&r);
    return NULL;
}

TEST(concurrent_flushes_each_cover_their_own_messages)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, "flush_at", "40", NULL);
    REQUIRE(t);
    enum { THREADS = 4, PER = 300 };
    struct flusher f[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        f[i] = (struct flusher){t, c, i * 10000, PER, 0, 0, 0};
        REQUIRE(pthread_create(&th[i], NULL, flusher_main, &f[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(f[i].rc, TALLY_OK);
        CHECK_EQ_INT(f[i].missing, 0);
        CHECK_EQ_INT(f[i].disorder, 0);
    }
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(collector_accepted(c), THREADS * PER);
    CHECK_EQ_INT(collector_duplicates(c), 0);
    collector_stop(c);
}
