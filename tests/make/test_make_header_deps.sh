#!/usr/bin/env bash
# Each object is rebuilt exactly when a header it includes changes (the compiler's .d files): on a
# copy of the tree (so the worktree's own build is not disturbed), touch one header, run make, and
# compare the objects whose mtime moved with the sources that #include that header, directly or
# through other headers (found here with grep, independently of the compiler).
set -u
# The plain build is what this checks (see test_make_deps_rebuilds_nothing.sh).
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
cd "$tmp/src" || exit 1
b=build/release
# the library, the CLI, the Lua module, and two test objects (one includes iso8601.h, one does not)
targets="lib cli luamod $b/tests/obj/test_conventions.o $b/tests/obj/test_json.o"

# every object the Makefile compiled, with its mtime
objects() { find "$b/obj" "$b/lua" "$b/luamod/obj" "$b/tests/obj" -name '*.o' -printf '%p %T@\n' | sort; }
# the source an object is compiled from
source_of() {
    case $1 in
        $b/obj/bundled_lua.o) echo build/gen/bundled_lua.c ;;
        $b/obj/*)             echo "src/${1#"$b"/obj/}" | sed 's/\.o$/.c/' ;;
        $b/lua/*)             echo "build/lua-src/src/$(basename "$1" .o).c" ;;
        $b/luamod/obj/tally_lua.o) echo src/lua_module/tally_lua.c ;;
        $b/luamod/obj/*)      echo "src/$(basename "$1" .o).c" ;;
        $b/tests/obj/*)       echo "tests/c/$(basename "$1" .o).c" ;;
    esac
}
headers=$(ls include/*.h src/*.h src/cli/*.h tests/c/*.h build/lua-src/src/*.h)
includes_any() { # file name... : does file #include one of these header names?
    local f=$1 n; shift
    for n in "$@"; do
        grep -Eq "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]$n[>\"]" "$f" && return 0
    done
    return 1
}
# The names of the header and of every header that includes it, directly or not.
closure() {
    local names=("$(basename "$1")") grew=1 h
    while [ $grew = 1 ]; do
        grew=0
        for h in $headers; do
            [[ " ${names[*]} " == *" $(basename "$h") "* ]] && continue
            if includes_any "$h" "${names[@]}"; then names+=("$(basename "$h")"); grew=1; fi
        done
    done
    echo "${names[@]}"
}

make $targets >"$tmp/out0" 2>&1
check "the first make builds" $? "$(tail -n 5 "$tmp/out0")"
make $targets >"$tmp/out1" 2>&1
recompiled=$(grep -E '^ +(CC|LUA) ' "$tmp/out1")
check "a second make compiles nothing" "$([ -z "$recompiled" ]; echo $?)" "$recompiled"

scenario() { # header, then the object directories whose includes it can reach
    local header=$1; shift
    local names before after expected="" rebuilt o src
    names=$(closure "$header")
    before=$(objects)
    touch "$header"
    make $targets >"$tmp/out" 2>&1
    check "after touching $header, make succeeds" $? "$(tail -n 5 "$tmp/out")"
    after=$(objects)
    rebuilt=$(diff <(echo "$before") <(echo "$after") | sed -n 's/^> \([^ ]*\) .*/\1/p' | sort)
    for o in $(echo "$before" | cut -d' ' -f1); do
        for dir in "$@"; do
            # shellcheck disable=SC2086 # names: one per word
            if [[ $o == "$b/$dir/"* ]] && includes_any "$(source_of "$o")" $names; then expected+="$o"$'\n'; fi
        done
    done
    expected=$(echo -n "$expected" | sort)
    check "$header: some objects include it, some do not" \
        "$([ -n "$expected" ] && [ "$(echo "$expected" | wc -l)" -lt "$(echo "$before" | wc -l)" ]; echo $?)"
    check "$header: exactly the $(echo "$expected" | wc -l) objects that include it were rebuilt" "$([ "$rebuilt" = "$expected" ]; echo $?)" \
        "$(diff <(echo "$expected") <(echo "$rebuilt") | sed -n 's/^</ not rebuilt:/p; s/^>/ rebuilt needlessly:/p' | tr -d '\n')"
}
# iso8601.h: two core files and one test. json.h: core, CLI and the Lua module's second copies.
scenario src/iso8601.h obj lua luamod/obj tests/obj
scenario src/json.h obj lua luamod/obj tests/obj
# The embedded Lua's header (a patch may change it): the core and Lua objects that include it. The Lua
# module's objects are compiled against the host's Lua headers instead, so they must not move.
scenario build/lua-src/src/lua.h obj lua tests/obj

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
