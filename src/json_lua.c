/* tj_value <-> Lua bridge; the contract is in json_lua.h.
 *
 * This file is compiled against two different Lua builds, so it must not keep C state or rely on
 * anything but the public API: shared objects (the array metatable, the arena box metatable) are
 * found in the registry by name each time. */
#include "json_lua.h"

#include <assert.h>
#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_BOX_MT "tally.arena_box"
#define PUSH_MAX_DEPTH (4 * TJ_MAX_DEPTH) /* C-stack guard for trees built by hand */

/* Only its address matters: it is what makes the empty-array marker unique. Never written. */
static char empty_array_marker;

/* ======================================================================== sentinels */

void tjl_init(lua_State *L)
{
    luaL_newmetatable(L, TJL_ARRAY_MT); /* sets __name; returns the existing one if present */
    lua_pop(L, 1);
}

void tjl_push_null(lua_State *L) { lua_pushlightuserdata(L, NULL); }
void tjl_push_empty_array(lua_State *L) { lua_pushlightuserdata(L, &empty_array_marker); }

int tjl_is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
}

int tjl_is_empty_array(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &empty_array_marker;
}

/* Pushes the array metatable, creating it on first use. */
static void push_array_mt(lua_State *L)
{
    if (luaL_getmetatable(L, TJL_ARRAY_MT) == LUA_TTABLE) return;
    lua_pop(L, 1);
    luaL_newmetatable(L, TJL_ARRAY_MT);
}

void tjl_set_array(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE) return;
    idx = lua_absindex(L, idx);
    push_array_mt(L);
    lua_setmetatable(L, idx);
}

/* Is the table at idx tagged with the metatable at stack index mt (0: none registered)? */
static int has_mt(lua_State *L, int idx, int mt)
{
    if (!mt || !lua_getmetatable(L, idx)) return 0;
    int same = lua_rawequal(L, -1, mt);
    lua_pop(L, 1);
    return same;
}

int tjl_is_array(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE) return 0;
    idx = lua_absindex(L, idx);
    int found = luaL_getmetatable(L, TJL_ARRAY_MT) == LUA_TTABLE;
    int r = found && has_mt(L, idx, lua_gettop(L));
    lua_pop(L, 1);
    return r;
}

/* ======================================================================== origins */

#define ORIGIN_SLOTS 512              /* a power of two */
#define ORIGIN_MAX (ORIGIN_SLOTS / 2) /* tables recorded per message; the rest are converted */

typedef struct oentry {
    const void     *t;      /* the Lua table (lua_topointer) */
    const tj_value *node;   /* what it was pushed from; NULL for a table made inside a TJ_RAW */
    unsigned        gen;    /* the entry is live when this is the origin's gen */
    int             height; /* levels of tables in it, itself included */
    unsigned        seq;    /* its place in the order tables were recorded (1-based) */
    unsigned        first;  /* the seq of the first table recorded inside it (seq when none) */
} oentry;

/* Tables are recorded when they are full, after every table inside them (post-order), and once
 * ORIGIN_MAX is reached nothing more is: so a recorded table's descendants are exactly the tables
 * recorded just before it, seqs first..seq-1. The Lua list (the registry, keyed by the origin's
 * address) holds table seq at index seq, so whether a subtree is untouched is a look at the
 * touched bit of each table in that range (reversed post-order: a table is looked at before the
 * ones inside it), not a walk of every key in it. */
struct tjl_origin {
    unsigned  gen; /* bumped per message, so the slots need no clearing */
    size_t    n;
    size_t    listed; /* the Lua list's highest index holding a table, so stale ones get cleared */
    long      values[ORIGIN_MAX + 1]; /* values[s]: the members of tables 1..s (a prefix sum) */
    tj_arena *scratch; /* a TJ_RAW's text parsed to size its tables; C memory, so a Lua error
                        * raised while they are made leaks nothing; reset per message */
    oentry    e[ORIGIN_SLOTS];
};

tjl_origin *tjl_origin_new(void)
{
    tjl_origin *o = calloc(1, sizeof *o);
    if (o && !(o->scratch = tj_arena_new())) {
        free(o);
        return NULL;
    }
    if (o) o->gen = 1; /* calloc's 0 marks every slot free */
    return o;
}

void tjl_origin_free(tjl_origin *o)
{
    if (!o) return;
    tj_arena_free(o->scratch);
    free(o);
}

static void origin_reset(tjl_origin *o)
{
    tj_arena_reset(o->scratch);
    if (++o->gen == 0) { /* wrapped: old entries could look live again */
        memset(o->e, 0, sizeof o->e);
        o->gen = 1;
    }
    o->n = 0;
}

static inline size_t origin_slot(const void *t)
{
    uint64_t x = (uint64_t)(uintptr_t)t;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 32;
    return (size_t)x & (ORIGIN_SLOTS - 1);
}

#ifdef LUA_TALLY_TOUCH
static const oentry *origin_find(const tjl_origin *o, const void *t)
{
    for (size_t i = origin_slot(t); o->e[i].gen == o->gen; i = (i + 1) & (ORIGIN_SLOTS - 1))
        if (o->e[i].t == t) return &o->e[i];
    return NULL;
}
#endif

/* Pushes the origin's list of recorded tables (made on first use). */
static void push_origin_list(lua_State *L, const tjl_origin *o)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, o) == LUA_TTABLE) return;
    lua_pop(L, 1);
    lua_createtable(L, ORIGIN_MAX, 0);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, o);
}

/* The table on top of the stack was just made from node (NULL inside a TJ_RAW) and filled with
 * `members` values: marks it untouched and records it, in the list at stack index `list`. `first`
 * is what o->n was when the table was begun (the seq before its first descendant's). */
static void origin_note(lua_State *L, tjl_origin *o, int list, const tj_value *node, int height,
                        size_t first, long members)
{
#ifdef LUA_TALLY_TOUCH
    if (!o || o->n == ORIGIN_MAX) return;
    const void *t = lua_topointer(L, -1);
    size_t i = origin_slot(t);
    while (o->e[i].gen == o->gen) i = (i + 1) & (ORIGIN_SLOTS - 1);
    unsigned seq = (unsigned)++o->n;
    o->e[i] = (oentry){t, node, o->gen, height, seq, (unsigned)first + 1};
    o->values[seq] = o->values[seq - 1] + members;
    lua_pushvalue(L, -1);
    lua_rawseti(L, list, seq); /* before untouching: the list is not the table */
    if (seq > o->listed) o->listed = seq;
    lua_tableuntouch(L, -1);
#else
    (void)L, (void)o, (void)list, (void)node, (void)height, (void)first, (void)members;
#endif
}

/* ======================================================================== JSON -> Lua */

typedef struct {
    lua_State *L;
    int mt; /* stack index of the array metatable */
    tjl_origin *o; /* NULL: nothing recorded */
    int list;      /* stack index of o's list (when o) */
    const tj_value *raw; /* pushing the parse of this TJ_RAW (at depth raw_depth), else NULL */
    int raw_depth;
} pctx;

/* What the table made from v at depth stands for: v itself, or inside a TJ_RAW's parse the text
 * for the outermost table and nothing for the others (they are not nodes of the message). */
static const tj_value *made_from(const pctx *c, const tj_value *v, int depth)
{
    if (!c->raw) return v;
    return depth == c->raw_depth ? c->raw : NULL;
}

static int push_value(pctx *c, const tj_value *v, int depth, int *height);

static int push_array(pctx *c, const tj_value *v, int depth, int *height)
{
    lua_State *L = c->L;
    size_t n = v->u.arr.n, first = c->o ? c->o->n : 0;
    int below = 0, h;
    lua_createtable(L, n <= INT_MAX ? (int)n : 0, 0);
    for (size_t i = 0; i < n; i++) {
        if (push_value(c, v->u.arr.items[i], depth + 1, &h)) return -1;
        if (h > below) below = h;
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_pushvalue(L, c->mt);
    lua_setmetatable(L, -2);
    *height = below + 1;
    origin_note(L, c->o, c->list, made_from(c, v, depth), *height, first, (long)n);
    return 0;
}

static int push_object(pctx *c, const tj_value *v, int depth, int *height)
{
    lua_State *L = c->L;
    size_t n = v->u.obj.n, first = c->o ? c->o->n : 0;
    int below = 0, h;
    lua_createtable(L, 0, n <= INT_MAX ? (int)n : 0);
    for (size_t i = 0; i < n; i++) {
        const tj_member *m = &v->u.obj.m[i];
        lua_pushlstring(L, m->key, m->klen);
        if (push_value(c, m->val, depth + 1, &h)) return -1;
        if (h > below) below = h;
        lua_rawset(L, -3);
    }
    *height = below + 1;
    /* n counts a duplicated key each time: the members charged for this table (between rules,
     * tjl_untouched_size) are never fewer than it holds */
    origin_note(L, c->o, c->list, made_from(c, v, depth), *height, first, (long)n);
    return 0;
}

static int arena_box_gc(lua_State *L)
{
    tj_arena **box = lua_touserdata(L, 1);
    if (box && *box) {
        tj_arena_free(*box);
        *box = NULL;
    }
    return 0;
}

/* Pushes a full userdata owning a new arena (freed by __gc or by the caller): arenas live in one
 * while Lua values are being created, so a Lua memory error (a longjmp) cannot leak them. */
static tj_arena **push_arena_box(lua_State *L)
{
    tj_arena **box = lua_newuserdata(L, sizeof *box);
    *box = NULL;
    if (luaL_newmetatable(L, ARENA_BOX_MT)) {
        lua_pushcfunction(L, arena_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    *box = tj_arena_new();
    return box;
}

/* ---- text -> Lua without a C tree: every byte the result takes is Lua's (and so counted by a
 * sandbox's memory cap), and nothing is held in C while Lua may raise. ---- */

typedef struct {
    lua_State *L;
    int mt;    /* stack index of the array metatable */
    int depth; /* open containers */
    struct { int object, below; lua_Integer n; size_t first; } open[TJ_MAX_DEPTH + 1];
    tjl_origin *o;        /* NULL: nothing recorded */
    int list;             /* stack index of o's list (when o) */
    const tj_value *raw;  /* the TJ_RAW being pushed, recorded for the outermost table */
    int height;           /* levels of tables in the value pushed */
} dctx;

/* Stores the value on top into the open container (nothing to do at the top level). */
static int d_place(dctx *c)
{
    if (c->depth == 0) return 0;
    /* n counts the members of objects too (what origin_note is told) */
    if (c->open[c->depth - 1].object) {
        lua_rawset(c->L, -3);
        c->open[c->depth - 1].n++;
    } else {
        lua_rawseti(c->L, -2, ++c->open[c->depth - 1].n);
    }
    return 0;
}

static int d_begin(void *ud, int object)
{
    dctx *c = ud;
    if (c->depth > TJ_MAX_DEPTH || !lua_checkstack(c->L, 4)) return -1;
    lua_newtable(c->L);
    c->open[c->depth].object = object;
    c->open[c->depth].below = 0;
    c->open[c->depth].n = 0;
    c->open[c->depth].first = c->o ? c->o->n : 0;
    c->depth++;
    return 0;
}

static int d_end(void *ud)
{
    dctx *c = ud;
    if (!c->open[--c->depth].object) {
        lua_pushvalue(c->L, c->mt);
        lua_setmetatable(c->L, -2);
    }
    int h = c->open[c->depth].below + 1;
    if (c->depth && h > c->open[c->depth - 1].below) c->open[c->depth - 1].below = h;
    if (!c->depth) c->height = h;
    if (c->o)
        origin_note(c->L, c->o, c->list, c->depth ? NULL : c->raw, h, c->open[c->depth].first,
                    (long)c->open[c->depth].n);
    return d_place(c);
}

static void d_pushstring(dctx *c, const char *body, size_t len, int escaped)
{
    if (!escaped) {
        lua_pushlstring(c->L, body, len);
        return;
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(c->L, &b, len);
    luaL_pushresultsize(&b, tj_unescape(p, body, len));
}

static int d_key(void *ud, const char *body, size_t len, int escaped)
{
    d_pushstring(ud, body, len, escaped);
    return 0;
}

static int d_string(void *ud, const char *body, size_t len, int escaped)
{
    d_pushstring(ud, body, len, escaped);
    return d_place(ud);
}

static void push_int(lua_State *L, int64_t i)
{
    /* a Lua built with 32-bit integers gets a float rather than a wrapped value */
    if (i < LUA_MININTEGER || i > LUA_MAXINTEGER) lua_pushnumber(L, (lua_Number)i);
    else lua_pushinteger(L, (lua_Integer)i);
}

static int d_scalar(void *ud, const tj_value *v)
{
    dctx *c = ud;
    switch (v->type) {
    case TJ_NULL: lua_pushlightuserdata(c->L, NULL); break;
    case TJ_FALSE: lua_pushboolean(c->L, 0); break;
    case TJ_TRUE: lua_pushboolean(c->L, 1); break;
    case TJ_INT: push_int(c->L, v->u.i); break;
    case TJ_DOUBLE: lua_pushnumber(c->L, (lua_Number)v->u.d); break;
    /* an integer beyond 64 bits: Lua has no exact type for it, the nearest float is what scripts
     * see */
    case TJ_RAW: lua_pushnumber(c->L, (lua_Number)tj_literal_double(v->u.str.s, v->u.str.len)); break;
    default: return -1;
    }
    return d_place(c);
}

static const tj_handler to_lua = {d_begin, d_end, d_key, d_string, d_scalar};

/* tjl_decode, recording the tables made into o (when not NULL) as made from raw. */
static int decode_from(lua_State *L, const char *text, size_t len, tj_error *err, tjl_origin *o,
                       const tj_value *raw, int *height)
{
    int top = lua_gettop(L);
    if (!lua_checkstack(L, 8)) {
        if (err) snprintf(err->msg, sizeof err->msg, "out of memory (Lua stack)");
        return TALLY_ENOMEM;
    }
    push_array_mt(L);
    dctx c;
    c.L = L;
    c.mt = lua_gettop(L);
    c.depth = 0;
    c.o = o;
    c.list = 0;
    if (o) {
        push_origin_list(L, o);
        c.list = lua_gettop(L);
    }
    c.raw = raw;
    c.height = 0;
    if (tj_walk(text, len, &to_lua, &c, err)) {
        lua_settop(L, top);
        return TALLY_EINVAL;
    }
    if (o) lua_remove(L, c.list);
    lua_remove(L, c.mt);
    if (height) *height = c.height;
    return TALLY_OK;
}

int tjl_decode(lua_State *L, const char *text, size_t len, tj_error *err)
{
    return decode_from(L, text, len, err, NULL, NULL, NULL);
}

static int push_raw(pctx *c, const tj_value *v, int depth, int *height)
{
    (void)depth; /* the text's own nesting is bounded by the validator */
    tj_value *tree;
    tj_error err;
    const char *s = v->u.str.s;
    if (!c->o || !v->u.str.len || (s[0] != '{' && s[0] != '[') ||
        tj_parse(c->o->scratch, s, v->u.str.len, &tree, &err))
        return decode_from(c->L, s, v->u.str.len, NULL, c->o, v, height);
    /* Parsed in C first, its tables are made at their size: filled key by key, each was rehashed
     * log2(n) times (made_from says what they stand for) */
    c->raw = v;
    c->raw_depth = depth;
    int rc = push_value(c, tree, depth, height);
    c->raw = NULL;
    return rc;
}

static int push_value(pctx *c, const tj_value *v, int depth, int *height)
{
    lua_State *L = c->L;
    if (depth > PUSH_MAX_DEPTH || !lua_checkstack(L, 4)) return -1;
    *height = 0;
    switch (v->type) {
    case TJ_NULL: lua_pushlightuserdata(L, NULL); return 0;
    case TJ_FALSE: lua_pushboolean(L, 0); return 0;
    case TJ_TRUE: lua_pushboolean(L, 1); return 0;
    case TJ_INT: push_int(L, v->u.i); return 0;
    case TJ_DOUBLE: lua_pushnumber(L, (lua_Number)v->u.d); return 0;
    case TJ_STRING: lua_pushlstring(L, v->u.str.s, v->u.str.len); return 0;
    case TJ_ARRAY: return push_array(c, v, depth, height);
    case TJ_OBJECT: return push_object(c, v, depth, height);
    case TJ_RAW: return push_raw(c, v, depth, height);
    }
    return -1;
}

int tjl_push(lua_State *L, const tj_value *v) { return tjl_push_more(L, v, NULL); }

int tjl_push_from(lua_State *L, const tj_value *v, tjl_origin *o)
{
    if (o) origin_reset(o);
    return tjl_push_more(L, v, o);
}

int tjl_push_more(lua_State *L, const tj_value *v, tjl_origin *o)
{
    int top = lua_gettop(L), height;
    if (!lua_checkstack(L, 8)) return TALLY_ENOMEM;
    push_array_mt(L);
    pctx c = {L, lua_gettop(L), o, 0, NULL, 0};
    if (o) {
        push_origin_list(L, o);
        c.list = lua_gettop(L);
    }
    if (push_value(&c, v, 0, &height)) {
        lua_settop(L, top);
        return TALLY_EINVAL;
    }
    if (o) {
        /* an earlier message's tables past this one's are let go */
        for (size_t k = o->n + 1; k <= o->listed; k++) {
            lua_pushnil(L);
            lua_rawseti(L, c.list, (lua_Integer)k);
        }
        o->listed = o->n;
        lua_remove(L, c.list);
    }
    lua_remove(L, c.mt);
    return TALLY_OK;
}

/* ======================================================================== Lua -> JSON */

typedef struct {
    const char *key; /* NULL: array element */
    size_t klen;
    size_t index;    /* 0-based */
} seg;

typedef struct {
    lua_State *L;
    tj_arena *a;
    tj_error *err;
    const char *root;
    int mt;     /* stack index of the array metatable, 0 when none is registered */
    int depth;  /* tables being converted */
    int npath;
    int fatal;  /* the byte budget is spent: stop everything, report that */
    int rc;     /* the TALLY_E* of the error last written to err */
    size_t used, limit; /* bytes the JSON text takes at least so far, and the most it may take */
    seg path[TJ_MAX_DEPTH + 1];
    const void *open[TJ_MAX_DEPTH]; /* the tables being converted, outermost first: a cycle's proof */
    int height;                      /* levels of tables in the value just converted (0: scalar) */
    int below[TJ_MAX_DEPTH + 1];     /* per open table: the highest child so far */
    int sorted;                      /* second pass: members in key order, for the error */
    struct memo *memo;               /* every table converted so far, by address */
    size_t memo_n, memo_cap;
    const tj_value *orig;            /* what the value was made from, for big integers' text */
    const tjl_origin *origin;        /* the tables pushed from it, reused when untouched */
    int bigs_known;                  /* bigs collected from orig */
    struct big *bigs;
    size_t nbigs, bigs_cap;
} cctx;

/* An integer literal beyond 64 bits found in orig, and the float scripts saw for it. */
typedef struct big {
    const char *s;
    size_t len;
    double d;
} big;

/* A table reached again (shared by several parents: t = {a = u, b = u}) is not walked again: its
 * text is charged again and its converted tree copied, so the work per reach is proportional to
 * what it adds to the output, not to the table's size in Lua (a table emptied after holding a
 * million entries is a million slots for lua_next to skip). Only successes are kept: the first
 * error ends the walk. */
typedef struct memo {
    const void *t;
    tj_value *v;
    int height;   /* levels of tables in it, to know whether it still fits when reached deeper */
    size_t bytes; /* what it charged */
} memo;

/* Appends to a bounded buffer; the result is always NUL-terminated and possibly cut short. */
typedef struct {
    char *s;
    size_t len, cap;
} sbuf;

static void sb_put(sbuf *b, const char *p, size_t n)
{
    if (n > b->cap - 1 - b->len) n = b->cap - 1 - b->len;
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static int is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

static int ident_like(const char *k, size_t n)
{
    if (n == 0 || (k[0] >= '0' && k[0] <= '9')) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (!((c | 0x20) >= 'a' && (c | 0x20) <= 'z') && !(c >= '0' && c <= '9') && c != '_' &&
            c != '$' && c != '-')
            return 0;
    }
    return 1;
}

#define KEY_SHOWN 32 /* longer keys are cut to this many bytes in messages */

static void put_key(sbuf *b, const char *k, size_t n, int first)
{
    size_t shown = n;
    if (shown > KEY_SHOWN) {
        shown = KEY_SHOWN - 3;
        while (shown > 0 && is_cont((unsigned char)k[shown])) shown--; /* whole characters */
    }
    int ident = ident_like(k, n);
    if (ident) {
        if (!first) sb_put(b, ".", 1);
    } else {
        sb_put(b, "[\"", 2);
    }
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)k[i];
        if (c == '"' || c == '\\') sb_put(b, "\\", 1);
        sb_put(b, c < 0x20 || c == 0x7F ? "?" : &k[i], 1); /* keep messages one clean line */
    }
    if (shown < n) sb_put(b, "...", 3);
    if (!ident) sb_put(b, "\"]", 2);
}

static void format_path(const cctx *c, sbuf *b)
{
    if (c->root) sb_put(b, c->root, strlen(c->root));
    for (int i = 0; i < c->npath; i++) {
        const seg *s = &c->path[i];
        if (s->key) {
            put_key(b, s->key, s->klen, b->len == 0);
        } else {
            char idx[32];
            sb_put(b, idx, (size_t)snprintf(idx, sizeof idx, "[%zu]", s->index));
        }
    }
}

/* Writes "path: what" into err->msg, eliding the middle of the path if it does not fit. */
static int cfail(cctx *c, const char *fmt, ...)
{
    char what[96], pathbuf[(KEY_SHOWN + 8) * (TJ_MAX_DEPTH + 2)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    sbuf path = {pathbuf, 0, sizeof pathbuf};
    pathbuf[0] = '\0';
    format_path(c, &path);
    sbuf msg = {c->err->msg, 0, sizeof c->err->msg};
    c->err->offset = 0;
    size_t wlen = strlen(what), room = msg.cap - 1 - wlen - 2; /* what is left for the path */
    if (path.len > room) {
        size_t head = room / 2 - 2, from = path.len - (room - head - 3);
        while (head > 0 && is_cont((unsigned char)pathbuf[head])) head--;
        while (from < path.len && is_cont((unsigned char)pathbuf[from])) from++;
        sb_put(&msg, pathbuf, head);
        sb_put(&msg, "...", 3);
        sb_put(&msg, pathbuf + from, path.len - from);
    } else {
        sb_put(&msg, pathbuf, path.len);
    }
    if (path.len) sb_put(&msg, ": ", 2);
    sb_put(&msg, what, wlen);
    c->rc = TALLY_EINVAL;
    return -1;
}

static int oom_text(cctx *c, const char *text)
{
    cfail(c, "%s", text);
    c->rc = TALLY_ENOMEM;
    return c->rc;
}

static int oom(cctx *c)
{
    oom_text(c, "out of memory");
    return -1;
}

/* Counts n more bytes of output (a lower bound of what the writer will produce) against the limit.
 * Every value, key and table entry is charged before it costs anything, and a table shared by
 * several parents is charged each time it is reached, as the text repeats it: so the work of one
 * conversion, cycles and DAGs included, is bounded by its limit, not by the size of its output. */
static int charge(cctx *c, size_t n)
{
    if (c->fatal) return -1;
    if (n <= c->limit - c->used) {
        c->used += n;
        return 0;
    }
    c->fatal = 1;
    cfail(c, "too large: the JSON text would exceed the %zu-byte limit", c->limit);
    c->rc = TALLY_ETOOBIG;
    return -1;
}

static int conv(cctx *c, int idx, tj_value **out);

static int conv_child(cctx *c, seg s, tj_value **out)
{
    c->path[c->npath++] = s;
    int r = conv(c, lua_gettop(c->L), out);
    c->npath--;
    if (r == 0 && c->height > c->below[c->depth - 1]) c->below[c->depth - 1] = c->height;
    return r;
}

static size_t memo_slot(const cctx *c, const void *t)
{
    uint64_t x = (uint64_t)(uintptr_t)t;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 32;
    return (size_t)x & (c->memo_cap - 1);
}

static memo *memo_find(const cctx *c, const void *t)
{
    if (!c->memo_cap) return NULL;
    for (size_t i = memo_slot(c, t);; i = (i + 1) & (c->memo_cap - 1)) {
        if (c->memo[i].t == t) return &c->memo[i];
        if (!c->memo[i].t) return NULL;
    }
}

static memo *memo_find_free(const cctx *c, const void *t)
{
    size_t i = memo_slot(c, t);
    while (c->memo[i].t) i = (i + 1) & (c->memo_cap - 1);
    return &c->memo[i];
}

/* Records t (not yet present); returns its entry, or NULL on OOM (then it is simply not kept). */
static memo *memo_add(cctx *c, const void *t)
{
    if ((c->memo_n + 1) * 2 > c->memo_cap) {
        size_t cap = c->memo_cap ? c->memo_cap * 2 : 32;
        memo *m = tj_alloc(c->a, cap * sizeof *m), *old = c->memo;
        if (!m) return NULL;
        memset(m, 0, cap * sizeof *m);
        size_t oldcap = c->memo_cap;
        c->memo = m;
        c->memo_cap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].t) *memo_find_free(c, old[i].t) = old[i];
    }
    memo *e = memo_find_free(c, t);
    memset(e, 0, sizeof *e);
    e->t = t;
    c->memo_n++;
    return e;
}

typedef struct {
    size_t n, nstr, nint;
    lua_Integer maxint;
    int all_pos;  /* every integer key >= 1 */
    int bad_type; /* type of a key that is neither string nor integer, or LUA_TNONE */
    tj_member *m; /* copies of the string keys (with their values converted, in the first pass) */
    size_t mcap;
} keyscan;

static int keep_key(cctx *c, keyscan *k)
{
    size_t klen;
    const char *s = lua_tolstring(c->L, -2, &klen);
    if (k->nstr == k->mcap) {
        size_t cap = k->mcap ? k->mcap * 2 : 8;
        tj_member *m = tj_alloc(c->a, cap * sizeof *m);
        if (!m) return oom(c);
        if (k->nstr) memcpy(m, k->m, k->nstr * sizeof *m);
        k->m = m;
        k->mcap = cap;
    }
    tj_member *dst = &k->m[k->nstr];
    /* the second pass only looks for the error, and its tree is thrown away: Lua's own string,
     * held by the table for as long as the walk lasts, does (a 16 MiB key is not copied) */
    if (c->sorted) dst->key = s;
    else if (!(dst->key = tj_strdup(c->a, s, klen))) return oom(c);
    dst->klen = klen;
    dst->val = NULL;
    return 0;
}

/* What a member costs before its value: a separator and "key":, and the key must be UTF-8. */
static int check_key(cctx *c, const tj_member *m)
{
    size_t bad;
    if (charge(c, 1 + m->klen + 3)) return -1;
    if (!tj_utf8_valid(m->key, m->klen, &bad)) return cfail(c, "invalid UTF-8 in key at byte %zu", bad);
    return 0;
}

/* One lua_next pass: counts the keys (the table's shape) and, in the first pass, converts the
 * values of string keys while lua_next holds them. Converting in a second pass, in key order,
 * pushed (interned) every key again and looked it up: ~15% of the time rules took per message
 * (bench/README.md). The first error stops everything; only then does the second pass (c->sorted)
 * walk again in key order, so that the error reported is the first in key order whatever
 * lua_next's order (Lua's string hashing is seeded per state): that pass only collects keys here,
 * and charges and checks each member in order later. Returns 0, or -1 after an error. */
static int scan_keys(cctx *c, int idx, keyscan *k)
{
    lua_State *L = c->L;
    memset(k, 0, sizeof *k);
    k->all_pos = 1;
    k->bad_type = LUA_TNONE;
    unsigned cur = 0;
    while (tjl_next(L, idx, &cur)) {
        k->n++;
        /* more entries than bytes left is too large whatever the order: the same error, at the
         * table's path, in both passes */
        if (c->sorted && k->n > c->limit - c->used) return charge(c, k->n);
        if (lua_type(L, -2) == LUA_TSTRING) {
            /* charged before it is copied: a 16 MiB key costs nothing */
            if (!c->sorted && charge(c, lua_rawlen(L, -2) + 4)) return -1;
            if (keep_key(c, k)) return -1;
            tj_member *m = &k->m[k->nstr++];
            if (!c->sorted) {
                size_t bad;
                if (!tj_utf8_valid(m->key, m->klen, &bad)) return cfail(c, "invalid UTF-8 in key at byte %zu", bad);
                if (conv_child(c, (seg){m->key, m->klen, 0}, &m->val)) return -1;
            }
        } else if (!c->sorted && charge(c, 1)) {
            return -1;
        } else if (lua_isinteger(L, -2)) {
            lua_Integer i = lua_tointeger(L, -2);
            k->nint++;
            if (i < 1) k->all_pos = 0;
            if (i > k->maxint) k->maxint = i;
        } else if (k->bad_type == LUA_TNONE || lua_type(L, -2) < k->bad_type) {
            k->bad_type = lua_type(L, -2); /* the lowest type: the same whatever lua_next's order */
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int is_sequence(const keyscan *k)
{
    /* n distinct integer keys, all >= 1, the largest being n: exactly 1..n */
    return k->nint == k->n && k->all_pos && (lua_Unsigned)k->maxint == (lua_Unsigned)k->n;
}

static int conv_array(cctx *c, int idx, size_t n, tj_value **out)
{
    tj_value *v = tj_new(c->a, TJ_ARRAY);
    tj_value **items = n ? tj_alloc(c->a, n * sizeof *items) : NULL;
    if (!v || (n && !items)) return oom(c);
    for (size_t i = 0; i < n; i++) {
        if (c->sorted && charge(c, 1)) return -1; /* the first pass charged it while scanning */
        lua_rawgeti(c->L, idx, (lua_Integer)i + 1);
        if (conv_child(c, (seg){NULL, 0, i}, &items[i])) return -1;
        lua_pop(c->L, 1);
    }
    v->u.arr.items = items;
    v->u.arr.n = v->u.arr.cap = n;
    *out = v;
    return 0;
}

static int member_cmp(const void *pa, const void *pb)
{
    const tj_member *a = pa, *b = pb;
    int r = memcmp(a->key, b->key, a->klen < b->klen ? a->klen : b->klen);
    if (r) return r;
    return (a->klen > b->klen) - (a->klen < b->klen);
}

/* Members come out in sorted key order (the first pass converted them while scanning; the second
 * converts them now, in that order). */
static int conv_object(cctx *c, int idx, keyscan *k, tj_value **out)
{
    tj_value *v = tj_new(c->a, TJ_OBJECT);
    if (!v) return oom(c);
    tj_member *m = k->m;
    qsort(m, k->nstr, sizeof *m, member_cmp);
    for (size_t i = 0; c->sorted && i < k->nstr; i++) {
        if (check_key(c, &m[i])) return -1;
        lua_pushlstring(c->L, m[i].key, m[i].klen);
        lua_rawget(c->L, idx);
        if (conv_child(c, (seg){m[i].key, m[i].klen, 0}, &m[i].val)) return -1;
        lua_pop(c->L, 1);
    }
    v->u.obj.m = m;
    v->u.obj.n = k->nstr;
    v->u.obj.cap = k->mcap;
    *out = v;
    return 0;
}

static int table_shape_error(cctx *c, const keyscan *k, int tagged)
{
    if (tagged) return cfail(c, "array is not a sequence 1..n (holes or non-integer keys)");
    if (k->bad_type != LUA_TNONE)
        return cfail(c, "table has a %s key; JSON object keys must be strings",
                     k->bad_type == LUA_TNUMBER ? "non-integer number" : lua_typename(c->L, k->bad_type));
    if (k->nstr) return cfail(c, "table mixes string and integer keys");
    return cfail(c, "table with integer keys is not a sequence 1..n");
}

/* A copy of a converted tree: the result stays a tree (later stages edit messages in place), and
 * strings, never edited, are shared. NULL on OOM. */
static tj_value *copy_tree(tj_arena *a, const tj_value *v)
{
    tj_value *n = tj_alloc(a, sizeof *n);
    if (!n) return NULL;
    *n = *v;
    if (v->type == TJ_ARRAY && v->u.arr.n) {
        if (!(n->u.arr.items = tj_alloc(a, v->u.arr.n * sizeof *n->u.arr.items))) return NULL;
        n->u.arr.cap = v->u.arr.n;
        for (size_t i = 0; i < v->u.arr.n; i++)
            if (!(n->u.arr.items[i] = copy_tree(a, v->u.arr.items[i]))) return NULL;
    } else if (v->type == TJ_OBJECT && v->u.obj.n) {
        if (!(n->u.obj.m = tj_alloc(a, v->u.obj.n * sizeof *n->u.obj.m))) return NULL;
        n->u.obj.cap = v->u.obj.n;
        for (size_t i = 0; i < v->u.obj.n; i++) {
            n->u.obj.m[i] = v->u.obj.m[i];
            if (!(n->u.obj.m[i].val = copy_tree(a, v->u.obj.m[i].val))) return NULL;
        }
    }
    return n;
}

static int conv_fresh(cctx *c, int idx, tj_value **out);

#ifdef LUA_TALLY_TOUCH
/* At least what writing v takes (its exact length for a TJ_RAW, whose text is written as it is). */
static size_t node_bytes(const tj_value *v)
{
    size_t n = 2;
    switch (v->type) {
    case TJ_NULL: case TJ_TRUE: return 4;
    case TJ_FALSE: return 5;
    case TJ_INT: return 1;
    case TJ_DOUBLE: return 3;
    case TJ_STRING: return v->u.str.len + 2;
    case TJ_RAW: return v->u.str.len;
    case TJ_ARRAY:
        for (size_t i = 0; i < v->u.arr.n; i++) n += (i > 0) + node_bytes(v->u.arr.items[i]);
        return n;
    case TJ_OBJECT:
        for (size_t i = 0; i < v->u.obj.n; i++) n += (i > 0) + v->u.obj.m[i].klen + 3 + node_bytes(v->u.obj.m[i].val);
        return n;
    }
    return n;
}

/* The origin's entry of the table at idx when it, and every table below it, is untouched since
 * it was pushed (so it holds exactly what it was made from); else NULL. An untouched table holds
 * the tables it was made with, and they were recorded just before it (see tjl_origin): its
 * descendants are looked at in the list, last recorded first, so each is reached only after the
 * tables holding it were found untouched. */
static const oentry *untouched(lua_State *L, const tjl_origin *o, int idx)
{
    const oentry *e = origin_find(o, lua_topointer(L, idx));
    if (!e || lua_tabletouched(L, idx)) return NULL;
    if (e->first == e->seq) return e;
    if (!lua_checkstack(L, 2)) return NULL;
    push_origin_list(L, o);
    for (unsigned s = e->seq - 1; s >= e->first; s--) {
        lua_rawgeti(L, -1, s);
        int touched = lua_tabletouched(L, -1);
        lua_pop(L, 1);
        if (touched) {
            lua_pop(L, 1);
            return NULL;
        }
    }
    lua_pop(L, 1);
    return e;
}
#endif

int tjl_untouched_size(lua_State *L, int idx, const tjl_origin *o, long *values, int *height)
{
#ifdef LUA_TALLY_TOUCH
    if (!o || lua_type(L, idx) != LUA_TTABLE) return 0;
    const oentry *e = untouched(L, o, lua_absindex(L, idx));
    if (!e) return 0;
    *values = o->values[e->seq] - o->values[e->first - 1];
    *height = e->height;
    return 1;
#else
    (void)L, (void)idx, (void)o, (void)values, (void)height;
    return 0;
#endif
}

const tj_value *tjl_untouched_node(lua_State *L, int idx, const tjl_origin *o)
{
#ifdef LUA_TALLY_TOUCH
    if (!o || lua_type(L, idx) != LUA_TTABLE) return NULL;
    const oentry *e = untouched(L, o, lua_absindex(L, idx));
    return e ? e->node : NULL;
#else
    (void)L, (void)idx, (void)o;
    return NULL;
#endif
}

/* 1 with *out set to the node the table at idx was pushed from, when it can stand for the table
 * (see tjl_origin); 0 when the table must be converted; -1 when the limit is passed. */
static int reuse_origin(cctx *c, int idx, tj_value **out)
{
#ifdef LUA_TALLY_TOUCH
    if (!c->origin) return 0;
    const oentry *e = untouched(c->L, c->origin, idx);
    /* moved deeper than the limit allows: converted, to report that */
    if (!e || !e->node || c->depth + e->height > TJ_MAX_DEPTH) return 0;
    if (charge(c, node_bytes(e->node))) return -1;
    *out = (tj_value *)(uintptr_t)e->node; /* shared, never edited in place by the caller (tjl_to_json_from) */
    c->height = e->height;
    return 1;
#else
    (void)c, (void)idx, (void)out;
    return 0;
#endif
}

static int conv_table(cctx *c, int idx, tj_value **out)
{
    const void *self = lua_topointer(c->L, idx);
    for (int i = 0; i < c->depth; i++)
        if (c->open[i] == self) return cfail(c, "cycle: the table contains itself");
    memo *e = memo_find(c, self);
    if (e && c->depth + e->height <= TJ_MAX_DEPTH) { /* reached again: charged again, not walked */
        if (charge(c, e->bytes)) return -1;
        if (!(*out = copy_tree(c->a, e->v))) return oom(c);
        c->height = e->height;
        return 0;
    }
    size_t used = c->used;
    int reused = reuse_origin(c, idx, out);
    if (reused < 0 || (!reused && conv_fresh(c, idx, out))) return -1;
    if (!e && (e = memo_add(c, self))) { /* when it cannot be kept, it only costs time */
        e->v = *out;
        e->height = c->height;
        e->bytes = c->used - used;
    }
    return 0;
}

static int conv_fresh(cctx *c, int idx, tj_value **out)
{
    const void *self = lua_topointer(c->L, idx);
    if (c->depth == TJ_MAX_DEPTH) return cfail(c, "table nested deeper than %d", TJ_MAX_DEPTH);
    if (!lua_checkstack(c->L, 8)) return cfail(c, "out of memory (Lua stack)");
    if (charge(c, 1)) return -1; /* the opening bracket; each entry pays for what follows it */
    int tagged = has_mt(c->L, idx, c->mt);
    keyscan k;
    c->below[c->depth] = 0;
    c->open[c->depth++] = self;
    int r = scan_keys(c, idx, &k);
    if (r) {
        /* the error stands */
    } else if (k.n == 0 && !tagged) {
        r = (*out = tj_new(c->a, TJ_OBJECT)) ? 0 : oom(c);
    } else if (is_sequence(&k)) {
        r = conv_array(c, idx, k.n, out);
    } else if (!tagged && k.nstr == k.n) {
        r = conv_object(c, idx, &k, out);
    } else {
        r = table_shape_error(c, &k, tagged);
    }
    c->depth--;
    c->height = c->below[c->depth] + 1;
    return r;
}

static int collect_big(void *ud, const tj_value *v)
{
    cctx *c = ud;
    if (v->type != TJ_RAW) return 0;
    if (c->nbigs == c->bigs_cap) {
        size_t cap = c->bigs_cap ? c->bigs_cap * 2 : 8;
        big *b = tj_alloc(c->a, cap * sizeof *b);
        if (!b) return -1;
        if (c->nbigs) memcpy(b, c->bigs, c->nbigs * sizeof *b);
        c->bigs = b;
        c->bigs_cap = cap;
    }
    c->bigs[c->nbigs++] = (big){v->u.str.s, v->u.str.len, tj_literal_double(v->u.str.s, v->u.str.len)};
    return 0;
}

static int ignore_container(void *ud, int object) { (void)ud; (void)object; return 0; }
static int ignore_end(void *ud) { (void)ud; return 0; }
static int ignore_str(void *ud, const char *s, size_t len, int esc) { (void)ud; (void)s; (void)len; (void)esc; return 0; }

static void find_bigs(cctx *c, const tj_value *v)
{
    static const tj_handler h = {ignore_container, ignore_end, ignore_str, ignore_str, collect_big};
    switch (v->type) {
    case TJ_RAW:
        if (v->u.str.len && (v->u.str.s[0] == '-' || (v->u.str.s[0] >= '0' && v->u.str.s[0] <= '9')))
            collect_big(c, v);
        else
            tj_walk(v->u.str.s, v->u.str.len, &h, c, NULL);
        break;
    case TJ_ARRAY:
        for (size_t i = 0; i < v->u.arr.n; i++) find_bigs(c, v->u.arr.items[i]);
        break;
    case TJ_OBJECT:
        for (size_t i = 0; i < v->u.obj.n; i++) find_bigs(c, v->u.obj.m[i].val);
        break;
    default: break;
    }
}

/* The text of the integer beyond 64 bits that the message held and that a script saw as d, when
 * exactly one did: a field the script left alone keeps its digits. NULL otherwise. */
static const big *big_text(cctx *c, double d)
{
    if (!c->orig || !(fabs(d) >= 9223372036854775808.0) || d != floor(d)) return NULL;
    if (!c->bigs_known) {
        c->bigs_known = 1;
        find_bigs(c, c->orig);
    }
    const big *found = NULL;
    for (size_t i = 0; i < c->nbigs; i++) {
        const big *b = &c->bigs[i];
        if (b->d != d) continue;
        if (found && (found->len != b->len || memcmp(found->s, b->s, b->len))) return NULL; /* ambiguous */
        found = b;
    }
    return found;
}

static int conv_number(cctx *c, int idx, tj_value **out)
{
    if (lua_isinteger(c->L, idx)) {
        *out = tj_new_int(c->a, (int64_t)lua_tointeger(c->L, idx));
    } else {
        double d = (double)lua_tonumber(c->L, idx);
        if (isnan(d)) return cfail(c, "NaN is not valid JSON");
        if (isinf(d)) return cfail(c, "%s is not valid JSON", d < 0 ? "-inf" : "inf");
        const big *b = big_text(c, d);
        *out = b ? tj_new_raw(c->a, b->s, b->len) : tj_new_double(c->a, d);
    }
    return *out ? 0 : oom(c);
}

static int conv_string(cctx *c, int idx, tj_value **out)
{
    size_t len, bad;
    const char *s = lua_tolstring(c->L, idx, &len);
    if (len > SIZE_MAX - 2 || charge(c, len + 2)) return -1;
    if (!tj_utf8_valid(s, len, &bad)) return cfail(c, "invalid UTF-8 at byte %zu", bad);
    return (*out = tj_new_string(c->a, s, len)) ? 0 : oom(c);
}

static int conv(cctx *c, int idx, tj_value **out)
{
    lua_State *L = c->L;
    int t = lua_type(L, idx);
    /* what the value takes at least: "null", "true", "0", "0.0"... (strings and tables charge
     * their own) */
    size_t least = t == LUA_TNUMBER ? (lua_isinteger(L, idx) ? 1 : 3) : t == LUA_TBOOLEAN ? 4 : 2;
    if (t != LUA_TSTRING && t != LUA_TTABLE && charge(c, least)) return -1;
    c->height = 0;
    switch (t) {
    case LUA_TNIL: return cfail(c, "nil is not valid JSON");
    case LUA_TBOOLEAN:
        *out = tj_new(c->a, lua_toboolean(L, idx) ? TJ_TRUE : TJ_FALSE);
        return *out ? 0 : oom(c);
    case LUA_TNUMBER: return conv_number(c, idx, out);
    case LUA_TSTRING: return conv_string(c, idx, out);
    case LUA_TTABLE: return conv_table(c, idx, out);
    case LUA_TLIGHTUSERDATA:
        if (tjl_is_null(L, idx)) *out = tj_new(c->a, TJ_NULL);
        else if (tjl_is_empty_array(L, idx)) *out = tj_new(c->a, TJ_ARRAY);
        else return cfail(c, "light userdata is not valid JSON");
        return *out ? 0 : oom(c);
    default: return cfail(c, "%s is not valid JSON", lua_typename(L, t));
    }
}

int tjl_to_json_max(lua_State *L, int idx, const char *root, size_t max_bytes, const tj_value *orig,
                    tj_arena *a, tj_value **out, tj_error *err)
{
    return tjl_to_json_from(L, idx, root, max_bytes, orig, NULL, a, out, err);
}

int tjl_to_json_from(lua_State *L, int idx, const char *root, size_t max_bytes, const tj_value *orig,
                     const tjl_origin *o, tj_arena *a, tj_value **out, tj_error *err)
{
    tj_error scratch;
    cctx c;
    memset(&c, 0, sizeof c);
    c.L = L;
    c.a = a;
    c.err = err ? err : &scratch;
    c.root = root;
    c.limit = max_bytes;
    c.orig = orig;
    c.origin = o;
    int top = lua_gettop(L);
    idx = lua_absindex(L, idx);
    *out = NULL;
    if (!lua_checkstack(L, 8)) return oom_text(&c, "out of memory (Lua stack)");
    if (luaL_getmetatable(L, TJL_ARRAY_MT) == LUA_TTABLE) c.mt = lua_gettop(L);
    int base = lua_gettop(L);
    tj_value *v = NULL;
    int r = conv(&c, idx, &v);
    if (r) {
        /* Again in key order, to report the error that comes first in it. The memo starts
         * empty again: which tables the first pass finished depends on lua_next's order, and a
         * table kept from it would be charged whole where the walk in key order descends into
         * it and names a deeper path (the fuzzer's two states disagreed on exactly that). */
        lua_settop(L, base); /* error paths return with keys and values still pushed */
        c.memo = NULL;
        c.memo_n = c.memo_cap = 0;
        c.sorted = 1;
        c.fatal = 0;
        c.used = 0;
        c.depth = c.npath = 0;
        int again = conv(&c, idx, &v);
        assert(again); /* the same value, walked in another order, fails too */
        if (!again) cfail(&c, "internal error: the second pass did not fail");
    }
    lua_settop(L, top);
    if (r == 0) *out = v;
    assert(!r || c.rc); /* every failure wrote its error */
    return r ? (c.rc ? c.rc : TALLY_EINVAL) : TALLY_OK;
}

int tjl_to_json_at(lua_State *L, int idx, const char *root, tj_arena *a, tj_value **out,
                   tj_error *err)
{
    return tjl_to_json_max(L, idx, root, TJL_MAX_BYTES, NULL, a, out, err);
}

int tjl_to_json(lua_State *L, int idx, tj_arena *a, tj_value **out, tj_error *err)
{
    return tjl_to_json_at(L, idx, NULL, a, out, err);
}

/* ---- the helpers scripts get as `tally.*` (rules sandbox and the Lua module alike) ---- */

static int decode_protected(lua_State *L)
{
    size_t len;
    const char *text = lua_tolstring(L, 1, &len);
    tj_error err;
    if (tjl_decode(L, text, len, &err)) {
        luaL_pushfail(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    return 1;
}

/* Decodes straight into Lua values (tjl_decode): the memory it takes is the caller's Lua memory,
 * under a sandbox's cap. A text whose values do not fit there is refused like bad text. */
int tjl_lua_decode(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TSTRING); /* strictly text: decode(42) is a mistake, not "42" */
    size_t len = lua_rawlen(L, 1);
    lua_settop(L, 1);
    lua_pushcfunction(L, decode_protected);
    lua_pushvalue(L, 1);
    int st = lua_pcall(L, 1, LUA_MULTRET, 0);
    if (st == LUA_ERRMEM) {
        lua_settop(L, 1);
        luaL_pushfail(L);
        lua_pushfstring(L, "too large: the %I-byte text does not fit in this Lua state's memory limit",
                        (lua_Integer)len);
        return 2;
    }
    if (st != LUA_OK) return lua_error(L);
    return lua_gettop(L) - 1;
}

int tjl_lua_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    tj_arena **box = push_arena_box(L);
    if (!*box) return luaL_error(L, "out of memory");
    tj_value *v;
    tj_error err;
    tbuf b = TBUF_INIT;
    int bad = tjl_to_json(L, 1, *box, &v, &err);
    if (!bad && (tj_write(&b, v) || b.oom)) {
        bad = 1;
        snprintf(err.msg, sizeof err.msg, "out of memory");
    }
    if (bad) {
        tbuf_free(&b);
        luaL_pushfail(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    /* lua_pushlstring may raise: keep the text in a buffer Lua owns first */
    luaL_Buffer lb;
    luaL_buffinit(L, &lb);
    luaL_addlstring(&lb, b.data, b.len);
    tbuf_free(&b);
    luaL_pushresult(&lb);
    return 1;
}

/* tally.array(t) tags t (replacing any metatable) so it is written as a JSON array even when
 * empty; tally.array() returns a new empty one. */
static int lua_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    tjl_set_array(L, -1);
    return 1;
}

void tjl_set_helpers(lua_State *L, const char *version)
{
    tjl_init(L);
    tjl_push_null(L);
    lua_setfield(L, -2, "null");
    tjl_push_empty_array(L);
    lua_setfield(L, -2, "empty_array");
    lua_pushcfunction(L, lua_array);
    lua_setfield(L, -2, "array");
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, tjl_lua_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, tjl_lua_decode);
    lua_setfield(L, -2, "decode");
    lua_setfield(L, -2, "json");
    lua_pushstring(L, version);
    lua_setfield(L, -2, "version");
}
