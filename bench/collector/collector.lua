-- The benchmark's Segment-compatible collector, run inside nginx (ngx_http_lua, LuaJIT).
--
--   POST /v1/batch   body {"batch":[...], ...}, gzip'd when Content-Encoding: gzip
--                    -> 200 {"success":true}; counts the batch's messages and their messageIds
--   GET  /stats      -> {"requests":..,"messages":..,"unique":..,"duplicated":..,"missing_id":..,
--                        "bad_requests":..,"wire_bytes":..,"json_bytes":..,"evicted":..}
--   POST /reset      -> forgets every count and messageId
--   POST /null/v1/batch -> 200 {"success":true} after reading the body, counting only the request
--
-- Exact counts: every messageId goes into the shared dict `ids` (one entry per id, shared by the
-- workers); ids:add() fails with "exists" for a duplicate. The dict is sized in bench/run.sh for
-- well over a million ids; if it ever had to evict a live entry to make room (add() reports that
-- as `forcible`), `evicted` says so and bench/run.sh refuses the run's figures.
--
-- gzip is decoded through LuaJIT's FFI straight from libz.so.1 (zlib's inflate with windowBits
-- 16+15 = gzip framing): no extra Debian package is needed (lua-zlib exists in bookworm, but only
-- for the PUC Lua interpreters' module paths; the FFI route needs nothing).
--
-- Cost. tally keeps one batch in flight per destination, so whatever the collector does before it
-- answers is on tally's critical path. Two things keep that short:
--  * the answer goes out first (ngx.eof()), the counting follows; /stats waits until no request is
--    still counting (the `busy` counter), so figures read after a client's flush are complete;
--  * the default parse (COLLECTOR_PARSE=scan) finds each "messageId":"..." with plain string.find,
--    ~35 us per 100-message batch, where cjson.decode takes ~200 us. Both clients write compact
--    JSON with exactly that spelling, and the workload's properties have no key of that name.
--    COLLECTOR_PARSE=json decodes the body with cjson and counts the elements of "batch" instead
--    (a message without a messageId then shows as missing_id). The ids shared dict costs ~1.5 us
--    per id either way.
-- bench/run.sh also runs its fastest case against /null/v1/batch (read the body, answer, count
-- nothing) as the control, and measures the nginx workers' CPU time from /proc.
local ffi = require "ffi"
local cjson = require "cjson.safe"

local M = {}

ffi.cdef [[
typedef struct tally_bench_z_stream {
    const unsigned char *next_in;  unsigned int avail_in;  unsigned long total_in;
    unsigned char       *next_out; unsigned int avail_out; unsigned long total_out;
    const char *msg; void *state;
    void *zalloc; void *zfree; void *opaque;
    int data_type; unsigned long adler; unsigned long reserved;
} tally_bench_z_stream;
int inflateInit2_(tally_bench_z_stream *strm, int windowBits, const char *version, int stream_size);
int inflate(tally_bench_z_stream *strm, int flush);
int inflateReset(tally_bench_z_stream *strm);
int inflateEnd(tally_bench_z_stream *strm);
const char *zlibVersion(void);
]]

local Z_OK, Z_STREAM_END, Z_BUF_ERROR, Z_NO_FLUSH = 0, 1, -5, 0
local zlib = ffi.load("libz.so.1")

-- One inflate stream and one output buffer per worker, reused (inflateReset) for every request.
local strm, outbuf, outcap

local function inflate(body)
    if not strm then
        strm = ffi.new("tally_bench_z_stream[1]")
        local rc = zlib.inflateInit2_(strm, 31, zlib.zlibVersion(), ffi.sizeof("tally_bench_z_stream"))
        if rc ~= Z_OK then return nil, "inflateInit2 failed: " .. rc end
        outcap = 1024 * 1024
        outbuf = ffi.new("unsigned char[?]", outcap)
    else
        zlib.inflateReset(strm)
    end
    local s = strm[0]
    s.next_in, s.avail_in = ffi.cast("const unsigned char *", body), #body
    local parts, produced = nil, 0
    while true do
        s.next_out, s.avail_out = outbuf, outcap
        local rc = zlib.inflate(strm, Z_NO_FLUSH)
        local n = outcap - s.avail_out
        if rc == Z_STREAM_END then
            if not parts then return ffi.string(outbuf, n) end
            parts[#parts + 1] = ffi.string(outbuf, n)
            return table.concat(parts)
        end
        if rc ~= Z_OK and not (rc == Z_BUF_ERROR and n > 0) then
            return nil, "inflate failed: " .. rc
        end
        if n == 0 and s.avail_in == 0 then return nil, "truncated gzip body" end
        parts = parts or {}
        parts[#parts + 1] = ffi.string(outbuf, n)
        produced = produced + n
        if produced > 256 * 1024 * 1024 then return nil, "gzip body inflates past 256 MB" end
    end
end

local function read_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body then
        -- larger than client_body_buffer_size: nginx spilled it to a file
        local path = ngx.req.get_body_file()
        if not path then return "" end
        local f = assert(io.open(path, "rb"))
        body = f:read("*a")
        f:close()
    end
    return body
end

local function bad(status, why, answered)
    ngx.shared.counts:incr("bad_requests", 1, 0)
    ngx.log(ngx.WARN, "collector: ", why)
    if answered then return end
    ngx.status = status
    ngx.header.content_type = "application/json"
    ngx.print(cjson.encode({ success = false, error = why }))
end

-- the messageIds of a compact JSON batch, by plain search (see "Cost" above)
local find, sub = string.find, string.sub
local function scan_ids(body, ids)
    if not find(body, '"batch":[', 1, true) then return nil end
    local n, unique, evicted, pos = 0, 0, 0, 1
    while true do
        local _, e = find(body, '"messageId":"', pos, true)
        if not e then break end
        local q = find(body, '"', e + 1, true)
        if not q then break end
        n = n + 1
        local ok, err, forcible = ids:add(sub(body, e + 1, q - 1), true)
        if ok then
            unique = unique + 1
            if forcible then evicted = evicted + 1 end
        elseif err ~= "exists" then
            evicted = evicted + 1 -- "no memory": this id could not be recorded
        end
        pos = q + 1
    end
    return n, unique, 0, evicted
end

local function json_ids(body, ids)
    local doc = cjson.decode(body)
    if type(doc) ~= "table" or type(doc.batch) ~= "table" then return nil end
    local n, unique, missing, evicted = #doc.batch, 0, 0, 0
    for i = 1, n do
        local m = doc.batch[i]
        local mid = type(m) == "table" and m.messageId
        if type(mid) ~= "string" then
            missing = missing + 1
        else
            local ok, err, forcible = ids:add(mid, true)
            if ok then
                unique = unique + 1
                if forcible then evicted = evicted + 1 end
            elseif err ~= "exists" then
                evicted = evicted + 1
            end
        end
    end
    return n, unique, missing, evicted
end

function M.batch()
    if ngx.req.get_method() ~= "POST" then return bad(405, "POST only") end
    local counts, ids = ngx.shared.counts, ngx.shared.ids
    counts:incr("busy", 1, 0)
    local body = read_body()
    local wire = #body
    local enc = ngx.var.http_content_encoding
    if enc and enc:lower() == "gzip" then
        local err
        body, err = inflate(body)
        if not body then counts:incr("busy", -1) return bad(400, err) end
    end
    ngx.header.content_type = "application/json"
    ngx.print('{"success":true}')
    ngx.eof() -- the client has its answer; count while it prepares the next batch
    local ok, n, unique, missing, evicted = pcall(ngx.var.collector_parse == "json" and json_ids or scan_ids, body, ids)
    if not ok then
        counts:incr("busy", -1)
        return bad(500, "counting failed: " .. tostring(n), true)
    end
    if not n then
        counts:incr("busy", -1)
        return bad(400, "body is not {\"batch\":[...]} (answered 200 already)", true)
    end
    counts:incr("requests", 1, 0)
    counts:incr("messages", n, 0)
    counts:incr("unique", unique, 0)
    counts:incr("wire_bytes", wire, 0)
    counts:incr("json_bytes", #body, 0)
    if missing > 0 then counts:incr("missing_id", missing, 0) end
    if evicted > 0 then counts:incr("evicted", evicted, 0) end
    counts:incr("busy", -1)
end

-- /null/v1/batch: reads the body and answers 200, counting nothing but the request. bench/run.sh
-- points one case at it: if tally went much faster there than against /v1/batch, the collector's
-- parsing and counting would be what limits the end-to-end figures.
function M.null()
    ngx.req.read_body()
    ngx.shared.counts:incr("null_requests", 1, 0)
    ngx.header.content_type = "application/json"
    ngx.print('{"success":true}')
end

local FIELDS = { "requests", "messages", "unique", "missing_id", "bad_requests", "wire_bytes", "json_bytes", "evicted", "null_requests" }

function M.stats()
    local counts, out = ngx.shared.counts, {}
    -- wait (up to 5 s) for requests that answered but are still counting
    for _ = 1, 5000 do
        if (counts:get("busy") or 0) <= 0 then break end
        ngx.sleep(0.001)
    end
    for _, k in ipairs(FIELDS) do out[k] = counts:get(k) or 0 end
    out.duplicated = out.messages - out.missing_id - out.unique
    out.ids_free_bytes = ngx.shared.ids:free_space()
    out.parse = ngx.var.collector_parse
    ngx.header.content_type = "application/json"
    ngx.print(cjson.encode(out))
end

function M.reset()
    ngx.shared.counts:flush_all()
    ngx.shared.counts:flush_expired(0)
    local ids = ngx.shared.ids
    ids:flush_all()
    -- flush_all only marks entries expired; free them now so a later run never evicts
    ids:flush_expired(0)
    ngx.header.content_type = "application/json"
    ngx.print('{"success":true}')
end

return M
