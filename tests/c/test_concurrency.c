/* Many threads calling the public API at once: nothing lost, nothing duplicated, and per-thread
 * order kept. Run under ThreadSanitizer by `.ci/run` (make test SAN=tsan). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "harness.h"
#include "json.h"
#include "tally.h"
#include "util.h"

#define THREADS 8
#define PER_THREAD 5000

static tally_t *shared;

static void *tracker(void *arg)
{
    int id = (int)(intptr_t)arg;
    char props[64];
    for (int i = 0; i < PER_THREAD; i++) {
        snprintf(props, sizeof props, "{\"thread\":%d,\"seq\":%d}", id, i);
        int rc = tu_track_waiting(shared, "Concurrent Event", props); /* the test must not drop */
        if (rc != TALLY_OK) { fprintf(stderr, "track: %s\n", tally_errmsg(shared)); return (void *)1; }
        if (i % 1000 == 999 && (rc = tally_flush(shared, 30000)) != TALLY_OK) {
            fprintf(stderr, "flush: %s\n", tally_errmsg(shared));
            return (void *)1;
        }
    }
    return NULL;
}

TEST(threads_tracking_concurrently_lose_nothing)
{
    char *out = tu_path("concurrent.ndjson");
    shared = tu_open_file(out, "max_queue_rows", "4096", NULL);
    REQUIRE(shared);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, tracker, (void *)(intptr_t)i);
    int failures = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        failures += r != NULL;
    }
    CHECK_EQ_INT(failures, 0);
    CHECK_EQ_INT(tally_close(shared, 30000), TALLY_OK);

    size_t len;
    char *all = tu_read_file(out, &len);
    REQUIRE(all);
    unsigned char *seen = calloc(THREADS * PER_THREAD, 1);
    int next[THREADS] = {0}, order_ok = 1, lines = 0;
    tj_arena *a = tj_arena_new();
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        tj_value *m;
        tj_error err;
        tj_arena_reset(a);
        REQUIRE(tj_parse(a, line, strlen(line), &m, &err) == 0);
        tj_value *p = tj_object_get(m, "properties");
        int th_id = (int)tj_object_get(p, "thread")->u.i, seq = (int)tj_object_get(p, "seq")->u.i;
        seen[th_id * PER_THREAD + seq]++;
        if (seq != next[th_id]) order_ok = 0;
        next[th_id] = seq + 1;
        lines++;
    }
    int dup = 0, miss = 0;
    for (int i = 0; i < THREADS * PER_THREAD; i++) { dup += seen[i] > 1; miss += seen[i] == 0; }
    CHECK_EQ_INT(lines, THREADS * PER_THREAD);
    CHECK_EQ_INT(dup, 0);
    CHECK_EQ_INT(miss, 0);
    CHECK(order_ok);
    tj_arena_free(a);
    free(seen);
    free(all);
    free(out);
}
