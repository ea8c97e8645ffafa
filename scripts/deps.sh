#!/usr/bin/env bash
# Installs the Debian packages tally needs, only those that are missing, and says what it installs.
# Usage: scripts/deps.sh [build|test|demo|bench]   (each set includes the ones before it)
#        scripts/deps.sh check   names the missing build packages and how to install them, changes
#                                nothing (plain `make` uses it: it never runs apt-get itself)
set -euo pipefail
want=${1:-build}
check_only=
[ "$want" = check ] && want=build check_only=1

build_pkgs="gcc make pkg-config dpkg-dev liblua5.4-dev lua5.4 lua-cjson lua-cjson-dev libcurl4-openssl-dev libssl-dev libsqlite3-dev sqlite3 zlib1g-dev"
test_pkgs="lua-busted python3 clang libclang-rt-14-dev nginx-light libnginx-mod-http-lua openssl luarocks chromium"
bench_pkgs="nodejs npm time wrk"

pkgs=$build_pkgs
case $want in
  build) ;;
  test|demo) pkgs="$pkgs $test_pkgs" ;;
  bench) pkgs="$pkgs $test_pkgs $bench_pkgs" ;;
  *) echo "deps.sh: unknown set '$want' (build|test|demo|bench)" >&2; exit 2 ;;
esac

missing=""
for p in $pkgs; do
  # nodejs may come from another repository (nodesource) with npm bundled: accept the commands.
  case $p in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
    nginx-light) command -v nginx >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if [ -n "$check_only" ]; then
  [ -z "$missing" ] && exit 0
  echo "missing Debian packages:$missing" >&2
  echo "install them with: make deps   (or: apt-get install$missing)" >&2
  exit 1
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if [ -n "$missing" ]; then
  echo "deps: installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The embedded Lua is built from Debian's lua5.4 source package: Debian ships liblua5.4.a without
# -fPIC, and we need position-independent objects with hidden symbols inside libtally.so.
# `apt-get source` needs a deb-src entry; add Debian's own archive as one if none is configured.
if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deps: adding a deb-src entry for Debian bookworm (to fetch the lua5.4 source package)"
  $SUDO tee /etc/apt/sources.list.d/tally-deb-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO apt-get update -qq
fi
