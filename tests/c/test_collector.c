/* Self-test of the C collector helper: the delivery tests trust its counts, so
 * check them against requests whose outcome is known. */
#include "collector.h"
#include "harness.h"

#include <curl/curl.h>
#include <unistd.h>

static size_t discard(char *data, size_t size, size_t nmemb, void *userdata)
{
    (void)data;
    (void)userdata;
    return size * nmemb;
}

/* Posts a batch the way tally does; returns the HTTP status, or -1 when no
 * response arrived. */
static long post_batch(collector *c, const char *body)
{
    CURL *h = curl_easy_init();
    if (!h) return -1;
    char url[128];
    snprintf(url, sizeof url, "%s/v1/batch", collector_url(c));
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_USERPWD, "test-write-key:");
    curl_easy_setopt(h, CURLOPT_USERAGENT, "tally/selftest");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    long status = -1;
    if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    return status;
}

static const char *const three =
    "{\"batch\":[{\"type\":\"track\",\"event\":\"a\",\"messageId\":\"m1\"},"
    "{\"type\":\"track\",\"event\":\"b\",\"messageId\":\"m2\"},"
    "{\"type\":\"track\",\"event\":\"c\",\"messageId\":\"m3\"}],"
    "\"sentAt\":\"2024-01-01T00:00:00.000Z\"}";

TEST(accepts_and_counts_a_batch)
{
    collector *c = collector_start(NULL);
    REQUIRE(c != NULL);
    CHECK(strncmp(collector_url(c), "http://127.0.0.1:", 17) == 0);
    CHECK_EQ_INT(collector_accepted(c), 0);
    CHECK_EQ_INT(post_batch(c, three), 200);
    CHECK_EQ_INT(collector_accepted(c), 3);
    CHECK_EQ_INT(collector_duplicates(c), 0);
    CHECK_EQ_INT(collector_requests(c), 1);

    char *rec = collector_received(c);
    CHECK_CONTAINS(rec, "\"auth_user\": \"test-write-key\"");
    CHECK_CONTAINS(rec, "\"auth_password\": \"\"");
    CHECK_CONTAINS(rec, "\"user_agent\": \"tally/selftest\"");
    CHECK_CONTAINS(rec, "\"sent_at\": \"2024-01-01T00:00:00.000Z\"");
    free(rec);
    collector_stop(c);
}

TEST(scripted_503_is_returned_and_not_counted)
{
    collector *c = collector_start(NULL);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(post_batch(c, three), 200);
    REQUIRE(collector_script(c, "{\"script\":[{\"status\":503}]}") == 0);
    CHECK_EQ_INT(post_batch(c, "{\"batch\":[{\"messageId\":\"m4\"}]}"), 503);
    CHECK_EQ_INT(collector_accepted(c), 3);
    CHECK_EQ_INT(collector_requests(c), 2);
    /* the script is used up: the default answer is back */
    CHECK_EQ_INT(post_batch(c, "{\"batch\":[{\"messageId\":\"m4\"}]}"), 200);
    CHECK_EQ_INT(collector_accepted(c), 4);
    collector_stop(c);
}

TEST(duplicates_and_reset)
{
    collector *c = collector_start(NULL);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(post_batch(c, three), 200);
    CHECK_EQ_INT(post_batch(c, three), 200);
    CHECK_EQ_INT(collector_accepted(c), 6);
    CHECK_EQ_INT(collector_duplicates(c), 3);
    collector_reset(c);
    CHECK_EQ_INT(collector_accepted(c), 0);
    CHECK_EQ_INT(collector_requests(c), 0);
    collector_stop(c);
}

TEST(bad_script_is_refused)
{
    collector *c = collector_start(NULL);
    REQUIRE(c != NULL);
    CHECK(collector_script(c, "{\"script\":[{\"stauts\":500}]}") != 0);
    CHECK(collector_script(c, "not json") != 0);
    collector_stop(c);
}

TEST(wait_accepted_reaches_and_times_out)
{
    collector *c = collector_start(NULL);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(post_batch(c, three), 200);
    CHECK_EQ_INT(collector_wait_accepted(c, 3, 2000), 0);
    CHECK_EQ_INT(collector_wait_accepted(c, 4, 50), -1);
    CHECK_EQ_INT(collector_wait_requests(c, 1, 2000), 0);
    collector_stop(c);
}

TEST(outage_refuses_then_recovers)
{
    collector *c = collector_start(NULL);
    REQUIRE(c != NULL);
    REQUIRE(collector_script(c, "{\"down_ms\":300}") == 0);
    /* the listener is closed before /control answers, so this cannot slip through */
    CHECK_EQ_INT(post_batch(c, three), -1);
    CHECK_EQ_INT(collector_wait_accepted(c, 0, 5000), 0); /* answers again: same port */
    CHECK_EQ_INT(post_batch(c, three), 200);
    CHECK_EQ_INT(collector_accepted(c), 3);
    CHECK_EQ_INT(collector_requests(c), 1);
    collector_stop(c);
}

TEST(log_file_gets_one_line_per_request)
{
    char path[] = "/tmp/tally-collector-log-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    collector *c = collector_start(path);
    CHECK(c != NULL);
    if (c) {
        CHECK_EQ_INT(post_batch(c, three), 200);
        CHECK_EQ_INT(post_batch(c, three), 200);
        collector_stop(c);
    }
    FILE *f = fopen(path, "r");
    int lines = 0, ch;
    while (f && (ch = fgetc(f)) != EOF) lines += ch == '\n';
    if (f) fclose(f);
    unlink(path);
    CHECK_EQ_INT(lines, 2);
}

TEST(stop_accepts_null) { collector_stop(NULL); }
