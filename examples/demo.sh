#!/usr/bin/env bash
# `make demo`: plays one session of the example game (examples/game), then summarizes what tally
# recorded, straight from the local SQLite events table and the store. Builds nothing: make has
# built $BUILD/examples/game and $BUILD/tally (target demo-bins).
#
#   BUILD=build/release bash examples/demo.sh
#
# Each run starts from a fresh events database and store in build/demo/. Rules come from
# examples/rules when it holds any *.lua (DEMO_RULES=dir to use another folder). With
# TALLY_WRITE_KEY and TALLY_ENDPOINT set, the runtime also delivers to that endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build/release}
game=$BUILD/examples/game
cli=$BUILD/tally
out=build/demo
events=$out/events.db
store=$out/store.db
rules=${DEMO_RULES:-examples/rules}

for f in "$game" "$cli"; do
  [ -x "$f" ] || { echo "demo: $f is missing (run: make demo)" >&2; exit 1; }
done
command -v sqlite3 >/dev/null || { echo "demo: the sqlite3 CLI is missing (apt-get install sqlite3)" >&2; exit 1; }

mkdir -p "$out"
rm -f "$events" "$events-wal" "$events-shm" "$store" "$store-wal" "$store-shm"

echo "== playing (examples/game/game.c, mods in examples/game/mods)"
"$game" --events "$events" --store "$store" --rules "$rules" --mods examples/game/mods | sed 's/^/   /'

q() { sqlite3 -batch -header -column "$events" "$@"; }
section() { printf '\n== %s\n' "$1"; }

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

section "violations (context.protocols.violations)"
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
