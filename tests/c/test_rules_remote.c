/* Remote rules (src/rules_remote.c): bundles fetched from a local collector on loopback that
 * serves a file with an ETag (tests/e2e/collector.py, "files"), verified, self-tested, kept in the
 * store and swapped in; every kind of refusal keeps the active rules and counts itself.
 *
 * Polls are made due by moving the handle's clock forward (clock_skew_ms, as test_identity does)
 * and waking the worker; the test then waits for the poll counter in tally_stats, never a sleep. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bundle_sign.h"
#include "collector.h"
#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
#include "rules_remote.h"
#include "runtime.h"
#include "store.h"
#include "tally.h"
#include "util.h"

TF_CLEAN_HTTP_ENVIRONMENT

static collector *C;
static bundle_signer *K1, *K2;
static char url[128];

static bundle_signer *new_signer(const char *name)
{
    char *path = tu_path(name);
    bundle_signer *s = NULL;
    tly_err err;
    if (bundle_keygen(path, &s, &err)) fprintf(stderr, "  keygen: %s\n", err.msg);
    unlink(path);
    free(path);
    return s;
}

/* Each test has a collector of its own (stopped by end(); one left behind by a failed REQUIRE
 * exits with this process, its watchdog's parent); the keys are made once. */
static int begin(void)
{
    if (!K1) K1 = new_signer("k1");
    if (!K2) K2 = new_signer("k2");
    C = collector_start(NULL);
    if (C) snprintf(url, sizeof url, "%s/rules.bundle", collector_url(C));
    return C && K1 && K2;
}

static void end(void)
{
    collector_stop(C);
    C = NULL;
}

/* A bundle of one rule that appends " <tag>" to track events, with a self-test that expects
 * exactly that (or, with bad_test, something else). extra: bytes of padding in the script. */
static char *make_bundle(const bundle_signer *k, int version, const char *tag, int bad_test, size_t extra)
{
    static int n;
    char *pad = calloc(extra + 1, 1), payload[8192], name[64];
    memset(pad, 'x', extra);
    snprintf(payload, sizeof payload,
             "{\"version\":%d,\"created_at\":\"2026-12-07T18:00:00.000Z\",\"rules\":[{\"file\":\"10_tag.lua\",\"source\":"
             "\"-- %s\\nreturn {name='tag', types={'track'}, process=function(m) m.event = m.event .. ' %s'; return m end}\"}],"
             "\"tests\":[{\"name\":\"tags\",\"input\":{\"type\":\"track\",\"event\":\"E\"},\"output\":{\"event\":\"E %s\"}}]}",
             version, pad, tag, bad_test ? "nope" : tag);
    free(pad);
    tbuf out = TBUF_INIT;
    tly_err err;
    if (bundle_sign(k, payload, strlen(payload), &out, &err)) fprintf(stderr, "  sign: %s\n", err.msg);
    snprintf(name, sizeof name, "b%d.bundle", n++);
    char *path = tu_path(name);
    tu_write_file(path, out.data ? out.data : "");
    tbuf_free(&out);
    return path;
}

static void serve(const char *path, const char *etag)
{
    char ctl[1024];
    snprintf(ctl, sizeof ctl, "{\"files\":{\"/rules.bundle\":{\"file\":\"%s\",\"etag\":\"\\\"%s\\\"\"}}}", path, etag);
    if (collector_script(C, ctl)) fprintf(stderr, "  collector refused %s\n", ctl);
}

static void serve_status(int status)
{
    char ctl[128];
    snprintf(ctl, sizeof ctl, "{\"files\":{\"/rules.bundle\":{\"status\":%d}}}", status);
    if (collector_script(C, ctl)) fprintf(stderr, "  collector refused %s\n", ctl);
}

/* A counter of tally_stats' "rules_remote" object; -1 when absent. */
static long long rstat(tally_t *t, const char *field)
{
    char *json = NULL;
    if (tally_stats(t, &json)) return -1;
    tj_arena *a = tj_arena_new();
    tj_value *root, *r;
    tj_error je;
    long long v = -1;
    if (a && !tj_parse(a, json, strlen(json), &root, &je) && (r = tj_object_get(root, "rules_remote")))
        v = tu_jint(r, field);
    tj_arena_free(a);
    tally_free(json);
    return v;
}

static int wait_rstat(tally_t *t, const char *field, long long want)
{
    long deadline = tu_mono_ms() + 10000;
    while (rstat(t, field) < want) {
        if (tu_mono_ms() > deadline) {
            fprintf(stderr, "  %s never reached %lld (%lld)\n", field, want, rstat(t, field));
            return -1;
        }
        usleep(2000); /* polling interval, not a stand-in for synchronisation */
    }
    return 0;
}

/* Makes the next poll due now and waits until it has finished. */
static int poll_now(tally_t *t)
{
    long long before = rstat(t, "polls");
    atomic_fetch_add(&t->clock_skew_ms, 2 * 3600 * 1000); /* past any jittered rules_poll_s */
    tly_wake_worker_forced(t);
    return wait_rstat(t, "polls", before + 1);
}

static char *local_rules; /* a rules folder to configure too, or NULL */

static tally_t *open_remote(const char *db_name, const char *out, const char *keys, const char *max_bytes)
{
    char *o = tu_path(out), *s = db_name ? tu_path(db_name) : NULL;
    unlink(o);
    tally_t *t = tf_open("out", o, "store", s ? s : ":memory:", "rules_url", url, "rules_public_key", keys,
                         "rules_poll_s", "3600", "rules_max_bytes", max_bytes ? max_bytes : "1048576", "flush_at", "1",
                         "log_level", "info", local_rules ? "rules" : NULL, local_rules, NULL);
    free(o);
    free(s);
    return t;
}

/* Tracks event "E" and returns whether the delivered line holds `want`. */
static int tracks_as(tally_t *t, const char *out, const char *want)
{
    static int n;
    char props[64];
    snprintf(props, sizeof props, "{\"n\":%d}", ++n);
    if (tally_track(t, "E", props) || tally_flush(t, 5000)) return 0;
    char *path = tu_path(out), *text = tu_read_file(path, NULL);
    free(path);
    int ok = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n"))
        if (strstr(line, props + 1) && strstr(line, "\"n\":")) ok = strstr(line, want) != NULL;
    if (!ok) fprintf(stderr, "  wanted %s in:\n%s\n", want, text ? text : "(nothing)");
    free(text);
    return ok;
}

TEST(a_fetched_bundle_is_applied_and_changes_messages)
{
    REQUIRE(begin());
    char *b1 = make_bundle(K1, 1, "v1", 0, 0);
    serve(b1, "e1");
    local_rules = tf_rules_dir("local", "10_local.lua",
                               "return {name='local', process=function(m) m.event = m.event .. ' local'; return m end}",
                               NULL);
    tally_t *t = open_remote(NULL, "applied.ndjson", bundle_signer_public(K1), NULL);
    REQUIRE(t);
    CHECK(wait_rstat(t, "applied", 1) == 0);
    CHECK(tracks_as(t, "applied.ndjson", "\"event\":\"E v1\""));
    CHECK_EQ_INT(rstat(t, "version"), 1);
    /* the bundle replaced the local rules (no " local" after "v1"), and tally_reload does not
     * bring them back while it is active */
    CHECK_EQ_INT(tally_reload(t, 2000), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(t), "remote bundle version 1 is active");
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(b1);
    free(local_rules);
    local_rules = NULL;
    end();
}

TEST(every_refusal_keeps_the_active_rules_and_is_counted)
{
    REQUIRE(begin());
    char *b2 = make_bundle(K1, 2, "v2", 0, 0);
    serve(b2, "r2");
    tally_t *t = open_remote(NULL, "refused.ndjson", bundle_signer_public(K1), "4096");
    REQUIRE(t);
    REQUIRE(wait_rstat(t, "applied", 1) == 0);
    tf_log_needle("remote rules:");

    /* a tampered byte: a payload character changed after signing */
    char *good = make_bundle(K1, 3, "v3", 0, 0), *text = tu_read_file(good, NULL), *tampered = tu_path("tampered.bundle");
    REQUIRE(text);
    char *p = strstr(text, "\"payload\":\"") + 20;
    *p = *p == 'A' ? 'B' : 'A';
    tu_write_file(tampered, text);
    serve(tampered, "t3");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "bad_signature"), 1);

    char *other = make_bundle(K2, 3, "v3", 0, 0); /* signed by a key not configured */
    serve(other, "k3");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "unknown_key"), 1);

    char *older = make_bundle(K1, 1, "v1", 0, 0), *equal = make_bundle(K1, 2, "v2b", 0, 0);
    serve(older, "o1");
    CHECK(poll_now(t) == 0);
    serve(equal, "o2");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "not_newer"), 2);

    char *failing = make_bundle(K1, 3, "v3", 1, 0);
    serve(failing, "f3");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "selftest_failed"), 1);

    char *big = make_bundle(K1, 3, "v3", 0, 5000);
    serve(big, "b3");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "too_big"), 1);

    tu_write_file(tampered, "{\"format\":1}");
    serve(tampered, "m3");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "malformed"), 1);

    /* a 500 twice: counted twice, logged once */
    int lines = tf_log_needle_lines();
    serve_status(500);
    CHECK(poll_now(t) == 0);
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "http_error"), 2);
    CHECK_EQ_INT(tf_log_needle_lines(), lines + 1);
    CHECK_CONTAINS(tf_logged(), "refused (http_error: HTTP status 500); version 2 stays active");

    CHECK_EQ_INT(rstat(t, "applied"), 1);
    CHECK_EQ_INT(rstat(t, "version"), 2);
    CHECK(tracks_as(t, "refused.ndjson", "\"event\":\"E v2\""));
    tf_log_needle(NULL);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(text);
    free(tampered);
    free(good);
    free(other);
    free(older);
    free(equal);
    free(failing);
    free(big);
    free(b2);
    end();
}

TEST(a_script_that_does_not_load_is_refused)
{
    REQUIRE(begin());
    char payload[] = "{\"version\":5,\"created_at\":\"2026-12-07T18:00:00.000Z\",\"rules\":[{\"file\":\"10_x.lua\","
                     "\"source\":\"return {name='x', process=function(m) return m end\"}]}"; /* no closing brace */
    tbuf out = TBUF_INIT;
    tly_err err;
    REQUIRE(!bundle_sign(K1, payload, strlen(payload), &out, &err));
    char *path = tu_path("noload.bundle");
    tu_write_file(path, out.data);
    tbuf_free(&out);
    serve(path, "n5");
    local_rules = tf_rules_dir("local", "10_local.lua",
                               "return {name='local', process=function(m) m.event = m.event .. ' local'; return m end}",
                               NULL);
    tally_t *t = open_remote(NULL, "noload.ndjson", bundle_signer_public(K1), NULL);
    REQUIRE(t);
    CHECK(wait_rstat(t, "load_failed", 1) == 0);
    CHECK_EQ_INT(rstat(t, "version"), 0);
    CHECK(tracks_as(t, "noload.ndjson", "\"event\":\"E local\""));
    CHECK_CONTAINS(tf_logged(), "the local rules stay active");
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(path);
    free(local_rules);
    local_rules = NULL;
    end();
}

TEST(not_modified_costs_no_reload)
{
    REQUIRE(begin());
    char *b1 = make_bundle(K1, 1, "v1", 0, 0);
    serve(b1, "same");
    tally_t *t = open_remote(NULL, "same.ndjson", bundle_signer_public(K1), NULL);
    REQUIRE(t);
    REQUIRE(wait_rstat(t, "applied", 1) == 0);
    CHECK(tracks_as(t, "same.ndjson", "E v1"));
    CHECK(poll_now(t) == 0);
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "not_modified"), 2);
    CHECK_EQ_INT(rstat(t, "applied"), 1);
    /* the same rule set still runs: its call count (one self-test, then each message) went on;
     * a new one would have started again from its self-test */
    CHECK(tracks_as(t, "same.ndjson", "E v1"));
    char *json = NULL;
    REQUIRE(tally_stats(t, &json) == TALLY_OK);
    CHECK_CONTAINS(json, "\"calls\":3");
    tally_free(json);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(b1);
    end();
}

TEST(a_restart_with_the_server_down_uses_the_last_good_bundle)
{
    REQUIRE(begin());
    char *b4 = make_bundle(K1, 4, "v4", 0, 0);
    serve(b4, "d4");
    char *db = tu_path("offline.db");
    unlink(db);
    tally_t *t = open_remote("offline.db", "offline.ndjson", bundle_signer_public(K1), NULL);
    REQUIRE(t);
    REQUIRE(wait_rstat(t, "applied", 1) == 0);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);

    char saved[128];
    snprintf(saved, sizeof saved, "%s", url);
    snprintf(url, sizeof url, "http://127.0.0.1:1/rules.bundle"); /* nothing listens there */
    t = open_remote("offline.db", "offline.ndjson", bundle_signer_public(K1), NULL);
    snprintf(url, sizeof url, "%s", saved);
    REQUIRE(t);
    CHECK_EQ_INT(rstat(t, "version"), 4); /* from the store, before any poll */
    CHECK(tracks_as(t, "offline.ndjson", "\"event\":\"E v4\""));
    CHECK(wait_rstat(t, "unreachable", 1) == 0);
    CHECK_EQ_INT(rstat(t, "version"), 4);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);

    /* the version floor survives the restart too: version 3 is refused */
    char *b3 = make_bundle(K1, 3, "v3", 0, 0);
    serve(b3, "d3");
    t = open_remote("offline.db", "offline.ndjson", bundle_signer_public(K1), NULL);
    REQUIRE(t);
    CHECK(wait_rstat(t, "not_newer", 1) == 0);
    CHECK(tracks_as(t, "offline.ndjson", "\"event\":\"E v4\""));
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);

    /* a key no longer trusted: the kept bundle is not used at the next open */
    serve_status(404);
    t = open_remote("offline.db", "offline.ndjson", bundle_signer_public(K2), NULL);
    REQUIRE(t);
    CHECK_EQ_INT(rstat(t, "version"), 0);
    CHECK_CONTAINS(tf_logged(), "the last good bundle in the store is not used");
    CHECK(wait_rstat(t, "http_error", 1) == 0);
    CHECK(tracks_as(t, "offline.ndjson", "\"event\":\"E\""));
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);

    /* what `tally inspect` shows: the active version, the last fetch and its result */
    char *report = NULL;
    tly_err err;
    CHECK(store_report(db, &report, &err) == TALLY_OK);
    CHECK_CONTAINS(report, "\"rules_remote\":{\"version\":4,");
    CHECK_CONTAINS(report, "\"result\":\"http_error: HTTP status 404\"");
    CHECK_CONTAINS(report, "\"fetched_at\":\"20");
    free(report);
    free(db);
    free(b3);
    free(b4);
    end();
}

TEST(key_rotation_accepts_bundles_from_either_configured_key)
{
    REQUIRE(begin());
    char keys[256];
    snprintf(keys, sizeof keys, "[\"%s\",\"%s\"]", bundle_signer_public(K1), bundle_signer_public(K2));
    char *b1 = make_bundle(K1, 1, "old-key", 0, 0), *b2 = make_bundle(K2, 2, "new-key", 0, 0);
    serve(b1, "k1");
    tally_t *t = open_remote(NULL, "rotation.ndjson", keys, NULL);
    REQUIRE(t);
    REQUIRE(wait_rstat(t, "applied", 1) == 0);
    CHECK(tracks_as(t, "rotation.ndjson", "E old-key"));
    serve(b2, "k2");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "applied"), 2);
    CHECK_EQ_INT(rstat(t, "version"), 2);
    CHECK(tracks_as(t, "rotation.ndjson", "E new-key"));
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(b1);
    free(b2);
    end();
}

TEST(remote_rules_configuration_is_checked)
{
    REQUIRE(begin());
    tally_config *c = tally_config_new();
    CHECK_EQ_INT(tally_config_set(c, "rules_public_key", "ed25519:short"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rules_public_key: public key: expected");
    CHECK_EQ_INT(tally_config_set(c, "rules_public_key", "[]"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rules_public_key: expected a key or a non-empty JSON array");
    char two[160];
    snprintf(two, sizeof two, "[\"%s\", 7]", bundle_signer_public(K1));
    CHECK_EQ_INT(tally_config_set(c, "rules_public_key", two), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rules_public_key[1]: expected a string");
    CHECK_EQ_INT(tally_config_set(c, "rules_poll_s", "0"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rules_poll_s: expected an integer from 1 to 86400");
    CHECK_EQ_INT(tally_config_set(c, "rules_max_bytes", "100"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rules_max_bytes: expected an integer from 1024");
    CHECK_EQ_INT(tally_config_set(c, "rules_url", "ftp://x/rules"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rules_url: expected an http:// or https:// URL");
    CHECK_EQ_INT(tally_config_set(c, "rulesPublicKey", bundle_signer_public(K1)), TALLY_OK);
    tally_config_free(c);

    tally_t *t = NULL;
    char *o = tu_path("nokey.ndjson");
    CHECK_EQ_INT(tf_open_rc(&t, "out", o, "rules_url", url, NULL), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rules_public_key: required with rules_url");
    free(o);
    end();
}

/* ---- the canary ---- */

static int in_canary(const char *user)
{
    char text[64];
    snprintf(text, sizeof text, "{\"userId\":\"%s\"}", user);
    tj_arena *a = tj_arena_new();
    tj_value *m;
    tj_error je;
    int in = a && !tj_parse(a, text, strlen(text), &m, &je) && rules_remote_in_canary(0.5, m);
    tj_arena_free(a);
    return in;
}

/* Sends messages first..first+n-1 as track "E" from users u0..u(n-1), property n = their number. */
static int send_batch(tally_t *t, int first, int n)
{
    for (int i = 0; i < n; i++) {
        char msg[160];
        snprintf(msg, sizeof msg, "{\"type\":\"track\",\"userId\":\"u%d\",\"event\":\"E\",\"properties\":{\"n\":%d}}", i,
                 first + i);
        if (tally_send(t, msg)) return -1;
    }
    return tally_flush(t, 10000);
}

/* The event each message n in [0, cap) was delivered with ("" for none), from the NDJSON file. */
static void delivered(const char *out, char events[][16], int cap)
{
    for (int i = 0; i < cap; i++) events[i][0] = '\0';
    char *path = tu_path(out), *text = tu_read_file(path, NULL);
    free(path);
    tj_arena *a = tj_arena_new();
    for (char *line = text ? strtok(text, "\n") : NULL; a && line; line = strtok(NULL, "\n")) {
        tj_value *m, *props;
        tj_error je;
        tj_arena_reset(a);
        if (tj_parse(a, line, strlen(line), &m, &je) || !(props = tj_object_get(m, "properties"))) continue;
        long long n = tu_jint(props, "n");
        const char *ev = tu_jstr(m, "event");
        if (n >= 0 && n < cap && ev) snprintf(events[n], sizeof events[n], "%s", ev);
    }
    tj_arena_free(a);
    free(text);
}

TEST(a_canary_that_drops_everything_is_rolled_back_and_other_identities_never_see_it)
{
    REQUIRE(begin());
    char *b1 = make_bundle(K1, 1, "v1", 0, 0);
    char payload[] = "{\"version\":2,\"created_at\":\"2026-12-07T18:00:00.000Z\",\"rules\":[{\"file\":\"10_drop.lua\","
                     "\"source\":\"return {name='drop', process=function(m) return nil end}\"}],"
                     "\"tests\":[{\"name\":\"drops\",\"input\":{\"type\":\"track\",\"event\":\"E\"},\"drop\":true}]}";
    tbuf out = TBUF_INIT;
    tly_err err;
    REQUIRE(!bundle_sign(K1, payload, strlen(payload), &out, &err));
    char *b2 = tu_path("dropall.bundle");
    tu_write_file(b2, out.data);
    tbuf_free(&out);
    serve(b1, "c1");
    char *o = tu_path("canary.ndjson");
    unlink(o);
    tally_t *t = tf_open("out", o, "mode", "server", "rules_url", url, "rules_public_key", bundle_signer_public(K1),
                         "rules_poll_s", "3600", "rules_canary", "0.5", "rules_canary_messages", "20",
                         "rules_canary_margin", "0.1", "flush_at", "1", "log_level", "info", NULL);
    free(o);
    REQUIRE(t);

    /* the first bundle is a canary too, against no rules: it drops nothing, so it is promoted */
    REQUIRE(wait_rstat(t, "canary", 1) == 0);
    CHECK_EQ_INT(rstat(t, "version"), 0);
    CHECK(send_batch(t, 0, 100) == TALLY_OK);
    CHECK(wait_rstat(t, "applied", 1) == 0);
    CHECK_EQ_INT(rstat(t, "version"), 1);

    /* version 2 drops every message: the canary identities lose their first 20, then it is rolled back */
    serve(b2, "c2");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "canary"), 2);
    CHECK(send_batch(t, 100, 100) == TALLY_OK);
    CHECK(wait_rstat(t, "rolled_back", 1) == 0);
    static char ev[200][16];
    delivered("canary.ndjson", ev, 200);
    int lost = 0, others_ok = 1, canaries = 0;
    for (int i = 0; i < 100; i++) {
        char user[16];
        snprintf(user, sizeof user, "u%d", i);
        if (in_canary(user)) {
            canaries++;
            if (!ev[100 + i][0]) lost++;
            else if (strcmp(ev[100 + i], "E v1")) others_ok = 0;
        } else if (strcmp(ev[100 + i], "E v1")) {
            others_ok = 0;
            fprintf(stderr, "  message %d of %s: \"%s\"\n", 100 + i, user, ev[100 + i]);
        }
    }
    CHECK(canaries > 20 && canaries < 80);
    CHECK_EQ_INT(lost, 20); /* rules_canary_messages, then back to version 1 */
    CHECK(others_ok);
    CHECK_CONTAINS(tf_logged(), "canary version 2 rolled back");
    CHECK_EQ_INT(rstat(t, "version"), 1);

    /* refused from then on: the same file is not modified, a new copy of it is not newer */
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "not_modified"), 1);
    serve(b2, "c2-again");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "not_newer"), 1);
    CHECK(send_batch(t, 0, 10) == TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(b1);
    free(b2);
    end();
}

/* rule_threads = 2: a bundle and its canary reach both rule states (each loads its own copy), the
 * canary runs for exactly rules_canary_messages over both, and its verdict applies to both. */
TEST(with_two_rule_states_bundles_and_canaries_apply_to_every_state)
{
    REQUIRE(begin());
    char *b1 = make_bundle(K1, 1, "v1", 0, 0);
    char payload[] = "{\"version\":2,\"created_at\":\"2026-12-07T18:00:00.000Z\",\"rules\":[{\"file\":\"10_drop.lua\","
                     "\"source\":\"return {name='drop', process=function(m) return nil end}\"}],"
                     "\"tests\":[{\"name\":\"drops\",\"input\":{\"type\":\"track\",\"event\":\"E\"},\"drop\":true}]}";
    tbuf out = TBUF_INIT;
    tly_err err;
    REQUIRE(!bundle_sign(K1, payload, strlen(payload), &out, &err));
    char *b2 = tu_path("dropall2.bundle");
    tu_write_file(b2, out.data);
    tbuf_free(&out);
    serve(b1, "s1");
    char *o = tu_path("states.ndjson");
    unlink(o);
    tally_t *t = tf_open("out", o, "mode", "server", "rule_threads", "2", "rules_url", url, "rules_public_key",
                         bundle_signer_public(K1), "rules_poll_s", "3600", "rules_canary", "0.5",
                         "rules_canary_messages", "20", "rules_canary_margin", "0.1", "flush_at", "1", "log_level",
                         "info", NULL);
    free(o);
    REQUIRE(t);
    REQUIRE(wait_rstat(t, "canary", 1) == 0);
    CHECK(send_batch(t, 0, 100) == TALLY_OK);
    CHECK(wait_rstat(t, "applied", 1) == 0);
    CHECK(send_batch(t, 100, 100) == TALLY_OK); /* promoted: every identity, both states */
    static char ev[300][16];
    delivered("states.ndjson", ev, 300);
    int v1 = 0;
    for (int i = 100; i < 200; i++) v1 += !strcmp(ev[i], "E v1");
    CHECK_EQ_INT(v1, 100);
    serve(b2, "s2");
    CHECK(poll_now(t) == 0);
    CHECK_EQ_INT(rstat(t, "canary"), 2);
    CHECK(send_batch(t, 200, 100) == TALLY_OK);
    CHECK(wait_rstat(t, "rolled_back", 1) == 0);
    delivered("states.ndjson", ev, 300);
    int lost = 0;
    for (int i = 200; i < 300; i++) {
        lost += !ev[i][0];
        CHECK(!ev[i][0] || !strcmp(ev[i], "E v1"));
    }
    CHECK_EQ_INT(lost, 20); /* the canary's share over both states, not a drain's worth */
    CHECK_EQ_INT(rstat(t, "version"), 1);
    char *stats = NULL;
    CHECK_EQ_INT(tally_stats(t, &stats), TALLY_OK);
    CHECK_CONTAINS(stats, "\"name\":\"tag\",\"stage\":\"before\",\"calls\":");
    CHECK_CONTAINS(stats, "\"disabled_states\":0");
    tally_free(stats);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(b1);
    free(b2);
    end();
}
