/* The processor thread: intake record -> identity -> stamped, checked message -> rules ->
 * destination mappings -> serialized rows, handed to the worker thread (rowq.h), which stores
 * and delivers them. Two threads so that rules and SQLite use two cores. */
#ifndef TALLY_PROCESSOR_H
#define TALLY_PROCESSOR_H

#include "runtime.h"
#include "store.h"

/* Loads the rules, resolves destination mappings and loads the identity from st (before any
 * thread runs). TALLY_OK or an error with errmsg set. */
int  processor_open(tally_t *t, store *st);
void *processor_main(void *t);      /* the thread's body (worker.c starts it) */
void processor_join(tally_t *t);    /* after stop: waits until it has handed everything over */
void processor_free(tally_t *t);

#endif
