/* A tiny game that embeds Lua 5.4 for its mods and reports analytics with tally.
 *
 * The game (C) owns one tally runtime: events go to a local SQLite `events` table, the store file
 * keeps the queue and the device identity, and, when TALLY_WRITE_KEY and TALLY_ENDPOINT are set, the
 * runtime also delivers to that endpoint. Each mod runs in its own lua_State and only sees a
 * `tally` table from tally_lua_push_mod: its messages are tagged with context.mod and capped at a
 * few events per second, and it cannot change who the player is.
 *
 * One play session: the menu (anonymous), two levels, login, two more levels, a purchase, logout,
 * the menu again and one more level (anonymous again, with a new anonymousId and session), quit.
 * Mods receive hooks (on_menu, on_level_start, on_coin, on_level_complete, on_purchase, on_quit),
 * each with a table of fields.
 *
 *   game [--events DB] [--store FILE] [--rules DIR] [--mods DIR] [--loading-ms N]
 *
 * Defaults: build/demo/events.db, build/demo/store.db, examples/rules (skipped when missing or
 * without *.lua), examples/game/mods, 400 ms of loading screen between levels (real time, so the
 * mods' token buckets refill as they would in a real game). Build: make demo-bins. */
#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "tally.h"

typedef struct mod {
    const char *name, *version, *file;
    double      max_events_per_second;
    lua_State  *L;
} mod;

static mod mods[] = {
    {"speedrun", "1.2.0", "speedrun.lua", 20, NULL},
    {"achievements", "0.9.1", "achievements.lua", 5, NULL},
};
#define NMODS (sizeof mods / sizeof *mods)

/* ---------------------------------------------------------------- setup */

static void make_parent_dirs(const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) && errno != EEXIST) fprintf(stderr, "game: mkdir %s: %s\n", buf, strerror(errno));
        *p = '/';
    }
}

/* The runtime refuses a rules folder that does not exist; a game should still run without it. */
static int has_rules(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        found = n > 4 && e->d_name[0] != '.' && !strcmp(e->d_name + n - 4, ".lua");
    }
    closedir(d);
    return found;
}

/* The path goes into JSON text: quotes, backslashes and control bytes must be escaped. */
static void json_destinations(char *out, size_t cap, const char *path)
{
    size_t n = (size_t)snprintf(out, cap, "[{\"type\":\"sqlite\",\"path\":\"");
    for (const unsigned char *p = (const unsigned char *)path; *p && n + 8 < cap; p++) {
        if (*p == '"' || *p == '\\') n += (size_t)snprintf(out + n, cap - n, "\\%c", *p);
        else if (*p < 0x20) n += (size_t)snprintf(out + n, cap - n, "\\u%04x", *p);
        else out[n++] = (char)*p;
    }
    snprintf(out + n, cap - n, "\"}]");
}

/* What the rules did, as it happens: the naming rule logs each fix at debug level and the runtime
 * logs each violation there too; everything else keeps the usual "warn" threshold. Called on the
 * runtime's threads: one fprintf per line, nothing else shared. */
static void show_rules_at_work(void *ud, int level, const char *msg)
{
    (void)ud;
    int fix = strstr(msg, ": naming fixed: ") != NULL, violation = strstr(msg, ": violation ") != NULL;
    if (fix || violation) fprintf(stdout, "  [rules] %s\n", msg);
    else if (level <= TALLY_LOG_WARN) fprintf(stderr, "game: tally: %s\n", msg);
}

static tally_t *open_tally(const char *events, const char *store, const char *rules)
{
    char dests[2200];
    json_destinations(dests, sizeof dests, events);
    for (int attempt = 0; attempt < 2; attempt++) {
        tally_config *cfg = tally_config_new();
        if (!cfg) return NULL;
        int rc = tally_config_set(cfg, "destinations", dests);
        if (!rc) rc = tally_config_set(cfg, "store", store);
        if (!rc) rc = tally_config_set(cfg, "log_level", rules ? "debug" : "warn");
        if (!rc) rc = tally_config_set_logger(cfg, show_rules_at_work, NULL);
        if (!rc && rules) rc = tally_config_set(cfg, "rules", rules);
        tally_t *t = NULL;
        if (!rc) rc = tally_open(cfg, &t);
        tally_config_free(cfg);
        if (rc == TALLY_OK) return t;
        fprintf(stderr, "game: tally: %s\n", tally_errmsg(NULL));
        if (!rules || (rc != TALLY_ELUA && rc != TALLY_EIO && rc != TALLY_ECONFIG)) return NULL;
        fprintf(stderr, "game: playing on without rules\n");
        rules = NULL;
    }
    return NULL;
}

/* Mods get pure libraries only: no io, os, package or debug. */
static int load_mod(mod *m, const char *dir, tally_t *t)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base}, {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_STRLIBNAME, luaopen_string}, {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8}, {NULL, NULL}};
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, m->file);
    if (!(m->L = luaL_newstate())) return -1;
    for (const luaL_Reg *l = libs; l->name; l++) {
        luaL_requiref(m->L, l->name, l->func, 1);
        lua_pop(m->L, 1);
    }
    if (tally_lua_push_mod(m->L, t, m->name, m->version, m->max_events_per_second) != TALLY_OK) {
        fprintf(stderr, "game: cannot bind mod %s\n", m->name);
        return -1;
    }
    lua_setglobal(m->L, "tally");
    if (luaL_loadfilex(m->L, path, "t") != LUA_OK || lua_pcall(m->L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "game: mod %s: %s\n", m->name, lua_tostring(m->L, -1));
        return -1;
    }
    if (!lua_istable(m->L, -1)) {
        fprintf(stderr, "game: mod %s: must return a table of hooks\n", m->name);
        return -1;
    }
    lua_setglobal(m->L, "hooks"); /* the host's reference to the hook table */
    return 0;
}

/* ---------------------------------------------------------------- hooks */

/* An event for the mods, built field by field, then delivered to every mod with that hook. */
typedef struct field {
    const char *key;
    const char *s; /* string value, or NULL for a number */
    double      n;
} field;

static void call_hook(const char *hook, const field *f, size_t nf)
{
    for (size_t i = 0; i < NMODS; i++) {
        lua_State *L = mods[i].L;
        if (!L) continue;
        lua_getglobal(L, "hooks");
        if (lua_getfield(L, -1, hook) != LUA_TFUNCTION) {
            lua_pop(L, 2);
            continue;
        }
        lua_createtable(L, 0, (int)nf);
        for (size_t k = 0; k < nf; k++) {
            if (f[k].s) lua_pushstring(L, f[k].s);
            else if (f[k].n == (double)(long long)f[k].n) lua_pushinteger(L, (lua_Integer)f[k].n);
            else lua_pushnumber(L, f[k].n);
            lua_setfield(L, -2, f[k].key);
        }
        /* a broken mod is reported and skipped, never fatal to the game */
        if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
            fprintf(stderr, "game: mod %s: %s: %s\n", mods[i].name, hook, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

/* ---------------------------------------------------------------- play */

static uint64_t rng = 20240601;
static int roll(int lo, int hi) /* deterministic, so two demo runs tell the same story */
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (int)((rng >> 33) % (uint64_t)(hi - lo + 1));
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

static void check(tally_t *t, int rc, const char *what)
{
    if (rc != TALLY_OK) fprintf(stderr, "game: %s: %s\n", what, tally_errmsg(t));
}

static void play_level(tally_t *t, int level, int loading_ms)
{
    char screen[32];
    snprintf(screen, sizeof screen, "Level %d", level);
    check(t, tally_screen(t, screen, NULL), "screen");
    field start[] = {{"level", NULL, level}};
    call_hook("on_level_start", start, 1);
    int coins = roll(6, 12), duration_ms = 20000 + level * 4000 + roll(-3000, 3000);
    for (int c = 1; c <= coins; c++) {
        field coin[] = {{"level", NULL, level}, {"coin", NULL, c}};
        call_hook("on_coin", coin, 2);
    }
    int score = coins * 100 + (60000 - duration_ms) / 100;
    field done[] = {{"level", NULL, level}, {"duration_ms", NULL, duration_ms}, {"score", NULL, score},
                    {"coins", NULL, coins}};
    call_hook("on_level_complete", done, 4);
    printf("  level %d: %5.1f s, %2d coins, score %d\n", level, duration_ms / 1000.0, coins, score);
    sleep_ms(loading_ms); /* the loading screen: real time passes, buckets refill */
}

static void menu(tally_t *t, int loading_ms)
{
    check(t, tally_screen(t, "Main Menu", "{\"build\":\"demo\"}"), "screen");
    call_hook("on_menu", NULL, 0);
    sleep_ms(loading_ms); /* the player browses the menu */
}

static void print_mod_stats(const mod *m)
{
    lua_State *L = m->L;
    if (!L) return;
    lua_getglobal(L, "tally");
    lua_getfield(L, -1, "stats");
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
        lua_pop(L, 2);
        return;
    }
    lua_getfield(L, -1, "accepted");
    lua_getfield(L, -2, "rate_limited");
    lua_getfield(L, -3, "rejected");
    printf("  mod %-13s %3lld accepted, %3lld rate limited (%g events/s), %lld rejected\n", m->name,
           (long long)lua_tointeger(L, -3), (long long)lua_tointeger(L, -2), m->max_events_per_second,
           (long long)lua_tointeger(L, -1));
    lua_pop(L, 5);
}

int main(int argc, char **argv)
{
    const char *events = "build/demo/events.db", *store = "build/demo/store.db", *rules = "examples/rules",
               *mod_dir = "examples/game/mods";
    int loading_ms = 400;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--events") && v) events = v, i++;
        else if (!strcmp(a, "--store") && v) store = v, i++;
        else if (!strcmp(a, "--rules") && v) rules = v, i++;
        else if (!strcmp(a, "--mods") && v) mod_dir = v, i++;
        else if (!strcmp(a, "--loading-ms") && v) loading_ms = atoi(v), i++;
        else if (a[0] != '-') events = a;
        else {
            fprintf(stderr, "usage: game [--events DB] [--store FILE] [--rules DIR] [--mods DIR] [--loading-ms N]\n");
            return 2;
        }
    }
    make_parent_dirs(events);
    make_parent_dirs(store);
    if (!has_rules(rules)) {
        printf("rules: %s has no *.lua, playing without rules\n", rules);
        rules = NULL;
    }
    tally_t *t = open_tally(events, store, rules);
    if (!t) return 1;
    printf("tally %s: events -> %s (sqlite), store %s%s%s\n", tally_version(), events, store,
           rules ? ", rules " : "", rules ? rules : "");
    const char *key = getenv("TALLY_WRITE_KEY"), *endpoint = getenv("TALLY_ENDPOINT");
    if (key && *key && endpoint && *endpoint) printf("also delivering to %s\n", endpoint);
    for (size_t i = 0; i < NMODS; i++) {
        if (load_mod(&mods[i], mod_dir, t)) {
            lua_close(mods[i].L);
            mods[i].L = NULL;
        }
    }

    printf("main menu (anonymous)\n");
    menu(t, loading_ms);
    play_level(t, 1, loading_ms);
    play_level(t, 2, loading_ms);

    printf("login as player-1001\n");
    check(t, tally_identify(t, "player-1001", "{\"name\":\"Ada\",\"platform\":\"linux\",\"difficulty\":\"normal\"}"),
          "identify");
    play_level(t, 3, loading_ms);
    play_level(t, 4, loading_ms);
    printf("  bought golden_sword for 4.99 EUR\n");
    check(t, tally_track(t, "item purchased",
                         "{\"item\":\"golden_sword\",\"price\":4.99,\"currency\":\"EUR\",\"quantity\":1}"),
          "track");
    field purchase[] = {{"item", "golden_sword", 0}, {"price", NULL, 4.99}, {"currency", "EUR", 0}};
    call_hook("on_purchase", purchase, 3);

    printf("logout\n");
    check(t, tally_reset(t), "reset");
    printf("main menu (anonymous again: new anonymousId and session)\n");
    menu(t, loading_ms);
    play_level(t, 1, loading_ms);
    call_hook("on_quit", NULL, 0);

    for (size_t i = 0; i < NMODS; i++) print_mod_stats(&mods[i]);
    /* the mods' tables borrow the handle: their states go before it */
    for (size_t i = 0; i < NMODS; i++) {
        if (mods[i].L) lua_close(mods[i].L);
        mods[i].L = NULL;
    }
    char *stats = NULL;
    if (tally_flush(t, 5000) != TALLY_OK) fprintf(stderr, "game: flush: %s\n", tally_errmsg(t));
    if (tally_stats(t, &stats) == TALLY_OK) printf("runtime stats: %s\n", stats);
    tally_free(stats);
    int rc = tally_close(t, 5000);
    if (rc != TALLY_OK) printf("close: %s (the rest stays queued in %s)\n", tally_errmsg(NULL), store);
    return 0;
}
