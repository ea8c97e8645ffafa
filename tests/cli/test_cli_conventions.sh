#!/usr/bin/env bash
# CLI conventions: --help/-h and --version/-V exit 0, stray arguments and unknown flags exit 2 with
# "did you mean", camelCase option names, timestamp validation, send's mode, an honest
# `tally check` summary, a fixed `inspect --json` schema, and delivery judged per destination.
set -u
TALLY=${TALLY_BIN:-build/release/tally}
SRC=${TALLY_SRC_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${TALLY_PYTHON:-python3}
dir=$(mktemp -d)
cpid=
cleanup() {
  if [ -n "$cpid" ]; then kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null; fi
  rm -rf "$dir"
}
trap cleanup EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }

# expect NAME WANT_EXIT STDERR_SUBSTRING -- command...   (no inherited key or endpoint)
expect() {
  local name=$1 want=$2 errsub=$3; shift 4
  env -u TALLY_WRITE_KEY -u TALLY_ENDPOINT "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ "$rc" -ne "$want" ]; then bad "$name" "exit $rc, wanted $want; stderr: $(cat "$dir/err")"; return; fi
  if [ -n "$errsub" ] && ! grep -qF -- "$errsub" "$dir/err"; then bad "$name" "stderr lacks '$errsub': $(cat "$dir/err")"; return; fi
  if [ "$want" -eq 2 ] && [ "$(wc -l <"$dir/err")" -ne 1 ]; then bad "$name" "error is not one line: $(cat "$dir/err")"; return; fi
  ok "$name"
}
# has NAME FILE TEXT: the file contains TEXT
has()  { grep -qF -- "$3" "$2" && ok "$1" || bad "$1" "no '$3' in: $(head -c 2000 "$2")"; }
hasnt() { ! grep -qF -- "$3" "$2" && ok "$1" || bad "$1" "'$3' found in: $(head -c 2000 "$2")"; }

# ---- --version / -V, --help / -h: exit 0 on stdout, for every command ----
for form in --version -V version "track --version"; do
  # shellcheck disable=SC2086
  expect "version_${form// /_}" 0 "" -- "$TALLY" $form
  grep -qE '^tally [0-9]+\.[0-9]+\.[0-9]+$' "$dir/out" && ok "version_${form// /_}_text" || bad "version_${form// /_}_text" "$(cat "$dir/out")"
done
for form in --help -h help "help track" "track --help" "send -h" "check --help" "inspect --help" "--type=group --help"; do
  # shellcheck disable=SC2086
  expect "help_${form// /_}" 0 "" -- "$TALLY" $form
  grep -q '^usage: tally' "$dir/out" && grep -q 'TALLY_WRITE_KEY' "$dir/out" && grep -q 'TALLY_ENDPOINT' "$dir/out" \
    && grep -q '^exit codes:' "$dir/out" && grep -qE '^  2  bad usage' "$dir/out" \
    && ok "help_${form// /_}_lists_env_and_exit_codes" || bad "help_${form// /_}_lists_env_and_exit_codes" "$(cat "$dir/out")"
done
expect help_track_is_about_track 0 "" -- "$TALLY" track --help
has help_track_names_event "$dir/out" "tally track --event=E"
hasnt help_track_omits_inspect "$dir/out" "tally inspect STORE"
expect help_unknown_topic 2 'did you mean "track"' -- "$TALLY" help trakc

# ---- stray arguments and unknown flags: exit 2, one line, a guess for near misses ----
expect stray_argument 2 'unexpected argument "u1": track takes no file arguments' -- "$TALLY" track --event=E u1 --out="$dir/s.nd"
[ ! -s "$dir/s.nd" ] && ok stray_argument_sends_nothing || bad stray_argument_sends_nothing "$(cat "$dir/s.nd")"
expect stray_second_file 2 'unexpected argument "b.nd": send takes one file' -- "$TALLY" send a.nd b.nd --out="$dir/s.nd"
expect inspect_needs_store 2 "inspect: expected a store path" -- "$TALLY" inspect
expect unknown_flag_near_field 2 "unknown flag --evnt (did you mean --event?)" -- "$TALLY" track --evnt=E --userId=u --out="$dir/s.nd"
expect unknown_flag_near_key 2 "unknown flag --flush_att (did you mean --flush_at?)" -- "$TALLY" track --flush_att=3 --event=E --userId=u --out="$dir/s.nd"
expect unknown_flag_near_camel 2 "unknown flag --flushAtt (did you mean --flush_at?)" -- "$TALLY" track --flushAtt=3 --event=E --userId=u --out="$dir/s.nd"
expect unknown_flag_no_guess 2 "unknown flag --colour" -- "$TALLY" track --colour=red --event=E --userId=u --out="$dir/s.nd"
hasnt unknown_flag_no_wild_guess "$dir/err" "did you mean"
expect unknown_short_flag 2 "unknown flag -x" -- "$TALLY" track -x --event=E --userId=u --out="$dir/s.nd"
expect unknown_command_near 2 'unknown command "idnetify" (did you mean "identify"?)' -- "$TALLY" idnetify --userId=u
expect version_takes_no_value 2 "--version: takes no value" -- "$TALLY" --version=2

# ---- camelCase configuration flags: Segment's names ----
expect camel_flush_at_checked 2 "flush_at: expected an integer from 1 to 10000" -- "$TALLY" track --flushAt=0 --event=E --userId=u --out="$dir/s.nd"
rm -f "$dir/camel.nd"
expect camel_flags_accepted 0 "" -- "$TALLY" track --flushAt=5 --flushInterval=100 --maxRetries=2 --event=E --userId=u --out="$dir/camel.nd"
has camel_flags_deliver "$dir/camel.nd" '"event":"E"'

# ---- timestamps: ISO-8601 or exit 2 naming the flag; nothing written ----
rm -f "$dir/ts.nd"
expect timestamp_not_iso 2 "--timestamp: expected an ISO-8601 date and time" -- "$TALLY" track --event=E --userId=u --timestamp=notatime --out="$dir/ts.nd"
expect timestamp_no_zone 2 "--timestamp: expected an ISO-8601" -- "$TALLY" track --event=E --userId=u --timestamp=2024-01-01T00:00:00 --out="$dir/ts.nd"
[ ! -s "$dir/ts.nd" ] && ok bad_timestamp_writes_nothing || bad bad_timestamp_writes_nothing "$(cat "$dir/ts.nd")"
expect timestamp_with_offset 0 "" -- "$TALLY" track --event=E --userId=u --timestamp=2024-01-01T01:00:00+01:00 --out="$dir/ts.nd"
has timestamp_kept_as_given "$dir/ts.nd" '"timestamp":"2024-01-01T01:00:00+01:00"'
printf '%s\n' '{"type":"track","event":"A","userId":"u1","timestamp":"yesterday"}' >"$dir/badts.ndjson"
expect send_bad_timestamp 2 "line 1: timestamp: expected an ISO-8601" -- "$TALLY" send --out="$dir/ts2.nd" "$dir/badts.ndjson"

# ---- send: messages carry their own ids; no device identity unless --mode=client ----
printf '%s\n' '{"type":"track","event":"A","userId":"u1"}' '{"type":"page","anonymousId":"a2","name":"Home"}' >"$dir/in.ndjson"
rm -f "$dir/srv.nd" "$dir/srv.db"
expect send_with_store 0 "" -- "$TALLY" send --store="$dir/srv.db" --out="$dir/srv.nd" "$dir/in.ndjson"
[ "$(wc -l <"$dir/srv.nd")" -eq 2 ] && ok send_with_store_delivers_both || bad send_with_store_delivers_both "$(cat "$dir/srv.nd")"
grep -c '"anonymousId"' "$dir/srv.nd" | grep -qx 1 && ok send_keeps_only_the_callers_ids || bad send_keeps_only_the_callers_ids "$(cat "$dir/srv.nd")"
hasnt send_with_store_adds_no_session "$dir/srv.nd" '"session"'
rm -f "$dir/cli.nd" "$dir/cli.db"
expect send_mode_client 0 "" -- "$TALLY" send --mode=client --store="$dir/cli.db" --out="$dir/cli.nd" "$dir/in.ndjson"
[ "$(grep -c '"session"' "$dir/cli.nd")" -eq 2 ] && [ "$(grep -c '"anonymousId"' "$dir/cli.nd")" -eq 2 ] \
  && ok send_mode_client_stamps_the_device || bad send_mode_client_stamps_the_device "$(cat "$dir/cli.nd")"
expect send_stdin_dash 0 "" -- sh -c "'$TALLY' send --out='$dir/dash.nd' - < '$dir/in.ndjson'"
[ "$(wc -l <"$dir/dash.nd")" -eq 2 ] && ok send_dash_reads_stdin || bad send_dash_reads_stdin "$(cat "$dir/dash.nd")"

# ---- check: passed / dropped / invalid / violations / errors, and ctx:log lines ----
mkdir -p "$dir/rules"
cat >"$dir/rules/10_lower.lua" <<'LUA'
return { name = "lower", process = function(m, ctx)
  ctx:log("info", "looked at " .. m.event)
  if m.event ~= m.event:lower() then ctx:violation("naming.case", "not lower case: " .. m.event) end
  if m.event == "blocked" then return nil end
  if m.event == "boom" then error("kaput") end
  m.event = m.event:lower()
  return m end }
LUA
printf '%s\n' '{"type":"track","event":"Button Clicked","userId":"u"}' >"$dir/violation.ndjson"
expect check_violation_only 0 "" -- "$TALLY" check --rules="$dir/rules" "$dir/violation.ndjson"
has check_violation_shown "$dir/out" "violation [lower] naming.case: not lower case: Button Clicked"
has check_violation_counted "$dir/out" "1 message checked: 1 passed (1 with violations), 0 dropped, 0 invalid; 1 violation, 0 script errors"
hasnt check_never_says_all_passed "$dir/out" "all passed"
has check_shows_ctx_log "$dir/out" "log [info] rule lower: looked at Button Clicked"
printf '%s\n' '{"type":"track","event":"ok","userId":"u"}' '{"type":"track","event":"blocked","userId":"u"}' \
  '{"type":"track","event":"boom","userId":"u"}' 'not json' >"$dir/mixed.ndjson"
expect check_mixed_exits_1 1 "" -- "$TALLY" check --rules="$dir/rules" "$dir/mixed.ndjson"
has check_mixed_counts "$dir/out" "4 messages checked: 1 passed (0 with violations), 2 dropped, 1 invalid; 0 violations, 1 script error"
[ "$(grep -c 'kaput' "$dir/out")" -eq 1 ] && ok check_error_printed_once || bad check_error_printed_once "$(cat "$dir/out")"

# ---- inspect --json: one schema, every counter present, zero or not ----
expect inspect_json 0 "" -- "$TALLY" inspect "$dir/srv.db" --json
"$PY" - "$dir/out" <<'PY' && ok inspect_json_schema || bad inspect_json_schema "$(cat "$dir/out")"
import json, sys
d = json.load(open(sys.argv[1]))
assert set(d) == {"store", "destinations", "rule_drops", "rules_remote"}, d
assert d["rules_remote"] is None, d
assert d["rule_drops"] == {"total": 0, "by_rule": 0, "failed_closed": 0, "disabled": 0, "rules": []}, d
assert len(d["destinations"]) == 1, d
for dest in d["destinations"]:
    assert set(dest) == {"name", "queued", "delivered", "retried", "dead_lettered", "dropped", "consent_purged", "forgotten",
                         "dead_pruned", "recent_dead"}, dest
    assert all(isinstance(dest[k], int) for k in ("queued", "delivered", "retried", "dead_lettered", "dropped",
                                                  "consent_purged", "forgotten", "dead_pruned")), dest
    assert dest["delivered"] == 2 and dest["retried"] == 0 and dest["dead_lettered"] == 0 and dest["dropped"] == 0, dest
PY
hasnt inspect_json_one_name_for_dead_letters "$dir/out" '"dead_letters"'

# ---- inspect: what rules dropped, per rule and reason class, read back after the process exited ----
mkdir -p "$dir/gate"
cat >"$dir/gate/10_gate.lua" <<'LUA'
return { name = "gate", types = { "track" }, process = function(m)
  if m.event == "Spam" then return nil end
  error("plan check broke") end }
LUA
# Spam: dropped by the rule; two Buys fail closed and the breaker (2) disables it; then a Buy and a
# Spam are dropped because it is disabled; the identify is not its type and passes
for ev in Spam Buy Buy Buy Spam; do printf '{"type":"track","event":"%s","userId":"u"}\n' "$ev"; done >"$dir/gate.ndjson"
printf '%s\n' '{"type":"identify","userId":"u"}' >>"$dir/gate.ndjson"
expect gate_send_reports_drops 1 "5 messages dropped by a rule" -- "$TALLY" send --store="$dir/gate.db" --out="$dir/gate.out" \
  --rules="$dir/gate" --rule_breaker=2 "$dir/gate.ndjson"
expect inspect_rule_drops_table 0 "" -- "$TALLY" inspect "$dir/gate.db"
has inspect_rule_drops_header "$dir/out" "messages dropped by rules"
grep -qE '^gate +5 +1 +2 +2$' "$dir/out" && ok inspect_rule_drops_per_rule || bad inspect_rule_drops_per_rule "$(cat "$dir/out")"
grep -qE '^\(all rules\) +5 +1 +2 +2$' "$dir/out" && ok inspect_rule_drops_total || bad inspect_rule_drops_total "$(cat "$dir/out")"
expect inspect_rule_drops_json 0 "" -- "$TALLY" inspect "$dir/gate.db" --json
"$PY" - "$dir/out" <<'PY' && ok inspect_rule_drops_json_counts || bad inspect_rule_drops_json_counts "$(cat "$dir/out")"
import json, sys
d = json.load(open(sys.argv[1]))
want = {"total": 5, "by_rule": 1, "failed_closed": 2, "disabled": 2}
assert d["rule_drops"] == dict(want, rules=[dict(want, name="gate")]), d["rule_drops"]
PY

# ---- delivery judged per destination, against tests/e2e/collector.py ----
"$PY" "$SRC/tests/e2e/collector.py" --port 0 --max-seconds 300 >"$dir/port" 2>"$dir/collector.err" &
cpid=$!
port=
for _ in $(seq 1 500); do
  port=$(sed -n 's/^PORT \([0-9][0-9]*\)$/\1/p' "$dir/port")
  [ -n "$port" ] && break
  kill -0 "$cpid" 2>/dev/null || break
  sleep 0.02
done
if [ -z "$port" ]; then
  bad collector_started "$(cat "$dir/collector.err")"
else
  URL=http://127.0.0.1:$port
  ctl() { curl -s --noproxy '*' -m 5 -X POST -H 'Content-Type: application/json' -d "$2" "$URL$1" >/dev/null; }
  accepted() { curl -s --noproxy '*' -m 5 "$URL/received?summary=1" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['accepted_messages'])"; }
  # Segment's names and an endpoint copied with its path
  expect camel_writekey_host_v1_batch 0 "" -- "$TALLY" track --writeKey=K --host="$URL/v1/batch" --userId=u --event=E
  [ "$(accepted)" = 1 ] && ok endpoint_path_not_doubled || bad endpoint_path_not_doubled "accepted $(accepted)"
  # a clean file destination must not hide the collector's refusal
  ctl /reset '{}'
  ctl /control '{"default":{"status":400}}'
  rm -f "$dir/clean.nd"
  expect one_refusing_destination_fails 1 "segment:$URL refused 1 message" -- \
    "$TALLY" track --writeKey=K --endpoint="$URL" --out="$dir/clean.nd" --userId=u --event=E
  [ "$(wc -l <"$dir/clean.nd")" -eq 1 ] && ok the_clean_destination_still_got_it || bad the_clean_destination_still_got_it "$(cat "$dir/clean.nd")"
  hasnt the_clean_destination_is_not_blamed "$dir/err" "file:"
  ctl /reset '{}'
  printf '%s\n' '{"type":"track","event":"A","userId":"u1"}' '{"type":"track","event":"B","userId":"u1"}' >"$dir/two.ndjson"
  ctl /control '{"default":{"status":400}}'
  expect send_refused_fails 1 "refused 2 messages" -- "$TALLY" send --writeKey=K --endpoint="$URL" --out="$dir/clean2.nd" "$dir/two.ndjson"
  ctl /reset '{}'
  expect send_accepted_passes 0 "" -- "$TALLY" send --writeKey=K --endpoint="$URL" --out="$dir/clean3.nd" "$dir/two.ndjson"
fi

# a rule that drops the one-shot message: not delivered, said so, exit 1
cat >"$dir/rules/20_drop.lua" <<'LUA'
return { name = "drop_all", process = function(m) return nil end }
LUA
rm -f "$dir/rules/10_lower.lua"
expect rule_drop_is_not_delivery 1 "1 message dropped by a rule" -- "$TALLY" track --rules="$dir/rules" --userId=u --event=E --out="$dir/d.nd"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
