/* SMTP listeners and connection accounting (limits.connections overall and
 * limits.connections_per_ip per client address). */
#include "smtp_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "log.h"
#include "smtp_session.h"

#define IPCOUNT_BUCKETS 1024
#define LISTEN_BACKLOG 1024

struct ipentry {
    struct ipentry *next;
    unsigned count;
    char ip[INET6_ADDRSTRLEN];
};

struct ipcount {
    struct ipentry *bucket[IPCOUNT_BUCKETS];
};

static unsigned ip_hash(const char *ip)
{
    unsigned h = 2166136261u;    /* FNV-1a */
    for (; *ip; ip++)
        h = (h ^ (unsigned char)*ip) * 16777619u;
    return h % IPCOUNT_BUCKETS;
}

static struct ipentry **ip_find(struct ipcount *t, const char *ip)
{
    struct ipentry **e = &t->bucket[ip_hash(ip)];
    while (*e != NULL && strcmp((*e)->ip, ip) != 0)
        e = &(*e)->next;
    return e;
}

/* Returns the client's connection count including this one, 0 on ENOMEM. */
static unsigned ip_acquire(struct ipcount *t, const char *ip)
{
    struct ipentry **e = ip_find(t, ip);
    if (*e == NULL) {
        *e = calloc(1, sizeof **e);
        if (*e == NULL)
            return 0;
        snprintf((*e)->ip, sizeof (*e)->ip, "%s", ip);
    }
    return ++(*e)->count;
}

void smtp_server_release(struct smtp_server *srv, const char *ip)
{
    srv->nconn--;
    struct ipentry **e = ip_find(srv->perip, ip);
    if (*e == NULL || --(*e)->count > 0)
        return;
    struct ipentry *dead = *e;
    *e = dead->next;
    free(dead);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    struct smtp_server *srv = arg;
    char ip[INET6_ADDRSTRLEN] = "";
    if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
    srv->nconn++;
    unsigned mine = ip_acquire(srv->perip, ip);
    const char *refuse = NULL;
    char buf[300];
    if (mine == 0) {
        refuse = "421 4.3.2 Error: out of memory";
    } else if (srv->nconn > (unsigned)srv->cfg->limits.connections) {
        snprintf(buf, sizeof buf, "421 4.7.0 %s Error: too many connections", srv->cfg->hostname);
        log_warn("too many connections: %u, refusing unknown[%s]", srv->nconn, ip);
        refuse = buf;
    } else if (mine > (unsigned)srv->cfg->limits.connections_per_ip) {
        snprintf(buf, sizeof buf, "421 4.7.0 %s Error: too many connections from %s",
                 srv->cfg->hostname, ip);
        log_warn("too many connections from unknown[%s]: %u", ip, mine);
        refuse = buf;
    }
    smtp_session_start(srv, fd, sa, (socklen_t)salen, refuse);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    /* EMFILE and friends: keep serving what we have; the kernel queues the rest. */
    log_warn("accept: %s", strerror(errno));
}

/* "[::]:25" must not also take the IPv4 port: "0.0.0.0:25" is listed
 * separately, so IPv6 sockets are v6-only. */
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

static int bind_one(struct smtp_server *srv, const char *addr)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0) {
        log_err("listen %s: not an address:port", addr);
        return -1;
    }
    evutil_socket_t fd = listen_socket((struct sockaddr *)&ss, (socklen_t)len);
    struct evconnlistener *l = fd < 0 ? NULL : evconnlistener_new(
        srv->base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE, LISTEN_BACKLOG, fd);
    if (l == NULL) {
        log_err("cannot listen on %s: %s", addr, strerror(errno));
        if (fd >= 0)
            evutil_closesocket(fd);
        return -1;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    srv->listeners[srv->nlisteners++] = l;
    log_info("listening on %s", addr);
    return 0;
}

int smtp_server_bind(struct smtp_server *srv)
{
    const struct strlist *ls = &srv->cfg->listen;
    srv->perip = calloc(1, sizeof *srv->perip);
    srv->listeners = calloc(ls->n + 1, sizeof *srv->listeners);
    if (srv->perip == NULL || srv->listeners == NULL)
        return -1;
    srv->cmd_timeout.tv_sec = (time_t)srv->cfg->limits.command_timeout;
    srv->data_timeout.tv_sec = (time_t)srv->cfg->limits.data_timeout;
    for (size_t i = 0; i < ls->n; i++)
        if (bind_one(srv, ls->v[i]) != 0)
            return -1;
    return 0;
}

void smtp_server_shutdown(struct smtp_server *srv)
{
    for (size_t i = 0; i < srv->nlisteners; i++)
        evconnlistener_free(srv->listeners[i]);
    free(srv->listeners);
    srv->listeners = NULL;
    srv->nlisteners = 0;
    smtp_session_free_all(srv);
    if (srv->perip != NULL) {
        for (size_t b = 0; b < IPCOUNT_BUCKETS; b++) {
            while (srv->perip->bucket[b] != NULL) {
                struct ipentry *e = srv->perip->bucket[b];
                srv->perip->bucket[b] = e->next;
                free(e);
            }
        }
        free(srv->perip);
        srv->perip = NULL;
    }
}
