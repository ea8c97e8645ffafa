/* Differential harness for tally_send's check: the one pass over the text (msg_check_text) and
 * the tree path it replaced (tj_parse + msg_validate + the tree's written size, the reference in
 * tests/c/send_ref.h) must agree on every input: accept or refuse, the error text, and for an
 * accepted message its type, written size, stamped fields and the stamp bounds. abort() on any
 * difference, so the fuzzer keeps the input. The first byte chooses need_id (server mode). */
#include <stdio.h>
#include <stdlib.h>

#include "../c/send_ref.h"

/* An accepted message, built as the processor builds it (context kept as text, stamped by
 * splicing) and as a whole tree, then stamped with a client identity: the same bytes. */
static const char *stamped_differs(tj_arena *a, tj_arena *b, const char *json, size_t len)
{
    static tbuf x = TBUF_INIT, y = TBUF_INIT;
    static const msg_ids ids = {"anon", "user", "sess", 2, 1706702400000, "{\"plan\":\"pro\"}"};
    tj_value *m, *t;
    tly_err err;
    tj_arena_reset(b);
    intake_rec *r = intake_rec_new(NULL, REC_SEND, NULL, 0, NULL, 0, json, len);
    if (!r) abort();
    int rc = msg_from_rec(b, r, &m, &err) || tj_parse(a, r->json, len, &t, NULL);
    intake_rec_free(NULL, r);
    if (rc) return "cannot build";
    tj_value *id = tj_new_string(a, "id", 2), *id2 = tj_new_string(b, "id", 2);
    if (!id || !id2 || msg_stamp(b, m, &ids, 1, &err) || msg_stamp(a, t, &ids, 1, &err) ||
        tj_object_set(b, m, "messageId", 9, id2) || tj_object_set(a, t, "messageId", 9, id))
        return strstr(err.msg, "context") ? NULL : "cannot stamp"; /* a context that is not an object: both refuse */
    tbuf_reset(&x);
    tbuf_reset(&y);
    int wx = tj_write(&x, m), wy = tj_write(&y, t);
    if (wx != wy) return "one side could not be written";
    return !wx && strcmp(x.data, y.data) ? "stamped bytes differ" : NULL;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static tj_arena *a;
    static tbuf scratch = TBUF_INIT;
    if (!a && !(a = tj_arena_new())) abort();
    if (size == 0) return 0;
    int need_id = data[0] & 1;
    static tj_arena *b;
    if (!b && !(b = tj_arena_new())) abort();
    const char *why = send_ref_compare(a, &scratch, (const char *)data + 1, size - 1, need_id);
    msg_text mt;
    tly_err err;
    if (!why && !msg_check_text((const char *)data + 1, size - 1, need_id, &scratch, &mt, &err))
        why = stamped_differs(a, b, (const char *)data + 1, size - 1);
    if (why) {
        fprintf(stderr, "fuzz_send: %s (need_id %d, %zu bytes)\n", why, need_id, size - 1);
        abort();
    }
    return 0;
}
