/* Remote rules: poll, verify, self-test, keep, hand over (rules_remote.h). The order of the steps
 * is the point: bytes from the network reach bundle_verify only, and Lua only once the signature
 * held and the version is new; the processor gets a rule set that already loaded and passed its
 * self-tests, so its swap is a pointer exchange between two messages. */
#include "rules_remote.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bundle_selftest.h"
#include "runtime.h"
#include "store.h"

/* What a poll came to: one counter each in tally_stats, one word in `tally inspect`. */
enum {
    RR_APPLIED, RR_NOT_MODIFIED, RR_UNREACHABLE, RR_HTTP_ERROR, RR_TOO_BIG, RR_MALFORMED, RR_UNKNOWN_KEY,
    RR_BAD_SIGNATURE, RR_NOT_NEWER, RR_LOAD_FAILED, RR_SELFTEST_FAILED, RR_CANARY, RR_ROLLED_BACK, RR_RESULTS
};
static const char *const result_name[RR_RESULTS] = {
    [RR_APPLIED] = "applied",           [RR_NOT_MODIFIED] = "not_modified", [RR_UNREACHABLE] = "unreachable",
    [RR_HTTP_ERROR] = "http_error",     [RR_TOO_BIG] = "too_big",           [RR_MALFORMED] = "malformed",
    [RR_UNKNOWN_KEY] = "unknown_key",   [RR_BAD_SIGNATURE] = "bad_signature", [RR_NOT_NEWER] = "not_newer",
    [RR_LOAD_FAILED] = "load_failed",   [RR_SELFTEST_FAILED] = "selftest_failed",
    [RR_CANARY] = "canary",             [RR_ROLLED_BACK] = "rolled_back",
};

/* Store meta keys (the store's meta table, beside the identity). */
#define META_BUNDLE  "rules_remote_bundle"   /* the last good bundle, exactly as fetched */
#define META_VERSION "rules_remote_version"  /* the highest version ever accepted */
#define META_ETAG    "rules_remote_etag"     /* the validator the server gave with it */
#define META_AT      "rules_remote_fetched_at"
#define META_RESULT  "rules_remote_result"

struct rules_remote {
    tally_t           *t;
    store             *st;
    bundle_keys       *keys;
    CURLM             *multi;
    CURL              *easy;
    struct curl_slist *headers;
    int                busy;
    tbuf               body;
    size_t             max_bytes;
    int                over;          /* the body went past max_bytes: the rest was not read */
    char               curl_error[CURL_ERROR_SIZE];
    char              *etag;          /* of the active bundle: sent as If-None-Match */
    int64_t            version;       /* the highest version ever accepted (META_VERSION) */
    int64_t            next_poll;     /* monotonic ms */
    unsigned           rng;
    int                last_result;   /* the last failure logged, with its text: logged once each */
    char               last_why[256];
    char              *cand;          /* the bundle in canary: its bytes, ETag and version (0: none) */
    char              *cand_etag;
    int64_t            cand_version;
    char             **mapping;       /* the mappings destinations name: a bundle must define them */
    size_t             nmapping;
    _Atomic int64_t    active;        /* version handed to the processor, 0: none */
    _Atomic uint64_t   polls;         /* polls finished, whatever their result */
    _Atomic uint64_t   n[RR_RESULTS];
};

/* ---- keys ---- */

int rules_remote_keys(const char *text, bundle_keys *k, tly_err *err)
{
    bundle_keys *own = k ? NULL : bundle_keys_new();
    bundle_keys *into = k ? k : own;
    if (!into) return tly_err_set(err, TALLY_ENOMEM, "rules_public_key: out of memory");
    int rc = TALLY_OK;
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r') text++;
    if (*text != '[') {
        rc = bundle_keys_add(into, text, err);
    } else {
        tj_arena *a = tj_arena_new();
        tj_value *list = NULL;
        tj_error je;
        if (!a) rc = tly_err_set(err, TALLY_ENOMEM, "rules_public_key: out of memory");
        else if (tj_parse(a, text, strlen(text), &list, &je) || list->type != TJ_ARRAY || !list->u.arr.n)
            rc = tly_err_set(err, TALLY_ECONFIG, "rules_public_key: expected a key or a non-empty JSON array of keys");
        for (size_t i = 0; !rc && i < list->u.arr.n; i++) {
            char where[48];
            snprintf(where, sizeof where, "rules_public_key[%zu]", i);
            if (list->u.arr.items[i]->type != TJ_STRING)
                rc = tly_err_set(err, TALLY_ECONFIG, "%s: expected a string", where);
            else if ((rc = bundle_keys_add(into, list->u.arr.items[i]->u.str.s, err)))
                tly_err_wrap(err, rc, where);
        }
        tj_arena_free(a);
        bundle_keys_free(own);
        return rc;
    }
    bundle_keys_free(own);
    return rc ? tly_err_wrap(err, rc, "rules_public_key") : TALLY_OK;
}

/* ---- loading a verified bundle ---- */

/* The scripts go through a private folder (mkdtemp makes it 0700) that is gone once they are
 * loaded: rules_open reads files, and a folder of our own is the one place they can be. */
static int load_rules(rules_remote *r, const bundle *b, rules **out, tly_err *err)
{
    tally_t *t = r->t;
    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tally-rules-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) return tly_err_set(err, TALLY_EIO, "rules: cannot make a private folder in %s: %s",
                                          tmp && *tmp ? tmp : "/tmp", strerror(errno));
    rules_opts o = {(size_t)t->cfg.lua_memory, (long)t->cfg.lua_instructions, t->cfg.rule_breaker, 1,
                    b->rule_config ? b->rule_config : t->cfg.rule_config, (size_t)t->cfg.lua_memory_per_script};
    int rc = bundle_extract(b, dir, err);
    if (!rc) rc = rules_open(out, dir, &o, &t->log, err);
    for (size_t i = 0; i < b->nscripts; i++) {
        char path[768];
        snprintf(path, sizeof path, "%s/%s", dir, b->scripts[i].file);
        unlink(path);
    }
    rmdir(dir);
    for (size_t i = 0; !rc && i < r->nmapping; i++)
        if (rules_find_mapping(*out, r->mapping[i]) < 0)
            rc = tly_err_set(err, TALLY_ELUA, "mapping \"%s\", which a destination names, is not in the bundle",
                             r->mapping[i]);
    if (rc) {
        rules_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Offers R (loaded from b) to the processor, with one more copy of b's rules for each further
 * rule state (rule_threads, server mode); a set offered before and not taken yet is replaced. On
 * failure R stays the caller's. */
static int hand_over(rules_remote *r, const bundle *b, rules *R, int64_t version, int canary, tly_err *err)
{
    tally_t *t = r->t;
    size_t nmore = t->cfg.mode == MODE_SERVER ? (size_t)t->cfg.rule_threads - 1 : 0;
    rules_swap *s = calloc(1, sizeof *s);
    if (!s || (nmore && !(s->more = calloc(nmore, sizeof *s->more)))) {
        free(s);
        return tly_err_set(err, TALLY_ENOMEM, "rules: out of memory");
    }
    int rc = TALLY_OK;
    for (; !rc && s->nmore < nmore; s->nmore++)
        if ((rc = load_rules(r, b, &s->more[s->nmore], err))) break;
    if (rc) {
        rules_swap_discard(s); /* the copies made; R is not in it yet */
        return rc;
    }
    s->R = R;
    s->version = version;
    s->canary = canary;
    rules_swap *old = atomic_exchange(&r->t->rules_next, s);
    rules_swap_discard(old);
    if (!canary) atomic_store(&r->active, version);
    atomic_store(&r->t->proc_sleeping, 1); /* forced: it looks at rules_next before it sleeps again */
    tly_wake_processor(r->t);
    return TALLY_OK;
}

void rules_swap_free(rules_swap *s)
{
    if (!s) return;
    free(s->more);
    free(s);
}

void rules_swap_discard(rules_swap *s)
{
    if (!s) return;
    rules_free(s->R);
    for (size_t i = 0; i < s->nmore; i++) rules_free(s->more[i]);
    rules_swap_free(s);
}

rules_swap *rules_remote_take(tally_t *t)
{
    if (!atomic_load_explicit(&t->rules_next, memory_order_relaxed)) return NULL;
    return atomic_exchange(&t->rules_next, NULL);
}

/* ---- one poll's end ---- */

/* bundle_verify says EINVAL for all three; its texts tell them apart (bundle.c). */
static int verify_result(int rc, const char *msg)
{
    if (rc == TALLY_ETOOBIG) return RR_TOO_BIG;
    if (!strncmp(msg, "key_id:", 7) && strstr(msg, "is not one of")) return RR_UNKNOWN_KEY;
    if (!strncmp(msg, "signature: does not verify", 26) || !strncmp(msg, "bundle: not in the exact form", 29))
        return RR_BAD_SIGNATURE;
    return RR_MALFORMED;
}

typedef struct first_failure {
    char   name[128];
    char   why[512];
} first_failure;

static void on_test(void *ud, size_t index, const char *name, int passed, const char *why)
{
    (void)index;
    first_failure *f = ud;
    if (!passed && !f->name[0]) {
        snprintf(f->name, sizeof f->name, "%s", name);
        snprintf(f->why, sizeof f->why, "%s", why);
    }
}

static void meta(rules_remote *r, const char *key, const char *value)
{
    tly_err e;
    if (store_meta_set(r->st, key, value, &e))
        tly_log(&r->t->log, TALLY_LOG_ERROR, "remote rules: cannot keep %s in the store: %s", key, e.msg);
}

/* A fetched body, verified, checked, loaded and tested; RR_APPLIED once handed over. */
static int apply(rules_remote *r, const char *etag, tly_err *err)
{
    bundle *b = NULL;
    int rc = bundle_verify(r->body.data ? r->body.data : "", r->body.len, r->max_bytes, r->keys, &b, err);
    if (rc) return rc == TALLY_ENOMEM ? RR_LOAD_FAILED : verify_result(rc, err->msg);
    int res = RR_APPLIED;
    rules *R = NULL;
    if (b->version <= r->version || b->version <= r->cand_version) {
        tly_err_set(err, TALLY_EINVAL, "version %" PRId64 " is not above %" PRId64 ", the highest accepted: refused",
                    b->version, b->version <= r->version ? r->version : r->cand_version);
        res = RR_NOT_NEWER;
    } else if (load_rules(r, b, &R, err)) {
        tly_err_wrap(err, TALLY_ELUA, "the rules do not load");
        res = RR_LOAD_FAILED;
    } else {
        first_failure f = {"", ""};
        size_t failed = 0;
        if (bundle_run_tests(b, R, on_test, &f, &failed, err)) {
            res = RR_LOAD_FAILED;
        } else if (failed) {
            tly_err_set(err, TALLY_EINVAL, "%zu self-test%s failed, the first \"%s\": %s", failed,
                        failed == 1 ? "" : "s", f.name, f.why);
            res = RR_SELFTEST_FAILED;
        }
    }
    if (res == RR_APPLIED && r->t->cfg.rules_canary > 0) {
        /* kept in memory only: stored once the processor promotes it (rules_remote_settle) */
        char *bytes = tbuf_steal(&r->body), *tag = etag ? strdup(etag) : NULL;
        if (!bytes || (etag && !tag) || hand_over(r, b, R, b->version, 1, err)) {
            free(bytes);
            free(tag);
            res = RR_LOAD_FAILED;
            tly_err_set(err, TALLY_ENOMEM, "out of memory");
        } else {
            free(r->cand);
            free(r->cand_etag);
            r->cand = bytes;
            r->cand_etag = tag;
            r->cand_version = b->version;
            res = RR_CANARY;
            tly_log(&r->t->log, TALLY_LOG_INFO, "remote rules: version %" PRId64 " runs as a canary for %g of "
                    "identities", b->version, r->t->cfg.rules_canary);
            R = NULL;
        }
    } else if (res == RR_APPLIED) {
        /* Kept before it is handed over: the version floor must hold even if we stop right now. */
        char v[24];
        snprintf(v, sizeof v, "%" PRId64, b->version);
        meta(r, META_BUNDLE, r->body.data);
        meta(r, META_VERSION, v);
        meta(r, META_ETAG, etag);
        r->version = b->version;
        free(r->etag);
        r->etag = etag ? strdup(etag) : NULL;
        if (hand_over(r, b, R, b->version, 0, err)) res = RR_LOAD_FAILED;
        else {
            tly_log(&r->t->log, TALLY_LOG_INFO, "remote rules: version %" PRId64 " applied (%zu scripts, key %s)",
                    b->version, b->nscripts, b->key_id);
            R = NULL;
        }
    }
    rules_free(R);
    bundle_free(b);
    return res;
}

static void record(rules_remote *r, int res, const char *why)
{
    atomic_fetch_add(&r->n[res], 1);
    char at[25], text[400];
    tly_iso8601(tly_clock_wall(r->t), at);
    snprintf(text, sizeof text, "%s%s%s", result_name[res], why && *why ? ": " : "", why ? why : "");
    meta(r, META_AT, at);
    meta(r, META_RESULT, text);
    if (res == RR_APPLIED || res == RR_NOT_MODIFIED || res == RR_CANARY) {
        r->last_result = -1;
        return;
    }
    /* once per distinct failure: a server down for a day is one line, not one per poll */
    if (res == r->last_result && !strncmp(r->last_why, why ? why : "", sizeof r->last_why - 1)) return;
    r->last_result = res;
    snprintf(r->last_why, sizeof r->last_why, "%s", why ? why : "");
    int64_t v = atomic_load(&r->active);
    if (v) tly_log(&r->t->log, TALLY_LOG_WARN, "remote rules: %s refused (%s); version %" PRId64 " stays active",
                   r->t->cfg.rules_url, text, v);
    else tly_log(&r->t->log, TALLY_LOG_WARN, "remote rules: %s refused (%s); the local rules stay active",
                 r->t->cfg.rules_url, text);
}

static void schedule(rules_remote *r, int64_t now)
{
    /* +-10 %, so that a fleet started together does not poll together */
    int64_t period = (int64_t)r->t->cfg.rules_poll_s * 1000;
    r->next_poll = now + period - period / 10 + (int64_t)(rand_r(&r->rng) % (unsigned)(period / 5 + 1));
}

int rules_remote_finished(rules_remote *r, void *easy, int curl_result)
{
    if (!r || easy != r->easy || !r->busy) return 0;
    curl_multi_remove_handle(r->multi, r->easy);
    r->busy = 0;
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    tly_err err = {""};
    int res;
    char *etag = NULL;
    struct curl_header *h;
    if (curl_easy_header(r->easy, "ETag", 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h->value) etag = strdup(h->value);
    if (r->over || curl_result == CURLE_FILESIZE_EXCEEDED) {
        tly_err_set(&err, TALLY_ETOOBIG, "over the %zu-byte limit (rules_max_bytes); stopped reading", r->max_bytes);
        res = RR_TOO_BIG;
    } else if (curl_result != CURLE_OK) {
        tly_err_set(&err, TALLY_EIO, "%s", r->curl_error[0] ? r->curl_error : curl_easy_strerror((CURLcode)curl_result));
        res = RR_UNREACHABLE;
    } else if (status == 304) {
        res = RR_NOT_MODIFIED;
    } else if (status != 200) {
        tly_err_set(&err, TALLY_EIO, "HTTP status %ld", status);
        res = RR_HTTP_ERROR;
    } else {
        res = apply(r, etag, &err);
    }
    free(etag);
    tbuf_free(&r->body); /* up to a megabyte: not kept between polls */
    record(r, res, res == RR_NOT_MODIFIED ? NULL : err.msg);
    atomic_fetch_add(&r->polls, 1);
    schedule(r, tly_clock_mono(r->t));
    return 1;
}

/* ---- starting a poll ---- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    rules_remote *r = ud;
    size_t len = size * n;
    if (r->body.len + len > r->max_bytes) {
        r->over = 1;
        return 0; /* curl stops reading: CURLE_WRITE_ERROR */
    }
    tbuf_append(&r->body, p, len);
    return r->body.oom ? 0 : len;
}

/* The processor judged the canary: keep it as the last good bundle, or refuse its version from
 * now on (the floor rises to it, in the store too). A verdict on a canary that a newer bundle
 * replaced meanwhile is stale and ignored. */
static void settle(rules_remote *r, int64_t verdict)
{
    int64_t version = verdict < 0 ? -verdict : verdict;
    if (!r->cand || version != r->cand_version) return;
    char v[24];
    snprintf(v, sizeof v, "%" PRId64, version);
    meta(r, META_VERSION, v);
    r->version = version;
    free(r->etag);
    r->etag = r->cand_etag; /* a rolled-back file is not fetched again: the server answers 304 */
    r->cand_etag = NULL;
    if (verdict > 0) {
        meta(r, META_BUNDLE, r->cand);
        meta(r, META_ETAG, r->etag);
        atomic_store(&r->active, version);
        atomic_fetch_add(&r->n[RR_APPLIED], 1);
        tly_log(&r->t->log, TALLY_LOG_INFO, "remote rules: canary version %" PRId64 " promoted to all", version);
    } else {
        atomic_fetch_add(&r->n[RR_ROLLED_BACK], 1);
        tly_log(&r->t->log, TALLY_LOG_WARN, "remote rules: canary version %" PRId64 " rolled back: its error or "
                "drop rate exceeded the active rules' by more than %g; that version is refused from now on", version,
                r->t->cfg.rules_canary_margin);
    }
    free(r->cand);
    r->cand = NULL;
    r->cand_version = 0;
}

void rules_remote_verdict(tally_t *t, int64_t version, int promoted)
{
    atomic_store(&t->canary_verdict, promoted ? version : -version);
    tly_wake_worker_forced(t);
}

int rules_remote_in_canary(double fraction, const tj_value *m)
{
    const tj_value *id = tj_object_get(m, "userId");
    if (!id || id->type != TJ_STRING) id = tj_object_get(m, "anonymousId");
    if (!id || id->type != TJ_STRING) return 0;
    /* FNV-1a salted, so the canary's identities do not line up with those ctx:sample keeps */
    uint32_t h = 2166136261u;
    for (const char *s = "tally-canary:"; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    for (size_t i = 0; i < id->u.str.len; i++) h = (h ^ (unsigned char)id->u.str.s[i]) * 16777619u;
    return (double)(h % 10000) < fraction * 10000.0;
}

void rules_remote_tick(rules_remote *r, int64_t now)
{
    if (!r) return;
    if (atomic_load_explicit(&r->t->canary_verdict, memory_order_relaxed)) settle(r, atomic_exchange(&r->t->canary_verdict, 0));
    if (r->busy || now < r->next_poll || atomic_load(&r->t->stop)) return;
    tally_t *t = r->t;
    curl_slist_free_all(r->headers);
    r->headers = NULL;
    char line[320];
    const char *tag = r->cand_etag ? r->cand_etag : r->etag; /* the newest file seen that is not refused */
    if (tag && strlen(tag) < 256) {
        snprintf(line, sizeof line, "If-None-Match: %s", tag);
        r->headers = curl_slist_append(NULL, line);
    }
    CURL *e = r->easy;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, t->cfg.rules_url);
    if (r->headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    snprintf(line, sizeof line, "tally/%s", TALLY_VERSION);
    curl_easy_setopt(e, CURLOPT_USERAGENT, line);
    /* the same limits and trust as delivery (dest_http.c): timeout_ms, ca_bundle, proxy */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)t->cfg.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, t->cfg.timeout_ms < 10000 ? (long)t->cfg.timeout_ms : 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (t->cfg.ca_bundle) curl_easy_setopt(e, CURLOPT_CAINFO, t->cfg.ca_bundle);
    if (t->cfg.proxy) curl_easy_setopt(e, CURLOPT_PROXY, t->cfg.proxy);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_bytes); /* a announced length over it */
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->curl_error);
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    r->curl_error[0] = '\0';
    r->over = 0;
    tbuf_reset(&r->body);
    if (curl_multi_add_handle(r->multi, e) != CURLM_OK) {
        record(r, RR_UNREACHABLE, "cannot start a transfer");
        atomic_fetch_add(&r->polls, 1);
        schedule(r, now);
        return;
    }
    r->busy = 1;
}

/* No poll is started once the handle closes: the loop must not wake for one then. */
int64_t rules_remote_next(const rules_remote *r)
{
    return !r || r->busy || atomic_load(&r->t->stop) ? INT64_MAX : r->next_poll;
}

/* ---- open / free ---- */

/* The mappings the destinations name: a bundle that lacks one would leave a destination without
 * its payloads, so it is refused like a script that does not load. */
static int read_mappings(rules_remote *r, tly_err *err)
{
    tally_t *t = r->t;
    if (!(r->mapping = calloc(t->cfg.ndests + 1, sizeof *r->mapping)))
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    tj_arena *a = tj_arena_new();
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    for (size_t i = 0; i < t->cfg.ndests; i++) {
        tj_value *cfg, *m;
        tj_error je;
        tj_arena_reset(a);
        if (tj_parse(a, t->cfg.dests[i], strlen(t->cfg.dests[i]), &cfg, &je) || !(m = tj_object_get(cfg, "mapping")) ||
            m->type != TJ_STRING)
            continue;
        if (!(r->mapping[r->nmapping] = strdup(m->u.str.s))) break;
        r->nmapping++;
    }
    tj_arena_free(a);
    return TALLY_OK;
}

/* The last good bundle, verified again (the keys may have changed since) and loaded. */
static void load_kept(rules_remote *r)
{
    tly_err e = {""};
    char *text = NULL, *v = NULL;
    if (store_meta_get(r->st, META_VERSION, &v, &e) || store_meta_get(r->st, META_BUNDLE, &text, &e) ||
        store_meta_get(r->st, META_ETAG, &r->etag, &e)) {
        tly_log(&r->t->log, TALLY_LOG_ERROR, "remote rules: cannot read the last good bundle: %s", e.msg);
    }
    if (v) r->version = strtoll(v, NULL, 10);
    bundle *b = NULL;
    rules *R = NULL;
    if (text && !bundle_verify(text, strlen(text), r->max_bytes, r->keys, &b, &e) && !load_rules(r, b, &R, &e) &&
        !hand_over(r, b, R, b->version, 0, &e)) {
        tly_log(&r->t->log, TALLY_LOG_INFO, "remote rules: version %" PRId64 " from the store is active", b->version);
        R = NULL;
    } else if (text) {
        tly_log(&r->t->log, TALLY_LOG_WARN, "remote rules: the last good bundle in the store is not used: %s", e.msg);
        free(r->etag); /* ask for the bundle again */
        r->etag = NULL;
    }
    rules_free(R);
    bundle_free(b);
    free(text);
    free(v);
}

int rules_remote_open(tally_t *t, store *st, rules_remote **out, tly_err *err)
{
    *out = NULL;
    if (!t->cfg.rules_public_key)
        return tly_err_set(err, TALLY_ECONFIG, "rules_public_key: required with rules_url (the key bundles are signed with)");
    rules_remote *r = tly_fault() ? NULL : calloc(1, sizeof *r);
    if (!r) return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    *out = r;
    r->t = t;
    r->st = st;
    r->multi = t->transfers;
    r->max_bytes = (size_t)t->cfg.rules_max_bytes;
    r->last_result = -1;
    r->rng = (unsigned)tly_now_ms() ^ (unsigned)(uintptr_t)r;
    if (!(r->keys = bundle_keys_new()) || !(r->easy = curl_easy_init()))
        return tly_err_set(err, TALLY_ENOMEM, "tally_open: out of memory");
    int rc = rules_remote_keys(t->cfg.rules_public_key, r->keys, err);
    if (!rc) rc = read_mappings(r, err);
    if (rc) return rc;
    load_kept(r);
    r->next_poll = tly_clock_mono(t); /* the first poll at once: a new install gets its rules soon */
    return TALLY_OK;
}

void rules_remote_free(tally_t *t, rules_remote *r)
{
    rules_swap_discard(atomic_exchange(&t->rules_next, NULL));
    if (!r) return;
    if (r->busy) curl_multi_remove_handle(r->multi, r->easy);
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    bundle_keys_free(r->keys);
    tbuf_free(&r->body);
    free(r->etag);
    free(r->cand);
    free(r->cand_etag);
    for (size_t i = 0; i < r->nmapping; i++) free(r->mapping[i]);
    free(r->mapping);
    free(r);
}

void rules_remote_stats(const rules_remote *r, tbuf *b)
{
    if (!r) return;
    tbuf_printf(b, ",\"rules_remote\":{\"version\":%" PRId64 ",\"polls\":%llu", atomic_load(&r->active),
                (unsigned long long)atomic_load(&r->polls));
    for (int i = 0; i < RR_RESULTS; i++)
        tbuf_printf(b, ",\"%s\":%llu", result_name[i], (unsigned long long)atomic_load(&r->n[i]));
    tbuf_putc(b, '}');
}
