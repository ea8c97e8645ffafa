/* Reading signed rule bundles (docs/bundles.md). The order of the checks is the point: size,
 * envelope, canonical bytes, key, signature, and only then the payload, so that no byte a
 * trusted key did not sign reaches the JSON parser's payload pass or, later, Lua. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base64.h"
#include "bundle.h"
#include "iso8601.h"

struct bundle_keys {
    size_t n;
    struct {
        unsigned char raw[32];
        char          id[BUNDLE_KEY_ID_LEN + 1];
        EVP_PKEY     *pkey;
    } k[BUNDLE_MAX_KEYS];
};

bundle_keys *bundle_keys_new(void) { return calloc(1, sizeof(bundle_keys)); }

void bundle_keys_free(bundle_keys *k)
{
    if (!k) return;
    for (size_t i = 0; i < k->n; i++) EVP_PKEY_free(k->k[i].pkey);
    free(k);
}

size_t bundle_keys_count(const bundle_keys *k) { return k ? k->n : 0; }

int bundle_key_id(const unsigned char pub[32], char out[BUNDLE_KEY_ID_LEN + 1], tly_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(pub, 32, md, &mdlen, EVP_sha256(), NULL) || mdlen < BUNDLE_KEY_ID_LEN / 2)
        return tly_err_set(err, TALLY_ENOMEM, "key id: SHA-256 failed (libcrypto)");
    for (int i = 0; i < BUNDLE_KEY_ID_LEN / 2; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
    return TALLY_OK;
}

int bundle_keys_add(bundle_keys *k, const char *text, tly_err *err)
{
    assert(k && text);
    static const char want[] = "public key: expected \"" BUNDLE_PUBKEY_PREFIX "\" and the base64 of 32 bytes";
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r') text++;
    size_t len = strlen(text), plen = strlen(BUNDLE_PUBKEY_PREFIX);
    while (len && (text[len - 1] == ' ' || text[len - 1] == '\t' || text[len - 1] == '\n' || text[len - 1] == '\r')) len--;
    if (len < plen || memcmp(text, BUNDLE_PUBKEY_PREFIX, plen)) return tly_err_set(err, TALLY_ECONFIG, "%s", want);
    unsigned char raw[48];
    size_t rawlen;
    if (len - plen != 44 || b64_decode(text + plen, 44, raw, &rawlen) || rawlen != 32) return tly_err_set(err, TALLY_ECONFIG, "%s", want);
    for (size_t i = 0; i < k->n; i++)
        if (!memcmp(k->k[i].raw, raw, 32)) return TALLY_OK; /* given twice: one key */
    if (k->n == BUNDLE_MAX_KEYS)
        return tly_err_set(err, TALLY_ECONFIG, "public key: more than %d keys", BUNDLE_MAX_KEYS);
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, 32);
    if (!pkey) return tly_err_set(err, TALLY_ECONFIG, "public key: libcrypto refuses it as an Ed25519 key");
    int rc = bundle_key_id(raw, k->k[k->n].id, err);
    if (rc) {
        EVP_PKEY_free(pkey);
        return rc;
    }
    memcpy(k->k[k->n].raw, raw, 32);
    k->k[k->n++].pkey = pkey;
    return TALLY_OK;
}

void bundle_free(bundle *b)
{
    if (!b) return;
    tj_arena_free(b->arena);
    free(b->scripts);
    free(b);
}

int bundle_envelope(tbuf *out, const char *key_id, const unsigned char *payload, size_t plen,
                    const unsigned char sig[64])
{
    char sig64[B64_ENCODED_SIZE(64)];
    b64_encode(sig, 64, sig64);
    if (tbuf_reserve(out, B64_ENCODED_SIZE(plen) + 256)) return TALLY_ENOMEM;
    tbuf_printf(out, "{\"format\":%d,\"key_id\":\"%s\",\"payload\":\"", BUNDLE_FORMAT, key_id);
    out->len += b64_encode(payload, plen, out->data + out->len);
    tbuf_printf(out, "\",\"signature\":\"%s\"}\n", sig64);
    return out->oom ? TALLY_ENOMEM : TALLY_OK;
}

int bundle_signed_bytes(tbuf *out, const char *key_id, const unsigned char *payload, size_t plen)
{
    tbuf_puts(out, BUNDLE_SIGNED_TAG);
    tbuf_puts(out, key_id);
    tbuf_putc(out, '\n');
    tbuf_append(out, payload, plen);
    return out->oom ? TALLY_ENOMEM : TALLY_OK;
}

int bundle_name_ok(const char *name, size_t len)
{
    if (len < 5 || len > BUNDLE_MAX_NAME || name[0] == '.' || memcmp(name + len - 4, ".lua", 4)) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return 0;
    }
    return 1;
}

/* ---- the envelope ---- */

static const tj_value *member(const tj_value *obj, const char *key, tj_type want, const char *field,
                              const char *what, int required, int *rc, tly_err *err)
{
    if (*rc) return NULL;
    const tj_value *v = tj_object_get(obj, key);
    if (!v) {
        if (required) *rc = tly_err_set(err, TALLY_EINVAL, "%s: missing", field);
        return NULL;
    }
    int ok = v->type == want || (want == TJ_TRUE && v->type == TJ_FALSE);
    if (!ok) *rc = tly_err_set(err, TALLY_EINVAL, "%s: expected %s", field, what);
    return ok ? v : NULL;
}

/* Fields outside `known` are refused: a reader that skipped them would accept files it does
 * not understand (a later format says so with "format"). */
static int only_known(const tj_value *obj, const char *const *known, const char *where, tly_err *err)
{
    for (size_t i = 0; i < obj->u.obj.n; i++) {
        int found = 0;
        for (size_t k = 0; known[k] && !found; k++) /* by length too: a key may hold a NUL */
            found = obj->u.obj.m[i].klen == strlen(known[k]) && !memcmp(obj->u.obj.m[i].key, known[k], obj->u.obj.m[i].klen);
        if (!found) {
            char key[64];
            tly_escape(obj->u.obj.m[i].key, key, sizeof key);
            return tly_err_set(err, TALLY_EINVAL, "%s: unknown field \"%s\"", where, key);
        }
    }
    return TALLY_OK;
}

static int is_key_id(const char *s, size_t len)
{
    if (len != BUNDLE_KEY_ID_LEN) return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int check_signature(const EVP_PKEY *key, const tbuf *tbs, const unsigned char sig[64])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    /* NULL digest: Ed25519 hashes the message itself (PureEdDSA, RFC 8032) */
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, (EVP_PKEY *)key) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, (const unsigned char *)tbs->data, tbs->len) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

static int parse_payload(bundle *b, const char *text, size_t len, tly_err *err);

int bundle_verify(const char *bytes, size_t len, size_t max_bytes, const bundle_keys *keys, bundle **out,
                  tly_err *err)
{
    assert(bytes && keys && out && err);
    *out = NULL;
    if (!max_bytes) max_bytes = BUNDLE_MAX_BYTES;
    if (len > max_bytes)
        return tly_err_set(err, TALLY_ETOOBIG, "bundle: %zu bytes, over the %zu-byte limit", len, max_bytes);
    bundle *b = calloc(1, sizeof *b);
    if (!b || !(b->arena = tj_arena_new())) {
        free(b);
        return tly_err_set(err, TALLY_ENOMEM, "bundle: out of memory");
    }
    tj_value *env;
    tj_error je;
    int rc = TALLY_OK;
    unsigned char *payload = NULL, sig[64 + 3];
    size_t plen = 0, siglen;
    tbuf canon = TBUF_INIT, tbs = TBUF_INIT;
    if (tj_parse(b->arena, bytes, len, &env, &je)) {
        rc = tly_err_set(err, TALLY_EINVAL, "bundle: invalid JSON: %s", je.msg);
        goto out;
    }
    if (env->type != TJ_OBJECT) {
        rc = tly_err_set(err, TALLY_EINVAL, "bundle: expected a JSON object");
        goto out;
    }
    static const char *const known[] = {"format", "key_id", "payload", "signature", NULL};
    rc = only_known(env, known, "bundle", err);
    const tj_value *format = member(env, "format", TJ_INT, "format", "an integer", 1, &rc, err);
    if (!rc && format->u.i != BUNDLE_FORMAT)
        rc = tly_err_set(err, TALLY_EINVAL, "format: %lld is not supported (this build reads format %d)",
                         (long long)format->u.i, BUNDLE_FORMAT);
    const tj_value *kid = member(env, "key_id", TJ_STRING, "key_id", "a string", 1, &rc, err);
    if (!rc && !is_key_id(kid->u.str.s, kid->u.str.len))
        rc = tly_err_set(err, TALLY_EINVAL, "key_id: expected %d lowercase hex digits", BUNDLE_KEY_ID_LEN);
    const tj_value *p64 = member(env, "payload", TJ_STRING, "payload", "a string", 1, &rc, err);
    const tj_value *s64 = member(env, "signature", TJ_STRING, "signature", "a string", 1, &rc, err);
    if (rc) goto out;
    if (!(payload = malloc(p64->u.str.len / 4 * 3 + 1))) {
        rc = tly_err_set(err, TALLY_ENOMEM, "bundle: out of memory");
        goto out;
    }
    if (b64_decode(p64->u.str.s, p64->u.str.len, payload, &plen)) {
        rc = tly_err_set(err, TALLY_EINVAL, "payload: not canonical base64");
        goto out;
    }
    if (s64->u.str.len != 88 || b64_decode(s64->u.str.s, 88, sig, &siglen) || siglen != 64) {
        rc = tly_err_set(err, TALLY_EINVAL, "signature: expected the base64 of 64 bytes");
        goto out;
    }
    /* The signature covers key_id and payload; requiring the exact bytes `pack` writes covers
     * the rest (spacing, member order, format), so any changed byte is refused. */
    if (bundle_envelope(&canon, kid->u.str.s, payload, plen, sig) ||
        bundle_signed_bytes(&tbs, kid->u.str.s, payload, plen)) {
        rc = tly_err_set(err, TALLY_ENOMEM, "bundle: out of memory");
        goto out;
    }
    if (canon.len != len || memcmp(canon.data, bytes, len)) {
        rc = tly_err_set(err, TALLY_EINVAL, "bundle: not in the exact form `tally rules pack` writes "
                         "(changed after signing?)");
        goto out;
    }
    const EVP_PKEY *key = NULL;
    for (size_t i = 0; i < keys->n && !key; i++)
        if (!strcmp(keys->k[i].id, kid->u.str.s)) key = keys->k[i].pkey;
    if (!key) {
        rc = tly_err_set(err, TALLY_EINVAL, "key_id: %s is not one of the %zu trusted public key%s", kid->u.str.s,
                         keys->n, keys->n == 1 ? "" : "s");
        goto out;
    }
    if (!check_signature(key, &tbs, sig)) {
        rc = tly_err_set(err, TALLY_EINVAL, "signature: does not verify with key %s (changed after signing?)",
                         kid->u.str.s);
        goto out;
    }
    memcpy(b->key_id, kid->u.str.s, BUNDLE_KEY_ID_LEN + 1);
    rc = parse_payload(b, (const char *)payload, plen, err);
out:
    free(payload);
    tbuf_free(&canon);
    tbuf_free(&tbs);
    if (rc) {
        bundle_free(b);
        return rc;
    }
    *out = b;
    return TALLY_OK;
}

/* ---- the payload (signed: these checks catch a packer's mistakes, not an attacker) ---- */

static int parse_scripts(bundle *b, const tj_value *list, tly_err *err)
{
    if (list->u.arr.n == 0) return tly_err_set(err, TALLY_EINVAL, "rules: expected at least one script");
    if (list->u.arr.n > BUNDLE_MAX_SCRIPTS)
        return tly_err_set(err, TALLY_EINVAL, "rules: %zu scripts, over the limit of %d", list->u.arr.n,
                           BUNDLE_MAX_SCRIPTS);
    if (!(b->scripts = calloc(list->u.arr.n, sizeof *b->scripts)))
        return tly_err_set(err, TALLY_ENOMEM, "bundle: out of memory");
    static const char *const known[] = {"file", "source", NULL};
    for (size_t i = 0; i < list->u.arr.n; i++) {
        const tj_value *s = list->u.arr.items[i];
        char where[64], field[80];
        int rc = TALLY_OK;
        snprintf(where, sizeof where, "rules[%zu]", i);
        if (s->type != TJ_OBJECT) return tly_err_set(err, TALLY_EINVAL, "%s: expected an object", where);
        if ((rc = only_known(s, known, where, err))) return rc;
        snprintf(field, sizeof field, "%s.file", where);
        const tj_value *file = member(s, "file", TJ_STRING, field, "a string", 1, &rc, err);
        if (!rc && !bundle_name_ok(file->u.str.s, file->u.str.len))
            rc = tly_err_set(err, TALLY_EINVAL, "%s: expected a file name ending in .lua (letters, digits, . _ -; "
                             "at most %d bytes; not starting with .)", field, BUNDLE_MAX_NAME);
        if (!rc && i > 0 && strcmp(b->scripts[i - 1].file, file->u.str.s) >= 0)
            rc = tly_err_set(err, TALLY_EINVAL, "%s: \"%s\" is repeated or out of order (scripts are sorted by "
                             "name, the order a rules folder loads in)", field, file->u.str.s);
        snprintf(field, sizeof field, "%s.source", where);
        const tj_value *src = member(s, "source", TJ_STRING, field, "a string", 1, &rc, err);
        if (rc) return rc;
        b->scripts[i] = (bundle_script){file->u.str.s, src->u.str.s, src->u.str.len};
        b->nscripts++;
    }
    return TALLY_OK;
}

static int parse_payload(bundle *b, const char *text, size_t len, tly_err *err)
{
    tj_value *p;
    tj_error je;
    int rc = TALLY_OK;
    if (tj_parse(b->arena, text, len, &p, &je))
        return tly_err_set(err, TALLY_EINVAL, "payload: invalid JSON: %s", je.msg);
    if (p->type != TJ_OBJECT) return tly_err_set(err, TALLY_EINVAL, "payload: expected a JSON object");
    static const char *const known[] = {"version", "created_at", "rules", "rule_config", "tests", NULL};
    if ((rc = only_known(p, known, "payload", err))) return rc;
    const tj_value *version = member(p, "version", TJ_INT, "version", "an integer", 1, &rc, err);
    if (!rc && version->u.i < 1) rc = tly_err_set(err, TALLY_EINVAL, "version: must be 1 or more");
    const tj_value *created = member(p, "created_at", TJ_STRING, "created_at", "a string", 1, &rc, err);
    if (!rc && !tly_iso8601_valid(created->u.str.s, created->u.str.len))
        rc = tly_err_set(err, TALLY_EINVAL, "created_at: expected an RFC 3339 date-time");
    const tj_value *scripts = member(p, "rules", TJ_ARRAY, "rules", "an array of scripts", 1, &rc, err);
    const tj_value *config = member(p, "rule_config", TJ_OBJECT, "rule_config", "an object", 0, &rc, err);
    const tj_value *tests = member(p, "tests", TJ_ARRAY, "tests", "an array", 0, &rc, err);
    if (rc) return rc;
    b->version = version->u.i;
    b->created_at = created->u.str.s;
    if ((rc = parse_scripts(b, scripts, err))) return rc;
    if (config) {
        tbuf t = TBUF_INIT;
        if (tj_write(&t, config) || t.oom || !(b->rule_config = tj_strdup(b->arena, t.data, t.len))) {
            tbuf_free(&t);
            return tly_err_set(err, TALLY_ENOMEM, "bundle: out of memory");
        }
        tbuf_free(&t);
    }
    if (tests && (rc = bundle_check_tests(tests, err))) return rc;
    b->tests = tests;
    return TALLY_OK;
}

/* ---- self-tests: their shape (bundle_selftest.c runs them) ---- */

static int string_list(const tj_value *v, const char *field, tly_err *err)
{
    if (v->type != TJ_ARRAY) return tly_err_set(err, TALLY_EINVAL, "%s: expected an array of strings", field);
    for (size_t i = 0; i < v->u.arr.n; i++)
        if (v->u.arr.items[i]->type != TJ_STRING || !v->u.arr.items[i]->u.str.len)
            return tly_err_set(err, TALLY_EINVAL, "%s[%zu]: expected a non-empty string", field, i);
    return TALLY_OK;
}

int bundle_check_tests(const tj_value *tests, tly_err *err)
{
    if (tests->type != TJ_ARRAY) return tly_err_set(err, TALLY_EINVAL, "tests: expected an array");
    if (tests->u.arr.n > BUNDLE_MAX_TESTS)
        return tly_err_set(err, TALLY_EINVAL, "tests: %zu tests, over the limit of %d", tests->u.arr.n, BUNDLE_MAX_TESTS);
    static const char *const known[] = {"name", "input", "output", "drop", "violations", "absent", NULL};
    for (size_t i = 0; i < tests->u.arr.n; i++) {
        const tj_value *t = tests->u.arr.items[i];
        char where[48], field[64];
        int rc = TALLY_OK;
        snprintf(where, sizeof where, "tests[%zu]", i);
        if (t->type != TJ_OBJECT) return tly_err_set(err, TALLY_EINVAL, "%s: expected an object", where);
        if ((rc = only_known(t, known, where, err))) return rc;
#define FIELD(f) (snprintf(field, sizeof field, "%s.%s", where, f), field)
        const tj_value *name = member(t, "name", TJ_STRING, FIELD("name"), "a string", 1, &rc, err);
        if (!rc && !name->u.str.len) rc = tly_err_set(err, TALLY_EINVAL, "%s: must not be empty", field);
        member(t, "input", TJ_OBJECT, FIELD("input"), "a message (object)", 1, &rc, err);
        const tj_value *drop = member(t, "drop", TJ_TRUE, FIELD("drop"), "true or false", 0, &rc, err);
        const tj_value *output = rc ? NULL : tj_object_get(t, "output");
        const tj_value *viol = rc ? NULL : tj_object_get(t, "violations");
        const tj_value *absent = rc ? NULL : tj_object_get(t, "absent");
        if (output && output->type == TJ_ARRAY) {
            for (size_t k = 0; k < output->u.arr.n && !rc; k++)
                if (output->u.arr.items[k]->type != TJ_OBJECT)
                    rc = tly_err_set(err, TALLY_EINVAL, "%s.output[%zu]: expected a message (object)", where, k);
        } else if (output && output->type != TJ_OBJECT) {
            rc = tly_err_set(err, TALLY_EINVAL, "%s: expected a message (object) or an array of them", FIELD("output"));
        }
        if (!rc && viol) rc = string_list(viol, FIELD("violations"), err);
        if (!rc && absent) rc = string_list(absent, FIELD("absent"), err);
        if (!rc && !output && !drop && !viol && !absent)
            rc = tly_err_set(err, TALLY_EINVAL, "%s: expects nothing (give output, drop, violations or absent)", where);
        if (!rc && drop && drop->type == TJ_TRUE && (output || absent))
            rc = tly_err_set(err, TALLY_EINVAL, "%s: drop is true, so output and absent cannot be checked", where);
#undef FIELD
        if (rc) return rc;
    }
    return TALLY_OK;
}

/* ---- handing scripts to the rules loader ---- */

int bundle_extract(const bundle *b, const char *dir, tly_err *err)
{
    for (size_t i = 0; i < b->nscripts; i++) {
        char path[4096];
        const bundle_script *s = &b->scripts[i];
        assert(bundle_name_ok(s->file, strlen(s->file)));
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, s->file) >= sizeof path)
            return tly_err_set(err, TALLY_EIO, "%s: path too long", dir);
        /* O_EXCL|O_NOFOLLOW: never write through a file or link someone else put there */
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) return tly_err_set(err, TALLY_EIO, "%s: %s", path, strerror(errno));
        size_t off = 0;
        while (off < s->len) {
            ssize_t w = write(fd, s->source + off, s->len - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                int e = errno;
                close(fd);
                return tly_err_set(err, TALLY_EIO, "%s: %s", path, strerror(e));
            }
            off += (size_t)w;
        }
        if (close(fd)) return tly_err_set(err, TALLY_EIO, "%s: %s", path, strerror(errno));
    }
    return TALLY_OK;
}
