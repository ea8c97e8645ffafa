-- tally.privacy through the product: every message goes through the `tally` Lua module (a real
-- runtime, its sandbox and rule chain) with the rule in a rules folder, and is read back from the
-- file destination. The corpus (privacy_corpus.lua) measures precision and recall per detector.
local tally = require("tally")
local files = require("tests.lua.helpers.files")
local corpus = require("tests.lua.privacy_corpus")

local KEY = "k-0123456789abcdef-test"

-- A rules folder with the privacy rule built from `opts_src` (Lua source of its options table)
-- and, optionally, more rule files { name = source }.
local function rules_dir(opts_src, more)
  local dir = files.tmpdir()
  files.write(dir .. "/90_privacy.lua", "return require('tally.privacy').rule(" .. opts_src .. ")\n")
  for name, src in pairs(more or {}) do files.write(dir .. "/" .. name, src) end
  return dir
end

-- Sends each message (tables for t:send) through a runtime with the rule; returns what was
-- delivered, in order.
local function run(opts_src, msgs, more, rule_config)
  local dir, out = rules_dir(opts_src, more), files.tmp(".ndjson")
  local t = assert(tally.open({ rules = dir, destinations = { { type = "file", path = out } }, log_level = "off",
    rule_config = rule_config }))
  for _, m in ipairs(msgs) do assert(t:send(m)) end
  assert.is_true(t:close(10000))
  local got = files.ndjson(out, tally.json.decode)
  os.remove(out)
  os.execute("rm -rf '" .. dir .. "'")
  return got
end

local function track(props, context)
  return { type = "track", event = "Test", userId = "u1", properties = props, context = context }
end

-- The properties of one track message after the rule.
local function props_after(opts_src, props)
  return run(opts_src, { track(props) })[1].properties
end

local function open_error(opts_src)
  local dir = rules_dir(opts_src)
  local t, err = tally.open({ rules = dir, out = files.tmp(".ndjson"), log_level = "off" })
  os.execute("rm -rf '" .. dir .. "'")
  if t then t:close(1000) end
  return err
end

local function hmac_hex_in_rule(key, text)
  local rule = ("return { name = 'mac', process = function(m, ctx) m.properties.mac = ctx:hmac(%q, %q) return m end }\n")
    :format(key, text)
  return run("{ detectors = { email = false, phone = false, ip = false, card = false, iban = false } }",
    { track({}) }, { ["10_mac.lua"] = rule })[1].properties.mac
end

describe("tally.privacy", function()
  describe("corpus", function()
    it("finds personal data with the precision and recall asserted per detector", function()
      -- one runtime for the whole corpus: message i carries string i
      local entries = {}
      for _, p in ipairs(corpus.positives) do entries[#entries + 1] = { text = p[2], det = p[1], miss = p.miss } end
      for _, n in ipairs(corpus.negatives) do entries[#entries + 1] = { text = n } end
      local msgs = {}
      for i, e in ipairs(entries) do msgs[i] = track({ i = i, text = e.text }) end
      local got = run("{}", msgs)
      assert.are.equal(#entries, #got)
      local names = { "email", "phone", "ip", "card", "iban" }
      local tp, fp, fn = {}, {}, {}
      for _, d in ipairs(names) do tp[d], fp[d], fn[d] = 0, 0, 0 end
      local wrong = {}
      for _, m in ipairs(got) do
        local e = entries[m.properties.i]
        local out = m.properties.text
        for _, d in ipairs(names) do
          local flagged = out:find("[" .. d .. "]", 1, true) ~= nil
          if e.det == d then
            if flagged then tp[d] = tp[d] + 1 else fn[d] = fn[d] + 1 end
            if flagged == (e.miss == true) then wrong[#wrong + 1] = ("%s %s: %q -> %q"):format(d, e.miss and "caught a documented miss" or "missed", e.text, out) end
          elseif flagged then
            fp[d] = fp[d] + 1
            wrong[#wrong + 1] = ("%s false positive: %q -> %q"):format(d, e.text, out)
          end
        end
        if not e.det and out ~= e.text then wrong[#wrong + 1] = ("changed: %q -> %q"):format(e.text, out) end
      end
      -- The corpus was written with the detectors' definitions in mind, so its numbers are an
      -- upper bound on real text; the thresholds are what the definitions promise: the checksummed
      -- detectors (card, iban) and e-mail make no false positive here, phone and ip at most one in
      -- 20; recall leaves room only for the documented misses (marked in the corpus).
      local min_precision = { email = 1.0, phone = 0.95, ip = 0.95, card = 1.0, iban = 1.0 }
      local min_recall = { email = 0.8, phone = 0.85, ip = 1.0, card = 0.9, iban = 0.9 }
      for _, d in ipairs(names) do
        local precision = tp[d] / math.max(1, tp[d] + fp[d])
        local recall = tp[d] / math.max(1, tp[d] + fn[d])
        print(("# tally.privacy %-5s precision %.3f (%d/%d)  recall %.3f (%d/%d)"):format(d, precision, tp[d],
          tp[d] + fp[d], recall, tp[d], tp[d] + fn[d]))
        assert.is_true(precision >= min_precision[d], d .. " precision " .. precision)
        assert.is_true(recall >= min_recall[d], d .. " recall " .. recall)
      end
      assert.are.same({}, wrong)
    end)
  end)

  describe("actions", function()
    it("redact replaces each match by its marker inside longer text", function()
      local p = props_after("{}", { note = "mail me at a@b.co please", call = "+44 20 7946 0958 or a@b.co",
        card = "card 4111 1111 1111 1111.", iban = "to DE89 3704 0044 0532 0130 00", ip = "from 203.0.113.7" })
      assert.are.equal("mail me at [email] please", p.note)
      assert.are.equal("[phone] or [email]", p.call)
      assert.are.equal("card [card].", p.card)
      assert.are.equal("to [iban]", p.iban)
      assert.are.equal("from [ip]", p.ip)
    end)

    it("hash replaces a match by HMAC-SHA256 of its normalized form, with the configured key", function()
      local expected = hmac_hex_in_rule(KEY, "peter@initech.com")
      assert.truthy(expected:match("^%x+$") and #expected == 64 and expected == expected:lower())
      local p = props_after(("{ key = %q, detectors = { email = 'hash', phone = 'hash' } }"):format(KEY),
        { a = "Peter@Initech.COM", b = "hi peter@initech.com!", c = "+44 20 7946 0958" })
      assert.are.equal(expected, p.a) -- case-folded: the same person, the same pseudonym
      assert.are.equal("hi " .. expected .. "!", p.b)
      assert.are.equal(hmac_hex_in_rule(KEY, "442079460958"), p.c) -- phones: digits only
    end)

    it("hash is deterministic for a key and differs under another key", function()
      local msgs = { track({ e = "ann@example.com" }), track({ e = "ann@example.com" }) }
      local one = run(("{ key = %q, detectors = { email = 'hash' } }"):format(KEY), msgs)
      local other = run(("{ key = %q, detectors = { email = 'hash' } }"):format(KEY .. "-rotated"), msgs)
      assert.are.equal(one[1].properties.e, one[2].properties.e)
      assert.are_not.equal(one[1].properties.e, other[1].properties.e)
      assert.are_not.equal("ann@example.com", one[1].properties.e)
    end)

    it("takes the key from rule_config over the file's", function()
      local other = KEY .. "-from-config"
      local got = run(("{ key = %q, detectors = { email = 'hash' } }"):format(KEY), { track({ e = "ann@example.com" }) },
        nil, { privacy = { key = other } })
      assert.are.equal(hmac_hex_in_rule(other, "ann@example.com"), got[1].properties.e)
    end)

    it("drop removes the key (or array element) holding a match", function()
      local p = props_after("{ detectors = { card = 'drop', email = 'redact' } }",
        { card = "4111111111111111", note = "ok", list = { "x", "5555 5555 5555 4444", "y" }, mail = "a@b.co" })
      assert.is_nil(p.card)
      assert.are.equal("ok", p.note)
      assert.are.same({ "x", "y" }, p.list)
      assert.are.equal("[email]", p.mail)
    end)

    it("a detector set to false is off", function()
      local p = props_after("{ detectors = { email = false } }", { e = "a@b.co", ip = "203.0.113.7" })
      assert.are.equal("a@b.co", p.e)
      assert.are.equal("[ip]", p.ip)
    end)

    it("card numbers given as JSON integers are found too", function()
      local p = props_after("{}", { n = 4111111111111111, id = 1234567890123456 })
      assert.are.equal("[card]", p.n)
      assert.are.equal(1234567890123456, p.id)
    end)
  end)

  describe("key lists", function()
    it("keys act on values whatever their content; allow leaves keys untouched", function()
      local p = props_after(("{ key = %q, keys = { password = 'drop', secret = 'redact', Email = 'hash' }, "
        .. "allow = { 'support_address', 'properties.contact.phone' } }"):format(KEY),
        { password = "hunter2", secret = { a = 1 }, email = "not an address", e_mail = "x",
          support_address = "help@shop.example", contact = { phone = "+44 20 7946 0958", fax = "+44 20 7946 0959" },
          other = { phone = "+44 20 7946 0958" } })
      assert.is_nil(p.password)
      assert.are.equal("[redacted]", p.secret)
      assert.are.equal(hmac_hex_in_rule(KEY, "not an address"), p.email)
      assert.are.equal(hmac_hex_in_rule(KEY, "x"), p.e_mail) -- "e_mail" names the key "Email" does
      assert.are.equal("help@shop.example", p.support_address)
      assert.are.equal("+44 20 7946 0958", p.contact.phone) -- by path
      assert.are.equal("[phone]", p.contact.fax)
      assert.are.equal("[phone]", p.other.phone) -- the path names only properties.contact.phone
    end)
  end)

  describe("context.ip", function()
    local function ip_after(opts_src, ip)
      return run(opts_src, { track({}, { ip = ip }) })[1].context.ip
    end

    it("anonymize (the default) zeroes the last octet of IPv4 and the last 80 bits of IPv6", function()
      assert.are.equal("203.0.113.0", ip_after("{}", "203.0.113.7"))
      assert.are.equal("2001:db8:85a3::", ip_after("{}", "2001:0db8:85a3:08d3:1319:8a2e:0370:7348"))
      assert.are.equal("2001:db8::", ip_after("{}", "2001:db8::1"))
      assert.are.equal("::ffff:192.0.2.0", ip_after("{}", "::ffff:192.0.2.128"))
      assert.is_nil(ip_after("{}", "not an address")) -- what cannot be anonymized is not sent
    end)

    it("drop removes it, keep leaves it (and the detectors do not touch it)", function()
      assert.is_nil(ip_after("{ ip = 'drop' }", "203.0.113.7"))
      assert.are.equal("203.0.113.7", ip_after("{ ip = 'keep' }", "203.0.113.7"))
    end)

    it("other IPs in context are the ip detector's; versions are left alone", function()
      local c = run("{}", { track({}, { ip = "203.0.113.7", note = "via 198.51.100.2",
        library = { name = "x", version = "1.2.3.4" }, app = { build = "10.0.0.1" } }) })[1].context
      assert.are.equal("via [ip]", c.note)
      assert.are.equal("1.2.3.4", c.library.version)
      assert.are.equal("10.0.0.1", c.app.build)
    end)
  end)

  describe("walk", function()
    it("walks nested objects and arrays in properties, traits and context", function()
      local got = run("{}", {
        track({ a = { b = { c = { "x", { d = "write to a@b.co" } } } } }, { traits = { phone = "+33 6 12 34 56 78" } }),
        { type = "identify", userId = "u1", traits = { email = "a@b.co", addresses = { { zip = "75001", tel = "+33 1 23 45 67 89" } } } },
      })
      assert.are.equal("write to [email]", got[1].properties.a.b.c[2].d)
      assert.are.equal("x", got[1].properties.a.b.c[1])
      assert.are.equal("[phone]", got[1].context.traits.phone)
      assert.are.equal("[email]", got[2].traits.email)
      assert.are.equal("[phone]", got[2].traits.addresses[1].tel)
      assert.are.equal("75001", got[2].traits.addresses[1].zip)
    end)

    it("drops tables nested deeper than max_depth, and leaves fields not listed", function()
      local p = run("{ max_depth = 2, fields = { 'properties' } }",
        { track({ a = { b = "a@b.co", c = { d = "deep" } } }, { note = "a@b.co" }) })[1]
      assert.are.equal("[email]", p.properties.a.b)
      assert.is_nil(p.properties.a.c)
      assert.are.equal("a@b.co", p.context.note)
    end)
  end)

  describe("cost", function()
    -- Every pattern step counts against the call's budget (lua_instructions, 1e6 by default), so a
    -- detector that backtracked over these 30 KB values (~4.5e8 steps if quadratic) would fail
    -- the call, and the rule (on_error drop) would drop the message.
    it("scans long adversarial values within the default budget", function()
      local n = 30000
      local values = { string.rep("1", n), string.rep("1.", n // 2), string.rep("a", n), string.rep("a@", n // 2),
        string.rep("1:", n // 2), string.rep("+1 ", n // 3), string.rep("GB82", n // 4), string.rep("4111 ", n // 5),
        string.rep("a.", n // 2) .. "@", "x@" .. string.rep("a", n - 2) }
      local msgs = {}
      for i, v in ipairs(values) do msgs[i] = track({ i = i, v = v }) end
      local got = run("{}", msgs)
      assert.are.equal(#values, #got)
    end)
  end)

  describe("options", function()
    it("refuses hash without a key, and a short key, at load", function()
      assert.truthy(open_error("{ detectors = { email = 'hash' } }"):find(
        "tally.privacy: option 'key' is required when an action is hash (detectors.email = \"hash\")", 1, true))
      assert.truthy(open_error("{ keys = { ssn = 'hash' } }"):find(
        "option 'key' is required when an action is hash (keys.ssn = \"hash\")", 1, true))
      assert.truthy(open_error("{ key = 'short', detectors = { email = 'hash' } }"):find(
        "tally.privacy: option 'key' must be 16 to 1024 bytes (got 5)", 1, true))
    end)

    it("names the option and what it accepts", function()
      local cases = {
        { "{ detectors = { mail = 'redact' } }", "option 'detectors': unknown detector \"mail\" (email, phone, ip, card, iban)" },
        { "{ detectors = { email = 'hide' } }", "option 'detectors.email' must be one of redact, hash, drop, false (got \"hide\")" },
        { "{ keys = { ssn = 'keep' } }", "option 'keys.ssn' must be one of redact, hash, drop (got \"keep\")" },
        { "{ allow = { 'a', 5 } }", "option 'allow' must list key names (item 2 is 5)" },
        { "{ ip = 'mask' }", "option 'ip' must be one of anonymize, drop, keep (got \"mask\")" },
        { "{ fields = { 'props' } }", "option 'fields' must list properties, traits, context (got \"props\")" },
        { "{ max_depth = 0 }", "option 'max_depth' must be an integer from 1 to 32 (got 0)" },
        { "{ redact = true }", "tally.privacy: unknown option 'redact'" },
      }
      for _, c in ipairs(cases) do
        local err = open_error(c[1])
        assert.truthy(err and err:find(c[2], 1, true), ("%s: %s"):format(c[1], tostring(err)))
      end
    end)
  end)

  describe("ctx:hmac", function()
    it("gives the RFC 4231 HMAC-SHA256 values in a rule", function()
      assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        hmac_hex_in_rule("Jefe", "what do ya want for nothing?"))
      assert.are.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        hmac_hex_in_rule(string.rep("\x0b", 20), "Hi There"))
    end)
  end)
end)
