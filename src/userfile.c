/* Reading files that others may have placed: scripts, modules and JSON from rule folders, config
 * files. The folder was chosen by whoever configured tally and is taken as given (it may be
 * reached through a symlink); what lies below it may have been put there by a mod author, so it is
 * opened without following any symlink, without blocking (a FIFO would hold the loader forever in
 * open or read), and only if it is a regular file. */
#include "userfile.h"

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind_of(mode_t m)
{
    if (S_ISLNK(m)) return "a symbolic link";
    if (S_ISDIR(m)) return "a folder";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
    return "not a regular file";
}

static int refuse(tly_err *err, const char *dir, const char *rel, const char *what)
{
    tly_err_set(err, TALLY_EINVAL, "%s/%s: %s; only regular files are read from rule and config folders (no links)",
                dir, rel, what);
    errno = EPERM;
    return TALLY_EINVAL;
}

/* The OS refused: the text names the path and errno's reason, and errno is kept for the caller. */
static int os_fail(tly_err *err, const char *dir, const char *rel, int e)
{
    tly_err_set(err, TALLY_EIO, "%s/%s: cannot open: %s", dir, rel, strerror(e));
    errno = e;
    return TALLY_EIO;
}

int tly_open_below(const char *dir, const char *rel, int *out, tly_err *err)
{
    char comp[256];
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return os_fail(err, dir, rel, errno);
    const char *p = rel;
    for (;;) {
        while (*p == '/') p++;
        size_t n = strcspn(p, "/");
        if (n == 0 || n >= sizeof comp) {
            close(dfd);
            tly_err_set(err, TALLY_EINVAL, "%s/%s: %s", dir, rel, n ? "name too long" : "not a file name");
            errno = n ? ENAMETOOLONG : EINVAL;
            return TALLY_EINVAL;
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        p += n;
        int last = *p == '\0' || !p[strspn(p, "/")];
        if (!strcmp(comp, "..")) {
            close(dfd);
            return refuse(err, dir, rel, "leaves the folder (\"..\")");
        }
        /* Look before opening: opening a device can have effects; then check what was opened,
         * which may have been swapped in between. */
        struct stat st;
        if (fstatat(dfd, comp, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            int e = errno;
            close(dfd);
            return os_fail(err, dir, rel, e);
        }
        if (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode)) {
            close(dfd);
            return refuse(err, dir, rel, kind_of(st.st_mode));
        }
        int flags = last ? O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC
                         : O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
        int fd = openat(dfd, comp, flags);
        int e = errno;
        close(dfd);
        if (fd < 0) {
            if (e == ELOOP || e == ENOTDIR) return refuse(err, dir, rel, "changed into a link while opened");
            return os_fail(err, dir, rel, e);
        }
        if (fstat(fd, &st) != 0 || (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode))) {
            close(fd);
            return refuse(err, dir, rel, "changed while opened");
        }
        if (last) {
            *out = fd;
            return TALLY_OK;
        }
        dfd = fd;
    }
}

int tly_read_below(const char *dir, const char *rel, size_t max, char **out, size_t *len, tly_err *err)
{
    int fd;
    int rc = tly_open_below(dir, rel, &fd, err);
    if (rc) return rc;
    char *buf = malloc(max + 1);
    size_t n = 0;
    while (buf && n <= max) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            tly_err_set(err, TALLY_EIO, "%s/%s: cannot read: %s", dir, rel, strerror(errno));
            free(buf);
            close(fd);
            errno = EIO;
            return TALLY_EIO;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    if (!buf || n > max) {
        free(buf);
        errno = buf ? EFBIG : ENOMEM;
        if (buf) return tly_err_set(err, TALLY_EINVAL, "%s/%s: larger than %zu bytes", dir, rel, max);
        return tly_err_set(err, TALLY_ENOMEM, "%s/%s: out of memory", dir, rel);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return TALLY_OK;
}

int tly_split_path(const char *path, char *dir, size_t dirlen, const char **base, tly_err *err)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, dirlen, ".");
        *base = path;
        return TALLY_OK;
    }
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= dirlen) return tly_err_set(err, TALLY_EINVAL, "%s: path too long", path);
    memcpy(dir, path, n);
    dir[n] = '\0';
    *base = slash + 1;
    return TALLY_OK;
}
