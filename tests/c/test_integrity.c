/* Nothing accepted at the call is lost or merged later without a word: message ids that would
 * merge distinct messages, and messages that only go over the size limit once the runtime has
 * stamped them (ids, timestamp, context) or a rule has grown them. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
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

/* A handle whose one destination is the sqlite table in db (removed first), through `mapping` if
 * given, with the rules folder if given. */
static tally_t *open_sqlite(const char *db, const char *rules, const char *mapping)
{
    char dests[1024];
    snprintf(dests, sizeof dests, "[{\"type\":\"sqlite\",\"path\":\"%s\"%s%s%s}]", db, mapping ? ",\"mapping\":\"" : "",
             mapping ? mapping : "", mapping ? "\"" : "");
    unlink(db);
    return tf_open("destinations", dests, "log_level", "off", rules ? "rules" : NULL, rules, NULL);
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

#define rules_dir(name, body) tf_rules_dir("rules-integrity", name, body, NULL)

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

/* ---- the 32 KB limit holds for what is written, and the caller hears it at the call ---- */

/* A handle writing to out (removed first), logging to the fixtures' capture, which is emptied
 * once it is open; one optional extra key/value pair. */
static tally_t *open_capturing(const char *out, const char *k1, const char *v1)
{
    unlink(out);
    tally_t *t = tf_open("out", out, "log_level", "warn", k1, v1, NULL);
    tf_log_reset();
    return t;
}

static size_t longest_line(const char *path)
{
    char *text = tu_read_file(path, NULL);
    size_t best = 0;
    for (char *p = text; p && *p;) {
        char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > best) best = n;
        p = e ? e + 1 : p + n;
    }
    free(text);
    return best;
}

/* The largest pad for which `call` is accepted (binary search; accepted calls are queued). */
static size_t largest_accepted(tally_t *t, int (*call)(tally_t *, size_t), size_t lo, size_t hi)
{
    while (lo + 1 < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int rc = call(t, mid);
        if (rc == TALLY_OK) lo = mid;
        else hi = mid;
    }
    return lo;
}

static char *big_props;
static int track_padded(tally_t *t, size_t pad)
{
    tu_pad_props(big_props, pad);
    return tally_track(t, "Padded", big_props);
}

TEST(message_under_32k_at_the_call_but_over_once_stamped_is_refused_at_the_call)
{
    char *out = tu_path("stamped.ndjson");
    tally_t *t = open_capturing(out, NULL, NULL);
    REQUIRE(t);
    big_props = malloc(TALLY_MAX_MESSAGE_BYTES + 64);
    REQUIRE(big_props);
    /* the arguments are 32,700 bytes: under the limit, but stamping adds ~300 */
    CHECK_EQ_INT(track_padded(t, 32700 - 11), TALLY_ETOOBIG);
    CHECK_CONTAINS(tally_errmsg(t), "once stamped");
    CHECK_CONTAINS(tally_errmsg(t), "over the 32768-byte limit");
    size_t pad = largest_accepted(t, track_padded, 1000, 32700);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    /* everything accepted was written; nothing was dropped after the call */
    CHECK_EQ_INT(tu_stat(t, NULL, "invalid"), 0);
    CHECK_EQ_INT(tu_stat(t, NULL, "oversize"), 0);
    CHECK_EQ_INT(tu_count_lines(out), tu_stat(t, NULL, "accepted"));
    CHECK(tu_stat(t, NULL, "accepted") >= 1);
    /* and the reserve is honest, not a guess: the largest accepted message, as written, comes
     * within the 20 digits kept for the session index of the limit */
    size_t longest = longest_line(out);
    CHECK(longest <= TALLY_MAX_MESSAGE_BYTES);
    CHECK(longest + 24 >= TALLY_MAX_MESSAGE_BYTES);
    if (longest + 24 < TALLY_MAX_MESSAGE_BYTES) fprintf(stderr, "  pad %zu wrote %zu bytes\n", pad, longest);
    tally_close(t, 1000);
    free(big_props);
    free(out);
}

/* Escapes are measured as written: 6,000 control bytes are 36,000 bytes of JSON. */
TEST(event_name_of_control_characters_is_measured_as_escaped)
{
    char *out = tu_path("escaped.ndjson");
    tally_t *t = open_capturing(out, NULL, NULL);
    REQUIRE(t);
    char *event = malloc(6001);
    REQUIRE(event);
    memset(event, 0x01, 6000);
    event[6000] = '\0';
    CHECK_EQ_INT(tally_track(t, event, NULL), TALLY_ETOOBIG);
    CHECK_CONTAINS(tally_errmsg(t), "once stamped");
    memset(event, '"', 6000); /* 2 bytes each: fits */
    CHECK_EQ_INT(tally_track(t, event, NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    CHECK_EQ_INT(tu_stat(t, NULL, "invalid") + tu_stat(t, NULL, "oversize"), 0);
    tally_close(t, 1000);
    free(event);
    free(out);
}

static int send_padded(tally_t *t, size_t pad)
{
    char *msg = malloc(pad + 256);
    snprintf(msg, pad + 256, "{\"type\":\"track\",\"event\":\"Sent\",\"context\":{\"ip\":\"10.0.0.1\"},\"properties\":{\"pad\":\"%0*d\"}}",
             (int)pad, 0);
    int rc = tally_send(t, msg);
    free(msg);
    return rc;
}

TEST(sent_message_that_only_overflows_once_stamped_is_refused_at_the_call)
{
    char *out = tu_path("sent-stamped.ndjson");
    tally_t *t = open_capturing(out, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(send_padded(t, 32600), TALLY_ETOOBIG); /* 32,700 bytes given */
    CHECK_CONTAINS(tally_errmsg(t), "once stamped");
    largest_accepted(t, send_padded, 1000, 32600);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, NULL, "oversize") + tu_stat(t, NULL, "invalid"), 0);
    CHECK_EQ_INT(tu_count_lines(out), tu_stat(t, NULL, "accepted"));
    size_t longest = longest_line(out);
    CHECK(longest <= TALLY_MAX_MESSAGE_BYTES && longest + 24 >= TALLY_MAX_MESSAGE_BYTES);
    tally_close(t, 1000);
    free(out);
}

/* The userId an identify sets is stamped on every later message: the very next call must
 * reserve it, before the processor has even applied the identify. */
TEST(long_user_id_from_an_identify_is_reserved_by_the_very_next_call)
{
    char *out = tu_path("long-user.ndjson");
    tally_t *t = open_capturing(out, NULL, NULL);
    REQUIRE(t);
    big_props = malloc(TALLY_MAX_MESSAGE_BYTES + 64);
    REQUIRE(big_props);
    char user[4001];
    memset(user, 'u', 4000);
    user[4000] = '\0';
    size_t pad = 32768 - 600 - 11; /* fits with the stamps, not with a 4,000-byte userId too */
    CHECK_EQ_INT(track_padded(t, pad), TALLY_OK);
    CHECK_EQ_INT(tally_identify(t, user, NULL), TALLY_OK);
    CHECK_EQ_INT(track_padded(t, pad), TALLY_ETOOBIG); /* queued behind the identify: no flush between */
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(track_padded(t, pad), TALLY_ETOOBIG); /* applied: still stamped on everything */
    CHECK_EQ_INT(tally_reset(t), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(track_padded(t, pad), TALLY_OK); /* logged out: no userId to stamp */
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, NULL, "oversize") + tu_stat(t, NULL, "invalid"), 0);
    CHECK_EQ_INT(tu_count_lines(out), 3); /* two tracks and the identify */
    tally_close(t, 1000);
    free(big_props);
    free(out);
}

/* With context_traits, an identify's traits ride on every later message in context.traits. */
TEST(identify_traits_copied_into_context_are_reserved_by_the_next_call)
{
    char *out = tu_path("traits.ndjson");
    tally_t *t = open_capturing(out, "context_traits", "true");
    REQUIRE(t);
    big_props = malloc(TALLY_MAX_MESSAGE_BYTES + 64);
    REQUIRE(big_props);
    char traits[8100];
    tu_pad_props(traits, 8000);
    size_t pad = 32768 - 600 - 11;
    CHECK_EQ_INT(tally_identify(t, "u1", traits), TALLY_OK);
    CHECK_EQ_INT(track_padded(t, pad), TALLY_ETOOBIG);
    CHECK_EQ_INT(track_padded(t, pad - 8100), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, NULL, "oversize") + tu_stat(t, NULL, "invalid"), 0);
    CHECK_EQ_INT(tu_count_lines(out), 2);
    tally_close(t, 1000);
    free(big_props);
    free(out);
}

/* A rule can still grow a message past the limit after the call: never silently. Either the
 * conversion refuses the rule's result (a rule failure: its on_error applies, here enrichment's
 * fail-open passes the message as it was) or the grown message is dropped, counted as oversize;
 * both name the limit in the log. */
TEST(rule_that_grows_a_message_past_32k_is_never_dropped_silently)
{
    char *dir = rules_dir("20_grow.lua", "return { name = 'grow', stage = 'enrichment', process = function(m)\n"
                                         "  m.properties = { blob = string.rep('x', 40000) } return m end }\n");
    char *out = tu_path("grown.ndjson");
    tally_t *t = open_capturing(out, "rules", dir);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "Grown", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out) + tu_stat(t, NULL, "oversize"), 1); /* written as it was, or counted */
    CHECK(longest_line(out) <= TALLY_MAX_MESSAGE_BYTES);
    CHECK_CONTAINS(tf_logged(), "32768");
    tally_close(t, 1000);
    char path[600];
    snprintf(path, sizeof path, "%s/20_grow.lua", dir);
    unlink(path);
    free(out);
    free(dir);
}
