/* How long one hostile rule call can hold the processor thread, under the default limits
 * (lua_instructions = 1000000, lua_memory = 64 MiB) unless the environment says otherwise
 * (LUA_INSTRUCTIONS, LUA_MEMORY). For each attack: a fresh handle with the attack as a "before"
 * rule, then the time from tally_track of one message to tally_flush returning (the rule has run
 * and failed, the message was dropped), minus the same for a rule that returns at once. The
 * worst of RUNS runs (default 3) is printed per attack, in milliseconds.
 *
 *   make bench-hostile            (builds build/release/bench/hostile and runs it)
 *   build/release/bench/hostile [REGEX]   (only attacks whose name contains REGEX) */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"

static const struct { const char *name, *src; } attacks[] = {
    {"baseline (fails at once)", "error('at once')"},
    {"16 MiB string.rep only", "local s = string.rep(string.rep('a', 4096), 4096) error('made')"},
    {"while true do end", "while true do end"},
    {"pcall loop swallowing the limit", "while true do pcall(function() while true do end end) end"},
    {"xpcall handler loop", "xpcall(function() while true do end end, function() while true do end end)"},
    {"pattern backtracking a*^30 b", "string.find(string.rep('a', 30000), string.rep('a*', 30) .. 'b')"},
    {"pattern backtracking in gsub", "string.gsub(string.rep('a', 30000), string.rep('a?', 30) .. string.rep('a', 30) .. 'b', '')"},
    {"plain find worst case", "local s = string.rep('a', 1 << 20) local p = string.rep('a', 1 << 19) .. 'b'\n"
                              "while true do string.find(s, p, 1, true) end"},
    {"utf8.len over 16 MiB", "local s = string.rep(string.rep('a', 4096), 4096) while true do utf8.len(s) end"},
    {"utf8.len over 1 MiB, looped", "local s = string.rep(string.rep('a', 1024), 1024) while true do utf8.len(s) end"},
    {"table.move over 2^53 empty", "table.move({}, 1, 1 << 53, 1, {})"},
    {"string.rep('', 2^50)", "string.rep('', 1 << 50)"},
    {"string.rep 60 MiB", "local s = string.rep('x', 60 << 20)"},
    {"1 MiB string == in a loop", "local a, b = string.rep(string.rep('x', 1024), 1024), string.rep(string.rep('x', 1024), 1024)\n"
                                  "while true do local _ = a == b end"},
    {"1 MiB string < in a loop", "local a, b = string.rep(string.rep('x', 1024), 1024), string.rep(string.rep('x', 1024), 1023) .. 'y'\n"
                                 "while true do local _ = a < b end"},
    {"1 MiB string concat loop", "local s = string.rep(string.rep('x', 1024), 1024) while true do local t = s .. 'y' end"},
    {"vararg copies", "local t = {} for i = 1, 200000 do t[i] = i end\n"
                      "local function f(...) while true do local k = select('#', ...) end end f(table.unpack(t))"},
    {"tonumber of 1 MiB digits", "local s = string.rep(string.rep('1', 1024), 1024) while true do tonumber(s) end"},
    {"table.sort 100k", "local t = {} for i = 1, 100000 do t[i] = (i * 7919) % 100003 end while true do table.sort(t) end"},
    {"load 1 MiB chunk", "local src = string.rep('local a = 1 ', 1 << 17) while true do load(src) end"},
    {"json.decode 4 MiB", "local text = '[' .. string.rep('1,', 1 << 21) .. '1]' while true do tally.json.decode(text) end"},
    {"memory fill then GC per pcall", "local keep = {} pcall(function() while true do keep[#keep + 1] = string.rep('x', 4000) .. #keep end end)\n"
                                      "while true do pcall(string.rep, 'x', 1 << 20) end"},
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void quiet(void *ud, int level, const char *msg) { (void)ud; (void)level; (void)msg; }

static double one_run(const char *dir, const char *src)
{
    char path[512];
    snprintf(path, sizeof path, "%s/10_hostile.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "return { name = 'hostile', process = function(m, ctx)\n%s\nreturn m end }\n", src);
    fclose(f);
    tally_config *c = tally_config_new();
    tally_config_set(c, "rules", dir);
    tally_config_set(c, "out", "/dev/null");
    tally_config_set(c, "store", ":memory:");
    tally_config_set_logger(c, quiet, NULL);
    const char *ins = getenv("LUA_INSTRUCTIONS"), *mem = getenv("LUA_MEMORY");
    if (ins) tally_config_set(c, "lua_instructions", ins);
    if (mem) tally_config_set(c, "lua_memory", mem);
    tally_t *t = NULL;
    if (tally_open(c, &t) != TALLY_OK) {
        fprintf(stderr, "open: %s\n", tally_errmsg(NULL));
        tally_config_free(c);
        return -1;
    }
    tally_config_free(c);
    tally_track(t, "warm", NULL); /* the first message pays for one-time setup */
    tally_flush(t, 600000);
    double t0 = now_ms();
    tally_track(t, "attack", NULL);
    tally_flush(t, 600000);
    double ms = now_ms() - t0;
    tally_close(t, 10000);
    return ms;
}

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    int runs = getenv("RUNS") ? atoi(getenv("RUNS")) : 3;
    char dir[] = "/tmp/tally-hostile-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    double base = 0;
    printf("%-34s %12s\n", "attack (one rule call)", "worst ms");
    for (size_t i = 0; i < sizeof attacks / sizeof *attacks; i++) {
        if (i && only && !strstr(attacks[i].name, only)) continue;
        double worst = 0;
        for (int r = 0; r < runs; r++) {
            double ms = one_run(dir, attacks[i].src);
            if (ms > worst) worst = ms;
        }
        if (i == 0) base = worst;
        printf("%-34s %12.1f%s\n", attacks[i].name, i ? worst - base : worst, i ? "" : "  (subtracted below)");
        fflush(stdout);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/10_hostile.lua", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}
