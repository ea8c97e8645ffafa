--- Files for the specs that run a real runtime and read back what it wrote.
local M = {}

--- A fresh path in the temporary directory (nothing is created), with an optional suffix.
function M.tmp(suffix)
  local p = os.tmpname()
  os.remove(p)
  return p .. (suffix or "")
end

--- A fresh, empty temporary directory.
function M.tmpdir()
  local p = M.tmp()
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

--- The whole file, or "" when it does not exist.
function M.read(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

function M.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

--- The non-empty lines of a file.
function M.lines(path)
  local out = {}
  for line in M.read(path):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

--- Every line of an NDJSON file decoded with decode (e.g. tally.json.decode); a line that does not
-- decode, blank ones included, is an error. {} when the file is missing or empty.
function M.ndjson(path, decode)
  local s, out = M.read(path), {}
  if s == "" then return out end
  if s:sub(-1) ~= "\n" then s = s .. "\n" end
  for line in s:gmatch("(.-)\n") do out[#out + 1] = assert(decode(line)) end
  return out
end

return M
