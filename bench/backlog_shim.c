/* LD_PRELOAD shim for the OpenSMTPD comparison: raises the backlog that a
 * program passes to listen(2) to BENCH_LISTEN_BACKLOG (default 511).
 * OpenSMTPD 6.8 hard-codes a backlog of 5, which drops SYNs under 20
 * concurrent clients; the benchmark reports it with and without this. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int listen(int fd, int backlog)
{
    static int (*real_listen)(int, int);
    if (real_listen == NULL)
        real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
    const char *s = getenv("BENCH_LISTEN_BACKLOG");
    int want = s ? atoi(s) : 511;
    if (want > backlog)
        backlog = want;
    return real_listen(fd, backlog);
}
