/* `tally report`: a self-contained HTML audit of an events database (the sqlite destination's
 * `events` table, or NDJSON loaded into one) and a store. report_sql.c aggregates into a
 * rep_data, report_html.c renders it, report.c is the command. Nothing raw leaves the database
 * except a few example messages, so the page stays small whatever the volume. */
#ifndef TALLY_CLI_REPORT_H
#define TALLY_CLI_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "message.h"

/* JSON types of a property, as a reader thinks of them (integers and decimals are both numbers). */
enum { RT_STRING, RT_NUMBER, RT_BOOLEAN, RT_NULL, RT_OBJECT, RT_ARRAY, RT_COUNT };

typedef struct rep_event {
    char   *type, *name;        /* name: event (track) or name (page/screen), may be "" */
    int64_t n;
    char   *first, *last;       /* timestamps */
    int     planned;            /* with a plan: 1 planned, 0 not */
} rep_event;

typedef struct rep_prop {
    char   *event, *key;
    int64_t n[RT_COUNT];
} rep_prop;

typedef struct rep_violation {
    char   *code, *field;       /* field of the first example */
    int64_t n;
    char   *example_text;       /* its description */
    char   *example_msg;        /* the whole message it was found in (one per code) */
} rep_violation;

typedef struct rep_dead_reason {
    char   *reason;
    int     status;
    int64_t n;
} rep_dead_reason;

typedef struct rep_dest {
    char            *name;
    int64_t          queued, delivered, retried, dead, dropped, purged;
    rep_dead_reason *reasons;
    size_t           nreasons;
} rep_dest;

#define REP_TOP_SERIES 6
#define REP_SESSION_BINS 5

typedef struct rep_data {
    const char *events_path, *store_path, *plan_path, *since;
    char      **problems;       /* what could not be read, in words */
    size_t      nproblems;
    int         have_events;    /* an events database was read */

    int64_t     total, unreadable;   /* rows; rows whose body is not a JSON object */
    int64_t     unreadable_example;  /* row id of one */
    int64_t     by_type[MT_COUNT];   /* by message type (MT_*) */
    int64_t     other_type;
    char       *first_ts, *last_ts;

    rep_event  *events;         /* by count, descending */
    size_t      nevents;

    /* volume: nbuckets of bucket_s seconds from volume_start (epoch s); the series are the
     * first nseries events (the most frequent), then "other": volume[b * (REP_TOP_SERIES + 1) + s] */
    int64_t     bucket_s, nbuckets, volume_start;
    int         nseries;
    int64_t    *volume;

    rep_prop   *props;          /* by event, then key */
    size_t      nprops;

    rep_violation *violations;  /* by count, descending */
    size_t      nviolations;
    int64_t     violations_total, messages_with_violations;

    /* identity */
    int64_t     users, anonymous_ids, anonymous_only, sessions;
    int64_t     session_bins[REP_SESSION_BINS];  /* <1 min, <5 min, <30 min, <2 h, longer */
    double      session_median_s, session_p90_s, events_per_session;

    /* naming */
    const char *style;          /* lower | title | snake | NULL (no event-name check) */
    int         snake_keys;     /* check property keys are snake_case */

    /* plan (when given) */
    char      **planned;        /* planned event names */
    size_t      nplanned;
    int         have_plan;

    rep_dest   *dests;
    size_t      ndests;
    int         have_store;
} rep_data;

/* Records a problem ("3 rows have a body that is not JSON") shown at the top of the report. */
void rep_problem(rep_data *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Aggregates the events database at d->events_path (SQLite, or NDJSON when ndjson is set) into d.
 * 0, or -1 with err set when the file cannot be used at all (missing, not an events database);
 * problems met while reading (corrupt rows or pages) go to d->problems instead. */
int  rep_read_events(rep_data *d, int ndjson, char *err, size_t errlen);
/* Reads delivery counters and dead letters from the store at d->store_path. 0 or -1 with err. */
int  rep_read_store(rep_data *d, char *err, size_t errlen);
/* The naming check: whether name follows style, with the conforming form in out. */
int  rep_follows_style(const char *name, const char *style, char *out, size_t outlen);
void rep_free(rep_data *d);

/* Renders the page. */
void rep_html(const rep_data *d, tbuf *out);

/* `tally report ...` (argv[0] is "report"). Exit 0 written, 1 could not read, 2 usage. */
int  cli_report(int argc, char **argv);

#endif
