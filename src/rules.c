#include "rules.h"

#include <assert.h>
#include <dirent.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hmac.h"
#include "json_lua.h"
#include "message.h"
#include "sandbox.h"

#define RULES_SNAP_SHARED 64 /* untouched subtrees a snapshot may share; past that, copied */

typedef struct rule {
    char            *name;
    char            *file;
    int              stage;
    unsigned         types;        /* bit per msg_type; 0 = every type */
    int              on_error_pass;
    int              slot;         /* its memory account in the sandbox */
    int              fn_ref;       /* process or map */
    int              ctx_ref;      /* the ctx table handed to every call, reused */
    int              failures_in_a_row;
    int64_t          log_second;   /* the second (now_ms / 1000) log_lines counts in */
    int              log_lines;
    _Atomic uint64_t calls, errors, dropped, violations, log_suppressed, parts_cut;
    _Atomic int      disabled;
} rule;

struct rules {
    sandbox          *sb;
    rule             *r;
    size_t            n;
    const tly_logger *log;
    rules_opts        o;
    rule             *current;     /* the script running now, for ctx methods */
    int64_t           now_ms;      /* the running call's ctx.now */
    rules_report     *rep;
    size_t            n_process;   /* before + enrichment scripts */
    int              *last, *next_last; /* per message in the chain: last script that returned it */
    size_t            last_cap;
    tjl_origin       *origin;      /* the message's tables, to write back what no script touched */
    const tj_value   *pushing;     /* the message push_origin_protected pushes */
    /* the untouched subtrees the last snapshot shares with the message (see push_copy) */
    struct { const void *t; const tj_value *node; } shared[RULES_SNAP_SHARED];
    size_t            nshared;
};

/* read_choice stores the index of the name, so each name sits at its STAGE_* value */
static const char *const stage_names[] = {
    [STAGE_BEFORE] = "before", [STAGE_ENRICHMENT] = "enrichment", [STAGE_DESTINATION] = "destination",
    [STAGE_DESTINATION + 1] = NULL};

int msg_list_reserve(msg_list *l, size_t n)
{
    if (l->cap >= n) return TALLY_OK;
    tj_value **p = tly_fault() ? NULL : realloc(l->v, n * sizeof *p);
    if (!p) return TALLY_ENOMEM;
    l->v = p;
    l->cap = n;
    return TALLY_OK;
}

/* Within rules_process / rules_map, after msg_list_reserve: cannot fail. */
static void put(msg_list *l, tj_value *v)
{
    assert(l->n < l->cap);
    int rc = msg_list_push(l, v);
    assert(rc == TALLY_OK);
    (void)rc;
}

int msg_list_push(msg_list *l, tj_value *v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        tj_value **p = realloc(l->v, cap * sizeof *p);
        if (!p) return TALLY_ENOMEM;
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = v;
    return TALLY_OK;
}

void msg_list_free(msg_list *l)
{
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* ---- ctx methods ---- */

static rules *ctx_rules(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

static int ctx_violation(lua_State *L)
{
    rules *R = ctx_rules(L);
    const char *code = luaL_checkstring(L, 2), *text = luaL_optstring(L, 3, "");
    if (R->current) atomic_fetch_add(&R->current->violations, 1);
    if (R->rep && R->rep->on_violation) {
        /* script text: it reaches logs and `tally check` on a terminal */
        char safe_code[256], safe_text[2048];
        tly_escape(code, safe_code, sizeof safe_code);
        tly_escape(text, safe_text, sizeof safe_text);
        R->rep->on_violation(R->rep->ud, R->current ? R->current->name : "?", safe_code, safe_text);
    }
    return 0;
}

/* A rule that logs in a loop must not flood the operator's log (one message once wrote 196 MiB):
 * each rule may write RULES_LOG_LINES_PER_SECOND lines (ctx:log and print together) per second of
 * ctx.now; the rest are counted in its stats as log_suppressed, and the first one cut says so. */
static int log_permitted_for(rules *R, rule *r, int level)
{
    if (!R->log || level > R->log->level) return 0; /* not written anyway: not charged */
    if (!r) return 1;
    int64_t second = R->now_ms / 1000;
    if (second != r->log_second) {
        r->log_second = second;
        r->log_lines = 0;
    }
    if (r->log_lines < RULES_LOG_LINES_PER_SECOND) {
        r->log_lines++;
        return 1;
    }
    if (r->log_lines == RULES_LOG_LINES_PER_SECOND) {
        r->log_lines++;
        tly_log(R->log, TALLY_LOG_WARN, "rule %s: more than %d log lines in a second; the rest of this second's "
                "are not written (counted as log_suppressed)", r->name ? r->name : "?", RULES_LOG_LINES_PER_SECOND);
    }
    atomic_fetch_add(&r->log_suppressed, 1);
    return 0;
}

static int log_permitted(rules *R, int level) { return log_permitted_for(R, R->current, level); }

static int print_gate(void *ud, int level) { return log_permitted(ud, level); }

static int ctx_log(lua_State *L)
{
    rules *R = ctx_rules(L);
    static const char *const levels[] = {[TALLY_LOG_ERROR] = "error", [TALLY_LOG_WARN] = "warn", [TALLY_LOG_INFO] = "info",
                                         [TALLY_LOG_DEBUG] = "debug", [TALLY_LOG_DEBUG + 1] = NULL};
    int level = luaL_checkoption(L, 2, "info", levels);
    const char *text = luaL_checkstring(L, 3);
    if (log_permitted(R, level)) tly_log(R->log, level, "rule %s: %s", R->current ? R->current->name : "?", text);
    return 0;
}

static int ctx_sample(lua_State *L)
{
    double rate = luaL_checknumber(L, 2);
    if (lua_isnoneornil(L, 3)) {
        lua_pushboolean(L, 1); /* nothing to key on: keep the message */
        return 1;
    }
    size_t len;
    const char *key = luaL_tolstring(L, 3, &len);
    lua_pushboolean(L, sb_sample(rate, key, len));
    return 1;
}

static void push_ctx_methods(lua_State *L, rules *R)
{
    lua_newtable(L); /* metatable */
    lua_newtable(L); /* __index */
    static const struct { const char *name; lua_CFunction fn; } m[] = {
        {"violation", ctx_violation}, {"log", ctx_log}, {"sample", ctx_sample},
        {"hmac", hmac_ctx_method}};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) {
        lua_pushlightuserdata(L, R);
        lua_pushcclosure(L, m[i].fn, 1);
        lua_setfield(L, -2, m[i].name);
    }
    lua_setfield(L, -2, "__index");
}

/* ---- loading ---- */

static int fail_script(const char *file, const char *fmt, const char *detail, tly_err *err)
{
    return tly_err_set(err, TALLY_ELUA, fmt, file, detail ? detail : "");
}

static int read_types(lua_State *L, int idx, const char *file, unsigned *mask, tly_err *err)
{
    *mask = 0;
    lua_getfield(L, idx, "types");
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return TALLY_OK; }
    if (!lua_istable(L, -1)) { lua_pop(L, 1); return fail_script(file, "%s: \"types\" must be a list of message types%s", NULL, err); }
    for (lua_Integer i = 1;; i++) {
        if (lua_rawgeti(L, -1, i) == LUA_TNIL) { lua_pop(L, 1); break; }
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        int t = s ? msg_type_from(s, len) : -1;
        lua_pop(L, 1);
        if (t < 0) {
            lua_pop(L, 1);
            return fail_script(file, "%s: \"types\": unknown message type (track, identify, page, screen, group, alias)%s", NULL, err);
        }
        *mask |= 1u << t;
    }
    lua_pop(L, 1);
    return TALLY_OK;
}

static int read_choice(lua_State *L, int idx, const char *field, const char *const *names, int dflt, const char *file,
                       int *out, tly_err *err)
{
    lua_getfield(L, idx, field);
    *out = dflt;
    if (!lua_isnil(L, -1)) {
        const char *s = lua_tostring(L, -1);
        *out = -1;
        for (int i = 0; s && names[i]; i++)
            if (!strcmp(s, names[i])) *out = i;
    }
    lua_pop(L, 1);
    if (*out < 0) return tly_err_set(err, TALLY_ELUA, "%s: \"%s\": expected %s or %s%s", file, field, names[0], names[1], names[2] ? ", ..." : "");
    return TALLY_OK;
}

/* Checks the plugin table at the top of the stack and records it as rule r (pops the table). */
static int adopt_plugin(rules *R, rule *r, const char *file, tly_err *err)
{
    lua_State *L = sb_state(R->sb);
    int t = lua_gettop(L);
    if (!lua_istable(L, t)) {
        lua_pop(L, 1);
        return fail_script(file, "%s: must return a plugin table { name = ..., stage = ..., process = function(msg, ctx) ... end }%s", NULL, err);
    }
    lua_getfield(L, t, "name");
    size_t name_len = 0;
    const char *name = lua_tolstring(L, -1, &name_len);
    if (!name || !*name) {
        lua_pop(L, 2);
        return fail_script(file, "%s: plugin needs a non-empty string \"name\"%s", NULL, err);
    }
    /* the name is written into stats JSON, logs and `tally check` output as it is */
    size_t bad = 0;
    int ok_utf8 = tj_utf8_valid(name, name_len, &bad);
    for (size_t i = 0; ok_utf8 && i < name_len; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7F) ok_utf8 = 0, bad = i;
    if (!ok_utf8 || name_len > RULES_MAX_NAME) {
        lua_pop(L, 2);
        if (name_len > RULES_MAX_NAME)
            return tly_err_set(err, TALLY_ELUA, "%s: \"name\" is %zu bytes; at most %d", file, name_len, RULES_MAX_NAME);
        return tly_err_set(err, TALLY_ELUA, "%s: \"name\" must be UTF-8 text without control characters (bad byte at offset %zu)",
                        file, bad);
    }
    r->name = strdup(name);
    r->file = strdup(file);
    lua_pop(L, 1);
    static const char *const on_error_names[] = {"drop", "pass", NULL}; /* the index is on_error_pass */
    int rc = read_choice(L, t, "stage", stage_names, STAGE_BEFORE, file, &r->stage, err);
    if (!rc) rc = read_choice(L, t, "on_error", on_error_names, r->stage == STAGE_BEFORE ? 0 : 1, file, &r->on_error_pass, err);
    if (!rc) rc = read_types(L, t, file, &r->types, err);
    if (rc) { lua_pop(L, 1); return rc; }
    const char *fn = r->stage == STAGE_DESTINATION ? "map" : "process";
    lua_getfield(L, t, fn);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 2);
        return tly_err_set(err, TALLY_ELUA, "%s: stage \"%s\" needs a function \"%s\"", file, stage_names[r->stage], fn);
    }
    /* the registry is shared: growing it is the host's cost, not this script's */
    int was = sb_enter(R->sb, 0);
    r->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sb_enter(R->sb, was);
    /* ctx: { now, config, rule } with the methods; config from rule_config[name] */
    lua_newtable(L);
    push_ctx_methods(L, R);
    lua_setmetatable(L, -2);
    lua_pushstring(L, r->name);
    lua_setfield(L, -2, "rule");
    lua_pushboolean(L, R->log && R->log->level >= TALLY_LOG_DEBUG);
    lua_setfield(L, -2, "debug");
    lua_newtable(L);
    lua_setfield(L, -2, "config");
    was = sb_enter(R->sb, 0);
    r->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sb_enter(R->sb, was);
    lua_pop(L, 1);
    return TALLY_OK;
}

typedef struct adoption { rules *R; rule *r; const char *file; int rc; tly_err *err; } adoption;

/* (adoption, plugin table) -> nothing: adopt_plugin, protected (see adopt_protected) */
static int adopt_in_lua(lua_State *L)
{
    adoption *a = lua_touserdata(L, 1);
    a->rc = adopt_plugin(a->R, a->r, a->file, a->err);
    return 0;
}

/* Reading the returned table's fields runs its metamethods (a script's code, which may raise,
 * loop or allocate): under sb_call's limits, with the error reported against the file. */
static int adopt_protected(rules *R, rule *r, const char *file, tly_err *err)
{
    adoption a = {R, r, file, TALLY_OK, err};
    if (sb_protect(R->sb, adopt_in_lua, &a, 1, err) != TALLY_OK) {
        tly_err_wrap(err, TALLY_ELUA, "reading the plugin table");
        return tly_err_wrap(err, TALLY_ELUA, file);
    }
    return a.rc;
}

/* (value, ctx_ref) -> nothing: ctx.config = value */
static int set_config_in_lua(lua_State *L)
{
    const tj_value *v = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, (lua_Integer)lua_tointeger(L, 2));
    if (tjl_push(L, v)) return luaL_error(L, "out of memory");
    lua_setfield(L, -2, "config");
    return 0;
}

static int set_rule_configs(rules *R, tly_err *err)
{
    if (!R->o.rule_config) return TALLY_OK;
    tj_arena *a = tj_arena_new();
    tj_value *cfg;
    tj_error je;
    int rc = TALLY_OK;
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "rule_config: out of memory");
    if (tj_parse(a, R->o.rule_config, strlen(R->o.rule_config), &cfg, &je) || cfg->type != TJ_OBJECT) {
        tj_arena_free(a);
        return tly_err_set(err, TALLY_ECONFIG, "rule_config: expected a JSON object of rule name -> options");
    }
    lua_State *L = sb_state(R->sb);
    for (size_t i = 0; i < cfg->u.obj.n && !rc; i++) {
        size_t k = 0;
        while (k < R->n && strcmp(R->r[k].name, cfg->u.obj.m[i].key)) k++;
        if (k == R->n) {
            rc = tly_err_set(err, TALLY_ECONFIG, "rule_config: no rule named \"%s\"", cfg->u.obj.m[i].key);
            break;
        }
        int was = sb_enter(R->sb, R->r[k].slot);
        lua_pushinteger(L, R->r[k].ctx_ref);
        if (sb_protect(R->sb, set_config_in_lua, cfg->u.obj.m[i].val, 1, err) != TALLY_OK) {
            tly_err_wrap(err, TALLY_ENOMEM, R->r[k].name);
            rc = tly_err_wrap(err, TALLY_ENOMEM, "rule_config");
        }
        sb_enter(R->sb, was);
        lua_settop(L, 0);
    }
    tj_arena_free(a);
    return rc;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Appends the script files a spec entry names: the file itself, or a folder's *.lua sorted. */
static int expand_entry(const char *entry, char ***files, size_t *nfiles, char ***dirs, size_t *ndirs, tly_err *err)
{
    struct stat st;
    if (stat(entry, &st) != 0) return tly_err_set(err, TALLY_EIO, "rules: %s: no such file or folder", entry);
    char *dir = strdup(entry);
    if (!dir) return tly_err_set(err, TALLY_ENOMEM, "rules: out of memory");
    if (!S_ISDIR(st.st_mode)) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else strcpy(dir, ".");
    }
    *dirs = realloc(*dirs, (*ndirs + 2) * sizeof **dirs);
    (*dirs)[(*ndirs)++] = dir;
    (*dirs)[*ndirs] = NULL;
    size_t first = *nfiles;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(entry);
        if (!d) return tly_err_set(err, TALLY_EIO, "rules: %s: cannot read the folder", entry);
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t len = strlen(e->d_name);
            if (len < 5 || strcmp(e->d_name + len - 4, ".lua") || e->d_name[0] == '.') continue;
            char *path = malloc(strlen(entry) + len + 2);
            if (!path) break;
            sprintf(path, "%s/%s", entry, e->d_name);
            *files = realloc(*files, (*nfiles + 1) * sizeof **files);
            (*files)[(*nfiles)++] = path;
        }
        closedir(d);
        if (*nfiles > first) qsort(*files + first, *nfiles - first, sizeof **files, cmp_names);
    } else {
        *files = realloc(*files, (*nfiles + 1) * sizeof **files);
        (*files)[(*nfiles)++] = strdup(entry);
    }
    return TALLY_OK;
}

static int expand_spec(const char *spec, char ***files, size_t *nfiles, char ***dirs, size_t *ndirs, tly_err *err)
{
    if (spec[0] != '[') return expand_entry(spec, files, nfiles, dirs, ndirs, err);
    tj_arena *a = tj_arena_new();
    tj_value *list;
    tj_error je;
    int rc = TALLY_OK;
    if (!a || tj_parse(a, spec, strlen(spec), &list, &je) || list->type != TJ_ARRAY) {
        tj_arena_free(a);
        return tly_err_set(err, TALLY_ECONFIG, "rules: expected a path or a JSON array of paths");
    }
    for (size_t i = 0; i < list->u.arr.n && !rc; i++) {
        tj_value *p = list->u.arr.items[i];
        if (p->type != TJ_STRING) rc = tly_err_set(err, TALLY_ECONFIG, "rules[%zu]: expected a path string", i);
        else rc = expand_entry(p->u.str.s, files, nfiles, dirs, ndirs, err);
    }
    tj_arena_free(a);
    return rc;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++) free(l[i]);
    free(l);
}

int rules_open(rules **out, const char *spec, const rules_opts *o, const tly_logger *log, tly_err *err)
{
    *out = NULL;
    char **files = NULL, **dirs = NULL;
    size_t nfiles = 0, ndirs = 0;
    int rc = expand_spec(spec, &files, &nfiles, &dirs, &ndirs, err);
    rules *R = calloc(1, sizeof *R);
    if (!rc && (!R || !(R->r = calloc(nfiles ? nfiles : 1, sizeof *R->r)) || !(R->origin = tjl_origin_new())))
        rc = tly_err_set(err, TALLY_ENOMEM, "rules: out of memory");
    if (!rc) {
        R->log = log;
        R->o = *o;
        /* each script's own limit: by default an equal share, one more kept for the messages, so
         * that no script can starve the others */
        size_t per = o->max_memory_per_script ? o->max_memory_per_script : o->max_memory / (nfiles + 1);
        sb_limits lim = {o->max_memory, o->max_instructions};
        if (!(R->sb = sb_new(&lim, (const char *const *)dirs, log))) {
            rc = tly_err_set(err, TALLY_ENOMEM, "rules: cannot create the Lua state");
        } else {
            sb_set_log_gate(R->sb, print_gate, R);
            sb_set_script_limit(R->sb, per);
        }
    }
    for (size_t i = 0; !rc && i < nfiles; i++) {
        R->current = &R->r[R->n]; /* print() at load time is rate-limited like any other */
        int slot;
        if (sb_script_new(R->sb, &slot)) {
            rc = tly_err_set(err, TALLY_ENOMEM, "rules: out of memory");
            break;
        }
        R->r[R->n].slot = slot;
        sb_enter(R->sb, slot);
        rc = sb_load_file(R->sb, files[i], err);
        R->current = NULL;
        if (rc) {
            sb_enter(R->sb, 0);
            break;
        }
        rc = adopt_protected(R, &R->r[R->n], files[i], err);
        sb_enter(R->sb, 0);
        if (!rc) {
            for (size_t k = 0; k < R->n && !rc; k++)
                if (!strcmp(R->r[k].name, R->r[R->n].name))
                    rc = tly_err_set(err, TALLY_ELUA, "%s: a rule named \"%s\" is already loaded from %s", files[i], R->r[k].name, R->r[k].file);
        }
        if (R->r[R->n].name || R->r[R->n].file) R->n++; /* counted for cleanup even when rejected */
    }
    if (!rc) rc = set_rule_configs(R, err);
    for (size_t i = 0; !rc && i < R->n; i++) R->n_process += R->r[i].stage != STAGE_DESTINATION;
    free_list(files, nfiles);
    free_list(dirs, ndirs);
    if (rc) {
        rules_free(R);
        return rc;
    }
    *out = R;
    return TALLY_OK;
}

void rules_free(rules *R)
{
    if (!R) return;
    sb_free(R->sb);
    tjl_origin_free(R->origin);
    free(R->last);
    free(R->next_last);
    for (size_t i = 0; R->r && i < R->n; i++) {
        free(R->r[i].name);
        free(R->r[i].file);
    }
    free(R->r);
    free(R);
}

size_t rules_count(const rules *R) { return R ? R->n : 0; }

/* ---- running ---- */

static int message_type(const tj_value *m)
{
    const tj_value *t = tj_object_get(m, "type");
    return t && t->type == TJ_STRING ? msg_type_from(t->u.str.s, t->u.str.len) : -1;
}

/* Whether a script limited to `types` (0: every type) runs on a message of type t (-1: unknown). */
static int types_allow(unsigned types, int t)
{
    return !types || (t >= 0 && (types & (1u << t)));
}

static void script_failed(rules *R, rule *r, const char *text)
{
    atomic_fetch_add(&r->errors, 1);
    if (R->rep) {
        R->rep->failed = 1;
        char safe[4096];
        tly_escape(text, safe, sizeof safe);
        if (R->rep->on_error) R->rep->on_error(R->rep->ud, r->name, safe);
    }
    /* a script failing on every message (breaker off, or every other message) is logging too */
    if (log_permitted_for(R, r, TALLY_LOG_WARN)) tly_log(R->log, TALLY_LOG_WARN, "rule %s failed: %s", r->name, text);
    if (R->o.breaker_threshold > 0 && ++r->failures_in_a_row >= R->o.breaker_threshold && !atomic_load(&r->disabled)) {
        atomic_store(&r->disabled, 1);
        /* it never runs again: drop its function and ctx, and so its environment and state, so
         * its memory goes back to the pool now */
        lua_State *L = sb_state(R->sb);
        luaL_unref(L, LUA_REGISTRYINDEX, r->fn_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, r->ctx_ref);
        r->fn_ref = r->ctx_ref = LUA_NOREF;
        lua_gc(L, LUA_GCCOLLECT);
        tly_log(R->log, TALLY_LOG_ERROR, "rule %s (%s) DISABLED after %d failures in a row; last: %s. "
                "Fix the script and reload.", r->name, r->file, r->failures_in_a_row, text);
    }
}

const char *const rule_drop_class_name[RULE_DROP_CLASSES] = {
    [RULE_DROP_BY_RULE] = "by_rule", [RULE_DROP_FAILED_CLOSED] = "failed_closed", [RULE_DROP_DISABLED] = "disabled"};

static void dropped_as(rules *R, rule *r, int drop_class, const char *why)
{
    atomic_fetch_add(&r->dropped, 1);
    if (R->rep) {
        R->rep->dropped = 1;
        if (R->rep->on_drop) R->rep->on_drop(R->rep->ud, r->name, drop_class, why);
    }
}

/* a failure with on_error "drop": the common case, so the short name */
static void dropped_by(rules *R, rule *r, const char *why) { dropped_as(R, r, RULE_DROP_FAILED_CLOSED, why); }

/* (ctx, now) -> ctx: rawset, since a script may have given its ctx a __newindex */
static int set_now(lua_State *L)
{
    lua_pushliteral(L, "now");
    lua_insert(L, 2);
    lua_rawset(L, 1);
    return 1;
}

/* Calls r's function with (value at the top of the stack, ctx); leaves the result on the stack.
 * 0, or -1 after reporting the failure. */
static int call_rule(rules *R, rule *r, int64_t now_ms)
{
    lua_State *L = sb_state(R->sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn_ref);
    lua_insert(L, -2);
    lua_pushcfunction(L, set_now);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->ctx_ref);
    lua_pushinteger(L, now_ms);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        script_failed(R, r, lua_tostring(L, -1));
        lua_pop(L, 3);
        return -1;
    }
    R->current = r;
    R->now_ms = now_ms;
    atomic_fetch_add(&r->calls, 1);
    tly_err err;
    int rc = sb_call(R->sb, 2, 1, &err);
    R->current = NULL;
    sb_collect_if_near_limit(R->sb);
    if (rc != TALLY_OK) {
        script_failed(R, r, err.msg);
        return -1;
    }
    return 0;
}

/* ---- the chain: one Lua copy of the message through every before/enrichment script ----
 *
 * The message is pushed into Lua once, each script works on that table in turn, and it is
 * converted back and checked once, after the last script. Pushing and converting around every
 * script cost ~3.4 us per script per message (bench/README.md). What that means for scripts:
 * - a script with on_error = "pass" gets a copy made first, so that if it fails, the message as
 *   it entered that script goes on (its half-done changes do not). The copy shares the subtrees
 *   no script has written to yet (most of a message: json_lua.h, tjl_origin); one the failed
 *   script wrote to is pushed again from the message it came from;
 * - the result is checked after the last script; an invalid one counts as an error of the last
 *   script that returned it, and goes on as it entered the rules when that script's on_error is
 *   "pass" (and it was not split), else it is dropped. */

/* share: the rules whose snapshot this is, whose untouched subtrees it shares rather than copies
 * (recorded in R->shared); NULL for a full copy (split parts must not share anything). */
static int push_copy(lua_State *L, int idx, int depth, rules *share)
{
    if (lua_type(L, idx) != LUA_TTABLE) {
        lua_pushvalue(L, idx);
        return 0;
    }
    if (depth > TJ_MAX_DEPTH || !lua_checkstack(L, 6)) return -1;
    idx = lua_absindex(L, idx);
    const tj_value *node;
    if (share && share->nshared < RULES_SNAP_SHARED && (node = tjl_untouched_node(L, idx, share->origin))) {
        share->shared[share->nshared].t = lua_topointer(L, idx);
        share->shared[share->nshared++].node = node;
        lua_pushvalue(L, idx);
        return 0;
    }
    /* sized from a counting pass: grown key by key instead, the copy rehashed each table
     * log2(n) times (luaH_resize was ~4% of a message's time with three rules) */
    int narr = (int)lua_rawlen(L, idx), n = 0;
    unsigned cur = 0;
    while (tjl_next(L, idx, &cur)) {
        n++;
        lua_pop(L, 1);
    }
    lua_createtable(L, narr, n > narr ? n - narr : 0);
    int copy = lua_gettop(L);
    cur = 0;
    while (tjl_next(L, idx, &cur)) {
        if (push_copy(L, -1, depth + 1, share)) {
            lua_settop(L, copy - 1);
            return -1;
        }
        lua_pushvalue(L, -3); /* copy, key, value, value', key */
        lua_insert(L, -2);    /* copy, key, value, key, value' */
        lua_rawset(L, copy);
        lua_pop(L, 1);
    }
    if (lua_getmetatable(L, idx)) lua_setmetatable(L, copy); /* keeps the tally.array tag */
    return 0;
}

/* Protected, because allocating can hit the sandbox's memory limit: (share, value) -> copy. */
static int copy_protected(lua_State *L)
{
    rules *share = lua_touserdata(L, 1);
    if (share) share->nshared = 0;
    if (push_copy(L, 2, 0, share)) return luaL_error(L, "message nested deeper than %d levels", TJ_MAX_DEPTH);
    return 1;
}

static const tj_value *shared_node(const rules *R, const void *t)
{
    for (size_t i = 0; i < R->nshared; i++)
        if (R->shared[i].t == t) return R->shared[i].node;
    return NULL;
}

/* The snapshot's tables it made itself (not shared) are walked; a shared one that is no longer
 * untouched (the failed script wrote into it) is replaced by a new push of its node. */
static void restore_walk(rules *R, lua_State *L, int idx, int depth)
{
    if (depth > TJ_MAX_DEPTH || !lua_checkstack(L, 6)) luaL_error(L, "message nested deeper than %d levels", TJ_MAX_DEPTH);
    unsigned cur = 0;
    while (tjl_next(L, idx, &cur)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            const tj_value *node = shared_node(R, lua_topointer(L, -1));
            if (!node) {
                restore_walk(R, L, lua_gettop(L), depth + 1);
            } else if (!tjl_untouched_node(L, -1, R->origin)) {
                lua_pop(L, 1);
                lua_pushvalue(L, -1);
                if (tjl_push_more(L, node, R->origin)) luaL_error(L, "out of memory");
                lua_rawset(L, idx); /* an existing key: the walk goes on */
                continue;
            }
        }
        lua_pop(L, 1);
    }
}

/* (rules, snapshot) -> the snapshot, with what the failed script wrote into shared parts undone */
static int restore_protected(lua_State *L)
{
    rules *R = lua_touserdata(L, 1);
    const tj_value *node = lua_type(L, 2) == LUA_TTABLE ? shared_node(R, lua_topointer(L, 2)) : NULL;
    if (node) { /* the whole message was shared */
        if (!tjl_untouched_node(L, 2, R->origin) && tjl_push_more(L, node, R->origin)) return luaL_error(L, "out of memory");
        return 1;
    }
    if (lua_type(L, 2) == LUA_TTABLE) restore_walk(R, L, 2, 0);
    lua_settop(L, 2);
    return 1;
}

static int push_protected(lua_State *L)
{
    if (tjl_push(L, lua_touserdata(L, 1))) return luaL_error(L, "message too deep for Lua");
    return 1;
}

/* (rules) -> the message R->pushing, its tables recorded in R->origin */
static int push_origin_protected(lua_State *L)
{
    rules *R = lua_touserdata(L, 1);
    if (tjl_push_from(L, R->pushing, R->origin)) return luaL_error(L, "message too deep for Lua");
    return 1;
}

typedef struct json_conv {
    const char *root;
    size_t max_bytes;
    const tj_value *orig;
    const tjl_origin *origin;
    tj_arena *a;
    tj_value *v;
    tj_error err;
    int rc;
} json_conv;

/* (json_conv, value) -> nothing */
static int to_json_in_lua(lua_State *L)
{
    json_conv *c = lua_touserdata(L, 1);
    c->rc = tjl_to_json_from(L, 2, c->root, c->max_bytes, c->orig, c->origin, c->a, &c->v, &c->err);
    return 0;
}

/* tjl_to_json_from, protected: converting allocates (numbers to text), and the memory limit can
 * be reached there. */
static int to_json_safe(lua_State *L, int idx, const char *root, size_t max_bytes, const tj_value *orig,
                        const tjl_origin *origin, tj_arena *a, tj_value **out, tj_error *err)
{
    json_conv c = {root, max_bytes, orig, origin, a, NULL, {0, ""}, 0};
    idx = lua_absindex(L, idx);
    lua_pushcfunction(L, to_json_in_lua);
    lua_pushlightuserdata(L, &c);
    lua_pushvalue(L, idx);
    int st = lua_pcall(L, 2, 0, 0);
    if (st != LUA_OK) {
        snprintf(err->msg, sizeof err->msg, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
        lua_pop(L, 1);
        return st == LUA_ERRMEM ? TALLY_ENOMEM : TALLY_ELUA;
    }
    *err = c.err;
    *out = c.v;
    return c.rc;
}

/* Pushes a deep copy of the value at idx (sharing untouched subtrees when share is not NULL);
 * 0, or -1 with the error text at the top instead. */
static int copy_value(lua_State *L, int idx, rules *share)
{
    idx = lua_absindex(L, idx);
    lua_pushcfunction(L, copy_protected);
    lua_pushlightuserdata(L, share);
    lua_pushvalue(L, idx);
    return lua_pcall(L, 2, 1, 0) == LUA_OK ? 0 : -1;
}

/* Undoes, in the snapshot at snap, what the failed script wrote into the parts it shares;
 * 0, or -1 (out of memory) with the error text at the top. */
static int restore_snapshot(rules *R, int snap)
{
    lua_State *L = sb_state(R->sb);
    if (!R->nshared) return 0;
    lua_pushcfunction(L, restore_protected);
    lua_pushlightuserdata(L, R);
    lua_pushvalue(L, snap);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) return -1;
    lua_replace(L, snap);
    return 0;
}

static int type_matches(lua_State *L, int idx, unsigned types)
{
    if (!types) return 1;
    lua_pushliteral(L, "type");
    int t = -1;
    if (lua_rawget(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        t = msg_type_from(s, len);
    }
    lua_pop(L, 1);
    return types_allow(types, t);
}

/* A script split one message into more parts than RULES_MAX_PARTS: the first ones go on, the rest
 * are counted as cut (left to grow, one rule could evict every queued message from the store). */
static void parts_were_cut(rules *R, rule *r, lua_Integer returned, lua_Integer cut)
{
    char text[200];
    atomic_fetch_add(&r->parts_cut, (uint64_t)cut);
    snprintf(text, sizeof text, "made %lld messages of one; at most %d parts per message: %lld cut",
             (long long)returned, RULES_MAX_PARTS, (long long)cut);
    script_failed(R, r, text);
}

/* Runs r on the message table at idx. Pushes what goes on (none, one or several tables, at most
 * room of them) and returns how many; *ok says whether r returned normally (else what it pushed is
 * the copy made before the call, for on_error = "pass"). */
static int run_one_as(rules *R, rule *r, int idx, int64_t now_ms, lua_Integer room, int *ok);

/* Everything done for r (the copy for on_error = "pass", the call, the copies of split parts) is
 * charged to r's memory. */
static int run_one(rules *R, rule *r, int idx, int64_t now_ms, lua_Integer room, int *ok)
{
    int was = sb_enter(R->sb, r->slot);
    int n = run_one_as(R, r, idx, now_ms, room, ok);
    sb_enter(R->sb, was);
    return n;
}

static int run_one_as(rules *R, rule *r, int idx, int64_t now_ms, lua_Integer room, int *ok)
{
    lua_State *L = sb_state(R->sb);
    int top = lua_gettop(L), snap = 0;
    *ok = 0;
    if (r->on_error_pass) {
        if (copy_value(L, idx, R)) { /* cannot even copy: the script does not see it, it goes on */
            script_failed(R, r, lua_tostring(L, -1));
            lua_settop(L, top);
            lua_pushvalue(L, idx);
            return 1;
        }
        snap = lua_gettop(L);
    }
    lua_pushvalue(L, idx);
    const char *why = NULL;
    int called = call_rule(R, r, now_ms) == 0, res = lua_gettop(L), n = 0;
    lua_Integer cut = 0, returned = 0;
    if (!called) {
        why = ""; /* reported by call_rule */
    } else if (lua_isnil(L, res)) {
        dropped_as(R, r, RULE_DROP_BY_RULE, "process returned nil");
        r->failures_in_a_row = 0;
        *ok = 1;
        lua_settop(L, top);
        return 0;
    } else if (!lua_istable(L, res)) {
        why = "process must return the message, nil, or a list of messages";
    } else {
        lua_pushliteral(L, "type");
        int single = lua_rawget(L, res) != LUA_TNIL;
        lua_pop(L, 1);
        lua_Integer len = single ? 1 : (lua_Integer)lua_rawlen(L, res);
        if (len == 0) why = "process must return the message, nil, or a list of messages";
        if (len > room) {
            cut = len - room;
            returned = len;
            len = room;
        }
        if (len > 1 && !lua_checkstack(L, (int)len + 4)) why = "returned too many messages";
        for (lua_Integer i = 1; !why && i <= len; i++) {
            if (single) lua_pushvalue(L, res);
            else lua_rawgeti(L, res, i);
            if (!lua_istable(L, -1)) {
                why = "process returned a list whose elements are not all messages";
            } else if (len > 1) {
                /* split parts often share sub-tables: later scripts must be free to change one */
                if (copy_value(L, -1, NULL)) why = lua_tostring(L, -1);
                else lua_remove(L, -2);
            }
            n++;
        }
    }
    if (why) {
        if (*why) script_failed(R, r, why);
        if (r->on_error_pass) {
            lua_settop(L, snap);
            if (restore_snapshot(R, snap) == 0) return 1;
            lua_settop(L, top);
            dropped_by(R, r, "failed, and the message as it entered could not be restored (out of memory)");
            return 0;
        }
        dropped_by(R, r, "failed and on_error is drop");
        lua_settop(L, top);
        return 0;
    }
    r->failures_in_a_row = 0;
    *ok = 1;
    if (cut) parts_were_cut(R, r, returned, cut);
    /* move the n results down over the copy and the returned value */
    lua_rotate(L, top + 1, -(res - top));
    lua_settop(L, top + n);
    return n;
}

/* ---- plain data between rules ----
 * Rules share the message table, so a metatable one rule leaves on it (or on any table inside,
 * keys included) would run that rule's code on the next rule's plain reads, and charge its errors
 * to the innocent one. After a rule has run on all of a message's parts, every table in them loses
 * any metatable but the array tag: the next rule sees exactly the data that would be encoded. The
 * walk is bounded like the message itself: a cycle trips the depth, a graph of shared subtables
 * the count (each appearance counts, as it would when encoded), and it blames the rule that made
 * such a message before the next rule sees it.
 * The walk is most of what a rule's result costs besides the rule, so it is skipped where it
 * cannot matter: metatables are only looked at after a script that ever set one
 * (sb_script_set_metatables), and after the last rule no walk is needed at all, since the
 * message is then only converted, by raw reads bounded in the same way. */

#define TOO_MANY_VALUES "holds more than " TALLY_STR(RULES_MAX_VALUES) " values (shared subtables count each time)"

static int strip_walk(lua_State *L, int idx, const void *array_mt, const tjl_origin *o, int depth, long *budget,
                      const char **why)
{
    if (lua_type(L, idx) != LUA_TTABLE) return 0;
    if (depth > TJ_MAX_DEPTH) { *why = "nested deeper than 64 levels (a cycle?)"; return -1; }
    if (!lua_checkstack(L, 4)) { *why = "nested too deep for the Lua stack"; return -1; }
    idx = lua_absindex(L, idx);
    /* a subtree no script wrote to is as it was pushed: a tree, no metatable but the array tag,
     * its size and depth known, so it is charged without a walk */
    long values;
    int height;
    if (tjl_untouched_size(L, idx, o, &values, &height)) {
        if (depth + height - 1 > TJ_MAX_DEPTH) { *why = "nested deeper than 64 levels (a cycle?)"; return -1; }
        if ((*budget -= values) < 0) { *why = TOO_MANY_VALUES; return -1; }
        return 0;
    }
    if (array_mt && lua_getmetatable(L, idx)) {
        int keep = lua_topointer(L, -1) == array_mt;
        lua_pop(L, 1);
        if (!keep) {
            lua_pushnil(L);
            lua_setmetatable(L, idx);
        }
    }
    unsigned cur = 0;
    while (tjl_next(L, idx, &cur)) {
        if (--*budget < 0) { *why = TOO_MANY_VALUES; }
        if (*budget < 0 || strip_walk(L, -2, array_mt, o, depth + 1, budget, why) ||
            strip_walk(L, -1, array_mt, o, depth + 1, budget, why)) {
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* Makes the value at idx plain data (strip: metatables too); 0, or -1 with *why set when it is
 * out of bounds. */
static int make_plain(lua_State *L, int idx, int strip, const tjl_origin *o, const char **why)
{
    long budget = RULES_MAX_VALUES;
    const void *array_mt = NULL;
    if (strip) {
        luaL_getmetatable(L, TJL_ARRAY_MT);
        /* never NULL: with no array tag registered, no table can carry it */
        array_mt = lua_type(L, -1) == LUA_TTABLE ? lua_topointer(L, -1) : (const void *)&array_mt;
        lua_pop(L, 1);
    }
    return strip_walk(L, idx, array_mt, o, 0, &budget, why);
}

/* Can a process rule after R->r[i] (of stage `stage`) see what R->r[i] returns? */
static int rule_after(const rules *R, size_t i, int stage)
{
    for (size_t j = 0; j < R->n; j++) {
        int s = R->r[j].stage;
        if (s <= STAGE_ENRICHMENT && (s > stage || (s == stage && j > i))) return 1;
    }
    return 0;
}

static int grow_last(rules *R, size_t n)
{
    if (n <= R->last_cap) return 0;
    size_t cap = R->last_cap ? R->last_cap : 8;
    while (cap < n) cap *= 2;
    int *a = realloc(R->last, cap * sizeof *a), *b = a ? realloc(R->next_last, cap * sizeof *b) : NULL;
    if (a) R->last = a;
    if (!b) return -1;
    R->next_last = b;
    R->last_cap = cap;
    return 0;
}

/* Converts and checks the chain's result at idx; blames `last` (the last rule that returned it). */
static void take_result(rules *R, int last, tj_arena *a, tj_value *orig, int idx, int alone, msg_list *out)
{
    if (last < 0) { /* no script changed it (only failed ones, undone): no need to convert */
        put(out, orig);
        return;
    }
    lua_State *L = sb_state(R->sb);
    tj_value *v;
    tj_error err;
    tly_err why;
    char text[600];
    /* the result may share the untouched parts of orig (tjl_to_json_from), which outlives it */
    if (to_json_safe(L, idx, "message", TALLY_MAX_MESSAGE_BYTES, orig, R->origin, a, &v, &err)) {
        snprintf(text, sizeof text, "%s", err.msg);
    } else if (msg_validate(v, R->o.need_id, &why)) {
        snprintf(text, sizeof text, "returned an invalid message: %.511s", why.msg);
    } else {
        put(out, v);
        return;
    }
    rule *r = &R->r[last];
    script_failed(R, r, text);
    if (r->on_error_pass && alone) put(out, orig);
    else dropped_by(R, r, "returned an invalid message");
}

void rules_process(rules *R, tj_arena *a, tj_value *m, int64_t now_ms, msg_list *out, rules_report *rep)
{
    out->n = 0;
    if (msg_list_reserve(out, RULES_MAX_PARTS)) {
        tly_log(R ? R->log : NULL, TALLY_LOG_ERROR, "out of memory: a message was dropped before its rules");
        return;
    }
    if (!R || !R->n_process) {
        put(out, m);
        return;
    }
    lua_State *L = sb_state(R->sb);
    int base = lua_gettop(L);
    R->rep = rep;
    R->pushing = m;
    lua_pushcfunction(L, push_origin_protected);
    lua_pushlightuserdata(L, R);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || grow_last(R, 1)) {
        /* the sandbox has no room for it: deliver it untouched rather than lose it */
        tly_log(R->log, TALLY_LOG_ERROR, "rules skipped for a message: %s",
                lua_isstring(L, -1) ? lua_tostring(L, -1) : "out of memory");
        lua_settop(L, base);
        put(out, m);
        R->rep = NULL;
        return;
    }
    size_t n = 1;
    R->last[0] = -1;
    for (int stage = STAGE_BEFORE; stage <= STAGE_ENRICHMENT; stage++) {
        for (size_t i = 0; i < R->n && n; i++) {
            rule *r = &R->r[i];
            /* a rule the breaker disabled keeps its failure policy: "pass" lets messages by, "drop"
             * (fail closed) drops every message it would have seen */
            if (r->stage != stage || (atomic_load(&r->disabled) && r->on_error_pass)) continue;
            size_t produced = 0;
            int first = base + 1;
            for (size_t k = 0; k < n; k++) {
                int idx = first + (int)k, ok = 0, got;
                if (!lua_checkstack(L, 8)) break;
                int disabled = atomic_load(&r->disabled); /* also when it was disabled on an earlier part */
                if (!type_matches(L, idx, r->types) || (disabled && r->on_error_pass)) {
                    lua_pushvalue(L, idx);
                    got = 1;
                } else if (disabled) {
                    dropped_as(R, r, RULE_DROP_DISABLED, "disabled by the breaker, and its on_error is drop");
                    got = 0;
                } else {
                    /* leave one place for each message after this one: the total stays in bounds */
                    got = run_one(R, r, idx, now_ms, (lua_Integer)(RULES_MAX_PARTS - produced - (n - k - 1)), &ok);
                }
                if (grow_last(R, produced + (size_t)got)) {
                    lua_pop(L, got);
                    break;
                }
                for (int g = 0; g < got; g++) R->next_last[produced++] = ok ? (int)i : R->last[k];
            }
            lua_rotate(L, first, -(int)n); /* drop the inputs, keep what the script made of them */
            lua_settop(L, lua_gettop(L) - (int)n);
            n = produced;
            int *swap = R->last;
            R->last = R->next_last;
            R->next_last = swap;
            if (!rule_after(R, i, stage)) continue;
            int strip = sb_script_set_metatables(R->sb, r->slot);
            for (size_t k = n; k-- > 0;) {
                const char *why = NULL;
                if (R->last[k] != (int)i || !make_plain(L, first + (int)k, strip, R->origin, &why)) continue;
                char text[200];
                snprintf(text, sizeof text, "returned a message that %s", why);
                script_failed(R, r, text);
                dropped_by(R, r, "returned a message out of bounds");
                lua_remove(L, first + (int)k);
                memmove(R->last + k, R->last + k + 1, (n - k - 1) * sizeof *R->last);
                n--;
            }
        }
    }
    for (size_t k = 0; k < n; k++) take_result(R, R->last[k], a, m, base + 1 + (int)k, n == 1, out);
    lua_settop(L, base);
    R->rep = NULL;
}

int rules_find_mapping(const rules *R, const char *name)
{
    for (size_t i = 0; R && i < R->n; i++)
        if (R->r[i].stage == STAGE_DESTINATION && !strcmp(R->r[i].name, name)) return (int)i;
    return -1;
}

/* (result) -> result.tally_many, raw */
static int get_many(lua_State *L)
{
    lua_pushliteral(L, "tally_many");
    lua_rawget(L, 1);
    return 1;
}

static tj_value *take_payload(rules *R, rule *r, tj_arena *a, int idx)
{
    tj_value *v;
    tj_error err;
    if (to_json_safe(sb_state(R->sb), idx, "payload", TJL_MAX_BYTES, NULL, NULL, a, &v, &err)) {
        script_failed(R, r, err.msg);
        return NULL;
    }
    return v;
}

void rules_map(rules *R, int idx, tj_arena *a, const tj_value *m, int64_t now_ms, msg_list *out, rules_report *rep)
{
    out->n = 0;
    if (!R || idx < 0 || (size_t)idx >= R->n || R->r[idx].stage != STAGE_DESTINATION) return;
    rule *r = &R->r[idx];
    if (msg_list_reserve(out, RULES_MAX_PARTS)) {
        tly_log(R->log, TALLY_LOG_ERROR, "out of memory: a message was not mapped for %s", r->name ? r->name : "?");
        return;
    }
    lua_State *L = sb_state(R->sb);
    int top = lua_gettop(L);
    if (!types_allow(r->types, message_type(m))) return;
    R->rep = rep;
    if (atomic_load(&r->disabled)) {
        dropped_as(R, r, RULE_DROP_DISABLED, "mapping disabled by the breaker");
        R->rep = NULL;
        return;
    }
    int was = sb_enter(R->sb, r->slot);
    lua_pushcfunction(L, push_protected);
    lua_pushlightuserdata(L, (void *)m);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        script_failed(R, r, lua_isstring(L, -1) ? lua_tostring(L, -1) : "out of memory");
    } else if (call_rule(R, r, now_ms) == 0 && lua_istable(L, -1)) {
        r->failures_in_a_row = 0;
        /* raw: the result is the script's table, and its metamethods must not run here */
        lua_pushcfunction(L, get_many);
        lua_pushvalue(L, -2);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
            script_failed(R, r, lua_isstring(L, -1) ? lua_tostring(L, -1) : "out of memory");
        } else if (lua_istable(L, -1)) {
            lua_Integer n = (lua_Integer)lua_rawlen(L, -1), all = n;
            if (n > RULES_MAX_PARTS) n = RULES_MAX_PARTS;
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                tj_value *v = take_payload(R, r, a, -1);
                lua_pop(L, 1);
                if (!v) { out->n = 0; break; }
                put(out, v);
            }
            if (all > n && out->n) parts_were_cut(R, r, all, all - n);
        } else {
            lua_pop(L, 1);
            tj_value *v = take_payload(R, r, a, -1);
            if (v) put(out, v);
        }
    } else if (lua_gettop(L) > top && !lua_isnil(L, -1) && !lua_istable(L, -1)) {
        script_failed(R, r, "map must return a payload table, { tally_many = {...} } or nil");
    }
    sb_enter(R->sb, was);
    lua_settop(L, top);
    R->rep = NULL;
}

void rules_stats(const rules *R, tbuf *b) { rules_stats_sum(&R, 1, b); }

void rules_stats_sum(const rules *const *sets, size_t nsets, tbuf *b)
{
    const rules *R = nsets ? sets[0] : NULL;
    tbuf_putc(b, '[');
    for (size_t i = 0; R && i < R->n; i++) {
        const rule *r = &R->r[i];
        unsigned long long calls = 0, errors = 0, dropped = 0, violations = 0, suppressed = 0, cut = 0;
        size_t memory = 0, disabled = 0;
        for (size_t k = 0; k < nsets; k++) {
            const rule *rk = &sets[k]->r[i];
            assert(sets[k]->n == R->n); /* copies of one set: the processor swaps them together */
            calls += atomic_load(&rk->calls);
            errors += atomic_load(&rk->errors);
            dropped += atomic_load(&rk->dropped);
            violations += atomic_load(&rk->violations);
            suppressed += atomic_load(&rk->log_suppressed);
            cut += atomic_load(&rk->parts_cut);
            memory += sb_script_memory(sets[k]->sb, rk->slot);
            disabled += atomic_load(&rk->disabled) != 0;
        }
        tbuf_puts(b, i ? ",{\"name\":" : "{\"name\":");
        tj_write_string(b, r->name, strlen(r->name));
        tbuf_printf(b, ",\"stage\":\"%s\",\"calls\":%llu,\"errors\":%llu,\"dropped\":%llu,\"violations\":%llu,\"disabled\":%s",
                    stage_names[r->stage], calls, errors, dropped, violations, disabled ? "true" : "false");
        /* with several rule states (rule_threads) the breaker trips in each on its own */
        if (nsets > 1) tbuf_printf(b, ",\"disabled_states\":%zu", disabled);
        tbuf_printf(b, ",\"log_suppressed\":%llu,\"parts_cut\":%llu,\"memory\":%zu}", suppressed, cut, memory);
    }
    tbuf_putc(b, ']');
}
