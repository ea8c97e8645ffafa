/* Lua configuration files: a chunk that returns a table of configuration keys. It runs in a
 * minimal sandbox (no io, os, load, require) with an instruction cap, because a config file is as
 * easy to get wrong as any script and must never hang or touch the system. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "config.h"
#include "json_lua.h"

#define CONFIG_MAX_BYTES (1 << 20)
#define CONFIG_MAX_INSTRUCTIONS 10000000

static void too_long(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    luaL_error(L, "config file ran for more than %d instructions", CONFIG_MAX_INSTRUCTIONS);
}

#define CONFIG_MAX_MEMORY (64u << 20)

typedef struct capped { size_t used; } capped;

/* Allocation cap: a config file that builds a huge string fails with "not enough memory" instead
 * of taking the host down. */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    capped *c = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        c->used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && c->used - old + nsize > CONFIG_MAX_MEMORY) return NULL;
    void *p = realloc(ptr, nsize);
    if (p) c->used = c->used - old + nsize;
    return p;
}

static int read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return tly_fail(TALLY_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(CONFIG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, f) : 0;
    fclose(f);
    if (!buf) return tly_fail(TALLY_ENOMEM, "%s: out of memory", path);
    if (n > CONFIG_MAX_BYTES) {
        free(buf);
        return tly_fail(TALLY_ECONFIG, "%s: larger than %d bytes", path, CONFIG_MAX_BYTES);
    }
    *out = buf;
    *len = n;
    return TALLY_OK;
}

/* An environment with only pure functions: enough to compute values, nothing to reach out with. */
static void push_sandbox_env(lua_State *L)
{
    lua_newtable(L);
    static const char *const globals[] = {"pairs", "ipairs", "tostring", "tonumber", "type", "select",
                                          "next", "error", "assert", "pcall", NULL};
    for (int i = 0; globals[i]; i++) {
        lua_getglobal(L, globals[i]);
        lua_setfield(L, -2, globals[i]);
    }
    static const char *const libs[] = {"string", "table", "math", "utf8", NULL};
    for (int i = 0; libs[i]; i++) {
        lua_getglobal(L, libs[i]);
        lua_setfield(L, -2, libs[i]);
    }
}

/* Converts one value of the returned table to the text tally_config_set takes. */
static int set_from_lua(lua_State *L, tally_config *cfg, const char *path, const char *key)
{
    char num[64];
    const char *text = NULL;
    tbuf json = TBUF_INIT;
    int rc = TALLY_OK;
    switch (lua_type(L, -1)) {
    case LUA_TSTRING: text = lua_tostring(L, -1); break;
    case LUA_TBOOLEAN: text = lua_toboolean(L, -1) ? "true" : "false"; break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -1));
        else snprintf(num, sizeof num, "%.17g", lua_tonumber(L, -1));
        text = num;
        break;
    case LUA_TTABLE: {
        tj_arena *a = tj_arena_new();
        tj_value *v;
        tj_error err;
        if (!a) return tly_fail(TALLY_ENOMEM, "%s: out of memory", path);
        if (tjl_to_json(L, -1, a, &v, &err)) rc = tly_fail(TALLY_ECONFIG, "%s: %s: %s", path, key, err.msg);
        else if (tj_write(&json, v) || json.oom) rc = tly_fail(TALLY_ENOMEM, "%s: out of memory", path);
        tj_arena_free(a);
        text = json.data;
        break;
    }
    default:
        return tly_fail(TALLY_ECONFIG, "%s: %s: a %s is not a configuration value", path, key, luaL_typename(L, -1));
    }
    if (rc == TALLY_OK) {
        rc = tally_config_set(cfg, key, text);
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", tally_errmsg(NULL));
            tly_fail(rc, "%s: %s", path, msg);
        }
    }
    tbuf_free(&json);
    return rc;
}

static int apply_table(lua_State *L, tally_config *cfg, const char *path)
{
    if (!lua_istable(L, -1)) return tly_fail(TALLY_ECONFIG, "%s: must return a table of configuration keys", path);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            return tly_fail(TALLY_ECONFIG, "%s: configuration keys must be strings", path);
        }
        const char *key = lua_tostring(L, -2);
        int rc = set_from_lua(L, cfg, path, key);
        lua_pop(L, 1);
        if (rc) { lua_pop(L, 1); return rc; }
    }
    return TALLY_OK;
}

int tally_config_load(tally_config *cfg, const char *path)
{
    if (!cfg || !path) return tly_fail(TALLY_EINVAL, "tally_config_load: NULL argument");
    char *src = NULL;
    size_t len = 0;
    int rc = read_file(path, &src, &len);
    if (rc) return rc;
    capped mem = {0};
    lua_State *L = lua_newstate(capped_alloc, &mem);
    if (!L) { free(src); return tly_fail(TALLY_ENOMEM, "%s: out of memory", path); }
    /* only pure libraries are opened at all; the chunk sees a subset of them through its _ENV */
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base}, {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8}};
    for (size_t i = 0; i < sizeof libs / sizeof *libs; i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);
        lua_pop(L, 1);
    }
    tjl_init(L);
    lua_sethook(L, too_long, LUA_MASKCOUNT, CONFIG_MAX_INSTRUCTIONS);
    char chunk[256];
    snprintf(chunk, sizeof chunk, "@%s", path);
    if (luaL_loadbufferx(L, src, len, chunk, "t") != LUA_OK) {
        rc = tly_fail(TALLY_ELUA, "%s", lua_tostring(L, -1));
    } else {
        push_sandbox_env(L);
        lua_setupvalue(L, -2, 1); /* the chunk's _ENV */
        if (lua_pcall(L, 0, 1, 0) != LUA_OK) rc = tly_fail(TALLY_ELUA, "%s", lua_tostring(L, -1));
        else rc = apply_table(L, cfg, path);
    }
    lua_close(L);
    free(src);
    return rc;
}
