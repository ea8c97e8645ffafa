/* `tally forget --store=S ID`: erases the id's queued and dead-lettered messages from a store no
 * process has open (the store's lock says when one does), for good (store.h, store_erase_*), and
 * resets the device identity kept there when it is the id. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "identity.h"
#include "intake.h"
#include "store.h"

static void to_stderr(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    fprintf(stderr, "tally: forget: %s\n", msg);
}

static void meta_write(void *ud, const char *key, const char *value)
{
    tly_err e; /* a failed write fails the transaction: store_erase_end reports it */
    store_meta_set(ud, key, value, &e);
}

/* Whether the identity kept in the store is id's: its anonymous id or user id. */
static int is_device(store *s, const char *id)
{
    int mine = 0;
    tly_err e;
    static const char *const keys[] = {"anonymous_id", "user_id"};
    for (int k = 0; k < 2 && !mine; k++) {
        char *v = NULL;
        if (store_meta_get(s, keys[k], &v, &e) == TALLY_OK && v) mine = !strcmp(v, id);
        free(v);
    }
    return mine;
}

static int erase(store *s, const char *id, int64_t *erased, int *reset, tly_err *err)
{
    identity me;
    int rc = TALLY_OK;
    *reset = is_device(s, id);
    /* loaded (and committed) before the erasure begins: it runs in a transaction of its own */
    if (*reset && (rc = identity_load(&me, s, 0, tly_now_ms(), err))) return rc;
    if (!(rc = store_erase_begin(s, err))) {
        if (*reset) {
            meta_sink sink = {meta_write, s};
            identity_apply(&me, &sink, REC_RESET, NULL, 0, tly_now_ms());
        }
        int e = store_forget(s, id, strlen(id), NULL, NULL, 0, erased, err);
        rc = store_erase_end(s, err);
        if (e) rc = e;
    }
    if (*reset) identity_free(&me);
    return rc;
}

int cli_forget(const cli_opts *o)
{
    const char *path = NULL, *id = o->positional[0];
    for (int i = 0; i < o->nset; i++)
        if (!strcmp(o->set_key[i], "store")) path = o->set_val[i];
    if (!path || !strcmp(path, ":memory:")) {
        fprintf(stderr, "tally: forget: --store: required (the store file to erase from)\n");
        return 2;
    }
    size_t len = strlen(id);
    if (!len) {
        fprintf(stderr, "tally: forget: id: empty (expected a userId or anonymousId)\n");
        return 2;
    }
    if (len > TALLY_MAX_MESSAGE_BYTES) {
        fprintf(stderr, "tally: forget: id: %zu bytes, over the %d-byte limit (no message holds a longer one)\n", len,
                TALLY_MAX_MESSAGE_BYTES);
        return 2;
    }
    if (access(path, F_OK) != 0) { /* store_open would make an empty one */
        fprintf(stderr, "tally: forget: --store: %s: no such file\n", path);
        return 1;
    }
    tly_logger log = {to_stderr, NULL, TALLY_LOG_WARN};
    store_limits lim = {INT64_MAX, INT64_MAX, STORE_FULL_BLOCK};
    store *s = NULL;
    tly_err err;
    if (store_open(&s, path, &lim, &log, &err) != TALLY_OK) {
        fprintf(stderr, "tally: forget: %s\n", err.msg);
        return 1;
    }
    int64_t erased = 0;
    int reset = 0, rc = erase(s, id, &erased, &reset, &err);
    store_close(s);
    if (rc) {
        fprintf(stderr, "tally: forget: %s (nothing erased)\n", err.msg);
        return 1;
    }
    printf("%lld\n", (long long)erased);
    if (reset) fprintf(stderr, "tally: forget: it was the device's identity: a new anonymous id was issued\n");
    return 0;
}
