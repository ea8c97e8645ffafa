/* Rules: user Lua scripts that change tracking without recompiling. Each script returns a plugin
 * table (name, stage, types, on_error, process or map); see docs/rules.md for the contract.
 *
 * Stages run in this order: "before" scripts (fail closed: on_error defaults to "drop"), then
 * "enrichment" scripts (fail open: "pass"), each in load order; "destination" scripts are mappings
 * a destination names with "mapping": they turn a message into that destination's payloads. */
#ifndef TALLY_RULES_H
#define TALLY_RULES_H

#include <stdatomic.h>
#include <stddef.h>

#include "internal.h"
#include "json.h"

enum { STAGE_BEFORE, STAGE_ENRICHMENT, STAGE_DESTINATION };

/* Limits on what scripts produce (README.md, "Limits"). */
#define RULES_LOG_LINES_PER_SECOND 50 /* ctx:log and print lines, per rule */
#define RULES_MAX_PARTS 100           /* messages one message may become (splits, tally_many payloads) */
#define RULES_MAX_NAME 128            /* bytes of a rule's name */
#define RULES_MAX_VALUES 32768        /* values in one message between rules (a 32 KB message holds fewer) */
#define TALLY_STR_(x) #x
#define TALLY_STR(x) TALLY_STR_(x)

typedef struct rules rules;

typedef struct rules_opts {
    size_t      max_memory;          /* bytes for all scripts together */
    long        max_instructions;    /* per process/map call */
    int         breaker_threshold;   /* consecutive failures that disable a script */
    int         need_id;             /* results must carry userId or anonymousId */
    const char *rule_config;         /* JSON object: rule name -> its ctx.config, or NULL */
    size_t      max_memory_per_script; /* bytes one script may hold; 0: max_memory / (scripts + 1) */
} rules_opts;

/* Why a rule dropped a message, the classes `tally inspect` counts per rule: it chose to (process
 * returned nil), it failed with on_error "drop" (fail closed), or the breaker disabled it and its
 * on_error is "drop". */
enum { RULE_DROP_BY_RULE, RULE_DROP_FAILED_CLOSED, RULE_DROP_DISABLED, RULE_DROP_CLASSES };
extern const char *const rule_drop_class_name[RULE_DROP_CLASSES];

/* What happened to one message, for the caller's logs, counters and `tally check`. */
typedef struct rules_report {
    void (*on_violation)(void *ud, const char *rule, const char *code, const char *text);
    void (*on_error)(void *ud, const char *rule, const char *text);
    void (*on_drop)(void *ud, const char *rule, int drop_class, const char *why); /* RULE_DROP_* */
    void  *ud;
    int    dropped;   /* set when a rule dropped the message (returned nil or failed closed) */
    int    failed;    /* set when any script raised an error */
} rules_report;

/* A growable list of message trees (living in the caller's arena). */
typedef struct msg_list {
    tj_value **v;
    size_t     n, cap;
} msg_list;

/* rules_process and rules_map first make room for RULES_MAX_PARTS messages (the most one message
 * may become), so their pushes cannot fail midway and lose a message; that room stays for the next
 * call. On TALLY_ENOMEM there, the message is logged as dropped and out is empty. */
int  msg_list_reserve(msg_list *l, size_t n); /* TALLY_OK, or TALLY_ENOMEM */
int  msg_list_push(msg_list *l, tj_value *v); /* TALLY_OK, or TALLY_ENOMEM */
void msg_list_free(msg_list *l);

/* Loads the scripts named by spec: a file, a folder (its *.lua files in name order), or a JSON
 * array of files and folders. TALLY_OK, or TALLY_ELUA / TALLY_EIO / TALLY_ECONFIG / TALLY_ENOMEM
 * with err naming the script and line. */
int  rules_open(rules **out, const char *spec, const rules_opts *o, const tly_logger *log, tly_err *err);
void rules_free(rules *R);
size_t rules_count(const rules *R);

/* Runs the before and enrichment stages on m. `out` receives the resulting messages: none
 * (dropped), m itself (possibly changed) or several (split). Never fails: errors go through the
 * report and each script's on_error policy. */
void rules_process(rules *R, tj_arena *a, tj_value *m, int64_t now_ms, msg_list *out, rules_report *rep);

/* The index of the destination-stage script called `name`, or -1. */
int  rules_find_mapping(const rules *R, const char *name);
/* Runs mapping `idx` on m: `out` receives the payloads (none when the mapping skips m). */
void rules_map(rules *R, int idx, tj_arena *a, const tj_value *m, int64_t now_ms, msg_list *out, rules_report *rep);

/* Per-script counters as a JSON array (appended to b); safe from any thread. */
void rules_stats(const rules *R, tbuf *b);
/* The same for copies of one rule set (one per rule state, rule_threads): counts and memory summed,
 * "disabled" when any copy disabled the rule, and "disabled_states" how many did (nsets > 1). */
void rules_stats_sum(const rules *const *sets, size_t nsets, tbuf *b);

#endif
