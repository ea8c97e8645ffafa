/* 8 threads x 100k messages through a rule, with flushes from every thread and rule reloads
 * in between: nothing lost, nothing duplicated, per-thread order kept. Run under ThreadSanitizer
 * (no reports) and AddressSanitizer (no leaks at close) by .ci/run. TALLY_STRESS_PER_THREAD
 * overrides the count (the default is the 100k). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fixtures.h"
#include "harness.h"
#include "json.h"
#include "tally.h"
#include "util.h"

#define THREADS 8

static tally_t *shared;
static long per_thread;
static char rules_file[512];

static void write_rule(int version)
{
    FILE *f = fopen(rules_file, "w");
    if (!f) return;
    fprintf(f, "return { name = 'stamp', process = function(m) m.properties.rule_version = %d return m end }\n", version);
    fclose(f);
}

static void *tracker(void *arg)
{
    int id = (int)(intptr_t)arg;
    char props[64];
    for (long i = 0; i < per_thread; i++) {
        snprintf(props, sizeof props, "{\"thread\":%d,\"seq\":%ld}", id, i);
        int rc = tu_track_waiting(shared, "Stress", props);
        if (rc != TALLY_OK) return (void *)1;
        if (i % 20000 == 19999) {
            if (tally_flush(shared, 120000) != TALLY_OK) return (void *)2;
            if (id == 0) {
                write_rule((int)(i / 20000) + 2);
                if (tally_reload(shared, 120000) != TALLY_OK) return (void *)3;
            }
        }
    }
    return NULL;
}

TEST(eight_threads_with_flushes_and_reloads_lose_nothing)
{
    const char *env = getenv("TALLY_STRESS_PER_THREAD");
    per_thread = env ? atol(env) : 100000;
    char *dir = tu_path("stress-rules"), *out = tu_path("stress.ndjson");
    mkdir(dir, 0755);
    snprintf(rules_file, sizeof rules_file, "%s/10_stamp.lua", dir);
    write_rule(1);
    shared = tu_open_file(out, "rules", dir, "flush_at", "500", NULL);
    REQUIRE(shared);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, tracker, (void *)(intptr_t)i);
    int failures = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        if (r) fprintf(stderr, "  thread %d failed (%ld): %s\n", i, (long)(intptr_t)r, tally_errmsg(shared));
        failures += r != NULL;
    }
    CHECK_EQ_INT(failures, 0);
    CHECK_EQ_INT(tally_close(shared, 120000), TALLY_OK);

    long total = per_thread * THREADS;
    unsigned char *seen = calloc((size_t)total, 1);
    long next[THREADS] = {0}, lines = 0, order_bad = 0, versions = 0, last_version = 0;
    size_t len;
    char *all = tu_read_file(out, &len);
    REQUIRE(all && seen);
    tj_arena *a = tj_arena_new();
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        tj_value *m;
        tj_error err;
        tj_arena_reset(a);
        if (tj_parse(a, line, strlen(line), &m, &err)) continue;
        tj_value *p = tj_object_get(m, "properties");
        long th_id = (long)tj_object_get(p, "thread")->u.i, seq = (long)tj_object_get(p, "seq")->u.i;
        long v = (long)tj_object_get(p, "rule_version")->u.i;
        if (th_id == 0 && v != last_version) { versions++; last_version = v; }
        seen[th_id * per_thread + seq]++;
        if (seq != next[th_id]) order_bad++;
        next[th_id] = seq + 1;
        lines++;
    }
    long dup = 0, miss = 0;
    for (long i = 0; i < total; i++) { dup += seen[i] > 1; miss += seen[i] == 0; }
    printf("  stress: %ld messages, %ld lines, %ld missing, %ld duplicated, %ld rule versions seen\n", total, lines, miss,
           dup, versions);
    CHECK_EQ_INT(lines, total);
    CHECK_EQ_INT(miss, 0);
    CHECK_EQ_INT(dup, 0);
    CHECK_EQ_INT(order_bad, 0);
    CHECK(versions >= 2 || per_thread < 40000); /* reloads took effect mid-stream */
    tj_arena_free(a);
    free(all);
    free(seen);
    free(dir);
    free(out);
}
