#!/usr/bin/env bash
# Builds every libFuzzer harness in tests/fuzz/ with clang (ASan + UBSan) and runs each for a
# bounded time against its corpus in tests/fuzz/corpus/<name>/. New interesting inputs found in CI
# are not written back (the corpus directory is read-only for the run: -merge is a manual step).
# Prints "N passed, M failed" (one per harness).
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v clang >/dev/null || { echo "fuzz: clang missing (make deps installs it)"; exit 1; }
out=$PWD/build/fuzz # absolute: a harness may change directory (fuzz_config does)
mkdir -p "$out"
{ [ -f build/lua-src/src/lapi.c ] || bash scripts/deps.sh build; } && bash scripts/lua-src.sh build/lua-src || exit 1
# The library's sources and the embedded Lua's are the Makefile's lists (a `make test` that runs
# this hands down its flags, which the listing does not need).
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory "$@"; }
mk build/gen/bundled_lua.c || exit 1
core=$(mk print-core-sources) && lua=$(mk print-lua-sources) && [ -n "$core" ] && [ -n "$lua" ] ||
  { echo "fuzz: make printed no source list"; exit 1; }
core="$core src/cli/flags.c"
pass=0 fail=0
for h in tests/fuzz/fuzz_*.c; do
  name=$(basename "$h" .c); name=${name#fuzz_}
  bin="$out/fuzz_$name"
  if ! clang -std=gnu11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
       -Iinclude -Isrc -Isrc/cli -Ibuild/lua-src/src -DLUA_USE_POSIX -w -o "$bin" "$h" $core $lua \
       -lcurl -lcrypto -lsqlite3 -lz -lm -lpthread -ldl; then
    echo "FAIL fuzz_$name: build"; fail=$((fail + 1)); continue
  fi
  corpus=tests/fuzz/corpus/$name
  work=$(mktemp -d)
  [ -d "$corpus" ] && cp -r "$corpus/." "$work/"
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$out/${name}-" "$work" >"$out/$name.log" 2>&1; then
    echo "ok   fuzz_$name ($(grep -Eo 'stat::number_of_executed_units: [0-9]+|#[0-9]+ *DONE' "$out/$name.log" | tail -1)) ${seconds}s"
    pass=$((pass + 1))
  else
    echo "FAIL fuzz_$name"; tail -n 40 "$out/$name.log"; fail=$((fail + 1))
  fi
  rm -rf "$work"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
