--- Personal data out of messages before they are stored or sent: finds e-mail addresses, phone
-- numbers, IP addresses, payment card numbers and IBANs in properties, traits and context, and
-- redacts them (a fixed marker), pseudonymises them (HMAC-SHA256 with a key, through ctx:hmac) or
-- drops the key holding them; per-key actions, allow-lists, and context.ip anonymized.
--
--   return require("tally.privacy").rule{ key = "a secret of 16 bytes or more", detectors = { email = "hash" } }
--
-- Every detector scans in linear time: candidates come from plain searches or from patterns of a
-- short fixed prefix and a greedy run (the matcher never backtracks over a run more than once),
-- then are checked with bounded work. docs/rules.md has the exact definitions and what is not
-- caught.
local util = require("tally.util")
local ip = require("tally.ip")

local M = {}
local MODULE = "tally.privacy"

local byte, find, sub, lower, upper, gsub, format = string.byte, string.find, string.sub, string.lower,
  string.upper, string.gsub, string.format

--- What `redact` writes in place of a match (or of a whole value, for a key in `keys`).
M.MARKERS = { email = "[email]", phone = "[phone]", ip = "[ip]", card = "[card]", iban = "[iban]",
              key = "[redacted]" }

local DETECTOR_NAMES = { "email", "phone", "ip", "card", "iban" }
local ACTIONS = { "redact", "hash", "drop" }
local FIELDS = { "properties", "traits", "context" }
local MIN_KEY_BYTES = 16

------------------------------------------------------------------------------------------------
-- Checksums (exported).

--- True when the digit string passes the Luhn check.
function M.luhn(digits)
  local sum, n = 0, #digits
  for i = n, 1, -1 do
    local d = byte(digits, i) - 48
    if (n - i) % 2 == 1 then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
  end
  return sum % 10 == 0
end

-- Issuer prefixes of the major networks (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay,
-- Maestro), with the lengths they issue: a Luhn-valid 16-digit order id passes 1 time in 10, and
-- starting with one of these prefixes cuts that further (timestamps in ms start with 1: never).
local function card_issuer(d)
  local n = #d
  local p1, p2, p4 = byte(d, 1) - 48, tonumber(sub(d, 1, 2)), tonumber(sub(d, 1, 4))
  local p3, p6 = tonumber(sub(d, 1, 3)), tonumber(sub(d, 1, 6))
  if p1 == 4 then return n == 13 or n == 16 or n == 19 end                       -- Visa
  if (p2 >= 51 and p2 <= 55) or (p4 >= 2221 and p4 <= 2720) then return n == 16 end -- Mastercard
  if p2 == 34 or p2 == 37 then return n == 15 end                                -- Amex
  if p4 == 6011 or p2 == 65 or (p3 >= 644 and p3 <= 649) then return n >= 16 end  -- Discover
  if p4 >= 3528 and p4 <= 3589 then return n >= 16 end                           -- JCB
  if (p3 >= 300 and p3 <= 305) or p2 == 36 or p2 == 38 or p2 == 39 then return n >= 14 end -- Diners
  if p2 == 62 then return n >= 16 end                                             -- UnionPay
  if p2 == 50 or (p2 >= 56 and p2 <= 69) or p6 == 676770 then return n >= 12 end   -- Maestro
  return false
end

--- True when the digit string (no separators) is a payment card number: 13 to 19 digits, an
-- issuer prefix and length of a major network, and the Luhn check.
function M.card_valid(d)
  local n = #d
  return n >= 13 and n <= 19 and not find(d, "%D") and card_issuer(d) and M.luhn(d)
end

-- IBAN length per country (the SWIFT IBAN registry).
local IBAN_LENGTH = {
  AD = 24, AE = 23, AL = 28, AT = 20, AZ = 28, BA = 20, BE = 16, BG = 22, BH = 22, BR = 29, BY = 28,
  CH = 21, CR = 22, CY = 28, CZ = 24, DE = 22, DK = 18, DO = 28, EE = 20, EG = 29, ES = 24, FI = 18,
  FO = 18, FR = 27, GB = 22, GE = 22, GI = 23, GL = 18, GR = 27, GT = 28, HR = 21, HU = 28, IE = 22,
  IL = 23, IQ = 23, IS = 26, IT = 27, JO = 30, KW = 30, KZ = 20, LB = 28, LC = 32, LI = 21, LT = 20,
  LU = 20, LV = 21, MC = 27, MD = 24, ME = 22, MK = 19, MR = 27, MT = 31, MU = 30, NL = 18, NO = 15,
  PK = 24, PL = 28, PS = 29, PT = 25, QA = 29, RO = 24, RS = 22, SA = 24, SC = 31, SE = 24, SI = 19,
  SK = 24, SM = 27, ST = 25, SV = 28, TL = 23, TN = 24, TR = 26, UA = 29, VA = 22, VG = 24, XK = 20,
}

--- True when s (upper case, no spaces) is an IBAN: a known country, its length, and mod-97 == 1.
function M.iban_valid(s)
  if IBAN_LENGTH[sub(s, 1, 2)] ~= #s or find(s, "[^%u%d]") or find(s, "^%u%u%d%d") == nil then
    return false
  end
  local r = 0
  local moved = sub(s, 5) .. sub(s, 1, 4)
  for i = 1, #moved do
    local c = byte(moved, i)
    if c >= 65 then r = (r * 100 + (c - 55)) % 97 else r = (r * 10 + (c - 48)) % 97 end
  end
  return r == 1
end

------------------------------------------------------------------------------------------------
-- IP addresses (exported helpers): tally.ip parses them, the same code the nginx binding uses.

local ipv4_octets, ipv6_groups = ip.ipv4, ip.ipv6

--- "ipv4", "ipv6" or nil.
M.ip_kind = ip.kind

--- The address with its host part zeroed: IPv4 keeps 24 bits ("203.0.113.7" -> "203.0.113.0"),
-- IPv6 keeps 48 ("2001:db8:85a3:8d3:1319:8a2e:370:7348" -> "2001:db8:85a3::"); an IPv4-mapped
-- IPv6 address is anonymized as IPv4 ("::ffff:203.0.113.0"). nil when s is not an address.
M.anonymize_ip = ip.anonymize

------------------------------------------------------------------------------------------------
-- Detectors. Each appends { first, last, detector, normalized } for the matches in s. The
-- normalized text is what `hash` hashes, so that the same address written differently
-- ("Ann@X.org", "ann@x.org") gives the same pseudonym.

local function is_word(c) -- [%w_] or a UTF-8 byte: a match must not run into a word
  return c and (c >= 48 and c <= 57 or c >= 65 and c <= 90 or c >= 97 and c <= 122 or c == 95 or c >= 128)
end

-- the local part of an address: letters, digits, . _ % + - and UTF-8 bytes
local LOCAL_BYTE = {}
for c = 0, 255 do LOCAL_BYTE[c] = is_word(c) or c == 46 or c == 37 or c == 43 or c == 45 end
local MAX_LOCAL = 64

local function scan_email(s, out)
  local init = 1
  while true do
    -- candidates are "@label.x": an "@" that cannot start a domain costs the matcher, not Lua
    local at = find(s, "@[%w%-\128-\255]+%.[%w\128-\255]", init)
    if not at then return end
    init = at + 1
    local i = at - 1
    while i >= 1 and i >= at - MAX_LOCAL and LOCAL_BYTE[byte(s, i)] do i = i - 1 end
    local first = i + 1
    while first < at and byte(s, first) == 46 do first = first + 1 end -- not from a leading dot
    local _, de = find(s, "^[%w.%-\128-\255]+", at + 1)
    if first < at and (i < 1 or not LOCAL_BYTE[byte(s, i)]) and de then
      while de > at and (byte(s, de) == 46 or byte(s, de) == 45) do de = de - 1 end -- sentence end
      local domain = sub(s, at + 1, de)
      -- labels of letters, digits and inner hyphens; the last (the TLD) two letters or more
      if find(domain, ".", 1, true) and not find(domain, "..", 1, true) and #domain <= 253
         and find(domain, "%.[%a\128-\255][%a\128-\255]+$") and not find(domain, "^[.-]")
         and not find(domain, "%-%.") and not find(domain, "%.%-") then
        out[#out + 1] = { first, de, "email", lower(sub(s, first, de)) }
        init = de + 1
      end
    end
  end
end

-- The word before position i (lower case), for "version 1.2.3.4" and "Chrome/120.0.0.0".
local VERSION_WORDS = { v = true, ver = true, version = true, build = true, release = true, rev = true }
local function follows_version_word(s, i)
  local before = sub(s, i > 16 and i - 16 or 1, i - 1)
  if find(before, "%a/$") then return true end -- a product token: Chrome/120.0.0.0
  local w = before:match("(%a+)[%s:=]*$") or before:match("(%a+)%.%s*$")
  return w ~= nil and VERSION_WORDS[lower(w)] == true
end

-- Candidate runs are found by patterns made of a short fixed prefix and a greedy run that ends the
-- pattern: nothing backtracks, and the runs too short to hold a match are skipped by their length
-- before any other work.
local IPV4_RUN = "%d%.[%d.]*"          -- 1.2.3.4: a digit and a dot
local CARD_RUN = "%d%d%d%d[%d %-]*"    -- every card and each grouping starts with four digits
local PHONE_RUN = "[+(]?%d[%d ().-]+"  -- every phone form has a digit and more

local function scan_ipv4(s, out)
  local init = 1
  while true do
    local a, b = find(s, IPV4_RUN, init)
    if not a then return end
    init = b + 1
    -- the run starts up to three digits before the first dot (more: prev is a digit, refused below)
    while a > 1 and a > b - 14 and find(s, "^%d", a - 1) and find(s, "^%d%d?%d?%.", a - 1) do a = a - 1 end
    if b - a < 6 then goto next end
    local tok_end = b
    while tok_end > a and byte(s, tok_end) == 46 do tok_end = tok_end - 1 end -- sentence end
    local tok = sub(s, a, tok_end)
    local o1, o2, o3, o4 = ipv4_octets(tok)
    -- all four octets under 10 ("1.2.3.4", "8.8.8.8"): a version far more often than a person's
    -- address (those few addresses are infrastructure: resolvers, test hosts)
    if o1 and o1 ~= 0 and (o1 >= 10 or o2 >= 10 or o3 >= 10 or o4 >= 10) and not is_word(byte(s, a - 1)) and not is_word(byte(s, b + 1))
       and byte(s, a - 1) ~= 45 and not follows_version_word(s, a) then
      out[#out + 1] = { a, tok_end, "ip", tok }
    end
    ::next::
  end
end

local function scan_ipv6(s, out)
  local init = 1
  while true do
    local c = find(s, ":", init, true)
    if not c then return end
    local first = c
    while first > 1 and first > c - 5 and find(s, "^%x", first - 1) do first = first - 1 end
    local _, last = find(s, "^[%x:.]+", first)
    init = last + 1
    while last > first and byte(s, last) == 46 do last = last - 1 end
    local prev, nxt = byte(s, first - 1), byte(s, last + 1)
    if not is_word(prev) and prev ~= 58 and prev ~= 46 and not is_word(nxt) then
      local tok = sub(s, first, last)
      local _, colons = gsub(tok, ":", "")
      if colons >= 2 and ipv6_groups(tok) then out[#out + 1] = { first, last, "ip", lower(tok) } end
    end
  end
end

-- Written in groups the way cards are printed: fours (the last 1 to 4), or 4-6-5 / 4-6-4 (Amex,
-- Diners).
local function card_grouping(tok)
  local g = {}
  for run in string.gmatch(tok, "%d+") do g[#g + 1] = #run end
  if #g == 3 and g[1] == 4 and g[2] == 6 and (g[3] == 5 or g[3] == 4) then return true end
  for i = 1, #g - 1 do
    if g[i] ~= 4 then return false end
  end
  return g[#g] <= 4
end

-- digit runs with single spaces or hyphens between groups
local function scan_card(s, out)
  local init = 1
  while true do
    local a, b = find(s, CARD_RUN, init)
    if not a then return end
    init = b + 1
    if b - a < 12 then goto next end
    while b > a and not find(s, "^%d", b) do b = b - 1 end
    local tok = sub(s, a, b)
    local prev, nxt = byte(s, a - 1), byte(s, b + 1)
    if not is_word(prev) and prev ~= 46 and prev ~= 45 and not is_word(nxt)
       and not (nxt == 46 and find(s, "^%d", b + 2)) and not find(tok, "[ %-][ %-]")
       and not (find(tok, " ", 1, true) and find(tok, "-", 1, true)) then
      local digits = gsub(tok, "[ %-]", "")
      local grouped_ok = digits == tok or card_grouping(tok)
      if grouped_ok and M.card_valid(digits) then out[#out + 1] = { a, b, "card", digits } end
    end
    ::next::
  end
end

local function scan_iban(s, out)
  local init = 1
  while true do
    local a = find(s, "%a%a%d%d", init)
    if not a then return end
    init = a + 1
    local country = upper(sub(s, a, a + 1))
    local len = IBAN_LENGTH[country]
    if len and not is_word(byte(s, a - 1)) then
      -- `len` letters and digits, a single space allowed between any two (print form: fours)
      local chars, i, last = {}, a, nil
      while #chars < len do
        local c = byte(s, i)
        if c and (is_word(c) and c < 128 and c ~= 95) then
          chars[#chars + 1] = c
          last = i
          i = i + 1
        elseif c == 32 and #chars > 0 and byte(s, i + 1) and byte(s, i + 1) ~= 32 then
          i = i + 1
        else
          break
        end
      end
      if #chars == len and not is_word(byte(s, last + 1)) then
        local compact = upper(string.char(table.unpack(chars)))
        if M.iban_valid(compact) then
          out[#out + 1] = { a, last, "iban", compact }
          init = last + 1
        end
      end
    end
  end
end

local function is_date_prefix(tok)
  return find(tok, "^%d%d?[./-]%d%d?[./-]%d%d%d%d") ~= nil or find(tok, "^%d%d%d%d[./-]%d%d?[./-]%d%d?") ~= nil
end

-- Phone numbers: "+" and 8-15 digits (E.164), "00" and a country code, North American
-- (NXX) NXX-XXXX, or a national number with a trunk 0 (10 or 11 digits) written in groups; a bare
-- national number ("0612345678") only as a whole value, since in text a bare digit run is more
-- often a reference than a phone.
local function phone_ok(tok, whole)
  local digits = gsub(tok, "%D", "")
  local nd = #digits
  local _, opens = gsub(tok, "%(", "")
  local _, closes = gsub(tok, "%)", "")
  if opens ~= closes then return nil end
  if byte(tok, 1) == 43 then -- +
    if nd >= 8 and nd <= 15 and byte(digits, 1) ~= 48 then return digits end
    return nil
  end
  if find(tok, "^00[1-9]") and nd >= 10 and nd <= 17 and find(tok, "[ ().-]") then return sub(digits, 3) end
  if find(tok, "^1?[ .-]?%(?[2-9]%d%d%)?[ .-]?[2-9]%d%d[ .-]%d%d%d%d$") and (nd == 10 or nd == 11)
     and (find(tok, "^%(") or find(tok, "^1?[ .-]?%d%d%d[ .-]")) then
    return nd == 10 and "1" .. digits or digits
  end
  if (find(tok, "^0[1-9]") or find(tok, "^%(0[1-9]")) and nd >= 10 and nd <= 11 and not is_date_prefix(tok) then
    if find(tok, "[ ().-]") then
      -- groups of at least two digits: "06 12 34 56 78", "020 7946 0958", "(030) 1234567"
      if not find(" " .. gsub(tok, "[().]", " ") .. " ", "[ %-]%d[ %-]") then return digits end
    elseif whole then
      return digits
    end
  end
  return nil
end

local function scan_phone(s, out)
  local init, n = 1, #s
  while true do
    local a, b = find(s, PHONE_RUN, init)
    if not a then return end
    init = b + 1
    if b - a < 7 then goto next end
    -- trailing separators belong to the sentence, not to the number
    while b > a and find(s, "^[ .(-]", b) do b = b - 1 end
    local tok = sub(s, a, b)
    local _, opens = gsub(tok, "%(", "")
    local _, closes = gsub(tok, "%)", "")
    if closes > opens and byte(tok, -1) == 41 then b, tok = b - 1, sub(tok, 1, -2) end
    local prev, nxt = byte(s, a - 1), byte(s, b + 1)
    if not is_word(prev) and prev ~= 46 and prev ~= 47 and prev ~= 45 and not is_word(nxt) and nxt ~= 47 then
      local whole = a == 1 and b == n
      local norm = phone_ok(tok, whole)
      if norm then out[#out + 1] = { a, b, "phone", norm } end
    end
    ::next::
  end
end

------------------------------------------------------------------------------------------------
-- The walk.

local DROP = {} -- returned by visit: remove this key or element

-- Key names are compared lower case without "_", "-" and spaces: "E-mail", "e_mail" and "email"
-- name the same key; "emailAddress" and "email_address" too. Cached, keys repeat across messages.
local norm_cache, norm_count = {}, 0
local function norm_key(k)
  local n = norm_cache[k]
  if n then return n end
  n = gsub(lower(k), "[_%- ]", "")
  if norm_count >= 4096 then norm_cache, norm_count = {}, 0 end
  norm_cache[k], norm_count = n, norm_count + 1
  return n
end

-- IP-shaped values under these keys are versions (context.library.version, app_version).
local function is_version_key(nk)
  return nk ~= nil and (find(nk, "version$") ~= nil or nk == "ver" or nk == "build")
end

local function hash(h, ctx, text)
  if not (ctx and ctx.hmac) then util.fail(MODULE, "hash needs ctx:hmac (run the rule in tally's runtime)") end
  return ctx:hmac(h.key, text)
end

-- Values of these shapes (whole) carry no personal data and are in every message (context.session):
-- skipped before the detectors that would each walk them.
local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
local ISO_TIME = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[.%d]*Z?$"

local function ipv6_possible(s)
  local c = find(s, ":", 1, true)
  if not c then return false end
  if find(s, "::", c, true) then return true end
  for _ = 1, 6 do -- seven colons when nothing is compressed
    c = find(s, ":", c + 1, true)
    if not c then return false end
  end
  return true
end

-- Scans one string; returns it (changed or not) or DROP.
local function scan(h, s, nk, ctx)
  local n = #s
  if n < 3 then return s end
  local found = {}
  local d = h.detectors
  if d.email and find(s, "@", 1, true) then scan_email(s, found) end
  if find(s, "%d") and not ((n == 36 and find(s, UUID)) or (n >= 20 and find(s, ISO_TIME))) then
    -- plain searches first: each pattern below costs a class test per byte
    if d.ip and ipv6_possible(s) then scan_ipv6(s, found) end
    if d.ip and n >= 7 and find(s, ".", 1, true) and find(s, "%d%.%d+%.%d+%.%d") and not is_version_key(nk) then
      scan_ipv4(s, found)
    end
    if d.card and n >= 13 then scan_card(s, found) end
    if d.iban and n >= 15 then scan_iban(s, found) end
    if d.phone and n >= 8 then scan_phone(s, found) end
  end
  if #found == 0 then return s end
  if #found > 1 then
    table.sort(found, function(x, y)
      if x[1] ~= y[1] then return x[1] < y[1] end
      return x[2] > y[2]
    end)
  end
  local parts, pos = {}, 1
  for _, m in ipairs(found) do
    if m[1] >= pos then -- overlapping matches: the first (then the longest) wins
      local action = d[m[3]]
      if action == "drop" then return DROP end
      parts[#parts + 1] = sub(s, pos, m[1] - 1)
      parts[#parts + 1] = action == "hash" and hash(h, ctx, m[4]) or M.MARKERS[m[3]]
      pos = m[2] + 1
    end
  end
  parts[#parts + 1] = sub(s, pos)
  return table.concat(parts)
end

-- A value under a key in `keys`: redact and drop take it whole; hash hashes its strings and
-- numbers (inside tables too) and leaves booleans and null, which carry no identity.
local function by_key(h, v, action, ctx, depth)
  if action == "drop" then return DROP end
  if action == "redact" then return M.MARKERS.key end
  local t = type(v)
  if t == "string" then return hash(h, ctx, v) end
  if t == "number" then return hash(h, ctx, math.type(v) == "integer" and format("%d", v) or format("%.17g", v)) end
  if t == "table" then
    if depth >= h.max_depth then return DROP end
    for k, x in pairs(v) do v[k] = by_key(h, x, action, ctx, depth + 1) end
    return v
  end
  return v
end

local walk

-- One value under (normalized) key nk at path; returns the value to keep, or DROP.
local function visit(h, v, nk, path, depth, ctx)
  local t = type(v)
  if t == "string" then return scan(h, v, nk, ctx) end
  if t == "table" then
    if depth >= h.max_depth then
      -- what cannot be checked is not sent
      util.violation(ctx, "privacy.depth", format("%s: nested deeper than %d levels: dropped", path or "?", h.max_depth))
      return DROP
    end
    walk(h, v, depth + 1, path, nk, ctx)
    return v
  end
  if math.type(v) == "integer" and h.detectors.card and (v >= 1000000000000 or v <= -1000000000000) then
    local digits = format("%d", v < 0 and -v or v)
    if M.card_valid(digits) then
      local action = h.detectors.card
      if action == "drop" then return DROP end
      return action == "hash" and hash(h, ctx, digits) or M.MARKERS.card
    end
  end
  return v
end

-- Walks table t (its path and the key it is under); skip: a key left alone (context.ip).
function walk(h, t, depth, path, nk, ctx, skip)
  if util.is_array(t) then
    local n, j = #t, 0
    for i = 1, n do
      local nv = visit(h, t[i], nk, path, depth, ctx)
      if nv ~= DROP then
        j = j + 1
        t[j] = nv
      end
    end
    for i = j + 1, n do t[i] = nil end
    return
  end
  for k, v in pairs(t) do
    if type(k) == "string" and k ~= skip then
      local kn = norm_key(k)
      local p = h.paths and path and (path .. "." .. kn) or nil
      if not (h.allow[kn] or (p and h.allow[p])) then
        local action = h.keys[kn] or (p and h.keys[p])
        local nv
        if action then nv = by_key(h, v, action, ctx, depth) else nv = visit(h, v, kn, p, depth, ctx) end
        if nv == DROP then t[k] = nil elseif nv ~= v then t[k] = nv end
      end
    end
  end
end

------------------------------------------------------------------------------------------------
-- Options.

local OPTIONS = util.set{ "key", "detectors", "keys", "allow", "ip", "fields", "max_depth" }

local function norm_entry(name)
  local parts = {}
  for part in string.gmatch(name, "[^.]+") do parts[#parts + 1] = norm_key(part) end
  return table.concat(parts, "."), #parts > 1
end

local function build(opts)
  util.check_type(MODULE, opts, "key", "string")
  util.check_type(MODULE, opts, "detectors", "table")
  util.check_type(MODULE, opts, "keys", "table")
  util.check_type(MODULE, opts, "allow", "table|string")
  util.check_choice(MODULE, opts, "ip", { "anonymize", "drop", "keep" })
  util.check_type(MODULE, opts, "fields", "table|string")
  util.check_type(MODULE, opts, "max_depth", "number")
  local h = { key = opts.key, ip = opts.ip or "anonymize", detectors = {}, keys = {}, allow = {},
              max_depth = opts.max_depth or 8, paths = false }
  if math.type(h.max_depth) ~= "integer" or h.max_depth < 1 or h.max_depth > 32 then
    util.fail(MODULE, "option 'max_depth' must be an integer from 1 to 32 (got %s)", util.show(opts.max_depth))
  end
  local uses_hash
  local known = util.set(DETECTOR_NAMES)
  for _, name in ipairs(DETECTOR_NAMES) do h.detectors[name] = "redact" end
  for name, action in pairs(opts.detectors or {}) do
    if not known[name] then
      util.fail(MODULE, "option 'detectors': unknown detector %s (email, phone, ip, card, iban)", util.show(name))
    end
    if action ~= false and not util.set(ACTIONS)[action] then
      util.fail(MODULE, "option 'detectors.%s' must be one of redact, hash, drop, false (got %s)", name, util.show(action))
    end
    h.detectors[name] = action
    if action == "hash" then uses_hash = "detectors." .. name end
  end
  for name, action in pairs(opts.keys or {}) do
    if type(name) ~= "string" or name == "" then
      util.fail(MODULE, "option 'keys' maps key names to actions (got the key %s)", util.show(name))
    end
    if not util.set(ACTIONS)[action] then
      util.fail(MODULE, "option 'keys.%s' must be one of redact, hash, drop (got %s)", name, util.show(action))
    end
    local n, dotted = norm_entry(name)
    h.keys[n] = action
    h.paths = h.paths or dotted
    if action == "hash" then uses_hash = "keys." .. name end
  end
  for i, name in ipairs(util.as_list(opts.allow)) do
    if type(name) ~= "string" or name == "" then
      util.fail(MODULE, "option 'allow' must list key names (item %d is %s)", i, util.show(name))
    end
    local n, dotted = norm_entry(name)
    h.allow[n] = true
    h.paths = h.paths or dotted
  end
  if uses_hash then
    if not h.key then
      util.fail(MODULE, "option 'key' is required when an action is hash (%s = \"hash\")", uses_hash)
    end
    if #h.key < MIN_KEY_BYTES or #h.key > 1024 then
      util.fail(MODULE, "option 'key' must be %d to 1024 bytes (got %d)", MIN_KEY_BYTES, #h.key)
    end
  end
  h.fields = {}
  local field_set = util.set(FIELDS)
  for _, f in ipairs(util.as_list(opts.fields or FIELDS)) do
    if not field_set[f] then
      util.fail(MODULE, "option 'fields' must list properties, traits, context (got %s)", util.show(f))
    end
    h.fields[#h.fields + 1] = f
  end

  return function(msg, ctx)
    for _, f in ipairs(h.fields) do
      local t = msg[f]
      if type(t) == "table" then
        local skip
        if f == "context" then
          skip = "ip" -- the `ip` option's, not the detectors'
          if h.ip == "drop" or (h.ip == "anonymize" and type(t.ip) ~= "string" and not util.is_null(t.ip)) then
            t.ip = nil
          elseif h.ip == "anonymize" and type(t.ip) == "string" then
            t.ip = M.anonymize_ip(t.ip) -- nil (dropped) when it is not an address
          end
        end
        walk(h, t, 1, f, nil, ctx, skip)
      end
    end
    return msg
  end
end

--- rule(opts) -> plugin table (stage "enrichment", on_error "drop": a message the rule fails on
-- is not sent, rather than sent unredacted). Options (docs/rules.md#tallyprivacy):
--   key = "..."                  HMAC key, 16 to 1024 bytes; required when an action is "hash"
--   detectors = { email = "hash", phone = "redact", ip = "redact", card = "redact", iban = false }
--                                per detector: redact (default) | hash | drop | false (off)
--   keys = { password = "drop", email = "hash", ["traits.address"] = "redact" }
--                                whatever their content: the key name anywhere, or a dotted path
--   allow = { "order_id", "context.page.url" }   never touched
--   ip = "anonymize" (default) | "drop" | "keep"   context.ip
--   fields = { "properties", "traits", "context" } (default: the three)
--   max_depth = 8                deeper tables are dropped (reported as privacy.depth)
local make_rule = util.constructor{
  module = MODULE, name = "privacy", stage = "enrichment", entry = "process",
  options = OPTIONS, build = build,
}

function M.rule(opts)
  local plugin = make_rule(opts)
  if plugin.on_error == nil then plugin.on_error = "drop" end
  return plugin
end

return M
