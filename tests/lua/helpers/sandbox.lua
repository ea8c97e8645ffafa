--- A sandbox-like environment for specs: only the globals the tally sandbox is documented to
-- keep, copies of the libraries, and a require that finds lua/tally/* and nothing else. Also a
-- runner that applies the rule contract (types, drop, split, on_error) to a chain of plugins.
local M = {}

M.SAFE = { "string", "table", "math", "utf8", "pairs", "ipairs", "type", "tostring", "tonumber",
           "select", "error", "pcall", "setmetatable", "getmetatable", "rawget", "rawset", "next" }

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

--- A stand-in for the C side's `tally` global: a unique null sentinel and an array tagger whose
-- metatable is named like the codec's ("tally.array").
function M.fake_host()
  local array_mt = { __name = "tally.array" }
  return {
    null = setmetatable({}, { __name = "tally.null", __tostring = function() return "null" end }),
    array = function(t) return setmetatable(t, array_mt) end,
  }
end

--- env{ host = <tally table or nil>, root = "." } -> env with its own module cache
function M.env(opts)
  opts = opts or {}
  local root = opts.root or "."
  local env = {}
  for _, name in ipairs(M.SAFE) do
    local v = _G[name]
    env[name] = type(v) == "table" and copy(v) or v
  end
  env.tally = opts.host
  local loaded = {}
  env.require = function(name)
    if loaded[name] ~= nil then return loaded[name] end
    local file = type(name) == "string" and name:match("^tally%.([%w_]+)$")
    if not file then error("module '" .. tostring(name) .. "' not found in the sandbox", 2) end
    -- mode "t": the sandbox refuses bytecode
    local chunk = assert(loadfile(root .. "/lua/tally/" .. file .. ".lua", "t", env))
    local v = chunk(name)
    if v == nil then v = true end
    loaded[name] = v
    return v
  end
  return env
end

--- Loads a rule script in env and returns its plugin table.
function M.load_rule(path, env)
  local chunk = assert(loadfile(path, "t", env))
  return chunk()
end

local function handles(plugin, msg)
  if plugin.types == nil then return true end
  for _, t in ipairs(plugin.types) do
    if t == msg.type then return true end
  end
  return false
end

-- A process result is a split when it is a list of messages rather than one message.
local function is_split(r)
  return r.type == nil and type(r[1]) == "table"
end

--- Runs msg through the process plugins in order; returns the list of surviving messages.
-- Errors follow on_error, defaulting by stage: "before" fails closed, "enrichment" fails open.
function M.run(plugins, msg, ctx)
  local current = { msg }
  for _, plugin in ipairs(plugins) do
    local nxt = {}
    for _, m in ipairs(current) do
      if not handles(plugin, m) then
        nxt[#nxt + 1] = m
      else
        local ok, r = pcall(plugin.process, m, ctx)
        if not ok then
          local policy = plugin.on_error or (plugin.stage == "enrichment" and "pass" or "drop")
          ctx:log("error", plugin.name .. ": " .. tostring(r))
          if policy == "pass" then nxt[#nxt + 1] = m end
        elseif r ~= nil then
          if is_split(r) then
            for _, x in ipairs(r) do nxt[#nxt + 1] = x end
          else
            nxt[#nxt + 1] = r
          end
        end
      end
    end
    current = nxt
  end
  return current
end

return M
