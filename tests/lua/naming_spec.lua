local naming = require("tally.naming")
local fake_ctx = require("tests.lua.helpers.ctx")

local function track(event, properties)
  return { type = "track", event = event, properties = properties or {} }
end

-- Runs a rule on a message; returns the result and the ctx.
local function run(opts, msg)
  local ctx = fake_ctx.new()
  return naming.rule(opts).process(msg, ctx), ctx
end

describe("tally.naming", function()
  describe("words and styles", function()
    it("splits on separators and camelCase boundaries", function()
      assert.same({ "button", "Name" }, naming.words("buttonName"))
      assert.same({ "HTML", "Parser" }, naming.words("HTMLParser"))
      assert.same({ "call", "ended", "by", "patient" }, naming.words("call_ended-by  patient"))
      assert.same({ "level3", "Done" }, naming.words("level3Done"))
      assert.same({ "café", "ouvert" }, naming.words("café ouvert")) -- UTF-8 kept whole
    end)

    it("rewrites names in each style", function()
      assert.equal("user signed up", naming.to_style("User Signed Up", "lower"))
      assert.equal("Button Clicked", naming.to_style("button_clicked", "title"))
      assert.equal("button_clicked", naming.to_style("Button Clicked", "snake"))
      assert.equal("camel_case", naming.to_snake("camelCase"))
      assert.equal("button_name", naming.to_snake("Button Name"))
    end)
  end)

  describe("style", function()
    it("accepts conforming names silently", function()
      for style, name in pairs{ lower = "user signed up", title = "Button Clicked", snake = "button_clicked" } do
        local _, ctx = run({ style = style }, track(name))
        assert.same({}, ctx.violations, style)
      end
    end)

    it("reports a badly cased name and leaves it in report mode", function()
      local msg, ctx = run({ style = "lower" }, track("Call Started"))
      assert.equal("Call Started", msg.event)
      assert.same({ "naming.case" }, ctx:codes())
      assert.equal('event "Call Started" is not lower case (expected "call started")', ctx:texts())
    end)

    it("rewrites it in fix mode, logging instead of reporting", function()
      local msg, ctx = run({ style = "title", mode = "fix" }, track("button clicked"))
      assert.equal("Button Clicked", msg.event)
      assert.same({}, ctx.violations)
      assert.same({ "debug" }, ctx:log_levels())
    end)

    it("fixes silently, still reporting what it cannot fix, when ctx.debug is false", function()
      local ctx = fake_ctx.new()
      ctx.debug = false
      local p = naming.rule{ style = "lower", property_case = "snake", mode = "fix" }
      local msg = p.process(track("Button Clicked", { buttonName = "x", userId = "new", user_id = "old" }), ctx)
      assert.equal("button clicked", msg.event)
      assert.same({ button_name = "x", userId = "new", user_id = "old" }, msg.properties)
      assert.same({}, ctx:log_levels())
      assert.same({ "naming.property_case" }, ctx:codes())
      assert.matches("already present", ctx:texts())
    end)

    it("reports a name with no words at all even in fix mode", function()
      local msg, ctx = run({ style = "snake", mode = "fix" }, track("!!!"))
      assert.equal("!!!", msg.event)
      assert.same({ "naming.case" }, ctx:codes())
    end)

    it("only checks event names of track calls", function()
      local _, ctx = run({ style = "lower" }, { type = "page", name = "Home Page", properties = {} })
      assert.same({}, ctx.violations)
    end)

    it("rejects an unknown style", function()
      assert.has_error(function() naming.rule{ style = "upper" } end)
    end)
  end)

  describe("object_action", function()
    it("flags single-word events, in both modes", function()
      local _, ctx = run({ object_action = true }, track("login"))
      assert.same({ "naming.object_action" }, ctx:codes())
      _, ctx = run({ object_action = true, mode = "fix" }, track("login"))
      assert.same({ "naming.object_action" }, ctx:codes())
    end)

    it("accepts Object Action names in any style", function()
      for _, name in ipairs{ "call started", "Button Clicked", "button_clicked", "formSubmitted" } do
        local _, ctx = run({ object_action = true }, track(name))
        assert.same({}, ctx.violations, name)
      end
    end)
  end)

  describe("property_case", function()
    it("reports keys not in snake_case and keeps them in report mode", function()
      local msg, ctx = run({ property_case = "snake" },
        track("a b", { buttonName = "x", ["Button Label"] = "y", ok_key = 1 }))
      assert.same({ "naming.property_case", "naming.property_case" }, ctx:codes())
      assert.equal("x", msg.properties.buttonName)
      assert.is_nil(msg.properties.button_name)
    end)

    it("renames them in fix mode", function()
      local msg, ctx = run({ property_case = "snake", mode = "fix" },
        track("a b", { buttonName = "x", ["Button Label"] = "y", ok_key = 1 }))
      assert.same({ button_name = "x", button_label = "y", ok_key = 1 }, msg.properties)
      assert.same({}, ctx.violations)
    end)

    it("does not overwrite a key that already exists", function()
      local msg, ctx = run({ property_case = "snake", mode = "fix" },
        track("a b", { userId = "new", user_id = "old" }))
      assert.same({ userId = "new", user_id = "old" }, msg.properties)
      assert.same({ "naming.property_case" }, ctx:codes())
      assert.matches("already present", ctx:texts())
    end)

    it("checks traits of identify calls", function()
      local msg = run({ property_case = "snake", mode = "fix" },
        { type = "identify", userId = "u1", traits = { firstName = "Peter" } })
      assert.same({ first_name = "Peter" }, msg.traits)
    end)
  end)

  describe("rename", function()
    local rename = {
      ["call ended by patient"] = { event = "call ended", set = { type = "ended_by_patient" } },
      ["Old Name"] = "new name",
    }

    it("flattens an event into a new name plus properties in fix mode", function()
      local msg, ctx = run({ rename = rename, mode = "fix" }, track("call ended by patient", { episode_id = "e" }))
      assert.equal("call ended", msg.event)
      assert.same({ episode_id = "e", type = "ended_by_patient" }, msg.properties)
      assert.same({}, ctx.violations)
    end)

    it("accepts a plain string as the new name", function()
      local msg = run({ rename = rename, mode = "fix" }, track("Old Name"))
      assert.equal("new name", msg.event)
    end)

    it("creates properties on a call that had none, and only then", function()
      local msg = run({ rename = rename, mode = "fix" }, { type = "track", event = "call ended by patient" })
      assert.same({ type = "ended_by_patient" }, msg.properties)
      msg = run({ rename = rename, mode = "fix" }, { type = "track", event = "Old Name" })
      assert.is_nil(msg.properties)
    end)

    it("reports the rename and leaves the message in report mode", function()
      local msg, ctx = run({ rename = rename }, track("call ended by patient"))
      assert.equal("call ended by patient", msg.event)
      assert.same({}, msg.properties)
      assert.same({ "naming.rename" }, ctx:codes())
      assert.equal('event "call ended by patient" should be "call ended" with type="ended_by_patient"', ctx:texts())
    end)

    it("matches the re-cased name when a style is set", function()
      local msg = run({ rename = rename, style = "lower", mode = "fix" }, track("Call Ended By Patient"))
      assert.equal("call ended", msg.event)
    end)

    it("keeps a conflicting property and reports the conflict", function()
      local msg, ctx = run({ rename = rename, mode = "fix" }, track("call ended by patient", { type = "other" }))
      assert.equal("call ended", msg.event)
      assert.equal("other", msg.properties.type)
      assert.same({ "naming.rename" }, ctx:codes())
      assert.matches('already "other"', ctx:texts())
    end)

    it("rejects malformed entries", function()
      assert.has_error(function() naming.rule{ rename = { a = 5 } } end)
      assert.has_error(function() naming.rule{ rename = { a = { event = "b", set = "x" } } } end)
    end)
  end)

  describe("forbidden", function()
    it("reports a forbidden property with its hint", function()
      local msg, ctx = run({ forbidden = { channel_id = "use episode_id" } }, track("a b", { channel_id = "c1" }))
      assert.equal("c1", msg.properties.channel_id)
      assert.same({ "naming.forbidden" }, ctx:codes())
      assert.equal("properties.channel_id is forbidden: use episode_id", ctx:texts())
    end)

    it("moves it to its replacement in fix mode ('use <key>' names the replacement)", function()
      local msg, ctx = run({ forbidden = { channel_id = "use episode_id" }, mode = "fix" },
        track("a b", { channel_id = "c1" }))
      assert.same({ episode_id = "c1" }, msg.properties)
      assert.same({}, ctx.violations)
    end)

    it("takes an explicit { replace, hint } form", function()
      local msg = run({ forbidden = { chan = { replace = "episode_id", hint = "episodes, not channels" } },
                        mode = "fix" }, track("a b", { chan = "c1" }))
      assert.same({ episode_id = "c1" }, msg.properties)
    end)

    it("drops a duplicate carrying the same value", function()
      local msg, ctx = run({ forbidden = { channel_id = "use episode_id" }, mode = "fix" },
        track("a b", { channel_id = "e1", episode_id = "e1" }))
      assert.same({ episode_id = "e1" }, msg.properties)
      assert.same({}, ctx.violations)
    end)

    it("reports, and keeps both, when the replacement holds another value", function()
      local msg, ctx = run({ forbidden = { channel_id = "use episode_id" }, mode = "fix" },
        track("a b", { channel_id = "c1", episode_id = "e1" }))
      assert.same({ channel_id = "c1", episode_id = "e1" }, msg.properties)
      assert.same({ "naming.forbidden" }, ctx:codes())
    end)

    it("cannot fix a forbidden property without a replacement", function()
      local msg, ctx = run({ forbidden = { password = true, ssn = "never track it" }, mode = "fix" },
        track("a b", { password = "x", ssn = "y" }))
      assert.same({ password = "x", ssn = "y" }, msg.properties)
      assert.same({ "naming.forbidden", "naming.forbidden" }, ctx:codes())
    end)

    it("sees keys after the case fix, so channelId is caught too", function()
      local msg, ctx = run({ property_case = "snake", forbidden = { channel_id = "use episode_id" }, mode = "fix" },
        track("a b", { channelId = "c1" }))
      assert.same({ episode_id = "c1" }, msg.properties)
      assert.same({}, ctx.violations)
      msg, ctx = run({ property_case = "snake", forbidden = { channel_id = "use episode_id" } },
        track("a b", { channelId = "c1" }))
      assert.same({ channelId = "c1" }, msg.properties) -- report mode: untouched
      assert.same({ "naming.property_case", "naming.forbidden" }, ctx:codes())
    end)

    it("rejects malformed entries", function()
      assert.has_error(function() naming.rule{ forbidden = { a = 1 } } end)
      assert.has_error(function() naming.rule{ forbidden = { a = {} } } end)
    end)
  end)

  describe("required", function()
    it("requires a property always when there is no condition", function()
      local _, ctx = run({ required = { "user_type" } }, track("a b"))
      assert.same({ "naming.required" }, ctx:codes())
      assert.equal('properties.user_type is required for event "a b"', ctx:texts())
    end)

    it("is never fixed: fix mode still reports", function()
      local msg, ctx = run({ required = { "user_type" }, mode = "fix" }, track("a b"))
      assert.same({ "naming.required" }, ctx:codes())
      assert.same({}, msg.properties)
    end)

    it("treats a JSON null as missing", function()
      -- through the product (`tally check`), where a JSON null is the host's null sentinel
      local chain = require("tests.lua.helpers.chain")
      local dir = chain.rules_dir{ ["10_naming.lua"] =
        'return require("tally.naming").rule{ required = { "user_type" } }\n' }
      local _, rep = chain.check_one(dir, '{"type":"track","event":"a b","userId":"u","properties":{"user_type":null}}')
      assert.same({ "naming.required" }, rep:codes())
    end)

    it("takes a function condition", function()
      local opts = { required = { { property = "user_type", when = function(m) return m.event == "x y" end } } }
      local _, ctx = run(opts, track("x y"))
      assert.same({ "naming.required" }, ctx:codes())
      _, ctx = run(opts, track("z w"))
      assert.same({}, ctx.violations)
    end)

    it("takes event, event_prefix, event_match and type conditions", function()
      local cases = {
        { { event = { "call started", "call ended" } }, "call ended", "call missed" },
        { { event_prefix = "call " }, "call missed", "recall made" },
        { { event_match = "^video %a+$" }, "video paused", "video paused twice" },
        { { type = "track" }, "anything here", nil },
      }
      for _, c in ipairs(cases) do
        local opts = { required = { { property = "episode_id", when = c[1] } } }
        local _, ctx = run(opts, track(c[2]))
        assert.same({ "naming.required" }, ctx:codes(), c[2])
        if c[3] then
          _, ctx = run(opts, track(c[3]))
          assert.same({}, ctx.violations, c[3])
        end
      end
      local _, ctx = run({ required = { { property = "plan", when = { type = "identify" } } } },
        { type = "identify", userId = "u", traits = {} })
      assert.equal("traits.plan is required for identify message", ctx:texts())
    end)

    it("takes has / when_property: required when another property is present", function()
      for _, opts in ipairs{
        { required = { { property = "episode_id", when = { has = "episode" } } } },
        { required = { { property = "episode_id", when_property = "episode" } } },
      } do
        local _, ctx = run(opts, track("a b", { episode = true }))
        assert.same({ "naming.required" }, ctx:codes())
        _, ctx = run(opts, track("a b", { other = true }))
        assert.same({}, ctx.violations)
      end
    end)

    it("ANDs fields and ORs `any`", function()
      local opts = { required = { { property = "episode_id", when = {
        type = "track", any = { { event_prefix = "call " }, { has = "call_id" } } } } } }
      local _, ctx = run(opts, track("call started"))
      assert.same({ "naming.required" }, ctx:codes())
      _, ctx = run(opts, track("note added", { call_id = 1 }))
      assert.same({ "naming.required" }, ctx:codes())
      _, ctx = run(opts, track("note added"))
      assert.same({}, ctx.violations)
    end)

    it("sees the event after renames and case fixes", function()
      local _, ctx = run({ style = "lower", required = { { property = "episode_id", when = { event_prefix = "call " } } } },
        track("Call Started"))
      assert.same({ "naming.case", "naming.required" }, ctx:codes())
    end)

    it("rejects malformed entries and unknown conditions", function()
      assert.has_error(function() naming.rule{ required = { 5 } } end)
      assert.has_error(function() naming.rule{ required = { { property = "a", when = { evnt = "x" } } } } end,
        "tally.naming: required[1].when: unknown condition 'evnt'")
      assert.has_error(function() naming.rule{ required = { { property = "a", when = "x" } } } end)
    end)
  end)

  describe("mode", function()
    it("leaves the caller's message untouched in report mode", function()
      local props = { buttonName = "x", channel_id = "c" }
      local msg = track("Call Ended By Patient", props)
      local out = run({ style = "lower", property_case = "snake", forbidden = { channel_id = "use episode_id" },
                        rename = { ["call ended by patient"] = { event = "call ended", set = { type = "p" } } } }, msg)
      assert.equal(msg, out)
      assert.equal("Call Ended By Patient", msg.event)
      assert.equal(props, msg.properties)
      assert.same({ buttonName = "x", channel_id = "c" }, props)
    end)

    it("rejects an unknown mode", function()
      assert.has_error(function() naming.rule{ mode = "auto" } end)
    end)

    it("never drops, and ignores alias calls", function()
      local msg = { type = "alias", userId = "u", previousId = "a" }
      local out, ctx = run({ required = { "x" }, object_action = true }, msg)
      assert.equal(msg, out)
      assert.same({}, ctx.violations)
    end)
  end)

  describe("conventions", function()
    it("carries the style and key case as plain data for tally report", function()
      local rule = naming.rule{ style = "lower", property_case = "snake" }
      assert.same({ style = "lower", property_case = "snake" }, rule.conventions)
    end)

    it("is empty when the rule checks neither", function()
      assert.same({}, naming.rule{ object_action = true }.conventions)
    end)
  end)
end)
