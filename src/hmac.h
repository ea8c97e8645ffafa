/* HMAC-SHA256 for rules (ctx:hmac), computed by OpenSSL's libcrypto: keyed pseudonyms of personal
 * data (the tally.privacy rule's `hash` action). No crypto is written here, only the calls. */
#ifndef TALLY_HMAC_H
#define TALLY_HMAC_H

#include <lua.h>
#include <stddef.h>

#include "internal.h"

/* Limits of ctx:hmac, raised as Lua errors naming the argument. A key longer than SHA-256's 64-byte
 * block is hashed down by HMAC anyway, so 1 KiB is generous; the text limit is a message's. */
#define HMAC_KEY_MAX  1024
#define HMAC_TEXT_MAX TALLY_MAX_MESSAGE_BYTES

/* Writes HMAC-SHA256(key, text) into hex as 64 lowercase hex digits and a NUL. TALLY_OK, or
 * TALLY_EINVAL (an empty key) / TALLY_ENOMEM (libcrypto failed) with the reason in err. */
int hmac_sha256_hex(const void *key, size_t keylen, const void *text, size_t textlen, char hex[65], tly_err *err);

/* ctx:hmac(key, text) -> hex string: the method rules.c puts on every rule's ctx (argument 1 is
 * the ctx, unused). Raises on bad arguments; charges the hashing to the sandbox's work meter. */
int hmac_ctx_method(lua_State *L);

#endif
