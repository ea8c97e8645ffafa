local plan = require("tally.plan")
local util = require("tally.util")
local fake_ctx = require("tests.lua.helpers.ctx")
local chain = require("tests.lua.helpers.chain")

-- The keyword ("plan.<keyword>") and field of each problem found for value against schema.
local function problems(schema, value)
  local out = {}
  for i, p in ipairs(plan.validate(schema, value, "properties")) do
    out[i] = p.type .. " " .. p.field
  end
  return out
end

local function valid(schema, value)
  return #plan.validate(schema, value) == 0
end

local ORDER_PLAN = {
  events = {
    ["Order Completed"] = {
      type = "object",
      required = { "order_id", "total" },
      properties = {
        order_id = { type = "string" },
        total = { type = "number", minimum = 0 },
        currency = { type = "string", enum = { "EUR", "USD" } },
      },
    },
    ["Signed Up"] = true,
  },
  common = { properties = { platform = { type = "string" } } },
  identify = { required = { "email" }, properties = { email = { type = "string", pattern = "^[^@]+@[^@]+$" } } },
}

local function track(event, properties)
  return { type = "track", event = event, properties = properties }
end

describe("tally.plan", function()
  describe("regex_to_lua", function()
    it("translates the supported subset", function()
      assert.equal("^[a-z%_]+$", plan.regex_to_lua("^[a-z_]+$"))
      assert.equal("^%d%d%d%-%d%d%d?%d?$", plan.regex_to_lua("^\\d{3}-\\d{2,4}$"))
      assert.equal("[%w_%-]+%@[%w_%.]+", plan.regex_to_lua("[\\w-]+@[\\w.]+"))
      assert.equal("xxx*", plan.regex_to_lua("x{2,}"))
      assert.equal("a.b*c", plan.regex_to_lua("a.b*?c"))
      assert.equal("%$5$", plan.regex_to_lua("\\$5$"))
      assert.equal("\t%s%S[^%w_]", plan.regex_to_lua("\\t\\s\\S\\W"))
    end)

    it("matches like the regex it came from", function()
      local cases = {
        { "^[A-Z]{2}-\\d+$", { "FR-123" }, { "fr-123", "FR-", "xFR-1" } },
        { "colou?r", { "color", "my colour" }, { "colr" } },
        { "^[^ ]+$", { "one" }, { "two words" } },
        { "^a.c$", { "abc", "a-c" }, { "ac", "abbc" } },
        { "\\.json$", { "plan.json" }, { "planxjson" } },
      }
      for _, c in ipairs(cases) do
        local lp = plan.regex_to_lua(c[1])
        for _, s in ipairs(c[2]) do assert.truthy(s:find(lp), c[1] .. " should match " .. s) end
        for _, s in ipairs(c[3]) do assert.falsy(s:find(lp), c[1] .. " should not match " .. s) end
      end
    end)

    it("rejects what it does not support, saying why", function()
      local bad = {
        ["(a|b)"] = "groups and alternation",
        ["a|b"] = "groups and alternation",
        ["a^b"] = "only supported at the start",
        ["a$b"] = "only supported at the start",
        ["\\bword"] = "unsupported escape",
        ["\\1"] = "unsupported escape",
        ["[]a]"] = "ambiguous",
        ["[a"] = "unterminated",
        ["*a"] = "nothing to repeat",
        ["a**"] = "nested quantifiers",
        ["a{2"] = "malformed repetition",
        ["a{3,1}"] = "m < n",
        ["a{101}"] = "above 100",
        ["é+"] = "non%-ASCII",
        ["[é]"] = "non%-ASCII",
        ["[!-/]"] = "ranges",
        ["a\\"] = "trailing backslash",
      }
      for re, why in pairs(bad) do
        local ok, err = pcall(plan.regex_to_lua, re)
        assert.is_false(ok, re)
        assert.matches(why, err, 1, false)
      end
    end)
  end)

  describe("schema validation", function()
    it("checks type, including lists of types", function()
      assert.is_true(valid({ type = "string" }, "x"))
      assert.same({ "plan.type properties" }, problems({ type = "string" }, 5))
      assert.is_true(valid({ type = { "string", "integer" } }, 5))
      assert.is_true(valid({ type = "boolean" }, false))
      assert.is_true(valid({ type = "object" }, { a = 1 }))
      assert.is_true(valid({ type = "array" }, util.array({ 1 })))
      assert.is_false(valid({ type = "array" }, { a = 1 }))
      assert.is_false(valid({ type = "object" }, { 1, 2 }))
    end)

    it("tells integers from numbers with math.type", function()
      assert.is_true(valid({ type = "integer" }, 3))
      assert.is_false(valid({ type = "integer" }, 3.0))
      assert.is_false(valid({ type = "integer" }, 3.5))
      assert.is_true(valid({ type = "number" }, 3))
      assert.is_true(valid({ type = "number" }, 3.5))
    end)

    it("takes an untagged empty table as an object or an array", function()
      assert.is_true(valid({ type = "object" }, {}))
      assert.is_true(valid({ type = "array" }, {}))
      assert.is_false(valid({ type = "object" }, util.array()))
    end)

    it("checks the null type against the host's null sentinel", function()
      -- inside the product's sandbox (`tally check`), where the host's tally.null is real
      local dir = chain.rules_dir{ ["10_probe.lua"] = [[
local plan = require("tally.plan")
return { name = "probe", process = function(m)
  local p = plan.validate({ type = "string" }, tally.null, "properties.x")
  m.properties = {
    nullable = #plan.validate({ type = { "string", "null" } }, tally.null),
    description = p[1] and p[1].description or "",
    in_enum = #plan.validate({ enum = { tally.null, 1 } }, tally.null),
  }
  return m
end }
]] }
      local out, rep = chain.check_one(dir, { type = "track", event = "probe run", userId = "u" })
      assert.same({}, rep.errors)
      assert.same({ nullable = 0, description = "expected string, got null", in_enum = 0 }, out[1].properties)
    end)

    it("checks enum and const with JSON equality", function()
      assert.is_true(valid({ enum = { "a", 1 } }, 1.0))
      assert.same({ "plan.enum properties" }, problems({ enum = { "a", "b" } }, "c"))
      assert.is_true(valid({ const = { x = { 1, 2 } } }, { x = { 1, 2 } }))
      assert.same({ "plan.const properties" }, problems({ const = 5 }, 6))
    end)

    it("checks pattern, minLength and maxLength in UTF-8 characters", function()
      assert.is_true(valid({ pattern = "^[a-z]+$" }, "abc"))
      assert.same({ "plan.pattern properties" }, problems({ pattern = "^[a-z]+$" }, "abC"))
      assert.is_true(valid({ maxLength = 4 }, "été!")) -- 4 characters, 6 bytes
      assert.same({ "plan.maxLength properties" }, problems({ maxLength = 3 }, "été!"))
      assert.same({ "plan.minLength properties" }, problems({ minLength = 2 }, "é"))
      assert.is_true(valid({ minLength = 2, pattern = "x" }, 5)) -- string keywords ignore numbers
    end)

    it("checks numeric bounds", function()
      local s = { minimum = 1, maximum = 10 }
      assert.is_true(valid(s, 1))
      assert.is_true(valid(s, 10))
      assert.same({ "plan.minimum properties" }, problems(s, 0.5))
      assert.same({ "plan.maximum properties" }, problems(s, 11))
      local e = { exclusiveMinimum = 1, exclusiveMaximum = 10 }
      assert.same({ "plan.exclusiveMinimum properties" }, problems(e, 1))
      assert.same({ "plan.exclusiveMaximum properties" }, problems(e, 10))
      assert.is_true(valid(e, 5))
      assert.is_true(valid(s, "100")) -- number keywords ignore strings
    end)

    it("checks properties, required and additionalProperties, with paths", function()
      local s = {
        required = { "id" },
        properties = { id = { type = "string" }, nested = { properties = { n = { type = "integer" } } } },
        additionalProperties = false,
      }
      assert.is_true(valid(s, { id = "x" }))
      assert.same({ "plan.required properties.id" }, problems(s, {}))
      assert.same({ "plan.type properties.nested.n" }, problems(s, { id = "x", nested = { n = "1" } }))
      assert.same({ 'plan.additionalProperties properties["odd key"]' }, problems(s, { id = "x", ["odd key"] = 1 }))
    end)

    it("gives the same paths again once they are remembered, and for other roots and keys", function()
      local s = { properties = { a = { type = "string" }, ["odd key"] = { type = "string" },
                                 items = { items = { type = "string" } } } }
      local bad = { a = 1, ["odd key"] = 2, items = { "x", 3 } }
      local want = { "plan.type properties.a", "plan.type properties.items[1]", 'plan.type properties["odd key"]' }
      for _ = 1, 3 do assert.same(want, problems(s, bad)) end
      local other = {}
      for i, p in ipairs(plan.validate(s, bad, "traits")) do other[i] = p.field end
      assert.same({ "traits.a", "traits.items[1]", 'traits["odd key"]' }, other)
      -- more distinct keys than the cache holds: each path is still right when it is dropped
      local many = { additionalProperties = { type = "string" } }
      for round = 1, 2 do
        for i = 1, 3000 do
          local key = string.rep("k", 100) .. i
          assert.same({ "plan.type properties." .. key }, problems(many, { [key] = round }))
        end
      end
    end)

    it("validates additional properties against a schema", function()
      local s = { properties = { id = {} }, additionalProperties = { type = "number" } }
      assert.is_true(valid(s, { id = "x", n = 1 }))
      assert.same({ "plan.type properties.n" }, problems(s, { id = "x", n = "1" }))
    end)

    it("checks items, minItems and maxItems, with 0-based paths", function()
      local s = { type = "array", items = { type = "object", required = { "sku" } }, minItems = 1, maxItems = 2 }
      assert.is_true(valid(s, { { sku = "a" } }))
      assert.same({ "plan.required properties[1].sku" }, problems(s, { { sku = "a" }, { price = 1 } }))
      assert.same({ "plan.minItems properties" }, problems(s, util.array()))
      assert.same({ "plan.maxItems properties" }, problems(s, { { sku = "a" }, { sku = "b" }, { sku = "c" } }))
    end)

    it("takes boolean schemas", function()
      assert.is_true(valid(true, 1))
      assert.same({ "plan.false properties" }, problems(false, 1))
    end)

    it("accepts annotations and rejects unsupported keywords when compiling", function()
      assert.is_true(valid({ title = "t", description = "d", format = "date-time", default = 1,
                             examples = { 1 }, ["$comment"] = "c" }, 5))
      local bad = {
        { { oneOf = {} }, "unsupported keyword \"oneOf\"" },
        { { type = "text" }, "unknown type \"text\"" },
        { { exclusiveMinimum = true }, "draft%-4 boolean form" },
        { { minLength = -1 }, "non%-negative integer" },
        { { items = { {}, {} } }, "tuple form" },
        { { pattern = "(x)" }, "groups" },
        { { enum = {} }, "non%-empty list" },
        { { required = { 1 } }, "list of names" },
        { { properties = { a = { oneOf = {} } } }, "schema%.properties%.a: unsupported" },
        { 5, "must be an object or a boolean" },
      }
      for _, c in ipairs(bad) do
        local ok, err = pcall(plan.compile, c[1])
        assert.is_false(ok, c[2])
        assert.matches(c[2], err)
      end
    end)

    it("compiles once for repeated use", function()
      local check = plan.compile({ type = "string" })
      assert.same({}, check("a"))
      assert.equal("value", check(1)[1].field)
      assert.equal("x.y", check(1, "x.y")[1].field)
    end)
  end)

  describe("rule", function()
    local function run(opts, msg)
      opts.plan = opts.plan or ORDER_PLAN
      local ctx = fake_ctx.new()
      return plan.rule(opts).process(msg, ctx), ctx
    end

    it("passes a message that follows the plan untouched", function()
      local msg = track("Order Completed", { order_id = "o1", total = 10.5, currency = "EUR", platform = "web" })
      local out, ctx = run({ unplanned_events = "block", unplanned_properties = "block", violations = "block" }, msg)
      assert.equal(msg, out)
      assert.is_nil(msg.context)
      assert.same({}, ctx.violations)
    end)

    it("flags violations by default: on the message and through ctx:violation", function()
      local msg = track("Order Completed", { order_id = 7, currency = "GBP" })
      local out, ctx = run({}, msg)
      assert.equal(msg, out)
      -- required first, then properties in byte order: stable whatever Lua's hash order
      assert.same({ "plan.required", "plan.enum", "plan.type" }, ctx:codes())
      assert.same({
        { type = "plan.required", field = "properties.total", description = "is required" },
        { type = "plan.enum", field = "properties.currency", description = '"GBP" is not one of "EUR", "USD"' },
        { type = "plan.type", field = "properties.order_id", description = "expected string, got integer" },
      }, msg.context.protocols.violations)
      assert.is_true(util.is_array(msg.context.protocols.violations))
      assert.equal("properties.total: is required", ctx.violations[1].text)
    end)

    it("appends to violations recorded by an earlier rule", function()
      local msg = track("Order Completed", { order_id = "o", total = -1 })
      msg.context = { protocols = { violations = { { type = "x", field = "y", description = "z" } } } }
      run({}, msg)
      assert.equal(2, #msg.context.protocols.violations)
      assert.equal("plan.minimum", msg.context.protocols.violations[2].type)
    end)

    it("blocks a violating message with violations = 'block'", function()
      local out, ctx = run({ violations = "block" }, track("Order Completed", { order_id = "o" }))
      assert.is_nil(out)
      assert.same({ "plan.required" }, ctx:codes())
    end)

    it("ignores violations with violations = 'allow'", function()
      local msg = track("Order Completed", {})
      local out, ctx = run({ violations = "allow" }, msg)
      assert.equal(msg, out)
      assert.is_nil(msg.context)
      assert.same({}, ctx.violations)
    end)

    it("validates a track call without properties as an empty object", function()
      local _, ctx = run({}, { type = "track", event = "Order Completed" })
      assert.same({ "plan.required", "plan.required" }, ctx:codes())
    end)

    it("applies the common schema to every event, planned or not", function()
      local _, ctx = run({}, track("Signed Up", { platform = 1 }))
      assert.same({ "plan.type" }, ctx:codes())
      _, ctx = run({}, track("Unknown Event", { platform = 1 }))
      assert.same({ "plan.type" }, ctx:codes())
    end)

    describe("unplanned_events", function()
      it("allows by default", function()
        local msg = track("Unknown Event", { x = 1 })
        local out, ctx = run({}, msg)
        assert.equal(msg, out)
        assert.same({}, ctx.violations)
      end)

      it("flags", function()
        local msg = track("Unknown Event", {})
        run({ unplanned_events = "flag" }, msg)
        assert.same({ { type = "plan.unplanned_event", field = "event",
                        description = '"Unknown Event" is not in the tracking plan' } },
          msg.context.protocols.violations)
      end)

      it("blocks", function()
        local out, ctx = run({ unplanned_events = "block" }, track("Unknown Event", {}))
        assert.is_nil(out)
        assert.same({ "plan.unplanned_event" }, ctx:codes())
      end)

      it("does not also report each property of an unplanned event", function()
        local _, ctx = run({ unplanned_events = "flag", unplanned_properties = "flag" }, track("Unknown Event", { a = 1 }))
        assert.same({ "plan.unplanned_event" }, ctx:codes())
      end)
    end)

    describe("unplanned_properties", function()
      local props = function() return { order_id = "o", total = 1, platform = "web", coupon = "X", zz = 1 } end

      it("allows by default", function()
        local _, ctx = run({}, track("Order Completed", props()))
        assert.same({}, ctx.violations)
      end)

      it("flags properties listed in neither the event nor the common schema", function()
        local msg = track("Order Completed", props())
        run({ unplanned_properties = "flag" }, msg)
        local fields = {}
        for i, v in ipairs(msg.context.protocols.violations) do fields[i] = v.type .. " " .. v.field end
        assert.same({ "plan.unplanned_property properties.coupon", "plan.unplanned_property properties.zz" }, fields)
      end)

      it("blocks", function()
        local out = run({ unplanned_properties = "block" }, track("Order Completed", props()))
        assert.is_nil(out)
      end)

      it("flags them after messages whose properties were all planned", function()
        local planned = { order_id = "o", total = 1, platform = "web" }
        local out, ctx = run({ unplanned_properties = "block" }, track("Order Completed", planned))
        assert.is_table(out)
        assert.same({}, ctx.violations)
        local msg = track("Order Completed", props())
        run({ unplanned_properties = "flag" }, msg)
        assert.equal(2, #msg.context.protocols.violations)
        assert.equal("properties.zz", msg.context.protocols.violations[2].field)
      end)

      it("omits: flags and removes them, keeping the message", function()
        local msg = track("Order Completed", props())
        local out, ctx = run({ unplanned_properties = "omit" }, msg)
        assert.equal(msg, out)
        assert.same({ order_id = "o", total = 1, platform = "web" }, msg.properties)
        assert.same({ "plan.unplanned_property", "plan.unplanned_property" }, ctx:codes())
        assert.equal(2, #msg.context.protocols.violations)
      end)

      it("counts every property of an event schema without `properties` as unplanned", function()
        local _, ctx = run({ unplanned_properties = "flag" }, track("Signed Up", { platform = "web", x = 1 }))
        assert.same({ "plan.unplanned_property" }, ctx:codes())
      end)
    end)

    describe("identify", function()
      it("validates traits and reports unplanned traits", function()
        local msg = { type = "identify", userId = "u", traits = { email = "nope", age = 3 } }
        local _, ctx = run({ unplanned_properties = "flag" }, msg)
        assert.same({ "plan.pattern", "plan.unplanned_property" }, ctx:codes())
        assert.equal("traits.email", msg.context.protocols.violations[1].field)
        assert.equal("traits.age", msg.context.protocols.violations[2].field)
      end)

      it("passes identify untouched when the plan has no identify schema", function()
        local msg = { type = "identify", userId = "u", traits = { anything = 1 } }
        local out, ctx = run({ plan = { events = {} }, unplanned_properties = "block" }, msg)
        assert.equal(msg, out)
        assert.same({}, ctx.violations)
      end)
    end)

    it("handles track and identify only", function()
      local p = plan.rule{ plan = ORDER_PLAN }
      assert.same({ "track", "identify" }, p.types)
      local msg = { type = "page", name = "Home" }
      assert.equal(msg, p.process(msg, fake_ctx.new()))
    end)

    it("rejects bad options and plans when built", function()
      assert.has_error(function() plan.rule{} end, "tally.plan: option 'plan' is required")
      assert.has_error(function() plan.rule{ plan = {}, violations = "omit" } end)
      assert.has_error(function() plan.rule{ plan = {}, unplanned_events = "drop" } end)
      assert.has_error(function() plan.rule{ plan = { evnts = {} } } end)
      assert.has_error(function() plan.rule{ plan = { events = { ["A B"] = { type = "obj" } } } } end,
        'tally.plan: plan.events["A B"]: unknown type "obj"')
      assert.has_error(function() plan.rule{ plan = { common = { anyOf = {} } } } end)
    end)
  end)

  describe("planned_events", function()
    it("lists the planned event names, sorted, as plain data for tally report", function()
      local rule = plan.rule{ plan = ORDER_PLAN }
      assert.same({ "Order Completed", "Signed Up" }, rule.planned_events)
      assert.is_nil(getmetatable(rule.planned_events))
    end)

    it("is empty for a plan without events", function()
      assert.same({}, plan.rule{ plan = { common = { type = "object" } } }.planned_events)
    end)
  end)
end)
