/* API conventions a new user meets first: Segment's camelCase option names work wherever a key is
 * read, a misspelt key gets a "did you mean", an endpoint copied with its /v1/batch path is not
 * doubled, a caller's timestamp must be ISO-8601, and a session never starts after its first
 * message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "collector.h"
#include "config.h"
#include "fixtures.h"
#include "harness.h"
#include "iso8601.h"
#include "json.h"
#include "tally.h"
#include "util.h"

TEST(segment_camel_case_names_set_the_snake_case_keys)
{
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "flushAt", "7"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "flushInterval", "250"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "maxRetries", "3"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "writeKey", "wk"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "host", "http://127.0.0.1:1"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "httpRequestTimeout", "1234"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "maxInFlight", "1"), TALLY_OK); /* any key, spelt camelCase */
    CHECK_EQ_INT(c->flush_at, 7);
    CHECK_EQ_INT(c->flush_interval_ms, 250);
    CHECK_EQ_INT(c->max_retries, 3);
    CHECK_STR(c->write_key, "wk");
    CHECK_STR(c->endpoint, "http://127.0.0.1:1");
    CHECK_EQ_INT(c->timeout_ms, 1234);
    CHECK_EQ_INT(c->max_in_flight, 1);
    tally_config_free(c);
}

TEST(an_alias_is_checked_like_its_key)
{
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "flushAt", "0"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "flush_at: expected an integer from 1 to 10000");
    CHECK_EQ_INT(tally_config_set(c, "host", "ftp://x"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "endpoint: expected an http:// or https:// URL");
    CHECK_EQ_INT(c->flush_at, 100);
    tally_config_free(c);
}

TEST(a_misspelt_key_names_the_nearest_one)
{
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "flush_att", "5"), TALLY_ECONFIG);
    CHECK_STR(tally_errmsg(NULL), "unknown configuration key \"flush_att\" (did you mean \"flush_at\"?)");
    CHECK_EQ_INT(tally_config_set(c, "wirteKey", "k"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "did you mean \"write_key\"?");
    /* nothing near: no guess */
    CHECK_EQ_INT(tally_config_set(c, "colour", "red"), TALLY_ECONFIG);
    CHECK_STR(tally_errmsg(NULL), "unknown configuration key \"colour\"");
    /* snake_case that is not a key stays unknown: camelCase is only another spelling of a key */
    CHECK_EQ_INT(tally_config_set(c, "flushAT", "5"), TALLY_ECONFIG);
    tally_config_free(c);
}

TEST(a_lua_config_file_takes_camel_case_keys)
{
    char *path = tu_path("camel.conf.lua");
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("return { flushAt = 9, writeKey = 'k9', flushInterval = 500 }\n", f);
    fclose(f);
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_OK);
    CHECK_EQ_INT(c->flush_at, 9);
    CHECK_STR(c->write_key, "k9");
    CHECK_EQ_INT(c->flush_interval_ms, 500);
    tally_config_free(c);
    free(path);
}

TEST(a_destination_object_takes_camel_case_keys)
{
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "destinations",
                                  "[{\"type\":\"segment\",\"writeKey\":\"k\",\"host\":\"http://127.0.0.1:1\","
                                  "\"timeoutMs\":500}]"),
                 TALLY_OK);
    REQUIRE(c->ndests == 1);
    CHECK_STR(c->dests[0], "{\"type\":\"segment\",\"write_key\":\"k\",\"endpoint\":\"http://127.0.0.1:1\","
                           "\"timeout_ms\":500}");
    tally_config_free(c);
}

/* The endpoint as Segment's docs print it ends in the path; tally adds /v1/batch itself. */
TEST(an_endpoint_ending_in_v1_batch_is_not_doubled)
{
    collector *col = collector_start(NULL);
    REQUIRE(col);
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s/v1/batch/", collector_url(col));
    tally_config *c = tally_config_new();
    REQUIRE(c);
    tally_config_set(c, "log_level", "off");
    CHECK_EQ_INT(tally_config_set(c, "writeKey", "k"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "endpoint", endpoint), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "maxRetries", "0"), TALLY_OK);
    tally_t *t = NULL;
    CHECK_EQ_INT(tally_open(c, &t), TALLY_OK);
    tally_config_free(c);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "Endpoint Checked", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(collector_accepted(col), 1);
    char *stats = NULL;
    REQUIRE(tally_stats(t, &stats) == TALLY_OK);
    CHECK_CONTAINS(stats, "\"failed\":0");
    tally_free(stats);
    tally_close(t, 1000);
    collector_stop(col);
}

TEST(timestamps_are_checked_against_iso8601_and_the_calendar)
{
    static const char *const good[] = {"2024-01-31T12:00:00.000Z", "2024-01-31T12:00:00Z", "2024-02-29T23:59:60Z",
                                       "2024-01-31T12:00:00+02:00", "2024-01-31t12:00:00.123456-05:30", NULL};
    static const char *const bad[] = {"notatime", "", "2024-01-31", "2024-01-31 12:00:00Z", "2024-01-31T12:00:00",
                                      "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-31T24:00:00Z",
                                      "2024-01-31T12:00:00.Z", "2024-01-31T12:00:00+0200", "2024-01-31T12:00:00Zjunk",
                                      "1712345678", NULL};
    for (int i = 0; good[i]; i++) {
        int ok = tly_iso8601_valid(good[i], strlen(good[i]));
        if (!ok) fprintf(stderr, "  refused: \"%s\"\n", good[i]);
        CHECK(ok);
    }
    for (int i = 0; bad[i]; i++) {
        int ok = tly_iso8601_valid(bad[i], strlen(bad[i]));
        if (ok) fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
        CHECK(!ok);
    }
}

TEST(a_caller_timestamp_that_is_not_iso8601_is_refused_naming_the_field)
{
    char *out = tu_path("ts.ndjson");
    tally_t *t = tu_open_file(out, "mode", "server", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"userId\":\"u\",\"event\":\"E\",\"timestamp\":\"notatime\"}"),
                 TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "timestamp: expected an ISO-8601 date and time");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"userId\":\"u\",\"event\":\"E\",\"timestamp\":12}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "timestamp: expected a string");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"userId\":\"u\",\"event\":\"E\","
                               "\"timestamp\":\"2024-01-31T12:00:00+02:00\"}"),
                 TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    tally_close(t, 1000);
    free(out);
}

/* A rule that keeps the processor busy for a few ms on "Slow" events, so the session-start
 * record behind it is processed well after the call that made it. The session must start at the
 * call, not when the processor got to it: else started_at is after the session's first message,
 * whose timestamp is its call's time. Counted over many rounds; each round with the defect fails. */
TEST(a_session_never_starts_after_its_first_message)
{
    char *rule = tu_path("slow.lua"), *out = tu_path("sessions.ndjson");
    FILE *f = fopen(rule, "w");
    REQUIRE(f);
    fputs("return { name = 'slow', process = function(m, ctx)\n"
          "  if m.event == 'Slow' then local x = 0; for i = 1, 400000 do x = x + i end end\n"
          "  return m end }\n", f);
    fclose(f);
    tally_t *t = tu_open_file(out, "rules", rule, "lua_instructions", "100000000", NULL);
    REQUIRE(t);
    enum { ROUNDS = 20 };
    for (int i = 0; i < ROUNDS; i++) {
        REQUIRE(tally_track(t, "Slow", NULL) == TALLY_OK);
        REQUIRE(tally_session_start(t) == TALLY_OK);
        REQUIRE(tally_track(t, "First", NULL) == TALLY_OK);
    }
    REQUIRE(tally_flush(t, 30000) == TALLY_OK);
    int lines = tu_count_lines(out), firsts = 0, late = 0;
    for (int n = 0; n < lines; n++) {
        char *line = tu_line(out, n);
        tj_arena *a = tj_arena_new();
        tj_value *m;
        tj_error err;
        if (line && a && !tj_parse(a, line, strlen(line), &m, &err) &&
            !strcmp(tj_object_get(m, "event")->u.str.s, "First")) {
            const tj_value *s = tj_object_get(tj_object_get(m, "context"), "session");
            const char *started = tj_object_get(s, "started_at")->u.str.s, *ts = tj_object_get(m, "timestamp")->u.str.s;
            firsts++;
            /* same fixed ISO-8601 UTC form: text order is time order */
            if (strcmp(started, ts) > 0) {
                late++;
                fprintf(stderr, "  session started_at %s after its first message at %s\n", started, ts);
            }
        }
        tj_arena_free(a);
        free(line);
    }
    CHECK_EQ_INT(firsts, ROUNDS);
    CHECK_EQ_INT(late, 0);
    tally_close(t, 1000);
    free(rule);
    free(out);
}
