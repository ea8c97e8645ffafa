/* Fixtures shared by the C tests that open handles: the log capture, the handle openers, and
 * rules folders. Only the public API (tally.h) is used, so every test binary can link them.
 *
 * Threads: the openers, tf_rules_dir, tf_log_reset and tf_log_needle are for the test's main thread;
 * tf_log is the logger the runtime's threads call, and tf_logged / tf_log_lines may be read while
 * they do (everything is under one mutex).
 *
 * Ownership: tf_rules_dir returns a malloc'd path the caller frees; tf_logged returns a snapshot
 * owned here, valid until the next tf_logged or tf_log_reset. */
#ifndef TALLY_TEST_FIXTURES_H
#define TALLY_TEST_FIXTURES_H
#include <stdarg.h>

struct tally;
struct tally_config;

/* ---- log capture: one process-wide log, since tests run one after another ---- */

/* A tally_log_fn: appends msg and a newline to the captured text (beyond 1 MiB, lines are only
 * counted). Every tf_ opener installs it. */
void        tf_log(void *ud, int level, const char *msg);
/* Empties the captured text and the counts (every tf_ opener does, before it opens). */
void        tf_log_reset(void);
/* From now on, tf_log_needle_lines counts the lines holding `needle` (NULL: none); a static
 * string, kept across resets. */
void        tf_log_needle(const char *needle);
const char *tf_logged(void);           /* a snapshot of the text captured since the last reset */
int         tf_log_lines(void);        /* lines captured since the last reset */
int         tf_log_needle_lines(void); /* of them, those holding the needle */

/* ---- opening handles ---- */

/* Opens a handle configured from key/value pairs ending with NULL, logging to tf_log (the
 * capture is reset first). A key the config refuses, or a failed tally_open, is printed with
 * tally_errmsg and the handle is not opened. Returns the handle or NULL. */
struct tally *tf_open(const char *key, ...);
/* The same, returning tally_open's code (or the refused key's) and the handle in *out. */
int           tf_open_rc(struct tally **out, const char *key, ...);
/* The form per-file openers build on: the NULL-terminated pairs of `defaults` first, then the
 * NULL-terminated pairs in ap (a later value of a key replaces an earlier one). */
int           tf_vopen(struct tally **out, const char *const *defaults, va_list ap);
/* A config built the same way (pairs, then tf_log as its logger), for tests that need the config
 * itself; NULL with the refused key printed. The caller frees it. */
struct tally_config *tf_config(const char *key, ...);
struct tally_config *tf_vconfig(const char *const *defaults, va_list ap);

/* Opens a handle writing to a fresh NDJSON file `file` (removed first), log_level off; extra
 * key/value pairs end with NULL. */
struct tally *tu_open_file(const char *file, ...);

/* ---- file destinations ---- */

/* A store file and up to TF_FILES_MAX file destinations named "a", "b"...: tu_tmpdir()/<tag>.db
 * and tu_tmpdir()/<tag>-<name>.ndjson, removed by tf_files_init. `consent` (NULL, or n entries)
 * gives each destination's "consent" value as JSON text, NULL for none. */
#define TF_FILES_MAX 4
typedef struct tf_files {
    char *db;
    char *out[TF_FILES_MAX];
    int   n;
    char  dests[2048]; /* the "destinations" value */
} tf_files;

void tf_files_init(tf_files *f, const char *tag, int n, const char *const *consent);
void tf_files_free(tf_files *f);
/* Opens on f's store and destinations, log_level off, then the key/value pairs ending with NULL
 * (a later value of a key replaces an earlier one). NULL when the open failed (printed). */
struct tally *tf_files_open(tf_files *f, ...);
/* Lines a file destination wrote (0 when it wrote none yet), and of them those holding needle. */
int tf_lines(const char *path);
int tf_lines_with(const char *path, const char *needle);

/* ---- the environment of tests that talk HTTP ---- */

/* Unsets what would change where a handle sends or whom it trusts: TALLY_WRITE_KEY and
 * TALLY_ENDPOINT (a destination at api.segment.io on every handle), the proxy variables (a proxy
 * between tally and the collector) and CURL_CA_BUNDLE / SSL_CERT_FILE / SSL_CERT_DIR. It must run
 * before any thread starts: TF_CLEAN_HTTP_ENVIRONMENT, once in a test file, runs it before main. */
void tf_clean_http_environment(void);
#define TF_CLEAN_HTTP_ENVIRONMENT \
    __attribute__((constructor)) static void tf_clean_environment_first(void) { tf_clean_http_environment(); }

/* ---- rules folders ---- */

/* A fresh folder tu_tmpdir()/<tag>-<n> holding the given (filename, source) pairs, ending with
 * NULL. Returns its path, malloc'd. */
char *tf_rules_dir(const char *tag, const char *first_file, ...);

#endif
