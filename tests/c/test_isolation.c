/* Scripts must not reach each other, and what they produce must stay bounded: hostile rules
 * (issue 14, items 7-9 and 13-15; issue 15, the breaker's failure policy), each test named after
 * the trick it stops. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fixtures.h"
#include "harness.h"
#include "tally.h"
#include "util.h"

#define rules_dir(...) tf_rules_dir("iso-rules", __VA_ARGS__)

/* Opens a handle on the rules folder writing to out, logging (info and up) to the fixtures'
 * capture; extra key/value pairs end with NULL. */
static tally_t *open_rules(const char *dir, const char *out, ...)
{
    unlink(out);
    const char *defaults[] = {"out", out, "rules", dir, "log_level", "info", "lua_instructions", "2000000",
                              "lua_memory", "33554432", NULL};
    va_list ap;
    va_start(ap, out);
    tally_t *t;
    tf_vopen(&t, defaults, ap);
    va_end(ap);
    return t;
}

static char *stats_of(tally_t *t)
{
    char *s = NULL;
    tally_stats(t, &s);
    return s;
}

/* The unsigned number after `"key":` in the first object of s that holds "name":"rule". */
static long long rule_stat(const char *s, const char *rule, const char *key)
{
    char pat[160];
    snprintf(pat, sizeof pat, "\"name\":\"%s\"", rule);
    const char *r = s ? strstr(s, pat) : NULL;
    if (!r) return -1;
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *k = strstr(r, pat), *end = strchr(r, '}');
    if (!k || (end && k > end)) return -1;
    return atoll(k + strlen(pat));
}

/* ---- 14: logging is bounded and cannot forge lines ---- */

TEST(ctx_log_in_a_loop_is_rate_limited_and_counted)
{
    char *dir = rules_dir("10_spam.lua",
                          "return { name = 'spam', process = function(m, ctx)\n"
                          "  for i = 1, 100000 do ctx:log('warn', 'spam line ' .. i) end return m end }\n", NULL);
    char *out = tu_path("spam.ndjson");
    tf_log_needle("spam line");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 20000) == TALLY_OK);
    char *s = stats_of(t);
    /* one second's allowance, or two when the loop straddles a second */
    CHECK(tf_log_needle_lines() >= 50 && tf_log_needle_lines() <= 100);
    CHECK_EQ_INT(rule_stat(s, "spam", "log_suppressed"), 100000 - tf_log_needle_lines());
    CHECK_CONTAINS(tf_logged(), "rule spam: more than 50 log lines in a second");
    CHECK_EQ_INT(tu_count_lines(out), 1); /* the message itself went on */
    tally_free(s);
    tally_close(t, 1000);
    tf_log_needle(NULL);
    free(out);
    free(dir);
}

/* luaL_buffinit pushes a placeholder: counting the arguments after it printed one of its own */
TEST(print_writes_exactly_its_arguments)
{
    char *dir = rules_dir("10_printer.lua",
                          "print('a', 2, nil, true)\n"
                          "return { name = 'printer', process = function(m, ctx) return m end }\n", NULL);
    char *out = tu_path("print-args.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    CHECK_CONTAINS(tf_logged(), "lua: a\\t2\\tnil\\ttrue\n"); /* the logger escapes tabs */
    CHECK(strstr(tf_logged(), "userdata") == NULL);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(print_in_a_loop_is_rate_limited_and_counted)
{
    char *dir = rules_dir("10_printer.lua",
                          "for i = 1, 1000 do print('load time print', i) end\n"
                          "return { name = 'printer', process = function(m, ctx)\n"
                          "  for i = 1, 100000 do print('printed line', i) end return m end }\n", NULL);
    char *out = tu_path("print.ndjson");
    tf_log_needle("printed line");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    CHECK(strstr(tf_logged(), "load time print") != NULL);
    CHECK_CONTAINS(tf_logged(), "more than 50 log lines in a second");
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 20000) == TALLY_OK);
    char *s = stats_of(t);
    CHECK(tf_log_needle_lines() >= 50 && tf_log_needle_lines() <= 100);
    CHECK(tf_log_lines() < 400); /* not 101,000 */
    CHECK(rule_stat(s, "printer", "log_suppressed") >= 100000 - tf_log_needle_lines());
    tally_free(s);
    tally_close(t, 1000);
    tf_log_needle(NULL);
    free(out);
    free(dir);
}

TEST(log_lines_cannot_forge_lines_or_reach_the_terminal)
{
    char *dir = rules_dir("10_forger.lua",
                          "return { name = 'forger', on_error = 'pass', process = function(m, ctx)\n"
                          "  ctx:log('warn', 'ok\\ntally: error: forged\\27[2J\\r\\t\\127' .. string.char(0xc2, 0x9b) .. '\\255end')\n"
                          "  error('boom\\nforged error line\\27]0;title\\7') end }\n", NULL);
    char *out = tu_path("forge.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_CONTAINS(tf_logged(), "rule forger: ok\\ntally: error: forged\\x1b[2J\\r\\t\\x7f\\xc2\\x9b\\xffend");
    CHECK_CONTAINS(tf_logged(), "boom\\nforged error line\\x1b]0;title\\x07");
    /* each line the logger received is one line: no raw control byte anywhere */
    for (const char *p = tf_logged(); *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n') continue;
        CHECK(c >= 0x20 && c != 0x7f);
        if (c < 0x20 || c == 0x7f) break;
    }
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* ---- 15: rule names reach JSON and logs ---- */

TEST(rule_name_with_invalid_utf8_is_refused_at_load)
{
    static const char *const names[] = {"'bad\\255name'", "'line\\nbreak'", "'esc\\27[31m'", "string.rep('n', 129)", NULL};
    static const char *const why[] = {"\"name\" must be UTF-8 text without control characters (bad byte at offset 3)",
                                      "bad byte at offset 4", "bad byte at offset 3", "\"name\" is 129 bytes; at most 128"};
    for (int i = 0; names[i]; i++) {
        char src[256];
        snprintf(src, sizeof src, "return { name = %s, process = function(m) return m end }\n", names[i]);
        char *dir = rules_dir("10_named.lua", src, NULL);
        char *out = tu_path("names.ndjson");
        tally_t *t = open_rules(dir, out, NULL);
        CHECK(t == NULL);
        CHECK_CONTAINS(tally_errmsg(NULL), why[i]);
        CHECK_CONTAINS(tally_errmsg(NULL), "10_named.lua");
        if (t) tally_close(t, 1000);
        free(out);
        free(dir);
    }
}

TEST(rule_name_in_utf8_keeps_stats_valid)
{
    char *dir = rules_dir("10_named.lua", "return { name = 'caf\\195\\169 \\226\\152\\149', process = function(m) return m end }\n", NULL);
    char *out = tu_path("utf8name.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    char *s = stats_of(t);
    CHECK_CONTAINS(s, "\"name\":\"caf\xc3\xa9 \xe2\x98\x95\"");
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* ---- issue 15: a disabled rule keeps its failure policy ---- */

TEST(fail_closed_rule_disabled_by_breaker_still_drops)
{
    /* fails on purchases only; identify messages are not its type and go on */
    char *dir = rules_dir("10_gate.lua",
                          "return { name = 'gate', types = {'track'}, process = function(m) error('plan check broke') end }\n",
                          NULL);
    char *out = tu_path("gate.ndjson");
    tally_t *t = open_rules(dir, out, "rule_breaker", "3", NULL);
    REQUIRE(t);
    for (int i = 0; i < 6; i++) CHECK_EQ_INT(tally_track(t, "Purchase", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_identify(t, "u1", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *s = stats_of(t);
    CHECK_CONTAINS(s, "\"name\":\"gate\",\"stage\":\"before\",\"calls\":3,\"errors\":3,\"dropped\":6,\"violations\":0,\"disabled\":true");
    CHECK_CONTAINS(s, "\"rule_dropped\":6");
    CHECK_EQ_INT(tu_count_lines(out), 1); /* only the identify: nothing passed the gate unprocessed */
    char *l0 = tu_line(out, 0);
    CHECK_CONTAINS(l0, "\"type\":\"identify\"");
    free(l0);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(fail_open_rule_disabled_by_breaker_still_passes)
{
    char *dir = rules_dir("10_enrich.lua",
                          "return { name = 'enrich', stage = 'enrichment', process = function(m) error('lookup broke') end }\n",
                          NULL);
    char *out = tu_path("enrich.ndjson");
    tally_t *t = open_rules(dir, out, "rule_breaker", "2", NULL);
    REQUIRE(t);
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *s = stats_of(t);
    CHECK_CONTAINS(s, "\"calls\":2,\"errors\":2,\"dropped\":0,\"violations\":0,\"disabled\":true");
    CHECK_EQ_INT(tu_count_lines(out), 5);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(mapping_disabled_by_breaker_counts_what_it_skips)
{
    char *dir = rules_dir("90_map.lua", "return { name = 'shape', stage = 'destination', map = function(m) error('broken') end }\n", NULL);
    char *raw = tu_path("rawmap.ndjson"), *mapped = tu_path("mapped.ndjson");
    unlink(raw);
    unlink(mapped);
    char dests[1024];
    snprintf(dests, sizeof dests, "[{\"type\":\"file\",\"path\":\"%s\",\"mapping\":\"shape\"}]", mapped);
    tally_t *t = open_rules(dir, raw, "destinations", dests, "rule_breaker", "2", NULL);
    REQUIRE(t);
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "shape", "calls"), 2);
    CHECK_EQ_INT(rule_stat(s, "shape", "dropped"), 3);
    CHECK_EQ_INT(tu_count_lines(raw), 5);
    tally_free(s);
    tally_close(t, 1000);
    free(raw);
    free(mapped);
    free(dir);
}

/* ---- 13: what one message can become is bounded ---- */

TEST(split_into_10000_parts_is_cut_at_the_limit)
{
    char *dir = rules_dir("10_split.lua",
                          "return { name = 'splitter', process = function(m)\n"
                          "  if m.event ~= 'explode' then return m end\n"
                          "  local out = {} for i = 1, 10000 do out[i] = { type = 'track', event = 'part', anonymousId = m.anonymousId,\n"
                          "    messageId = m.messageId .. '-' .. i, timestamp = m.timestamp, properties = { i = i } } end\n"
                          "  return out end }\n", NULL);
    char *out = tu_path("split.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "legit", NULL), TALLY_OK);
    CHECK_EQ_INT(tally_track(t, "explode", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 20000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1 + 100);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "splitter", "parts_cut"), 9900);
    CHECK_EQ_INT(rule_stat(s, "splitter", "errors"), 1);
    CHECK_CONTAINS(tf_logged(), "made 10000 messages of one; at most 100 parts per message: 9900 cut");
    char *last = tu_line(out, 100);
    CHECK_CONTAINS(last, "\"i\":100}"); /* the first parts go on, in order */
    free(last);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(splits_chained_across_rules_stay_within_the_limit)
{
    static const char split20[] =
        "return { name = '%s', process = function(m)\n"
        "  local out = {} for i = 1, 20 do local c = {} for k, v in pairs(m) do c[k] = v end\n"
        "    c.messageId = m.messageId .. '-%s' .. i; out[i] = c end\n"
        "  return out end }\n";
    char a[512], b[512];
    snprintf(a, sizeof a, split20, "a", "a");
    snprintf(b, sizeof b, split20, "b", "b");
    char *dir = rules_dir("10_a.lua", a, "20_b.lua", b, NULL);
    char *out = tu_path("split2.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 20000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 100);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "a", "parts_cut"), 0);
    CHECK_EQ_INT(rule_stat(s, "b", "parts_cut"), 400 - 100);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(mapping_into_10000_payloads_is_cut_at_the_limit)
{
    char *dir = rules_dir("90_map.lua",
                          "return { name = 'fan', stage = 'destination', map = function(m)\n"
                          "  local out = {} for i = 1, 10000 do out[i] = { n = i } end return { tally_many = out } end }\n", NULL);
    char *raw = tu_path("rawfan.ndjson"), *mapped = tu_path("fan.ndjson");
    unlink(mapped);
    char dests[1024];
    snprintf(dests, sizeof dests, "[{\"type\":\"file\",\"path\":\"%s\",\"mapping\":\"fan\"}]", mapped);
    tally_t *t = open_rules(dir, raw, "destinations", dests, NULL);
    REQUIRE(t);
    CHECK_EQ_INT(tally_track(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 20000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(mapped), 100);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "fan", "parts_cut"), 9900);
    tally_free(s);
    tally_close(t, 1000);
    free(raw);
    free(mapped);
    free(dir);
}

/* ---- 7: nothing one script can change is seen by another ---- */

/* Runs the rules in dir on one track with properties props; returns output line 0 (malloc'd). */
static char *run_one_message(const char *dir, const char *props, char **stats)
{
    char *out = tu_path("one.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    char *line = NULL;
    if (t) {
        tally_track(t, "E", props);
        if (tally_flush(t, 20000) == TALLY_OK) line = tu_line(out, 0);
        if (stats) *stats = stats_of(t);
        tally_close(t, 1000);
    }
    free(out);
    return line;
}

TEST(array_metatable_gc_cannot_be_added)
{
    char *dir = rules_dir("10_gc.lua",
                          "return { name = 'gc', on_error = 'pass', process = function(m)\n"
                          "  local mt = getmetatable(tally.array{})\n"
                          "  m.properties.tag = mt\n"
                          "  m.properties.rawset = pcall(rawset, mt, '__gc', function() while true do end end)\n"
                          "  m.properties.setmt = pcall(setmetatable, m.properties.items, { __gc = print })\n"
                          "  return m end }\n", NULL);
    char *stats = NULL;
    char *line = run_one_message(dir, "{\"items\":[1,2]}", &stats);
    CHECK_CONTAINS(line, "\"items\":[1,2],\"rawset\":false,\"setmt\":false,\"tag\":\"tally.array\"");
    CHECK_EQ_INT(rule_stat(stats, "gc", "errors"), 0);
    free(line);
    tally_free(stats);
    free(dir);
}

TEST(array_metatable_index_len_cannot_change_other_scripts_arrays)
{
    char *dir = rules_dir("10_a.lua",
                          "return { name = 'a', process = function(m)\n"
                          "  local mt = getmetatable(m.properties.items)\n"
                          "  if type(mt) == 'table' then\n"
                          "    mt.__index = function() return 'hijacked' end; mt.__len = function() return 0 end\n"
                          "    mt.__newindex = function() error('b is blamed') end end\n"
                          "  return m end }\n",
                          "20_b.lua",
                          "return { name = 'b', process = function(m)\n"
                          "  local items = m.properties.items\n"
                          "  m.properties.len = #items; m.properties.ninth = tostring(items[9]); items[3] = 3\n"
                          "  local fresh = tally.array{}; fresh[1] = 'x'\n"
                          "  m.properties.fresh = fresh\n"
                          "  return m end }\n", NULL);
    char *stats = NULL;
    char *line = run_one_message(dir, "{\"items\":[1,2]}", &stats);
    CHECK_CONTAINS(line, "\"properties\":{\"fresh\":[\"x\"],\"items\":[1,2,3],\"len\":2,\"ninth\":\"nil\"}");
    CHECK_EQ_INT(rule_stat(stats, "b", "errors"), 0);
    free(line);
    tally_free(stats);
    free(dir);
}

/* Every table a script can reach (from _ENV, ctx, the message, and the metatables of all of them
 * and of strings and arrays): script a lists their addresses, script b checks none is its own. */
static const char reach_walk[] =
    "local function walk(v, seen, list)\n"
    "  if (type(v) ~= 'table' and type(v) ~= 'function') or seen[v] then return end\n"
    "  seen[v] = true\n"
    "  if type(v) == 'table' then\n"
    "    list[#list + 1] = tostring(v)\n"
    "    for k, x in next, v do walk(k, seen, list); walk(x, seen, list) end\n"
    "    walk(getmetatable(v), seen, list)\n"
    "  end\n"
    "end\n"
    "local function reachable(m, ctx)\n"
    "  local seen, list = { [m] = true }, {}\n"
    "  walk(_ENV, seen, list); walk(ctx, seen, list); walk(getmetatable(''), seen, list)\n"
    "  walk(getmetatable(tally.array{}), seen, list); walk(getmetatable(m.properties.items), seen, list)\n"
    "  walk(getmetatable(tally.json.decode('[1]')), seen, list); walk(require('tally.util'), seen, list)\n"
    "  return list\n"
    "end\n";

TEST(no_table_is_reachable_by_two_scripts)
{
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s return { name = 'a', process = function(m, ctx)\n"
             "  m.properties.seen = table.concat(reachable(m, ctx), ' ') .. ' '\n"
             "  m.properties.a_count = #reachable(m, ctx)\n"
             "  return m end }\n", reach_walk);
    snprintf(b, sizeof b, "%s return { name = 'b', process = function(m, ctx)\n"
             "  local shared = 0\n"
             "  for _, addr in ipairs(reachable(m, ctx)) do\n"
             "    if m.properties.seen:find(addr .. ' ', 1, true) then shared = shared + 1 end end\n"
             "  m.properties.seen = nil; m.properties.shared = shared\n"
             "  return m end }\n", reach_walk);
    char *dir = rules_dir("10_a.lua", a, "20_b.lua", b, NULL);
    char *line = run_one_message(dir, "{\"items\":[1,2]}", NULL);
    CHECK_CONTAINS(line, "\"shared\":0");
    /* the walk reached the libraries: it would have seen a shared table */
    CHECK(line && !strstr(line, "\"a_count\":0") && !strstr(line, "\"a_count\":1,"));
    free(line);
    free(dir);
}

/* ---- 8: each rule receives plain data ---- */

TEST(metatable_left_on_message_does_not_run_in_next_rule)
{
    char *dir = rules_dir("10_trap.lua",
                          "return { name = 'trap', process = function(m)\n"
                          "  local boom = function() error('trap code ran in another rule') end\n"
                          "  m.properties.nested = setmetatable({}, { __index = boom })\n"
                          "  local key = setmetatable({}, { __tostring = boom, __concat = boom })\n"
                          "  m.properties.keyed = { [key] = 1 }\n"
                          "  setmetatable(m.properties, { __index = boom, __newindex = boom, __len = boom, __pairs = boom })\n"
                          "  setmetatable(m.context, { __index = boom, __tostring = boom, __concat = boom, __eq = boom })\n"
                          "  return m end }\n",
                          "20_reader.lua",
                          "return { name = 'reader', process = function(m)\n"
                          "  local n = 0\n"
                          "  for k, v in pairs(m.properties) do n = n + 1 end\n"
                          "  for k in pairs(m.properties.keyed) do local s = tostring(k) .. '' end\n"
                          "  local x = m.properties.missing, m.context.missing, m.properties.nested.missing, #m.properties\n"
                          "  m.properties.keyed = nil; m.properties.nested = nil; m.properties.read = n\n"
                          "  return m end }\n", NULL);
    char *stats = NULL;
    char *line = run_one_message(dir, "{\"a\":1}", &stats);
    CHECK_CONTAINS(line, "\"properties\":{\"a\":1,\"read\":3}");
    CHECK_EQ_INT(rule_stat(stats, "reader", "errors"), 0);
    CHECK_EQ_INT(rule_stat(stats, "trap", "errors"), 0);
    CHECK(!strstr(tf_logged(), "trap code ran"));
    free(line);
    tally_free(stats);
    free(dir);
}

TEST(metatable_set_later_through_a_stashed_part_does_not_run_in_next_rule)
{
    /* the trap sees both parts of a split: it keeps the first part's properties and arms them
     * while it handles the second, after the first has already been returned */
    char *dir = rules_dir("10_split.lua",
                          "return { name = 'split', process = function(m)\n"
                          "  local c = {} for k, v in pairs(m) do c[k] = v end\n"
                          "  c.properties = { part = 2 }; c.messageId = m.messageId .. '-2'; m.properties = { part = 1 }\n"
                          "  return { m, c } end }\n",
                          "20_trap.lua",
                          "local kept\n"
                          "return { name = 'trap', process = function(m)\n"
                          "  if kept then setmetatable(kept, { __index = function() error('stashed trap ran') end }) end\n"
                          "  kept = m.properties\n"
                          "  return m end }\n",
                          "30_reader.lua",
                          "return { name = 'reader', process = function(m)\n"
                          "  m.properties.read = tostring(m.properties.missing); return m end }\n", NULL);
    char *out = tu_path("stash.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 2);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "reader", "errors"), 0);
    CHECK(!strstr(tf_logged(), "stashed trap ran"));
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* The walk runs only after a script that ever set a metatable: one set while the script loaded,
 * and put into a message calls later, is still stripped. */
TEST(metatable_set_at_load_and_inserted_calls_later_does_not_run_in_next_rule)
{
    char *dir = rules_dir("10_loaded.lua",
                          "local armed = setmetatable({}, { __index = function() error('load-time trap ran') end })\n"
                          "local calls = 0\n"
                          "return { name = 'loaded', process = function(m)\n"
                          "  calls = calls + 1\n"
                          "  if calls == 3 then m.properties.armed = armed end\n"
                          "  return m end }\n",
                          "20_reader.lua",
                          "return { name = 'reader', process = function(m)\n"
                          "  if m.properties.armed then m.properties.read = tostring(m.properties.armed.missing) end\n"
                          "  return m end }\n", NULL);
    char *out = tu_path("loaded.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    for (int i = 0; i < 4; i++) tally_track(t, "E", "{\"a\":1}");
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 4);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "reader", "errors"), 0);
    CHECK_EQ_INT(rule_stat(s, "reader", "calls"), 4);
    CHECK(!strstr(tf_logged(), "load-time trap ran"));
    char *body = tu_read_file(out, NULL);
    CHECK_CONTAINS(body, "\"read\":\"nil\"");
    free(body);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* The mark goes to the script running when setmetatable is called: a function one rule leaves in
 * the message, called by the next, arms a table as that next rule, whose result is then walked. */
TEST(metatable_set_by_a_function_left_in_the_message_does_not_run_in_a_later_rule)
{
    char *dir = rules_dir("10_leaver.lua",
                          "return { name = 'leaver', process = function(m)\n"
                          "  m.properties.arm = function(t) setmetatable(t, { __index = function() error('left trap ran') end }) end\n"
                          "  return m end }\n",
                          "20_caller.lua",
                          "return { name = 'caller', process = function(m)\n"
                          "  local arm = m.properties.arm; m.properties.arm = nil; arm(m.properties)\n"
                          "  return m end }\n",
                          "30_reader.lua",
                          "return { name = 'reader', process = function(m)\n"
                          "  m.properties.read = tostring(m.properties.missing); return m end }\n", NULL);
    char *stats = NULL;
    char *line = run_one_message(dir, "{\"a\":1}", &stats);
    CHECK_CONTAINS(line, "\"read\":\"nil\"");
    CHECK_EQ_INT(rule_stat(stats, "reader", "errors"), 0);
    CHECK(!strstr(tf_logged(), "left trap ran"));
    free(line);
    tally_free(stats);
    free(dir);
}

/* ctx's metatable is the one a script can arm without calling setmetatable: reading it marks the
 * script, so a ctx armed and put in a message carries no code of its rule into the next. */
TEST(ctx_metatable_armed_and_carried_in_a_message_does_not_run_in_next_rule)
{
    char *dir = rules_dir("10_ctx.lua",
                          "return { name = 'ctxtrap', process = function(m, ctx)\n"
                          "  local mt = getmetatable(ctx)\n"
                          "  m.properties.mt = type(mt)\n"
                          "  if type(mt) == 'table' then mt.__newindex = function() error('ctx trap ran') end end\n"
                          "  m.properties.c = ctx; return m end }\n",
                          "20_writer.lua",
                          "return { name = 'writer', process = function(m)\n"
                          "  m.properties.c.x = 1; m.properties.c = nil; return m end }\n", NULL);
    char *stats = NULL;
    char *line = run_one_message(dir, "{\"a\":1}", &stats);
    CHECK_CONTAINS(line, "\"mt\":\"table\"");
    CHECK_EQ_INT(rule_stat(stats, "writer", "errors"), 0);
    CHECK(!strstr(tf_logged(), "ctx trap ran"));
    free(line);
    tally_free(stats);
    free(dir);
}

/* After the last rule nothing walks the message: converting it bounds it, and blames that rule. */
TEST(cyclic_message_from_the_last_rule_is_blamed_on_it)
{
    char *dir = rules_dir("10_first.lua", "return { name = 'first', process = function(m) return m end }\n",
                          "20_cycle.lua",
                          "return { name = 'cycle', process = function(m)\n"
                          "  if m.event == 'attack' then m.properties = {}; m.properties.self = m.properties end return m end }\n",
                          NULL);
    char *out = tu_path("lastcycle.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    tally_track(t, "attack", NULL);
    tally_track(t, "after", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "cycle", "errors"), 1);
    CHECK_EQ_INT(rule_stat(s, "cycle", "dropped"), 1);
    CHECK_EQ_INT(rule_stat(s, "first", "errors"), 0);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(cyclic_message_is_blamed_on_the_rule_that_made_it)
{
    char *dir = rules_dir("10_cycle.lua",
                          "return { name = 'cycle', process = function(m)\n"
                          "  if m.event == 'attack' then m.properties = {}; m.properties.self = m.properties end return m end }\n",
                          "20_next.lua", "return { name = 'next', process = function(m) return m end }\n", NULL);
    char *out = tu_path("cycle.ndjson");
    tally_t *t = open_rules(dir, out, NULL);
    REQUIRE(t);
    tally_track(t, "attack", NULL);
    tally_track(t, "after", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_EQ_INT(tu_count_lines(out), 1);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "cycle", "errors"), 1);
    CHECK_EQ_INT(rule_stat(s, "cycle", "dropped"), 1);
    CHECK_EQ_INT(rule_stat(s, "next", "errors"), 0);
    CHECK_EQ_INT(rule_stat(s, "next", "calls"), 1);
    CHECK_CONTAINS(tf_logged(), "rule cycle failed: returned a message that nested deeper than 64 levels (a cycle?)");
    tally_free(s);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

TEST(shared_subtable_graph_is_bounded_and_blamed_on_its_maker)
{
    /* 2^40 paths through 40 tables: walked as a tree it would never end */
    char *dir = rules_dir("10_dag.lua",
                          "return { name = 'dag', process = function(m)\n"
                          "  local t = {} for i = 1, 40 do t = { a = t, b = t } end\n"
                          "  m.properties = { dag = t } return m end }\n",
                          "20_next.lua", "return { name = 'next', process = function(m) return m end }\n", NULL);
    char *stats = NULL;
    char *line = run_one_message(dir, NULL, &stats);
    CHECK(line == NULL);
    CHECK_EQ_INT(rule_stat(stats, "dag", "errors"), 1);
    CHECK_EQ_INT(rule_stat(stats, "next", "calls"), 0);
    CHECK_CONTAINS(tf_logged(), "holds more than 32768 values");
    free(line);
    tally_free(stats);
    free(dir);
}

/* A subtree no script wrote to is charged its size between rules without being walked
 * (tjl_untouched_size): reached n times it counts n times, and moved deep it counts its depth,
 * exactly as the walk of a written one does. "fan" references the caller's untouched properties
 * (100 members) `copies` times, "nest" hangs them `levels` tables down; "tidy" undoes both, so a
 * message that passes the bounds is delivered. */
static char *fan_out(int copies, int levels, char **stats)
{
    char fan[512], props[2048];
    snprintf(fan, sizeof fan,
             "return { name = 'fan', process = function(m)\n"
             "  m.fan = {} for i = 1, %d do m.fan[i] = m.properties end\n"
             "  local t = m for i = 1, %d do t.c = {} t = t.c end t.x = m.properties\n"
             "  return m end }\n", copies, levels);
    size_t n = (size_t)snprintf(props, sizeof props, "{\"deep\":{\"er\":{}}");
    for (int i = 1; i < 100; i++) n += (size_t)snprintf(props + n, sizeof props - n, ",\"k%d\":%d", i, i);
    snprintf(props + n, sizeof props - n, "}");
    char *dir = rules_dir("10_fan.lua", fan, "20_tidy.lua",
                          "return { name = 'tidy', process = function(m) m.fan = nil m.c = nil return m end }\n", NULL);
    char *line = run_one_message(dir, props, stats);
    free(dir);
    return line;
}

TEST(untouched_subtree_reached_many_times_is_charged_each_time)
{
    char *stats = NULL;
    /* 300 x 100 members and the rest: under 32768 values */
    char *line = fan_out(300, 1, &stats);
    CHECK_CONTAINS(line, "\"properties\":{\"deep\":{\"er\":{}},\"k1\":1,");
    CHECK(line && !strstr(line, "\"fan\""));
    CHECK_EQ_INT(rule_stat(stats, "fan", "errors"), 0);
    free(line);
    tally_free(stats);
    /* 400 x 100: over it, blamed on the rule that made it */
    line = fan_out(400, 1, &stats);
    CHECK(line == NULL);
    CHECK_EQ_INT(rule_stat(stats, "fan", "errors"), 1);
    CHECK_EQ_INT(rule_stat(stats, "tidy", "calls"), 0);
    CHECK_CONTAINS(tf_logged(), "rule fan failed: returned a message that holds more than 32768 values");
    free(line);
    tally_free(stats);
}

TEST(untouched_subtree_moved_too_deep_is_blamed_on_its_mover)
{
    char *stats = NULL;
    /* properties are 3 levels of tables: hung below 61 new ones, the deepest is at level 64 */
    char *line = fan_out(1, 61, &stats);
    CHECK_CONTAINS(line, "\"properties\":{\"deep\":{\"er\":{}},\"k1\":1,");
    CHECK_EQ_INT(rule_stat(stats, "fan", "errors"), 0);
    free(line);
    tally_free(stats);
    line = fan_out(1, 62, &stats);
    CHECK(line == NULL);
    CHECK_EQ_INT(rule_stat(stats, "fan", "errors"), 1);
    CHECK_CONTAINS(tf_logged(), "rule fan failed: returned a message that nested deeper than 64 levels");
    free(line);
    tally_free(stats);
}

/* ---- 9: memory is limited per script and given back when a script is disabled ---- */

static const char hog_src[] =
    "return { name = 'hog', stage = 'enrichment', process = function(m)\n"
    "  hoard = hoard or {}; hoard[#hoard + 1] = string.rep('x', 1 << 20) .. #hoard; return m end }\n";
static const char steady_src[] =
    "return { name = 'steady', stage = 'enrichment', process = function(m)\n"
    "  local s = string.rep('y', 1 << 20) .. m.messageId\n"
    "  m.properties = m.properties or {}; m.properties.steady = #s; return m end }\n";

/* 32 MiB for two scripts: each holds at most a third (one third is kept for the messages). Lua
 * counts garbage until it collects, and a stale register can keep the previous call's string
 * alive: steady needs ~3 MiB for its 1 MiB string, far below its share. */
static tally_t *hog_and_steady(const char *out, const char *breaker)
{
    char *dir = rules_dir("10_hog.lua", hog_src, "20_steady.lua", steady_src, NULL);
    tally_t *t = open_rules(dir, out, "rule_breaker", breaker, NULL);
    free(dir);
    if (!t) return NULL;
    for (int i = 0; i < 30; i++) tally_track(t, "E", NULL);
    tally_flush(t, 30000);
    return t;
}

TEST(one_script_growing_its_state_does_not_starve_the_others)
{
    char *out = tu_path("hog.ndjson");
    tally_t *t = hog_and_steady(out, "0");
    REQUIRE(t);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "steady", "errors"), 0);
    CHECK(rule_stat(s, "hog", "errors") > 10);
    CHECK(rule_stat(s, "hog", "memory") <= (32 << 20) / 3);
    CHECK(rule_stat(s, "hog", "memory") > 8 << 20);
    fprintf(stderr, "  a hoarding script at its share (11184810): %lld bytes held\n", rule_stat(s, "hog", "memory"));
    CHECK_CONTAINS(tf_logged(), "rule hog failed: memory limit exceeded (not enough memory): this script holds ");
    CHECK_CONTAINS(tf_logged(), "lua_memory_per_script is 11184810");
    CHECK_EQ_INT(tu_count_lines(out), 30);
    char *last = tu_line(out, 29);
    CHECK_CONTAINS(last, "\"steady\":1048612"); /* 1 MiB + the 36-character messageId */
    free(last);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
}

TEST(disabled_script_memory_is_given_back)
{
    char *out = tu_path("hog2.ndjson");
    tally_t *t = hog_and_steady(out, "3");
    REQUIRE(t);
    char *s = stats_of(t);
    CHECK_CONTAINS(s, "\"disabled\":true");
    CHECK(rule_stat(s, "hog", "memory") < 64 << 10); /* it held ~10 MiB when it was disabled */
    fprintf(stderr, "  the same script once disabled: %lld bytes held\n", rule_stat(s, "hog", "memory"));
    CHECK(rule_stat(s, "steady", "memory") > 0);
    CHECK_EQ_INT(rule_stat(s, "steady", "errors"), 0);
    tally_free(s);
    tally_close(t, 1000);
    free(out);
}

TEST(lua_memory_per_script_caps_one_script_and_names_the_limit)
{
    char *dir = rules_dir("10_big.lua",
                          "return { name = 'big', on_error = 'pass', process = function(m)\n"
                          "  local s = string.rep('z', 3 << 20) return m end }\n",
                          "20_small.lua", "return { name = 'small', process = function(m) return m end }\n", NULL);
    char *out = tu_path("percap.ndjson");
    tally_t *t = open_rules(dir, out, "lua_memory_per_script", "2097152", NULL);
    REQUIRE(t);
    char *s = stats_of(t);
    long long base = rule_stat(s, "small", "memory");
    /* what one script's environment costs before it does anything: reported in README */
    fprintf(stderr, "  one script's environment: %lld bytes\n", base);
    CHECK(base > 1024 && base < 256 << 10);
    tally_free(s);
    tally_track(t, "E", NULL);
    REQUIRE(tally_flush(t, 5000) == TALLY_OK);
    CHECK_CONTAINS(tf_logged(), "lua_memory_per_script is 2097152");
    CHECK_EQ_INT(tu_count_lines(out), 1);
    tally_close(t, 1000);
    free(out);
    free(dir);
}

/* ---- 14: script text reaching `tally check` (not a log line) is escaped too ---- */

#include "json.h"
#include "rules.h"

static char reported[4096];
static void rep_violation(void *ud, const char *rule, const char *code, const char *text)
{
    (void)ud;
    size_t n = strlen(reported);
    snprintf(reported + n, sizeof reported - n, "violation %s %s %s|", rule, code, text);
}
static void rep_error(void *ud, const char *rule, const char *text)
{
    (void)ud;
    size_t n = strlen(reported);
    snprintf(reported + n, sizeof reported - n, "error %s %s|", rule, text);
}

TEST(violation_and_error_text_reach_check_output_escaped)
{
    char *dir = rules_dir("10_v.lua",
                          "return { name = 'v', process = function(m, ctx)\n"
                          "  ctx:violation('code\\27[31m', 'text\\nforged line\\255')\n"
                          "  error('err\\r\\27]0;x\\7') end }\n", NULL);
    rules_opts o = {16 << 20, 100000, 0, 0, NULL, 0};
    rules *R = NULL;
    tly_err why;
    REQUIRE(rules_open(&R, dir, &o, NULL, &why) == TALLY_OK);
    tj_arena *a = tj_arena_new();
    static const char msg[] = "{\"type\":\"track\",\"event\":\"E\",\"anonymousId\":\"a\",\"messageId\":\"m1\","
                              "\"timestamp\":\"2026-01-01T00:00:00.000Z\"}";
    tj_value *m;
    tj_error err;
    REQUIRE(tj_parse(a, msg, strlen(msg), &m, &err) == 0);
    msg_list out = {0};
    rules_report rep = {rep_violation, rep_error, NULL, NULL, 0, 0};
    reported[0] = '\0';
    rules_process(R, a, m, 0, &out, &rep);
    CHECK_CONTAINS(reported, "violation v code\\x1b[31m text\\nforged line\\xff|");
    CHECK_CONTAINS(reported, "err\\r\\x1b]0;x\\x07|");
    for (const char *p = reported; *p; p++) CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f);
    msg_list_free(&out);
    tj_arena_free(a);
    rules_free(R);
    free(dir);
}

TEST(rule_disabled_on_an_earlier_part_keeps_its_policy_for_the_rest)
{
    static const char split5[] =
        "return { name = 'split', process = function(m)\n"
        "  local out = {} for i = 1, 5 do local c = {} for k, v in pairs(m) do c[k] = v end\n"
        "    c.messageId = m.messageId .. '-' .. i; out[i] = c end return out end }\n";
    for (int pass = 0; pass < 2; pass++) {
        char fail[256];
        snprintf(fail, sizeof fail, "return { name = 'fail', on_error = '%s', process = function(m) error('broken') end }\n",
                 pass ? "pass" : "drop");
        char *dir = rules_dir("10_split.lua", split5, "20_fail.lua", fail, NULL);
        char *out = tu_path("parts.ndjson");
        tally_t *t = open_rules(dir, out, "rule_breaker", "2", NULL);
        REQUIRE(t);
        tally_track(t, "E", NULL);
        REQUIRE(tally_flush(t, 5000) == TALLY_OK);
        char *s = stats_of(t);
        CHECK_EQ_INT(rule_stat(s, "fail", "calls"), 2);
        CHECK_EQ_INT(rule_stat(s, "fail", "errors"), 2);
        CHECK_EQ_INT(rule_stat(s, "fail", "dropped"), pass ? 0 : 5);
        CHECK_EQ_INT(tu_count_lines(out), pass ? 5 : 0);
        CHECK(!strstr(tf_logged(), "nil value"));
        tally_free(s);
        tally_close(t, 1000);
        free(out);
        free(dir);
    }
}

TEST(rule_failing_on_every_message_is_rate_limited_in_the_log)
{
    char *dir = rules_dir("10_noisy.lua",
                          "return { name = 'noisy', on_error = 'pass', process = function(m) error(string.rep('e', 900)) end }\n", NULL);
    char *out = tu_path("noisy.ndjson");
    tf_log_needle("rule noisy failed");
    tally_t *t = open_rules(dir, out, "rule_breaker", "0", NULL);
    REQUIRE(t);
    time_t t0 = time(NULL);
    for (int i = 0; i < 1000; i++) CHECK_EQ_INT(tu_track_waiting(t, "E", NULL), TALLY_OK);
    REQUIRE(tally_flush(t, 30000) == TALLY_OK);
    long elapsed = (long)(time(NULL) - t0);
    char *s = stats_of(t);
    CHECK_EQ_INT(rule_stat(s, "noisy", "errors"), 1000);
    CHECK(tf_log_needle_lines() >= 50);
    CHECK(tf_log_needle_lines() <= 50 * (elapsed + 2)); /* 50 a second, in every second the run touched */
    CHECK_EQ_INT(rule_stat(s, "noisy", "log_suppressed"), 1000 - tf_log_needle_lines());
    CHECK_EQ_INT(tu_count_lines(out), 1000);
    tally_free(s);
    tally_close(t, 1000);
    tf_log_needle(NULL);
    free(out);
    free(dir);
}
