/* Fuzzes every entry to a runtime: tally_config_set with any key and value, tally_config_load on
 * any Lua text, then tally_open, a few calls and tally_close. Whatever the configuration, open
 * either fails with a documented code and a message, or gives a handle whose calls return
 * documented codes and whose close returns; nothing crashes, leaks or hangs (libFuzzer -timeout).
 *
 * Input: lines "key=value" (any key, any value but a newline) applied in order; a line "%lua"
 * makes the rest of the input a config file that is loaded at that point; a line "%load=N" loads
 * one of the fixture files below (FIFO, symlink, folder ...).
 *
 * Side effects stay in a private folder: the harness runs in a fresh temporary directory, and the
 * values that name files or hosts (store, rules, ca_bundle, proxy, endpoint, rules_url, and path / url /
 * endpoint / proxy / ca_bundle inside destinations) are mapped onto fixtures there or onto a
 * closed port on loopback before tally_open: the fuzzer runs as whoever runs the tests, root
 * included, and must not write outside its folder or reach the network. The mapping happens
 * after tally_config_set, so the setters still see every hostile value. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "json.h"
#include "tally.h"

static const char *const files[] = {
    ":memory:", "s.db", "sub/s.db", "missing/s.db", "dir", "fifo", "link-out", "rules", "rules/10_a.lua",
    "rules-bad", "rules-links", "rules-fifo", "out.ndjson", "sub/out.ndjson", "conf/tally.lua", "",
    "[\"rules\",\"rules-bad\"]", "[\"rules/10_a.lua\"]",
};
static const char *const hosts[] = {
    "http://127.0.0.1:9", "https://127.0.0.1:9", "http://127.0.0.1:9/v1/batch", "http://[::1]:9", "http://",
    "http://127.0.0.1:99999", "ftp://127.0.0.1:9", "socks5://127.0.0.1:9", "",
};
#define N(a) (sizeof a / sizeof *a)

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) { fputs(text, f); fclose(f); }
}

/* Rebuilt before every run: a destination may have appended to any of them. */
static void fixtures(void)
{
    static const char *const scratch[] = {"s.db", "s.db-wal", "s.db-shm", "s.db-journal", "sub/s.db", "sub/s.db-wal",
                                          "sub/s.db-shm", "sub/s.db-journal", "out.ndjson", "sub/out.ndjson"};
    for (size_t i = 0; i < N(scratch); i++) unlink(scratch[i]);
    mkdir("sub", 0755);
    mkdir("dir", 0755);
    mkdir("rules", 0755);
    mkdir("rules-bad", 0755);
    mkdir("rules-links", 0755);
    mkdir("rules-fifo", 0755);
    mkdir("conf", 0755);
    mkfifo("fifo", 0644);
    mkfifo("rules-fifo/10_f.lua", 0644);
    mkfifo("conf/fifo.lua", 0644);
    put("outside.lua", "return { name = 'outside', process = function(m) return m end }\n");
    symlink("outside.lua", "link-out");
    symlink("../outside.lua", "rules-links/10_l.lua");
    symlink("../outside.lua", "conf/link.lua");
    put("rules/10_a.lua", "local d = tally.load_json('data.json')\n"
                          "return { name = 'a', process = function(m, ctx) m.properties = m.properties or {}; "
                          "m.properties.v = d.v; if ctx.config and ctx.config.drop then return nil end; return m end }\n");
    put("rules/20_map.lua", "return { name = 'map', stage = 'destination', map = function(m) return m end }\n");
    put("rules/data.json", "{\"v\": 1}\n");
    put("rules-bad/10_b.lua", "return { name = 'b', process = function(m) error('no') end, on_error = 'drop' }\n");
    put("rules-bad/20_c.lua", "return 42\n");
    put("conf/part.lua", "return { flush_at = 3 }\n");
    put("conf/data.json", "{\"flush_at\": 4}\n");
}

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

static const char *confine(const char *v, const char *const *table, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v, table[i])) return v;
    return table[hash(v) % n];
}

static void confine_field(char **slot, const char *const *table, size_t n)
{
    if (!*slot) return;
    const char *v = confine(*slot, table, n);
    if (v != *slot) {
        free(*slot);
        *slot = strdup(v);
    }
}

static void confine_dest(char **dest)
{
    static const struct { const char *key; int host; } fields[] = {
        {"path", 0}, {"endpoint", 1}, {"url", 1}, {"proxy", 1}, {"ca_bundle", 0}};
    tj_arena *a = tj_arena_new();
    tj_value *d;
    tj_error err;
    if (!a || tj_parse(a, *dest, strlen(*dest), &d, &err) || d->type != TJ_OBJECT) {
        tj_arena_free(a);
        return;
    }
    for (size_t i = 0; i < d->u.obj.n; i++) {
        tj_member *m = &d->u.obj.m[i];
        for (size_t k = 0; k < N(fields); k++) {
            if (strlen(fields[k].key) != m->klen || memcmp(m->key, fields[k].key, m->klen)) continue;
            if (m->val->type != TJ_STRING) continue;
            char *s = tj_strdup(a, m->val->u.str.s, m->val->u.str.len);
            const char *v = fields[k].host ? confine(s, hosts, N(hosts)) : confine(s, files, N(files));
            m->val = tj_new_string(a, v, strlen(v));
        }
    }
    tbuf b = TBUF_INIT;
    if (!tj_write(&b, d) && !b.oom) {
        free(*dest);
        *dest = tbuf_steal(&b);
    }
    tbuf_free(&b);
    tj_arena_free(a);
}

static void confine_config(struct tally_config *c)
{
    confine_field(&c->store, files, N(files));
    confine_field(&c->rules, files, N(files));
    confine_field(&c->ca_bundle, files, N(files));
    confine_field(&c->proxy, hosts, N(hosts));
    confine_field(&c->endpoint, hosts, N(hosts));
    confine_field(&c->rules_url, hosts, N(hosts));
    for (size_t i = 0; i < c->ndests; i++) confine_dest(&c->dests[i]);
}

static void quiet(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    if (!msg) abort();
}

static int documented(int rc) { return rc <= TALLY_OK && rc >= TALLY_ELUA; }

static void exercise(tally_t *t)
{
    int rc;
    char *s = NULL;
    if (!documented(tally_track(t, "Fuzzed", "{\"n\":1}"))) abort();
    if (!documented(tally_identify(t, "u1", "{\"plan\":\"x\"}"))) abort();
    if (!documented(tally_send(t, "{\"type\":\"track\",\"event\":\"E\",\"userId\":\"u2\"}"))) abort();
    if (!documented(tally_reset(t))) abort();
    if ((rc = tally_stats(t, &s)) != TALLY_OK || !s) abort();
    tally_free(s);
    s = NULL;
    if ((rc = tally_identity(t, &s)) != TALLY_OK || !s) abort();
    tally_free(s);
    if (!documented(tally_reload(t, 0))) abort();
    if (!documented(tally_flush(t, 0))) abort();
}

static char *home;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char tmpl[] = "/tmp/tally-fuzz-config-XXXXXX";
    if (!(home = mkdtemp(tmpl)) || !(home = strdup(home)) || chdir(home)) abort();
    unsetenv("TALLY_WRITE_KEY");
    unsetenv("TALLY_ENDPOINT");
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    fixtures();
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    tally_config *c = tally_config_new();
    if (!c) abort();
    tally_config_set_logger(c, quiet, NULL);
    char *p = buf, *end = buf + size;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!strncmp(p, "%lua\n", 5) || (!strncmp(p, "%lua", 4) && p + 4 == end)) {
            FILE *f = fopen("conf/tally.lua", "wb");
            if (!f) abort();
            if (nl) fwrite(nl + 1, 1, (size_t)(end - nl - 1), f);
            fclose(f);
            int rc = tally_config_load(c, "conf/tally.lua");
            if (!documented(rc) || (rc && !tally_errmsg(NULL)[0])) abort();
            break;
        }
        if (nl) *nl = '\0';
        if (!strncmp(p, "%load=", 6)) {
            static const char *const loads[] = {"conf/fifo.lua", "conf/link.lua", "conf", "conf/missing.lua",
                                                "conf/part.lua", "fifo", ""};
            int rc = tally_config_load(c, loads[hash(p + 6) % N(loads)]);
            if (!documented(rc) || (rc && !tally_errmsg(NULL)[0])) abort();
        } else {
            char *eq = strchr(p, '=');
            if (eq) *eq = '\0';
            int rc = tally_config_set(c, p, eq ? eq + 1 : "");
            if (!documented(rc) || (rc && !tally_errmsg(NULL)[0])) abort();
        }
        if (!nl) break;
        p = nl + 1;
    }
    confine_config(c);
    tally_t *t = (tally_t *)1;
    int rc = tally_open(c, &t);
    if (rc == TALLY_OK) {
        if (!t) abort();
        exercise(t);
        rc = tally_close(t, 0);
        if (rc != TALLY_OK && rc != TALLY_ETIMEDOUT) abort();
    } else if (!documented(rc) || t != NULL || !tally_errmsg(NULL)[0]) {
        abort();
    }
    tally_config_free(c);
    free(buf);
    return 0;
}
