/* Small helpers shared by the C tests. */
#ifndef TALLY_TEST_UTIL_H
#define TALLY_TEST_UTIL_H
#include <stddef.h>

char *tu_read_file(const char *path, size_t *len);   /* malloc'd, NUL-terminated; NULL if missing */
int   tu_count_lines(const char *path);              /* -1 if missing */
char *tu_line(const char *path, int n);              /* the n-th line (0-based), malloc'd */
const char *tu_tmpdir(void);                         /* a fresh directory for this process */
char *tu_path(const char *name);                     /* tu_tmpdir()/name, malloc'd */
/* Opens a handle writing to a fresh NDJSON file; extra key/value pairs end with NULL. */
struct tally;
struct tally *tu_open_file(const char *file, ...);
#endif
