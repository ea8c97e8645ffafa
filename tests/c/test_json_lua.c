/* Tests for the tj_value <-> Lua bridge (src/json_lua.c). */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <time.h>

#include "harness.h"
#include "json.h"
#include "json_lua.h"

/* ---------------------------------------------------------------- helpers */

/* Opens only what the embedded Lua links (no io, os.execute, debug or package libraries) and
 * gives scripts: null, empty_array, array_mt (the array metatable) and udata (a full userdata). */
static lua_State *new_state(void)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base}, {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
        {LUA_STRLIBNAME, luaopen_string}, {LUA_MATHLIBNAME, luaopen_math}, {NULL, NULL},
    };
    lua_State *L = luaL_newstate();
    for (const luaL_Reg *l = libs; l->name; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    tjl_init(L);
    luaL_getmetatable(L, TJL_ARRAY_MT);
    lua_setglobal(L, "array_mt");
    lua_newuserdata(L, 1);
    lua_setglobal(L, "udata");
    tjl_push_null(L);
    lua_setglobal(L, "null");
    tjl_push_empty_array(L);
    lua_setglobal(L, "empty_array");
    return L;
}

/* Encodes the value on top of the stack (and pops it); "ERROR: msg" on failure. */
static const char *encode_top(lua_State *L, const char *root)
{
    static tbuf out = TBUF_INIT;
    tbuf_reset(&out);
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    int top = lua_gettop(L);
    if (tjl_to_json_at(L, -1, root, a, &v, &err)) tbuf_printf(&out, "ERROR: %s", err.msg);
    else if (tj_write(&out, v)) tbuf_puts(&out, "WRITE FAILED");
    CHECK_EQ_INT(lua_gettop(L), top); /* stack untouched, success or not */
    lua_pop(L, 1);
    tj_arena_free(a);
    return out.data;
}

/* Runs `script` (a chunk returning one value). */
static const char *run(lua_State *L, const char *script, const char *root)
{
    if (luaL_dostring(L, script)) {
        static char msg[256];
        snprintf(msg, sizeof msg, "LUA ERROR: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return msg;
    }
    return encode_top(L, root);
}

/* Decodes json, passes it to script as `...`, encodes what the script returns. */
static const char *through_lua(const char *json, const char *script)
{
    static char msg[256];
    lua_State *L = new_state();
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    const char *res = msg;
    if (tj_parse(a, json, strlen(json), &v, &err)) {
        snprintf(msg, sizeof msg, "PARSE ERROR: %s", err.msg);
    } else if (luaL_loadstring(L, script ? script : "return ...")) {
        snprintf(msg, sizeof msg, "LOAD ERROR: %s", lua_tostring(L, -1));
    } else if (tjl_push(L, v)) {
        snprintf(msg, sizeof msg, "PUSH FAILED");
    } else if (lua_pcall(L, 1, 1, 0)) {
        snprintf(msg, sizeof msg, "LUA ERROR: %s", lua_tostring(L, -1));
    } else {
        res = encode_top(L, NULL);
        CHECK_EQ_INT(lua_gettop(L), 0);
    }
    tj_arena_free(a);
    lua_close(L);
    return res;
}

/* ---------------------------------------------------------------- JSON -> Lua -> JSON */

TEST(lua_round_trip_sample)
{
    CHECK_STR(through_lua("{\"n\":9007199254740993,\"f\":0.1,\"a\":[],\"z\":null}", NULL),
              "{\"a\":[],\"f\":0.1,\"n\":9007199254740993,\"z\":null}");
    static const char *same[] = {
        "{\"a\":[],\"f\":0.1,\"n\":9007199254740993,\"z\":null}",
        "[1,2.5,-0.0,1.0,100.0,1e21,5e-324,-9223372036854775808,9223372036854775807]",
        "[null,1,null,\"x\",null]",
        "{\"a\":null,\"b\":{\"c\":null},\"d\":[null]}",
        "[[],{},[[]],[{}],{\"e\":[]}]",
        "\"caf\xC3\xA9 \\u0000 \\n \\u2028\"",
        "true", "false", "null", "0", "-7", "1.5", "[]", "{}",
    };
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) CHECK_STR(through_lua(same[i], NULL), same[i]);
}

TEST(lua_keys_sorted_bytewise)
{
    CHECK_STR(through_lua("{\"b\":1,\"a\":2,\"ab\":3,\"\xC3\xA9\":4,\"B\":5,\"\":6}", NULL),
              "{\"\":6,\"B\":5,\"a\":2,\"ab\":3,\"b\":1,\"\xC3\xA9\":4}");
    /* duplicate keys: the last one wins, as in every JSON reader */
    CHECK_STR(through_lua("{\"x\":1,\"x\":2}", NULL), "{\"x\":2}");
}

TEST(lua_number_subtypes)
{
    CHECK_STR(through_lua("{\"i\":9007199254740993,\"f\":1.0,\"g\":0.5,\"m\":-9223372036854775808}",
                          "local t = ...; return {math.type(t.i), math.type(t.f), math.type(t.g), "
                          "math.type(t.m), t.i == 9007199254740993, t.m == math.mininteger}"),
              "[\"integer\",\"float\",\"float\",\"integer\",true,true]");
    CHECK_STR(through_lua("[1.0]", "local t = ...; t[2] = t[1] * 3; t[3] = 7 // 2; return t"),
              "[1.0,3.0,3]");
    CHECK_STR(through_lua("9223372036854775808", "local x = ...; return math.type(x)"), "\"float\"");
}

TEST(lua_null_survives)
{
    CHECK_STR(through_lua("{\"a\":null,\"b\":[null,null]}",
                          "local t = ...; return {t.a == null, t.b[1] == null, #t.b, t.a ~= nil}"),
              "[true,true,2,true]");
    CHECK_STR(through_lua("[1]", "local t = ...; t[2] = null; t[3] = 3; return t"), "[1,null,3]");
}

TEST(lua_empty_arrays)
{
    CHECK_STR(through_lua("[]", "local t = ...; return {t, getmetatable(t).__name, #t}"),
              "[[],\"tally.array\",0]");
    CHECK_STR(through_lua("{\"a\":[1,2,3]}",
                          "local t = ...; for i = #t.a, 1, -1 do table.remove(t.a) end; return t"),
              "{\"a\":[]}");
    CHECK_STR(through_lua("{\"a\":[1]}", "local t = ...; t.a[1] = nil; return t"), "{\"a\":[]}");
    CHECK_STR(through_lua("{}", "local t = ...; t.list = empty_array; t.l2 = {empty_array}; return t"),
              "{\"l2\":[[]],\"list\":[]}");
    lua_State *L = new_state();
    CHECK_STR(run(L, "return empty_array", NULL), "[]");
    CHECK_STR(run(L, "return {}", NULL), "{}");
    CHECK_STR(run(L, "return setmetatable({}, array_mt)", NULL), "[]");
    lua_close(L);
}

TEST(lua_raw_values_are_expanded)
{
    lua_State *L = new_state();
    tj_arena *a = tj_arena_new();
    tj_value *o = tj_new(a, TJ_OBJECT);
    tj_object_set(a, o, "p", 1, tj_new_raw(a, "{\"x\":[1,2.0,null]}", 18));
    REQUIRE(tjl_push(L, o) == 0);
    CHECK_EQ_INT(lua_gettop(L), 1);
    CHECK_STR(encode_top(L, NULL), "{\"p\":{\"x\":[1,2.0,null]}}");
    tj_value *bad = tj_new_raw(a, "{\"x\":", 5);
    lua_pushinteger(L, 42);
    CHECK(tjl_push(L, bad) == TALLY_EINVAL);
    CHECK_EQ_INT(lua_gettop(L), 1); /* nothing pushed on failure */
    lua_close(L);
    tj_arena_free(a);
}

TEST(lua_strings_with_nul_and_utf8)
{
    CHECK_STR(through_lua("\"a\\u0000b\"", "local s = ...; return {#s, s:byte(2)}"), "[3,0]");
    lua_State *L = new_state();
    CHECK_STR(run(L, "return {name = 'ab\\xC0\\x80'}", "traits"),
              "ERROR: traits.name: invalid UTF-8 at byte 2");
    CHECK_STR(run(L, "return {['k\\xFF'] = 1}", "traits"),
              "ERROR: traits: invalid UTF-8 in key at byte 1");
    CHECK_STR(run(L, "return 'ok \\u{1F600}'", NULL), "\"ok \xF0\x9F\x98\x80\"");
    CHECK_STR(run(L, "return '\\xED\\xA0\\x80'", NULL), "ERROR: invalid UTF-8 at byte 0");
    lua_close(L);
}

/* ---------------------------------------------------------------- Lua -> JSON errors */

TEST(lua_error_paths)
{
    lua_State *L = new_state();
    CHECK_STR(run(L, "return {items = {1, 2, 0/0}}", "properties"),
              "ERROR: properties.items[2]: NaN is not valid JSON");
    CHECK_STR(run(L, "return {a = {b = {math.huge}}}", NULL), "ERROR: a.b[0]: inf is not valid JSON");
    CHECK_STR(run(L, "return -math.huge", "x"), "ERROR: x: -inf is not valid JSON");
    CHECK_STR(run(L, "return {['a key'] = {{}, print}}", "p"),
              "ERROR: p[\"a key\"][1]: function is not valid JSON");
    CHECK_STR(run(L, "return {['1x'] = coroutine.create(print)}", NULL),
              "ERROR: [\"1x\"]: thread is not valid JSON");
    CHECK_STR(run(L, "return {f = udata}", NULL), "ERROR: f: userdata is not valid JSON");
    CHECK_STR(run(L, "return nil", "properties"), "ERROR: properties: nil is not valid JSON");
    CHECK_STR(run(L, "return 0/0", NULL), "ERROR: NaN is not valid JSON");
    lua_close(L);
    /* with several bad values the first in key order is reported, whatever the hash seed */
    for (int i = 0; i < 20; i++) {
        L = new_state();
        CHECK_STR(run(L, "local t = {} for i = 1, 50 do t['k' .. i] = i end "
                         "t.zz = 0/0; t.aa = {1, 0/0}; t.mm = print; return t", NULL),
                  "ERROR: aa[1]: NaN is not valid JSON");
        lua_close(L);
    }
}

TEST(lua_table_shapes)
{
    lua_State *L = new_state();
    CHECK_STR(run(L, "return {1, 2, x = 3}", "p"), "ERROR: p: table mixes string and integer keys");
    CHECK_STR(run(L, "return {[1] = 1, [3] = 3}", "p"), "ERROR: p: table with integer keys is not a sequence 1..n");
    CHECK_STR(run(L, "return {[0] = 1}", NULL), "ERROR: table with integer keys is not a sequence 1..n");
    CHECK_STR(run(L, "return {[-1] = 1, [1] = 2}", NULL),
              "ERROR: table with integer keys is not a sequence 1..n");
    CHECK_STR(run(L, "return {x = {[true] = 1}}", NULL),
              "ERROR: x: table has a boolean key; JSON object keys must be strings");
    CHECK_STR(run(L, "return {[1.5] = 1}", NULL),
              "ERROR: table has a non-integer number key; JSON object keys must be strings");
    CHECK_STR(run(L, "return {[{}] = 1}", NULL),
              "ERROR: table has a table key; JSON object keys must be strings");
    CHECK_STR(run(L, "return {[2.0] = 'b', [1] = 'a'}", NULL), "[\"a\",\"b\"]"); /* 2.0 is key 2 */
    CHECK_STR(run(L, "return {'a', 'b', 'c'}", NULL), "[\"a\",\"b\",\"c\"]");
    CHECK_STR(run(L, "local t = setmetatable({1, 2, 3}, array_mt); "
                     "t[2] = nil; return {list = t}", NULL),
              "ERROR: list: array is not a sequence 1..n (holes or non-integer keys)");
    CHECK_STR(run(L, "local t = setmetatable({}, array_mt); "
                     "t.x = 1; return t", NULL),
              "ERROR: array is not a sequence 1..n (holes or non-integer keys)");
    CHECK_STR(run(L, "return {x = udata and {} or 1, y = 2}", NULL), "{\"x\":{},\"y\":2}");
    /* other light userdata: only our two sentinels mean something */
    lua_pushlightuserdata(L, (void *)L);
    CHECK_STR(encode_top(L, "u"), "ERROR: u: light userdata is not valid JSON");
    lua_close(L);
}

TEST(lua_metamethods_are_not_called)
{
    lua_State *L = new_state();
    CHECK_STR(run(L, "local t = setmetatable({a = 1}, {__index = function() error('no') end, "
                     "__pairs = function() error('no') end, __len = function() error('no') end}); "
                     "return t", NULL),
              "{\"a\":1}");
    lua_close(L);
}

TEST(lua_cycles_and_depth)
{
    lua_State *L = new_state();
    CHECK_STR(run(L, "local t = {}; t.self = t; return t", "properties"),
              "ERROR: properties.self: cycle: the table contains itself");
    CHECK_STR(run(L, "local t = {}; t[1] = t; return t", NULL), "ERROR: [0]: cycle: the table contains itself");
    /* a long path is shortened in the middle and the message stays within err->msg */
    const char *r = run(L, "local t = {} local c = t for i = 1, 70 do c.self = {} c = c.self end return t",
                        "properties");
    CHECK_CONTAINS(r, "ERROR: properties.self.self");
    CHECK_CONTAINS(r, "...");
    CHECK_CONTAINS(r, ".self: table nested deeper than 64");
    CHECK(strlen(r) - strlen("ERROR: ") < sizeof(((tj_error *)0)->msg));
    /* exactly 64 tables are fine, 65 are not, as in the parser */
    CHECK_CONTAINS(run(L, "local t = {} for i = 2, 64 do t = {t} end return t", NULL), "[[[[");
    CHECK_CONTAINS(run(L, "local t = {} for i = 2, 65 do t = {t} end return t", NULL),
                   "table nested deeper than 64");
    CHECK_CONTAINS(run(L, "local t = empty_array for i = 1, 64 do t = {t} end return t", NULL), "[[[[");
    /* long keys and odd bytes are shortened in messages, and UTF-8 is never cut */
    r = run(L, "return {[string.rep('\\u{E9}', 40)] = {['a\\n\"b'] = 0/0}}", NULL);
    CHECK_CONTAINS(r, "ERROR: [\"\xC3\xA9\xC3\xA9");
    CHECK_CONTAINS(r, "...\"][\"a?\\\"b\"]: NaN is not valid JSON");
    lua_close(L);

    /* 64 nested JSON arrays decode and encode again */
    tbuf b = TBUF_INIT;
    for (int i = 0; i < 64; i++) tbuf_putc(&b, '[');
    for (int i = 0; i < 64; i++) tbuf_putc(&b, ']');
    CHECK_STR(through_lua(b.data, NULL), b.data);
    tbuf_free(&b);
}

/* ---------------------------------------------------------------- table graphs (issue 14 #5) */

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Encodes the value the chunk returns with tjl_to_json_max(limit). */
static const char *run_max(lua_State *L, const char *script, size_t limit)
{
    static char msg[256];
    if (luaL_dostring(L, script)) {
        snprintf(msg, sizeof msg, "LUA ERROR: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return msg;
    }
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    static tbuf out = TBUF_INIT;
    tbuf_reset(&out);
    if (tjl_to_json_max(L, -1, "message", limit, NULL, a, &v, &err)) tbuf_printf(&out, "ERROR: %s", err.msg);
    else if (tj_write(&out, v)) tbuf_puts(&out, "WRITE FAILED");
    lua_pop(L, 1);
    tj_arena_free(a);
    return out.data;
}

/* A 2-way cycle used to be walked to depth 64 along every branch (2^64 visits): it is found the
 * first time a table is reached again below itself, reported at the first path in key order. */
TEST(lua_two_way_cycle_is_refused_at_once)
{
    lua_State *L = new_state();
    double t0 = cpu_seconds();
    CHECK_STR(run(L, "local t, u = {}, {} t.a, t.b, u.a, u.b = u, u, t, t return t", "properties"),
              "ERROR: properties.a.a: cycle: the table contains itself");
    CHECK_STR(run(L, "local t, u = {}, {} t[1], t[2], u[1], u[2] = u, u, t, t return t", NULL),
              "ERROR: [0][0]: cycle: the table contains itself");
    /* a cycle at the bottom of a DAG is found on each of its 2^10 paths, and reported on the first */
    CHECK_STR(run(L, "local c = {} local u = {c = c} for i = 1, 10 do u = {a = u, b = u} end "
                     "c.back = u return u", NULL),
              "ERROR: a.a.a.a.a.a.a.a.a.a.c.back: cycle: the table contains itself");
    CHECK(cpu_seconds() - t0 < 5.0); /* not exponential: each is a few thousand visits */
    lua_close(L);
}

/* A 40-level DAG (t = {a = u, b = u}) is 2^40 nodes written out: the walk charges every node it
 * reaches against the byte limit, so it stops after about `limit` visits with the limit named. */
TEST(lua_forty_level_dag_stops_at_the_byte_limit)
{
    lua_State *L = new_state();
    const char *dag = "local u = 'leaf' for i = 1, 40 do u = {a = u, b = u} end return u";
    double t0 = cpu_seconds();
    CHECK_CONTAINS(run(L, dag, NULL), "too large: the JSON text would exceed the 1048576-byte limit");
    CHECK_CONTAINS(run_max(L, dag, 32768), "too large: the JSON text would exceed the 32768-byte limit");
    /* an error at every leaf: the first one in key order is reported, after two passes at most */
    char expect[256] = "ERROR: message";
    for (int i = 0; i < 40; i++) strcat(expect, ".a");
    strcat(expect, ": NaN is not valid JSON");
    CHECK_STR(run_max(L, "local u = 0/0 for i = 1, 40 do u = {b = u, a = u} end return u", 32768), expect);
    CHECK_CONTAINS(run_max(L, "local u = 0/0 for i = 1, 40 do u = {u, u} end return u", 32768),
                   "[0][0][0]: NaN is not valid JSON");
    /* a shared table that lua_next needs long to walk (a million emptied slots) is walked once,
     * not once per path that reaches it */
    CHECK_CONTAINS(run_max(L, "local big = {x = 1} for i = 1, 1000000 do big[i] = true end "
                              "for i = 1, 1000000 do big[i] = nil end "
                              "local u = big for i = 1, 40 do u = {a = u, b = u} end return u", 1 << 20),
                   "exceed the 1048576-byte limit");
    CHECK(cpu_seconds() - t0 < 5.0); /* ~100x what a 1 MiB walk takes */
    lua_close(L);
}

TEST(lua_shared_subtable_is_written_each_time)
{
    lua_State *L = new_state();
    CHECK_STR(run(L, "local u = {x = 1} for i = 1, 2 do u = {a = u, b = u} end return u", NULL),
              "{\"a\":{\"a\":{\"x\":1},\"b\":{\"x\":1}},\"b\":{\"a\":{\"x\":1},\"b\":{\"x\":1}}}");
    CHECK_STR(run(L, "local u = {1} return {u, u, {u}}", NULL), "[[1],[1],[[1]]]");
    /* the result is a tree: later stages may edit one place without changing the other */
    REQUIRE(luaL_dostring(L, "local u = {x = {1}} return {a = u, b = u}") == 0);
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    REQUIRE(tjl_to_json(L, -1, a, &v, &err) == 0);
    tj_object_set(a, tj_object_get(v, "a"), "y", 1, tj_new_int(a, 2));
    tj_object_get(tj_object_get(v, "a"), "x")->u.arr.items[0]->u.i = 5;
    tbuf b = TBUF_INIT;
    tj_write(&b, v);
    CHECK_STR(b.data, "{\"a\":{\"x\":[5],\"y\":2},\"b\":{\"x\":[1]}}");
    tbuf_free(&b);
    tj_arena_free(a);
    lua_close(L);
}

/* The count is a lower bound of the text: what fits is never refused. */
TEST(lua_byte_limit_never_refuses_what_fits)
{
    lua_State *L = new_state();
    CHECK_STR(run_max(L, "return 'abcd'", 6), "\"abcd\"");
    CHECK_STR(run_max(L, "return 'abcd'", 5), "ERROR: message: too large: the JSON text would exceed the 5-byte limit");
    static const char *fits[] = {
        "return {a = {1, 2.5, true, false, null}, bb = {}, c = 'x', d = {{}, {{}}}}",
        "return {1, 22, 333, -4, 0.5, 1e300, 'é'}",
    };
    for (size_t i = 0; i < sizeof fits / sizeof *fits; i++) {
        const char *full = run_max(L, fits[i], 1 << 20);
        CHECK(strncmp(full, "ERROR", 5) != 0);
        char copy[256];
        snprintf(copy, sizeof copy, "%s", full);
        CHECK_STR(run_max(L, fits[i], strlen(copy)), copy);
    }
    /* a huge string is refused before it is checked or copied */
    CHECK_CONTAINS(run_max(L, "return {s = string.rep('x', 1 << 24)}", 32768), "message.s: too large");
    lua_close(L);
}

/* ---------------------------------------------------------------- tally.json.decode (issue 14 #6) */

typedef struct { size_t used, cap, peak; } cap_alloc;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    cap_alloc *c = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) { free(ptr); c->used -= old; return NULL; }
    if (nsize > old && nsize - old > c->cap - c->used) return NULL;
    void *p = realloc(ptr, nsize);
    if (p) {
        c->used = c->used - old + nsize;
        if (c->used > c->peak) c->peak = c->used;
    }
    return p;
}

static lua_State *capped_state(cap_alloc *c)
{
    lua_State *L = lua_newstate(capped_alloc, c);
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    lua_settop(L, 0);
    lua_newtable(L);
    tjl_set_helpers(L, "test");
    lua_setglobal(L, "tally");
    return L;
}

static const char *lua_result(lua_State *L, const char *script)
{
    static char msg[512];
    if (luaL_dostring(L, script)) snprintf(msg, sizeof msg, "LUA ERROR: %s", lua_tostring(L, -1));
    else snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
    lua_settop(L, 0);
    return msg;
}

/* A 28 MB array took 704 MiB of C memory outside the cap: decode now builds Lua values straight
 * from the text, so the cap sees every byte, and a text that does not fit is refused. */
TEST(lua_json_decode_is_bounded_by_the_memory_cap)
{
    cap_alloc c = {0, 16u << 20, 0};
    lua_State *L = capped_state(&c);
    CHECK_STR(lua_result(L, "local big = '[' .. string.rep('1,', 1000000) .. '1]' "
                            "local v, err = tally.json.decode(big) return tostring(v) .. ' ' .. err"),
              "nil too large: the 2000003-byte text does not fit in this Lua state's memory limit");
    /* the state is usable afterwards and small texts still decode */
    CHECK_STR(lua_result(L, "collectgarbage() local v = tally.json.decode('{\"a\":[1,2,{\"b\":\"\\\\u00e9\"}]}') "
                            "return v.a[3].b .. #v.a"), "\xC3\xA9" "3");
    lua_close(L);

    /* what decoding takes is Lua memory: a 1 MB array costs the state at least its size */
    cap_alloc d = {0, 256u << 20, 0};
    L = capped_state(&d);
    size_t before = d.used;
    CHECK_STR(lua_result(L, "V = tally.json.decode('[' .. string.rep('1,', 500000) .. '1]') return #V"), "500001");
    CHECK(d.used - before > 500001 * 8);
    lua_close(L);
}

TEST(lua_json_decode_same_values_as_the_tree)
{
    static const char *texts[] = {
        "{\"a\":[],\"f\":0.1,\"n\":9007199254740993,\"z\":null}",
        "[1,2.5,-0.0,1.0,100.0,1e21,5e-324,-9223372036854775808,9223372036854775807]",
        "[[],{},[[]],[{}],{\"e\":[]}]", "\"caf\xC3\xA9 \\u0000 \\n \\u2028 \\ud83d\\ude00\"",
        "true", "null", "-7", "{\"x\":1,\"x\":2}", "{\"k\\u0000\":{\"\\\"\":[null]}}",
    };
    lua_State *L = new_state();
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        tj_error err;
        REQUIRE(tjl_decode(L, texts[i], strlen(texts[i]), &err) == 0);
        char got[256];
        snprintf(got, sizeof got, "%s", encode_top(L, NULL));
        CHECK_STR(got, through_lua(texts[i], NULL));
    }
    tj_error err;
    CHECK(tjl_decode(L, "[1,]", 4, &err) == TALLY_EINVAL);
    CHECK_STR(err.msg, "unexpected character ']' at offset 3");
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}

/* Issue 14 #19: what a script sees of an integer beyond 64 bits is the nearest float. */
TEST(lua_integer_beyond_64_bits_is_a_float_in_lua)
{
    CHECK_STR(through_lua("99999999999999999999", "local x = ...; return {math.type(x), x == 1e20}"),
              "[\"float\",true]");
    CHECK_STR(through_lua("{\"n\":-9223372036854775809}", "local t = ...; return math.type(t.n)"), "\"float\"");
    lua_State *L = new_state();
    tj_error err;
    REQUIRE(tjl_decode(L, "[99999999999999999999]", 22, &err) == 0);
    lua_rawgeti(L, -1, 1);
    CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == 1e20);
    lua_close(L);
}

/* Converts what `script` returns for the pushed JSON text, with that tree as orig. */
static const char *through_lua_keeping(const char *json, const char *script)
{
    static tbuf out = TBUF_INIT;
    tbuf_reset(&out);
    lua_State *L = new_state();
    tj_arena *a = tj_arena_new();
    tj_value *v, *r;
    tj_error err;
    if (tj_parse(a, json, strlen(json), &v, &err) || luaL_loadstring(L, script) || tjl_push(L, v) ||
        lua_pcall(L, 1, 1, 0))
        tbuf_puts(&out, "SETUP FAILED");
    else if (tjl_to_json_max(L, -1, NULL, 1 << 20, v, a, &r, &err)) tbuf_printf(&out, "ERROR: %s", err.msg);
    else tj_write(&out, r);
    tj_arena_free(a);
    lua_close(L);
    return out.data;
}

TEST(lua_big_integer_left_alone_keeps_its_digits)
{
    CHECK_STR(through_lua_keeping("{\"a\":99999999999999999999,\"b\":[-9223372036854775809]}",
                                  "local t = ... t.c = t.a t.d = t.b[1] * 4 return t"),
              "{\"a\":99999999999999999999,\"b\":[-9223372036854775809],\"c\":99999999999999999999,"
              "\"d\":-36893488147419103000.0}");
    /* inside raw text too (properties given as JSON text to tally_track) */
    tj_arena *a = tj_arena_new();
    tj_value *o = tj_new(a, TJ_OBJECT);
    const char *raw = "{\"n\":[18446744073709551616]}";
    tj_object_set(a, o, "p", 1, tj_new_raw(a, raw, strlen(raw)));
    lua_State *L = new_state();
    REQUIRE(tjl_push(L, o) == 0);
    tj_value *r;
    tj_error err;
    REQUIRE(tjl_to_json_max(L, -1, NULL, 1 << 20, o, a, &r, &err) == 0);
    tbuf b = TBUF_INIT;
    tj_write(&b, r);
    CHECK_STR(b.data, "{\"p\":{\"n\":[18446744073709551616]}}");
    tbuf_free(&b);
    lua_close(L);
    tj_arena_free(a);
    /* two different integers that the same float stands for: which one it was is unknown */
    CHECK_STR(through_lua_keeping("[99999999999999999999,100000000000000000001]", "return ..."),
              "[100000000000000000000.0,100000000000000000000.0]");
    /* without orig, a float is a float */
    CHECK_STR(through_lua("99999999999999999999", NULL), "100000000000000000000.0");
}

/* Pushes {"p": <raw>} (raw: JSON text, as tally_track's properties arrive) or the parsed tree of
 * raw itself (as_tree), runs script on it (`...`), converts the result back: with an origin
 * (what the rules do) or without (every table converted, as before origins existed). */
static const char *through_origin(const char *raw, int as_tree, int with_origin, const char *script)
{
    static tbuf out[2] = {TBUF_INIT, TBUF_INIT};
    tbuf *b = &out[with_origin != 0];
    tbuf_reset(b);
    lua_State *L = new_state();
    tj_arena *a = tj_arena_new();
    tjl_origin *o = with_origin ? tjl_origin_new() : NULL;
    tj_value *v, *r;
    tj_error err;
    if (as_tree) {
        if (tj_parse(a, raw, strlen(raw), &v, &err)) v = tj_new(a, TJ_NULL);
        CHECK(v->type != TJ_NULL);
    } else {
        v = tj_new(a, TJ_OBJECT);
        tj_object_set(a, v, "p", 1, tj_new_raw(a, raw, strlen(raw)));
    }
    if (luaL_loadstring(L, script) || tjl_push_from(L, v, o) || lua_pcall(L, 1, 1, 0))
        tbuf_printf(b, "SETUP FAILED: %s", lua_tostring(L, -1));
    else if (tjl_to_json_from(L, -1, NULL, 1 << 20, v, o, a, &r, &err)) tbuf_printf(b, "ERROR: %s", err.msg);
    else tj_write(b, r);
    tjl_origin_free(o);
    tj_arena_free(a);
    lua_close(L);
    return b->data;
}

/* Text whose spelling a conversion would change: key order, 1.50, 1e2, -0, escapes, 2^53+1, the
 * largest and smallest doubles (1e400 never gets this far: the caller's text is refused, "number
 * out of range"). */
static const char shapes[] =
    "{\"z\":1,\"a\":[],\"o\":{},\"d\":[1,{\"x\":null,\"y\":[[]]}],\"s\":\"\\u00e9\\ud83d\\ude00\\/\","
    "\"f\":1.50,\"e\":1e2,\"m\":-0,\"n\":-0.0,\"big\":9007199254740993,\"max\":1.7976931348623157e308,\"min\":5e-324,\"t\":true}";

TEST(lua_untouched_subtrees_go_out_as_they_came)
{
    static const char *reads[] = {
        "return ...",
        "local m = ... local x = m.p.d[2].y[1] return m",                       /* reads deep */
        "local m = ... for k, v in pairs(m.p) do local _ = v end return m",     /* iterates */
        "local m = ... local n = #m.p.d + #m.p.a return m",
        "local m = ... return { p = m.p }",                                     /* a new root around it */
    };
    for (size_t i = 0; i < sizeof reads / sizeof *reads; i++) {
        char want[512];
        snprintf(want, sizeof want, "{\"p\":%s}", shapes);
        CHECK_STR(through_origin(shapes, 0, 1, reads[i]), want);
    }
    /* a tree (not text) left alone is the same tree: written as a message without rules is */
    CHECK_STR(through_origin("{\"b\":1,\"a\":{\"d\":2.0,\"c\":[]}}", 1, 1, "return ..."), "{\"b\":1,\"a\":{\"d\":2.0,\"c\":[]}}");
    /* moved, and reached twice: both places get the text (a copy, so the result stays a tree) */
    char want[1024];
    snprintf(want, sizeof want, "{\"p\":%s,\"q\":%s}", shapes, shapes);
    CHECK_STR(through_origin(shapes, 0, 1, "local m = ... m.q = m.p return m"), want);
}

TEST(lua_written_subtrees_are_converted_as_before)
{
    static const char *writes[] = {
        "local m = ... m.p.d[2].x = 5 return m",                 /* a deep field */
        "local m = ... m.p.o = { k = 'v' } return m",            /* a subtree replaced */
        "local m = ... m.p.z = nil m.p.a = nil return m",        /* keys deleted */
        "local m = ... table.insert(m.p.d, 3) return m",         /* table library */
        "local m = ... table.sort(m.p.d[2].y[1]) m.p.d[2].y[1][1] = 1 return m",
        "local m = ... rawset(m.p.d[2], 'w', true) return m",
        "local m = ... setmetatable(m.p.o, array_mt) return m",  /* {} becomes [] */
        "local m = ... setmetatable(m.p.d[2], nil) return m",     /* a metatable set, even nil */
        "local m = ... local x = m.p.f m.p.f = x return m",      /* written back unchanged: still written */
        "local m = ... m.p.d[2].y[1][1] = null return m",        /* the deepest table */
    };
    for (size_t i = 0; i < sizeof writes / sizeof *writes; i++) {
        char with[2048];
        snprintf(with, sizeof with, "%s", through_origin(shapes, 0, 1, writes[i]));
        CHECK_STR(with, through_origin(shapes, 0, 0, writes[i]));
        CHECK(strncmp(with, "ERROR", 5) && strncmp(with, "SETUP", 5));
    }
    /* the converted form: keys in byte order, tally's spelling of numbers */
    CHECK_STR(through_origin("{\"b\":1.50,\"a\":[]}", 0, 1, "local m = ... m.p.c = 1 return m"),
              "{\"p\":{\"a\":[],\"b\":1.5,\"c\":1}}");
    CHECK_STR(through_origin("{\"o\":{},\"a\":[]}", 0, 1, "local m = ... setmetatable(m.p.o, array_mt) m.p.a[1] = 1 return m"),
              "{\"p\":{\"a\":[1],\"o\":[]}}");
    /* a written parent, an untouched child: the child keeps its text only when it is a node of
     * its own (a tree's member), not a table made inside a text */
    CHECK_STR(through_origin("{\"b\":{\"y\":1.50,\"x\":1},\"a\":[]}", 1, 1, "local m = ... m.c = 1 return m"),
              "{\"a\":[],\"b\":{\"y\":1.5,\"x\":1},\"c\":1}");
    CHECK_STR(through_origin("{\"b\":{\"y\":1.50,\"x\":1},\"a\":[]}", 0, 1, "local m = ... m.p.c = 1 return m"),
              "{\"p\":{\"a\":[],\"b\":{\"x\":1,\"y\":1.5},\"c\":1}}");
}

TEST(lua_untouched_subtrees_keep_the_limits)
{
    /* a cycle through an untouched table is still found */
    CHECK_STR(through_origin(shapes, 0, 1, "local m = ... m.p.d[2].self = m.p return m"),
              "ERROR: p.d[1].self: cycle: the table contains itself");
    /* an untouched subtree is charged its text against the limit: 600 copies of 2 KB pass 1 MiB */
    char big[2100];
    size_t n = (size_t)snprintf(big, sizeof big, "{\"s\":\"");
    memset(big + n, 'x', 2000);
    snprintf(big + n + 2000, sizeof big - n - 2000, "\"}");
    CHECK_CONTAINS(through_origin(big, 0, 1, "local m = ... for i = 1, 600 do m[tostring(i)] = m.p end return m"),
                   "too large: the JSON text would exceed the 1048576-byte limit");
    CHECK(strncmp(through_origin(big, 0, 1, "local m = ... for i = 1, 500 do m[tostring(i)] = m.p end return m"), "ERROR", 5));
    /* moved deeper than 64 levels: refused as a converted one would be */
    CHECK_STR(through_origin("{\"a\":[[[[[[[[[[1]]]]]]]]]]}", 0, 1,
                             "local m = ... local t = m for i = 1, 60 do t.c = {} t = t.c end t.x = m.p return m"),
              through_origin("{\"a\":[[[[[[[[[[1]]]]]]]]]]}", 0, 0,
                             "local m = ... local t = m for i = 1, 60 do t.c = {} t = t.c end t.x = m.p return m"));
}

/* tjl_untouched_size: for each path (a Lua expression on m) after a script ran, whether that
 * table and all below it count as untouched, and then the members and levels of tables charged. */
static const char *sizes_after(const char *raw, int as_tree, const char *script, const char *const *paths)
{
    static tbuf b = TBUF_INIT;
    tbuf_reset(&b);
    lua_State *L = new_state();
    tj_arena *a = tj_arena_new();
    tjl_origin *o = tjl_origin_new();
    tj_value *v;
    tj_error err;
    if (as_tree) {
        if (tj_parse(a, raw, strlen(raw), &v, &err)) v = tj_new(a, TJ_NULL);
    } else {
        v = tj_new(a, TJ_OBJECT);
        tj_object_set(a, v, "p", 1, tj_new_raw(a, raw, strlen(raw)));
    }
    if (luaL_loadstring(L, script) || tjl_push_from(L, v, o) || lua_pcall(L, 1, 1, 0)) {
        tbuf_printf(&b, "SETUP FAILED: %s", lua_tostring(L, -1));
    } else {
        lua_setglobal(L, "m");
        for (size_t i = 0; paths[i]; i++) {
            char expr[200];
            snprintf(expr, sizeof expr, "return %s", paths[i]);
            long values = -1;
            int height = -1;
            if (luaL_dostring(L, expr)) tbuf_printf(&b, "%s: %s ", paths[i], lua_tostring(L, -1));
            else if (tjl_untouched_size(L, -1, o, &values, &height)) tbuf_printf(&b, "%s=%ld/%d ", paths[i], values, height);
            else tbuf_printf(&b, "%s=touched ", paths[i]);
            lua_settop(L, 0);
        }
    }
    tjl_origin_free(o);
    tj_arena_free(a);
    lua_close(L);
    return b.data ? b.data : "";
}

TEST(lua_untouched_size_counts_the_subtree_and_sees_deep_writes)
{
    static const char doc[] = "{\"a\":{\"b\":{\"c\":[1,2,{\"d\":true}]},\"e\":[]},\"f\":{\"g\":1,\"g\":2},\"h\":1}";
    static const char *const paths[] = {"m", "m.p", "m.p.a", "m.p.a.b", "m.p.a.b.c", "m.p.a.b.c[3]", "m.p.a.e", "m.p.f", NULL};
    /* members: d 1, c 3, b 1, e 0, a 2, f 2 (the duplicated key counts twice), p 3, m 1 */
    CHECK_STR(sizes_after(doc, 0, "return ...", paths),
              "m=13/6 m.p=12/5 m.p.a=7/4 m.p.a.b=5/3 m.p.a.b.c=4/2 m.p.a.b.c[3]=1/1 m.p.a.e=0/1 m.p.f=2/1 ");
    /* the same from a tree instead of text (the root is the tree's) */
    CHECK_STR(sizes_after(doc, 1, "return ...", (const char *const[]){"m", "m.a", "m.a.b.c", "m.f", NULL}),
              "m=12/5 m.a=7/4 m.a.b.c=4/2 m.f=2/1 ");
    /* a write into the deepest table: every table holding it is touched, its siblings are not */
    CHECK_STR(sizes_after(doc, 0, "local m = ... m.p.a.b.c[3].d = false return m", paths),
              "m=touched m.p=touched m.p.a=touched m.p.a.b=touched m.p.a.b.c=touched m.p.a.b.c[3]=touched "
              "m.p.a.e=0/1 m.p.f=2/1 ");
    /* a subtree replaced (the old one still untouched, where it was moved), a key deleted */
    CHECK_STR(sizes_after(doc, 0, "local m = ... m.q = m.p.a.b m.p.a.b = { c = 1 } m.p.f.g = nil return m",
                          (const char *const[]){"m.q", "m.q.c", "m.p.a", "m.p.a.b", "m.p.f", "m.p.a.e", NULL}),
              "m.q=5/3 m.q.c=4/2 m.p.a=touched m.p.a.b=touched m.p.f=touched m.p.a.e=0/1 ");
    /* reads, pairs, # and a metatable read leave everything untouched */
    CHECK_STR(sizes_after(doc, 0,
                          "local m = ... for k, v in pairs(m.p.a) do local _ = v end local n = #m.p.a.b.c + #m.p.a.e "
                          "local mt = getmetatable(m.p.a.e) return m", paths),
              "m=13/6 m.p=12/5 m.p.a=7/4 m.p.a.b=5/3 m.p.a.b.c=4/2 m.p.a.b.c[3]=1/1 m.p.a.e=0/1 m.p.f=2/1 ");
    /* a table a script made is never untouched, nor is one holding it */
    CHECK_STR(sizes_after(doc, 0, "local m = ... m.p.a.e = {} return m",
                          (const char *const[]){"m.p.a.e", "m.p.a", "m.p.a.b", NULL}),
              "m.p.a.e=touched m.p.a=touched m.p.a.b=5/3 ");
}

TEST(lua_untouched_size_is_per_message)
{
    /* a second message with fewer tables: the first one's are not taken for its own */
    lua_State *L = new_state();
    tj_arena *a = tj_arena_new();
    tjl_origin *o = tjl_origin_new();
    tj_value *big, *small;
    tj_error err;
    const char *t1 = "{\"a\":{\"b\":{\"c\":{}}},\"x\":[[],[],[]]}", *t2 = "{\"a\":{\"b\":1}}";
    REQUIRE(tj_parse(a, t1, strlen(t1), &big, &err) == TALLY_OK);
    REQUIRE(tj_parse(a, t2, strlen(t2), &small, &err) == TALLY_OK);
    REQUIRE(tjl_push_from(L, big, o) == TALLY_OK);
    long values;
    int height;
    CHECK(tjl_untouched_size(L, -1, o, &values, &height));
    CHECK_EQ_INT(values, 7);
    REQUIRE(tjl_push_from(L, small, o) == TALLY_OK);
    CHECK(tjl_untouched_size(L, -1, o, &values, &height));
    CHECK_EQ_INT(values, 2);
    CHECK_EQ_INT(height, 2);
    /* the first message's root is no longer recorded: it counts as written */
    CHECK(!tjl_untouched_size(L, -2, o, &values, &height));
    /* a part pushed again (tjl_push_more) is recorded beside the message's tables */
    REQUIRE(tjl_push_more(L, big, o) == TALLY_OK);
    CHECK(tjl_untouched_size(L, -1, o, &values, &height));
    CHECK_EQ_INT(values, 7);
    CHECK_EQ_INT(height, 4);
    CHECK(tjl_untouched_size(L, -2, o, &values, &height));
    CHECK_EQ_INT(values, 2);
    tjl_origin_free(o);
    tj_arena_free(a);
    lua_close(L);
}

TEST(lua_helpers)
{
    lua_State *L = new_state();
    tjl_init(L); /* idempotent */
    lua_newtable(L);
    CHECK(!tjl_is_array(L, -1));
    tjl_set_array(L, -1);
    CHECK(tjl_is_array(L, -1));
    CHECK_STR(encode_top(L, NULL), "[]");
    tjl_push_null(L);
    CHECK(tjl_is_null(L, -1) && !tjl_is_empty_array(L, -1));
    tjl_push_empty_array(L);
    CHECK(tjl_is_empty_array(L, -1) && !tjl_is_null(L, -1));
    lua_pushnil(L);
    CHECK(!tjl_is_null(L, -1) && !tjl_is_array(L, -1));
    tjl_set_array(L, -1); /* not a table: ignored */
    lua_settop(L, 0);
    lua_close(L);

    /* a state where tjl_init never ran: tjl_push creates the metatable on demand */
    L = luaL_newstate();
    tj_arena *a = tj_arena_new();
    tj_value *v;
    tj_error err;
    REQUIRE(tj_parse(a, "[[]]", 4, &v, &err) == 0);
    CHECK(tjl_push(L, v) == 0);
    CHECK_STR(encode_top(L, NULL), "[[]]");
    lua_newtable(L);
    CHECK_STR(encode_top(L, NULL), "{}");
    tj_arena_free(a);
    lua_close(L);
}

/* ---------------------------------------------------------------- Lua memory errors */

typedef struct { long budget; } limit;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    limit *l = ud;
    (void)osize;
    if (nsize == 0) { free(ptr); return NULL; }
    if (l->budget-- <= 0 && nsize > (ptr ? osize : 0)) return NULL;
    return realloc(ptr, nsize);
}

static int push_under_pcall(lua_State *L)
{
    tj_value *v = lua_touserdata(L, 1);
    lua_pushinteger(L, tjl_push(L, v));
    return 2;
}

TEST(lua_memory_errors_leak_nothing)
{
    /* Fail the Nth Lua allocation for every N: tjl_push must either succeed, fail cleanly or raise
     * a memory error under pcall, without leaking the arena used for TJ_RAW (ASan checks). */
    tj_arena *a = tj_arena_new();
    tj_value *o = tj_new(a, TJ_OBJECT);
    const char *raw = "{\"x\":[1,2,{\"y\":\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\"}]}";
    tj_object_set(a, o, "raw", 3, tj_new_raw(a, raw, strlen(raw)));
    tj_object_set(a, o, "arr", 3, tj_new(a, TJ_ARRAY));
    int successes = 0, errors = 0;
    for (long n = 0; n < 400; n++) {
        limit l = {1000000};
        lua_State *L = lua_newstate(limited_alloc, &l);
        REQUIRE(L);
        lua_pushcfunction(L, push_under_pcall);
        lua_pushlightuserdata(L, o);
        l.budget = n;
        int r = lua_pcall(L, 1, 2, 0);
        l.budget = 1000000;
        if (r == LUA_OK && lua_tointeger(L, -1) == 0) {
            lua_pop(L, 1);
            CHECK_STR(encode_top(L, NULL), "{\"arr\":[],\"raw\":{\"x\":[1,2,{\"y\":\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\"}]}}");
            successes++;
        } else {
            errors++;
        }
        lua_close(L);
    }
    if (!(successes > 0 && errors > 0)) fprintf(stderr, "  successes %d errors %d\n", successes, errors);
    CHECK(successes > 0 && errors > 0);
    tj_arena_free(a);
}
