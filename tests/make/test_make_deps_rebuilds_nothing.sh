#!/usr/bin/env bash
# `make deps` right after `make` must leave the build up to date: the Lua patch stamp that every
# object depends on is touched only when the set of applied patches changed. Runs on a copy of the
# tree (with the unpacked Lua source, mtimes kept) so the worktree's own build is not disturbed.
set -u
# The plain build is what this checks: a sanitizer pass of `make test` hands SAN (and its command
# line, through MAKEFLAGS) down to here, and would build build/asan instead.
unset SAN BUILD MAKEFLAGS MAKELEVEL MFLAGS
repo=$(cd "$(dirname "$0")/../.." && pwd)
passed=0 failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # name condition-result(0/1) [detail]
    if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "ok   $1"
    else failed=$((failed + 1)); echo "FAIL $1${3:+: $3}"; fi
}

if [ ! -f "$repo/build/lua-src/src/lapi.c" ]; then
    echo "FAIL build/lua-src is missing: run make deps first"; echo "0 passed, 1 failed"; exit 1
fi
mkdir -p "$tmp/src/build"
tar -C "$repo" --exclude=./build --exclude=./.git --exclude=node_modules -cf - . | tar -C "$tmp/src" -xf -
cp -a "$repo/build/lua-src" "$tmp/src/build/lua-src"

make -C "$tmp/src" lib >"$tmp/out1" 2>&1
check "the first make builds" $? "$(tail -n 5 "$tmp/out1")"
stamp_before=$(stat -c %Y.%y "$tmp/src/build/lua-src/.tally-patched")
obj=$(ls "$tmp/src/build/release/lua/"*.o | head -n 1)
obj_before=$(stat -c %y "$obj")

make -C "$tmp/src" deps >"$tmp/out2" 2>&1
check "make deps succeeds" $? "$(tail -n 5 "$tmp/out2")"
check "make deps leaves the patch stamp alone when no patch changed" \
    "$([ "$stamp_before" = "$(stat -c %Y.%y "$tmp/src/build/lua-src/.tally-patched")" ]; echo $?)"

version=$(sed -n 's/^VERSION *:= *//p' "$repo/Makefile")
make -C "$tmp/src" -q "build/release/libtally.so.$version" build/release/libtally.a build/release/tally_all.o
check "make -q: the library is up to date after make deps" $?
make -C "$tmp/src" lib >"$tmp/out3" 2>&1
rebuilt=$(grep -E '^ +(CC|LUA|LD|AR|LINK) ' "$tmp/out3")
check "a second make after make deps rebuilds nothing" "$([ -z "$rebuilt" ]; echo $?)" "$rebuilt"
check "the embedded Lua objects were not recompiled" "$([ "$obj_before" = "$(stat -c %y "$obj")" ]; echo $?)"

# A patch that really changes the set is applied and does move the stamp (so Lua is rebuilt).
mkdir -p "$tmp/src/patches/lua"
printf -- '--- a/src/lapi.c\n+++ b/src/lapi.c\n@@ -1,0 +1,1 @@\n+/* tally stamp test */\n' \
    >"$tmp/src/patches/lua/zz-stamp-test.patch"
bash "$tmp/src/scripts/lua-src.sh" "$tmp/src/build/lua-src" >"$tmp/out4" 2>&1
check "a new patch is applied" "$(grep -q 'applied zz-stamp-test.patch' "$tmp/out4"; echo $?)" "$(cat "$tmp/out4")"
check "and it moves the stamp" \
    "$([ "$stamp_before" != "$(stat -c %Y.%y "$tmp/src/build/lua-src/.tally-patched")" ]; echo $?)"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
