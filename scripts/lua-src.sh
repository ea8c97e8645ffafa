#!/usr/bin/env bash
# Unpacks Debian's lua5.4 source package (with Debian's patches, including its CVE fixes) into $1.
set -euo pipefail
dest=$1
[ -f "$dest/src/lapi.c" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get source -qq lua5.4 >/dev/null 2>&1 ) || {
  echo "lua-src: 'apt-get source lua5.4' failed; run 'make deps' first (it adds a deb-src entry)" >&2
  exit 1
}
src=$(find "$work" -maxdepth 1 -type d -name 'lua5.4-*' | head -n 1)
[ -n "$src" ] || { echo "lua-src: unpacked source not found" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$src" "$dest"
echo "lua-src: $(basename "$src") source in $dest"
