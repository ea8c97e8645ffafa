local sample = require("tally.sample")
local fake_ctx = require("tests.lua.helpers.ctx")

local function kept(p, msg, ctx)
  return p.process(msg, ctx or fake_ctx.new()) ~= nil
end

-- Share of keys user-0 .. user-(n-1) kept by a plugin.
local function share(p, n, make)
  local in_count = 0
  for i = 0, n - 1 do
    if kept(p, make("user-" .. i)) then in_count = in_count + 1 end
  end
  return in_count / n
end

local function track(anon, event)
  return { type = "track", event = event or "a b", anonymousId = anon }
end

describe("tally.sample", function()
  describe("fnv1a", function()
    it("matches the published FNV-1a 32-bit vectors", function()
      assert.equal(0x811c9dc5, sample.fnv1a(""))
      assert.equal(0xe40c292c, sample.fnv1a("a"))
      assert.equal(0xbf9cf968, sample.fnv1a("foobar"))
    end)

    it("stays within 32 bits", function()
      for _, s in ipairs{ "x", "user-123456", string.rep("z", 1000) } do
        local h = sample.fnv1a(s)
        assert.is_true(h >= 0 and h < 2 ^ 32)
      end
    end)
  end)

  describe("keep", function()
    it("is (hash % 10000) < rate * 10000", function()
      local key = "foobar" -- 0xbf9cf968 == 3214735720
      assert.equal(5720, sample.fnv1a(key) % 10000)
      assert.is_true(sample.keep(0.5721, key))
      assert.is_false(sample.keep(0.572, key))
    end)

    it("keeps everything at 1 and nothing at 0", function()
      for i = 1, 50 do
        assert.is_true(sample.keep(1, "k" .. i))
        assert.is_false(sample.keep(0, "k" .. i))
      end
    end)

    it("is monotonic: a key in at a rate is in at every higher rate", function()
      for i = 1, 200 do
        local k = "k" .. i
        if sample.keep(0.1, k) then assert.is_true(sample.keep(0.5, k)) end
      end
    end)
  end)

  describe("rule", function()
    it("is deterministic: the same user is always in or always out", function()
      local p = sample.rule{ rate = 0.5 }
      for i = 1, 50 do
        local first = kept(p, track("user-" .. i))
        for _ = 1, 3 do assert.equal(first, kept(p, track("user-" .. i))) end
      end
    end)

    it("keeps about `rate` of the users", function()
      local p = sample.rule{ rate = 0.1 }
      local s = share(p, 5000, function(k) return track(k) end)
      assert.is_true(s > 0.08 and s < 0.12, "share " .. s)
    end)

    it("samples by anonymousId by default and by any dotted path or function", function()
      local by_anon = sample.rule{ rate = 0.5, hash = "fnv1a" }
      local by_user = sample.rule{ rate = 0.5, key = "userId", hash = "fnv1a" }
      local by_session = sample.rule{ rate = 0.5, key = "context.session.id", hash = "fnv1a" }
      local by_fn = sample.rule{ rate = 0.5, key = function(m) return m.properties.account end, hash = "fnv1a" }
      for i = 1, 100 do
        local k = "user-" .. i
        local expect = sample.keep(0.5, k)
        assert.equal(expect, kept(by_anon, { type = "track", anonymousId = k, userId = "fixed" }))
        assert.equal(expect, kept(by_user, { type = "track", anonymousId = "fixed", userId = k }))
        assert.equal(expect, kept(by_session, { type = "track", context = { session = { id = k } } }))
        assert.equal(expect, kept(by_fn, { type = "track", properties = { account = k } }))
      end
    end)

    it("hashes integer keys as their decimal text", function()
      local p = sample.rule{ rate = 0.5, key = "context.session.id", hash = "fnv1a" }
      for i = 1, 50 do
        assert.equal(sample.keep(0.5, tostring(i)), kept(p, { type = "track", context = { session = { id = i } } }))
      end
    end)

    it("passes messages without the key", function()
      local p = sample.rule{ rate = 0, key = "userId" }
      assert.is_true(kept(p, { type = "track", anonymousId = "a" }))
      assert.is_true(kept(p, { type = "track", userId = "" }))
      assert.is_true(kept(p, { type = "track", userId = { nested = true } }))
      assert.is_false(kept(p, { type = "track", userId = "u1" }))
    end)

    it("samples only the listed events when `events` is given", function()
      local p = sample.rule{ rate = 0, events = { "Heartbeat" } }
      assert.is_false(kept(p, track("u1", "Heartbeat")))
      assert.is_true(kept(p, track("u1", "Order Completed")))
      assert.is_true(kept(p, { type = "page", name = "Heartbeat", anonymousId = "u1" }))
      assert.is_false(kept(sample.rule{ rate = 0, events = "Heartbeat" }, track("u1", "Heartbeat")))
    end)

    it("uses the salt to pick independent sets of users", function()
      local plain = sample.rule{ rate = 0.5, hash = "fnv1a" }
      local salted = sample.rule{ rate = 0.5, salt = "experiment-2:", hash = "fnv1a" }
      local differ = 0
      for i = 1, 200 do
        local msg = track("user-" .. i)
        assert.equal(sample.keep(0.5, "experiment-2:user-" .. i), kept(salted, msg))
        if kept(plain, msg) ~= kept(salted, msg) then differ = differ + 1 end
      end
      assert.is_true(differ > 50, "only " .. differ .. " users moved")
    end)

    it("by default asks ctx:sample when the ctx has it, and hashes in Lua otherwise", function()
      local p = sample.rule{ rate = 0.5, salt = "s:" }
      local ctx = fake_ctx.new()
      local decided_by_ctx = 0
      for i = 1, 100 do
        local msg = track("user-" .. i)
        local by_ctx = kept(p, msg, ctx)
        assert.equal(ctx:sample(0.5, "s:user-" .. i), by_ctx)
        assert.equal(sample.keep(0.5, "s:user-" .. i), kept(p, msg, {}))
        if by_ctx ~= sample.keep(0.5, "s:user-" .. i) then decided_by_ctx = decided_by_ctx + 1 end
      end
      -- the fake ctx hashes differently (djb2), so some answers must differ if ctx decided
      assert.is_true(decided_by_ctx > 0)
    end)

    it("asks ctx:sample with hash = 'ctx'", function()
      local p = sample.rule{ rate = 0.25, hash = "ctx", salt = "s:" }
      local ctx = fake_ctx.new()
      local out = p.process(track("user-7"), ctx)
      assert.same({ { rate = 0.25, key = "s:user-7" } }, ctx.sample_calls)
      assert.equal(ctx:sample(0.25, "s:user-7"), out ~= nil)
    end)

    it("rejects bad options", function()
      assert.has_error(function() sample.rule{} end, "tally.sample: option 'rate' is required, between 0 and 1")
      assert.has_error(function() sample.rule{ rate = 1.5 } end)
      assert.has_error(function() sample.rule{ rate = "0.1" } end)
      assert.has_error(function() sample.rule{ rate = 0.1, key = 5 } end)
      assert.has_error(function() sample.rule{ rate = 0.1, hash = "md5" } end)
      assert.has_error(function() sample.rule{ rate = 0.1, salt = 1 } end)
    end)
  end)
end)
