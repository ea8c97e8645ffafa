#!/usr/bin/env bash
# No two files under src/ use each other's symbols, directly or around a longer loop (issue 16):
# scripts/check-cycles.py over the objects `make test` just built (core, CLI, Lua module), with
# the cycles that existed when the check came in listed in tests/make/known_cycles.txt.
set -u
cd "$(dirname "$0")/../.."
build=${TALLY_BUILD:-build/release}
objs=$(ls "$build"/obj/*.o "$build"/obj/cli/*.o "$build"/luamod/obj/*.o 2>/dev/null)
if [ -z "$objs" ] || [ ! -e "$build/obj/cli/main.o" ] || [ ! -e "$build/luamod/obj/tally_lua.o" ]; then
    echo "FAIL no objects in $build/obj, $build/obj/cli or $build/luamod/obj: run make test-bins first"
    echo "0 passed, 1 failed"; exit 1
fi
# shellcheck disable=SC2086 # one object per word
if python3 scripts/check-cycles.py --allow tests/make/known_cycles.txt $objs; then
    echo "ok   no file under src/ uses a symbol of one that uses its own, except the known cycles"
    echo "1 passed, 0 failed"
else
    echo "FAIL src/ has a cycle of files using each other's symbols (listed above)"
    echo "0 passed, 1 failed"; exit 1
fi
