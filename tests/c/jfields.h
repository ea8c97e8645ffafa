/* Field readers for parsed JSON objects (tests that link the core objects, not libtally). */
#ifndef TALLY_TEST_JFIELDS_H
#define TALLY_TEST_JFIELDS_H
#include "json.h"

/* -1 / NULL when the key is absent or holds another type. */
long long   tu_jint(const tj_value *o, const char *key);
double      tu_jnum(const tj_value *o, const char *key);
const char *tu_jstr(const tj_value *o, const char *key);
#endif
