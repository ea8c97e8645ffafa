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
