local crownpeak = require("tally.crownpeak")
local util = require("tally.util")
local fake_ctx = require("tests.lua.helpers.ctx")

local TS = "2024-05-01T12:00:00.000Z"

local function msg(fields)
  local m = { anonymousId = "anon-1", timestamp = TS, context = { session = { id = "sess-1" } } }
  for k, v in pairs(fields) do m[k] = v end
  return m
end

local function map(opts, m)
  local ctx = fake_ctx.new()
  return crownpeak.rule(opts).map(m, ctx), ctx
end

local ORDER = {
  order_id = "o-50314", currency = "EUR", total = 52.49,
  products = {
    { product_id = "507f1f77", sku = "G-32", price = 19.99, quantity = 1 },
    { sku = "F-15", price = 3.25, quantity = 2 },
    { product_id = 42, price = 10 },
  },
}

describe("tally.crownpeak", function()
  describe("helpers", function()
    it("converts prices to integer cents, rounding half up", function()
      assert.equal(1999, crownpeak.cents(19.99))
      assert.equal("integer", math.type(crownpeak.cents(19.99)))
      assert.equal(325, crownpeak.cents(3.25))
      assert.equal(1000, crownpeak.cents(10))
      assert.equal(1, crownpeak.cents(0.005))
      assert.is_nil(crownpeak.cents("19.99"))
      assert.is_nil(crownpeak.cents(0 / 0))
    end)

    it("formats milliseconds as ISO-8601 UTC", function()
      assert.equal("1970-01-01T00:00:00.000Z", crownpeak.iso8601(0))
      assert.equal("2023-11-14T22:13:20.000Z", crownpeak.iso8601(1700000000000))
      assert.equal("2024-02-29T23:59:59.999Z", crownpeak.iso8601(1709251199999))
      assert.equal("2000-03-01T00:00:00.001Z", crownpeak.iso8601(951868800001))
    end)

    it("matches event names ignoring case and separators", function()
      assert.equal("order completed", crownpeak.event_key("Order Completed"))
      assert.equal("order completed", crownpeak.event_key("order_completed"))
      assert.equal("order completed", crownpeak.event_key(" Order--Completed "))
    end)
  end)

  describe("views", function()
    it("maps a page call to a view of its path", function()
      local a = map({}, msg{ type = "page", name = "Shoes", properties = { path = "/shoes", url = "https://x/shoes" } })
      assert.same({
        action = "view",
        target = { pathToPage = "/shoes" },
        user = { identities = { sessionId = "sess-1" } },
        metadata = {},
        timestamp = TS,
      }, a)
    end)

    it("finds the path in properties.url, then context.page.path, then the name", function()
      assert.equal("/a", map({}, msg{ type = "page", properties = { url = "https://x/a?b=1" } }).target.pathToPage)
      local m = msg{ type = "page" }
      m.context.page = { path = "/ctx" }
      assert.equal("/ctx", map({}, m).target.pathToPage)
      assert.equal("Settings", map({}, msg{ type = "screen", name = "Settings" }).target.pathToPage)
    end)

    it("skips a view with nowhere to point, and says so", function()
      local a, ctx = map({}, msg{ type = "page" })
      assert.is_nil(a)
      assert.same({ "crownpeak.target" }, ctx:codes())
    end)

    it("maps Product Viewed to a view of the product, with the search query", function()
      local a = map({}, msg{ type = "track", event = "Product Viewed", properties = { product_id = "p1", query = "red shoes" } })
      assert.equal("view", a.action)
      assert.same({ product = "p1" }, a.target)
      assert.same({ query = "red shoes" }, a.metadata)
    end)
  end)

  describe("default event table", function()
    it("maps Segment's e-commerce events", function()
      local expect = { ["Product Clicked"] = "click", ["Product Added"] = "add-to-cart",
                       ["Product Removed"] = "remove-from-cart", ["Order Completed"] = "purchase",
                       ["Product Viewed"] = "view" }
      for event, action in pairs(expect) do
        local a = map({}, msg{ type = "track", event = event, properties = { product_id = "p1" } })
        assert.equal(action, a.action, event)
        assert.same({ product = "p1" }, a.target)
      end
    end)

    it("still matches after a naming rule re-cased the event", function()
      assert.equal("click", map({}, msg{ type = "track", event = "product clicked", properties = { sku = "s" } }).action)
    end)

    it("skips unmapped events and other message types", function()
      assert.is_nil(map({}, msg{ type = "track", event = "Button Clicked", properties = {} }))
      assert.is_nil(map({}, msg{ type = "identify", userId = "u", traits = {} }))
      assert.is_nil(map({}, msg{ type = "track", properties = {} }))
    end)

    it("puts the quantity of cart actions in metadata, one unit when unsaid", function()
      local a = map({}, msg{ type = "track", event = "Product Added", properties = { product_id = "p", quantity = 3 } })
      assert.same({ quantity = 3 }, a.metadata)
      a = map({}, msg{ type = "track", event = "Product Removed", properties = { product_id = "p" } })
      assert.same({ quantity = 1 }, a.metadata)
    end)

    it("reports a product action without a product id", function()
      local a, ctx = map({}, msg{ type = "track", event = "Product Clicked", properties = { name = "x" } })
      assert.is_nil(a)
      assert.same({ "crownpeak.product_id" }, ctx:codes())
    end)
  end)

  describe("purchase", function()
    it("produces one activity per product, price in cents", function()
      local out = map({}, msg{ type = "track", event = "Order Completed", userId = "u-42", properties = ORDER })
      assert.is_table(out.tally_many)
      assert.is_true(util.is_array(out.tally_many))
      assert.equal(3, #out.tally_many)
      local first = out.tally_many[1]
      assert.same({
        action = "purchase",
        target = { product = "507f1f77" },
        user = { identities = { sessionId = "sess-1", eCommerceId = "u-42" } },
        metadata = { orderId = "o-50314", price = 1999, quantity = 1, currency = "EUR" },
        timestamp = TS,
      }, first)
      assert.same({ product = "F-15" }, out.tally_many[2].target) -- sku when there is no product_id
      assert.same({ orderId = "o-50314", price = 325, quantity = 2, currency = "EUR" }, out.tally_many[2].metadata)
      assert.same({ product = "42" }, out.tally_many[3].target) -- ids are strings
      assert.equal(1, out.tally_many[3].metadata.quantity)
      assert.are_not.equal(out.tally_many[1].user, out.tally_many[2].user) -- no shared tables
    end)

    it("returns a single activity unwrapped", function()
      local a = map({}, msg{ type = "track", event = "Order Completed",
        properties = { order_id = 7, products = { { product_id = "p", price = 1.5 } } } })
      assert.equal("purchase", a.action)
      assert.same({ orderId = "7", price = 150, quantity = 1 }, a.metadata)
    end)

    it("skips products without an id and reports each", function()
      local out, ctx = map({}, msg{ type = "track", event = "Order Completed",
        properties = { order_id = "o", products = { { price = 1 }, { product_id = "p" }, { name = "x" } } } })
      assert.equal("p", out.target.product)
      assert.same({ "crownpeak.product_id", "crownpeak.product_id" }, ctx:codes())
      assert.matches("properties.products%[0%]", ctx.violations[1].text)
      assert.matches("properties.products%[2%]", ctx.violations[2].text)
    end)

    it("sends nothing, and says so, for an empty products list", function()
      local a, ctx = map({}, msg{ type = "track", event = "Order Completed",
        properties = { order_id = "o", product_id = "not-a-line-item", products = util.array() } })
      assert.is_nil(a)
      assert.same({ "crownpeak.product_id" }, ctx:codes())
      assert.matches("products is empty", ctx:texts())
    end)

    it("treats the properties as the product when there is no products list", function()
      local a = map({}, msg{ type = "track", event = "Order Completed",
        properties = { order_id = "o", product_id = "p", price = 2, quantity = 2, currency = "USD" } })
      assert.same({ orderId = "o", price = 200, quantity = 2, currency = "USD" }, a.metadata)
    end)
  end)

  describe("user identities", function()
    it("always sends a session id, falling back to anonymousId", function()
      local m = msg{ type = "page", name = "Home" }
      m.context.session = nil
      assert.same({ sessionId = "anon-1" }, map({}, m).user.identities)
    end)

    it("renders an integer session id as a string", function()
      local m = msg{ type = "page", name = "Home" }
      m.context.session.id = 1714564800000
      assert.equal("1714564800000", map({}, m).user.identities.sessionId)
    end)

    it("skips a message with no session id at all, with a warning", function()
      local a, ctx = map({}, { type = "page", name = "Home", userId = "u" })
      assert.is_nil(a)
      assert.same({ "warn" }, ctx:log_levels())
    end)

    it("names the logged-in identity with login_identity, or leaves it out", function()
      local m = msg{ type = "page", name = "Home", userId = "u-9" }
      assert.same({ sessionId = "sess-1", customerId = "u-9" }, map({ login_identity = "customerId" }, m).user.identities)
      assert.same({ sessionId = "sess-1" }, map({ login_identity = false }, m).user.identities)
    end)

    it("takes session_id as a path, a list of paths or a function", function()
      local m = msg{ type = "page", name = "Home" }
      assert.equal("anon-1", map({ session_id = "anonymousId" }, m).user.identities.sessionId)
      assert.equal("sess-1", map({ session_id = { "context.missing", "context.session.id" } }, m).user.identities.sessionId)
      assert.equal("S!", map({ session_id = function() return "S!" end }, m).user.identities.sessionId)
    end)
  end)

  describe("sourceId", function()
    it("comes from source_id in the product, then the properties, by default", function()
      local a = map({}, msg{ type = "track", event = "Product Clicked", properties = { product_id = "p", source_id = "resp-1" } })
      assert.equal("resp-1", a.sourceId)
      local out = map({}, msg{ type = "track", event = "Order Completed", properties = {
        order_id = "o", source_id = "resp-order", products = { { product_id = "a", source_id = "resp-a" }, { product_id = "b" } } } })
      assert.equal("resp-a", out.tally_many[1].sourceId)
      assert.equal("resp-order", out.tally_many[2].sourceId)
    end)

    it("is left out when unknown", function()
      assert.is_nil(map({}, msg{ type = "track", event = "Product Clicked", properties = { product_id = "p" } }).sourceId)
    end)

    it("can be read from other fields, e.g. the product id itself", function()
      local opts = { source_id = { "product_id", "sku" } }
      assert.equal("G-32", map(opts, msg{ type = "track", event = "Product Added", properties = { sku = "G-32" } }).sourceId)
      local fn = { source_id = function(_, props) return props.list_id end }
      assert.equal("L", map(fn, msg{ type = "track", event = "Product Added", properties = { sku = "s", list_id = "L" } }).sourceId)
    end)
  end)

  describe("segments", function()
    it("derives them from the device type and the os name", function()
      local m = msg{ type = "page", name = "Home" }
      m.context.device = { type = "mobile" }
      m.context.os = { name = "iOS" }
      local a = map({}, m)
      assert.same({ "mobile", "iOS" }, a.segments)
      assert.is_true(util.is_array(a.segments))
    end)

    it("uses whichever of the two is known", function()
      local m = msg{ type = "page", name = "Home" }
      m.context.os = { name = "Android" }
      assert.same({ "Android" }, map({}, m).segments)
    end)

    it("takes a static list or a function, dropping duplicates and empties", function()
      local m = msg{ type = "page", name = "Home" }
      assert.same({ "web", "eu" }, map({ segments = { "web", "eu", "web", "" } }, m).segments)
      assert.same({ "Home" }, map({ segments = function(x) return { x.name } end }, m).segments)
    end)

    it("is left out when empty or disabled", function()
      local m = msg{ type = "page", name = "Home" }
      assert.is_nil(map({}, m).segments)
      m.context.device = { type = "mobile" }
      assert.is_nil(map({ segments = false }, m).segments)
    end)
  end)

  describe("events option", function()
    it("adds, overrides and removes mappings", function()
      local opts = { events = { ["Button Clicked"] = "click", ["Product Added"] = "add-to-basket",
                                ["Product Removed"] = false, ["Wishlist Added"] = "add-to-wishlist" } }
      assert.equal("add-to-basket", map(opts, msg{ type = "track", event = "Product Added", properties = { sku = "s" } }).action)
      assert.is_nil(map(opts, msg{ type = "track", event = "Product Removed", properties = { sku = "s" } }))
      assert.equal("click", map(opts, msg{ type = "track", event = "Button Clicked", properties = { product_id = "p" } }).action)
      -- a custom action needs no product
      local a = map(opts, msg{ type = "track", event = "Wishlist Added", properties = {} })
      assert.equal("add-to-wishlist", a.action)
      assert.same({}, a.target)
    end)

    it("rejects bad entries", function()
      assert.has_error(function() crownpeak.rule{ events = { x = 5 } } end)
      assert.has_error(function() crownpeak.rule{ events = { x = "" } } end)
    end)
  end)

  describe("integrations", function()
    it("honours the message's destination switches", function()
      local m = msg{ type = "page", name = "Home", integrations = { Crownpeak = false } }
      assert.is_nil(map({}, m))
      m.integrations = { All = false }
      assert.is_nil(map({}, m))
      m.integrations = { All = false, Crownpeak = true }
      assert.is_table(map({}, m))
      m.integrations = { XO = false }
      assert.is_nil(map({ integration = "XO" }, m))
    end)
  end)

  it("stamps ctx.now when the message has no timestamp, and the context locale", function()
    local m = msg{ type = "page", name = "Home" }
    m.timestamp = nil
    m.context.locale = "fr-FR"
    local a = map({}, m)
    assert.equal("2023-11-14T22:13:20.000Z", a.timestamp)
    assert.same({ locale = "fr-FR" }, a.metadata)
  end)

  it("is a destination rule for track, page and screen", function()
    local p = crownpeak.rule()
    assert.equal("destination", p.stage)
    assert.same({ "track", "page", "screen" }, p.types)
    assert.is_function(p.map)
    assert.is_nil(p.process)
    assert.has_error(function() crownpeak.rule{ stage = "before" } end)
    assert.has_error(function() crownpeak.rule{ login_identity = true } end)
    assert.has_error(function() crownpeak.rule{ session_id = 5 } end)
  end)
end)
