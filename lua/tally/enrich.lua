--- Enrichment: context fields from configuration, page properties from the page URL, and
-- context.campaign from UTM parameters. It only fills what is absent: a value the caller gave,
-- even a JSON null, is never overwritten.
--
--   return require("tally.enrich").rule{ app = { name = "shop", version = "2.1.0" }, locale = "en-US" }
local util = require("tally.util")

local M = {}
local MODULE = "tally.enrich"

------------------------------------------------------------------------------------------------
-- URL helpers (pure, exported).

--- Splits a URL into its parts. Works for absolute ("https://h:8080/p?q#f") and relative
-- ("/p?q", "p") URLs. Returns nil for a non-string or empty input, else a table:
--   scheme, host, port (strings or nil), path ("/" when an absolute URL has none),
--   query (after "?", without it; nil when there is no "?"), search ("?" .. query, or "" when
--   the query is absent or empty, like window.location.search), fragment (after "#", or nil),
--   href (the URL without its fragment).
function M.parse_url(url)
  if type(url) ~= "string" or url == "" then return nil end
  local u = {}
  local before_fragment, fragment = url:match("^([^#]*)#(.*)$")
  u.href = before_fragment or url
  u.fragment = fragment
  local rest = u.href
  local scheme, after = rest:match("^(%a[%w+.-]*):(.*)$")
  if scheme then u.scheme, rest = scheme:lower(), after end
  local before_query, query = rest:match("^([^?]*)%?(.*)$")
  if before_query then rest, u.query = before_query, query end
  u.search = (u.query and u.query ~= "") and ("?" .. u.query) or ""
  local authority, path = rest:match("^//([^/]*)(.*)$")
  if authority then
    local hostport = authority:match("@(.*)$") or authority -- drop user:password@
    local host, port = hostport:match("^(.*):(%d*)$")
    u.host = (host or hostport):lower()
    if port and port ~= "" then u.port = port end
    u.path = path ~= "" and path or "/"
  else
    u.path = rest
  end
  return u
end

--- Percent-decodes a query component, with "+" as a space. Returns the input unchanged when the
-- decoded bytes would not be valid UTF-8 (the C codec refuses such strings in messages).
function M.decode(s)
  local out = s:gsub("%+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  if utf8.len(out) == nil then return s end
  return out
end

--- Parses a query string ("a=1&b=two+words", without "?") into a list of { key, value } pairs
-- in order, decoded. A key without "=" has the value "".
function M.parse_query(query)
  local pairs_out = {}
  for part in string.gmatch(query or "", "[^&;]+") do
    local k, v = part:match("^([^=]*)=(.*)$")
    if not k then k, v = part, "" end
    pairs_out[#pairs_out + 1] = { M.decode(k), M.decode(v) }
  end
  return pairs_out
end

-- utm_X -> X, except utm_campaign -> name (the Segment Spec's context.campaign field names).
local UTM_RENAME = { campaign = "name" }

--- context.campaign from the UTM parameters of a URL: utm_campaign -> name, utm_source -> source,
-- utm_medium -> medium, utm_term -> term, utm_content -> content, any other utm_X -> X. The first
-- occurrence of a parameter wins; empty values are skipped. Returns nil when there are none.
function M.utm_campaign(url)
  local u = M.parse_url(url)
  if not u or not u.query then return nil end
  local campaign
  for _, kv in ipairs(M.parse_query(u.query)) do
    local k, v = kv[1], kv[2]
    local field = k:match("^utm_(.+)$")
    if field and v ~= "" then
      field = UTM_RENAME[field] or field
      campaign = campaign or {}
      if campaign[field] == nil then campaign[field] = v end
    end
  end
  return campaign
end

------------------------------------------------------------------------------------------------
-- The rule.

local OPTIONS = util.set{ "app", "device", "os", "locale", "timezone", "page", "campaign" }
local CONTEXT_TABLES = { "app", "device", "os" }
local CONTEXT_STRINGS = { "locale", "timezone" }

-- Copies into dst the fields of src that dst lacks, recursing into objects both have. Copies, so
-- that a later rule editing one message cannot edit the configuration shared by all of them.
local function fill(dst, src)
  for k, v in pairs(src) do
    if dst[k] == nil then
      dst[k] = util.deep_copy(v)
    elseif util.is_object(dst[k]) and util.is_object(v) then
      fill(dst[k], v)
    end
  end
end

local function fill_context(c, context)
  for _, k in ipairs(CONTEXT_TABLES) do
    if c[k] then
      if context[k] == nil then
        context[k] = util.deep_copy(c[k])
      elseif util.is_object(context[k]) then
        fill(context[k], c[k])
      end
    end
  end
  for _, k in ipairs(CONTEXT_STRINGS) do
    if c[k] and context[k] == nil then context[k] = c[k] end
  end
end

local function page_url(msg, context)
  local props = msg.properties
  if msg.type == "page" and type(props) == "table" and type(props.url) == "string" then
    return props.url
  end
  local page = context.page
  if type(page) == "table" and type(page.url) == "string" then return page.url end
  return nil
end

-- page calls: url (without fragment), path, search from the URL; referrer and title from
-- context.page; each only when properties lacks it.
local function fill_page_properties(msg, context, url)
  local u = M.parse_url(url)
  if not u then return end
  if msg.properties == nil then msg.properties = {} end
  local props = msg.properties
  if not util.is_object(props) then return end
  local page = type(context.page) == "table" and context.page or {}
  local derived = { url = u.href, path = u.path ~= "" and u.path or nil, search = u.search,
                    referrer = page.referrer, title = page.title }
  for _, k in ipairs{ "url", "path", "search", "referrer", "title" } do
    if props[k] == nil and derived[k] ~= nil then props[k] = derived[k] end
  end
end

local function fill_campaign(context, url)
  local campaign = M.utm_campaign(url)
  if not campaign then return end
  if context.campaign == nil then
    context.campaign = campaign
  elseif util.is_object(context.campaign) then
    fill(context.campaign, campaign)
  end
end

local function build(opts)
  for _, k in ipairs(CONTEXT_TABLES) do util.check_type(MODULE, opts, k, "table") end
  for _, k in ipairs(CONTEXT_STRINGS) do util.check_type(MODULE, opts, k, "string") end
  util.check_type(MODULE, opts, "page", "boolean")
  util.check_type(MODULE, opts, "campaign", "boolean")
  local c = {
    app = opts.app, device = opts.device, os = opts.os,
    locale = opts.locale, timezone = opts.timezone,
    page = opts.page ~= false, campaign = opts.campaign ~= false,
  }
  return function(msg)
    if msg.context == nil then msg.context = {} end
    local context = msg.context
    if not util.is_object(context) then return msg end
    fill_context(c, context)
    local url = page_url(msg, context)
    if url then
      if c.page and msg.type == "page" then fill_page_properties(msg, context, url) end
      if c.campaign then fill_campaign(context, url) end
    end
    return msg
  end
end

--- rule(opts) -> plugin table (stage "enrichment": a failure passes the message on). Options:
--   app, device, os = { ... }       filled into context.app / .device / .os, field by field
--   locale, timezone = "..."        context.locale / context.timezone when absent
--   page = true (default)           page properties url/path/search/referrer/title from the URL
--   campaign = true (default)       context.campaign from utm_* parameters of the page URL
M.rule = util.constructor{
  module = MODULE, name = "enrich", stage = "enrichment", entry = "process",
  options = OPTIONS, build = build,
}

return M
