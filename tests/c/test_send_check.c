/* tally_send's one-pass check (msg_check_text) against the tree path it replaced (tj_parse +
 * msg_validate + the tree's written size, tests/c/send_ref.h): the same verdict, the same error
 * text, the same sizes and stamped-field bits, on a corpus of good and bad messages and on every
 * truncation and byte change of them; then the size limits at +-1 through tally_send itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "send_ref.h"
#include "tally.h"

static const char *const corpus[] = {
    /* good, each type */
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\"}",
    "{\"type\":\"identify\",\"userId\":\"u\",\"traits\":{\"plan\":\"pro\",\"n\":1}}",
    "{\"type\":\"page\",\"name\":\"Home\",\"category\":\"Docs\",\"anonymousId\":\"a\"}",
    "{\"type\":\"screen\",\"name\":\"Main\",\"anonymousId\":\"a\",\"properties\":{}}",
    "{\"type\":\"group\",\"groupId\":\"g\",\"traits\":{},\"userId\":\"u\"}",
    "{\"type\":\"alias\",\"previousId\":\"p\",\"userId\":\"u\"}",
    " \n{ \"type\" : \"track\" , \"event\" : \"E\" , \"anonymousId\" : \"a\" } \t",
    "{\"type\":\"track\",\"event\":\"Button Clicked\",\"userId\":\"user-1\",\"anonymousId\":\"6f1c0a52\","
    "\"properties\":{\"button_name\":\"Play\",\"level\":3,\"score\":12.25,\"hard_mode\":false,\"tags\":[\"a\",\"b\"],"
    "\"loadout\":{\"weapon\":\"bow\",\"ammo\":7}},\"context\":{\"ip\":\"203.0.113.1\",\"page\":{\"path\":\"/\"}}}",
    /* what stamping leaves alone */
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"m-1\",\"timestamp\":\"2024-01-31T12:00:00.000Z\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":{\"library\":{\"name\":\"x\"},\"session\":{\"id\":\"s\"}}}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":{\"library\":1,\"context\":{\"session\":1}}}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":{\"a\":{\"library\":1,\"session\":2}}}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":{\"library\":1},\"context\":{\"x\":2}}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":{\"session\":1},\"context\":5}",
    "{\"type\":\"track\",\"event\":\"E\",\"library\":{},\"session\":{}}",
    "{\"type\":\"alias\",\"userId\":\"u\",\"previousId\":\"\"}",
    "[{\"type\":\"track\",\"library\":1}]",
    /* duplicate keys: the last one wins */
    "{\"type\":\"click\",\"type\":\"track\",\"event\":\"E\"}",
    "{\"type\":\"track\",\"type\":\"click\",\"event\":\"E\"}",
    "{\"type\":\"track\",\"event\":\"\",\"event\":\"E\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"event\":\"\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{},\"properties\":[]}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":5,\"userId\":\"u\"}",
    "{\"type\":\"identify\",\"traits\":{\"a\":1},\"traits\":{\"b\":22},\"userId\":\"u\",\"userId\":\"v2\"}",
    /* escapes in keys and values */
    "{\"\\u0074ype\":\"tr\\u0061ck\",\"ev\\u0065nt\":\"E\"}",
    "{\"type\":\"track\",\"event\":\"\\\"q\\\\ \\/ \\b\\f\\n\\r\\t\",\"userId\":\"\\u00e9\\u20ac\\ud83d\\ude00\"}",
    "{\"type\":\"track\",\"event\":\"\\u0000\\u001f\\u007f\\u2028\\u2029\\u0022\\u005c\\u0008\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"s\":\"\xe2\x80\xa8\xe2\x80\xa9\xe2\x80\xaa \xc3\xa9\xf0\x9f\x98\x80\"}}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"\\u0001x\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\" \\u0020 \"}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"\\u0020x\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"timestamp\":\"2024-01-31T12:00:00\\u002e000Z\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"\\u0074imestamp\":\"2024-01-31T12:00:00Z\",\"timestamp\":\"x\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":{\"\\u006cibrary\":{}}}",
    /* numbers: as written, not as given */
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"a\":1.50,\"b\":1e2,\"c\":-0,\"d\":0.1e-7,\"e\":1E+21,"
    "\"f\":123456789012345678901234567890,\"g\":-9223372036854775808,\"h\":9223372036854775808,\"i\":0.0,"
    "\"j\":-0.0,\"k\":2.2250738585072014e-308,\"l\":1.7976931348623157e308,\"m\":5e-324,\"n\":4.9e-324}}",
    /* objects the processor may keep as text: only when written the same */
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"u\":\"a\\/b\"}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"u\":\"\\u00e9\\u001f\\u001F\\u0041\"}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"u\":\"\\u001f\\u2028\\n\\\"\\\\\"},\"traits\":[1]}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"u\":\"\xe2\x80\xa9\"}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{ \"a\":1}}",
    "{\"type\":\"track\",\"event\":\"E\",\"integrations\":{\"a\":[1,2 ]}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"a\":[1.5,0.25,-0.0,0.0,100.0,0.000001,123456789012345.5]}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"a\":[1.50]},\"x\":[-0],\"y\":{\"z\":1e2},\"w\":[0.0000001]}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"a\":[1234567890123456.5,0.1000000000000001]}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"a\":[123456789012345678901,1E2,1e+2,true,false,null]}}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":{\"a\":1.50},\"properties\":{\"a\":{},\"b\":[]}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"a\":1},\"properties\":{\"a\":1 }}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"a\":1,\"a\":2}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"x\":1e999}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"x\":-1e400}}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"x\":01}}",
    "{\"type\":\"track\",\"event\":\"E\",\"timestamp\":12}",
    /* each error of the old path */
    "",
    "   ",
    "[]",
    "\"track\"",
    "42",
    "{}",
    "{\"event\":\"E\"}",
    "{\"type\":\"click\"}",
    "{\"type\":7,\"event\":\"E\"}",
    "{\"type\":\"Track\",\"event\":\"E\"}",
    "{\"type\":\"track\",\"userId\":\"u\"}",
    "{\"type\":\"track\",\"event\":\"\"}",
    "{\"type\":\"track\",\"event\":null}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":[]}",
    "{\"type\":\"track\",\"event\":\"E\",\"properties\":\"{}\"}",
    "{\"type\":\"identify\",\"traits\":null}",
    "{\"type\":\"track\",\"event\":\"E\",\"context\":[]}",
    "{\"type\":\"track\",\"event\":\"E\",\"integrations\":true}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":5}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"   \"}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\" m\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"m \"}",
    "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"a\\tb\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"timestamp\":\"yesterday\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"timestamp\":\"2024-01-31T12:00:00\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":[]}",
    "{\"type\":\"track\",\"event\":\"E\",\"anonymousId\":{}}",
    "{\"type\":\"page\",\"name\":1}",
    "{\"type\":\"page\",\"category\":false}",
    "{\"type\":\"group\"}",
    "{\"type\":\"group\",\"groupId\":\"\"}",
    "{\"type\":\"alias\",\"userId\":\"u\"}",
    "{\"type\":\"alias\",\"previousId\":\"p\"}",
    "{\"type\":\"alias\",\"previousId\":\"p\",\"userId\":\"\"}",
    "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"\",\"anonymousId\":\"\"}",
    /* bad JSON */
    "{\"type\":\"track\",\"event\":\"E\"",
    "{\"type\":\"track\",\"event\":\"E\"}}",
    "{\"type\":\"track\",\"event\":\"E\",}",
    "{\"type\":\"track\" \"event\":\"E\"}",
    "{\"type\":'track'}",
    "{type:\"track\"}",
    "{\"type\":\"tr\\xck\"}",
    "{\"type\":\"track\",\"event\":\"\\ud800\"}",
    "{\"type\":\"track\",\"event\":\"\\udc00\\ud800\"}",
    "{\"type\":\"track\",\"event\":\"a\nb\"}",
    "{\"type\":\"track\",\"event\":\"\xc3\"}",
    "{\"type\":\"track\",\"event\":\"\xc0\xaf\"}",
    "{\"type\":\"track\",\"event\":\"\xed\xa0\x80\"}",
    "{\"type\":\"track\",\"event\":\"\xf4\x90\x80\x80\"}",
    "{\"type\":\"track\",\"event\":\"\xff\"}",
    "{\"type\":\"track\",\"event\":tru}",
    "{\"type\":\"track\",\"event\":\"E\"} x",
};

static int checked, disagreed;

static void compare(tj_arena *a, tbuf *scratch, const char *s, size_t len)
{
    for (int need_id = 0; need_id <= 1; need_id++) {
        const char *why = send_ref_compare(a, scratch, s, len, need_id);
        checked++;
        if (why && disagreed++ < 10) {
            th_failed_now = 1;
            fprintf(stderr, "  %s (need_id %d): %.*s\n", why, need_id, (int)len, s);
        }
    }
}

TEST(corpus_agrees_with_the_tree_path)
{
    tj_arena *a = tj_arena_new();
    tbuf scratch = TBUF_INIT;
    for (size_t i = 0; i < sizeof corpus / sizeof *corpus; i++) compare(a, &scratch, corpus[i], strlen(corpus[i]));
    CHECK_EQ_INT(disagreed, 0);
    tbuf_free(&scratch);
    tj_arena_free(a);
}

/* Every prefix, every byte replaced by each of a few that change its meaning. */
TEST(mutations_agree_with_the_tree_path)
{
    static const char swaps[] = {'"', '\\', '{', '}', '[', ']', ':', ',', ' ', '0', 'e', '-', 'u', '\0', '\x80', '\xe2'};
    tj_arena *a = tj_arena_new();
    tbuf scratch = TBUF_INIT;
    char buf[1024];
    disagreed = checked = 0;
    for (size_t i = 0; i < sizeof corpus / sizeof *corpus; i++) {
        size_t n = strlen(corpus[i]);
        REQUIRE(n < sizeof buf);
        for (size_t k = 0; k < n; k++) compare(a, &scratch, corpus[i], k);
        for (size_t k = 0; k < n; k++)
            for (size_t j = 0; j < sizeof swaps; j++) {
                memcpy(buf, corpus[i], n);
                buf[k] = swaps[j];
                compare(a, &scratch, buf, n);
            }
    }
    CHECK(checked > 50000);
    CHECK_EQ_INT(disagreed, 0);
    tbuf_free(&scratch);
    tj_arena_free(a);
}

/* Nesting up to the parser's limit and one past it, in properties and in context. */
TEST(deep_nesting_agrees)
{
    tj_arena *a = tj_arena_new();
    tbuf scratch = TBUF_INIT, b = TBUF_INIT;
    disagreed = 0;
    for (int depth = TJ_MAX_DEPTH - 3; depth <= TJ_MAX_DEPTH + 1; depth++) {
        for (int where = 0; where < 2; where++) {
            tbuf_reset(&b);
            tbuf_puts(&b, where ? "{\"type\":\"track\",\"event\":\"E\",\"context\":" : "{\"type\":\"track\",\"event\":\"E\",\"properties\":");
            for (int i = 2; i < depth; i++) tbuf_puts(&b, i % 2 ? "[" : "{\"session\":");
            tbuf_puts(&b, "1");
            for (int i = depth - 1; i >= 2; i--) tbuf_puts(&b, i % 2 ? "]" : "}");
            tbuf_puts(&b, "}");
            REQUIRE(!b.oom);
            compare(a, &scratch, b.data, b.len);
        }
    }
    CHECK_EQ_INT(disagreed, 0);
    tbuf_free(&b);
    tbuf_free(&scratch);
    tj_arena_free(a);
}

/* messageId at its limit and one past it, plain and escaped. */
TEST(message_id_limit_agrees)
{
    tj_arena *a = tj_arena_new();
    tbuf scratch = TBUF_INIT;
    char msg[1200], id[800];
    disagreed = 0;
    for (int n = TALLY_MAX_MESSAGE_ID_BYTES - 1; n <= TALLY_MAX_MESSAGE_ID_BYTES + 1; n++) {
        for (int esc = 0; esc < 2; esc++) {
            size_t o = 0;
            for (int i = 0; i < n; i++) o += (size_t)sprintf(id + o, esc ? "\\u0041" : "A");
            snprintf(msg, sizeof msg, "{\"type\":\"track\",\"event\":\"E\",\"messageId\":\"%s\"}", id);
            compare(a, &scratch, msg, strlen(msg));
            msg_text m;
            tly_err err;
            int rc = msg_check_text(msg, strlen(msg), 0, &scratch, &m, &err);
            if (n <= TALLY_MAX_MESSAGE_ID_BYTES) CHECK_EQ_INT(rc, TALLY_OK);
            else CHECK_CONTAINS(err.msg, "messageId: 129 bytes, over the 128-byte limit");
        }
    }
    CHECK_EQ_INT(disagreed, 0);
    tbuf_free(&scratch);
    tj_arena_free(a);
}

/* A track whose properties pad it to `size` bytes as written; `escaped`: the padding is written
 * from \u0041 escapes, so the text is 6 times longer than what the processor writes. */
static char *padded_track(size_t size, int escaped)
{
    const char *head = "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",\"properties\":{\"p\":\"", *tail = "\"}}";
    size_t fixed = strlen(head) + strlen(tail), pad = size - fixed;
    char *s = malloc(fixed + pad * 6 + 1), *o = s;
    o += sprintf(o, "%s", head);
    for (size_t i = 0; i < pad; i++) o += sprintf(o, escaped ? "\\u0041" : "A");
    sprintf(o, "%s", tail);
    return s;
}

/* The once-stamped limit at +-1 through tally_send, with the text the caller hears. */
TEST(stamped_size_limit_through_tally_send)
{
    tally_config *cfg = tally_config_new();
    REQUIRE(tally_config_set(cfg, "mode", "server") == TALLY_OK);
    REQUIRE(tally_config_set(cfg, "store", ":memory:") == TALLY_OK);
    REQUIRE(tally_config_set(cfg, "out", "/dev/null") == TALLY_OK);
    tally_t *t;
    REQUIRE(tally_open(cfg, &t) == TALLY_OK);
    tally_config_free(cfg);
    size_t stamp = msg_stamp_bound_given(0, MT_TRACK, 0, 0);
    for (int escaped = 0; escaped < 2; escaped++) {
        char *fits = padded_track(TALLY_MAX_MESSAGE_BYTES - stamp, escaped);
        char *over = padded_track(TALLY_MAX_MESSAGE_BYTES - stamp + 1, escaped);
        char want[200];
        snprintf(want, sizeof want, "message: %d bytes once stamped (%zu given + up to %zu for messageId",
                 TALLY_MAX_MESSAGE_BYTES + 1, TALLY_MAX_MESSAGE_BYTES - stamp + 1, stamp);
        if (escaped) { /* over the text limit before the check: refused for the text's own size */
            CHECK_EQ_INT(tally_send(t, fits), TALLY_ETOOBIG);
            CHECK_CONTAINS(tally_errmsg(t), "over the 32768-byte limit");
        } else {
            CHECK_EQ_INT(tally_send(t, fits), TALLY_OK);
            CHECK_EQ_INT(tally_send(t, over), TALLY_ETOOBIG);
            CHECK_CONTAINS(tally_errmsg(t), want);
        }
        free(fits);
        free(over);
    }
    /* an escaped text under the text limit that writes shorter: measured as written */
    char *small = padded_track(4000, 1);
    CHECK(strlen(small) > 20000);
    CHECK_EQ_INT(tally_send(t, small), TALLY_OK);
    free(small);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
}

/* A few texts the old path printed, kept word for word. */
TEST(error_texts_name_the_field)
{
    static const struct { const char *msg, *want; } cases[] = {
        {"[]", "message: expected a JSON object"},
        {"{\"event\":\"E\"}", "type: required (track, identify, page, screen, group or alias)"},
        {"{\"type\":\"click\"}", "type: expected one of track, identify, page, screen, group, alias"},
        {"{\"type\":\"track\"}", "event: required"},
        {"{\"type\":\"track\",\"event\":\"\"}", "event: must not be empty"},
        {"{\"type\":\"track\",\"event\":\"E\",\"properties\":[]}", "properties: expected an object"},
        {"{\"type\":\"track\",\"event\":\"E\",\"userId\":1}", "userId: expected a string"},
        {"{\"type\":\"alias\",\"previousId\":\"p\"}", "userId: required"},
        {"{\"type\":\"track\",\"event\":\"E\"}", "userId or anonymousId: one is required"},
        {"{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u\",", "message: invalid JSON: unexpected end of input at offset 41"},
        {"{\"type\":\"track\",\"event\":\"\xff\",\"userId\":\"u\"}", "message: invalid JSON: invalid UTF-8 at offset 25"},
    };
    tbuf scratch = TBUF_INIT;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        msg_text m;
        tly_err err = {""};
        CHECK_EQ_INT(msg_check_text(cases[i].msg, strlen(cases[i].msg), 1, &scratch, &m, &err), TALLY_EINVAL);
        CHECK_STR(err.msg, cases[i].want);
    }
    tbuf_free(&scratch);
}
