-- Every ```lua block of docs/rules.md that returns something is a complete rule script: load each
-- in the sandbox-like environment and check it builds a plugin table, so the docs cannot rot.
local sandbox = require("tests.lua.helpers.sandbox")
local fake_ctx = require("tests.lua.helpers.ctx")

local function rule_blocks()
  local f = assert(io.open("docs/rules.md"))
  local text = f:read("a")
  f:close()
  local blocks = {}
  for code in text:gmatch("```lua\n(.-)```") do
    if code:match("\nreturn ") or code:match("^return ") then blocks[#blocks + 1] = code end
  end
  return blocks
end

describe("docs/rules.md examples", function()
  local blocks = rule_blocks()

  it("has one runnable example per module at least", function()
    local all = table.concat(blocks, "\n")
    for _, m in ipairs{ "naming", "plan", "enrich", "sample", "crownpeak" } do
      assert.truthy(all:find('require("tally.' .. m .. '")', 1, true), m)
    end
  end)

  for i, code in ipairs(blocks) do
    it("block " .. i .. " builds a plugin table and runs", function()
      local env = sandbox.env{ host = sandbox.fake_host() }
      local chunk = assert(load(code, "=docs block " .. i, "t", env))
      local plugin = chunk()
      assert.is_string(plugin.name)
      local entry = plugin.process or plugin.map
      assert.is_function(entry)
      -- a plausible message must not make it raise
      local msg = { type = "track", event = "Order Completed", anonymousId = "a", userId = "u",
                    properties = { order_id = "o-1", total = 1, products = { { sku = "s", price = 1 } } } }
      entry(msg, fake_ctx.new())
    end)
  end
end)
