/* Signed rule bundles (src/bundle.c, bundle_sign.c, base64.c): what is signed, what is refused
 * and how each refusal is named. The CLI side is tests/cli/test_cli_rules.sh. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base64.h"
#include "bundle.h"
#include "bundle_sign.h"
#include "harness.h"

static char keydir[64];

/* A new signer whose key lives in a private temporary folder (removed at exit). */
static bundle_signer *new_signer(void)
{
    static int n;
    char path[128];
    if (!keydir[0]) {
        strcpy(keydir, "/tmp/tally-test-bundle-XXXXXX");
        if (!mkdtemp(keydir)) return NULL;
    }
    snprintf(path, sizeof path, "%s/key%d", keydir, n++);
    bundle_signer *s = NULL;
    tly_err err;
    if (bundle_keygen(path, &s, &err)) fprintf(stderr, "  keygen: %s\n", err.msg);
    unlink(path);
    return s;
}

static bundle_keys *keys_of(const bundle_signer *a, const bundle_signer *b)
{
    bundle_keys *k = bundle_keys_new();
    tly_err err;
    if (a && bundle_keys_add(k, bundle_signer_public(a), &err)) fprintf(stderr, "  %s\n", err.msg);
    if (b && bundle_keys_add(k, bundle_signer_public(b), &err)) fprintf(stderr, "  %s\n", err.msg);
    return k;
}

static const char good_payload[] =
    "{\"version\":7,\"created_at\":\"2026-12-07T18:00:00.000Z\","
    "\"rules\":[{\"file\":\"10_a.lua\",\"source\":\"return {name='a', process=function(m) return m end}\"},"
    "{\"file\":\"20_b.lua\",\"source\":\"return {name='b', process=function(m) return m end}\"}],"
    "\"rule_config\":{\"a\":{\"x\":1}},"
    "\"tests\":[{\"name\":\"passes\",\"input\":{\"type\":\"track\",\"event\":\"E\"},\"output\":{\"event\":\"E\"}}]}";

static void sign(const bundle_signer *s, const char *payload, tbuf *out)
{
    tly_err err;
    tbuf_reset(out);
    if (bundle_sign(s, payload, strlen(payload), out, &err)) fprintf(stderr, "  sign: %s\n", err.msg);
}

/* verify's status, with its message in msg */
static int verify(const tbuf *file, const bundle_keys *k, char *msg, size_t len)
{
    bundle *b = NULL;
    tly_err err = {""};
    int rc = bundle_verify(file->data, file->len, 0, k, &b, &err);
    snprintf(msg, len, "%s", rc ? err.msg : "");
    if (!rc) CHECK(b != NULL);
    else CHECK(b == NULL);
    bundle_free(b);
    return rc;
}

TEST(test_signed_bundle_reads_back)
{
    bundle_signer *s = new_signer();
    REQUIRE(s);
    bundle_keys *k = keys_of(s, NULL);
    tbuf f = TBUF_INIT;
    sign(s, good_payload, &f);
    bundle *b = NULL;
    tly_err err = {""};
    int rc = bundle_verify(f.data, f.len, 0, k, &b, &err);
    CHECK_STR(err.msg, "");
    REQUIRE(rc == TALLY_OK && b);
    CHECK_EQ_INT(b->version, 7);
    CHECK_STR(b->created_at, "2026-12-07T18:00:00.000Z");
    CHECK_STR(b->key_id, bundle_signer_key_id(s));
    REQUIRE(b->nscripts == 2);
    CHECK_STR(b->scripts[0].file, "10_a.lua");
    CHECK_STR(b->scripts[1].file, "20_b.lua");
    CHECK_EQ_INT(b->scripts[1].len, strlen(b->scripts[1].source));
    CHECK_STR(b->rule_config, "{\"a\":{\"x\":1}}");
    CHECK(b->tests && b->tests->type == TJ_ARRAY && b->tests->u.arr.n == 1);
    /* the file is the documented envelope, one line */
    CHECK(!strncmp(f.data, "{\"format\":1,\"key_id\":\"", 22));
    CHECK(f.data[f.len - 1] == '\n' && memchr(f.data, '\n', f.len) == f.data + f.len - 1);
    bundle_free(b);
    bundle_keys_free(k);
    bundle_signer_free(s);
    tbuf_free(&f);
}

/* The claim of docs/bundles.md: whatever byte of the file changes, verification fails. */
TEST(test_any_changed_byte_is_refused)
{
    bundle_signer *s = new_signer();
    REQUIRE(s);
    bundle_keys *k = keys_of(s, NULL);
    tbuf f = TBUF_INIT;
    sign(s, good_payload, &f);
    char msg[600];
    REQUIRE(verify(&f, k, msg, sizeof msg) == TALLY_OK);
    size_t refused = 0;
    for (size_t i = 0; i < f.len; i++) {
        for (int bit = 0; bit < 8; bit += 5) { /* a low bit (a near letter) and a high one (UTF-8 noise) */
            f.data[i] ^= (char)(1 << bit);
            int rc = verify(&f, k, msg, sizeof msg);
            f.data[i] ^= (char)(1 << bit);
            if (rc == TALLY_OK) fprintf(stderr, "  byte %zu bit %d changed and still verified\n", i, bit);
            refused += rc != TALLY_OK;
        }
    }
    CHECK_EQ_INT(refused, 2 * f.len);
    /* a byte added or removed at the end */
    tbuf_putc(&f, '\n');
    CHECK(verify(&f, k, msg, sizeof msg) != TALLY_OK);
    f.len -= 2;
    CHECK(verify(&f, k, msg, sizeof msg) != TALLY_OK);
    bundle_keys_free(k);
    bundle_signer_free(s);
    tbuf_free(&f);
}

/* Each part changed on its own is refused for its own reason. */
TEST(test_tampered_parts_name_the_part)
{
    bundle_signer *s = new_signer();
    REQUIRE(s);
    bundle_keys *k = keys_of(s, NULL);
    tbuf f = TBUF_INIT;
    sign(s, good_payload, &f);
    char msg[600];
    char *payload = strstr(f.data, "\"payload\":\"") + 11, *sig = strstr(f.data, "\"signature\":\"") + 13;
    char *kid = strstr(f.data, "\"key_id\":\"") + 10;
    /* a payload character in the middle: other bytes, same canonical form, so only the signature catches it */
    char was = payload[40];
    payload[40] = was == 'A' ? 'B' : 'A';
    CHECK(verify(&f, k, msg, sizeof msg) == TALLY_EINVAL);
    CHECK_CONTAINS(msg, "signature: does not verify");
    payload[40] = was;
    was = sig[10];
    sig[10] = was == 'A' ? 'B' : 'A';
    CHECK(verify(&f, k, msg, sizeof msg) == TALLY_EINVAL);
    CHECK_CONTAINS(msg, "signature: does not verify");
    sig[10] = was;
    was = kid[3];
    kid[3] = was == 'a' ? 'b' : 'a';
    CHECK(verify(&f, k, msg, sizeof msg) == TALLY_EINVAL);
    CHECK_CONTAINS(msg, "key_id:");
    CHECK_CONTAINS(msg, "is not one of the 1 trusted public key");
    kid[3] = was;
    CHECK(verify(&f, k, msg, sizeof msg) == TALLY_OK);
    bundle_keys_free(k);
    bundle_signer_free(s);
    tbuf_free(&f);
}

/* A bundle's key_id names the key, the signature must then hold under it: a file claiming
 * a trusted key's id but signed by another is refused by the signature. */
TEST(test_wrong_key_refused_and_rotation_accepted)
{
    bundle_signer *old = new_signer(), *cur = new_signer(), *stranger = new_signer();
    REQUIRE(old && cur && stranger);
    tbuf f = TBUF_INIT;
    char msg[600];
    sign(cur, good_payload, &f);
    bundle_keys *only_old = keys_of(old, NULL), *both = keys_of(old, cur), *none = bundle_keys_new();
    CHECK_EQ_INT(bundle_keys_count(both), 2);
    CHECK(verify(&f, only_old, msg, sizeof msg) == TALLY_EINVAL);
    CHECK_CONTAINS(msg, bundle_signer_key_id(cur));
    CHECK(verify(&f, both, msg, sizeof msg) == TALLY_OK);
    CHECK(verify(&f, none, msg, sizeof msg) == TALLY_EINVAL);
    CHECK_CONTAINS(msg, "not one of the 0 trusted public keys");
    sign(old, good_payload, &f);
    CHECK(verify(&f, both, msg, sizeof msg) == TALLY_OK);
    /* stranger's signature under cur's id */
    tbuf g = TBUF_INIT;
    sign(stranger, good_payload, &g);
    char *gid = strstr(g.data, "\"key_id\":\"") + 10;
    memcpy(gid, bundle_signer_key_id(cur), BUNDLE_KEY_ID_LEN);
    CHECK(verify(&g, both, msg, sizeof msg) == TALLY_EINVAL);
    CHECK_CONTAINS(msg, "signature: does not verify with key");
    bundle_keys_free(only_old);
    bundle_keys_free(both);
    bundle_keys_free(none);
    bundle_signer_free(old);
    bundle_signer_free(cur);
    bundle_signer_free(stranger);
    tbuf_free(&f);
    tbuf_free(&g);
}

TEST(test_size_cap_checked_before_parsing)
{
    bundle_keys *k = bundle_keys_new();
    size_t n = BUNDLE_MAX_BYTES + 1;
    char *big = malloc(n);
    REQUIRE(big);
    memset(big, '[', n); /* as JSON: nesting far past the parser's limit, a different error */
    bundle *b = NULL;
    tly_err err = {""};
    CHECK_EQ_INT(bundle_verify(big, n, 0, k, &b, &err), TALLY_ETOOBIG);
    CHECK_CONTAINS(err.msg, "1048577 bytes, over the 1048576-byte limit");
    CHECK(b == NULL);
    CHECK_EQ_INT(bundle_verify(big, 100, 99, k, &b, &err), TALLY_ETOOBIG);
    CHECK_CONTAINS(err.msg, "over the 99-byte limit");
    CHECK_EQ_INT(bundle_verify(big, 100, 0, k, &b, &err), TALLY_EINVAL);
    CHECK_CONTAINS(err.msg, "bundle: invalid JSON");
    free(big);
    bundle_keys_free(k);
}

TEST(test_envelope_fields_are_named)
{
    bundle_keys *k = bundle_keys_new();
    static const struct { const char *text, *want; } cases[] = {
        {"", "bundle: invalid JSON"},
        {"{\"format\":1", "bundle: invalid JSON"},
        {"[1]", "bundle: expected a JSON object"},
        {"{}", "format: missing"},
        {"{\"format\":\"1\"}", "format: expected an integer"},
        {"{\"format\":2}", "format: 2 is not supported"},
        {"{\"format\":1}", "key_id: missing"},
        {"{\"format\":1,\"key_id\":5}", "key_id: expected a string"},
        {"{\"format\":1,\"key_id\":\"ABCDEF0123456789\"}", "key_id: expected 16 lowercase hex digits"},
        {"{\"format\":1,\"key_id\":\"0123456789abcdef\"}", "payload: missing"},
        {"{\"format\":1,\"key_id\":\"0123456789abcdef\",\"payload\":[]}", "payload: expected a string"},
        {"{\"format\":1,\"key_id\":\"0123456789abcdef\",\"payload\":\"e30=\"}", "signature: missing"},
        {"{\"format\":1,\"key_id\":\"0123456789abcdef\",\"payload\":\"e30=\",\"signature\":null}", "signature: expected a string"},
        {"{\"format\":1,\"key_id\":\"0123456789abcdef\",\"payload\":\"e30\",\"signature\":\"\"}", "payload: not canonical base64"},
        {"{\"format\":1,\"key_id\":\"0123456789abcdef\",\"payload\":\"e30=\",\"signature\":\"AAAA\"}",
         "signature: expected the base64 of 64 bytes"},
        {"{\"format\":1,\"key_id\":\"0123456789abcdef\",\"payload\":\"e30=\",\"signature\":\"\",\"extra\":1}",
         "bundle: unknown field \"extra\""},
        /* a key that only starts with a known name is another key */
        {"{\"format\\u0000x\":1,\"format\":1}", "bundle: unknown field"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        bundle *b = NULL;
        tly_err err = {""};
        int rc = bundle_verify(cases[i].text, strlen(cases[i].text), 0, k, &b, &err);
        CHECK_EQ_INT(rc, TALLY_EINVAL);
        CHECK_CONTAINS(err.msg, cases[i].want);
        CHECK(b == NULL);
    }
    /* a correct envelope with another spelling (a space) is refused as not canonical */
    bundle_signer *s = new_signer();
    REQUIRE(s);
    bundle_keys *ks = keys_of(s, NULL);
    tbuf f = TBUF_INIT, g = TBUF_INIT;
    sign(s, "{}", &f);
    tbuf_append(&g, f.data, 1);
    tbuf_putc(&g, ' ');
    tbuf_append(&g, f.data + 1, f.len - 1);
    char msg[600];
    CHECK(verify(&g, ks, msg, sizeof msg) == TALLY_EINVAL);
    CHECK_CONTAINS(msg, "not in the exact form `tally rules pack` writes");
    bundle_keys_free(ks);
    bundle_keys_free(k);
    bundle_signer_free(s);
    tbuf_free(&f);
    tbuf_free(&g);
}

/* Signed payloads with one thing wrong: each refusal names the field. */
TEST(test_payload_fields_are_named)
{
    bundle_signer *s = new_signer();
    REQUIRE(s);
    bundle_keys *k = keys_of(s, NULL);
#define HEAD "\"version\":1,\"created_at\":\"2026-01-01T00:00:00Z\""
#define RULE "\"rules\":[{\"file\":\"a.lua\",\"source\":\"return {}\"}]"
#define INPUT "\"input\":{\"type\":\"track\",\"event\":\"E\"}"
    static const struct { const char *payload, *want; } cases[] = {
        {"[]", "payload: expected a JSON object"},
        {"{\"version\":1", "payload: invalid JSON"},
        {"{\"created_at\":\"2026-01-01T00:00:00Z\"," RULE "}", "version: missing"},
        {"{\"version\":\"1\",\"created_at\":\"2026-01-01T00:00:00Z\"," RULE "}", "version: expected an integer"},
        {"{\"version\":0,\"created_at\":\"2026-01-01T00:00:00Z\"," RULE "}", "version: must be 1 or more"},
        {"{\"version\":1.5,\"created_at\":\"2026-01-01T00:00:00Z\"," RULE "}", "version: expected an integer"},
        {"{\"version\":1," RULE "}", "created_at: missing"},
        {"{\"version\":1,\"created_at\":\"yesterday\"," RULE "}", "created_at: expected an RFC 3339 date-time"},
        {"{" HEAD "}", "rules: missing"},
        {"{" HEAD ",\"rules\":{}}", "rules: expected an array of scripts"},
        {"{" HEAD ",\"rules\":[]}", "rules: expected at least one script"},
        {"{" HEAD ",\"rules\":[1]}", "rules[0]: expected an object"},
        {"{" HEAD ",\"rules\":[{\"source\":\"\"}]}", "rules[0].file: missing"},
        {"{" HEAD ",\"rules\":[{\"file\":\"../x.lua\",\"source\":\"\"}]}", "rules[0].file: expected a file name"},
        {"{" HEAD ",\"rules\":[{\"file\":\"a/x.lua\",\"source\":\"\"}]}", "rules[0].file: expected a file name"},
        {"{" HEAD ",\"rules\":[{\"file\":\".x.lua\",\"source\":\"\"}]}", "rules[0].file: expected a file name"},
        {"{" HEAD ",\"rules\":[{\"file\":\"x.txt\",\"source\":\"\"}]}", "rules[0].file: expected a file name"},
        {"{" HEAD ",\"rules\":[{\"file\":\"a.lua\"}]}", "rules[0].source: missing"},
        {"{" HEAD ",\"rules\":[{\"file\":\"a.lua\",\"source\":1}]}", "rules[0].source: expected a string"},
        {"{" HEAD ",\"rules\":[{\"file\":\"a.lua\",\"source\":\"\",\"mode\":1}]}", "rules[0]: unknown field \"mode\""},
        {"{" HEAD ",\"rules\":[{\"file\":\"b.lua\",\"source\":\"\"},{\"file\":\"a.lua\",\"source\":\"\"}]}",
         "rules[1].file: \"a.lua\" is repeated or out of order"},
        {"{" HEAD ",\"rules\":[{\"file\":\"a.lua\",\"source\":\"\"},{\"file\":\"a.lua\",\"source\":\"\"}]}",
         "rules[1].file: \"a.lua\" is repeated or out of order"},
        {"{" HEAD "," RULE ",\"rule_config\":[]}", "rule_config: expected an object"},
        {"{" HEAD "," RULE ",\"tests\":{}}", "tests: expected an array"},
        {"{" HEAD "," RULE ",\"signed_by\":\"me\"}", "payload: unknown field \"signed_by\""},
        {"{" HEAD "," RULE ",\"tests\":[7]}", "tests[0]: expected an object"},
        {"{" HEAD "," RULE ",\"tests\":[{" INPUT ",\"drop\":true}]}", "tests[0].name: missing"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"\"," INPUT ",\"drop\":true}]}", "tests[0].name: must not be empty"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\",\"drop\":true}]}", "tests[0].input: missing"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\",\"input\":[],\"drop\":true}]}", "tests[0].input: expected a message"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"drop\":\"yes\"}]}", "tests[0].drop: expected true or false"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"output\":3}]}", "tests[0].output: expected a message"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"output\":[3]}]}", "tests[0].output[0]: expected a message"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"violations\":\"x\"}]}",
         "tests[0].violations: expected an array of strings"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"violations\":[\"\"]}]}",
         "tests[0].violations[0]: expected a non-empty string"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"absent\":[1]}]}", "tests[0].absent[0]: expected a non-empty string"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT "}]}", "tests[0]: expects nothing"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"drop\":true,\"output\":{}}]}",
         "tests[0]: drop is true, so output and absent cannot be checked"},
        {"{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"drop\":false,\"expect\":1}]}", "tests[0]: unknown field \"expect\""},
    };
    tbuf f = TBUF_INIT;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char msg[600];
        sign(s, cases[i].payload, &f);
        CHECK_EQ_INT(verify(&f, k, msg, sizeof msg), TALLY_EINVAL);
        CHECK_CONTAINS(msg, cases[i].want);
    }
    /* the smallest payload that is accepted: the cases above differ from it in one field */
    sign(s, "{" HEAD "," RULE ",\"tests\":[{\"name\":\"t\"," INPUT ",\"drop\":false}]}", &f);
    char msg[600];
    CHECK_EQ_INT(verify(&f, k, msg, sizeof msg), TALLY_OK);
    CHECK_STR(msg, "");
    bundle_keys_free(k);
    bundle_signer_free(s);
    tbuf_free(&f);
}

TEST(test_public_key_text)
{
    bundle_keys *k = bundle_keys_new();
    tly_err err = {""};
    bundle_signer *s = new_signer();
    REQUIRE(s);
    static const char *const bad[] = {
        "", "ed25519:", "ed448:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", /* 43 characters */
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", /* non-zero unused bits */
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", /* 36 bytes */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_EQ_INT(bundle_keys_add(k, bad[i], &err), TALLY_ECONFIG);
        CHECK_CONTAINS(err.msg, "public key: expected \"ed25519:\" and the base64 of 32 bytes");
    }
    CHECK_EQ_INT(bundle_keys_count(k), 0);
    char padded[80];
    snprintf(padded, sizeof padded, "  %s\n", bundle_signer_public(s));
    CHECK_EQ_INT(bundle_keys_add(k, padded, &err), TALLY_OK);
    CHECK_EQ_INT(bundle_keys_add(k, bundle_signer_public(s), &err), TALLY_OK);
    CHECK_EQ_INT(bundle_keys_count(k), 1); /* the same key twice is one key */
    bundle_keys_free(k);
    bundle_signer_free(s);
}

TEST(test_base64_is_strict_and_round_trips)
{
    unsigned char in[6] = {0x00, 0xff, 0x10, 0x80, 0x7f, 0x01}, out[8];
    char text[B64_ENCODED_SIZE(6)];
    size_t got;
    for (size_t n = 0; n <= 6; n++) {
        size_t len = b64_encode(in, n, text);
        CHECK_EQ_INT(len, (n + 2) / 3 * 4);
        got = 99;
        CHECK_EQ_INT(b64_decode(text, len, out, &got), TALLY_OK);
        CHECK_EQ_INT(got, n);
        CHECK(!memcmp(in, out, n));
    }
    CHECK_EQ_INT(b64_decode("QQ==", 4, out, &got), TALLY_OK);
    CHECK_EQ_INT(got, 1);
    CHECK_EQ_INT(b64_decode("QR==", 4, out, &got), TALLY_EINVAL);   /* same byte, unused bits set */
    CHECK_EQ_INT(b64_decode("QUI=", 4, out, &got), TALLY_OK);
    CHECK_EQ_INT(got, 2);
    CHECK_EQ_INT(b64_decode("QUJ=", 4, out, &got), TALLY_EINVAL);
    CHECK_EQ_INT(b64_decode("QQ", 2, out, &got), TALLY_EINVAL);      /* padding required */
    CHECK_EQ_INT(b64_decode("Q Q=", 4, out, &got), TALLY_EINVAL);
    CHECK_EQ_INT(b64_decode("QQ==QQ==", 8, out, &got), TALLY_EINVAL); /* padding only at the end */
    CHECK_EQ_INT(b64_decode("Q===", 4, out, &got), TALLY_EINVAL);
    CHECK_EQ_INT(b64_decode("QUJD", 4, out, &got), TALLY_OK);
    CHECK_EQ_INT(got, 3);
}

TEST(test_keygen_file_is_private_and_never_replaced)
{
    char dir[] = "/tmp/tally-test-keygen-XXXXXX", path[64];
    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/key", dir);
    mode_t old = umask(0);
    bundle_signer *s = NULL, *again = NULL, *loaded = NULL;
    tly_err err = {""};
    int rc = bundle_keygen(path, &s, &err);
    umask(old);
    REQUIRE(rc == TALLY_OK && s);
    struct stat st;
    REQUIRE(stat(path, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    CHECK_EQ_INT(bundle_keygen(path, &again, &err), TALLY_EIO);
    CHECK_CONTAINS(err.msg, "already exists (not replaced)");
    CHECK(again == NULL);
    CHECK_EQ_INT(bundle_signer_load(path, &loaded, &err), TALLY_OK);
    REQUIRE(loaded);
    CHECK_STR(bundle_signer_public(loaded), bundle_signer_public(s)); /* the file was left as it was */
    bundle_signer_free(s);
    bundle_signer_free(loaded);
    unlink(path);
    rmdir(dir);
}

TEST(test_extract_writes_the_scripts_and_nothing_else)
{
    bundle_signer *s = new_signer();
    REQUIRE(s);
    bundle_keys *k = keys_of(s, NULL);
    tbuf f = TBUF_INIT;
    sign(s, good_payload, &f);
    bundle *b = NULL;
    tly_err err = {""};
    REQUIRE(bundle_verify(f.data, f.len, 0, k, &b, &err) == TALLY_OK);
    char dir[] = "/tmp/tally-test-extract-XXXXXX", path[96];
    REQUIRE(mkdtemp(dir));
    CHECK_EQ_INT(bundle_extract(b, dir, &err), TALLY_OK);
    snprintf(path, sizeof path, "%s/20_b.lua", dir);
    FILE *fp = fopen(path, "r");
    char text[200] = "";
    if (fp) {
        size_t n = fread(text, 1, sizeof text - 1, fp);
        text[n] = '\0';
        fclose(fp);
    }
    CHECK_STR(text, b->scripts[1].source);
    /* a second extraction into the same folder refuses to write over what is there */
    CHECK_EQ_INT(bundle_extract(b, dir, &err), TALLY_EIO);
    CHECK_CONTAINS(err.msg, "10_a.lua");
    for (size_t i = 0; i < b->nscripts; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, b->scripts[i].file);
        CHECK(unlink(path) == 0);
    }
    CHECK(rmdir(dir) == 0); /* nothing else was written */
    bundle_free(b);
    bundle_keys_free(k);
    bundle_signer_free(s);
    tbuf_free(&f);
}

__attribute__((destructor)) static void remove_keydir(void)
{
    if (keydir[0]) rmdir(keydir);
}
