-- tally.open with configurations that tally_open refuses: an error value, never a crash of the
-- interpreter (issue 15: an endpoint without a write key was a SIGSEGV in every host).
local tally = require("tally")
local files = require("tests.lua.helpers.files")

describe("tally.open refusing a configuration", function()
  it("endpoint without write_key returns nil and the reason instead of crashing", function()
    local t, err = tally.open({ endpoint = "http://127.0.0.1:9", log_level = "off" })
    if os.getenv("TALLY_WRITE_KEY") then -- the environment supplies the key: then it opens
      assert.is_not_nil(t)
      t:close(0)
      return
    end
    assert.is_nil(t)
    assert.truthy(err:find("write_key: required with endpoint", 1, true))
  end)

  it("a missing rules folder returns nil and names it", function()
    local t, err = tally.open({ out = files.tmp(".ndjson"), rules = "/nonexistent/rules", log_level = "off" })
    assert.is_nil(t)
    assert.truthy(err:find("/nonexistent/rules", 1, true))
  end)
end)
