-- tally.open{} reads keys through the same alias table as tally_config_set: Segment's camelCase
-- names work, and a misspelt key is refused with the nearest real one named.
local tally = require("tally")
local files = require("tests.lua.helpers.files")

describe("tally.open keys", function()
  it("accepts Segment's camelCase option names", function()
    local path = files.tmp(".ndjson")
    local t = assert(tally.open{ out = path, flushAt = 1, flushInterval = 50, maxRetries = 0, logLevel = "off" })
    t:track("Camel Cased", { n = 1 })
    assert.is_true(t:flush(5000))
    t:close()
    local msgs = files.ndjson(path, tally.json.decode)
    assert.are.equal(1, #msgs)
    assert.are.equal("Camel Cased", msgs[1].event)
  end)

  it("checks an alias like its key, naming the key", function()
    local t, err = tally.open{ out = files.tmp(".ndjson"), flushAt = 0 }
    assert.is_nil(t)
    assert.truthy(err:find("flush_at: expected an integer from 1 to 10000", 1, true))
  end)

  it("names the nearest key for a misspelt one", function()
    local t, err = tally.open{ out = files.tmp(".ndjson"), flush_att = 5 }
    assert.is_nil(t)
    assert.are.equal('unknown configuration key "flush_att" (did you mean "flush_at"?)', err)
  end)
end)
