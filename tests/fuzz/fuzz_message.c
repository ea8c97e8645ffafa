/* Fuzzes message validation and stamping: any bytes given to tally_send's checks either are
 * rejected with a message naming a field, or validate, stamp and serialize to a message that is
 * itself valid and under nothing but the documented limits. */
#include <stdlib.h>
#include <string.h>

#include "message.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    tj_arena *a = tj_arena_new();
    tj_value *m;
    tj_error err;
    tly_err why;
    if (tj_parse(a, (const char *)data, size, &m, &err) == 0 && msg_validate(m, 0, &why) == TALLY_OK) {
        msg_ids ids = {"00000000-0000-4000-8000-000000000000", "u", "11111111-1111-4111-8111-111111111111", 3, 0, NULL};
        if (msg_stamp(a, m, &ids, 1700000000000, &why) == TALLY_OK) {
            if (msg_validate(m, 1, &why) != TALLY_OK) abort(); /* stamping always supplies an id */
            tbuf b = TBUF_INIT;
            if (tj_write(&b, m) == 0) {
                tj_value *again;
                if (tj_parse(a, b.data, b.len, &again, &err) != 0 || msg_validate(again, 1, &why) != TALLY_OK) abort();
            }
            tbuf_free(&b);
        }
    }
    tj_arena_free(a);
    return 0;
}
