/* Small file-system helpers shared by the Maildir code (maildir.c,
 * mbox_usage.c, uidlist.c, mailbox.c): path joining with a length check,
 * a directory walk that skips dot files, and a directory fsync. */
#ifndef BMX_MBOX_FS_H
#define BMX_MBOX_FS_H

#include <stddef.h>

/* OUT = DIR "/" SUB ["/" NAME]. -1 with ENAMETOOLONG if it does not fit. */
int mbox_path(char *out, size_t outlen, const char *dir, const char *sub, const char *name);

/* Calls FN(dirfd, name, ARG) for each entry of DIR/SUB whose name does not
 * start with '.'. DIRFD is the directory (for fstatat, renameat, ...).
 * Stops at the first non-zero return of FN and returns it; 0 when all
 * entries were seen; -1 with errno if the directory cannot be read. */
int mbox_foreach(const char *dir, const char *sub,
                 int (*fn)(int dirfd, const char *name, void *arg), void *arg);

/* fsync of DIR/SUB (SUB may be NULL): makes a link or rename durable. */
int mbox_fsync_dir(const char *dir, const char *sub);

#endif
