#!/usr/bin/env bash
# The README's C example (examples/quickstart.c) runs against the shared library and does what the
# README says: anonymous page, track, identify, a rejected empty event, reset, a sent message.
set -u
BUILD=${TALLY_BUILD:-build/release}
bin=$(cd "$BUILD" && pwd)/examples/quickstart
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }
mkdir -p "$dir/rules"
if (cd "$dir" && "$bin" >out.txt 2>err.txt); then ok quickstart_exits_0; else bad quickstart_exits_0 "$(cat "$dir/err.txt")"; fi
grep -qF 'rejected: event: must not be empty' "$dir/err.txt" && ok quickstart_reports_rejection || bad quickstart_reports_rejection "$(cat "$dir/err.txt")"
[ "$(wc -l <"$dir/events.ndjson")" -eq 4 ] && ok quickstart_wrote_4_messages || bad quickstart_wrote_4_messages "$(cat "$dir/events.ndjson")"
grep -qF '"accepted":4,' "$dir/out.txt" && ok quickstart_stats || bad quickstart_stats "$(cat "$dir/out.txt")"
anon1=$(sed -n 1p "$dir/events.ndjson" | grep -o '"anonymousId":"[^"]*"')
anon5=$(sed -n 4p "$dir/events.ndjson" | grep -o '"anonymousId":"[^"]*"')
[ -n "$anon1" ] && [ "$anon1" != "$anon5" ] && ok quickstart_reset_changed_anonymous_id || bad quickstart_reset_changed_anonymous_id "$anon1 / $anon5"
sed -n 3p "$dir/events.ndjson" | grep -qF '"userId":"user-42"' && ok quickstart_identify || bad quickstart_identify "$(sed -n 3p "$dir/events.ndjson")"
[ -f "$dir/tally.db" ] && ok quickstart_store_file || bad quickstart_store_file "no tally.db"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
