/* Remote rules (README "Shipping rules", docs/bundles.md "At runtime"): the worker thread polls
 * `rules_url` for a signed bundle, verifies it against the keys of `rules_public_key`, refuses any
 * version not above the highest it ever accepted, loads it into a fresh sandbox, runs its
 * self-tests there, keeps its bytes in the store, and only then hands the loaded rule set to the
 * processor, which swaps it in between two messages (rules_remote_take). No script of a bundle is
 * run before its signature held.
 *
 * Threads: everything here runs on the worker (it owns the store and the curl multi handle),
 * except rules_remote_take (the processor), rules_remote_stats (any thread: atomics only) and
 * rules_remote_keys (any thread, no state). */
#ifndef TALLY_RULES_REMOTE_H
#define TALLY_RULES_REMOTE_H

#include <stdint.h>

#include "bundle.h"
#include "rules.h"

struct tally;
struct store;
typedef struct rules_remote rules_remote;

/* Parses rules_public_key: one key "ed25519:<base64>" or a JSON array of them, into k (NULL:
 * only checks). TALLY_OK, or TALLY_ECONFIG naming rules_public_key, TALLY_ENOMEM. */
int rules_remote_keys(const char *text, bundle_keys *k, tly_err *err);

/* A loaded rule set on its way from the worker to the processor. A canary runs beside the active
 * set, for the identities rules_remote_in_canary picks, until the processor judges it (below). */
typedef struct rules_swap {
    rules  *R;
    int64_t version;
    int     canary;
    rules **more;   /* rule_threads - 1 more copies of R in server mode, one per further rule state */
    size_t  nmore;
} rules_swap;
/* Frees the struct and its `more` array, not the rule sets (the processor took them)... */
void rules_swap_free(rules_swap *s);
/* ...or everything, the sets too (a swap replaced or never taken). NULL is fine for both. */
void rules_swap_discard(rules_swap *s);

/* Made by worker_open when rules_url is set: reads the last good bundle from the store, verifies
 * it again and, when it holds, offers it (t->rules_next) so that processor_open starts with it,
 * offline included. A stored bundle that no longer verifies is logged and left unused. TALLY_OK,
 * or TALLY_ECONFIG (keys) / TALLY_ENOMEM. */
int  rules_remote_open(struct tally *t, struct store *st, rules_remote **out, tly_err *err);
/* After the threads stopped; frees a rule set offered and never taken. NULL is fine. */
void rules_remote_free(struct tally *t, rules_remote *r);

/* The worker's loop: starts a poll when one is due (a transfer on the multi handle). */
void    rules_remote_tick(rules_remote *r, int64_t now_mono);
/* The monotonic time of the next poll, for the worker's sleep (INT64_MAX while one runs). */
int64_t rules_remote_next(const rules_remote *r);
/* Whether easy is this module's transfer; if so, handles its end (curl's result) and returns 1. */
int     rules_remote_finished(rules_remote *r, void *easy, int curl_result);

/* The processor, between two messages: the rule set to swap in, or NULL (cheap: one atomic
 * load). The caller owns the result (rules and the struct, free()). */
rules_swap *rules_remote_take(struct tally *t);

/* The canary (rules_canary): 1 when message m's identity (userId, else anonymousId) is in the
 * fraction that runs the canary, by a hash of it, so an identity stays on one side; else 0. */
int  rules_remote_in_canary(double fraction, const tj_value *m);
/* The processor's verdict on canary `version`: promoted (it replaced the active set) or rolled
 * back (freed). The worker keeps the bundle or refuses that version from then on. */
void rules_remote_verdict(struct tally *t, int64_t version, int promoted);

/* ,"rules_remote":{...} for tally_stats: the active version and a counter per poll result. */
void rules_remote_stats(const rules_remote *r, tbuf *b);

#endif
