/*
 * tally.h: the public C API of tally, a scriptable analytics runtime.
 *
 * This is the only header an application includes. Every handle is opaque; every function that can
 * fail returns an int status: TALLY_OK (0) on success or a negative TALLY_E* code. The text of the
 * last failure on the calling thread is tally_errmsg(); a fixed description of a code is
 * tally_strerror(). Error text names the field and the limit ("properties: nesting deeper than 64
 * at offset 130"), and never contains the write key.
 *
 * Threads. A tally_config is a plain value: use one from one thread at a time. A tally_t handle is
 * safe to share: every call except tally_close() may be made from any thread concurrently. The
 * calls that enqueue messages (tally_track ... tally_send, tally_reset) never block: they validate,
 * copy into a bounded in-memory queue and return; two background threads per handle do the rest
 * (one IDs and rules, the other storage and delivery). Only tally_flush() and tally_close() wait, each for at most its
 * timeout.
 *
 * Strings are UTF-8 and NUL-terminated. JSON arguments are text; NULL means "absent". Nothing the
 * caller passes is retained: the library copies what it needs before returning.
 *
 * Fork: a handle belongs to the process that opened it. In a child after fork() every call returns
 * TALLY_EFORK; open a new handle there.
 *
 * Misuse. A NULL handle, config or out-pointer is refused with TALLY_EINVAL (tally_close(NULL),
 * tally_config_free(NULL) and tally_free(NULL) are no-ops). A handle passed to tally_close() is
 * freed memory from then on: using it again, closing it twice, or calling it while tally_close()
 * runs is undefined behaviour (C cannot detect a freed pointer safely); set your pointer to NULL.
 * Timeouts: 0 means "do not wait" (the call returns TALLY_ETIMEDOUT unless the background threads
 * had already answered, even when nothing was pending), any negative value means "no limit".
 */
#ifndef TALLY_H
#define TALLY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TALLY_API __attribute__((visibility("default")))
#else
#define TALLY_API
#endif

#define TALLY_VERSION "0.1.0"
#define TALLY_VERSION_NUM 100 /* major * 10000 + minor * 100 + patch */

/* ---- status codes (stable: never renumbered) ---- */
#define TALLY_OK         0
#define TALLY_EINVAL    -1  /* bad argument or message (field and limit in tally_errmsg) */
#define TALLY_ENOMEM    -2  /* out of memory */
#define TALLY_EFULL     -3  /* queue full and on_full = drop_newest: this message was not accepted */
#define TALLY_ETIMEDOUT -4  /* flush/close: the timeout passed before everything was delivered */
#define TALLY_ECLOSED   -5  /* the handle is closing */
#define TALLY_EFORK     -6  /* the handle was opened by another process (we are a fork child) */
#define TALLY_ECONFIG   -7  /* unknown configuration key or bad value */
#define TALLY_EIO       -8  /* a file, store or destination could not be opened or written */
#define TALLY_ETOOBIG   -9  /* message larger than 32 KB as written, once stamped (ids, timestamp, context) */
#define TALLY_ELUA     -10  /* a Lua script (config file or rule) failed to load or run */

#define TALLY_MAX_MESSAGE_BYTES 32768
#define TALLY_MAX_MESSAGE_ID_BYTES 128 /* a messageId the caller gives: 1-128 bytes, not blank, no control characters */

typedef struct tally_config tally_config;
typedef struct tally tally_t;

/* Log levels, as passed to a log callback. */
#define TALLY_LOG_ERROR 0
#define TALLY_LOG_WARN  1
#define TALLY_LOG_INFO  2
#define TALLY_LOG_DEBUG 3

/* Receives the runtime's log lines (already filtered by log_level). Called from the background
 * threads or from the thread of the call that logs, possibly at the same time: it must be
 * thread-safe. `msg` is valid only during the call. Calling back into tally from it: the calls
 * that never block (tally_track ... tally_session_start, tally_errmsg, tally_strerror) work; the
 * calls that wait for the background threads (tally_flush, tally_reload, tally_stats,
 * tally_identity, tally_close) return TALLY_EINVAL at once, leaving the handle open, since the
 * thread that logs may be the one they would wait for. */
typedef void (*tally_log_fn)(void *userdata, int level, const char *msg);

/* ---- configuration ---- */

/* Returns a new configuration with every key at its default, or NULL when out of memory.
 * The caller owns it and frees it with tally_config_free(). Any thread; not shared. */
TALLY_API tally_config *tally_config_new(void);

/* Sets one key from its text form. Keys and values are documented in README.md ("Configuration").
 * Numbers are decimal text, booleans "true"/"false", `destinations` a JSON array of objects.
 * Setting a key twice keeps the last value; `out`, `endpoint` and `destinations` add up.
 * A key may be spelt in camelCase ("flushAt") or by Segment's option name ("host", "flushInterval",
 * "httpRequestTimeout", "maxEventsInBatch"); it then sets the snake_case key it names.
 * Returns TALLY_OK, TALLY_ECONFIG for an unknown key (errmsg suggests the nearest key) or a bad
 * value (errmsg names both; URL keys are parsed as libcurl will: "endpoint: 'http://': no host"),
 * TALLY_EINVAL for NULL arguments, TALLY_ENOMEM. Copies key and value. */
TALLY_API int tally_config_set(tally_config *cfg, const char *key, const char *value);

/* Runs a Lua config file (sandboxed: no io, no os.execute) that returns a table of the same keys,
 * and sets each, all or nothing: on any error cfg is left exactly as it was. The file, and whatever it requires or loads with tally.load_json from its folder,
 * must be a regular file, not a symlink (the folder itself may be one): a FIFO or link is refused
 * with TALLY_EIO (the file) or TALLY_ELUA (what it loads), without blocking.
 * Returns TALLY_OK, TALLY_ELUA (load or run error), TALLY_ECONFIG, TALLY_EIO. */
TALLY_API int tally_config_load(tally_config *cfg, const char *path);

/* Routes log lines to `fn` instead of stderr (NULL restores stderr). */
TALLY_API int tally_config_set_logger(tally_config *cfg, tally_log_fn fn, void *userdata);

/* Frees a configuration. NULL is a no-op. Handles opened from it are unaffected. */
TALLY_API void tally_config_free(tally_config *cfg);

/* ---- lifecycle ---- */

/* Opens a runtime from `cfg` (NULL: all defaults, plus TALLY_WRITE_KEY / TALLY_ENDPOINT from the
 * environment when those keys are not set). Starts the two background threads, opens the store
 * and the destinations. On success *out owns the handle and `cfg` may be freed at once.
 * Returns TALLY_OK, TALLY_ECONFIG, TALLY_EIO, TALLY_ELUA, TALLY_ENOMEM; *out is NULL on failure
 * and tally_errmsg(NULL) says why. A failed open releases everything it acquired (no thread,
 * descriptor, store lock or memory is left). Any thread. */
TALLY_API int tally_open(const tally_config *cfg, tally_t **out);

/* Flushes for up to timeout_ms (0: do not wait, <0: wait without limit), stops the background
 * threads and frees the handle. What was not delivered in time stays in the store for the next
 * open (with a ":memory:" store it is lost, and the count is logged). Returns TALLY_OK when everything was
 * delivered, TALLY_ETIMEDOUT otherwise (TALLY_EIO when the store cannot write: what it held is
 * then lost, counted as store_given_up and logged); the handle is freed either way. NULL is a no-op.
 * Must not run concurrently with other calls on the same handle: the caller stops using it first. */
TALLY_API int tally_close(tally_t *t, int timeout_ms);

/* ---- messages (any thread, never block) ----
 * Each validates its arguments, copies them, and returns. TALLY_OK means accepted: the message is
 * in the queue and will be stamped (messageId, timestamp, ids, context.library) and run through the
 * rules by the processor thread, and stored by the worker thread. Other results: TALLY_EINVAL /
 * TALLY_ETOOBIG (nothing queued, errmsg names the field), TALLY_EFULL (queue full under
 * drop_newest; counted in stats), TALLY_ECLOSED, TALLY_EFORK. `*_json` arguments must be JSON
 * objects or NULL. */

/* A `track` event: `event` is required and non-empty. */
TALLY_API int tally_track(tally_t *t, const char *event, const char *properties_json);

/* Login: sets the user id for this and later messages (the anonymous id keeps flowing). `user_id`
 * may be NULL to attach traits to the anonymous user. */
TALLY_API int tally_identify(tally_t *t, const char *user_id, const char *traits_json);

/* A page view. `category` and `name` may be NULL. */
TALLY_API int tally_page(tally_t *t, const char *category, const char *name, const char *properties_json);

/* A mobile/game screen view. `name` may be NULL. */
TALLY_API int tally_screen(tally_t *t, const char *name, const char *properties_json);

/* Associates the user with a group; `group_id` is required. */
TALLY_API int tally_group(tally_t *t, const char *group_id, const char *traits_json);

/* Merges two identities: `user_id` is required; `previous_id` NULL means the current anonymous id. */
TALLY_API int tally_alias(tally_t *t, const char *user_id, const char *previous_id);

/* A whole Segment Spec message as JSON text (`type` required: track, identify, page, screen,
 * group, alias). Fields the caller gives are kept exactly (messageId, timestamp, context, ...);
 * missing ones are stamped. The server-style entry point: each message names its own ids. */
TALLY_API int tally_send(tally_t *t, const char *message_json);

/* Logout: clears the user id and traits, issues a new anonymous id and a new session. Applies in
 * order: messages enqueued before it keep the old identity. Never blocks. */
TALLY_API int tally_reset(tally_t *t);

/* Starts a new session now (a new context.session.id, index + 1) for this and later messages;
 * sessions also start on their own after session_timeout_s idle and at tally_reset. Never blocks. */
TALLY_API int tally_session_start(tally_t *t);

/* Consent: merges `json`, an object of category id -> true/false ({"analytics":true,
 * "advertising":false}), into the device's preferences, or opts out with the text `false` (every
 * category known, set before or named by a destination, becomes false). Applies in order, like
 * tally_reset: messages enqueued before the call carry the old preferences, later ones the new, in
 * context.consent.categoryPreferences (a message that has its own keeps it). A destination with
 * "consent" categories gets a message only when each of them is true in its preferences; revoking
 * one deletes that destination's queued and dead-lettered messages; preferences all false (at
 * least one category) are an opt-out: nothing new is kept or sent, everything queued is deleted,
 * and calls still return TALLY_OK (counted as opted_out in tally_stats) until a category is true
 * again. The preferences are kept in the store and survive a restart. README "Privacy".
 * Limits: `json` at most 4096 bytes, at most 64 categories (after merging), ids 1 to 64 bytes.
 * Returns TALLY_OK, TALLY_EINVAL (NULL, not an object of booleans, over a limit, server mode: the
 * preferences are left as they were), TALLY_EFULL, TALLY_ECLOSED, TALLY_EFORK, TALLY_ENOMEM.
 * Any thread; copies `json`; never blocks on the background threads. */
TALLY_API int tally_consent(tally_t *t, const char *json);

/* ---- waiting and introspection ---- */

/* Loads the configured rules again (after editing the scripts) and swaps them in between two
 * messages: everything enqueued before the call runs through the old rules, everything after
 * through the new ones; nothing queued is lost. If any script fails to load, the running rules
 * stay and TALLY_ELUA names the script and line. Waits at most timeout_ms for the processor
 * thread. Returns TALLY_OK, TALLY_ELUA, TALLY_ECONFIG (no rules configured, or a remote bundle
 * from rules_url is active: it replaces the local rules, README "Shipping rules"), TALLY_ETIMEDOUT.
 * Any thread. */
TALLY_API int tally_reload(tally_t *t, int timeout_ms);

/* Waits until every message accepted (on any thread) before this call has been delivered by every
 * destination (or dead-lettered), for at most timeout_ms (<0: no limit). Returns TALLY_OK or
 * TALLY_ETIMEDOUT (nothing is lost: delivery goes on in the background), or TALLY_EIO when the
 * store cannot write (disk full): messages are held in memory, and stored and delivered once it
 * can. Any thread; blocks. */
TALLY_API int tally_flush(tally_t *t, int timeout_ms);

/* Erasure on the device (GDPR art. 17 and the like): removes every message queued, held or
 * dead-lettered for any destination whose top-level "userId" or "anonymousId" is `id` (a chunk
 * of several messages is rewritten without them), and *erased (may be NULL) gets their number.
 * In order with the calls: everything accepted before it is covered, wherever it is (intake,
 * processor, rows not yet stored). When `id` is the device's current anonymous or user id, the
 * identity is reset as by tally_reset, so later messages do not carry it. The bytes are
 * overwritten: the store file is rebuilt and its WAL truncated (README, "Privacy"). A batch that
 * was already on its way to a destination may still arrive; it is not sent again. Messages whose
 * destination mapping renamed both fields are not found. `id` is copied; the caller keeps it.
 * Waits (at most 30 s) for the threads. Any thread; blocks. Returns TALLY_OK, TALLY_EINVAL (id
 * NULL, empty or over TALLY_MAX_MESSAGE_BYTES: nothing altered), TALLY_EIO (the store cannot
 * write, e.g. a full disk: the id's messages held in memory until it can are erased, so they are
 * never stored or sent, but the stored ones are not and *erased is 0: call again once it writes),
 * TALLY_ETIMEDOUT, TALLY_ENOMEM, TALLY_ECLOSED, TALLY_EFORK. */
TALLY_API int tally_forget(tally_t *t, const char *id, size_t *erased);

/* Counters as a JSON object (accepted, rejected, dropped, delivered, failed, queue sizes, per
 * destination; every reason a message can be given up has its counter: README, "what can be lost";
 * with rules_url, "rules_remote": the active bundle's version and a count per poll result, README
 * "Shipping rules"). *json_out is malloc'd: free it with tally_free(). Any thread, does not block on
 * the background threads. Returns TALLY_OK, TALLY_EINVAL, TALLY_ENOMEM. */
TALLY_API int tally_stats(tally_t *t, char **json_out);

/* The device's current identity as a JSON object: {"anonymousId", "userId" (when logged in),
 * "session": {"id", "index", "started_at"}}; "{}" in server mode. It reflects the calls the
 * processor thread has applied: after tally_flush() it includes every earlier call of this thread.
 * *json_out is malloc'd: free it with tally_free(). Any thread; does not wait for the processor. */
TALLY_API int tally_identity(tally_t *t, char **json_out);

/* Frees memory returned by tally (tally_stats, tally_identity). NULL is a no-op. */
TALLY_API void tally_free(void *p);

/* A fixed English description of a status code ("invalid argument", ...). Never NULL. */
TALLY_API const char *tally_strerror(int rc);

/* The text of the last failure of a tally call on the calling thread (t may be NULL, e.g. after a
 * failed tally_open). Valid until the next tally call on this thread. Never NULL ("" if none). */
TALLY_API const char *tally_errmsg(const tally_t *t);

/* The library's version, e.g. "0.1.0". */
TALLY_API const char *tally_version(void);

/* ---- Lua hosts ----
 * For a C/C++ program that embeds its own Lua 5.4 (a game running mods, say). Defined in
 * libtally_lua.a, which is compiled against the host's Lua headers (Debian: lua5.4) and links with
 * libtally: cc game.o libtally_lua.a -ltally -llua5.4 (or libtally.a plus -lcurl -lsqlite3 -lz -lm
 * -lpthread -ldl). libtally's own Lua is private, so the two never mix. Plain Lua programs use the
 * `tally` module (tally.so, `require "tally"`) instead, which also offers the same tables via
 * t:mod(name, version, max_events_per_second). */
struct lua_State;

/* Pushes onto L's stack a table bound to the runtime `t`, for one mod: scripts in L call
 * tally.track(event, props[, opts]), tally.page(name, props[, opts]), tally.screen(name, props
 * [, opts]), tally.group(groupId, traits[, opts]), tally.send(message) (dot or colon calls), plus
 * tally.session() (the current ids), tally.stats() (this table's own counters: accepted, rejected,
 * rate_limited), tally.null, tally.empty_array, tally.array(t), tally.json and tally.version.
 * Calls return true, or nil and an error text; wrong argument types raise Lua errors.
 *
 * Every message sent through the table carries context.mod = {"name": mod_name, "version":
 * mod_version} (replacing any context.mod the script set; "version" is left out when mod_version
 * is NULL). Identity belongs to the host: the table has no identify, alias, reset, flush or close,
 * and tally.send refuses identify and alias messages.
 *
 * Rate limit: a token bucket of max_events_per_second with a burst of twice that (at least 1).
 * Over it, calls return nil, "rate limited (mod NAME: N events/s)", enqueue nothing and count in
 * stats().rate_limited. max_events_per_second 0 (or +inf) means no limit.
 *
 * mod_name (1 to 255 bytes) and mod_version (NULL or up to 255 bytes) must be valid UTF-8; both are
 * copied. Returns TALLY_OK with the table on top of the stack, or TALLY_EINVAL (NULL L, t or
 * mod_name, bad lengths or UTF-8, max_events_per_second negative or NaN) with nothing pushed and
 * tally_errmsg() left as it was. Like any Lua API call that allocates, it raises a Lua error when L
 * runs out of memory.
 *
 * Ownership: `t` is borrowed, never closed by the table (collecting it does not touch `t`). Keep
 * `t` open while code in L may still call the table: lua_close(L) (or stop running its scripts)
 * before tally_close(t).
 *
 * Threads: the table belongs to L and must be used from whichever thread runs L, as L itself. Each
 * call makes its own table with its own bucket and counters, so one state per mod on different
 * threads, all bound to the same `t`, is fine: the runtime is thread-safe and the calls never block.
 */
TALLY_API int tally_lua_push_mod(struct lua_State *L, tally_t *t, const char *mod_name,
                                 const char *mod_version, double max_events_per_second);

#ifdef __cplusplus
}
#endif
#endif /* TALLY_H */
