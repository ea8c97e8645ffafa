#!/usr/bin/env bash
# `tally report` in a real browser: events go through the runtime (a plan rule flagging
# violations, a sqlite and a file destination, and a Segment destination on a local collector that
# refuses everything, so there are dead letters); the page is opened in headless Chromium, its
# console must stay silent, and the numbers in its DOM must match the databases (read by
# tests/report/dom_check.py with SQLite's own JSON functions). Bad inputs: clear errors or a page
# that says what it could not read; never a crash. Screenshots are kept in
# build/test-artifacts/report/.
set -u
cd "${TALLY_SRC_DIR:-$(dirname "$0")/../..}"
TALLY=${TALLY_BIN:-build/release/tally}
here=tests/report
art=build/test-artifacts/report
mkdir -p "$art"
dir=$(mktemp -d)
collector_pid=""
cleanup() {
  [ -n "$collector_pid" ] && kill "$collector_pid" 2>/dev/null && wait "$collector_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  bad chromium_installed "no chromium on PATH (make deps installs Debian's chromium)"
  finish
fi

# Renders url headless: $1 mode (dom|shot|shot-narrow), $2 file, $3 output. The console goes to
# $3.console: Chromium logs every console message and CSP refusal as an INFO:CONSOLE line.
browse() {
  local mode=$1 file=$2 out=$3 prof url
  url="file://$(realpath "$file")"
  prof=$(mktemp -d "$dir/chrome.XXXX")
  local args=(--headless=new --no-sandbox --disable-gpu --no-first-run --hide-scrollbars --user-data-dir="$prof"
              --enable-logging=stderr --v=0)
  case $mode in
    dom) timeout 120 "$CHROMIUM" "${args[@]}" --dump-dom "$url" >"$out" 2>"$out.console" ;;
    shot) timeout 120 "$CHROMIUM" "${args[@]}" --window-size=1200,2600 --screenshot="$out" "$url" \
            >/dev/null 2>"$out.console" ;;
    shot-narrow) timeout 120 "$CHROMIUM" "${args[@]}" --window-size=390,2400 --screenshot="$out" "$url" \
            >/dev/null 2>"$out.console" ;;
  esac
  local rc=$?
  rm -rf "$prof"
  return $rc
}
console_errors() { grep -h 'CONSOLE' "$@" || true; }

# dom_check prints ok/FAIL lines; fold them into our counts.
dom_check() {
  local line
  while IFS= read -r line; do
    echo "$line"
    case $line in ok*) pass=$((pass + 1)) ;; FAIL*) fail=$((fail + 1)) ;; esac
  done < <(python3 "$here/dom_check.py" "$@" 2>&1 || true)
}

# ---- the detector itself: a page with a console error and a blocked fetch is caught ----
cat >"$dir/noisy.html" <<'EOF'
<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'">
</head><body><img src="http://127.0.0.1:9/x.png"><script>throw new Error("noisy page")</script></body></html>
EOF
# and a script whose hash the page's CSP does not allow (what a stale hash in the report would do)
cat >"$dir/refused.html" <<'EOF'
<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='">
</head><body><script>document.title = "ran"</script></body></html>
EOF
browse dom "$dir/noisy.html" "$dir/noisy.dom"
browse dom "$dir/refused.html" "$dir/refused.dom"
if console_errors "$dir/noisy.dom.console" | grep -q 'noisy page' && console_errors "$dir/noisy.dom.console" | grep -q 'Content Security Policy' &&
   console_errors "$dir/refused.dom.console" | grep -q 'Content Security Policy'; then
  ok console_detector_catches_errors_blocked_fetches_and_refused_scripts
else
  bad console_detector_catches_errors_blocked_fetches_and_refused_scripts "$(tail -5 "$dir/noisy.dom.console" "$dir/refused.dom.console")"
fi

# ---- fixture: messages through the runtime ----
python3 - "$dir/in.ndjson" <<'EOF'
import json, sys
out = []
def msg(**m): out.append(m)
day = ["2026-11-28", "2026-11-29", "2026-11-30"]
for i in range(30):
    msg(type="track", event="Order Completed", userId=f"u{i % 4}", timestamp=f"{day[i % 3]}T1{i % 10}:00:00.000Z",
        properties={"order_id": f"o{i}", "total": 10.5 + i, "currency": "EUR"})
for i in range(5):   # total as a string: a plan violation and a type drift
    msg(type="track", event="Order Completed", userId="u9", timestamp=f"{day[2]}T20:0{i}:00.000Z",
        properties={"order_id": f"s{i}", "total": "12.50", "currency": "EUR"})
for i in range(10):  # not in the plan, camelCase key
    msg(type="track", event="Product Viewed", anonymousId=f"a{i % 3}", timestamp=f"{day[i % 3]}T09:00:00.000Z",
        properties={"productId": f"p{i}"})
for i in range(3):
    msg(type="track", event="Signed Up", userId=f"u{i}", timestamp=f"{day[0]}T08:00:0{i}.000Z", properties={})
for i in range(4):
    msg(type="page", name="Home", anonymousId="a1", timestamp=f"{day[1]}T07:00:0{i}.000Z", properties={"path": "/"})
# markup in a name: shown as text, never run (the console must stay silent)
msg(type="track", event='</td><script>console.error("xss")</script><img src=x onerror="console.error(1)">',
    userId="u1", timestamp=f"{day[1]}T12:00:00.000Z", properties={"<b>k": 1})
for i in range(2):
    msg(type="identify", userId=f"u{i}", timestamp=f"{day[2]}T06:00:0{i}.000Z", traits={"email": f"u{i}@example.com"})
with open(sys.argv[1], "w") as f:
    for m in out:
        f.write(json.dumps(m) + "\n")
EOF
cat >"$dir/plan.lua" <<'EOF'
return require("tally.plan").rule{
  plan = { events = {
    ["Order Completed"] = { type = "object", required = { "order_id", "total" },
      properties = { order_id = { type = "string" }, total = { type = "number" }, currency = { type = "string" } } },
    ["Signed Up"] = true,
    ["Checkout Started"] = true,
  } },
  unplanned_events = "flag", violations = "flag",
}
EOF
cat >"$dir/naming.lua" <<'EOF'
return require("tally.naming").rule{ style = "title", property_case = "snake" }
EOF

python3 tests/e2e/collector.py --port 0 >"$dir/collector.out" 2>"$dir/collector.err" &
collector_pid=$!
for _ in $(seq 100); do grep -q '^PORT ' "$dir/collector.out" && break; sleep 0.05; done
port=$(sed -n 's/^PORT //p' "$dir/collector.out")
if [ -z "$port" ]; then bad collector_started "$(cat "$dir/collector.err")"; finish; fi
# every batch refused with a 400: dead letters at once, with the reason
python3 -c "import json,urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/control', data=json.dumps({'default': {'status': 400, 'body': {'error': 'write key refused'}}}).encode(), headers={'Content-Type': 'application/json'})).read()"

"$TALLY" send --store="$dir/store.db" --rules="$dir/plan.lua" --writeKey=K --endpoint="http://127.0.0.1:$port" \
  --destinations="[{\"type\":\"sqlite\",\"path\":\"$dir/events.db\"},{\"type\":\"file\",\"path\":\"$dir/events.ndjson\"}]" \
  --wait_ms=20000 <"$dir/in.ndjson" >"$dir/send.out" 2>&1
kill "$collector_pid" 2>/dev/null; wait "$collector_pid" 2>/dev/null; collector_pid=""
n=$(sqlite3 "$dir/events.db" "SELECT count(*) FROM events" 2>/dev/null || echo 0)
dead=$(sqlite3 "$dir/store.db" "SELECT count(*) FROM dead" 2>/dev/null || echo 0)
if [ "$n" -eq 55 ] && [ "$dead" -eq 55 ]; then ok fixture_through_the_runtime
else bad fixture_through_the_runtime "events $n, dead $dead (want 55 each): $(tail -3 "$dir/send.out")"; fi

# ---- the report, in Chromium ----
if "$TALLY" report --events="$dir/events.db" --store="$dir/store.db" --plan="$dir/plan.lua" --naming="$dir/naming.lua" \
     -o "$dir/report.html" >"$dir/report.out" 2>&1; then
  ok report_written
else
  bad report_written "$(cat "$dir/report.out")"
fi
cp "$dir/report.html" "$art/report.html"
if grep -Eq '(src|href|action)="[^#"]' "$art/report.html" || ! grep -q "Content-Security-Policy\" content=\"default-src 'none'" "$art/report.html"; then
  bad page_references_nothing_outside_itself "$(grep -Eo '(src|href|action)="[^#"][^"]*"' "$art/report.html" | head -3)"
else
  ok page_references_nothing_outside_itself
fi
browse dom "$art/report.html" "$dir/report.dom"
browse shot "$art/report.html" "$art/report.png"
browse shot-narrow "$art/report.html" "$art/report-narrow.png"
errs=$(console_errors "$dir/report.dom.console" "$art/report.png.console" "$art/report-narrow.png.console")
if [ -z "$errs" ]; then ok no_console_errors; else bad no_console_errors "$errs"; fi
if [ -s "$art/report.png" ] && [ -s "$art/report-narrow.png" ]; then ok screenshots_saved; else bad screenshots_saved "no png in $art"; fi
rm -f "$art"/*.console
dom_check --dom "$dir/report.dom" --events "$dir/events.db" --store "$dir/store.db" \
  --never-seen "Checkout Started" --drift "Order Completed:total" --bad-key productId \
  --unplanned "Product Viewed,</td><script>console.error(\"xss\")</script><img src=x onerror=\"console.error(1)\">"
grep -q '&lt;/td&gt;&lt;script&gt;' "$art/report.html" && ok markup_in_names_is_escaped || bad markup_in_names_is_escaped "not escaped"

# NDJSON (a file destination's output) reads the same
if "$TALLY" report --events="$dir/events.ndjson" -o "$dir/nd.html" >"$dir/nd.out" 2>&1; then
  browse dom "$dir/nd.html" "$dir/nd.dom"
  dom_check --prefix ndjson_ --dom "$dir/nd.dom" --events "$dir/events.db"
else
  bad ndjson_report_written "$(cat "$dir/nd.out")"
fi

# the demo's plan (make demo) loads and lists its events
if "$TALLY" report --events="$dir/events.db" --plan=examples/game/plan.lua -o "$dir/demo-plan.html" >"$dir/out" 2>&1 &&
   grep -q '4 planned events' "$dir/demo-plan.html"; then ok demo_plan_loads
else bad demo_plan_loads "$(cat "$dir/out")"; fi

# ---- bad input ----
# expect NAME WANT_EXIT STDERR_SUBSTRING -- command...
expect() {
  local name=$1 want=$2 errsub=$3; shift 4
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ "$rc" -ne "$want" ]; then bad "$name" "exit $rc, wanted $want; stderr: $(cat "$dir/err")"; return; fi
  if [ -n "$errsub" ] && ! grep -qF -- "$errsub" "$dir/err"; then bad "$name" "stderr lacks '$errsub': $(cat "$dir/err")"; return; fi
  ok "$name"
}
expect missing_database_is_a_clear_error 1 "$dir/nope.db: No such file or directory" -- \
  "$TALLY" report --events="$dir/nope.db" -o "$dir/x.html"
sqlite3 "$dir/other.db" "CREATE TABLE t(x); INSERT INTO t VALUES (1);"
expect non_tally_database_is_named 1 "not a tally events database" -- "$TALLY" report --events="$dir/other.db" -o "$dir/x.html"
expect non_tally_store_is_named 1 "not a tally store" -- "$TALLY" report --store="$dir/other.db" -o "$dir/x.html"
head -c 20000 /dev/urandom >"$dir/noise.db"
expect random_bytes_are_not_a_database 1 "not an SQLite database" -- "$TALLY" report --events="$dir/noise.db" -o "$dir/x.html"
: >"$dir/zero.db"
expect zero_byte_file_is_named 1 "empty file" -- "$TALLY" report --events="$dir/zero.db" -o "$dir/x.html"
expect plan_without_event_list_is_named 1 "no planned_events" -- \
  "$TALLY" report --events="$dir/events.db" --plan="$dir/naming.lua" -o "$dir/x.html"
expect since_must_be_a_date 2 "--since: expected a UTC date" -- \
  "$TALLY" report --events="$dir/events.db" --since=yesterday -o "$dir/x.html"
expect unknown_flag_is_named 2 "unknown flag --colour" -- "$TALLY" report --events="$dir/events.db" --colour=red
[ ! -e "$dir/x.html" ] && ok failed_runs_write_no_page || bad failed_runs_write_no_page "x.html exists"

# an events table with no rows: a page that says so
cp "$dir/events.db" "$dir/empty.db"
sqlite3 "$dir/empty.db" "DELETE FROM events"
expect empty_database_gives_a_page 0 "" -- "$TALLY" report --events="$dir/empty.db" -o "$dir/empty.html"
if [ -f "$dir/empty.html" ]; then
  browse dom "$dir/empty.html" "$dir/empty.dom"
  if grep -q 'data-empty' "$dir/empty.dom" && [ -z "$(console_errors "$dir/empty.dom.console")" ]; then ok empty_page_says_no_events
  else bad empty_page_says_no_events "$(console_errors "$dir/empty.dom.console")"; fi
fi

# after the last event: nothing, said as such
expect since_after_last_event_gives_a_page 0 "" -- \
  "$TALLY" report --events="$dir/events.db" --since=2030-01-01 -o "$dir/since.html"
grep -q 'data-empty>No events since 2030-01-01' "$dir/since.html" && ok since_filters_events || bad since_filters_events "no empty note"
"$TALLY" report --events="$dir/events.db" --since=2026-11-30 -o "$dir/since2.html" >/dev/null 2>&1
want=$(sqlite3 "$dir/events.db" "SELECT count(*) FROM events WHERE timestamp >= '2026-11-30'")
grep -q "data-stat=\"events\">$want<" "$dir/since2.html" && ok since_counts_only_later_events \
  || bad since_counts_only_later_events "want $want: $(grep -o 'data-stat="events">[0-9,]*' "$dir/since2.html")"

# a corrupt row: counted, reported at the top of the page, the rest still right
cp "$dir/events.db" "$dir/corrupt.db"
sqlite3 "$dir/corrupt.db" "UPDATE events SET body = '{not json' WHERE id = 3"
expect corrupt_row_gives_a_page 0 "" -- "$TALLY" report --events="$dir/corrupt.db" -o "$dir/corrupt.html"
grep -q "could not be read" "$dir/out" && ok corrupt_row_mentioned_on_the_terminal || bad corrupt_row_mentioned_on_the_terminal "$(cat "$dir/out")"
if [ -f "$dir/corrupt.html" ]; then
  browse dom "$dir/corrupt.html" "$dir/corrupt.dom"
  dom_check --prefix corrupt_ --dom "$dir/corrupt.dom" --events "$dir/corrupt.db" \
    --problem "1 row has a body that is not a JSON object (first: row id 3)"
fi

# damaged pages: SQLite notices or not, but the report never crashes
for seed in 1 2 3; do
  cp "$dir/events.db" "$dir/damaged.db"
  size=$(stat -c %s "$dir/damaged.db")
  python3 - "$dir/damaged.db" "$seed" "$size" <<'EOF'
import random, sys
path, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
with open(path, "r+b") as f:
    for _ in range(8):
        f.seek(r.randrange(4096, size))   # keep the header page: the file stays an SQLite database
        f.write(bytes(r.randrange(256) for _ in range(64)))
EOF
  "$TALLY" report --events="$dir/damaged.db" -o "$dir/damaged.html" >"$dir/out" 2>"$dir/err"; rc=$?
  if [ "$rc" -le 1 ] && { [ "$rc" -eq 0 ] || [ -s "$dir/err" ]; }; then ok "damaged_pages_never_crash_seed_$seed"
  else bad "damaged_pages_never_crash_seed_$seed" "exit $rc: $(cat "$dir/err")"; fi
done

echo "screenshots: $art/report.png $art/report-narrow.png"
finish
