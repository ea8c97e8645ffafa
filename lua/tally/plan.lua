--- A tracking plan as data: a JSON Schema (subset) per event, a common schema for every event,
-- an optional schema for identify traits, and policies for what the plan does not cover.
--
--   local plan = tally.load_json("plan.json")   -- or a Lua table
--   return require("tally.plan").rule{ plan = plan, unplanned_events = "flag", violations = "block" }
--
-- Schemas are compiled when the rule is built: an unsupported keyword or regex feature is an
-- error then, not a silent pass later.
local util = require("tally.util")

local M = {}
local MODULE = "tally.plan"

------------------------------------------------------------------------------------------------
-- Regex subset -> Lua pattern.
--
-- Supported: literal characters; `.`; `^` at the very start and `$` at the very end; classes
-- `[abc]`, `[^abc]`, `[a-z0-9]` (ranges between letters or digits); escapes `\d \D \w \W \s \S`
-- (ASCII meaning) inside and outside classes, `\t \n \r`, and `\` before any punctuation for the
-- literal; quantifiers `* + ?` and `{n}`, `{n,}`, `{n,m}` (n, m <= 100) after a single item.
-- Lazy forms (`*?`, `+?`, `??`) are accepted and act like the greedy ones: a pattern is only used
-- for match / no match, where laziness makes no difference.
-- Rejected: groups, alternation `|`, anchors elsewhere, backreferences, `\b`, lookaround, Unicode
-- escapes, non-ASCII characters inside classes or before a quantifier, and a `]` right after `[`.
-- Matching is by bytes: `.` and classes match one byte, so a non-ASCII character counts as
-- several `.`; literal non-ASCII text matches as expected.

local MAX_REPEAT = 100

local CLASS_ESCAPES = { d = "%d", D = "%D", w = "%w_", s = "%s" }
local ITEM_ESCAPES = { d = "%d", D = "%D", w = "[%w_]", W = "[^%w_]", s = "%s", S = "%S" }
local CONTROL_ESCAPES = { t = "\t", n = "\n", r = "\r" }

local function lua_literal(ch)
  if ch:match("^%w$") or ch:byte() >= 128 then return ch end
  return "%" .. ch
end

-- Reads a class starting at re[i] == "["; returns the Lua class text and the index after "]".
local function read_class(re, i, fail)
  local j = i + 1
  local out = { "[" }
  if re:sub(j, j) == "^" then out[#out + 1] = "^"; j = j + 1 end
  if re:sub(j, j) == "]" then fail("a ']' right after '[' is ambiguous; escape it as '\\]'") end
  while true do
    local ch = re:sub(j, j)
    if ch == "" then fail("unterminated character class") end
    if ch == "]" then break end
    if ch:byte() >= 128 then fail("non-ASCII characters inside a class are not supported") end
    if ch == "\\" then
      local e = re:sub(j + 1, j + 1)
      if CLASS_ESCAPES[e] then
        out[#out + 1] = CLASS_ESCAPES[e]
      elseif CONTROL_ESCAPES[e] then
        out[#out + 1] = CONTROL_ESCAPES[e]
      elseif e:match("^%p$") then
        out[#out + 1] = "%" .. e
      else
        fail("unsupported escape '\\" .. e .. "' in a class")
      end
      j = j + 2
    elseif re:sub(j + 1, j + 1) == "-" and re:sub(j + 2, j + 2) ~= "]" and re:sub(j + 2, j + 2) ~= "" then
      local hi = re:sub(j + 2, j + 2)
      if not (ch:match("^%w$") and hi:match("^%w$")) then
        fail("ranges are supported between letters or digits only")
      end
      out[#out + 1] = ch .. "-" .. hi
      j = j + 3
    else
      out[#out + 1] = lua_literal(ch)
      j = j + 1
    end
  end
  out[#out + 1] = "]"
  return table.concat(out), j + 1
end

-- Reads one item at re[i]; returns its Lua text, the next index, and whether it may take a
-- quantifier (a single Lua item).
local function read_item(re, i, fail)
  local ch = re:sub(i, i)
  if ch == "[" then
    local cls, nxt = read_class(re, i, fail)
    return cls, nxt, true
  elseif ch == "\\" then
    local e = re:sub(i + 1, i + 1)
    if e == "" then fail("trailing backslash") end
    if ITEM_ESCAPES[e] then return ITEM_ESCAPES[e], i + 2, true end
    if CONTROL_ESCAPES[e] then return CONTROL_ESCAPES[e], i + 2, true end
    if e:match("^%p$") then return "%" .. e, i + 2, true end
    fail("unsupported escape '\\" .. e .. "'")
  elseif ch == "." then
    return ".", i + 1, true
  elseif ch == "(" or ch == ")" or ch == "|" then
    fail("groups and alternation ('" .. ch .. "') are not supported")
  elseif ch == "^" or ch == "$" then
    fail("'" .. ch .. "' is only supported at the start ('^') or end ('$') of the pattern")
  elseif ch == "*" or ch == "+" or ch == "?" or ch == "{" then
    fail("quantifier '" .. ch .. "' has nothing to repeat")
  end
  return lua_literal(ch), i + 1, ch:byte() < 128
end

-- Reads an optional quantifier at re[i]; returns min, max (nil: unbounded) and the next index,
-- or nil when there is none.
local function read_quantifier(re, i, fail)
  local ch = re:sub(i, i)
  local lo, hi, nxt
  if ch == "*" then lo, hi, nxt = 0, nil, i + 1
  elseif ch == "+" then lo, hi, nxt = 1, nil, i + 1
  elseif ch == "?" then lo, hi, nxt = 0, 1, i + 1
  elseif ch == "{" then
    local a, comma, b, close = re:match("^{(%d+)(,?)(%d*)()}", i)
    if not a then fail("malformed repetition '{' (use {n}, {n,} or {n,m})") end
    lo = tonumber(a)
    hi = comma == "" and lo or (b ~= "" and tonumber(b) or nil)
    if lo > MAX_REPEAT or (hi and hi > MAX_REPEAT) then fail("repetition counts above 100") end
    if hi and hi < lo then fail("repetition {n,m} with m < n") end
    nxt = close + 1
  else
    return nil
  end
  if re:sub(nxt, nxt) == "?" then nxt = nxt + 1 end -- lazy: same match / no match
  local after = re:sub(nxt, nxt)
  if after == "*" or after == "+" or after == "?" or after == "{" then
    fail("nested quantifiers are not supported")
  end
  return lo, hi, nxt
end

local function repeat_item(item, lo, hi)
  if lo == 0 and hi == nil then return item .. "*" end
  if lo == 1 and hi == nil then return item .. "+" end
  local parts = {}
  for _ = 1, lo do parts[#parts + 1] = item end
  if hi == nil then
    parts[#parts + 1] = item .. "*"
  else
    for _ = lo + 1, hi do parts[#parts + 1] = item .. "?" end
  end
  return table.concat(parts)
end

--- Translates a regex of the supported subset into a Lua pattern with the same match / no match
-- result for string.find. Raises "pattern <re>: <problem>" for anything outside the subset.
function M.regex_to_lua(re)
  local function fail(why) error("pattern " .. util.show(re) .. ": " .. why, 0) end
  local out, i, n = {}, 1, #re
  if re:sub(1, 1) == "^" then out[1] = "^"; i = 2 end
  while i <= n do
    if i == n and re:sub(i, i) == "$" then
      out[#out + 1] = "$" -- escapes are consumed in pairs, so this `$` is never a `\$`
      break
    end
    local item, nxt, quantifiable = read_item(re, i, fail)
    local lo, hi, after = read_quantifier(re, nxt, fail)
    if lo then
      if not quantifiable then fail("a quantifier after a non-ASCII character is not supported") end
      out[#out + 1] = repeat_item(item, lo, hi)
      i = after
    else
      out[#out + 1] = item
      i = nxt
    end
  end
  return table.concat(out)
end

------------------------------------------------------------------------------------------------
-- JSON Schema subset.
--
-- Keywords: type (a name or a list: string, number, integer, boolean, object, array, null),
-- enum, const, pattern, minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers, draft 6+),
-- minLength, maxLength (UTF-8 characters), properties, required, additionalProperties (boolean
-- or schema), items (one schema for every element), minItems, maxItems. `true` and `false` are
-- schemas too. Annotations are accepted and ignored: title, description, $comment, $schema, $id,
-- default, examples, format (format is not validated). Anything else is rejected.
--
-- "integer" follows math.type: 3 is an integer, 3.0 (a JSON 3.0, kept a float by the codec) is a
-- number only. An untagged empty Lua table is both an object and an array.

local KEYWORDS = util.set{ "type", "enum", "const", "pattern", "minimum", "maximum",
  "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "properties", "required",
  "additionalProperties", "items", "minItems", "maxItems" }
local ANNOTATIONS = util.set{ "title", "description", "$comment", "$schema", "$id", "default",
  "examples", "format" }
local TYPE_NAMES = util.set{ "string", "number", "integer", "boolean", "object", "array", "null" }

local function join(field, key)
  if type(key) == "number" then return string.format("%s[%d]", field, key - 1) end
  if key:match("^[%a_][%w_]*$") then return field .. "." .. key end
  return field .. "[" .. string.format("%q", key) .. "]"
end

-- Every checked value gets its path before it is checked (the checks are plain functions of
-- (value, field, out)), and the same paths come back message after message: remember them, in a
-- bounded cache dropped when full, rather than match and concatenate for every property. The
-- bound is on bytes (a path and ~64 bytes of table slot each), since keys come from the messages.
local PATHS_MAX = 256 * 1024
local paths, paths_size = {}, 0

local function field_join(field, key)
  local under = paths[field]
  local hit = under and under[key]
  if hit then return hit end
  local path = join(field, key)
  if paths_size >= PATHS_MAX then paths, paths_size = {}, 0 end
  under = paths[field]
  if not under then
    under = {}
    paths[field] = under
  end
  under[key] = path
  paths_size = paths_size + #path + 64
  return path
end

local function add(out, keyword, field, description)
  out[#out + 1] = { type = "plan." .. keyword, field = field, description = description }
end

local function has_type(v, name)
  local t = util.json_type(v)
  if name == "number" then return t == "number" or t == "integer" end
  if t == name then return true end
  -- an untagged empty table cannot tell an empty array from an empty object
  return type(v) == "table" and next(v) == nil and getmetatable(v) == nil
    and (name == "array" or name == "object")
end

local compile_schema

local function schema_error(where, fmt, ...)
  util.fail(MODULE, "%s: " .. fmt, where, ...)
end

local function need_number(s, key, where)
  if s[key] ~= nil and type(s[key]) ~= "number" then
    schema_error(where, "'%s' must be a number%s", key,
      type(s[key]) == "boolean" and " (the draft-4 boolean form is not supported)" or "")
  end
end

local function need_count(s, key, where)
  local v = s[key]
  if v ~= nil and (math.tointeger(v) == nil or v < 0) then
    schema_error(where, "'%s' must be a non-negative integer", key)
  end
end

local function compile_type(s, where, checks)
  if s.type == nil then return end
  local names = util.as_list(s.type)
  for _, name in ipairs(names) do
    if not TYPE_NAMES[name] then schema_error(where, "unknown type %s", util.show(name)) end
  end
  local wanted = table.concat(names, " or ")
  checks[#checks + 1] = function(v, field, out)
    for _, name in ipairs(names) do
      if has_type(v, name) then return end
    end
    add(out, "type", field, string.format("expected %s, got %s", wanted, util.json_type(v) or type(v)))
  end
end

local function compile_values(s, where, checks)
  if s.enum ~= nil then
    if type(s.enum) ~= "table" or #s.enum == 0 then
      schema_error(where, "'enum' must be a non-empty list")
    end
    local allowed = s.enum
    checks[#checks + 1] = function(v, field, out)
      for _, a in ipairs(allowed) do
        if util.json_equal(v, a) then return end
      end
      local shown = {}
      for i, a in ipairs(allowed) do shown[i] = util.show(a) end
      add(out, "enum", field, string.format("%s is not one of %s", util.show(v),
        table.concat(shown, ", ")))
    end
  end
  if s.const ~= nil then
    local want = s.const
    checks[#checks + 1] = function(v, field, out)
      if not util.json_equal(v, want) then
        add(out, "const", field, string.format("%s is not %s", util.show(v), util.show(want)))
      end
    end
  end
end

-- Character count of a UTF-8 string; byte count when it is not valid UTF-8.
local function char_len(s)
  return utf8.len(s) or #s
end

local function compile_string(s, where, checks)
  need_count(s, "minLength", where)
  need_count(s, "maxLength", where)
  local lua_pattern
  if s.pattern ~= nil then
    if type(s.pattern) ~= "string" then schema_error(where, "'pattern' must be a string") end
    local ok, res = pcall(M.regex_to_lua, s.pattern)
    if not ok then schema_error(where, "%s", res) end
    lua_pattern = res
  end
  local min, max, re = s.minLength, s.maxLength, s.pattern
  if min == nil and max == nil and lua_pattern == nil then return end
  checks[#checks + 1] = function(v, field, out)
    if type(v) ~= "string" then return end
    local n = char_len(v)
    if min and n < min then
      add(out, "minLength", field, string.format("%d characters, fewer than %d", n, min))
    end
    if max and n > max then
      add(out, "maxLength", field, string.format("%d characters, more than %d", n, max))
    end
    if lua_pattern and not v:find(lua_pattern) then
      add(out, "pattern", field, string.format("%s does not match %s", util.show(v), util.show(re)))
    end
  end
end

local NUMBER_CHECKS = {
  { "minimum", function(v, b) return v >= b end, "less than" },
  { "maximum", function(v, b) return v <= b end, "greater than" },
  { "exclusiveMinimum", function(v, b) return v > b end, "not greater than" },
  { "exclusiveMaximum", function(v, b) return v < b end, "not less than" },
}

local function compile_number(s, where, checks)
  for _, c in ipairs(NUMBER_CHECKS) do
    local key, ok_fn, words = c[1], c[2], c[3]
    need_number(s, key, where)
    local bound = s[key]
    if bound ~= nil then
      checks[#checks + 1] = function(v, field, out)
        if type(v) == "number" and not ok_fn(v, bound) then
          add(out, key, field, string.format("%s is %s %s", util.show(v), words, util.show(bound)))
        end
      end
    end
  end
end

local function compile_object(s, where, checks)
  local props = {}
  if s.properties ~= nil then
    if not util.is_object(s.properties) then schema_error(where, "'properties' must be an object") end
    for _, k in ipairs(util.sorted_keys(s.properties)) do
      props[k] = compile_schema(s.properties[k], field_join(where .. ".properties", k))
    end
  end
  local required = s.required or {}
  if type(required) ~= "table" then schema_error(where, "'required' must be a list of names") end
  for _, k in ipairs(required) do
    if type(k) ~= "string" then schema_error(where, "'required' must be a list of names") end
  end
  local extra = s.additionalProperties
  if extra ~= nil and type(extra) ~= "boolean" then
    extra = compile_schema(extra, where .. ".additionalProperties")
  end
  if s.properties == nil and #required == 0 and extra == nil then return end

  local prop_names = util.sorted_keys(props)
  checks[#checks + 1] = function(v, field, out)
    if not util.is_object(v) then return end
    for _, k in ipairs(required) do
      if v[k] == nil then add(out, "required", field_join(field, k), "is required") end
    end
    for _, k in ipairs(prop_names) do
      if v[k] ~= nil then props[k](v[k], field_join(field, k), out) end
    end
    if extra == nil or extra == true then return end
    for _, k in ipairs(util.sorted_keys(v)) do
      if not props[k] then
        if extra == false then
          add(out, "additionalProperties", field_join(field, k), "is not allowed")
        else
          extra(v[k], field_join(field, k), out)
        end
      end
    end
  end
end

local function compile_array(s, where, checks)
  need_count(s, "minItems", where)
  need_count(s, "maxItems", where)
  local item
  if s.items ~= nil then
    if util.is_array(s.items) then
      schema_error(where, "'items' must be one schema (the tuple form is not supported)")
    end
    item = compile_schema(s.items, where .. ".items")
  end
  local min, max = s.minItems, s.maxItems
  if item == nil and min == nil and max == nil then return end
  checks[#checks + 1] = function(v, field, out)
    if not util.is_array(v) then return end
    local n = #v
    if min and n < min then add(out, "minItems", field, string.format("%d items, fewer than %d", n, min)) end
    if max and n > max then add(out, "maxItems", field, string.format("%d items, more than %d", n, max)) end
    if item then
      for i = 1, n do item(v[i], field_join(field, i), out) end
    end
  end
end

--- Compiles a schema into a validator `function(value, field, out)` that appends
-- { type = "plan.<keyword>", field = <path>, description = <text> } to the list `out`.
-- `where` names the schema in construction errors.
compile_schema = function(s, where)
  if s == true then return function() end end
  if s == false then
    return function(_, field, out) add(out, "false", field, "no value is allowed here") end
  end
  if not util.is_object(s) then schema_error(where, "a schema must be an object or a boolean") end
  for _, k in ipairs(util.sorted_keys(s)) do
    if not KEYWORDS[k] and not ANNOTATIONS[k] then
      schema_error(where, "unsupported keyword %s", util.show(k))
    end
  end
  local checks = {}
  compile_type(s, where, checks)
  compile_values(s, where, checks)
  compile_string(s, where, checks)
  compile_number(s, where, checks)
  compile_object(s, where, checks)
  compile_array(s, where, checks)
  return function(v, field, out)
    for i = 1, #checks do checks[i](v, field, out) end
  end
end

--- Validates a value against a schema; returns the list of problems (empty when valid).
-- `field` (default "value") is the path used in the problems.
function M.validate(schema, value, field)
  local out = {}
  compile_schema(schema, "schema")(value, field or "value", out)
  return out
end

--- Compiles a schema once for repeated use: returns function(value, field) -> problems.
function M.compile(schema)
  local check = compile_schema(schema, "schema")
  return function(value, field)
    local out = {}
    check(value, field or "value", out)
    return out
  end
end

------------------------------------------------------------------------------------------------
-- The rule.

local OPTIONS = util.set{ "plan", "unplanned_events", "unplanned_properties", "violations" }
local PLAN_KEYS = util.set{ "events", "common", "identify" }
local POLICIES = { "allow", "flag", "block" }

-- Names declared under `properties` of a schema: what "planned property" means.
local function declared(schema, into)
  if type(schema) == "table" and util.is_object(schema.properties) then
    for k in pairs(schema.properties) do into[k] = true end
  end
  return into
end

local function compile_plan(p)
  if not util.is_object(p) then util.fail(MODULE, "option 'plan' must be a table") end
  for k in pairs(p) do
    if not PLAN_KEYS[k] then
      util.fail(MODULE, "plan: unknown key %s (expected events, common, identify)", util.show(k))
    end
  end
  if p.events ~= nil and not util.is_object(p.events) then
    util.fail(MODULE, "plan.events must be a table of event name -> schema")
  end
  local c = { events = {}, declared = {} }
  for _, name in ipairs(util.sorted_keys(p.events or {})) do
    local where = "plan.events[" .. string.format("%q", name) .. "]"
    c.events[name] = compile_schema(p.events[name], where)
    c.declared[name] = declared(p.events[name], declared(p.common, {}))
  end
  if p.common ~= nil then c.common = compile_schema(p.common, "plan.common") end
  if p.identify ~= nil then
    c.identify = compile_schema(p.identify, "plan.identify")
    c.identify_declared = declared(p.identify, {})
  end
  return c
end

-- Records a finding on the message (context.protocols.violations), Segment Protocols style.
local function record(msg, v)
  if msg.context == nil then msg.context = {} end
  local context = msg.context
  if type(context) ~= "table" then return end
  if context.protocols == nil then context.protocols = {} end
  local protocols = context.protocols
  if type(protocols) ~= "table" then return end
  if protocols.violations == nil then protocols.violations = util.array() end
  local list = protocols.violations
  if type(list) ~= "table" then return end
  list[#list + 1] = { type = v.type, field = v.field, description = v.description }
end

-- Applies a policy to findings; returns true when the message must be dropped. "omit" (unplanned
-- properties only) flags and removes the property; findings carry `payload` and `key` for it.
local function apply(policy, findings, msg, ctx)
  if policy == "allow" then return false end
  for _, v in ipairs(findings) do
    util.violation(ctx, v.type, v.field .. ": " .. v.description)
    if policy == "flag" or policy == "omit" then record(msg, v) end
    if policy == "omit" then v.payload[v.key] = nil end
  end
  return policy == "block" and #findings > 0
end

local NONE = {}

local function unplanned(payload, pkey, planned)
  -- most messages have only planned properties: find that out without sorting the keys
  local all_planned = true
  for k in pairs(payload) do
    if type(k) == "string" and not planned[k] then
      all_planned = false
      break
    end
  end
  if all_planned then return NONE end
  local out = {}
  for _, k in ipairs(util.sorted_keys(payload)) do
    if not planned[k] then
      add(out, "unplanned_property", field_join(pkey, k), "is not in the tracking plan")
      out[#out].payload, out[#out].key = payload, k
    end
  end
  return out
end

local function build(opts)
  if opts.plan == nil then util.fail(MODULE, "option 'plan' is required") end
  util.check_choice(MODULE, opts, "unplanned_events", POLICIES)
  util.check_choice(MODULE, opts, "unplanned_properties", { "allow", "flag", "block", "omit" })
  util.check_choice(MODULE, opts, "violations", POLICIES)
  local p = compile_plan(opts.plan)
  local on_event = opts.unplanned_events or "allow"
  local on_property = opts.unplanned_properties or "allow"
  local on_violation = opts.violations or "flag"

  -- Returns the schema findings and the unplanned-property findings for the message, or nil
  -- when the plan does not cover its type.
  local function findings_for(msg)
    if msg.type == "track" then
      local payload = util.is_object(msg.properties) and msg.properties or {}
      local event = msg.event
      local check = p.events[event]
      local problems = {}
      if check then check(payload, "properties", problems) end
      if p.common then p.common(payload, "properties", problems) end
      -- an unplanned event is reported once as such, not again for each of its properties
      local extra = check and unplanned(payload, "properties", p.declared[event]) or {}
      return problems, extra
    elseif msg.type == "identify" and p.identify then
      local payload = util.is_object(msg.traits) and msg.traits or {}
      local problems = {}
      p.identify(payload, "traits", problems)
      return problems, unplanned(payload, "traits", p.identify_declared)
    end
    return nil
  end

  return function(msg, ctx)
    if msg.type == "track" and p.events[msg.event] == nil then
      local finding = { type = "plan.unplanned_event", field = "event",
                        description = string.format("%s is not in the tracking plan", util.show(msg.event)) }
      if apply(on_event, { finding }, msg, ctx) then return nil end
    end
    local problems, extra = findings_for(msg)
    if problems == nil then return msg end
    local drop = apply(on_violation, problems, msg, ctx)
    drop = apply(on_property, extra, msg, ctx) or drop
    if drop then return nil end
    return msg
  end
end

--- rule(opts) -> plugin table (stage "before", types track and identify). Options:
--   plan = { events = { [name] = schema }, common = schema, identify = schema }   (required)
--   unplanned_events = "allow" (default) | "flag" | "block"
--   unplanned_properties = "allow" (default) | "flag" | "block" | "omit" (flag and remove it)
--   violations = "allow" | "flag" (default) | "block"
-- "flag" calls ctx:violation and appends { type, field, description } to
-- context.protocols.violations; "block" calls ctx:violation and drops the message.
local make_rule = util.constructor{
  module = MODULE, name = "plan", stage = "before", entry = "process",
  types = { "track", "identify" }, options = OPTIONS, build = build,
}

-- The plugin also lists its planned event names (sorted) as plain data, for `tally report`.
function M.rule(opts)
  local plugin = make_rule(opts)
  plugin.planned_events = util.sorted_keys(opts.plan.events or {})
  return plugin
end

return M
