-- How long one hostile table passed to tally.track (or a mod's track) holds the caller's thread:
-- the game's own thread, for a mod. Each shape is refused at the call, so no message reaches the
-- background threads and os.clock() (process CPU time) is the caller's time. Prints the worst of
-- `reps` calls per shape, then the worst overall.
--
--   make luamod && lua5.4 bench/hostile_tables.lua [reps]
package.cpath = "build/release/luamod/?.so;" .. package.cpath
local tally = require("tally")
local reps = tonumber(arg and arg[1]) or 5

local dir = os.tmpname()
os.remove(dir)
local t = assert(tally.open({ destinations = { { type = "file", path = dir .. ".ndjson" } },
                              store = ":memory:", log_level = "off" }))
local mod = t:mod("hostile")

local function dag(levels, leaf)
  local u = leaf
  for _ = 1, levels do u = { a = u, b = u } end
  return u
end
local function emptied(n) -- n slots lua_next must skip, one live key
  local big = { x = 1 }
  for i = 1, n do big[i] = true end
  for i = 1, n do big[i] = nil end
  return big
end

local shapes = {
  { "2-way cycle", function() local a, b = {}, {} a.x, a.y, b.x, b.y = b, b, a, a return a end },
  { "40-level DAG, string leaf", function() return dag(40, "leaf") end },
  { "40-level DAG, NaN leaf (error path)", function() return dag(40, 0 / 0) end },
  { "63-level DAG (too deep)", function() return dag(63, 1) end },
  { "40-level DAG over a table of 1M emptied slots", function() return dag(40, emptied(1000000)) end },
  { "1M integer keys and one string key", function()
      local t2 = { s = 1 } for i = 1, 1000000 do t2[i] = i end return t2 end },
  { "16 MiB string", function() return { s = string.rep("x", 16 << 20) } end },
  { "16 MiB key", function() return { [string.rep("k", 16 << 20)] = 1 } end },
  { "2500 keys, ~30 KB, accepted (+ worker CPU)", function()
      local p = {} for i = 1, 2500 do p["k" .. i] = i end return p end },
}

local worst, worst_name = 0, ""
for _, s in ipairs(shapes) do
  local name, build = s[1], s[2]
  local v = build()
  local max, res, err = 0, nil, nil
  for r = 1, reps do
    local caller = (r % 2 == 0) and function(p) return mod.track("e", p) end
                                 or function(p) return t:track("e", p) end
    local t0 = os.clock()
    res, err = caller(v)
    local dt = os.clock() - t0
    if dt > max then max = dt end
  end
  print(string.format("%-48s worst %8.3f ms  %s", name, max * 1000,
                      res and "accepted" or ("refused: " .. tostring(err):sub(1, 70))))
  if max > worst then worst, worst_name = max, name end
end
print(string.format("worst case: %.3f ms (%s)", worst * 1000, worst_name))
t:close(1000)
os.remove(dir .. ".ndjson")
