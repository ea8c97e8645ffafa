/* Destinations: where stamped messages go. Each is a small vtable so the worker treats a file, a
 * local SQLite table and an HTTP collector alike: it hands a batch and learns the outcome. */
#ifndef TALLY_DEST_H
#define TALLY_DEST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "internal.h"
#include "json.h"

/* A batch of serialized messages, one per line ("\n"-terminated) in `data`; message i spans
 * data[off[i]] .. data[off[i+1]-2] (off has n+1 entries). Where its messages lie in the store is
 * the store's business (store_cursor): the worker keeps the two side by side. */
typedef struct dest_batch {
    tbuf    data;
    size_t *off;
    size_t  n, cap;
} dest_batch;

int  batch_add(dest_batch *b, const char *json, size_t len); /* TALLY_OK, or TALLY_ENOMEM */
void batch_clear(dest_batch *b);       /* no messages */
void batch_free(dest_batch *b);

enum dest_result { DEST_OK = 0, DEST_RETRY = 1, DEST_FAIL = 2 };

/* How a delivery ended: the worker turns it into an ack, a retry with backoff, or dead letters. */
typedef struct dest_outcome {
    int     result;          /* enum dest_result */
    int     status;          /* HTTP status; 0 when there was none */
    int64_t retry_after_ms;  /* the server's Retry-After, 0 when absent */
    char    reason[256];     /* for the log and the dead-letter table; never holds the write key */
} dest_outcome;

/* What a destination may take from the top-level configuration when its own object is silent. */
typedef struct dest_env {
    const char *write_key;
    const char *ca_bundle;
    const char *proxy;
    int         gzip;
    int         timeout_ms;
    int         in_flight;   /* batches the worker may hand over before the first one finishes */
    void       *multi;       /* the runtime's CURLM *: transfers run on the worker's event loop */
} dest_env;

typedef struct dest dest;
typedef struct dest_ops {
    const char *type;
    /* Reads the destination's keys from cfg (a JSON object); TALLY_OK or fails naming the key in err. */
    int  (*open)(dest *d, const tj_value *cfg, const dest_env *env, tly_err *err);
    /* Starts delivering b. A synchronous destination finishes here: returns 1 with *out filled.
     * An asynchronous one returns 0 with *handle set to the transfer, and the worker calls
     * finish() with that handle when it completes; b stays untouched until then. Up to
     * dest_env.in_flight transfers of one destination may be under way at once. */
    int  (*submit)(dest *d, const dest_batch *b, dest_outcome *out, void **handle);
    /* Asynchronous destinations only: the transfer `handle` ended with curl code `code`. */
    void (*finish)(dest *d, void *handle, int code, dest_outcome *out);
    /* Makes everything delivered so far durable (fsync for files); TALLY_OK or TALLY_EIO (logged). */
    int  (*sync)(dest *d);
    void (*close)(dest *d);
} dest_ops;

struct dest {
    const dest_ops   *ops;
    char              name[128];  /* "file:events.ndjson": logs, stats, the store's key */
    const tly_logger *log;
    void             *impl;
    _Atomic uint64_t  delivered, failed, retried, batches; /* read by tally_stats on any thread */
    _Atomic uint64_t  consent_withheld, consent_purged;   /* messages consent kept from it */
};

/* Opens a destination from its JSON config object: TALLY_OK, or a code with err naming the key (an
 * unknown type names the type). */
int  dest_open(dest *d, const char *json_cfg, const dest_env *env, const tly_logger *log, tly_err *err);
void dest_close(dest *d);
void dest_outcome_set(dest_outcome *o, int result, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

extern const dest_ops dest_file_ops;
extern const dest_ops dest_sqlite_ops;
extern const dest_ops dest_segment_ops;
extern const dest_ops dest_http_ops;

#endif
