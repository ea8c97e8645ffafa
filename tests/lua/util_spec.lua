local util = require("tally.util")
local naming = require("tally.naming")
local fake_ctx = require("tests.lua.helpers.ctx")

describe("tally.util", function()
  describe("arrays and objects", function()
    it("tags lists so an empty list still reads as an array", function()
      local t = util.array()
      assert.is_true(util.is_array(t))
      assert.is_false(util.is_object(t))
      assert.equal("array", util.json_type(t))
    end)

    it("reads untagged tables like the C codec: keys 1..n are an array, anything else an object", function()
      assert.is_true(util.is_array({ "a", "b" }))
      assert.is_false(util.is_array({ [1] = "a", [3] = "c" }))
      assert.is_false(util.is_array({ a = 1 }))
      assert.is_false(util.is_array({}))
      assert.is_true(util.is_object({}))
    end)

    it("gives JSON types, integers apart from floats", function()
      assert.equal("integer", util.json_type(3))
      assert.equal("number", util.json_type(3.0))
      assert.equal("string", util.json_type("x"))
      assert.equal("boolean", util.json_type(false))
      assert.equal("object", util.json_type({ a = 1 }))
      assert.is_nil(util.json_type(print))
    end)

    it("copies deeply and keeps array tags", function()
      local src = { list = util.array(), obj = { n = 1 } }
      local c = util.deep_copy(src)
      assert.are_not.equal(src.obj, c.obj)
      assert.same(src.obj, c.obj)
      assert.is_true(util.is_array(c.list))
    end)
  end)

  describe("json_equal", function()
    it("compares numbers by value and tables structurally", function()
      assert.is_true(util.json_equal(1, 1.0))
      assert.is_true(util.json_equal({ a = { 1, 2 } }, { a = { 1, 2 } }))
      assert.is_false(util.json_equal({ a = 1 }, { a = 1, b = 2 }))
      assert.is_false(util.json_equal({ 1, 2 }, { 2, 1 }))
      assert.is_false(util.json_equal({ 1 }, { ["1"] = 1 }))
    end)
  end)

  describe("id_string", function()
    it("renders ids as strings and refuses what is not an id", function()
      assert.equal("42", util.id_string(42))
      assert.equal("42", util.id_string(42.0))
      assert.equal("abc", util.id_string("abc"))
      assert.is_nil(util.id_string(""))
      assert.is_nil(util.id_string(4.5))
      assert.is_nil(util.id_string({}))
    end)
  end)

  describe("get_path and canonical", function()
    it("reads dotted paths and stops at missing steps", function()
      local msg = { context = { session = { id = 7 } } }
      assert.equal(7, util.get_path(msg, "context.session.id"))
      assert.is_nil(util.get_path(msg, "context.page.url"))
      assert.is_nil(util.get_path({ context = "x" }, "context.page"))
    end)

    it("renders tables with sorted keys, so equal tables give equal text", function()
      assert.equal('{"a":1,"b":[true,"x"]}', util.canonical({ b = { true, "x" }, a = 1 }))
      assert.equal(util.canonical({ x = 1, y = 2 }), util.canonical({ y = 2, x = 1 }))
    end)
  end)

  describe("payload_key", function()
    it("uses traits for identify and group, properties otherwise, nothing for alias", function()
      assert.equal("traits", util.payload_key({ type = "identify" }))
      assert.equal("traits", util.payload_key({ type = "group" }))
      assert.equal("properties", util.payload_key({ type = "track" }))
      assert.equal("properties", util.payload_key({ type = "page" }))
      assert.is_nil(util.payload_key({ type = "alias" }))
    end)
  end)

  describe("constructors (shown with tally.naming)", function()
    it("fills the plugin table from the common options", function()
      local p = naming.rule{ name = "mine", types = "track", on_error = "pass", stage = "enrichment" }
      assert.equal("mine", p.name)
      assert.same({ "track" }, p.types)
      assert.equal("pass", p.on_error)
      assert.equal("enrichment", p.stage)
      assert.is_function(p.process)
    end)

    it("has sensible defaults", function()
      local p = naming.rule()
      assert.equal("naming", p.name)
      assert.equal("before", p.stage)
      assert.is_nil(p.types)
      assert.is_nil(p.on_error)
    end)

    it("rejects unknown options and bad common options with the module name", function()
      assert.has_error(function() naming.rule{ stlye = "lower" } end, "tally.naming: unknown option 'stlye'")
      assert.has_error(function() naming.rule{ on_error = "ignore" } end,
        'tally.naming: option \'on_error\' must be one of drop, pass (got "ignore")')
      assert.has_error(function() naming.rule{ stage = "destination" } end)
      assert.has_error(function() naming.rule("lower") end)
    end)

    it("lets ctx.config override the script's options", function()
      local p = naming.rule{ style = "lower", mode = "report" }
      local msg = { type = "track", event = "Call Started", properties = {} }
      p.process(msg, fake_ctx.new())
      assert.equal("Call Started", msg.event) -- report mode from the script

      local ctx = fake_ctx.new{ config = { mode = "fix" } }
      p.process(msg, ctx)
      assert.equal("call started", msg.event) -- fix mode from the configuration
    end)

    it("compiles a configuration once per distinct content", function()
      local builds = 0
      local rule = util.constructor{
        module = "test", name = "t", stage = "before", entry = "process",
        options = util.set{ "x" },
        build = function(o) builds = builds + 1; return function(msg) msg.x = o.x; return msg end end,
      }
      local p = rule{ x = 1 }
      assert.equal(1, builds)
      for _ = 1, 3 do p.process({}, fake_ctx.new{ config = { x = 2 } }) end -- fresh tables, same text
      assert.equal(2, builds)
      assert.equal(2, p.process({}, fake_ctx.new{ config = { x = 2 } }).x)
      assert.equal(1, p.process({}, fake_ctx.new()).x)
    end)

    it("rejects unknown keys in ctx.config as loudly as in the script", function()
      local p = naming.rule{}
      assert.has_error(function()
        p.process({ type = "track", event = "a b" }, fake_ctx.new{ config = { bogus = 1 } })
      end, "tally.naming: unknown option 'bogus'")
    end)
  end)
end)
