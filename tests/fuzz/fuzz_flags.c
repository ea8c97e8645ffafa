/* Fuzzes the CLI's flag parser and message builder: input bytes are split on NUL into argv. Any
 * argv either fails with exit code 2 and a message, or builds a message that is valid JSON. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "json.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *argv[64] = {"tally"};
    int argc = 1;
    for (char *p = buf; p < buf + size && argc < 63; p += strlen(p) + 1) argv[argc++] = p;
    cli_opts o;
    char err[512];
    int rc = cli_parse(argc, argv, &o, err, sizeof err);
    if (rc != 0 && rc != 2) abort();
    if (rc == 2 && !err[0]) abort();
    if (rc == 0) {
        tbuf b = TBUF_INIT;
        if (cli_build_message(&o, &b, err, sizeof err) == 0) {
            tj_error je;
            if (tj_validate(b.data, b.len, &je) != 0) abort();
        }
        tbuf_free(&b);
    }
    free(buf);
    return 0;
}
