/* Bridge between tj_value trees (json.h) and Lua values.
 *
 * Only the public Lua C API is used (written for 5.4, nothing newer than 5.3's API; only 5.4 is
 * tested), and the module keeps no C state: everything shared lives in the Lua registry, so the
 * same source can be compiled once against tally's embedded Lua and once against a host's Lua.
 *
 * Mapping, JSON -> Lua (tjl_push):
 *   null    -> the null sentinel: a light userdata holding NULL (tjl_push_null)
 *   true/false -> booleans
 *   TJ_INT  -> integer subtype (math.type(x) == "integer")
 *   TJ_DOUBLE -> float subtype, even when integral: 1.0 stays 1.0
 *   string  -> string (may contain NULs)
 *   array   -> table 1..n carrying the array metatable (registry["tally.array"], whose __name is
 *              "tally.array"), so [] and emptied arrays are still encoded as arrays later
 *   object  -> plain table (duplicate keys: the last one wins)
 *   TJ_RAW  -> parsed, then pushed like the above
 *
 * Lua -> JSON (tjl_to_json):
 *   null sentinel -> null; empty-array marker (tjl_push_empty_array) -> [] anywhere
 *   boolean; integer -> TJ_INT; float -> TJ_DOUBLE (NaN and +-inf are errors)
 *   string -> TJ_STRING; must be valid UTF-8
 *   table with the array metatable -> array; it must be a sequence 1..n (n may be 0)
 *   untagged table with keys exactly 1..n (n >= 1) -> array
 *   untagged empty table -> {}
 *   table whose keys are all strings -> object, members sorted bytewise by key so the output is
 *     deterministic whatever Lua's hash order
 *   anything else (nil at the top, mixed or non-string keys, sparse integer keys, functions,
 *     userdata, threads, other light userdata, tables nested deeper than TJ_MAX_DEPTH, a table
 *     that contains itself (a cycle)) -> error
 *   A table reached twice without a cycle (t = {a = u, b = u}) is written twice, as JSON has no
 *   references. Each conversion has a byte limit (TJL_MAX_BYTES, or the caller's): the text the
 *   value would take is counted as it is walked, shared tables once per time they are reached, and
 *   the walk stops as soon as the count passes the limit ("...: too large: the JSON text would
 *   exceed the 32768-byte limit"). So neither time nor C memory can grow faster than the limit,
 *   whatever the shape of the table graph (a 40-level DAG would be 2^40 nodes written out).
 *
 * Error messages name the path of the offending value, then the problem, e.g.
 *   "properties.items[2]: NaN is not valid JSON"
 *   "traits.name: invalid UTF-8 at byte 4"          (byte offset inside that string)
 *   "properties.self: cycle: the table contains itself"
 * Array indexes are printed 0-based, JSON-path style (items[2] is Lua's items[3]). Keys that are not
 * identifier-like are printed as ["a key"]. Long paths are shortened in the middle with "...".
 * err->offset is always 0 for Lua conversions.
 *
 * Errors: none of these functions raises a Lua error for bad data, and none calls a metamethod
 * (only raw accesses and lua_next). Lua memory errors can still be raised from inside them, so
 * call them in protected mode (lua_pcall) when that matters; no C memory is leaked when that
 * happens. */
#ifndef TALLY_JSON_LUA_H
#define TALLY_JSON_LUA_H

#include <lua.h>

#include "json.h"
#include "tally.h" /* the TALLY_E* codes returned */

#define TJL_ARRAY_MT "tally.array"  /* registry key and __name of the array metatable */

/* Creates the array metatable in the registry. Idempotent; the other functions call it on demand,
 * so calling it at state creation is only to make the metatable available to scripts early. */
void tjl_init(lua_State *L);

/* Pushes the null sentinel (a light userdata NULL). */
void tjl_push_null(lua_State *L);
/* Pushes the empty-array marker: a light userdata that tjl_to_json encodes as []. */
void tjl_push_empty_array(lua_State *L);
int  tjl_is_null(lua_State *L, int idx);
int  tjl_is_empty_array(lua_State *L, int idx);

/* Gives the table at idx the array metatable (what tjl_push does for arrays), so that it is encoded
 * as an array even when empty. Does nothing if idx is not a table. */
void tjl_set_array(lua_State *L, int idx);
/* 1 if the value at idx is a table carrying the array metatable. */
int  tjl_is_array(lua_State *L, int idx);

/* Steps through the table at idx (an absolute index) for a C walk that does not change it, like
 * lua_next, the loop's body popping the value and leaving the key: *cursor is 0 to start; pushes
 * the next key and value (1), or nothing at the end (0). The embedded Lua keeps the place in
 * *cursor (patches/lua/0012) instead of looking the key up again at every step. */
static inline int tjl_next(lua_State *L, int idx, unsigned *cursor)
{
#ifdef LUA_TALLY_NEXTSLOT
    if (*cursor) lua_pop(L, 1); /* the key the body left */
    return lua_nextslot(L, idx, cursor);
#else
    if (!*cursor) {
        lua_pushnil(L);
        *cursor = 1;
    }
    return lua_next(L, idx);
#endif
}

/* Pushes the value of a JSON text (validated as tj_parse does) straight as Lua values, without a
 * C tree: all memory it takes is the Lua state's, so a sandbox's cap bounds it. Returns TALLY_OK with
 * the value pushed, TALLY_EINVAL with *err (may be NULL) filled for bad text, or TALLY_ENOMEM when
 * the Lua stack cannot grow. May raise a Lua memory error, leaking nothing. */
int tjl_decode(lua_State *L, const char *text, size_t len, tj_error *err);

/* Pushes v as one Lua value. Returns TALLY_OK; TALLY_ENOMEM (nothing pushed) when the Lua stack
 * cannot grow at the start; TALLY_EINVAL (nothing pushed) when a TJ_RAW does not parse, the C side
 * runs out of memory, the stack cannot grow on the way down or the tree is deeper than
 * 4 * TJ_MAX_DEPTH. */
int tjl_push(lua_State *L, const tj_value *v);

/* Where the tables of a pushed message came from, so that converting it back can reuse what no
 * script wrote to. tjl_push_from records every table it makes (up to a few hundred per message;
 * more are simply not recorded) with the node it was made from, and marks it untouched; the
 * embedded Lua (patches/lua/0011) marks a table touched by any store into it or any metatable set
 * on it, and a table a script makes is born touched. tjl_to_json_from then gives back, for a
 * table that is untouched and whose tables below are all untouched, the very node it was pushed
 * from (a TJ_RAW text stays that text: written out byte for byte, as a message no rule changed
 * is), instead of converting it; any other table is converted as tjl_to_json_max does. Against a
 * Lua without that patch (the Lua module's host Lua) nothing is recorded and every table is
 * converted. C memory, owned by the caller, plus a list in the state's registry (keyed by the
 * origin's address) that holds the recorded tables until the next push replaces them; one message
 * at a time: each tjl_push_from forgets the previous one, whose nodes must stay alive until its
 * conversion is done. */
typedef struct tjl_origin tjl_origin;
tjl_origin *tjl_origin_new(void);   /* NULL when out of memory */
void        tjl_origin_free(tjl_origin *o);
/* tjl_push, recording into o (may be NULL: plain tjl_push). */
int tjl_push_from(lua_State *L, const tj_value *v, tjl_origin *o);
/* Same, adding to what o holds (a part of the same message pushed again). */
int tjl_push_more(lua_State *L, const tj_value *v, tjl_origin *o);
/* The node the table at idx was pushed from, when it and every table below it are untouched
 * (see above); NULL otherwise, for a non-table, and against a Lua without the patch. */
const tj_value *tjl_untouched_node(lua_State *L, int idx, const tjl_origin *o);
/* 1 when the table at idx and every table below it are untouched since o recorded them (also
 * tables made inside a TJ_RAW's text, which have no node of their own), with *values the members
 * of all those tables (a key duplicated in the text it came from counts each time, so never fewer
 * than a walk would find) and *height its levels of tables; else 0. Costs a look at each table in
 * it, not a walk of its keys. */
int tjl_untouched_size(lua_State *L, int idx, const tjl_origin *o, long *values, int *height);

#define TJL_MAX_BYTES (1024 * 1024) /* default limit of one Lua -> JSON conversion's text */

/* Converts the Lua value at idx into a tree allocated in a. Returns TALLY_OK with *out set, or with
 * err->msg describing the problem and its path: TALLY_ETOOBIG past the byte limit, TALLY_ENOMEM out
 * of memory, TALLY_EINVAL for a value JSON cannot hold. The Lua stack is left as it was. */
int tjl_to_json(lua_State *L, int idx, tj_arena *a, tj_value **out, tj_error *err);
/* Same, with paths in messages starting at `root` (e.g. "properties" gives
 * "properties.items[2]: ..." and, for the value itself, "properties: ..."). root may be NULL. */
int tjl_to_json_at(lua_State *L, int idx, const char *root, tj_arena *a, tj_value **out,
                   tj_error *err);
/* Same, with the limit on the JSON text given (e.g. TALLY_MAX_MESSAGE_BYTES for a message): the
 * walk stops, with an error naming the limit, once the text would be longer. `orig` (may be NULL)
 * is the tree the Lua value was pushed from: an integer beyond 64 bits there reached Lua as the
 * nearest float, and a float equal to it (the field left alone, or moved) is written with the
 * original digits again, unless two different such integers round to that same float. */
int tjl_to_json_max(lua_State *L, int idx, const char *root, size_t max_bytes, const tj_value *orig,
                    tj_arena *a, tj_value **out, tj_error *err);

/* tjl_to_json_max, reusing the nodes of the message o recorded (see tjl_origin; o may be NULL).
 * The result may share those nodes (a node reached twice is copied, so it stays a tree), so
 * they must outlive it. The byte limit charges a reused node the length of its text (a TJ_RAW)
 * or at least what its writing takes. */
int tjl_to_json_from(lua_State *L, int idx, const char *root, size_t max_bytes, const tj_value *orig,
                     const tjl_origin *o, tj_arena *a, tj_value **out, tj_error *err);

/* Sets, in the table on top of the stack, what scripts know as `tally.*`: null, empty_array,
 * array(t), json.encode/decode (the exact codec: encode returns nil, err for values JSON cannot
 * hold or whose text would exceed TJL_MAX_BYTES; decode nil, err for bad text and for text whose
 * values do not fit in the state's memory limit) and version. Hosts add their own entries next to them. */
void tjl_set_helpers(lua_State *L, const char *version);
int  tjl_lua_encode(lua_State *L);   /* lua_CFunction: tally.json.encode */
int  tjl_lua_decode(lua_State *L);   /* lua_CFunction: tally.json.decode */

#endif
