/* tally for Lua hosts: the `tally` Lua module (luaopen_tally, built as tally.so) and the per-mod
 * tables a C game gives its scripts (tally_lua_push_mod, shipped in libtally_lua.a).
 *
 * This file is compiled against the HOST's Lua headers and its lua_* calls bind to the host's
 * interpreter. libtally's own Lua is localized inside tally_all.o, and so is the second copy of the
 * JSON codec and bridge linked here (json.c, buf.c, json_lua.c built against the host Lua; see the
 * Makefile's "Lua hosts" section): two codec copies, two Lua builds, nothing shared but tally_*.
 *
 * State: none in C. What a lua_State needs (the scratch arena, metatables) lives in its registry,
 * so any number of states, on any threads, can use this code at once.
 *
 * Error policy: a wrong argument TYPE is a bug in the caller and raises (luaL_typeerror); a bad
 * VALUE (empty event, NaN in properties, unknown option, runtime refusal) returns nil plus a text
 * that names the field, like the C API's tally_errmsg. */
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "json.h"
#include "json_lua.h"
#include "tally.h"

#define EXPORT __attribute__((visibility("default")))

#define HANDLE_MT  "tally.handle"
#define MOD_MT     "tally.mod"
#define SCRATCH_MT "tally.scratch"

/* __gc and __close run where nobody can wait long (interpreter exit, scope exit): whatever is not
 * delivered by then stays in the store (when there is one) for the next open. */
#define AUTO_CLOSE_MS 1000
/* flush/close/reload without a timeout: long enough for a slow network, finite so a dead endpoint
 * cannot hang a script. A negative value asks for no limit. */
#define DEFAULT_WAIT_MS 10000
#define MOD_TEXT_MAX 255

/* ======================================================================== per-state scratch */

/* One per lua_State, in the registry. Holding the arena, output buffer and config in a userdata
 * with __gc means a Lua error raised half-way (out of memory inside the bridge) leaks nothing:
 * the next call resets them, lua_close frees them. Reuse is safe because no Lua code runs while a
 * call holds them (the bridge calls no metamethods and the runtime never calls back). */
typedef struct scratch {
    tj_arena     *a;
    tbuf          out;
    tally_config *cfg;
} scratch;

static char scratch_key; /* its address is the registry key */

static int scratch_gc(lua_State *L)
{
    scratch *s = lua_touserdata(L, 1);
    tj_arena_free(s->a);
    tbuf_free(&s->out);
    tally_config_free(s->cfg);
    memset(s, 0, sizeof *s);
    return 0;
}

static scratch *get_scratch(lua_State *L)
{
    scratch *s;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &scratch_key) == LUA_TUSERDATA) {
        s = lua_touserdata(L, -1);
    } else {
        lua_pop(L, 1);
        s = lua_newuserdatauv(L, sizeof *s, 0);
        memset(s, 0, sizeof *s);
        if (luaL_newmetatable(L, SCRATCH_MT)) {
            lua_pushcfunction(L, scratch_gc);
            lua_setfield(L, -2, "__gc");
        }
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &scratch_key);
    }
    lua_pop(L, 1); /* the registry keeps it alive */
    if (!s->a && !(s->a = tj_arena_new())) luaL_error(L, "tally: out of memory");
    tj_arena_reset(s->a);
    tbuf_reset(&s->out);
    tally_config_free(s->cfg);
    s->cfg = NULL;
    return s;
}

/* ======================================================================== bindings */

/* What a handle (tally.open) or a mod table (tally_lua_push_mod, t:mod) calls through. */
typedef struct binding {
    tally_t        *t;       /* NULL once an owned handle is closed */
    struct binding *via;     /* t:mod() tables: the handle's binding (kept alive as user value) */
    int             owned;   /* tally.open handles: closed by close, __close and __gc */
    int             mod;     /* mod tables: context.mod, rate limit, own counters */
    const char     *name;    /* mods: copies stored right after the struct */
    const char     *version; /* NULL: context.mod has no version */
    double          rate, burst, tokens, last;
    lua_Integer     accepted, rejected, limited;
} binding;

typedef struct call {
    binding *b;
    tally_t *t;
    int      arg; /* stack index of the first argument after self */
} call;

/* Handle methods have no upvalues and take the handle as self. Mod functions carry upvalue 1 =
 * their binding and upvalue 2 = their table, so both tally.track(...) and tally:track(...) work. */
static void open_call(lua_State *L, call *c)
{
    if (lua_type(L, lua_upvalueindex(1)) == LUA_TUSERDATA) {
        c->b = lua_touserdata(L, lua_upvalueindex(1));
        c->arg = lua_rawequal(L, 1, lua_upvalueindex(2)) ? 2 : 1;
    } else {
        c->b = luaL_checkudata(L, 1, HANDLE_MT);
        c->arg = 2;
    }
    c->t = c->b->via ? c->b->via->t : c->b->t;
    if (!c->t) luaL_error(L, "tally: the handle is closed");
}

static int fail(lua_State *L, const char *msg)
{
    luaL_pushfail(L);
    lua_pushstring(L, msg);
    return 2;
}

static int refuse(lua_State *L, call *c, const char *msg)
{
    if (c->b->mod) c->b->rejected++;
    return fail(L, msg);
}

static int result(lua_State *L, call *c, int rc)
{
    if (rc != TALLY_OK) return refuse(L, c, tally_errmsg(c->t));
    if (c->b->mod) c->b->accepted++;
    lua_pushboolean(L, 1);
    return 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Token bucket: refilled continuously at `rate`, capped at `burst`. Checked before any conversion
 * so a flooding mod costs little more than this. */
static int rate_ok(call *c)
{
    binding *b = c->b;
    if (!b->mod || b->rate <= 0) return 1;
    double now = now_s();
    b->tokens = fmin(b->burst, b->tokens + (now - b->last) * b->rate);
    b->last = now;
    if (b->tokens >= 1) {
        b->tokens -= 1;
        return 1;
    }
    b->limited++;
    return 0;
}

static int limited(lua_State *L, call *c)
{
    char msg[MOD_TEXT_MAX + 64];
    snprintf(msg, sizeof msg, "rate limited (mod %s: %g events/s)", c->b->name, c->b->rate);
    return fail(L, msg);
}

/* ======================================================================== argument checks */

static const char *check_str(lua_State *L, int i, size_t *len)
{
    if (lua_type(L, i) != LUA_TSTRING) luaL_typeerror(L, i, "string");
    return lua_tolstring(L, i, len);
}

static const char *opt_str(lua_State *L, int i, size_t *len)
{
    *len = 0;
    if (lua_isnoneornil(L, i)) return NULL;
    if (lua_type(L, i) != LUA_TSTRING) luaL_typeerror(L, i, "string or nil");
    return lua_tolstring(L, i, len);
}

/* Returns i when a table is there, 0 for nil or nothing. */
static int opt_table(lua_State *L, int i)
{
    if (lua_isnoneornil(L, i)) return 0;
    luaL_checktype(L, i, LUA_TTABLE);
    return i;
}

static int to_int_ms(lua_State *L, int i)
{
    lua_Integer ms = luaL_optinteger(L, i, DEFAULT_WAIT_MS);
    if (ms < 0) return -1;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* ======================================================================== building messages */

/* Errors while building go to a fixed buffer: the text must outlive the arena reset. */
typedef struct build {
    lua_State *L;
    scratch   *s;
    char       err[256];
} build;

static int bfail(build *bd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bfail(build *bd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(bd->err, sizeof bd->err, fmt, ap);
    va_end(ap);
    return -1;
}

static int oom(build *bd) { return bfail(bd, "out of memory"); }

static int set_value(build *bd, tj_value *obj, const char *key, tj_value *v)
{
    if (!v || tj_object_set(bd->s->a, obj, key, strlen(key), v)) return oom(bd);
    return 0;
}

/* Strings reach the message with their length, so an embedded NUL survives as \u0000. */
static int set_string(build *bd, tj_value *obj, const char *field, const char *s, size_t len)
{
    size_t bad;
    if (!tj_utf8_valid(s, len, &bad)) return bfail(bd, "%s: invalid UTF-8 at byte %zu", field, bad);
    const char *key = strrchr(field, '.');
    return set_value(bd, obj, key ? key + 1 : field, tj_new_string(bd->s->a, s, len));
}

/* Converts the table at idx; `field` names it in errors ("properties.items[2]: NaN ..."). */
static int convert(build *bd, int idx, const char *field, tj_value **out)
{
    tj_error err;
    /* no part of a message can be longer than a message: stop there, whatever the table graph */
    if (tjl_to_json_max(bd->L, idx, field, TALLY_MAX_MESSAGE_BYTES, NULL, bd->s->a, out, &err))
        return bfail(bd, "%s", err.msg);
    return 0;
}

static int convert_object(build *bd, int idx, const char *field, tj_value **out)
{
    if (convert(bd, idx, field, out)) return -1;
    if ((*out)->type != TJ_OBJECT)
        return bfail(bd, "%s: expected a table with string keys (a JSON object), not an array", field);
    return 0;
}

/* Every message from a mod says which mod sent it; the mod's own context.mod is replaced, so a
 * mod cannot speak for another. */
static int stamp_mod(build *bd, const binding *b, tj_value *m)
{
    tj_arena *a = bd->s->a;
    tj_value *ctx = tj_object_get(m, "context");
    if (!ctx) {
        if (set_value(bd, m, "context", ctx = tj_new(a, TJ_OBJECT))) return -1;
    } else if (ctx->type != TJ_OBJECT) {
        return bfail(bd, "context: expected a table with string keys (a JSON object)");
    }
    tj_value *mod = tj_new(a, TJ_OBJECT);
    if (!mod || set_value(bd, mod, "name", tj_new_string(a, b->name, strlen(b->name)))) return oom(bd);
    if (b->version && set_value(bd, mod, "version", tj_new_string(a, b->version, strlen(b->version))))
        return -1;
    return set_value(bd, ctx, "mod", mod);
}

static int send_tree(lua_State *L, call *c, build *bd, tj_value *m)
{
    if (c->b->mod && stamp_mod(bd, c->b, m)) return refuse(L, c, bd->err);
    if (tj_write(&bd->s->out, m) || bd->s->out.oom) return refuse(L, c, "out of memory");
    return result(L, c, tally_send(c->t, bd->s->out.data));
}

enum kind { K_TRACK, K_IDENTIFY, K_PAGE, K_SCREEN, K_GROUP, K_ALIAS };

static const struct kind_def {
    const char *type;
    const char *field;    /* the first argument */
    int         required; /* the first argument must be a string (else string or nil) */
    const char *payload;  /* the table argument; NULL: the second argument is previousId */
} kinds[] = {
    [K_TRACK] = {"track", "event", 1, "properties"},
    [K_IDENTIFY] = {"identify", "userId", 0, "traits"},
    [K_PAGE] = {"page", "name", 0, "properties"},
    [K_SCREEN] = {"screen", "name", 0, "properties"},
    [K_GROUP] = {"group", "groupId", 1, "traits"},
    [K_ALIAS] = {"alias", "userId", 1, NULL},
};

/* Read in this order, so the written message does not depend on Lua's hash order. */
static const char *const opt_strings[] = {"userId", "anonymousId", "messageId", "timestamp", "category", NULL};
static const char *const opt_objects[] = {"context", "integrations", NULL};

static int known_opt(const char *k)
{
    for (int i = 0; opt_strings[i]; i++)
        if (!strcmp(k, opt_strings[i])) return 1;
    for (int i = 0; opt_objects[i]; i++)
        if (!strcmp(k, opt_objects[i])) return 1;
    return 0;
}

/* A typo in an option would silently drop the value: unknown keys are errors. */
static int check_opt_keys(build *bd, int opts, enum kind k)
{
    lua_State *L = bd->L;
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            return bfail(bd, "opts: keys must be strings");
        }
        const char *key = lua_tostring(L, -1);
        if (!known_opt(key) || (!strcmp(key, "category") && k != K_PAGE)) {
            int r = bfail(bd, "opts.%s: unknown option (userId, anonymousId, context, integrations, messageId, "
                              "timestamp%s)", key, k == K_PAGE ? ", category" : "");
            lua_pop(L, 1);
            return r;
        }
    }
    return 0;
}

static int apply_opts(build *bd, int opts, enum kind k, tj_value *m)
{
    lua_State *L = bd->L;
    if (check_opt_keys(bd, opts, k)) return -1;
    char field[64];
    for (int i = 0; opt_strings[i]; i++) {
        snprintf(field, sizeof field, "opts.%s", opt_strings[i]);
        lua_pushstring(L, opt_strings[i]);
        int t = lua_rawget(L, opts);
        int r = 0;
        if (t == LUA_TSTRING) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            r = set_string(bd, m, field, s, len);
        } else if (t != LUA_TNIL) {
            r = bfail(bd, "%s: expected a string, got %s", field, lua_typename(L, t));
        }
        lua_pop(L, 1);
        if (r) return -1;
    }
    for (int i = 0; opt_objects[i]; i++) {
        snprintf(field, sizeof field, "opts.%s", opt_objects[i]);
        lua_pushstring(L, opt_objects[i]);
        int t = lua_rawget(L, opts), r = 0;
        tj_value *v;
        if (t == LUA_TTABLE) {
            r = convert_object(bd, -1, field, &v) || set_value(bd, m, opt_objects[i], v);
        } else if (t != LUA_TNIL) {
            r = bfail(bd, "%s: expected a table, got %s", field, lua_typename(L, t));
        }
        lua_pop(L, 1);
        if (r) return -1;
    }
    return 0;
}

/* tally_send requires previousId on an alias, which tally_alias fills from the device's anonymous
 * id. Here the best we know is opts.anonymousId, else the identity as the processor last published
 * it (an earlier reset still in the queue is not reflected). */
static int fill_previous_id(build *bd, tally_t *t, tj_value *m)
{
    if (tj_object_get(m, "previousId")) return 0;
    const tj_value *anon = tj_object_get(m, "anonymousId");
    if (anon && anon->type == TJ_STRING) return set_value(bd, m, "previousId", tj_new_string(bd->s->a, anon->u.str.s, anon->u.str.len));
    char *ids = NULL;
    tj_value *v, *id;
    tj_error err;
    int r = -1;
    if (tally_identity(t, &ids) == TALLY_OK && !tj_parse(bd->s->a, ids, strlen(ids), &v, &err) &&
        (id = tj_object_get(v, "anonymousId")) != NULL && id->type == TJ_STRING)
        r = set_value(bd, m, "previousId", id);
    tally_free(ids);
    return r ? bfail(bd, "previousId: required (no anonymous id known; pass it, or opts.anonymousId)") : 0;
}

static int has_nul(const char *s, size_t len) { return s && strlen(s) != len; }

/* The typed calls. Without opts they use the typed C API; with opts, from a mod, or when a string
 * holds a NUL (which C strings would cut), they build the whole message and use tally_send, which
 * keeps every given field exactly. */
static int emit(lua_State *L, enum kind k)
{
    const struct kind_def *d = &kinds[k];
    call c;
    open_call(L, &c);
    size_t l1 = 0, l2 = 0;
    const char *s1 = d->required ? check_str(L, c.arg, &l1) : opt_str(L, c.arg, &l1), *s2 = NULL;
    int tbl = 0;
    if (d->payload) tbl = opt_table(L, c.arg + 1);
    else s2 = opt_str(L, c.arg + 1, &l2);
    int opts = opt_table(L, c.arg + 2);
    if (!rate_ok(&c)) return limited(L, &c);

    build bd = {L, get_scratch(L), ""};
    if (!opts && !c.b->mod && !has_nul(s1, l1) && !has_nul(s2, l2)) {
        const char *json = NULL;
        tj_value *v;
        if (tbl) {
            if (convert(&bd, tbl, d->payload, &v)) return refuse(L, &c, bd.err);
            if (tj_write(&bd.s->out, v) || bd.s->out.oom) return refuse(L, &c, "out of memory");
            json = bd.s->out.data;
        }
        int rc = TALLY_EINVAL;
        switch (k) {
        case K_TRACK: rc = tally_track(c.t, s1, json); break;
        case K_IDENTIFY: rc = tally_identify(c.t, s1, json); break;
        case K_PAGE: rc = tally_page(c.t, NULL, s1, json); break;
        case K_SCREEN: rc = tally_screen(c.t, s1, json); break;
        case K_GROUP: rc = tally_group(c.t, s1, json); break;
        case K_ALIAS: rc = tally_alias(c.t, s1, s2); break;
        }
        return result(L, &c, rc);
    }

    tj_value *m = tj_new(bd.s->a, TJ_OBJECT), *v;
    if (!m || set_value(&bd, m, "type", tj_new_string(bd.s->a, d->type, strlen(d->type)))) return refuse(L, &c, "out of memory");
    if (s1 && set_string(&bd, m, d->field, s1, l1)) return refuse(L, &c, bd.err);
    if (s2 && set_string(&bd, m, "previousId", s2, l2)) return refuse(L, &c, bd.err);
    if (tbl && (convert(&bd, tbl, d->payload, &v) || set_value(&bd, m, d->payload, v))) return refuse(L, &c, bd.err);
    if (opts && apply_opts(&bd, opts, k, m)) return refuse(L, &c, bd.err);
    if (k == K_ALIAS && fill_previous_id(&bd, c.t, m)) return refuse(L, &c, bd.err);
    return send_tree(L, &c, &bd, m);
}

static int l_track(lua_State *L) { return emit(L, K_TRACK); }
static int l_identify(lua_State *L) { return emit(L, K_IDENTIFY); }
static int l_page(lua_State *L) { return emit(L, K_PAGE); }
static int l_screen(lua_State *L) { return emit(L, K_SCREEN); }
static int l_group(lua_State *L) { return emit(L, K_GROUP); }
static int l_alias(lua_State *L) { return emit(L, K_ALIAS); }

/* Identity changes are the host's (a mod must not log the player in as someone else). */
static int mod_may_send(const tj_value *m)
{
    const tj_value *type = tj_object_get(m, "type");
    if (!type || type->type != TJ_STRING) return 1; /* tally_send names the problem */
    return strcmp(type->u.str.s, "identify") && strcmp(type->u.str.s, "alias");
}

static int l_send(lua_State *L)
{
    call c;
    open_call(L, &c);
    luaL_checktype(L, c.arg, LUA_TTABLE);
    if (!rate_ok(&c)) return limited(L, &c);
    build bd = {L, get_scratch(L), ""};
    tj_value *m;
    if (convert(&bd, c.arg, NULL, &m)) return refuse(L, &c, bd.err);
    if (c.b->mod) {
        if (m->type != TJ_OBJECT) return refuse(L, &c, "message: expected a table with string keys (a JSON object)");
        if (!mod_may_send(m)) return refuse(L, &c, "type: identify and alias are for the host, not mods (track, page, screen, group)");
    }
    return send_tree(L, &c, &bd, m);
}

/* ======================================================================== handle-only calls */

static binding *check_handle(lua_State *L)
{
    binding *b = luaL_checkudata(L, 1, HANDLE_MT);
    if (!b->t) luaL_error(L, "tally: the handle is closed");
    return b;
}

static int status(lua_State *L, tally_t *t, int rc)
{
    if (rc != TALLY_OK) return fail(L, tally_errmsg(t));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_reset(lua_State *L)
{
    binding *b = check_handle(L);
    return status(L, b->t, tally_reset(b->t));
}

/* t:consent{analytics = true, advertising = false} merges the device's preferences; t:consent(false)
 * opts out (tally_consent). Handles only: mods get no such function, consent is the host's. */
static int l_consent(lua_State *L)
{
    binding *b = check_handle(L);
    if (lua_isboolean(L, 2) && !lua_toboolean(L, 2)) return status(L, b->t, tally_consent(b->t, "false"));
    luaL_checktype(L, 2, LUA_TTABLE);
    build bd = {L, get_scratch(L), ""};
    tj_value *prefs;
    if (convert_object(&bd, 2, "consent", &prefs)) return fail(L, bd.err);
    if (tj_write(&bd.s->out, prefs) || bd.s->out.oom) return fail(L, "out of memory");
    return status(L, b->t, tally_consent(b->t, bd.s->out.data));
}

static int l_session_start(lua_State *L)
{
    binding *b = check_handle(L);
    return status(L, b->t, tally_session_start(b->t));
}

static int l_flush(lua_State *L)
{
    binding *b = check_handle(L);
    return status(L, b->t, tally_flush(b->t, to_int_ms(L, 2)));
}

/* t:forget(id): the number of messages erased, or nil and why. */
static int l_forget(lua_State *L)
{
    binding *b = check_handle(L);
    if (lua_type(L, 2) != LUA_TSTRING) return fail(L, "forget: id: expected a string (a userId or anonymousId)");
    size_t len;
    const char *id = lua_tolstring(L, 2, &len);
    if (strlen(id) != len) return fail(L, "forget: id: holds a NUL byte");
    size_t erased = 0;
    int rc = tally_forget(b->t, id, &erased);
    if (rc != TALLY_OK) return fail(L, tally_errmsg(b->t));
    lua_pushinteger(L, (lua_Integer)erased);
    return 1;
}

static int l_reload(lua_State *L)
{
    binding *b = check_handle(L);
    return status(L, b->t, tally_reload(b->t, to_int_ms(L, 2)));
}

/* Closing twice is harmless: `local t <close>` plus an explicit close is a normal pattern. */
static int l_close(lua_State *L)
{
    binding *b = luaL_checkudata(L, 1, HANDLE_MT);
    int ms = to_int_ms(L, 2);
    if (!b->t) {
        lua_pushboolean(L, 1);
        return 1;
    }
    tally_t *t = b->t;
    b->t = NULL; /* the handle is freed whatever close returns */
    return status(L, NULL, tally_close(t, ms));
}

static int l_auto_close(lua_State *L)
{
    binding *b = lua_touserdata(L, 1);
    if (b && b->owned && b->t) {
        tally_t *t = b->t;
        b->t = NULL;
        tally_close(t, AUTO_CLOSE_MS);
    }
    return 0;
}

static int l_tostring(lua_State *L)
{
    binding *b = luaL_checkudata(L, 1, HANDLE_MT);
    if (b->t) lua_pushfstring(L, "tally.handle (%p)", (void *)b->t);
    else lua_pushliteral(L, "tally.handle (closed)");
    return 1;
}

/* Pushes the JSON text as Lua values (exact: integers stay integers). Frees `json`. */
static int push_json_text(lua_State *L, char *json)
{
    scratch *s = get_scratch(L);
    tj_value *v;
    tj_error err;
    int bad = tj_parse(s->a, json, strlen(json), &v, &err);
    tally_free(json); /* before anything that can raise */
    if (bad) return fail(L, err.msg);
    if (tjl_push(L, v)) return fail(L, "out of memory");
    return 1;
}

static int l_stats(lua_State *L)
{
    binding *b = check_handle(L);
    char *json = NULL;
    if (tally_stats(b->t, &json) != TALLY_OK) return fail(L, tally_errmsg(b->t));
    return push_json_text(L, json);
}

/* The ids the next message would carry, as the processor last published them. For mods too:
 * reading them changes nothing. */
static int l_session(lua_State *L)
{
    call c;
    open_call(L, &c);
    char *json = NULL;
    if (tally_identity(c.t, &json) != TALLY_OK) return fail(L, tally_errmsg(c.t));
    return push_json_text(L, json);
}

/* ======================================================================== mod tables */

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static int l_mod_stats(lua_State *L)
{
    call c;
    open_call(L, &c);
    binding *b = c.b;
    lua_createtable(L, 0, 7);
    lua_pushstring(L, b->name);
    lua_setfield(L, -2, "mod");
    if (b->version) {
        lua_pushstring(L, b->version);
        lua_setfield(L, -2, "version");
    }
    set_int(L, "accepted", b->accepted);
    set_int(L, "rejected", b->rejected);
    set_int(L, "rate_limited", b->limited);
    lua_pushnumber(L, b->rate);
    lua_setfield(L, -2, "max_events_per_second");
    lua_pushnumber(L, b->rate > 0 ? b->burst : 0);
    lua_setfield(L, -2, "burst");
    return 1;
}

static int valid_text(const char *s, size_t max)
{
    size_t len = strlen(s);
    return len <= max && tj_utf8_valid(s, len, NULL);
}

/* Pushes a new mod binding userdata. The strings are copied after the struct: one allocation,
 * owned by Lua, nothing to free. */
static binding *new_mod_binding(lua_State *L, const char *name, const char *version, double rate)
{
    size_t nl = strlen(name) + 1, vl = version ? strlen(version) + 1 : 0;
    binding *b = lua_newuserdatauv(L, sizeof *b + nl + vl, 1);
    memset(b, 0, sizeof *b);
    char *tail = (char *)(b + 1);
    memcpy(tail, name, nl);
    b->name = tail;
    if (version) {
        memcpy(tail + nl, version, vl);
        b->version = tail + nl;
    }
    b->mod = 1;
    b->rate = isinf(rate) ? 0 : rate;
    b->burst = fmax(1.0, 2.0 * b->rate);
    b->tokens = b->burst;
    b->last = now_s();
    luaL_newmetatable(L, MOD_MT);
    lua_setmetatable(L, -2);
    return b;
}

static const luaL_Reg mod_funcs[] = {
    {"track", l_track},   {"page", l_page},         {"screen", l_screen},
    {"group", l_group},   {"send", l_send},         {"session", l_session},
    {"stats", l_mod_stats}, {NULL, NULL},
};

static void push_common(lua_State *L);

/* Replaces the binding on top of the stack with its mod table. */
static void push_mod_table(lua_State *L)
{
    int b = lua_gettop(L);
    lua_createtable(L, 0, 12);
    for (const luaL_Reg *f = mod_funcs; f->name; f++) {
        lua_pushvalue(L, b);
        lua_pushvalue(L, b + 1);
        lua_pushcclosure(L, f->func, 2);
        lua_setfield(L, -2, f->name);
    }
    push_common(L);
    lua_remove(L, b);
}

TALLY_API int tally_lua_push_mod(struct lua_State *L, tally_t *t, const char *mod_name, const char *mod_version,
                              double max_events_per_second)
{
    if (!L || !t || !mod_name || !*mod_name || !valid_text(mod_name, MOD_TEXT_MAX) ||
        (mod_version && !valid_text(mod_version, MOD_TEXT_MAX)) || isnan(max_events_per_second) ||
        max_events_per_second < 0)
        return TALLY_EINVAL;
    luaL_checkstack(L, 8, "tally_lua_push_mod");
    binding *b = new_mod_binding(L, mod_name, mod_version, max_events_per_second);
    b->t = t;
    push_mod_table(L);
    return TALLY_OK;
}

/* t:mod(name[, version[, max_events_per_second]]): the same table for Lua hosts. It keeps the
 * handle alive, and fails cleanly ("the handle is closed") once the handle is closed. */
static int l_mod(lua_State *L)
{
    binding *h = check_handle(L);
    const char *name = check_str(L, 2, &(size_t){0});
    const char *version = opt_str(L, 3, &(size_t){0});
    double rate = lua_isnoneornil(L, 4) ? 0 : luaL_checknumber(L, 4);
    if (!*name || !valid_text(name, MOD_TEXT_MAX)) return fail(L, "name: expected 1 to 255 bytes of UTF-8");
    if (version && !valid_text(version, MOD_TEXT_MAX)) return fail(L, "version: expected up to 255 bytes of UTF-8");
    if (isnan(rate) || rate < 0) return fail(L, "max_events_per_second: expected a number >= 0 (0: no limit)");
    binding *b = new_mod_binding(L, name, version, rate);
    b->via = h;
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    push_mod_table(L);
    return 1;
}

/* ======================================================================== module functions */

/* null, empty_array, array, json, version: what scripts need to express exact JSON (shared with
 * the rules sandbox). */
static void push_common(lua_State *L)
{
    tjl_set_helpers(L, tally_version());
}

/* Writes the text form tally_config_set takes for the value on top of the stack into s->out.
 * Returns NULL, or an error text in err. */
static const char *config_text(lua_State *L, scratch *s, const char *key, char *err, size_t errlen)
{
    tbuf_reset(&s->out);
    switch (lua_type(L, -1)) {
    case LUA_TSTRING: {
        size_t len;
        const char *v = lua_tolstring(L, -1, &len);
        if (strlen(v) != len) {
            snprintf(err, errlen, "%s: contains a NUL byte", key);
            return NULL;
        }
        return v;
    }
    case LUA_TBOOLEAN: return lua_toboolean(L, -1) ? "true" : "false";
    case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) {
            tbuf_printf(&s->out, "%lld", (long long)lua_tointeger(L, -1));
        } else {
            double d = lua_tonumber(L, -1);
            /* 100.0 is how some hosts (and arithmetic) spell 100; integer keys accept it */
            if (d == floor(d) && fabs(d) < 9.0e15) tbuf_printf(&s->out, "%lld", (long long)d);
            else tj_write_double(&s->out, d);
        }
        break;
    case LUA_TTABLE: {
        tj_value *v;
        tj_error e;
        tj_arena_reset(s->a);
        if (tjl_to_json_at(L, -1, key, s->a, &v, &e)) {
            snprintf(err, errlen, "%s", e.msg);
            return NULL;
        }
        tj_write(&s->out, v);
        break;
    }
    default:
        snprintf(err, errlen, "%s: a %s is not a configuration value", key, luaL_typename(L, -1));
        return NULL;
    }
    if (s->out.oom) {
        snprintf(err, errlen, "%s: out of memory", key);
        return NULL;
    }
    return s->out.data;
}

/* tally.open{key = value, ...} (keys as tally_config_set), tally.open("config.lua") (a config
 * file), or tally.open() (defaults plus TALLY_WRITE_KEY / TALLY_ENDPOINT). */
static int l_open(lua_State *L)
{
    int type = lua_type(L, 1);
    if (type != LUA_TNONE && type != LUA_TNIL && type != LUA_TTABLE && type != LUA_TSTRING)
        luaL_typeerror(L, 1, "table, string or nil");
    scratch *s = get_scratch(L);
    /* the userdata first: once tally_open succeeds nothing may raise before it owns the handle */
    binding *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    b->owned = 1;
    luaL_setmetatable(L, HANDLE_MT);
    if (type == LUA_TTABLE || type == LUA_TSTRING) {
        if (!(s->cfg = tally_config_new())) return fail(L, "out of memory");
        if (type == LUA_TSTRING) {
            if (tally_config_load(s->cfg, lua_tostring(L, 1)) != TALLY_OK) return fail(L, tally_errmsg(NULL));
        } else {
            char err[320];
            lua_pushnil(L);
            while (lua_next(L, 1)) {
                if (lua_type(L, -2) != LUA_TSTRING) {
                    snprintf(err, sizeof err, "configuration keys must be strings, got a %s", luaL_typename(L, -2));
                    return fail(L, err);
                }
                const char *key = lua_tostring(L, -2), *text = config_text(L, s, key, err, sizeof err);
                if (!text) return fail(L, err);
                if (tally_config_set(s->cfg, key, text) != TALLY_OK) return fail(L, tally_errmsg(NULL));
                lua_pop(L, 1);
            }
        }
    }
    tally_t *t = NULL;
    int rc = tally_open(s->cfg, &t);
    tally_config_free(s->cfg);
    s->cfg = NULL;
    if (rc != TALLY_OK) return fail(L, tally_errmsg(NULL));
    b->t = t;
    return 1;
}

static const luaL_Reg handle_methods[] = {
    {"track", l_track},
    {"identify", l_identify},
    {"page", l_page},
    {"screen", l_screen},
    {"group", l_group},
    {"alias", l_alias},
    {"send", l_send},
    {"reset", l_reset},
    {"consent", l_consent},
    {"session_start", l_session_start},
    {"flush", l_flush},
    {"reload", l_reload},
    {"forget", l_forget},
    {"close", l_close},
    {"stats", l_stats},
    {"session", l_session},
    {"mod", l_mod},
    {NULL, NULL},
};

static const luaL_Reg handle_meta[] = {
    {"__gc", l_auto_close},
    {"__close", l_auto_close},
    {"__tostring", l_tostring},
    {NULL, NULL},
};

EXPORT int luaopen_tally(lua_State *L)
{
    luaL_checkversion(L); /* refuses an interpreter of another version or with other number types */
    if (luaL_newmetatable(L, HANDLE_MT)) {
        luaL_setfuncs(L, handle_meta, 0);
        luaL_newlib(L, handle_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 8);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    push_common(L);
    return 1;
}
