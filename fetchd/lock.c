/* The run lock: flock(2) on STATE/fetchd.lock, held until exit (the kernel
 * drops it when the process dies, also on kill -9, so no stale locks). A
 * second fetchd exits 75 before it opens the state database: nothing is
 * touched while another run is in progress. */
#include "lock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static void lock_path(const char *state, char *buf, size_t len)
{
    snprintf(buf, len, "%s/fetchd.lock", state);
}

int lock_take(const char *state, int *busy)
{
    char path[PATH_MAX];
    *busy = 0;
    lock_path(state, path, sizeof path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            *busy = 1;
        errno = e;
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* The lock itself is what counts; the pid is for people. */
    }
    return fd;
}

long lock_holder(const char *state)
{
    char path[PATH_MAX], buf[32] = "";
    lock_path(state, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}
