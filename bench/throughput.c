/* In-process throughput and caller-side latency of tally.
 *
 *   throughput [--n=200000] [--threads=1] [--rules=PATH] [--store=:memory:|FILE] [--out=/dev/null]
 *              [--endpoint=URL --write_key=K] [--gzip=true] [--label=NAME] [--full_wait_us=0]
 *              [--api=track|send] [--consent=on|stamp|off] [--rule_threads=N]
 *              [any other --key=value: passed to tally_config_set]
 *
 * --consent=on: two file destinations (/dev/null) that need consent categories ("analytics";
 * "analytics" and "performance"), both granted by tally_consent before the run, so every message
 * is stamped with the preferences and checked for each destination; --consent=stamp: the same two
 * destinations without categories and the same preferences, so messages are stamped alike but
 * nothing is checked; --consent=off: no preferences either. on - stamp is the check's cost, stamp
 * - off the stamp's (the preferences' bytes, written to every destination and the store).
 *
 * Tracks N ~380-byte events (6 mixed properties) as fast as the caller can, then flushes, and
 * prints one JSON line: events/s end to end (first call to flush returning), the caller-side cost
 * of tally_track (p50/p99/max ns, from the calling threads), CPU seconds per 100k events, peak RSS,
 * and how many events were refused (queue full) and retried by the caller. A full queue is not a
 * loss here: the caller waits and retries, and the retries are reported. The wait is sched_yield()
 * by default; --full_wait_us=N sleeps N microseconds instead, so a caller that outruns the
 * processor does not spin on a core the processor (and, end to end, the worker and the collector)
 * needs. Only the first attempt of each call is timed. caller_cpu_s_per_100k is the calling threads' own CPU time
 * (CLOCK_THREAD_CPUTIME_ID), so cpu_s_per_100k minus it is the background's share.
 *
 * --api=send times tally_send instead, the way a server host calls it: a whole ~400-byte message
 * with the same event and properties plus the ids and a request's context (works in either mode;
 * --mode=server is the host's usual setting). The latency fields keep their track_ names.
 *
 * --rule_threads=N (a config key, like any other) runs the rules on N states; it takes effect in
 * server mode, so with --api=send --mode=server, whose messages come from 5000 userIds. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "tally.h"

typedef struct opts {
    long        n;
    int         threads;
    const char *label;
    const char *consent;     /* NULL, "on", "stamp" or "off" */
    long        full_wait_us;
    int         send;
    const char *keys[16], *vals[16];
    int         nkv;
} opts;

typedef struct worker_arg {
    tally_t  *t;
    long      n, first;
    uint32_t *lat;   /* ns per call */
    long      full_retries;
    long      full_wait_us;
    int       send;    /* --api=send */
    double    cpu_s;   /* this thread's CPU time */
} worker_arg;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One call of the measured API: the event with props, or a whole message holding them. */
static int call(const worker_arg *a, const char *props, const char *msg)
{
    return a->send ? tally_send(a->t, msg) : tally_track(a->t, "Button Clicked", props);
}

static void *run(void *p)
{
    worker_arg *a = p;
    char props[400], msg[1024];
    for (long i = 0; i < a->n; i++) {
        long k = a->first + i;
        snprintf(props, sizeof props,
                 "{\"button_name\":\"Play Again %ld\",\"level\":%ld,\"score\":%ld.25,\"hard_mode\":%s,"
                 "\"tags\":[\"arcade\",\"weekend\"],\"loadout\":{\"weapon\":\"bow\",\"ammo\":%ld}}",
                 k % 97, k % 40, k * 7 % 5000, k % 3 ? "false" : "true", k % 120);
        if (a->send)
            snprintf(msg, sizeof msg,
                     "{\"type\":\"track\",\"event\":\"Button Clicked\",\"userId\":\"user-%ld\","
                     "\"anonymousId\":\"6f1c0a52-3b7e-4f0e-9d2a-%012ld\",\"properties\":%s,"
                     "\"context\":{\"ip\":\"203.0.113.%ld\",\"userAgent\":\"Mozilla/5.0 (X11; Linux x86_64)\","
                     "\"page\":{\"path\":\"/play\",\"url\":\"https://example.com/play\"}}}",
                     k % 5000, k, props, k % 250);
        uint64_t t0 = now_ns();
        int rc = call(a, props, msg);
        uint64_t dt = now_ns() - t0;
        a->lat[i] = dt > UINT32_MAX ? UINT32_MAX : (uint32_t)dt;
        while (rc == TALLY_EFULL) {
            a->full_retries++;
            if (a->full_wait_us > 0) {
                struct timespec ws = {a->full_wait_us / 1000000, a->full_wait_us % 1000000 * 1000};
                nanosleep(&ws, NULL);
            } else {
                sched_yield();
            }
            rc = call(a, props, msg);
        }
        if (rc != TALLY_OK) {
            fprintf(stderr, "%s: %s\n", a->send ? "send" : "track", tally_errmsg(a->t));
            exit(1);
        }
    }
    struct timespec cpu;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    a->cpu_s = (double)cpu.tv_sec + (double)cpu.tv_nsec / 1e9;
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* What the timing itself adds to every track() sample: the median of an empty timed region.
 * Reported beside the figures, never subtracted from them. */
static unsigned timer_floor_ns(void)
{
    enum { N = 100001 };
    static uint32_t d[N];
    for (int i = 0; i < N; i++) {
        uint64_t a = now_ns(), b = now_ns();
        d[i] = (uint32_t)(b - a);
    }
    qsort(d, N, sizeof *d, cmp_u32);
    return (unsigned)d[N / 2];
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void parse(int argc, char **argv, opts *o)
{
    o->n = 200000;
    o->threads = 1;
    o->label = "run";
    for (int i = 1; i < argc; i++) {
        char *a = argv[i], *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) || !eq) { fprintf(stderr, "bad argument %s\n", a); exit(2); }
        *eq = '\0';
        if (!strcmp(a + 2, "n")) o->n = atol(eq + 1);
        else if (!strcmp(a + 2, "threads")) o->threads = atoi(eq + 1);
        else if (!strcmp(a + 2, "label")) o->label = eq + 1;
        else if (!strcmp(a + 2, "full_wait_us")) o->full_wait_us = atol(eq + 1);
        else if (!strcmp(a + 2, "api")) o->send = !strcmp(eq + 1, "send");
        else if (!strcmp(a + 2, "consent")) o->consent = eq + 1;
        else if (o->nkv < 16) { o->keys[o->nkv] = a + 2; o->vals[o->nkv++] = eq + 1; }
    }
}

int main(int argc, char **argv)
{
    opts o;
    memset(&o, 0, sizeof o);
    parse(argc, argv, &o);
    tally_config *cfg = tally_config_new();
    int has_dest = 0;
    for (int i = 0; i < o.nkv; i++) {
        if (tally_config_set(cfg, o.keys[i], o.vals[i]) != TALLY_OK) {
            fprintf(stderr, "%s\n", tally_errmsg(NULL));
            return 2;
        }
        has_dest |= !strcmp(o.keys[i], "out") || !strcmp(o.keys[i], "endpoint") || !strcmp(o.keys[i], "destinations");
    }
    int consent = o.consent && !strcmp(o.consent, "on");
    if (o.consent) {
        /* two names for /dev/null: destinations are told apart by their path */
        const char *d = consent ? "[{\"type\":\"file\",\"path\":\"/dev/null\",\"consent\":\"analytics\"},"
                                  "{\"type\":\"file\",\"path\":\"/dev//null\",\"consent\":[\"analytics\",\"performance\"]}]"
                                : "[{\"type\":\"file\",\"path\":\"/dev/null\"},{\"type\":\"file\",\"path\":\"/dev//null\"}]";
        if (tally_config_set(cfg, "destinations", d) != TALLY_OK) {
            fprintf(stderr, "%s\n", tally_errmsg(NULL));
            return 2;
        }
        has_dest = 1;
    }
    if (!has_dest) tally_config_set(cfg, "out", "/dev/null");
    tally_t *t;
    if (tally_open(cfg, &t) != TALLY_OK) {
        fprintf(stderr, "open: %s\n", tally_errmsg(NULL));
        return 1;
    }
    if ((consent || (o.consent && !strcmp(o.consent, "stamp"))) &&
        tally_consent(t, "{\"analytics\":true,\"performance\":true,\"advertising\":false}") != TALLY_OK) {
        fprintf(stderr, "consent: %s\n", tally_errmsg(t));
        return 1;
    }
    tally_config_free(cfg);
    unsigned floor_ns = timer_floor_ns();
    uint32_t *lat = malloc(sizeof *lat * (size_t)o.n);
    worker_arg *args = calloc((size_t)o.threads, sizeof *args);
    pthread_t *th = calloc((size_t)o.threads, sizeof *th);
    long per = o.n / o.threads;
    double cpu0 = cpu_s(), t0 = now_s();
    for (int i = 0; i < o.threads; i++) {
        args[i] = (worker_arg){t, per, per * i, lat + per * i, 0, o.full_wait_us, o.send, 0};
        pthread_create(&th[i], NULL, run, &args[i]);
    }
    long retries = 0;
    double caller_cpu = 0;
    for (int i = 0; i < o.threads; i++) {
        pthread_join(th[i], NULL);
        retries += args[i].full_retries;
        caller_cpu += args[i].cpu_s;
    }
    double t_enq = now_s();
    int frc = tally_flush(t, 600000);
    double t1 = now_s(), cpu1 = cpu_s();
    char *stats = NULL;
    tally_stats(t, &stats);
    long total = per * o.threads;
    qsort(lat, (size_t)total, sizeof *lat, cmp_u32);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"label\":\"%s\",\"api\":\"%s\",\"n\":%ld,\"threads\":%d,\"flush\":\"%s\",\"events_per_s\":%.0f,"
           "\"enqueue_s\":%.3f,\"total_s\":%.3f,\"cpu_s_per_100k\":%.3f,\"caller_cpu_s_per_100k\":%.3f,\"peak_rss_mib\":%.1f,"
           "\"track_ns_p50\":%u,\"track_ns_p99\":%u,\"track_ns_max\":%u,\"timer_ns_p50\":%u,\"full_retries\":%ld,\"stats\":%s}\n",
           o.label, o.send ? "send" : "track", total, o.threads, frc == TALLY_OK ? "ok" : "timeout", total / (t1 - t0), t_enq - t0, t1 - t0,
           (cpu1 - cpu0) / total * 100000.0, caller_cpu / total * 100000.0, ru.ru_maxrss / 1024.0, lat[total / 2], lat[total * 99 / 100],
           lat[total - 1], floor_ns, retries, stats ? stats : "{}");
    tally_free(stats);
    tally_close(t, 10000);
    free(lat);
    free(args);
    free(th);
    return frc == TALLY_OK ? 0 : 1;
}
