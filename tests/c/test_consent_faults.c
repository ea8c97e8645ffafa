/* Consent revocation, opt-out and forget while the store cannot write (issue 17): a failed group
 * commit leaves the worker holding its rows in memory until the store writes again. Rows accepted
 * under consent and held that way must be purged by a revocation like stored ones, and an id's
 * held messages must go with tally_forget, so that once the store writes none of them is stored or
 * delivered, while the other destination and the other id still get all of theirs.
 *
 * The store is made to fail with the fault point tly_fault_store_full (every commit rolls back as
 * on a full disk). The group commit is set to a minute and nothing is due for delivery before the
 * flush, so the only commit before the revocation (or forget) is the one it makes itself: that
 * commit fails and the rows before it are held. Every wait is on an observable counter. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "harness.h"
#include "internal.h"
#include "jfields.h"
#include "tally.h"
#include "util.h"

#define N 10
#define WAIT_MS 10000

/* a needs analytics; b and c need advertising */
static const char *const needs[] = {"\"analytics\"", "\"advertising\"", "[\"advertising\"]"};

/* Opened with both categories granted (unless consent_required) and every commit failing from now
 * on. flush_at: how many messages a destination gathers before they are written to the store. */
static tally_t *open_failing(tf_files *f, const char *flush_at, const char *required)
{
    tally_t *t = tf_files_open(f, "commit_interval_ms", "60000", "flush_interval_ms", "3600000", "flush_at", flush_at,
                               "consent_required", required, NULL);
    if (t && !strcmp(required, "false"))
        CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true,\"advertising\":true}"), TALLY_OK);
    atomic_store(&tly_fault_store_full, 1); /* after the open, which commits the destinations */
    return t;
}

/* Waits (on tally_stats) for the counter (dest NULL: a top-level one) to reach want; its value. */
static long long wait_stat(tally_t *t, const char *dest, const char *name, long long want)
{
    tu_wait_stat(t, dest, name, want, WAIT_MS);
    return tu_stat(t, dest, name);
}

static void track_n(tally_t *t, const char *event, int n)
{
    for (int i = 0; i < n; i++) CHECK_EQ_INT(tally_track(t, event, NULL), TALLY_OK);
}

/* The revocation's own commit (rows before it are durable first) fails: what it gathered for a and
 * c is held; b's was not written yet. Both b and c lose theirs. */
TEST(revocation_purges_the_rows_a_failed_commit_holds)
{
    tf_files f;
    tf_files_init(&f, "heldrevoke", 3, needs);
    tally_t *t = open_failing(&f, "1000", "false");
    REQUIRE(t);
    track_n(t, "Before", N);
    CHECK_EQ_INT(tally_consent(t, "{\"advertising\":false}"), TALLY_OK);
    CHECK_EQ_INT(wait_stat(t, "-c.ndjson", "consent_purged", N), N);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_purged"), N);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_held"), N); /* a's */
    atomic_store(&tly_fault_store_full, 0);
    track_n(t, "After", 1);
    CHECK_EQ_INT(tally_flush(t, WAIT_MS), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), N + 1);
    CHECK_EQ_INT(tf_lines_with(f.out[0], "\"Before\""), N);
    CHECK_EQ_INT(tf_lines(f.out[1]), 0);
    CHECK_EQ_INT(tf_lines(f.out[2]), 0);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_held"), 0);
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_purged"), 0);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_purged"), N);
    CHECK_EQ_INT(tu_stat(t, "-c.ndjson", "consent_purged"), N);
    CHECK_EQ_INT(tu_stat(t, "-c.ndjson", "consent_withheld"), 1);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

/* consent_required: rows wait in the store for the first decision, written as they come (flush_at
 * 5); the decision's commit fails, so all of them are held, and the decision purges b's and c's. */
TEST(first_decision_purges_the_rows_a_failed_commit_holds)
{
    tf_files f;
    tf_files_init(&f, "helddecide", 3, needs);
    tally_t *t = open_failing(&f, "5", "true");
    REQUIRE(t);
    track_n(t, "Before", N);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true,\"advertising\":false}"), TALLY_OK);
    CHECK_EQ_INT(wait_stat(t, "-c.ndjson", "consent_purged", N), N);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_purged"), N);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_held"), N); /* a's */
    atomic_store(&tly_fault_store_full, 0);
    CHECK_EQ_INT(tally_flush(t, WAIT_MS), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), N);
    CHECK_EQ_INT(tf_lines(f.out[1]), 0);
    CHECK_EQ_INT(tf_lines(f.out[2]), 0);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_held"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(opt_out_purges_every_destinations_held_rows)
{
    tf_files f;
    tf_files_init(&f, "heldoptout", 3, needs);
    tally_t *t = open_failing(&f, "1000", "false");
    REQUIRE(t);
    track_n(t, "Before", N);
    CHECK_EQ_INT(tally_consent(t, "false"), TALLY_OK);
    CHECK_EQ_INT(wait_stat(t, "-c.ndjson", "consent_purged", N), N);
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_purged"), N);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_purged"), N);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_held"), 0); /* nothing left to hold */
    atomic_store(&tly_fault_store_full, 0);
    track_n(t, "After", 1);
    CHECK_EQ_INT(tally_flush(t, WAIT_MS), TALLY_OK);
    for (int d = 0; d < 3; d++) CHECK_EQ_INT(tf_lines(f.out[d]), 0);
    CHECK_EQ_INT(tu_stat(t, NULL, "opted_out"), 1);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

static void send_user(tally_t *t, const char *user, int i)
{
    char json[200];
    snprintf(json, sizeof json, "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"%s\",\"properties\":{\"i\":%d}}", user, i);
    CHECK_EQ_INT(tally_send(t, json), TALLY_OK);
}

TEST(forget_takes_the_ids_messages_from_what_a_failed_commit_holds)
{
    tf_files f;
    tf_files_init(&f, "heldforget", 2, NULL);
    tally_t *t = open_failing(&f, "1000", "false");
    REQUIRE(t);
    for (int i = 0; i < 2 * N; i++) send_user(t, i % 2 ? "alice" : "bob", i);
    size_t erased = 99;
    /* forget's own commit fails: the held copies of alice's messages go, the store cannot be
     * searched for more, and the caller is told so */
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_EIO);
    CHECK_EQ_INT(erased, 0);
    CHECK_CONTAINS(tally_errmsg(t), "cannot write");
    CHECK_CONTAINS(tally_errmsg(t), "held in memory");
    CHECK_EQ_INT(tu_stat(t, NULL, "forgotten"), 2 * N); /* N messages, each for both destinations */
    CHECK_EQ_INT(tu_stat(t, NULL, "store_held"), 2 * N);
    atomic_store(&tly_fault_store_full, 0);
    CHECK_EQ_INT(tally_flush(t, WAIT_MS), TALLY_OK);
    for (int d = 0; d < 2; d++) {
        CHECK_EQ_INT(tf_lines(f.out[d]), N);
        CHECK_EQ_INT(tf_lines_with(f.out[d], "\"bob\""), N);
        CHECK_EQ_INT(tf_lines_with(f.out[d], "\"alice\""), 0);
    }
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_OK); /* the store writes: nothing of hers is left */
    CHECK_EQ_INT(erased, 0);
    CHECK_EQ_INT(tu_stat(t, NULL, "store_held"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}
