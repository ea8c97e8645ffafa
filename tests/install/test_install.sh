#!/usr/bin/env bash
# `make install` is complete: installs into a temporary prefix under umask 077 and then uses only
# the installed files (headers, libraries, .pc files, the Lua module, the resty binding, the CLI,
# the man pages) to
#   1. build and run a C program through `pkg-config tally`, linked shared (soname) and static;
#   2. build and run a game host that gives a Lua 5.4 state a mod table (tally_lua_push_mod)
#      through `pkg-config tally-lua`;
#   3. run a Lua 5.4 script through the installed `tally` module;
#   4. serve a request with the nginx example (examples/nginx/nginx.conf) on the installed
#      resty.tally and libtally.so, and see its page event reach a collector;
# and checks DESTDIR staging, that `make uninstall` removes every file it installed, and that the
# rockspec installs with Debian's luarocks as README says.
# Under SAN=asan the programs are built with the sanitizer (the installed libraries carry it);
# under SAN=tsan the Lua and nginx parts are left out, as in run-tests.sh.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
san=${SAN:-}
cc=${CC:-cc}

passed=0
failed=0
tmp=$(mktemp -d)
col_pid=
ngx_pid=

check() { # name condition-result(0/1) [detail]
    if [ "$2" = 0 ]; then
        passed=$((passed + 1)); echo "ok   $1"
    else
        failed=$((failed + 1)); echo "FAIL $1${3:+: $3}"
    fi
}

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}

gone() { [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

wait_gone() { # pid seconds
    local deadline=$((SECONDS + $2))
    while [ "$SECONDS" -le "$deadline" ]; do gone "$1" && return 0; sleep 0.05; done
    return 1
}

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    if [ -n "$ngx_pid" ]; then
        local workers; workers=$(cat "/proc/$ngx_pid/task/$ngx_pid/children" 2>/dev/null)
        kill -QUIT "$ngx_pid" 2>/dev/null
        wait_gone "$ngx_pid" 10 || kill -KILL "$ngx_pid" 2>/dev/null
        for w in $workers; do gone "$w" || kill -KILL "$w" 2>/dev/null; done
    fi
    if [ -n "$col_pid" ]; then kill "$col_pid" 2>/dev/null; wait "$col_pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Whoever installs may have a strict umask; what the install writes must still be usable by others
# (nginx workers run as another user).
umask 077

case $san in
    asan) sanflags="-fsanitize=address,undefined -fno-omit-frame-pointer"
          lua_env=(env "LD_PRELOAD=$($cc -print-file-name=libasan.so)" "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0") ;;
    tsan) sanflags="-fsanitize=thread"; lua_env=() ;;
    *)    sanflags=""; lua_env=() ;;
esac

# ---------------------------------------------------------------- install, DESTDIR, uninstall

expected_files="bin/tally include/tally.h lib/libtally.so.0.1.0 lib/libtally.so.0 lib/libtally.so lib/libtally.a
lib/libtally_lua.a lib/pkgconfig/tally.pc lib/pkgconfig/tally-lua.pc lib/lua/5.4/tally.so
share/lua/5.1/resty/tally.lua share/lua/5.1/tally/ip.lua share/man/man1/tally.1 share/man/man3/tally.3 share/doc/tally/LICENSE"

installed_files() { (cd "$1" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort); }

stage=$tmp/stage
make -C "$repo" --no-print-directory install SAN="$san" DESTDIR="$stage" PREFIX=/opt/tally >"$tmp/stage.log" 2>&1
check "make install DESTDIR=... PREFIX=/opt/tally" $? "$(tail -n 5 "$tmp/stage.log")"
got=$(installed_files "$stage/opt/tally" | tr '\n' ' ')
want=$(echo "$expected_files" | tr ' ' '\n' | sort | tr '\n' ' ')
check "DESTDIR install writes exactly the expected files under DESTDIR/PREFIX" "$([ "$got" = "$want" ]; echo $?)" \
    "got: $got"
leaked=$(grep -rl "$stage" "$stage" 2>/dev/null)
check "no installed file names the DESTDIR" "$([ -z "$leaked" ]; echo $?)" "$leaked"
grep -qx 'prefix=/opt/tally' "$stage/opt/tally/lib/pkgconfig/tally.pc" &&
    grep -qx 'prefix=/opt/tally' "$stage/opt/tally/lib/pkgconfig/tally-lua.pc"
check "the .pc files name PREFIX" $?
make -C "$repo" --no-print-directory uninstall SAN="$san" DESTDIR="$stage" PREFIX=/opt/tally >>"$tmp/stage.log" 2>&1
check "make uninstall DESTDIR=..." $?
left=$(installed_files "$stage" | tr '\n' ' ')
check "make uninstall removes every installed file" "$([ -z "$left" ]; echo $?)" "left: $left"

prefix=$tmp/prefix
make -C "$repo" --no-print-directory install SAN="$san" PREFIX="$prefix" >"$tmp/install.log" 2>&1
rc=$?
check "make install PREFIX=$prefix" $rc "$(tail -n 5 "$tmp/install.log")"
[ "$rc" = 0 ] || finish
unreadable=$(find "$prefix" \( -type f ! -perm -004 \) -o \( -type d ! -perm -005 \))
check "under umask 077 every installed file is world-readable, every directory searchable" \
    "$([ -z "$unreadable" ]; echo $?)" "$unreadable"
readelf -d "$prefix/lib/libtally.so.0.1.0" | grep -q 'SONAME.*\[libtally\.so\.0\]'
check "libtally.so.0.1.0 has the soname libtally.so.0" $?
[ "$(readlink "$prefix/lib/libtally.so.0")" = libtally.so.0.1.0 ] &&
    [ "$(readlink "$prefix/lib/libtally.so")" = libtally.so.0.1.0 ]
check "libtally.so and libtally.so.0 link to libtally.so.0.1.0" $?
grep -q '^Copyright (c) [0-9]* the tally authors$' "$prefix/share/doc/tally/LICENSE" &&
    grep -q '^MIT License$' "$prefix/share/doc/tally/LICENSE"
check "LICENSE (MIT, the tally authors) installed" $?

# From here on, nothing may come from the checkout: a copy of the prefix elsewhere would work the same.
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
libdir=$(pkg-config --variable=libdir tally)
check "pkg-config finds tally in the prefix" "$([ "$libdir" = "$prefix/lib" ]; echo $?)" "libdir=$libdir"
version=$(pkg-config --modversion tally)

# ---------------------------------------------------------------- man pages

for page in 1 3; do
    warn=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -M "$prefix/share/man" "$page" tally 2>&1 >"$tmp/man$page.txt")
    check "man -M PREFIX/share/man $page tally renders without warnings" \
        "$([ -z "$warn" ] && grep -q "^NAME" "$tmp/man$page.txt"; echo $?)" "$warn"
done
missing=
for fn in $(sed -n 's/^TALLY_API[^(]*[ *]\(tally_[a-z_]*\)(.*/\1/p' "$prefix/include/tally.h"); do
    grep -q "^$fn(\|[ *]$fn(" "$tmp/man3.txt" || missing="$missing $fn"
done
check "tally(3) shows every function the installed tally.h declares" "$([ -z "$missing" ]; echo $?)" "missing:$missing"
# The example in tally(3) is a program: it must build and run against the install as printed.
sed -n '/^EXAMPLES/,/^       Build it/p' "$tmp/man3.txt" | sed -e '1d' -e '$d' -e 's/^       //' >"$tmp/man_example.c"
(cd "$tmp" && $cc -std=c11 -Wall -Wextra -Werror $sanflags $(pkg-config --cflags tally) -o man_example man_example.c \
    $(pkg-config --libs tally) -Wl,-rpath,"$libdir" && ./man_example) >"$tmp/man_example.log" 2>&1 &&
    grep -q '"event":"Signed Up"' "$tmp/events.ndjson"
check "the tally(3) example builds through pkg-config and runs" $? "$(tail -n 5 "$tmp/man_example.log")"

# ---------------------------------------------------------------- the CLI

"$prefix/bin/tally" track --userId=u1 --event='CLI Installed' --out="$tmp/cli.ndjson" --wait_ms=10000 >"$tmp/cli.log" 2>&1 &&
    grep -q '"event":"CLI Installed"' "$tmp/cli.ndjson"
check "the installed tally CLI sends a track to --out" $? "$(tail -n 3 "$tmp/cli.log")"

# ---------------------------------------------------------------- 1. C program through pkg-config

cat >"$tmp/app.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include <tally.h>

int main(int argc, char **argv)
{
    if (argc != 3) return 2;
    if (strcmp(tally_version(), argv[2]) != 0) {
        fprintf(stderr, "library version %s, pkg-config says %s\n", tally_version(), argv[2]);
        return 1;
    }
    tally_config *cfg = tally_config_new();
    tally_t *t = NULL;
    if (!cfg || tally_config_set(cfg, "out", argv[1]) != TALLY_OK || tally_config_set(cfg, "mode", "server") != TALLY_OK ||
        tally_open(cfg, &t) != TALLY_OK) {
        fprintf(stderr, "open: %s\n", tally_errmsg(NULL));
        return 1;
    }
    tally_config_free(cfg);
    int rc = tally_send(t, "{\"type\":\"track\",\"event\":\"Installed\",\"userId\":\"u1\",\"properties\":{\"big\":9007199254740993}}");
    if (rc != TALLY_OK) fprintf(stderr, "send: %s\n", tally_errmsg(t));
    return tally_close(t, 10000) == TALLY_OK && rc == TALLY_OK ? 0 : 1;
}
EOF
cd "$tmp" || finish
# shellcheck disable=SC2046 # pkg-config output is meant to split
$cc -std=c11 -Wall -Wextra -Werror $sanflags $(pkg-config --cflags tally) -o app app.c $(pkg-config --libs tally) \
    -Wl,-rpath,"$libdir" >app.log 2>&1
check "C program builds with pkg-config --cflags --libs tally" $? "$(tail -n 5 app.log)"
resolved=$(ldd ./app 2>/dev/null | awk '$1 == "libtally.so.0" { print $3 }')
check "it loads libtally.so.0 from the prefix" "$([ "$resolved" = "$libdir/libtally.so.0" ]; echo $?)" "ldd: $resolved"
./app app.ndjson "$version" >>app.log 2>&1 && grep -q '"event":"Installed".*"big":9007199254740993' app.ndjson
check "it runs and its event is written exactly" $? "$(tail -n 5 app.log)"

static_libs=$(pkg-config --static --libs-only-l tally | sed 's/-ltally\b//')
# shellcheck disable=SC2086
$cc -std=c11 -Wall -Wextra -Werror $sanflags $(pkg-config --cflags tally) -o app_static app.c "$libdir/libtally.a" \
    $static_libs >app_static.log 2>&1
check "C program links libtally.a with pkg-config --static --libs tally" $? "$(tail -n 5 app_static.log)"
! ldd ./app_static 2>/dev/null | grep -q libtally && ./app_static app_static.ndjson "$version" >>app_static.log 2>&1 &&
    grep -q '"event":"Installed"' app_static.ndjson
check "the static program runs without libtally.so" $? "$(tail -n 5 app_static.log)"

# ---------------------------------------------------------------- 2. game host (tally_lua_push_mod)

cat >"$tmp/host.c" <<'EOF'
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <tally.h>

int main(int argc, char **argv)
{
    if (argc != 3) return 2;
    tally_config *cfg = tally_config_new();
    tally_t *t = NULL;
    if (!cfg || tally_config_set(cfg, "out", argv[1]) != TALLY_OK || tally_open(cfg, &t) != TALLY_OK) {
        fprintf(stderr, "open: %s\n", tally_errmsg(NULL));
        return 1;
    }
    tally_config_free(cfg);
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    int ok = tally_lua_push_mod(L, t, "installcheck", "1.0.0", 10.0) == TALLY_OK;
    if (ok) {
        lua_setglobal(L, "tally");
        ok = luaL_dofile(L, argv[2]) == LUA_OK;
        if (!ok) fprintf(stderr, "mod: %s\n", lua_tostring(L, -1));
    }
    lua_close(L);
    return tally_close(t, 10000) == TALLY_OK && ok ? 0 : 1;
}
EOF
cat >"$tmp/mod.lua" <<'EOF'
assert(tally.identify == nil, "a mod must not change who the player is")
assert(tally.track("Mod Loaded", { level = 3, items = tally.empty_array }))
EOF
# shellcheck disable=SC2046
$cc -std=c11 -Wall -Wextra -Werror $sanflags $(pkg-config --cflags tally-lua) -o host host.c \
    $(pkg-config --libs tally-lua) -Wl,-rpath,"$libdir" >host.log 2>&1
check "game host builds with pkg-config --cflags --libs tally-lua" $? "$(tail -n 5 host.log)"
./host host.ndjson mod.lua >>host.log 2>&1
check "game host runs a mod through tally_lua_push_mod" $? "$(tail -n 5 host.log)"
python3 - host.ndjson <<'EOF' >>host.log 2>&1
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
assert len(m) == 1, m
assert m[0]["event"] == "Mod Loaded" and m[0]["properties"] == {"level": 3, "items": []}, m[0]
assert m[0]["context"]["mod"] == {"name": "installcheck", "version": "1.0.0"}, m[0]["context"]
EOF
check "the mod's event carries context.mod and its exact properties" $? "$(tail -n 3 host.log)"

# ---------------------------------------------------------------- 3. Lua 5.4 script

# Both need a sanitizer runtime preloaded into a program we do not build (lua5.4, nginx).
lua_and_nginx() {
    if [ "$san" = tsan ]; then
        echo "# SAN=tsan: the Lua and nginx parts are left out (libtsan cannot be preloaded into lua5.4 or nginx)"
        return
    fi

    cat >"$tmp/script.lua" <<'EOF'
local prefix, out = arg[1], arg[2]
local found = package.searchpath("tally", package.cpath)
assert(found == prefix .. "/lib/lua/5.4/tally.so", "tally found at " .. tostring(found))
local tally = require "tally"
local t = assert(tally.open { out = out, mode = "server" })
assert(t:track("Lua Installed", { big = 9007199254740993 }, { userId = "u1" }))
assert(t:close(10000))
EOF
    "${lua_env[@]}" env LUA_CPATH="$prefix/lib/lua/5.4/?.so" LUA_PATH="" lua5.4 script.lua "$prefix" lua.ndjson >lua.log 2>&1 &&
        grep -q '"event":"Lua Installed".*"big":9007199254740993' lua.ndjson
    check "a Lua 5.4 script runs through the installed tally module" $? "$(tail -n 5 lua.log)"

    # ---------------------------------------------------------------- 4. the nginx example

    modules=/usr/lib/nginx/modules
    if ! command -v nginx >/dev/null 2>&1 || [ ! -f "$modules/ngx_http_lua_module.so" ]; then
        echo "# nginx with the lua module is not installed (make deps installs it): nginx part left out"
        return
    fi

    start_collector() {
        local fifo=$tmp/port.fifo line=
        mkfifo "$fifo"
        python3 "$repo/tests/e2e/collector.py" --max-seconds 120 >"$fifo" 2>>"$tmp/collector.err" &
        col_pid=$!
        read -r -t 10 line <"$fifo"
        rm -f "$fifo"
        col_port=${line#PORT }
        [ "${line%% *}" = PORT ] && [ -n "$col_port" ]
    }
    start_collector
    check "collector starts" $?
    ngx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

    mkdir -p "$tmp/ngx/store"
    python3 - "$repo/examples/nginx/nginx.conf" "$tmp/ngx/nginx.conf" "$prefix/share/lua/5.1" "$tmp/ngx" "$ngx_port" <<'EOF'
import sys
example, out, luadir, tmp, port = sys.argv[1:]
src = open(example).read()
def swap(old, new):
    global src
    if src.count(old) != 1:
        sys.exit("examples/nginx/nginx.conf: expected exactly one %r" % old)
    src = src.replace(old, new)
swap("worker_processes auto;", "worker_processes 1;")
swap('    lua_package_path "/opt/tally/lua/?.lua;;";\n',
     '    lua_package_path "%s/?.lua;;";\n' % luadir
     + "".join("    %s_temp_path %s/%s;\n" % (k, tmp, k) for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
     + "    access_log %s/access.log;\n" % tmp)
swap("        listen 8080;\n", "        listen 127.0.0.1:%s;\n" % port)
open(out, "w").write(src)
EOF
    check "nginx config derived from examples/nginx/nginx.conf" $?

    lib=$libdir/libtally.so.0
    preload=$(ldd "$lib" 2>/dev/null | awk '$1 ~ /^lib(asan|tsan)\.so/ { print $3 }')
    case $preload in *libasan*)
        printf 'leak:ngx_alloc\n' >"$tmp/lsan.supp"
        export LSAN_OPTIONS="suppressions=$tmp/lsan.supp:print_suppressions=0" ;;
    esac
    # Workers of a root master would run as nobody; they run as the invoking user, as in test_nginx.sh.
    worker_user=
    [ "$(id -u)" = 0 ] && worker_user="user $(id -un) $(id -gn);"
    env ${preload:+LD_PRELOAD="$preload"} TALLY_ENDPOINT="http://127.0.0.1:$col_port" TALLY_WRITE_KEY=install-key \
        TALLY_LIB="$lib" TALLY_STORE_DIR="$tmp/ngx/store" \
        nginx -p "$tmp/ngx" -c "$tmp/ngx/nginx.conf" -e "$tmp/ngx/error.log" \
        -g "daemon off; pid $tmp/ngx/nginx.pid; error_log $tmp/ngx/error.log info; $worker_user" >"$tmp/ngx/out.log" 2>&1 &
    ngx_pid=$!
    code=
    deadline=$((SECONDS + 10))
    while [ "$SECONDS" -le "$deadline" ] && ! gone "$ngx_pid"; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$ngx_port/health")
        [ "$code" = 200 ] && break
        sleep 0.05
    done
    check "nginx starts with the example config on the installed files" "$([ "$code" = 200 ]; echo $?)" \
        "$(tail -n 5 "$tmp/ngx/error.log")"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$ngx_port/installed?utm_campaign=launch")
    check "a request is served" "$([ "$code" = 200 ]; echo $?)" "HTTP $code"
    # A graceful quit closes each worker's handle, which delivers what it queued.
    kill -QUIT "$ngx_pid"
    wait_gone "$ngx_pid" 20
    check "nginx quits gracefully" $?
    wait "$ngx_pid" 2>/dev/null
    ngx_pid=
    curl -sS --max-time 10 "http://127.0.0.1:$col_port/received" >"$tmp/received.json"
    python3 - "$tmp/received.json" <<'EOF' >"$tmp/ngx/check.log" 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
pages = [m for r in d["requests"] if r["accepted"] for m in r["messages"] if m.get("type") == "page"]
assert len(pages) == 1, pages
p = pages[0]
assert p["properties"]["path"] == "/installed", p
assert p["context"]["campaign"] == {"name": "launch"}, p["context"]
EOF
    check "the request's page event reached the collector" $? "$(tail -n 3 "$tmp/ngx/check.log")"
    errs=$(grep -E '\[(alert|crit|emerg|error)\]|exited on signal|Sanitizer' "$tmp/ngx/error.log" | head -n 5)
    check "nginx error.log has no errors" "$([ -z "$errs" ]; echo $?)" "$errs"
}
lua_and_nginx

# ---------------------------------------------------------------- 5. the rockspec

# README's one command, into a private tree (and a private HOME for luarocks' cache). It builds
# build/release, so it runs only with the plain build.
rockspec() {
    if [ -n "$san" ]; then echo "# SAN=$san: the rockspec part is left out (it builds build/release)"; return; fi
    if ! command -v luarocks >/dev/null 2>&1; then
        echo "# luarocks is not installed (make deps installs it): rockspec part left out"; return
    fi
    mkdir -p "$tmp/home"
    (cd "$repo" && HOME=$tmp/home luarocks --lua-version=5.4 --tree="$tmp/rocks" make tally-scm-1.rockspec) \
        >"$tmp/rock.log" 2>&1
    check "luarocks --lua-version=5.4 make tally-scm-1.rockspec" $? "$(tail -n 5 "$tmp/rock.log")"
    grep -q '^   license = "MIT",$' "$repo/tally-scm-1.rockspec"
    check "the rockspec's license is MIT" $?
    local so=$tmp/rocks/lib/lua/5.4/tally.so
    cat >"$tmp/rock.lua" <<'EOF'
local t = assert(require("tally").open { out = arg[1], mode = "server" })
assert(t:track("Rock Installed", {}, { userId = "u1" }))
assert(t:close(10000))
EOF
    env LUA_CPATH="$tmp/rocks/lib/lua/5.4/?.so" LUA_PATH="" lua5.4 "$tmp/rock.lua" "$tmp/rock.ndjson" >>"$tmp/rock.log" 2>&1 &&
        [ -f "$so" ] && grep -q '"event":"Rock Installed"' "$tmp/rock.ndjson"
    check "the module luarocks installed runs" $? "$(tail -n 3 "$tmp/rock.log")"
}
rockspec

# ---------------------------------------------------------------- uninstall

make -C "$repo" --no-print-directory uninstall SAN="$san" PREFIX="$prefix" >>"$tmp/install.log" 2>&1
check "make uninstall PREFIX=..." $?
left=$(installed_files "$prefix" | tr '\n' ' ')
check "make uninstall leaves no file in the prefix" "$([ -z "$left" ]; echo $?)" "left: $left"
finish
