/* libFuzzer harness for the Lua <-> JSON conversions (src/json_lua.c) on table graphs: the input
 * is a little program that builds up to 16 Lua tables and links them with shared references and
 * cycles (t.a = u, u.b = t), mixed keys and bad values, then converts table 1.
 *
 * Build and run: scripts/fuzz.sh (every tests/fuzz/fuzz_*.c, with ASan + UBSan).
 *
 * Properties checked on every input (abort() on violation so the fuzzer keeps the input):
 *  - the conversion ends (libFuzzer's -timeout catches a hang) and its C memory stays within a
 *    fixed multiple of the byte limit, whatever the graph: a DAG 2^n wide or a cycle must not
 *    grow it;
 *  - the Lua stack is left as it was;
 *  - the same graph built in a second Lua state (another string-hash seed, so another lua_next
 *    order) converts to the same text or fails with the same message;
 *  - an error message is one line that fits err->msg;
 *  - a success writes JSON that tj_parse accepts, that tjl_decode turns into Lua values which
 *    convert back to the same text. */
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "json_lua.h"

#define NTABLES 16

static void fail(const char *why)
{
    fprintf(stderr, "fuzz_json_lua: %s\n", why);
    abort();
}

/* Reads the input as: limit (2 bytes), table count, array tags, then 3-byte operations
 * "table[key] = value". */
typedef struct {
    const uint8_t *p, *end;
} input;

static unsigned next(input *in) { return in->p < in->end ? *in->p++ : 0; }

static void push_key(lua_State *L, unsigned k)
{
    static const char *const keys[] = {"a", "b", "c", "ab", "", "\xC3\xA9", "\xFF", "x y"};
    switch (k % 12) {
    case 8: lua_pushinteger(L, 1 + (k / 12) % 4); break;
    case 9: lua_pushinteger(L, (lua_Integer)(k / 12) % 3 - 1); break; /* -1, 0, 1 */
    case 10: lua_pushnumber(L, 1.5); break;
    case 11: lua_pushboolean(L, 1); break;
    default: lua_pushstring(L, keys[k % 12]);
    }
}

/* Pushes a value; `tables` is the stack index of the array of tables (1..n). */
static void push_value(lua_State *L, unsigned v, int tables, int n, input *in)
{
    switch (v % 16) {
    case 0: case 1: case 2: case 3: case 4: case 5: /* a table: shared, often cyclic */
        lua_rawgeti(L, tables, 1 + (int)(v / 16) % n);
        break;
    case 6: lua_pushinteger(L, (lua_Integer)(v / 16) - 8); break;
    case 7: lua_pushnumber(L, (double)(v / 16) / 4.0); break;
    case 8: lua_pushnumber(L, (v / 16) % 2 ? 0.0 / 0.0 : 1.0 / 0.0); break;
    case 9: { /* a string of input bytes (maybe invalid UTF-8) */
        size_t len = (v / 16) % 8;
        if ((size_t)(in->end - in->p) < len) len = (size_t)(in->end - in->p);
        lua_pushlstring(L, (const char *)in->p, len);
        in->p += len;
        break;
    }
    case 10: lua_pushstring(L, "long string value, sixty-four bytes of plain text to fill up....."); break;
    case 11: lua_pushboolean(L, (int)(v / 16) % 2); break;
    case 12: tjl_push_null(L); break;
    case 13: tjl_push_empty_array(L); break;
    case 14: lua_pushcfunction(L, lua_gettop); break; /* not JSON */
    default: lua_pushnil(L); break; /* removes the key */
    }
}

/* Builds the graph described by data in L; leaves table 1 on top. */
static size_t build(lua_State *L, const uint8_t *data, size_t size)
{
    input in = {data, data + size};
    size_t limit = 1 + (next(&in) << 8 | next(&in));
    int n = 1 + (int)(next(&in) % NTABLES);
    unsigned tags = next(&in) << 8 | next(&in);
    lua_createtable(L, n, 0);
    int tables = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        lua_newtable(L);
        if (tags >> (i - 1) & 1) tjl_set_array(L, -1);
        lua_rawseti(L, tables, i);
    }
    while (in.p < in.end) {
        unsigned t = next(&in), k = next(&in), v = next(&in);
        lua_rawgeti(L, tables, 1 + (int)t % n);
        push_key(L, k);
        push_value(L, v, tables, n, &in);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    lua_rawgeti(L, tables, 1);
    lua_remove(L, tables);
    return limit;
}

/* Converts the value on top of L with the limit; the text or "ERROR: msg" in out. */
static void convert(lua_State *L, size_t limit, tbuf *out)
{
    tj_arena *a = tj_arena_new();
    if (!a) fail("out of memory");
    tj_value *v;
    tj_error err;
    int top = lua_gettop(L);
    int r = tjl_to_json_max(L, -1, "m", limit, NULL, a, &v, &err);
    if (lua_gettop(L) != top) fail("the Lua stack changed");
    /* a bound on C memory: every charged byte costs at most a few nodes, members and memo slots,
     * and the second pass (after an error) charges again */
    if (tj_arena_size(a) > 2 * 512 * limit + (256u << 10)) fail("C memory out of proportion to the limit");
    if (r) {
        size_t len = strnlen(err.msg, sizeof err.msg);
        if (len == 0 || len == sizeof err.msg) fail("error message empty or unterminated");
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)err.msg[i] < 0x20) fail("control character in an error message");
        tbuf_printf(out, "ERROR: %s", err.msg);
    } else if (tj_write(out, v) || out->oom) {
        fail("tj_write failed on a converted tree");
    }
    tj_arena_free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    lua_State *L1 = luaL_newstate(), *L2 = luaL_newstate();
    if (!L1 || !L2) fail("out of memory");
    size_t limit = build(L1, data, size);
    build(L2, data, size);
    tbuf t1 = TBUF_INIT, t2 = TBUF_INIT;
    convert(L1, limit, &t1);
    convert(L2, limit, &t2);
    if (t1.len != t2.len || memcmp(t1.data, t2.data, t1.len) != 0) {
        fprintf(stderr, "state 1: %s\nstate 2: %s\n", t1.data, t2.data);
        fail("two states give different results for the same graph");
    }
    if (strncmp(t1.data, "ERROR: ", 7) != 0) {
        tj_arena *a = tj_arena_new();
        tj_value *v;
        tj_error err;
        if (tj_parse(a, t1.data, t1.len, &v, &err)) fail("converted text does not parse");
        tj_arena_free(a);
        lua_settop(L1, 0);
        if (tjl_decode(L1, t1.data, t1.len, &err)) fail("converted text does not decode into Lua");
        tbuf back = TBUF_INIT;
        convert(L1, t1.len + 2, &back);
        if (back.len != t1.len || memcmp(back.data, t1.data, t1.len) != 0) {
            fprintf(stderr, "first: %s\nback:  %s\n", t1.data, back.data);
            fail("decode + encode changed the text");
        }
        tbuf_free(&back);
    }
    tbuf_free(&t1);
    tbuf_free(&t2);
    lua_close(L1);
    lua_close(L2);
    return 0;
}
