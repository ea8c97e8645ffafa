/* Every public function given NULL or empty arguments, zero and negative timeouts, and a log
 * callback that calls back into tally: each returns the documented status (include/tally.h) and
 * nothing crashes, leaks (ASan) or deadlocks. A handle after tally_close is freed memory, which C
 * cannot detect: include/tally.h documents that as undefined, so only what is definable is here. */
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "tally.h"
#include "util.h"

static tally_t *open_out(const char *name, const char *rules)
{
    char *file = tu_path(name);
    tally_t *t = tf_open("out", file, "log_level", "off", rules ? "rules" : NULL, rules, NULL);
    free(file);
    return t;
}

TEST(null_config_arguments_are_refused)
{
    tally_config *c = tally_config_new();
    REQUIRE(c != NULL);
    CHECK_EQ_INT(tally_config_set(NULL, "flush_at", "5"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_config_set(c, NULL, "5"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_config_set(c, "flush_at", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_config_set(c, "", "5"), TALLY_ECONFIG);
    CHECK_EQ_INT(tally_config_set(c, "flush_at", ""), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "flush_at");
    CHECK_EQ_INT(tally_config_set(c, "store", ""), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "store: must not be empty");
    CHECK_EQ_INT(tally_config_set(c, "destinations", ""), TALLY_ECONFIG);
    CHECK_EQ_INT(tally_config_set(c, "rule_config", ""), TALLY_ECONFIG);
    CHECK_EQ_INT(tally_config_load(NULL, "x.lua"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_config_load(c, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_config_load(c, ""), TALLY_EIO);
    CHECK_EQ_INT(tally_config_set_logger(NULL, NULL, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_config_set_logger(c, NULL, NULL), TALLY_OK); /* back to stderr */
    tally_config_free(c);
    tally_config_free(NULL);
}

TEST(null_handle_is_refused_by_every_call)
{
    char *s = (char *)1;
    CHECK_EQ_INT(tally_open(NULL, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_track(NULL, "e", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_identify(NULL, "u", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_page(NULL, NULL, "p", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_screen(NULL, "s", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_group(NULL, "g", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_alias(NULL, "u", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_send(NULL, "{\"type\":\"track\",\"event\":\"e\"}"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_reset(NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_session_start(NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_flush(NULL, 0), TALLY_EINVAL);
    CHECK_EQ_INT(tally_reload(NULL, 0), TALLY_EINVAL);
    CHECK_EQ_INT(tally_stats(NULL, &s), TALLY_EINVAL);
    CHECK_EQ_INT(tally_identity(NULL, &s), TALLY_EINVAL);
    CHECK_EQ_INT(tally_close(NULL, 0), TALLY_OK); /* documented no-op, like free(NULL) */
    CHECK_EQ_INT(tally_close(NULL, -1), TALLY_OK);
    tally_free(NULL);
    CHECK(tally_errmsg(NULL) != NULL);
    CHECK(tally_version() != NULL);
    for (int rc = -20; rc <= 5; rc++) CHECK(tally_strerror(rc) != NULL);
    CHECK_STR(tally_strerror(INT_MIN), "unknown error");
}

TEST(null_and_empty_message_arguments_are_refused_and_counted)
{
    tally_t *t = open_out("misuse-args.ndjson", NULL);
    REQUIRE(t != NULL);
    CHECK_EQ_INT(tally_track(t, NULL, NULL), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "event");
    CHECK_EQ_INT(tally_track(t, "", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_track(t, "e", ""), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "properties");
    CHECK_EQ_INT(tally_group(t, NULL, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_group(t, "", NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_alias(t, NULL, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_alias(t, "", "p"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_identify(t, "u", ""), TALLY_EINVAL);
    CHECK_EQ_INT(tally_page(t, NULL, NULL, ""), TALLY_EINVAL);
    CHECK_EQ_INT(tally_screen(t, NULL, ""), TALLY_EINVAL);
    CHECK_EQ_INT(tally_send(t, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_send(t, ""), TALLY_EINVAL);
    CHECK_EQ_INT(tally_send(t, "{}"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_stats(t, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_identity(t, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_reload(t, 0), TALLY_ECONFIG); /* no rules configured */
    /* the optional ones may be NULL */
    CHECK_EQ_INT(tally_identify(t, NULL, NULL), TALLY_OK);
    CHECK_EQ_INT(tally_page(t, NULL, NULL, NULL), TALLY_OK);
    CHECK_EQ_INT(tally_screen(t, NULL, NULL), TALLY_OK);
    char *stats = NULL;
    REQUIRE(tally_stats(t, &stats) == TALLY_OK);
    CHECK_CONTAINS(stats, "\"rejected\":13"); /* the 13 refused messages; NULL out-pointers are not messages */
    tally_free(stats);
    CHECK_EQ_INT(tally_close(t, -1), TALLY_OK);
}

TEST(zero_and_negative_timeouts_do_not_wait_or_wait_without_limit)
{
    tally_t *t = open_out("misuse-timeouts.ndjson", NULL);
    REQUIRE(t != NULL);
    CHECK_EQ_INT(tally_track(t, "one", NULL), TALLY_OK);
    int rc = tally_flush(t, 0); /* does not wait: done already, or not yet */
    CHECK(rc == TALLY_OK || rc == TALLY_ETIMEDOUT);
    CHECK_EQ_INT(tally_flush(t, -1), TALLY_OK);   /* no limit: returns once delivered */
    CHECK_EQ_INT(tally_flush(t, -100), TALLY_OK); /* every negative value means no limit */
    CHECK_EQ_INT(tally_flush(t, INT_MAX), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "two", NULL), TALLY_OK);
    rc = tally_close(t, 0); /* frees the handle either way */
    CHECK(rc == TALLY_OK || rc == TALLY_ETIMEDOUT);
    t = open_out("misuse-timeouts2.ndjson", NULL);
    REQUIRE(t != NULL);
    CHECK_EQ_INT(tally_track(t, "three", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, INT_MIN), TALLY_OK);
    char *path = tu_path("misuse-timeouts2.ndjson");
    CHECK_EQ_INT(tu_count_lines(path), 1);
    free(path);
}

TEST(open_and_close_many_times_leaves_nothing)
{
    for (int i = 0; i < 20; i++) {
        tally_t *t = open_out("misuse-cycle.ndjson", NULL);
        REQUIRE(t != NULL);
        CHECK_EQ_INT(tally_track(t, "cycle", NULL), TALLY_OK);
        /* 0 does not wait for the worker's answer: TALLY_ETIMEDOUT even when nothing is left */
        int rc = tally_close(t, i % 2 ? 0 : -1);
        CHECK(i % 2 ? (rc == TALLY_OK || rc == TALLY_ETIMEDOUT) : rc == TALLY_OK);
    }
}

/* ---- a log callback that calls back into tally ---- */

struct reentry {
    _Atomic(tally_t *) t;
    atomic_int         done;
    int                track, flush, reload, stats, identity, close;
    char               why[256];
};

static void reentrant_logger(void *ud, int level, const char *msg)
{
    (void)level;
    struct reentry *r = ud;
    tally_t *t = atomic_load(&r->t);
    if (!t || !strstr(msg, "seen") || atomic_exchange(&r->done, 1)) return;
    char *s = NULL;
    r->flush = tally_flush(t, -1); /* would wait for this very thread */
    snprintf(r->why, sizeof r->why, "%s", tally_errmsg(t));
    r->reload = tally_reload(t, -1);
    r->stats = tally_stats(t, &s);
    tally_free(s);
    s = NULL;
    r->identity = tally_identity(t, &s);
    tally_free(s);
    r->close = tally_close(t, -1); /* refused: the handle stays open */
    r->track = tally_track(t, "from_callback", NULL); /* never blocks: allowed */
}

TEST(log_callback_calling_back_into_tally_gets_einval_instead_of_a_deadlock)
{
    char *rules = tu_path("misuse-rules");
    char *rule = tu_path("misuse-rules/10_say.lua");
    mkdir(rules, 0755);
    FILE *f = fopen(rule, "w");
    REQUIRE(f != NULL);
    fputs("return { name = 'say', process = function(m) if m.event == 'hello' then print('seen') end; return m end }\n", f);
    fclose(f);
    char *file = tu_path("misuse-callback.ndjson");
    tally_config *c = tally_config_new();
    tally_config_set(c, "out", file);
    tally_config_set(c, "rules", rules);
    tally_config_set(c, "log_level", "info");
    static struct reentry r;
    tally_config_set_logger(c, reentrant_logger, &r);
    tally_t *t = NULL;
    REQUIRE(tally_open(c, &t) == TALLY_OK);
    tally_config_free(c);
    atomic_store(&r.t, t);
    CHECK_EQ_INT(tally_track(t, "hello", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, -1), TALLY_OK); /* returns: the callback did not deadlock the processor */
    CHECK_EQ_INT(atomic_load(&r.done), 1);
    CHECK_EQ_INT(r.flush, TALLY_EINVAL);
    CHECK_CONTAINS(r.why, "inside a log callback");
    CHECK_EQ_INT(r.reload, TALLY_EINVAL);
    CHECK_EQ_INT(r.stats, TALLY_EINVAL);
    CHECK_EQ_INT(r.identity, TALLY_EINVAL);
    CHECK_EQ_INT(r.close, TALLY_EINVAL);
    CHECK_EQ_INT(r.track, TALLY_OK);
    CHECK_EQ_INT(tally_close(t, -1), TALLY_OK);
    char *out = tu_read_file(file, NULL);
    CHECK_CONTAINS(out, "\"event\":\"hello\"");
    CHECK_CONTAINS(out, "\"event\":\"from_callback\"");
    free(out);
    free(file);
    free(rule);
    free(rules);
}
