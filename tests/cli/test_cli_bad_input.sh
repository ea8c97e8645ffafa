#!/usr/bin/env bash
# Bad input a stranger types: config files with a mistake (named by file and line, counted from
# 1), keys whose values contradict each other, blank write keys, oversized flags. Each is exit 2
# with a message naming the file, flag or key and the limit.
set -u
TALLY=${TALLY_BIN:-build/release/tally}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }

# expect NAME WANT_EXIT STDERR_SUBSTRING -- command...   (no inherited key or endpoint)
expect() {
  local name=$1 want=$2 errsub=$3; shift 4
  (cd "$dir" && env -u TALLY_WRITE_KEY -u TALLY_ENDPOINT "$@") >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ "$rc" -ne "$want" ]; then bad "$name" "exit $rc, wanted $want; stderr: $(cat "$dir/err")"; return; fi
  if [ -n "$errsub" ] && ! grep -qF -- "$errsub" "$dir/err"; then bad "$name" "stderr lacks '$errsub': $(cat "$dir/err")"; return; fi
  ok "$name"
}
T=$(cd "$(dirname "$TALLY")" && pwd)/$(basename "$TALLY")

# ---- config files: the file and the line (from 1) ----
printf 'return {\n  out = "a.ndjson",\n  flush_at = "abc",\n}\n' >"$dir/value.lua"
expect lua_config_bad_value_names_file_and_line 2 "value.lua:3: flush_at: expected an integer from 1 to 10000" -- \
  "$T" track --config=value.lua --userId=u --event=E
printf 'return {\n  out = "a.ndjson",\n  ["retry_cap_ms"] = -1,\n}\n' >"$dir/bracket.lua"
expect lua_config_bracket_key_line 2 'bracket.lua:3: retry_cap_ms: expected an integer from 1 to 3600000, got "-1"' -- \
  "$T" track --config=bracket.lua --userId=u --event=E
printf 'return {\n  out = "a.ndjson",\n  flush_at = ,\n}\n' >"$dir/syntax.lua"
expect lua_config_syntax_error_line 2 "syntax.lua:3:" -- "$T" track --config=syntax.lua --userId=u --event=E
printf '{\n  "out": "a.ndjson",\n  "flushAt": 0\n}\n' >"$dir/value.json"
expect json_config_bad_value_names_file_and_line 2 'value.json:3: flush_at: expected an integer from 1 to 10000, got "0"' -- \
  "$T" track --config=value.json --userId=u --event=E
printf '{\n  "out": "a.ndjson",\n  "flush_at": }\n' >"$dir/syntax.json"
expect json_config_syntax_error_line_and_column 2 "syntax.json:3:15: invalid JSON" -- \
  "$T" track --config=syntax.json --userId=u --event=E
printf '[1]\n' >"$dir/array.json"
expect json_config_not_an_object 2 "array.json: must be a JSON object of configuration keys" -- \
  "$T" track --config=array.json --userId=u --event=E
printf '{"out": "good.ndjson", "flush_at": 3, "gzip": false, "rule_config": {"x": {"y": 1}}}\n' >"$dir/good.json"
expect json_config_applies 0 "" -- "$T" track --config=good.json --userId=u --event=FromJson
if grep -q '"event":"FromJson"' "$dir/good.ndjson" 2>/dev/null; then ok json_config_delivers; else bad json_config_delivers "no FromJson in good.ndjson"; fi

# ---- keys that bound each other ----
expect retry_cap_below_base 2 "retry_cap_ms: 100 is less than retry_base_ms: 200" -- \
  "$T" track --out=o.ndjson --retry_cap_ms=100 --userId=u --event=E
expect retry_cap_equal_base_ok 0 "" -- "$T" track --out=o.ndjson --retry_base_ms=500 --retry_cap_ms=500 --userId=u --event=E
expect retry_pair_from_config_file 2 "retry_cap_ms: 300 is less than retry_base_ms: 400" -- \
  "$T" track --config=good.json --retryBaseMs=400 --retryCapMs=300 --userId=u --event=E
expect lua_memory_per_script_over_total 2 "lua_memory_per_script: 2097152 is more than lua_memory: 1048576" -- \
  "$T" track --out=o.ndjson --lua_memory=1048576 --lua_memory_per_script=2097152 --userId=u --event=E

# ---- blank write keys ----
expect blank_write_key_flag 2 "write_key: must not be blank" -- "$T" track --writeKey='  ' --userId=u --event=E
expect blank_env_write_key_with_endpoint 2 "write_key: required with endpoint (set write_key or TALLY_WRITE_KEY); TALLY_WRITE_KEY is blank" -- \
  env TALLY_WRITE_KEY=' ' "$T" track --endpoint=http://127.0.0.1:1 --userId=u --event=E
expect blank_env_write_key_segment_dest 2 "destinations: segment: write_key required (or TALLY_WRITE_KEY)" -- \
  env TALLY_WRITE_KEY="$(printf '\t')" "$T" track --destinations='[{"type":"segment","endpoint":"http://127.0.0.1:1"}]' --userId=u --event=E
expect blank_write_key_http_dest 2 "destinations: http: write_key: must not be blank" -- \
  "$T" track --destinations='[{"type":"http","url":"http://127.0.0.1:1","write_key":" "}]' --userId=u --event=E
expect blank_env_write_key_unneeded 0 "" -- env TALLY_WRITE_KEY='  ' "$T" track --out=o.ndjson --userId=u --event=E

# ---- configuration values fuzzed: wrong type, NaN, hex, huge, unicode; each names the key ----
expect fuzz_int_nan 2 'flush_at: expected an integer from 1 to 10000, got "NaN"' -- "$T" track --out=o.ndjson --flush_at=NaN --userId=u --event=E
expect fuzz_int_exponent 2 'flush_at: expected an integer from 1 to 10000, got "1e3"' -- "$T" track --out=o.ndjson --flushAt=1e3 --userId=u --event=E
expect fuzz_int_hex 2 'timeout_ms: expected an integer from 1 to 600000, got "0x10"' -- "$T" track --out=o.ndjson --timeout_ms=0x10 --userId=u --event=E
expect fuzz_int_huge 2 'max_store_rows: expected an integer from 16 to' -- "$T" track --out=o.ndjson --max_store_rows=99999999999999999999999 --userId=u --event=E
expect fuzz_int_unicode 2 'lua_memory: expected an integer from 1048576 to 17179869184' -- "$T" track --out=o.ndjson --lua_memory='　' --userId=u --event=E
expect fuzz_fraction_nan 2 'rules_canary: expected a number from 0 to 1, got "NaN"' -- "$T" track --out=o.ndjson --rules_canary=NaN --userId=u --event=E
expect fuzz_fraction_inf 2 'rules_canary_margin: expected a number from 0 to 1, got "inf"' -- "$T" track --out=o.ndjson --rules_canary_margin=inf --userId=u --event=E
expect fuzz_bool_unicode 2 'gzip: expected true or false, got "é"' -- "$T" track --out=o.ndjson --gzip=é --userId=u --event=E
expect fuzz_choice_empty 2 'mode: expected one of client, server, got ""' -- "$T" track --out=o.ndjson --mode= --userId=u --event=E
expect fuzz_out_path_huge 2 'out: 5000 bytes, over the 4095-byte path limit' -- "$T" track --out="$(head -c 5000 /dev/zero | tr '\0' 9)" --userId=u --event=E
printf 'return { out = "a.ndjson", rules_canary = 0/0 }\n' >"$dir/nan.lua"
expect fuzz_lua_config_nan 2 'nan.lua:1: rules_canary: expected a number from 0 to 1' -- "$T" track --config=nan.lua --userId=u --event=E
printf 'return { out = "a.ndjson", flush_at = math.huge }\n' >"$dir/huge.lua"
expect fuzz_lua_config_huge 2 'huge.lua:1: flush_at: expected an integer from 1 to 10000, got "inf"' -- "$T" track --config=huge.lua --userId=u --event=E
printf '{"out": "a.ndjson",\n "gzip": "yes"}\n' >"$dir/type.json"
expect fuzz_json_config_wrong_type 2 'type.json:2: gzip: expected true or false, got "yes"' -- "$T" track --config=type.json --userId=u --event=E
printf '{"out": "a.ndjson",\n "flush_at": 1e400}\n' >"$dir/overflow.json"
expect fuzz_json_config_overflow 2 'overflow.json:2:' -- "$T" track --config=overflow.json --userId=u --event=E
printf '{"out": "a.ndjson", "store": null}\n' >"$dir/null.json"
expect fuzz_json_config_null 2 'null.json:1: store: a null is not a configuration value' -- "$T" track --config=null.json --userId=u --event=E

# ---- message flags over the 32768-byte message limit: the flag is named, not "message" ----
big=$(head -c 40000 /dev/zero | tr '\0' a)
half=$(head -c 20000 /dev/zero | tr '\0' a)
edge=$(head -c 32650 /dev/zero | tr '\0' a)
expect oversized_event_names_flag 2 "--event: 40000 bytes, over the 32768-byte message limit" -- \
  "$T" track --out=o.ndjson --userId=u --event="$big"
expect oversized_name_names_flag 2 "--name: 40000 bytes, over the 32768-byte message limit" -- \
  "$T" page --out=o.ndjson --userId=u --name="$big"
expect oversized_sum_names_largest_flag 2 "--event: 20010 bytes make the message" -- \
  "$T" track --out=o.ndjson --userId=u --event="${half}xxxxxxxxxx" --properties="{\"a\":\"$half\"}"
# under the limit as typed, over it once the runtime stamped ids and context
expect oversized_once_stamped_names_flag 2 "--properties: 32658 bytes make the message" -- \
  "$T" track --out=o.ndjson --userId=u --event=E --properties="{\"a\":\"$edge\"}"

# ---- inspect in a read-only folder: reads the store, creates nothing; with a -wal file it says
# the folder is read-only. Root writes anywhere, so as root the reader is nobody (setpriv). ----
ro=$(mktemp -d /tmp/tally-ro.XXXXXX)
chmod 0711 "$ro"
trap 'chmod -R u+rwx "$ro" 2>/dev/null; rm -rf "$dir" "$ro"' EXIT
mkdir "$ro/d"
"$T" track --store="$ro/d/s.db" --out="$ro/o.ndjson" --userId=u --event=E >/dev/null 2>&1
reader=()
[ "$(id -u)" -eq 0 ] && reader=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
as_reader() { "${reader[@]}" "$@"; }
[ "$(id -u)" -eq 0 ] && chown -R nobody:nogroup "$ro/d"
as_reader chmod 0500 "$ro/d"
before=$(ls -A "$ro/d" | tr '\n' ' ')
expect inspect_read_only_folder 0 "" -- "${reader[@]}" "$T" inspect "$ro/d/s.db"
grep -qE "file:$ro/o.ndjson +0 +1 " "$dir/out" && ok inspect_read_only_counts || bad inspect_read_only_counts "$(cat "$dir/out")"
after=$(ls -A "$ro/d" | tr '\n' ' ')
[ "$before" = "$after" ] && ok inspect_read_only_creates_nothing || bad inspect_read_only_creates_nothing "$before -> $after"
as_reader chmod 0700 "$ro/d"
as_reader sh -c "printf x > '$ro/d/s.db-wal'"
as_reader chmod 0500 "$ro/d"
expect inspect_read_only_folder_with_wal 1 "s.db: its folder is read-only" -- "${reader[@]}" "$T" inspect "$ro/d/s.db"
[ "$(ls -A "$ro/d" | tr '\n' ' ')" = "s.db s.db-wal " ] && ok inspect_read_only_wal_creates_nothing || \
  bad inspect_read_only_wal_creates_nothing "$(ls -A "$ro/d")"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
