/* libFuzzer harness for the signed-bundle reader (src/bundle.c): the bytes a device fetches.
 *
 * The first input byte picks what the rest is:
 *  'P' a payload, signed here with a fixed key, so the payload checks (which sit behind the
 *      signature) are reached; when it verifies, every field read back must hold the documented
 *      invariants, and the same file with any one byte changed must be refused;
 *  anything else: a whole bundle file, verified against that key (forging is not expected: the
 *      point is that no envelope crashes, leaks or gets past the checks unsigned).
 * Properties are checked with abort(), so the fuzzer keeps the input. */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "bundle.h"

static EVP_PKEY *priv;
static bundle_keys *keys;
static char key_id[BUNDLE_KEY_ID_LEN + 1];

static void fail(const char *why)
{
    fprintf(stderr, "fuzz_bundle: %s\n", why);
    abort();
}

static void setup(void)
{
    static const unsigned char seed[32] = "tally fuzz_bundle fixed key....";
    unsigned char pub[32];
    size_t n = sizeof pub;
    char text[80];
    tly_err err;
    priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
    if (!priv || EVP_PKEY_get_raw_public_key(priv, pub, &n) != 1) fail("setup: libcrypto");
    strcpy(text, BUNDLE_PUBKEY_PREFIX);
    b64_encode(pub, 32, text + strlen(text));
    keys = bundle_keys_new();
    if (!keys || bundle_keys_add(keys, text, &err) || bundle_key_id(pub, key_id, &err)) fail("setup: keys");
}

static void sign(const uint8_t *payload, size_t len, tbuf *out)
{
    tbuf tbs = TBUF_INIT;
    unsigned char sig[64];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (bundle_signed_bytes(&tbs, key_id, payload, len) || !ctx ||
        EVP_DigestSignInit(ctx, NULL, NULL, NULL, priv) != 1 ||
        EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)tbs.data, tbs.len) != 1 ||
        bundle_envelope(out, key_id, payload, len, sig))
        fail("sign");
    EVP_MD_CTX_free(ctx);
    tbuf_free(&tbs);
}

static void check_read_back(const bundle *b)
{
    if (b->version < 1 || !b->created_at || !b->nscripts || b->nscripts > BUNDLE_MAX_SCRIPTS) fail("header fields");
    if (strcmp(b->key_id, key_id)) fail("key id");
    for (size_t i = 0; i < b->nscripts; i++) {
        const bundle_script *s = &b->scripts[i];
        if (!bundle_name_ok(s->file, strlen(s->file))) fail("a file name that may not be written");
        if (strchr(s->file, '/')) fail("a path in a file name");
        if (i && strcmp(b->scripts[i - 1].file, s->file) >= 0) fail("scripts out of order");
    }
    tly_err err;
    if (b->tests && bundle_check_tests(b->tests, &err)) fail("accepted tests that do not check");
    if (b->rule_config && b->rule_config[0] != '{') fail("rule_config not an object");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!priv) setup();
    if (!size) return 0;
    bundle *b = NULL;
    tly_err err;
    if (data[0] != 'P') {
        int rc = bundle_verify((const char *)data + 1, size - 1, 0, keys, &b, &err);
        if (!rc) check_read_back(b);
        else if (b) fail("failed verify left a bundle");
        bundle_free(b);
        return 0;
    }
    tbuf f = TBUF_INIT;
    sign(data + 1, size - 1, &f);
    int rc = bundle_verify(f.data, f.len, 0, keys, &b, &err);
    if (rc && rc != TALLY_EINVAL && rc != TALLY_ETOOBIG) fail("unexpected status");
    if (!rc) {
        check_read_back(b);
        bundle_free(b);
        b = NULL;
        /* one changed byte, chosen by the input, must be refused */
        size_t at = (size * 2654435761u + data[size - 1]) % f.len;
        f.data[at] ^= (char)(1 + data[size / 2] % 255);
        if (!bundle_verify(f.data, f.len, 0, keys, &b, &err)) fail("a changed byte still verified");
    }
    bundle_free(b);
    tbuf_free(&f);
    return 0;
}
