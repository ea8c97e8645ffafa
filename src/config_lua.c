/* Lua configuration files: a chunk that returns a table of configuration keys. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "config.h"
#include "json_lua.h"
#include "sandbox.h"
#include "userfile.h"

/* A config file runs in the same sandbox as rules (no io, no os.execute, no native code), with
 * its own memory and instruction caps: it is as easy to get wrong as any script and must never
 * hang or touch the system. */
#define CONFIG_MAX_MEMORY (64u << 20)
#define CONFIG_MAX_INSTRUCTIONS 10000000

/* Converts one value of the returned table to the text config_set takes. */
static int set_from_lua(lua_State *L, tally_config *cfg, const char *path, const char *key, tly_err *err)
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
        tj_error je;
        if (!a) return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", path);
        if (tjl_to_json(L, -1, a, &v, &je)) rc = tly_err_set(err, TALLY_ECONFIG, "%s: %s: %s", path, key, je.msg);
        else if (tj_write(&json, v) || json.oom) rc = tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", path);
        tj_arena_free(a);
        text = json.data;
        break;
    }
    default:
        return tly_err_set(err, TALLY_ECONFIG, "%s: %s: a %s is not a configuration value", path, key, luaL_typename(L, -1));
    }
    if (rc == TALLY_OK && (rc = config_set(cfg, key, text, err))) tly_err_wrap(err, rc, path);
    tbuf_free(&json);
    return rc;
}

static int apply_table(lua_State *L, tally_config *cfg, const char *path, tly_err *err)
{
    if (!lua_istable(L, -1)) return tly_err_set(err, TALLY_ECONFIG, "%s: must return a table of configuration keys", path);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            return tly_err_set(err, TALLY_ECONFIG, "%s: configuration keys must be strings", path);
        }
        const char *key = lua_tostring(L, -2);
        int rc = set_from_lua(L, cfg, path, key, err);
        lua_pop(L, 1);
        if (rc) { lua_pop(L, 1); return rc; }
    }
    return TALLY_OK;
}

typedef struct applying { tally_config *cfg; const char *path; int rc; tly_err *err; } applying;

/* (applying, table) -> nothing: apply_table, protected, since converting the script's values
 * allocates under the sandbox's memory cap (an error raised outside a protected call aborts). */
static int apply_in_lua(lua_State *L)
{
    applying *a = lua_touserdata(L, 1);
    a->rc = apply_table(L, a->cfg, a->path, a->err);
    return 0;
}

int config_load(tally_config *cfg, const char *path, tly_err *err)
{
    /* require and tally.load_json resolve next to the config file; the file itself is read like a
     * rule: a regular file, not a link, never a FIFO that would block here */
    char dir[4096];
    const char *base;
    int fd;
    if (tly_split_path(path, dir, sizeof dir, &base, err) || tly_open_below(dir, base, &fd, err)) return TALLY_EIO;
    close(fd);
    const char *dirs[] = {dir, NULL};
    sb_limits lim = {CONFIG_MAX_MEMORY, CONFIG_MAX_INSTRUCTIONS};
    tly_logger quiet = {NULL, NULL, TALLY_LOG_ERROR};
    sandbox *sb = sb_new(&lim, dirs, &quiet);
    if (!sb) return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", path);
    /* all or nothing: the keys land on a copy, which replaces cfg only when every one was good,
     * so a file with one bad key never leaves a half-applied config that would then open */
    struct tally_config draft;
    if (config_copy(&draft, cfg)) {
        sb_free(sb);
        return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", path);
    }
    applying a = {&draft, path, TALLY_OK, err};
    int rc = sb_load_file(sb, path, err);
    if (!rc && sb_protect(sb, apply_in_lua, &a, 1, err)) rc = tly_err_wrap(err, TALLY_ELUA, path);
    if (!rc) rc = a.rc;
    sb_free(sb);
    if (rc) {
        config_clear(&draft);
        return rc;
    }
    config_clear(cfg);
    *cfg = draft;
    return TALLY_OK;
}

int tally_config_load(tally_config *cfg, const char *path)
{
    tly_err err;
    if (!cfg || !path) return tly_publish(tly_err_set(&err, TALLY_EINVAL, "tally_config_load: NULL argument"), &err);
    return tly_publish(config_load(cfg, path, &err), &err);
}
