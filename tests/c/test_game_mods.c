/* tally_lua_push_mod, as a game host uses it: host Lua states (Debian's liblua5.4) holding mod
 * tables bound to one runtime. Linked like a real host: libtally_lua.a + libtally.a + -llua5.4,
 * so this also proves the two Lua builds and the two codec copies live side by side. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fixtures.h"
#include "harness.h"
#include "tally.h"
#include "util.h"

int luaopen_tally(lua_State *L); /* libtally_lua.a; a module entry point has no header */

static lua_State *mod_state(tally_t *t, const char *name, const char *version, double rate)
{
    lua_State *L = luaL_newstate();
    if (!L) return NULL;
    luaL_openlibs(L);
    if (tally_lua_push_mod(L, t, name, version, rate) != TALLY_OK) {
        lua_close(L);
        return NULL;
    }
    lua_setglobal(L, "tally");
    return L;
}

/* Runs a chunk; returns its first result as an integer, or LLONG_MIN (and prints) on error. */
static long long run_int(lua_State *L, const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "  lua error: %s\n", lua_tostring(L, -1));
        lua_settop(L, 0);
        return -0x7fffffffffffffffLL;
    }
    long long v = lua_isinteger(L, 1) ? (long long)lua_tointeger(L, 1) : lua_toboolean(L, 1);
    lua_settop(L, 0);
    return v;
}

/* Runs a chunk that returns a string (copied into buf); "" on error. */
static const char *run_str(lua_State *L, const char *code, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (luaL_dostring(L, code) == LUA_OK) {
        const char *s = lua_tostring(L, 1);
        snprintf(buf, cap, "%s", s ? s : "(nil)");
    } else {
        snprintf(buf, cap, "error: %s", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
    return buf;
}

static int count_containing(const char *path, const char *needle)
{
    char *s = tu_read_file(path, NULL);
    int n = 0;
    for (char *p = s; p && (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    free(s);
    return n;
}

TEST(push_mod_rejects_bad_arguments)
{
    char *out = tu_path("bad.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *L = luaL_newstate();
    int top = lua_gettop(L);
    CHECK_EQ_INT(tally_lua_push_mod(NULL, t, "m", "1", 1), TALLY_EINVAL);
    CHECK_EQ_INT(tally_lua_push_mod(L, NULL, "m", "1", 1), TALLY_EINVAL);
    CHECK_EQ_INT(tally_lua_push_mod(L, t, NULL, "1", 1), TALLY_EINVAL);
    CHECK_EQ_INT(tally_lua_push_mod(L, t, "", "1", 1), TALLY_EINVAL);
    CHECK_EQ_INT(tally_lua_push_mod(L, t, "bad\xff", "1", 1), TALLY_EINVAL);
    CHECK_EQ_INT(tally_lua_push_mod(L, t, "m", "bad\xc3", 1), TALLY_EINVAL);
    CHECK_EQ_INT(tally_lua_push_mod(L, t, "m", "1", -1), TALLY_EINVAL);
    CHECK_EQ_INT(tally_lua_push_mod(L, t, "m", "1", NAN), TALLY_EINVAL);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK_EQ_INT(tally_lua_push_mod(L, t, longname, NULL, 1), TALLY_EINVAL);
    CHECK_EQ_INT(lua_gettop(L), top);
    CHECK_EQ_INT(tally_lua_push_mod(L, t, "m", NULL, 0), TALLY_OK);
    CHECK_EQ_INT(lua_gettop(L), top + 1);
    CHECK(lua_istable(L, -1));
    lua_close(L);
    tally_close(t, 1000);
    free(out);
}

TEST(every_message_carries_context_mod)
{
    char *out = tu_path("mod.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *L = mod_state(t, "speedrun", "1.2.0", 0);
    REQUIRE(L);
    CHECK_EQ_INT(run_int(L, "return tally.track('level started', {level = 1, duration_ms = 1234, score = 9007199254740993})"), 1);
    CHECK_EQ_INT(run_int(L, "return tally:screen('Main Menu')"), 1); /* colon calls work too */
    CHECK_EQ_INT(run_int(L, "return tally.page('Docs', {}, {category = 'Help', context = {ip = '10.0.0.1', mod = {name = 'other'}}})"), 1);
    CHECK_EQ_INT(run_int(L, "return tally.group('guild-7', {size = 12})"), 1);
    CHECK_EQ_INT(run_int(L, "return tally.send{type = 'track', event = 'raw', context = {locale = 'fr'}}"), 1);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 5);
    CHECK_EQ_INT(count_containing(out, "\"mod\":{\"name\":\"speedrun\",\"version\":\"1.2.0\"}"), 5);
    CHECK_EQ_INT(count_containing(out, "other"), 0); /* a mod cannot speak for another */
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"properties\":{\"duration_ms\":1234,\"level\":1,\"score\":9007199254740993}");
    free(line);
    line = tu_line(out, 2);
    CHECK_CONTAINS(line, "\"category\":\"Help\"");
    CHECK_CONTAINS(line, "\"ip\":\"10.0.0.1\"");
    free(line);
    line = tu_line(out, 4);
    CHECK_CONTAINS(line, "\"locale\":\"fr\"");
    free(line);
    lua_close(L);
    tally_close(t, 1000);
    free(out);
}

TEST(version_is_optional)
{
    char *out = tu_path("nover.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *L = mod_state(t, "tiny", NULL, 0);
    REQUIRE(L);
    CHECK_EQ_INT(run_int(L, "return tally.track('x')"), 1);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(count_containing(out, "\"mod\":{\"name\":\"tiny\"}"), 1);
    lua_close(L);
    tally_close(t, 1000);
    free(out);
}

TEST(rate_limit_allows_the_burst_then_refuses)
{
    char *out = tu_path("rate.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *L = mod_state(t, "spammer", "0.1", 2); /* 2 events/s: a burst of 4 */
    REQUIRE(L);
    CHECK_EQ_INT(run_int(L, "ok, refused = 0, 0\n"
                            "for i = 1, 200 do\n"
                            "  local r, err = tally.track('spam', {i = i})\n"
                            "  if r then ok = ok + 1 else refused = refused + 1; last_err = err end\n"
                            "end\n"
                            "return ok"), 4);
    CHECK_EQ_INT(run_int(L, "return refused"), 196);
    char buf[256];
    CHECK_STR(run_str(L, "return last_err", buf, sizeof buf), "rate limited (mod spammer: 2 events/s)");
    CHECK_EQ_INT(run_int(L, "return tally.stats().accepted"), 4);
    CHECK_EQ_INT(run_int(L, "return tally.stats().rate_limited"), 196);
    CHECK_EQ_INT(run_int(L, "return tally.stats().rejected"), 0);
    /* refused calls enqueue nothing */
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 4);
    /* the bucket refills with time: 0.6 s at 2/s gives one more */
    struct timespec ts = {0, 600 * 1000000L};
    nanosleep(&ts, NULL);
    CHECK_EQ_INT(run_int(L, "return tally.track('after a pause')"), 1);
    CHECK_EQ_INT(run_int(L, "return tally.stats().accepted"), 5);
    lua_close(L);
    tally_close(t, 1000);
    free(out);
}

TEST(per_mod_stats_and_isolation)
{
    char *out = tu_path("two.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *a = mod_state(t, "achievements", "0.9", 0), *b = mod_state(t, "flooder", "1.0", 1);
    REQUIRE(a && b);
    const char *loop = "local n = 0 for i = 1, 50 do if tally.track('tick', {i = i}) then n = n + 1 end end return n";
    CHECK_EQ_INT(run_int(b, loop), 2); /* 1 event/s: a burst of 2 */
    CHECK_EQ_INT(run_int(a, loop), 50); /* the other mod is not affected */
    CHECK_EQ_INT(run_int(a, "local r, err = tally.track('') return r == nil and err == 'event: must not be empty'"), 1);
    CHECK_EQ_INT(run_int(a, "return tally.stats().accepted"), 50);
    CHECK_EQ_INT(run_int(a, "return tally.stats().rejected"), 1);
    CHECK_EQ_INT(run_int(a, "return tally.stats().rate_limited"), 0);
    CHECK_EQ_INT(run_int(b, "return tally.stats().accepted"), 2);
    CHECK_EQ_INT(run_int(b, "return tally.stats().rate_limited"), 48);
    CHECK_EQ_INT(run_int(b, "return tally.stats().rejected"), 0);
    char buf[64];
    CHECK_STR(run_str(a, "return tally.stats().mod", buf, sizeof buf), "achievements");
    CHECK_STR(run_str(b, "return tally.stats().version", buf, sizeof buf), "1.0");
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(count_containing(out, "\"name\":\"achievements\""), 50);
    CHECK_EQ_INT(count_containing(out, "\"name\":\"flooder\""), 2);
    lua_close(a);
    lua_close(b);
    tally_close(t, 1000);
    free(out);
}

TEST(mods_cannot_change_identity_or_lifecycle)
{
    char *out = tu_path("ident.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *L = mod_state(t, "sneaky", "1", 0);
    REQUIRE(L);
    CHECK_EQ_INT(run_int(L, "return tally.identify == nil and tally.alias == nil and tally.reset == nil and "
                            "tally.flush == nil and tally.close == nil and tally.session_start == nil"), 1);
    char buf[256];
    CHECK_CONTAINS(run_str(L, "return select(2, tally.send{type = 'identify', userId = 'someone-else'})", buf, sizeof buf),
                   "type: identify and alias are for the host");
    CHECK_CONTAINS(run_str(L, "return select(2, tally.send{type = 'alias', userId = 'a', previousId = 'b'})", buf, sizeof buf),
                   "for the host");
    /* reading the ids is fine */
    CHECK_EQ_INT(run_int(L, "local s = tally.session() return type(s.anonymousId) == 'string' and #s.anonymousId == 36"), 1);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 0);
    CHECK_EQ_INT(run_int(L, "return tally.stats().rejected"), 2);
    lua_close(L);
    tally_close(t, 1000);
    free(out);
}

TEST(bad_arguments_raise_bad_values_return_errors)
{
    char *out = tu_path("args.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *L = mod_state(t, "m", "1", 0);
    REQUIRE(L);
    char buf[256];
    CHECK_CONTAINS(run_str(L, "tally.track(5)", buf, sizeof buf), "bad argument #1 to 'track' (string expected, got number)");
    CHECK_CONTAINS(run_str(L, "tally:track(5)", buf, sizeof buf), "bad argument #1 to 'track' (string expected, got number)");
    CHECK_CONTAINS(run_str(L, "tally.track('x', 'props')", buf, sizeof buf), "bad argument #2 to 'track' (table expected, got string)");
    CHECK_CONTAINS(run_str(L, "tally.screen('x', nil, 7)", buf, sizeof buf), "bad argument #3 to 'screen'");
    CHECK_CONTAINS(run_str(L, "tally.send('{}')", buf, sizeof buf), "bad argument #1 to 'send'");
    CHECK_STR(run_str(L, "return select(2, tally.track('x', {f = 0/0}))", buf, sizeof buf), "properties.f: NaN is not valid JSON");
    CHECK_STR(run_str(L, "return select(2, tally.track('x', {}, {userid = 'u'}))", buf, sizeof buf),
              "opts.userid: unknown option (userId, anonymousId, context, integrations, messageId, timestamp)");
    CHECK_STR(run_str(L, "return select(2, tally.track('x', {}, {userId = 42}))", buf, sizeof buf),
              "opts.userId: expected a string, got number");
    CHECK_STR(run_str(L, "return select(2, tally.track('x', {}, {context = {1, 2}}))", buf, sizeof buf),
              "opts.context: expected a table with string keys (a JSON object), not an array");
    CHECK_STR(run_str(L, "return select(2, tally.send{type = 'track', event = 'x', context = 'c'})", buf, sizeof buf),
              "context: expected a table with string keys (a JSON object)");
    CHECK_EQ_INT(run_int(L, "return tally.stats().rejected"), 5);
    lua_close(L);
    tally_close(t, 1000);
    free(out);
}

TEST(the_table_borrows_the_handle)
{
    char *out = tu_path("borrow.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    lua_State *L = mod_state(t, "m", "1", 0);
    REQUIRE(L);
    CHECK_EQ_INT(run_int(L, "return tally.track('from the mod')"), 1);
    lua_close(L); /* collects the table: must not touch the runtime */
    CHECK_EQ_INT(tally_track(t, "from the host", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 2);
    free(out);
}

/* One state per mod, each on its own thread, one runtime: the documented threading model. */
struct worker_arg { lua_State *L; long long sent; };

static void *mod_thread(void *p)
{
    struct worker_arg *w = p;
    w->sent = run_int(w->L, "local n = 0 for i = 1, 300 do if tally.track('tick', {i = i, f = i / 4}) then n = n + 1 end end return n");
    return NULL;
}

TEST(mods_on_several_threads)
{
    char *out = tu_path("threads.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    struct worker_arg w[3];
    pthread_t th[3];
    char name[16];
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "mod%d", i);
        w[i].L = mod_state(t, name, "1", 0);
        REQUIRE(w[i].L);
    }
    for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, mod_thread, &w[i]);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(w[i].sent, 300);
        lua_close(w[i].L);
    }
    CHECK_EQ_INT(tally_close(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 900);
    CHECK_EQ_INT(count_containing(out, "\"mod\":{\"name\":\"mod1\""), 300);
    free(out);
}

TEST(module_entry_point_is_usable_from_a_c_host)
{
    /* libtally_lua.a also carries luaopen_tally: a host can preload the whole module */
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "tally", luaopen_tally, 1);
    lua_pop(L, 1);
    char buf[128];
    CHECK_STR(run_str(L, "return tally.json.encode{n = 9007199254740993, f = 0.1, a = tally.empty_array, z = tally.null}",
                      buf, sizeof buf),
              "{\"a\":[],\"f\":0.1,\"n\":9007199254740993,\"z\":null}");
    CHECK_STR(run_str(L, "return tally.version", buf, sizeof buf), tally_version());
    lua_close(L);
}
