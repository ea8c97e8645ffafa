/* The check tally_send made before msg_check_text, kept as the reference the one-pass check is
 * held to (tests/c/test_send_check.c on a corpus, tests/fuzz/fuzz_send.c on random texts): parse
 * into a tree, msg_validate it, and measure the tree as the processor writes it. Header-only so
 * the fuzzer, built from the sources alone, shares it. */
#ifndef TALLY_SEND_REF_H
#define TALLY_SEND_REF_H
#include <string.h>

#include "message.h"

static size_t send_ref_written(const tj_value *v)
{
    tbuf b = TBUF_INIT;
    size_t n = tj_write(&b, v) || b.oom ? (size_t)-1 : b.len;
    tbuf_free(&b);
    return n;
}

static int send_ref_check(tj_arena *a, const char *json, size_t len, int need_id, msg_text *out, tly_err *err)
{
    tj_value *m;
    tj_error je;
    int rc = tj_parse(a, json, len, &m, &je);
    if (rc == TALLY_ENOMEM) return tly_err_set(err, rc, "out of memory");
    if (rc) return tly_err_set(err, TALLY_EINVAL, "message: invalid JSON: %s", je.msg);
    if ((rc = msg_validate(m, need_id, err))) return rc;
    const tj_value *type = tj_object_get(m, "type"), *user = tj_object_get(m, "userId");
    const tj_value *traits = tj_object_get(m, "traits"), *ctx = tj_object_get(m, "context");
    *out = (msg_text){
        .type = msg_type_from(type->u.str.s, type->u.str.len),
        .written = send_ref_written(m),
        .given = (tj_object_get(m, "messageId") ? MSG_GIVEN_MESSAGE_ID : 0) |
                 (tj_object_get(m, "timestamp") ? MSG_GIVEN_TIMESTAMP : 0) |
                 (tj_object_get(m, "anonymousId") ? MSG_GIVEN_ANONYMOUS_ID : 0) |
                 (tj_object_get(m, "previousId") ? MSG_GIVEN_PREVIOUS_ID : 0) | (ctx ? MSG_GIVEN_CONTEXT : 0) |
                 (tj_object_get(ctx, "library") ? MSG_GIVEN_LIBRARY : 0) |
                 (tj_object_get(ctx, "session") ? MSG_GIVEN_SESSION : 0),
        .user_size = user && user->u.str.len ? tj_string_size(user->u.str.s, user->u.str.len) : 0,
        .traits_size = traits ? send_ref_written(traits) : MSG_NO_TRAITS,
    };
    return TALLY_OK;
}

/* Runs both checks on one text; returns NULL when they agree, else what differs. The stamp
 * bounds are compared as well, for both modes: msg_stamp_bound on the tree, msg_stamp_bound_given
 * on the bits. */
static const char *send_ref_compare(tj_arena *a, tbuf *scratch, const char *json, size_t len, int need_id)
{
    msg_text r = {0}, n = {0};
    tly_err er = {""}, en = {""};
    tj_arena_reset(a);
    int rr = send_ref_check(a, json, len, need_id, &r, &er);
    int rn = msg_check_text(json, len, need_id, scratch, &n, &en);
    if (rr != rn) return "verdicts differ";
    if (rr) return strcmp(er.msg, en.msg) ? "error texts differ" : NULL;
    if (r.type != n.type) return "types differ";
    if (r.written != n.written) return "written sizes differ";
    if (r.given != n.given) return "given fields differ";
    if (r.user_size != n.user_size) return "userId sizes differ";
    if (r.traits_size != n.traits_size) return "traits sizes differ";
    tj_value *m;
    if (tj_parse(a, json, len, &m, NULL)) return "the reference accepted what it cannot parse";
    for (int client = 0; client <= 1; client++)
        if (msg_stamp_bound(m, r.type, client, 7) != msg_stamp_bound_given(n.given, n.type, client, 7))
            return "stamp bounds differ";
    /* the processor's build (objects kept as text where they write the same) writes the same bytes */
    tj_value *shallow;
    if (tj_parse_shallow(a, json, len, "context", &shallow)) return "the shallow build failed";
    tbuf w1 = TBUF_INIT, w2 = TBUF_INIT;
    int same = !tj_write(&w1, m) && !tj_write(&w2, shallow) && w1.len == w2.len && !memcmp(w1.data, w2.data, w1.len);
    tbuf_free(&w1);
    tbuf_free(&w2);
    if (!same) return "the processor's build writes other bytes";
    return NULL;
}

#endif
