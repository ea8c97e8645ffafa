#!/usr/bin/env bash
# `tally consent --store=S JSON`: merges the device's preferences into the store, as the application
# would, so held messages are released to the destinations they grant and purged for the others
# (counted by `tally inspect`); bad preferences are exit 2 naming the field, and change nothing.
set -u
TALLY=${TALLY_BIN:-build/release/tally}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }
T=$(cd "$(dirname "$TALLY")" && pwd)/$(basename "$TALLY")
run() { (cd "$dir" && env -u TALLY_WRITE_KEY -u TALLY_ENDPOINT "$@") >"$dir/out" 2>"$dir/err"; }
lines() { if [ -f "$dir/$1" ]; then wc -l <"$dir/$1" | tr -d ' '; else echo 0; fi; }
# counter NAME_SUFFIX FIELD: from `tally inspect --json`
counter() {
  "$T" inspect "$dir/s.db" --json | python3 -c '
import json, sys
for d in json.load(sys.stdin)["destinations"]:
    if d["name"].endswith(sys.argv[1]): print(d[sys.argv[2]])' "$1" "$2"
}

D='[{"type":"file","path":"a.ndjson","consent":"analytics"},{"type":"file","path":"b.ndjson","consent":["advertising"]}]'

run "$T" track --store=s.db --destinations="$D" --consent_required=true --userId=u --event=Held
rc=$?
if [ "$rc" -eq 0 ] && [ "$(lines a.ndjson)" = 0 ] && [ "$(counter a.ndjson queued)" = 1 ] && [ "$(counter b.ndjson queued)" = 1 ]; then
  ok held_before_the_first_decision
else
  bad held_before_the_first_decision "exit $rc, a: $(lines a.ndjson) lines, queued $(counter a.ndjson queued); $(cat "$dir/err")"
fi

run "$T" consent --store=s.db --destinations="$D" --consent_required=true '{"analytics":1}'
rc=$?
if [ "$rc" -eq 2 ] && grep -qF "consent.analytics: expected true or false" "$dir/err" && [ "$(counter a.ndjson queued)" = 1 ]; then
  ok bad_preferences_exit_2_and_change_nothing
else
  bad bad_preferences_exit_2_and_change_nothing "exit $rc: $(cat "$dir/err")"
fi

# refused NAME WANT_STDERR -- args: exit 2, one line naming the field and what it expects, the store
# byte for byte as it was (no process has it open between runs)
refused() {
  local name=$1 want=$2; shift 3
  local before; before=$(sha256sum "$dir/s.db" | cut -c1-64)
  run "$T" "$@"; local rc=$?
  local after; after=$(sha256sum "$dir/s.db" | cut -c1-64)
  if [ "$rc" -eq 2 ] && [ "$(wc -l <"$dir/err")" -eq 1 ] && grep -qF -- "$want" "$dir/err" && [ "$before" = "$after" ]; then ok "$name"
  else bad "$name" "exit $rc, store $([ "$before" = "$after" ] && echo same || echo changed): $(cat "$dir/err")"; fi
}
refused consent_array_is_refused "consent: expected an object of category id -> true/false" -- \
  consent --store=s.db --destinations="$D" '[1]'
refused consent_number_value_is_refused "consent.a: expected true or false" -- consent --store=s.db --destinations="$D" '{"a":1}'
refused consent_empty_object_is_refused "consent: an empty object changes nothing" -- \
  consent --store=s.db --destinations="$D" '{}'
refused consent_default_maybe_is_refused 'consent_default: expected one of grant, deny, got "maybe"' -- \
  track --store=s.db --destinations="$D" --consent_default=maybe --event=E
refused consent_required_yes_is_refused 'consent_required: expected true or false, got "yes"' -- \
  track --store=s.db --destinations="$D" --consent_required=yes --event=E
refused rules_url_without_key_is_refused "rules_public_key: required with rules_url" -- \
  track --store=s.db --destinations="$D" --rules_url=https://rules.invalid/b --event=E
refused short_public_key_is_refused 'rules_public_key: public key: expected "ed25519:" and the base64 of 32 bytes' -- \
  track --store=s.db --destinations="$D" --rules_public_key=ed25519:AAAA --event=E
refused negative_dead_letter_rows_are_refused 'dead_letter_max_rows: expected an integer from 0 to' -- \
  track --store=s.db --destinations="$D" --dead_letter_max_rows=-5 --event=E
refused canary_over_1_is_refused 'rules_canary: expected a number from 0 to 1, got "2"' -- \
  track --store=s.db --destinations="$D" --rules_canary=2 --event=E
refused poll_0_is_refused 'rules_poll_s: expected an integer from 1 to 86400, got "0"' -- \
  track --store=s.db --destinations="$D" --rules_poll_s=0 --event=E

run "$T" consent --destinations="$D" '{"analytics":true}'
rc=$?
if [ "$rc" -eq 2 ] && grep -qF -- "--store: required" "$dir/err"; then ok store_required; else bad store_required "exit $rc: $(cat "$dir/err")"; fi

# without --consent_required: the command holds what is queued until it has applied the decision
run "$T" consent --store=s.db --destinations="$D" '{"analytics":true,"advertising":false}'
rc=$?
if [ "$rc" -eq 0 ] && [ "$(lines a.ndjson)" = 1 ] && [ "$(lines b.ndjson)" = 0 ] && [ "$(counter b.ndjson consent_purged)" = 1 ] \
   && [ "$(counter b.ndjson queued)" = 0 ]; then
  ok first_decision_releases_and_purges
else
  bad first_decision_releases_and_purges "exit $rc, a: $(lines a.ndjson), b: $(lines b.ndjson), purged $(counter b.ndjson consent_purged); $(cat "$dir/err")"
fi

# kept in the store: a later run stamps them
run "$T" track --store=s.db --destinations="$D" --consent_required=true --userId=u --event=Later
if [ "$(lines a.ndjson)" = 2 ] && tail -1 "$dir/a.ndjson" | grep -qF '"categoryPreferences":{"analytics":true,"advertising":false}'; then
  ok preferences_kept_for_later_runs
else
  bad preferences_kept_for_later_runs "a: $(lines a.ndjson) lines: $(tail -1 "$dir/a.ndjson" 2>/dev/null)"
fi

"$T" consent --help >"$dir/out" 2>&1
if grep -qF "tally consent --store=S" "$dir/out"; then ok help; else bad help "$(cat "$dir/out")"; fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
