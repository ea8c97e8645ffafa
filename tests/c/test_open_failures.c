/* Every failing path of tally_open frees exactly what it made: each step is failed in turn (fault
 * points, src/fault.c), and each configuration that fails at a real stage is opened for real. After
 * each failure no descriptor, thread or store lock is left behind (ASan checks memory), and the
 * same configuration still opens and delivers. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "jfields.h"
#include "internal.h"
#include "tally.h"
#include "util.h"

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static int open_fds(void) { return count_entries("/proc/self/fd"); }
static int threads(void) { return count_entries("/proc/self/task"); }

/* A configuration that passes every step of tally_open: a store file, rules with a destination
 * mapping, a file destination using it and a segment destination (nothing listens on port 9). */
static tally_config *full_config(const char *tag, char **out_path)
{
    char name[64];
    snprintf(name, sizeof name, "%s-rules", tag);
    char *rules = tu_path(name);
    mkdir(rules, 0755);
    char rule[512];
    snprintf(rule, sizeof rule, "%s/10_keep.lua", rules);
    tu_write_file(rule, "return { name = 'keep', process = function(m) return m end }\n");
    snprintf(rule, sizeof rule, "%s/20_map.lua", rules);
    tu_write_file(rule, "return { name = 'map', stage = 'destination', map = function(m) return m end }\n");
    snprintf(name, sizeof name, "%s.ndjson", tag);
    *out_path = tu_path(name);
    snprintf(name, sizeof name, "%s.db", tag);
    char *store = tu_path(name);
    char dests[1024];
    snprintf(dests, sizeof dests, "[{\"type\":\"file\",\"path\":\"%s\",\"mapping\":\"map\"}]", *out_path);
    tally_config *c = tally_config_new();
    tally_config_set(c, "rules", rules);
    tally_config_set(c, "store", store);
    tally_config_set(c, "destinations", dests);
    tally_config_set(c, "write_key", "k");
    tally_config_set(c, "endpoint", "http://127.0.0.1:9");
    tally_config_set(c, "max_retries", "0");
    tally_config_set(c, "log_level", "off");
    free(rules);
    free(store);
    return c;
}

TEST(every_fault_point_of_open_frees_what_it_made)
{
    char *out_path;
    tally_config *c = full_config("faults", &out_path);
    /* one open and close first: threads a runtime starts once per process (TSan's) are not ours */
    tally_t *warm = NULL;
    REQUIRE(tally_open(c, &warm) == TALLY_OK);
    tally_close(warm, 0);
    int fds = open_fds(), ths = threads();
    long points = 0;
    for (long n = 1; n < 1000; n++) {
        atomic_store(&tly_fault_countdown, n);
        tally_t *t = (tally_t *)1;
        int rc = tally_open(c, &t);
        long left = atomic_exchange(&tly_fault_countdown, 0);
        if (rc == TALLY_OK) {
            REQUIRE(left > 0); /* no point fired: every point was walked */
            CHECK(t != NULL);
            tally_close(t, 0);
            points = n - 1;
            break;
        }
        CHECK(t == NULL);
        CHECK(rc < 0);
        CHECK(tally_errmsg(NULL)[0] != '\0');
        CHECK_EQ_INT(open_fds(), fds);
        CHECK_EQ_INT(threads(), ths);
        if (th_failed_now) {
            fprintf(stderr, "  (fault point %ld: %s)\n", n, tally_errmsg(NULL));
            break;
        }
    }
    /* tally_open's own steps, the worker's, one destination, both threads: all reachable */
    CHECK(points >= 15);
    fprintf(stderr, "  %ld fault points walked\n", points);
    /* nothing left locked or half-written: the same configuration opens and delivers */
    tally_t *t = NULL;
    REQUIRE(tally_open(c, &t) == TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "after_faults", NULL), TALLY_OK);
    tally_close(t, 10000);
    char *got = tu_read_file(out_path, NULL);
    CHECK_CONTAINS(got, "after_faults");
    free(got);
    CHECK_EQ_INT(open_fds(), fds);
    CHECK_EQ_INT(threads(), ths);
    free(out_path);
    tally_config_free(c);
}

/* One configuration per stage that can refuse it; each must fail with its code and leave nothing. */
struct bad_case { const char *name; int rc; const char *msg; const char *kv[8]; };

static void open_fails(const struct bad_case *bc)
{
    tally_config *c = tally_config_new();
    tally_config_set(c, "log_level", "off");
    for (int i = 0; bc->kv[i]; i += 2) {
        char *v = strstr(bc->kv[i + 1], "@") == bc->kv[i + 1] ? tu_path(bc->kv[i + 1] + 1) : strdup(bc->kv[i + 1]);
        if (tally_config_set(c, bc->kv[i], v) != TALLY_OK)
            fprintf(stderr, "  %s: setting %s: %s\n", bc->name, bc->kv[i], tally_errmsg(NULL));
        free(v);
    }
    int fds = open_fds(), ths = threads();
    tally_t *t = (tally_t *)1;
    int rc = tally_open(c, &t);
    if (rc != bc->rc) fprintf(stderr, "  case %s: rc %d (%s)\n", bc->name, rc, tally_errmsg(NULL));
    CHECK_EQ_INT(rc, bc->rc);
    CHECK(t == NULL);
    CHECK_CONTAINS(tally_errmsg(NULL), bc->msg);
    CHECK_EQ_INT(open_fds(), fds);
    CHECK_EQ_INT(threads(), ths);
    if (rc == TALLY_OK && t) tally_close(t, 0);
    tally_config_free(c);
}

/* Issue 15: `env -u TALLY_WRITE_KEY tally track --endpoint=...` crashed freeing an intake that
 * tally_open had not made yet. */
TEST(endpoint_without_write_key_fails_cleanly_instead_of_crashing)
{
    unsetenv("TALLY_WRITE_KEY");
    struct bad_case bc = {"endpoint", TALLY_ECONFIG, "write_key: required with endpoint",
                          {"endpoint", "http://127.0.0.1:9", NULL}};
    open_fails(&bc);
    tally_t *t = (tally_t *)1;
    CHECK_EQ_INT(tally_open(NULL, &t), TALLY_ECONFIG); /* defaults: no destination */
    CHECK(t == NULL);
}

TEST(bad_endpoint_in_the_environment_fails_cleanly)
{
    setenv("TALLY_ENDPOINT", "ftp://nowhere", 1);
    struct bad_case bc = {"env", TALLY_ECONFIG, "TALLY_ENDPOINT", {"write_key", "k", NULL}};
    open_fails(&bc);
    unsetenv("TALLY_ENDPOINT");
}

TEST(every_stage_that_refuses_a_configuration_frees_what_it_made)
{
    char *dir = tu_path("a-folder");
    mkdir(dir, 0755);
    free(dir);
    char *rules = tu_path("broken-rules");
    mkdir(rules, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/10_broken.lua", rules);
    tu_write_file(path, "return { name = 'broken', process = function(m) return m end\n");
    free(rules);
    const struct bad_case cases[] = {
        {"no destination", TALLY_ECONFIG, "no destination", {NULL}},
        {"store in a missing folder", TALLY_EIO, "", {"out", "@o1.ndjson", "store", "@missing/s.db", NULL}},
        {"store is a folder", TALLY_EIO, "", {"out", "@o2.ndjson", "store", "@a-folder", NULL}},
        {"second destination unknown", TALLY_ECONFIG, "nosuch",
         {"out", "@o3.ndjson", "destinations", "[{\"type\":\"nosuch\"}]", NULL}},
        {"destination configured twice", TALLY_ECONFIG, "configured twice",
         {"out", "@o4.ndjson", "out", "@o4.ndjson", NULL}},
        {"output file in a missing folder", TALLY_EIO, "", {"out", "@missing/o5.ndjson", NULL}},
        {"rules folder missing", TALLY_EIO, "no such file", {"out", "@o6.ndjson", "rules", "@no-rules", NULL}},
        {"rule does not compile", TALLY_ELUA, "10_broken.lua", {"out", "@o7.ndjson", "rules", "@broken-rules", NULL}},
        {"mapping is not a rule", TALLY_ECONFIG, "mapping",
         {"destinations", "[{\"type\":\"file\",\"path\":\"/dev/null\",\"mapping\":\"nope\"}]", NULL}},
        {"rule_config names no rule", TALLY_ECONFIG, "no rule named",
         {"out", "@o8.ndjson", "rules", "@faults-rules", "rule_config", "{\"ghost\":{}}", NULL}},
    };
    char *unused;
    tally_config_free(full_config("faults", &unused)); /* makes faults-rules */
    free(unused);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) open_fails(&cases[i]);
}

/* Two handles on one store: the second is refused, and the first keeps working. */
TEST(second_open_of_a_locked_store_fails_cleanly)
{
    char *out_path;
    tally_config *c = full_config("locked", &out_path);
    tally_t *a = NULL, *b = (tally_t *)1;
    REQUIRE(tally_open(c, &a) == TALLY_OK);
    int fds = open_fds(), ths = threads();
    int rc = tally_open(c, &b);
    CHECK(rc < 0);
    CHECK(b == NULL);
    CHECK_EQ_INT(open_fds(), fds);
    CHECK_EQ_INT(threads(), ths);
    CHECK_EQ_INT(tally_track(a, "still_open", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_close(a, 10000), TALLY_OK);
    char *got = tu_read_file(out_path, NULL);
    CHECK_CONTAINS(got, "still_open");
    free(got);
    free(out_path);
    tally_config_free(c);
}

/* A message list that cannot grow (out of memory in the processor) loses the message it was for:
 * counted as store_given_up, not lost silently. After open, fault point 1 is the first growth of
 * the rules' result list, point 2 that of the destination mapping's payload list. */
static void list_growth_fails(long point, const char *tag)
{
    char name[64];
    snprintf(name, sizeof name, "%s-rules", tag);
    char *rules = tu_path(name);
    mkdir(rules, 0755);
    char rule[512];
    snprintf(rule, sizeof rule, "%s/20_map.lua", rules);
    tu_write_file(rule, "return { name = 'map', stage = 'destination', map = function(m) return m end }\n");
    snprintf(name, sizeof name, "%s.ndjson", tag);
    char *out_path = tu_path(name);
    char dests[1024];
    snprintf(dests, sizeof dests, "[{\"type\":\"file\",\"path\":\"%s\",\"mapping\":\"map\"}]", out_path);
    tally_config *c = tally_config_new();
    REQUIRE(tally_config_set(c, "rules", rules) == TALLY_OK);
    REQUIRE(tally_config_set(c, "destinations", dests) == TALLY_OK);
    REQUIRE(tally_config_set(c, "log_level", "off") == TALLY_OK);
    tally_t *t = NULL;
    REQUIRE(tally_open(c, &t) == TALLY_OK);
    atomic_store(&tly_fault_countdown, point);
    CHECK_EQ_INT(tally_track(t, "lost", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "kept", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 10000), TALLY_OK);
    CHECK_EQ_INT(atomic_exchange(&tly_fault_countdown, 0), 0); /* the point was reached */
    CHECK_EQ_INT(tu_stat(t, NULL, "store_given_up"), 1);
    char *text = tu_read_file(out_path, NULL);
    CHECK(text && !strstr(text, "\"lost\"") && strstr(text, "\"kept\""));
    free(text);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    tally_config_free(c);
    free(out_path);
    free(rules);
}

TEST(result_list_out_of_memory_counts_the_message) { list_growth_fails(1, "oom-results"); }

TEST(payload_list_out_of_memory_counts_the_message) { list_growth_fails(2, "oom-payloads"); }
