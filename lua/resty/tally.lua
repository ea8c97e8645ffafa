-- resty.tally: the nginx / OpenResty binding of tally, over libtally.so through the LuaJIT FFI.
--
--   local tally = require "resty.tally"
--   local t, err = tally.new{ lib = "/opt/tally/lib/libtally.so", store = path, mode = "server",
--                             endpoint = ..., write_key = ..., anonymous_id_cookie = "tally_aid" }
--   local ok, err = t:track("Signed Up", { plan = "pro" }, { userId = "u1" })
--   local ok, err = t:page(nil, tally.page_from_request())
--
-- Every method returns true on success and nil, err (plus the tally status code) on failure; none
-- of them raises for bad input. Only flush(ms) and close(ms) wait, each for at most ms
-- milliseconds: everything else validates, copies into libtally's in-memory queue and returns,
-- and libtally's own thread stores and delivers. That is what makes it usable from
-- log_by_lua*: the request never waits for the network.
--
-- One handle per nginx worker process: open it in init_worker_by_lua* (never in init_by_lua*: the
-- master forks the workers afterwards and a handle belongs to the process that opened it) and
-- close it with a deadline in exit_worker_by_lua*. examples/nginx/ shows the whole setup.
local ffi = require "ffi"
local C = ffi.C
-- The IP address parser (lua/tally/ip.lua, installed beside resty/ in share/lua/5.1): the
-- tally.privacy rule uses the same one, so both anonymize an address alike.
local ip = require "tally.ip"

local ngx = ngx -- nil when loaded outside nginx (the encoder and helpers still work there)
local type, pairs, ipairs, tostring, tonumber, error, pcall, setmetatable, getmetatable =
    type, pairs, ipairs, tostring, tonumber, error, pcall, setmetatable, getmetatable
local byte, char, find, format, gsub, sub, concat, floor, huge =
    string.byte, string.char, string.find, string.format, string.gsub, string.sub, table.concat,
    math.floor, math.huge

local _M = { _VERSION = "0.1.0" }

-- The declarations of include/tally.h this binding calls. Redefining a C type raises in LuaJIT,
-- and a module can be loaded twice in one VM (lua_code_cache off, package.loaded cleared), so
-- declare only once.
if not pcall(ffi.typeof, "tally_t") then
    ffi.cdef [[
typedef struct tally_config tally_config;
typedef struct tally tally_t;
tally_config *tally_config_new(void);
int tally_config_set(tally_config *cfg, const char *key, const char *value);
int tally_config_load(tally_config *cfg, const char *path);
void tally_config_free(tally_config *cfg);
int tally_open(const tally_config *cfg, tally_t **out);
int tally_close(tally_t *t, int timeout_ms);
int tally_send(tally_t *t, const char *message_json);
int tally_flush(tally_t *t, int timeout_ms);
int tally_stats(tally_t *t, char **json_out);
void tally_free(void *p);
const char *tally_strerror(int rc);
const char *tally_errmsg(const tally_t *t);
const char *tally_version(void);
]]
end

-- libc pieces, each declared on its own and under pcall: another module may already have
-- declared the same function (possibly with its own sigset type), and a missing declaration only
-- disables the feature that needs it.
local function cdef_opt(decl) return (pcall(ffi.cdef, decl)) end
if not pcall(ffi.typeof, "tally_sigset_t") then
    -- glibc's sigset_t: 1024 bits.
    cdef_opt "typedef struct { unsigned long val[1024 / (8 * sizeof (unsigned long))]; } tally_sigset_t;"
end
local have_sigmask = cdef_opt "int sigfillset(tally_sigset_t *set);"
    and cdef_opt "int pthread_sigmask(int how, const tally_sigset_t *set, tally_sigset_t *oldset);"
local have_flock = cdef_opt "int open(const char *pathname, int flags, ...);"
    and cdef_opt "int flock(int fd, int operation);"
    and cdef_opt "int close(int fd);"
    and cdef_opt "int mkdir(const char *pathname, unsigned int mode);"
    and cdef_opt "char *strerror(int errnum);"

local TALLY_ECLOSED = -5

-- ---------------------------------------------------------------- loading the library

-- Every library ever loaded, by path. ffi.load's result unloads the library (dlclose) when it is
-- garbage collected, and libtally's worker threads run code from it: it must live as long as the
-- process, so it is kept here and never dropped.
local libs = {}

local function load_lib(path)
    if libs[path] then return libs[path] end
    local ok, lib = pcall(ffi.load, path)
    if not ok then return nil, lib end
    libs[path] = lib
    return lib
end

-- An explicit path must load; without one, the usual names: "tally" (libtally.so through the
-- linker path, as `make install` leaves it) and then the soname.
local function find_lib(path)
    if path then
        local lib, err = load_lib(path)
        if not lib then return nil, "lib: cannot load " .. path .. ": " .. tostring(err) end
        return lib
    end
    local errs = {}
    for _, name in ipairs { "tally", "libtally.so.0" } do
        local lib, err = load_lib(name)
        if lib then return lib end
        errs[#errs + 1] = tostring(err)
    end
    return nil, "lib: libtally not found (set lib = \"/path/to/libtally.so\"): " .. concat(errs, "; ")
end

-- ---------------------------------------------------------------- JSON

-- Encoding is done here rather than with lua-cjson by default, for three reasons: Debian's
-- libnginx-mod-http-lua does not depend on lua-cjson (it may simply be missing); Debian's
-- lua-cjson 2.1.0 caps number precision at 14 digits, so an integer such as 2^53 or a
-- millisecond id comes out as 9.007199254741e+15; and it cannot encode 64-bit cdata. This
-- encoder writes integral numbers as integers (int64_t/uint64_t cdata too), other numbers in the
-- shortest form that reads back to the same double, escapes what JSON requires, and replaces
-- invalid UTF-8 with U+FFFD (libtally rejects the whole message otherwise, and header values are
-- whatever a client sent). `json = "cjson"` in new() switches a handle to lua-cjson.

-- A table with this metatable encodes as an array even when empty (an empty plain table is {}).
local array_mt = { __name = "resty.tally.array" }
_M.array_mt = array_mt
_M.empty_array = setmetatable({}, array_mt)
function _M.array(t) return setmetatable(t or {}, array_mt) end
-- JSON null: ngx.null (also lua-cjson's null, both are the NULL light userdata), or a sentinel
-- outside nginx.
_M.null = ngx and ngx.null or setmetatable({}, { __name = "resty.tally.null" })

local MAX_DEPTH = 64 -- libtally rejects deeper nesting anyway
-- A message cannot be longer (libtally refuses it), so encoding stops there: a table shared by
-- several parents (t = {a = u, b = u}, 40 levels deep: 2^40 leaves) cannot make it run longer.
local MAX_BYTES = 32768

-- Returns s when it is valid UTF-8 (RFC 3629: no overlongs, surrogates or code points past
-- U+10FFFF), else a copy with each invalid byte replaced by U+FFFD.
local function fix_utf8(s)
    if not find(s, "[\128-\255]") then return s end
    local out, n, i, len, start = nil, 0, 1, #s, 1
    while i <= len do
        local c = byte(s, i)
        local size = 0
        if c < 0x80 then
            size = 1
        elseif c >= 0xC2 and c <= 0xDF then
            local c1 = byte(s, i + 1)
            if c1 and c1 >= 0x80 and c1 <= 0xBF then size = 2 end
        elseif c >= 0xE0 and c <= 0xEF then
            local c1, c2 = byte(s, i + 1, i + 2)
            local lo = c == 0xE0 and 0xA0 or 0x80
            local hi = c == 0xED and 0x9F or 0xBF
            if c1 and c2 and c1 >= lo and c1 <= hi and c2 >= 0x80 and c2 <= 0xBF then size = 3 end
        elseif c >= 0xF0 and c <= 0xF4 then
            local c1, c2, c3 = byte(s, i + 1, i + 3)
            local lo = c == 0xF0 and 0x90 or 0x80
            local hi = c == 0xF4 and 0x8F or 0xBF
            if c1 and c2 and c3 and c1 >= lo and c1 <= hi and c2 >= 0x80 and c2 <= 0xBF
                and c3 >= 0x80 and c3 <= 0xBF then
                size = 4
            end
        end
        if size == 0 then
            out = out or {}
            out[n + 1] = sub(s, start, i - 1)
            out[n + 2] = "\239\191\189" -- U+FFFD
            n = n + 2
            i = i + 1
            start = i
        else
            i = i + size
        end
    end
    if not out then return s end
    out[n + 1] = sub(s, start)
    return concat(out)
end
_M.fix_utf8 = fix_utf8

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                  ["\r"] = "\\r", ["\t"] = "\\t" }
for c = 0, 31 do
    local ch = char(c)
    if not escapes[ch] then escapes[ch] = format("\\u%04x", c) end
end

-- True when s goes into a JSON string as it is: bytes 32-127 without '"' or '\'. A loop over
-- string.byte, which LuaJIT compiles to a few instructions a byte, where find() with a [...] set
-- runs LuaJIT's pattern matcher in C at ~13 ns a byte: that one scan of each request value was
-- the largest cost of log_page (bench/README.md, "nginx").
local function json_plain(s)
    for i = 1, #s do
        local c = byte(s, i)
        if c < 32 or c > 127 or c == 34 or c == 92 then return false end
    end
    return true
end

local function quote(s)
    -- Most strings need nothing done: one scan and a concatenation.
    if json_plain(s) then return '"' .. s .. '"' end
    return '"' .. gsub(fix_utf8(s), '[%z\1-\31"\\]', escapes) .. '"'
end

local function encode_number(v)
    if v ~= v or v == huge or v == -huge then return nil, "cannot encode " .. tostring(v) end
    -- Integral doubles print as integers: exactly up to 2^53, and still as the integer the double
    -- holds beyond (LuaJIT's %d is 64-bit), which is what a reader gets back.
    if v == floor(v) and v > -2 ^ 63 and v < 2 ^ 63 then return format("%d", v) end
    for p = 15, 17 do -- the shortest of these that reads back as the same double
        local s = format("%." .. p .. "g", v)
        if tonumber(s) == v then return s end
    end
    return format("%.17g", v)
end

local int64_t, uint64_t = ffi.typeof("int64_t"), ffi.typeof("uint64_t")

local encode_value, encode_table_body

-- Appends s, counting it against MAX_BYTES.
local function put(st, buf, n, s)
    st.bytes = st.bytes + #s
    if st.bytes > MAX_BYTES then return nil, "too large: over the " .. MAX_BYTES .. "-byte message limit" end
    n = n + 1
    buf[n] = s
    return n
end

local function encode_table(v, buf, n, depth, st)
    if st.open[v] then return nil, "cycle: the table contains itself" end
    local done = st.done[v]
    if done then -- reached before: its pieces again, counted again, not walked again
        st.bytes = st.bytes + done.bytes
        if st.bytes > MAX_BYTES then return nil, "too large: over the " .. MAX_BYTES .. "-byte message limit" end
        for i = done.first, done.last do n = n + 1; buf[n] = buf[i] end
        return n
    end
    local first, bytes0 = n + 1, st.bytes
    st.open[v] = true
    local r, err = encode_table_body(v, buf, n, depth, st)
    st.open[v] = nil
    if r then st.done[v] = { first = first, last = r, bytes = st.bytes - bytes0 } end
    return r, err
end

encode_table_body = function(v, buf, n, depth, st)
    local mt = getmetatable(v)
    local count, maxn = 0, 0
    for k in pairs(v) do
        count = count + 1
        st.bytes = st.bytes + 1 -- each entry takes at least a separator
        if st.bytes > MAX_BYTES then return nil, "too large: over the " .. MAX_BYTES .. "-byte message limit" end
        if type(k) == "number" and k > 0 and k == floor(k) then
            if k > maxn then maxn = k end
        elseif type(k) ~= "string" then
            return nil, "cannot encode a table key of type " .. type(k)
        end
    end
    if mt == array_mt or (count > 0 and maxn == count) then
        if count ~= maxn then return nil, "cannot encode an array with holes or string keys" end
        n = n + 1; buf[n] = "["
        for i = 1, maxn do
            if i > 1 then n = n + 1; buf[n] = "," end
            local err
            n, err = encode_value(v[i], buf, n, depth + 1, st)
            if not n then return nil, err end
        end
        n = n + 1; buf[n] = "]"
        return n
    end
    if maxn > 0 then return nil, "cannot encode a table with both array and string keys" end
    n = n + 1; buf[n] = "{"
    local first = true
    for k, val in pairs(v) do
        if not first then n = n + 1; buf[n] = "," end
        first = false
        st.bytes = st.bytes + #k + 3 -- counted before quote() walks it
        if st.bytes > MAX_BYTES then return nil, "too large: over the " .. MAX_BYTES .. "-byte message limit" end
        n = n + 1; buf[n] = quote(k)
        n = n + 1; buf[n] = ":"
        local err
        n, err = encode_value(val, buf, n, depth + 1, st)
        if not n then return nil, err .. " (in \"" .. k .. "\")" end
    end
    n = n + 1; buf[n] = "}"
    return n
end

encode_value = function(v, buf, n, depth, st)
    if depth > MAX_DEPTH then return nil, "nesting deeper than " .. MAX_DEPTH end
    local tv = type(v)
    local s, err
    if tv == "string" then
        s = quote(v)
    elseif tv == "number" then
        s, err = encode_number(v)
        if not s then return nil, err end
    elseif tv == "boolean" then
        s = v and "true" or "false"
    elseif v == nil or v == _M.null then
        s = "null"
    elseif tv == "table" then
        return encode_table(v, buf, n, depth, st)
    elseif tv == "cdata" and (ffi.istype(int64_t, v) or ffi.istype(uint64_t, v)) then
        s = gsub(tostring(v), "U?LL$", "") -- tostring gives "123LL" / "123ULL"
    else
        return nil, "cannot encode a value of type " .. tv
    end
    return put(st, buf, n, s)
end

-- encode(value) -> json | nil, err
function _M.encode(v)
    local buf = {}
    local n, err = encode_value(v, buf, 0, 0, { bytes = 0, open = {}, done = {} })
    if not n then return nil, err end
    return concat(buf, "", 1, n)
end

-- A small decoder for what libtally returns (tally_stats). Numbers become Lua numbers, null
-- becomes _M.null.
local decode_value

local function skip_ws(s, i)
    return find(s, "[^ \t\r\n]", i) or #s + 1
end

local function utf8_char(cp)
    if cp < 0x80 then return char(cp) end
    if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
    if cp < 0x10000 then
        return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64,
                0x80 + cp % 64)
end

local unescapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function decode_string(s, i) -- s:sub(i, i) == '"'
    local parts, n, j = {}, 0, i + 1
    while true do
        local k = find(s, '["\\]', j)
        if not k then error("unterminated string at " .. i) end
        n = n + 1; parts[n] = sub(s, j, k - 1)
        if sub(s, k, k) == '"' then return concat(parts), k + 1 end
        local e = sub(s, k + 1, k + 1)
        if e == "u" then
            local cp = tonumber(sub(s, k + 2, k + 5), 16)
            if not cp then error("bad \\u escape at " .. k) end
            j = k + 6
            if cp >= 0xD800 and cp <= 0xDBFF and sub(s, j, j + 1) == "\\u" then
                local lo = tonumber(sub(s, j + 2, j + 5), 16)
                if lo and lo >= 0xDC00 and lo <= 0xDFFF then
                    cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
                    j = j + 6
                end
            end
            n = n + 1; parts[n] = utf8_char(cp)
        elseif unescapes[e] then
            n = n + 1; parts[n] = unescapes[e]
            j = k + 2
        else
            error("bad escape at " .. k)
        end
    end
end

decode_value = function(s, i, depth)
    if depth > 512 then error("nesting too deep") end
    i = skip_ws(s, i)
    local c = sub(s, i, i)
    if c == "{" then
        local obj = {}
        i = skip_ws(s, i + 1)
        if sub(s, i, i) == "}" then return obj, i + 1 end
        while true do
            if sub(s, i, i) ~= '"' then error("expected a key at " .. i) end
            local k
            k, i = decode_string(s, i)
            i = skip_ws(s, i)
            if sub(s, i, i) ~= ":" then error("expected ':' at " .. i) end
            obj[k], i = decode_value(s, i + 1, depth + 1)
            i = skip_ws(s, i)
            c = sub(s, i, i)
            if c == "}" then return obj, i + 1 end
            if c ~= "," then error("expected ',' or '}' at " .. i) end
            i = skip_ws(s, i + 1)
        end
    elseif c == "[" then
        local arr, n = setmetatable({}, array_mt), 0
        i = skip_ws(s, i + 1)
        if sub(s, i, i) == "]" then return arr, i + 1 end
        while true do
            n = n + 1
            arr[n], i = decode_value(s, i, depth + 1)
            i = skip_ws(s, i)
            c = sub(s, i, i)
            if c == "]" then return arr, i + 1 end
            if c ~= "," then error("expected ',' or ']' at " .. i) end
            i = i + 1
        end
    elseif c == '"' then
        return decode_string(s, i)
    elseif sub(s, i, i + 3) == "true" then
        return true, i + 4
    elseif sub(s, i, i + 4) == "false" then
        return false, i + 5
    elseif sub(s, i, i + 3) == "null" then
        return _M.null, i + 4
    end
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
    if not num or num == "" or not tonumber(num) then error("unexpected character at " .. i) end
    return tonumber(num), i + #num
end

-- decode(json) -> value | nil, err
function _M.decode(s)
    local ok, v, i = pcall(decode_value, s, 1, 0)
    if not ok then return nil, "invalid JSON: " .. tostring(v) end
    if skip_ws(s, i) <= #s then return nil, "invalid JSON: trailing text at " .. i end
    return v
end

-- lua-cjson for handles opened with json = "cjson": a private instance (cjson.new), so settings
-- made here never change what the application's own `require "cjson"` does.
local function cjson_encoder()
    local ok, cjson = pcall(require, "cjson")
    if not ok then return nil, "json: lua-cjson is not installed: " .. tostring(cjson) end
    local inst = cjson.new and cjson.new() or cjson
    pcall(inst.encode_number_precision, 14) -- the most Debian's 2.1.0 accepts (OpenResty's: 16)
    pcall(inst.encode_number_precision, 16)
    return function(v)
        local ok2, s = pcall(inst.encode, v)
        if not ok2 then return nil, tostring(s) end
        return s
    end
end

-- ---------------------------------------------------------------- request helpers (nginx only)

-- The date part is kept for the last second formatted: os.date is not compiled by LuaJIT, and a
-- busy worker logs many requests per second.
local iso_sec, iso_prefix = nil, nil
local function iso8601(sec)
    local whole = floor(sec)
    local ms = floor((sec - whole) * 1000 + 0.5)
    if ms >= 1000 then whole, ms = whole + 1, ms - 1000 end
    if whole ~= iso_sec then iso_sec, iso_prefix = whole, os.date("!%Y-%m-%dT%H:%M:%S.", whole) end
    return iso_prefix .. format("%03dZ", ms)
end
_M.iso8601 = iso8601

-- Cuts s to at most max bytes without splitting a UTF-8 sequence.
local function clip(s, max)
    if #s <= max then return s end
    local cut = max
    while cut > 0 do
        local b = byte(s, cut + 1)
        if not b or b < 0x80 or b >= 0xC0 then break end -- s[cut + 1] starts a character
        cut = cut - 1
    end
    return sub(s, 1, cut)
end

local function get_var(name) return ngx.var[name] end

-- req_var for code that knows it runs in a request: no pcall (see request_anonymous_id)
local function in_req_var(name)
    local v = ngx.var[name]
    if v ~= nil and v ~= "" then return v end
    return nil
end

local function req_var(name)
    if not ngx then return nil end
    local ok, v = pcall(get_var, name) -- raises outside a request; no closure per call
    if ok and v ~= nil and v ~= "" then return v end
    return nil
end

local function first_arg(args, name)
    local v = args[name]
    if type(v) == "table" then v = v[1] end -- ?utm_source=a&utm_source=b
    if type(v) == "string" and v ~= "" then return v end
    return nil
end

local campaign_args = { utm_campaign = "name", utm_source = "source", utm_medium = "medium",
                        utm_term = "term", utm_content = "content" }

-- page_from_request([opts]) -> properties, context
-- The Segment `page` properties and context of the current request, read from ngx.var:
--   properties: path ($uri: decoded and normalised, and after internal redirects the new URI),
--               search ("?" .. $args, or ""), url (scheme://host + $request_uri), referrer
--               ($http_referer, when sent), title (opts.title, when given)
--   context:    ip ($remote_addr: use the realip module behind a proxy), userAgent, and
--               campaign {name, source, medium, term, content} from the utm_* query arguments
-- Values come from the client, so each is made valid UTF-8 and cut to opts.max_len bytes
-- (default 2048): a hostile header must not make the message invalid or larger than 32 KB.
function _M.page_from_request(opts)
    opts = opts or {}
    local max = opts.max_len or 2048
    local function val(s) return s and clip(fix_utf8(s), max) or nil end
    local args = req_var("args")
    local host = req_var("http_host") or req_var("host") or ""
    local props = {
        path = val(req_var("uri") or "/"),
        search = args and val("?" .. args) or "",
        url = val((req_var("scheme") or "http") .. "://" .. host .. (req_var("request_uri") or "/")),
        referrer = val(req_var("http_referer")),
        title = opts.title,
    }
    local ctx = { ip = req_var("remote_addr"), userAgent = val(req_var("http_user_agent")) }
    if args and find(args, "utm_", 1, true) then
        local ok, uri_args = pcall(ngx.req.get_uri_args)
        if ok and type(uri_args) == "table" then
            local campaign
            for arg, field in pairs(campaign_args) do
                local v = first_arg(uri_args, arg)
                if v then
                    campaign = campaign or {}
                    campaign[field] = val(v)
                end
            end
            ctx.campaign = campaign
        end
    end
    return props, ctx
end

-- A fresh anonymous id in UUID v4 form. In a request it is made from $request_id (16 random
-- bytes that nginx draws for every request); elsewhere from /dev/urandom.
function _M.new_anonymous_id()
    local hex = req_var("request_id")
    if not hex or #hex ~= 32 then
        local f = io.open("/dev/urandom", "rb")
        local raw = f and f:read(16)
        if f then f:close() end
        if not raw or #raw ~= 16 then return nil, "no randomness available" end
        hex = gsub(raw, ".", function(c) return format("%02x", byte(c)) end)
    end
    -- version 4 in the 13th digit, variant 10xx in the 17th
    local variant = format("%x", 8 + tonumber(sub(hex, 17, 17), 16) % 4)
    return sub(hex, 1, 8) .. "-" .. sub(hex, 9, 12) .. "-4" .. sub(hex, 14, 16) .. "-" .. variant ..
        sub(hex, 18, 20) .. "-" .. sub(hex, 21, 32)
end

-- An id taken from a client (cookie or header) is used only when it looks like one: bounded
-- and printable, so a forged cookie cannot smuggle anything odd into every message.
local ID_BYTE = {} -- [%w%-%._:], as a table: a byte loop is compiled, a find() set is not (json_plain)
for c = 0, 255 do
    ID_BYTE[c] = (c >= 48 and c <= 58) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 45 or c == 46
        or c == 95
end
local function sane_id(v)
    if not v or #v == 0 or #v > 128 then return nil end
    for i = 1, #v do
        if not ID_BYTE[byte(v, i)] then return nil end
    end
    return v
end

-- For header_filter_by_lua*: makes sure the client holds an anonymous-id cookie. When the request
-- brought none, a new id is set with Set-Cookie (kept next to any the application sets) and
-- remembered in ngx.ctx for this request's log phase, since the cookie only comes back with the
-- next request. Returns the id. opts: max_age (seconds, default one year), path ("/"), domain,
-- secure (boolean), http_only (default true), same_site ("Lax").
function _M.ensure_anonymous_id_cookie(name, opts)
    opts = opts or {}
    local id = sane_id(req_var("cookie_" .. name))
    if id then return id end
    id = ngx.ctx.tally_anonymous_id
    if id then return id end
    local err
    id, err = _M.new_anonymous_id()
    if not id then return nil, err end
    ngx.ctx.tally_anonymous_id = id
    local parts = { name .. "=" .. id, "Path=" .. (opts.path or "/"),
                    "Max-Age=" .. (opts.max_age or 31536000), "SameSite=" .. (opts.same_site or "Lax") }
    if opts.domain then parts[#parts + 1] = "Domain=" .. opts.domain end
    if opts.secure then parts[#parts + 1] = "Secure" end
    if opts.http_only ~= false then parts[#parts + 1] = "HttpOnly" end
    local cookie = concat(parts, "; ")
    local existing = ngx.header["Set-Cookie"]
    if existing == nil then
        ngx.header["Set-Cookie"] = cookie
    elseif type(existing) == "table" then
        existing[#existing + 1] = cookie
        ngx.header["Set-Cookie"] = existing
    else
        ngx.header["Set-Cookie"] = { existing, cookie }
    end
    return id
end

-- ---------------------------------------------------------------- privacy: ip, consent

-- anonymize_ip(s) -> address | nil
-- s with its host part zeroed: IPv4 keeps 24 bits ("203.0.113.7" -> "203.0.113.0"), IPv6 keeps 48
-- ("2001:db8:85a3:8d3:1319:8a2e:370:7348" -> "2001:db8:85a3::", RFC 5952 text, a zone id
-- dropped), an IPv4-mapped IPv6 address is treated as IPv4 ("::ffff:203.0.113.0"). nil when s is
-- not an address (an IPv4 octet with a leading zero is not one): the caller then drops it rather
-- than send something it could not anonymize. The same result as the tally.privacy rule's
-- ip = "anonymize".
_M.anonymize_ip = ip.anonymize

local MAX_CONSENT_BYTES, MAX_CONSENT_CATEGORIES = 1024, 32

-- parse_consent(text) -> { category = boolean, ... } | nil, err
-- The consent a request carries (consent_cookie / consent_header): either a list of
-- category=value pairs separated by "," "&" or ";" ("analytics=1,advertising=0"; values 1, 0,
-- true, false, yes, no), or a JSON object of booleans ({"analytics":true}). Percent-encoding (as
-- cookies often carry it) is decoded first. Category ids are 1-64 bytes of letters, digits and
-- "_-.:"; at most 32 categories in at most 1024 bytes.
local consent_values = { ["1"] = true, ["true"] = true, yes = true, ["0"] = false, ["false"] = false, no = false }

function _M.parse_consent(text)
    if type(text) ~= "string" or text == "" then return nil, "empty" end
    if #text > MAX_CONSENT_BYTES then return nil, "longer than " .. MAX_CONSENT_BYTES .. " bytes" end
    if text:find("%", 1, true) then
        text = ngx and ngx.unescape_uri(text) or text:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end)
    end
    local prefs, n = {}, 0
    local function add(k, v)
        if type(k) ~= "string" or #k == 0 or #k > 64 or k:find("[^%w_%-%.:]") then
            return nil, "category id \"" .. clip(fix_utf8(tostring(k)), 64) .. "\" is not 1-64 of letters, digits, _-.:"
        end
        if type(v) ~= "boolean" then return nil, "category \"" .. k .. "\" is not a boolean" end
        if prefs[k] == nil then n = n + 1 end
        if n > MAX_CONSENT_CATEGORIES then return nil, "more than " .. MAX_CONSENT_CATEGORIES .. " categories" end
        prefs[k] = v
        return true
    end
    if text:find("^%s*{") then
        local obj, err = _M.decode(text)
        if type(obj) ~= "table" or getmetatable(obj) == array_mt then return nil, err or "not a JSON object" end
        for k, v in pairs(obj) do
            local ok, aerr = add(k, v)
            if not ok then return nil, aerr end
        end
    else
        for pair in (text .. ","):gmatch("([^,&;]*)[,&;]") do
            pair = pair:match("^%s*(.-)%s*$")
            if pair ~= "" then
                local k, v = pair:match("^([^=]*)=(.*)$")
                if not k then return nil, "\"" .. clip(fix_utf8(pair), 64) .. "\" is not category=value" end
                local b = consent_values[v:lower()]
                if b == nil then return nil, "category \"" .. clip(fix_utf8(k), 64) .. "\": value \"" .. clip(fix_utf8(v), 16) .. "\" is not 1/0/true/false/yes/no" end
                local ok, aerr = add(k, b)
                if not ok then return nil, aerr end
            end
        end
    end
    if n == 0 then return nil, "no categories" end
    return prefs
end

-- ---------------------------------------------------------------- per-worker store slots

-- claim_store(dir [, opts]) -> store path | nil, err
-- A store file must have one process writing it: libtally numbers rows from the largest id it
-- found at open, so two processes inserting into one file collide ("UNIQUE constraint failed:
-- queue.id") and lose those messages. An nginx reload does exactly that with "worker-<id>.db":
-- the old worker with the same id is still finishing its requests (and logging their events)
-- while the new one starts. So a worker takes the first free *slot* instead: dir/slot-<k>.db,
-- owned while the process holds an flock on dir/slot-<k>.lock. The kernel drops the lock when
-- the process ends, even by a crash. Slots are tried from 0, so a restarted nginx with the same
-- worker count reuses the same files, and delivers what they still hold; slots beyond that are
-- drained by adopt_orphans(). opts.max_slots (default 64) bounds the search. Linux only (the
-- open() flags below are Linux's).
local held_locks = {} -- lock fd per slot base path; closing it would release the lock
local O_RDWR, O_CREAT, O_CLOEXEC = 2, 0x40, 0x80000
local LOCK_EX, LOCK_NB = 2, 4
local EEXIST = 17

local function sys_error(what, path)
    return what .. " " .. path .. ": " .. ffi.string(C.strerror(ffi.errno()))
end

-- Locks slot `base` for this process: fd, or nil when another process holds it, or nil, err.
local function try_lock(base)
    -- A separate lock file, not the .db itself: SQLite holds POSIX locks on the database, and
    -- closing any descriptor of a file drops all of a process's POSIX locks on it.
    local fd = C.open(base .. ".lock", O_RDWR + O_CREAT + O_CLOEXEC, ffi.new("int", tonumber("600", 8)))
    if fd < 0 then return nil, sys_error("cannot open", base .. ".lock") end
    if C.flock(fd, LOCK_EX + LOCK_NB) == 0 then
        held_locks[base] = fd
        return fd
    end
    C.close(fd)
    return nil
end

local function release(base)
    local fd = held_locks[base]
    if fd then
        held_locks[base] = nil
        C.close(fd)
    end
end

local function slots_ok(dir)
    if not have_flock or ffi.os ~= "Linux" then return nil, "needs Linux and flock()" end
    if C.mkdir(dir, tonumber("700", 8)) ~= 0 and ffi.errno() ~= EEXIST then
        return nil, sys_error("cannot create", dir)
    end
    return true
end

function _M.claim_store(dir, opts)
    local ok, err = slots_ok(dir)
    if not ok then return nil, "claim_store: " .. err end
    local max = opts and opts.max_slots or 64
    for k = 0, max - 1 do
        local base = dir .. "/slot-" .. k
        if not held_locks[base] then -- not ours already (claim_store called twice)
            local fd, lerr = try_lock(base)
            if fd then return base .. ".db" end
            if lerr then return nil, "claim_store: " .. lerr end
        end
    end
    return nil, "claim_store: all " .. max .. " slots in " .. dir .. " are in use"
end

local function file_exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

-- A drained slot's store is deleted (while its lock is still held, so nobody has it open), so
-- that "slot-<k>.db exists" means "may hold undelivered messages" and is not adopted again and
-- again. Its dead-letter rows go with it.
local function drop_store(base)
    for _, suffix in ipairs { ".db", ".db-wal", ".db-shm", ".db-journal" } do os.remove(base .. suffix) end
end

-- ---------------------------------------------------------------- the handle

local T = {}
T.__index = T

-- Keys of new() that belong to this binding; every other key goes to tally_config_set.
local binding_keys = { lib = true, json = true, config_file = true, anonymous_id_cookie = true,
                       anonymous_id_header = true, anonymous_id_fallback = true, anonymize_ip = true,
                       consent_cookie = true, consent_header = true }

local function config_value(k, v)
    local tv = type(v)
    if tv == "string" then return v end
    if tv == "boolean" then return v and "true" or "false" end
    if tv == "number" then return encode_number(v) end
    if tv == "table" then return _M.encode(v) end -- destinations, rule_config
    return nil, k .. ": cannot use a value of type " .. tv
end

-- libtally's threads inherit the signal mask of the thread that starts them. nginx workers run with
-- every signal unblocked and count on process-directed signals (SIGALRM for timer_resolution,
-- SIGQUIT/SIGHUP/SIGUSR1 sent to a worker's pid) interrupting epoll_wait in the main thread; one
-- that the kernel hands to a libtally thread instead only sets nginx's flag, and the worker
-- notices it at its next event. So every signal is blocked while tally_open starts its threads,
-- and the mask restored right after.
local function open_with_signals_blocked(lib, cfg, out)
    local SIG_SETMASK = 2
    local old = have_sigmask and ffi.new("tally_sigset_t")
    -- pcall: another module may have declared these with its own sigset type, which our cdata
    -- would not convert to; then the thread is simply started with nginx's mask.
    local blocked = old and pcall(function()
        local all = ffi.new("tally_sigset_t")
        return C.sigfillset(all) == 0 and C.pthread_sigmask(SIG_SETMASK, all, old) == 0
            or error("sigmask")
    end)
    local rc = lib.tally_open(cfg, out)
    if blocked then C.pthread_sigmask(SIG_SETMASK, old, nil) end
    return rc
end

-- new(config) -> handle | nil, err
-- config: any tally configuration key (store, endpoint, write_key, mode, flush_at,
-- flush_interval_ms, destinations, log_level, ...: numbers and booleans as Lua values,
-- destinations / rule_config as tables or JSON text), plus these of the binding:
--   lib                   path of libtally.so (default: "tally", then "libtally.so.0")
--   config_file           a tally Lua config file, loaded before the other keys
--   json                  "builtin" (default) or "cjson" (lua-cjson, 14-16 digit numbers)
--   anonymous_id_cookie   cookie holding the anonymous id (e.g. "tally_aid")
--   anonymous_id_header   request header holding it (e.g. "X-Anonymous-Id")
--   anonymous_id_fallback "ip_ua": else derive one from a hash of client address and user agent
--   anonymize_ip          true: context.ip of every message leaves the binding with its host part
--                         zeroed (see anonymize_ip), or without an ip when it is not an address
--   consent_cookie        cookie holding the request's consent (see parse_consent), e.g. "consent"
--   consent_header        request header holding it, e.g. "X-Consent" (wins over the cookie)
--                         Their preferences become context.consent.categoryPreferences of messages
--                         sent during the request that bring no context.consent of their own. A
--                         request without one, or with one that does not parse (logged once per
--                         worker), sends no consent: libtally's consent_default then decides.
-- mode defaults to "server" here (not the library's "client"): a worker serves many users, so
-- each message names its own, and a message without userId or anonymousId is refused.
function _M.new(cfg)
    cfg = cfg or {}
    if type(cfg) ~= "table" then return nil, "new: expected a configuration table" end
    local lib, err = find_lib(cfg.lib)
    if not lib then return nil, err end
    local encode = _M.encode
    if cfg.json == "cjson" then
        encode, err = cjson_encoder()
        if not encode then return nil, err end
    elseif cfg.json ~= nil and cfg.json ~= "builtin" then
        return nil, "json: expected \"builtin\" or \"cjson\", got \"" .. tostring(cfg.json) .. "\""
    end
    if cfg.anonymous_id_fallback ~= nil and cfg.anonymous_id_fallback ~= "ip_ua" then
        return nil, "anonymous_id_fallback: expected \"ip_ua\""
    end
    if cfg.anonymize_ip ~= nil and type(cfg.anonymize_ip) ~= "boolean" then
        return nil, "anonymize_ip: expected true or false, got a " .. type(cfg.anonymize_ip)
    end
    for _, k in ipairs { "consent_cookie", "consent_header" } do
        local v = cfg[k]
        if v ~= nil and (type(v) ~= "string" or not find(v, "^[%w_%-]+$")) then
            return nil, k .. ": expected a cookie or header name (letters, digits, _ and -)"
        end
    end

    local c = lib.tally_config_new()
    if c == nil then return nil, "out of memory" end
    c = ffi.gc(c, lib.tally_config_free)
    local function fail(rc)
        local msg = ffi.string(lib.tally_errmsg(nil))
        return nil, msg ~= "" and msg or ffi.string(lib.tally_strerror(rc)), rc
    end
    if cfg.config_file then
        local rc = lib.tally_config_load(c, cfg.config_file)
        if rc ~= 0 then return fail(rc) end
    end
    -- Sorted, so that of two bad keys the same one is reported every time.
    local keys = {}
    for k in pairs(cfg) do
        if type(k) ~= "string" then return nil, "new: configuration keys must be strings" end
        if not binding_keys[k] then keys[#keys + 1] = k end
    end
    table.sort(keys)
    if cfg.mode == nil and not cfg.config_file then
        local rc = lib.tally_config_set(c, "mode", "server")
        if rc ~= 0 then return fail(rc) end
    end
    for _, k in ipairs(keys) do
        local v, verr = config_value(k, cfg[k])
        if not v then return nil, verr end
        local rc = lib.tally_config_set(c, k, v)
        if rc ~= 0 then return fail(rc) end
    end

    local out = ffi.new("tally_t *[1]")
    local rc = open_with_signals_blocked(lib, c, out)
    if rc ~= 0 then return fail(rc) end
    -- A handle dropped without close() is closed by the garbage collector, without waiting:
    -- messages not yet delivered stay in a file store for the next open.
    local h = ffi.gc(out[0], function(p) lib.tally_close(p, 0) end)
    return setmetatable({
        lib = lib, h = h, encode = encode, cfg = cfg,
        aid_cookie = cfg.anonymous_id_cookie and "cookie_" .. cfg.anonymous_id_cookie,
        aid_header = cfg.anonymous_id_header and "http_" .. gsub(cfg.anonymous_id_header:lower(), "-", "_"),
        aid_ip_ua = cfg.anonymous_id_fallback == "ip_ua",
        anon_ip = cfg.anonymize_ip == true,
        consent_hvar = cfg.consent_header and "http_" .. gsub(cfg.consent_header:lower(), "-", "_"),
        consent_cvar = cfg.consent_cookie and "cookie_" .. cfg.consent_cookie,
    }, T)
end

-- The slot for the worker's handle (set in init_worker_by_lua*, read in the other phases).
_M.instance = nil

local function failure(self, rc)
    local msg = ffi.string(self.lib.tally_errmsg(self.h))
    return nil, msg ~= "" and msg or ffi.string(self.lib.tally_strerror(rc)), rc
end

local function get_ctx() return ngx.ctx end

-- The anonymous id for a message that brings neither id: the configured cookie, this request's
-- new cookie (set by ensure_anonymous_id_cookie when the request brought none), the configured
-- header, or the ip + user agent hash. nil outside a request or when nothing is configured.
-- (get: how to read a variable; log_page, which knows it is in a request, reads them without
-- pcall, which would stop LuaJIT from compiling the caller.)
function T:request_anonymous_id(get)
    if not ngx then return nil end
    get = get or req_var
    local id
    if self.aid_cookie then -- first: the usual case, and it spares creating ngx.ctx
        id = sane_id(get(self.aid_cookie))
        if id then return id end
    end
    local ok, ctx
    if get == req_var then ok, ctx = pcall(get_ctx) else ok, ctx = true, ngx.ctx end
    id = ok and ctx and ctx.tally_anonymous_id
    if id then return id end
    if self.aid_header then
        id = sane_id(get(self.aid_header))
        if id then return id end
    end
    if self.aid_ip_ua then
        local ip = get("remote_addr")
        if ip then
            local h = ngx.md5(ip .. "\0" .. (get("http_user_agent") or ""))
            return sub(h, 1, 8) .. "-" .. sub(h, 9, 12) .. "-" .. sub(h, 13, 16) .. "-" ..
                sub(h, 17, 20) .. "-" .. sub(h, 21, 32)
        end
    end
    return nil
end

-- The current request's consent (consent_header, else consent_cookie): its preferences and their
-- JSON, or nil when it brings none or one that does not parse. The last value seen is kept with
-- its result: most requests of a site carry one of a few values.
function T:request_consent(get)
    get = get or req_var
    local raw, which
    if self.consent_hvar then raw, which = get(self.consent_hvar), "consent_header" end
    if not raw and self.consent_cvar then raw, which = get(self.consent_cvar), "consent_cookie" end
    if not raw then return nil end
    if raw == self.consent_raw then return self.consent_prefs, self.consent_json end
    local prefs, err = _M.parse_consent(raw)
    local json
    if prefs then
        json = _M.encode(prefs)
    elseif not self.consent_warned then
        self.consent_warned = true -- a client can send anything: once per worker is enough
        if ngx then
            ngx.log(ngx.WARN, "tally: ", which, " \"", self.cfg[which], "\": ", err,
                    "; such requests send no consent and follow consent_default (logged once)")
        end
    end
    self.consent_raw, self.consent_prefs, self.consent_json = raw, prefs, json
    return prefs, json
end

-- send(message) -> true | nil, err, rc
-- A whole Segment message (type required). Fields given are kept; messageId and timestamp are
-- stamped when missing; a number timestamp is taken as seconds since the epoch (ngx.now(),
-- ngx.req.start_time()). Without userId and anonymousId, the request's anonymous id is added (see
-- request_anonymous_id). With anonymize_ip, context.ip is anonymized; with consent_cookie /
-- consent_header, a message without context.consent gets the request's. The caller's tables are
-- not modified.
function T:send(msg)
    if self.h == nil then return nil, "closed", TALLY_ECLOSED end
    if type(msg) ~= "table" then return nil, "send: expected a message table" end
    local m = msg
    local need_id = msg.userId == nil and msg.anonymousId == nil
    local ctx = msg.context
    local fix_ip = self.anon_ip and type(ctx) == "table" and ctx.ip ~= nil
    local consent
    if (self.consent_hvar or self.consent_cvar) and (ctx == nil or type(ctx) == "table" and ctx.consent == nil) then
        consent = self:request_consent()
    end
    if need_id or type(msg.timestamp) == "number" or fix_ip or consent then
        m = {}
        for k, v in pairs(msg) do m[k] = v end
        if need_id then m.anonymousId = self:request_anonymous_id() end
        if type(m.timestamp) == "number" then m.timestamp = iso8601(m.timestamp) end
        if fix_ip or consent then
            local c = {}
            if ctx then for k, v in pairs(ctx) do c[k] = v end end
            if fix_ip then c.ip = _M.anonymize_ip(c.ip) end -- nil (dropped) when not an address
            if consent then c.consent = { categoryPreferences = consent } end
            m.context = c
        end
    end
    local json, err = self.encode(m)
    if not json then return nil, "message: " .. err end
    local rc = self.lib.tally_send(self.h, json)
    if rc ~= 0 then return failure(self, rc) end
    return true
end

-- The fields a method's opts may carry into the message.
local opt_fields = { userId = true, anonymousId = true, context = true, integrations = true,
                     timestamp = true, messageId = true }

local function build(self, msg, opts, extra)
    if opts ~= nil then
        if type(opts) ~= "table" then return nil, "opts: expected a table" end
        for k, v in pairs(opts) do
            if opt_fields[k] or (extra and extra[k]) then
                msg[k] = v
            else
                return nil, "opts: unknown field \"" .. tostring(k) .. "\""
            end
        end
    end
    return self:send(msg)
end

-- track(event, properties, opts); opts: userId, anonymousId, context, integrations, timestamp,
-- messageId.
function T:track(event, props, opts)
    return build(self, { type = "track", event = event, properties = props }, opts)
end

-- identify(userId, traits, opts): userId nil attaches traits to the anonymous id.
function T:identify(user_id, traits, opts)
    return build(self, { type = "identify", userId = user_id, traits = traits }, opts)
end

local page_extra = { category = true }
-- page(name, properties, opts): name may be nil; opts.category as well as the common fields.
function T:page(name, props, opts)
    return build(self, { type = "page", name = name, properties = props }, opts, page_extra)
end

-- A request value as a JSON string of at most max bytes: most need no escaping, no UTF-8 repair
-- and no cut, and pay one scan.
local function qval(s, max)
    if json_plain(s) then
        if #s > max then s = sub(s, 1, max) end
        return '"' .. s .. '"'
    end
    return quote(clip(fix_utf8(s), max))
end

-- ,"campaign":{...} from the utm_* arguments of args (the first of each, when not empty), or "".
local function campaign_json(args, max)
    local out, pos = "", 1
    while true do
        local at = find(args, "utm_", pos, true)
        if not at then break end
        local stop = find(args, "&", at, true) or #args + 1
        pos = stop
        if at == 1 or byte(args, at - 1) == 38 then -- "&": a key, not the inside of a value
            local eq = find(args, "=", at, true)
            local field = eq and eq < stop and campaign_args[sub(args, at, eq - 1)]
            if field and not find(out, '"' .. field .. '":', 1, true) then
                local v = sub(args, eq + 1, stop - 1)
                if v ~= "" then
                    out = out .. (out == "" and '"' or ',"') .. field .. '":' .. qval(ngx.unescape_uri(v), max)
                end
            end
        end
    end
    return out ~= "" and '"campaign":{' .. out .. "}" or nil
end

local page_opt_fields = { title = true, name = true, category = true, userId = true, anonymousId = true,
                          max_len = true }

local function log_page_json(self, opts)
    local var = ngx.var
    local max = 2048
    local title, name, category, user_id, aid = nil, nil, nil, nil, nil
    if opts ~= nil then
        if type(opts) ~= "table" then return nil, "opts: expected a table" end
        for k in pairs(opts) do
            if not page_opt_fields[k] then return nil, "opts: unknown field \"" .. tostring(k) .. "\"" end
        end
        title, name, category, user_id, aid = opts.title, opts.name, opts.category, opts.userId, opts.anonymousId
        max = opts.max_len or max
        for k, v in pairs { title = title, name = name, category = category, userId = user_id, anonymousId = aid } do
            if type(v) ~= "string" then return nil, "opts." .. k .. ": expected a string" end
        end
        if type(max) ~= "number" or max < 1 then return nil, "opts.max_len: expected a positive number" end
    end
    if user_id == nil and aid == nil then aid = self:request_anonymous_id(in_req_var) end
    local args = var.args
    local host = var.http_host or var.host or ""
    local referrer = var.http_referer
    local ip, ua = var.remote_addr, var.http_user_agent
    if ip and self.anon_ip then ip = _M.anonymize_ip(ip) end
    local consent_json
    if self.consent_hvar or self.consent_cvar then
        local _
        _, consent_json = self:request_consent(in_req_var)
    end
    local search = '""'
    if args and args ~= "" then search = qval("?" .. args, max) end
    local context = ip and '"ip":' .. quote(ip) or ""
    if ua and ua ~= "" then context = context .. (context ~= "" and "," or "") .. '"userAgent":' .. qval(ua, max) end
    local campaign = args and find(args, "utm_", 1, true) and campaign_json(args, max)
    if campaign then context = context .. (context ~= "" and "," or "") .. campaign end
    if consent_json then
        context = context .. (context ~= "" and "," or "") .. '"consent":{"categoryPreferences":' .. consent_json .. "}"
    end
    return '{"type":"page"' ..
        (user_id and ',"userId":' .. quote(user_id) or "") ..
        (aid and ',"anonymousId":' .. quote(aid) or "") ..
        (name and ',"name":' .. quote(name) or "") ..
        (category and ',"category":' .. quote(category) or "") ..
        ',"timestamp":"' .. iso8601(ngx.req.start_time()) ..
        '","properties":{"path":' .. qval(var.uri or "/", max) ..
        ',"search":' .. search ..
        ',"url":' .. qval((var.scheme or "http") .. "://" .. host .. (var.request_uri or "/"), max) ..
        (referrer and referrer ~= "" and ',"referrer":' .. qval(referrer, max) or "") ..
        (title and ',"title":' .. quote(title) or "") ..
        '},"context":{' .. context .. "}}"
end

-- log_page([opts]) -> true | nil, err, rc   (in a request: log_by_lua* and the other phases)
-- The request's page event, the one page_from_request() + page() send (path, search, url,
-- referrer, title; context ip, userAgent, campaign; the request's anonymous id; its start time),
-- written straight from ngx.var into JSON: no tables, no encoder, the date formatted once a
-- second. It is the cheap way to track every request (bench/README.md, "nginx"). opts: title,
-- name, category, userId, anonymousId (strings), max_len (bytes per request value, default 2048).
-- anonymize_ip and consent_cookie / consent_header apply as in send().
local no_request = { init = true, init_worker = true, exit_worker = true, timer = true }

function T:log_page(opts)
    if self.h == nil then return nil, "closed", TALLY_ECLOSED end
    if not ngx then return nil, "log_page: needs nginx" end
    -- not pcall(log_page_json): LuaJIT compiles no trace through a pcall, and this runs per request
    local phase = ngx.get_phase()
    if no_request[phase] then return nil, "log_page: needs a request (called in " .. phase .. ")" end
    local json, err = log_page_json(self, opts)
    if not json then return nil, err end
    local rc = self.lib.tally_send(self.h, json)
    if rc ~= 0 then return failure(self, rc) end
    return true
end

-- screen(name, properties, opts)
function T:screen(name, props, opts)
    return build(self, { type = "screen", name = name, properties = props }, opts)
end

-- group(groupId, traits, opts)
function T:group(group_id, traits, opts)
    return build(self, { type = "group", groupId = group_id, traits = traits }, opts)
end

-- alias(userId, previousId, opts): previousId nil means the anonymous id (opts.anonymousId or the
-- request's), the usual "this visitor has just signed up as userId".
function T:alias(user_id, previous_id, opts)
    previous_id = previous_id or (opts and opts.anonymousId) or self:request_anonymous_id()
    return build(self, { type = "alias", userId = user_id, previousId = previous_id }, opts)
end

local function deadline(ms, what)
    ms = ms or 0
    if type(ms) ~= "number" or ms ~= ms or ms < 0 then
        -- A negative timeout means "no limit" to libtally: in an nginx worker that would stall
        -- every connection of the worker for as long as the collector is away.
        return nil, what .. ": expected a timeout of 0 or more milliseconds"
    end
    return ms > 2147483647 and 2147483647 or floor(ms)
end

-- flush(ms) -> true | nil, err, rc: waits at most ms (default 0) until everything accepted so
-- far is delivered. Blocks the whole worker while it waits: meant for exit_worker_by_lua* and
-- tests, not for request handlers.
function T:flush(ms)
    if self.h == nil then return nil, "closed", TALLY_ECLOSED end
    local d, err = deadline(ms, "flush")
    if not d then return nil, err end
    local rc = self.lib.tally_flush(self.h, d)
    if rc ~= 0 then return failure(self, rc) end
    return true
end

-- stats() -> table | nil, err: libtally's counters (accepted, rejected, dropped, queued,
-- destinations[i].delivered, ...).
function T:stats()
    if self.h == nil then return nil, "closed", TALLY_ECLOSED end
    local out = ffi.new("char *[1]")
    local rc = self.lib.tally_stats(self.h, out)
    if rc ~= 0 then return failure(self, rc) end
    local s = ffi.string(out[0])
    self.lib.tally_free(out[0])
    return _M.decode(s)
end

local function now_ms()
    if ngx then
        ngx.update_time()
        return ngx.now() * 1000
    end
    return os.time() * 1000
end

-- close(ms) -> true | nil, err, rc: delivers for at most ms (default 0), stops libtally's thread
-- and frees the handle, whatever the result. What is not delivered in time stays in the store
-- file for the next open. Stores adopted by adopt_orphans() are closed too, within the same
-- deadline (they have been delivering all along, so they are usually done). Later calls return
-- nil, "closed".
function T:close(ms)
    if self.h == nil then return nil, "closed", TALLY_ECLOSED end
    local d, err = deadline(ms, "close")
    if not d then return nil, err end
    local started = now_ms()
    local h = self.h
    self.h = nil
    ffi.gc(h, nil) -- closed here, not again by the collector
    local rc = self.lib.tally_close(h, d)
    local msg = rc ~= 0 and ffi.string(self.lib.tally_errmsg(nil)) or nil
    for base, o in pairs(self.orphans or {}) do
        local left = d - (now_ms() - started)
        if o:close(left > 0 and left or 0) then drop_store(base) end
        release(base)
    end
    self.orphans = nil
    if rc ~= 0 then return nil, msg ~= "" and msg or ffi.string(self.lib.tally_strerror(rc)), rc end
    return true
end

-- One round of adopt_orphans: lets go of adopted stores that are fully delivered, then takes
-- every free slot that still has a store file.
local function adopt_round(self, dir, max)
    for base, o in pairs(self.orphans) do
        -- flush waits for the rows already in the store. 2 ms is enough for a drained store to
        -- say so; one that is still delivering is simply asked again next round. The wait
        -- happens on this worker's event loop, which is why it is short.
        if o:flush(2) then
            o:close(0)
            drop_store(base)
            release(base)
            self.orphans[base] = nil
        end
    end
    for k = 0, max - 1 do
        local base = dir .. "/slot-" .. k
        if not held_locks[base] and file_exists(base .. ".db") then
            local fd, err = try_lock(base)
            if fd then
                local cfg = {}
                for key, v in pairs(self.cfg) do cfg[key] = v end
                cfg.store = base .. ".db"
                local o
                o, err = _M.new(cfg)
                if o then
                    self.orphans[base] = o
                else
                    release(base)
                end
            end
            if err and ngx then ngx.log(ngx.WARN, "tally: adopting ", base, ".db: ", err) end
        end
    end
end

-- adopt_orphans(dir [, opts]) -> true | nil, err   (nginx only: uses ngx.timer)
-- Delivers what other processes left behind in dir's slots (see claim_store): a worker that
-- exited before delivering everything (collector down at a reload or a quit) leaves its slot
-- with messages, and when nginx then runs with fewer live slots than there are files, nothing
-- else would open those. Now, and every opts.interval seconds (default 5), this worker takes
-- each free slot that has a store, opens a second handle on it with this handle's
-- configuration (which delivers in the background like any other), and once that store is
-- empty closes it and deletes the file. Call it in init_worker_by_lua* after new().
function T:adopt_orphans(dir, opts)
    if self.h == nil then return nil, "closed", TALLY_ECLOSED end
    if not ngx or not ngx.timer then return nil, "adopt_orphans: needs nginx timers" end
    local ok, err = slots_ok(dir)
    if not ok then return nil, "adopt_orphans: " .. err end
    opts = opts or {}
    local max, interval = opts.max_slots or 64, opts.interval or 5
    self.orphans = self.orphans or {}
    local function round(premature)
        -- premature: the worker is exiting; close() takes care of the adopted handles.
        if premature or self.h == nil then return end
        local rok, rerr = pcall(adopt_round, self, dir, max)
        if not rok then ngx.log(ngx.ERR, "tally: adopt_orphans: ", rerr) end
    end
    local tok, terr = ngx.timer.at(0, round)
    if tok then tok, terr = ngx.timer.every(interval, round) end
    if not tok then return nil, "adopt_orphans: " .. tostring(terr) end
    return true
end

function T:version() return ffi.string(self.lib.tally_version()) end

return _M
