/* Flag parsing and message assembly for the CLI, kept free of I/O so it can be fuzzed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "json.h"
#include "config.h"
#include "message.h"

static const struct {
    const char *flag;   /* as typed, camelCase like Segment's CLI */
    const char *field;  /* the message field it fills */
    int         json;   /* the value is a JSON object */
} field_flags[CF_COUNT] = {
    [CF_USER_ID] = {"userId", "userId", 0},           [CF_ANONYMOUS_ID] = {"anonymousId", "anonymousId", 0},
    [CF_EVENT] = {"event", "event", 0},               [CF_NAME] = {"name", "name", 0},
    [CF_CATEGORY] = {"category", "category", 0},      [CF_GROUP_ID] = {"groupId", "groupId", 0},
    [CF_PREVIOUS_ID] = {"previousId", "previousId", 0}, [CF_MESSAGE_ID] = {"messageId", "messageId", 0},
    [CF_TIMESTAMP] = {"timestamp", "timestamp", 0},   [CF_PROPERTIES] = {"properties", "properties", 1},
    [CF_TRAITS] = {"traits", "traits", 1},            [CF_CONTEXT] = {"context", "context", 1},
    [CF_INTEGRATIONS] = {"integrations", "integrations", 1},
};

static const char *const commands[] = {"track", "identify", "page", "screen", "group", "alias",
                                       "send", "check", "inspect", "report", "forget", "help", "version", "consent", NULL};

/* Flags of the CLI itself (not message fields, not configuration keys). */
static const char *const cli_flags[] = {"type", "config", "json", "wait_ms", "help", "version", NULL};

static int fail(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    snprintf(err, errlen, fmt, a, b ? b : "");
    return 2;
}

/* Configuration keys, their camelCase spellings and Segment's names (--writeKey, --host, --flushAt)
 * resolve through the one alias table in src/config.c. */
const char *cli_config_key(const char *flag, size_t len) { return config_key_lookup(flag, len); }

/* " (did you mean --X?)" for a misspelt flag, or "". */
static void suggest_flag(const char *name, size_t nlen, char *out, size_t outlen)
{
    const char *names[CF_COUNT + 8];
    size_t n = 0;
    for (int f = 0; f < CF_COUNT; f++) names[n++] = field_flags[f].flag;
    for (int i = 0; cli_flags[i]; i++) names[n++] = cli_flags[i];
    const char *best = tly_nearest(name, nlen, names, n), *key = config_nearest_key(name, nlen);
    if (key && (!best || tly_edit_distance(name, nlen, key, strlen(key)) <
                             tly_edit_distance(name, nlen, best, strlen(best))))
        best = key;
    if (best) snprintf(out, outlen, " (did you mean --%s?)", best);
    else out[0] = '\0';
}

static int set_command(cli_opts *o, const char *cmd, char *err, size_t errlen)
{
    for (int i = 0; commands[i]; i++) {
        if (!strcmp(cmd, commands[i])) {
            if (o->command && strcmp(o->command, commands[i]))
                return fail(err, errlen, "--type: conflicts with command \"%s\"%s", o->command, NULL);
            o->command = commands[i];
            return 0;
        }
    }
    const char *near = tly_nearest(cmd, strlen(cmd), commands, sizeof commands / sizeof *commands - 1);
    char hint[64] = "";
    if (near) snprintf(hint, sizeof hint, " (did you mean \"%s\"?)", near);
    char quoted[80];
    snprintf(quoted, sizeof quoted, "%.60s", cmd);
    return fail(err, errlen, "unknown command \"%s\"%s; commands: track, identify, page, screen, group, alias, "
                "send, check, inspect, report, forget, help, version, consent", quoted, hint);
}

static int is_switch(const char *name, size_t nlen)
{
    return (nlen == 4 && !memcmp(name, "help", 4)) || (nlen == 4 && !memcmp(name, "json", 4)) ||
           (nlen == 7 && !memcmp(name, "version", 7));
}

/* One flag: `name` (without the dashes, nlen bytes) and its value, NULL when none was given. */
static int parse_flag(cli_opts *o, const char *name, size_t nlen, const char *val, char *err, size_t errlen)
{
    if (nlen == 4 && !memcmp(name, "help", 4) && !val) { o->help = 1; return 0; }
    if (nlen == 7 && !memcmp(name, "version", 7) && !val) { o->version = 1; return 0; }
    if (nlen == 4 && !memcmp(name, "json", 4) && !val) { o->json_output = 1; return 0; }
    char flag[64];
    snprintf(flag, sizeof flag, "%.*s", (int)(nlen < 60 ? nlen : 60), name);
    if (!val) return fail(err, errlen, "--%s: expected --%s=VALUE", flag, flag);
    if (nlen == 4 && !memcmp(name, "type", 4)) return set_command(o, val, err, errlen);
    if (nlen == 6 && !memcmp(name, "config", 6)) { o->config_file = val; return 0; }
    if (nlen == 4 && !memcmp(name, "json", 4)) { o->json_output = strcmp(val, "false") != 0; return 0; }
    if ((nlen == 4 && !memcmp(name, "help", 4)) || (nlen == 7 && !memcmp(name, "version", 7)))
        return fail(err, errlen, "--%s: takes no value%s", flag, NULL);
    if (nlen == 7 && !memcmp(name, "wait_ms", 7)) {
        char *end;
        long ms = strtol(val, &end, 10);
        if (end == val || *end || ms < 0 || ms > 3600000)
            return fail(err, errlen, "--wait_ms: expected milliseconds from 0 to 3600000, got \"%s\"%s", val, NULL);
        o->wait_ms = (int)ms;
        return 0;
    }
    for (int f = 0; f < CF_COUNT; f++) {
        if (strlen(field_flags[f].flag) == nlen && !memcmp(field_flags[f].flag, name, nlen)) {
            o->fields[f] = val;
            return 0;
        }
    }
    const char *key = cli_config_key(name, nlen);
    if (key) {
        if (o->nset == CLI_MAX_SETTINGS) return fail(err, errlen, "--%s: too many settings%s", key, NULL);
        o->set_key[o->nset] = key;
        o->set_val[o->nset++] = val;
        return 0;
    }
    char hint[96];
    suggest_flag(name, nlen, hint, sizeof hint);
    return fail(err, errlen, "unknown flag --%s%s", flag, hint);
}

/* How many file arguments a command takes: at least `min`, at most `max`. */
static void arity(const char *cmd, int *min, int *max)
{
    *min = *max = 0;
    if (!strcmp(cmd, "send") || !strcmp(cmd, "check") || !strcmp(cmd, "help") || !strcmp(cmd, "consent")) *max = 1;
    else if (!strcmp(cmd, "inspect") || !strcmp(cmd, "forget")) *min = *max = 1;
}

static int check_positionals(cli_opts *o, char *err, size_t errlen)
{
    int min, max;
    arity(o->command, &min, &max);
    if (o->npositional > max) {
        const char *what = max ? "takes one file" : "takes no file arguments (flags are --key=value)";
        char arg[80];
        snprintf(arg, sizeof arg, "%.60s", o->positional[max]);
        char text[96];
        snprintf(text, sizeof text, "%s %s", o->command, what);
        return fail(err, errlen, "unexpected argument \"%s\": %s", arg, text);
    }
    if (o->npositional < min && !o->help && !strcmp(o->command, "forget"))
        return fail(err, errlen, "forget: expected the id to erase: tally forget --store=S ID%s%s", "", NULL);
    if (o->npositional < min && !o->help)
        return fail(err, errlen, "%s: expected a store path: tally %s STORE", o->command, o->command);
    if (!strcmp(o->command, "help") && o->npositional == 1) {
        const char *topic = o->positional[0];
        o->npositional = 0;
        o->command = NULL;
        int rc = set_command(o, topic, err, errlen);
        if (rc) return rc;
        o->help = 1;
    }
    return 0;
}

int cli_parse(int argc, char **argv, cli_opts *o, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    o->wait_ms = 30000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int rc;
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            /* --key=value is Segment's contract; --key value is accepted too, as people type it */
            const char *name = a + 2, *eq = strchr(name, '='), *val = eq ? eq + 1 : NULL;
            size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
            if (!val && !is_switch(name, nlen) && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) val = argv[++i];
            rc = parse_flag(o, name, nlen, val, err, errlen);
        } else if (!strcmp(a, "-h")) {
            o->help = 1;
            rc = 0;
        } else if (!strcmp(a, "-V")) {
            o->version = 1;
            rc = 0;
        } else if (a[0] == '-' && a[1]) {
            char flag[64];
            snprintf(flag, sizeof flag, "%.60s", a);
            rc = fail(err, errlen, "unknown flag %s (short flags: -h help, -V version; others are --key=value)%s", flag, NULL);
        } else if (!o->command) {
            rc = set_command(o, a, err, errlen);
        } else if (o->npositional < (int)(sizeof o->positional / sizeof *o->positional)) {
            o->positional[o->npositional++] = a;
            rc = 0;
        } else {
            char arg[80];
            snprintf(arg, sizeof arg, "%.60s", a);
            rc = fail(err, errlen, "too many arguments at \"%s\"%s", arg, NULL);
        }
        if (rc) return rc;
    }
    if (o->version) { o->command = "version"; return 0; }
    if (!o->command && o->help) o->command = "help";
    if (!o->command) return fail(err, errlen, "no command: use track, identify, page, screen, group, alias, send, check, inspect or report (or --type=...; tally --help)%s%s", "", NULL);
    if (!strcmp(o->command, "help")) o->help = 1;
    return check_positionals(o, err, errlen);
}

int cli_build_message(const cli_opts *o, tbuf *out, char *err, size_t errlen)
{
    tbuf_reset(out);
    tbuf_puts(out, "{\"type\":");
    tj_write_string(out, o->command, strlen(o->command));
    for (int f = 0; f < CF_COUNT; f++) {
        const char *v = o->fields[f];
        if (!v) continue;
        size_t len = strlen(v), bad;
        tj_error je;
        if (field_flags[f].json) {
            size_t i = 0;
            if (tj_validate(v, len, &je))
                return fail(err, errlen, "--%s: invalid JSON: %s", field_flags[f].flag, je.msg);
            while (v[i] == ' ' || v[i] == '\t' || v[i] == '\n' || v[i] == '\r') i++;
            if (v[i] != '{') return fail(err, errlen, "--%s: expected a JSON object%s", field_flags[f].flag, NULL);
        } else if (!tj_utf8_valid(v, len, &bad)) {
            return fail(err, errlen, "--%s: invalid UTF-8%s", field_flags[f].flag, NULL);
        }
        tbuf_putc(out, ',');
        tj_write_string(out, field_flags[f].field, strlen(field_flags[f].field));
        tbuf_putc(out, ':');
        if (field_flags[f].json) tbuf_append(out, v, len);
        else tj_write_string(out, v, len);
    }
    tbuf_putc(out, '}');
    if (out->oom) return fail(err, errlen, "out of memory%s%s", "", NULL);
    return out->len > TALLY_MAX_MESSAGE_BYTES ? cli_too_big(o, out->len, err, errlen) : 0;
}

/* A message over the limit, named by the flag that made it so (the largest): the user typed
 * flags, and "message: 40040 bytes" does not say which one to shorten. */
int cli_too_big(const cli_opts *o, size_t total, char *err, size_t errlen)
{
    int big = -1;
    size_t biglen = 0;
    for (int f = 0; f < CF_COUNT; f++)
        if (o->fields[f] && strlen(o->fields[f]) > biglen) { big = f; biglen = strlen(o->fields[f]); }
    if (big < 0)
        snprintf(err, errlen, "message: %zu bytes, over the %d-byte message limit", total, TALLY_MAX_MESSAGE_BYTES);
    else if (biglen > TALLY_MAX_MESSAGE_BYTES)
        snprintf(err, errlen, "--%s: %zu bytes, over the %d-byte message limit", field_flags[big].flag, biglen,
                 TALLY_MAX_MESSAGE_BYTES);
    else
        snprintf(err, errlen, "--%s: %zu bytes make the message %zu bytes, over the %d-byte message limit",
                 field_flags[big].flag, biglen, total, TALLY_MAX_MESSAGE_BYTES);
    return 2;
}
