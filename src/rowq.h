/* The hand-over from the processor thread (stamping, rules, serializing) to the worker thread
 * (store, delivery): a bounded single-producer single-consumer ring of ready rows. Splitting the
 * two lets rules and SQLite run on different cores (bench/README.md).
 *
 * Each slot keeps its buffer from one lap to the next: the processor writes a row straight into
 * the slot and the worker reads it there, so a message costs no malloc on one thread and free on
 * the other (a free of another thread's block takes that thread's arena lock). */
#ifndef TALLY_ROWQ_H
#define TALLY_ROWQ_H

#include <stddef.h>
#include <stdint.h>

/* ROW_RULE_DROPS: data is "rule\0class\0count" (RULE_DROP_* name, decimal): messages that rule
 * dropped since the last such row, for the store's rule_drops table (`tally inspect`). */
/* ROW_CONSENT: data is the device's new consent preferences (JSON text, tally_consent), in order
 * with the messages: the worker keeps them, purges and releases rows by them (consent.h). */
/* ROW_FORGET: data is "seq\0id" (the REQ_FORGET's number, decimal, and the id): erase the id's
 * messages once every row before this one is stored (worker.c). */
enum { ROW_META_SET = -1, ROW_META_DEL = -2, ROW_RULE_DROPS = -3, ROW_CONSENT = -4, ROW_FORGET = -5 };

typedef struct row {
    int      dest;   /* destination index, ROW_META_*: data is "key\0value\0", or ROW_RULE_DROPS */
    uint32_t len;    /* bytes of data (JSON for a destination) */
    char    *data;   /* NUL-terminated; the slot's buffer: valid until rowq_release */
} row;

typedef struct rowq rowq;

rowq *rowq_new(size_t capacity);
void  rowq_free(rowq *q);
/* Producer: a buffer of at least len + 1 bytes in the next slot, waiting while the ring is full;
 * NULL when out of memory. Fill it, then rowq_publish. */
char *rowq_slot(rowq *q, size_t len);
void  rowq_publish(rowq *q, int dest, uint32_t len);
/* Consumer: 1 and the oldest row in *out (left in place), or 0 when empty; rowq_release hands
 * its slot back and wakes a producer waiting for room. */
int   rowq_peek(rowq *q, row *out);
void  rowq_release(rowq *q);
int   rowq_empty(rowq *q);
int   rowq_full(rowq *q);    /* producer: the next slot would wait */

#endif
