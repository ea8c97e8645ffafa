#!/usr/bin/env bash
# `tally report` at scale: a sqlite destination's events table with 1,000,000 events (written by
# direct SQL inserts, the way the destination lays them out: ~380-byte bodies, 20 track events,
# identify and page, 5,000 users, 20,000 sessions, 1% of messages with a violation, one property
# with a type drift), then the report is timed, weighed and opened in headless Chromium.
# Targets (issue 20): report <= 10 s, page <= 5 MB, opens in the browser <= 2 s.
#
#   BUILD=build/release bash bench/report_scale.sh      (make bench runs it; CASES='report' alone)
#
# Environment: REPORT_N (events, default 1000000), REPORT_RUNS (default 3; medians are printed).
# The fixture is kept in build/bench/ and made again only when missing or of another size.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
BUILD=${BUILD:-build/release}
N=${REPORT_N:-1000000}
RUNS=${REPORT_RUNS:-3}
tally=$BUILD/tally
db=build/bench/report-$N.db
out=build/bench/report-$N.html
[ -x "$tally" ] || { echo "report bench: $tally is missing (make)" >&2; exit 1; }
command -v sqlite3 >/dev/null || { echo "report bench: sqlite3 is missing" >&2; exit 1; }
CHROMIUM=$(command -v chromium || true)
[ -n "$CHROMIUM" ] || bash scripts/deps.sh test >/dev/null
CHROMIUM=$(command -v chromium) || { echo "report bench: chromium is missing" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p build/bench

if [ "$(sqlite3 "$db" 'SELECT count(*) FROM events' 2>/dev/null || echo 0)" != "$N" ]; then
    echo "report bench: writing $N events into $db"
    rm -f "$db" "$db-wal" "$db-shm"
    # the table exactly as the sqlite destination creates it
    "$tally" track --userId=seed --event='Seed' --timestamp=2026-05-28T20:00:00.000Z \
        --destinations="[{\"type\":\"sqlite\",\"path\":\"$db\"}]" >/dev/null
    sqlite3 "$db" "DELETE FROM events"
    sqlite3 "$db" >/dev/null <<EOF
PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $N),
r AS (SELECT i,
  CASE WHEN i % 50 = 0 THEN 'identify' WHEN i % 17 = 0 THEN 'page' ELSE 'track' END AS type,
  'Event ' || (i * 7919 % 20) AS ev, 'user-' || (i % 5000) AS uid, 'anon-' || (i % 7000) AS aid,
  'sess-' || (i / 50) AS sid, strftime('%Y-%m-%dT%H:%M:%fZ', 1780000000 + i * 2.6, 'unixepoch') AS ts FROM c)
INSERT INTO events(message_id, type, event, name, user_id, anonymous_id, session_id, timestamp, received_at, body)
SELECT 'm-' || i, type, CASE WHEN type = 'track' THEN ev END, CASE WHEN type = 'page' THEN 'Home' END,
  CASE WHEN i % 3 THEN uid END, aid, sid, ts, ts,
  json_object('type', type, 'event', CASE WHEN type = 'track' THEN ev END, 'messageId', 'm-' || i,
    'userId', CASE WHEN i % 3 THEN uid END, 'anonymousId', aid, 'timestamp', ts,
    CASE WHEN type = 'identify' THEN 'traits' ELSE 'properties' END,
      json_object('level', i % 30, 'score', CASE WHEN i % 101 = 0 THEN 'high' ELSE i % 1000 END,
                  'item_name', 'sword', 'price', (i % 100) * 0.25, 'is_new', json(CASE WHEN i % 2 THEN 'true' ELSE 'false' END)),
    'context', json_object('library', json_object('name', 'tally', 'version', '0.1.0'),
       'session', json_object('id', sid, 'index', i / 50, 'started_at', ts),
       'protocols', CASE WHEN i % 97 = 0 THEN json_object('violations', json_array(json_object('type', 'plan.unplanned_event',
          'field', 'event', 'description', '"' || ev || '" is not in the tracking plan'))) END))
FROM r;
EOF
fi

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# the report: wall and CPU seconds per run
for run in $(seq "$RUNS"); do
    /usr/bin/env time -f '%e %U %S %M' -o "$tmp/time" "$tally" report --events="$db" -o "$out" >/dev/null
    read -r wall user sys rss <"$tmp/time"
    echo "$wall" >>"$tmp/wall"
    python3 -c "print(round($user + $sys, 2))" >>"$tmp/cpu"
    echo "$rss" >>"$tmp/rss"
done
bytes=$(stat -c %s "$out")

# the browser: a copy of the page that logs when its load event has run (the page's CSP allows
# only its own print script, so the copy's CSP lets inline scripts run); Chromium prints console
# lines on stderr
sed "s/script-src '[^']*'/script-src 'unsafe-inline'/" "$out" >"$tmp/timed.html"
printf '%s' "<script>addEventListener('load',function(){setTimeout(function(){console.log('tally-load-ms '+Math.round(performance.now()))},0)})</script>" >>"$tmp/timed.html"
for run in $(seq "$RUNS"); do
    prof=$(mktemp -d "$tmp/chrome.XXXX")
    timeout 120 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir="$prof" \
        --enable-logging=stderr --v=0 --dump-dom "file://$tmp/timed.html" >/dev/null 2>"$tmp/console" || true
    { grep -o 'tally-load-ms [0-9]*' "$tmp/console" || true; } | awk '{print $2}' >>"$tmp/load"
    rm -rf "$prof"
done
[ -s "$tmp/load" ] || { echo "report bench: Chromium never reported the load event" >&2; exit 1; }

wall=$(median <"$tmp/wall") cpu=$(median <"$tmp/cpu") rss=$(median <"$tmp/rss") load=$(median <"$tmp/load")
verdict() { python3 -c "print('ok' if $1 <= $2 else 'OVER')"; }
echo
echo "tally report over $N events ($db, $(du -m "$db" | cut -f1) MB), median of $RUNS runs, load average $(cut -d' ' -f1-3 /proc/loadavg):"
printf '  %-28s %10s   target %-8s %s\n' "report generated (wall s)" "$wall" "<= 10" "$(verdict "$wall" 10)"
printf '  %-28s %10s\n' "report CPU (user+sys s)" "$cpu"
printf '  %-28s %10s\n' "report peak RSS (MiB)" "$((rss / 1024))"
printf '  %-28s %10s   target %-8s %s\n' "page size (MB)" "$(python3 -c "print(round($bytes / 1e6, 3))")" "<= 5" \
    "$(verdict "$bytes" 5000000)"
printf '  %-28s %10s   target %-8s %s\n' "opens in Chromium (ms)" "$load" "<= 2000" "$(verdict "$load" 2000)"
