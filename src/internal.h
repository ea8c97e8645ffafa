/* Internal declarations shared by the core's files. Nothing here is public API. */
#ifndef TALLY_INTERNAL_H
#define TALLY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "tally.h"
#include "buf.h"

#define HIDDEN __attribute__((visibility("hidden")))

/* ---- errors (errors.c) ----
 * The last failure text is per thread: calls are made from any thread, and a caller reads the
 * text right after its own failing call. Returns rc so call sites can `return tly_fail(...)`.
 * For public entry points (it writes the public text); module code takes a tly_err instead
 * (the processor, worker and store still call this until they move to tly_err). */
int  tly_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tly_clear_error(void);

/* The internal discipline (docs/ARCHITECTURE.md): a module function returns TALLY_OK or a
 * TALLY_E* code and, when it fails, writes why into the tly_err its caller passed (never NULL).
 * Only the public entry points (tally.c, tally_config_set/_load, the Lua module's C glue, the CLI)
 * turn that into the per-thread tally_errmsg text, with tly_publish; nothing inside reads
 * tally_errmsg back. */
typedef struct tly_err {
    char msg[1024]; /* a script's error text reaches the log whole; tally_errmsg keeps 511 bytes */
} tly_err;

/* Writes the text into *e and returns rc, so call sites can `return tly_err_set(e, rc, ...)`. */
int  tly_err_set(tly_err *e, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefixes e's text with "prefix: " (the caller's context: a file name, a field). Returns rc. */
int  tly_err_wrap(tly_err *e, int rc, const char *prefix);
/* Makes e's text the calling thread's tally_errmsg. Returns rc. */
int  tly_publish(int rc, const tly_err *e);

/* ---- logging (log.c) ---- */
typedef struct tly_logger {
    tally_log_fn fn;
    void        *ud;
    int          level;   /* lines above this level are dropped */
} tly_logger;

void tly_log(const tly_logger *lg, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Non-zero on a thread that is inside a log callback: the calls that wait (flush, reload, close,
 * stats, identity) refuse to run there, since the thread logging may be the one they wait for. */
extern _Thread_local int tly_in_log_callback;
/* Copies in to out (outlen >= 6) with control characters and bytes that are not UTF-8 written as
 * \xNN (\n, \r, \t by name), truncated to fit: what every log line gets, for text that reaches
 * other outputs (`tally check`). 4 * strlen(in) + 1 bytes always suffice. */
void tly_escape(const char *in, char *out, size_t outlen);

/* ---- time and ids (ids.c) ---- */
int64_t tly_now_ms(void);                   /* wall clock, ms since the epoch: timestamps only */
int64_t tly_mono_ms(void);                  /* monotonic clock: idle times and deadlines */

/* When a call happened. Where the kernel itself keeps time with the CPU's time-stamp counter
 * (x86-64 Linux, clocksource "tsc": synchronised across cores, constant rate), a call reads the
 * counter (~9 ns here) instead of clock_gettime(CLOCK_REALTIME) (~21 ns): 20 ns of tally_track's
 * p50 (bench/README.md). The processor turns ticks into wall time when it stamps the message.
 * Elsewhere the call reads the wall clock as before. tly_clock_init runs once, at the first open. */
void    tly_clock_init(void);
extern int tly_ticks_ok;                    /* set by tly_clock_init; constant afterwards */
#if defined(__x86_64__) && defined(__linux__)
static inline uint64_t tly_ticks(void) { return __builtin_ia32_rdtsc(); }
#else
static inline uint64_t tly_ticks(void) { return 0; }
#endif
int64_t tly_ticks_wall_ms(uint64_t ticks);  /* wall ms at the moment tly_ticks() returned `ticks` */
void    tly_iso8601(int64_t ms, char out[25]); /* "2026-11-24T20:31:02.123Z" */
/* A random (version 4) UUID in canonical text form, from the OS random source. TALLY_OK, or
 * TALLY_EIO when the OS gives no random bytes. */
int     tly_uuid4(char out[37]);

/* ---- fault points (fault.c) ----
 * Every step of tally_open that acquires something (memory, a descriptor, a thread, the store, a
 * destination) passes a fault point first, so a test can fail each step in turn and check that the
 * failing path frees exactly what was made: with tly_fault_countdown = n, the n-th point passed
 * fails (once) as if its step had. 0, the default, costs one relaxed load per point. */
extern _Atomic long tly_fault_countdown;
int tly_fault(void);
/* While non-zero, every store commit fails as a write on a full disk does (the transaction rolls
 * back): the worker's held-rows path, reachable from tests without filling a filesystem. */
extern _Atomic int tly_fault_store_full;

#endif
