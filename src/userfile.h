/* Reading files from rule and config folders: confined below the folder, regular files only. */
#ifndef TALLY_USERFILE_H
#define TALLY_USERFILE_H

#include <stddef.h>

struct tly_err;

/* Opens `rel` (a relative path, "/"-separated, no "..") below the folder `dir` for reading. `dir`
 * itself is followed wherever it leads; below it no component may be a symlink, the components
 * before the last must be folders and the last a regular file. Never blocks (a FIFO is refused
 * before it is opened). Returns TALLY_OK with the descriptor in *fd (the caller closes it), or
 * TALLY_EIO (the OS refused) or TALLY_EINVAL (a bad name, a link, not a regular file) with `err`
 * naming the path and the reason; errno is then set too, and is ENOENT when nothing of that name
 * exists (the rule-folder search goes on to the next folder on that alone). */
int tly_open_below(const char *dir, const char *rel, int *fd, struct tly_err *err);

/* The whole of such a file, at most `max` bytes, into *out (malloc'd, NUL-terminated). TALLY_OK,
 * or tly_open_below's codes, TALLY_EIO (read failed), TALLY_EINVAL (larger than max), TALLY_ENOMEM;
 * errno as tly_open_below's. */
int tly_read_below(const char *dir, const char *rel, size_t max, char **out, size_t *len, struct tly_err *err);

/* Splits `path` into its folder (written to dir, "." when there is none) and the name after the last
 * "/" (a pointer into path). TALLY_OK, or TALLY_EINVAL ("PATH: path too long") if the folder does
 * not fit. */
int tly_split_path(const char *path, char *dir, size_t dirlen, const char **base, struct tly_err *err);

#endif
