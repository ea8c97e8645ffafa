--- Runs messages through the product's own rule chain, so that specs test what ships:
--   M.check(rules, msgs)   `tally check` (the CLI binary, $TALLY_BIN): every result, violation,
--                          drop, script error and ctx:log line, per message
--   M.runtime(rules, msgs) the runtime itself through the Lua module (`require "tally"`): a
--                          test-local store and file destination; what was delivered, and stats
-- `rules` is a rules folder or file; `msgs` a list of messages (tables). JSON is read with cjson,
-- so a JSON null comes back as cjson.null.
local files = require("tests.lua.helpers.files")
local cjson = require("cjson")

local M = {}

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function tally_bin()
  return os.getenv("TALLY_BIN") or "build/release/tally"
end

local Report = {}
Report.__index = Report

--- The violation codes, in order.
function Report:codes()
  local out = {}
  for i, v in ipairs(self.violations) do out[i] = v.code end
  return out
end

--- The texts of violations with a code (all when code is nil), joined by newlines.
function Report:texts(code)
  local out = {}
  for _, v in ipairs(self.violations) do
    if code == nil or v.code == code then out[#out + 1] = v.text end
  end
  return table.concat(out, "\n")
end

local function new_report(header)
  return setmetatable({ header = header, results = {}, mapped = {}, violations = {}, errors = {},
                        drops = {}, logs = {} }, Report)
end

-- One line of `tally check`'s output into the current report (formats: src/cli/check.c).
local function parse_line(rep, line)
  local rule, code, text = line:match("^  violation %[(.-)%] ([^:]+): (.*)$")
  if rule then rep.violations[#rep.violations + 1] = { rule = rule, code = code, text = text } return end
  rule, text = line:match("^  error %[(.-)%] (.*)$")
  if rule then rep.errors[#rep.errors + 1] = { rule = rule, text = text } return end
  rule, text = line:match("^  dropped by %[(.-)%]: (.*)$")
  if rule then rep.drops[#rep.drops + 1] = { rule = rule, why = text } return end
  local level
  level, text = line:match("^  log %[(%a+)%] (.*)$")
  if level then rep.logs[#rep.logs + 1] = { level = level, text = text } return end
  local json = line:match("^    mapped: (.*)$")
  if json then rep.mapped[#rep.mapped + 1] = cjson.decode(json) return end
  json = line:match("^    ({.*)$")
  if json then rep.results[#rep.results + 1] = cjson.decode(json) end
end

--- Runs `tally check --rules=rules` on msgs. Returns the per-message reports (results, mapped,
-- violations, errors, drops, logs; :codes() and :texts()) and the whole run: { text, status,
-- summary }. Messages the CLI refused as invalid get a report whose header says so.
function M.check(rules, msgs, rule_config)
  local dir = files.tmpdir()
  local input = dir .. "/in.ndjson"
  local lines = {}
  for i, m in ipairs(msgs) do lines[i] = type(m) == "string" and m or cjson.encode(m) end
  files.write(input, table.concat(lines, "\n") .. "\n")
  local cmd = quote(tally_bin()) .. " check --rules=" .. quote(rules)
  if rule_config then cmd = cmd .. " --rule_config=" .. quote(rule_config) end
  local p = assert(io.popen(cmd .. " " .. quote(input) .. " 2>&1"))
  local text = p:read("a")
  local _, _, status = p:close()
  os.remove(input)
  os.remove(dir)
  local reports, current = {}, nil
  for line in text:gmatch("[^\n]+") do
    if line:match("^message %d+") then
      current = new_report(line)
      reports[#reports + 1] = current
    elseif current then
      parse_line(current, line)
    end
  end
  return reports, { text = text, status = status, summary = text:match("\n(%d+ messages? checked: [^\n]*)") }
end

--- One message through `tally check`: its results (a list: a split gives several, a drop none)
-- and its report. Raises when the CLI did not report on exactly one message.
function M.check_one(rules, msg, rule_config)
  local reports, run = M.check(rules, { msg }, rule_config)
  assert(#reports == 1, "tally check reported no message:\n" .. run.text)
  return reports[1].results, reports[1], run
end

--- Sends msgs through a real runtime (the Lua module, rules loaded by the product's sandbox, a
-- fresh store and a file destination), flushes and closes it. Returns the delivered messages in
-- order and the handle's tally_stats (a table) as they were after the flush.
function M.runtime(rules, msgs)
  local tally = require("tally")
  local dir = files.tmpdir()
  local out = dir .. "/out.ndjson"
  local t = assert(tally.open{ rules = rules, store = dir .. "/store.db", log_level = "off",
                               destinations = { { type = "file", path = out } } })
  for _, m in ipairs(msgs) do assert(t:send(m)) end
  assert(t:flush(10000))
  local stats = assert(t:stats())
  assert(t:close(5000))
  local delivered = files.ndjson(out, cjson.decode)
  os.execute("rm -rf " .. quote(dir))
  return delivered, stats
end

--- The sum of one counter over every rule in a stats table (e.g. "violations").
function M.rule_total(stats, field)
  local n = 0
  for _, r in ipairs(stats.rules or {}) do n = n + (r[field] or 0) end
  return n
end

--- Writes { [filename] = source } into a fresh folder and returns its path.
function M.rules_dir(scripts)
  local dir = files.tmpdir()
  for name, src in pairs(scripts) do files.write(dir .. "/" .. name, src) end
  return dir
end

return M
