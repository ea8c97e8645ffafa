/* TLS verification is on by default. The collector serves HTTPS with a throwaway self-signed
 * certificate for 127.0.0.1/localhost (made with openssl, a test dependency from `make deps`):
 *  - without ca_bundle the certificate is not trusted: nothing is accepted, tally_flush times out
 *    and the log says why (a certificate / SSL problem);
 *  - with ca_bundle naming that certificate, delivery succeeds, at the top level or per destination,
 *    by IP or by DNS name (both are in subjectAltName);
 *  - a trusted certificate for another name is still refused (the host name is checked too). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "collector.h"
#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
#include "json.h"
#include "tally.h"
#include "util.h"

#define KEY "wk_tls_test_key"

/* a proxy, or CURL_CA_BUNDLE / SSL_CERT_FILE / SSL_CERT_DIR, would make libcurl trust something
 * else than asked */
TF_CLEAN_HTTP_ENVIRONMENT

/* ---- certificates ---- */

struct cert {
    char crt[256], key[256];
    int  ok;
};

/* A self-signed certificate (and key) for `cn` with the given subjectAltName, in the test's temp
 * directory. Returns 0 on success. */
static int make_cert(struct cert *c, const char *stem, const char *cn, const char *san)
{
    snprintf(c->crt, sizeof c->crt, "%s/%s.crt", tu_tmpdir(), stem);
    snprintf(c->key, sizeof c->key, "%s/%s.key", tu_tmpdir(), stem);
    char cmd[1536];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=%s -addext 'subjectAltName=%s' "
             "-keyout '%s' -out '%s' >'%s/%s.openssl.log' 2>&1",
             cn, san, c->key, c->crt, tu_tmpdir(), stem);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "  openssl failed (status %d; is openssl installed? `make deps` installs it)\n",
                st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        return -1;
    }
    return access(c->crt, R_OK) == 0 && access(c->key, R_OK) == 0 ? 0 : -1;
}

/* The certificate for 127.0.0.1 and localhost, made once per run. */
static const struct cert *good_cert(void)
{
    static struct cert c;
    static int tried;
    if (!tried) {
        tried = 1;
        c.ok = make_cert(&c, "localhost", "localhost", "IP:127.0.0.1,DNS:localhost") == 0;
    }
    return c.ok ? &c : NULL;
}

static collector *start_tls(const struct cert *c)
{
    const char *args[] = {"--tls", c->crt, c->key, NULL};
    return collector_start_opts(args);
}

/* ---- the log (the fixtures' capture) ---- */

static int log_mentions_tls_problem(void)
{
    const char *log = tf_logged();
    return strcasestr(log, "certificate") || strstr(log, "SSL");
}

/* Polls the captured log until it mentions a certificate / SSL problem. 0 when it does. */
static int wait_tls_log(int timeout_ms)
{
    long deadline = tu_mono_ms() + timeout_ms;
    while (!log_mentions_tls_problem()) {
        if (tu_mono_ms() >= deadline) return -1;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval */
    }
    return 0;
}

/* ---- handles ---- */

#define TLS_HANDLE_KEYS "store", ":memory:", "log_level", "warn", "retry_base_ms", "20", "retry_cap_ms", "200", \
                        "max_retries", "1000", "timeout_ms", "5000"

/* A handle whose only destination is a segment destination: at `endpoint` via the top-level keys
 * (dests NULL), or the given destinations JSON. ca may be NULL. It logs to the fixtures' capture. */
static tally_t *open_tls(const char *endpoint, const char *dests, const char *ca)
{
    if (dests) return tf_open("destinations", dests, TLS_HANDLE_KEYS, ca ? "ca_bundle" : NULL, ca, NULL);
    return tf_open("write_key", KEY, "endpoint", endpoint, TLS_HANDLE_KEYS, ca ? "ca_bundle" : NULL, ca, NULL);
}

static int track_n(tally_t *t, int n)
{
    char props[64];
    int bad = 0;
    for (int i = 0; i < n; i++) {
        snprintf(props, sizeof props, "{\"seq\":%d}", i);
        bad += tally_track(t, "TLS Event", props) != TALLY_OK;
    }
    return bad;
}

static int64_t dest_stat(tally_t *t, const char *field)
{
    char *json = NULL;
    if (tally_stats(t, &json) != TALLY_OK) return -1;
    int64_t v = -1;
    tj_arena *a = tj_arena_new();
    tj_value *root;
    tj_error err;
    size_t len = strlen(json);
    if (a && !tj_parse(a, tj_strdup(a, json, len), len, &root, &err)) {
        tj_value *ds = tj_object_get(root, "destinations");
        if (ds && ds->type == TJ_ARRAY && ds->u.arr.n == 1) {
            tj_value *f = tj_object_get(ds->u.arr.items[0], field);
            if (f && f->type == TJ_INT) v = f->u.i;
        }
    }
    tj_arena_free(a);
    tally_free(json);
    return v;
}

/* tls_failures from the collector's summary: handshakes the client broke off. */
static long tls_failures(collector *c)
{
    char *body = collector_received(c);
    if (!body) return -1;
    const char *p = strstr(body, "\"tls_failures\":");
    long v = p ? strtol(p + strlen("\"tls_failures\":"), NULL, 10) : -1;
    free(body);
    return v;
}

/* Runs n events at a handle that must not get through: the log names the TLS problem, a short
 * flush times out, the collector accepted nothing (and, when handshake_fails, saw the handshakes
 * fail: an untrusted chain is rejected inside the handshake, while libcurl checks the host name
 * once the handshake is done and then hangs up before sending anything). */
static void expect_refused(collector *c, tally_t *t, int n, int handshake_fails)
{
    CHECK_EQ_INT(track_n(t, n), 0);
    CHECK_EQ_INT(wait_tls_log(15000), 0);
    CHECK_EQ_INT(tally_flush(t, 500), TALLY_ETIMEDOUT);
    CHECK_EQ_INT(dest_stat(t, "delivered"), 0);
    CHECK_EQ_INT(dest_stat(t, "failed"), 0); /* still retrying: an untrusted server is not a dead letter */
    CHECK(dest_stat(t, "retried") >= n);
    CHECK_EQ_INT(collector_accepted(c), 0);
    CHECK_EQ_INT(collector_requests(c), 0); /* not one request got past the handshake */
    if (handshake_fails) CHECK(tls_failures(c) >= 1);
    CHECK_EQ_INT(tally_close(t, 0), TALLY_ETIMEDOUT);
    const char *log = tf_logged();
    if (!(strcasestr(log, "certificate") || strstr(log, "SSL")))
        CHECK(!"the log does not mention the certificate");
    else
        printf("  log: %.*s\n", (int)strcspn(log, "\n"), log);
    CHECK(strstr(log, KEY) == NULL);
    fflush(stdout);
}

/* Runs n events that must all arrive, once. */
static void expect_delivered(collector *c, tally_t *t, int n)
{
    CHECK_EQ_INT(track_n(t, n), 0);
    CHECK_EQ_INT(tally_flush(t, 30000), TALLY_OK);
    CHECK_EQ_INT(dest_stat(t, "delivered"), n);
    CHECK_EQ_INT(dest_stat(t, "retried"), 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(collector_accepted(c), n);
    CHECK_EQ_INT(collector_duplicates(c), 0);
    CHECK_EQ_INT(tls_failures(c), 0);
}

/* =========================================================================================== */

TEST(openssl_makes_a_certificate)
{
    REQUIRE(good_cert() != NULL);
}

TEST(self_signed_is_refused_without_ca_bundle)
{
    const struct cert *crt = good_cert();
    REQUIRE(crt);
    collector *c = start_tls(crt);
    REQUIRE(c);
    CHECK(strncmp(collector_url(c), "https://127.0.0.1:", 18) == 0);
    tally_t *t = open_tls(collector_url(c), NULL, NULL);
    if (t) expect_refused(c, t, 50, 1);
    else CHECK(!"tally_open failed");
    collector_stop(c);
}

TEST(self_signed_is_trusted_with_ca_bundle)
{
    const struct cert *crt = good_cert();
    REQUIRE(crt);
    collector *c = start_tls(crt);
    REQUIRE(c);
    tally_t *t = open_tls(collector_url(c), NULL, crt->crt);
    if (t) expect_delivered(c, t, 300);
    else CHECK(!"tally_open failed");
    CHECK_EQ_INT(tf_log_lines(), 0); /* not one warning */
    collector_stop(c);
}

TEST(ca_bundle_per_destination_and_dns_name)
{
    /* the destination's own ca_bundle, and the DNS name from subjectAltName instead of the IP */
    const struct cert *crt = good_cert();
    REQUIRE(crt);
    collector *c = start_tls(crt);
    REQUIRE(c);
    char dests[1024];
    snprintf(dests, sizeof dests,
             "[{\"type\":\"segment\",\"endpoint\":\"https://localhost:%d\",\"write_key\":\"%s\",\"ca_bundle\":\"%s\"}]",
             collector_port(c), KEY, crt->crt);
    tally_t *t = open_tls(NULL, dests, NULL);
    if (t) expect_delivered(c, t, 120);
    else CHECK(!"tally_open failed");
    collector_stop(c);
}

TEST(trusted_certificate_for_another_host_is_refused)
{
    /* in ca_bundle, so the chain is fine; but it names example.invalid, not 127.0.0.1 */
    static struct cert other;
    REQUIRE(make_cert(&other, "other", "example.invalid", "DNS:example.invalid") == 0);
    collector *c = start_tls(&other);
    REQUIRE(c);
    tally_t *t = open_tls(collector_url(c), NULL, other.crt);
    if (t) expect_refused(c, t, 20, 0);
    else CHECK(!"tally_open failed");
    collector_stop(c);
}
