/* tally's exact JSON codec.
 *
 * Why our own: messages must survive JSON -> C -> Lua -> JSON unchanged. 64-bit integers stay
 * integers, doubles print in the shortest form that reads back to the same bits, null and [] keep
 * their identity, and strings are validated UTF-8. Debian's lua-cjson does none of these exactly.
 *
 * Values live in an arena (tj_arena): a message's whole tree is freed at once. Strings are stored
 * with their length and may contain NUL. TJ_RAW holds already-validated JSON text that is written
 * out verbatim: the hot path passes caller properties through without building a tree. */
#ifndef TALLY_JSON_H
#define TALLY_JSON_H
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define TJ_MAX_DEPTH 64

typedef enum {
    TJ_NULL, TJ_FALSE, TJ_TRUE, TJ_INT, TJ_DOUBLE, TJ_STRING, TJ_ARRAY, TJ_OBJECT, TJ_RAW
} tj_type;

typedef struct tj_value  tj_value;
typedef struct tj_member tj_member;

struct tj_value {
    tj_type type;
    union {
        int64_t i;
        double  d;
        struct { const char *s; size_t len; } str;           /* TJ_STRING and TJ_RAW */
        struct { tj_value **items; size_t n, cap; } arr;      /* TJ_ARRAY */
        struct { tj_member *m; size_t n, cap; } obj;          /* TJ_OBJECT, insertion order kept */
    } u;
};

struct tj_member {
    const char *key;
    size_t      klen;
    tj_value   *val;
};

/* Its own error type, not a tly_err: tests measure texts against the size of msg (test_json_lua). */
typedef struct tj_error {
    size_t offset;     /* byte offset into the input where the problem was found */
    char   msg[128];   /* e.g. "invalid UTF-8 at offset 17", "nesting deeper than 64 at offset 130" */
} tj_error;

/* ---- arena ---- */
typedef struct tj_arena tj_arena;
tj_arena *tj_arena_new(void);
void     *tj_alloc(tj_arena *a, size_t n);           /* 16-byte aligned; NULL on OOM */
char     *tj_strdup(tj_arena *a, const char *s, size_t n); /* NUL-terminated copy */
void      tj_arena_reset(tj_arena *a);               /* frees all values, keeps the first chunk */
void      tj_arena_free(tj_arena *a);
size_t    tj_arena_size(const tj_arena *a);              /* bytes it holds now (for tests, fuzzers) */

/* ---- parse / validate ----
 * Both return TALLY_OK, or TALLY_EINVAL with *err filled (tj_parse: TALLY_ENOMEM when the arena
 * cannot grow, err->msg "out of memory"). Whitespace around the value is allowed,
 * anything else after it is an error. Numbers: an integer literal (no '.', 'e') within int64 is
 * TJ_INT; an integer literal beyond 64 bits is a TJ_RAW holding its text, so that it is written out
 * byte for byte (no C type holds it exactly); anything else is TJ_DOUBLE; literals that overflow a
 * double (1e999) are errors. */
int tj_parse(tj_arena *a, const char *s, size_t len, tj_value **out, tj_error *err);
/* Same checks as tj_parse (syntax, UTF-8, depth, numbers) without building anything: cheap enough
 * for the caller's thread. */
int tj_validate(const char *s, size_t len, tj_error *err);

/* One pass over a JSON text for a caller that must check a document cheaply (tally_send): the
 * checks of tj_validate (same verdict, same error), *written set to the bytes tj_write would write
 * for the tree tj_parse would build, and, for each field asked about, where the value of the LAST
 * member with that key is (JSON's last one wins, as tj_object_get). Fields name members of the
 * root object (parent -1) or of the object value of an earlier root field (parent: its index);
 * deeper members are not looked for. No allocation (but strtod's for a literal over 127 bytes
 * that needs it). TALLY_OK; TALLY_EINVAL with *err as tj_validate fills it; TALLY_ENOMEM. */
typedef struct tj_field {
    const char *key;       /* in: the member's name, klen bytes */
    size_t      klen;
    int         parent;    /* in: -1, or the index of the root field whose object holds it */
    int         found;     /* out: 0 when no such member (or its parent is not the last one) */
    unsigned char first;   /* the value's first byte: '"', '{', '[', 't', 'f', 'n', '-' or a digit */
    int         escaped;   /* a string whose body holds escapes (tj_unescape decodes it) */
    size_t      at, len;   /* the value's text in the input; for a string its body, between the quotes */
    size_t      written;   /* bytes tj_write writes for the value */
} tj_field;
#define TJ_FIELD(name, parent) {name, sizeof name - 1, parent, 0, 0, 0, 0, 0, 0}
int tj_scan(const char *s, size_t len, tj_field *fields, size_t nfields, size_t *written, tj_error *err);
/* tj_parse for a text that tj_validate or tj_scan accepted, without checking it again (the
 * processor builds what a caller checked). Undefined for any other text. */
int tj_parse_valid(tj_arena *a, const char *s, size_t len, tj_value **out);
/* tj_parse_valid, building only the root object (and the member named deep) as a tree: another
 * member whose value is an object or array written exactly as tj_write would write it (compact,
 * the same escapes, numbers in their written form) stays TJ_RAW, a copy of its text, so that
 * tj_write writes the same bytes either way. TALLY_OK or TALLY_ENOMEM. */
int tj_parse_shallow(tj_arena *a, const char *s, size_t len, const char *deep, tj_value **out);
/* deep may be NULL: every member whose text is canonical stays TJ_RAW. */
/* Which of keys[0..n) (n <= 32) are the key of a member of the object text s (validated, keys
 * compared as written, which is as decoded for a text tj_write wrote): bit i set for keys[i]. */
unsigned tj_raw_keys(const char *s, size_t len, const char *const *keys, size_t n);
/* raw: a TJ_RAW object whose text is what tj_write writes for it (as tj_parse_shallow keeps).
 * Its text becomes, in the arena, what tj_write would write had it been expanded and each member
 * of the object add then set with tj_object_set (add's keys must not be in raw): the members
 * spliced in before the closing brace, in add's order, without building raw's tree.
 * TALLY_OK, TALLY_EINVAL (a non-finite double in add), TALLY_ENOMEM. */
int tj_raw_append(tj_arena *a, tj_value *raw, const tj_value *add);

/* Walks a JSON text without building a tree: after the same checks as tj_parse, calls the handler
 * for each token in document order. Strings and keys are given as their body in the input (between
 * the quotes), still escaped when `escaped` is set (tj_unescape decodes them); scalar() gets a
 * TJ_NULL/TRUE/FALSE/INT/DOUBLE value, or a TJ_RAW pointing into the input for an integer beyond
 * 64 bits. TALLY_OK, or TALLY_EINVAL with *err filled: for bad text, and when a handler returned
 * non-zero, which stops the walk (err->msg "stopped by the handler"). The walk keeps no
 * allocation of its own while a handler runs, so a handler may longjmp out of it (a Lua error).
 * Nesting is at most TJ_MAX_DEPTH. */
typedef struct tj_handler {
    int (*begin)(void *ud, int object);  /* '{' (object = 1) or '[' */
    int (*end)(void *ud);                /* the matching '}' or ']' */
    int (*key)(void *ud, const char *body, size_t len, int escaped);
    int (*string)(void *ud, const char *body, size_t len, int escaped);
    int (*scalar)(void *ud, const tj_value *v);
} tj_handler;
int tj_walk(const char *s, size_t len, const tj_handler *h, void *ud, tj_error *err);
/* Decodes a validated, still escaped string body into out (room for len bytes is enough: decoding
 * never lengthens it). Returns the decoded length. */
size_t tj_unescape(char *out, const char *body, size_t len);
/* The double nearest to a validated number literal (e.g. a TJ_RAW integer beyond 64 bits). */
double tj_literal_double(const char *s, size_t len);

/* ---- build ---- (NULL on OOM) */
tj_value *tj_new(tj_arena *a, tj_type t);
tj_value *tj_new_int(tj_arena *a, int64_t i);
tj_value *tj_new_double(tj_arena *a, double d);
tj_value *tj_new_string(tj_arena *a, const char *s, size_t len);  /* copies s */
tj_value *tj_new_raw(tj_arena *a, const char *json, size_t len);  /* copies; caller vouches it is valid */
/* TALLY_OK, TALLY_EINVAL (arr is not an array), TALLY_ENOMEM */
int       tj_array_push(tj_arena *a, tj_value *arr, tj_value *v);
/* Sets key (replacing an existing member with the same key); copies the key. TALLY_OK,
 * TALLY_EINVAL (obj is not an object), TALLY_ENOMEM. */
int       tj_object_set(tj_arena *a, tj_value *obj, const char *key, size_t klen, tj_value *v);
tj_value *tj_object_get(const tj_value *obj, const char *key);     /* NULL when absent or not object */
int       tj_object_remove(tj_value *obj, const char *key);        /* 1 removed, 0 absent */
/* Turns a TJ_RAW value into a real tree in place (same arena); anything else is left as it is.
 * TALLY_OK, or tj_parse's codes. */
int       tj_expand(tj_arena *a, tj_value *v, tj_error *err);

/* ---- write ----
 * Compact JSON (no spaces). Strings: escapes only what JSON requires ("\\ \" and < 0x20, plus
 * U+2028/2029 as \u2028/\u2029); other UTF-8 is written as is. Doubles: shortest round-trip text;
 * an integral double keeps a ".0" (or exponent) so it reads back as a double. NaN and +-Inf cannot
 * be represented: tj_write returns TALLY_EINVAL for them. TALLY_OK, TALLY_EINVAL, or TALLY_ENOMEM
 * (b->oom). */
int tj_write(tbuf *b, const tj_value *v);
void tj_write_string(tbuf *b, const char *s, size_t len);           /* quoted + escaped */
size_t tj_string_size(const char *s, size_t len);                   /* what tj_write_string writes */
void tj_write_double(tbuf *b, double d);                            /* shortest round-trip form */
/* Doubles use plain notation when the decimal exponent is in [-6, 20] ("0.000001", "1.0", "-0.0",
 * "123456789012345680000.0"), else "1e21", "1e-7", "1.7976931348623157e308" (no '+', no leading
 * exponent zeros). tj_write_double writes "null" for NaN/Inf; tj_write refuses them instead.
 * Objects: tj_object_get/tj_object_set act on the LAST member with that key (JSON's "last one
 * wins" when a parsed object has duplicates); tj_object_remove removes every member with it. */

/* UTF-8 check used for strings that do not come through the parser (C API arguments).
 * Returns 1 when valid; 0 when not, with *bad_offset (if non-NULL) set to the first bad byte.
 * Rejects overlongs, surrogates (U+D800-DFFF), code points above U+10FFFF and truncated sequences. */
int tj_utf8_valid(const char *s, size_t len, size_t *bad_offset);

#endif
