/* Matching a message to the person tally_forget names (msg_owner.h). Every message is parsed: a
 * search for the id's bytes first would be quicker, but a message written by the caller may spell
 * the id with JSON escapes, and an erasure must not miss it. */
#include "msg_owner.h"

#include <string.h>

static int same(const tj_value *v, const char *id, size_t idlen)
{
    return v && v->type == TJ_STRING && v->u.str.len == idlen && !memcmp(v->u.str.s, id, idlen);
}

int msg_owned_by(tj_arena *a, const char *json, size_t len, const char *id, size_t idlen)
{
    tj_arena_reset(a);
    tj_value *m;
    tj_error err;
    if (tj_parse(a, json, len, &m, &err) != 0 || m->type != TJ_OBJECT) return 0;
    return same(tj_object_get(m, "userId"), id, idlen) || same(tj_object_get(m, "anonymousId"), id, idlen);
}
