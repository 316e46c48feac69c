/* POP3/IMAP listeners and their connection accounting (the SMTP limits
 * limits.connections and limits.connections_per_ip apply to them too, with
 * counters of their own). */
#include "mail_server.h"

#include <stdio.h>
#include <stdlib.h>

#include <event2/listener.h>

#include "imap_session.h"
#include "ipcount.h"
#include "log.h"
#include "mconn_private.h"
#include "netlisten.h"
#include "pop3_session.h"

static const char *refusal(struct mail_server *ms, const struct mail_listener *l,
                           const char *ip, unsigned mine, char *buf, size_t len)
{
    bool pop3 = l->proto == &pop3_proto;
    const char *what = NULL;
    if (mine == 0)
        what = "out of memory";
    else if (ms->nconn > (unsigned)ms->cfg->limits.connections)
        what = "too many connections";
    else if (mine > (unsigned)ms->cfg->limits.connections_per_ip)
        what = "too many connections from your address";
    if (what == NULL)
        return NULL;
    log_warn("%s: %s, refusing %s", l->proto->name, what, ip);
    snprintf(buf, len, pop3 ? "-ERR [SYS/TEMP] %s, wait and retry\r\n" : "* BYE %s\r\n", what);
    return buf;
}

static void accept_cb(struct evconnlistener *el, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)el;
    (void)salen;
    struct mail_listener *l = arg;
    struct mail_server *ms = l->ms;
    char ip[INET6_ADDRSTRLEN], buf[128];
    net_ntop(sa, ip, sizeof ip);
    ms->nconn++;
    unsigned mine = ipcount_acquire(ms->perip, ip);
    mconn_start(l, fd, ip, refusal(ms, l, ip, mine, buf, sizeof buf));
}

static int bind_set(struct mail_server *ms, const struct bmx_listener_set *set,
                    const struct mproto *proto)
{
    if (!set->enabled)
        return 0;
    for (size_t i = 0; i < set->listen.n; i++) {
        struct mail_listener *l = &ms->linfo[ms->nlisteners];
        *l = (struct mail_listener){ .ms = ms, .proto = proto, .tls = set->tls,
                                     .loopback = net_is_loopback(set->listen.v[i]) };
        struct evconnlistener *el = net_listen(ms->base, set->listen.v[i], accept_cb, l);
        if (el == NULL)
            return -1;
        ms->listeners[ms->nlisteners++] = el;
        log_info("%s: listening on %s (tls %s)", proto->name, set->listen.v[i],
                 set->tls == TLSIN_IMPLICIT ? "implicit"
                 : set->tls == TLSIN_STARTTLS ? "starttls" : "none");
    }
    return 0;
}

struct mail_server *mail_server_new(struct event_base *base, const struct bmx_config *cfg,
                                    SSL_CTX *tls)
{
    struct mail_server *ms = calloc(1, sizeof *ms);
    if (ms == NULL)
        return NULL;
    size_t n = cfg->pop3.listen.n + cfg->imap.listen.n + 1;
    ms->base = base;
    ms->cfg = cfg;
    ms->tls = tls;
    ms->perip = ipcount_new();
    ms->listeners = calloc(n, sizeof *ms->listeners);
    ms->linfo = calloc(n, sizeof *ms->linfo);
    if (ms->perip == NULL || ms->listeners == NULL || ms->linfo == NULL
        || bind_set(ms, &cfg->pop3, &pop3_proto) != 0
        || bind_set(ms, &cfg->imap, &imap_proto) != 0) {
        mail_server_free(ms);
        return NULL;
    }
    return ms;
}

void mail_server_free(struct mail_server *ms)
{
    if (ms == NULL)
        return;
    for (size_t i = 0; i < ms->nlisteners; i++)
        evconnlistener_free(ms->listeners[i]);
    while (ms->conns != NULL)
        mconn_destroy(ms->conns);
    ipcount_free(ms->perip);
    free(ms->listeners);
    free(ms->linfo);
    free(ms);
}
