#!/usr/bin/env python3
"""No two source files may use each other's symbols, directly or around a longer loop.

usage: check-cycles.py [--allow FILE] OBJECT.o...

Reads the global symbols each object defines (nm -g --defined-only) and the ones it leaves
undefined (nm -u), draws an edge A -> B when A uses a symbol B defines, and reports every
strongly connected component of more than one file, with the symbols on each edge inside it.

A file is named by its object's path below the last "obj/" without ".o" ("worker", "cli/check"),
so an object compiled twice (the Lua module rebuilds json.c for the host's Lua) is one file.

The allow-list holds the cycles that exist and are being removed: one per line, its files
separated by spaces in any order; '#' starts a comment. A listed cycle is reported and passes;
a listed cycle that no longer exists fails, so the list can only shrink.
Exit status: 0 when every cycle found is listed and every listed one was found.
"""
import subprocess
import sys


def node_name(path):
    tail = path.rsplit("obj/", 1)[-1]
    return tail[:-2] if tail.endswith(".o") else tail


def symbols(path, *flags):
    out = subprocess.run(["nm", "-P", *flags, path], check=True, capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def build_graph(paths):
    defined_by, uses = {}, {}
    for path in paths:
        name = node_name(path)
        for sym in symbols(path, "-g", "--defined-only"):
            defined_by.setdefault(sym, set()).add(name)
        uses.setdefault(name, set()).update(symbols(path, "-u"))
    edges = {}  # (a, b) -> symbols a uses that b defines
    for a, syms in uses.items():
        for sym in syms:
            for b in defined_by.get(sym, ()):
                if b != a:
                    edges.setdefault((a, b), set()).add(sym)
    return sorted(uses), edges


def components(nodes, edges):
    """Tarjan's algorithm, iterative so a long chain cannot hit Python's recursion limit."""
    succ = {n: sorted(b for (a, b) in edges if a == n) for n in nodes}
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            n, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(succ[nxt])))
                elif nxt in on_stack:
                    low[n] = min(low[n], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[n])
            if low[n] == index[n]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == n:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def read_allow(path):
    allowed = []
    with open(path) as f:
        for line in f:
            files = line.split("#", 1)[0].split()
            if files:
                allowed.append(frozenset(files))
    return allowed


def main(argv):
    allow_file = None
    if argv[:1] == ["--allow"]:
        if len(argv) < 2:
            sys.exit("check-cycles: --allow needs a file")
        allow_file, argv = argv[1], argv[2:]
    if not argv:
        sys.exit(__doc__.split("\n\n")[1])
    nodes, edges = build_graph(argv)
    allowed = read_allow(allow_file) if allow_file else []
    failed = False
    for comp in sorted(components(nodes, edges), key=sorted):
        status = "allowed cycle (%s)" % allow_file if comp in allowed else "FAIL cycle"
        failed |= comp not in allowed
        print("%s: %s" % (status, " ".join(sorted(comp))))
        for (a, b), syms in sorted(edges.items()):
            if a in comp and b in comp:
                print("  %s -> %s: %s" % (a, b, ", ".join(sorted(syms))))
        if comp in allowed:
            allowed.remove(comp)
    for comp in allowed:
        failed = True
        print("FAIL no longer a cycle: %s: remove it from %s" % (" ".join(sorted(comp)), allow_file))
    print("%d files, %d edges: %s" % (len(nodes), len(edges), "cycles found" if failed else "no new cycle"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
