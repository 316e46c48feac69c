/* The disk's floor for a durable queue, measured in DIR:
 *   fdatasync   N x (append 4 KiB to one file; fdatasync)       -> syncs/s
 *   create      N x (open O_CREAT|O_EXCL, write 4 KiB, fsync, close)
 *                                                             -> files/s
 *   seqwrite    MIB x 1 MiB writes, then one fsync            -> MiB/s
 * Usage: fsyncbench DIR N MIB. Prints one "key=value" line per test. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "fsyncbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        buf += n;
        len -= (size_t)n;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: fsyncbench DIR N MIB\n");
        return 2;
    }
    const char *dir = argv[1];
    long n = atol(argv[2]), mib = atol(argv[3]);
    char path[4096];
    static char block[4096];
    memset(block, 'x', sizeof block);

    snprintf(path, sizeof path, "%s/fdatasync.dat", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die(path);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        write_all(fd, block, sizeof block);
        if (fdatasync(fd) < 0)
            die("fdatasync");
    }
    double t = now() - t0;
    close(fd);
    unlink(path);
    printf("fdatasync_per_s=%.0f\n", n / t);

    t0 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/f%ld", dir, i);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0)
            die(path);
        write_all(fd, block, sizeof block);
        if (fsync(fd) < 0)
            die("fsync");
        close(fd);
    }
    t = now() - t0;
    printf("create_fsync_per_s=%.0f\n", n / t);
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/f%ld", dir, i);
        unlink(path);
    }

    char *big = malloc(1 << 20);
    if (big == NULL)
        die("malloc");
    memset(big, 'y', 1 << 20);
    snprintf(path, sizeof path, "%s/seq.dat", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die(path);
    t0 = now();
    for (long i = 0; i < mib; i++)
        write_all(fd, big, 1 << 20);
    if (fsync(fd) < 0)
        die("fsync");
    t = now() - t0;
    close(fd);
    unlink(path);
    free(big);
    printf("seqwrite_mib_per_s=%.0f\n", mib / t);
    return 0;
}
