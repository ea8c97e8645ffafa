-- tally.ip, the IP address parser the tally.privacy rule and the nginx binding share. Here under
-- Lua 5.4 directly and inside a rule's sandbox; tests/e2e/test_nginx.sh runs the same module
-- under nginx's LuaJIT through resty.tally.anonymize_ip.
local ip = require("tally.ip")
local tally = require("tally")
local files = require("tests.lua.helpers.files")

describe("tally.ip", function()
  describe("ipv4", function()
    it("reads a dotted quad into four numbers", function()
      assert.are.same({ 203, 0, 113, 7 }, { ip.ipv4("203.0.113.7") })
      assert.are.same({ 0, 0, 0, 0 }, { ip.ipv4("0.0.0.0") })
      assert.are.same({ 255, 255, 255, 255 }, { ip.ipv4("255.255.255.255") })
    end)

    it("refuses octets over 255, leading zeros, short or long forms and surrounding text", function()
      for _, s in ipairs { "256.1.1.1", "1.2.3.256", "010.1.1.1", "1.2.3.04", "1.2.3", "1.2.3.4.5",
                           "1.2.3.4 ", " 1.2.3.4", "1.2.3.4/24", "1..2.3", "1234.1.1.1", "a.b.c.d", "" } do
        assert.is_nil(ip.ipv4(s), s)
      end
      assert.is_nil(ip.ipv4(nil))
      assert.is_nil(ip.ipv4(1234))
    end)
  end)

  describe("ipv6", function()
    it("reads the full form, hex in either case", function()
      assert.are.same({ 0x2001, 0xdb8, 0x85a3, 0x8d3, 0x1319, 0x8a2e, 0x370, 0x7348 },
                      ip.ipv6("2001:DB8:85a3:08d3:1319:8A2E:0370:7348"))
    end)

    it("expands :: at the start, the middle and the end, and :: alone", function()
      assert.are.same({ 0, 0, 0, 0, 0, 0, 0, 1 }, ip.ipv6("::1"))
      assert.are.same({ 0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 }, ip.ipv6("2001:db8::1"))
      assert.are.same({ 0xfe80, 0, 0, 0, 0, 0, 0, 0 }, ip.ipv6("fe80::"))
      assert.are.same({ 0, 0, 0, 0, 0, 0, 0, 0 }, ip.ipv6("::"))
      assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 0 }, ip.ipv6("1:2:3:4:5:6:7::"))
    end)

    it("reads an IPv4 tail as the last two groups", function()
      assert.are.same({ 0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0280 }, ip.ipv6("::ffff:192.0.2.128"))
      assert.are.same({ 1, 2, 3, 4, 5, 6, 0x0102, 0x0304 }, ip.ipv6("1:2:3:4:5:6:1.2.3.4"))
    end)

    it("ignores a zone id, and refuses a % with no zone", function()
      assert.are.same({ 0xfe80, 0, 0, 0, 1, 2, 3, 4 }, ip.ipv6("fe80::1:2:3:4%eth0"))
      assert.are.same({ 0xfe80, 0, 0, 0, 0, 0, 0, 1 }, ip.ipv6("fe80::1%25"))
      assert.is_nil(ip.ipv6("fe80::1%"))
    end)

    it("refuses what is not an address", function()
      for _, s in ipairs {
        "", ":", ":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8::",
        "12345::", "g::1", "::1.2.3", "::1.2.3.256", "::010.1.2.3", "1.2.3.4::", "::1.2.3.4:5",
        "1:2:3:4:5:6:7:1.2.3.4", "unix:", "2001:db8::1 ", "[::1]", "::1/64", "%eth0",
        ("1:"):rep(20) .. "1",
      } do
        assert.is_nil(ip.ipv6(s), s)
      end
      assert.is_nil(ip.ipv6(nil))
    end)
  end)

  it("tells the kind of an address", function()
    assert.are.equal("ipv4", ip.kind("192.0.2.1"))
    assert.are.equal("ipv6", ip.kind("2001:db8::1"))
    assert.are.equal("ipv6", ip.kind("::ffff:192.0.2.1"))
    assert.are.equal("ipv6", ip.kind("fe80::1%eth0"))
    assert.is_nil(ip.kind("example.com"))
    assert.is_nil(ip.kind({}))
  end)

  it("writes RFC 5952 text: lower case, no leading zeros, the first longest zero run as ::", function()
    assert.are.equal("2001:db8::1", ip.ipv6_text({ 0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 }))
    assert.are.equal("1:0:2::3", ip.ipv6_text({ 1, 0, 2, 0, 0, 0, 0, 3 }))   -- a single 0 stays
    assert.are.equal("1:0:0:2::3", ip.ipv6_text({ 1, 0, 0, 2, 0, 0, 0, 3 })) -- the longest run
    assert.are.equal("1::2:0:0:3:4", ip.ipv6_text({ 1, 0, 0, 2, 0, 0, 3, 4 })) -- of equal runs, the first
    assert.are.equal("::", ip.ipv6_text({ 0, 0, 0, 0, 0, 0, 0, 0 }))
    assert.are.equal("1:2:3:4:5:6:7:8", ip.ipv6_text({ 1, 2, 3, 4, 5, 6, 7, 8 }))
  end)

  describe("anonymize", function()
    it("keeps 24 bits of IPv4 and 48 of IPv6", function()
      assert.are.equal("203.0.113.0", ip.anonymize("203.0.113.77"))
      assert.are.equal("2001:db8:85a3::", ip.anonymize("2001:db8:85a3:8d3:1319:8a2e:370:7348"))
      assert.are.equal("2001:db8::", ip.anonymize("2001:DB8::1"))
      assert.are.equal("::", ip.anonymize("::1"))
      assert.are.equal("::", ip.anonymize("::"))
      assert.are.equal("0:1::", ip.anonymize("0:1:0:5::"))
    end)

    it("drops the zone id", function()
      assert.are.equal("fe80::", ip.anonymize("fe80::1:2:3:4%eth0"))
    end)

    it("anonymizes an IPv4-mapped address as IPv4", function()
      assert.are.equal("::ffff:198.51.100.0", ip.anonymize("::ffff:198.51.100.9"))
      assert.are.equal("::ffff:0.0.0.0", ip.anonymize("::ffff:0:1"))
    end)

    it("gives nil for what is not an address", function()
      for _, s in ipairs { "203.0.113.256", "1.2.3", "1::2::3", "unix:", "localhost", "" } do
        assert.is_nil(ip.anonymize(s), s)
      end
      assert.is_nil(ip.anonymize(nil))
    end)
  end)

  it("is what a rule finds with require inside the sandbox", function()
    local dir = files.tmpdir()
    files.write(dir .. "/10_ip.lua", [[
local ip = require("tally.ip")
return { name = "ip", process = function(m)
  m.properties.anon = ip.anonymize(m.properties.addr)
  m.properties.kind = ip.kind(m.properties.addr)
  return m
end }
]])
    local out = dir .. "/out.ndjson"
    local t = assert(tally.open { rules = dir, log_level = "off", destinations = { { type = "file", path = out } } })
    assert(t:track("a", { addr = "::ffff:192.0.2.55" }))
    assert(t:flush(20000))
    assert(t:close(5000))
    local line = files.read(out)
    assert.truthy(line:find('"anon":"::ffff:192.0.2.0"', 1, true), line)
    assert.truthy(line:find('"kind":"ipv6"', 1, true), line)
  end)
end)
