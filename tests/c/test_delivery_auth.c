/* HTTP delivery end to end: what each request says about its sender (Basic auth with the write
 * key, User-Agent, Content-Type, per-destination keys and gzip), and that the write key never
 * reaches a log line or a dead letter, even when the server echoes it. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "collector.h"
#include "delivery.h"
#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
#include "json.h"
#include "tally.h"
#include "util.h"

TF_CLEAN_HTTP_ENVIRONMENT

TEST(basic_auth_user_agent_content_type)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    tally_t *t = open_http(c, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 3, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0 && nreqs(&r) >= 1) {
        const tj_value *req = req_at(&r, 0);
        CHECK_STR(tu_jstr(req, "auth_user"), KEY);
        CHECK_STR(tu_jstr(req, "auth_password"), "");
        const char *ua = tu_jstr(req, "user_agent");
        CHECK(ua && strncmp(ua, "tally/", 6) == 0);
        CHECK_CONTAINS(ua, TALLY_VERSION);
        CHECK_STR(tu_jstr(req, "content_type"), "application/json");
        const tj_value *h = tj_object_get(req, "headers");
        CHECK(tj_object_get(h, "expect") == NULL); /* no 100-continue round trip */
        const char *auth = tu_jstr(h, "authorization");
        CHECK(auth && strncmp(auth, "Basic ", 6) == 0);
    } else {
        CHECK(!"no request recorded");
    }
    received_free(&r);
    collector_stop(c);
}

TEST(per_destination_write_key_and_gzip_override)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char dests[512];
    snprintf(dests, sizeof dests,
             "[{\"type\":\"segment\",\"name\":\"own\",\"endpoint\":\"%s/\",\"write_key\":\"other-key\",\"gzip\":true}]",
             collector_url(c));
    tally_t *t = open_http(NULL, NULL, "destinations", dests, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, 4, 0), 0);
    CHECK_EQ_INT(tally_close(t, 10000), TALLY_OK);
    received r;
    if (received_load(c, &r) == 0 && nreqs(&r) == 1) {
        const tj_value *req = req_at(&r, 0);
        CHECK_STR(tu_jstr(req, "auth_user"), "other-key");
        CHECK_STR(tu_jstr(req, "content_encoding"), "gzip");
        CHECK_STR(tu_jstr(req, "path"), "/v1/batch"); /* trailing slash of the endpoint dropped */
        CHECK_EQ_INT(check_exact_sequence(&r, 0, 4, 0), 0);
    } else {
        CHECK(!"expected exactly one request");
    }
    received_free(&r);
    collector_stop(c);
}

/* Runs a handle logging at debug level through failures; what it logged is in tf_logged(). */
static void run_logged_failure(collector *c, const char *script, int n, const char *store)
{
    REQUIRE(collector_script(c, script) == 0);
    tally_t *t = open_http(c, store, "log_level", "debug", "retry_base_ms", "5", "retry_cap_ms", "20", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(track_seq(t, 0, n, 0), 0);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_stat(t, "segment", "failed"), n);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
}

TEST(write_key_never_appears_in_logs)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    run_logged_failure(c, "{\"script\":[{\"status\":500},{\"status\":429},{\"status\":401}]}", 5, NULL);
    const char *log = tf_logged();
    CHECK(tf_log_lines() >= 3); /* two retries and a dead letter were logged */
    CHECK_CONTAINS(log, "HTTP 500");
    CHECK_CONTAINS(log, "HTTP 401");
    CHECK(strstr(log, KEY) == NULL);
    collector_stop(c);
}

TEST(write_key_echoed_by_the_server_is_not_logged_or_stored)
{
    /* Some collectors echo the credentials they reject ("invalid write key 'wk_...'"). The reason
     * keeps the first bytes of the response body, so the key must be masked there. */
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char *store = tu_path("echo.db");
    unlink(store);
    run_logged_failure(c,
                       "{\"script\":[{\"status\":503,\"body\":\"overloaded for " KEY "\"},"
                       "{\"status\":500,\"body\":\"echo: Authorization: Basic " KEY_BASIC "\\r\\n\"},"
                       "{\"status\":401,\"body\":{\"error\":\"invalid write key '" KEY "'\"}}]}",
                       4, store);
    const char *log = tf_logged();
    CHECK_CONTAINS(log, "HTTP 401");
    CHECK_CONTAINS(log, "invalid write key");
    CHECK_CONTAINS(log, "echo: Authorization: Basic ***");
    CHECK(strchr(log, '\r') == NULL); /* one line per log line */
    if (strstr(log, KEY) || strstr(log, KEY_BASIC)) {
        th_failed_now = 1;
        fprintf(stderr, "  the write key is in the log:\n%s", log);
    }
    int64_t rows = -1, smin = -1, smax = -1, queued = -1;
    char reasons[2048] = "";
    CHECK_EQ_INT(read_dead(store, &rows, &smin, &smax, reasons, sizeof reasons, &queued), 0);
    CHECK_EQ_INT(rows, 4);
    CHECK_CONTAINS(reasons, "invalid write key '***'");
    CHECK(strstr(reasons, KEY) == NULL);
    free(store);
    collector_stop(c);
}
