/* Running a bundle's self-tests (docs/bundles.md, "Self-tests") through a rule chain loaded
 * from the bundle's scripts: what `tally rules test` prints, and what the runtime will require
 * before it swaps a fetched bundle in. */
#ifndef TALLY_BUNDLE_SELFTEST_H
#define TALLY_BUNDLE_SELFTEST_H

#include <stddef.h>

#include "bundle.h"
#include "rules.h"

/* The anonymousId stamped on a test input that carries no userId or anonymousId, as the runtime
 * stamps the device's on every message in client mode. */
#define BUNDLE_TEST_ANONYMOUS_ID "bundle-selftest"

/* Called once per test, in order: passed 1 or 0, and why it failed (one line). */
typedef void (*bundle_test_fn)(void *ud, size_t index, const char *name, int passed, const char *why);

/* Runs every test of b through R (loaded from b's scripts with b's rule_config, need_id set),
 * calling fn for each. *failed counts the failures. TALLY_OK when they ran (passed or not),
 * TALLY_ENOMEM otherwise. Runs on the calling thread, which must own R. */
int bundle_run_tests(const bundle *b, rules *R, bundle_test_fn fn, void *ud, size_t *failed, tly_err *err);

#endif
