/* The CPU floor of durable SMTP intake: the least a server can do and still
 * answer smtp-source's conversation and have each message on disk before
 * its 250. One epoll loop, one read per wakeup, one reply write per
 * wakeup and connection; the messages that ended in one wakeup batch are
 * appended to one file with one write each and made durable by ONE
 * fdatasync (group commit), then answered. No parsing beyond the end of a
 * line and "DATA"/"QUIT", no dot-unstuffing, no envelope, no index, no
 * logging: what is left is what the kernel charges for the connection,
 * the round trips and the sync, which every MTA pays.
 *
 * Usage: nullsmtp PORT FILE. Each stored message is preceded by the
 * 8-byte marker "\0NULLMSG" so that a reader can count them. Not part of
 * the product: the bench's reference for "CPU per message". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define BUFSZ (256 * 1024)
#define MAXEV 256
#define MARKER "\0NULLMSG"

struct conn {
    int fd;
    int data;                    /* in DATA: reading the message */
    size_t len;                  /* bytes in buf */
    char out[512];
    size_t outlen;
    int done;                    /* a message ended in this batch */
    int quit;
    char buf[BUFSZ];
};

static int store = -1;

static void die(const char *what)
{
    fprintf(stderr, "nullsmtp: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void reply(struct conn *c, const char *s)
{
    size_t n = strlen(s);
    if (c->outlen + n <= sizeof c->out) {
        memcpy(c->out + c->outlen, s, n);
        c->outlen += n;
    }
}

static void store_message(const char *p, size_t n)
{
    struct iovec iov[2] = { { MARKER, 8 }, { (void *)p, n } };
    if (writev(store, iov, 2) != (ssize_t)(n + 8))
        die("write");
}

/* Consumes whole lines (commands) or, in DATA, everything up to "\r\n.\r\n".
 * The DATA line's own CRLF is kept as the start of the message, so that an
 * empty message ("." right after DATA) ends the same way as any other. */
static void process(struct conn *c)
{
    size_t off = 0;
    while (off < c->len) {
        char *p = c->buf + off;
        size_t left = c->len - off;
        if (c->data) {
            char *end = memmem(p, left, "\r\n.\r\n", 5);
            if (end == NULL)
                break;
            store_message(p + 2, (size_t)(end - p));
            reply(c, "250 stored\r\n");    /* written after the sync */
            off += (size_t)(end - p) + 5;
            c->data = 0;
            c->done = 1;
            continue;
        }
        char *nl = memchr(p, '\n', left);
        if (nl == NULL)
            break;
        if (strncasecmp(p, "DATA", 4) == 0) {
            reply(c, "354 go ahead\r\n");
            c->data = 1;
            off = (size_t)(nl - 1 - c->buf);
            continue;
        } else if (strncasecmp(p, "EHLO", 4) == 0) {
            reply(c, "250-null\r\n250 PIPELINING\r\n");
        } else if (strncasecmp(p, "QUIT", 4) == 0) {
            reply(c, "221 bye\r\n");
            c->quit = 1;
        } else {
            reply(c, "250 ok\r\n");
        }
        off = (size_t)(nl + 1 - c->buf);
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

static void flush_replies(struct conn *c, int ep)
{
    if (c->outlen > 0 && write(c->fd, c->out, c->outlen) < 0 && errno != EAGAIN)
        c->quit = 1;
    c->outlen = 0;
    if (c->quit) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        free(c);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: nullsmtp PORT FILE\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    store = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (store < 0)
        die(argv[2]);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons((uint16_t)atoi(argv[1])),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1024) < 0)
        die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    static struct conn *ready[MAXEV];
    for (;;) {
        struct epoll_event evs[MAXEV];
        int n = epoll_wait(ep, evs, MAXEV, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        int nready = 0, synced = 0;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = { .events = EPOLLIN, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                    static const char hi[] = "220 null ESMTP\r\n";
                    if (write(fd, hi, sizeof hi - 1) < 0)
                        c->quit = 1;
                }
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, BUFSZ - c->len);
            if (r <= 0) {
                c->quit = 1;
            } else {
                c->len += (size_t)r;
                process(c);
            }
            ready[nready++] = c;
            synced |= c->done;
        }
        /* the group commit: one sync for every message of this batch */
        if (synced && fdatasync(store) < 0)
            die("fdatasync");
        for (int i = 0; i < nready; i++) {
            ready[i]->done = 0;
            flush_replies(ready[i], ep);
        }
    }
}
