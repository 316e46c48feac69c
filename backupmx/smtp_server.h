/* The SMTP listener: accepts connections, enforces the connection limits,
 * and owns what every session shares (config, queue, policy, TLS). */
#ifndef BMX_SMTP_SERVER_H
#define BMX_SMTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>
#include <openssl/ssl.h>

#include "config.h"

struct event_base;
struct evconnlistener;
struct queue;
struct policy;
struct verify;
struct scheduler;
struct ca_writer;
struct smtp_session;
struct ipcount;

struct smtp_server {
    struct event_base *base;
    const struct bmx_config *cfg;
    struct queue *queue;
    struct policy *policy;
    struct verify *verify;
    struct scheduler *sched;
    struct ca_writer *cawriter;      /* catch-all copies, NULL without mailboxes */
    SSL_CTX *tls;
    struct evconnlistener **listeners;
    size_t nlisteners;
    unsigned nconn;
    struct ipcount *perip;
    struct smtp_session *sessions;   /* all live sessions, for shutdown */
    struct timeval cmd_timeout, data_timeout;
};

/* Binds every `listen` address (before privileges are dropped). */
int smtp_server_bind(struct smtp_server *srv);
void smtp_server_shutdown(struct smtp_server *srv);

/* Connection accounting, used by the session when it ends. */
void smtp_server_release(struct smtp_server *srv, const char *ip);

#endif
