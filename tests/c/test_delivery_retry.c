/* HTTP delivery end to end: retries. Server errors and network faults are retried until delivered,
 * each message once and in order; Retry-After is honoured, per response, capped by retry_cap_ms;
 * a collector down for seconds loses nothing; a flush times out while it is down. */
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
