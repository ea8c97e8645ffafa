--- A fake rule context, as the C side provides it: records violations and logs, and samples
-- deterministically. Independent of tally.sample so that specs can compare the two.
local M = {}

local Ctx = {}
Ctx.__index = Ctx

local LEVELS = { error = true, warn = true, info = true, debug = true }

--- new{ config = {...}, now = ms } -> ctx
function M.new(opts)
  opts = opts or {}
  return setmetatable({
    config = opts.config or {},
    now = opts.now or 1700000000000, -- 2023-11-14T22:13:20.000Z
    violations = {},
    logs = {},
    sample_calls = {},
  }, Ctx)
end

function Ctx:violation(code, text)
  assert(type(code) == "string" and type(text) == "string", "violation(code, text) takes strings")
  self.violations[#self.violations + 1] = { code = code, text = text }
end

function Ctx:log(level, text)
  assert(LEVELS[level], "unknown log level " .. tostring(level))
  assert(type(text) == "string", "log text must be a string")
  self.logs[#self.logs + 1] = { level = level, text = text }
end

-- djb2 rather than FNV, on purpose: a spec can tell which hash decided.
function Ctx:sample(rate, key)
  self.sample_calls[#self.sample_calls + 1] = { rate = rate, key = key }
  local h = 5381
  for i = 1, #key do h = (h * 33 + key:byte(i)) & 0xffffffff end
  return h % 10000 < rate * 10000
end

--- The violation codes, in order.
function Ctx:codes()
  local out = {}
  for i, v in ipairs(self.violations) do out[i] = v.code end
  return out
end

--- The texts of violations with a code (all when code is nil), joined by newlines.
function Ctx:texts(code)
  local out = {}
  for _, v in ipairs(self.violations) do
    if code == nil or v.code == code then out[#out + 1] = v.text end
  end
  return table.concat(out, "\n")
end

function Ctx:log_levels()
  local out = {}
  for i, l in ipairs(self.logs) do out[i] = l.level end
  return out
end

return M
