/* The processor thread: intake record -> identity -> stamped, checked message -> rules ->
 * destination mappings -> serialized rows, handed over through the row queue (rowq.h) to the
 * worker thread, which stores and delivers them. Two threads so that rules and SQLite use two
 * cores; the runtime (runtime.c) opens, starts and stops both. With rule_threads > 1 (server
 * mode) the processor runs the rules on several states, the others on threads it starts in
 * processor_open and stops in processor_free (processor.c, "rule states"). */
#ifndef TALLY_PROCESSOR_H
#define TALLY_PROCESSOR_H

#include "runtime.h"

/* Loads the rules, resolves the destinations' mappings (t->dests are open) and loads the identity
 * from t->store, before any thread runs. TALLY_OK or an error in err; processor_free frees what it
 * made either way. */
int   processor_open(tally_t *t, tly_err *err);
void *processor_main(void *t);     /* the thread's body (runtime.c starts it) */
void  processor_free(tally_t *t);  /* after the thread stopped, or when it never started */

#endif
