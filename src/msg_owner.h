/* Whose a stored message is, for erasure (tally_forget): the store's rows and the worker's
 * in-memory batches are matched the same way. */
#ifndef TALLY_MSG_OWNER_H
#define TALLY_MSG_OWNER_H

#include <stddef.h>

#include "json.h"

/* 1 when the serialized message json (len bytes) has a top-level "userId" or "anonymousId" string
 * equal to id (idlen bytes), else 0 (also for text that does not parse: it names nobody). The
 * message is parsed into a, which is reset first. A yes/no test, not a failure. */
int msg_owned_by(tj_arena *a, const char *json, size_t len, const char *id, size_t idlen);

#endif
