/* `tally report`: the command. Reads the flags, loads a plan or naming rule through the sandbox
 * (rules are untrusted code, even here), aggregates, renders and writes the page atomically, so
 * a failed run never leaves half a report where a good one was. */
#include <errno.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "report.h"
#include "sandbox.h"

static const char usage[] =
    "usage: tally report [--events=events.db|events.ndjson] [--store=STORE] [--plan=RULE.lua]\n"
    "                    [--naming=RULE.lua] [--style=lower|title|snake] [--since=ISO-8601] [-o report.html]\n"
    "  a self-contained HTML audit: volume, events, property types, naming, plan coverage,\n"
    "  violations, identity and delivery. At least one of --events and --store.\n";

#define MAX_PLANNED 10000

static int usage_error(const char *fmt, const char *a)
{
    fprintf(stderr, "tally: report: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n");
    return 2;
}

/* YYYY-MM-DD, optionally followed by THH:MM[:SS[.fff]] and Z. Events carry UTC timestamps in
 * this form, so the filter is a string comparison. */
static int valid_since(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t n = strlen(s);
    if (n && s[n - 1] == 'Z') n--;
    if (n != 10 && n != 16 && n < 19) return 0;
    for (size_t i = 0; i < n && i < 19; i++)
        if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i]) return 0;
    if (n > 19) {
        if (s[19] != '.' || n == 20) return 0;
        for (size_t i = 20; i < n; i++)
            if (s[i] < '0' || s[i] > '9') return 0;
    }
    int month = (s[5] - '0') * 10 + (s[6] - '0'), day = (s[8] - '0') * 10 + (s[9] - '0');
    return month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

/* Reads plain data a rule's plugin table exposes for reports: `planned_events` (tally.plan) and
 * `conventions` (tally.naming). Raw reads only: a script's metatables never run here. */
static int load_rule_info(rep_data *d, const char *path, int want_plan, char *err, size_t errlen)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    const char *dirs[] = {dir, NULL};
    tly_logger log = {NULL, NULL, TALLY_LOG_ERROR};
    sb_limits lim = {64u << 20, 10000000};
    if (access(path, R_OK) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    sandbox *sb = sb_new(&lim, dirs, &log);
    if (!sb) {
        snprintf(err, errlen, "cannot create the Lua state");
        return -1;
    }
    int rc = -1;
    tly_err why;
    if (sb_load_file(sb, path, &why)) {
        snprintf(err, errlen, "%s", why.msg);
        goto out;
    }
    lua_State *L = sb_state(sb);
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s: must return a plugin table", path);
        goto out;
    }
    lua_pushliteral(L, "planned_events");
    if (lua_rawget(L, -2) == LUA_TTABLE) {
        d->have_plan = 1;
        for (lua_Integer i = 1; i <= MAX_PLANNED && lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
            if (lua_type(L, -1) == LUA_TSTRING) {
                char **p = realloc(d->planned, (d->nplanned + 1) * sizeof *p);
                if (p) {
                    d->planned = p;
                    if ((p[d->nplanned] = strdup(lua_tostring(L, -1)))) d->nplanned++;
                }
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    } else if (want_plan) {
        snprintf(err, errlen, "%s: the rule has no planned_events list (a tally.plan rule has one)", path);
        goto out;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "conventions");
    if (lua_rawget(L, -2) == LUA_TTABLE) {
        static const char *const styles[] = {"lower", "title", "snake"};
        lua_pushliteral(L, "style");
        if (lua_rawget(L, -2) == LUA_TSTRING)
            for (int i = 0; i < 3; i++)
                if (!strcmp(lua_tostring(L, -1), styles[i]) && !d->style) d->style = styles[i];
        lua_pop(L, 1);
        lua_pushliteral(L, "property_case");
        if (lua_rawget(L, -2) == LUA_TSTRING && !strcmp(lua_tostring(L, -1), "snake")) d->snake_keys = 1;
        lua_pop(L, 1);
    } else if (!want_plan) {
        snprintf(err, errlen, "%s: the rule has no conventions table (a tally.naming rule has one)", path);
        lua_pop(L, 1);
        goto out;
    }
    lua_pop(L, 1);
    rc = 0;
out:
    sb_free(sb);
    return rc;
}

/* An NDJSON file starts with '{'; anything else is handed to SQLite, which names what it is not. */
static int looks_ndjson(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    int c;
    while ((c = fgetc(f)) == ' ' || c == '\t' || c == '\n' || c == '\r') {}
    fclose(f);
    return c == '{';
}

static int write_atomically(const char *path, const tbuf *page, char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int bad = fwrite(page->data, 1, page->len, f) != page->len;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int cli_report(int argc, char **argv)
{
    rep_data d;
    memset(&d, 0, sizeof d);
    const char *out = "report.html", *naming = NULL, *style = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[32];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage, stdout); return 0; }
        if (!strncmp(a, "-o", 2) && (a[2] == '\0' || a[2] == '=')) {
            snprintf(name, sizeof name, "o");
            val = a[2] ? a + 3 : NULL;
        } else if (!strncmp(a, "--", 2)) {
            const char *eq = strchr(a + 2, '=');
            size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name - 1 ? n : sizeof name - 1), a + 2);
            val = eq ? eq + 1 : NULL;
        } else {
            return usage_error("unexpected argument \"%s\" (flags are --name=value; see tally report --help)", a);
        }
        if (!val) {
            if (i + 1 >= argc) return usage_error("%s: expected a value", a);
            val = argv[++i];
        }
        if (!strcmp(name, "o") || !strcmp(name, "out") || !strcmp(name, "output")) out = val;
        else if (!strcmp(name, "events")) d.events_path = val;
        else if (!strcmp(name, "store")) d.store_path = val;
        else if (!strcmp(name, "plan")) d.plan_path = val;
        else if (!strcmp(name, "naming")) naming = val;
        else if (!strcmp(name, "style")) style = val;
        else if (!strcmp(name, "since")) d.since = val;
        else return usage_error("unknown flag --%s (events, store, plan, naming, style, since, -o)", name);
    }
    if (!d.events_path && !d.store_path) return usage_error("give --events=FILE, --store=FILE or both%s", "");
    if (style && strcmp(style, "lower") && strcmp(style, "title") && strcmp(style, "snake"))
        return usage_error("--style: expected lower, title or snake, got \"%s\"", style);
    char since[40];
    if (d.since) {
        if (!valid_since(d.since))
            return usage_error("--since: expected a UTC date or time such as 2026-12-01 or 2026-12-01T10:00:00Z, got \"%s\"",
                               d.since);
        /* "...T10:00:00" sorts before the stored "...T10:00:00.000Z"; "...T10:00:00Z" would not */
        snprintf(since, sizeof since, "%.*s", (int)strcspn(d.since, "Z"), d.since);
        d.since = since;
    }
    char err[1200];
    int rc = 0;
    if (d.plan_path && load_rule_info(&d, d.plan_path, 1, err, sizeof err)) rc = 1;
    if (!rc && naming && load_rule_info(&d, naming, 0, err, sizeof err)) rc = 1;
    if (!rc && style) d.style = style;
    if (!rc && d.events_path && rep_read_events(&d, looks_ndjson(d.events_path), err, sizeof err)) rc = 1;
    if (!rc && d.store_path && rep_read_store(&d, err, sizeof err)) rc = 1;
    tbuf page = TBUF_INIT;
    if (!rc) {
        rep_html(&d, &page);
        if (page.oom) snprintf(err, sizeof err, "out of memory"), rc = 1;
        else if (write_atomically(out, &page, err, sizeof err)) rc = 1;
    }
    if (rc) fprintf(stderr, "tally: report: %s\n", err);
    else if (!d.nproblems) printf("report: %s (%zu KB)\n", out, (page.len + 1023) / 1024);
    else printf("report: %s (%zu KB); %zu thing%s could not be read, listed at the top of the page\n", out,
                (page.len + 1023) / 1024, d.nproblems, d.nproblems == 1 ? "" : "s");
    tbuf_free(&page);
    rep_free(&d);
    return rc;
}
