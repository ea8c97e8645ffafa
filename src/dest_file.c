/* The file destination: NDJSON, one message per line, appended. Lines are written whole per batch
 * and fsync'd on sync (tally_flush / close), so a crash loses at most what was not yet flushed. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dest.h"

typedef struct file_dest {
    int   fd;
    char *path;
} file_dest;

/* A crash in the middle of a write leaves a line without its newline; the batch is sent again
 * after restart, so close the torn line first rather than glue the next message onto it. */
static void end_torn_line(dest *d, file_dest *f)
{
    off_t size = lseek(f->fd, 0, SEEK_END);
    char last = '\n';
    if (size > 0 && pread(f->fd, &last, 1, size - 1) == 1 && last != '\n') {
        tly_log(d->log, TALLY_LOG_WARN, "%s: ends in a torn line (crash during a write?); closing it", d->name);
        if (write(f->fd, "\n", 1) != 1) tly_log(d->log, TALLY_LOG_ERROR, "%s: cannot repair: %s", d->name, strerror(errno));
    }
}

static int file_open(dest *d, const tj_value *cfg, const dest_env *env, tly_err *err)
{
    const tj_value *path = tj_object_get(cfg, "path");
    if (!path || path->type != TJ_STRING || path->u.str.len == 0)
        return tly_err_set(err, TALLY_ECONFIG, "destinations: file needs a non-empty string \"path\"");
    file_dest *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path->u.str.s))) {
        free(f);
        return tly_err_set(err, TALLY_ENOMEM, "file destination: out of memory");
    }
    f->fd = open(f->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        int e = errno;
        free(f->path);
        free(f);
        return tly_err_set(err, TALLY_EIO, "file destination: cannot open %s: %s", path->u.str.s, strerror(e));
    }
    d->impl = f;
    snprintf(d->name, sizeof d->name, "file:%s", f->path);
    end_torn_line(d, f);
    return TALLY_OK;
}

/* A failed write is undone (truncate to where the batch began) so a retry never leaves half a
 * batch followed by the whole batch again. */
static int file_submit(dest *d, const dest_batch *b, dest_outcome *out, void **handle)
{
    (void)handle;
    file_dest *f = d->impl;
    off_t start = lseek(f->fd, 0, SEEK_END);
    const char *p = b->data.data + b->off[0];
    size_t left = b->off[b->n] - b->off[0];
    while (left) {
        ssize_t n = write(f->fd, p, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            dest_outcome_set(out, DEST_RETRY, 0, "write failed: %s", strerror(errno));
            if (start >= 0 && ftruncate(f->fd, start) != 0)
                tly_log(d->log, TALLY_LOG_ERROR, "%s: cannot undo a partial write: %s", d->name, strerror(errno));
            return 1;
        }
        p += n;
        left -= (size_t)n;
    }
    dest_outcome_set(out, DEST_OK, 0, "written");
    return 1;
}

static int file_sync(dest *d)
{
    file_dest *f = d->impl;
    if (fsync(f->fd) && errno != EINVAL) {
        tly_log(d->log, TALLY_LOG_ERROR, "%s: fsync failed: %s", d->name, strerror(errno));
        return TALLY_EIO;
    }
    return TALLY_OK;
}

static void file_close(dest *d)
{
    file_dest *f = d->impl;
    if (!f) return;
    close(f->fd);
    free(f->path);
    free(f);
    d->impl = NULL;
}

const dest_ops dest_file_ops = {"file", file_open, file_submit, NULL, file_sync, file_close};
