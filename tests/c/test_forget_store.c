/* Erasure in the store on its own (store_forget, store_erase_begin/end): chunks rewritten without
 * one person's messages, batches loaded before the erasure still ending after the same message,
 * dead letters, the erased bytes gone from the file and its WAL, and dead-letter retention. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dest.h"
#include "harness.h"
#include "store.h"
#include "store_fixture.h"
#include "util.h"

static tly_err err;

static store *open_store(const char *name, int *d)
{
    return tsf_open(name, 1000000, STORE_FULL_DROP_OLDEST, d, &err);
}

/* One message per letter: an upper-case letter is alice's, a lower-case one bob's. The letter is
 * the message's first value, so a batch reads back as letters. `pad` goes into each message. */
#define HEAD "{\"m\":\""
static size_t message(char *out, size_t cap, char letter, const char *pad)
{
    int n = snprintf(out, cap, HEAD "%c\",\"userId\":\"%s\",\"p\":\"%s%c\"}", letter,
                     letter >= 'A' && letter <= 'Z' ? "alice" : "bob", pad, letter);
    return (size_t)n;
}

/* Appends the letters as one chunk; 0 or -1. */
static int append_pad(store *s, int d, const char *letters, const char *pad)
{
    static char body[65536];
    size_t len = 0, n = strlen(letters);
    for (size_t i = 0; i < n; i++) {
        if (i) body[len++] = '\0';
        len += message(body + len, sizeof body - len, letters[i], pad);
    }
    int refused;
    int64_t dropped;
    return store_append(s, d, body, len, (int)n, &refused, &dropped, &err) == TALLY_OK && !refused ? 0 : -1;
}
static int append(store *s, int d, const char *letters) { return append_pad(s, d, letters, ""); }

typedef struct loaded {
    dest_batch   msgs;
    store_cursor cur;
} loaded;

static int take(void *b, const char *json, size_t len) { return batch_add(b, json, len); }

static const char *letters(const loaded *b)
{
    static char out[64];
    size_t k = 0;
    for (size_t i = 0; i < b->msgs.n && k + 1 < sizeof out; i++)
        out[k++] = b->msgs.data.data[b->msgs.off[i] + sizeof HEAD - 1];
    out[k] = '\0';
    return out;
}

/* Loads what follows `after` (NULL: the oldest), no further than `until` ended (NULL: max_n). */
static const char *load(store *s, int d, const loaded *after, const loaded *until, size_t max_n, loaded *b)
{
    store_sink to = {take, &b->msgs, max_n, 1 << 20};
    size_t n;
    batch_clear(&b->msgs);
    return store_load(s, d, after ? &after->cur : NULL, until ? &until->cur : NULL, &to, &b->cur, &n, &err)
               ? "(error)" : letters(b);
}

static int64_t pending(store *s, int d)
{
    int64_t n;
    return store_pending(s, d, &n, &err) == TALLY_OK ? n : -1;
}

/* The erasure as the worker runs it; the count, or -1. */
static int64_t forget(store *s, const char *id, loaded **live, int d)
{
    store_cursor *curs[8];
    int dests[8];
    size_t n = 0;
    for (; live && live[n]; n++) {
        curs[n] = &live[n]->cur;
        dests[n] = d;
    }
    int64_t erased = -1;
    if (store_commit(s, &err) || store_erase_begin(s, &err)) return -1;
    int rc = store_forget(s, id, strlen(id), curs, dests, n, &erased, &err);
    int end = store_erase_end(s, &err);
    return rc || end ? -1 : erased;
}

TEST(forget_rewrites_chunks_without_the_ids_messages_and_keeps_the_rest_in_order)
{
    int d;
    store *s = open_store("forget-chunks.db", &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "aBcDe"), 0);
    CHECK_EQ_INT(append(s, d, "FG"), 0); /* all alice's: the row goes */
    CHECK_EQ_INT(append(s, d, "h"), 0);
    CHECK_EQ_INT(pending(s, d), 8);
    CHECK_EQ_INT(forget(s, "alice", NULL, d), 4);
    CHECK_EQ_INT(pending(s, d), 4);
    loaded b = {0};
    CHECK_STR(load(s, d, NULL, NULL, 10, &b), "aceh");
    CHECK_EQ_INT(forget(s, "alice", NULL, d), 0); /* twice is harmless */
    CHECK_EQ_INT(forget(s, "nobody", NULL, d), 0);
    CHECK_EQ_INT(forget(s, "bob", NULL, d), 4);
    CHECK_EQ_INT(pending(s, d), 0);
    batch_free(&b.msgs);
    store_close(s);
}

/* Three batches cut inside one chunk are in flight when alice's messages go: a retry reloads each
 * without them, and acknowledging them in order removes exactly the rest, nothing of the next. */
TEST(batches_in_flight_keep_their_place_when_their_chunk_is_rewritten)
{
    int d;
    store *s = open_store("forget-flight.db", &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "aBcDeFgH"), 0);
    CHECK_EQ_INT(append(s, d, "iJ"), 0);
    loaded b1 = {0}, b2 = {0}, b3 = {0}, r = {0};
    CHECK_STR(load(s, d, NULL, NULL, 3, &b1), "aBc");
    CHECK_STR(load(s, d, &b1, NULL, 3, &b2), "DeF");
    CHECK_STR(load(s, d, &b2, NULL, 2, &b3), "gH");
    loaded *live[] = {&b1, &b2, &b3, NULL};
    CHECK_EQ_INT(forget(s, "alice", live, d), 5);
    CHECK_EQ_INT(pending(s, d), 5);
    CHECK_STR(load(s, d, NULL, &b1, 10, &r), "ac"); /* the retries */
    CHECK_STR(load(s, d, &b1, &b2, 10, &r), "e");
    CHECK_STR(load(s, d, &b2, &b3, 10, &r), "g");
    CHECK_STR(load(s, d, &b3, NULL, 10, &r), "i"); /* what no batch took */
    CHECK_EQ_INT(store_ack(s, d, &b1.cur, &err), 0);
    CHECK_EQ_INT(pending(s, d), 3);
    CHECK_STR(load(s, d, &b1, &b2, 10, &r), "e");
    CHECK_EQ_INT(store_ack(s, d, &b2.cur, &err), 0);
    CHECK_EQ_INT(store_ack(s, d, &b3.cur, &err), 0);
    CHECK_EQ_INT(pending(s, d), 1);
    CHECK_STR(load(s, d, NULL, NULL, 10, &r), "i");
    batch_free(&b1.msgs);
    batch_free(&b2.msgs);
    batch_free(&b3.msgs);
    batch_free(&r.msgs);
    store_close(s);
}

/* A batch all of whose messages were erased keeps its place: reloading it (a retry) finds nothing,
 * and the batch after it still begins after it, not at the front of the queue. */
TEST(a_batch_erased_whole_keeps_its_place_for_the_next_one)
{
    int d;
    store *s = open_store("forget-whole.db", &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "aBCDeF"), 0);
    loaded b1 = {0}, b2 = {0}, b3 = {0}, r = {0};
    CHECK_STR(load(s, d, NULL, NULL, 2, &b1), "aB");
    CHECK_STR(load(s, d, &b1, NULL, 2, &b2), "CD");
    CHECK_STR(load(s, d, &b2, NULL, 2, &b3), "eF");
    loaded *live[] = {&b1, &b2, &b3, NULL};
    CHECK_EQ_INT(forget(s, "alice", live, d), 4);
    CHECK_STR(load(s, d, &b1, &b2, 10, &b2), ""); /* the retry of b2, into its own cursor */
    CHECK_STR(load(s, d, &b2, &b3, 10, &r), "e");
    CHECK_EQ_INT(store_ack(s, d, &b1.cur, &err), 0);
    CHECK_EQ_INT(store_ack(s, d, &b2.cur, &err), 0);
    CHECK_EQ_INT(pending(s, d), 1);
    CHECK_STR(load(s, d, &b2, &b3, 10, &r), "e");
    CHECK_EQ_INT(store_ack(s, d, &b3.cur, &err), 0);
    CHECK_EQ_INT(pending(s, d), 0);
    batch_free(&b1.msgs);
    batch_free(&b2.msgs);
    batch_free(&b3.msgs);
    batch_free(&r.msgs);
    store_close(s);
}

static int64_t sql_int(const char *name, const char *sql)
{
    char *path = tu_path(name);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK && sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(path);
    return v;
}

TEST(forget_removes_the_ids_dead_letters_and_counts_them)
{
    int d;
    store *s = open_store("forget-dead.db", &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "aBcD"), 0);
    loaded b = {0};
    CHECK_STR(load(s, d, NULL, NULL, 3, &b), "aBc");
    CHECK_EQ_INT(store_dead(s, d, &b.cur, 400, "refused: {\"userId\":\"alice\"}", &err), 0);
    CHECK_EQ_INT(forget(s, "alice", NULL, d), 2); /* B dead, D queued */
    store_close(s);
    CHECK_EQ_INT(sql_int("forget-dead.db", "SELECT count(*) FROM dead"), 2);
    CHECK_EQ_INT(sql_int("forget-dead.db", "SELECT count(*) FROM dead WHERE reason LIKE '%alice%'"), 0);
    CHECK_EQ_INT(sql_int("forget-dead.db", "SELECT value FROM counters WHERE name = 'forgotten'"), 2);
    batch_free(&b.msgs);
}

/* alice's marker was in chunks rewritten, in a row acknowledged earlier (an ordinary FAST delete
 * leaves its bytes in a free page) and in a dead letter; afterwards it is in neither file, while
 * bob's, still queued, is. */
TEST(erased_bytes_are_gone_from_the_file_and_the_wal)
{
    int d;
    store *s = open_store("forget-bytes.db", &d);
    REQUIRE(s);
    /* A and B fill overflow pages, which a FAST delete frees without clearing; the others are
     * short, so that their markers never straddle two pages */
    static char big[20000], pad[200];
    memset(big, 'x', sizeof big - 1);
    memset(pad, 'x', sizeof pad - 1);
    memcpy(pad, "MARK", 4);
    CHECK_EQ_INT(append_pad(s, d, "AB", big), 0);
    loaded b = {0};
    CHECK_STR(load(s, d, NULL, NULL, 1, &b), "A");
    CHECK_EQ_INT(store_ack(s, d, &b.cur, &err), 0); /* delivered: A's bytes may stay in a free page */
    CHECK_EQ_INT(store_commit(s, &err), 0);
    CHECK_EQ_INT(append_pad(s, d, "cDeF", pad), 0);
    CHECK_EQ_INT(append_pad(s, d, "G", pad), 0);
    CHECK_STR(load(s, d, NULL, NULL, 3, &b), "BcD");
    CHECK_EQ_INT(store_dead(s, d, &b.cur, 400, "refused", &err), 0);
    CHECK_EQ_INT(store_commit(s, &err), 0);
    char *db = tu_path("forget-bytes.db"), wal[4200];
    snprintf(wal, sizeof wal, "%s-wal", db);
    CHECK(tu_file_contains(db, "MARK") || tu_file_contains(wal, "MARK")); /* the markers are written before the erasure */
    CHECK_EQ_INT(forget(s, "alice", NULL, d), 4); /* B (dead), D, F, G */
    static const char alice[] = "\"userId\":\"alice\"", bob[] = "\"userId\":\"bob\"";
    CHECK(!tu_file_contains(db, alice));
    CHECK(!tu_file_contains(wal, alice));
    CHECK(tu_file_contains(db, bob) || tu_file_contains(wal, bob));
    /* each message's pad ends with its letter: none of alice's is left anywhere */
    char tail[16];
    for (const char *l = "ABDFG"; *l; l++) {
        snprintf(tail, sizeof tail, "xxx%c\"}", *l);
        CHECK(!tu_file_contains(db, tail) && !tu_file_contains(wal, tail));
    }
    snprintf(tail, sizeof tail, "xxx%c\"}", 'e');
    CHECK(tu_file_contains(db, tail) || tu_file_contains(wal, tail));
    batch_free(&b.msgs);
    store_close(s);
    free(db);
}

TEST(dead_letters_are_pruned_by_age_and_by_count)
{
    int d;
    store *s = open_store("prune.db", &d);
    REQUIRE(s);
    CHECK_EQ_INT(append(s, d, "abcde"), 0);
    loaded b = {0};
    CHECK_STR(load(s, d, NULL, NULL, 5, &b), "abcde");
    CHECK_EQ_INT(store_dead(s, d, &b.cur, 400, "refused", &err), 0);
    int64_t pruned = -1;
    CHECK_EQ_INT(store_dead_prune(s, 1, -1, &pruned, &err), 0); /* older than 1970: none */
    CHECK_EQ_INT(pruned, 0);
    CHECK_EQ_INT(store_dead_prune(s, 0, 2, &pruned, &err), 0); /* the newest 2 stay */
    CHECK_EQ_INT(pruned, 3);
    CHECK_EQ_INT(store_commit(s, &err), 0);
    CHECK_EQ_INT(sql_int("prune.db", "SELECT count(*) FROM dead WHERE substr(CAST(body AS TEXT), 7, 1) IN ('d', 'e')"), 2);
    CHECK_EQ_INT(store_dead_prune(s, tly_now_ms() + 1000, -1, &pruned, &err), 0); /* all are older */
    CHECK_EQ_INT(pruned, 2);
    CHECK_EQ_INT(store_commit(s, &err), 0);
    batch_free(&b.msgs);
    store_close(s);
    CHECK_EQ_INT(sql_int("prune.db", "SELECT count(*) FROM dead"), 0);
    CHECK_EQ_INT(sql_int("prune.db", "SELECT value FROM counters WHERE name = 'dead_pruned'"), 5);
}
