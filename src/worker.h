/* The worker thread: rows from the processor (rowq.h) -> the store -> batches -> destinations,
 * with retries, dead letters and the flush requests (requests.h). The only thread that touches
 * the store and the network once the runtime (runtime.c) has started it. */
#ifndef TALLY_WORKER_H
#define TALLY_WORKER_H

#include "runtime.h"

/* Its state, and each destination's place in the store (t->store and t->dests are open): rows an
 * earlier run left go out at once, and rows for names not configured now are reported. Before the
 * threads start. TALLY_OK or an error in err; worker_free frees what it made either way. */
int   worker_open(tally_t *t, tly_err *err);
void *worker_main(void *t);    /* the thread's body (runtime.c starts it) */
void  worker_free(tally_t *t); /* after the thread stopped, or when it never started */

#endif
