/* Small helpers shared by the C tests (files, temporary paths, tracking); the handle openers
 * and the log capture are in fixtures.h. */
#ifndef TALLY_TEST_UTIL_H
#define TALLY_TEST_UTIL_H
#include <stddef.h>

char *tu_read_file(const char *path, size_t *len);   /* malloc'd, NUL-terminated; NULL if missing */
int   tu_count_lines(const char *path);              /* -1 if missing */
/* Whether needle occurs in the file's raw bytes (binary files too): 1, else 0 (also when missing). */
int   tu_file_contains(const char *path, const char *needle);
char *tu_line(const char *path, int n);              /* the n-th line (0-based), malloc'd */
const char *tu_tmpdir(void);                         /* a fresh directory for this process */
char *tu_path(const char *name);                     /* tu_tmpdir()/name, malloc'd */
void  tu_write_file(const char *path, const char *text); /* creates or replaces; complains on stderr */
struct tally;
/* tally_track, yielding and calling again while the queue is full (TALLY_EFULL): tests that must
 * not drop. Returns the final status. */
int   tu_track_waiting(struct tally *t, const char *event, const char *props);
/* Writes {"pad":"xxx..."} with `pad` x's into buf (which holds pad + 11 bytes). */
void  tu_pad_props(char *buf, size_t pad);
#endif
