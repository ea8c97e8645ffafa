#!/usr/bin/env bash
# Configurations that tally_open refuses reach the CLI as a clear error and an exit code, never a
# crash (issue 15: an endpoint without a write key was a SIGSEGV, exit 139).
set -u
TALLY=${TALLY_BIN:-build/release/tally}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1: $2"; }

# refused NAME STDERR_SUBSTRING -- command...: exits 1 or 2 (not a signal) and says why
refused() {
  local name=$1 errsub=$2; shift 3
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ "$rc" -ne 1 ] && [ "$rc" -ne 2 ]; then bad "$name" "exit $rc; stderr: $(cat "$dir/err")"; return; fi
  if ! grep -qF -- "$errsub" "$dir/err"; then bad "$name" "stderr lacks '$errsub': $(cat "$dir/err")"; return; fi
  ok "$name"
}

refused endpoint_without_write_key_is_an_error_not_a_crash "write_key: required with endpoint" -- \
  env -u TALLY_WRITE_KEY "$TALLY" track --userId=u1 --event=E --endpoint=http://127.0.0.1:9
refused endpoint_from_the_environment_without_write_key "write_key" -- \
  env -u TALLY_WRITE_KEY TALLY_ENDPOINT=http://127.0.0.1:9 "$TALLY" track --userId=u1 --event=E
mkfifo "$dir/rules.lua"
# a FIFO as the rules file: refused at once (timeout only turns a regression into a failure)
refused fifo_as_rules_file_is_refused_without_blocking "a FIFO" -- \
  timeout 60 "$TALLY" track --userId=u1 --event=E --out="$dir/o.ndjson" --rules="$dir/rules.lua"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
