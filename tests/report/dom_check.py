#!/usr/bin/env python3
"""Checks a `tally report` page, as Chromium rendered it (--dump-dom), against the databases.

The expected numbers come from the databases through SQLite's own JSON functions, never from
tally's code, so the report is compared with an independent reading. Prints "ok NAME" or
"FAIL NAME: why" per check; the calling shell script counts them.
"""
import argparse
import sqlite3
import sys
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.walk()

    def find(self, pred):
        return [n for n in self.walk() if pred(n)]


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", [], None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


results = []


def check(name, ok, why=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else ": " + why))


def number(text):
    return int(text.strip().replace(",", ""))


def stat(root, key):
    found = root.find(lambda n: n.attrs.get("data-stat") == key)
    return number(found[0].text()) if found else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dom", required=True)
    ap.add_argument("--events", required=True, help="SQLite events database the counts must match")
    ap.add_argument("--store")
    ap.add_argument("--never-seen", default="")
    ap.add_argument("--unplanned", default="")
    ap.add_argument("--drift", default="", help="event label:key expected to be flagged")
    ap.add_argument("--bad-key", default="")
    ap.add_argument("--problem", default="", help="text expected in the 'could not read' box")
    ap.add_argument("--prefix", default="")
    a = ap.parse_args()
    p = a.prefix
    tree = Tree()
    with open(a.dom, encoding="utf-8") as f:
        tree.feed(f.read())
    root = tree.root
    db = sqlite3.connect("file:" + a.events + "?mode=ro", uri=True)

    # keyboard: every section link lands on a section, every scrolled table can take the focus
    # (arrow keys scroll it), every example opens from a focusable <summary>
    ids = {n.attrs.get("id") for n in root.walk() if n.attrs.get("id")}
    links = [n.attrs["href"][1:] for n in root.find(lambda n: n.tag == "a" and n.attrs.get("href", "").startswith("#"))]
    check(p + "section_links_reach_sections", bool(links) and all(x in ids for x in links), str([x for x in links if x not in ids]))
    scrolls = root.find(lambda n: "scroll" in n.attrs.get("class", "").split())
    check(p + "scrolled_tables_take_focus", all(n.attrs.get("tabindex") == "0" or n.parent.tag == "details" for n in scrolls),
          "a .scroll without tabindex")
    details = root.find(lambda n: n.tag == "details")
    check(p + "examples_open_from_a_summary", all(d.children and any(isinstance(c, Node) and c.tag == "summary" for c in d.children)
                                                  for d in details), "a details without summary")

    total = db.execute("SELECT count(*) FROM events").fetchone()[0]
    check(p + "total_events_card_matches_count", stat(root, "events") == total, f"{stat(root, 'events')} != {total}")

    groups = db.execute("SELECT type, coalesce(event, name, ''), count(*) FROM events GROUP BY 1, 2").fetchall()
    rows = {(n.attrs.get("data-type"), n.attrs.get("data-name")): n for n in root.find(lambda n: n.tag == "tr" and "data-type" in n.attrs)}
    bad = []
    for t, name, n in groups:
        row = rows.get((t, name))
        cell = row.find(lambda x: "data-count" in x.attrs) if row else []
        if not cell or number(cell[0].text()) != n:
            bad.append(f"{t} {name!r}: db {n}, page {cell[0].text() if cell else 'missing'}")
    check(p + "count_per_event_matches_database", not bad and len(rows) == len(groups),
          "; ".join(bad) or f"{len(rows)} rows for {len(groups)} groups")

    viol = dict(db.execute("SELECT json_extract(v.value, '$.type'), count(*) FROM events,"
                           " json_each(events.body, '$.context.protocols.violations') AS v GROUP BY 1").fetchall())
    vrows = {n.attrs["data-code"]: n for n in root.find(lambda n: n.tag == "tr" and "data-code" in n.attrs)}
    vbad = [f"{c}: db {n}, page {vrows[c].find(lambda x: 'data-count' in x.attrs)[0].text() if c in vrows else 'missing'}"
            for c, n in viol.items()
            if c not in vrows or number(vrows[c].find(lambda x: "data-count" in x.attrs)[0].text()) != n]
    check(p + "violations_per_code_match_database", not vbad and len(vrows) == len(viol), "; ".join(vbad) or str(sorted(vrows)))
    check(p + "violations_total_matches_database", stat(root, "violations") == sum(viol.values()),
          f"{stat(root, 'violations')} != {sum(viol.values())}")
    if viol:
        ex = root.find(lambda n: n.tag == "details" and n.parent is not None and n.parent.tag == "td")
        check(p + "violation_example_holds_a_message", bool(ex) and '"messageId"' in ex[0].text(), "no example message")

    users = db.execute("SELECT count(DISTINCT user_id), count(DISTINCT anonymous_id), count(DISTINCT session_id) FROM events").fetchone()
    got = (stat(root, "users"), stat(root, "anonymous"), stat(root, "sessions"))
    check(p + "identity_counts_match_database", got == users, f"page {got}, db {users}")

    if a.store:
        st = sqlite3.connect("file:" + a.store + "?mode=ro", uri=True)
        dead = st.execute("SELECT d.name, count(x.id) FROM dests d LEFT JOIN dead x ON x.dest = d.id GROUP BY d.id").fetchall()
        delivered = dict(st.execute("SELECT d.name, coalesce(c.value, 0) FROM dests d LEFT JOIN counters c"
                                    " ON c.dest = d.id AND c.name = 'delivered'").fetchall())
        drows = {n.attrs["data-dest"]: n for n in root.find(lambda n: n.tag == "tr" and "data-dest" in n.attrs)}

        def col(dest, c):
            cell = drows[dest].find(lambda x: x.attrs.get("data-col") == c) if dest in drows else []
            return number(cell[0].text()) if cell else None

        dbad = [f"{d}: db {n}, page {col(d, 'dead')}" for d, n in dead if col(d, "dead") != n]
        check(p + "dead_letters_per_destination_match_store", not dbad and len(drows) == len(dead), "; ".join(dbad))
        check(p + "dead_letters_total_matches_store", stat(root, "dead") == sum(n for _, n in dead),
              f"{stat(root, 'dead')} != {sum(n for _, n in dead)}")
        delbad = [f"{d}: db {n}, page {col(d, 'delivered')}" for d, n in delivered.items() if col(d, "delivered") != n]
        check(p + "delivered_per_destination_match_store", not delbad, "; ".join(delbad))
        if sum(n for _, n in dead):
            check(p + "dead_letter_reasons_listed", bool(root.find(lambda n: "data-dead-reason" in n.attrs)), "no reasons")

    def listed(attr):
        return sorted(n.text().split("\u00a0")[0].rsplit(" ", 1)[0] if attr == "data-unplanned" else n.text()
                      for n in root.find(lambda n: attr in n.attrs))

    if a.never_seen:
        want = sorted(a.never_seen.split(","))
        check(p + "planned_never_seen_listed", listed("data-never-seen") == want, f"{listed('data-never-seen')} != {want}")
    if a.unplanned:
        want = sorted(a.unplanned.split(","))
        check(p + "seen_not_planned_listed", listed("data-unplanned") == want, f"{listed('data-unplanned')} != {want}")
    if a.drift:
        ev, key = a.drift.split(":")
        hits = [n for n in root.find(lambda n: n.tag == "tr" and "data-drift" in n.attrs) if ev in n.text() and key in n.text()]
        check(p + "type_drift_flagged", bool(hits) and "type drift" in hits[0].text(), f"{a.drift} not flagged")
    if a.bad_key:
        keys = [n.text() for n in root.find(lambda n: "data-bad-key" in n.attrs)]
        check(p + "naming_flags_bad_key", any(k.startswith(a.bad_key) for k in keys), f"{a.bad_key} not in {keys}")
    if a.problem:
        probs = [n.text() for n in root.find(lambda n: "data-problem" in n.attrs)]
        check(p + "problem_reported_on_page", any(a.problem in t for t in probs), f"{a.problem!r} not in {probs}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
