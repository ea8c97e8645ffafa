/* Crash safety: a child tracks messages into a file-backed store and is killed with SIGKILL at
 * random moments (while tracking, committing or delivering). After each kill the store must open
 * cleanly, and every message the child saw tally_flush confirm must end up delivered, at least
 * once, after a restart. 20 rounds. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "json.h"
#include "tally.h"
#include "util.h"

#define ROUNDS 20

static tally_t *open_store(const char *store, const char *out)
{
    return tf_open("store", store, "out", out, "log_level", "off", "flush_at", "25", "flush_interval_ms", "5", NULL);
}

/* The child: tracks numbered messages forever, confirming each flushed prefix on the pipe. */
static void child(const char *store, const char *out, int round, int fd)
{
    tally_t *t = open_store(store, out);
    if (!t) _exit(3);
    char props[64];
    for (long i = 0;; i++) {
        snprintf(props, sizeof props, "{\"round\":%d,\"i\":%ld}", round, i);
        if (tally_track(t, "Crash Test", props) != TALLY_OK) _exit(4);
        if (i % 40 == 39 && tally_flush(t, 10000) == TALLY_OK) {
            long confirmed = i;
            if (write(fd, &confirmed, sizeof confirmed) != sizeof confirmed) _exit(5);
        }
    }
}

/* Marks which (round, i) appear in the output. */
static void scan(const char *out, unsigned char **seen, long *cap)
{
    size_t len;
    char *all = tu_read_file(out, &len);
    if (!all) return;
    tj_arena *a = tj_arena_new();
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        tj_value *m;
        tj_error err;
        tj_arena_reset(a);
        if (tj_parse(a, line, strlen(line), &m, &err)) continue; /* a torn line from a kill */
        tj_value *p = tj_object_get(m, "properties");
        tj_value *r = tj_object_get(p, "round"), *i = tj_object_get(p, "i");
        if (!r || !i || r->u.i < 0 || r->u.i >= ROUNDS || i->u.i < 0 || i->u.i >= cap[r->u.i]) continue;
        seen[r->u.i][i->u.i] = 1;
    }
    tj_arena_free(a);
    free(all);
}

TEST(sigkill_at_random_points_loses_nothing_confirmed)
{
    char *store = tu_path("crash.db"), *out = tu_path("crash.ndjson");
    unlink(store);
    unlink(out);
    srand((unsigned)time(NULL));
    long confirmed[ROUNDS];
    int opened_cleanly = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int p[2];
        REQUIRE(pipe(p) == 0);
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            child(store, out, round, p[1]);
        }
        close(p[1]);
        /* wait for a random number of confirmations (0..3), then a random extra delay */
        int wanted = rand() % 4;
        confirmed[round] = -1;
        for (int k = 0; k < wanted; k++) {
            long c;
            if (read(p[0], &c, sizeof c) != sizeof c) break;
            confirmed[round] = c;
        }
        usleep((useconds_t)(rand() % 20000)); /* the kill lands anywhere: not a synchronisation */
        kill(pid, SIGKILL);
        long c;
        while (read(p[0], &c, sizeof c) == sizeof c) confirmed[round] = c; /* confirmations sent before death */
        close(p[0]);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status));
        /* the store must open after every kill, and the restart delivers what was left */
        tally_t *t = open_store(store, out);
        if (t) {
            opened_cleanly++;
            CHECK_EQ_INT(tally_close(t, 20000), TALLY_OK);
        }
    }
    CHECK_EQ_INT(opened_cleanly, ROUNDS);
    unsigned char *seen[ROUNDS];
    long cap[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        cap[r] = confirmed[r] + 1;
        seen[r] = calloc((size_t)cap[r] + 1, 1);
    }
    scan(out, seen, cap);
    long missing = 0, total = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (long i = 0; i < cap[r]; i++) missing += !seen[r][i];
        total += cap[r];
        free(seen[r]);
    }
    printf("  crash: %d rounds, %ld confirmed messages, %ld missing\n", ROUNDS, total, missing);
    CHECK_EQ_INT(missing, 0);
    free(store);
    free(out);
}
