-- Every ```lua block of docs/rules.md that returns something is a complete rule script: run each
-- through the product (`tally check` loads it in the real sandbox and runs a plausible message
-- through the real rule chain), so the docs cannot rot.
local chain = require("tests.lua.helpers.chain")

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
      local dir = chain.rules_dir{ ["10_block.lua"] = code }
      -- a plausible message must not make it raise
      local msg = { type = "track", event = "Order Completed", anonymousId = "a", userId = "u",
                    properties = { order_id = "o-1", total = 1, products = { { sku = "s", price = 1 } } } }
      local reports, run = chain.check(dir, { msg })
      -- the product loaded it: a plugin table with a name and a process or map function
      assert.matches("^rules: 1 scripts from ", run.text)
      assert.equal(1, #reports, run.text)
      assert.same({}, reports[1].errors)
      os.execute("rm -rf '" .. dir .. "'")
    end)
  end
end)
