#include "hmac.h"

#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

int hmac_sha256_hex(const void *key, size_t keylen, const void *text, size_t textlen, char hex[65], tly_err *err)
{
    if (keylen == 0) return tly_err_set(err, TALLY_EINVAL, "key: must not be empty");
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    /* HMAC() keeps no state between calls: safe on the processor thread and any other */
    if (!HMAC(EVP_sha256(), key, (int)keylen, text, textlen, mac, &maclen) || maclen != 32)
        return tly_err_set(err, TALLY_ENOMEM, "HMAC-SHA256 failed in libcrypto");
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < maclen; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 15];
    }
    hex[64] = '\0';
    return TALLY_OK;
}

int hmac_ctx_method(lua_State *L)
{
    size_t keylen, textlen;
    if (lua_type(L, 2) != LUA_TSTRING) return luaL_error(L, "ctx:hmac: key must be a string (got %s)", luaL_typename(L, 2));
    if (lua_type(L, 3) != LUA_TSTRING) return luaL_error(L, "ctx:hmac: text must be a string (got %s)", luaL_typename(L, 3));
    const char *key = lua_tolstring(L, 2, &keylen), *text = lua_tolstring(L, 3, &textlen);
    if (keylen < 1 || keylen > HMAC_KEY_MAX)
        return luaL_error(L, "ctx:hmac: key must be 1 to %d bytes (got %I)", HMAC_KEY_MAX, (lua_Integer)keylen);
    if (textlen > HMAC_TEXT_MAX)
        return luaL_error(L, "ctx:hmac: text must be at most %d bytes (got %I)", HMAC_TEXT_MAX, (lua_Integer)textlen);
    /* SHA-256 costs a few ns per byte, and HMAC runs four compressions whatever the text: charged
     * like the other helpers that walk a string, plus that fixed part */
    luaL_chargework(L, 64 + ((keylen + textlen) >> 2));
    char hex[65];
    tly_err err;
    if (hmac_sha256_hex(key, keylen, text, textlen, hex, &err) != TALLY_OK) return luaL_error(L, "ctx:hmac: %s", err.msg);
    lua_pushlstring(L, hex, 64);
    return 1;
}
