/* `tally check --rules PATH [events.ndjson]`: runs the rules on messages without sending them and
 * shows what each script did. This is how rules are developed: edit, check, repeat. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "json.h"
#include "message.h"
#include "rules.h"

typedef struct check_state {
    long index;
    int  bad;      /* any message blocked or any script failed: exit 1 */
} check_state;

static void on_violation(void *ud, const char *rule, const char *code, const char *text)
{
    (void)ud;
    printf("  violation [%s] %s: %s\n", rule, code, text);
}

static void on_error(void *ud, const char *rule, const char *text)
{
    check_state *st = ud;
    st->bad = 1;
    printf("  error [%s] %s\n", rule, text);
}

static void on_drop(void *ud, const char *rule, const char *why)
{
    check_state *st = ud;
    st->bad = 1;
    printf("  dropped by [%s]: %s\n", rule, why);
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
        st->bad = 1;
        return;
    }
    if (msg_validate(m, 0)) {
        printf("message %ld: invalid: %s\n", st->index, tally_errmsg(NULL));
        st->bad = 1;
        return;
    }
    msg_ids none = {0};
    msg_stamp(a, m, &none, tly_now_ms(), &err);
    char label[256];
    printf("message %ld (%s)\n", st->index, describe(m, label, sizeof label));
    rules_report rep = {on_violation, on_error, on_drop, st, 0, 0};
    rules_process(R, a, m, tly_now_ms(), out, &rep);
    if (out->n == 0) return;
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
    if (o->npositional > 0 && !(in = fopen(o->positional[0], "r"))) {
        fprintf(stderr, "tally: check: %s: cannot open\n", o->positional[0]);
        return 2;
    }
    tly_logger log = {NULL, NULL, TALLY_LOG_ERROR};
    rules_opts ro = {64u << 20, 1000000, 0, 0, rule_config, 0};
    rules *R;
    if (rules_open(&R, rules_spec, &ro, &log) != TALLY_OK) {
        fprintf(stderr, "tally: check: %s\n", tally_errmsg(NULL));
        if (in != stdin) fclose(in);
        return 1;
    }
    printf("rules: %zu scripts from %s\n", rules_count(R), rules_spec);
    check_state st = {0, 0};
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
    printf("%ld messages checked: %s\n", st.index, st.bad ? "some were blocked or a script failed" : "all passed");
    return st.bad ? 1 : 0;
}
