/* The durable queue on its own: chunks of messages in a row, batches cut inside a chunk, what an
 * acknowledgement or a dead letter then removes, and both full policies counting messages. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "harness.h"
#include "store.h"
#include "util.h"

static const tly_logger quiet = {NULL, NULL, 0};

/* A fresh store file with one destination, "d", whose id goes to *d. */
static store *open_store(const char *name, int64_t max_rows, int on_full, int *d)
{
    char *path = tu_path(name);
    unlink(path);
    store_limits lim = {1 << 30, max_rows, on_full};
    store *s = NULL;
    if (store_open(&s, path, &lim, &quiet) != TALLY_OK) s = NULL;
    free(path);
    if (s && store_dest_id(s, "d", d) != 0) {
        store_close(s);
        s = NULL;
    }
    return s;
}

/* Appends the messages in `msgs` (one letter each) as one chunk. */
static int append(store *s, int did, const char *msgs, int64_t *dropped)
{
    char body[64];
    size_t n = strlen(msgs), len = 0;
    for (size_t i = 0; i < n; i++) {
        if (i) body[len++] = '\0';
        body[len++] = msgs[i];
    }
    int64_t ignored;
    return store_append(s, did, body, len, (int)n, dropped ? dropped : &ignored);
}

/* The batch's messages as one string of letters. */
static const char *letters(const dest_batch *b)
{
    static char out[64];
    size_t k = 0;
    for (size_t i = 0; i < b->n && k + 1 < sizeof out; i++) out[k++] = b->data.data[b->off[i]];
    out[k] = '\0';
    return out;
}

static const char *load(store *s, int did, size_t max_n, dest_batch *b)
{
    return store_load(s, did, max_n, 1 << 20, b) < 0 ? "(error)" : letters(b);
}

TEST(batches_cut_inside_chunks_lose_and_repeat_nothing)
{
    int d;
    store *s = open_store("cut.db", 1000, STORE_FULL_DROP_OLDEST, &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "abc", NULL), 0);
    CHECK_EQ_INT(append(s, d, "def", NULL), 0);
    CHECK_EQ_INT(append(s, d, "g", NULL), 0);
    CHECK_EQ_INT(store_pending(s, d), 7);
    dest_batch b = {0};
    CHECK_STR(load(s, d, 4, &b), "abcd");
    CHECK_EQ_INT(b.last_taken, 1);
    CHECK_EQ_INT(b.last_n, 3);
    CHECK_STR(load(s, d, 4, &b), "abcd"); /* not acknowledged: the same batch again (a retry) */
    CHECK_EQ_INT(store_ack(s, d, &b), 0);
    CHECK_EQ_INT(store_pending(s, d), 3);
    CHECK_STR(load(s, d, 1, &b), "e");
    CHECK_EQ_INT(store_dead(s, d, &b, 400, "bad request"), 0);
    CHECK_EQ_INT(store_pending(s, d), 2);
    CHECK_STR(load(s, d, 10, &b), "fg");
    CHECK_EQ_INT(store_ack(s, d, &b), 0);
    CHECK_EQ_INT(store_pending(s, d), 0);
    CHECK_EQ_INT(store_commit(s), 0);
    batch_free(&b);
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
    dest_batch b = {0};
    CHECK_STR(load(s, d, 10, &b), "cdef");
    /* a chunk whose front was acknowledged: the rest of it is what goes next */
    CHECK_STR(load(s, d, 2, &b), "cd");
    CHECK_EQ_INT(store_ack(s, d, &b), 0);
    CHECK_EQ_INT(append(s, d, "gh", &dropped), 0);
    CHECK_EQ_INT(dropped, 0);
    CHECK_EQ_INT(append(s, d, "i", &dropped), 0);
    CHECK_EQ_INT(dropped, 1);
    CHECK_STR(load(s, d, 10, &b), "fghi");
    batch_free(&b);
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
    dest_batch b = {0};
    CHECK_STR(load(s, d, 10, &b), "abcd");
    CHECK_EQ_INT(store_pending(s, d), 4);
    batch_free(&b);
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
    dest_batch b = {0};
    CHECK_STR(load(s, d, 3, &b), "abc"); /* in flight */
    int64_t dropped = 0;
    CHECK_EQ_INT(append(s, d, "fg", &dropped), 0); /* a and b go */
    CHECK_EQ_INT(dropped, 2);
    CHECK_EQ_INT(store_ack(s, d, &b), 0); /* c was sent: it goes, d and e stay */
    dest_batch rest = {0};
    CHECK_STR(load(s, d, 10, &rest), "defg");
    CHECK_EQ_INT(store_pending(s, d), 4);
    batch_free(&b);
    batch_free(&rest);
    store_close(s);
}
