/* The tally command line: Segment's library CLI contract (one --key=value token per flag). */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

#include <stddef.h>

#include "buf.h"

/* Message fields settable by flag, in the order they are written into the message. */
enum cli_field {
    CF_USER_ID, CF_ANONYMOUS_ID, CF_EVENT, CF_NAME, CF_CATEGORY, CF_GROUP_ID, CF_PREVIOUS_ID,
    CF_MESSAGE_ID, CF_TIMESTAMP, CF_PROPERTIES, CF_TRAITS, CF_CONTEXT, CF_INTEGRATIONS, CF_COUNT
};

#define CLI_MAX_SETTINGS 64

typedef struct cli_opts {
    const char *command;                 /* track ... alias, send, check, inspect, help, version */
    const char *fields[CF_COUNT];
    const char *config_file;
    const char *set_key[CLI_MAX_SETTINGS]; /* configuration keys given as flags, in order */
    const char *set_val[CLI_MAX_SETTINGS];
    int         nset;
    int         wait_ms;                 /* how long single-message commands wait for delivery */
    int         json_output;             /* --json: machine-readable output (inspect) */
    int         help;                    /* --help / -h: print the command's usage, exit 0 */
    int         version;                 /* --version / -V */
    const char *positional[8];           /* file arguments (send, check, inspect) */
    int         npositional;
} cli_opts;

/* Parses argv. Returns 0, or 2 with a one-line message naming the flag in err. */
int cli_parse(int argc, char **argv, cli_opts *o, char *err, size_t errlen);

/* Builds the JSON message of a single-message command. 0, or 2 with err naming the flag. */
int cli_build_message(const cli_opts *o, tbuf *out, char *err, size_t errlen);

/* The error for a message of `total` bytes over TALLY_MAX_MESSAGE_BYTES, naming the largest
 * message flag. Returns 2. */
int cli_too_big(const cli_opts *o, size_t total, char *err, size_t errlen);

/* The configuration key (a static string) a flag name sets, aliases included, or NULL. */
const char *cli_config_key(const char *flag, size_t len);

/* `tally check`: 0 all passed, 1 a message was blocked or a script failed, 2 usage. */
int cli_check(const cli_opts *o, const char *rules_spec, const char *rule_config);

/* `tally inspect STORE [--json]`: 0, or 1 when the store cannot be read. */
int cli_inspect(const cli_opts *o);

/* `tally forget --store=S ID`: prints how many messages were erased. 0, 1 when the store cannot
 * be opened (missing, or in use by a running process) or written, 2 usage. */
int cli_forget(const cli_opts *o);

/* `tally rules keygen|pack|verify|test ...` (argv[0] is "rules"): signed rule bundles
 * (rules_cmd.c). 0 done, 1 not verified or a self-test failed, 2 usage. */
int cli_rules(int argc, char **argv);

#endif
