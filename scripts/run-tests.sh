#!/usr/bin/env bash
# Runs every suite and prints one closing line for all of them: "N passed, M failed".
#   C tests:     $BUILD/tests/test_*     (each prints its own "N passed, M failed")
#   shell tests: tests/**/test_*.sh      (same convention)
#   Lua specs:   tests/lua/*_spec.lua    (busted under lua5.4, TAP output)
# ONLY=pattern runs the suites whose name matches. Exit status: 0 only if nothing failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build/release}
export TALLY_SRC_DIR=$PWD TALLY_BUILD=$PWD/$BUILD TALLY_BIN=$PWD/$BUILD/tally
# leak checks on, and a crash in any test is a failure with a stack
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

total_pass=0 total_fail=0
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

count() { # $1 = suite name, $2 = exit code, $3 = log file
  local line p f
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$3" | tail -n 1)
  if [ -z "$line" ]; then
    echo "FAIL suite $1: no summary line (exit $2)"; tail -n 30 "$3"
    total_fail=$((total_fail + 1)); return
  fi
  p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed*}
  if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL suite $1: exit $2 with no failed test (crash or sanitizer report?)"; tail -n 40 "$3"
    f=1
  fi
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  echo "suite $1: $line"
  [ "$f" -eq 0 ] || grep -E '^(FAIL|not ok)|^  [a-z/_.]+:[0-9]+: |CHECK|REQUIRE|ERROR|Sanitizer' "$3" | head -n 40
}

run_suite() { # $1 = name, rest = command
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ ! "$name" =~ $ONLY ]]; then return; fi
  local log="$log_dir/$(echo "$name" | tr '/ ' '__').log"
  "$@" >"$log" 2>&1
  count "$name" $? "$log"
}

for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  run_suite "c/$(basename "$t")" "$t"
done

for s in $(find tests -name 'test_*.sh' | sort); do
  run_suite "sh/${s#tests/}" bash "$s"
done

if ls tests/lua/*_spec.lua >/dev/null 2>&1; then
  # tally.so (the Lua module) is in $BUILD/luamod. A sanitized tally.so loaded by the plain lua5.4
  # needs the sanitizer runtime first in the process (LD_PRELOAD); the interpreter itself is not
  # instrumented and keeps its memory until exit, so leak checks are off for it. libtsan cannot be
  # preloaded that way (every child the specs fork crashes), so under TSan the specs that load
  # tally.so are left out; tests/c/test_game_mods runs the binding under TSan instead.
  busted_env=() busted_skip=()
  case ${SAN:-} in
    asan) busted_env=(env "LD_PRELOAD=$(${CC:-cc} -print-file-name=libasan.so)"
                      "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0") ;;
    tsan) busted_skip=(--exclude-pattern='^module_spec' --exclude-pattern='^game_spec' --exclude-pattern='^sandbox_spec'
                       --exclude-pattern='^examples_runtime_spec' --exclude-pattern='^consent_spec') ;;
  esac
  busted_tap() {
    "${busted_env[@]}" lua5.4 "$(command -v busted)" --output=TAP --lpath="$TALLY_SRC_DIR/lua/?.lua;$TALLY_SRC_DIR/lua/?/init.lua" \
      --cpath="$TALLY_BUILD/luamod/?.so" "${busted_skip[@]}" tests/lua
    local rc=$?
    return $rc
  }
  lua_log="$log_dir/lua.log"
  if [ -z "${ONLY:-}" ] || [[ lua/busted =~ $ONLY ]]; then
    busted_tap >"$lua_log" 2>&1; rc=$?
    p=$(grep -c '^ok ' "$lua_log"); f=$(grep -c '^not ok ' "$lua_log")
    echo "$p passed, $f failed" >>"$lua_log"
    count "lua/busted" $rc "$lua_log"
  fi
fi

echo "${total_pass} passed, ${total_fail} failed"
[ "$total_fail" -eq 0 ]
