/* The hand-over from the processor thread (stamping, rules, serializing) to the worker thread
 * (store, delivery): a bounded single-producer single-consumer ring of ready rows. Splitting the
 * two lets rules and SQLite run on different cores (bench/README.md). */
#ifndef TALLY_ROWQ_H
#define TALLY_ROWQ_H

#include <stddef.h>
#include <stdint.h>

enum { ROW_META_SET = -1, ROW_META_DEL = -2 };

typedef struct row {
    int      dest;   /* destination index, or ROW_META_*: data is "key\0value\0" */
    uint32_t len;    /* bytes of JSON (for a destination) */
    char    *data;   /* malloc'd; the consumer owns it after a pop */
} row;

typedef struct rowq rowq;

rowq *rowq_new(size_t capacity);
void  rowq_free(rowq *q);                 /* frees rows still queued */
/* Producer: appends r, waiting while the ring is full. */
void  rowq_push(rowq *q, row r);
/* Consumer: 1 and *out, or 0 when empty. Wakes a producer waiting for room. */
int   rowq_pop(rowq *q, row *out);
int   rowq_empty(rowq *q);
int   rowq_full(rowq *q);    /* producer: the next push would wait */

#endif
