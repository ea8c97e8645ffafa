#!/usr/bin/env bash
# `tally rules keygen|pack|verify|test`: signed rule bundles from the operator's side
# (docs/bundles.md). The byte-level and field-level refusals are in tests/c/test_bundle.c.
set -u
TALLY=${TALLY_BIN:-build/release/tally}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }

# expect NAME WANT_EXIT OUTPUT_SUBSTRING -- command...   (the substring is looked for in stdout+stderr)
expect() {
  local name=$1 want=$2 sub=$3; shift 4
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ "$rc" -ne "$want" ]; then bad "$name" "exit $rc, wanted $want; $(cat "$dir/out" "$dir/err")"; return 1; fi
  if [ -n "$sub" ] && ! cat "$dir/out" "$dir/err" | grep -qF -- "$sub"; then
    bad "$name" "output lacks '$sub': $(cat "$dir/out" "$dir/err")"; return 1
  fi
  if [ "$want" -ne 0 ] && [ "$(wc -l <"$dir/err")" -ne 1 ]; then bad "$name" "error is not one line: $(cat "$dir/err")"; return 1; fi
  ok "$name"
}

mkdir -p "$dir/rules"
cat >"$dir/rules/10_names.lua" <<'LUA'
return {
  name = "names",
  process = function(msg, ctx)
    if msg.event == "bot ping" then return nil end
    if msg.event == "signup" then msg.event = ctx.config.signup_name end
    return msg
  end,
}
LUA
cat >"$dir/rules/20_pii.lua" <<'LUA'
return {
  name = "pii",
  stage = "enrichment",
  process = function(msg, ctx)
    if msg.properties and msg.properties.email then
      msg.properties.email = nil
      ctx:violation("pii_email", "properties.email removed")
    end
    return msg
  end,
}
LUA
echo 'not a rule, not packed' >"$dir/rules/README.txt"
echo '{"names":{"signup_name":"Signed Up"}}' >"$dir/config.json"
cat >"$dir/tests.json" <<'JSON'
[
  {"name": "signup is renamed", "input": {"type": "track", "event": "signup", "userId": "u1"},
   "output": {"type": "track", "event": "Signed Up", "userId": "u1"}},
  {"name": "bots are dropped", "input": {"type": "track", "event": "bot ping"}, "drop": true},
  {"name": "email is removed and flagged",
   "input": {"type": "track", "event": "x", "properties": {"email": "a@b.c", "plan": "pro"}},
   "output": {"properties": {"plan": "pro"}}, "absent": ["properties.email"], "violations": ["pii_email"]}
]
JSON

# ---- keygen
expect keygen 0 "ed25519:" -- "$TALLY" rules keygen "$dir/k1"
pub1=$(head -n 1 "$dir/out")
[ "$(stat -c %a "$dir/k1")" = 600 ] && ok keygen_mode_0600 || bad keygen_mode_0600 "$(stat -c %a "$dir/k1")"
cp "$dir/k1" "$dir/k1.before"
expect keygen_refuses_overwrite 2 "k1: already exists (not replaced)" -- "$TALLY" rules keygen "$dir/k1"
cmp -s "$dir/k1" "$dir/k1.before" && ok keygen_left_key_unchanged || bad keygen_left_key_unchanged "the key file changed"
# the public key printed is the private key's own (as OpenSSL derives it)
if command -v openssl >/dev/null; then
  derived="ed25519:$(openssl pkey -in "$dir/k1" -pubout -outform DER | tail -c 32 | base64)"
  [ "$derived" = "$pub1" ] && ok keygen_public_key_matches_openssl || bad keygen_public_key_matches_openssl "$derived vs $pub1"
fi
"$TALLY" rules keygen "$dir/k2" >"$dir/k2.pub" 2>/dev/null
echo "$pub1" >"$dir/k1.pub"

# ---- pack and verify
expect pack 0 "version 5, 2 scripts, 3 self-tests" -- "$TALLY" rules pack "$dir/rules" --key="$dir/k1" --version=5 \
  --tests="$dir/tests.json" --config="$dir/config.json" -o "$dir/b5.bundle"
expect verify 0 "verified: version 5" -- "$TALLY" rules verify "$dir/b5.bundle" --public-key="$pub1"
expect verify_key_from_file 0 "verified" -- "$TALLY" rules verify "$dir/b5.bundle" --public-key="$dir/k1.pub"
expect verify_wrong_key 1 "is not one of the 1 trusted public key" -- "$TALLY" rules verify "$dir/b5.bundle" --public-key="$dir/k2.pub"
expect verify_rotation_two_keys 0 "verified" -- "$TALLY" rules verify "$dir/b5.bundle" --public-key="$dir/k2.pub" --public-key="$dir/k1.pub"
"$TALLY" rules pack "$dir/rules" --key="$dir/k2" --version=6 -o "$dir/b6.bundle" >/dev/null
expect verify_rotation_new_key 0 "signed by key" -- "$TALLY" rules verify "$dir/b6.bundle" --public-key="$dir/k1.pub" --public-key="$dir/k2.pub"
expect verify_needs_a_key 2 "--public-key: required" -- "$TALLY" rules verify "$dir/b5.bundle"
expect verify_bad_key_text 2 "--public-key: public key: expected" -- "$TALLY" rules verify "$dir/b5.bundle" --public-key=ed25519:abc

# the scripts went in as `--rules=DIR` loads them: *.lua only, by name
python3 - "$dir/b5.bundle" >"$dir/files" <<'PY'
import base64, json, sys
p = json.loads(base64.b64decode(json.load(open(sys.argv[1]))["payload"]))
print(" ".join(r["file"] for r in p["rules"]), p["version"], sorted(p))
PY
grep -qF "10_names.lua 20_pii.lua 5 ['created_at', 'rule_config', 'rules', 'tests', 'version']" "$dir/files" \
  && ok pack_files_in_load_order || bad pack_files_in_load_order "$(cat "$dir/files")"

# ---- tampering: one byte in each part
tamper() { # FILE FIELD OFFSET -> FILE.t with one character of FIELD's value changed
  python3 - "$1" "$2" "$3" <<'PY'
import sys
path, field, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = bytearray(open(path, "rb").read())
i = data.index(('"%s":"' % field).encode()) + len(field) + 4 + off
# a key id is hex, so its byte changes to another hex digit (checked against the original byte:
# flipping twice could land back on it)
a, b = ("0", "1") if field == "key_id" else ("B", "C")
data[i] = ord(a) if data[i] != ord(a) else ord(b)
open(path + ".t", "wb").write(data)
PY
}
tamper "$dir/b5.bundle" payload 100
expect tampered_payload 1 "signature: does not verify" -- "$TALLY" rules verify "$dir/b5.bundle.t" --public-key="$pub1"
tamper "$dir/b5.bundle" signature 20
expect tampered_signature 1 "signature: does not verify" -- "$TALLY" rules verify "$dir/b5.bundle.t" --public-key="$pub1"
tamper "$dir/b5.bundle" key_id 5
expect tampered_key_id 1 "key_id:" -- "$TALLY" rules verify "$dir/b5.bundle.t" --public-key="$pub1"
sed 's/"format":1,/"format":1, /' "$dir/b5.bundle" >"$dir/b5.bundle.t"
expect reformatted_envelope 1 "not in the exact form" -- "$TALLY" rules verify "$dir/b5.bundle.t" --public-key="$pub1"
# `rules test` verifies first: a tampered bundle runs no test at all
tamper "$dir/b5.bundle" payload 100
expect test_refuses_tampered_bundle 1 "signature: does not verify" -- "$TALLY" rules test "$dir/b5.bundle.t" --public-key="$pub1"
grep -qE '^(ok|FAIL) ' "$dir/out" && bad tampered_bundle_ran_nothing "$(cat "$dir/out")" || ok tampered_bundle_ran_nothing
echo '{"format":1,"key_id":"0123456789abcdef"' >"$dir/bad.bundle"
expect malformed_json 1 "bundle: invalid JSON" -- "$TALLY" rules verify "$dir/bad.bundle" --public-key="$pub1"
echo '{"format":1,"key_id":"0123456789abcdef","signature":""}' >"$dir/bad.bundle"
expect missing_field_named 1 "payload: missing" -- "$TALLY" rules verify "$dir/bad.bundle" --public-key="$pub1"
echo '{"format":"1"}' >"$dir/bad.bundle"
expect wrong_type_named 1 "format: expected an integer" -- "$TALLY" rules verify "$dir/bad.bundle" --public-key="$pub1"
# over the cap: refused from its size alone (the content is not even JSON)
head -c 1048577 /dev/zero >"$dir/big.bundle"
expect oversize_refused_before_parsing 1 "1048577 bytes, over the 1048576-byte limit" -- \
  "$TALLY" rules verify "$dir/big.bundle" --public-key="$pub1"

# ---- self-tests
expect test_passes 0 "3 self-tests, 3 passed, 0 failed" -- "$TALLY" rules test "$dir/b5.bundle" --public-key="$pub1"
for t in "signup is renamed" "bots are dropped" "email is removed and flagged"; do
  grep -qxF "ok   $t" "$dir/out" && ok "test_line_$t" || bad "test_line_$t" "$(cat "$dir/out")"
done
expect test_with_private_key 0 "3 passed" -- "$TALLY" rules test "$dir/b5.bundle" --key="$dir/k1"
expect test_needs_a_key 2 "no script of an unverified bundle is run" -- "$TALLY" rules test "$dir/b5.bundle"

# failing_case NAME TESTS_JSON WANT_LINE: a bundle whose one self-test must fail with WANT_LINE
failing_case() {
  echo "$2" >"$dir/t.json"
  rm -f "$dir/t.bundle"
  "$TALLY" rules pack "$dir/rules" --key="$dir/k1" --version=9 --tests="$dir/t.json" --config="$dir/config.json" \
    -o "$dir/t.bundle" >/dev/null 2>"$dir/pack.err" || { bad "$1" "pack: $(cat "$dir/pack.err")"; return; }
  "$TALLY" rules test "$dir/t.bundle" --public-key="$pub1" >"$dir/out" 2>&1; local rc=$?
  if [ "$rc" -eq 1 ] && grep -qF -- "$3" "$dir/out" && grep -qF "1 passed, 1 failed" "$dir/out"; then ok "$1"
  else bad "$1" "exit $rc: $(cat "$dir/out")"; fi
}
PASSING='{"name": "passes", "input": {"type": "track", "event": "a", "userId": "u"}, "drop": false}'
failing_case test_fails_on_other_output "[$PASSING, {\"name\": \"wrong name\", \"input\": {\"type\": \"track\", \"event\": \"signup\", \"userId\": \"u\"}, \"output\": {\"event\": \"Sign Up\"}}]" \
  'FAIL wrong name: output.event: expected "Sign Up", got "Signed Up"'
failing_case test_fails_when_drop_did_not_happen "[$PASSING, {\"name\": \"not dropped\", \"input\": {\"type\": \"track\", \"event\": \"human\", \"userId\": \"u\"}, \"drop\": true}]" \
  'FAIL not dropped: drop: expected the message dropped; 1 message came out'
failing_case test_fails_when_violation_missing "[$PASSING, {\"name\": \"no flag\", \"input\": {\"type\": \"track\", \"event\": \"x\", \"userId\": \"u\"}, \"violations\": [\"pii_email\"]}]" \
  'FAIL no flag: violations: "pii_email" was not reported (reported: none)'
failing_case test_fails_on_unexpected_drop "[$PASSING, {\"name\": \"dropped\", \"input\": {\"type\": \"track\", \"event\": \"bot ping\", \"userId\": \"u\"}, \"output\": {}}]" \
  'FAIL dropped: dropped by [names]'
failing_case test_fails_when_field_still_present "[$PASSING, {\"name\": \"kept\", \"input\": {\"type\": \"track\", \"event\": \"x\", \"userId\": \"u\", \"properties\": {\"phone\": 1}}, \"absent\": [\"properties.phone\"]}]" \
  'FAIL kept: absent: properties.phone is still in the result'

# a bundle whose scripts do not load fails the test, naming the script, not the temporary folder
mkdir -p "$dir/broken"
echo 'return {name = "broken", process = function(m) return m end' >"$dir/broken/10_broken.lua"
"$TALLY" rules pack "$dir/broken" --key="$dir/k1" --version=2 -o "$dir/broken.bundle" >/dev/null 2>&1
expect test_script_does_not_load 1 "the rules do not load: 10_broken.lua:" -- "$TALLY" rules test "$dir/broken.bundle" --public-key="$pub1"
grep -q "tally-bundle-" "$dir/err" && bad test_hides_temp_dir "$(cat "$dir/err")" || ok test_hides_temp_dir

# ---- pack refusals name the flag or the file
expect pack_needs_key 2 "--key: required" -- "$TALLY" rules pack "$dir/rules" --version=1 -o "$dir/x.bundle"
expect pack_needs_version 2 "--version: required" -- "$TALLY" rules pack "$dir/rules" --key="$dir/k1" -o "$dir/x.bundle"
expect pack_bad_version 2 "--version: expected an integer from 1" -- "$TALLY" rules pack "$dir/rules" --key="$dir/k1" --version=0 -o "$dir/x.bundle"
expect pack_needs_out 2 "-o: required" -- "$TALLY" rules pack "$dir/rules" --key="$dir/k1" --version=1
expect pack_public_key_is_not_private 2 "--key" -- "$TALLY" rules pack "$dir/rules" --key="$dir/k1.pub" --version=1 -o "$dir/x.bundle"
echo '[{"name": "t", "input": {"type": "track", "event": "a"}, "drop": "yes"}]' >"$dir/badtests.json"
expect pack_bad_tests_named 2 "tests[0].drop: expected true or false" -- "$TALLY" rules pack "$dir/rules" --key="$dir/k1" --version=1 \
  --tests="$dir/badtests.json" -o "$dir/x.bundle"
echo '[]' >"$dir/badconfig.json"
expect pack_config_not_object 2 "--config: expected a JSON object" -- "$TALLY" rules pack "$dir/rules" --key="$dir/k1" --version=1 \
  --config="$dir/badconfig.json" -o "$dir/x.bundle"
[ ! -e "$dir/x.bundle" ] && ok pack_failures_write_nothing || bad pack_failures_write_nothing "x.bundle exists"
mkdir -p "$dir/badname"
echo 'return {name = "x", process = function(m) return m end}' >"$dir/badname/my rule.lua"
expect pack_bad_file_name 2 "my rule.lua: a bundle's file names are" -- "$TALLY" rules pack "$dir/badname" --key="$dir/k1" --version=1 -o "$dir/x.bundle"
expect unknown_subcommand 2 "unknown subcommand" -- "$TALLY" rules sign "$dir/rules"
expect unknown_flag 2 "--colour: unknown flag" -- "$TALLY" rules verify "$dir/b5.bundle" --colour=red
expect rules_help 0 "tally rules pack DIR --key=KEYFILE --version=N" -- "$TALLY" rules --help

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
