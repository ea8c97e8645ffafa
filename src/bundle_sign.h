/* The private-key side of signed rule bundles: key generation and signing, for `tally rules
 * keygen` and `tally rules pack`. The runtime never calls these: it reads public keys only
 * (bundle.h). Keys are Ed25519 through OpenSSL's libcrypto; a private key file is PKCS#8 PEM,
 * so `openssl pkey -in KEYFILE -pubout` reads it too. */
#ifndef TALLY_BUNDLE_SIGN_H
#define TALLY_BUNDLE_SIGN_H

#include <stddef.h>

#include "bundle.h"

/* "ed25519:" + base64 of 32 bytes + NUL */
#define BUNDLE_PUBKEY_TEXT 53

typedef struct bundle_signer bundle_signer;

/* Makes a new key pair and writes the private key to path with mode 0600, refusing to replace
 * anything already there (file or link). *out (bundle_signer_free) holds it. TALLY_OK, TALLY_EIO
 * naming the path, TALLY_ENOMEM. */
int  bundle_keygen(const char *path, bundle_signer **out, tly_err *err);
/* Reads a private key file written by bundle_keygen (or any Ed25519 PKCS#8 PEM). TALLY_OK,
 * TALLY_EIO (cannot read), TALLY_EINVAL (not an Ed25519 private key). */
int  bundle_signer_load(const char *path, bundle_signer **out, tly_err *err);
void bundle_signer_free(bundle_signer *s);
/* The public key as text ("ed25519:..."), for bundle_keys_add and operators, and its key id. */
const char *bundle_signer_public(const bundle_signer *s);
const char *bundle_signer_key_id(const bundle_signer *s);

/* Signs payload (the JSON text of docs/bundles.md's payload) and appends the whole bundle file
 * to out. TALLY_OK or TALLY_ENOMEM. */
int  bundle_sign(const bundle_signer *s, const char *payload, size_t len, tbuf *out, tly_err *err);

#endif
