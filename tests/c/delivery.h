/* Fixtures for the HTTP delivery suites (test_delivery_*.c, test_dead_letters.c): a handle with a
 * segment destination at a test collector, numbered messages to track, what the collector
 * received (parsed) and checks on it, and the dead letters and queue of a store file.
 * Every wait in those suites is on an observable condition (tally_flush with a timeout, the
 * collector's counts, tally_stats); nothing sleeps in place of synchronisation. */
#ifndef TALLY_TEST_DELIVERY_H
#define TALLY_TEST_DELIVERY_H
#include <stddef.h>
#include <stdint.h>

#include "collector.h"
#include "json.h"

#define KEY "wk_test_SECRET_9f8e7d6c"
#define KEY_BASIC "d2tfdGVzdF9TRUNSRVRfOWY4ZTdkNmM6" /* base64(KEY ":"), the Authorization header */
#define SEGMENT_MAX_BATCH (500 * 1024) /* Segment's documented limit for one batch request */

struct tally;

/* A handle with a segment destination at the collector (when c is given; write key KEY) and the
 * store (":memory:" when NULL), logging to the fixtures' capture (tf_logged). Extra key/value
 * pairs end with NULL and override the defaults set here: log_level off, and batches go out only
 * when full or flushed (flush_interval_ms 60000), so request counts are deterministic. */
struct tally *open_http(collector *c, const char *store, ...);

/* Tracks n events "Seq Event" with properties {"seq":first+i,"name":"item-<seq>"[,"pad":"xxx"]}.
 * Returns the number of calls refused (printed), or -1 out of memory. */
int track_seq(struct tally *t, int first, int n, size_t pad);

/* What the collector recorded: GET /received, parsed. */
typedef struct received {
    tj_arena *a;
    tj_value *root;
    tj_value *reqs; /* array of request records, in arrival order */
} received;

int              received_load(collector *c, received *r); /* 0, or -1 with the reason printed */
void             received_free(received *r);
int              jtrue(const tj_value *o, const char *key);    /* o[key] is JSON true */
tj_value        *req_at(const received *r, size_t i);          /* the i-th request, NULL past the end */
size_t           nreqs(const received *r);
size_t           req_nmsgs(const tj_value *req);               /* messages in a request's batch */
const tj_value  *req_msg(const tj_value *req, size_t i);

/* Checks that the accepted requests carry exactly messages first..first+n-1 of track_seq, each
 * once, with the body that was tracked: in order within each request, and, when `in_order`, across
 * requests too (max_in_flight=1; with several batches out at once they may arrive in any order).
 * Returns the number of problems (the first ones printed). check_exact_sequence: not in_order. */
int check_sequence(const received *r, int first, int n, size_t pad, int in_order);
int check_exact_sequence(const received *r, int first, int n, size_t pad);

/* A store file's dead letters: rows, min/max status, every distinct reason (comma-separated into
 * reasons), and the messages still queued. 0, or -1 with the reason printed. */
int     read_dead(const char *path, int64_t *rows, int64_t *status_min, int64_t *status_max, char *reasons,
                  size_t rlen, int64_t *queued);
/* The seq of every dead letter of a store file, in the order they were written: "0,1,2". */
int     dead_seqs(const char *path, char *out, size_t len);
/* Messages queued in a store file (a row holds a chunk of them); -1 when unreadable. */
int64_t count_queued(const char *path);
#endif
