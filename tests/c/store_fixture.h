/* The store opener shared by the suites that test the store on its own (test_store,
 * test_forget_store): they link the core objects, so this uses store.h directly. */
#ifndef TALLY_TEST_STORE_FIXTURE_H
#define TALLY_TEST_STORE_FIXTURE_H
#include <stdint.h>

#include "store.h"

/* A fresh store file tu_tmpdir()/name (removed first), 1 GiB, at most max_rows messages, full
 * policy on_full (STORE_FULL_*), with one destination "d" whose id goes to *d; why it failed in
 * *err. NULL on failure. The caller closes it with store_close. */
store *tsf_open(const char *name, int64_t max_rows, int on_full, int *d, tly_err *err);

#endif
