#!/usr/bin/env bash
# Self-test of tests/e2e/collector.py, driven with curl: if the collector itself
# miscounts or injects the wrong fault, every delivery test built on it lies.
# Needs python3, curl and gzip; the TLS case also needs openssl (skipped without).
set -u

here=$(cd "$(dirname "$0")" && pwd)
collector=$here/collector.py
tmp=$(mktemp -d)
passed=0
failed=0
KEY=selftest-key
URL=
col_pid=

cleanup() {
    if [ -n "$col_pid" ]; then kill "$col_pid" 2>/dev/null; wait "$col_pid" 2>/dev/null; fi
    if [ -n "${tls_pid:-}" ]; then kill "$tls_pid" 2>/dev/null; wait "$tls_pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

check() { # name expected actual
    if [ "$2" = "$3" ]; then
        passed=$((passed + 1)); echo "ok   $1"
    else
        failed=$((failed + 1)); echo "FAIL $1: expected '$2', got '$3'"
    fi
}

# Starts a collector in the background; sets STARTED_PID and STARTED_PORT.
# A fifo makes the read block until the "PORT" line exists, instead of polling a file.
start() {
    local fifo=$tmp/port.$RANDOM line=
    mkfifo "$fifo"
    python3 "$collector" "$@" >"$fifo" &
    STARTED_PID=$!
    read -r -t 10 line <"$fifo"
    rm -f "$fifo"
    STARTED_PORT=${line#PORT }
    [ "${line%% *}" = PORT ] && [ -n "$STARTED_PORT" ]
}

# post PATH BODY [curl args...]: prints the HTTP status; curl's exit code is returned.
post() {
    local path=$1 body=$2; shift 2
    curl -sS --noproxy '*' -o "$tmp/resp" -D "$tmp/hdr" -w '%{http_code}' \
        -H 'Content-Type: application/json' -u "$KEY:" -A tally/selftest \
        --data-binary "$body" "$@" "$URL$path" 2>"$tmp/curl.err"
}

control() { post /control "$1" >/dev/null; }

# q EXPR: evaluates a Python expression over d, the parsed GET /received.
q() {
    curl -sS --noproxy '*' "$URL/received" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# wait_for EXPR [seconds]: polls /received until EXPR is True (an observable
# condition, so no guessed sleep); returns 1 when it never becomes true.
wait_for() {
    local deadline=$((SECONDS + ${2:-5}))
    while [ "$SECONDS" -le "$deadline" ]; do
        [ "$(q "$1" 2>/dev/null)" = True ] && return 0
        sleep 0.02
    done
    return 1
}

gone() { # pid: true once the process no longer exists or is only a zombie
    [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

wait_gone() { # pid seconds
    local deadline=$((SECONDS + $2))
    while [ "$SECONDS" -le "$deadline" ]; do gone "$1" && return 0; sleep 0.05; done
    return 1
}

if ! start; then echo "collector did not start"; echo "0 passed, 1 failed"; exit 1; fi
col_pid=$STARTED_PID
URL=http://127.0.0.1:$STARTED_PORT
check "health" ok "$(curl -sS --noproxy '*' "$URL/health")"

# --- plain batch -------------------------------------------------------------
check "plain batch status" 200 "$(post /v1/batch '{"batch":[{"type":"track","messageId":"p1"},{"type":"track","messageId":"p2"}],"sentAt":"2024-01-01T00:00:00.000Z"}')"
check "plain batch body" '{"success": true}' "$(cat "$tmp/resp")"
check "plain accepted" 2 "$(q 'd["accepted_messages"]')"
check "plain auth user" "$KEY" "$(q 'd["requests"][-1]["auth_user"]')"
check "plain auth password empty" "" "$(q 'd["requests"][-1]["auth_password"]')"
check "plain content type" application/json "$(q 'd["requests"][-1]["content_type"]')"
check "plain user agent" tally/selftest "$(q 'd["requests"][-1]["user_agent"]')"
check "plain sentAt" 2024-01-01T00:00:00.000Z "$(q 'd["requests"][-1]["sent_at"]')"

# --- gzip batch --------------------------------------------------------------
gz_body='{"batch":[{"type":"identify","messageId":"g1","traits":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}]}'
printf '%s' "$gz_body" | gzip -c >"$tmp/body.gz"
check "gzip status" 200 "$(post /v1/batch "@$tmp/body.gz" -H 'Content-Encoding: gzip')"
check "gzip encoding recorded" gzip "$(q 'd["requests"][-1]["content_encoding"]')"
check "gzip raw bytes" "$(wc -c <"$tmp/body.gz" | tr -d ' ')" "$(q 'd["requests"][-1]["raw_bytes"]')"
check "gzip decoded bytes" "${#gz_body}" "$(q 'd["requests"][-1]["decoded_bytes"]')"
check "gzip accepted" 3 "$(q 'd["accepted_messages"]')"

# --- scripted 500 then 200 ---------------------------------------------------
control '{"script":[{"status":500}]}'
check "script queued" 1 "$(q 'd["script_remaining"]')"
check "scripted 500" 500 "$(post /v1/batch '{"batch":[{"messageId":"s1"}]}')"
check "500 not accepted" 3 "$(q 'd["accepted_messages"]')"
check "500 recorded" "500 False" "$(q '"%s %s" % (d["requests"][-1]["status_returned"], d["requests"][-1]["accepted"])')"
check "retry after 500" 200 "$(post /v1/batch '{"batch":[{"messageId":"s1"}]}')"
check "retry accepted once" "4 0" "$(q '"%d %d" % (d["accepted_messages"], d["duplicates"])')"

# --- 429 with Retry-After ----------------------------------------------------
control '{"script":[{"status":429,"retry_after":"2"}]}'
check "scripted 429" 429 "$(post /v1/batch '{"batch":[{"messageId":"t1"}]}')"
check "429 Retry-After header" 2 "$(grep -i '^Retry-After:' "$tmp/hdr" | tr -d '\r' | awk '{print $2}')"
check "429 not accepted" 4 "$(q 'd["accepted_messages"]')"

# --- duplicates, malformed JSON, single-message path -------------------------
post /v1/batch '{"batch":[{"messageId":"p1"}]}' >/dev/null
check "duplicate counted" "5 4 1" "$(q '"%d %d %d" % (d["accepted_messages"], d["unique_message_ids"], d["duplicates"])')"
check "malformed -> 400" 400 "$(post /v1/batch '{"batch":[')"
check "malformed recorded" "400 True" "$(q '"%s %s" % (d["requests"][-1]["status_returned"], d["requests"][-1]["error"] is not None)')"
check "single track" 200 "$(post /v1/track '{"type":"track","event":"E","messageId":"one"}')"
check "single recorded as batch of one" "/v1/track 1" "$(q '"%s %d" % (d["requests"][-1]["path"], len(d["requests"][-1]["messages"]))')"
check "unknown step key rejected" 400 "$(post /control '{"script":[{"stauts":500}]}')"

# --- connection-level faults -------------------------------------------------
control '{"script":[{"reset":true}]}'
post /v1/batch '{"batch":[{"messageId":"r1"}]}' >/dev/null
check "reset -> curl sees a reset (56)" 56 $?
check "reset recorded, not accepted" "reset False" "$(q '"%s %s" % (d["requests"][-1]["fault"], d["requests"][-1]["accepted"])')"

control '{"script":[{"close_mid_response":true}]}'
post /v1/batch '{"batch":[{"messageId":"c1"}]}' >/dev/null
check "close mid response -> partial (18)" 18 $?
check "lost ack still accepted" "close_mid_response True" "$(q '"%s %s" % (d["requests"][-1]["fault"], d["requests"][-1]["accepted"])')"

before=$(q 'd["total_requests"]')
control '{"script":[{"delay_ms":1500,"status":503}]}'
post /v1/batch '{"batch":[{"messageId":"d1"}]}' --max-time 0.3 >/dev/null
check "delay -> client timeout (28)" 28 $?
wait_for "d['total_requests'] > $before and d['requests'][-1]['fault'] == 'delay'"
check "delayed request recorded" 0 $?

# --- /reset ------------------------------------------------------------------
control '{"script":[{"status":500},{"status":500}],"default":{"status":502}}'
post /reset '' >/dev/null
check "reset clears" "0 0 0" "$(q '"%d %d %d" % (d["total_requests"], d["accepted_messages"], d["script_remaining"])')"
check "reset restores default" 200 "$(post /v1/batch '{"batch":[{"messageId":"x1"}]}')"

# --- outage: listener closed, same port re-opened ----------------------------
check "down accepted" 200 "$(post /control '{"down_ms":700}')"
curl -sS --noproxy '*' -o /dev/null "$URL/health" 2>/dev/null
check "down -> connection refused (7)" 7 $?
deadline=$((SECONDS + 5)); up=no
while [ "$SECONDS" -le "$deadline" ]; do
    if [ "$(curl -s --noproxy '*' "$URL/health")" = ok ]; then up=yes; break; fi
    sleep 0.02
done
check "same port back up" yes "$up"
check "records survive the outage" 1 "$(q 'd["accepted_messages"]')"

# --- TLS ---------------------------------------------------------------------
if command -v openssl >/dev/null 2>&1; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$tmp/key.pem" -out "$tmp/cert.pem" >/dev/null 2>&1
    if start --tls "$tmp/cert.pem" "$tmp/key.pem"; then
        tls_pid=$STARTED_PID
        saved=$URL; URL=https://127.0.0.1:$STARTED_PORT
        check "tls batch with trusted CA" 200 "$(post /v1/batch '{"batch":[{"messageId":"tls1"}]}' --cacert "$tmp/cert.pem")"
        post /v1/batch '{"batch":[{"messageId":"tls2"}]}' >/dev/null
        check "tls untrusted -> curl refuses (60)" 60 $?
        check "tls accepted only the trusted one" 1 "$(curl -sS --noproxy '*' --cacert "$tmp/cert.pem" "$URL/received?summary=1" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted_messages"])')"
        kill "$tls_pid"; wait "$tls_pid"
        check "tls collector exits 0 on SIGTERM" 0 $?
        tls_pid=; URL=$saved
    else
        check "tls collector starts" started failed
    fi
else
    echo "skip tls (no openssl)"
fi

# --- lifetime: never outlive the test ----------------------------------------
fifo=$tmp/orphan.fifo
mkfifo "$fifo"
# The subshell is the collector's parent and exits as soon as it is listening.
orphan=$( (python3 "$collector" >"$fifo" & read -r -t 10 _ <"$fifo"; echo $!) )
wait_gone "$orphan" 5
check "exits when its parent dies" 0 $?

start --max-seconds 1 >/dev/null
short=$STARTED_PID
wait_gone "$short" 5
check "exits after --max-seconds" 0 $?
wait "$short" 2>/dev/null

kill "$col_pid"; wait "$col_pid"
check "exits 0 on SIGTERM" 0 $?
col_pid=

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
