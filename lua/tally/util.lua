--- Shared helpers for the bundled rule modules (`tally.*`).
--
-- Pure Lua 5.4: only string/table/math/utf8 and the optional `tally` host table, so the modules
-- run unchanged inside tally's sandbox and under plain lua5.4 (busted).
local M = {}

-- The C sandbox provides a global `tally` with the JSON null sentinel and an array tagger. Under
-- plain lua5.4 it is absent. pcall: a strict sandbox may raise on reads of undefined globals.
local function find_host()
  local ok, host = pcall(function() return tally end) -- luacheck: ignore 113
  if ok and type(host) == "table" then return host end
  return {}
end

local host = find_host()

--- The JSON null sentinel (a light userdata in the sandbox; nil under plain Lua).
M.null = host.null

-- __name of the metatable the C codec puts on decoded JSON arrays (src/json_lua.h).
local ARRAY_NAME = "tally.array"
-- Used only when there is no host tagger, so that empty lists built here still read as arrays.
local fallback_array_mt = { __name = ARRAY_NAME }

--- True when v is the JSON null sentinel. Never true for nil.
function M.is_null(v)
  return v ~= nil and v == M.null
end

--- True when v is absent: nil or JSON null. Rules treat both as "not given".
function M.is_absent(v)
  return v == nil or M.is_null(v)
end

--- Tags t (default: a new table) so it encodes as a JSON array even when empty; returns t.
function M.array(t)
  t = t or {}
  if host.array then
    host.array(t)
  elseif getmetatable(t) == nil then
    setmetatable(t, fallback_array_mt)
  end
  return t
end

--- True when v is a tagged array, or an untagged table whose keys are exactly 1..n (n >= 1):
-- the same rule the C codec uses to decide between a JSON array and an object.
function M.is_array(v)
  if type(v) ~= "table" then return false end
  local mt = getmetatable(v)
  -- in the sandbox the tag is protected: getmetatable returns its name
  if mt == ARRAY_NAME or (type(mt) == "table" and mt.__name == ARRAY_NAME) then return true end
  local n, max = 0, 0
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
    if k > max then max = k end
  end
  return n > 0 and n == max
end

--- True for a table that encodes as a JSON object (an untagged empty table counts as one).
function M.is_object(v)
  return type(v) == "table" and not M.is_array(v)
end

--- The JSON type of v: "null", "boolean", "integer", "number" (a float), "string", "array",
-- "object", or nil for values JSON cannot hold (nil, functions, other userdata).
function M.json_type(v)
  if M.is_null(v) then return "null" end
  local t = type(v)
  if t == "number" then
    return math.type(v) == "integer" and "integer" or "number"
  elseif t == "table" then
    return M.is_array(v) and "array" or "object"
  elseif t == "string" or t == "boolean" then
    return t
  end
  return nil
end

--- Shallow copy; keeps the array tag.
function M.copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  if M.is_array(t) then M.array(out) end
  return out
end

--- Deep copy of a JSON-like value; keeps array tags. Non-table values are returned as they are.
function M.deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = M.deep_copy(x) end
  if M.is_array(v) then M.array(out) end
  return out
end

--- JSON equality: numbers by value (1 == 1.0), arrays element-wise, objects key-wise.
function M.json_equal(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  if M.is_array(a) ~= M.is_array(b) then
    -- an untagged empty table is both; treat {} and [] as equal only when both are empty
    return next(a) == nil and next(b) == nil
  end
  for k, x in pairs(a) do
    if not M.json_equal(x, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

--- String keys of t in byte order, so that loops (and the violations they report) are stable
-- whatever Lua's hash order.
function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

--- A string or a list of strings as a list.
function M.as_list(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return { v }
end

--- A list as a lookup set.
function M.set(list)
  local s = {}
  for _, v in ipairs(M.as_list(list)) do s[v] = true end
  return s
end

--- Reads a dotted path ("context.session.id") from a table; nil when any step is missing.
--- A dotted path as its list of parts, for get_parts: "context.session.id" -> {context, session, id}.
function M.split_path(path)
  local parts = {}
  for part in string.gmatch(path, "[^.]+") do parts[#parts + 1] = part end
  return parts
end

--- get_path with the path already split (split_path): no pattern matching per call.
function M.get_parts(t, parts)
  local v = t
  for i = 1, #parts do
    if type(v) ~= "table" then return nil end
    v = v[parts[i]]
  end
  return v
end

function M.get_path(t, path)
  local v = t
  for part in string.gmatch(path, "[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

--- An identifier as a string: non-empty strings as they are, integral numbers without exponent or
-- ".0" (so 42 and 42.0 both give "42"); nil for anything else.
function M.id_string(v)
  if type(v) == "string" then return v ~= "" and v or nil end
  if type(v) == "number" then
    local i = math.tointeger(v)
    if i then return string.format("%d", i) end
    return nil
  end
  return nil
end

--- Renders a value in a stable text form (sorted keys), used as a cache key and in messages.
function M.canonical(v)
  local t = type(v)
  if t == "table" then
    local parts = {}
    if M.is_array(v) then
      for i = 1, #v do parts[i] = M.canonical(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    for _, k in ipairs(M.sorted_keys(v)) do
      parts[#parts + 1] = string.format("%q", k) .. ":" .. M.canonical(v[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return string.format("%q", v)
  elseif t == "number" then
    return math.type(v) == "integer" and string.format("%d", v) or string.format("%.17g", v)
  elseif M.is_null(v) then
    return "null"
  end
  return tostring(v)
end

--- Short, quoted rendering of a value for violation texts.
function M.show(v)
  local s = M.canonical(v):gsub("\\\n", "\\n") -- %q breaks lines; texts are one line
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return s
end

------------------------------------------------------------------------------------------------
-- Option checking. Mistyped options are the most common rule bug, so every constructor rejects
-- unknown keys and bad values with a message naming the module and the option.

--- Raises "<module>: <text>" without a position (the position would point inside the module).
function M.fail(module, fmt, ...)
  error(module .. ": " .. string.format(fmt, ...), 0)
end

--- Checks that opts[key] is nil or has one of the Lua types listed in `types` ("string|table").
function M.check_type(module, opts, key, types)
  local v = opts[key]
  if v == nil then return end
  for t in string.gmatch(types, "[^|]+") do
    if type(v) == t then return end
  end
  M.fail(module, "option '%s' must be a %s (got %s)", key, types:gsub("|", " or "), type(v))
end

--- Checks that opts[key] is nil or one of the strings in `choices`.
function M.check_choice(module, opts, key, choices)
  local v = opts[key]
  if v == nil then return end
  for _, c in ipairs(choices) do
    if v == c then return end
  end
  M.fail(module, "option '%s' must be one of %s (got %s)", key, table.concat(choices, ", "),
    M.show(v))
end

------------------------------------------------------------------------------------------------
-- Rule constructors.

-- Options every constructor accepts; they describe the plugin to the C side.
local COMMON = { name = true, types = true, on_error = true, stage = true }

local function check_known(module, opts, known)
  for k in pairs(opts) do
    if not COMMON[k] and not known[k] then
      M.fail(module, "unknown option '%s'", tostring(k))
    end
  end
end

local function merged(opts, cfg)
  local out = {}
  for k, v in pairs(opts) do out[k] = v end
  for k, v in pairs(cfg) do out[k] = v end
  return out
end

-- ctx.config holds the rule's options from the runtime configuration. They override the script's
-- options, so that an operator can e.g. switch a naming rule from "report" to "fix" without
-- editing scripts. Compiling options can be costly (a tracking plan), so compiled handlers are
-- cached by config table identity and, in case the C side builds a fresh table per call, by the
-- config's canonical text (bounded, so a config that changes every call cannot grow memory).
-- Identity is the last table seen, not a weak-keyed table: that would take a metatable, and the
-- result of a script that ever sets one is walked for metatables after every call.
local MAX_VARIANTS = 16

local function variant_cache(build, opts)
  local last_cfg, last_h
  local by_text, count = {}, 0
  return function(cfg)
    if last_h and rawequal(cfg, last_cfg) then return last_h end
    local h
    local text = M.canonical(cfg)
    h = by_text[text]
    if not h then
      if count >= MAX_VARIANTS then by_text, count = {}, 0 end
      h = build(merged(opts, cfg))
      by_text[text], count = h, count + 1
    end
    last_cfg, last_h = cfg, h
    return h
  end
end

--- Returns a constructor `rule(opts) -> plugin table`.
--
-- spec.module   module name used in error messages ("tally.naming")
-- spec.name     default plugin name
-- spec.stage    default stage; spec.entry is "process" (before/enrichment) or "map" (destination)
-- spec.types    default message types (nil: all)
-- spec.options  set of the module's own option names
-- spec.build    function(opts) -> handler(msg, ctx); validates opts and raises on bad ones
function M.constructor(spec)
  local module = spec.module
  return function(opts)
    opts = opts or {}
    if type(opts) ~= "table" then M.fail(module, "options must be a table (got %s)", type(opts)) end
    check_known(module, opts, spec.options)
    M.check_type(module, opts, "name", "string")
    M.check_type(module, opts, "types", "table|string")
    M.check_choice(module, opts, "on_error", { "drop", "pass" })
    if spec.entry == "process" then
      M.check_choice(module, opts, "stage", { "before", "enrichment" })
    elseif opts.stage ~= nil and opts.stage ~= spec.stage then
      M.fail(module, "option 'stage' must be %s", M.show(spec.stage))
    end

    local base = spec.build(opts)
    local variant = variant_cache(function(o)
      check_known(module, o, spec.options)
      return spec.build(o)
    end, opts)

    local types = opts.types or spec.types
    local plugin = {
      name = opts.name or spec.name,
      stage = opts.stage or spec.stage,
      types = types and M.as_list(types) or nil,
      on_error = opts.on_error,
    }
    plugin[spec.entry] = function(msg, ctx)
      local cfg = ctx and ctx.config
      local handler = base
      if type(cfg) == "table" and next(cfg) ~= nil then handler = variant(cfg) end
      return handler(msg, ctx)
    end
    return plugin
  end
end

------------------------------------------------------------------------------------------------
-- Message helpers.

-- Where a message keeps its free-form fields: traits for identify/group, properties otherwise.
local TRAIT_TYPES = { identify = true, group = true }

--- The key of the message's payload table ("properties" or "traits"), nil for alias.
function M.payload_key(msg)
  if msg.type == "alias" then return nil end
  return TRAIT_TYPES[msg.type] and "traits" or "properties"
end

--- Calls ctx:violation / ctx:log when ctx has them (rules must not fail on a minimal ctx).
function M.violation(ctx, code, text)
  if ctx and ctx.violation then ctx:violation(code, text) end
end

function M.log(ctx, level, text)
  if ctx and ctx.log then ctx:log(level, text) end
end

return M
