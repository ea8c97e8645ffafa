/* Rendering for `tally report`: one HTML file with its styles inline, charts as inline SVG and
 * no script but the one that opens every <details> before printing. A Content-Security-Policy
 * forbids any fetch, so the page is the same from file://, a mail attachment or a CI artifact.
 * Numbers carry data-* attributes naming what they count, so a test (and a reader's devtools)
 * can tie each one back to the database. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "report.h"
#include "tally.h"

/* Lists longer than this are cut, with a line saying how much: the page stays small. */
#define MAX_EVENT_ROWS 500
#define MAX_PROP_ROWS  2000
#define MAX_NAMING_ROWS 200

static const char *const palette[REP_TOP_SERIES + 1] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                                        "#59a14f", "#b07aa1", "#9c9893"};
/* The page's only script: open every example before printing. The CSP allows this script by its
 * hash and no other, so text from the database can never run even if escaping missed something;
 * tests/report checks Chromium runs it without a CSP complaint (a stale hash would log one). */
#define PRINT_SCRIPT "addEventListener('beforeprint',function(){document.querySelectorAll('details')" \
                     ".forEach(function(e){e.open=true})})"
#define PRINT_SCRIPT_HASH "sha256-+8VNgTX3WaqW0mlyYKOq9pY9GoSNCUCTtmULPraUusg="

static const char *const kind_names[RT_COUNT] = {"string", "number", "boolean", "null", "object", "array"};

static void esc_n(tbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': tbuf_puts(b, "&amp;"); break;
        case '<': tbuf_puts(b, "&lt;"); break;
        case '>': tbuf_puts(b, "&gt;"); break;
        case '"': tbuf_puts(b, "&quot;"); break;
        case '\'': tbuf_puts(b, "&#39;"); break;
        default:
            /* control characters would make the page invalid; show them as U+FFFD */
            if ((unsigned char)s[i] < 0x20 && s[i] != '\n' && s[i] != '\t') tbuf_puts(b, "\xef\xbf\xbd");
            else tbuf_putc(b, s[i]);
        }
    }
}

static void esc(tbuf *b, const char *s) { esc_n(b, s, s ? strlen(s) : 0); }

/* 1234567 -> "1,234,567" */
static void num(tbuf *b, int64_t v)
{
    char digits[32], out[48];
    int n = snprintf(digits, sizeof digits, "%lld", (long long)(v < 0 ? -v : v)), o = 0;
    if (v < 0) out[o++] = '-';
    for (int i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0) out[o++] = ',';
        out[o++] = digits[i];
    }
    out[o] = '\0';
    tbuf_puts(b, out);
}

static void duration(tbuf *b, double s)
{
    if (s < 60) tbuf_printf(b, "%.0f s", s);
    else if (s < 3600) tbuf_printf(b, "%.1f min", s / 60);
    else if (s < 86400 * 2) tbuf_printf(b, "%.1f h", s / 3600);
    else tbuf_printf(b, "%.1f days", s / 86400);
}

static void epoch_text(int64_t t, int64_t step, char *out, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, len, step >= 86400 ? "%Y-%m-%d" : step >= 60 ? "%m-%d %H:%M" : "%H:%M:%S", &tm);
}

/* The label of a (type, name) pair: the event name for track, "page Home" for the others. */
static void event_label(tbuf *b, const char *type, const char *name)
{
    if (strcmp(type, "track")) {
        esc(b, type);
        if (*name) tbuf_putc(b, ' ');
    }
    esc(b, name);
}

static const char style_sheet[] =
    ":root{--fg:#1d2330;--mute:#5b6477;--line:#d9dde5;--bg:#fff;--soft:#f4f6f9;--warn:#b3261e;--ok:#2e7d32;"
    "--accent:#2f5d9a;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:var(--fg)}"
    "body{margin:0;background:var(--bg)}"
    "header,main,nav{max-width:1100px;margin:0 auto;padding:0 1rem}"
    "header{padding-top:1rem}h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.2rem;margin:2rem 0 .5rem;"
    "border-bottom:1px solid var(--line);padding-bottom:.2rem}h3{font-size:1rem;margin:1rem 0 .3rem}"
    ".meta{color:var(--mute);margin:.2rem 0;overflow-wrap:anywhere}"
    "nav{display:flex;flex-wrap:wrap;gap:.3rem .9rem;padding-top:.4rem;padding-bottom:.4rem;font-size:.9rem}"
    "a{color:var(--accent)}a:focus,summary:focus,.scroll:focus{outline:3px solid #f2a900;outline-offset:2px}"
    ".cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(8.5rem,1fr));gap:.6rem;margin:.8rem 0}"
    ".card{border:1px solid var(--line);border-radius:6px;padding:.5rem .7rem;background:var(--soft)}"
    ".card b{display:block;font-size:1.45rem;font-variant-numeric:tabular-nums}.card span{color:var(--mute);font-size:.85rem}"
    ".card.bad b{color:var(--warn)}.card.good b{color:var(--ok)}"
    ".problems{border:2px solid var(--warn);border-radius:6px;padding:.4rem 1rem;margin:.8rem 0}"
    ".problems h2{border:0;margin:.3rem 0;color:var(--warn)}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.3rem 0}"
    "th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}"
    "th{background:var(--soft);font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    ".bar{display:inline-block;height:.7rem;background:var(--accent);vertical-align:middle;min-width:1px;"
    "-webkit-print-color-adjust:exact;print-color-adjust:exact}"
    ".flag{color:var(--warn);font-weight:600}.mute{color:var(--mute)}"
    "code,pre{font:.85rem/1.35 ui-monospace,'DejaVu Sans Mono',monospace}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere;background:var(--soft);padding:.5rem;border-radius:4px;margin:.3rem 0}"
    "summary{cursor:pointer;padding:.15rem 0}details{margin:.15rem 0}"
    "svg{max-width:100%;height:auto;display:block}.legend{display:flex;flex-wrap:wrap;gap:.2rem 1rem;font-size:.85rem;margin:.3rem 0}"
    ".legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:-1px;"
    "-webkit-print-color-adjust:exact;print-color-adjust:exact}"
    "footer{max-width:1100px;margin:2rem auto;padding:0 1rem;color:var(--mute);font-size:.8rem}"
    "@media (max-width:600px){:root{font-size:14px}.card b{font-size:1.2rem}th,td{padding:.2rem .3rem}}"
    "@media print{nav{display:none}:root{font-size:11px}h2{break-after:avoid}table,svg,.card{break-inside:avoid}"
    "a{color:inherit;text-decoration:none}}";

static void card(tbuf *b, const char *stat, int64_t v, const char *label, const char *cls)
{
    tbuf_printf(b, "<div class=\"card%s%s\"><b data-stat=\"%s\">", cls ? " " : "", cls ? cls : "", stat);
    num(b, v);
    tbuf_printf(b, "</b><span>%s</span></div>", label);
}

static void percent(tbuf *b, int64_t part, int64_t whole)
{
    if (whole > 0) tbuf_printf(b, "%.1f%%", 100.0 * (double)part / (double)whole);
}

/* ---- sections ---- */

static void summary(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<section id=\"summary\" aria-labelledby=\"h-summary\"><h2 id=\"h-summary\">Summary</h2>");
    if (d->nproblems) {
        tbuf_puts(b, "<div class=\"problems\" role=\"alert\"><h2>What could not be read</h2><ul>");
        for (size_t i = 0; i < d->nproblems; i++) {
            tbuf_puts(b, "<li data-problem>");
            esc(b, d->problems[i]);
            tbuf_puts(b, "</li>");
        }
        tbuf_puts(b, "</ul></div>");
    }
    tbuf_puts(b, "<div class=\"cards\">");
    if (d->have_events) {
        card(b, "events", d->total, "events", NULL);
        card(b, "names", (int64_t)d->nevents, "event names", NULL);
        card(b, "users", d->users, "users", NULL);
        card(b, "anonymous", d->anonymous_ids, "anonymous ids", NULL);
        card(b, "sessions", d->sessions, "sessions", NULL);
        card(b, "violations", d->violations_total, "violations", d->violations_total ? "bad" : "good");
        if (d->unreadable) card(b, "unreadable", d->unreadable, "unreadable rows", "bad");
    }
    if (d->have_store) {
        int64_t del = 0, dead = 0, queued = 0;
        for (size_t i = 0; i < d->ndests; i++) del += d->dests[i].delivered, dead += d->dests[i].dead, queued += d->dests[i].queued;
        card(b, "delivered", del, d->ndests > 1 ? "delivered, all destinations" : "delivered", NULL);
        card(b, "queued", queued, d->ndests > 1 ? "queued, all destinations" : "queued", NULL);
        card(b, "dead", dead, "dead letters", dead ? "bad" : "good");
    }
    tbuf_puts(b, "</div>");
    if (d->have_events && d->total) {
        tbuf_puts(b, "<p>");
        int any = 0;
        for (int t = 0; t < MT_COUNT; t++) {
            if (!d->by_type[t]) continue;
            tbuf_printf(b, "%s<span data-type-total=\"%s\">", any++ ? " · " : "", msg_type_name(t));
            num(b, d->by_type[t]);
            tbuf_printf(b, "</span> %s", msg_type_name(t));
        }
        if (d->other_type) {
            tbuf_printf(b, "%s<span data-type-total=\"other\">", any ? " · " : "");
            num(b, d->other_type);
            tbuf_puts(b, "</span> of other types");
        }
        if (d->first_ts) {
            tbuf_puts(b, "<br><span class=\"mute\">from ");
            esc(b, d->first_ts);
            tbuf_puts(b, " to ");
            esc(b, d->last_ts);
            tbuf_puts(b, "</span>");
        }
        tbuf_puts(b, "</p>");
        if (d->nevents) {
            tbuf_puts(b, "<p>Most tracked: ");
            for (size_t i = 0; i < d->nevents && i < 3; i++) {
                tbuf_puts(b, i ? ", <b>" : "<b>");
                event_label(b, d->events[i].type, d->events[i].name);
                tbuf_puts(b, "</b> (");
                percent(b, d->events[i].n, d->total);
                tbuf_puts(b, ")");
            }
            tbuf_puts(b, ".</p>");
        }
    } else if (d->have_events) {
        tbuf_puts(b, "<p data-empty>No events");
        if (d->since) {
            tbuf_puts(b, " since ");
            esc(b, d->since);
        }
        tbuf_puts(b, " in this database.</p>");
    }
    tbuf_puts(b, "</section>");
}

static void volume_chart(const rep_data *d, tbuf *b)
{
    if (!d->volume || !d->nbuckets) return;
    const int W = 800, H = 240, L = 56, R = 8, T = 10, B = 34;
    int64_t max = 1;
    const int S = REP_TOP_SERIES + 1;
    for (int64_t k = 0; k < d->nbuckets; k++) {
        int64_t sum = 0;
        for (int s = 0; s < S; s++) sum += d->volume[k * S + s];
        if (sum > max) max = sum;
    }
    /* a round top for the axis whose quarters are round too */
    static const double nice[] = {1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10};
    double mag = pow(10, floor(log10((double)max))), top = 10 * mag;
    for (size_t i = 0; i < sizeof nice / sizeof *nice; i++)
        if (nice[i] * mag >= (double)max) { top = nice[i] * mag; break; }
    if (top < 40) top = ceil(top / 4) * 4; /* small counts: whole numbers on every line */
    double bw = (double)(W - L - R) / (double)d->nbuckets;
    char when[32];
    tbuf_printf(b, "<svg viewBox=\"0 0 %d %d\" role=\"img\" aria-labelledby=\"vol-title\" font-size=\"11\" "
                   "font-family=\"sans-serif\"><title id=\"vol-title\">Events per ", W, H);
    duration(b, (double)d->bucket_s);
    tbuf_puts(b, ", stacked by event name</title>");
    for (int i = 0; i <= 4; i++) {
        double y = T + (H - T - B) * (1 - i / 4.0);
        tbuf_printf(b, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#d9dde5\"/>", L, W - R, y, y);
        tbuf_printf(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#5b6477\">", L - 4, y + 4);
        num(b, (int64_t)(top * i / 4));
        tbuf_puts(b, "</text>");
    }
    for (int64_t k = 0; k < d->nbuckets; k++) {
        double y = H - B;
        epoch_text(d->volume_start + k * d->bucket_s, d->bucket_s, when, sizeof when);
        for (int s = 0; s < S; s++) {
            int64_t v = d->volume[k * S + s];
            if (!v) continue;
            double h = (H - T - B) * (double)v / top;
            y -= h;
            tbuf_printf(b, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"><title>%s: ",
                        L + k * bw + bw * 0.1, y, bw * 0.8 > 0.5 ? bw * 0.8 : 0.5, h, palette[s], when);
            if (s < d->nseries) event_label(b, d->events[s].type, d->events[s].name);
            else tbuf_puts(b, "other events");
            tbuf_puts(b, " ");
            num(b, v);
            tbuf_puts(b, "</title></rect>");
        }
    }
    int64_t marks[3] = {0, d->nbuckets / 2, d->nbuckets - 1};
    for (int i = 0; i < 3; i++) {
        if (i && marks[i] == marks[i - 1]) continue;
        epoch_text(d->volume_start + marks[i] * d->bucket_s, d->bucket_s, when, sizeof when);
        tbuf_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"%s\" fill=\"#5b6477\">%s</text>",
                    L + marks[i] * bw + (i == 0 ? 0 : i == 2 ? bw : bw / 2), H - B + 16,
                    i == 0 ? "start" : i == 2 ? "end" : "middle", when);
    }
    tbuf_puts(b, "</svg><div class=\"legend\">");
    for (int s = 0; s <= d->nseries; s++) {
        if (s == d->nseries && (int)d->nevents <= d->nseries) break;
        tbuf_printf(b, "<span><i style=\"background:%s\"></i>", palette[s < d->nseries ? s : REP_TOP_SERIES]);
        if (s < d->nseries) event_label(b, d->events[s].type, d->events[s].name);
        else tbuf_puts(b, "other events");
        tbuf_puts(b, "</span>");
    }
    tbuf_puts(b, "</div>");
}

static int is_planned(const rep_data *d, const rep_event *e)
{
    if (strcmp(e->type, "track")) return 1; /* a plan lists track events: others are not its business */
    for (size_t i = 0; i < d->nplanned; i++)
        if (!strcmp(d->planned[i], e->name)) return 1;
    return 0;
}

static void events_section(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<section id=\"volume\" aria-labelledby=\"h-volume\"><h2 id=\"h-volume\">Volume over time</h2>");
    if (d->total) volume_chart(d, b);
    else tbuf_puts(b, "<p class=\"mute\">No events.</p>");
    tbuf_puts(b, "</section><section id=\"events\" aria-labelledby=\"h-events\"><h2 id=\"h-events\">Events</h2>");
    if (!d->nevents) {
        tbuf_puts(b, "<p class=\"mute\">No events.</p></section>");
        return;
    }
    tbuf_printf(b, "<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th>type</th><th>name</th><th class=\"n\">count"
                   "</th><th>share</th><th>first seen</th><th>last seen</th>%s</tr></thead><tbody>",
                d->have_plan ? "<th>plan</th>" : "");
    int64_t top = d->events[0].n;
    for (size_t i = 0; i < d->nevents && i < MAX_EVENT_ROWS; i++) {
        const rep_event *e = &d->events[i];
        tbuf_puts(b, "<tr data-type=\"");
        esc(b, e->type);
        tbuf_puts(b, "\" data-name=\"");
        esc(b, e->name);
        tbuf_puts(b, "\"><td>");
        esc(b, e->type);
        tbuf_puts(b, "</td><td>");
        if (*e->name) esc(b, e->name);
        else tbuf_puts(b, "<span class=\"mute\">(none)</span>");
        tbuf_puts(b, "</td><td class=\"n\" data-count>");
        num(b, e->n);
        tbuf_printf(b, "</td><td><span class=\"bar\" style=\"width:%.1fpx\"></span> ", 80.0 * (double)e->n / (double)top);
        percent(b, e->n, d->total);
        tbuf_puts(b, "</td><td>");
        esc(b, e->first);
        tbuf_puts(b, "</td><td>");
        esc(b, e->last);
        tbuf_puts(b, "</td>");
        if (d->have_plan)
            tbuf_puts(b, strcmp(e->type, "track") ? "<td class=\"mute\">–</td>"
                         : is_planned(d, e) ? "<td>planned</td>" : "<td class=\"flag\">not planned</td>");
        tbuf_puts(b, "</tr>");
    }
    tbuf_puts(b, "</tbody></table></div>");
    if (d->nevents > MAX_EVENT_ROWS)
        tbuf_printf(b, "<p class=\"mute\">%zu more event names are not listed.</p>", d->nevents - MAX_EVENT_ROWS);
    tbuf_puts(b, "</section>");
}

static int kinds_seen(const rep_prop *p)
{
    int k = 0;
    for (int t = 0; t < RT_COUNT; t++) k += p->n[t] > 0;
    return k;
}

static void prop_row(tbuf *b, const rep_prop *p, int with_event)
{
    const char *sep = strchr(p->event, '\x1f');
    int drift = kinds_seen(p) > 1;
    tbuf_puts(b, drift ? "<tr data-drift>" : "<tr>");
    if (with_event && sep) {
        tbuf_puts(b, "<td>");
        char type[64];
        snprintf(type, sizeof type, "%.*s", (int)(sep - p->event), p->event);
        event_label(b, type, sep + 1);
        tbuf_puts(b, "</td>");
    }
    tbuf_puts(b, "<td><code>");
    esc(b, p->key);
    tbuf_puts(b, "</code></td><td>");
    int first = 1;
    for (int t = 0; t < RT_COUNT; t++) {
        if (!p->n[t]) continue;
        tbuf_printf(b, "%s%s <span class=\"mute\">", first ? "" : ", ", kind_names[t]);
        num(b, p->n[t]);
        tbuf_puts(b, "</span>");
        first = 0;
    }
    tbuf_printf(b, "</td><td>%s</td></tr>", drift ? "<span class=\"flag\">type drift</span>" : "");
}

static void properties_section(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<section id=\"properties\" aria-labelledby=\"h-props\"><h2 id=\"h-props\">Properties and types</h2>");
    size_t drift = 0;
    for (size_t i = 0; i < d->nprops; i++) drift += kinds_seen(&d->props[i]) > 1;
    if (!d->nprops) {
        tbuf_puts(b, "<p class=\"mute\">No properties or traits.</p></section>");
        return;
    }
    tbuf_printf(b, "<p><b data-stat=\"drift\">%zu</b> propert%s seen with more than one JSON type (type drift).</p>", drift,
                drift == 1 ? "y" : "ies");
    if (drift) {
        tbuf_puts(b, "<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th>event</th><th>property</th><th>types seen"
                     "</th><th></th></tr></thead><tbody>");
        for (size_t i = 0; i < d->nprops; i++)
            if (kinds_seen(&d->props[i]) > 1) prop_row(b, &d->props[i], 1);
        tbuf_puts(b, "</tbody></table></div>");
    }
    tbuf_puts(b, "<h3>Per event</h3>");
    size_t shown = 0;
    for (size_t i = 0; i < d->nprops && shown < MAX_PROP_ROWS;) {
        size_t j = i;
        while (j < d->nprops && !strcmp(d->props[j].event, d->props[i].event)) j++;
        const char *sep = strchr(d->props[i].event, '\x1f');
        char type[64];
        snprintf(type, sizeof type, "%.*s", sep ? (int)(sep - d->props[i].event) : 0, d->props[i].event);
        size_t nd = 0;
        for (size_t k = i; k < j; k++) nd += kinds_seen(&d->props[k]) > 1;
        tbuf_puts(b, "<details><summary>");
        event_label(b, type, sep ? sep + 1 : d->props[i].event);
        tbuf_printf(b, " <span class=\"mute\">%zu propert%s</span>%s</summary><div class=\"scroll\"><table><thead><tr>"
                       "<th>property</th><th>types seen</th><th></th></tr></thead><tbody>",
                    j - i, j - i == 1 ? "y" : "ies", nd ? " <span class=\"flag\">type drift</span>" : "");
        for (size_t k = i; k < j && shown < MAX_PROP_ROWS; k++, shown++) prop_row(b, &d->props[k], 0);
        tbuf_puts(b, "</tbody></table></div></details>");
        i = j;
    }
    if (shown < d->nprops) tbuf_printf(b, "<p class=\"mute\">%zu more properties are not listed.</p>", d->nprops - shown);
    tbuf_puts(b, "</section>");
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static void naming_section(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<section id=\"naming\" aria-labelledby=\"h-naming\"><h2 id=\"h-naming\">Naming conventions</h2>");
    if (!d->style && !d->snake_keys) {
        tbuf_puts(b, "<p class=\"mute\">No naming style configured: give <code>--style=lower|title|snake</code> or "
                     "<code>--naming=RULE.lua</code> (a <code>tally.naming</code> rule).</p></section>");
        return;
    }
    char want[512];
    size_t bad = 0;
    if (d->style) {
        tbuf_printf(b, "<h3>Event names (style: %s)</h3>", d->style);
        for (size_t i = 0; i < d->nevents; i++) {
            const rep_event *e = &d->events[i];
            if (strcmp(e->type, "track") || rep_follows_style(e->name, d->style, want, sizeof want)) continue;
            if (!bad++) tbuf_puts(b, "<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th>event</th><th>would be</th>"
                                     "<th class=\"n\">count</th></tr></thead><tbody>");
            if (bad > MAX_NAMING_ROWS) continue;
            tbuf_puts(b, "<tr data-bad-name><td>");
            esc(b, e->name);
            tbuf_puts(b, "</td><td>");
            esc(b, want);
            tbuf_puts(b, "</td><td class=\"n\">");
            num(b, e->n);
            tbuf_puts(b, "</td></tr>");
        }
        if (bad) tbuf_puts(b, "</tbody></table></div>");
        tbuf_printf(b, "<p><b data-stat=\"bad-names\">%zu</b> event name%s off style.</p>", bad, bad == 1 ? "" : "s");
    }
    if (d->snake_keys) {
        size_t badk = 0, nbad = 0;
        tbuf_puts(b, "<h3>Property keys (snake_case)</h3>");
        /* one row per key, even when several events carry it: sort the bad ones, skip repeats */
        const char **bad_keys = malloc((d->nprops ? d->nprops : 1) * sizeof *bad_keys);
        for (size_t i = 0; bad_keys && i < d->nprops; i++)
            if (!rep_follows_style(d->props[i].key, "snake", want, sizeof want)) bad_keys[nbad++] = d->props[i].key;
        if (nbad) qsort(bad_keys, nbad, sizeof *bad_keys, cmp_str);
        for (size_t i = 0; i < nbad; i++) {
            if (i && !strcmp(bad_keys[i], bad_keys[i - 1])) continue;
            if (!badk++) tbuf_puts(b, "<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th>key</th><th>would be</th>"
                                      "</tr></thead><tbody>");
            if (badk > MAX_NAMING_ROWS) continue;
            rep_follows_style(bad_keys[i], "snake", want, sizeof want);
            tbuf_puts(b, "<tr data-bad-key><td><code>");
            esc(b, bad_keys[i]);
            tbuf_puts(b, "</code></td><td><code>");
            esc(b, want);
            tbuf_puts(b, "</code></td></tr>");
        }
        free(bad_keys);
        if (badk) tbuf_puts(b, "</tbody></table></div>");
        tbuf_printf(b, "<p><b data-stat=\"bad-keys\">%zu</b> property key%s off snake_case.</p>", badk, badk == 1 ? "" : "s");
    }
    tbuf_puts(b, "</section>");
}

static void plan_section(const rep_data *d, tbuf *b)
{
    if (!d->have_plan) return;
    tbuf_puts(b, "<section id=\"plan\" aria-labelledby=\"h-plan\"><h2 id=\"h-plan\">Tracking plan coverage</h2>");
    tbuf_puts(b, "<p>Source: <code>");
    esc(b, d->plan_path);
    tbuf_printf(b, "</code>, %zu planned events.</p><h3>Planned, never seen</h3>", d->nplanned);
    size_t missing = 0;
    for (size_t i = 0; i < d->nplanned; i++) {
        size_t k = 0;
        while (k < d->nevents && (strcmp(d->events[k].type, "track") || strcmp(d->events[k].name, d->planned[i]))) k++;
        if (k < d->nevents) continue;
        tbuf_puts(b, missing++ ? "" : "<ul>");
        tbuf_puts(b, "<li data-never-seen>");
        esc(b, d->planned[i]);
        tbuf_puts(b, "</li>");
    }
    tbuf_puts(b, missing ? "</ul>" : "<p class=\"mute\">Every planned event was seen.</p>");
    tbuf_puts(b, "<h3>Seen, not planned</h3>");
    size_t extra = 0;
    for (size_t i = 0; i < d->nevents; i++) {
        if (is_planned(d, &d->events[i])) continue;
        tbuf_puts(b, extra++ ? "" : "<ul>");
        tbuf_puts(b, "<li data-unplanned>");
        esc(b, d->events[i].name);
        tbuf_puts(b, " <span class=\"mute\">");
        num(b, d->events[i].n);
        tbuf_puts(b, "</span></li>");
    }
    tbuf_puts(b, extra ? "</ul>" : "<p class=\"mute\">Every event seen is planned.</p>");
    tbuf_puts(b, "</section>");
}

static void violations_section(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<section id=\"violations\" aria-labelledby=\"h-viol\"><h2 id=\"h-viol\">Violations</h2>"
                 "<p>From <code>context.protocols.violations</code>, stamped by rules in <code>flag</code> mode: <b>");
    num(b, d->violations_total);
    tbuf_puts(b, "</b> in <b data-stat=\"messages-with-violations\">");
    num(b, d->messages_with_violations);
    tbuf_puts(b, "</b> messages.</p>");
    if (!d->nviolations) {
        tbuf_puts(b, "</section>");
        return;
    }
    tbuf_puts(b, "<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th>rule</th><th>code</th><th class=\"n\">count</th>"
                 "<th>example (select to see the message)</th></tr></thead><tbody>");
    for (size_t i = 0; i < d->nviolations; i++) {
        const rep_violation *v = &d->violations[i];
        const char *dot = strchr(v->code, '.');
        tbuf_puts(b, "<tr data-code=\"");
        esc(b, v->code);
        tbuf_puts(b, "\"><td>");
        if (dot) esc_n(b, v->code, (size_t)(dot - v->code));
        else tbuf_puts(b, "<span class=\"mute\">?</span>");
        tbuf_puts(b, "</td><td><code>");
        esc(b, dot ? dot + 1 : v->code);
        tbuf_puts(b, "</code></td><td class=\"n\" data-count>");
        num(b, v->n);
        tbuf_puts(b, "</td><td><details><summary>");
        if (*v->field) {
            tbuf_puts(b, "<code>");
            esc(b, v->field);
            tbuf_puts(b, "</code>: ");
        }
        esc(b, v->example_text);
        tbuf_puts(b, "</summary><pre>");
        esc(b, v->example_msg);
        tbuf_puts(b, "</pre></details></td></tr>");
    }
    tbuf_puts(b, "</tbody></table></div></section>");
}

static void identity_section(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<section id=\"identity\" aria-labelledby=\"h-id\"><h2 id=\"h-id\">Identity and sessions</h2><div class=\"cards\">");
    card(b, "id-users", d->users, "user ids", NULL);
    card(b, "id-anonymous", d->anonymous_ids, "anonymous ids", NULL);
    card(b, "id-anonymous-only", d->anonymous_only, "anonymous ids never identified", NULL);
    card(b, "id-sessions", d->sessions, "sessions", NULL);
    tbuf_puts(b, "</div>");
    if (d->sessions) {
        tbuf_puts(b, "<p>Session length (first to last event): median ");
        duration(b, d->session_median_s);
        tbuf_puts(b, ", 90th percentile ");
        duration(b, d->session_p90_s);
        tbuf_printf(b, ", %.1f events per session.</p>", d->events_per_session);
        static const char *const bins[REP_SESSION_BINS] = {"under 1 min", "1–5 min", "5–30 min", "30 min–2 h", "over 2 h"};
        int64_t max = 1;
        for (int i = 0; i < REP_SESSION_BINS; i++) if (d->session_bins[i] > max) max = d->session_bins[i];
        tbuf_puts(b, "<table><thead><tr><th>length</th><th class=\"n\">sessions</th><th></th></tr></thead><tbody>");
        for (int i = 0; i < REP_SESSION_BINS; i++) {
            tbuf_printf(b, "<tr><td>%s</td><td class=\"n\">", bins[i]);
            num(b, d->session_bins[i]);
            tbuf_printf(b, "</td><td><span class=\"bar\" style=\"width:%.1fpx\"></span></td></tr>",
                        160.0 * (double)d->session_bins[i] / (double)max);
        }
        tbuf_puts(b, "</tbody></table>");
    }
    tbuf_puts(b, "</section>");
}

static void delivery_section(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<section id=\"delivery\" aria-labelledby=\"h-del\"><h2 id=\"h-del\">Delivery</h2>");
    if (!d->have_store) {
        tbuf_puts(b, "<p class=\"mute\">No store given (<code>--store=FILE</code>): delivery counters are not shown.</p></section>");
        return;
    }
    tbuf_puts(b, "<p>Store <code>");
    esc(b, d->store_path);
    tbuf_puts(b, "</code>: messages per destination, counted since the store was created.</p>");
    if (!d->ndests) {
        tbuf_puts(b, "<p class=\"mute\">The store has no destinations yet.</p></section>");
        return;
    }
    static const char *const cols[] = {"delivered", "queued", "retried", "dead", "dropped", "purged"};
    tbuf_puts(b, "<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th>destination</th>");
    for (int c = 0; c < 6; c++) tbuf_printf(b, "<th class=\"n\">%s</th>", c == 3 ? "dead-lettered" : cols[c]);
    tbuf_puts(b, "</tr></thead><tbody>");
    for (size_t i = 0; i < d->ndests; i++) {
        const rep_dest *r = &d->dests[i];
        int64_t v[6] = {r->delivered, r->queued, r->retried, r->dead, r->dropped, r->purged};
        tbuf_puts(b, "<tr data-dest=\"");
        esc(b, r->name);
        tbuf_puts(b, "\"><td>");
        esc(b, r->name);
        tbuf_puts(b, "</td>");
        for (int c = 0; c < 6; c++) {
            tbuf_printf(b, "<td class=\"n%s\" data-col=\"%s\">", c == 3 && v[c] ? " flag" : "", cols[c]);
            num(b, v[c]);
            tbuf_puts(b, "</td>");
        }
        tbuf_puts(b, "</tr>");
    }
    tbuf_puts(b, "</tbody></table></div>");
    for (size_t i = 0; i < d->ndests; i++) {
        const rep_dest *r = &d->dests[i];
        if (!r->nreasons) continue;
        tbuf_puts(b, "<h3>Dead letters of ");
        esc(b, r->name);
        tbuf_puts(b, "</h3><div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th>reason</th><th class=\"n\">status</th>"
                     "<th class=\"n\">messages</th></tr></thead><tbody>");
        for (size_t k = 0; k < r->nreasons; k++) {
            tbuf_puts(b, "<tr data-dead-reason><td>");
            esc(b, r->reasons[k].reason);
            tbuf_printf(b, "</td><td class=\"n\">%d</td><td class=\"n\">", r->reasons[k].status);
            num(b, r->reasons[k].n);
            tbuf_puts(b, "</td></tr>");
        }
        tbuf_puts(b, "</tbody></table></div>");
    }
    tbuf_puts(b, "</section>");
}

void rep_html(const rep_data *d, tbuf *b)
{
    tbuf_puts(b, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
                 "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
                 "script-src '" PRINT_SCRIPT_HASH "'\"><title>tally report");
    if (d->events_path) {
        tbuf_puts(b, ": ");
        esc(b, d->events_path);
    }
    tbuf_printf(b, "</title><style>%s</style></head><body><header><h1>tally report</h1><p class=\"meta\">", style_sheet);
    const char *labels[] = {"events", "store", "plan", "since"};
    const char *vals[] = {d->events_path, d->store_path, d->plan_path, d->since};
    int any = 0;
    for (int i = 0; i < 4; i++) {
        if (!vals[i]) continue;
        tbuf_printf(b, "%s%s <code>", any++ ? " · " : "", labels[i]);
        esc(b, vals[i]);
        tbuf_puts(b, "</code>");
    }
    char now[25];
    tly_iso8601(tly_now_ms(), now);
    tbuf_printf(b, " · generated %s by tally %s</p></header><nav aria-label=\"sections\"><a href=\"#summary\">Summary</a>", now,
                tally_version());
    if (d->have_events)
        tbuf_puts(b, "<a href=\"#volume\">Volume</a><a href=\"#events\">Events</a><a href=\"#properties\">Properties</a>"
                     "<a href=\"#naming\">Naming</a>");
    if (d->have_plan) tbuf_puts(b, "<a href=\"#plan\">Plan</a>");
    if (d->have_events) tbuf_puts(b, "<a href=\"#violations\">Violations</a><a href=\"#identity\">Identity</a>");
    tbuf_puts(b, "<a href=\"#delivery\">Delivery</a></nav><main>");
    summary(d, b);
    if (d->have_events) {
        events_section(d, b);
        properties_section(d, b);
        naming_section(d, b);
        plan_section(d, b);
        violations_section(d, b);
        identity_section(d, b);
    }
    delivery_section(d, b);
    tbuf_puts(b, "</main><footer>Aggregated from the database when the report was made; no event leaves this file "
                 "but the examples shown.</footer>"
                 "<script>" PRINT_SCRIPT "</script></body></html>\n");
}
