--- Naming conventions: event-name case and Object-Action shape, snake_case property keys,
-- rename/flatten maps, forbidden properties and conditionally required properties.
--
--   return require("tally.naming").rule{ style = "lower", object_action = true, mode = "fix" }
--
-- In "report" mode every finding becomes a ctx:violation and the message is left untouched.
-- In "fix" mode names and keys are rewritten when that is safe, fixed findings are only logged
-- at debug level, and what could not be fixed (a missing required property, a key collision)
-- is still reported. The rule never drops a message: use tally.plan to block.
local util = require("tally.util")

local M = {}
local MODULE = "tally.naming"

------------------------------------------------------------------------------------------------
-- Words and case styles (pure helpers, exported).

-- Bytes >= 0x80 count as letters, so UTF-8 words are never split in the middle.
local WORD = "[%w\128-\255]+"

--- Splits a name into words: on anything that is not a letter or digit, and at camelCase
-- boundaries ("buttonName" -> button, Name; "HTMLParser" -> HTML, Parser; "step2Done" -> step2, Done).
function M.words(s)
  local out = {}
  for token in string.gmatch(s, WORD) do
    token = token:gsub("(%l)(%u)", "%1 %2")
    token = token:gsub("(%d)(%u)", "%1 %2")
    token = token:gsub("(%u)(%u%l)", "%1 %2")
    for w in string.gmatch(token, "%S+") do out[#out + 1] = w end
  end
  return out
end

local function capitalize(w)
  return w:sub(1, 1):upper() .. w:sub(2):lower()
end

local STYLES = {
  lower = function(ws) for i, w in ipairs(ws) do ws[i] = w:lower() end return table.concat(ws, " ") end,
  title = function(ws) for i, w in ipairs(ws) do ws[i] = capitalize(w) end return table.concat(ws, " ") end,
  snake = function(ws) for i, w in ipairs(ws) do ws[i] = w:lower() end return table.concat(ws, "_") end,
}

-- Event names and property keys repeat from message to message, and splitting them into words
-- takes several pattern passes: remember the answers, in a bounded cache that is simply dropped
-- when full (a script sees a few thousand distinct names, not millions).
local MEMO_MAX = 4096
local memo, memo_size = {}, 0

-- compute(s, arg) is a plain function, not a closure made per call: a hit allocates nothing.
local function remember(kind, s, compute, arg)
  local cache = memo[kind]
  local hit = cache and cache[s]
  if hit ~= nil then return hit end
  local value = compute(s, arg)
  if memo_size >= MEMO_MAX then memo, memo_size = {}, 0 end
  cache = memo[kind]
  if not cache then
    cache = {}
    memo[kind] = cache
  end
  cache[s] = value
  memo_size = memo_size + 1
  return value
end

local function styled(name, style) return STYLES[style](M.words(name)) end
local function count_words(name) return #M.words(name) end

--- Rewrites a name in a style: "lower" (`user signed up`), "title" (`Button Clicked`) or "snake"
-- (`button_clicked`). A name conforms to a style exactly when to_style(name, style) == name.
function M.to_style(s, style)
  return remember(style, s, styled, style)
end

local function word_count(s)
  return remember("#words", s, count_words)
end

--- snake_case form of a property key: "buttonName" and "Button Name" -> "button_name".
function M.to_snake(s)
  return M.to_style(s, "snake")
end

------------------------------------------------------------------------------------------------
-- Conditions for required properties.
--
-- A `when` is a function(msg) -> truthy, or a table whose fields must all hold (AND); a field
-- given a list holds when any element matches (OR):
--   event = "call started" | { ... }      the event name equals one of these
--   event_prefix = "call " | { ... }      the event name starts with one of these
--   event_match = "^call %a+$" | { ... }  the event name matches one of these Lua patterns
--   type = "track" | { ... }              the message type is one of these
--   has = "episode" | { ... }             one of these properties (traits) is present, not null
--   any = { <when>, <when>, ... }         at least one of the nested conditions holds
-- Conditions see the message after this rule's own fixes (renamed, re-cased event).

local WHEN_KEYS = { event = true, event_prefix = true, event_match = true, type = true, has = true,
                    any = true }

local compile_when

local function any_of(list, pred)
  for _, v in ipairs(util.as_list(list)) do
    if pred(v) then return true end
  end
  return false
end

local function when_table(w, where)
  for k in pairs(w) do
    if not WHEN_KEYS[k] then util.fail(MODULE, "%s: unknown condition '%s'", where, tostring(k)) end
  end
  local nested = {}
  for i, sub in ipairs(util.as_list(w.any)) do
    nested[i] = compile_when(sub, where .. ".any[" .. i .. "]")
  end
  return function(msg)
    local event = type(msg.event) == "string" and msg.event or nil
    local payload = msg[util.payload_key(msg) or "properties"]
    if w.event and not (event and any_of(w.event, function(e) return event == e end)) then
      return false
    end
    if w.event_prefix and not (event and any_of(w.event_prefix,
        function(p) return event:sub(1, #p) == p end)) then
      return false
    end
    if w.event_match and not (event and any_of(w.event_match,
        function(p) return event:find(p) ~= nil end)) then
      return false
    end
    if w.type and not any_of(w.type, function(t) return msg.type == t end) then return false end
    if w.has and not (type(payload) == "table" and any_of(w.has,
        function(k) return not util.is_absent(payload[k]) end)) then
      return false
    end
    if #nested > 0 and not any_of(nested, function(f) return f(msg) end) then return false end
    return true
  end
end

compile_when = function(w, where)
  if type(w) == "function" then return w end
  if type(w) == "table" then return when_table(w, where) end
  util.fail(MODULE, "%s: 'when' must be a function or a table (got %s)", where, type(w))
end

------------------------------------------------------------------------------------------------
-- Option compilation.

local OPTIONS = util.set{ "style", "object_action", "property_case", "rename", "forbidden",
                          "required", "mode" }

local function compile_rename(rename)
  local out = {}
  for from, to in pairs(rename or {}) do
    local where = "rename[" .. util.show(from) .. "]"
    if type(to) == "string" then to = { event = to } end
    if type(to) ~= "table" or type(to.event) ~= "string" or to.event == "" then
      util.fail(MODULE, "%s: expected a new event name or { event = ..., set = {...} }", where)
    end
    if to.set ~= nil and not util.is_object(to.set) then
      util.fail(MODULE, "%s: 'set' must be a table of properties", where)
    end
    out[from] = { event = to.event, set = to.set or {} }
  end
  return out
end

-- forbidden = { channel_id = "use episode_id" }: a hint. The form "use <key>" also names the
-- replacement; { replace = "episode_id", hint = "..." } says it explicitly; true gives no hint.
local function compile_forbidden(forbidden)
  local out = {}
  for key, v in pairs(forbidden or {}) do
    local where = "forbidden[" .. util.show(key) .. "]"
    local entry
    if v == true then
      entry = {}
    elseif type(v) == "string" then
      entry = { hint = v, replace = v:match("^use ([%w_]+)$") }
    elseif type(v) == "table" then
      entry = { hint = v.hint, replace = v.replace }
    else
      util.fail(MODULE, "%s: expected a hint string, true or { replace = ..., hint = ... }", where)
    end
    if entry.replace ~= nil and type(entry.replace) ~= "string" then
      util.fail(MODULE, "%s: 'replace' must be a property name", where)
    end
    if entry.replace == nil and type(v) == "table" and v.hint == nil then
      util.fail(MODULE, "%s: give 'replace' or 'hint'", where)
    end
    out[key] = entry
  end
  return out
end

local function compile_required(required)
  local out = {}
  for i, r in ipairs(required or {}) do
    local where = "required[" .. i .. "]"
    if type(r) == "string" then r = { property = r } end
    if type(r) ~= "table" or type(r.property) ~= "string" then
      util.fail(MODULE, "%s: expected { property = <name>, when = ... }", where)
    end
    local when
    if r.when ~= nil then
      when = compile_when(r.when, where .. ".when")
    elseif r.when_property ~= nil then
      when = compile_when({ has = r.when_property }, where .. ".when_property")
    end
    out[i] = { property = r.property, when = when }
  end
  return out
end

local function compile(opts)
  util.check_choice(MODULE, opts, "style", { "lower", "title", "snake" })
  util.check_type(MODULE, opts, "object_action", "boolean")
  util.check_choice(MODULE, opts, "property_case", { "snake" })
  util.check_choice(MODULE, opts, "mode", { "report", "fix" })
  util.check_type(MODULE, opts, "rename", "table")
  util.check_type(MODULE, opts, "forbidden", "table")
  util.check_type(MODULE, opts, "required", "table")
  return {
    style = opts.style,
    object_action = opts.object_action,
    property_case = opts.property_case,
    fix = opts.mode == "fix",
    rename = compile_rename(opts.rename),
    forbidden = compile_forbidden(opts.forbidden),
    forbidden_keys = util.sorted_keys(opts.forbidden or {}),
    required = compile_required(opts.required),
  }
end

------------------------------------------------------------------------------------------------
-- Checks. Each works on `work` (the message itself in fix mode, a copy in report mode), applies
-- the fix when it can, and tells `found` whether it did. Running the fixes on a copy in report
-- mode keeps both modes on one code path and lets later checks see normalized names (so a
-- `channelId` is reported as forbidden too, not only as badly cased).

local function check_rename(c, work, found)
  local name = work.event
  local r = c.rename[name]
  if not r and c.style then r = c.rename[M.to_style(name, c.style)] end
  if not r then return end
  local payload = work.properties
  local text = string.format("event %s should be %s", util.show(name), util.show(r.event))
  local conflict
  for _, k in ipairs(util.sorted_keys(r.set)) do
    local v = r.set[k]
    text = text .. string.format(" with %s=%s", k, util.show(v))
    if not util.is_absent(payload[k]) and not util.json_equal(payload[k], v) then
      conflict = k
    else
      payload[k] = util.deep_copy(v)
    end
  end
  work.event = r.event
  if conflict then
    found("naming.rename", string.format("%s, but property %s is already %s", text, conflict,
      util.show(payload[conflict])), false)
  else
    found("naming.rename", text, true)
  end
end

local function check_case(c, work, found, quiet)
  local name = work.event
  local want = M.to_style(name, c.style)
  if want == name then return end
  if quiet and want ~= "" then
    work.event = want
    return
  end
  local text = string.format("event %s is not %s case (expected %s)", util.show(name),
    c.style, util.show(want))
  if want == "" then
    found("naming.case", text, false)
  else
    work.event = want
    found("naming.case", text, true)
  end
end

local function check_object_action(work, found)
  if word_count(work.event) >= 2 then return end
  found("naming.object_action", string.format(
    "event %s is not Object Action (name the object, then the action: 'call started')",
    util.show(work.event)), false)
end

-- Rename first (it may be keyed by the re-cased name), then check the case of the final name.
local function check_event(c, work, found, quiet)
  if type(work.event) ~= "string" then return end
  check_rename(c, work, found)
  if c.style then check_case(c, work, found, quiet) end
  if c.object_action then check_object_action(work, found) end
end

local function check_property_case(payload, pkey, found, quiet)
  -- most messages conform: find that out without building and sorting the key list
  local all_fine = true
  for k in pairs(payload) do
    if type(k) == "string" and M.to_snake(k) ~= k then
      all_fine = false
      break
    end
  end
  if all_fine then return end
  for _, k in ipairs(util.sorted_keys(payload)) do
    local want = M.to_snake(k)
    if want == k then
      -- conforms
    elseif quiet and want ~= "" and payload[want] == nil then
      payload[want], payload[k] = payload[k], nil
    else
      local text = string.format("%s.%s is not snake_case (expected %s)", pkey, k, util.show(want))
      if want == "" or payload[want] ~= nil then
        found("naming.property_case", want == "" and text or
          text .. ", which is already present", false)
      else
        payload[want], payload[k] = payload[k], nil
        found("naming.property_case", text, true)
      end
    end
  end
end

local function check_forbidden(c, payload, pkey, found)
  for _, k in ipairs(c.forbidden_keys) do
    local f = c.forbidden[k]
    if payload[k] ~= nil then
      local text = string.format("%s.%s is forbidden", pkey, k)
      if f.hint then text = text .. ": " .. f.hint end
      local r = f.replace
      if r and payload[r] == nil then
        payload[r], payload[k] = payload[k], nil
        found("naming.forbidden", text, true)
      elseif r and util.json_equal(payload[r], payload[k]) then
        payload[k] = nil -- the same value is already under the right name
        found("naming.forbidden", text, true)
      elseif r then
        found("naming.forbidden", text .. string.format(" (%s.%s is already %s)", pkey, r,
          util.show(payload[r])), false)
      else
        found("naming.forbidden", text, false)
      end
    end
  end
end

local function check_required(c, work, payload, pkey, found)
  for _, r in ipairs(c.required) do
    if util.is_absent(payload[r.property]) and (r.when == nil or r.when(work)) then
      local what = type(work.event) == "string" and ("event " .. util.show(work.event))
        or (tostring(work.type) .. " message")
      found("naming.required", string.format("%s.%s is required for %s", pkey, r.property, what),
        false)
    end
  end
end

-- A copy deep enough for every check to write to without touching the caller's message.
local function working_copy(msg, pkey)
  local work = util.copy(msg)
  if pkey and type(msg[pkey]) == "table" then work[pkey] = util.copy(msg[pkey]) end
  return work
end

local function build(opts)
  local c = compile(opts)
  -- One `found` for every message (no closure per call): a rule never runs re-entrantly.
  local cur_ctx
  local function found(code, text, fixed)
    if fixed and c.fix then
      util.log(cur_ctx, "debug", "naming fixed: " .. text)
    else
      util.violation(cur_ctx, code, text)
    end
  end
  return function(msg, ctx)
    local pkey = util.payload_key(msg)
    if not pkey then return msg end -- alias: no event name, no properties
    local work = c.fix and msg or working_copy(msg, pkey)
    cur_ctx = ctx
    -- fixes logged nowhere (ctx.debug is false when debug lines are dropped) need no text
    local quiet = c.fix and ctx ~= nil and ctx.debug == false

    -- a rename may set properties on a track call that had none; the table is removed again
    -- below if nothing was put in it
    local had_payload = msg[pkey] ~= nil
    if not had_payload then work[pkey] = {} end
    local payload = work[pkey]
    if not util.is_object(payload) then return msg end

    if msg.type == "track" then check_event(c, work, found, quiet) end
    if c.property_case then check_property_case(payload, pkey, found, quiet) end
    check_forbidden(c, payload, pkey, found)
    check_required(c, work, payload, pkey, found)
    if not had_payload and next(payload) == nil then work[pkey] = nil end
    return msg
  end
end

--- rule(opts) -> plugin table (stage "before"). Options:
--   style = "lower" | "title" | "snake"      event-name case (track events)
--   object_action = true                     flag event names of fewer than two words
--   property_case = "snake"                  snake_case keys of properties (traits for identify/group)
--   rename = { [old] = "new" | { event = "new", set = { k = v } } }
--   forbidden = { key = "hint" | "use <replacement>" | { replace = k, hint = s } | true }
--   required = { "key" | { property = k, when = <condition>, when_property = k } }
--   mode = "report" (default) | "fix"
-- plus the common name, types, stage, on_error.
local make_rule = util.constructor{
  module = MODULE, name = "naming", stage = "before", entry = "process",
  options = OPTIONS, build = build,
}

-- The plugin also carries its conventions as plain data, for `tally report`.
function M.rule(opts)
  local plugin = make_rule(opts)
  opts = opts or {}
  plugin.conventions = { style = opts.style, property_case = opts.property_case }
  return plugin
end

return M
