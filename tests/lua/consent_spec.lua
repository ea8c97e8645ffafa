-- Consent through the `tally` Lua module: t:consent{...} merges the device's preferences, stamps
-- later messages and decides which destinations get them; t:consent(false) opts out; bad
-- preferences are refused with the field named; mod tables have no consent function.
local tally = require("tally")
local files = require("tests.lua.helpers.files")
local tmp = files.tmp
local function lines(path) return #files.lines(path) end

local function messages(path) return files.ndjson(path, tally.json.decode) end

-- "a" needs analytics, "c" needs nothing
local function open_two(extra)
  local a, c = tmp(".ndjson"), tmp(".ndjson")
  local cfg = {
    destinations = { { type = "file", path = a, consent = "analytics" }, { type = "file", path = c } },
    log_level = "off", store = tmp(".db"),
  }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return assert(tally.open(cfg)), a, c, cfg
end

describe("t:consent", function()
  it("stamps later messages with the merged preferences and keeps others from destinations it does not grant", function()
    local t, a, c = open_two()
    assert.is_true(t:track("Before"))
    assert.is_true(t:consent({ analytics = false, advertising = true }))
    assert.is_true(t:track("Denied"))
    assert.is_true(t:consent({ analytics = true }))
    assert.is_true(t:track("Granted"))
    assert.is_true(t:flush(10000))
    local got = messages(c)
    assert.are.equal(3, #got)
    assert.is_nil(got[1].context.consent)
    assert.are.same({ analytics = false, advertising = true }, got[2].context.consent.categoryPreferences)
    assert.are.same({ analytics = true, advertising = true }, got[3].context.consent.categoryPreferences)
    local to_a = messages(a)
    assert.are.equal(1, #to_a)
    assert.are.equal("Granted", to_a[1].event)
    local s = t:stats()
    assert.are.equal(2, s.destinations[1].consent_withheld)
    t:close(5000)
  end)

  it("holds messages until the first decision with consent_required", function()
    local t, a, c = open_two({ consent_required = true })
    assert.is_true(t:track("Held"))
    assert.is_true(t:flush(10000))
    assert.are.equal(0, lines(c))
    assert.is_true(t:consent({ analytics = false, other = true }))
    assert.is_true(t:flush(10000))
    assert.are.equal(1, lines(c))
    assert.are.equal(0, lines(a))
    assert.are.equal(1, t:stats().destinations[1].consent_purged)
    t:close(5000)
  end)

  it("opts out with false: calls succeed, nothing is kept, counted; opting in resumes", function()
    local t, a, c = open_two()
    assert.is_true(t:consent({ analytics = true }))
    assert.is_true(t:consent(false))
    assert.is_true(t:track("Out"))
    assert.is_true(t:flush(10000))
    assert.are.equal(0, lines(c))
    assert.are.equal(1, t:stats().opted_out)
    assert.is_true(t:consent({ analytics = true }))
    assert.is_true(t:track("Back"))
    assert.is_true(t:flush(10000))
    assert.are.equal(1, lines(a))
    assert.are.equal(1, lines(c))
    t:close(5000)
  end)

  it("keeps the preferences across close and open", function()
    local t, a, c, cfg = open_two()
    assert.is_true(t:consent({ analytics = false, x = true }))
    t:close(5000)
    t = assert(tally.open(cfg))
    assert.is_true(t:track("Later"))
    assert.is_true(t:flush(10000))
    assert.are.equal(0, lines(a))
    assert.are.same({ analytics = false, x = true }, messages(c)[1].context.consent.categoryPreferences)
    t:close(5000)
  end)

  it("refuses preferences that are not booleans, naming the field, and changes nothing", function()
    local t, a, c = open_two()
    assert.is_true(t:consent({ analytics = true }))
    local ok, err = t:consent({ analytics = 1 })
    assert.is_nil(ok)
    assert.are.equal("consent.analytics: expected true or false", err)
    ok, err = t:consent({ [string.rep("k", 65)] = true })
    assert.is_nil(ok)
    assert.truthy(err:find("over the 64-byte limit", 1, true))
    ok, err = t:consent({ true })
    assert.is_nil(ok)
    assert.truthy(err:find("consent: expected a table with string keys", 1, true))
    assert.error_matches(function() t:consent("yes") end, "bad argument #1 to 'consent' (table expected, got string)", 1, true)
    assert.is_true(t:track("Still"))
    assert.is_true(t:flush(10000))
    assert.are.same({ analytics = true }, messages(c)[1].context.consent.categoryPreferences)
    assert.are.equal(1, lines(a))
    t:close(5000)
  end)

  it("is not offered to mods: consent belongs to the host", function()
    local t = open_two()
    local m = t:mod("some-mod", "1.0")
    assert.is_nil(m.consent)
    assert.is_nil(rawget(m, "consent"))
    t:close(5000)
  end)
end)
