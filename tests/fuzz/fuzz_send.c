/* Differential harness for tally_send's check: the one pass over the text (msg_check_text) and
 * the tree path it replaced (tj_parse + msg_validate + the tree's written size, the reference in
 * tests/c/send_ref.h) must agree on every input: accept or refuse, the error text, and for an
 * accepted message its type, written size, stamped fields and the stamp bounds. abort() on any
 * difference, so the fuzzer keeps the input. The first byte chooses need_id (server mode). */
#include <stdio.h>
#include <stdlib.h>

#include "../c/send_ref.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    static tj_arena *a;
    static tbuf scratch = TBUF_INIT;
    if (!a && !(a = tj_arena_new())) abort();
    if (size == 0) return 0;
    int need_id = data[0] & 1;
    const char *why = send_ref_compare(a, &scratch, (const char *)data + 1, size - 1, need_id);
    if (why) {
        fprintf(stderr, "fuzz_send: %s (need_id %d, %zu bytes)\n", why, need_id, size - 1);
        abort();
    }
    return 0;
}
