#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static int64_t ns_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t tly_now_ms(void) { return ns_of(CLOCK_REALTIME) / 1000000; }
int64_t tly_mono_ms(void) { return ns_of(CLOCK_MONOTONIC) / 1000000; }

/* ---- call timestamps (see internal.h) ---- */

int tly_ticks_ok;
static struct { uint64_t ticks; int64_t mono_ns; } cal; /* one (counter, monotonic ns) pair */

/* Looked at once, at the first open: a kernel that later finds its TSC unstable switches
 * clocksource, and call times would then follow a counter it no longer trusts; that has to be
 * rare enough (it is logged by the kernel) not to pay 12 ns per call for. */
static int kernel_times_with_tsc(void)
{
#if defined(__x86_64__) && defined(__linux__)
    char src[32] = "";
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
    if (!f) return 0;
    int ok = fgets(src, sizeof src, f) && strcmp(src, "tsc\n") == 0;
    fclose(f);
    return ok;
#else
    return 0;
#endif
}

/* The rate comes from the pair taken here and one taken at each conversion, so it is measured
 * over everything since the first open. A conversion looks back at most the time the record
 * waited in the intake, never more than the time since this pair, so an error in the pair (a
 * preemption between its two reads) can shift a timestamp by at most that error: the pair is
 * the tightest of five tries. */
static void clock_init_once(void)
{
    if (!kernel_times_with_tsc()) return;
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 5; i++) {
        uint64_t a = tly_ticks();
        int64_t m = ns_of(CLOCK_MONOTONIC);
        uint64_t b = tly_ticks();
        if (b < a) return; /* not monotonic: do not trust it */
        if (b - a < best) {
            best = b - a;
            cal.ticks = a + (b - a) / 2;
            cal.mono_ns = m;
        }
    }
    tly_ticks_ok = 1;
}

void tly_clock_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, clock_init_once);
}

/* The conversion point (counter, wall ns) and the counter's rate, per thread, taken again once a
 * millisecond has gone by: reading both clocks for every message was ~12% of the processor's time
 * with no rules (bench/README.md), and a wall clock stepped by NTP is still followed within 1 ms.
 * The rate is measured from the calibration pair at open, over everything since, so it is the
 * more exact the longer tally runs. */
static _Thread_local struct {
    uint64_t ticks, refresh;
    int64_t  wall_ns;
    double   ns_per_tick;
} conv;

int64_t tly_ticks_wall_ms(uint64_t ticks)
{
    uint64_t now = tly_ticks();
    if (!conv.ticks || now - conv.ticks >= conv.refresh) {
        int64_t wall = ns_of(CLOCK_REALTIME), mono = ns_of(CLOCK_MONOTONIC);
        conv.ticks = now;
        conv.wall_ns = wall;
        conv.ns_per_tick = 0;
        conv.refresh = 0; /* no rate yet: convert at the next call again */
        if (now > cal.ticks && mono > cal.mono_ns) {
            conv.ns_per_tick = (double)(mono - cal.mono_ns) / (double)(now - cal.ticks);
            conv.refresh = (uint64_t)(1e6 / conv.ns_per_tick);
        }
    }
    /* signed: a record stamped on another core may be a few ticks ahead of this one */
    int64_t back = (int64_t)(conv.ticks - ticks);
    return (conv.wall_ns - (int64_t)((double)back * conv.ns_per_tick)) / 1000000;
}

static char *put_digits(char *p, int v, int width)
{
    for (int i = width - 1; i >= 0; i--) { p[i] = (char)('0' + v % 10); v /= 10; }
    return p + width;
}

/* The proleptic Gregorian date of a day number (days since 1970-01-01), by 400-year eras of
 * 146097 days, with years starting on March 1 so the leap day falls at the end of a year. */
static void civil_date(int64_t days, int *year, int *month, int *mday)
{
    days += 719468; /* from 0000-03-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t doe = days - era * 146097;                                 /* [0, 146096] */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* [0, 365] */
    int64_t mp = (5 * doy + 2) / 153;                                    /* March = 0 */
    *mday = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = (int)(yoe + era * 400 + (*month <= 2));
}

/* Hand-formatted for every message on the processor: snprintf is several times slower, and
 * gmtime_r takes glibc's time zone lock on every call. */
void tly_iso8601(int64_t ms, char out[25])
{
    int64_t secs = ms / 1000;
    int frac = (int)(ms % 1000);
    if (frac < 0) { frac += 1000; secs -= 1; }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) { sod += 86400; days -= 1; }
    int year, month, mday;
    civil_date(days, &year, &month, &mday);
    if (year < 0) year = 0;
    if (year > 9999) year = 9999;
    char *p = put_digits(out, year, 4);
    *p++ = '-';
    p = put_digits(p, month, 2);
    *p++ = '-';
    p = put_digits(p, mday, 2);
    *p++ = 'T';
    p = put_digits(p, (int)(sod / 3600), 2);
    *p++ = ':';
    p = put_digits(p, (int)(sod / 60 % 60), 2);
    *p++ = ':';
    p = put_digits(p, (int)(sod % 60), 2);
    *p++ = '.';
    p = put_digits(p, frac, 3);
    *p++ = 'Z';
    *p = '\0';
}

/* getrandom() per UUID would be a syscall per message; a per-thread pool refilled 4 KB at a time
 * keeps the OS random source (the requirement) at a fraction of the cost. A forked child must not
 * replay its parent's pool: the child handler empties the pool of the one thread that survives a
 * fork (getpid() per UUID would be a syscall per message again). */
static _Thread_local struct {
    unsigned char bytes[4096];
    size_t        used;
} pool = {{0}, sizeof pool.bytes};

static void empty_pool_in_child(void) { pool.used = sizeof pool.bytes; }
static void install_fork_handler(void) { pthread_atfork(NULL, NULL, empty_pool_in_child); }

static int fill_random(unsigned char *p, size_t n)
{
    while (n) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

int tly_uuid4(char out[37])
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install_fork_handler);
    if (pool.used + 16 > sizeof pool.bytes) {
        if (fill_random(pool.bytes, sizeof pool.bytes)) return TALLY_EIO;
        pool.used = 0;
    }
    unsigned char u[16];
    memcpy(u, pool.bytes + pool.used, 16);
    memset(pool.bytes + pool.used, 0, 16); /* a used id is never handed out twice */
    pool.used += 16;
    u[6] = (unsigned char)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[u[i] >> 4];
        out[o++] = hex[u[i] & 15];
    }
    out[o] = '\0';
    return TALLY_OK;
}
