/* Configuration: one table of keys shared by tally_config_set, Lua config files, the CLI and
 * tally.open{} from Lua, so a key means the same thing everywhere. */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stddef.h>

#include "internal.h"

enum { MODE_CLIENT, MODE_SERVER };
enum { STORE_FULL_DROP_NEWEST, STORE_FULL_DROP_OLDEST, STORE_FULL_BLOCK }; /* store_on_full */
#define TALLY_MAX_RULE_THREADS 16 /* rule_threads: more states than cores buys nothing */
#define MAX_IN_FLIGHT 8 /* the most batches one destination may have out at once */

struct tally_config {
    char  *write_key;
    char  *endpoint;
    char  *store;
    char  *rules;
    int    flush_at;
    int    flush_interval_ms;
    int    max_in_flight;  /* batches out at once per destination */
    size_t max_queue_bytes;
    size_t max_queue_rows;
    int    on_full;
    int    gzip;
    int    timeout_ms;
    int    mode;
    int    log_level;
    char  *ca_bundle;
    char  *proxy;
    int    max_retries;
    int    retry_base_ms;
    int    retry_cap_ms;
    int    commit_interval_ms;
    long long max_store_bytes;
    long long max_store_rows;
    int    store_on_full;
    int    session_timeout_s;
    int    dead_letter_max_age_s; /* dead letters older than this are pruned; 0: kept however old */
    long long dead_letter_max_rows; /* the newest this many are kept; 0: no cap */
    int    context_traits;
    char  *rule_config;    /* JSON object: rule name -> ctx.config */
    long long lua_memory;
    long long lua_memory_per_script; /* 0: lua_memory / (scripts + 1) */
    long long lua_instructions;
    int    rule_breaker;
    int    rule_threads;     /* Lua rule states, each on a thread of its own (server mode; processor.c) */
    int    consent_required; /* messages wait in the store until the first tally_consent */
    int    consent_default;  /* CONSENT_DEFAULT_*: server mode, messages without their own consent */
    char  *rules_url;        /* signed rule bundles are polled from here (rules_remote.c) */
    char  *rules_public_key; /* "ed25519:..." or a JSON array of them */
    int    rules_poll_s;
    long long rules_max_bytes;
    double rules_canary;          /* fraction of identities a new bundle runs for first; 0: off */
    int    rules_canary_messages; /* canary messages before it is judged */
    double rules_canary_margin;   /* how much worse its error-or-drop rate may be */
    char **dests;          /* JSON objects, one per destination, in the order given */
    size_t ndests;
    tally_log_fn log_fn;
    void  *log_ud;
};

void config_defaults(struct tally_config *c);
/* The canonical (static) name of a configuration key, or NULL when there is no such key.
 * Accepts the snake_case name, its camelCase spelling and Segment's option names (host, ...). */
const char *config_key_lookup(const char *name, size_t len);
/* The key (or alias) nearest to a misspelt name, for "did you mean", or NULL. */
const char *config_nearest_key(const char *name, size_t len);
/* Edit distance of two short names (64 when either is over 63 bytes). */
size_t tly_edit_distance(const char *a, size_t al, const char *b, size_t bl);
/* The nearest of names[0..n) to name when it is a plausible typo of it, else NULL. */
const char *tly_nearest(const char *name, size_t len, const char *const *names, size_t n);
/* TALLY_OK when v is a URL libcurl can use (http/https; a proxy may also be socks), else
 * TALLY_ECONFIG with err naming key and what is wrong ("endpoint: 'http://': no host"). */
int  tly_check_url(const char *key, const char *v, int proxy, tly_err *err);
/* Sets one key (any spelling config_key_lookup takes) from its text form: what tally_config_set,
 * config files and tally.open{} do. TALLY_OK, or TALLY_ECONFIG / TALLY_ENOMEM with err naming the key. */
int  config_set(struct tally_config *c, const char *key, const char *v, tly_err *err);
/* Reads a Lua config file onto c, all keys or none (tally_config_load). TALLY_OK, or a code with
 * err naming the file. */
int  config_load(struct tally_config *c, const char *path, tly_err *err);
/* These two fail only for memory (TALLY_ENOMEM), which the caller names in its own words. */
int  config_copy(struct tally_config *dst, const struct tally_config *src);
void config_clear(struct tally_config *c);
int  config_add_dest(struct tally_config *c, const char *json_object);
/* Fills write_key/endpoint from TALLY_WRITE_KEY/TALLY_ENDPOINT when unset. */
int  config_apply_env(struct tally_config *c, tly_err *err);
/* Refuses keys whose values contradict each other (retry_cap_ms < retry_base_ms, ...), naming
 * both keys and values. */
int  config_check_pairs(const struct tally_config *c, tly_err *err);
/* 1 when v is empty or only spaces, tabs and line breaks (a write key that cannot be one). */
int  tly_blank(const char *v);
/* Settles max_store_bytes and store_on_full left unset (-1), which depend on the kind of store. */
void config_store_defaults(struct tally_config *c);
/* Builds the final destination list: explicit ones plus the write_key/endpoint shorthand. */
int  config_resolve_dests(struct tally_config *c, tly_err *err);

#endif
