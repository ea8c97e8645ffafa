/* HTTP delivery end to end: HTTP statuses that end in dead letters. A client error dead-letters
 * its batch without a retry, exhausted retries do too, a batch overtaken by the next one keeps its
 * own fate (retried or dead-lettered, the other delivered), and a dead destination does not stall
 * another. */
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

/* 20 messages at flush_at=10: two batches. The collector holds its answer to the first one until
 * it has answered another request, then answers it with `status`; the second, which tally sends
 * while the first is in flight, is answered at once, so it is recorded first and acknowledged
 * before the first one's answer. The second ten are tracked only once the first batch has taken
 * the held step: the collector hands steps out in the order it reads requests, and two batches
 * out at once on two connections could be read in either order. A 500 is retried: every message arrives once, the
 * retry carries exactly the first batch. A 400 dead-letters the first batch's ten messages and
 * only those. Either way the store ends empty. */
static void overtaken(int status)
{
    int retried = status >= 500;
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char script[128];
    snprintf(script, sizeof script, "{\"script\":[{\"after_answers\":1,\"status\":%d}]}", status);
    REQUIRE(collector_script(c, script) == 0);
    char *store = tu_path(retried ? "overtaken-retry.db" : "overtaken-dead.db");
    unlink(store);
    tally_t *t = open_http(c, store, "flush_at", "10", "retry_base_ms", "10", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 10, 0), 0);
    REQUIRE(collector_wait_script_taken(c, 10000) == 0);
    CHECK_EQ_INT(track_seq(t, 10, 10, 0), 0);
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
