/* Lua configuration files: a chunk that returns a table of configuration keys. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "config.h"
#include "json.h"
#include "json_lua.h"
#include "sandbox.h"
#include "userfile.h"

/* A config file runs in the same sandbox as rules (no io, no os.execute, no native code), with
 * its own memory and instruction caps: it is as easy to get wrong as any script and must never
 * hang or touch the system. */
#define CONFIG_MAX_MEMORY (64u << 20)
#define CONFIG_MAX_INSTRUCTIONS 10000000
#define CONFIG_MAX_BYTES (4u << 20) /* a JSON config file, and the text searched for a bad key's line */

/* The line (from 1) of the first place `key` is written as a key in `src`: `key =` or `["key"] =`
 * in Lua, `"key":` in JSON; 0 when it is not written literally (a computed key). A config error
 * names it, since the table a chunk returns no longer knows where its keys came from. */
static unsigned key_line(const char *src, size_t len, const char *key, int json)
{
    size_t klen = strlen(key);
    unsigned line = 1;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\n') { line++; continue; }
        if (i + klen > len || memcmp(src + i, key, klen)) continue;
        size_t j = i + klen;
        int quoted = i > 0 && src[i - 1] == '"' && j < len && src[j] == '"';
        if (json || quoted) {
            if (!quoted) continue;
            j++;
            if (!json && j < len && src[j] == ']') j++;
        } else {
            int word = (i == 0 || !(isalnum((unsigned char)src[i - 1]) || src[i - 1] == '_')) &&
                       (j == len || !(isalnum((unsigned char)src[j]) || src[j] == '_'));
            if (!word) continue;
        }
        while (j < len && (src[j] == ' ' || src[j] == '\t' || src[j] == '\r' || src[j] == '\n')) j++;
        if (j < len && src[j] == (json ? ':' : '=') && (json || j + 1 >= len || src[j + 1] != '='))
            return line;
    }
    return 0;
}

/* Prefixes err with "path:LINE" where key is written in the file, else with "path". */
static void config_file_blame(const char *path, const char *key, int json, tly_err *err)
{
    char dir[4096], where[4200];
    const char *base;
    char *src = NULL;
    size_t len = 0;
    unsigned line = 0;
    tly_err ignored;
    if (!tly_split_path(path, dir, sizeof dir, &base, &ignored) &&
        !tly_read_below(dir, base, CONFIG_MAX_BYTES, &src, &len, &ignored))
        line = key_line(src, len, key, json);
    free(src);
    if (line) snprintf(where, sizeof where, "%s:%u", path, line);
    else snprintf(where, sizeof where, "%s", path);
    tly_err_wrap(err, TALLY_ECONFIG, where);
}

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
    if (rc == TALLY_OK && (rc = config_set(cfg, key, text, err))) config_file_blame(path, key, 0, err);
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

/* The line (from 1) and column (from 1) of byte `off` of src, for a JSON error's offset. */
static void line_of(const char *src, size_t off, unsigned *line, unsigned *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && src[i]; i++) {
        if (src[i] == '\n') { (*line)++; *col = 1; }
        else (*col)++;
    }
}

/* A JSON config file (a name ending in .json): one object of configuration keys. Strings are the
 * text config_set takes, numbers and booleans their JSON text, objects and arrays (destinations,
 * rules, rule_config) their JSON. Applied to `draft`; errors name the file and the line. */
static int apply_json_file(tally_config *draft, const char *path, const char *dir, const char *base, tly_err *err)
{
    char *src;
    size_t len;
    int rc = tly_read_below(dir, base, CONFIG_MAX_BYTES, &src, &len, err);
    if (rc) return rc;
    tj_arena *a = tj_arena_new();
    if (!a) { free(src); return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", path); }
    tj_value *root;
    tj_error je;
    tbuf text = TBUF_INIT;
    if ((rc = tj_parse(a, src, len, &root, &je))) {
        unsigned line, col;
        line_of(src, je.offset, &line, &col);
        rc = rc == TALLY_ENOMEM ? tly_err_set(err, rc, "%s: out of memory", path)
                                : tly_err_set(err, TALLY_ECONFIG, "%s:%u:%u: invalid JSON: %s", path, line, col, je.msg);
    } else if (root->type != TJ_OBJECT) {
        rc = tly_err_set(err, TALLY_ECONFIG, "%s: must be a JSON object of configuration keys", path);
    }
    for (size_t i = 0; !rc && i < root->u.obj.n; i++) {
        const tj_member *m = &root->u.obj.m[i];
        const char *key = m->key;
        if (strlen(key) != m->klen) {
            rc = tly_err_set(err, TALLY_ECONFIG, "%s: a configuration key has a NUL byte", path);
            break;
        }
        tbuf_reset(&text);
        if (m->val->type == TJ_NULL) {
            rc = tly_err_set(err, TALLY_ECONFIG, "%s: a null is not a configuration value", key);
        } else if (m->val->type == TJ_STRING) {
            if (strlen(m->val->u.str.s) != m->val->u.str.len)
                rc = tly_err_set(err, TALLY_ECONFIG, "%s: must not contain a NUL byte", key);
            else
                rc = config_set(draft, key, m->val->u.str.s, err);
        } else if (tj_write(&text, m->val) || text.oom) {
            rc = tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", path);
        } else {
            rc = config_set(draft, key, text.data, err);
        }
        if (rc && rc != TALLY_ENOMEM) config_file_blame(path, key, 1, err);
    }
    tbuf_free(&text);
    tj_arena_free(a);
    free(src);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
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
    if (ends_with(base, ".json")) {
        struct tally_config draft;
        if (config_copy(&draft, cfg)) return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", path);
        int rc = apply_json_file(&draft, path, dir, base, err);
        if (rc) {
            config_clear(&draft);
            return rc;
        }
        config_clear(cfg);
        *cfg = draft;
        return TALLY_OK;
    }
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
