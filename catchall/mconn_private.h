/* What mail_server.c and mconn.c share about listeners and connections. */
#ifndef BMX_MCONN_PRIVATE_H
#define BMX_MCONN_PRIVATE_H

#include <stdbool.h>
#include <arpa/inet.h>
#include <openssl/ssl.h>

#include "config.h"
#include "mconn.h"

struct event_base;
struct ipcount;

struct mail_listener {
    struct mail_server *ms;
    const struct mproto *proto;
    enum tls_mode_in tls;
    bool loopback;              /* bound to 127/8 or ::1 */
};

struct mail_server {
    struct event_base *base;
    const struct bmx_config *cfg;
    SSL_CTX *tls;
    struct evconnlistener **listeners;
    struct mail_listener *linfo;
    size_t nlisteners;
    unsigned nconn;
    struct ipcount *perip;
    struct mconn *conns;        /* every live connection, for shutdown */
};

/* Starts a connection on FD accepted by L from IP; REFUSE is a line sent
 * before closing at once (connection limits), or NULL. */
void mconn_start(struct mail_listener *l, int fd, const char *ip, const char *refuse);
/* Frees C without calling anything but the session's free(). */
void mconn_destroy(struct mconn *c);

#endif
