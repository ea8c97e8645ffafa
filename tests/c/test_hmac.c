/* ctx:hmac, HMAC-SHA256 through libcrypto: the RFC 4231 vectors on the helper, then the method
 * as a rule sees it (through the public API): its hex output, its argument errors naming the
 * argument and the limit, and its charge to the work meter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "hmac.h"
#include "tally.h"
#include "util.h"

static void check_vector(const unsigned char *key, size_t keylen, const char *text, size_t textlen, const char *want)
{
    char hex[65];
    tly_err err = {{0}};
    CHECK_EQ_INT(hmac_sha256_hex(key, keylen, text, textlen, hex, &err), TALLY_OK);
    CHECK_STR(hex, want);
}

/* RFC 4231 section 4: test cases 1-4, 6 and 7 (5 truncates the output, which ctx:hmac never does). */
TEST(rfc4231_vectors)
{
    unsigned char k0b[20], kaa20[20], k25[25], kaa131[131];
    char dd[50], cd[50];
    memset(k0b, 0x0b, sizeof k0b);
    memset(kaa20, 0xaa, sizeof kaa20);
    for (int i = 0; i < 25; i++) k25[i] = (unsigned char)(i + 1);
    memset(kaa131, 0xaa, sizeof kaa131);
    memset(dd, 0xdd, sizeof dd);
    memset(cd, 0xcd, sizeof cd);
    check_vector(k0b, 20, "Hi There", 8, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    check_vector((const unsigned char *)"Jefe", 4, "what do ya want for nothing?", 28,
                 "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    check_vector(kaa20, 20, dd, 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
    check_vector(k25, 25, cd, 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
    const char *t6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    check_vector(kaa131, 131, t6, strlen(t6), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    const char *t7 = "This is a test using a larger than block-size key and a larger than block-size data. The key "
                     "needs to be hashed before being used by the HMAC algorithm.";
    check_vector(kaa131, 131, t7, strlen(t7), "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

TEST(empty_key_refused_empty_text_hashed)
{
    char hex[65];
    tly_err err = {{0}};
    CHECK_EQ_INT(hmac_sha256_hex("", 0, "x", 1, hex, &err), TALLY_EINVAL);
    CHECK_STR(err.msg, "key: must not be empty");
    /* an empty text is a valid input: HMAC-SHA256("key", "") */
    CHECK_EQ_INT(hmac_sha256_hex("key", 3, "", 0, hex, &err), TALLY_OK);
    CHECK_STR(hex, "5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0");
}

/* A rules folder holding one rule; returns the folder (malloc'd). */
static char *one_rule(const char *name, const char *src)
{
    char *dir = tu_path(name);
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/10_rule.lua", dir);
    FILE *f = fopen(path, "w");
    if (f) { fputs(src, f); fclose(f); }
    return dir;
}

static char logged[4096];
static void capture(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}

/* Runs one track message through a rule and returns what was delivered (malloc'd); the log lines
 * are in `logged`. */
static char *run_rule(const char *name, const char *src)
{
    char *dir = one_rule(name, src);
    char file[300];
    snprintf(file, sizeof file, "%s.ndjson", dir);
    tally_config *c = tally_config_new();
    tally_config_set(c, "out", file);
    tally_config_set(c, "rules", dir);
    tally_config_set(c, "lua_instructions", "200000");
    tally_config_set(c, "log_level", "warn");
    tally_config_set_logger(c, capture, NULL);
    logged[0] = '\0';
    char *out = NULL;
    tally_t *t = NULL;
    if (tally_open(c, &t) == TALLY_OK) {
        CHECK_EQ_INT(tally_track(t, "Go", NULL), TALLY_OK);
        CHECK_EQ_INT(tally_close(t, 10000), TALLY_OK);
        out = tu_read_file(file, NULL);
    } else {
        fprintf(stderr, "open: %s\n", tally_errmsg(NULL));
    }
    tally_config_free(c);
    free(dir);
    return out;
}

TEST(ctx_hmac_in_a_rule_returns_lowercase_hex)
{
    char *out = run_rule("hex",
        "return { name = 'h', process = function(m, ctx)\n"
        "  m.properties = { mac = ctx:hmac('Jefe', 'what do ya want for nothing?') } return m end }\n");
    CHECK_CONTAINS(out, "\"mac\":\"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843\"");
    free(out);
}

/* Each bad call is caught in the rule (pcall) and its message delivered, so the test reads the
 * exact texts a rule author sees. */
TEST(ctx_hmac_bad_arguments_name_the_argument_and_the_limit)
{
    char *out = run_rule("bad",
        "local function e(...) local ok, err = pcall(...) return ok and 'no error' or err end\n"
        "return { name = 'h', process = function(m, ctx)\n"
        "  m.properties = {\n"
        "    num_key = e(ctx.hmac, ctx, 42, 'x'),\n"
        "    nil_text = e(ctx.hmac, ctx, 'k'),\n"
        "    empty_key = e(ctx.hmac, ctx, '', 'x'),\n"
        "    long_key = e(ctx.hmac, ctx, string.rep('k', 1025), 'x'),\n"
        "    max_key = e(ctx.hmac, ctx, string.rep('k', 1024), 'x'),\n"
        "    long_text = e(ctx.hmac, ctx, 'k', string.rep('t', 32769)),\n"
        "    max_text = e(ctx.hmac, ctx, 'k', string.rep('t', 32768)) }\n"
        "  return m end }\n");
    CHECK_CONTAINS(out, "\"num_key\":\"ctx:hmac: key must be a string (got number)\"");
    CHECK_CONTAINS(out, "\"nil_text\":\"ctx:hmac: text must be a string (got no value)\"");
    CHECK_CONTAINS(out, "\"empty_key\":\"ctx:hmac: key must be 1 to 1024 bytes (got 0)\"");
    CHECK_CONTAINS(out, "\"long_key\":\"ctx:hmac: key must be 1 to 1024 bytes (got 1025)\"");
    CHECK_CONTAINS(out, "\"long_text\":\"ctx:hmac: text must be at most 32768 bytes (got 32769)\"");
    /* the limits themselves are allowed: a 64-digit hex result */
    CHECK(out && strstr(out, "\"max_key\":\"") && strlen(strstr(out, "\"max_key\":\"")) > 11 + 64);
    CHECK(out && !strstr(out, "\"max_key\":\"ctx:hmac") && !strstr(out, "\"max_text\":\"ctx:hmac"));
    free(out);
}

/* Hashing is work done in C: a loop of few instructions that hashes 32 KiB each time is stopped
 * by the meter, long before its instruction count could reach the budget. */
TEST(ctx_hmac_is_charged_to_the_work_meter)
{
    char *out = run_rule("meter",
        "local big = string.rep('t', 32768)\n"
        "return { name = 'h', process = function(m, ctx)\n"
        "  local ok, err = pcall(function() for i = 1, 1000 do ctx:hmac('k', big) end end)\n"
        "  m.properties = { stopped = not ok, why = tostring(err) } return m end }\n");
    /* pcall catches the meter's first error, but the count hook stops the script at its next
     * instruction: the call fails, and a before rule that fails drops the message */
    CHECK(out && !strstr(out, "\"event\":\"Go\""));
    CHECK_CONTAINS(logged, "10_rule.lua:4: instruction limit exceeded");
    free(out);
}
