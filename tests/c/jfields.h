/* JSON field readers and stats pollers for tests that link the core objects (not libtally). */
#ifndef TALLY_TEST_JFIELDS_H
#define TALLY_TEST_JFIELDS_H
#include "json.h"

/* -1 / NULL when the key is absent or holds another type. */
long long   tu_jint(const tj_value *o, const char *key);
double      tu_jnum(const tj_value *o, const char *key);
const char *tu_jstr(const tj_value *o, const char *key);

/* Runtime counters from tally_stats: a top-level one (dest NULL) or one of the first destination
 * whose name contains dest ("" for the first). -1 when absent. */
struct tally;
long long tu_stat(struct tally *t, const char *dest, const char *field);
/* Polls tu_stat until the counter reaches want: 0, or -1 after timeout_ms. */
int       tu_wait_stat(struct tally *t, const char *dest, const char *field, long long want, int timeout_ms);
long      tu_mono_ms(void);
#endif
