/* libFuzzer harness for the JSON codec.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc tests/fuzz/fuzz_json.c src/json.c src/buf.c
 * Run:   ./a.out -max_total_time=60 tests/fuzz/corpus/json
 *
 * Properties checked on every input (abort() on violation so the fuzzer keeps the input):
 *  - tj_validate and tj_parse agree on acceptance and on the error message;
 *  - an accepted input writes out as JSON that parses back to an identical tree (doubles compared
 *    bit for bit), and writing that tree again yields identical bytes;
 *  - the input, taken as a string, goes through tj_write_string and back unchanged when it is
 *    valid UTF-8, and is rejected by the parser exactly when tj_utf8_valid rejects it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static void fail(const char *why, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_json: %s (input %zu bytes)\n", why, size);
    (void)data;
    abort();
}

static int same_tree(const tj_value *a, const tj_value *b)
{
    if (a->type != b->type) return 0;
    switch (a->type) {
    case TJ_INT: return a->u.i == b->u.i;
    case TJ_DOUBLE: return memcmp(&a->u.d, &b->u.d, sizeof a->u.d) == 0;
    case TJ_STRING:
    case TJ_RAW:
        return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    case TJ_ARRAY:
        if (a->u.arr.n != b->u.arr.n) return 0;
        for (size_t i = 0; i < a->u.arr.n; i++)
            if (!same_tree(a->u.arr.items[i], b->u.arr.items[i])) return 0;
        return 1;
    case TJ_OBJECT:
        if (a->u.obj.n != b->u.obj.n) return 0;
        for (size_t i = 0; i < a->u.obj.n; i++) {
            const tj_member *x = &a->u.obj.m[i], *y = &b->u.obj.m[i];
            if (x->klen != y->klen || memcmp(x->key, y->key, x->klen) != 0) return 0;
            if (!same_tree(x->val, y->val)) return 0;
        }
        return 1;
    default: return 1;
    }
}

static void check_document(tj_arena *a, const uint8_t *data, size_t size)
{
    tj_value *v, *v2;
    tj_error e1, e2;
    int rp = tj_parse(a, (const char *)data, size, &v, &e1);
    int rv = tj_validate((const char *)data, size, &e2);
    if (rp != rv) fail("tj_validate and tj_parse disagree", data, size);
    if (rp) {
        if (strcmp(e1.msg, e2.msg) != 0 || e1.offset != e2.offset || e1.offset > size)
            fail("error messages differ", data, size);
        return;
    }
    tbuf w1 = TBUF_INIT, w2 = TBUF_INIT;
    if (tj_write(&w1, v)) fail("tj_write failed on a parsed tree", data, size);
    if (tj_parse(a, w1.data, w1.len, &v2, &e1)) fail("written JSON does not parse", data, size);
    if (!same_tree(v, v2)) fail("written JSON parses to a different tree", data, size);
    if (tj_write(&w2, v2)) fail("second tj_write failed", data, size);
    if (w1.len != w2.len || memcmp(w1.data, w2.data, w1.len) != 0) fail("write is not stable", data, size);
    tbuf_free(&w1);
    tbuf_free(&w2);
}

static void check_string(tj_arena *a, const uint8_t *data, size_t size)
{
    size_t bad;
    int valid = tj_utf8_valid((const char *)data, size, &bad);
    tbuf w = TBUF_INIT;
    tj_write_string(&w, (const char *)data, size);
    tj_value *v;
    tj_error err;
    int r = tj_parse(a, w.data, w.len, &v, &err);
    if (valid) {
        if (r || v->type != TJ_STRING || v->u.str.len != size || memcmp(v->u.str.s, data, size) != 0)
            fail("string does not survive tj_write_string + tj_parse", data, size);
    } else {
        /* the writer passes bytes through, so the parser must stop at the same bad byte: its offset
         * is that of the closing quote when only the valid prefix is written */
        tbuf prefix = TBUF_INIT;
        tj_write_string(&prefix, (const char *)data, bad);
        if (r == 0 || !strstr(err.msg, "invalid UTF-8") || err.offset != prefix.len - 1)
            fail("parser and tj_utf8_valid disagree on a string", data, size);
        tbuf_free(&prefix);
    }
    tbuf_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tj_arena *a;
    if (!a && !(a = tj_arena_new())) abort();
    check_document(a, data, size);
    tj_arena_reset(a);
    check_string(a, data, size);
    tj_arena_reset(a);
    return 0;
}
