#include "store_fixture.h"

#include <stdlib.h>
#include <unistd.h>

#include "util.h"

static const tly_logger quiet = {NULL, NULL, 0};

store *tsf_open(const char *name, int64_t max_rows, int on_full, int *d, tly_err *err)
{
    char *path = tu_path(name);
    unlink(path);
    store_limits lim = {1 << 30, max_rows, on_full};
    store *s = NULL;
    if (store_open(&s, path, &lim, &quiet, err) != TALLY_OK) s = NULL;
    free(path);
    if (s && store_dest_id(s, "d", d, err) != TALLY_OK) {
        store_close(s);
        s = NULL;
    }
    return s;
}
