/* Consent preferences and the destinations' categories (consent.h). */
#include "consent.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_id(const char *s, size_t len, const char *field, tly_err *err, int rc)
{
    if (len == 0) return tly_err_set(err, rc, "%s: a category id must not be empty", field);
    if (len > CONSENT_MAX_ID_BYTES)
        return tly_err_set(err, rc, "%s: category id \"%.20s...\" is %zu bytes, over the %d-byte limit", field, s, len,
                           CONSENT_MAX_ID_BYTES);
    return TALLY_OK;
}

int consent_check_dest(const tj_value *v, const char *where, tly_err *err)
{
    char field[96];
    snprintf(field, sizeof field, "%s.consent", where);
    if (v->type == TJ_STRING) return check_id(v->u.str.s, v->u.str.len, field, err, TALLY_ECONFIG);
    if (v->type != TJ_ARRAY || v->u.arr.n == 0)
        return tly_err_set(err, TALLY_ECONFIG, "%s: expected a category id or a non-empty list of them", field);
    if (v->u.arr.n > CONSENT_MAX_CATEGORIES)
        return tly_err_set(err, TALLY_ECONFIG, "%s: %zu categories, over the limit of %d", field, v->u.arr.n,
                           CONSENT_MAX_CATEGORIES);
    for (size_t i = 0; i < v->u.arr.n; i++) {
        const tj_value *c = v->u.arr.items[i];
        if (c->type != TJ_STRING)
            return tly_err_set(err, TALLY_ECONFIG, "%s[%zu]: expected a category id (a string)", field, i);
        int rc = check_id(c->u.str.s, c->u.str.len, field, err, TALLY_ECONFIG);
        if (rc) return rc;
    }
    return TALLY_OK;
}

static int cat_bit(const consent_cfg *c, const char *s, size_t len)
{
    for (size_t k = 0; k < c->ncats; k++)
        if (strlen(c->cat[k]) == len && !memcmp(c->cat[k], s, len)) return (int)k;
    return -1;
}

static int add_cat(consent_cfg *c, const tj_value *s, uint64_t *need, tly_err *err)
{
    int k = cat_bit(c, s->u.str.s, s->u.str.len);
    if (k < 0) {
        if (c->ncats == CONSENT_MAX_CATEGORIES)
            return tly_err_set(err, TALLY_ECONFIG, "destinations: consent: more than %d distinct categories",
                               CONSENT_MAX_CATEGORIES);
        if (!(c->cat[c->ncats] = strndup(s->u.str.s, s->u.str.len)))
            return tly_err_set(err, TALLY_ENOMEM, "out of memory");
        k = (int)c->ncats++;
    }
    *need |= UINT64_C(1) << k;
    return TALLY_OK;
}

int consent_open(consent_cfg *c, char *const *dest_json, size_t ndests, tly_err *err)
{
    memset(c, 0, sizeof *c);
    tj_arena *a = tj_arena_new();
    if (!a || !(c->need = calloc(ndests + 1, sizeof *c->need))) {
        tj_arena_free(a);
        return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    }
    c->ndests = ndests;
    int rc = TALLY_OK;
    for (size_t i = 0; !rc && i < ndests; i++) {
        tj_value *d, *v;
        tj_arena_reset(a);
        /* the configuration checked these objects when they were set */
        if (tj_parse(a, dest_json[i], strlen(dest_json[i]), &d, NULL) || !(v = tj_object_get(d, "consent"))) continue;
        char where[48];
        snprintf(where, sizeof where, "destinations[%zu]", i);
        if ((rc = consent_check_dest(v, where, err))) break;
        if (v->type == TJ_STRING) rc = add_cat(c, v, &c->need[i], err);
        for (size_t k = 0; !rc && v->type == TJ_ARRAY && k < v->u.arr.n; k++)
            rc = add_cat(c, v->u.arr.items[k], &c->need[i], err);
        c->any_need |= c->need[i];
    }
    tj_arena_free(a);
    return rc;
}

void consent_free(consent_cfg *c)
{
    for (size_t k = 0; k < c->ncats; k++) free(c->cat[k]);
    free(c->need);
    memset(c, 0, sizeof *c);
}

/* An object of booleans within the limits, naming `field` in the error. */
static int check_prefs(const tj_value *v, const char *field, tly_err *err)
{
    if (v->type != TJ_OBJECT)
        return tly_err_set(err, TALLY_EINVAL, "%s: expected an object of category id -> true/false (or false)", field);
    if (v->u.obj.n > CONSENT_MAX_CATEGORIES)
        return tly_err_set(err, TALLY_EINVAL, "%s: %zu categories, over the limit of %d", field, v->u.obj.n,
                           CONSENT_MAX_CATEGORIES);
    for (size_t i = 0; i < v->u.obj.n; i++) {
        const tj_member *m = &v->u.obj.m[i];
        int rc = check_id(m->key, m->klen, field, err, TALLY_EINVAL);
        if (rc) return rc;
        if (m->val->type != TJ_TRUE && m->val->type != TJ_FALSE)
            return tly_err_set(err, TALLY_EINVAL, "%s.%.*s: expected true or false", field, (int)m->klen, m->key);
    }
    return TALLY_OK;
}

static int set_bool(tj_arena *a, tj_value *obj, const char *key, size_t klen, int on)
{
    tj_value *b = tj_new(a, on ? TJ_TRUE : TJ_FALSE);
    return b ? tj_object_set(a, obj, key, klen, b) : TALLY_ENOMEM;
}

int consent_merge(const consent_cfg *c, const char *prefs, const char *update, size_t ulen, char **out, tly_err *err)
{
    *out = NULL;
    if (ulen > CONSENT_MAX_JSON_BYTES)
        return tly_err_set(err, TALLY_EINVAL, "consent: %zu bytes, over the %d-byte limit", ulen, CONSENT_MAX_JSON_BYTES);
    tj_arena *a = tj_arena_new();
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    tj_value *cur = NULL, *upd = NULL;
    tj_error je;
    int rc = TALLY_OK;
    if (tj_parse(a, update, ulen, &upd, &je))
        rc = tly_err_set(err, TALLY_EINVAL, "consent: invalid JSON: %s", je.msg);
    else if (upd->type != TJ_FALSE && !(rc = check_prefs(upd, "consent", err)) && upd->u.obj.n == 0)
        rc = tly_err_set(err, TALLY_EINVAL, "consent: an empty object changes nothing: expected at least one "
                         "category id -> true/false (or false to opt out)");
    if (!rc && prefs && (tj_parse(a, prefs, strlen(prefs), &cur, &je) || cur->type != TJ_OBJECT)) cur = NULL;
    if (!rc && !cur && !(cur = tj_new(a, TJ_OBJECT))) rc = tly_err_set(err, TALLY_ENOMEM, "out of memory");
    if (!rc && upd->type == TJ_FALSE) {
        /* opt-out: every category known here, those set before and those destinations need */
        for (size_t i = 0; !rc && i < cur->u.obj.n; i++) cur->u.obj.m[i].val->type = TJ_FALSE;
        for (size_t k = 0; !rc && k < c->ncats; k++) rc = set_bool(a, cur, c->cat[k], strlen(c->cat[k]), 0);
        if (!rc && cur->u.obj.n == 0) rc = set_bool(a, cur, "*", 1, 0);
    } else {
        for (size_t i = 0; !rc && i < upd->u.obj.n; i++)
            rc = tj_object_set(a, cur, upd->u.obj.m[i].key, upd->u.obj.m[i].klen, upd->u.obj.m[i].val);
    }
    if (rc == TALLY_ENOMEM) tly_err_set(err, rc, "out of memory");
    if (!rc && cur->u.obj.n > CONSENT_MAX_CATEGORIES)
        rc = tly_err_set(err, TALLY_EINVAL, "consent: the merged preferences would hold %zu categories, over the limit "
                         "of %d", cur->u.obj.n, CONSENT_MAX_CATEGORIES);
    tbuf b = TBUF_INIT;
    if (!rc && (tj_write(&b, cur) || b.oom)) rc = tly_err_set(err, TALLY_ENOMEM, "out of memory");
    if (!rc && b.len > CONSENT_MAX_JSON_BYTES)
        rc = tly_err_set(err, TALLY_EINVAL, "consent: the merged preferences would be %zu bytes, over the %d-byte limit",
                         b.len, CONSENT_MAX_JSON_BYTES);
    if (!rc) *out = tbuf_steal(&b);
    tbuf_free(&b);
    tj_arena_free(a);
    return rc;
}

uint64_t consent_granted(const consent_cfg *c, const tj_value *prefs)
{
    uint64_t g = 0;
    if (!prefs || prefs->type != TJ_OBJECT) return 0;
    for (size_t i = 0; i < prefs->u.obj.n; i++) {
        const tj_member *m = &prefs->u.obj.m[i];
        int k = cat_bit(c, m->key, m->klen);
        /* the last member with a key wins, as tj_object_get reads it */
        if (k >= 0) g = m->val->type == TJ_TRUE ? g | UINT64_C(1) << k : g & ~(UINT64_C(1) << k);
    }
    return g;
}

int consent_state_of(const consent_cfg *c, const char *prefs, consent_state *out, tly_err *err)
{
    memset(out, 0, sizeof *out);
    if (!prefs) return TALLY_OK;
    tj_arena *a = tj_arena_new();
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "out of memory");
    tj_value *v;
    tj_error je;
    int rc = tj_parse(a, prefs, strlen(prefs), &v, &je) ? tly_err_set(err, TALLY_EINVAL, "consent: %s", je.msg)
                                                         : check_prefs(v, "consent", err);
    if (!rc) {
        out->decided = 1;
        out->granted = consent_granted(c, v);
        int any_true = 0;
        for (size_t i = 0; i < v->u.obj.n; i++) any_true |= v->u.obj.m[i].val->type == TJ_TRUE;
        out->opted_out = v->u.obj.n > 0 && !any_true;
    }
    tj_arena_free(a);
    return rc;
}
