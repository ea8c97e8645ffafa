/* HTTP destinations, on the worker's curl multi handle (up to max_in_flight batches per
 * destination, one transfer each, so a slow collector costs no thread and never blocks the other
 * destinations):
 *  - segment: Segment's HTTP Tracking API (also RudderStack's and any compatible collector).
 *    POST {endpoint}/v1/batch with {"batch":[...],"sentAt":...}, Basic auth "writeKey:", gzip.
 *  - http: any JSON endpoint. POST {url} with a JSON array of the batch's payloads (usually shaped
 *    by a destination-stage rule, "mapping"), optional headers and Basic auth. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "config.h"
#include "dest.h"

#define BODY_EXCERPT 200

typedef struct segment_dest segment_dest;

/* One batch's transfer. Each keeps its easy handle (and so its connection and TLS session) from
 * batch to batch. */
typedef struct xfer {
    segment_dest *s;
    CURL         *easy;
    int           busy;
    char          curl_error[CURL_ERROR_SIZE]; /* libcurl's detail: which certificate check failed, ... */
    tbuf          body;        /* the request body (gzip'd when enabled) */
    tbuf          json;        /* the batch as JSON before compression */
    tbuf          response;    /* the first bytes of the response, for error reasons */
} xfer;

struct segment_dest {
    CURLM             *multi;
    struct curl_slist *headers;
    char              *url;
    char              *write_key;
    char              *auth_b64;    /* base64("writeKey:"), as sent in the Authorization header */
    size_t             keep;        /* response bytes kept: the excerpt plus room to mask a secret */
    int                gzip;
    int                array_body;  /* http: a bare JSON array instead of Segment's envelope */
    int                nx;
    xfer               x[MAX_IN_FLIGHT];
};

static const char *str_opt(const tj_value *cfg, const char *key, const char *fallback)
{
    const tj_value *v = tj_object_get(cfg, key);
    return v && v->type == TJ_STRING ? v->u.str.s : fallback;
}

static size_t on_response(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    tbuf *b = &x->response;
    size_t len = size * n, keep = x->s->keep;
    if (b->len < keep) tbuf_append(b, p, len < keep - b->len ? len : keep - b->len);
    return len; /* read everything so the connection stays reusable */
}

static char *base64(const char *in, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned char)in[i] << 16 | (i + 1 < n ? (unsigned char)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? (unsigned char)in[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* The first bytes of the response for the reason (log and dead letters), on one line. A server
 * may echo the credentials it rejected ("invalid write key 'wk_...'", or the Authorization
 * header): those are masked, since the reason must never hold the write key. */
static void response_excerpt(const xfer *x, char *out, size_t outlen)
{
    const segment_dest *s = x->s;
    const char *p = x->response.data ? x->response.data : "";
    const char *secrets[] = {s->auth_b64, s->write_key};
    size_t n = x->response.len, o = 0;
    for (size_t i = 0; i < n && i < BODY_EXCERPT && o + 1 < outlen;) {
        size_t skip = 0;
        for (size_t k = 0; k < sizeof secrets / sizeof *secrets && !skip; k++) {
            size_t kl = secrets[k] ? strlen(secrets[k]) : 0;
            if (kl && kl <= n - i && !memcmp(p + i, secrets[k], kl)) skip = kl;
        }
        if (skip) {
            for (const char *m = "***"; *m && o + 1 < outlen; m++) out[o++] = *m;
            i += skip;
        } else {
            unsigned char ch = (unsigned char)p[i++];
            out[o++] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
        }
    }
    out[o] = '\0';
}

static int check_keys(const tj_value *cfg, const char *type, const char *const *known, tly_err *err)
{
    for (size_t i = 0; i < cfg->u.obj.n; i++) {
        int ok = 0;
        for (int k = 0; known[k] && !ok; k++) ok = !strcmp(cfg->u.obj.m[i].key, known[k]);
        if (!ok) return tly_err_set(err, TALLY_ECONFIG, "destinations: %s: unknown key \"%s\"", type, cfg->u.obj.m[i].key);
    }
    return TALLY_OK;
}

/* headers: { "Name": "value", ... } for the http destination */
static struct curl_slist *add_headers(struct curl_slist *h, const tj_value *cfg)
{
    const tj_value *hs = tj_object_get(cfg, "headers");
    for (size_t i = 0; h && hs && hs->type == TJ_OBJECT && i < hs->u.obj.n; i++) {
        const tj_value *v = hs->u.obj.m[i].val;
        if (v->type != TJ_STRING) continue;
        tbuf line = TBUF_INIT;
        tbuf_printf(&line, "%s: %s", hs->u.obj.m[i].key, v->u.str.s);
        h = line.oom ? NULL : curl_slist_append(h, line.data);
        tbuf_free(&line);
    }
    return h;
}

static void segment_close(dest *d)
{
    segment_dest *s = d->impl;
    if (!s) return;
    for (int i = 0; i < s->nx; i++) {
        xfer *x = &s->x[i];
        if (x->busy) curl_multi_remove_handle(s->multi, x->easy);
        curl_easy_cleanup(x->easy);
        tbuf_free(&x->body);
        tbuf_free(&x->json);
        tbuf_free(&x->response);
    }
    curl_slist_free_all(s->headers);
    if (s->write_key) memset(s->write_key, 0, strlen(s->write_key));
    if (s->auth_b64) memset(s->auth_b64, 0, strlen(s->auth_b64));
    free(s->write_key);
    free(s->auth_b64);
    free(s->url);
    free(s);
    d->impl = NULL;
}

static int setup_easy(dest *d, xfer *x, const tj_value *cfg, const dest_env *env, tly_err *err)
{
    segment_dest *s = x->s;
    const tj_value *tmo = tj_object_get(cfg, "timeout_ms");
    long timeout = tmo && tmo->type == TJ_INT ? (long)tmo->u.i : env->timeout_ms;
    const char *ca = str_opt(cfg, "ca_bundle", env->ca_bundle), *proxy = str_opt(cfg, "proxy", env->proxy);
    struct curl_slist *h = s->headers; /* one list for every transfer of the destination */
    if (!h) {
        char ua[64];
        snprintf(ua, sizeof ua, "User-Agent: tally/%s", TALLY_VERSION);
        h = curl_slist_append(NULL, "Content-Type: application/json");
        if (h) h = curl_slist_append(h, ua);
        if (h && s->gzip) h = curl_slist_append(h, "Content-Encoding: gzip");
        if (h) h = add_headers(h, cfg);
        if (h) h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip per batch */
        s->headers = h;
    }
    if (!h || !(x->easy = curl_easy_init())) return tly_err_set(err, TALLY_ENOMEM, "%s: out of memory", d->name);
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, s->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->headers);
    if (s->write_key) {
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(e, CURLOPT_USERNAME, s->write_key);
        curl_easy_setopt(e, CURLOPT_PASSWORD, "");
    }
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout < 10000 ? timeout : 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_response);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_PRIVATE, d);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->curl_error);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (ca) curl_easy_setopt(e, CURLOPT_CAINFO, ca);
    if (proxy) curl_easy_setopt(e, CURLOPT_PROXY, proxy);
    return TALLY_OK;
}

static int common_open(dest *d, const tj_value *cfg, const dest_env *env, const char *url, size_t ulen,
                       const char *suffix, const char *key, int array_body, tly_err *err)
{
    if (!env->multi) return tly_err_set(err, TALLY_ECONFIG, "destinations: %s: no transfer loop", d->ops->type);
    segment_dest *s = calloc(1, sizeof *s);
    if (!s) return tly_err_set(err, TALLY_ENOMEM, "%s destination: out of memory", d->ops->type);
    d->impl = s;
    s->multi = env->multi;
    s->array_body = array_body;
    const tj_value *gz = tj_object_get(cfg, "gzip");
    s->gzip = gz ? gz->type == TJ_TRUE : env->gzip;
    if (key) { /* base64("key:") as in the Authorization header, to mask it in echoed responses */
        size_t klen = strlen(key);
        char *userpass = malloc(klen + 2);
        if (userpass) {
            memcpy(userpass, key, klen);
            memcpy(userpass + klen, ":", 2);
            s->auth_b64 = base64(userpass, klen + 1);
            memset(userpass, 0, klen + 1);
            free(userpass);
        }
    }
    if (!(s->url = malloc(ulen + strlen(suffix) + 1)) || (key && (!(s->write_key = strdup(key)) || !s->auth_b64))) {
        segment_close(d);
        return tly_err_set(err, TALLY_ENOMEM, "%s destination: out of memory", d->ops->type);
    }
    s->keep = BODY_EXCERPT + (s->auth_b64 ? strlen(s->auth_b64) : 0);
    memcpy(s->url, url, ulen);
    strcpy(s->url + ulen, suffix);
    const tj_value *name = tj_object_get(cfg, "name");
    snprintf(d->name, sizeof d->name, "%s:%.*s", d->ops->type,
             (int)(name && name->type == TJ_STRING ? name->u.str.len : ulen),
             name && name->type == TJ_STRING ? name->u.str.s : url);
    int n = env->in_flight > 0 && env->in_flight <= MAX_IN_FLIGHT ? env->in_flight : 1, rc = TALLY_OK;
    for (; s->nx < n && !rc; s->nx++) {
        s->x[s->nx].s = s;
        rc = setup_easy(d, &s->x[s->nx], cfg, env, err);
    }
    if (rc) segment_close(d);
    return rc;
}

/* The destination's own proxy and the trust file it will use (its own or the global one). A
 * ca_bundle that is missing, or not a regular file (a FIFO would block the worker in curl), is
 * refused now rather than failing, or hanging, at every delivery. */
static int check_transport(const tj_value *cfg, const dest_env *env, const char *type, tly_err *err)
{
    char what[64];
    const char *proxy = str_opt(cfg, "proxy", NULL);
    snprintf(what, sizeof what, "destinations: %s: proxy", type);
    if (proxy && tly_check_url(what, proxy, 1, err)) return TALLY_ECONFIG;
    const char *own = str_opt(cfg, "ca_bundle", NULL), *ca = own ? own : env->ca_bundle;
    struct stat st;
    if (!ca) return TALLY_OK;
    snprintf(what, sizeof what, own ? "destinations: %s: ca_bundle" : "ca_bundle", type);
    if (stat(ca, &st)) return tly_err_set(err, TALLY_ECONFIG, "%s: '%s': %s", what, ca, strerror(errno));
    if (!S_ISREG(st.st_mode)) return tly_err_set(err, TALLY_ECONFIG, "%s: '%s': not a regular file", what, ca);
    return TALLY_OK;
}

/* RFC 7230 tchar: a header name is a token, so it cannot smuggle ':' or a line break. */
static int is_tchar(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* A header value with CR or LF would start a header (or a body) of its own: refuse any control
 * character but tab, naming the destination and the header. */
static int check_headers(const tj_value *hs, const char *dname, size_t dlen, tly_err *err)
{
    for (size_t i = 0; hs && i < hs->u.obj.n; i++) {
        const char *name = hs->u.obj.m[i].key;
        size_t nlen = hs->u.obj.m[i].klen;
        const tj_value *v = hs->u.obj.m[i].val;
        int ok = nlen > 0;
        for (size_t k = 0; k < nlen && ok; k++) ok = is_tchar((unsigned char)name[k]);
        if (!ok) { /* shown with control characters escaped: the error must not carry the CR/LF */
            char shown[4 * 64 + 1];
            size_t o = 0;
            for (size_t k = 0; k < nlen && k < 64; k++) {
                unsigned char ch = (unsigned char)name[k];
                if (ch < 0x20 || ch == 0x7f) o += (size_t)snprintf(shown + o, sizeof shown - o, "\\x%02x", ch);
                else shown[o++] = (char)ch;
            }
            shown[o] = '\0';
            return tly_err_set(err, TALLY_ECONFIG, "destinations: http %.*s: header name \"%s\" is not a token (RFC 7230)",
                            (int)dlen, dname, shown);
        }
        if (v->type != TJ_STRING)
            return tly_err_set(err, TALLY_ECONFIG, "destinations: http %.*s: header \"%s\": value must be a string",
                            (int)dlen, dname, name);
        for (size_t k = 0; k < v->u.str.len; k++) {
            unsigned char ch = (unsigned char)v->u.str.s[k];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return tly_err_set(err, TALLY_ECONFIG,
                                "destinations: http %.*s: header \"%s\": value has a control character (0x%02x; CR, LF and NUL are refused)",
                                (int)dlen, dname, name, ch);
        }
    }
    return TALLY_OK;
}

static int segment_open(dest *d, const tj_value *cfg, const dest_env *env, tly_err *err)
{
    static const char *const known[] = {"type", "name", "endpoint", "write_key", "gzip", "timeout_ms",
                                        "ca_bundle", "proxy", "mapping", "consent", NULL};
    int rc = check_keys(cfg, "segment", known, err);
    if (rc) return rc;
    const char *endpoint = str_opt(cfg, "endpoint", "https://api.segment.io");
    const char *key = str_opt(cfg, "write_key", env->write_key);
    if (tly_check_url("destinations: segment: endpoint", endpoint, 0, err) || check_transport(cfg, env, "segment", err))
        return TALLY_ECONFIG;
    if (!key || tly_blank(key))
        return tly_err_set(err, TALLY_ECONFIG, "destinations: segment: write_key required (or TALLY_WRITE_KEY)%s",
                           key && *key ? "; it is blank (only whitespace)" : "");
    size_t elen = strlen(endpoint);
    while (elen > 0 && endpoint[elen - 1] == '/') elen--;
    /* an endpoint copied from Segment's docs often already ends in the path: do not double it */
    if (elen >= 9 && !memcmp(endpoint + elen - 9, "/v1/batch", 9)) elen -= 9;
    while (elen > 0 && endpoint[elen - 1] == '/') elen--;
    return common_open(d, cfg, env, endpoint, elen, "/v1/batch", key, 0, err);
}

static int http_open(dest *d, const tj_value *cfg, const dest_env *env, tly_err *err)
{
    static const char *const known[] = {"type", "name", "url", "write_key", "headers", "gzip", "timeout_ms",
                                        "ca_bundle", "proxy", "mapping", "consent", NULL};
    int rc = check_keys(cfg, "http", known, err);
    if (rc) return rc;
    const char *url = str_opt(cfg, "url", NULL);
    if (!url) return tly_err_set(err, TALLY_ECONFIG, "destinations: http: \"url\" must be an http:// or https:// URL");
    if (tly_check_url("destinations: http: url", url, 0, err) || check_transport(cfg, env, "http", err)) return TALLY_ECONFIG;
    const tj_value *h = tj_object_get(cfg, "headers"), *name = tj_object_get(cfg, "name");
    if (h && h->type != TJ_OBJECT) return tly_err_set(err, TALLY_ECONFIG, "destinations: http: \"headers\" must be an object of strings");
    if (name && name->type == TJ_STRING ? check_headers(h, name->u.str.s, name->u.str.len, err)
                                        : check_headers(h, url, strlen(url), err))
        return TALLY_ECONFIG;
    const char *key = str_opt(cfg, "write_key", NULL);
    if (key && tly_blank(key))
        return tly_err_set(err, TALLY_ECONFIG, "destinations: http: write_key: must not be blank (only whitespace)");
    return common_open(d, cfg, env, url, strlen(url), "", key, 1, err);
}

static int gzip_into(tbuf *out, const char *p, size_t n)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return -1;
    size_t bound = deflateBound(&z, (uLong)n);
    tbuf_reset(out);
    if (tbuf_reserve(out, bound)) { deflateEnd(&z); return -1; }
    z.next_in = (Bytef *)p;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out->data;
    z.avail_out = (uInt)bound;
    int rc = deflate(&z, Z_FINISH);
    out->len = z.total_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : -1;
}

static void build_json(const segment_dest *s, xfer *x, const dest_batch *b)
{
    tbuf *j = &x->json;
    tbuf_reset(j);
    tbuf_puts(j, s->array_body ? "[" : "{\"batch\":[");
    for (size_t i = 0; i < b->n; i++) {
        if (i) tbuf_putc(j, ',');
        tbuf_append(j, b->data.data + b->off[i], b->off[i + 1] - b->off[i] - 1);
    }
    if (s->array_body) {
        tbuf_putc(j, ']');
        return;
    }
    char sent_at[25];
    tly_iso8601(tly_now_ms(), sent_at);
    tbuf_printf(j, "],\"sentAt\":\"%s\"}", sent_at);
}

static int segment_submit(dest *d, const dest_batch *b, dest_outcome *out, void **handle)
{
    segment_dest *s = d->impl;
    xfer *x = NULL;
    for (int i = 0; i < s->nx && !x; i++)
        if (!s->x[i].busy) x = &s->x[i];
    if (!x) { /* the worker hands over at most in_flight batches: this is a bug, not a network error */
        dest_outcome_set(out, DEST_RETRY, 0, "no free transfer (more batches than max_in_flight)");
        return 1;
    }
    build_json(s, x, b);
    const tbuf *body = &x->json;
    if (s->gzip) {
        if (gzip_into(&x->body, x->json.data, x->json.len)) {
            dest_outcome_set(out, DEST_RETRY, 0, "gzip failed (out of memory)");
            return 1;
        }
        body = &x->body;
    }
    if (x->json.oom) {
        dest_outcome_set(out, DEST_RETRY, 0, "out of memory building the batch");
        return 1;
    }
    tbuf_reset(&x->response);
    x->curl_error[0] = '\0';
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, body->data);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    CURLMcode mc = curl_multi_add_handle(s->multi, x->easy);
    if (mc != CURLM_OK) {
        dest_outcome_set(out, DEST_RETRY, 0, "cannot start the transfer: %s", curl_multi_strerror(mc));
        return 1;
    }
    x->busy = 1;
    *handle = x->easy;
    return 0;
}

/* Which answers are worth another try: Segment's documented retry set. */
static int retryable_status(long status)
{
    return status == 408 || status == 429 || (status >= 500 && status != 501 && status != 505);
}

static void segment_finish(dest *d, void *handle, int code, dest_outcome *out)
{
    segment_dest *s = d->impl;
    xfer *x = NULL;
    for (int i = 0; i < s->nx && !x; i++)
        if (s->x[i].easy == handle) x = &s->x[i];
    if (!x) {
        dest_outcome_set(out, DEST_RETRY, 0, "unknown transfer");
        return;
    }
    curl_multi_remove_handle(s->multi, x->easy);
    x->busy = 0;
    if (code != CURLE_OK) {
        dest_outcome_set(out, DEST_RETRY, 0, "network error: %s (%s)", curl_easy_strerror((CURLcode)code),
                         x->curl_error[0] ? x->curl_error : "no detail");
        return;
    }
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    char excerpt[BODY_EXCERPT + 1];
    response_excerpt(x, excerpt, sizeof excerpt);
    if (status >= 200 && status < 300) {
        dest_outcome_set(out, DEST_OK, (int)status, "HTTP %ld", status);
    } else if (retryable_status(status)) {
        dest_outcome_set(out, DEST_RETRY, (int)status, "HTTP %ld: %.*s", status, BODY_EXCERPT, excerpt);
        curl_off_t after = -1;
        if (curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &after) == CURLE_OK && after > 0)
            out->retry_after_ms = (int64_t)after * 1000;
    } else {
        dest_outcome_set(out, DEST_FAIL, (int)status, "HTTP %ld: %.*s", status, BODY_EXCERPT, excerpt);
    }
}

static int segment_sync(dest *d) { (void)d; return TALLY_OK; }

const dest_ops dest_segment_ops = {"segment", segment_open, segment_submit, segment_finish, segment_sync, segment_close};
const dest_ops dest_http_ops = {"http", http_open, segment_submit, segment_finish, segment_sync, segment_close};
