/* The Lua sandbox: one Lua 5.4 state owned by the processor thread, in which untrusted rule scripts
 * run.
 *
 * It is a security boundary (game mods are untrusted code), built from three fences:
 *  - what a script can reach: each script gets its own _ENV holding copies of the safe parts of the
 *    standard library (no io, debug, package, dofile, loadfile, string.dump, binary chunks; os only
 *    time/clock/date/difftime; `require` only bundled tally.* modules and the rule folders);
 *  - how much memory all scripts together may hold: our allocator refuses past the cap;
 *  - how long one call may run: a count hook installed at state creation (so it is inherited by
 *    every coroutine) charges instructions against a per-call budget, and once the budget is spent
 *    it fires on every instruction, so a script that catches the error with pcall is stopped again
 *    at its very next instruction until the error reaches us. */
#ifndef TALLY_SANDBOX_H
#define TALLY_SANDBOX_H

#include <lua.h>
#include <stddef.h>

#include "internal.h"

typedef struct sandbox sandbox;

typedef struct sb_limits {
    size_t max_memory;        /* bytes for the whole state */
    long   max_instructions;  /* per sb_call */
} sb_limits;

/* dirs: NULL-terminated list of folders `require` and tally.load_json may read (the rule folders). */
sandbox   *sb_new(const sb_limits *lim, const char *const *dirs, const tly_logger *log);
void       sb_free(sandbox *sb);
lua_State *sb_state(sandbox *sb);
/* Memory is counted per script: sb_script_new makes a slot and gives its index in *script
 * (TALLY_OK, or TALLY_ENOMEM; slot 0 is the host's share: libraries and the messages pushed in);
 * sb_enter makes `script` the one charged for what is allocated or grown
 * from now on, and returns the previous one. A script's blocks are given back to it when freed. */
void   sb_set_script_limit(sandbox *sb, size_t bytes); /* bytes one script may hold; 0: none of its own */
int    sb_script_new(sandbox *sb, int *script);
int    sb_enter(sandbox *sb, int script);
size_t sb_script_memory(const sandbox *sb, int script);  /* bytes held now; any thread */
/* Has `script` (or anything running as the host's share) ever called setmetatable with a
 * metatable other than the array tag, or had getmetatable return a table (its ctx's, which it
 * could arm)? Sticky: a script keeps references to its tables and metatables, so it can arm one
 * later. The only other metatable on tables a script can reach is the array tag (tally.array,
 * tally.json.decode, load_json), which no script can read or change. */
int    sb_script_set_metatables(const sandbox *sb, int script);
/* A full collection when the running script holds more than 3/4 of its limit (after its call). */
void   sb_collect_if_near_limit(sandbox *sb);

/* print() asks gate(ud, TALLY_LOG_INFO) before writing a line: 0 means not now (rate limits). */
void       sb_set_log_gate(sandbox *sb, int (*gate)(void *ud, int level), void *ud);

/* Loads a script file (text only) into a fresh environment and runs it under the limits; on
 * success pushes its return value. TALLY_OK, or TALLY_ELUA whatever kept the script from loading
 * (unreadable, binary, an error, a limit), with err saying what ("rules/a.lua:3: ..."). */
int sb_load_file(sandbox *sb, const char *path, tly_err *err);

/* lua_pcall under the instruction budget, with the error message (and its script:line) in err.
 * TALLY_OK; TALLY_ENOMEM when Lua ran out of memory (the limit, named in err); TALLY_ELUA for
 * any other error, the instruction limit included. */
int sb_call(sandbox *sb, int nargs, int nresults, tly_err *err);

/* Runs fn(ud, args...) protected, under the limits of sb_call, discarding its results: every
 * use of the Lua API on values a script controls (its tables may have metamethods, and any
 * allocation can meet the memory limit) must run this way, since an error raised outside a
 * protected call aborts the process. Pops the nargs arguments. Returns as sb_call does. */
int sb_protect(sandbox *sb, lua_CFunction fn, void *ud, int nargs, tly_err *err);

/* Deterministic sampling shared by ctx:sample and the sample module: FNV-1a of key. */
int sb_sample(double rate, const char *key, size_t len);

#endif
