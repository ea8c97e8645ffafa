-- t:forget(id) in the Lua module: the count of erased messages, only that id's, the identity reset
-- when it is the device's, the bytes gone from the store file, and bad ids refused naming the field.
local tally = require("tally")
local files = require("tests.lua.helpers.files")

-- A file destination that writes nothing before a flush: everything stays queued in the store.
local function open_queued()
  local out, store = files.tmp(".ndjson"), files.tmp(".db")
  local t = assert(tally.open({
    destinations = { { type = "file", path = out } },
    store = store, flush_at = 1000, flush_interval_ms = 3600000, log_level = "off",
  }))
  return t, out, store
end

local function users(path)
  local seen = {}
  for _, m in ipairs(files.ndjson(path, tally.json.decode)) do seen[#seen + 1] = m.userId or m.anonymousId end
  return table.concat(seen, ",")
end

describe("t:forget", function()
  it("erases the id's queued messages, returns their count and keeps the others", function()
    local t, out, store = open_queued()
    for i = 1, 6 do
      assert(t:send({ type = "track", event = "E", userId = i % 2 == 0 and "alice" or "bob",
                      properties = { mark = i % 2 == 0 and "GONE-e41b" or "KEEP-07aa" } }))
    end
    assert.are.equal(3, t:forget("alice"))
    assert.are.equal(0, t:forget("alice"))
    local raw = files.read(store) .. files.read(store .. "-wal")
    assert.is_nil(raw:find("GONE-e41b", 1, true))
    assert.truthy(raw:find("KEEP-07aa", 1, true))
    assert(t:flush(10000))
    assert.are.equal("bob,bob,bob", users(out))
    assert(t:close())
  end)

  it("resets the device identity when it is the id", function()
    local t = open_queued()
    assert(t:identify("carol"))
    assert(t:track("E"))
    assert.are.equal(2, t:forget("carol")) -- the identify and the track
    local s = t:session()
    assert.is_nil(s.userId)
    local anon = s.anonymousId
    assert(t:track("F"))
    assert.are.equal(1, t:forget(anon))
    assert.are_not.equal(anon, t:session().anonymousId)
    assert(t:close())
  end)

  it("refuses bad ids naming the field, erasing nothing", function()
    local t, out = open_queued()
    assert(t:track("E", nil))
    local ok, err = t:forget("")
    assert.is_nil(ok)
    assert.are.equal("forget: id: empty (expected a userId or anonymousId)", err)
    ok, err = t:forget(nil)
    assert.is_nil(ok)
    assert.are.equal("forget: id: expected a string (a userId or anonymousId)", err)
    ok, err = t:forget("a\0b")
    assert.is_nil(ok)
    assert.are.equal("forget: id: holds a NUL byte", err)
    ok, err = t:forget(string.rep("x", 32769))
    assert.is_nil(ok)
    assert.truthy(err:find("id: 32769 bytes, over the 32768-byte limit", 1, true))
    assert(t:flush(10000))
    assert.are.equal(1, #files.lines(out))
    assert(t:close())
  end)
end)
