/* `tally check --rules PATH [events.ndjson]`: runs the rules on messages without sending them and
 * shows what each script did. This is how rules are developed: edit, check, repeat. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "json.h"
#include "message.h"
#include "rules.h"

typedef struct check_state {
    long index;
    long passed, with_violations, dropped, invalid; /* messages */
    long violations, errors;                        /* events, several per message possible */
    long msg_violations;                            /* violations of the current message */
    char failed_line[1024];                         /* the log line that repeats the last error */
} check_state;

static void on_violation(void *ud, const char *rule, const char *code, const char *text)
{
    check_state *st = ud;
    st->violations++;
    st->msg_violations++;
    printf("  violation [%s] %s: %s\n", rule, code, text);
}

static void on_error(void *ud, const char *rule, const char *text)
{
    check_state *st = ud;
    st->errors++;
    printf("  error [%s] %s\n", rule, text);
    snprintf(st->failed_line, sizeof st->failed_line, "rule %s failed: %s", rule, text);
}

static void on_drop(void *ud, const char *rule, int drop_class, const char *why)
{
    (void)ud;
    (void)drop_class;
    printf("  dropped by [%s]: %s\n", rule, why);
}

/* Rule log lines (ctx:log) are part of what a script did to the message: show them in place. The
 * runtime's own line about a failure repeats what on_error printed, so it is left out. */
static void on_log(void *ud, int level, const char *line)
{
    static const char *const names[] = {
        [TALLY_LOG_ERROR] = "error", [TALLY_LOG_WARN] = "warn", [TALLY_LOG_INFO] = "info", [TALLY_LOG_DEBUG] = "debug"};
    check_state *st = ud;
    if (st->failed_line[0] && !strcmp(line, st->failed_line)) {
        st->failed_line[0] = '\0';
        return;
    }
    assert(level >= TALLY_LOG_ERROR && level <= TALLY_LOG_DEBUG);
    printf("  log [%s] %s\n", level >= 0 && level <= 3 ? names[level] : "debug", line);
}

static void print_json(const char *prefix, const tj_value *v)
{
    tbuf b = TBUF_INIT;
    tj_write(&b, v);
    printf("%s%s\n", prefix, b.data ? b.data : "");
    tbuf_free(&b);
}

static const char *describe(const tj_value *m, char *buf, size_t len)
{
    const tj_value *type = tj_object_get(m, "type"), *ev = tj_object_get(m, "event"), *name = tj_object_get(m, "name");
    const tj_value *label = ev ? ev : name;
    snprintf(buf, len, "%s%s%s%s", type && type->type == TJ_STRING ? type->u.str.s : "?",
             label && label->type == TJ_STRING ? " \"" : "", label && label->type == TJ_STRING ? label->u.str.s : "",
             label && label->type == TJ_STRING ? "\"" : "");
    return buf;
}

static void check_one(rules *R, tj_arena *a, const char *line, size_t len, check_state *st, msg_list *out,
                      msg_list *payloads)
{
    tj_value *m;
    tj_error err;
    st->index++;
    if (tj_parse(a, line, len, &m, &err)) {
        printf("message %ld: invalid JSON: %s\n", st->index, err.msg);
        st->invalid++;
        return;
    }
    tly_err why;
    if (msg_validate(m, 0, &why)) {
        printf("message %ld: invalid: %s\n", st->index, why.msg);
        st->invalid++;
        return;
    }
    msg_ids none = {0};
    msg_stamp(a, m, &none, tly_now_ms(), &why);
    char label[256];
    printf("message %ld (%s)\n", st->index, describe(m, label, sizeof label));
    rules_report rep = {on_violation, on_error, on_drop, st, 0, 0};
    st->msg_violations = 0;
    rules_process(R, a, m, tly_now_ms(), out, &rep);
    if (out->n == 0) {
        st->dropped++;
        return;
    }
    st->passed++;
    if (st->msg_violations) st->with_violations++;
    for (size_t i = 0; i < out->n; i++) {
        printf("  %s:\n", out->n > 1 ? "result (split)" : "result");
        print_json("    ", out->v[i]);
        for (size_t k = 0; k < rules_count(R); k++) {
            rules_map(R, (int)k, a, out->v[i], tly_now_ms(), payloads, &rep);
            for (size_t p = 0; p < payloads->n; p++) print_json("    mapped: ", payloads->v[p]);
        }
    }
}

int cli_check(const cli_opts *o, const char *rules_spec, const char *rule_config)
{
    if (!rules_spec) {
        fprintf(stderr, "tally: check: --rules=PATH is required\n");
        return 2;
    }
    FILE *in = stdin;
    if (o->npositional > 0 && strcmp(o->positional[0], "-") && !(in = fopen(o->positional[0], "r"))) {
        fprintf(stderr, "tally: check: %s: cannot open\n", o->positional[0]);
        return 2;
    }
    check_state st;
    memset(&st, 0, sizeof st);
    tly_logger log = {on_log, &st, TALLY_LOG_DEBUG};
    rules_opts ro = {64u << 20, 1000000, 0, 0, rule_config, 0};
    rules *R;
    tly_err err;
    if (rules_open(&R, rules_spec, &ro, &log, &err) != TALLY_OK) {
        fprintf(stderr, "tally: check: %s\n", err.msg);
        if (in != stdin) fclose(in);
        return 1;
    }
    printf("rules: %zu scripts from %s\n", rules_count(R), rules_spec);
    tj_arena *a = tj_arena_new();
    msg_list out = {0}, payloads = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        tj_arena_reset(a);
        check_one(R, a, line, (size_t)n, &st, &out, &payloads);
    }
    free(line);
    msg_list_free(&out);
    msg_list_free(&payloads);
    tj_arena_free(a);
    rules_free(R);
    if (in != stdin) fclose(in);
    /* the exit status follows what would be lost or broken in production; violations alone are
     * reported (a plan may flag and still pass) */
    printf("%ld message%s checked: %ld passed (%ld with violations), %ld dropped, %ld invalid; "
           "%ld violation%s, %ld script error%s\n",
           st.index, st.index == 1 ? "" : "s", st.passed, st.with_violations, st.dropped, st.invalid,
           st.violations, st.violations == 1 ? "" : "s", st.errors, st.errors == 1 ? "" : "s");
    return st.dropped || st.invalid || st.errors ? 1 : 0;
}
