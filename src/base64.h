/* Standard base64 (RFC 4648 section 4, with padding): how signed bundles carry binary bytes
 * (payload, signature, public keys) inside JSON text. */
#ifndef TALLY_BASE64_H
#define TALLY_BASE64_H

#include <stddef.h>

/* Bytes b64_encode writes for n input bytes, the terminating NUL included. */
#define B64_ENCODED_SIZE(n) (((n) + 2) / 3 * 4 + 1)

/* Writes the encoding of in[0..n) and a NUL into out (B64_ENCODED_SIZE(n) bytes). Returns its length. */
size_t b64_encode(const unsigned char *in, size_t n, char *out);

/* Decodes s[0..len) into out (room for len / 4 * 3 bytes), strictly: the length is a multiple
 * of 4, only the alphabet and trailing '=' padding, no whitespace, and the unused bits of the
 * last character are zero. So each byte string has exactly one accepted encoding: a changed
 * character always changes the bytes. TALLY_OK with the decoded length in *outlen, or TALLY_EINVAL
 * (not such an encoding; *outlen untouched). */
int b64_decode(const char *s, size_t len, unsigned char *out, size_t *outlen);

#endif
