#include "config.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consent.h"
#include "intake.h"
#include "json.h"
#include "rules_remote.h"

void config_defaults(struct tally_config *c)
{
    memset(c, 0, sizeof *c);
    c->flush_at = 100;
    c->flush_interval_ms = 1000;
    /* Two batches out per destination: the collector reads one while the next travels, instead of
     * the worker waiting a round trip per batch (durable end to end: bench/README.md). */
    c->max_in_flight = 2;
    /* The intake only has to cover the processor's hiccups: the store is the real buffer. 4 MiB
     * (~13k typical calls) rather than 16: a caller that outruns the processor faults in a new
     * heap page every ~13 calls while the intake grows, and at 16 MiB that set tally_track's p99
     * (2.7 us -> 0.4-0.75 us at 4 MiB; peak RSS 29 -> 20 MiB; bench/README.md). */
    c->max_queue_bytes = 4u << 20;
    c->max_queue_rows = 65536;
    c->on_full = ON_FULL_DROP_NEWEST; /* the caller is told (TALLY_EFULL) */
    c->timeout_ms = 10000;
    c->mode = MODE_CLIENT;
    c->log_level = TALLY_LOG_WARN;
    c->max_retries = 15;
    c->retry_base_ms = 200;
    c->retry_cap_ms = 60000;
    c->commit_interval_ms = 5;
    c->max_store_bytes = -1; /* by store kind: config_store_defaults */
    c->max_store_rows = 1000000;
    c->store_on_full = -1;   /* by store kind */
    c->session_timeout_s = 1800;
    /* Dead letters hold whole messages, personal data included, and nothing else removes them:
     * a month is long enough to find and replay a failure, and the cap bounds the file. */
    c->dead_letter_max_age_s = 30 * 86400;
    c->dead_letter_max_rows = 10000;
    c->lua_memory = 64LL << 20;
    c->lua_instructions = 1000000;
    c->rule_breaker = 10;
    c->rule_threads = 1;
    c->rules_poll_s = 300;
    c->rules_max_bytes = BUNDLE_MAX_BYTES;
    c->rules_canary_messages = 1000;
    c->rules_canary_margin = 0.05;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int config_copy(struct tally_config *dst, const struct tally_config *src)
{
    *dst = *src;
    dst->write_key = dup_or_null(src->write_key);
    dst->endpoint = dup_or_null(src->endpoint);
    dst->store = dup_or_null(src->store);
    dst->rules = dup_or_null(src->rules);
    dst->ca_bundle = dup_or_null(src->ca_bundle);
    dst->proxy = dup_or_null(src->proxy);
    dst->rule_config = dup_or_null(src->rule_config);
    dst->rules_url = dup_or_null(src->rules_url);
    dst->rules_public_key = dup_or_null(src->rules_public_key);
    dst->dests = NULL;
    dst->ndests = 0;
    int oom = (src->write_key && !dst->write_key) || (src->endpoint && !dst->endpoint) ||
              (src->store && !dst->store) || (src->rules && !dst->rules) ||
              (src->ca_bundle && !dst->ca_bundle) || (src->proxy && !dst->proxy) ||
              (src->rule_config && !dst->rule_config) || (src->rules_url && !dst->rules_url) ||
              (src->rules_public_key && !dst->rules_public_key);
    for (size_t i = 0; i < src->ndests && !oom; i++) oom = config_add_dest(dst, src->dests[i]) != 0;
    if (oom) { config_clear(dst); return TALLY_ENOMEM; }
    return TALLY_OK;
}

void config_clear(struct tally_config *c)
{
    free(c->write_key);
    free(c->endpoint);
    free(c->store);
    free(c->rules);
    free(c->ca_bundle);
    free(c->proxy);
    free(c->rule_config);
    free(c->rules_url);
    free(c->rules_public_key);
    for (size_t i = 0; i < c->ndests; i++) free(c->dests[i]);
    free(c->dests);
    memset(c, 0, sizeof *c);
}

int config_add_dest(struct tally_config *c, const char *json_object)
{
    char **d = realloc(c->dests, (c->ndests + 1) * sizeof *d);
    if (!d) return TALLY_ENOMEM;
    c->dests = d;
    if (!(d[c->ndests] = strdup(json_object))) return TALLY_ENOMEM;
    c->ndests++;
    return TALLY_OK;
}

/* ---- value parsers: each names the key and the accepted range in its error ---- */

static int parse_long(const char *key, const char *v, long lo, long hi, long *out, tly_err *err)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0' || n < lo || n > hi)
        return tly_err_set(err, TALLY_ECONFIG, "%s: expected an integer from %ld to %ld, got \"%s\"", key, lo, hi, v);
    *out = n;
    return TALLY_OK;
}

static int parse_fraction(const char *key, const char *v, double *out, tly_err *err)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end != '\0' || !(d >= 0 && d <= 1))
        return tly_err_set(err, TALLY_ECONFIG, "%s: expected a number from 0 to 1, got \"%s\"", key, v);
    *out = d;
    return TALLY_OK;
}

static int parse_bool(const char *key, const char *v, int *out, tly_err *err)
{
    if (!strcmp(v, "true") || !strcmp(v, "1")) { *out = 1; return TALLY_OK; }
    if (!strcmp(v, "false") || !strcmp(v, "0")) { *out = 0; return TALLY_OK; }
    return tly_err_set(err, TALLY_ECONFIG, "%s: expected true or false, got \"%s\"", key, v);
}

/* A choice's text and the value it stands for, so no list depends on the order of an enum. */
typedef struct choice { const char *name; int value; } choice;

static int parse_choice(const char *key, const char *v, const choice *names, int *out, tly_err *err)
{
    for (int i = 0; names[i].name; i++)
        if (!strcmp(v, names[i].name)) { *out = names[i].value; return TALLY_OK; }
    char list[160] = "";
    for (int i = 0; names[i].name; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, names[i].name, sizeof list - strlen(list) - 1);
    }
    return tly_err_set(err, TALLY_ECONFIG, "%s: expected one of %s, got \"%s\"", key, list, v);
}

/* Only spaces, tabs and line breaks: a write key like that is a paste gone wrong, never a key. */
int tly_blank(const char *v)
{
    while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r') v++;
    return !*v;
}

static int set_string(const char *key, char **slot, const char *v, tly_err *err)
{
    if (!*v) return tly_err_set(err, TALLY_ECONFIG, "%s: must not be empty", key);
    char *s = strdup(v);
    if (!s) return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", key);
    free(*slot);
    *slot = s;
    return TALLY_OK;
}

/* libcurl parses the URL here exactly as it will at delivery, so a URL it cannot use ("http://",
 * a port of 99999, a space in the host) is refused now, naming the key, instead of failing every
 * retry later as a network error. A proxy may also be a SOCKS proxy, which curl supports too
 * though socks is no scheme of a URL it fetches (hence CURLU_NON_SUPPORT_SCHEME for a proxy). */
int tly_check_url(const char *key, const char *v, int proxy, tly_err *err)
{
    static const char *const schemes[] = {"http", "https", "socks4", "socks4a", "socks5", "socks5h", NULL};
    CURLU *u = curl_url();
    if (!u) return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", key);
    char *scheme = NULL, *host = NULL, *port = NULL;
    int rc = TALLY_OK;
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, v, proxy ? CURLU_NON_SUPPORT_SCHEME : 0);
    if (uc == CURLUE_NO_HOST) {
        rc = tly_err_set(err, TALLY_ECONFIG, "%s: '%s': no host", key, v);
        goto out;
    }
    if (uc == CURLUE_BAD_PORT_NUMBER) {
        rc = tly_err_set(err, TALLY_ECONFIG, "%s: '%s': port must be 1 to 65535", key, v);
        goto out;
    }
    if (uc != CURLUE_OK) {
        rc = tly_err_set(err, TALLY_ECONFIG, "%s: '%s': not a usable URL (%s)", key, v, curl_url_strerror(uc));
        goto out;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    int known = 0;
    for (int i = 0; schemes[i] && (proxy || i < 2) && !known; i++) known = scheme && !strcmp(scheme, schemes[i]);
    if (!known) {
        rc = proxy ? tly_err_set(err, TALLY_ECONFIG, "%s: '%s': expected an http://, https:// or socks5:// URL", key, v)
                   : tly_err_set(err, TALLY_ECONFIG, "%s: expected an http:// or https:// URL, got \"%s\"", key, v);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !*host) {
        rc = tly_err_set(err, TALLY_ECONFIG, "%s: '%s': no host", key, v);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK && port) {
        char *end;
        long n = strtol(port, &end, 10);
        if (*end || n < 1 || n > 65535) rc = tly_err_set(err, TALLY_ECONFIG, "%s: '%s': port must be 1 to 65535", key, v);
    }
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

/* Validates a destinations array now, so a typo fails at tally_config_set, naming the entry. */
static int add_destinations(struct tally_config *c, const char *v, tly_err *err)
{
    tj_arena *a = tj_arena_new();
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "destinations: out of memory");
    tj_value *root;
    tj_error je;
    int rc = TALLY_OK;
    if (tj_parse(a, v, strlen(v), &root, &je)) {
        rc = tly_err_set(err, TALLY_ECONFIG, "destinations: invalid JSON: %s", je.msg);
    } else if (root->type != TJ_ARRAY) {
        rc = tly_err_set(err, TALLY_ECONFIG, "destinations: expected a JSON array of objects");
    }
    for (size_t i = 0; rc == TALLY_OK && i < root->u.arr.n; i++) {
        tj_value *d = root->u.arr.items[i], *type = tj_object_get(d, "type");
        if (d->type != TJ_OBJECT || !type || type->type != TJ_STRING) {
            rc = tly_err_set(err, TALLY_ECONFIG, "destinations[%zu]: expected an object with a string \"type\"", i);
            break;
        }
        /* a destination's keys are configuration keys too: writeKey, host, timeoutMs ... */
        for (size_t k = 0; k < d->u.obj.n; k++) {
            const char *canon = config_key_lookup(d->u.obj.m[k].key, d->u.obj.m[k].klen);
            if (canon) { d->u.obj.m[k].key = canon; d->u.obj.m[k].klen = strlen(canon); }
        }
        tj_value *consent = tj_object_get(d, "consent");
        char where[48];
        snprintf(where, sizeof where, "destinations[%zu]", i);
        if (consent && (rc = consent_check_dest(consent, where, err))) break;
        tbuf b = TBUF_INIT;
        tj_write(&b, d);
        if (b.oom || config_add_dest(c, b.data)) rc = tly_err_set(err, TALLY_ENOMEM, "destinations: out of memory");
        tbuf_free(&b);
    }
    tj_arena_free(a);
    return rc;
}

static int add_file_dest(struct tally_config *c, const char *path, tly_err *err)
{
    if (!*path) return tly_err_set(err, TALLY_ECONFIG, "out: must not be empty");
    if (strlen(path) >= PATH_MAX)
        return tly_err_set(err, TALLY_ECONFIG, "out: %zu bytes, over the %d-byte path limit", strlen(path), PATH_MAX - 1);
    tbuf b = TBUF_INIT;
    tbuf_puts(&b, "{\"type\":\"file\",\"path\":");
    tj_write_string(&b, path, strlen(path));
    tbuf_putc(&b, '}');
    int rc = (b.oom || config_add_dest(c, b.data)) ? tly_err_set(err, TALLY_ENOMEM, "out: out of memory") : TALLY_OK;
    tbuf_free(&b);
    return rc;
}

static const choice on_full_names[] = {
    {"drop_newest", ON_FULL_DROP_NEWEST}, {"drop_oldest", ON_FULL_DROP_OLDEST}, {NULL, 0}};
static const choice store_full_names[] = {
    {"drop_newest", STORE_FULL_DROP_NEWEST}, {"drop_oldest", STORE_FULL_DROP_OLDEST}, {"block", STORE_FULL_BLOCK}, {NULL, 0}};
static const choice consent_default_names[] = {
    {"grant", CONSENT_DEFAULT_GRANT}, {"deny", CONSENT_DEFAULT_DENY}, {NULL, 0}};
static const choice mode_names[] = {{"client", MODE_CLIENT}, {"server", MODE_SERVER}, {NULL, 0}};
static const choice level_names[] = {{"error", TALLY_LOG_ERROR}, {"warn", TALLY_LOG_WARN}, {"info", TALLY_LOG_INFO},
                                     {"debug", TALLY_LOG_DEBUG}, {"off", -1 /* below every level */}, {NULL, 0}};

enum key_kind { K_STR, K_URL, K_PROXY, K_INT, K_LLONG, K_SIZE, K_BOOL, K_CHOICE, K_OUT, K_DESTS, K_JSON_OBJECT,
                K_PUBKEYS, K_FRACTION };

/* Every configuration key: its type, where it lands, and its accepted range. */
static const struct key_def {
    const char        *key;
    int                kind;
    size_t             off;
    long               lo, hi;
    const choice      *choices;
} keys[] = {
#define F(field) offsetof(struct tally_config, field)
    {"write_key", K_STR, F(write_key), 0, 0, NULL},
    {"endpoint", K_URL, F(endpoint), 0, 0, NULL},
    {"store", K_STR, F(store), 0, 0, NULL},
    {"rules", K_STR, F(rules), 0, 0, NULL},
    {"rule_config", K_JSON_OBJECT, F(rule_config), 0, 0, NULL},
    {"lua_memory", K_LLONG, F(lua_memory), 1L << 20, 1L << 34, NULL},
    {"lua_memory_per_script", K_LLONG, F(lua_memory_per_script), 0, 1L << 34, NULL},
    {"lua_instructions", K_LLONG, F(lua_instructions), 1000, 1000000000, NULL},
    {"rule_breaker", K_INT, F(rule_breaker), 0, 1000000, NULL},
    {"rule_threads", K_INT, F(rule_threads), 1, TALLY_MAX_RULE_THREADS, NULL},
    {"rules_url", K_URL, F(rules_url), 0, 0, NULL},
    {"rules_public_key", K_PUBKEYS, F(rules_public_key), 0, 0, NULL},
    {"rules_poll_s", K_INT, F(rules_poll_s), 1, 86400, NULL},
    {"rules_max_bytes", K_LLONG, F(rules_max_bytes), 1024, 64L << 20, NULL},
    {"rules_canary", K_FRACTION, F(rules_canary), 0, 0, NULL},
    {"rules_canary_messages", K_INT, F(rules_canary_messages), 1, 100000000, NULL},
    {"rules_canary_margin", K_FRACTION, F(rules_canary_margin), 0, 0, NULL},
    {"ca_bundle", K_STR, F(ca_bundle), 0, 0, NULL},
    {"proxy", K_PROXY, F(proxy), 0, 0, NULL},
    {"out", K_OUT, 0, 0, 0, NULL},
    {"destinations", K_DESTS, 0, 0, 0, NULL},
    {"flush_at", K_INT, F(flush_at), 1, 10000, NULL},
    {"flush_interval_ms", K_INT, F(flush_interval_ms), 1, 3600000, NULL},
    {"max_in_flight", K_INT, F(max_in_flight), 1, MAX_IN_FLIGHT, NULL},
    {"max_queue_bytes", K_SIZE, F(max_queue_bytes), 65536, LONG_MAX, NULL},
    {"max_queue_rows", K_SIZE, F(max_queue_rows), 16, 1L << 24, NULL},
    {"timeout_ms", K_INT, F(timeout_ms), 1, 600000, NULL},
    {"max_retries", K_INT, F(max_retries), 0, 1000, NULL},
    {"retry_base_ms", K_INT, F(retry_base_ms), 1, 60000, NULL},
    {"retry_cap_ms", K_INT, F(retry_cap_ms), 1, 3600000, NULL},
    {"commit_interval_ms", K_INT, F(commit_interval_ms), 0, 60000, NULL},
    {"max_store_bytes", K_LLONG, F(max_store_bytes), 65536, LONG_MAX, NULL},
    {"max_store_rows", K_LLONG, F(max_store_rows), 16, LONG_MAX, NULL},
    {"session_timeout_s", K_INT, F(session_timeout_s), 1, 31536000, NULL},
    {"dead_letter_max_age_s", K_INT, F(dead_letter_max_age_s), 0, 315360000, NULL},
    {"dead_letter_max_rows", K_LLONG, F(dead_letter_max_rows), 0, LONG_MAX, NULL},
    {"gzip", K_BOOL, F(gzip), 0, 0, NULL},
    {"context_traits", K_BOOL, F(context_traits), 0, 0, NULL},
    {"on_full", K_CHOICE, F(on_full), 0, 0, on_full_names},
    {"store_on_full", K_CHOICE, F(store_on_full), 0, 0, store_full_names},
    {"mode", K_CHOICE, F(mode), 0, 0, mode_names},
    {"consent_required", K_BOOL, F(consent_required), 0, 0, NULL},
    {"consent_default", K_CHOICE, F(consent_default), 0, 0, consent_default_names},
    {"log_level", K_CHOICE, F(log_level), 0, 0, level_names},
#undef F
};

static const struct key_def *find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (strlen(keys[i].key) == len && !memcmp(keys[i].key, name, len)) return &keys[i];
    return NULL;
}

/* Segment's libraries name their options in camelCase. Every key is accepted in camelCase
 * (flushAt, maxRetries, writeKey, flushIntervalMs); these are Segment's names that spelling alone
 * does not turn into ours. This is the only alias table: tally_config_set, Lua config files,
 * tally.open{}, the resty binding and the CLI all resolve names through config_key_lookup. */
static const struct { const char *alias, *key; } aliases[] = {
    {"host", "endpoint"},                  /* analytics-node, analytics-python */
    {"flushInterval", "flush_interval_ms"},/* milliseconds in analytics-node */
    {"httpRequestTimeout", "timeout_ms"},  /* analytics-node */
    {"maxEventsInBatch", "flush_at"},      /* analytics-node's older name of flushAt */
};

/* flushIntervalMs -> flush_interval_ms; 0 when name is not camelCase (or does not fit). */
static size_t camel_to_snake(const char *name, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    int upper = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (ch == '_') return 0;
        if (ch >= 'A' && ch <= 'Z') {
            if (i == 0 || o + 2 > cap) return 0;
            out[o++] = '_';
            ch = (char)(ch - 'A' + 'a');
            upper = 1;
        }
        if (o + 1 > cap) return 0;
        out[o++] = ch;
    }
    return upper ? o : 0;
}

const char *config_key_lookup(const char *name, size_t len)
{
    const struct key_def *k = find_key(name, len);
    if (k) return k->key;
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (strlen(aliases[i].alias) == len && !memcmp(aliases[i].alias, name, len)) return aliases[i].key;
    char snake[64];
    size_t n = camel_to_snake(name, len, snake, sizeof snake);
    return n && (k = find_key(snake, n)) ? k->key : NULL;
}

/* Edit distance counting a swap of two neighbours as one edit (trakc -> track), as typos go.
 * Names are short and only near misses matter. */
size_t tly_edit_distance(const char *a, size_t al, const char *b, size_t bl)
{
    if (al > 63 || bl > 63) return 64;
    unsigned char d[64][64];
    for (size_t i = 0; i <= al; i++) d[i][0] = (unsigned char)i;
    for (size_t j = 0; j <= bl; j++) d[0][j] = (unsigned char)j;
    for (size_t i = 1; i <= al; i++) {
        for (size_t j = 1; j <= bl; j++) {
            unsigned best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1u < best) best = d[i - 1][j] + 1u;
            if (d[i][j - 1] + 1u < best) best = d[i][j - 1] + 1u;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1u < best)
                best = d[i - 2][j - 2] + 1u;
            d[i][j] = (unsigned char)best;
        }
    }
    return d[al][bl];
}

/* The nearest of names[0..n) to `name` when it is a plausible typo (at most a third of it, and
 * at most 3 edits, away), else NULL. */
const char *tly_nearest(const char *name, size_t len, const char *const *names, size_t n)
{
    const char *best = NULL;
    size_t bestd = len / 3 < 3 ? len / 3 : 3;
    if (bestd == 0) bestd = 1;
    bestd++;
    for (size_t i = 0; i < n; i++) {
        size_t d = tly_edit_distance(name, len, names[i], strlen(names[i]));
        if (d < bestd) { bestd = d; best = names[i]; }
    }
    return best;
}

const char *config_nearest_key(const char *name, size_t len)
{
    /* a camelCase typo is compared with the camelCase spellings, then named by its key */
    char camel[sizeof keys / sizeof *keys][64];
    const char *names[2 * (sizeof keys / sizeof *keys) + sizeof aliases / sizeof *aliases];
    const char *canon[sizeof names / sizeof *names];
    size_t n = 0;
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const char *k = keys[i].key;
        size_t o = 0;
        for (size_t j = 0; k[j] && o + 1 < sizeof camel[i]; j++)
            camel[i][o++] = k[j] == '_' && k[j + 1] ? (char)(k[++j] - 'a' + 'A') : k[j];
        camel[i][o] = '\0';
        canon[n] = k;
        names[n++] = k;
        canon[n] = k;
        names[n++] = camel[i];
    }
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++) {
        canon[n] = aliases[i].alias;
        names[n++] = aliases[i].alias;
    }
    const char *near = tly_nearest(name, len, names, n);
    for (size_t i = 0; near && i < n; i++)
        if (names[i] == near) return canon[i];
    return NULL;
}

static int apply_key(tally_config *c, const struct key_def *k, const char *v, tly_err *err)
{
    char *field = (char *)c + k->off;
    long n;
    int rc;
    switch (k->kind) {
    case K_URL:
        if ((rc = tly_check_url(k->key, v, 0, err))) return rc;
        return set_string(k->key, (char **)field, v, err);
    case K_PROXY:
        if ((rc = tly_check_url(k->key, v, 1, err))) return rc;
        /* fall through */
    case K_STR:
        if (*v && k->off == offsetof(struct tally_config, write_key) && tly_blank(v))
            return tly_err_set(err, TALLY_ECONFIG, "%s: must not be blank (only whitespace)", k->key);
        return set_string(k->key, (char **)field, v, err);
    case K_OUT: return add_file_dest(c, v, err);
    case K_JSON_OBJECT: {
        tj_error je;
        size_t i = 0;
        if (tj_validate(v, strlen(v), &je)) return tly_err_set(err, TALLY_ECONFIG, "%s: invalid JSON: %s", k->key, je.msg);
        while (v[i] == ' ' || v[i] == '\n' || v[i] == '\t' || v[i] == '\r') i++;
        if (v[i] != '{') return tly_err_set(err, TALLY_ECONFIG, "%s: expected a JSON object", k->key);
        return set_string(k->key, (char **)field, v, err);
    }
    case K_DESTS: return add_destinations(c, v, err);
    case K_PUBKEYS:
        if ((rc = rules_remote_keys(v, NULL, err))) return rc;
        return set_string(k->key, (char **)field, v, err);
    case K_INT:
        if ((rc = parse_long(k->key, v, k->lo, k->hi, &n, err))) return rc;
        *(int *)field = (int)n;
        return TALLY_OK;
    case K_LLONG:
        if ((rc = parse_long(k->key, v, k->lo, k->hi, &n, err))) return rc;
        *(long long *)field = n;
        return TALLY_OK;
    case K_SIZE:
        if ((rc = parse_long(k->key, v, k->lo, k->hi, &n, err))) return rc;
        *(size_t *)field = (size_t)n;
        return TALLY_OK;
    case K_BOOL: return parse_bool(k->key, v, (int *)field, err);
    case K_FRACTION: return parse_fraction(k->key, v, (double *)field, err);
    case K_CHOICE: return parse_choice(k->key, v, k->choices, (int *)field, err);
    }
    assert(!"a key kind without a parser");
    return tly_err_set(err, TALLY_ECONFIG, "%s: cannot be set", k->key);
}

int config_set(tally_config *c, const char *key, const char *v, tly_err *err)
{
    size_t len = strlen(key);
    const char *canon = config_key_lookup(key, len);
    if (canon) return apply_key(c, find_key(canon, strlen(canon)), v, err);
    const char *near = config_nearest_key(key, len);
    if (near) return tly_err_set(err, TALLY_ECONFIG, "unknown configuration key \"%s\" (did you mean \"%s\"?)", key, near);
    return tly_err_set(err, TALLY_ECONFIG, "unknown configuration key \"%s\"", key);
}

int tally_config_set(tally_config *c, const char *key, const char *v)
{
    tly_err err;
    if (!c || !key || !v) return tly_publish(tly_err_set(&err, TALLY_EINVAL, "tally_config_set: NULL argument"), &err);
    return tly_publish(config_set(c, key, v, &err), &err);
}

tally_config *tally_config_new(void)
{
    tally_config *c = malloc(sizeof *c);
    if (c) config_defaults(c);
    return c;
}

void tally_config_free(tally_config *c)
{
    if (!c) return;
    config_clear(c);
    free(c);
}

int tally_config_set_logger(tally_config *c, tally_log_fn fn, void *ud)
{
    if (!c) return tly_fail(TALLY_EINVAL, "tally_config_set_logger: NULL config");
    c->log_fn = fn;
    c->log_ud = ud;
    return TALLY_OK;
}

int config_apply_env(struct tally_config *c, tly_err *err)
{
    const char *k = getenv("TALLY_WRITE_KEY"), *e = getenv("TALLY_ENDPOINT");
    int rc;
    /* a blank TALLY_WRITE_KEY counts as none: a destination that needs a key says it is missing */
    if (!c->write_key && k && !tly_blank(k) && (rc = set_string("TALLY_WRITE_KEY", &c->write_key, k, err))) return rc;
    if (!c->endpoint && e && *e) {
        if ((rc = tly_check_url("TALLY_ENDPOINT", e, 0, err))) return rc;
        if ((rc = set_string("TALLY_ENDPOINT", &c->endpoint, e, err))) return rc;
    }
    return TALLY_OK;
}

/* Keys whose values bound each other: each one is in its own range, but together they must
 * agree, or the runtime would quietly use something else than either says. Checked at open,
 * when every source (set, file, flags, environment) has been applied. */
int config_check_pairs(const struct tally_config *c, tly_err *err)
{
    if (c->retry_cap_ms < c->retry_base_ms)
        return tly_err_set(err, TALLY_ECONFIG, "retry_cap_ms: %d is less than retry_base_ms: %d (the cap must be at least "
                           "the base the backoff starts from)", c->retry_cap_ms, c->retry_base_ms);
    if (c->lua_memory_per_script > c->lua_memory)
        return tly_err_set(err, TALLY_ECONFIG, "lua_memory_per_script: %lld is more than lua_memory: %lld (one script "
                           "cannot hold more than all of them together)", c->lua_memory_per_script, c->lua_memory);
    if (c->rules_url && (long long)c->rules_poll_s * 1000 < c->timeout_ms)
        return tly_err_set(err, TALLY_ECONFIG, "rules_poll_s: %d s is shorter than timeout_ms: %d ms (a poll could still "
                           "be running when the next is due)", c->rules_poll_s, c->timeout_ms);
    return TALLY_OK;
}

/* The write_key/endpoint shorthand adds a segment destination, unless `destinations` already has
 * one: then the top-level key is that destination's default key, not a second, unasked-for
 * destination at api.segment.io. */
static int has_segment_dest(const struct tally_config *c)
{
    for (size_t i = 0; i < c->ndests; i++)
        if (strstr(c->dests[i], "\"type\":\"segment\"")) return 1;
    return 0;
}

/* A file store is the durable buffer for long outages: large, and when full it keeps the newest
 * data. A ":memory:" store is only a buffer in RAM, which must not balloon: small, and when full
 * it stops taking messages, so callers get TALLY_EFULL instead of queued data being dropped. */
void config_store_defaults(struct tally_config *c)
{
    int memory = !c->store || !strcmp(c->store, ":memory:");
    if (c->max_store_bytes < 0) c->max_store_bytes = memory ? 8LL << 20 : 256LL << 20;
    if (c->store_on_full < 0) c->store_on_full = memory ? STORE_FULL_BLOCK : STORE_FULL_DROP_OLDEST;
}

int config_resolve_dests(struct tally_config *c, tly_err *err)
{
    if ((!c->write_key && !c->endpoint) || has_segment_dest(c)) return TALLY_OK;
    if (!c->write_key)
    {
        const char *env = getenv("TALLY_WRITE_KEY");
        return tly_err_set(err, TALLY_ECONFIG, "write_key: required with endpoint (set write_key or TALLY_WRITE_KEY)%s",
                           env && *env ? "; TALLY_WRITE_KEY is blank (only whitespace)" : "");
    }
    tbuf b = TBUF_INIT;
    tbuf_puts(&b, "{\"type\":\"segment\",\"endpoint\":");
    const char *ep = c->endpoint ? c->endpoint : "https://api.segment.io";
    tj_write_string(&b, ep, strlen(ep));
    tbuf_putc(&b, '}');
    int rc = (b.oom || config_add_dest(c, b.data)) ? tly_err_set(err, TALLY_ENOMEM, "out of memory") : TALLY_OK;
    tbuf_free(&b);
    return rc;
}
