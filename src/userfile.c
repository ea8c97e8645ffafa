/* Reading files that others may have placed: scripts, modules and JSON from rule folders, config
 * files. The folder was chosen by whoever configured tally and is taken as given (it may be
 * reached through a symlink); what lies below it may have been put there by a mod author, so it is
 * opened without following any symlink, without blocking (a FIFO would hold the loader forever in
 * open or read), and only if it is a regular file. */
#include "userfile.h"

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

static int refuse(char *err, size_t errlen, const char *dir, const char *rel, const char *what)
{
    snprintf(err, errlen, "%s/%s: %s; only regular files are read from rule and config folders (no links)", dir,
             rel, what);
    errno = EPERM;
    return -1;
}

int tly_open_below(const char *dir, const char *rel, char *err, size_t errlen)
{
    char comp[256];
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s/%s: cannot open: %s", dir, rel, strerror(e));
        errno = e;
        return -1;
    }
    const char *p = rel;
    for (;;) {
        while (*p == '/') p++;
        size_t n = strcspn(p, "/");
        if (n == 0 || n >= sizeof comp) {
            close(dfd);
            snprintf(err, errlen, "%s/%s: %s", dir, rel, n ? "name too long" : "not a file name");
            errno = n ? ENAMETOOLONG : EINVAL;
            return -1;
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        p += n;
        int last = *p == '\0' || !p[strspn(p, "/")];
        if (!strcmp(comp, "..")) {
            close(dfd);
            return refuse(err, errlen, dir, rel, "leaves the folder (\"..\")");
        }
        /* Look before opening: opening a device can have effects; then check what was opened,
         * which may have been swapped in between. */
        struct stat st;
        if (fstatat(dfd, comp, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            int e = errno;
            close(dfd);
            snprintf(err, errlen, "%s/%s: cannot open: %s", dir, rel, strerror(e));
            errno = e;
            return -1;
        }
        if (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode)) {
            close(dfd);
            return refuse(err, errlen, dir, rel, kind_of(st.st_mode));
        }
        int flags = last ? O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC
                         : O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
        int fd = openat(dfd, comp, flags);
        int e = errno;
        close(dfd);
        if (fd < 0) {
            if (e == ELOOP || e == ENOTDIR) return refuse(err, errlen, dir, rel, "changed into a link while opened");
            snprintf(err, errlen, "%s/%s: cannot open: %s", dir, rel, strerror(e));
            errno = e;
            return -1;
        }
        if (fstat(fd, &st) != 0 || (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode))) {
            close(fd);
            return refuse(err, errlen, dir, rel, "changed while opened");
        }
        if (last) return fd;
        dfd = fd;
    }
}

int tly_read_below(const char *dir, const char *rel, size_t max, char **out, size_t *len, char *err, size_t errlen)
{
    int fd = tly_open_below(dir, rel, err, errlen);
    if (fd < 0) return -1;
    char *buf = malloc(max + 1);
    size_t n = 0;
    while (buf && n <= max) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, errlen, "%s/%s: cannot read: %s", dir, rel, strerror(errno));
            free(buf);
            close(fd);
            errno = EIO;
            return -1;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    if (!buf || n > max) {
        free(buf);
        if (buf) snprintf(err, errlen, "%s/%s: larger than %zu bytes", dir, rel, max);
        else snprintf(err, errlen, "%s/%s: out of memory", dir, rel);
        errno = buf ? EFBIG : ENOMEM;
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int tly_split_path(const char *path, char *dir, size_t dirlen, const char **base)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, dirlen, ".");
        *base = path;
        return 0;
    }
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= dirlen) return -1;
    memcpy(dir, path, n);
    dir[n] = '\0';
    *base = slash + 1;
    return 0;
}
