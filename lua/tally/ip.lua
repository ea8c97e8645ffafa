--- IP address text: reading IPv4 and IPv6 addresses and anonymizing them.
--
--   local ip = require("tally.ip")
--   ip.anonymize("203.0.113.7")  --> "203.0.113.0"
--
-- One parser for the two places that need it: the tally.privacy rule (Lua 5.4, inside the rule
-- sandbox, where `require "tally.ip"` finds this file bundled into libtally) and the nginx binding
-- resty.tally (LuaJIT, which reads it from lua_package_path or the installed share/lua/5.1). So
-- it is plain Lua that both read: no bitwise operators, no integer division, no goto.
local M = {}

local byte, find, sub, format, match, gmatch, concat, floor, tonumber =
  string.byte, string.find, string.sub, string.format, string.match, string.gmatch, table.concat,
  math.floor, tonumber

--- a, b, c, d (numbers) of a dotted quad, or nil. An octet written with a leading zero ("010")
-- is refused: octal to some readers and decimal to others, so not an address read safely.
function M.ipv4(s)
  if type(s) ~= "string" then return nil end
  local o1, o2, o3, o4 = match(s, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$")
  if not o1 then return nil end
  if (#o1 > 1 and byte(o1, 1) == 48) or (#o2 > 1 and byte(o2, 1) == 48)
     or (#o3 > 1 and byte(o3, 1) == 48) or (#o4 > 1 and byte(o4, 1) == 48) then
    return nil
  end
  local a, b, c, d = tonumber(o1), tonumber(o2), tonumber(o3), tonumber(o4)
  if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
  return a, b, c, d
end

-- Appends the groups of part ("1:2:3", "ffff:1.2.3.4" when v4_ok) to out; false when one is not
-- a group.
local function parse_groups(part, out, v4_ok)
  if part == "" then return true end
  local list = {}
  for g in gmatch(part .. ":", "([^:]*):") do list[#list + 1] = g end
  for i = 1, #list do
    local g = list[i]
    if v4_ok and i == #list and find(g, ".", 1, true) then
      local a, b, c, d = M.ipv4(g)
      if not a then return false end
      out[#out + 1] = a * 256 + b
      out[#out + 1] = c * 256 + d
    elseif #g >= 1 and #g <= 4 and not find(g, "[^%x]") then
      out[#out + 1] = tonumber(g, 16)
    else
      return false
    end
  end
  return true
end

--- The 8 groups (numbers 0-65535) of an IPv6 address, or nil. Accepts "::" compression, an IPv4
-- tail ("::ffff:192.0.2.1") and a zone id ("fe80::1%eth0", the zone ignored).
function M.ipv6(s)
  if type(s) ~= "string" then return nil end
  local zone = find(s, "%", 1, true)
  if zone then
    if zone == #s then return nil end -- "%" with no zone
    s = sub(s, 1, zone - 1)
  end
  if #s < 2 or #s > 45 or find(s, "[^%x:.]") then return nil end
  local head, tail = s, nil
  local dc = find(s, "::", 1, true)
  if dc then
    head, tail = sub(s, 1, dc - 1), sub(s, dc + 2)
    if find(tail, "::", 1, true) then return nil end
  end
  local h, t = {}, {}
  if not parse_groups(head, h, tail == nil) or (tail and not parse_groups(tail, t, true)) then return nil end
  if tail == nil then return #h == 8 and h or nil end
  if #h + #t > 7 then return nil end -- "::" stands for one group or more
  for _ = 1, 8 - #h - #t do h[#h + 1] = 0 end
  for i = 1, #t do h[#h + 1] = t[i] end
  return h
end

--- RFC 5952 text of 8 groups: lower case, no leading zeros, the first longest run of two or more
-- zero groups written "::".
function M.ipv6_text(g)
  local best, best_len, i = nil, 1, 1
  while i <= 8 do
    if g[i] == 0 then
      local j = i
      while j < 8 and g[j + 1] == 0 do j = j + 1 end
      if j - i + 1 > best_len then best, best_len = i, j - i + 1 end
      i = j + 1
    else
      i = i + 1
    end
  end
  local parts = {}
  for k = 1, 8 do parts[k] = format("%x", g[k]) end
  if not best then return concat(parts, ":") end
  return concat(parts, ":", 1, best - 1) .. "::" .. concat(parts, ":", best + best_len, 8)
end

--- "ipv4", "ipv6" or nil.
function M.kind(s)
  if M.ipv4(s) then return "ipv4" end
  if M.ipv6(s) then return "ipv6" end
  return nil
end

--- The address with its host part zeroed: IPv4 keeps 24 bits ("203.0.113.7" -> "203.0.113.0"),
-- IPv6 keeps 48 ("2001:db8:85a3:8d3:1319:8a2e:370:7348" -> "2001:db8:85a3::", RFC 5952 text, the
-- zone id dropped); an IPv4-mapped IPv6 address is anonymized as IPv4 ("::ffff:203.0.113.0").
-- nil when s is not an address: callers drop it rather than keep what they could not anonymize.
function M.anonymize(s)
  local a, b, c = M.ipv4(s)
  if a then return format("%d.%d.%d.0", a, b, c) end
  local g = M.ipv6(s)
  if not g then return nil end
  if g[1] == 0 and g[2] == 0 and g[3] == 0 and g[4] == 0 and g[5] == 0 and g[6] == 0xffff then
    return format("::ffff:%d.%d.%d.0", floor(g[7] / 256), g[7] % 256, floor(g[8] / 256))
  end
  return M.ipv6_text({ g[1], g[2], g[3], 0, 0, 0, 0, 0 })
end

return M
