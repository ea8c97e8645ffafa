/* Signed rule bundles: rule scripts, their rule_config and self-tests in one file, signed with
 * Ed25519, so that rules can be shipped to installed copies and trusted only when they come from
 * a known key (docs/bundles.md is the format; this is its only reader).
 *
 * Parsing is meant for bytes from the network: the size is checked before anything else, the
 * signature before the payload is even parsed, and every field after that, with the field named
 * in the error. Nothing in this module runs a script: a caller hands scripts to Lua only after
 * bundle_verify succeeded. Verification needs public keys only; the private-key side (keygen,
 * signing) is in bundle_sign.c, which only the CLI calls. Any thread; no shared state. */
#ifndef TALLY_BUNDLE_H
#define TALLY_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "json.h"

#define BUNDLE_FORMAT      1
#define BUNDLE_MAX_BYTES   (1u << 20)  /* default size cap of a whole bundle file */
#define BUNDLE_MAX_KEYS    16          /* trusted public keys at once (rotation needs two) */
#define BUNDLE_MAX_SCRIPTS 256
#define BUNDLE_MAX_NAME    128         /* bytes of a script's file name */
#define BUNDLE_MAX_TESTS   1000
#define BUNDLE_KEY_ID_LEN  16          /* hex characters */
#define BUNDLE_PUBKEY_PREFIX "ed25519:"
/* What the signature covers starts with this line (docs/bundles.md, "What is signed"). */
#define BUNDLE_SIGNED_TAG  "tally rule bundle 1\n"

/* ---- trusted public keys ---- */
typedef struct bundle_keys bundle_keys;
bundle_keys *bundle_keys_new(void);   /* NULL on OOM */
void         bundle_keys_free(bundle_keys *k);
/* Adds a key in its text form "ed25519:<base64 of the 32 raw bytes>" (surrounding whitespace
 * ignored). TALLY_OK, or TALLY_ECONFIG naming what is wrong, TALLY_ENOMEM. */
int          bundle_keys_add(bundle_keys *k, const char *text, tly_err *err);
size_t       bundle_keys_count(const bundle_keys *k);

/* The key id of a raw Ed25519 public key: the first 8 bytes of SHA-256 over the 32 key bytes,
 * as 16 lowercase hex digits. Short enough to print, long enough never to collide by accident;
 * it only picks the key: the signature is what is trusted. TALLY_OK or TALLY_ENOMEM. */
int bundle_key_id(const unsigned char pub[32], char out[BUNDLE_KEY_ID_LEN + 1], tly_err *err);

/* ---- a verified bundle ---- */
typedef struct bundle_script {
    const char *file;      /* "10_names.lua": a plain name, no '/', not starting with '.' */
    const char *source;    /* the script text (NUL-terminated; len bytes) */
    size_t      len;
} bundle_script;

typedef struct bundle {
    int64_t        version;       /* >= 1 */
    const char    *created_at;    /* RFC 3339 */
    char           key_id[BUNDLE_KEY_ID_LEN + 1];  /* the key that signed it */
    bundle_script *scripts;       /* in load order: strictly increasing by strcmp of file */
    size_t         nscripts;
    const char    *rule_config;   /* compact JSON object text, or NULL */
    const tj_value *tests;        /* the self-tests (an array, each one checked), or NULL */
    tj_arena      *arena;         /* owns everything above */
} bundle;

/* Checks bytes[0..len) as a bundle signed by one of keys and, only when the signature holds,
 * parses and checks the payload. max_bytes: the size cap (0: BUNDLE_MAX_BYTES), checked first.
 * On success *out is a new bundle (bundle_free). Errors: TALLY_ETOOBIG (over the cap),
 * TALLY_EINVAL (malformed, unknown key, bad signature, a bad field: the text names it),
 * TALLY_ENOMEM; *out is NULL then. */
int  bundle_verify(const char *bytes, size_t len, size_t max_bytes, const bundle_keys *keys, bundle **out,
                   tly_err *err);
void bundle_free(bundle *b);

/* Checks a self-test list (the tests array of a payload, or a --tests file): TALLY_OK or
 * TALLY_EINVAL naming the test and field, e.g. "tests[2].drop: expected true or false". */
int  bundle_check_tests(const tj_value *tests, tly_err *err);
/* A script file name a bundle may carry (see bundle_script.file): 1 or 0. */
int  bundle_name_ok(const char *name, size_t len);

/* Writes the scripts into the existing folder dir (which should be private and empty), so that
 * rules_open(dir) loads them in the bundle's order. TALLY_OK or TALLY_EIO naming the file. */
int  bundle_extract(const bundle *b, const char *dir, tly_err *err);

/* The envelope exactly as bundle_sign writes it and bundle_verify accepts it (docs/bundles.md).
 * Appends to out; TALLY_OK, or TALLY_ENOMEM. */
int  bundle_envelope(tbuf *out, const char *key_id, const unsigned char *payload, size_t plen,
                     const unsigned char sig[64]);
/* The bytes the signature covers: BUNDLE_SIGNED_TAG, key_id, '\n', then the payload. TALLY_OK, or
 * TALLY_ENOMEM. */
int  bundle_signed_bytes(tbuf *out, const char *key_id, const unsigned char *payload, size_t plen);

#endif
