/* Identity and sessions: the anonymous id from the first message, login keeps it flowing, logout
 * replaces it, sessions roll over after idle time (moved forward with the runtime's test clock,
 * not slept through) and survive restarts within the timeout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "json.h"
#include "runtime.h"
#include "tally.h"
#include "util.h"

typedef struct seen {
    char anon[40], user[64], session[40];
    long long index;
    int has_user;
} seen;

/* Reads line n of the output and pulls out the identity fields. */
static int read_ids(const char *path, int n, seen *s)
{
    memset(s, 0, sizeof *s);
    char *line = tu_line(path, n);
    if (!line) return -1;
    tj_arena *a = tj_arena_new();
    tj_value *m;
    tj_error err;
    int rc = tj_parse(a, line, strlen(line), &m, &err);
    if (!rc) {
        tj_value *v = tj_object_get(m, "anonymousId"), *u = tj_object_get(m, "userId");
        tj_value *sess = tj_object_get(tj_object_get(m, "context"), "session");
        if (v) snprintf(s->anon, sizeof s->anon, "%s", v->u.str.s);
        if (u) { snprintf(s->user, sizeof s->user, "%s", u->u.str.s); s->has_user = 1; }
        if (sess) {
            snprintf(s->session, sizeof s->session, "%s", tj_object_get(sess, "id")->u.str.s);
            s->index = tj_object_get(sess, "index")->u.i;
        }
    }
    tj_arena_free(a);
    free(line);
    return rc;
}

static tally_t *open_with_store(const char *out, const char *store_path)
{
    return tu_open_file(out, "store", store_path, "session_timeout_s", "1800", NULL);
}

TEST(first_event_is_anonymous_with_a_session)
{
    char *out = tu_path("id1.ndjson"), *db = tu_path("id1.db");
    unlink(db);
    tally_t *t = open_with_store(out, db);
    REQUIRE(t);
    tally_track(t, "App Opened", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    seen s;
    REQUIRE(read_ids(out, 0, &s) == 0);
    CHECK_EQ_INT(strlen(s.anon), 36);
    CHECK(!s.has_user);
    CHECK_EQ_INT(strlen(s.session), 36);
    CHECK_EQ_INT(s.index, 1);
    tally_close(t, 1000);
    free(out);
    free(db);
}

TEST(identify_adds_user_id_and_keeps_anonymous_id)
{
    char *out = tu_path("id2.ndjson"), *db = tu_path("id2.db");
    unlink(db);
    tally_t *t = open_with_store(out, db);
    REQUIRE(t);
    tally_track(t, "Signup Viewed", NULL);
    tally_identify(t, "user-42", "{\"email\":\"peter@initech.com\"}");
    tally_track(t, "Signed Up", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    seen before, login, after;
    REQUIRE(read_ids(out, 0, &before) == 0 && read_ids(out, 1, &login) == 0 && read_ids(out, 2, &after) == 0);
    CHECK_STR(login.user, "user-42");
    CHECK_STR(after.user, "user-42");
    CHECK_STR(after.anon, before.anon);
    CHECK_STR(after.session, before.session); /* logging in does not start a session */
    tally_close(t, 1000);
    free(out);
    free(db);
}

TEST(reset_clears_user_and_issues_new_anonymous_id_and_session)
{
    char *out = tu_path("id3.ndjson"), *db = tu_path("id3.db");
    unlink(db);
    tally_t *t = open_with_store(out, db);
    REQUIRE(t);
    tally_identify(t, "u1", NULL);
    tally_track(t, "Logged In", NULL);
    tally_reset(t);
    tally_track(t, "Logged Out", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    seen in, out_ids;
    REQUIRE(read_ids(out, 1, &in) == 0 && read_ids(out, 2, &out_ids) == 0);
    CHECK_STR(in.user, "u1");
    CHECK(!out_ids.has_user);
    CHECK(strcmp(in.anon, out_ids.anon) != 0);
    CHECK(strcmp(in.session, out_ids.session) != 0);
    CHECK_EQ_INT(out_ids.index, in.index + 1);
    tally_close(t, 1000);
    free(out);
    free(db);
}

TEST(idle_timeout_starts_a_new_session)
{
    char *out = tu_path("id4.ndjson"), *db = tu_path("id4.db");
    unlink(db);
    tally_t *t = open_with_store(out, db);
    REQUIRE(t);
    tally_track(t, "A", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    atomic_fetch_add(&t->clock_skew_ms, 1799 * 1000); /* just under the timeout: same session */
    tally_track(t, "B", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    atomic_fetch_add(&t->clock_skew_ms, 1800 * 1000); /* a full timeout of silence: new session */
    tally_track(t, "C", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    seen a, b, c;
    REQUIRE(read_ids(out, 0, &a) == 0 && read_ids(out, 1, &b) == 0 && read_ids(out, 2, &c) == 0);
    CHECK_STR(b.session, a.session);
    CHECK(strcmp(c.session, b.session) != 0);
    CHECK_EQ_INT(c.index, b.index + 1);
    CHECK_STR(c.anon, a.anon); /* a new session is not a new user */
    tally_close(t, 1000);
    free(out);
    free(db);
}

TEST(session_start_call_starts_a_new_session)
{
    char *out = tu_path("id5.ndjson"), *db = tu_path("id5.db");
    unlink(db);
    tally_t *t = open_with_store(out, db);
    REQUIRE(t);
    tally_track(t, "A", NULL);
    CHECK_EQ_INT(tally_session_start(t), TALLY_OK);
    tally_track(t, "B", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    seen a, b;
    REQUIRE(read_ids(out, 0, &a) == 0 && read_ids(out, 1, &b) == 0);
    CHECK(strcmp(a.session, b.session) != 0);
    CHECK_EQ_INT(b.index, a.index + 1);
    tally_close(t, 1000);
    free(out);
    free(db);
}

TEST(restart_within_timeout_continues_identity_and_session)
{
    char *out = tu_path("id6.ndjson"), *db = tu_path("id6.db");
    unlink(db);
    tally_t *t = open_with_store(out, db);
    REQUIRE(t);
    tally_identify(t, "u7", NULL);
    tally_track(t, "Before Restart", NULL);
    REQUIRE(tally_close(t, 5000) == TALLY_OK);
    t = tu_open_file(out, "store", db, NULL); /* tu_open_file truncates out: line 0 is the new run */
    REQUIRE(t);
    tally_track(t, "After Restart", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    seen after;
    REQUIRE(read_ids(out, 0, &after) == 0);
    CHECK_STR(after.user, "u7");
    CHECK_EQ_INT(after.index, 1);
    tally_close(t, 1000);

    /* a restart after the timeout of silence (wall clock) opens a new session */
    t = tu_open_file(out, "store", db, NULL);
    REQUIRE(t);
    atomic_fetch_add(&t->clock_skew_ms, 3600 * 1000);
    tally_track(t, "Much Later", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    seen later;
    REQUIRE(read_ids(out, 0, &later) == 0);
    CHECK(strcmp(later.session, after.session) != 0);
    CHECK_EQ_INT(later.index, 2);
    CHECK_STR(later.anon, after.anon);
    tally_close(t, 1000);
    free(out);
    free(db);
}

TEST(identity_survives_restart_of_a_file_store)
{
    char *out = tu_path("id7.ndjson"), *db = tu_path("id7.db");
    unlink(db);
    tally_t *t = open_with_store(out, db);
    REQUIRE(t);
    tally_track(t, "First Run", NULL);
    REQUIRE(tally_close(t, 5000) == TALLY_OK);
    seen first;
    REQUIRE(read_ids(out, 0, &first) == 0);
    t = open_with_store(out, db);
    REQUIRE(t);
    tally_track(t, "Second Run", NULL);
    REQUIRE(tally_close(t, 5000) == TALLY_OK);
    seen second;
    REQUIRE(read_ids(out, 0, &second) == 0);
    CHECK_STR(second.anon, first.anon);
    free(out);
    free(db);
}

TEST(memory_store_gives_each_open_a_new_anonymous_id)
{
    char *out = tu_path("id8.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    tally_track(t, "X", NULL);
    REQUIRE(tally_close(t, 5000) == TALLY_OK);
    seen a;
    REQUIRE(read_ids(out, 0, &a) == 0);
    t = tu_open_file(out, NULL);
    REQUIRE(t);
    tally_track(t, "Y", NULL);
    REQUIRE(tally_close(t, 5000) == TALLY_OK);
    seen b;
    REQUIRE(read_ids(out, 0, &b) == 0);
    CHECK(strcmp(a.anon, b.anon) != 0);
    free(out);
}

TEST(context_traits_carries_merged_identify_traits_when_enabled)
{
    char *out = tu_path("id9.ndjson");
    tally_t *t = tu_open_file(out, "context_traits", "true", NULL);
    REQUIRE(t);
    tally_identify(t, "u1", "{\"email\":\"a@b.c\",\"plan\":\"free\"}");
    tally_identify(t, "u1", "{\"plan\":\"pro\"}");
    tally_track(t, "Upgraded", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 2);
    CHECK_CONTAINS(line, "\"traits\":{\"email\":\"a@b.c\",\"plan\":\"pro\"}");
    free(line);
    tally_reset(t);
    tally_track(t, "After Logout", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    line = tu_line(out, 3);
    CHECK(line && !strstr(line, "\"traits\""));
    free(line);
    tally_close(t, 1000);
    free(out);
}

TEST(identity_call_reports_current_ids)
{
    char *out = tu_path("id10.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    tally_identify(t, "user-9", NULL);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *ids = NULL;
    REQUIRE(tally_identity(t, &ids) == TALLY_OK);
    seen s;
    REQUIRE(read_ids(out, 1, &s) == 0);
    char want[256];
    snprintf(want, sizeof want, "{\"anonymousId\":\"%s\",\"userId\":\"user-9\",\"session\":{\"id\":\"%s\",\"index\":1,",
             s.anon, s.session);
    CHECK_CONTAINS(ids, want);
    tally_free(ids);
    tally_close(t, 1000);
    free(out);
}

TEST(server_mode_has_no_device_identity)
{
    char *out = tu_path("id11.ndjson");
    tally_t *t = tu_open_file(out, "mode", "server", NULL);
    REQUIRE(t);
    char *ids = NULL;
    REQUIRE(tally_identity(t, &ids) == TALLY_OK);
    CHECK_STR(ids, "{}");
    tally_free(ids);
    tally_send(t, "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\"}");
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK(line && !strstr(line, "anonymousId") && !strstr(line, "\"session\""));
    free(line);
    tally_close(t, 1000);
    free(out);
}
