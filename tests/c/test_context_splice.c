/* tally_send's context is kept as text and stamped by splicing the runtime's members into it
 * (message.c stamp_raw_context, json.c tj_raw_append). Held here to the tree path it replaced:
 * parse the whole message into a tree, stamp, write. Same bytes for every message of a corpus,
 * for server and client identities (library, traits, session), and after a consent stamp. */
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "message.h"

static const char *const corpus[] = {
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\"}", /* no context: the tree path */
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{}}",
    "{\"type\":\"track\",\"event\":\"Button Clicked\",\"userId\":\"user-1\",\"anonymousId\":\"6f1c\","
    "\"properties\":{\"level\":3,\"score\":12.25},\"context\":{\"ip\":\"203.0.113.7\",\"userAgent\":\"Mozilla/5.0 "
    "(X11; Linux x86_64)\",\"page\":{\"path\":\"/play\",\"url\":\"https://example.com/play\"}}}",
    /* what the caller gave is kept, the rest added */
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"library\":{\"name\":\"x\"}}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"session\":{\"id\":\"s\"},\"traits\":{\"a\":1}}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"library\":1,\"traits\":null,\"session\":[]}}",
    /* the names only count at the top of context */
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"a\":{\"library\":1,\"session\":2},"
    "\"b\":[\"traits\",{\"library\":3}],\"c\":\"library\"}}",
    /* duplicate keys are kept as written (the tree keeps them too) */
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"ip\":\"1\",\"ip\":\"2\"}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"library\":1,\"library\":2}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"x\":1},\"context\":{\"y\":2}}",
    /* values of every kind, escapes, numbers as written */
    "{\"type\":\"page\",\"name\":\"Home\",\"anonymousId\":\"a\",\"context\":{\"s\":\"\\\"q\\\\\\n\\u0001\",\"t\":true,"
    "\"f\":false,\"n\":null,\"i\":-12,\"d\":1.5,\"big\":123456789012345678901234567890,\"e\":[],\"o\":{}}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"consent\":{\"categoryPreferences\":"
    "{\"analytics\":true}}}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"nested\":{\"deep\":{\"er\":[1,{\"x\":[]}]}}}}",
    /* not as tj_write writes it: built as a tree, as before */
    "{\"type\":\"identify\",\"userId\":\"u\",\"traits\":{\"plan\":\"pro\"},\"context\":{\"k\\u00e9y\":\"\xc3\xa9\"}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\": { \"ip\" : \"1\" }}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"d\":1.50,\"u\":\"a\\/b\"}}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"context\":{\"\\u006cibrary\":{}}}",
};

static const msg_ids ids_variants[] = {
    {0}, /* server mode: only the library */
    {"anon-1", "user-1", NULL, 0, 0, NULL},
    {"anon-1", NULL, "sess-1", 3, 1706702400000, NULL},
    {"anon-1", "user-1", "sess-\"1", 7, 1706702400000, "{\"plan\":\"pro\",\"n\":[1,2]}"},
};

/* msg_consent's stamp (processor.c message_consent): context expanded, consent added */
static int stamp_consent(tj_arena *a, tj_value *m)
{
    tj_value *ctx = tj_object_get(m, "context");
    if (!ctx) return -1;
    if (ctx->type == TJ_RAW && tj_expand(a, ctx, NULL)) return -1;
    if (tj_object_get(ctx, "consent")) return 0;
    tj_value *c = tj_new(a, TJ_OBJECT), *raw = tj_new_raw(a, "{\"analytics\":false}", 19);
    return !c || !raw || tj_object_set(a, c, "categoryPreferences", 19, raw) || tj_object_set(a, ctx, "consent", 7, c);
}

/* One path: build (the processor's way, or the whole tree), stamp, maybe consent, write. */
static int build(tj_arena *a, const char *json, int tree, const msg_ids *ids, int consent, tbuf *out, int *ctx_raw)
{
    tj_value *m;
    tly_err err;
    if (tree) {
        if (tj_parse(a, json, strlen(json), &m, NULL)) return -1;
    } else {
        intake_rec *r = intake_rec_new(NULL, REC_SEND, NULL, 0, NULL, 0, json, strlen(json));
        int rc = r ? msg_from_rec(a, r, &m, &err) : -1;
        intake_rec_free(NULL, r);
        if (rc) return -1;
    }
    if (msg_stamp(a, m, ids, 1706702400123, &err)) return -1;
    /* the stamped messageId is random: the same one on both sides */
    tj_value *id = tj_new_string(a, "fixed", 5);
    if (!id || tj_object_set(a, m, "messageId", 9, id)) return -1;
    const tj_value *ctx = tj_object_get(m, "context");
    *ctx_raw = ctx && ctx->type == TJ_RAW;
    if (consent && stamp_consent(a, m)) return -1;
    tbuf_reset(out);
    return tj_write(out, m) || out->oom ? -1 : 0;
}

TEST(spliced_context_writes_the_same_bytes_as_the_tree)
{
    tj_arena *a = tj_arena_new(), *b = tj_arena_new();
    tbuf got = TBUF_INIT, want = TBUF_INIT;
    REQUIRE(a && b);
    int spliced = 0;
    for (size_t i = 0; i < sizeof corpus / sizeof *corpus; i++) {
        for (size_t k = 0; k < sizeof ids_variants / sizeof *ids_variants; k++) {
            for (int consent = 0; consent < 2; consent++) {
                int raw = 0, tree_raw = 0;
                tj_arena_reset(a);
                tj_arena_reset(b);
                REQUIRE(build(a, corpus[i], 0, &ids_variants[k], consent, &got, &raw) == 0);
                REQUIRE(build(b, corpus[i], 1, &ids_variants[k], consent, &want, &tree_raw) == 0);
                CHECK(!tree_raw);
                spliced += raw;
                if (strcmp(got.data, want.data))
                    fprintf(stderr, "  message %zu, ids %zu, consent %d:\n    spliced %s\n    tree    %s\n", i, k,
                            consent, got.data, want.data);
                CHECK_STR(got.data, want.data);
            }
        }
    }
    /* the splice is what ran for the canonical contexts (all but the first and the last four) */
    CHECK_EQ_INT(spliced, (int)(sizeof corpus / sizeof *corpus - 5) * (int)(sizeof ids_variants / sizeof *ids_variants) * 2);
    tbuf_free(&got);
    tbuf_free(&want);
    tj_arena_free(a);
    tj_arena_free(b);
}

/* tj_raw_keys sees the keys of the object's own members, wherever they sit, and nothing inside
 * their values. */
TEST(raw_keys_are_the_top_level_members_only)
{
    static const char *const keys[] = {"library", "traits", "session"};
    const char *t = "{\"x\":{\"library\":1},\"traits\":[\"session\"],\"s\":\"library\",\"n\":-1.5e3,\"b\":true}";
    CHECK_EQ_INT(tj_raw_keys(t, strlen(t), keys, 3), 2);
    t = "{}";
    CHECK_EQ_INT(tj_raw_keys(t, strlen(t), keys, 3), 0);
    t = "{\"session\":null,\"library\":{},\"traits\":\"\"}";
    CHECK_EQ_INT(tj_raw_keys(t, strlen(t), keys, 3), 7);
    t = "{ \"a\" : 1 , \"session\" : 2 }";
    CHECK_EQ_INT(tj_raw_keys(t, strlen(t), keys, 3), 4);
}
