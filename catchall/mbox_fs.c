/* File-system helpers for the Maildir code; see mbox_fs.h. */
#include "mbox_fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int mbox_path(char *out, size_t outlen, const char *dir, const char *sub, const char *name)
{
    int n = name ? snprintf(out, outlen, "%s/%s/%s", dir, sub, name)
                 : snprintf(out, outlen, "%s/%s", dir, sub);
    if (n < 0 || (size_t)n >= outlen) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

int mbox_foreach(const char *dir, const char *sub,
                 int (*fn)(int dirfd, const char *name, void *arg), void *arg)
{
    char path[4096];
    if (mbox_path(path, sizeof path, dir, sub, NULL) < 0)
        return -1;
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int rc = 0;
    struct dirent *de;
    errno = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (de->d_name[0] != '.')
            rc = fn(dirfd(d), de->d_name, arg);
        errno = 0;
    }
    /* readdir returns NULL both at the end and on error: errno tells. */
    int saved = errno;
    closedir(d);
    if (rc == 0 && saved != 0) {
        errno = saved;
        return -1;
    }
    return rc;
}

int mbox_fsync_dir(const char *dir, const char *sub)
{
    char path[4096];
    const char *p = dir;
    if (sub) {
        if (mbox_path(path, sizeof path, dir, sub, NULL) < 0)
            return -1;
        p = path;
    }
    int fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}
