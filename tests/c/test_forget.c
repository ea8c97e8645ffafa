/* tally_forget through the public API: the id's messages go from the queue (wherever they were
 * when it was called: intake, processor, store), from batches waiting for a retry and from the
 * dead letters, and no one else's; the identity is reset when it was the device's; the bytes are
 * gone from the store file and its WAL; bad ids are refused with nothing altered. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Sends a track for `user` whose properties carry `mark` and the sequence number i. */
static int send_for(tally_t *t, const char *field, const char *user, const char *mark, int i)
{
    char json[512];
    snprintf(json, sizeof json, "{\"type\":\"track\",\"event\":\"E\",\"%s\":\"%s\",\"properties\":{\"mark\":\"%s\",\"i\":%d}}",
             field, user, mark, i);
    return tally_send(t, json);
}

/* Counts the messages the collector accepted (2xx) whose userId or anonymousId is `id`, from
 * request `from` on; *all gets every accepted message from there. */
static long accepted_of(collector *c, size_t from, const char *id, long *all)
{
    received r;
    long n = 0;
    *all = 0;
    if (received_load(c, &r)) return -1;
    for (size_t k = from; k < nreqs(&r); k++) {
        const tj_value *req = req_at(&r, k);
        long long st = tu_jint(req, "status_returned");
        if (st < 200 || st > 299) continue;
        for (size_t i = 0; i < req_nmsgs(req); i++) {
            const tj_value *m = req_msg(req, i);
            const char *u = tu_jstr(m, "userId"), *a = tu_jstr(m, "anonymousId");
            ++*all;
            n += (u && !strcmp(u, id)) || (a && !strcmp(a, id));
        }
    }
    received_free(&r);
    return n;
}

TEST(forget_erases_only_the_ids_messages_even_those_not_stored_yet)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char *store = tu_path("forget-queued.db");
    unlink(store);
    /* no batch goes out before the flush (open_http's flush_interval_ms): none is on its way */
    tally_t *t = open_http(c, store, "flush_at", "1000", NULL);
    REQUIRE(t);
    /* interleaved, so the chunks hold both; no flush first: some are still in the intake or the
     * processor when forget is called */
    for (int i = 0; i < 40; i++) CHECK_EQ_INT(send_for(t, "userId", i % 2 ? "alice" : "bob", "m", i), TALLY_OK);
    size_t erased = 99;
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 20);
    CHECK_EQ_INT(tu_stat(t, NULL, "forgotten"), 20);
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_OK); /* nothing left of hers */
    CHECK_EQ_INT(erased, 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    long all = 0;
    CHECK_EQ_INT(accepted_of(c, 0, "alice", &all), 0);
    CHECK_EQ_INT(all, 20);
    CHECK_EQ_INT(accepted_of(c, 0, "bob", &all), 20);
    CHECK_EQ_INT(collector_duplicates(c), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(count_queued(store), 0);
    free(store);
    collector_stop(c);
}

/* A message tracked after forget returns is kept: the erasure covers what came before it. */
TEST(forget_applies_in_order_with_the_calls)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(send_for(t, "userId", "alice", "before", 0), TALLY_OK);
    size_t erased = 0;
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 1);
    CHECK_EQ_INT(send_for(t, "userId", "alice", "after", 1), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    long all = 0;
    CHECK_EQ_INT(accepted_of(c, 0, "alice", &all), 1);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    collector_stop(c);
}

static char *identity_field(tally_t *t, const char *key)
{
    char *json = NULL, *out = NULL;
    if (tally_identity(t, &json) != TALLY_OK) return NULL;
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error e;
    if (a && tj_parse(a, json, strlen(json), &v, &e) == 0 && tu_jstr(v, key)) out = strdup(tu_jstr(v, key));
    tj_arena_free(a);
    tally_free(json);
    return out;
}

TEST(forgetting_the_devices_own_ids_resets_the_identity)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "A", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK); /* the identity snapshot has caught up */
    char *anon = identity_field(t, "anonymousId");
    REQUIRE(anon);
    CHECK_EQ_INT(tally_track(t, "B", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "C", NULL), TALLY_OK);
    size_t erased = 0;
    CHECK_EQ_INT(tally_forget(t, anon, &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 2); /* A was delivered already */
    char *now = identity_field(t, "anonymousId");
    CHECK(now && strcmp(now, anon) != 0);
    free(now);

    CHECK_EQ_INT(tally_identify(t, "carol", "{\"email\":\"c@example.com\"}"), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "D", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_forget(t, "carol", &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 2); /* the identify and D */
    char *user = identity_field(t, "userId");
    CHECK(user == NULL);
    free(user);
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    long all = 0;
    CHECK_EQ_INT(accepted_of(c, 0, "carol", &all), 0);
    CHECK_EQ_INT(accepted_of(c, 0, anon, &all), 1); /* A only */
    CHECK_EQ_INT(all, 2);                            /* A and E */
    free(anon);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    collector_stop(c);
}

/* Batches answered 503 wait for their retry when alice is forgotten: the retries carry bob's
 * messages only, each once; her messages refused by the collector go from the dead letters. */
TEST(batches_waiting_for_a_retry_and_dead_letters_lose_the_ids_messages)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":503,\"retry_after\":\"1\"}}") == 0);
    char *store = tu_path("forget-flight.db");
    unlink(store);
    tally_t *t = open_http(c, store, "flush_at", "5", "max_in_flight", "2", "flush_interval_ms", "10", NULL);
    REQUIRE(t);
    for (int i = 0; i < 20; i++) CHECK_EQ_INT(send_for(t, "userId", i % 2 ? "alice" : "bob", "m", i), TALLY_OK);
    /* both batches out were answered and wait a second for their retry */
    CHECK_EQ_INT(tu_wait_stat(t, "", "retried", 10, 10000), 0);
    size_t erased = 0;
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 10);
    size_t from = (size_t)collector_requests(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":200}}") == 0);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    long all = 0;
    CHECK_EQ_INT(accepted_of(c, from, "alice", &all), 0);
    CHECK_EQ_INT(accepted_of(c, from, "bob", &all), 10);
    CHECK_EQ_INT(all, 10);
    CHECK_EQ_INT(collector_duplicates(c), 0);

    /* dead letters: a 400 refuses a batch of both */
    REQUIRE(collector_script(c, "{\"default\":{\"status\":400}}") == 0);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(send_for(t, "anonymousId", i % 2 ? "dave" : "erin", "d", i), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tally_forget(t, "dave", &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 2);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    int64_t rows = -1, smin, smax, queued = -1;
    char reasons[1024];
    CHECK_EQ_INT(read_dead(store, &rows, &smin, &smax, reasons, sizeof reasons, &queued), 0);
    CHECK_EQ_INT(rows, 2); /* erin's */
    CHECK_EQ_INT(queued, 0);
    free(store);
    collector_stop(c);
}

TEST(the_erased_bytes_are_gone_from_the_store_file_and_its_wal)
{
    char *store = tu_path("forget-bytes.db"), wal[4200];
    snprintf(wal, sizeof wal, "%s-wal", store);
    unlink(store);
    /* nothing is delivered: everything stays queued */
    tally_t *t = tf_open("store", store, "write_key", "k", "endpoint", "http://127.0.0.1:9", "flush_interval_ms", "3600000",
                         "flush_at", "1000", "log_level", "off", NULL);
    REQUIRE(t);
    for (int i = 0; i < 30; i++)
        CHECK_EQ_INT(send_for(t, "userId", i % 3 ? "bob" : "alice", i % 3 ? "KEEP-7c1e" : "GONE-93fa", i), TALLY_OK);
    size_t erased = 0;
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 10);
    CHECK(!tu_file_contains(store, "GONE-93fa"));
    CHECK(!tu_file_contains(wal, "GONE-93fa"));
    CHECK(tu_file_contains(store, "KEEP-7c1e") || tu_file_contains(wal, "KEEP-7c1e"));
    CHECK_EQ_INT(tally_close(t, 100), TALLY_ETIMEDOUT);
    CHECK(!tu_file_contains(store, "GONE-93fa"));
    CHECK(!tu_file_contains(wal, "GONE-93fa"));
    CHECK_EQ_INT(count_queued(store), 20);
    free(store);
}

TEST(bad_ids_are_refused_naming_the_field_and_nothing_is_altered)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(send_for(t, "userId", "x", "m", 0), TALLY_OK);
    size_t erased = 7;
    CHECK_EQ_INT(tally_forget(t, NULL, &erased), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "id");
    CHECK_EQ_INT(erased, 0);
    CHECK_EQ_INT(tally_forget(t, "", &erased), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "id: empty");
    char *big = malloc(TALLY_MAX_MESSAGE_BYTES + 2);
    REQUIRE(big);
    memset(big, 'x', TALLY_MAX_MESSAGE_BYTES + 1);
    big[TALLY_MAX_MESSAGE_BYTES + 1] = '\0';
    CHECK_EQ_INT(tally_forget(t, big, &erased), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "id: 32769 bytes, over the 32768-byte limit");
    free(big);
    CHECK_EQ_INT(tally_forget(NULL, "x", &erased), TALLY_EINVAL);
    CHECK_EQ_INT(tally_forget(t, "x", NULL), TALLY_OK); /* the count is optional */
    CHECK_EQ_INT(tu_stat(t, NULL, "forgotten"), 1);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    collector_stop(c);
}

/* dead_letter_max_rows keeps the newest dead letters; what goes is counted (stats, and per
 * destination in the store for `tally inspect`). */
TEST(dead_letters_over_the_row_cap_are_pruned_and_counted)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    REQUIRE(collector_script(c, "{\"default\":{\"status\":400}}") == 0);
    char *store = tu_path("prune-cap.db");
    unlink(store);
    tally_t *t = open_http(c, store, "dead_letter_max_rows", "2", NULL);
    REQUIRE(t);
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(send_for(t, "userId", "u", "m", i), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_wait_stat(t, NULL, "dead_pruned", 3, 10000), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    int64_t rows = -1, smin, smax, queued;
    char reasons[512];
    CHECK_EQ_INT(read_dead(store, &rows, &smin, &smax, reasons, sizeof reasons, &queued), 0);
    CHECK_EQ_INT(rows, 2);
    free(store);
    collector_stop(c);
}
