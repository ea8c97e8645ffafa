#!/usr/bin/env bash
# The tally CLI over HTTP: one-shot delivery to tests/e2e/collector.py, exit codes, what the
# one-shot mode puts in a message, and that the write key stays out of the output.
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

# ---- the collector: port 0, read its "PORT n" line ----
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
  echo "FAIL collector did not start: $(cat "$dir/collector.err")"
  echo "0 passed, 1 failed"
  exit 1
fi
URL=http://127.0.0.1:$port
KEY=wk_cli_SECRET_4b1d

ctl()      { curl -s --noproxy '*' -m 5 -X POST -H 'Content-Type: application/json' -d "$2" "$URL$1" >/dev/null; }
received() { curl -s --noproxy '*' -m 5 "$URL/received"; }
# query PYTHON_EXPR: evaluates the expression with d = the /received document; prints the result
query()    { received | "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# run NAME -- command...: runs with no inherited key or endpoint, captures exit, stdout, stderr
run() {
  local name=$1; shift 2
  env -u TALLY_WRITE_KEY -u TALLY_ENDPOINT "$@" >"$dir/$name.out" 2>"$dir/$name.err"
  echo $? >"$dir/$name.rc"
}
rc_of()  { cat "$dir/$1.rc"; }
err_of() { cat "$dir/$1.err"; }

# ---- delivered: exit 0 only once the collector has it ----
ctl /reset ''
run track -- TALLY_ENDPOINT="$URL" "$TALLY" --writeKey="$KEY" --type=track --userId=u1 --event=E --properties='{}'
# read /received right after exit, without waiting: the CLI returns only after the acknowledgement
accepted=$(query 'd["accepted_messages"]')
[ "$(rc_of track)" -eq 0 ] && ok track_exits_0 || bad track_exits_0 "exit $(rc_of track): $(err_of track)"
[ "$accepted" = 1 ] && ok track_received_before_exit || bad track_received_before_exit "accepted=$accepted"
[ ! -s "$dir/track.err" ] && ok track_is_quiet || bad track_is_quiet "$(err_of track)"
got=$(query '[(m["type"], m["event"], m["userId"], m["properties"]) for r in d["requests"] for m in r["messages"]]')
[ "$got" = "[('track', 'E', 'u1', {})]" ] && ok track_message_fields || bad track_message_fields "$got"
got=$(query '(d["requests"][0]["path"], d["requests"][0]["auth_user"], d["requests"][0]["auth_password"], d["requests"][0]["content_type"], d["requests"][0]["user_agent"].startswith("tally/"))')
[ "$got" = "('/v1/batch', '$KEY', '', 'application/json', True)" ] && ok track_request_headers || bad track_request_headers "$got"

# ---- one-shot mode: context holds the library and nothing else; no anonymousId, no session ----
got=$(query 'sorted(d["requests"][0]["messages"][0]["context"].keys())')
[ "$got" = "['library']" ] && ok single_shot_context_is_library_only || bad single_shot_context_is_library_only "$got"
got=$(query 'd["requests"][0]["messages"][0]["context"]["library"]["name"]')
[ "$got" = tally ] && ok single_shot_library_name || bad single_shot_library_name "$got"
got=$(query '[k for k in ("anonymousId", "session", "traits") if k in d["requests"][0]["messages"][0]]')
[ "$got" = "[]" ] && ok single_shot_no_anonymous_id || bad single_shot_no_anonymous_id "$got"
got=$(query 'all(k in d["requests"][0]["messages"][0] for k in ("messageId", "timestamp"))')
[ "$got" = True ] && ok single_shot_stamps_id_and_timestamp || bad single_shot_stamps_id_and_timestamp "$got"

# ---- the key from the environment, the endpoint from a flag, gzip from a flag ----
ctl /reset ''
run envkey -- TALLY_WRITE_KEY="$KEY" "$TALLY" identify --userId=u2 --traits='{"plan":"pro"}' --endpoint="$URL" --gzip=true
got=$(query '(d["accepted_messages"], d["requests"][0]["auth_user"], d["requests"][0]["content_encoding"], d["requests"][0]["messages"][0]["traits"])')
[ "$(rc_of envkey)" -eq 0 ] && [ "$got" = "(1, '$KEY', 'gzip', {'plan': 'pro'})" ] && ok env_key_flag_endpoint_gzip \
  || bad env_key_flag_endpoint_gzip "exit $(rc_of envkey) $got $(err_of envkey)"

# ---- 400: refused, not retried, exit 1 with a clear message ----
ctl /reset ''
ctl /control '{"default":{"status":400}}'
run refused -- TALLY_ENDPOINT="$URL" "$TALLY" --writeKey="$KEY" --type=track --userId=u1 --event=E --properties='{}'
[ "$(rc_of refused)" -ne 0 ] && ok refused_exits_nonzero || bad refused_exits_nonzero "exit 0"
[ "$(rc_of refused)" -eq 1 ] && ok refused_exit_code_is_1 || bad refused_exit_code_is_1 "exit $(rc_of refused)"
grep -qF 'HTTP 400' "$dir/refused.err" && ok refused_names_the_status || bad refused_names_the_status "$(err_of refused)"
grep -qF 'refused' "$dir/refused.err" && ok refused_says_refused || bad refused_says_refused "$(err_of refused)"
[ "$(query 'd["total_requests"]')" = 1 ] && ok refused_not_retried || bad refused_not_retried "$(query 'd["total_requests"]') requests"

# ---- an echoed key in the server's answer stays out of stderr ----
ctl /reset ''
ctl /control "{\"default\":{\"status\":401,\"body\":{\"error\":\"invalid write key '$KEY'\"}}}"
run echoed -- TALLY_ENDPOINT="$URL" "$TALLY" --writeKey="$KEY" track --userId=u1 --event=E --log_level=debug
[ "$(rc_of echoed)" -eq 1 ] && grep -qF 'HTTP 401' "$dir/echoed.err" && ok unauthorized_exits_1 \
  || bad unauthorized_exits_1 "exit $(rc_of echoed): $(err_of echoed)"
! grep -qF "$KEY" "$dir"/*.err "$dir"/*.out && ok write_key_never_printed || bad write_key_never_printed "$(grep -F "$KEY" "$dir"/*.err "$dir"/*.out)"

# ---- still failing when --wait_ms runs out: exit 1, says it was not delivered ----
ctl /reset ''
ctl /control '{"default":{"status":503}}'
start=$(date +%s%N)
run unavailable -- TALLY_ENDPOINT="$URL" "$TALLY" --writeKey="$KEY" track --userId=u1 --event=E --wait_ms=700
took=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$(rc_of unavailable)" -eq 1 ] && grep -qF 'not delivered' "$dir/unavailable.err" && ok unavailable_exits_1 \
  || bad unavailable_exits_1 "exit $(rc_of unavailable): $(err_of unavailable)"
[ "$took" -lt 5000 ] && ok unavailable_respects_wait_ms || bad unavailable_respects_wait_ms "took ${took} ms"
[ "$(query 'd["accepted_messages"]')" = 0 ] && [ "$(query 'd["total_requests"]')" -ge 1 ] && ok unavailable_was_tried \
  || bad unavailable_was_tried "$(query '(d["accepted_messages"], d["total_requests"])')"

# ---- recovers after 500s: retried and delivered once ----
ctl /reset ''
ctl /control '{"script":[{"status":500},{"status":502}]}'
run retried -- TALLY_ENDPOINT="$URL" "$TALLY" --writeKey="$KEY" track --userId=u1 --event=Retry --retry_base_ms=10
got=$(query '(d["total_requests"], d["accepted_messages"], d["duplicates"])')
[ "$(rc_of retried)" -eq 0 ] && [ "$got" = "(3, 1, 0)" ] && ok retried_then_delivered_once \
  || bad retried_then_delivered_once "exit $(rc_of retried) $got: $(err_of retried)"

# ---- send: many lines, one batch ----
ctl /reset ''
for i in $(seq 1 25); do printf '{"type":"track","event":"L%d","userId":"u%d"}\n' "$i" "$i"; done >"$dir/in.ndjson"
run send -- TALLY_ENDPOINT="$URL" "$TALLY" send --writeKey="$KEY" "$dir/in.ndjson"
got=$(query '(d["accepted_messages"], d["duplicates"], [m["event"] for r in d["requests"] for m in r["messages"]] == ["L%d" % i for i in range(1, 26)])')
[ "$(rc_of send)" -eq 0 ] && [ "$got" = "(25, 0, True)" ] && ok send_lines_in_order || bad send_lines_in_order "exit $(rc_of send) $got"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
