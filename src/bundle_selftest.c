#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "bundle_selftest.h"
#include "message.h"

#define MAX_CODES 64

/* What the rule chain reported while one test ran. */
typedef struct outcome {
    char   codes[MAX_CODES][64];  /* violation codes, the first MAX_CODES */
    size_t ncodes;
    char   error[256];            /* the first script error */
    char   dropped[256];          /* who dropped the message, and why */
} outcome;

static void on_violation(void *ud, const char *rule, const char *code, const char *text)
{
    (void)rule;
    (void)text;
    outcome *o = ud;
    if (o->ncodes < MAX_CODES) snprintf(o->codes[o->ncodes++], sizeof o->codes[0], "%s", code);
}

static void on_error(void *ud, const char *rule, const char *text)
{
    outcome *o = ud;
    if (!o->error[0]) snprintf(o->error, sizeof o->error, "[%s] %s", rule, text);
}

static void on_drop(void *ud, const char *rule, int drop_class, const char *why)
{
    (void)drop_class;
    outcome *o = ud;
    if (!o->dropped[0]) snprintf(o->dropped, sizeof o->dropped, "[%s] %s", rule, why);
}

/* A short JSON rendering of v for a failure line. */
static void show(const tj_value *v, char *out, size_t len)
{
    tbuf b = TBUF_INIT;
    if (v) tj_write(&b, v);
    snprintf(out, len, "%s", !v ? "nothing" : b.data && !b.oom ? b.data : "?");
    if (strlen(out) == len - 1 && len > 4) memcpy(out + len - 4, "...", 3);
    tbuf_free(&b);
}

static int equal_scalars(const tj_value *w, const tj_value *g)
{
    if ((w->type == TJ_INT || w->type == TJ_DOUBLE) && (g->type == TJ_INT || g->type == TJ_DOUBLE)) {
        if (w->type == TJ_INT && g->type == TJ_INT) return w->u.i == g->u.i;
        double a = w->type == TJ_INT ? (double)w->u.i : w->u.d, b = g->type == TJ_INT ? (double)g->u.i : g->u.d;
        return a == b;
    }
    if (w->type != g->type) return 0;
    if (w->type == TJ_STRING || w->type == TJ_RAW)
        return w->u.str.len == g->u.str.len && !memcmp(w->u.str.s, g->u.str.s, w->u.str.len);
    return 1; /* null, true, false */
}

/* Does got hold everything want names? Objects: each member of want, recursively (members want
 * leaves out are not checked: the runtime stamps messageId, timestamp, context). Arrays and
 * scalars: exactly. On a mismatch, why names the path. */
static int matches(const tj_value *want, const tj_value *got, char *path, size_t plen, char *why, size_t wlen)
{
    size_t at = strlen(path);
    if (want->type == TJ_OBJECT && got && got->type == TJ_OBJECT) {
        for (size_t i = 0; i < want->u.obj.n; i++) {
            snprintf(path + at, plen - at, ".%s", want->u.obj.m[i].key);
            if (!matches(want->u.obj.m[i].val, tj_object_get(got, want->u.obj.m[i].key), path, plen, why, wlen))
                return 0;
        }
        path[at] = '\0';
        return 1;
    }
    if (want->type == TJ_ARRAY && got && got->type == TJ_ARRAY && want->u.arr.n == got->u.arr.n) {
        for (size_t i = 0; i < want->u.arr.n; i++) {
            snprintf(path + at, plen - at, "[%zu]", i);
            /* an element is compared whole: a partial match inside arrays would hide extra members */
            char a[200], b[200];
            tbuf wb = TBUF_INIT, gb = TBUF_INIT;
            tj_write(&wb, want->u.arr.items[i]);
            tj_write(&gb, got->u.arr.items[i]);
            int same = wb.data && gb.data && !wb.oom && !gb.oom && wb.len == gb.len && !memcmp(wb.data, gb.data, wb.len);
            tbuf_free(&wb);
            tbuf_free(&gb);
            if (!same && !(want->u.arr.items[i]->type != TJ_OBJECT && want->u.arr.items[i]->type != TJ_ARRAY &&
                           equal_scalars(want->u.arr.items[i], got->u.arr.items[i]))) {
                show(want->u.arr.items[i], a, sizeof a);
                show(got->u.arr.items[i], b, sizeof b);
                snprintf(why, wlen, "%s: expected %s, got %s", path, a, b);
                return 0;
            }
        }
        path[at] = '\0';
        return 1;
    }
    if (got && want->type != TJ_OBJECT && want->type != TJ_ARRAY && equal_scalars(want, got)) return 1;
    char a[200], b[200];
    show(want, a, sizeof a);
    show(got, b, sizeof b);
    snprintf(why, wlen, "%s: expected %s, got %s", path, a, b);
    return 0;
}

/* Is the dotted path ("properties.email") present in m? */
static int present(const tj_value *m, const char *path)
{
    char key[256];
    const tj_value *v = m;
    while (v && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof key || v->type != TJ_OBJECT) return 0;
        memcpy(key, path, n);
        key[n] = '\0';
        v = tj_object_get(v, key);
        path += n + (dot != NULL);
    }
    return v != NULL;
}

/* A tree built again from its text: results may hold TJ_RAW parts (text passed through), and
 * comparisons need them as values. NULL on failure. */
static tj_value *reparse(tj_arena *a, const tj_value *v)
{
    tbuf b = TBUF_INIT;
    tj_value *out = NULL;
    tj_error je;
    if (!tj_write(&b, v) && !b.oom && tj_parse(a, b.data, b.len, &out, &je)) out = NULL;
    tbuf_free(&b);
    return out;
}

/* Runs one test; 1 passed, 0 failed with why set, -1 out of memory. */
static int run_one(rules *R, tj_arena *a, const tj_value *t, msg_list *out, char *why, size_t wlen)
{
    const tj_value *drop = tj_object_get(t, "drop"), *output = tj_object_get(t, "output");
    const tj_value *viol = tj_object_get(t, "violations"), *absent = tj_object_get(t, "absent");
    tj_value *m = reparse(a, tj_object_get(t, "input"));
    tly_err e;
    if (!m) return -1;
    msg_ids ids = {0};
    if (!tj_object_get(m, "userId") && !tj_object_get(m, "anonymousId")) ids.anonymous_id = BUNDLE_TEST_ANONYMOUS_ID;
    if (msg_stamp(a, m, &ids, tly_now_ms(), &e) || msg_validate(m, 1, &e)) {
        snprintf(why, wlen, "input: %.400s", e.msg);
        return 0;
    }
    outcome o;
    memset(&o, 0, sizeof o);
    rules_report rep = {on_violation, on_error, on_drop, &o, 0, 0};
    out->n = 0;
    rules_process(R, a, m, tly_now_ms(), out, &rep);
    if (o.error[0]) {
        snprintf(why, wlen, "script error: %s", o.error);
        return 0;
    }
    int want_drop = drop && drop->type == TJ_TRUE;
    if (want_drop && out->n) {
        snprintf(why, wlen, "drop: expected the message dropped; %zu message%s came out", out->n, out->n == 1 ? "" : "s");
        return 0;
    }
    if (!want_drop && !out->n) {
        snprintf(why, wlen, "dropped by %s", o.dropped[0] ? o.dropped : "a rule");
        return 0;
    }
    for (size_t i = 0; i < out->n; i++)
        if (!(out->v[i] = reparse(a, out->v[i]))) return -1;
    if (output) {
        size_t want_n = output->type == TJ_ARRAY ? output->u.arr.n : 1;
        if (want_n != out->n) {
            snprintf(why, wlen, "output: expected %zu message%s, the rules gave %zu", want_n, want_n == 1 ? "" : "s", out->n);
            return 0;
        }
        for (size_t i = 0; i < want_n; i++) {
            char path[256];
            if (output->type == TJ_ARRAY) snprintf(path, sizeof path, "output[%zu]", i);
            else snprintf(path, sizeof path, "output");
            if (!matches(output->type == TJ_ARRAY ? output->u.arr.items[i] : output, out->v[i], path, sizeof path, why, wlen))
                return 0;
        }
    }
    for (size_t i = 0; viol && i < viol->u.arr.n; i++) {
        const char *code = viol->u.arr.items[i]->u.str.s;
        int seen = 0;
        for (size_t k = 0; k < o.ncodes && !seen; k++) seen = !strcmp(o.codes[k], code);
        if (!seen) {
            char got[160] = "";
            for (size_t k = 0; k < o.ncodes && strlen(got) + strlen(o.codes[k]) + 3 < sizeof got; k++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", k ? ", " : "", o.codes[k]);
            snprintf(why, wlen, "violations: \"%s\" was not reported (reported: %s)", code, o.ncodes ? got : "none");
            return 0;
        }
    }
    for (size_t i = 0; absent && i < absent->u.arr.n; i++) {
        const char *path = absent->u.arr.items[i]->u.str.s;
        for (size_t k = 0; k < out->n; k++)
            if (present(out->v[k], path)) {
                snprintf(why, wlen, "absent: %s is still in the result", path);
                return 0;
            }
    }
    return 1;
}

int bundle_run_tests(const bundle *b, rules *R, bundle_test_fn fn, void *ud, size_t *failed, tly_err *err)
{
    assert(b && R && fn && failed);
    *failed = 0;
    size_t n = b->tests ? b->tests->u.arr.n : 0;
    if (!n) return TALLY_OK;
    tj_arena *a = tj_arena_new();
    msg_list out = {0};
    int rc = a ? TALLY_OK : tly_err_set(err, TALLY_ENOMEM, "self-tests: out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        const tj_value *t = b->tests->u.arr.items[i];
        char why[512] = "";
        tj_arena_reset(a);
        int passed = run_one(R, a, t, &out, why, sizeof why);
        if (passed < 0) {
            rc = tly_err_set(err, TALLY_ENOMEM, "self-tests: out of memory");
            break;
        }
        if (!passed) (*failed)++;
        fn(ud, i, tj_object_get(t, "name")->u.str.s, passed, why);
    }
    msg_list_free(&out);
    tj_arena_free(a);
    return rc;
}
