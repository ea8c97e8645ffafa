#!/usr/bin/env bash
# `make demo`: plays one session of the example game (examples/game), then summarizes what tally
# recorded, straight from the local SQLite events table and the store. Builds nothing: make has
# built $BUILD/examples/game and $BUILD/tally (target demo-bins).
#
#   BUILD=build/release bash examples/demo.sh
#
# Each run starts from a fresh events database and store in build/demo/ (DEMO_OUT=dir for another;
# DEMO_LOADING_MS=0 skips the loading screens). Rules come from
# examples/rules when it holds any *.lua (DEMO_RULES=dir to use another folder). With
# TALLY_WRITE_KEY and TALLY_ENDPOINT set, the runtime also delivers to that endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build/release}
game=$BUILD/examples/game
cli=$BUILD/tally
out=${DEMO_OUT:-build/demo}
events=$out/events.db
store=$out/store.db
rules=${DEMO_RULES:-examples/rules}

for f in "$game" "$cli"; do
  [ -x "$f" ] || { echo "demo: $f is missing (run: make demo)" >&2; exit 1; }
done
command -v sqlite3 >/dev/null || { echo "demo: the sqlite3 CLI is missing (apt-get install sqlite3)" >&2; exit 1; }

mkdir -p "$out"
rm -f "$events" "$events-wal" "$events-shm" "$store" "$store-wal" "$store-shm"

echo "== playing (examples/game/game.c, mods in examples/game/mods; [rules] lines: what the rules did)"
"$game" --events "$events" --store "$store" --rules "$rules" --mods examples/game/mods \
  --loading-ms "${DEMO_LOADING_MS:-400}" >"$out/play.txt"
grep -v '^runtime stats: ' "$out/play.txt" | sed 's/^/   /'
stats=$(sed -n 's/^runtime stats: //p' "$out/play.txt")

q() { sqlite3 -batch -header -column "$events" "$@"; }
section() { printf '\n== %s\n' "$1"; }
# qs SQL: runs SQL with the runtime's stats JSON bound as :stats (sqlite's JSON functions read it)
qs() { sqlite3 -batch -header -column :memory: ".parameter set :stats '${stats//\'/\'\'}'" "$1"; }

section "events by type and name"
q "SELECT type, coalesce(event, name, '') AS name, count(*) AS n FROM events GROUP BY 1, 2 ORDER BY 1, 2;"

section "events by sender (context.mod)"
q "SELECT coalesce(json_extract(body, '$.context.mod.name') || ' ' || json_extract(body, '$.context.mod.version'),
          '(the game itself)') AS sender, count(*) AS n
   FROM events GROUP BY 1 ORDER BY 2 DESC;"

section "sessions"
q "SELECT count(DISTINCT session_id) AS sessions FROM events;"
q "SELECT json_extract(body, '$.context.session.index') AS idx, substr(session_id, 1, 8) AS session,
          count(*) AS events, substr(min(timestamp), 12, 12) AS first, substr(max(timestamp), 12, 12) AS last,
          group_concat(DISTINCT coalesce(user_id, '(anonymous)')) AS users
   FROM events GROUP BY session_id ORDER BY min(id);"

section "users"
q "SELECT count(DISTINCT user_id) AS user_ids, count(DISTINCT anonymous_id) AS anonymous_ids FROM events;"
q "SELECT substr(anonymous_id, 1, 8) AS anonymous_id, coalesce(user_id, '(anonymous)') AS user_id, count(*) AS events
   FROM events GROUP BY anonymous_id, user_id ORDER BY min(id);"

section "levels (speedrun mod)"
q "SELECT json_extract(body, '$.properties.level') AS level, count(*) AS runs,
          min(json_extract(body, '$.properties.duration_ms')) AS best_ms,
          max(json_extract(body, '$.properties.score')) AS best_score
   FROM events WHERE event = 'level completed' GROUP BY 1 ORDER BY 1;"

section "purchases"
q "SELECT coalesce(user_id, '(anonymous)') AS user_id, json_extract(body, '$.properties.item') AS item,
          json_extract(body, '$.properties.price') AS price, json_extract(body, '$.properties.currency') AS currency
   FROM events WHERE event = 'item purchased';"

section "rules at work: fixed (the speedrun mod sent \"Personal Best\" with durationMs)"
q "SELECT event, json_extract(body, '$.properties.level') AS level,
          json_extract(body, '$.properties.duration_ms') AS duration_ms,
          json_extract(body, '$.properties.durationMs') IS NOT NULL AS camel_key_left
   FROM events WHERE event IN ('personal best', 'Personal Best') ORDER BY id;"

section "rules at work: violations kept and reported (the speedrun mod's one-word \"finished\")"
q "SELECT event, json_extract(body, '$.context.mod.name') AS mod, count(*) AS n
   FROM events WHERE event = 'finished' GROUP BY 1, 2;"

section "runtime stats (tally_stats)"
if [ -z "$stats" ]; then
  echo "(the game printed no stats)"
else
  qs "SELECT key AS counter, value FROM json_each(:stats) WHERE type IN ('integer', 'real');"
  echo
  qs "SELECT json_extract(value, '$.name') AS rule, json_extract(value, '$.stage') AS stage,
             json_extract(value, '$.calls') AS calls, json_extract(value, '$.violations') AS violations,
             json_extract(value, '$.dropped') AS dropped, json_extract(value, '$.errors') AS errors,
             CASE json_extract(value, '$.disabled') WHEN 1 THEN 'yes' ELSE 'no' END AS disabled
      FROM json_each(:stats, '$.rules');"
  echo
  qs "SELECT json_extract(value, '$.name') AS destination, json_extract(value, '$.delivered') AS delivered,
             json_extract(value, '$.failed') AS failed, json_extract(value, '$.retried') AS retried,
             json_extract(value, '$.batches') AS batches
      FROM json_each(:stats, '$.destinations');"
fi

section "plan violations recorded on messages (context.protocols.violations, by tally.plan rules)"
n=$(sqlite3 -batch "$events" "SELECT count(*) FROM events, json_each(events.body, '$.context.protocols.violations');")
if [ "$n" -eq 0 ]; then
  echo "(none)"
else
  q "SELECT json_extract(v.value, '$.type') AS type, json_extract(v.value, '$.field') AS field,
            json_extract(v.value, '$.description') AS description, count(*) AS n
     FROM events, json_each(events.body, '$.context.protocols.violations') AS v
     GROUP BY 1, 2, 3 ORDER BY 4 DESC;"
fi

section "delivery per destination ($cli inspect $store)"
"$cli" inspect "$store"

section "report (tally report)"
naming=()
[ -f "$rules/10_naming.lua" ] && naming=(--naming="$rules/10_naming.lua")
"$cli" report --events="$events" --store="$store" --plan=examples/game/plan.lua "${naming[@]}" -o "$out/report.html"
echo "open file://$PWD/$out/report.html"

printf '\nfiles: %s (events), %s (store)\n' "$events" "$store"
exit 0
