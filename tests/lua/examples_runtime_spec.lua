-- The examples/rules scenarios of examples_spec.lua through a real runtime: the Lua module opens a
-- handle on the rules folder with a test-local store and a file destination, and the spec reads
-- back what was delivered. tally_stats keeps only the number of violations, so that is what the
-- scenarios check here (examples_spec.lua checks their codes and texts through `tally check`).
local chain = require("tests.lua.helpers.chain")
local examples = require("tests.lua.helpers.examples")

local DIR = "examples/rules"

local Outcome = {}
Outcome.__index = Outcome
function Outcome:expect_codes(codes) assert.equal(#codes, self.violations) end
function Outcome:expect_text() end -- the texts are not kept by the runtime (see examples_spec.lua)

examples.describe("the runtime, through the Lua module", {
  run = function(msg)
    local out, stats = chain.runtime(DIR, { msg })
    assert.equal(0, chain.rule_total(stats, "errors"))
    return out, setmetatable({ violations = stats.violations }, Outcome)
  end,
  expect_order = function(names)
    local _, stats = chain.runtime(DIR, {})
    local got = {}
    for i, r in ipairs(stats.rules) do got[i] = r.name end
    assert.same(names, got)
  end,
  expect_loaded = function(n, stages)
    local _, stats = chain.runtime(DIR, {})
    assert.equal(n, #stats.rules)
    for _, r in ipairs(stats.rules) do
      assert.is_string(r.name)
      assert.is_true(stages[r.stage] or false, r.name .. ": " .. tostring(r.stage))
    end
  end,
}, { describe = describe, it = it, assert = assert })
