/* Consent (issue 17 items 1-3): preferences merged by tally_consent, stamped on messages in order
 * with them and kept across restarts; destinations with consent categories get only what their
 * categories allow; consent_required holds messages until the first decision, which releases or
 * purges them; revocation purges queued and dead-lettered rows; opt-out keeps nothing; server mode
 * goes by each message's own consent or consent_default; bad input changes nothing.
 *
 * Three file destinations: "a" needs analytics, "b" needs advertising, "c" needs nothing. What
 * reached each is read from its NDJSON file, what waits from the store file. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
#include "json.h"
#include "tally.h"
#include "util.h"

/* a needs analytics, b advertising, c nothing */
static const char *const needs[] = {"\"analytics\"", "[\"advertising\"]", NULL};

/* Opens on f's store and destinations; extra key/value pairs end with NULL (at most 2 pairs). */
static tally_t *open_files(tf_files *f, const char *k1, const char *v1, const char *k2, const char *v2)
{
    return tf_files_open(f, "flush_interval_ms", "3600000", "flush_at", "1000", k1, v1, k2, v2, NULL);
}

/* SQL answering one integer, on the store file (read-only; the runtime may hold it open). */
static long long db_int(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

/* Messages waiting in the store for destination `name`. */
static long long queued_for(const char *db, const char *name)
{
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT coalesce(sum(n), 0) FROM queue WHERE dest = (SELECT id FROM dests WHERE name LIKE '%%-%s.ndjson')",
             name);
    return db_int(db, sql);
}

static long long dead_for(const char *db, const char *name)
{
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM dead WHERE dest = (SELECT id FROM dests WHERE name LIKE '%%-%s.ndjson')", name);
    return db_int(db, sql);
}

/* The preferences line n of path was stamped with, as JSON text ("" when none), and its event. */
static void stamped(const char *path, int n, char *prefs, size_t cap, char *event, size_t ecap)
{
    prefs[0] = event[0] = '\0';
    char *line = tu_line(path, n);
    if (!line) return;
    tj_arena *a = tj_arena_new();
    tj_value *m, *p;
    if (!tj_parse(a, line, strlen(line), &m, NULL)) {
        p = tj_object_get(tj_object_get(tj_object_get(m, "context"), "consent"), "categoryPreferences");
        if (p) {
            tbuf b = TBUF_INIT;
            tj_write(&b, p);
            snprintf(prefs, cap, "%.*s", (int)b.len, b.data);
            tbuf_free(&b);
        }
        const char *e = tu_jstr(m, "event");
        snprintf(event, ecap, "%s", e ? e : "");
    }
    tj_arena_free(a);
    free(line);
}

static void track_n(tally_t *t, const char *event, int n)
{
    for (int i = 0; i < n; i++) CHECK_EQ_INT(tally_track(t, event, NULL), TALLY_OK);
}

TEST(held_until_the_first_decision_then_released_to_granted_and_purged_for_the_others)
{
    tf_files f;
    tf_files_init(&f, "held", 3, needs);
    tally_t *t = open_files(&f, "consent_required", "true", NULL, NULL);
    REQUIRE(t);
    track_n(t, "Before", 5);
    /* a flush does not wait for held messages: they are kept for the decision, not delivered */
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]) + tf_lines(f.out[1]) + tf_lines(f.out[2]), 0);
    CHECK_EQ_INT(queued_for(f.db, "a"), 5);
    CHECK_EQ_INT(queued_for(f.db, "b"), 5);
    CHECK_EQ_INT(queued_for(f.db, "c"), 5);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true,\"advertising\":false}"), TALLY_OK);
    track_n(t, "After", 1);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), 6);
    CHECK_EQ_INT(tf_lines(f.out[1]), 0);
    CHECK_EQ_INT(tf_lines(f.out[2]), 6);
    CHECK_EQ_INT(queued_for(f.db, "b"), 0);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_purged"), 5);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_withheld"), 1);
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_purged"), 0);
    char prefs[256], ev[64];
    stamped(f.out[0], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(ev, "Before");
    CHECK_STR(prefs, ""); /* accepted before any decision: no preferences were in force */
    stamped(f.out[0], 5, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(ev, "After");
    CHECK_STR(prefs, "{\"analytics\":true,\"advertising\":false}");
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(held_messages_stay_held_across_a_restart_until_the_decision)
{
    tf_files f;
    tf_files_init(&f, "heldrestart", 3, needs);
    tally_t *t = open_files(&f, "consent_required", "true", NULL, NULL);
    REQUIRE(t);
    track_n(t, "Before", 3);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(queued_for(f.db, "c"), 3);
    t = open_files(&f, "consent_required", "true", NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[2]), 0);
    CHECK_EQ_INT(tally_consent(t, "{\"advertising\":true}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), 0);
    CHECK_EQ_INT(tf_lines(f.out[1]), 3);
    CHECK_EQ_INT(tf_lines(f.out[2]), 3);
    CHECK_EQ_INT(queued_for(f.db, "a"), 0);
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_purged"), 3);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

/* Dead letters are made the way a previous run would have left them: rows in `dead`, written now
 * (an older `at` would be pruned by dead_letter_max_age_s before the revocation could purge it). */
static void add_dead(const char *db, const char *name, int n)
{
    sqlite3 *h = NULL;
    REQUIRE(sqlite3_open(db, &h) == SQLITE_OK);
    for (int i = 0; i < n; i++) {
        char sql[300];
        snprintf(sql, sizeof sql, "INSERT INTO dead(dest, body, status, reason, at) VALUES ((SELECT id FROM dests "
                 "WHERE name LIKE '%%-%s.ndjson'), '{\"event\":\"Dead\"}', 400, 'refused', CAST(unixepoch('subsec') * 1000 AS INTEGER))", name);
        CHECK_EQ_INT(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    sqlite3_close(h);
}

TEST(revocation_purges_queued_and_dead_rows_of_the_destinations_that_need_it_only)
{
    tf_files f;
    tf_files_init(&f, "revoke", 3, needs);
    tally_t *t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true,\"advertising\":true}"), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    add_dead(f.db, "a", 2);
    add_dead(f.db, "b", 3);
    add_dead(f.db, "c", 1);
    /* the preferences come back from the store: both granted */
    t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    track_n(t, "Queued", 4);
    CHECK_EQ_INT(tally_consent(t, "{\"advertising\":false}"), TALLY_OK);
    track_n(t, "After", 2);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), 6);
    CHECK_EQ_INT(tf_lines(f.out[1]), 0);
    CHECK_EQ_INT(tf_lines(f.out[2]), 6);
    CHECK_EQ_INT(dead_for(f.db, "a"), 2);
    CHECK_EQ_INT(dead_for(f.db, "b"), 0);
    CHECK_EQ_INT(dead_for(f.db, "c"), 1);
    CHECK_EQ_INT(queued_for(f.db, "b"), 0);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_purged"), 4 + 3);
    CHECK_EQ_INT(tu_stat(t, "-b.ndjson", "consent_withheld"), 2);
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_purged"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    /* counted in the store too, for tally inspect */
    CHECK_EQ_INT(db_int(f.db, "SELECT value FROM counters WHERE name = 'consent_purged' AND dest = "
                              "(SELECT id FROM dests WHERE name LIKE '%-b.ndjson')"), 7);
    tf_files_free(&f);
}

TEST(preferences_persist_across_close_and_open_and_merge)
{
    tf_files f;
    tf_files_init(&f, "persist", 3, needs);
    tally_t *t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":false,\"advertising\":true}"), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    track_n(t, "One", 1);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true}"), TALLY_OK);
    track_n(t, "Two", 1);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    char prefs[256], ev[64];
    stamped(f.out[2], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(prefs, "{\"analytics\":false,\"advertising\":true}");
    stamped(f.out[2], 1, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(prefs, "{\"analytics\":true,\"advertising\":true}");
    CHECK_EQ_INT(tf_lines(f.out[0]), 1);
    stamped(f.out[0], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(ev, "Two");
    CHECK_EQ_INT(tf_lines(f.out[1]), 2);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(messages_carry_the_preferences_in_force_when_they_were_accepted)
{
    tf_files f;
    tf_files_init(&f, "order", 3, needs);
    tally_t *t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    /* no flush in between: only the order of the calls decides (two categories: with only one,
     * setting it false would be an opt-out) */
    CHECK_EQ_INT(tally_track(t, "e0", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true,\"advertising\":true}"), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "e1", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":false}"), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "e2", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true}"), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "e3", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    static const char *const want[] = {"", "{\"analytics\":true,\"advertising\":true}",
                                       "{\"analytics\":false,\"advertising\":true}",
                                       "{\"analytics\":true,\"advertising\":true}"};
    REQUIRE(tf_lines(f.out[2]) == 4);
    for (int i = 0; i < 4; i++) {
        char prefs[256], ev[64], name[16];
        stamped(f.out[2], i, prefs, sizeof prefs, ev, sizeof ev);
        snprintf(name, sizeof name, "e%d", i);
        CHECK_STR(ev, name);
        CHECK_STR(prefs, want[i]);
    }
    /* "a" had e1 queued when analytics was revoked: purged, and e3 reached it */
    CHECK_EQ_INT(tf_lines(f.out[0]), 1);
    char prefs[256], ev[64];
    stamped(f.out[0], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(ev, "e3");
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_withheld"), 2); /* e0 (undecided), e2 */
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_purged"), 1);   /* e1 */
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(a_callers_own_consent_object_is_kept_and_decides)
{
    tf_files f;
    tf_files_init(&f, "own", 3, needs);
    tally_t *t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true,\"advertising\":true}"), TALLY_OK);
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"Own\",\"context\":{\"consent\":{"
                               "\"categoryPreferences\":{\"analytics\":false,\"advertising\":true,\"x\":true}}}}"),
                 TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), 0);
    CHECK_EQ_INT(tf_lines(f.out[1]), 1);
    char prefs[256], ev[64];
    stamped(f.out[1], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(prefs, "{\"analytics\":false,\"advertising\":true,\"x\":true}");
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

static void server_mode(const char *deflt, int a_without, int a_with_grant)
{
    tf_files f;
    tf_files_init(&f, deflt, 3, needs);
    tally_t *t = open_files(&f, "mode", "server", "consent_default", deflt);
    REQUIRE(t);
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"Without\",\"userId\":\"u\"}"), TALLY_OK);
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"Granted\",\"userId\":\"u\",\"context\":{\"consent\":{"
                               "\"categoryPreferences\":{\"analytics\":true}}}}"), TALLY_OK);
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"Denied\",\"userId\":\"u\",\"context\":{\"consent\":{"
                               "\"categoryPreferences\":{\"analytics\":false}}}}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), a_without + a_with_grant);
    CHECK_EQ_INT(tf_lines(f.out[2]), 3);
    char prefs[256], ev[64];
    stamped(f.out[0], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(ev, a_without ? "Without" : "Granted");
    stamped(f.out[2], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(prefs, ""); /* server mode stamps nothing: the device has no preferences */
    /* the device's preferences are not a server's */
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "server mode");
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(server_mode_without_consent_follows_consent_default_grant) { server_mode("grant", 1, 1); }

TEST(server_mode_without_consent_follows_consent_default_deny) { server_mode("deny", 0, 1); }

TEST(opt_out_keeps_nothing_new_purges_the_queue_and_opting_in_resumes)
{
    tf_files f;
    tf_files_init(&f, "optout", 3, needs);
    tally_t *t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true}"), TALLY_OK);
    track_n(t, "Queued", 3);
    CHECK_EQ_INT(tally_consent(t, "false"), TALLY_OK);
    track_n(t, "Out", 4); /* accepted: the caller is not told, only counted */
    CHECK_EQ_INT(tally_identify(t, "someone", "{\"email\":\"x@example.com\"}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]) + tf_lines(f.out[1]) + tf_lines(f.out[2]), 0);
    CHECK_EQ_INT(db_int(f.db, "SELECT count(*) FROM queue"), 0);
    CHECK_EQ_INT(tu_stat(t, NULL, "opted_out"), 5);
    CHECK_EQ_INT(tu_stat(t, "-a.ndjson", "consent_purged"), 3);
    CHECK_EQ_INT(tu_stat(t, "-c.ndjson", "consent_purged"), 3);
    char *id = NULL;
    CHECK_EQ_INT(tally_identity(t, &id), TALLY_OK);
    CHECK(id && !strstr(id, "someone")); /* not even identity changes are kept */
    tally_free(id);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":true}"), TALLY_OK);
    track_n(t, "Back", 1);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[0]), 1);
    CHECK_EQ_INT(tf_lines(f.out[2]), 1);
    char prefs[256], ev[64];
    stamped(f.out[0], 0, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(ev, "Back");
    /* the shorthand set every category known false: the one set before and the destinations' */
    CHECK_STR(prefs, "{\"analytics\":true,\"advertising\":false}");
    CHECK_EQ_INT(tu_stat(t, NULL, "opted_out"), 5);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(opt_out_persists_across_a_restart)
{
    tf_files f;
    tf_files_init(&f, "optout2", 3, needs);
    tally_t *t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":false,\"advertising\":false}"), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    track_n(t, "Out", 2);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[2]), 0);
    CHECK_EQ_INT(tu_stat(t, NULL, "opted_out"), 2);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(bad_consent_is_refused_naming_the_field_and_the_limit_and_changes_nothing)
{
    tf_files f;
    tf_files_init(&f, "bad", 3, needs);
    tally_t *t = open_files(&f, "consent_required", "true", NULL, NULL);
    REQUIRE(t);
    track_n(t, "Held", 2);
    static const struct { const char *json, *msg; } bad[] = {
        {"[true]", "consent: expected an object of category id -> true/false"},
        {"true", "consent: expected an object"},
        {"{\"analytics\":1}", "consent.analytics: expected true or false"},
        {"{\"analytics\":\"yes\"}", "consent.analytics: expected true or false"},
        {"{\"\":true}", "consent: a category id must not be empty"},
        {"{\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":true}", "over the 64-byte limit"},
        {"{\"analytics\":tru", "consent: invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_EQ_INT(tally_consent(t, bad[i].json), TALLY_EINVAL);
        CHECK_CONTAINS(tally_errmsg(t), bad[i].msg);
    }
    CHECK_EQ_INT(tally_consent(t, NULL), TALLY_EINVAL);
    /* over the size limit, and over the category limit once merged */
    char *huge = malloc(5000);
    REQUIRE(huge);
    memset(huge, ' ', 4999);
    huge[0] = '{';
    huge[4998] = '}';
    huge[4999] = '\0';
    CHECK_EQ_INT(tally_consent(t, huge), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "over the 4096-byte limit");
    free(huge);
    char many[2048] = "{";
    for (int i = 0; i < 40; i++) snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"k%d\":true", i ? "," : "", i);
    strcat(many, "}");
    CHECK_EQ_INT(tally_consent(t, many), TALLY_OK);
    /* a second, different set of 40 keys would make 80 */
    for (char *p = many; (p = strstr(p, "\"k")) != NULL; p++) p[1] = 'K';
    CHECK_EQ_INT(tally_consent(t, many), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "over the limit of 64");
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    /* the refused calls changed nothing: the held messages were released by the one good call
     * (which grants neither category), and what it merged is all that is stamped */
    CHECK_EQ_INT(tf_lines(f.out[2]), 2);
    CHECK_EQ_INT(queued_for(f.db, "a"), 0);
    track_n(t, "After", 1);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    char prefs[2048], ev[64];
    stamped(f.out[2], 2, prefs, sizeof prefs, ev, sizeof ev);
    CHECK(strstr(prefs, "\"k39\":true") != NULL);
    CHECK(strstr(prefs, "\"K") == NULL);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(a_refused_call_leaves_held_messages_held)
{
    tf_files f;
    tf_files_init(&f, "badheld", 3, needs);
    tally_t *t = open_files(&f, "consent_required", "true", NULL, NULL);
    REQUIRE(t);
    track_n(t, "Held", 3);
    CHECK_EQ_INT(tally_consent(t, "{\"analytics\":0}"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(queued_for(f.db, "a"), 3);
    CHECK_EQ_INT(queued_for(f.db, "b"), 3);
    CHECK_EQ_INT(queued_for(f.db, "c"), 3);
    CHECK_EQ_INT(tf_lines(f.out[2]), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(queued_for(f.db, "c"), 3);
    tf_files_free(&f);
}

TEST(a_destinations_consent_must_be_a_category_id_or_a_list_of_them)
{
    static const struct { const char *consent, *msg; } bad[] = {
        {"1", "destinations[0].consent: expected a category id or a non-empty list of them"},
        {"[]", "destinations[0].consent: expected a category id or a non-empty list of them"},
        {"[\"a\",2]", "destinations[0].consent[1]: expected a category id (a string)"},
        {"\"\"", "destinations[0].consent: a category id must not be empty"},
        {"{\"a\":true}", "destinations[0].consent: expected a category id"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tally_config *c = tally_config_new();
        REQUIRE(c);
        char d[256];
        snprintf(d, sizeof d, "[{\"type\":\"file\",\"path\":\"x.ndjson\",\"consent\":%s}]", bad[i].consent);
        CHECK_EQ_INT(tally_config_set(c, "destinations", d), TALLY_ECONFIG);
        CHECK_CONTAINS(tally_errmsg(NULL), bad[i].msg);
        tally_config_free(c);
    }
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "consent_default", "maybe"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "consent_default: expected one of grant, deny");
    CHECK_EQ_INT(tally_config_set(c, "consent_required", "yes"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "consent_required: expected true or false");
    tally_config_free(c);
    tally_t *t = NULL;
    char *out = tu_path("x.ndjson");
    CHECK_EQ_INT(tf_open_rc(&t, "mode", "server", "consent_required", "true", "out", out, NULL), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "consent_required: only in client mode");
    CHECK(t == NULL);
    free(out);
}

/* Calls from several threads merge one after another: none is lost, whatever the interleaving. */
static void *consent_thread(void *arg)
{
    tally_t *t = arg;
    static _Atomic int next;
    int me = atomic_fetch_add(&next, 1);
    for (int i = 0; i < 50; i++) {
        char json[64];
        snprintf(json, sizeof json, "{\"t%d_%d\":true,\"analytics\":%s}", me, i % 10, i % 2 ? "true" : "false");
        if (tally_consent(t, json) != TALLY_OK) return (void *)1;
        if (tally_track(t, "Threaded", NULL) != TALLY_OK) return (void *)1;
    }
    return NULL;
}

TEST(concurrent_calls_merge_without_losing_a_category)
{
    tf_files f;
    tf_files_init(&f, "threads", 3, needs);
    tally_t *t = open_files(&f, NULL, NULL, NULL, NULL);
    REQUIRE(t);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) REQUIRE(pthread_create(&th[i], NULL, consent_thread, t) == 0);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        CHECK(rc == NULL);
    }
    CHECK_EQ_INT(tally_track(t, "Last", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tf_lines(f.out[2]), 201);
    char prefs[4096], ev[64];
    stamped(f.out[2], 200, prefs, sizeof prefs, ev, sizeof ev);
    CHECK_STR(ev, "Last");
    for (int me = 0; me < 4; me++)
        for (int k = 0; k < 10; k++) {
            char key[32];
            snprintf(key, sizeof key, "\"t%d_%d\":true", me, k);
            CHECK(strstr(prefs, key) != NULL);
        }
    /* every message "a" got was stamped with analytics true */
    for (int i = 0; i < tf_lines(f.out[0]); i++) {
        stamped(f.out[0], i, prefs, sizeof prefs, ev, sizeof ev);
        CHECK(strstr(prefs, "\"analytics\":true") != NULL);
    }
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tf_files_free(&f);
}

TEST(more_distinct_categories_than_bits_is_refused_at_open)
{
    char dests[4096] = "[", *out = tu_path("cats.ndjson");
    for (int d = 0; d < 2; d++) {
        snprintf(dests + strlen(dests), sizeof dests - strlen(dests), "%s{\"type\":\"file\",\"path\":\"%s%d\",\"consent\":[",
                 d ? "," : "", out, d);
        for (int k = 0; k < 33; k++)
            snprintf(dests + strlen(dests), sizeof dests - strlen(dests), "%s\"c%d_%d\"", k ? "," : "", d, k);
        strcat(dests, "]}");
    }
    strcat(dests, "]");
    tally_t *t = NULL;
    CHECK_EQ_INT(tf_open_rc(&t, "destinations", dests, NULL), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "destinations: consent: more than 64 distinct categories");
    CHECK(t == NULL);
    free(out);
}
