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
#include "ipcount.h"
#include "netlisten.h"
#include "smtp_session.h"

void smtp_server_release(struct smtp_server *srv, const char *ip)
{
    srv->nconn--;
    ipcount_release(srv->perip, ip);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    struct smtp_server *srv = arg;
    char ip[INET6_ADDRSTRLEN];
    net_ntop(sa, ip, sizeof ip);
    srv->nconn++;
    unsigned mine = ipcount_acquire(srv->perip, ip);
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

static int bind_one(struct smtp_server *srv, const char *addr)
{
    struct evconnlistener *l = net_listen(srv->base, addr, accept_cb, srv);
    if (l == NULL)
        return -1;
    srv->listeners[srv->nlisteners++] = l;
    log_info("listening on %s", addr);
    return 0;
}

int smtp_server_bind(struct smtp_server *srv)
{
    const struct strlist *ls = &srv->cfg->listen;
    srv->perip = ipcount_new();
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
    ipcount_free(srv->perip);
    srv->perip = NULL;
}
