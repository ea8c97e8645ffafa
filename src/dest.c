#include "dest.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int batch_add(dest_batch *b, const char *json, size_t len)
{
    if (b->n + 2 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        size_t *off = realloc(b->off, cap * sizeof *off);
        if (!off) return TALLY_ENOMEM;
        b->off = off;
        b->cap = cap;
    }
    if (b->n == 0) b->off[0] = b->data.len;
    tbuf_append(&b->data, json, len);
    tbuf_putc(&b->data, '\n');
    if (b->data.oom) return TALLY_ENOMEM;
    b->off[++b->n] = b->data.len;
    return TALLY_OK;
}

void batch_clear(dest_batch *b)
{
    tbuf_reset(&b->data);
    b->n = 0;
}

void batch_free(dest_batch *b)
{
    tbuf_free(&b->data);
    free(b->off);
    memset(b, 0, sizeof *b);
}

static const dest_ops *const all_dests[] = {&dest_segment_ops, &dest_http_ops, &dest_file_ops, &dest_sqlite_ops};

int dest_open(dest *d, const char *json_cfg, const dest_env *env, const tly_logger *log, tly_err *err)
{
    memset(d, 0, sizeof *d);
    d->log = log;
    tj_arena *a = tj_arena_new();
    if (!a) return tly_err_set(err, TALLY_ENOMEM, "destinations: out of memory");
    tj_value *cfg;
    tj_error je;
    int rc;
    if (tj_parse(a, json_cfg, strlen(json_cfg), &cfg, &je)) {
        rc = tly_err_set(err, TALLY_ECONFIG, "destinations: invalid JSON: %s", je.msg);
        goto out;
    }
    const tj_value *type = tj_object_get(cfg, "type");
    for (size_t i = 0; !d->ops && i < sizeof all_dests / sizeof *all_dests; i++)
        if (type && type->type == TJ_STRING && type->u.str.len == strlen(all_dests[i]->type) &&
            !memcmp(type->u.str.s, all_dests[i]->type, type->u.str.len))
            d->ops = all_dests[i];
    rc = d->ops ? d->ops->open(d, cfg, env, err)
                : tly_err_set(err, TALLY_ECONFIG, "destinations: unknown type \"%.*s\" (known: segment, http, file, sqlite)",
                              type && type->type == TJ_STRING ? (int)type->u.str.len : 1,
                              type && type->type == TJ_STRING ? type->u.str.s : "?");
out:
    assert(rc != TALLY_OK || (d->ops && d->name[0])); /* an open destination has a name for logs and the store */
    tj_arena_free(a);
    if (rc) d->ops = NULL;
    return rc;
}

void dest_close(dest *d)
{
    if (d->ops) d->ops->close(d);
    d->ops = NULL;
}

