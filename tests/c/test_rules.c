/* Lua rules through the public API: the plugin contract, reload, mappings, and the sandbox escape
 * list. Every hostile script must be contained: the host stays up and the next message still goes
 * through the rules that work. Named after the trick each one stops. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "tally.h"
#include "util.h"

#define rules_dir(...) tf_rules_dir("rules", __VA_ARGS__)

/* A handle on the rules folder writing to out, logging (warn and up) to the fixtures' capture. */
static tally_t *open_rules(const char *dir, const char *out, const char *extra_key, const char *extra_val)
{
    unlink(out);
    return tf_open("out", out, "rules", dir, "log_level", "warn", "lua_instructions", "200000",
                   "lua_memory", "16777216", extra_key, extra_val, NULL);
}

/* A hostile "before" script runs first; a marker script after it proves the pipeline goes on. */
static const char marker[] =
    "return { name = 'marker', stage = 'enrichment', process = function(m, ctx)\n"
    "  m.properties = m.properties or {}; m.properties.marked = true; return m end }\n";

/* Runs one hostile script against two messages; returns the output lines, and requires the host
 * to be alive and to have written the second (good-path) message through the marker. */
static void contained(const char *hostile_src, int on_error_pass, const char *why)
{
    char src[4096];
    snprintf(src, sizeof src,
             "return { name = 'hostile', on_error = '%s', process = function(m, ctx)\n"
             "  if m.event == 'attack' then\n%s\n  end\n  return m end }\n",
             on_error_pass ? "pass" : "drop", hostile_src);
    char *dir = rules_dir("10_hostile.lua", src, "20_marker.lua", marker, NULL);
    char *out = tu_path("contained.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "attack", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "after", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    char *all = tu_read_file(out, NULL);
    CHECK_CONTAINS(all, "\"event\":\"after\"");
    CHECK_CONTAINS(all, "\"marked\":true");
    CHECK(all && !strstr(all, "\"event\":\"attack\"")); /* failed closed: the attack message is dropped */
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"name\":\"hostile\",\"stage\":\"before\",\"calls\":2,\"errors\":1");
    tally_free(stats);
    CHECK_CONTAINS(tf_logged(), "rule hostile failed: ");
    if (!strstr(why, "memory")) CHECK_CONTAINS(tf_logged(), "10_hostile.lua:"); /* Lua's memory error has no position */
    CHECK_CONTAINS(tf_logged(), why); /* stopped for the right reason, with the script's name and line */
    free(all);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(out);
    free(dir);
}

TEST(escape_io_is_absent) { contained("io.open('/etc/passwd'):read('a')", 0, "global 'io'"); }
TEST(escape_os_execute_is_absent) { contained("os.execute('touch /tmp/tally-pwned')", 0, "field 'execute'"); }
TEST(escape_debug_is_absent) { contained("debug.sethook()", 0, "global 'debug'"); }
TEST(escape_package_loadlib_is_absent) { contained("package.loadlib('/lib/x86_64-linux-gnu/libc.so.6', 'system')", 0, "global 'package'"); }
TEST(escape_dofile_loadfile_absent) { contained("local f = dofile or loadfile; f('/etc/passwd')", 0, "a nil value"); }
TEST(escape_string_dump_absent) { contained("load(string.dump(function() end))", 0, "field 'dump'"); }
TEST(escape_binary_chunk_refused)
{
    contained("local f, e = load('\\27Lua\\84\\0\\25\\147\\13\\10\\26\\10') assert(f, e)", 0, "attempt to load a binary chunk");
}
TEST(escape_string_metatable_hidden) { contained("local mt = getmetatable('') mt.__index.upper = nil", 0, "a boolean value"); }
TEST(escape_native_require_refused) { contained("require('os')", 0, "module 'os' not found"); }
TEST(escape_require_path_traversal_refused) { contained("require('..etc.passwd')", 0, "not found"); }
TEST(escape_infinite_loop_stopped) { contained("while true do end", 0, "instruction limit exceeded (200000 per call)"); }
TEST(escape_infinite_loop_inside_pcall_stopped)
{
    contained("while true do pcall(function() while true do end end) end", 0, "instruction limit exceeded");
}
TEST(escape_infinite_loop_in_coroutine_stopped)
{
    contained("coroutine.wrap(function() while true do end end)()", 0, "instruction limit exceeded");
}
TEST(escape_error_swallowing_loop_stopped)
{
    contained("for i = 1, 1e12 do pcall(error, 'x') end", 0, "instruction limit exceeded");
}
TEST(escape_string_rep_bomb_contained) { contained("local s = string.rep('x', 2^30)", 0, "memory limit exceeded"); }
TEST(escape_string_rep_overflow_contained) { contained("local s = string.rep('x', 2^40)", 0, "resulting string too large"); }
TEST(escape_table_bomb_contained)
{
    /* the memory or the instruction fence, whichever holds first: filling 16 MiB by copying is
     * charged more than 200000 instructions (test_sandbox_hostile tests each fence alone) */
    contained("local t = {} for i = 1, 1e9 do t[i] = { string.rep('x', 4096) .. i } end", 0, "limit exceeded");
}
TEST(escape_gc_finalizer_refused)
{
    contained("setmetatable({}, { __gc = function() while true do end end })", 0, "__gc metamethods are not allowed");
}

TEST(escape_globals_do_not_leak_between_scripts)
{
    char *dir = rules_dir("10_a.lua",
                          "leaked = 'yes'\nstring.upper = nil\ntable.insert = nil\n"
                          "return { name = 'a', process = function(m) shared_state = 1; return m end }\n",
                          "20_b.lua",
                          "return { name = 'b', process = function(m)\n"
                          "  m.properties = { leaked = tostring(leaked), shared = tostring(shared_state),\n"
                          "    upper = string.upper('ok'), insert = type(table.insert) }\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("leak.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"properties\":{\"insert\":\"function\",\"leaked\":\"nil\",\"shared\":\"nil\",\"upper\":\"OK\"}");
    free(line);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* ---- the contract ---- */

TEST(rule_modifies_drops_and_splits)
{
    char *dir = rules_dir("10_rules.lua",
                          "return { name = 'shape', types = { 'track' }, process = function(m, ctx)\n"
                          "  if m.event == 'drop me' then return nil end\n"
                          "  if m.event == 'split me' then\n"
                          "    local a, b = {}, {}\n"
                          "    for k, v in pairs(m) do a[k] = v; b[k] = v end\n"
                          "    a.event = 'part one'; a.messageId = m.messageId .. '-1'\n"
                          "    b.event = 'part two'; b.messageId = m.messageId .. '-2'\n"
                          "    return { a, b } end\n"
                          "  m.properties.seen_by = ctx.rule\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("shape.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "keep me", "{\"n\":9007199254740993,\"f\":0.1,\"a\":[],\"z\":null}");
    tally_track(t, "drop me", NULL);
    tally_track(t, "split me", NULL);
    tally_page(t, NULL, "Home", NULL); /* not a track: the rule is skipped */
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 4);
    char *all = tu_read_file(out, NULL);
    /* exact values survive the trip through Lua */
    CHECK_CONTAINS(all, "\"properties\":{\"a\":[],\"f\":0.1,\"n\":9007199254740993,\"seen_by\":\"shape\",\"z\":null}");
    CHECK(all && !strstr(all, "drop me"));
    CHECK_CONTAINS(all, "\"event\":\"part one\"");
    CHECK_CONTAINS(all, "\"event\":\"part two\"");
    CHECK_CONTAINS(all, "\"type\":\"page\"");
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"rule_dropped\":1");
    tally_free(stats);
    free(all);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* What no rule wrote goes out as the caller wrote it (key order, 1.50, -0, escapes), as with no
 * rules at all; what a rule wrote to is encoded anew. A failed "pass" rule's half-done writes
 * are undone, deep ones in parts its snapshot shared with the message included, and what no
 * rule wrote before it still goes out as it came. */
TEST(rule_leaves_untouched_properties_as_the_caller_wrote_them)
{
    char *dir = rules_dir("10_read.lua",
                          "return { name = 'read', process = function(m, ctx)\n"
                          "  local seen = m.properties.b + #m.properties.a\n"
                          "  m.event = m.event .. ' seen'\n"
                          "  if m.properties.w then m.properties.c.d = 1 end\n"
                          "  return m end }\n",
                          "20_fail.lua",
                          "return { name = 'fail', stage = 'enrichment', process = function(m, ctx)\n"
                          "  if m.properties.f then m.properties.b = 2; m.properties.c.d = 3\n"
                          "    m.context.library.name = 'x'; table.insert(m.properties.a, 1); error('half done') end\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("untouched.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "read", "{\"b\":1.50,\"a\":[],\"c\":{\"d\":-0,\"e\":\"\\u00e9\"}}"), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "write", "{\"b\":1.50,\"a\":[],\"c\":{\"d\":-0,\"e\":\"\\u00e9\"},\"w\":true}"), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "fail", "{\"b\":1.50,\"a\":[],\"c\":{\"d\":-0},\"f\":true}"), TALLY_OK);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *all = tu_read_file(out, NULL);
    CHECK_CONTAINS(all, "\"event\":\"read seen\"");
    CHECK_CONTAINS(all, "\"properties\":{\"b\":1.50,\"a\":[],\"c\":{\"d\":-0,\"e\":\"\\u00e9\"}}");
    CHECK_CONTAINS(all, "\"properties\":{\"a\":[],\"b\":1.5,\"c\":{\"d\":1,\"e\":\"\xC3\xA9\"},\"w\":true}");
    CHECK_CONTAINS(all, "\"event\":\"fail seen\"");
    CHECK_CONTAINS(all, "\"properties\":{\"b\":1.50,\"a\":[],\"c\":{\"d\":-0},\"f\":true}");
    CHECK_CONTAINS(all, "\"library\":{\"name\":\"tally\"");
    CHECK(all && !strstr(all, "\"name\":\"x\""));
    CHECK_CONTAINS(tf_logged(), "half done");
    free(all);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(enrichment_fails_open_before_fails_closed)
{
    char *dir = rules_dir("10_enrich.lua",
                          "return { name = 'broken_enrich', stage = 'enrichment', process = function(m) error('boom') end }\n",
                          NULL);
    char *out = tu_path("failopen.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "still delivered", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(rule_returning_invalid_message_is_an_error)
{
    char *dir = rules_dir("10_bad.lua",
                          "return { name = 'bad', on_error = 'pass', process = function(m) m.event = nil; return m end }\n",
                          NULL);
    char *out = tu_path("invalid.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"event\":\"E\""); /* on_error = pass: the original went on */
    free(line);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"name\":\"bad\",\"stage\":\"before\",\"calls\":1,\"errors\":1");
    tally_free(stats);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* The chain runs on one Lua copy of the message: a failing "pass" script's half-done changes are
 * undone, earlier scripts' changes are kept, and split parts do not share tables. */
TEST(chain_undoes_a_failed_pass_script_and_keeps_split_parts_apart)
{
    char *dir = rules_dir("10_mark.lua",
                          "return { name = 'mark', process = function(m) m.properties.marked = true; return m end }\n",
                          "20_half.lua",
                          "return { name = 'half', stage = 'enrichment', process = function(m)\n"
                          "  m.properties.half = 'done'; error('stops halfway') end }\n",
                          "30_split.lua",
                          "return { name = 'split', types = { 'track' }, process = function(m)\n"
                          "  if m.event ~= 'two' then return m end\n"
                          "  local b = {}; for k, v in pairs(m) do b[k] = v end\n"
                          "  b.messageId = m.messageId .. '-b'\n"
                          "  return { m, b } end }\n",
                          "40_tag.lua",
                          "return { name = 'tag', stage = 'enrichment', process = function(m)\n"
                          "  if m.messageId:sub(-2) == '-b' then m.properties.part = 'b' end; return m end }\n",
                          NULL);
    char *out = tu_path("chain.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "one", "{\"n\":1}");
    tally_track(t, "two", "{\"n\":2}");
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 3);
    char *all = tu_read_file(out, NULL);
    CHECK(all && !strstr(all, "\"half\""));                                   /* undone */
    CHECK_CONTAINS(all, "\"properties\":{\"marked\":true,\"n\":1}"); /* kept */
    /* the 'tag' script changed part b only, though b was a shallow copy sharing properties */
    CHECK_CONTAINS(all, "\"properties\":{\"marked\":true,\"n\":2}");
    CHECK_CONTAINS(all, "\"properties\":{\"marked\":true,\"n\":2,\"part\":\"b\"}");
    free(all);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"name\":\"half\",\"stage\":\"enrichment\",\"calls\":3,\"errors\":3");
    tally_free(stats);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* An invalid result is found after the last script and blamed on the last script that returned
 * it, not on a later one that merely passed it along. */
TEST(invalid_result_is_blamed_on_the_script_that_returned_it)
{
    char *dir = rules_dir("10_breaks.lua",
                          "return { name = 'breaks', on_error = 'drop', process = function(m) m.properties = 'oops'; return m end }\n",
                          "20_innocent.lua",
                          "return { name = 'innocent', types = { 'page' }, process = function(m) return m end }\n",
                          NULL);
    char *out = tu_path("blame.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 0);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"name\":\"breaks\",\"stage\":\"before\",\"calls\":1,\"errors\":1,\"dropped\":1");
    CHECK_CONTAINS(stats, "\"name\":\"innocent\",\"stage\":\"before\",\"calls\":0,\"errors\":0");
    tally_free(stats);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(circuit_breaker_disables_a_failing_script)
{
    char *dir = rules_dir("10_flaky.lua",
                          "return { name = 'flaky', on_error = 'pass', process = function(m) error('always') end }\n", NULL);
    char *out = tu_path("breaker.ndjson");
    tally_t *t = open_rules(dir, out, "rule_breaker", "3");
    REQUIRE(t);
    for (int i = 0; i < 5; i++) tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"name\":\"flaky\",\"stage\":\"before\",\"calls\":3,\"errors\":3,\"dropped\":0,\"violations\":0,\"disabled\":true");
    tally_free(stats);
    CHECK_EQ_INT(tu_count_lines(out), 5);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(violations_are_counted_and_sampling_is_deterministic)
{
    char *dir = rules_dir("10_v.lua",
                          "return { name = 'v', process = function(m, ctx)\n"
                          "  ctx:violation('naming.case', 'not lower case')\n"
                          "  m.properties = { a = ctx:sample(0.5, 'user-1'), b = ctx:sample(0.5, 'user-1'),\n"
                          "                   all = ctx:sample(1, 'x'), none = ctx:sample(0, 'x'), now = math.type(ctx.now) }\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("viol.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "E", NULL);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *l0 = tu_line(out, 0), *l1 = tu_line(out, 1);
    CHECK_CONTAINS(l0, "\"all\":true");
    CHECK_CONTAINS(l0, "\"none\":false");
    CHECK_CONTAINS(l0, "\"now\":\"integer\"");
    const char *a0 = strstr(l0, "\"a\":"), *a1 = strstr(l1, "\"a\":");
    CHECK(a0 && a1 && strncmp(a0, a1, 9) == 0); /* same key, same answer */
    char *stats = NULL;
    tally_stats(t, &stats);
    CHECK_CONTAINS(stats, "\"violations\":2,");
    tally_free(stats);
    free(l0);
    free(l1);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(rule_config_reaches_ctx_config)
{
    char *dir = rules_dir("10_c.lua",
                          "return { name = 'cfg', process = function(m, ctx) m.properties = { level = ctx.config.level } return m end }\n",
                          NULL);
    char *out = tu_path("cfg.ndjson");
    tally_t *t = open_rules(dir, out, "rule_config", "{\"cfg\":{\"level\":7}}");
    REQUIRE(t);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"properties\":{\"level\":7}");
    free(line);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(bad_scripts_fail_open_with_file_and_line)
{
    const struct { const char *src, *want; } cases[] = {
        {"return {", "10_x.lua:1:"},
        {"return 42", "must return a plugin table"},
        {"return { stage = 'before', process = function() end }", "non-empty string \"name\""},
        {"return { name = 'x', stage = 'sometimes', process = function() end }", "\"stage\""},
        {"return { name = 'x' }", "needs a function \"process\""},
        {"return { name = 'x', types = { 'click' }, process = function() end }", "unknown message type"},
        {"error('at load')", "10_x.lua:1: at load"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *dir = rules_dir("10_x.lua", cases[i].src, NULL);
        tally_config *c = tally_config_new();
        tally_config_set(c, "out", "/dev/null");
        tally_config_set(c, "rules", dir);
        tally_t *t = NULL;
        CHECK_EQ_INT(tally_open(c, &t), TALLY_ELUA);
        CHECK_CONTAINS(tally_errmsg(NULL), cases[i].want);
        tally_config_free(c);
        free(dir);
    }
}

TEST(bytecode_rule_file_is_refused)
{
    char *dir = rules_dir("10_bin.lua", "\x1bLua\x54", NULL);
    tally_config *c = tally_config_new();
    tally_config_set(c, "out", "/dev/null");
    tally_config_set(c, "rules", dir);
    tally_t *t = NULL;
    CHECK_EQ_INT(tally_open(c, &t), TALLY_ELUA);
    CHECK_CONTAINS(tally_errmsg(NULL), "binary");
    tally_config_free(c);
    free(dir);
}

TEST(reload_swaps_rules_in_order_and_keeps_old_on_error)
{
    char *dir = rules_dir("10_r.lua",
                          "return { name = 'r', process = function(m) m.properties = { version = 1 } return m end }\n", NULL);
    char *out = tu_path("reload.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "before reload", NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/10_r.lua", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("return { name = 'r', process = function(m) m.properties = { version = 2 } return m end }\n", f);
    fclose(f);
    CHECK_EQ_INT(tally_reload(t, 5000), TALLY_OK);
    tally_track(t, "after reload", NULL);
    f = fopen(path, "w");
    fputs("return { name = 'r', process = function(m) syntax error here", f);
    fclose(f);
    CHECK_EQ_INT(tally_reload(t, 5000), TALLY_ELUA);
    CHECK_CONTAINS(tally_errmsg(t), "10_r.lua:1:");
    tally_track(t, "after failed reload", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *l0 = tu_line(out, 0), *l1 = tu_line(out, 1), *l2 = tu_line(out, 2);
    CHECK_CONTAINS(l0, "\"version\":1");
    CHECK_CONTAINS(l1, "\"version\":2");
    CHECK_CONTAINS(l2, "\"version\":2"); /* the broken file did not replace the working set */
    free(l0);
    free(l1);
    free(l2);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(destination_mapping_shapes_payloads)
{
    char *dir = rules_dir("90_map.lua",
                          "return { name = 'activities', stage = 'destination', map = function(m, ctx)\n"
                          "  if m.type ~= 'track' then return nil end\n"
                          "  local out = {}\n"
                          "  for i, p in ipairs(m.properties.products or {}) do\n"
                          "    out[i] = { type = 'purchase', sku = p.sku, cents = math.floor(p.price * 100 + 0.5) } end\n"
                          "  return { tally_many = out } end }\n",
                          NULL);
    char *raw = tu_path("raw.ndjson"), *mapped = tu_path("mapped.ndjson");
    unlink(raw);
    unlink(mapped);
    tally_config *c = tally_config_new();
    char dests[1024];
    snprintf(dests, sizeof dests, "[{\"type\":\"file\",\"path\":\"%s\"},{\"type\":\"file\",\"path\":\"%s\",\"mapping\":\"activities\"}]",
             raw, mapped);
    tally_config_set(c, "destinations", dests);
    tally_config_set(c, "rules", dir);
    tally_t *t = NULL;
    REQUIRE(tally_open(c, &t) == TALLY_OK);
    tally_track(t, "Order Completed", "{\"products\":[{\"sku\":\"a\",\"price\":19.99},{\"sku\":\"b\",\"price\":5}]}");
    tally_page(t, NULL, "Home", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(raw), 2);
    CHECK_EQ_INT(tu_count_lines(mapped), 2);
    char *l0 = tu_line(mapped, 0), *l1 = tu_line(mapped, 1);
    CHECK_STR(l0, "{\"cents\":1999,\"sku\":\"a\",\"type\":\"purchase\"}");
    CHECK_STR(l1, "{\"cents\":500,\"sku\":\"b\",\"type\":\"purchase\"}");
    free(l0);
    free(l1);
    tally_close(t, 1000);
    tally_config_free(c);
    free(raw);
    free(mapped);
    free(dir);
}

TEST(mapping_that_is_not_loaded_is_a_config_error)
{
    tally_config *c = tally_config_new();
    tally_config_set(c, "destinations", "[{\"type\":\"file\",\"path\":\"/dev/null\",\"mapping\":\"nope\"}]");
    tally_t *t = NULL;
    CHECK_EQ_INT(tally_open(c, &t), TALLY_ECONFIG);
    CHECK_CONTAINS(tally_errmsg(NULL), "mapping \"nope\"");
    tally_config_free(c);
}

TEST(tally_helpers_inside_the_sandbox)
{
    char *dir = rules_dir("plan.json", "{\"limit\": 9007199254740993, \"list\": []}",
                          "10_h.lua",
                          "local plan = tally.load_json('plan.json')\n"
                          "return { name = 'h', process = function(m)\n"
                          "  m.properties = { limit = plan.limit, list = plan.list, null = tally.null,\n"
                          "    empty = tally.empty_array, enc = tally.json.encode({ x = 1.5 }) }\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("helpers.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"properties\":{\"empty\":[],\"enc\":\"{\\\"x\\\":1.5}\",\"limit\":9007199254740993,\"list\":[],\"null\":null}");
    free(line);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* A chain of rules over every JSON shape: a subtree one rule writes deep inside is what the next
 * rule reads (not the pushed original), and what goes out holds the same values as the caller's
 * text, written ones converted (sorted keys, tally's spelling of numbers). */
TEST(chain_reads_what_an_earlier_rule_wrote_deep_and_keeps_the_rest_raw)
{
    char *dir = rules_dir("10_deep.lua",
                          "return { name = 'deep', process = function(m)\n"
                          "  m.properties.w.d[2].x = 5\n"            /* deep write: w, d, d[2] touched */
                          "  m.properties.w.gone = nil\n"            /* a key deleted */
                          "  m.properties.w.o = { k = 'v' }\n"       /* a subtree replaced */
                          "  return m end }\n",
                          "20_read.lua",
                          "return { name = 'read', stage = 'enrichment', on_error = 'pass', process = function(m)\n"
                          "  local n = 0 for _ in pairs(m.properties.r) do n = n + 1 end\n"
                          "  m.context.seen = { x = m.properties.w.d[2].x, k = m.properties.w.o.k, n = n,\n"
                          "    len = #m.properties.w.d, gone = m.properties.w.gone == nil }\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("deep.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    static const char props[] =
        "{\"r\":{\"z\":1,\"a\":[],\"o\":{},\"s\":\"\\u00e9\\ud83d\\ude00\\/\",\"f\":1.50,\"e\":1e2,\"m\":-0,"
        "\"big\":9007199254740993},"
        "\"w\":{\"d\":[1,{\"x\":null,\"y\":[[]]}],\"gone\":true,\"o\":{\"q\":[]},\"n\":-0.0,\"big\":9007199254740993}}";
    CHECK_EQ_INT(tally_track(t, "E", props), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "E", "{\"x\":1e400}"), TALLY_EINVAL); /* refused at the call, as without rules */
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 0);
    /* untouched, but a table made inside the caller's text (not a node of its own) beside a
     * written one: the same values, in tally's spelling (json_lua.h) */
    CHECK_CONTAINS(line, "\"r\":{\"a\":[],\"big\":9007199254740993,\"e\":100.0,\"f\":1.5,\"m\":-0.0,\"o\":{},"
                         "\"s\":\"\xC3\xA9\xF0\x9F\x98\x80/\",\"z\":1}");
    /* written: converted, the untouched array inside d[2] as it came, 2^53+1 and -0.0 kept */
    CHECK_CONTAINS(line, "\"w\":{\"big\":9007199254740993,\"d\":[1,{\"x\":5,\"y\":[[]]}],\"n\":-0.0,\"o\":{\"k\":\"v\"}}");
    CHECK_CONTAINS(line, "\"seen\":{\"gone\":true,\"k\":\"v\",\"len\":2,\"n\":8,\"x\":5}");
    CHECK(tu_line(out, 1) == NULL);
    free(line);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* The sandbox's own type() and getmetatable() answer as the base library's do. */
TEST(type_and_getmetatable_inside_the_sandbox_answer_as_the_base_library)
{
    char *dir = rules_dir("10_t.lua",
                          "return { name = 't', process = function(m)\n"
                          "  local co = coroutine.create(function() end)\n"
                          "  local guarded = setmetatable({}, { __metatable = 'locked' })\n"
                          "  local plain_mt = {}\n"
                          "  local plain = setmetatable({}, plain_mt)\n"
                          "  local ok, err = pcall(function() return type() end)\n"
                          "  local ok2, err2 = pcall(function() return getmetatable() end)\n"
                          "  m.properties = { types = table.concat({ type(nil), type(true), type(tally.null), type(1), type(1.5),\n"
                          "      type('s'), type({}), type(print), type(co), type(m.properties.items) }, ','),\n"
                          "    no_arg = err, no_arg_mt = err2, ok = ok or ok2,\n"
                          "    guarded = getmetatable(guarded), plain = getmetatable(plain) == plain_mt,\n"
                          "    none = getmetatable({}) == nil, str = getmetatable(''), num = getmetatable(1) == nil,\n"
                          "    array = getmetatable(m.properties.items) }\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("type.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    tally_track(t, "E", "{\"items\":[1]}");
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *line = tu_line(out, 0);
    CHECK_CONTAINS(line, "\"array\":\"tally.array\",\"guarded\":\"locked\",");
    CHECK_CONTAINS(line, "10_t.lua:6: bad argument #1 to 'type' (value expected)\",");
    CHECK_CONTAINS(line, "10_t.lua:7: bad argument #1 to 'getmetatable' (value expected)\",");
    CHECK_CONTAINS(line, "\"none\":true,\"num\":true,\"ok\":false,\"plain\":true,\"str\":false,");
    CHECK_CONTAINS(line, "\"types\":\"nil,boolean,userdata,number,number,string,table,function,thread,table\"");
    free(line);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* Issue 14 #19: a rule sees an integer beyond 64 bits as the nearest float; when it leaves the
 * field alone (or copies it) the original digits go out, not 100000000000000000000.0. */
TEST(rule_leaving_a_big_integer_alone_keeps_its_digits)
{
    char *dir = rules_dir("10_touch.lua",
                          "return { name = 'touch', process = function(m, ctx)\n"
                          "  m.properties.seen = math.type(m.properties.big)\n"
                          "  m.properties.copy = m.properties.neg\n"
                          "  m.properties.sum = m.properties.big * 2\n"
                          "  return m end }\n",
                          NULL);
    char *out = tu_path("bigint.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "big", "{\"big\":99999999999999999999,\"neg\":-9223372036854775809,"
                                       "\"list\":[18446744073709551616]}"), TALLY_OK);
    CHECK_EQ_INT(tally_send(t, "{\"type\":\"track\",\"event\":\"sent\",\"anonymousId\":\"a\","
                               "\"properties\":{\"big\":123456789012345678901234567890,\"neg\":1}}"), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    char *all = tu_read_file(out, NULL);
    CHECK_CONTAINS(all, "\"big\":99999999999999999999,\"copy\":-9223372036854775809,"
                        "\"list\":[18446744073709551616],\"neg\":-9223372036854775809,\"seen\":\"float\","
                        "\"sum\":200000000000000000000.0}");
    CHECK_CONTAINS(all, "\"big\":123456789012345678901234567890,");
    free(all);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(out);
    free(dir);
}

/* Issue 14 #5: a rule returning a 2-way cycle or a 40-level DAG (t = {a = u, b = u}) made the
 * processor walk 2^40..2^64 nodes converting it back; now the message is refused at once, with
 * the reason, and the next message goes through. */
static void returns_graph(const char *build, const char *why)
{
    char src[1024];
    snprintf(src, sizeof src,
             "return { name = 'graph', process = function(m, ctx)\n"
             "  if m.event == 'attack' then %s m.properties = g end\n"
             "  return m end }\n", build);
    char *dir = rules_dir("10_graph.lua", src, NULL);
    char *out = tu_path("graph.ndjson");
    tally_t *t = open_rules(dir, out, NULL, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "attack", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "after", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_flush(t, 20000), TALLY_OK);
    char *all = tu_read_file(out, NULL);
    CHECK_CONTAINS(all, "\"event\":\"after\"");
    CHECK(all && !strstr(all, "\"event\":\"attack\""));
    CHECK_CONTAINS(tf_logged(), "rule graph failed: ");
    CHECK_CONTAINS(tf_logged(), why);
    free(all);
    CHECK_EQ_INT(tally_close(t, 5000), TALLY_OK);
    free(out);
    free(dir);
}

/* The last rule's result meets the conversion to JSON, which names the path of a cycle and stops
 * at the message limit; between two rules the plain-data walk bounds it (test_isolation.c). */
TEST(rule_returning_a_two_way_cycle_is_refused)
{
    returns_graph("local g, b = {}, {} g.x, g.y, b.x, b.y = b, b, g, g",
                  "message.properties.x.x: cycle: the table contains itself");
}

TEST(rule_returning_a_forty_level_dag_is_refused_at_the_message_limit)
{
    returns_graph("local g = 'leaf' for i = 1, 40 do g = {a = g, b = g} end",
                  "too large: the JSON text would exceed the 32768-byte limit");
}
