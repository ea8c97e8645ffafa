/* Configuration a tester got past validation: URLs libcurl cannot use (they then failed every
 * retry as network errors), a ca_bundle that is missing or a FIFO, header injection through an
 * http destination's headers, and a config file whose bad key left the keys before it applied. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "fixtures.h"
#include "harness.h"
#include "tally.h"
#include "util.h"

/* tally_config_set(key, value) must fail with TALLY_ECONFIG and an error holding `msg`. */
static int refused(const char *key, const char *value, const char *msg)
{
    tally_config *c = tally_config_new();
    if (!c) return 0;
    int rc = tally_config_set(c, key, value);
    int ok = rc == TALLY_ECONFIG && strstr(tally_errmsg(NULL), msg) != NULL;
    if (!ok) fprintf(stderr, "  %s=%s: rc %d, \"%s\" (wanted \"%s\")\n", key, value, rc, tally_errmsg(NULL), msg);
    tally_config_free(c);
    return ok;
}

/* tally_open with these key/value pairs (NULL-terminated) must fail with TALLY_ECONFIG and `msg`. */
static int open_refused(const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    tally_config *c = tf_vconfig(NULL, ap); /* NULL when a key is refused already: not what is tested */
    va_end(ap);
    if (!c) return 0;
    tally_t *t = NULL;
    int rc = tally_open(c, &t);
    int ok = rc == TALLY_ECONFIG && strstr(tally_errmsg(NULL), msg);
    if (!ok) fprintf(stderr, "  open: rc %d, \"%s\" (wanted \"%s\")\n", rc, tally_errmsg(NULL), msg);
    if (t) tally_close(t, 0);
    tally_config_free(c);
    return ok;
}

TEST(malformed_endpoint_urls_are_refused_at_config_set_naming_the_key)
{
    CHECK(refused("endpoint", "http://", "endpoint: 'http://': no host"));
    CHECK(refused("endpoint", "http://127.0.0.1:99999", "endpoint: 'http://127.0.0.1:99999': port must be 1 to 65535"));
    CHECK(refused("endpoint", "http://127.0.0.1:0", "port must be 1 to 65535"));
    CHECK(refused("endpoint", "http://exa mple.com", "endpoint: 'http://exa mple.com': not a usable URL"));
    CHECK(refused("host", "ftp://x", "endpoint: expected an http:// or https:// URL"));
    CHECK(refused("proxy", "notaurl", "proxy: 'notaurl': not a usable URL"));
    CHECK(refused("proxy", "ftp://p:21", "proxy: 'ftp://p:21': expected an http://, https:// or socks5:// URL"));
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "endpoint", "http://"), TALLY_ECONFIG);
    CHECK(c->endpoint == NULL); /* a refused value is not kept */
    tally_config_free(c);
}

TEST(well_formed_urls_still_pass)
{
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "endpoint", "https://api.segment.io"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "endpoint", "http://127.0.0.1:65535/v1/batch"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "endpoint", "http://[::1]:8080"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "proxy", "http://user:pw@proxy.local:3128"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, "proxy", "socks5h://127.0.0.1:1080"), TALLY_OK);
    tally_config_free(c);
}

TEST(malformed_env_endpoint_is_refused_at_open)
{
    setenv("TALLY_ENDPOINT", "http://127.0.0.1:99999", 1);
    setenv("TALLY_WRITE_KEY", "wk", 1);
    CHECK(open_refused("TALLY_ENDPOINT: 'http://127.0.0.1:99999': port must be 1 to 65535", NULL));
    unsetenv("TALLY_ENDPOINT");
    unsetenv("TALLY_WRITE_KEY");
}

TEST(malformed_destination_urls_and_proxies_are_refused_at_open)
{
    CHECK(open_refused("destinations: http: url: 'http://': no host",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://\"}]", NULL));
    CHECK(open_refused("destinations: http: url: 'http://exa mple.com/x': not a usable URL",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://exa mple.com/x\"}]", NULL));
    CHECK(open_refused("destinations: segment: endpoint: 'http://127.0.0.1:99999': port must be 1 to 65535",
                       "destinations", "[{\"type\":\"segment\",\"endpoint\":\"http://127.0.0.1:99999\",\"write_key\":\"k\"}]", NULL));
    CHECK(open_refused("destinations: http: proxy: 'notaurl'",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://127.0.0.1:1/x\",\"proxy\":\"notaurl\"}]", NULL));
}

TEST(missing_or_fifo_ca_bundle_is_refused_at_open)
{
    char *missing = tu_path("no-such-ca.pem"), *fifo = tu_path("ca.fifo");
    REQUIRE(missing && fifo);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    CHECK(open_refused("ca_bundle: '", "endpoint", "http://127.0.0.1:1", "write_key", "k", "ca_bundle", missing, NULL));
    CHECK_CONTAINS(tally_errmsg(NULL), "No such file or directory");
    CHECK(open_refused("not a regular file", "endpoint", "http://127.0.0.1:1", "write_key", "k", "ca_bundle", fifo, NULL));
    CHECK_CONTAINS(tally_errmsg(NULL), "ca_bundle: '");
    /* a destination's own ca_bundle is named as that destination's key */
    char dests[512];
    snprintf(dests, sizeof dests, "[{\"type\":\"http\",\"url\":\"https://127.0.0.1:1/x\",\"ca_bundle\":\"%s\"}]", fifo);
    CHECK(open_refused("destinations: http: ca_bundle: '", "destinations", dests, NULL));
    unlink(fifo);
    free(missing);
    free(fifo);
}

TEST(header_injection_through_http_destination_headers_is_refused)
{
    CHECK(open_refused("destinations: http http://127.0.0.1:1/x: header \"X\": value has a control character (0x0d",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://127.0.0.1:1/x\",\"headers\":{\"X\":\"a\\r\\nEvil: 1\"}}]", NULL));
    CHECK(open_refused("header \"X\": value has a control character (0x0a",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://127.0.0.1:1/x\",\"headers\":{\"X\":\"a\\nEvil: 1\"}}]", NULL));
    CHECK(open_refused("header \"X\": value has a control character (0x00",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://127.0.0.1:1/x\",\"headers\":{\"X\":\"a\\u0000b\"}}]", NULL));
    CHECK(open_refused("destinations: http hook: header name \"X\\x0d\\x0aEvil: 1\"",
                       "destinations", "[{\"type\":\"http\",\"name\":\"hook\",\"url\":\"http://127.0.0.1:1/x\",\"headers\":{\"X\\r\\nEvil: 1\":\"v\"}}]", NULL));
    CHECK(open_refused("header name \"X Y\" is not a token",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://127.0.0.1:1/x\",\"headers\":{\"X Y\":\"v\"}}]", NULL));
    CHECK(open_refused("header \"X\": value must be a string",
                       "destinations", "[{\"type\":\"http\",\"url\":\"http://127.0.0.1:1/x\",\"headers\":{\"X\":1}}]", NULL));
}

TEST(well_formed_headers_with_a_tab_still_open)
{
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "destinations",
                                  "[{\"type\":\"http\",\"url\":\"http://127.0.0.1:1/x\","
                                  "\"headers\":{\"X-Api-Key\":\"a\\tb c\",\"x~y!#\":\"\"}}]"), TALLY_OK);
    tally_t *t = NULL;
    CHECK_EQ_INT(tally_open(c, &t), TALLY_OK);
    if (t) tally_close(t, 0);
    tally_config_free(c);
}

TEST(failed_config_load_leaves_the_config_as_it_was)
{
    char *lua = tu_path("partial.lua"), *out = tu_path("partial.ndjson"), text[512];
    REQUIRE(lua && out);
    snprintf(text, sizeof text, "return { out = \"%s\", max_retries = 3, flush_at = \"abc\" }\n", out);
    tu_write_file(lua, text);
    tally_config *c = tally_config_new();
    REQUIRE(c);
    CHECK_EQ_INT(tally_config_set(c, "max_retries", "9"), TALLY_OK);
    tally_t *t = NULL;
    CHECK_EQ_INT(tally_open(c, &t), TALLY_ECONFIG); /* no destination yet */
    char before[512];
    snprintf(before, sizeof before, "%s", tally_errmsg(NULL));
    CHECK_EQ_INT(tally_config_load(c, lua), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "flush_at: expected an integer");
    CHECK_EQ_INT(c->ndests, 0);          /* `out` did not land */
    CHECK_EQ_INT(c->max_retries, 9);     /* nor did max_retries */
    CHECK_EQ_INT(c->flush_at, 100);
    CHECK_EQ_INT(tally_open(c, &t), TALLY_ECONFIG);
    CHECK_STR(tally_errmsg(NULL), before);
    CHECK(t == NULL);
    if (t) tally_close(t, 0);
    /* the same file without the bad key applies every key */
    snprintf(text, sizeof text, "return { out = \"%s\", max_retries = 3 }\n", out);
    tu_write_file(lua, text);
    CHECK_EQ_INT(tally_config_load(c, lua), TALLY_OK);
    CHECK_EQ_INT(c->ndests, 1);
    CHECK_EQ_INT(c->max_retries, 3);
    tally_config_free(c);
    free(lua);
    free(out);
}
