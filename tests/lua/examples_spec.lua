-- examples/rules/*.lua through the product's own rule chain as `tally check` runs it (the CLI
-- prints every result and violation, so codes and texts are checked), and the sandbox the product
-- loads them in, seen from a rule. examples_runtime_spec.lua runs the same scenarios through a
-- runtime opened with the Lua module.
local chain = require("tests.lua.helpers.chain")
local examples = require("tests.lua.helpers.examples")

local DIR = "examples/rules"

local Outcome = {}
Outcome.__index = Outcome
function Outcome:expect_codes(codes) assert.same(codes, self.report:codes()) end
function Outcome:expect_text(pattern) assert.matches(pattern, self.report:texts()) end

-- A message every example but user_type acts on (it logs each fix): their log lines come in chain order.
local CALL = { type = "track", event = "Call Ended By Patient", userId = "u1",
               properties = { channelId = "ep-9", userType = "Patient" } }

examples.describe("tally check", {
  run = function(msg)
    local out, rep = chain.check_one(DIR, msg)
    assert.same({}, rep.errors)
    return out, setmetatable({ report = rep }, Outcome)
  end,
  expect_order = function(names)
    local _, rep, run = chain.check_one(DIR, CALL)
    assert.matches("^rules: " .. #names .. " scripts from " .. DIR, run.text)
    local rank, last = {}, 0
    for i, n in ipairs(names) do rank[n] = i end
    for _, l in ipairs(rep.logs) do
      local r = rank[l.text:match("^rule ([%w_]+):")]
      assert.is_not_nil(r, l.text)
      assert.is_true(r >= last, l.text)
      last = r
    end
    assert.equal(rank.flatten, last)
  end,
  expect_loaded = function(n)
    local reports, run = chain.check(DIR, { CALL })
    assert.matches("^rules: " .. n .. " scripts from " .. DIR, run.text)
    assert.same({}, reports[1].errors)
    assert.equal(0, run.status)
  end,
}, { describe = describe, it = it, assert = assert })

describe("examples/rules, both ways", function()
  it("gives every message the same result as the other way does", function()
    local msgs = {
      { type = "track", event = "Call Ended By Patient", userId = "u1", properties = { channelId = "ep-9" } },
      { type = "track", event = "login", userId = "u", properties = {} },
      { type = "identify", userId = "u1", traits = { firstName = "Peter" } },
    }
    local delivered = chain.runtime(DIR, msgs)
    local reports = chain.check(DIR, msgs)
    assert.equal(#msgs, #delivered)
    assert.equal(#msgs, #reports)
    for i, d in ipairs(delivered) do
      local c = reports[i].results[1]
      -- ids, timestamps and the session are the runtime's (it runs in client mode); the rules' work is the same
      for _, k in ipairs{ "type", "event", "userId", "properties", "traits" } do assert.same(c[k], d[k], k) end
    end
  end)
end)

-- The sandbox the product loads the examples in, seen from a rule: what it keeps and what it hides.
describe("the rule sandbox, as a rule sees it", function()
  -- A rule that reports what it sees in the message's properties.
  local function probe(body)
    local dir = chain.rules_dir{ ["10_probe.lua"] = "return { name = 'probe', process = function(m, ctx)\n"
      .. "  local seen = {}\n" .. body .. "\n  m.properties = seen\n  return m end }\n" }
    local out, rep = chain.check_one(dir, { type = "track", event = "probe run", userId = "u" })
    assert.same({}, rep.errors)
    assert.equal(1, #out)
    return out[1].properties, rep
  end

  it("has no io, os, debug, load, dofile or package", function()
    local seen, rep = probe[[
      print("probe", "says hi")
      for _, name in ipairs{ "io", "os", "debug", "load", "loadfile", "dofile", "package", "_G", "print" } do
        seen[name] = type(_ENV[name])
      end
      local os_fields = {}
      for k in pairs(os) do os_fields[#os_fields + 1] = k end
      table.sort(os_fields)
      seen.os_fields = table.concat(os_fields, ",")
      seen.g_is_env = _G == _ENV]]
    for _, name in ipairs{ "io", "debug", "loadfile", "dofile", "package" } do
      assert.equal("nil", seen[name], name)
    end
    -- the product keeps a clock-only os (time, clock, date, difftime), not the whole library
    assert.equal("table", seen.os)
    assert.equal("clock,date,difftime,time", seen.os_fields)
    -- and _G, the rule's own environment, not the interpreter's globals
    assert.is_true(seen.g_is_env)
    -- and a print that writes to the runtime's log, not to stdout
    assert.equal("function", seen.print)
    assert.equal(1, #rep.logs)
    assert.equal("info", rep.logs[1].level)
    -- (the log escapes the tab print puts between its arguments)
    assert.equal("lua: probe\\tsays hi", rep.logs[1].text:sub(1, #"lua: probe\\tsays hi"))
    -- load stays, text chunks only (tests/lua/sandbox_spec.lua and tests/c/test_rules.c refuse bytecode)
    assert.equal("function", seen.load)
  end)

  it("resolves only tally.* modules", function()
    local seen = probe[[
      seen.io = pcall(require, "io")
      seen.busted = pcall(require, "busted")
      seen.naming = type(require("tally.naming"))]]
    assert.same({ io = false, busted = false, naming = "table" }, seen)
  end)

  it("loads every bundled module without writing a global", function()
    local seen = probe[[
      local before = {}
      for k in pairs(_ENV) do before[k] = true end
      for _, m in ipairs{ "util", "naming", "plan", "enrich", "sample", "crownpeak" } do
        seen[m] = type(require("tally." .. m))
      end
      local written = {}
      for k in pairs(_ENV) do if not before[k] then written[#written + 1] = tostring(k) end end
      seen.written = table.concat(written, ",")]]
    assert.same({ util = "table", naming = "table", plan = "table", enrich = "table", sample = "table",
                  crownpeak = "table", written = "" }, seen)
  end)

  it("lets the modules use the host's array tag and null", function()
    local seen = probe[[
      local util = require("tally.util")
      seen.same_null = util.null == tally.null
      seen.is_null = util.is_null(tally.null)
      seen.tag = getmetatable(util.array()) == getmetatable(tally.array({}))
      seen.is_array = util.is_array(tally.array({}))]]
    assert.same({ same_null = true, is_null = true, tag = true, is_array = true }, seen)
  end)
end)
