/* Segment Spec messages: validation (shared by the caller side and the processor, so a rule that
 * breaks a message is caught by the same checks as a caller), building a message from an intake
 * record, and stamping the fields the runtime owns. */
#ifndef TALLY_MESSAGE_H
#define TALLY_MESSAGE_H

#include "intake.h"
#include "internal.h"
#include "json.h"

enum msg_type { MT_TRACK, MT_IDENTIFY, MT_PAGE, MT_SCREEN, MT_GROUP, MT_ALIAS, MT_COUNT };

const char *msg_type_name(int t);                     /* t: an MT_* value */
int         msg_type_of_rec(int kind);                /* the MT_* of a typed call's REC_* kind */
int         msg_type_from(const char *s, size_t len); /* -1 when unknown */

/* Caller-side checks on C API arguments. Each returns TALLY_OK or fails naming `field` in err. */
int msg_check_string(const char *field, const char *s, int required, size_t *len, tly_err *err); /* *len: strlen(s), 0 for NULL */
int msg_check_object(const char *field, const char *json, size_t *len, tly_err *err);

/* Checks a whole message against the Spec: known type, required fields per type, field types.
 * need_id: a userId or anonymousId must be present (server mode, and after stamping).
 * Returns TALLY_OK or TALLY_EINVAL with the field named in err. */
int msg_validate(const tj_value *m, int need_id, tly_err *err);

/* The stamped fields a message may set itself (msg_stamp leaves them as they are). */
enum {
    MSG_GIVEN_MESSAGE_ID = 1, MSG_GIVEN_TIMESTAMP = 2, MSG_GIVEN_ANONYMOUS_ID = 4, MSG_GIVEN_PREVIOUS_ID = 8,
    MSG_GIVEN_CONTEXT = 16, MSG_GIVEN_LIBRARY = 32, MSG_GIVEN_SESSION = 64 /* the last two: in context */
};
#define MSG_NO_TRAITS ((size_t)-1)

/* What msg_check_text learned about a whole message, for tally_send's size check. */
typedef struct msg_text {
    int      type;         /* MT_* */
    size_t   written;      /* bytes the processor writes for it before stamping (tj_write of its tree) */
    unsigned given;        /* MSG_GIVEN_* */
    size_t   user_size;    /* a non-empty userId as written (tj_string_size), else 0 */
    size_t   traits_size;  /* traits as written, MSG_NO_TRAITS when absent */
} msg_text;

/* tally_send's check of a whole message as text, in one pass, without a tree: tj_parse's verdict
 * on the JSON ("message: invalid JSON: ..."), then exactly msg_validate's on the tree tj_parse
 * would build (same order, same messages). scratch: decodes escaped strings (the caller's, reused).
 * TALLY_OK with *out filled, TALLY_EINVAL naming the field, or TALLY_ENOMEM. */
int msg_check_text(const char *json, size_t len, int need_id, tbuf *scratch, msg_text *out, tly_err *err);

/* Builds the message tree for an intake record (not a control record: REC_RESET, REC_SESSION_START)
 * into *out. Caller JSON stays TJ_RAW so it is passed through byte for byte unless a rule looks
 * inside. REC_SEND JSON must be a text tally_send's check accepted (it is not checked again).
 * TALLY_OK or TALLY_ENOMEM. */
int msg_from_rec(tj_arena *a, const intake_rec *r, tj_value **out, tly_err *err);

typedef struct msg_ids {
    const char *anonymous_id;   /* NULL in server mode */
    const char *user_id;        /* NULL when logged out */
    const char *session_id;     /* NULL: no session context */
    int64_t     session_index;
    int64_t     session_started_ms;
    const char *traits;         /* identify traits (JSON object) for context.traits, or NULL */
} msg_ids;

/* Adds what the caller did not give: messageId, timestamp (from ts_ms), anonymousId/userId from
 * ids, context.library and context.session. Fields the caller set are left exactly as they were.
 * TALLY_OK, TALLY_ENOMEM, or TALLY_EINVAL for a caller `context` that is not an object. */
int msg_stamp(tj_arena *a, tj_value *m, const msg_ids *ids, int64_t ts_ms, tly_err *err);

/* The most bytes msg_stamp can add to message m as written (m NULL: a typed call, which gives
 * none of the stamped fields). ids_bytes: what the ids add at most, `,"userId":...` and
 * `,"traits":...` in context (the identity is the processor's: callers get it from
 * tally_t's reserve, see tally.c). An upper bound, exact when nothing is given. */
size_t msg_stamp_bound(const tj_value *m, int type, int client, size_t ids_bytes);
/* The same from the MSG_GIVEN_* bits of a message (msg_text.given). */
size_t msg_stamp_bound_given(unsigned given, int type, int client, size_t ids_bytes);

#endif
