-- rule_threads through the Lua module: an option like any other key; in server mode one identity's
-- messages keep their order through several rule states; client mode refuses it, naming the field.
local tally = require("tally")
local files = require("tests.lua.helpers.files")

describe("rule_threads", function()
  it("keeps each identity's order with two rule states in server mode", function()
    local out = files.tmp(".ndjson")
    local t = assert(tally.open({ out = out, mode = "server", rule_threads = 2, log_level = "off" }))
    for i = 1, 200 do
      assert(t:send({ type = "track", event = "E", userId = "u" .. (i % 7), properties = { seq = i } }))
    end
    assert(t:flush(10000))
    assert(t:close())
    local last, n = {}, 0
    for _, m in ipairs(files.ndjson(out, tally.json.decode)) do
      assert.is_true(m.properties.seq > (last[m.userId] or 0))
      last[m.userId] = m.properties.seq
      n = n + 1
    end
    assert.are.equal(200, n)
  end)

  it("is refused in client mode, naming the field", function()
    local t, err = tally.open({ out = files.tmp(".ndjson"), rule_threads = 2, log_level = "off" })
    assert.is_nil(t)
    assert.truthy(tostring(err):find("rule_threads: 2 needs mode = server", 1, true))
  end)
end)
