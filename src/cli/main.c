/* tally: the command-line front end. Exit codes: 0 done, 1 not delivered / rules failed,
 * 2 bad usage or bad input (the message names the flag). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "report.h"
#include "json.h"
#include "store.h"
#include "tally.h"

/* Per-command usage: `tally CMD --help` prints the command's lines, then the common part. */
static const struct { const char *cmd, *text; } usages[] = {
    {"track", "  tally track --event=E (--userId=U | --anonymousId=A) [--properties=JSON]\n"},
    {"identify", "  tally identify --userId=U [--traits=JSON]\n"},
    {"page", "  tally page (--userId=U | --anonymousId=A) [--name=N] [--category=C] [--properties=JSON]\n"},
    {"screen", "  tally screen (--userId=U | --anonymousId=A) [--name=N] [--properties=JSON]\n"},
    {"group", "  tally group --groupId=G (--userId=U | --anonymousId=A) [--traits=JSON]\n"},
    {"alias", "  tally alias --userId=U --previousId=P\n"},
    {"send", "  tally send [FILE]                  one Segment message (JSON) per line; stdin when no FILE\n"},
    {"check", "  tally check --rules=PATH [FILE]    run the rules on NDJSON messages without sending them\n"
              "        [--rule_config=JSON]          prints each result, violation, drop, error and ctx:log line\n"},
    {"inspect", "  tally inspect STORE [--json]      per destination: queued, delivered, retried,\n"
                "                                     dead-lettered, dropped; per rule: messages rules dropped\n"
                "                                     (by_rule, failed_closed, disabled); --json: the schema in README\n"},
    {"rules", "  tally rules keygen|pack|verify|test   signed rule bundles: sign, check, self-test (rules --help)\n"},
    {"report", "  tally report --events=DB [--store=S] [--plan=RULE.lua] [-o FILE]   HTML audit (report --help)\n"},
    {"consent", "  tally consent --store=S (--config=FILE | --destinations=JSON) JSON   merge the device's consent\n"
                "                                     preferences ({\"analytics\":true}; false: opt out) into S,\n"
                "                                     purging what the destinations' categories no longer allow\n"},
    {"forget", "  tally forget --store=S ID          erase ID's queued and dead-lettered messages (userId or\n"
               "                                     anonymousId) from a store no process has open; prints\n"
               "                                     the count; resets the device identity when it is ID's\n"},
};

static const char usage_single[] =
    "  message flags (any command above but send/check/inspect/report): --context=JSON --integrations=JSON\n"
    "        --messageId=ID --timestamp=ISO8601 (e.g. 2024-01-31T12:00:00.000Z); --type=CMD instead of CMD\n";

static const char usage_common[] =
    "configuration: --writeKey=K --endpoint=URL (or --host) --out=FILE --store=FILE --rules=PATH\n"
    "  --config=FILE.lua and every configuration key as --key=value, snake_case or camelCase\n"
    "  (--flush_at or --flushAt); --wait_ms=MS how long to wait for delivery (30000)\n"
    "mode: --mode=server (ids from each message; the default for send, and without --store)\n"
    "      --mode=client (device anonymousId, userId and session kept in --store; the default\n"
    "      for track ... alias with --store)\n"
    "other: -h, --help (also `tally help CMD`); -V, --version\n"
    "environment:\n"
    "  TALLY_WRITE_KEY  write key when --writeKey is not given\n"
    "  TALLY_ENDPOINT   collector URL when --endpoint is not given\n"
    "exit codes:\n"
    "  0  done: every message reached every destination (check: no message blocked, no script failed)\n"
    "  1  not delivered, a destination refused or dead-lettered, a rule blocked or failed, a store unreadable\n"
    "  2  bad usage or bad input (the message names the flag or the line)\n";

static void print_usage(const char *cmd)
{
    int all = !cmd || !strcmp(cmd, "help") || !strcmp(cmd, "version");
    printf("usage: tally COMMAND [--flag=value ...]\n");
    for (size_t i = 0; i < sizeof usages / sizeof *usages; i++)
        if (all || !strcmp(cmd, usages[i].cmd)) fputs(usages[i].text, stdout);
    if (all || (strcmp(cmd, "send") && strcmp(cmd, "check") && strcmp(cmd, "inspect") && strcmp(cmd, "report") &&
                strcmp(cmd, "consent") && strcmp(cmd, "forget")))
        fputs(usage_single, stdout);
    fputs(usage_common, stdout);
}

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

/* The mode is set first, so a config file or --mode overrides it. A one-shot command without a
 * store has no device to remember; `send` replays messages that carry their own ids, which a
 * device identity must not be stamped onto. Only track ... alias with --store act as a device. */
static int configure(const cli_opts *o, tally_config *cfg, int single)
{
    const char *mode = single && has_store(o) ? "client" : "server";
    if (tally_config_set(cfg, "mode", mode) != TALLY_OK) return die(2, "", tally_errmsg(NULL));
    if (o->config_file && tally_config_load(cfg, o->config_file) != TALLY_OK)
        return die(2, "--config", tally_errmsg(NULL));
    for (int i = 0; i < o->nset; i++)
        if (tally_config_set(cfg, o->set_key[i], o->set_val[i]) != TALLY_OK) return die(2, "", tally_errmsg(NULL));
    return 0;
}

static long long stat_int(const tj_value *obj, const char *key)
{
    const tj_value *v = tj_object_get(obj, key);
    return v && v->type == TJ_INT ? (long long)v->u.i : 0;
}

/* Reads the counters, not their text: each destination is judged on its own, so a clean one
 * cannot hide another's dead letters. 0 when nothing was lost, else 1 with each loss on stderr.
 * `resent`: intake refusals (counted "dropped") that the caller waited out and sent again. */
static int judge(const char *stats, long long resent)
{
    tj_arena *a = tj_arena_new();
    tj_value *r;
    tj_error je;
    int bad = 0;
    if (!a || !stats || tj_parse(a, stats, strlen(stats), &r, &je)) {
        tj_arena_free(a);
        fprintf(stderr, "tally: delivery: cannot read the delivery counters\n");
        return 1;
    }
    static const struct { const char *key, *what; } losses[] = {
        {"invalid", "invalid after stamping and rules (see the log above)"},
        {"rule_dropped", "dropped by a rule"},
        {"dropped", "dropped: the intake was full"},
        {"store_dropped", "dropped: the store was full"},
    };
    for (size_t i = 0; i < sizeof losses / sizeof *losses; i++) {
        long long n = stat_int(r, losses[i].key);
        if (!strcmp(losses[i].key, "dropped")) n -= resent;
        if (n > 0) {
            fprintf(stderr, "tally: delivery: %lld message%s %s\n", n, n == 1 ? "" : "s", losses[i].what);
            bad = 1;
        }
    }
    const tj_value *dests = tj_object_get(r, "destinations");
    for (size_t i = 0; dests && dests->type == TJ_ARRAY && i < dests->u.arr.n; i++) {
        const tj_value *d = dests->u.arr.items[i], *name = tj_object_get(d, "name");
        long long failed = stat_int(d, "failed");
        if (failed > 0) {
            fprintf(stderr, "tally: delivery: %s refused %lld message%s (dead-lettered; see the log above)\n",
                    name && name->type == TJ_STRING ? name->u.str.s : "?", failed, failed == 1 ? "" : "s");
            bad = 1;
        }
    }
    tj_arena_free(a);
    return bad;
}

/* Waits for delivery and reports whether every message reached every destination. */
static int finish(tally_t *t, int wait_ms, int durable, long long resent)
{
    int rc = tally_flush(t, wait_ms);
    char *stats = NULL;
    int lost = tally_stats(t, &stats) == TALLY_OK ? judge(stats, resent) : 1;
    tally_free(stats);
    tally_close(t, 0);
    if (rc != TALLY_OK)
        return die(1, "delivery", durable ? "not delivered within --wait_ms; the rest stays in --store for the next run"
                                          : "not delivered within --wait_ms (no --store: undelivered messages are lost)");
    return lost ? 1 : 0;
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
        /* "message: N bytes, ...": N counts what the runtime stamped, more than was built here */
        if (rc == TALLY_ETOOBIG && !strncmp(tally_errmsg(t), "message: ", 9))
            cli_too_big(o, (size_t)strtoull(tally_errmsg(t) + 9, NULL, 10), flag, sizeof flag);
        else name_flags(tally_errmsg(t), flag, sizeof flag);
        tally_close(t, 0);
        return die(2, "", flag);
    }
    return finish(t, o->wait_ms, has_store(o), 0);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A file can wait where an application cannot: when the intake is full, let delivery make room
 * and offer the same line again, for at most --wait_ms in all. Counts the refusals waited out in
 * *resent (the runtime counted each as dropped). */
static int send_waiting(tally_t *t, const char *line, long long deadline, long long *resent)
{
    for (;;) {
        int rc = tally_send(t, line);
        if (rc != TALLY_EFULL) return rc;
        long long left = deadline - now_ms();
        if (left <= 0) return rc;
        (*resent)++;
        tally_flush(t, left < 50 ? (int)left : 50);
    }
}

static int run_send(const cli_opts *o, tally_config *cfg)
{
    FILE *in = stdin;
    const char *path = "stdin";
    if (o->npositional > 0 && strcmp(o->positional[0], "-")) {
        path = o->positional[0];
        if (!(in = fopen(path, "r"))) return die(2, path, "cannot open");
    }
    struct stat st;
    if (fstat(fileno(in), &st) == 0 && S_ISDIR(st.st_mode)) {
        if (in != stdin) fclose(in);
        return die(2, path, "is a directory (expected an NDJSON file)");
    }
    tally_t *t;
    if (tally_open(cfg, &t) != TALLY_OK) {
        if (in != stdin) fclose(in);
        return die(2, "", tally_errmsg(NULL));
    }
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0, bad = 0;
    long long resent = 0, deadline = now_ms() + o->wait_ms;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        size_t text = strlen(line); /* a raw NUL would silently cut the line short */
        if (text != (size_t)n) {
            fprintf(stderr, "tally: line %ld: raw NUL byte at offset %zu (JSON text cannot hold one; write \\u0000 "
                            "inside a string)\n", lineno, text);
            bad++;
            continue;
        }
        int rc = send_waiting(t, line, deadline, &resent);
        if (rc != TALLY_OK) {
            fprintf(stderr, "tally: line %ld: %s%s\n", lineno, tally_errmsg(t),
                    rc == TALLY_EFULL ? " (still full after --wait_ms)" : "");
            bad++;
        }
    }
    int read_err = ferror(in) ? errno : 0;
    free(line);
    if (in != stdin) fclose(in);
    if (read_err) {
        tally_close(t, 0);
        return die(2, path, strerror(read_err));
    }
    int rc = finish(t, o->wait_ms, has_store(o), resent);
    return rc ? rc : bad ? 2 : 0;
}

/* The preferences live in the store, and what they purge depends on the destinations' consent
 * categories: so the application's store and destinations, opened as the application does. */
static int run_consent(const cli_opts *o, tally_config *cfg)
{
    if (!has_store(o)) return die(2, "--store", "required: the consent preferences are kept in the store");
    if (o->npositional != 1) return die(2, "consent", "expected the preferences: tally consent --store=S '{\"analytics\":true}'");
    /* Held, whatever the application sets: rows queued before the decision must not go out
     * before it is applied (it is the first record; a decided store holds nothing). */
    if (tally_config_set(cfg, "consent_required", "true") != TALLY_OK) return die(2, "", tally_errmsg(NULL));
    tally_t *t;
    if (tally_open(cfg, &t) != TALLY_OK) return die(2, "", tally_errmsg(NULL));
    if (tally_consent(t, o->positional[0]) != TALLY_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", tally_errmsg(t));
        tally_close(t, 0);
        return die(2, "", msg);
    }
    int rc = tally_flush(t, o->wait_ms);
    tally_close(t, 0);
    if (rc != TALLY_OK) return die(1, "consent", "applied and stored, but not everything queued was delivered within --wait_ms");
    return 0;
}

int main(int argc, char **argv)
{
    cli_opts o;
    char err[512];
    if (argc > 1 && !strcmp(argv[1], "report")) return cli_report(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "rules")) return cli_rules(argc - 1, argv + 1);
    if (cli_parse(argc, argv, &o, err, sizeof err)) {
        fprintf(stderr, "tally: %s\n", err);
        return 2;
    }
    if (!strcmp(o.command, "version")) { printf("tally %s\n", tally_version()); return 0; }
    if (o.help && !strcmp(o.command, "report")) { /* report parses its own flags and knows its usage */
        char *args[] = {"report", "--help", NULL};
        return cli_report(2, args);
    }
    if (o.help) { print_usage(o.command); return 0; }
    if (!strcmp(o.command, "inspect")) return cli_inspect(&o);
    if (!strcmp(o.command, "forget")) return cli_forget(&o);
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
        if (!strcmp(o.command, "consent")) rc = run_consent(&o, cfg);
        else if (single) rc = run_single(&o, cfg);
        else if (!strcmp(o.command, "send")) rc = run_send(&o, cfg);
        else rc = die(2, o.command, "not available in this build yet");
    }
    tally_config_free(cfg);
    return rc;
}
