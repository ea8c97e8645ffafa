/* HTTP delivery end to end through a store file: a restart delivers what was queued exactly once
 * (also to a new endpoint of a named destination), and a full store keeps exactly what its
 * policy says, even with a batch in flight. */
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
    /* each message counted once: the 10 in flight were dropped from the store while out, then
     * delivered, so they count as delivered, not dropped too (40 = 26 + 14) */
    CHECK_EQ_INT(tu_stat(t, NULL, "store_dropped"), 14);
    CHECK_EQ_INT(tu_stat(t, "segment", "delivered"), 26);
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

/* The store keeps messages in chunks of up to a batch (store_impl.h); a full store must still
 * drop exactly as many messages as the limit says, the newest or the oldest, never a whole chunk
 * too many. The collector refuses everything meanwhile, so all 25 have to wait in the store.
 * Before the collector turns healthy, the request that may have been in flight when the drops
 * finished (one at most: max_in_flight=1) must have had its 503: the collector picks a request's
 * answer when it reads it, so a batch loaded before the drops and read after the reset would be
 * accepted with messages the store had dropped. Two more answers prove it: the second was sent
 * after the first came back. */
static void store_full_exactly(const char *policy, int kept_first)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":503}}") == 0);
    tally_t *t = open_http(c, NULL, "flush_at", "10", "max_store_rows", "16", "store_on_full", policy, "retry_base_ms",
                           "10", "retry_cap_ms", "50", "max_retries", "1000", "max_in_flight", "1", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 25, 0), 0);
    CHECK_EQ_INT(tu_wait_stat(t, NULL, "store_dropped", 9, 5000), 0);
    CHECK_EQ_INT(collector_wait_requests(c, collector_requests(c) + 2, 5000), 0);
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
