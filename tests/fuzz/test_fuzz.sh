#!/usr/bin/env bash
# The fuzz harnesses as a time-bounded suite of `make test`: each harness (JSON codec, Lua table
# graphs <-> JSON, message validation, tally_send's one-pass check against the tree path, CLI flag
# parser, configuration to open and close, signed rule bundles) runs FUZZ_SECONDS (default 20)
# from its corpus. The harnesses are always built with ASan+UBSan, so a sanitizer pass of `make test` does not run them twice.
set -u
cd "$(dirname "$0")/../.."
if [ -n "${SAN:-}" ]; then
  echo "fuzzers already run with ASan+UBSan in the plain pass"
  echo "0 passed, 0 failed"
  exit 0
fi
exec bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
