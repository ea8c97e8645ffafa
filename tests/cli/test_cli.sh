#!/usr/bin/env bash
# The tally CLI: Segment's library CLI contract, exact output, and exit 2 with the flag named.
set -u
TALLY=${TALLY_BIN:-build/release/tally}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }

# expect NAME WANT_EXIT STDERR_SUBSTRING -- command...
expect() {
  local name=$1 want=$2 errsub=$3; shift 4
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ "$rc" -ne "$want" ]; then bad "$name" "exit $rc, wanted $want; stderr: $(cat "$dir/err")"; return; fi
  if [ -n "$errsub" ] && ! grep -qF -- "$errsub" "$dir/err"; then bad "$name" "stderr lacks '$errsub': $(cat "$dir/err")"; return; fi
  if [ "$want" -eq 2 ] && [ "$(wc -l <"$dir/err")" -ne 1 ]; then bad "$name" "error is not one line: $(cat "$dir/err")"; return; fi
  ok "$name"
}

# The issue's acceptance command: properties byte for byte.
rm -f "$dir/x.ndjson"
expect track_exact 0 "" -- "$TALLY" track --userId=u1 --event='Button Clicked' \
  --properties='{"n":9007199254740993,"f":0.1,"a":[],"z":null}' --out="$dir/x.ndjson"
if grep -qF '"properties":{"n":9007199254740993,"f":0.1,"a":[],"z":null}' "$dir/x.ndjson" &&
   grep -qF '"userId":"u1"' "$dir/x.ndjson" && grep -qF '"event":"Button Clicked"' "$dir/x.ndjson"; then
  ok track_exact_content
else
  bad track_exact_content "$(cat "$dir/x.ndjson")"
fi
# one-shot mode adds nothing to context but library, and no anonymousId of its own
if grep -qF '"context":{"library":{"name":"tally","version":"' "$dir/x.ndjson" && ! grep -q anonymousId "$dir/x.ndjson"; then
  ok single_shot_context_is_library_only
else
  bad single_shot_context_is_library_only "$(cat "$dir/x.ndjson")"
fi

rm -f "$dir/y.ndjson"
expect type_flag_form 0 "" -- "$TALLY" --type=identify --userId=u2 --traits='{"email":"a@b.c"}' --out="$dir/y.ndjson"
grep -qF '"type":"identify"' "$dir/y.ndjson" && grep -qF '"traits":{"email":"a@b.c"}' "$dir/y.ndjson" \
  && ok type_flag_content || bad type_flag_content "$(cat "$dir/y.ndjson" 2>/dev/null)"

expect page_fields 0 "" -- "$TALLY" page --anonymousId=a1 --name=Home --category=Docs \
  --messageId=m-1 --timestamp=2024-01-01T00:00:00.000Z --context='{"ip":"1.2.3.4"}' --integrations='{"All":true}' --out="$dir/p.ndjson"
for want in '"name":"Home"' '"category":"Docs"' '"messageId":"m-1"' '"timestamp":"2024-01-01T00:00:00.000Z"' '"ip":"1.2.3.4"' '"integrations":{"All":true}'; do
  grep -qF "$want" "$dir/p.ndjson" && ok "page_has_$want" || bad "page_has_$want" "$(cat "$dir/p.ndjson")"
done
expect group_and_alias 0 "" -- sh -c "'$TALLY' group --userId=u1 --groupId=g1 --out='$dir/g.ndjson' && '$TALLY' alias --userId=u1 --previousId=a1 --out='$dir/g.ndjson'"
[ "$(wc -l <"$dir/g.ndjson")" -eq 2 ] && ok group_alias_lines || bad group_alias_lines "$(cat "$dir/g.ndjson")"

expect unknown_flag 2 "--colour" -- "$TALLY" track --userId=u1 --event=E --colour=red --out="$dir/z"
expect flag_without_value 2 "--event" -- "$TALLY" track --userId=u1 --event --out="$dir/z"
expect bad_json 2 "--properties: invalid JSON" -- "$TALLY" track --userId=u1 --event=E --properties='{"a":' --out="$dir/z"
expect json_not_object 2 "--traits: expected a JSON object" -- "$TALLY" identify --userId=u1 --traits='[1]' --out="$dir/z"
expect missing_event 2 "--event: required" -- "$TALLY" track --userId=u1 --out="$dir/z"
expect missing_ids 2 "--userId or --anonymousId" -- "$TALLY" track --event=E --out="$dir/z"
expect unknown_command 2 "unknown command" -- "$TALLY" click --userId=u1 --out="$dir/z"
expect conflicting_type 2 "--type" -- "$TALLY" track --type=page --userId=u1 --out="$dir/z"
expect bad_config_value 2 "flush_at" -- "$TALLY" track --userId=u1 --event=E --flush_at=0 --out="$dir/z"
expect no_destination 2 "no destination" -- env -u TALLY_WRITE_KEY -u TALLY_ENDPOINT "$TALLY" track --userId=u1 --event=E
expect invalid_utf8_flag 2 "--event: invalid UTF-8" -- "$TALLY" track --userId=u1 --event=$'\xff' --out="$dir/z"
[ ! -s "$dir/z" ] && ok rejected_calls_wrote_nothing || bad rejected_calls_wrote_nothing "$(cat "$dir/z")"

printf '%s\n' '{"type":"track","event":"A","userId":"u1"}' '' '{"type":"page","anonymousId":"x"}' >"$dir/in.ndjson"
rm -f "$dir/s.ndjson"
expect send_stdin 0 "" -- sh -c "'$TALLY' send --out='$dir/s.ndjson' < '$dir/in.ndjson'"
[ "$(wc -l <"$dir/s.ndjson")" -eq 2 ] && ok send_stdin_lines || bad send_stdin_lines "$(cat "$dir/s.ndjson")"
printf '%s\n' '{"type":"track","userId":"u1"}' '{"type":"track","event":"B","userId":"u1"}' >"$dir/in2.ndjson"
expect send_reports_bad_line 2 "line 1: event: required" -- "$TALLY" send --out="$dir/s2.ndjson" "$dir/in2.ndjson"
[ "$(wc -l <"$dir/s2.ndjson")" -eq 1 ] && ok send_keeps_good_lines || bad send_keeps_good_lines "$(cat "$dir/s2.ndjson")"
# Issue 14 #20: a raw NUL in a line used to cut it there silently ("B" was sent as "A"'s prefix)
printf '{"type":"track","event":"A\0B","userId":"u1"}\n{"type":"track","event":"C","userId":"u1"}\n' >"$dir/nul.ndjson"
rm -f "$dir/nul-out.ndjson"
expect send_refuses_raw_nul_in_a_line 2 "line 1: raw NUL byte at offset 26" -- "$TALLY" send --out="$dir/nul-out.ndjson" "$dir/nul.ndjson"
[ "$(wc -l <"$dir/nul-out.ndjson")" -eq 1 ] && grep -qF '"event":"C"' "$dir/nul-out.ndjson" &&
  ok send_raw_nul_line_sends_nothing || bad send_raw_nul_line_sends_nothing "$(cat "$dir/nul-out.ndjson")"
# Issue 14 #19: integers beyond 64 bits pass through byte for byte (they became 1e20-style doubles)
printf '%s\n' '{"type":"track","event":"Big","userId":"u1","properties":{"a":99999999999999999999,"b":-9223372036854775809,"c":[18446744073709551616]}}' >"$dir/big.ndjson"
rm -f "$dir/big-out.ndjson"
expect send_big_integers 0 "" -- "$TALLY" send --out="$dir/big-out.ndjson" "$dir/big.ndjson"
grep -qF '"properties":{"a":99999999999999999999,"b":-9223372036854775809,"c":[18446744073709551616]}' "$dir/big-out.ndjson" &&
  ok send_keeps_integers_beyond_64_bits || bad send_keeps_integers_beyond_64_bits "$(cat "$dir/big-out.ndjson")"
rm -f "$dir/big2.ndjson"
expect track_big_integers 0 "" -- "$TALLY" track --userId=u1 --event=Big --properties='{"n":99999999999999999999}' \
  --context='{"big":-9223372036854775809}' --out="$dir/big2.ndjson"
grep -qF '"properties":{"n":99999999999999999999}' "$dir/big2.ndjson" && grep -qF '"big":-9223372036854775809' "$dir/big2.ndjson" &&
  ok track_keeps_integers_beyond_64_bits || bad track_keeps_integers_beyond_64_bits "$(cat "$dir/big2.ndjson")"

cat >"$dir/conf.lua" <<LUA
return { out = "$dir/c.ndjson", flush_at = 10 }
LUA
expect config_file 0 "" -- "$TALLY" track --config="$dir/conf.lua" --userId=u1 --event=E
[ "$(wc -l <"$dir/c.ndjson")" -eq 1 ] && ok config_file_output || bad config_file_output "missing"

# --store keeps the device identity and the queue; inspect reads it back
rm -f "$dir/st.db" "$dir/st.ndjson"
expect store_identify 0 "" -- "$TALLY" identify --userId=u5 --store="$dir/st.db" --out="$dir/st.ndjson"
expect store_track 0 "" -- "$TALLY" track --event=E --store="$dir/st.db" --out="$dir/st.ndjson"
if [ "$(grep -c '"userId":"u5"' "$dir/st.ndjson")" -eq 2 ] && grep -q '"session":{' "$dir/st.ndjson"; then
  ok store_keeps_identity
else
  bad store_keeps_identity "$(cat "$dir/st.ndjson")"
fi
expect inspect_table 0 "" -- "$TALLY" inspect "$dir/st.db"
if grep -qE "file:$dir/st.ndjson +0 +2 +0 +0 +0" "$dir/out"; then ok inspect_counts; else bad inspect_counts "$(cat "$dir/out")"; fi
expect inspect_json 0 "" -- "$TALLY" inspect "$dir/st.db" --json
grep -qF '"delivered":2' "$dir/out" && ok inspect_json_counts || bad inspect_json_counts "$(cat "$dir/out")"
expect inspect_missing 1 "inspect" -- "$TALLY" inspect "$dir/nope.db"

# tally check: results, violations, exit 1 when a message is blocked or a script fails
mkdir -p "$dir/rules"
cat >"$dir/rules/10_lower.lua" <<'LUA'
return { name = "lower", process = function(m, ctx)
  if m.event ~= m.event:lower() then ctx:violation("naming.case", "not lower case: " .. m.event) end
  if m.event == "blocked" then return nil end
  m.event = m.event:lower()
  return m end }
LUA
printf '%s\n' '{"type":"track","event":"Button Clicked","userId":"u"}' >"$dir/ok.ndjson"
expect check_passes 0 "" -- "$TALLY" check --rules="$dir/rules" "$dir/ok.ndjson"
grep -qF 'violation [lower] naming.case: not lower case: Button Clicked' "$dir/out" && grep -qF '"event":"button clicked"' "$dir/out" \
  && ok check_prints_violation_and_result || bad check_prints_violation_and_result "$(cat "$dir/out")"
printf '%s\n' '{"type":"track","event":"blocked","userId":"u"}' >"$dir/blocked.ndjson"
expect check_blocked_exits_1 1 "" -- sh -c "'$TALLY' check --rules='$dir/rules' < '$dir/blocked.ndjson'"
grep -qF 'dropped by [lower]' "$dir/out" && ok check_names_the_blocking_rule || bad check_names_the_blocking_rule "$(cat "$dir/out")"
echo 'return { name = "broken", process = function(m) error("kaput") end }' >"$dir/rules/20_broken.lua"
expect check_script_error_exits_1 1 "" -- "$TALLY" check --rules="$dir/rules" "$dir/ok.ndjson"
grep -qF 'error [broken]' "$dir/out" && grep -qF '20_broken.lua:1: kaput' "$dir/out" \
  && ok check_reports_script_and_line || bad check_reports_script_and_line "$(cat "$dir/out")"
echo 'return {' >"$dir/rules/30_syntax.lua"
expect check_load_error 1 "30_syntax.lua:2: unexpected symbol" -- "$TALLY" check --rules="$dir/rules" "$dir/ok.ndjson"
expect check_needs_rules 2 "--rules" -- "$TALLY" check "$dir/ok.ndjson"
rm -f "$dir/rules/20_broken.lua" "$dir/rules/30_syntax.lua"
expect check_space_separated_flag 0 "" -- "$TALLY" check --rules "$dir/rules" "$dir/ok.ndjson"
grep -qF '"event":"button clicked"' "$dir/out" && ok check_space_form_result || bad check_space_form_result "$(cat "$dir/out")"
rm -f "$dir/sp.ndjson"
expect track_space_separated_flags 0 "" -- "$TALLY" track --userId u9 --event "Space Form" --out "$dir/sp.ndjson"
grep -qF '"event":"Space Form"' "$dir/sp.ndjson" && grep -qF '"userId":"u9"' "$dir/sp.ndjson" \
  && ok track_space_form_content || bad track_space_form_content "$(cat "$dir/sp.ndjson")"

# send of a big file: on a full intake the CLI waits for room and offers the same line again.
python3 -c 'print("{\"type\":\"track\",\"userId\":\"u\",\"event\":\"E\"}\n"*200000,end="")' >"$dir/many.ndjson"
rm -f "$dir/many.out"
expect send_large_file_loses_no_line 0 "" -- "$TALLY" send --out="$dir/many.out" "$dir/many.ndjson"
[ "$(wc -l <"$dir/many.out")" -eq 200000 ] && [ "$(grep -o '"messageId":"[^"]*"' "$dir/many.out" | sort -u | wc -l)" -eq 200000 ] \
  && ok send_large_file_each_line_exactly_once || bad send_large_file_each_line_exactly_once "$(wc -l <"$dir/many.out") lines"
# a 16-row intake is full almost every line, so this walks the wait-and-resend path thousands of times
head -20000 "$dir/many.ndjson" >"$dir/some.ndjson"
rm -f "$dir/some.out"
expect send_full_intake_waits_not_drops 0 "" -- "$TALLY" send --max_queue_rows=16 --out="$dir/some.out" "$dir/some.ndjson"
[ "$(wc -l <"$dir/some.out")" -eq 20000 ] && [ ! -s "$dir/err" ] \
  && ok send_full_intake_every_line_arrives || bad send_full_intake_every_line_arrives "$(wc -l <"$dir/some.out") lines; $(head -3 "$dir/err")"

# a directory is not input: refused naming the path, whether named or redirected
mkdir -p "$dir/adir"
expect send_directory_refused 2 "$dir/adir: is a directory" -- "$TALLY" send --out="$dir/z" "$dir/adir"
expect send_directory_on_stdin_refused 2 "stdin: is a directory" -- sh -c "'$TALLY' send --out='$dir/z' < '$dir/adir'"

# report is a command like the others for help and did-you-mean
expect help_report_shows_report_usage 0 "" -- "$TALLY" help report
grep -qF 'tally report [--events=' "$dir/out" && ok help_report_prints_its_flags || bad help_report_prints_its_flags "$(cat "$dir/out")"
expect misspelt_report_suggested 2 '(did you mean "report"?)' -- "$TALLY" reprot

# --store naming the user's own file: refused with exit 2, the file kept as it was, nothing beside it
printf '# notes\nnot a store\n' >"$dir/notes.md"; cp "$dir/notes.md" "$dir/notes.orig"
expect store_not_sqlite_refused 2 "is not a SQLite database (refusing to touch it)" -- \
  "$TALLY" track --userId=u --event=E --out="$dir/z" --store="$dir/notes.md"
cmp -s "$dir/notes.md" "$dir/notes.orig" && [ -z "$(ls "$dir" | grep '^notes\.md.')" ] \
  && ok store_not_sqlite_left_untouched || bad store_not_sqlite_left_untouched "$(ls "$dir")"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
