/* The request handshake between callers and the runtime's threads (src/requests.h): each kind is
 * served only as itself, a flush drains before it is done, and a caller that gave up is never
 * written to afterwards. */
#include <pthread.h>
#include <sched.h>

#include "harness.h"
#include "requests.h"

static requests rq;

static void setup(void)
{
    tly_err err = {""};
    if (requests_init(&rq, &err) != TALLY_OK) {
        fprintf(stderr, "  requests_init: %s\n", err.msg);
        exit(1);
    }
}

TEST(flush_and_reload_are_served_each_as_its_own_kind)
{
    setup();
    tly_request flush = {.kind = REQ_FLUSH, .ticket = 5};
    tly_request reload = {.kind = REQ_RELOAD, .ticket = 5};
    requests_post(&rq, &flush);
    requests_post(&rq, &reload);
    CHECK(flush.seq != reload.seq);
    CHECK(requests_waiting(&rq, REQ_FLUSH));
    CHECK(requests_waiting(&rq, REQ_RELOAD));

    uint64_t seq = 0;
    CHECK(!requests_take(&rq, REQ_RELOAD, 4, &seq)); /* a record before its ticket is not taken yet */
    REQUIRE(requests_take(&rq, REQ_RELOAD, 5, &seq));
    CHECK_EQ_INT(seq, reload.seq);

    /* the worker's steps touch the flush only */
    CHECK(requests_flush_drained(&rq, 1, 5, 42));
    CHECK(flush.drained && flush.mark == 42);
    CHECK(!reload.drained);
    CHECK(!requests_flush_due(&rq, 42)); /* row 42 is not delivered yet */
    CHECK(requests_flush_due(&rq, 43));
    requests_flush_done(&rq, 43);
    CHECK(flush.done);
    CHECK(!reload.done);
    CHECK(!requests_waiting(&rq, REQ_FLUSH));
    CHECK(requests_waiting(&rq, REQ_RELOAD));

    tly_err why = {""};
    tly_err_set(&why, TALLY_ELUA, "10_broken.lua:3: boom");
    requests_finish(&rq, seq, TALLY_ELUA, &why);
    CHECK(reload.done);
    CHECK_EQ_INT(reload.result, TALLY_ELUA);
    CHECK_STR(reload.err.msg, "10_broken.lua:3: boom");
    CHECK(!requests_waiting(&rq, REQ_RELOAD));

    CHECK_EQ_INT(requests_wait(&rq, &flush, 0), 1);
    CHECK_EQ_INT(requests_wait(&rq, &reload, 0), 1);
    CHECK(rq.list == NULL);
    requests_destroy(&rq);
}

TEST(a_flush_is_not_drained_while_rows_still_wait_in_the_row_queue)
{
    setup();
    tly_request flush = {.kind = REQ_FLUSH, .ticket = 3};
    requests_post(&rq, &flush);
    CHECK(!requests_flush_drained(&rq, 0, 10, 7)); /* all_in = 0: a full store left rows waiting */
    CHECK(!flush.drained);
    CHECK(!requests_flush_drained(&rq, 1, 2, 7)); /* the processor has not handed over its ticket yet */
    CHECK(!flush.drained);
    CHECK(requests_flush_drained(&rq, 1, 3, 7));
    CHECK(flush.drained && flush.mark == 7);
    CHECK_EQ_INT(requests_wait(&rq, &flush, 0), 0); /* drained is not done */
    CHECK(rq.list == NULL);
    requests_destroy(&rq);
}

TEST(a_caller_that_gave_up_is_not_written_to_by_the_thread_that_finishes)
{
    setup();
    tly_request reload = {.kind = REQ_RELOAD, .ticket = 0};
    requests_post(&rq, &reload);
    uint64_t seq = 0;
    REQUIRE(requests_take(&rq, REQ_RELOAD, 0, &seq));
    /* the reload runs without the lock; meanwhile its caller's timeout passes */
    CHECK_EQ_INT(requests_wait(&rq, &reload, 0), 0);
    CHECK(!requests_waiting(&rq, REQ_RELOAD));
    tly_err why = {""};
    tly_err_set(&why, TALLY_ELUA, "late");
    requests_finish(&rq, seq, TALLY_ELUA, &why);
    CHECK(!reload.done); /* found by number, and it had left: nothing written */
    CHECK_EQ_INT(reload.result, TALLY_OK);
    CHECK_STR(reload.err.msg, "");
    requests_destroy(&rq);
}

/* The serving thread looks for work the way the processor does: it polls the list, since the
 * real threads are woken by an eventfd this test has no use for. */
static void *serve_one_reload(void *arg)
{
    (void)arg;
    uint64_t seq;
    while (!requests_take(&rq, REQ_RELOAD, 1, &seq)) sched_yield();
    requests_finish(&rq, seq, TALLY_OK, NULL);
    return NULL;
}

TEST(a_caller_waiting_without_limit_is_woken_by_the_thread_that_serves_it)
{
    setup();
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, serve_one_reload, NULL) == 0);
    tly_request reload = {.kind = REQ_RELOAD, .ticket = 1};
    requests_post(&rq, &reload);
    CHECK_EQ_INT(requests_wait(&rq, &reload, -1), 1);
    CHECK_EQ_INT(reload.result, TALLY_OK);
    pthread_join(th, NULL);
    CHECK(rq.list == NULL);
    requests_destroy(&rq);
}
