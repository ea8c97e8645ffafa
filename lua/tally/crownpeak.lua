--- Destination mapping: Segment Spec messages -> Crownpeak Product Discovery activities.
--
--   return require("tally.crownpeak").rule{ login_identity = "eCommerceId" }
--
-- An activity (Crownpeak's activity object, plus the `segments` and `timestamp` fields):
--   { action = "purchase",
--     target = { product = "sku-1" } | { pathToPage = "/shoes" },
--     user = { identities = { sessionId = "...", eCommerceId = "<userId, when known>" } },
--     sourceId = "<Crownpeak response id, when known>",
--     metadata = { orderId, price (integer cents), quantity, currency, query, locale },
--     segments = { "mobile", "iOS" },
--     timestamp = "2024-05-01T12:00:00.000Z" }
-- One activity per product: Crownpeak wants a separate add-to-cart / purchase per product, so a
-- message with a `products` list maps to several activities, returned as { tally_many = {...} }.
local util = require("tally.util")
local enrich = require("tally.enrich")

local M = {}
local MODULE = "tally.crownpeak"

--- Default event -> action table, from Segment's e-commerce spec. Options.events adds to it or
-- overrides it (false removes an entry). page and screen calls always map to "view".
M.DEFAULT_EVENTS = {
  ["Product Viewed"] = "view",
  ["Product Clicked"] = "click",
  ["Product Added"] = "add-to-cart",
  ["Product Removed"] = "remove-from-cart",
  ["Order Completed"] = "purchase",
}

-- Crownpeak's built-in actions that are about one product and mean nothing without its id.
local PRODUCT_ACTIONS = util.set{ "click", "add-to-cart", "remove-from-cart", "purchase" }
local QUANTITY_ACTIONS = util.set{ "add-to-cart", "remove-from-cart", "purchase" }

--- Event names are matched ignoring case and separators, so the table keeps working after a
-- naming rule rewrote "Order Completed" to "order completed" or "order_completed".
function M.event_key(name)
  return (name:lower():gsub("[^%w\128-\255]+", " "):gsub("^ ", ""):gsub(" $", ""))
end

--- Price in integer cents: math.floor(price * 100 + 0.5); nil when price is not a number.
function M.cents(price)
  if type(price) ~= "number" or price ~= price or price == math.huge or price == -math.huge then
    return nil
  end
  return math.floor(price * 100 + 0.5)
end

--- Milliseconds since the epoch as ISO-8601 UTC with milliseconds (the Segment timestamp form).
-- Pure arithmetic (days-to-civil-date), because the sandbox's os.date may be missing.
function M.iso8601(ms)
  ms = math.floor(ms)
  local secs, milli = ms // 1000, ms % 1000
  local days, rem = secs // 86400, secs % 86400
  local z = days + 719468
  local era = z // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local day = doy - (153 * mp + 2) // 5 + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", year, month, day,
    rem // 3600, rem % 3600 // 60, rem % 60, milli)
end

local function product_id(item)
  if type(item) ~= "table" then return nil end
  return util.id_string(item.product_id) or util.id_string(item.sku) or util.id_string(item.id)
end

local function quantity(item)
  local q = math.tointeger(item.quantity)
  if q and q > 0 then return q end
  return 1 -- Segment's product objects make quantity optional; one unit is the usual reading
end

------------------------------------------------------------------------------------------------
-- Option compilation.

local OPTIONS = util.set{ "events", "login_identity", "session_id", "source_id", "segments",
                          "integration" }

local function compile_events(events)
  local out = {}
  for name, action in pairs(M.DEFAULT_EVENTS) do out[M.event_key(name)] = action end
  for name, action in pairs(events or {}) do
    if type(name) ~= "string" or not (action == false or (type(action) == "string" and action ~= "")) then
      util.fail(MODULE, "events[%s]: expected an action name or false", util.show(name))
    end
    out[M.event_key(name)] = action or nil
  end
  return out
end

-- A "getter" option: a dotted path, a list of paths tried in order, or function(...) -> value.
local function getter(opt, name)
  if type(opt) == "function" then
    return function(...) return util.id_string(opt(...)) end
  end
  if type(opt) == "string" then opt = { opt } end
  if type(opt) ~= "table" then util.fail(MODULE, "option '%s' must be a path, a list or a function", name) end
  return function(...)
    for _, path in ipairs(opt) do
      for i = 1, select("#", ...) do
        local t = select(i, ...)
        local v = type(t) == "table" and util.id_string(util.get_path(t, path))
        if v then return v end
      end
    end
    return nil
  end
end

local function compile(opts)
  util.check_type(MODULE, opts, "events", "table")
  util.check_type(MODULE, opts, "login_identity", "string|boolean")
  util.check_type(MODULE, opts, "segments", "table|function|boolean")
  util.check_type(MODULE, opts, "integration", "string")
  if opts.login_identity == true or opts.segments == true then
    util.fail(MODULE, "options 'login_identity' and 'segments' take false to disable, not true")
  end
  local login = opts.login_identity
  if login == nil then login = "eCommerceId" end
  return {
    events = compile_events(opts.events),
    login = login,
    -- session: context.session.id (tally's session), then anonymousId for messages without one
    session = getter(opts.session_id or { "context.session.id", "anonymousId" }, "session_id"),
    -- source: looked up in the product first, then in the properties
    source = getter(opts.source_id or { "source_id" }, "source_id"),
    segments = opts.segments,
    integration = opts.integration or "Crownpeak",
  }
end

------------------------------------------------------------------------------------------------
-- Mapping.

-- Segment's per-message destination switches: integrations = { Crownpeak = false } or
-- { All = false } (unless Crownpeak = true).
local function disabled(msg, name)
  local i = msg.integrations
  if type(i) ~= "table" then return false end
  if i[name] == false then return true end
  return i.All == false and i[name] ~= true
end

local function derived_segments(msg)
  local context = type(msg.context) == "table" and msg.context or {}
  local out = {}
  local device = type(context.device) == "table" and context.device or {}
  local os_info = type(context.os) == "table" and context.os or {}
  local candidates = { device.type, os_info.name } -- either may be nil: no ipairs
  for i = 1, 2 do
    local v = candidates[i]
    if type(v) == "string" and v ~= "" then out[#out + 1] = v end
  end
  return out
end

local function segments_of(c, msg)
  local list
  if c.segments == false then return nil end
  if type(c.segments) == "function" then list = c.segments(msg)
  elseif type(c.segments) == "table" then list = c.segments
  else list = derived_segments(msg) end
  local out, seen = {}, {}
  for _, s in ipairs(list or {}) do
    if type(s) == "string" and s ~= "" and not seen[s] then
      out[#out + 1], seen[s] = s, true
    end
  end
  if #out == 0 then return nil end
  return util.array(out)
end

local function page_path(msg)
  local props = type(msg.properties) == "table" and msg.properties or {}
  local context = type(msg.context) == "table" and msg.context or {}
  local page = type(context.page) == "table" and context.page or {}
  local u = enrich.parse_url(props.url)
  -- in order of preference; some may be nil, hence the explicit count
  local candidates = { props.path, u and u.path, page.path, msg.name }
  for i = 1, 4 do
    local p = candidates[i]
    if type(p) == "string" and p ~= "" then return p end
  end
  return nil
end

local function target_for(action, item, msg)
  local id = product_id(item)
  if id then return { product = id } end
  if action == "view" then
    local path = page_path(msg)
    return path and { pathToPage = path } or nil
  end
  if PRODUCT_ACTIONS[action] then return nil end
  return {} -- a custom action: Crownpeak accepts it without a product
end

local function metadata_for(action, item, props, msg)
  local context = type(msg.context) == "table" and msg.context or {}
  local m = {}
  if QUANTITY_ACTIONS[action] then m.quantity = quantity(item) end
  if action == "purchase" then
    m.orderId = util.id_string(props.order_id)
    m.price = M.cents(item.price)
    local currency = props.currency or item.currency
    if type(currency) == "string" then m.currency = currency end
  end
  if type(props.query) == "string" then m.query = props.query end
  if type(context.locale) == "string" then m.locale = context.locale end
  return m
end

-- The message's items: each product of properties.products, or the properties themselves when
-- there is no list. An explicit empty list means no product, not "the properties are one".
local function items_of(msg, props)
  if msg.type == "track" and util.is_array(props.products) then return props.products end
  return { props }
end

local function action_of(c, msg)
  if msg.type == "page" or msg.type == "screen" then return "view" end
  if msg.type == "track" and type(msg.event) == "string" then
    return c.events[M.event_key(msg.event)]
  end
  return nil
end

local function build(opts)
  local c = compile(opts)
  return function(msg, ctx)
    local action = action_of(c, msg)
    if not action or disabled(msg, c.integration) then return nil end

    local session = c.session(msg)
    if not session then
      util.log(ctx, "warn", "crownpeak: no session id (context.session.id, anonymousId): skipped")
      return nil
    end
    local identities = { sessionId = session }
    local user_id = util.id_string(msg.userId)
    if c.login and user_id then identities[c.login] = user_id end

    local props = util.is_object(msg.properties) and msg.properties or {}
    local timestamp = type(msg.timestamp) == "string" and msg.timestamp
      or (ctx and math.type(ctx.now) and M.iso8601(ctx.now)) or nil
    local segments = segments_of(c, msg)
    local items = items_of(msg, props)
    if #items == 0 and PRODUCT_ACTIONS[action] then
      util.violation(ctx, "crownpeak.product_id", string.format(
        "%s for track %s: properties.products is empty, no activity", action, util.show(msg.event)))
    end
    local activities = {}
    for i, item in ipairs(items) do
      local target = target_for(action, item, msg)
      if target then
        activities[#activities + 1] = {
          action = action,
          target = target,
          user = { identities = util.deep_copy(identities) },
          sourceId = c.source(item, props),
          metadata = metadata_for(action, item, props, msg),
          segments = segments and util.copy(segments),
          timestamp = timestamp,
        }
      else
        local what = item == props and "properties" or string.format("properties.products[%d]", i - 1)
        util.violation(ctx, action == "view" and "crownpeak.target" or "crownpeak.product_id",
          string.format("%s for %s %s: no %s, activity skipped", action, msg.type,
            util.show(msg.event or msg.name), action == "view" and "page path or product id"
            or ("product id in " .. what)))
      end
    end

    if #activities == 0 then return nil end
    if #activities == 1 then return activities[1] end
    return { tally_many = util.array(activities) }
  end
end

--- rule(opts) -> plugin table (stage "destination", types track, page, screen). Options:
--   events = { ["Wishlist Added"] = "add-to-wishlist", ["Product Clicked"] = false }
--   login_identity = "eCommerceId" (default) | false   identity name for the userId
--   session_id = path | { paths } | function(msg)      default { "context.session.id", "anonymousId" }
--   source_id = path | { paths } | function(item, properties)   default "source_id"
--   segments = { "web" } | function(msg) -> list | false       default: device type, os name
--   integration = "Crownpeak"                          key in msg.integrations that disables it
M.rule = util.constructor{
  module = MODULE, name = "crownpeak", stage = "destination", entry = "map",
  types = { "track", "page", "screen" }, options = OPTIONS, build = build,
}

return M
