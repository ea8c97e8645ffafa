--- Deterministic sampling by a key: the same key is always in or always out at a given rate, so
-- a sampled user's whole journey is kept (or dropped) rather than a random subset of its events.
--
--   return require("tally.sample").rule{ rate = 0.1, key = "anonymousId", events = { "Heartbeat" } }
--
-- A message without the key is passed (kept): sampling must not silently eat traffic it cannot
-- attribute to anyone, and such messages are usually rare and worth seeing.
local util = require("tally.util")

local M = {}
local MODULE = "tally.sample"

local FNV_OFFSET = 2166136261
local FNV_PRIME = 16777619
local BUCKETS = 10000

--- 32-bit FNV-1a hash of a string, as an integer in [0, 2^32). Lua 5.4 integers are 64-bit and
-- wrap on overflow, so multiplying then masking gives the 32-bit product.
function M.fnv1a(s)
  local h = FNV_OFFSET
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * FNV_PRIME) & 0xffffffff
  end
  return h
end

--- True when `key` falls in the sample at `rate` (0..1): (fnv1a(key) % 10000) < rate * 10000.
-- Rates are thus effective to 1/10000; a key in at rate r is in at every rate above r.
function M.keep(rate, key)
  return M.fnv1a(key) % BUCKETS < rate * BUCKETS
end

--- The sampling key of a message as a string, or nil. `key` is a dotted path into the message
-- ("userId", "context.session.id") or a function(msg) returning the key.
function M.key_of(msg, key)
  local v
  if type(key) == "function" then v = key(msg) else v = util.get_path(msg, key) end
  if type(v) == "string" then return v ~= "" and v or nil end
  return util.id_string(v)
end

local OPTIONS = util.set{ "rate", "key", "events", "salt", "hash" }

local function build(opts)
  util.check_type(MODULE, opts, "rate", "number")
  if opts.rate == nil or opts.rate < 0 or opts.rate > 1 then
    util.fail(MODULE, "option 'rate' is required, between 0 and 1")
  end
  util.check_type(MODULE, opts, "key", "string|function")
  util.check_type(MODULE, opts, "events", "table|string")
  util.check_type(MODULE, opts, "salt", "string")
  util.check_choice(MODULE, opts, "hash", { "auto", "fnv1a", "ctx" })
  local rate, key, salt = opts.rate, opts.key or "anonymousId", opts.salt or ""
  local events = opts.events and util.set(opts.events)
  local hash = opts.hash or "auto"
  -- a dotted path is split once here, not on every message
  local path = type(key) == "string" and util.split_path(key)

  return function(msg, ctx)
    -- with `events`, only those track events are sampled; everything else passes
    if events and not (msg.type == "track" and events[msg.event]) then return msg end
    local k
    if path then k = util.id_string(util.get_parts(msg, path)) else k = M.key_of(msg, key) end
    if k == nil then return msg end
    local keep
    -- ctx:sample is the same formula in C: identical answers, a fraction of the cost
    if hash == "ctx" or (hash == "auto" and ctx and ctx.sample) then
      keep = ctx:sample(rate, salt .. k)
    else
      keep = M.keep(rate, salt .. k)
    end
    if keep then return msg end
    return nil
  end
end

--- rule(opts) -> plugin table (stage "before"). Options:
--   rate = 0.1                        required, 0..1
--   key = "anonymousId" (default)     a dotted path into the message, or function(msg) -> key
--   events = { "Heartbeat" }          only sample these track events (default: every message)
--   salt = ""                         prefixed to the key: rules with different salts sample
--                                     independent sets of users at the same rate
--   hash = "auto" (default) | "fnv1a" | "ctx"   "ctx" asks ctx:sample(rate, salt .. key), which
--                                     the runtime computes with the same FNV-1a formula in C;
--                                     "auto" does so when ctx has it, "fnv1a" always hashes in Lua
M.rule = util.constructor{
  module = MODULE, name = "sample", stage = "before", entry = "process",
  options = OPTIONS, build = build,
}

return M
