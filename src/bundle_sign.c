#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base64.h"
#include "bundle_sign.h"

struct bundle_signer {
    EVP_PKEY *pkey;
    char      pub[BUNDLE_PUBKEY_TEXT];
    char      id[BUNDLE_KEY_ID_LEN + 1];
};

void bundle_signer_free(bundle_signer *s)
{
    if (!s) return;
    EVP_PKEY_free(s->pkey);
    free(s);
}

const char *bundle_signer_public(const bundle_signer *s) { return s->pub; }
const char *bundle_signer_key_id(const bundle_signer *s) { return s->id; }

/* Takes pkey (freed on failure too). */
static int adopt(EVP_PKEY *pkey, bundle_signer **out, tly_err *err)
{
    unsigned char raw[32];
    size_t n = sizeof raw;
    bundle_signer *s = calloc(1, sizeof *s);
    if (!s) {
        EVP_PKEY_free(pkey);
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    s->pkey = pkey;
    if (EVP_PKEY_get_raw_public_key(pkey, raw, &n) != 1 || n != 32) {
        bundle_signer_free(s);
        return tly_err_set(err, TALLY_EINVAL, "cannot read the public half of the key");
    }
    memcpy(s->pub, BUNDLE_PUBKEY_PREFIX, strlen(BUNDLE_PUBKEY_PREFIX));
    b64_encode(raw, 32, s->pub + strlen(BUNDLE_PUBKEY_PREFIX));
    int rc = bundle_key_id(raw, s->id, err);
    if (rc) {
        bundle_signer_free(s);
        return rc;
    }
    *out = s;
    return TALLY_OK;
}

int bundle_keygen(const char *path, bundle_signer **out, tly_err *err)
{
    *out = NULL;
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    int made = ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_keygen(ctx, &pkey) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!made) return tly_err_set(err, TALLY_ENOMEM, "libcrypto could not make an Ed25519 key");
    /* O_EXCL: an existing key is never replaced (it may be the only copy); O_NOFOLLOW: nor a link
     * followed. 0600 at creation, so the key is never readable by others, even for a moment. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        EVP_PKEY_free(pkey);
        return tly_err_set(err, TALLY_EIO, "%s: %s", path, e == EEXIST ? "already exists (not replaced)" : strerror(e));
    }
    FILE *f = fdopen(fd, "w");
    int ok = f && fchmod(fd, 0600) == 0 && PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL) == 1;
    int e = errno;
    if (f) ok = (fclose(f) == 0) && ok;
    else close(fd);
    if (!ok) {
        unlink(path);
        EVP_PKEY_free(pkey);
        return tly_err_set(err, TALLY_EIO, "%s: cannot write the key (%s)", path, strerror(e));
    }
    return adopt(pkey, out, err);
}

int bundle_signer_load(const char *path, bundle_signer **out, tly_err *err)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f) return tly_err_set(err, TALLY_EIO, "%s: %s", path, strerror(errno));
    EVP_PKEY *pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!pkey) return tly_err_set(err, TALLY_EINVAL, "%s: not a PEM private key", path);
    if (EVP_PKEY_get_id(pkey) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(pkey);
        return tly_err_set(err, TALLY_EINVAL, "%s: not an Ed25519 key", path);
    }
    return adopt(pkey, out, err);
}

int bundle_sign(const bundle_signer *s, const char *payload, size_t len, tbuf *out, tly_err *err)
{
    assert(s && payload && out);
    tbuf tbs = TBUF_INIT;
    unsigned char sig[64];
    size_t siglen = sizeof sig;
    if (bundle_signed_bytes(&tbs, s->id, (const unsigned char *)payload, len)) {
        tbuf_free(&tbs);
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, s->pkey) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)tbs.data, tbs.len) == 1 && siglen == 64;
    EVP_MD_CTX_free(ctx);
    tbuf_free(&tbs);
    if (!ok) return tly_err_set(err, TALLY_ENOMEM, "libcrypto could not sign");
    if (bundle_envelope(out, s->id, (const unsigned char *)payload, len, sig))
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    return TALLY_OK;
}
