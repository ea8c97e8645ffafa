/* rule_threads (issue 18): in server mode messages are routed to several rule states by a hash of
 * their userId (else anonymousId). What is promised, through the public API: one identity's
 * messages reach every destination in the order they were accepted; a reload applies between two
 * messages on every state; the breaker trips per state and the stats sum the states; forget,
 * flush and close keep their ordering; nothing is lost or duplicated; client mode refuses N > 1.
 *
 * The rules below count the messages they see in a script-level local: each rule state has its
 * own, so a message's count says which run of which state it went through (docs/rules.md). */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* properties.n: the how-many-th message this state's copy of the rule saw; properties.v: the
 * version written in the file (changed for the reload test). */
static char *counting_rules(const char *tag, int version)
{
    char text[512];
    snprintf(text, sizeof text,
             "local n = 0\n"
             "return { name = 'count', stage = 'enrichment', process = function(m)\n"
             "  n = n + 1; m.properties.n = n; m.properties.v = %d; return m end }\n", version);
    return tf_rules_dir(tag, "10_count.lua", text, NULL);
}

/* The destination-stage twin of counting_rules, for a second destination with a mapping. */
static const char *mapping_rule =
    "return { name = 'shape', stage = 'destination', map = function(m)\n"
    "  return { uid = m.userId, seq = m.properties.seq, n = m.properties.n } end }\n";

static int send_seq(tally_t *t, const char *user, int seq)
{
    char json[256];
    snprintf(json, sizeof json, "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"%s\",\"properties\":{\"seq\":%d}}",
             user, seq);
    int rc;
    while ((rc = tally_send(t, json)) == TALLY_EFULL) sched_yield(); /* the intake is bounded */
    return rc;
}

/* One delivered line: its identity, seq and the rule's fields; -1 where absent. */
typedef struct line {
    char id[32];
    long long seq, n, v;
} line;

/* Reads an NDJSON file: either whole messages (uid_key "userId", fields under properties) or
 * the mapped payloads (uid_key "uid", fields at the top). */
static line *read_lines(const char *path, int mapped, size_t *count)
{
    size_t len = 0, cap = 1024, k = 0;
    char *text = tu_read_file(path, &len);
    line *v = malloc(cap * sizeof *v);
    tj_arena *a = tj_arena_new();
    for (char *s = text, *e; s && *s; s = e + 1) {
        e = strchr(s, '\n');
        if (!e) break;
        tj_value *m;
        tj_error err;
        tj_arena_reset(a);
        if (tj_parse(a, s, (size_t)(e - s), &m, &err)) {
            fprintf(stderr, "  not JSON: %.*s\n", (int)(e - s), s);
            continue;
        }
        const tj_value *p = mapped ? m : tj_object_get(m, "properties");
        const char *id = tu_jstr(m, mapped ? "uid" : "userId");
        if (k == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        snprintf(v[k].id, sizeof v[k].id, "%s", id ? id : "");
        v[k].seq = tu_jint(p, "seq");
        v[k].n = tu_jint(p, "n");
        v[k].v = mapped ? -1 : tu_jint(p, "v");
        k++;
    }
    tj_arena_free(a);
    free(text);
    *count = k;
    return v;
}

/* Every identity's lines in seq order, each seq once, every one of `per` there, and each
 * identity on one state (its counts rise with its seqs, per version of the rules). Returns how many lines had n == 1:
 * one per state that saw messages. */
static int check_order(const line *v, size_t count, int nids, int per)
{
    int starts = 0;
    for (int u = 0; u < nids; u++) {
        char id[32];
        snprintf(id, sizeof id, "u%d", u);
        long long next = 0, last_n = 0, last_v = -2;
        for (size_t k = 0; k < count; k++) {
            if (strcmp(v[k].id, id)) continue;
            if (v[k].v != last_v) last_n = 0; /* a reload: a fresh copy of the rule, counting anew */
            last_v = v[k].v;
            CHECK_EQ_INT(v[k].seq, next); /* in order, none missing or twice */
            CHECK(v[k].n > last_n);      /* one state, in order */
            next = v[k].seq + 1;
            last_n = v[k].n;
        }
        CHECK_EQ_INT(next, per);
    }
    for (size_t k = 0; k < count; k++) starts += v[k].n == 1;
    return starts;
}

static void order_case(int nstates)
{
    char rules_text[512];
    snprintf(rules_text, sizeof rules_text,
             "local n = 0\n"
             "return { name = 'count', stage = 'enrichment', process = function(m)\n"
             "  n = n + 1; m.properties.n = n; m.properties.v = 1; return m end }\n");
    char *rules = tf_rules_dir("order", "10_count.lua", rules_text, "20_shape.lua", mapping_rule, NULL);
    char *out = tu_path("order.ndjson"), *shaped = tu_path("order-mapped.ndjson");
    unlink(out);
    unlink(shaped);
    char dests[1024], threads[8];
    snprintf(dests, sizeof dests, "[{\"type\":\"file\",\"name\":\"whole\",\"path\":\"%s\"},"
             "{\"type\":\"file\",\"name\":\"shaped\",\"path\":\"%s\",\"mapping\":\"shape\"}]", out, shaped);
    snprintf(threads, sizeof threads, "%d", nstates);
    tally_t *t = tf_open("destinations", dests, "mode", "server", "rule_threads", threads, "rules", rules, NULL);
    REQUIRE(t);
    enum { IDS = 37, PER = 60 };
    for (int i = 0; i < PER; i++)
        for (int u = 0; u < IDS; u++) {
            char id[32];
            snprintf(id, sizeof id, "u%d", u);
            CHECK_EQ_INT(send_seq(t, id, i), TALLY_OK);
        }
    CHECK_EQ_INT(tally_close(t, 20000), TALLY_OK);
    size_t n = 0, nm = 0;
    line *v = read_lines(out, 0, &n), *w = read_lines(shaped, 1, &nm);
    CHECK_EQ_INT(n, IDS * PER);
    CHECK_EQ_INT(nm, IDS * PER);
    /* every state ran messages: each started its count at 1 once */
    CHECK_EQ_INT(check_order(v, n, IDS, PER), nstates);
    CHECK_EQ_INT(check_order(w, nm, IDS, PER), nstates);
    free(v);
    free(w);
    free(rules);
    free(out);
    free(shaped);
}

TEST(one_identity_stays_in_order_at_every_destination_with_two_rule_states) { order_case(2); }
TEST(one_identity_stays_in_order_at_every_destination_with_three_rule_states) { order_case(3); }

TEST(a_reload_applies_between_two_messages_on_every_rule_state)
{
    char *rules = counting_rules("reload", 1), *out = tu_path("reload.ndjson"), path[600];
    unlink(out);
    tally_t *t = tf_open("out", out, "mode", "server", "rule_threads", "3", "rules", rules, NULL);
    REQUIRE(t);
    enum { IDS = 30, PER = 20 };
    for (int i = 0; i < PER; i++)
        for (int u = 0; u < IDS; u++) {
            char id[32];
            snprintf(id, sizeof id, "u%d", u);
            CHECK_EQ_INT(send_seq(t, id, i), TALLY_OK);
        }
    /* not flushed: messages before the reload are still in the intake and the states */
    snprintf(path, sizeof path, "%s/10_count.lua", rules);
    tu_write_file(path, "local n = 0\n"
                        "return { name = 'count', stage = 'enrichment', process = function(m)\n"
                        "  n = n + 1; m.properties.n = n; m.properties.v = 2; return m end }\n");
    CHECK_EQ_INT(tally_reload(t, 20000), TALLY_OK);
    for (int i = PER; i < 2 * PER; i++)
        for (int u = 0; u < IDS; u++) {
            char id[32];
            snprintf(id, sizeof id, "u%d", u);
            CHECK_EQ_INT(send_seq(t, id, i), TALLY_OK);
        }
    CHECK_EQ_INT(tally_close(t, 20000), TALLY_OK);
    size_t n = 0;
    line *v = read_lines(out, 0, &n);
    CHECK_EQ_INT(n, IDS * 2 * PER);
    int old_starts = 0, new_starts = 0;
    for (size_t k = 0; k < n; k++) {
        CHECK_EQ_INT(v[k].v, v[k].seq < PER ? 1 : 2); /* accepted before: old rules; after: new */
        old_starts += v[k].v == 1 && v[k].n == 1;
        new_starts += v[k].v == 2 && v[k].n == 1;
    }
    /* each of the three states ran the old set, then a fresh copy of the new one */
    CHECK_EQ_INT(old_starts, 3);
    CHECK_EQ_INT(new_starts, 3);
    CHECK_EQ_INT(check_order(v, n, IDS, 2 * PER), 6);
    free(v);
    free(rules);
    free(out);
}

/* A rule failing for one identity only: the breaker disables it in that identity's state, and
 * the other state still runs it; tally_stats sums the calls of both and counts one disabled. */
TEST(the_breaker_trips_per_rule_state)
{
    char *rules = tf_rules_dir("breaker", "10_ok.lua",
                               "return { name = 'ok', stage = 'enrichment', process = function(m)\n"
                               "  if m.userId == 'bad' then error('boom') end m.properties.ok = true; return m end }\n",
                               NULL);
    char *out = tu_path("breaker.ndjson");
    unlink(out);
    tally_t *t = tf_open("out", out, "mode", "server", "rule_threads", "2", "rules", rules, "rule_breaker", "3", NULL);
    REQUIRE(t);
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(send_seq(t, "bad", i), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    enum { IDS = 40 };
    for (int u = 0; u < IDS; u++) {
        char id[32];
        snprintf(id, sizeof id, "u%d", u);
        CHECK_EQ_INT(send_seq(t, id, 0), TALLY_OK);
    }
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    char *stats = NULL;
    CHECK_EQ_INT(tally_stats(t, &stats), TALLY_OK);
    CHECK_CONTAINS(stats, "\"disabled\":true,\"disabled_states\":1");
    /* 3 failures before the breaker, then it is not called in that state */
    long long calls_after_trip = -1;
    const char *c = stats ? strstr(stats, "\"calls\":") : NULL;
    if (c) calls_after_trip = strtoll(c + 8, NULL, 10);
    tally_free(stats);
    CHECK_EQ_INT(tally_close(t, 20000), TALLY_OK);
    size_t len = 0;
    char *text = tu_read_file(out, &len);
    REQUIRE(text);
    int ran = 0, skipped = 0;
    for (int u = 0; u < IDS; u++) {
        char needle[64];
        snprintf(needle, sizeof needle, "\"userId\":\"u%d\"", u);
        const char *m = strstr(text, needle);
        REQUIRE(m);
        const char *start = m, *end = strchr(m, '\n');
        while (start > text && start[-1] != '\n') start--;
        const char *ok = strstr(start, "\"ok\":true");
        if (ok && ok < end) ran++;
        else skipped++;
    }
    /* both states had identities; the rule ran in the healthy one only */
    CHECK(ran > 0);
    CHECK(skipped > 0);
    CHECK_EQ_INT(calls_after_trip, 3 + ran);
    free(text);
    free(rules);
    free(out);
}

/* ---- no loss, no duplicate, when closing while the states are busy ---- */

struct sender {
    tally_t *t;
    int      first, n;
    int      accepted;
};

static void *send_many(void *arg)
{
    struct sender *s = arg;
    for (int i = 0; i < s->n; i++) {
        char id[32];
        snprintf(id, sizeof id, "u%d", (s->first + i) % 53);
        s->accepted += send_seq(s->t, id, s->first + i) == TALLY_OK;
    }
    return NULL;
}

TEST(closing_while_rule_states_are_busy_loses_and_duplicates_nothing)
{
    char *rules = counting_rules("close", 1), *out = tu_path("close.ndjson"), *store = tu_path("close.db");
    unlink(out);
    unlink(store);
    tally_t *t = tf_open("out", out, "store", store, "mode", "server", "rule_threads", "2", "rules", rules, NULL);
    REQUIRE(t);
    enum { SENDERS = 3, EACH = 4000 };
    struct sender s[SENDERS];
    pthread_t th[SENDERS];
    for (int k = 0; k < SENDERS; k++) {
        s[k] = (struct sender){t, k * EACH, EACH, 0};
        REQUIRE(pthread_create(&th[k], NULL, send_many, &s[k]) == 0);
    }
    int accepted = 0;
    for (int k = 0; k < SENDERS; k++) {
        pthread_join(th[k], NULL);
        accepted += s[k].accepted;
    }
    CHECK_EQ_INT(accepted, SENDERS * EACH);
    tally_close(t, 0); /* no waiting: what is not delivered stays in the store */
    t = tf_open("out", out, "store", store, "mode", "server", "rule_threads", "2", "rules", rules, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_close(t, 20000), TALLY_OK);
    size_t n = 0;
    line *v = read_lines(out, 0, &n);
    CHECK_EQ_INT(n, SENDERS * EACH);
    char *seen = calloc(SENDERS * EACH, 1);
    for (size_t k = 0; k < n; k++) {
        REQUIRE(v[k].seq >= 0 && v[k].seq < SENDERS * EACH);
        CHECK(!seen[v[k].seq]);
        seen[v[k].seq] = 1;
    }
    free(seen);
    free(v);
    free(rules);
    free(out);
    free(store);
}

/* ---- forget and flush ---- */

TEST(forget_covers_every_message_accepted_before_it_in_every_rule_state)
{
    collector *c = collector_start(NULL);
    REQUIRE(c);
    char *rules = counting_rules("forget", 1), *store = tu_path("forget.db");
    unlink(store);
    tally_t *t = open_http(c, store, "flush_at", "1000", "mode", "server", "rule_threads", "2", "rules", rules, NULL);
    REQUIRE(t);
    /* alice's and many others', interleaved, unflushed: some are still in the intake or a state */
    for (int i = 0; i < 400; i++) {
        char id[32];
        snprintf(id, sizeof id, "u%d", i % 17);
        CHECK_EQ_INT(send_seq(t, i % 4 ? id : "alice", i), TALLY_OK);
    }
    size_t erased = 0;
    CHECK_EQ_INT(tally_forget(t, "alice", &erased), TALLY_OK);
    CHECK_EQ_INT(erased, 100);
    CHECK_EQ_INT(send_seq(t, "alice", 400), TALLY_OK); /* after the forget: kept */
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    received r;
    REQUIRE(received_load(c, &r) == 0);
    long alice = 0, all = 0;
    for (size_t k = 0; k < nreqs(&r); k++) {
        const tj_value *req = req_at(&r, k);
        for (size_t i = 0; i < req_nmsgs(req); i++) {
            const char *u = tu_jstr(req_msg(req, i), "userId");
            all++;
            alice += u && !strcmp(u, "alice");
        }
    }
    received_free(&r);
    CHECK_EQ_INT(alice, 1);
    CHECK_EQ_INT(all, 301);
    CHECK_EQ_INT(tally_close(t, 20000), TALLY_OK);
    collector_stop(c);
    free(rules);
    free(store);
}

TEST(flush_waits_for_every_message_accepted_before_it_in_every_rule_state)
{
    char *rules = counting_rules("flush", 1), *out = tu_path("flush.ndjson");
    unlink(out);
    tally_t *t = tf_open("out", out, "mode", "server", "rule_threads", "2", "rules", rules, NULL);
    REQUIRE(t);
    for (int round = 1; round <= 3; round++) {
        for (int i = 0; i < 500; i++) {
            char id[32];
            snprintf(id, sizeof id, "u%d", i % 29);
            CHECK_EQ_INT(send_seq(t, id, i), TALLY_OK);
        }
        CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
        CHECK_EQ_INT(tu_count_lines(out), round * 500);
    }
    CHECK_EQ_INT(tally_close(t, 20000), TALLY_OK);
    free(rules);
    free(out);
}

TEST(client_mode_refuses_more_than_one_rule_state_naming_the_field)
{
    tally_t *t = NULL;
    char *out = tu_path("client.ndjson");
    CHECK_EQ_INT(tf_open_rc(&t, "out", out, "rule_threads", "2", NULL), TALLY_ECONFIG);
    CHECK(!t);
    CHECK_CONTAINS(tally_errmsg(NULL), "rule_threads: 2 needs mode = server");
    tally_config *c = tally_config_new();
    CHECK_EQ_INT(tally_config_set(c, "rule_threads", "17"), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "rule_threads");
    CHECK_EQ_INT(tally_config_set(c, "rule_threads", "0"), TALLY_ECONFIG);
    tally_config_free(c);
    free(out);
}
