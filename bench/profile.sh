#!/usr/bin/env bash
# Where the time goes: perf profiles of bench/throughput.c end to end (SQLite file store, gzip off,
# to the nginx collector), with no rules and with bench/rules/three. Not part of `make bench`.
#
#   make bench-bins && bash bench/profile.sh        (BUILD, N=200000, CASES="0 3" to choose)
#
# Writes bench/results/profile-rules<R>.txt: perf's flat profile (self time per symbol), the same
# by shared object, and a caller view (children) of the hottest paths. Needs linux-perf (Debian:
# linux-perf) and a kernel that lets us sample (perf_event_paranoid <= 2 for our own processes).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
BUILD=${BUILD:-build/release}
N=${N:-200000}
bin=$BUILD/bench/throughput
[ -x "$bin" ] || { echo "profile: $bin is missing: make bench-bins" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile: perf is missing (Debian: linux-perf)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/tally-profile.XXXXXX)
cleanup() { bash bench/collector/collector.sh stop "$tmp/collector" || true; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$tmp/collector" bench/results
port=$(bash bench/collector/collector.sh start "$tmp/collector")

for rules in ${CASES:-0 3}; do
    args=()
    case $rules in 1) args=(--rules=bench/rules/one) ;; 3) args=(--rules=bench/rules/three) ;; 5) args=(--rules=bench/rules/five) ;; esac
    curl -fsS --noproxy '*' -X POST "http://127.0.0.1:$port/reset" >/dev/null
    rm -f "$tmp/bench.db"*
    out=bench/results/profile-rules$rules.txt
    perf record -F 1999 --call-graph dwarf,16384 -o "$tmp/perf.data" -- \
        "$bin" --n="$N" --full_wait_us=100 --endpoint="http://127.0.0.1:$port" --write_key=bench \
        --store="$tmp/bench.db" --gzip=false "${args[@]}" >"$tmp/run.json" 2>"$tmp/perf.err"
    set +o pipefail   # head closes the pipes early
    {
        echo "# bench/profile.sh: file store, gzip off, rules=$rules, N=$N ($(date -Is))"
        cut -c1-400 "$tmp/run.json"
        echo "# collector: $(curl -fsS --noproxy '*' "http://127.0.0.1:$port/stats")"
        echo
        echo "## by thread (the first listed is usually the caller, the busiest other one the worker)"
        perf report -i "$tmp/perf.data" --stdio --no-children --sort pid -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
        echo
        echo "## by shared object"
        perf report -i "$tmp/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
        echo
        echo "## self time per symbol (top 60)"
        perf report -i "$tmp/perf.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.3 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -60
        echo
        echo "## inclusive time (children) per symbol, all threads (top 150)"
        perf report -i "$tmp/perf.data" --stdio --children --sort symbol -g none --percent-limit 0.5 2>/dev/null |
            grep -v "^#" | grep -v "^$" | head -150
    } >"$out"
    set -o pipefail
    echo "profile: $out"
done
