#!/usr/bin/env bash
# `make demo` shows the rules working: a mod's "Personal Best" with durationMs is stored fixed as
# "personal best" with duration_ms, its one-word "finished" is kept and counted as a violation,
# and the runtime's stats are printed as tables, not as one JSON line.
set -u
BUILD=${TALLY_BUILD:-build/release}
SRC=${TALLY_SRC_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }
has() { grep -qE -- "$3" "$2" && ok "$1" || bad "$1" "no /$3/ in the demo output"; }

if ! command -v sqlite3 >/dev/null; then echo "FAIL demo needs the sqlite3 CLI"; echo "0 passed, 1 failed"; exit 1; fi
build_abs=$(cd "$BUILD" && pwd)
if env -u TALLY_WRITE_KEY -u TALLY_ENDPOINT BUILD="$build_abs" DEMO_OUT="$dir/demo" DEMO_LOADING_MS=0 \
     bash "$SRC/examples/demo.sh" >"$dir/out" 2>"$dir/err"; then
  ok demo_exits_0
else
  bad demo_exits_0 "$(cat "$dir/err")"
fi
has demo_shows_the_fix_live "$dir/out" 'naming fixed: event "Personal Best" is not lower case'
has demo_shows_the_key_fix_live "$dir/out" 'naming fixed: properties.durationMs is not snake_case'
has demo_shows_the_violation_live "$dir/out" 'violation naming.object_action: event "finished"'
has demo_stored_the_fixed_event "$dir/out" '^personal best +[0-9]+ +[0-9]+ +0 *$'
has demo_lists_the_kept_violation "$dir/out" '^finished +speedrun +1 *$'
has demo_rule_table_counts_the_violation "$dir/out" '^naming +before +[0-9]+ +1 +0 +0 +no *$'
has demo_counter_table "$dir/out" '^violations +1 *$'
has demo_destination_table "$dir/out" '^sqlite:.*events\.db +[0-9]+ +0 +0 +[0-9]+ *$'
if grep -q 'runtime stats: {' "$dir/out"; then bad demo_no_raw_stats_json "raw JSON line printed"; else ok demo_no_raw_stats_json; fi
fixed_in_db=$(sqlite3 -batch "$dir/demo/events.db" "SELECT count(*) FROM events WHERE event = 'Personal Best' OR json_extract(body, '$.properties.durationMs') IS NOT NULL")
[ "$fixed_in_db" = 0 ] && ok demo_nothing_unfixed_stored || bad demo_nothing_unfixed_stored "$fixed_in_db unfixed rows"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
