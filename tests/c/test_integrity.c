/* Nothing accepted at the call is lost or merged later without a word: message ids that would
 * merge distinct messages, and messages that only go over the size limit once the runtime has
 * stamped them (ids, timestamp, context) or a rule has grown them. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "tally.h"
#include "util.h"

static long long sqlite_count(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    long long n = -1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static tally_t *open_sqlite(const char *db, const char *rules, const char *mapping)
{
    tally_config *c = tally_config_new();
    char dests[1024];
    snprintf(dests, sizeof dests, "[{\"type\":\"sqlite\",\"path\":\"%s\"%s%s%s}]", db, mapping ? ",\"mapping\":\"" : "",
             mapping ? mapping : "", mapping ? "\"" : "");
    unlink(db);
    tally_config_set(c, "destinations", dests);
    tally_config_set(c, "log_level", "off");
    if (rules) tally_config_set(c, "rules", rules);
    tally_t *t = NULL;
    if (tally_open(c, &t) != TALLY_OK) fprintf(stderr, "open: %s\n", tally_errmsg(NULL));
    tally_config_free(c);
    return t;
}

static int send_with_id(tally_t *t, const char *id, const char *event)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "{\"type\":\"track\",\"event\":\"%s\",\"messageId\":\"%s\"}", event, id);
    return tally_send(t, msg);
}

/* ---- messageId ---- */

TEST(empty_message_id_is_refused_so_three_messages_do_not_become_one_row)
{
    char *db = tu_path("empty-id.db");
    tally_t *t = open_sqlite(db, NULL, NULL);
    REQUIRE(t);
    const char *events[] = {"First", "Second", "Third"};
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(send_with_id(t, "", events[i]), TALLY_EINVAL);
        CHECK_CONTAINS(tally_errmsg(t), "messageId: must not be empty");
    }
    /* the same messages without an id get one each: three rows */
    for (int i = 0; i < 3; i++) {
        char msg[128];
        snprintf(msg, sizeof msg, "{\"type\":\"track\",\"event\":\"%s\"}", events[i]);
        CHECK_EQ_INT(tally_send(t, msg), TALLY_OK);
    }
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(sqlite_count(db, "SELECT count(DISTINCT message_id) FROM events"), 3);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"rejected\":3,");
    tally_free(stats);
    tally_close(t, 1000);
    free(db);
}

TEST(blank_overlong_and_control_character_message_ids_are_refused)
{
    char *out = tu_path("bad-ids.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(send_with_id(t, "   ", "Blank"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "messageId: must not be only whitespace");
    CHECK_EQ_INT(send_with_id(t, " id-1", "Padded"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "messageId: must not begin or end with whitespace");
    CHECK_EQ_INT(send_with_id(t, "id\\t1", "Tab"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "messageId: control character at byte 2");
    char id[TALLY_MAX_MESSAGE_ID_BYTES + 2];
    memset(id, 'a', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    CHECK_EQ_INT(send_with_id(t, id, "Long"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "messageId: 129 bytes, over the 128-byte limit");
    id[TALLY_MAX_MESSAGE_ID_BYTES] = '\0'; /* exactly at the limit: fine */
    CHECK_EQ_INT(send_with_id(t, id, "Long Enough"), TALLY_OK);
    CHECK_EQ_INT(send_with_id(t, "a b", "Inner Space"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 2);
    tally_close(t, 1000);
    free(out);
}

static char *rules_dir(const char *name, const char *body)
{
    char *dir = tu_path("rules-integrity");
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(body, f);
        fclose(f);
    }
    return dir;
}

/* A rule's result is checked like a caller's message: blanking the id is the rule's error. */
TEST(rule_that_blanks_the_message_id_does_not_merge_messages)
{
    char *dir = rules_dir("10_blank.lua", "return { name = 'blank', process = function(m) m.messageId = '' return m end }\n");
    char *db = tu_path("blank-rule.db");
    tally_t *t = open_sqlite(db, dir, NULL);
    REQUIRE(t);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(tally_track(t, "Blanked", NULL), TALLY_OK);
    tally_flush(t, 5000);
    CHECK_EQ_INT(sqlite_count(db, "SELECT count(*) FROM events WHERE message_id = ''"), 0);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"rule_dropped\":3,"); /* fail closed: dropped, and counted */
    tally_free(stats);
    tally_close(t, 1000);
    unlink(db);
    free(db);
    char path[600];
    snprintf(path, sizeof path, "%s/10_blank.lua", dir);
    unlink(path);
    free(dir);
}

/* A mapping's payloads are not messages; one that gives them all an empty id must still get a
 * row each in the sqlite destination. */
TEST(mapping_payloads_with_an_empty_id_get_a_row_each)
{
    char *dir = rules_dir("90_noid.lua", "return { name = 'noid', stage = 'destination', map = function(m)\n"
                                         "  return { type = m.type, event = m.event, messageId = '' } end }\n");
    char *db = tu_path("noid-map.db");
    tally_t *t = open_sqlite(db, dir, "noid");
    REQUIRE(t);
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(tally_track(t, "Mapped", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(sqlite_count(db, "SELECT count(*) FROM events WHERE event = 'Mapped'"), 3);
    tally_close(t, 1000);
    free(db);
    char path[600];
    snprintf(path, sizeof path, "%s/90_noid.lua", dir);
    unlink(path);
    free(dir);
}
