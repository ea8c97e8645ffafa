#!/usr/bin/env python3
"""Turns bench/run.sh's per-run records into one table and one JSON file.

  report.py --progress RUNS.ndjson CASE RUN      one line about the run just recorded
  report.py --runs RUNS.ndjson --out-dir DIR ... the table (stdout) and DIR/bench-<time>.json

Each record (one line of RUNS.ndjson) is {"case", "kind", "run", "args", "result": the JSON line of
bench/throughput.c or bench/node/bench.js, "collector": the collector's /stats after the run (null
for the caller-only cases), "collector_cpu_s": CPU seconds of the nginx workers during the run}.
Figures are medians over the runs of a case, with min-max beside them.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def figures(rec, n):
    """The figures of one run, flat."""
    r = rec["result"]
    if r.get("failed"):
        return None
    out = {
        "events_per_s": r["events_per_s"],
        "cpu_s_per_100k": r["cpu_s_per_100k"],
        "peak_rss_mib": r["peak_rss_mib"],
        "track_ns_p50": r["track_ns_p50"],
        "track_ns_p99": r["track_ns_p99"],
        "track_ns_max": r["track_ns_max"],
    }
    for k in ("caller_cpu_s_per_100k", "full_retries", "timer_ns_p50", "paced_waits", "failed"):
        if k in r:
            out[k] = r[k]
    if r.get("flush") not in (None, "ok"):
        out["flush_timeout"] = 1
    c = rec.get("collector")
    if c:
        sent = r.get("n", n)
        out["received"] = c["messages"]
        out["lost"] = sent - c["unique"]
        out["duplicated"] = c["messages"] - c["missing_id"] - c["unique"]
        out["bad_requests"] = c["bad_requests"]
        out["collector_evicted"] = c["evicted"]
        out["collector_cpu_s_per_100k"] = round(rec["collector_cpu_s"] / sent * 100000, 3)
        if c["messages"]:
            out["json_bytes_per_msg"] = round(c["json_bytes"] / c["messages"])
            out["wire_bytes_per_msg"] = round(c["wire_bytes"] / c["messages"])
        out["requests"] = c["requests"]
    return out


def summarize(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def aggregate(recs, n):
    order, by_case = [], {}
    for rec in recs:
        if rec["case"] not in by_case:
            order.append(rec["case"])
            by_case[rec["case"]] = {"kind": rec["kind"], "args": rec["args"], "runs": [], "failed_runs": 0}
        f = figures(rec, n)
        if f is None:
            by_case[rec["case"]]["failed_runs"] += 1
        else:
            by_case[rec["case"]]["runs"].append(f)
    cases = []
    for name in order:
        c = by_case[name]
        keys = []
        for f in c["runs"]:
            keys += [k for k in f if k not in keys]
        stats = {k: summarize([f.get(k) for f in c["runs"]]) for k in keys}
        cases.append({"case": name, "kind": c["kind"], "args": c["args"], "failed_runs": c["failed_runs"],
                      "figures": stats})
    seg = next((c for c in cases if c["kind"] == "segment"), None)
    for c in cases:
        ratios = {}
        if seg and not c["kind"].startswith("segment"):
            pairs = [("track_ns_p50", "track_ns_p50")]
            if c["kind"].startswith("e2e"):
                pairs = [("events_per_s", "events_per_s"), ("cpu_s_per_100k", "cpu_s_per_100k"),
                         ("peak_rss_mib", "peak_rss_mib"), ("track_ns_p50", "track_ns_p50")]
            for mine, theirs in pairs:
                a, b = c["figures"].get(mine), seg["figures"].get(theirs)
                if a and b and b["median"]:
                    ratios[mine] = round(a["median"] / b["median"], 3)
        c["ratio_tally_over_segment"] = ratios
    return cases


# ---- formatting ----

def fnum(v, kind):
    if kind == "k":
        return "%.1fk" % (v / 1000)
    if kind == "s":
        return "%.3f" % v if v < 10 else "%.2f" % v
    if kind == "mib":
        return "%.0f" % v
    if kind == "ns":
        return "%.0f" % v
    if kind == "ms":
        return "%.1f" % (v / 1e6)
    if kind == "int":
        return "%d" % v
    return str(v)


def cell(stat, kind, spread=True):
    if not stat:
        return "-"
    m = fnum(stat["median"], kind)
    if not spread or len(stat["runs"]) < 2:
        return m
    lo, hi = fnum(stat["min"], kind), fnum(stat["max"], kind)
    if kind == "k":
        lo, hi = lo[:-1], hi[:-1]
    return "%s (%s-%s)" % (m, lo, hi)


def ratio(v):
    if v is None:
        return "-"
    return "%.2fx" % v if v < 100 else "%.0fx" % v


COLUMNS = [
    ("case", None, None),
    ("events/s", "events_per_s", "k"),
    ("CPU s/100k", "cpu_s_per_100k", "s"),
    ("peak RSS MiB", "peak_rss_mib", "mib"),
    ("track() ns p50", "track_ns_p50", "ns"),
    ("p99", "track_ns_p99", "ns"),
    ("max ms", "track_ns_max", "ms"),
    ("lost", "lost", "int"),
    ("dup", "duplicated", "int"),
    ("EFULL", "full_retries", "int"),
    ("B/msg json/wire", None, None),
    ("nginx CPU s/100k", "collector_cpu_s_per_100k", "s"),
]
RATIOS = [("events_per_s", "ev/s"), ("cpu_s_per_100k", "CPU"), ("peak_rss_mib", "RSS"), ("track_ns_p50", "p50")]


def table(cases):
    head = [c[0] for c in COLUMNS] + ["tally/segment: " + "  ".join(r[1] for r in RATIOS)]
    rows = []
    for c in cases:
        f = c["figures"]
        row = []
        for title, key, kind in COLUMNS:
            if title == "case":
                row.append(c["case"] + (" [%d FAILED]" % c["failed_runs"] if c["failed_runs"] else ""))
            elif title.startswith("B/msg"):
                j, w = f.get("json_bytes_per_msg"), f.get("wire_bytes_per_msg")
                row.append("%d/%d" % (j["median"], w["median"]) if j and w else "-")
            elif key in ("lost", "duplicated"):
                s = f.get(key)
                row.append("-" if not s else ("%d" % s["max"] if s["max"] == s["min"] else "%d-%d" % (s["min"], s["max"])))
            else:
                row.append(cell(f.get(key), kind, spread=key != "track_ns_max"))
        rat = c.get("ratio_tally_over_segment") or {}
        row.append("  ".join("%s=%s" % (short, ratio(rat.get(k))) for k, short in RATIOS if k in rat) or
                   ("(baseline)" if c["kind"] == "segment" else "-"))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = []
    fmt = lambda r: "  ".join((str(v).ljust(widths[i]) if i == 0 or i == len(head) - 1 else str(v).rjust(widths[i]))
                              for i, v in enumerate(r)).rstrip()
    lines.append(fmt(head))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(fmt(r))
    return "\n".join(lines)


# ---- machine ----

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def machine(args):
    cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1") or sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1))
    os_name = sh(". /etc/os-release && echo $PRETTY_NAME")
    tally = sh("%s --version" % os.path.join(args.build, "tally")) if args.build else ""
    if not tally:
        m = re.search(r'#define TALLY_VERSION "([^"]+)"', open("include/tally.h").read())
        tally = "tally " + m.group(1) if m else "?"
    seg = sh("node -p 'require(\"./bench/node/node_modules/@segment/analytics-node/package.json\").version'")
    git = sh("git rev-parse --short HEAD") + (" (dirty)" if sh("git status --porcelain -uno") else "")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu.strip(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_name,
        "loadavg_at_start": os.environ.get("BENCH_LOAD_START", "?").split(),
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
        "versions": {
            "tally": tally.replace("tally ", ""),
            "node": sh("node --version"),
            "analytics_node": seg,
            "nginx": sh("nginx -v 2>&1").replace("nginx version: ", ""),
            "nginx_lua_module": sh("dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null"),
            "sqlite": sh("dpkg-query -W -f='${Version}' libsqlite3-0 2>/dev/null"),
            "libcurl": sh("dpkg-query -W -f='${Version}' 'libcurl4*' 2>/dev/null | head -c 40"),
            "gcc": sh("gcc -dumpfullversion"),
        },
        "git": git,
    }


def machine_lines(m):
    v = m["versions"]
    return [
        "machine: %d CPUs (%s), %.1f GiB RAM, kernel %s, %s; load average %s at start, %s at end" % (
            m["nproc"], m["cpu_model"], m["memory_gib"], m["kernel"], m["os"], " ".join(m["loadavg_at_start"]),
            " ".join(m["loadavg_at_end"])),
        "versions: tally %s (%s), node %s, @segment/analytics-node %s, nginx %s (lua module %s), sqlite %s, gcc %s" % (
            v["tally"], m["git"], v["node"], v["analytics_node"], v["nginx"], v["nginx_lua_module"], v["sqlite"], v["gcc"]),
    ]


def timer_floor(recs):
    v = [r["result"]["timer_ns_p50"] for r in recs if "timer_ns_p50" in r.get("result", {})]
    return "%.0f" % statistics.median(v) if v else "?"


def progress(path, case, run):
    recs = [r for r in load(path) if r["case"] == case and r["run"] == int(run)]
    if not recs:
        return
    f = figures(recs[-1], 0) if not recs[-1]["result"].get("failed") else None
    if f is None:
        print("  %-28s run %s: FAILED" % (case, run), flush=True)
        return
    extra = ""
    if "lost" in f:
        extra = "  lost %d dup %d  nginx CPU %.3f s/100k" % (f["lost"], f["duplicated"], f["collector_cpu_s_per_100k"])
    print("  %-28s run %s: %8.0f events/s  CPU %.3f s/100k  RSS %5.1f MiB  track p50 %d ns%s" % (
        case, run, f["events_per_s"], f["cpu_s_per_100k"], f["peak_rss_mib"], f["track_ns_p50"], extra), flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--progress":
        progress(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--runs-per-case", type=int)
    ap.add_argument("--node-window", type=int)
    ap.add_argument("--full-wait-us", type=int)
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--tally-bin")
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--collector-conf")
    ap.add_argument("--nginx-table", help="bench/nginx.sh's table of this run, printed under the main one")
    args = ap.parse_args()
    recs = load(args.runs)
    cases = aggregate(recs, args.n)
    m = machine(args)
    now = datetime.datetime.now()
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "machine": m,
        "settings": {
            "n": args.n, "runs_per_case": args.runs_per_case, "node_window": args.node_window,
            "tally_full_wait_us": args.full_wait_us, "collector": "nginx, 2 workers, bench/collector/collector.lua",
            "batch_size": 100,
        },
        "duration_s": args.seconds,
        "cases": cases,
        "runs": recs,
    }
    if args.collector_conf and os.path.exists(args.collector_conf):
        doc["collector_conf"] = open(args.collector_conf).read()
    text = "\n".join(
        ["", "tally benchmark, %s: N=%d events per run, medians of %s runs (min-max); ratios are medians, "
         "tally / @segment/analytics-node" % (doc["date"], args.n, args.runs_per_case)]
        + machine_lines(m) + ["", table(cases), ""]
        + ["caller = in-process only (file destination /dev/null); e2e = through the segment destination to the "
           "nginx collector on 127.0.0.1; mem/file = store ':memory:' or a SQLite file; rules = 0, 1 or 3 Lua rules.",
           "segment = @segment/analytics-node %s, flushAt 100, paced to at most %s events outstanding (no gzip: "
           "analytics-node sends plain JSON)." % (m["versions"]["analytics_node"], args.node_window),
           "lost = N - unique messageIds received; dup = received - unique. EFULL = tally_track calls refused "
           "(TALLY_EFULL) at the default sizes: the intake's 4 MiB, and for mem the store's 8 MiB "
           "(store_on_full=block); the caller waited %s us and called again, so nothing was lost, but the "
           "queues did push back." % args.full_wait_us,
           "track() ns include the timing itself: an empty timed region measures %s ns (p50). whole run: %ss." % (
               timer_floor(recs), args.seconds)])
    if args.nginx_table and os.path.exists(args.nginx_table):
        # no analytics-node row there: its peer is the access_log line, so its ratios are to that
        text += "\n\n" + open(args.nginx_table).read().rstrip("\n")
    doc["table"] = text
    os.makedirs(args.out_dir, exist_ok=True)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out_dir, "bench-%s.json" % stamp)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out_dir, "latest.txt"), "w") as f:
        f.write(text + "\n")
    print(text)
    print("written: %s (and %s)" % (path, os.path.join(args.out_dir, "latest.txt")))
    bad = [c["case"] for c in cases if any(
        (c["figures"].get(k) or {}).get("max", 0) > 0 for k in ("lost", "duplicated", "collector_evicted", "bad_requests"))]
    if bad:
        print("WARNING: lost, duplicated, rejected or uncounted messages in: " + ", ".join(bad))


if __name__ == "__main__":
    main()
