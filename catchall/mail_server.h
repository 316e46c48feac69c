/* The POP3 and IMAP listeners: bind, accept, enforce the connection
 * limits, and hand each connection to mconn with its protocol. */
#ifndef BMX_MAIL_SERVER_H
#define BMX_MAIL_SERVER_H

#include <openssl/ssl.h>

#include "config.h"

struct event_base;
struct mail_server;

/* Binds the pop3 and imap listen addresses (before privileges are
 * dropped). TLS is the shared server context (NULL without a tls section).
 * Returns NULL after logging when an address cannot be bound. A config
 * without pop3 and imap sections gives an idle server. */
struct mail_server *mail_server_new(struct event_base *base, const struct bmx_config *cfg,
                                    SSL_CTX *tls);
/* Closes the listeners and every connection. */
void mail_server_free(struct mail_server *ms);

#endif
