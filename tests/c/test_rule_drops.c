/* Messages rules drop are counted in the store, per rule and reason class, so `tally inspect`
 * shows them after the process has exited (issue 15, Deliver 2): tallies kept only in memory
 * (tally_stats) vanished with the process, and the store's report knew nothing of them. */
#include <errno.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
#include "store.h"
#include "tally.h"
#include "util.h"

/* A rules folder: "spam" drops Spam events itself (returns nil); "gate" fails on every purchase,
 * fail closed, and the breaker disables it after `rule_breaker` failures. */
static char *drop_rules(void)
{
    return tf_rules_dir("drop-rules",
        "10_spam.lua", "return { name = 'spam', process = function(m) if m.event == 'Spam' then return nil end return m end }\n",
        "20_gate.lua", "return { name = 'gate', types = {'track'}, process = function(m)\n"
                       "  if m.event == 'Purchase' then error('plan check broke') end return m end }\n",
        NULL);
}

static tally_t *open_store(const char *path, const char *rules, const char *out)
{
    return tf_open("out", out, "store", path, "rules", rules, "rule_breaker", "3", NULL);
}

/* Spam x2 (dropped by "spam"), Purchase x6 (3 failures, then disabled), then a track the disabled
 * gate drops too and an identify, not its type, that passes. */
static void send_mix(tally_t *t)
{
    CHECK_EQ_INT(tally_track(t, "Spam", NULL), TALLY_OK);
    for (int i = 0; i < 6; i++) CHECK_EQ_INT(tally_track(t, "Purchase", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "Spam", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "Viewed", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_identify(t, "u1", NULL), TALLY_OK);
}

static char *report(const char *path)
{
    tly_err err;
    char *r;
    if (store_report(path, &r, &err) != TALLY_OK) fprintf(stderr, "store_report: %s\n", err.msg);
    return r;
}

TEST(rule_drops_outlive_the_process_in_the_store_report)
{
    char *rules = drop_rules(), *path = tu_path("drops.db"), *out = tu_path("drops.ndjson");
    unlink(path);
    unlink(out);
    tally_t *t = open_store(path, rules, out);
    REQUIRE(t);
    send_mix(t);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1); /* only the identify passed */
    char *r = report(path);
    REQUIRE(r);
    CHECK_CONTAINS(r, "\"rule_drops\":[{\"rule\":\"gate\",\"class\":\"disabled\",\"n\":4},"
                      "{\"rule\":\"gate\",\"class\":\"failed_closed\",\"n\":3},"
                      "{\"rule\":\"spam\",\"class\":\"by_rule\",\"n\":2}]");
    free(r);
    /* counts add up over runs: the new runtime's gate is enabled again and fails three times */
    t = open_store(path, rules, out);
    REQUIRE(t);
    send_mix(t);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    r = report(path);
    REQUIRE(r);
    CHECK_CONTAINS(r, "\"rule_drops\":[{\"rule\":\"gate\",\"class\":\"disabled\",\"n\":8},"
                      "{\"rule\":\"gate\",\"class\":\"failed_closed\",\"n\":6},"
                      "{\"rule\":\"spam\",\"class\":\"by_rule\",\"n\":4}]");
    free(r);
    free(rules);
    free(path);
    free(out);
}

/* A rule-drop count goes through the store as one row per drain, not one per message: 500 drops
 * in one run add up to one sum, whatever the number of rows that carried them. */
TEST(many_rule_drops_sum_exactly)
{
    char *rules = drop_rules(), *path = tu_path("many.db"), *out = tu_path("many.ndjson");
    unlink(path);
    unlink(out);
    tally_t *t = open_store(path, rules, out);
    REQUIRE(t);
    for (int i = 0; i < 500; i++) CHECK_EQ_INT(tu_track_waiting(t, "Spam", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    char *r = report(path);
    REQUIRE(r);
    CHECK_CONTAINS(r, "\"rule_drops\":[{\"rule\":\"spam\",\"class\":\"by_rule\",\"n\":500}]");
    free(r);
    free(rules);
    free(path);
    free(out);
}

TEST(store_without_drops_reports_an_empty_list)
{
    char *path = tu_path("nodrops.db"), *out = tu_path("nodrops.ndjson");
    unlink(path);
    tally_t *t = tu_open_file(out, "store", path, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    char *r = report(path);
    REQUIRE(r);
    CHECK_CONTAINS(r, "\"rule_drops\":[]");
    free(r);
    free(path);
    free(out);
}

/* A store written before the rule_drops table: inspect reads it as no drops (it opens read-only,
 * so it cannot add the table), and the runtime adds the table when it opens the store. */
TEST(store_from_before_rule_drops_is_read_and_upgraded)
{
    char *rules = drop_rules(), *path = tu_path("pre-drops.db"), *out = tu_path("pre-drops.ndjson");
    unlink(path);
    sqlite3 *db = NULL;
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db,
                         "PRAGMA journal_mode=WAL;"
                         "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;"
                         "CREATE TABLE dests(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);"
                         "CREATE TABLE queue(id INTEGER PRIMARY KEY, dest INTEGER NOT NULL, body BLOB NOT NULL,"
                         " n INTEGER NOT NULL DEFAULT 1);"
                         "CREATE TABLE dead(id INTEGER PRIMARY KEY, dest INTEGER NOT NULL, body BLOB NOT NULL,"
                         " status INTEGER, reason TEXT, at INTEGER);"
                         "CREATE TABLE counters(dest INTEGER NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,"
                         " PRIMARY KEY(dest, name)) WITHOUT ROWID;"
                         "INSERT INTO dests VALUES (1, 'gone');"
                         "INSERT INTO counters VALUES (1, 'delivered', 7);",
                         NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    char *r = report(path);
    REQUIRE(r);
    CHECK_CONTAINS(r, "\"delivered\":7");
    CHECK_CONTAINS(r, "\"rule_drops\":[]");
    free(r);
    tally_t *t = open_store(path, rules, out);
    REQUIRE(t);
    send_mix(t);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    r = report(path);
    REQUIRE(r);
    CHECK_CONTAINS(r, "\"delivered\":7");
    CHECK_CONTAINS(r, "{\"rule\":\"gate\",\"class\":\"disabled\",\"n\":4}");
    free(r);
    free(rules);
    free(path);
    free(out);
}

/* tally_track, retried while the intake is full (a burst outruns the processor) until it stays full */
static int track_retrying(tally_t *t, const char *event, const char *props)
{
    int rc, tries = 0;
    while ((rc = tally_track(t, event, props)) == TALLY_EFULL && tries++ < 20000) sched_yield();
    return rc;
}

/* A commit that fails (disk full) is rolled back whole, drop counts included: the worker holds
 * them with the messages and writes them again once space returns, so none is lost or doubled. */
TEST(rule_drops_in_a_commit_that_failed_on_a_full_disk_are_written_once_space_returns)
{
    char *dir = tu_path("drops-full"), *rules = drop_rules(), *out = tu_path("drops-full.ndjson");
    mkdir(dir, 0755);
    if (mount("tmpfs", dir, "tmpfs", 0, "size=16m") != 0) {
        printf("  skipped: cannot mount tmpfs (%s): needs root\n", strerror(errno));
        free(dir);
        free(rules);
        free(out);
        return;
    }
    char path[512], filler[512];
    snprintf(path, sizeof path, "%s/tally.db", dir);
    snprintf(filler, sizeof filler, "%s/filler", dir);
    unlink(out);
    tally_config *c = tally_config_new();
    tally_config_set(c, "store", path);
    tally_config_set(c, "out", out);
    tally_config_set(c, "rules", rules);
    tally_config_set(c, "log_level", "error");
    tally_config_set(c, "max_queue_bytes", "262144");
    tally_config_set(c, "flush_at", "10000");
    tally_config_set(c, "flush_interval_ms", "600000");
    tally_t *t = NULL;
    REQUIRE(tally_open(c, &t) == TALLY_OK);
    tally_config_free(c);
    FILE *f = fopen(filler, "w");
    REQUIRE(f);
    char block[4096];
    memset(block, 'f', sizeof block);
    while (fwrite(block, 1, sizeof block, f) == sizeof block) {}
    fclose(f);
    char props[2100];
    memset(props, 0, sizeof props);
    int n = snprintf(props, sizeof props, "{\"pad\":\"");
    memset(props + n, 'y', 2000);
    strcpy(props + n + 2000, "\"}");
    int spam = 0, rc = TALLY_OK;
    for (int i = 0; i < 20000 && rc != TALLY_EFULL; i++) {
        rc = track_retrying(t, "Disk Full", props);
        if (rc == TALLY_OK && (rc = track_retrying(t, "Spam", NULL)) == TALLY_OK) spam++;
    }
    CHECK_EQ_INT(rc, TALLY_EFULL);
    CHECK(spam > 0);
    CHECK(tu_stat(t, NULL, "store_errors") > 0); /* commits failed while drops were counted */
    unlink(filler);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    char *r = report(path);
    REQUIRE(r);
    char want[128];
    snprintf(want, sizeof want, "\"rule_drops\":[{\"rule\":\"spam\",\"class\":\"by_rule\",\"n\":%d}]", spam);
    CHECK_CONTAINS(r, want);
    free(r);
    umount(dir);
    free(dir);
    free(rules);
    free(out);
}
