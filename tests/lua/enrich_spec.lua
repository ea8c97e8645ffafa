local enrich = require("tally.enrich")
local fake_ctx = require("tests.lua.helpers.ctx")

local function run(opts, msg)
  return enrich.rule(opts).process(msg, fake_ctx.new())
end

describe("tally.enrich", function()
  describe("parse_url", function()
    it("splits an absolute URL", function()
      local u = enrich.parse_url("HTTPS://user:pw@Shop.Example.com:8443/a/b?x=1&y=2#top")
      assert.equal("https", u.scheme)
      assert.equal("shop.example.com", u.host)
      assert.equal("8443", u.port)
      assert.equal("/a/b", u.path)
      assert.equal("x=1&y=2", u.query)
      assert.equal("?x=1&y=2", u.search)
      assert.equal("top", u.fragment)
      assert.equal("HTTPS://user:pw@Shop.Example.com:8443/a/b?x=1&y=2", u.href)
    end)

    it("gives path '/' and search '' like window.location", function()
      local u = enrich.parse_url("https://segment.com")
      assert.equal("/", u.path)
      assert.equal("", u.search)
      assert.is_nil(u.query)
      assert.is_nil(u.port)
      assert.equal("", enrich.parse_url("https://a.com/p?").search)
      assert.equal("", enrich.parse_url("https://a.com/p?").query)
    end)

    it("handles relative URLs", function()
      local u = enrich.parse_url("/docs/?q=a#b")
      assert.is_nil(u.scheme)
      assert.is_nil(u.host)
      assert.equal("/docs/", u.path)
      assert.equal("?q=a", u.search)
    end)

    it("returns nil for what is not a URL string", function()
      assert.is_nil(enrich.parse_url(""))
      assert.is_nil(enrich.parse_url(nil))
      assert.is_nil(enrich.parse_url(42))
    end)
  end)

  describe("query decoding", function()
    it("percent-decodes with '+' as a space", function()
      assert.equal("spring sale 50%", enrich.decode("spring+sale%2050%25"))
      assert.equal("été", enrich.decode("%C3%A9t%C3%A9"))
      assert.equal("100%", enrich.decode("100%")) -- a lone % stays
    end)

    it("keeps the raw text when decoding would give invalid UTF-8", function()
      assert.equal("%FF", enrich.decode("%FF"))
    end)

    it("parses pairs in order", function()
      assert.same({ { "a", "1" }, { "b c", "d e" }, { "flag", "" } }, enrich.parse_query("a=1&b+c=d%20e&flag"))
    end)
  end)

  describe("utm_campaign", function()
    it("maps utm_campaign to name and utm_X to X", function()
      assert.same({ name = "spring sale", source = "newsletter", medium = "email", term = "shoes",
                    content = "banner", id = "42" },
        enrich.utm_campaign("https://shop.example/?utm_campaign=spring+sale&utm_source=newsletter"
          .. "&utm_medium=email&utm_term=shoes&utm_content=banner&utm_id=42&other=1"))
    end)

    it("keeps the first occurrence and skips empty values", function()
      assert.same({ source = "a" }, enrich.utm_campaign("/?utm_source=a&utm_source=b&utm_medium="))
    end)

    it("returns nil when there is nothing to take", function()
      assert.is_nil(enrich.utm_campaign("https://shop.example/?page=2"))
      assert.is_nil(enrich.utm_campaign("https://shop.example/"))
      assert.is_nil(enrich.utm_campaign(nil))
    end)
  end)

  describe("context from configuration", function()
    local opts = {
      app = { name = "shop", version = "2.1.0", build = { number = 7 } },
      device = { type = "mobile" },
      os = { name = "iOS", version = "17.4" },
      locale = "en-US",
      timezone = "Europe/Paris",
    }

    it("fills a message without context", function()
      local msg = run(opts, { type = "track", event = "a b" })
      assert.same({ app = opts.app, device = opts.device, os = opts.os, locale = "en-US",
                    timezone = "Europe/Paris" }, msg.context)
    end)

    it("never overwrites what the caller gave, and fills only the missing fields", function()
      local msg = run(opts, { type = "track", event = "a b", context = {
        app = { name = "kiosk", build = { sha = "abc" } }, locale = "fr-FR", os = "not a table" } })
      assert.same({ name = "kiosk", version = "2.1.0", build = { sha = "abc", number = 7 } }, msg.context.app)
      assert.equal("fr-FR", msg.context.locale)
      assert.equal("not a table", msg.context.os)
      assert.equal("Europe/Paris", msg.context.timezone)
    end)

    it("copies the configuration into each message", function()
      local p = enrich.rule(opts)
      local m1 = p.process({ type = "track", event = "a b" }, fake_ctx.new())
      m1.context.app.name = "changed by a later rule"
      local m2 = p.process({ type = "track", event = "a b" }, fake_ctx.new())
      assert.equal("shop", m2.context.app.name)
      assert.equal("shop", opts.app.name)
    end)

    it("leaves a context that is not an object alone", function()
      local msg = run(opts, { type = "track", event = "a b", context = "odd" })
      assert.equal("odd", msg.context)
    end)

    it("rejects options of the wrong type", function()
      assert.has_error(function() enrich.rule{ app = "shop" } end,
        "tally.enrich: option 'app' must be a table (got string)")
      assert.has_error(function() enrich.rule{ locale = 5 } end)
      assert.has_error(function() enrich.rule{ page = "yes" } end)
    end)
  end)

  describe("page properties", function()
    it("derives url, path and search from properties.url", function()
      local msg = run({}, { type = "page", name = "Docs", properties = {
        url = "https://segment.com/docs/?q=http#install" } })
      assert.same({ url = "https://segment.com/docs/?q=http#install", path = "/docs/", search = "?q=http" },
        msg.properties)
    end)

    it("takes url (without the fragment), referrer and title from context.page", function()
      local msg = run({}, { type = "page", name = "Docs", properties = { section = "Sources" },
        context = { page = { url = "https://segment.com/docs/#x", referrer = "https://google.com/", title = "Docs" } } })
      assert.same({ section = "Sources", url = "https://segment.com/docs/", path = "/docs/", search = "",
                    referrer = "https://google.com/", title = "Docs" }, msg.properties)
    end)

    it("only fills absent properties", function()
      local msg = run({}, { type = "page", properties = { url = "https://a.com/x?y=1", path = "/custom", search = "" } })
      assert.equal("/custom", msg.properties.path)
      assert.equal("", msg.properties.search)
    end)

    it("creates properties on a page call without them", function()
      local msg = run({}, { type = "page", context = { page = { url = "https://a.com/b" } } })
      assert.same({ url = "https://a.com/b", path = "/b", search = "" }, msg.properties)
    end)

    it("does nothing for other types or with page = false", function()
      local msg = run({}, { type = "track", event = "a b", properties = {},
        context = { page = { url = "https://a.com/b" } } })
      assert.same({}, msg.properties)
      msg = run({ page = false }, { type = "page", properties = { url = "https://a.com/b" } })
      assert.same({ url = "https://a.com/b" }, msg.properties)
    end)
  end)

  describe("campaign", function()
    it("sets context.campaign from the page URL's UTM parameters", function()
      local msg = run({}, { type = "page", properties = { url = "https://a.com/?utm_source=ads&utm_campaign=x" } })
      assert.same({ source = "ads", name = "x" }, msg.context.campaign)
    end)

    it("uses context.page.url for any message type", function()
      local msg = run({}, { type = "track", event = "a b", context = { page = { url = "/?utm_medium=cpc" } } })
      assert.same({ medium = "cpc" }, msg.context.campaign)
    end)

    it("lets an explicit context.campaign win, filling only its missing fields", function()
      local msg = run({}, { type = "page", properties = { url = "/?utm_source=ads&utm_medium=cpc" },
        context = { campaign = { source = "partner" } } })
      assert.same({ source = "partner", medium = "cpc" }, msg.context.campaign)
    end)

    it("adds nothing without UTM parameters or with campaign = false", function()
      local msg = run({}, { type = "page", properties = { url = "/?a=1" } })
      assert.is_nil(msg.context.campaign)
      msg = run({ campaign = false }, { type = "page", properties = { url = "/?utm_source=x" } })
      assert.is_nil(msg.context.campaign)
    end)
  end)

  it("is an enrichment rule: it fails open", function()
    assert.equal("enrichment", enrich.rule().stage)
  end)
end)
