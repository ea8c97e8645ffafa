#!/usr/bin/env bash
# scripts/check-cycles.py itself (test_no_src_cycles.sh runs it on src/): tiny objects compiled
# in a temporary directory that use each other's functions in a pair, around a loop of three, or
# in a plain chain, with and without an allow-list.
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
check_cycles() { python3 "$repo/scripts/check-cycles.py" "$@"; }
passed=0 failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # name condition-result(0/1) [detail]
    if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "ok   $1"
    else failed=$((failed + 1)); echo "FAIL $1${3:+: $3}"; fi
}

# obj NAME 'C source': compiles $tmp/obj/NAME.o
obj() {
    mkdir -p "$(dirname "$tmp/obj/$1")"
    printf '%s\n' "$2" >"$tmp/$(basename "$1").c"
    cc -c -o "$tmp/obj/$1.o" "$tmp/$(basename "$1").c" || { echo "FAIL cc $1"; exit 1; }
}
obj a    'int b_fn(void); int a_fn(void) { return b_fn(); }'
obj b    'int a_fn(void); int b_fn(void) { return a_fn() + 1; }'
obj x    'int y_fn(void); int x_fn(void) { return y_fn(); }'
obj y    'int z_fn(void); int y_fn(void) { return z_fn(); }'
obj z    'int x_fn(void); int z_fn(void) { return x_fn(); }'
obj cli/p 'int q_fn(void); int p_fn(void) { return q_fn(); }'
obj q    'int r_fn(void); int q_fn(void) { return r_fn(); }'
obj r    'int r_fn(void) { return 7; }'
o=$tmp/obj

check_cycles "$o/a.o" "$o/b.o" >"$tmp/out" 2>&1; rc=$?
check "two objects using each other fail" "$([ "$rc" = 1 ]; echo $?)" "exit $rc: $(cat "$tmp/out")"
grep -q '^FAIL cycle: a b$' "$tmp/out" && grep -q '^  a -> b: b_fn$' "$tmp/out" && grep -q '^  b -> a: a_fn$' "$tmp/out"
check "the report names the pair and the symbols both ways" $? "$(cat "$tmp/out")"

check_cycles "$o/x.o" "$o/y.o" "$o/z.o" "$o/r.o" >"$tmp/out" 2>&1; rc=$?
check "a loop of three objects fails" "$([ "$rc" = 1 ]; echo $?)" "exit $rc: $(cat "$tmp/out")"
grep -q '^FAIL cycle: x y z$' "$tmp/out" && grep -q '^  x -> y: y_fn$' "$tmp/out" &&
    grep -q '^  y -> z: z_fn$' "$tmp/out" && grep -q '^  z -> x: x_fn$' "$tmp/out"
check "the report names the three files and each edge of the loop" $? "$(cat "$tmp/out")"

check_cycles "$o/cli/p.o" "$o/q.o" "$o/r.o" >"$tmp/out" 2>&1; rc=$?
check "a chain (cli/p -> q -> r) passes" "$([ "$rc" = 0 ]; echo $?)" "exit $rc: $(cat "$tmp/out")"
check "and reports no cycle" "$(! grep -q 'cycle:' "$tmp/out"; echo $?)" "$(cat "$tmp/out")"

printf '# known\nb a   # the pair, in any order\n' >"$tmp/allow"
check_cycles --allow "$tmp/allow" "$o/a.o" "$o/b.o" "$o/r.o" >"$tmp/out" 2>&1; rc=$?
check "a listed cycle passes" "$([ "$rc" = 0 ]; echo $?)" "exit $rc: $(cat "$tmp/out")"
grep -q "^allowed cycle ($tmp/allow): a b$" "$tmp/out" && grep -q '^  b -> a: a_fn$' "$tmp/out"
check "and is still printed with its symbols" $? "$(cat "$tmp/out")"

check_cycles --allow "$tmp/allow" "$o/a.o" "$o/b.o" "$o/x.o" "$o/y.o" "$o/z.o" >"$tmp/out" 2>&1; rc=$?
check "an unlisted cycle fails beside a listed one" "$([ "$rc" = 1 ]; echo $?)" "exit $rc: $(cat "$tmp/out")"
grep -q '^FAIL cycle: x y z$' "$tmp/out"
check "naming the unlisted one" $? "$(cat "$tmp/out")"

check_cycles --allow "$tmp/allow" "$o/cli/p.o" "$o/q.o" "$o/r.o" >"$tmp/out" 2>&1; rc=$?
check "a listed cycle that no longer exists fails" "$([ "$rc" = 1 ]; echo $?)" "exit $rc: $(cat "$tmp/out")"
grep -q "^FAIL no longer a cycle: a b: remove it from $tmp/allow$" "$tmp/out"
check "and says to remove it from the list" $? "$(cat "$tmp/out")"

# A listed pair that has grown into a bigger cycle is a new cycle, not the listed one.
obj b 'int a_fn(void); int x_fn(void); int b_fn(void) { return a_fn() + x_fn(); }'
obj z 'int a_fn(void); int z_fn(void) { return a_fn(); }'
check_cycles --allow "$tmp/allow" "$o/a.o" "$o/b.o" "$o/x.o" "$o/y.o" "$o/z.o" >"$tmp/out" 2>&1; rc=$?
check "a listed cycle that grew fails" "$([ "$rc" = 1 ]; echo $?)" "exit $rc: $(cat "$tmp/out")"
grep -q '^FAIL cycle: a b x y z$' "$tmp/out" && grep -q '^FAIL no longer a cycle: a b:' "$tmp/out"
check "as a new cycle of five, with the pair's entry stale" $? "$(cat "$tmp/out")"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
