/* HTTP delivery end to end (tally -> the segment destination -> tests/e2e/collector.py): how
 * messages are batched. Every message once; batches closed by flush_at, by Segment's 500 KB limit,
 * by flush_interval_ms or by a flush; gzip or plain bodies; concurrent flushes; the opt-in
 * throughput measurement. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "collector.h"
#include "delivery.h"
#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
#include "json.h"
#include "tally.h"
#include "util.h"

TF_CLEAN_HTTP_ENVIRONMENT

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
