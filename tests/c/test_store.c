/* The durable queue on its own: chunks of messages in a row, batches cut inside a chunk, what an
 * acknowledgement or a dead letter then removes, and both full policies counting messages. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dest.h"
#include "harness.h"
#include "store.h"
#include "store_fixture.h"
#include "util.h"

static tly_err err; /* where the store writes why a call failed */

static store *open_store(const char *name, int64_t max_rows, int on_full, int *d)
{
    return tsf_open(name, max_rows, on_full, d, &err);
}

/* Appends the messages in `msgs` (one letter each) as one chunk: how many of its newest the full
 * policy refused, or -1 on error. */
static int append(store *s, int did, const char *msgs, int64_t *dropped)
{
    char body[64];
    size_t n = strlen(msgs), len = 0;
    for (size_t i = 0; i < n; i++) {
        if (i) body[len++] = '\0';
        body[len++] = msgs[i];
    }
    int64_t ignored;
    int refused;
    return store_append(s, did, body, len, (int)n, &refused, dropped ? dropped : &ignored, &err) == TALLY_OK ? refused
                                                                                                          : -1;
}

/* A batch as the worker keeps one: its messages, and where they lie in the store. */
typedef struct loaded {
    dest_batch   msgs;
    store_cursor cur;
} loaded;

static int take(void *b, const char *json, size_t len) { return batch_add(b, json, len); }

/* The batch's messages as one string of letters. */
static const char *letters(const loaded *b)
{
    static char out[64];
    size_t k = 0;
    for (size_t i = 0; i < b->msgs.n && k + 1 < sizeof out; i++) out[k++] = b->msgs.data.data[b->msgs.off[i]];
    out[k] = '\0';
    return out;
}

/* Loads the batch that follows `after` (NULL: the oldest) and returns its letters. */
static const char *load_after(store *s, int did, const loaded *after, size_t max_n, loaded *b)
{
    store_sink to = {take, &b->msgs, max_n, 1 << 20};
    size_t n;
    batch_clear(&b->msgs);
    return store_load(s, did, after ? &after->cur : NULL, NULL, &to, &b->cur, &n, &err) != TALLY_OK ? "(error)"
                                                                                                  : letters(b);
}

static const char *load(store *s, int did, size_t max_n, loaded *b) { return load_after(s, did, NULL, max_n, b); }

static int ack(store *s, int did, const loaded *b) { return store_ack(s, did, &b->cur, &err); }
static int dead(store *s, int did, const loaded *b, int status, const char *reason)
{
    return store_dead(s, did, &b->cur, status, reason, &err);
}
static int64_t pending(store *s, int did)
{
    int64_t n;
    return store_pending(s, did, &n, &err) == TALLY_OK ? n : -1;
}
static int commit(store *s) { return store_commit(s, &err); }

TEST(batches_cut_inside_chunks_lose_and_repeat_nothing)
{
    int d;
    store *s = open_store("cut.db", 1000, STORE_FULL_DROP_OLDEST, &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "abc", NULL), 0);
    CHECK_EQ_INT(append(s, d, "def", NULL), 0);
    CHECK_EQ_INT(append(s, d, "g", NULL), 0);
    CHECK_EQ_INT(pending(s, d), 7);
    loaded b = {0};
    CHECK_STR(load(s, d, 4, &b), "abcd");
    CHECK_EQ_INT(b.cur.last_taken, 1);
    CHECK_EQ_INT(b.cur.last_n, 3);
    CHECK_STR(load(s, d, 4, &b), "abcd"); /* not acknowledged: the same batch again (a retry) */
    CHECK_EQ_INT(ack(s, d, &b), 0);
    CHECK_EQ_INT(pending(s, d), 3);
    CHECK_STR(load(s, d, 1, &b), "e");
    CHECK_EQ_INT(dead(s, d, &b, 400, "bad request"), 0);
    CHECK_EQ_INT(pending(s, d), 2);
    CHECK_STR(load(s, d, 10, &b), "fg");
    CHECK_EQ_INT(ack(s, d, &b), 0);
    CHECK_EQ_INT(pending(s, d), 0);
    CHECK_EQ_INT(commit(s), 0);
    batch_free(&b.msgs);
    store_close(s);

    /* the dead letter is the one message the batch held, not its chunk */
    char *path = tu_path("cut.db");
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    REQUIRE(sqlite3_prepare_v2(db, "SELECT group_concat(body, ','), count(*) FROM dead", -1, &st, NULL) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(st, 0), "e");
    CHECK_EQ_INT(sqlite3_column_int(st, 1), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(path);
}

TEST(drop_oldest_trims_the_oldest_chunk_message_exactly)
{
    int d;
    store *s = open_store("oldest.db", 4, STORE_FULL_DROP_OLDEST, &d);
    REQUIRE(s);
    int64_t dropped = 0;
    CHECK_EQ_INT(append(s, d, "abc", &dropped), 0);
    CHECK_EQ_INT(dropped, 0);
    CHECK_EQ_INT(append(s, d, "def", &dropped), 0);
    CHECK_EQ_INT(dropped, 2);
    loaded b = {0};
    CHECK_STR(load(s, d, 10, &b), "cdef");
    /* a chunk whose front was acknowledged: the rest of it is what goes next */
    CHECK_STR(load(s, d, 2, &b), "cd");
    CHECK_EQ_INT(ack(s, d, &b), 0);
    CHECK_EQ_INT(append(s, d, "gh", &dropped), 0);
    CHECK_EQ_INT(dropped, 0);
    CHECK_EQ_INT(append(s, d, "i", &dropped), 0);
    CHECK_EQ_INT(dropped, 1);
    CHECK_STR(load(s, d, 10, &b), "fghi");
    batch_free(&b.msgs);
    store_close(s);
}

TEST(drop_newest_stores_the_front_that_fits)
{
    int d;
    store *s = open_store("newest.db", 4, STORE_FULL_DROP_NEWEST, &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "abc", NULL), 0);
    CHECK_EQ_INT(append(s, d, "def", NULL), 2);
    CHECK_EQ_INT(append(s, d, "g", NULL), 1);
    loaded b = {0};
    CHECK_STR(load(s, d, 10, &b), "abcd");
    CHECK_EQ_INT(pending(s, d), 4);
    batch_free(&b.msgs);
    store_close(s);
}

/* A batch in flight whose last chunk lost its front to drop_oldest meanwhile: the
 * acknowledgement must remove only what is left of what the batch took. */
TEST(ack_after_the_full_policy_trimmed_the_batch)
{
    int d;
    store *s = open_store("inflight.db", 5, STORE_FULL_DROP_OLDEST, &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "abcde", NULL), 0);
    loaded b = {0};
    CHECK_STR(load(s, d, 3, &b), "abc"); /* in flight */
    int64_t dropped = 0;
    CHECK_EQ_INT(append(s, d, "fg", &dropped), 0); /* a and b go */
    CHECK_EQ_INT(dropped, 2);
    CHECK_EQ_INT(ack(s, d, &b), 0); /* c was sent: it goes, d and e stay */
    loaded rest = {0};
    CHECK_STR(load(s, d, 10, &rest), "defg");
    CHECK_EQ_INT(pending(s, d), 4);
    batch_free(&b.msgs);
    batch_free(&rest.msgs);
    store_close(s);
}

/* Several batches in flight at once (worker.c, max_in_flight): each one loaded after the one
 * before, removed in the order they were loaded, covers every message exactly once, also when one
 * begins inside a chunk whose front the batch before took. */
TEST(batches_loaded_back_to_back_cover_the_queue_once)
{
    int d;
    store *s = open_store("pipeline.db", 1000, STORE_FULL_DROP_OLDEST, &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "abc", NULL), 0);
    CHECK_EQ_INT(append(s, d, "def", NULL), 0);
    CHECK_EQ_INT(append(s, d, "g", NULL), 0);
    loaded b1 = {0}, b2 = {0}, b3 = {0};
    CHECK_STR(load_after(s, d, NULL, 4, &b1), "abcd");
    CHECK_STR(load_after(s, d, &b1, 2, &b2), "ef"); /* begins inside "def" */
    CHECK_STR(load_after(s, d, &b2, 4, &b3), "g");
    CHECK_STR(load_after(s, d, &b3, 4, &b1), ""); /* nothing after the last one */
    CHECK_STR(load_after(s, d, NULL, 4, &b1), "abcd");
    CHECK_EQ_INT(ack(s, d, &b1), 0);
    CHECK_EQ_INT(pending(s, d), 3);
    CHECK_EQ_INT(dead(s, d, &b2, 400, "bad request"), 0);
    CHECK_EQ_INT(pending(s, d), 1);
    CHECK_EQ_INT(ack(s, d, &b3), 0);
    CHECK_EQ_INT(pending(s, d), 0);
    CHECK_EQ_INT(commit(s), 0);
    batch_free(&b1.msgs);
    batch_free(&b2.msgs);
    batch_free(&b3.msgs);
    store_close(s);

    /* the dead letters are the two messages of b2, not "d" before them or "g" after */
    char *path = tu_path("pipeline.db");
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    REQUIRE(sqlite3_prepare_v2(db, "SELECT group_concat(body, ',') FROM (SELECT body FROM dead ORDER BY id)", -1, &st,
                               NULL) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(st, 0), "e,f");
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(path);
}

/* drop_oldest trims a chunk shared by two batches in flight: each acknowledgement removes only
 * what is left of its own share, and a batch loaded next starts right after the last one. */
TEST(back_to_back_batches_survive_the_full_policy_trimming_them)
{
    int d;
    store *s = open_store("pipetrim.db", 6, STORE_FULL_DROP_OLDEST, &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "abcde", NULL), 0);
    loaded b1 = {0}, b2 = {0}, b3 = {0};
    CHECK_STR(load_after(s, d, NULL, 2, &b1), "ab");
    CHECK_STR(load_after(s, d, &b1, 2, &b2), "cd");
    int64_t dropped = 0;
    CHECK_EQ_INT(append(s, d, "fgh", &dropped), 0); /* a and b go: all of b1 */
    CHECK_EQ_INT(dropped, 2);
    CHECK_STR(load_after(s, d, &b2, 10, &b3), "efgh");
    CHECK_EQ_INT(ack(s, d, &b1), 0);
    CHECK_EQ_INT(pending(s, d), 6);
    CHECK_EQ_INT(append(s, d, "i", &dropped), 0); /* c goes: half of b2 */
    CHECK_EQ_INT(dropped, 1);
    CHECK_EQ_INT(ack(s, d, &b2), 0); /* d only */
    CHECK_EQ_INT(pending(s, d), 5);
    CHECK_EQ_INT(ack(s, d, &b3), 0);
    CHECK_STR(load_after(s, d, NULL, 10, &b1), "i");
    batch_free(&b1.msgs);
    batch_free(&b2.msgs);
    batch_free(&b3.msgs);
    store_close(s);
}
