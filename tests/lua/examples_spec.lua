-- Loads examples/rules/*.lua in a sandbox-like environment (only the globals the tally sandbox
-- keeps, a require that finds lua/tally/* only, text chunks only) and runs messages through them
-- in name order, as the runtime does.
local sandbox = require("tests.lua.helpers.sandbox")
local fake_ctx = require("tests.lua.helpers.ctx")

local DIR = "examples/rules"

local function example_files()
  local files = {}
  local p = assert(io.popen('ls "' .. DIR .. '"'))
  for name in p:lines() do
    if name:match("%.lua$") then files[#files + 1] = DIR .. "/" .. name end
  end
  p:close()
  table.sort(files)
  return files
end

local MODULES = { "util", "naming", "plan", "enrich", "sample", "crownpeak" }

-- Both with the C side's `tally` global (faked) and without it, as under plain lua5.4.
for _, variant in ipairs{ { label = "with a tally host", host = sandbox.fake_host }, { label = "without a tally host" } } do
  describe("examples/rules (" .. variant.label .. ")", function()
    local env, plugins

    before_each(function()
      env = sandbox.env{ host = variant.host and variant.host() }
      plugins = {}
      for _, f in ipairs(example_files()) do plugins[#plugins + 1] = sandbox.load_rule(f, env) end
    end)

    local function run(msg)
      local ctx = fake_ctx.new()
      local out = sandbox.run(plugins, msg, ctx)
      return out, ctx
    end

    it("finds the four examples, in name order", function()
      local names = {}
      for i, p in ipairs(plugins) do names[i] = p.name end
      assert.same({ "naming", "episode", "user_type", "flatten" }, names)
    end)

    it("returns plugin tables the C side can read", function()
      for _, p in ipairs(plugins) do
        assert.is_string(p.name)
        assert.is_true(p.stage == "before" or p.stage == "enrichment")
        assert.is_function(p.process)
      end
    end)

    it("cleans up a badly named call event completely", function()
      local out, ctx = run{ type = "track", event = "Call Ended By Patient", userId = "u1",
                            properties = { channelId = "ep-9", userType = "Patient" } }
      assert.equal(1, #out)
      assert.equal("call ended", out[1].event)
      assert.same({ episode_id = "ep-9", type = "ended_by_patient", user_type = "patient" }, out[1].properties)
      assert.same({}, ctx.violations)
    end)

    it("flattens call ended by practitioner", function()
      local out = run{ type = "track", event = "call ended by practitioner",
                       properties = { episode_id = "e", user_type = "practitioner" } }
      assert.equal("call ended", out[1].event)
      assert.equal("ended_by_practitioner", out[1].properties.type)
    end)

    it("reports what it cannot fix, and still passes the message", function()
      local out, ctx = run{ type = "track", event = "login", properties = {} }
      assert.equal(1, #out)
      assert.same({ "naming.object_action" }, ctx:codes())
    end)

    it("requires episode_id inside an episode, by event object or by an episode-only id", function()
      local _, ctx = run{ type = "track", event = "call started", properties = { user_type = "patient" } }
      assert.same({ "naming.required" }, ctx:codes())
      assert.matches("episode_id", ctx:texts())

      _, ctx = run{ type = "track", event = "note added", properties = { call_id = "c1" } }
      assert.same({ "naming.required" }, ctx:codes())

      _, ctx = run{ type = "track", event = "report downloaded", properties = {} }
      assert.same({}, ctx.violations)
    end)

    it("keeps both ids, and reports, when channel_id and episode_id disagree", function()
      local out, ctx = run{ type = "track", event = "prescription issued",
                            properties = { channel_id = "c", episode_id = "e" } }
      assert.same({ channel_id = "c", episode_id = "e" }, out[1].properties)
      assert.same({ "naming.forbidden" }, ctx:codes())
    end)

    it("requires user_type only when the object is shared by several kinds of users", function()
      local _, ctx = run{ type = "track", event = "user signed up", properties = {} }
      assert.same({ "naming.required" }, ctx:codes())
      assert.matches("user_type", ctx:texts())

      _, ctx = run{ type = "track", event = "prescription issued", properties = { episode_id = "e" } }
      assert.same({}, ctx.violations)
    end)

    it("normalizes user_type values and rejects non-strings", function()
      local out = run{ type = "track", event = "user logged in", properties = { user_type = "HR Admin" } }
      assert.equal("hr_admin", out[1].properties.user_type)
      local _, ctx = run{ type = "track", event = "user logged in", properties = { user_type = 3 } }
      assert.same({ "naming.user_type" }, ctx:codes())
    end)

    it("applies key conventions to identify traits and leaves event rules to track", function()
      local out, ctx = run{ type = "identify", userId = "u1", traits = { firstName = "Peter", email = "p@i.com" } }
      assert.same({ first_name = "Peter", email = "p@i.com" }, out[1].traits)
      assert.same({}, ctx.violations)
    end)
  end)
end

describe("the sandbox-like environment", function()
  it("has no io, os, debug, load, dofile or package", function()
    local env = sandbox.env()
    for _, name in ipairs{ "io", "os", "debug", "load", "loadfile", "dofile", "package", "_G", "print" } do
      assert.is_nil(env[name], name)
    end
  end)

  it("resolves only tally.* modules", function()
    local env = sandbox.env()
    assert.has_error(function() env.require("io") end)
    assert.has_error(function() env.require("busted") end)
    assert.is_table(env.require("tally.naming"))
  end)

  for _, with_host in ipairs{ true, false } do
    it("loads every bundled module without writing a global (host: " .. tostring(with_host) .. ")", function()
      local env = sandbox.env{ host = with_host and sandbox.fake_host() or nil }
      local before = {}
      for k in pairs(env) do before[k] = true end
      for _, m in ipairs(MODULES) do assert.is_table(env.require("tally." .. m)) end
      for k in pairs(env) do assert.is_true(before[k] or false, "global written: " .. tostring(k)) end
    end)
  end

  it("lets the modules use the host's array tag and null", function()
    local host = sandbox.fake_host()
    local env = sandbox.env{ host = host }
    local util = env.require("tally.util")
    assert.equal(host.null, util.null)
    assert.is_true(util.is_null(host.null))
    local arr = util.array()
    assert.equal("tally.array", getmetatable(arr).__name)
    assert.is_true(util.is_array(host.array({})))
  end)
end)
