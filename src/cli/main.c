/* tally: the command-line front end. Exit codes: 0 done, 1 not delivered / rules failed,
 * 2 bad usage or bad input (the message names the flag). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "report.h"
#include "json.h"
#include "store.h"
#include "tally.h"

static const char usage[] =
    "usage: tally COMMAND [--flag=value ...]\n"
    "  tally track|identify|page|screen|group|alias --userId=U|--anonymousId=A [--event=E] [--name=N]\n"
    "        [--category=C] [--groupId=G] [--previousId=P] [--properties=JSON] [--traits=JSON]\n"
    "        [--context=JSON] [--integrations=JSON] [--messageId=ID] [--timestamp=ISO8601]\n"
    "  tally --type=track ...            same, Segment library CLI style\n"
    "  tally send [FILE]                 one JSON message per line (stdin when no FILE)\n"
    "  tally inspect STORE [--json]      queued / delivered / retried / dead-lettered / dropped\n"
    "  tally check --rules=PATH [FILE]   run the rules on NDJSON messages without sending\n"
    "  tally report --events=DB [--store=S] [--plan=RULE.lua] [-o FILE]   HTML audit (report --help)\n"
    "configuration flags: --writeKey= --endpoint= --out=FILE --store= --rules= --config=FILE.lua\n"
    "  and any configuration key as --key=value (see README); --wait_ms= delivery wait (30000)\n";

static int die(int code, const char *what, const char *msg)
{
    fprintf(stderr, "tally: %s%s%s\n", what, *what ? ": " : "", msg);
    return code;
}

static int has_store(const cli_opts *o)
{
    for (int i = 0; i < o->nset; i++)
        if (!strcmp(o->set_key[i], "store") && strcmp(o->set_val[i], ":memory:")) return 1;
    return 0;
}

static int configure(const cli_opts *o, tally_config *cfg, int single)
{
    if (o->config_file && tally_config_load(cfg, o->config_file) != TALLY_OK)
        return die(2, "--config", tally_errmsg(NULL));
    for (int i = 0; i < o->nset; i++)
        if (tally_config_set(cfg, o->set_key[i], o->set_val[i]) != TALLY_OK) return die(2, "", tally_errmsg(NULL));
    /* A one-shot command has no device to remember: the ids come from the flags. */
    if (single && !has_store(o) && tally_config_set(cfg, "mode", "server") != TALLY_OK)
        return die(2, "", tally_errmsg(NULL));
    return 0;
}

/* Waits for delivery and reports whether every message reached every destination. */
static int finish(tally_t *t, int wait_ms, int durable)
{
    int rc = tally_flush(t, wait_ms);
    char *stats = NULL;
    int failed = 0;
    if (tally_stats(t, &stats) == TALLY_OK) {
        failed = strstr(stats, "\"failed\":0") == NULL && strstr(stats, "\"failed\":") != NULL;
        failed |= strstr(stats, "\"invalid\":0,") == NULL;
    }
    tally_free(stats);
    tally_close(t, 0);
    if (rc != TALLY_OK)
        return die(1, "delivery", durable ? "not delivered within --wait_ms; the rest stays in --store for the next run"
                                          : "not delivered within --wait_ms (no --store: undelivered messages are lost)");
    if (failed) return die(1, "delivery", "a destination refused the message (see the log above)");
    return 0;
}

/* Validation names message fields ("event: required"); on the command line the user typed
 * flags, so name those ("--event: required"). */
static void name_flags(const char *msg, char *out, size_t outlen)
{
    static const char *const fields[] = {"userId or anonymousId", "userId", "anonymousId", "event", "name",
                                         "category", "groupId", "previousId", "messageId", "timestamp",
                                         "properties", "traits", "context", "integrations", NULL};
    for (int i = 0; fields[i]; i++) {
        size_t n = strlen(fields[i]);
        if (!strncmp(msg, fields[i], n) && msg[n] == ':') {
            if (i == 0) snprintf(out, outlen, "--userId or --anonymousId%s", msg + n);
            else snprintf(out, outlen, "--%s", msg);
            return;
        }
    }
    snprintf(out, outlen, "%s", msg);
}

static int run_single(const cli_opts *o, tally_config *cfg)
{
    char err[512];
    tbuf msg = TBUF_INIT;
    if (cli_build_message(o, &msg, err, sizeof err)) {
        tbuf_free(&msg);
        return die(2, "", err);
    }
    tally_t *t;
    if (tally_open(cfg, &t) != TALLY_OK) {
        tbuf_free(&msg);
        return die(2, "", tally_errmsg(NULL));
    }
    int rc = tally_send(t, msg.data);
    tbuf_free(&msg);
    if (rc != TALLY_OK) {
        char flag[600];
        name_flags(tally_errmsg(t), flag, sizeof flag);
        tally_close(t, 0);
        return die(2, "", flag);
    }
    return finish(t, o->wait_ms, has_store(o));
}

static int run_send(const cli_opts *o, tally_config *cfg)
{
    FILE *in = stdin;
    if (o->npositional > 0 && !(in = fopen(o->positional[0], "r"))) return die(2, o->positional[0], "cannot open");
    tally_t *t;
    if (tally_open(cfg, &t) != TALLY_OK) {
        if (in != stdin) fclose(in);
        return die(2, "", tally_errmsg(NULL));
    }
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0, bad = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        if (tally_send(t, line) != TALLY_OK) {
            fprintf(stderr, "tally: line %ld: %s\n", lineno, tally_errmsg(t));
            bad++;
        }
    }
    free(line);
    if (in != stdin) fclose(in);
    int rc = finish(t, o->wait_ms, has_store(o));
    return rc ? rc : bad ? 2 : 0;
}

/* `tally inspect STORE`: what is queued, delivered, retried, dead-lettered and dropped, per
 * destination, read straight from the store (safe while the owner is running: WAL readers). */
static int run_inspect(const cli_opts *o)
{
    if (o->npositional != 1) return die(2, "inspect", "expected exactly one store path: tally inspect STORE");
    char err[512];
    char *json = store_report(o->positional[0], err, sizeof err);
    if (!json) return die(1, "inspect", err);
    if (o->json_output) {
        printf("%s\n", json);
        free(json);
        return 0;
    }
    tj_arena *a = tj_arena_new();
    tj_value *r;
    tj_error je;
    if (!a || tj_parse(a, json, strlen(json), &r, &je)) {
        printf("%s\n", json);
    } else {
        static const char *const cols[] = {"queued", "delivered", "retried", "dead_lettered", "dropped"};
        printf("store %s\n%-44s", o->positional[0], "destination");
        for (int c = 0; c < 5; c++) printf(" %13s", cols[c]);
        printf("\n");
        tj_value *dests = tj_object_get(r, "destinations");
        for (size_t i = 0; dests && i < dests->u.arr.n; i++) {
            tj_value *d = dests->u.arr.items[i];
            printf("%-44s", tj_object_get(d, "name")->u.str.s);
            for (int c = 0; c < 5; c++) {
                tj_value *v = tj_object_get(d, cols[c]);
                printf(" %13lld", v && v->type == TJ_INT ? (long long)v->u.i : 0LL);
            }
            printf("\n");
            tj_value *dead = tj_object_get(d, "recent_dead");
            for (size_t k = 0; dead && k < dead->u.arr.n; k++)
                printf("    dead letter at %s: %s\n", tj_object_get(dead->u.arr.items[k], "at")->u.str.s,
                       tj_object_get(dead->u.arr.items[k], "reason")->u.str.s);
        }
    }
    tj_arena_free(a);
    free(json);
    return 0;
}

int main(int argc, char **argv)
{
    cli_opts o;
    char err[512];
    if (argc > 1 && !strcmp(argv[1], "report")) return cli_report(argc - 1, argv + 1);
    if (cli_parse(argc, argv, &o, err, sizeof err)) {
        fprintf(stderr, "tally: %s\n", err);
        return 2;
    }
    if (!strcmp(o.command, "help")) { fputs(usage, stdout); return 0; }
    if (!strcmp(o.command, "version")) { printf("tally %s\n", tally_version()); return 0; }
    if (!strcmp(o.command, "inspect")) return run_inspect(&o);
    if (!strcmp(o.command, "check")) {
        const char *spec = NULL, *rule_config = NULL;
        for (int i = 0; i < o.nset; i++) {
            if (!strcmp(o.set_key[i], "rules")) spec = o.set_val[i];
            if (!strcmp(o.set_key[i], "rule_config")) rule_config = o.set_val[i];
        }
        return cli_check(&o, spec, rule_config);
    }
    tally_config *cfg = tally_config_new();
    if (!cfg) return die(1, "", "out of memory");
    int single = strcmp(o.command, "send") && strcmp(o.command, "check") && strcmp(o.command, "inspect");
    int rc = configure(&o, cfg, single);
    if (!rc) {
        if (single) rc = run_single(&o, cfg);
        else if (!strcmp(o.command, "send")) rc = run_send(&o, cfg);
        else rc = die(2, o.command, "not available in this build yet");
    }
    tally_config_free(cfg);
    return rc;
}
