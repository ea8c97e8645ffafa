#!/usr/bin/env bash
# Unpacks Debian's lua5.4 source package (with Debian's patches, including its CVE fixes) into $1,
# then applies our patches (patches/lua/*.patch, in name order: upstream bug fixes and the sandbox's
# work meter). Idempotent: $1/.tally-patches keeps a copy of every patch applied, so a tree unpacked
# before a patch was added or changed is brought up to date (changed ones are reversed first).
# $1/.tally-patched is touched only when the tree changed (or the stamp is missing): everything
# built from the Lua source depends on it, so touching it on every `make deps` rebuilt it all.
set -euo pipefail
dest=$1
here=$(cd "$(dirname "$0")/.." && pwd)
changed=0
if [ ! -f "$dest/src/lapi.c" ]; then
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
  changed=1
fi
applied="$dest/.tally-patches"
mkdir -p "$applied"
wanted=()
for p in "$here"/patches/lua/*.patch; do [ -e "$p" ] && wanted+=("$p"); done
# Reverse, newest first, every applied patch from the first one that is no longer wanted as is.
have=()
for p in "$applied"/*.patch; do [ -e "$p" ] && have+=("$p"); done
keep=0
while [ $keep -lt ${#have[@]} ] && [ $keep -lt ${#wanted[@]} ] &&
      [ "$(basename "${have[$keep]}")" = "$(basename "${wanted[$keep]}")" ] &&
      cmp -s "${have[$keep]}" "${wanted[$keep]}"; do keep=$((keep + 1)); done
for ((i = ${#have[@]} - 1; i >= keep; i--)); do
  patch -s -R -p1 -d "$dest" < "${have[$i]}"
  rm -f "${have[$i]}"
  echo "lua-src: reversed $(basename "${have[$i]}")"
  changed=1
done
for ((i = keep; i < ${#wanted[@]}; i++)); do
  patch -s -N -p1 --no-backup-if-mismatch -d "$dest" < "${wanted[$i]}"
  cp "${wanted[$i]}" "$applied/"
  echo "lua-src: applied $(basename "${wanted[$i]}")"
  changed=1
done
if [ "$changed" = 1 ] || [ ! -e "$dest/.tally-patched" ]; then touch "$dest/.tally-patched"; fi
