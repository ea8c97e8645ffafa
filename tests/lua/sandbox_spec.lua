-- The sandbox escape list, from the Lua side: each hostile rule script runs inside a real runtime
-- opened with `require "tally"`; the attack message must be dropped (the rule fails closed), the
-- script's failure counted, and the next message must still go through the rules that work.
-- (tests/c/test_rules.c holds the same list against the C API, with the reason of each stop.)
local tally = require("tally")

local files = require("tests.lua.helpers.files")
local tmpdir, write, read = files.tmpdir, files.write, files.read

local marker = [[
return { name = "marker", stage = "enrichment", process = function(m)
  m.properties = m.properties or {}
  m.properties.marked = true
  return m
end }
]]

local function run_attack(attack)
  local dir = tmpdir()
  write(dir .. "/10_hostile.lua", ([[
return { name = "hostile", process = function(m, ctx)
  if m.event == "attack" then
%s
  end
  return m
end }
]]):format(attack))
  write(dir .. "/20_marker.lua", marker)
  local out = dir .. "/out.ndjson"
  local t = assert(tally.open{
    rules = dir, log_level = "off", lua_instructions = 200000, lua_memory = 16 * 1024 * 1024,
    destinations = { { type = "file", path = out } },
  })
  assert(t:track("attack", {}))
  assert(t:track("after", {}))
  assert(t:flush(20000))
  local stats = t:stats()
  assert(t:close(5000))
  return read(out), stats
end

local attacks = {
  ["io is absent"] = "io.open('/etc/passwd'):read('a')",
  ["os.execute is absent"] = "os.execute('touch /tmp/tally-pwned')",
  ["debug is absent"] = "debug.sethook()",
  ["package.loadlib is absent"] = "package.loadlib('/lib/x86_64-linux-gnu/libc.so.6', 'system')",
  ["dofile and loadfile are absent"] = "local f = dofile or loadfile; f('/etc/passwd')",
  ["string.dump is absent"] = "load(string.dump(function() end))",
  ["binary chunks are refused by load"] = "assert(load('\\27Lua\\84\\0\\25\\147\\13\\10\\26\\10'))",
  ["the string metatable is hidden"] = "getmetatable('').__index.upper = nil",
  ["native require is refused"] = "require('os')",
  ["while true do end is stopped"] = "while true do end",
  ["an infinite loop inside pcall is stopped"] = "while true do pcall(function() while true do end end) end",
  ["an infinite loop in a coroutine is stopped"] = "coroutine.wrap(function() while true do end end)()",
  ["string.rep bombs are contained"] = "local s = string.rep('x', 2^30)",
  ["string.rep of 2^40 is contained"] = "local s = string.rep('x', 2^40)",
  ["table bombs are contained"] = "local t = {} for i = 1, 1e9 do t[i] = { string.rep('x', 4096) .. i } end",
  ["__gc finalizers are refused"] = "setmetatable({}, { __gc = function() while true do end end })",
}

describe("sandbox", function()
  for name, attack in pairs(attacks) do
    it(name .. "; the host lives and the next message is processed", function()
      local out, stats = run_attack(attack)
      assert.is_nil(out:find('"event":"attack"', 1, true))
      assert.truthy(out:find('"event":"after"', 1, true))
      assert.truthy(out:find('"marked":true', 1, true))
      local hostile
      for _, r in ipairs(stats.rules) do
        if r.name == "hostile" then hostile = r end
      end
      assert.are.equal(2, hostile.calls)
      assert.are.equal(1, hostile.errors)
    end)
  end

  it("keeps globals of one script out of another", function()
    local dir = tmpdir()
    write(dir .. "/10_a.lua", [[
leaked = "yes"
string.upper = nil
return { name = "a", process = function(m) shared_state = 1; return m end }
]])
    write(dir .. "/20_b.lua", [[
return { name = "b", process = function(m)
  m.properties = { leaked = tostring(leaked), shared = tostring(shared_state), upper = string.upper("ok") }
  return m
end }
]])
    local out = dir .. "/out.ndjson"
    local t = assert(tally.open{ rules = dir, log_level = "off", destinations = { { type = "file", path = out } } })
    assert(t:track("E", {}))
    assert(t:close(5000))
    assert.truthy(read(out):find('"properties":{"leaked":"nil","shared":"nil","upper":"OK"}', 1, true))
  end)
end)
