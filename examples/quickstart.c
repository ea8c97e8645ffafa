/* The README's C example, built by `make examples` and run by tests/cli/test_examples.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <tally.h>

int main(void)
{
    tally_config *cfg = tally_config_new();
    tally_config_set(cfg, "store", "tally.db");            /* durable queue + identity; ":memory:" for none */
    tally_config_set(cfg, "out", "events.ndjson");         /* a file destination; or write_key/endpoint */
    tally_config_set(cfg, "rules", "rules/");              /* optional Lua rules, run in name order */
    tally_t *t;
    if (tally_open(cfg, &t) != TALLY_OK) {
        fprintf(stderr, "tally: %s\n", tally_errmsg(NULL));
        return 1;
    }
    tally_config_free(cfg);                                 /* the handle keeps its own copy */

    tally_page(t, NULL, "Home", "{\"path\":\"/\"}");         /* anonymous: anonymousId + session stamped */
    tally_track(t, "Button Clicked", "{\"button_name\":\"Contact Us\"}");
    tally_identify(t, "user-42", "{\"email\":\"peter@initech.com\"}");   /* login */
    if (tally_track(t, "", NULL) != TALLY_OK)               /* bad input: clear error, nothing queued */
        fprintf(stderr, "rejected: %s\n", tally_errmsg(t)); /* "event: must not be empty" */
    tally_reset(t);                                         /* logout: new anonymousId and session */
    tally_send(t, "{\"type\":\"track\",\"userId\":\"u1\",\"event\":\"Order Completed\"}");

    char *stats;
    tally_stats(t, &stats);
    puts(stats);
    tally_free(stats);
    return tally_close(t, 5000) == TALLY_OK ? 0 : 1;       /* flush up to 5 s; the rest stays queued */
}
