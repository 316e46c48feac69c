/* Listening sockets shared by the SMTP and the POP3/IMAP servers. */
#include "netlisten.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include <event2/util.h>

#include "log.h"

#define LISTEN_BACKLOG 1024

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    /* EMFILE and friends: keep serving what we have; the kernel queues the rest. */
    log_warn("accept: %s", strerror(errno));
}

static evutil_socket_t listen_socket(const struct sockaddr *sa, socklen_t len)
{
    evutil_socket_t fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0
        || (sa->sa_family == AF_INET6
            && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) != 0)
        || bind(fd, sa, len) != 0) {
        int e = errno;
        evutil_closesocket(fd);
        errno = e;
        return -1;
    }
    return fd;
}

struct evconnlistener *net_listen(struct event_base *base, const char *addr,
                                  evconnlistener_cb cb, void *arg)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0) {
        log_err("listen %s: not an address:port", addr);
        return NULL;
    }
    evutil_socket_t fd = listen_socket((struct sockaddr *)&ss, (socklen_t)len);
    struct evconnlistener *l = fd < 0 ? NULL : evconnlistener_new(
        base, cb, arg, LEV_OPT_CLOSE_ON_FREE, LISTEN_BACKLOG, fd);
    if (l == NULL) {
        log_err("cannot listen on %s: %s", addr, strerror(errno));
        if (fd >= 0)
            evutil_closesocket(fd);
        return NULL;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    return l;
}

void net_ntop(const struct sockaddr *sa, char *ip, size_t len)
{
    ip[0] = '\0';
    if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, (socklen_t)len);
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, (socklen_t)len);
}

bool net_is_loopback(const char *addr)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0)
        return false;
    if (ss.ss_family == AF_INET) {
        uint32_t a = ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr);
        return (a >> 24) == 127;
    }
    return IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
}
