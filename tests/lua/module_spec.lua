-- The `tally` Lua module (src/lua_module/tally_lua.c) under the host's lua5.4:
--   cd /work/main && lua5.4 "$(command -v busted)" --lpath="lua/?.lua;lua/?/init.lua" \
--     --cpath="build/release/luamod/?.so" tests/lua/module_spec.lua
-- Every message goes to a file destination in a temporary path and is read back from the NDJSON.
local tally = require("tally")
local files = require("tests.lua.helpers.files")
local tmp, lines = files.tmp, files.lines

local function messages(path) return files.ndjson(path, tally.json.decode) end

local function open_file(extra)
  local path = tmp(".ndjson")
  local cfg = { destinations = { { type = "file", path = path } }, log_level = "off" }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return assert(tally.open(cfg)), path
end

-- exact, position-free error texts from C (no "file:line:" prefix)
local function raises(fn, text)
  assert.error_matches(fn, text, 1, true)
end

local function fails(text, ok, err)
  assert.is_nil(ok)
  assert.are.equal(text, err)
end

describe("module", function()
  it("exports its version and the JSON sentinels", function()
    assert.are.equal("string", type(tally.version))
    assert.truthy(tally.version:match("^%d+%.%d+%.%d+$"))
    assert.are.equal("userdata", type(tally.null))
    assert.are.equal("userdata", type(tally.empty_array))
    assert.are_not.equal(tally.null, tally.empty_array)
    assert.are.equal("function", type(tally.open))
    assert.are.equal("function", type(tally.array))
    assert.are.equal("function", type(tally.json.encode))
    assert.are.equal("function", type(tally.json.decode))
  end)

  it("tags arrays so that empty ones stay arrays", function()
    local a = tally.array({})
    assert.are.equal("[]", tally.json.encode(a))
    assert.are.equal("[]", tally.json.encode(tally.array()))
    assert.are.equal("{}", tally.json.encode({}))
    assert.are.equal("[]", tally.json.encode(tally.empty_array))
    local filled = tally.array({ 1, 2 })
    assert.are.equal("[1,2]", tally.json.encode(filled))
    raises(function() tally.array("x") end, "bad argument #1 to 'array' (table expected, got string)")
  end)

  describe("json", function()
    it("keeps integers, floats, null and empty arrays exactly", function()
      local v = assert(tally.json.decode('{"n":9007199254740993,"f":0.1,"one":1.0,"z":null,"a":[],"o":{}}'))
      assert.are.equal("integer", math.type(v.n))
      assert.are.equal(9007199254740993, v.n)
      assert.are.equal("float", math.type(v.f))
      assert.are.equal(0.1, v.f)
      assert.are.equal("float", math.type(v.one))
      assert.are.equal(tally.null, v.z)
      assert.are.equal('{"a":[],"f":0.1,"n":9007199254740993,"o":{},"one":1.0,"z":null}', tally.json.encode(v))
      assert.are.equal("-9223372036854775808", tally.json.encode(math.mininteger))
      assert.are.equal("1e300", tally.json.encode(1e300))
      assert.are.equal('"a\\u0000b"', tally.json.encode("a\0b"))
    end)

    it("returns nil and an error for bad values, raises for bad argument types", function()
      local v, err = tally.json.decode('{"a":')
      assert.is_nil(v)
      assert.truthy(err:find("offset", 1, true))
      fails("NaN is not valid JSON", tally.json.encode(0 / 0))
      fails("a.b: function is not valid JSON", tally.json.encode({ a = { b = print } }))
      fails("table mixes string and integer keys", tally.json.encode({ 1, x = 2 }))
      local bad_utf8, e2 = tally.json.encode("\xff")
      assert.is_nil(bad_utf8)
      assert.truthy(e2:find("invalid UTF-8", 1, true))
      raises(function() tally.json.decode(5) end, "bad argument #1 to 'decode' (string expected, got number)")
      raises(function() tally.json.encode() end, "bad argument #1 to 'encode' (value expected)")
    end)
  end)
end)

-- Issue 14 #5, #6, #19, #20: hostile table graphs and texts, on the caller's (the game's) thread.
describe("conversions", function()
  local t, path
  before_each(function() t, path = open_file() end)
  after_each(function()
    t:close(1000)
    os.remove(path)
  end)

  local function cycle()
    local a, b = {}, {}
    a.x, a.y, b.x, b.y = b, b, a, a
    return a
  end
  local function dag(levels, leaf)
    local u = leaf
    for _ = 1, levels do u = { a = u, b = u } end
    return u
  end

  it("track refuses a 2-way cycle at once, from the host and from a mod", function()
    local m = t:mod("hostile")
    local t0 = os.clock()
    fails("properties.x.x: cycle: the table contains itself", t:track("e", cycle()))
    fails("properties.x.x: cycle: the table contains itself", m.track("e", cycle()))
    fails("x.x.x: cycle: the table contains itself", m.send({ type = "track", event = "e", x = cycle() }))
    fails("opts.context.x.x: cycle: the table contains itself", m.track("e", {}, { context = cycle() }))
    assert.is_true(os.clock() - t0 < 5) -- not exponential (it was 2^64 visits)
    assert.is_true(t:flush(5000))
    assert.are.equal(0, #lines(path))
  end)

  it("track stops a 40-level DAG at the 32768-byte message limit, holding the caller briefly", function()
    local m = t:mod("hostile")
    local worst = 0
    for _, call in ipairs({
      function() return t:track("e", dag(40, "leaf")) end,
      function() return m.track("e", dag(40, 1)) end,
      function() return m.send({ type = "track", event = "e", properties = dag(40, {}) }) end,
    }) do
      local t0 = os.clock()
      local ok, err = call()
      worst = math.max(worst, os.clock() - t0)
      assert.is_nil(ok)
      assert.truthy(err:find("too large: the JSON text would exceed the 32768-byte limit", 1, true), err)
    end
    assert.is_true(worst < 2) -- ~1 ms each: 2^40 nodes before
  end)

  it("track writes a small DAG out in full", function()
    assert.is_true(t:track("e", dag(3, { 1 })))
    assert.is_true(t:flush(5000))
    local p = messages(path)[1].properties
    assert.are.same({ 1 }, p.a.b.a)
    assert.are.equal('{"a":{"a":[1],"b":[1]},"b":{"a":[1],"b":[1]}}', tally.json.encode(p.b))
  end)

  it("json.encode refuses cycles and stops a DAG at its 1 MiB limit", function()
    fails("x.x: cycle: the table contains itself", tally.json.encode(cycle()))
    local v, err = tally.json.encode(dag(40, "leaf"))
    assert.is_nil(v)
    assert.truthy(err:find("too large: the JSON text would exceed the 1048576-byte limit", 1, true), err)
  end)

  it("json.decode refuses a raw NUL anywhere in the text", function()
    fails("trailing characters at offset 7", tally.json.decode('{"a":1}\0'))
    fails("control character in string at offset 7", tally.json.decode('{"a":"x\0y"}'))
    assert.are.equal("x\0y", tally.json.decode('"x\\u0000y"'))
  end)

  it("json.decode gives integers beyond 64 bits as the nearest float", function()
    local v = assert(tally.json.decode('{"big":99999999999999999999,"neg":-9223372036854775809}'))
    assert.are.equal("float", math.type(v.big))
    assert.are.equal(1e20, v.big)
    assert.are.equal(-9223372036854775808.0, v.neg)
  end)
end)

describe("tally.open", function()
  it("takes configuration keys as strings, numbers, booleans and tables", function()
    local path = tmp(".ndjson")
    local t = assert(tally.open({ out = path, flush_at = 5, flush_interval_ms = 50.0, gzip = false,
                                  log_level = "off", rule_config = { naming = { style = "lower" } } }))
    assert.truthy(tostring(t):match("^tally%.handle"))
    assert.is_true(t:track("configured"))
    assert.is_true(t:close(5000))
    assert.are.equal(1, #lines(path))
    os.remove(path)
  end)

  it("returns nil and an error naming the key for bad values", function()
    fails('unknown configuration key "flush_att" (did you mean "flush_at"?)', tally.open({ flush_att = 1 }))
    fails('flush_at: expected an integer from 1 to 10000, got "0"', tally.open({ flush_at = 0 }))
    fails('flush_at: expected an integer from 1 to 10000, got "1.5"', tally.open({ flush_at = 1.5 }))
    fails('gzip: expected true or false, got "maybe"', tally.open({ gzip = "maybe" }))
    fails("destinations[0]: expected an object with a string \"type\"", tally.open({ destinations = { { path = "x" } } }))
    fails("log_level: a function is not a configuration value", tally.open({ log_level = print }))
    fails("configuration keys must be strings, got a number", tally.open({ "x" }))
    fails("destinations[0].bad: NaN is not valid JSON", tally.open({ destinations = { { type = "file", bad = 0 / 0 } } }))
    local t, err = tally.open({ destinations = { { type = "carrier-pigeon" } }, log_level = "off" })
    assert.is_nil(t)
    assert.truthy(err:find("carrier-pigeon", 1, true))
  end)

  it("reads a Lua configuration file", function()
    local conf, out = tmp(".lua"), tmp(".ndjson")
    local f = assert(io.open(conf, "w"))
    f:write(("return { log_level = 'off', out = %q, flush_at = 2 * 5 }"):format(out))
    f:close()
    local t = assert(tally.open(conf))
    assert.is_true(t:track("from a config file"))
    assert.is_true(t:close(5000))
    assert.are.equal(1, #lines(out))
    local none, err = tally.open("/nonexistent/tally.lua")
    assert.is_nil(none)
    assert.truthy(err:find("/nonexistent/tally.lua", 1, true))
    os.remove(conf)
    os.remove(out)
  end)

  it("needs a destination", function()
    if os.getenv("TALLY_WRITE_KEY") then return end -- the environment would provide one
    local t, err = tally.open({ log_level = "off" })
    assert.is_nil(t)
    assert.truthy(err:find("no destination", 1, true))
  end)

  it("raises for a wrong argument type", function()
    raises(function() tally.open(5) end, "bad argument #1 to 'open' (table, string or nil expected, got number)")
  end)
end)

describe("a handle", function()
  local t, path
  before_each(function() t, path = open_file() end)
  after_each(function()
    t:close(1000)
    os.remove(path)
  end)

  it("writes every message type in its Segment shape", function()
    assert.is_true(t:track("level completed", { level = 3 }))
    assert.is_true(t:page("Pricing", { path = "/pricing" }, { category = "Docs" }))
    assert.is_true(t:screen("Main Menu"))
    assert.is_true(t:identify("user-42", { email = "peter@initech.com" }))
    assert.is_true(t:group("initech", { plan = "enterprise" }))
    assert.is_true(t:alias("user-42"))
    assert.is_true(t:send({ type = "track", event = "raw", userId = "server-side", properties = { x = 1 } }))
    assert.is_true(t:flush(5000))
    local m = messages(path)
    assert.are.equal(7, #m)
    assert.are.same({ "track", "level completed", 3 }, { m[1].type, m[1].event, m[1].properties.level })
    assert.are.same({ "page", "Pricing", "Docs", "/pricing" }, { m[2].type, m[2].name, m[2].category, m[2].properties.path })
    assert.are.same({ "screen", "Main Menu" }, { m[3].type, m[3].name })
    assert.are.same({ "identify", "user-42", "peter@initech.com" }, { m[4].type, m[4].userId, m[4].traits.email })
    assert.are.same({ "group", "initech", "enterprise" }, { m[5].type, m[5].groupId, m[5].traits.plan })
    assert.are.same({ "alias", "user-42", m[1].anonymousId }, { m[6].type, m[6].userId, m[6].previousId })
    assert.are.same({ "track", "raw", "server-side" }, { m[7].type, m[7].event, m[7].userId })
    for _, msg in ipairs(m) do
      assert.truthy(msg.messageId:match("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$"))
      assert.truthy(msg.timestamp:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"))
      assert.are.equal("tally", msg.context.library.name)
    end
  end)

  it("converts tables exactly", function()
    assert.is_true(t:track("exact", {
      n = 9007199254740993, f = 0.1, one = 1.0, neg = -5, big = math.maxinteger,
      a = tally.empty_array, b = tally.array({}), z = tally.null, o = {},
      nested = { list = { 1, "two", { three = 3.5 } }, flag = true },
      s = "café",
    }))
    assert.is_true(t:flush(5000))
    local line = lines(path)[1]
    assert.truthy(line:find('"properties":{"a":[],"b":[],"big":9223372036854775807,"f":0.1,"n":9007199254740993,'
      .. '"neg":-5,"nested":{"flag":true,"list":[1,"two",{"three":3.5}]},"o":{},"one":1.0,"s":"café","z":null}', 1, true))
    local p = messages(path)[1].properties
    assert.are.equal("integer", math.type(p.n))
    assert.are.equal(9007199254740993, p.n)
    assert.are.equal("float", math.type(p.f))
    assert.are.equal(0.1, p.f)
    assert.are.equal("float", math.type(p.one))
    assert.are.equal(tally.null, p.z)
    assert.are.equal("[]", tally.json.encode(p.a))
  end)

  it("keeps strings with NUL bytes whole", function()
    assert.is_true(t:track("a\0b", { k = "x\0y" }))
    assert.is_true(t:flush(5000))
    local m = messages(path)[1]
    assert.are.equal("a\0b", m.event)
    assert.are.equal("x\0y", m.properties.k)
  end)

  it("keeps the fields given in opts exactly", function()
    local ctx = { ip = "10.1.2.3", campaign = { name = "spring", n = 9007199254740993 } }
    assert.is_true(t:track("opted", { x = 1 }, {
      userId = "u-7", anonymousId = "anon-7", messageId = "msg-0001",
      timestamp = "2024-02-29T12:00:00.000Z", context = ctx, integrations = { All = false, Mixpanel = true },
    }))
    assert.is_true(t:identify(nil, { plan = "pro" }, { anonymousId = "anon-8" }))
    assert.is_true(t:page(nil, nil, { category = "Docs", messageId = "msg-0002" }))
    assert.is_true(t:alias("u-9", nil, { anonymousId = "anon-9" }))
    assert.is_true(t:alias("u-10", nil, {}))
    assert.is_true(t:flush(5000))
    local m = messages(path)
    assert.are.equal(5, #m)
    assert.are.same({ "u-7", "anon-7", "msg-0001", "2024-02-29T12:00:00.000Z" },
      { m[1].userId, m[1].anonymousId, m[1].messageId, m[1].timestamp })
    assert.are.equal("10.1.2.3", m[1].context.ip)
    assert.are.equal("integer", math.type(m[1].context.campaign.n))
    assert.are.equal(9007199254740993, m[1].context.campaign.n)
    assert.are.equal("tally", m[1].context.library.name) -- stamped next to the caller's context
    assert.are.same({ All = false, Mixpanel = true }, m[1].integrations)
    assert.are.same({ "identify", "anon-8", "pro" }, { m[2].type, m[2].anonymousId, m[2].traits.plan })
    assert.are.same({ "page", "Docs", "msg-0002" }, { m[3].type, m[3].category, m[3].messageId })
    assert.are.same({ "alias", "u-9", "anon-9" }, { m[4].type, m[4].userId, m[4].previousId })
    assert.are.equal(t:session().anonymousId, m[5].previousId)
  end)

  it("raises for wrong argument types", function()
    raises(function() t:track() end, "bad argument #1 to 'track' (string expected, got no value)")
    raises(function() t:track(5) end, "bad argument #1 to 'track' (string expected, got number)")
    raises(function() t:track("x", "props") end, "bad argument #2 to 'track' (table expected, got string)")
    raises(function() t:track("x", {}, "opts") end, "bad argument #3 to 'track' (table expected, got string)")
    raises(function() t:identify(42) end, "bad argument #1 to 'identify' (string or nil expected, got number)")
    raises(function() t:page(true) end, "bad argument #1 to 'page' (string or nil expected, got boolean)")
    raises(function() t:screen("x", 1) end, "bad argument #2 to 'screen' (table expected, got number)")
    raises(function() t:group(nil) end, "bad argument #1 to 'group' (string expected, got nil)")
    raises(function() t:alias(nil) end, "bad argument #1 to 'alias' (string expected, got nil)")
    raises(function() t:alias("u", 5) end, "bad argument #2 to 'alias' (string or nil expected, got number)")
    raises(function() t:send('{"type":"track"}') end, "bad argument #1 to 'send' (table expected, got string)")
    raises(function() t:flush("soon") end, "bad argument #1 to 'flush' (number expected, got string)")
    raises(function() t:flush(1.5) end, "bad argument #1 to 'flush' (number has no integer representation)")
    raises(function() t:mod(5) end, "bad argument #1 to 'mod' (string expected, got number)")
    raises(function() t.track("x") end, "bad argument #1 to 'track' (tally.handle expected, got string)")
  end)

  it("returns nil and an error naming the field for bad values", function()
    fails("event: must not be empty", t:track(""))
    fails("groupId: must not be empty", t:group(""))
    fails("event: invalid UTF-8 at byte 1", t:track("a\xff"))
    fails("properties.f: NaN is not valid JSON", t:track("x", { f = 0 / 0 }))
    fails("properties.list[1]: inf is not valid JSON", t:track("x", { list = { 1, math.huge } }))
    fails("traits.cb: function is not valid JSON", t:identify("u", { cb = print }))
    fails("properties: expected a JSON object", t:track("x", { 1, 2 }))
    fails("opts.userid: unknown option (userId, anonymousId, context, integrations, messageId, timestamp)",
      t:track("x", {}, { userid = "u" }))
    fails("opts.category: unknown option (userId, anonymousId, context, integrations, messageId, timestamp)",
      t:track("x", {}, { category = "c" }))
    fails("opts.timestamp: expected a string, got number", t:track("x", {}, { timestamp = 5 }))
    fails("opts.context: expected a table, got string", t:track("x", {}, { context = "c" }))
    fails("opts.integrations.x: NaN is not valid JSON", t:track("x", {}, { integrations = { x = 0 / 0 } }))
    fails("opts: keys must be strings", t:track("x", {}, { "u" }))
    fails("type: required (track, identify, page, screen, group or alias)", t:send({ event = "x" }))
    fails("event: required", t:send({ type = "track" }))
    fails("message: expected a JSON object", t:send({ 1 }))
    assert.is_true(t:flush(5000))
    assert.are.equal(0, #lines(path))
    -- the runtime counts what reached it; conversion errors are caught before
    local s = t:stats()
    assert.are.equal(0, s.accepted)
    assert.are.equal(7, s.rejected)
  end)

  it("follows the identity: anonymous, identified, reset, new session", function()
    local first = t:session()
    assert.are.equal("string", type(first.anonymousId))
    assert.are.equal(36, #first.anonymousId)
    assert.is_nil(first.userId)
    assert.is_nil(first.session) -- a session starts with the first message

    assert.is_true(t:screen("Main Menu"))
    assert.is_true(t:identify("user-1", { name = "Ada" }))
    assert.is_true(t:flush(5000)) -- t:session() shows what the worker has processed
    local logged_in = t:session()
    assert.are.equal("user-1", logged_in.userId)
    assert.are.equal(first.anonymousId, logged_in.anonymousId)
    assert.are.equal("integer", math.type(logged_in.session.index))
    assert.are.equal(1, logged_in.session.index)
    assert.are.equal("string", type(logged_in.session.id))
    assert.are.equal("string", type(logged_in.session.started_at))

    assert.is_true(t:reset())
    assert.is_true(t:track("after logout"))
    assert.is_true(t:flush(5000))
    local after = t:session()
    assert.is_nil(after.userId)
    assert.are_not.equal(first.anonymousId, after.anonymousId)
    assert.are_not.equal(logged_in.session.id, after.session.id)

    assert.is_true(t:session_start())
    assert.is_true(t:flush(5000))
    local again = t:session()
    assert.are.equal(after.anonymousId, again.anonymousId)
    assert.are_not.equal(after.session.id, again.session.id)
    assert.are.equal(after.session.index + 1, again.session.index)

    local m = messages(path)
    assert.are.same({ first.anonymousId, nil }, { m[1].anonymousId, m[1].userId })
    assert.are.same({ first.anonymousId, "user-1" }, { m[2].anonymousId, m[2].userId })
    assert.are.same({ after.anonymousId, nil }, { m[3].anonymousId, m[3].userId })
    assert.are.equal(after.session.id, m[3].context.session.id)
  end)

  it("reports stats as exact tables", function()
    assert.is_true(t:track("a"))
    assert.is_true(t:track("b"))
    assert.is_nil(t:track(""))
    assert.is_true(t:flush(5000))
    local s = t:stats()
    assert.are.equal("integer", math.type(s.accepted))
    assert.are.equal(2, s.accepted)
    assert.are.equal(1, s.rejected)
    assert.are.equal(1, #s.destinations)
    assert.are.equal("file:" .. path, s.destinations[1].name)
    assert.are.equal(2, s.destinations[1].delivered)
    assert.are.equal("[]", tally.json.encode(s.rules))
  end)

  it("reload needs rules", function()
    fails("reload: no rules configured", t:reload(1000))
  end)
end)

describe("rules", function()
  it("reload swaps the rules in", function()
    local dir = tmp("")
    assert(os.execute("mkdir -p " .. dir))
    local rule = dir .. "/10_tag.lua"
    local function write_rule(tag)
      local f = assert(io.open(rule, "w"))
      f:write(("return { name = 'tag', process = function(msg) msg.properties = msg.properties or {}; "
        .. "msg.properties.tag = %q; return msg end }"):format(tag))
      f:close()
    end
    write_rule("one")
    local t, path = open_file({ rules = dir })
    assert.is_true(t:track("first"))
    write_rule("two")
    assert.is_true(t:reload(5000))
    assert.is_true(t:track("second"))
    assert.is_true(t:close(5000))
    local m = messages(path)
    assert.are.equal("one", m[1].properties.tag)
    assert.are.equal("two", m[2].properties.tag)
    os.remove(rule)
    os.remove(dir)
    os.remove(path)
  end)
end)

describe("closing", function()
  it("flushes and closes; closing twice is fine; a closed handle raises", function()
    local t, path = open_file()
    assert.is_true(t:track("x"))
    assert.is_true(t:flush())
    assert.is_true(t:close(5000))
    assert.is_true(t:close())
    assert.are.equal("tally.handle (closed)", tostring(t))
    raises(function() t:track("y") end, "tally: the handle is closed")
    raises(function() t:stats() end, "tally: the handle is closed")
    assert.are.equal(1, #lines(path))
    os.remove(path)
  end)

  it("closes a to-be-closed handle at the end of its scope", function()
    local path
    do
      local t <close>, p = open_file()
      path = p
      assert.is_true(t:track("scoped"))
    end
    assert.are.equal(1, #lines(path))
    os.remove(path)
  end)

  it("closes a collected handle", function()
    local path
    do
      local t, p = open_file()
      path = p
      assert.is_true(t:track("collected"))
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(1, #lines(path))
    os.remove(path)
  end)

  it("keeps undelivered messages in the store for the next open", function()
    local store, path = tmp(".db"), tmp(".ndjson")
    local t = assert(tally.open({ store = store, out = path, log_level = "off" }))
    local anon = t:session().anonymousId
    assert.is_true(t:track("kept"))
    assert.is_true(t:close(5000))
    local t2 = assert(tally.open({ store = store, out = path, log_level = "off" }))
    assert.are.equal(anon, t2:session().anonymousId) -- the identity lives in the store
    assert.is_true(t2:close(5000))
    assert.are.equal(1, #lines(path))
    os.remove(store)
    os.remove(store .. "-wal")
    os.remove(store .. "-shm")
    os.remove(path)
  end)
end)
