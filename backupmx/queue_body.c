/* Large message bodies live in SPOOL/body/<queue id>, outside Berkeley DB,
 * so they are written once instead of twice (log + database) and do not
 * push index pages out of the cache. A file is complete and on disk
 * (fdatasync, then the directory fsync'd) before the transaction that
 * refers to it commits; a file no record refers to is an orphan from a
 * crash or a failed store and is removed at the next open. */
#include "queue_private.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log.h"

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes every chunk of BODY without draining or linearising it. */
static int write_evbuffer(int fd, struct evbuffer *body)
{
    int n = evbuffer_peek(body, -1, NULL, NULL, 0);
    if (n <= 0)
        return 0;
    struct evbuffer_iovec *vec = calloc((size_t)n, sizeof *vec);
    if (!vec)
        return -1;
    int rc = 0;
    n = evbuffer_peek(body, -1, NULL, vec, n);
    for (int i = 0; i < n && rc == 0; i++)
        rc = write_all(fd, vec[i].iov_base, vec[i].iov_len);
    free(vec);
    return rc;
}

int qbody_write(int dirfd, const char *id, struct evbuffer *body)
{
    int fd = openat(dirfd, id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;              /* EEXIST: not ours to remove */
    if (write_evbuffer(fd, body) < 0 || fdatasync(fd) < 0)
        goto fail;
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    /* The name must be on disk too before a record may point at it. */
    if (fsync(dirfd) < 0)
        goto fail;
    return 0;
fail:;
    int err = errno;
    if (fd >= 0)
        close(fd);
    unlinkat(dirfd, id, 0);
    errno = err;
    return -1;
}

int qbody_read(int dirfd, const char *id, uint64_t size, struct evbuffer *out)
{
    int fd = openat(dirfd, id, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0)
        goto fail;
    if ((uint64_t)st.st_size != size) {
        errno = EIO;             /* truncated or replaced behind our back */
        goto fail;
    }
    uint64_t left = size;
    while (left > 0) {
        int chunk = left > (1u << 20) ? (1 << 20) : (int)left;
        int n = evbuffer_read(out, fd, chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            goto fail;
        }
        left -= (uint64_t)n;
    }
    close(fd);
    return 0;
fail:;
    int err = errno;
    close(fd);
    errno = err;
    return -1;
}

void qbody_remove(int dirfd, const char *id)
{
    if (unlinkat(dirfd, id, 0) < 0 && errno != ENOENT)
        log_warn("queue: %s: cannot remove body file: %s", id, strerror(errno));
}

int qbody_sweep(int dirfd, int (*known)(void *arg, const char *id), void *arg)
{
    /* Its own descriptor, so readdir's offset is not shared with DIRFD. */
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    if (!dir) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int removed = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (!qid_valid(de->d_name)) {
            log_warn("queue: body/%s: not a queue file, left alone", de->d_name);
            continue;
        }
        if (known(arg, de->d_name) != 0)
            continue;
        log_info("%s: removed orphan body file", de->d_name);
        qbody_remove(dirfd, de->d_name);
        removed++;
    }
    closedir(dir);
    return removed;
}
