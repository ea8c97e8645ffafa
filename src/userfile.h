/* Reading files from rule and config folders: confined below the folder, regular files only. */
#ifndef TALLY_USERFILE_H
#define TALLY_USERFILE_H

#include <stddef.h>

/* Opens `rel` (a relative path, "/"-separated, no "..") below the folder `dir` for reading. `dir`
 * itself is followed wherever it leads; below it no component may be a symlink, the components
 * before the last must be folders and the last a regular file. Never blocks (a FIFO is refused
 * before it is opened). Returns a descriptor (the caller closes it), or -1 with errno set and `err`
 * naming the path and the reason; errno is ENOENT when nothing of that name exists. */
int tly_open_below(const char *dir, const char *rel, char *err, size_t errlen);

/* The whole of such a file, at most `max` bytes, into *out (malloc'd, NUL-terminated). 0 or -1. */
int tly_read_below(const char *dir, const char *rel, size_t max, char **out, size_t *len, char *err, size_t errlen);

/* Splits `path` into its folder (written to dir, "." when there is none) and the name after the last
 * "/" (a pointer into path). -1 if the folder does not fit. */
int tly_split_path(const char *path, char *dir, size_t dirlen, const char **base);

#endif
