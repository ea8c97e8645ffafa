#!/usr/bin/env bash
# Plain `make` on a fresh copy (no build/, so no unpacked Lua source) must not install packages
# nor edit apt's sources: it stops, naming what is missing and `make deps`. apt-get, apt and sudo
# are replaced on PATH by stubs that record any call; dpkg-query by one that can hide a package.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
passed=0 failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # name condition-result(0/1) [detail]
    if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "ok   $1"
    else failed=$((failed + 1)); echo "FAIL $1${3:+: $3}"; fi
}

mkdir -p "$tmp/src" "$tmp/bin"
tar -C "$repo" --exclude=./build --exclude=./.git --exclude=node_modules -cf - . | tar -C "$tmp/src" -xf -
for tool in apt-get apt sudo; do
    printf '#!/bin/sh\necho "%s $*" >>"%s/calls"\nexit 0\n' "$tool" "$tmp" >"$tmp/bin/$tool"
done
real_dpkg_query=$(command -v dpkg-query)
cat >"$tmp/bin/dpkg-query" <<STUB
#!/bin/sh
for a in "\$@"; do last=\$a; done
[ -n "\${HIDE_PACKAGE:-}" ] && [ "\$last" = "\$HIDE_PACKAGE" ] && exit 1
exec "$real_dpkg_query" "\$@"
STUB
chmod 755 "$tmp/bin/"*
sources_before=$(ls -la /etc/apt/sources.list.d/ 2>/dev/null; cat /etc/apt/sources.list 2>/dev/null)

HIDE_PACKAGE=zlib1g-dev PATH="$tmp/bin:$PATH" make -C "$tmp/src" >"$tmp/out1" 2>&1
rc=$?
check "make with a build package missing fails" "$([ "$rc" != 0 ]; echo $?)"
grep -q 'missing Debian packages: zlib1g-dev' "$tmp/out1" && grep -q 'make deps' "$tmp/out1"
check "it names the missing package and 'make deps'" $? "$(tail -n 3 "$tmp/out1")"

PATH="$tmp/bin:$PATH" make -C "$tmp/src" >"$tmp/out2" 2>&1
rc=$?
check "make without the unpacked Lua source fails" "$([ "$rc" != 0 ]; echo $?)"
grep -q "build/lua-src .*is missing: run 'make deps'" "$tmp/out2"
check "it names build/lua-src and 'make deps'" $? "$(tail -n 3 "$tmp/out2")"

check "neither run called apt-get, apt or sudo" "$([ ! -e "$tmp/calls" ]; echo $?)" "$(cat "$tmp/calls" 2>/dev/null)"
sources_after=$(ls -la /etc/apt/sources.list.d/ 2>/dev/null; cat /etc/apt/sources.list 2>/dev/null)
check "apt's sources are unchanged" "$([ "$sources_before" = "$sources_after" ]; echo $?)"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
