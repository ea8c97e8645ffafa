#!/usr/bin/env bash
# What tracking costs an nginx: Debian's nginx, 2 workers, answering a static 200 on 127.0.0.1,
# driven by wrk, with four log phases:
#   off         nothing logged (access_log off)
#   access_log  one JSON access_log line per request (escape=json, unbuffered: nginx's default)
#   page        resty.tally's page event per request from log_by_lua, built by the binding's
#               request fast path (t:log_page), server mode, a SQLite store per worker, delivered
#               to the bench's nginx collector
#   page table  the same event through the general path of examples/nginx (page_from_request +
#               t:page: a Lua table encoded to JSON), for comparison
# Each case runs NGINX_ROUNDS times, interleaved (round 1 of every case, then round 2, ...); every
# run starts its own nginx with a generated config in a temp folder and stops it by pid. Prints
# requests/s, wrk's latency p50/p99, the CPU the nginx workers (their libtally threads included)
# used per request, and for tracking how much it adds per request next to what the access_log
# line adds. For "page" the collector's count of delivered events is checked against the requests
# answered.
#
# Environment: BUILD (build/release), NGINX_ROUNDS (3), NGINX_SECONDS (6, per run), NGINX_CONNS
# (32 connections, 1 wrk thread), NGINX_CASES (a regex on case names), COLLECTOR_BASE (a running
# collector, e.g. bench/run.sh's; otherwise one is started here), KEEP_TMP=1 keeps the temp folder,
# NGINX_PERF=1 records a perf profile of the workers during each measured run and prints its top
# NGINX_PERF_LINES (25) lines (not part of make bench: perf itself costs CPU); to compare with
# another version, NGINX_TALLY_LIB (a libtally.so) and NGINX_LUA_DIR (a folder with resty/tally.lua);
# NGINX_TALLY_CONFIG adds fields to the page cases' tally.new{...} (e.g. 'commit_interval_ms = 50').
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
BUILD=${BUILD:-build/release}
ROUNDS=${NGINX_ROUNDS:-3}
SECONDS_PER_RUN=${NGINX_SECONDS:-6}
CONNS=${NGINX_CONNS:-32}
CASES_RE=${NGINX_CASES:-.}
lib=${NGINX_TALLY_LIB:-$repo/$BUILD/libtally.so}  # NGINX_TALLY_LIB: another build to compare
modules=/usr/lib/nginx/modules

die() { echo "bench nginx: $*" >&2; exit 1; }
[ -e "$lib" ] || die "$lib is missing: run make first"
command -v nginx >/dev/null || die "nginx is missing (Debian: nginx-light; scripts/deps.sh bench)"
[ -e $modules/ngx_http_lua_module.so ] || die "nginx's lua module is missing (Debian: libnginx-mod-http-lua)"
command -v wrk >/dev/null || die "wrk is missing (Debian: wrk; scripts/deps.sh bench)"

tmp=$(mktemp -d /tmp/tally-bench-nginx.XXXXXX)
chmod 755 "$tmp"
own_collector=
ngx_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_nginx
    [ -n "$own_collector" ] && bash bench/collector/collector.sh stop "$tmp/collector"
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "bench nginx: temp folder kept: $tmp" >&2; else rm -rf "$tmp"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${COLLECTOR_BASE:-}" ]; then
    mkdir -p "$tmp/collector"
    port=$(bash bench/collector/collector.sh start "$tmp/collector") || die "the nginx collector did not start"
    own_collector=1
    COLLECTOR_BASE=http://127.0.0.1:$port
fi
collector() { curl -fsS --noproxy '*' -X "$1" "$COLLECTOR_BASE/$2"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

clk_tck=$(getconf CLK_TCK)
# CPU ticks (user + system, every thread) of the master's children: the workers
workers_ticks() {
    local total=0 pid f
    for pid in $(cat "/proc/$ngx_pid/task/$ngx_pid/children" 2>/dev/null); do
        f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        f=${f##*) }
        # shellcheck disable=SC2086
        set -- $f
        total=$((total + ${12} + ${13}))
    done
    echo $total
}

# wrk prints one JSON line at the end: requests, seconds, latency percentiles (us), errors
cat >"$tmp/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format('{"requests":%d,"seconds":%.6f,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\n',
        summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

worker_user=
[ "$(id -u)" = 0 ] && worker_user="user $(id -un) $(id -gn);"

# write_conf CASE DIR PORT
write_conf() {
    local case=$1 dir=$2 port=$3 log="access_log off;" init="" phase=""
    case $case in
        access_log)
            log="log_format tjson escape=json '{\"time\":\"\$time_iso8601\",\"ip\":\"\$remote_addr\",\"method\":\"\$request_method\",\"uri\":\"\$request_uri\",\"status\":\$status,\"bytes\":\$body_bytes_sent,\"referer\":\"\$http_referer\",\"ua\":\"\$http_user_agent\",\"rt\":\$request_time}';
    access_log $dir/access.log tjson;" ;;
        page|page\ table)
            init="init_worker_by_lua_block {
        local tally = require \"resty.tally\"
        local store = assert(tally.claim_store(\"$dir/store\"))
        tally.instance = assert(tally.new { lib = \"$lib\", store = store, mode = \"server\",
            endpoint = \"$COLLECTOR_BASE\", write_key = \"bench\", anonymous_id_cookie = \"tally_aid\",
            log_level = \"warn\"${NGINX_TALLY_CONFIG:+, $NGINX_TALLY_CONFIG} })
    }
    exit_worker_by_lua_block { local t = require(\"resty.tally\").instance; if t then t:close(10000) end }"
            if [ "$case" = page ]; then
                phase="log_by_lua_block {
            local t = require(\"resty.tally\").instance
            local ok, err = t:log_page()
            if not ok then ngx.log(ngx.WARN, \"tally: page: \", err) end
        }"
            else
                phase="log_by_lua_block {
            local tally = require \"resty.tally\"
            local t = tally.instance
            local props, ctx = tally.page_from_request()
            local ok, err = t:page(nil, props, { context = ctx, timestamp = ngx.req.start_time() })
            if not ok then ngx.log(ngx.WARN, \"tally: page: \", err) end
        }"
            fi ;;
    esac
    cat >"$dir/nginx.conf" <<EOF
load_module $modules/ndk_http_module.so;
load_module $modules/ngx_http_lua_module.so;
worker_processes 2;
$worker_user
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    $log
    lua_package_path "${NGINX_LUA_DIR:-$repo/lua}/?.lua;;";
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 100000000;
    $init
    server {
        listen 127.0.0.1:$port backlog=1024;
        location / {
            default_type text/plain;
            $phase
            return 200 "ok\n";
        }
    }
}
EOF
}

stop_nginx() {
    [ -n "$ngx_pid" ] || return 0
    kill -QUIT "$ngx_pid" 2>/dev/null || true
    local i
    for i in $(seq 1 200); do [ -e "/proc/$ngx_pid" ] || break; sleep 0.05; done
    [ -e "/proc/$ngx_pid" ] && kill -KILL "$ngx_pid" 2>/dev/null
    wait "$ngx_pid" 2>/dev/null || true
    ngx_pid=
}

runs=$tmp/runs.ndjson
: >"$runs"
cases=("off" "access_log" "page" "page table")
uri="/products/42?utm_source=news&utm_medium=email&ref=home"
for round in $(seq 1 "$ROUNDS"); do
    for c in "${cases[@]}"; do
        [[ $c =~ $CASES_RE ]] || continue
        dir=$tmp/run
        rm -rf "$dir" && mkdir -p "$dir/store" && chmod 777 "$dir" "$dir/store"
        port=$(free_port)
        write_conf "$c" "$dir" "$port"
        collector POST reset >/dev/null
        nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g "daemon off;" >"$dir/nginx.out" 2>&1 &
        ngx_pid=$!
        # a returning visitor: the anonymous-id cookie, a referrer, a browser's user agent
        hdr=(-H "Cookie: tally_aid=4f9c2a3e-8d1b-4c6a-9e2f-1a2b3c4d5e6f" -H "Referer: https://example.com/search?q=shoes"
             -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0")
        up=0
        for _ in $(seq 1 100); do
            curl -fsS -o /dev/null --noproxy '*' "${hdr[@]}" "http://127.0.0.1:$port/" 2>/dev/null && { up=1; break; }
            sleep 0.05
        done
        [ $up = 1 ] || { cat "$dir/error.log" >&2; die "nginx ($c) did not answer"; }
        # warm-up (JIT traces, connections); its requests count for the delivery check
        wrk -t1 -c"$CONNS" -d1s -s "$tmp/report.lua" "${hdr[@]}" "http://127.0.0.1:$port$uri" >"$dir/warm.out"
        t0=$(workers_ticks)
        if [ -n "${NGINX_PERF:-}" ]; then
            # a profile of the workers (all their threads) during the measured run
            perf record -q -g -o "$tmp/perf-${c// /_}.data" \
                -p "$(tr ' ' ',' <"/proc/$ngx_pid/task/$ngx_pid/children" | sed 's/,*$//')" \
                -- sleep "$SECONDS_PER_RUN" 2>/dev/null &
            perf_pid=$!
        fi
        wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency -s "$tmp/report.lua" "${hdr[@]}" \
            "http://127.0.0.1:$port$uri" >"$dir/wrk.out"
        t1=$(workers_ticks)
        [ -n "${NGINX_PERF:-}" ] && wait "$perf_pid"
        stop_nginx
        if [ -n "${NGINX_PERF:-}" ]; then
            f=$tmp/perf-${c// /_}
            for sort in comm comm,dso comm,dso,sym; do
                perf report -q -i "$f.data" --no-children -g none --sort $sort --stdio 2>/dev/null |
                    grep -E '^ +[0-9]' | head -n "${NGINX_PERF_LINES:-25}" || true
                echo
            done >"$f.txt"
            echo "bench nginx: $c, round $round: perf, self time by thread; thread and object; symbol:"
            cat "$f.txt"
        fi
        res=$(tail -n 1 "$dir/wrk.out")
        answered=$(( $(tail -n 1 "$dir/warm.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])') + 1 ))
        delivered=null
        if [[ $c == page* ]]; then
            delivered=$(collector GET stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique"])')
        fi
        errs=$(grep -cE '\[(alert|crit|emerg|error)\]|tally: ' "$dir/error.log" || true)
        printf '{"case":"%s","round":%d,"wrk":%s,"before":%d,"cpu_s":%s,"delivered":%s,"log_errors":%d}\n' \
            "$c" "$round" "$res" "$answered" "$(python3 -c "print(($t1 - $t0) / $clk_tck)")" "$delivered" "$errs" >>"$runs"
        python3 - "$runs" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
w = r["wrk"]
print("bench nginx: %-10s round %d: %7.1fk req/s, p50 %d us, p99 %d us, %.2f us CPU/req%s; errors: wrk %d, non-2xx %d, error.log %d" % (
    r["case"], r["round"], w["requests"] / w["seconds"] / 1e3, w["p50_us"], w["p99_us"],
    r["cpu_s"] / w["requests"] * 1e6, "" if r["delivered"] is None else
    ", %d of %d answered delivered" % (r["delivered"], r["before"] + w["requests"]),
    w["errors"], w["non2xx"], r["log_errors"]))
EOF
    done
done

mkdir -p bench/results
python3 - "$runs" "$CONNS" "$SECONDS_PER_RUN" <<'EOF' | tee bench/results/nginx-latest.txt
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
conns, secs = sys.argv[2], sys.argv[3]
order = []
by = {}
for r in runs:
    if r["case"] not in by:
        order.append(r["case"])
    by.setdefault(r["case"], []).append(r)
def med(xs): return statistics.median(xs)
rows = {}
for c in order:
    rs = by[c]
    rps = [r["wrk"]["requests"] / r["wrk"]["seconds"] for r in rs]
    rows[c] = {
        "rps": med(rps),
        "us": med([1e6 / x for x in rps]),
        "p50": med([r["wrk"]["p50_us"] for r in rs]),
        "p99": med([r["wrk"]["p99_us"] for r in rs]),
        "cpu": med([r["cpu_s"] / r["wrk"]["requests"] * 1e6 for r in rs]),
        "errors": sum(r["wrk"]["errors"] + r["wrk"]["non2xx"] + r["log_errors"] for r in rs),
        # every answered request is logged; wrk may stop before reading the last answers, so
        # more can arrive than it counted, never fewer
        "lost": None if rs[0]["delivered"] is None else
            sum(max(0, r["before"] + r["wrk"]["requests"] - r["delivered"]) for r in rs),
        "n": len(rs),
    }
print("nginx overhead: wrk 1 thread, %s connections, %s s per run, medians of %d runs; nginx 2 workers, static 200"
      % (conns, secs, max(r["n"] for r in rows.values())))
print("%-12s %12s %9s %9s %13s %15s %15s %s" % ("log phase", "requests/s", "p50 us", "p99 us", "CPU us/req",
      "added us/req", "added CPU/req", "errors / not delivered"))
base = rows.get("off")
for c in order:
    r = rows[c]
    add = add_cpu = "-"
    if base and c != "off":
        add = "%.2f" % (r["us"] - base["us"])
        add_cpu = "%.2f" % (r["cpu"] - base["cpu"])
    lost = "" if r["lost"] is None else " / %d" % r["lost"]
    print("%-12s %11.1fk %9d %9d %13.2f %15s %15s %d%s" % (c, r["rps"] / 1e3, r["p50"], r["p99"], r["cpu"],
          add, add_cpu, r["errors"], lost))
line = rows.get("access_log")
if base and line:
    for c in order:
        if c.startswith("page"):
            r = rows[c]
            print("%s / access_log, added time per request: %.2fx; added CPU per request: %.2fx" % (
                c, (r["us"] - base["us"]) / (line["us"] - base["us"]), (r["cpu"] - base["cpu"]) / (line["cpu"] - base["cpu"])))
EOF
