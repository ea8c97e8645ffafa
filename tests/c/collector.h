/* Test-side handle on tests/e2e/collector.py, the scriptable Segment-compatible
 * collector: start one per test, point tally at collector_url(), script faults,
 * then wait on and check what the collector accepted.
 *
 * The script is found at $TALLY_SRC_DIR/tests/e2e/collector.py, else at
 * tests/e2e/collector.py in the current directory or one of its parents (so a
 * test run from build/ finds it too). $TALLY_PYTHON overrides "python3".
 *
 * Every control request uses a fresh connection, a 5 s timeout and no proxy,
 * so a test's own proxy settings or an injected outage cannot confuse them. */
#ifndef TALLY_TEST_COLLECTOR_H
#define TALLY_TEST_COLLECTOR_H

typedef struct collector collector;

/* Starts a collector; log_path, when not NULL, gets one JSON line per request
 * (--log). Returns NULL with the reason on stderr when it cannot start. */
collector *collector_start(const char *log_path);

/* Same with extra command-line arguments, a NULL-terminated array, e.g.
 * {"--tls", cert, key, NULL}; "--tls" makes collector_url() https. */
collector *collector_start_opts(const char *const *extra_args);

/* "http://127.0.0.1:PORT" or "https://..." ; owned by c. */
const char *collector_url(const collector *c);
int collector_port(const collector *c);

/* POST /control with a JSON body, e.g.
 *   {"script":[{"status":500},{"status":429,"retry_after":"1"}]}
 *   {"default":{"status":503}}      {"down_ms":2000}
 * Returns 0 when the collector took it (an unknown step key is an error).
 * After {"down_ms":N} returns, connections are refused for N ms. */
int collector_script(collector *c, const char *json);

/* GET /received: every request as recorded plus counts. malloc'd; caller frees.
 * NULL on failure. */
char *collector_received(collector *c);

/* Counts from GET /received?summary=1; -1 on failure.
 * accepted: messages in requests answered 2xx; duplicates: those whose
 * messageId had already been accepted; requests: every batch request, faults
 * included. */
long collector_accepted(collector *c);
long collector_duplicates(collector *c);
long collector_requests(collector *c);

/* Poll every 10 ms until the count reaches n: 0 when it does, -1 on timeout
 * (or if the collector stops answering for the whole time). */
int collector_wait_accepted(collector *c, long n, int timeout_ms);
int collector_wait_requests(collector *c, long n, int timeout_ms);

/* Poll every 10 ms until every scripted step has been taken by a request (the collector takes a
 * request's step when it reads its headers, before any held answer): 0, or -1 on timeout. */
int collector_wait_script_taken(collector *c, int timeout_ms);

/* POST /reset: forget records, script and default answer. */
void collector_reset(collector *c);

/* SIGTERM, wait for exit (SIGKILL after 5 s), free. NULL is fine. */
void collector_stop(collector *c);

#endif
