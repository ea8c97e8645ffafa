/* `tally inspect STORE`: what is queued, delivered, retried, dead-lettered and dropped, and what
 * privacy deleted (consent_purged, forgotten, dead_pruned), per destination, and what rules dropped, per rule, read straight from the store (safe while the
 * owner is running: WAL readers).
 *
 * --json prints one fixed schema (README, "tally inspect --json"): every counter is present, zero
 * or not, so a script can read .destinations[i].dropped without guessing whether "absent" means 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "json.h"
#include "store.h"

static const char *const counters[] = {"queued",         "delivered", "retried",  "dead_lettered", "dropped",
                                       "consent_purged", "forgotten", "dead_pruned"};
#define NCOUNTERS (sizeof counters / sizeof *counters)

static long long int_of(const tj_value *d, const char *key)
{
    const tj_value *v = tj_object_get(d, key);
    return v && v->type == TJ_INT ? (long long)v->u.i : 0;
}

static const char *str_of(const tj_value *d, const char *key)
{
    const tj_value *v = tj_object_get(d, key);
    return v && v->type == TJ_STRING ? v->u.str.s : "";
}

/* The store reports the dead-letter table's rows ("dead_letters") and the counter of messages
 * moved there ("dead_lettered"): one concept. The counter also covers letters removed since;
 * rows alone come from a store written before the counter existed. */
static long long counter(const tj_value *d, const char *name)
{
    long long v = int_of(d, name);
    if (!strcmp(name, "dead_lettered")) {
        long long rows = int_of(d, "dead_letters");
        if (rows > v) v = rows;
    }
    return v;
}

/* Messages rules dropped, per rule and reason class (rules.h RULE_DROP_*), summed from the store's
 * rows ("rule", "class", "n"; sorted by rule). */
static const char *const drop_classes[] = {"by_rule", "failed_closed", "disabled"};
#define NCLASSES (sizeof drop_classes / sizeof *drop_classes)

typedef struct rule_drops {
    const char *name;
    long long   n[NCLASSES], total;
} rule_drops;

/* Fills out[] (up to rows, one per rule) and *all; returns the number of rules. */
static size_t sum_drops(const tj_value *rows, rule_drops *out, rule_drops *all)
{
    size_t n = 0;
    *all = (rule_drops){"", {0}, 0};
    for (size_t i = 0; rows && i < rows->u.arr.n; i++) {
        const tj_value *r = rows->u.arr.items[i];
        const char *rule = str_of(r, "rule"), *cls = str_of(r, "class");
        size_t c = 0;
        while (c < NCLASSES && strcmp(cls, drop_classes[c])) c++;
        if (c == NCLASSES) continue; /* a class this version does not know */
        if (!n || strcmp(out[n - 1].name, rule)) out[n++] = (rule_drops){rule, {0}, 0};
        long long v = int_of(r, "n");
        out[n - 1].n[c] += v;
        out[n - 1].total += v;
        all->n[c] += v;
        all->total += v;
    }
    return n;
}

static void write_drop_counts(tbuf *b, const rule_drops *d)
{
    tbuf_printf(b, "\"total\":%lld", d->total);
    for (size_t c = 0; c < NCLASSES; c++) tbuf_printf(b, ",\"%s\":%lld", drop_classes[c], d->n[c]);
}

/* Remote rules (rules_remote.c): the active version, the last fetch and what it came to, or null
 * when the store never polled a rules_url. */
static void write_remote_json(const tj_value *rr, tbuf *b)
{
    if (!rr || rr->type != TJ_OBJECT) {
        tbuf_puts(b, ",\"rules_remote\":null");
        return;
    }
    const char *at = str_of(rr, "fetched_at"), *result = str_of(rr, "result");
    tbuf_printf(b, ",\"rules_remote\":{\"version\":%lld,\"fetched_at\":", int_of(rr, "version"));
    tj_write_string(b, at, strlen(at));
    tbuf_puts(b, ",\"result\":");
    tj_write_string(b, result, strlen(result));
    tbuf_putc(b, '}');
}

static void write_json(const char *path, const tj_value *dests, const rule_drops *drops, size_t ndrops,
                       const rule_drops *all, const tj_value *remote, tbuf *b)
{
    tbuf_puts(b, "{\"store\":");
    tj_write_string(b, path, strlen(path));
    tbuf_puts(b, ",\"destinations\":[");
    for (size_t i = 0; dests && i < dests->u.arr.n; i++) {
        const tj_value *d = dests->u.arr.items[i], *dead = tj_object_get(d, "recent_dead");
        const char *name = str_of(d, "name");
        tbuf_puts(b, i ? ",{\"name\":" : "{\"name\":");
        tj_write_string(b, name, strlen(name));
        for (size_t c = 0; c < NCOUNTERS; c++) tbuf_printf(b, ",\"%s\":%lld", counters[c], counter(d, counters[c]));
        tbuf_puts(b, ",\"recent_dead\":[");
        for (size_t k = 0; dead && dead->type == TJ_ARRAY && k < dead->u.arr.n; k++) {
            const tj_value *l = dead->u.arr.items[k];
            const char *reason = str_of(l, "reason"), *at = str_of(l, "at");
            tbuf_printf(b, "%s{\"status\":%lld,\"reason\":", k ? "," : "", int_of(l, "status"));
            tj_write_string(b, reason, strlen(reason));
            tbuf_puts(b, ",\"at\":");
            tj_write_string(b, at, strlen(at));
            tbuf_putc(b, '}');
        }
        tbuf_puts(b, "]}");
    }
    tbuf_puts(b, "],\"rule_drops\":{");
    write_drop_counts(b, all);
    tbuf_puts(b, ",\"rules\":[");
    for (size_t i = 0; i < ndrops; i++) {
        tbuf_puts(b, i ? ",{\"name\":" : "{\"name\":");
        tj_write_string(b, drops[i].name, strlen(drops[i].name));
        tbuf_putc(b, ',');
        write_drop_counts(b, &drops[i]);
        tbuf_putc(b, '}');
    }
    tbuf_puts(b, "]}");
    write_remote_json(remote, b);
    tbuf_putc(b, '}');
}

static void print_drop_row(const char *name, const rule_drops *d)
{
    printf("%-44s %13lld", name, d->total);
    for (size_t c = 0; c < NCLASSES; c++) printf(" %13lld", d->n[c]);
    printf("\n");
}

static void write_table(const char *path, const tj_value *dests, const rule_drops *drops, size_t ndrops,
                        const rule_drops *all)
{
    printf("store %s\n%-44s", path, "destination");
    for (size_t c = 0; c < NCOUNTERS; c++) printf(" %13s", counters[c]);
    printf("\n");
    for (size_t i = 0; dests && i < dests->u.arr.n; i++) {
        const tj_value *d = dests->u.arr.items[i], *dead = tj_object_get(d, "recent_dead");
        printf("%-44s", str_of(d, "name"));
        for (size_t c = 0; c < NCOUNTERS; c++) printf(" %13lld", counter(d, counters[c]));
        printf("\n");
        for (size_t k = 0; dead && dead->type == TJ_ARRAY && k < dead->u.arr.n; k++)
            printf("    dead letter at %s: %s\n", str_of(dead->u.arr.items[k], "at"),
                   str_of(dead->u.arr.items[k], "reason"));
    }
    printf("\n%-44s %13s", "messages dropped by rules", "total");
    for (size_t c = 0; c < NCLASSES; c++) printf(" %13s", drop_classes[c]);
    printf("\n");
    for (size_t i = 0; i < ndrops; i++) print_drop_row(drops[i].name, &drops[i]);
    print_drop_row("(all rules)", all);
}

static void write_remote_table(const tj_value *rr)
{
    if (!rr || rr->type != TJ_OBJECT) return;
    long long v = int_of(rr, "version");
    if (v) printf("\nremote rules: version %lld active; last fetch %s: %s\n", v, str_of(rr, "fetched_at"), str_of(rr, "result"));
    else printf("\nremote rules: none accepted yet; last fetch %s: %s\n", str_of(rr, "fetched_at"), str_of(rr, "result"));
}

int cli_inspect(const cli_opts *o)
{
    const char *path = o->positional[0];
    tly_err err;
    char *json;
    if (store_report(path, &json, &err) != TALLY_OK) {
        fprintf(stderr, "tally: inspect: %s\n", err.msg);
        return 1;
    }
    tj_arena *a = tj_arena_new();
    tj_value *r;
    tj_error je;
    int rc = 0;
    if (!a || tj_parse(a, json, strlen(json), &r, &je)) {
        fprintf(stderr, "tally: inspect: %s: unreadable report\n", path);
        rc = 1;
    } else {
        const tj_value *dests = tj_object_get(r, "destinations"), *rows = tj_object_get(r, "rule_drops");
        if (dests && dests->type != TJ_ARRAY) dests = NULL;
        if (rows && rows->type != TJ_ARRAY) rows = NULL;
        rule_drops all, *drops = calloc(rows && rows->u.arr.n ? rows->u.arr.n : 1, sizeof *drops);
        size_t ndrops = drops ? sum_drops(rows, drops, &all) : 0;
        if (!drops) {
            fprintf(stderr, "tally: inspect: out of memory\n");
            rc = 1;
        } else if (o->json_output) {
            tbuf b = TBUF_INIT;
            write_json(path, dests, drops, ndrops, &all, tj_object_get(r, "rules_remote"), &b);
            if (b.oom) {
                fprintf(stderr, "tally: inspect: out of memory\n");
                rc = 1;
            } else {
                printf("%s\n", b.data);
            }
            tbuf_free(&b);
        } else {
            write_table(path, dests, drops, ndrops, &all);
            write_remote_table(tj_object_get(r, "rules_remote"));
        }
        free(drops);
    }
    tj_arena_free(a);
    free(json);
    return rc;
}
