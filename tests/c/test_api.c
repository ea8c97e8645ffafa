/* The public C API end to end: configuration errors, each message type's shape, what the
 * runtime stamps, what it keeps exactly, and every bad-input case named by the issue. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "jfields.h"
#include "internal.h"
#include "json.h"
#include "tally.h"
#include "util.h"

/* Parses line n of an NDJSON file into a tree living in *a. */
static tj_value *message_at(tj_arena *a, const char *path, int n)
{
    char *line = tu_line(path, n);
    if (!line) return NULL;
    tj_value *v = NULL;
    tj_error err;
    if (tj_parse(a, tj_strdup(a, line, strlen(line)), strlen(line), &v, &err)) v = NULL;
    free(line);
    return v;
}


static int matches(const char *s, const char *pattern)
{
    regex_t re;
    if (!s || regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB)) return 0;
    int ok = regexec(&re, s, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

/* ---- configuration ---- */

TEST(config_unknown_key_is_named)
{
    tally_config *c = tally_config_new();
    CHECK_EQ_INT(tally_config_set(c, "flush_att", "10"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "flush_att");
    tally_config_free(c);
}

TEST(config_bad_values_name_key_and_limit)
{
    tally_config *c = tally_config_new();
    CHECK_EQ_INT(tally_config_set(c, "flush_at", "0"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "flush_at: expected an integer from 1 to 10000");
    CHECK_EQ_INT(tally_config_set(c, "flush_interval_ms", "soon"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "flush_interval_ms");
    CHECK_EQ_INT(tally_config_set(c, "on_full", "block"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "on_full: expected one of drop_newest, drop_oldest");
    CHECK_EQ_INT(tally_config_set(c, "gzip", "yes"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "gzip");
    CHECK_EQ_INT(tally_config_set(c, "endpoint", "ftp://x"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "endpoint");
    CHECK_EQ_INT(tally_config_set(c, "mode", "serverless"), TALLY_ECONFIG);
    CHECK_EQ_INT(tally_config_set(c, "destinations", "{\"type\":\"file\"}"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "destinations: expected a JSON array");
    CHECK_EQ_INT(tally_config_set(c, "destinations", "[{\"path\":\"x\"}]"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "destinations[0]");
    CHECK_EQ_INT(tally_config_set(c, "destinations", "[{"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "invalid JSON");
    CHECK_EQ_INT(tally_config_set(c, "flush_at", "250"), TALLY_OK);
    CHECK_EQ_INT(tally_config_set(c, NULL, "1"), TALLY_EINVAL);
    tally_config_free(c);
}

TEST(open_without_destination_fails_clearly)
{
    unsetenv("TALLY_WRITE_KEY");
    unsetenv("TALLY_ENDPOINT");
    tally_t *t = (tally_t *)1;
    CHECK_EQ_INT(tally_open(NULL, &t), TALLY_ECONFIG);
    CHECK(t == NULL);
    CHECK_CONTAINS(tally_errmsg(NULL), "no destination");
}

TEST(open_with_unknown_destination_type_names_it)
{
    tally_config *c = tally_config_new();
    tally_config_set(c, "destinations", "[{\"type\":\"carrier-pigeon\"}]");
    tally_t *t;
    CHECK_EQ_INT(tally_open(c, &t), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "carrier-pigeon");
    tally_config_free(c);
}

TEST(config_file_in_lua_sets_keys)
{
    char *path = tu_path("conf.lua"), *out = tu_path("conf.ndjson");
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "local n = 2 * 25\nreturn { flush_at = n, gzip = true, log_level = 'off',\n"
               "  destinations = { { type = 'file', path = '%s' } } }\n", out);
    fclose(f);
    tally_config *c = tally_config_new();
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_OK);
    tally_t *t = NULL;
    CHECK_EQ_INT(tally_open(c, &t), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "Config Loaded", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    tally_config_free(c);
    free(path);
    free(out);
}

TEST(config_file_errors_are_reported_not_fatal)
{
    char *path = tu_path("bad.lua");
    tally_config *c = tally_config_new();
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("return { flush_at = 'many' }", f);
    fclose(f);
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "flush_at");
    f = fopen(path, "w");
    fputs("return io.open('/etc/passwd')", f);
    fclose(f);
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_ELUA);
    f = fopen(path, "w");
    fputs("while true do end", f);
    fclose(f);
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_ELUA);
    CHECK_CONTAINS(tally_errmsg(NULL), "instruction limit");
    f = fopen(path, "w");
    fputs("local s = string.rep('x', 1 << 40) return {}", f);
    fclose(f);
    CHECK_EQ_INT(tally_config_load(c, path), TALLY_ELUA);
    CHECK_EQ_INT(tally_config_load(c, "/nonexistent/tally.lua"), TALLY_EIO);
    tally_config_free(c);
    free(path);
}

/* ---- messages ---- */

TEST(track_writes_a_stamped_message_with_exact_properties)
{
    char *out = tu_path("track.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    const char *props = "{\"n\":9007199254740993,\"f\":0.1,\"a\":[],\"z\":null,\"s\":\"caf\xc3\xa9\"}";
    CHECK_EQ_INT(tally_track(t, "Button Clicked", props), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"properties\":{\"n\":9007199254740993,\"f\":0.1,\"a\":[],\"z\":null,\"s\":\"caf\xc3\xa9\"}");
    tj_arena *a = tj_arena_new();
    tj_value *m = message_at(a, out, 0);
    REQUIRE(m);
    CHECK_STR(tu_jstr(m, "type"), "track");
    CHECK_STR(tu_jstr(m, "event"), "Button Clicked");
    CHECK(matches(tu_jstr(m, "messageId"), "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"));
    CHECK(matches(tu_jstr(m, "timestamp"), "^20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\\.[0-9]{3}Z$"));
    CHECK(matches(tu_jstr(m, "anonymousId"), "^[0-9a-f-]{36}$"));
    CHECK(tj_object_get(m, "userId") == NULL);
    tj_value *lib = tj_object_get(tj_object_get(m, "context"), "library");
    CHECK_STR(tu_jstr(lib, "name"), "tally");
    CHECK_STR(tu_jstr(lib, "version"), tally_version());
    tj_arena_free(a);
    free(line);
    tally_close(t, 1000);
    free(out);
}

/* Properties as a caller may well pass them, pretty-printed: each message is still one NDJSON
 * line, with the same content. */
TEST(pretty_printed_properties_stay_on_one_line)
{
    char *out = tu_path("pretty.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "A", "{\n  \"a\": 1,\r\n  \"s\": \"x\\ny\"\n}"), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "B", "{\"b\":2}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    size_t len = 0;
    char *text = tu_read_file(out, &len);
    REQUIRE(text);
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    CHECK_EQ_INT(lines, 2);
    tj_arena *a = tj_arena_new();
    tj_value *m = message_at(a, out, 0);
    REQUIRE(m);
    CHECK_STR(tu_jstr(m, "event"), "A");
    CHECK_EQ_INT(tu_jint(tj_object_get(m, "properties"), "a"), 1);
    CHECK_STR(tu_jstr(tj_object_get(m, "properties"), "s"), "x\ny"); /* an escaped newline stays one */
    tj_arena_free(a);
    free(text);
    tally_close(t, 1000);
    free(out);
}

TEST(each_call_builds_its_spec_shape)
{
    char *out = tu_path("shapes.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_page(t, "Docs", "HTTP API", "{\"path\":\"/docs\"}"), TALLY_OK);
    CHECK_EQ_INT(tally_screen(t, "Main Menu", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_identify(t, "user-42", "{\"email\":\"peter@initech.com\"}"), TALLY_OK);
    CHECK_EQ_INT(tally_group(t, "initech", "{\"plan\":\"enterprise\"}"), TALLY_OK);
    CHECK_EQ_INT(tally_alias(t, "user-42", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "Level Completed", "{\"level\":3}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    REQUIRE(tu_count_lines(out) == 6);
    tj_arena *a = tj_arena_new();
    tj_value *page = message_at(a, out, 0), *screen = message_at(a, out, 1), *ident = message_at(a, out, 2),
             *group = message_at(a, out, 3), *alias = message_at(a, out, 4), *track = message_at(a, out, 5);
    REQUIRE(page && screen && ident && group && alias && track);
    CHECK_STR(tu_jstr(page, "type"), "page");
    CHECK_STR(tu_jstr(page, "name"), "HTTP API");
    CHECK_STR(tu_jstr(page, "category"), "Docs");
    CHECK_STR(tu_jstr(tj_object_get(page, "properties"), "path"), "/docs");
    CHECK_STR(tu_jstr(screen, "type"), "screen");
    CHECK_STR(tu_jstr(screen, "name"), "Main Menu");
    CHECK_STR(tu_jstr(ident, "type"), "identify");
    CHECK_STR(tu_jstr(ident, "userId"), "user-42");
    CHECK_STR(tu_jstr(tj_object_get(ident, "traits"), "email"), "peter@initech.com");
    CHECK_STR(tu_jstr(group, "groupId"), "initech");
    CHECK_STR(tu_jstr(alias, "type"), "alias");
    CHECK_STR(tu_jstr(alias, "userId"), "user-42");
    /* previousId defaults to the anonymous id, which keeps flowing after login */
    CHECK_STR(tu_jstr(alias, "previousId"), tu_jstr(page, "anonymousId"));
    CHECK_STR(tu_jstr(track, "userId"), "user-42");
    CHECK_STR(tu_jstr(track, "anonymousId"), tu_jstr(page, "anonymousId"));
    CHECK(tj_object_get(page, "userId") == NULL);
    tj_arena_free(a);
    tally_close(t, 1000);
    free(out);
}

TEST(reset_issues_new_anonymous_id_and_clears_user)
{
    char *out = tu_path("reset.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    tally_identify(t, "u1", NULL);
    tally_track(t, "Before Logout", NULL);
    CHECK_EQ_INT(tally_reset(t), TALLY_OK);
    tally_track(t, "After Logout", NULL);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    tj_arena *a = tj_arena_new();
    tj_value *before = message_at(a, out, 1), *after = message_at(a, out, 2);
    REQUIRE(before && after);
    CHECK_STR(tu_jstr(before, "userId"), "u1");
    CHECK(tj_object_get(after, "userId") == NULL);
    CHECK(tu_jstr(after, "anonymousId") && tu_jstr(before, "anonymousId") &&
          strcmp(tu_jstr(after, "anonymousId"), tu_jstr(before, "anonymousId")) != 0);
    tj_arena_free(a);
    tally_close(t, 1000);
    free(out);
}

TEST(send_keeps_caller_fields_exactly)
{
    char *out = tu_path("send.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    const char *msg = "{\"type\":\"track\",\"event\":\"Order Completed\",\"userId\":\"u1\","
                      "\"messageId\":\"my-id-1\",\"timestamp\":\"2020-01-02T03:04:05.678Z\","
                      "\"context\":{\"ip\":\"8.8.8.8\",\"big\":-9223372036854775808},"
                      "\"integrations\":{\"All\":false,\"Mixpanel\":true},\"properties\":{\"total\":1e-7}}";
    CHECK_EQ_INT(tally_send(t, msg), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"messageId\":\"my-id-1\"");
    CHECK_CONTAINS(line, "\"timestamp\":\"2020-01-02T03:04:05.678Z\"");
    CHECK_CONTAINS(line, "\"ip\":\"8.8.8.8\"");
    CHECK_CONTAINS(line, "\"big\":-9223372036854775808");
    CHECK_CONTAINS(line, "\"integrations\":{\"All\":false,\"Mixpanel\":true}");
    CHECK_CONTAINS(line, "\"properties\":{\"total\":1e-7}");
    CHECK_CONTAINS(line, "\"library\":{\"name\":\"tally\"");
    free(line);
    tally_close(t, 1000);
    free(out);
}

TEST(bad_input_is_rejected_naming_the_field)
{
    char *out = tu_path("bad.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, NULL, NULL), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "event: required");
    CHECK_EQ_INT(tally_track(t, "", NULL), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "event: must not be empty");
    CHECK_EQ_INT(tally_track(t, "E", "{\"a\":}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "properties: invalid JSON");
    CHECK_CONTAINS(tally_errmsg(t), "offset 5");
    CHECK_EQ_INT(tally_track(t, "E", "[1,2]"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "properties: expected a JSON object");
    CHECK_EQ_INT(tally_track(t, "bad \xc0\x80 name", NULL), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "event: invalid UTF-8");
    CHECK_EQ_INT(tally_track(t, "E", "{\"s\":\"\xff\"}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "invalid UTF-8");
    char deep[200] = "{\"a\":";
    for (int i = 0; i < 65; i++) strcat(deep, "[");
    for (int i = 0; i < 65; i++) strcat(deep, "]");
    strcat(deep, "}");
    CHECK_EQ_INT(tally_track(t, "E", deep), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "deeper than 64");
    size_t big = 33 * 1024;
    char *huge = malloc(big + 16);
    REQUIRE(huge);
    memcpy(huge, "{\"s\":\"", 6);
    memset(huge + 6, 'x', big);
    strcpy(huge + 6 + big, "\"}");
    CHECK_EQ_INT(tally_track(t, "E", huge), TALLY_ETOOBIG);
    CHECK_CONTAINS(tally_errmsg(t), "32768");
    free(huge);
    CHECK_EQ_INT(tally_group(t, NULL, NULL), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "groupId");
    CHECK_EQ_INT(tally_alias(t, NULL, "x"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "userId");
    CHECK_EQ_INT(tally_send(t, "{\"event\":\"E\"}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "type: required");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"click\"}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "type: expected one of");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"userId\":\"u\"}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "event: required");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"E\",\"properties\":[]}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "properties: expected an object");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"alias\",\"userId\":\"u\"}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "previousId");
    CHECK_EQ_INT(tally_send(t, NULL), TALLY_EINVAL);
    CHECK_EQ_INT(tally_track(NULL, "E", NULL), TALLY_EINVAL);
    /* none of the rejected calls reached the output; a good one still does */
    CHECK_EQ_INT(tally_track(t, "Good", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    char *stats = NULL;
    CHECK_EQ_INT(tally_stats(t, &stats), TALLY_OK);
    CHECK_CONTAINS(stats, "\"accepted\":1,");
    CHECK_CONTAINS(stats, "\"rejected\":16,"); /* the NULL-handle call has no handle to count on */
    tally_free(stats);
    tally_close(t, 1000);
    free(out);
}

TEST(server_mode_requires_ids)
{
    char *out = tu_path("server.ndjson");
    tally_t *t = tu_open_file(out, "mode", "server", NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"E\"}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "userId or anonymousId");
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "server mode");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"E\",\"anonymousId\":\"a1\"}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"anonymousId\":\"a1\"");
    CHECK(line && !strstr(line, "userId"));
    free(line);
    tally_close(t, 1000);
    free(out);
}

TEST(status_codes_have_stable_text)
{
    CHECK_STR(tally_strerror(TALLY_OK), "ok");
    CHECK_STR(tally_strerror(TALLY_EINVAL), "invalid argument");
    CHECK_STR(tally_strerror(TALLY_ETIMEDOUT), "timed out");
    CHECK_STR(tally_strerror(12345), "unknown error");
    CHECK_STR(tally_version(), TALLY_VERSION);
}

TEST(fork_child_gets_clear_error_parent_keeps_working)
{
    char *out = tu_path("fork.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = tally_track(t, "From Child", NULL);
        int ok = rc == TALLY_EFORK && strstr(tally_errmsg(t), "fork") != NULL &&
                 tally_close(t, 0) == TALLY_EFORK;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    REQUIRE(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ_INT(tally_track(t, "From Parent", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    free(out);
}

TEST(close_flushes_what_was_queued)
{
    char *out = tu_path("close.ndjson");
    tally_t *t = tu_open_file(out, "flush_interval_ms", "3600000", "flush_at", "10000", NULL);
    REQUIRE(t);
    for (int i = 0; i < 500; i++) CHECK_EQ_INT(tally_track(t, "E", "{\"i\":1}"), TALLY_OK);
    CHECK_EQ_INT(tally_close(t, 10000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 500);
    free(out);
}

TEST(batches_close_at_flush_at_without_waiting_for_the_interval)
{
    char *out = tu_path("flushat.ndjson");
    tally_t *t = tu_open_file(out, "flush_interval_ms", "3600000", "flush_at", "5", NULL);
    REQUIRE(t);
    for (int i = 0; i < 5; i++) tally_track(t, "E", NULL);
    /* no flush call: the 5th message closes the batch; poll the observable stats */
    char *stats = NULL;
    int delivered = 0;
    for (int i = 0; i < 500 && !delivered; i++) {
        tally_stats(t, &stats);
        delivered = strstr(stats, "\"delivered\":5,") != NULL;
        tally_free(stats);
        if (!delivered) usleep(10000);
    }
    CHECK(delivered);
    tally_close(t, 1000);
    free(out);
}

TEST(top_level_write_key_adds_no_second_segment_destination)
{
    tally_config *c = tally_config_new();
    tally_config_set(c, "write_key", "k1");
    tally_config_set(c, "destinations", "[{\"type\":\"segment\",\"endpoint\":\"http://127.0.0.1:9\",\"name\":\"mine\"}]");
    tally_config_set(c, "log_level", "off");
    tally_t *t = NULL;
    REQUIRE(tally_open(c, &t) == TALLY_OK);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"name\":\"segment:mine\"");
    CHECK(stats && !strstr(stats, "api.segment.io"));
    tally_free(stats);
    tally_close(t, 0);
    tally_config_free(c);
}

TEST(write_key_shorthand_with_other_destinations_adds_segment)
{
    tally_config *c = tally_config_new();
    tally_config_set(c, "write_key", "k1");
    tally_config_set(c, "endpoint", "http://127.0.0.1:9");
    tally_config_set(c, "out", "/dev/null");
    tally_config_set(c, "log_level", "off");
    tally_t *t = NULL;
    REQUIRE(tally_open(c, &t) == TALLY_OK);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"name\":\"file:/dev/null\"");
    CHECK_CONTAINS(stats, "\"name\":\"segment:http://127.0.0.1:9\"");
    tally_free(stats);
    tally_close(t, 0);
    tally_config_free(c);
}

TEST(nan_inf_and_overflowing_numbers_are_rejected)
{
    char *out = tu_path("nan.ndjson");
    tally_t *t = tu_open_file(out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "E", "{\"x\":NaN}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "properties: invalid JSON");
    CHECK_EQ_INT(tally_track(t, "E", "{\"x\":Infinity}"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_track(t, "E", "{\"x\":-Infinity}"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_track(t, "E", "{\"x\":1e999}"), TALLY_EINVAL);
    CHECK_CONTAINS(tally_errmsg(t), "out of range");
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"E\",\"properties\":{\"x\":-1e400}}"), TALLY_EINVAL);
    CHECK_EQ_INT(tally_track(t, "E", "{\"x\":1e308}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 5000), TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    tally_close(t, 1000);
    free(out);
}

TEST(uuid_pool_is_not_replayed_in_a_fork_child)
{
    char parent_next[37], child_next[37] = "";
    int p[2];
    REQUIRE(pipe(p) == 0);
    char warm[37];
    REQUIRE(tly_uuid4(warm) == TALLY_OK); /* the pool is filled in the parent */
    pid_t pid = fork();
    if (pid == 0) {
        char id[37];
        tly_uuid4(id);
        ssize_t w = write(p[1], id, 37);
        _exit(w == 37 ? 0 : 1);
    }
    REQUIRE(tly_uuid4(parent_next) == TALLY_OK);
    REQUIRE(read(p[0], child_next, 37) == 37);
    waitpid(pid, NULL, 0);
    close(p[0]);
    close(p[1]);
    CHECK(strcmp(parent_next, child_next) != 0);
}

/* Timestamps are formatted without gmtime_r (its time zone lock is taken on every call): the
 * arithmetic must agree with the C library on every day from year 1 to 9999, leap days and
 * times before 1970 included. */
TEST(timestamps_agree_with_gmtime)
{
    long bad = 0, n = 0;
    for (int64_t ms = -62135596800000LL; ms < 253402300800000LL; ms += 86399999LL + 3600001LL * 5) {
        int64_t secs = ms / 1000;
        int frac = (int)(ms % 1000);
        if (frac < 0) { frac += 1000; secs--; }
        time_t tt = (time_t)secs;
        struct tm tm;
        REQUIRE(gmtime_r(&tt, &tm));
        char want[64], got[25];
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
        tly_iso8601(ms, got);
        if (strcmp(want, got) && bad++ < 3) fprintf(stderr, "  %lld: %s, gmtime says %s\n", (long long)ms, got, want);
        n++;
    }
    CHECK(n > 300000);
    CHECK_EQ_INT(bad, 0);
    char s[25];
    tly_iso8601(951782400000LL, s); /* 2000 is a leap year */
    CHECK_STR(s, "2000-02-29T00:00:00.000Z");
    tly_iso8601(-1, s);
    CHECK_STR(s, "1969-12-31T23:59:59.999Z");
}
