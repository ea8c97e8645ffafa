/* Who the device's user is: the anonymous id (the cookie equivalent), the logged-in user id and
 * traits, and the current session. Owned by the processor thread; persisted in the store's meta
 * table in the same transactions as the messages it stamps (the worker writes both, in order), so
 * identity and messages never disagree after a crash. */
#ifndef TALLY_IDENTITY_H
#define TALLY_IDENTITY_H

#include <stdint.h>

#include "message.h"
#include "store.h"

/* Where changes are written: a sink that queues them for the worker, in order with the messages
 * they stamp, so that they land in the store in the same transactions. */
typedef struct meta_sink {
    void (*set)(void *ud, const char *key, const char *value); /* value NULL deletes */
    void  *ud;
} meta_sink;

typedef struct identity {
    char    anonymous_id[37];
    char   *user_id;            /* NULL when logged out */
    char   *traits;             /* merged identify traits as a JSON object text, or NULL */
    char    session_id[37];
    int64_t session_index;      /* 1 for the device's first session */
    int64_t session_started_ms; /* wall clock */
    int64_t last_seen_mono;     /* monotonic ms of the last message in this run; 0: none yet */
    int64_t last_seen_wall;     /* wall ms of the last message, for continuing across restarts */
    int64_t saved_wall;         /* last_seen_wall as last written to the store */
    int64_t timeout_ms;         /* idle time that ends a session */
    int     changed;            /* set by identity_apply when ids or session changed */
} identity;

/* Loads (or creates and persists) the identity. TALLY_OK, or TALLY_EIO with err saying so. */
int  identity_load(identity *id, store *s, int64_t timeout_ms, int64_t now_wall, tly_err *err);
void identity_free(identity *id);

/* Applies a record to the identity before its message is stamped: session rollover after idle
 * time, identify (user id + traits, from tally_identify or a sent identify message), reset
 * (logout), session start. `m` is the record's message (NULL for reset / session start).
 * Writes what changed to s. */
void identity_apply(identity *id, const meta_sink *s, int kind, const tj_value *m, int64_t now_mono, int64_t now_wall);

/* The current ids as a JSON object text (malloc'd), for tally_identity(). */
char *identity_json(const identity *id);

/* The ids to stamp on the next message (pointers into id). */
void identity_ids(const identity *id, msg_ids *out);

#endif
