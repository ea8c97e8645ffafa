/* The intake queue on its own: bounds by rows and bytes, both full policies, FIFO order, and
 * many producers against one consumer losing nothing. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "intake.h"
#include "internal.h"

static intake_rec *rec(int i)
{
    char s[32];
    snprintf(s, sizeof s, "%d", i);
    return intake_rec_new(NULL, REC_TRACK, s, strlen(s), NULL, 0, NULL, 0);
}

static int rec_id(const intake_rec *r) { return atoi(r->s1); }

TEST(fifo_order_and_empty_pop)
{
    intake q;
    REQUIRE(intake_init(&q, 16, 1 << 20, ON_FULL_DROP_NEWEST) == 0);
    int d;
    for (int i = 0; i < 10; i++) CHECK_EQ_INT(intake_push(&q, rec(i), &d), 0);
    for (int i = 0; i < 10; i++) {
        intake_rec *r = intake_pop(&q);
        REQUIRE(r);
        CHECK_EQ_INT(rec_id(r), i);
        free(r);
    }
    CHECK(intake_pop(&q) == NULL);
    CHECK_EQ_INT(intake_bytes(&q), 0);
    intake_destroy(&q);
}

TEST(drop_newest_refuses_when_rows_are_full)
{
    intake q;
    REQUIRE(intake_init(&q, 4, 1 << 20, ON_FULL_DROP_NEWEST) == 0);
    int d;
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(intake_push(&q, rec(i), &d), 0);
    intake_rec *extra = rec(99);
    CHECK_EQ_INT(intake_push(&q, extra, &d), TALLY_EFULL);
    free(extra);
    CHECK_EQ_INT(atomic_load(&q.dropped), 1);
    intake_rec *r = intake_pop(&q);
    CHECK_EQ_INT(rec_id(r), 0); /* the oldest survived */
    free(r);
    intake_destroy(&q);
}

TEST(drop_newest_refuses_when_bytes_are_full)
{
    intake q;
    intake_rec *probe = rec(0);
    size_t one = probe->size;
    free(probe);
    REQUIRE(intake_init(&q, 1024, one * 3, ON_FULL_DROP_NEWEST) == 0);
    int d, ok = 0;
    for (int i = 0; i < 10; i++) {
        intake_rec *r = rec(i);
        if (intake_push(&q, r, &d) == 0) ok++;
        else free(r);
    }
    CHECK_EQ_INT(ok, 3);
    CHECK(intake_bytes(&q) <= one * 3);
    CHECK_EQ_INT(atomic_load(&q.dropped), 7);
    intake_destroy(&q);
}

TEST(drop_oldest_keeps_the_newest)
{
    intake q;
    REQUIRE(intake_init(&q, 4, 1 << 20, ON_FULL_DROP_OLDEST) == 0);
    int d, any = 0;
    for (int i = 0; i < 10; i++) {
        CHECK_EQ_INT(intake_push(&q, rec(i), &d), 0);
        any |= d;
    }
    CHECK(any);
    CHECK_EQ_INT(atomic_load(&q.dropped), 6);
    for (int i = 6; i < 10; i++) {
        intake_rec *r = intake_pop(&q);
        REQUIRE(r);
        CHECK_EQ_INT(rec_id(r), i);
        free(r);
    }
    intake_destroy(&q);
}

#define PRODUCERS 4
#define PER_PRODUCER 50000

static intake shared_q;

static void *producer(void *arg)
{
    int base = (int)(intptr_t)arg * PER_PRODUCER;
    for (int i = 0; i < PER_PRODUCER; i++) {
        intake_rec *r = rec(base + i);
        int d;
        while (intake_push(&shared_q, r, &d) != 0) sched_yield(); /* test only: wait for room */
    }
    return NULL;
}

TEST(many_producers_one_consumer_lose_nothing)
{
    REQUIRE(intake_init(&shared_q, 1024, 64 << 20, ON_FULL_DROP_NEWEST) == 0);
    pthread_t th[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) pthread_create(&th[i], NULL, producer, (void *)(intptr_t)i);
    unsigned char *seen = calloc(PRODUCERS * PER_PRODUCER, 1);
    int last[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) last[i] = -1;
    int got = 0, order_ok = 1;
    while (got < PRODUCERS * PER_PRODUCER) {
        intake_rec *r = intake_pop(&shared_q);
        if (!r) { sched_yield(); continue; }
        int id = rec_id(r), p = id / PER_PRODUCER;
        seen[id]++;
        if (id <= last[p]) order_ok = 0; /* each producer's records arrive in its order */
        last[p] = id;
        free(r);
        got++;
    }
    for (int i = 0; i < PRODUCERS; i++) pthread_join(th[i], NULL);
    int dup = 0, miss = 0;
    for (int i = 0; i < PRODUCERS * PER_PRODUCER; i++) { dup += seen[i] > 1; miss += seen[i] == 0; }
    CHECK_EQ_INT(dup, 0);
    CHECK_EQ_INT(miss, 0);
    CHECK(order_ok);
    CHECK(intake_pop(&shared_q) == NULL);
    free(seen);
    intake_destroy(&shared_q);
}

/* A record made now and read later still carries the moment of the call, in both clock modes:
 * counter ticks turned into wall time by the processor, or the wall clock read by the caller. */
static void check_call_time(void)
{
    int64_t before = tly_now_ms();
    intake_rec *r = rec(1);
    int64_t after = tly_now_ms();
    struct timespec pause = {0, 40 * 1000000}; /* time has to pass for the test to mean anything */
    nanosleep(&pause, NULL);
    int64_t at = intake_rec_time(r);
    CHECK(at >= before - 1 && at <= after + 1);
    CHECK(tly_now_ms() >= after + 40); /* the record's time is not the time it was read */
    free(r);
    /* converted right after the one above: from the conversion point it just took (a record
     * newer than that point), not from clocks read again */
    before = tly_now_ms();
    r = rec(2);
    after = tly_now_ms();
    at = intake_rec_time(r);
    CHECK(at >= before - 1 && at <= after + 1);
    free(r);
}

TEST(records_keep_the_time_of_the_call)
{
    tly_clock_init();
    int ticks = tly_ticks_ok;
    check_call_time();
    tly_ticks_ok = 0; /* the fallback every other platform uses */
    check_call_time();
    tly_ticks_ok = ticks;
#if defined(__x86_64__) && defined(__linux__)
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    char src[32] = "";
    if (f && fgets(src, sizeof src, f) && !strcmp(src, "tsc\n")) CHECK(tly_ticks_ok);
    if (f) fclose(f);
#endif
}

/* Records the processor is done with go back to the callers (spares) instead of free(): a small
 * one is handed out again, a big one is freed, and the spares are bounded (ASan checks nothing
 * leaks when more are given back than are kept). */
TEST(small_records_are_reused_big_ones_freed)
{
    intake q;
    REQUIRE(intake_init(&q, 16, 1 << 20, ON_FULL_DROP_NEWEST) == 0);
    intake_rec *a = intake_rec_new(&q, REC_TRACK, "e", 1, NULL, 0, "{}", 2);
    REQUIRE(a);
    CHECK(a->size <= REC_SPARE_BYTES); /* a spare */
    intake_rec_free(&q, a);
    void *m = malloc(REC_SPARE_BYTES); /* had a gone back to malloc, this would likely be it */
    CHECK(m != (void *)a);
    /* the pool hands out its slab's other records first, then a again */
    intake_rec *b = NULL, *slab[REC_SLAB_BYTES / REC_SPARE_BYTES];
    for (size_t i = 0; i < sizeof slab / sizeof *slab; i++) {
        REQUIRE((slab[i] = intake_rec_new(&q, REC_TRACK, "other", 5, NULL, 0, "{\"k\":1}", 7)));
        if (slab[i] == a) b = a;
    }
    for (size_t i = 0; i < sizeof slab / sizeof *slab; i++)
        if (slab[i] != b) intake_rec_free(&q, slab[i]);
    REQUIRE(b == a);
    free(m);
    CHECK_STR(b->s1, "other");
    CHECK_STR(b->json, "{\"k\":1}");
    char big[1024];
    memset(big, ' ', sizeof big - 3);
    memcpy(big + sizeof big - 3, "{}", 3);
    intake_rec *c = intake_rec_new(&q, REC_TRACK, "e", 1, NULL, 0, big, strlen(big));
    REQUIRE(c);
    CHECK(c->size > REC_SPARE_BYTES); /* not a spare */
    intake_rec_free(&q, c);
    intake_rec *d = intake_rec_new(&q, REC_TRACK, "e", 1, NULL, 0, NULL, 0);
    CHECK(d != c);
    intake_rec_free(&q, b);
    intake_rec_free(&q, d);
    intake_rec *many[3000];
    for (int i = 0; i < 3000; i++) REQUIRE((many[i] = intake_rec_new(NULL, REC_TRACK, "e", 1, NULL, 0, NULL, 0)));
    for (int i = 0; i < 3000; i++) intake_rec_free(&q, many[i]);
    intake_destroy(&q);
}

/* Whole messages (tally_send) have their own class of spares: one of a few hundred bytes is handed
 * out again, one over REC_SPARE_BIG_BYTES is not kept, and both classes are bounded. */
TEST(message_sized_records_are_reused)
{
    intake q;
    REQUIRE(intake_init(&q, 16, 1 << 20, ON_FULL_DROP_NEWEST) == 0);
    char msg[600], huge[REC_SPARE_BIG_BYTES + 1];
    memset(msg, ' ', sizeof msg - 3);
    memcpy(msg + sizeof msg - 3, "{}", 3);
    memset(huge, ' ', sizeof huge - 3);
    memcpy(huge + sizeof huge - 3, "{}", 3);
    intake_rec *a = intake_rec_new(&q, REC_SEND, NULL, 0, NULL, 0, msg, strlen(msg));
    REQUIRE(a);
    CHECK(a->size > REC_SPARE_BYTES && a->size <= REC_SPARE_BIG_BYTES);
    intake_rec_free(&q, a);
    void *m = malloc(REC_SPARE_BIG_BYTES); /* had a gone back to malloc, this would likely be it */
    CHECK(m != (void *)a);
    intake_rec *b = NULL, *slab[REC_SLAB_BYTES / REC_SPARE_BIG_BYTES];
    for (size_t i = 0; i < sizeof slab / sizeof *slab; i++) {
        REQUIRE((slab[i] = intake_rec_new(&q, REC_SEND, NULL, 0, NULL, 0, msg + 100, strlen(msg + 100))));
        if (slab[i] == a) b = a;
    }
    for (size_t i = 0; i < sizeof slab / sizeof *slab; i++)
        if (slab[i] != b) intake_rec_free(&q, slab[i]);
    REQUIRE(b == a);
    free(m);
    CHECK_STR(b->json, msg + 100);
    intake_rec *s = intake_rec_new(&q, REC_TRACK, "e", 1, NULL, 0, NULL, 0);
    CHECK(s != a); /* the small class does not hand out a big spare */
    intake_rec *c = intake_rec_new(&q, REC_SEND, NULL, 0, NULL, 0, huge, strlen(huge));
    REQUIRE(c);
    CHECK(c->size > REC_SPARE_BIG_BYTES);
    intake_rec_free(&q, c);
    intake_rec_free(&q, s);
    intake_rec_free(&q, b);
    intake_rec *many[600];
    for (int i = 0; i < 600; i++) REQUIRE((many[i] = intake_rec_new(NULL, REC_SEND, NULL, 0, NULL, 0, msg, strlen(msg))));
    for (int i = 0; i < 600; i++) intake_rec_free(&q, many[i]);
    intake_destroy(&q);
}
