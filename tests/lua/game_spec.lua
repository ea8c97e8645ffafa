-- Mod tables and the game example.
--   * t:mod(name, version, max_events_per_second): the Lua-side twin of tally_lua_push_mod (the C
--     entry point itself is tested by tests/c/test_game_mods.c);
--   * the example mods (examples/game/mods) driven through their hooks;
--   * the game binary ($TALLY_BUILD/examples/game, built by `make demo-bins`) end to end, read
--     back with the sqlite3 CLI.
local tally = require("tally")

local files = require("tests.lua.helpers.files")
local tmp = files.tmp

local function messages(path) return files.ndjson(path, tally.json.decode) end

local function open_file()
  local path = tmp(".ndjson")
  return assert(tally.open({ out = path, log_level = "off" })), path
end

describe("t:mod", function()
  local t, path
  before_each(function() t, path = open_file() end)
  after_each(function()
    t:close(1000)
    os.remove(path)
  end)

  it("stamps context.mod on every message, replacing the mod's own", function()
    local m = t:mod("speedrun", "1.2.0")
    assert.is_true(m.track("level started", { level = 1 }))
    assert.is_true(m:track("level completed", { level = 1, duration_ms = 23400, score = 1067 }))
    assert.is_true(m.screen("Level 1", nil, { context = { mod = { name = "impostor" }, locale = "fr" } }))
    assert.is_true(m.page("Leaderboard", {}, { category = "Menus" }))
    assert.is_true(m.group("guild-7"))
    assert.is_true(m.send({ type = "track", event = "raw" }))
    assert.is_true(t:flush(5000))
    local msgs = messages(path)
    assert.are.equal(6, #msgs)
    for _, msg in ipairs(msgs) do
      assert.are.same({ name = "speedrun", version = "1.2.0" }, msg.context.mod)
    end
    assert.are.equal("fr", msgs[3].context.locale)
    assert.are.equal("Menus", msgs[4].category)
    assert.are.equal("integer", math.type(msgs[2].properties.duration_ms))
  end)

  it("rate limits each mod on its own", function()
    local chatty, quiet = t:mod("chatty", "1", 3), t:mod("quiet", "1", 3)
    local ok, refused, last_err = 0, 0, nil
    for i = 1, 100 do
      local r, err = chatty.track("tick", { i = i })
      if r then ok = ok + 1 else refused, last_err = refused + 1, err end
    end
    assert.are.equal(6, ok) -- the burst: twice the rate
    assert.are.equal(94, refused)
    assert.are.equal("rate limited (mod chatty: 3 events/s)", last_err)
    assert.is_true(quiet.track("still fine"))
    local s = chatty.stats()
    assert.are.same({ mod = "chatty", version = "1", accepted = 6, rejected = 0, rate_limited = 94,
                      max_events_per_second = 3.0, burst = 6.0 }, s)
    assert.are.equal(1, quiet.stats().accepted)
    assert.is_true(t:flush(5000))
    assert.are.equal(7, #messages(path))
  end)

  it("has no identity or lifecycle calls", function()
    local m = t:mod("sneaky")
    for _, name in ipairs({ "identify", "alias", "reset", "flush", "close", "session_start", "reload", "mod" }) do
      assert.is_nil(m[name])
    end
    local ok, err = m.send({ type = "identify", userId = "someone-else" })
    assert.is_nil(ok)
    assert.are.equal("type: identify and alias are for the host, not mods (track, page, screen, group)", err)
    assert.are.equal(1, m.stats().rejected)
    assert.are.equal(t:session().anonymousId, m.session().anonymousId)
    assert.are.equal(tally.null, m.null)
    assert.are.equal("[]", m.json.encode(m.array()))
  end)

  it("checks its arguments", function()
    assert.error_matches(function() t:mod() end, "bad argument #1 to 'mod' (string expected, got no value)", 1, true)
    assert.error_matches(function() t:mod("m", 1) end, "bad argument #2 to 'mod' (string or nil expected, got number)", 1, true)
    local none, err = t:mod("")
    assert.is_nil(none)
    assert.are.equal("name: expected 1 to 255 bytes of UTF-8", err)
    none, err = t:mod("m", nil, -1)
    assert.is_nil(none)
    assert.are.equal("max_events_per_second: expected a number >= 0 (0: no limit)", err)
    local m = t:mod("m")
    assert.error_matches(function() m.track(5) end, "bad argument #1 to 'track' (string expected, got number)", 1, true)
    assert.error_matches(function() m:track(5) end, "bad argument #1 to 'track' (string expected, got number)", 1, true)
  end)

  it("keeps its handle alive and fails once the handle is closed", function()
    local m = t:mod("m")
    assert.is_true(t:close(5000))
    assert.error_matches(function() m.track("late") end, "tally: the handle is closed", 1, true)
  end)
end)

describe("the example mods", function()
  -- the same libraries the game opens for its mods (no io, os, require)
  local function load_mod(file, mod)
    local env = { tally = mod, print = function() end, table = table, string = string, math = math,
                  ipairs = ipairs, pairs = pairs, type = type, tostring = tostring }
    return assert(loadfile("examples/game/mods/" .. file, "t", env))()
  end

  it("speedrun reports levels with their time, score and personal best", function()
    local t, path = open_file()
    local hooks = load_mod("speedrun.lua", t:mod("speedrun", "1.2.0", 20))
    hooks.on_level_start({ level = 1 })
    hooks.on_level_complete({ level = 1, duration_ms = 23400, score = 1067, coins = 7 })
    hooks.on_level_start({ level = 1 })
    hooks.on_level_complete({ level = 1, duration_ms = 22900, score = 1371, coins = 10 })
    assert.is_true(t:close(5000))
    local all, m, best = messages(path), {}, {}
    for _, msg in ipairs(all) do
      if msg.event == "Personal Best" then best[#best + 1] = msg else m[#m + 1] = msg end
    end
    assert.are.equal(4, #m)
    assert.are.same({ "level started", 1 }, { m[1].event, m[1].properties.level })
    assert.are.same({ level = 1, duration_ms = 23400, score = 1067, personal_best = true,
                      previous_best_ms = tally.null }, m[2].properties)
    assert.are.same({ level = 1, duration_ms = 22900, score = 1371, personal_best = true,
                      previous_best_ms = 23400 }, m[4].properties)
    assert.are.same({ name = "speedrun", version = "1.2.0" }, m[2].context.mod)
    -- no rules here: the mod's own spelling, which examples/rules fixes (tests/cli/test_demo.sh)
    assert.are.same({ { level = 1, durationMs = 23400 }, { level = 1, durationMs = 22900 } },
                    { best[1].properties, best[2].properties })
    os.remove(path)
  end)

  it("achievements keeps unlocks that the rate limit refused and sends them later", function()
    local t, path = open_file()
    local mod = t:mod("achievements", "0.9.1", 5)
    local hooks = load_mod("achievements.lua", mod)
    hooks.on_level_start({ level = 1 })
    for c = 1, 30 do hooks.on_coin({ level = 1, coin = c }) end
    hooks.on_level_complete({ level = 1, duration_ms = 1, score = 5000, coins = 30 })
    local limited = mod.stats().rate_limited
    assert.is_true(limited > 0)
    assert.are.equal(10, mod.stats().accepted) -- the burst, all progress
    assert.is_true(t:flush(5000))
    local unlocked = 0
    for _, m in ipairs(messages(path)) do
      if m.event == "achievement unlocked" then unlocked = unlocked + 1 end
    end
    assert.are.equal(0, unlocked) -- still pending: no tokens left
    os.execute("sleep 0.5") -- the loading screen: 2.5 tokens
    hooks.on_menu()
    assert.is_true(t:close(5000))
    local ids = {}
    for _, m in ipairs(messages(path)) do
      if m.event == "achievement unlocked" then ids[#ids + 1] = m.properties.achievement_id end
    end
    assert.are.same({ "first_clear", "high_score" }, ids)
    os.remove(path)
  end)
end)

describe("the game", function()
  local build = os.getenv("TALLY_BUILD") or "build/release"
  local game = build .. "/examples/game"

  local function sh_ok(cmd)
    local ok = os.execute(cmd)
    return ok == true or ok == 0
  end

  local function sql(db, query)
    local p = assert(io.popen(("sqlite3 -batch -noheader %q %q"):format(db, query)))
    local out = p:read("a")
    p:close()
    return (out:gsub("%s+$", ""))
  end

  it("plays a session into the sqlite events table", function()
    if not sh_ok("test -x " .. game) or not sh_ok("command -v sqlite3 >/dev/null") then
      pending("needs " .. game .. " (make demo-bins) and the sqlite3 CLI")
      return
    end
    local dir = tmp("")
    assert.is_true(sh_ok("mkdir -p " .. dir))
    local events, store = dir .. "/events.db", dir .. "/store.db"
    -- no rules (whatever examples/rules holds today), no loading screens: fast and deterministic
    local p = assert(io.popen(("%s --events %s --store %s --rules %s/none --loading-ms 0 2>&1"):format(game, events, store, dir)))
    local out = p:read("a")
    local ok = p:close()
    assert.is_true(ok, out)
    assert.truthy(out:find("playing without rules", 1, true))
    assert.truthy(out:find("mod achievements", 1, true))

    assert.are.equal("5", sql(events, "SELECT count(*) FROM events WHERE event = 'level started'"))
    assert.are.equal("5|speedrun|1.2.0", sql(events, "SELECT count(*), json_extract(body, '$.context.mod.name'),"
      .. " json_extract(body, '$.context.mod.version') FROM events WHERE event = 'level completed'"))
    assert.are.equal("integer|integer|integer", sql(events, "SELECT typeof(json_extract(body, '$.properties.level')),"
      .. " typeof(json_extract(body, '$.properties.duration_ms')), typeof(json_extract(body, '$.properties.score'))"
      .. " FROM events WHERE event = 'level completed' LIMIT 1"))
    assert.are.equal("player-1001|Ada", sql(events, "SELECT user_id, json_extract(body, '$.traits.name') FROM events WHERE type = 'identify'"))
    assert.are.equal("player-1001|4.99|EUR|", sql(events, "SELECT user_id, json_extract(body, '$.properties.price'),"
      .. " json_extract(body, '$.properties.currency'), json_extract(body, '$.context.mod') FROM events WHERE event = 'item purchased'"))
    -- logout: a second anonymous id and a second session
    assert.are.equal("2|2", sql(events, "SELECT count(DISTINCT anonymous_id), count(DISTINCT session_id) FROM events"))
    assert.are.equal("0", sql(events, "SELECT count(*) FROM events WHERE user_id IS NOT NULL AND id > (SELECT max(id) FROM events WHERE event = 'item purchased')"))
    assert.are.equal("2", sql(events, "SELECT count(*) FROM events WHERE type = 'screen' AND name = 'Main Menu'"))
    -- every message a mod sent says which mod; the host's say nothing
    assert.are.equal("0", sql(events, "SELECT count(*) FROM events WHERE type = 'track' AND event NOT IN ('item purchased')"
      .. " AND json_extract(body, '$.context.mod.name') IS NULL"))
    assert.are.equal("achievements|speedrun", sql(events, "SELECT group_concat(n, '|') FROM (SELECT DISTINCT"
      .. " json_extract(body, '$.context.mod.name') AS n FROM events WHERE n IS NOT NULL ORDER BY n)"))
    os.execute(("rm -rf %q"):format(dir))
  end)
end)
