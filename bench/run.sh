#!/usr/bin/env bash
# tally's benchmark: `make bench` runs this after building $BUILD/bench/throughput.
#
# Everything runs on this machine, against 127.0.0.1 only: an nginx + Lua collector
# (bench/collector/) started here with a temporary config, the in-process driver
# (bench/throughput.c) for tally, and bench/node/bench.js for @segment/analytics-node 3.1.0.
# Each case runs RUNS times (interleaved: run 1 of every case, then run 2, ...); bench/report.py
# prints one table of medians (min-max) with the machine's description and writes the same as
# JSON to bench/results/. See bench/README.md for what each figure means.
#
# Environment: BUILD (default build/release), N (events per run, default 200000), RUNS (default 5),
# NODE_WINDOW (analytics-node pacing: events outstanding, default 300), NODE_SWEEP (extra
# analytics-node cases, one per window, e.g. NODE_SWEEP="100 1000 0"; 0 = unpaced), FULL_WAIT_US (tally
# caller's sleep when the queue is full, default 100), CASES (a regex on case names to run a
# subset, e.g. CASES='mem|segment'), KEEP_TMP=1 keeps the temp folder (logs, nginx.conf).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
BUILD=${BUILD:-build/release}
N=${N:-200000}
RUNS=${RUNS:-5}
NODE_WINDOW=${NODE_WINDOW:-300}
NODE_SWEEP=${NODE_SWEEP:-}
FULL_WAIT_US=${FULL_WAIT_US:-100}
CASES=${CASES:-.}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}   # seconds for one run before it is killed and counted as failed
export BENCH_LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
SEGMENT_VERSION=3.1.0
bin=$BUILD/bench/throughput
started=$(date +%s)

die() { echo "bench: $*" >&2; exit 1; }

# ---- components: install what is missing (scripts/deps.sh bench), then insist ----
[ -x "$bin" ] || die "$bin is missing: run 'make bench' (or make bench-bins) first"
have_all() {
    command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] &&
        command -v node >/dev/null && command -v npm >/dev/null &&
        command -v python3 >/dev/null && command -v curl >/dev/null && command -v wrk >/dev/null
}
if ! have_all; then
    echo "bench: installing missing components (scripts/deps.sh bench)"
    bash scripts/deps.sh bench
    for c in curl; do command -v $c >/dev/null || apt-get install -y -qq --no-install-recommends $c >/dev/null || true; done
fi
command -v nginx >/dev/null || die "nginx is missing (Debian: nginx-light)"
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || die "nginx's lua module is missing (Debian: libnginx-mod-http-lua)"
command -v node >/dev/null || die "node is missing (Debian: nodejs)"
command -v npm >/dev/null || die "npm is missing (Debian: npm)"
command -v python3 >/dev/null || die "python3 is missing"
command -v curl >/dev/null || die "curl is missing"
command -v wrk >/dev/null || die "wrk is missing (Debian: wrk)"
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' ||
    die "node $(node --version) is too old for @segment/analytics-node $SEGMENT_VERSION (needs 18+, declares 20+)"

# ---- @segment/analytics-node, pinned, in bench/node/node_modules (the bench's own folder) ----
seg_version() { node -p 'require("./bench/node/node_modules/@segment/analytics-node/package.json").version' 2>/dev/null || true; }
if [ "$(seg_version)" != "$SEGMENT_VERSION" ]; then
    echo "bench: npm install @segment/analytics-node@$SEGMENT_VERSION into bench/node/node_modules"
    if [ -f bench/node/package-lock.json ]; then
        (cd bench/node && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in bench/node failed"
    else
        (cd bench/node && npm install --no-audit --no-fund --loglevel=error) || die "npm install in bench/node failed"
    fi
    [ "$(seg_version)" = "$SEGMENT_VERSION" ] || die "bench/node has analytics-node '$(seg_version)', wanted $SEGMENT_VERSION"
fi

# ---- temp folder, collector, cleanup ----
tmp=$(mktemp -d /tmp/tally-bench.XXXXXX)
child=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$child" ] && kill "$child" 2>/dev/null && wait "$child" 2>/dev/null || true
    bash bench/collector/collector.sh stop "$tmp/collector" || true
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "bench: temp folder kept: $tmp" >&2; else rm -rf "$tmp"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$tmp/collector" "$tmp/store"
port=$(bash bench/collector/collector.sh start "$tmp/collector") || die "the nginx collector did not start"
base=http://127.0.0.1:$port
master=$(cat "$tmp/collector/nginx.pid")
echo "bench: collector nginx (2 workers) on $base; N=$N events, $RUNS runs per case"

collector() { curl -fsS --noproxy '*' -X "$1" "$base/$2"; }
clk_tck=$(getconf CLK_TCK)
# CPU seconds used so far by the collector's worker processes
collector_cpu() {
    local total=0 pid f
    for pid in $(ps -o pid= --ppid "$master"); do
        f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        f=${f##*) }
        set -- $f
        total=$((total + ${12} + ${13}))
    done
    python3 -c "print($total / $clk_tck)"
}

# ---- cases: name|kind|arguments ----
cases=()
cases+=("caller 1 thread|caller|--threads=1")
cases+=("caller 4 threads|caller|--threads=4")
# the server path: tally_send with a whole ~400-byte message, beside tally_track above (issue 18)
cases+=("caller send 1 thread|caller|--threads=1 --api=send --mode=server")
# consent (issue 17): two /dev/null destinations; on - stamp is the check, stamp - off the stamp
for c in off stamp on; do cases+=("caller consent=$c|caller|--threads=1 --consent=$c"); done
for store in mem file; do
    for gz in off on; do
        for rules in 0 1 3; do
            args="--gzip=$([ $gz = on ] && echo true || echo false)"
            case $rules in 1) args="$args --rules=bench/rules/one" ;; 3) args="$args --rules=bench/rules/three" ;; esac
            cases+=("e2e $store gzip=$gz rules=$rules|e2e-$store|$args")
            # the fastest case once more against a collector that only reads the body: the control
            # that shows whether the collector's parsing and counting limit the figures
            [ "$store $gz $rules" = "mem off 0" ] && cases+=("e2e mem gzip=off rules=0 null|e2e-null|$args")
        done
        # the rules most users run: naming + a 20-event tracking plan + a hand-written rule
        [ $gz = off ] && cases+=("e2e $store gzip=off rules=plan|e2e-$store|--gzip=false --rules=bench/rules/plan")
        # the server path end to end (issue 18): tally_send of whole messages in server mode, beside
        # the tally_track rows above: no rules, three, and the plan set
        if [ $gz = off ]; then
            for rules in 0 3 plan; do
                args="--gzip=false --api=send --mode=server"
                case $rules in 3) args="$args --rules=bench/rules/three" ;; plan) args="$args --rules=bench/rules/plan" ;; esac
                cases+=("e2e $store gzip=off rules=$rules send|e2e-$store|$args")
            done
        fi
    done
done
# rule_threads (issue 18): server mode, tally_send's messages from 5000 identities, three rules run
# by one rule state and by two (routed by userId)
for store in mem file; do
    for rt in 1 2; do
        cases+=("e2e $store server rules=three rule_threads=$rt|e2e-$store|--gzip=false --api=send --mode=server --rules=bench/rules/three --rule_threads=$rt")
    done
done
cases+=("segment analytics-node|segment|--window=$NODE_WINDOW --flush_interval=1000")
for w in $NODE_SWEEP; do
    cases+=("segment window=$w|segment-sweep|--window=$w --flush_interval=1000")
done

runs=$tmp/runs.ndjson
: >"$runs"
failures=0

run_case() { # name kind args run
    local name=$1 kind=$2 args=$3 run=$4 out err rc=0 c0 c1 stats extra=""
    err=$tmp/err.txt
    case $kind in
        caller)
            cmd=("$bin" --n="$N" --full_wait_us="$FULL_WAIT_US" --label="$name" $args) ;;
        e2e-mem)
            cmd=("$bin" --n="$N" --full_wait_us="$FULL_WAIT_US" --label="$name" --endpoint="$base" --write_key=bench
                 --store=:memory: $args) ;;
        e2e-null)
            cmd=("$bin" --n="$N" --full_wait_us="$FULL_WAIT_US" --label="$name" --endpoint="$base/null" --write_key=bench
                 --store=:memory: $args) ;;
        e2e-file)
            rm -f "$tmp/store/"*
            cmd=("$bin" --n="$N" --full_wait_us="$FULL_WAIT_US" --label="$name" --endpoint="$base" --write_key=bench
                 --store="$tmp/store/bench.db" $args) ;;
        segment|segment-sweep)
            cmd=(node bench/node/bench.js --n="$N" --host="$base" --label="$name" $args) ;;
    esac
    collector POST reset >/dev/null || die "collector /reset failed"
    c0=$(collector_cpu)
    timeout -k 5 "$RUN_TIMEOUT" "${cmd[@]}" >"$tmp/out.txt" 2>"$err" &
    child=$!
    wait "$child" || rc=$?
    child=""
    c1=$(collector_cpu)
    stats=$(collector GET stats) || die "collector /stats failed"
    out=$(tail -n 1 "$tmp/out.txt")
    if [ $rc -ne 0 ] || [ -z "$out" ]; then
        failures=$((failures + 1))
        echo "bench: FAILED ($name, run $run, exit $rc):" >&2
        tail -n 5 "$err" >&2
        out='{"failed":true}'
    fi
    [ $kind = caller ] || [ $kind = e2e-null ] && stats=null
    printf '{"case":"%s","kind":"%s","run":%d,"args":"%s","result":%s,"collector":%s,"collector_cpu_s":%s}\n' \
        "$name" "$kind" "$run" "${cmd[*]:1}" "$out" "$stats" "$(python3 -c "print(round($c1 - $c0, 3))")" >>"$runs"
    python3 bench/report.py --progress "$runs" "$name" "$run"
}

for run in $(seq 1 "$RUNS"); do
    for c in "${cases[@]}"; do
        IFS='|' read -r name kind args <<<"$c"
        [[ $name =~ $CASES ]] || continue
        run_case "$name" "$kind" "$args" "$run"
    done
done

# tally report over 1,000,000 events: its own fixture and figures (bench/report_scale.sh)
if [[ "report 1M" =~ $CASES ]]; then
    BUILD=$BUILD bash bench/report_scale.sh || failures=$((failures + 1))
fi

# what tracking costs an nginx (no logging, a JSON access_log line, resty.tally's page): its own
# table (bench/nginx.sh), against this collector
nginx_table=()
if [[ "nginx overhead" =~ $CASES ]]; then
    if BUILD=$BUILD COLLECTOR_BASE=$base bash bench/nginx.sh; then
        nginx_table=(--nginx-table bench/results/nginx-latest.txt) # printed again under the main table
    else
        failures=$((failures + 1))
    fi
fi

finished=$(date +%s)
mkdir -p bench/results
python3 bench/report.py --runs "$runs" --out-dir bench/results --n "$N" --runs-per-case "$RUNS" \
    --node-window "$NODE_WINDOW" --full-wait-us "$FULL_WAIT_US" --seconds $((finished - started)) \
    --tally-bin "$bin" --build "$BUILD" --collector-conf "$tmp/collector/nginx.conf" "${nginx_table[@]}"
[ $failures -eq 0 ] || die "$failures run(s) failed (see above)"
